//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) a TCP
//! listener may send a server before the client's bytes, so that the
//! server learns the client's address and the address it connected to.

use std::net::{IpAddr, SocketAddr};

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
}
