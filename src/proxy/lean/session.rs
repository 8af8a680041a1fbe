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

use super::upstream::{ends_chunked, put_field, ResponseHead};
use crate::proxy::downstream::Downstream;
use bytes::{BufMut, Bytes, BytesMut};
use log::warn;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{HeaderNameVariant, RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request head the lean loop takes, parsed once.
pub struct Head {
    req: RequestHeader,
    /// The client sent `Connection: close`.
    close: bool,
    /// A WebSocket handshake (`Upgrade: websocket`).
    upgrade: bool,
    /// The head as it came, for writing the upstream request from it.
    lines: Option<Lines>,
}

/// A request head as the client sent it, and which of its field lines
/// cannot be copied to the upstream request as they are: see
/// [`super::upstream::request_head_from`].
pub struct Lines {
    pub raw: Bytes,
    /// Where the field lines end (the final CRLF).
    pub end: usize,
    /// Lines to rewrite or leave out, in order. The others are written
    /// `name: value` CRLF exactly.
    pub special: Vec<Special>,
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
    /// Build the request from `head` (exactly one complete request head) as
    /// `httparse` saw it in `parsed`. `None` if Pingora's header types
    /// refuse it (Pingora's loop then serves it, with its own errors).
    ///
    /// The upstream request is written from the lines as they came, so the
    /// header does without the map that keeps field names' case (half its
    /// cost). Only a head with a bare LF line end keeps the case map: it is
    /// written from the header.
    pub fn build(head: &[u8], parsed: &httparse::Request, upgrade: bool) -> Option<Head> {
        let raw = Bytes::copy_from_slice(head);
        let base = head.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let lines = Lines::of(head, &raw, parsed, &span);
        let (method, path, n) = (parsed.method?, parsed.path?.as_bytes(), Some(parsed.headers.len()));
        let mut req = if lines.is_some() {
            RequestHeader::build_no_case(method, path, n)
        } else {
            RequestHeader::build(method, path, n)
        }
        .ok()?;
        req.set_version(http::Version::HTTP_11);
        let mut close = false;
        for h in parsed.headers.iter() {
            if h.name.len() == 10 && h.name.eq_ignore_ascii_case("connection") {
                close |= h.value.eq_ignore_ascii_case(b"close");
            }
            let value = pingora_http::header_value_from_raw(raw.slice(span(h.value)));
            req.append_header(raw.slice(span(h.name.as_bytes())), value).ok()?;
        }
        Some(Head {
            req,
            close,
            upgrade,
            lines,
        })
    }

    pub fn req(&self) -> &RequestHeader {
        &self.req
    }

    #[cfg(test)]
    pub fn lines(&self) -> Option<&Lines> {
        self.lines.as_ref()
    }
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
        let mut special = Vec::new();
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
    /// The client sent more while its response was awaited (pipelining,
    /// which Portico does not do): the connection closes after this response.
    extra: bool,
}

impl LeanSession {
    pub fn new(stream: Stream, head: Box<Head>, reuses_left: Option<u32>) -> Self {
        let client_ip = match crate::listener::peer_of(&stream) {
            Some(peer) => Some(peer.ip()),
            None => stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned())
                .and_then(|a| a.as_inet().map(|a| a.ip())),
        };
        LeanSession {
            stream,
            keepalive: (!head.close).then_some(0),
            head,
            client_ip,
            reuses_left,
            status: None,
            out: Out::Header,
            complete: false,
            extra: false,
        }
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
        self.keepalive.is_some() && self.reuses_left != Some(0) && !self.extra
    }

    /// Resolves once the client goes away while its response is awaited
    /// (the request is then abandoned, as in Pingora's loop). Bytes it sends
    /// meanwhile only end keep-alive.
    pub async fn client_gone(&mut self) -> Box<Error> {
        let mut byte = [0u8; 1];
        loop {
            if self.extra {
                std::future::pending::<()>().await;
            }
            match self.stream.read(&mut byte).await {
                Ok(0) => return Error::explain(ErrorType::ConnectionClosed, "client closed the connection"),
                Ok(_) => self.extra = true,
                Err(e) => return Error::because(ErrorType::ReadError, "while waiting for the response", e),
            }
        }
    }

    /// The connection, if it may carry another request; closed otherwise.
    pub async fn finish(mut self) -> Option<Stream> {
        if self.complete && self.will_keepalive() {
            return Some(self.stream);
        }
        let _ = self.stream.shutdown().await;
        None
    }

    async fn write(&mut self, bytes: &[u8], flush: bool) -> Result<()> {
        self.stream
            .write_all(bytes)
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

    /// The response line and fields of `resp` as Pingora writes them.
    fn serialize(resp: &ResponseHeader, keep: Option<bool>) -> Result<BytesMut> {
        let http10 = match resp.version {
            http::Version::HTTP_10 => true,
            http::Version::HTTP_11 => false,
            _ => return Error::e_explain(ErrorType::WriteError, "serializing response header"),
        };
        let reason = resp.get_reason_phrase().map(str::as_bytes);
        let mut w = HeadWriter::new(http10, resp.status, reason, keep);
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
        } else if self.head.req.method == http::Method::HEAD || code == 204 || code == 304 {
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

    /// Write the response header and note what was sent.
    async fn send_head(&mut self, buf: BytesMut, status: u16, end: bool) -> Result<()> {
        // Flushed now unless a Content-Length body follows (as Pingora does).
        let flush = end || !matches!(self.out, Out::Length(n) if n > 0);
        self.write(&buf, flush).await?;
        self.status = Some(status);
        if end {
            self.send_body(None, true).await?;
        }
        Ok(())
    }

    /// Send the response header of `head` with `fields` (its fields, as
    /// they came or edited) without building a `ResponseHeader`: `Date` and
    /// `Connection` set as for any other, the body framed by `chunked` or
    /// `length`.
    pub async fn send_fields<'f>(
        &mut self,
        head: &ResponseHead,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
        chunked: bool,
        length: Option<u64>,
        end: bool,
    ) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let code = head.status.as_u16();
        self.frame(code, chunked, length);
        let mut w = HeadWriter::new(head.http10, head.status, Some(head.reason()), self.connection());
        for (name, value) in fields {
            w.field(name, value);
        }
        self.send_head(w.finish(), code, end).await
    }
}

/// Writes a response head: `Date` and `Connection` replace any the response
/// carries, in their place, or follow the other fields (as Pingora's
/// `insert_header` places them). With `keep` `None`, the fields go as they are.
struct HeadWriter {
    buf: BytesMut,
    date: http::HeaderValue,
    /// `keep-alive` or `close`; `None`: the fields go as they are.
    connection: Option<&'static [u8]>,
    /// Date, Connection written.
    done: [bool; 2],
}

impl HeadWriter {
    fn new(http10: bool, status: http::StatusCode, reason: Option<&[u8]>, keep: Option<bool>) -> Self {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        buf.put_slice(status.as_str().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(reason.unwrap_or_default());
        buf.put_slice(b"\r\n");
        HeadWriter {
            buf,
            date: get_cached_date(),
            connection: keep.map(|k| if k { &b"keep-alive"[..] } else { b"close" }),
            done: [false; 2],
        }
    }

    fn ours(&mut self, i: usize) {
        let Some(connection) = self.connection else { return };
        if !std::mem::replace(&mut self.done[i], true) {
            if i == 0 {
                put_field(&mut self.buf, b"Date", self.date.as_bytes());
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
    fn req(&self) -> &RequestHeader {
        &self.head.req
    }

    /// The header, to edit: the lines as they came no longer say what it
    /// holds, so the upstream request is written from the header.
    fn req_mut(&mut self) -> &mut RequestHeader {
        self.head.lines = None;
        &mut self.head.req
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn keepalive_allowed(&self) -> bool {
        self.keepalive.is_some()
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        self.keepalive = seconds;
    }

    fn set_read_timeout(&mut self, _timeout: Option<Duration>) {
        // No body is read: nothing to time.
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

    fn summary(&self) -> String {
        let req = &self.head.req;
        let host = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok());
        format!("{} {}, Host: {}", req.method, req.uri, host.unwrap_or_default())
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
                    self.write(&b[..n as usize], left == n).await?;
                }
                Out::Chunked => {
                    let size = format!("{:X}\r\n", b.len());
                    self.write(size.as_bytes(), false).await?;
                    self.write(&b, false).await?;
                    self.write(b"\r\n", true).await?;
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
