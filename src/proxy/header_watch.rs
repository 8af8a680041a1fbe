//! `header_timeout`: a limit on the *total* time a server may take to send
//! its response header, however it dribbles it out (`read_timeout` only
//! bounds each read). Pingora has no such knob, so a watchdog task holds a
//! duplicate of the upstream socket and shuts the socket down when the
//! limit passes; Pingora's pending read then ends, and the failure is
//! classified as a timeout (504, `timeout` retry condition). The duplicate
//! descriptor means the watchdog can never touch a reused descriptor number.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct HeaderWatch {
    fired: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HeaderWatch {
    /// Watch the upstream socket `fd` for `limit`. `None` if it cannot be duplicated.
    pub fn start(fd: RawFd, limit: Duration) -> Option<Self> {
        // SAFETY: Pingora hands us the descriptor of the live upstream
        // connection, open for the duration of this call; we only dup it.
        let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()?;
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            flag.store(true, Relaxed);
            // shutdown(2) acts on the socket itself, so it also ends Pingora's read.
            let _ = std::net::TcpStream::from(own).shutdown(std::net::Shutdown::Both);
        });
        Some(HeaderWatch { fired, task })
    }

    /// The limit passed before the header arrived.
    pub fn fired(&self) -> bool {
        self.fired.load(Relaxed)
    }
}

impl Drop for HeaderWatch {
    /// Cancelling the task drops its duplicate descriptor.
    fn drop(&mut self) {
        self.task.abort();
    }
}
