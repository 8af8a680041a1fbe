//! Experiment, not a product: the least an HTTP/1 proxy on `pingora-core`
//! can do (read a request, add X-Real-IP/X-Forwarded-For, round robin over
//! pooled upstream connections, relay the response; GET only, no retries,
//! no error pages). Its CPU per request, next to portico's and nginx's,
//! shows what Pingora's proxy loop (`pingora-proxy`) costs on top of
//! `pingora-core`'s sessions, i.e. what a lean HTTP/1 path could save.
//!
//!     CARGO_TARGET_DIR=../../target cargo build --release
//!     ../../target/release/relay-experiment 127.0.0.1:18160 127.0.0.1:18101 127.0.0.1:18102
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession as ClientSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::upstreams::peer::HttpPeer;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Relay {
    conn: Connector,
    peers: Vec<HttpPeer>,
    rr: AtomicUsize,
}

impl Relay {
    async fn one(&self, s: &mut ServerSession) -> Option<()> {
        let mut req = s.req_header().clone();
        let ip = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        req.insert_header("X-Real-IP", &ip).ok()?;
        req.insert_header("X-Forwarded-For", &ip).ok()?;
        let peer = &self.peers[self.rr.fetch_add(1, Relaxed) % self.peers.len()];
        let (up, _reused) = self.conn.get_http_session(peer).await.ok()?;
        let ClientSession::H1(mut up) = up else { return None };
        up.write_request_header(Box::new(req)).await.ok()?;
        up.read_response().await.ok()?;
        let resp = up.resp_header()?.clone();
        s.write_response_header(Box::new(resp)).await.ok()?;
        while let Some(b) = up.read_body_bytes().await.ok()? {
            s.write_response_body(b, false).await.ok()?;
        }
        up.respect_keepalive();
        self.conn.release_http_session(ClientSession::H1(up), peer, None).await;
        Some(())
    }
}

#[async_trait]
impl ServerApp for Relay {
    async fn process_new(self: &Arc<Self>, stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut s = ServerSession::new_http1(stream);
        s.set_keepalive(Some(60));
        loop {
            if !s.read_request().await.ok()? {
                return None;
            }
            self.one(&mut s).await?;
            let reuse = s.finish().await.ok()??;
            let (stream, _prefix) = reuse.into_parts();
            s = ServerSession::new_http1(stream);
            s.set_keepalive(Some(60));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args[1].clone();
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 128,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let relay = Relay {
        conn: Connector::new(None),
        peers: args[2..]
            .iter()
            .map(|a| HttpPeer::new(a.as_str(), false, String::new()))
            .collect(),
        rr: AtomicUsize::new(0),
    };
    let mut svc = pingora_core::services::listening::Service::new("relay".into(), relay);
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
