//! Attack 1 of issue 13, against the real binary: a TLS 1.3 ticket resumes at most once across
//! a two-instance Redis fleet, whatever the ClientHello looks like.
//!
//! The client here writes its ClientHellos by hand (with real PSK binders, computed from the
//! resumption PSK that `openssl s_client` saved with the ticket), so that it can offer the
//! ticket where the prefetch does not read it: fifth of five identities, in the second
//! ClientHello after a HelloRetryRequest, in a 33 KiB hello, or in one 16,923-byte record. The
//! server takes the ticket when its ServerHello accepts the PSK (`pre_shared_key`): that is
//! when the ticket is used, and what is counted. The legitimate use is `openssl s_client
//! -sess_in` on the other instance, which must say `Reused`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{fleet_flags, path_in, reprise, request, Server};
use reprise_testkit::{wait_until, Pki, RedisServer};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{agreement, digest, hmac};

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_PADDING: u16 = 21;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;
const X25519: u16 = 0x001d;
const TLS_AES_128_GCM_SHA256: u16 = 0x1301;
const MAX_FRAGMENT: usize = 1 << 14;

/// The random of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256 of "HelloRetryRequest".
fn hrr_random() -> Vec<u8> {
    digest::digest(&digest::SHA256, b"HelloRetryRequest")
        .as_ref()
        .to_vec()
}

/// Two instances on one Redis, with one certificate and key file.
struct Fleet {
    _redis: RedisServer,
    dir: tempfile::TempDir,
    a: Server,
    b: Server,
}

impl Fleet {
    fn start() -> Fleet {
        let redis = RedisServer::start();
        let pki = Pki::new().write_pem();
        let dir = tempfile::tempdir().unwrap();
        let out = reprise().args(["keygen", "--name", "k1"]).output().unwrap();
        assert!(out.status.success());
        let keys = path_in(dir.path(), "keys");
        std::fs::write(&keys, &out.stdout).unwrap();
        let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
        let url = redis.url();
        let instance = || {
            let tls = ["--cert", cert.as_str(), "--key", key.as_str()];
            Server::start(&[&tls[..], &fleet_flags(&url, &keys)].concat())
        };
        let (a, b) = (instance(), instance());
        for s in [&a, &b] {
            assert!(wait_until(Duration::from_secs(10), || s
                .metric("reprise_redis_connected")
                == 1));
        }
        Fleet {
            _redis: redis,
            dir,
            a,
            b,
        }
    }

    /// A full TLS 1.3 handshake on instance A, its last ticket saved by s_client; waits until
    /// A has written the tickets it issued to Redis.
    fn ticket(&self, name: &str) -> Ticket {
        let file = path_in(self.dir.path(), name);
        let before = self.a.metric("reprise_redis_stores_written_total");
        assert_eq!(request(&self.a, &["-tls1_3", "-sess_out", &file]), "New");
        assert!(wait_until(Duration::from_secs(10), || self
            .a
            .metric("reprise_redis_stores_written_total")
            >= before + 2));
        Ticket::read(file)
    }
}

/// A TLS 1.3 ticket as the client holds it.
struct Ticket {
    file: String,
    identity: Vec<u8>,
    psk: Vec<u8>,
}

impl Ticket {
    /// Reads the ticket and its resumption PSK from an s_client session file.
    fn read(file: String) -> Ticket {
        let out = Command::new("openssl")
            .args(["sess_id", "-in", &file, "-text", "-noout"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Cipher    : TLS_AES_128_GCM_SHA256"),
            "the binders here are SHA-256 ones: {text}"
        );
        let psk = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Resumption PSK: "))
            .map(unhex)
            .unwrap();
        let mut identity = Vec::new();
        let mut in_ticket = false;
        for line in text.lines() {
            if line.trim() == "TLS session ticket:" {
                in_ticket = true;
                continue;
            }
            if !in_ticket {
                continue;
            }
            // `0000 - b5 bb 4e ec ca 73 7f 4d-fe 4f ef ce 69 d3 3c 90   ..N..s.M.O..i.<.`
            let Some((_, rest)) = line.split_once(" - ") else {
                break;
            };
            let bytes = rest.split("   ").next().unwrap().replace('-', " ");
            identity.extend(bytes.split_whitespace().map(|b| {
                assert_eq!(b.len(), 2, "{line}");
                u8::from_str_radix(b, 16).unwrap()
            }));
        }
        assert_eq!((psk.len(), identity.len()), (32, 32), "{text}");
        Ticket {
            file,
            identity,
            psk,
        }
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).unwrap();
    out
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

/// HKDF-Expand-Label (RFC 8446 §7.1) for a 32-byte output: one HMAC block.
fn expand_label(secret: &[u8], label: &str, context: &[u8]) -> Vec<u8> {
    let label = format!("tls13 {label}");
    let mut info = vec![0, 32, label.len() as u8];
    info.extend_from_slice(label.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    hmac256(secret, &[&info, &[1]])
}

/// The PSK binder (RFC 8446 §4.2.11.2) of a resumption PSK over a transcript hash.
fn binder(psk: &[u8], transcript_hash: &[u8]) -> Vec<u8> {
    let early_secret = hmac256(&[0; 32], &[psk]);
    let binder_key = expand_label(&early_secret, "res binder", &sha256(&[]));
    let finished_key = expand_label(&binder_key, "finished", &[]);
    hmac256(&finished_key, &[transcript_hash])
}

fn u16_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn u8_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = vec![body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend(u16_prefixed(body));
    out
}

/// One ClientHello of a connection.
struct Hello<'a> {
    identities: Vec<Vec<u8>>,
    /// An X25519 share, or none at all (the server then asks for one: HelloRetryRequest).
    share: Option<&'a [u8]>,
    /// The length of the handshake message, reached with a padding extension.
    size: Option<usize>,
}

/// The ClientHello handshake message, with every binder computed from `psk` over `prefix` (the
/// transcript before it: empty, or the HelloRetryRequest's) and the hello up to its binders.
fn client_hello(
    hello: &Hello<'_>,
    random: &[u8; 32],
    session_id: &[u8; 32],
    psk: &[u8],
    prefix: &[u8],
) -> Vec<u8> {
    let build = |padding: Option<usize>| {
        let mut exts = Vec::new();
        let name = u16_prefixed(&[&[0u8][..], &u16_prefixed(b"localhost")].concat());
        exts.extend(extension(EXT_SERVER_NAME, &name));
        exts.extend(extension(
            EXT_SUPPORTED_GROUPS,
            &u16_prefixed(&X25519.to_be_bytes()),
        ));
        exts.extend(extension(
            EXT_SIGNATURE_ALGORITHMS,
            &u16_prefixed(&[0x04, 0x03, 0x08, 0x04, 0x08, 0x07]),
        ));
        exts.extend(extension(EXT_SUPPORTED_VERSIONS, &u8_prefixed(&[3, 4])));
        exts.extend(extension(EXT_PSK_MODES, &u8_prefixed(&[1])));
        let shares = match hello.share {
            Some(public) => [&X25519.to_be_bytes()[..], &u16_prefixed(public)].concat(),
            None => Vec::new(),
        };
        exts.extend(extension(EXT_KEY_SHARE, &u16_prefixed(&shares)));
        if let Some(n) = padding {
            exts.extend(extension(EXT_PADDING, &vec![0; n]));
        }
        let mut ids = Vec::new();
        for id in &hello.identities {
            ids.extend(u16_prefixed(id));
            ids.extend(0u32.to_be_bytes());
        }
        let binders: Vec<u8> = hello
            .identities
            .iter()
            .flat_map(|_| u8_prefixed(&[0; 32]))
            .collect();
        let psk_ext = [u16_prefixed(&ids), u16_prefixed(&binders)].concat();
        exts.extend(extension(EXT_PRE_SHARED_KEY, &psk_ext));

        let mut body = vec![3, 3];
        body.extend_from_slice(random);
        body.extend(u8_prefixed(session_id));
        body.extend(u16_prefixed(&TLS_AES_128_GCM_SHA256.to_be_bytes()));
        body.extend([1, 0]);
        body.extend(u16_prefixed(&exts));
        let len = (body.len() as u32).to_be_bytes();
        let mut message = vec![1, len[1], len[2], len[3]];
        message.extend(body);
        message
    };
    let mut message = build(None);
    if let Some(size) = hello.size {
        message = build(Some(size - message.len() - 4));
        assert_eq!(message.len(), size);
    }
    // The binders are the end of the message: each is a length byte and 32 bytes.
    let binders_len = 2 + 33 * hello.identities.len();
    let truncated = &message[..message.len() - binders_len];
    let value = binder(psk, &sha256(&[prefix, truncated]));
    let mut at = message.len() - binders_len + 2;
    for _ in &hello.identities {
        message[at + 1..at + 33].copy_from_slice(&value);
        at += 33;
    }
    message
}

/// A handshake message in handshake records of at most `fragment` bytes each.
fn records(message: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(fragment) {
        out.extend([22, 3, 1]);
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// What the server answered a ClientHello.
struct ServerHello {
    message: Vec<u8>,
    retry: bool,
    accepted_psk: Option<u16>,
}

/// Reads the server's ServerHello (or HelloRetryRequest), skipping a ChangeCipherSpec.
fn read_server_hello(tcp: &mut TcpStream) -> ServerHello {
    for _ in 0..4 {
        let mut header = [0u8; 5];
        tcp.read_exact(&mut header).unwrap();
        let mut fragment = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        tcp.read_exact(&mut fragment).unwrap();
        match header[0] {
            20 => continue,
            21 => panic!("the server sent alert {fragment:?}"),
            22 => {}
            other => panic!("unexpected record type {other}"),
        }
        assert_eq!(fragment[0], 2, "not a ServerHello");
        let len = usize::from(u16::from_be_bytes([fragment[2], fragment[3]])) + 4;
        let message = fragment[..len].to_vec();
        let body = &message[4..];
        let retry = body[2..34] == hrr_random()[..];
        let sid_len = usize::from(body[34]);
        let mut exts = &body[35 + sid_len + 3 + 2..];
        let mut accepted_psk = None;
        while exts.len() >= 4 {
            let kind = u16::from_be_bytes([exts[0], exts[1]]);
            let n = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
            if kind == EXT_PRE_SHARED_KEY {
                accepted_psk = Some(u16::from_be_bytes([exts[4], exts[5]]));
            }
            exts = &exts[4 + n..];
        }
        return ServerHello {
            message,
            retry,
            accepted_psk,
        };
    }
    panic!("no ServerHello");
}

fn connect(server: &Server) -> TcpStream {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

fn x25519_share() -> Vec<u8> {
    let rng = SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
    private.compute_public_key().unwrap().as_ref().to_vec()
}

/// One connection offering `identities` in one ClientHello of `size` bytes (if given), sent in
/// records of at most `fragment` bytes. Whether the server accepted the ticket.
fn offer(
    server: &Server,
    ticket: &Ticket,
    identities: Vec<Vec<u8>>,
    size: Option<usize>,
    fragment: usize,
) -> bool {
    let position = identities.iter().position(|id| *id == ticket.identity);
    let share = x25519_share();
    let hello = Hello {
        identities,
        share: Some(&share),
        size,
    };
    let message = client_hello(&hello, &random(), &random(), &ticket.psk, &[]);
    let mut tcp = connect(server);
    tcp.write_all(&records(&message, fragment)).unwrap();
    let reply = read_server_hello(&mut tcp);
    assert!(!reply.retry);
    let accepted = reply.accepted_psk.map(usize::from);
    assert!(accepted.is_none() || accepted == position);
    accepted.is_some()
}

/// One connection whose first ClientHello (no key share, offering `first`) draws a
/// HelloRetryRequest, and whose second offers the ticket. Whether the server accepted it.
fn offer_after_retry(server: &Server, ticket: &Ticket, first: Vec<Vec<u8>>) -> bool {
    let (client_random, session_id) = (random(), random());
    let hello1 = Hello {
        identities: first,
        share: None,
        size: None,
    };
    let ch1 = client_hello(&hello1, &client_random, &session_id, &ticket.psk, &[]);
    let mut tcp = connect(server);
    tcp.write_all(&records(&ch1, MAX_FRAGMENT)).unwrap();
    let hrr = read_server_hello(&mut tcp);
    assert!(hrr.retry, "no HelloRetryRequest");
    // The transcript restarts with the hash of the first hello (RFC 8446 §4.4.1).
    let mut prefix = vec![254, 0, 0, 32];
    prefix.extend(sha256(&[&ch1]));
    prefix.extend_from_slice(&hrr.message);
    let share = x25519_share();
    let hello2 = Hello {
        identities: vec![ticket.identity.clone()],
        share: Some(&share),
        size: None,
    };
    let ch2 = client_hello(&hello2, &client_random, &session_id, &ticket.psk, &prefix);
    tcp.write_all(&records(&ch2, MAX_FRAGMENT)).unwrap();
    let reply = read_server_hello(&mut tcp);
    assert!(!reply.retry);
    reply.accepted_psk.is_some()
}

/// The legitimate use of a ticket: s_client on instance B.
fn legitimate(fleet: &Fleet, ticket: &Ticket) -> bool {
    request(&fleet.b, &["-tls1_3", "-sess_in", &ticket.file]) == "Reused"
}

/// Runs an attack on instance A (which holds a local copy of each ticket it issued) before
/// and after the legitimate use on instance B, with a fresh ticket each time: in both orders
/// the ticket must be used exactly once, by whichever client offered it first.
fn used_once(case: &str, attack: impl Fn(&Server, &Ticket) -> bool) {
    let fleet = Fleet::start();
    let first = fleet.ticket("first");
    let attack_first = attack(&fleet.a, &first);
    let then_legitimate = legitimate(&fleet, &first);
    let second = fleet.ticket("second");
    let legitimate_first = legitimate(&fleet, &second);
    let then_attack = attack(&fleet.a, &second);
    let uses = [
        u32::from(attack_first) + u32::from(then_legitimate),
        u32::from(legitimate_first) + u32::from(then_attack),
    ];
    assert_eq!(
        uses,
        [1, 1],
        "{case}: times each ticket was used (attack then legitimate: {attack_first}, \
         {then_legitimate}; legitimate then attack: {legitimate_first}, {then_attack})"
    );
    // Whoever comes first may use the ticket (the parser reads every hello here, so a crafted
    // one that holds the ticket's secret can spend it); the one that comes second never can.
    assert!(legitimate_first, "{case}");
}

fn decoys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| random::<32>().to_vec()).collect()
}

#[test]
fn a_ticket_offered_fifth_of_five_identities_is_used_once() {
    used_once("ticket 5th of 5", |server, ticket| {
        let mut ids = decoys(4);
        ids.push(ticket.identity.clone());
        offer(server, ticket, ids, None, MAX_FRAGMENT)
    });
}

#[test]
fn a_ticket_offered_only_after_a_hello_retry_request_is_used_once() {
    used_once("ticket in the second ClientHello", |server, ticket| {
        offer_after_retry(server, ticket, decoys(1))
    });
}

#[test]
fn a_ticket_in_a_33_kib_client_hello_is_used_once() {
    used_once("33 KiB ClientHello", |server, ticket| {
        offer(
            server,
            ticket,
            vec![ticket.identity.clone()],
            Some(33 * 1024),
            MAX_FRAGMENT,
        )
    });
}

#[test]
fn a_ticket_in_one_16923_byte_record_is_used_once() {
    used_once("one 16,923-byte record", |server, ticket| {
        // 16,918 bytes of handshake behind a 5-byte record header.
        offer(
            server,
            ticket,
            vec![ticket.identity.clone()],
            Some(16_918),
            usize::MAX,
        )
    });
}

#[test]
fn a_ticket_the_prefetch_reads_resumes_once() {
    let fleet = Fleet::start();
    // First of five identities: the prefetch takes it for the connection, which resumes it
    // (the same hand-built hellos as the attacks, so their binders are right).
    let ticket = fleet.ticket("first");
    let mut ids = vec![ticket.identity.clone()];
    ids.extend(decoys(4));
    assert!(offer(&fleet.a, &ticket, ids, None, MAX_FRAGMENT));
    assert!(!legitimate(&fleet, &ticket));
    assert!(!offer(
        &fleet.b,
        &ticket,
        vec![ticket.identity.clone()],
        None,
        MAX_FRAGMENT
    ));

    // The honest retry: the prefetch takes the ticket for the first hello, and the second
    // hello of the same connection resumes it.
    let ticket = fleet.ticket("t");
    assert!(offer_after_retry(
        &fleet.a,
        &ticket,
        vec![ticket.identity.clone()]
    ));
    assert!(!legitimate(&fleet, &ticket));
    assert!(!offer(
        &fleet.a,
        &ticket,
        vec![ticket.identity.clone()],
        None,
        MAX_FRAGMENT
    ));
}
