//! What the gateway's steps need from the client side of a request.
//!
//! Pingora's `Session` provides it in Pingora's loop; the lean loop's own
//! HTTP/1 session (`lean::session`) provides it in the lean loop. Every step
//! in `proxy/mod.rs` is written against this trait, so both loops run the
//! same routing, balancing, retry, header, error-page and logging code.

use crate::proxy::lean::ClientFields;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

pub trait Downstream: Send + Sync {
    /// The whole request header. The steps read the parts below where they
    /// can: the lean loop builds this header only when something asks for it.
    fn req(&self) -> &RequestHeader;
    fn req_mut(&mut self) -> &mut RequestHeader;

    fn method(&self) -> &http::Method {
        &self.req().method
    }

    fn version(&self) -> http::Version {
        self.req().version
    }

    /// The target's path (without the query).
    fn path(&self) -> &str {
        self.req().uri.path()
    }

    /// The path as locations are matched against it, nginx's `$uri`
    /// ([`crate::routing::normalize`]).
    fn uri(&self) -> std::result::Result<std::borrow::Cow<'_, str>, crate::routing::BadPath> {
        crate::routing::normalize(self.path())
    }

    /// The target as the request line gave it (path and query; `/` if none).
    fn target(&self) -> &str {
        let req = self.req();
        req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }

    fn query(&self) -> Option<&str> {
        self.req().uri.query()
    }

    /// The Host field, else the target's authority (HTTP/2's `:authority`,
    /// an HTTP/1.0 absolute target's), port and all, as a Host field would
    /// give it; else "".
    fn host(&self) -> &str {
        let req = self.req();
        (req.headers.get(http::header::HOST))
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .or_else(|| absolute_target(req.raw_path()).map(|(authority, _)| authority))
            .unwrap_or("")
    }

    /// The status a request is refused with, as nginx refuses it, before it
    /// is routed:
    /// - 400: an HTTP/1.1 request without a Host field or with an empty one
    ///   (RFC 9112 3.2); a target of no form a server takes ([`odd_target`]);
    ///   a Host that cannot name a server ([`crate::routing::valid_host`]);
    /// - 405: TRACE (it would echo the client's cookies back to a script);
    /// - 501: a Transfer-Encoding other than one `chunked` (the coding would
    ///   be lost, the body re-chunked);
    /// - 400: a Content-Length over 2^63 - 1 (a server reading it as a
    ///   signed number may overflow).
    fn refusal(&self) -> Option<u16> {
        let req = self.req();
        let no_host =
            req.version == http::Version::HTTP_11 && req.headers.get(http::header::HOST).is_none_or(|h| h.is_empty());
        let host = self.host();
        if no_host
            || odd_method(&req.method)
            || odd_target(req)
            || !(host.is_empty() || crate::routing::valid_host(host))
        {
            return Some(400);
        }
        if req.method == http::Method::TRACE {
            return Some(405);
        }
        let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
        if let Some(first) = te.next() {
            if te.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Some(501);
            }
            // A protocol switch with a chunked body: the listener leaves the body of a
            // request that may turn into a tunnel to Pingora's lenient chunk parser.
            if req.headers.contains_key(http::header::UPGRADE) {
                return Some(400);
            }
        }
        // Digits (Pingora refuses anything else), more than an i64 holds.
        let too_long = |v: &http::HeaderValue| {
            let d = v.as_bytes().trim_ascii();
            !d.is_empty()
                && d.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(d).is_ok_and(|t| t.parse::<i64>().is_err())
        };
        let mut cl = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
        cl.any(too_long).then_some(400)
    }

    /// The first field named `name` (any case), if it is visible ASCII.
    fn header(&self, name: &str) -> Option<&str> {
        self.req().first(name)
    }

    /// What `find` first finds in the fields named `name` (lower-case) that
    /// are visible ASCII, in order.
    fn find_field<'a>(&'a self, name: &str, find: &mut dyn FnMut(&'a str) -> Option<&'a str>) -> Option<&'a str> {
        find_field(self.req(), name, find)
    }

    /// May the connection carry another request after an error page
    /// (`fail_to_proxy`)? Pingora's loop closes it whatever that answers,
    /// unless the error came before the proxying, so it says no.
    fn reusable_after_error(&self) -> bool {
        false
    }

    fn client_ip(&self) -> Option<IpAddr>;
    /// Does the client let the connection carry another request (not
    /// `Connection: close`, not HTTP/1.0 without keep-alive)?
    fn keepalive_allowed(&self) -> bool;
    /// Keep the connection after this response for `Some(seconds)` idle
    /// (0: no limit), or close it (`None`).
    fn set_keepalive(&mut self, seconds: Option<u64>);
    fn set_read_timeout(&mut self, timeout: Option<Duration>);
    /// Longest wait for a write to the client to go through (`send_timeout`).
    fn set_write_timeout(&mut self, timeout: Option<Duration>);
    fn is_upgrade_req(&self) -> bool;
    /// The status of the response header sent so far, if any.
    fn response_status(&self) -> Option<u16>;
    /// A request body was too large to keep for a retry.
    fn retry_buffer_truncated(&self) -> bool;
    /// Has the client sent the whole request body (or had none)?
    fn request_body_done(&mut self) -> bool;
    /// `METHOD uri, Host: host`, for error logs.
    fn summary(&self) -> String;
    fn send_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> impl Future<Output = Result<()>> + Send;
    fn send_body(&mut self, body: Option<Bytes>, end: bool) -> impl Future<Output = Result<()>> + Send;
}

/// [`Downstream::find_field`] over a whole header.
/// A request target of no form a server takes (RFC 9112 3.2): not a path
/// (`/...`), not absolute (`http://...`), not `*` of an OPTIONS, and not
/// the authority of a CONNECT. Routed, `GET %2Fadmin` or `GET admin` would
/// pass by the locations that match `/admin`, and servers read such targets
/// in ways of their own.
/// A method nginx refuses: one with a byte other than `A`-`Z`, `_` or `-`
/// (a lower-case `get`, which some servers read as `GET`, past rules that
/// go by the method).
fn odd_method(method: &http::Method) -> bool {
    !method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
}

fn odd_target(req: &RequestHeader) -> bool {
    let t = req.raw_path();
    let scheme = |s: &[u8]| t.len() > s.len() && t[..s.len()].eq_ignore_ascii_case(s);
    !(t.first() == Some(&b'/')
        || (t == b"*" && req.method == http::Method::OPTIONS)
        || scheme(b"http://")
        || scheme(b"https://")
        || req.method == http::Method::CONNECT)
}

/// The authority and the rest (path and query, maybe empty) of an
/// absolute-form target (`http://host:8080/x?q`), or `None` for a target
/// of another form. Pingora keeps an HTTP/1 target's authority out of the
/// parsed URI.
pub fn absolute_target(target: &[u8]) -> Option<(&str, &[u8])> {
    let scheme = [&b"http://"[..], b"https://"]
        .into_iter()
        .find(|s| target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s))?;
    let rest = &target[scheme.len()..];
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end..]))
}

pub fn find_field<'a>(
    req: &'a RequestHeader,
    name: &str,
    find: &mut dyn FnMut(&'a str) -> Option<&'a str>,
) -> Option<&'a str> {
    (req.headers.get_all(name).iter())
        .filter_map(|v| v.to_str().ok())
        .find_map(find)
}

impl Downstream for Session {
    fn req(&self) -> &RequestHeader {
        self.as_downstream().req_header()
    }

    fn req_mut(&mut self) -> &mut RequestHeader {
        self.as_downstream_mut().req_header_mut()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.as_downstream()
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
    }

    fn keepalive_allowed(&self) -> bool {
        self.as_downstream().get_keepalive().is_some()
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        self.as_downstream_mut().set_keepalive(seconds);
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.as_downstream_mut().set_read_timeout(timeout);
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.as_downstream_mut().set_write_timeout(timeout);
    }

    fn is_upgrade_req(&self) -> bool {
        self.as_downstream().is_upgrade_req()
    }

    fn response_status(&self) -> Option<u16> {
        // A `100 Continue` the gateway sent is no response yet.
        let written = self.as_downstream().response_written();
        written.map(|r| r.status.as_u16()).filter(|&c| c != 100)
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.as_downstream().retry_buffer_truncated()
    }

    fn request_body_done(&mut self) -> bool {
        self.as_downstream_mut().is_body_done()
    }

    fn summary(&self) -> String {
        self.as_downstream().request_summary()
    }

    async fn send_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        Session::write_response_header(self, resp, end).await
    }

    async fn send_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        Session::write_response_body(self, body, end).await
    }
}
