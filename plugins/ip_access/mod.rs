//! Allow / deny by client address (IPv4 and IPv6 CIDRs) → 403.
//! A client in `deny` is refused; when `allow` is not empty, only clients in it pass.
//!
//! ```yaml
//! - ip_access: { allow: [10.0.0.0/8, "::1/128"], deny: [10.0.0.66/32] }
//! ```

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use async_trait::async_trait;
use ipnet::IpNet;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

struct IpAccess {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn nets(field: &str, v: &[String]) -> Result<Vec<IpNet>, String> {
    v.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{field}: invalid CIDR {s:?}"))
        })
        .collect()
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    Ok(Box::new(IpAccess {
        allow: nets("allow", &s.allow)?,
        deny: nets("deny", &s.deny)?,
    }))
}

#[async_trait]
impl Plugin for IpAccess {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    async fn request(&self, ctx: &mut Ctx, _h: &mut dyn Headers) -> Flow {
        let Some(ip) = ctx.client_ip else {
            return Flow::Respond(Reply::new(403, "403 Forbidden\n"));
        };
        let denied = self.deny.iter().any(|n| n.contains(&ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip));
        if denied || !allowed {
            return Flow::Respond(Reply::new(403, "403 Forbidden\n").header("content-type", "text/plain"));
        }
        Flow::Continue
    }
}
