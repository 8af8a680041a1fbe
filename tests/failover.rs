//! Failure handling: nginx `proxy_next_upstream` retries, passive
//! (`max_fails`/`fail_timeout`) and active health checks, through real
//! servers that the test stops, hangs or makes answer errors.

mod common;
use common::*;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

fn gw(backends: &[&Backend], pool_extra: &str, server_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n{pool_extra}    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n",
        servers_yaml(backends, server_extra)
    ))
}

#[test]
fn get_survives_a_stopped_server() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let g = gw(&[&a, &b], "", "");
    a.stop();
    for i in 0..20 {
        let r = g.get("/");
        assert_eq!((r.status, r.backend().as_str()), (200, "b"), "request {i}");
    }
    // The request that met the stopped server logs both attempts, as nginx does.
    std::thread::sleep(Duration::from_millis(200));
    let both = format!("{}, {} ", a.addr, b.addr);
    let line = g.access_log().lines().find(|l| l.contains(&both)).map(str::to_string);
    let line = line.unwrap_or_else(|| panic!("no line with {both:?} in {}", g.access_log()));
    let times = line.rsplit('"').next().unwrap().split_whitespace().nth(2).unwrap_or("");
    assert!(times.ends_with(','), "two upstream times, comma-separated: {line}");
}

#[test]
fn get_survives_a_hanging_server_within_the_timeout() {
    let (a, b) = (Backend::start_with("hang", Behaviour::Hang), Backend::start("b"));
    let g = gw(&[&a, &b], "    read_timeout: 300ms\n", "");
    let t = Instant::now();
    for _ in 0..6 {
        let r = g.get("/");
        assert_eq!((r.status, r.backend().as_str()), (200, "b"));
    }
    // The hanging server costs at most one timeout (then max_fails=1 marks it down).
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(a.hits() >= 1);
}

#[test]
fn header_timeout_bounds_the_whole_response_header() {
    // Every header line arrives well within read_timeout; the whole header takes 2 s.
    let drip = Behaviour::Dribble(Duration::from_millis(100));
    let (a, b) = (Backend::start_with("drip", drip), Backend::start("b"));
    let limits = "    read_timeout: 1s\n    header_timeout: 500ms\n";

    // Without header_timeout the slow header gets through (read_timeout alone cannot stop it).
    let only_a = gw(&[&a], "    read_timeout: 1s\n", "");
    let r = only_a.get("/");
    assert_eq!((r.status, r.backend().as_str()), (200, "drip"));

    // With it, a GET moves on to the other server after 500 ms: no client-visible error.
    let g = gw(&[&a, &b], limits, "        max_fails: 0\n");
    let before = a.hits();
    for _ in 0..4 {
        let t = Instant::now();
        let r = g.get("/");
        assert_eq!((r.status, r.backend().as_str()), (200, "b"));
        assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    }
    // (The retry advances round robin too, so each request may try the dribbler first.)
    assert!(
        a.hits() - before >= 2,
        "the dribbling server was tried: {} -> {}",
        before,
        a.hits()
    );

    // Nowhere else to go: 504 once the 500 ms are up.
    let g = gw(&[&a], limits, "        max_fails: 0\n");
    let t = Instant::now();
    assert_eq!(g.get("/").status, 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[test]
fn post_that_reached_a_502_server_is_not_replayed() {
    let (a, b) = (Backend::start_with("bad", Behaviour::Status(502)), Backend::start("b"));
    let g = gw(
        &[&a, &b],
        "    next_upstream: [error, timeout, http_502]\n",
        "        max_fails: 0\n",
    );
    let statuses: Vec<u16> = (0..4)
        .map(|_| request(g.port, "POST", "/", &[], b"data").status)
        .collect();
    // Round robin sends two of the four POSTs to the 502 server first: those come back as 502.
    assert_eq!(statuses.iter().filter(|&&s| s == 502).count(), 2, "{statuses:?}");
    assert_eq!(a.posts.load(SeqCst), 2, "each POST reached the bad server at most once");
    assert_eq!(b.posts.load(SeqCst), 2, "never replayed to b");
    // GETs, being idempotent, are retried on 502.
    for _ in 0..4 {
        assert_eq!(g.get("/").status, 200);
    }
    // WebDAV's idempotent methods are passed to the next server; LOCK and PATCH are
    // not, nor is a method whose meaning is unknown.
    for (method, replayed) in [
        ("LOCK", false),
        ("PATCH", false),
        ("PROPFIND", true),
        ("MKCOL", true),
        ("PURGE", false),
    ] {
        let statuses: Vec<u16> = (0..4).map(|_| request(g.port, method, "/", &[], b"").status).collect();
        let failed = statuses.iter().filter(|&&s| s == 502).count();
        assert_eq!(failed, if replayed { 0 } else { 2 }, "{method}: {statuses:?}");
    }
}

/// A body that outgrew the retry buffer (64 KiB) cannot be sent again: the
/// server's 503 goes to the client as it came. (It was sent on to the next
/// server without its body, which waited for it until `read_timeout`: a 504,
/// and a failure charged to a healthy server.) A smaller body is retried.
#[test]
fn a_body_over_the_retry_buffer_is_not_sent_again() {
    let (a, b) = (Backend::start_with("bad", Behaviour::Status(503)), Backend::start("b"));
    let g = gw(
        &[&a, &b],
        "    read_timeout: 3s\n    next_upstream: [error, timeout, http_503]\n",
        "        max_fails: 0\n",
    );
    let big = vec![b'x'; 300_000];
    let start = Instant::now();
    // Round robin: one goes to the 503 server first, the other to b.
    let mut answers: Vec<_> = (0..2).map(|_| request(g.port, "PUT", "/big", &[], &big)).collect();
    answers.sort_by_key(|r| r.status);
    assert_eq!((answers[0].status, answers[0].backend().as_str()), (200, "b"));
    assert!(answers[0].body.contains("body-length=300000"), "{}", answers[0].body);
    assert_eq!(
        (answers[1].status, answers[1].backend().as_str()),
        (503, "bad"),
        "not sent again"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "no wait for a body that never came"
    );
    assert_eq!(b.hits(), 1, "the big body went to b once, on its own turn");
    let small = request(g.port, "PUT", "/small", &[], b"hello");
    assert_eq!(
        (small.status, small.backend().as_str()),
        (200, "b"),
        "retried with its body"
    );
    assert!(small.body.contains("body-length=5"), "{}", small.body);
}

#[test]
fn post_is_replayed_with_non_idempotent() {
    let (a, b) = (Backend::start_with("bad", Behaviour::Status(502)), Backend::start("b"));
    let g = gw(
        &[&a, &b],
        "    next_upstream: [error, timeout, http_502, non_idempotent]\n",
        "        max_fails: 0\n",
    );
    for _ in 0..4 {
        let r = request(g.port, "POST", "/", &[], b"data");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("body-length=4"), "body replayed: {}", r.body);
    }
    assert_eq!(b.posts.load(SeqCst), 4);
}

/// A kept-alive upstream connection that breaks once a request went out on
/// it: the server may have acted on the request. A GET goes again on a new
/// connection; a POST is not sent twice (nginx's `non_idempotent` rule), so
/// its client gets the 502.
#[test]
fn post_sent_on_a_kept_connection_that_broke_is_not_replayed() {
    let a = Backend::start_with("a", Behaviour::DropSecond);
    let g = gw(&[&a], "", "        max_fails: 0\n");
    assert_eq!(request(g.port, "POST", "/1", &[], b"data").status, 200);
    assert_eq!(request(g.port, "POST", "/2", &[], b"data").status, 502);
    assert_eq!(a.posts.load(SeqCst), 2, "the second POST reached the server once");
    assert_eq!(a.connections.load(SeqCst), 1);
    for i in 0..2 {
        assert_eq!(g.get(&format!("/get/{i}")).status, 200);
    }
    assert_eq!(
        a.connections.load(SeqCst),
        3,
        "the second GET went again on a new connection"
    );
    assert_eq!(a.requests.load(SeqCst), 5);
}

#[test]
fn post_with_refused_connection_is_retried() {
    let (a, b) = (Backend::start("dead"), Backend::start("b"));
    let g = gw(&[&a, &b], "", "        max_fails: 0\n");
    a.stop();
    for _ in 0..6 {
        let r = request(g.port, "POST", "/", &[], b"payload");
        assert_eq!((r.status, r.backend().as_str()), (200, "b"));
    }
    assert_eq!(b.posts.load(SeqCst), 6);
}

#[test]
fn tries_limit_and_last_real_response() {
    let bs: Vec<Backend> = (0..4)
        .map(|i| Backend::start_with(&format!("s{i}"), Behaviour::Status(503)))
        .collect();
    let refs: Vec<&Backend> = bs.iter().collect();
    let g = gw(
        &refs,
        "    next_upstream: [error, http_503]\n    next_upstream_tries: 2\n",
        "        max_fails: 0\n",
    );
    let r = g.get("/");
    assert_eq!(r.status, 503);
    assert!(
        r.body.ends_with("says 503\n"),
        "the last server's real body: {:?}",
        r.body
    );
    let total: usize = bs.iter().map(|b| b.hits()).sum();
    assert_eq!(total, 2, "exactly next_upstream_tries attempts");
    drop(g);
    // Without a tries limit every server is tried once, then the last real 503 goes out.
    let g = gw(
        &refs,
        "    next_upstream: [error, http_503]\n",
        "        max_fails: 0\n",
    );
    let before: usize = bs.iter().map(|b| b.hits()).sum();
    let r = g.get("/");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("says 503"));
    let after: usize = bs.iter().map(|b| b.hits()).sum();
    assert_eq!(after - before, 4);
}

#[test]
fn time_budget_is_honoured() {
    let bs: Vec<Backend> = (0..5)
        .map(|i| Backend::start_with(&format!("h{i}"), Behaviour::Hang))
        .collect();
    let refs: Vec<&Backend> = bs.iter().collect();
    let g = gw(
        &refs,
        "    read_timeout: 300ms\n    next_upstream_timeout: 500ms\n",
        "        max_fails: 0\n",
    );
    let t = Instant::now();
    let r = g.get("/");
    assert_eq!(r.status, 504);
    let total: usize = bs.iter().map(|b| b.hits()).sum();
    assert_eq!(total, 2, "after 2 x 300ms the 500ms budget is spent");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
}

#[test]
fn passive_marking_skips_then_restores_a_server() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let addr = a.addr;
    let g = gw(&[&a, &b], "", "        max_fails: 1\n        fail_timeout: 1s\n");
    a.stop();
    drop(a);
    for _ in 0..4 {
        assert_eq!(g.get("/").backend(), "b");
    }
    let a = Backend::start_on("a", addr, Behaviour::Echo);
    // Still marked down within fail_timeout: nothing goes to a.
    for _ in 0..4 {
        assert_eq!(g.get("/").backend(), "b");
    }
    assert_eq!(a.hits(), 0);
    std::thread::sleep(Duration::from_millis(1100));
    let m = spread(&g, "/", 10);
    assert_eq!(m.get("a"), Some(&5), "a back in rotation after fail_timeout: {m:?}");
}

#[test]
fn the_only_server_of_a_pool_is_never_marked_down() {
    // nginx ignores max_fails/fail_timeout for a group's only server: one
    // failure must not turn the next 30 s into 503s.
    let a = Backend::start("a");
    let addr = a.addr;
    a.stop();
    drop(a);
    let g = gw_one(addr, "        max_fails: 1\n        fail_timeout: 30s\n");
    assert_eq!(g.get("/").status, 502);
    assert_eq!(g.get("/").status, 502, "tried again, not skipped");
    let a = Backend::start_on("a", addr, Behaviour::Echo);
    assert_eq!(g.get("/").backend(), "a", "served as soon as it is back");

    // A server marked down while it had a sibling is usable at once when a
    // reload leaves it alone.
    let b = Backend::start("b");
    let yaml = std::fs::read_to_string(&g.conf).unwrap();
    let two = yaml.replace(
        "  app:\n    servers:\n",
        &format!(
            "  app:\n    next_upstream: [error, timeout, http_502]\n    servers:\n      - address: {}\n        max_fails: 1\n        fail_timeout: 30s\n",
            b.addr
        ),
    );
    assert_ne!(two, yaml);
    a.set(Behaviour::Status(502));
    std::fs::write(&g.conf, &two).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while spread(&g, "/", 4).get("b") != Some(&4) {
        assert!(Instant::now() < deadline, "a not marked down:\n{}", g.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let hits = a.hits();
    assert_eq!(spread(&g, "/", 4).get("b"), Some(&4));
    assert_eq!(a.hits(), hits, "a marked down: skipped");
    a.set(Behaviour::Echo);
    std::fs::write(&g.conf, &yaml).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = g.get("/");
        if r.status == 200 && r.backend() == "a" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload to one server: {}\n{}",
            r.status,
            g.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gw_one(addr: std::net::SocketAddr, server_extra: &str) -> Gateway {
    Gateway::start(&one_server(addr, server_extra))
}

/// One pool `app` of the one server `addr` behind `/`.
fn one_server(addr: std::net::SocketAddr, server_extra: &str) -> String {
    format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    servers:\n      - address: {addr}\n{server_extra}virtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n"
    )
}

#[test]
fn active_check_takes_a_server_out_and_brings_it_back() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let g = gw(
        &[&a, &b],
        "    health_check: { path: /health, interval: 100ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n",
        "",
    );
    assert_eq!(spread(&g, "/", 10).get("a"), Some(&5));
    // Only the health path fails: the server still answers traffic, but must leave rotation.
    a.fail_paths.lock().unwrap().push("/health".into());
    std::thread::sleep(Duration::from_millis(500)); // interval x threshold + slack
    let hits = a.hits();
    let m = spread(&g, "/", 10);
    assert_eq!(m.get("b"), Some(&10), "{m:?}");
    let health_hits = a.hits() - hits;
    assert!(health_hits <= 6, "only health probes reach a ({health_hits})");
    a.fail_paths.lock().unwrap().clear();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spread(&g, "/", 10).get("a"), Some(&5));
    assert!(
        g.stderr().contains("unhealthy: status 500"),
        "transition logged with reason:\n{}",
        g.stderr()
    );
}

#[test]
fn health_check_added_by_a_reload_starts_checking() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.fail_paths.lock().unwrap().push("/health".into());
    let g = gw(&[&a, &b], "", "");
    // No pool is checked: the checker has nothing to wake up for.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spread(&g, "/", 10).get("a"), Some(&5), "no check yet, a serves");
    let yaml = std::fs::read_to_string(&g.conf).unwrap();
    let checked = yaml.replace(
        "  app:\n",
        "  app:\n    health_check: { path: /health, interval: 100ms, unhealthy_threshold: 2 }\n",
    );
    assert_ne!(checked, yaml);
    std::fs::write(&g.conf, checked).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while spread(&g, "/", 4).get("b") != Some(&4) {
        assert!(Instant::now() < deadline, "a still in rotation:\n{}", g.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(g.stderr().contains("unhealthy: status 500"), "{}", g.stderr());
}

#[test]
fn wait_for_first_pass_routes_only_after_checks_pass() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    b.fail_paths.lock().unwrap().push("/health".into());
    let g = gw(
        &[&a, &b],
        "    health_check: { path: /health, interval: 100ms, healthy_threshold: 1, wait_for_first_pass: true }\n",
        "",
    );
    std::thread::sleep(Duration::from_millis(300));
    let m = spread(&g, "/", 10);
    assert_eq!(m.get("a"), Some(&10), "b never passed a check: {m:?}");
}

/// A request body of a declared length up to 64 KiB is read whole before a
/// server is chosen, as nginx's `proxy_request_buffering` reads it: a client
/// pausing in it for longer than the pool's `read_timeout` is still served
/// (nginx lets it pause up to `client_body_timeout`), and one pausing longer
/// than `client_body_timeout` gets 408 with no server having seen the
/// request, so none is marked down or tried.
#[test]
fn a_client_stalling_its_body_is_not_held_against_the_servers() {
    use std::io::Write;
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let g = Gateway::start(&format!(
        "{}listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    read_timeout: 500ms\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n",
        server_section(&["client_body_timeout: 1s"]),
        servers_yaml(&[&a, &b], "        max_fails: 1\n        fail_timeout: 30s\n")
    ));
    let connections = || a.connections.load(SeqCst) + b.connections.load(SeqCst);
    let stalled = |pause: Duration| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789")
            .unwrap();
        std::thread::sleep(pause);
        let _ = c.write_all(b"0123456789");
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut out);
        out
    };
    let before = connections();
    let out = stalled(Duration::from_millis(800));
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("body-length=20"),
        "{out}"
    );
    assert_eq!(a.posts.load(SeqCst) + b.posts.load(SeqCst), 1);
    for _ in 0..2 {
        let opened = connections();
        let out = stalled(Duration::from_millis(1500));
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert_eq!(connections(), opened, "no server was connected to while the body came");
    }
    assert_eq!(
        a.posts.load(SeqCst) + b.posts.load(SeqCst),
        1,
        "no stalled body went upstream"
    );
    assert!(connections() - before <= 1);
    let seen: std::collections::HashSet<String> = (0..6).map(|_| g.get("/").backend()).collect();
    assert_eq!(seen.len(), 2, "both servers still take requests: {seen:?}");
}

#[test]
fn client_abort_is_neither_retried_nor_held_against_the_server() {
    use std::io::Write;
    let slow = Behaviour::Slow(Duration::from_millis(400));
    let (a, b) = (Backend::start_with("a", slow.clone()), Backend::start_with("b", slow));
    let g = gw(&[&a, &b], "", "        max_fails: 1\n        fail_timeout: 30s\n");
    // The client gives up before the server answers.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.write_all(b"GET /abort HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "the aborted request was not sent again: {}",
        g.stderr()
    );
    a.set(Behaviour::Echo);
    b.set(Behaviour::Echo);
    let m = spread(&g, "/", 10);
    assert_eq!(m.get("a"), Some(&5), "no server was marked down: {m:?}");
}

#[test]
fn location_header_timeout_overrides_the_pool() {
    // The pool sets no header_timeout; only the /strict location does.
    let drip = Backend::start_with("drip", Behaviour::Dribble(Duration::from_millis(100)));
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    read_timeout: 1s\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n      - path: /strict\n        proxy_pass: app\n        header_timeout: 500ms\n",
        servers_yaml(&[&drip], "        max_fails: 0\n")
    ));
    let t = Instant::now();
    assert_eq!(g.get("/strict").status, 504);
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    let r = g.get("/relaxed");
    assert_eq!(
        (r.status, r.backend().as_str()),
        (200, "drip"),
        "the pool itself has no header limit"
    );
}

/// An error page for the servers' failure (502, 503, 504) leaves the
/// client's connection open, as nginx leaves it: in an outage, clients do
/// not reconnect (and shake hands again) for every request. Only the lean
/// loop can (Pingora's closes the connection after any proxying error):
/// there the page says `Connection: close`, and the connection closes.
#[test]
fn error_pages_for_server_failures_keep_the_client_connection() {
    let a = Backend::start("a");
    let addr = a.addr;
    a.stop();
    drop(a);
    for lean in [true, false] {
        let g = Gateway::start(&format!(
            "{}{}",
            server_section(&[&format!("lean_proxy: {lean}")]),
            one_server(addr, "")
        ));
        let mut c = Client::connect(g.port).unwrap();
        let kept = if lean { &["GET", "HEAD", "GET"][..] } else { &[] };
        for method in kept {
            let r = c
                .send(method, "/", &[], b"")
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(r.status, 502, "{method}: {r:?}");
            assert_ne!(r.header("connection"), Some("close"), "{method}");
        }
        // Pingora's loop (any method there, DELETE in the lean one): closed, and said so.
        let method = if lean { "DELETE" } else { "GET" };
        let r = c.send(method, "/", &[], b"").unwrap();
        assert_eq!(
            (r.status, r.header("connection")),
            (502, Some("close")),
            "lean_proxy {lean}"
        );
        assert!(c.closed_within(Duration::from_secs(2)), "lean_proxy {lean}");
        // A client that asked to close gets its close.
        let mut c = Client::connect(g.port).unwrap();
        let r = c.send("GET", "/", &[("Connection", "close")], b"").unwrap();
        assert_eq!(r.status, 502);
        assert!(c.closed_within(Duration::from_secs(2)), "lean_proxy {lean}");
    }
}
