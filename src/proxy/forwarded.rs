//! nginx-compatible forwarding headers. From a trusted proxy (the
//! `trusted_proxies` CIDRs) incoming X-Forwarded-*/X-Real-IP are kept and the
//! client address appended; from anyone else they are replaced, so a client
//! cannot spoof its address.

use pingora_core::Result;
use pingora_http::RequestHeader;
use std::net::IpAddr;

pub fn apply(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    trusted: bool,
    scheme: &'static str,
    host: Option<&str>,
) -> Result<()> {
    let ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let incoming = |req: &RequestHeader, name: &str| -> Option<String> {
        if !trusted {
            return None;
        }
        let v = req.headers.get(name)?.to_str().ok()?.trim();
        (!v.is_empty()).then(|| v.to_string())
    };
    let xff = match incoming(req, "x-forwarded-for") {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    let real_ip = incoming(req, "x-real-ip").unwrap_or(ip);
    let proto = incoming(req, "x-forwarded-proto").unwrap_or_else(|| scheme.to_string());
    let fwd_host = incoming(req, "x-forwarded-host").or_else(|| host.map(str::to_string));
    req.insert_header("x-forwarded-for", xff)?;
    req.insert_header("x-real-ip", real_ip)?;
    req.insert_header("x-forwarded-proto", proto)?;
    match fwd_host {
        Some(h) => req.insert_header("x-forwarded-host", h)?,
        None => {
            req.remove_header("x-forwarded-host");
        }
    }
    Ok(())
}
