//! A coarse monotonic clock for timestamps where a few milliseconds do not
//! matter (idle upstream connections, passive health windows): the kernel's
//! `CLOCK_MONOTONIC_COARSE`, its time at the last tick, read from the vDSO
//! without the cycle counter, and kept as plain milliseconds, so comparing
//! two costs a subtraction (`Instant`'s `duration_since` normalizes
//! seconds and nanoseconds each time). Also the texts of the current second
//! (the response `Date`, the access log's time), made once a second per
//! thread from the coarse real-time clock.

use std::cell::RefCell;
use std::thread::LocalKey;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// The time on `clock`, one of the kernel's coarse clocks (its time at the
/// last tick, read from the vDSO without the cycle counter).
fn coarse(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the coarse clocks are ones Linux has had since 2.6.32.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts
}

/// The earlier of a wake-up time already set (`None`: none yet) and `t`.
pub fn earliest<T: Ord>(set: Option<T>, t: T) -> Option<T> {
    Some(match set {
        Some(s) => s.min(t),
        None => t,
    })
}

/// Milliseconds on the coarse monotonic clock (since boot; never 0).
pub fn coarse_ms() -> u64 {
    let ts = coarse(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

/// Seconds since the Unix epoch on the coarse real-time clock (it may lag
/// a few milliseconds).
fn coarse_unix_secs() -> i64 {
    coarse(libc::CLOCK_REALTIME_COARSE).tv_sec
}

/// A thread's text of one second, made again when the second changes.
type PerSecond = RefCell<(i64, String)>;

/// `f` on the text `format` makes of the current second (UTC), cached in
/// `cache` for the rest of that second.
fn this_second<R>(cache: &'static LocalKey<PerSecond>, format: &[BorrowedFormatItem], f: impl FnOnce(&str) -> R) -> R {
    let secs = coarse_unix_secs();
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            *c = (secs, t.format(format).unwrap_or_default());
        }
        f(&c.1)
    })
}

/// The current time as an HTTP `Date` value: `Thu, 26 Nov 2026 13:05:00 GMT`.
pub fn http_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static DATE: PerSecond = const { RefCell::new((i64::MIN, String::new())) };
    }
    let format =
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    this_second(&DATE, format, f)
}

/// The current time as nginx's `$time_local` in UTC: `26/Nov/2026:13:05:00 +0000`.
pub fn log_time<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static TIME: PerSecond = const { RefCell::new((i64::MIN, String::new())) };
    }
    let format = format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    this_second(&TIME, format, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn dates_read_as_http_and_nginx_write_them() {
        let date = http_date(str::to_string);
        let parsed = httpdate::parse_http_date(&date).expect("an IMF-fixdate");
        let now = std::time::SystemTime::now();
        let off = now.duration_since(parsed).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(2), "{date} is now");
        assert_eq!(date.len(), "Thu, 26 Nov 2026 13:05:00 GMT".len(), "{date}");
        let logged = log_time(str::to_string);
        assert_eq!(logged.len(), "26/Nov/2026:13:05:00 +0000".len(), "{logged}");
        assert_eq!(&logged[..2], &date[5..7], "the same day");
    }

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
