//! The lean loop's HTTP/1.1 exchange with an upstream server.
//!
//! `pingora-core`'s client session serializes a request header the proxy
//! first copies and edits, and hands back a copy of the response header it
//! parsed. For the lean loop's one shape of request (no body, no upgrade) this
//! module does the same job without the copies: the request head is written
//! in one piece from the client's header plus the forwarding fields, and the
//! response is parsed with `httparse` straight into the `ResponseHeader` the
//! hooks edit. The body is framed by Content-Length, chunked coding (decoded;
//! the client side encodes it again) or the server's close.
//!
//! Errors carry the same types and retry flags as Pingora's client, so
//! retries, passive health and error pages cannot tell the two apart: a
//! connection that closes before any response byte is `ConnectionClosed`
//! with `ReusedOnly` retry (a stale pooled connection), timeouts are
//! `ReadTimedout` / `WriteTimedout`, and a response that breaks HTTP/1.1
//! framing is `InvalidHTTPHeader`.

use super::connect::UpStream;
use super::session::Lines;
use crate::timeout::Alarm;
use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::{Error, ErrorType, ErrorType::*, OrErr, Result, RetryType};
use pingora_http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use std::mem::MaybeUninit;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most response header fields accepted, as in Pingora.
const MAX_HEADERS: usize = 256;
/// Largest trailer section accepted, as Pingora's largest header.
const MAX_HEADER_SIZE: usize = 1_048_575;
/// Largest response head a server may send (status line and fields); a
/// larger one is a 502, as nginx's "upstream sent too big header" (whose
/// limit, `proxy_buffer_size`, is 4k or 8k). Both loops.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size while waiting for the header.
const HEADER_READ: usize = 4096;
/// Read size for the body, as Pingora's body buffer.
const BODY_READ: usize = 64 * 1024;

fn too_big<T>() -> Result<T> {
    Error::e_explain(
        InvalidHTTPHeader,
        format!("response header larger than {MAX_RESPONSE_HEAD} bytes"),
    )
}

/// Write the request head for `req`: its request line and header fields in
/// the client's order and case, without `Connection` (the upstream
/// connection's own business) and with `fields` in place of any field of the
/// same name (`None`: left out). Fields the request lacks go at the end, then
/// `added`. For a WebSocket handshake (`websocket`), the client's `Upgrade`
/// is left out too and `Connection: Upgrade`, `Upgrade: websocket` follow
/// the request's fields, as Pingora's standard upstream request policy
/// writes them. `target`: the location's `rewrite` of the request's target.
/// `None` if the request target could not go on the wire.
pub fn request_head(
    req: &RequestHeader,
    fields: Replacements,
    added: &[(&str, &str)],
    websocket: bool,
    target: Option<&[u8]>,
) -> Option<BytesMut> {
    let path = target.unwrap_or(req.raw_path());
    if path.iter().any(|&b| matches!(b, 0x00 | b'\n' | b'\r' | b' ')) {
        return None;
    }
    let mut buf = BytesMut::with_capacity(512);
    buf.put_slice(req.method.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(path);
    buf.put_slice(b" HTTP/1.1\r\n");
    let mut w = FieldLines::new(fields, added, websocket);
    let _ = req.map(|name, value| {
        let name = match name {
            HeaderNameVariant::Case(c) => c.as_slice(),
            HeaderNameVariant::Titled(t) => t.as_bytes(),
        };
        w.line(&mut buf, name, value.as_bytes());
        Ok(())
    });
    w.finish(&mut buf);
    Some(buf)
}

/// The same request head as [`request_head`] writes, from the request's
/// lines as they came: copied in runs, but for the few that are rewritten
/// or left out ([`Lines::special`]). With `every`, when `fields` name some
/// of the other lines too, every line is matched against them. `target`:
/// the location's `rewrite` of the request's target, in place of the one in
/// the request line (method and version stay as they came).
pub fn request_head_from(
    lines: &Lines,
    fields: Replacements,
    added: &[(&str, &str)],
    websocket: bool,
    every: bool,
    target: Option<&[u8]>,
) -> BytesMut {
    let raw = &lines.raw[..];
    let mut buf = BytesMut::with_capacity(raw.len() + 160);
    let mut w = FieldLines::new(fields, added, websocket);
    let mut copied = 0;
    if every || target.is_some() {
        // The request line as it came, or with the target rewritten.
        copied = raw.iter().position(|&b| b == b'\n').map_or(0, |lf| lf + 1);
        let line = &raw[..copied];
        match target {
            None => buf.put_slice(line),
            Some(t) => {
                // `accepts` took a line of three parts, one space apart.
                let method = line.iter().position(|&b| b == b' ').unwrap_or(0);
                let version = line.iter().rposition(|&b| b == b' ').unwrap_or(method);
                buf.put_slice(&line[..=method]);
                buf.put_slice(t);
                buf.put_slice(&line[version..]);
            }
        }
    }
    let run = |buf: &mut BytesMut, w: &mut FieldLines, run: &[u8]| {
        if !every {
            return buf.put_slice(run);
        }
        // Lines written `name: value` CRLF exactly (a name has no colon).
        for line in run.split_inclusive(|&b| b == b'\n') {
            let line = &line[..line.len() - 2];
            let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            w.line(buf, &line[..colon], line.get(colon + 2..).unwrap_or_default());
        }
    };
    for sp in &lines.special {
        run(&mut buf, &mut w, &raw[copied..sp.line.start]);
        copied = sp.line.end;
        w.line(&mut buf, &raw[sp.name.clone()], &raw[sp.value.clone()]);
    }
    run(&mut buf, &mut w, &raw[copied..lines.end]);
    w.finish(&mut buf);
    buf
}

/// Writes a request's field lines: `Connection` (and a WebSocket
/// handshake's `Upgrade`) left out, `fields` in place of the first field of
/// the same name and the others of that name dropped, missing ones at the end.
struct FieldLines<'f> {
    fields: Replacements<'f>,
    added: &'f [(&'f str, &'f str)],
    /// Which of `fields` have been written (on the stack unless there are many).
    done: Done,
    websocket: bool,
}

/// Fields that replace the request's own of the same name: `(name, value)`,
/// `None` to leave it out.
pub type Replacements<'f> = &'f [(&'f str, Option<&'f str>)];

/// Which of a request's replacement fields have been written.
enum Done {
    Few(u64),
    Many(Vec<bool>),
}

impl Done {
    /// Mark field `i` written; whether it was already.
    fn mark(&mut self, i: usize) -> bool {
        match self {
            Done::Few(bits) => std::mem::replace(bits, *bits | 1 << i) & 1 << i != 0,
            Done::Many(v) => std::mem::replace(&mut v[i], true),
        }
    }
}

impl<'f> FieldLines<'f> {
    fn new(fields: Replacements<'f>, added: &'f [(&'f str, &'f str)], websocket: bool) -> Self {
        let done = if fields.len() <= 64 {
            Done::Few(0)
        } else {
            Done::Many(vec![false; fields.len()])
        };
        FieldLines {
            fields,
            added,
            done,
            websocket,
        }
    }

    fn line(&mut self, buf: &mut BytesMut, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"connection") || (self.websocket && name.eq_ignore_ascii_case(b"upgrade")) {
            return;
        }
        match self
            .fields
            .iter()
            .position(|(f, _)| name.eq_ignore_ascii_case(f.as_bytes()))
        {
            Some(i) => {
                if !self.done.mark(i) {
                    if let Some(v) = self.fields[i].1 {
                        put_field(buf, self.fields[i].0.as_bytes(), v.as_bytes());
                    }
                }
            }
            None => put_field(buf, name, value),
        }
    }

    /// The handshake's fields, the replacement fields not written yet, the
    /// added ones, the end of the head.
    fn finish(mut self, buf: &mut BytesMut) {
        if self.websocket {
            put_field(buf, b"Connection", b"Upgrade");
            put_field(buf, b"Upgrade", b"websocket");
        }
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if let (false, Some(v)) = (self.done.mark(i), value) {
                put_field(buf, name.as_bytes(), v.as_bytes());
            }
        }
        for (name, value) in self.added {
            put_field(buf, name.as_bytes(), value.as_bytes());
        }
        buf.put_slice(b"\r\n");
    }
}

/// Write one header field line: `name: value` CRLF.
pub fn put_field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.reserve(name.len() + value.len() + 4);
    buf.put_slice(name);
    // The two-byte pieces as integers: no copy calls for them.
    buf.put_u16(u16::from_be_bytes(*b": "));
    buf.put_slice(value);
    buf.put_u16(u16::from_be_bytes(*b"\r\n"));
}

/// Does a Transfer-Encoding value end with the chunked coding?
pub fn ends_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    /// The header has not arrived yet.
    Header,
    Length(u64),
    Chunked(Chunk),
    /// Ends when the server closes the connection.
    Close,
    /// The server switched protocols (101): what follows is no longer HTTP.
    Upgraded,
    Done,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// An upstream connection between requests: its socket, the timer of its
/// waits, and its (empty) read buffer, kept with it so that the next
/// request neither makes a timer nor allocates a buffer.
pub struct Upstream {
    pub stream: UpStream,
    pub alarm: Alarm,
    buf: BytesMut,
}

impl From<UpStream> for Upstream {
    fn from(stream: UpStream) -> Self {
        Upstream {
            stream,
            alarm: Alarm::default(),
            buf: BytesMut::new(),
        }
    }
}

/// A system error on the upstream connection, as Pingora's client reports
/// it. One met before any of the response (`before_response`) may be
/// retried if the connection came from the pool: most likely one the server
/// had dropped.
fn io_error(etype: ErrorType, context: &'static str, e: std::io::Error, before_response: bool) -> Box<Error> {
    let stale = before_response && e.raw_os_error().is_some();
    let mut e = Error::because(etype, context, e);
    if stale {
        e.retry = RetryType::ReusedOnly;
    }
    e
}

/// A read buffer larger than this is not kept with an idle connection.
const KEPT_BUF: usize = 2 * HEADER_READ;

/// One request and its response on one upstream connection.
/// What [`Exchange::parse_one`] found in the buffer.
enum Parsed {
    /// No whole head yet.
    Partial,
    /// An informational response, consumed.
    Interim,
    Final(ResponseHead),
}

/// Informational responses skipped for one request before the server is
/// taken to be broken (502): enough for any real use (100 Continue, 103
/// Early Hints), not an endless stream.
const MAX_INTERIM: u32 = 64;

pub struct Exchange {
    stream: UpStream,
    alarm: Alarm,
    buf: BytesMut,
    body: Body,
    /// The server lets the connection carry another request.
    keepalive: bool,
    head_request: bool,
    /// The request asks for a protocol switch: a 101 is its answer, not an interim one.
    upgrade_request: bool,
    /// Informational (1xx) responses skipped so far.
    interim: u32,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

impl Exchange {
    pub fn new(up: Upstream) -> Self {
        Exchange {
            stream: up.stream,
            alarm: up.alarm,
            buf: up.buf,
            body: Body::Header,
            keepalive: false,
            head_request: false,
            upgrade_request: false,
            interim: 0,
            read_timeout: None,
            write_timeout: None,
        }
    }

    pub fn fd(&self) -> i32 {
        self.stream.fd()
    }

    /// Send the request head (the whole request: the lean loop's requests have no body).
    pub async fn send(&mut self, head: &[u8], head_request: bool, upgrade_request: bool) -> Result<()> {
        self.head_request = head_request;
        self.upgrade_request = upgrade_request;
        let stream = &mut self.stream;
        let write = std::pin::pin!(async move {
            stream.write_all(head).await?;
            stream.flush().await
        });
        let sent = match self.write_timeout {
            Some(t) => match self.alarm.within(t, write).await {
                Ok(r) => r,
                Err(_) => return Error::e_explain(WriteTimedout, "while writing request headers (timeout)"),
            },
            None => write.await,
        };
        // A head that did not go out whole: likely a pooled connection the server dropped.
        sent.map_err(|e| io_error(WriteError, "while writing request headers", e, true))
    }

    /// The next part of the response, as Pingora's client hands it out: the
    /// header (1xx responses skipped), then body pieces, the last one marked.
    pub async fn next(&mut self) -> Result<Part> {
        if self.body == Body::Header {
            let head = self.read_header().await?;
            return Ok(Part::Head(head, self.body == Body::Done));
        }
        if self.body == Body::Done {
            return Ok(Part::Done);
        }
        let piece = self.read_body().await?;
        Ok(Part::Body(piece, self.body == Body::Done))
    }

    /// The body ends with the server's close (it is passed on chunked).
    pub fn close_delimited(&self) -> bool {
        self.body == Body::Close
    }

    /// The server switched protocols (a 101 to an upgrade request).
    pub fn upgraded(&self) -> bool {
        self.body == Body::Upgraded
    }

    /// After a 101: the connection, and the bytes that arrived behind the
    /// response header (already the new protocol's). The read buffer is
    /// released: a tunnel keeps none while idle.
    pub fn tunnel_parts(&mut self) -> (&mut UpStream, Vec<u8>) {
        let early = self.buf.to_vec();
        self.buf = BytesMut::new();
        (&mut self.stream, early)
    }

    /// The connection, if it may carry another request: the response was
    /// read to its end, nothing more arrived, and the server keeps it open.
    pub fn into_reusable(self) -> Option<Upstream> {
        if !(self.keepalive && self.body == Body::Done && self.buf.is_empty()) {
            return None;
        }
        let buf = if self.buf.capacity() <= KEPT_BUF {
            self.buf
        } else {
            BytesMut::new()
        };
        Some(Upstream {
            stream: self.stream,
            alarm: self.alarm,
            buf,
        })
    }

    /// Read more from the server into the buffer; the number of bytes read.
    async fn fill(&mut self, want: usize) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        let read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        let n = match self.read_timeout {
            Some(t) => match self.alarm.within(t, read).await {
                Ok(r) => r,
                Err(_) => {
                    let what = if self.body == Body::Header {
                        "response headers"
                    } else {
                        "body"
                    };
                    return Error::e_explain(ReadTimedout, format!("while reading {what}, timeout: {t:?}"));
                }
            },
            None => read.await,
        };
        let nothing_yet = self.body == Body::Header && self.buf.is_empty();
        n.map_err(|e| io_error(ReadError, "while reading from upstream", e, nothing_yet))
    }

    async fn read_header(&mut self) -> Result<ResponseHead> {
        loop {
            if !self.buf.is_empty() {
                if let Some(header) = self.parse_header()? {
                    return Ok(header);
                }
            }
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return too_big();
            }
            let already = self.buf.len();
            if self.fill(HEADER_READ).await? == 0 {
                let mut e = Error::explain(
                    ConnectionClosed,
                    format!("while reading response headers, bytes already read: {already}"),
                );
                e.retry = RetryType::ReusedOnly;
                return Err(e);
            }
        }
    }

    /// Parse a complete header from the buffer, if there is one, and set up
    /// the body's framing. 1xx responses are consumed and skipped (in a
    /// loop: a server may send thousands in one write), up to
    /// [`MAX_INTERIM`] of them.
    fn parse_header(&mut self) -> Result<Option<ResponseHead>> {
        loop {
            match self.parse_one()? {
                Parsed::Partial => return Ok(None),
                Parsed::Final(head) => return Ok(Some(head)),
                Parsed::Interim => {
                    self.interim += 1;
                    if self.interim > MAX_INTERIM {
                        return Error::e_explain(
                            InvalidHTTPHeader,
                            format!("more than {MAX_INTERIM} informational responses"),
                        );
                    }
                }
            }
        }
    }

    /// One response head from the buffer.
    fn parse_one(&mut self) -> Result<Parsed> {
        let mut fields = Vec::new();
        let (len, code, http10, reason, framing, folded) = {
            let mut parsed = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let mut parser = httparse::ParserConfig::default();
            parser.allow_spaces_after_header_name_in_responses(true);
            parser.allow_obsolete_multiline_headers_in_responses(true);
            let len = match parser.parse_response_with_uninit_headers(&mut resp, &self.buf, &mut parsed) {
                Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_HEAD => return too_big(),
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
                Err(e) => {
                    return Err(Error::because(
                        InvalidHTTPHeader,
                        format!("buf: {}", self.buf.escape_ascii()),
                        e,
                    ))
                }
            };
            let base = self.buf.as_ptr() as usize;
            let span = |s: &[u8]| {
                let start = (s.as_ptr() as usize - base) as u32;
                (start, start + s.len() as u32)
            };
            fields.reserve_exact(resp.headers.len());
            let mut folded = false;
            for h in resp.headers.iter() {
                // An obsolete line fold keeps its CRLF in the value (a lone CR is refused by httparse).
                folded |= h.value.contains(&b'\n');
                fields.push((span(h.name.as_bytes()), span(h.value)));
            }
            let framing = Framing::of(resp.headers)?;
            // An empty reason phrase may not point into the buffer at all.
            let reason = resp
                .reason
                .filter(|r| !r.is_empty())
                .map_or((0, 0), |r| span(r.as_bytes()));
            (
                len,
                resp.code.unwrap_or(0),
                resp.version == Some(0),
                reason,
                framing,
                folded,
            )
        };
        let raw = self.buf.split_to(len).freeze();
        let switched = code == 101 && self.upgrade_request && !http10;
        if (100..200).contains(&code) && !switched {
            // Informational: dropped, as nginx does; the real one follows, perhaps read already.
            return Ok(Parsed::Interim);
        }
        let Ok(status) = http::StatusCode::from_u16(code) else {
            return Error::e_explain(InvalidHTTPHeader, format!("invalid status code {code}"));
        };
        self.keepalive = if http10 {
            framing.keep_alive && framing.chunked.is_none()
        } else {
            !framing.close
        };
        self.body = if switched {
            self.keepalive = false;
            Body::Upgraded
        } else if self.head_request || code == 204 || code == 304 {
            Body::Done
        } else {
            match (framing.chunked, framing.length) {
                (Some(true), _) => Body::Chunked(Chunk::Size),
                (Some(false), _) | (None, None) => Body::Close,
                (None, Some(0)) => Body::Done,
                (None, Some(n)) => Body::Length(n),
            }
        };
        Ok(Parsed::Final(ResponseHead {
            status,
            http10,
            raw,
            reason,
            fields,
            chunked: framing.chunked == Some(true),
            length: framing.length,
            folded,
            odd: framing.odd,
        }))
    }

    /// The next piece of the body; `None` once it is complete.
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body {
                Body::Header | Body::Upgraded | Body::Done => return Ok(None),
                Body::Length(left) => {
                    if self.buf.is_empty() && self.fill(BODY_READ).await? == 0 {
                        return Error::e_explain(
                            ConnectionClosed,
                            format!("Peer prematurely closed connection with {left} bytes of body remaining to read"),
                        );
                    }
                    let n = left.min(self.buf.len() as u64);
                    self.body = if n == left { Body::Done } else { Body::Length(left - n) };
                    return Ok(Some(self.buf.split_to(n as usize).freeze()));
                }
                Body::Close => {
                    if self.buf.is_empty() && self.fill(BODY_READ).await? == 0 {
                        self.body = Body::Done;
                        self.keepalive = false;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Body::Chunked(state) => {
                    if let Some(piece) = self.dechunk(state)? {
                        return Ok(Some(piece));
                    }
                    if self.body == Body::Done {
                        return Ok(None);
                    }
                    if self.fill(BODY_READ).await? == 0 {
                        return Error::e_explain(ConnectionClosed, "Peer prematurely closed connection (chunked body)");
                    }
                }
            }
        }
    }

    /// Decode what the buffer holds of a chunked body: a piece of data, or
    /// `None` when more bytes are needed or the body ended.
    fn dechunk(&mut self, mut state: Chunk) -> Result<Option<Bytes>> {
        let bad = |what: &str| Error::e_explain(InvalidHTTPHeader, format!("invalid chunked body: {what}"));
        loop {
            self.body = Body::Chunked(state);
            match state {
                Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = self.buf.split_to(used);
                        state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return bad("chunk size"),
                },
                Chunk::Data(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(self.buf.len() as u64);
                    self.body = Body::Chunked(if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    });
                    return Ok(Some(self.buf.split_to(n as usize).freeze()));
                }
                Chunk::DataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return bad("no CRLF after chunk data");
                    }
                    let _ = self.buf.split_to(2);
                    state = Chunk::Size;
                }
                Chunk::Trailers => {
                    // Trailer fields are dropped (as Pingora does); an empty line ends the body.
                    let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > MAX_HEADER_SIZE {
                            return bad("trailers too large");
                        }
                        return Ok(None);
                    };
                    let _ = self.buf.split_to(eol + 2);
                    if eol == 0 {
                        self.body = Body::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// A part of the response, in the order it arrives.
pub enum Part {
    /// The header, and whether the response ends with it.
    Head(ResponseHead, bool),
    /// A piece of the body, and whether it is the last.
    Body(Option<Bytes>, bool),
    Done,
}

/// A response header as it arrived: its status and fields, not yet built
/// into the `ResponseHeader` the steps edit. When nothing edits it, its
/// fields go on as they came (`LeanSession::send_fields`).
pub struct ResponseHead {
    pub status: http::StatusCode,
    pub http10: bool,
    /// The header block; `reason` and `fields` are spans of it.
    raw: Bytes,
    reason: (u32, u32),
    fields: Vec<((u32, u32), (u32, u32))>,
    /// Transfer-Encoding ends with chunked (Content-Length is then ignored).
    pub chunked: bool,
    pub length: Option<u64>,
    /// A value spans lines (obsolete folding), which building normalizes.
    folded: bool,
    /// A repeated Content-Length or a `Keep-Alive` field, which building
    /// makes one or drops ([`Framing`]).
    odd: bool,
}

impl ResponseHead {
    fn at(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.raw[start as usize..end as usize]
    }

    pub fn reason(&self) -> &[u8] {
        self.at(self.reason)
    }

    /// The fields to pass on, as `(name, value)`: all of them, less
    /// Content-Length when Transfer-Encoding frames the body (RFC 9112 6.3).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.passed().map(|&(n, v)| (self.at(n), self.at(v)))
    }

    /// The names of [`Self::fields`], without making the values.
    pub fn field_names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.passed().map(|&(n, _)| self.at(n))
    }

    /// The spans of the fields passed on.
    fn passed(&self) -> impl Iterator<Item = &((u32, u32), (u32, u32))> + '_ {
        (self.fields.iter()).filter(|&&(n, _)| !(self.chunked && self.at(n).eq_ignore_ascii_case(b"content-length")))
    }

    /// Can the fields go on as they came (no folded values to normalize,
    /// no repeated Content-Length, no `Keep-Alive`)?
    pub fn passes_as_is(&self) -> bool {
        !self.folded && !self.odd
    }

    /// The `ResponseHeader` the steps and plugins edit (what Pingora's client makes).
    pub fn build(&self) -> Result<Box<ResponseHeader>> {
        let mut header = ResponseHeader::build(self.status, Some(self.fields.len()))?;
        header.set_version(if self.http10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
        header.set_reason_phrase(std::str::from_utf8(self.reason()).ok())?;
        let mut length_given = false;
        for &(n, v) in &self.fields {
            let name = self.raw.slice(n.0 as usize..n.1 as usize);
            if name.eq_ignore_ascii_case(b"content-length") {
                // Dropped under Transfer-Encoding; once, with its one value, if repeated.
                if self.chunked || std::mem::replace(&mut length_given, true) {
                    continue;
                }
                if let (true, Some(n)) = (self.odd, self.length) {
                    header.append_header(name, n.to_string())?;
                    continue;
                }
            }
            if name.eq_ignore_ascii_case(b"keep-alive") {
                continue; // hop-by-hop parameters of the server's connection (nginx drops them too)
            }
            let value = pingora_http::header_value_from_raw(self.raw.slice(v.0 as usize..v.1 as usize));
            header
                .append_header(name, value)
                .or_err(InvalidHTTPHeader, "while parsing response header")?;
        }
        Ok(Box::new(header))
    }
}

/// A non-empty run of ASCII digits as a number (`None` if not one, or too large).
fn decimal(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// What a response header says about its body and connection.
struct Framing {
    /// Transfer-Encoding present: `Some(true)` if its last coding is chunked.
    chunked: Option<bool>,
    length: Option<u64>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive` (for HTTP/1.0).
    keep_alive: bool,
    /// A field the client must not get as it came: a Content-Length given
    /// more than once (RFC 9110 8.6), or the hop-by-hop `Keep-Alive`.
    odd: bool,
}

impl Framing {
    fn of(fields: &[httparse::Header]) -> Result<Self> {
        let mut f = Framing {
            chunked: None,
            length: None,
            close: false,
            keep_alive: false,
            odd: false,
        };
        // RFC 9110 8.6: repeated or comma-joined Content-Length values must all agree.
        let mut bad_length = false;
        for h in fields {
            let name = h.name.as_bytes();
            // By length first: one comparison per field at most.
            let is = |known: &[u8]| name.len() == known.len() && name.eq_ignore_ascii_case(known);
            if is(b"transfer-encoding") {
                f.chunked = Some(ends_chunked(h.value));
            } else if is(b"content-length") {
                f.odd |= f.length.is_some() || h.value.contains(&b',');
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    match (decimal(token), f.length) {
                        (Some(n), None) => f.length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => bad_length = true,
                    }
                }
            } else if is(b"connection") {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    match token.len() {
                        5 => f.close |= token.eq_ignore_ascii_case(b"close"),
                        10 => f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive"),
                        _ => {}
                    }
                }
            } else if is(b"keep-alive") {
                f.odd = true;
            }
        }
        if f.chunked == Some(false) {
            // Its body would end with the server's close, whatever its Content-Length says
            // (RFC 9112 6.3): refused, as Pingora's loop refuses it (502).
            return Error::e_explain(InvalidHTTPHeader, "Transfer-Encoding does not end with chunked");
        }
        if f.chunked.is_some() {
            f.length = None; // Transfer-Encoding frames the body; Content-Length is ignored
        } else if bad_length {
            return Error::e_explain(InvalidHTTPHeader, "invalid or conflicting Content-Length");
        }
        Ok(f)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    pub(in crate::proxy::lean) fn req(raw: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/p?q=1", None).unwrap();
        for (k, v) in raw {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn request_head_keeps_order_and_case_and_replaces_fields() {
        let r = req(&[
            ("Host", "a"),
            ("Connection", "keep-alive"),
            ("X-Real-IP", "1.1.1.1"),
            ("Accept", "*/*"),
            ("X-Forwarded-Host", "spoof"),
        ]);
        let fields = [
            ("x-forwarded-for", Some("9.9.9.9")),
            ("x-real-ip", Some("9.9.9.9")),
            ("x-forwarded-host", None),
        ];
        let head = request_head(&r, &fields, &[], false, None).unwrap();
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nHost: a\r\nx-real-ip: 9.9.9.9\r\nAccept: */*\r\nx-forwarded-for: 9.9.9.9\r\n\r\n"
        );
    }

    /// The request `raw` as the lean loop takes it.
    fn taken(raw: &[u8]) -> Option<Box<crate::proxy::lean::Head>> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw).unwrap().is_complete());
        crate::proxy::lean::Head::build(raw, &parsed, false)
    }

    #[test]
    fn request_heads_from_the_lines_as_they_came() {
        let fields = [
            ("x-forwarded-for", Some("9.9.9.9")),
            ("x-real-ip", Some("9.9.9.9")),
            ("x-forwarded-host", None),
        ];
        let write = |raw: &[u8]| {
            let head = taken(raw).expect("taken");
            let lines = head.lines().expect("written from its lines");
            String::from_utf8(request_head_from(lines, &fields, &[], false, false, None).to_vec()).unwrap()
        };
        // Copied as they came, but for the forwarding fields and Connection; repeated fields keep their order.
        assert_eq!(
            write(b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-Real-IP: 1.1.1.1\r\nx-b: 1\r\nAccept: */*\r\nx-b: 2\r\nX-Forwarded-Host: spoof\r\n\r\n"),
            "GET /p?q=1 HTTP/1.1\r\nHost: a\r\nx-real-ip: 9.9.9.9\r\nx-b: 1\r\nAccept: */*\r\nx-b: 2\r\nx-forwarded-for: 9.9.9.9\r\n\r\n"
        );
        // Lines not written `name: value` CRLF are written so, as from a built header.
        assert_eq!(
            write(b"GET / HTTP/1.1\r\nHost:a\r\nX-Pad:   v  \r\nAccept: */*\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: v\r\nAccept: */*\r\nx-forwarded-for: 9.9.9.9\r\nx-real-ip: 9.9.9.9\r\n\r\n"
        );
        // Empty values.
        assert_eq!(
            write(b"GET / HTTP/1.1\r\nHost: a\r\nX-E:\r\nX-F: \r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a\r\nX-E: \r\nX-F: \r\nx-forwarded-for: 9.9.9.9\r\nx-real-ip: 9.9.9.9\r\n\r\n"
        );
        // Bare LF line ends are not passed on: the head is written from the built header instead.
        let head = taken(b"GET / HTTP/1.1\nHost: a\nAccept: */*\n\n").unwrap();
        assert!(head.lines().is_none());
    }

    #[test]
    fn edited_requests_from_their_lines_are_as_from_the_header() {
        // Header rules or plugins: set in place (others of the name dropped), removed, added.
        let named = [
            ("X-Env", Some("prod")),
            ("x-forwarded-for", Some("9.9.9.9")),
            ("accept", None),
            ("X-New", Some("n")),
        ];
        let added = [("X-Add", "1"), ("x-b", "3")];
        for raw in [
            &b"GET /p HTTP/1.1\r\nHost: a\r\nx-env: dev\r\nAccept: */*\r\nx-b: 1\r\nX-ENV: again\r\nConnection: keep-alive\r\nx-b: 2\r\n\r\n"[..],
            &b"GET / HTTP/1.1\r\nHost:a\r\nX-Pad:   v  \r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"[..],
        ] {
            let edited = taken(raw).unwrap();
            let lines = edited.lines().expect("written from its lines");
            let from_lines = request_head_from(lines, &named, &added, false, true, None);
            // Edits of fields the request does not have match only the lines rewritten anyway.
            let named_new = [named[1], named[3]];
            let new_only = request_head_from(lines, &named_new, &added, false, false, None);
            assert_eq!(new_only, request_head_from(lines, &named_new, &added, false, true, None));
            // The same request with bare LF line ends is written from its (case-keeping) header.
            let bare_lf = String::from_utf8(raw.to_vec()).unwrap().replace("\r\n", "\n");
            let from_header = taken(bare_lf.as_bytes()).unwrap();
            assert!(from_header.lines().is_none());
            let from_header = request_head(from_header.req(), &named, &added, false, None).unwrap();
            assert_eq!(std::str::from_utf8(&from_lines).unwrap(), std::str::from_utf8(&from_header).unwrap());
        }
    }

    /// The parsed head of the response header `raw` (for other modules' tests).
    pub(in crate::proxy::lean) async fn head_of(raw: &[u8]) -> ResponseHead {
        let (mut x, _server) = connected().await;
        x.buf.extend_from_slice(raw);
        x.parse_header().unwrap().expect("complete header")
    }

    async fn connected() -> (Exchange, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (
            Exchange::new(UpStream::Tcp(crate::sockio::Direct(ours.unwrap())).into()),
            theirs.unwrap().0,
        )
    }

    /// `parse_header` over bytes already buffered.
    async fn parsed(raw: &[u8], head_request: bool) -> Result<(Box<ResponseHeader>, Exchange)> {
        let (mut x, _server) = connected().await;
        x.head_request = head_request;
        x.buf.extend_from_slice(raw);
        let h = x.parse_header()?.expect("complete header").build()?;
        Ok((h, x))
    }

    fn drain(x: &mut Exchange) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Body::Chunked(state) = x.body {
            match x.dechunk(state)? {
                Some(p) => out.extend_from_slice(&p),
                None => break,
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn framing_from_the_header() {
        let (h, x) = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", false)
            .await
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get("x-a").unwrap(), "b");
        assert_eq!(x.body, Body::Length(5));
        assert!(x.keepalive);
        assert_eq!(&x.buf[..], b"hello", "the body stays buffered");

        let (_, x) = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .await
            .unwrap();
        assert_eq!(x.body, Body::Done, "HEAD has no body");
        let (_, x) = parsed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false)
            .await
            .unwrap();
        assert_eq!(x.body, Body::Done);
        let (_, x) = parsed(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert!(!x.keepalive);
        let (_, x) = parsed(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .await
            .unwrap();
        assert!(!x.keepalive, "HTTP/1.0 without keep-alive");
        let (_, x) = parsed(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert!(x.keepalive);
        let (_, x) = parsed(b"HTTP/1.1 200 OK\r\n\r\n", false).await.unwrap();
        assert_eq!(x.body, Body::Close);
        let (h, x) = parsed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(x.body, Body::Chunked(Chunk::Size));
        assert!(h.headers.get("content-length").is_none(), "TE overrides CL");
        let (_, x) = parsed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(x.body, Body::Length(3));
        for bad in ["3, 4", "-1", "abc", ""] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            let e = parsed(raw.as_bytes(), false).await.err().expect(bad);
            assert_eq!(e.etype(), &InvalidHTTPHeader, "{bad}");
        }
    }

    #[tokio::test]
    async fn fields_pass_on_as_they_came_unless_folded() {
        let raw =
            b"HTTP/1.1 201 Made It\r\nX-A: 1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\nX-A: 2\r\n\r\n";
        let (mut x, _server) = connected().await;
        x.buf.extend_from_slice(raw);
        let head = x.parse_header().unwrap().unwrap();
        assert_eq!(
            (head.status.as_u16(), head.reason(), head.http10),
            (201, &b"Made It"[..], false)
        );
        let fields: Vec<_> = head.fields().collect();
        let expected: [(&[u8], &[u8]); 3] = [(b"X-A", b"1"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"2")];
        assert_eq!(fields, expected, "in order, Content-Length left out");
        assert!(head.passes_as_is());
        x.body = Body::Header;
        x.buf
            .extend_from_slice(b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 0\r\n\r\n");
        assert!(
            !x.parse_header().unwrap().unwrap().passes_as_is(),
            "folded values are normalized by building"
        );
        x.body = Body::Header;
        x.buf.extend_from_slice(b"HTTP/1.1 042 Odd\r\n\r\n");
        assert_eq!(x.parse_header().err().unwrap().etype(), &InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn informational_responses_are_skipped() {
        let mut x = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .await
            .unwrap()
            .1;
        x.body = Body::Header;
        x.buf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let head = x
            .parse_header()
            .unwrap()
            .expect("the final response, read with the 100");
        assert_eq!(head.status, 201, "the 100 is skipped");
        assert!(x.buf.is_empty());
        // Many in one read are skipped one after the other (each once took a
        // stack frame of its own: a few hundred overflowed the stack), up to a limit.
        let burst = |n: usize| {
            let mut b = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(n);
            b.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            b
        };
        x.body = Body::Header;
        x.interim = 0;
        x.buf.extend_from_slice(&burst(60));
        assert_eq!(x.parse_header().unwrap().expect("whole").status, 200);
        x.body = Body::Header;
        x.interim = 0;
        x.buf.extend_from_slice(&burst(5000));
        assert!(x.parse_header().is_err(), "more than MAX_INTERIM: a broken server");
    }

    #[tokio::test]
    async fn a_101_switches_only_an_upgrade_request() {
        let (mut x, _server) = connected().await;
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe";
        x.buf.extend_from_slice(&switch[..switch.len() - 5]);
        assert!(
            x.parse_header().unwrap().is_none(),
            "an interim answer to a plain request"
        );
        x.buf.extend_from_slice(switch);
        assert!(
            x.parse_header().is_err(),
            "what follows it is read as the final response: not one"
        );
        x.upgrade_request = true;
        x.buf.clear();
        x.buf.extend_from_slice(switch);
        assert_eq!(x.parse_header().unwrap().unwrap().status, 101);
        assert!(x.upgraded() && !x.keepalive);
        assert_eq!(
            &x.tunnel_parts().1[..],
            b"frame",
            "the new protocol's first bytes are kept"
        );
        assert!(x.into_reusable().is_none());
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_in_pieces() {
        let (_, mut x) = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .await
            .unwrap();
        x.buf.extend_from_slice(b"5;ext=1\r\nhello\r\n6\r\n wor");
        assert_eq!(drain(&mut x).unwrap(), b"hello wor");
        assert_eq!(x.body, Body::Chunked(Chunk::Data(2)));
        x.buf.extend_from_slice(b"ld\r\n0\r\nTrailer: x\r\n\r\n");
        assert_eq!(drain(&mut x).unwrap(), b"ld");
        assert_eq!(x.body, Body::Done);
        assert!(x.buf.is_empty());

        let (_, mut x) = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .await
            .unwrap();
        x.buf.extend_from_slice(b"2\r\nabXX");
        assert_eq!(drain(&mut x).unwrap_err().etype(), &InvalidHTTPHeader);
    }

    /// The whole exchange over a socket: request out, response in pieces, connection reusable.
    #[tokio::test]
    async fn a_chunked_response_arriving_in_pieces_is_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut x, mut server) = connected().await;
        x.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, false)
            .await
            .unwrap();
        let mut got = [0u8; 64];
        let n = server.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let parts: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n3\r\nab",
            b"c\r\n",
            b"0\r\n\r\n",
        ];
        let writer = tokio::spawn(async move {
            for p in parts {
                server.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            server
        });
        let mut body = Vec::new();
        let mut status = 0;
        loop {
            match x.next().await.unwrap() {
                Part::Head(h, end) => {
                    status = h.status.as_u16();
                    assert!(!end);
                }
                Part::Body(b, end) => {
                    body.extend_from_slice(&b.unwrap_or_default());
                    if end {
                        break;
                    }
                }
                Part::Done => break,
            }
        }
        let _server = writer.await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"abc"[..]));
        assert!(x.into_reusable().is_some(), "complete, kept alive, nothing extra");
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_response_may_be_retried_if_reused() {
        let (mut x, server) = connected().await;
        drop(server);
        let Err(e) = x.next().await else {
            panic!("a response from a closed connection")
        };
        assert_eq!(e.etype(), &ConnectionClosed);
        assert!(matches!(e.retry, RetryType::ReusedOnly));
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_written_may_be_retried_if_reused() {
        let (mut x, server) = connected().await;
        server.set_zero_linger().unwrap(); // closed with a reset
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = x.send(b"GET / HTTP/1.1\r\n\r\n", false, false).await.unwrap_err();
        assert_eq!(e.etype(), &WriteError);
        assert!(matches!(e.retry, RetryType::ReusedOnly), "{e}");
    }
}
