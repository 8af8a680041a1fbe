//! Socket reads and writes as direct system calls (`rustix`), for the
//! client connections the listener takes in and the lean loop's plain
//! upstream connections. The C library's wrappers (what tokio's sockets
//! call) make each call a thread cancellation point: two atomic updates
//! around every system call, in a process with more than one thread.

use rustix::net::{RecvFlags, SendFlags};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::task::{ready, Context, Poll};
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// `recv` into the unfilled part of `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    // SAFETY: only bytes `recv` reports written are marked initialized.
    let spare = unsafe { buf.unfilled_mut() };
    let n = rustix::net::recv(fd, spare, RecvFlags::empty())?.1;
    // SAFETY: as above: the first `n` unfilled bytes are initialized.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(())
}

/// `send`, without a `SIGPIPE` if the peer has gone.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(fd, bytes, SendFlags::NOSIGNAL)?)
}

pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    Ok(rustix::io::writev(fd, bufs)?)
}

/// `op` on the socket of `t` once tokio reports it ready for `interest`,
/// again each time `op` finds it not ready after all (as tokio's own
/// `poll_read` and `poll_write` do).
pub fn poll_op<R>(
    t: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        ready!(if interest.is_readable() {
            t.poll_read_ready(cx)
        } else {
            t.poll_write_ready(cx)
        })?;
        match t.try_io(interest, || op(t.as_fd())) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            r => return Poll::Ready(r),
        }
    }
}
