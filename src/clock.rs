//! A coarse monotonic clock for timestamps where a few milliseconds do not
//! matter (idle upstream connections, passive health windows): the kernel's
//! `CLOCK_MONOTONIC_COARSE`, its time at the last tick, read from the vDSO
//! without the cycle counter, and kept as plain milliseconds, so comparing
//! two costs a subtraction (`Instant`'s `duration_since` normalizes
//! seconds and nanoseconds each time).

/// Milliseconds on the coarse monotonic clock (since boot; never 0).
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is one Linux has had since 2.6.32.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn coarse_time_keeps_pace_with_instant() {
        let (c0, i0) = (coarse_ms(), Instant::now());
        std::thread::sleep(Duration::from_millis(120));
        let (c1, i1) = (coarse_ms(), Instant::now());
        let coarse = c1 - c0;
        let fine = i1.duration_since(i0).as_millis() as u64;
        // The coarse clock lags by at most a tick (10 ms at HZ=100) at either end.
        assert!(
            coarse + 25 >= fine && coarse <= fine + 25,
            "coarse {coarse} ms, fine {fine} ms"
        );
    }
}
