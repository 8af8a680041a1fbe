//! TLS termination: SNI certificates, HTTP/2 and HTTP/1.1 clients, `-t` on
//! bad certificates, and TLS / h2c towards upstreams. Certificates are made
//! by the test with the openssl crate.

mod common;
use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Issued {
    cert: X509,
    key: PKey<Private>,
}

/// A certificate for `names`, signed by `ca` (self-signed when `None`), valid from
/// `from_days` to `to_days` relative to now.
fn issue(names: &[&str], ca: Option<&Issued>, from_days: i64, to_days: i64, is_ca: bool) -> Issued {
    let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, names[0]).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(rand_serial()).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.map(|c| c.cert.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
        .unwrap();
    if is_ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    } else {
        let mut san = SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        b.append_extension(san.build(&b.x509v3_context(ca.map(|c| c.cert.as_ref()), None)).unwrap())
            .unwrap();
    }
    b.sign(ca.map(|c| &c.key).unwrap_or(&key), MessageDigest::sha256())
        .unwrap();
    Issued { cert: b.build(), key }
}

fn rand_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn write(dir: &Path, stem: &str, i: &Issued) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&c, i.cert.to_pem().unwrap()).unwrap();
    std::fs::write(&k, i.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (c, k)
}

/// HTTPS/1.1 request with SNI `name`; returns (certificate CN, response).
fn https_get(port: u16, name: &str, path: &str) -> (String, String) {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build().configure().unwrap().verify_hostname(false);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut s = c.connect(name, tcp).unwrap();
    let cn = peer_cn(s.ssl());
    write!(s, "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (cn, out)
}

/// The common name of the certificate the server presented.
fn peer_cn(ssl: &openssl::ssl::SslRef) -> String {
    let cert = ssl.peer_certificate().unwrap();
    let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
    String::from_utf8_lossy(cn.data().as_slice()).into_owned()
}

/// A GET of `path` with SNI and Host `name`, its connection kept open:
/// (certificate common name, (status, body)).
fn tls_get(port: u16, name: &str, path: &str) -> (String, (u16, String)) {
    let mut c = tls_connection(port, name);
    let cn = peer_cn(c.get_ref().ssl());
    write!(c.get_mut(), "GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n").unwrap();
    (cn, read_response(&mut c))
}

fn start_tls(backend: &Backend, certs: &[(PathBuf, PathBuf)]) -> Gateway {
    let list: String = certs
        .iter()
        .map(|(c, k)| format!("        - {{ cert: {}, key: {} }}\n", c.display(), k.display()))
        .collect();
    Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\n    tls:\n      certificates:\n{list}upstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        backend.addr
    ))
}

/// A TLS listener with one certificate for `a.test` and the given `server:` settings.
fn start_tls_a(backend: &Backend, server: &[&str]) -> Gateway {
    let dir = temp_dir();
    let (cert, key) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    Gateway::start(&format!(
        "{}listeners:\n  - listen: 127.0.0.1:{{PORT}}\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        server_section(server),
        cert.display(),
        key.display(),
        backend.addr
    ))
}

#[test]
fn sni_picks_the_certificate_and_headers_say_https() {
    let dir = temp_dir();
    let a = issue(&["a.test"], None, -1, 30, false);
    let b = issue(&["*.b.test"], None, -1, 30, false);
    let certs = [write(&dir, "a", &a), write(&dir, "b", &b)];
    let backend = Backend::start("app");
    let g = start_tls(&backend, &certs);
    for _ in 0..2 {
        let (cn, resp) = https_get(g.port, "a.test", "/x");
        assert_eq!(cn, "a.test");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("header=x-forwarded-proto: https"), "{resp}");
        assert_eq!(https_get(g.port, "www.b.test", "/").0, "*.b.test");
        assert_eq!(
            https_get(g.port, "unknown.test", "/").0,
            "a.test",
            "first certificate is the default"
        );
    }
}

#[test]
fn http2_and_http1_clients_are_proxied_alike() {
    let dir = temp_dir();
    let a = issue(&["a.test"], None, -1, 30, false);
    let certs = [write(&dir, "a", &a)];
    let backend = Backend::start("app");
    let g = start_tls(&backend, &certs);
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-sk", flag, "--resolve", &format!("a.test:{}:127.0.0.1", g.port)])
            .args(["-H", "cookie: a=1", "-H", "cookie: b=2", "-H", "Expect: 100-continue"])
            .arg(format!("https://a.test:{}/h?x=1", g.port))
            .args(["-w", "\nversion=%{http_version}"])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with(&format!("version={want}")), "{text}");
        assert!(text.contains("header=x-forwarded-proto: https"), "{text}");
        assert!(text.contains("header=x-real-ip: 127.0.0.1"), "{text}");
        assert!(text.contains("request=GET /h?x=1 HTTP/1.1"), "{text}");
        // The authority as the client gave it, port and all, whatever the version.
        let host = format!("header=x-forwarded-host: a.test:{}\n", g.port);
        assert!(text.to_ascii_lowercase().contains(&host), "{text}");
        assert!(!text.to_ascii_lowercase().contains("header=expect"), "{text}");
        if want == "2" {
            // HTTP/2's cookie fields are one field in HTTP/1.1 (RFC 9113 §8.2.3).
            assert!(text.contains("header=cookie: a=1; b=2\n"), "{text}");
        }
    }
}

#[test]
fn bad_certificates_fail_the_config_test() {
    let dir = temp_dir();
    let good = issue(&["a.test"], None, -1, 30, false);
    let other = issue(&["b.test"], None, -1, 30, false);
    let expired = issue(&["old.test"], None, -30, -1, false);
    let (gc, gk) = write(&dir, "good", &good);
    let (_, ok) = write(&dir, "other", &other);
    let (ec, ek) = write(&dir, "expired", &expired);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let cases = [
        (dir.join("missing.pem"), gk.clone(), "cannot read certificate"),
        (garbage.clone(), gk.clone(), "holds no certificate"),
        (gc.clone(), ok.clone(), "does not match certificate"),
        (ec.clone(), ek.clone(), "expired"),
    ];
    for (c, k, want) in cases {
        let (ok, err) = config_test(&format!(
            "listeners:\n  - listen: 127.0.0.1:1\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n",
            c.display(),
            k.display()
        ));
        assert!(!ok);
        assert!(err.contains(":5:13: listeners[0].tls.certificates[0].cert:"), "{err}");
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(
            err.contains(c.file_name().unwrap().to_str().unwrap())
                || err.contains(k.file_name().unwrap().to_str().unwrap()),
            "names the file: {err}"
        );
    }
}

#[test]
fn reload_with_a_bad_certificate_keeps_the_old_one() {
    let dir = temp_dir();
    let a = issue(&["a.test"], None, -1, 30, false);
    let certs = [write(&dir, "a", &a)];
    let backend = Backend::start("app");
    let g = start_tls(&backend, &certs);
    // New certificate: picked up by SIGHUP.
    let a2 = issue(&["a2.test"], None, -1, 30, false);
    write(&dir, "a", &a2);
    g.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(https_get(g.port, "a.test", "/").0, "a2.test");
    // Broken key: the reload fails and a2 stays.
    std::fs::write(dir.join("a.key"), "junk").unwrap();
    g.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(https_get(g.port, "a.test", "/").0, "a2.test");
    assert!(g.stderr().contains("reload failed"), "{}", g.stderr());
}

/// A gateway terminating TLS for `upstream.test` in front of `backend`, with
/// a certificate from a test CA, and the file holding that CA.
fn tls_upstream(backend: &Backend) -> (Gateway, PathBuf) {
    let dir = temp_dir();
    let ca = issue(&["Test CA"], None, -1, 30, true);
    let leaf = issue(&["upstream.test"], Some(&ca), -1, 30, false);
    let (cc, ck) = write(&dir, "leaf", &leaf);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.to_pem().unwrap()).unwrap();
    (start_tls(backend, &[(cc, ck)]), ca_file)
}

#[test]
fn upstream_tls_with_verification_and_h2c() {
    let backend = Backend::start("app");
    // The TLS upstream is another portico terminating TLS in front of the echo backend;
    // a third one speaks h2c.
    let (inner, ca_file) = tls_upstream(&backend);
    let h2c = Gateway::start(&format!(
        "listeners:\n  - {{ listen: \"127.0.0.1:{{PORT}}\", h2c: true }}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\naccess_log: stdout\n",
        backend.addr
    ));
    let front = |pool: &str| {
        Gateway::start(&format!(
            "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  up:\n{pool}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: up }}]\n"
        ))
    };
    let verified = front(&format!(
        "    tls: true\n    tls_sni: upstream.test\n    tls_ca_file: {}\n    servers: [{{ address: \"127.0.0.1:{}\" }}]",
        ca_file.display(),
        inner.port
    ));
    let r = verified.get("/via-tls");
    assert_eq!(r.status, 200, "{}", verified.stderr());
    assert_eq!(
        r.echoed("x-forwarded-proto").as_deref(),
        Some("https"),
        "the inner hop was TLS"
    );
    let wrong_name = front(&format!(
        "    tls: true\n    tls_sni: wrong.test\n    tls_ca_file: {}\n    servers: [{{ address: \"127.0.0.1:{}\" }}]",
        ca_file.display(),
        inner.port
    ));
    assert_eq!(wrong_name.get("/").status, 502, "hostname verification fails");
    let h2 = front(&format!(
        "    tls: true\n    tls_verify: false\n    http2: true\n    servers: [{{ address: \"127.0.0.1:{}\" }}]",
        inner.port
    ));
    assert_eq!(h2.get("/h2").status, 200);
    let cleartext_h2 = front(&format!(
        "    http2: true\n    servers: [{{ address: \"127.0.0.1:{}\" }}]",
        h2c.port
    ));
    let r = cleartext_h2.get("/h2c");
    assert_eq!(r.status, 200, "{}", cleartext_h2.stderr());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        h2c.access_log().contains("\"GET /h2c HTTP/2.0\""),
        "h2c reached the inner gateway as HTTP/2: {}",
        h2c.access_log()
    );
    assert!(
        inner.access_log().contains("\"GET /h2 HTTP/2.0\""),
        "h2 over TLS: {}",
        inner.access_log()
    );
}

/// A TCP listener in front of a pool with `tls: true` (nginx stream
/// `proxy_ssl on`): the client's plain bytes go to the server over TLS,
/// checked against the pool's CA and name; a server whose certificate does
/// not verify counts as one that cannot be connected to.
#[test]
fn a_tcp_listener_speaks_tls_to_a_pool_with_tls() {
    let backend = Backend::start("app");
    let (inner, ca_file) = tls_upstream(&backend);
    let (good, bad) = (free_port(), free_port());
    let pool = |name: &str| {
        format!(
            "    tls: true\n    tls_sni: {name}\n    tls_ca_file: {}\n    servers: [{{ address: \"127.0.0.1:{}\" }}]\n",
            ca_file.display(),
            inner.port
        )
    };
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\ntcp:\n  - {{ listen: \"127.0.0.1:{good}\", proxy_pass: good }}\n\
         \x20 - {{ listen: \"127.0.0.1:{bad}\", proxy_pass: bad }}\nupstreams:\n  good:\n{}  bad:\n{}",
        pool("upstream.test"),
        pool("wrong.test")
    ));
    g.wait_listening(good);
    let mut s = tcp_to(good);
    s.write_all(b"GET /via-tcp HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = std::io::BufReader::new(s);
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200, "{}", g.stderr());
    assert!(
        body.contains("header=x-forwarded-proto: https"),
        "the hop to the server was TLS: {body}"
    );
    let line = g
        .access_log_line(&format!("\"TCP 127.0.0.1:{good}\" 200"))
        .unwrap_or_else(|| panic!("{}", g.access_log()));
    assert!(line.contains(&format!("127.0.0.1:{}", inner.port)), "{line}");

    // The certificate is not for wrong.test: no server reached, closed, logged 502.
    g.wait_listening(bad);
    let mut s = tcp_to(bad);
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(g.access_log_line(&format!("\"TCP 127.0.0.1:{bad}\" 502")).is_some());
    assert!(g.stderr().contains("TLS handshake"), "{}", g.stderr());
    assert_eq!(backend.hits(), 1);
}

#[test]
fn http_health_checks_reach_tls_servers_over_tls() {
    use std::time::{Duration, Instant};
    let backend = Backend::start("app");
    let (inner, ca_file) = tls_upstream(&backend);
    // wait_for_first_pass: the server takes traffic only once a probe has passed,
    // and a probe passes only if it speaks TLS (verified, with the pool's SNI).
    let front = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  up:\n    tls: true\n    tls_sni: upstream.test\n    tls_ca_file: {}\n    health_check: {{ path: /health, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1, wait_for_first_pass: true }}\n    servers: [{{ address: \"127.0.0.1:{}\" }}]\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: up }}]\n",
        ca_file.display(),
        inner.port
    ));
    let until = |status: u16, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = front.get("/app");
            if r.status == status {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {}\n{}", r.status, front.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until(200, "a TLS probe never passed");
    std::thread::sleep(Duration::from_millis(200)); // the access log's writer
    assert!(
        inner.access_log().contains("GET /health"),
        "the probe went through the TLS listener: {}",
        inner.access_log()
    );
    backend.fail_paths.lock().unwrap().push("/health".into());
    until(503, "a failing probe over TLS did not take the server out");
}

/// A TLS connection with SNI `name` (certificate not checked), read through a buffer.
fn tls_connection(port: u16, name: &str) -> std::io::BufReader<openssl::ssl::SslStream<std::net::TcpStream>> {
    tls_over(name, tcp_to(port))
}

fn tcp_to(port: u16) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    tcp
}

/// TLS with SNI `name` (certificate not checked) over `stream`, read through a buffer.
fn tls_over<S: Read + Write + std::fmt::Debug>(
    name: &str,
    stream: S,
) -> std::io::BufReader<openssl::ssl::SslStream<S>> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build().configure().unwrap().verify_hostname(false);
    std::io::BufReader::new(c.connect(name, stream).unwrap())
}

/// A TCP stream whose writes wait until it is flushed: TLS records written
/// one by one then reach the gateway in one TCP write. (The handshake flushes
/// its own messages.)
#[derive(Debug)]
struct Held {
    tcp: std::net::TcpStream,
    out: Vec<u8>,
}

impl Read for Held {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Held {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.write_all(&self.out)?;
        self.out.clear();
        self.tcp.flush()
    }
}

/// One response (Content-Length or chunked body): status and body.
fn read_response<R: std::io::BufRead>(r: &mut R) -> (u16, String) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut len, mut chunked) = (0, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
            chunked |= k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked");
        }
    }
    let mut body = Vec::new();
    if !chunked {
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
    }
    while chunked {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim_end().split(';').next().unwrap(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        assert_eq!(&chunk[n..], b"\r\n", "chunk data ends with CRLF");
        body.extend_from_slice(&chunk[..n]);
        chunked = n > 0;
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn https_bodies_of_every_framing_and_size_arrive_whole_on_one_connection() {
    let dir = temp_dir();
    let (cert, key) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    let small = Backend::start_with("small", Behaviour::Big(1000));
    let big = Backend::start_with("big", Behaviour::Big(100_000));
    let chunked = Backend::start_with("chunked", Behaviour::Chunked);
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\nupstreams:\n  small: {{ servers: [{{ address: \"{}\" }}] }}\n  big: {{ servers: [{{ address: \"{}\" }}] }}\n  chunked: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations:\n      - {{ path: /small, proxy_pass: small }}\n      - {{ path: /big, proxy_pass: big }}\n      - {{ path: /chunked, proxy_pass: chunked }}\n",
        cert.display(),
        key.display(),
        small.addr,
        big.addr,
        chunked.addr
    ));
    let mut s = tls_connection(g.port, "a.test");
    for path in ["/small", "/big", "/chunked", "/small", "/chunked", "/big"] {
        s.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .unwrap();
        let (status, body) = read_response(&mut s);
        assert_eq!(status, 200, "{path}");
        assert!(body.starts_with(&format!("name={}", &path[1..])), "{path}: {body:.80}");
        assert!(body.contains(&format!("request=GET {path}")), "{path}");
        let xs = body.len() - body.trim_end_matches('x').len();
        match path {
            "/small" => assert_eq!(xs, 1000),
            "/big" => assert_eq!(xs, 100_000),
            _ => assert!(body.ends_with("\nend\n"), "{path}: all three chunks"),
        }
    }
}

#[test]
fn pipelined_https_requests_are_answered_in_order() {
    // Requests sent ahead of their answers are answered in turn. A
    // connection waiting on its client looks at the socket before asking
    // OpenSSL, so bytes already read off the socket (the next TLS records,
    // read ahead) must count as arrived: else the connection would sit
    // until its keep-alive timeout.
    let dir = temp_dir();
    let (cert, key) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    let backend = Backend::start("app");
    let g = start_tls(&backend, &[(cert, key)]);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let held = || {
        let tcp = tcp_to(g.port);
        tls_over("a.test", Held { tcp, out: Vec::new() })
    };
    fn in_order<R: std::io::BufRead>(s: &mut R, paths: &[&str]) {
        for path in paths {
            let (status, body) = read_response(s);
            assert_eq!(status, 200, "{path}");
            assert!(body.contains(&format!("request=GET {path} ")), "{path}: {body:.80}");
        }
    }
    // Three requests in one TLS record.
    let mut s = tls_connection(g.port, "a.test");
    s.get_mut()
        .write_all((get("/a") + &get("/b") + &get("/c")).as_bytes())
        .unwrap();
    in_order(&mut s, &["/a", "/b", "/c"]);
    // Three TLS records in one TCP write: the later ones are read ahead with the first.
    let mut h = held();
    for path in ["/d", "/e", "/f"] {
        h.get_mut().write_all(get(path).as_bytes()).unwrap();
    }
    h.get_mut().get_mut().flush().unwrap();
    in_order(&mut h, &["/d", "/e", "/f"]);
    // Requests one at a time through the same kind of stream keep the connection.
    let mut h = held();
    for path in ["/g", "/h", "/i"] {
        h.get_mut().write_all(get(path).as_bytes()).unwrap();
        h.get_mut().get_mut().flush().unwrap();
        let (status, body) = read_response(&mut h);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(&format!("request=GET {path} ")), "{path}: {body:.80}");
    }
}

#[test]
fn an_https_client_that_leaves_abandons_its_request() {
    // While the answer is on its way, the gateway watches the socket for the
    // client leaving; over TLS it must still notice.
    let dir = temp_dir();
    let (cert, key) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    let backend = Backend::start_with("slow", Behaviour::Slow(std::time::Duration::from_millis(1500)));
    let g = start_tls(&backend, &[(cert, key)]);
    let mut s = tls_connection(g.port, "a.test");
    s.get_mut()
        .write_all(b"GET /gone HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = s.get_mut().shutdown();
    drop(s);
    // Logged once the gateway gives up on the request: long before the backend would answer.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let line = g
        .access_log_line("GET /gone")
        .unwrap_or_else(|| panic!("request still running after the client left"));
    assert!(line.contains("\"GET /gone HTTP/1.1\" 0 "), "{line}");
}

#[test]
fn https_requests_take_the_lean_loop_and_the_rest_pingoras_on_one_connection() {
    let dir = temp_dir();
    let a = issue(&["a.test"], None, -1, 30, false);
    let (cert, key) = write(&dir, "a", &a);
    let backend = Backend::start("app");
    let ap = free_port();
    let g = Gateway::start(&format!(
        "admin: {{ listen: \"127.0.0.1:{ap}\", token: t }}\nlisteners:\n  - listen: 127.0.0.1:{{PORT}}\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\nupstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        cert.display(),
        key.display(),
        backend.addr
    ));
    let lean = || {
        let m = request(ap, "GET", "/metrics", &[("Authorization", "Bearer t")], b"").body;
        m.lines()
            .find_map(|l| l.strip_prefix("portico_lean_path_requests_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = lean();
    let mut s = tls_connection(g.port, "a.test");
    let steps: [(&str, &str); 4] = [
        ("GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n", "request=GET /one"),
        (
            "POST /two HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc",
            "body-length=3",
        ),
        (
            "GET /three HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "header=x-forwarded-proto: https",
        ),
        ("GET /four HTTP/1.1\r\nHost: a.test\r\n\r\n", "request=GET /four"),
    ];
    for (req, expect) in steps {
        s.get_mut().write_all(req.as_bytes()).unwrap();
        let (status, body) = read_response(&mut s);
        assert_eq!(status, 200, "{req}");
        assert!(body.contains(expect), "{req}: {body}");
    }
    assert_eq!(
        lean() - before,
        3,
        "the three GETs took the lean loop, the POST Pingora's"
    );
}

/// The head's size limit holds over TLS: a head longer than one TLS record
/// passes whole on a kept-alive connection; one over the limit gets 431.
#[test]
fn https_request_heads_over_the_size_limit_are_refused() {
    let backend = Backend::start("app");
    let g = start_tls_a(&backend, &["max_request_header_size: 24k"]);
    let mut s = tls_connection(g.port, "a.test");
    let mut send = |len: usize| {
        let field = "v".repeat(len);
        let req = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {field}\r\n\r\n");
        s.get_mut().write_all(req.as_bytes()).unwrap();
        let (status, body) = read_response(&mut s);
        (
            status,
            body.to_ascii_lowercase().contains(&format!("header=x-big: {field}\n")),
        )
    };
    assert_eq!(send(20_000), (200, true), "passed whole");
    let (status, _) = send(30_000);
    assert_eq!(status, 431);
    assert_eq!(backend.hits(), 1);
}

#[test]
fn client_header_timeout_bounds_the_tls_handshake() {
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let backend = Backend::start("app");
    let g = start_tls_a(&backend, &["client_header_timeout: 1s"]);
    // A client that connects and never starts its handshake: closed after about 1 s (Pingora's
    // own listener waited 60 s).
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let n = s.read(&mut [0u8; 64]).expect("closed, not timed out on our side");
    assert_eq!(n, 0);
    let closed = t.elapsed();
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
        "{closed:?}"
    );
    // Handshakes that finish in time still work.
    let (cn, resp) = https_get(g.port, "a.test", "/");
    assert_eq!(cn, "a.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// An HTTP/2 connection (ALPN h2) must send its preface within
/// `client_header_timeout` (Pingora waited without a limit), and one with
/// no stream open closes after `keepalive_timeout`.
#[test]
fn http2_connections_that_send_nothing_or_idle_are_closed() {
    use std::time::{Duration, Instant};
    let backend = Backend::start("app");
    let g = start_tls_a(&backend, &["client_header_timeout: 1s", "keepalive_timeout: 2s"]);
    let h2 = || {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(b"\x02h2").unwrap();
        let c = b.build().configure().unwrap().verify_hostname(false);
        let s = c.connect("a.test", tcp_to(g.port)).unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        s
    };
    // Until the gateway closes, what it sent and when (None: still open after 10 s).
    let closed_after = |s: &mut openssl::ssl::SslStream<std::net::TcpStream>| {
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, Some(t.elapsed())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return (got, None)
                }
                Err(_) => return (got, Some(t.elapsed())),
            }
        }
    };
    let (_, closed) = closed_after(&mut h2());
    let closed = closed.expect("closed without a preface");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    let mut s = h2();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let (got, closed) = closed_after(&mut s);
    assert_eq!(got.get(3), Some(&4), "the gateway's SETTINGS frame");
    let closed = closed.expect("closed while idle");
    assert!(
        closed > Duration::from_millis(1500) && closed < Duration::from_secs(4),
        "{closed:?}"
    );
}

/// Plain HTTP sent to a TLS listener gets a plain 400 that says so, as
/// nginx answers it (the connection closed with nothing said); TLS
/// connections go on as ever.
#[test]
fn plain_http_to_a_tls_listener_is_told_so() {
    let backend = Backend::start("app");
    let g = start_tls_a(&backend, &[]);
    let out = raw_exchange(
        g.port,
        &[b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"],
        std::time::Duration::ZERO,
    );
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.ends_with("plain HTTP request was sent to HTTPS port\n"), "{out}");
    let (_, resp) = https_get(g.port, "a.test", "/");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn stalled_handshakes_do_not_hold_up_others() {
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let backend = Backend::start("app");
    // One worker thread: one handshake computes at a time.
    let g = start_tls_a(&backend, &["threads: 1", "client_header_timeout: 20s"]);
    // Clients that send the start of a ClientHello and stall: their handshakes wait for the
    // rest, and must not keep the compute slot meanwhile.
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (t, port) = (Instant::now(), g.port);
    let clients: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(move || https_get(port, "a.test", "/")))
        .collect();
    for c in clients {
        let (cn, resp) = c.join().unwrap();
        assert_eq!(cn, "a.test");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(stalled);
}

#[test]
fn a_tcp_listener_terminates_tls_by_sni_and_passes_the_plain_bytes() {
    let dir = temp_dir();
    let a = issue(&["a.test"], None, -1, 30, false);
    let b = issue(&["*.b.test"], None, -1, 30, false);
    let certs = [write(&dir, "a", &a), write(&dir, "b", &b)];
    let list: String = certs
        .iter()
        .map(|(c, k)| format!("        - {{ cert: {}, key: {} }}\n", c.display(), k.display()))
        .collect();
    let backend = Backend::start("app");
    let tp = free_port();
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\ntcp:\n  - listen: 127.0.0.1:{tp}\n    proxy_pass: app\n    tls:\n      certificates:\n{list}upstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\n",
        backend.addr
    ));
    g.wait_listening(tp);
    // TLS ends at the listener; the server reads the client's request as it was
    // sent, with no forwarding fields (nothing reads HTTP on a TCP listener).
    let get = |name: &str| tls_get(tp, name, "/x");
    let (cn, (status, body)) = get("a.test");
    assert_eq!((cn.as_str(), status), ("a.test", 200));
    assert!(body.contains("request=GET /x HTTP/1.1"), "{body}");
    assert!(!body.contains("x-forwarded"), "{body}");
    assert_eq!(get("www.b.test").0, "*.b.test");
    assert_eq!(get("other.test").0, "a.test", "the first certificate is the default");
    assert_eq!(backend.hits(), 3);
    // Plain bytes on the TLS port never reach the server.
    let mut s = tcp_to(tp);
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(backend.hits(), 3);
}

/// HTTPS and TLS-terminating TCP listeners behind a balancer sending the
/// PROXY protocol: the header comes before the handshake, and its client is
/// the request's client.
#[test]
fn tls_listeners_read_a_proxy_header_before_the_handshake() {
    let dir = temp_dir();
    let (cert, key) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    let backend = Backend::start("app");
    let tp = free_port();
    let tls = format!(
        "    accept_proxy_protocol: true\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n",
        cert.display(),
        key.display()
    );
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\n{tls}tcp:\n  - listen: 127.0.0.1:{tp}\n    proxy_pass: app\n{tls}\
         upstreams:\n  app: {{ servers: [{{ address: \"{}\" }}] }}\nvirtual_hosts:\n  - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n",
        backend.addr
    ));
    let proxied = |port: u16, client: &str| {
        // The header goes out with the ClientHello, in one write: the gateway finds
        // the hello already read when the header is parsed.
        let held = Held {
            tcp: tcp_to(port),
            out: format!("PROXY TCP4 {client} 127.0.0.1 50000 443\r\n").into_bytes(),
        };
        let mut c = tls_over("a.test", held);
        write!(
            c.get_mut(),
            "GET /pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        c.get_mut().flush().unwrap();
        read_response(&mut c)
    };
    let (status, body) = proxied(g.port, "198.51.100.20");
    assert_eq!(status, 200);
    assert!(body.contains("header=x-real-ip: 198.51.100.20"), "{body}");
    assert!(body.contains("header=x-forwarded-proto: https"), "{body}");
    // Without the header the handshake never starts.
    let mut tcp = tcp_to(g.port);
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE);
    assert!(c.build().connect("a.test", &mut tcp).is_err());

    g.wait_listening(tp);
    let (status, _) = proxied(tp, "198.51.100.21");
    assert_eq!(status, 200);
    let line = g
        .access_log_line(&format!("\"TCP 127.0.0.1:{tp}\" 200"))
        .unwrap_or_else(|| panic!("{}", g.access_log()));
    assert!(line.starts_with("198.51.100.21 "), "{line}");
}

#[test]
fn a_tcp_listener_routes_tls_by_server_name_without_decrypting() {
    let dir = temp_dir();
    let (ca, ka) = write(&dir, "a", &issue(&["a.test"], None, -1, 30, false));
    let (cb, kb) = write(&dir, "b", &issue(&["*.b.test"], None, -1, 30, false));
    let (pa, pb, routed, with_default) = (free_port(), free_port(), free_port(), free_port());
    let site = |port: u16, cert: &Path, key: &Path, body: &str| {
        (
            format!(
                "  - listen: 127.0.0.1:{port}\n    tls: {{ certificates: [{{ cert: {}, key: {} }}] }}\n",
                cert.display(),
                key.display()
            ),
            format!("  - {{ default: true, listen: [\"127.0.0.1:{port}\"], locations: [{{ path: /, return: {{ status: 200, body: \"{body}\" }} }}] }}\n"),
        )
    };
    let (la, va) = site(pa, &ca, &ka, "site a");
    let (lb, vb) = site(pb, &cb, &kb, "site b");
    // The HTTPS sites are the gateway's own listeners: the TCP listeners pass TLS to them untouched.
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\n{la}{lb}tcp:\n  - listen: 127.0.0.1:{routed}\n    sni: {{ a.test: a, \"*.b.test\": b, '~^(api|www)\\.c\\.test$': a, '~\\.test$': b }}\n  - listen: 127.0.0.1:{with_default}\n    sni: {{ a.test: a }}\n    proxy_pass: b\nupstreams:\n  a: {{ servers: [{{ address: \"127.0.0.1:{pa}\" }}] }}\n  b: {{ servers: [{{ address: \"127.0.0.1:{pb}\" }}] }}\nvirtual_hosts:\n{va}{vb}  - {{ default: true, listen: [\"127.0.0.1:{{PORT}}\"], locations: [{{ path: /, return: {{ status: 200 }} }}] }}\n"
    ));
    for p in [routed, with_default, pa, pb] {
        g.wait_listening(p);
    }
    let get = |port: u16, name: &str| {
        let (cn, (_, body)) = tls_get(port, name, "/");
        (cn, body)
    };
    assert_eq!(get(routed, "a.test"), ("a.test".into(), "site a".into()));
    assert_eq!(get(routed, "www.b.test"), ("*.b.test".into(), "site b".into()));
    // Regex names after the others, in the order written.
    assert_eq!(get(routed, "www.c.test"), ("a.test".into(), "site a".into()));
    assert_eq!(get(routed, "zz.c.test"), ("*.b.test".into(), "site b".into()));
    assert_eq!(get(with_default, "A.TEST"), ("a.test".into(), "site a".into()));
    assert_eq!(get(with_default, "other.test"), ("*.b.test".into(), "site b".into()));
    // No rule for the name and no proxy_pass: the connection is closed, logged 400.
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build().configure().unwrap().verify_hostname(false);
    assert!(c.connect("other.example", tcp_to(routed)).is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let want = format!("\"TCP 127.0.0.1:{routed}\" 400 0 \"-\" \"-\" - - ");
    while !g
        .access_log()
        .lines()
        .any(|l| l.contains(&want) && l.ends_with(" sni=other.example"))
    {
        assert!(std::time::Instant::now() < deadline, "{}", g.access_log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A server that asks for a client certificate signed by `ca` and refuses
/// a handshake without one; it answers each request with the client
/// certificate's name, then closes.
fn mtls_server(dir: &Path, ca: &Issued) -> std::net::SocketAddr {
    use openssl::ssl::SslAcceptor;
    let leaf = issue(&["upstream.test"], Some(ca), -1, 30, false);
    let (cert, key) = write(dir, "mtls-server", &leaf);
    let ca_file = dir.join("mtls-ca.pem");
    std::fs::write(&ca_file, ca.cert.to_pem().unwrap()).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(&cert).unwrap();
    b.set_private_key_file(&key, openssl::ssl::SslFiletype::PEM).unwrap();
    b.set_ca_file(&ca_file).unwrap();
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    let acceptor = std::sync::Arc::new(b.build());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let Ok(mut s) = acceptor.accept(tcp) else { return };
                let client = s.ssl().peer_certificate().map(|c| {
                    let cn = c.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
                    String::from_utf8_lossy(cn.data().as_slice()).into_owned()
                });
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let body = format!("client={}\n", client.unwrap_or_default());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
                let _ = s.shutdown();
            });
        }
    });
    addr
}

/// `tls_cert`/`tls_key` on a pool (nginx `proxy_ssl_certificate`): the
/// certificate is shown to servers that ask for one, from HTTP locations
/// and TCP listeners alike; without it such a server refuses the gateway.
#[test]
fn pools_show_their_client_certificate_to_servers_that_ask() {
    let dir = temp_dir();
    let ca = issue(&["Test CA"], None, -1, 30, true);
    let server = mtls_server(&dir, &ca);
    let (cc, ck) = write(&dir, "client", &issue(&["gateway.client"], Some(&ca), -1, 30, false));
    let rogue_ca = issue(&["Other CA"], None, -1, 30, true);
    let (rc, rk) = write(&dir, "rogue", &issue(&["rogue.client"], Some(&rogue_ca), -1, 30, false));
    let ca_file = dir.join("mtls-ca.pem");
    let pool = |client: Option<(&PathBuf, &PathBuf)>| {
        let mut p = format!(
            "    tls: true\n    tls_sni: upstream.test\n    tls_ca_file: {}\n    servers: [{{ address: \"{server}\" }}]\n",
            ca_file.display()
        );
        if let Some((c, k)) = client {
            p.push_str(&format!(
                "    tls_cert: {}\n    tls_key: {}\n",
                c.display(),
                k.display()
            ));
        }
        p
    };
    let tcp = free_port();
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\ntcp:\n  - {{ listen: \"127.0.0.1:{tcp}\", proxy_pass: signed }}\n\
         upstreams:\n  signed:\n{}  unsigned:\n{}  rogue:\n{}\
         virtual_hosts:\n  - default: true\n    locations:\n\
         \x20     - {{ path: /, proxy_pass: signed }}\n\
         \x20     - {{ path: /none/, proxy_pass: unsigned }}\n\
         \x20     - {{ path: /rogue/, proxy_pass: rogue }}\n",
        pool(Some((&cc, &ck))),
        pool(None),
        pool(Some((&rc, &rk)))
    ));
    let r = g.get("/mtls");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "client=gateway.client\n"),
        "{}",
        g.stderr()
    );
    assert_eq!(g.get("/none/x").status, 502, "no certificate: refused");
    assert_eq!(g.get("/rogue/x").status, 502, "a certificate the server does not trust");
    // Through the TCP listener: the plain request goes on over TLS with the certificate.
    g.wait_listening(tcp);
    let mut s = tcp_to(tcp);
    s.write_all(b"GET /via-tcp HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut std::io::BufReader::new(s));
    assert_eq!(
        (status, body.as_str()),
        (200, "client=gateway.client\n"),
        "{}",
        g.stderr()
    );
}
