//! The framing of a chunked request body, checked as the bytes go to
//! Pingora's loop (RFC 9112 §7.1), to find where the body ends.
//!
//! Pingora's chunk parser (`httparse::parse_chunk_size`) takes a bare LF
//! inside a chunk extension as part of the extension, and an empty size
//! line as the last chunk. A front proxy that reads such a body by the RFC
//! sees another body than Pingora does, and bytes it forwards as part of
//! one request Pingora serves as a request of their own (request
//! smuggling). Here a size line must be hex digits, optional extensions
//! without control bytes, and CRLF; data is followed by CRLF; trailer lines
//! end with CRLF. Anything else ends the connection.

/// Where the scan is in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    /// In a size line's digits (`digits` so far, `size` their value).
    Size { digits: u8, size: u64 },
    /// In a size line's extensions.
    Ext { size: u64 },
    /// The size line's CR came; its LF is due.
    SizeLf { size: u64 },
    /// Data bytes still to come.
    Data(u64),
    /// The data's CR is due.
    DataCr,
    /// The data's LF is due.
    DataLf,
    /// At the start of a trailer line, or of the blank line that ends the body.
    TrailerStart,
    /// In a trailer line.
    Trailer,
    /// A trailer line's CR came; its LF is due.
    TrailerLf,
    /// The final blank line's CR came; its LF ends the body.
    EndLf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkScan {
    at: At,
}

/// What a scan of more body bytes found.
#[derive(Debug, PartialEq)]
pub enum Scanned {
    /// All of them belong to the body, which goes on.
    More,
    /// The body ends after this many of them.
    End(usize),
    /// The framing is broken.
    Bad,
}

impl Default for ChunkScan {
    fn default() -> Self {
        ChunkScan {
            at: At::Size { digits: 0, size: 0 },
        }
    }
}

impl ChunkScan {
    /// Scan the next `bytes` of the body.
    pub fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.at = match self.at {
                At::Size { digits, size } => match (b as char).to_digit(16) {
                    // 16 hex digits hold any u64; more is an attack, not a size.
                    Some(d) if digits < 16 => At::Size {
                        digits: digits + 1,
                        size: size << 4 | u64::from(d),
                    },
                    None if digits > 0 && matches!(b, b';' | b' ' | b'\t') => At::Ext { size },
                    None if digits > 0 && b == b'\r' => At::SizeLf { size },
                    _ => return Scanned::Bad,
                },
                At::Ext { size } => match b {
                    b'\r' => At::SizeLf { size },
                    b'\t' => At::Ext { size },
                    0..=0x1f | 0x7f => return Scanned::Bad,
                    _ => At::Ext { size },
                },
                At::SizeLf { size } if b == b'\n' => match size {
                    0 => At::TrailerStart,
                    n => At::Data(n),
                },
                At::Data(left) => {
                    // Data bytes are not looked at: skip them all at once.
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    self.at = match left - take as u64 {
                        0 => At::DataCr,
                        n => At::Data(n),
                    };
                    continue;
                }
                At::DataCr if b == b'\r' => At::DataLf,
                At::DataLf if b == b'\n' => At::Size { digits: 0, size: 0 },
                At::TrailerStart if b == b'\r' => At::EndLf,
                At::TrailerStart | At::Trailer => match b {
                    b'\r' => At::TrailerLf,
                    b'\t' => At::Trailer,
                    0..=0x1f | 0x7f => return Scanned::Bad,
                    _ => At::Trailer,
                },
                At::TrailerLf if b == b'\n' => At::TrailerStart,
                At::EndLf if b == b'\n' => return Scanned::End(i + 1),
                _ => return Scanned::Bad,
            };
            i += 1;
        }
        Scanned::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Scanned {
        ChunkScan::default().scan(body)
    }

    #[test]
    fn bodies_end_where_their_framing_says() {
        assert_eq!(whole(b"5\r\nhello\r\n0\r\n\r\nGET"), Scanned::End(15));
        assert_eq!(whole(b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Scanned::End(27));
        assert_eq!(whole(b"A \t; x\r\n0123456789\r\n000\r\n\r\n"), Scanned::End(27));
        assert_eq!(whole(b"5\r\nhel"), Scanned::More);
        // Byte by byte, the same.
        let body = b"3\r\n\r\n\r\r\n0\r\n\r\nrest";
        let mut scan = ChunkScan::default();
        let ends: Vec<_> = body.iter().map(|b| scan.scan(&[*b])).collect();
        assert_eq!(ends.iter().position(|s| *s == Scanned::End(1)), Some(12));
        assert!(
            ends[..12].iter().all(|s| *s == Scanned::More),
            "data bytes are data, CR and LF too"
        );
    }

    #[test]
    fn framing_the_rfc_does_not_allow_is_refused() {
        for bad in [
            &b"2;\nxx\r\n4c\r\n0\r\n\r\n"[..], // a bare LF in an extension
            b"\r\n\r\n",                       // an empty size line
            b"5\nhello\r\n0\r\n\r\n",          // a bare LF after the size
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b"5\r\nhelloXX0\r\n\r\n", // no CRLF after the data
            b"11111111111111111\r\n", // 17 digits
            b"5;a\x00\r\n",
            b"0\r\nX-T: 1\n\r\n", // a bare LF in a trailer
            b"0\r\n\r\r\n",
        ] {
            assert_eq!(whole(bad), Scanned::Bad, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
