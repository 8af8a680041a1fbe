//! `portico --import-nginx`: an nginx configuration of the kind users run
//! (an upstream with least_conn, the WebSocket map, forwarding headers,
//! host routing, a health location, file serving that has no equivalent)
//! is translated, what is not translated is named with its line, and the
//! gateway started on the result serves as nginx would have.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn import(nginx: &str) -> (bool, String, String) {
    let dir = temp_dir();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, nginx).unwrap();
    let out = Command::new(portico_bin())
        .arg("--import-nginx")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn an_imported_nginx_configuration_serves_as_nginx_did() {
    let (a1, a2, b) = (Backend::start("a1"), Backend::start("a2"), Backend::start("b"));
    let port = free_port();
    let nginx = format!(
        r#"events {{
    worker_connections 1024;
}}
http {{
    include mime.types;
    upstream app {{
        least_conn;
        server {a1} max_fails=3 fail_timeout=10s;
        server {a2} max_fails=3 fail_timeout=10s;
        keepalive 16;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Env "staging";
            proxy_next_upstream error timeout http_502;
            proxy_pass http://app;
        }}
        location = /nginx/health {{ return 200 'ok'; }}
        location /old {{ return 301 https://$host/new; }}
        location /private {{ allow 10.0.0.0/8; deny all; proxy_pass http://app; }}
        location /static/ {{ root /var/www; }}
        location /api/ {{ proxy_pass http://app/v2/; }}
        location /limited/ {{ limit_req zone=one burst=1 nodelay; proxy_pass http://app; }}
        location /limited-too/ {{ limit_req zone=one burst=5 nodelay; proxy_pass http://app; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name b.example.com;
        location / {{ proxy_pass http://{b}/; add_header X-Site b; }}
    }}
    limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
}}
"#,
        a1 = a1.addr,
        a2 = a2.addr,
        b = b.addr
    );
    let (ok, yaml, notes) = import(&nginx);
    assert!(ok, "{notes}");
    // What has no equivalent is named with its line; what Portico does anyway is not.
    for expected in [
        "FILE:2: worker_connections 1024: ",
        "FILE:5: include mime.types: ",
        "FILE:33: root /var/www: Portico serves no files",
        "FILE:33: location /static/: neither proxy_pass nor return",
    ] {
        assert!(notes.contains(expected), "{expected:?} not in\n{notes}");
    }
    assert_eq!(notes.matches("FILE:").count(), 4, "{notes}");
    assert!(notes.contains("the imported configuration passes -t"), "{notes}");
    assert!(yaml.contains("algorithm: least_conn"), "{yaml}");

    // Served on a port of the test's choosing, as any configuration the tests start.
    let g = Gateway::start(&yaml.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:{PORT}"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = g.get("/");
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains("header=X-Env: staging\n"),
            "as written in the file: {}",
            r.body
        );
        *seen.entry(r.backend()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both servers of the pool serve: {seen:?}");
    let r = g.get_host("localhost", "/old");
    assert_eq!((r.status, r.header("location")), (301, Some("https://localhost/new")));
    assert_eq!(g.get("/private").status, 403, "127.0.0.1 is not in 10.0.0.0/8");
    assert_eq!(g.get("/static/app.js").status, 404);
    let r = g.get_host("b.example.com", "/x");
    assert_eq!(
        (r.status, r.backend().as_str(), r.header("x-site")),
        (200, "b", Some("b"))
    );
    assert_eq!(g.get("/nginx/health").status, 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a1.hits() + a2.hits(), 20);
    // The proxy_pass URI part takes the place of the location's prefix, as in nginx.
    let r = g.get("/api/users?id=7");
    assert!(r.body.contains("request=GET /v2/users?id=7 HTTP/1.1"), "{}", r.body);
    // limit_req: the rate (1 a minute) and a burst of 1 (nodelay), then nginx's 503 at once.
    let statuses: Vec<u16> = (0..3).map(|_| g.get("/limited/x").status).collect();
    assert_eq!(statuses, [200, 200, 503]);
    // The other location using zone one shares its count, with its own burst (5: 6 in all).
    let statuses: Vec<u16> = (0..5).map(|_| g.get("/limited-too/x").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 503]);
}

#[test]
fn a_file_that_cannot_be_read_as_nginx_configuration_is_refused_with_its_line() {
    let (ok, yaml, notes) = import("http {\n  server {\n    return 200 'unclosed;\n  }\n}\n");
    assert!(!ok);
    assert!(yaml.is_empty());
    assert!(
        notes.contains("FILE:3: the string opened here with ' is never closed"),
        "{notes}"
    );
    // Slips nginx users make are read past and named.
    let (ok, yaml, notes) = import("server {\n  listen 8080;\n  location / { proxy_pass http://127.0.0.1:9; }\n");
    assert!(ok, "{notes}");
    assert!(
        notes.contains("FILE:1: (syntax): the block opened here is never closed"),
        "{notes}"
    );
    assert!(yaml.contains("listen: \"0.0.0.0:8080\""), "{yaml}");
}

#[test]
fn an_imported_stream_block_balances_tcp_connections() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (port, tp, tp2) = (free_port(), free_port(), free_port());
    let nginx = format!(
        r#"http {{
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}
}}
stream {{
    proxy_connect_timeout 2s;
    upstream app {{
        server {a} max_fails=2;
        server {b};
    }}
    server {{
        listen 127.0.0.1:{tp};
        proxy_pass app;
        proxy_timeout 5m;
    }}
    server {{ listen 127.0.0.1:5353 udp; proxy_pass 127.0.0.1:53; }}
    server {{ listen 127.0.0.1:{tp2}; proxy_pass app; allow 10.0.0.0/8; deny all; }}
}}
"#,
        a = a.addr,
        b = b.addr
    );
    let (ok, yaml, notes) = import(&nginx);
    assert!(ok, "{notes}");
    let udp = "FILE:15: listen 127.0.0.1:5353 udp: Portico does not balance UDP";
    assert!(notes.contains(udp), "{notes}");
    assert_eq!(notes.matches("FILE:").count(), 1, "{notes}");
    assert!(notes.contains("the imported configuration passes -t"), "{notes}");
    assert!(yaml.contains("connect_timeout: 2s\n    idle_timeout: 5m\n"), "{yaml}");
    let settings: String = yaml.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!settings.contains(":5353"), "left out: {yaml}");
    assert!(yaml.contains("    allow: [\"10.0.0.0/8\"]\n"), "{yaml}");

    // HTTP through the TCP listener: one connection each, round robin (the
    // wait for the listener took a turn too, so either server may come first).
    let g = Gateway::start(&yaml.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:{PORT}"));
    g.wait_listening(tp);
    let names: Vec<String> = (0..4).map(|_| request(tp, "GET", "/", &[], b"").backend()).collect();
    assert!(
        names == ["a", "b", "a", "b"] || names == ["b", "a", "b", "a"],
        "{names:?}"
    );
    // `allow 10.0.0.0/8; deny all;`: 127.0.0.1 is refused, the servers never see it.
    let hits = a.hits() + b.hits();
    assert!(try_request(tp2, "GET", "/", &[], b"").is_err());
    assert_eq!(a.hits() + b.hits(), hits);
}
