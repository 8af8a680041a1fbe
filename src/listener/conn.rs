//! A client's TCP connection as the listener accepts it: the socket, the
//! peer's address, and two buffers that exist only while they hold bytes.
//! It stands where Pingora's `l4::Stream` stood, for what an idle
//! connection costs: that one keeps a write buffer (1.4 KiB), a boxed
//! socket digest (0.4 KiB) and timing bookkeeping for the connection's
//! whole life. This one is about a hundred bytes while idle.
//!
//! - The socket goes on tokio's reactor only when something has to wait
//!   for it ([`Socket`]): a request that came whole, answered in writes the
//!   socket took at once, on a connection that then closes, never needs the
//!   reactor, and is spared the two `epoll_ctl` calls (on and off) that
//!   cost about 2 µs of CPU per new connection here.
//! - Reads and writes are system calls made directly (`rustix`), not
//!   through the C library, whose wrappers mark each one a thread
//!   cancellation point (two atomic updates around every call).
//! - Writes are gathered until a flush (or until [`GATHER`] bytes, or a
//!   read that has to wait), so a response head and a short body leave in
//!   one `sendto`, as through Pingora's buffered stream. The buffer is
//!   freed once flushed.
//! - Bytes can be put back to be read again ([`Conn::rewind`]): the
//!   listener reads a request's first bytes ahead of the loop that serves it.
//! - With `read_ahead` (TLS listeners, `server.read_buffer`), a short read
//!   asks the socket for that many bytes and keeps the rest for the next
//!   reads, so OpenSSL's 5-byte record-header reads cost no syscall each.
//! - The socket digest Pingora's sessions ask for (the client address) is
//!   made when first asked for, and let go by [`Conn::rest`].
//! - Nagle's algorithm is turned off (`TCP_NODELAY`) just before the
//!   connection's second write to the socket ([`Conn::sending`]), not when
//!   it is accepted: Linux holds back a short segment only while an earlier
//!   short one is unacknowledged, which a first write never meets, so a
//!   connection answered in one write (a new connection per request) is
//!   spared the system call. nginx, likewise, sets it only once a
//!   connection turns keep-alive.

use super::held::{Fenced, Held};
use crate::proxy_protocol::{self, Received};
use crate::sockio::{self, recv, send, writev};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use pingora_core::protocols::{Peek, Shutdown, Ssl, UniqueID, UniqueIDType};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// Writes shorter than this are gathered until a flush.
pub const GATHER: usize = 4096;

#[derive(Debug)]
pub struct Conn {
    socket: Socket,
    peer: SocketAddr,
    /// Bytes to hand out before reading the socket again, and the fence
    /// on reads past the request being served.
    held: Held,
    /// Gathered writes not sent yet.
    out: Vec<u8>,
    read_ahead: usize,
    digest: OnceLock<Arc<SocketDigest>>,
    /// A TLS handshake's compute slot, let go when a read next waits.
    slot: Option<OwnedSemaphorePermit>,
    /// How far writes to the socket have come ([`Conn::sending`]).
    sent: Sent,
    /// Its place in the listener's count of open connections.
    counted: Option<super::open::Counted>,
}

/// The client's socket, on tokio's reactor only once something waits for it.
///
/// A connection comes in `Off`: accepted, or back from the parking lot
/// because it turned readable. Its first read asks the socket directly, and
/// usually finds the request there. Only a read or write that finds the
/// socket not ready puts it on the reactor of the thread serving it, to
/// wait; so does a watch on the client that lasts ([`Conn::watch`]).
/// Putting it on later loses nothing: epoll reports a socket that is
/// already readable or writable as soon as it is added.
#[derive(Debug)]
enum Socket {
    Off(std::net::TcpStream),
    On(TcpStream),
    /// It could not be put on the reactor (the runtime is shutting down).
    Lost,
}

impl Socket {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Socket::Off(s) => Some(s.as_fd()),
            Socket::On(t) => Some(t.as_fd()),
            Socket::Lost => None,
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket could not be watched")
}

/// Writes to a connection's socket so far.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Nothing,
    Once,
    /// Nagle's algorithm is off: every later write leaves at once.
    NoDelay,
}

impl Conn {
    pub fn new(tcp: std::net::TcpStream, peer: SocketAddr, read_ahead: usize) -> Conn {
        Conn {
            socket: Socket::Off(tcp),
            peer,
            held: Held::default(),
            out: Vec::new(),
            read_ahead,
            digest: OnceLock::new(),
            slot: None,
            sent: Sent::Nothing,
            counted: None,
        }
    }

    /// Count the connection among its listener's open ones until it drops.
    pub fn counted(mut self, counted: Option<super::open::Counted>) -> Conn {
        self.counted = counted;
        self
    }

    /// Hold `slot` until a read finds nothing to read: a TLS handshake
    /// computes its part between two waits for the client.
    pub fn hold_until_read_waits(&mut self, slot: OwnedSemaphorePermit) {
        self.slot = Some(slot);
    }

    /// The socket on the reactor of the runtime this runs on, put there now
    /// if it is not yet.
    fn on(&mut self) -> io::Result<&TcpStream> {
        if let Socket::Off(_) = self.socket {
            let Socket::Off(s) = std::mem::replace(&mut self.socket, Socket::Lost) else {
                unreachable!("checked")
            };
            self.socket = Socket::On(TcpStream::from_std(s)?);
        }
        match &self.socket {
            Socket::On(t) => Ok(t),
            _ => Err(lost()),
        }
    }

    /// Not on tokio's reactor: nothing has waited for the socket yet.
    pub fn unwatched(&self) -> bool {
        matches!(self.socket, Socket::Off(_))
    }

    /// Put the socket on the reactor, for a watch on the client while its
    /// response is awaited ([`Conn::poll_read_ready`]).
    pub fn watch(&mut self) -> io::Result<()> {
        self.on().map(|_| ())
    }

    /// Resolves once the client has sent something (or closed). Tokio
    /// then knows the socket is readable: the first read goes through it.
    pub async fn readable(&mut self) -> io::Result<()> {
        self.on()?.readable().await
    }

    /// `Ready` once the socket may have something to read (or an error);
    /// at once if it is not on the reactor, for a read to find out.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.socket {
            Socket::On(t) => t.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// `op` on the socket, as soon as it can be done: at once while the
    /// socket is off the reactor; when it would have to wait, the socket
    /// goes on the reactor and `op` is tried again each time tokio reports
    /// it ready for `interest`.
    fn poll_op(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        want: usize,
        mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if let Socket::Off(s) = &self.socket {
            loop {
                match op(s.as_fd()) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    r => return Poll::Ready(r),
                }
            }
        }
        sockio::poll_op(self.on()?, cx, interest, want, op)
    }

    /// Read from the socket itself, past anything pending; a read that has
    /// to wait lets the handshake slot go.
    pub fn poll_socket(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = buf.remaining();
        let r = self
            .poll_op(cx, Interest::READABLE, want, |fd| recv(fd, buf))
            .map_ok(|_| ());
        if r.is_pending() {
            self.slot = None;
        }
        r
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Read the PROXY protocol header the connection starts with; what
    /// follows it stays to be read. The client is then the one it names.
    /// (The caller bounds the wait.)
    pub async fn proxy_header(&mut self) -> io::Result<Received> {
        loop {
            if let Some((said, len)) = proxy_protocol::parse(self.held.bytes()).map_err(proxy_protocol::invalid)? {
                self.held.skip(len);
                if let Some(client) = said.client {
                    self.peer = client;
                    self.digest = OnceLock::new();
                }
                return Ok(said);
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); 2048];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            std::future::poll_fn(|cx| self.poll_socket(cx, &mut chunk)).await?;
            if chunk.filled().is_empty() {
                return Err(proxy_protocol::cut_short(self.held.bytes()));
            }
            self.held.extend(chunk.filled());
        }
    }

    /// Put `data` back to be read first. Only called when nothing is pending.
    pub fn rewind(&mut self, data: &[u8]) {
        self.held.rewind(data);
    }

    /// Bytes put back or read ahead, not handed out yet.
    pub fn pending(&self) -> bool {
        self.held.pending()
    }

    /// Let go of what only a request in flight needs, before the connection
    /// waits idle.
    pub fn rest(&mut self) {
        self.digest = OnceLock::new();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// The socket, off tokio's reactor, for the parking lot, with the
    /// connection's place in the count; `Err` with the connection when it
    /// still holds bytes (read ahead, or not sent yet). `Ok((Err, _))`: the
    /// socket could not be taken off the reactor (it is closed).
    #[allow(clippy::type_complexity)]
    pub fn into_parked(
        mut self: Box<Self>,
    ) -> Result<(io::Result<std::net::TcpStream>, Option<super::open::Counted>), Box<Conn>> {
        if self.pending() || !self.out.is_empty() {
            return Err(self);
        }
        let tcp = match std::mem::replace(&mut self.socket, Socket::Lost) {
            Socket::Off(s) => Ok(s),
            Socket::On(t) => t.into_std(),
            Socket::Lost => Err(lost()),
        };
        Ok((tcp, self.counted.take()))
    }

    /// Called before each write to the socket. The first goes out at once
    /// whatever Nagle's algorithm says (nothing is in flight yet); before
    /// the second, `TCP_NODELAY` is set, so that no write waits for the
    /// client to acknowledge the one before (write, write, read).
    fn sending(&mut self) {
        match self.sent {
            Sent::Nothing => self.sent = Sent::Once,
            Sent::Once => {
                if let Some(fd) = self.socket.fd() {
                    let _ = rustix::net::sockopt::set_tcp_nodelay(fd, true);
                }
                self.sent = Sent::NoDelay;
            }
            Sent::NoDelay => {}
        }
    }

    /// Send gathered bytes until none are left.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let mut out = std::mem::take(&mut self.out);
        let r = loop {
            if sent == out.len() {
                break Poll::Ready(Ok(()));
            }
            self.sending();
            match self.poll_op(cx, Interest::WRITABLE, out.len() - sent, |fd| send(fd, &out[sent..])) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if sent < out.len() {
            out.drain(..sent);
            self.out = out;
        }
        r
    }
}

impl Drop for Conn {
    /// Closed with a direct system call, as it is read and written; a
    /// socket on the reactor is taken off it first, by tokio.
    fn drop(&mut self) {
        let s = match std::mem::replace(&mut self.socket, Socket::Lost) {
            Socket::Off(s) => s,
            Socket::On(t) => match t.into_std() {
                Ok(s) => s,
                Err(_) => return,
            },
            Socket::Lost => return,
        };
        // SAFETY: the descriptor is ours alone, taken out of its owner here.
        unsafe { rustix::io::close(s.into_raw_fd()) };
    }
}

impl AsyncRead for Conn {
    /// A read that has to wait first sends what writes have gathered: the
    /// writer has gone back to waiting too (Pingora's loop watches the
    /// client while it waits for the server's next piece), so a response's
    /// piece does not wait in the buffer for the rest of the body.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = this.poll_fenced(cx, buf);
        if r.is_pending() && !this.out.is_empty() {
            // If the socket is full, the wait is on it as well; an error shows at the next write.
            let _ = this.poll_send_out(cx);
        }
        r
    }
}

impl Fenced for Conn {
    fn held(&mut self) -> &mut Held {
        &mut self.held
    }

    fn poll_open(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.held.pending() {
            self.held.take(buf);
            return Poll::Ready(Ok(()));
        }
        if self.read_ahead <= buf.remaining() {
            return self.poll_socket(cx, buf);
        }
        let mut ahead = Vec::with_capacity(self.read_ahead);
        let mut rb = ReadBuf::uninit(ahead.spare_capacity_mut());
        ready!(self.poll_socket(cx, &mut rb))?;
        let n = rb.filled().len();
        if n > 0 {
            // SAFETY: the socket initialized the first `n` bytes.
            unsafe { ahead.set_len(n) };
            self.held.keep(ahead);
            self.held.take(buf);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_socket(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() <= GATHER {
            if this.out.capacity() == 0 {
                this.out.reserve_exact(GATHER);
            }
            this.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        this.sending();
        if this.out.is_empty() {
            return this.poll_op(cx, Interest::WRITABLE, buf.len(), |fd| send(fd, buf));
        }
        // Gathered bytes and this write together, in one call.
        let out = std::mem::take(&mut this.out);
        let held = out.len();
        let r = this.poll_op(cx, Interest::WRITABLE, held + buf.len(), |fd| {
            writev(fd, &[IoSlice::new(&out), IoSlice::new(buf)])
        });
        this.out = out;
        let n = ready!(r)?;
        if n >= held {
            this.out = Vec::new();
            if n > held {
                return Poll::Ready(Ok(n - held));
            }
            // Nothing of `buf` went: it waits in the buffer, bounded by GATHER.
        } else {
            this.out.drain(..n);
        }
        let take = buf.len().min(GATHER);
        this.out.extend_from_slice(&buf[..take]);
        Poll::Ready(Ok(take))
    }

    /// Straight to the socket when nothing is gathered: the caller has the
    /// pieces together already (the lean loop's head and body).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.is_empty() {
            this.sending();
            let want = bufs.iter().map(|b| b.len()).sum();
            return this.poll_op(cx, Interest::WRITABLE, want, |fd| writev(fd, bufs));
        }
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => Pin::new(this).poll_write(cx, b),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_out(cx))?;
        let fd = this.socket.fd().ok_or_else(lost)?;
        Poll::Ready(Ok(rustix::net::shutdown(fd, rustix::net::Shutdown::Write)?))
    }
}

#[async_trait::async_trait]
impl Shutdown for Conn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Conn {
    fn id(&self) -> UniqueIDType {
        self.socket.fd().map_or(-1, |fd| fd.as_raw_fd())
    }
}

impl Ssl for Conn {}

impl GetTimingDigest for Conn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Conn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Conn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        let d = self.digest.get_or_init(|| {
            let d = SocketDigest::from_raw_fd(self.id());
            let _ = d.peer_addr.set(Some(PeerAddr::Inet(self.peer)));
            Arc::new(d)
        });
        Some(d.clone())
    }
}

#[async_trait::async_trait]
impl Peek for Conn {
    /// Fill `buf` with the next bytes without consuming them (for Pingora's
    /// h2c preface check).
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        while self.held.bytes().len() < buf.len() {
            let mut chunk = [MaybeUninit::<u8>::uninit(); 64];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            std::future::poll_fn(|cx| self.poll_socket(cx, &mut chunk)).await?;
            if chunk.filled().is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.held.extend(chunk.filled());
        }
        buf.copy_from_slice(&self.held.bytes()[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: our side as a `Conn`, as the listener hands it over
    /// (on no reactor yet), the peer as a plain socket.
    async fn pair(read_ahead: usize) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, addr) = l.accept().await.unwrap();
        (Conn::new(ours.into_std().unwrap(), addr, read_ahead), peer)
    }

    /// Answers in several writes (a streamed body, a tunnel, TLS records)
    /// must not wait on Nagle's algorithm; an answer in one write leaves at
    /// once without it, so the socket option is set only before a second.
    #[tokio::test]
    async fn nagle_is_turned_off_before_the_second_write_and_never_for_one() {
        let nodelay = |c: &Conn| rustix::net::sockopt::tcp_nodelay(c.socket.fd().unwrap()).unwrap();
        // One gathered response, flushed: one write, the option untouched.
        let (mut c, mut peer) = pair(0).await;
        c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        c.flush().await.unwrap();
        assert!(!nodelay(&c), "one write: no system call for it");
        let mut buf = [0u8; 64];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 19);
        // A second write, through each path to the socket, turns it on first.
        assert_eq!(c.write_vectored(&[IoSlice::new(b"more")]).await.unwrap(), 4);
        assert!(nodelay(&c), "set before the second write");
        let (mut c, _peer) = pair(0).await;
        c.write_all(&[b'x'; GATHER + 1]).await.unwrap();
        assert!(!nodelay(&c));
        c.write_all(b"y").await.unwrap();
        c.flush().await.unwrap();
        assert!(nodelay(&c), "a gathered write after a large one");
    }

    /// A request that is there when the connection is taken in, answered
    /// in one write, never puts the socket on the reactor; the first read
    /// that finds nothing does, and then waits for what comes next.
    #[tokio::test]
    async fn the_socket_goes_on_the_reactor_only_when_something_waits() {
        use futures::FutureExt;
        use std::io::Write;
        let (mut c, peer) = pair(0).await;
        // Written by a plain socket, with no await: tokio's reactor does not
        // turn between the bytes' arrival and the read.
        let mut peer = peer.into_std().unwrap();
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).now_or_never().expect("read at once").unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").now_or_never().unwrap().unwrap();
        c.flush().now_or_never().expect("sent at once").unwrap();
        assert!(c.unwatched(), "nothing waited");
        // The next read waits, on the reactor, and gets what comes next.
        assert!(c.read(&mut buf).now_or_never().is_none(), "nothing more yet");
        assert!(!c.unwatched(), "put on the reactor to wait");
        peer.write_all(b"more").unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"more");
    }

    /// The watch on a client whose response is awaited, once the socket is
    /// put on the reactor after its request was read: it does not wake for
    /// that request, and does wake for new bytes and for a close, including
    /// ones that came before the socket went on the reactor.
    #[tokio::test]
    async fn a_watch_begun_late_wakes_for_what_came_after_the_request() {
        const WAIT: Duration = Duration::from_millis(150);
        let settle = Duration::from_millis(30);
        async fn watch(c: &mut Conn) -> Result<io::Result<()>, tokio::time::error::Elapsed> {
            c.watch().unwrap();
            tokio::time::timeout(WAIT, std::future::poll_fn(|cx| c.poll_read_ready(cx))).await
        }
        let mut buf = [0u8; 64];
        let request = b"GET / HTTP/1.1\r\n\r\n";
        // The request alone: the watch waits, then wakes for the next bytes.
        let (mut c, mut peer) = pair(0).await;
        peer.write_all(request).await.unwrap();
        tokio::time::sleep(settle).await;
        assert_eq!(c.read(&mut buf).await.unwrap(), request.len());
        assert!(c.unwatched());
        assert!(watch(&mut c).await.is_err(), "woken for bytes already read");
        peer.write_all(b"x").await.unwrap();
        watch(&mut c).await.expect("woken for new bytes").unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 1);
        // More bytes before the watch began: it wakes at once for them.
        let (mut c, mut peer) = pair(0).await;
        peer.write_all(request).await.unwrap();
        tokio::time::sleep(settle).await;
        assert_eq!(c.read(&mut buf).await.unwrap(), request.len());
        peer.write_all(b"more").await.unwrap();
        tokio::time::sleep(settle).await;
        watch(&mut c)
            .await
            .expect("woken for bytes that came unwatched")
            .unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 4);
        // The client closed its side while unwatched: the watch wakes at once.
        let (mut c, mut peer) = pair(0).await;
        peer.write_all(request).await.unwrap();
        tokio::time::sleep(settle).await;
        assert_eq!(c.read(&mut buf).await.unwrap(), request.len());
        peer.shutdown().await.unwrap();
        tokio::time::sleep(settle).await;
        watch(&mut c).await.expect("woken for the close").unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn short_writes_wait_for_the_flush_long_ones_go_at_once() {
        let (mut c, mut peer) = pair(0).await;
        c.write_all(b"head ").await.unwrap();
        c.write_all(b"body").await.unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut byte)).await;
        assert!(early.is_err(), "gathered bytes left before the flush");
        c.flush().await.unwrap();
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"head body");
        assert_eq!(c.out.capacity(), 0, "the buffer is freed once flushed");

        // Gathered bytes plus a write too long to gather: both go, in order.
        c.write_all(b"x").await.unwrap();
        let long = vec![b'y'; GATHER * 3];
        c.write_all(&long).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 1 + long.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..].iter().all(|&b| b == b'y'));
    }

    #[tokio::test]
    async fn gathered_writes_go_when_a_read_has_to_wait() {
        let (mut c, mut peer) = pair(0).await;
        c.write_all(b"head and a first piece").await.unwrap();
        // The writer now waits for what comes next, watching the client.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await;
        assert!(read.is_err(), "nothing to read");
        let mut got = [0u8; 22];
        tokio::time::timeout(Duration::from_secs(2), peer.read_exact(&mut got))
            .await
            .expect("the gathered bytes went when the read waited")
            .unwrap();
        assert_eq!(&got, b"head and a first piece");
        // A read that finds bytes waiting sends nothing early.
        c.write_all(b"more").await.unwrap();
        peer.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.read(&mut buf).await.unwrap(), 1);
        assert_eq!(c.out.len(), 4, "still gathered");
    }

    #[tokio::test]
    async fn bytes_put_back_and_peeked_are_read_again() {
        let (mut c, mut peer) = pair(0).await;
        peer.write_all(b"PRI * HTTP/2.0 and more").await.unwrap();
        let mut head = [0u8; 3];
        assert!(c.try_peek(&mut head).await.unwrap());
        assert_eq!(&head, b"PRI");
        c.rest();
        let mut got = [0u8; 8];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI * HT");
        assert!(c.pending(), "peeked bytes beyond the read stay pending");
        let mut rest = vec![0u8; 15];
        c.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"TP/2.0 and more");
        assert!(!c.pending());
        c.rewind(b"again");
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"again");
        assert_eq!(c.held.capacity(), 0, "read-back bytes are freed once read");
    }

    #[tokio::test]
    async fn read_ahead_keeps_the_rest_for_the_next_reads() {
        let (mut c, mut peer) = pair(1024).await;
        peer.write_all(b"12345abcdefgh").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut five = [0u8; 5];
        c.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"12345");
        assert!(c.pending(), "the rest of the read waits in the connection");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"abcdefgh");
        assert_eq!(c.held.capacity(), 0);
    }

    #[tokio::test]
    async fn the_socket_digest_names_the_peer_until_rest() {
        let (mut c, peer) = pair(0).await;
        let d = c.get_socket_digest().unwrap();
        let want = peer.local_addr().unwrap();
        assert_eq!(d.peer_addr().and_then(|a| a.as_inet()).copied(), Some(want));
        assert!(
            Arc::ptr_eq(&d, &c.get_socket_digest().unwrap()),
            "made once per request"
        );
        c.rest();
        assert!(c.digest.get().is_none());
        assert_eq!(c.peer(), want);
    }
}
