//! Response compression: nginx's `gzip` filter, with brotli and zstd
//! beside gzip. A location's `compression` block turns it on for the
//! responses it proxies; [`Compression::begin`] decides per response and
//! edits its header, and the [`Encoder`] it returns turns the body's pieces
//! into the coding's as they pass (each piece flushed, so a response that
//! streams keeps streaming).
//!
//! A response is compressed as nginx's filter would compress it:
//! - its status is 200, 403 or 404, and it is not the answer to a HEAD;
//! - it has no `Content-Encoding` of its own (`identity` aside), and no
//!   `Cache-Control: no-transform` (RFC 9110 §7.7; nginx does not look);
//! - its `Content-Length`, when it has one, is at least `min_length`;
//! - its media type is one of `types`;
//! - the client speaks HTTP/1.1 or HTTP/2 (nginx `gzip_http_version 1.1`)
//!   and accepts one of the enabled codings (`Accept-Encoding`, with its
//!   q-values: `gzip;q=0` refuses gzip, `*` stands for codings not named).
//!
//! (Names are written as nginx writes them, for HTTP/1 clients.)
//!
//! Such a response varies by `Accept-Encoding`, so it gets `Vary:
//! Accept-Encoding` (nginx `gzip_vary on`) even when this client takes it
//! plain. A compressed one loses `Content-Length` and `Accept-Ranges`, goes
//! chunked to an HTTP/1.1 client, and its strong `ETag` becomes weak.

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method, Version};
use pingora_http::{RequestHeader, ResponseHeader};
use std::io::Write;
use std::sync::Mutex;

/// A content coding Portico applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// All of them, in the order preferred when a client accepts several
    /// equally: zstd and brotli compress better than gzip for their CPU.
    const ALL: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

    /// Its `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn of(name: &[u8]) -> Option<Coding> {
        Coding::ALL
            .into_iter()
            .find(|c| name.eq_ignore_ascii_case(c.token().as_bytes()))
            .or_else(|| name.eq_ignore_ascii_case(b"x-gzip").then_some(Coding::Gzip))
    }

    /// Levels a location may set: `(least, most)`.
    pub fn levels(self) -> (u32, u32) {
        match self {
            Coding::Zstd => (1, 19),
            Coding::Brotli => (1, 11),
            Coding::Gzip => (1, 9),
        }
    }
}

/// Media types compressed when a location names none: text and the
/// structured formats servers send uncompressed (nginx's own default is
/// `text/html` alone; most configurations list these).
pub const DEFAULT_TYPES: [&str; 11] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "image/svg+xml",
];

/// One location's compression settings.
#[derive(Debug)]
pub struct Compression {
    /// Level per coding, in [`Coding::ALL`]'s order; 0 is off.
    levels: [u32; 3],
    min_length: u64,
    /// Media types, lower case; `None`: any (`*`).
    types: Option<Vec<Box<str>>>,
}

impl Compression {
    /// Settings from a `compression` block; `None` when every coding is off
    /// (a location turning off what it would inherit). An error names the
    /// field at fault (`gzip`, `types[2]`...) and what is wrong with it.
    pub fn new(
        (gzip, brotli, zstd): (u32, u32, u32),
        min_length: u64,
        types: Option<&[String]>,
    ) -> Result<Option<Compression>, (String, String)> {
        let levels = [zstd, brotli, gzip];
        for (c, &level) in Coding::ALL.iter().zip(&levels) {
            let (least, most) = c.levels();
            if level != 0 && !(least..=most).contains(&level) {
                let field = if *c == Coding::Brotli { "brotli" } else { c.token() };
                return Err((field.into(), format!("level {level}: {least}..{most}, or 0 for off")));
            }
        }
        if levels == [0; 3] {
            return Ok(None);
        }
        let types = match types {
            None => Some(DEFAULT_TYPES.iter().map(|&t| t.into()).collect()),
            Some(list) if list.iter().any(|t| t == "*") => None,
            Some(list) => {
                let mut out = Vec::new();
                for (i, t) in list.iter().enumerate() {
                    let ok = t.split_once('/').is_some_and(|(a, b)| token(a) && token(b));
                    if !ok {
                        return Err((
                            format!("types[{i}]"),
                            format!("{t:?} is not a media type (type/subtype, or *)"),
                        ));
                    }
                    out.push(t.to_ascii_lowercase().into());
                }
                Some(out)
            }
        };
        Ok(Some(Compression {
            levels,
            min_length,
            types,
        }))
    }

    /// Decide for this response to `req`: `Some` when it is to be compressed,
    /// its header then edited for the coding. `h1`: the client's connection
    /// is HTTP/1 (the body then goes chunked).
    pub fn begin(&self, req: &RequestHeader, resp: &mut ResponseHeader, h1: bool) -> Option<Encoder> {
        let accept = req.headers.get_all(ACCEPT_ENCODING).iter().map(|v| v.as_bytes());
        self.begin_for(&req.method, req.version, accept, resp, h1)
    }

    /// [`Compression::begin`] for a request known by its method, version and
    /// `Accept-Encoding` values.
    pub fn begin_for<'a>(
        &self,
        method: &Method,
        version: Version,
        accept: impl Iterator<Item = &'a [u8]>,
        resp: &mut ResponseHeader,
        h1: bool,
    ) -> Option<Encoder> {
        if *method == Method::HEAD || !self.compressible(resp) {
            return None;
        }
        add_vary(resp);
        if version < Version::HTTP_11 {
            return None;
        }
        let (coding, level) = self.choose(accept)?;
        let encoder = Encoder::new(coding, level)?;
        resp.insert_header("Content-Encoding", coding.token()).ok()?;
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        if h1 && !resp.headers.contains_key(TRANSFER_ENCODING) {
            resp.insert_header("Transfer-Encoding", "chunked").ok()?;
        }
        weaken_etag(resp);
        Some(encoder)
    }

    /// Whether the response itself is one to compress, whoever asks.
    fn compressible(&self, resp: &ResponseHeader) -> bool {
        let h = &resp.headers;
        if !matches!(resp.status.as_u16(), 200 | 403 | 404) {
            return false;
        }
        if h.get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return false;
        }
        let no_transform = h.get_all(CACHE_CONTROL).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
        });
        if no_transform {
            return false;
        }
        if let Some(len) = h.get(CONTENT_LENGTH) {
            let len = std::str::from_utf8(len.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if len.is_none_or(|n| n == 0 || n < self.min_length) {
                return false;
            }
        }
        let Some(types) = &self.types else {
            return true;
        };
        let Some(ct) = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        types.iter().any(|t| t.eq_ignore_ascii_case(media))
    }

    /// The enabled coding this client prefers (highest q-value, then the
    /// order of [`Coding::ALL`]), with its level; `None` if it takes none.
    fn choose<'a>(&self, accept: impl Iterator<Item = &'a [u8]>) -> Option<(Coding, u32)> {
        // q-values in thousandths, per coding as named, and for `*`.
        let mut named: [Option<u16>; 3] = [None; 3];
        let mut star = None;
        for item in accept.flat_map(|v| v.split(|&b| b == b',')) {
            let mut parts = item.split(|&b| b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let mut q = Some(1000);
            for p in parts {
                let p = p.trim_ascii();
                if p.len() > 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                    q = qvalue(&p[2..]);
                }
            }
            let q = q.unwrap_or(0); // a malformed q-value: not accepted
            let slot = match Coding::of(name) {
                Some(c) => &mut named[Coding::ALL.iter().position(|&x| x == c).unwrap_or(0)],
                None if name == b"*" => &mut star,
                None => continue,
            };
            *slot = Some(slot.map_or(q, |was| was.max(q)));
        }
        let mut best: Option<(u16, Coding, u32)> = None;
        for (i, c) in Coding::ALL.into_iter().enumerate() {
            let q = named[i].or(star).unwrap_or(0);
            if self.levels[i] == 0 || q == 0 {
                continue;
            }
            if best.is_none_or(|(bq, ..)| q > bq) {
                best = Some((q, c, self.levels[i]));
            }
        }
        best.map(|(_, c, level)| (c, level))
    }
}

/// An RFC 9110 token character string (a media type's halves).
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; `None` if malformed.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| (d - b'0') as u16);
    }
    match int[0] {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `Vary: Accept-Encoding`, unless the response varies by it (or by everything) already.
fn add_vary(resp: &mut ResponseHeader) {
    let already = resp.headers.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|f| {
            let f = f.trim_ascii();
            f == b"*" || f.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !already {
        let _ = resp.append_header("Vary", HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong `ETag` becomes weak (the bytes changed, the meaning did not),
/// as nginx does; one that is neither is dropped.
fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(tag) = resp.headers.get(ETAG) else {
        return;
    };
    let tag = tag.as_bytes();
    if tag.starts_with(b"W/") {
        return;
    }
    let weak = tag
        .starts_with(b"\"")
        .then(|| HeaderValue::from_bytes(&[b"W/", tag].concat()).ok())
        .flatten();
    match weak {
        Some(w) => {
            let _ = resp.insert_header("ETag", w);
        }
        None => {
            resp.remove_header(&ETAG);
        }
    }
}

/// One response's compressor. (The mutex only makes it `Sync`, as a
/// request's context must be; it is never contended: `&mut self` reaches
/// it through `get_mut`.)
pub struct Encoder(Mutex<Inner>);

enum Inner {
    Gzip(Gzip),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// `None` if the coding's library refuses the level (never for levels
    /// [`Compression::new`] lets through).
    pub fn new(coding: Coding, level: u32) -> Option<Encoder> {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(Gzip::new(level)),
            // A 512 KiB window (as Pingora's): a long response still compresses well
            // without each one holding the default 4 MiB.
            Coding::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19))),
            Coding::Zstd => Inner::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level as i32).ok()?),
        };
        Some(Encoder(Mutex::new(inner)))
    }

    fn inner(&mut self) -> &mut Inner {
        self.0.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The coded bytes for this piece of the body, flushed so that
    /// everything given so far can be decoded from what was returned.
    pub fn feed(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        fn run<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
            w.write_all(data)?;
            w.flush()
        }
        let out = match self.inner() {
            Inner::Gzip(g) => return g.feed(data).map(Bytes::from),
            Inner::Brotli(b) => {
                run(b.as_mut(), data)?;
                b.get_mut()
            }
            Inner::Zstd(z) => {
                run(z, data)?;
                z.get_mut()
            }
        };
        Ok(std::mem::take(out).into())
    }

    /// The coding's last bytes (its end marker and checksum).
    pub fn finish(self) -> std::io::Result<Bytes> {
        self.finish_with(&[])
    }

    /// The coded bytes for the body's last piece, `data`, and the coding's
    /// end, together (a body that came whole is compressed in one go).
    pub fn finish_with(self, data: &[u8]) -> std::io::Result<Bytes> {
        let inner = self.0.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = match inner {
            Inner::Gzip(mut g) => g.finish(data)?,
            Inner::Brotli(mut b) => {
                b.write_all(data)?;
                b.into_inner()
            }
            Inner::Zstd(mut z) => {
                z.write_all(data)?;
                z.finish()?
            }
        };
        Ok(out.into())
    }
}

/// A gzip stream (RFC 1952) around a raw deflate stream whose state comes
/// from, and goes back to, its thread's [`IDLE_DEFLATE`]: zlib's state for
/// one stream is about 270 KiB, allocated and zeroed, which cost more
/// than compressing a small page.
struct Gzip {
    deflate: Option<flate2::Compress>,
    level: u32,
    crc: flate2::Crc,
    /// The 10-byte header went out.
    started: bool,
}

thread_local! {
    /// Deflate states of finished responses, by level, ready for the next.
    static IDLE_DEFLATE: std::cell::RefCell<Vec<(u32, flate2::Compress)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Idle deflate states kept per thread (about 270 KiB each).
const IDLE_DEFLATE_MAX: usize = 4;

impl Gzip {
    fn new(level: u32) -> Gzip {
        let idle = IDLE_DEFLATE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let at = idle.iter().position(|(l, _)| *l == level)?;
            Some(idle.swap_remove(at).1)
        });
        let deflate = idle.unwrap_or_else(|| flate2::Compress::new(flate2::Compression::new(level), false));
        Gzip {
            deflate: Some(deflate),
            level,
            crc: flate2::Crc::new(),
            started: false,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.started, true) {
            // No name, no time; XFL as zlib sets it for the level; OS unknown.
            let xfl = match self.level {
                1 => 4,
                9 => 2,
                _ => 0,
            };
            out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
        }
    }

    fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        self.start(&mut out);
        self.crc.update(data);
        self.deflate(data, &mut out, flate2::FlushCompress::Sync)?;
        Ok(out)
    }

    fn finish(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        self.start(&mut out);
        self.crc.update(data);
        self.deflate(data, &mut out, flate2::FlushCompress::Finish)?;
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Ok(out)
    }

    /// All of `input` through the deflate stream into `out`, and the flush
    /// done: zlib is done when it leaves output room unused.
    fn deflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, flush: flate2::FlushCompress) -> std::io::Result<()> {
        let d = self
            .deflate
            .as_mut()
            .ok_or_else(|| std::io::Error::other("deflate stream already ended"))?;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(input.len() / 2 + 256);
            }
            let before = d.total_in();
            let status = d.compress_vec(input, out, flush).map_err(std::io::Error::other)?;
            input = &input[(d.total_in() - before) as usize..];
            match status {
                flate2::Status::StreamEnd => return Ok(()),
                _ if flush == flate2::FlushCompress::Sync && input.is_empty() && out.len() < out.capacity() => {
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        let Some(mut deflate) = self.deflate.take() else {
            return;
        };
        deflate.reset();
        let level = self.level;
        let _ = IDLE_DEFLATE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.len() < IDLE_DEFLATE_MAX {
                idle.push((level, deflate));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conf(gzip: u32, brotli: u32, zstd: u32) -> Compression {
        Compression::new((gzip, brotli, zstd), 20, None).unwrap().unwrap()
    }

    fn choose(c: &Compression, accept: &[&str]) -> Option<&'static str> {
        c.choose(accept.iter().map(|a| a.as_bytes())).map(|(c, _)| c.token())
    }

    #[test]
    fn the_client_s_q_values_decide_then_the_gateway_s_preference() {
        let all = conf(1, 4, 3);
        assert_eq!(choose(&all, &["gzip, deflate, br, zstd"]), Some("zstd"));
        assert_eq!(choose(&all, &["gzip, br;q=0.9"]), Some("gzip"));
        assert_eq!(choose(&all, &["gzip;q=0.5", "br;q=0.8"]), Some("br"), "several fields");
        assert_eq!(choose(&all, &["identity"]), None);
        assert_eq!(choose(&all, &[]), None, "no field: nothing is assumed");
        assert_eq!(choose(&all, &["*;q=0.1, zstd;q=0"]), Some("br"));
        assert_eq!(choose(&all, &["X-GZIP"]), Some("gzip"));
        let gzip = conf(6, 0, 0);
        assert_eq!(choose(&gzip, &["gzip;q=0"]), None);
        assert_eq!(choose(&gzip, &["gzip;q=0.000"]), None);
        assert_eq!(choose(&gzip, &["br, zstd"]), None, "only enabled codings");
        assert_eq!(choose(&gzip, &["*"]), Some("gzip"));
        assert_eq!(choose(&gzip, &["gzip;q=2"]), None, "a malformed q-value refuses");
        assert_eq!(choose(&gzip, &["gzip ; Q=0.3"]), Some("gzip"));
        assert_eq!(
            choose(&gzip, &["gzip;level=1"]),
            Some("gzip"),
            "other parameters are ignored"
        );
    }

    #[test]
    fn q_values_are_read_as_rfc_9110_writes_them() {
        assert_eq!(qvalue(b"1"), Some(1000));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"0.125"), Some(125));
        assert_eq!(qvalue(b"0"), Some(0));
        for bad in [&b"1.5"[..], b"0.1234", b"", b".5", b"2", b"0.x", b"10"] {
            assert_eq!(qvalue(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn req(accept: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("accept-encoding", accept).unwrap();
        r
    }

    fn resp(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_compressed_header_loses_its_length_and_ranges_and_weakens_its_etag() {
        let c = conf(1, 0, 0);
        let mut r = resp(
            200,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("content-length", "5000"),
                ("accept-ranges", "bytes"),
                ("etag", "\"abc\""),
                ("vary", "Cookie"),
            ],
        );
        assert!(c.begin(&req("gzip"), &mut r, true).is_some());
        let h = &r.headers;
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["transfer-encoding"], "chunked");
        assert_eq!(h["etag"], "W/\"abc\"");
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        let vary: Vec<_> = h.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vary, ["Cookie", "Accept-Encoding"]);
        // Over HTTP/2 no framing field is added.
        let mut r = resp(
            200,
            &[
                ("content-type", "text/css"),
                ("etag", "W/\"x\""),
                ("vary", "accept-encoding"),
            ],
        );
        assert!(c.begin(&req("gzip"), &mut r, false).is_some());
        assert!(r.headers.get("transfer-encoding").is_none());
        assert_eq!(r.headers["etag"], "W/\"x\"");
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    }

    #[test]
    fn responses_nginx_would_not_compress_are_left_alone() {
        let c = conf(1, 0, 0);
        let html = ("content-type", "text/html");
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 8] = [
            (206, &[html], "partial content"),
            (500, &[html], "an error page from the server"),
            (304, &[html], "not modified"),
            (200, &[html, ("content-encoding", "br")], "coded already"),
            (200, &[html, ("content-length", "19")], "shorter than min_length"),
            (200, &[html, ("content-length", "0")], "empty"),
            (200, &[("content-type", "image/png")], "not a listed type"),
            (200, &[html, ("cache-control", "public, No-Transform")], "no-transform"),
        ];
        for (status, fields, why) in cases {
            let mut r = resp(status, fields);
            let before = format!("{:?}", r.headers);
            assert!(c.begin(&req("gzip"), &mut r, true).is_none(), "{why}");
            assert_eq!(before, format!("{:?}", r.headers), "{why}: header unchanged");
        }
        // No Content-Type: not compressed unless any type is.
        assert!(c.begin(&req("gzip"), &mut resp(200, &[]), true).is_none());
        let any = Compression::new((1, 0, 0), 20, Some(&["*".to_string()]))
            .unwrap()
            .unwrap();
        assert!(any.begin(&req("gzip"), &mut resp(200, &[]), true).is_some());
        // HEAD, and HTTP/1.0 (which still learns that the answer varies).
        let mut head = req("gzip");
        head.set_method(Method::HEAD);
        assert!(c.begin(&head, &mut resp(200, &[html]), true).is_none());
        let mut old = req("gzip");
        old.set_version(Version::HTTP_10);
        let mut r = resp(200, &[html, ("content-length", "100")]);
        assert!(c.begin(&old, &mut r, true).is_none());
        assert_eq!(r.headers["vary"], "Accept-Encoding");
        assert_eq!(r.headers["content-length"], "100");
    }

    #[test]
    fn settings_are_checked() {
        let err = |g, b, z, types: Option<&[&str]>| {
            let types: Option<Vec<String>> = types.map(|t| t.iter().map(|s| s.to_string()).collect());
            Compression::new((g, b, z), 20, types.as_deref()).unwrap_err()
        };
        assert_eq!(err(10, 0, 0, None).0, "gzip");
        assert_eq!(err(1, 12, 0, None).0, "brotli");
        assert_eq!(err(1, 0, 20, None).0, "zstd");
        assert!(
            Compression::new((0, 0, 0), 20, None).unwrap().is_none(),
            "all off: none"
        );
        let (field, why) = err(1, 0, 0, Some(&["text/html", "json"]));
        assert_eq!(field, "types[1]");
        assert!(why.contains("\"json\""), "{why}");
        let c = Compression::new((1, 0, 0), 20, Some(&["Application/JSON".to_string()]))
            .unwrap()
            .unwrap();
        assert!(c.compressible(&resp(200, &[("content-type", "application/json")])));
    }

    fn decoder(coding: Coding, bytes: &[u8]) -> Box<dyn Read + '_> {
        match coding {
            Coding::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
            Coding::Brotli => Box::new(brotli::Decompressor::new(bytes, 4096)),
            Coding::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).unwrap()),
        }
    }

    #[test]
    fn a_deflate_state_used_before_makes_the_same_stream_as_a_new_one() {
        let page: Vec<u8> = (0..500)
            .flat_map(|i| format!("<li>item {i}</li>").into_bytes())
            .collect();
        let whole = |level| {
            let mut e = Encoder::new(Coding::Gzip, level).unwrap();
            let mut out = e.feed(&page).unwrap().to_vec();
            out.extend_from_slice(&e.finish().unwrap());
            out
        };
        let first = whole(1);
        // One left unfinished (a client gone mid-answer), its state then reused.
        let mut gone = Encoder::new(Coding::Gzip, 1).unwrap();
        gone.feed(b"half an answer").unwrap();
        drop(gone);
        for _ in 0..3 {
            assert_eq!(whole(1), first, "byte for byte");
        }
        let best = whole(9);
        assert!(best.len() < first.len(), "level 9 got a state of its own level");
        for out in [first, best] {
            let mut plain = Vec::new();
            decoder(Coding::Gzip, &out).read_to_end(&mut plain).unwrap();
            assert_eq!(plain, page);
        }
    }

    #[test]
    fn every_coding_streams_what_it_was_given_so_far() {
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i} of the page\n").into_bytes())
            .collect();
        for coding in Coding::ALL {
            let mut e = Encoder::new(coding, 3).unwrap();
            let mut sent = Vec::new();
            for (i, piece) in text.chunks(16 * 1024).enumerate() {
                sent.extend_from_slice(&e.feed(piece).unwrap());
                // Flushed: what came out so far decodes to all that went in so far
                // (the stream is not ended yet, so the decoder then stops with an error).
                let mut partial = Vec::new();
                let _ = decoder(coding, &sent).read_to_end(&mut partial);
                assert_eq!(partial.len(), ((i + 1) * 16 * 1024).min(text.len()), "{coding:?}");
            }
            assert!(e.feed(b"").unwrap().is_empty());
            sent.extend_from_slice(&e.finish().unwrap());
            assert!(sent.len() < text.len() / 4, "{coding:?}: {} bytes", sent.len());
            let mut whole = Vec::new();
            decoder(coding, &sent)
                .read_to_end(&mut whole)
                .expect("a complete stream");
            assert_eq!(whole, text, "{coding:?}");
            // A body that came whole: compressed and ended in one go.
            let once = Encoder::new(coding, 3).unwrap().finish_with(&text).unwrap();
            let mut whole = Vec::new();
            decoder(coding, &once)
                .read_to_end(&mut whole)
                .expect("a complete stream");
            assert_eq!(whole, text, "{coding:?} in one go");
        }
    }
}
