//! Set, add and remove request and response headers, with variables
//! `$remote_addr`, `$host`, `$scheme`, `$uri`, `$request_id` (from the
//! `request_id` plugin when it runs earlier).
//!
//! ```yaml
//! - headers:
//!     request_set: { X-Client: "$remote_addr" }
//!     request_remove: [X-Debug]
//!     response_add: { Cache-Control: "no-store" }
//!     response_remove: [Server]
//! ```

use crate::api::{self, Ctx, Headers, Hooks, Plugin};
use async_trait::async_trait;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    request_set: BTreeMap<String, String>,
    request_add: BTreeMap<String, String>,
    request_remove: Vec<String>,
    response_set: BTreeMap<String, String>,
    response_add: BTreeMap<String, String>,
    response_remove: Vec<String>,
}

struct HeaderRules(Settings);

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    let maps = [
        ("request_set", &s.request_set),
        ("request_add", &s.request_add),
        ("response_set", &s.response_set),
        ("response_add", &s.response_add),
    ];
    for (field, m) in maps {
        for (k, v) in m {
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}: invalid header name {k:?}"))?;
            http::HeaderValue::from_str(v).map_err(|_| format!("{field}.{k}: invalid header value"))?;
        }
    }
    for (field, l) in [("request_remove", &s.request_remove), ("response_remove", &s.response_remove)] {
        for k in l {
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}: invalid header name {k:?}"))?;
        }
    }
    Ok(Box::new(HeaderRules(s)))
}

/// `v` with its variables filled in; borrowed as it is when it has none.
fn expand<'v>(v: &'v str, ctx: &Ctx) -> Cow<'v, str> {
    if !v.contains('$') {
        return Cow::Borrowed(v);
    }
    let request_id = ctx.log_fields.iter().find(|(k, _)| k == "request_id").map(|(_, v)| v.as_str());
    Cow::Owned(
        v.replace("$remote_addr", &crate::ip_text(ctx))
            .replace("$host", &ctx.host)
            .replace("$scheme", ctx.scheme)
            .replace("$uri", &ctx.path)
            .replace("$request_id", request_id.unwrap_or("-")),
    )
}

fn apply(
    ctx: &Ctx,
    h: &mut dyn Headers,
    set: &BTreeMap<String, String>,
    add: &BTreeMap<String, String>,
    remove: &[String],
) {
    for k in remove {
        h.remove(k);
    }
    for (k, v) in set {
        let _ = h.set(k, &expand(v, ctx));
    }
    for (k, v) in add {
        let _ = h.append(k, &expand(v, ctx));
    }
}

#[async_trait]
impl Plugin for HeaderRules {
    /// Only the sides it has rules for.
    fn hooks(&self) -> Hooks {
        let s = &self.0;
        let mut hooks = Hooks::NONE;
        if !(s.request_set.is_empty() && s.request_add.is_empty() && s.request_remove.is_empty()) {
            hooks = hooks.and(Hooks::UPSTREAM_REQUEST);
        }
        if !(s.response_set.is_empty() && s.response_add.is_empty() && s.response_remove.is_empty()) {
            hooks = hooks.and(Hooks::RESPONSE);
        }
        hooks
    }

    async fn upstream_request(&self, ctx: &mut Ctx, h: &mut dyn Headers) {
        let s = &self.0;
        apply(ctx, h, &s.request_set, &s.request_add, &s.request_remove);
    }

    fn response(&self, ctx: &mut Ctx, _status: u16, h: &mut dyn Headers) {
        let s = &self.0;
        apply(ctx, h, &s.response_set, &s.response_add, &s.response_remove);
    }

}
