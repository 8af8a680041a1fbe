//! Per-request state carried through the Pingora hooks.

use crate::live::{Location, Snapshot};
use crate::retry::Failure;
use crate::upstream::state::InflightGuard;
use crate::upstream::Pool;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One attempt at one upstream server.
pub struct Attempt {
    pub server: usize,
    pub started: Instant,
    /// Set when the response header arrived.
    pub header_time: Option<Duration>,
    /// Released when the attempt ends, however it ends.
    pub guard: InflightGuard,
}

/// Counts a request in `portico_requests_in_flight` for as long as it lives.
pub struct RequestGauge;

impl RequestGauge {
    pub fn new() -> Self {
        crate::metrics::get().requests_in_flight.inc();
        RequestGauge
    }
}

impl Default for RequestGauge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RequestGauge {
    fn drop(&mut self) {
        crate::metrics::get().requests_in_flight.dec();
    }
}

pub struct Ctx {
    pub start: Instant,
    pub in_flight: Option<RequestGauge>,
    /// The configuration this request runs under, taken once.
    pub snap: Option<Arc<Snapshot>>,
    pub loc: Option<Arc<Location>>,
    pub pool: Option<Arc<Pool>>,
    pub client_ip: Option<IpAddr>,
    /// Attempts made so far (the current one included).
    pub attempts: usize,
    pub first_attempt: Option<Instant>,
    /// Servers that failed this request; retries avoid them.
    pub tried: Vec<usize>,
    pub current: Option<Attempt>,
    /// `addr duration` of finished attempts, for the access log.
    pub upstream_log: Vec<(usize, Duration)>,
    pub last_failure: Option<Failure>,
    /// The current error is a status-code retry decided in `upstream_response_filter`.
    pub status_retry: bool,
    /// Set-Cookie value to issue for sticky sessions.
    pub sticky_cookie: Option<http::HeaderValue>,
    /// Request body bytes from the client (also upgraded bytes).
    pub body_bytes: u64,
    /// Response body bytes sent downstream.
    pub sent_bytes: u64,
    /// Plugin state of this request (only on locations with plugins).
    pub plugin: Option<portico_plugin_api::Ctx>,
    /// The connection was upgraded (101), e.g. to a WebSocket.
    pub upgraded: bool,
    /// `header_timeout` watchdog of the current attempt.
    pub header_watch: Option<super::header_watch::HeaderWatch>,
    /// The response's compressor, when the location compresses and this one qualifies.
    pub encoder: Option<crate::compress::Encoder>,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            start: Instant::now(),
            in_flight: None,
            snap: None,
            loc: None,
            pool: None,
            client_ip: None,
            attempts: 0,
            first_attempt: None,
            tried: Vec::new(),
            current: None,
            upstream_log: Vec::new(),
            last_failure: None,
            status_retry: false,
            sticky_cookie: None,
            body_bytes: 0,
            sent_bytes: 0,
            upgraded: false,
            plugin: None,
            header_watch: None,
            encoder: None,
        }
    }

    /// End the current attempt as failed: remember the server so a retry avoids it.
    pub fn fail_current(&mut self, f: Failure) -> Option<usize> {
        self.last_failure = Some(f);
        self.header_watch = None;
        let a = self.current.take()?;
        self.tried.push(a.server);
        self.upstream_log.push((a.server, a.started.elapsed()));
        Some(a.server)
    }

    pub fn elapsed_since_first_attempt(&self) -> Duration {
        self.first_attempt.map(|t| t.elapsed()).unwrap_or_default()
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
