//! Custom `BackendSelection` implementations for `pingora-load-balancing`.
//! Selectors know nothing about HTTP: they get a key and the backend set, and
//! read in-flight counts and latencies from the shared `ServerState`s handed
//! in as their `Config`, so those survive every selector rebuild.
//!
//! Each `iter` yields the first choice first, then the remaining servers as
//! fallbacks (the caller skips unusable or already-tried ones).

use super::state::{Counters, ServerState};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Shared server state by backend address, the `Config` of stateful selectors.
pub type StateTable = Arc<HashMap<String, Arc<ServerState>>>;

fn states_for(backends: &[Backend], table: &StateTable) -> Vec<Arc<ServerState>> {
    backends
        .iter()
        .map(|b| {
            table
                .get(&b.addr.to_string())
                .cloned()
                .unwrap_or_else(|| Arc::new(ServerState::new(true)))
        })
        .collect()
}

/// Yields `first`, then every other index in rotation order.
pub struct RotIter<S> {
    sel: Arc<S>,
    first: usize,
    step: usize,
    n: usize,
}

pub trait HasBackends {
    fn backend(&self, i: usize) -> &Backend;
}

impl<S> RotIter<S> {
    /// The next position in the selector's backend order.
    #[inline]
    pub fn next_position(&mut self) -> Option<usize> {
        if self.step >= self.n {
            return None;
        }
        let mut i = self.first + self.step;
        if i >= self.n {
            i -= self.n;
        }
        self.step += 1;
        Some(i)
    }
}

impl<S: HasBackends> BackendIter for RotIter<S> {
    fn next(&mut self) -> Option<&Backend> {
        let i = self.next_position()?;
        Some(self.sel.backend(i))
    }
}

fn rot<S>(sel: &Arc<S>, first: usize, n: usize) -> RotIter<S> {
    RotIter {
        sel: sel.clone(),
        first,
        step: 0,
        n,
    }
}

// ---------------------------------------------------------------- smooth WRR

/// nginx's smooth weighted round robin, precomputed into one cycle at build
/// time so a pick is a single atomic increment: weights 5/1/1 give
/// `a a b a c a a`, never a burst of five to one server.
pub struct SmoothWrr {
    backends: Vec<Backend>,
    cycle: Vec<u32>,
    next: AtomicUsize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The nginx smooth weighted round-robin order for one full cycle.
pub fn smooth_cycle(weights: &[usize]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|x| (x / g).max(1) as i64).collect();
    let total: i64 = w.iter().sum();
    // Very large weight sums are rare; cap the cycle and keep proportions.
    let len = total.min(1 << 16) as usize;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl HasBackends for SmoothWrr {
    fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }
}

impl BackendSelection for SmoothWrr {
    type Iter = RotIter<SmoothWrr>;
    type Config = StateTable;

    fn build(backends: &BTreeSet<Backend>) -> Self {
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let weights: Vec<usize> = backends.iter().map(|b| b.weight).collect();
        SmoothWrr {
            cycle: smooth_cycle(&weights),
            backends,
            next: AtomicUsize::new(0),
        }
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> Self::Iter {
        let n = self.backends.len();
        if n == 0 {
            return rot(self, 0, 0);
        }
        let i = self.next.fetch_add(1, Relaxed) % self.cycle.len();
        rot(self, self.cycle[i] as usize, n)
    }
}

// ---------------------------------------------------------------- least_conn

/// Fewest in-flight requests relative to weight; ties rotate.
pub struct LeastConn {
    backends: Vec<Backend>,
    counts: Counts,
    weights: Vec<u64>,
    rr: AtomicUsize,
}

/// Where the in-flight counts are: one pool arena (the normal case) or
/// scattered. In an arena the servers usually hold one contiguous run of
/// slots, which is then scanned as a plain array.
enum Counts {
    Arena {
        arena: Arc<Counters>,
        /// Slot of each server (selector order).
        slot: Vec<u32>,
        /// When the slots are exactly `lo..lo + n`.
        dense: Option<Dense>,
    },
    Scattered(Vec<Arc<ServerState>>),
}

/// A pool whose counters are the contiguous slots `lo..lo + n`.
struct Dense {
    lo: usize,
    /// Server index of each slot.
    server_of: Vec<u32>,
    /// 2^32 / weight of each slot's server, when the weights differ: load
    /// x this orders servers by load / weight with integer multiplies only
    /// (exact between equal weights; a tie across different weights may be
    /// off by the rounding, which only changes which tied server wins).
    inv_weight: Option<Vec<u64>>,
}

/// The minimum of `f(k, slot k)` over `run`, with four independent
/// accumulators (no loop-carried dependency on a single minimum).
#[inline]
fn min4<T: Copy>(run: &[AtomicUsize], f: impl Fn(usize, &AtomicUsize) -> T, max: T, min: fn(T, T) -> T) -> T {
    let chunks = run.chunks_exact(4);
    let tail = run.len() - chunks.remainder().len();
    let mut acc = [max; 4];
    for (j, c) in chunks.remainder().iter().enumerate() {
        acc[j] = f(tail + j, c);
    }
    for (q, ch) in chunks.enumerate() {
        for j in 0..4 {
            acc[j] = min(acc[j], f(q * 4 + j, &ch[j]));
        }
    }
    min(min(acc[0], acc[1]), min(acc[2], acc[3]))
}

impl Counts {
    #[inline]
    fn get(&self, i: usize) -> u64 {
        match self {
            Counts::Arena { arena, slot, .. } => arena.slots[slot[i] as usize].load(Relaxed) as u64,
            Counts::Scattered(s) => s[i].inflight.load(Relaxed) as u64,
        }
    }
}

impl HasBackends for LeastConn {
    fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }
}

impl LeastConn {
    fn new(backends: &BTreeSet<Backend>, table: &StateTable) -> Self {
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let weights: Vec<u64> = backends.iter().map(|b| b.weight.max(1) as u64).collect();
        let states = states_for(&backends, table);
        let counts = match states.first().map(|s| s.inflight.arena().clone()) {
            Some(arena) if states.iter().all(|s| Arc::ptr_eq(s.inflight.arena(), &arena)) => {
                let slot: Vec<u32> = states.iter().map(|s| s.inflight.index()).collect();
                let lo = slot.iter().copied().min().unwrap_or(0) as usize;
                let mut server_of = vec![u32::MAX; slot.len()];
                let dense = slot.iter().enumerate().all(|(i, &k)| {
                    let off = k as usize - lo;
                    off < server_of.len() && std::mem::replace(&mut server_of[off], i as u32) == u32::MAX
                });
                let uniform = weights.windows(2).all(|w| w[0] == w[1]);
                let inv_weight =
                    (!uniform).then(|| server_of.iter().map(|&i| (1u64 << 32) / weights[i as usize]).collect());
                Counts::Arena {
                    arena,
                    slot,
                    dense: dense.then_some(Dense {
                        lo,
                        server_of,
                        inv_weight,
                    }),
                }
            }
            _ => Counts::Scattered(states),
        };
        LeastConn {
            counts,
            weights,
            backends,
            rr: AtomicUsize::new(0),
        }
    }

    /// Index with the least load, scanning from a rotating start so that
    /// equal loads share the traffic.
    fn least(&self) -> usize {
        let n = self.backends.len();
        let start = self.rr.fetch_add(1, Relaxed) % n;
        if self.counts.get(start) == 0 {
            return start; // nothing beats an idle server (for any weight)
        }
        match &self.counts {
            Counts::Arena {
                arena, dense: Some(d), ..
            } => {
                // Fast path: two passes over the pool's contiguous counters
                // (slot order). First the least load, relative to weight
                // when weights differ (four independent minimums keep the
                // pipeline full, no branch per server); then the first slot
                // at or after `start` that has it, so equal loads share the
                // traffic. Then map the slot back to its server.
                let run = &arena.slots[d.lo..d.lo + n];
                let pos = match &d.inv_weight {
                    None => {
                        let least = min4(run, |_, c| c.load(Relaxed), usize::MAX, usize::min);
                        (start..n).chain(0..start).find(|&k| run[k].load(Relaxed) <= least)
                    }
                    Some(inv) => {
                        // In-flight counts stay far below 2^32, so this cannot overflow.
                        let score = |k: usize, c: &AtomicUsize| c.load(Relaxed) as u64 * inv[k];
                        let least = min4(run, score, u64::MAX, u64::min);
                        (start..n).chain(0..start).find(|&k| score(k, &run[k]) <= least)
                    }
                };
                // A counter may have changed between the passes; then `start`.
                d.server_of[pos.unwrap_or(start)] as usize
            }
            _ => {
                let (mut best, mut best_load, mut best_w) = (start, u64::MAX, 1u64);
                for i in (start..n).chain(0..start) {
                    let (l, w) = (self.counts.get(i), self.weights[i]);
                    // l / w < best_load / best_w, without division
                    if (l as u128) * (best_w as u128) < (best_load as u128) * (w as u128) {
                        best = i;
                        best_load = l;
                        best_w = w;
                    }
                }
                best
            }
        }
    }
}

impl BackendSelection for LeastConn {
    type Iter = RotIter<LeastConn>;
    type Config = StateTable;

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::new(backends, &Arc::default())
    }
    fn build_with_config(backends: &BTreeSet<Backend>, table: &StateTable) -> Self {
        Self::new(backends, table)
    }
    fn iter(self: &Arc<Self>, _key: &[u8]) -> Self::Iter {
        let n = self.backends.len();
        let first = if n == 0 { 0 } else { self.least() };
        rot(self, first, n)
    }
}

// ------------------------------------------------- random / two choices / least_time

/// Weighted random choice; with `Mode::TwoLeastConn` or `Mode::LeastTime`
/// two weighted random candidates are drawn and the less loaded one wins
/// (power of two choices).
pub struct RandomPick<M> {
    backends: Vec<Backend>,
    states: Vec<Arc<ServerState>>,
    cumulative: Vec<u64>,
    _mode: std::marker::PhantomData<M>,
}

pub struct Plain;
pub struct TwoLeastConn;
pub struct LeastTime;

pub trait Mode: Send + Sync + 'static {
    const TWO: bool;
    /// Lower is better.
    fn score(s: &ServerState, weight: u64) -> u64;
}

impl Mode for Plain {
    const TWO: bool = false;
    fn score(_: &ServerState, _: u64) -> u64 {
        0
    }
}

impl Mode for TwoLeastConn {
    const TWO: bool = true;
    fn score(s: &ServerState, weight: u64) -> u64 {
        (s.inflight.load(Relaxed) as u64 * 1024) / weight
    }
}

impl Mode for LeastTime {
    const TWO: bool = true;
    fn score(s: &ServerState, weight: u64) -> u64 {
        // A server without samples yet looks as fast as 1 ms.
        let t = match s.ewma_us.load(Relaxed) {
            0 => 1000,
            t => t,
        };
        t * (s.inflight.load(Relaxed) as u64 + 1) / weight
    }
}

impl<M> HasBackends for RandomPick<M> {
    fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }
}

impl<M: Mode> RandomPick<M> {
    fn new(backends: &BTreeSet<Backend>, table: &StateTable) -> Self {
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let mut acc = 0;
        let cumulative = backends
            .iter()
            .map(|b| {
                acc += b.weight.max(1) as u64;
                acc
            })
            .collect();
        RandomPick {
            states: states_for(&backends, table),
            backends,
            cumulative,
            _mode: std::marker::PhantomData,
        }
    }

    fn draw(&self) -> usize {
        let total = *self.cumulative.last().unwrap();
        let r = fastrand_u64() % total;
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// A cheap thread-local xorshift generator; selection needs speed, not crypto.
fn fastrand_u64() -> u64 {
    use std::cell::Cell;
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    thread_local! {
        static S: Cell<u64> = Cell::new(
            SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                | 1,
        );
    }
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

impl<M: Mode> BackendSelection for RandomPick<M> {
    type Iter = RotIter<RandomPick<M>>;
    type Config = StateTable;

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::new(backends, &Arc::default())
    }
    fn build_with_config(backends: &BTreeSet<Backend>, table: &StateTable) -> Self {
        Self::new(backends, table)
    }
    fn iter(self: &Arc<Self>, _key: &[u8]) -> Self::Iter {
        let n = self.backends.len();
        if n == 0 {
            return rot(self, 0, 0);
        }
        let mut first = self.draw();
        if M::TWO && n > 1 {
            // Two distinct candidates, or the worse one keeps 1/n of its share.
            let mut second = self.draw();
            for _ in 0..4 {
                if second != first {
                    break;
                }
                second = self.draw();
            }
            if second == first {
                second = (first + 1) % n;
            }
            let w = |i: usize| self.backends[i].weight.max(1) as u64;
            if M::score(&self.states[second], w(second)) < M::score(&self.states[first], w(first)) {
                first = second;
            }
        }
        rot(self, first, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn least_conn_over(reg: &crate::upstream::state::StateRegistry, addrs: &[&str], w: &[usize]) -> Arc<LeastConn> {
        let mut table = HashMap::new();
        let mut set = BTreeSet::new();
        for (a, w) in addrs.iter().zip(w) {
            table.insert(a.to_string(), reg.get("p", a, true));
            set.insert(Backend::new_with_weight(a, *w).unwrap());
        }
        Arc::new(LeastConn::build_with_config(&set, &Arc::new(table)))
    }

    fn first(s: &Arc<LeastConn>) -> String {
        s.iter(b"").next().unwrap().addr.to_string()
    }

    #[test]
    fn least_conn_picks_the_least_loaded_on_every_path() {
        let reg = crate::upstream::state::StateRegistry::default();
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let s = least_conn_over(&reg, &addrs, &[1, 1, 1, 1]);
        assert!(
            matches!(s.counts, Counts::Arena { dense: Some(_), .. }),
            "dense arena path"
        );
        for (a, l) in addrs.iter().zip([3, 2, 5, 4]) {
            reg.get("p", a, true).inflight.store(l, Relaxed);
        }
        for _ in 0..8 {
            assert_eq!(first(&s), "10.0.0.2:80");
        }
        // A server added later gets a slot elsewhere: the general path, same answer.
        let more = least_conn_over(&reg, &["10.0.0.2:80", "10.0.0.9:80", "10.0.0.3:80"], &[1, 1, 1]);
        reg.get("p", "10.0.0.9:80", true).inflight.store(7, Relaxed);
        assert_eq!(first(&more), "10.0.0.2:80");
        // Weights: 4 in flight on weight 4 beats 2 in flight on weight 1.
        let reg2 = crate::upstream::state::StateRegistry::default();
        let w = least_conn_over(&reg2, &addrs[..2], &[4, 1]);
        reg2.get("p", addrs[0], true).inflight.store(4, Relaxed);
        reg2.get("p", addrs[1], true).inflight.store(2, Relaxed);
        assert_eq!(first(&w), addrs[0]);
    }

    #[test]
    fn smooth_cycle_interleaves() {
        let c = smooth_cycle(&[5, 1, 1]);
        assert_eq!(c, vec![0, 0, 1, 0, 2, 0, 0]);
        let c = smooth_cycle(&[2, 2]);
        assert_eq!(c, vec![0, 1]);
    }
}
