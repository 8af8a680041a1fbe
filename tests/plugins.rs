//! Filter plugins end to end through the gateway: each bundled plugin, their
//! order, per-location scoping, and bad settings caught by `portico -t`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

fn gw(b: &Backend, global: &str, locations: &str) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\n{global}\nvirtual_hosts:\n  - default: true\n    locations:\n{locations}",
        b.addr
    ))
}

const ROOT: &str = "      - { path: /, proxy_pass: app }\n";

/// Requests in flight per key: the one over the limit is answered at once
/// and reaches no server; a slot comes back when its request ends, also
/// when its client leaves before the answer.
#[test]
fn limit_conn_bounds_requests_in_flight_per_key() {
    let b = Backend::start_with("slow", Behaviour::Slow(Duration::from_millis(800)));
    let g = gw(
        &b,
        "",
        "      - { path: /, proxy_pass: app, plugins: [ { limit_conn: { max: 2 } } ] }\n\
         \x20     - { path: /key, proxy_pass: app, plugins: [ { limit_conn: { max: 1, key: $http_x_key, status: 429 } } ] }\n",
    );
    let port = g.port;
    let slow = |path: &'static str, key: &'static str| {
        std::thread::spawn(move || request(port, "GET", path, &[("X-Key", key)], b"").status)
    };
    // Two in flight (the server counts them as they arrive), then a third.
    let (one, two) = (slow("/", ""), slow("/", ""));
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.inflight_now.load(SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the two requests never reached the server");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let r = g.get("/");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(t.elapsed() < Duration::from_millis(500), "answered at once");
    assert_eq!((one.join().unwrap(), two.join().unwrap()), (200, 200));
    assert_eq!(b.hits(), 2, "the third reached no server");
    assert_eq!(g.get("/").status, 200, "their slots came back");

    // Keyed by a header: another key is not held back; the limit's own status.
    let a = slow("/key", "a");
    while b.inflight_now.load(SeqCst) < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let get = |k: &str| request(g.port, "GET", "/key", &[("X-Key", k)], b"").status;
    assert_eq!(get("a"), 429);
    assert_eq!(get("b"), 200);
    assert_eq!(a.join().unwrap(), 200);

    // A client that leaves before its answer gives its slot back, though the
    // server never answers.
    b.set(Behaviour::Hang);
    let hits = b.hits();
    for _ in 0..2 {
        let mut c = Client::connect(g.port).unwrap();
        c.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let deadline = Instant::now() + Duration::from_secs(3);
        while b.hits() == hits {
            assert!(Instant::now() < deadline, "the request never reached the server");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(c);
    }
    // Let in (it waits for the hanging server: no answer within 300 ms), not refused.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 12];
        match c.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            r => assert!(
                r.is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 503")),
                "{:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the slots of the clients that left never came back"
        );
    }
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let b = Backend::start("b");
    let g = gw(&b, "plugins:\n  - rate_limit: { rate: 1, burst: 3 }", ROOT);
    let statuses: Vec<u16> = (0..5).map(|_| g.get("/").status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let r = g.get("/");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(b.hits(), 3);
    // Keyed by header: another key has its own bucket.
    drop(g);
    let g = gw(
        &b,
        "plugins:\n  - rate_limit: { rate: 1, burst: 1, key: $http_x_api_key }",
        ROOT,
    );
    let get = |k: &str| request(g.port, "GET", "/", &[("X-Api-Key", k)], b"").status;
    assert_eq!((get("a"), get("a"), get("b")), (200, 429, 200));
}

/// `delay: 0` (nginx's `limit_req` without `nodelay`): requests over the
/// rate are held back and spaced by it; past the burst, `status` at once.
#[test]
fn rate_limit_with_delay_spaces_requests_to_the_rate() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "plugins:\n  - rate_limit: { rate: 5, burst: 3, delay: 0, status: 503 }",
        ROOT,
    );
    let port = g.port;
    let start = Instant::now();
    let answers: Vec<(u16, Duration)> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let s = request(port, "GET", "/", &[], b"").status;
                (s, start.elapsed())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let mut served: Vec<Duration> = answers.iter().filter(|a| a.0 == 200).map(|a| a.1).collect();
    served.sort();
    let refused: Vec<&(u16, Duration)> = answers.iter().filter(|a| a.0 != 200).collect();
    assert_eq!((served.len(), refused.len()), (3, 1), "{answers:?}");
    assert_eq!(refused[0].0, 503);
    assert!(
        refused[0].1 < Duration::from_millis(150),
        "refused at once: {answers:?}"
    );
    // One at once, then one per 200 ms.
    assert!(served[0] < Duration::from_millis(150), "{answers:?}");
    assert!(served[1] >= Duration::from_millis(190), "{answers:?}");
    assert!(served[2] >= Duration::from_millis(390), "{answers:?}");
    assert!(served[2] < Duration::from_secs(2), "{answers:?}");
    assert_eq!(b.hits(), 3);
}

#[test]
fn ip_access_allows_and_denies_by_cidr() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "",
        "      - { path: /denied, proxy_pass: app, plugins: [ { ip_access: { deny: [127.0.0.0/8] } } ] }\n      - { path: /only-ten, proxy_pass: app, plugins: [ { ip_access: { allow: [10.0.0.0/8, \"fd00::/8\"] } } ] }\n      - { path: /local, proxy_pass: app, plugins: [ { ip_access: { allow: [127.0.0.1/32, \"::1\"] } } ] }\n",
    );
    assert_eq!(g.get("/denied").status, 403);
    assert_eq!(g.get("/only-ten").status, 403);
    assert_eq!(g.get("/local").status, 200);
    assert_eq!(b.hits(), 1);
}

#[test]
fn headers_plugin_sets_adds_and_removes() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "plugins:\n  - request_id: {}\n  - headers:\n      request_set: { X-Client: \"$remote_addr@$host\", X-Rid: $request_id }\n      request_remove: [X-Debug]\n      response_add: { Cache-Control: no-store }\n      response_remove: [X-Backend]",
        ROOT,
    );
    let r = request(g.port, "GET", "/", &[("X-Debug", "1"), ("Host", "h.example")], b"");
    assert_eq!(r.echoed("x-client").as_deref(), Some("127.0.0.1@h.example"));
    assert_eq!(r.echoed("x-rid").as_deref(), r.header("x-request-id"));
    assert_eq!(r.echoed("x-debug"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-backend"), None);
}

#[test]
fn request_id_is_kept_or_generated_and_logged() {
    let b = Backend::start("b");
    let g = gw(&b, "plugins:\n  - request_id: {}", ROOT);
    let r = g.get("/");
    let id = r.header("x-request-id").expect("generated").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.echoed("x-request-id").as_deref(),
        Some(id.as_str()),
        "passed upstream"
    );
    let r = request(g.port, "GET", "/", &[("X-Request-Id", "abc-123")], b"");
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.echoed("x-request-id").as_deref(), Some("abc-123"));
    let r = request(g.port, "GET", "/", &[("X-Request-Id", "bad id with spaces")], b"");
    let new = r.header("x-request-id").expect("a new id");
    assert_eq!(new.len(), 32);
    assert_eq!(
        r.echoed("x-request-id").as_deref(),
        Some(new),
        "the new id, not the client's, goes upstream"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        g.access_log().contains(&format!("request_id={id}")),
        "{}",
        g.access_log()
    );
}

#[test]
fn cors_preflight_and_simple_requests() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "plugins:\n  - cors: { origins: [\"https://app.example\"], methods: [GET, PUT], headers: [Content-Type], max_age: 300 }",
        ROOT,
    );
    let r = request(
        g.port,
        "OPTIONS",
        "/api",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type"));
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    assert_eq!(b.hits(), 0, "preflight answered by the gateway");
    let r = request(g.port, "GET", "/api", &[("Origin", "https://app.example")], b"");
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, Some("https://app.example"))
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = request(g.port, "GET", "/api", &[("Origin", "https://evil.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn basic_auth_rejects_without_credentials() {
    let b = Backend::start("b");
    // bob's password "hunter2" given as its SHA-256.
    let g = gw(
        &b,
        "plugins:\n  - basic_auth: { realm: staff, users: { alice: wonderland, bob: \"sha256:f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7\" } }",
        ROOT,
    );
    let r = g.get("/");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    let auth = |user_pass: &str| {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    };
    assert_eq!(
        request(g.port, "GET", "/", &[("Authorization", &auth("alice:nope"))], b"").status,
        401
    );
    let r = request(g.port, "GET", "/", &[("Authorization", &auth("alice:wonderland"))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("authorization"), None, "credentials stay at the gateway");
    assert_eq!(
        request(g.port, "GET", "/", &[("Authorization", &auth("bob:hunter2"))], b"").status,
        200
    );
    assert_eq!(b.hits(), 2);
}

#[test]
fn a_deny_before_rate_limiting_does_not_consume_tokens() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "plugins:\n  - basic_auth: { users: { u: p } }\n  - rate_limit: { rate: 0.01, burst: 2 }",
        ROOT,
    );
    for _ in 0..5 {
        assert_eq!(g.get("/").status, 401);
    }
    let ok = [("Authorization", "Basic dTpw")]; // u:p
    let statuses: Vec<u16> = (0..3).map(|_| request(g.port, "GET", "/", &ok, b"").status).collect();
    assert_eq!(statuses, vec![200, 200, 429], "the 401s took no tokens");
}

#[test]
fn plugins_are_scoped_per_location_and_host() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - server_names: [a.test]\n    plugins: [ {{ headers: {{ response_set: {{ X-Host-Plugin: a }} }} }} ]\n    locations:\n      - {{ path: /open, proxy_pass: app }}\n      - {{ path: /closed, proxy_pass: app, plugins: [ {{ ip_access: {{ deny: [0.0.0.0/0] }} }} ] }}\n  - server_names: [b.test]\n    locations:\n      - {{ path: /, proxy_pass: app }}\n",
        b.addr
    ));
    let r = g.get_host("a.test", "/open");
    assert_eq!((r.status, r.header("x-host-plugin")), (200, Some("a")));
    let r = g.get_host("a.test", "/closed");
    assert_eq!(
        (r.status, r.header("x-host-plugin")),
        (403, Some("a")),
        "host plugin also stamps plugin answers"
    );
    let r = g.get_host("b.test", "/closed");
    assert_eq!((r.status, r.header("x-host-plugin")), (200, None));
}

#[test]
fn example_greeting_plugin() {
    let b = Backend::start("b");
    let g = gw(&b, "plugins:\n  - greeting: { path: /hello, message: hi there }", ROOT);
    let r = g.get("/hello");
    assert_eq!((r.status, r.body.as_str()), (200, "hi there\n"));
    assert_eq!(b.hits(), 0);
    assert_eq!(g.get("/other").header("x-greeting"), Some("hi there"));
}

#[test]
fn bad_plugin_settings_fail_the_config_test() {
    let cases = [
        (
            "  - rate_limit: { rate: -1 }",
            "plugins[0].rate_limit: plugin rate_limit: rate: must be a positive number",
        ),
        (
            "  - rate_limit: { rate: 5, brust: 1 }",
            "plugin rate_limit: unknown field `brust`",
        ),
        (
            "  - ip_access: { deny: [300.1.1.1/8] }",
            "plugin ip_access: deny: invalid CIDR \"300.1.1.1/8\"",
        ),
        (
            "  - cors: { origins: [\"*\"], credentials: true }",
            "plugin cors: credentials: cannot be used",
        ),
        ("  - nope: {}", "plugins[0].nope: unknown plugin \"nope\""),
    ];
    for (entry, want) in cases {
        let (ok, err) = config_test(&format!(
            "listeners: [{{ listen: \"127.0.0.1:1\" }}]\nplugins:\n{entry}\n"
        ));
        assert!(!ok);
        assert!(err.contains("FILE:3:"), "position: {err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}

#[test]
fn reload_rebuilds_plugins_and_keeps_them_on_bad_settings() {
    let b = Backend::start("b");
    let g = gw(&b, "plugins:\n  - greeting: { path: /hello, message: one }", ROOT);
    assert_eq!(g.get("/hello").body, "one\n");
    let yaml = std::fs::read_to_string(&g.conf).unwrap();
    std::fs::write(&g.conf, yaml.replace("message: one", "message: two")).unwrap();
    g.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(g.get("/hello").body, "two\n");
    std::fs::write(&g.conf, yaml.replace("path: /hello", "path: hello")).unwrap();
    g.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(g.get("/hello").body, "two\n", "bad setting: old instance stays");
    assert!(
        g.stderr().contains("plugin greeting: path: must start with '/'"),
        "{}",
        g.stderr()
    );
}

#[test]
fn headers_response_rules_can_leave_error_answers_alone() {
    let b = Backend::start("b");
    let g = gw(
        &b,
        "plugins:\n  - headers: { response_add: { X-Every: yes } }\n  - headers: { response_add: { X-Ok-Only: yes }, response_always: false }",
        ROOT,
    );
    let r = g.get("/");
    assert_eq!(
        (r.status, r.header("x-every"), r.header("x-ok-only")),
        (200, Some("yes"), Some("yes"))
    );
    for status in [404, 500, 503] {
        b.set(Behaviour::Status(status));
        let r = g.get("/");
        assert_eq!(
            (r.status, r.header("x-every"), r.header("x-ok-only")),
            (status, Some("yes"), None)
        );
    }
    b.set(Behaviour::Status(304));
    assert_eq!(
        g.get("/").header("x-ok-only"),
        Some("yes"),
        "3xx answers are successes too"
    );
}
