//! The parking lot for idle keep-alive connections.
//!
//! A plain HTTP/1 connection that has waited `server.idle_park_after`
//! (default 1s) for its next request leaves its task: its socket comes off
//! tokio's reactor and is watched, with every other parked connection of
//! the listener, by one epoll instance ([`mio::Poll`]) that one task of the
//! listener waits on ([`Lot::run`]). Parked, a connection is a [`Slot`]
//! here, 24 bytes, instead of a task's cell (512 bytes), tokio's I/O
//! registration (128), the [`Conn`](super::conn::Conn) (160) and its wait's
//! timer (104). nginx keeps an idle connection in about 0.6 KiB.
//!
//! - When the client sends its next request (or closes), the connection gets
//!   a new task and is served as if it had waited in one.
//! - `keepalive_timeout` still bounds the whole idle time: the lot closes a
//!   connection whose time ran out while parked. Its task sleeps until the
//!   earliest deadline of the connections parked (or, just after one parks,
//!   until the next [`SWEEP`] that gives memory back), so a lot of idle
//!   connections, or an empty one, does not wake up in between.
//! - At shutdown the lot serves the connections whose next request is
//!   already here and closes the others, as waiting tasks do.
//!
//! Parking costs about five system calls (off tokio's epoll, onto the
//! lot's, the lot's wait, off it, back onto tokio's) and a task spawn, only
//! for connections idle past the threshold, so busy keep-alive connections
//! never pay it. TLS connections are not parked (their TLS state is most
//! of what they hold).

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use pingora_core::server::ShutdownWatch;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// After a connection parks, the lot gives freed memory back at the
/// sweeps this far apart ([`GIVE_BACK_SWEEPS`] of them).
pub const SWEEP: Duration = Duration::from_millis(500);
/// Readiness events taken from the lot's epoll per call.
const BATCH: usize = 256;
/// Sweeps that give freed memory back to the system after a connection
/// parks: the one after it, and the next, for what is freed in between
/// (tokio lets go of a socket's registration at its reactor's next turn).
const GIVE_BACK_SWEEPS: u8 = 2;

/// A connection waiting in the lot.
#[derive(Debug)]
pub struct Parked {
    /// (The peer's address is asked of the socket again on resuming.)
    pub tcp: std::net::TcpStream,
    /// Requests served on the connection so far.
    pub served: u32,
    /// When its keep-alive time runs out (`crate::clock::coarse_ms`).
    pub deadline_ms: u64,
    /// Its place in the listener's count of open connections.
    pub counted: Option<super::open::Counted>,
}

/// One place in the lot; `gen` tells a reused place from its previous
/// occupant, so an event can never reach the wrong connection.
struct Slot {
    gen: u32,
    parked: Option<Parked>,
}

#[derive(Default)]
struct Slots {
    list: Vec<Slot>,
    free: Vec<u32>,
    /// Sweeps left that give memory back ([`GIVE_BACK_SWEEPS`]).
    give_back: u8,
    /// When the lot's task sweeps next (`crate::clock::coarse_ms`): the
    /// earliest deadline parked, or sooner to give memory back. `None`:
    /// nothing to do until a connection parks.
    wake_at: Option<u64>,
    /// Shut down: nothing is parked any more.
    closed: bool,
}

impl Slots {
    /// Connections parked now: every place not on the free list.
    fn len(&self) -> usize {
        self.list.len() - self.free.len()
    }

    fn token(&self, i: u32) -> Token {
        Token(((self.list[i as usize].gen as usize) << 32) | i as usize)
    }

    /// The connection `token` names, out of its place.
    fn take(&mut self, token: Token) -> Option<Parked> {
        let (i, gen) = (token.0 & 0xffff_ffff, (token.0 >> 32) as u32);
        let slot = self.list.get_mut(i)?;
        if slot.gen != gen {
            return None;
        }
        let p = slot.parked.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(i as u32);
        crate::metrics::get().parked.dec();
        Some(p)
    }
}

pub struct Lot {
    /// Locked only by the lot's task.
    poll: Mutex<Poll>,
    registry: Registry,
    slots: Mutex<Slots>,
    /// `wake_at` moved earlier: the lot's task sleeps again, until then.
    rescheduled: tokio::sync::Notify,
}

/// The lot's epoll descriptor, as tokio watches it (owned by the `Poll`).
struct EpollFd(RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Lot {
    pub fn new() -> io::Result<Lot> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(Lot {
            poll: Mutex::new(poll),
            registry,
            slots: Mutex::default(),
            rescheduled: tokio::sync::Notify::new(),
        })
    }

    /// Connections parked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }

    /// Park `p` until its socket is readable, its deadline passes or the
    /// server shuts down. After shutdown it is closed instead.
    pub fn park(&self, p: Parked) {
        let fd = p.tcp.as_raw_fd();
        let mut slots = self.slots.lock().unwrap();
        if slots.closed {
            return;
        }
        let i = match slots.free.pop() {
            Some(i) => i,
            None => {
                slots.list.push(Slot { gen: 0, parked: None });
                (slots.list.len() - 1) as u32
            }
        };
        // Sweep at its deadline, and one SWEEP from now to give back its task's memory.
        let due = p.deadline_ms.min(crate::clock::coarse_ms() + SWEEP.as_millis() as u64);
        slots.list[i as usize].parked = Some(p);
        slots.give_back = GIVE_BACK_SWEEPS;
        if slots.wake_at.is_none_or(|t| due < t) {
            slots.wake_at = Some(due);
            self.rescheduled.notify_one();
        }
        crate::metrics::get().parked.inc();
        let token = slots.token(i);
        // Under the lock, so that the lot's task finds the connection when the event comes.
        if let Err(e) = self.registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
            log::warn!("cannot park an idle connection: {e}");
            slots.take(token);
        }
    }

    /// Close up to `n` of the connections parked longest (the earliest
    /// deadlines): the listener needs room for new ones. Returns how many.
    pub fn close_longest_idle(&self, n: usize) -> usize {
        let mut slots = self.slots.lock().unwrap();
        let mut parked: Vec<(u64, u32)> = (0..slots.list.len() as u32)
            .filter_map(|i| slots.list[i as usize].parked.as_ref().map(|p| (p.deadline_ms, i)))
            .collect();
        let n = n.min(parked.len());
        if n < parked.len() {
            parked.select_nth_unstable(n);
        }
        let closing: Vec<Parked> = parked[..n]
            .iter()
            .filter_map(|&(_, i)| {
                let token = slots.token(i);
                slots.take(token)
            })
            .collect();
        drop(slots);
        // Closing the sockets takes them out of the lot's epoll as well.
        closing.len()
    }

    /// The lot's task: resume each parked connection whose socket turns
    /// readable (with `resume`), close those whose deadline passes, and at
    /// shutdown resume the readable ones and close the rest.
    pub async fn run(&self, mut resume: impl FnMut(Parked), mut shutdown: ShutdownWatch) {
        let epfd = EpollFd(self.poll.lock().unwrap().as_raw_fd());
        // SAFETY: the descriptor belongs to `self.poll`, which outlives `ready`
        // (a local of this borrow of `self`) and never changes.
        let ready = match unsafe { AsyncFd::register_with_interest(epfd, tokio::io::Interest::READABLE) } {
            Ok(r) => r,
            Err(e) => {
                log::error!("idle connections cannot be parked: {e}");
                self.slots.lock().unwrap().closed = true;
                return;
            }
        };
        let mut events = Events::with_capacity(BATCH);
        let sweep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sweep);
        let mut armed = None; // the `wake_at` that `sweep` is set for
        loop {
            let wake_at = self.slots.lock().unwrap().wake_at;
            if wake_at != armed {
                if let Some(t) = wake_at {
                    // Coarse milliseconds to tokio's clock; one more so the sweep finds the deadline passed.
                    let wait = t.saturating_sub(crate::clock::coarse_ms()) + 1;
                    sweep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
                }
                armed = wake_at;
            }
            tokio::select! {
                guard = ready.readable() => {
                    let Ok(mut guard) = guard else { return };
                    if self.wake(&mut events, &mut resume) < BATCH {
                        guard.clear_ready();
                    }
                }
                _ = &mut sweep, if armed.is_some() => {
                    armed = None; // set it again, even for the same time
                    self.expire(crate::clock::coarse_ms());
                }
                _ = self.rescheduled.notified() => {}
                changed = shutdown.changed() => match changed {
                    Ok(()) if !*shutdown.borrow() => {}
                    Ok(()) => return self.close(&mut events, &mut resume),
                    Err(_) => return, // no sender: no shutdown signal will come
                },
            }
        }
    }

    /// Resume the connections readable now; returns how many events came.
    fn wake(&self, events: &mut Events, resume: &mut impl FnMut(Parked)) -> usize {
        if let Err(e) = self.poll.lock().unwrap().poll(events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("parked connections: {e}");
            }
            return 0;
        }
        let mut n = 0;
        for ev in events.iter() {
            n += 1;
            let Some(p) = self.slots.lock().unwrap().take(ev.token()) else {
                continue;
            };
            let _ = self.registry.deregister(&mut SourceFd(&p.tcp.as_raw_fd()));
            if ev.is_error() {
                continue; // reset by the client: closed here
            }
            resume(p);
        }
        n
    }

    /// Close the connections whose keep-alive time ran out by `now`, and
    /// set when to sweep next. Connections parked lately left their tasks'
    /// memory free: give it back to the system (`crate::alloc::give_back`),
    /// at this sweep and the next, one [`SWEEP`] apart.
    fn expire(&self, now: u64) {
        let mut slots = self.slots.lock().unwrap();
        slots.wake_at = None;
        if slots.len() == 0 {
            // Nothing is registered (the lot's own task took every connection out):
            // let the memory of a past crowd go.
            if slots.list.capacity() > 64 {
                slots.list = Vec::new();
                slots.free = Vec::new();
            }
            return;
        }
        let mut next: Option<u64> = None;
        for i in 0..slots.list.len() as u32 {
            let Some(deadline) = slots.list[i as usize].parked.as_ref().map(|p| p.deadline_ms) else {
                continue;
            };
            if deadline <= now {
                let token = slots.token(i);
                // Closing the socket takes it out of the lot's epoll as well.
                drop(slots.take(token));
            } else {
                next = crate::clock::earliest(next, deadline);
            }
        }
        let give_back = slots.give_back > 0;
        slots.give_back = slots.give_back.saturating_sub(1);
        if slots.give_back > 0 {
            let again = now + SWEEP.as_millis() as u64;
            next = crate::clock::earliest(next, again);
        }
        slots.wake_at = next;
        drop(slots);
        if give_back {
            crate::alloc::give_back();
        }
    }

    /// Shutdown: resume the connections whose request is already here,
    /// close the others, and park none from now on.
    fn close(&self, events: &mut Events, resume: &mut impl FnMut(Parked)) {
        while self.wake(events, resume) == BATCH {}
        let mut slots = self.slots.lock().unwrap();
        slots.closed = true;
        crate::metrics::get().parked.sub(slots.len() as i64);
        slots.list = Vec::new();
        slots.free = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    fn pair(l: &TcpListener) -> (TcpStream, std::net::TcpStream) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    // Two threads: the test's blocking reads must not hold up the lot's task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_connection_resumes_when_readable_expires_at_its_deadline_and_closes_at_shutdown() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lot = Arc::new(Lot::new().unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let lot = lot.clone();
            async move { lot.run(move |p| tx.send(p).unwrap(), stop_rx).await }
        });
        let far = crate::clock::coarse_ms() + 60_000;
        let (mut talker, s1) = pair(&l);
        let (_quiet, s2) = pair(&l);
        let (expiring, s3) = pair(&l);
        lot.park(Parked {
            tcp: s1,
            served: 3,
            deadline_ms: far,
            counted: None,
        });
        lot.park(Parked {
            tcp: s2,
            served: 1,
            deadline_ms: far,
            counted: None,
        });
        lot.park(Parked {
            tcp: s3,
            served: 1,
            deadline_ms: crate::clock::coarse_ms() + 100,
            counted: None,
        });
        assert_eq!(lot.len(), 3);

        // Nothing is resumed while the clients are silent.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());

        talker.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let p = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.served, 3, "the connection that spoke, as parked");
        assert_eq!(p.tcp.peer_addr().unwrap(), talker.local_addr().unwrap());
        let mut buf = [0; 64];
        assert_eq!(p.tcp.peek(&mut buf).unwrap(), 18, "its request is still there to read");

        // The third connection's deadline passes: the lot closes it (its client reads EOF).
        expiring.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            std::io::Read::read(&mut &expiring, &mut buf).unwrap(),
            0,
            "closed by the sweep"
        );
        assert_eq!(lot.len(), 1);

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lot.len(), 0, "closed at shutdown");
        let (_c, s4) = pair(&l);
        lot.park(Parked {
            tcp: s4,
            served: 1,
            deadline_ms: far,
            counted: None,
        });
        assert_eq!(lot.len(), 0, "nothing parks after shutdown");
    }

    #[test]
    fn at_the_bound_the_connections_parked_longest_close_first() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lot = Lot::new().unwrap();
        let now = crate::clock::coarse_ms();
        // Deadlines say how long each has waited: the earliest, the longest.
        let clients: Vec<TcpStream> = [30_000, 10_000, 50_000, 20_000]
            .into_iter()
            .map(|left| {
                let (client, server) = pair(&l);
                lot.park(Parked {
                    tcp: server,
                    served: 1,
                    deadline_ms: now + left,
                    counted: None,
                });
                client
            })
            .collect();
        assert_eq!(lot.close_longest_idle(2), 2);
        assert_eq!(lot.len(), 2);
        let closed = |c: &TcpStream| {
            c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            std::io::Read::read(&mut &*c, &mut [0; 8]).is_ok_and(|n| n == 0)
        };
        let which: Vec<bool> = clients.iter().map(closed).collect();
        assert_eq!(which, [false, true, false, true]);
        assert_eq!(lot.close_longest_idle(5), 2, "no more than are parked");
        assert_eq!(lot.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lot_sleeps_until_the_earliest_deadline_and_not_at_all_when_empty() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lot = Arc::new(Lot::new().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let lot = lot.clone();
            async move { lot.run(drop, stop_rx).await }
        });
        let wake_at = || lot.slots.lock().unwrap().wake_at;
        let closed_within = |client: &TcpStream, secs: u64| {
            client.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
            std::io::Read::read(&mut &*client, &mut [0; 8])
                .map(|n| n == 0)
                .unwrap_or(false)
        };
        // A connection parked until `deadline_ms`; its client end.
        let park_until = |deadline_ms: u64| {
            let (client, server) = pair(&l);
            lot.park(Parked {
                tcp: server,
                served: 1,
                deadline_ms,
                counted: None,
            });
            client
        };
        assert_eq!(wake_at(), None, "nothing parked yet");

        // One connection with a far deadline: after the sweeps that give memory
        // back, the lot sleeps until that deadline.
        let far = crate::clock::coarse_ms() + 60_000;
        let _far_client = park_until(far);
        assert!(wake_at().is_some_and(|t| t < far), "a sweep soon, to give memory back");
        tokio::time::sleep(SWEEP * 2 + Duration::from_millis(300)).await;
        assert_eq!(wake_at(), Some(far), "then only the deadline");

        // A connection parked later with an earlier deadline (a reload shortened
        // keepalive_timeout) still closes at its own.
        let soon_client = park_until(crate::clock::coarse_ms() + 200);
        assert!(closed_within(&soon_client, 5), "closed at its deadline");
        assert_eq!(lot.len(), 1);

        // The far one resumes (taken out, as the lot's task does): the next sweep
        // finds the lot empty and leaves nothing to wake up for, until a
        // connection parks again.
        {
            let mut slots = lot.slots.lock().unwrap();
            let i = (0..slots.list.len() as u32).find(|&i| slots.list[i as usize].parked.is_some());
            let token = slots.token(i.unwrap());
            drop(slots.take(token));
        }
        lot.expire(crate::clock::coarse_ms());
        assert_eq!(wake_at(), None, "empty: no sweep due");
        let client = park_until(crate::clock::coarse_ms() + 100);
        assert!(closed_within(&client, 5), "the lot woke up again");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
