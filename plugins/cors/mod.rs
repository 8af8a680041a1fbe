//! CORS: answers preflight `OPTIONS` requests itself and adds the CORS
//! headers to responses for allowed origins.
//!
//! ```yaml
//! - cors: { origins: ["https://app.example"], methods: [GET, POST], headers: [Content-Type], max_age: 600, credentials: false }
//! ```
//! `origins: ["*"]` allows any origin (never together with `credentials`).

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use async_trait::async_trait;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    max_age: u64,
    #[serde(default)]
    credentials: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_max_age() -> u64 {
    600
}

struct Cors {
    s: Settings,
    any: bool,
    methods: String,
    headers: String,
}

/// The allowed origin of this request, if any.
#[derive(Clone)]
struct Allowed(String);

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    if s.origins.is_empty() {
        return Err("origins: list at least one origin (or \"*\")".into());
    }
    let any = s.origins.iter().any(|o| o == "*");
    if any && s.credentials {
        return Err("credentials: cannot be used with origins [\"*\"]".into());
    }
    for m in &s.methods {
        http::Method::from_bytes(m.as_bytes()).map_err(|_| format!("methods: invalid method {m:?}"))?;
    }
    Ok(Box::new(Cors {
        methods: s.methods.join(", "),
        headers: s.headers.join(", "),
        any,
        s,
    }))
}

impl Cors {
    fn allowed(&self, origin: &str) -> bool {
        self.any || self.s.origins.iter().any(|o| o == origin)
    }

    fn stamp(&self, h: &mut dyn Headers, origin: &str) {
        let value = if self.any { "*" } else { origin };
        let _ = h.set("access-control-allow-origin", value);
        if !self.any {
            let _ = h.append("vary", "Origin");
        }
        if self.s.credentials {
            let _ = h.set("access-control-allow-credentials", "true");
        }
    }
}

#[async_trait]
impl Plugin for Cors {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST.and(Hooks::RESPONSE)
    }

    async fn request(&self, ctx: &mut Ctx, h: &mut dyn Headers) -> Flow {
        let Some(origin) = h.get("origin").map(str::to_string) else { return Flow::Continue };
        if !self.allowed(&origin) {
            return Flow::Continue; // no CORS headers: the browser blocks it
        }
        if ctx.method == http::Method::OPTIONS && h.get("access-control-request-method").is_some() {
            let mut r = Reply::new(204, "")
                .header("access-control-allow-methods", self.methods.clone())
                .header("access-control-max-age", self.s.max_age.to_string());
            let req_headers = h.get("access-control-request-headers").map(str::to_string);
            if !self.headers.is_empty() {
                r = r.header("access-control-allow-headers", self.headers.clone());
            } else if let Some(rh) = req_headers {
                r = r.header("access-control-allow-headers", rh);
            }
            ctx.scratch.insert(Allowed(origin));
            return Flow::Respond(r);
        }
        ctx.scratch.insert(Allowed(origin));
        Flow::Continue
    }

    fn response(&self, ctx: &mut Ctx, _status: u16, h: &mut dyn Headers) {
        if let Some(Allowed(origin)) = ctx.scratch.get::<Allowed>().cloned() {
            self.stamp(h, &origin);
            if !self.s.expose_headers.is_empty() {
                let _ = h.set("access-control-expose-headers", &self.s.expose_headers.join(", "));
            }
        }
    }
}
