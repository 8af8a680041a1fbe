//! The listening application: Pingora's `HttpProxy` behind one small layer
//! that sets how long a new HTTP/1 connection may take to send its first
//! request header (`server.client_header_timeout`, nginx's
//! `client_header_timeout`). Pingora fixes that wait at 60 s and offers no
//! setting, so this layer runs the HTTP/1 keep-alive loop itself (the same
//! steps as Pingora's own, through its public session API) and hands
//! HTTP/2, h2c and custom protocols to Pingora untouched.
//!
//! Like Pingora's, the limit applies to each read while the header is
//! awaited; a connection that sends nothing in time is closed. Between
//! requests `server.keepalive_timeout` governs the wait instead.

use crate::live::Live;
use crate::proxy::Gateway;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

pub struct Listener {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub live: Arc<Live>,
}

impl Listener {
    fn options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options.as_ref()
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let h2c = self.options().is_some_and(|o| o.h2c || o.force_custom);
        let alpn = stream.selected_alpn_proto();
        if h2c || matches!(alpn, Some(ALPN::H2) | Some(ALPN::Custom(_))) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let first_wait = self.live.snapshot().cfg.server.client_header_timeout.0.as_secs().max(1);
        let mut session = ServerSession::new_http1(stream);
        // Until the first header arrives, Pingora's "keepalive" wait is the one that applies.
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(first_wait) });
        session.set_keepalive_reuses_remaining(self.options().and_then(|o| o.keepalive_request_limit));
        let mut result = pingora_core::apps::HttpServerApp::process_new_http(&self.proxy, session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = pingora_core::apps::HttpServerApp::process_new_http(&self.proxy, session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}
