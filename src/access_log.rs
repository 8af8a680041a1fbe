//! Access log in nginx `combined` format plus `$upstream_addr
//! $upstream_response_time $request_time`. Requests append their line to a
//! shared buffer (no syscall on the request path); a writer thread writes
//! the buffer out in small pieces: once it holds `WRITE_AT` bytes, or
//! `FLUSH_EVERY` after its first line, whichever comes first. With nothing
//! pending the writer sleeps until a line arrives. `flush` writes what is
//! pending (graceful exit).
//!
//! The pieces are small on purpose: in the benchmark (ka64, 2 CPUs shared
//! with the load generator) 16 KiB writes gave a lower p99 than 256 KiB
//! ones (bench/HISTORY.md, 2026-11-27). The disk write stays off the worker
//! threads, so a slow disk stalls the writer, never a request.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const WRITE_AT: usize = 16 * 1024;

/// What requests have appended and the writer has not taken yet.
struct Pending {
    data: Vec<u8>,
    /// The writer is waiting for a first line (nothing pending, no timer).
    writer_idle: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
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
            pending: Mutex::new(Pending {
                data: Vec::with_capacity(2 * WRITE_AT),
                writer_idle: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&s))?;
        let log = Arc::new(AccessLog { shared });
        let _ = GLOBAL.set(log.clone());
        Ok(Some(log))
    }

    /// Write the line `build` makes (with its newline), in a buffer this
    /// thread keeps.
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
        let mut p = self.shared.pending.lock().unwrap();
        let before = p.data.len();
        p.data.extend_from_slice(line.as_bytes());
        // Wake the writer once: for the first line (it starts its timer) or
        // when the buffer reaches `WRITE_AT`, not for every line after.
        let crossed = before < WRITE_AT && p.data.len() >= WRITE_AT;
        if p.writer_idle || crossed {
            p.writer_idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// Write out everything pending now.
    pub fn flush(&self) {
        write_pending(&self.shared, self.shared.pending.lock().unwrap(), Vec::new());
    }
}

/// The writer thread: wait for lines, give them up to `FLUSH_EVERY` to
/// reach `WRITE_AT`, write them, repeat. The buffer it writes becomes the
/// next spare, so steady logging allocates nothing.
fn writer(s: &Shared) {
    let mut spare = Vec::with_capacity(2 * WRITE_AT);
    let mut p = s.pending.lock().unwrap();
    loop {
        if p.data.is_empty() {
            p.writer_idle = true;
            p = s.wake.wait_while(p, |p| p.writer_idle).unwrap();
        }
        p = s
            .wake
            .wait_timeout_while(p, FLUSH_EVERY, |p| p.data.len() < WRITE_AT)
            .unwrap()
            .0;
        spare = write_pending(s, p, spare);
        p = s.pending.lock().unwrap();
    }
}

/// Write what is pending, leaving `spare` in its place; returns the written
/// buffer, emptied. The output is locked before `pending` is let go, so
/// pieces reach it in the order they were taken.
fn write_pending(s: &Shared, mut p: MutexGuard<'_, Pending>, spare: Vec<u8>) -> Vec<u8> {
    let mut data = std::mem::replace(&mut p.data, spare);
    let mut out = s.out.lock().unwrap();
    drop(p);
    if !data.is_empty() {
        let _ = out.write_all(&data);
        let _ = out.flush();
    }
    data.clear();
    data
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

/// Append `text` as nginx writes a variable into its access log: `"`,
/// `\`, control bytes and bytes over 0x7e as `\xHH`, so that a quote in a
/// target or a header cannot end a quoted field and forge the rest of the line.
pub fn push_escaped(out: &mut String, text: &[u8]) {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if text.iter().all(|&b| plain(b)) {
        // All visible ASCII: the common case, one scan and one copy.
        out.push_str(std::str::from_utf8(text).unwrap_or_default());
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str("\\x");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
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
    fn lines_are_written_whole_in_order_without_a_flush() {
        let path = std::env::temp_dir().join(format!("portico-access-log-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(path.to_str().unwrap()).unwrap().unwrap();
        let read = || std::fs::read_to_string(&path).unwrap();
        let wait_for = |lines: usize| {
            let t0 = std::time::Instant::now();
            while read().lines().count() < lines && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            read()
        };
        // One line on an idle log: written by the timer, not left pending.
        while !log.shared.pending.lock().unwrap().writer_idle {
            std::thread::sleep(Duration::from_millis(1));
        }
        log.write_line(|l| l.push_str("first\n"));
        assert_eq!(wait_for(1), "first\n");
        // Two threads, far more than one piece each: every line whole, each
        // thread's lines in the order it wrote them.
        let per_thread = 4 * WRITE_AT / 20;
        std::thread::scope(|sc| {
            for t in ["a", "b"] {
                let log = &log;
                sc.spawn(move || {
                    for i in 0..per_thread {
                        log.write_line(|l| {
                            l.push_str(t);
                            push_num(l, i as u64);
                            l.push_str(" ........\n");
                        });
                    }
                });
            }
        });
        let text = wait_for(1 + 2 * per_thread);
        for t in ['a', 'b'] {
            let seq: Vec<usize> = text
                .lines()
                .filter(|l| l.starts_with(t))
                .map(|l| l[1..].trim_end_matches(" ........").parse().unwrap())
                .collect();
            let misplaced = seq.iter().enumerate().position(|(i, &n)| i != n);
            assert!(
                seq.len() == per_thread && misplaced.is_none(),
                "thread {t}: {} of {per_thread} lines, first out of place at {misplaced:?}",
                seq.len()
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn quotes_backslashes_and_odd_bytes_are_escaped_as_nginx_escapes_them() {
        let esc = |b: &[u8]| {
            let mut s = String::new();
            push_escaped(&mut s, b);
            s
        };
        assert_eq!(esc(b"/a?b=1&c=%20"), "/a?b=1&c=%20");
        assert_eq!(esc(b""), "");
        assert_eq!(esc(b"x\" 200 \"y"), "x\\x22 200 \\x22y");
        assert_eq!(esc(b"a\\b"), "a\\x5Cb");
        assert_eq!(
            esc(b"\x16\x03\x01\r\n\x7f\xc3\xa9"),
            "\\x16\\x03\\x01\\x0D\\x0A\\x7F\\xC3\\xA9"
        );
    }

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
