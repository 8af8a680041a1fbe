//! Core gateway behaviour through a real portico process and real backends.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn one_pool(b: &[&Backend], loc_extra: &str) -> String {
    format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    read_timeout: 2s\n    servers:\n{}\nvirtual_hosts:\n  - default: true\n    locations:\n      - path: /\n        proxy_pass: app\n{loc_extra}",
        servers_yaml(b, "")
    )
}

#[test]
fn routes_by_host_with_exact_wildcard_and_default() {
    let (a, b, c) = (
        Backend::start("exact"),
        Backend::start("wild"),
        Backend::start("default"),
    );
    let r = Backend::start("regex");
    let g = Gateway::start(&format!(
        r#"
listeners:
  - listen: 127.0.0.1:{{PORT}}
upstreams:
  a: {{ servers: [{{ address: "{}" }}] }}
  b: {{ servers: [{{ address: "{}" }}] }}
  r: {{ servers: [{{ address: "{}" }}] }}
  c: {{ servers: [{{ address: "{}" }}] }}
virtual_hosts:
  - server_names: [example.com]
    locations: [{{ path: /, proxy_pass: a }}]
  - server_names: ["*.example.com"]
    locations: [{{ path: /, proxy_pass: b }}]
  - server_names: ['~^api-\d+\.example\.(com|org)$']
    locations: [{{ path: /, proxy_pass: r }}]
  - default: true
    locations: [{{ path: /, proxy_pass: c }}]
"#,
        a.addr, b.addr, r.addr, c.addr
    ));
    assert_eq!(g.get_host("example.com", "/").backend(), "exact");
    assert_eq!(g.get_host("EXAMPLE.com:8080", "/").backend(), "exact");
    assert_eq!(g.get_host("www.example.com", "/").backend(), "wild");
    assert_eq!(g.get_host("a.b.example.com", "/").backend(), "wild");
    assert_eq!(g.get_host("other.org", "/").backend(), "default");
    // A regex name (nginx `server_name ~...`) after exact and wildcard names.
    assert_eq!(g.get_host("API-12.example.org", "/").backend(), "regex");
    assert_eq!(
        g.get_host("api-12.example.com", "/").backend(),
        "wild",
        "a wildcard first"
    );
    assert_eq!(g.get_host("api-x.example.org", "/").backend(), "default");
}

/// Without `default: true`, a listener's first virtual host is its default,
/// whatever its first name is (nginx's rule).
#[test]
fn the_first_virtual_host_is_the_default_even_when_named_by_a_regex() {
    let (first, second) = (Backend::start("first"), Backend::start("second"));
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  a: {{ servers: [{{ address: \"{}\" }}] }}\n  b: {{ servers: [{{ address: \"{}\" }}] }}\n\
         virtual_hosts:\n  - server_names: ['~^www\\d*\\.first\\.test$']\n    locations: [{{ path: /, proxy_pass: a }}]\n\
         \x20 - server_names: [second.test]\n    locations: [{{ path: /, proxy_pass: b }}]\n",
        first.addr, second.addr
    ));
    assert_eq!(g.get_host("www2.first.test", "/").backend(), "first");
    assert_eq!(g.get_host("second.test", "/").backend(), "second");
    assert_eq!(g.get_host("unknown.test", "/").backend(), "first");
}

#[test]
fn routes_by_path_with_nginx_precedence() {
    let names = ["root", "exact", "api", "apiv1", "php", "static"];
    let bs: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    let mut ups = String::new();
    for (n, b) in names.iter().zip(&bs) {
        ups.push_str(&format!("  {n}: {{ servers: [{{ address: \"{}\" }}] }}\n", b.addr));
    }
    let g = Gateway::start(&format!(
        r#"
listeners:
  - listen: 127.0.0.1:{{PORT}}
upstreams:
{ups}
virtual_hosts:
  - server_names: [localhost]
    locations:
      - {{ path: /, proxy_pass: root }}
      - {{ path: "= /exact", proxy_pass: exact }}
      - {{ path: /api/, proxy_pass: api }}
      - {{ path: /api/v1/, proxy_pass: apiv1 }}
      - {{ path: '~ \.php$', proxy_pass: php }}
      - {{ path: "^~ /static/", proxy_pass: static }}
"#
    ));
    let cases = [
        ("/exact", "exact"),
        ("/exact/x", "root"),
        ("/api/x", "api"),
        ("/api/v1/users", "apiv1"),
        ("/api/v1/index.php", "php"),
        ("/static/index.php", "static"),
        ("/anything", "root"),
    ];
    for (path, want) in cases {
        assert_eq!(g.get(path).backend(), want, "path {path}");
    }
}

#[test]
fn no_matching_location_is_404() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  a: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - server_names: [only.example]\n    locations: [{{ path: /api/, proxy_pass: a }}]\n",
        b.addr
    ));
    assert_eq!(g.get_host("only.example", "/other").status, 404);
    assert_eq!(g.get_host("only.example", "/api/x").status, 200);
    assert_eq!(b.hits(), 1);
}

#[test]
fn forwarding_headers_are_set_and_not_spoofable() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    let spoof = [
        ("Host", "shop.example:8080"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let r = request(g.port, "GET", "/x?y=1", &spoof, b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("host").as_deref(),
        Some("shop.example:8080"),
        "Host passes through"
    );
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.echoed("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(r.echoed("x-forwarded-host").as_deref(), Some("shop.example:8080"));
    assert!(r.body.contains("request=GET /x?y=1 HTTP/1.1"), "{}", r.body);
}

/// A listener behind a load balancer that sends the PROXY protocol: the
/// header's client is the client for the forwarding fields, access rules
/// and the log, on every request of the connection, idle or not.
#[test]
fn a_proxy_protocol_listener_takes_the_client_from_the_header() {
    let b = Backend::start("b");
    let pp = free_port();
    let server = server_section(&["idle_park_after: 100ms", "client_header_timeout: 1s"]);
    let g = Gateway::start(&format!(
        "{server}listeners:\n  - listen: 127.0.0.1:{{PORT}}\n  - {{ listen: \"127.0.0.1:{pp}\", accept_proxy_protocol: true }}\n\
         upstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations:\n\
         \x20     - {{ path: /, proxy_pass: app }}\n\
         \x20     - {{ path: /denied, proxy_pass: app, plugins: [ {{ ip_access: {{ deny: [203.0.113.0/24] }} }} ] }}\n",
        b.addr
    ));
    let mut c = loop {
        match Client::connect(pp) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    c.write_raw(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n");
    let r = c.send("GET", "/first", &[("X-Forwarded-For", "6.6.6.6")], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("203.0.113.7"));
    // Past `idle_park_after`: such connections are not parked (the lot keeps no
    // client address), so the next request still has its client.
    std::thread::sleep(Duration::from_millis(400));
    let r = c.send("GET", "/second", &[], b"").unwrap();
    assert_eq!(r.echoed("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(c.send("GET", "/denied", &[], b"").unwrap().status, 403);
    let line = g
        .access_log_line("/second")
        .unwrap_or_else(|| panic!("{}", g.access_log()));
    assert!(line.starts_with("203.0.113.7 "), "{line}");

    // Version 2, IPv6, split from the request by a pause; then LOCAL (a balancer's own
    // check), which names no client: the connection's own address stands.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(&"2001:db8::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&[0; 15]);
    v2.extend_from_slice(&[1, 0x9c, 0x40, 0, 80]);
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(
        pp,
        &[&v2[..20], &[&v2[20..], &req[..]].concat()],
        Duration::from_millis(100),
    );
    assert!(out.contains("header=x-real-ip: 2001:db8::9"), "{out}");
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let out = raw_exchange(pp, &[&[&local[..], &req[..]].concat()], Duration::ZERO);
    assert!(out.contains("header=x-real-ip: 127.0.0.1"), "{out}");

    // No header, or a header never finished: closed unanswered, and the gateway goes on.
    let out = raw_exchange(pp, &[req], Duration::ZERO);
    assert_eq!(out, "", "a request with no PROXY header is not answered");
    let t = Instant::now();
    assert_eq!(raw_exchange(pp, &[b"PROXY TCP4 1.2.3.4"], Duration::ZERO), "");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed after client_header_timeout"
    );
    assert!(
        g.stderr().contains("PROXY protocol header from 127.0.0.1"),
        "{}",
        g.stderr()
    );
    // The plain listener beside it is not affected.
    assert_eq!(g.get("/").echoed("x-real-ip").as_deref(), Some("127.0.0.1"));

    // Turning the header off is a change of listener: a reload refuses it, the listener
    // goes on as it was.
    let conf = std::fs::read_to_string(&g.conf).unwrap();
    std::fs::write(
        &g.conf,
        conf.replace("accept_proxy_protocol: true", "accept_proxy_protocol: false"),
    )
    .unwrap();
    g.signal("HUP");
    g.wait_stderr("listeners changed");
    assert!(g.stderr().contains("PROXY protocol)\"] ->"), "{}", g.stderr());
    let out = raw_exchange(pp, &[b"PROXY TCP4 203.0.113.8 127.0.0.1 1 80\r\n", req], Duration::ZERO);
    assert!(out.contains("header=x-real-ip: 203.0.113.8"), "{out}");
}

/// A location's `rewrite` changes the path the server gets (matched on the
/// normalized path, the query kept), on every attempt alike; other
/// locations' requests go as they came.
#[test]
fn rewrite_changes_the_path_sent_upstream() {
    let (bad, good) = (
        Backend::start_with("bad", Behaviour::Status(502)),
        Backend::start("good"),
    );
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app:\n    next_upstream: [error, http_502]\n    servers:\n{}\
         virtual_hosts:\n  - default: true\n    locations:\n\
         \x20     - {{ path: /api/, proxy_pass: app, rewrite: {{ from: \"^/api/(.*)$\", to: \"/v2/$1\" }} }}\n\
         \x20     - {{ path: /, proxy_pass: app }}\n",
        servers_yaml(&[&bad, &good], "        max_fails: 0\n")
    ));
    for _ in 0..4 {
        let r = g.get("/api/users/7?x=1");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("request=GET /v2/users/7?x=1 HTTP/1.1"), "{}", r.body);
    }
    assert!(
        bad.hits() >= 2,
        "half the first attempts went to the failing server and were retried"
    );
    // A request with a body (Pingora's loop, not the lean one) alike; the lean loop keeps the
    // client's method and version around the new target.
    let r = request(g.port, "PUT", "/api/put?z=3", &[], b"body");
    assert!(r.body.contains("request=PUT /v2/put?z=3 HTTP/1.1"), "{}", r.body);
    let out = raw_exchange(g.port, &[b"GET /api/ten HTTP/1.0\r\nHost: x\r\n\r\n"], Duration::ZERO);
    assert!(out.contains("request=GET /v2/ten HTTP/1."), "{out}");
    // Matched as routing saw the path; what the group took is encoded again.
    let r = g.get("/x/../api/a%20b");
    assert!(r.body.contains("request=GET /v2/a%20b HTTP/1.1"), "{}", r.body);
    let r = g.get("/other?y=2");
    assert!(r.body.contains("request=GET /other?y=2 HTTP/1.1"), "{}", r.body);
    let line = g
        .access_log_line("/api/users/7")
        .unwrap_or_else(|| panic!("{}", g.access_log()));
    assert!(
        line.contains("\"GET /api/users/7?x=1 HTTP/1.1\""),
        "the log has the request as it came: {line}"
    );
}

#[test]
fn trusted_proxy_headers_are_kept_and_appended() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!("trusted_proxies: [127.0.0.0/8]\n{}", one_pool(&[&b], "")));
    let r = request(
        g.port,
        "GET",
        "/",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Real-IP", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
        ],
        b"",
    );
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(r.echoed("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("https"));
    // Without incoming headers the client address is used.
    let r = g.get("/");
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[test]
fn health_endpoint_is_answered_by_the_gateway() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    let r = g.get("/nginx/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("2"));
    assert_eq!(b.hits(), 0, "never proxied");
    // Keep-alive works after it (Content-Length present).
    let mut c = Client::connect(g.port).unwrap();
    for _ in 0..3 {
        assert_eq!(c.send("GET", "/nginx/health", &[], b"").unwrap().body, "ok");
    }
}

#[test]
fn health_endpoint_path_is_configurable_and_can_be_disabled() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "health_endpoint: {{ path: /healthz }}\n{}",
        one_pool(&[&b], "")
    ));
    assert_eq!(g.get("/healthz").body, "ok");
    assert_eq!(g.get("/nginx/health").backend(), "b", "old path is proxied now");
    drop(g);
    let g = Gateway::start(&format!(
        "health_endpoint: {{ enabled: false }}\n{}",
        one_pool(&[&b], "")
    ));
    assert_eq!(g.get("/nginx/health").backend(), "b");
}

#[test]
fn connect_failure_is_502_and_timeout_is_504() {
    let dead = Backend::start("dead");
    let addr = dead.addr;
    drop(dead);
    std::thread::sleep(Duration::from_millis(50));
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  down: {{ servers: [{{ address: \"{addr}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: down }}]\n"
    ));
    let r = g.get("/");
    assert_eq!(r.status, 502);
    assert!(r.body.contains("502"), "short body: {:?}", r.body);
    drop(g);

    let hang = Backend::start_with("hang", Behaviour::Hang);
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  h: {{ read_timeout: 300ms, servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: h }}]\n",
        hang.addr
    ));
    let t = std::time::Instant::now();
    let r = g.get("/");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(5), "no hang");
}

#[test]
fn all_servers_down_gives_503_without_trying() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (a_addr, b_addr) = (a.addr, b.addr);
    drop((a, b));
    // max_fails 1: the first request tries both, and each failure marks its server
    // down for 30s; the next request finds nothing usable. (A pool's only server is
    // never marked down, as in nginx: tests/failover.rs.)
    let server = |addr| format!("{{ address: \"{addr}\", max_fails: 1, fail_timeout: 30s }}");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  a: {{ servers: [{}, {}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: a }}]\n",
        server(a_addr),
        server(b_addr)
    ));
    assert_eq!(g.get("/").status, 502);
    let r = g.get("/");
    assert_eq!(r.status, 503);
}

#[test]
fn body_size_limit_by_content_length_and_chunked() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], "        client_max_body_size: 1k\n"));
    let small = vec![b'x'; 1000];
    assert_eq!(request(g.port, "POST", "/", &[], &small).status, 200);
    let big = vec![b'x'; 2000];
    assert_eq!(request(g.port, "POST", "/", &[], &big).status, 413);
    assert_eq!(
        b.posts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "rejected before proxying"
    );
    // Chunked: 3 chunks of 600 bytes.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(b"258\r\n");
        chunked.extend_from_slice(&[b'y'; 600]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = request(g.port, "POST", "/", &[("Transfer-Encoding", "chunked")], &chunked);
    assert_eq!(r.status, 413);
}

#[test]
fn upstream_connections_are_reused() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    for _ in 0..20 {
        let mut c = Client::connect(g.port).unwrap();
        for _ in 0..5 {
            assert_eq!(c.send("GET", "/", &[], b"").unwrap().status, 200);
        }
    }
    let conns = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(b.hits(), 100);
    assert!(conns <= 10, "backend saw {conns} connections for 100 requests");
}

#[test]
fn return_redirects_with_variables() {
    let g = Gateway::start(
        r#"
listeners:
  - listen: 127.0.0.1:{PORT}
virtual_hosts:
  - default: true
    locations:
      - path: /
        return: { status: 301, location: "https://$host$request_uri" }
      - path: = /teapot
        return: { status: 418, body: "short and stout ($scheme)" }
"#,
    );
    let r = request(g.port, "GET", "/a/b?c=d", &[("Host", "shop.example:80")], b"");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://shop.example/a/b?c=d"));
    let r = g.get("/teapot");
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout (http)"));
}

#[test]
fn request_headers_can_be_set_and_removed() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(
        &[&b],
        "        proxy_set_header: { X-Env: prod, X-Client: \"$remote_addr via $scheme\" }\n        proxy_remove_header: [X-Secret]\n",
    ));
    let r = request(g.port, "GET", "/", &[("X-Secret", "s3cr3t"), ("X-Env", "dev")], b"");
    assert_eq!(r.echoed("x-env").as_deref(), Some("prod"));
    assert_eq!(r.echoed("x-client").as_deref(), Some("127.0.0.1 via http"));
    assert_eq!(r.echoed("x-secret"), None);
}

#[test]
fn access_log_has_upstream_address_and_times() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    g.get("/logged?q=1");
    std::thread::sleep(Duration::from_millis(200));
    let line = g
        .access_log_line("/logged")
        .unwrap_or_else(|| panic!("no line in {:?}", g.access_log()));
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("\"GET /logged?q=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.contains(&b.addr.to_string()), "{line}");
    // ... 200 <bytes> "<referer>" "<user agent>" <upstream address> <upstream time> <request time>
    let tail: Vec<&str> = line.rsplit('"').next().unwrap().split_whitespace().collect();
    assert_eq!(tail.len(), 3, "{line}");
    assert_eq!(tail[0], b.addr.to_string(), "{line}");
    let secs = |t: &str| {
        t.split_once('.')
            .is_some_and(|(s, ms)| s.parse::<u64>().is_ok() && ms.len() == 3)
    };
    assert!(
        secs(tail[1]) && secs(tail[2]),
        "times in seconds with milliseconds: {line}"
    );
    // Answers the gateway makes itself log their body's size too, as nginx's do.
    let dead = format!("127.0.0.1:{}", free_port());
    let gone = Gateway::start(&one_pool(&[&b], "").replace(&b.addr.to_string(), &dead));
    assert_eq!(gone.get("/nginx/health").status, 200);
    assert_eq!(gone.get("/gone").status, 502);
    std::thread::sleep(Duration::from_millis(200));
    for (path, status, bytes) in [("/nginx/health", 200, 2), ("/gone", 502, 16)] {
        let line = gone
            .access_log_line(path)
            .unwrap_or_else(|| panic!("{path}: {:?}", gone.access_log()));
        assert!(line.contains(&format!("\" {status} {bytes} \"")), "{line}");
    }
}

#[test]
fn malformed_request_gets_4xx_and_gateway_survives() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX Bad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        // HTTP/1.1 without Host (RFC 9112 3.2; nginx answers 400 too).
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let text = raw_exchange(g.port, &[junk], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 4"), "{junk:?} -> {text}");
    }
    assert_eq!(b.hits(), 0);
    // HTTP/1.0 needs no Host.
    let text = raw_exchange(g.port, &[b"GET / HTTP/1.0\r\n\r\n"], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.hits(), 1);
    // Content-Length + Transfer-Encoding: the chunked framing wins (RFC 9112 6.3) and the
    // connection is closed, so a request hidden behind it is never smuggled upstream.
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let text = raw_exchange(g.port, &[smuggle], Duration::ZERO);
    assert!(!text.contains("/smuggled"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.hits() <= 2, "backend saw {} requests", b.hits() - 1);
    assert_eq!(g.get("/").status, 200, "still serving");
}

/// An absolute-form target (`GET http://host/x`) routes by its authority
/// and goes to the server as a path, as from nginx; a Host that differs
/// from it is refused (Pingora's rule, stricter than RFC 9112 §3.2.2).
#[test]
fn absolute_targets_route_by_their_authority_and_go_upstream_as_paths() {
    let (a, b) = (Backend::start("public"), Backend::start("admin"));
    let g = Gateway::start(&format!(
        r#"
listeners:
  - listen: 127.0.0.1:{{PORT}}
upstreams:
  a: {{ servers: [{{ address: "{}" }}] }}
  b: {{ servers: [{{ address: "{}" }}] }}
virtual_hosts:
  - server_names: [public.test]
    default: true
    locations: [{{ path: /, proxy_pass: a }}]
  - server_names: [admin.test]
    locations: [{{ path: /, proxy_pass: b }}]
"#,
        a.addr, b.addr
    ));
    for (head, line) in [
        (
            "GET http://admin.test/x?q=1 HTTP/1.1\r\nHost: admin.test",
            "GET /x?q=1 HTTP/1.1",
        ),
        ("GET HTTP://admin.test HTTP/1.1\r\nHost: admin.test", "GET / HTTP/1.1"),
        (
            "GET https://admin.test?z HTTP/1.1\r\nHost: admin.test",
            "GET /?z HTTP/1.1",
        ),
        (
            "POST http://admin.test/p HTTP/1.1\r\nHost: admin.test\r\nContent-Length: 2",
            "POST /p HTTP/1.1",
        ),
    ] {
        let req = format!("{head}\r\nConnection: close\r\n\r\nhi");
        let text = raw_exchange(g.port, &[req.as_bytes()], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 200"), "{head}: {text}");
        assert!(text.contains("name=admin\n"), "{head}: {text}");
        assert!(text.contains(&format!("request={line}\n")), "{head}: {text}");
    }
    // HTTP/1.0 needs no Host: the target's authority routes, and is the Host the server gets.
    let req = b"POST http://admin.test/p HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi";
    let text = raw_exchange(g.port, &[req], Duration::ZERO);
    assert!(
        text.contains("name=admin\n") && text.contains("request=POST /p HTTP/1.1\n"),
        "{text}"
    );
    assert!(text.contains("header=Host: admin.test\n"), "{text}");
    let req = b"GET http://admin.test/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n";
    let text = raw_exchange(g.port, &[req], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(a.hits(), 0);
}

/// Locations match the path as nginx normalizes it (`.` and `..` resolved,
/// slashes merged, `%XX` decoded), so a rule on `/admin/` cannot be walked
/// around; the server still gets the target as the client sent it. In both
/// loops: GETs take the lean one, POSTs Pingora's.
#[test]
fn locations_match_the_normalized_path_and_the_target_goes_upstream_as_sent() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations:\n      - {{ path: /admin/, return: {{ status: 403 }} }}\n      - {{ path: \"= /exact\", return: {{ status: 204 }} }}\n      - {{ path: /, proxy_pass: app }}\n",
        b.addr
    ));
    for method in ["GET", "POST"] {
        let send = |path: &str| request(g.port, method, path, &[], if method == "POST" { b"x" } else { b"" });
        for path in [
            "/admin/secret",
            "/x/../admin/secret",
            "/./admin/secret",
            "//admin/secret",
            "/%61dmin/secret",
            "/a%2F..%2Fadmin/",
        ] {
            assert_eq!(send(path).status, 403, "{method} {path}");
        }
        assert_eq!(send("/x/./../exact").status, 204, "{method}");
        // Targets that are no path: refused, not routed past the locations.
        let not_paths = ["%2Fadmin/secret", "admin/secret", ".//admin/secret", "?/admin/"];
        for path in ["/../admin/", "/%zz", "/a%00b"].into_iter().chain(not_paths) {
            assert_eq!(send(path).status, 400, "{method} {path}");
        }
        let r = send("/x/..//y%20z?q=/../admin/");
        assert_eq!(r.status, 200, "{method}");
        assert!(
            r.body
                .contains(&format!("request={method} /x/..//y%20z?q=/../admin/ HTTP/1.1")),
            "{}",
            r.body
        );
    }
    assert_eq!(b.hits(), 2, "only the two requests routed to the pool");
}

/// `server.send_timeout` (nginx's): a client that stops reading its
/// response is dropped once no byte has gone to it for that long, in both
/// loops (a GET takes the lean one, a POST Pingora's); the rest of the
/// response is never sent, and the gateway still serves.
#[test]
fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    use std::io::{Read, Write};
    let size = 64 << 20; // more than the sockets between client and server hold
    let b = Backend::start_with("big", Behaviour::Big(size));
    let g = Gateway::start(&format!(
        "{}{}",
        server_section(&["send_timeout: 1s"]),
        one_pool(&[&b], "")
    ));
    for req in [
        &b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        c.write_all(req).unwrap();
        std::thread::sleep(Duration::from_secs(3)); // reads nothing
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        assert!(got > 0 && got < size, "{got} of {size} bytes before the gateway let go");
    }
    assert_eq!(g.get("/").status, 200, "still serving");
}

/// The gateway answers as an HTTP/1.1 server whatever version the server
/// used, and an HTTP/1.0 client, which knows no chunked encoding, gets a
/// chunked response's body as it is, ended by the connection (as nginx).
#[test]
fn responses_are_http11_and_http10_clients_get_no_chunked_framing() {
    let chunked = Backend::start_with("c", Behaviour::Chunked);
    let g = Gateway::start(&one_pool(&[&chunked], ""));
    for keep in ["", "Connection: keep-alive\r\n"] {
        let req = format!("GET /x HTTP/1.0\r\nHost: x\r\n{keep}\r\n");
        let text = raw_exchange(g.port, &[req.as_bytes()], Duration::ZERO);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{text}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
        assert!(body.starts_with("name=c\n") && body.ends_with("\nend\n"), "{body:?}");
    }
    let old = Backend::start_with("old", Behaviour::CloseDelimited);
    let g = Gateway::start(&one_pool(&[&old], ""));
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let text = raw_exchange(g.port, &[req], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("name=old"), "{text}");
    }
}

/// A server at `addr` that answers every read of a connection with `answer`
/// (each read taken for one small request).
fn raw_server(answer: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn to_server(addr: std::net::SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{addr}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n"
    ))
}

/// The same request to each loop (a GET takes the lean one, a POST
/// Pingora's), through `g` to a server answering `ok`: each answer, whole.
fn answers_in_both_loops(g: &Gateway) -> Vec<String> {
    let both: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ];
    both.iter()
        .map(|req| {
            let text = raw_exchange(g.port, &[req], Duration::ZERO);
            assert!(
                text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok"),
                "{text}"
            );
            text.to_ascii_lowercase()
        })
        .collect()
}

/// `[::]:P` next to `0.0.0.0:P` (nginx's `listen 80; listen [::]:80;`):
/// the IPv6 socket takes IPv6 clients only, as nginx's `ipv6only=on`, so
/// both bind (the IPv6 one found the port taken and retried for ever).
#[test]
fn ipv6_and_ipv4_wildcard_listeners_share_a_port() {
    use std::io::{Read, Write};
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 0.0.0.0:{{PORT}}\n  - listen: \"[::]:{{PORT}}\"\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        b.addr
    ));
    for addr in [format!("127.0.0.1:{}", g.port), format!("[::1]:{}", g.port)] {
        let mut c = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{addr}: {text}");
    }
    assert!(!g.stderr().contains("in use"), "{}", g.stderr());
}

/// A response body that comes in pieces is passed on piece by piece, as
/// nginx sends what it has: a head and the first bytes of a Content-Length
/// body, then a pause, reach the client before the rest. In both loops
/// (a GET takes the lean one, a POST Pingora's).
#[test]
fn a_slow_body_goes_on_piece_by_piece() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
                std::thread::sleep(Duration::from_millis(1500));
                let _ = s.write_all(b"world");
                let _ = s.read(&mut buf);
            });
        }
    });
    let g = to_server(addr);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        c.write_all(req).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(5).any(|w| w == b"hello") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let first = t0.elapsed();
        assert!(
            first < Duration::from_millis(1000),
            "the first piece took {first:?}: {}",
            String::from_utf8_lossy(&req[..4])
        );
        c.read_to_end(&mut got).unwrap();
        assert!(
            got.ends_with(b"\r\n\r\nhelloworld"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(t0.elapsed() >= Duration::from_millis(1400));
    }
}

/// A server's response head over 64 KiB is refused with a 502 in both
/// loops, as nginx refuses one over its `proxy_buffer_size` ("upstream sent
/// too big header"); Pingora passed up to 1 MiB on, to HTTP/2 clients too.
#[test]
fn response_heads_over_64k_are_refused() {
    let head = |fields: usize| -> &'static [u8] {
        let mut h = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        for i in 0..fields {
            h.push_str(&format!("X-Field-{i:04}: {}\r\n", "v".repeat(1000)));
        }
        h.push_str("\r\nok");
        Box::leak(h.into_bytes().into_boxed_slice())
    };
    // About 60 and 70 KiB of fields.
    for text in answers_in_both_loops(&to_server(raw_server(head(60)))) {
        assert!(text.starts_with("http/1.1 200 "), "{}", &text[..100]);
    }
    let g = to_server(raw_server(head(70)));
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let text = raw_exchange(g.port, &[req], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 502"), "{}", &text[..text.len().min(200)]);
    }
}

/// Host fields are checked as nginx checks them: one that cannot name a
/// server (a `/`, a space, an empty label, empty) gets a 400 instead of
/// being routed to the default server and passed on; a fully qualified name
/// (`b.example.`) routes as the name without its dot. In both loops.
#[test]
fn host_fields_are_checked_and_a_trailing_dot_routes_as_without() {
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n  - server_names: [b.example]\n    locations: [{{ path: /, return: {{ status: 204 }} }}]\n",
        b.addr
    ));
    let status = |method: &str, host: &str| {
        let body = if method == "POST" {
            "Content-Length: 1\r\n\r\nx"
        } else {
            "\r\n"
        };
        let req = format!("{method} / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{body}");
        let text = raw_exchange(g.port, &[req.as_bytes()], Duration::ZERO);
        text.get(9..12).unwrap_or("none").to_string()
    };
    for method in ["GET", "POST"] {
        for host in ["b.example", "b.example.", "B.Example.:80"] {
            assert_eq!(status(method, host), "204", "{method} {host}");
        }
        assert_eq!(status(method, "a.example"), "200", "{method}");
        for host in ["b.example/x", "b.example x", "../b.example", ".b.example", ""] {
            assert_eq!(status(method, host), "400", "{method} {host:?}");
        }
    }
    assert_eq!(b.hits(), 2, "only the two requests for the default server");
}

/// Request fields whose names hold an underscore are dropped, as nginx
/// drops them by default (`X_Forwarded_For` reads as `X-Forwarded-For` to a
/// CGI-style server), in both loops; `underscores_in_headers: true` passes
/// them on.
#[test]
fn header_names_with_underscores_are_dropped_unless_allowed() {
    let b = Backend::start("b");
    let spoof = [("X_Forwarded_For", "6.6.6.6"), ("X_Custom", "a"), ("X-Kept", "k")];
    for allowed in [false, true] {
        let g = Gateway::start(&format!(
            "{}{}",
            server_section(&[&format!("underscores_in_headers: {allowed}")]),
            one_pool(&[&b], "")
        ));
        for (method, body) in [("GET", &b""[..]), ("POST", b"x")] {
            let r = request(g.port, method, "/", &spoof, body);
            assert_eq!(r.status, 200, "{method}");
            assert_eq!(r.echoed("x-kept").as_deref(), Some("k"), "{method}");
            assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{method}");
            let passed =
                r.body.contains("header=X_Forwarded_For: 6.6.6.6\n") && r.body.contains("header=X_Custom: a\n");
            let dropped = !r.body.contains("X_Forwarded_For") && !r.body.contains("X_Custom");
            assert!(
                if allowed { passed } else { dropped },
                "allowed: {allowed}, {method}: {}",
                r.body
            );
        }
    }
}

/// Requests refused for their method or framing, as nginx refuses them
/// (they went upstream): TRACE 405; `*` but for OPTIONS 400 (`OPTIONS *`
/// names no location: 404); a Transfer-Encoding other than one
/// `chunked` 501 (the coding was dropped and the body re-chunked); a
/// Content-Length over 2^63 - 1 400. An HTTP/1.0 request without Host goes
/// upstream with the server's address as its Host (it went with none).
#[test]
fn requests_refused_for_their_method_or_framing_and_http10_without_host() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    let status = |req: &str| {
        raw_exchange(g.port, &[req.as_bytes()], Duration::ZERO)
            .get(9..12)
            .map(str::to_string)
    };
    let cases = [
        ("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
        ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        // A method nginx refuses, a target with a space or a control byte (Pingora would encode them).
        ("get / HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        ("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        ("GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        ("OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "404"),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "501",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\nx",
            "400",
        ),
        // An upgrade with a chunked body: not framed by the strict chunk check, so refused.
        (
            "POST /a HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n\r\n",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\nx",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "200",
        ),
    ];
    for (req, want) in cases {
        assert_eq!(status(req).as_deref(), Some(want), "{req:?}");
    }
    assert_eq!(b.hits(), 1, "only the plain chunked one went upstream");
    let out = raw_exchange(g.port, &[b"GET /old HTTP/1.0\r\n\r\n"], Duration::ZERO);
    assert!(out.contains(&format!("header=Host: {}\n", b.addr)), "{out}");
}

/// A chunked request body must be framed as RFC 9112 §7.1 has it: a bare
/// LF in a chunk extension, or an empty size line, ends the connection
/// (Pingora's parser took the first for part of the extension and the
/// second for the last chunk, so bytes a front proxy forwards as one body
/// were served as a request of their own). A well-framed body is followed
/// by the next request on the connection, pipelined or not.
#[test]
fn chunked_bodies_are_framed_strictly_and_what_follows_is_the_next_request() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let post = |body: &str| format!("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    for body in ["2;\nxx\r\n4c\r\n0\r\n\r\n", "\r\n\r\n", "5;a\nhello\r\n0\r\n\r\n"] {
        let out = raw_exchange(g.port, &[post(body).as_bytes(), smuggled], Duration::from_millis(300));
        assert!(!out.contains("smuggled"), "{body:?}: {out}");
    }
    // Well framed: the next request follows, in the same write or a later one.
    let good = post("3;x=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
    let pipelined = format!("{good}GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for parts in [vec![pipelined.as_bytes()], vec![good.as_bytes(), smuggled]] {
        let out = raw_exchange(g.port, &parts, Duration::from_millis(300));
        assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
        assert!(out.contains("body-length=3\n"), "{out}");
    }
}

/// Odd response heads a server may send: a status line without a reason
/// phrase is passed on (the lean loop's task panicked on it, and the client
/// got nothing); an informational response read together with the final
/// one is dropped and the final one answered at once (the lean loop waited
/// for more bytes until `read_timeout`); a Transfer-Encoding not ending
/// with chunked, next to a Content-Length, is refused with a 502 in both
/// loops (the lean loop sent the client both framings; RFC 9112 6.3).
#[test]
fn odd_response_heads_are_answered_or_refused() {
    for text in answers_in_both_loops(&to_server(raw_server(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"))) {
        assert!(text.starts_with("http/1.1 200 "), "{text}");
    }
    let g = to_server(raw_server(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let start = std::time::Instant::now();
    let text = raw_exchange(
        g.port,
        &[b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok"),
        "{text}"
    );
    assert!(start.elapsed() < Duration::from_secs(2), "answered at once");
    let g = to_server(raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nok",
    ));
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let text = raw_exchange(g.port, &[req], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    }
    // A thousand interim answers in one write: a broken server (502), not a
    // crash of the gateway (the lean loop took a stack frame per 1xx).
    let mut burst = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
    burst.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let g = to_server(raw_server(Box::leak(burst.into_boxed_slice())));
    let get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = raw_exchange(g.port, &[get], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert_eq!(g.get("/nginx/health").status, 200, "the gateway still runs");
}

/// A server's hop-by-hop `Keep-Alive` parameters do not reach the client,
/// in either loop.
#[test]
fn the_servers_keep_alive_parameters_stay_behind() {
    let g = to_server(raw_server(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ));
    for text in answers_in_both_loops(&g) {
        assert!(!text.contains("\r\nkeep-alive:"), "{text}");
    }
}

/// A Content-Length given twice with one value goes on once, both ways
/// (RFC 9110 §8.6), in either loop.
#[test]
fn a_repeated_content_length_goes_on_once() {
    let g = to_server(raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    ));
    for text in answers_in_both_loops(&g) {
        assert_eq!(text.matches("\r\ncontent-length:").count(), 1, "{text}");
    }
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    for cl in ["Content-Length: 1\r\nContent-Length: 1\r\n", "Content-Length: 1, 1\r\n"] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\n{cl}Connection: close\r\n\r\nx");
        let text = raw_exchange(g.port, &[req.as_bytes()], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let got: Vec<&str> = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("header=content-length"))
            .collect();
        assert_eq!(got.len(), 1, "{cl:?}: {text}");
        assert!(got[0].ends_with(": 1"), "{got:?}");
    }
}

/// `Expect: 100-continue` is answered by the gateway, which then reads the
/// body, as nginx does: the client gets its `100` at once (the server here
/// sends none), the field does not go upstream, and the connection is kept.
/// A body over `client_max_body_size` gets its 413 without a `100`.
#[test]
fn expect_100_continue_is_answered_by_the_gateway() {
    use std::io::{BufRead, BufReader, Read, Write};
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], "        client_max_body_size: 10\n"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    for i in 0..2 {
        c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n", "request {i}");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "\r\n");
        c.write_all(b"hello").unwrap();
        let mut head = Vec::new();
        let mut len = 0;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.clone());
        }
        assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
        assert!(
            !head
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with("connection: close")),
            "{head:?}"
        );
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("body-length=5"), "{body}");
        assert!(!body.to_ascii_lowercase().contains("header=expect"), "{body}");
    }
    let text = raw_exchange(
        g.port,
        &[b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

/// A request head over `server.max_request_header_size` (default 32k) gets
/// 431, or 414 when its request line alone is over; the client reads the
/// answer (no reset), nothing reaches the server, and heads within the
/// limit pass whole, also when they come in pieces or fill more than one read.
#[test]
fn request_heads_over_the_size_limit_are_refused() {
    let b = Backend::start("b");
    let g = Gateway::start(&one_pool(&[&b], ""));
    let req = |target: &str, field: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-Big: {field}\r\nConnection: close\r\n\r\n")
    };
    let big = "v".repeat(40_000);
    // Sent whole, and in pieces as a slow client sends them.
    let over = req("/", &big);
    let (a, z) = over.as_bytes().split_at(20_000);
    for parts in [vec![over.as_bytes()], vec![a, z]] {
        let text = raw_exchange(g.port, &parts, Duration::from_millis(50));
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
    }
    let long_target = format!("/{}", "t".repeat(40_000));
    let text = raw_exchange(g.port, &[req(&long_target, "v").as_bytes()], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
    // A 200 KB head, more than a socket buffer: still answered, not reset.
    let huge = req("/", &"v".repeat(200_000));
    let text = raw_exchange(g.port, &[huge.as_bytes()], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(b.hits(), 0, "nothing over the limit went upstream");
    // A head that cannot be a request is answered at once, before its end
    // (the client has not closed; the read gives up after 5 s).
    for junk in [
        &b"GARBAGE\r\n"[..],
        b"GET / HTTP/1.1\r\nX Bad Header\r\n",
        b"\x16\x03\x01\x02\x00\x01",
    ] {
        let text = raw_exchange(g.port, &[junk], Duration::ZERO);
        assert!(text.starts_with("HTTP/1.1 400"), "{junk:?} -> {text}");
    }

    // Within the limit: whole, in pieces (the blank line split between two
    // writes), and a POST whose body follows a head longer than one read.
    let within = "w".repeat(30_000);
    let ok = req("/", &within);
    let cut = ok.len() - 3;
    for parts in [
        vec![ok.as_bytes()],
        vec![&ok.as_bytes()[..100], &ok.as_bytes()[100..cut], &ok.as_bytes()[cut..]],
    ] {
        let text = raw_exchange(g.port, &parts, Duration::from_millis(50));
        assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
        assert!(
            text.to_ascii_lowercase().contains(&format!("header=x-big: {within}\n")),
            "the whole field went upstream"
        );
    }
    let post = format!(
        "POST /p HTTP/1.1\r\nHost: x\r\nX-Big: {within}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let text = raw_exchange(g.port, &[post.as_bytes()], Duration::ZERO);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("body-length=5"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert_eq!(b.hits(), 3);

    // A smaller limit, set by configuration, for the lean loop's requests too.
    let g = Gateway::start(&format!(
        "{}{}",
        server_section(&["max_request_header_size: 2k"]),
        one_pool(&[&b], "")
    ));
    let text = raw_exchange(g.port, &[req("/", &"v".repeat(3_000)).as_bytes()], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let text = raw_exchange(g.port, &[req("/", &"v".repeat(1_500)).as_bytes()], Duration::ZERO);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    assert_eq!(b.hits(), 4);
}

/// Seeded random damage to valid and odd requests (bit flips, bytes added,
/// cut or repeated, stray CR, LF, NUL, colons, framing fields): whatever
/// arrives, the gateway answers with a status of its own or the server's,
/// or closes; it never fails inside (500), never panics, and still serves.
#[test]
fn mutated_requests_never_crash_the_gateway() {
    use std::io::{Read, Write};
    let b = Backend::start("b");
    // The test backend itself drops a connection on bytes it cannot read
    // (a 502): that must not take it out of the pool for the next requests.
    let g = Gateway::start(&one_pool(&[&b], "").replace(
        &format!("      - address: {}\n", b.addr),
        &format!("      - address: {}\n        max_fails: 0\n", b.addr),
    ));
    let bases: [&[u8]; 6] = [
        b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX: a\r\n b\r\n\r\n",
        b"HEAD http://x/ HTTP/1.0\r\n\r\n",
    ];
    let inserts: [&[u8]; 8] = [
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b"\0",
        b" ",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let mut req = bases[next(bases.len())].to_vec();
        for _ in 0..1 + next(5) {
            let at = next(req.len() + 1);
            match next(5) {
                0 if at < req.len() => req[at] ^= 1 << next(8),
                1 => req
                    .splice(at..at, inserts[next(inserts.len())].iter().copied())
                    .for_each(drop),
                2 => req.truncate(at),
                3 if at < req.len() => {
                    let end = (at + 1 + next(30)).min(req.len());
                    let piece = req[at..end].to_vec();
                    req.splice(at..at, piece).for_each(drop);
                }
                _ => req.insert(at, next(256) as u8),
            }
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).expect("still accepting");
        // A request cut short waits for the rest, as in nginx: counted as "waiting".
        s.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
        let _ = s.write_all(&req);
        let mut got = [0u8; 64];
        let (n, waiting) = match s.read(&mut got) {
            Ok(n) => (n, false),
            Err(e) => (
                0,
                matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            ),
        };
        let text = String::from_utf8_lossy(&got[..n]);
        let status = match text.strip_prefix("HTTP/1.") {
            Some(rest) => rest.get(2..5).unwrap_or("?").to_string(),
            None if waiting => "waiting".to_string(),
            None if n == 0 => "closed".to_string(),
            None => panic!("not an HTTP answer to {:?}: {text:?}", String::from_utf8_lossy(&req)),
        };
        assert_ne!(status, "500", "{:?}", String::from_utf8_lossy(&req));
        *statuses.entry(status).or_default() += 1;
    }
    let count = |s: &str| statuses.get(s).copied().unwrap_or(0);
    assert!(
        count("400") > 100 && count("200") > 5,
        "refused, and some served: {statuses:?}"
    );
    assert_eq!(g.get("/").status, 200, "still serving: {statuses:?}");
    assert!(!g.stderr().contains("panicked"), "{}", g.stderr());
}

#[test]
fn slow_request_body_hits_the_client_body_timeout() {
    use std::io::{Read, Write};
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "{}{}",
        server_section(&["client_body_timeout: 500ms"]),
        one_pool(&[&b], "")
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-a-bit")
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "cut after the body timeout, not 60s: {:?}",
        t.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
        "{text}"
    );
    assert_eq!(g.get("/").status, 200, "still serving");
}

#[test]
fn client_header_timeout_closes_a_connection_that_sends_no_header() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let b = Backend::start("a");
    let silent_for = |g: &Gateway, wait: Duration| -> Option<Duration> {
        // Some(t): the gateway closed the silent connection after t; None: still open after `wait`.
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let t = Instant::now();
        match s.read(&mut [0u8; 64]) {
            Ok(0) => Some(t.elapsed()),
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(_) => None,
        }
    };
    let default = Gateway::start(&one_pool(&[&b], ""));
    assert_eq!(silent_for(&default, Duration::from_millis(1500)), None, "default: 60 s");

    let g = Gateway::start(&format!(
        "{}{}",
        server_section(&["client_header_timeout: 1s"]),
        one_pool(&[&b], "")
    ));
    let closed = silent_for(&g, Duration::from_secs(5)).expect("closed by client_header_timeout");
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
        "{closed:?}"
    );

    // A client that keeps sending within the limit is served.
    let parts: [&[u8]; 2] = [b"GET / HTTP/1.1\r\nHost: x\r\n", b"Connection: close\r\n\r\n"];
    let out = raw_exchange(g.port, &parts, Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // The limit bounds the whole header, as nginx's does: one sent a piece
    // every 400 ms, each read well within 1 s, is cut once 1 s has passed.
    let trickle: Vec<&[u8]> = vec![
        b"GET / HTTP/1.1\r\n",
        b"Host: x\r\n",
        b"X-A: a\r\n",
        b"X-B: b\r\n",
        b"X-C: c\r\n",
        b"\r\n",
    ];
    let hits = b.hits();
    let out = raw_exchange(g.port, &trickle, Duration::from_millis(400));
    assert!(out.is_empty(), "{out}");
    assert_eq!(b.hits(), hits, "never went upstream");
}

/// On an h2c listener, the first bytes tell HTTP/2's preface from HTTP/1:
/// HTTP/1 takes the same loop, and limits, as on any listener (Pingora
/// waited without a limit for 24 bytes to compare: a silent connection, a
/// partial request, even a whole `GET / HTTP/1.0` of 18 bytes sat there).
/// HTTP/2 must send its preface within `client_header_timeout`, and a
/// connection with no stream open closes after `keepalive_timeout`.
#[test]
fn h2c_listeners_bound_silent_connections_and_serve_short_http1_requests() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let b = Backend::start("b");
    let g = Gateway::start(&format!(
        "{}listeners:\n  - {{ listen: \"127.0.0.1:{{PORT}}\", h2c: true }}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        server_section(&["client_header_timeout: 1s", "keepalive_timeout: 2s"]),
        b.addr
    ));
    // Sends `first`, then reads to the end: what came, and when the gateway closed (None: not in 6 s).
    let after = |first: &[u8]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        s.write_all(first).unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        let closed = s.read_to_end(&mut got).ok().map(|_| t.elapsed());
        (got, closed)
    };
    for silent in [&b""[..], b"GE", b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
        let (_, closed) = after(silent);
        let closed = closed.unwrap_or_else(|| panic!("{silent:?}: still open"));
        assert!(closed < Duration::from_secs(3), "{silent:?}: {closed:?}");
    }
    let (got, _) = after(b"GET / HTTP/1.0\r\n\r\n");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    // The preface and an empty SETTINGS frame, then no stream: closed after keepalive_timeout.
    let (got, closed) = after(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0");
    assert_eq!(got.get(3), Some(&4), "the gateway's SETTINGS frame");
    let closed = closed.expect("closed while idle");
    assert!(
        closed > Duration::from_millis(1500) && closed < Duration::from_secs(4),
        "{closed:?}"
    );
    // HTTP/2 with prior knowledge still works.
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-w", "\nversion=%{http_version}"])
        .arg(format!("http://127.0.0.1:{}/h2", g.port))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("version=2") && text.contains("request=GET /h2 "),
        "{text}"
    );
}

#[test]
fn idle_keepalive_connections_are_kept_then_closed_by_keepalive_timeout() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let b = Backend::start("a");
    // One request, then idle for `idle`, then (if still open) a second request on the same connection.
    let second_after = |g: &Gateway, idle: Duration| -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut answers = Vec::new();
        for round in 0..2 {
            if round == 1 {
                std::thread::sleep(idle);
            }
            if s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").is_err() {
                return None;
            }
            let mut status = String::new();
            if r.read_line(&mut status).unwrap_or(0) == 0 {
                return None; // closed by the gateway
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            answers.push(status.trim().to_string());
        }
        Some(answers.join(" | "))
    };
    let conf = |lean: &str| {
        format!(
            "{}{}",
            server_section(&["keepalive_timeout: 1s", lean]),
            one_pool(&[&b], "")
        )
    };
    for lean in ["lean_keepalive: true", "lean_keepalive: false"] {
        let g = Gateway::start(&conf(lean));
        let t = Instant::now();
        let kept = second_after(&g, Duration::from_millis(400));
        assert_eq!(
            kept.as_deref(),
            Some("HTTP/1.1 200 X | HTTP/1.1 200 X"),
            "lean {lean:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(
            second_after(&g, Duration::from_millis(1800)),
            None,
            "closed after 1s idle, lean {lean:?}"
        );
    }
}

#[test]
fn fast_shutdown_keeps_every_access_log_line() {
    let b = Backend::start("b");
    let mut g = Gateway::start(&one_pool(&[&b], ""));
    let mut c = Client::connect(g.port).unwrap();
    for i in 0..300 {
        assert_eq!(c.send("GET", &format!("/line/{i}"), &[], b"").unwrap().status, 200);
    }
    // SIGINT right away: the last lines are still in the log buffer (flushed every 100 ms).
    g.signal("INT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "portico did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = g.access_log().lines().filter(|l| l.contains("GET /line/")).count();
    assert_eq!(lines, 300);
}

/// CPU ticks (user + system) of each thread of process `pid` whose name
/// starts with `prefix` (Linux `/proc`).
fn thread_ticks(pid: u32, prefix: &str) -> Vec<u64> {
    let mut ticks = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // The fields after the name, which is in parentheses: utime and stime are the 12th and 13th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        ticks.push(f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap());
    }
    ticks
}

#[test]
fn every_worker_thread_of_a_listener_serves_connections() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    for stealing in [false, true] {
        let yaml = format!(
            "{}{}",
            server_section(&["threads: 2", &format!("work_stealing: {stealing}")]),
            one_pool(&[&a, &b], "")
        );
        let g = Gateway::start(&yaml);
        // 32 keep-alive clients at once, each on its own connection.
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let port = g.port;
                std::thread::spawn(move || {
                    let mut c = Client::connect(port).unwrap();
                    let mut backends = std::collections::HashSet::new();
                    for _ in 0..400 {
                        let r = c.send("GET", "/", &[], b"").unwrap();
                        assert_eq!(r.status, 200, "{r:?}");
                        backends.insert(r.backend());
                    }
                    backends.len()
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), 2, "each connection is balanced over both servers");
        }
        if stealing {
            continue; // the work-stealing scheduler decides for itself where tasks run
        }
        // Without work stealing each connection is served where it was handed to:
        // both threads must have had connections. The listener's threads are named
        // after it ("listener 127.0.0.1:port", cut to 15 bytes by Linux).
        let ticks = thread_ticks(g.child.id(), "listener ");
        assert_eq!(ticks.len(), 2, "two worker threads: {ticks:?}");
        let total: u64 = ticks.iter().sum();
        // 32 connections spread at random: fewer than a tenth of the work on one
        // thread would take 3 or fewer of the 32 there (about 1 chance in 10^6).
        assert!(
            ticks.iter().all(|&t| t * 10 >= total),
            "one thread did (nearly) all the work: {ticks:?} ticks"
        );
    }
}
