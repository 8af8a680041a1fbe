//! Timeouts on a timer kept from one wait to the next.
//!
//! A keep-alive connection waits many times: for each request from the
//! client, for each response from the server. A fresh timer per wait
//! (`tokio::time::timeout`, or Pingora's `pingora_timeout`, which shares
//! one timer among all waits ending in the same 10 ms) costs a lock, a
//! lookup or wheel insertion, and an allocation each time. An [`Alarm`]
//! is one tokio timer for all of a connection's waits, and a wait does not
//! even move it: the wait notes when it is due (on the coarse clock, a
//! subtraction to read), and only when the timer rings does the alarm look
//! at that note and either end the wait or set the timer again for it. A
//! wait due before the timer rings sets it earlier at once.
//!
//! So a busy connection's timer rings about once per timeout, not per
//! request; the timer is made on the first wait that does not finish at
//! once, so a wait whose result is already there costs nothing. A wait ends
//! up to [`SLACK_MS`] after its time, never before it (the coarse clock
//! lags by up to a tick), as with Pingora's 10 ms timers.

use crate::clock::coarse_ms;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How late a wait may end: a tick of the coarse clock at `HZ=100`.
pub const SLACK_MS: u64 = 10;

/// The longest wait kept exactly (a year): longer ones are as good as endless.
const MAX_MS: u64 = 365 * 24 * 3600 * 1000;

/// A wait ran out of time.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// A timer for one after another of a connection's waits (see the module
/// documentation). The timer is boxed, so that it stays put in tokio's
/// timer wheel while the alarm is moved.
#[derive(Default)]
pub struct Alarm {
    timer: Option<Pin<Box<Sleep>>>,
    /// Where the timer is set (coarse ms).
    set_ms: u64,
    /// When the current wait is due (coarse ms).
    due_ms: u64,
}

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

    /// A wait of `limit` starts: note when it is due, and set the timer
    /// only if there is none or it would ring too late.
    fn arm(&mut self, limit: Duration) {
        let now = coarse_ms();
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(MAX_MS).min(MAX_MS);
        self.due_ms = now + limit_ms + SLACK_MS;
        if self.timer.is_none() || self.due_ms < self.set_ms {
            self.set(now);
        }
    }

    /// Set the timer for the current wait's due time (`now`: coarse ms).
    fn set(&mut self, now: u64) {
        let deadline = Instant::now() + Duration::from_millis(self.due_ms.saturating_sub(now));
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.set_ms = self.due_ms;
    }

    /// Ready once the current wait is due.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let timer = self.timer.as_mut().expect("set when armed");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer rang at the time it was set to: the wait may be due later.
            let now = coarse_ms();
            if now >= self.due_ms {
                return Poll::Ready(());
            }
            self.set(now);
        }
    }
}

/// The future of [`Alarm::within`].
pub struct Within<'a, F> {
    fut: F,
    alarm: &'a mut Alarm,
    limit: Duration,
    /// This wait's due time is noted.
    armed: bool,
}

impl<F: Future + Unpin> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if !this.armed {
            this.armed = true;
            this.alarm.arm(this.limit);
        }
        this.alarm.poll_due(cx).map(|()| Err(Elapsed))
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
        assert!(alarm.timer.is_none(), "a wait that finished at once made no timer");
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
    async fn waits_due_later_are_noted_and_one_due_sooner_sets_the_timer_earlier() {
        let mut alarm = Alarm::default();
        // A long wait that finishes in time leaves the timer set far ahead.
        let quick = tokio::time::sleep(Duration::from_millis(20));
        assert_eq!(
            alarm.within(Duration::from_secs(60), std::pin::pin!(quick)).await,
            Ok(())
        );
        // A shorter wait sets it earlier; the ones after it are due later and
        // only noted: when the timer rings for the first of them (together they
        // take 240 ms), the wait in progress goes on and the timer is set again.
        for round in 0..8 {
            let quick = tokio::time::sleep(Duration::from_millis(30));
            assert_eq!(
                alarm.within(Duration::from_millis(100), std::pin::pin!(quick)).await,
                Ok(()),
                "{round}"
            );
        }
        // A wait due sooner than the timer is set rings on time.
        let started = std::time::Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(
            alarm.within(Duration::from_millis(50), std::pin::pin!(slow)).await,
            Err(Elapsed)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
