//! The ClientHello parser agrees with rustls: every first flight a rustls server accepts (it
//! answers with a ServerHello or a HelloRetryRequest, no alert) and that fits in
//! `MAX_FIRST_FLIGHT` bytes is a whole ClientHello to the parser, with what rustls saw in it.
//!
//! The hellos come from rustls clients (fresh and resuming, TLS 1.2 and 1.3, the second hello
//! after a HelloRetryRequest, with and without a ticket), from those hellos grown with a padding
//! extension up to rustls's own limits and cut into records of every size rustls takes, and
//! from seeded random mutations of them. The HelloRetryRequest flows and the large hellos are
//! also written to the fuzzing corpus with `REPRISE_WRITE_CORPUS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use reprise_rustls::client_hello::{
    parse, ClientHelloInfo, ClientHelloParser, Parsed, MAX_FIRST_FLIGHT, MAX_RECORD_LEN,
};
use reprise_testkit::Pki;
use rustls::crypto::ring::{default_provider, kx_group};
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection,
    SupportedProtocolVersion,
};

/// The rustls configurations these tests use, on the test PKI.
trait Configs {
    /// A server; `only_p384` makes clients that lead with X25519 get a HelloRetryRequest.
    fn server(&self, only_p384: bool) -> Arc<ServerConfig>;
    /// A server that keeps its sessions in `storage`.
    fn server_sharing(
        &self,
        only_p384: bool,
        storage: Arc<dyn rustls::server::StoresServerSessions>,
    ) -> Arc<ServerConfig>;
    /// A client for `versions` that trusts the test CA.
    fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig>;
}

impl Configs for Pki {
    fn server(&self, only_p384: bool) -> Arc<ServerConfig> {
        self.server_sharing(only_p384, rustls::server::ServerSessionMemoryCache::new(64))
    }

    fn server_sharing(
        &self,
        only_p384: bool,
        storage: Arc<dyn rustls::server::StoresServerSessions>,
    ) -> Arc<ServerConfig> {
        let mut provider = default_provider();
        if only_p384 {
            provider.kx_groups = vec![kx_group::SECP384R1];
        }
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.server_chain(), self.server_key())
            .unwrap();
        config.send_tls13_tickets = 2;
        config.session_storage = storage;
        Arc::new(config)
    }

    fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Everything `from` wants to send.
fn drain<T>(from: &mut ConnectionCommon<T>) -> Vec<u8> {
    let mut out = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut out).unwrap();
    }
    out
}

/// Feeds `bytes` to a connection; false if it rejects them.
fn feed<T>(to: &mut ConnectionCommon<T>, bytes: &[u8]) -> bool
where
    ConnectionCommon<T>: std::ops::DerefMut,
{
    let mut rd = bytes;
    while !rd.is_empty() {
        match to.read_tls(&mut rd) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if to.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

/// Whether a fresh rustls server accepts `flight` as a client's first: it answers without an
/// alert.
fn rustls_accepts(config: &Arc<ServerConfig>, flight: &[u8]) -> bool {
    let mut server = ServerConnection::new(config.clone()).unwrap();
    feed(&mut server, flight) && server.wants_write() && server.is_handshaking()
}

/// A whole handshake, then the tickets: the client keeps what it needs to resume.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
    for _ in 0..10 {
        let to_server = drain(client);
        assert!(feed(server, &to_server));
        let to_client = drain(server);
        assert!(feed(client, &to_client));
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            return;
        }
    }
    panic!("the handshake did not finish");
}

/// rustls clients' first flights: fresh and resuming, TLS 1.2 and 1.3.
fn client_hellos(pki: &Pki) -> Vec<(String, Vec<u8>)> {
    let server = pki.server(false);
    let mut out = Vec::new();
    for (name, versions) in [
        ("tls13", &[&rustls::version::TLS13][..]),
        ("tls12", &[&rustls::version::TLS12][..]),
        ("both", rustls::ALL_VERSIONS),
    ] {
        let config = pki.client(versions);
        let mut client = ClientConnection::new(config.clone(), localhost()).unwrap();
        let first = drain(&mut client);
        out.push((format!("{name}-fresh"), first.clone()));
        let mut server_conn = ServerConnection::new(server.clone()).unwrap();
        assert!(feed(&mut server_conn, &first));
        let mut client_again = client;
        handshake(&mut client_again, &mut server_conn);
        let mut resuming = ClientConnection::new(config, localhost()).unwrap();
        out.push((format!("{name}-resume"), drain(&mut resuming)));
    }
    out
}

/// The second flight after a HelloRetryRequest, fresh and with a ticket. The ticket comes from
/// a server that takes X25519 (so the client leads with it again), and is offered to one that
/// shares its sessions but takes only P-384.
fn retry_flights(pki: &Pki) -> Vec<(String, Vec<u8>)> {
    let storage: Arc<dyn rustls::server::StoresServerSessions> =
        rustls::server::ServerSessionMemoryCache::new(64);
    let p384 = pki.server_sharing(true, storage.clone());
    let x25519 = pki.server_sharing(false, storage);
    let config = pki.client(&[&rustls::version::TLS13]);
    let mut out = Vec::new();
    for name in ["retry-fresh", "retry-resume"] {
        if name == "retry-resume" {
            let mut client = ClientConnection::new(config.clone(), localhost()).unwrap();
            let mut server_conn = ServerConnection::new(x25519.clone()).unwrap();
            handshake(&mut client, &mut server_conn);
        }
        let mut client = ClientConnection::new(config.clone(), localhost()).unwrap();
        let mut server_conn = ServerConnection::new(p384.clone()).unwrap();
        let first = drain(&mut client);
        assert!(matches!(parse(&first), Parsed::Complete(_)), "{name}");
        assert!(feed(&mut server_conn, &first));
        let retry = drain(&mut server_conn);
        assert!(feed(&mut client, &retry));
        let second = drain(&mut client);
        // rustls accepts the second flight: it answers with its ServerHello.
        assert!(feed(&mut server_conn, &second), "{name}");
        assert!(server_conn.wants_write(), "{name}");
        out.push((name.to_owned(), second));
        handshake(&mut client, &mut server_conn);
        assert_eq!(
            client.handshake_kind(),
            Some(if name == "retry-resume" {
                rustls::HandshakeKind::Resumed
            } else {
                rustls::HandshakeKind::FullWithHelloRetryRequest
            }),
            "{name}"
        );
    }
    out
}

/// The handshake message of a single-record first flight.
fn message_of(flight: &[u8]) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
    assert_eq!(flight.len(), 5 + len, "one record");
    flight[5..].to_vec()
}

/// A ClientHello message with a padding extension (21) of `pad` bytes first in its extensions.
fn padded(message: &[u8], pad: usize) -> Vec<u8> {
    let body = &message[4..];
    let mut at = 2 + 32;
    at += 1 + usize::from(body[at]);
    at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    at += 1 + usize::from(body[at]);
    let ext_len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let new_ext_len = ext_len + 4 + pad;
    let mut out_body = body[..at].to_vec();
    out_body.extend_from_slice(&u16::try_from(new_ext_len).unwrap().to_be_bytes());
    out_body.extend_from_slice(&[0, 21]);
    out_body.extend_from_slice(&u16::try_from(pad).unwrap().to_be_bytes());
    out_body.resize(out_body.len() + pad, 0);
    out_body.extend_from_slice(&body[at + 2..]);
    let len = out_body.len();
    let mut out = vec![1, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    out.extend_from_slice(&out_body);
    out
}

/// A handshake message in records of at most `size` bytes each.
fn framed(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The parser's reading of a flight rustls accepted: it must be whole, and name what the
/// flight offers.
fn parser_reads(name: &str, flight: &[u8], retry: bool) -> ClientHelloInfo {
    let mut parser = if retry {
        ClientHelloParser::after_retry()
    } else {
        ClientHelloParser::new()
    };
    // In pieces, as TCP may deliver them.
    let mut parsed = parser.parse(&[]);
    for end in (0..flight.len()).step_by(997).skip(1).chain([flight.len()]) {
        parsed = parser.parse(&flight[..end]);
    }
    match parsed {
        Parsed::Complete(info) => info,
        other => panic!(
            "{name}: rustls accepts this flight ({} bytes), the parser says {other:?}",
            flight.len()
        ),
    }
}

/// A small seeded generator: the same mutations on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_hello_rustls_accepts_is_read_by_the_parser() {
    let pki = Pki::new();
    let server = pki.server(false);
    let mut corpus = Vec::new();

    let hellos = client_hellos(&pki);
    for (name, flight) in &hellos {
        assert!(rustls_accepts(&server, flight), "{name}");
        let info = parser_reads(name, flight, false);
        if name.ends_with("-resume") && name.starts_with("tls13") {
            assert!(!info.psk_identities.is_empty(), "{name}");
        }
        if name == "tls12-resume" {
            assert!(!info.session_id.is_empty(), "{name}");
        }
        assert_eq!(info.server_name.as_deref(), Some("localhost"), "{name}");
    }

    // Warning alerts before the hello: rustls ignores four, and fails on a fifth.
    let warning = [21, 3, 3, 0, 2, 1, 46];
    for (name, flight) in &hellos {
        for n in 1..=5 {
            let mut alerted = warning.repeat(n);
            alerted.extend_from_slice(flight);
            let accepted = rustls_accepts(&server, &alerted);
            assert_eq!(accepted, n <= 4, "{name} after {n} alerts");
            if accepted {
                parser_reads(&format!("{name} after {n} alerts"), &alerted, false);
            }
        }
    }

    // HelloRetryRequest flows: the second flight starts with a change_cipher_spec record.
    for (name, flight) in retry_flights(&pki) {
        let info = parser_reads(&name, &flight, true);
        assert!(info.supports_tls13, "{name}");
        if name == "retry-resume" {
            assert_eq!(info.psk_identities.len(), 1, "{name}");
        }
        corpus.push((format!("valid-rustls-{name}.bin"), flight));
    }

    // Grown and cut: the 33 KiB hello, a 16,923-byte record, rustls's limits.
    let fresh = &hellos.iter().find(|(n, _)| n == "both-fresh").unwrap().1;
    let message = message_of(fresh);
    let mut accepted_beyond_old_limits = 0;
    // The record: one of 16,923 bytes, the whole hello.
    let pad_16923 = 16_923 - 4 - message.len();
    for pad in [0, pad_16923, 33 * 1024, 60_000, 65_000] {
        let grown = padded(&message, pad);
        for size in [1, 517, 4096, 16_384, 16_923, MAX_RECORD_LEN, 1 << 20] {
            // One-byte records only for small hellos: rustls's buffer takes 64 KiB at most.
            if size == 1 && grown.len() > 4096 {
                continue;
            }
            let flight = framed(&grown, size.min(MAX_RECORD_LEN + 100));
            let name = format!("padded {pad}, records of {size}");
            if !rustls_accepts(&server, &flight) || flight.len() > MAX_FIRST_FLIGHT {
                continue;
            }
            parser_reads(&name, &flight, false);
            if grown.len() > 32 * 1024 + 4 || (size > 16_384 && grown.len() > 16_384) {
                accepted_beyond_old_limits += 1;
            }
            if pad == 33 * 1024 && size == 16_384 {
                corpus.push(("valid-rustls-33k.bin".to_owned(), flight));
            } else if pad == pad_16923 && size == 16_923 {
                assert_eq!(flight.len(), 5 + 16_923);
                corpus.push(("valid-rustls-record-16923.bin".to_owned(), flight));
            }
        }
    }
    assert!(
        accepted_beyond_old_limits >= 4,
        "{accepted_beyond_old_limits}"
    );

    // Mutations: whatever rustls still accepts, the parser reads.
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let (mut tried, mut accepted) = (0, 0);
    for (name, flight) in &hellos {
        for _ in 0..500 {
            let mut mutant = flight.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(mutant.len());
                mutant[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => mutant[at].wrapping_add(1),
                    _ => rng.next() as u8,
                };
            }
            tried += 1;
            if rustls_accepts(&server, &mutant) {
                accepted += 1;
                parser_reads(&format!("{name} mutated: {mutant:02x?}"), &mutant, false);
            }
        }
    }
    println!("{tried} mutants, {accepted} accepted by rustls, all read by the parser");
    assert!(accepted > 0);

    if std::env::var_os("REPRISE_WRITE_CORPUS").is_some_and(|v| v == "1") {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_hello");
        for (name, bytes) in &corpus {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
