//! The client connections a listener has open: counted for the
//! `client_connections_open` gauge (nginx's "active connections"), and
//! bounded by the listener's `max_connections` (HAProxy's `maxconn` on a
//! frontend; nginx's `worker_connections`).
//!
//! At the bound the listener stops taking connections in: new ones wait
//! (the first accepted and held, the others in the kernel's backlog), as
//! with HAProxy, and get their turn as open ones close. Idle keep-alive connections go first: the parking lot closes its
//! longest-waiting ones to make room, as nginx closes its "reusable"
//! connections when it runs short.

use super::park::Lot;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long the listener waits for a connection to close before it looks
/// for idle ones again (connections idle for less than `idle_park_after`
/// are not in the lot yet).
const RECHECK: Duration = Duration::from_millis(100);
/// At most one warning per this long.
const WARN_EVERY_MS: u64 = 10_000;

pub struct Open {
    /// Connections open now (the gauge is the count).
    count: IntGauge,
    /// 0: no bound.
    max: usize,
    /// A connection closed while the listener was at its bound.
    freed: Notify,
    addr: String,
    /// When the bound was last reported (`crate::clock::coarse_ms`).
    warned_ms: AtomicU64,
}

/// One open connection's place in the count, given back when it drops
/// (with the connection, wherever it then is: a task, the parking lot, a
/// WebSocket pipe).
pub struct Counted(Arc<Open>);

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({})", self.0.addr)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.count.dec();
        if self.0.max != 0 {
            self.0.freed.notify_one();
        }
    }
}

impl Open {
    pub fn new(addr: &str, max: usize) -> Arc<Open> {
        Arc::new(Open {
            count: crate::metrics::get().client_connections.with_label_values(&[addr]),
            max,
            freed: Notify::new(),
            addr: addr.to_string(),
            warned_ms: AtomicU64::new(0),
        })
    }

    /// Count a connection just taken in.
    pub fn count(self: &Arc<Self>) -> Counted {
        self.count.inc();
        Counted(self.clone())
    }

    /// Is the listener at its bound?
    pub fn full(&self) -> bool {
        self.max != 0 && self.count.get() >= self.max as i64
    }

    /// Wait until another connection may be taken in, closing idle
    /// keep-alive connections of `lot` to make room (called with a
    /// connection waiting to be taken in: as many as are needed close).
    pub async fn room(&self, lot: &Lot) {
        while self.full() {
            let now = crate::clock::coarse_ms();
            let last = self.warned_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= WARN_EVERY_MS
                && self
                    .warned_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                log::warn!(
                    "listener {}: max_connections ({}) reached; new connections wait, idle ones are closed first",
                    self.addr,
                    self.max
                );
            }
            // Registered before closing any, so that their closing wakes this wait.
            let freed = self.freed.notified();
            let over = (self.count.get() - self.max as i64 + 1).max(1) as usize;
            if lot.close_longest_idle(over) == 0 {
                let _ = tokio::time::timeout(RECHECK, freed).await;
            }
        }
    }
}
