//! `server` and `location` blocks into listeners, virtual hosts and
//! locations, and the whole configuration they make.

use super::{note, template_ok, with_port, Inherited, Note, Site, Translator};
use crate::config::schema::{Certificate, Config, Listener, ListenerTls, Location, PluginEntry, Return, VirtualHost};
use crate::import::lex::Directive;
use std::collections::BTreeMap;

impl Translator {
    pub(super) fn site(&mut self, d: &Directive, block: &[Directive], above: &Inherited) {
        let mut site = Site {
            line: d.line,
            names: Vec::new(),
            listens: Vec::new(),
            tls: false,
            http2: false,
            cert: None,
            locations: Vec::new(),
        };
        let mut inherited = above.below();
        let (mut cert, mut key) = self.http_cert.clone();
        for e in block {
            match e.name.as_str() {
                "listen" => self.listen(e, &mut site),
                "server_name" => {
                    for n in &e.args {
                        match n.as_str() {
                            "_" | "" => {}
                            n if n.starts_with('~') => {
                                self.not_translated(e, format!("regular-expression name {n} is not translated"))
                            }
                            n if n.starts_with('.') => {
                                site.names.push(n[1..].to_string());
                                site.names.push(format!("*{n}"));
                            }
                            n if n.ends_with(".*") => {
                                self.not_translated(e, format!("Portico has no trailing wildcard names ({n})"))
                            }
                            n => site.names.push(n.to_string()),
                        }
                    }
                }
                "http2" => site.http2 = e.args.first().is_some_and(|a| a == "on"),
                "ssl_certificate" => cert = e.args.first().cloned(),
                "ssl_certificate_key" => key = e.args.first().cloned(),
                "ssl" => site.tls = e.args.first().is_some_and(|a| a == "on"),
                "location" | "return" | "if" => {}
                _ => {
                    if !self.setting(e, &mut inherited) && !self.global(e) {
                        self.not_translated(e, "no equivalent in Portico");
                    }
                }
            }
        }
        if site.listens.is_empty() {
            site.listens.push(("0.0.0.0:80".into(), false));
        }
        if let (Some(c), Some(k)) = (cert, key) {
            site.cert = Some((c, k));
        }
        for e in block {
            match e.name.as_str() {
                "location" => {
                    let locs = self.location(e, &inherited, "");
                    site.locations.extend(locs);
                }
                // A server-wide `return` answers every request before its locations.
                "return" => match self.ret(e) {
                    Some(r) => {
                        site.locations.retain(|l| l.path != "/");
                        let mut l = empty_location("/".into());
                        l.ret = Some(r);
                        site.locations.insert(0, l);
                        if block.iter().any(|x| x.name == "location") {
                            self.not_translated(
                                e,
                                "a server-wide return: it now answers `location /` only, other locations still match first",
                            );
                        }
                    }
                    None => self.not_translated(e, "not translated"),
                },
                "if" => self.not_translated(e, "`if` blocks are not translated"),
                _ => {}
            }
        }
        self.sites.push(site);
    }

    fn listen(&mut self, e: &Directive, site: &mut Site) {
        let Some(addr) = e.args.first() else {
            return self.not_translated(e, "a listen needs an address");
        };
        if addr.starts_with("unix:") {
            return self.not_translated(e, "Portico listens on TCP addresses only");
        }
        let addr = match addr.parse::<u16>() {
            Ok(port) => format!("0.0.0.0:{port}"),
            Err(_) => {
                let a = addr
                    .strip_prefix("*:")
                    .map_or_else(|| addr.clone(), |p| format!("0.0.0.0:{p}"));
                let a = a
                    .strip_prefix("localhost:")
                    .map_or(a.clone(), |p| format!("127.0.0.1:{p}"));
                with_port(&a, 80)
            }
        };
        let mut default = false;
        for p in &e.args[1..] {
            match p.as_str() {
                "default_server" | "default" => default = true,
                "ssl" => site.tls = true,
                "http2" => site.http2 = true,
                "reuseport" | "deferred" | "bind" => {}
                p if p.starts_with("backlog=") || p.starts_with("ipv6only=") || p.starts_with("so_keepalive=") => {}
                p => self.not_translated(e, format!("`{p}` is not translated")),
            }
        }
        site.listens.push((addr, default));
    }

    /// One `location` (and those nested in it, after it).
    pub(super) fn location(&mut self, d: &Directive, above: &Inherited, outer: &str) -> Vec<Location> {
        let path = match d.args.as_slice() {
            [p] => p.clone(),
            [m, p] if matches!(m.as_str(), "=" | "^~" | "~" | "~*") => format!("{m} {p}"),
            _ => {
                self.not_translated(
                    d,
                    "a location Portico cannot match (named locations are not translated)",
                );
                return Vec::new();
            }
        };
        if path.starts_with('@') {
            self.not_translated(d, "named locations are not translated");
            return Vec::new();
        }
        if !outer.is_empty() {
            self.notes.push(note(
                d,
                format!("nested in `location {outer}`: made a location of its own"),
            ));
        }
        let mut inherited = above.below();
        let mut loc = empty_location(path.clone());
        let mut nested = Vec::new();
        let block = d.block.as_deref().unwrap_or_default();
        for e in block {
            match e.name.as_str() {
                "proxy_pass" => loc.proxy_pass = self.proxy_pass(e, &path),
                "return" => match self.ret(e) {
                    Some(r) => loc.ret = Some(r),
                    None => self.not_translated(e, "not translated"),
                },
                "location" => nested.push(e),
                "if" => self.not_translated(e, "`if` blocks are not translated"),
                _ => {
                    if !self.setting(e, &mut inherited) {
                        let why = if matches!(
                            e.name.as_str(),
                            "send_timeout" | "keepalive_timeout" | "client_body_timeout" | "access_log"
                        ) {
                            "set once for all servers in Portico (server section): not translated here"
                        } else {
                            "no equivalent in Portico"
                        };
                        self.not_translated(e, why);
                    }
                }
            }
        }
        if loc.proxy_pass.is_none() && loc.ret.is_none() {
            self.not_translated(d, "neither proxy_pass nor return: the location answers 404 in Portico");
            loc.ret = Some(Return {
                status: 404,
                location: None,
                body: None,
            });
        }
        self.apply(&mut loc, &inherited);
        let mut out = vec![loc];
        for n in nested {
            out.extend(self.location(n, &inherited, &path));
        }
        out
    }

    /// The inherited settings, as the location's own.
    fn apply(&mut self, loc: &mut Location, i: &Inherited) {
        loc.client_max_body_size = i.client_max_body_size;
        if loc.proxy_pass.is_some() {
            loc.connect_timeout = i.connect_timeout;
            loc.read_timeout = i.read_timeout;
            loc.write_timeout = i.write_timeout;
            loc.next_upstream = i.next_upstream.clone();
            loc.next_upstream_tries = i.next_upstream_tries;
            loc.next_upstream_timeout = i.next_upstream_timeout;
        }
        for (name, value, line) in i.set_headers.iter().flatten() {
            if portico_sets(name, value) {
                continue;
            }
            let d = Directive {
                name: "proxy_set_header".into(),
                args: vec![name.clone(), value.clone()],
                line: *line,
                block: None,
            };
            if value.is_empty() {
                loc.proxy_remove_header.push(name.clone());
            } else if template_ok(value) {
                loc.proxy_set_header.insert(name.clone(), value.clone());
            } else {
                self.not_translated(
                    &d,
                    "a variable Portico does not know (known: $scheme, $host, $request_uri, $uri, $remote_addr)",
                );
            }
        }
        if let Some(add) = &i.add_headers {
            let set: serde_yaml::Mapping = add
                .iter()
                .map(|(k, v)| (serde_yaml::Value::from(k.as_str()), serde_yaml::Value::from(v.as_str())))
                .collect();
            let mut settings = serde_yaml::Mapping::new();
            settings.insert("response_add".into(), serde_yaml::Value::Mapping(set));
            let entry: PluginEntry = [("headers".to_string(), serde_yaml::Value::Mapping(settings))].into();
            loc.plugins.push(entry);
        }
        if let Some(rules) = &i.access {
            if let Some(entry) = self.access(rules) {
                loc.plugins.insert(0, entry);
            }
        }
    }

    /// nginx's ordered `allow`/`deny` rules as the `ip_access` plugin's
    /// lists, where their order does not matter: allows then `deny all`,
    /// or denies (then `allow all`).
    fn access(&mut self, rules: &[(bool, String, usize)]) -> Option<PluginEntry> {
        let all = |r: &(bool, String, usize)| r.1 == "all";
        let allows_then_deny_all =
            rules.last().is_some_and(|r| !r.0 && all(r)) && rules[..rules.len() - 1].iter().all(|r| r.0 && !all(r));
        let denies = rules.iter().all(|r| !r.0 && !all(r))
            || (rules.last().is_some_and(|r| r.0 && all(r)) && rules[..rules.len() - 1].iter().all(|r| !r.0));
        let list = |allow: bool| -> serde_yaml::Value {
            let v: Vec<serde_yaml::Value> = rules
                .iter()
                .filter(|r| r.0 == allow && !all(r))
                .map(|r| r.1.as_str().into())
                .collect();
            serde_yaml::Value::Sequence(v)
        };
        let mut settings = serde_yaml::Mapping::new();
        if allows_then_deny_all {
            settings.insert("allow".into(), list(true));
        } else if denies {
            settings.insert("deny".into(), list(false));
        } else {
            self.notes.push(Note {
                line: rules.first().map_or(0, |r| r.2),
                directive: "allow/deny".into(),
                why: "mixed allow and deny rules: only \"allow ...; deny all;\" or \"deny ...;\" lists are translated"
                    .into(),
            });
            return None;
        }
        Some([("ip_access".to_string(), serde_yaml::Value::Mapping(settings))].into())
    }

    pub(super) fn ret(&mut self, e: &Directive) -> Option<Return> {
        let (status, text) = match e.args.as_slice() {
            [code] if code.parse::<u16>().is_ok() => (code.parse().ok()?, None),
            [url] => (302, Some(url.clone())),
            [code, text] => (code.parse().ok()?, Some(text.clone())),
            _ => return None,
        };
        if text.as_deref().is_some_and(|t| !template_ok(t)) {
            self.not_translated(
                e,
                "a variable Portico does not know (known: $scheme, $host, $request_uri, $uri, $remote_addr)",
            );
            return None;
        }
        let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        Some(Return {
            status,
            location: text.clone().filter(|_| redirect),
            body: text.filter(|_| !redirect),
        })
    }

    /// The configuration the directives read so far make.
    pub fn finish(mut self) -> (Config, Vec<Note>) {
        if !self.stray.is_empty() {
            let stray = std::mem::take(&mut self.stray);
            self.sites.push(Site {
                line: 0,
                names: Vec::new(),
                listens: vec![("0.0.0.0:80".into(), false)],
                tls: false,
                http2: false,
                cert: None,
                locations: stray,
            });
        }
        // Listeners in order of first appearance; TLS ones take their servers' certificates.
        let mut listeners: Vec<Listener> = Vec::new();
        for site in &self.sites {
            for (addr, _) in &site.listens {
                let at = match listeners.iter().position(|l| &l.listen == addr) {
                    Some(i) => i,
                    None => {
                        listeners.push(Listener {
                            listen: addr.clone(),
                            tls: None,
                            h2c: false,
                        });
                        listeners.len() - 1
                    }
                };
                if !site.tls {
                    continue;
                }
                let tls = listeners[at].tls.get_or_insert(ListenerTls {
                    certificates: Vec::new(),
                    http2: false,
                });
                tls.http2 |= site.http2;
                if let Some((cert, key)) = &site.cert {
                    tls.certificates.push(Certificate {
                        cert: cert.clone(),
                        key: key.clone(),
                        server_names: site.names.clone(),
                    });
                }
            }
        }
        for l in listeners.iter_mut() {
            if l.tls.as_ref().is_some_and(|t| t.certificates.is_empty()) {
                self.notes.push(Note {
                    line: 0,
                    directive: format!("listen {} ssl", l.listen),
                    why: "no ssl_certificate for this address: made a plain HTTP listener".into(),
                });
                l.tls = None;
            }
        }
        // A certificate for every name of the listener's first one: no names on the first.
        for l in listeners.iter_mut() {
            if let Some(first) = l.tls.as_mut().and_then(|t| t.certificates.first_mut()) {
                first.server_names.clear();
            }
        }
        let all: Vec<String> = listeners.iter().map(|l| l.listen.clone()).collect();
        // nginx's default server for an address: the one marked, else the first.
        let mut defaults: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            for (addr, marked) in &site.listens {
                match defaults.get(addr.as_str()) {
                    None => {
                        defaults.insert(addr, (i, *marked));
                    }
                    Some((_, false)) if *marked => {
                        defaults.insert(addr, (i, true));
                    }
                    _ => {}
                }
            }
        }
        let mut vhosts = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            let is_default = defaults.values().any(|&(j, _)| j == i);
            let marked = site.listens.iter().any(|(_, m)| *m);
            if site.names.is_empty() && !is_default {
                self.notes.push(Note {
                    line: site.line,
                    directive: "server".into(),
                    why: "a server with no name that is not the default for its address: never chosen, left out".into(),
                });
                continue;
            }
            let mut listen: Vec<String> = site.listens.iter().map(|(a, _)| a.clone()).collect();
            listen.dedup();
            if all.iter().all(|a| listen.contains(a)) {
                listen.clear();
            }
            vhosts.push(VirtualHost {
                server_names: site.names.clone(),
                default: is_default && (marked || site.names.is_empty()),
                listen,
                plugins: Vec::new(),
                locations: site.locations.clone(),
            });
        }
        let cfg = Config {
            server: self.server,
            listeners,
            upstreams: self.upstreams,
            virtual_hosts: vhosts,
            trusted_proxies: Vec::new(),
            health_endpoint: Default::default(),
            access_log: self.access_log.unwrap_or_else(|| "stdout".into()),
            admin: None,
            plugins: Vec::new(),
        };
        (cfg, self.notes)
    }
}

fn empty_location(path: String) -> Location {
    Location {
        path,
        ..Default::default()
    }
}

/// Request fields Portico sets as these lines would: the forwarding
/// fields, the client's Host, and what upgrades and keep-alive need.
fn portico_sets(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "host" => matches!(value, "$host" | "$http_host"),
        "x-real-ip" => value == "$remote_addr",
        "x-forwarded-for" => matches!(value, "$proxy_add_x_forwarded_for" | "$remote_addr"),
        "x-forwarded-proto" => value == "$scheme",
        "x-forwarded-host" => matches!(value, "$host" | "$http_host"),
        "upgrade" => value == "$http_upgrade",
        "connection" => matches!(
            value,
            "$connection_upgrade" | "upgrade" | "\"upgrade\"" | "" | "keep-alive"
        ),
        _ => false,
    }
}
