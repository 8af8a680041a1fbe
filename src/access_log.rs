//! Access log in nginx `combined` format plus `$upstream_addr
//! $upstream_response_time $request_time`. Requests append their line to a
//! shared buffer (no syscall, no thread wake-up on the request path); a
//! writer thread writes the buffer out every 100 ms, or sooner when it grows
//! past 256 KiB. `flush` writes what is pending (graceful exit).

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_BYTES: usize = 256 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    full: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

pub struct AccessLog {
    shared: Arc<Shared>,
}

static GLOBAL: std::sync::OnceLock<Arc<AccessLog>> = std::sync::OnceLock::new();

impl AccessLog {
    /// `stdout`, `off` (returns `None`) or a file path (appended).
    pub fn open(dest: &str) -> std::io::Result<Option<Arc<AccessLog>>> {
        let out: Box<dyn Write + Send> = match dest {
            "off" => return Ok(None),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
            full: Condvar::new(),
            out: Mutex::new(out),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                let pending = {
                    let buf = s.buf.lock().unwrap();
                    let (mut buf, _) = s.full.wait_timeout(buf, FLUSH_EVERY).unwrap();
                    std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_BYTES))
                };
                write_out(&s, &pending);
            })?;
        let log = Arc::new(AccessLog { shared });
        let _ = GLOBAL.set(log.clone());
        Ok(Some(log))
    }

    /// Append one line (with its newline).
    /// Write the line `build` makes, in a buffer this thread keeps.
    pub fn write_line(&self, build: impl FnOnce(&mut String)) {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        LINE.with(|l| {
            let mut l = l.borrow_mut();
            l.clear();
            build(&mut l);
            self.write(&l);
        });
    }

    fn write(&self, line: &str) {
        let mut buf = self.shared.buf.lock().unwrap();
        buf.extend_from_slice(line.as_bytes());
        if buf.len() >= FLUSH_BYTES {
            self.shared.full.notify_one();
        }
    }

    /// Write out everything pending now.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.shared.buf.lock().unwrap());
        write_out(&self.shared, &pending);
    }
}

fn write_out(s: &Shared, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut out = s.out.lock().unwrap();
    let _ = out.write_all(data);
    let _ = out.flush();
}

/// Flush the access log opened by this process, if any (before exiting).
pub fn flush_global() {
    if let Some(l) = GLOBAL.get() {
        l.flush();
    }
}

/// Append `n` in decimal (without `core::fmt`, as the rest of a log line).
pub fn push_num(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// Append a time in seconds with milliseconds (`0.004`), rounded, as nginx
/// writes `$request_time`.
pub fn push_secs(out: &mut String, d: Duration) {
    let ms = (d.as_micros() + 500) / 1000;
    push_num(out, (ms / 1000) as u64);
    out.push('.');
    let frac = (ms % 1000) as u16;
    for div in [100, 10, 1] {
        out.push(char::from(b'0' + (frac / div % 10) as u8));
    }
}

/// Append the time as `25/Nov/2026:16:30:00 +0000`.
pub fn push_time_local(out: &mut String) {
    crate::clock::log_time(|t| out.push_str(t));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_as_core_fmt_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut s = String::new();
            push_num(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for micros in [0u64, 400, 500, 4_000, 999_499, 999_500, 1_234_567, 61_000_000] {
            let d = Duration::from_micros(micros);
            let mut s = String::new();
            push_secs(&mut s, d);
            assert_eq!(
                s,
                format!("{:.3}", (micros as f64 / 1000.0).round() / 1000.0),
                "{micros} µs"
            );
        }
        let mut t = String::new();
        push_time_local(&mut t);
        assert_eq!(t.len(), "25/Nov/2026:16:30:00 +0000".len(), "{t}");
    }
}
