//! A TCP listener's plain sockets for [`crate::pipe`], which passes a
//! connection's bytes both ways.

use crate::sockio;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

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
