//! The ticketer's own cost: one ticket sealed and opened (what a server does for every
//! stateless ticket it issues and every one it is offered), against rustls's own ticketer
//! measured in the same run, and against the other AEAD and nonce choices the format could
//! have made.
//!
//! The plaintexts are real: the session values rustls hands its ticketer in in-memory TLS 1.2
//! and TLS 1.3 handshakes on the test PKI.
//!
//! `cargo bench -p reprise-rustls --bench tickets`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alternative::RingAesGcmRandomNonce;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use reprise_rustls::tickets::{LocalTicketKeys, TicketCounters, TicketSealer};
use reprise_rustls::Ticketer;
use reprise_testkit::{Pki, Version, VERSIONS};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

/// A ticketer that keeps what rustls asks it to encrypt, and says nothing else.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Vec<u8>>>);

impl ProducesTickets for Recorder {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        300
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.lock().unwrap().push(plain.to_vec());
        Some(plain.to_vec())
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    !buf.is_empty()
}

/// The plaintext rustls seals into a ticket after a full handshake in `version`.
fn real_plaintext(pki: &Pki, version: Version) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder::default());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version.rustls()])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain(), pki.server_key())
        .unwrap();
    server.ticketer = recorder.clone();
    server.send_tls13_tickets = 1;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version.rustls()])
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..16 {
        let a = transfer(&mut c, &mut s);
        s.process_new_packets().unwrap();
        let b = transfer(&mut s, &mut c);
        c.process_new_packets().unwrap();
        if !a && !b && !c.is_handshaking() {
            break;
        }
    }
    let plain = recorder.0.lock().unwrap().first().cloned();
    plain.expect("rustls issued no ticket")
}

/// The alternative the format did not take, built the same way for the comparison.
mod alternative {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
    use ring::rand::{SecureRandom, SystemRandom};

    /// AES-256-GCM with a random 96-bit nonce per ticket from the system's generator.
    pub struct RingAesGcmRandomNonce {
        key: LessSafeKey,
        rng: SystemRandom,
    }

    impl RingAesGcmRandomNonce {
        pub fn new() -> Self {
            let key = UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap();
            Self {
                key: LessSafeKey::new(key),
                rng: SystemRandom::new(),
            }
        }

        pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
            let mut nonce = [0u8; NONCE_LEN];
            self.rng.fill(&mut nonce).unwrap();
            let mut out = Vec::with_capacity(NONCE_LEN + 8 + plain.len() + 16);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&1_800_000_000u64.to_be_bytes());
            out.extend_from_slice(plain);
            let (head, body) = out.split_at_mut(NONCE_LEN);
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&*head),
                    body,
                )
                .unwrap();
            out.extend_from_slice(tag.as_ref());
            out
        }

        pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
            let (head, body) = ticket.split_at(NONCE_LEN);
            let nonce = Nonce::try_assume_unique_for_key(head).ok()?;
            let mut buf = body.to_vec();
            let len = self
                .key
                .open_in_place(nonce, Aad::from(head), &mut buf)
                .ok()?
                .len();
            buf.truncate(len);
            buf.drain(..8);
            Some(buf)
        }
    }
}

fn tickets(c: &mut Criterion) {
    let pki = Pki::new();
    let mut group = c.benchmark_group("ticket_seal_open");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for version in VERSIONS {
        let plain = real_plaintext(&pki, version);
        let label = format!("{version:?}/{}B", plain.len());

        let keys = LocalTicketKeys::new(Duration::from_secs(3600)).unwrap();
        let ours = Ticketer::new(keys.clone(), b"bench", Arc::new(TicketCounters::default()));
        group.bench_with_input(BenchmarkId::new("reprise", &label), &plain, |b, p| {
            b.iter(|| {
                let t = ours.encrypt(black_box(p)).unwrap();
                black_box(ours.decrypt(&t).unwrap())
            })
        });

        let theirs = rustls::crypto::ring::Ticketer::new().unwrap();
        group.bench_with_input(BenchmarkId::new("rustls", &label), &plain, |b, p| {
            b.iter(|| {
                let t = theirs.encrypt(black_box(p)).unwrap();
                black_box(theirs.decrypt(&t).unwrap())
            })
        });

        let sealer = TicketSealer::new(keys, b"bench", Arc::new(TicketCounters::default()));
        group.bench_with_input(BenchmarkId::new("seal_only", &label), &plain, |b, p| {
            b.iter(|| black_box(sealer.seal(black_box(p)).unwrap()))
        });

        let aes = RingAesGcmRandomNonce::new();
        group.bench_with_input(
            BenchmarkId::new("alt_aes256gcm_random_nonce", &label),
            &plain,
            |b, p| {
                b.iter(|| {
                    let t = aes.seal(black_box(p));
                    black_box(aes.open(&t).unwrap())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, tickets);
criterion_main!(benches);
