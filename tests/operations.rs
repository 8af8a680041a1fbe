//! Operations: admin API (token, status, register, drain), hot reload
//! (admin call and SIGHUP, bad files keep the running config), metrics, and
//! a graceful stop that does not sleep out the whole grace period and
//! serves the first request of a connection opened just before it.

mod common;
use common::*;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-token";

fn conf(admin_port: u16, backends: &[&Backend], extra_loc: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:{admin_port}\", token: {TOKEN} }}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n{extra_loc}",
        servers_yaml(backends, "")
    )
}

fn admin(port: u16, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(port, method, path, &[("Authorization", auth.as_str())], body.as_bytes())
}

#[test]
fn admin_requires_the_token() {
    let b = Backend::start("b");
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&b], ""));
    assert_eq!(request(ap, "GET", "/status", &[], b"").status, 401);
    assert_eq!(
        request(ap, "GET", "/status", &[("Authorization", "Bearer wrong")], b"").status,
        401
    );
    assert_eq!(request(ap, "GET", "/metrics", &[], b"").status, 401);
    let r = admin(ap, "GET", "/status", "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&b.addr.to_string()), "{}", r.body);
    assert!(r.body.contains("\"state\": \"healthy\""), "{}", r.body);
    assert_eq!(admin(ap, "GET", "/nope", "").status, 404);
    // A known endpoint asked with another method: 405, and the method it takes.
    let r = admin(ap, "POST", "/status", "");
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = admin(ap, "GET", "/pools/app/servers/127.0.0.1:1", "");
    assert_eq!((r.status, r.header("allow")), (405, Some("DELETE")));
    assert_eq!(admin(ap, "GET", "/pools/app/servers/a/b", "").status, 404);
    drop(g);
}

#[test]
fn metrics_follow_traffic() {
    let b = Backend::start("b");
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&b], ""));
    let count = |text: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("portico_requests_total{") && l.contains("status=\"2xx\"") && l.contains("pool=\"app\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = count(&admin(ap, "GET", "/metrics", "").body);
    for _ in 0..7 {
        g.get("/");
    }
    // Requests are counted once their response is out, so the last one may land a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut m = admin(ap, "GET", "/metrics", "").body;
    while count(&m) - before < 7 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        m = admin(ap, "GET", "/metrics", "").body;
    }
    assert_eq!(count(&m) - before, 7, "{m}");
    assert!(
        m.contains("portico_upstream_response_seconds_bucket{pool=\"app\""),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "portico_upstream_in_flight{{pool=\"app\",server=\"{}\"}} 0",
            b.addr
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "portico_upstream_healthy{{pool=\"app\",server=\"{}\"}} 1",
            b.addr
        )),
        "{m}"
    );
}

/// Requests refused before they are routed (a head that cannot be parsed,
/// one over the size limit, framing or Host fields Pingora's loop would
/// refuse) are answered by the gateway, logged with their request line as
/// it came, and counted, as nginx logs its 400s. Quotes and odd bytes are
/// escaped in the log, so a client cannot forge a line's fields.
#[test]
fn refused_requests_are_answered_logged_and_counted() {
    let b = Backend::start("b");
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&b], ""));
    let refused = |text: &str| {
        let m = admin(ap, "GET", "/metrics", "").body;
        let n = m
            .lines()
            .filter(|l| l.starts_with("portico_requests_total{") && l.contains("route=\"-\""))
            .filter(|l| l.contains(&format!("status=\"{text}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
        n
    };
    let before = refused("4xx");
    let big = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "v".repeat(40_000));
    let cases: [(&[u8], &str, &str); 7] = [
        (
            b"GET /bad HTTP/1.1\r\nHost: x\r\nX Bad Header\r\n\r\n",
            "400",
            "\"GET /bad HTTP/1.1\" 400 16 ",
        ),
        (
            b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "400",
            "\"GET /two HTTP/1.1\" 400 16 ",
        ),
        (
            b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "400",
            "\"POST /cl HTTP/1.1\" 400 16 ",
        ),
        (
            b"GET http://a.test/abs HTTP/1.1\r\nHost: b.test\r\n\r\n",
            "400",
            "\"GET http://a.test/abs HTTP/1.1\" 400 16 ",
        ),
        (
            b"\x16\x03\x01\"tls\r\n\r\n",
            "400",
            "\"\\x16\\x03\\x01\\x22tls\" 400 16 ",
        ),
        (
            b"GET /sp ace HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "\"GET /sp ace HTTP/1.1\" 400 16 ",
        ),
        (big.as_bytes(), "431", "\"GET /big HTTP/1.1\" 431 36 "),
    ];
    for (req, status, _) in &cases {
        let text = raw_exchange(g.port, &[req], Duration::ZERO);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{req:?}: {text}");
        assert!(text.contains("Server: portico\r\n"), "answered by the gateway: {text}");
    }
    // The same, arriving in pieces: refused before its end.
    let text = raw_exchange(
        g.port,
        &[b"GET /slow HTTP/1.1\r\nX Bad", b"\r\n"],
        Duration::from_millis(100),
    );
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    // A quote in a target or a field cannot end the log's quoted fields.
    let forged = b"GET /q\"uote HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\" 200 \"x\r\nConnection: close\r\n\r\n";
    let text = raw_exchange(g.port, &[forged], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !g.access_log().contains("uote") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = g.access_log();
    for (_, _, line) in &cases {
        assert!(log.contains(line), "{line} not in {log}");
    }
    assert!(log.contains("\"GET /slow HTTP/1.1\" 400 16 "), "{log}");
    assert!(
        log.contains("\"GET /q\\x22uote HTTP/1.1\" 200 ") && log.contains("\"ua\\x22 200 \\x22x\""),
        "{log}"
    );
    assert_eq!(refused("4xx") - before, cases.len() as u64 + 1);
    assert_eq!(b.hits(), 1, "only the last request went upstream");
}

#[test]
fn idle_keepalive_connections_park_come_back_and_time_out() {
    let b = Backend::start("b");
    let ap = free_port();
    let server = server_section(&["idle_park_after: 200ms", "keepalive_timeout: 3s"]);
    let g = Gateway::start(&format!("{server}{}", conf(ap, &[&b], "")));
    let parked = || -> i64 {
        let m = admin(ap, "GET", "/metrics", "").body;
        m.lines()
            .find_map(|l| l.strip_prefix("portico_idle_connections_parked "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no parked gauge in {m}"))
    };
    let wait_for = |want: i64, within: Duration| {
        let deadline = Instant::now() + within;
        while parked() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        parked()
    };
    let mut c = Client::connect(g.port).unwrap();
    for _ in 0..2 {
        assert_eq!(c.send("GET", "/", &[], b"").unwrap().status, 200);
    }
    // Busy connections are not parked; this one is once idle for 200 ms.
    assert_eq!(wait_for(1, Duration::from_secs(3)), 1, "parked after idling");

    // Its next request brings it back, on the same connection, and it parks again.
    let t = Instant::now();
    let r = c.send("GET", "/again", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("request=GET /again"), "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "served at once: {:?}",
        t.elapsed()
    );
    assert_eq!(wait_for(1, Duration::from_secs(2)), 1, "parked again");

    // keepalive_timeout (3 s) still closes it, parked: the client reads EOF.
    let idle_since = Instant::now();
    let mut byte = [0u8; 1];
    let mut raw = c.into_stream();
    raw.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    assert_eq!(
        std::io::Read::read(&mut raw, &mut byte).unwrap(),
        0,
        "closed by the gateway"
    );
    let idle = idle_since.elapsed();
    assert!(
        idle > Duration::from_millis(2500) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
    assert_eq!(parked(), 0);
}

#[test]
fn reload_swaps_config_and_keeps_it_on_a_bad_file() {
    let b = Backend::start("b");
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&b], ""));
    assert_eq!(g.get("/v").backend(), "b");
    let yaml = std::fs::read_to_string(&g.conf).unwrap();
    // v2: /v answers directly.
    let v2 = yaml.replace(
        "      - path: /\n",
        "      - path: = /v\n        return: { status: 200, body: v2 }\n      - path: /\n",
    );
    std::fs::write(&g.conf, &v2).unwrap();
    let r = admin(ap, "POST", "/reload", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(g.get("/v").body, "v2");
    // A broken file: the error names line and field, and v2 keeps running.
    std::fs::write(&g.conf, v2.replace("proxy_pass: app", "proxy_pass: missing")).unwrap();
    let r = admin(ap, "POST", "/reload", "");
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("portico.yaml:20:9: virtual_hosts[0].locations[1].proxy_pass: unknown upstream"),
        "{}",
        r.body
    );
    assert_eq!(g.get("/v").body, "v2");
    assert_eq!(g.get("/x").backend(), "b");
    // SIGHUP reloads too.
    std::fs::write(&g.conf, v2.replace("body: v2", "body: v3")).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while g.get("/v").body != "v3" {
        assert!(Instant::now() < deadline, "SIGHUP reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // New listeners need a binary upgrade.
    std::fs::write(
        &g.conf,
        v2.replace("listeners:\n", "listeners:\n  - listen: 127.0.0.1:1\n"),
    )
    .unwrap();
    let r = admin(ap, "POST", "/reload", "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("binary upgrade"), "{}", r.body);
}

#[test]
fn register_and_drain_servers_at_runtime() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&a], ""));
    let r = admin(
        ap,
        "POST",
        "/pools/app/servers",
        &format!("{{\"address\": \"{}\", \"weight\": 1}}", b.addr),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let m = spread(&g, "/", 10);
    assert_eq!((m.get("a"), m.get("b")), (Some(&5), Some(&5)), "{m:?}");

    // A slow request is in flight on a when it is drained.
    a.set(Behaviour::Slow(Duration::from_millis(1500)));
    b.set(Behaviour::Slow(Duration::from_millis(1500)));
    let port = g.port;
    let slow = std::thread::spawn(move || {
        (0..2)
            .map(|_| std::thread::spawn(move || request(port, "GET", "/slow", &[], b"")))
            .collect::<Vec<_>>()
    });
    let slow: Vec<_> = slow.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    a.set(Behaviour::Echo);
    b.set(Behaviour::Echo);
    let r = admin(ap, "DELETE", &format!("/pools/app/servers/{}?delay=10s", a.addr), "");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(admin(ap, "GET", "/status", "").body.contains("\"state\": \"draining\""));
    let hits_a = a.hits();
    for _ in 0..10 {
        assert_eq!(g.get("/").backend(), "b", "no new request to a draining server");
    }
    assert_eq!(a.hits(), hits_a);
    for t in slow {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "in-flight request finished");
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = admin(ap, "GET", "/status", "").body;
    assert!(!st.contains(&a.addr.to_string()), "deregistered once idle: {st}");
    // Runtime changes survive a reload of the unchanged file.
    assert_eq!(admin(ap, "POST", "/reload", "").status, 200);
    let st = admin(ap, "GET", "/status", "").body;
    assert!(
        st.contains(&b.addr.to_string()) && !st.contains(&a.addr.to_string()),
        "{st}"
    );
    // The last server of a pool is not drained: refused at once (it was
    // accepted, and its removal failed silently when the drain ended).
    let r = admin(ap, "DELETE", &format!("/pools/app/servers/{}?delay=1s", b.addr), "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(!admin(ap, "GET", "/status", "").body.contains("\"state\": \"draining\""));
    assert_eq!(g.get("/").backend(), "b");
}

/// One pool of `b`, a 60 s grace period: a graceful stop must not wait it out.
fn graceful_conf(b: &Backend) -> String {
    format!(
        "server:\n  grace_period: 60s\n  pid_file: {{DIR}}/p.pid\n  upgrade_sock: {{DIR}}/u.sock\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        b.addr
    )
}

#[test]
fn sigterm_exits_once_idle_not_after_the_grace_period() {
    let b = Backend::start("b");
    let mut g = Gateway::start(&graceful_conf(&b));
    b.set(Behaviour::Slow(Duration::from_millis(1000)));
    let p = g.port;
    let slow = std::thread::spawn(move || request(p, "GET", "/", &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    g.signal("TERM");
    assert_eq!(slow.join().unwrap().status, 200, "in-flight request completes");
    loop {
        if g.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running after 10s of a 60s grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_connection_opened_before_a_graceful_stop_gets_its_first_request_served() {
    let b = Backend::start("b");
    let g = Gateway::start(&graceful_conf(&b));
    // One keep-alive connection that has carried a request, one that has carried none yet.
    let mut used = Client::connect(g.port).unwrap();
    assert_eq!(used.send("GET", "/", &[], b"").unwrap().status, 200);
    let mut fresh = Client::connect(g.port).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    g.signal("TERM");
    // The idle keep-alive connection is closed: the stop has begun.
    assert!(
        used.closed_within(Duration::from_secs(5)),
        "an idle keep-alive connection closes at a graceful stop"
    );
    // The new connection's request may have been on its way as the stop began.
    let r = fresh
        .send("GET", "/", &[("Connection", "close")], b"")
        .expect("the first request of a connection open before the stop is served, not dropped");
    assert_eq!(r.status, 200);
}

#[test]
fn the_status_page_is_served_and_the_status_it_draws_follows_traffic() {
    let slow = Backend::start_with("slow", Behaviour::Slow(Duration::from_millis(1500)));
    let ap = free_port();
    let g = Gateway::start(&conf(ap, &[&slow], ""));

    // The page holds no data: served without the token, under a policy that lets it reach only its own API.
    let page = request(ap, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("connect-src 'self'")));
    assert!(page.body.contains("fetch(\"status\""), "{}", page.body);
    assert!(page.body.contains("spark(history.rps"), "the request rate's graph");
    assert_eq!(
        request(ap, "GET", "/status", &[], b"").status,
        401,
        "the data still needs the token"
    );

    // A request in flight shows while it lasts, and is counted once done.
    let port = g.port;
    let pending = std::thread::spawn(move || request(port, "GET", "/", &[], b"").status);
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        let st: serde_json::Value = serde_json::from_str(&admin(ap, "GET", "/status", "").body).unwrap();
        // The gateway counts the request as it arrives, the server once it is picked: wait for both.
        let both = st["gateway"]["requests_in_flight"] == 1 && st["pools"][0]["servers"][0]["in_flight"] == 1;
        if both || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["gateway"]["requests_in_flight"], 1, "{status}");
    assert_eq!(status["pools"][0]["servers"][0]["in_flight"], 1, "{status}");
    assert!(
        status["gateway"]["client_connections_open"].as_i64() >= Some(1),
        "{status}"
    );
    assert_eq!(pending.join().unwrap(), 200);
    std::thread::sleep(Duration::from_millis(100));
    let status: serde_json::Value = serde_json::from_str(&admin(ap, "GET", "/status", "").body).unwrap();
    assert_eq!(status["gateway"]["requests_in_flight"], 0, "{status}");
    assert!(status["gateway"]["requests_total"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["pools"][0]["servers"][0]["requests"], 1, "{status}");

    // Every field the page draws is one the API gives.
    let text = status.to_string();
    for field in [
        "config_file",
        "requests_total",
        "requests_in_flight",
        "client_connections_open",
        "tcp_connections_active",
        "tcp_listeners",
        "algorithm",
        "address",
        "backup",
        "state",
        "weight",
        "in_flight",
        "requests",
        "failures",
        "last_failure",
        "last_health_check",
    ] {
        assert!(
            page.body.contains(&format!(".{field}")),
            "the page does not read {field}"
        );
        assert!(
            text.contains(&format!("\"{field}\"")),
            "the API does not give {field}: {text}"
        );
    }
}
