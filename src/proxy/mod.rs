//! The steps of a request's life, each named after the Pingora `ProxyHttp`
//! hook it is, delegating the real work to a module. They are written
//! against [`Downstream`] (the client side of a request), so Pingora's loop
//! (through the `ProxyHttp` impl at the end of this file) and the lean loop
//! (`lean.rs`, with its own HTTP/1 session) run the very same code:
//!
//! | hook                      | step                                           | module            |
//! |---------------------------|------------------------------------------------|-------------------|
//! | `request_filter`          | health endpoint, route lookup, body limit, `return` | `respond`, `routing` |
//! | `upstream_peer`           | choose a server (sticky, hash, skip failed)    | `pick`, `upstream`|
//! | `fail_to_connect`         | passive failure + retry decision               | `retry`           |
//! | `upstream_request_filter` | forwarding headers, header rules, upgrades     | `forwarded`       |
//! | `request_body_filter`     | `client_max_body_size` on streamed bodies      |                   |
//! | `upstream_response_filter`| status-code retry, sticky cookie, latency      | `retry`           |
//! | `error_while_proxy`       | passive failure + retry decision               | `retry`           |
//! | `fail_to_proxy`           | error page (502/503/504/4xx)                   | `respond`         |
//! | `logging`                 | access log; in-flight slot released on drop    | `access_log`      |

pub mod ctx;
pub mod downstream;
pub mod forwarded;
pub mod header_watch;
pub mod lean;
pub mod pick;
pub mod respond;

use crate::access_log::{self, AccessLog};
use crate::live::{Action, Live, Location, Upgrade};
use crate::metrics;
use crate::plugins::{ClientHeaders, ReqHeaders, RespHeaders};
use crate::retry::Failure;
use crate::template::{Template, Vars};
use crate::upstream::state::InflightGuard;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::{Attempt, Ctx, RequestGauge};
use downstream::Downstream;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::{H1UpgradePolicy, HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::{Error, ErrorSource, ErrorType, OrErr, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_plugin_api::{self as api, Flow, Headers, Hooks, Reply};
use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// One listener's proxy logic.
#[derive(Clone)]
pub struct Gateway {
    pub live: Arc<Live>,
    /// Index of this listener in the configuration.
    pub listener: usize,
    pub scheme: &'static str,
    pub access_log: Option<Arc<AccessLog>>,
}

/// The protocol as a request line writes it (`HTTP/1.1`).
fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// An edit of the upstream request that `http` refused.
fn bad_header(e: String) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, e)
}

/// The response line and framing an HTTP/1 client gets, as nginx sends
/// them: always `HTTP/1.1` (Pingora passes on the server's version),
/// without the server's hop-by-hop `Keep-Alive` parameters, and for an
/// HTTP/1.0 client, which knows no chunked encoding (RFC 9112 §6.1), a
/// body that ends with the connection instead.
fn http1_framing(s: &mut Session, resp: &mut ResponseHeader) {
    resp.set_version(http::Version::HTTP_11);
    resp.remove_header("keep-alive");
    if let Some(v) = one_content_length(&resp.headers) {
        let _ = resp.insert_header(http::header::CONTENT_LENGTH, v); // a value that parsed as one already
    }
    if s.req().version == http::Version::HTTP_10 && resp.headers.contains_key(http::header::TRANSFER_ENCODING) {
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        s.set_keepalive(None);
    }
}

/// A piece of the response body through the location's compressor; at the
/// end, the coding's last bytes follow.
pub(crate) fn compress_body(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> Result<()> {
    let Some(e) = ctx.encoder.as_mut() else {
        return Ok(());
    };
    let piece = body.as_deref().unwrap_or_default();
    let out = match eos {
        false => e.feed(piece).or_err(ErrorType::InternalError, "compressing the body")?,
        true => match ctx.encoder.take() {
            Some(e) => e
                .finish_with(piece)
                .or_err(ErrorType::InternalError, "compressing the body")?,
            None => Bytes::new(),
        },
    };
    *body = (!out.is_empty()).then_some(out);
    Ok(())
}

/// A client that sent `Expect: 100-continue` and is to be proxied is told
/// to send its body at once, and the field does not go upstream: the
/// gateway reads the body, as nginx does (forwarded, the field left a
/// client waiting for a `100` from a server that sends none, curl for a
/// second). Only HTTP/1.1 (RFC 9110 §10.1.1: ignored in HTTP/1.0).
async fn continue_body(s: &mut Session) -> Result<()> {
    let req = s.req();
    let expects = req.version == http::Version::HTTP_11
        && req
            .headers
            .get_all(http::header::EXPECT)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects || s.as_downstream().is_http2() {
        return Ok(());
    }
    s.req_mut().remove_header(&http::header::EXPECT);
    if !s.as_downstream_mut().is_body_done() {
        // Pingora ends keep-alive for any answer written before the body is
        // read, the `100` too; the final response decides that again.
        let keep = s.as_downstream().get_keepalive();
        s.as_downstream_mut().write_continue_response().await?;
        s.set_keepalive(keep);
    }
    Ok(())
}

/// The body length a request declares (its Content-Length), if one number.
fn declared_length<D: Downstream>(s: &D) -> Option<u64> {
    s.header("content-length").and_then(|v| v.trim().parse::<u64>().ok())
}

/// Largest declared body read whole before a server is chosen: what
/// Pingora's retry buffer (64 KiB), through which the proxy loop then sends
/// it, holds.
const BUFFERED_BODY: u64 = 64 * 1024;

/// Pingora's wait between two reads of a body (`client_body_timeout` unset).
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A body of a declared length up to [`BUFFERED_BODY`] is read whole before
/// a server is chosen and connected to, as nginx's `proxy_request_buffering`
/// does: a client that sends it slowly holds no server connection (500 slow
/// POSTs held 500 before). It is read into Pingora's retry buffer, which the
/// proxy loop sends first. `wait` bounds each read, for HTTP/2 too (Pingora
/// times no HTTP/2 body read). A body of unknown length (chunked, a gRPC
/// stream) is streamed as before: its end may depend on the answer.
async fn buffer_small_body(s: &mut Session, wait: std::time::Duration) -> Result<()> {
    let declared = declared_length(s);
    if !declared.is_some_and(|n| n > 0 && n <= BUFFERED_BODY) || s.as_downstream_mut().is_body_done() {
        return Ok(());
    }
    s.as_downstream_mut().enable_retry_buffering();
    while !s.as_downstream_mut().is_body_done() {
        match pingora_timeout::timeout(wait, s.as_downstream_mut().read_request_body()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e.into_down()),
            Err(_) => {
                let e = Error::explain(ErrorType::ReadTimedout, format!("request body: nothing for {wait:?}"));
                return Err(e.into_down());
            }
        }
    }
    Ok(())
}

/// An HTTP/2 request made an HTTP/1.1 one: its `cookie` fields joined into
/// one (RFC 9113 §8.2.3; many servers read only the first), and no
/// `Expect` (a `100` cannot go back over HTTP/2 through Pingora, and the
/// body comes anyway).
fn from_http2(up: &mut RequestHeader) -> Result<()> {
    up.remove_header(&http::header::EXPECT);
    let mut cookies = up.headers.get_all(http::header::COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for c in up.headers.get_all(http::header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(c.as_bytes());
        }
        up.insert_header(http::header::COOKIE, joined)?;
    }
    Ok(())
}

/// The origin-form target (`/x?q`) of an absolute-form one
/// (`http://host/x?q`; `http://host?q` gives `/?q`), or `None` for a
/// target of another form.
fn origin_form(target: &[u8]) -> Option<Cow<'_, [u8]>> {
    let (_, rest) = downstream::absolute_target(target)?;
    Some(match rest.first() {
        Some(b'/') => Cow::Borrowed(rest),
        _ => Cow::Owned([&b"/"[..], rest].concat()),
    })
}

/// About the bytes `resp` took on the wire: its status line and fields.
fn head_size(resp: &ResponseHeader) -> usize {
    let fields: usize = resp.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    fields + 17 + resp.get_reason_phrase().map_or(0, str::len)
}

/// Drop the request fields whose names hold an underscore
/// (`server.underscores_in_headers` off, nginx's default).
fn drop_underscored(up: &mut RequestHeader) {
    let names: Vec<http::HeaderName> = up
        .headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        up.remove_header(&name);
    }
}

/// A Content-Length given more than once with the same value (as fields or
/// a list: `5, 5`; Pingora refuses differing ones) goes on as one value
/// (RFC 9110 §8.6 forbids forwarding it as it came; nginx sends one too):
/// that value, if the field needs it.
fn one_content_length(h: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut all = h.get_all(http::header::CONTENT_LENGTH).iter();
    let first = all.next()?;
    if all.next().is_none() && !first.as_bytes().contains(&b',') {
        return None;
    }
    let one = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    http::HeaderValue::from_bytes(one).ok()
}

fn classify(e: &Error) -> Failure {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout => Failure::Connect { timeout: true },
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError | BindError => {
            Failure::Connect { timeout: false }
        }
        ReadTimedout | WriteTimedout => Failure::NoResponse { timeout: true },
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => Failure::InvalidHeader,
        _ => Failure::NoResponse { timeout: false },
    }
}

impl Gateway {
    /// Record a failed attempt against its server (nginx `max_fails`) and
    /// decide whether the request may move on to another server. The attempt
    /// ends if it moves on or if `end_attempt` (nothing usable came back).
    fn on_failure<D: Downstream>(&self, s: &D, ctx: &mut Ctx, f: Failure, why: &str, end_attempt: bool) -> bool {
        let (Some(pool), Some(loc)) = (ctx.pool.clone(), ctx.loc.clone()) else {
            return false;
        };
        let cur = ctx.current.as_ref().map(|a| a.server);
        if let Some(i) = cur {
            if f.is_server_failure(&loc.retry) {
                pool.servers[i].record_failure(&pool.name, why);
            }
        }
        let idempotent = crate::retry::idempotent(s.method());
        let tried = &ctx.tried;
        // A body that outgrew the retry buffer cannot be sent again.
        let retry = s.response_status().is_none()
            && !s.retry_buffer_truncated()
            && loc
                .retry
                .may_retry(f, idempotent, ctx.attempts, ctx.elapsed_since_first_attempt())
            && pool.any_usable(&|i| tried.contains(&i) || Some(i) == cur);
        if retry {
            pool.retries.inc();
        }
        if retry || end_attempt {
            ctx.fail_current(f);
        } else {
            ctx.last_failure = Some(f);
        }
        retry
    }
}

/// Plugin hooks. `ctx.plugin` exists only on locations with plugins, so a
/// location without any pays nothing.
impl Gateway {
    async fn run_request_plugins<D: Downstream>(&self, s: &mut D, ctx: &mut Ctx, loc: &Location) -> Option<Reply> {
        let pc = ctx.plugin.insert(api::Ctx {
            client_ip: ctx.client_ip,
            scheme: self.scheme,
            method: s.method().clone(),
            host: crate::routing::strip_port(s.host()).to_string(),
            path: s.uri().map_or_else(|_| s.path().to_string(), Cow::into_owned),
            query: s.query().map(str::to_string),
            route: loc.name.clone(),
            pool: match &loc.action {
                Action::Proxy(p) => Some(p.name.clone()),
                Action::Return { .. } => None,
            },
            scratch: Default::default(),
            log_fields: Vec::new(),
        });
        for p in loc.plugins.with(Hooks::REQUEST) {
            if let Flow::Respond(r) = p.request(pc, &mut ClientHeaders(&mut *s)).await {
                return Some(r);
            }
        }
        None
    }

    /// The forwarding headers (X-Forwarded-*, X-Real-IP) this request's upstream request gets.
    pub fn forwarding<'s, D: Downstream>(&self, s: &'s D, ctx: &Ctx) -> forwarded::Forwarded<'s> {
        let snap = ctx.snap.as_ref().expect("routed");
        let trusted = ctx.client_ip.is_some_and(|ip| snap.is_trusted(&ip));
        let host = s.host();
        let host = (!host.is_empty()).then_some(host);
        forwarded::Forwarded::of(|name| s.header(name), ctx.client_ip, trusted, self.scheme, host)
    }

    /// Expand a config template (`$host`, `$request_uri`, ...) for this request.
    fn expand<D: Downstream>(&self, s: &D, ctx: &Ctx, t: &Template) -> String {
        let mut ip = String::new();
        if let Some(addr) = ctx.client_ip.filter(|_| t.uses_remote_addr()) {
            forwarded::push_ip(&mut ip, addr);
        }
        t.expand(&Vars {
            scheme: self.scheme,
            host: crate::routing::strip_port(s.host()),
            request_uri: s.target(),
            uri: &s.uri().unwrap_or(Cow::Borrowed(s.path())),
            remote_addr: &ip,
        })
    }

    fn run_response_plugins(ctx: &mut Ctx, status: u16, h: &mut dyn Headers) {
        if let (Some(loc), Some(pc)) = (ctx.loc.as_ref(), ctx.plugin.as_mut()) {
            for p in loc.plugins.with(Hooks::RESPONSE) {
                p.response(pc, status, h);
            }
        }
    }

    /// A short error page the gateway makes itself (`502 Bad Gateway`), its
    /// body counted for the access log.
    async fn error_page<D: Downstream>(s: &mut D, ctx: &mut Ctx, code: u16) -> Result<()> {
        ctx.sent_bytes += respond::send(s, code, "text/plain", respond::error_body(code), None).await?;
        Ok(())
    }

    /// Write an answer the gateway made itself, through the response plugins
    /// (run before the returned future, which is only the boxed write).
    fn reply<'s, D: Downstream>(
        s: &'s mut D,
        ctx: &mut Ctx,
        mut r: ResponseHeader,
        body: Bytes,
    ) -> impl Future<Output = Result<u64>> + 's {
        Self::run_response_plugins(ctx, r.status.as_u16(), &mut RespHeaders(&mut r));
        respond::write(s, r, body)
    }
}

/// The steps of a request, in the order they run. Pingora's loop reaches them
/// through the `ProxyHttp` impl at the end of this file, the lean loop calls
/// them directly with its own session; each is the hook of the same name.
impl Gateway {
    /// Built-in endpoints, then routing: find the location for Host + path.
    pub async fn request_filter<D: Downstream>(&self, s: &mut D, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.live.snapshot();
        if s.keepalive_allowed() {
            // Only where the client allows it (not HTTP/1.0 without keep-alive, not `Connection: close`).
            s.set_keepalive(Some(snap.cfg.server.keepalive_timeout.0.as_secs()));
        }
        s.set_write_timeout(Some(snap.cfg.server.send_timeout.0));
        ctx.snap = Some(snap.clone());
        ctx.in_flight = Some(RequestGauge::new());
        ctx.client_ip = s.client_ip();
        if let Some(status) = s.refusal() {
            s.set_keepalive(None);
            Self::error_page(s, ctx, status).await?;
            return Ok(true);
        }
        // Locations see the path normalized, as nginx's do: `/x/../admin` is `/admin`.
        let Ok(uri) = s.uri() else {
            s.set_keepalive(None);
            Self::error_page(s, ctx, 400).await?;
            return Ok(true);
        };
        let health = snap.health_path.as_ref().is_some_and(|hp| uri == hp.as_str());
        let loc = snap
            .listeners
            .get(self.listener)
            .and_then(|l| l.hosts.lookup(s.host()))
            .and_then(|h| h.paths.lookup(&uri))
            .cloned();
        drop(uri);
        if health && matches!(*s.method(), http::Method::GET | http::Method::HEAD) {
            ctx.sent_bytes += respond::send(s, 200, "text/plain", Bytes::from_static(b"ok"), None).await?;
            return Ok(true);
        }
        let Some(loc) = loc else {
            Self::error_page(s, ctx, 404).await?;
            return Ok(true);
        };
        if let Some(max) = loc.max_body {
            if declared_length(s).is_some_and(|n| n > max) {
                s.set_keepalive(None);
                Self::error_page(s, ctx, 413).await?;
                return Ok(true);
            }
        }
        ctx.loc = Some(loc.clone());
        if let Some(t) = snap.cfg.server.client_body_timeout {
            s.set_read_timeout(Some(t.0));
        }
        if s.is_upgrade_req() {
            // An upgraded connection idles for as long as its location allows,
            // not for the HTTP read timeout (the WebSocket cut of Pingora #255).
            s.set_read_timeout(Some(loc.ws_idle));
        }
        if !loc.plugins.is_empty() {
            if let Some(reply) = self.run_request_plugins(s, ctx, &loc).await {
                let mut r = respond::header(reply.status, "", reply.body.len(), None)?;
                for (k, v) in &reply.headers {
                    r.append_header(k.clone(), v.as_str())?;
                }
                ctx.sent_bytes += Self::reply(s, ctx, r, reply.body).await?;
                return Ok(true);
            }
        }
        match &loc.action {
            Action::Return { status, location, body } => {
                let location = location.as_ref().map(|t| self.expand(s, ctx, t));
                let body = body
                    .as_ref()
                    .map(|t| Bytes::from(self.expand(s, ctx, t)))
                    .unwrap_or_default();
                let r = respond::header(*status, "text/plain", body.len(), location)?;
                ctx.sent_bytes += Self::reply(s, ctx, r, body).await?;
                Ok(true)
            }
            Action::Proxy(pool) => {
                ctx.pool = Some(pool.clone());
                Ok(false)
            }
        }
    }

    /// Choose the server for this attempt (called again on every retry).
    pub async fn upstream_peer<D: Downstream>(&self, s: &mut D, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().expect("routed in request_filter");
        let loc = ctx.loc.clone().expect("routed in request_filter");
        let Some(i) = pick::choose(&pool, &*s, ctx, self.scheme == "https") else {
            // Nothing usable left: report what the last attempt saw, as nginx does.
            let (code, msg) = match ctx.last_failure {
                Some(Failure::Connect { timeout: true }) | Some(Failure::NoResponse { timeout: true }) => {
                    (504, "upstream timed out")
                }
                Some(_) => (502, "no upstream server left to try"),
                None => (503, "no usable upstream server"),
            };
            return Error::e_explain(ErrorType::HTTPStatus(code), msg);
        };
        let server = &pool.servers[i];
        ctx.attempts += 1;
        let now = Instant::now();
        ctx.first_attempt.get_or_insert(now);
        ctx.current = Some(Attempt {
            server: i,
            started: now,
            header_time: None,
            guard: InflightGuard::new(server.state.clone()),
        });
        let mut peer = match &pool.tls {
            None => HttpPeer::new(server.backend.addr.clone(), false, String::new()),
            Some(t) => t.peer(&server.backend.addr),
        };
        let o = &mut peer.options;
        if pool.http2 && !s.is_upgrade_req() {
            // h2 over TLS through ALPN; h2c (prior knowledge) in plain text.
            o.alpn = ALPN::H2;
        }
        o.connection_timeout = loc.timeouts.connect;
        o.write_timeout = loc.timeouts.write;
        o.idle_timeout = pool.keepalive_timeout;
        o.read_timeout = if s.is_upgrade_req() {
            Some(loc.ws_idle)
        } else {
            loc.timeouts.read
        };
        o.http_upstream_request_policy = match loc.upgrade {
            Upgrade::WebSocket => HttpUpstreamRequestPolicy::standard(),
            Upgrade::Any => HttpUpstreamRequestPolicy {
                h1_upgrade: H1UpgradePolicy::Preserve,
                ..HttpUpstreamRequestPolicy::standard()
            },
            Upgrade::Off => HttpUpstreamRequestPolicy::deny_upgrades(),
        };
        Ok(Box::new(peer))
    }

    /// Connect failed: nothing was sent, so any method may move on.
    pub fn fail_to_connect<D: Downstream>(
        &self,
        s: &mut D,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let why = e.to_string();
        let retry = self.on_failure(s, ctx, classify(&e), &why, true);
        e.set_retry(retry);
        e
    }

    /// Connected (or reused a pooled connection): arm `header_timeout`.
    pub fn connected_to_upstream<D: Downstream>(&self, s: &D, fd: std::os::unix::io::RawFd, ctx: &mut Ctx) {
        ctx.header_watch = match ctx.loc.as_ref().and_then(|l| l.timeouts.header) {
            Some(t) if !s.is_upgrade_req() => header_watch::HeaderWatch::start(fd, t),
            _ => None,
        };
    }

    /// Forwarding headers, then the location's header rules and plugins,
    /// on `up`, a copy of the client's header (Pingora's loop).
    pub async fn upstream_request_filter<D: Downstream>(
        &self,
        s: &D,
        up: &mut dyn Headers,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for (name, value) in self.forwarding(s, ctx).fields() {
            match value {
                Some(v) => up.set(name, v).map_err(bad_header)?,
                None => up.remove(name),
            }
        }
        self.upstream_request_edits(s, up, ctx).await
    }

    /// The location's header rules and plugins, on the upstream request's
    /// fields `up` (the forwarding fields already set: the lean loop keeps
    /// them as edits over the client's header, [`lean::edits::RequestEdits`]).
    pub async fn upstream_request_edits<D: Downstream>(
        &self,
        s: &D,
        up: &mut dyn Headers,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let loc = ctx.loc.as_ref().expect("routed");
        for h in &loc.remove_headers {
            up.remove(h.as_str());
        }
        for (name, t) in &loc.set_headers {
            up.set(name, &self.expand(s, ctx, t)).map_err(bad_header)?;
        }
        if let Some(pc) = ctx.plugin.as_mut() {
            for p in loc.plugins.with(Hooks::UPSTREAM_REQUEST) {
                p.upstream_request(pc, up).await;
            }
        }
        Ok(())
    }

    /// `client_max_body_size` for bodies without Content-Length (not for the
    /// bytes of an upgraded connection, as in nginx).
    pub fn request_body_filter(&self, body: &Option<Bytes>, ctx: &mut Ctx) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if !ctx.upgraded
                && ctx
                    .loc
                    .as_ref()
                    .and_then(|l| l.max_body)
                    .is_some_and(|max| ctx.body_bytes > max)
            {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body exceeds client_max_body_size");
            }
        }
        Ok(())
    }

    /// The response header arrived: retry on a configured status if another
    /// server can still take the request, else pass the real response on,
    /// with the sticky cookie and the plugins' edits.
    pub fn upstream_response_filter<D: Downstream>(
        &self,
        s: &mut D,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let code = resp.status.as_u16();
        if self.upstream_status(s, code, ctx)? {
            Self::upstream_response_edits(code, &mut RespHeaders(resp), ctx)?;
        }
        Ok(())
    }

    /// What the response's status means for the attempt (latency, passive
    /// health, status-code retry, upgrades). `Ok(false)`: nothing more to do
    /// with this header (informational, or no route).
    pub fn upstream_status<D: Downstream>(&self, s: &mut D, code: u16, ctx: &mut Ctx) -> Result<bool> {
        if code < 200 && code != 101 {
            return Ok(false);
        }
        ctx.header_watch = None;
        let (Some(pool), Some(loc)) = (ctx.pool.clone(), ctx.loc.clone()) else {
            return Ok(false);
        };
        if let Some(a) = ctx.current.as_mut() {
            let t = a.started.elapsed();
            a.header_time = Some(t);
            let server = &pool.servers[a.server];
            server.state.observe_latency(t);
            server.histogram.observe(t.as_secs_f64());
        }
        if loc.retry.wants_status(code) {
            let why = format!("status {code}");
            if self.on_failure(s, ctx, Failure::Status(code), &why, false) {
                ctx.status_retry = true;
                let mut e = Error::explain(ErrorType::HTTPStatus(code), "next upstream on status");
                e.set_retry(true);
                return Err(e);
            }
            // Attempts are used up: the client gets this real response, as in nginx.
        } else if let Some(a) = &ctx.current {
            pool.servers[a.server].state.record_success();
        }
        if code == 101 {
            ctx.upgraded = true;
            metrics::get().upgrades.inc();
        }
        Ok(true)
    }

    /// Do plugins see this response's header? If not, it can go to the
    /// client with its fields as they came (plus any sticky cookie, which
    /// [`Self::upstream_response_edits`] appends last as well).
    pub fn edits_response(ctx: &Ctx) -> bool {
        ctx.plugin.is_some()
            && (ctx.loc.as_ref()).is_some_and(|l| l.plugins.any(Hooks::UPSTREAM_RESPONSE.and(Hooks::RESPONSE)))
    }

    /// The sticky cookie and the plugins' `upstream_response` edits, on the
    /// fields of a response with status `code`.
    pub fn upstream_response_edits(code: u16, h: &mut dyn Headers, ctx: &mut Ctx) -> Result<()> {
        if let Some(c) = ctx.sticky_cookie.take() {
            let c = c.to_str().or_err(ErrorType::InternalError, "sticky cookie")?;
            h.append("Set-Cookie", c)
                .or_err(ErrorType::InternalError, "sticky cookie")?;
        }
        if let (Some(loc), Some(pc)) = (ctx.loc.as_ref(), ctx.plugin.as_mut()) {
            for p in loc.plugins.with(Hooks::UPSTREAM_RESPONSE) {
                p.upstream_response(pc, code, h);
            }
        }
        Ok(())
    }

    /// Just before the response header (status `code`) goes to the client.
    pub fn response_filter(&self, code: u16, h: &mut dyn Headers, ctx: &mut Ctx) {
        Self::run_response_plugins(ctx, code, h);
    }

    pub fn response_body_filter(&self, body: &Option<Bytes>, ctx: &mut Ctx) {
        if let Some(b) = body {
            ctx.sent_bytes += b.len() as u64;
        }
    }

    /// An error after connecting (send failure, reset, timeout, bad header,
    /// or our own status-code retry).
    pub fn error_while_proxy<D: Downstream>(
        &self,
        peer: &HttpPeer,
        s: &mut D,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.header_watch.take().is_some_and(|w| w.fired()) {
            // Our watchdog cut the connection: a timeout, whatever Pingora saw.
            let t = ctx.loc.as_ref().and_then(|l| l.timeouts.header).unwrap_or_default();
            e = Error::because(ErrorType::ReadTimedout, format!("no response header within {t:?}"), e);
            e.esource = ErrorSource::Upstream;
        }
        if std::mem::take(&mut ctx.status_retry) {
            return e; // decided in upstream_response_filter
        }
        if e.esource() == &ErrorSource::Upstream
            && e.etype() == &ErrorType::ReadTimedout
            && ctx.current.as_ref().is_some_and(|a| a.header_time.is_none())
            && !s.request_body_done()
        {
            // The server's answer was awaited while the client had not sent
            // all of its body: the client's stall, not the server's (nginx
            // times a server only once the request is sent). 408, no retry,
            // nothing held against the server.
            let mut e = Error::because(ErrorType::ReadTimedout, "the client stalled its request body", e);
            e.esource = ErrorSource::Downstream;
            e.set_retry(false);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            // The client went away or misbehaved: not the server's fault, nothing to retry.
            e.set_retry(false);
            return e;
        }
        if ctx.current.as_ref().is_some_and(|a| a.header_time.is_some()) {
            // The response had begun: never retried.
            e.set_retry(false);
            return e;
        }
        // A pooled connection closed under us, most likely one the server had
        // let go: sent again on another connection, without counting against
        // the server. Unless it cannot be resent: the server may have read it.
        let resend = |loc: &Location| loc.retry.may_resend(crate::retry::idempotent(s.method()));
        if matches!(e.retry, RetryType::ReusedOnly)
            && client_reused
            && s.response_status().is_none()
            && !s.retry_buffer_truncated()
            && ctx.loc.as_deref().is_none_or(resend)
        {
            e.set_retry(true);
            if let Some(a) = ctx.current.take() {
                ctx.upstream_log.push((a.server, a.started.elapsed()));
            }
            return e;
        }
        let why = e.to_string();
        let retry = self.on_failure(s, ctx, classify(&e), &why, true);
        e.set_retry(retry);
        e
    }

    /// A client that goes away is routine, not an error worth a log line
    /// (nginx logs it at info): an HTTP/1 connection closed, or an HTTP/2
    /// stream the client reset (Pingora's `H2Error` on the client's side).
    pub fn suppress_error_log(e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::WriteTimedout
                    | ErrorType::H2Error
            )
    }

    /// The final error: map it to a status and write a short page.
    pub async fn fail_to_proxy<D: Downstream>(&self, s: &mut D, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let code = match e.etype() {
            HTTPStatus(c) => *c,
            ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed | WriteTimedout => 0,
                    ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // After a page for the servers' failure (502, 503, 504) the client
        // keeps its connection, as nginx lets it, if it sent all of its
        // request: in an outage, clients do not reconnect (and shake hands
        // again) for every request. Any other error ends the connection, as
        // does any error in Pingora's loop.
        let keep =
            matches!(code, 502..=504) && s.reusable_after_error() && s.keepalive_allowed() && s.request_body_done();
        let mut sent = false;
        if code > 0 && s.response_status().is_none() {
            if !keep {
                s.set_keepalive(None);
            }
            sent = Self::error_page(s, ctx, code).await.is_ok();
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: keep && sent,
        }
    }

    /// One access-log line; the in-flight slot is released when `ctx` drops.
    pub fn logging<D: Downstream>(&self, s: &D, ctx: &mut Ctx) {
        let status = s.response_status().unwrap_or(0);
        match (&ctx.loc, &ctx.snap) {
            (Some(loc), _) => loc.metrics[self.listener].count(status),
            (None, Some(snap)) => snap.listeners[self.listener].unrouted.count(status),
            _ => {}
        }
        metrics::get().request_time.observe(ctx.start.elapsed().as_secs_f64());
        if let (Some(loc), Some(pc)) = (ctx.loc.as_ref(), ctx.plugin.as_mut()) {
            for p in loc.plugins.with(Hooks::LOG) {
                p.log(pc, status);
            }
        }
        let Some(log) = &self.access_log else { return };
        let header = |name| s.header(name).unwrap_or("-");
        let pool = ctx.pool.as_ref();
        let cur = ctx.current.as_ref().map(|a| (a.server, a.started.elapsed()));
        let attempts = || ctx.upstream_log.iter().copied().chain(cur);
        // nginx `combined` plus upstream addresses, upstream times and the request time,
        // written without `core::fmt` (which cost more than the rest of the request's steps).
        log.write_line(|line| {
            line_start(line, ctx.client_ip);
            line.push_str(s.method().as_str());
            line.push(' ');
            access_log::push_escaped(line, s.target().as_bytes());
            line.push(' ');
            line.push_str(version_text(s.version()));
            line.push_str("\" ");
            access_log::push_num(line, u64::from(status));
            line.push(' ');
            access_log::push_num(line, ctx.sent_bytes);
            line.push_str(" \"");
            access_log::push_escaped(line, header("referer").as_bytes());
            line.push_str("\" \"");
            access_log::push_escaped(line, header("user-agent").as_bytes());
            line.push_str("\" ");
            if ctx.upstream_log.is_empty() && cur.is_none() {
                line.push_str("- -");
            } else {
                for (i, (srv, _)) in attempts().enumerate() {
                    line.push_str(if i > 0 { ", " } else { "" });
                    line.push_str(pool.map(|p| p.servers[srv].addr.as_str()).unwrap_or("-"));
                }
                line.push(' ');
                for (i, (_, t)) in attempts().enumerate() {
                    line.push_str(if i > 0 { ", " } else { "" });
                    access_log::push_secs(line, t);
                }
            }
            line.push(' ');
            access_log::push_secs(line, ctx.start.elapsed());
            if ctx.upgraded {
                line.push_str(" upgraded rx=");
                access_log::push_num(line, ctx.body_bytes);
                line.push_str(" tx=");
                access_log::push_num(line, ctx.sent_bytes);
            }
            for (k, v) in ctx.plugin.iter().flat_map(|pc| &pc.log_fields) {
                line.push(' ');
                line.push_str(k);
                line.push('=');
                access_log::push_escaped(line, v.as_bytes());
            }
            line.push('\n');
        });
    }

    /// Count and log a request the listener refused before either loop
    /// read it ([`crate::listener::head`]): as nginx logs its 400s, with the
    /// request line as it came, and no upstream.
    pub fn log_refused(&self, client: Option<IpAddr>, r: &crate::listener::head::Refused) {
        if let Some(l) = self.live.snapshot().listeners.get(self.listener) {
            l.unrouted.count(r.status);
        }
        metrics::get().request_time.observe(r.start.elapsed().as_secs_f64());
        let Some(log) = &self.access_log else { return };
        log.write_line(|line| {
            line_start(line, client);
            access_log::push_escaped(line, &r.line);
            line.push_str("\" ");
            access_log::push_num(line, u64::from(r.status));
            line.push(' ');
            access_log::push_num(line, r.sent);
            line.push_str(" \"-\" \"-\" - - ");
            access_log::push_secs(line, r.start.elapsed());
            line.push('\n');
        });
    }
}

/// An access-log line up to its request line's opening quote.
pub(crate) fn line_start(line: &mut String, client: Option<IpAddr>) {
    match client {
        Some(ip) => forwarded::push_ip(line, ip),
        None => line.push('-'),
    }
    line.push_str(" - - [");
    access_log::push_time_local(line);
    line.push_str("] \"");
}

/// Pingora's loop: each hook is the step of the same name above.
#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if Gateway::request_filter(self, s, ctx).await? {
            return Ok(true);
        }
        continue_body(s).await?;
        let wait = (ctx.snap.as_ref().and_then(|snap| snap.cfg.server.client_body_timeout)).map_or(BODY_WAIT, |d| d.0);
        buffer_small_body(s, wait).await?;
        Ok(false)
    }

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Gateway::upstream_peer(self, s, ctx).await
    }

    fn fail_to_connect(&self, s: &mut Session, peer: &HttpPeer, ctx: &mut Ctx, e: Box<Error>) -> Box<Error> {
        Gateway::fail_to_connect(self, s, peer, ctx, e)
    }

    async fn connected_to_upstream(
        &self,
        s: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        Gateway::connected_to_upstream(self, s, fd, ctx);
        Ok(())
    }

    async fn upstream_request_filter(&self, s: &mut Session, up: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(v) = one_content_length(&up.headers) {
            up.insert_header(http::header::CONTENT_LENGTH, v)?;
        }
        if !ctx.snap.as_ref().is_some_and(|s| s.cfg.server.underscores_in_headers) {
            drop_underscored(up);
        }
        if let Some(origin) = origin_form(up.raw_path()).filter(|_| !s.as_downstream().is_http2()) {
            // Absolute-form (`GET http://host/x`, its Host equal to the authority, as
            // Pingora checks): the server gets the path, as from nginx.
            let origin = origin.into_owned();
            up.set_raw_path(&origin)?;
        }
        let rewrite = ctx.loc.as_ref().and_then(|l| l.rewrite.as_ref());
        if let Some(target) = rewrite.and_then(|r| r.apply(up.raw_path())) {
            up.set_raw_path(&target)?;
        }
        if s.as_downstream().is_http2() {
            from_http2(up)?;
        } else if !up.headers.contains_key(http::header::HOST) {
            // An HTTP/1.0 request without one: the host it named in an absolute
            // target (its routing host), else the server's address, as an HTTP/1.1
            // request needs a Host.
            let named = Some(s.host()).filter(|h| !h.is_empty()).map(str::to_string);
            let server = || {
                let (p, a) = ctx.pool.as_ref().zip(ctx.current.as_ref())?;
                Some(p.servers[a.server].addr.clone())
            };
            if let Some(addr) = named.or_else(server) {
                up.insert_header(http::header::HOST, addr)?;
            }
        }
        Gateway::upstream_request_filter(self, &*s, &mut ReqHeaders(up), ctx).await
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        _eos: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        Gateway::request_body_filter(self, body, ctx)
    }

    async fn upstream_response_filter(&self, s: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        // A Transfer-Encoding not ending with chunked leaves the body's end to the server's
        // close while its Content-Length may say otherwise: refused (502), in both loops.
        let te = resp.headers.get_all(http::header::TRANSFER_ENCODING).iter().next_back();
        let refusal = if te.is_some_and(|v| !lean::ends_chunked(v.as_bytes())) {
            Some("Transfer-Encoding does not end with chunked")
        } else if head_size(resp) > lean::MAX_RESPONSE_HEAD {
            // As the lean loop's limit (Pingora's own is 1 MiB).
            Some("response header larger than 64 KiB")
        } else {
            None
        };
        if let Some(why) = refusal {
            let mut e = Error::explain(ErrorType::InvalidHTTPHeader, why);
            e.esource = ErrorSource::Upstream;
            return Err(e);
        }
        Gateway::upstream_response_filter(self, s, resp, ctx)
    }

    async fn response_filter(&self, s: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        Gateway::response_filter(self, resp.status.as_u16(), &mut RespHeaders(resp), ctx);
        let h1 = !s.as_downstream().is_http2();
        // After the plugins, which may set the type or a coding of their own.
        if let Some(c) = ctx.loc.as_ref().and_then(|l| l.compression.as_ref()) {
            ctx.encoder = c.begin(s.req(), resp, h1);
        }
        if h1 {
            http1_framing(s, resp);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.encoder.is_some() {
            compress_body(body, eos, ctx)?;
        }
        Gateway::response_body_filter(self, body, ctx);
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _s: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        // An HTTP/2 server's trailers end the body: the coding's last bytes go
        // instead (the trailers are lost, as an HTTP/1 client would lose them).
        let Some(e) = ctx.encoder.take() else {
            return Ok(None);
        };
        let last = e
            .finish()
            .or_err(ErrorType::InternalError, "finishing the compressed body")?;
        ctx.sent_bytes += last.len() as u64;
        Ok(Some(last))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        s: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        Gateway::error_while_proxy(self, peer, s, e, ctx, client_reused)
    }

    fn suppress_error_log(&self, _s: &Session, _ctx: &Ctx, e: &Error) -> bool {
        Gateway::suppress_error_log(e)
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        Gateway::fail_to_proxy(self, s, e, ctx).await
    }

    async fn logging(&self, s: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        Gateway::logging(self, s, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::origin_form;

    #[test]
    fn clients_that_go_away_are_not_logged_as_errors() {
        use pingora_core::{Error, ErrorSource, ErrorType::*};
        let from = |t, src| {
            let mut e = Error::new(t);
            e.esource = src;
            super::Gateway::suppress_error_log(&e)
        };
        for t in [ConnectionClosed, ReadError, WriteError, WriteTimedout, H2Error] {
            assert!(from(t.clone(), ErrorSource::Downstream), "{t:?}");
            assert!(!from(t, ErrorSource::Upstream), "a server's failure is logged");
        }
        assert!(!from(InvalidHTTPHeader, ErrorSource::Downstream));
    }

    #[test]
    fn absolute_targets_go_on_as_their_path_and_query() {
        let of = |t: &str| origin_form(t.as_bytes()).map(|o| String::from_utf8(o.into_owned()).unwrap());
        assert_eq!(of("http://a.test/x?q=1").as_deref(), Some("/x?q=1"));
        assert_eq!(of("HTTPS://a.test:8443/").as_deref(), Some("/"));
        assert_eq!(of("http://a.test").as_deref(), Some("/"));
        assert_eq!(of("http://a.test?q").as_deref(), Some("/?q"));
        assert_eq!(of("http://a.test/a/http://b/").as_deref(), Some("/a/http://b/"));
        assert_eq!(of("/x?http://a"), None);
        assert_eq!(of("*"), None);
        assert_eq!(of("ftp://a.test/x"), None);
    }
}
