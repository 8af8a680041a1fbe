//! Socket reads and writes as direct system calls (`rustix`), for the
//! client connections the listener takes in and the lean loop's plain
//! upstream connections. The C library's wrappers (what tokio's sockets
//! call) make each call a thread cancellation point: two atomic updates
//! around every system call, in a process with more than one thread.

use rustix::net::{RecvFlags, SendFlags};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// `recv` into the unfilled part of `buf`; the bytes read.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: only bytes `recv` reports written are marked initialized.
    let spare = unsafe { buf.unfilled_mut() };
    let n = rustix::net::recv(fd, spare, RecvFlags::empty())?.1;
    // SAFETY: as above: the first `n` unfilled bytes are initialized.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// `send`, without a `SIGPIPE` if the peer has gone.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(fd, bytes, SendFlags::NOSIGNAL)?)
}

pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    Ok(rustix::io::writev(fd, bufs)?)
}

/// `op`, a read or write of up to `want` bytes, on the socket of `t` once
/// tokio reports it ready for `interest`, and again each time it finds the
/// socket not ready after all; the bytes it moved.
///
/// As in tokio's own `poll_read` and `poll_write`: an operation that moved
/// fewer bytes than asked for found the socket drained (or full), so the
/// readiness it was done under is cleared, and the next one waits for the
/// reactor instead of making a system call that would find nothing.
pub fn poll_op(
    t: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    want: usize,
    mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(if interest.is_readable() {
            t.poll_read_ready(cx)
        } else {
            t.poll_write_ready(cx)
        })?;
        let mut short = None;
        let r = t.try_io(interest, || match op(t.as_fd()) {
            // Reported as "would block", the one outcome on which tokio clears the
            // readiness `try_io` saw before the call (a later report is kept).
            Ok(n) if n > 0 && n < want => {
                short = Some(n);
                Err(io::ErrorKind::WouldBlock.into())
            }
            r => r,
        });
        if let Some(n) = short {
            return Poll::Ready(Ok(n));
        }
        match r {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            r => return Poll::Ready(r),
        }
    }
}

/// A tokio socket read and written with the direct calls above: the lean
/// loop's plain upstream connections, and both sides of a TCP listener's
/// connections.
#[derive(Debug)]
pub struct Direct(pub TcpStream);

impl AsyncRead for Direct {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let want = buf.remaining();
        ready!(poll_op(&self.0, cx, Interest::READABLE, want, |fd| recv(fd, buf)))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Direct {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        poll_op(&self.0, cx, Interest::WRITABLE, bytes.len(), |fd| send(fd, bytes))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        poll_op(&self.0, cx, Interest::WRITABLE, want, |fd| writev(fd, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is held back
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
