//! nginx's `limit_req` and `limit_conn` (http) into the `rate_limit` and
//! `limit_conn` plugins: the zones (`limit_req_zone`, `limit_conn_zone`)
//! give the key and the rate, the directives of a level (inherited as
//! nginx inherits them: a level with any of its own inherits none) the
//! burst and the limit. Each plugin names its nginx zone (`zone:`), so the
//! locations using one zone share its counts, as in nginx.

use super::{Inherited, Translator};
use crate::config::schema::PluginEntry;
use crate::import::lex::Directive;

/// A zone: its key, and (`limit_req_zone`) its rate per second.
#[derive(Clone)]
pub(super) struct Zone {
    key: String,
    rate: Option<f64>,
}

/// The plugin key for a zone's key: the client's address, a request field,
/// or one count for all (`-`, a key the same for every request of a server).
fn plugin_key(key: &str) -> Option<&str> {
    match key {
        "$binary_remote_addr" | "$remote_addr" => Some("$remote_addr"),
        k if k.starts_with("$http_") => Some(k),
        "$server_name" | "$host" | "$server_addr" | "$server_port" => Some("-"),
        k if !k.contains('$') => Some("-"),
        _ => None,
    }
}

/// `10r/s`, `30r/m` in requests per second.
fn rate(s: &str) -> Option<f64> {
    let (n, per) = s.split_once("r/")?;
    let n: f64 = n.parse().ok().filter(|n: &f64| *n > 0.0)?;
    match per {
        "s" => Some(n),
        "m" => Some(n / 60.0),
        _ => None,
    }
}

impl Translator {
    /// `limit_req_zone KEY zone=NAME:SIZE rate=R` or `limit_conn_zone KEY zone=NAME:SIZE`.
    pub(super) fn limit_zone(&mut self, d: &Directive) {
        let arg = |p: &str| d.args.iter().find_map(|a| a.strip_prefix(p));
        let name = arg("zone=").and_then(|z| z.split(':').next());
        let (Some(key), Some(name)) = (d.args.first(), name) else {
            return self.not_translated(d, "expected a key and zone=NAME:SIZE");
        };
        let rate = match d.name == "limit_req_zone" {
            false => None,
            true => match arg("rate=").and_then(rate) {
                Some(r) => Some(r),
                None => return self.not_translated(d, "expected rate=Nr/s or rate=Nr/m"),
            },
        };
        let zone = Zone { key: key.clone(), rate };
        self.http_zones.insert(name.to_string(), zone);
    }

    /// The plugins a location's inherited `limit_req` and `limit_conn` lines make.
    pub(super) fn limits(&mut self, i: &Inherited) -> Vec<PluginEntry> {
        let mut out = Vec::new();
        for d in i.limit_req.iter().flatten() {
            out.extend(self.limit_req(d, i.limit_req_status));
        }
        for d in i.limit_conn.iter().flatten() {
            out.extend(self.limit_conn(d, i.limit_conn_status));
        }
        out
    }

    /// The zone `d` names, and the plugin key of its key.
    fn zone_of(&mut self, d: &Directive, name: &str) -> Option<(Zone, String)> {
        let Some(zone) = self.http_zones.get(name).cloned() else {
            self.not_translated(
                d,
                format!("no zone {name} (defined in the http block Portico did not read?)"),
            );
            return None;
        };
        match plugin_key(&zone.key) {
            Some(k) => Some((zone.clone(), k.to_string())),
            None => {
                let why = format!(
                    "a zone keyed by {}: only by client address, request field or server",
                    zone.key
                );
                self.not_translated(d, why);
                None
            }
        }
    }

    /// `limit_req zone=NAME [burst=N] [nodelay | delay=N]` as `rate_limit`,
    /// answering `status` (nginx's `limit_req_status`, default 503).
    fn limit_req(&mut self, d: &Directive, status: Option<u16>) -> Option<PluginEntry> {
        let arg = |p: &str| d.args.iter().find_map(|a| a.strip_prefix(p));
        let Some(name) = arg("zone=") else {
            self.not_translated(d, "expected zone=NAME");
            return None;
        };
        let (zone, key) = self.zone_of(d, name)?;
        if key == "-" {
            self.not_translated(
                d,
                "the rate_limit plugin counts per client or request field, not per server",
            );
            return None;
        }
        let burst: u64 = arg("burst=").and_then(|b| b.parse().ok()).unwrap_or(0);
        let nodelay = d.args.iter().any(|a| a == "nodelay");
        // Without nodelay, requests over the rate wait (all, or those past `delay=N`).
        let delay: Option<u64> = match nodelay {
            true => None,
            false => Some(arg("delay=").and_then(|n| n.parse().ok()).unwrap_or(0)),
        };
        // nginx lets `burst` requests over the rate through; a bucket of `burst + 1` does.
        let mut settings = serde_yaml::Mapping::new();
        settings.insert("rate".into(), zone.rate.unwrap_or(1.0).into());
        settings.insert("burst".into(), (burst + 1).into());
        if key != "$remote_addr" {
            settings.insert("key".into(), key.into());
        }
        if let Some(n) = delay.filter(|&n| n < burst) {
            settings.insert("delay".into(), n.into());
        }
        settings.insert("status".into(), u64::from(status.unwrap_or(503)).into());
        settings.insert("zone".into(), name.into());
        Some([("rate_limit".to_string(), serde_yaml::Value::Mapping(settings))].into())
    }

    /// `limit_conn NAME N` as `limit_conn`.
    fn limit_conn(&mut self, d: &Directive, status: Option<u16>) -> Option<PluginEntry> {
        let (Some(name), Some(max)) = (d.args.first(), d.args.get(1).and_then(|n| n.parse::<u64>().ok())) else {
            self.not_translated(d, "expected a zone and a number");
            return None;
        };
        let (zone, key) = self.zone_of(d, name)?;
        if zone.rate.is_some() {
            self.not_translated(d, format!("{name} is a limit_req_zone"));
            return None;
        }
        let mut settings = serde_yaml::Mapping::new();
        settings.insert("max".into(), max.into());
        if key != "$remote_addr" {
            settings.insert("key".into(), key.into());
        }
        if let Some(s) = status.filter(|&s| s != 503) {
            settings.insert("status".into(), u64::from(s).into());
        }
        settings.insert("zone".into(), name.as_str().into());
        Some([("limit_conn".to_string(), serde_yaml::Value::Mapping(settings))].into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_and_keys() {
        assert_eq!(super::rate("10r/s"), Some(10.0));
        assert_eq!(super::rate("30r/m"), Some(0.5));
        assert_eq!(super::rate("0r/s"), None);
        assert_eq!(super::rate("10r/h"), None);
        assert_eq!(super::plugin_key("$binary_remote_addr"), Some("$remote_addr"));
        assert_eq!(super::plugin_key("$http_x_api_key"), Some("$http_x_api_key"));
        assert_eq!(super::plugin_key("$server_name"), Some("-"));
        assert_eq!(super::plugin_key("$cookie_x"), None);
    }
}
