//! A TCP listener's service: binds (or takes over, on a graceful upgrade)
//! its socket as the HTTP listeners do, accepts, and gives each connection
//! a task on one of the worker threads: pick a server, connect (moving on
//! to the next server when one fails), relay, log.

use super::relay::{relay, Direct, End, Tally};
use super::Route;
use crate::access_log::{self, AccessLog};
use crate::listener::{accept, conn::Conn, Tls};
use crate::live::Live;
use crate::upstream::state::InflightGuard;
use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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

/// The servers tried for one connection: pool index and time to connect (or fail).
type Attempts = Vec<(usize, Duration)>;

/// One client connection, for its whole life.
async fn connection(shared: Arc<Shared>, tcp: std::net::TcpStream, peer: SocketAddr) {
    let _open = Open::new();
    let start = Instant::now();
    let snap = shared.live.snapshot();
    let Some(route) = snap.tcp.get(shared.index).cloned() else {
        return;
    };
    let local = tcp.local_addr().ok();
    let mut attempts = Attempts::new();
    let tally = Tally::default();
    let status = if !route.admits(peer.ip()) {
        403 // before any TLS handshake or server
    } else if let Some(tls) = &shared.tls {
        let conn = Conn::new(tcp, peer, TLS_READ_AHEAD);
        let handshake = pingora_timeout::timeout(snap.cfg.server.client_header_timeout.0, tls.accept(conn));
        drop(snap);
        match handshake.await {
            Ok(Ok(client)) => pass(&route, client, peer, local, &mut attempts, &tally).await,
            // As on the HTTP listeners: logged (info), no access-log line.
            Ok(Err(e)) => return log::info!("tcp {}: TLS handshake with {peer} failed: {e}", route.listen),
            Err(_) => return log::info!("tcp {}: TLS handshake with {peer} timed out", route.listen),
        }
    } else {
        drop(snap);
        match TcpStream::from_std(tcp) {
            Ok(client) => {
                let _ = client.set_nodelay(true);
                pass(&route, Direct(client), peer, local, &mut attempts, &tally).await
            }
            Err(e) => return log::error!("tcp {}: cannot take connection from {peer}: {e}", route.listen),
        }
    };
    let c = &route.counters;
    let (received, sent) = (tally.from_client.into_inner(), tally.from_server.into_inner());
    match status {
        200 => &c.relayed,
        403 => &c.refused,
        _ => &c.unreached,
    }
    .inc();
    c.received.inc_by(received);
    c.sent.inc_by(sent);
    if let Some(log) = &shared.access_log {
        log.write_line(|line| {
            crate::proxy::line_start(line, Some(peer.ip()));
            line.push_str("TCP ");
            line.push_str(&route.listen);
            line.push_str("\" ");
            access_log::push_num(line, status.into());
            line.push(' ');
            access_log::push_num(line, sent);
            line.push_str(" \"-\" \"-\" ");
            if attempts.is_empty() {
                line.push_str("- -");
            } else {
                let servers = attempts.iter().map(|&(i, _)| route.pool.servers[i].addr.as_str());
                line.push_str(&servers.collect::<Vec<_>>().join(", "));
                for (n, &(_, t)) in attempts.iter().enumerate() {
                    line.push_str(if n == 0 { " " } else { ", " });
                    access_log::push_secs(line, t);
                }
            }
            line.push(' ');
            access_log::push_secs(line, start.elapsed());
            line.push_str(" rx=");
            access_log::push_num(line, received);
            line.push_str(" tx=");
            access_log::push_num(line, sent);
            line.push('\n');
        });
    }
}

/// A client's bytes passed to a server and back: the status to log (200
/// relayed, 502 no server reached).
async fn pass<C>(
    route: &Route,
    client: C,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    attempts: &mut Attempts,
    tally: &Tally,
) -> u16
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some((mut server, _inflight)) = connect(route, peer.ip(), attempts).await else {
        return 502;
    };
    if let (Some(v), Some(local)) = (route.proxy_protocol, local) {
        let header = super::proxy_protocol::header(v, peer, local);
        if let Err(e) = server.write_all(&header).await {
            log::warn!("tcp {}: PROXY header to the server: {e}", route.listen);
            return 502;
        }
    }
    match relay(client, server, route.idle_timeout, tally).await {
        End::Closed => {}
        End::Idle => log::info!("tcp {}: {peer} idle for {:?}, closed", route.listen, route.idle_timeout),
        End::Failed(e) => log::info!("tcp {}: {peer}: {e}", route.listen),
    }
    200
}

/// A connection to a server of the route's pool: primaries first, the
/// next one after each that cannot be connected to, as `next_upstream`
/// and its limits allow. The guard counts the connection as in flight on
/// the server (least_conn) for as long as it is held.
async fn connect(route: &Route, client: IpAddr, attempts: &mut Attempts) -> Option<(TcpStream, InflightGuard)> {
    let pool = &route.pool;
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
        let mut wait = route.connect_timeout;
        if let Some(limit) = route.tries_timeout {
            wait = wait.min(limit.saturating_sub(began.elapsed()));
        }
        let addr = server.backend.addr.as_inet().copied();
        let t = Instant::now();
        let result = match addr {
            Some(a) => pingora_timeout::timeout(wait, TcpStream::connect(a)).await,
            None => Ok(Err(std::io::Error::other("not an IP address"))),
        };
        attempts.push((i, t.elapsed()));
        let why = match result {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
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
