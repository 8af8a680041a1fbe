//! The listening application: Portico's own accept loop (`accept.rs`)
//! hands each client connection (`conn.rs`) to a small layer that runs the
//! HTTP/1 keep-alive loop itself (the same steps as Pingora's own, through
//! its public session API) in front of Pingora's `HttpProxy`, and hands
//! HTTP/2, h2c and custom protocols to Pingora untouched. It exists for
//! three things Pingora does not offer:
//!
//! - `server.client_header_timeout` (nginx's `client_header_timeout`): how
//!   long a new connection may take to send its first request header (and,
//!   on TLS, to complete its handshake). Pingora fixes both waits at 60 s.
//!   Like Pingora's, the limit applies to each read while the header is
//!   awaited; between requests `server.keepalive_timeout` governs the wait
//!   instead.
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
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

mod accept;
mod conn;
mod rewound;
pub use accept::{Accepting, Tls};
use conn::Conn;
use rewound::Rewound;

/// The client's address, read from the connection itself (plain, or TLS as
/// the listener wraps it), so no socket digest is made for it.
pub fn peer_of(stream: &Stream) -> Option<std::net::SocketAddr> {
    let any = stream.as_any();
    if let Some(c) = any.downcast_ref::<Conn>() {
        return Some(c.peer());
    }
    let tls = any.downcast_ref::<Rewound>()?.inner().as_any();
    Some(
        tls.downcast_ref::<pingora_core::protocols::tls::SslStream<Conn>>()?
            .get_ref()
            .peer(),
    )
}

pub struct Listener {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub lean: LeanPath,
    pub live: Arc<Live>,
    /// Index of this listener in the configuration.
    pub index: usize,
}

impl Listener {
    fn options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options.as_ref()
    }
}

/// Resolves when the server starts shutting down.
async fn stopping(shutdown: &ShutdownWatch) {
    let mut stop = shutdown.clone();
    loop {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await; // no sender: no shutdown signal will come
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Wait up to `wait` for a request's first bytes and hand what has arrived
/// (up to 4 KiB, one read) to `arrived`. The buffer is on the stack of the
/// one poll that reads, so an idle connection's future holds none of it.
/// `None`: timed out, client gone, or the server is shutting down. Timed
/// with Pingora's coarse shared timers (10 ms buckets), which cost less per
/// wait than a tokio timer.
async fn first_bytes<X: ?Sized, R>(
    x: &mut X,
    wait: Duration,
    shutdown: &ShutdownWatch,
    read: impl Fn(&mut X, &mut Context<'_>, &mut ReadBuf<'_>) -> Poll<io::Result<()>>,
    arrived: impl FnOnce(&mut X, &[u8]) -> R,
) -> Option<R> {
    let mut arrived = Some(arrived);
    let bytes = std::future::poll_fn(|cx| {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut buf = ReadBuf::uninit(&mut buf);
        match read(x, cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => Poll::Ready(arrived.take().map(|f| f(x, buf.filled()))),
            Poll::Ready(_) => Poll::Ready(None), // closed, or an error
        }
    });
    tokio::select! {
        // Read first: a request that has already arrived is served, not dropped, at shutdown.
        biased;
        r = pingora_timeout::timeout(wait, bytes) => r.ok().flatten(),
        _ = stopping(shutdown) => None,
    }
}

/// The first bytes of a request, given to `lean`; if it declines, they are put back.
fn look_ahead<S: ?Sized>(
    s: &mut S,
    bytes: &[u8],
    put_back: impl FnOnce(&mut S, &[u8]),
    lean: impl FnOnce(&[u8]) -> Option<Box<Head>>,
) -> Option<Box<Head>> {
    let taken = lean(bytes);
    if taken.is_none() {
        put_back(s, bytes);
    }
    taken
}

/// Wait up to `wait` for the next request, read what has arrived of it, and
/// ask `lean` whether it is one for the lean loop: if so, the request
/// parsed; if not, the bytes are put back, so Pingora's loop reads the
/// request whole. `None`: close the connection. A plain stream takes the
/// bytes back itself; a TLS stream is wrapped in [`Rewound`] once. With
/// `wait_lean` off, the stream goes straight on to Pingora's loop.
async fn next_request(
    stream: Stream,
    wait_lean: bool,
    wait: Duration,
    shutdown: &ShutdownWatch,
    lean: impl FnOnce(&[u8]) -> Option<Box<Head>>,
) -> Option<(Stream, Option<Box<Head>>)> {
    if !wait_lean {
        return Some((stream, None));
    }
    if stream.as_any().is::<Conn>() {
        let mut conn: Box<Conn> = stream.into_any().downcast().ok()?;
        if conn.pending() {
            return Some((conn, None)); // the next request is already here, read by nobody yet
        }
        conn.rest();
        let read = |s: &mut Conn, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>| s.poll_socket(cx, buf);
        let arrived = |s: &mut Conn, bytes: &[u8]| look_ahead(s, bytes, |s, b| s.rewind(b), lean);
        let take_lean = first_bytes(&mut *conn, wait, shutdown, read, arrived).await?;
        return Some((conn, take_lean));
    }
    let mut rw: Box<Rewound> = if stream.as_any().is::<Rewound>() {
        stream.into_any().downcast().ok()?
    } else {
        Box::new(Rewound::new(stream))
    };
    if rw.pending() {
        return Some((rw, None)); // the next request is already here, read by nobody yet
    }
    let read =
        |s: &mut Rewound, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>| Pin::new(s.inner_mut()).poll_read(cx, buf);
    let arrived = |s: &mut Rewound, bytes: &[u8]| look_ahead(s, bytes, |s, b| s.rewind(b), lean);
    let take_lean = first_bytes(&mut *rw, wait, shutdown, read, arrived).await?;
    Some((rw, take_lean))
}

/// `client_header_timeout`, at least a second.
fn first_wait(s: &ServerSection) -> Duration {
    s.client_header_timeout.0.max(Duration::from_secs(1))
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

    /// Serve one client connection until it closes.
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut next = Some(stream);
        while let Some(s) = next {
            next = self.process(s, shutdown).await;
        }
    }

    /// Serve requests on `stream`; HTTP/2 and custom protocols go to
    /// Pingora whole. `Some`: a stream Pingora hands back for reuse.
    async fn process(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let h2c = self.options().is_some_and(|o| o.h2c || o.force_custom);
        let alpn = stream.selected_alpn_proto();
        if h2c || matches!(alpn, Some(ALPN::H2) | Some(ALPN::Custom(_))) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        // Only these settings are kept: this future lives as long as the connection.
        let (first_wait, idle_wait, lean_keepalive, lean_proxy) = {
            let snap = self.live.snapshot();
            let s = &snap.cfg.server;
            (first_wait(s), s.keepalive_timeout.0, s.lean_keepalive, s.lean_proxy)
        };
        let request_limit = self.options().and_then(|o| o.keepalive_request_limit);
        let mut wait = first_wait;
        // Requests served on this connection so far.
        let mut served: u32 = 0;
        // Keep-alive state Pingora's loop hands on from a request it served.
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let accepts = |head: &[u8]| {
                lean_proxy
                    .then(|| lean::accepts(head, &self.live.snapshot(), self.index))
                    .flatten()
            };
            let (s, lean_head) = next_request(stream, lean_keepalive || lean_proxy, wait, shutdown, accepts).await?;
            // How many more requests the connection may carry after this one, as Pingora counts.
            let reuses_left = request_limit.map(|l| l.saturating_sub(served));
            served = served.saturating_add(1);
            let previous = settings.take();
            stream = match lean_head {
                Some(head) => {
                    let session = LeanSession::new(s, head, reuses_left);
                    // Boxed, so the request's state is not part of the connection's idle future.
                    Box::pin(self.lean.serve(session, shutdown)).await?
                }
                None => {
                    let keep = if served == 1 { first_wait } else { idle_wait };
                    let keep = (!*shutdown.borrow()).then_some(keep.as_secs());
                    let session = pingora_session(s, previous, keep, reuses_left);
                    let (s, next) = HttpServerApp::process_new_http(&self.proxy, session, shutdown)
                        .await?
                        .consume();
                    settings = next;
                    s
                }
            };
            wait = idle_wait;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}
