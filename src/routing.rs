//! Host and path matching, compiled once per configuration.
//!
//! Hosts: exact names, then the longest matching `*.suffix` wildcard, then
//! the listener's default host. Paths follow nginx precedence: an exact
//! `= /path` wins at once; otherwise the longest prefix is remembered, and
//! used directly if marked `^~`; otherwise regexes are tried in file order
//! and the first match wins; otherwise the longest prefix is used.
//!
//! Paths are matched as nginx matches its `$uri` ([`normalize`]): decoded,
//! with `.` and `..` resolved and slashes merged, so `/x/../admin`,
//! `//admin` and `/%61dmin` find the location of `/admin`. The request
//! still goes upstream with the target as the client sent it (as nginx's
//! `proxy_pass` without a URI part sends it).

// FNV: the tables are filled from the config only; client names are looked up, never
// inserted, so a cheap hash is safe here.
use fnv::FnvHashMap as HashMap;
use regex::Regex;
use std::borrow::Cow;

pub enum PathMatch {
    Exact(String),
    Prefix { prefix: String, no_regex: bool },
    Regex(Regex),
}

impl PathMatch {
    /// Parse nginx location syntax: `/p`, `^~ /p`, `= /p`, `~ re`, `~* re`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (modifier, rest) = match s.split_once(char::is_whitespace) {
            Some((m @ ("=" | "^~" | "~" | "~*"), rest)) => (m, rest.trim()),
            _ => ("", s),
        };
        let regex = |pat: &str| Regex::new(pat).map_err(|e| format!("invalid regex: {e}"));
        Ok(match modifier {
            "=" => PathMatch::Exact(rest.to_string()),
            "~" => PathMatch::Regex(regex(rest)?),
            "~*" => PathMatch::Regex(regex(&format!("(?i){rest}"))?),
            _ => {
                if !rest.starts_with('/') {
                    return Err(format!("location {rest:?} must start with '/' (or use =, ^~, ~, ~*)"));
                }
                PathMatch::Prefix {
                    prefix: rest.to_string(),
                    no_regex: modifier == "^~",
                }
            }
        })
    }
}

/// The locations of one virtual host.
pub struct PathTable<T> {
    exact: HashMap<String, T>,
    /// Longest first.
    prefixes: Vec<(String, bool, T)>,
    regexes: Vec<(Regex, T)>,
}

impl<T: Clone> PathTable<T> {
    pub fn new(entries: Vec<(PathMatch, T)>) -> Self {
        let mut t = PathTable {
            exact: HashMap::default(),
            prefixes: Vec::new(),
            regexes: Vec::new(),
        };
        for (m, v) in entries {
            match m {
                PathMatch::Exact(p) => {
                    t.exact.insert(p, v);
                }
                PathMatch::Prefix { prefix, no_regex } => t.prefixes.push((prefix, no_regex, v)),
                PathMatch::Regex(r) => t.regexes.push((r, v)),
            }
        }
        // Stable sort keeps file order between equal lengths.
        t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        t
    }

    pub fn lookup(&self, path: &str) -> Option<&T> {
        if !self.exact.is_empty() {
            if let Some(v) = self.exact.get(path) {
                return Some(v);
            }
        }
        let prefix = self.prefixes.iter().find(|(p, _, _)| path.starts_with(p.as_str()));
        if let Some((_, true, v)) = prefix {
            return Some(v);
        }
        for (r, v) in &self.regexes {
            if r.is_match(path) {
                return Some(v);
            }
        }
        prefix.map(|(_, _, v)| v)
    }
}

/// Virtual hosts of one listener.
pub struct HostTable<H> {
    exact: HashMap<String, H>,
    /// (".example.com", host) longest first.
    wildcards: Vec<(String, H)>,
    /// `~regex` names, tried in the order they were added, after the others.
    regexes: Vec<(Regex, H)>,
    default: Option<H>,
}

impl<H: Clone> HostTable<H> {
    pub fn new() -> Self {
        HostTable {
            exact: HashMap::default(),
            wildcards: Vec::new(),
            regexes: Vec::new(),
            default: None,
        }
    }

    /// Returns false if the name is already taken.
    pub fn add_name(&mut self, name: &str, h: H) -> bool {
        let name = name.to_ascii_lowercase();
        if let Some(suffix) = name.strip_prefix('*') {
            if self.wildcards.iter().any(|(s, _)| s == suffix) {
                return false;
            }
            self.wildcards.push((suffix.to_string(), h));
            self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            true
        } else {
            match self.exact.entry(name) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(h);
                    true
                }
            }
        }
    }

    /// A `~regex` name (nginx's `server_name ~^...$`), matched against the
    /// lower-case host without its port, after exact and wildcard names.
    pub fn add_regex(&mut self, name: &str, h: H) -> Result<(), String> {
        let pattern = name.strip_prefix('~').unwrap_or(name);
        let r = Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))?;
        self.regexes.push((r, h));
        Ok(())
    }

    /// Returns false if a default is already set.
    pub fn set_default(&mut self, h: H) -> bool {
        self.default.replace(h).is_none()
    }

    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// `host` is the Host header value, possibly with a port and any case.
    pub fn lookup(&self, host: &str) -> Option<&H> {
        if self.exact.is_empty() && self.wildcards.is_empty() && self.regexes.is_empty() {
            return self.default.as_ref();
        }
        let host = strip_port(host);
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.find(&host.to_ascii_lowercase())
        } else {
            self.find(host)
        };
        found.or(self.default.as_ref())
    }

    fn find(&self, host: &str) -> Option<&H> {
        if let Some(h) = self.exact.get(host) {
            return Some(h);
        }
        let wild = self.wildcards.iter();
        if let Some((_, h)) = wild
            .clone()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            return Some(h);
        }
        self.regexes.iter().find(|(r, _)| r.is_match(host)).map(|(_, h)| h)
    }
}

impl<H: Clone> Default for HostTable<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// A request path that cannot name a location: one that does not start
/// with `/` (nor is `*`), a `%` not followed by two hex digits, an encoded
/// NUL, or a `..` above the root (nginx answers 400).
#[derive(Debug, PartialEq)]
pub struct BadPath;

/// The path as locations are matched against it (nginx's `$uri`):
/// percent-decoded, `.` and `..` segments resolved, repeated slashes
/// merged. A path with nothing to change is returned as it is, found by one
/// scan; so is `*` (`OPTIONS *`), which names no location. Anything else
/// that does not start with `/` (`GET admin`, `GET %2Fadmin`) is refused:
/// it would match no location as the server reads it, and servers read
/// such targets in ways of their own.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return if b == b"*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(BadPath)
        };
    }
    if !needs_normalizing(b) {
        return Ok(Cow::Borrowed(path));
    }
    // Decode first: an encoded `/` or `.` takes part in the segments, as in nginx.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' {
            decoded.push(c);
            i += 1;
            continue;
        }
        let hex = |d: u8| (d as char).to_digit(16);
        match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (Some(h), Some(l)) if h * 16 + l != 0 => decoded.push((h * 16 + l) as u8),
            _ => return Err(BadPath),
        }
        i += 3;
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in decoded[1..].split(|&c| c == b'/') {
        trailing = matches!(seg, b"" | b"." | b"..");
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop().ok_or(BadPath)?;
            }
            _ => out.push(seg),
        }
    }
    let mut n = Vec::with_capacity(decoded.len());
    for seg in &out {
        n.push(b'/');
        n.extend_from_slice(seg);
    }
    if trailing || out.is_empty() {
        n.push(b'/');
    }
    Ok(Cow::Owned(String::from_utf8_lossy(&n).into_owned()))
}

/// Does `path` hold a `%`, an empty segment, or a `.` or `..` segment?
/// A plain loop: paths are short, and a vectorized search costs more to
/// set up than it saves on them.
fn needs_normalizing(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            || c == b'/'
                && matches!(
                    &path[i + 1..],
                    [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
                )
    })
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
/// May `host` (a Host field, port and all) name a server? As nginx checks
/// it: not empty, no `/`, `\\`, space, control byte or DEL, no empty label
/// (`..`, a leading `.`), nothing but a port after an IPv6 literal.
/// `Host: b.example/x` or `Host: ../b` is answered 400 instead of being
/// routed to the default server and passed on.
pub fn valid_host(host: &str) -> bool {
    let b = host.as_bytes();
    // Empty, a leading dot (an empty label), or a port with no name.
    if matches!(b.first(), None | Some(b'.' | b':')) {
        return false;
    }
    let mut prev = 0;
    for &c in b {
        if c <= 0x20 || c == 0x7f || c == b'/' || c == b'\\' || (c == b'.' && prev == b'.') {
            return false;
        }
        prev = c;
    }
    // An IPv6 literal: nothing but a port after it.
    b[0] != b'['
        || b.iter()
            .position(|&c| c == b']')
            .is_some_and(|i| matches!(b.get(i + 1), None | Some(b':')))
}

/// `host` without its port and without the trailing dot of a fully
/// qualified name (`b.example.` is `b.example`).
#[inline]
pub fn strip_port(host: &str) -> &str {
    let name = port_off(host);
    name.strip_suffix('.').unwrap_or(name)
}

#[inline]
fn port_off(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_as_nginx_checks_them() {
        for ok in [
            "a",
            "b.example",
            "b.example.",
            "B.Example:8080",
            "[::1]",
            "[::1]:80",
            "x_y-z.t",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "b.example/x",
            "b.example x",
            "../b.example",
            ".b",
            "a..b",
            "a\\b",
            "a\tb",
            "[::1]x",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        assert_eq!(strip_port("b.example.:80"), "b.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    fn table(locs: &[&str]) -> PathTable<usize> {
        PathTable::new(
            locs.iter()
                .enumerate()
                .map(|(i, l)| (PathMatch::parse(l).unwrap(), i))
                .collect(),
        )
    }

    #[test]
    fn nginx_precedence() {
        let t = table(&[
            "/",
            "= /exact",
            "/api/",
            "/api/v1/",
            "~ \\.php$",
            "^~ /static/",
            "~* \\.PNG$",
        ]);
        assert_eq!(t.lookup("/exact"), Some(&1));
        assert_eq!(t.lookup("/exact/more"), Some(&0));
        assert_eq!(t.lookup("/api/v1/x"), Some(&3));
        assert_eq!(t.lookup("/api/x.php"), Some(&4), "regex beats a plain prefix");
        assert_eq!(t.lookup("/static/x.php"), Some(&5), "^~ stops regex search");
        assert_eq!(t.lookup("/img/a.png"), Some(&6), "~* is case-insensitive");
        assert_eq!(t.lookup("/other"), Some(&0));
        assert_eq!(table(&["/api"]).lookup("/x"), None);
        assert!(PathMatch::parse("~ (").is_err());
        assert!(PathMatch::parse("api").is_err());
    }

    #[test]
    fn paths_are_matched_as_nginx_normalizes_them() {
        let n = |p: &str| normalize(p).map(Cow::into_owned);
        for plain in ["/", "/a", "/a/b/", "/.well-known/x", "/a..b/c.", "/a/..b", "*"] {
            assert!(matches!(normalize(plain), Ok(Cow::Borrowed(_))), "{plain}");
        }
        assert_eq!(n("/x/../admin/secret").unwrap(), "/admin/secret");
        assert_eq!(n("/./admin/secret").unwrap(), "/admin/secret");
        assert_eq!(n("//admin//secret").unwrap(), "/admin/secret");
        assert_eq!(n("/%61dmin/secret").unwrap(), "/admin/secret");
        assert_eq!(
            n("/a%2F..%2Fadmin").unwrap(),
            "/admin",
            "encoded slashes and dots count"
        );
        assert_eq!(n("/%2e%2E/x").ok(), None, "above the root");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/b/../..").unwrap(), "/");
        assert_eq!(n("/a%20b").unwrap(), "/a b");
        assert_eq!(n("/.."), Err(BadPath));
        assert_eq!(n("*"), Ok("*".into()), "OPTIONS *");
        for not_a_path in ["", "admin", "%2Fadmin", "admin/x", ".//admin", "?/admin"] {
            assert_eq!(n(not_a_path), Err(BadPath), "{not_a_path:?}");
        }
        assert_eq!(n("/a/../.."), Err(BadPath));
        assert_eq!(n("/%zz"), Err(BadPath));
        assert_eq!(n("/a%2"), Err(BadPath));
        assert_eq!(n("/a%00b"), Err(BadPath));
    }

    #[test]
    fn hosts() {
        let mut h = HostTable::new();
        h.add_name("example.com", 1);
        h.add_name("*.example.com", 2);
        h.add_name("*.api.example.com", 3);
        assert!(!h.add_name("example.com", 9));
        assert_eq!(h.lookup("Example.COM:8080"), Some(&1));
        assert_eq!(h.lookup("www.example.com"), Some(&2));
        assert_eq!(h.lookup("v1.api.example.com"), Some(&3));
        assert_eq!(h.lookup("other.org"), None);
        h.set_default(0);
        assert_eq!(h.lookup("other.org"), Some(&0));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        // Regexes after exact and wildcard names, first match in the order added.
        h.add_regex("~^www\\d+\\.", 4).unwrap();
        h.add_regex("~^www", 5).unwrap();
        assert_eq!(h.lookup("www1.other.org"), Some(&4));
        assert_eq!(h.lookup("wwwx.other.org"), Some(&5));
        assert_eq!(h.lookup("www1.example.com"), Some(&2), "a wildcard first");
        assert!(h.add_regex("~(", 6).unwrap_err().contains("invalid regex"));
    }
}
