//! Header edits without a header map. Requests: [`RequestEdits`], kept by
//! name and applied as the upstream head is written. Responses: the lean loop lets the
//! response steps (sticky cookie, plugins) edit a response's fields as they
//! came from the server through the same [`Headers`] interface a
//! `ResponseHeader` offers them, and writes the result straight out, instead
//! of building the `ResponseHeader` (two maps) and serializing it again.
//!
//! Edits mean what they mean on a `ResponseHeader`: `set` replaces the
//! field's first occurrence in its place (with the name as given) and drops
//! the others, or adds it at the end; `append` adds at the end; `remove`
//! drops every occurrence. Names are case-insensitive; invalid names and
//! values are refused as `http` refuses them.

use super::session::rewritten;
use super::upstream::{ends_chunked, ResponseHead};
use crate::plugins::field;
use pingora_http::RequestHeader;
use portico_plugin_api::Headers;
use smallvec::SmallVec;

/// Where a kept name or value is in [`Kept`].
type Span = (u32, u32);

/// What edits keep: their names and values in one buffer (one for all of a
/// message's edits instead of two allocations per edit, and reused from one
/// message to the next), and the fields they add at the end.
#[derive(Default)]
struct Kept {
    text: String,
    /// Inline for the first few (no allocation for a message's first additions).
    added: SmallVec<[(Span, Span); 4]>,
}

thread_local! {
    /// A buffer a finished message's edits gave back, for the next one's.
    static SPARE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

impl Drop for Kept {
    /// The buffer goes back for the next message (a thread keeps one).
    fn drop(&mut self) {
        if self.text.capacity() != 0 && self.text.capacity() <= 4096 {
            let mut text = std::mem::take(&mut self.text);
            text.clear();
            SPARE.set(text);
        }
    }
}

impl Kept {
    fn keep(&mut self, text: &str) -> Span {
        if self.text.capacity() == 0 {
            self.text = SPARE.take();
            self.text.reserve(256);
        }
        let start = self.text.len() as u32;
        self.text.push_str(text);
        (start, self.text.len() as u32)
    }

    fn at(&self, (start, end): Span) -> &str {
        &self.text[start as usize..end as usize]
    }

    fn add(&mut self, name: &str, value: &str) {
        let field = (self.keep(name), self.keep(value));
        self.added.push(field);
    }

    /// The added fields, in order.
    fn added(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.added.iter().map(|&(n, v)| (self.at(n), self.at(v)))
    }

    fn drop_added(&mut self, name: &str) {
        if self.added.is_empty() {
            return;
        }
        let text = &self.text;
        self.added
            .retain(|&mut ((start, end), _)| !text[start as usize..end as usize].eq_ignore_ascii_case(name));
    }
}

/// A field `http` would take, or the error to give for it.
fn checked(name: &str, value: &str) -> Result<(), String> {
    if valid_name(name) && valid_value(value.as_bytes()) {
        Ok(())
    } else {
        Err(format!("invalid header field {name:?}"))
    }
}

/// What became of one of the server's fields.
#[derive(Clone, Copy)]
enum Field {
    AsItCame,
    Removed,
    /// Replaced in its place, by `(name, value)`.
    Replaced(Span, Span),
}

pub struct FieldEdits<'h> {
    head: &'h ResponseHead,
    /// Per field of `head.fields()`; empty until the first edit.
    fields: Vec<Field>,
    kept: Kept,
    /// An edit touched Content-Length or Transfer-Encoding.
    reframed: bool,
}

/// A field name `http` would take: an RFC 9110 token (checked without
/// building a `HeaderName`, which copies a name it does not know).
fn valid_name(name: &str) -> bool {
    /// The token characters: letters, digits and `!#$%&'*+-.^_`|~`.
    const TOKEN: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            t[i] = b.is_ascii_alphanumeric()
                || matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
            i += 1;
        }
        t
    };
    !name.is_empty() && name.len() < 1 << 16 && name.bytes().all(|b| TOKEN[b as usize])
}

/// A field value `http` would take: no control bytes but tab. Checked
/// eight bytes at a time; a word with a byte below 0x20 or a DEL is looked
/// at byte by byte (it may hold tabs).
fn valid_value(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let byte_ok = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\t';
    let mut words = value.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("eight bytes"));
        // A high bit here: some byte is below 0x20 (and not 0x80 or above), or is 0x7f.
        let low = x.wrapping_sub(ONES * 0x20) & !x;
        let del = (x ^ (ONES * 0x7f)).wrapping_sub(ONES) & !(x ^ (ONES * 0x7f));
        if (low | del) & HIGHS != 0 && !w.iter().all(|&b| byte_ok(b)) {
            return false;
        }
    }
    words.remainder().iter().all(|&b| byte_ok(b))
}

impl<'h> FieldEdits<'h> {
    pub fn new(head: &'h ResponseHead) -> Self {
        FieldEdits {
            head,
            fields: Vec::new(),
            kept: Kept::default(),
            reframed: false,
        }
    }

    /// The fields as they stand: the server's, edited, then the added ones.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let edited = self
            .head
            .fields()
            .enumerate()
            .filter_map(|(i, (n, v))| match self.fields.get(i) {
                None | Some(Field::AsItCame) => Some((n, v)),
                Some(Field::Removed) => None,
                Some(&Field::Replaced(n, v)) => Some((self.kept.at(n).as_bytes(), self.kept.at(v).as_bytes())),
            });
        edited.chain(self.kept.added().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// `(chunked, content length)` of the edited fields, as for a built header.
    pub fn framing(&self) -> (bool, Option<u64>) {
        if !self.reframed {
            return (self.head.chunked, self.head.length);
        }
        let (mut chunked, mut length) = (false, None);
        for (n, v) in self.fields() {
            if n.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = ends_chunked(v);
            } else if n.eq_ignore_ascii_case(b"content-length") && length.is_none() {
                length = std::str::from_utf8(v).ok().and_then(|v| v.trim().parse().ok());
            }
        }
        (chunked, length)
    }

    /// An edit of `name` is coming: note whether it changes the framing.
    fn reframes(&mut self, name: &str) {
        self.reframed |= name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding");
    }

    /// Field `i` of the server's is about to change: track them all.
    fn touch(&mut self, i: usize) -> &mut Field {
        if self.fields.is_empty() {
            self.fields = vec![Field::AsItCame; self.head.field_names().count()];
        }
        &mut self.fields[i]
    }

    /// Is the server's field `i` (named `original`) currently named `name`?
    fn named(&self, i: usize, original: &[u8], name: &str) -> bool {
        match self.fields.get(i).copied().unwrap_or(Field::AsItCame) {
            Field::AsItCame => original.eq_ignore_ascii_case(name.as_bytes()),
            Field::Removed => false,
            Field::Replaced(n, _) => self.kept.at(n).eq_ignore_ascii_case(name),
        }
    }
}

impl Headers for FieldEdits<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t'))
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        checked(name, value)?;
        self.reframes(name);
        self.kept.drop_added(name);
        let mut replaced = false;
        for (i, original) in self.head.field_names().enumerate() {
            if self.named(i, original, name) {
                let now = if replaced {
                    Field::Removed
                } else {
                    Field::Replaced(self.kept.keep(name), self.kept.keep(value))
                };
                *self.touch(i) = now;
                replaced = true;
            }
        }
        if !replaced {
            self.kept.add(name, value);
        }
        Ok(())
    }

    fn append(&mut self, name: &str, value: &str) -> Result<(), String> {
        checked(name, value)?;
        self.reframes(name);
        self.kept.add(name, value);
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.reframes(name);
        for (i, original) in self.head.field_names().enumerate() {
            if self.named(i, original, name) {
                *self.touch(i) = Field::Removed;
            }
        }
        self.kept.drop_added(name);
    }
}

/// Edits to the upstream copy of a request (forwarding fields, header
/// rules, plugins), kept by name and applied while the request head is
/// written ([`super::upstream::request_head`]), instead of on a copy of the
/// header. They mean what they mean on a `RequestHeader`, which Pingora's
/// loop edits: `set` in place of the first field of that name (the others
/// dropped) or at the end, `append` at the end, `remove` all of that name.
pub struct RequestEdits<'r> {
    req: &'r dyn ClientFields,
    /// Set (`Some`) or removed (`None`), by name as given, in the order
    /// first edited (inline for the forwarding fields and a few more).
    named: SmallVec<[(Text<'r>, Option<Text<'r>>); 8]>,
    /// The first entries are the forwarding fields (rewritten anyway).
    forwarding: usize,
    kept: Kept,
}

/// The client's request fields as edits read them: from its
/// `RequestHeader`, or from the lean loop's request head as it came
/// (`session::Head`), which then needs no header built.
pub trait ClientFields: Sync {
    /// The first field named `name` (any case), if it is visible ASCII.
    fn first(&self, name: &str) -> Option<&str>;
    /// Is there a field named `name` (any case)?
    fn has(&self, name: &str) -> bool;
    /// Each Host field's value, in order.
    fn hosts(&self, each: &mut dyn FnMut(&[u8]));
}

impl ClientFields for RequestHeader {
    fn first(&self, name: &str) -> Option<&str> {
        field(&self.headers, name).and_then(|v| v.to_str().ok())
    }

    fn has(&self, name: &str) -> bool {
        (self.headers.keys()).any(|k| k.as_str().eq_ignore_ascii_case(name))
    }

    fn hosts(&self, each: &mut dyn FnMut(&[u8])) {
        for v in self.headers.get_all(http::header::HOST) {
            each(v.as_bytes());
        }
    }
}

/// [`RequestEdits`] as [`super::upstream::request_head`] takes them (on
/// the stack for the forwarding fields and a few more).
pub type Parts<'a> = (
    SmallVec<[(&'a str, Option<&'a str>); 8]>,
    SmallVec<[(&'a str, &'a str); 4]>,
);

/// A name or value of a request edit: given by the caller for as long as the
/// edits live (the forwarding fields), or kept in [`Kept`].
#[derive(Clone, Copy)]
enum Text<'r> {
    Given(&'r str),
    Kept(Span),
}

impl<'r> RequestEdits<'r> {
    pub fn new(req: &'r dyn ClientFields) -> Self {
        RequestEdits {
            req,
            named: SmallVec::new(),
            forwarding: 0,
            kept: Kept::default(),
        }
    }

    /// Edits that start with the forwarding fields set (`Some`) or removed
    /// (`None`): distinct lower-case names and values made from the
    /// client's checked fields and address, so taken as they are (no copy,
    /// no check, no lookup), as `set` and `remove` would keep them.
    pub fn forwarded(req: &'r dyn ClientFields, fields: &[(&'static str, Option<&'r str>)]) -> Self {
        let mut e = Self::new(req);
        for &(name, value) in fields {
            debug_assert!(e.entry(name).is_none() && value.is_none_or(|v| checked(name, v).is_ok()));
            e.named.push((Text::Given(name), value.map(Text::Given)));
        }
        e.forwarding = e.named.len();
        e
    }

    fn text(&self, t: Text<'r>) -> &str {
        match t {
            Text::Given(text) => text,
            Text::Kept(span) => self.kept.at(span),
        }
    }

    /// Position in `named` of the entry for `name`.
    fn entry(&self, name: &str) -> Option<usize> {
        (self.named.iter()).position(|&(n, _)| self.text(n).eq_ignore_ascii_case(name))
    }

    /// `Some(value)` set, `Some(None)` removed, `None` not edited by name.
    fn set_entry(&self, name: &str) -> Option<Option<&str>> {
        self.entry(name).map(|i| self.named[i].1.map(|v| self.text(v)))
    }

    fn name_entry(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(|v| Text::Kept(self.kept.keep(v)));
        match self.entry(name) {
            Some(i) => self.named[i].1 = value,
            None => {
                let name = Text::Kept(self.kept.keep(name));
                self.named.push((name, value));
            }
        }
    }

    /// The replacements and the appended fields.
    pub fn parts(&self) -> Parts<'_> {
        // Pushed one by one: collecting into a `SmallVec` costs about 140 instructions more.
        let mut parts = Parts::default();
        for &(n, v) in &self.named {
            parts.0.push((self.text(n), v.map(|v| self.text(v))));
        }
        for f in self.kept.added() {
            parts.1.push(f);
        }
        parts
    }

    /// Do the edits name a field the client sent, beyond those the upstream
    /// request writes its own way anyway? Then every line of the request is
    /// matched against them as it is written, not only those.
    pub fn edits_client_fields(&self) -> bool {
        // Entries are edited in place, so the forwarding fields' stay theirs.
        (self.named[self.forwarding..].iter()).any(|&(n, _)| {
            let n = self.text(n);
            !rewritten(n.as_bytes()) && self.req.has(n)
        })
    }

    /// At most one Host, without userinfo (what Pingora checks on the copy it
    /// sends). `client_checked`: the client's header is as the lean loop took
    /// it in (one plain Host), so only edits of Host need a look.
    pub fn host_ok(&self, client_checked: bool) -> bool {
        let set = self.set_entry("host");
        if client_checked && set.is_none() && !self.kept.added().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            return true;
        }
        let (mut count, mut clean) = (0, true);
        let mut host = |h: &[u8]| {
            count += 1;
            clean &= !h.contains(&b'@');
        };
        match set {
            Some(v) => v.into_iter().for_each(|v| host(v.as_bytes())),
            None => self.req.hosts(&mut host),
        }
        let added = (self.kept.added()).filter(|(n, _)| n.eq_ignore_ascii_case("host"));
        added.for_each(|(_, v)| host(v.as_bytes()));
        count <= 1 && clean
    }
}

impl Headers for RequestEdits<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        let base = match self.set_entry(name) {
            Some(v) => v,
            // The client's Connection is not passed on (Pingora's copy drops it first).
            None if name.eq_ignore_ascii_case("connection") => None,
            None => self.req.first(name),
        };
        base.or_else(|| {
            self.kept
                .added()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        checked(name, value)?;
        self.kept.drop_added(name);
        self.name_entry(name, Some(value));
        Ok(())
    }

    fn append(&mut self, name: &str, value: &str) -> Result<(), String> {
        checked(name, value)?;
        self.kept.add(name, value);
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.kept.drop_added(name);
        self.name_entry(name, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::lean::upstream::request_head;
    use crate::proxy::lean::upstream::tests::{head_of, req};

    #[test]
    fn field_names_are_the_tokens_http_takes() {
        for b in 0u8..128 {
            let one = (b as char).to_string();
            let http_takes = http::HeaderName::from_bytes(one.as_bytes()).is_ok();
            assert_eq!(valid_name(&one), http_takes, "byte {b:#x}");
            let within = format!("x{one}y");
            assert_eq!(
                valid_name(&within),
                http::HeaderName::from_bytes(within.as_bytes()).is_ok(),
                "byte {b:#x}"
            );
        }
        assert!(!valid_name(""));
        assert!(!valid_name("é"));
    }

    #[test]
    fn field_values_are_the_ones_http_takes() {
        // Every byte, at every place of a word and of the tail, among bytes either side of the limits.
        for b in 0u8..=255 {
            for len in [1, 7, 8, 9, 16, 21] {
                for at in 0..len {
                    let mut v: Vec<u8> = (0..len).map(|i| [b'a', b' ', b'~', b'\t', 0x80][i % 5]).collect();
                    v[at] = b;
                    let http_takes = http::HeaderValue::from_bytes(&v).is_ok();
                    assert_eq!(valid_value(&v), http_takes, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(valid_value(b"") && valid_value("x\t\u{e9}y12345678".as_bytes()));
    }

    const RAW: &[u8] =
        b"HTTP/1.1 200 OK\r\nA: 1\r\nSet-Cookie: x=1\r\nB: 2\r\nSet-Cookie: y=2\r\nContent-Length: 5\r\n\r\n";

    fn text(e: &FieldEdits) -> Vec<String> {
        e.fields()
            .map(|(n, v)| format!("{}: {}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect()
    }

    #[tokio::test]
    async fn edits_mean_what_they_mean_on_a_header_map() {
        let head = head_of(RAW).await;
        let mut e = FieldEdits::new(&head);
        assert_eq!(
            text(&e),
            [
                "A: 1",
                "Set-Cookie: x=1",
                "B: 2",
                "Set-Cookie: y=2",
                "Content-Length: 5"
            ]
        );
        assert_eq!(e.get("set-cookie"), Some("x=1"), "the first value");
        e.set("set-cookie", "z=3").unwrap();
        assert_eq!(
            text(&e),
            ["A: 1", "set-cookie: z=3", "B: 2", "Content-Length: 5"],
            "in place, once"
        );
        e.set("C", "new").unwrap();
        e.append("a", "again").unwrap();
        e.remove("B");
        assert_eq!(
            text(&e),
            ["A: 1", "set-cookie: z=3", "Content-Length: 5", "C: new", "a: again"]
        );
        assert_eq!((e.get("b"), e.get("c")), (None, Some("new")));
        e.remove("c");
        e.set("A", "only").unwrap();
        assert_eq!(
            text(&e),
            ["A: only", "set-cookie: z=3", "Content-Length: 5"],
            "set drops appended values too"
        );
        assert!(e.set("bad name", "v").is_err() && e.append("X", "a\r\nB: smuggled").is_err());
        assert_eq!(e.framing(), (false, Some(5)), "framing as the server sent it");
        e.set("Content-Length", "7").unwrap();
        assert_eq!(e.framing(), (false, Some(7)));
        e.append("Transfer-Encoding", "chunked").unwrap();
        assert!(e.framing().0);
    }

    #[test]
    fn request_edits_are_applied_as_the_head_is_written() {
        let r = req(&[
            ("Host", "h"),
            ("Connection", "keep-alive"),
            ("X-A", "1"),
            ("x-a", "2"),
            ("X-B", "b"),
            ("X-Forwarded-For", "10.0.0.9"),
        ]);
        let mut e = RequestEdits::forwarded(&r, &[("x-real-ip", Some("127.0.0.1"))]);
        assert_eq!(e.get("X-Real-IP"), Some("127.0.0.1"));
        e.set("X-Real-IP", "10.1.1.1").unwrap();
        assert_eq!(
            e.parts().0[0],
            ("x-real-ip", Some("10.1.1.1")),
            "a forwarding field edited in its place, under its own name"
        );
        e.set("x-new", "n").unwrap();
        e.set("X-Forwarded-For", "9.9.9.9").unwrap();
        e.append("x-a", "3").unwrap();
        assert!(!e.edits_client_fields(), "new, rewritten anyway, or appended");
        let mut e = RequestEdits::new(&r);
        assert_eq!(
            (e.get("x-a"), e.get("connection")),
            (Some("1"), None),
            "no Connection upstream"
        );
        e.set("x-forwarded-for", "127.0.0.1").unwrap();
        e.set("X-A", "new").unwrap();
        assert!(e.edits_client_fields());
        e.remove("x-b");
        e.append("X-C", "c1").unwrap();
        e.set("X-D", "d").unwrap();
        e.append("X-C", "c2").unwrap();
        assert_eq!(
            (e.get("x-a"), e.get("X-B"), e.get("x-c")),
            (Some("new"), None, Some("c1"))
        );
        assert!(e.set("X-E", "a\nb").is_err() && e.append("bad name", "v").is_err());
        assert!(e.host_ok(false) && e.host_ok(true));
        let head = {
            let (named, added) = e.parts();
            request_head(&r, &named, &added, false, None).unwrap()
        };
        assert_eq!(
            String::from_utf8_lossy(&head),
            "GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: new\r\nx-forwarded-for: 127.0.0.1\r\nX-D: d\r\nX-C: c1\r\nX-C: c2\r\n\r\n"
        );
        e.append("Host", "second").unwrap();
        assert!(!e.host_ok(false) && !e.host_ok(true), "two Hosts");
        e.set("host", "user@evil").unwrap();
        assert!(!e.host_ok(false) && !e.host_ok(true), "userinfo");
        e.set("host", "fine").unwrap();
        assert!(e.host_ok(false));
    }
}
