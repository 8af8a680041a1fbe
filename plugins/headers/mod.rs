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
//!     response_always: true   # false: response rules only for 200, 201, 204,
//!                             # 206, 301, 302, 303, 304, 307, 308 (nginx's
//!                             # `add_header` without `always`)
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
    response_always: Option<bool>,
}

/// The statuses nginx's `add_header` applies to without `always`.
const SUCCESS: [u16; 10] = [200, 201, 204, 206, 301, 302, 303, 304, 307, 308];

/// One direction's rules, in the order they apply: removals, sets, additions.
#[derive(Default)]
struct Rules {
    remove: Vec<String>,
    set: Vec<(String, Value)>,
    add: Vec<(String, Value)>,
}

/// A configured value, and whether it names variables to fill in per request.
struct Value {
    text: String,
    variables: bool,
}

struct HeaderRules {
    request: Rules,
    response: Rules,
    /// Response rules for every status, or only for [`SUCCESS`].
    response_always: bool,
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    let values = |field: &str, m: BTreeMap<String, String>| -> Result<Vec<(String, Value)>, String> {
        m.into_iter()
            .map(|(k, v)| {
                http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}: invalid header name {k:?}"))?;
                http::HeaderValue::from_str(&v).map_err(|_| format!("{field}.{k}: invalid header value"))?;
                let variables = v.contains('$');
                Ok((k, Value { text: v, variables }))
            })
            .collect()
    };
    let names = |field: &str, l: Vec<String>| -> Result<Vec<String>, String> {
        for k in &l {
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{field}: invalid header name {k:?}"))?;
        }
        Ok(l)
    };
    Ok(Box::new(HeaderRules {
        request: Rules {
            set: values("request_set", s.request_set)?,
            add: values("request_add", s.request_add)?,
            remove: names("request_remove", s.request_remove)?,
        },
        response: Rules {
            set: values("response_set", s.response_set)?,
            add: values("response_add", s.response_add)?,
            remove: names("response_remove", s.response_remove)?,
        },
        response_always: s.response_always.unwrap_or(true),
    }))
}

impl Value {
    /// The value for this request: the text as configured, or with its variables filled in.
    fn of(&self, ctx: &Ctx) -> Cow<'_, str> {
        if !self.variables {
            return Cow::Borrowed(&self.text);
        }
        let request_id = ctx.log_fields.iter().find(|(k, _)| k == "request_id").map(|(_, v)| v.as_str());
        Cow::Owned(
            (self.text)
                .replace("$remote_addr", &crate::ip_text(ctx))
                .replace("$host", &ctx.host)
                .replace("$scheme", ctx.scheme)
                .replace("$uri", &ctx.path)
                .replace("$request_id", request_id.unwrap_or("-")),
        )
    }
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, ctx: &Ctx, h: &mut dyn Headers) {
        for k in &self.remove {
            h.remove(k);
        }
        for (k, v) in &self.set {
            let _ = h.set(k, &v.of(ctx));
        }
        for (k, v) in &self.add {
            let _ = h.append(k, &v.of(ctx));
        }
    }
}

#[async_trait]
impl Plugin for HeaderRules {
    /// Only the sides it has rules for.
    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::NONE;
        if !self.request.is_empty() {
            hooks = hooks.and(Hooks::UPSTREAM_REQUEST);
        }
        if !self.response.is_empty() {
            hooks = hooks.and(Hooks::RESPONSE);
        }
        hooks
    }

    async fn upstream_request(&self, ctx: &mut Ctx, h: &mut dyn Headers) {
        self.request.apply(ctx, h);
    }

    fn response(&self, ctx: &mut Ctx, status: u16, h: &mut dyn Headers) {
        if self.response_always || SUCCESS.contains(&status) {
            self.response.apply(ctx, h);
        }
    }
}
