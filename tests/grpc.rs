//! gRPC-style traffic through the gateway: HTTP/2 (h2c) on both sides, a
//! request carrying `te: trailers`, and a response whose status travels in
//! trailers (`grpc-status`), as gRPC needs; and an HTTP/2 body that stalls.

mod common;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response};
use std::sync::{Arc, Mutex};

/// An h2c server answering every request like a unary gRPC call: headers,
/// one data frame echoing the request body, then `grpc-status: 0` trailers.
async fn grpc_backend(seen_te: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let seen = seen_te.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(s).await.unwrap();
                // Each stream is served by its own task: the connection must keep being polled.
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if let Some(te) = req.headers().get("te") {
                        seen.lock().unwrap().push(te.to_str().unwrap().to_string());
                    }
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        let resp = Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(resp, false).unwrap();
                        send.send_data(Bytes::from(got), false).unwrap();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "ok".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    });
                }
            });
        }
    });
    addr
}

#[test]
fn grpc_trailers_pass_through_h2c_both_ways() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let seen_te = Arc::new(Mutex::new(Vec::new()));
        let backend = grpc_backend(seen_te.clone()).await;
        let g = Gateway::start(&format!(
            "listeners:\n  - {{ listen: \"127.0.0.1:{{PORT}}\", h2c: true }}\nupstreams:\n  grpc: {{ http2: true, servers: [{{ address: \"{backend}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: grpc }}]\n"
        ));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}/helloworld.Greeter/SayHello", g.port))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let msg = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
        send.send_data(msg.clone(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("content-type").unwrap(), "application/grpc");
        let mut body = resp.into_body();
        let got = h2_body(&mut body).await;
        assert_eq!(got, msg.to_vec(), "message echoed");
        let trailers = body.trailers().await.unwrap().expect("trailers reach the client");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
        assert_eq!(seen_te.lock().unwrap().as_slice(), ["trailers"], "te: trailers reached the server");
    });
}

/// An HTTP/2 request body of a declared length up to 64 KiB that stops
/// coming gets 408 after `client_body_timeout`, and no server is connected
/// to meanwhile (Pingora times no HTTP/2 body read: such a stream held a
/// server connection until the pool's `read_timeout`, one per stream).
#[test]
fn a_stalled_http2_body_gets_408_and_holds_no_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Backend::start("b");
    rt.block_on(async {
        let g = Gateway::start(&format!(
            "{}listeners:\n  - {{ listen: \"127.0.0.1:{{PORT}}\", h2c: true }}\nupstreams:\n  app: {{ read_timeout: 30s, servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
            server_section(&["client_body_timeout: 1s"]),
            b.addr
        ));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut streams = Vec::new();
        for i in 0..5 {
            let mut client = client.clone().ready().await.unwrap();
            let req = Request::builder()
                .method("POST")
                .uri(format!("http://127.0.0.1:{}/stall/{i}", g.port))
                .header("content-length", "1000")
                .body(())
                .unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            send.send_data(Bytes::from_static(b"0123456789"), false).unwrap();
            streams.push((resp, send));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0, "no server connection for a body still coming");
        let start = std::time::Instant::now();
        for (resp, _send) in streams {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(5), resp).await.expect("answered");
            assert_eq!(resp.unwrap().status(), 408);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(b.hits(), 0);
    });
}
