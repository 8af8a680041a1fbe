//! Test harness: real backends on 127.0.0.1 (ephemeral ports) that report who
//! they are and echo the headers they received, a real `portico` process
//! started from a YAML written by the test, and a small HTTP/1.1 client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ backends

/// How a test backend answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// 200 with `name=<name>` and the received headers in the body.
    Echo,
    /// This status, body `<name> says <status>`.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
    /// Answer like `Echo` after a delay.
    Slow(Duration),
    /// Send the response header one line per interval (20 lines), then
    /// answer like `Echo`: every read is quick, the whole header is slow.
    Dribble(Duration),
    /// Answer like `Echo` in HTTP/1.0 style: no Content-Length, the body
    /// ends when the backend closes the connection.
    CloseDelimited,
    /// Answer like `Echo` (keep-alive framing), then close the connection
    /// a moment later: a server that drops idle keep-alive connections.
    EchoThenClose,
    /// Answer a connection's first request like `Echo`; read the second one
    /// whole, then close without answering: a server that dies holding a
    /// request that came on a kept-alive connection.
    DropSecond,
    /// Answer like `Echo` with a chunked body: three chunks with pauses
    /// between them, then a trailer field; the connection stays open.
    Chunked,
    /// Answer like `Echo` followed by this many `x` bytes (Content-Length
    /// framing), written in 16 KiB pieces.
    Big(usize),
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub posts: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Paths this backend answers 500 on (e.g. a failing health path).
    pub fail_paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    pub inflight_now: Arc<AtomicU64>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Self::start_with(name, Behaviour::Echo)
    }

    pub fn start_with(name: &str, b: Behaviour) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(name, l, b)
    }

    /// Restart a stopped backend on the same address.
    pub fn start_on(name: &str, addr: SocketAddr, b: Behaviour) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => return Self::serve(name, l, b),
                Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn serve(name: &str, l: TcpListener, b: Behaviour) -> Backend {
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let be = Backend {
            name: name.to_string(),
            addr,
            requests: Default::default(),
            connections: Default::default(),
            posts: Default::default(),
            behaviour: Arc::new(Mutex::new(b)),
            fail_paths: Default::default(),
            stop: Default::default(),
            inflight_now: Default::default(),
        };
        let (name, reqs, conns, posts, beh, stop, fails, infl) = (
            be.name.clone(),
            be.requests.clone(),
            be.connections.clone(),
            be.posts.clone(),
            be.behaviour.clone(),
            be.stop.clone(),
            be.fail_paths.clone(),
            be.inflight_now.clone(),
        );
        std::thread::spawn(move || loop {
            if stop.load(SeqCst) {
                return;
            }
            match l.accept() {
                Ok((s, _)) => {
                    conns.fetch_add(1, SeqCst);
                    let (name, reqs, posts, beh, stop, fails, infl) = (
                        name.clone(),
                        reqs.clone(),
                        posts.clone(),
                        beh.clone(),
                        stop.clone(),
                        fails.clone(),
                        infl.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = handle_conn(s, &name, &reqs, &posts, &beh, &stop, &fails, &infl);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        });
        be
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Stop accepting and close connections (as a killed server would).
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        std::thread::sleep(Duration::from_millis(30));
    }

    pub fn hits(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
fn handle_conn(
    s: TcpStream,
    name: &str,
    reqs: &AtomicUsize,
    posts: &AtomicUsize,
    beh: &Mutex<Behaviour>,
    stop: &AtomicBool,
    fails: &Mutex<Vec<String>>,
    infl: &AtomicU64,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    for served in 0.. {
        // Request line, with polling so a stopped backend drops its connections.
        let mut line = String::new();
        loop {
            if stop.load(SeqCst) {
                return Ok(());
            }
            match r.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if !line.is_empty() && line.ends_with('\n') {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        w.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            headers.push(h);
        }
        let get = |n: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim().eq_ignore_ascii_case(n).then(|| v.trim().to_string())
            })
        };
        let mut body = Vec::new();
        if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(cl, 0);
            r.read_exact(&mut body)?;
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut sz = String::new();
                r.read_line(&mut sz)?;
                let n = usize::from_str_radix(sz.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        reqs.fetch_add(1, SeqCst);
        let method = line.split_whitespace().next().unwrap_or("").to_string();
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        if method == "POST" {
            posts.fetch_add(1, SeqCst);
        }
        let b = beh.lock().unwrap().clone();
        let failing = fails.lock().unwrap().iter().any(|p| p == &path);
        let (status, text) = match (&b, failing) {
            (_, true) => (500, format!("{name} fails {path}\n")),
            (Behaviour::Hang, _) => {
                while !stop.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(());
            }
            (Behaviour::Status(c), _) => (*c, format!("{name} says {c}\n")),
            (Behaviour::Dribble(d), _) => {
                w.write_all(b"HTTP/1.1 200 X\r\n")?;
                for i in 0..20 {
                    std::thread::sleep(*d);
                    w.write_all(format!("X-Drip: {i}\r\n").as_bytes())?;
                }
                let text = echo(name, &line, &headers, &body);
                let rest = format!("Content-Length: {}\r\nX-Backend: {name}\r\n\r\n{text}", text.len());
                w.write_all(rest.as_bytes())?;
                w.set_read_timeout(Some(Duration::from_millis(100)))?;
                continue;
            }
            (Behaviour::Slow(d), _) => {
                infl.fetch_add(1, SeqCst);
                std::thread::sleep(*d);
                infl.fetch_sub(1, SeqCst);
                (200, echo(name, &line, &headers, &body))
            }
            (Behaviour::Echo, _) => (200, echo(name, &line, &headers, &body)),
            (Behaviour::DropSecond, _) if served == 1 => return Ok(()),
            (Behaviour::DropSecond, _) => (200, echo(name, &line, &headers, &body)),
            (Behaviour::EchoThenClose, _) => {
                let text = echo(name, &line, &headers, &body);
                w.write_all(
                    format!(
                        "HTTP/1.1 200 X\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                )?;
                std::thread::sleep(Duration::from_millis(20));
                return Ok(()); // closes the kept-alive connection
            }
            (Behaviour::Chunked, _) => {
                let text = echo(name, &line, &headers, &body);
                w.write_all(
                    format!("HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\nX-Backend: {name}\r\n\r\n").as_bytes(),
                )?;
                let (a, b) = text.split_at(text.len() / 2);
                for part in [a, b, "\nend\n"] {
                    w.write_all(format!("{:x};ext=1\r\n{part}\r\n", part.len()).as_bytes())?;
                    std::thread::sleep(Duration::from_millis(10));
                }
                w.write_all(b"0\r\nX-Trailer: t\r\n\r\n")?;
                w.set_read_timeout(Some(Duration::from_millis(100)))?;
                continue;
            }
            (Behaviour::Big(n), _) => {
                let mut text = echo(name, &line, &headers, &body).into_bytes();
                text.resize(text.len() + n, b'x');
                w.write_all(
                    format!(
                        "HTTP/1.1 200 X\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n",
                        text.len()
                    )
                    .as_bytes(),
                )?;
                for piece in text.chunks(16 * 1024) {
                    w.write_all(piece)?;
                }
                w.set_read_timeout(Some(Duration::from_millis(100)))?;
                continue;
            }
            (Behaviour::CloseDelimited, _) => {
                let text = echo(name, &line, &headers, &body);
                w.write_all(format!("HTTP/1.0 200 OK\r\nX-Backend: {name}\r\n\r\n{text}").as_bytes())?;
                return Ok(()); // closing the connection ends the body
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Backend: {name}\r\n\r\n{text}",
            text.len()
        );
        w.write_all(resp.as_bytes())?;
        w.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    Ok(())
}

fn echo(name: &str, line: &str, headers: &[String], body: &[u8]) -> String {
    let mut t = format!("name={name}\nrequest={}\n", line.trim_end());
    for h in headers {
        t.push_str("header=");
        t.push_str(h);
        t.push('\n');
    }
    t.push_str(&format!("body-length={}\n", body.len()));
    t
}

// ------------------------------------------------------------------ gateway

/// A port for a gateway to bind later. Taken below the kernel's ephemeral
/// range and never handed out twice by one test process: a port from
/// `bind(0)`, released for the gateway, could meanwhile go to a backend or to
/// a client's outgoing connection, or be handed to a parallel test again, and
/// the test would then talk to someone else's server.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<(u16, u16, u16)>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high, port) = next.get_or_insert_with(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        // Unprivileged ports only; where the ephemeral range starts below
        // 4096, ports from the top of the port space instead.
        let (low, high) = match ephemeral_low {
            4096.. => ((ephemeral_low / 2).max(1024), ephemeral_low),
            _ => (61000, 65535),
        };
        // Parallel test processes start apart from each other.
        let start = low + (std::process::id() % u32::from(high - low)) as u16;
        (low, high, start)
    });
    for _ in *low..*high {
        let candidate = *port;
        *port = if *port + 1 >= *high { *low } else { *port + 1 };
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
    panic!("no free port in {low}..{high}");
}

pub fn portico_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// `portico -t` on `yaml`: (exit success, stdout + stderr with the file path shown as `FILE`).
pub fn config_test(yaml: &str) -> (bool, String) {
    let dir = temp_dir();
    let f = dir.join("test.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(portico_bin())
        .arg("-t")
        .arg("-c")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), text.replace(f.to_str().unwrap(), "FILE"))
}

/// A `server:` section with what every test gateway needs (pid file and
/// upgrade socket in its scratch `{DIR}`, 1 s grace periods), plus one
/// `key: value` line per entry of `settings`. `Gateway::start` adds it when
/// a config has no `server:` section of its own.
pub fn server_section(settings: &[&str]) -> String {
    let mut s = String::from(
        "server:\n  pid_file: {DIR}/portico.pid\n  upgrade_sock: {DIR}/upgrade.sock\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n",
    );
    for line in settings {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
    pub conf: std::path::PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "portico-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Gateway {
    /// Start portico on `yaml`, where `{PORT}` is replaced by a free port and
    /// `{DIR}` by a scratch directory. Waits until the health endpoint answers.
    pub fn start(yaml: &str) -> Gateway {
        let port = free_port();
        let dir = temp_dir();
        let yaml = if yaml.contains("pid_file") || yaml.contains("\nserver:") {
            yaml.to_string()
        } else {
            format!("{}{yaml}", server_section(&[]))
        };
        let yaml = yaml
            .replace("{PORT}", &port.to_string())
            .replace("{DIR}", dir.to_str().unwrap());
        let conf = dir.join("portico.yaml");
        std::fs::write(&conf, &yaml).unwrap();
        let child = Command::new(portico_bin())
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::from(std::fs::File::create(dir.join("access.log")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(dir.join("error.log")).unwrap()))
            .spawn()
            .expect("start portico");
        let mut g = Gateway { child, port, dir, conf };
        g.wait_ready();
        g
    }

    /// Panics with the gateway's log if its process has exited (a port it
    /// could not bind, a config it refused).
    fn still_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("portico exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let conf = std::fs::read_to_string(&self.conf).unwrap();
        // The admin listener starts on its own: wait for it too when there is one.
        let admin = conf.split_once("admin:").and_then(|(_, rest)| {
            let port = rest.split_once("127.0.0.1:")?.1;
            port[..port.find(|c: char| !c.is_ascii_digit())?].parse::<u16>().ok()
        });
        let admin_up = || admin.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
        // Health endpoint disabled, or a TLS listener: a TCP accept is enough then.
        let plain_health = !conf.contains("enabled: false") && !conf.contains("certificates:");
        while Instant::now() < deadline {
            let up = try_request(self.port, "GET", "/nginx/health", &[], b"").is_ok_and(|r| r.status == 200)
                || !plain_health && TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            // Checked after the answer: it may have come from a process that held the port first.
            self.still_running();
            if up && admin_up() {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!("portico did not start; stderr:\n{}", self.stderr());
    }

    /// Wait (5 s at most) until 127.0.0.1:`port` accepts: another listener of
    /// this gateway (a TCP one, say), whose service starts beside the one
    /// the start waited for. The probe is a connection, opened and closed.
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Wait (5 s at most) until the error log says `needle`; panics with the log otherwise.
    pub fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the error log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first access-log line with `needle`, waiting (3 s at most) for
    /// the log's writer thread, which writes lines in batches.
    pub fn access_log_line(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let log = self.access_log();
            if let Some(l) = log.lines().find(|l| l.contains(needle)) {
                return Some(l.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, "GET", path, &[], b"")
    }

    pub fn get_host(&self, host: &str, path: &str) -> Response {
        request(self.port, "GET", path, &[("Host", host)], b"")
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        self.signal("INT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came (after any chunked framing).
    pub raw: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// Which backend answered (`name=` line of an echo body).
    pub fn backend(&self) -> String {
        self.header("x-backend").unwrap_or("").to_string()
    }
    /// A header the backend received, from the echo body.
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.body.lines().find_map(|l| {
            let h = l.strip_prefix("header=")?;
            let (k, v) = h.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Send `parts` on a new connection, pausing `pause` between them, and read
/// until the gateway closes it (5 s at most; sending stops early if it has
/// closed already): raw bytes for requests the
/// client above would not write.
pub fn raw_exchange(port: u16, parts: &[&[u8]], pause: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        if s.write_all(p).is_err() {
            break; // the gateway has closed the connection: read what it said
        }
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// One request on a new connection; panics on I/O errors.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut c = Client::connect(port)?;
    c.send(method, path, headers, body)
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Whether the server closes this idle connection within `d`.
    pub fn closed_within(&mut self, d: Duration) -> bool {
        self.w.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("Host: localhost\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")) {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        self.w.write_all(req.as_bytes())?;
        self.w.write_all(body)?;
        self.read_response(method == "HEAD")
    }

    /// Write `bytes` as they are (requests sent ahead of their answers).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// The connection's socket, for reading it raw.
    pub fn into_stream(self) -> TcpStream {
        self.w
    }

    pub fn read_response(&mut self, head: bool) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut resp = Response {
            status,
            headers,
            body: String::new(),
            raw: Vec::new(),
        };
        if head || status == 204 || status == 304 || status == 101 {
            return Ok(resp);
        }
        let mut body = Vec::new();
        if let Some(cl) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(cl, 0);
            self.r.read_exact(&mut body)?;
        } else if resp.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut sz = String::new();
                self.r.read_line(&mut sz)?;
                let n = usize::from_str_radix(sz.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            self.r.read_to_end(&mut body)?;
        }
        resp.body = String::from_utf8_lossy(&body).to_string();
        resp.raw = body;
        Ok(resp)
    }
}

/// Count which backend answered each of `n` requests.
pub fn spread(g: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    let mut c = Client::connect(g.port).unwrap();
    for _ in 0..n {
        let r = c.send("GET", path, &[], b"").unwrap();
        *m.entry(r.backend()).or_insert(0) += 1;
    }
    m
}

/// A pool of servers as YAML lines.
/// An HTTP/2 body, whole (its flow-control window given back as it comes).
pub async fn h2_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got
}

pub fn servers_yaml(backends: &[&Backend], extra: &str) -> String {
    backends
        .iter()
        .map(|b| format!("      - address: {}\n{extra}", b.addr))
        .collect()
}
