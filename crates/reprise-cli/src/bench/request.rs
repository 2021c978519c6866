//! `reprise bench --early-data N`: the HTTP request each connection sends, padded to N bytes,
//! as TLS 1.3 early data when the ticket allows it, and the time to its first response byte.

use anyhow::bail;

use crate::cli::TlsVersion;

/// The most early data a request may be: what a server takes at most (16 KiB).
pub(super) const MAX_EARLY_DATA: usize = 16 * 1024;

/// The request of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// The bytes: an HTTP/1.1 GET that closes the connection, padded with a header.
    pub(super) bytes: Vec<u8>,
    /// Whether it goes as early data when the ticket allows.
    pub(super) early: bool,
}

impl Request {
    /// A GET of `n` bytes for `host` (0: the shortest GET, after the handshake).
    pub(super) fn new(host: &str, n: usize, tls: TlsVersion) -> anyhow::Result<Self> {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        let min = head.len() + 2;
        if n == 0 {
            return Ok(Self {
                bytes: format!("{head}\r\n").into_bytes(),
                early: false,
            });
        }
        if tls != TlsVersion::Tls13 {
            bail!("--early-data needs --tls 1.3");
        }
        if n > MAX_EARLY_DATA {
            bail!("--early-data is {n} bytes; the limit is {MAX_EARLY_DATA}");
        }
        // A padding header: "X-Pad: " and its value, then CRLF.
        let pad_min = 7 + 2;
        if n != min && n < min + pad_min {
            bail!(
                "--early-data {n} is too short for the request: give 0, {min}, or at least {}",
                min + pad_min
            );
        }
        let mut bytes = head.into_bytes();
        if n > min {
            bytes.extend_from_slice(b"X-Pad: ");
            bytes.resize(n - 4, b'a');
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        Ok(Self { bytes, early: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_size_asked_for() {
        let zero = Request::new("localhost", 0, TlsVersion::Tls13).unwrap();
        assert!(!zero.early && zero.bytes.ends_with(b"\r\n\r\n"));
        let min = zero.bytes.len();
        for n in [min, min + 9, 100, 1000, 16384] {
            let r = Request::new("localhost", n, TlsVersion::Tls13).unwrap();
            assert_eq!(r.bytes.len(), n);
            assert!(r.early && r.bytes.ends_with(b"\r\n\r\n"));
            assert!(crate::http::parse_head(&r.bytes[..n - 4]).is_ok());
        }
        for bad in [1, min - 1, min + 1, 16385] {
            assert!(
                Request::new("localhost", bad, TlsVersion::Tls13).is_err(),
                "{bad}"
            );
        }
        assert!(Request::new("localhost", 100, TlsVersion::Tls12).is_err());
    }
}
