//! The listening application: Portico's own accept loop (`accept.rs`)
//! hands each client connection (`conn.rs`) to a small layer that runs the
//! HTTP/1 keep-alive loop itself (the same steps as Pingora's own, through
//! its public session API) in front of Pingora's `HttpProxy`, and hands
//! HTTP/2, h2c and custom protocols to Pingora untouched. It exists for
//! what Pingora does not offer:
//!
//! - `server.client_header_timeout` (nginx's `client_header_timeout`): how
//!   long a new connection may take to send its first request's first bytes
//!   (and, on TLS, to complete its handshake; Pingora fixes both waits at
//!   60 s), and how long the rest of any request head may take (`head.rs`;
//!   Pingora's applies to each read). Between requests
//!   `server.keepalive_timeout` governs the wait instead.
//! - `server.max_request_header_size`: the request head's size limit
//!   (`head.rs`; Pingora's loop takes up to 1 MiB).
//! - Lean idle connections (`server.lean_keepalive`, on by default): until
//!   the first byte of a request arrives, a connection holds only its
//!   socket (and, on TLS, its TLS state) and a small future. Pingora's
//!   per-request future (about 9 KiB) and its 4 KiB header buffer are made
//!   once there is something to read, not for the whole idle time; so is
//!   the state of a request in Pingora's loop (boxed, not part of the
//!   connection's future). The wait reads into a buffer on the stack of the
//!   poll that finds data, so it costs no extra read.
//! - The lean HTTP/1 path (`server.lean_proxy`, on by default): the
//!   request's first bytes, read while waiting, decide whether it takes
//!   Portico's short proxy loop (`crate::proxy::lean`), which gets the
//!   request already parsed, or Pingora's, for which they are put back into
//!   the stream (`rewound.rs` for TLS streams) to be read whole.

use crate::config::schema::ServerSection;
use crate::live::Live;
use crate::proxy::lean::{self, Head, LeanPath, LeanSession};
use crate::proxy::Gateway;
use crate::timeout::Alarm;
use crate::warming::Warming;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

pub(crate) mod accept;
mod chunks;
pub(crate) mod conn;
pub mod head;
mod held;
pub mod open;
mod park;
mod rewound;
pub use accept::{Accepting, Tls};
use conn::Conn;
use held::Fenced;
pub use park::Lot;
use rewound::Rewound;

/// `Ready` once a read of this client connection may find something (or
/// fail), for a watch on the client while its response is awaited: plain
/// connections as [`Conn::poll_read_ready`] says, TLS ones while a
/// read could find more than nothing (see [`Rewound::poll_read_ready`]).
pub fn poll_readable_for_watch(stream: &Stream, cx: &mut Context<'_>) -> Poll<()> {
    let any = stream.as_any();
    if let Some(conn) = any.downcast_ref::<Conn>() {
        return conn.poll_read_ready(cx).map(|_| ()); // an error is for the read to find
    }
    match any.downcast_ref::<Rewound>() {
        Some(rw) => rw.poll_read_ready(cx),
        None => Poll::Ready(()),
    }
}

/// A plain client connection whose socket is not on tokio's reactor yet:
/// nothing has had to wait for it (see `Conn`).
pub fn unwatched(stream: &Stream) -> bool {
    stream.as_any().downcast_ref::<Conn>().is_some_and(Conn::unwatched)
}

/// The stream as a `T`, if it is one.
fn downcast_mut<T: pingora_core::protocols::IO + 'static>(stream: &mut Stream) -> Option<&mut T> {
    if !stream.as_any().is::<T>() {
        return None;
    }
    let io: *mut dyn pingora_core::protocols::IO = &mut **stream;
    // SAFETY: the stream is a `T`, checked just above (Pingora's `IO`
    // offers no `as_any_mut`); the reference lives no longer than `stream`'s.
    Some(unsafe { &mut *(io as *mut T) })
}

/// Put a plain client connection's socket on the reactor of the runtime
/// this runs on, for [`poll_readable_for_watch`] (TLS ones are on it).
pub fn watch(stream: &mut Stream) -> std::io::Result<()> {
    downcast_mut::<Conn>(stream).map_or(Ok(()), Conn::watch)
}

/// A listener's connection, as what holds bytes in front of what it reads.
fn fenced_mut(stream: &mut Stream) -> Option<&mut (dyn Fenced + Send)> {
    if stream.as_any().is::<Conn>() {
        return downcast_mut::<Conn>(stream).map(|c| c as &mut (dyn Fenced + Send));
    }
    downcast_mut::<Rewound>(stream).map(|r| r as &mut (dyn Fenced + Send))
}

/// The bytes a listener's connection holds in front of what it reads.
fn held_mut(stream: &mut Stream) -> Option<&mut held::Held> {
    fenced_mut(stream).map(Fenced::held)
}

/// Let the request being served read no more than `limit` more bytes from
/// the client (see `held.rs`); a watch on the client sets 0.
pub fn fence(stream: &mut Stream, limit: Option<usize>) {
    if let Some(held) = held_mut(stream) {
        held.fence(limit);
    }
}

/// The client's address, read from the connection itself (plain, or TLS as
/// the listener wraps it), so no socket digest is made for it.
pub fn peer_of(stream: &Stream) -> Option<std::net::SocketAddr> {
    let any = stream.as_any();
    if let Some(c) = any.downcast_ref::<Conn>() {
        return Some(c.peer());
    }
    Some(any.downcast_ref::<Rewound>()?.tls()?.get_ref().peer())
}

pub struct Listener {
    /// Pingora's proxy, for what the lean path leaves to it (HTTP/2, h2c,
    /// `server.lean_proxy: false`, requests it does not take); built while
    /// the listener starts serving (`warming`).
    pub proxy: Warming<Arc<HttpProxy<Gateway>>>,
    /// The options `proxy` is built with.
    pub server_options: HttpServerOptions,
    pub lean: LeanPath,
    pub live: Arc<Live>,
    /// Index of this listener in the configuration.
    pub index: usize,
    /// Told by the accept loop when the server shuts down.
    pub stop: Stop,
    /// Where idle keep-alive connections wait without a task.
    pub lot: park::Lot,
    /// Connections start with a PROXY protocol header (`accept_proxy_protocol`).
    /// They are not parked: the lot keeps no client address.
    pub proxy_protocol: bool,
    /// Its open connections, and their bound (`max_connections`).
    pub open: Arc<open::Open>,
}

/// The server's shutdown as connections waiting for a request see it: one
/// notice for them all, so a waiting connection holds a waiter entry
/// (about 70 bytes) instead of a clone of the shutdown watch and its
/// `changed` future (about 150).
#[derive(Default)]
pub struct Stop {
    notify: Notify,
    stopping: AtomicBool,
}

impl Stop {
    /// The server is shutting down: connections waiting for a request close.
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once the server is shutting down.
    async fn wait(&self) {
        // Registered before the check, so a `begin` between the two still wakes it.
        let notified = self.notify.notified();
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        notified.await
    }
}

/// A connection waiting for its next request's first bytes.
enum Waiting {
    Plain(Box<Conn>),
    /// TLS, wrapped once so that bytes read ahead can be put back.
    Tls(Box<Rewound>),
}

impl Waiting {
    /// Get `stream` ready to wait for the next request, or `Err` with it
    /// when that request's bytes are already here, read by nobody yet.
    fn of(stream: Stream) -> Result<Waiting, Stream> {
        if stream.as_any().is::<Conn>() {
            let Ok(mut conn) = stream.into_any().downcast::<Conn>() else {
                unreachable!("checked")
            };
            conn.held().fence(None);
            if conn.pending() {
                return Err(conn);
            }
            conn.rest();
            return Ok(Waiting::Plain(conn));
        }
        let mut rw: Box<Rewound> = if stream.as_any().is::<Rewound>() {
            let Ok(rw) = stream.into_any().downcast() else {
                unreachable!("checked")
            };
            rw
        } else {
            Box::new(Rewound::new(stream))
        };
        rw.held().fence(None);
        if rw.pending() {
            return Err(rw);
        }
        Ok(Waiting::Tls(rw))
    }

    /// Read what has arrived of the next request (up to 4 KiB, one read,
    /// into a buffer on the stack of this poll, so an idle connection holds
    /// none) and give it to `lean`; if it declines, the bytes are put back.
    /// `Ready(None)`: closed, or an error.
    fn poll_first(
        &mut self,
        cx: &mut Context<'_>,
        lean: &mut Option<impl FnOnce(&[u8]) -> Option<Box<Head>>>,
    ) -> Poll<Option<Option<Box<Head>>>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut buf = ReadBuf::uninit(&mut buf);
        let read = match self {
            Waiting::Plain(c) => c.poll_socket(cx, &mut buf),
            Waiting::Tls(rw) => {
                ready!(rw.poll_read_ready(cx));
                Pin::new(rw.inner_mut()).poll_read(cx, &mut buf)
            }
        };
        match read {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let bytes = buf.filled();
                let taken = lean.take().and_then(|lean| lean(bytes));
                // Put back what is not the lean loop's: a request it declines, or those
                // sent after the one it takes (pipelined).
                let rest = taken.as_ref().map_or(bytes, |head| &bytes[head.wire_len()..]);
                if !rest.is_empty() {
                    match self {
                        Waiting::Plain(c) => c.rewind(rest),
                        Waiting::Tls(rw) => rw.rewind(rest),
                    }
                }
                Poll::Ready(Some(taken))
            }
            Poll::Ready(_) => Poll::Ready(None),
        }
    }

    fn into_stream(self) -> Stream {
        match self {
            Waiting::Plain(c) => c,
            Waiting::Tls(rw) => rw,
        }
    }
}

/// `client_header_timeout`, at least a second.
fn first_wait(s: &ServerSection) -> Duration {
    s.client_header_timeout.0.max(Duration::from_secs(1))
}

/// `d` in milliseconds (at most about 49 days).
fn ms(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX.into()) as u32
}

/// A request for Pingora's HTTP/1 loop: keep-alive as the previous request
/// on the connection left it, or else `keep` (seconds, `None`: close) and
/// `reuses_left`. For the first request, Pingora's "keepalive" wait is the
/// one that applies until the header is complete.
fn pingora_session(
    s: Stream,
    previous: Option<HttpPersistentSettings>,
    keep: Option<u64>,
    reuses_left: Option<u32>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(s);
    match previous {
        Some(st) => st.apply_to_session(&mut session),
        None => {
            session.set_keepalive(keep);
            session.set_keepalive_reuses_remaining(reuses_left);
        }
    }
    session
}

impl Listener {
    /// The wait for a new connection's first request header, which also
    /// bounds its TLS handshake (nginx's `client_header_timeout`).
    fn header_timeout(&self) -> Duration {
        first_wait(&self.live.snapshot().cfg.server)
    }

    /// Does `stream` go to Pingora whole (HTTP/2 by ALPN, custom protocols)?
    fn whole(&self, stream: &Stream) -> bool {
        self.server_options.force_custom
            || matches!(stream.selected_alpn_proto(), Some(ALPN::H2) | Some(ALPN::Custom(_)))
    }

    /// Is a new connection HTTP/2 by ALPN, or perhaps h2c (on an h2c listener, not TLS)?
    fn may_be_h2(&self, stream: &Stream) -> bool {
        (self.server_options.h2c && stream.get_ssl().is_none())
            || matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
    }

    /// A new connection's protocol: `Some(true)` for Pingora whole (HTTP/2,
    /// custom protocols), `Some(false)` for the HTTP/1 loop. HTTP/2 must
    /// send its preface within `client_header_timeout`, as an HTTP/1 client
    /// must send its first bytes (Pingora waits for it without a limit); on
    /// an h2c listener the preface, or the first byte that differs from it,
    /// tells HTTP/2 from HTTP/1, which takes the HTTP/1 loop and its limits.
    /// `None`: the client sent nothing in time, or closed.
    async fn opening(&self, mut stream: Stream) -> Option<(Stream, bool)> {
        if !self.may_be_h2(&stream) {
            let whole = self.whole(&stream);
            return Some((stream, whole));
        }
        let h2c = self.server_options.h2c && stream.get_ssl().is_none();
        if fenced_mut(&mut stream).is_none() {
            stream = Box::new(Rewound::new(stream)); // TLS: wrapped once, to hold what is read
        }
        let conn = fenced_mut(&mut stream).expect("a listener's connection");
        match tokio::time::timeout(self.header_timeout(), held::begins_h2(conn)).await {
            Ok(Ok(h2)) => Some((stream, h2 || !h2c)),
            _ => None,
        }
    }

    /// A connection Pingora serves whole, until it hands it back for HTTP/1.
    async fn serve_whole(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let proxy = self.proxy.get().await;
        while let Some(s) = ServerApp::process_new(proxy, stream, shutdown).await {
            if !self.whole(&s) {
                let http1: Pin<Box<dyn Future<Output = ()> + Send + '_>> = Box::pin(self.serve(s, shutdown));
                return http1.await;
            }
            stream = s;
        }
    }

    /// Serve requests on `stream` until the connection closes: HTTP/1 in
    /// the lean loop or Pingora's; HTTP/2 and custom protocols go to Pingora
    /// whole. This future is most of an idle connection's memory, so it
    /// keeps only what the next request needs; each request runs boxed.
    /// A plain connection idle for `server.idle_park_after` leaves it for
    /// the listener's parking lot (`park.rs`) and comes back through
    /// [`Listener::serve_from`].
    pub fn serve<'a>(&'a self, stream: Stream, shutdown: &'a ShutdownWatch) -> impl Future<Output = ()> + Send + 'a {
        self.serve_from(stream, shutdown, 0, None)
    }

    /// [`Listener::serve`] for a connection that has carried `served`
    /// requests already and waits up to `wait_ms` milliseconds for its next
    /// one (a connection back from the parking lot).
    ///
    /// A function returning an `async` block rather than an `async fn`,
    /// whose future would keep its arguments twice.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn serve_from<'a>(
        &'a self,
        mut stream: Stream,
        shutdown: &'a ShutdownWatch,
        mut served: u32,
        wait_ms: Option<u32>,
    ) -> impl Future<Output = ()> + Send + 'a {
        async move {
            if served == 0 && (self.may_be_h2(&stream) || self.whole(&stream)) {
                // Boxed: the wait for the protocol is no part of the idle connection's future.
                let opening: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(self.opening(stream));
                let Some((s, whole)) = opening.await else { return };
                if whole {
                    let whole: Pin<Box<dyn Future<Output = ()> + Send + '_>> = Box::pin(self.serve_whole(s, shutdown));
                    return whole.await;
                }
                stream = s;
            }
            // The waits in milliseconds: they are kept in the idle future, which is the connection's memory.
            let (first_ms, idle_ms, lean_keepalive, lean_proxy, mut park_ms) = {
                let snap = self.live.snapshot();
                let s = &snap.cfg.server;
                let parks = s.lean_keepalive && !self.proxy_protocol;
                let park_after = if parks { ms(s.idle_park_after.0) } else { 0 };
                let idle = ms(s.keepalive_timeout.0);
                (ms(first_wait(s)), idle, s.lean_keepalive, s.lean_proxy, park_after)
            };
            let request_limit = self.server_options.keepalive_request_limit;
            let mut wait_ms = wait_ms.unwrap_or(first_ms);
            // Keep-alive state Pingora's loop hands on from a request it served (boxed: rare).
            let mut settings: Option<Box<HttpPersistentSettings>> = None;
            // One timer for all the waits for the next request (`timeout::Alarm`).
            let mut alarm = Alarm::default();
            loop {
                let accepts = |head: &[u8]| {
                    if !lean_proxy {
                        return None;
                    }
                    let snap = self.live.snapshot();
                    // Over the head's size limit: Pingora's loop is where it is refused.
                    if !head::within(head, snap.cfg.server.max_request_header_size.0 as usize) {
                        return None;
                    }
                    lean::accepts(head, &snap, self.index)
                };
                let (s, lean_head) = if !(lean_keepalive || lean_proxy) {
                    (stream, None) // straight on to Pingora's loop
                } else {
                    match Waiting::of(stream) {
                        Err(mut s) => {
                            // Already here: a request sent before the last one's answer (pipelined).
                            let lean_head = held_mut(&mut s).and_then(|held| {
                                let head = accepts(held.bytes())?;
                                held.skip(head.wire_len());
                                Some(head)
                            });
                            (s, lean_head)
                        }
                        Ok(mut waiting) => {
                            // A plain keep-alive connection idle for `park_after` goes to the parking lot.
                            let park = served > 0
                                && settings.is_none()
                                && park_ms != 0
                                && park_ms < wait_ms
                                && matches!(waiting, Waiting::Plain(_));
                            // Up to `wait` (or `park_after`) for the next request; `lean` then
                            // says whether it is one for the lean loop.
                            let next = {
                                let mut lean = Some(accepts);
                                let first = std::future::poll_fn(|cx| waiting.poll_first(cx, &mut lean));
                                let limit = Duration::from_millis(if park { park_ms } else { wait_ms }.into());
                                let mut first = std::pin::pin!(alarm.within(limit, first));
                                let mut stop = std::pin::pin!(self.stop.wait());
                                std::future::poll_fn(|cx| {
                                    // Read first: a request already here is served, not dropped, at shutdown.
                                    if let Poll::Ready(r) = first.as_mut().poll(cx) {
                                        return Poll::Ready(r.map_err(|_| ()));
                                    }
                                    // Only a keep-alive connection closes at shutdown. One that has
                                    // carried no request yet was just opened for one, which may be on
                                    // its way: it is served, as nginx does, until the process exits
                                    // with nothing in flight (`ExitWhenIdle`).
                                    if served == 0 {
                                        return Poll::Pending;
                                    }
                                    stop.as_mut().poll(cx).map(|()| Ok(None))
                                })
                                .await
                            };
                            match next {
                                Ok(Some(head)) => (waiting.into_stream(), head),
                                Err(()) if park => {
                                    let Waiting::Plain(conn) = waiting else {
                                        unreachable!("checked")
                                    };
                                    let Some(conn) = self.park(conn, served, wait_ms - park_ms) else {
                                        return;
                                    };
                                    // Holds bytes: it waits the rest of its time here.
                                    stream = conn;
                                    wait_ms -= park_ms;
                                    park_ms = 0;
                                    continue;
                                }
                                _ => return, // timed out, client gone, or shutting down
                            }
                        }
                    }
                };
                // How many more requests the connection may carry after this one, as Pingora counts.
                let reuses_left = request_limit.map(|l| l.saturating_sub(served));
                served = served.saturating_add(1);
                let previous = settings.take();
                let next = match lean_head {
                    Some(head) => {
                        let session = LeanSession::new(s, head, reuses_left);
                        // Boxed, so the request's state is not part of the connection's idle future.
                        Box::pin(self.lean.serve(session, shutdown)).await
                    }
                    None => {
                        let keep = if served == 1 { first_ms } else { idle_ms };
                        let keep = (!*shutdown.borrow()).then_some(u64::from(keep / 1000));
                        // Boxed: the wait for the proxy, in the first moments of a
                        // gateway, would otherwise keep `s` and the rest in this future.
                        let (proxy, live, gw) = (&self.proxy, &self.live, self.lean.gateway());
                        Box::pin(async move {
                            // The head's size limit, where the listener read the request's first bytes.
                            let s = if lean_keepalive || lean_proxy {
                                let (limit, wait) = {
                                    let s = &live.snapshot().cfg.server;
                                    (s.max_request_header_size.0 as usize, first_wait(s))
                                };
                                let client = peer_of(&s).map(|a| a.ip());
                                let report = |r: &head::Refused| gw.log_refused(client, r);
                                let mut s = head::gather(s, limit, wait, &report).await?;
                                // Reads stop at the end of this request: what follows is the next one.
                                if let Some(held) = held_mut(&mut s) {
                                    let framing = held::request_framing(held.bytes());
                                    held.fence_request(framing);
                                }
                                s
                            } else {
                                s
                            };
                            let proxy = proxy.get().await;
                            let session = pingora_session(s, previous.map(|b| *b), keep, reuses_left);
                            HttpServerApp::process_new_http(proxy, session, shutdown).await
                        })
                        .await
                        .map(|reuse| {
                            let (s, next) = reuse.consume();
                            settings = next.map(Box::new);
                            s
                        })
                    }
                };
                let Some(s) = next else { return };
                stream = s;
                wait_ms = idle_ms;
            }
        }
    }

    /// Hand an idle connection with `left_ms` of keep-alive time left to the
    /// parking lot; it comes back if it still holds bytes.
    fn park(&self, conn: Box<Conn>, served: u32, left_ms: u32) -> Option<Box<Conn>> {
        match conn.into_parked() {
            Ok((Ok(tcp), counted)) => {
                let deadline_ms = crate::clock::coarse_ms() + u64::from(left_ms);
                self.lot.park(park::Parked {
                    tcp,
                    served,
                    deadline_ms,
                    counted,
                });
            }
            Ok((Err(e), _)) => log::info!("cannot park an idle connection: {e}"),
            Err(conn) => return Some(conn),
        }
        None
    }

    /// Start building what the listener builds while it serves.
    pub fn warm(&self) {
        self.proxy.start();
        self.lean.warm();
    }

    async fn cleanup(&self) {
        if let Some(proxy) = self.proxy.now() {
            ServerApp::cleanup(proxy.as_ref()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stop_wakes_waiting_connections_and_later_ones_at_once() {
        let stop = Arc::new(Stop::default());
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { stop.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no shutdown yet");
        stop.begin();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), stop.wait()).await.unwrap();
    }
}
