//! The lean loop's upstream connections. A plain TCP one is made and driven
//! here: a tokio socket, read and written directly, where Pingora's stream
//! adds a read buffer, a write buffer and per-read timing the lean loop does
//! not use. Anything else (TLS, socket options Portico does not set)
//! goes through Pingora's connector, as Pingora's loop makes it. Connect
//! errors carry Pingora's types (`ConnectTimedout`, `ConnectRefused`,
//! `ConnectNoRoute`, `ConnectError`), so retries and passive health checks
//! see them alike.

use crate::sockio::Direct;
use crate::upstream::Transport;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::{Error, ErrorType::*, OrErr, Result};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection of the lean loop.
#[derive(Debug)]
pub enum UpStream {
    Tcp(Direct),
    /// Made by Pingora's connector.
    Pingora(Stream),
}

impl UpStream {
    pub fn fd(&self) -> i32 {
        match self {
            UpStream::Tcp(t) => t.0.as_raw_fd(),
            UpStream::Pingora(s) => s.id(),
        }
    }
}

/// `$body` with `$s` the pinned socket, whichever kind it is.
macro_rules! on_either {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            UpStream::Tcp(t) => {
                let $s = Pin::new(t);
                $body
            }
            UpStream::Pingora(p) => {
                let $s = Pin::new(p);
                $body
            }
        }
    };
}

/// A plain socket is read and written with direct system calls (`sockio::Direct`).
impl AsyncRead for UpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        on_either!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        on_either!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_either!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Tcp(t) => t.is_write_vectored(),
            UpStream::Pingora(p) => p.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_either!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_either!(self, s => s.poll_shutdown(cx))
    }
}

/// The address to connect to here, if `peer` is a plain TCP server with
/// none of the options only Pingora's connector applies.
fn plain(peer: &HttpPeer) -> Option<std::net::SocketAddr> {
    let o = &peer.options;
    let special = peer.is_tls()
        || peer.get_proxy().is_some()
        || o.tcp_keepalive.is_some()
        || o.tcp_recv_buf.is_some()
        || o.tcp_fast_open
        || o.dscp.is_some()
        || o.custom_l4.is_some();
    match peer.address() {
        SocketAddr::Inet(addr) if !special => Some(*addr),
        _ => None,
    }
}

/// Connect to `peer`: a plain TCP server here, anything else through `transport`.
pub async fn connect(transport: &Transport, peer: &HttpPeer) -> Result<UpStream> {
    let Some(addr) = plain(peer) else {
        return transport.get().await.new_stream(peer).await.map(UpStream::Pingora);
    };
    let connecting = TcpStream::connect(addr);
    let connected = match peer.connection_timeout() {
        Some(t) => match tokio::time::timeout(t, connecting).await {
            Ok(r) => r,
            Err(_) => return Error::e_explain(ConnectTimedout, format!("timeout {t:?} connecting to server {peer}")),
        },
        None => connecting.await,
    };
    let tcp = connected.map_err(|e| {
        let etype = match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectRefused,
            io::ErrorKind::TimedOut => ConnectTimedout,
            _ => match e.raw_os_error() {
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => ConnectNoRoute,
                _ => ConnectError,
            },
        };
        Error::because(etype, format!("Fail to connect to {peer}"), e)
    })?;
    tcp.set_nodelay(true)
        .or_err(ConnectError, "while setting TCP_NODELAY")?;
    Ok(UpStream::Tcp(Direct(tcp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::connectors::TransportConnector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_servers_are_connected_here_and_errors_keep_pingoras_types() {
        let transport = Transport::new("a test transport", || TransportConnector::new(None));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = HttpPeer::new(l.local_addr().unwrap(), false, String::new());
        let mut up = connect(&transport, &peer).await.unwrap();
        assert!(matches!(up, UpStream::Tcp(_)));
        let (mut server, _) = l.accept().await.unwrap();
        up.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        let closed = l.local_addr().unwrap();
        drop(l);
        let e = connect(&transport, &HttpPeer::new(closed, false, String::new()))
            .await
            .unwrap_err();
        assert_eq!(e.etype(), &ConnectRefused, "{e}");

        let tls = HttpPeer::new(closed, true, "a.test".into());
        assert!(plain(&tls).is_none(), "TLS goes through Pingora's connector");
        let e = connect(&transport, &tls).await.unwrap_err();
        assert_eq!(e.etype(), &ConnectRefused, "Pingora's connector, the same type: {e}");
    }
}
