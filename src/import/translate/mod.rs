//! nginx directives into Portico's configuration. What has a Portico
//! equivalent is translated; what Portico does by default (forwarding
//! fields, upgrades, HTTP/1.1 and keep-alive upstream) is dropped quietly;
//! everything else is named in a [`Note`] with its line.

mod gzip;
mod limits;
mod pools;
mod sites;
mod streams;

use super::lex::Directive;
use crate::config::schema::{Location, ServerSection, TcpListener, Upstream};
use crate::config::units::{parse_size, Dur, Size};
use std::collections::BTreeMap;
use std::time::Duration;

/// A directive not translated (or translated only in part), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub line: usize,
    pub directive: String,
    pub why: String,
}

/// What a location inherits from the levels above it, as nginx inherits:
/// a level that sets one of these replaces what it would inherit (for the
/// lists, as a whole).
#[derive(Clone, Default)]
struct Inherited {
    client_max_body_size: Option<Size>,
    connect_timeout: Option<Dur>,
    read_timeout: Option<Dur>,
    write_timeout: Option<Dur>,
    next_upstream: Option<Vec<String>>,
    next_upstream_tries: Option<usize>,
    next_upstream_timeout: Option<Dur>,
    /// `proxy_set_header` name, value and line.
    set_headers: Option<Vec<(String, String, usize)>>,
    /// `add_header` name, value and line.
    add_headers: Option<Vec<(String, String, usize, bool)>>,
    /// `allow` / `deny` rules in order: (allow?, address, line).
    access: Option<Vec<(bool, String, usize)>>,
    /// The lists this level has set itself ([`HEADERS`], [`ADDED`], [`ACCESS`],
    /// [`LIMIT_REQ`], [`LIMIT_CONN`]): the first line of one replaces what came from above.
    own: [bool; 5],
    /// `limit_req` and `limit_conn` lines.
    limit_req: Option<Vec<Directive>>,
    limit_conn: Option<Vec<Directive>>,
    limit_conn_status: Option<u16>,
    limit_req_status: Option<u16>,
    /// An access check Portico cannot translate (`auth_basic`, `auth_request`):
    /// the directive and its line. Its locations refuse everyone (fail closed).
    guard: Option<(String, usize)>,
    /// `proxy_ssl_verify on`, `proxy_ssl_server_name on`, `proxy_ssl_trusted_certificate`.
    ssl_verify: bool,
    ssl_sni: bool,
    ssl_ca: Option<String>,
    /// `proxy_ssl_certificate`, `proxy_ssl_certificate_key`.
    ssl_cert: Option<String>,
    ssl_key: Option<String>,
    /// `gzip`, `gzip_comp_level`, `gzip_min_length`, `gzip_types`, `gzip_proxied`.
    gzip: gzip::Gzip,
}

/// The note on a `listen ... proxy_protocol`.
const PROXY_CLIENT: &str = "accept_proxy_protocol: the client address the PROXY header names is the client's \
     everywhere (nginx's $remote_addr is that only with real_ip_header proxy_protocol / set_real_ip_from)";

/// Indices of [`Inherited::own`].
const HEADERS: usize = 0;
const ADDED: usize = 1;
const ACCESS: usize = 2;
const LIMIT_REQ: usize = 3;
const LIMIT_CONN: usize = 4;

impl Inherited {
    /// The `http` level: nginx's defaults where Portico's differ.
    fn top() -> Inherited {
        Inherited {
            client_max_body_size: Some(Size(1 << 20)),
            ..Default::default()
        }
    }

    /// What a level below starts from.
    fn below(&self) -> Inherited {
        Inherited {
            own: [false; 5],
            ..self.clone()
        }
    }

    /// The list `i` of this level, emptied of what came from above when this level first sets it.
    fn own<'a, T>(own: &mut [bool; 5], i: usize, list: &'a mut Option<Vec<T>>) -> &'a mut Vec<T> {
        if !std::mem::replace(&mut own[i], true) {
            *list = None;
        }
        list.get_or_insert_with(Vec::new)
    }
}

/// One `listen` of a server.
#[derive(Clone)]
struct Listen {
    addr: String,
    /// `default_server`.
    default: bool,
    /// `ssl` (or the server's `ssl on`).
    ssl: bool,
    /// `proxy_protocol`: connections start with a PROXY protocol header.
    proxy_protocol: bool,
    line: usize,
}

/// One `server` block, as read.
struct Site {
    line: usize,
    names: Vec<String>,
    listens: Vec<Listen>,
    http2: bool,
    cert: Option<(String, String)>,
    locations: Vec<Location>,
}

#[derive(Default)]
pub struct Translator {
    pub notes: Vec<Note>,
    server: ServerSection,
    upstreams: BTreeMap<String, Upstream>,
    sites: Vec<Site>,
    /// Locations outside any `server` block (invalid in nginx).
    stray: Vec<Location>,
    access_log: Option<String>,
    /// Which `server` settings were set, and where (one value for all in Portico).
    global_lines: BTreeMap<&'static str, usize>,
    /// `ssl_certificate` and `ssl_certificate_key` set in `http`, for the servers that set none.
    http_cert: (Option<String>, Option<String>),
    /// `set_real_ip_from` addresses: Portico's `trusted_proxies`.
    trusted: Vec<String>,
    /// Upstreams left out (no server Portico can use).
    unusable: Vec<String>,
    /// The first name of the server block being read (nginx's `$server_name`).
    server_name: Option<String>,
    /// `stream { server { ... } }` blocks: TCP listeners.
    tcp: Vec<TcpListener>,
    /// `ssl_certificate` and `ssl_certificate_key` set in `stream`.
    stream_cert: (Option<String>, Option<String>),
    /// `proxy_ssl*` set in `stream`.
    stream_ssl: streams::StreamSsl,
    /// `limit_conn_zone` keys in `stream`, by zone name.
    stream_zones: BTreeMap<String, String>,
    /// `limit_req_zone` and `limit_conn_zone` in `http`, by zone name.
    http_zones: BTreeMap<String, limits::Zone>,
}

fn note(d: &Directive, why: impl Into<String>) -> Note {
    Note {
        line: d.line,
        directive: d.text(),
        why: why.into(),
    }
}

/// An nginx time (`30s`, `1m30s`, `500ms`, `10`: seconds).
fn nginx_time(s: &str) -> Option<Dur> {
    let mut total = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "M" => 30 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += n * ms;
        rest = &rest[unit_len..];
    }
    Some(Dur(Duration::from_millis(total)))
}

/// The nginx variables Portico's templates know, and their meaning is the same.
fn template_ok(value: &str) -> bool {
    crate::template::Template::parse(value).is_ok()
}

impl Translator {
    fn not_translated(&mut self, d: &Directive, why: impl Into<String>) {
        self.notes.push(note(d, why));
    }

    /// The top level of a file: `http`, or the parts of one (a `conf.d` file).
    pub fn main(&mut self, list: &[Directive]) {
        let mut http_parts = Vec::new();
        for d in list {
            match d.name.as_str() {
                "http" => match &d.block {
                    Some(b) => self.http(b),
                    None => self.not_translated(d, "not a block"),
                },
                "stream" => match &d.block {
                    Some(b) => self.stream(b),
                    None => self.not_translated(d, "not a block"),
                },
                "events" => {
                    for e in d.block.iter().flatten() {
                        self.not_translated(e, "connection handling is Portico's own (no equivalent)");
                    }
                }
                "worker_processes" => match d.args.first().and_then(|a| a.parse::<usize>().ok()) {
                    Some(n) if n > 0 => self.server.threads = n,
                    _ => self.not_translated(d, "set server.threads (worker threads per listener; default 1)"),
                },
                "error_log" => self.error_log(d),
                "pid" if d.args.len() == 1 => self.server.pid_file = Some(d.args[0].clone()),
                "user"
                | "pid"
                | "worker_rlimit_nofile"
                | "worker_cpu_affinity"
                | "daemon"
                | "master_process"
                | "load_module"
                | "include"
                | "env"
                | "pcre_jit"
                | "thread_pool"
                | "timer_resolution" => self.not_translated(d, "no equivalent in Portico"),
                _ => http_parts.push(d.clone()),
            }
        }
        if !http_parts.is_empty() {
            self.http(&http_parts);
        }
    }

    fn error_log(&mut self, d: &Directive) {
        match d.args.first().map(String::as_str) {
            Some("stderr") | None => {}
            Some(path) => {
                self.server.error_log = Some(path.to_string());
                if d.args.len() > 1 {
                    self.not_translated(d, "the level is not translated (set RUST_LOG)");
                }
            }
        }
    }

    fn http(&mut self, list: &[Directive]) {
        // Upstreams first: a proxy_pass may name one defined further down.
        for d in list.iter().filter(|d| d.name == "upstream") {
            self.upstream(d);
        }
        let mut inherited = Inherited::top();
        for d in list {
            match d.name.as_str() {
                "upstream" | "server" | "location" => {}
                "map" => self.map(d),
                "ssl_certificate" => self.http_cert.0 = d.args.first().cloned(),
                "ssl_certificate_key" => self.http_cert.1 = d.args.first().cloned(),
                _ => {
                    if !self.setting(d, &mut inherited) && !self.global(d) {
                        self.not_translated(d, "no equivalent in Portico");
                    }
                }
            }
        }
        for d in list {
            match d.name.as_str() {
                "server" => match &d.block {
                    Some(b) => self.site(d, b, &inherited),
                    None => self.not_translated(d, "not a block"),
                },
                "location" => {
                    self.notes.push(note(
                        d,
                        "a location outside any server block (invalid in nginx): put in a server on port 80",
                    ));
                    self.server_name = None;
                    let locs = self.location(d, &inherited, "");
                    self.stray.extend(locs);
                }
                _ => {}
            }
        }
    }

    /// `map $http_upgrade $connection_upgrade` is what Portico does for
    /// every upgrade; other maps have no equivalent.
    fn map(&mut self, d: &Directive) {
        let upgrade = d.args.first().is_some_and(|a| a == "$http_upgrade");
        if !upgrade {
            self.not_translated(d, "no equivalent in Portico (maps are not translated)");
        }
    }

    /// Settings Portico has once for all servers. `true` if `d` was one.
    fn global(&mut self, d: &Directive) -> bool {
        let arg = d.args.first().map(String::as_str).unwrap_or("");
        let key: &'static str = match d.name.as_str() {
            "send_timeout" | "keepalive_timeout" | "client_header_timeout" | "client_body_timeout" => {
                let Some(t) = nginx_time(arg) else {
                    self.not_translated(d, "an invalid time");
                    return true;
                };
                match d.name.as_str() {
                    "send_timeout" => self.server.send_timeout = t,
                    "keepalive_timeout" if t.0.is_zero() => {
                        self.not_translated(d, "nginx turns keep-alive off; Portico keeps its default (60s)");
                        return true;
                    }
                    "keepalive_timeout" => {
                        self.server.keepalive_timeout = t;
                        if d.args.len() > 1 {
                            self.not_translated(d, "the Keep-Alive header timeout is not translated");
                        }
                    }
                    "client_header_timeout" => self.server.client_header_timeout = t,
                    _ => self.server.client_body_timeout = Some(t),
                }
                const TIMES: [&str; 4] = [
                    "send_timeout",
                    "keepalive_timeout",
                    "client_header_timeout",
                    "client_body_timeout",
                ];
                TIMES
                    .into_iter()
                    .find(|k| *k == d.name)
                    .unwrap_or("client_body_timeout")
            }
            "large_client_header_buffers" => {
                let total = d
                    .args
                    .first()
                    .and_then(|n| n.parse::<u64>().ok())
                    .zip(d.args.get(1).and_then(|s| parse_size(s).ok()));
                match total {
                    Some((n, each)) => self.server.max_request_header_size = Size(n * each),
                    None => self.not_translated(d, "expected a number and a size"),
                }
                "max_request_header_size"
            }
            "resolver" => {
                // Its first address (nginx asks them in turn), and `valid=`.
                let first = d.args.iter().find(|a| !a.contains('='));
                match first {
                    Some(a) => self.server.resolver = Some(a.to_string()),
                    None => self.not_translated(d, "expected an address"),
                }
                if let Some(v) = d.args.iter().find_map(|a| a.strip_prefix("valid=")) {
                    if let Some(t) = nginx_time(v) {
                        self.server.resolver_valid = t;
                    }
                }
                if d.args.iter().filter(|a| !a.contains('=')).count() > 1 {
                    self.not_translated(d, "Portico asks one resolver: the first");
                }
                "resolver"
            }
            "underscores_in_headers" => {
                self.server.underscores_in_headers = arg == "on";
                "underscores_in_headers"
            }
            "access_log" => {
                let dest = if arg == "off" { "off" } else { arg };
                if d.args.len() > 1 && arg != "off" {
                    self.not_translated(
                        d,
                        "the log format is not translated: Portico writes nginx's `combined` plus upstream address and times",
                    );
                }
                if self.access_log.as_deref().is_some_and(|a| a != dest) {
                    self.not_translated(d, "Portico has one access log: the first one is kept");
                } else {
                    self.access_log = Some(dest.to_string());
                }
                return true;
            }
            "error_log" => {
                self.error_log(d);
                return true;
            }
            "server_tokens"
            | "sendfile"
            | "tcp_nopush"
            | "tcp_nodelay"
            | "default_type"
            | "types_hash_max_size"
            | "log_format"
            | "charset"
            | "keepalive_requests"
            | "ssl_protocols"
            | "ssl_ciphers"
            | "ssl_prefer_server_ciphers"
            | "ssl_session_cache"
            | "ssl_session_timeout"
            | "server_names_hash_bucket_size" => {
                let why = match d.name.as_str() {
                    "ssl_protocols" | "ssl_ciphers" | "ssl_prefer_server_ciphers" => {
                        "Portico offers TLS 1.2 and 1.3 with OpenSSL's default ciphers (no setting)"
                    }
                    "log_format" => "Portico's access log has one format: `combined` plus upstream address and times",
                    _ => "no equivalent in Portico",
                };
                self.not_translated(d, why);
                return true;
            }
            _ => return false,
        };
        if let Some(&first) = self.global_lines.get(key) {
            if first != d.line {
                self.not_translated(
                    d,
                    format!("Portico has one `{key}` for all servers: this one (the last) applies to all (also set on line {first})"),
                );
            }
        }
        self.global_lines.insert(key, d.line);
        true
    }

    /// The time `d` gives as its first argument; a note if it is none.
    fn time_arg(&mut self, d: &Directive) -> Option<Dur> {
        let t = nginx_time(d.args.first().map(String::as_str).unwrap_or(""));
        if t.is_none() {
            self.not_translated(d, "an invalid time");
        }
        t
    }

    /// Settings a location inherits. `true` if `d` was one.
    fn setting(&mut self, d: &Directive, into: &mut Inherited) -> bool {
        let arg = d.args.first().map(String::as_str).unwrap_or("");
        let time = |me: &mut Self| me.time_arg(d);
        match d.name.as_str() {
            "client_max_body_size" => match parse_size(arg) {
                Ok(n) => into.client_max_body_size = Some(Size(n)), // 0: no limit, as in nginx
                Err(e) => self.not_translated(d, e),
            },
            "auth_basic" | "auth_request" | "auth_jwt" => {
                into.guard = (arg != "off").then(|| (d.text(), d.line));
            }
            "auth_basic_user_file" | "auth_jwt_key_file" => {} // with the note on auth_basic
            "proxy_ssl_verify" => into.ssl_verify = arg == "on",
            "proxy_ssl_server_name" => into.ssl_sni = arg == "on",
            "proxy_ssl_trusted_certificate" => into.ssl_ca = Some(arg.to_string()),
            "proxy_ssl_certificate" => into.ssl_cert = Some(arg.to_string()),
            "proxy_ssl_certificate_key" => into.ssl_key = Some(arg.to_string()),
            "proxy_redirect" if !matches!(arg, "default" | "off") => {
                self.not_translated(d, "Portico passes a server's Location field as it came")
            }
            "proxy_hide_header" => self.not_translated(d, "use the headers plugin's response_remove"),
            "limit_req_zone" | "limit_conn_zone" => self.limit_zone(d),
            "limit_req" => Inherited::own(&mut into.own, LIMIT_REQ, &mut into.limit_req).push(d.clone()),
            "limit_conn" => Inherited::own(&mut into.own, LIMIT_CONN, &mut into.limit_conn).push(d.clone()),
            "limit_conn_status" => match arg.parse() {
                Ok(s) => into.limit_conn_status = Some(s),
                Err(_) => self.not_translated(d, "expected a status"),
            },
            "limit_req_status" => match arg.parse() {
                Ok(s) => into.limit_req_status = Some(s),
                Err(_) => self.not_translated(d, "expected a status"),
            },
            "limit_req_log_level" | "limit_conn_log_level" => {}
            "limit_req_dry_run" | "limit_conn_dry_run" => self.not_translated(d, "limits are never dry runs"),
            "include" => self.not_translated(d, "not followed: import the included file on its own"),
            "set_real_ip_from" => self.trusted.push(arg.to_string()),
            "real_ip_header" | "real_ip_recursive" => {}
            "proxy_connect_timeout" => into.connect_timeout = time(self),
            "proxy_read_timeout" => into.read_timeout = time(self),
            "proxy_send_timeout" => into.write_timeout = time(self),
            "proxy_next_upstream" => {
                const KNOWN: [&str; 11] = [
                    "error",
                    "timeout",
                    "invalid_header",
                    "http_500",
                    "http_502",
                    "http_503",
                    "http_504",
                    "http_403",
                    "http_404",
                    "http_429",
                    "non_idempotent",
                ];
                let (known, other): (Vec<&String>, Vec<&String>) = d
                    .args
                    .iter()
                    .partition(|a| KNOWN.contains(&a.as_str()) || a.as_str() == "off");
                if !other.is_empty() {
                    let other: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
                    self.not_translated(d, format!("not translated: {}", other.join(" ")));
                }
                into.next_upstream = Some(known.into_iter().cloned().collect());
            }
            "proxy_next_upstream_tries" => match arg.parse() {
                Ok(n) => into.next_upstream_tries = Some(n),
                Err(_) => self.not_translated(d, "expected a number"),
            },
            "proxy_next_upstream_timeout" => into.next_upstream_timeout = time(self),
            "proxy_set_header" if d.args.len() > 2 => {
                self.not_translated(d, "unexpected arguments after the value (a missing `;`?)")
            }
            "proxy_set_header" if d.args.len() == 2 => {
                let list = Inherited::own(&mut into.own, HEADERS, &mut into.set_headers);
                list.push((d.args[0].clone(), d.args[1].clone(), d.line));
            }
            "add_header" if d.args.len() == 2 || (d.args.len() == 3 && d.args[2] == "always") => {
                let list = Inherited::own(&mut into.own, ADDED, &mut into.add_headers);
                list.push((d.args[0].clone(), d.args[1].clone(), d.line, d.args.len() == 3));
            }
            "allow" | "deny" if d.args.len() == 1 => {
                let list = Inherited::own(&mut into.own, ACCESS, &mut into.access);
                list.push((d.name == "allow", d.args[0].clone(), d.line));
            }
            // Portico's behaviour already: HTTP/1.1 upstream, buffering as it streams, redirects as sent.
            "proxy_http_version" | "proxy_buffering" | "proxy_redirect" | "proxy_request_buffering" => {}
            "root" | "index" | "alias" | "try_files" | "autoindex" | "expires" | "sub_filter" => {
                self.not_translated(d, "Portico serves no files and rewrites no bodies")
            }
            _ => return self.gzip_setting(d, into),
        }
        true
    }
}

/// `host` or `host:port` as `host:port`.
/// A `listen` address as Portico writes it: `80` and `*:80` are
/// `0.0.0.0:80`, `localhost:80` is `127.0.0.1:80`, a host alone gets `port`.
fn listen_addr(addr: &str, port: u16) -> String {
    if let Ok(p) = addr.parse::<u16>() {
        return format!("0.0.0.0:{p}");
    }
    let a = addr
        .strip_prefix("*:")
        .map_or_else(|| addr.to_string(), |p| format!("0.0.0.0:{p}"));
    let a = a
        .strip_prefix("localhost:")
        .map_or(a.clone(), |p| format!("127.0.0.1:{p}"));
    with_port(&a, port)
}

fn with_port(addr: &str, port: u16) -> String {
    let has_port = match addr.rfind(':') {
        Some(i) => !addr.starts_with('[') || addr[..i].ends_with(']'),
        None => false,
    };
    if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times_and_addresses_read_as_nginx_reads_them() {
        let ms = |s: &str| nginx_time(s).map(|d| d.0.as_millis());
        assert_eq!(ms("30s"), Some(30_000));
        assert_eq!(ms("10"), Some(10_000));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("500ms"), Some(500));
        assert_eq!(ms("2h"), Some(7_200_000));
        assert_eq!(ms("x"), None);
        assert_eq!(ms(""), None);
        assert_eq!(with_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(with_port("a.example:8080", 80), "a.example:8080");
        assert_eq!(with_port("[::1]", 443), "[::1]:443");
        assert_eq!(with_port("[::1]:8443", 443), "[::1]:8443");
    }
}
