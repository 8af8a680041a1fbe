//! The request head's size limit, `server.max_request_header_size`: the
//! request line and header fields up to and including the blank line that
//! ends them. Pingora's HTTP/1 loop buffers up to 1 MiB of head per request
//! and offers no setting for it; nginx refuses more than its
//! `large_client_header_buffers` (4 × 8k).
//!
//! The listener has read a request's first bytes before it hands the
//! request to Pingora's loop ([`gather`]). When those bytes hold the whole
//! head, the check is one scan of them for the blank line. When they do
//! not (a head longer than one read, or sent in pieces), the listener reads
//! on until the head ends, puts it all back for Pingora's loop to read, and
//! refuses a head that outgrows the limit: `414 URI Too Long` if the
//! request line alone does, `431 Request Header Fields Too Large` if not.
//! The lean loop takes only heads whose first read holds them whole, and
//! only within the limit (see [`within`]). A whole head is also refused (400)
//! for a space or a control byte in its request line's target, which
//! Pingora's loop would percent-encode and pass on (nginx refuses them),
//! and for whatever Pingora's loop would refuse on reading it
//! ([`refused_by_pingora`]): that loop answers those itself, with no hook
//! to log them. Every refusal here is reported ([`Refused`]), so that it
//! reaches the access log and the metrics as nginx's 400s do.

use crate::proxy::respond;
use pingora_core::protocols::{Shutdown, Stream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request refused before either loop read it, as the access log tells it.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    /// The request line as it came (without its line end), at most
    /// [`LINE_KEPT`] bytes of it.
    pub line: Vec<u8>,
    /// Bytes of the answer's body.
    pub sent: u64,
    /// When the head began to be read.
    pub start: Instant,
}

/// How much of a refused request line is kept for the log.
pub const LINE_KEPT: usize = 2048;

/// Where refusals are told (the listener logs and counts them).
pub type Report<'a> = &'a (dyn Fn(&Refused) + Sync);

/// Where the head that `bytes` begin ends: just past its blank line.
/// Empty lines before the request line (which parsers skip, RFC 9112 §2.2)
/// do not end it.
pub fn end(bytes: &[u8]) -> Option<usize> {
    end_from(bytes, 0)
}

/// [`end`], for a head known not to end at a line feed before `from`.
fn end_from(bytes: &[u8], from: usize) -> Option<usize> {
    let start = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let from = from.max(start);
    memchr::memchr_iter(b'\n', &bytes[from..])
        .map(|i| from + i)
        .find_map(|i| match bytes.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

/// May a request whose first read gave `bytes` be served as it stands? A
/// head that ends within `limit` may; so may one not ended yet while fewer
/// than `limit` bytes have come (the rest is [`gather`]'s to read).
pub fn within(bytes: &[u8], limit: usize) -> bool {
    bytes.len() <= limit || end(bytes).is_some_and(|e| e <= limit)
}

/// Make sure the request whose first bytes were put back in front of
/// `stream` has a head within `limit` bytes, reading the rest of the head
/// if those bytes do not end it: all of it within `wait` of now, as nginx's
/// `client_header_timeout` bounds a whole header, so a client cannot hold
/// a connection by sending a byte now and then. `None`: the
/// head was refused (and answered), or the client went away or timed out.
pub async fn gather(mut stream: Stream, limit: usize, wait: Duration, report: Report<'_>) -> Option<Stream> {
    let start = Instant::now();
    let first = super::held_mut(&mut stream).map_or(&[][..], |h| h.bytes());
    match end(first) {
        Some(e) if e <= limit => {
            let refusal = refusal(&first[..e]);
            return checked(stream, refusal, start, report).await;
        }
        Some(_) => {
            let line_ended = first[..limit].contains(&b'\n');
            return refuse(stream, line_ended, start, report).await;
        }
        None => {}
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut head = Vec::new();
    // The head is checked for what Pingora's loop refuses at once, for its
    // 400, whenever it has doubled (a bounded cost for heads that trickle in).
    let mut check_at = 0;
    loop {
        if head.capacity() - head.len() < 4096 {
            head.reserve(head.len().clamp(4096, limit));
        }
        // A blank line's first line feed may be one of the last two bytes read before.
        let from = head.len().saturating_sub(2);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut head)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None, // closed, failed or too slow: nothing to answer
        }
        match end_from(&head, from) {
            Some(e) if e <= limit => {
                let refusal = refusal(&head[..e]);
                return checked(put_back(stream, &head), refusal, start, report).await;
            }
            None if head.len() <= limit => {}
            _ => return refuse(put_back(stream, &head), head[..limit].contains(&b'\n'), start, report).await,
        }
        if head.len() >= check_at {
            if malformed(&head) {
                let why = "a head that cannot be parsed";
                return checked(put_back(stream, &head), Some(why), start, report).await;
            }
            check_at = head.len() * 2;
        }
    }
}

/// Why a whole `head` is refused (400), if it is: its request line holds
/// a byte nginx refuses there since 1.21.1, a space inside the target or
/// a control byte (Pingora's loop would percent-encode them and pass the
/// request on), or Pingora's loop would refuse it.
fn refusal(head: &[u8]) -> Option<&'static str> {
    if odd_request_line(head) {
        return Some("a space in its target or a control byte in its request line");
    }
    refused_by_pingora(head)
}

/// `stream`, unless `refusal` says why its request is refused: then it is
/// answered 400, reported, and the connection closes.
async fn checked(stream: Stream, refusal: Option<&str>, start: Instant, report: Report<'_>) -> Option<Stream> {
    let Some(why) = refusal else { return Some(stream) };
    log::info!("request with {why}: answered 400");
    answer_and_report(stream, 400, start, report).await;
    None
}

/// Does the request line `head` begins with (after any empty lines) hold
/// more than the two spaces that part method, target and version, or a
/// control byte before its line end?
fn odd_request_line(head: &[u8]) -> bool {
    let line = first_line(head);
    memchr::memchr_iter(b' ', line).nth(2).is_some() || line.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// Why Pingora's loop would refuse the whole `head` on reading it (and
/// answer 400 itself), if it would: what `httparse` refuses (but a target
/// it percent-encodes), a `Host` that differs from an absolute target's
/// authority or holds userinfo, several `Host` fields, a `Content-Length`
/// that is not one number, a `Transfer-Encoding` in HTTP/1.0 or not ending
/// in `chunked`. The checks are Pingora 0.9's `read_request` and
/// `validate_request`, the authority one Pingora's own function.
fn refused_by_pingora(head: &[u8]) -> Option<&'static str> {
    let mut fields = [httparse::EMPTY_HEADER; 256]; // as many as Pingora's loop parses
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return None, // not whole: nothing to say yet
        Err(httparse::Error::Token | httparse::Error::Version) if memchr::memmem::find(head, b" HTTP/").is_some() => {
            return None; // a target Pingora percent-encodes
        }
        Err(_) => return Some("a head that cannot be parsed"),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Some("a head that cannot be parsed");
    };
    let headers = &*req.headers;
    let field = |name: &'static str| headers.iter().filter(move |f| f.name.eq_ignore_ascii_case(name));
    let Ok(mut built) = pingora_http::RequestHeader::build(method, target.as_bytes(), Some(2)) else {
        return Some("a request line that cannot be parsed");
    };
    for host in field("host") {
        let Ok(value) = http::HeaderValue::from_bytes(host.value) else {
            return Some("a Host that cannot be parsed");
        };
        let _ = built.append_header(http::header::HOST, value);
    }
    if pingora_core::protocols::http::authority::validate_request_authority(&built).is_err() {
        return Some("a Host or target authority Pingora refuses");
    }
    let mut te = field("transfer-encoding").peekable();
    if te.peek().is_some() {
        let last = te.last().map_or(&[][..], |f| f.value);
        let last = last.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
        if req.version == Some(0) || !last.eq_ignore_ascii_case(b"chunked") {
            return Some("a Transfer-Encoding Pingora refuses");
        }
        return None;
    }
    // Every Content-Length value, on any number of lines and lists, one number.
    let mut length = None;
    for value in field("content-length").flat_map(|f| f.value.split(|&b| b == b',')) {
        let v = value.trim_ascii();
        let n = (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .flatten();
        match (n, length) {
            (None, _) => return Some("a Content-Length that is not a number"),
            (Some(n), Some(l)) if n != l => return Some("Content-Length fields that differ"),
            (n, _) => length = n,
        }
    }
    None
}

/// Would Pingora's loop refuse `head`, not ended yet, as it stands? It
/// answers 400 to what `httparse` refuses, except for a request line whose
/// target it may percent-encode (one that reads `METHOD target HTTP/`):
/// that one is handed over once the head is whole, as is any other.
fn malformed(head: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; 256]; // as many as Pingora's loop parses
    match httparse::Request::new(&mut fields).parse(head) {
        Ok(_) => false,
        Err(httparse::Error::Token | httparse::Error::Version) => memchr::memmem::find(head, b" HTTP/").is_none(),
        Err(_) => true,
    }
}

/// Answer a head over the limit and close.
async fn refuse(stream: Stream, line_ended: bool, start: Instant, report: Report<'_>) -> Option<Stream> {
    let status = if line_ended { 431 } else { 414 };
    log::info!("request head over server.max_request_header_size: answered {status}");
    answer_and_report(stream, status, start, report).await;
    None
}

/// Answer `status` with its error page, report the refusal of the request
/// whose bytes `stream` holds in front, and close.
async fn answer_and_report(mut stream: Stream, status: u16, start: Instant, report: Report<'_>) {
    let line = super::held_mut(&mut stream).map_or_else(Vec::new, |h| request_line(h.bytes()));
    let body = respond::error_body(status);
    let refused = Refused {
        status,
        line,
        sent: body.len() as u64,
        start,
    };
    answer_and_close(stream, status, &body, || report(&refused)).await;
}

/// The request line `head` begins with, as the log keeps it: at most
/// [`LINE_KEPT`] bytes of it.
fn request_line(head: &[u8]) -> Vec<u8> {
    let line = first_line(head);
    line[..line.len().min(LINE_KEPT)].to_vec()
}

/// The line `head` begins with after any empty lines (which parsers skip,
/// RFC 9112 §2.2), without its line end.
fn first_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let line = &head[start..];
    let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Answer `status` with `body` and close. As nginx's lingering close does,
/// the answer is followed by the end of the connection's sending side and
/// what the client still sends is read for a moment: closing over unread
/// bytes would send a reset, which can destroy the answer on its way.
/// `answered` runs once the answer is written (before the lingering read).
pub async fn answer_and_close(mut stream: Stream, status: u16, body: &[u8], answered: impl FnOnce()) {
    let reason = respond::reason(status);
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: portico\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let written = stream.write_all(answer.as_bytes()).await.is_ok() && stream.write_all(body).await.is_ok();
    if written {
        Shutdown::shutdown(&mut *stream).await; // flushes, then ends the sending side
    }
    answered();
    if !written {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut taken = 0;
    while taken < LINGER_BYTES {
        match tokio::time::timeout_at(until.into(), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => taken += n,
            _ => break,
        }
    }
}

/// `stream` with `data` put back in front of it (nothing is pending).
fn put_back(mut stream: Stream, data: &[u8]) -> Stream {
    if let Some(held) = super::held_mut(&mut stream) {
        held.rewind(data);
    }
    stream
}

/// How long, and for how many bytes, a refused client is read from.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_its_first_blank_line() {
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(end(b"GET / HTTP/1.1"), None);
        assert_eq!(end(b""), None);
        // Empty lines before the request line are not its end.
        assert_eq!(end(b"\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(24));
        assert_eq!(end(b"\r\n\r\n"), None);
        // Found from a later position, as reads come in.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for from in 0..=24 {
            assert_eq!(end_from(head, from), Some(27), "from {from}");
        }
        assert_eq!(end_from(b"\r\nGET / HTTP/1.1\n\n", 0), Some(18));
    }

    #[test]
    fn a_first_read_is_within_the_limit_if_its_head_is() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"; // 27 bytes
        assert!(within(head, 27));
        assert!(!within(head, 26));
        assert!(within(&head[..20], 20), "not ended yet, but not over either");
        assert!(!within(&head[..21], 20));
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(&[b'x'; 100]);
        assert!(within(&with_body, 27), "the body does not count");
    }

    #[test]
    fn request_lines_with_spaces_or_control_bytes_in_the_target_are_odd() {
        assert!(!odd_request_line(b"GET /a?b=%20 HTTP/1.1\r\nHost: a b\r\n\r\n"));
        assert!(!odd_request_line(b"\r\nGET / HTTP/1.1\n\n"));
        assert!(
            !odd_request_line(b"GET /\"<>\" HTTP/1.1\r\n\r\n"),
            "nginx passes it; Pingora's loop refuses `<>` (`refused_by_pingora`)"
        );
        assert!(odd_request_line(b"GET /a b HTTP/1.1\r\n\r\n"));
        assert!(odd_request_line(b"GET /a HTTP/1.1 \r\n\r\n"));
        assert!(odd_request_line(b"GET /a\x01 HTTP/1.1\r\n\r\n"));
        assert!(odd_request_line(b"GET /a\tb HTTP/1.1\r\n\r\n"));
        assert!(odd_request_line(b"GET /a\x7f HTTP/1.1\r\n\r\n"));
        assert!(odd_request_line(b"GET /a\rb HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn whole_heads_pingora_would_refuse_are_found_before_it_reads_them() {
        let refused = |h: &str| refused_by_pingora(h.as_bytes()).is_some();
        for ok in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(!refused(ok), "{ok:?}");
        }
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
            "GET http://u@a/x HTTP/1.1\r\nHost: u@a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "\x16\x03\x01\x02\x00\r\n\r\n",
            // A target `http::Uri` refuses, which httparse lets through.
            "POST /a<b> HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(refused(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_logged_request_line_is_the_first_line_as_it_came() {
        assert_eq!(
            request_line(b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
            b"GET /a HTTP/1.1"
        );
        assert_eq!(request_line(b"GET /a HTTP/1.1\nHost: a\n\n"), b"GET /a HTTP/1.1");
        assert_eq!(request_line(b"GARBAGE"), b"GARBAGE");
        assert_eq!(request_line(&[b'x'; 5000]).len(), LINE_KEPT);
    }

    #[test]
    fn heads_pingora_refuses_at_once_are_told_apart() {
        assert!(!malformed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: vvv"));
        assert!(
            !malformed(b"GET /a b HTTP/1.1\r\nHost: a\r\n"),
            "a target Pingora percent-encodes"
        );
        assert!(malformed(b"GET /a b"), "nothing Pingora can mend");
        assert!(
            malformed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            "a TLS hello"
        );
        assert!(malformed(b"GET / HTTP/1.1\r\nX Bad Header\r\nHost: a\r\n"));
    }
}
