//! Bytes passed both ways between a client and a server connection until
//! they are done or idle out: a switched HTTP connection (a WebSocket after
//! its 101, `proxy::lean`) and a TCP listener's connection (`tcp`).
//!
//! An idle pipe holds no buffer: each read goes into a buffer on the stack
//! of the poll that makes it and is written on at once. Only bytes the
//! other side cannot take yet are kept, on the heap, until they are
//! written; reading that way waits meanwhile. (Pingora's relay keeps two
//! 64 KiB body buffers per upgraded connection for its whole life, tokio's
//! `copy_bidirectional` two zeroed 16 KiB ones.)
//!
//! How it ends is [`Ends`]: a switched connection ends both ways once
//! either side ends (FIN) and what it sent has been passed on, as nginx and
//! Pingora end an upgraded connection (WebSocket closes in-band; a
//! half-open tunnel would only hold resources). A TCP connection passes a
//! half-close on and goes on the other way. An error on either side ends
//! both.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes read per poll (on the stack).
const CHUNK: usize = 16 * 1024;
/// Reads per direction and poll before giving the other tasks a turn.
const ROUNDS: usize = 16;

/// What went through the pipe.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
}

/// One direction.
#[derive(Default)]
struct Pipe {
    /// Read but not yet written (the other side was not ready), from `at` on.
    pending: Vec<u8>,
    at: usize,
    flush: bool,
    /// The reading side ended.
    eof: bool,
    moved: u64,
}

/// How a pipe ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ends {
    /// Both ways once either side ends (a switched HTTP connection).
    Together,
    /// Each way on its own: a side that ends its sending gets its peer's
    /// write side shut, and the other way goes on. `client_tls`,
    /// `server_tls`: that side's sending is always ended properly (a TLS
    /// close_notify); a plain socket's last shutdown is left to the close
    /// that follows, which sends the FIN anyway.
    Apart { client_tls: bool, server_tls: bool },
}

/// Why a pipe ended.
#[derive(Debug)]
pub enum End {
    /// The sides closed (as [`Ends`] says).
    Closed,
    /// Nothing either way for the idle time.
    Idle,
    /// A read or write failed (a reset, say).
    Failed(io::Error),
}

impl Pipe {
    /// Move what `from` has to `to`. Ready once `from` ended and all it sent
    /// went on (and `to` is shut down for writing, if `shut`), or on an
    /// error. `active`: bytes moved.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
        shut: bool,
        active: &mut bool,
    ) -> Poll<io::Result<()>> {
        for _ in 0..ROUNDS {
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new(); // an idle tunnel keeps no buffer
                self.at = 0;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.flush = false;
            }
            if self.eof {
                if shut {
                    ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                }
                return Poll::Ready(Ok(()));
            }
            let mut buf = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            *active = true;
            self.moved += data.len() as u64;
            self.flush = true;
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *to).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = data[off..].to_vec();
                        break;
                    }
                }
            }
        }
        cx.waker().wake_by_ref(); // more may be waiting: come back after the others' turn
        Poll::Pending
    }
}

/// Pass bytes between `client` and `server` until they end (as `ends`
/// says) or one fails, or nothing moves either way for `idle`. `early`:
/// bytes for the client first (what a server sent right behind its 101).
pub async fn run<C, S>(client: &mut C, server: &mut S, early: Vec<u8>, idle: Duration, ends: Ends) -> (Moved, End)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::default();
    let mut down = Pipe {
        flush: !early.is_empty(),
        pending: early,
        ..Pipe::default()
    };
    let (mut up_done, mut down_done) = (false, false);
    let mut last = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let end = poll_fn(|cx| {
        let mut active = false;
        // Whether a way that ends shuts its writer: see `Ends`.
        let (shut_up, shut_down) = match ends {
            Ends::Together => (true, true),
            Ends::Apart { client_tls, server_tls } => (!down_done || server_tls, !up_done || client_tls),
        };
        if !up_done {
            match up.poll(cx, client, server, shut_up, &mut active) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
                Poll::Pending => {}
            }
        }
        if up_done && ends == Ends::Together {
            return Poll::Ready(End::Closed);
        }
        if !down_done {
            match down.poll(cx, server, client, shut_down, &mut active) {
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
                Poll::Pending => {}
            }
        }
        let closed = match ends {
            Ends::Together => up_done || down_done,
            Ends::Apart { .. } => up_done && down_done,
        };
        if closed {
            return Poll::Ready(End::Closed);
        }
        if active {
            last = Instant::now();
        }
        // One timer, moved on only when it fires: activity just notes the time.
        while timer.as_mut().poll(cx).is_ready() {
            let until = last + idle;
            if until <= Instant::now() {
                return Poll::Ready(End::Idle);
            }
            timer.as_mut().reset(until);
        }
        Poll::Pending
    })
    .await;
    let moved = Moved {
        up: up.moved,
        down: down.moved,
    };
    (moved, end)
}
