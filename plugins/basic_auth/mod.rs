//! HTTP Basic authentication: 401 with `WWW-Authenticate` unless the
//! credentials match. Passwords are given as `sha256:<hex>` (or plain text,
//! for tests and local use). The `Authorization` header is not passed upstream.
//!
//! ```yaml
//! - basic_auth: { realm: admin, users: { alice: "sha256:2bb80d5...", bob: "plain-password" } }
//! ```

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_realm")]
    realm: String,
    users: BTreeMap<String, String>,
}

fn default_realm() -> String {
    "restricted".into()
}

struct BasicAuth {
    realm: String,
    /// user → sha256 of the password
    users: BTreeMap<String, [u8; 32]>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    if s.users.is_empty() {
        return Err("users: at least one user is needed".into());
    }
    let mut users = BTreeMap::new();
    for (u, p) in s.users {
        let digest = match p.strip_prefix("sha256:") {
            Some(h) => hex32(h).ok_or_else(|| format!("users.{u}: sha256 needs 64 hex digits"))?,
            None => Sha256::digest(p.as_bytes()).into(),
        };
        users.insert(u, digest);
    }
    if s.realm.contains('"') {
        return Err("realm: must not contain quotes".into());
    }
    Ok(Box::new(BasicAuth { realm: s.realm, users }))
}

impl BasicAuth {
    fn check(&self, header: Option<&str>) -> bool {
        let Some(b64) = header.and_then(|h| h.strip_prefix("Basic ")) else { return false };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
        let Ok(text) = String::from_utf8(raw) else { return false };
        let Some((user, pass)) = text.split_once(':') else { return false };
        let Some(want) = self.users.get(user) else { return false };
        let got: [u8; 32] = Sha256::digest(pass.as_bytes()).into();
        want.iter().zip(got.iter()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    }
}

#[async_trait]
impl Plugin for BasicAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    async fn request(&self, _ctx: &mut Ctx, h: &mut dyn Headers) -> Flow {
        if self.check(h.get("authorization")) {
            h.remove("authorization");
            return Flow::Continue;
        }
        Flow::Respond(
            Reply::new(401, "401 Unauthorized\n")
                .header("www-authenticate", format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm))
                .header("content-type", "text/plain"),
        )
    }
}
