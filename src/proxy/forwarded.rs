//! nginx-compatible forwarding headers. From a trusted proxy (the
//! `trusted_proxies` CIDRs) incoming X-Forwarded-*/X-Real-IP are kept and the
//! client address appended; from anyone else they are replaced, so a client
//! cannot spoof its address.
//!
//! [`Forwarded::of`] works the values out once; [`Forwarded::fields`] gives
//! them to the upstream request step, which sets them on the upstream copy of
//! the header (Pingora's loop) or writes them straight into the upstream
//! request head (the lean loop).

use std::net::IpAddr;

/// The forwarding headers one request gets, borrowed from the request where
/// they come from it.
pub struct Forwarded<'a> {
    /// The client address as text.
    ip: String,
    /// Trusted incoming X-Forwarded-For plus the client; `None`: the client alone.
    xff: Option<String>,
    /// Trusted incoming X-Real-IP; `None`: the client.
    real_ip: Option<&'a str>,
    proto: &'a str,
    /// `None` removes X-Forwarded-Host.
    host: Option<&'a str>,
}

impl<'a> Forwarded<'a> {
    /// `field` gives the client's field of a name (its first, if it is text).
    pub fn of(
        field: impl Fn(&str) -> Option<&'a str>,
        client_ip: Option<IpAddr>,
        trusted: bool,
        scheme: &'static str,
        host: Option<&'a str>,
    ) -> Self {
        let ip = client_ip.map(ip_text).unwrap_or_default();
        let incoming = |name: &str| -> Option<&'a str> {
            if !trusted {
                return None;
            }
            let v = field(name)?.trim();
            (!v.is_empty()).then_some(v)
        };
        Forwarded {
            xff: incoming("x-forwarded-for").map(|prev| format!("{prev}, {ip}")),
            ip,
            real_ip: incoming("x-real-ip"),
            proto: incoming("x-forwarded-proto").unwrap_or(scheme),
            host: incoming("x-forwarded-host").or(host),
        }
    }

    /// `(lower-case name, value)` in the order they are set ([`NAMES`]); a
    /// `None` value means the header is removed.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 4] {
        let [xff, real_ip, proto, host] = NAMES;
        [
            (xff, Some(self.xff.as_deref().unwrap_or(&self.ip))),
            (real_ip, Some(self.real_ip.unwrap_or(&self.ip))),
            (proto, Some(self.proto)),
            (host, self.host),
        ]
    }
}

/// The forwarding fields, in the order they are set.
pub const NAMES: [&str; 4] = ["x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host"];

/// An address as text; IPv4 without `core::fmt`, which costs more than the
/// rest of the forwarding headers together.
fn ip_text(ip: IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_ip(&mut s, ip);
    s
}

/// Append an address as text (see [`ip_text`]).
pub fn push_ip(s: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        use std::fmt::Write;
        let _ = write!(s, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.99.109",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
