//! A listener's open client connections: the `client_connections_open`
//! gauge, and `max_connections`, at which new connections wait in the
//! kernel's backlog while idle keep-alive connections are closed first.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "conn-token";

fn start(b: &Backend, server: &[&str], admin: u16) -> Gateway {
    Gateway::start(&format!(
        "{}admin: {{ listen: \"127.0.0.1:{admin}\", token: {TOKEN} }}\n\
         listeners:\n  - {{ listen: \"127.0.0.1:{{PORT}}\", max_connections: 2 }}\n\
         upstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\n\
         virtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        server_section(server),
        b.addr
    ))
}

/// The gauge for the gateway's listener.
fn open(admin: u16, port: u16) -> i64 {
    let auth = format!("Bearer {TOKEN}");
    let m = request(admin, "GET", "/metrics", &[("Authorization", auth.as_str())], b"").body;
    let name = format!("portico_client_connections_open{{listener=\"127.0.0.1:{port}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

fn wait_open(admin: u16, port: u16, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while open(admin, port) != want {
        assert!(
            Instant::now() < deadline,
            "open connections: {} (want {want})",
            open(admin, port)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request written on a new connection, its answer not read yet.
fn ask(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    s
}

/// Whether an answer's first bytes come within `d`.
fn answered_within(s: &mut TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 12];
    matches!(s.read(&mut b), Ok(n) if n > 0 && b.starts_with(b"HTTP/1.1 200"))
}

#[test]
fn at_max_connections_a_new_connection_waits_until_one_closes() {
    let b = Backend::start("b");
    let admin = free_port();
    // Nothing is parked: every open connection is a busy one that cannot be closed.
    let g = start(&b, &["idle_park_after: 0s"], admin);
    let mut first = Client::connect(g.port).unwrap();
    let mut second = Client::connect(g.port).unwrap();
    assert_eq!(first.send("GET", "/1", &[], b"").unwrap().status, 200);
    assert_eq!(second.send("GET", "/2", &[], b"").unwrap().status, 200);
    wait_open(admin, g.port, 2);
    // The third connects (the kernel's backlog) but waits for its answer.
    let mut third = ask(g.port, "/3");
    assert!(
        !answered_within(&mut third, Duration::from_millis(700)),
        "served past the bound"
    );
    assert_eq!(b.hits(), 2);
    // One closes: the third gets its turn.
    drop(first);
    assert!(
        answered_within(&mut third, Duration::from_secs(3)),
        "served once a place was free"
    );
    assert_eq!(
        second.send("GET", "/2b", &[], b"").unwrap().status,
        200,
        "the others are untouched"
    );
    wait_open(admin, g.port, 2);
    assert!(g.stderr().contains("max_connections (2) reached"), "{}", g.stderr());
    drop((second, third));
    wait_open(admin, g.port, 0);

    // The bound is the listener's: a reload that changes it is refused, and says why.
    let conf = std::fs::read_to_string(&g.conf).unwrap();
    std::fs::write(&g.conf, conf.replace("max_connections: 2", "max_connections: 3")).unwrap();
    g.signal("HUP");
    g.wait_stderr("listeners changed");
    assert!(g.stderr().contains("(max_connections 2)\"] ->"), "{}", g.stderr());
}

#[test]
fn at_max_connections_idle_keepalive_connections_close_first() {
    let b = Backend::start("b");
    let admin = free_port();
    let g = start(&b, &["idle_park_after: 100ms"], admin);
    let mut idle: Vec<Client> = (0..2).map(|_| Client::connect(g.port).unwrap()).collect();
    for c in &mut idle {
        assert_eq!(c.send("GET", "/idle", &[], b"").unwrap().status, 200);
    }
    std::thread::sleep(Duration::from_millis(400)); // parked by now
    wait_open(admin, g.port, 2);
    let start = Instant::now();
    let mut third = ask(g.port, "/new");
    assert!(
        answered_within(&mut third, Duration::from_secs(2)),
        "an idle connection made room"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    let closed = idle
        .iter_mut()
        .map(|c| c.closed_within(Duration::from_millis(500)))
        .filter(|&x| x)
        .count();
    assert_eq!(closed, 1, "one idle connection closed, as many as needed");
    wait_open(admin, g.port, 2);
}
