//! WebSocket through the gateway: echo servers spawned by the test, a
//! tokio-tungstenite client, and the real portico process in between.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

struct WsServer {
    addr: SocketAddr,
    name: String,
    /// Sockets currently open on this server.
    open: Arc<AtomicUsize>,
    /// Close code the server received from the client, if any.
    got_close: Arc<std::sync::Mutex<Option<u16>>>,
}

/// An echo server; a text message "close-me" makes the server close with 4001,
/// "who" is answered with the server's name.
async fn ws_server(name: &str) -> WsServer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let got_close = Arc::new(std::sync::Mutex::new(None));
    let (o, gc, n) = (open.clone(), got_close.clone(), name.to_string());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (o, gc, n) = (o.clone(), gc.clone(), n.clone());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                o.fetch_add(1, SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t == "who" => ws.send(Message::text(n.clone())).await.unwrap(),
                        Message::Text(t) if t == "close-me" => {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::from(4001),
                                    reason: "bye".into(),
                                }))
                                .await;
                        }
                        Message::Close(c) => {
                            *gc.lock().unwrap() = c.map(|c| u16::from(c.code));
                            break;
                        }
                        Message::Text(_) | Message::Binary(_) => ws.send(m).await.unwrap(),
                        _ => {}
                    }
                }
                o.fetch_sub(1, SeqCst);
            });
        }
    });
    WsServer {
        addr,
        name: name.into(),
        open,
        got_close,
    }
}

/// A gateway with the default loops (WebSocket handshakes take the lean one).
fn gateway(servers: &[&WsServer], pool_extra: &str, loc_extra: &str) -> Gateway {
    start("", servers, pool_extra, loc_extra)
}

/// `lean`: WebSocket handshakes take the lean loop; else Pingora's.
fn gateway_on(lean: bool, servers: &[&WsServer], pool_extra: &str, loc_extra: &str) -> Gateway {
    let server = server_section(&[&format!("lean_proxy: {lean}")]);
    start(&server, servers, pool_extra, loc_extra)
}

fn start(server: &str, servers: &[&WsServer], pool_extra: &str, loc_extra: &str) -> Gateway {
    let list: String = servers
        .iter()
        .map(|s| format!("      - address: {}\n", s.addr))
        .collect();
    Gateway::start(&format!(
        "{server}listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  ws:\n    read_timeout: 1s\n{pool_extra}    servers:\n{list}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: ws\n{loc_extra}"
    ))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn messages_echo_in_order_including_a_large_frame_and_ping() {
    for lean in [true, false] {
        echo_through(lean);
    }
}

fn echo_through(lean: bool) {
    rt().block_on(async {
        let s = ws_server("one").await;
        let g = gateway_on(lean, &[&s], "", "");
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat", g.port))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..50 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        for i in 0..50 {
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("m{i}")));
        }
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert!(b[..] == big[..], "4 MiB frame intact"),
            other => panic!("{other:?}"),
        }
        ws.send(Message::Ping(b"are you there".to_vec())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("{other:?}"),
        }
        ws.close(None).await.unwrap();
        drop(g);
    });
}

#[test]
fn close_codes_travel_both_ways() {
    for lean in [true, false] {
        close_codes_through(lean);
    }
}

fn close_codes_through(lean: bool) {
    rt().block_on(async {
        let s = ws_server("one").await;
        let g = gateway_on(lean, &[&s], "", "");
        let url = format!("ws://127.0.0.1:{}/", g.port);
        // Client closes with 4321: the server sees it.
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "done".into(),
        }))
        .await
        .unwrap();
        while ws.next().await.is_some() {}
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*s.got_close.lock().unwrap(), Some(4321));
        // Server closes with 4001: the client sees it.
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::text("close-me")).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 4001),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn idle_socket_outlives_the_http_read_timeout() {
    rt().block_on(async {
        let s = ws_server("one").await;
        // Upstream read_timeout and the client body timeout are 1s for HTTP; the WebSocket idles 2.5s.
        let g = gateway(
            &[&s],
            "",
            &format!(
                "        websocket_idle_timeout: 10s\n{}",
                server_section(&["client_body_timeout: 1s"])
            ),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", g.port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        ws.send(Message::text("still here")).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::text("still here"));
    });
}

#[test]
fn idle_timeout_closes_a_silent_socket() {
    rt().block_on(async {
        let s = ws_server("one").await;
        let g = gateway(&[&s], "", "        websocket_idle_timeout: 500ms\n");
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", g.port))
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    _ => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "closed after the idle timeout");
    });
}

#[test]
fn five_hundred_concurrent_sockets() {
    rt().block_on(async {
        let (a, b) = (ws_server("a").await, ws_server("b").await);
        let g = gateway(&[&a, &b], "", "");
        let port = g.port;
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                tokio::spawn(async move {
                    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
                        .await
                        .unwrap();
                    for j in 0..3 {
                        let msg = format!("{i}-{j}");
                        ws.send(Message::text(msg.clone())).await.unwrap();
                        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(msg));
                    }
                    ws
                })
            })
            .collect();
        let mut sockets = Vec::new();
        for t in tasks {
            sockets.push(t.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.open.load(SeqCst) + b.open.load(SeqCst), 500);
        assert!(a.open.load(SeqCst) >= 200 && b.open.load(SeqCst) >= 200, "balanced");
        for mut ws in sockets {
            ws.close(None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.open.load(SeqCst) + b.open.load(SeqCst), 0);
    });
}

#[test]
fn handshake_follows_the_sticky_cookie() {
    rt().block_on(async {
        let (a, b) = (ws_server("a").await, ws_server("b").await);
        let g = gateway(
            &[&a, &b],
            "    algorithm: sticky\n    sticky: { secret: 0123456789abcdef-secret, cookie: srv }\n",
            "",
        );
        let url = format!("ws://127.0.0.1:{}/", g.port);
        let (mut ws, resp) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let cookie = resp
            .headers()
            .get("set-cookie")
            .expect("sticky cookie on 101")
            .to_str()
            .unwrap()
            .to_string();
        let pair = cookie.split(';').next().unwrap().to_string();
        ws.send(Message::text("who")).await.unwrap();
        let first = ws.next().await.unwrap().unwrap().into_text().unwrap().to_string();
        for _ in 0..10 {
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut().insert("cookie", pair.parse().unwrap());
            let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "valid cookie is not re-issued"
            );
            ws.send(Message::text("who")).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap().into_text().unwrap().to_string(),
                first
            );
        }
        assert!(first == a.name || first == b.name);
    });
}

#[test]
fn least_conn_counts_sockets_for_their_whole_life() {
    rt().block_on(async {
        let (a, b) = (ws_server("a").await, ws_server("b").await);
        let g = gateway(&[&a, &b], "    algorithm: least_conn\n", "");
        let url = format!("ws://127.0.0.1:{}/", g.port);
        // 10 long-lived sockets spread 5/5 because each one stays in flight.
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((a.open.load(SeqCst), b.open.load(SeqCst)), (5, 5));
        // Close all: the counts return to zero, so new sockets split evenly again.
        for mut ws in held.drain(..) {
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..4 {
            held.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((a.open.load(SeqCst), b.open.load(SeqCst)), (2, 2));
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert!(g.access_log().contains("upgraded rx="), "{}", g.access_log());
    });
}

/// `client_max_body_size` limits request bodies, not the bytes of a
/// WebSocket (nginx's rule), in both loops.
#[test]
fn body_size_limit_does_not_cut_websockets() {
    for lean in [true, false] {
        rt().block_on(async {
            let s = ws_server("one").await;
            let g = gateway_on(lean, &[&s], "", "        client_max_body_size: 1k\n");
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", g.port))
                .await
                .unwrap();
            for i in 0..4 {
                let big = format!("{i}").repeat(4096);
                ws.send(Message::text(big.clone())).await.unwrap();
                let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                assert_eq!(back.unwrap().unwrap().unwrap(), Message::text(big), "lean: {lean}");
            }
        });
    }
}

#[test]
fn upgrades_can_be_refused_per_location() {
    rt().block_on(async {
        let s = ws_server("one").await;
        let g = gateway(&[&s], "", "        upgrade: \"off\"\n");
        let r = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", g.port)).await;
        assert!(r.is_err(), "no 101 when upgrades are off");
    });
}
