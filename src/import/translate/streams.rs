//! `stream` blocks (nginx's TCP proxying) into Portico's `tcp:` listeners.

use super::{listen_addr, pools, with_port, Translator};
use crate::config::schema::{Certificate, TcpListener, TcpTls};
use crate::import::lex::Directive;
use std::collections::BTreeMap;

/// A TCP listener before its address and pool are known: what `stream`
/// level settings give every server, nginx's defaults otherwise.
fn defaults() -> TcpListener {
    TcpListener {
        listen: String::new(),
        proxy_pass: None,
        sni: Default::default(),
        connect_timeout: None,
        idle_timeout: None,
        next_upstream: true,
        next_upstream_tries: 0,
        next_upstream_timeout: None,
        proxy_protocol: None,
        accept_proxy_protocol: false,
        max_connections: 0,
        max_connections_per_client: 0,
        deny: Vec::new(),
        allow: Vec::new(),
        tls: None,
    }
}

/// `proxy_ssl*` settings of a stream level: TLS to the servers (nginx's
/// defaults: no verification, no SNI).
#[derive(Clone, Default)]
pub(super) struct StreamSsl {
    on: bool,
    verify: bool,
    /// `proxy_ssl_server_name on`.
    sni: bool,
    /// `proxy_ssl_name`.
    name: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl StreamSsl {
    /// Take `d` if it is one of these settings.
    fn read(&mut self, d: &Directive) -> bool {
        let arg = d.args.first().map(String::as_str).unwrap_or("");
        match d.name.as_str() {
            "proxy_ssl" => self.on = arg == "on",
            "proxy_ssl_verify" => self.verify = arg == "on",
            "proxy_ssl_server_name" => self.sni = arg == "on",
            "proxy_ssl_name" => self.name = Some(arg.to_string()),
            "proxy_ssl_trusted_certificate" => self.ca = Some(arg.to_string()),
            "proxy_ssl_certificate" => self.cert = Some(arg.to_string()),
            "proxy_ssl_certificate_key" => self.key = Some(arg.to_string()),
            // Portico's OpenSSL defaults.
            "proxy_ssl_protocols" | "proxy_ssl_ciphers" | "proxy_ssl_session_reuse" | "proxy_ssl_verify_depth" => {}
            _ => return false,
        }
        true
    }
}

/// A `map $ssl_preread_server_name $var { ... }`: its entries (key,
/// value, line) and its `default` value.
#[derive(Default)]
struct SniMap {
    entries: Vec<(String, String, usize)>,
    default: Option<String>,
}

/// `allow` / `deny` rules in order: (allow?, address, line).
type Rules = Vec<(bool, String, usize)>;

fn rule(d: &Directive) -> Option<(bool, String, usize)> {
    let addr = d.args.first()?;
    Some((d.name == "allow", addr.clone(), d.line))
}

impl Translator {
    pub(super) fn stream(&mut self, list: &[Directive]) {
        // Stream upstreams have names of their own in nginx; one that an http
        // upstream already has is written under another.
        let mut renamed = BTreeMap::new();
        for d in list.iter().filter(|d| d.name == "upstream") {
            let mut d = d.clone();
            if let Some(name) = d.args.first().cloned() {
                if self.upstreams.contains_key(&name) || self.unusable.contains(&name) {
                    let new = format!("{name}_tcp");
                    self.not_translated(&d, format!("an http upstream has this name: written as `{new}`"));
                    d.args[0] = new.clone();
                    renamed.insert(name, new);
                }
            }
            self.tcp_hash_only_by_address(&mut d);
            self.upstream(&d);
        }
        // Zones first: a `limit_conn` may come before the zone it names.
        for d in list.iter().filter(|d| d.name == "limit_conn_zone") {
            let zone = d.args.get(1).and_then(|z| z.strip_prefix("zone=")?.split(':').next());
            match (d.args.first(), zone) {
                (Some(key), Some(zone)) => {
                    self.stream_zones.insert(zone.to_string(), key.clone());
                }
                _ => self.not_translated(d, "expected a key and zone=NAME:SIZE"),
            }
        }
        let mut above = defaults();
        let mut rules = Rules::new();
        let mut maps = BTreeMap::new();
        for d in list {
            match d.name.as_str() {
                "upstream" | "server" | "limit_conn_zone" => {}
                "map" => self.stream_map(d, &mut maps),
                "allow" | "deny" => rules.extend(rule(d)),
                "ssl_certificate" => self.stream_cert.0 = d.args.first().cloned(),
                "ssl_certificate_key" => self.stream_cert.1 = d.args.first().cloned(),
                _ if self.stream_ssl.read(d) => {}
                _ if self.stream_setting(d, &mut above) => {}
                _ => self.not_translated(d, "no equivalent in Portico"),
            }
        }
        for d in list.iter().filter(|d| d.name == "server") {
            match &d.block {
                Some(b) => self.stream_server(d, b, (&above, &rules), (&renamed, &maps)),
                None => self.not_translated(d, "not a block"),
            }
        }
    }

    /// A TCP listener hashes only the client's address: a stream upstream's
    /// `hash` of anything else is dropped (round robin instead).
    fn tcp_hash_only_by_address(&mut self, d: &mut Directive) {
        let Some(block) = &mut d.block else { return };
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for e in block.drain(..) {
            let other_key = !matches!(
                e.args.first().map(String::as_str),
                Some("$remote_addr" | "$binary_remote_addr")
            );
            if e.name == "hash" && other_key {
                dropped.push(e);
            } else {
                kept.push(e);
            }
        }
        *block = kept;
        for e in dropped {
            self.not_translated(&e, "a TCP listener hashes only $remote_addr: round robin instead");
        }
    }

    /// A `stream` or stream `server` level setting into `t`; `false` if `d` is none.
    fn stream_setting(&mut self, d: &Directive, t: &mut TcpListener) -> bool {
        let arg = d.args.first().map(String::as_str).unwrap_or("");
        let time = |me: &mut Self| me.time_arg(d);
        match d.name.as_str() {
            "proxy_connect_timeout" => t.connect_timeout = time(self).or(t.connect_timeout),
            "proxy_timeout" => t.idle_timeout = time(self).or(t.idle_timeout),
            "proxy_next_upstream" => t.next_upstream = arg != "off",
            "proxy_next_upstream_tries" => match arg.parse() {
                Ok(n) => t.next_upstream_tries = n,
                Err(_) => self.not_translated(d, "expected a number"),
            },
            "proxy_next_upstream_timeout" => {
                t.next_upstream_timeout = time(self).filter(|d| !d.0.is_zero());
            }
            "proxy_protocol" => t.proxy_protocol = (arg == "on").then(|| "v1".to_string()),
            "limit_conn" => self.stream_limit(d, t),
            "limit_conn_log_level" => {}
            // Portico passes a half-close on, as `proxy_half_close on` does.
            "proxy_half_close" if arg == "on" => {}
            "proxy_half_close" => self.not_translated(d, "Portico passes half-closes on (as `proxy_half_close on`)"),
            // Portico's own: sockets without Nagle, 16k buffers.
            "tcp_nodelay" | "proxy_buffer_size" | "preread_buffer_size" => {}
            "access_log" | "log_format" | "error_log" => self.not_translated(
                d,
                "TCP connections are logged in Portico's access_log, in the HTTP lines' shape",
            ),
            _ => return false,
        }
        true
    }

    /// The pool a server with `proxy_ssl on` passes to speaks TLS to its
    /// servers, with the server's `proxy_ssl_*` settings (a pool shared
    /// with servers without it is TLS for them too).
    fn stream_tls(&mut self, d: &Directive, pool: &str, ssl: &StreamSsl) {
        let Some(u) = self.upstreams.get_mut(pool) else { return };
        u.tls = true;
        u.tls_verify = ssl.verify;
        u.tls_ca_file = ssl.ca.clone();
        u.tls_cert = ssl.cert.clone();
        u.tls_key = ssl.key.clone();
        let name = ssl.name.clone().or_else(|| pools::named_host(u));
        u.tls_sni = name.filter(|_| ssl.sni || ssl.verify);
        if !ssl.verify {
            let why = format!(
                "upstream {pool}: tls: true, tls_verify: false (nginx does not verify the server's certificate by default)"
            );
            self.notes.push(super::note(d, why));
        }
    }

    /// `limit_conn ZONE N`: by client address (`$binary_remote_addr`,
    /// `$remote_addr`) `max_connections_per_client`; by a key the same for
    /// every connection of a server (`$server_addr`, `$server_port`, a
    /// constant) `max_connections`. Counted per listener, where nginx counts
    /// a zone across the servers that share it.
    fn stream_limit(&mut self, d: &Directive, t: &mut TcpListener) {
        let (Some(zone), Some(n)) = (d.args.first(), d.args.get(1).and_then(|n| n.parse::<usize>().ok())) else {
            return self.not_translated(d, "expected a zone and a number");
        };
        match self.stream_zones.get(zone).map(String::as_str) {
            Some("$binary_remote_addr" | "$remote_addr") => t.max_connections_per_client = n,
            Some("$server_addr" | "$server_port") => t.max_connections = n,
            Some(k) if !k.contains('$') => t.max_connections = n,
            Some(k) => self.not_translated(d, format!("a limit by {k}: only by client address or per server")),
            None => self.not_translated(d, format!("no limit_conn_zone {zone} in stream")),
        }
    }

    fn stream_server(
        &mut self,
        d: &Directive,
        block: &[Directive],
        (above, above_rules): (&TcpListener, &Rules),
        (renamed, maps): (&BTreeMap<String, String>, &BTreeMap<String, SniMap>),
    ) {
        let mut preread = false;
        let mut t = above.clone();
        // As in nginx, a level with rules of its own inherits none.
        let mut rules = Rules::new();
        let mut listens = Vec::new();
        let mut pass = None;
        let mut cert = self.stream_cert.clone();
        let mut ssl = self.stream_ssl.clone();
        for e in block {
            match e.name.as_str() {
                "listen" => {
                    if let Some(addr) = self.stream_listen(e) {
                        listens.push(addr);
                    }
                }
                "proxy_pass" => pass = Some(e),
                "allow" | "deny" => rules.extend(rule(e)),
                "ssl_certificate" => cert.0 = e.args.first().cloned(),
                "ssl_certificate_key" => cert.1 = e.args.first().cloned(),
                "ssl_preread" => preread = e.args.first().is_some_and(|a| a == "on"),
                _ if ssl.read(e) => {}
                _ if self.stream_setting(e, &mut t) => {}
                _ => self.not_translated(e, "no equivalent in Portico"),
            }
        }
        if listens.is_empty() {
            return; // each listen left out is named
        }
        let by_name = pass.and_then(|e| Some((e, maps.get(e.args.first()?)?)));
        match by_name {
            Some((e, map)) if preread => self.sni_rules(e, map, renamed, &mut t),
            _ => t.proxy_pass = pass.and_then(|e| self.stream_target(e, e.args.first()?, renamed)),
        }
        if t.proxy_pass.is_none() && t.sni.is_empty() {
            return self.not_translated(d, "no proxy_pass Portico can use: this server is left out");
        }
        if ssl.on {
            let pools: Vec<String> = t.proxy_pass.iter().chain(t.sni.values()).cloned().collect();
            for pool in pools {
                self.stream_tls(d, &pool, &ssl);
            }
        }
        let rules = if rules.is_empty() { above_rules } else { &rules };
        if !rules.is_empty() {
            (t.deny, t.allow) = self.access_lists(rules);
        }
        for (listen, ssl, proxied, line) in listens {
            let tls = match (ssl, &cert) {
                (false, _) => None,
                (true, (Some(c), Some(k))) => Some(TcpTls {
                    certificates: vec![Certificate {
                        cert: c.clone(),
                        key: k.clone(),
                        server_names: Vec::new(),
                    }],
                }),
                (true, _) => {
                    let why = "`listen ... ssl` with no ssl_certificate and ssl_certificate_key: left out";
                    self.notes.push(super::Note {
                        line,
                        directive: format!("listen {listen} ssl"),
                        why: why.into(),
                    });
                    continue;
                }
            };
            self.tcp.push(TcpListener {
                listen,
                tls,
                accept_proxy_protocol: proxied,
                ..t.clone()
            });
        }
    }

    /// A stream `listen`: its address, whether it terminates TLS, and its
    /// line; or `None` (with a note) for what a TCP listener does not do.
    fn stream_listen(&mut self, e: &Directive) -> Option<(String, bool, bool, usize)> {
        let (mut ssl, mut proxied) = (false, false);
        let Some(addr) = e.args.first() else {
            self.not_translated(e, "a listen needs an address");
            return None;
        };
        for p in &e.args[1..] {
            match p.as_str() {
                "udp" => {
                    self.not_translated(e, "Portico does not balance UDP: left out");
                    return None;
                }
                "ssl" => ssl = true,
                "proxy_protocol" => {
                    proxied = true;
                    self.notes.push(super::note(e, super::PROXY_CLIENT));
                }
                "reuseport" | "bind" => {}
                p if p.starts_with("backlog=") || p.starts_with("ipv6only=") || p.starts_with("so_keepalive=") => {}
                p => self.not_translated(e, format!("`{p}` is not translated")),
            }
        }
        if addr.starts_with("unix:") {
            self.not_translated(e, "Portico listens on TCP addresses only");
            return None;
        }
        Some((listen_addr(addr, 0), ssl, proxied, e.line))
    }

    /// A `map $ssl_preread_server_name $var` (nginx's way to route by
    /// server name), kept under `$var` for the servers whose `proxy_pass` is it.
    fn stream_map(&mut self, d: &Directive, maps: &mut BTreeMap<String, SniMap>) {
        let (Some("$ssl_preread_server_name"), Some(var)) = (d.args.first().map(String::as_str), d.args.get(1)) else {
            return self.not_translated(d, "only a map of $ssl_preread_server_name is translated (as sni rules)");
        };
        let mut map = SniMap::default();
        for e in d.block.iter().flatten() {
            match (e.name.as_str(), e.args.first()) {
                ("hostnames" | "volatile", _) => {}
                ("default", Some(v)) => map.default = Some(v.clone()),
                (key, Some(v)) => map.entries.push((key.to_string(), v.clone(), e.line)),
                _ => self.not_translated(e, "not translated"),
            }
        }
        maps.insert(var.clone(), map);
    }

    /// `proxy_pass $var` with `ssl_preread on`, `$var` mapped from the
    /// server name: the map's names become `sni` rules, its default `proxy_pass`.
    fn sni_rules(&mut self, e: &Directive, map: &SniMap, renamed: &BTreeMap<String, String>, t: &mut TcpListener) {
        for (key, value, line) in &map.entries {
            let entry = Directive {
                name: key.clone(),
                args: vec![value.clone()],
                block: None,
                line: *line,
            };
            // nginx `hostnames`: `.example.com` is the name and every name under it.
            let names = match key.as_str() {
                // Regexes as they are (tried in order, after the names); `www.example.*` as one.
                k if k.starts_with('~') => vec![k.to_string()],
                k if k.ends_with(".*") => vec![super::sites::trailing_wildcard(k)],
                k if k.starts_with('.') => vec![k[1..].to_ascii_lowercase(), format!("*{}", k.to_ascii_lowercase())],
                k => vec![k.to_ascii_lowercase()],
            };
            if let Some(pool) = self.stream_target(&entry, value, renamed) {
                for n in names {
                    t.sni.insert(n, pool.clone());
                }
            }
        }
        t.proxy_pass = match &map.default {
            Some(v) => self.stream_target(e, v, renamed),
            None => None,
        };
    }

    /// The pool a stream `proxy_pass` (or a map value) names: a stream
    /// upstream, or a new pool of one `host:port`.
    fn stream_target(&mut self, e: &Directive, target: &str, renamed: &BTreeMap<String, String>) -> Option<String> {
        if target.contains('$') || target.starts_with("unix:") {
            self.not_translated(e, "a proxy_pass with variables or to a unix socket is not translated");
            return None;
        }
        let name = renamed.get(target).map_or(target, String::as_str);
        if self.upstreams.contains_key(name) {
            return Some(name.to_string());
        }
        if self.unusable.iter().any(|u| u == name) {
            self.not_translated(e, format!("`upstream {name}` has no server Portico can use"));
            return None;
        }
        if with_port(target, 0) != target {
            self.not_translated(e, "no stream `upstream` of this name, and no port to connect to");
            return None;
        }
        let pool = target.replace([':', '.', '[', ']'], "_");
        if !self.upstreams.contains_key(&pool) {
            let one = pools::pool(false, vec![pools::server_at(target.to_string())]);
            self.upstreams.insert(pool.clone(), one);
        }
        Some(pool)
    }
}
