//! TCP (layer 4) listeners: real echo servers on 127.0.0.1, the real
//! gateway, real client sockets. Balancing, relaying both ways with
//! half-closes, failover on connection failures, least_conn and ip_hash,
//! the idle timeout, the PROXY protocol, reloads and graceful shutdown.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TCP server that greets each connection with its name and a newline,
/// then echoes what it reads until the client ends its sending, and then
/// ends its own.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    fn start(name: &str) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, greeting) = (accepted.clone(), format!("{name}\n"));
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                count.fetch_add(1, SeqCst);
                let greeting = greeting.clone();
                std::thread::spawn(move || {
                    let _ = c.write_all(greeting.as_bytes());
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = c.shutdown(Shutdown::Write);
                });
            }
        });
        Echo { addr, accepted }
    }
}

/// An address nothing listens on (bound, then closed).
fn refusing() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A connection to a TCP listener, once it listens (its service starts
/// beside the HTTP listener the gateway's start waits for).
fn dial(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("tcp listener {port}: {e}"),
        }
    }
}

/// The greeting line a connection starts with: the server's name.
fn greeting(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Connect, send `msg`, end the sending, read to the end: (server name, the rest).
fn exchange(port: u16, msg: &[u8]) -> (String, Vec<u8>) {
    let (_, name, rest) = exchange_from(port, msg);
    (name, rest)
}

/// [`exchange`], with the client's own port first.
fn exchange_from(port: u16, msg: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = dial(port);
    let client_port = s.local_addr().unwrap().port();
    let name = greeting(&mut s);
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    (client_port, name, rest)
}

fn servers(list: &[SocketAddr]) -> String {
    list.iter().map(|a| format!("      - address: {a}\n")).collect()
}

/// A gateway with an HTTP listener on `{PORT}` (its start waits for it),
/// the `tcp:` entries given, and the pools given.
fn gateway(tcp: &str, upstreams: &str) -> Gateway {
    gateway_with(&server_section(&[]), tcp, upstreams)
}

fn gateway_with(server: &str, tcp: &str, upstreams: &str) -> Gateway {
    Gateway::start(&format!(
        "{server}listeners:\n  - listen: 127.0.0.1:{{PORT}}\ntcp:\n{tcp}upstreams:\n{upstreams}"
    ))
}

/// The access-log line of the `n`th connection to TCP listener `port`, waiting for the log's writer.
fn log_line(g: &Gateway, port: u16, n: usize) -> String {
    let needle = format!("\"TCP 127.0.0.1:{port}\"");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = g.access_log();
        if let Some(l) = log.lines().filter(|l| l.contains(&needle)).nth(n) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no line {n} for {needle} in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The access-log line of a connection to TCP listener `port` from `client`
/// (the line's start), waiting for the log's writer.
fn log_line_from(g: &Gateway, port: u16, client: &str) -> String {
    let needle = format!("\"TCP 127.0.0.1:{port}\"");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = g.access_log();
        if let Some(l) = log.lines().find(|l| l.contains(&needle) && l.starts_with(client)) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line from {client} for {needle} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_connections_are_balanced_and_relayed_both_ways() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let (tp, ap) = (free_port(), free_port());
    let g = Gateway::start(&format!(
        "{}admin:\n  listen: 127.0.0.1:{ap}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\ntcp:\n  - listen: 127.0.0.1:{tp}\n    proxy_pass: echo\nupstreams:\n  echo:\n    servers:\n{}",
        server_section(&[]),
        servers(&[a.addr, b.addr])
    ));
    // Round robin, one connection each in turn.
    let names: Vec<String> = (0..4).map(|_| exchange(tp, b"ping\n").0).collect();
    assert_eq!(names, ["a", "b", "a", "b"]);
    assert_eq!((a.accepted.load(SeqCst), b.accepted.load(SeqCst)), (2, 2));

    // 1 MiB each way, intact, while both directions are busy; the client
    // then ends its sending and still reads everything the server sends back.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut s = dial(tp);
    assert_eq!(greeting(&mut s), "a");
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(10_000) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());

    // Logged like nginx's stream log, in the access log's shape.
    let line = log_line(&g, tp, 4);
    let want = format!("\"TCP 127.0.0.1:{tp}\" 200 {} \"-\" \"-\" {} ", data.len() + 2, a.addr);
    assert!(line.starts_with("127.0.0.1 - - [") && line.contains(&want), "{line}");
    assert!(
        line.ends_with(&format!(" rx={} tx={}", data.len(), data.len() + 2)),
        "{line}"
    );

    // Counted.
    let metrics = request(ap, "GET", "/metrics", &[], b"").body;
    let relayed =
        format!("portico_tcp_connections_total{{listener=\"127.0.0.1:{tp}\",pool=\"echo\",status=\"200\"}} 5");
    assert!(metrics.contains(&relayed), "{metrics}");
    let received = format!(
        "portico_tcp_bytes_total{{direction=\"received\",listener=\"127.0.0.1:{tp}\"}} {}",
        4 * 5 + data.len()
    );
    assert!(metrics.contains(&received), "{metrics}");
    assert!(metrics.contains("portico_tcp_connections_active 0"), "{metrics}");
}

#[test]
fn a_server_that_refuses_is_passed_over_and_marked_down() {
    let live = Echo::start("live");
    let dead = refusing();
    let (tp, none) = (free_port(), free_port());
    let g = gateway(
        &format!(
            "  - listen: 127.0.0.1:{tp}\n    proxy_pass: mixed\n  - listen: 127.0.0.1:{none}\n    proxy_pass: gone\n    connect_timeout: 1s\n"
        ),
        &format!(
            "  mixed:\n    servers:\n{}  gone:\n    servers:\n{}",
            servers(&[dead, live.addr]),
            servers(&[refusing(), refusing()])
        )
    );
    // No client loses its connection to the server that refuses.
    for _ in 0..4 {
        assert_eq!(exchange(tp, b"x"), ("live".to_string(), b"x".to_vec()));
    }
    // The first tried both; the refusing server was then marked down (max_fails 1) and skipped.
    let first = log_line(&g, tp, 0);
    assert!(
        first.contains(&format!(" 200 6 \"-\" \"-\" {dead}, {} ", live.addr)),
        "{first}"
    );
    for n in 1..4 {
        let line = log_line(&g, tp, n);
        assert!(line.contains(&format!("\"-\" \"-\" {} ", live.addr)), "{line}");
    }
    assert!(
        g.stderr().contains(&format!("server {dead} marked down")),
        "{}",
        g.stderr()
    );

    // No server to be had: the connection closes at once, logged as nginx does (502).
    let started = Instant::now();
    let mut s = dial(none);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty() && started.elapsed() < Duration::from_secs(2));
    let line = log_line(&g, none, 0);
    assert!(line.contains(&format!("\"TCP 127.0.0.1:{none}\" 502 0 ")), "{line}");
}

#[test]
fn least_conn_counts_open_connections_and_ip_hash_keeps_a_client() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let (lc, ih) = (free_port(), free_port());
    let _g = gateway(
        &format!("  - listen: 127.0.0.1:{lc}\n    proxy_pass: lc\n  - listen: 127.0.0.1:{ih}\n    proxy_pass: ih\n"),
        &format!(
            "  lc:\n    algorithm: least_conn\n    servers:\n{0}  ih:\n    algorithm: ip_hash\n    servers:\n{0}",
            servers(&[a.addr, b.addr])
        ),
    );
    // One connection held open on `a`: every short one meanwhile goes to `b`.
    let mut held = dial(lc);
    assert_eq!(greeting(&mut held), "a");
    for _ in 0..3 {
        assert_eq!(exchange(lc, b"").0, "b");
    }
    drop(held);
    // One client address, one server.
    let first = exchange(ih, b"").0;
    for _ in 0..5 {
        assert_eq!(exchange(ih, b"").0, first);
    }
}

#[test]
fn a_quiet_tcp_connection_is_closed_after_the_idle_timeout() {
    let e = Echo::start("e");
    let tp = free_port();
    let g = gateway(
        &format!("  - listen: 127.0.0.1:{tp}\n    proxy_pass: e\n    idle_timeout: 400ms\n"),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr])),
    );
    // Sending every 150 ms for 1.2 s, three times the timeout: kept, and every byte comes back.
    let mut busy = dial(tp);
    assert_eq!(greeting(&mut busy), "e");
    for i in 0..8u8 {
        busy.write_all(&[b'a' + i]).unwrap();
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'a' + i);
        std::thread::sleep(Duration::from_millis(150));
    }
    // Silent: closed once 400 ms pass with nothing either way.
    let mut quiet = dial(tp);
    assert_eq!(greeting(&mut quiet), "e");
    let started = Instant::now();
    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest).unwrap();
    let took = started.elapsed();
    assert!(rest.is_empty());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let line = log_line(&g, tp, 1);
    assert!(line.contains(" 200 2 "), "{line}");
}

#[test]
fn the_proxy_protocol_tells_the_server_the_client_address() {
    let e = Echo::start("e");
    let (v1, v2) = (free_port(), free_port());
    let _g = gateway(
        &format!(
            "  - listen: 127.0.0.1:{v1}\n    proxy_pass: e\n    proxy_protocol: v1\n  - listen: 127.0.0.1:{v2}\n    proxy_pass: e\n    proxy_protocol: v2\n"
        ),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr]))
    );
    // The echo server sends back what it read: the header, then the client's bytes.
    let (client_port, name, back) = exchange_from(v1, b"data");
    assert_eq!(name, "e");
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {v1}\r\ndata");
    assert_eq!(String::from_utf8_lossy(&back), want);

    let (client_port, name, back) = exchange_from(v2, b"data");
    assert_eq!(name, "e");
    let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\0\0\x01\x7f\0\0\x01".to_vec();
    want.extend_from_slice(&client_port.to_be_bytes());
    want.extend_from_slice(&v2.to_be_bytes());
    want.extend_from_slice(b"data");
    assert_eq!(back, want);
}

#[test]
fn a_proxy_header_received_names_the_client_for_rules_logs_and_the_header_sent_on() {
    let e = Echo::start("e");
    let (pp, denied) = (free_port(), free_port());
    let g = gateway(
        &format!(
            "  - listen: 127.0.0.1:{pp}\n    proxy_pass: e\n    accept_proxy_protocol: true\n    proxy_protocol: v1\n\
             \x20 - listen: 127.0.0.1:{denied}\n    proxy_pass: e\n    accept_proxy_protocol: true\n    deny: [198.51.100.0/24]\n"
        ),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr])),
    );
    // A version 2 header, then the client's bytes in the same write: the server gets the
    // header's addresses in the version 1 header sent on, then the bytes.
    let v2 = |src: [u8; 4], port: u16| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h
    };
    // What the echo server sent back, once the client has ended its sending.
    let echoed = |mut s: TcpStream| {
        assert_eq!(greeting(&mut s), "e");
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        String::from_utf8_lossy(&back).into_owned()
    };
    let mut s = dial(pp);
    s.write_all(&[v2([198, 51, 100, 4], 5555), b"data".to_vec()].concat())
        .unwrap();
    assert_eq!(echoed(s), "PROXY TCP4 198.51.100.4 10.0.0.1 5555 443\r\ndata");
    let line = log_line_from(&g, pp, "198.51.100.4 ");
    assert!(line.contains(" 200 "), "{line}");

    // A version 1 header split over two writes.
    let mut s = dial(pp);
    s.write_all(b"PROXY TCP4 192.0.2.8 10.0.0.1 6").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"000 80\r\nmore").unwrap();
    assert_eq!(echoed(s), "PROXY TCP4 192.0.2.8 10.0.0.1 6000 80\r\nmore");

    // No header: closed before any server, logged 400.
    let accepted = e.accepted.load(SeqCst);
    let mut s = dial(pp);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut back = Vec::new();
    assert_eq!(s.read_to_end(&mut back).unwrap(), 0);
    let line = log_line_from(&g, pp, "127.0.0.1 ");
    assert!(line.contains(" 400 "), "{line}");
    assert!(
        g.stderr().contains("PROXY protocol header from 127.0.0.1"),
        "{}",
        g.stderr()
    );

    // Allow/deny rules see the header's client, not the balancer in front.
    let mut s = dial(denied);
    s.write_all(&[v2([198, 51, 100, 9], 1), b"x".to_vec()].concat())
        .unwrap();
    assert_eq!(s.read_to_end(&mut back).unwrap(), 0);
    let line = log_line_from(&g, denied, "198.51.100.9 ");
    assert!(line.contains(" 403 "), "{line}");
    let mut s = dial(denied);
    s.write_all(&[v2([192, 0, 2, 1], 1), b"y".to_vec()].concat()).unwrap();
    assert_eq!(greeting(&mut s), "e");
    assert_eq!(
        e.accepted.load(SeqCst),
        accepted + 1,
        "only the allowed client reached the server"
    );
}

#[test]
fn connection_limits_close_the_excess_at_once_and_free_up_as_connections_end() {
    let e = Echo::start("e");
    let (total, each) = (free_port(), free_port());
    let g = gateway(
        &format!(
            "  - listen: 127.0.0.1:{total}\n    proxy_pass: e\n    max_connections: 2\n\
             \x20 - listen: 127.0.0.1:{each}\n    proxy_pass: e\n    accept_proxy_protocol: true\n    max_connections_per_client: 1\n"
        ),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr])),
    );
    // Closed at once, before any server: the read finds the end (or a reset).
    let refused = |s: &mut TcpStream| {
        let mut b = [0u8; 16];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    let (mut a, mut b) = (dial(total), dial(total));
    assert_eq!((greeting(&mut a), greeting(&mut b)), ("e".into(), "e".into()));
    let mut c = dial(total);
    assert!(refused(&mut c), "a third connection over max_connections: 2");
    assert!(log_line_from(&g, total, "127.0.0.1 ").contains(" 503 "));
    assert_eq!(e.accepted.load(SeqCst), 2);
    // A new connection is let in (within 3 s) once a closed one is counted out.
    let admitted_again = |connect: &dyn Fn() -> TcpStream, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while refused(&mut connect()) {
            assert!(Instant::now() < deadline, "{what} was never counted out");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    drop(a);
    admitted_again(&|| dial(total), "the closed connection");
    b.write_all(b"x").unwrap();

    // Per client, as the PROXY header names it.
    let from = |ip: &str| {
        let mut s = dial(each);
        write!(s, "PROXY TCP4 {ip} 127.0.0.1 1000 {each}\r\n").unwrap();
        s
    };
    let mut one = from("192.0.2.1");
    assert_eq!(greeting(&mut one), "e");
    assert!(refused(&mut from("192.0.2.1")), "a second connection from 192.0.2.1");
    assert!(log_line_from(&g, each, "192.0.2.1 ").contains(" 503 "));
    let mut other = from("192.0.2.2");
    assert_eq!(greeting(&mut other), "e", "another client is not held back");
    one.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    one.read_to_end(&mut rest).unwrap();
    admitted_again(&|| from("192.0.2.1"), "192.0.2.1's first connection");
}

#[test]
fn a_reload_moves_new_tcp_connections_and_a_shutdown_lets_open_ones_finish() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let tp = free_port();
    let pools = format!(
        "  one:\n    servers:\n{}  two:\n    servers:\n{}",
        servers(&[a.addr]),
        servers(&[b.addr])
    );
    let tcp = |pool: &str| format!("  - listen: 127.0.0.1:{tp}\n    proxy_pass: {pool}\n");
    // A grace period long enough to tell "waited for the open connection" from "sat it out".
    let server = server_section(&[]).replace("grace_period: 1s", "grace_period: 10s");
    let mut g = gateway_with(&server, &tcp("one"), &pools);
    let mut open = dial(tp);
    assert_eq!(greeting(&mut open), "a");

    // Reloaded to the other pool: new connections go there, the open one stays where it is.
    let conf = std::fs::read_to_string(&g.conf).unwrap();
    std::fs::write(&g.conf, conf.replace("proxy_pass: one", "proxy_pass: two")).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while exchange(tp, b"").0 != "b" {
        assert!(Instant::now() < deadline, "reload did not take: {}", g.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    open.write_all(b"still").unwrap();
    let mut five = [0u8; 5];
    open.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"still");

    // A new TCP listener needs a binary upgrade: the reload is refused, the running config stays.
    let conf = std::fs::read_to_string(&g.conf).unwrap();
    let extra = format!("tcp:\n  - listen: 127.0.0.1:{}\n    proxy_pass: one\n", free_port());
    std::fs::write(&g.conf, conf.replacen("tcp:\n", &extra, 1)).unwrap();
    g.signal("HUP");
    g.wait_stderr("listeners changed");
    assert_eq!(exchange(tp, b"").0, "b");

    // SIGTERM: no new connection is taken, the open one goes on until it ends.
    g.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", tp)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    open.write_all(b"later").unwrap();
    open.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"later");
    assert!(g.child.try_wait().unwrap().is_none(), "exited with a connection open");
    // Once it closes, the gateway exits (well before the 10 s grace period).
    close_and_see_exit(open, &mut g, Duration::from_secs(4));
}

/// End `open` from the client's side, read it to its end, and see the
/// process of `g` (which has nothing else open) exit within `within`.
fn close_and_see_exit(mut open: TcpStream, g: &mut Gateway, within: Duration) {
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    let closed = Instant::now();
    while g.child.try_wait().unwrap().is_none() {
        assert!(closed.elapsed() < within, "still running after its last connection");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process this test started, stopped (SIGINT) when the test ends however it ends.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-INT")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_binary_upgrade_keeps_open_tcp_connections() {
    let e = Echo::start("e");
    let tp = free_port();
    let server = server_section(&[]).replace("grace_period: 1s", "grace_period: 10s");
    let mut g = gateway_with(
        &server,
        &format!("  - listen: 127.0.0.1:{tp}\n    proxy_pass: e\n"),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr])),
    );
    let mut open = dial(tp);
    assert_eq!(greeting(&mut open), "e");

    // The new binary takes over the listening sockets.
    let pid_file = g.dir.join("portico.pid");
    let old = std::fs::read_to_string(&pid_file).unwrap();
    let _new = Stopped(
        std::process::Command::new(portico_bin())
            .args(["-u", "-c", g.conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(g.dir.join("upgrade.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).unwrap_or_default() == old {
        assert!(Instant::now() < deadline, "no take-over: {}", g.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // New connections are taken (by either process while they hand over, then the new one).
    for _ in 0..3 {
        assert_eq!(exchange(tp, b"n"), ("e".to_string(), b"n".to_vec()));
    }
    // The connection opened before goes on, on the old process, until it ends.
    std::thread::sleep(Duration::from_millis(1500));
    open.write_all(b"old").unwrap();
    let mut three = [0u8; 3];
    open.read_exact(&mut three).unwrap();
    assert_eq!(&three, b"old");
    assert!(
        g.child.try_wait().unwrap().is_none(),
        "the old process left with a connection open"
    );
    close_and_see_exit(open, &mut g, Duration::from_secs(5));
    // And the new process serves on.
    assert_eq!(exchange(tp, b"after"), ("e".to_string(), b"after".to_vec()));
}

#[test]
fn access_rules_refuse_clients_before_any_server_is_contacted() {
    let e = Echo::start("e");
    let (allowed, outside, denied) = (free_port(), free_port(), free_port());
    let listener = |port: u16, rules: &str| format!("  - listen: 127.0.0.1:{port}\n    proxy_pass: e\n{rules}");
    let g = gateway(
        &[
            listener(allowed, "    allow: [127.0.0.0/8]\n"),
            listener(outside, "    allow: [10.0.0.0/8, \"::1\"]\n"),
            listener(denied, "    deny: [127.0.0.1/32]\n    allow: [127.0.0.0/8]\n"),
        ]
        .concat(),
        &format!("  e:\n    servers:\n{}", servers(&[e.addr])),
    );
    assert_eq!(exchange(allowed, b"in"), ("e".to_string(), b"in".to_vec()));
    for port in [outside, denied] {
        let mut s = dial(port);
        let mut rest = Vec::new();
        // Closed at once, with nothing sent (a reset is as good as a close here).
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
        let line = log_line(&g, port, 0);
        assert!(
            line.contains(&format!("\"TCP 127.0.0.1:{port}\" 403 0 \"-\" \"-\" - - ")),
            "{line}"
        );
    }
    assert_eq!(
        e.accepted.load(SeqCst),
        1,
        "only the admitted client reached the server"
    );
}

#[test]
fn a_server_that_ends_its_sending_first_still_gets_the_clients_bytes() {
    // The server says its piece, ends its sending (a half-close), and then
    // reads what the client still sends until the client ends too.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"bye\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let tp = free_port();
    let _g = gateway(
        &format!("  - listen: 127.0.0.1:{tp}\n    proxy_pass: half\n"),
        &format!("  half:\n    servers:\n{}", servers(&[addr])),
    );
    let mut s = dial(tp);
    let mut first = Vec::new();
    s.read_to_end(&mut first).unwrap(); // the server's end reaches the client
    assert_eq!(first, b"bye\n");
    s.write_all(b"late words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server saw the client end");
    assert_eq!(got, b"late words");
}
