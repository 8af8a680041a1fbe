//! Command line and server wiring: one Pingora proxy service per listener,
//! plus the background health checker, all reading the live snapshot.

use crate::access_log::AccessLog;
use crate::live::{self, Live};
use crate::proxy::Gateway;
use crate::upstream::{health, state::StateRegistry};
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::sync::Arc;

pub const USAGE: &str = "usage: portico [-c FILE] [-t] [-u] [-d] [--demo]
  -c, --conf FILE   configuration file (default conf/portico.yaml)
  -t, --test        check the configuration and exit
  -u, --upgrade     take over listening sockets from a running portico (graceful upgrade)
  -d, --daemon      run in the background
      --demo        also start two demo backends on 127.0.0.1:9001 and :9002
      --import-nginx FILE
                    translate an nginx configuration into Portico's YAML (stdout);
                    what is not translated is listed with its line (stderr)";

#[derive(Debug, Default)]
pub struct Args {
    pub conf: String,
    pub test: bool,
    pub upgrade: bool,
    pub daemon: bool,
    pub demo: bool,
    /// An nginx configuration to translate (`--import-nginx`).
    pub import_nginx: Option<String>,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut a = Args {
            conf: "conf/portico.yaml".into(),
            ..Default::default()
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "-c" | "--conf" => a.conf = it.next().ok_or("-c needs a file")?.clone(),
                "-t" | "--test" => a.test = true,
                "-u" | "--upgrade" => a.upgrade = true,
                "-d" | "--daemon" => a.daemon = true,
                "--demo" => a.demo = true,
                "--import-nginx" => a.import_nginx = Some(it.next().ok_or("--import-nginx needs a file")?.clone()),
                "-h" | "--help" => return Err("portico: HTTP gateway and load balancer".into()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(a)
    }
}

struct HealthChecks(Arc<Live>, crate::upstream::Transport);

/// SIGHUP reloads the configuration file.
struct ReloadOnHup(Arc<Live>);

#[async_trait]
impl BackgroundService for ReloadOnHup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::error!("cannot listen for SIGHUP; reload through the admin API");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = self.0.reload(); }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Once a graceful shutdown or upgrade starts, exit as soon as no request
/// (or upgraded connection, or TCP listener connection) is in flight, instead of sleeping out Pingora's
/// whole grace period; the grace period stays the upper bound.
struct ExitWhenIdle;

#[async_trait]
impl BackgroundService for ExitWhenIdle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let m = crate::metrics::get();
        let mut idle_for = 0;
        // Idle for 500 ms straight: requests read just before the listeners closed have shown up.
        while idle_for < 10 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let busy = m.requests_in_flight.get() > 0 || m.tcp_active.get() > 0;
            idle_for = if busy { 0 } else { idle_for + 1 };
        }
        log::warn!("graceful shutdown: no request or TCP connection in flight, exiting");
        crate::access_log::flush_global();
        std::process::exit(0);
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let live = self.0.clone();
        let installs = live.installs();
        health::run(
            move || live.snapshot().pools.values().cloned().collect(),
            installs,
            shutdown,
            self.1.clone(),
        )
        .await;
    }
}

/// Resolves the `resolve: true` servers again every `server.resolver_valid`.
struct NameRefresh(Arc<Live>);

#[async_trait]
impl BackgroundService for NameRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self
                .0
                .snapshot()
                .cfg
                .server
                .resolver_valid
                .0
                .max(std::time::Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let live = self.0.clone();
            // DNS answers are waited for on a thread of their own.
            let _ = tokio::task::spawn_blocking(move || live.refresh_names()).await;
        }
    }
}

/// Graceful upgrade: once this (new) process listens on the upgrade socket,
/// tell the old one (from the pid file) to hand over its sockets (SIGQUIT).
fn signal_old_process(pid_file: &str) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        log::warn!("upgrade: no pid in {pid_file}; send SIGQUIT to the old process yourself");
        return;
    };
    std::thread::spawn(move || {
        // bootstrap() binds the upgrade socket first; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        log::warn!("upgrade: asking process {pid} to hand over its listeners");
        let _ = std::process::Command::new("kill")
            .arg("-QUIT")
            .arg(pid.to_string())
            .status();
    });
}

/// The handshake settings of the `i`th TLS listener (of `tcp:` with `tcp`),
/// its certificates picked by SNI from the running configuration.
fn sni_tls(live: &Arc<Live>, i: usize, tcp: bool, http2: bool) -> Result<crate::listener::Tls, String> {
    let cb = crate::tls::SniCallback {
        live: live.clone(),
        listener: i,
        tcp,
    };
    crate::listener::Tls::new(Box::new(cb), http2)
}

/// Run the gateway (or just check the config with `-t`); returns the exit code.
pub fn run(args: Args) -> i32 {
    if let Some(path) = &args.import_nginx {
        return crate::import::run(path);
    }
    let states = Arc::new(StateRegistry::default());
    let snap = match live::load_file(&args.conf, &states) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portico: {e}");
            eprintln!("portico: configuration file {} test failed", args.conf);
            return 1;
        }
    };
    if args.test {
        println!("portico: configuration file {} syntax is ok", args.conf);
        println!("configuration OK");
        return 0;
    }
    if args.demo {
        crate::demo::spawn();
    }
    let cfg = snap.cfg.clone();
    let access_log = match AccessLog::open(&cfg.access_log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portico: access_log {}: {e}", cfg.access_log);
            return 1;
        }
    };
    let live = Arc::new(Live::new(snap, states, &args.conf));

    let s = &cfg.server;
    let mut conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.0.as_secs()),
        daemon: args.daemon || s.daemon,
        // Attempts are bounded by our retry policy; this is only Pingora's fail-safe.
        max_retries: 64,
        upstream_keepalive_pool_size: cfg.upstreams.values().map(|u| u.keepalive).sum::<usize>().max(16),
        ..ServerConf::default()
    };
    if let Some(p) = &s.pid_file {
        conf.pid_file = p.clone();
    }
    if let Some(p) = &s.upgrade_sock {
        conf.upgrade_sock = p.clone();
    }
    conf.error_log = s.error_log.clone();
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: conf.daemon,
        ..Opt::default()
    };
    let pid_file = conf.pid_file.clone();
    let daemon = conf.daemon;
    if args.upgrade {
        signal_old_process(&pid_file);
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With -u this blocks until the old process has handed over its listening sockets.
    server.bootstrap();
    if !daemon {
        // Pingora writes the pid file only when daemonized; the upgrade needs it always.
        if let Err(e) = std::fs::write(&pid_file, std::process::id().to_string()) {
            log::warn!("cannot write pid file {pid_file}: {e}");
        }
    }

    // Upstream connectors load the system's CA bundle, slowly: built while serving (`warming`).
    let transport = crate::upstream::transport(&server.configuration);
    for (i, l) in cfg.listeners.iter().enumerate() {
        let gw = Gateway {
            live: live.clone(),
            listener: i,
            scheme: if l.tls.is_some() { "https" } else { "http" },
            access_log: access_log.clone(),
        };
        let lean = crate::proxy::lean::LeanPath::new(gw.clone(), &server.configuration, transport.clone());
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = l.h2c;
        // An HTTP/2 connection with no stream open closes after keepalive_timeout (set at start).
        server_options.h2_idle_timeout = Some(cfg.server.keepalive_timeout.0);
        let proxy = crate::warming::Warming::new("the Pingora proxy", {
            let (conf, options) = (server.configuration.clone(), server_options.clone());
            move || {
                let mut proxy = pingora_proxy::http_proxy(&conf, gw);
                proxy.server_options = Some(options);
                Arc::new(proxy)
            }
        });
        let app = crate::listener::Listener {
            proxy,
            server_options,
            lean,
            live: live.clone(),
            index: i,
            proxy_protocol: l.accept_proxy_protocol,
            open: crate::listener::open::Open::new(&l.listen, l.max_connections),
            stop: Default::default(),
            lot: match crate::listener::Lot::new() {
                Ok(lot) => lot,
                Err(e) => {
                    eprintln!("portico: cannot set up the idle-connection lot for {}: {e}", l.listen);
                    return 1;
                }
            },
        };
        let read_ahead = match s.read_buffer {
            Some(b) => b.0 as usize,
            None if l.tls.is_some() => 16 * 1024,
            None => 0,
        };
        let tls = match l.tls.as_ref().map(|t| sni_tls(&live, i, false, t.http2)).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("portico: TLS setup for {}: {e}", l.listen);
                return 1;
            }
        };
        let svc = crate::listener::Accepting::new(&l.listen, app, tls, read_ahead, s.threads);
        server.add_service(svc);
    }
    for (i, t) in cfg.tcp.iter().enumerate() {
        let tls = match t.tls.as_ref().map(|_| sni_tls(&live, i, true, false)).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("portico: TLS setup for tcp {}: {e}", t.listen);
                return 1;
            }
        };
        let svc = crate::tcp::TcpService::new(&t.listen, i, live.clone(), access_log.clone(), tls);
        server.add_service(svc);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecks(live.clone(), transport.clone()),
    ));
    server.add_service(background_service("reload on SIGHUP", ReloadOnHup(live.clone())));
    server.add_service(background_service(
        "server names resolved again",
        NameRefresh(live.clone()),
    ));
    server.add_service(background_service("exit when idle", ExitWhenIdle));
    if let Some(a) = &cfg.admin {
        let admin = crate::admin::Admin {
            live: live.clone(),
            token: a.token.clone(),
        };
        let mut svc = pingora_core::services::listening::Service::new("admin".into(), admin);
        svc.add_tcp(&a.listen);
        // One thread: Pingora's accept loop may run on one of a service's
        // runtimes and its socket on another; stopped in the wrong order at
        // SIGINT, the loop then fails without end, at full CPU and a log
        // line each time (seen with `threads: 2`). The admin API needs no more.
        svc.threads = Some(1);
        server.add_service(svc);
    }
    log::info!(
        "portico listening on {:?}",
        cfg.listeners
            .iter()
            .map(|l| &l.listen)
            .chain(cfg.tcp.iter().map(|t| &t.listen))
            .collect::<Vec<_>>()
    );
    server.run(pingora_core::server::RunArgs::default());
    // Pingora's fast shutdown (SIGINT) returns here: the last lines must not be lost.
    crate::access_log::flush_global();
    std::process::exit(0)
}
