//! A configuration written out as Portico YAML: only what differs from the
//! defaults, in the order the README documents the keys, strings quoted.

use crate::config::schema::{
    Algorithm, Config, Location, PluginEntry, ServerSection, TcpListener, Upstream, VirtualHost,
};
use crate::config::units::{Dur, Size};
use std::fmt::Write;

/// `cfg` as YAML, after `preface` (comment lines, each starting with `#`).
pub fn yaml(cfg: &Config, preface: &str) -> String {
    let mut y = String::new();
    y.push_str(preface);
    server(&mut y, &cfg.server);
    y.push_str(if cfg.listeners.is_empty() {
        "listeners: []\n"
    } else {
        "listeners:\n"
    });
    for l in &cfg.listeners {
        let _ = writeln!(y, "  - listen: {}", q(&l.listen));
        if l.accept_proxy_protocol {
            y.push_str("    accept_proxy_protocol: true\n");
        }
        if l.h2c {
            y.push_str("    h2c: true\n");
        }
        if let Some(tls) = &l.tls {
            y.push_str("    tls:\n");
            if !tls.http2 {
                y.push_str("      http2: false\n");
            }
            y.push_str("      certificates:\n");
            for c in &tls.certificates {
                let _ = writeln!(y, "        - cert: {}", q(&c.cert));
                let _ = writeln!(y, "          key: {}", q(&c.key));
                if !c.server_names.is_empty() {
                    let _ = writeln!(y, "          server_names: {}", list(&c.server_names));
                }
            }
        }
    }
    if !cfg.tcp.is_empty() {
        y.push_str("\ntcp:\n");
        for t in &cfg.tcp {
            tcp(&mut y, t);
        }
    }
    if !cfg.upstreams.is_empty() {
        y.push_str("\nupstreams:\n");
        for (name, u) in &cfg.upstreams {
            let _ = writeln!(y, "  {}:", q(name));
            upstream(&mut y, u);
        }
    }
    y.push_str(if cfg.virtual_hosts.is_empty() {
        "\nvirtual_hosts: []\n"
    } else {
        "\nvirtual_hosts:\n"
    });
    for v in &cfg.virtual_hosts {
        vhost(&mut y, v);
    }
    if !cfg.trusted_proxies.is_empty() {
        let _ = writeln!(y, "\ntrusted_proxies: {}", list(&cfg.trusted_proxies));
    }
    if cfg.access_log != "stdout" {
        let _ = writeln!(y, "\naccess_log: {}", q(&cfg.access_log));
    }
    y
}

fn tcp(y: &mut String, t: &TcpListener) {
    let _ = writeln!(y, "  - listen: {}", q(&t.listen));
    if let Some(pool) = &t.proxy_pass {
        let _ = writeln!(y, "    proxy_pass: {}", q(pool));
    }
    if !t.sni.is_empty() {
        y.push_str("    sni:\n");
        for (name, pool) in &t.sni {
            let _ = writeln!(y, "      {}: {}", q(name), q(pool));
        }
    }
    timeouts(
        y,
        "    ",
        [("connect_timeout", t.connect_timeout), ("idle_timeout", t.idle_timeout)],
    );
    if !t.next_upstream {
        y.push_str("    next_upstream: false\n");
    }
    if t.next_upstream_tries != 0 {
        let _ = writeln!(y, "    next_upstream_tries: {}", t.next_upstream_tries);
    }
    timeouts(y, "    ", [("next_upstream_timeout", t.next_upstream_timeout)]);
    if let Some(v) = &t.proxy_protocol {
        let _ = writeln!(y, "    proxy_protocol: {v}");
    }
    if t.accept_proxy_protocol {
        y.push_str("    accept_proxy_protocol: true\n");
    }
    if t.max_connections != 0 {
        let _ = writeln!(y, "    max_connections: {}", t.max_connections);
    }
    if t.max_connections_per_client != 0 {
        let _ = writeln!(y, "    max_connections_per_client: {}", t.max_connections_per_client);
    }
    if !t.deny.is_empty() {
        let _ = writeln!(y, "    deny: {}", list(&t.deny));
    }
    if !t.allow.is_empty() {
        let _ = writeln!(y, "    allow: {}", list(&t.allow));
    }
    if let Some(tls) = &t.tls {
        y.push_str("    tls:\n      certificates:\n");
        for c in &tls.certificates {
            let _ = writeln!(y, "        - cert: {}", q(&c.cert));
            let _ = writeln!(y, "          key: {}", q(&c.key));
        }
    }
}

fn server(y: &mut String, s: &ServerSection) {
    let d = ServerSection::default();
    let mut lines = Vec::new();
    if s.threads != d.threads {
        lines.push(format!("threads: {}", s.threads));
    }
    for (key, v, dv) in [
        ("keepalive_timeout", s.keepalive_timeout, d.keepalive_timeout),
        (
            "client_header_timeout",
            s.client_header_timeout,
            d.client_header_timeout,
        ),
        ("send_timeout", s.send_timeout, d.send_timeout),
    ] {
        if v != dv {
            lines.push(format!("{key}: {}", dur(v)));
        }
    }
    if let Some(t) = s.client_body_timeout {
        lines.push(format!("client_body_timeout: {}", dur(t)));
    }
    if s.max_request_header_size != d.max_request_header_size {
        lines.push(format!("max_request_header_size: {}", size(s.max_request_header_size)));
    }
    if s.underscores_in_headers {
        lines.push("underscores_in_headers: true".into());
    }
    if let Some(r) = &s.resolver {
        lines.push(format!("resolver: {}", q(r)));
    }
    if s.resolver_valid != d.resolver_valid {
        lines.push(format!("resolver_valid: {}", dur(s.resolver_valid)));
    }
    if let Some(e) = &s.error_log {
        lines.push(format!("error_log: {}", q(e)));
    }
    if let Some(p) = &s.pid_file {
        lines.push(format!("pid_file: {}", q(p)));
    }
    if lines.is_empty() {
        return;
    }
    y.push_str("server:\n");
    for l in lines {
        let _ = writeln!(y, "  {l}");
    }
    y.push('\n');
}

fn upstream(y: &mut String, u: &Upstream) {
    if u.algorithm != Algorithm::RoundRobin {
        let a = serde_yaml::to_string(&u.algorithm).unwrap_or_default();
        let _ = writeln!(y, "    algorithm: {}", a.trim());
    }
    if let Some(k) = &u.hash_key {
        let _ = writeln!(y, "    hash_key: {}", q(k));
    }
    if u.consistent {
        y.push_str("    consistent: true\n");
    }
    if u.keepalive != 64 {
        let _ = writeln!(y, "    keepalive: {}", u.keepalive);
    }
    timeouts(
        y,
        "    ",
        [
            ("keepalive_timeout", u.keepalive_timeout),
            ("connect_timeout", u.connect_timeout),
            ("read_timeout", u.read_timeout),
            ("write_timeout", u.write_timeout),
        ],
    );
    next_upstream(
        y,
        "    ",
        &u.next_upstream,
        u.next_upstream_tries,
        u.next_upstream_timeout,
    );
    if u.tls {
        y.push_str("    tls: true\n");
    }
    if let Some(sni) = &u.tls_sni {
        let _ = writeln!(y, "    tls_sni: {}", q(sni));
    }
    if !u.tls_verify {
        y.push_str("    tls_verify: false\n");
    }
    if let Some(ca) = &u.tls_ca_file {
        let _ = writeln!(y, "    tls_ca_file: {}", q(ca));
    }
    if let Some(cert) = &u.tls_cert {
        let _ = writeln!(y, "    tls_cert: {}", q(cert));
    }
    if let Some(key) = &u.tls_key {
        let _ = writeln!(y, "    tls_key: {}", q(key));
    }
    y.push_str("    servers:\n");
    for s in &u.servers {
        let _ = writeln!(y, "      - address: {}", q(&s.address));
        if s.weight != 1 {
            let _ = writeln!(y, "        weight: {}", s.weight);
        }
        if s.max_fails != 1 {
            let _ = writeln!(y, "        max_fails: {}", s.max_fails);
        }
        if let Some(t) = s.fail_timeout {
            let _ = writeln!(y, "        fail_timeout: {}", dur(t));
        }
        if s.backup {
            y.push_str("        backup: true\n");
        }
        if s.down {
            y.push_str("        down: true\n");
        }
        if s.resolve {
            y.push_str("        resolve: true\n");
        }
    }
}

fn vhost(y: &mut String, v: &VirtualHost) {
    let mut first = true;
    let mut key = |y: &mut String, text: String| {
        let _ = writeln!(y, "  {} {text}", if first { "-" } else { " " });
        first = false;
    };
    if !v.server_names.is_empty() {
        key(y, format!("server_names: {}", list(&v.server_names)));
    }
    if v.default {
        key(y, "default: true".into());
    }
    if !v.listen.is_empty() {
        key(y, format!("listen: {}", list(&v.listen)));
    }
    if !v.plugins.is_empty() {
        key(y, format!("plugins: {}", plugins(&v.plugins)));
    }
    key(y, "locations:".into());
    for l in &v.locations {
        location(y, l);
    }
}

fn location(y: &mut String, l: &Location) {
    let _ = writeln!(y, "      - path: {}", q(&l.path));
    let p = "        ";
    if let Some(pool) = &l.proxy_pass {
        let _ = writeln!(y, "{p}proxy_pass: {}", q(pool));
    }
    if let Some(r) = &l.rewrite {
        let _ = writeln!(y, "{p}rewrite: {{ from: {}, to: {} }}", q(&r.from), q(&r.to));
    }
    if let Some(r) = &l.ret {
        let _ = write!(y, "{p}return: {{ status: {}", r.status);
        if let Some(loc) = &r.location {
            let _ = write!(y, ", location: {}", q(loc));
        }
        if let Some(body) = &r.body {
            let _ = write!(y, ", body: {}", q(body));
        }
        y.push_str(" }\n");
    }
    if let Some(s) = l.client_max_body_size {
        let _ = writeln!(y, "{p}client_max_body_size: {}", size(s));
    }
    timeouts(
        y,
        p,
        [
            ("connect_timeout", l.connect_timeout),
            ("read_timeout", l.read_timeout),
            ("write_timeout", l.write_timeout),
            ("websocket_idle_timeout", l.websocket_idle_timeout),
        ],
    );
    next_upstream(y, p, &l.next_upstream, l.next_upstream_tries, l.next_upstream_timeout);
    if !l.proxy_set_header.is_empty() {
        let _ = writeln!(y, "{p}proxy_set_header:");
        for (k, v) in &l.proxy_set_header {
            let _ = writeln!(y, "{p}  {}: {}", q(k), q(v));
        }
    }
    if !l.proxy_remove_header.is_empty() {
        let _ = writeln!(y, "{p}proxy_remove_header: {}", list(&l.proxy_remove_header));
    }
    if let Some(u) = &l.upgrade {
        let _ = writeln!(y, "{p}upgrade: {}", q(u));
    }
    if let Some(c) = &l.compression {
        let types = c
            .types
            .as_deref()
            .map(|t| format!(", types: {}", list(t)))
            .unwrap_or_default();
        let brotli = if c.brotli > 0 {
            format!(", brotli: {}", c.brotli)
        } else {
            String::new()
        };
        let _ = writeln!(
            y,
            "{p}compression: {{ gzip: {}{brotli}, min_length: {}{types} }}",
            c.gzip,
            size(c.min_length)
        );
    }
    if !l.plugins.is_empty() {
        let _ = writeln!(y, "{p}plugins: {}", plugins(&l.plugins));
    }
}

fn timeouts<const N: usize>(y: &mut String, p: &str, t: [(&str, Option<Dur>); N]) {
    for (key, v) in t {
        if let Some(v) = v {
            let _ = writeln!(y, "{p}{key}: {}", dur(v));
        }
    }
}

fn next_upstream(y: &mut String, p: &str, when: &Option<Vec<String>>, tries: Option<usize>, time: Option<Dur>) {
    if let Some(w) = when {
        let _ = writeln!(y, "{p}next_upstream: {}", list(w));
    }
    if let Some(t) = tries {
        let _ = writeln!(y, "{p}next_upstream_tries: {t}");
    }
    if let Some(t) = time {
        let _ = writeln!(y, "{p}next_upstream_timeout: {}", dur(t));
    }
}

/// A duration as nginx writes it, in its largest whole unit.
pub fn dur(d: Dur) -> String {
    let ms = d.0.as_millis();
    for (unit, n) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    if ms == 0 {
        return "0s".into();
    }
    format!("{ms}ms")
}

/// A size as nginx writes it, in its largest whole unit.
pub fn size(s: Size) -> String {
    for (unit, n) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
        if s.0 >= n && s.0.is_multiple_of(n) {
            return format!("{}{unit}", s.0 / n);
        }
    }
    s.0.to_string()
}

/// A double-quoted YAML string.
pub fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| q(i)).collect();
    format!("[{}]", quoted.join(", "))
}

fn plugins(entries: &[PluginEntry]) -> String {
    let items: Vec<String> = entries
        .iter()
        .flat_map(|e| e.iter().map(|(name, v)| format!("{{ {}: {} }}", q(name), flow(v))))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A YAML value in flow style.
fn flow(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value as V;
    match v {
        V::Null => "null".into(),
        V::Bool(b) => b.to_string(),
        V::Number(n) => n.to_string(),
        V::String(s) => q(s),
        V::Sequence(items) => format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", ")),
        V::Mapping(m) => {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{}: {}", flow(k), flow(v))).collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        V::Tagged(t) => flow(&t.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn units_are_written_in_their_largest_whole_unit() {
        let d = |ms| dur(Dur(Duration::from_millis(ms)));
        assert_eq!(
            [d(0), d(500), d(2000), d(90_000), d(120_000), d(3_600_000)],
            ["0s", "500ms", "2s", "90s", "2m", "1h"]
        );
        let s = |n| size(Size(n));
        assert_eq!(
            [s(0), s(512), s(1024), s(50 << 20), s(1536)],
            ["0", "512", "1k", "50m", "1536"]
        );
    }

    #[test]
    fn strings_are_quoted_so_yaml_reads_them_back_as_they_were() {
        for s in [
            "plain",
            "a: b",
            "#x",
            "'q'",
            "\"dq\"",
            "back\\slash",
            "tab\tnl\n",
            "",
            "yes",
            "1.5",
            "$host",
        ] {
            let back: String = serde_yaml::from_str(&q(s)).unwrap();
            assert_eq!(back, s);
        }
    }
}
