//! `server` and `location` blocks into listeners, virtual hosts and
//! locations, and the whole configuration they make.

use super::{listen_addr, note, template_ok, Inherited, Listen, Note, Site, Translator};
use crate::config::schema::{
    Certificate, Config, Listener, ListenerTls, Location, PluginEntry, Return, RewriteRule, VirtualHost,
};
use crate::import::lex::Directive;
use std::collections::BTreeMap;

/// Variables Portico's templates know.
const KNOWN_VARS: &str = "known: $scheme, $host, $request_uri, $uri, $remote_addr";

/// Every client address, for a rule that refuses them all.
const EVERYONE: [&str; 2] = ["0.0.0.0/0", "::/0"];

impl Translator {
    pub(super) fn site(&mut self, d: &Directive, block: &[Directive], above: &Inherited) {
        let mut site = Site {
            line: d.line,
            names: Vec::new(),
            listens: Vec::new(),
            http2: false,
            cert: None,
            locations: Vec::new(),
        };
        let mut inherited = above.below();
        let (mut cert, mut key) = self.http_cert.clone();
        let mut ssl_on = false;
        for e in block {
            match e.name.as_str() {
                "listen" => self.listen(e, &mut site),
                "server_name" => self.server_names(e, &mut site),
                "http2" => site.http2 = e.args.first().is_some_and(|a| a == "on"),
                "ssl_certificate" => cert = e.args.first().cloned(),
                "ssl_certificate_key" => key = e.args.first().cloned(),
                "ssl" => ssl_on = e.args.first().is_some_and(|a| a == "on"),
                "access_log" if e.args.first().is_some_and(|a| a == "off") => {
                    self.not_translated(e, "Portico has one access log for all servers: it stays on")
                }
                "location" | "return" | "if" => {}
                _ => {
                    if !self.setting(e, &mut inherited) && !self.global(e) {
                        self.not_translated(e, "no equivalent in Portico");
                    }
                }
            }
        }
        if site.listens.is_empty() {
            site.listens.push(Listen {
                addr: "0.0.0.0:80".into(),
                default: false,
                ssl: false,
                proxy_protocol: false,
                line: d.line,
            });
        }
        for l in site.listens.iter_mut() {
            l.ssl |= ssl_on;
        }
        if let (Some(c), Some(k)) = (cert, key) {
            site.cert = Some((c, k));
        }
        self.server_name = site.names.first().cloned();
        // A server-wide `return` answers every request, before any location.
        if let Some(e) = block.iter().find(|e| e.name == "return") {
            match self.ret(e) {
                Some(r) => {
                    if block.iter().any(|x| x.name == "location") {
                        self.not_translated(
                            e,
                            "a server-wide return answers every request: the server's locations are left out",
                        );
                    }
                    let mut l = empty_location("/".into());
                    l.ret = Some(r);
                    site.locations.push(l);
                    self.sites.push(site);
                    return;
                }
                None => self.not_translated(e, "not translated"),
            }
        }
        for e in block {
            match e.name.as_str() {
                "location" => {
                    let locs = self.location(e, &inherited, "");
                    site.locations.extend(locs);
                }
                "if" => self.not_translated(e, "`if` blocks are not translated"),
                _ => {}
            }
        }
        self.sites.push(site);
    }

    fn server_names(&mut self, e: &Directive, site: &mut Site) {
        // (Names keep nginx's order: exact, then wildcards, then regexes in file order.)
        for n in &e.args {
            match n.as_str() {
                "_" | "" => {}
                n if n.starts_with('~') => {
                    if n.contains("(?<") || n.contains("(?P<") {
                        self.not_translated(e, format!("{n}: matched, but its named captures set no variables"));
                    }
                    site.names.push(n.to_string());
                }
                n if !n.is_ascii() => self.not_translated(e, format!("{n}: write an IDN as punycode (xn--...)")),
                n if n.starts_with('.') => {
                    site.names.push(n[1..].to_string());
                    site.names.push(format!("*{n}"));
                }
                n if n.ends_with(".*") => site.names.push(trailing_wildcard(n)),
                n => site.names.push(n.to_string()),
            }
        }
    }

    fn listen(&mut self, e: &Directive, site: &mut Site) {
        let Some(addr) = e.args.first() else {
            return self.not_translated(e, "a listen needs an address");
        };
        if addr.starts_with("unix:") {
            return self.not_translated(e, "Portico listens on TCP addresses only");
        }
        let addr = listen_addr(addr, 80);
        let mut l = Listen {
            addr,
            default: false,
            ssl: false,
            proxy_protocol: false,
            line: e.line,
        };
        for p in &e.args[1..] {
            match p.as_str() {
                "default_server" | "default" => l.default = true,
                "ssl" => l.ssl = true,
                "proxy_protocol" => {
                    l.proxy_protocol = true;
                    self.notes.push(super::note(e, super::PROXY_CLIENT));
                }
                "http2" => site.http2 = true,
                "reuseport" | "deferred" | "bind" => {}
                p if p.starts_with("backlog=") || p.starts_with("ipv6only=") || p.starts_with("so_keepalive=") => {}
                p => self.not_translated(e, format!("`{p}` is not translated")),
            }
        }
        site.listens.push(l);
    }

    /// One `location` (and those nested in it, after it).
    pub(super) fn location(&mut self, d: &Directive, above: &Inherited, outer: &str) -> Vec<Location> {
        let path = match d.args.as_slice() {
            [m, p] if matches!(m.as_str(), "=" | "^~" | "~" | "~*") => format!("{m} {p}"),
            // A modifier written against its path (`=/x`, `~*\.css$`), as nginx takes it.
            [p] => match ["^~", "~*", "=", "~"]
                .iter()
                .find(|m| p.len() > m.len() && p.starts_with(*m))
            {
                Some(m) => format!("{m} {}", &p[m.len()..]),
                None => p.clone(),
            },
            _ => {
                self.not_translated(d, "a location Portico cannot match");
                return Vec::new();
            }
        };
        if path.starts_with('@') {
            self.not_translated(d, "named locations are not translated");
            return Vec::new();
        }
        if !outer.is_empty() {
            let why = if path.starts_with('~') || !path.trim_start_matches(['=', '^', '~', ' ']).starts_with(outer) {
                format!("nested in `location {outer}`: made a location of its own, which now also matches outside it")
            } else {
                format!("nested in `location {outer}`: made a location of its own")
            };
            self.notes.push(note(d, why));
        }
        let mut inherited = above.below();
        let mut loc = empty_location(path.clone());
        let mut nested = Vec::new();
        let mut proxy_host = None;
        let mut internal = false;
        let mut rewrites = 0;
        let block = d.block.as_deref().unwrap_or_default();
        // Settings first: a proxy_pass takes the TLS settings around it.
        for e in block {
            match e.name.as_str() {
                "proxy_pass" | "return" | "location" | "rewrite" => {}
                "if" => self.not_translated(e, "`if` blocks are not translated"),
                "internal" => internal = true,
                "limit_except" => {
                    inherited.guard = Some((e.text(), e.line));
                }
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
        for e in block {
            match e.name.as_str() {
                "proxy_pass" if self.arity(e, 1) => {
                    if let Some((pool, host, rewrite)) = self.proxy_pass(e, &path, &inherited) {
                        loc.proxy_pass = Some(pool);
                        proxy_host = Some(host);
                        // A `rewrite ... break` of the location wins over the URI part, as in nginx.
                        loc.rewrite = loc.rewrite.take().or(rewrite);
                    }
                }
                "rewrite" if self.arity(e, 3) => {
                    if let Some(r) = self.rewrite(e, loc.rewrite.is_some() && rewrites > 0) {
                        loc.rewrite = Some(r);
                    }
                    rewrites += 1;
                }
                "return" if self.arity(e, 2) => match self.ret(e) {
                    Some(r) => loc.ret = Some(r),
                    None => self.not_translated(e, "not translated"),
                },
                "location" => nested.push(e),
                _ => {}
            }
        }
        if loc.proxy_pass.is_some() && loc.ret.is_some() {
            // nginx's `return` runs first: the proxy_pass is never reached.
            loc.proxy_pass = None;
            proxy_host = None;
        }
        if internal {
            self.notes.push(note(
                d,
                "internal: clients get 404, as from nginx (Portico has no internal redirects)",
            ));
            loc.proxy_pass = None;
            loc.ret = Some(status(404));
        } else if let Some((what, line)) = inherited.guard.clone() {
            self.notes.push(Note {
                line,
                directive: what,
                why: format!(
                    "not translated: `location {path}` refuses every client (403) until you configure access (the basic_auth or ip_access plugin)"
                ),
            });
            loc.proxy_pass = None;
            loc.ret = Some(status(403));
        } else if loc.proxy_pass.is_none() && loc.ret.is_none() {
            self.not_translated(d, "neither proxy_pass nor return: the location answers 404 in Portico");
            loc.ret = Some(status(404));
        }
        if loc.proxy_pass.is_none() && loc.rewrite.take().is_some() {
            self.notes
                .push(note(d, "a rewrite in a location that proxies nothing: left out"));
        }
        self.apply(&mut loc, &inherited, proxy_host.as_deref());
        let mut out = vec![loc];
        for n in nested {
            out.extend(self.location(n, &inherited, &path));
        }
        out
    }

    /// Is `e` within `max` arguments? If not, it is named (a missing `;`
    /// before the next line makes its words arguments).
    fn arity(&mut self, e: &Directive, max: usize) -> bool {
        if e.args.len() > max {
            self.not_translated(e, "unexpected arguments (a missing `;`?): not translated");
            return false;
        }
        true
    }

    /// The inherited settings, as the location's own.
    fn apply(&mut self, loc: &mut Location, i: &Inherited, proxy_host: Option<&str>) {
        if loc.proxy_pass.is_some() {
            // nginx's default is 1m; 0 is no limit. A `return` reads no body.
            loc.client_max_body_size = i.client_max_body_size.filter(|s| s.0 > 0);
            loc.connect_timeout = i.connect_timeout;
            loc.read_timeout = i.read_timeout;
            // nginx times an upgraded connection's silence by proxy_read_timeout too.
            loc.websocket_idle_timeout = i.read_timeout;
            loc.write_timeout = i.write_timeout;
            loc.next_upstream = i.next_upstream.clone();
            loc.next_upstream_tries = i.next_upstream_tries;
            loc.next_upstream_timeout = i.next_upstream_timeout;
            loc.compression = self.compression(&i.gzip);
        }
        let headers = i.set_headers.as_deref().unwrap_or_default();
        for (name, value, line) in headers {
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
                self.not_translated(&d, format!("a variable Portico does not know ({KNOWN_VARS})"));
            }
        }
        // Without a Host line nginx sends the proxy_pass host ($proxy_host), not the client's.
        if let Some(host) = proxy_host {
            if !headers.iter().any(|(n, _, _)| n.eq_ignore_ascii_case("host")) {
                loc.proxy_set_header.insert("Host".into(), host.to_string());
            }
        }
        if let Some(add) = &i.add_headers {
            // nginx adds a field without `always` to 2xx/3xx answers only: those
            // go in a `headers` entry of their own, with `response_always: false`.
            let (mut set, mut always) = (serde_yaml::Mapping::new(), serde_yaml::Mapping::new());
            for (k, v, line, is_always) in add {
                let d = Directive {
                    name: "add_header".into(),
                    args: vec![k.clone(), v.clone()],
                    line: *line,
                    block: None,
                };
                let into = if *is_always { &mut always } else { &mut set };
                if !header_vars_ok(v) {
                    self.not_translated(&d, "a variable the headers plugin does not know");
                } else if into.insert(k.as_str().into(), v.as_str().into()).is_some() {
                    self.not_translated(&d, "a second field of this name: only the last is added");
                }
            }
            for (fields, every_status) in [(always, true), (set, false)] {
                if fields.is_empty() {
                    continue;
                }
                let mut settings = serde_yaml::Mapping::new();
                settings.insert("response_add".into(), serde_yaml::Value::Mapping(fields));
                if !every_status {
                    settings.insert("response_always".into(), false.into());
                }
                let entry: PluginEntry = [("headers".to_string(), serde_yaml::Value::Mapping(settings))].into();
                loc.plugins.push(entry);
            }
        }
        // Limits come after the access rules: a refused client spends no tokens.
        let limits = self.limits(i);
        loc.plugins.splice(0..0, limits);
        if let Some(rules) = &i.access {
            let entry = self.access(rules);
            loc.plugins.insert(0, entry);
        }
    }

    /// nginx's ordered `allow`/`deny` rules (first match wins; no match:
    /// allowed) as the `ip_access` plugin's lists (a client in `deny` is
    /// refused; else, with `allow` set, only clients in it pass).
    fn access(&mut self, rules: &[(bool, String, usize)]) -> PluginEntry {
        let (deny, allow) = self.access_lists(rules);
        let list = |items: Vec<String>| serde_yaml::Value::Sequence(items.into_iter().map(Into::into).collect());
        let mut settings = serde_yaml::Mapping::new();
        settings.insert("deny".into(), list(deny));
        if !allow.is_empty() {
            settings.insert("allow".into(), list(allow));
        }
        [("ip_access".to_string(), serde_yaml::Value::Mapping(settings))].into()
    }

    /// nginx's ordered `allow`/`deny` rules as a deny list and an allow
    /// list (empty: everyone not denied), the form both the `ip_access`
    /// plugin and TCP listeners take. They say the same for denies, then
    /// allows, then `deny all` or `allow all` (or nothing). Any other order
    /// is not translated and refuses everyone (fail closed).
    pub(super) fn access_lists(&mut self, rules: &[(bool, String, usize)]) -> (Vec<String>, Vec<String>) {
        let all = |r: &(bool, String, usize)| r.1 == "all";
        // Rules after the first `all` are never reached.
        let end = rules.iter().position(all).map_or(rules.len(), |i| i + 1);
        let (rules, last) = match rules[..end].split_last() {
            Some((l, rest)) if all(l) => (rest, Some(l.0)),
            _ => (&rules[..end], None),
        };
        let denies = rules.iter().take_while(|r| !r.0).count();
        let in_order = rules[denies..].iter().all(|r| r.0);
        let addrs = |rs: &[(bool, String, usize)]| rs.iter().map(|r| r.1.clone()).collect::<Vec<_>>();
        let everyone = || EVERYONE.iter().map(|s| s.to_string()).collect();
        match (in_order, last) {
            // No match, or `allow all`: allowed. The allows change nothing.
            (true, None | Some(true)) => (addrs(&rules[..denies]), Vec::new()),
            (true, Some(false)) if denies < rules.len() => (addrs(&rules[..denies]), addrs(&rules[denies..])),
            (true, Some(false)) => (everyone(), Vec::new()),
            (false, _) => {
                self.notes.push(Note {
                    line: rules.first().map_or(0, |r| r.2),
                    directive: "allow/deny".into(),
                    why: "an allow before a deny: not translated, every client is refused until you write the rules"
                        .into(),
                });
                (everyone(), Vec::new())
            }
        }
    }

    pub(super) fn ret(&mut self, e: &Directive) -> Option<Return> {
        let (status, text) = match e.args.as_slice() {
            [code] if code.parse::<u16>().is_ok() => (code.parse().ok()?, None),
            [url] => (302, Some(url.clone())),
            [code, text] => (code.parse().ok()?, Some(text.clone())),
            _ => return None,
        };
        // `$server_name` is the server block's first name, known here.
        let text = match (text, &self.server_name) {
            (Some(t), Some(name)) => Some(t.replace("${server_name}", name).replace("$server_name", name)),
            (t, _) => t,
        };
        if text.as_deref().is_some_and(|t| !template_ok(t)) {
            self.not_translated(e, format!("a variable Portico does not know ({KNOWN_VARS})"));
            return None;
        }
        if status == 444 {
            self.not_translated(e, "nginx closes the connection; Portico answers with status 444");
        }
        let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        Some(Return {
            status,
            location: text.clone().filter(|_| redirect),
            body: text.filter(|_| !redirect),
        })
    }

    /// A specific address on a port that also has a wildcard listen (nginx
    /// binds the wildcard and tells them apart; Portico cannot bind both):
    /// made the wildcard, and named.
    fn merge_listens(&mut self) {
        let wild = |a: &str| a.starts_with("0.0.0.0:") || a.starts_with("[::]:");
        let port = |a: &str| a.rsplit(':').next().unwrap_or("").to_string();
        let wildcards: Vec<(bool, String)> = (self.sites.iter().flat_map(|s| &s.listens))
            .filter(|l| wild(&l.addr))
            .map(|l| (l.addr.starts_with('['), port(&l.addr)))
            .collect();
        let mut merged = Vec::new();
        for site in self.sites.iter_mut() {
            for l in site.listens.iter_mut().filter(|l| !wild(&l.addr)) {
                let v6 = l.addr.starts_with('[');
                if wildcards.contains(&(v6, port(&l.addr))) {
                    let to = format!("{}:{}", if v6 { "[::]" } else { "0.0.0.0" }, port(&l.addr));
                    merged.push(Note {
                        line: l.line,
                        directive: format!("listen {}", l.addr),
                        why: format!("Portico cannot listen on it next to {to}: served on {to}"),
                    });
                    l.addr = to;
                }
            }
            let mut seen = Vec::new();
            site.listens.retain(|l| {
                let first = !seen.contains(&l.addr);
                seen.push(l.addr.clone());
                first
            });
        }
        self.notes.extend(merged);
    }

    /// The configuration the directives read so far make.
    pub fn finish(mut self) -> (Config, Vec<Note>) {
        if !self.stray.is_empty() {
            let stray = std::mem::take(&mut self.stray);
            self.sites.push(Site {
                line: 0,
                names: Vec::new(),
                listens: vec![Listen {
                    addr: "0.0.0.0:80".into(),
                    default: false,
                    ssl: false,
                    proxy_protocol: false,
                    line: 0,
                }],
                http2: false,
                cert: None,
                locations: stray,
            });
        }
        self.merge_listens();
        // nginx's default server for an address: the one marked, else the first.
        let mut defaults: BTreeMap<String, (usize, bool)> = BTreeMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            for l in &site.listens {
                match defaults.get(&l.addr) {
                    None => {
                        defaults.insert(l.addr.clone(), (i, l.default));
                    }
                    Some((_, false)) if l.default => {
                        defaults.insert(l.addr.clone(), (i, true));
                    }
                    _ => {}
                }
            }
        }
        let default_of = |addr: &str| defaults.get(addr).map(|&(i, _)| i);
        // Listeners in order of first appearance; a TLS one takes its servers'
        // certificates, the default server's first (for names no certificate has).
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            for l in &site.listens {
                let at = match listeners.iter().position(|x| x.listen == l.addr) {
                    Some(at) => at,
                    None => {
                        listeners.push(Listener {
                            listen: l.addr.clone(),
                            tls: None,
                            h2c: false,
                            accept_proxy_protocol: false,
                            max_connections: 0,
                        });
                        listeners.len() - 1
                    }
                };
                // (nginx takes the option once per address, on any of its listens.)
                listeners[at].accept_proxy_protocol |= l.proxy_protocol;
                if !l.ssl {
                    continue;
                }
                let tls = listeners[at].tls.get_or_insert(ListenerTls {
                    certificates: Vec::new(),
                    http2: false,
                });
                tls.http2 |= site.http2;
                if let Some((cert, key)) = &site.cert {
                    let c = Certificate {
                        cert: cert.clone(),
                        key: key.clone(),
                        server_names: site.names.clone(),
                    };
                    if default_of(&l.addr) == Some(i) {
                        tls.certificates.insert(0, c);
                    } else {
                        tls.certificates.push(c);
                    }
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
            // The first certificate answers every name: it lists none.
            if let Some(first) = l.tls.as_mut().and_then(|t| t.certificates.first_mut()) {
                first.server_names.clear();
            }
        }
        let all: Vec<String> = listeners.iter().map(|l| l.listen.clone()).collect();
        let mut vhosts = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            // A server is the default on some of its addresses: one host for those, one for the rest.
            let (default_on, other): (Vec<&Listen>, Vec<&Listen>) =
                site.listens.iter().partition(|l| default_of(&l.addr) == Some(i));
            for (is_default, on) in [(true, default_on), (false, other)] {
                if on.is_empty() {
                    continue;
                }
                if site.names.is_empty() && !is_default {
                    self.notes.push(Note {
                        line: site.line,
                        directive: "server".into(),
                        why: "a server with no name that is not the default for its address: never chosen, left out"
                            .into(),
                    });
                    continue;
                }
                let mut listen: Vec<String> = on.iter().map(|l| l.addr.clone()).collect();
                if all.iter().all(|a| listen.contains(a)) {
                    listen.clear();
                }
                vhosts.push(VirtualHost {
                    server_names: site.names.clone(),
                    default: is_default,
                    listen,
                    plugins: Vec::new(),
                    // (The importer writes each location's own block, as nginx inherits them.)
                    compression: None,
                    locations: site.locations.clone(),
                });
            }
        }
        let cfg = Config {
            server: self.server,
            listeners,
            tcp: self.tcp,
            upstreams: self.upstreams,
            virtual_hosts: vhosts,
            trusted_proxies: self.trusted,
            health_endpoint: Default::default(),
            access_log: self.access_log.unwrap_or_else(|| "stdout".into()),
            admin: None,
            plugins: Vec::new(),
            compression: None,
        };
        (cfg, self.notes)
    }
}

fn status(code: u16) -> Return {
    Return {
        status: code,
        location: None,
        body: None,
    }
}

impl Translator {
    /// A location's `rewrite REGEX REPLACEMENT [flag]`, when it changes the
    /// path the request goes upstream with (`break`, or `last` and no flag,
    /// read as `break`: Portico does not search the locations again).
    /// `another`: one was taken already (Portico takes one per location).
    fn rewrite(&mut self, e: &Directive, another: bool) -> Option<RewriteRule> {
        let (Some(from), Some(to)) = (e.args.first(), e.args.get(1)) else {
            self.not_translated(e, "expected a regex and a replacement");
            return None;
        };
        let flag = e.args.get(2).map(String::as_str);
        if another {
            self.not_translated(e, "a second rewrite in a location: only the first is applied");
            return None;
        }
        if matches!(flag, Some("redirect" | "permanent")) || to.starts_with("http://") || to.starts_with("https://") {
            self.not_translated(e, "a redirecting rewrite is not translated (use return)");
            return None;
        }
        let mut digits_only = to.match_indices('$').map(|(i, _)| to[i + 1..].chars().next());
        if !digits_only.all(|c| c.is_some_and(|c| c.is_ascii_digit())) {
            self.not_translated(e, "a replacement with variables other than $1..$9 is not translated");
            return None;
        }
        if let Err(why) = crate::rewrite::Rewrite::new(from, to) {
            self.not_translated(e, format!("not translated: {why}"));
            return None;
        }
        match flag {
            Some("break") => {}
            Some("last") | None => self.notes.push(note(
                e,
                "applied as `break`: the request stays in this location (Portico does not search the locations again)",
            )),
            Some(f) => {
                self.not_translated(e, format!("unknown flag {f}"));
                return None;
            }
        }
        Some(RewriteRule {
            from: from.clone(),
            to: to.clone(),
        })
    }
}

fn empty_location(path: String) -> Location {
    Location {
        path,
        ..Default::default()
    }
}

/// Does `value` name only variables the headers plugin fills in?
fn header_vars_ok(value: &str) -> bool {
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        let after = rest[i + 1..].trim_start_matches('{');
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if !matches!(&after[..len], "remote_addr" | "host" | "scheme" | "uri" | "request_id") {
            return false;
        }
        rest = &after[len..];
    }
    true
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

/// nginx's trailing wildcard (`www.example.*`) as the regex name it stands for.
pub(super) fn trailing_wildcard(name: &str) -> String {
    let stem = name.strip_suffix(".*").unwrap_or(name).to_ascii_lowercase();
    format!("~^{}\\..+$", regex::escape(&stem))
}
