//! Servers by name with `resolve: true`: resolved through `server.resolver`
//! (here a small DNS server the test runs on 127.0.0.1) and again every
//! `resolver_valid`; the pool follows the name's addresses as they change,
//! and keeps the last ones while the name does not resolve.

mod common;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the DNS server answers for `app.test`: these addresses, or (`None`)
/// SERVFAIL, as a resolver that is down would.
type Answers = Arc<Mutex<Option<Vec<Ipv4Addr>>>>;

/// A DNS server on 127.0.0.1 (UDP) knowing one name, `app.test`: A queries
/// get `answers` (TTL 1 s), AAAA queries none, other names NXDOMAIN.
fn dns_server(answers: Answers) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            if let Some(reply) = answer(&buf[..n], &answers.lock().unwrap()) {
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    addr
}

fn answer(q: &[u8], ips: &Option<Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    // The question: labels from byte 12 to a zero, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let len = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = q.get(12..i + 5)?;
    let known = labels == ["app", "test"];
    let (rcode, records): (u8, Vec<Ipv4Addr>) = match ips {
        _ if !known => (3, Vec::new()),
        None => (2, Vec::new()),
        Some(ips) if qtype == 1 => (0, ips.clone()),
        Some(_) => (0, Vec::new()),
    };
    let mut r = Vec::new();
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80 | rcode]); // a response, recursion available
    for count in [1u16, records.len() as u16, 0, 0] {
        r.extend_from_slice(&count.to_be_bytes());
    }
    r.extend_from_slice(question);
    for ip in records {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // the question's name, A, IN
        r.extend_from_slice(&1u32.to_be_bytes()); // TTL
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// Which backends answer `n` requests.
fn answering(g: &Gateway, n: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n).map(|_| g.get("/").backend()).collect();
    names.sort();
    names.dedup();
    names
}

/// Wait (5 s at most) until `n` requests are answered by exactly `want`.
fn wait_answering(g: &Gateway, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = answering(g, 8);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "answering {now:?}, want {want:?}; {}",
            g.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_resolved_server_follows_its_name_s_addresses() {
    let one = Backend::start("one");
    let port = one.addr.port();
    // The same port on another loopback address: the name's second address.
    let two = Backend::start_on("two", SocketAddr::from(([127, 0, 0, 2], port)), Behaviour::Echo);
    let answers: Answers = Arc::new(Mutex::new(Some(vec![Ipv4Addr::new(127, 0, 0, 1)])));
    let dns = dns_server(answers.clone());
    let g = Gateway::start(&format!(
        "{}listeners:\n  - listen: 127.0.0.1:{{PORT}}\n\
         upstreams:\n  app:\n    servers: [{{ address: \"app.test:{port}\", resolve: true }}]\n\
         virtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        server_section(&[&format!("resolver: \"{dns}\""), "resolver_valid: 1s"])
    ));
    assert_eq!(answering(&g, 6), ["one"]);

    // A second address: both servers take requests.
    *answers.lock().unwrap() = Some(vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)]);
    wait_answering(&g, &["one", "two"]);
    assert!(g.stderr().contains("servers resolved again"), "{}", g.stderr());

    // The first address goes: only the second server is left.
    *answers.lock().unwrap() = Some(vec![Ipv4Addr::new(127, 0, 0, 2)]);
    wait_answering(&g, &["two"]);

    // The resolver fails: the last addresses stay.
    *answers.lock().unwrap() = None;
    g.wait_stderr("keeping its last addresses");
    assert_eq!(answering(&g, 6), ["two"]);
    drop(two);
}
