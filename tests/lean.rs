//! The lean HTTP/1 loop (`server.lean_proxy`): plain GET/HEAD requests take
//! Portico's own proxy loop, everything else Pingora's. Both must send the
//! backend the same request and the client the same response; requests the
//! lean loop declines must still be served; its framing must hold for
//! close-delimited backends. `portico_lean_path_requests_total` shows which
//! loop served what.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "lean-token";

/// `/` has a header rule (the lean loop keeps the edits and applies them as
/// it writes the request; Pingora's loop edits a copy of the header);
/// `/plain/` has none (the lean loop writes the request from the client's
/// lines plus the forwarding fields).
fn conf(admin_port: u16, backends: &[&Backend], lean: bool) -> String {
    format!(
        "{}admin: {{ listen: \"127.0.0.1:{admin_port}\", token: {TOKEN} }}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n        proxy_set_header: {{ X-Route: \"$host$request_uri\" }}\n      - path: /plain/\n        proxy_pass: app\n",
        server_section(&[&format!("lean_proxy: {lean}")]),
        servers_yaml(backends, "")
    )
}

fn lean_count(admin_port: u16) -> u64 {
    let auth = format!("Bearer {TOKEN}");
    let m = request(admin_port, "GET", "/metrics", &[("Authorization", auth.as_str())], b"").body;
    m.lines()
        .find_map(|l| l.strip_prefix("portico_lean_path_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("lean counter in /metrics")
}

/// Everything about a response except what changes from one second to the next.
fn comparable(r: &Response) -> (u16, Vec<(String, String)>, String) {
    let headers = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    (r.status, headers, r.body.clone())
}

#[test]
fn both_loops_send_and_return_the_same_bytes() {
    let b = Backend::start("b");
    let (ap_lean, ap_pingora) = (free_port(), free_port());
    let lean = Gateway::start(&conf(ap_lean, &[&b], true));
    let pingora = Gateway::start(&conf(ap_pingora, &[&b], false));
    let before = (lean_count(ap_lean), lean_count(ap_pingora));
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let spoof: &[(&str, &str)] = &[
        ("X-Forwarded-For", "10.9.9.9"),
        ("Accept", "*/*"),
        ("X-Real-IP", "10.9.9.9"),
        ("X-Forwarded-Host", "spoofed"),
    ];
    let cases: [Case; 9] = [
        ("GET", "/a/b?x=1&y=2", &[("X-Custom", "one"), ("Cookie", "k=v")]),
        ("GET", "/keep", &[("Connection", "keep-alive"), ("Accept", "*/*")]),
        ("HEAD", "/head", &[("Host", "example.com:8080")]),
        ("GET", "/close", &[("Connection", "close")]),
        ("GET", "/plain/a?x=1", &[("X-Custom", "one"), ("Cookie", "k=v")]),
        ("GET", "/plain/keep", &[("Connection", "keep-alive"), ("Accept", "*/*")]),
        ("HEAD", "/plain/head", &[("Host", "example.com:8080")]),
        ("GET", "/plain/close", &[("Connection", "close")]),
        ("GET", "/plain/spoof", spoof),
    ];
    for (method, path, headers) in cases {
        let a = request(lean.port, method, path, headers, b"");
        let p = request(pingora.port, method, path, headers, b"");
        assert_eq!(a.status, 200, "{method} {path}");
        assert_eq!(comparable(&a), comparable(&p), "{method} {path}: lean vs Pingora loop");
        if path == "/close" {
            assert_eq!(a.header("connection"), Some("close"), "the client's close is kept");
        }
        if method == "GET" {
            // What the backend saw: forwarding headers, the header rule, no hop-by-hop field.
            assert_eq!(a.echoed("x-forwarded-for").as_deref(), Some("127.0.0.1"));
            let route = (!path.starts_with("/plain/")).then(|| format!("localhost{path}"));
            assert_eq!(a.echoed("x-route"), route);
            if let Some(route) = route {
                // The rule's name goes upstream as the config writes it, in both loops (compared above).
                assert!(a.body.contains(&format!("header=X-Route: {route}\n")), "{}", a.body);
            }
            assert_eq!(a.echoed("x-real-ip").as_deref(), Some("127.0.0.1"), "{path}");
            assert_eq!(a.echoed("x-forwarded-proto").as_deref(), Some("http"), "{path}");
            assert_eq!(a.echoed("x-forwarded-host").as_deref(), Some("localhost"), "{path}");
            assert_eq!(a.echoed("connection"), None, "{path}");
        }
    }
    assert_eq!(lean_count(ap_lean) - before.0, 9, "all took the lean loop");
    assert_eq!(
        lean_count(ap_pingora) - before.1,
        0,
        "lean_proxy: false keeps Pingora's loop"
    );
}

#[test]
fn requests_the_lean_loop_declines_are_served_by_pingora() {
    let b = Backend::start("b");
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&b], true));
    let before = lean_count(ap);

    let r = request(g.port, "POST", "/form", &[], b"hello=world");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("body-length=11\n"), "{}", r.body);
    let r = request(
        g.port,
        "GET",
        "/with-te",
        &[("Transfer-Encoding", "chunked")],
        b"5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("body-length=5\n"), "{}", r.body);
    let r = request(
        g.port,
        "GET",
        "/nominated",
        &[("Connection", "X-Secret"), ("X-Secret", "s")],
        b"",
    );
    assert_eq!(
        (r.status, r.echoed("x-secret")),
        (200, None),
        "Pingora strips nominated headers"
    );

    // A header that arrives in two pieces: the first read is incomplete.
    let parts: [&[u8]; 2] = [
        b"GET /split HTTP/1.1\r\nHo",
        b"st: localhost\r\nConnection: close\r\n\r\n",
    ];
    let out = raw_exchange(g.port, &parts, Duration::from_millis(100));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("request=GET /split HTTP/1.1"), "{out}");

    // HTTP/1.0 goes to Pingora too.
    let out = raw_exchange(
        g.port,
        &[b"GET /old HTTP/1.0\r\nHost: localhost\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.") && out.contains(" 200 "), "{out}");

    assert_eq!(lean_count(ap) - before, 0, "none of these took the lean loop");
    let r = g.get("/plain");
    assert_eq!(r.status, 200);
    assert_eq!(lean_count(ap) - before, 1);
}

#[test]
fn close_delimited_backend_is_relayed_chunked_on_a_kept_connection() {
    let b = Backend::start_with("old", Behaviour::CloseDelimited);
    for lean in [true, false] {
        let ap = free_port();
        let g = Gateway::start(&conf(ap, &[&b], lean));
        let before = lean_count(ap);
        let mut c = Client::connect(g.port).unwrap();
        for i in 0..3 {
            let path = format!("/old/{i}");
            let r = c.send("GET", &path, &[], b"").unwrap();
            assert_eq!(r.status, 200, "lean={lean}");
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "lean={lean}");
            assert!(r.body.contains(&format!("request=GET {path} HTTP/1.1")), "{}", r.body);
            assert!(
                r.body.ends_with("body-length=0\n"),
                "whole body, lean={lean}: {}",
                r.body
            );
        }
        assert_eq!(lean_count(ap) - before, if lean { 3 } else { 0 });
    }
}

/// A client that leaves before its answer abandons the request. The lean
/// loop puts a new connection's socket on the reactor to watch it only once
/// the answer has taken 100 ms (`WATCH_AFTER`): a client gone before then
/// is noticed at that point, one gone later at once.
#[test]
fn a_client_that_leaves_abandons_its_request_in_both_loops() {
    let b = Backend::start_with("slow", Behaviour::Slow(Duration::from_millis(1500)));
    for (lean, leave_ms) in [(true, 200), (true, 10), (false, 200)] {
        let g = Gateway::start(&conf(free_port(), &[&b], lean));
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.write_all(b"GET /gone HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(leave_ms));
        drop(s);
        // Logged once the gateway gives up on the request: long before the backend would answer.
        std::thread::sleep(Duration::from_millis(600));
        let line = g
            .access_log_line("GET /gone")
            .unwrap_or_else(|| panic!("lean={lean}, left after {leave_ms} ms: request still running"));
        assert!(line.contains("\"GET /gone HTTP/1.1\" 0 "), "lean={lean}: {line}");
    }
}

#[test]
fn pooled_connections_the_server_closed_are_not_used() {
    let b = Backend::start_with("closer", Behaviour::EchoThenClose);
    let g = Gateway::start(&conf(free_port(), &[&b], true));
    let mut c = Client::connect(g.port).unwrap();
    for i in 0..10 {
        assert_eq!(c.send("GET", &format!("/c/{i}"), &[], b"").unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(60)); // the server has closed its side by now
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 10);
    std::thread::sleep(Duration::from_millis(300));
    // One attempt each: a dead pooled connection is noticed before the request goes out on it.
    for i in 0..10 {
        let line = g.access_log_line(&format!("GET /c/{i} ")).expect("logged");
        assert_eq!(line.matches(&b.addr.to_string()).count(), 1, "{line}");
    }
}

#[test]
fn chunked_and_long_bodies_arrive_whole_on_a_kept_upstream_connection() {
    for behaviour in [Behaviour::Chunked, Behaviour::Big(300_000)] {
        let (bl, bp) = (
            Backend::start_with("b", behaviour.clone()),
            Backend::start_with("b", behaviour.clone()),
        );
        let (ap_lean, ap_pingora) = (free_port(), free_port());
        let lean = Gateway::start(&conf(ap_lean, &[&bl], true));
        let pingora = Gateway::start(&conf(ap_pingora, &[&bp], false));
        let before = lean_count(ap_lean);
        for path in ["/plain/x", "/x", "/plain/y"] {
            let a = request(lean.port, "GET", path, &[], b"");
            let p = request(pingora.port, "GET", path, &[], b"");
            assert_eq!(a.status, 200, "{behaviour:?} {path}");
            assert!(a.body.starts_with("name=b\n"), "{behaviour:?} {path}");
            assert_eq!(
                comparable(&a),
                comparable(&p),
                "{behaviour:?} {path}: lean vs Pingora loop"
            );
        }
        assert_eq!(
            lean_count(ap_lean) - before,
            3,
            "{behaviour:?}: the lean loop served them"
        );
        assert_eq!(
            bl.connections.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{behaviour:?}: one upstream connection, reused"
        );
    }
}

/// Requests sent before the answers to earlier ones (pipelining, RFC 9112
/// §9.3.2) are answered in order on the same connection, in both loops:
/// several in one write, a POST with its body among them; one sent while
/// the answer to the one before is on its way (Pingora's loop took it for
/// an error and answered the request in flight with a 400). A `Connection:
/// close` among them ends the connection after its answer.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start("b");
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    let answers = |c: &mut Client, requests: &[&str]| {
        for line in requests {
            let r = c.read_response(false).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.status, 200, "{line}: {}", r.body);
            assert!(
                r.body.contains(&format!("request={line} HTTP/1.1\n")),
                "{line}: {}",
                r.body
            );
        }
    };
    for lean in [true, false] {
        let ap = free_port();
        let g = Gateway::start(&conf(ap, &[&b], lean));
        let before = lean_count(ap);
        let mut c = Client::connect(g.port).unwrap();
        let post = "POST /plain/2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello";
        c.write_raw((get("/plain/1", "") + post + &get("/plain/3", "")).as_bytes());
        answers(&mut c, &["GET /plain/1", "POST /plain/2", "GET /plain/3"]);
        // The next one while the answer is on its way.
        b.set(Behaviour::Slow(Duration::from_millis(300)));
        c.write_raw(get("/plain/4", "").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
        c.write_raw(get("/plain/5", "").as_bytes());
        answers(&mut c, &["GET /plain/4", "GET /plain/5"]);
        // The same through Pingora's loop (a request the lean loop declines).
        c.write_raw(get("/plain/6", "TE: trailers\r\n").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
        c.write_raw(get("/plain/7", "").as_bytes());
        answers(&mut c, &["GET /plain/6", "GET /plain/7"]);
        b.set(Behaviour::Echo);
        // The connection ends after the one that asks for it.
        c.write_raw(
            (get("/plain/8", "") + &get("/plain/9", "Connection: close\r\n") + &get("/plain/10", "")).as_bytes(),
        );
        answers(&mut c, &["GET /plain/8", "GET /plain/9"]);
        assert!(
            c.closed_within(Duration::from_secs(3)),
            "closed after the request that asked"
        );
        let served_lean = lean_count(ap) - before;
        assert_eq!(
            served_lean,
            if lean { 7 } else { 0 },
            "lean_proxy: {lean}: the GETs without TE"
        );
    }
}

/// A backend that answers a WebSocket handshake with a 101 and, in the same
/// write, its first bytes of the new protocol ("hello"); then it echoes
/// what it reads upper-cased, until "quit": it answers "bye" and closes.
/// It keeps each handshake it read, byte for byte.
fn switching_backend() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello");
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if &buf[..n] == b"quit" => break,
                        Ok(n) => {
                            let _ = s.write_all(&buf[..n].to_ascii_uppercase());
                        }
                    }
                }
                let _ = s.write_all(b"bye");
            });
        }
    });
    (port, heads)
}

/// Read from `s` until what was read ends with `end`.
fn read_until(s: &mut TcpStream, end: &[u8]) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(end) {
        let n = s.read(&mut buf).expect("read before the timeout");
        assert!(n > 0, "closed early, after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A WebSocket handshake takes the lean loop, which then passes the
/// connection's bytes both ways (the server's first ones arriving with its
/// 101); the server's last bytes reach the client before its close does.
/// Both loops send the server the same handshake and the client the same
/// 101, with and without a header rule.
#[test]
fn websocket_handshakes_take_the_lean_loop_and_tunnel_both_ways() {
    let (port, heads) = switching_backend();
    let conf = |admin: u16, lean: bool| {
        format!(
            "{}admin: {{ listen: \"127.0.0.1:{admin}\", token: {TOKEN} }}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  ws:\n    servers:\n      - address: 127.0.0.1:{port}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: ws\n        proxy_set_header: {{ X-Route: \"$host$request_uri\" }}\n      - path: /plain/\n        proxy_pass: ws\n",
            server_section(&[&format!("lean_proxy: {lean}")]),
        )
    };
    let (ap_lean, ap_pingora) = (free_port(), free_port());
    let lean = Gateway::start(&conf(ap_lean, true));
    let pingora = Gateway::start(&conf(ap_pingora, false));
    let before = (lean_count(ap_lean), lean_count(ap_pingora));
    for path in ["/ws", "/plain/ws"] {
        let mut seen = Vec::new();
        for g in [&lean, &pingora] {
            let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let handshake = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n");
            s.write_all(handshake.as_bytes()).unwrap();
            let switched = read_until(&mut s, b"\r\n\r\nhello");
            assert!(switched.starts_with("HTTP/1.1 101 "), "{switched}");
            for word in ["abc", "defg"] {
                s.write_all(word.as_bytes()).unwrap();
                assert_eq!(read_until(&mut s, word.to_uppercase().as_bytes()), word.to_uppercase());
            }
            s.write_all(b"quit").unwrap();
            let mut rest = String::new();
            use std::io::Read;
            s.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "bye", "{path}: the server's last bytes, then its close");
            let handshake_seen = heads.lock().unwrap().pop().expect("the server got the handshake");
            seen.push((switched, handshake_seen));
        }
        let (lean_side, pingora_side) = (&seen[0], &seen[1]);
        assert_eq!(lean_side.0, pingora_side.0, "{path}: the same 101 to the client");
        // Field order may differ (see "field order" in docs/operations.md): compare the fields as a set.
        let fields = |head: &str| {
            let mut lines: Vec<String> = head
                .lines()
                .skip(1)
                .map(|l| {
                    let (name, value) = l.split_once(':').unwrap_or((l, ""));
                    format!("{}:{value}", name.to_ascii_lowercase())
                })
                .collect();
            lines.sort();
            (head.lines().next().map(str::to_string), lines)
        };
        assert_eq!(
            fields(&lean_side.1),
            fields(&pingora_side.1),
            "{path}: the same handshake to the server"
        );
        assert!(
            lean_side
                .1
                .contains("\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{}",
            lean_side.1
        );
        assert!(
            lean_side
                .1
                .to_ascii_lowercase()
                .contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{}",
            lean_side.1
        );
    }
    assert_eq!(lean_count(ap_lean) - before.0, 2, "both handshakes took the lean loop");
    assert_eq!(lean_count(ap_pingora) - before.1, 0);
}

/// A sticky pool's first answer carries the cookie: the lean loop adds it
/// to the fields as they came, Pingora's loop to a rebuilt header; the
/// client gets the same response from both, with and without `max_age`
/// (a fixed cookie made once, or one with an expiry made per request), and
/// a request with the cookie is pinned and gets none.
#[test]
fn sticky_cookies_are_set_alike_in_both_loops() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    for max_age in ["", ", max_age: 1h"] {
        let conf = |lean: bool| {
            format!(
                "{}listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    algorithm: sticky\n    sticky: {{ secret: \"0123456789abcdef-test-secret\", cookie: srv{max_age} }}\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n",
                server_section(&[&format!("lean_proxy: {lean}")]),
                servers_yaml(&[&b1, &b2], "")
            )
        };
        let lean = Gateway::start(&conf(true));
        let pingora = Gateway::start(&conf(false));
        // Both gateways start their round robin at the same server.
        let a = request(lean.port, "GET", "/plain", &[], b"");
        let p = request(pingora.port, "GET", "/plain", &[], b"");
        let cookie = a
            .header("set-cookie")
            .expect("a first answer sets the cookie")
            .to_string();
        assert!(cookie.starts_with("srv=") && cookie.contains("; Path=/"), "{cookie}");
        if max_age.is_empty() {
            assert_eq!(comparable(&a), comparable(&p), "lean vs Pingora loop");
        } else {
            // The expiry in the value may tick between the two requests: compare the rest.
            let no_cookie = |r: &Response| {
                let (status, headers, body) = comparable(r);
                let headers: Vec<_> = headers.into_iter().filter(|(k, _)| k != "set-cookie").collect();
                (status, headers, body)
            };
            assert_eq!(no_cookie(&a), no_cookie(&p), "lean vs Pingora loop");
            assert!(cookie.contains("; Max-Age=3600"), "{cookie}");
        }
        let pair = cookie.split(';').next().unwrap().to_string();
        let name = a.body.lines().next().unwrap().to_string();
        for _ in 0..4 {
            let r = request(lean.port, "GET", "/plain", &[("Cookie", pair.as_str())], b"");
            assert_eq!(r.body.lines().next(), Some(name.as_str()), "pinned by the cookie");
            assert_eq!(r.header("set-cookie"), None, "no new cookie for a pinned client");
        }
    }
}

/// Plugins edit a response's fields in both loops alike: Pingora's loop on
/// the header it builds, the lean loop on the fields as they came (a field
/// set in place of the server's, one removed, ones added, the request id).
#[test]
fn plugins_edit_responses_alike_in_both_loops() {
    let b = Backend::start("b");
    let conf = |admin: u16, lean: bool| {
        format!(
            "{}admin: {{ listen: \"127.0.0.1:{admin}\", token: {TOKEN} }}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n        plugins:\n          - request_id: {{}}\n          - headers: {{ response_set: {{ Content-Type: text/html, X-New: \"n $host\" }}, response_add: {{ Cache-Control: no-store }}, response_remove: [X-Backend] }}\n",
            server_section(&[&format!("lean_proxy: {lean}")]),
            servers_yaml(&[&b], "")
        )
    };
    let (ap_lean, ap_pingora) = (free_port(), free_port());
    let lean = Gateway::start(&conf(ap_lean, true));
    let pingora = Gateway::start(&conf(ap_pingora, false));
    let before = lean_count(ap_lean);
    let without_id = |r: &Response| {
        let (status, headers, body) = comparable(r);
        let id = headers
            .iter()
            .find(|(k, _)| k == "x-request-id")
            .map(|(_, v)| v.clone());
        let headers: Vec<_> = headers.into_iter().filter(|(k, _)| k != "x-request-id").collect();
        // The backend echoes the (random) id it got: it is the one the client gets.
        let body = body.replace(id.as_deref().unwrap_or("no id"), "ID");
        (status, headers, body, id)
    };
    for path in ["/a", "/b?x=1"] {
        let (a, p) = (
            without_id(&request(lean.port, "GET", path, &[], b"")),
            without_id(&request(pingora.port, "GET", path, &[], b"")),
        );
        assert_eq!((&a.0, &a.1, &a.2), (&p.0, &p.1, &p.2), "{path}: lean vs Pingora loop");
        assert!(a.3.is_some_and(|id| id.len() == 32), "a request id");
        let h = &a.1;
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("content-type"), Some("text/html"), "{h:?}");
        assert_eq!(get("x-new"), Some("n localhost"));
        assert_eq!(get("cache-control"), Some("no-store"));
        assert_eq!(get("x-backend"), None);
        assert!(get("content-length").is_some(), "the server's framing kept");
    }
    // An id the client sent is kept (and its form checked).
    let r = request(lean.port, "GET", "/c", &[("X-Request-Id", "abc-123")], b"");
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(lean_count(ap_lean) - before, 3, "the lean loop served them");
}

/// Empty lines before a request line (RFC 9112 §2.2, which has servers
/// skip them) do not go upstream: a server that reads one as a request
/// would answer it (the lean loop passed them on).
#[test]
fn empty_lines_before_the_request_line_stay_behind() {
    let b = Backend::start("b");
    let g = Gateway::start(&conf(free_port(), &[&b], true));
    let out = raw_exchange(
        g.port,
        &[b"\r\n\r\nGET /plain/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("request=GET /plain/x HTTP/1.1\n"), "{out}");
}
