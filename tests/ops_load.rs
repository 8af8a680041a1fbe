//! Bounded load tests for operations (127.0.0.1 only), ignored in the normal
//! run because they take ~30 s; run them with
//! `cargo test --release --test ops_load -- --ignored --nocapture`.
//!
//! Steady keep-alive and new-connection GET traffic, slow (2 s) requests and
//! open WebSockets, while the binary is replaced several times (graceful
//! upgrade) or the config is reloaded 20 times. Reports the counts.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    refused: AtomicUsize,
    slow_ok: AtomicUsize,
    slow_failed: AtomicUsize,
    ws_ok: AtomicUsize,
    ws_failed: AtomicUsize,
    /// Idle keep-alive connections the server closed (the request is then sent on a new one).
    reconnects: AtomicUsize,
}

impl Counts {
    fn report(&self, what: &str) -> String {
        format!(
            "{what}: ok={} failed={} refused={} slow_ok={} slow_failed={} ws_sessions_ok={} ws_failed={} keepalive_reconnects={}",
            self.ok.load(SeqCst),
            self.failed.load(SeqCst),
            self.refused.load(SeqCst),
            self.slow_ok.load(SeqCst),
            self.slow_failed.load(SeqCst),
            self.ws_ok.load(SeqCst),
            self.ws_failed.load(SeqCst),
            self.reconnects.load(SeqCst)
        )
    }
}

fn config(fast: &[&Backend], slow: &Backend, ws: std::net::SocketAddr) -> String {
    format!(
        "server:\n  pid_file: {{DIR}}/p.pid\n  upgrade_sock: {{DIR}}/u.sock\n  grace_period: 20s\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\naccess_log: \"off\"\nupstreams:\n  app:\n    servers:\n{}  slow: {{ servers: [{{ address: \"{}\" }}] }}\n  ws: {{ servers: [{{ address: \"{ws}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations:\n      - {{ path: /, proxy_pass: app }}\n      - {{ path: /slow, proxy_pass: slow }}\n      - {{ path: /ws, proxy_pass: ws }}\n",
        servers_yaml(fast, ""),
        slow.addr
    )
}

/// Start traffic against `port` until `stop`; returns the thread handles.
fn traffic(port: u16, stop: Arc<AtomicBool>, c: Arc<Counts>) -> Vec<std::thread::JoinHandle<()>> {
    let mut hs = Vec::new();
    // Keep-alive clients: a dropped keep-alive connection is re-opened (like any HTTP client)
    // only if the request was not sent yet; a request that got no answer counts as failed.
    for _ in 0..4 {
        let (stop, c) = (stop.clone(), c.clone());
        hs.push(std::thread::spawn(move || {
            let mut cl: Option<Client> = None;
            while !stop.load(SeqCst) {
                if cl.is_none() {
                    match Client::connect(port) {
                        Ok(x) => cl = Some(x),
                        Err(_) => {
                            c.refused.fetch_add(1, SeqCst);
                            continue;
                        }
                    }
                }
                match cl.as_mut().unwrap().send("GET", "/", &[], b"") {
                    Ok(r) if r.status == 200 => {
                        c.ok.fetch_add(1, SeqCst);
                        if r.header("connection") == Some("close") {
                            cl = None;
                        }
                    }
                    Ok(_) => {
                        c.failed.fetch_add(1, SeqCst);
                    }
                    Err(_) => {
                        // The server closed an idle keep-alive connection as it shut down:
                        // retried once on a new connection, as browsers and HTTP clients do.
                        cl = None;
                        c.reconnects.fetch_add(1, SeqCst);
                        match try_request(port, "GET", "/", &[], b"") {
                            Ok(r) if r.status == 200 => c.ok.fetch_add(1, SeqCst),
                            _ => c.failed.fetch_add(1, SeqCst),
                        };
                    }
                }
            }
        }));
    }
    // New connection per request.
    for _ in 0..2 {
        let (stop, c) = (stop.clone(), c.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                match try_request(port, "GET", "/", &[("Connection", "close")], b"") {
                    Ok(r) if r.status == 200 => c.ok.fetch_add(1, SeqCst),
                    Ok(_) => c.failed.fetch_add(1, SeqCst),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => c.refused.fetch_add(1, SeqCst),
                    Err(_) => c.failed.fetch_add(1, SeqCst),
                };
            }
        }));
    }
    // Slow requests (2 s each), always one in flight.
    for _ in 0..2 {
        let (stop, c) = (stop.clone(), c.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                match try_request(port, "GET", "/slow", &[("Connection", "close")], b"") {
                    Ok(r) if r.status == 200 => c.slow_ok.fetch_add(1, SeqCst),
                    _ => c.slow_failed.fetch_add(1, SeqCst),
                };
            }
        }));
    }
    // WebSockets: each session lives ~1.5 s exchanging messages.
    for _ in 0..3 {
        let (stop, c) = (stop.clone(), c.clone());
        hs.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                while !stop.load(SeqCst) {
                    let ok = async {
                        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
                            .await
                            .ok()?;
                        for i in 0..15 {
                            ws.send(Message::text(format!("{i}"))).await.ok()?;
                            if ws.next().await?.ok()? != Message::text(format!("{i}")) {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        ws.close(None).await.ok()
                    }
                    .await;
                    match ok {
                        Some(()) => c.ws_ok.fetch_add(1, SeqCst),
                        None => c.ws_failed.fetch_add(1, SeqCst),
                    };
                }
            });
        }));
    }
    hs
}

async fn ws_echo() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// Backends, a WebSocket echo server and a gateway in front of them, ready
/// for `traffic`. Fields are kept alive for the whole test.
struct Loaded {
    _rt: tokio::runtime::Runtime,
    _backends: Vec<Backend>,
    gateway: Gateway,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

impl Loaded {
    fn start() -> Loaded {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ws = rt.block_on(ws_echo());
        let (a, b) = (Backend::start("a"), Backend::start("b"));
        let slow = Backend::start_with("slow", Behaviour::Slow(Duration::from_secs(2)));
        let gateway = Gateway::start(&config(&[&a, &b], &slow, ws));
        Loaded {
            _rt: rt,
            _backends: vec![a, b, slow],
            gateway,
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts::default()),
        }
    }
}

/// Upgraded processes, stopped however the test ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// Replace `g`'s process by a new one (`portico -u`, the `i`th), and wait
/// until the previous one has handed over (Pingora keeps serving 5 s after
/// passing the sockets), drained and exited; how long that took.
fn upgrade(g: &Gateway, i: usize, children: &mut Children) -> Duration {
    let pid = || std::fs::read_to_string(g.dir.join("p.pid")).unwrap_or_default();
    let old = pid();
    let child = Command::new(portico_bin())
        .args(["-u", "-c", g.conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(g.dir.join(format!("upgrade{i}.log"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    children.0.push(child);
    let t = Instant::now();
    // Gone, or a zombie for us to reap.
    let alive = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", old.trim())).unwrap_or_default();
        !stat.is_empty() && !stat.contains(") Z ")
    };
    while alive() {
        assert!(t.elapsed() < Duration::from_secs(20), "old process {old} still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(pid(), old, "the new process took over");
    t.elapsed()
}

#[test]
#[ignore]
fn graceful_upgrade_under_load() {
    let l = Loaded::start();
    let (g, stop, counts) = (&l.gateway, l.stop.clone(), l.counts.clone());
    let hs = traffic(g.port, stop.clone(), counts.clone());
    std::thread::sleep(Duration::from_secs(2));
    let mut children = Children(Vec::new());
    for i in 0..3 {
        let took = upgrade(g, i, &mut children);
        println!(
            "upgrade {i}: old process gone after {took:?}; {}",
            counts.report("so far")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, SeqCst);
    for h in hs {
        h.join().unwrap();
    }
    let report = counts.report("graceful upgrade x3");
    println!("{report}");
    drop(children);
    assert_eq!(counts.failed.load(SeqCst), 0, "{report}");
    assert_eq!(counts.refused.load(SeqCst), 0, "{report}");
    assert_eq!(counts.slow_failed.load(SeqCst), 0, "{report}");
    assert_eq!(counts.ws_failed.load(SeqCst), 0, "{report}");
}

#[test]
#[ignore]
fn reload_twenty_times_under_load() {
    let l = Loaded::start();
    let (g, stop, counts) = (&l.gateway, l.stop.clone(), l.counts.clone());
    let hs = traffic(g.port, stop.clone(), counts.clone());
    let yaml = std::fs::read_to_string(&g.conf).unwrap();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        // Alternate the pool between weights so each reload really changes something.
        let w = if i % 2 == 0 {
            yaml.replace("      - address", "      - weight: 2\n        address")
        } else {
            yaml.clone()
        };
        std::fs::write(&g.conf, w).unwrap();
        g.signal("HUP");
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, SeqCst);
    for h in hs {
        h.join().unwrap();
    }
    let report = counts.report("20 reloads");
    println!("{report}");
    assert!(
        g.stderr().matches("configuration reloaded").count() >= 20,
        "{}",
        g.stderr()
    );
    assert_eq!(counts.failed.load(SeqCst) + counts.refused.load(SeqCst), 0, "{report}");
    assert_eq!(
        counts.slow_failed.load(SeqCst) + counts.ws_failed.load(SeqCst),
        0,
        "{report}"
    );
}

/// Issue 4's load test: 3 servers under steady concurrent GET load; one is
/// killed and restarted mid-run. Goal: no failed client request.
#[test]
#[ignore]
fn server_killed_and_restarted_under_load() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\naccess_log: \"off\"\nupstreams:\n  app:\n    connect_timeout: 1s\n    read_timeout: 2s\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        servers_yaml(&[&a, &b, &c], "        max_fails: 1\n        fail_timeout: 2s\n")
    ));
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let port = g.port;
    let hs: Vec<_> = (0..6)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut cl = Client::connect(port).unwrap();
                while !stop.load(SeqCst) {
                    match cl.send("GET", "/", &[], b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, SeqCst),
                        Ok(_) => failed.fetch_add(1, SeqCst),
                        Err(_) => {
                            failed.fetch_add(1, SeqCst);
                            cl = Client::connect(port).unwrap();
                            0
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let addr = b.addr;
    b.stop();
    drop(b);
    println!("killed {addr} after {} requests", ok.load(SeqCst));
    std::thread::sleep(Duration::from_secs(3));
    let b = Backend::start_on("b", addr, Behaviour::Echo);
    println!("restarted {addr} after {} requests", ok.load(SeqCst));
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, SeqCst);
    for h in hs {
        h.join().unwrap();
    }
    println!(
        "kill/restart under load: ok={} failed={} (a={} b-after-restart={} c={})",
        ok.load(SeqCst),
        failed.load(SeqCst),
        a.hits(),
        b.hits(),
        c.hits()
    );
    assert_eq!(failed.load(SeqCst), 0);
    assert!(b.hits() > 0, "the restarted server is back in rotation");
}

/// A TCP listener under steady load: new connections (one HTTP request
/// each) and kept-alive sessions, while the binary is replaced twice and
/// then one of three servers is killed and restarted. Goal: no connection
/// refused or failed through the upgrades; once a server is killed, only
/// the connections it held at that moment are lost (a TCP balancer cannot
/// move a connection whose bytes a server may have read), and every new
/// connection goes to a live server.
#[test]
#[ignore]
fn tcp_listener_through_upgrades_and_a_killed_server_under_load() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let tp = free_port();
    let g = Gateway::start(&format!(
        "server:\n  pid_file: {{DIR}}/p.pid\n  upgrade_sock: {{DIR}}/u.sock\n  grace_period: 20s\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\naccess_log: \"off\"\ntcp:\n  - listen: 127.0.0.1:{tp}\n    proxy_pass: app\n    connect_timeout: 1s\nupstreams:\n  app:\n    servers:\n{}",
        servers_yaml(&[&a, &b, &c], "        max_fails: 1\n        fail_timeout: 2s\n")
    ));
    g.wait_listening(tp);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, sessions) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // When each failure happened (ms since the start), and what it was.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(u128, String)>::new()));
    let mut hs = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                match try_request(tp, "GET", "/", &[], b"") {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, SeqCst),
                    r => {
                        let what = format!("request: {:?}", r.map(|r| r.status));
                        failures.lock().unwrap().push((started.elapsed().as_millis(), what));
                        0
                    }
                };
            }
        }));
    }
    // Kept-alive sessions of about 2 s each: 10 requests a second on one connection.
    for _ in 0..2 {
        let (stop, sessions, failures) = (stop.clone(), sessions.clone(), failures.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                let mut cl = match Client::connect(tp) {
                    Ok(cl) => cl,
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push((started.elapsed().as_millis(), format!("connect: {e}")));
                        continue;
                    }
                };
                let session = Instant::now();
                let mut whole = true;
                while whole && session.elapsed() < Duration::from_secs(2) && !stop.load(SeqCst) {
                    if !cl.send("GET", "/", &[], b"").is_ok_and(|r| r.status == 200) {
                        failures
                            .lock()
                            .unwrap()
                            .push((started.elapsed().as_millis(), "session".into()));
                        whole = false;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if whole {
                    sessions.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut children = Children(Vec::new());
    for i in 0..2 {
        let took = upgrade(&g, i, &mut children);
        println!(
            "tcp upgrade {i}: old process gone after {took:?}; ok={}",
            ok.load(SeqCst)
        );
    }
    let upgrades_failed = failures.lock().unwrap().len();

    std::thread::sleep(Duration::from_secs(1));
    let addr = b.addr;
    let killed = started.elapsed().as_millis();
    b.stop();
    drop(b);
    std::thread::sleep(Duration::from_secs(2));
    let b = Backend::start_on("b", addr, Behaviour::Echo);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, SeqCst);
    for h in hs {
        h.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let report = format!(
        "tcp under load: requests ok={} sessions ok={} failed={} ({upgrades_failed} during the upgrades; killed at {killed} ms: {:?}); a={} b after restart={} c={}",
        ok.load(SeqCst),
        sessions.load(SeqCst),
        failures.len(),
        failures,
        a.hits(),
        b.hits(),
        c.hits()
    );
    println!("{report}");
    drop(children);
    assert_eq!(upgrades_failed, 0, "{report}");
    // Only what the killed server held when it went (within its 30 ms stop).
    assert!(
        failures.iter().all(|(t, _)| *t >= killed && *t < killed + 500),
        "{report}"
    );
    assert!(b.hits() > 0, "the restarted server is back in rotation: {report}");
}
