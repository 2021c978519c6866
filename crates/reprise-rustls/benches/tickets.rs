//! The ticketer's own cost: one ticket sealed and opened (what a server does for every
//! stateless ticket it issues and every one it is offered), against rustls's own ticketer
//! measured in the same run, and against the other choices the format could have made: the
//! pure-Rust `chacha20poly1305` crate for the same XChaCha20-Poly1305, and AES-256-GCM with a
//! random nonce per ticket.
//!
//! The plaintexts are real: the session values rustls hands its ticketer in in-memory TLS 1.2
//! and TLS 1.3 handshakes on the test PKI.
//!
//! `cargo bench -p reprise-rustls --bench tickets`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alternative::{PureRustXChaCha, RingAesGcmRandomNonce};
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

/// Moves the records `from` has to send into `to`; whether there were any.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> bool {
    !reprise_testkit::transfer(from, to).is_empty()
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

/// The alternatives the format did not take, built the same way for the comparison.
mod alternative {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The same XChaCha20-Poly1305 and nonces, from the pure-Rust `chacha20poly1305` crate.
    pub struct PureRustXChaCha {
        cipher: XChaCha20Poly1305,
        counter: AtomicU64,
    }

    impl PureRustXChaCha {
        pub fn new() -> Self {
            Self {
                cipher: XChaCha20Poly1305::new(&[7u8; 32].into()),
                counter: AtomicU64::new(0),
            }
        }

        pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
            let mut nonce = [9u8; 24];
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            nonce[16..].copy_from_slice(&n.to_be_bytes());
            let mut out = Vec::with_capacity(24 + 8 + plain.len() + 16);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&1_800_000_000u64.to_be_bytes());
            out.extend_from_slice(plain);
            let (head, body) = out.split_at_mut(24);
            let tag = self
                .cipher
                .encrypt_in_place_detached(XNonce::from_slice(head), &*head, body)
                .unwrap();
            out.extend_from_slice(&tag);
            out
        }

        pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
            let (head, rest) = ticket.split_at(24);
            let (body, tag) = rest.split_at(rest.len() - 16);
            let mut buf = body.to_vec();
            self.cipher
                .decrypt_in_place_detached(XNonce::from_slice(head), head, &mut buf, tag.into())
                .ok()?;
            buf.drain(..8);
            Some(buf)
        }
    }

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
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let mut inputs: Vec<(String, Vec<u8>)> = VERSIONS
        .into_iter()
        .map(|version| {
            let plain = real_plaintext(&pki, version);
            (format!("{version:?}/{}B", plain.len()), plain)
        })
        .collect();
    // The upper end of a session without a client certificate (long SNI, ALPN, more data).
    inputs.push(("synthetic/200B".to_owned(), vec![0x42; 200]));
    for (label, plain) in &inputs {
        let keys = LocalTicketKeys::new(Duration::from_secs(3600)).unwrap();
        let counters = Arc::new(TicketCounters::default());
        let ours = Ticketer::new(keys.clone(), b"bench", counters.clone());
        group.bench_with_input(BenchmarkId::new("reprise", label), plain, |b, p| {
            b.iter(|| {
                let t = ours.encrypt(black_box(p)).unwrap();
                black_box(ours.decrypt(&t).unwrap())
            })
        });

        // Sealed by another instance of the fleet (another nonce prefix): one HChaCha20 more.
        let other = TicketSealer::new(keys, b"bench", counters);
        group.bench_with_input(BenchmarkId::new("reprise_fleet", label), plain, |b, p| {
            b.iter(|| {
                let t = other.seal(black_box(p)).unwrap();
                black_box(ours.decrypt(&t).unwrap())
            })
        });

        let theirs = rustls::crypto::ring::Ticketer::new().unwrap();
        group.bench_with_input(BenchmarkId::new("rustls", label), plain, |b, p| {
            b.iter(|| {
                let t = theirs.encrypt(black_box(p)).unwrap();
                black_box(theirs.decrypt(&t).unwrap())
            })
        });

        let pure = PureRustXChaCha::new();
        group.bench_with_input(
            BenchmarkId::new("alt_pure_rust_xchacha", label),
            plain,
            |b, p| {
                b.iter(|| {
                    let t = pure.seal(black_box(p));
                    black_box(pure.open(&t).unwrap())
                })
            },
        );

        let aes = RingAesGcmRandomNonce::new();
        group.bench_with_input(
            BenchmarkId::new("alt_aes256gcm_random_nonce", label),
            plain,
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
