//! A value that is slow to build, built on a thread of its own while the
//! gateway already serves; the few requests that need it before it is ready
//! wait for it.
//!
//! Pingora's upstream connectors are the case: each one loads the system's
//! CA bundle twice (once in `SslConnector::builder`, once more in Pingora),
//! about 30 ms a load with OpenSSL 3.0, and a listener needs three of them
//! (the lean path's transport and Pingora's HTTP/1 and HTTP/2 connectors).
//! Built before listening, they made up nearly all of a gateway's 250-300 ms
//! start. Most requests (HTTP/1 to plain TCP servers, the lean path) never
//! touch them.
//!
//! Building starts when the listening service starts (after Pingora's
//! daemonizing fork, which would lose an earlier thread), or at the first
//! [`Warming::get`], whichever comes first.

use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

type Build<T> = Box<dyn FnOnce() -> T + Send>;

struct Inner<T> {
    value: OnceLock<T>,
    /// Wakes the waiters once `value` is set.
    ready: Notify,
    /// Taken by whoever starts the build.
    build: Mutex<Option<Build<T>>>,
    what: &'static str,
}

/// A `T` built once, off the serving threads. Clones share it.
pub struct Warming<T>(Arc<Inner<T>>);

impl<T> Clone for Warming<T> {
    fn clone(&self) -> Self {
        Warming(self.0.clone())
    }
}

impl<T: Send + Sync + 'static> Warming<T> {
    /// `what` names the value in the error if building it panics.
    pub fn new(what: &'static str, build: impl FnOnce() -> T + Send + 'static) -> Self {
        Warming(Arc::new(Inner {
            value: OnceLock::new(),
            ready: Notify::new(),
            build: Mutex::new(Some(Box::new(build))),
            what,
        }))
    }

    /// Start building on a new thread, unless it has started already.
    pub fn start(&self) {
        let Some(build) = self.0.build.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let inner = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("build {}", inner.what))
            .spawn(move || finish(&inner, build));
        if let Err(e) = spawned {
            // The thread and its closure are gone; nothing can build the value now.
            eprintln!("portico: cannot start a thread to build {}: {e}", self.0.what);
            std::process::exit(1);
        }
    }

    /// The value, if it is built.
    pub fn now(&self) -> Option<&T> {
        self.0.value.get()
    }

    /// The value, waiting for it to be built (and starting the build if
    /// nothing has yet). Callers on a connection's path call this inside a
    /// boxed future, so the waiter entry is not part of what an idle
    /// connection keeps.
    pub async fn get(&self) -> &T {
        if let Some(v) = self.0.value.get() {
            return v;
        }
        self.start();
        loop {
            let ready = self.0.ready.notified();
            tokio::pin!(ready);
            // Registered before the second look, so a build finishing in
            // between still wakes this waiter.
            ready.as_mut().enable();
            if let Some(v) = self.0.value.get() {
                return v;
            }
            ready.await;
        }
    }
}

fn finish<T>(inner: &Inner<T>, build: Build<T>) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
        Ok(v) => {
            let _ = inner.value.set(v);
            inner.ready.notify_waiters();
            // OpenSSL allocates with the C library's malloc, here in this
            // thread's arena: once the waiters are on their way, hand back
            // what the build freed (idle RSS 1.2 MiB lower, `bench/README.md`,
            // "Start-up").
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only returns free memory of the C heap to the system.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        Err(_) => {
            // As a panic while starting up would have: the waiters could only hang.
            eprintln!("portico: building {} failed; exiting", inner.what);
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_before_the_build_get_the_value_once_it_is_built() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Warming::new("test value", {
            let builds = builds.clone();
            move || {
                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                go_rx.recv().unwrap();
                42u32
            }
        });
        assert!(w.now().is_none());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let w = w.clone();
                tokio::spawn(async move { *w.get().await })
            })
            .collect();
        w.start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiters.iter().all(|t| !t.is_finished()),
            "nothing to get before the build ends"
        );
        assert!(w.now().is_none());
        go_tx.send(()).unwrap();
        for t in waiters {
            let got = tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
            assert_eq!(got, 42);
        }
        assert_eq!(w.now(), Some(&42));
        assert_eq!(*w.get().await, 42);
        w.start();
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1, "built once");
    }

    #[tokio::test]
    async fn the_first_get_starts_the_build() {
        let w = Warming::new("test value", || "built".to_string());
        let got = tokio::time::timeout(Duration::from_secs(5), w.get()).await.unwrap();
        assert_eq!(got, "built");
    }
}
