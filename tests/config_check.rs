//! `portico -t`: good configs pass, bad ones name file, line, column and field.

mod common;
use common::*;
use std::process::Command;

fn check(yaml: &str) -> (bool, String) {
    config_test(yaml)
}

const GOOD: &str = "listeners:
  - listen: 127.0.0.1:8080
upstreams:
  app:
    servers:
      - address: 127.0.0.1:9001
virtual_hosts:
  - default: true
    locations:
      - path: /
        proxy_pass: app
";

#[test]
fn good_config_is_ok() {
    let (ok, text) = check(GOOD);
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");
}

#[test]
fn shipped_configs_and_examples_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/conf/portico.yaml")];
    for e in std::fs::read_dir(format!("{root}/conf/examples")).unwrap() {
        files.push(e.unwrap().path().to_string_lossy().to_string());
    }
    assert!(files.len() >= 4);
    for f in files {
        let out = Command::new(portico_bin()).args(["-t", "-c", &f]).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Each bad config, and the exact location + words its error must carry.
#[test]
fn bad_configs_are_located_precisely() {
    let cases: &[(&str, &str, &str)] = &[
        // unknown key
        (
            "listeners:\n  - listen: 127.0.0.1:8080\n    lisen: x\n",
            "FILE:3:5: listeners[0]: unknown field `lisen`",
            "",
        ),
        // unknown pool
        (
            &GOOD.replace("proxy_pass: app", "proxy_pass: nope"),
            "FILE:11:9: virtual_hosts[0].locations[0].proxy_pass: unknown upstream \"nope\"",
            "",
        ),
        // empty pool
        (
            &GOOD.replace("    servers:\n      - address: 127.0.0.1:9001\n", "    servers: []\n"),
            "FILE:5:5: upstreams.app.servers: upstream has no servers",
            "",
        ),
        // bad address
        (
            &GOOD.replace("address: 127.0.0.1:9001", "address: not-an-address"),
            "FILE:6:9: upstreams.app.servers[0].address: invalid address \"not-an-address\"",
            "",
        ),
        // duplicate server
        (
            &GOOD.replace("      - address: 127.0.0.1:9001\n", "      - address: 127.0.0.1:9001\n      - address: 127.0.0.1:9001\n"),
            "FILE:7:9: upstreams.app.servers[1].address: duplicate server 127.0.0.1:9001",
            "",
        ),
        // bad regex
        (
            &GOOD.replace("path: /", "path: \"~ ([a-z\""),
            "FILE:10:9: virtual_hosts[0].locations[0].path: invalid regex",
            "",
        ),
        // bad duration
        (
            &GOOD.replace("    servers:\n", "    connect_timeout: 10x\n    servers:\n"),
            "FILE:5:22: upstreams.app.connect_timeout: invalid duration unit in \"10x\"",
            "",
        ),
        // bad size
        (
            &GOOD.replace("        proxy_pass: app\n", "        proxy_pass: app\n        client_max_body_size: 50q\n"),
            "virtual_hosts[0].locations[0].client_max_body_size: invalid size unit in \"50q\"",
            "FILE:12:",
        ),
        // duplicate upstream names (YAML duplicate key)
        (
            &GOOD.replace("upstreams:\n", "upstreams:\n  app:\n    servers: [{ address: \"127.0.0.1:1\" }]\n"),
            "FILE:6:3: upstreams.app: duplicate key",
            "",
        ),
        // duplicate server names
        (
            "listeners: [{ listen: \"127.0.0.1:1\" }]\nvirtual_hosts:\n  - server_names: [a.com]\n    locations: [{ path: /, return: { status: 200 } }]\n  - server_names: [a.com]\n    locations: [{ path: /, return: { status: 200 } }]\n",
            "FILE:5:20: virtual_hosts[1].server_names[0]: duplicate server name \"a.com\"",
            "",
        ),
        // a name a Host field can never hold (it made -t panic)
        (
            "listeners: [{ listen: \"127.0.0.1:1\" }]\nvirtual_hosts:\n  - server_names: [ümlaut.test]\n    locations: [{ path: /, return: { status: 200 } }]\n",
            "FILE:3:20: virtual_hosts[0].server_names[0]: server name \"ümlaut.test\" is not ASCII",
            "",
        ),
        // bad listen address
        ("listeners:\n  - listen: localhost\n", "FILE:2:5: listeners[0].listen: invalid listen address", ""),
        // unknown retry condition
        (
            &GOOD.replace("    servers:\n", "    next_upstream: [error, http_999]\n    servers:\n"),
            "upstreams.app.next_upstream: unknown next_upstream condition \"http_999\"",
            "FILE:5:",
        ),
        // request head limit out of range
        (
            &format!("server:\n  max_request_header_size: 4m\n{GOOD}"),
            "FILE:2:3: server.max_request_header_size: max_request_header_size must be between 1k and 1m",
            "",
        ),
        // A rewrite whose expression does not compile, or whose replacement names a group it lacks
        (
            &GOOD.replace("proxy_pass: app\n", "proxy_pass: app\n        rewrite: { from: \"^/(a\", to: /x }\n"),
            "FILE:12:9: virtual_hosts[0].locations[0].rewrite: from: invalid regex",
            "",
        ),
        (
            &GOOD.replace("proxy_pass: app\n", "proxy_pass: app\n        rewrite: { from: \"^/(a)\", to: /x/$2 }\n"),
            "FILE:12:9: virtual_hosts[0].locations[0].rewrite: to: $2, but from has 1 group(s)",
            "",
        ),
        // A regex name that does not compile (virtual host; TCP sni rule)
        (
            &GOOD.replace("  - default: true\n", "  - server_names: ['~^(a']\n"),
            "FILE:8:20: virtual_hosts[0].server_names[0]: invalid regex",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    sni: {{ '~^(a': app }}\n"),
            "tcp[0].sni.~^(a: invalid regex",
            "",
        ),
        // resolve: an address has no name to resolve; a resolver that is no address
        (
            &GOOD.replace("      - address: 127.0.0.1:9001\n", "      - address: 127.0.0.1:9001\n        resolve: true\n"),
            "FILE:7:9: upstreams.app.servers[0].resolve: resolve needs a host name, not an address",
            "",
        ),
        (
            &format!("server:\n  resolver: dns.example\n{}", GOOD.replace("127.0.0.1:9001", "app.internal:9001")).replace("9001\n", "9001\n        resolve: true\n"),
            "FILE:2:3: server.resolver: \"dns.example\" is not an IP address (or address:port)",
            "",
        ),
        // A client certificate: half of one, on a pool without TLS, a file not there
        (
            &GOOD.replace("    servers:\n", "    tls: true\n    tls_cert: c.pem\n    servers:\n"),
            "FILE:6:5: upstreams.app.tls_cert: tls_cert needs tls_key",
            "",
        ),
        (
            &GOOD.replace("    servers:\n", "    tls_cert: c.pem\n    tls_key: c.key\n    servers:\n"),
            "FILE:5:5: upstreams.app.tls_cert: a client certificate goes with tls: true",
            "",
        ),
        (
            &GOOD.replace(
                "    servers:\n",
                "    tls: true\n    tls_cert: /nonexistent/c.pem\n    tls_key: /nonexistent/c.key\n    servers:\n",
            ),
            "FILE:6:5: upstreams.app.tls_cert: cannot read certificate /nonexistent/c.pem",
            "",
        ),
        // Compression: a level out of range, a type that is none, every coding off
        (
            &GOOD.replace("proxy_pass: app\n", "proxy_pass: app\n        compression:\n          brotli: 12\n"),
            "FILE:13:11: virtual_hosts[0].locations[0].compression.brotli: level 12: 1..11, or 0 for off",
            "",
        ),
        (
            &GOOD.replace("proxy_pass: app\n", "proxy_pass: app\n        compression: { types: [text/html, json] }\n"),
            "FILE:12:43: virtual_hosts[0].locations[0].compression.types[1]: \"json\" is not a media type",
            "",
        ),
        (
            &format!("compression: {{ gzip: 12 }}\n{GOOD}"),
            "FILE:1:16: compression.gzip: level 12: 1..9, or 0 for off",
            "",
        ),
        // TCP listeners: a pool that is not there, or one that needs HTTP
        (
            "tcp:\n  - listen: 127.0.0.1:1\n    proxy_pass: nope\n",
            "FILE:3:5: tcp[0].proxy_pass: unknown upstream \"nope\"",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    proxy_pass: app\n")
                .replace("    servers:\n", "    algorithm: sticky\n    sticky: { secret: sixteen-chars-long }\n    servers:\n"),
            "FILE:16:5: tcp[0].proxy_pass: upstream \"app\" is sticky by an HTTP cookie",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    proxy_pass: app\n")
                .replace("    servers:\n", "    algorithm: hash\n    hash_key: $uri\n    servers:\n"),
            "FILE:16:5: tcp[0].proxy_pass: upstream \"app\" hashes a request field",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    proxy_pass: app\n    proxy_protocol: v3\n"),
            "FILE:15:5: tcp[0].proxy_protocol: unknown PROXY protocol version \"v3\"",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    proxy_pass: app\n    allow: [10.0.0.0/8, nope]\n"),
            "FILE:15:25: tcp[0].allow[1]: invalid CIDR \"nope\"",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    proxy_pass: app\n    tls: {{ certificates: [] }}\n"),
            "FILE:15:12: tcp[0].tls.certificates: a TLS listener needs at least one certificate",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    sni: {{ a.test: nope }}\n"),
            "FILE:14:12: tcp[0].sni.a.test: unknown upstream \"nope\"",
            "",
        ),
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n"),
            "tcp[0]: a tcp listener needs proxy_pass, or sni rules",
            "FILE:13:",
        ),
        // a name no ClientHello can hold (it made -t panic: a slice inside a character)
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:2\n    sni: {{ \"ü.test\": app }}\n"),
            "tcp[0].sni.ü.test: invalid server name \"ü.test\"",
            "FILE:14:",
        ),
        // a TCP listener on an HTTP listener's address
        (
            &format!("{GOOD}tcp:\n  - listen: 127.0.0.1:8080\n    proxy_pass: app\n"),
            "FILE:13:5: tcp[0].listen: duplicate listener 127.0.0.1:8080",
            "",
        ),
        // YAML syntax error
        ("listeners: [\n", "FILE:", ""),
    ];
    for (yaml, want, also) in cases {
        let (ok, text) = check(yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(text.contains(want), "want {want:?} in:\n{text}\nfor:\n{yaml}");
        assert!(text.contains(also), "want {also:?} in:\n{text}");
        assert!(!text.contains("configuration OK"));
    }
}
