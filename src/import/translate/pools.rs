//! `upstream` blocks and `proxy_pass` targets into Portico's pools.

use super::{nginx_time, with_port, Inherited, Translator};
use crate::config::schema::{Algorithm, RewriteRule, Server, Upstream};
use crate::import::lex::Directive;

impl Translator {
    pub(super) fn upstream(&mut self, d: &Directive) {
        let Some(name) = d.args.first() else {
            return self.not_translated(d, "an upstream needs a name");
        };
        let mut u = pool(false, Vec::new());
        for e in d.block.iter().flatten() {
            match e.name.as_str() {
                "server" => {
                    if let Some(s) = self.upstream_server(e) {
                        u.servers.push(s);
                    }
                }
                "least_conn" => u.algorithm = Algorithm::LeastConn,
                "ip_hash" => u.algorithm = Algorithm::IpHash,
                "random" => {
                    u.algorithm = if e.args.first().is_some_and(|a| a == "two") {
                        if e.args.get(1).is_some_and(|m| m != "least_conn") {
                            self.not_translated(e, "only `random two least_conn` has an equivalent");
                        }
                        Algorithm::RandomTwoLeastConn
                    } else {
                        Algorithm::Random
                    }
                }
                "hash" => match e.args.first() {
                    Some(key) => {
                        u.algorithm = Algorithm::Hash;
                        u.hash_key = Some(key.clone());
                        u.consistent = e.args.get(1).is_some_and(|c| c == "consistent");
                        if !hash_key_ok(key) {
                            self.not_translated(
                                e,
                                "Portico hashes one of $remote_addr, $uri, $request_uri, $http_X, $cookie_X, $arg_X",
                            );
                        }
                    }
                    None => self.not_translated(e, "a hash needs a key"),
                },
                "keepalive" => match e.args.first().and_then(|n| n.parse().ok()) {
                    Some(n) => u.keepalive = n,
                    None => self.not_translated(e, "expected a number"),
                },
                "keepalive_timeout" => match e.args.first().and_then(|t| nginx_time(t)) {
                    Some(t) => u.keepalive_timeout = Some(t),
                    None => self.not_translated(e, "an invalid time"),
                },
                "zone" | "keepalive_requests" | "keepalive_time" => {}
                _ => self.not_translated(e, "no equivalent in Portico"),
            }
        }
        if u.servers.is_empty() {
            self.unusable.push(name.clone());
            return self.not_translated(d, "an upstream with no server Portico can use: left out");
        }
        self.upstreams.insert(name.clone(), u);
    }

    fn upstream_server(&mut self, e: &Directive) -> Option<Server> {
        let Some(addr) = e.args.first() else {
            self.not_translated(e, "a server needs an address");
            return None;
        };
        if addr.starts_with("unix:") {
            self.not_translated(e, "Portico connects to TCP servers only");
            return None;
        }
        let mut s = server_at(with_port(addr, 80));
        for p in &e.args[1..] {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k {
                "weight" => s.weight = v.parse().unwrap_or(1),
                "max_fails" => s.max_fails = v.parse().unwrap_or(1),
                "fail_timeout" => s.fail_timeout = nginx_time(v),
                "backup" => s.backup = true,
                "down" => s.down = true,
                "resolve" => s.resolve = true,
                _ => self.not_translated(e, format!("`{p}` is not translated")),
            }
        }
        Some(s)
    }

    /// The pool a `proxy_pass` names (an `upstream`, or a new one of one
    /// server), and the host nginx sends as `Host` unless told otherwise
    /// (`$proxy_host`).
    /// With it, the `rewrite` that applies the URL's URI part, if it has one:
    /// nginx puts it in place of the part of the path the location matched.
    pub(super) fn proxy_pass(
        &mut self,
        e: &Directive,
        path: &str,
        i: &Inherited,
    ) -> Option<(String, String, Option<RewriteRule>)> {
        let Some(url) = e.args.first() else {
            self.not_translated(e, "proxy_pass needs a URL");
            return None;
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            self.not_translated(e, "only http:// and https:// are translated");
            return None;
        };
        if url.contains('$') {
            self.not_translated(e, "a proxy_pass with variables is not translated");
            return None;
        }
        if rest.starts_with("unix:") {
            self.not_translated(e, "Portico connects to TCP servers only");
            return None;
        }
        let (host, uri) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        // (A URI equal to the prefix it replaces changes nothing.)
        let same = uri.is_empty() || uri == path.trim_start_matches("^~ ");
        let rewrite = match (same, path.split_once(' ')) {
            (true, _) => None,
            (false, None) => Some(prefix_rewrite(path, uri)),
            (false, Some(("^~", p))) => Some(prefix_rewrite(p, uri)),
            (false, Some(("=", p))) => Some(RewriteRule {
                from: format!("^{}$", regex::escape(p)),
                to: uri.to_string(),
            }),
            (false, Some(_)) => {
                self.not_translated(
                    e,
                    "a URI part in a regex location's proxy_pass (invalid in nginx) is not applied",
                );
                None
            }
        };
        if let Some(u) = self.upstreams.get_mut(host) {
            if tls && !u.tls {
                u.tls = true;
                self.tls_as_nginx(e, host, i);
            }
            return Some((host.to_string(), host.to_string(), rewrite));
        }
        if self.unusable.iter().any(|u| u == host) {
            self.not_translated(
                e,
                format!("`upstream {host}` has no server Portico can use: not translated"),
            );
            return None;
        }
        if !host.contains([':', '.']) && host != "localhost" {
            self.not_translated(
                e,
                format!(
                    "no `upstream {host}` in this file: taken as the host {host}, port {}",
                    if tls { 443 } else { 80 }
                ),
            );
        }
        let address = with_port(host, if tls { 443 } else { 80 });
        let name = address.replace([':', '.', '[', ']'], "_");
        if !self.upstreams.contains_key(&name) {
            self.upstreams.insert(name.clone(), pool(tls, vec![server_at(address)]));
            if tls {
                self.tls_as_nginx(e, &name, i);
            }
        }
        Some((name, host.to_string(), rewrite))
    }

    /// A pool reached over TLS as nginx reaches it: the server's
    /// certificate not verified and no SNI, unless `proxy_ssl_verify` and
    /// `proxy_ssl_server_name` say otherwise.
    fn tls_as_nginx(&mut self, e: &Directive, pool: &str, i: &Inherited) {
        let Some(u) = self.upstreams.get_mut(pool) else { return };
        u.tls_verify = i.ssl_verify;
        u.tls_ca_file = i.ssl_ca.clone();
        u.tls_cert = i.ssl_cert.clone();
        u.tls_key = i.ssl_key.clone();
        u.tls_sni = named_host(u).filter(|_| i.ssl_sni);
        if !i.ssl_verify {
            self.not_translated(
                e,
                "nginx does not verify the server's certificate by default: tls_verify: false (set it, with tls_ca_file)",
            );
        }
    }
}

/// The host name of a pool's first server, the name nginx sends and checks
/// by default on TLS to it; `None` for an IP address.
pub(super) fn named_host(u: &Upstream) -> Option<String> {
    let host = u.servers.first()?.address.rsplit_once(':')?.0;
    let is_ip = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok();
    (!is_ip).then(|| host.to_string())
}

/// A prefix location's `proxy_pass` URI part in place of the prefix.
fn prefix_rewrite(prefix: &str, uri: &str) -> RewriteRule {
    RewriteRule {
        from: format!("^{}(.*)$", regex::escape(prefix)),
        to: format!("{uri}$1"),
    }
}

fn hash_key_ok(key: &str) -> bool {
    matches!(key, "$remote_addr" | "$uri" | "$request_uri")
        || ["$http_", "$cookie_", "$arg_"]
            .iter()
            .any(|p| key.starts_with(p) && key.len() > p.len())
}

/// A pool with Portico's defaults.
/// A server with nginx's defaults (weight 1, `max_fails=1`).
pub(super) fn server_at(address: String) -> Server {
    Server {
        address,
        weight: 1,
        max_fails: 1,
        fail_timeout: None,
        backup: false,
        down: false,
        resolve: false,
    }
}

pub(super) fn pool(tls: bool, servers: Vec<Server>) -> Upstream {
    Upstream {
        algorithm: Algorithm::RoundRobin,
        hash_key: None,
        consistent: false,
        sticky: None,
        keepalive: 64,
        keepalive_timeout: None,
        connect_timeout: None,
        read_timeout: None,
        header_timeout: None,
        write_timeout: None,
        next_upstream: None,
        next_upstream_tries: None,
        next_upstream_timeout: None,
        health_check: None,
        tls,
        tls_sni: None,
        tls_verify: true,
        tls_ca_file: None,
        tls_cert: None,
        tls_key: None,
        http2: false,
        servers,
    }
}
