//! Passing bytes both ways between a client and a server connection, with
//! half-closes passed on (the side that ends its sending gets its peer's
//! write side shut, the other direction goes on), each side's bytes
//! counted, and the pair closed when neither sends anything for the idle
//! timeout.
//!
//! tokio's `copy_bidirectional` does the copying part, but zeroes its two
//! 16 KiB buffers for every connection and shuts the write side of both
//! sockets even when the pair is closed right after (a `close` sends that
//! FIN anyway): with a new connection per request that was 2% of the
//! CPU and one system call of ten. [`Flow`] does without both.

use crate::sockio;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from each side, and when the last were (ms on the coarse clock).
#[derive(Default)]
pub struct Tally {
    pub from_client: AtomicU64,
    pub from_server: AtomicU64,
    last_ms: AtomicU64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their sending.
    Closed,
    /// Nothing either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, say).
    Failed(io::Error),
}

/// Per-side read buffer (nginx's stream `proxy_buffer_size` is 16k).
const BUFFER: usize = 16 * 1024;

/// Relay until both sides are done, one fails, or `idle` passes with
/// nothing read from either.
/// `client_tls`: the client's sending is always ended properly (a TLS
/// close_notify), not left to the socket's close.
pub async fn relay<C>(client: C, server: TcpStream, idle: Duration, tally: &Tally, client_tls: bool) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    tally.last_ms.store(crate::clock::coarse_ms(), Relaxed);
    let mut client = Metered {
        io: client,
        read: &tally.from_client,
        last_ms: &tally.last_ms,
    };
    let mut server = Metered {
        io: Direct(server),
        read: &tally.from_server,
        last_ms: &tally.last_ms,
    };
    let (mut up, mut down) = (Flow::new(), Flow::new());
    let copy = std::future::poll_fn(|cx| {
        if !up.done {
            let last = down.done;
            if let Poll::Ready(r) = up.poll(cx, &mut client, &mut server, !last) {
                r?;
            }
        }
        if !down.done {
            let last = up.done;
            if let Poll::Ready(r) = down.poll(cx, &mut server, &mut client, !last || client_tls) {
                r?;
            }
        }
        match up.done && down.done {
            true => Poll::Ready(Ok::<(), io::Error>(())),
            false => Poll::Pending,
        }
    });
    tokio::pin!(copy);
    let idle_ms = idle.as_millis() as u64;
    loop {
        let quiet = crate::clock::coarse_ms().saturating_sub(tally.last_ms.load(Relaxed));
        if quiet >= idle_ms {
            return End::Idle;
        }
        let wait = Duration::from_millis(idle_ms - quiet);
        // The timer is set again only when it runs out, not at each read.
        match tokio::time::timeout(wait, &mut copy).await {
            Ok(Ok(_)) => return End::Closed,
            Ok(Err(e)) => return End::Failed(e),
            Err(_) => continue,
        }
    }
}

/// One direction of a relay: bytes read from one side, not yet all
/// written to the other.
struct Flow {
    /// What the last read brought (its length), in a buffer never zeroed.
    buf: Vec<u8>,
    written: usize,
    /// The reading side has ended its sending.
    eof: bool,
    /// Written since the writer was last flushed (a TLS writer gathers).
    unflushed: bool,
    /// Everything passed on, and the writer told, if it had to be.
    done: bool,
}

/// Reads a direction makes in one turn at most before it lets other tasks run.
const TURN: usize = 32;

impl Flow {
    fn new() -> Flow {
        Flow {
            buf: Vec::with_capacity(BUFFER),
            written: 0,
            eof: false,
            unflushed: false,
            done: false,
        }
    }

    /// Move bytes from `r` to `w` until `r` has none for now or has ended.
    /// Once it has ended, `w`'s sending is ended too if `shut` (not when
    /// the other direction is over: the pair is closed next, and the close
    /// sends the FIN).
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W, shut: bool) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..TURN {
            while self.written < self.buf.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.unflushed = true;
            }
            if self.unflushed && self.eof {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                if shut {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.buf.clear();
            self.written = 0;
            let mut rb = ReadBuf::uninit(self.buf.spare_capacity_mut());
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    // SAFETY: the read initialized the first `n` bytes of the spare capacity.
                    unsafe { self.buf.set_len(n) };
                    self.eof = n == 0;
                }
            }
        }
        // Data keeps coming: let the thread's other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A stream whose reads are counted and time-stamped.
struct Metered<'a, T> {
    io: T,
    read: &'a AtomicU64,
    last_ms: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Relaxed);
            self.last_ms.store(crate::clock::coarse_ms(), Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A plain socket whose reads and writes are direct system calls
/// (`crate::sockio`), as the HTTP listeners' are: tokio's go through the C
/// library's wrappers, which cost two atomic updates each in a process
/// with several threads.
pub struct Direct(pub TcpStream);

impl AsyncRead for Direct {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let want = buf.remaining();
        ready!(sockio::poll_op(&self.0, cx, Interest::READABLE, want, |fd| {
            sockio::recv(fd, buf)
        }))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Direct {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        sockio::poll_op(&self.0, cx, Interest::WRITABLE, bytes.len(), |fd| {
            sockio::send(fd, bytes)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is held back
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
