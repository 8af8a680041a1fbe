//! The listening application: Pingora's `HttpProxy` behind one small layer
//! that runs the HTTP/1 keep-alive loop itself (the same steps as Pingora's
//! own, through its public session API) and hands HTTP/2, h2c and custom
//! protocols to Pingora untouched. It exists for two things Pingora does
//! not offer:
//!
//! - `server.client_header_timeout` (nginx's `client_header_timeout`): how
//!   long a new connection may take to send its first request header.
//!   Pingora fixes that wait at 60 s. Like Pingora's, the limit applies to
//!   each read while the header is awaited; between requests
//!   `server.keepalive_timeout` governs the wait instead.
//! - Lean idle connections (`server.lean_keepalive`, on by default): until
//!   the first byte of a request arrives, a plain connection holds only its
//!   socket. Pingora's per-request future (about 9 KiB) and its 4 KiB header
//!   buffer are made once there is something to read, not for the whole
//!   idle time. Measured: 23.8 -> 8.3 KiB per idle keep-alive connection,
//!   for one extra 1-byte read per request.
//! - The lean HTTP/1 path (`server.lean_proxy`, on by default): the
//!   request's first bytes, read while waiting, decide whether it takes
//!   Portico's short proxy loop (`crate::proxy::lean`) or Pingora's. They
//!   are put back into the stream, so either loop reads the request whole.

use crate::live::Live;
use crate::proxy::lean::{self, LeanPath};
use crate::proxy::Gateway;
use async_trait::async_trait;
use futures::FutureExt;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

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

/// Wait up to `wait` for the next request on a plain connection, read what
/// has arrived of it (up to 4 KiB), ask `lean` whether those bytes make a
/// request for the lean path, and put them back. `None`: close the
/// connection (timed out, client gone, or shutting down). TLS streams cannot
/// take bytes back; they go straight on to Pingora, as does everything when
/// `wait_lean` is off.
async fn next_request(
    stream: Stream,
    wait_lean: bool,
    wait: Duration,
    shutdown: &ShutdownWatch,
    lean: impl FnOnce(&[u8]) -> bool,
) -> Option<(Stream, bool)> {
    if !wait_lean || !stream.as_any().is::<L4Stream>() {
        return Some((stream, false));
    }
    let mut l4: Box<L4Stream> = stream.into_any().downcast().ok()?;
    let mut first = [0u8; 1];
    let got = tokio::select! {
        r = tokio::time::timeout(wait, l4.read(&mut first)) => matches!(r, Ok(Ok(1))),
        _ = stopping(shutdown) => false,
    };
    if !got {
        return None;
    }
    // No await from here on: the buffer is not kept in the connection's future.
    let mut head = [0u8; 4096];
    head[0] = first[0];
    let more = match l4.read(&mut head[1..]).now_or_never() {
        Some(Ok(n)) => n,
        _ => 0, // nothing more yet, or an error the session will meet again
    };
    let head = &head[..1 + more];
    let take_lean = lean(head);
    l4.rewind(head);
    Some((l4, take_lean))
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let h2c = self.options().is_some_and(|o| o.h2c || o.force_custom);
        let alpn = stream.selected_alpn_proto();
        if h2c || matches!(alpn, Some(ALPN::H2) | Some(ALPN::Custom(_))) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        // Only these settings are kept: this future lives as long as the connection.
        let (first_wait, idle_wait, lean_keepalive, lean_proxy) = {
            let snap = self.live.snapshot();
            let s = &snap.cfg.server;
            (
                s.client_header_timeout.0.max(Duration::from_secs(1)),
                s.keepalive_timeout.0,
                s.lean_keepalive,
                s.lean_proxy,
            )
        };
        let mut wait = first_wait;
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let accepts = |head: &[u8]| lean_proxy && lean::accepts(head, &self.live.snapshot(), self.index);
            let (s, take_lean) = next_request(stream, lean_keepalive || lean_proxy, wait, shutdown, accepts).await?;
            // Until the first header is complete, Pingora's "keepalive" wait is the one that applies.
            let keepalive = (!*shutdown.borrow()).then_some(first_wait.as_secs());
            let reuses_left = self.options().and_then(|o| o.keepalive_request_limit);
            let (s, next) = if take_lean {
                let (s, st) = self
                    .lean
                    .serve(s, settings.take(), keepalive, reuses_left, shutdown)
                    .await?;
                (s, Some(st))
            } else {
                let mut session = ServerSession::new_http1(s);
                match settings.take() {
                    Some(st) => st.apply_to_session(&mut session),
                    None => {
                        session.set_keepalive(keepalive);
                        session.set_keepalive_reuses_remaining(reuses_left);
                    }
                }
                HttpServerApp::process_new_http(&self.proxy, session, shutdown)
                    .await?
                    .consume()
            };
            stream = s;
            settings = next;
            wait = idle_wait;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}
