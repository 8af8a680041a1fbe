//! nginx-compatible forwarding headers. From a trusted proxy (the
//! `trusted_proxies` CIDRs) incoming X-Forwarded-*/X-Real-IP are kept and the
//! client address appended; from anyone else they are replaced, so a client
//! cannot spoof its address.
//!
//! [`Forwarded::of`] works the values out once; they are then either set on a
//! `RequestHeader` ([`Forwarded::apply`], Pingora's loop) or written straight
//! into the upstream request ([`Forwarded::fields`], the lean loop).

use pingora_core::Result;
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The forwarding headers one request gets, in the order they are set.
pub struct Forwarded {
    xff: String,
    real_ip: String,
    proto: String,
    /// `None` removes X-Forwarded-Host.
    host: Option<String>,
}

impl Forwarded {
    pub fn of(
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
        trusted: bool,
        scheme: &'static str,
        host: Option<&str>,
    ) -> Self {
        let ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let incoming = |name: &str| -> Option<String> {
            if !trusted {
                return None;
            }
            let v = req.headers.get(name)?.to_str().ok()?.trim();
            (!v.is_empty()).then(|| v.to_string())
        };
        Forwarded {
            xff: match incoming("x-forwarded-for") {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.clone(),
            },
            real_ip: incoming("x-real-ip").unwrap_or(ip),
            proto: incoming("x-forwarded-proto").unwrap_or_else(|| scheme.to_string()),
            host: incoming("x-forwarded-host").or_else(|| host.map(str::to_string)),
        }
    }

    /// `(lower-case name, value)`; a `None` value means the header is removed.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("x-forwarded-for", Some(&self.xff)),
            ("x-real-ip", Some(&self.real_ip)),
            ("x-forwarded-proto", Some(&self.proto)),
            ("x-forwarded-host", self.host.as_deref()),
        ]
    }

    pub fn apply(self, req: &mut RequestHeader) -> Result<()> {
        req.insert_header("x-forwarded-for", self.xff)?;
        req.insert_header("x-real-ip", self.real_ip)?;
        req.insert_header("x-forwarded-proto", self.proto)?;
        match self.host {
            Some(h) => req.insert_header("x-forwarded-host", h)?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
        Ok(())
    }
}
