//! Cookie sticky sessions. In `insert` mode the gateway issues a cookie
//! `<server-id>.<expiry>.<signature>`: the id is an HMAC of the server address
//! (so the address is never revealed), the signature an HMAC over id and
//! expiry with the configured secret. Any number of gateways sharing the
//! secret agree on it without shared state; anything forged, tampered with,
//! expired or naming an unknown server is simply ignored. In `hash` mode an
//! existing application cookie (e.g. `JSESSIONID`) is hashed instead.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Insert,
    Hash,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub mode: Mode,
    pub cookie: String,
    /// HMAC keyed with the secret once; cloned per use (saves the key setup).
    keyed: HmacSha256,
    pub path: String,
    pub domain: Option<String>,
    pub max_age: Option<Duration>,
    pub http_only: bool,
    pub same_site: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

impl Sticky {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: Mode,
        cookie: String,
        secret: Vec<u8>,
        path: Option<String>,
        domain: Option<String>,
        max_age: Option<Duration>,
        http_only: bool,
        same_site: Option<String>,
    ) -> Self {
        Sticky {
            mode,
            cookie,
            keyed: HmacSha256::new_from_slice(&secret).expect("HMAC takes any key length"),
            path: path.unwrap_or_else(|| "/".into()),
            domain,
            max_age,
            http_only,
            same_site,
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.keyed.clone();
        for p in parts {
            m.update(p);
            m.update(b"\0");
        }
        m.finalize().into_bytes().into()
    }

    /// Stable opaque id of a server address.
    pub fn server_id(&self, addr: &str) -> String {
        hex(&self.mac(&[b"server", addr.as_bytes()])[..8])
    }

    /// The cookie value pinning a client to server `id`.
    pub fn encode(&self, id: &str) -> String {
        let exp = match self.max_age {
            Some(d) => now_secs() + d.as_secs(),
            None => 0,
        };
        let exp = exp.to_string();
        let sig = hex(&self.mac(&[id.as_bytes(), exp.as_bytes()])[..16]);
        format!("{id}.{exp}.{sig}")
    }

    /// The server id in a valid, unexpired cookie value; `None` otherwise.
    pub fn decode<'a>(&self, value: &'a str) -> Option<&'a str> {
        let mut it = value.split('.');
        let (id, exp, sig) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        if sig.len() != 32 {
            return None;
        }
        let want = self.mac(&[id.as_bytes(), exp.as_bytes()]);
        // Constant-time comparison of the signature (hex, as encoded).
        const H: &[u8; 16] = b"0123456789abcdef";
        let diff = want[..16]
            .iter()
            .zip(sig.as_bytes().chunks_exact(2))
            .fold(0u8, |acc, (w, s)| {
                acc | (H[(w >> 4) as usize] ^ s[0]) | (H[(w & 15) as usize] ^ s[1])
            });
        if diff != 0 {
            return None;
        }
        let exp: u64 = exp.parse().ok()?;
        if exp != 0 && exp < now_secs() {
            return None;
        }
        Some(id)
    }

    /// The `Set-Cookie` value that pins a client to the server with sticky id `id`.
    pub fn header_for(&self, id: &str, https: bool) -> Option<http::HeaderValue> {
        let value = self.set_cookie(&self.encode(id), https);
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
    }

    /// The `Set-Cookie` header value.
    pub fn set_cookie(&self, value: &str, https: bool) -> String {
        let mut c = format!("{}={}; Path={}", self.cookie, value, self.path);
        if let Some(d) = &self.domain {
            c.push_str("; Domain=");
            c.push_str(d);
        }
        if let Some(a) = self.max_age {
            c.push_str(&format!("; Max-Age={}", a.as_secs()));
        }
        if self.http_only {
            c.push_str("; HttpOnly");
        }
        if https {
            c.push_str("; Secure");
        }
        if let Some(s) = &self.same_site {
            c.push_str("; SameSite=");
            c.push_str(s);
        }
        c
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secret: &str) -> Sticky {
        Sticky::new(
            Mode::Insert,
            "srv".into(),
            secret.as_bytes().to_vec(),
            None,
            None,
            Some(Duration::from_secs(60)),
            true,
            Some("Lax".into()),
        )
    }

    #[test]
    fn roundtrip_and_tamper() {
        let a = s("k1");
        let id = a.server_id("127.0.0.1:1");
        let v = a.encode(&id);
        assert_eq!(a.decode(&v), Some(id.as_str()));
        assert_eq!(s("k1").decode(&v), Some(id.as_str()), "same secret agrees");
        assert_eq!(s("k2").decode(&v), None, "other secret rejects");
        let mut t = v.clone();
        t.replace_range(0..1, if v.starts_with('0') { "1" } else { "0" });
        assert_eq!(a.decode(&t), None);
        assert_eq!(a.decode("garbage"), None);
        assert!(!v.contains("127.0.0.1"));
        assert_eq!(cookie_value("a=1; srv=xyz; b=2", "srv"), Some("xyz"));
    }
}
