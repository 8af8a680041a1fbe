//! `portico --import-nginx FILE`: an nginx configuration translated into
//! Portico's YAML. What has an equivalent is translated, what Portico does
//! by default is dropped, and every directive that is not translated is
//! named with its line, on stderr and in the file's opening comment.

mod emit;
mod lex;
mod translate;

pub use translate::Note;

pub struct Imported {
    pub yaml: String,
    pub notes: Vec<Note>,
}

/// Translate the nginx configuration `src` (read from `file`). `Err`: a
/// syntax error, with its line.
pub fn nginx(file: &str, src: &str) -> Result<Imported, String> {
    let parsed = lex::parse(src).map_err(|(line, why)| format!("{file}:{line}: {why}"))?;
    let mut t = translate::Translator::default();
    t.main(&parsed.list);
    let (cfg, mut notes) = t.finish();
    notes.extend(parsed.slips.into_iter().map(|(line, why)| Note {
        line,
        directive: "(syntax)".into(),
        why,
    }));
    notes.sort_by_key(|n| n.line);
    // A rule inherited by several locations is noted once.
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert((n.line, n.directive.clone(), n.why.clone())));
    let mut preface = format!("# Imported from {file} by `portico --import-nginx`.\n");
    if notes.is_empty() {
        preface.push_str("# Every directive was translated.\n");
    } else {
        preface.push_str("# Not translated (line: directive: why):\n");
        for n in &notes {
            preface.push_str(&format!("#   {}\n", note_text(n).replace('\n', " ")));
        }
    }
    preface.push('\n');
    Ok(Imported {
        yaml: emit::yaml(&cfg, &preface),
        notes,
    })
}

/// `12: root html: why`, or without the line for what no line holds.
pub fn note_text(n: &Note) -> String {
    match n.line {
        0 => format!("{}: {}", n.directive, n.why),
        l => format!("{l}: {}: {}", n.directive, n.why),
    }
}

/// The command: the YAML on stdout, the notes and the result of checking
/// the output as `-t` checks a file on stderr. Exit status 1 for a file
/// that cannot be read or parsed.
pub fn run(path: &str) -> i32 {
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portico: {path}: {e}");
            return 1;
        }
    };
    let imported = match nginx(path, &src) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("portico: {e}");
            return 1;
        }
    };
    print!("{}", imported.yaml);
    for n in &imported.notes {
        match n.line {
            0 => eprintln!("portico: {path}: {}: {}", n.directive, n.why),
            l => eprintln!("portico: {path}:{l}: {}: {}", n.directive, n.why),
        }
    }
    let states = crate::upstream::state::StateRegistry::default();
    let checked = crate::config::parse("(imported)", &imported.yaml).and_then(|l| crate::live::build(&l, &states));
    match checked {
        Ok(_) => eprintln!("portico: the imported configuration passes -t"),
        Err(e) => eprintln!("portico: the imported configuration does not pass -t yet: {e}"),
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{Algorithm, Config};

    fn import(src: &str) -> (Config, Vec<String>) {
        let i = nginx("t.conf", src).unwrap();
        let cfg = crate::config::parse("t.yaml", &i.yaml)
            .unwrap_or_else(|e| panic!("{e}\n{}", i.yaml))
            .cfg;
        (cfg, i.notes.iter().map(note_text).collect())
    }

    #[test]
    fn pools_keep_their_algorithm_servers_and_parameters() {
        let (cfg, notes) = import(
            "upstream a { hash $cookie_sid consistent; server 10.0.0.1 weight=3 max_fails=2 fail_timeout=30s;\n\
             server 10.0.0.2:8080 backup; server 10.0.0.3:8080 down; server 10.0.0.4 slow_start=30s; keepalive 8; }\n\
             upstream b { random two least_conn; server unix:/tmp/s; server 10.0.1.1; }\n\
             upstream c { ip_hash; server 10.0.2.1; }\n\
             server { listen 80; location / { proxy_pass http://a; } }",
        );
        let a = &cfg.upstreams["a"];
        assert_eq!(
            (a.algorithm, a.hash_key.as_deref(), a.consistent, a.keepalive),
            (Algorithm::Hash, Some("$cookie_sid"), true, 8)
        );
        let s = &a.servers;
        assert_eq!(
            (s[0].address.as_str(), s[0].weight, s[0].max_fails),
            ("10.0.0.1:80", 3, 2)
        );
        assert_eq!(s[0].fail_timeout.map(|d| d.0.as_secs()), Some(30));
        assert!(s[1].backup && s[2].down && s.len() == 4);
        assert_eq!(cfg.upstreams["b"].algorithm, Algorithm::RandomTwoLeastConn);
        assert_eq!(cfg.upstreams["b"].servers.len(), 1);
        assert_eq!(cfg.upstreams["c"].algorithm, Algorithm::IpHash);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("2: server 10.0.0.4 slow_start=30s: `slow_start=30s`")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.starts_with("3: server unix:/tmp/s:")),
            "{notes:?}"
        );
    }

    #[test]
    fn servers_become_listeners_and_virtual_hosts_as_nginx_picks_them() {
        let (cfg, notes) = import(
            "server { listen 80; server_name a.example www.a.example; location / { proxy_pass http://10.0.0.1:8080; } }\n\
             server { listen 80 default_server; server_name .b.example; location / { return 404; } }\n\
             server { listen 80; server_name _; location / { return 444; } }\n\
             ssl_certificate a.pem; ssl_certificate_key a.key;\n\
             server { listen 443 ssl; http2 on; server_name a.example;\n\
               location / { proxy_pass https://secure.example; } }\n\
             server { listen 443 ssl; server_name c.example; ssl_certificate c.pem; ssl_certificate_key c.key;\n\
               return 301 https://a.example$request_uri; }\n",
        );
        let addrs: Vec<&str> = cfg.listeners.iter().map(|l| l.listen.as_str()).collect();
        assert_eq!(addrs, ["0.0.0.0:80", "0.0.0.0:443"]);
        let tls = cfg.listeners[1].tls.as_ref().unwrap();
        assert!(tls.http2);
        assert_eq!(tls.certificates.len(), 2);
        assert!(
            tls.certificates[0].server_names.is_empty(),
            "the first is the default certificate"
        );
        assert_eq!(tls.certificates[1].server_names, ["c.example"]);
        let v = &cfg.virtual_hosts;
        assert_eq!(
            v.len(),
            4,
            "the nameless server that is not the default is left out: {notes:?}"
        );
        assert_eq!(
            (v[0].default, v[0].listen.clone()),
            (false, vec!["0.0.0.0:80".to_string()])
        );
        assert_eq!(v[1].server_names, ["b.example", "*.b.example"]);
        assert!(v[1].default);
        assert!(
            notes.iter().any(|n| n.starts_with("3: server: a server with no name")),
            "{notes:?}"
        );
        let secure = &cfg.upstreams[v[2].locations[0].proxy_pass.as_ref().unwrap()];
        assert!(secure.tls && secure.servers[0].address == "secure.example:443");
        assert_eq!(
            (secure.tls_sni.as_deref(), secure.tls_verify),
            (None, false),
            "as nginx's defaults"
        );
        let r = v[3].locations[0].ret.as_ref().unwrap();
        assert_eq!(
            (r.status, r.location.as_deref()),
            (301, Some("https://a.example$request_uri"))
        );
    }

    #[test]
    fn location_settings_inherit_and_what_portico_does_anyway_is_dropped() {
        let (cfg, notes) = import(
            "http {\n client_max_body_size 10m; proxy_read_timeout 1m30s; large_client_header_buffers 4 16k;\n\
             proxy_set_header X-Env prod;\n\
             server {\n listen 8080;\n\
               location / { proxy_pass http://10.0.0.1/; proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header Connection \"\"; proxy_set_header X-Drop \"\"; }\n\
               location /api { proxy_pass http://10.0.0.1/v2; proxy_set_header X-Id $request_id; client_max_body_size 1k;\n\
                 location ~ \\.json$ { proxy_pass http://10.0.0.1; add_header X-Json yes always; }\n\
                 allow 10.0.0.0/8; allow 192.168.0.0/16; deny all; }\n\
               location /mixed { deny 10.0.0.1; allow 10.0.0.0/8; deny all; proxy_pass http://10.0.0.1; }\n\
             }\n}\n",
        );
        let locs = &cfg.virtual_hosts[0].locations;
        let root = &locs[0];
        assert_eq!(root.client_max_body_size.map(|s| s.0), Some(10 << 20));
        assert_eq!(root.read_timeout.map(|d| d.0.as_secs()), Some(90));
        assert_eq!(
            root.websocket_idle_timeout.map(|d| d.0.as_secs()),
            Some(90),
            "nginx times upgraded connections by it"
        );
        let set = |l: &crate::config::schema::Location| -> Vec<(String, String)> {
            l.proxy_set_header.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        assert!(
            set(root).is_empty(),
            "Portico's own are dropped, and a level that sets some inherits none"
        );
        assert_eq!(root.proxy_remove_header, ["X-Drop"]);
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            set(&locs[3]),
            [pair("Host", "10.0.0.1"), pair("X-Env", "prod")],
            "a level that sets none inherits; without a Host line nginx sends the proxy_pass host"
        );
        let api = &locs[1];
        assert_eq!(
            set(api),
            [pair("Host", "10.0.0.1")],
            "it sets its own (which is not translated): none inherited"
        );
        assert_eq!(api.client_max_body_size.map(|s| s.0), Some(1024));
        let json = &locs[2];
        assert_eq!(json.path, "~ \\.json$");
        assert_eq!(cfg.server.max_request_header_size.0, 64 << 10);
        let plugin_names = |l: &crate::config::schema::Location| -> Vec<String> {
            l.plugins.iter().flat_map(|p| p.keys().cloned()).collect()
        };
        assert_eq!(plugin_names(api), ["ip_access"]);
        assert_eq!(
            plugin_names(json),
            ["ip_access", "headers"],
            "a nested location inherits the rules"
        );
        assert_eq!(plugin_names(&locs[3]), ["ip_access"]);
        let rules = serde_yaml::to_string(&locs[3].plugins[0]).unwrap();
        assert_eq!(
            rules, "ip_access:\n  deny:\n  - 10.0.0.1\n  allow:\n  - 10.0.0.0/8\n",
            "denies, allows, deny all"
        );
        // The URI part takes the place of the location's prefix (`location /api`).
        let rw = api.rewrite.as_ref().expect("the proxy_pass URI part as a rewrite");
        assert_eq!((rw.from.as_str(), rw.to.as_str()), ("^/api(.*)$", "/v2$1"));
        for expected in [
            "8: proxy_set_header X-Id $request_id: a variable Portico does not know",
            "9: location ~ \\.json$: nested in `location /api`: made a location of its own, which now also matches outside it",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:?}"
            );
        }
        assert!(
            !notes.iter().any(|n| n.starts_with("6:")),
            "location / has nothing left out: {notes:?}"
        );
    }

    /// What a review of the importer found translated wrongly: each case
    /// as nginx does it, or refusing (fail closed) where it cannot be.
    #[test]
    fn nginx_defaults_and_refusals_are_kept() {
        let (cfg, notes) = import(
            "pid /run/n.pid; set_real_ip_from 10.0.0.0/8; keepalive_timeout 0; server { listen 80; listen 443 ssl; server_name a.example; ssl_certificate a.pem; ssl_certificate_key a.key;\n\
               location / { proxy_pass http://10.0.0.1:8080; }\n\
               location /up { client_max_body_size 0; proxy_pass http://10.0.0.1:8080; }\n\
               location /in { deny all; proxy_pass http://10.0.0.1:8080; }\n\
               location /mix { allow 10.0.0.0/8; deny 10.0.0.1; deny all; proxy_pass http://10.0.0.1:8080; }\n\
               location /auth { auth_basic \"x\"; auth_basic_user_file /etc/htpasswd; proxy_pass http://10.0.0.1:8080; }\n\
               location /int { internal; proxy_pass http://10.0.0.1:8080; }\n\
               location =/exact { return 204; } location ~*\\.css$ { return 403; }\n\
               location /semi { proxy_pass http://10.0.0.1:8080\n proxy_set_header X-Lost yes; }\n\
               location /r { return 301 https://${host}v2$request_uri; }\n\
             }\n\
             server { listen 127.0.0.1:80; server_name local.example; return 301 https://a.example/; location /x { proxy_pass http://10.0.0.2; } }\n\
             server { listen 8080 default_server; listen 80; server_name b.example; location / { return 301 https://$server_name$request_uri; } }\n",
        );
        let addrs: Vec<(&str, bool)> = cfg
            .listeners
            .iter()
            .map(|l| (l.listen.as_str(), l.tls.is_some()))
            .collect();
        assert_eq!(
            addrs,
            [("0.0.0.0:80", false), ("0.0.0.0:443", true), ("0.0.0.0:8080", false)],
            "TLS per address; 127.0.0.1:80 served on 0.0.0.0:80"
        );
        let v = &cfg.virtual_hosts;
        let loc = |p: &str| {
            v[0].locations
                .iter()
                .find(|l| l.path == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        assert_eq!(
            loc("/").client_max_body_size.map(|s| s.0),
            Some(1 << 20),
            "nginx's default"
        );
        assert_eq!(loc("/up").client_max_body_size, None, "0: no limit");
        let rules = |p: &str| serde_yaml::to_string(&loc(p).plugins).unwrap();
        assert!(
            rules("/in").contains("- 0.0.0.0/0\n") && rules("/in").contains("- ::/0\n"),
            "{}",
            rules("/in")
        );
        assert!(
            rules("/mix").contains("- 0.0.0.0/0\n"),
            "an allow before a deny: refused: {}",
            rules("/mix")
        );
        for (p, code) in [("/auth", 403), ("/int", 404), ("= /exact", 204), ("~* \\.css$", 403)] {
            assert_eq!(loc(p).ret.as_ref().map(|r| r.status), Some(code), "{p}");
            assert!(loc(p).proxy_pass.is_none(), "{p}");
        }
        assert!(loc("/semi").proxy_pass.is_none(), "its words ran into the next line's");
        assert_eq!(
            loc("/r").ret.as_ref().unwrap().location.as_deref(),
            Some("https://${host}v2$request_uri")
        );
        let local = v.iter().find(|h| h.server_names == ["local.example"]).unwrap();
        assert_eq!(local.locations.len(), 1, "a server-wide return answers every request");
        let b: Vec<(bool, Vec<String>)> = v
            .iter()
            .filter(|h| h.server_names == ["b.example"])
            .map(|h| (h.default, h.listen.clone()))
            .collect();
        assert_eq!(
            b,
            [
                (true, vec!["0.0.0.0:8080".to_string()]),
                (false, vec!["0.0.0.0:80".to_string()])
            ],
            "default on one address only"
        );
        assert!(v[0].default, "the first server of :80");
        let b_ret = v.iter().find(|h| h.server_names == ["b.example"]).unwrap().locations[0]
            .ret
            .clone()
            .unwrap();
        assert_eq!(
            b_ret.location.as_deref(),
            Some("https://b.example$request_uri"),
            "$server_name"
        );
        for expected in [
            "13: listen 127.0.0.1:80: Portico cannot listen on it next to 0.0.0.0:80",
            "5: allow/deny: an allow before a deny",
            "6: auth_basic x: not translated: `location /auth` refuses every client",
            "7: location /int: internal: clients get 404",
            "9: proxy_pass http://10.0.0.1:8080 proxy_set_header X-Lost yes: unexpected arguments",
            "13: return 301 https://a.example/: a server-wide return answers every request",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {notes:?}"
            );
        }
        assert!(!notes.iter().any(|n| n.contains("auth_basic_user_file")), "{notes:?}");
        assert_eq!(
            cfg.server.keepalive_timeout.0.as_secs(),
            60,
            "0 (keep-alive off in nginx) is not a timeout"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("1: keepalive_timeout 0: nginx turns keep-alive off")),
            "{notes:?}"
        );
        assert_eq!(
            (cfg.server.pid_file.as_deref(), cfg.trusted_proxies.clone()),
            (Some("/run/n.pid"), vec!["10.0.0.0/8".to_string()])
        );
    }

    /// Seeded random damage to a real-looking file (bytes dropped, doubled
    /// or replaced by nginx's own punctuation): the import never panics, and
    /// whatever it writes reads back as a Portico configuration.
    #[test]
    fn damaged_files_never_panic_and_the_output_always_reads_back() {
        let sample = "worker_processes 2;\nhttp {\n upstream app { least_conn; server 10.0.0.1:80 weight=2 max_fails=3 fail_timeout=10s; keepalive 8; }\n\
            map $http_upgrade $c { default upgrade; '' close; }\n\
            server { listen 443 ssl http2 default_server; server_name a.example .b.example; ssl_certificate a.pem; ssl_certificate_key a.key;\n\
            client_max_body_size 5m; proxy_read_timeout 30s; proxy_set_header X-A \"v $host\";\n\
            location / { proxy_pass http://app; proxy_next_upstream error timeout http_502; add_header X y; }\n\
            location = /h { return 200 'ok'; } location ~* \\.php$ { deny all; return 403; }\n\
            location /r { return 301 https://$host$request_uri; } }\n}\n\
            stream { map $ssl_preread_server_name $to { hostnames; a.test app; .b.test 10.0.0.2:443; default app; }\n\
            upstream app { hash $remote_addr consistent; server 10.0.0.1:443 max_fails=2; }\n\
            server { listen 443; ssl_preread on; proxy_pass $to; proxy_timeout 1h; allow 10.0.0.0/8; deny all; }\n\
            server { listen 5432 ssl; ssl_certificate a.pem; ssl_certificate_key a.key; proxy_pass 10.0.0.3:5432; proxy_protocol on; } }\n";
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        let punct = b"{};'\"$#\\ \n=:/~*^";
        let mut oks = 0;
        for _ in 0..3000 {
            let mut b = sample.as_bytes().to_vec();
            for _ in 0..1 + next(4) {
                let at = next(b.len());
                match next(3) {
                    0 => {
                        b.remove(at);
                    }
                    1 => b.insert(at, b[at]),
                    _ => b[at] = punct[next(punct.len())],
                }
            }
            let text = String::from_utf8_lossy(&b);
            let r = nginx("f.conf", &text);
            oks += usize::from(r.is_ok());
            if let Ok(i) = r {
                if let Err(e) = crate::config::parse("f.yaml", &i.yaml) {
                    panic!("{e}\nfrom:\n{text}\nyaml:\n{}", i.yaml);
                }
            }
        }
        assert!(oks > 1500, "most damaged files are still imported: {oks} of 3000");
    }

    #[test]
    fn syntax_errors_and_slips_name_their_line() {
        assert_eq!(
            nginx("t.conf", "server {\n  return 200 'x;\n}").err().unwrap(),
            "t.conf:2: the string opened here with ' is never closed"
        );
        let i = nginx(
            "t.conf",
            "server {\n listen 80;\n location / { proxy_pass http://10.0.0.1:80; }\n",
        )
        .unwrap();
        assert_eq!(
            note_text(&i.notes[0]),
            "1: (syntax): the block opened here is never closed with \"}\": closed at the end of the file"
        );
        assert!(i.yaml.starts_with("# Imported from t.conf"), "{}", i.yaml);
        assert!(
            i.yaml.contains("#   1: (syntax)"),
            "the notes head the file: {}",
            i.yaml
        );
    }

    #[test]
    fn stream_blocks_become_tcp_listeners_and_preread_maps_sni_rules() {
        let (cfg, notes) = import(
            "stream {\n proxy_timeout 1h;\n\
             map $ssl_preread_server_name $to { hostnames; a.test a; .b.test b; ~^c a; d.* a; default 10.0.0.9:443; }\n\
             upstream a { server 10.0.0.1:443; }\n upstream b { hash $remote_addr consistent; server 10.0.0.2:443; server 10.0.0.3:443; }\n\
             server { listen 443; ssl_preread on; proxy_pass $to; }\n\
             server { listen 5432; proxy_pass a; proxy_protocol on; deny 10.0.0.66; allow 10.0.0.0/8; deny all; }\n\
             server { listen 53 udp; proxy_pass 10.0.0.53:53; }\n}\n",
        );
        let [sni, db] = cfg.tcp.as_slice() else {
            panic!("{:?}", cfg.tcp)
        };
        assert_eq!(
            (sni.listen.as_str(), sni.proxy_pass.as_deref()),
            ("0.0.0.0:443", Some("10_0_0_9_443"))
        );
        let rules: Vec<(&str, &str)> = sni.sni.iter().map(|(n, p)| (n.as_str(), p.as_str())).collect();
        // In the map's order; a regex as it is, a trailing wildcard as the regex it stands for.
        assert_eq!(
            rules,
            [
                ("a.test", "a"),
                ("b.test", "b"),
                ("*.b.test", "b"),
                ("~^c", "a"),
                ("~^d\\..+$", "a")
            ]
        );
        assert_eq!(sni.idle_timeout.map(|d| d.0.as_secs()), Some(3600));
        assert_eq!(
            (db.proxy_pass.as_deref(), db.proxy_protocol.as_deref()),
            (Some("a"), Some("v1"))
        );
        assert_eq!(
            (db.deny.as_slice(), db.allow.as_slice()),
            (&["10.0.0.66".to_string()][..], &["10.0.0.0/8".to_string()][..])
        );
        assert_eq!(cfg.upstreams["b"].hash_key.as_deref(), Some("$remote_addr"));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("8: listen 53 udp: Portico does not balance UDP"),
            "{notes:?}"
        );
    }

    #[test]
    fn listens_with_proxy_protocol_accept_it() {
        let (cfg, notes) = import(
            "http { server { listen 80; listen 8080 proxy_protocol; location / { proxy_pass http://10.0.0.1; } }\n\
             server { listen 8080; server_name b; location / { proxy_pass http://10.0.0.2; } } }\n\
             stream { server { listen 5432 proxy_protocol; proxy_pass 10.0.0.3:5432; } }\n",
        );
        let accepts: Vec<(&str, bool)> = cfg
            .listeners
            .iter()
            .map(|l| (l.listen.as_str(), l.accept_proxy_protocol))
            .collect();
        assert_eq!(accepts, [("0.0.0.0:80", false), ("0.0.0.0:8080", true)]);
        assert!(cfg.tcp[0].accept_proxy_protocol);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes.iter().all(|n| n.contains("real_ip_header proxy_protocol")),
            "{notes:?}"
        );
    }

    #[test]
    fn limit_req_and_limit_conn_become_plugins_inherited_as_nginx_does() {
        let (cfg, notes) = import(
            "http {\n limit_req_zone $binary_remote_addr zone=one:10m rate=30r/m;\n\
             limit_req_zone $http_x_key zone=key:1m rate=5r/s;\n limit_conn_zone $binary_remote_addr zone=addr:10m;\n\
             limit_conn_zone $server_name zone=site:1m;\n limit_req zone=one burst=5 nodelay;\n\
             server { listen 80; limit_conn_status 429;\n\
              location / { proxy_pass http://10.0.0.1; }\n\
              location /api/ { proxy_pass http://10.0.0.1; limit_req zone=key burst=10; limit_conn addr 2; limit_conn site 100; }\n\
              location /open/ { proxy_pass http://10.0.0.1; allow 10.0.0.0/8; deny all; limit_req zone=nowhere; } } }\n",
        );
        let plugins = |path: &str| {
            let loc = cfg.virtual_hosts[0].locations.iter().find(|l| l.path == path).unwrap();
            serde_yaml::to_string(&loc.plugins).unwrap()
        };
        // Inherited from http: 0.5 per second, a bucket of burst + 1.
        let root = plugins("/");
        assert!(
            root.contains("rate_limit") && root.contains("rate: 0.5") && root.contains("burst: 6"),
            "{root}"
        );
        // A level with its own limit_req inherits none; limit_conn by address and per server.
        let api = plugins("/api/");
        assert!(!api.contains("rate: 0.5"), "{api}");
        assert!(
            api.contains("rate: 5.0") && api.contains("burst: 11") && api.contains("key: $http_x_key"),
            "{api}"
        );
        assert!(
            api.contains("max: 2") && api.contains("max: 100") && api.contains("key: '-'"),
            "{api}"
        );
        assert!(api.contains("status: 429"), "{api}");
        // The access rules come first; an unknown zone is named.
        let open = plugins("/open/");
        assert!(
            open.find("ip_access") < open.find("rate_limit").or(Some(usize::MAX)),
            "{open}"
        );
        assert!(notes.iter().any(|n| n.contains("no zone nowhere")), "{notes:?}");
        // nodelay: no delay; without it, every request over the rate waits; nginx's 503.
        assert!(!root.contains("delay") && root.contains("status: 503"), "{root}");
        assert!(api.contains("delay: 0") && api.contains("status: 503"), "{api}");
    }

    #[test]
    fn resolver_and_server_resolve_carry_over() {
        let (cfg, notes) = import(
            "http {\n resolver 10.0.0.2:5353 10.0.0.3 valid=10s ipv6=off;\n\
             upstream app { server app.internal:8080 resolve; server 10.0.0.9; }\n\
             server { listen 80; location / { proxy_pass http://app; } } }\n",
        );
        assert_eq!(cfg.server.resolver.as_deref(), Some("10.0.0.2:5353"));
        assert_eq!(cfg.server.resolver_valid.0, std::time::Duration::from_secs(10));
        let s = &cfg.upstreams["app"].servers;
        assert!(s[0].resolve && !s[1].resolve);
        assert!(notes.iter().any(|n| n.contains("asks one resolver")), "{notes:?}");
    }

    #[test]
    fn gzip_settings_inherit_one_by_one_into_compression() {
        let (cfg, notes) = import(
            "http {\n gzip on;\n gzip_types application/json text/css;\n gzip_min_length 1k;\n\
             server { listen 80; gzip_comp_level 5;\n\
              location / { proxy_pass http://10.0.0.1; }\n\
              location /raw/ { gzip off; proxy_pass http://10.0.0.1; }\n\
              location /all/ { gzip_types *; gzip_proxied expired any; proxy_pass http://10.0.0.1; }\n\
              location /r/ { return 204; }\n\
              location /br/ { gzip off; brotli on; brotli_comp_level 4; brotli_types text/css; proxy_pass http://10.0.0.1; } } }\n",
        );
        let comp = |path: &str| {
            let l = cfg.virtual_hosts[0].locations.iter().find(|l| l.path == path).unwrap();
            l.compression
                .as_ref()
                .map(|c| (c.gzip, c.min_length.0, c.types.clone().unwrap_or_default()))
        };
        let types = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            comp("/"),
            Some((5, 1024, types(&["text/html", "application/json", "text/css"])))
        );
        assert_eq!(comp("/raw/"), None);
        assert_eq!(comp("/all/"), Some((5, 1024, types(&["*"]))));
        assert_eq!(comp("/r/"), None, "a return compresses nothing");
        // ngx_brotli: its level, its types; gzip off there.
        let br = cfg.virtual_hosts[0]
            .locations
            .iter()
            .find(|l| l.path == "/br/")
            .unwrap();
        let br = br.compression.as_ref().unwrap();
        assert_eq!((br.gzip, br.brotli), (0, 4));
        assert_eq!(br.types.as_deref().unwrap(), ["text/html", "text/css"]);
        // The Via difference is named once, on the `gzip on` line; not for /all/.
        let via: Vec<_> = notes.iter().filter(|n| n.contains("gzip_proxied any")).collect();
        assert_eq!(via.len(), 1, "{notes:?}");
        assert!(via[0].starts_with("2:"), "{via:?}");
    }

    #[test]
    fn rewrites_and_proxy_pass_uris_become_rewrites() {
        let (cfg, notes) = import(
            "server { listen 80;\n\
             location /api/ { proxy_pass http://10.0.0.1:8080/; }\n\
             location = /exact { proxy_pass http://10.0.0.1:8080/other; }\n\
             location /old/ { rewrite ^/old/(\\w+)$ /new/$1 break; proxy_pass http://10.0.0.1:8080/ignored/; }\n\
             location /last/ { rewrite ^/last/(.*)$ /$1; proxy_pass http://10.0.0.1:8080; }\n\
             location /r/ { rewrite ^ https://example.com/ permanent; proxy_pass http://10.0.0.1:8080; }\n\
             location /v/ { rewrite ^/v/(.*)$ /$1?x=$arg_y break; proxy_pass http://10.0.0.1:8080; }\n\
             location /same/ { proxy_pass http://10.0.0.1:8080/same/; } }\n",
        );
        let rw = |path: &str| {
            let l = cfg.virtual_hosts[0].locations.iter().find(|l| l.path == path).unwrap();
            l.rewrite.as_ref().map(|r| (r.from.clone(), r.to.clone()))
        };
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(rw("/api/"), pair("^/api/(.*)$", "/$1"));
        assert_eq!(rw("= /exact"), pair("^/exact$", "/other"));
        assert_eq!(
            rw("/old/"),
            pair("^/old/(\\w+)$", "/new/$1"),
            "a rewrite wins over the URI part"
        );
        assert_eq!(rw("/last/"), pair("^/last/(.*)$", "/$1"));
        assert_eq!((rw("/r/"), rw("/v/"), rw("/same/")), (None, None, None));
        let has = |line: &str, what: &str| notes.iter().any(|n| n.starts_with(line) && n.contains(what));
        assert!(has("5:", "applied as `break`"), "{notes:?}");
        assert!(has("6:", "redirecting rewrite"), "{notes:?}");
        assert!(has("7:", "variables other than"), "{notes:?}");
        assert_eq!(notes.len(), 3, "{notes:?}");
    }

    #[test]
    fn stream_proxy_ssl_makes_the_pool_tls() {
        let (cfg, notes) = import(
            "stream {\n upstream db { server db1.internal:5432; }\n\
             server { listen 5432; proxy_pass db; proxy_ssl on; proxy_ssl_verify on; proxy_ssl_trusted_certificate ca.pem; }\n\
             server { listen 6379; proxy_pass 10.0.0.7:6380; proxy_ssl on; }\n\
             server { listen 7000; proxy_pass 10.0.0.8:7000; proxy_ssl on; proxy_ssl_certificate c.pem;\n\
              proxy_ssl_certificate_key c.key; } }\n\
             http { server { listen 80; location / { proxy_pass https://10.0.0.9; proxy_ssl_certificate h.pem;\n\
              proxy_ssl_certificate_key h.key; } } }\n",
        );
        let db = &cfg.upstreams["db"];
        assert!(db.tls && db.tls_verify, "verified as proxy_ssl_verify says");
        assert_eq!(
            (db.tls_sni.as_deref(), db.tls_ca_file.as_deref()),
            (Some("db1.internal"), Some("ca.pem"))
        );
        let redis = &cfg.upstreams["10_0_0_7_6380"];
        assert!(
            redis.tls && !redis.tls_verify && redis.tls_sni.is_none(),
            "nginx's defaults"
        );
        // Client certificates towards the servers, from stream and http alike.
        let client = |pool: &str| {
            let u = &cfg.upstreams[pool];
            (
                u.tls_cert.clone().unwrap_or_default(),
                u.tls_key.clone().unwrap_or_default(),
            )
        };
        assert_eq!(cfg.tcp.len(), 3);
        assert_eq!(client("10_0_0_8_7000"), ("c.pem".into(), "c.key".into()));
        assert_eq!(client("10_0_0_9_443"), ("h.pem".into(), "h.key".into()));
        assert!(notes.iter().any(|n| n.contains("tls_verify: false")), "{notes:?}");
    }

    #[test]
    fn stream_limit_conn_becomes_connection_limits() {
        let (cfg, notes) = import(
            "stream {\n limit_conn addr 4;\n limit_conn_zone $binary_remote_addr zone=addr:10m;\n\
             limit_conn_zone $server_port zone=port:1m;\n limit_conn_zone $ssl_preread_server_name zone=sni:1m;\n\
             server { listen 1; proxy_pass 10.0.0.1:1; }\n\
             server { listen 2; proxy_pass 10.0.0.1:2; limit_conn port 100; }\n\
             server { listen 3; proxy_pass 10.0.0.1:3; limit_conn sni 5; limit_conn nowhere 5; }\n}\n",
        );
        let limits: Vec<(usize, usize)> = cfg
            .tcp
            .iter()
            .map(|t| (t.max_connections, t.max_connections_per_client))
            .collect();
        assert_eq!(limits, [(0, 4), (100, 4), (0, 4)]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("only by client address"), "{notes:?}");
        assert!(notes[1].contains("no limit_conn_zone nowhere"), "{notes:?}");
    }

    #[test]
    fn add_header_without_always_is_for_successful_answers_only() {
        let (cfg, notes) = import(
            "server { listen 80; location / { proxy_pass http://10.0.0.1; add_header X-A 1; add_header X-B 2 always; } }",
        );
        assert!(notes.is_empty(), "{notes:?}");
        let plugins = &cfg.virtual_hosts[0].locations[0].plugins;
        let text = serde_yaml::to_string(plugins).unwrap();
        assert_eq!(plugins.len(), 2, "{text}");
        let always = &plugins[0]["headers"];
        assert_eq!(always["response_add"]["X-B"], "2");
        assert!(always.get("response_always").is_none(), "{text}");
        let success = &plugins[1]["headers"];
        assert_eq!(success["response_add"]["X-A"], "1");
        assert_eq!(success["response_always"], false, "{text}");
    }
}
