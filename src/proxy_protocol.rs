//! The PROXY protocol (HAProxy's spec, versions 1 and 2): a header in
//! front of a connection's bytes that names the client's address and the
//! address it connected to.
//!
//! - Sent ([`header`]): a TCP listener's `proxy_protocol: v1|v2` puts one
//!   in front of the client's bytes to the server.
//! - Received ([`receive`]): a listener with `accept_proxy_protocol: true`
//!   (HTTP or TCP) sits behind a load balancer that sends one (HAProxy's
//!   `send-proxy`, an AWS NLB, nginx `proxy_protocol on`). Every connection
//!   must start with one, of either version; the client address it names
//!   is the connection's client from then on: in logs, forwarding fields,
//!   `ip_hash`, allow/deny rules and the header a TCP listener sends on.
//!   The header is parsed by the `ppp` crate.

use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One text line: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// A binary header: signature, command, family, addresses.
    V2,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        match s {
            "v1" => Ok(Version::V1),
            "v2" => Ok(Version::V2),
            _ => Err(format!("unknown PROXY protocol version {s:?} (v1 or v2)")),
        }
    }
}

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: an IPv4 one next to an IPv6 one is
/// written as IPv4-mapped IPv6.
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V6(_)) => (IpAddr::V6(x.to_ipv6_mapped()), b),
        (IpAddr::V6(_), IpAddr::V4(y)) => (a, IpAddr::V6(y.to_ipv6_mapped())),
        _ => (a, b),
    }
}

/// The header for a connection from `client` to `local` (the listener's
/// side of the client's connection).
pub fn header(v: Version, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client.ip(), local.ip());
    match v {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let (sp, dp) = (client.port(), local.port());
            format!("PROXY {family} {src} {dst} {sp} {dp}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(0x21); // version 2, PROXY (a relayed connection)
            let (family, addrs): (u8, Vec<u8>) = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
                (IpAddr::V6(s), IpAddr::V6(d)) => (0x21, [s.octets(), d.octets()].concat()),
                _ => unreachable!("same_family made the two addresses one family"),
            };
            h.push(family); // TCP over IPv4 (0x11) or IPv6 (0x21)
            h.extend_from_slice(&(addrs.len() as u16 + 4).to_be_bytes());
            h.extend_from_slice(&addrs);
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&local.port().to_be_bytes());
            h
        }
    }
}

/// The longest header taken (version 2 may carry up to 64 KiB of
/// extensions; load balancers send a few hundred bytes at most).
pub const MAX_RECEIVED: usize = 4096;
/// The longest version 1 line, its CRLF included (the spec's figure).
const V1_MAX: usize = 107;

/// What a received header says of its connection. Both are `None` for a
/// header that names no addresses (version 2's `LOCAL`, a load balancer's
/// own health check; version 1's `UNKNOWN`; Unix sockets): the
/// connection's own addresses stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub client: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// The header at the start of `buf` and its length; `Ok(None)` while
/// `buf` may still grow into one.
pub fn parse(buf: &[u8]) -> Result<Option<(Received, usize)>, String> {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    // Version 1 is one line, read whole before it is parsed (`ppp` takes
    // some of its cut-off lines for broken ones).
    let signature = &V2_SIGNATURE[..buf.len().min(V2_SIGNATURE.len())];
    if !buf.starts_with(signature) {
        if !b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
            return Err("no PROXY header".into());
        }
        if !buf.contains(&b'\n') && buf.len() < V1_MAX {
            return Ok(None);
        }
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return match buf.len() < MAX_RECEIVED {
            true => Ok(None),
            false => Err(format!("no PROXY header in the first {MAX_RECEIVED} bytes")),
        };
    }
    let pair = |c: SocketAddr, d: SocketAddr| Received {
        client: Some(c),
        destination: Some(d),
    };
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let r = match h.addresses {
                v1::Addresses::Tcp4(a) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Tcp6(a) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Unknown => Received::default(),
            };
            Ok(Some((r, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let r = match (h.command, h.addresses) {
                (v2::Command::Local, _) => Received::default(),
                (_, v2::Addresses::IPv4(a)) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                (_, v2::Addresses::IPv6(a)) => pair(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                _ => Received::default(),
            };
            Ok(Some((r, h.len())))
        }
        HeaderResult::V1(Err(e)) => Err(format!("not a PROXY header ({e})")),
        HeaderResult::V2(Err(e)) => Err(format!("a broken PROXY version 2 header ({e})")),
    }
}

/// Read the header a connection starts with into `buf` and say what it
/// says; the bytes read past it (the client's first) are left in `buf`.
/// The caller bounds the wait. (A listener's `Conn` has its own loop, which
/// keeps those bytes in the connection: `Conn::proxy_header`.)
pub async fn receive<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Received> {
    loop {
        if let Some((received, len)) = parse(buf).map_err(invalid)? {
            buf.drain(..len);
            return Ok(received);
        }
        buf.reserve(256);
        if r.read_buf(buf).await? == 0 {
            return Err(cut_short(buf));
        }
    }
}

/// A header [`parse`] refused, as an I/O error.
pub fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The client closed with `buf` read, before its header was whole.
pub fn cut_short(buf: &[u8]) -> io::Error {
    let what = if buf.is_empty() { "before" } else { "within" };
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("closed {what} its PROXY header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_one_text_line() {
        let h = header(
            Version::V1,
            "10.1.2.3:5555".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 10.1.2.3 192.0.2.1 5555 443\r\n");
        let h = header(
            Version::V1,
            "[2001:db8::1]:5555".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5555 80\r\n");
        let h = header(Version::V1, "10.0.0.1:1".parse().unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 80\r\n");
    }

    #[test]
    fn version_2_is_the_binary_layout() {
        let h = header(
            Version::V2,
            "10.1.2.3:5555".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        want.extend_from_slice(&[10, 1, 2, 3, 192, 0, 2, 1, 0x15, 0xb3, 0x01, 0xbb]);
        assert_eq!(h, want);
        let h = header(
            Version::V2,
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], b"\x21\x21\x00\x24");
    }

    #[test]
    fn received_headers_give_the_client_and_what_follows() {
        let (client, local): (SocketAddr, SocketAddr) =
            ("10.1.2.3:5555".parse().unwrap(), "192.0.2.1:443".parse().unwrap());
        for v in [Version::V1, Version::V2] {
            let mut bytes = header(v, client, local);
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let want = Received {
                client: Some(client),
                destination: Some(local),
            };
            assert_eq!(parse(&bytes), Ok(Some((want, len))), "{v:?}");
            // Every shorter prefix asks for more.
            for cut in 0..len {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{v:?} cut at {cut}");
            }
        }
        let v6 = header(
            Version::V2,
            "[2001:db8::7]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        assert_eq!(
            parse(&v6).unwrap().unwrap().0.client,
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        // No addresses: the connection's own stand.
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Received::default(), 15))));
        let local_cmd = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(parse(local_cmd), Ok(Some((Received::default(), 16))));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 10.0.0.1 nonsense 1 2\r\n",
            b"PROXY TCP4 300.0.0.1 10.0.0.2 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",         // version 3
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A header that never ends is not waited for past the limit.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; MAX_RECEIVED]].concat();
        assert!(parse(&long).is_err());
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
        v2.resize(MAX_RECEIVED, 0);
        assert!(parse(&v2).is_err(), "64 KiB announced, {MAX_RECEIVED} taken");
    }

    /// Damaged headers (each byte of valid ones changed, and random bytes
    /// after the v2 signature) are refused or parsed, never a panic, and a
    /// length parsed never runs past the bytes given.
    #[test]
    fn damaged_headers_never_panic() {
        let (c4, l4): (SocketAddr, SocketAddr) = ("10.1.2.3:5555".parse().unwrap(), "192.0.2.1:443".parse().unwrap());
        let (c6, l6): (SocketAddr, SocketAddr) = ("[2001:db8::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let check = |b: &[u8]| {
            if let Ok(Some((_, len))) = parse(b) {
                assert!(len <= b.len(), "{b:?}");
            }
        };
        for v in [Version::V1, Version::V2] {
            for (c, l) in [(c4, l4), (c6, l6)] {
                let good = [header(v, c, l), b"rest".to_vec()].concat();
                for at in 0..good.len() {
                    for value in [0u8, 0xff, b' ', b'\r', b'\n', b':', b'9', (next() & 0xff) as u8] {
                        let mut b = good.clone();
                        b[at] = value;
                        check(&b);
                        check(&b[..at]);
                    }
                }
            }
        }
        for _ in 0..2000 {
            let mut b = V2_SIGNATURE.to_vec();
            let n = (next() % 64) as usize;
            b.extend((0..n).map(|_| (next() & 0xff) as u8));
            check(&b);
        }
    }

    #[tokio::test]
    async fn receive_reads_a_header_split_over_reads() {
        let bytes = [
            header(
                Version::V1,
                "10.9.8.7:1000".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap(),
            ),
            b"hello".to_vec(),
        ]
        .concat();
        let mut r = tokio_test_reader(&bytes);
        let mut all = Vec::new();
        let got = receive(&mut r, &mut all).await.unwrap();
        assert_eq!(got.client, Some("10.9.8.7:1000".parse().unwrap()));
        // The bytes past the header are left in the buffer, whatever the reads' sizes.
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello");
        let mut cut = tokio_test_reader(&bytes[..10]);
        assert_eq!(
            receive(&mut cut, &mut Vec::new()).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    /// A reader handing out `bytes` three at a time.
    fn tokio_test_reader(bytes: &[u8]) -> impl AsyncRead + Unpin {
        struct Threes(Vec<u8>, usize);
        impl AsyncRead for Threes {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                let at = self.1;
                let n = 3.min(self.0.len() - at).min(buf.remaining());
                buf.put_slice(&self.0[at..at + n]);
                self.1 += n;
                std::task::Poll::Ready(Ok(()))
            }
        }
        Threes(bytes.to_vec(), 0)
    }
}
