//! Passing bytes both ways between a client and a server connection:
//! tokio's `copy_bidirectional`, which also passes on a half-close (the
//! side that ends its sending gets its peer's write side shut, the other
//! direction goes on), wrapped to count each side's bytes and to close the
//! pair when neither sends anything for the idle timeout.

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
pub async fn relay<C>(client: C, server: TcpStream, idle: Duration, tally: &Tally) -> End
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
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER);
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
