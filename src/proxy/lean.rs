//! The lean HTTP/1 path: Portico's own short proxy loop for the most common
//! requests: a plain HTTP/1.1 GET or HEAD without a body, and a WebSocket
//! handshake (whose connection then becomes a [`crate::pipe`]).
//!
//! It is not a second gateway. It runs the same [`Gateway`] steps in the
//! same order as Pingora's `HttpProxy` runs them as hooks (request_filter,
//! upstream_peer, connected_to_upstream, upstream_request_filter,
//! upstream_response_filter, response_filter, response_body_filter,
//! fail_to_connect, error_while_proxy, fail_to_proxy, logging), so routing,
//! retries, passive health, error pages, metrics and the access log are the
//! very same code, and a client that leaves early abandons its request in
//! both. What it leaves out is what such a request never needs: the
//! two-task duplex relay with its channels, body retry buffers, caching,
//! other upgrades and HTTP/2. It speaks HTTP/1.1 itself on both sides, for this
//! one shape of request: [`session`] to the client, [`upstream`] to the
//! server, both with the framing and fields Pingora writes. Its idle
//! upstream connections are kept in a pool of its own ([`idle`]), without
//! the watcher task Pingora's pool runs for each of them.
//!
//! [`accepts`] decides from the request's raw bytes, before any session
//! exists, so a request it declines goes to Pingora untouched. It declines
//! anything Pingora would have to rewrite beyond dropping a plain
//! `Connection: keep-alive|close`: hop-by-hop headers, bodies, absolute-form
//! targets, unusual Host values, and routes to HTTP/2
//! pools; upgrades other than a WebSocket handshake to a location that
//! passes WebSockets the standard way (`upgrade: websocket`, the default).
//! A request it takes is parsed there, once.

mod connect;
mod edits;
mod idle;
mod session;
mod upstream;

use super::downstream::Downstream;
use super::Gateway;
use crate::live::{Action, Snapshot, Upgrade};
use crate::plugins::RespHeaders;
pub use edits::ClientFields;
use edits::{FieldEdits, RequestEdits};
use idle::IdlePool;
use log::{error, warn};
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::{Error, ErrorType};
pub use session::{Head, LeanSession};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
pub use upstream::{ends_chunked, MAX_RESPONSE_HEAD};
use upstream::{Exchange, Part};

/// Headers whose presence sends a request to Pingora's loop: hop-by-hop
/// fields it would strip or act on, and anything implying a body.
const DECLINE: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// A Host the lean loop takes: letters, digits and `.-_:` (or an IPv6
/// literal's brackets), and one that [`crate::routing::valid_host`] passes
/// (checked here, in the scan, so the request's steps need not check it
/// again: [`LeanSession`]'s `refusal`).
fn plain_host(v: &[u8]) -> bool {
    let mut prev = b'.'; // a leading dot is an empty label
    for &b in v {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'[' | b']')) && (b != b'.' || prev == b'.')
        {
            return false;
        }
        prev = b;
    }
    !v.is_empty() && v[0] != b':' && (v[0] != b'[' || crate::routing::valid_host(std::str::from_utf8(v).unwrap_or("")))
}

/// Can the lean path serve the request whose first bytes are `head`? If so,
/// the request, parsed ([`Head::wire_len`] tells where the next request, if
/// any, begins). Anything incomplete or unusual is declined (Pingora's loop
/// serves it).
pub fn accepts(head: &[u8], snap: &Snapshot, listener: usize) -> Option<Box<Head>> {
    // Empty lines before the request line (RFC 9112 §2.2): Pingora's loop leaves them behind.
    if matches!(head.first(), Some(b'\r' | b'\n')) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    // Bytes after the head are the next request (pipelined): the lean loop takes no bodies.
    let Ok(httparse::Status::Complete(len)) = req.parse(head) else {
        return None;
    };
    let websocket = shape(&req)?;
    if !routable(&req, snap, listener, websocket) {
        return None;
    }
    Head::build(&head[..len], &req, websocket)
}

/// Does `name` hold an underscore? Eight bytes at a time (names are short:
/// a search function costs more to call than it saves on them).
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_ne_bytes([b'_'; 8]);
    let chunks = name.chunks_exact(8);
    let rest = chunks.remainder();
    chunks.into_iter().any(|c| {
        // A zero byte in `x`, where a byte of `c` is `_` (names are ASCII: no false hits).
        let x = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ UNDERSCORES;
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    }) || rest.contains(&b'_')
}

/// What [`shape`] makes of a request field, by its name.
enum Name {
    Host,
    Connection,
    Upgrade,
    /// One of [`DECLINE`].
    Decline,
    Other,
}

impl Name {
    /// Names are told apart by length first: most fields are none of these
    /// and cost one comparison or none.
    fn of(name: &str) -> Name {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is("host") => Name::Host,
            10 if is("connection") => Name::Connection,
            7 if is("upgrade") => Name::Upgrade,
            2 | 6 | 7 | 10 | 14 | 16..=19 if DECLINE.iter().any(|d| is(d)) => Name::Decline,
            _ => Name::Other,
        }
    }
}

/// A GET or HEAD with a plain Host, no body and no hop-by-hop field beyond
/// `Connection: keep-alive|close`: `Some(false)`. A WebSocket handshake (a
/// GET with `Upgrade: websocket` and `Connection: upgrade`, perhaps with
/// `keep-alive`): `Some(true)`.
fn shape(req: &httparse::Request) -> Option<bool> {
    if req.version != Some(1) || !matches!(req.method, Some("GET" | "HEAD")) {
        return None;
    }
    if !req.path.is_some_and(|p| p.starts_with('/')) {
        return None;
    }
    let mut host = None;
    // `Upgrade: websocket` seen; `upgrade` among the Connection tokens.
    let (mut websocket, mut conn_upgrade) = (false, false);
    for h in req.headers.iter() {
        match Name::of(h.name) {
            // Dropped or not as the configuration says: Pingora's loop.
            Name::Other if has_underscore(h.name.as_bytes()) => return None,
            Name::Other => {}
            Name::Host => {
                if host.is_some() || !plain_host(h.value) {
                    return None;
                }
                host = Some(h.value);
            }
            Name::Connection => {
                if h.value.eq_ignore_ascii_case(b"keep-alive") || h.value.eq_ignore_ascii_case(b"close") {
                    continue;
                }
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return None;
                    }
                }
            }
            Name::Upgrade => {
                if websocket || !h.value.eq_ignore_ascii_case(b"websocket") {
                    return None;
                }
                websocket = true;
            }
            Name::Decline => return None,
        }
    }
    if websocket != conn_upgrade || (websocket && req.method != Some("GET")) {
        return None;
    }
    host.map(|_| websocket)
}

/// Can the lean loop proxy to the request's route? Not to an HTTP/2 pool,
/// and a WebSocket handshake only to a location that proxies upgrades the
/// standard way (other policies rewrite the request: Pingora's loop).
fn routable(req: &httparse::Request, snap: &Snapshot, listener: usize, websocket: bool) -> bool {
    let host = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"));
    let host = host.and_then(|h| std::str::from_utf8(h.value).ok()).unwrap_or("");
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    // A path that is no path (a bad escape, `..` above the root) gets its 400 in Pingora's loop.
    let Ok(path) = crate::routing::normalize(path) else {
        return false;
    };
    let loc = snap
        .listeners
        .get(listener)
        .and_then(|l| l.hosts.lookup(host))
        .and_then(|h| h.paths.lookup(&path));
    match loc {
        Some(l) => match &l.action {
            Action::Proxy(p) => !p.http2 && (!websocket || l.upgrade == Upgrade::WebSocket),
            Action::Return { .. } => !websocket,
        },
        None => !websocket,
    }
}

/// The client's `Accept-Encoding` values.
fn accepted(s: &LeanSession) -> smallvec::SmallVec<[&[u8]; 2]> {
    let mut all = smallvec::SmallVec::new();
    s.find_field("accept-encoding", &mut |v| {
        all.push(v.as_bytes());
        None
    });
    all
}

/// One listener's lean path: its gateway hooks and its own upstream pool.
pub struct LeanPath {
    gw: Gateway,
    /// Makes the upstream connections the lean path does not make itself
    /// (TLS, proxies, socket options) the way Pingora does; one for all
    /// listeners, built while the gateway starts serving.
    transport: crate::upstream::Transport,
    idle: Arc<IdlePool>,
    max_retries: usize,
}

/// `(downstream reusable, error)` of one attempt, as in Pingora.
type Outcome = (bool, Option<Box<Error>>);

impl LeanPath {
    /// The listener's proxy logic.
    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    pub fn new(gw: Gateway, conf: &ServerConf, transport: crate::upstream::Transport) -> Self {
        LeanPath {
            gw,
            transport,
            idle: Arc::default(),
            max_retries: conf.max_retries,
        }
    }

    /// Start building the transport, if nothing has yet.
    pub fn warm(&self) {
        self.transport.start();
    }

    /// Serve the request `s` holds. Returns the connection if it may carry
    /// another request.
    ///
    /// A function returning an `async` block rather than an `async fn`,
    /// whose future would keep `s` twice: this future is boxed for every
    /// request, so its size is copied each time.
    #[allow(clippy::manual_async_fn)]
    pub fn serve<'a>(
        &'a self,
        mut s: LeanSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<Stream>> + Send + 'a {
        async move {
            crate::metrics::get().lean_requests.inc();
            if *shutdown.borrow() {
                s.set_keepalive(None);
            }
            let gw = &self.gw;
            let mut ctx = super::Ctx::new();
            match gw.request_filter(&mut s, &mut ctx).await {
                Ok(true) => {
                    gw.logging(&s, &mut ctx);
                    return s.finish().await;
                }
                Ok(false) => {}
                Err(e) => {
                    let reuse = self.fail(&mut s, &mut ctx, &e, "Fail to filter request:").await;
                    gw.logging(&s, &mut ctx);
                    return if reuse { s.finish().await } else { None };
                }
            }
            let mut tries = 0;
            let (mut reuse, mut failure) = (false, None);
            while tries < self.max_retries {
                tries += 1;
                let (r, e) = self.attempt(&mut s, &mut ctx).await;
                reuse = r;
                match e {
                    Some(e) if e.retry() => {
                        if !Gateway::suppress_error_log(&e) {
                            warn!("Fail to proxy: {e}, tries: {tries}, retry: true, {}", s.summary());
                        }
                        failure = Some(e);
                    }
                    e => {
                        failure = e;
                        break;
                    }
                }
            }
            if let Some(e) = &failure {
                let context = format!("Fail to proxy (tries: {tries}, retry: false):");
                // The client may keep the connection after some error pages (see `fail_to_proxy`).
                reuse = self.fail(&mut s, &mut ctx, e, &context).await;
            }
            gw.logging(&s, &mut ctx);
            if reuse {
                s.finish().await
            } else {
                None
            }
        }
    }

    /// The final error: the error page (`fail_to_proxy`) and, unless
    /// suppressed, one error log line, as Pingora writes them. Whether the
    /// connection may carry another request.
    async fn fail(&self, s: &mut LeanSession, ctx: &mut super::Ctx, e: &Error, context: &str) -> bool {
        let gw = &self.gw;
        let res = gw.fail_to_proxy(s, e, ctx).await;
        if !Gateway::suppress_error_log(e) {
            error!("{context} {e}, status: {}, {}", res.error_code, s.summary());
        }
        res.can_reuse_downstream
    }

    /// One attempt at one server: pick, connect, relay.
    async fn attempt(&self, s: &mut LeanSession, ctx: &mut super::Ctx) -> Outcome {
        let gw = &self.gw;
        let peer = match gw.upstream_peer(s, ctx).await {
            Ok(p) => p,
            Err(e) => return (false, Some(e)),
        };
        if peer.options.alpn == ALPN::H2 {
            // `accepts` keeps requests for HTTP/2 pools away; only a reload in between gets here.
            let e = Error::explain(ErrorType::InternalError, "lean path got an HTTP/2 pool");
            return (false, Some(e));
        }
        let key = peer.reuse_hash();
        let (up, reused) = match self.idle.take(key) {
            Some(up) => (up, true),
            // Boxed: connecting is rare with pooled connections, and its future is large.
            None => match Box::pin(connect::connect(&self.transport, &peer)).await {
                Ok(stream) => (stream.into(), false),
                Err(mut e) => {
                    e.as_up();
                    return (false, Some(gw.fail_to_connect(s, &peer, ctx, e).into_up()));
                }
            },
        };
        let mut up = Exchange::new(up);
        let fd = up.fd();
        gw.connected_to_upstream(s, fd, ctx);
        let (down_reuse, up_reuse, e) = self.relay(s, &mut up, &peer, ctx).await;
        if up_reuse {
            if let Some(kept) = up.into_reusable() {
                let limit = ctx.pool.as_ref().map_or(1, |p| p.keepalive);
                self.idle.put(key, kept, peer.idle_timeout(), limit);
            }
        }
        (down_reuse, e.map(|e| gw.error_while_proxy(&peer, s, e, ctx, reused)))
    }

    /// Send the request header, then pass the response through the response
    /// hooks to the client. `(downstream reusable, upstream reusable, error)`.
    ///
    /// The request head is written from the client's lines plus the
    /// forwarding fields; where header rules or plugins edit the request,
    /// `upstream_request_filter` runs on edits kept by name over the
    /// client's header ([`RequestEdits`]), applied as the head is written.
    /// Pingora's loop runs it on a copy of the header.
    async fn relay(
        &self,
        s: &mut LeanSession,
        up: &mut Exchange,
        peer: &HttpPeer,
        ctx: &mut super::Ctx,
    ) -> (bool, bool, Option<Box<Error>>) {
        let gw = &self.gw;
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        let edits = ctx.loc.as_ref().is_some_and(|l| l.edits_upstream_request());
        let websocket = s.is_upgrade_req();
        let rewrite = ctx.loc.as_ref().and_then(|l| l.rewrite.as_ref());
        let target = rewrite.and_then(|r| r.apply(s.req().raw_path()));
        let target = target.as_deref();
        let forwarding = gw.forwarding(s, ctx);
        let head = if edits {
            // The steps' edits are kept by name and applied as the head is written (no copy).
            let mut fields = RequestEdits::forwarded(s.fields(), &forwarding.fields());
            if let Err(e) = gw.upstream_request_edits(&*s, &mut fields, ctx).await {
                return (false, true, Some(e));
            }
            // With its lines, the client's header is as `accepts` took it in: one plain Host.
            if !fields.host_ok(s.lines().is_some()) {
                let e = Error::explain(ErrorType::InvalidHTTPHeader, "edited Host: several, or with userinfo");
                return (false, true, Some(e.into_in()));
            }
            let (named, added) = fields.parts();
            match s.lines() {
                Some(lines) => {
                    let every = fields.edits_client_fields();
                    Some(upstream::request_head_from(
                        lines, &named, &added, websocket, every, target,
                    ))
                }
                None => upstream::request_head(s.req(), &named, &added, websocket, target),
            }
        } else {
            // Unedited, the request is as `accepts` let it in: an origin-form target and one
            // plain Host (no userinfo), so Pingora's authority check has nothing to find.
            let fields = forwarding.fields();
            match s.lines() {
                Some(lines) => Some(upstream::request_head_from(
                    lines,
                    &fields,
                    &[],
                    websocket,
                    false,
                    target,
                )),
                None => upstream::request_head(s.req(), &fields, &[], websocket, target),
            }
        };
        let Some(head) = head else {
            let e = Error::explain(ErrorType::InvalidHTTPHeader, "request target has forbidden bytes");
            return (false, true, Some(e.into_up()));
        };
        let is_head = *s.method() == http::Method::HEAD;
        if let Err(e) = up.send(&head, is_head, websocket).await {
            return (false, false, Some(e.into_up()));
        }
        loop {
            // While waiting on the server, notice a client that goes away (or
            // sends more before its answer): abandon the request, as Pingora does.
            // A handshake's client may send its first frames early: they wait.
            let next = if websocket {
                up.next().await.map_err(|e| e.into_up())
            } else {
                tokio::select! {
                    biased;
                    t = up.next() => t.map_err(|e| e.into_up()),
                    e = s.client_gone() => Err(e.into_down()),
                }
            };
            let task = match next {
                Ok(t) => t,
                Err(e) => return (false, false, Some(e)),
            };
            let done = matches!(task, Part::Head(_, true) | Part::Body(_, true) | Part::Done);
            let sent = match task {
                Part::Head(head, end) => {
                    // Always a final, routed answer here (1xx are skipped), so the bool says nothing.
                    if let Err(e) = gw.upstream_status(s, head.status.as_u16(), ctx) {
                        return (false, false, Some(e));
                    }
                    let compresses = ctx.loc.as_ref().is_some_and(|l| l.compression.is_some());
                    if up.close_delimited() || !head.passes_as_is() || compresses {
                        // Reframed, normalized or perhaps compressed: through a built header, as
                        // Pingora's loop.
                        match self.edited(&head, up.close_delimited(), ctx) {
                            Ok(mut resp) => {
                                let c = ctx.loc.as_ref().and_then(|l| l.compression.as_ref());
                                let accept = accepted(s);
                                ctx.encoder = c.and_then(|c| {
                                    c.begin_for(s.method(), s.version(), accept.into_iter(), &mut resp, true)
                                });
                                if ctx.encoder.is_some() && head.length.is_some() {
                                    // Its body is here or on its way: the head goes with its first piece.
                                    s.defer_head();
                                }
                                s.send_header(resp, end).await
                            }
                            Err(e) => return (false, false, Some(e)),
                        }
                    } else if Gateway::edits_response(ctx) {
                        // Plugins edit the fields as they came; no header map is built.
                        let code = head.status.as_u16();
                        let mut fields = FieldEdits::new(&head);
                        if let Err(e) = Gateway::upstream_response_edits(code, &mut fields, ctx) {
                            return (false, false, Some(e));
                        }
                        gw.response_filter(code, &mut fields, ctx);
                        let (chunked, length) = fields.framing();
                        s.send_fields(&head, fields.fields(), chunked, length, end).await
                    } else {
                        // Nothing edits it: the fields go on as they came, then any sticky cookie.
                        let cookie = ctx.sticky_cookie.take();
                        let cookie = cookie.as_ref().map(|c| (&b"Set-Cookie"[..], c.as_bytes()));
                        s.send_fields(&head, head.fields().chain(cookie), head.chunked, head.length, end)
                            .await
                    }
                }
                Part::Body(mut body, end) => {
                    if ctx.encoder.is_some() {
                        if let Err(e) = super::compress_body(&mut body, end, ctx) {
                            return (false, false, Some(e));
                        }
                    }
                    gw.response_body_filter(&body, ctx);
                    s.send_body(body, end).await
                }
                Part::Done => {
                    // A compressed body's last bytes, if its end came apart from its data.
                    let mut last = None;
                    if let Err(e) = super::compress_body(&mut last, true, ctx) {
                        return (false, false, Some(e));
                    }
                    gw.response_body_filter(&last, ctx);
                    s.send_body(last, true).await
                }
            };
            if let Err(e) = sent {
                // The client could not take it: the upstream connection has unread bytes unless done.
                return (false, done, Some(e.into_down()));
            }
            if up.upgraded() {
                // 101 sent: the connection is the new protocol's, both ways, until it ends.
                let idle = ctx.loc.as_ref().map_or(Duration::from_secs(3600), |l| l.ws_idle);
                let (server, early) = up.tunnel_parts();
                // The client's side is read on as the new protocol: no fence from the watch.
                crate::listener::fence(s.stream_mut(), None);
                let together = crate::pipe::Ends::Together;
                let (moved, _) = Box::pin(crate::pipe::run(s.stream_mut(), server, early, idle, together)).await;
                ctx.body_bytes += moved.up;
                ctx.sent_bytes += moved.down;
                return (false, false, None);
            }
            if done {
                return (true, true, None);
            }
        }
    }

    /// The response header built for a response whose fields cannot go on
    /// as they came (folded values, or a close-delimited body turned
    /// chunked), edited by the sticky cookie and plugins.
    fn edited(
        &self,
        head: &upstream::ResponseHead,
        close_delimited: bool,
        ctx: &mut super::Ctx,
    ) -> Result<Box<pingora_http::ResponseHeader>, Box<Error>> {
        let mut resp = head.build()?;
        let code = resp.status.as_u16();
        Gateway::upstream_response_edits(code, &mut RespHeaders(&mut resp), ctx)?;
        if close_delimited {
            // A close-delimited (HTTP/1.0 style) body goes on chunked, so the client connection stays.
            resp.set_version(http::Version::HTTP_11);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        self.gw.response_filter(code, &mut RespHeaders(&mut resp), ctx);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_are_found_anywhere_in_a_name() {
        for name in [
            "_",
            "X_A",
            "X-Forwarded_For",
            "ABCDEFG_",
            "ABCDEFGH_",
            "ABCDEFGHIJKLMNO_",
            "_ABCDEFGHIJ",
        ] {
            assert!(has_underscore(name.as_bytes()), "{name}");
        }
        for name in ["", "Host", "User-Agent", "X-Forwarded-For", "ABCDEFGH", "~^`abcdefghi"] {
            assert!(!has_underscore(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn field_names_are_told_apart_in_any_case() {
        let kind = |n: &str| match Name::of(n) {
            Name::Host => "host",
            Name::Connection => "connection",
            Name::Upgrade => "upgrade",
            Name::Decline => "decline",
            Name::Other => "other",
        };
        for d in DECLINE.iter().filter(|&&d| d != "upgrade") {
            assert_eq!(kind(d), "decline", "{d}");
            assert_eq!(kind(&d.to_ascii_uppercase()), "decline", "{d}");
        }
        for (n, k) in [("Host", "host"), ("CONNECTION", "connection"), ("Upgrade", "upgrade")] {
            assert_eq!(kind(n), k);
        }
        for n in [
            "User-Agent",
            "Accept",
            "Cookie",
            "X-Forwarded-For",
            "hosts",
            "t",
            "Content-Type",
            "Expects",
        ] {
            assert_eq!(kind(n), "other", "{n}");
        }
    }
}
