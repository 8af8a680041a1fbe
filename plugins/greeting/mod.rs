//! The example plugin walked through in docs/plugins.md: answers `GET <path>`
//! itself with a greeting, and stamps every other response with a header.
//!
//! ```yaml
//! plugins:
//!   - greeting: { path: /hello, message: "hello from portico" }
//! ```

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use async_trait::async_trait;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path: String,
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "hello".into()
}

struct Greeting(Settings);

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    if !s.path.starts_with('/') {
        return Err("path: must start with '/'".into());
    }
    Ok(Box::new(Greeting(s)))
}

#[async_trait]
impl Plugin for Greeting {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST.and(Hooks::RESPONSE)
    }

    async fn request(&self, ctx: &mut Ctx, _h: &mut dyn Headers) -> Flow {
        if ctx.method == http::Method::GET && ctx.path == self.0.path {
            return Flow::Respond(Reply::new(200, format!("{}\n", self.0.message)).header("content-type", "text/plain"));
        }
        Flow::Continue
    }

    fn response(&self, _ctx: &mut Ctx, _status: u16, h: &mut dyn Headers) {
        let _ = h.set("x-greeting", &self.0.message);
    }
}
