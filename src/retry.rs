//! nginx `proxy_next_upstream` rules as a pure decision: given what went
//! wrong, the request method and how far we are, may the request go to the
//! next server? The proxy feeds it facts; it knows nothing about Pingora.

use std::time::Duration;

pub const ERROR: u32 = 1;
pub const TIMEOUT: u32 = 1 << 1;
pub const INVALID_HEADER: u32 = 1 << 2;
pub const HTTP_500: u32 = 1 << 3;
pub const HTTP_502: u32 = 1 << 4;
pub const HTTP_503: u32 = 1 << 5;
pub const HTTP_504: u32 = 1 << 6;
pub const HTTP_403: u32 = 1 << 7;
pub const HTTP_404: u32 = 1 << 8;
pub const HTTP_429: u32 = 1 << 9;
pub const NON_IDEMPOTENT: u32 = 1 << 10;

/// Whether a request with `method` may be sent again once a server may
/// have received it: the methods IANA's HTTP method registry marks
/// idempotent (RFC 9110's GET, HEAD, PUT, DELETE, OPTIONS, TRACE, and
/// WebDAV's PROPFIND, MKCOL, COPY, MOVE and the like). nginx refuses only
/// POST, LOCK and PATCH; a method of unknown meaning is not resent here.
pub fn idempotent(method: &http::Method) -> bool {
    const IDEMPOTENT: [&str; 36] = [
        "ACL",
        "BASELINE-CONTROL",
        "BIND",
        "CHECKIN",
        "CHECKOUT",
        "COPY",
        "DELETE",
        "GET",
        "HEAD",
        "LABEL",
        "LINK",
        "MERGE",
        "MKACTIVITY",
        "MKCALENDAR",
        "MKCOL",
        "MKREDIRECTREF",
        "MKWORKSPACE",
        "MOVE",
        "OPTIONS",
        "ORDERPATCH",
        "PRI",
        "PROPFIND",
        "PROPPATCH",
        "PUT",
        "QUERY",
        "REBIND",
        "REPORT",
        "SEARCH",
        "TRACE",
        "UNBIND",
        "UNCHECKOUT",
        "UNLINK",
        "UNLOCK",
        "UPDATE",
        "UPDATEREDIRECTREF",
        "VERSION-CONTROL",
    ];
    method.is_idempotent() || IDEMPOTENT.contains(&method.as_str())
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub conditions: u32,
    /// Total attempts allowed, the first included; 0 = as many as servers.
    pub tries: usize,
    /// Total time budget from the first attempt.
    pub timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            conditions: ERROR | TIMEOUT,
            tries: 0,
            timeout: None,
        }
    }
}

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// The connection could not be made: nothing was sent.
    Connect {
        timeout: bool,
    },
    /// Connected and sent (part of) the request, but no response header came.
    NoResponse {
        timeout: bool,
    },
    InvalidHeader,
    Status(u16),
}

impl Failure {
    /// Does this failure count against `max_fails` (nginx: 403/404 never do,
    /// other statuses only when listed in `next_upstream`)?
    pub fn is_server_failure(&self, policy: &RetryPolicy) -> bool {
        match self {
            Failure::Status(403) | Failure::Status(404) => false,
            Failure::Status(c) => policy.conditions & status_flag(*c) != 0,
            _ => true,
        }
    }
}

pub fn status_flag(code: u16) -> u32 {
    match code {
        500 => HTTP_500,
        502 => HTTP_502,
        503 => HTTP_503,
        504 => HTTP_504,
        403 => HTTP_403,
        404 => HTTP_404,
        429 => HTTP_429,
        _ => 0,
    }
}

impl RetryPolicy {
    pub fn parse(conds: &[String]) -> Result<u32, String> {
        let mut flags = 0;
        for c in conds {
            flags |= match c.as_str() {
                "error" => ERROR,
                "timeout" => TIMEOUT,
                "invalid_header" => INVALID_HEADER,
                "http_500" => HTTP_500,
                "http_502" => HTTP_502,
                "http_503" => HTTP_503,
                "http_504" => HTTP_504,
                "http_403" => HTTP_403,
                "http_404" => HTTP_404,
                "http_429" => HTTP_429,
                "non_idempotent" => NON_IDEMPOTENT,
                "off" if conds.len() == 1 => 0,
                "off" => return Err("`off` cannot be combined with other conditions".into()),
                other => return Err(format!("unknown next_upstream condition {other:?}")),
            };
        }
        Ok(flags)
    }

    /// Is a response with this status one we would rather retry?
    #[inline]
    pub fn wants_status(&self, code: u16) -> bool {
        self.conditions & status_flag(code) != 0
    }

    /// May a request of this kind be sent again once a server may have
    /// received it? Only an idempotent one, unless `non_idempotent` is set.
    #[inline]
    pub fn may_resend(&self, idempotent: bool) -> bool {
        idempotent || self.conditions & NON_IDEMPOTENT != 0
    }

    /// May the request go to the next server after `f`?
    /// `attempts` counts attempts made so far (the failed one included).
    pub fn may_retry(&self, f: Failure, idempotent: bool, attempts: usize, elapsed: Duration) -> bool {
        let flag = match f {
            Failure::Connect { timeout: true } | Failure::NoResponse { timeout: true } => TIMEOUT,
            Failure::Connect { timeout: false } | Failure::NoResponse { timeout: false } => ERROR,
            Failure::InvalidHeader => INVALID_HEADER,
            Failure::Status(c) => status_flag(c),
        };
        if self.conditions & flag == 0 {
            return false;
        }
        // Once a request reached a server, a non-idempotent one is only resent on request.
        let reached = !matches!(f, Failure::Connect { .. });
        if reached && !self.may_resend(idempotent) {
            return false;
        }
        if self.tries != 0 && attempts >= self.tries {
            return false;
        }
        !matches!(self.timeout, Some(t) if elapsed >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: Duration = Duration::from_secs(0);

    #[test]
    fn defaults_follow_nginx() {
        let p = RetryPolicy::default();
        assert!(p.may_retry(Failure::Connect { timeout: false }, false, 1, S));
        assert!(p.may_retry(Failure::NoResponse { timeout: true }, true, 1, S));
        assert!(!p.may_retry(Failure::NoResponse { timeout: true }, false, 1, S));
        assert!(!p.may_retry(Failure::Status(502), true, 1, S));
    }

    #[test]
    fn tries_and_budget() {
        let p = RetryPolicy {
            conditions: RetryPolicy::parse(&["error".into(), "http_503".into()]).unwrap(),
            tries: 2,
            timeout: Some(Duration::from_secs(1)),
        };
        assert!(p.may_retry(Failure::Status(503), true, 1, S));
        assert!(!p.may_retry(Failure::Status(503), true, 2, S));
        assert!(!p.may_retry(Failure::Status(503), true, 1, Duration::from_secs(2)));
        assert!(!p.may_retry(Failure::Status(503), false, 1, S));
        assert!(RetryPolicy::parse(&["off".into(), "error".into()]).is_err());
        assert!(RetryPolicy::parse(&["bogus".into()]).is_err());
    }
}
