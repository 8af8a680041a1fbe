//! The running configuration: a `Snapshot` compiled from a validated YAML
//! file, held behind an atomic pointer so that a reload swaps everything at
//! once. A request takes the snapshot once at its start and uses only that,
//! so it never sees a mix of old and new.

use crate::config::{self, ConfigError, Loaded};
use crate::metrics::RouteMetrics;
use crate::plugins::PluginList;
use crate::retry::RetryPolicy;
use crate::routing::{HostTable, PathMatch, PathTable};
use crate::template::Template;
use crate::upstream::health::{self, CheckSpec, Probe};
use crate::upstream::state::StateRegistry;
use crate::upstream::{sticky, HashKey, Pool, PoolServer, PoolSpec, Timeouts, UpstreamTls};
use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora_load_balancing::Backend;
use portico_plugin_api::Hooks;
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// What to do with a request that matched a location.
pub enum Action {
    Proxy(Arc<Pool>),
    Return {
        status: u16,
        location: Option<Template>,
        body: Option<Template>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Upgrade {
    WebSocket,
    Any,
    Off,
}

pub struct Location {
    /// `host path`, for logs and metrics.
    pub name: Arc<str>,
    pub action: Action,
    pub max_body: Option<u64>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// `proxy_set_header`: names as written in the config (sent so, as nginx does).
    pub set_headers: Vec<(String, Template)>,
    pub remove_headers: Vec<HeaderName>,
    pub upgrade: Upgrade,
    pub ws_idle: Duration,
    /// The path the request goes upstream with.
    pub rewrite: Option<crate::rewrite::Rewrite>,
    /// Compression of the responses proxied here.
    pub compression: Option<Arc<crate::compress::Compression>>,
    /// Request counters, one set per listener (by listener index).
    pub metrics: Vec<RouteMetrics>,
    /// Filter plugins in run order: global, host, location.
    pub plugins: PluginList,
}

impl Location {
    /// Does anything beyond the forwarding headers edit the upstream request
    /// (header rules, plugins)?
    pub fn edits_upstream_request(&self) -> bool {
        !self.set_headers.is_empty() || !self.remove_headers.is_empty() || self.plugins.any(Hooks::UPSTREAM_REQUEST)
    }
}

pub struct VHost {
    pub paths: PathTable<Arc<Location>>,
}

pub struct ListenerRt {
    pub addr: String,
    /// SNI certificate store of a TLS listener.
    pub certs: Option<Arc<crate::tls::CertStore>>,
    pub hosts: HostTable<Arc<VHost>>,
    /// Requests answered without a location (404, health endpoint).
    pub unrouted: RouteMetrics,
}

pub struct Snapshot {
    pub listeners: Vec<ListenerRt>,
    /// The TCP listeners' settings, in the config's order.
    pub tcp: Vec<Arc<crate::tcp::Route>>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub trusted: Vec<IpNet>,
    pub health_path: Option<String>,
    /// Some pool speaks HTTP/2 upstream (the lean HTTP/1 path must route first).
    pub has_http2_pool: bool,
    /// The effective configuration (file plus runtime changes).
    pub cfg: config::Config,
    /// The configuration as the file says, before runtime changes.
    pub base: config::Config,
    pub file: String,
    /// The `resolve: true` servers, as resolved for this snapshot.
    pub names: ResolvedNames,
}

impl Snapshot {
    pub fn is_trusted(&self, ip: &std::net::IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusted.iter().any(|n| n.contains(ip))
    }
}

/// Runtime server changes made through the admin API. They are re-applied
/// on every reload, so they survive it until the file says otherwise.
#[derive(Default, Clone)]
pub struct Overlay {
    pub added: Vec<(String, config::Server)>,
    pub removed: Vec<(String, SocketAddr)>,
}

/// The live configuration plus state that outlives configurations.
pub struct Live {
    pub current: ArcSwap<Snapshot>,
    pub states: Arc<StateRegistry>,
    /// The file reloads read.
    pub path: String,
    /// Listener addresses bound at start; changing them needs a binary upgrade.
    listeners: Vec<String>,
    overlay: std::sync::Mutex<Overlay>,
    /// Serialises reloads and runtime changes.
    change: std::sync::Mutex<()>,
    /// Signals each configuration installed, so tasks that sleep until
    /// their next piece of work (the health checker) wake up when one is.
    installed: tokio::sync::watch::Sender<()>,
}

impl Live {
    pub fn new(s: Snapshot, states: Arc<StateRegistry>, path: &str) -> Self {
        Live {
            listeners: listener_keys(&s.cfg),
            current: ArcSwap::from_pointee(s),
            states,
            path: path.to_string(),
            overlay: Default::default(),
            change: Default::default(),
            installed: tokio::sync::watch::Sender::new(()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Changes each time a new configuration is installed (reload or
    /// runtime change).
    pub fn installs(&self) -> tokio::sync::watch::Receiver<()> {
        self.installed.subscribe()
    }

    /// Re-read the file; on any error the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let _g = self.change.lock().unwrap();
        let r = config::load(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|l| self.install(l));
        let m = crate::metrics::get();
        match &r {
            Ok(()) => {
                m.reloads.with_label_values(&["ok"]).inc();
                log::warn!("configuration reloaded from {}", self.path);
            }
            Err(e) => {
                m.reloads.with_label_values(&["error"]).inc();
                log::error!("reload failed, keeping the running configuration: {e}");
            }
        }
        r
    }

    /// Build `l` (with the runtime overlay) and swap it in.
    fn install(&self, mut l: Loaded) -> Result<(), String> {
        let base = l.cfg.clone();
        let overlay = self.overlay.lock().unwrap().clone();
        apply_overlay(&mut l.cfg, &overlay);
        let now = listener_keys(&l.cfg);
        if now != self.listeners {
            return Err(format!(
                "listeners changed ({:?} -> {now:?}): new listeners need a binary upgrade (see docs/operations.md)",
                self.listeners
            ));
        }
        let mut snap = build(&l, &self.states).map_err(|e| e.to_string())?;
        snap.base = base;
        let keep: HashSet<(String, String)> = snap
            .pools
            .values()
            .flat_map(|p| p.servers.iter().map(|s| (p.name.to_string(), s.addr.clone())))
            .collect();
        for p in snap.pools.values() {
            if let [only] = p.servers.as_slice() {
                only.state.clear_passive_down();
            }
        }
        self.current.store(Arc::new(snap));
        self.states
            .retain(|p, a| keep.contains(&(p.to_string(), a.to_string())));
        self.installed.send_replace(());
        Ok(())
    }

    /// Rebuild from the running file configuration plus the updated overlay.
    fn change_overlay(&self, f: impl FnOnce(&mut Overlay)) -> Result<(), String> {
        const RUNTIME: &str = " (+ runtime changes)";
        let _g = self.change.lock().unwrap();
        let before = self.overlay.lock().unwrap().clone();
        f(&mut self.overlay.lock().unwrap());
        let r = self.reinstall(|file| match file.ends_with(RUNTIME) {
            true => file.to_string(),
            false => format!("{file}{RUNTIME}"),
        });
        if r.is_err() {
            *self.overlay.lock().unwrap() = before;
        }
        r
    }

    /// Build the running file configuration again (with the overlay) and
    /// swap it in, named `name(running name)`. The caller holds `change`.
    fn reinstall(&self, name: impl FnOnce(&str) -> String) -> Result<(), String> {
        let cur = self.snapshot();
        self.install(Loaded {
            file: name(&cur.file),
            cfg: cur.base.clone(),
            pos: Default::default(),
        })
    }

    /// Register a server into a pool at runtime.
    pub fn add_server(&self, pool: &str, server: config::Server) -> Result<(), String> {
        let addr = resolve(&server.address)?;
        if !self.snapshot().pools.contains_key(pool) {
            return Err(format!("no upstream {pool:?}"));
        }
        self.change_overlay(|o| {
            o.removed.retain(|(p, a)| !(p == pool && *a == addr));
            o.added
                .retain(|(p, s)| !(p == pool && resolve(&s.address).ok() == Some(addr)));
            o.added.push((pool.to_string(), server));
        })?;
        // A server registered again is no longer draining.
        if let Some(p) = self.snapshot().pools.get(pool) {
            if let Some(i) = p.index_of_addr(&addr.to_string()) {
                p.servers[i]
                    .state
                    .draining
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Resolve the `resolve: true` servers again; if any name's addresses
    /// changed, rebuild the pools from the running configuration (servers
    /// that stay keep their state). A name that does not resolve keeps
    /// its addresses.
    pub fn refresh_names(&self) {
        let snap = self.snapshot();
        if snap.names.is_empty() {
            return;
        }
        let resolver = snap.cfg.server.resolver.as_deref().and_then(crate::dns::resolver_addr);
        let asked: Vec<&str> = snap.names.iter().map(|(_, n, _)| n.as_str()).collect();
        let now = crate::dns::lookup_all(resolver, &asked);
        let mut changed = Vec::new();
        for ((pool, name, was), now) in snap.names.iter().zip(now) {
            match now {
                Ok(addrs) if addrs != *was => changed.push(format!("{pool}: {name} {was:?} -> {addrs:?}")),
                Ok(_) => {}
                Err(e) => log::warn!("upstream {pool}: {e}; keeping its last addresses {was:?}"),
            }
        }
        if changed.is_empty() {
            return;
        }
        let _g = self.change.lock().unwrap();
        match self.reinstall(str::to_string) {
            Ok(()) => log::warn!("servers resolved again: {}", changed.join("; ")),
            Err(e) => log::error!(
                "servers resolved again ({}), but the pools stay: {e}",
                changed.join("; ")
            ),
        }
    }

    /// Remove a server from a pool at runtime (after draining).
    pub fn remove_server(&self, pool: &str, addr: SocketAddr) -> Result<(), String> {
        self.change_overlay(|o| {
            o.added
                .retain(|(p, s)| !(p == pool && resolve(&s.address).ok() == Some(addr)));
            o.removed.push((pool.to_string(), addr));
        })
    }
}

/// What a reload cannot change about the listeners: their addresses, and
/// whether each speaks TLS or TCP.
fn listener_keys(c: &config::Config) -> Vec<String> {
    let proxied = |yes: bool| if yes { ", PROXY protocol" } else { "" };
    let http = c.listeners.iter().map(|l| {
        let tls = match &l.tls {
            Some(t) => format!(", tls{}", if t.http2 { ", h2" } else { "" }),
            None => String::new(),
        };
        let bound = match l.max_connections {
            0 => String::new(),
            n => format!(", max_connections {n}"),
        };
        match format!("{tls}{}{bound}", proxied(l.accept_proxy_protocol)) {
            k if k.is_empty() => l.listen.clone(),
            k => format!("{} ({})", l.listen, &k[2..]),
        }
    });
    let tcp = c.tcp.iter().map(|t| {
        let tls = if t.tls.is_some() { ", tls" } else { "" };
        format!("{} (tcp{tls}{})", t.listen, proxied(t.accept_proxy_protocol))
    });
    http.chain(tcp).collect()
}

fn apply_overlay(cfg: &mut config::Config, o: &Overlay) {
    for (pool, server) in &o.added {
        if let Some(u) = cfg.upstreams.get_mut(pool) {
            let addr = resolve(&server.address).ok();
            if !u.servers.iter().any(|s| resolve(&s.address).ok() == addr) {
                u.servers.push(server.clone());
            }
        }
    }
    for (pool, addr) in &o.removed {
        if let Some(u) = cfg.upstreams.get_mut(pool) {
            u.servers.retain(|s| resolve(&s.address).ok() != Some(*addr));
        }
    }
}

fn dur(d: &Option<config::units::Dur>) -> Option<Duration> {
    d.map(|d| d.0)
}

fn retry_policy(
    l: &Loaded,
    path: &str,
    conds: &Option<Vec<String>>,
    tries: Option<usize>,
    timeout: Option<Duration>,
    base: &RetryPolicy,
) -> Result<RetryPolicy, ConfigError> {
    let conditions = match conds {
        Some(c) => RetryPolicy::parse(c).map_err(|e| l.err(&format!("{path}.next_upstream"), e))?,
        None => base.conditions,
    };
    Ok(RetryPolicy {
        conditions,
        tries: tries.unwrap_or(base.tries),
        timeout: timeout.or(base.timeout),
    })
}

/// Resolve `host:port` or `ip:port` to one socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("invalid address {addr:?}: expected host:port"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {addr:?} resolves to nothing"))
}

/// A pool's `resolve: true` servers as resolved: pool, name, addresses.
pub type ResolvedNames = Vec<(String, String, Vec<SocketAddr>)>;

fn build_pool(
    l: &Loaded,
    name: &str,
    u: &config::Upstream,
    states: &StateRegistry,
    names: &mut ResolvedNames,
) -> Result<Pool, ConfigError> {
    let resolver = resolver(l)?;
    let p = format!("upstreams.{name}");
    if u.servers.is_empty() {
        return Err(l.err(&format!("{p}.servers"), "upstream has no servers"));
    }
    let health = match &u.health_check {
        None => None,
        Some(h) => {
            let hp = format!("{p}.health_check");
            let probe = match h.kind.as_str() {
                "tcp" => Probe::Tcp,
                "http" => Probe::Http {
                    method: h.method.clone(),
                    path: h.path.clone(),
                    host: h.host.clone(),
                    statuses: health::parse_statuses(&h.expect_status)
                        .map_err(|e| l.err(&format!("{hp}.expect_status"), e))?,
                    body: h.expect_body.clone(),
                },
                other => {
                    return Err(l.err(
                        &format!("{hp}.type"),
                        format!("unknown check type {other:?} (http or tcp)"),
                    ))
                }
            };
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return Err(l.err(&hp, "thresholds must be at least 1"));
            }
            Some(CheckSpec {
                probe,
                interval: dur(&h.interval).unwrap_or(Duration::from_secs(5)),
                timeout: dur(&h.timeout).unwrap_or(Duration::from_secs(2)),
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
                wait_for_first_pass: h.wait_for_first_pass,
            })
        }
    };
    let start_healthy = !health.as_ref().is_some_and(|h| h.wait_for_first_pass);
    let mut seen = HashSet::new();
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        let sp = format!("{p}.servers[{i}]");
        if s.weight == 0 {
            return Err(l.err(&format!("{sp}.weight"), "weight must be at least 1"));
        }
        if s.resolve && crate::dns::is_literal(&s.address) {
            return Err(l.err(&format!("{sp}.resolve"), "resolve needs a host name, not an address"));
        }
        // Every address of the name is a server (nginx's way).
        let addrs = match s.resolve {
            true => states.resolved(&s.address, crate::dns::lookup(resolver, &s.address)),
            false => crate::dns::lookup(None, &s.address),
        };
        let addrs = addrs.map_err(|e| l.err(&format!("{sp}.address"), e))?;
        if s.resolve {
            names.push((name.to_string(), s.address.clone(), addrs.clone()));
        }
        for addr in addrs {
            if !seen.insert(addr) {
                return Err(l.err(&format!("{sp}.address"), format!("duplicate server {addr}")));
            }
            let addr_s = addr.to_string();
            let backend = Backend::new_with_weight(&addr_s, s.weight)
                .map_err(|e| l.err(&format!("{sp}.address"), e.to_string()))?;
            servers.push(PoolServer {
                histogram: crate::metrics::upstream_histogram(name, &addr_s),
                state: states.get(name, &addr_s, start_healthy),
                addr: addr_s,
                backend,
                weight: s.weight,
                max_fails: s.max_fails,
                fail_timeout: dur(&s.fail_timeout).unwrap_or(Duration::from_secs(10)),
                backup: s.backup,
                down: s.down,
            });
        }
    }
    if servers.iter().all(|s| s.backup) {
        return Err(l.err(&format!("{p}.servers"), "upstream needs at least one non-backup server"));
    }
    if let [only] = servers.as_mut_slice() {
        // nginx: the only server of a group is never considered unavailable
        // (`max_fails` and `fail_timeout` are ignored): one failure would
        // otherwise turn every request into a 503 for `fail_timeout`.
        // Active health checks and draining still apply.
        // A mark from before a reload left it alone is cleared at install.
        only.max_fails = 0;
    }
    use config::Algorithm as A;
    let hash_key = match (u.algorithm, &u.hash_key) {
        (A::Hash, None) => return Err(l.err(&format!("{p}.hash_key"), "algorithm `hash` needs a hash_key")),
        (A::Hash, Some(k)) => Some(HashKey::parse(k).map_err(|e| l.err(&format!("{p}.hash_key"), e))?),
        (A::IpHash, _) => Some(HashKey::ClientNet),
        (_, Some(_)) => return Err(l.err(&format!("{p}.hash_key"), "hash_key is only used with algorithm `hash`")),
        _ => None,
    };
    let sticky = match (u.algorithm, &u.sticky) {
        (A::Sticky, None) => return Err(l.err(&format!("{p}.sticky"), "algorithm `sticky` needs a sticky section")),
        (A::Sticky, Some(s)) => {
            let sp = format!("{p}.sticky");
            let mode = match s.mode.as_str() {
                "insert" => sticky::Mode::Insert,
                "hash" => sticky::Mode::Hash,
                m => {
                    return Err(l.err(
                        &format!("{sp}.mode"),
                        format!("unknown sticky mode {m:?} (insert or hash)"),
                    ))
                }
            };
            let secret = match (&s.secret, mode) {
                (Some(k), _) if k.len() >= 16 => k.as_bytes().to_vec(),
                (Some(_), _) => return Err(l.err(&format!("{sp}.secret"), "secret must be at least 16 characters")),
                (None, sticky::Mode::Insert) => {
                    return Err(l.err(&format!("{sp}.secret"), "insert mode needs a secret"))
                }
                (None, sticky::Mode::Hash) => Vec::new(),
            };
            if let Some(ss) = &s.same_site {
                if !["Strict", "Lax", "None"].contains(&ss.as_str()) {
                    return Err(l.err(&format!("{sp}.same_site"), "same_site must be Strict, Lax or None"));
                }
            }
            Some(sticky::Sticky::new(
                mode,
                s.cookie.clone(),
                secret,
                s.path.clone(),
                s.domain.clone(),
                dur(&s.max_age),
                s.http_only,
                s.same_site.clone(),
            ))
        }
        (_, Some(_)) => return Err(l.err(&format!("{p}.sticky"), "sticky settings need algorithm `sticky`")),
        _ => None,
    };
    let tls = match (u.tls, &u.tls_ca_file) {
        (false, _) => None,
        (true, ca) => {
            let ca = match ca {
                None => None,
                Some(f) => {
                    let pem = std::fs::read(f)
                        .map_err(|e| l.err(&format!("{p}.tls_ca_file"), format!("cannot read {f}: {e}")))?;
                    let certs = openssl::x509::X509::stack_from_pem(&pem)
                        .map_err(|e| l.err(&format!("{p}.tls_ca_file"), format!("{f}: {e}")))?;
                    Some(Arc::new(certs.into_boxed_slice()))
                }
            };
            Some(UpstreamTls {
                sni: u.tls_sni.clone().unwrap_or_default(),
                verify: u.tls_verify,
                ca,
                client: client_cert(l, &p, u)?,
            })
        }
    };
    if !u.tls && (u.tls_cert.is_some() || u.tls_key.is_some()) {
        return Err(l.err(&format!("{p}.tls_cert"), "a client certificate goes with tls: true"));
    }
    let retry = retry_policy(
        l,
        &p,
        &u.next_upstream,
        u.next_upstream_tries,
        dur(&u.next_upstream_timeout),
        &RetryPolicy::default(),
    )?;
    Ok(Pool::new(PoolSpec {
        name: name.to_string(),
        algorithm: u.algorithm,
        consistent: u.consistent || (u.algorithm == A::Sticky),
        servers,
        hash_key,
        sticky,
        timeouts: Timeouts {
            connect: dur(&u.connect_timeout).or(Some(Duration::from_secs(5))),
            read: dur(&u.read_timeout).or(Some(Duration::from_secs(60))),
            write: dur(&u.write_timeout).or(Some(Duration::from_secs(60))),
            header: dur(&u.header_timeout),
        },
        keepalive: u.keepalive,
        keepalive_timeout: dur(&u.keepalive_timeout).or(Some(Duration::from_secs(60))),
        retry,
        health,
        tls,
        http2: u.http2,
    }))
}

/// A pool's client certificate and key (`tls_cert`, `tls_key`): both or
/// neither, readable, matching and within their dates.
fn client_cert(
    l: &Loaded,
    p: &str,
    u: &config::Upstream,
) -> Result<Option<Arc<pingora_core::utils::tls::CertKey>>, ConfigError> {
    match (&u.tls_cert, &u.tls_key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(l.err(&format!("{p}.tls_cert"), "tls_cert needs tls_key")),
        (None, Some(_)) => Err(l.err(&format!("{p}.tls_key"), "tls_key needs tls_cert")),
        (Some(cert), Some(key)) => {
            let ck = crate::tls::load(cert, key).map_err(|e| l.err(&format!("{p}.tls_cert"), e))?;
            Ok(Some(Arc::new(pingora_core::utils::tls::CertKey::new(ck.chain, ck.key))))
        }
    }
}

/// A `compression` block at `path`; `None` when it turns every coding off.
fn compression(
    l: &Loaded,
    path: &str,
    c: &config::CompressionConf,
) -> Result<Option<Arc<crate::compress::Compression>>, ConfigError> {
    let built = crate::compress::Compression::new((c.gzip, c.brotli, c.zstd), c.min_length.0, c.types.as_deref());
    let built = built.map_err(|(field, why)| l.err(&format!("{path}.{field}"), why))?;
    Ok(built.map(Arc::new))
}

fn template(l: &Loaded, path: &str, s: &str) -> Result<Template, ConfigError> {
    Template::parse(s).map_err(|e| l.err(path, e))
}

/// What a location takes from its virtual host (and, through it, the top level).
struct HostPart<'a> {
    /// Its first name, for logs and metrics.
    label: &'a str,
    plugins: &'a PluginList,
    compression: &'a Option<Arc<crate::compress::Compression>>,
}

fn build_location(
    l: &Loaded,
    path: &str,
    host: &HostPart,
    loc: &config::Location,
    pools: &BTreeMap<String, Arc<Pool>>,
    listener_addrs: &[String],
) -> Result<(PathMatch, Arc<Location>), ConfigError> {
    let plugins = host
        .plugins
        .then(&crate::plugins::build(l, &format!("{path}.plugins"), &loc.plugins)?);
    let m = PathMatch::parse(&loc.path).map_err(|e| l.err(&format!("{path}.path"), e))?;
    let (action, pool) = match (&loc.proxy_pass, &loc.ret) {
        (Some(_), Some(_)) => return Err(l.err(path, "a location has either proxy_pass or return, not both")),
        (None, None) => return Err(l.err(path, "a location needs proxy_pass or return")),
        (Some(name), None) => {
            let pool = pools
                .get(name)
                .ok_or_else(|| l.err(&format!("{path}.proxy_pass"), format!("unknown upstream {name:?}")))?;
            (Action::Proxy(pool.clone()), Some(pool))
        }
        (None, Some(r)) => {
            if !(100..=599).contains(&r.status) {
                return Err(l.err(&format!("{path}.return.status"), "status must be 100..599"));
            }
            if matches!(r.status, 301 | 302 | 303 | 307 | 308) && r.location.is_none() {
                return Err(l.err(&format!("{path}.return.location"), "a redirect needs a location"));
            }
            let location = match &r.location {
                Some(s) => Some(template(l, &format!("{path}.return.location"), s)?),
                None => None,
            };
            let body = match &r.body {
                Some(s) => Some(template(l, &format!("{path}.return.body"), s)?),
                None => None,
            };
            (
                Action::Return {
                    status: r.status,
                    location,
                    body,
                },
                None,
            )
        }
    };
    let mut set_headers = Vec::new();
    for (k, v) in &loc.proxy_set_header {
        let hp = format!("{path}.proxy_set_header.{k}");
        HeaderName::from_bytes(k.as_bytes()).map_err(|_| l.err(&hp, format!("invalid header name {k:?}")))?;
        HeaderValue::from_str(v).map_err(|_| l.err(&hp, "invalid header value"))?;
        set_headers.push((k.clone(), template(l, &hp, v)?));
    }
    let mut remove_headers = Vec::new();
    for (i, k) in loc.proxy_remove_header.iter().enumerate() {
        remove_headers.push(HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            l.err(
                &format!("{path}.proxy_remove_header[{i}]"),
                format!("invalid header name {k:?}"),
            )
        })?);
    }
    let upgrade = match loc.upgrade.as_deref() {
        None | Some("websocket") => Upgrade::WebSocket,
        Some("any") => Upgrade::Any,
        Some("off") => Upgrade::Off,
        Some(o) => {
            return Err(l.err(
                &format!("{path}.upgrade"),
                format!("unknown upgrade mode {o:?} (websocket, any, off)"),
            ))
        }
    };
    let own = Timeouts {
        connect: dur(&loc.connect_timeout),
        read: dur(&loc.read_timeout),
        write: dur(&loc.write_timeout),
        header: dur(&loc.header_timeout),
    };
    let (timeouts, base_retry) = match pool {
        Some(p) => (own.or(&p.timeouts), p.retry.clone()),
        None => (own, RetryPolicy::default()),
    };
    let retry = retry_policy(
        l,
        path,
        &loc.next_upstream,
        loc.next_upstream_tries,
        dur(&loc.next_upstream_timeout),
        &base_retry,
    )?;
    let rewrite = match &loc.rewrite {
        Some(r) if pool.is_none() => return Err(l.err(&format!("{path}.rewrite"), "rewrite goes with proxy_pass")),
        Some(r) => {
            Some(crate::rewrite::Rewrite::new(&r.from, &r.to).map_err(|e| l.err(&format!("{path}.rewrite"), e))?)
        }
        None => None,
    };
    // Its own block, else the virtual host's, else the top level's; for proxied answers only.
    let compression = match &loc.compression {
        Some(_) if pool.is_none() => {
            return Err(l.err(&format!("{path}.compression"), "compression goes with proxy_pass"))
        }
        Some(c) => compression(l, &format!("{path}.compression"), c)?,
        None if pool.is_some() => host.compression.clone(),
        None => None,
    };
    let name = format!("{} {}", host.label, loc.path);
    let pool_name = pool.map(|p| p.name.to_string()).unwrap_or_else(|| "-".into());
    let metrics = listener_addrs
        .iter()
        .map(|a| RouteMetrics::new(a, &name, &pool_name))
        .collect();
    Ok((
        m,
        Arc::new(Location {
            plugins,
            metrics,
            name: name.into(),
            action,
            max_body: loc.client_max_body_size.map(|s| s.0),
            timeouts,
            retry,
            set_headers,
            remove_headers,
            upgrade,
            ws_idle: dur(&loc.websocket_idle_timeout).unwrap_or(Duration::from_secs(3600)),
            rewrite,
            compression,
        }),
    ))
}

pub(crate) fn build_certs(
    l: &Loaded,
    path: &str,
    certificates: &[config::Certificate],
) -> Result<crate::tls::CertStore, ConfigError> {
    if certificates.is_empty() {
        return Err(l.err(
            &format!("{path}.certificates"),
            "a TLS listener needs at least one certificate",
        ));
    }
    let mut store = crate::tls::CertStore::new();
    for (j, c) in certificates.iter().enumerate() {
        let cp = format!("{path}.certificates[{j}]");
        let ck = Arc::new(crate::tls::load(&c.cert, &c.key).map_err(|e| l.err(&format!("{cp}.cert"), e))?);
        let names = if c.server_names.is_empty() {
            ck.names.clone()
        } else {
            c.server_names.clone()
        };
        for n in &names {
            // A name already claimed by an earlier certificate stays with it.
            store.add_name(n, ck.clone());
        }
        if j == 0 {
            store.set_default(ck);
        }
    }
    Ok(store)
}

/// Validate a parsed configuration and compile it into a runnable snapshot.
/// Server state for (pool, address) pairs already known is reused.
pub fn build(l: &Loaded, states: &StateRegistry) -> Result<Snapshot, ConfigError> {
    let c = &l.cfg;
    if c.listeners.is_empty() && c.tcp.is_empty() {
        return Err(l.err("listeners", "at least one listener (or tcp listener) is needed"));
    }
    let mut seen = HashSet::new();
    let http = c
        .listeners
        .iter()
        .enumerate()
        .map(|(i, li)| (format!("listeners[{i}].listen"), &li.listen));
    let tcp = c
        .tcp
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("tcp[{i}].listen"), &t.listen));
    for (at, listen) in http.chain(tcp) {
        let a: SocketAddr = listen
            .parse()
            .map_err(|_| l.err(&at, format!("invalid listen address {listen:?} (expected ip:port)")))?;
        if !seen.insert(a) {
            return Err(l.err(&at, format!("duplicate listener {a}")));
        }
    }
    if let Some(a) = &c.admin {
        a.listen.parse::<SocketAddr>().map_err(|_| {
            l.err(
                "admin.listen",
                format!("invalid listen address {:?} (expected ip:port)", a.listen),
            )
        })?;
    }
    if c.server.threads == 0 {
        return Err(l.err("server.threads", "threads must be at least 1"));
    }
    if !(1024..=1 << 20).contains(&c.server.max_request_header_size.0) {
        return Err(l.err(
            "server.max_request_header_size",
            "max_request_header_size must be between 1k and 1m",
        ));
    }
    let trusted = cidrs(l, "trusted_proxies", &c.trusted_proxies)?;
    let health_path = if c.health_endpoint.enabled {
        if !c.health_endpoint.path.starts_with('/') {
            return Err(l.err("health_endpoint.path", "path must start with '/'"));
        }
        Some(c.health_endpoint.path.clone())
    } else {
        None
    };
    let mut pools = BTreeMap::new();
    let mut names = Vec::new();
    for (name, u) in &c.upstreams {
        pools.insert(name.clone(), Arc::new(build_pool(l, name, u, states, &mut names)?));
    }
    let addrs: Vec<String> = c.listeners.iter().map(|li| li.listen.clone()).collect();
    let global_plugins = crate::plugins::build(l, "plugins", &c.plugins)?;
    let global_compression = match &c.compression {
        Some(gc) => compression(l, "compression", gc)?,
        None => None,
    };
    let mut certs = Vec::new();
    for (i, li) in c.listeners.iter().enumerate() {
        certs.push(match &li.tls {
            None => None,
            Some(t) => Some(Arc::new(build_certs(
                l,
                &format!("listeners[{i}].tls"),
                &t.certificates,
            )?)),
        });
    }
    let mut listeners: Vec<ListenerRt> = addrs
        .iter()
        .zip(certs)
        .map(|(a, certs)| ListenerRt {
            certs,
            addr: a.clone(),
            hosts: HostTable::new(),
            unrouted: RouteMetrics::new(a, "-", "-"),
        })
        .collect();
    // Each listener's first virtual host: its default unless one is marked.
    let mut first: Vec<Option<Arc<VHost>>> = vec![None; listeners.len()];
    for (vi, vh) in c.virtual_hosts.iter().enumerate() {
        let vp = format!("virtual_hosts[{vi}]");
        let label = vh.server_names.first().cloned().unwrap_or_else(|| "_".into());
        let host_plugins = global_plugins.then(&crate::plugins::build(l, &format!("{vp}.plugins"), &vh.plugins)?);
        let host_compression = match &vh.compression {
            Some(hc) => compression(l, &format!("{vp}.compression"), hc)?,
            None => global_compression.clone(),
        };
        let mut entries = Vec::new();
        for (li, loc) in vh.locations.iter().enumerate() {
            let host = HostPart {
                label: &label,
                plugins: &host_plugins,
                compression: &host_compression,
            };
            entries.push(build_location(
                l,
                &format!("{vp}.locations[{li}]"),
                &host,
                loc,
                &pools,
                &addrs,
            )?);
        }
        let host = Arc::new(VHost {
            paths: PathTable::new(entries),
        });
        for (i, a) in vh.listen.iter().enumerate() {
            if !listeners.iter().any(|x| &x.addr == a) {
                return Err(l.err(&format!("{vp}.listen[{i}]"), format!("no listener {a:?}")));
            }
        }
        if vh.server_names.is_empty() && !vh.default {
            return Err(l.err(
                &format!("{vp}.server_names"),
                "a virtual host needs server_names or default: true",
            ));
        }
        for (li, lis) in listeners.iter_mut().enumerate() {
            if !vh.listen.is_empty() && !vh.listen.contains(&lis.addr) {
                continue;
            }
            first[li].get_or_insert_with(|| host.clone());
            for (ni, n) in vh.server_names.iter().enumerate() {
                let np = format!("{vp}.server_names[{ni}]");
                if n.starts_with('~') {
                    lis.hosts.add_regex(n, host.clone()).map_err(|e| l.err(&np, e))?;
                    continue;
                }
                if n.is_empty() || (n.contains('*') && !n.starts_with("*.")) || n.bytes().skip(1).any(|b| b == b'*') {
                    return Err(l.err(&np, format!("invalid server name {n:?} (exact or *.suffix)")));
                }
                if !n.is_ascii() {
                    // A Host field is ASCII: such a name would never match.
                    let why = format!("server name {n:?} is not ASCII (write an IDN as punycode, xn--...)");
                    return Err(l.err(&np, why));
                }
                if !lis.hosts.add_name(n, host.clone()) {
                    return Err(l.err(&np, format!("duplicate server name {n:?} on {}", lis.addr)));
                }
            }
            if vh.default && !lis.hosts.set_default(host.clone()) {
                return Err(l.err(
                    &format!("{vp}.default"),
                    format!("two default virtual hosts on {}", lis.addr),
                ));
            }
        }
    }
    // As in nginx, the first virtual host of a listener is its default unless one is marked.
    for (lis, first) in listeners.iter_mut().zip(first) {
        if let Some(h) = first.filter(|_| !lis.hosts.has_default()) {
            lis.hosts.set_default(h);
        }
    }
    if c.access_log.is_empty() {
        return Err(l.err("access_log", "use stdout, off, or a file path"));
    }
    Ok(Snapshot {
        has_http2_pool: pools.values().any(|p| p.http2),
        tcp: crate::tcp::compile(l, &pools)?,
        listeners,
        pools,
        trusted,
        health_path,
        cfg: c.clone(),
        base: c.clone(),
        file: l.file.clone(),
        names,
    })
}

/// `server.resolver` as an address (port 53 unless given).
fn resolver(l: &Loaded) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(r) = &l.cfg.server.resolver else {
        return Ok(None);
    };
    match crate::dns::resolver_addr(r) {
        Some(a) => Ok(Some(a)),
        None => Err(l.err(
            "server.resolver",
            format!("{r:?} is not an IP address (or address:port)"),
        )),
    }
}

/// The networks of a list of CIDRs (or single addresses) at `path`.
pub(crate) fn cidrs(l: &Loaded, path: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    let net = |(i, c): (usize, &String)| {
        c.parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| l.err(&format!("{path}[{i}]"), format!("invalid CIDR {c:?}")))
    };
    list.iter().enumerate().map(net).collect()
}

/// Parse + validate a file: what `portico -t` and a reload do.
pub fn load_file(path: &str, states: &StateRegistry) -> Result<Snapshot, ConfigError> {
    let loaded = config::load(path)?;
    build(&loaded, states)
}
