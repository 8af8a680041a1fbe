//! Token-bucket rate limiting per key (client IP by default, or a request
//! header): `rate` tokens per second, up to `burst`; an empty bucket answers
//! `status` (429) with `Retry-After`. Memory is bounded: at most `max_keys`
//! buckets are kept (full, i.e. idle, buckets are dropped first when the
//! table fills).
//!
//! With `delay: N`, requests over the rate are held back instead of
//! passing at once, as nginx's `limit_req` does without `nodelay`: once
//! more than `N` requests beyond the rate are in the bucket, each waits
//! until the rate lets it through (`delay: 0`: every one over the rate
//! waits; nginx's `delay=N`). Without `delay`, they all pass at once while
//! the bucket has tokens (nginx's `nodelay`).
//!
//! Instances naming the same `zone` (with the same `rate`) share their
//! buckets, as the locations using one nginx `limit_req_zone` do: a client
//! has one budget across them, each instance applying its own `burst`.
//!
//! ```yaml
//! - rate_limit: { rate: 10, burst: 20, key: "$remote_addr", max_keys: 100000 }
//! - rate_limit: { rate: 5, burst: 11, delay: 0, status: 503 }   # nginx: limit_req burst=10 (no nodelay)
//! ```

use crate::api::{self, Ctx, Flow, Headers, Hooks, Plugin, Reply};
use crate::Key;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Tokens per second.
    rate: f64,
    burst: Option<f64>,
    /// `$remote_addr` or `$http_<name>`.
    #[serde(default = "crate::default_key")]
    key: String,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    /// Requests over the rate that pass at once; the ones beyond wait.
    delay: Option<u32>,
    #[serde(default = "default_status")]
    status: u16,
    /// Buckets shared with every `rate_limit` naming the same zone and
    /// rate (nginx's `limit_req_zone`); unset: this instance's own.
    zone: Option<String>,
}

fn default_status() -> u16 {
    429
}

fn default_max_keys() -> usize {
    100_000
}

/// One key's requests taken and not yet paid back by the rate (nginx's
/// "excess" plus the one in hand): independent of any instance's `burst`,
/// so instances sharing a zone can each apply their own.
struct Bucket {
    used: f64,
    at: Instant,
}

const SHARDS: usize = 16;

type Shards = Vec<Mutex<HashMap<String, Bucket>>>;

struct RateLimit {
    rate: f64,
    burst: f64,
    delay: Option<f64>,
    status: u16,
    key: Key,
    max_per_shard: usize,
    shards: Arc<Shards>,
}

pub fn build(v: &serde_yaml::Value) -> Result<Box<dyn Plugin>, String> {
    let s: Settings = api::settings(v)?;
    if !(s.rate > 0.0 && s.rate.is_finite()) {
        return Err("rate: must be a positive number of requests per second".into());
    }
    let burst = s.burst.unwrap_or(s.rate);
    if !(burst >= 1.0 && burst.is_finite()) {
        return Err("burst: must be at least 1".into());
    }
    if s.max_keys < SHARDS {
        return Err(format!("max_keys: must be at least {SHARDS}"));
    }
    if !(400..=599).contains(&s.status) {
        return Err(format!("status: {} is not an error status (400-599)", s.status));
    }
    let key = Key::parse(&s.key, false)?;
    let shards = || (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
    Ok(Box::new(RateLimit {
        // A zone is shared by the instances naming it with the same rate (a new
        // rate makes a new zone: what was counted at the old one no longer applies).
        shards: match &s.zone {
            Some(name) => crate::zone("rate_limit", name, &s.rate.to_string(), shards),
            None => Arc::new(shards()),
        },
        rate: s.rate,
        burst,
        delay: s.delay.map(f64::from),
        status: s.status,
        key,
        max_per_shard: s.max_keys / SHARDS,
    }))
}

impl RateLimit {
    /// Take a token for `key`: `Ok` with how long the request waits first
    /// (zero unless `delay` holds it back); `Err(seconds)` until the next
    /// token otherwise.
    fn take(&self, key: &str, now: Instant) -> Result<Duration, u64> {
        let shard = key.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % SHARDS;
        let mut m = self.shards[shard].lock().unwrap();
        if m.len() >= self.max_per_shard && !m.contains_key(key) {
            self.evict(&mut m, now);
        }
        let b = m.entry(key.to_string()).or_insert(Bucket { used: 0.0, at: now });
        b.used = (b.used - now.duration_since(b.at).as_secs_f64() * self.rate).max(0.0);
        b.at = now;
        if b.used + 1.0 <= self.burst {
            b.used += 1.0;
            // nginx's "excess": requests taken beyond what the rate has paid back.
            let excess = b.used - 1.0;
            let wait = match self.delay {
                Some(free) if excess > free => Duration::from_secs_f64((excess - free) / self.rate),
                _ => Duration::ZERO,
            };
            Ok(wait)
        } else {
            Err(((b.used + 1.0 - self.burst) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Make room: drop buckets that have refilled (idle clients); if none
    /// have, drop half the table (bounded memory wins over exactness).
    fn evict(&self, m: &mut HashMap<String, Bucket>, now: Instant) {
        let rate = self.rate;
        m.retain(|_, b| b.used - now.duration_since(b.at).as_secs_f64() * rate > 0.0);
        if m.len() >= self.max_per_shard {
            let drop: Vec<String> = m.keys().take(m.len() / 2 + 1).cloned().collect();
            for k in drop {
                m.remove(&k);
            }
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    async fn request(&self, ctx: &mut Ctx, h: &mut dyn Headers) -> Flow {
        match self.take(&self.key.of(ctx, h), Instant::now()) {
            Ok(wait) => {
                if !wait.is_zero() {
                    // Held back to the rate (its token is already taken).
                    tokio::time::sleep(wait).await;
                }
                Flow::Continue
            }
            Err(secs) => Flow::Respond(
                Reply::new(self.status, format!("{} Too Many Requests\n", self.status))
                    .header("retry-after", secs.to_string())
                    .header("content-type", "text/plain"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_memory_is_bounded() {
        let p = build(&serde_yaml::from_str("{ rate: 10, burst: 2, max_keys: 64 }").unwrap()).unwrap();
        // Downcast through a fresh instance to reach `take`.
        drop(p);
        let rl = RateLimit {
            rate: 10.0,
            burst: 2.0,
            delay: None,
            status: 429,
            key: Key::ClientIp,
            max_per_shard: 4,
            shards: Arc::new((0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect()),
        };
        let t = Instant::now();
        assert_eq!(rl.take("a", t), Ok(Duration::ZERO));
        assert_eq!(rl.take("a", t), Ok(Duration::ZERO));
        assert_eq!(rl.take("a", t), Err(1));
        assert!(rl.take("a", t + std::time::Duration::from_millis(150)).is_ok());
        for i in 0..100_000 {
            let _ = rl.take(&format!("k{i}"), t);
        }
        let total: usize = rl.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 4 * SHARDS, "bounded: {total}");
    }

    #[test]
    fn with_delay_requests_over_the_rate_wait_as_nginx_spaces_them() {
        // nginx `limit_req rate=10r/s burst=4 delay=1`: a bucket of 5.
        let rl = RateLimit {
            rate: 10.0,
            burst: 5.0,
            delay: Some(1.0),
            status: 503,
            key: Key::ClientIp,
            max_per_shard: 4,
            shards: Arc::new((0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect()),
        };
        let t = Instant::now();
        let ms = |r: Result<Duration, u64>| r.map(|d| d.as_millis());
        assert_eq!(ms(rl.take("a", t)), Ok(0), "within the rate");
        assert_eq!(ms(rl.take("a", t)), Ok(0), "the one free excess request");
        assert_eq!(ms(rl.take("a", t)), Ok(100));
        assert_eq!(ms(rl.take("a", t)), Ok(200));
        assert_eq!(ms(rl.take("a", t)), Ok(300));
        assert_eq!(rl.take("a", t), Err(1), "over the burst");
        // 100 ms later one token is back: the next waits as long as the last did.
        assert_eq!(ms(rl.take("a", t + Duration::from_millis(100))), Ok(300));
    }
}
