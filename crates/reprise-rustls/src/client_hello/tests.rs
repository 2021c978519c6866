//! Tests of the ClientHello parser: hellos built by hand, hellos from real rustls and OpenSSL
//! clients, and properties of the parse.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use proptest::prelude::*;
use reprise_testkit::Pki;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedProtocolVersion,
};

use super::*;

// --- Hellos built by hand ----------------------------------------------------------------

fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

/// `data` behind a one-byte length.
fn v8(data: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(data.len()).unwrap()];
    out.extend_from_slice(data);
    out
}

/// `data` behind a two-byte length.
fn v16(data: &[u8]) -> Vec<u8> {
    let mut out = be16(data.len()).to_vec();
    out.extend_from_slice(data);
    out
}

/// A ClientHello body behind its handshake header.
fn handshake(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut out = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
    out.extend_from_slice(body);
    out
}

/// `message` in handshake records of the given sizes; the last size repeats.
fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes[i.min(sizes.len() - 1)].min(rest.len());
        let (fragment, tail) = rest.split_at(size);
        out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
        out.extend_from_slice(&v16(fragment));
        rest = tail;
        i += 1;
    }
    out
}

/// A ClientHello body framed as a handshake message in one record.
fn framed(body: &[u8]) -> Vec<u8> {
    records(&handshake(body), &[MAX_RECORD_LEN])
}

fn ext(ext_type: u16, data: &[u8]) -> (u16, Vec<u8>) {
    (ext_type, data.to_vec())
}

fn sni(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![SNI_HOST_NAME];
    entry.extend_from_slice(&v16(name));
    v16(&entry)
}

fn versions(list: &[u16]) -> Vec<u8> {
    v8(&list
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<_>>())
}

/// pre_shared_key data: identities (with an obfuscated age each), binders of given lengths.
fn psk(identities: &[&[u8]], binders: &[usize]) -> Vec<u8> {
    let mut ids = Vec::new();
    for id in identities {
        ids.extend_from_slice(&v16(id));
        ids.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    }
    let mut bs = Vec::new();
    for &len in binders {
        bs.extend_from_slice(&v8(&vec![0xb1; len]));
    }
    let mut out = v16(&ids);
    out.extend_from_slice(&v16(&bs));
    out
}

/// A ClientHello, field by field.
#[derive(Clone, Debug)]
struct Hello {
    version: u16,
    session_id: Vec<u8>,
    suites: Vec<u8>,
    compression: Vec<u8>,
    extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Hello {
    /// Like a TLS 1.3 resumption: session id, SNI, versions, groups, PSK.
    fn tls13() -> Self {
        Self {
            version: 0x0303,
            session_id: vec![0x51; 32],
            suites: vec![0x13, 0x01, 0x13, 0x02, 0xc0, 0x2b],
            compression: vec![0],
            extensions: Some(vec![
                ext(EXT_SERVER_NAME, &sni(b"example.test")),
                ext(10, &v16(&[0, 0x1d, 0, 0x17])),
                ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304, 0x0303])),
                ext(45, &v8(&[1])),
                ext(
                    EXT_PRE_SHARED_KEY,
                    &psk(&[b"ticket-one", b"ticket-two"], &[32, 48]),
                ),
            ]),
        }
    }

    /// Like an old TLS 1.2 client: a session id, no extensions at all.
    fn tls12_bare() -> Self {
        Self {
            version: 0x0303,
            session_id: vec![0x12; 32],
            suites: vec![0xc0, 0x2f],
            compression: vec![1, 0],
            extensions: None,
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut out = self.version.to_be_bytes().to_vec();
        out.extend_from_slice(&[0x7a; 32]);
        out.extend_from_slice(&v8(&self.session_id));
        out.extend_from_slice(&v16(&self.suites));
        out.extend_from_slice(&v8(&self.compression));
        if let Some(extensions) = &self.extensions {
            let mut all = Vec::new();
            for (ext_type, data) in extensions {
                all.extend_from_slice(&ext_type.to_be_bytes());
                all.extend_from_slice(&v16(data));
            }
            out.extend_from_slice(&v16(&all));
        }
        out
    }

    fn framed(&self) -> Vec<u8> {
        framed(&self.body())
    }

    fn with_extensions(mut self, extensions: Vec<(u16, Vec<u8>)>) -> Self {
        self.extensions = Some(extensions);
        self
    }
}

fn complete(buf: &[u8]) -> ClientHelloInfo {
    match checked(buf) {
        Parsed::Complete(info) => info,
        other => panic!("expected a complete hello, got {other:?}"),
    }
}

fn invalid(buf: &[u8]) -> &'static str {
    match checked(buf) {
        Parsed::Invalid(why) => why,
        other => panic!("expected an invalid hello, got {other:?}"),
    }
}

/// Parses `buf` and checks what must hold of any input: the invariants of the answer, that
/// the incremental parser fed in pieces agrees, and that prefixes are undecided or agree.
fn checked(buf: &[u8]) -> Parsed {
    let parsed = parse(buf);
    match &parsed {
        Parsed::Complete(info) => {
            assert!(info.session_id.len() <= 32);
            assert!(info.psk_identities.iter().all(|id| !id.is_empty()));
            if let Some(name) = &info.server_name {
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        Parsed::Incomplete => assert!(buf.len() < MAX_BUFFERED),
        Parsed::Invalid(why) => assert!(!why.is_empty()),
    }
    for step in [1, 7, 100] {
        if buf.len() / step > 2000 {
            continue;
        }
        let mut parser = ClientHelloParser::new();
        let mut last = parser.parse(&[]);
        let mut end = 0;
        while end < buf.len() {
            end = (end + step).min(buf.len());
            let now = parser.parse(&buf[..end]);
            if last != Parsed::Incomplete {
                assert_eq!(now, last, "a decided parser changed its mind");
            }
            last = now;
        }
        assert_eq!(last, parsed, "pieces of {step} bytes");
    }
    for cut in [
        0,
        1,
        4,
        5,
        6,
        9,
        10,
        43,
        buf.len() / 2,
        buf.len().saturating_sub(1),
    ] {
        if let Some(prefix) = buf.get(..cut) {
            let early = parse(prefix);
            assert!(
                early == Parsed::Incomplete || early == parsed,
                "prefix of {cut} bytes: {early:?}, whole: {parsed:?}"
            );
        }
    }
    parsed
}

// --- Hellos made by rustls ---------------------------------------------------------------

/// The test PKI, made once.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

fn client_config(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki().roots())
        .with_no_client_auth();
    Arc::new(config)
}

fn server_config(
    versions: &[&'static SupportedProtocolVersion],
    store: Arc<dyn StoresServerSessions>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki().server_chain(), pki().server_key())
        .unwrap();
    config.session_storage = store;
    config.send_tls13_tickets = 1;
    Arc::new(config)
}

/// rustls's memory cache, remembering every key the server stored a session under.
#[derive(Debug)]
struct RecordingStore {
    inner: Arc<ServerSessionMemoryCache>,
    keys: Mutex<Vec<Vec<u8>>>,
}

impl RecordingStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ServerSessionMemoryCache::new(64),
            keys: Mutex::new(Vec::new()),
        })
    }
}

impl StoresServerSessions for RecordingStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.keys.lock().unwrap().push(key.clone());
        self.inner.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key)
    }
    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// The first flight of a new connection from `config` to `name`: its ClientHello.
fn rustls_hello(config: &Arc<ClientConfig>, name: &str) -> Vec<u8> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(config.clone(), name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// A whole handshake in memory, and the TLS 1.3 tickets after it.
fn handshake_in_memory(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client.clone(), name).unwrap();
    let mut server = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..16 {
        let to_server = reprise_testkit::transfer(&mut client, &mut server);
        server.process_new_packets().unwrap();
        let to_client = reprise_testkit::transfer(&mut server, &mut client);
        client.process_new_packets().unwrap();
        if to_server.is_empty()
            && to_client.is_empty()
            && !client.is_handshaking()
            && !server.is_handshaking()
        {
            return;
        }
    }
    panic!("the handshake did not finish");
}

/// A client that has a session from a server, the keys the server stored it under, and
/// the client's next ClientHello, which offers it.
fn resumption_hello(
    client_versions: &[&'static SupportedProtocolVersion],
    server_versions: &[&'static SupportedProtocolVersion],
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let store = RecordingStore::new();
    let server = server_config(server_versions, store.clone());
    let client = client_config(client_versions);
    handshake_in_memory(&client, &server);
    let keys = store.keys.lock().unwrap().clone();
    assert!(!keys.is_empty(), "the server stored no session");
    (rustls_hello(&client, "localhost"), keys)
}

/// Real rustls hellos, made once: name and bytes.
fn rustls_hellos() -> &'static [(&'static str, Vec<u8>)] {
    static HELLOS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    HELLOS.get_or_init(|| {
        vec![
            (
                "tls13",
                rustls_hello(&client_config(&[&TLS13, &TLS12]), "localhost"),
            ),
            (
                "tls12",
                rustls_hello(&client_config(&[&TLS12]), "localhost"),
            ),
            (
                "ip-no-sni",
                rustls_hello(&client_config(&[&TLS13]), "127.0.0.1"),
            ),
            ("tls12-resume", resumption_hello(&[&TLS12], &[&TLS12]).0),
            (
                "tls13-resume",
                resumption_hello(&[&TLS13, &TLS12], &[&TLS13]).0,
            ),
        ]
    })
}

/// A valid hello's body: the records' fragments, without the handshake header.
fn body_of(buf: &[u8]) -> Vec<u8> {
    let mut message = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    message.split_off(4)
}

#[test]
fn rustls_tls13_hello_without_a_ticket() {
    let hello = rustls_hello(&client_config(&[&TLS13, &TLS12]), "localhost");
    let info = complete(&hello);
    assert_eq!(
        info.session_id.len(),
        32,
        "middlebox-compatibility session id"
    );
    assert!(info.psk_identities.is_empty());
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
    assert!(info.supports_tls13);
}

#[test]
fn rustls_tls12_hello_without_a_session() {
    let hello = rustls_hello(&client_config(&[&TLS12]), "localhost");
    let info = complete(&hello);
    assert!(info.session_id.is_empty());
    assert!(info.psk_identities.is_empty());
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
    assert!(!info.supports_tls13);
    assert!(
        info.session_ticket,
        "rustls asks for a TLS 1.2 ticket by default"
    );
    assert!(!info.offers_session_ticket, "it has none to offer yet");
}

#[test]
fn a_tls12_client_resuming_by_id_only_asks_for_no_ticket() {
    let mut config = (*client_config(&[&TLS12])).clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(8)
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    let info = complete(&rustls_hello(&Arc::new(config), "localhost"));
    assert!(!info.session_ticket);
}

#[test]
fn rustls_hello_to_an_ip_address_has_no_server_name() {
    let hello = rustls_hello(&client_config(&[&TLS13]), "127.0.0.1");
    let info = complete(&hello);
    assert_eq!(info.server_name, None);
    assert!(info.supports_tls13);
}

#[test]
fn rustls_tls12_resumption_offers_the_stored_session_id() {
    let (hello, keys) = resumption_hello(&[&TLS12], &[&TLS12]);
    let info = complete(&hello);
    assert_eq!(keys.len(), 1);
    assert_eq!(info.session_id, keys[0]);
    assert!(info.psk_identities.is_empty());
    assert!(!info.supports_tls13);
    assert!(!info.offers_session_ticket);
}

#[test]
fn rustls_tls12_ticket_resumption_offers_the_ticket() {
    let mut server = (*server_config(&[&TLS12], RecordingStore::new())).clone();
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let client = client_config(&[&TLS12]);
    handshake_in_memory(&client, &Arc::new(server));
    let info = complete(&rustls_hello(&client, "localhost"));
    assert!(info.session_ticket && info.offers_session_ticket);
}

#[test]
fn rustls_tls13_resumption_offers_the_stored_ticket_id() {
    let (hello, keys) = resumption_hello(&[&TLS13, &TLS12], &[&TLS13]);
    let info = complete(&hello);
    assert_eq!(info.psk_identities.len(), 1);
    let identity = &info.psk_identities[0];
    assert_eq!(identity.len(), 32, "rustls's stateful ticket id");
    assert!(keys.contains(identity), "{identity:?} not in {keys:?}");
    assert_eq!(info.session_id.len(), 32);
    assert!(info.supports_tls13);
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
}

#[test]
fn a_hello_split_over_records_delivered_byte_by_byte() {
    for (name, hello) in rustls_hellos() {
        let whole = complete(hello);
        let message = handshake(&body_of(hello));
        for sizes in [&[1][..], &[1, 2, 3], &[3, 200, 1], &[100, 5]] {
            let split = records(&message, sizes);
            for end in 0..split.len() {
                assert_eq!(parse(&split[..end]), Parsed::Incomplete, "{name} {end}");
            }
            assert_eq!(checked(&split), Parsed::Complete(whole.clone()), "{name}");
            // The incremental parser, byte by byte.
            let mut parser = ClientHelloParser::new();
            for end in 0..split.len() {
                assert_eq!(parser.parse(&split[..end]), Parsed::Incomplete);
            }
            assert_eq!(parser.parse(&split), Parsed::Complete(whole.clone()));
            // What follows the hello's records is not looked at.
            let mut more = split.clone();
            more.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0xff]);
            assert_eq!(parser.parse(&more), Parsed::Complete(whole.clone()));
            assert_eq!(checked(&more), Parsed::Complete(whole.clone()));
        }
    }
}

#[test]
fn alpn_early_data_and_versions_are_read() {
    let alpn = |names: &[&[u8]]| {
        let list: Vec<u8> = names.iter().flat_map(|n| v8(n)).collect();
        v16(&list)
    };
    let mut extensions = Hello::tls13().extensions.unwrap_or_default();
    let psk = extensions.pop().unwrap();
    extensions.push(ext(EXT_ALPN, &alpn(&[b"h2", b"http/1.1"])));
    extensions.push(ext(EXT_EARLY_DATA, &[]));
    extensions.push(psk);
    let info = complete(&Hello::tls13().with_extensions(extensions).framed());
    assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert!(info.early_data);
    assert_eq!(info.versions, vec![0x0304, 0x0303]);
    assert!(info.supports_tls13 && info.offers_tls12());

    // Without them: no protocols, no early data; no supported_versions is a TLS 1.2 client.
    let info = complete(&Hello::tls12_bare().framed());
    assert!(info.alpn.is_empty() && !info.early_data && info.versions.is_empty());
    assert!(info.offers_tls12() && !info.supports_tls13);
    let only13 =
        Hello::tls13().with_extensions(vec![ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304]))]);
    assert!(!complete(&only13.framed()).offers_tls12());

    // A malformed protocol list is no list, not an error: rustls decides.
    let bad: [&[u8]; 4] = [&[], &[0, 3, 2, b'h'], &[0, 1, 0], &[0, 4, 2, b'h', b'2', 9]];
    for data in bad {
        let hello = Hello::tls13().with_extensions(vec![ext(EXT_ALPN, data)]);
        assert!(complete(&hello.framed()).alpn.is_empty(), "{data:?}");
    }
}

#[test]
fn hand_built_hellos_parse() {
    let info = complete(&Hello::tls13().framed());
    assert_eq!(info.session_id, vec![0x51; 32]);
    assert_eq!(
        info.psk_identities,
        vec![b"ticket-one".to_vec(), b"ticket-two".to_vec()]
    );
    assert_eq!(info.server_name.as_deref(), Some("example.test"));
    assert!(info.supports_tls13);

    let info = complete(&Hello::tls12_bare().framed());
    assert_eq!(info.session_id, vec![0x12; 32]);
    assert_eq!(info.server_name, None);
    assert!(!info.supports_tls13 && info.psk_identities.is_empty());

    // An empty extensions block, an empty session id.
    let mut hello = Hello::tls12_bare().with_extensions(vec![]);
    hello.session_id.clear();
    assert_eq!(complete(&hello.framed()), ClientHelloInfo::default());

    // A host name that is not printable ASCII is not returned, but is not an error.
    for name in [&b"caf\xc3\xa9.test"[..], b"a b", b"x\x00y", b"\x7f"] {
        let hello = Hello::tls13().with_extensions(vec![ext(EXT_SERVER_NAME, &sni(name))]);
        assert_eq!(complete(&hello.framed()).server_name, None, "{name:?}");
    }
    // Other name types are skipped; the host_name need not be first.
    let mut list = vec![7];
    list.extend_from_slice(&v16(b"opaque"));
    list.push(SNI_HOST_NAME);
    list.extend_from_slice(&v16(b"second.test"));
    let hello = Hello::tls13().with_extensions(vec![ext(EXT_SERVER_NAME, &v16(&list))]);
    assert_eq!(
        complete(&hello.framed()).server_name.as_deref(),
        Some("second.test")
    );
    // supported_versions without TLS 1.3.
    let hello =
        Hello::tls13().with_extensions(vec![ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0303]))]);
    assert!(!complete(&hello.framed()).supports_tls13);
    // One PSK identity of one byte, one binder of 255.
    let hello =
        Hello::tls13().with_extensions(vec![ext(EXT_PRE_SHARED_KEY, &psk(&[b"x"], &[255]))]);
    assert_eq!(
        complete(&hello.framed()).psk_identities,
        vec![b"x".to_vec()]
    );
}

/// Where a valid hello's body would end without its extensions.
fn bare_len(body: &[u8]) -> usize {
    let sid = 34 + 1 + usize::from(body[34]);
    let comp = sid + 2 + usize::from(u16::from_be_bytes([body[sid], body[sid + 1]]));
    comp + 1 + usize::from(body[comp])
}

/// The offsets and widths of every length field in a valid hello's body.
fn length_fields(body: &[u8]) -> Vec<(usize, usize)> {
    let len1 = |at: usize| usize::from(body[at]);
    let len2 = |at: usize| usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let mut fields = Vec::new();
    let mut at = 34;
    fields.push((at, 1));
    at += 1 + len1(at);
    fields.push((at, 2));
    at += 2 + len2(at);
    fields.push((at, 1));
    at += 1 + len1(at);
    if at == body.len() {
        return fields;
    }
    fields.push((at, 2));
    at += 2;
    while at < body.len() {
        let ext_type = len2(at);
        fields.push((at + 2, 2));
        let len = len2(at + 2);
        let data = at + 4;
        match u16::try_from(ext_type).unwrap() {
            EXT_SERVER_NAME => {
                fields.push((data, 2));
                let mut entry = data + 2;
                while entry < data + len {
                    fields.push((entry + 1, 2));
                    entry += 3 + len2(entry + 1);
                }
            }
            EXT_SUPPORTED_VERSIONS => fields.push((data, 1)),
            EXT_PRE_SHARED_KEY => {
                fields.push((data, 2));
                let ids_end = data + 2 + len2(data);
                let mut id = data + 2;
                while id < ids_end {
                    fields.push((id, 2));
                    id += 2 + len2(id) + 4;
                }
                fields.push((ids_end, 2));
                let mut binder = ids_end + 2;
                while binder < data + len {
                    fields.push((binder, 1));
                    binder += 1 + len1(binder);
                }
            }
            _ => {}
        }
        at = data + len;
    }
    fields
}

/// Every way of changing one length field of `body` by a little or a lot.
fn corruptions(body: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (at, width) in length_fields(body) {
        let value = if width == 1 {
            usize::from(body[at])
        } else {
            usize::from(u16::from_be_bytes([body[at], body[at + 1]]))
        };
        let max = if width == 1 { 0xff } else { 0xffff };
        let mut values = vec![value + 1, value.wrapping_sub(1), value + 256, 0, max];
        values.retain(|&v| v <= max && v != value);
        for v in values {
            let mut bad = body.to_vec();
            if width == 1 {
                bad[at] = u8::try_from(v).unwrap();
            } else {
                bad[at..at + 2].copy_from_slice(&be16(v));
            }
            out.push((at, bad));
        }
    }
    out
}

#[test]
fn every_length_field_corrupted_is_invalid() {
    let mut hellos = vec![Hello::tls13(), Hello::tls12_bare()];
    let mut hello = Hello::tls13();
    hello.session_id.clear();
    hellos.push(hello);
    for hello in hellos {
        let body = hello.body();
        assert!(length_fields(&body).len() >= 3);
        let name = complete(&framed(&body)).server_name;
        for (at, bad) in corruptions(&body) {
            match parse(&framed(&bad)) {
                Parsed::Invalid(why) => assert!(!why.is_empty(), "{at}"),
                // Inside server_name, which is read leniently: the name is lost, or cut.
                Parsed::Complete(info) => assert_ne!(info.server_name, name, "{at}"),
                Parsed::Incomplete => panic!("{at}: incomplete"),
            }
        }
    }
    // rustls's hellos, whose key shares and randoms differ each run: some corruptions
    // could by chance still parse, so only the invariants are checked.
    let mut tried = 0;
    for (_, hello) in rustls_hellos() {
        let body = body_of(hello);
        for (_, bad) in corruptions(&body) {
            checked(&framed(&bad));
            tried += 1;
        }
    }
    assert!(tried > 100, "{tried}");
}

#[test]
fn every_truncation_is_invalid() {
    let mut bodies = vec![Hello::tls13().body(), Hello::tls12_bare().body()];
    bodies.extend(rustls_hellos().iter().map(|(_, hello)| body_of(hello)));
    for body in bodies {
        // Cut where the extensions start, it is a valid hello without extensions.
        let bare = bare_len(&body);
        for cut in 0..body.len() {
            let parsed = checked(&framed(&body[..cut]));
            if cut == bare {
                let info = complete(&framed(&body));
                assert_eq!(
                    parsed,
                    Parsed::Complete(ClientHelloInfo {
                        session_id: info.session_id,
                        ..ClientHelloInfo::default()
                    })
                );
            } else {
                assert!(matches!(parsed, Parsed::Invalid(_)), "{cut}: {parsed:?}");
            }
        }
    }
}

#[test]
fn the_framing_lengths_corrupted_are_never_complete() {
    for (name, hello) in rustls_hellos() {
        let hello = records(&handshake(&body_of(hello)), &[40, 16384]);
        // Record lengths at 3 and 48, handshake length at 6..9.
        for (at, width) in [(3, 2), (48, 2), (6, 3)] {
            for delta in [1u32, 0x100, 0x10000] {
                for up in [true, false] {
                    let mut bad = hello.clone();
                    let mut value = [0u8; 4];
                    value[4 - width..].copy_from_slice(&bad[at..at + width]);
                    let old = u32::from_be_bytes(value);
                    let value = if up {
                        old.wrapping_add(delta)
                    } else {
                        old.wrapping_sub(delta)
                    };
                    if value.to_be_bytes()[4 - width..] == old.to_be_bytes()[4 - width..] {
                        continue;
                    }
                    bad[at..at + width].copy_from_slice(&value.to_be_bytes()[4 - width..]);
                    let parsed = checked(&bad);
                    assert!(
                        !matches!(parsed, Parsed::Complete(_)),
                        "{name} {at} {delta} {up}: {parsed:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn trailing_garbage_is_invalid() {
    for hello in [Hello::tls13(), Hello::tls12_bare()] {
        for garbage in [&[0][..], &[0, 1], &[0, 0, 0, 0], &[0xff; 9]] {
            let mut body = hello.body();
            body.extend_from_slice(garbage);
            invalid(&framed(&body));
        }
    }
    // Two zero bytes after a hello without extensions are an empty extensions block.
    let mut body = Hello::tls12_bare().body();
    body.extend_from_slice(&[0, 0]);
    complete(&framed(&body));
    for (_, hello) in rustls_hellos() {
        let mut body = body_of(hello);
        body.push(0);
        assert_eq!(invalid(&framed(&body)), "data after the extensions");
    }
    // Inside the hello's last record, after the hello: another handshake message.
    let mut message = handshake(&Hello::tls13().body());
    message.extend_from_slice(&[20, 0, 0, 0]);
    assert_eq!(
        invalid(&records(&message, &[MAX_RECORD_LEN])),
        "data after the ClientHello in its record"
    );
}

#[test]
fn extension_rules() {
    let dup = Hello::tls13().with_extensions(vec![ext(10, &[1]), ext(11, &[]), ext(10, &[2])]);
    assert_eq!(invalid(&dup.framed()), "duplicate extension");
    let dup = Hello::tls13().with_extensions(vec![
        ext(EXT_SERVER_NAME, &sni(b"a.test")),
        ext(EXT_SERVER_NAME, &sni(b"a.test")),
    ]);
    assert_eq!(invalid(&dup.framed()), "duplicate extension");
    let dup = Hello::tls13().with_extensions(vec![ext(0xffff, &[]), ext(0xffff, &[])]);
    assert_eq!(invalid(&dup.framed()), "duplicate extension");

    let not_last = Hello::tls13().with_extensions(vec![
        ext(EXT_PRE_SHARED_KEY, &psk(&[b"id"], &[32])),
        ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304])),
    ]);
    assert_eq!(
        invalid(&not_last.framed()),
        "pre_shared_key is not the last extension"
    );

    let bad_psk: [(&str, Vec<u8>); 9] = [
        ("empty PSK identity", psk(&[b""], &[32])),
        ("empty PSK identity", psk(&[b"a", b""], &[32, 32])),
        (
            "PSK binder count differs from the identity count",
            psk(&[b"a"], &[32, 32]),
        ),
        (
            "PSK binder count differs from the identity count",
            psk(&[b"a", b"b"], &[32]),
        ),
        (
            "PSK binder count differs from the identity count",
            psk(&[b"a"], &[]),
        ),
        ("no PSK identity", psk(&[], &[32])),
        ("PSK binder shorter than 32 bytes", psk(&[b"a"], &[31])),
        ("data after the PSK binders", {
            let mut d = psk(&[b"a"], &[32]);
            d.push(0);
            d
        }),
        ("truncated PSK binders", psk(&[b"a"], &[32])[..20].to_vec()),
    ];
    for (why, data) in bad_psk {
        let hello = Hello::tls13().with_extensions(vec![ext(EXT_PRE_SHARED_KEY, &data)]);
        assert_eq!(invalid(&hello.framed()), why);
    }
    // An identity without its obfuscated_ticket_age.
    let mut ids = v16(b"abc");
    ids.extend_from_slice(&[0, 0]);
    let mut data = v16(&ids);
    data.extend_from_slice(&v16(&v8(&[0; 32])));
    let hello = Hello::tls13().with_extensions(vec![ext(EXT_PRE_SHARED_KEY, &data)]);
    assert_eq!(
        invalid(&hello.framed()),
        "truncated PSK obfuscated_ticket_age"
    );

    // A malformed server_name is no name, not an error: rustls takes much of it.
    let bad_sni: [Vec<u8>; 6] = [
        v16(&[]),
        sni(b""),
        {
            let mut d = sni(b"a.test");
            d.push(0);
            d
        },
        vec![0],
        {
            let mut list = vec![7];
            list.extend_from_slice(b"localhost");
            v16(&list)
        },
        vec![],
    ];
    for data in bad_sni {
        let hello = Hello::tls13().with_extensions(vec![ext(EXT_SERVER_NAME, &data)]);
        let info = complete(&hello.framed());
        assert!(
            info.server_name.is_none() || info.server_name.as_deref() == Some("a.test"),
            "{data:?}"
        );
    }
    // Two host names: the first.
    let mut list = vec![0];
    list.extend_from_slice(&v16(b"a.test"));
    list.push(0);
    list.extend_from_slice(&v16(b"b.test"));
    let hello = Hello::tls13().with_extensions(vec![ext(EXT_SERVER_NAME, &v16(&list))]);
    assert_eq!(
        complete(&hello.framed()).server_name.as_deref(),
        Some("a.test")
    );

    for data in [v8(&[]), v8(&[3]), v8(&[3, 4, 3]), vec![], {
        let mut d = versions(&[0x0304]);
        d.push(3);
        d
    }] {
        let hello = Hello::tls13().with_extensions(vec![ext(EXT_SUPPORTED_VERSIONS, &data)]);
        invalid(&hello.framed());
    }
}

#[test]
fn fixed_field_rules() {
    let mut hello = Hello::tls13();
    hello.session_id = vec![1; 33];
    assert_eq!(
        invalid(&hello.framed()),
        "legacy_session_id longer than 32 bytes"
    );
    for suites in [vec![], vec![0x13], vec![0x13, 1, 0x13]] {
        let mut hello = Hello::tls13();
        hello.suites = suites;
        assert_eq!(invalid(&hello.framed()), "malformed cipher_suites");
    }
    for compression in [vec![], vec![1], vec![1, 2]] {
        let mut hello = Hello::tls13();
        hello.compression = compression;
        assert_eq!(
            invalid(&hello.framed()),
            "legacy_compression_methods without null"
        );
    }
    // Any legacy_version is read (rustls ignores it for TLS 1.3).
    for version in [0x0203, 0x0403, 0, 0xff03] {
        let mut hello = Hello::tls13();
        hello.version = version;
        assert!(complete(&hello.framed()).supports_tls13);
    }
    // Any minor version is taken: 0x0300 to 0x03ff.
    let mut hello = Hello::tls13();
    hello.version = 0x0301;
    complete(&hello.framed());
}

#[test]
fn record_rules() {
    let good = Hello::tls13().framed();
    // Not a handshake record, at the first byte (an alert is read first: see below).
    for first in [20, 23, 24, 0, 0x16 + 0x80] {
        assert_eq!(invalid(&[first]), "not a TLS handshake");
        let mut bad = good.clone();
        bad[0] = first;
        assert_eq!(invalid(&bad), "not a TLS handshake");
    }
    // Up to four warning alerts before the hello, as rustls takes them; not a fifth, not a
    // fatal one, not a malformed one, and none inside the hello.
    let warning = [21, 3, 3, 0, 2, 1, 46];
    for n in 0..=4 {
        let mut flight = warning.repeat(n);
        flight.extend_from_slice(&good);
        assert!(complete(&flight).supports_tls13, "{n}");
        assert_eq!(parse(&flight[..flight.len() - 1]), Parsed::Incomplete);
    }
    let mut five = warning.repeat(5);
    five.extend_from_slice(&good);
    assert_eq!(
        invalid(&five),
        "more than four alerts before the ClientHello"
    );
    for bad in [
        [21, 3, 3, 0, 2, 2, 46],
        [21, 3, 3, 0, 3, 1, 46],
        [21, 4, 3, 0, 2, 1, 46],
    ] {
        let mut flight = bad.to_vec();
        flight.extend_from_slice(&good);
        assert_eq!(
            invalid(&flight),
            "an alert before the ClientHello that is not a warning"
        );
    }
    assert_eq!(parse(&warning[..6]), Parsed::Incomplete);
    let split = records(&handshake(&Hello::tls13().body()), &[10]);
    let mut inside = split[..15].to_vec();
    inside.extend_from_slice(&warning);
    assert_eq!(
        invalid(&inside),
        "a non-handshake record inside the ClientHello"
    );
    // The second hello takes no alert.
    assert_eq!(
        ClientHelloParser::after_retry().parse(&warning),
        Parsed::Invalid("not a TLS handshake")
    );
    // The record version's major byte, at the second.
    for major in [0, 2, 4, 0xff] {
        assert_eq!(invalid(&[22, major]), "bad record version");
    }
    // Empty and oversized records, at the header.
    assert_eq!(invalid(&[22, 3, 1, 0, 0]), "empty handshake record");
    // rustls's limit: 2^14 + 2048 = 0x4800.
    assert_eq!(
        invalid(&[22, 3, 1, 0x48, 1]),
        "record longer than 2^14 + 2048 bytes"
    );
    assert_eq!(
        invalid(&[22, 3, 1, 0xff, 0xff]),
        "record longer than 2^14 + 2048 bytes"
    );
    assert_eq!(parse(&[22, 3, 1, 0x48, 0]), Parsed::Incomplete);
    // A record that is not a handshake between the hello's fragments.
    let split = records(&handshake(&Hello::tls13().body()), &[10]);
    let mut bad = split[..15].to_vec();
    bad.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert_eq!(
        invalid(&bad),
        "a non-handshake record inside the ClientHello"
    );
    let mut bad = split.clone();
    bad[15] = 21;
    assert_eq!(
        invalid(&bad),
        "a non-handshake record inside the ClientHello"
    );
    let mut bad = split.clone();
    bad[16] = 2;
    assert_eq!(invalid(&bad), "bad record version");
    // The first handshake message must be a ClientHello: known at its first byte.
    for msg_type in [0, 2, 11, 20, 0xff] {
        assert_eq!(
            invalid(&[22, 3, 1, 0, 4, msg_type]),
            "the first handshake message is not a ClientHello"
        );
    }
}

#[test]
fn too_large_is_known_from_the_header() {
    // rustls's limit, 0xffff: decided from the length's first byte.
    assert_eq!(invalid(&[22, 3, 1, 0x48, 0, 1, 1]), "ClientHello too large");
    assert_eq!(parse(&[22, 3, 1, 0x48, 0, 1, 0]), Parsed::Incomplete);
    assert_eq!(
        parse(&[22, 3, 1, 0x48, 0, 1, 0, 0xff, 0xff]),
        Parsed::Incomplete
    );
    // Split over records of one byte.
    let header = records(&[1, 1, 0, 0], &[1]);
    assert_eq!(invalid(&header[..12]), "ClientHello too large");
    assert_eq!(parse(&header[..6]), Parsed::Incomplete);
}

/// A hello whose body is exactly `len` bytes long, with a padding extension.
fn hello_of_len(len: usize) -> Vec<u8> {
    let base = Hello::tls13().with_extensions(vec![
        ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304])),
        ext(21, &[]),
    ]);
    let padding = len - base.body().len();
    let hello = base.with_extensions(vec![
        ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304])),
        ext(21, &vec![0; padding]),
    ]);
    let body = hello.body();
    assert_eq!(body.len(), len);
    body
}

#[test]
fn the_largest_hello_in_the_smallest_records() {
    let body = hello_of_len(MAX_CLIENT_HELLO);
    let message = handshake(&body);
    assert!(complete(&records(&message, &[MAX_RECORD_LEN])).supports_tls13);
    // One byte per record: the worst case MAX_BUFFERED allows for.
    let split = records(&message, &[1]);
    assert_eq!(split.len(), MAX_BUFFERED);
    let mut parser = ClientHelloParser::new();
    for end in (0..split.len()).step_by(13) {
        assert_eq!(parser.parse(&split[..end]), Parsed::Incomplete);
    }
    assert_eq!(parse(&split[..split.len() - 1]), Parsed::Incomplete);
    assert!(matches!(parser.parse(&split), Parsed::Complete(_)));
    assert!(matches!(parse(&split), Parsed::Complete(_)));

    let too_large = handshake(&hello_of_len(MAX_CLIENT_HELLO + 1));
    assert_eq!(
        invalid(&records(&too_large, &[MAX_RECORD_LEN])),
        "ClientHello too large"
    );
}

#[test]
fn not_tls_at_all() {
    let http: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n",
        b"PRI * HTTP/2.0\r\n",
        b"\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ];
    for bytes in http {
        assert_eq!(invalid(bytes), "not a TLS handshake");
    }
    // An SSLv2-compatible CLIENT-HELLO: a two-byte header with the high bit set.
    let mut sslv2 = vec![0x80, 0x2e, 1, 3, 1, 0, 0x15, 0, 0, 0, 0x10];
    sslv2.extend_from_slice(&[0; 0x15 + 0x10]);
    assert_eq!(invalid(&sslv2), "not a TLS handshake");
    assert_eq!(parse(&[]), Parsed::Incomplete);
    assert_eq!(parse(&[22]), Parsed::Incomplete);
}

#[test]
fn the_incremental_parser_refuses_a_shrinking_input() {
    let hello = Hello::tls13().framed();
    let split = records(&handshake(&Hello::tls13().body()), &[20]);
    let mut parser = ClientHelloParser::new();
    assert_eq!(parser.parse(&split[..60]), Parsed::Incomplete);
    assert_eq!(
        parser.parse(&split[..10]),
        Parsed::Invalid("input shorter than in an earlier call")
    );
    // Once decided, the answer stays.
    assert_eq!(
        parser.parse(&hello),
        Parsed::Invalid("input shorter than in an earlier call")
    );
}

// --- Properties ---------------------------------------------------------------------------

/// Valid hellos to mutate: hand-built and rustls's.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![Hello::tls13().framed(), Hello::tls12_bare().framed()];
    seeds.extend(rustls_hellos().iter().map(|(_, h)| h.clone()));
    seeds
}

fn host_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..40)
}

prop_compose! {
    /// Hellos of every shape, and what parsing them must give.
    fn generated_hello()(
        session_id in proptest::collection::vec(any::<u8>(), 0..=32),
        suites in 1usize..40,
        compression in proptest::collection::vec(any::<u8>(), 0..4),
        extensions in proptest::option::of((
            proptest::option::of(host_name()),
            proptest::option::of(proptest::collection::vec(any::<u16>(), 1..10)),
            proptest::collection::vec((16u16..40, proptest::collection::vec(any::<u8>(), 0..30)), 0..6),
            proptest::option::of(proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..60), 32usize..=64), 1..5)),
        )),
    ) -> (Hello, ClientHelloInfo) {
        let mut compression = compression;
        compression.push(0);
        let mut info = ClientHelloInfo { session_id: session_id.clone(), ..Default::default() };
        let extensions = extensions.map(|(name, vers, others, psks)| {
            let mut exts = Vec::new();
            if let Some(name) = name {
                if name.iter().all(u8::is_ascii_graphic) {
                    info.server_name = Some(String::from_utf8(name.clone()).unwrap());
                }
                exts.push(ext(EXT_SERVER_NAME, &sni(&name)));
            }
            let mut seen = std::collections::HashSet::new();
            for (ext_type, data) in others {
                if seen.insert(ext_type) && ext_type != EXT_PRE_SHARED_KEY
                    && ext_type != EXT_SUPPORTED_VERSIONS && ext_type != EXT_ALPN {
                    info.session_ticket |= ext_type == EXT_SESSION_TICKET;
                    info.offers_session_ticket |=
                        ext_type == EXT_SESSION_TICKET && !data.is_empty();
                    exts.push((ext_type, data));
                }
            }
            if let Some(vers) = vers {
                info.supports_tls13 = vers.contains(&VERSION_TLS13);
                info.versions = vers.clone();
                exts.push(ext(EXT_SUPPORTED_VERSIONS, &versions(&vers)));
            }
            if let Some(psks) = psks {
                let ids: Vec<&[u8]> = psks.iter().map(|(id, _)| &id[..]).collect();
                let binders: Vec<usize> = psks.iter().map(|&(_, b)| b).collect();
                info.psk_identities = psks.iter().map(|(id, _)| id.clone()).collect();
                exts.push(ext(EXT_PRE_SHARED_KEY, &psk(&ids, &binders)));
            }
            exts
        });
        let hello = Hello {
            version: 0x0303,
            session_id,
            suites: vec![0x13; 2 * suites],
            compression,
            extensions,
        };
        (hello, info)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        checked(&bytes);
    }

    #[test]
    fn random_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1usize..300, 1..4),
    ) {
        checked(&records(&handshake(&body), &sizes));
    }

    #[test]
    fn mutated_hellos_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let seeds = seeds();
        let mut hello = seed.get(&seeds).clone();
        for (at, byte, kind) in edits {
            let i = at.index(hello.len() + 1);
            match kind {
                0 if i < hello.len() => hello[i] = byte,
                1 if i < hello.len() => hello[i] ^= 1 << (byte % 8),
                2 => hello.insert(i, byte),
                _ if i < hello.len() => { hello.remove(i); }
                _ => {}
            }
        }
        checked(&hello);
    }

    #[test]
    fn every_prefix_of_a_valid_hello_is_incomplete(
        seed in any::<prop::sample::Index>(),
        sizes in proptest::collection::vec(1usize..400, 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let seeds = seeds();
        let seed: &Vec<u8> = seed.get(&seeds);
        let hello = records(&handshake(&body_of(seed)), &sizes);
        let cut = cut.index(hello.len());
        prop_assert_eq!(parse(&hello[..cut]), Parsed::Incomplete);
        prop_assert!(matches!(checked(&hello), Parsed::Complete(_)));
    }

    #[test]
    fn generated_hellos_parse_to_what_they_hold(
        (hello, info) in generated_hello(),
        sizes in proptest::collection::vec(1usize..500, 1..4),
    ) {
        let bytes = records(&handshake(&hello.body()), &sizes);
        prop_assert_eq!(checked(&bytes), Parsed::Complete(info));
    }
}

// --- The fuzzing seed corpus --------------------------------------------------------------

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_hello")
}

/// The first flight an `openssl s_client` run sends: runs it against a loopback listener
/// and reads until the ClientHello is complete.
fn openssl_hello(args: &[&str]) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut parser = ClientHelloParser::new();
    while parser.parse(&buf) == Parsed::Incomplete {
        let mut chunk = [0; 4096];
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0, "openssl closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    buf
}

/// Runs an `openssl s_server` once, and a client that saves its session to `sess`.
fn openssl_session(server_args: &[&str], client_args: &[&str], dir: &Path, sess: &Path) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, pki().server.cert.pem()).unwrap();
    std::fs::write(&key, pki().server.key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-naccept", "1", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .args(server_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut client = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-sess_out")
        .arg(sess)
        .args(client_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stay connected a moment, for the TLS 1.3 tickets.
    std::thread::sleep(std::time::Duration::from_secs(1));
    client.stdin.take().unwrap().write_all(b"").unwrap();
    client.wait().unwrap();
    let _ = server.kill();
    server.wait().unwrap();
    assert!(sess.exists(), "openssl saved no session");
}

/// Makes the fuzzing seed corpus and checks it: `valid-*.bin` files are whole ClientHellos
/// (of rustls, of `openssl s_client`, and hand-built), `invalid-*.bin` malformed ones. With
/// `REPRISE_WRITE_CORPUS=1` it also (re)writes them into `fuzz/corpus/client_hello`, which
/// `tests/client_hello_corpus.rs` replays.
#[test]
fn seed_corpus_parses_as_named() {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, hello) in rustls_hellos() {
        files.push((format!("valid-rustls-{name}.bin"), hello.clone()));
    }
    let resume = &rustls_hellos()[4].1;
    files.push((
        "valid-rustls-tls13-resume-small-records.bin".into(),
        records(&handshake(&body_of(resume)), &[1, 3, 9, 60]),
    ));
    let mut with_ccs = rustls_hellos()[0].1.clone();
    with_ccs.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
    files.push(("valid-rustls-tls13-then-ccs.bin".into(), with_ccs));
    files.push((
        "valid-hand-tls13-two-psks.bin".into(),
        Hello::tls13().framed(),
    ));
    files.push((
        "valid-hand-tls12-no-extensions.bin".into(),
        Hello::tls12_bare().framed(),
    ));

    let with = |exts| Hello::tls13().with_extensions(exts).framed();
    files.push((
        "invalid-http.bin".into(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ));
    let mut sslv2 = vec![0x80, 0x2e, 1, 3, 1, 0, 0x15, 0, 0, 0, 0x10];
    sslv2.extend_from_slice(&[0x0a; 0x15 + 0x10]);
    files.push(("invalid-sslv2.bin".into(), sslv2));
    files.push(("invalid-alert.bin".into(), vec![21, 3, 3, 0, 2, 2, 40]));
    files.push((
        "invalid-duplicate-extension.bin".into(),
        with(vec![ext(10, &[1]), ext(10, &[2])]),
    ));
    files.push((
        "invalid-psk-not-last.bin".into(),
        with(vec![
            ext(EXT_PRE_SHARED_KEY, &psk(&[b"id"], &[32])),
            ext(EXT_SUPPORTED_VERSIONS, &versions(&[0x0304])),
        ]),
    ));
    files.push((
        "invalid-psk-empty-identity.bin".into(),
        with(vec![ext(EXT_PRE_SHARED_KEY, &psk(&[b""], &[32]))]),
    ));
    files.push((
        "invalid-psk-binder-count.bin".into(),
        with(vec![ext(EXT_PRE_SHARED_KEY, &psk(&[b"a", b"b"], &[32]))]),
    ));
    let mut body = Hello::tls13().body();
    body.extend_from_slice(&[0, 0]);
    files.push(("invalid-trailing-garbage.bin".into(), framed(&body)));
    let body = Hello::tls13().body();
    files.push((
        "invalid-truncated.bin".into(),
        framed(&body[..body.len() - 1]),
    ));
    files.push((
        "invalid-too-large.bin".into(),
        vec![22, 3, 1, 0x48, 0, 1, 1, 0, 0],
    ));
    files.push((
        "invalid-record-too-long.bin".into(),
        vec![22, 3, 1, 0x48, 1, 1],
    ));
    let mut hello = Hello::tls13();
    hello.session_id = vec![7; 33];
    files.push(("invalid-session-id-33.bin".into(), hello.framed()));
    let mut message = handshake(&Hello::tls12_bare().body());
    message.extend_from_slice(&[20, 0, 0, 0]);
    files.push((
        "invalid-data-after-hello-in-record.bin".into(),
        records(&message, &[MAX_RECORD_LEN]),
    ));

    {
        let tmp = std::env::temp_dir().join(format!("reprise-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        files.push((
            "valid-openssl-default.bin".into(),
            openssl_hello(&["-servername", "localhost"]),
        ));
        let sess = tmp.join("tls13.sess");
        openssl_session(
            &["-tls1_3"],
            &["-tls1_3", "-servername", "localhost"],
            &tmp,
            &sess,
        );
        files.push((
            "valid-openssl-tls13-resume.bin".into(),
            openssl_hello(&[
                "-tls1_3",
                "-servername",
                "localhost",
                "-sess_in",
                sess.to_str().unwrap(),
            ]),
        ));
        let sess = tmp.join("tls12.sess");
        openssl_session(&["-tls1_2", "-no_ticket"], &["-tls1_2"], &tmp, &sess);
        files.push((
            "valid-openssl-tls12-resume.bin".into(),
            openssl_hello(&["-tls1_2", "-sess_in", sess.to_str().unwrap()]),
        ));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    for (name, bytes) in &files {
        let parsed = parse(bytes);
        if name.starts_with("valid-") {
            assert!(matches!(parsed, Parsed::Complete(_)), "{name}: {parsed:?}");
        } else {
            assert!(matches!(parsed, Parsed::Invalid(_)), "{name}: {parsed:?}");
        }
    }
    if std::env::var_os("REPRISE_WRITE_CORPUS").is_some_and(|v| v == "1") {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
