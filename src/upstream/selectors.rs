//! Custom `BackendSelection` implementations for `pingora-load-balancing`.
//! Selectors know nothing about HTTP: they get a key and the backend set, and
//! read in-flight counts and latencies from the shared `ServerState`s handed
//! in as their `Config`, so those survive every selector rebuild.
//!
//! Portico asks them through [`Pick`]: the position (in the order the
//! servers were given, the pool's) of the server a request goes to, among
//! those a predicate accepts (usable, not tried yet). A refused server's
//! share goes to the others by the algorithm's own rule, as nginx skips a
//! down peer, never all to its neighbour. `BackendSelection::iter` yields
//! the same first choice, then the other servers in rotation.

use super::state::{Counters, ServerState};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// How Portico asks a selector for a server.
pub trait Pick: Sized {
    /// A selector over `backends`, in this order (the pool's).
    fn from_list(backends: Vec<Backend>, table: &StateTable) -> Self;
    /// The position of the server for a request with `key`, among those
    /// `ok` accepts; `None` if it accepts none.
    fn pick(&self, key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize>;
}

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

/// `BackendSelection` for a [`Pick`] selector with `HasBackends`: built
/// from the set (address order), its iterator yields the pick among all
/// servers, then the others in rotation.
macro_rules! selection_via_pick {
    ($t:ty $(, $g:ident: $bound:path)?) => {
        impl$(<$g: $bound>)? BackendSelection for $t {
            type Iter = RotIter<$t>;
            type Config = StateTable;

            fn build(backends: &BTreeSet<Backend>) -> Self {
                Self::build_with_config(backends, &Arc::default())
            }
            fn build_with_config(backends: &BTreeSet<Backend>, table: &StateTable) -> Self {
                Self::from_list(backends.iter().cloned().collect(), table)
            }
            fn iter(self: &Arc<Self>, key: &[u8]) -> Self::Iter {
                let n = self.backends.len();
                rot(self, self.pick(key, &|_| true).unwrap_or(0), n)
            }
        }
    };
}

// ---------------------------------------------------------------- smooth WRR

/// nginx's smooth weighted round robin, precomputed into one cycle at build
/// time so a pick is a single atomic increment: weights 5/1/1 give
/// `a a b a c a a`, never a burst of five to one server. When the cycle's
/// server is refused, nginx's algorithm itself runs over the servers
/// accepted ([`SmoothWrr::pick_among`]), so the refused one's share is
/// spread by weight.
pub struct SmoothWrr {
    backends: Vec<Backend>,
    /// Weights divided by their greatest common divisor.
    weights: Vec<i64>,
    cycle: Vec<u32>,
    next: AtomicUsize,
    /// nginx's current weights, for the picks among some servers only.
    current: Mutex<Vec<i64>>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their greatest common divisor (0 counts as 1).
fn reduced(weights: &[usize]) -> Vec<i64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter().map(|x| (x / g).max(1) as i64).collect()
}

/// One step of nginx's smooth weighted round robin over the positions `ok`
/// accepts: each gains its weight, the highest wins and loses the total.
fn smooth_step(current: &mut [i64], weights: &[i64], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let (mut total, mut best) = (0, None::<usize>);
    for (i, w) in weights.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    current[best?] -= total;
    best
}

/// The nginx smooth weighted round-robin order for one full cycle.
pub fn smooth_cycle(weights: &[usize]) -> Vec<u32> {
    let w = reduced(weights);
    let total: i64 = w.iter().sum();
    // Very large weight sums are rare; cap the cycle and keep proportions.
    let len = total.min(1 << 16) as usize;
    let mut current = vec![0i64; w.len()];
    (0..len)
        .filter_map(|_| smooth_step(&mut current, &w, &|_| true))
        .map(|i| i as u32)
        .collect()
}

impl SmoothWrr {
    /// nginx's algorithm over the servers `ok` accepts.
    fn pick_among(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        smooth_step(&mut self.current.lock().unwrap(), &self.weights, ok)
    }
}

impl HasBackends for SmoothWrr {
    fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }
}

impl Pick for SmoothWrr {
    fn from_list(backends: Vec<Backend>, _: &StateTable) -> Self {
        let weights: Vec<usize> = backends.iter().map(|b| b.weight).collect();
        SmoothWrr {
            cycle: smooth_cycle(&weights),
            weights: reduced(&weights),
            current: Mutex::new(vec![0; backends.len()]),
            backends,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self, _key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.backends.is_empty() {
            return None;
        }
        let first = self.cycle[self.next.fetch_add(1, Relaxed) % self.cycle.len()] as usize;
        if ok(first) {
            return Some(first);
        }
        self.pick_among(ok)
    }
}

selection_via_pick!(SmoothWrr);

// ---------------------------------------------------------------- least_conn

/// Fewest in-flight requests relative to weight. Ties go by weight: the
/// scan starts at the next server of the smooth weighted cycle, so idle
/// servers of weights 3 and 1 take three and one requests of every four,
/// as nginx's least_conn breaks ties by weighted round robin.
pub struct LeastConn {
    backends: Vec<Backend>,
    counts: Counts,
    weights: Vec<u64>,
    cycle: Vec<u32>,
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
    fn new(backends: Vec<Backend>, table: &StateTable) -> Self {
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
            cycle: smooth_cycle(&backends.iter().map(|b| b.weight).collect::<Vec<_>>()),
            weights,
            backends,
            rr: AtomicUsize::new(0),
        }
    }

    /// Index with the least load, scanning from `start` so that equal
    /// loads share the traffic.
    fn least(&self, start: usize) -> usize {
        let n = self.backends.len();
        match &self.counts {
            Counts::Arena {
                arena,
                slot,
                dense: Some(d),
            } => {
                // Fast path: two passes over the pool's contiguous counters
                // (slot order). First the least load, relative to weight
                // when weights differ (four independent minimums keep the
                // pipeline full, no branch per server); then the first slot
                // at or after `start` that has it, so equal loads share the
                // traffic. Then map the slot back to its server.
                let run = &arena.slots[d.lo..d.lo + n];
                let start = slot[start] as usize - d.lo;
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

    /// The least loaded of the servers `ok` accepts; of several, the
    /// `r`-th in turn.
    fn least_among(&self, r: usize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let below = |(l, w): (u64, u64), (bl, bw): (u64, u64)| (l as u128) * (bw as u128) < (bl as u128) * (w as u128);
        let load = |i: usize| (self.counts.get(i), self.weights[i]);
        let (mut best, mut ties) = (None, 0);
        for i in (0..self.backends.len()).filter(|&i| ok(i)) {
            let l = load(i);
            match best {
                Some(b) if below(load(b), l) => {}
                Some(b) if !below(l, load(b)) => ties += 1,
                _ => (best, ties) = (Some(i), 1),
            }
        }
        let b = load(best?);
        let nth = r % ties;
        (0..self.backends.len())
            .filter(|&i| ok(i) && !below(b, load(i)) && !below(load(i), b))
            .nth(nth)
            .or(best)
    }
}

impl Pick for LeastConn {
    fn from_list(backends: Vec<Backend>, table: &StateTable) -> Self {
        Self::new(backends, table)
    }

    fn pick(&self, _key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.backends.is_empty() {
            return None;
        }
        let r = self.rr.fetch_add(1, Relaxed);
        let start = self.cycle[r % self.cycle.len()] as usize;
        // Nothing beats an idle server (for any weight).
        let first = if self.counts.get(start) == 0 {
            start
        } else {
            self.least(start)
        };
        if ok(first) {
            return Some(first);
        }
        self.least_among(r, ok)
    }
}

selection_via_pick!(LeastConn);

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
    fn new(backends: Vec<Backend>, table: &StateTable) -> Self {
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

    fn weight(&self, i: usize) -> u64 {
        self.backends[i].weight.max(1) as u64
    }

    /// A weighted random draw among the servers `ok` accepts.
    fn draw_among(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = (0..self.backends.len())
            .filter(|&i| ok(i))
            .map(|i| self.weight(i))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand_u64() % total;
        (0..self.backends.len()).filter(|&i| ok(i)).find(|&i| {
            let w = self.weight(i);
            let hit = r < w;
            r = r.wrapping_sub(w);
            hit
        })
    }

    /// Of two candidates, the one the mode scores lower.
    fn better(&self, a: usize, b: usize) -> usize {
        if M::score(&self.states[b], self.weight(b)) < M::score(&self.states[a], self.weight(a)) {
            b
        } else {
            a
        }
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

impl<M: Mode> Pick for RandomPick<M> {
    fn from_list(backends: Vec<Backend>, table: &StateTable) -> Self {
        Self::new(backends, table)
    }

    fn pick(&self, _key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
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
            first = self.better(first, second);
        }
        if ok(first) {
            return Some(first);
        }
        // Drawn again among those accepted, so none of them takes the refused one's share alone.
        let first = self.draw_among(ok)?;
        if !M::TWO {
            return Some(first);
        }
        let second = self.draw_among(&|i| i != first && ok(i));
        Some(second.map_or(first, |second| self.better(first, second)))
    }
}

selection_via_pick!(RandomPick<M>, M: Mode);

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

    fn list(weights: &[usize]) -> Vec<Backend> {
        (weights.iter().enumerate())
            .map(|(i, &w)| Backend::new_with_weight(&format!("10.0.0.{}:80", i + 1), w).unwrap())
            .collect()
    }

    /// How many of `n` picks went to each position, with position `down` refused.
    fn shares(sel: &impl Pick, servers: usize, down: usize, n: usize) -> Vec<usize> {
        let mut got = vec![0; servers];
        for _ in 0..n {
            got[sel.pick(b"", &|i| i != down).unwrap()] += 1;
        }
        got
    }

    #[test]
    fn a_refused_servers_share_is_spread_by_weight() {
        let table = StateTable::default();
        // nginx, weights 5/1/1 with the first down: the other two alike.
        let wrr = SmoothWrr::from_list(list(&[5, 1, 1]), &table);
        assert_eq!(shares(&wrr, 3, 0, 70), [0, 35, 35]);
        let wrr = SmoothWrr::from_list(list(&[1, 1, 1, 1]), &table);
        assert_eq!(shares(&wrr, 4, 1, 60), [20, 0, 20, 20]);
        let wrr = SmoothWrr::from_list(list(&[3, 2, 1]), &table);
        assert_eq!(shares(&wrr, 3, 0, 60), [0, 40, 20]);
        // least_conn, all idle: the others alike, and weights break ties.
        let lc = LeastConn::from_list(list(&[1, 1, 1, 1]), &table);
        let got = shares(&lc, 4, 0, 30);
        assert!(got[0] == 0 && got[1..].iter().all(|g| (9..=11).contains(g)), "{got:?}");
        let lc = LeastConn::from_list(list(&[3, 1]), &table);
        assert_eq!(shares(&lc, 2, 9, 40), [30, 10]);
        // Random: drawn again among the others (3,000 draws: each within 25% of its 1,000).
        let r = RandomPick::<Plain>::from_list(list(&[1, 1, 1, 1]), &table);
        for (i, got) in shares(&r, 4, 2, 3000).into_iter().enumerate() {
            assert!(if i == 2 { got == 0 } else { (750..1250).contains(&got) }, "{i}: {got}");
        }
        let r = RandomPick::<TwoLeastConn>::from_list(list(&[1, 1, 1]), &table);
        assert!(shares(&r, 3, 0, 300)[1..].iter().all(|&g| g > 50));
        assert_eq!(wrr.pick(b"", &|_| false), None, "none accepted");
    }

    #[test]
    fn least_conn_skips_refused_servers_for_the_least_loaded_of_the_rest() {
        let reg = crate::upstream::state::StateRegistry::default();
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let s = least_conn_over(&reg, &addrs, &[1, 1, 1]);
        for (a, l) in addrs.iter().zip([0, 4, 2]) {
            reg.get("p", a, true).inflight.store(l, Relaxed);
        }
        for _ in 0..6 {
            assert_eq!(s.pick(b"", &|i| i != 0), Some(2));
        }
    }

    #[test]
    fn smooth_cycle_interleaves() {
        let c = smooth_cycle(&[5, 1, 1]);
        assert_eq!(c, vec![0, 0, 1, 0, 2, 0, 0]);
        let c = smooth_cycle(&[2, 2]);
        assert_eq!(c, vec![0, 1]);
    }
}
