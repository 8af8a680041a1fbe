//! Timeouts on a timer kept from one wait to the next.
//!
//! A keep-alive connection waits many times: for each request from the
//! client, for each response from the server. A fresh timer per wait
//! (`tokio::time::timeout`, or Pingora's `pingora_timeout`, which shares
//! one timer among all waits ending in the same 10 ms) costs a lock, a
//! lookup or wheel insertion, and an allocation each time. An [`Alarm`]
//! is one tokio timer for all of a connection's waits: each wait moves
//! its deadline, and a later deadline is only a new mark on the entry
//! already in tokio's timer wheel (tokio checks the mark when the old
//! time comes and files the entry again). Only a deadline earlier than
//! the last one takes the wheel's lock.
//!
//! So an alarm suits waits of one length in a row (each connection's
//! kind of wait gets its own), and the timer is made on the first wait
//! that does not finish at once: a wait whose result is already there
//! costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A wait ran out of time.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// A timer for one after another of a connection's waits (see the module
/// documentation). Boxed, so that it stays put in tokio's timer wheel
/// while the alarm is moved, and is one pointer when there is none yet.
#[derive(Default)]
pub struct Alarm(Option<Pin<Box<Sleep>>>);

impl Alarm {
    /// `fut`'s output, or [`Elapsed`] if it is not ready within `limit`
    /// (counted from the first poll that finds it pending). `fut` is
    /// pinned by the caller (`std::pin::pin!`), which keeps this future small.
    pub fn within<F: Future + Unpin>(&mut self, limit: Duration, fut: F) -> Within<'_, F> {
        Within {
            fut,
            alarm: self,
            limit,
            armed: false,
        }
    }

    /// Ring at `deadline`: the same timer moved, or a new one.
    fn set(&mut self, deadline: Instant) -> Pin<&mut Sleep> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.0.as_mut().expect("just set").as_mut()
    }
}

/// The future of [`Alarm::within`].
pub struct Within<'a, F> {
    fut: F,
    alarm: &'a mut Alarm,
    limit: Duration,
    /// The deadline of this wait is set.
    armed: bool,
}

impl<F: Future + Unpin> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let sleep = if this.armed {
            this.alarm.0.as_mut().expect("set when armed").as_mut()
        } else {
            this.armed = true;
            this.alarm.set(Instant::now() + this.limit)
        };
        sleep.poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_waits_pass_and_slow_ones_time_out_again_and_again() {
        let mut alarm = Alarm::default();
        assert_eq!(
            alarm
                .within(Duration::from_millis(10), std::pin::pin!(async { 7 }))
                .await,
            Ok(7)
        );
        assert!(alarm.0.is_none(), "a wait that finished at once made no timer");
        for round in 0..3 {
            let started = std::time::Instant::now();
            let slow = tokio::time::sleep(Duration::from_secs(5));
            assert_eq!(
                alarm.within(Duration::from_millis(30), std::pin::pin!(slow)).await,
                Err(Elapsed),
                "{round}"
            );
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(30) && took < Duration::from_secs(2),
                "{took:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_later_deadline_moves_the_timer_and_a_shorter_one_still_rings() {
        let mut alarm = Alarm::default();
        // A long wait that finishes in time leaves the timer set far ahead.
        let quick = tokio::time::sleep(Duration::from_millis(20));
        assert_eq!(
            alarm.within(Duration::from_secs(60), std::pin::pin!(quick)).await,
            Ok(())
        );
        // Waits that finish in time, each moving the deadline later, never
        // ring at an earlier one's deadline (together they take 240 ms).
        for round in 0..8 {
            let quick = tokio::time::sleep(Duration::from_millis(30));
            assert_eq!(
                alarm.within(Duration::from_millis(100), std::pin::pin!(quick)).await,
                Ok(()),
                "{round}"
            );
        }
        // A shorter deadline than the one set rings on time.
        let started = std::time::Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(
            alarm.within(Duration::from_millis(50), std::pin::pin!(slow)).await,
            Err(Elapsed)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
