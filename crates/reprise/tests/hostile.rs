//! Scenario 17, hostile keys: lookups with empty, 33-byte and 64 KiB random keys are misses, ask
//! no store, panic nowhere, and leave memory where it was (a counting global allocator checks).
//!
//! This binary holds a single test, so that no other test allocates while it measures.

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use reprise::{
    CacheMode, ManualClock, Role, SecretBytes, Session, SessionCache, SessionKey, SharedSession,
};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, by the whole process.
fn live_bytes() -> i128 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i128 - s.bytes_deallocated as i128
}

/// SplitMix64: random key bytes without a randomness crate.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

const LOOKUPS: usize = 10_000;
const SLACK_BYTES: i128 = 1024;

#[test]
fn hostile_keys_are_misses_that_ask_no_store_and_cost_no_memory() {
    let gets = Arc::new(AtomicU64::new(0));
    let removes = Arc::new(AtomicU64::new(0));
    let (g, r) = (gets.clone(), removes.clone());
    // A get callback that would hand out a valid session for any key, if it were asked.
    let bait = SharedSession::from(
        Session::builder(&[7u8; 32], SecretBytes::from(vec![1u8; 48]))
            .time(1_000)
            .build()
            .expect("valid session"),
    );
    let cache: SessionCache = SessionCache::builder()
        .clock(Arc::new(ManualClock::new(1_000)))
        .get_session_callback(Arc::new(move |_cache, _key: &SessionKey<'_>| {
            g.fetch_add(1, Relaxed);
            Some(bait.clone())
        }))
        .remove_session_callback(Arc::new(move |_cache, _s, _why| {
            r.fetch_add(1, Relaxed);
        }))
        .build();

    // Cached sessions whose ids are prefixes of the hostile keys: a key cut to 32 bytes (or to
    // its first byte) would find one of them.
    let long_random = random_bytes(1, 64 * 1024);
    let long_same = vec![7u8; 64 * 1024];
    for id in [
        &[7u8; 32][..],
        &long_random[..32],
        &long_random[..1],
        &[7u8][..],
    ] {
        let s = cache.session(id, SecretBytes::from(vec![0u8; 48])).build();
        let s: SharedSession = s.expect("valid session").into();
        assert!(cache.add(&s));
    }
    let cached = cache.len();
    assert_eq!(cached, 4);

    let mut ids: Vec<Vec<u8>> = vec![Vec::new(), vec![7u8; 33], long_random[..33].to_vec()];
    ids.push(long_same.clone());
    ids.push(long_random.clone());
    for seed in 2..6 {
        ids.push(random_bytes(seed, 64 * 1024));
    }
    let hostile: Vec<SessionKey<'_>> = ids.iter().map(|id| SessionKey::new(id, b"")).collect();
    for key in &hostile {
        assert!(!key.is_well_formed());
    }
    // A valid id under an over-long context names no session either.
    let long_ctx = SessionKey::new(&[7u8; 32], &long_random);

    let mut lookups = 0u64;
    let mut internal_lookups = 0u64;
    let mut round = |cache: &SessionCache, n: usize| {
        for i in 0..n {
            let key = hostile[i % hostile.len()];
            let (role, mode) = match i % 3 {
                0 => (Role::Server, CacheMode::SERVER),
                1 => (
                    Role::Server,
                    CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP,
                ),
                _ => (Role::Client, CacheMode::OFF),
            };
            cache.set_mode(mode);
            let internal = role == Role::Client || !mode.contains(CacheMode::NO_INTERNAL_LOOKUP);
            assert!(cache.lookup(role, key).is_none(), "hostile key {i} resumed");
            assert!(cache.take(role, key).is_none(), "hostile key {i} was taken");
            assert!(!cache.remove_key(key), "hostile key {i} removed a session");
            assert!(!cache.forget_key(key), "hostile key {i} forgot a session");
            assert!(
                cache.peek(key.id).is_none(),
                "hostile key {i} peeked a session"
            );
            lookups += 2;
            internal_lookups += if internal { 2 } else { 0 };
        }
    };

    // Warm up (thread-locals and the like), then measure.
    let before_stats = cache.stats();
    round(&cache, 64);
    let live_before = live_bytes();
    let counts_before = GLOBAL.stats();
    round(&cache, LOOKUPS);
    let stats = cache.stats();
    for role in [Role::Server, Role::Client] {
        for _ in 0..LOOKUPS / 2 {
            assert!(
                cache.lookup(role, long_ctx).is_none(),
                "over-long context resumed"
            );
        }
    }
    let live_after = live_bytes();
    let counts_after = GLOBAL.stats();

    assert!(
        live_after <= live_before + SLACK_BYTES,
        "memory grew by {} bytes over {LOOKUPS} hostile lookups ({} allocations, {} frees)",
        live_after - live_before,
        counts_after.allocations - counts_before.allocations,
        counts_after.deallocations - counts_before.deallocations,
    );

    // No store was asked, nothing was removed, nothing resumed.
    assert_eq!(
        gets.load(Relaxed),
        0,
        "the get callback was asked for a hostile key"
    );
    assert_eq!(removes.load(Relaxed), 0, "a hostile key removed a session");
    assert_eq!(cache.len(), cached);
    assert_eq!(stats.hits, before_stats.hits);
    assert_eq!(stats.cb_hits, 0);
    assert_eq!(stats.timeouts, 0);
    // Each hostile lookup or take is refused, and is a miss where internal lookup is on.
    assert_eq!(stats.rejected_keys - before_stats.rejected_keys, lookups);
    assert_eq!(stats.misses - before_stats.misses, internal_lookups);
}
