//! Concurrent requests per key, nginx's `limit_conn` in `http` (which
//! counts a connection while it has a request being processed, and each
//! HTTP/2 stream on its own): at most `max` requests at once per client
//! address, per value of a request header, or for everything the plugin
//! is enabled on (`key: "-"`). One more is answered `status` (503, nginx's
//! `limit_conn_status` default) and reaches no server.
//!
//! ```yaml
//! - limit_conn: { max: 10 }                                 # per client address
//! - limit_conn: { max: 100, key: "-" }                      # this location as a whole
//! - limit_conn: { max: 5, key: $http_x_api_key, status: 429 }
//! ```
//!
//! A request counts from its `request` hook until it ends: answered,
//! failed, or left by its client (its slot is held by the request's plugin
//! context, and given back when the gateway drops that context). A
//! WebSocket counts for as long as it stays open. Only keys with requests
//! in flight take memory. Instances naming the same `zone` share their
//! counts (nginx's `limit_conn_zone`), each with its own `max`.

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use crate::Key;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Requests in flight per key, at most.
    max: usize,
    /// `$remote_addr`, `$http_<name>`, or `-` (one count for all).
    #[serde(default = "crate::default_key")]
    key: String,
    /// The answer to a request over the limit.
    #[serde(default = "default_status")]
    status: u16,
    /// Counts shared with every `limit_conn` naming the same zone (nginx's
    /// `limit_conn_zone`); unset: this instance counts on its own.
    zone: Option<String>,
}

fn default_status() -> u16 {
    503
}

const SHARDS: usize = 16;

/// Requests in flight by key: only keys with some are kept.
type Counts = [Mutex<HashMap<String, usize>>; SHARDS];

struct LimitConn {
    max: usize,
    key: Key,
    status: u16,
    counts: Arc<Counts>,
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    if s.max == 0 {
        return Err("max: must be at least 1".into());
    }
    if !(400..=599).contains(&s.status) {
        return Err(format!("status: {} is not an error status (400-599)", s.status));
    }
    let key = Key::parse(&s.key, true)?;
    Ok(Box::new(LimitConn {
        max: s.max,
        key,
        status: s.status,
        counts: match &s.zone {
            Some(name) => crate::zone("limit_conn", name, "", new_counts),
            None => Arc::new(new_counts()),
        },
    }))
}

fn new_counts() -> Counts {
    std::array::from_fn(|_| Mutex::new(HashMap::new()))
}

/// One request's place under a limit, given back when dropped.
struct Slot {
    counts: Arc<Counts>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = shard(&self.counts, &self.key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The slots a request holds (one per `limit_conn` on its chain), kept in
/// its plugin context's scratch space.
#[derive(Clone, Default)]
struct Slots(Vec<Arc<Slot>>);

fn shard<'a>(counts: &'a Counts, key: &str) -> &'a Mutex<HashMap<String, usize>> {
    let h = key.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    &counts[h % SHARDS]
}

impl LimitConn {
    /// A slot for `key`, unless `max` requests of it are in flight.
    fn take(&self, key: String) -> Option<Slot> {
        let mut m = shard(&self.counts, &key).lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(m);
        Some(Slot {
            counts: self.counts.clone(),
            key,
        })
    }
}

#[async_trait]
impl Plugin for LimitConn {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    async fn request(&self, ctx: &mut Ctx, h: &mut dyn Headers) -> Flow {
        let Some(slot) = self.take(self.key.of(ctx, h)) else {
            let body = format!("{} Too many requests at once\n", self.status);
            return Flow::Respond(Reply::new(self.status, body).header("content-type", "text/plain"));
        };
        match ctx.scratch.get_mut::<Slots>() {
            Some(slots) => slots.0.push(Arc::new(slot)),
            None => {
                ctx.scratch.insert(Slots(vec![Arc::new(slot)]));
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_given_back() {
        let p = LimitConn {
            max: 2,
            key: Key::ClientIp,
            status: 503,
            counts: Arc::new(std::array::from_fn(|_| Mutex::new(HashMap::new()))),
        };
        let (a1, a2) = (p.take("a".into()), p.take("a".into()));
        assert!(a1.is_some() && a2.is_some());
        assert!(p.take("a".into()).is_none(), "a third for a");
        let b = p.take("b".into());
        assert!(b.is_some(), "b is counted apart");
        drop(a1);
        let a3 = p.take("a".into());
        assert!(a3.is_some(), "a's first slot came back");
        drop((a2, a3, b));
        let kept: usize = p.counts.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(kept, 0, "keys with nothing in flight take no memory");
    }

    #[test]
    fn bad_settings_are_refused() {
        for (yaml, want) in [
            ("{ max: 0 }", "max"),
            ("{ max: 1, status: 200 }", "status"),
            ("{ max: 1, key: $cookie_x }", "key"),
            ("{ max: 1, rate: 3 }", "rate"),
        ] {
            let e = build(&serde_yaml::from_str(yaml).unwrap()).err().unwrap();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
