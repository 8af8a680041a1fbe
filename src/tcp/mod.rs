//! TCP (layer 4) balancing, nginx's `stream` module: a `tcp:` listener
//! passes each connection it accepts, bytes as they are, to a server of an
//! upstream pool. The pool's algorithm, health (active checks, `max_fails`,
//! draining) and backups apply as for HTTP; a server that cannot be
//! connected to counts as a failure, and the connection moves to the next
//! server (`next_upstream`). Once connected, a connection stays with its
//! server until either side closes it or it idles out.
//!
//! - `service`: the listening service and the life of one connection; its
//!   bytes go both ways through `crate::pipe`, on `sockio::Direct` sockets
//! - `sni`: the server name a ClientHello asks for
//! - `upstream_tls`: TLS to the servers of a pool with `tls: true`
//! - `crate::proxy_protocol`: the PROXY header received from a load
//!   balancer in front (`accept_proxy_protocol`), and the one sent to
//!   servers that want it (`proxy_protocol`)

mod service;
mod sni;
mod upstream_tls;

pub use crate::proxy_protocol::Version as ProxyProtocol;
pub use service::TcpService;

use crate::config::schema::Algorithm;
use crate::config::{ConfigError, Loaded};
use crate::routing::HostTable;
use crate::upstream::{HashKey, Pool};
use ipnet::IpNet;
use prometheus::IntCounter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// nginx's `proxy_connect_timeout` default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `proxy_timeout` default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// One TCP listener's settings, as the running configuration says.
pub struct Route {
    /// The listen address, for logs and metrics.
    pub listen: Arc<str>,
    /// The pool for connections no `sni` rule picks (`proxy_pass`).
    pub pool: Option<Arc<Pool>>,
    /// Pools by the TLS server name clients ask for (`sni`), `pool` the default.
    pub sni: Option<HostTable<Arc<Pool>>>,
    /// Unset: the pool's `connect_timeout`, else [`CONNECT_TIMEOUT`].
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub next_upstream: bool,
    /// Servers tried per connection, at most (0: no limit).
    pub tries: usize,
    pub tries_timeout: Option<Duration>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Connections start with a PROXY header naming the client (fixed at start).
    pub accept_proxy_protocol: bool,
    /// Open connections of the listener, at most (0: no limit).
    pub max_connections: usize,
    /// Open connections from one client address, at most (0: no limit).
    pub max_connections_per_client: usize,
    /// Clients refused, and (when not empty) the only ones let through.
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    /// Certificates of a listener that terminates TLS.
    pub certs: Option<Arc<crate::tls::CertStore>>,
    /// TLS settings towards the servers of each pool with `tls: true`, by pool name.
    tls_to: Vec<(Arc<str>, Arc<upstream_tls::ToServers>)>,
    /// Connection counters by pool name (`-`: refused before a pool was chosen).
    counters: Vec<(Arc<str>, Counters)>,
    received: IntCounter,
    sent: IntCounter,
}

impl Route {
    fn counters(&self, pool: Option<&Pool>) -> &Counters {
        let name = pool.map_or("-", |p| &*p.name);
        let found = self.counters.iter().find(|(n, _)| &**n == name);
        &found.unwrap_or(&self.counters[0]).1
    }

    /// How to speak TLS to the servers of `pool`, if it has `tls: true`.
    fn tls_to(&self, pool: &Pool) -> Option<&upstream_tls::ToServers> {
        let found = self.tls_to.iter().find(|(n, _)| **n == *pool.name);
        found.map(|(_, t)| &**t)
    }

    /// How long a connection to a server of `pool` may take.
    pub fn connect_timeout(&self, pool: &Pool) -> Duration {
        self.connect_timeout
            .or(pool.timeouts.connect)
            .unwrap_or(CONNECT_TIMEOUT)
    }

    /// May a connection from `ip` go through (`deny`, then `allow`)?
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// Pre-resolved connection counters of one route and pool, by status.
struct Counters {
    relayed: IntCounter,
    /// No valid PROXY header, or no pool for the server name asked for.
    bad: IntCounter,
    refused: IntCounter,
    unreached: IntCounter,
    /// Over a connection limit.
    limited: IntCounter,
}

impl Counters {
    fn new(listen: &str, pool: &str) -> Counters {
        let c = |status| {
            crate::metrics::get()
                .tcp_connections
                .with_label_values(&[listen, pool, status])
        };
        Counters {
            relayed: c("200"),
            bad: c("400"),
            refused: c("403"),
            unreached: c("502"),
            limited: c("503"),
        }
    }
}

/// A pool named at `field` of a `tcp:` entry, if it can take TCP connections.
fn tcp_pool(
    l: &Loaded,
    field: &str,
    name: &str,
    pools: &BTreeMap<String, Arc<Pool>>,
) -> Result<Arc<Pool>, ConfigError> {
    let Some(pool) = pools.get(name) else {
        return Err(l.err(field, format!("unknown upstream {name:?}")));
    };
    if let Some(why) = unfit_for_tcp(pool) {
        return Err(l.err(field, format!("upstream {name:?} {why}")));
    }
    Ok(pool.clone())
}

/// The running form of the config's `tcp:` list, checked against the pools.
pub fn compile(l: &Loaded, pools: &BTreeMap<String, Arc<Pool>>) -> Result<Vec<Arc<Route>>, ConfigError> {
    let mut routes = Vec::new();
    for (i, t) in l.cfg.tcp.iter().enumerate() {
        let at = |field: &str| format!("tcp[{i}].{field}");
        let pool = match &t.proxy_pass {
            Some(name) => Some(tcp_pool(l, &at("proxy_pass"), name, pools)?),
            None => None,
        };
        if pool.is_none() && t.sni.is_empty() {
            return Err(l.err(&format!("tcp[{i}]"), "a tcp listener needs proxy_pass, or sni rules"));
        }
        let sni = match t.sni.is_empty() {
            true => None,
            false if t.tls.is_some() => {
                let why = "sni routes TLS connections passed through; with tls the listener ends TLS itself";
                return Err(l.err(&at("sni"), why));
            }
            false => {
                let mut table = HostTable::new();
                for (name, pool) in &t.sni {
                    let field = at(&format!("sni.{name}"));
                    if name.starts_with('~') {
                        let pool = tcp_pool(l, &field, pool, pools)?;
                        table.add_regex(name, pool).map_err(|e| l.err(&field, e))?;
                        continue;
                    }
                    // ASCII first: the slice below must not cut a character.
                    let ok = name.is_ascii()
                        && !name.is_empty()
                        && !name[1..].contains('*')
                        && (!name.contains('*') || name.starts_with("*."));
                    if !ok {
                        return Err(l.err(
                            &field,
                            format!("invalid server name {name:?} (exact, *.suffix or ~regex)"),
                        ));
                    }
                    if !table.add_name(name, tcp_pool(l, &field, pool, pools)?) {
                        return Err(l.err(&field, format!("duplicate server name {name:?}")));
                    }
                }
                if let Some(p) = &pool {
                    table.set_default(p.clone());
                }
                Some(table)
            }
        };
        let proxy_protocol = match &t.proxy_protocol {
            None => None,
            Some(v) => Some(ProxyProtocol::parse(v).map_err(|e| l.err(&at("proxy_protocol"), e))?),
        };
        let idle_timeout = t.idle_timeout.map_or(IDLE_TIMEOUT, |d| d.0);
        if idle_timeout.is_zero() {
            return Err(l.err(&at("idle_timeout"), "idle_timeout must be more than 0"));
        }
        let certs = match &t.tls {
            Some(tls) => Some(Arc::new(crate::live::build_certs(l, &at("tls"), &tls.certificates)?)),
            None => None,
        };
        let mut counters: Vec<(Arc<str>, Counters)> = vec![("-".into(), Counters::new(&t.listen, "-"))];
        let mut tls_to = Vec::new();
        for p in pool.iter().chain(t.sni.values().filter_map(|n| pools.get(n))) {
            if !counters.iter().any(|(n, _)| *n == p.name) {
                counters.push((p.name.clone(), Counters::new(&t.listen, &p.name)));
                if let Some(tls) = &p.tls {
                    let to = upstream_tls::ToServers::new(tls)
                        .map_err(|e| l.err(&format!("upstreams.{}.tls", p.name), format!("TLS setup: {e}")))?;
                    tls_to.push((p.name.clone(), Arc::new(to)));
                }
            }
        }
        let bytes = |direction| {
            crate::metrics::get()
                .tcp_bytes
                .with_label_values(&[&t.listen, direction])
        };
        routes.push(Arc::new(Route {
            certs,
            deny: crate::live::cidrs(l, &at("deny"), &t.deny)?,
            allow: crate::live::cidrs(l, &at("allow"), &t.allow)?,
            listen: t.listen.as_str().into(),
            connect_timeout: t.connect_timeout.map(|d| d.0),
            idle_timeout,
            next_upstream: t.next_upstream,
            tries: t.next_upstream_tries,
            tries_timeout: t.next_upstream_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
            proxy_protocol,
            accept_proxy_protocol: t.accept_proxy_protocol,
            max_connections: t.max_connections,
            max_connections_per_client: t.max_connections_per_client,
            tls_to,
            counters,
            received: bytes("received"),
            sent: bytes("sent"),
            pool,
            sni,
        }));
    }
    Ok(routes)
}

/// Why a pool cannot take TCP connections, if it cannot.
fn unfit_for_tcp(pool: &Pool) -> Option<&'static str> {
    match pool.algorithm {
        Algorithm::Sticky => Some("is sticky by an HTTP cookie; a tcp listener can hash the client address (ip_hash)"),
        Algorithm::LeastTime => Some("picks by HTTP response time; use least_conn for a tcp listener"),
        Algorithm::Hash if !matches!(pool.hash_key, Some(HashKey::ClientIp | HashKey::ClientNet)) => {
            Some("hashes a request field; a tcp listener can hash only $remote_addr")
        }
        _ => None,
    }
}
