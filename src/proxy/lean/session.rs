//! The lean loop's HTTP/1.1 server side: the client's request, parsed once
//! from the bytes the listener read while it waited, and the response
//! written back with the same framing and fields Pingora's server session
//! writes (`Date` and `Connection` set, `Content-Length` or chunked bodies,
//! none for HEAD, 204 and 304).
//!
//! It exists because `pingora-core`'s server session, built for every kind
//! of request, costs more than the rest of a lean request together: a
//! second parse of the request, a header map rebuilt on every response to
//! add two fields, body reader and writer state, and a 4.5 KiB finishing
//! future. What the gateway's steps need from it is the [`Downstream`]
//! trait, which this type implements.

use super::edits::ClientFields;
use super::upstream::{ends_chunked, put_field, ResponseHead};
use crate::proxy::downstream::Downstream;
use crate::timeout::Alarm;
use bytes::{BufMut, Bytes, BytesMut};
use log::warn;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::future::Future;
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request head the lean loop takes, parsed once. The steps read its
/// method, target and fields from the spans kept here; the `RequestHeader`
/// (a header map and a `Uri`, about a seventh of a plain request's work) is
/// built only when a step asks for the whole header: plugins that edit the
/// client's fields, hashing on a field, a head with a bare LF (its upstream
/// request is written from the header).
pub struct Head {
    /// The head as it came.
    raw: Bytes,
    method: http::Method,
    /// The target, parsed as `RequestHeader` parses it.
    target: http::uri::PathAndQuery,
    /// Name and value of each field, as spans of `raw`.
    fields: SmallVec<[Field; 8]>,
    /// Which of `fields` is the first Host field, if its value is text
    /// ([`Head::text`] would give it; checked once, here).
    host: Option<u32>,
    /// The whole header, once asked for.
    req: OnceLock<RequestHeader>,
    /// The client sent `Connection: close`.
    close: bool,
    /// A WebSocket handshake (`Upgrade: websocket`).
    upgrade: bool,
    /// The head as it came, for writing the upstream request from it.
    lines: Option<Lines>,
}

/// A field's name and value: `(start, end)` in the head.
#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// A request head as the client sent it, and which of its field lines
/// cannot be copied to the upstream request as they are: see
/// [`super::upstream::request_head_from`].
pub struct Lines {
    pub raw: Bytes,
    /// Where the field lines end (the final CRLF).
    pub end: usize,
    /// Lines to rewrite or leave out, in order. The others are written
    /// `name: value` CRLF exactly. (Room for two without an allocation: a
    /// client's `Connection` field is the usual one.)
    pub special: SmallVec<[Special; 2]>,
}

/// A field line not copied as it is: not written `name: value` CRLF, or a
/// field the upstream request gets its own way (`Connection`, `Upgrade`,
/// the forwarding fields).
pub struct Special {
    pub line: std::ops::Range<usize>,
    pub name: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
}

/// Fields the upstream request writes its own way: `Connection`, `Upgrade`
/// and the forwarding fields (compared by length first).
pub fn rewritten(name: &[u8]) -> bool {
    let is = |known: &str| name.len() == known.len() && name.eq_ignore_ascii_case(known.as_bytes());
    is("connection") || is("upgrade") || crate::proxy::forwarded::NAMES.into_iter().any(is)
}

impl Head {
    /// The head's length as it came: where a request sent after it (pipelined) begins.
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }

    /// Build the request from `head` (exactly one complete request head) as
    /// `httparse` saw it in `parsed`. `None` if Pingora's header types
    /// refuse it (Pingora's loop then serves it, with its own errors).
    ///
    /// The upstream request is written from the lines as they came, so the
    /// header does without the map that keeps field names' case (half its
    /// cost). Only a head with a bare LF line end keeps the case map: it is
    /// written from the header.
    pub fn build(head: &[u8], parsed: &httparse::Request, upgrade: bool) -> Option<Box<Head>> {
        let raw = Bytes::copy_from_slice(head);
        let base = head.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let at = |s: &[u8]| {
            let r = span(s);
            (r.start as u32, r.end as u32)
        };
        let lines = Lines::of(head, &raw, parsed, &span);
        let method = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
        // A target with a fragment or not in UTF-8 is one `RequestHeader` keeps
        // apart from its `Uri`: Pingora's loop serves those.
        let path = parsed.path?.as_bytes();
        if path.contains(&b'#') || std::str::from_utf8(path).is_err() {
            return None;
        }
        let target = http::uri::PathAndQuery::from_maybe_shared(raw.slice(span(path))).ok()?;
        let mut close = false;
        let (mut host, mut first_host) = (None, false);
        let mut fields = SmallVec::with_capacity(parsed.headers.len());
        for (i, h) in parsed.headers.iter().enumerate() {
            if h.name.len() == 10 && h.name.eq_ignore_ascii_case("connection") {
                close |= h.value.eq_ignore_ascii_case(b"close");
            } else if h.name.len() == 4 && !first_host && h.name.eq_ignore_ascii_case("host") {
                first_host = true;
                host = text(h.value).then_some(i as u32);
            }
            fields.push(Field {
                name: at(h.name.as_bytes()),
                value: at(h.value),
            });
        }
        Some(Box::new(Head {
            raw,
            method,
            target,
            fields,
            host,
            req: OnceLock::new(),
            close,
            upgrade,
            lines,
        }))
    }

    fn bytes(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.raw[start as usize..end as usize]
    }

    /// The fields named `name` (any case), in order.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        (self.fields.iter()).filter(move |f| self.bytes(f.name).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The first field named `name` (any case), if it is visible ASCII, as
    /// `HeaderValue::to_str` would give it.
    pub fn field(&self, name: &str) -> Option<&str> {
        if let Some(req) = self.built() {
            return req.first(name);
        }
        self.text(self.named(name).next()?)
    }

    /// The first Host field, as [`Head::field`] gives it (found and checked
    /// when the head was taken in: the steps ask for it several times).
    fn host_field(&self) -> Option<&str> {
        match self.built() {
            Some(req) => req.first("host"),
            None => {
                let value = self.bytes(self.fields[self.host? as usize].value);
                // SAFETY: `host` is set only for a value `text` found to be ASCII, which is
                // UTF-8; `raw` never changes.
                Some(unsafe { std::str::from_utf8_unchecked(value) })
            }
        }
    }

    /// `Downstream::find_field` over this head.
    fn find_field<'a>(&'a self, name: &str, find: &mut dyn FnMut(&'a str) -> Option<&'a str>) -> Option<&'a str> {
        match self.built() {
            Some(req) => crate::proxy::downstream::find_field(req, name, find),
            None => self.named(name).filter_map(|f| self.text(f)).find_map(find),
        }
    }

    /// A field's value if it is visible ASCII (and tabs), as `HeaderValue::to_str` has it.
    fn text(&self, f: &Field) -> Option<&str> {
        let v = self.bytes(f.value);
        text(v).then(|| std::str::from_utf8(v).ok()).flatten()
    }

    /// The whole header once built: from then on what the steps read, as
    /// they may have edited it (`req_mut`).
    fn built(&self) -> Option<&RequestHeader> {
        self.req.get()
    }

    /// The whole header, built the first time it is asked for.
    pub fn req(&self) -> &RequestHeader {
        self.req.get_or_init(|| self.build_req())
    }

    /// As Pingora's header types take the request in. Only the name and case
    /// map choice can differ from what was checked when it was taken in: a
    /// field `http` refuses (none `httparse` lets through) is left out.
    fn build_req(&self) -> RequestHeader {
        let n = Some(self.fields.len());
        let target = self.target.as_str().as_bytes();
        let mut req = if self.lines.is_some() {
            RequestHeader::build_no_case(self.method.clone(), target, n)
        } else {
            RequestHeader::build(self.method.clone(), target, n)
        }
        // `build` parsed the target with the same `PathAndQuery` parse, and the method is GET or HEAD.
        .expect("method and target checked when taken in");
        req.set_version(http::Version::HTTP_11);
        for f in &self.fields {
            let name = self.raw.slice(f.name.0 as usize..f.name.1 as usize);
            let value = self.raw.slice(f.value.0 as usize..f.value.1 as usize);
            if let Err(e) = req.append_header(name, pingora_http::header_value_from_raw(value)) {
                warn!("request field left out: {e}");
            }
        }
        req
    }

    #[cfg(test)]
    pub fn lines(&self) -> Option<&Lines> {
        self.lines.as_ref()
    }
}

impl ClientFields for Head {
    fn first(&self, name: &str) -> Option<&str> {
        self.field(name)
    }

    fn has(&self, name: &str) -> bool {
        match self.built() {
            Some(req) => req.has(name),
            None => self.named(name).next().is_some(),
        }
    }

    fn hosts(&self, each: &mut dyn FnMut(&[u8])) {
        match self.built() {
            Some(req) => req.hosts(each),
            None => self.named("host").for_each(|f| each(self.bytes(f.value))),
        }
    }
}

/// Visible ASCII and tabs only, as `HeaderValue::to_str` takes.
fn text(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

impl Lines {
    /// `None` unless every line ends with CRLF (a bare LF, which `httparse`
    /// allows, is not passed on).
    fn of(
        head: &[u8],
        raw: &Bytes,
        parsed: &httparse::Request,
        span: &impl Fn(&[u8]) -> std::ops::Range<usize>,
    ) -> Option<Lines> {
        let first = head.iter().position(|&b| b == b'\n')?;
        if !head.ends_with(b"\r\n\r\n") || first == 0 || head[first - 1] != b'\r' {
            return None;
        }
        let end = head.len() - 2;
        let mut special = SmallVec::new();
        let headers = parsed.headers.iter();
        let starts = parsed.headers.iter().skip(1).map(|h| span(h.name.as_bytes()).start);
        for (h, next) in headers.zip(starts.map(Some).chain([None])) {
            let (name, value) = (span(h.name.as_bytes()), span(h.value));
            let line = name.start..next.unwrap_or(end);
            // `name: value` CRLF exactly, as the upstream request would have it written?
            let plain = value.start == name.end + 2
                && head[name.end..value.start] == *b": "
                && line.end == value.end + 2
                && head[value.end..line.end] == *b"\r\n";
            if !plain || rewritten(h.name.as_bytes()) {
                // Not copied as it is; a line broken by a bare LF is not passed on at all.
                if !head[line.clone()].ends_with(b"\r\n") {
                    return None;
                }
                special.push(Special { line, name, value });
            }
        }
        Some(Lines {
            raw: raw.clone(),
            end,
            special,
        })
    }
}

/// How the response body goes out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Out {
    /// No header sent yet.
    Header,
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Ends with the connection (no length known, the client is HTTP/1.1
    /// but the response says nothing): the connection is not kept.
    Close,
    /// Switched protocols (101): the connection is a tunnel now.
    Switched,
}

pub struct LeanSession {
    stream: Stream,
    /// The request (boxed since it was parsed: moved around as a pointer).
    head: Box<Head>,
    client_ip: Option<IpAddr>,
    /// `Some(idle seconds)` (0: no limit) keeps the connection after this
    /// response; `None` closes it.
    keepalive: Option<u64>,
    /// Requests this connection may still carry after this one (`None`: no limit).
    reuses_left: Option<u32>,
    status: Option<u16>,
    out: Out,
    /// The response went out whole.
    complete: bool,
    /// Written but not sent yet: the response head until the first piece of
    /// its Content-Length body; over TLS, any pieces until a flush.
    held: Option<BytesMut>,
    /// The connection is TLS (pieces are gathered into records).
    tls: bool,
    /// The next response head waits to go with its body's first piece.
    defer_head: bool,
    /// Longest wait for a write to the client to go through
    /// (`send_timeout`, ms; 0: none). A write that does not have to wait
    /// sets no timer.
    send_timeout_ms: u32,
}

/// How long a client whose socket is on no reactor yet waits for its answer
/// unwatched ([`LeanSession::client_gone`]).
pub const WATCH_AFTER: Duration = Duration::from_millis(100);

/// Most bytes gathered over TLS before they go (a TLS record's size).
const JOIN_MAX: usize = 16 * 1024;

impl LeanSession {
    pub fn new(stream: Stream, head: Box<Head>, reuses_left: Option<u32>) -> Self {
        let client_ip = match crate::listener::peer_of(&stream) {
            Some(peer) => Some(peer.ip()),
            None => stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned())
                .and_then(|a| a.as_inet().map(|a| a.ip())),
        };
        let tls = stream.get_ssl().is_some();
        LeanSession {
            stream,
            keepalive: (!head.close).then_some(0),
            head,
            client_ip,
            reuses_left,
            status: None,
            out: Out::Header,
            complete: false,
            held: None,
            tls,
            defer_head: false,
            send_timeout_ms: 0,
        }
    }

    /// The client's fields, for edits to read (without building the header).
    pub fn fields(&self) -> &dyn ClientFields {
        &*self.head
    }

    /// The request head as it came, when the upstream request is written from it.
    pub fn lines(&self) -> Option<&Lines> {
        self.head.lines.as_ref()
    }

    /// The client connection, for the tunnel after a protocol switch.
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    fn will_keepalive(&self) -> bool {
        self.keepalive.is_some() && self.reuses_left != Some(0)
    }

    /// Resolves once the client goes away while its response is awaited
    /// (the request is then abandoned, as in Pingora's loop). Bytes it sends
    /// meanwhile only end keep-alive.
    ///
    /// A new connection's socket is on no reactor yet (see the listener's
    /// `Conn`): it is put on one only if the answer takes [`WATCH_AFTER`],
    /// so a request answered sooner costs no `epoll_ctl` for the watch. A
    /// client that leaves earlier is noticed then, or when its answer
    /// cannot be written.
    pub async fn client_gone(&mut self) -> Box<Error> {
        if crate::listener::unwatched(&self.stream) {
            tokio::time::sleep(WATCH_AFTER).await;
            if let Err(e) = crate::listener::watch(&mut self.stream) {
                return Error::because(ErrorType::ReadError, "while waiting for the response", e);
            }
        }
        // The request is read whole: what the client sends now is its next
        // one (pipelined), kept by the connection for later, and such a read
        // waits for ever; only the end of the stream comes through.
        crate::listener::fence(&mut self.stream, Some(0));
        let mut byte = [0u8; 1];
        loop {
            std::future::poll_fn(|cx| crate::listener::poll_readable_for_watch(&self.stream, cx)).await;
            match self.stream.read(&mut byte).await {
                Ok(0) => return Error::explain(ErrorType::ConnectionClosed, "client closed the connection"),
                Ok(_) => {}
                Err(e) => return Error::because(ErrorType::ReadError, "while waiting for the response", e),
            }
        }
    }

    /// The connection, if it may carry another request; closed otherwise.
    pub async fn finish(mut self) -> Option<Stream> {
        if self.complete && self.will_keepalive() {
            return Some(self.stream);
        }
        let limit = self.send_limit().unwrap_or(Duration::MAX);
        let end = async {
            if self.tls {
                // TLS ends with its close_notify alert.
                let _ = self.stream.shutdown().await;
            } else {
                // Closing the socket sends what is left, then the FIN, as `shutdown` would, one
                // system call sooner (nginx closes so too).
                let _ = self.stream.flush().await;
            }
        };
        let _ = Alarm::default().within(limit, std::pin::pin!(end)).await;
        None
    }

    fn send_limit(&self) -> Option<Duration> {
        (self.send_timeout_ms > 0).then(|| Duration::from_millis(self.send_timeout_ms.into()))
    }

    /// Write to the client within `send_timeout`.
    async fn write(&mut self, bytes: &[u8], flush: bool) -> Result<()> {
        let Some(limit) = self.send_limit() else {
            return self.write_now(bytes, flush).await;
        };
        // The alarm's timer is made only if the write has to wait.
        let r = Alarm::default()
            .within(limit, std::pin::pin!(self.write_now(bytes, flush)))
            .await;
        r.unwrap_or_else(|_| {
            Error::e_explain(
                ErrorType::WriteTimedout,
                format!("the client took no bytes for {limit:?}"),
            )
        })
    }

    async fn write_now(&mut self, bytes: &[u8], flush: bool) -> Result<()> {
        self.put(bytes, flush)
            .await
            .or_err(ErrorType::WriteError, "while writing to the client")?;
        if flush {
            self.stream
                .flush()
                .await
                .or_err(ErrorType::WriteError, "while flushing to the client")?;
        }
        Ok(())
    }

    /// `bytes` on their way to the client, after what is [held](Self::held).
    /// Over TLS, pieces are gathered up to a flush (or [`JOIN_MAX`]) and go
    /// as one record, not one each: the TLS stream claims vectored writes
    /// but makes a record per buffer. On a plain connection a held head and
    /// `bytes` go in one vectored write, straight from here, with no
    /// gathering copy.
    async fn put(&mut self, bytes: &[u8], flush: bool) -> std::io::Result<()> {
        let Some(mut held) = self.held.take() else {
            if self.tls && !flush && bytes.len() <= JOIN_MAX {
                self.held = Some(BytesMut::from(bytes));
                return Ok(());
            }
            return self.stream.write_all(bytes).await;
        };
        if self.tls {
            if held.len() + bytes.len() <= JOIN_MAX {
                held.extend_from_slice(bytes);
                if flush {
                    return self.stream.write_all(&held).await;
                }
                self.held = Some(held);
                return Ok(());
            }
            self.stream.write_all(&held).await?;
            return self.stream.write_all(bytes).await;
        }
        let (mut head, mut bytes) = (&held[..], bytes);
        while !head.is_empty() {
            let n = self
                .stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(bytes)])
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            bytes = &bytes[n - from_head..];
        }
        self.stream.write_all(bytes).await
    }

    /// Hold `buf` to go out with what is written next ([`Self::put`]).
    fn hold(&mut self, buf: BytesMut) {
        debug_assert!(self.held.is_none(), "a head is the first thing written");
        self.held = Some(buf);
    }

    /// The response line and fields of `resp` as Pingora writes them, but
    /// always as `HTTP/1.1` (what the gateway speaks, as nginx answers).
    fn serialize(resp: &ResponseHeader, keep: Option<bool>) -> Result<BytesMut> {
        let reason = resp.get_reason_phrase().map(str::as_bytes);
        let mut w = HeadWriter::new(resp.status, reason, keep);
        resp.map(|name, value| {
            let name = match name {
                HeaderNameVariant::Case(c) => c.as_slice(),
                HeaderNameVariant::Titled(t) => t.as_bytes(),
            };
            w.field(name, value.as_bytes());
            Ok(())
        })?;
        Ok(w.finish())
    }

    /// How the response body goes out, as Pingora frames it: none for HEAD,
    /// 204 and 304, else chunked, Content-Length, or until the connection
    /// closes (which then is not kept).
    fn frame(&mut self, code: u16, chunked: bool, length: Option<u64>) {
        self.out = if code == 101 {
            Out::Switched
        } else if self.head.method == http::Method::HEAD || code == 204 || code == 304 {
            Out::Empty
        } else if chunked {
            Out::Chunked
        } else {
            length.map_or(Out::Close, Out::Length)
        };
        if matches!(self.out, Out::Close | Out::Switched) {
            self.keepalive = None;
        }
    }

    /// What `Connection` the response header gets: keep-alive or close, or
    /// (`None`) the fields as they are, for a protocol switch, which Pingora
    /// also writes as it came.
    fn connection(&self) -> Option<bool> {
        (self.out != Out::Switched).then(|| self.will_keepalive())
    }

    /// The next response head goes out with its body's first piece, not on
    /// its own: a body about to follow at once, reframed (a compressed one).
    pub fn defer_head(&mut self) {
        self.defer_head = true;
    }

    /// Write the response header and note what was sent.
    async fn send_head(&mut self, buf: BytesMut, status: u16, end: bool) -> Result<()> {
        // Flushed now unless a Content-Length body follows (as Pingora does).
        let flush = end || !matches!(self.out, Out::Length(n) if n > 0);
        if flush {
            // Deferred: gathered, to be sent with what follows.
            let defer = std::mem::take(&mut self.defer_head) && !end;
            self.write(&buf, !defer).await?;
        } else {
            self.hold(buf); // goes with the first body piece
        }
        self.status = Some(status);
        if end {
            self.send_body(None, true).await?;
        }
        Ok(())
    }

    /// Send the response header of `head` with `fields` (its fields, as
    /// they came or edited) without building a `ResponseHeader`: `Date` and
    /// `Connection` set as for any other, the body framed by `chunked` or
    /// `length`. The head is written out before the returned future is
    /// made, so that future holds neither `fields` nor the writer: it is
    /// part of every request's future.
    pub fn send_fields<'f>(
        &mut self,
        head: &ResponseHead,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
        chunked: bool,
        length: Option<u64>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + '_ {
        let built = self.status.is_none().then(|| {
            let code = head.status.as_u16();
            self.frame(code, chunked, length);
            let mut w = HeadWriter::new(head.status, Some(head.reason()), self.connection());
            for (name, value) in fields {
                w.field(name, value);
            }
            (w.finish(), code)
        });
        async move {
            match built {
                Some((buf, code)) => self.send_head(buf, code, end).await,
                None => Ok(()),
            }
        }
    }
}

/// Writes a response head: `Date` and `Connection` replace any the response
/// carries, in their place, or follow the other fields (as Pingora's
/// `insert_header` places them). With `keep` `None`, the fields go as they are.
struct HeadWriter {
    buf: BytesMut,
    /// `keep-alive` or `close`; `None`: the fields go as they are.
    connection: Option<&'static [u8]>,
    /// Date, Connection written.
    done: [bool; 2],
}

impl HeadWriter {
    fn new(status: http::StatusCode, reason: Option<&[u8]>, keep: Option<bool>) -> Self {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(b"HTTP/1.1 ");
        buf.put_slice(status.as_str().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(reason.unwrap_or_default());
        buf.put_slice(b"\r\n");
        HeadWriter {
            buf,
            connection: keep.map(|k| if k { &b"keep-alive"[..] } else { b"close" }),
            done: [false; 2],
        }
    }

    fn ours(&mut self, i: usize) {
        let Some(connection) = self.connection else { return };
        if !std::mem::replace(&mut self.done[i], true) {
            if i == 0 {
                crate::clock::http_date(|date| put_field(&mut self.buf, b"Date", date.as_bytes()));
            } else {
                put_field(&mut self.buf, b"Connection", connection);
            }
        }
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.connection.is_none() {
            put_field(&mut self.buf, name, value);
        } else if name.len() == 4 && name.eq_ignore_ascii_case(b"date") {
            self.ours(0);
        } else if name.len() == 10 && name.eq_ignore_ascii_case(b"connection") {
            self.ours(1);
        } else {
            put_field(&mut self.buf, name, value);
        }
    }

    fn finish(mut self) -> BytesMut {
        self.ours(0);
        self.ours(1);
        self.buf.put_slice(b"\r\n");
        self.buf
    }
}

impl Downstream for LeanSession {
    fn refusal(&self) -> Option<u16> {
        // `accepts` takes only GET and HEAD without a body, with a target
        // that starts with `/` and one Host it has checked as `valid_host` does.
        None
    }

    fn req(&self) -> &RequestHeader {
        self.head.req()
    }

    /// The header, to edit: the lines as they came no longer say what it
    /// holds, so the upstream request is written from the header (built
    /// first, while its lines still say how).
    fn req_mut(&mut self) -> &mut RequestHeader {
        self.head.req();
        self.head.lines = None;
        self.head.req.get_mut().expect("built above")
    }

    // Read from the head as it came until the header is built; from then on
    // from the header, which the steps may have edited.

    fn method(&self) -> &http::Method {
        self.head.built().map_or(&self.head.method, |r| &r.method)
    }

    fn version(&self) -> http::Version {
        self.head.built().map_or(http::Version::HTTP_11, |r| r.version)
    }

    fn path(&self) -> &str {
        self.head.built().map_or(self.head.target.path(), |r| r.uri.path())
    }

    fn target(&self) -> &str {
        match self.head.built() {
            Some(r) => r.uri.path_and_query().map_or("/", |p| p.as_str()),
            None => self.head.target.as_str(),
        }
    }

    fn query(&self) -> Option<&str> {
        self.head.built().map_or(self.head.target.query(), |r| r.uri.query())
    }

    /// The lean loop takes only requests with one plain Host field.
    fn host(&self) -> &str {
        self.head.host_field().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.field(name)
    }

    fn find_field<'a>(&'a self, name: &str, find: &mut dyn FnMut(&'a str) -> Option<&'a str>) -> Option<&'a str> {
        self.head.find_field(name, find)
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn keepalive_allowed(&self) -> bool {
        self.keepalive.is_some()
    }

    fn reusable_after_error(&self) -> bool {
        true
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        self.keepalive = seconds;
    }

    fn set_read_timeout(&mut self, _timeout: Option<Duration>) {
        // No body is read: nothing to time.
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| t.as_millis().clamp(1, u32::MAX.into()) as u32);
        self.send_timeout_ms = ms;
    }

    fn is_upgrade_req(&self) -> bool {
        self.head.upgrade
    }

    fn response_status(&self) -> Option<u16> {
        self.status
    }

    fn retry_buffer_truncated(&self) -> bool {
        false // no body to buffer
    }

    fn request_body_done(&mut self) -> bool {
        true // no body
    }

    fn summary(&self) -> String {
        format!("{} {}, Host: {}", self.method(), self.target(), self.host())
    }

    async fn send_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        let switch = resp.status == http::StatusCode::SWITCHING_PROTOCOLS && self.head.upgrade;
        if self.status.is_some() || (resp.status.is_informational() && !switch) {
            return Ok(()); // one final response per request; 1xx but a protocol switch are not passed on
        }
        let headers = &resp.headers;
        let chunked = (headers.get_all(http::header::TRANSFER_ENCODING).iter().next_back())
            .is_some_and(|te| ends_chunked(te.as_bytes()));
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        self.frame(resp.status.as_u16(), chunked, length);
        let buf = Self::serialize(&resp, self.connection())?;
        self.send_head(buf, resp.status.as_u16(), end).await
    }

    async fn send_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            match self.out {
                Out::Length(left) => {
                    let n = left.min(b.len() as u64);
                    if n < b.len() as u64 {
                        warn!("Trying to write data over content-length: {left} bytes left");
                    }
                    self.out = Out::Length(left - n);
                    // Each piece goes as it came, as nginx sends what it has: the next may be slow.
                    self.write(&b[..n as usize], true).await?;
                }
                Out::Chunked => {
                    let size = format!("{:X}\r\n", b.len());
                    self.write(size.as_bytes(), false).await?;
                    self.write(&b, false).await?;
                    if end && !self.complete {
                        // The last piece and the end of the body go together.
                        self.write(b"\r\n0\r\n\r\n", true).await?;
                        self.complete = true;
                    } else {
                        self.write(b"\r\n", true).await?;
                    }
                }
                Out::Close => self.write(&b, true).await?,
                Out::Header | Out::Empty | Out::Switched => {}
            }
        }
        if end && !self.complete {
            match self.out {
                Out::Length(left) if left > 0 => {
                    return Error::e_explain(
                        ErrorType::WriteError,
                        format!("response body ended {left} bytes short of its Content-Length"),
                    );
                }
                Out::Chunked => self.write(b"0\r\n\r\n", true).await?,
                _ => {}
            }
            self.complete = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::lean::edits::{ClientFields, RequestEdits};
    use portico_plugin_api::Headers;

    fn taken(raw: &[u8]) -> Option<Box<Head>> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw).unwrap().is_complete());
        Head::build(raw, &parsed, false)
    }

    /// What the steps read of a request, from the head as it came and from
    /// the header built from it, must be the same.
    #[test]
    fn the_head_as_it_came_reads_as_the_header_built_from_it() {
        let heads: [&[u8]; 4] = [
            b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\nX-Dup: 1\r\nx-dup: 2\r\nX-Bin: a\xffb\r\nX-Tab: a\tb\r\nCookie: k=v\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n",
            b"GET /p? HTTP/1.1\nHost: lf\n\n",
            b"GET /%41?%20 HTTP/1.1\r\nHost: h\r\nReferer: r\r\nX-Empty:\r\n\r\n",
        ];
        let names = [
            "host",
            "HOST",
            "user-agent",
            "x-dup",
            "X-Bin",
            "x-tab",
            "cookie",
            "referer",
            "x-empty",
            "none",
        ];
        for raw in heads {
            let head = taken(raw).expect("taken");
            let (method, target, path, query) = (
                head.method.clone(),
                head.target.as_str().to_string(),
                head.target.path().to_string(),
                head.target.query().map(str::to_string),
            );
            let fields: Vec<_> = names.iter().map(|n| head.field(n).map(str::to_string)).collect();
            let host = head.host_field().map(str::to_string);
            let has: Vec<_> = names.iter().map(|n| ClientFields::has(&*head, n)).collect();
            let mut hosts = Vec::new();
            head.hosts(&mut |h| hosts.push(h.to_vec()));
            // Every visible-ASCII field of a name, in order, as a cookie lookup walks them.
            let every = |head: &Head, name: &str| {
                let mut seen = Vec::new();
                head.find_field(name, &mut |v| {
                    seen.push(v.to_string());
                    None
                });
                seen
            };
            let walked: Vec<_> = ["x-dup", "x-bin", "cookie", "none"].map(|n| every(&head, n)).into();
            assert!(head.built().is_none(), "nothing built so far");
            let req = head.req();
            assert_eq!(method, req.method);
            assert_eq!(Some(target.as_str()), req.uri.path_and_query().map(|p| p.as_str()));
            assert_eq!(path, req.uri.path());
            assert_eq!(query.as_deref(), req.uri.query());
            for (i, n) in names.iter().enumerate() {
                assert_eq!(fields[i].as_deref(), req.first(n), "{n} in {raw:?}");
                assert_eq!(has[i], req.has(n), "{n} in {raw:?}");
            }
            let built: Vec<_> = ["x-dup", "x-bin", "cookie", "none"].map(|n| every(&head, n)).into();
            assert_eq!(walked, built);
            assert_eq!(host.as_deref(), req.first("host"));
            let mut built_hosts = Vec::new();
            req.hosts(&mut |h| built_hosts.push(h.to_vec()));
            assert_eq!(hosts, built_hosts);
        }
    }

    #[test]
    fn targets_the_header_keeps_apart_from_its_uri_are_left_to_pingora() {
        // (`httparse` lets no byte above 0x7e through in a target, so UTF-8 is checked only in case.)
        assert!(taken(b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n").is_none());
        assert!(taken(b"GET /a%23frag HTTP/1.1\r\nHost: h\r\n\r\n").is_some());
    }

    /// Once a step has edited the header, everything reads the edit.
    #[test]
    fn after_an_edit_the_header_is_what_is_read() {
        let mut head = taken(b"GET /p HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n").unwrap();
        head.req();
        head.req.get_mut().unwrap().insert_header("x-a", "2").unwrap();
        head.req.get_mut().unwrap().insert_header("host", "other").unwrap();
        assert_eq!(head.field("x-a"), Some("2"));
        let mut hosts = Vec::new();
        head.hosts(&mut |h| hosts.push(h.to_vec()));
        assert_eq!(hosts, [b"other".to_vec()]);
        let e = RequestEdits::new(&*head);
        assert_eq!(e.get("x-a"), Some("2"));
    }
}
