//! A strict parser for the ClientHello a TLS client sends first, to see what it wants to resume
//! before rustls does.
//!
//! `reprise serve` reads a client's first bytes from TCP itself, takes from its ClientHello the
//! sessions the client wants to resume — the TLS 1.2 `legacy_session_id` and the TLS 1.3
//! `pre_shared_key` identities — fetches them from a distributed cache, and only then hands the
//! same bytes, unchanged, to rustls. [`parse`] (or the incremental [`ClientHelloParser`]) says
//! whether the bytes read so far hold a whole ClientHello, what that hello asks for, or that
//! they are not a well-formed ClientHello at all.
//!
//! ```
//! use std::io::Read;
//! use reprise_rustls::client_hello::{ClientHelloInfo, ClientHelloParser, Parsed};
//!
//! /// Reads until the ClientHello is complete; returns every byte read, for rustls.
//! fn first_flight(sock: &mut impl Read) -> std::io::Result<(Vec<u8>, Option<ClientHelloInfo>)> {
//!     let mut parser = ClientHelloParser::new();
//!     let mut buf = Vec::new();
//!     let mut chunk = [0; 4096];
//!     loop {
//!         match parser.parse(&buf) {
//!             Parsed::Complete(info) => return Ok((buf, Some(info))),
//!             // Not a ClientHello we understand: rustls will answer it with an alert.
//!             Parsed::Invalid(_why) => return Ok((buf, None)),
//!             Parsed::Incomplete => {}
//!         }
//!         let n = sock.read(&mut chunk)?;
//!         if n == 0 {
//!             return Ok((buf, None));
//!         }
//!         buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
//!     }
//! }
//! # let hello = std::io::Cursor::new(b"GET / HTTP/1.1\r\n".to_vec());
//! # let (bytes, info) = first_flight(&mut hello.clone()).unwrap();
//! # assert!(info.is_none() && bytes.starts_with(b"GET"));
//! ```
//!
//! # What is checked
//!
//! The input is attacker-controlled, so the parser is strict, and cheap:
//!
//! - **Records** (RFC 8446 §5.1): up to four warning alerts may come first (rustls ignores them
//!   until it knows the version), each a record of exactly two bytes; then every record up to
//!   the end of the ClientHello has content type
//!   22 (handshake), a legacy version whose major byte is 3, and a length of 1 to 2^14 + 2048
//!   ([`MAX_RECORD_LEN`], what rustls accepts). The fragments of consecutive records are joined: the hello may span
//!   records, and TCP segments anywhere. The ClientHello must end where a record ends (it
//!   precedes a key change in TLS 1.3). Bytes after that record are not looked at.
//! - **Handshake**: the first handshake message is a client_hello (type 1) whose 24-bit length
//!   is at most [`MAX_CLIENT_HELLO`].
//! - **ClientHello** (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2): a legacy_version (any value: rustls
//!   ignores it when supported_versions is there, and the server decides the version), 32 bytes of random, a legacy_session_id of at most 32 bytes, a non-empty, even-length
//!   cipher_suites, a non-empty legacy_compression_methods that offers null (0), then either
//!   the end of the message or an extensions block whose length is exactly the rest of it.
//! - **Extensions**: no type twice; pre_shared_key (41) last (RFC 8446 §4.2.11). server_name
//!   (0, RFC 6066 §3) is read for its first host_name, and a malformed one is no name, not an
//!   error (rustls takes much of it). Two are parsed, and must use up their data exactly:
//!   supported_versions (43: a list of 1 to 127 versions), and pre_shared_key (at least one identity, none empty; as many binders as
//!   identities, each at least 32 bytes long). The others are skipped.
//!
//! Anything else — TLS or not — is [`Parsed::Invalid`], as soon as the bytes that show it have
//! been read: a plain-text HTTP request or an SSLv2-style hello is rejected at its first byte.
//! The parser never panics and uses no `unsafe`; it runs in time linear in its input, and
//! allocates at most about the input's size for the joined handshake message, plus the
//! [`ClientHelloInfo`] it returns.

/// The largest ClientHello accepted: the handshake message's 24-bit length, in bytes (not
/// counting the message's own 4-byte header, nor the record headers).
///
/// It is rustls's own limit on a handshake message (0xffff bytes), so that every ClientHello
/// rustls accepts can be read here. Real ClientHellos are a few hundred bytes, a few KiB with
/// post-quantum key shares. A longer one is [`Parsed::Invalid`] ("ClientHello too large") as
/// soon as its length has been read.
pub const MAX_CLIENT_HELLO: usize = 0xffff;

/// The longest record accepted: 2^14 bytes of fragment (RFC 8446 §5.1) plus the 2,048 bytes of
/// expansion rustls allows on any record it reads, protected or not. A record header with a
/// longer length makes the input [`Parsed::Invalid`].
pub const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// How many bytes a caller may have to buffer before the parser decides: [`parse`] never returns
/// [`Parsed::Incomplete`] for an input this long or longer.
///
/// That many bytes are needed only for a ClientHello of [`MAX_CLIENT_HELLO`] bytes sent in
/// records of one byte each (5 header bytes for each byte of handshake). rustls itself buffers
/// no more than about [`MAX_FIRST_FLIGHT`] bytes of a handshake message, so a caller that
/// forwards the bytes to rustls can stop there instead.
pub const MAX_BUFFERED: usize = 6 * (HANDSHAKE_HEADER_LEN + MAX_CLIENT_HELLO);

/// The most bytes of a first flight worth reading for a ClientHello that rustls may accept.
///
/// rustls stops reading into its buffer once it holds 0xffff bytes of an unfinished handshake
/// message, having read at most 4 KiB at a time: a ClientHello whose records take more than
/// this is one rustls rejects. A caller may stop reading here with [`Parsed::Incomplete`] and
/// let rustls decide.
pub const MAX_FIRST_FLIGHT: usize = 0xffff + 4096;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const CONTENT_TYPE_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_TYPE_ALERT: u8 = 21;
const ALERT_WARNING: u8 = 1;
/// rustls ignores this many warning alerts, and fails on the next.
const MAX_WARNING_ALERTS: u8 = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const MAX_SESSION_ID_LEN: usize = 32;
const MIN_BINDER_LEN: usize = 32;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_EARLY_DATA: u16 = 42;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_SESSION_TICKET: u16 = 35;
const SNI_HOST_NAME: u8 = 0;
const VERSION_TLS13: u16 = 0x0304;
const VERSION_TLS12: u16 = 0x0303;

/// What a well-formed ClientHello asks for, as far as session resumption goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `legacy_session_id`, 0 to 32 bytes. A TLS 1.2 client that wants to resume a session
    /// by id sends that id; a TLS 1.3 client sends 32 random bytes (RFC 8446 §D.4).
    pub session_id: Vec<u8>,
    /// The identities of the `pre_shared_key` extension, in the client's order; empty without
    /// one. None is empty. For a rustls server with stateful TLS 1.3 tickets, an identity is the
    /// key the server stored the ticket's session under. A hostile hello can list up to about
    /// [`MAX_CLIENT_HELLO`] / 7 of them: a caller that fetches them should cap how many.
    pub psk_identities: Vec<Vec<u8>>,
    /// The `host_name` of the `server_name` extension, if there is one and it is all printable
    /// ASCII (no spaces nor control characters), as sent: not lower-cased nor otherwise checked.
    pub server_name: Option<String>,
    /// Whether the `supported_versions` extension offers TLS 1.3 (0x0304).
    pub supports_tls13: bool,
    /// The versions of the `supported_versions` extension, in the client's order (0x0304 for
    /// TLS 1.3, 0x0303 for TLS 1.2, GREASE values included); empty without the extension, from
    /// a client that knows only TLS 1.2 and older. See [`offers_tls12`](Self::offers_tls12).
    pub versions: Vec<u16>,
    /// The protocols of the `application_layer_protocol_negotiation` extension (RFC 7301), in
    /// the client's order; empty without one. A malformed list is read as empty, not as an
    /// error (rustls then decides).
    pub alpn: Vec<Vec<u8>>,
    /// Whether the hello carries the `early_data` extension: the client sends 0-RTT data after
    /// it, under its first PSK identity.
    pub early_data: bool,
    /// Whether the hello carries the `session_ticket` extension (RFC 5077), empty (the client
    /// asks for a TLS 1.2 ticket) or not (it offers one).
    pub session_ticket: bool,
    /// Whether that extension is not empty: the client offers a TLS 1.2 ticket. rustls then
    /// resumes by the ticket or not at all, and never looks the session id up.
    pub offers_session_ticket: bool,
}

impl ClientHelloInfo {
    /// Whether the client can speak TLS 1.2: its `supported_versions` lists 0x0303, or it has
    /// no such extension (a TLS 1.2 client).
    pub fn offers_tls12(&self) -> bool {
        self.versions.is_empty() || self.versions.contains(&VERSION_TLS12)
    }
}

/// What [`parse`] makes of the bytes read so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole, well-formed ClientHello.
    Complete(ClientHelloInfo),
    /// Well-formed so far, but the ClientHello is not complete: read more bytes, and call again
    /// with all of them. Never returned for [`MAX_BUFFERED`] bytes or more.
    Incomplete,
    /// Not a well-formed ClientHello in well-formed TLS records: stop reading. The reason is
    /// for logs.
    Invalid(&'static str),
}

/// Parses the bytes a client has sent so far: TLS records that should start with a ClientHello.
///
/// `buf` is everything read from the connection, from its first byte. The result depends only
/// on the records that carry the ClientHello: bytes after them (a change_cipher_spec, early
/// data) are ignored, and once the answer is not [`Parsed::Incomplete`], reading more does not
/// change it. This is linear in `buf.len()`; a caller that reads in many small pieces should
/// keep a [`ClientHelloParser`] instead, which does not look at the same bytes twice.
pub fn parse(buf: &[u8]) -> Parsed {
    ClientHelloParser::new().parse(buf)
}

/// The incremental form of [`parse`], for a caller that calls again each time it reads more:
/// the work over all the calls is linear in the final input's length, however it was split.
#[derive(Clone, Debug, Default)]
pub struct ClientHelloParser {
    /// How many bytes of the input the whole records read so far take.
    consumed: usize,
    /// The handshake bytes of those records.
    message: Vec<u8>,
    /// The answer, once it is known.
    done: Option<Parsed>,
    /// Whether one change_cipher_spec record may come first (the second ClientHello).
    after_retry: bool,
    /// Whether this is the second ClientHello (no alerts are taken before it).
    retry: bool,
    /// Warning alerts read before the ClientHello.
    alerts: u8,
    /// Where the ClientHello's first record starts.
    hello_start: usize,
}

impl ClientHelloParser {
    /// A parser that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser for the second ClientHello of a TLS 1.3 handshake, the one a client sends after
    /// the server's HelloRetryRequest: the client's bytes from there on, which may start with
    /// one change_cipher_spec record (middlebox compatibility, RFC 8446 §D.4) before the
    /// hello's records. That record is skipped; everything else is checked as by [`new`].
    ///
    /// [`new`]: Self::new
    pub fn after_retry() -> Self {
        Self {
            after_retry: true,
            retry: true,
            ..Self::default()
        }
    }

    /// Parses the bytes read so far, like [`parse`], without reading again what earlier calls
    /// read. Every call must pass everything read so far: the previous call's input, with the
    /// bytes read since appended. Once the answer is not [`Parsed::Incomplete`], every later
    /// call returns it again.
    pub fn parse(&mut self, buf: &[u8]) -> Parsed {
        if let Some(done) = &self.done {
            return done.clone();
        }
        let parsed = match self.advance(buf) {
            Ok(None) => return Parsed::Incomplete,
            Ok(Some(info)) => Parsed::Complete(info),
            Err(why) => Parsed::Invalid(why),
        };
        self.message = Vec::new();
        self.done = Some(parsed.clone());
        parsed
    }

    /// Reads the records after the ones already consumed: the ClientHello if it is complete,
    /// None if it is not yet, the reason if the input is malformed.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<ClientHelloInfo>, &'static str> {
        let mut records = Reader::new(
            buf.get(self.consumed..)
                .ok_or("input shorter than in an earlier call")?,
        );
        // Records rustls takes before a ClientHello, each checked as soon as its bytes are
        // there: after a HelloRetryRequest, one change_cipher_spec; before a first hello, up to
        // four warning alerts (rustls ignores them until the version is known).
        while self.consumed == self.hello_start {
            let Some(&content_type) = records.bytes().first() else {
                return Ok(None);
            };
            let (pattern, why): (&[Option<u8>], _) = match content_type {
                CONTENT_TYPE_CHANGE_CIPHER_SPEC if self.after_retry => (
                    &[None, Some(3), None, Some(0), Some(1), Some(1)],
                    "malformed change_cipher_spec before the ClientHello",
                ),
                CONTENT_TYPE_ALERT if !self.retry => {
                    if self.alerts == MAX_WARNING_ALERTS {
                        return Err("more than four alerts before the ClientHello");
                    }
                    (
                        &[
                            None,
                            Some(3),
                            None,
                            Some(0),
                            Some(2),
                            Some(ALERT_WARNING),
                            None,
                        ],
                        "an alert before the ClientHello that is not a warning",
                    )
                }
                _ => break,
            };
            let mut record = records;
            for expected in pattern {
                match (record.u8(), expected) {
                    (None, _) => return Ok(None),
                    (Some(byte), Some(want)) if byte != *want => return Err(why),
                    _ => {}
                }
            }
            if content_type == CONTENT_TYPE_ALERT {
                self.alerts += 1;
            } else {
                self.after_retry = false;
            }
            self.consumed += pattern.len();
            self.hello_start = self.consumed;
            records = record;
        }
        self.after_retry = false;
        loop {
            // The record header, each byte checked as soon as it is there.
            let mut record = records;
            let Some(content_type) = record.u8() else {
                return Ok(None);
            };
            if content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(if self.consumed == self.hello_start {
                    "not a TLS handshake"
                } else {
                    "a non-handshake record inside the ClientHello"
                });
            }
            let Some(major) = record.u8() else {
                return Ok(None);
            };
            if major != 3 {
                return Err("bad record version");
            }
            let (Some(_minor), Some(len)) = (record.u8(), record.u16()) else {
                return Ok(None);
            };
            let len = usize::from(len);
            if len == 0 {
                return Err("empty handshake record");
            }
            if len > MAX_RECORD_LEN {
                return Err("record longer than 2^14 + 2048 bytes");
            }
            let fragment = record.take_up_to(len);
            let partial = fragment.len() < len;

            // The handshake header, as far as it is known: the type and (a lower bound of) the
            // length are checked as soon as their bytes are there.
            let mut header = [0u8; HANDSHAKE_HEADER_LEN];
            let mut known = 0;
            for (slot, &byte) in header.iter_mut().zip(self.message.iter().chain(fragment)) {
                *slot = byte;
                known += 1;
            }
            let [msg_type, len_hi, len_mid, len_lo] = header;
            if known > 0 && msg_type != HANDSHAKE_CLIENT_HELLO {
                return Err("the first handshake message is not a ClientHello");
            }
            // Missing length bytes count as zero: this is at most the real length.
            let body_len =
                usize::from(len_hi) << 16 | usize::from(len_mid) << 8 | usize::from(len_lo);
            if body_len > MAX_CLIENT_HELLO {
                return Err("ClientHello too large");
            }
            if known == HANDSHAKE_HEADER_LEN {
                let needed = HANDSHAKE_HEADER_LEN + body_len;
                let declared = self.message.len() + len;
                if declared >= needed {
                    // The ClientHello ends in this record: it must end with it.
                    if declared > needed {
                        return Err("data after the ClientHello in its record");
                    }
                    if partial {
                        return Ok(None);
                    }
                    self.message.extend_from_slice(fragment);
                    let body = self.message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
                    return parse_body(body).map(Some);
                }
            }
            if partial {
                return Ok(None);
            }
            self.message.extend_from_slice(fragment);
            self.consumed += RECORD_HEADER_LEN + len;
            records = record;
        }
    }
}

/// Parses a ClientHello's body: the handshake message without its 4-byte header.
fn parse_body(body: &[u8]) -> Result<ClientHelloInfo, &'static str> {
    let mut r = Reader::new(body);
    // Any value: rustls negotiates TLS 1.3 from supported_versions whatever it says, and
    // answers a version it does not take with its own alert.
    r.u16().ok_or("truncated legacy_version")?;
    r.take(32).ok_or("truncated random")?;
    let session_id = r.vec8().ok_or("truncated legacy_session_id")?;
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err("legacy_session_id longer than 32 bytes");
    }
    let suites = r.vec16().ok_or("truncated cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("malformed cipher_suites");
    }
    let compression = r.vec8().ok_or("truncated legacy_compression_methods")?;
    if !compression.bytes().contains(&0) {
        return Err("legacy_compression_methods without null");
    }
    let mut info = ClientHelloInfo {
        session_id: session_id.bytes().to_vec(),
        ..ClientHelloInfo::default()
    };
    if r.is_empty() {
        // No extensions: a TLS 1.2 (or older) hello.
        return Ok(info);
    }
    let mut extensions = r.vec16().ok_or("truncated extensions")?;
    if !r.is_empty() {
        return Err("data after the extensions");
    }

    // One bit for each of the 2^16 extension types: duplicates found in constant time each.
    let mut seen = [0u64; 1 << 10];
    let mut after_psk = false;
    while !extensions.is_empty() {
        if after_psk {
            return Err("pre_shared_key is not the last extension");
        }
        let ext_type = extensions.u16().ok_or("truncated extension header")?;
        let data = extensions.vec16().ok_or("truncated extension")?;
        let word = seen
            .get_mut(usize::from(ext_type >> 6))
            .ok_or("extension type out of range")?;
        let bit = 1u64 << (ext_type & 63);
        if *word & bit != 0 {
            return Err("duplicate extension");
        }
        *word |= bit;
        match ext_type {
            EXT_SERVER_NAME => info.server_name = parse_server_name(data),
            EXT_SUPPORTED_VERSIONS => {
                info.versions = parse_supported_versions(data)?;
                info.supports_tls13 = info.versions.contains(&VERSION_TLS13);
            }
            EXT_ALPN => info.alpn = parse_alpn(data),
            EXT_EARLY_DATA => info.early_data = true,
            EXT_SESSION_TICKET => {
                info.session_ticket = true;
                info.offers_session_ticket = !data.is_empty();
            }
            EXT_PRE_SHARED_KEY => {
                info.psk_identities = parse_pre_shared_key(data)?;
                after_psk = true;
            }
            _ => {}
        }
    }
    Ok(info)
}

/// server_name (RFC 6066 §3): the first host_name, if it is printable ASCII.
///
/// Never an error: rustls reads past much that is malformed here (it stops at a name type it
/// does not know, and takes an unusable name as no name), and a server name only labels the
/// hello. A malformed list yields what was read before the fault.
fn parse_server_name(mut data: Reader<'_>) -> Option<String> {
    let mut list = data.vec16()?;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type == SNI_HOST_NAME {
            let name = name.bytes();
            if !name.is_empty() && name.iter().all(u8::is_ascii_graphic) {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
            return None;
        }
    }
    None
}

/// application_layer_protocol_negotiation (RFC 7301 §3.1): the protocol names, in order.
///
/// Never an error, like server_name: a malformed list is no list, and rustls decides what to
/// make of it.
fn parse_alpn(mut data: Reader<'_>) -> Vec<Vec<u8>> {
    let Some(mut list) = data.vec16().filter(|_| data.is_empty()) else {
        return Vec::new();
    };
    let mut protocols = Vec::new();
    while !list.is_empty() {
        match list.vec8() {
            Some(name) if !name.is_empty() => protocols.push(name.bytes().to_vec()),
            _ => return Vec::new(),
        }
    }
    protocols
}

/// supported_versions in a ClientHello (RFC 8446 §4.2.1): the versions it lists.
fn parse_supported_versions(mut data: Reader<'_>) -> Result<Vec<u16>, &'static str> {
    let mut versions = data.vec8().ok_or("truncated supported_versions")?;
    if !data.is_empty() {
        return Err("data after the supported_versions list");
    }
    if versions.is_empty() || versions.len() % 2 != 0 {
        return Err("malformed supported_versions");
    }
    let mut offered = Vec::with_capacity(versions.len() / 2);
    while let Some(version) = versions.u16() {
        offered.push(version);
    }
    Ok(offered)
}

/// pre_shared_key in a ClientHello (RFC 8446 §4.2.11): the identities.
fn parse_pre_shared_key(mut data: Reader<'_>) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut identities = data.vec16().ok_or("truncated PSK identities")?;
    let mut binders = data.vec16().ok_or("truncated PSK binders")?;
    if !data.is_empty() {
        return Err("data after the PSK binders");
    }
    let mut out = Vec::new();
    while !identities.is_empty() {
        let identity = identities.vec16().ok_or("truncated PSK identity")?;
        if identity.is_empty() {
            return Err("empty PSK identity");
        }
        identities
            .u32()
            .ok_or("truncated PSK obfuscated_ticket_age")?;
        out.push(identity.bytes().to_vec());
    }
    if out.is_empty() {
        return Err("no PSK identity");
    }
    let mut binder_count = 0usize;
    while !binders.is_empty() {
        let binder = binders.vec8().ok_or("truncated PSK binder")?;
        if binder.len() < MIN_BINDER_LEN {
            return Err("PSK binder shorter than 32 bytes");
        }
        binder_count += 1;
    }
    if binder_count != out.len() {
        return Err("PSK binder count differs from the identity count");
    }
    Ok(out)
}

/// Checked big-endian reads from a byte slice: every read that would go past its end is None.
#[derive(Clone, Copy)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    /// The bytes not read yet.
    fn bytes(&self) -> &'a [u8] {
        self.rest
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes, if there are that many.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    /// The next `n` bytes, or all that is left if fewer.
    fn take_up_to(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        taken
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (taken, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A vector with a one-byte length: its contents.
    fn vec8(&mut self) -> Option<Reader<'a>> {
        let len = self.u8()?;
        self.take(usize::from(len)).map(Reader::new)
    }

    /// A vector with a two-byte length: its contents.
    fn vec16(&mut self) -> Option<Reader<'a>> {
        let len = self.u16()?;
        self.take(usize::from(len)).map(Reader::new)
    }
}

#[cfg(test)]
mod tests;
