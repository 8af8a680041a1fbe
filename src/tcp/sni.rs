//! The server name a TLS client asks for (SNI), read from the ClientHello
//! at the start of its connection without decrypting anything (what
//! nginx's `ssl_preread` gives as `$ssl_preread_server_name`), so that a
//! TCP listener can pick a pool by it and pass the TLS connection through.

/// What the bytes a client sent so far say.
#[derive(Debug, PartialEq)]
pub enum Hello {
    /// A ClientHello not yet whole: read more.
    Incomplete,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A whole ClientHello, with its server name if it has one.
    Name(Option<String>),
}

/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// Bytes read for a ClientHello at most (nginx's `preread_buffer_size` is 16k).
pub const MAX_HELLO: usize = 16 * 1024;

/// The handshake bytes of the records at the start of `buf` (a ClientHello
/// may span several), or what keeps them from being read.
fn handshake_bytes(buf: &[u8]) -> Result<Vec<u8>, Hello> {
    let mut out = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < RECORD_HEADER {
            return if rest.is_empty() && !out.is_empty() {
                Ok(out)
            } else {
                Err(Hello::Incomplete)
            };
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Err(Hello::NotTls);
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < RECORD_HEADER + len {
            // A partial record adds nothing yet; what came before may be enough.
            return if out.is_empty() {
                Err(Hello::Incomplete)
            } else {
                Ok(out)
            };
        }
        out.extend_from_slice(&rest[RECORD_HEADER..RECORD_HEADER + len]);
        rest = &rest[RECORD_HEADER + len..];
        if rest.is_empty() {
            return Ok(out);
        }
    }
}

/// A cursor over a ClientHello's fields; `None` when a field runs past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        Some(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    /// A field with a length prefix of `width` bytes (1 or 2).
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        Some(Reader(self.take(n)?))
    }
}

/// Read the server name from the start of a connection.
pub fn server_name(buf: &[u8]) -> Hello {
    let hs = match handshake_bytes(buf) {
        Ok(hs) => hs,
        Err(h) => return h,
    };
    match hs.first() {
        None => return Hello::Incomplete, // empty records so far
        Some(&kind) if kind != CLIENT_HELLO => return Hello::NotTls,
        Some(_) if hs.len() < 4 => return Hello::Incomplete,
        Some(_) => {}
    }
    let len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
    if hs.len() < 4 + len {
        return match buf.len() < MAX_HELLO {
            true => Hello::Incomplete,
            false => Hello::NotTls,
        };
    }
    match parse_hello(&hs[4..4 + len]) {
        Some(name) => Hello::Name(name),
        None => Hello::NotTls,
    }
}

/// The server name of a ClientHello body; `None` if it is malformed.
fn parse_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    r.vec(1)?; // session id
    r.vec(2)?; // cipher suites
    r.vec(1)?; // compression methods
    if r.0.is_empty() {
        return Some(None); // no extensions
    }
    let mut exts = r.vec(2)?;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec(2)?;
        if kind as u16 != SERVER_NAME {
            continue;
        }
        let mut names = data.vec(2)?;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec(2)?;
            if name_type as u8 == HOST_NAME {
                let name = std::str::from_utf8(name.0).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with `name` (and a few other extensions), as a client sends it.
    fn hello(name: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // supported_versions: TLS 1.3
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(n) = name {
            let entry_len = n.len() + 3;
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
            exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
            exts.extend_from_slice(n.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[32]);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_name_is_read_from_a_whole_hello_and_waited_for_otherwise() {
        let h = hello(Some("Db.Example.com."));
        assert_eq!(server_name(&h), Hello::Name(Some("db.example.com".into())));
        for cut in [1, 4, 5, 40, h.len() - 1] {
            assert_eq!(server_name(&h[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(server_name(&hello(None)), Hello::Name(None));
    }

    #[test]
    fn a_hello_split_over_two_records_is_read() {
        let h = hello(Some("a.test"));
        let (hs, split) = (&h[RECORD_HEADER..], 30);
        let mut two = vec![HANDSHAKE, 3, 1, 0, split as u8];
        two.extend_from_slice(&hs[..split]);
        two.extend_from_slice(&[HANDSHAKE, 3, 1]);
        two.extend_from_slice(&((hs.len() - split) as u16).to_be_bytes());
        two.extend_from_slice(&hs[split..]);
        assert_eq!(server_name(&two[..40]), Hello::Incomplete);
        assert_eq!(server_name(&two), Hello::Name(Some("a.test".into())));
    }

    #[test]
    fn empty_records_are_waited_past_and_never_read_out_of_bounds() {
        let empty = [HANDSHAKE, 3, 1, 0, 0];
        assert_eq!(server_name(&empty), Hello::Incomplete);
        assert_eq!(server_name(&[empty, empty].concat()), Hello::Incomplete);
        let mut h = empty.to_vec();
        h.extend_from_slice(&hello(Some("a.test")));
        assert_eq!(server_name(&h), Hello::Name(Some("a.test".into())));
        // Every prefix of every hello, and a few bytes changed in each place: no panic.
        let whole = hello(Some("a.test"));
        for cut in 0..=whole.len() {
            let _ = server_name(&whole[..cut]);
        }
        for at in 0..whole.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = whole.clone();
                b[at] = v;
                let _ = server_name(&b);
            }
        }
    }

    #[test]
    fn anything_else_is_not_tls() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
        assert_eq!(server_name(b"SSH-2.0-OpenSSH_9.2\r\n"), Hello::NotTls);
        let mut h = hello(Some("a.test"));
        h[RECORD_HEADER] = 2; // a ServerHello
        assert_eq!(server_name(&h), Hello::NotTls);
        // A name's length running past its extension.
        let mut h = hello(Some("a.test"));
        let at = h.len() - "a.test".len() - 1;
        h[at] = 200;
        assert_eq!(server_name(&h), Hello::NotTls);
    }
}
