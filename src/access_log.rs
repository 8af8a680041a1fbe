//! Access log in nginx `combined` format plus `$upstream_addr
//! $upstream_response_time $request_time`. Lines are handed to a writer
//! thread over a channel, so the request path never waits on I/O; the
//! writer batches and flushes whenever it catches up.

use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct AccessLog {
    tx: mpsc::Sender<String>,
}

impl AccessLog {
    /// `stdout`, `off` (returns `None`) or a file path (appended).
    pub fn open(dest: &str) -> std::io::Result<Option<AccessLog>> {
        let out: Box<dyn Write + Send> = match dest {
            "off" => return Ok(None),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(Some(AccessLog { tx }))
    }

    pub fn write(&self, line: String) {
        let _ = self.tx.send(line);
    }
}

fn writer(rx: mpsc::Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

/// `[25/Nov/2026:16:30:00 +0000]`-style local time (UTC), formatted once per second per thread.
pub fn time_local() -> String {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let fmt =
                time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
            *c = (secs, t.format(&fmt).unwrap_or_default());
        }
        c.1.clone()
    })
}
