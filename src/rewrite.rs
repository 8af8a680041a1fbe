//! A location's `rewrite`: the path a request goes upstream with, made from
//! the path it came with by a regular expression and a replacement, as
//! nginx's `rewrite REGEX REPLACEMENT break;` does (and the URI part of a
//! `proxy_pass`, which the importer writes as one).
//!
//! - The expression is matched against the request's path as routing saw
//!   it: percent-decoded and normalized (`..`, `//` resolved), as nginx's
//!   `$uri`. A path it does not match goes upstream as it came.
//! - `$1`..`$9` in the replacement are the expression's groups. What a
//!   group took is percent-encoded again where a path needs it; the rest
//!   of the replacement goes as written.
//! - The query goes on: after the replacement's own when it has one
//!   (`/search?v=2` + `q=x` = `/search?v=2&q=x`), as in nginx.
//! - Both loops apply it on every attempt, from the target as the client
//!   sent it: Pingora's in `upstream_request_filter`, the lean one as it
//!   writes the request line (`proxy::lean::upstream::request_head_from`).
//!   The access log keeps the request as it came.

use regex::Regex;

/// One compiled `rewrite`.
#[derive(Debug)]
pub struct Rewrite {
    from: Regex,
    to: Vec<Part>,
}

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Group(usize),
}

impl Rewrite {
    /// `from` and `to` as the config writes them; `Err` says what is wrong.
    pub fn new(from: &str, to: &str) -> Result<Rewrite, String> {
        let re = Regex::new(from).map_err(|e| format!("from: invalid regex: {e}"))?;
        if !to.starts_with('/') {
            return Err(format!("to: {to:?} must be a path (start with /)"));
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = to.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('$', Some(n)) => {
                    chars.next();
                    if n as usize >= re.captures_len() {
                        return Err(format!("to: ${n}, but from has {} group(s)", re.captures_len() - 1));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Group(n as usize));
                }
                _ if c.is_ascii_control() || c == ' ' || c == '#' => {
                    return Err(format!("to: {c:?} cannot go in a request target"));
                }
                _ => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Rewrite { from: re, to: parts })
    }

    /// The target `target` (as the client sent it, query and all) goes
    /// upstream with, if the expression matches its path.
    pub fn apply(&self, target: &[u8]) -> Option<Vec<u8>> {
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], Some(&target[q + 1..])),
            None => (target, None),
        };
        let path = crate::routing::normalize(std::str::from_utf8(path).ok()?).ok()?;
        let caps = self.from.captures(&path)?;
        let mut out = Vec::with_capacity(target.len() + 16);
        for part in &self.to {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Group(n) => encode(caps.get(*n).map_or("", |m| m.as_str()), &mut out),
            }
        }
        if let Some(q) = query {
            out.push(if out.contains(&b'?') { b'&' } else { b'?' });
            out.extend_from_slice(q);
        }
        Some(out)
    }
}

/// `s` as a path's characters: RFC 3986's unreserved and sub-delimiters,
/// `:`, `@` and `/` as they are, every other byte percent-encoded.
fn encode(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if plain {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rewrite;

    fn apply(from: &str, to: &str, target: &str) -> Option<String> {
        let r = Rewrite::new(from, to).unwrap();
        r.apply(target.as_bytes()).map(|t| String::from_utf8(t).unwrap())
    }

    #[test]
    fn groups_fill_the_replacement_and_the_query_goes_on() {
        assert_eq!(
            apply("^/api/(.*)$", "/$1", "/api/users/7?x=1").as_deref(),
            Some("/users/7?x=1")
        );
        assert_eq!(apply("^/api/(.*)$", "/v2/$1", "/api/").as_deref(), Some("/v2/"));
        assert_eq!(
            apply("^/old/(\\w+)/(\\d+)$", "/new/$2/$1", "/old/a/9").as_deref(),
            Some("/new/9/a")
        );
        // The replacement's own query first.
        assert_eq!(
            apply("^/s$", "/search?v=2", "/s?q=x").as_deref(),
            Some("/search?v=2&q=x")
        );
        // Not matched: unchanged.
        assert_eq!(apply("^/api/(.*)$", "/$1", "/other"), None);
    }

    #[test]
    fn the_path_is_matched_as_routing_saw_it_and_encoded_again() {
        // Decoded and normalized before matching: no way around the expression.
        assert_eq!(
            apply("^/api/(.*)$", "/in/$1", "/x/../api/%61b").as_deref(),
            Some("/in/ab")
        );
        // What a group took is encoded where a path needs it.
        assert_eq!(apply("^/f/(.*)$", "/$1", "/f/a%20b%3Fc").as_deref(), Some("/a%20b%3Fc"));
        assert_eq!(apply("^/f/(.*)$", "/$1", "/f/%C3%A9").as_deref(), Some("/%C3%A9"));
    }

    #[test]
    fn bad_rewrites_are_refused() {
        for (from, to, want) in [
            ("(", "/", "invalid regex"),
            ("^/(a)$", "/$2", "1 group"),
            ("^/$", "relative", "must be a path"),
            ("^/$", "/a b", "cannot go"),
        ] {
            let e = Rewrite::new(from, to).unwrap_err();
            assert!(e.contains(want), "{from} {to}: {e}");
        }
    }
}
