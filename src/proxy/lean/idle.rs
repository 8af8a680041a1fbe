//! Idle upstream connections of the lean loop. Pingora's pool watches every
//! idle connection with a task of its own, spawned each time a connection is
//! put back and stopped each time it is taken. This one keeps them in a list
//! per server (newest taken first) and checks a connection when it is taken:
//! one the server closed, or one with unexpected bytes waiting, is dropped
//! then. A sweep every second closes those idle longer than their pool's
//! `keepalive_timeout`, so no socket lingers once traffic stops; the sweeps
//! stop when the pool is empty and start again with the next connection put
//! back.

use super::connect::UpStream;
use super::upstream::Upstream;
use crate::clock::coarse_ms;
use futures::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::AsyncReadExt;

struct Idle {
    up: Upstream,
    /// Put back at this time (ms on the coarse clock).
    since: u64,
    /// Idle for at most this many ms.
    timeout: Option<u64>,
}

impl Idle {
    fn expired(&self, now: u64) -> bool {
        self.timeout.is_some_and(|t| now.saturating_sub(self.since) >= t)
    }
}

/// The pool's keys are already hashes (`Peer::reuse_hash`): used as they are.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct IdlePool {
    /// Keyed by `Peer::reuse_hash` (address, TLS settings, ...).
    lists: Mutex<HashMap<u64, VecDeque<Idle>, BuildHasherDefault<KeyHash>>>,
    /// A sweeper task is running. Read and written with `lists` locked.
    sweeping: AtomicBool,
}

impl Default for IdlePool {
    fn default() -> Self {
        IdlePool {
            lists: Mutex::default(),
            sweeping: AtomicBool::new(false),
        }
    }
}

/// Nothing to read and not closed: the server has not given up on it.
fn still_open(s: &mut UpStream) -> bool {
    let mut b = [0u8; 1];
    // Unconstrained: tokio's cooperative budget must not make a ready read look pending.
    tokio::task::unconstrained(s.read(&mut b)).now_or_never().is_none()
}

impl IdlePool {
    /// The newest usable idle connection for `key`, if any.
    pub fn take(&self, key: u64) -> Option<Upstream> {
        let now = coarse_ms();
        loop {
            let idle = self.lists.lock().ok()?.get_mut(&key)?.pop_back()?;
            let fresh = !idle.expired(now);
            let mut up = idle.up;
            if fresh && still_open(&mut up.stream) {
                return Some(up);
            }
        }
    }

    /// Keep `up` for reuse: at most `limit` per server, the oldest go first.
    pub fn put(self: &Arc<Self>, key: u64, up: Upstream, timeout: Option<Duration>, limit: usize) {
        let now = coarse_ms();
        let Ok(mut lists) = self.lists.lock() else { return };
        if !self.sweeping.load(Relaxed) {
            self.sweeping.store(true, Relaxed);
            spawn_sweeper(Arc::downgrade(self));
        }
        let list = lists.entry(key).or_default();
        while list.front().is_some_and(|i| i.expired(now)) || list.len() >= limit.max(1) {
            list.pop_front();
        }
        list.push_back(Idle {
            up,
            since: now,
            timeout: timeout.map(|t| t.as_millis() as u64),
        });
    }

    /// Close the connections idle too long; false (and no more sweeping)
    /// once none is left.
    fn sweep(&self) -> bool {
        let now = coarse_ms();
        let Ok(mut lists) = self.lists.lock() else { return false };
        lists.retain(|_, list| {
            list.retain(|i| !i.expired(now));
            !list.is_empty()
        });
        if lists.is_empty() {
            self.sweeping.store(false, Relaxed);
            return false;
        }
        true
    }

    #[cfg(test)]
    fn len(&self, key: u64) -> usize {
        self.lists.lock().unwrap().get(&key).map_or(0, |l| l.len())
    }
}

fn spawn_sweeper(pool: Weak<IdlePool>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !pool.upgrade().is_some_and(|p| p.sweep()) {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(l: &TcpListener) -> (Upstream, TcpStream) {
        let addr = l.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), l.accept());
        (
            UpStream::Tcp(crate::sockio::Direct(ours.unwrap())).into(),
            theirs.unwrap().0,
        )
    }

    #[tokio::test]
    async fn takes_the_newest_open_connection_and_drops_the_rest() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(IdlePool::default());
        let (a, server_a) = pair(&l).await;
        let (b, mut server_b) = pair(&l).await;
        let (c, server_c) = pair(&l).await;
        pool.put(1, a, None, 8);
        pool.put(1, b, None, 8);
        pool.put(1, c, None, 8);
        drop(server_c); // closed by the server: dropped when taken
        server_b.write_all(b"x").await.unwrap(); // unexpected bytes: dropped too
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = pool.take(1).expect("the oldest is still open").stream;
        assert_eq!(pool.len(1), 0);
        got.write_all(b"ping").await.unwrap();
        let mut server_a = server_a;
        let mut buf = [0u8; 4];
        server_a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping", "it is connection a");
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_none());
    }

    #[tokio::test]
    async fn keeps_at_most_limit_and_expires_idle_ones() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(IdlePool::default());
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (s, server) = pair(&l).await;
            servers.push(server);
            pool.put(7, s, Some(Duration::from_millis(100)), 2);
        }
        assert_eq!(pool.len(7), 2, "limit");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(pool.take(7).is_none(), "idle past keepalive_timeout");
        let (s, mut server) = pair(&l).await;
        pool.put(7, s, Some(Duration::from_millis(100)), 2);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(pool.len(7), 0, "swept");
        // The sweep closed the socket: the server sees end of stream.
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        // Empty, the pool is not swept; the next connection put back starts the sweeps again.
        assert!(!pool.sweeping.load(Relaxed), "an empty pool is not swept");
        let (s, mut server) = pair(&l).await;
        pool.put(7, s, Some(Duration::from_millis(100)), 2);
        assert!(pool.sweeping.load(Relaxed));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(pool.len(7), 0, "swept again");
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
