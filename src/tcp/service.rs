//! A TCP listener's service: binds (or takes over, on a graceful upgrade)
//! its socket as the HTTP listeners do, accepts, and gives each connection
//! a task on one of the worker threads: pick a server, connect (moving on
//! to the next server when one fails), relay, log.

use super::sni::{self, Hello};
use super::Route;
use crate::access_log::{self, AccessLog};
use crate::listener::{accept, conn::Conn, Tls};
use crate::live::Live;
use crate::pipe::{self, End, Moved};
use crate::proxy_protocol::{receive, Received};
use crate::sockio::Direct;
use crate::upstream::state::InflightGuard;
use crate::upstream::Pool;
use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TcpService {
    name: String,
    shared: Arc<Shared>,
}

/// Bytes a TLS connection's reads ask the socket for (a TLS record).
const TLS_READ_AHEAD: usize = 16 * 1024;

/// What every connection of one TCP listener shares.
struct Shared {
    addr: String,
    /// The handshake settings of a listener that terminates TLS.
    tls: Option<Tls>,
    /// This listener's place in the config's `tcp:` list.
    index: usize,
    live: Arc<Live>,
    access_log: Option<Arc<AccessLog>>,
    /// Connections past the limits, open now ([`Admitted`]).
    open: AtomicUsize,
    /// The same by client address, kept while `max_connections_per_client` is set.
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl TcpService {
    pub fn new(
        addr: &str,
        index: usize,
        live: Arc<Live>,
        access_log: Option<Arc<AccessLog>>,
        tls: Option<Tls>,
    ) -> TcpService {
        TcpService {
            name: format!("tcp listener {addr}"),
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                tls,
                index,
                live,
                access_log,
                open: AtomicUsize::new(0),
                per_client: Mutex::new(HashMap::new()),
            }),
        }
    }
}

#[async_trait]
impl Service for TcpService {
    async fn start_service(&mut self, fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _per_fd: usize) {
        let addr = &self.shared.addr;
        let listener = match accept::listen(addr, fds).await.and_then(accept::watched) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("portico: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        loop {
            tokio::select! {
                accepted = accept::accept(&listener) => match accepted {
                    Ok((tcp, peer)) => {
                        pingora_runtime::current_handle().spawn(connection(self.shared.clone(), tcp, peer));
                    }
                    Err(e) => accept::accept_failed(&e).await,
                },
                // Open connections go on until they end, or the grace period does.
                changed = shutdown.changed() => match changed {
                    Ok(()) if !*shutdown.borrow() => continue,
                    _ => return,
                },
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.shared.addr.clone()])
    }
}

/// Counts a connection in `tcp_connections_active` while it lives.
struct Open;

impl Open {
    fn new() -> Open {
        crate::metrics::get().tcp_active.inc();
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::metrics::get().tcp_active.dec();
    }
}

/// A connection within the listener's limits, counted (see [`admit`])
/// until it ends.
struct Admitted<'a> {
    shared: &'a Shared,
    /// Counted by client too.
    client: Option<IpAddr>,
}

/// Whether a connection goes on, before any TLS handshake or server: its
/// PROXY header (when one must come: `said`, as read within the wait) names
/// its client, which the rules then admit and the limits count. `Err`: the
/// status it is refused with (400, 403, 503).
fn gate<'a>(
    shared: &'a Shared,
    route: &Route,
    ends: &mut Ends,
    said: Option<Result<std::io::Result<Received>, pingora_timeout::Elapsed>>,
) -> Result<Admitted<'a>, u16> {
    let broken = |why: &dyn std::fmt::Display| {
        log::warn!(
            "tcp {}: PROXY protocol header from {}: {why}; closed",
            route.listen,
            ends.peer
        );
        400
    };
    match said {
        None => {}
        Some(Ok(Ok(said))) => ends.take(said),
        Some(Ok(Err(e))) => return Err(broken(&e)),
        Some(Err(_)) => return Err(broken(&"timed out")),
    }
    if !route.admits(ends.peer.ip()) {
        return Err(403);
    }
    admit(shared, route, ends.peer.ip()).ok_or(503)
}

/// Count a connection from `client` in, unless that would take it over the
/// route's `max_connections` or `max_connections_per_client`.
fn admit<'a>(shared: &'a Shared, route: &Route, client: IpAddr) -> Option<Admitted<'a>> {
    let was = shared.open.fetch_add(1, Ordering::Relaxed);
    let mut admitted = Admitted { shared, client: None };
    if route.max_connections != 0 && was >= route.max_connections {
        return None; // (dropping `admitted` counts it out again)
    }
    if route.max_connections_per_client != 0 {
        let mut map = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client).or_insert(0);
        if *n >= route.max_connections_per_client {
            return None;
        }
        *n += 1;
        admitted.client = Some(client);
    }
    Some(admitted)
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.client {
            let mut map = self.shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// The servers tried for one connection: pool index and time to connect (or fail).
type Attempts = Vec<(usize, Duration)>;

/// What one connection came to, for its metrics and its log line.
#[derive(Default)]
struct Outcome {
    /// 200 relayed, 400 no valid PROXY header or no pool for its first
    /// bytes, 403 refused by the rules, 502 no server reached, 503 over a
    /// connection limit.
    status: u16,
    pool: Option<Arc<Pool>>,
    attempts: Attempts,
    /// The server name its ClientHello asked for (`sni` routing).
    sni: Option<String>,
    /// Bytes from the client (`up`) and to it (`down`).
    moved: Moved,
}

/// One client connection, for its whole life.
async fn connection(shared: Arc<Shared>, tcp: std::net::TcpStream, peer: SocketAddr) {
    let _open = Open::new();
    let start = Instant::now();
    let snap = shared.live.snapshot();
    let Some(route) = snap.tcp.get(shared.index).cloned() else {
        return;
    };
    let wait = snap.cfg.server.client_header_timeout.0;
    drop(snap);
    let mut out = Outcome::default();
    let mut ends = Ends {
        peer,
        // The PROXY header's destination (a system call: only when one is sent).
        local: route.proxy_protocol.and_then(|_| tcp.local_addr().ok()),
        early: Vec::new(),
    };
    if let Some(tls) = &shared.tls {
        let mut conn = Conn::new(tcp, peer, TLS_READ_AHEAD);
        let said = match route.accept_proxy_protocol {
            true => Some(pingora_timeout::timeout(wait, conn.proxy_header()).await),
            false => None,
        };
        // Before the TLS handshake.
        match gate(&shared, &route, &mut ends, said) {
            Err(status) => out.status = status,
            Ok(_admitted) => {
                let peer = ends.peer;
                match pingora_timeout::timeout(wait, tls.accept(conn)).await {
                    Ok(Ok(client)) => {
                        out.pool = route.pool.clone();
                        pass(&route, (client, true), &mut ends, &mut out).await;
                    }
                    // As on the HTTP listeners: logged (info), no access-log line.
                    Ok(Err(e)) => return log::info!("tcp {}: TLS handshake with {peer} failed: {e}", route.listen),
                    Err(_) => return log::info!("tcp {}: TLS handshake with {peer} timed out", route.listen),
                }
            }
        }
    } else {
        let mut client = match TcpStream::from_std(tcp) {
            Ok(c) => c,
            Err(e) => return log::error!("tcp {}: cannot take connection from {peer}: {e}", route.listen),
        };
        let _ = client.set_nodelay(true);
        // The bytes read past the header stay in `ends.early`, for the server first.
        let said = match route.accept_proxy_protocol {
            true => Some(pingora_timeout::timeout(wait, receive(&mut client, &mut ends.early)).await),
            false => None,
        };
        // Before any server.
        match gate(&shared, &route, &mut ends, said) {
            Err(status) => out.status = status,
            Ok(_admitted) => {
                if route.sni.is_some() {
                    out.sni = read_hello(&mut client, &mut ends.early, wait).await;
                }
                out.pool = match (&route.sni, &out.sni) {
                    (Some(table), Some(name)) => table.lookup(name).cloned(),
                    _ => route.pool.clone(),
                };
                match out.pool.is_some() {
                    true => pass(&route, (Direct(client), false), &mut ends, &mut out).await,
                    false => out.status = 400,
                }
            }
        }
    }
    let peer = ends.peer;
    let (received, sent) = (out.moved.up, out.moved.down);
    let c = route.counters(out.pool.as_deref());
    match out.status {
        200 => &c.relayed,
        400 => &c.bad,
        403 => &c.refused,
        503 => &c.limited,
        _ => &c.unreached,
    }
    .inc();
    route.received.inc_by(received);
    route.sent.inc_by(sent);
    if let Some(log) = &shared.access_log {
        log.write_line(|line| log_line(line, &route, peer, &out, start, (received, sent)));
    }
}

/// The two ends of a client's connection as its server is to learn them,
/// and the client's bytes read before the relay.
struct Ends {
    /// The client: the connection's peer, or the one its PROXY header names.
    peer: SocketAddr,
    /// The address the client connected to, for a PROXY header sent on.
    local: Option<SocketAddr>,
    /// Bytes read from the client already, to go to the server first.
    early: Vec<u8>,
}

impl Ends {
    /// What a received PROXY header says: the client, and where it connected.
    fn take(&mut self, said: Received) {
        self.peer = said.client.unwrap_or(self.peer);
        if self.local.is_some() {
            self.local = said.destination.or(self.local);
        }
    }
}

/// The access-log line of a connection, in the HTTP lines' shape.
fn log_line(line: &mut String, route: &Route, peer: SocketAddr, out: &Outcome, start: Instant, bytes: (u64, u64)) {
    let (received, sent) = bytes;
    crate::proxy::line_start(line, Some(peer.ip()));
    line.push_str("TCP ");
    line.push_str(&route.listen);
    line.push_str("\" ");
    access_log::push_num(line, out.status.into());
    line.push(' ');
    access_log::push_num(line, sent);
    line.push_str(" \"-\" \"-\" ");
    match &out.pool {
        Some(pool) if !out.attempts.is_empty() => {
            let servers = out.attempts.iter().map(|&(i, _)| pool.servers[i].addr.as_str());
            line.push_str(&servers.collect::<Vec<_>>().join(", "));
            for (n, &(_, t)) in out.attempts.iter().enumerate() {
                line.push_str(if n == 0 { " " } else { ", " });
                access_log::push_secs(line, t);
            }
        }
        _ => line.push_str("- -"),
    }
    line.push(' ');
    access_log::push_secs(line, start.elapsed());
    line.push_str(" rx=");
    access_log::push_num(line, received);
    line.push_str(" tx=");
    access_log::push_num(line, sent);
    if let Some(name) = &out.sni {
        line.push_str(" sni=");
        access_log::push_escaped(line, name.as_bytes());
    }
    line.push('\n');
}

/// The server name a connection routed by name asks for in its
/// ClientHello, if it sends one with a name within `wait`. The bytes read
/// are added to `early`, which go to the server first.
async fn read_hello(client: &mut TcpStream, early: &mut Vec<u8>, wait: Duration) -> Option<String> {
    early.reserve(1024);
    let read = async {
        loop {
            match sni::server_name(early) {
                Hello::Incomplete if early.len() < sni::MAX_HELLO => {}
                Hello::Name(name) => return name,
                _ => return None,
            }
            early.reserve(1024);
            match client.read_buf(early).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    pingora_timeout::timeout(wait, read).await.unwrap_or(None)
}

/// A client's bytes passed to a server of `out.pool` and back (the bytes
/// already read from the client first); sets `out.status`.
/// `client` comes with whether it is a TLS stream (see [`pipe::Ends::Apart`]).
async fn pass<C>(route: &Route, (client, client_tls): (C, bool), ends: &mut Ends, out: &mut Outcome)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let early = std::mem::take(&mut ends.early);
    let peer = ends.peer;
    out.status = 502;
    let Some(pool) = out.pool.clone() else { return };
    let Some((server, _inflight)) = connect(route, &pool, peer.ip(), &mut out.attempts).await else {
        return;
    };
    let mut first = match (route.proxy_protocol, ends.local) {
        (Some(v), Some(local)) => crate::proxy_protocol::header(v, peer, local),
        _ => Vec::new(),
    };
    first.extend_from_slice(&early);
    let client = (client, client_tls);
    let relayed = match server {
        Server::Plain(s) => relay(route, client, (Direct(s), false), &first).await,
        Server::Tls(s) => relay(route, client, (*s, true), &first).await,
    };
    let Some((moved, end)) = relayed else { return };
    out.status = 200;
    out.moved = Moved {
        up: moved.up + early.len() as u64,
        down: moved.down,
    };
    match end {
        End::Closed => {}
        End::Idle => log::info!("tcp {}: {peer} idle for {:?}, closed", route.listen, route.idle_timeout),
        End::Failed(e) => log::info!("tcp {}: {peer}: {e}", route.listen),
    }
}

/// `first` to the server, then the bytes both ways; `None` when `first`
/// could not be written.
async fn relay<C, S>(
    route: &Route,
    (mut client, client_tls): (C, bool),
    (mut server, server_tls): (S, bool),
    first: &[u8],
) -> Option<(Moved, End)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        if let Err(e) = server.write_all(first).await {
            log::warn!("tcp {}: writing to the server: {e}", route.listen);
            return None;
        }
    }
    let apart = pipe::Ends::Apart { client_tls, server_tls };
    Some(pipe::run(&mut client, &mut server, Vec::new(), route.idle_timeout, apart).await)
}

/// A connection to a server, as [`connect`] makes it.
enum Server {
    Plain(TcpStream),
    /// To a pool with `tls: true`.
    Tls(Box<tokio_openssl::SslStream<TcpStream>>),
}

/// A connection to a server of the route's pool: primaries first, the
/// next one after each that cannot be connected to, as `next_upstream`
/// and its limits allow. The guard counts the connection as in flight on
/// the server (least_conn) for as long as it is held.
async fn connect(
    route: &Route,
    pool: &Pool,
    client: IpAddr,
    attempts: &mut Attempts,
) -> Option<(Server, InflightGuard)> {
    let key = pool
        .hash_key
        .as_ref()
        .map_or(Vec::new(), |k| k.client_bytes(Some(client)));
    let began = Instant::now();
    loop {
        let i = pool.select(&key, &|i| attempts.iter().any(|a| a.0 == i))?;
        if !attempts.is_empty() {
            pool.retries.inc();
        }
        let server = &pool.servers[i];
        let inflight = InflightGuard::new(server.state.clone());
        let mut wait = route.connect_timeout(pool);
        if let Some(limit) = route.tries_timeout {
            wait = wait.min(limit.saturating_sub(began.elapsed()));
        }
        let addr = server.backend.addr.as_inet().copied();
        let t = Instant::now();
        // The TLS handshake, if any, within the same wait (nginx's proxy_connect_timeout).
        let connecting = async {
            let s = TcpStream::connect(addr.ok_or_else(|| std::io::Error::other("not an IP address"))?).await?;
            let _ = s.set_nodelay(true);
            match route.tls_to(pool) {
                None => Ok::<_, std::io::Error>(Server::Plain(s)),
                Some(tls) => Ok(Server::Tls(Box::new(tls.connect(s).await?))),
            }
        };
        let result = pingora_timeout::timeout(wait, connecting).await;
        attempts.push((i, t.elapsed()));
        let why = match result {
            Ok(Ok(s)) => {
                server.state.record_success();
                return Some((s, inflight));
            }
            Ok(Err(e)) => format!("connect: {e}"),
            Err(_) => format!("connect: timed out after {wait:?}"),
        };
        log::error!("tcp {}: server {}: {why}", route.listen, server.addr);
        server.record_failure(&pool.name, &why);
        let out_of_time = route.tries_timeout.is_some_and(|limit| began.elapsed() >= limit);
        if !route.next_upstream || (route.tries > 0 && attempts.len() >= route.tries) || out_of_time {
            return None;
        }
    }
}
