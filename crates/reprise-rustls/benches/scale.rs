//! Cost as the cache grows: resumed TLS 1.2 handshakes per second, and the memory the cache
//! takes, with 20,480, 1,000,000 and 4,000,000 sessions in it.
//!
//! Filling a cache with millions of sessions through real handshakes would take too long, so
//! the cache is filled directly, through the server store (`StoresServerSessions::put`, what
//! rustls calls), with copies of one real session value: the one a real in-memory TLS 1.2
//! handshake on the test PKI stored, each copy under its own random 32-byte id and the store's
//! session-id context. The memory is read with a counting global allocator around building and
//! filling the cache (all of it: the sessions, their ids and payloads, and the cache's tables),
//! and as the growth of the process's resident set.
//!
//! Then real in-memory rustls TLS 1.2 handshakes (client and server in this thread, both
//! counted in the rate) resume that session: the client offers its real session id, and the
//! store maps every lookup to a session drawn uniformly from the N in the cache (all of them
//! copies of the client's, so the resumption completes), so that each lookup lands anywhere in
//! the cache, as the lookups of many clients would, rather than on one hot entry. The server
//! side runs as `reprise serve` does: a `ServerStore` over the cache, each connection's packets
//! processed under its `ConnectionSessions`.
//!
//! `cargo bench -p reprise-rustls --bench scale [-- SIZES...]` (default 20480 1000000 4000000;
//! about 1 GB of memory at 4,000,000). The resident-set growth is exact only for the first size
//! of a run (later ones reuse memory the allocator kept from the earlier ones): pass one size
//! per run for it. The allocator's count is exact for every size.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reprise::{SessionCache, SidCtx};
use reprise_rustls::{ClientAuth, ServerStore};
use reprise_testkit::Pki;
use rustls::server::StoresServerSessions;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 3] = [20_480, 1_000_000, 4_000_000];
/// Rounds of handshakes per size; the rate reported is their median.
const ROUNDS: usize = 3;
/// The length of one round.
const ROUND: Duration = Duration::from_secs(1);

/// A bijective mix of 64 bits (splitmix64's finalizer).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The id of prefilled session `n`: distinct for distinct `n` (the first word is a bijection
/// of it), random-looking throughout.
fn id(n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    for (i, chunk) in id.chunks_exact_mut(8).enumerate() {
        let word = if i == 0 {
            mix(n)
        } else {
            mix(n ^ ((i as u64) << 56))
        };
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    id
}

/// The server store under test, with every lookup sent to a random prefilled session, and
/// (while recording) a copy of what rustls stores.
#[derive(Debug)]
struct Spread {
    inner: ServerStore,
    /// Prefilled sessions are `id(0..sessions)`; 0 sends lookups to the key asked for.
    sessions: AtomicU64,
    rng: AtomicU64,
    recorded: Mutex<Vec<Vec<u8>>>,
}

impl StoresServerSessions for Spread {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.recorded.lock().unwrap().push(value.clone());
        self.inner.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let n = self.sessions.load(Ordering::Relaxed);
        if n == 0 {
            return self.inner.get(key);
        }
        let r = mix(self.rng.fetch_add(1, Ordering::Relaxed));
        self.inner.get(&id(r % n))
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key)
    }
    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// One in-memory handshake; whether it resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, store: &ServerStore) -> bool {
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let sessions = store.connection();
    for _ in 0..16 {
        let a = !reprise_testkit::transfer(&mut c, &mut s).is_empty();
        sessions.process(&mut s).unwrap();
        let b = !reprise_testkit::transfer(&mut s, &mut c).is_empty();
        c.process_new_packets().unwrap();
        if !a && !b && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(!s.is_handshaking(), "the handshake did not complete");
    s.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// The process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; sizes may follow.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        SIZES.to_vec()
    } else {
        sizes
    };
    let pki = Pki::new();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth(),
    );
    println!(
        "{:>10} {:>8} {:>12} {:>14} {:>12} {:>12} {:>14} {:>9}",
        "sessions",
        "payload",
        "bytes/sess",
        "overhead/sess",
        "cache MB",
        "RSS +MB",
        "resumed hs/s",
        "resumed"
    );
    for size in sizes {
        let region = Region::new(GLOBAL);
        let rss_before = rss();
        let cache = Arc::new(SessionCache::builder().size_limit(size).build());
        let inner = ServerStore::new(
            cache.clone(),
            SidCtx::new(b"bench").unwrap(),
            ClientAuth::None,
        )
        .unwrap();
        let store = Arc::new(Spread {
            inner: inner.clone(),
            sessions: AtomicU64::new(0),
            rng: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.server_chain(), pki.server_key())
            .unwrap();
        server.session_storage = store.clone();
        let server = Arc::new(server);

        // The client's real session, and the value rustls stored for it.
        assert!(
            !handshake(&client, &server, &inner),
            "the first handshake is full"
        );
        let value = store
            .recorded
            .lock()
            .unwrap()
            .pop()
            .expect("rustls stored no session");
        // The rest of the cache, through the store as rustls fills it.
        for n in 0..size as u64 - 1 {
            assert!(inner.put(id(n).to_vec(), value.clone()));
        }
        assert_eq!(cache.len(), size);
        let change = region.change();
        let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
        let rss_growth = rss().saturating_sub(rss_before);
        store.sessions.store(size as u64 - 1, Ordering::Relaxed);

        let mut rates = Vec::with_capacity(ROUNDS);
        let (mut resumed, mut total) = (0u64, 0u64);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < ROUND {
                for _ in 0..64 {
                    resumed += u64::from(handshake(&client, &server, &inner));
                    count += 1;
                }
            }
            total += count;
            rates.push(count as f64 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let per = net as f64 / size as f64;
        println!(
            "{size:>10} {:>8} {per:>12.1} {:>14.1} {:>12.1} {:>12.1} {:>14.0} {:>8.1}%",
            value.len(),
            per - (32 + value.len()) as f64,
            net as f64 / 1e6,
            rss_growth as f64 / 1e6,
            rates[ROUNDS / 2],
            100.0 * resumed as f64 / total as f64,
        );
        drop((server, store, inner, cache));
    }
    println!(
        "bytes/sess: allocated net while building and filling the cache, per session (overhead: \
         beyond the 32-byte id and the payload); RSS +MB: exact for the first size only; \
         resumed hs/s: client and server in one thread, median of {ROUNDS} rounds of {} s",
        ROUND.as_secs()
    );
}
