//! Per-server runtime state that outlives any one configuration: in-flight
//! counts, passive (`max_fails`/`fail_timeout`) and active health, draining,
//! response-time EWMA and counters. A `StateRegistry` hands out the same
//! `Arc<ServerState>` for the same (pool, address) across hot reloads, so
//! nothing resets when the config is swapped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Milliseconds on the coarse monotonic clock (never 0).
pub fn now_ms() -> u64 {
    crate::clock::coarse_ms()
}

/// nginx's passive health bookkeeping for one server, beside its `fails`
/// (`ServerState::fails`): its `accessed` and `checked` (ms on `now_ms`).
/// Changed with the lock held; all atomics, so that the checks on every
/// pick and success of a server with failures take no lock unless they may
/// change something.
#[derive(Default)]
struct Passive {
    lock: Mutex<()>,
    /// When the last failure was.
    failed_ms: AtomicU64,
    /// When the server was last failed or picked more than `fail_timeout`
    /// after that: a success after such a pick clears `fails`.
    checked_ms: AtomicU64,
}

/// In-flight counters of one pool's servers, side by side in memory so that
/// least_conn scans a thousand of them in well under a microsecond. A slot
/// belongs to one (pool, address) for as long as its `ServerState` lives.
pub struct Counters {
    pub slots: Box<[AtomicUsize]>,
    free: Mutex<Vec<u32>>,
}

const ARENA_SLOTS: usize = 4096;

impl Counters {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Counters {
            slots: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            free: Mutex::new((0..n as u32).rev().collect()),
        })
    }

    fn take(self: &Arc<Self>) -> Option<Counter> {
        let idx = self.free.lock().unwrap().pop()?;
        Some(Counter {
            arena: self.clone(),
            idx,
        })
    }
}

/// One server's in-flight counter: a slot in its pool's `Counters`.
pub struct Counter {
    arena: Arc<Counters>,
    idx: u32,
}

impl Counter {
    pub fn arena(&self) -> &Arc<Counters> {
        &self.arena
    }
    pub fn index(&self) -> u32 {
        self.idx
    }
}

impl std::ops::Deref for Counter {
    type Target = AtomicUsize;
    fn deref(&self) -> &AtomicUsize {
        &self.arena.slots[self.idx as usize]
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.arena.slots[self.idx as usize].store(0, Relaxed);
        self.arena.free.lock().unwrap().push(self.idx);
    }
}

pub struct ServerState {
    /// Requests (and upgraded connections) currently being served.
    pub inflight: Counter,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Passive health: skipped until this instant (ms on `now_ms`).
    down_until_ms: AtomicU64,
    /// Failures counted towards `max_fails` (0 nearly always).
    fails: AtomicUsize,
    passive: Passive,
    /// Active health-check verdict.
    pub healthy: AtomicBool,
    /// Draining: no new requests or sticky pins.
    pub draining: AtomicBool,
    /// EWMA of the response-header time in microseconds (0 = no sample yet).
    pub ewma_us: AtomicU64,
    pub last_failure: Mutex<Option<String>>,
    /// Result of the last active health check, if any.
    pub last_check: Mutex<Option<String>>,
}

impl ServerState {
    /// A state with a counter of its own (outside any pool's arena).
    pub fn new(healthy: bool) -> Self {
        Self::with_counter(healthy, Counters::new(1).take().expect("one free slot"))
    }

    fn with_counter(healthy: bool, inflight: Counter) -> Self {
        ServerState {
            inflight,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            fails: AtomicUsize::new(0),
            passive: Passive::default(),
            healthy: AtomicBool::new(healthy),
            draining: AtomicBool::new(false),
            ewma_us: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            last_check: Mutex::new(None),
        }
    }

    /// Usable for a new request: healthy, not draining, not passively marked down.
    #[inline]
    pub fn usable(&self) -> bool {
        let down_until = self.down_until_ms.load(Relaxed);
        // 0: never marked down, no need to read the clock.
        self.healthy.load(Relaxed) && !self.draining.load(Relaxed) && (down_until == 0 || down_until <= now_ms())
    }

    /// Record a failed attempt, as nginx counts them: `max_fails` failures
    /// with no success between them that came after a check (see
    /// [`ServerState::picked`]) make the server unavailable for
    /// `fail_timeout`. Returns true when the server is now marked down.
    pub fn record_failure(&self, max_fails: usize, fail_timeout: Duration, why: &str) -> bool {
        self.failures.fetch_add(1, Relaxed);
        *self.last_failure.lock().unwrap() = Some(why.to_string());
        if max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let _changing = self.passive.lock.lock().unwrap();
        let fails = self.fails.load(Relaxed) + 1;
        self.fails.store(fails, Relaxed);
        self.passive.failed_ms.store(now, Relaxed);
        self.passive.checked_ms.store(now, Relaxed);
        if fails >= max_fails {
            self.down_until_ms.store(now + fail_timeout.as_millis() as u64, Relaxed);
            return true;
        }
        false
    }

    /// A request goes to this server. As nginx does, a pick more than
    /// `fail_timeout` after the server's last check is a new check: a
    /// success then clears the failures counted so far. A server marked
    /// down whose `fail_timeout` has passed so gets one request: until it
    /// answers (or another `fail_timeout` passes) it stays out for the
    /// others, and one more failure marks it down again.
    #[inline]
    pub fn picked(&self, max_fails: usize, fail_timeout: Duration) {
        if self.fails.load(Relaxed) != 0 {
            self.picked_after_failures(max_fails, fail_timeout);
        }
    }

    #[cold]
    fn picked_after_failures(&self, max_fails: usize, fail_timeout: Duration) {
        let now = now_ms();
        let ft = fail_timeout.as_millis() as u64;
        let due = || now.saturating_sub(self.passive.checked_ms.load(Relaxed)) > ft;
        if !due() {
            return; // checked within fail_timeout: nothing to change
        }
        let _changing = self.passive.lock.lock().unwrap();
        if due() {
            self.passive.checked_ms.store(now, Relaxed);
            if max_fails > 0 && self.fails.load(Relaxed) >= max_fails {
                self.down_until_ms.store(now + ft, Relaxed);
            }
        }
    }

    /// Forget a `max_fails` mark and the failures counted towards one (a
    /// pool left with this server alone, which passive health never marks).
    pub fn clear_passive_down(&self) {
        let _changing = self.passive.lock.lock().unwrap();
        self.fails.store(0, Relaxed);
        self.down_until_ms.store(0, Relaxed);
    }

    /// A success. As in nginx, it clears the failures only if it came after
    /// a check (a pick `fail_timeout` after the last failure): a server
    /// that fails every other request is still marked down.
    #[inline]
    pub fn record_success(&self) {
        let checked = || self.passive.failed_ms.load(Relaxed) < self.passive.checked_ms.load(Relaxed);
        if self.fails.load(Relaxed) == 0 || !checked() {
            return;
        }
        let _changing = self.passive.lock.lock().unwrap();
        if checked() {
            self.fails.store(0, Relaxed);
            self.down_until_ms.store(0, Relaxed);
        }
    }

    pub fn passive_down(&self) -> bool {
        self.down_until_ms.load(Relaxed) > now_ms()
    }

    /// Fold a response-header time into the EWMA (alpha = 1/8).
    pub fn observe_latency(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let old = self.ewma_us.load(Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.ewma_us.store(new.max(1), Relaxed);
    }
}

/// Holds one in-flight slot on a server; released on drop, however the
/// request ends (success, error, abort, retry elsewhere, WebSocket close).
pub struct InflightGuard(Arc<ServerState>);

impl InflightGuard {
    pub fn new(s: Arc<ServerState>) -> Self {
        s.inflight.fetch_add(1, Relaxed);
        s.requests.fetch_add(1, Relaxed);
        InflightGuard(s)
    }
    pub fn state(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// Same (pool, address) → same state, across reloads.
#[derive(Default)]
pub struct StateRegistry {
    map: Mutex<HashMap<(String, String), Arc<ServerState>>>,
    /// Counter arenas per pool name.
    arenas: Mutex<HashMap<String, Vec<Arc<Counters>>>>,
    /// The last addresses each `resolve: true` server name resolved to:
    /// used while the name does not resolve.
    names: Mutex<HashMap<String, Vec<std::net::SocketAddr>>>,
}

impl StateRegistry {
    pub fn get(&self, pool: &str, addr: &str, start_healthy: bool) -> Arc<ServerState> {
        self.map
            .lock()
            .unwrap()
            .entry((pool.to_string(), addr.to_string()))
            .or_insert_with(|| Arc::new(ServerState::with_counter(start_healthy, self.counter(pool))))
            .clone()
    }

    fn counter(&self, pool: &str) -> Counter {
        let mut arenas = self.arenas.lock().unwrap();
        let list = arenas.entry(pool.to_string()).or_default();
        if let Some(c) = list.iter().find_map(|a| a.take()) {
            return c;
        }
        let a = Counters::new(ARENA_SLOTS);
        let c = a.take().expect("a new arena has free slots");
        list.push(a);
        c
    }

    /// `name`'s addresses now, remembered; when it does not resolve, the
    /// ones it had last (with a warning), else the error.
    pub fn resolved(
        &self,
        name: &str,
        now: Result<Vec<std::net::SocketAddr>, String>,
    ) -> Result<Vec<std::net::SocketAddr>, String> {
        let mut names = self.names.lock().unwrap();
        match now {
            Ok(addrs) => {
                names.insert(name.to_string(), addrs.clone());
                Ok(addrs)
            }
            Err(e) => match names.get(name) {
                Some(last) => {
                    log::warn!("{e}; keeping its last addresses {last:?}");
                    Ok(last.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Forget servers that are no longer in any pool (after a reload).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.map.lock().unwrap().retain(|(p, a), _| keep(p, a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_as_nginx_counts_them() {
        let ft = Duration::from_millis(300);
        let s = ServerState::new(true);
        // A success between two failures does not clear the first: no check came between.
        assert!(!s.record_failure(2, ft, "reset"));
        s.picked(2, ft);
        s.record_success();
        assert!(s.record_failure(2, ft, "reset"), "the second failure marks it down");
        assert!(!s.usable());
        // After fail_timeout one request may go; the others skip it until it answers.
        std::thread::sleep(ft + Duration::from_millis(100));
        assert!(s.usable());
        s.picked(2, ft);
        assert!(!s.usable(), "one trial at a time");
        // It fails: down again at once, one failure was enough.
        assert!(s.record_failure(2, ft, "reset"));
        assert!(!s.usable());
        // The next trial succeeds: the failures are forgotten.
        std::thread::sleep(ft + Duration::from_millis(100));
        s.picked(2, ft);
        s.record_success();
        assert!(s.usable());
        assert!(!s.record_failure(2, ft, "reset"), "counting starts over");
    }
}
