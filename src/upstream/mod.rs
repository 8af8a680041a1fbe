//! Upstream pools: a named set of servers, the `pingora-load-balancing`
//! selector that picks among them, and the per-server state that decides
//! whether a server may take a request (health, passive failures, draining).

pub mod health;
pub mod selectors;
pub mod state;
pub mod sticky;

use crate::config::schema::Algorithm;
use crate::retry::RetryPolicy;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::consistent::{KetamaConfig, KetamaHashing};
use pingora_load_balancing::selection::{BackendIter, BackendSelection, FNVHash};
use pingora_load_balancing::Backend;
use selectors::{LeastConn, LeastTime, Pick, Plain, RandomPick, SmoothWrr, StateTable, TwoLeastConn};
use state::ServerState;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

type Addr = pingora_core::protocols::l4::socket::SocketAddr;

/// A `pingora-load-balancing` selector behind a uniform, object-safe
/// interface that speaks in pool server indices.
///
/// Pools hold the `BackendSelection` itself rather than a `LoadBalancer`:
/// Portico does discovery (the config), health and passive failures itself,
/// and `LoadBalancer::select_with` costs ~250 ns per call on work we do not
/// need (a `HashSet` of visited backends, a `Backend` clone and a readiness
/// lookup per step).
pub trait Select: Send + Sync {
    /// The server for a request with `key`, among those `ok` accepts.
    fn pick(&self, key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Portico's own selectors ([`Pick`]): built over the pool's servers in
/// the pool's order, they answer in positions, mapped to pool indices
/// through a table built once.
struct Positional<S> {
    sel: S,
    to_pool: Vec<u32>,
}

impl<S: Pick + Send + Sync> Select for Positional<S> {
    fn pick(&self, key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let p = self.sel.pick(key, &|p| ok(self.to_pool[p] as usize))?;
        Some(self.to_pool[p] as usize)
    }
}

/// The crate's hashing selectors (FNV, ketama): yielded backends are mapped
/// back by address, and the first one accepted within `max_steps` wins.
/// Ketama may repeat a server; `ok` is cheap to repeat.
struct ByAddr<S> {
    sel: Arc<S>,
    index: HashMap<Addr, usize>,
    max_steps: usize,
}

impl<S> Select for ByAddr<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    fn pick(&self, key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut it = self.sel.iter(key);
        (0..self.max_steps)
            .map_while(|_| it.next().map(|b| self.index.get(&b.addr).copied()))
            .flatten()
            .find(|&i| ok(i))
    }
}

/// `servers` as (pool index, backend), in the pool's order.
type Members<'a> = [(usize, &'a Backend)];

fn positional<S: Pick + Send + Sync + 'static>(members: &Members, table: &StateTable) -> Box<dyn Select> {
    let sel = S::from_list(members.iter().map(|(_, b)| (*b).clone()).collect(), table);
    let to_pool = members.iter().map(|&(i, _)| i as u32).collect();
    Box::new(Positional { sel, to_pool })
}

fn by_addr<S>(members: &Members, config: &S::Config, steps_per_server: usize) -> Box<dyn Select>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let set: BTreeSet<Backend> = members.iter().map(|(_, b)| (*b).clone()).collect();
    let sel = Arc::new(S::build_with_config(&set, config));
    let index = members.iter().map(|&(i, b)| (b.addr.clone(), i)).collect();
    Box::new(ByAddr {
        sel,
        index,
        max_steps: members.len() * steps_per_server + 16,
    })
}

fn build_selector(alg: Algorithm, consistent: bool, members: &Members, t: &StateTable) -> Box<dyn Select> {
    match alg {
        Algorithm::RoundRobin | Algorithm::Sticky => positional::<SmoothWrr>(members, t),
        Algorithm::LeastConn => positional::<LeastConn>(members, t),
        Algorithm::Random => positional::<RandomPick<Plain>>(members, t),
        Algorithm::RandomTwoLeastConn => positional::<RandomPick<TwoLeastConn>>(members, t),
        Algorithm::LeastTime => positional::<RandomPick<LeastTime>>(members, t),
        // Ketama walks ring points (160 per server).
        Algorithm::IpHash | Algorithm::Hash if consistent => {
            by_addr::<KetamaHashing>(members, &KetamaConfig { point_multiple: None }, 160)
        }
        Algorithm::IpHash | Algorithm::Hash => by_addr::<FNVHash>(members, &(), 2),
    }
}

/// One server of a pool as configured, with its shared state.
pub struct PoolServer {
    pub addr: String,
    pub backend: Backend,
    pub state: Arc<ServerState>,
    pub weight: usize,
    pub max_fails: usize,
    pub fail_timeout: Duration,
    pub backup: bool,
    /// Marked `down` in the config: never sent a request, but kept in its
    /// place (a hash keeps every other server's keys where they were).
    pub down: bool,
    /// Response-header time histogram (Prometheus).
    pub histogram: prometheus::Histogram,
}

impl PoolServer {
    /// May a new request go to this server (not `down` in the config,
    /// healthy, not draining, not marked down by its failures)?
    #[inline]
    pub fn usable(&self) -> bool {
        !self.down && self.state.usable()
    }

    pub fn record_failure(&self, pool: &str, why: &str) {
        if self.state.record_failure(self.max_fails, self.fail_timeout, why) {
            log::warn!(
                "upstream {pool} server {} marked down for {:?} after {} failure(s): {why}",
                self.addr,
                self.fail_timeout,
                self.max_fails
            );
        }
    }
}

/// What a request's hash key is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// `$remote_addr`: the client's address.
    ClientIp,
    /// `ip_hash`: as nginx's, the first three bytes of an IPv4 address (its
    /// /24, so clients behind one NAT pool stay together), a whole IPv6 one.
    ClientNet,
    /// `$uri`: the path.
    Uri,
    /// `$request_uri`: the target as sent, query included.
    RequestUri,
    Header(String),
    Cookie(String),
    Arg(String),
}

impl HashKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        let v = s.trim();
        Ok(match v {
            "$remote_addr" | "$binary_remote_addr" => HashKey::ClientIp,
            "$uri" => HashKey::Uri,
            "$request_uri" => HashKey::RequestUri,
            _ if v.starts_with("$http_") => HashKey::Header(v[6..].replace('_', "-")),
            _ if v.starts_with("$cookie_") => HashKey::Cookie(v[8..].to_string()),
            _ if v.starts_with("$arg_") => HashKey::Arg(v[5..].to_string()),
            _ => {
                return Err(format!(
                    "unsupported hash key {v:?} (use $remote_addr, $uri, $request_uri, $http_NAME, $cookie_NAME or $arg_NAME)"
                ))
            }
        })
    }

    /// The key bytes of a client's address, for `ClientIp` (all of it) and
    /// `ClientNet` (an IPv4 address's first three bytes); empty for other
    /// keys or no address.
    pub fn client_bytes(&self, ip: Option<std::net::IpAddr>) -> Vec<u8> {
        match (self, ip) {
            (HashKey::ClientIp | HashKey::ClientNet, Some(std::net::IpAddr::V4(ip))) => {
                let bytes = if *self == HashKey::ClientNet { 3 } else { 4 };
                ip.octets()[..bytes].to_vec()
            }
            (HashKey::ClientIp | HashKey::ClientNet, Some(std::net::IpAddr::V6(ip))) => ip.octets().to_vec(),
            _ => Vec::new(),
        }
    }
}

/// Connection-level settings for a pool (a location may override timeouts).
#[derive(Debug, Clone, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    /// Total time for the response header (`read` bounds each read).
    pub header: Option<Duration>,
}

impl Timeouts {
    /// `self` where set, otherwise `base`.
    pub fn or(&self, base: &Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.or(base.connect),
            read: self.read.or(base.read),
            write: self.write.or(base.write),
            header: self.header.or(base.header),
        }
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub servers: Vec<PoolServer>,
    primary: Box<dyn Select>,
    backup: Option<Box<dyn Select>>,
    /// For a hash: round robin over the primaries, for a request whose key
    /// is empty (nginx's `hash` does the same), so requests without one do
    /// not all go to one server.
    keyless: Option<Box<dyn Select>>,
    /// Sticky cookie id of each server, and the reverse map.
    pub sticky_ids: Vec<String>,
    sticky_index: HashMap<String, usize>,
    /// Each server's `Set-Cookie` value (plain, then HTTPS) when it never
    /// changes (no `max_age`, so no expiry in it): made once, not per request.
    sticky_fixed: Vec<[http::HeaderValue; 2]>,
    pub hash_key: Option<HashKey>,
    pub sticky: Option<sticky::Sticky>,
    pub timeouts: Timeouts,
    pub keepalive: usize,
    pub keepalive_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub health: Option<health::CheckSpec>,
    /// Attempts moved on from this pool's servers (Prometheus).
    pub retries: prometheus::IntCounter,
    pub tls: Option<UpstreamTls>,
    pub http2: bool,
}

/// TLS towards the servers of a pool.
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    /// Trusted CAs; the system store when `None`.
    pub ca: Option<Arc<Box<[openssl::x509::X509]>>>,
    /// The certificate (and key) shown to servers that ask for one.
    pub client: Option<Arc<pingora_core::utils::tls::CertKey>>,
}

/// Pingora's transport connector (TCP, TLS), built off the serving threads
/// (`crate::warming`): one per process, for the lean path's connections to
/// TLS servers and the health checks' probes of them.
pub type Transport = crate::warming::Warming<TransportConnector>;

/// The transport for connections configured as `conf` says.
pub fn transport(conf: &ServerConf) -> Transport {
    let options = ConnectorOptions::from_server_conf(conf);
    Transport::new("the upstream transport", move || TransportConnector::new(Some(options)))
}

impl UpstreamTls {
    /// A peer for `addr` with this pool's TLS settings (SNI, verification,
    /// CAs): what both the traffic and the health checks connect with.
    pub fn peer(&self, addr: &pingora_core::protocols::l4::socket::SocketAddr) -> HttpPeer {
        let mut p = HttpPeer::new(addr.clone(), true, self.sni.clone());
        p.options.verify_cert = self.verify;
        p.options.verify_hostname = self.verify && !self.sni.is_empty();
        p.options.ca = self.ca.clone();
        p.client_cert_key = self.client.clone();
        p
    }
}

/// Everything needed to build a pool; produced by `crate::live` from the config.
pub struct PoolSpec {
    pub name: String,
    pub algorithm: Algorithm,
    pub consistent: bool,
    pub servers: Vec<PoolServer>,
    pub hash_key: Option<HashKey>,
    pub sticky: Option<sticky::Sticky>,
    pub timeouts: Timeouts,
    pub keepalive: usize,
    pub keepalive_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub health: Option<health::CheckSpec>,
    pub tls: Option<UpstreamTls>,
    pub http2: bool,
}

impl Pool {
    pub fn new(spec: PoolSpec) -> Pool {
        let table: StateTable = Arc::new(
            spec.servers
                .iter()
                .map(|s| (s.backend.addr.to_string(), s.state.clone()))
                .collect(),
        );
        // The servers as configured, in the config's order (nginx's, where order breaks ties).
        let members = |backup: bool| -> Vec<(usize, &Backend)> {
            (spec.servers.iter().enumerate())
                .filter(|(_, s)| s.backup == backup)
                .map(|(i, s)| (i, &s.backend))
                .collect()
        };
        // Sticky `hash` mode hashes the application cookie on a consistent ring.
        let (alg, consistent) = match &spec.sticky {
            Some(st) if st.mode == sticky::Mode::Hash => (Algorithm::Hash, true),
            _ => (spec.algorithm, spec.consistent),
        };
        let primaries = members(false);
        let primary = build_selector(alg, consistent, &primaries, &table);
        let hashed = matches!(alg, Algorithm::Hash | Algorithm::IpHash);
        let keyless = hashed.then(|| build_selector(Algorithm::RoundRobin, false, &primaries, &table));
        let backups = members(true);
        let backup = (!backups.is_empty()).then(|| build_selector(Algorithm::RoundRobin, false, &backups, &table));
        let sticky_ids: Vec<String> = match &spec.sticky {
            Some(st) => spec.servers.iter().map(|s| st.server_id(&s.addr)).collect(),
            None => Vec::new(),
        };
        Pool {
            name: spec.name.as_str().into(),
            algorithm: spec.algorithm,
            servers: spec.servers,
            sticky_index: sticky_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
            sticky_fixed: match &spec.sticky {
                Some(st) if st.max_age.is_none() => sticky_ids
                    .iter()
                    .filter_map(|id| Some([st.header_for(id, false)?, st.header_for(id, true)?]))
                    .collect(),
                _ => Vec::new(),
            },
            sticky_ids,
            primary,
            backup,
            keyless,
            hash_key: spec.hash_key,
            sticky: spec.sticky,
            timeouts: spec.timeouts,
            keepalive: spec.keepalive,
            keepalive_timeout: spec.keepalive_timeout,
            retry: spec.retry,
            health: spec.health,
            tls: spec.tls,
            http2: spec.http2,
            retries: crate::metrics::get().retries.with_label_values(&[&spec.name]),
        }
    }

    /// Choose a usable server for `key` that `skip` does not exclude:
    /// primaries first, backups only when no primary can take it.
    pub fn select(&self, key: &[u8], skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| !skip(i) && self.servers[i].usable();
        let primary = match &self.keyless {
            Some(rr) if key.is_empty() => rr,
            _ => &self.primary,
        };
        let i = (primary.pick(key, &ok)).or_else(|| self.backup.as_ref()?.pick(key, &ok))?;
        self.picked(i);
        Some(i)
    }

    /// Server `i` takes the next attempt (see [`ServerState::picked`]).
    #[inline]
    pub fn picked(&self, i: usize) {
        let s = &self.servers[i];
        s.state.picked(s.max_fails, s.fail_timeout);
    }

    /// Is any server other than those `skip` excludes usable right now?
    pub fn any_usable(&self, skip: &dyn Fn(usize) -> bool) -> bool {
        self.servers.iter().enumerate().any(|(i, s)| !skip(i) && s.usable())
    }

    pub fn server_by_sticky_id(&self, id: &str) -> Option<usize> {
        self.sticky_index.get(id).copied()
    }

    /// The `Set-Cookie` value that pins a client to server `i`.
    pub fn sticky_cookie(&self, i: usize, https: bool) -> Option<http::HeaderValue> {
        match self.sticky_fixed.get(i) {
            Some(both) => Some(both[usize::from(https)].clone()),
            None => self.sticky.as_ref()?.header_for(self.sticky_ids.get(i)?, https),
        }
    }

    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.addr == addr)
    }
}
