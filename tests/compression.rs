//! Response compression (`compression` on a location), end to end: an
//! origin on 127.0.0.1 answering fixed responses by the last segment of
//! the path, the gateway in front, and clients speaking HTTP/1.1, HTTP/1.0
//! and HTTP/2 (h2c) that decode what they get.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The page every compressible answer carries: 120 KiB of text, several of
/// the gateway's reads and more than one piece through the compressor.
fn page() -> Vec<u8> {
    (0..3000)
        .flat_map(|i| format!("<p>paragraph {i:05} of the page</p>\n").into_bytes())
        .collect()
}

/// The origin. `/stream` sends its first half, then waits for the test's
/// go on `release` before its second.
fn origin(release: mpsc::Receiver<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let release = Arc::new(Mutex::new(release));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let release = release.clone();
            std::thread::spawn(move || serve(s, &release));
        }
    });
    addr
}

fn serve(s: TcpStream, release: &Mutex<mpsc::Receiver<()>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut accept = String::from("-");
        let mut length = 0;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("accept-encoding") {
                    accept = v.trim().to_string();
                } else if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let head_only = line.starts_with("HEAD ");
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let path = path.split('?').next().unwrap_or("");
        let last = path.rsplit('/').next().unwrap_or("");
        let html = "Content-Type: text/html; charset=utf-8\r\n";
        let (status, fields, body): (u16, String, Vec<u8>) = match last {
            "page" => (200, format!("{html}ETag: \"v1\"\r\nAccept-Ranges: bytes\r\n"), page()),
            "missing" => (404, html.into(), page()),
            "partial" => (
                206,
                format!("{html}Content-Range: bytes 0-99/1000\r\n"),
                page()[..100].to_vec(),
            ),
            "png" => (200, "Content-Type: image/png\r\n".into(), page()),
            "small" => (200, html.into(), b"tiny page\n".to_vec()),
            "no-transform" => (200, format!("{html}Cache-Control: public, no-transform\r\n"), page()),
            "coded" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&page()).unwrap();
                (200, format!("{html}Content-Encoding: gzip\r\n"), gz.finish().unwrap())
            }
            "stream" => {
                let half = page().len() / 2;
                let head = format!("HTTP/1.1 200 OK\r\n{html}Transfer-Encoding: chunked\r\n\r\n");
                let first = &page()[..half];
                let _ = w.write_all(head.as_bytes());
                let _ = w.write_all(format!("{:x}\r\n", first.len()).as_bytes());
                let _ = w.write_all(first);
                let _ = w.write_all(b"\r\n");
                let _ = w.flush();
                let _ = release.lock().unwrap().recv_timeout(Duration::from_secs(10));
                let second = &page()[half..];
                let _ = w.write_all(format!("{:x}\r\n", second.len()).as_bytes());
                let _ = w.write_all(second);
                let _ = w.write_all(b"\r\n0\r\n\r\n");
                continue;
            }
            _ => (404, "Content-Type: text/plain\r\n".into(), b"no such page\n".to_vec()),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\n{fields}X-Got-Accept-Encoding: {accept}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if w.write_all(head.as_bytes()).is_err() || (!head_only && w.write_all(&body).is_err()) {
            return;
        }
    }
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut d: Box<dyn Read + '_> = match coding {
        "gzip" => Box::new(flate2::read::GzDecoder::new(bytes)),
        "br" => Box::new(brotli::Decompressor::new(bytes, 4096)),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(bytes).unwrap()),
        other => panic!("unexpected coding {other}"),
    };
    d.read_to_end(&mut out).unwrap_or_else(|e| panic!("{coding}: {e}"));
    out
}

/// A gateway compressing under `/` (gzip 5, brotli 4, zstd 3) and not under `/plain/`.
fn gateway(origin: SocketAddr, listener: &str) -> Gateway {
    gateway_with(origin, listener, &[])
}

/// The same with these `server:` settings.
fn gateway_with(origin: SocketAddr, listener: &str, server: &[&str]) -> Gateway {
    Gateway::start(&format!(
        "{}listeners:\n  - {listener}\nupstreams:\n  app: {{ servers: [{{ address: \"{origin}\" }}] }}\n\
         virtual_hosts:\n  - default: true\n    locations:\n\
         \x20     - {{ path: /, proxy_pass: app, compression: {{ gzip: 5, brotli: 4, zstd: 3 }} }}\n\
         \x20     - {{ path: /plain/, proxy_pass: app }}\naccess_log: stdout\n",
        server_section(server)
    ))
}

fn plain_listener() -> &'static str {
    "{ listen: \"127.0.0.1:{PORT}\" }"
}

/// Through the lean loop (GET) and through Pingora's (a POST; and every
/// request with `lean_proxy: false`).
#[test]
fn responses_are_compressed_in_the_coding_the_client_prefers() {
    for settings in [&[][..], &["lean_proxy: false"]] {
        for method in ["GET", "POST"] {
            compressed_by_preference(settings, method);
        }
    }
}

fn compressed_by_preference(settings: &[&str], method: &str) {
    let (_keep, rx) = mpsc::channel();
    let g = gateway_with(origin(rx), plain_listener(), settings);
    let mut c = Client::connect(g.port).unwrap();
    let body: &[u8] = if method == "POST" { b"form=1" } else { b"" };
    // One kept-alive connection throughout: the chunked framing must end each answer right.
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=1, zstd;q=0.5, gzip;q=0.9", "br"),
        ("identity;q=1, *;q=0.2", "zstd"),
    ] {
        let r = c.send(method, "/page", &[("Accept-Encoding", accept)], body).unwrap();
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{accept}");
        assert_eq!(r.header("content-length"), None, "{accept}");
        assert_eq!(r.header("accept-ranges"), None, "{accept}");
        assert_eq!(r.header("etag"), Some("W/\"v1\""), "{accept}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept}");
        assert_eq!(
            r.header("x-got-accept-encoding"),
            Some(accept),
            "the server sees the client's field"
        );
        assert!(r.raw.len() < page().len() / 5, "{accept}: {} bytes", r.raw.len());
        assert_eq!(decode(coding, &r.raw), page(), "{accept}");
    }
    // Refused codings, and no field at all: the page as it came, still varying.
    for accept in [Some("gzip;q=0, br;q=0, zstd;q=0"), Some("deflate"), None] {
        let fields: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept-Encoding", *a)).collect();
        let r = c.send(method, "/page", &fields, body).unwrap();
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.header("content-length"), Some(page().len().to_string().as_str()));
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        assert_eq!(r.raw, page());
    }
    // nginx compresses a 404 page too.
    let r = c
        .send(method, "/missing", &[("Accept-Encoding", "gzip")], body)
        .unwrap();
    assert_eq!((r.status, r.header("content-encoding")), (404, Some("gzip")));
    assert_eq!(decode("gzip", &r.raw), page());
}

#[test]
fn responses_nginx_leaves_alone_pass_as_they_came() {
    let (_keep, rx) = mpsc::channel();
    let g = gateway(origin(rx), plain_listener());
    let mut c = Client::connect(g.port).unwrap();
    let gz = [("Accept-Encoding", "gzip, br")];
    for (path, why) in [
        ("/png", "a type not listed"),
        ("/small", "shorter than min_length"),
        ("/no-transform", "Cache-Control: no-transform"),
        ("/partial", "a 206"),
        ("/plain/page", "a location without compression"),
    ] {
        let r = c.send("GET", path, &gz, b"").unwrap();
        assert_eq!(r.header("content-encoding"), None, "{why}");
        assert!(r.header("content-length").is_some(), "{why}");
        assert_eq!(r.header("vary"), None, "{why}");
    }
    // Coded by the server already: its bytes, untouched.
    let r = c.send("GET", "/coded", &gz, b"").unwrap();
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.raw), page());
    // HEAD: the header as a plain GET's would be.
    let r = c.send("HEAD", "/page", &gz, b"").unwrap();
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some(page().len().to_string().as_str()));
    // HTTP/1.0 (nginx `gzip_http_version 1.1`): plain, and told that the answer varies.
    let raw = raw_exchange(
        g.port,
        &[b"GET /page HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"],
        Duration::ZERO,
    );
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_ascii_lowercase().contains("content-encoding"), "{head}");
    assert!(head.contains("Vary: Accept-Encoding"), "{head}");
    assert_eq!(body.as_bytes(), page());
}

#[test]
fn a_streamed_response_is_compressed_piece_by_piece() {
    for settings in [&[][..], &["lean_proxy: false"]] {
        streamed(settings);
    }
}

fn streamed(settings: &[&str]) {
    let (go, rx) = mpsc::channel();
    let g = gateway_with(origin(rx), plain_listener(), settings);
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    // Before the server sends its second half, the client can decode the whole first half.
    let half = page().len() / 2;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let decoded_so_far = |got: &[u8]| {
        let body = &got[got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(got.len(), |p| p + 4)..];
        let mut plain = Vec::new();
        let _ = flate2::read::GzDecoder::new(&unchunk(body)[..]).read_to_end(&mut plain);
        plain.len()
    };
    while decoded_so_far(&got) < half {
        let n = s
            .read(&mut buf)
            .expect("the first half arrives before the second is sent");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    go.send(()).unwrap();
    while !got.ends_with(b"\r\n0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert!(text.contains("Content-Encoding: gzip"), "{text:.300}");
    let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(decode("gzip", &unchunk(body)), page());
}

/// The data of a chunked body (as far as it goes).
fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0 && b.len() >= eol + 2 + n) else {
            break;
        };
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

#[test]
fn the_access_log_counts_the_bytes_sent() {
    let (_keep, rx) = mpsc::channel();
    let g = gateway(origin(rx), plain_listener());
    // GET takes the lean loop, POST Pingora's.
    for (method, body) in [("GET", &b""[..]), ("POST", b"x=1")] {
        let target = format!("/page?logged-{method}");
        let r = request(g.port, method, &target, &[("Accept-Encoding", "gzip")], body);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        let line = g.access_log_line(&target).expect("a line");
        let sent: usize = line
            .split("\" 200 ")
            .nth(1)
            .and_then(|t| t.split(' ').next()?.parse().ok())
            .unwrap();
        assert_eq!(sent, r.raw.len(), "{line}");
    }
}

#[test]
fn http2_clients_get_compressed_answers_without_chunked_framing() {
    let (_keep, rx) = mpsc::channel();
    let g = gateway(origin(rx), "{ listen: \"127.0.0.1:{PORT}\", h2c: true }");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::builder()
            .uri(format!("http://127.0.0.1:{}/page", g.port))
            .header("accept-encoding", "br")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], "br");
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert!(resp.headers().get("content-length").is_none());
        let mut body = resp.into_body();
        let got = h2_body(&mut body).await;
        assert_eq!(decode("br", &got), page());
    });
}

/// `compression` at the top level and on a virtual host applies to their
/// proxying locations that set none; all codings 0 turns it off.
#[test]
fn compression_is_inherited_from_the_top_level_and_the_host() {
    let (_keep, rx) = mpsc::channel();
    let origin = origin(rx);
    let g = Gateway::start(&format!(
        "listeners:\n  - listen: 127.0.0.1:{{PORT}}\nupstreams:\n  app: {{ servers: [{{ address: \"{origin}\" }}] }}\n\
         compression: {{ gzip: 1 }}\n\
         virtual_hosts:\n\
         \x20 - server_names: [brotli.test]\n    compression: {{ gzip: 0, brotli: 5 }}\n    locations:\n\
         \x20     - {{ path: /, proxy_pass: app }}\n\
         \x20     - {{ path: /raw/, proxy_pass: app, compression: {{ gzip: 0 }} }}\n\
         \x20 - default: true\n    locations: [{{ path: /, proxy_pass: app }}]\n"
    ));
    let coding = |host: &str, path: &str| {
        let r = request(
            g.port,
            "GET",
            path,
            &[("Host", host), ("Accept-Encoding", "gzip, br")],
            b"",
        );
        r.header("content-encoding").map(str::to_string)
    };
    assert_eq!(
        coding("other.test", "/page").as_deref(),
        Some("gzip"),
        "the top level's"
    );
    assert_eq!(coding("brotli.test", "/page").as_deref(), Some("br"), "the host's");
    assert_eq!(coding("brotli.test", "/raw/page"), None, "turned off");
}
