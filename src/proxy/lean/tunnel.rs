//! The bytes of a switched connection (a WebSocket after its 101), passed
//! both ways until both sides have finished or the connection idles out.
//!
//! An idle tunnel holds no buffer: each read goes into a buffer on the
//! stack of the poll that makes it and is written on at once. Only bytes
//! the other side cannot take yet are kept, on the heap, until they are
//! written; reading that way waits meanwhile. (Pingora's relay keeps two
//! 64 KiB body buffers per upgraded connection for its whole life.)
//!
//! When either side ends (FIN) and what it sent has been passed on, the
//! tunnel ends both ways, as nginx and Pingora end an upgraded connection
//! (WebSocket closes in-band; a half-open tunnel would only hold resources).
//! An error on either side ends both too.

use super::connect::UpStream;
use pingora_core::protocols::Stream;
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

/// What went through the tunnel.
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

impl Pipe {
    /// Move what `from` has to `to`. Ready once `from` ended and all it sent
    /// went on (`to` is shut down for writing), or on an error. `active`: bytes moved.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
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
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
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

/// Pass bytes between `client` and `server` until one side ends or fails,
/// or nothing moves either way for `idle`. `early`: bytes the server
/// sent right behind its 101, which the client gets first.
pub async fn run(client: &mut Stream, server: &mut UpStream, early: Vec<u8>, idle: Duration) -> Moved {
    let mut up = Pipe::default();
    let mut down = Pipe {
        flush: !early.is_empty(),
        pending: early,
        ..Pipe::default()
    };
    let mut last = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    poll_fn(|cx| {
        let mut active = false;
        let a = up.poll(cx, client, server, &mut active);
        let b = down.poll(cx, server, client, &mut active);
        if a.is_ready() || b.is_ready() {
            return Poll::Ready(());
        }
        if active {
            last = Instant::now();
        }
        // One timer, moved on only when it fires: activity just notes the time.
        while timer.as_mut().poll(cx).is_ready() {
            let until = last + idle;
            if until <= Instant::now() {
                return Poll::Ready(());
            }
            timer.as_mut().reset(until);
        }
        Poll::Pending
    })
    .await;
    Moved {
        up: up.moved,
        down: down.moved,
    }
}
