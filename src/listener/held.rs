//! Bytes a client connection has read and not handed out yet, and the fence
//! that keeps the request being served from reading into the next one.
//!
//! Both kinds of listener connection keep such bytes in front of what they
//! read: a plain one ([`super::Conn`]) in front of its socket, a TLS one
//! ([`super::Rewound`]) in front of its TLS stream. They are a request's
//! first bytes, read ahead by the listener to choose the loop that serves
//! it, or requests a client sent before it had its answers (pipelining, RFC
//! 9112 §9.3.2), which are served in turn.
//!
//! The fence: while its answer is on the way, a request's reader goes on
//! reading the client to notice one that leaves (Pingora's loop, and the
//! lean loop's watch). Pingora's loop takes bytes found then (a pipelined
//! request, or one sent the moment the answer arrived) for an error: the
//! request in flight got a 400 and the connection closed. So while a request
//! is served, the connection hands out no more than that request's bytes
//! (its head and Content-Length body, [`request_len`]). A read past them
//! keeps what the client sent for the next request and waits for ever (the
//! reader has its answer to wait for), or finds the end of the stream if
//! the client has closed.

use super::chunks::{ChunkScan, Scanned};
use std::io;
use std::task::{ready, Context, Poll};
use tokio::io::ReadBuf;

/// No fence: reads take what there is.
const OPEN: usize = usize::MAX;

/// Most bytes a read past the fence takes from the client at once.
const HOLD_READ: usize = 4096;

#[derive(Debug)]
pub struct Held {
    /// Bytes to hand out before reading again, from `pos` on.
    back: Vec<u8>,
    pos: usize,
    /// How many more bytes the request being served may read ([`OPEN`]: no limit).
    fence: usize,
    /// After those bytes (its head), the request's chunked body: scanned as
    /// it is read, and the fence set where it ends ([`super::chunks`]).
    chunked: Option<Box<ChunkScan>>,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            back: Vec::new(),
            pos: 0,
            fence: OPEN,
            chunked: None,
        }
    }
}

impl Held {
    /// Bytes held, not handed out yet.
    pub fn pending(&self) -> bool {
        self.pos < self.back.len()
    }

    /// The bytes [`Held::pending`] tells of.
    pub fn bytes(&self) -> &[u8] {
        &self.back[self.pos..]
    }

    /// Put `data` back to be read first. Only called when nothing is pending.
    pub fn rewind(&mut self, data: &[u8]) {
        debug_assert!(!self.pending(), "rewind over unread bytes");
        self.back.clear();
        self.back.extend_from_slice(data);
        self.pos = 0;
    }

    /// Keep `data`, just read, to be read first. Only called when nothing is pending.
    pub fn keep(&mut self, data: Vec<u8>) {
        self.back = data;
        self.pos = 0;
    }

    /// Move the held bytes to the start of their buffer and add `data` after them.
    pub fn extend(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.back.drain(..self.pos);
            self.pos = 0;
        }
        self.back.extend_from_slice(data);
    }

    /// Drop the first `n` held bytes (taken by a reader that parsed them
    /// itself), freeing the buffer once none are left.
    pub fn skip(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.back.len());
        if self.pos == self.back.len() {
            self.back = Vec::new();
            self.pos = 0;
        }
    }

    /// Hand held bytes out into `buf`.
    pub fn take(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.back.len() - self.pos).min(buf.remaining());
        buf.put_slice(&self.back[self.pos..self.pos + n]);
        self.skip(n);
    }

    /// Let the request being served read `limit` more bytes (`None`: any).
    pub fn fence(&mut self, limit: Option<usize>) {
        self.fence = limit.unwrap_or(OPEN);
        self.chunked = None;
    }

    /// Fence the request being served where its framing (`framing`) ends.
    pub fn fence_request(&mut self, framing: Option<Framing>) {
        match framing {
            Some(Framing::Length(n)) => self.fence(Some(n)),
            Some(Framing::Chunked { head }) => {
                self.fence = head;
                self.chunked = Some(Box::default());
            }
            None => self.fence(None),
        }
    }

    /// Put `data` back in front of the bytes held.
    fn prepend(&mut self, mut data: Vec<u8>) {
        if self.pending() {
            data.extend_from_slice(self.bytes());
        }
        self.keep(data);
    }

    /// The buffer's size (freed once every byte is handed out).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.back.capacity()
    }

    /// How many more bytes the request being served may read (`None`: any).
    fn allowance(&self) -> Option<usize> {
        (self.fence != OPEN).then_some(self.fence)
    }
}

/// A connection that holds bytes in front of its stream, and reads
/// through its fence ([`Fenced::poll_fenced`]).
pub trait Fenced {
    fn held(&mut self) -> &mut Held;

    /// A read with no fence: held bytes first, then the stream.
    fn poll_open(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.held().pending() {
            // The buffer is freed once all is out: an idle connection keeps nothing here.
            self.held().take(buf);
            return Poll::Ready(Ok(()));
        }
        self.poll_stream(cx, buf)
    }

    /// A read from the stream itself, past any held bytes.
    fn poll_stream(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>>;

    /// A read no further than the fence. Past it: with bytes held already,
    /// wait for ever; otherwise read what the client sends and keep it, then
    /// wait for ever; `Ready` with nothing read once the client has closed.
    fn poll_fenced(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let left = match self.held().allowance() {
            None => return self.poll_open(cx, buf),
            Some(_) if buf.remaining() == 0 => return Poll::Ready(Ok(())),
            Some(left) => left,
        };
        if left == 0 && self.held().chunked.is_some() {
            // In the chunked body: read on, and find its end.
            let start = buf.filled().len();
            let r = self.poll_open(cx, buf);
            let held = self.held();
            let scan = held.chunked.as_mut().expect("checked");
            match scan.scan(&buf.filled()[start..]) {
                Scanned::More => {}
                Scanned::End(n) => {
                    let after = buf.filled()[start + n..].to_vec();
                    buf.set_filled(start + n);
                    if !after.is_empty() {
                        held.prepend(after);
                    }
                    held.chunked = None; // fenced at its end: what follows is the next request
                }
                Scanned::Bad => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunked framing")));
                }
            }
            return r;
        }
        if left > 0 {
            let mut part = buf.take(left);
            let r = self.poll_open(cx, &mut part);
            let n = part.filled().len();
            // SAFETY: `part` is the start of `buf`'s unfilled part, whose first `n` bytes were filled.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            self.held().fence -= n;
            return r;
        }
        if self.held().pending() {
            return Poll::Pending;
        }
        let mut got = Vec::with_capacity(HOLD_READ);
        let mut rb = ReadBuf::uninit(got.spare_capacity_mut());
        ready!(self.poll_stream(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the stream initialized the first `n` bytes.
        unsafe { got.set_len(n) };
        self.held().keep(got);
        Poll::Pending
    }
}

/// HTTP/2's connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read until the bytes held tell whether they begin with HTTP/2's
/// preface: `true` if they do, `false` at the first byte that differs.
/// The bytes stay held, for whoever reads the connection next.
pub async fn begins_h2(c: &mut (dyn Fenced + Send)) -> io::Result<bool> {
    loop {
        let held = c.held().bytes();
        let n = held.len().min(H2_PREFACE.len());
        if held[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let mut rb = ReadBuf::uninit(&mut chunk);
        std::future::poll_fn(|cx| c.poll_stream(cx, &mut rb)).await?;
        if rb.filled().is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        c.held().extend(rb.filled());
    }
}

/// Where a request ends, by its framing.
#[derive(Debug, PartialEq)]
pub enum Framing {
    /// After this many bytes: its head and Content-Length body.
    Length(usize),
    /// With its chunked body, after its head of `head` bytes.
    Chunked { head: usize },
}

/// Where the request that `bytes` begin with ends. `None` when it cannot be
/// told from them: a head not complete or not valid, a Transfer-Encoding
/// other than one `chunked`, or a request whose connection may turn into
/// something else (`Upgrade`, `CONNECT`).
pub fn request_framing(bytes: &[u8]) -> Option<Framing> {
    let mut fields = [httparse::EMPTY_HEADER; 256]; // as many as Pingora's loop parses
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = req.parse(bytes).ok()? else {
        return None;
    };
    if req.method == Some("CONNECT") {
        return None;
    }
    let mut body: Option<usize> = None;
    let mut chunked = false;
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("upgrade") {
            return None;
        }
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !f.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
            continue;
        }
        if f.name.eq_ignore_ascii_case("content-length") {
            let v = f.value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: usize = std::str::from_utf8(v).ok()?.parse().ok()?;
            // The same length repeated is one length; two different ones are refused anyway.
            if body.is_some_and(|b| b != n) {
                return None;
            }
            body = Some(n);
        }
    }
    if chunked {
        return Some(Framing::Chunked { head });
    }
    head.checked_add(body.unwrap_or(0)).map(Framing::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_len(bytes: &[u8]) -> Option<usize> {
        match request_framing(bytes)? {
            Framing::Length(n) => Some(n),
            Framing::Chunked { .. } => None,
        }
    }

    #[test]
    fn a_request_is_its_head_and_its_content_length_body() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(request_len(get), Some(27));
        let mut two = get.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(request_len(&two), Some(27), "the next request is not this one's");
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET";
        assert_eq!(request_len(post), Some(52));
        assert_eq!(request_len(&post[..49]), Some(52), "the body need not be here yet");
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(request_len(twice), Some(twice.len()));
        // Nothing to tell it by.
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None, "head not ended");
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            None
        );
        assert_eq!(request_len(b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"), None);
        assert_eq!(
            request_len(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            None
        );
        assert_eq!(request_len(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), None);
        assert_eq!(request_len(b"\x16\x03\x01"), None);
    }

    /// Held bytes in front of a stream that has `stream` to give, in one read.
    struct Fake {
        held: Held,
        stream: &'static [u8],
    }

    impl Fenced for Fake {
        fn held(&mut self) -> &mut Held {
            &mut self.held
        }
        fn poll_stream(&mut self, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.stream.len().min(buf.remaining());
            buf.put_slice(&self.stream[..n]);
            self.stream = &self.stream[n..];
            Poll::Ready(Ok(()))
        }
    }

    fn read(f: &mut Fake) -> Poll<Vec<u8>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut space = [0u8; 64];
        let mut buf = ReadBuf::new(&mut space);
        f.poll_fenced(&mut cx, &mut buf).map(|r| {
            r.unwrap();
            buf.filled().to_vec()
        })
    }

    /// A fenced reader gets its own bytes and no more; past them it keeps
    /// what comes for the next reader, or sees the end of the stream.
    #[test]
    fn reads_stop_at_the_fence_and_keep_what_follows() {
        let mut f = Fake {
            held: Held::default(),
            stream: b"GET /c\r\n\r\n",
        };
        f.held.rewind(b"GET /a\r\n\r\nGET /b\r\n\r\n");
        f.held.fence(Some(10));
        assert_eq!(read(&mut f), Poll::Ready(b"GET /a\r\n\r\n".to_vec()), "up to the fence");
        // At the fence, with the next request held: nothing, for ever.
        assert_eq!(read(&mut f), Poll::Pending);
        assert_eq!(f.held.bytes(), b"GET /b\r\n\r\n");
        // Open again: the rest, then the stream.
        f.held.fence(None);
        assert_eq!(read(&mut f), Poll::Ready(b"GET /b\r\n\r\n".to_vec()));
        assert_eq!(read(&mut f), Poll::Ready(b"GET /c\r\n\r\n".to_vec()));
        // Nothing held: what the client sends is kept, and the read still waits.
        let mut f = Fake {
            held: Held::default(),
            stream: b"GET /d",
        };
        f.held.fence(Some(0));
        assert_eq!(read(&mut f), Poll::Pending);
        assert_eq!(f.held.bytes(), b"GET /d");
        // A client that closed: the end of the stream.
        f.held.skip(6);
        assert_eq!(read(&mut f), Poll::Ready(Vec::new()));
        // A chunked body: fenced where it ends, whatever the reads bring.
        let mut f = Fake {
            held: Held::default(),
            stream: b"",
        };
        f.held.rewind(b"POST /\r\n\r\n3\r\nabc\r\n0\r\n\r\nNEXT");
        f.held.fence_request(Some(Framing::Chunked { head: 10 }));
        assert_eq!(read(&mut f), Poll::Ready(b"POST /\r\n\r\n".to_vec()));
        assert_eq!(read(&mut f), Poll::Ready(b"3\r\nabc\r\n0\r\n\r\n".to_vec()));
        assert_eq!(read(&mut f), Poll::Pending);
        assert_eq!(f.held.bytes(), b"NEXT");
        // Broken chunked framing fails the read.
        f.held.skip(4);
        f.held.rewind(b"2;\nxx\r\n");
        f.held.fence_request(Some(Framing::Chunked { head: 0 }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut space = [0u8; 64];
        let mut buf = ReadBuf::new(&mut space);
        assert!(matches!(f.poll_fenced(&mut cx, &mut buf), Poll::Ready(Err(_))));
        // A fence within what one read would give.
        f.held.rewind(b"0123456789");
        f.held.fence(Some(4));
        assert_eq!(read(&mut f), Poll::Ready(b"0123".to_vec()));
        assert_eq!(read(&mut f), Poll::Pending);
        f.held.fence(None);
        assert_eq!(read(&mut f), Poll::Ready(b"456789".to_vec()));
    }
}
