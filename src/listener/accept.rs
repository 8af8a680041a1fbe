//! The listening service: binds (or, on a graceful upgrade, takes over) a
//! listener's socket, accepts connections, runs the TLS handshake, and
//! hands each connection to [`Listener::serve`]. It replaces Pingora's
//! `listening::Service` for client listeners (the admin listener still
//! uses Pingora's) for what a connection costs while it waits:
//!
//! - Pingora spawns each connection as one task whose future is sized for
//!   its TLS handshake with a 60 s timeout (2.5 KiB held for the
//!   connection's life) and wraps the socket in an `l4::Stream` with a
//!   write buffer and digests (1.8 KiB more). Here the handshake future is
//!   boxed and gone once done, and the socket is a [`Conn`].
//! - The TLS handshake is bounded by `server.client_header_timeout`, as in
//!   nginx, instead of Pingora's fixed 60 s.
//! - At most one TLS handshake per worker thread computes at a time (about
//!   0.7 ms of CPU each for RSA-2048): a new connection waits for a slot
//!   once its ClientHello is here and gives it back as soon as its
//!   handshake waits for the client again. Waiting connections queue behind
//!   requests on open ones, as with nginx, which accepts one connection per
//!   event-loop turn. Pingora runs every handshake at once, so a burst of
//!   new connections delayed requests on open ones (HTTPS keep-alive p99 at
//!   64 connections: 32.5 -> 10.3 ms, nginx 9.1).
//! - A TLS listener takes in one connection per turn of the scheduler, as
//!   nginx accepts one per event-loop turn; the others wait in the kernel's
//!   backlog instead of queueing their handshakes ahead of the requests of
//!   connections taken in before them (HTTPS with a new connection per
//!   request: p50 29.7 -> 8.6 ms, nginx 7.5).
//!
//! Sockets are bound and registered in Pingora's table of listening file
//! descriptors exactly as Pingora's own service does, so graceful upgrades
//! hand them over the same way.

use super::conn::Conn;
use super::park::Parked;
use super::Listener;
use async_trait::async_trait;
use openssl::ssl::{select_next_proto, AlpnError, SslAcceptor, SslMethod};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::tls::SslStream;
use pingora_core::protocols::{Peek, Stream};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

/// Pending connections the kernel may queue (Pingora's and nginx's value).
const BACKLOG: u32 = 65535;
/// Plain connections taken in per wake-up of the accept loop, at most.
const ACCEPT_BATCH: usize = 16;
/// How long to keep trying a listen address still in use (a previous
/// process shutting down), as Pingora does.
const BIND_TRIES: u32 = 30;

/// A TLS listener's handshake settings.
pub struct Tls {
    acceptor: SslAcceptor,
    callbacks: Box<dyn TlsAccept + Send + Sync>,
}

impl Tls {
    /// Mozilla's "intermediate" profile, as Pingora's listeners use; with
    /// `http2`, ALPN prefers h2 over HTTP/1.1, else no protocol is chosen
    /// (HTTP/1.1).
    pub fn new(callbacks: Box<dyn TlsAccept + Send + Sync>, http2: bool) -> Result<Tls, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| e.to_string())?;
        if http2 {
            b.set_alpn_select_callback(|_, offered| {
                select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
            });
        }
        Ok(Tls {
            acceptor: b.build(),
            callbacks,
        })
    }
}

impl Tls {
    /// The handshake on `conn` (a TCP listener's; HTTP listeners run theirs in `handshake`).
    pub(crate) async fn accept(&self, conn: Conn) -> pingora_core::Result<SslStream<Conn>> {
        handshake_with_callback(&self.acceptor, conn, self.callbacks.as_ref()).await
    }
}

pub struct Accepting {
    name: String,
    addr: String,
    tls: Option<Tls>,
    /// Bytes a short read asks the socket for (`server.read_buffer`).
    read_ahead: usize,
    /// Worker threads of this listener (`server.threads`).
    threads: usize,
    app: Option<Listener>,
}

impl Accepting {
    pub fn new(addr: &str, app: Listener, tls: Option<Tls>, read_ahead: usize, threads: usize) -> Accepting {
        Accepting {
            threads,
            name: format!("listener {addr}"),
            addr: addr.to_string(),
            read_ahead,
            tls,
            app: Some(app),
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    app: Listener,
    tls: Option<Tls>,
    read_ahead: usize,
    /// Compute slots for TLS handshakes, one per worker thread.
    handshakes: Arc<Semaphore>,
    /// The listener has one worker thread: the one accepting.
    one_worker: bool,
}

#[async_trait]
impl Service for Accepting {
    async fn start_service(&mut self, fds: Option<ListenFds>, shutdown: ShutdownWatch, listeners_per_fd: usize) {
        let listener = match listen(&self.addr, fds).await.and_then(watched) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                eprintln!("portico: cannot listen on {}: {e}", self.addr);
                std::process::exit(1);
            }
        };
        let app = self.app.take().expect("a service starts once");
        app.warm();
        let shared = Arc::new(Shared {
            app,
            tls: self.tls.take(),
            read_ahead: self.read_ahead,
            handshakes: Arc::new(Semaphore::new(self.threads.max(1))),
            one_worker: self.threads <= 1,
        });
        let loops: Vec<_> = (0..listeners_per_fd.max(1))
            .map(|_| tokio::spawn(accept_loop(shared.clone(), listener.clone(), shutdown.clone())))
            .collect();
        let lot = tokio::spawn(parking_lot(shared.clone(), shutdown.clone()));
        for l in loops {
            let _ = l.await;
        }
        let _ = lot.await;
        shared.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}

/// The socket handed over by the previous process, or a new one (registered
/// for the next upgrade).
pub(crate) async fn listen(addr: &str, fds: Option<ListenFds>) -> io::Result<TcpListener> {
    if let Some(fd) = fds.as_ref().and_then(|t| t.lock().get(addr).copied()) {
        // SAFETY: the fd table holds listening sockets this process owns.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        // listen() again on a listening socket only updates its backlog (Linux).
        return TcpSocket::from_std_stream(std).listen(BACKLOG);
    }
    let l = bind(addr).await?;
    if let Some(t) = fds {
        t.lock().add(addr.to_string(), l.as_raw_fd());
    }
    Ok(l)
}

/// The listening socket, watched by the reactor of the thread that accepts.
/// Connections come out of it unwatched and are handed to a worker, whose
/// reactor watches them if they have to wait (`take_in`), so with one
/// single-threaded runtime per worker thread each connection's I/O wakes
/// only the thread that serves it.
pub(crate) type Listening = AsyncFd<mio::net::TcpListener>;

pub(crate) fn watched(l: TcpListener) -> io::Result<Listening> {
    let l = mio::net::TcpListener::from_std(l.into_std()?);
    // SAFETY: the listener owns its descriptor, which stays open and the same
    // until the `AsyncFd` (the listener's only owner) drops it.
    Ok(unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }?)
}

async fn bind(addr: &str) -> io::Result<TcpListener> {
    let sock_addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing"))?;
    let mut tries = 0;
    loop {
        let s = match sock_addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => {
                let s = TcpSocket::new_v6()?;
                // IPv6 clients only, as nginx's `ipv6only=on`: `[::]:80` can then
                // listen next to `0.0.0.0:80` (dual-stack, it found the port taken).
                rustix::net::sockopt::set_ipv6_v6only(&s, true)?;
                s
            }
        };
        s.set_reuseaddr(true)?;
        match s.bind(sock_addr) {
            Ok(()) => return s.listen(BACKLOG),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                log::warn!("{addr} is in use, trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accept until the server shuts down; each connection runs in its own task,
/// on one of the listener's worker threads ([`worker`]).
async fn accept_loop(shared: Arc<Shared>, listener: Arc<Listening>, mut shutdown: ShutdownWatch) {
    // Plain connections that may still be taken in without a new wait on the
    // listener and the shutdown watch: those already waiting when one is.
    let mut more = 0;
    loop {
        let open = &shared.app.open;
        let next = (more > 0 && !open.full()).then(|| listener.try_io(tokio::io::Interest::READABLE, accept_now));
        let accepted = match next {
            Some(Ok(accepted)) => {
                more -= 1;
                Ok(accepted)
            }
            // None left (or an error, for the wait to meet again and report).
            _ => tokio::select! {
                a = async {
                    let a = accept(&listener).await;
                    if a.is_ok() && open.full() {
                        // At the bound: this connection waits here (the next ones in the
                        // backlog) until there is room; idle ones are closed to make it.
                        open.room(&shared.app.lot).await;
                    }
                    a
                } => {
                    more = if shared.tls.is_none() { ACCEPT_BATCH - 1 } else { 0 };
                    a
                }
                changed = shutdown.changed() => match changed {
                    Ok(()) if !*shutdown.borrow() => continue,
                    Ok(()) => return shared.app.stop.begin(),
                    Err(_) => return, // no sender: no shutdown signal will come
                },
            },
        };
        match accepted {
            Ok((tcp, peer)) => {
                // (`TCP_NODELAY` is set before the connection's second write: `Conn::sending`.)
                let (rt, conn) = take_in(&shared, tcp, peer, shared.app.open.count());
                rt.spawn(connection(shared.clone(), conn, shutdown.clone()));
                if shared.tls.is_some() {
                    // One TLS connection per turn of the scheduler, like nginx's one accept
                    // per event-loop turn: the rest wait in the kernel's backlog, so requests
                    // on connections already taken in do not queue behind a crowd of
                    // handshakes. (Plain connections are cheap to take in; pausing there
                    // cost 5-8% CPU per request with a new connection each.)
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// After a failed `accept()`: logged, and when out of file descriptors
/// (ENFILE, EMFILE), a pause to let connections close before trying again.
pub(crate) async fn accept_failed(e: &io::Error) {
    log::error!("accept() failed: {e}");
    if matches!(e.raw_os_error(), Some(23 | 24)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next connection from the listening socket: a non-blocking socket
/// not yet watched by any thread's reactor.
pub(crate) async fn accept(listener: &Listening) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|l| accept_now(l.get_ref())) {
            return accepted;
        }
    }
}

/// `accept4`, made directly as the connection's reads and writes are (see
/// `sockio.rs`); `WouldBlock` when no connection is waiting.
fn accept_now(l: &mio::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::SocketFlags;
    let (fd, addr) = rustix::net::acceptfrom_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = addr.and_then(|a| SocketAddr::try_from(a).ok());
    let peer = peer.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP peer"))?;
    Ok((std::net::TcpStream::from(fd), peer))
}

/// The worker thread a new (or resumed) connection is served on. With
/// `server.work_stealing: false` each of the listener's threads runs its own
/// single-threaded runtime and this picks one at random, as Pingora does
/// (with one thread, the one this runs on, without drawing a random
/// number); with work stealing there is one runtime for all of them.
fn worker(shared: &Shared) -> Handle {
    if shared.one_worker {
        return Handle::current();
    }
    pingora_runtime::current_handle()
}

/// A client connection (new, or back from the parking lot) and the worker
/// that will serve it. Its socket goes on that worker's reactor only if the
/// connection has to wait (`Conn`), so its readiness wakes that thread and
/// no other.
fn take_in(
    shared: &Shared,
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    counted: super::open::Counted,
) -> (Handle, Box<Conn>) {
    let conn = Conn::new(tcp, peer, shared.read_ahead).counted(Some(counted));
    (worker(shared), Box::new(conn))
}

/// One client connection, for its whole life. Its future is the task's
/// memory while the connection idles, so it holds little: the connection,
/// the listener, the shutdown watch, and the listener's idle wait; the TLS
/// handshake and each request are boxed while they last.
/// (An `async` block, which keeps its captures once, not an `async fn`.)
#[allow(clippy::manual_async_fn)]
fn connection(shared: Arc<Shared>, conn: Box<Conn>, shutdown: ShutdownWatch) -> impl Future<Output = ()> + Send {
    async move {
        let conn = match shared.app.proxy_protocol {
            false => conn,
            true => match Box::pin(proxied(&shared, conn)).await {
                Some(c) => c,
                None => return,
            },
        };
        let stream: Stream = match &shared.tls {
            None => conn,
            Some(tls) => match Box::pin(handshake(&shared, tls, *conn)).await {
                Some(s) => Box::new(s),
                None => return,
            },
        };
        shared.app.serve(stream, &shutdown).await;
    }
}

/// The connection once its PROXY protocol header is read, within
/// `client_header_timeout`, and its client is the one the header names;
/// `None` (closed) without one.
async fn proxied(shared: &Shared, mut conn: Box<Conn>) -> Option<Box<Conn>> {
    let from = conn.peer();
    let why = match pingora_timeout::timeout(shared.app.header_timeout(), conn.proxy_header()).await {
        Ok(Ok(_)) => return Some(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    log::warn!("PROXY protocol header from {from}: {why}; closed");
    None
}

/// The listener's parking lot (`park.rs`): a parked connection whose next
/// request arrives gets a task again, with what is left of its keep-alive time.
async fn parking_lot(shared: Arc<Shared>, shutdown: ShutdownWatch) {
    let resume = |p: Parked| {
        let Ok(peer) = p.tcp.peer_addr() else {
            return; // the client is gone
        };
        let counted = p.counted.unwrap_or_else(|| shared.app.open.count());
        let (rt, conn) = take_in(&shared, p.tcp, peer, counted);
        let left = p.deadline_ms.saturating_sub(crate::clock::coarse_ms());
        // Its request is here (or the client closed): a short wait is enough to read it.
        let wait_ms = left.clamp(100, u32::MAX.into()) as u32;
        rt.spawn(resumed(shared.clone(), conn, shutdown.clone(), p.served, wait_ms));
    };
    shared.app.lot.run(resume, shutdown.clone()).await
}

/// A connection back from the parking lot, for the rest of its life.
#[allow(clippy::manual_async_fn)]
fn resumed(
    shared: Arc<Shared>,
    conn: Stream,
    shutdown: ShutdownWatch,
    served: u32,
    wait_ms: u32,
) -> impl Future<Output = ()> + Send {
    async move { shared.app.serve_from(conn, &shutdown, served, Some(wait_ms)).await }
}

/// The TLS handshake, within `client_header_timeout`.
async fn handshake(shared: &Shared, tls: &Tls, mut conn: Conn) -> Option<SslStream<Conn>> {
    let peer = conn.peer();
    // Once the ClientHello is here, wait for a compute slot: at most one handshake
    // per worker thread computes at a time, and the others wait behind requests on
    // open connections (nginx, accepting one connection per event-loop turn, gets
    // the same order). The slot goes when the handshake next waits for the client.
    let handshake = async {
        if !conn.pending() {
            conn.readable().await.ok()?;
        }
        // A TLS record starts with its type (22 for the ClientHello); a letter is a plain HTTP request.
        let mut first = [0u8; 1];
        if Peek::try_peek(&mut conn, &mut first).await.is_ok() && first[0].is_ascii_uppercase() {
            log::info!("plain HTTP from {peer} on a TLS listener: answered 400");
            let body = b"400 The plain HTTP request was sent to HTTPS port\n";
            let refused = super::head::Refused {
                status: 400,
                line: Vec::new(), // not read: what is left of it is read and dropped
                sent: body.len() as u64,
                start: std::time::Instant::now(),
            };
            let report = || shared.app.lean.gateway().log_refused(Some(peer.ip()), &refused);
            super::head::answer_and_close(Box::new(conn), 400, body, report).await;
            return None;
        }
        let slot = shared.handshakes.clone().acquire_owned().await.ok()?;
        conn.hold_until_read_waits(slot);
        match handshake_with_callback(&tls.acceptor, conn, tls.callbacks.as_ref()).await {
            Ok(s) => Some(s),
            Err(e) => {
                log::info!("TLS handshake with {peer} failed: {e}");
                None
            }
        }
    };
    match pingora_timeout::timeout(shared.app.header_timeout(), handshake).await {
        Ok(s) => s,
        Err(_) => {
            log::info!("TLS handshake with {peer} timed out");
            None
        }
    }
}
