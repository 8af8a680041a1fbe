//! `X-Request-Id`: keep a well-formed incoming id (or always make a new one
//! with `trust_incoming: false`), pass it upstream, return it to the client
//! and write it to the access log as `request_id=...`. Like nginx's
//! `proxy_set_header X-Request-Id $request_id`, it edits the upstream copy
//! of the request, not the client's; later plugins find the id among the
//! log fields (`$request_id` in the `headers` plugin).

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin};
use async_trait::async_trait;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "yes")]
    trust_incoming: bool,
}

fn default_header() -> String {
    "x-request-id".into()
}
fn yes() -> bool {
    true
}

struct RequestId(Settings);

/// The log field that holds the request's id.
const FIELD: &str = "request_id";

fn id_of(ctx: &Ctx) -> Option<&str> {
    ctx.log_fields.iter().find(|(k, _)| k == FIELD).map(|(_, v)| v.as_str())
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    http::HeaderName::from_bytes(s.header.as_bytes()).map_err(|_| format!("header: invalid name {:?}", s.header))?;
    Ok(Box::new(RequestId(s)))
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// 128 random bits as 32 lower-case hex digits (as nginx's `$request_id`).
fn new_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // One draw (an array would draw each byte on its own).
    let bytes = rand::random::<u128>().to_be_bytes();
    let mut id = [0; 32];
    for (pair, b) in id.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    std::str::from_utf8(&id).expect("hex digits are ASCII").to_owned()
}

#[async_trait]
impl Plugin for RequestId {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST.and(Hooks::UPSTREAM_REQUEST).and(Hooks::RESPONSE)
    }

    async fn request(&self, ctx: &mut Ctx, h: &mut dyn Headers) -> Flow {
        let id = match h.get(&self.0.header) {
            Some(v) if self.0.trust_incoming && acceptable(v) => v.to_string(),
            _ => new_id(),
        };
        ctx.log_fields.push((FIELD.into(), id));
        Flow::Continue
    }

    async fn upstream_request(&self, ctx: &mut Ctx, h: &mut dyn Headers) {
        if let Some(id) = id_of(ctx) {
            let _ = h.set(&self.0.header, id);
        }
    }

    fn response(&self, ctx: &mut Ctx, _status: u16, h: &mut dyn Headers) {
        if let Some(id) = id_of(ctx) {
            let _ = h.set(&self.0.header, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert!(acceptable(&a));
        assert_ne!(a, b);
    }
}
