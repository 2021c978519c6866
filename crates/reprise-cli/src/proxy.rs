//! The PROXY protocol (HAProxy's, versions 1 and 2): reading the header a load balancer puts
//! before a connection's first byte, exactly, so that the ClientHello stays in the socket for
//! the TLS acceptor; writing one before the decrypted bytes sent to the upstream; which sources
//! are trusted to send one; and the counters.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::cli::ProxyVersion;
use crate::config::Settings;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The longest version 1 header, its CRLF included.
pub const V1_MAX: usize = 107;

/// The shortest version 1 header (`PROXY UNKNOWN\r\n`): the first read takes this many bytes,
/// which no header is shorter than.
const V1_MIN: usize = 15;

/// The fixed part of a version 2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// The most bytes a version 2 header may state after its fixed part. The spec allows 65535;
/// addresses and the TLVs load balancers send fit in far less, and a header is read before
/// the client has proven anything.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// TLV types written in version 2 headers.
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `PP2_TYPE_SSL` client flags.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The version of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// A header read from a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its version.
    pub version: Version,
    /// The client's address and the address it connected to; None for a header that carries
    /// none (`UNKNOWN`, the `LOCAL` command, an unspecified or AF_UNIX family): the connection
    /// is then the proxy's own, and keeps its TCP peer address.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes are not a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header, but malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The connection ended or failed before the header was whole.
    #[error("connection closed before the PROXY protocol header was complete")]
    Truncated,
    /// The connection ended before its first byte (a load balancer's TCP health check).
    #[error("connection closed before its first byte")]
    Closed,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long.
    Complete(Header, usize),
    /// Not whole yet: at least this many more bytes belong to the header, so that reading that
    /// many never takes a byte past it.
    Incomplete(usize),
}

/// Parses the start of a connection, `bytes`: a whole header, how many more bytes the header
/// needs at least, or an error. Never reads past the header's end.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    if bytes.len() < V1_MIN {
        let n = bytes.len();
        if !V2_SIGNATURE.starts_with(&bytes[..n.min(12)])
            && !b"PROXY ".starts_with(&bytes[..n.min(6)])
        {
            return Err(ProxyError::Missing);
        }
        return Ok(Parsed::Incomplete(V1_MIN - n));
    }
    if bytes.starts_with(&V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.starts_with(b"PROXY ") {
        parse_v1(bytes)
    } else {
        Err(ProxyError::Missing)
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if bytes.len() >= V1_MAX {
            return Err(ProxyError::Malformed("v1 header longer than 107 bytes"));
        }
        if bytes
            .iter()
            .any(|&b| !(0x20..0x7f).contains(&b) && b != b'\r')
        {
            return Err(ProxyError::Malformed("v1 header is not printable ASCII"));
        }
        if bytes.ends_with(b"\r") {
            return Ok(Parsed::Incomplete(1));
        }
        // The header still needs its CRLF and, for TCP4 and TCP6, the spaces not seen yet.
        let spaces = bytes.iter().filter(|&&b| b == b' ').count();
        let more = if bytes[6..].starts_with(b"TCP") {
            5usize.saturating_sub(spaces)
        } else {
            0
        };
        return Ok(Parsed::Incomplete(2 + more).min_to(V1_MAX - bytes.len()));
    };
    let line = std::str::from_utf8(&window[6..cr])
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    if line.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(ProxyError::Malformed("v1 header is not printable ASCII"));
    }
    let len = cr + 2;
    let mut fields = line.split(' ');
    let addresses = match fields.next() {
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let mut next = || {
                fields
                    .next()
                    .ok_or(ProxyError::Malformed("v1 header too short"))
            };
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(ProxyError::Malformed("v1 header has extra fields"));
            }
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                if proto == "TCP4" {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                }
                .map_err(|_| ProxyError::Malformed("v1 address does not match its family"))
            };
            Some((
                SocketAddr::new(ip(src)?, port(sport)?),
                SocketAddr::new(ip(dst)?, port(dport)?),
            ))
        }
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Parsed::Complete(
        Header {
            version: Version::V1,
            addresses,
        },
        len,
    ))
}

impl Parsed {
    /// Caps an `Incomplete` count at `cap` (at least 1).
    fn min_to(self, cap: usize) -> Parsed {
        match self {
            Parsed::Incomplete(n) => Parsed::Incomplete(n.min(cap).max(1)),
            p => p,
        }
    }
}

/// A decimal port, digits only, no leading zero.
fn port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("v1 port is not a decimal number from 0 to 65535");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    if bytes.len() < V2_FIXED {
        return Ok(Parsed::Incomplete(V2_FIXED - bytes.len()));
    }
    let (ver_cmd, family, stated) = (
        bytes[12],
        bytes[13],
        u16::from_be_bytes([bytes[14], bytes[15]]),
    );
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    let stated = usize::from(stated);
    if stated > V2_MAX_PAYLOAD {
        return Err(ProxyError::Malformed("v2 header longer than 2048 bytes"));
    }
    let len = V2_FIXED + stated;
    if bytes.len() < len {
        return Ok(Parsed::Incomplete(len - bytes.len()));
    }
    let payload = &bytes[V2_FIXED..len];
    if local {
        // The proxy's own connection (a health check): its address block, whatever the family,
        // is discarded, as the spec asks.
        return Ok(Parsed::Complete(
            Header {
                version: Version::V2,
                addresses: None,
            },
            len,
        ));
    }
    let (address_len, transport) = (
        match family >> 4 {
            0 => 0,
            1 => 12,
            2 => 36,
            3 => 216,
            _ => return Err(ProxyError::Malformed("v2 address family unknown")),
        },
        family & 0x0F,
    );
    if transport > 2 {
        return Err(ProxyError::Malformed("v2 transport unknown"));
    }
    if payload.len() < address_len {
        return Err(ProxyError::Malformed(
            "v2 length shorter than its addresses",
        ));
    }
    check_tlvs(&payload[address_len..])?;
    let addresses = match family {
        // TCP over IPv4, TCP over IPv6.
        0x11 => {
            let a = |i: usize| {
                Ipv4Addr::new(payload[i], payload[i + 1], payload[i + 2], payload[i + 3])
            };
            let p = |i: usize| u16::from_be_bytes([payload[i], payload[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V4(a(0)), p(8)),
                SocketAddr::new(IpAddr::V4(a(4)), p(10)),
            ))
        }
        0x21 => {
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&payload[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let p = |i: usize| u16::from_be_bytes([payload[i], payload[i + 1]]);
            Some((
                SocketAddr::new(IpAddr::V6(a(0)), p(32)),
                SocketAddr::new(IpAddr::V6(a(16)), p(34)),
            ))
        }
        // UNSPEC, or AF_UNIX: no address to use.
        0x00 | 0x30 | 0x31 => None,
        _ => {
            return Err(ProxyError::Malformed(
                "v2 PROXY command over a transport other than a stream",
            ))
        }
    };
    Ok(Parsed::Complete(
        Header {
            version: Version::V2,
            addresses,
        },
        len,
    ))
}

/// Checks that TLVs tile `rest` exactly; their contents are not used.
fn check_tlvs(mut rest: &[u8]) -> Result<(), ProxyError> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(ProxyError::Malformed("v2 TLV truncated"));
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            return Err(ProxyError::Malformed("v2 TLV longer than the header"));
        }
        rest = &rest[3 + len..];
    }
    Ok(())
}

/// Reads a header from `r`, taking no byte past its end: what follows (the ClientHello) is
/// left for the TLS acceptor. The caller bounds it in time.
///
/// A version 2 header takes three reads; a version 1 header a few more (each read takes only
/// as many bytes as the header must still hold).
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ProxyError> {
    let mut bytes = Vec::with_capacity(V1_MAX);
    let mut need = V1_MIN;
    loop {
        let mut at = bytes.len();
        bytes.resize(at + need, 0);
        while at < bytes.len() {
            match r.read(&mut bytes[at..]).await {
                Ok(0) | Err(_) if at == 0 => return Err(ProxyError::Closed),
                Ok(0) | Err(_) => return Err(ProxyError::Truncated),
                Ok(n) => at += n,
            }
        }
        match parse(&bytes)? {
            Parsed::Complete(header, _) => return Ok(header),
            Parsed::Incomplete(n) => need = n,
        }
    }
}

/// The TLS facts a version 2 header carries to the upstream.
#[derive(Debug, Default, Clone)]
pub struct TlsFacts<'a> {
    /// The SNI the client sent.
    pub sni: Option<&'a str>,
    /// The ALPN protocol agreed.
    pub alpn: Option<&'a [u8]>,
    /// The TLS version, as `TLSv1.3`.
    pub version: &'a str,
    /// The cipher suite's name.
    pub cipher: Option<&'a str>,
    /// Whether the client presented a certificate (that verified: rustls refuses others).
    pub client_cert: bool,
}

/// Both addresses in one family: IPv4 if both are (IPv4-mapped IPv6 counts as IPv4), else both
/// as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(src), v6(dst))
        }
    }
}

/// A version 1 header for a connection from `src` to `dst`.
pub fn write_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Appends one TLV; a value too long for one is left out.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    if let Ok(len) = u16::try_from(value.len()) {
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
    }
}

/// A version 2 header (the PROXY command, TCP) for a connection from `src` to `dst`, with the
/// TLS facts as TLVs: ALPN, AUTHORITY (the SNI), SSL (client flags, verify, version, cipher).
pub fn write_v2(src: SocketAddr, dst: SocketAddr, tls: &TlsFacts<'_>) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut body = Vec::with_capacity(128);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(alpn) = tls.alpn {
        tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = tls.sni {
        tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    let mut ssl = Vec::with_capacity(32);
    let mut flags = PP2_CLIENT_SSL;
    if tls.client_cert {
        flags |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
    }
    ssl.push(flags);
    // verify: 0 when the client presented a certificate that verified, non-zero otherwise.
    ssl.extend_from_slice(&u32::from(!tls.client_cert).to_be_bytes());
    tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
    if let Some(cipher) = tls.cipher {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, cipher.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl);
    // Bounded by what rustls lets an SNI and an ALPN protocol be (255 bytes each): far below
    // the 65535 a header may state.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(V2_FIXED + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body[..usize::from(len)]);
    out
}

/// An IPv4 or IPv6 network, `ADDR/PREFIX` (a bare address is a network of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a CIDR (ADDR/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a header was refused, as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Malformed, or cut short.
    Malformed,
    /// A trusted source sent no header.
    Missing,
    /// An untrusted source sent one.
    Untrusted,
}

/// The PROXY protocol counters.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    accepted: [AtomicU64; 2],
    refused: [AtomicU64; 3],
}

impl ProxyMetrics {
    /// Counts a header read.
    pub fn accepted(&self, version: Version) {
        self.accepted[version as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for its header.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the Prometheus families to `out`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP reprise_proxy_headers_total PROXY protocol headers read from trusted sources, by version.\n# TYPE reprise_proxy_headers_total counter"
        );
        for v in [Version::V1, Version::V2] {
            let n = self.accepted[v as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "reprise_proxy_headers_total{{version=\"{}\"}} {n}",
                v.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP reprise_proxy_headers_refused_total Connections closed for their PROXY protocol header: malformed, missing (a trusted source sent none), untrusted (an untrusted source sent one).\n# TYPE reprise_proxy_headers_refused_total counter"
        );
        for (why, name) in [
            (Refused::Malformed, "malformed"),
            (Refused::Missing, "missing"),
            (Refused::Untrusted, "untrusted"),
        ] {
            let n = self.refused[why as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "reprise_proxy_headers_refused_total{{reason=\"{name}\"}} {n}"
            );
        }
    }
}

/// Whether `ip` may send PROXY protocol headers: it is in a `--proxy-protocol-from` network.
pub fn trusted(settings: &Settings, ip: IpAddr) -> bool {
    settings.proxy_protocol_from.iter().any(|c| c.contains(ip))
}

/// The header `--upstream-proxy-protocol` sends before the decrypted bytes of a connection from
/// `client` to `local` (the TCP listener's address, or the one a PROXY header named); empty
/// without it.
pub fn upstream_header(
    settings: &Settings,
    client: SocketAddr,
    local: Option<SocketAddr>,
    conn: &rustls::ServerConnection,
) -> Vec<u8> {
    let Some(version) = settings.upstream_proxy_protocol else {
        return Vec::new();
    };
    let unspecified = SocketAddr::new(
        match client.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let local = local.unwrap_or(unspecified);
    match version {
        ProxyVersion::V1 => write_v1(client, local),
        ProxyVersion::V2 => {
            let cipher = conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str());
            let facts = TlsFacts {
                sni: conn.server_name(),
                alpn: conn.alpn_protocol(),
                version: match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    _ => "unknown",
                },
                cipher,
                client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            };
            write_v2(client, local, &facts)
        }
    }
}

/// Whether the first bytes a connection sent look like a PROXY header (for counting one from an
/// untrusted source): `PROXY ` or the start of the version 2 signature.
pub fn looks_like_header(first: &[u8]) -> bool {
    let n = first.len();
    n >= 5
        && (b"PROXY ".starts_with(&first[..n.min(6)])
            || V2_SIGNATURE.starts_with(&first[..n.min(12)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(bytes: &[u8]) -> Result<(Header, usize), ProxyError> {
        match parse(bytes)? {
            Parsed::Complete(h, n) => Ok((h, n)),
            Parsed::Incomplete(_) => Err(ProxyError::Truncated),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    #[test]
    fn v1_headers_parse() {
        let (h, n) = whole(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nTLS").unwrap_or((
            Header {
                version: Version::V2,
                addresses: None,
            },
            0,
        ));
        assert_eq!(n, 45);
        assert_eq!(h.version, Version::V1);
        assert_eq!(
            h.addresses,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );
        let (h, _) = whole(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n").unwrap_or((
            Header {
                version: Version::V2,
                addresses: None,
            },
            0,
        ));
        assert_eq!(
            h.addresses,
            Some((sa("[2001:db8::1]:1"), sa("[::1]:65535")))
        );
        assert_eq!(
            whole(b"PROXY UNKNOWN\r\n").map(|(h, n)| (h.addresses, n)),
            Ok((None, 15))
        );
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 x\r\n"[..],
            b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 443\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'a'; 100]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00\x01"), Err(ProxyError::Missing));
    }

    #[test]
    fn written_headers_read_back() {
        let tls = TlsFacts {
            sni: Some("example.test"),
            alpn: Some(b"h2"),
            version: "TLSv1.3",
            cipher: Some("TLS13_AES_128_GCM_SHA256"),
            client_cert: false,
        };
        for (src, dst) in [
            ("192.0.2.7:4000", "127.0.0.1:8443"),
            ("[2001:db8::7]:4000", "[::1]:8443"),
            ("[::ffff:192.0.2.7]:4000", "127.0.0.1:8443"),
        ] {
            let (src, dst) = (sa(src), sa(dst));
            let canon = SocketAddr::new(src.ip().to_canonical(), src.port());
            for bytes in [write_v1(src, dst), write_v2(src, dst, &tls)] {
                let (h, n) = whole(&bytes).unwrap_or((
                    Header {
                        version: Version::V1,
                        addresses: None,
                    },
                    0,
                ));
                assert_eq!(n, bytes.len());
                assert_eq!(h.addresses.map(|a| a.0), Some(canon));
            }
        }
        // Mixed families go as IPv6.
        let v = write_v1(sa("192.0.2.7:1"), sa("[::1]:2"));
        assert_eq!(v, b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n");
    }

    #[test]
    fn v2_local_and_unix_carry_no_address() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(whole(&local).map(|(h, _)| h.addresses), Ok(None));
        // LOCAL discards whatever address block it has.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0x00, 0x02, 0xff, 0xff]);
        assert_eq!(whole(&local).map(|(h, n)| (h.addresses, n)), Ok((None, 18)));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(whole(&unix).map(|(h, n)| (h.addresses, n)), Ok((None, 232)));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Err(ProxyError::Malformed(_))));
        let mut bad_tlv = V2_SIGNATURE.to_vec();
        bad_tlv.extend_from_slice(&[0x21, 0x11, 0x00, 15]);
        bad_tlv.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x04, 0x00, 0x09]);
        assert!(matches!(parse(&bad_tlv), Err(ProxyError::Malformed(_))));
    }

    #[tokio::test]
    async fn the_reader_leaves_what_follows() {
        let tls = TlsFacts {
            version: "TLSv1.2",
            ..TlsFacts::default()
        };
        let (src, dst) = (sa("[2001:db8::9]:5"), sa("[2001:db8::1]:443"));
        for header in [
            write_v1(src, dst),
            write_v2(src, dst, &tls),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
            write_v1(sa("1.1.1.1:1"), sa("1.1.1.1:1")),
        ] {
            let stream = [&header[..], b"\x16\x03\x01rest"].concat();
            let mut r = &stream[..];
            let h = read_header(&mut r).await;
            assert!(h.is_ok(), "{header:?}: {h:?}");
            assert_eq!(r, b"\x16\x03\x01rest");
        }
        let mut r = &b"PROXY TCP4 1.2.3.4"[..];
        assert_eq!(read_header(&mut r).await, Err(ProxyError::Truncated));
        let mut r = &b""[..];
        assert_eq!(read_header(&mut r).await, Err(ProxyError::Closed));
    }

    #[test]
    fn cidrs() {
        let c = |s: &str| s.parse::<Cidr>();
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        };
        let net = c("10.1.0.0/16");
        assert!(net.as_ref().is_ok_and(|n| n.contains(ip("10.1.200.3"))));
        assert!(net
            .as_ref()
            .is_ok_and(|n| n.contains(ip("::ffff:10.1.0.1"))));
        assert!(net.as_ref().is_ok_and(|n| !n.contains(ip("10.2.0.1"))));
        assert!(c("0.0.0.0/0").is_ok_and(|n| n.contains(ip("8.8.8.8")) && !n.contains(ip("::1"))));
        assert!(c("::1").is_ok_and(|n| n.contains(ip("::1")) && !n.contains(ip("::2"))));
        assert!(c("fd00::/8").is_ok_and(|n| n.contains(ip("fd12::1"))));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "10.0.0.0/8/8",
        ] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
            let mut prefixed = V2_SIGNATURE.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = parse(&prefixed);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&bytes);
            let _ = parse(&v1);
        }

        #[test]
        fn valid_headers_are_read_to_their_last_byte_and_no_further(
            v6 in any::<bool>(),
            two in any::<bool>(),
            a in any::<[u8; 16]>(),
            b in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let ip = |o: [u8; 16]| if v6 {
                IpAddr::V6(Ipv6Addr::from(o))
            } else {
                IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
            };
            let (src, dst) = (SocketAddr::new(ip(a), ports.0), SocketAddr::new(ip(b), ports.1));
            let tls = TlsFacts { sni: Some("b.test"), alpn: None, version: "TLSv1.2", cipher: None, client_cert: false };
            let header = if two { write_v2(src, dst, &tls) } else { write_v1(src, dst) };
            prop_assert!(two || header.len() <= V1_MAX);
            let stream = [&header[..], &after[..]].concat();
            let mut r = &stream[..];
            let runtime = tokio::runtime::Builder::new_current_thread().build();
            prop_assert!(runtime.is_ok());
            if let Ok(runtime) = runtime {
                let read = runtime.block_on(read_header(&mut r));
                let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
                prop_assert_eq!(read.map(|h| h.addresses.map(|(s, d)| (canon(s), canon(d)))), Ok(Some((canon(src), canon(dst)))));
                prop_assert_eq!(r, &after[..]);
            }
        }

        #[test]
        fn mutated_headers_never_panic_nor_overread(
            v6 in any::<bool>(),
            two in any::<bool>(),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<usize>(),
        ) {
            let (src, dst) = if v6 {
                (sa("[2001:db8::1]:1000"), sa("[::1]:443"))
            } else {
                (sa("192.0.2.1:1000"), sa("127.0.0.1:443"))
            };
            let tls = TlsFacts { sni: Some("a.test"), alpn: Some(b"http/1.1"), version: "TLSv1.3", cipher: None, client_cert: true };
            let mut h = if two { write_v2(src, dst, &tls) } else { write_v1(src, dst) };
            let i = at % h.len();
            h[i] = byte;
            let h = &h[..h.len() - cut % h.len()];
            match parse(h) {
                Ok(Parsed::Complete(_, n)) => prop_assert!(n <= h.len()),
                Ok(Parsed::Incomplete(n)) => prop_assert!(n >= 1),
                Err(_) => {}
            }
        }
    }
}
