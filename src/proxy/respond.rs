//! Responses the gateway writes itself: the health endpoint, `return`
//! locations, plugin answers and error pages. Every one carries a
//! Content-Length so keep-alive clients never hang waiting for the end of a body.

use super::downstream::Downstream;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use std::future::Future;

/// A response header with the usual fields of a gateway-made answer.
pub fn header(status: u16, content_type: &str, body_len: usize, location: Option<String>) -> Result<ResponseHeader> {
    let mut r = ResponseHeader::build(status, Some(4))?;
    if !content_type.is_empty() {
        r.insert_header("content-type", content_type)?;
    }
    r.insert_header("content-length", body_len.to_string())?;
    r.insert_header("server", "portico")?;
    if let Some(l) = location {
        r.insert_header("location", l)?;
    }
    Ok(r)
}

/// Write `r` and `body` (no body for HEAD): the body bytes written, for
/// the access log.
///
/// Boxed: these answers are rare, and the steps that may give one
/// (`request_filter`, `fail_to_proxy`) are awaited inside every request's
/// future, which would otherwise carry this one's size (1.7 KiB for
/// `request_filter` instead of 0.4).
pub fn write<D: Downstream>(s: &mut D, r: ResponseHeader, body: Bytes) -> impl Future<Output = Result<u64>> + '_ {
    Box::pin(async move {
        let head_only = *s.method() == http::Method::HEAD;
        s.send_header(Box::new(r), head_only || body.is_empty()).await?;
        if head_only || body.is_empty() {
            return Ok(0);
        }
        let n = body.len() as u64;
        s.send_body(Some(body), true).await?;
        Ok(n)
    })
}

pub async fn send<D: Downstream>(
    s: &mut D,
    status: u16,
    content_type: &str,
    body: Bytes,
    location: Option<String>,
) -> Result<u64> {
    let r = header(status, content_type, body.len(), location)?;
    write(s, r, body).await
}

/// A short plain-text error page such as `502 Bad Gateway`.
pub fn error_body(status: u16) -> Bytes {
    Bytes::from(format!("{status} {}\n", reason(status)))
}

/// The standard reason phrase of `status` (`Error` for one without).
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("Error")
}
