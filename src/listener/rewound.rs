//! A stream with bytes put back in front of it. Plain TCP streams can take
//! read bytes back themselves (`l4::Stream::rewind`); a TLS stream cannot,
//! so the listener wraps it once in [`Rewound`] to read a request's first
//! bytes ahead, exactly as on plain connections. Everything but reading the
//! put-back bytes is passed straight to the wrapped stream.

use super::held::{Fenced, Held};
use super::Conn;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslStream;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Rewound {
    inner: Stream,
    /// Bytes to hand out before reading `inner` again, and the fence on
    /// reads past the request being served.
    held: Held,
}

impl Rewound {
    pub fn new(inner: Stream) -> Self {
        Rewound {
            inner,
            held: Held::default(),
        }
    }

    /// The wrapped stream, for reading ahead (bypasses any put-back bytes).
    pub fn inner_mut(&mut self) -> &mut Stream {
        &mut self.inner
    }

    /// Put `data` back to be read first. Only called when nothing is pending.
    pub fn rewind(&mut self, data: &[u8]) {
        self.held.rewind(data);
    }

    /// The TLS stream over the listener's connection, as it wraps every one.
    pub fn tls(&self) -> Option<&SslStream<Conn>> {
        self.inner.as_any().downcast_ref()
    }

    /// Put-back bytes not read yet.
    pub fn pending(&self) -> bool {
        self.held.pending()
    }

    /// `Pending` (waking `cx` when the socket turns readable) while a read
    /// could only find nothing: no bytes put back, none decrypted and kept
    /// by OpenSSL, none read ahead by the connection, and a socket with
    /// nothing new. A TLS read that finds nothing still goes through
    /// OpenSSL (about 1.3k instructions with OpenSSL 3.0); a client waiting
    /// between requests, or watched while its answer is on the way, would
    /// cost that on every request.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending() {
            return Poll::Ready(());
        }
        let Some(tls) = self.tls() else {
            return Poll::Ready(());
        };
        let conn = tls.get_ref();
        if tls.ssl().pending() > 0 || conn.pending() {
            return Poll::Ready(());
        }
        conn.poll_read_ready(cx).map(|_| ())
    }
}

impl AsyncRead for Rewound {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_fenced(cx, buf)
    }
}

impl Fenced for Rewound {
    fn held(&mut self) -> &mut Held {
        &mut self.held
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait::async_trait]
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewound {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewound {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewound {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Rewound {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Rewound {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait::async_trait]
impl Peek for Rewound {}
