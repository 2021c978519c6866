//! Unit tests of the cache's internals: shard invariants, global eviction order, and the
//! external-cache paths, with the invariants checked after every step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{
    CacheMode, Clock, ManualClock, Role, SecretBytes, Session, SessionCache, SessionKey,
    SharedSession,
};

fn session(id: u8, time: u64, timeout: u64) -> SharedSession {
    let session = Session::builder(&[id; 32], SecretBytes::from(vec![id]))
        .time(time)
        .timeout_secs(timeout)
        .build();
    SharedSession::from(session.unwrap())
}

fn cache(shards: usize, limit: usize) -> (SessionCache, Arc<ManualClock>, Arc<AtomicUsize>) {
    let clock = Arc::new(ManualClock::new(1_000));
    let removed = Arc::new(AtomicUsize::new(0));
    let r = removed.clone();
    let cache = SessionCache::builder()
        .clock(clock.clone())
        .shards(shards)
        .size_limit(limit)
        .remove_session_callback(Arc::new(move |_, _, _| {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .build();
    (cache, clock, removed)
}

#[test]
fn eviction_is_global_soonest_expiry_then_oldest() {
    for shards in [1, 2, 8, 64] {
        let (cache, _, removed) = cache(shards, 4);
        // Expiries: id 1 → 1010, 2 → 1005, 3 → 1010, 4 → 1020.
        for (id, timeout) in [(1, 10), (2, 5), (3, 10), (4, 20)] {
            assert!(cache.add(&session(id, 1_000, timeout)));
            cache.check_invariants();
        }
        let mut order: Vec<u8> = Vec::new();
        for id in 10..14 {
            let before: Vec<u8> = cache
                .sessions()
                .iter()
                .map(|s| s.id().as_bytes()[0])
                .collect();
            assert!(cache.add(&session(id, 1_000, 100)));
            cache.check_invariants();
            let after: Vec<u8> = cache
                .sessions()
                .iter()
                .map(|s| s.id().as_bytes()[0])
                .collect();
            order.extend(before.iter().filter(|b| !after.contains(b)));
        }
        assert_eq!(order, vec![2, 1, 3, 4], "{shards} shards");
        assert_eq!(removed.load(Ordering::SeqCst), 4);
        assert_eq!(cache.stats().cache_full, 4);
    }
}

#[test]
fn shrinking_the_limit_evicts_at_the_next_add() {
    let (cache, _, removed) = cache(4, 0);
    for id in 1..=10 {
        cache.add(&session(id, 1_000 + u64::from(id), 10));
    }
    assert_eq!(cache.set_size_limit(3), 0);
    assert_eq!(cache.len(), 10);
    assert_eq!(removed.load(Ordering::SeqCst), 0);
    cache.add(&session(50, 2_000, 10));
    cache.check_invariants();
    assert_eq!(cache.len(), 3);
    assert_eq!(removed.load(Ordering::SeqCst), 8);
    let mut left: Vec<u8> = cache
        .sessions()
        .iter()
        .map(|s| s.id().as_bytes()[0])
        .collect();
    left.sort();
    assert_eq!(left, vec![9, 10, 50]);
}

#[test]
fn invariants_hold_through_a_long_mixed_run() {
    let (cache, clock, _) = cache(8, 50);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5_000 {
        let r = next();
        let id = (r % 120) as u8;
        match r >> 60 {
            0..=5 => {
                cache.add(&session(id, clock.now(), r % 30));
                // After an add, the cache is back within its limit.
                let limit = cache.size_limit();
                assert!(limit == 0 || cache.len() <= limit);
            }
            6..=8 => {
                cache.lookup(Role::Server, SessionKey::new(&[id; 32], b""));
            }
            9 | 10 => {
                cache.take(Role::Server, SessionKey::new(&[id; 32], b""));
            }
            11 => {
                cache.remove_key(SessionKey::new(&[id; 32], b""));
            }
            12 => clock.advance(r % 7),
            13 => {
                cache.flush(clock.now());
            }
            14 => {
                cache.set_size_limit((r % 60) as usize);
            }
            _ => {
                cache.set_mode(CacheMode::SERVER | CacheMode::UPDATE_TIME);
                cache.add(&session(id, clock.now().saturating_sub(50), 100));
                cache.set_mode(CacheMode::SERVER);
            }
        }
        cache.check_invariants();
    }
}

#[test]
fn take_through_the_get_callback_fires_remove_once() {
    let (cache, clock, removed) = cache(4, 0);
    let external = session(7, clock.now(), 100);
    let served = external.clone();
    cache.set_get_session_callback(Some(Arc::new(move |_, _| Some(served.clone()))));
    cache.set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP);
    // An internal copy exists (stored before lookups were turned off): the take removes it.
    assert!(cache.add(&external));
    let taken = cache.take(Role::Server, SessionKey::new(&[7; 32], b""));
    assert!(taken.is_some());
    assert_eq!(cache.len(), 0);
    assert_eq!(removed.load(Ordering::SeqCst), 1);
    assert!(!external.is_resumable());
    cache.check_invariants();
}

#[test]
fn atomic_take_callback_is_preferred_and_not_followed_by_remove() {
    let (cache, clock, removed) = cache(4, 0);
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    cache.set_get_session_callback(Some(Arc::new(move |_, _| {
        g.fetch_add(1, Ordering::SeqCst);
        None
    })));
    let now = clock.now();
    cache.set_take_session_callback(Some(Arc::new(move |_, key: &SessionKey<'_>| {
        Some(session(key.id[0], now, 100))
    })));
    assert!(cache
        .take(Role::Server, SessionKey::new(&[3; 32], b""))
        .is_some());
    assert_eq!(gets.load(Ordering::SeqCst), 0);
    assert_eq!(removed.load(Ordering::SeqCst), 0);
    assert_eq!(cache.stats().cb_hits, 1);
    // A lookup that resumes still uses get.
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[3; 32], b""))
        .is_none());
    assert_eq!(gets.load(Ordering::SeqCst), 1);
}

#[test]
fn untrusted_external_results_are_validated() {
    let (cache, clock, removed) = cache(4, 0);
    let now = clock.now();
    // Wrong id, wrong context, not resumable, expired: none resumes.
    let wrong_id = session(1, now, 100);
    let other_ctx = Session::builder(&[1; 32], SecretBytes::from(vec![1]))
        .sid_ctx(b"other")
        .time(now)
        .build();
    let other_ctx = SharedSession::from(other_ctx.unwrap());
    let dead = session(2, now, 100);
    dead.mark_not_resumable();
    let expired = session(3, now - 200, 100);
    let table = [wrong_id, other_ctx, dead, expired];
    cache.set_get_session_callback(Some(Arc::new(move |_, key: &SessionKey<'_>| {
        table.get(usize::from(key.id[0])).cloned()
    })));
    for i in 0..4u8 {
        assert!(
            cache
                .lookup(Role::Server, SessionKey::new(&[i; 32], b""))
                .is_none(),
            "{i}"
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.cb_hits, stats.hits, stats.timeouts), (0, 0, 1));
    // Only the expired one is reported removed, so the external cache can drop it.
    assert_eq!(removed.load(Ordering::SeqCst), 1);
    assert_eq!(cache.len(), 0);
}

#[test]
fn callbacks_are_returned_by_the_getters() {
    let (cache, _, _) = cache(1, 0);
    assert!(cache.new_session_callback().is_none());
    assert!(cache.get_session_callback().is_none());
    assert!(cache.take_session_callback().is_none());
    let cb: crate::NewSessionCallback = Arc::new(|_, _| true);
    cache.set_new_session_callback(Some(cb.clone()));
    assert!(cache
        .new_session_callback()
        .is_some_and(|got| Arc::ptr_eq(&got, &cb)));
    cache.set_new_session_callback(None);
    assert!(cache.new_session_callback().is_none());
    assert!(cache.remove_session_callback().is_some());
}

#[test]
fn settings_return_the_previous_value() {
    let (cache, _, _) = cache(1, 7);
    assert_eq!(cache.set_mode(CacheMode::BOTH), CacheMode::SERVER);
    assert_eq!(cache.mode(), CacheMode::BOTH);
    assert_eq!(cache.set_size_limit(0), 7);
    assert_eq!(cache.set_timeout_secs(10), 300);
    assert_eq!(cache.timeout_secs(), 10);
    assert_eq!(SessionCache::<SecretBytes>::new().size_limit(), 20480);
}

#[test]
fn client_lookups_ignore_no_internal_lookup_and_never_ask_get() {
    let (cache, clock, _) = cache(2, 0);
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    cache.set_get_session_callback(Some(Arc::new(move |_, _| {
        a.fetch_add(1, Ordering::SeqCst);
        None
    })));
    cache.set_mode(CacheMode::CLIENT | CacheMode::NO_INTERNAL_LOOKUP);
    let s = session(4, clock.now(), 100);
    assert!(cache.add(&s));
    // The flag has no effect on clients: the internal cache answers.
    assert!(cache
        .lookup(Role::Client, SessionKey::new(&[4; 32], b""))
        .is_some());
    // A client miss is a miss; the get callback is for servers only.
    assert!(cache
        .lookup(Role::Client, SessionKey::new(&[5; 32], b""))
        .is_none());
    assert!(cache
        .take(Role::Client, SessionKey::new(&[5; 32], b""))
        .is_none());
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    // A server lookup under the same mode skips the internal cache and asks get.
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_none());
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[test]
fn new_sessions_follow_the_role_bits() {
    let (cache, clock, _) = cache(2, 0);
    let fresh = |id| {
        Session::builder(&[id; 32], SecretBytes::from(vec![id]))
            .time(clock.now())
            .build()
            .unwrap()
    };
    for (mode, server_stored, client_stored) in [
        (CacheMode::OFF, false, false),
        (CacheMode::SERVER, true, false),
        (CacheMode::CLIENT, false, true),
        (CacheMode::BOTH, true, true),
        (CacheMode::BOTH | CacheMode::NO_INTERNAL_STORE, false, false),
    ] {
        cache.set_mode(mode);
        assert_eq!(
            cache.new_session(Role::Server, fresh(1)).stored_internally,
            server_stored,
            "{mode}"
        );
        assert_eq!(
            cache.new_session(Role::Client, fresh(2)).stored_internally,
            client_stored,
            "{mode}"
        );
        cache.flush_all();
    }
}

#[test]
fn the_remove_callback_is_told_why() {
    use crate::Removal;
    use parking_lot::Mutex;
    let clock = Arc::new(ManualClock::new(1_000));
    let seen: Arc<Mutex<Vec<(u8, Removal)>>> = Arc::default();
    let log = seen.clone();
    let cache: SessionCache = SessionCache::builder()
        .clock(clock.clone())
        .size_limit(3)
        .remove_session_callback(Arc::new(move |_, s, why| {
            log.lock().push((s.id().as_bytes()[0], why));
        }))
        .build();
    let key = |id: u8| [id; 32];
    cache.add(&session(1, 1_000, 5));
    cache.add(&session(2, 1_000, 100));
    cache.add(&session(3, 1_000, 100));
    cache.add(&session(4, 1_000, 100)); // evicts 1, the soonest to expire
    assert!(cache.remove_key(SessionKey::new(&key(2), b"")));
    assert!(cache
        .take(Role::Server, SessionKey::new(&key(3), b""))
        .is_some());
    cache.add(&session(5, 1_000, 1));
    clock.advance(2);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[5; 32], b""))
        .is_none());
    cache.add(&session(6, 1_000, 1));
    assert_eq!(cache.flush(clock.now()), 1);
    cache.set_new_session_callback(Some(Arc::new(|_, _| false)));
    let declined = Session::builder(&key(7), SecretBytes::from(vec![7]))
        .time(clock.now())
        .build()
        .unwrap();
    assert!(!cache.new_session(Role::Server, declined).is_stored());
    drop(cache);
    assert_eq!(
        *seen.lock(),
        vec![
            (1, Removal::Evicted),
            (2, Removal::Explicit),
            (3, Removal::Taken),
            (5, Removal::Expired),
            (6, Removal::Flushed),
            (7, Removal::Declined),
            (4, Removal::Dropped),
        ]
    );
}

#[test]
fn a_take_callback_is_authoritative_over_an_internal_copy() {
    let (cache, clock, removed) = cache(2, 0);
    let s = session(9, clock.now(), 100);
    assert!(cache.add(&s));
    // The external cache no longer has it (used on another instance): the local copy must
    // not resume, and it leaves the cache.
    cache.set_take_session_callback(Some(Arc::new(|_, _| None)));
    assert!(cache
        .take(Role::Server, SessionKey::new(&[9; 32], b""))
        .is_none());
    assert!(cache.is_empty());
    assert!(!s.is_resumable());
    assert_eq!(removed.load(Ordering::SeqCst), 1);
    // When the external cache confirms the take, its session resumes and the copy is gone.
    let t = session(8, clock.now(), 100);
    assert!(cache.add(&t));
    let served = session(8, clock.now(), 100);
    cache.set_take_session_callback(Some(Arc::new(move |_, _| Some(served.clone()))));
    let got = cache.take(Role::Server, SessionKey::new(&[8; 32], b""));
    assert!(got.is_some_and(|g| !SharedSession::ptr_eq(&g, &t)));
    assert!(cache.is_empty());
    assert_eq!(cache.stats().cb_hits, 1);
}

fn versioned(id: u8, time: u64, version: crate::ProtocolVersion) -> SharedSession {
    let session = Session::builder(&[id; 32], SecretBytes::from(vec![id]))
        .time(time)
        .timeout_secs(100)
        .version(version)
        .build();
    SharedSession::from(session.unwrap())
}

#[test]
fn a_take_never_consumes_a_tls12_session() {
    use crate::ProtocolVersion;
    let (cache, clock, removed) = cache(2, 0);
    let old = versioned(4, clock.now(), ProtocolVersion::TLS1_2);
    let ticket = versioned(5, clock.now(), ProtocolVersion::TLS1_3);
    assert!(cache.add(&old) && cache.add(&ticket));
    // Internal: the TLS 1.2 session is refused and stays; the ticket is consumed.
    assert!(cache
        .take(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_none());
    assert!(old.is_resumable());
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_some());
    assert!(cache
        .take(Role::Server, SessionKey::new(&[5; 32], b""))
        .is_some());
    assert_eq!(cache.len(), 1);
    assert_eq!(removed.load(Ordering::SeqCst), 1);

    // Through a take callback: a TLS 1.2 session it returns is refused, and the local copy
    // of the TLS 1.2 session is left alone.
    let served = versioned(4, clock.now(), ProtocolVersion::TLS1_2);
    let served2 = served.clone();
    cache.set_take_session_callback(Some(Arc::new(move |_, _| Some(served2.clone()))));
    assert!(cache
        .take(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_none());
    assert!(served.is_resumable(), "a refused session is not claimed");
    assert_eq!(cache.len(), 1);
    assert_eq!(removed.load(Ordering::SeqCst), 1);

    // Through the get callback (no take callback, no internal lookup): refused too.
    cache.set_take_session_callback(None);
    cache.set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP);
    let served3 = served.clone();
    cache.set_get_session_callback(Some(Arc::new(move |_, _| Some(served3.clone()))));
    assert!(cache
        .take(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_none());
    assert!(served.is_resumable());
    assert_eq!((cache.len(), removed.load(Ordering::SeqCst)), (1, 1));
    // While a lookup of the same id resumes it.
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[4; 32], b""))
        .is_some());
}

#[test]
fn reusable_versions_are_those_before_tls13() {
    use crate::ProtocolVersion as V;
    for v in [0x0300, 0x0301, 0x0302, 0x0303, 0xfeff, 0xfefd] {
        assert!(V(v).is_reusable(), "{v:#x}");
    }
    for v in [0, 0x0304, 0x7f1c, 0xfefc, 0x0200] {
        assert!(!V(v).is_reusable(), "{v:#x}");
    }
}

#[test]
fn a_confirmed_take_resumes_once_and_a_local_copy_never_stands_in() {
    use crate::ProtocolVersion;
    let (cache, clock, removed) = cache(2, 0);
    let key = SessionKey::new(&[6; 32], b"");
    // A local copy, and the same ticket handed over by the external cache for this connection.
    let local = versioned(6, clock.now(), ProtocolVersion::TLS1_3);
    assert!(cache.add(&local));
    let confirmed = versioned(6, clock.now(), ProtocolVersion::TLS1_3);
    let got = cache.take_confirmed(key, confirmed.clone());
    assert!(got.is_some_and(|g| SharedSession::ptr_eq(&g, &confirmed)));
    assert!(cache.is_empty(), "the local copy leaves with the take");
    assert_eq!(removed.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().cb_hits, 1);
    // Claimed: the same object resumes no second time.
    assert!(cache.take_confirmed(key, confirmed).is_none());

    // Wrong key, wrong context, expired, or TLS 1.2: refused.
    let other = versioned(7, clock.now(), ProtocolVersion::TLS1_3);
    assert!(cache.take_confirmed(key, other.clone()).is_none());
    assert!(other.is_resumable(), "a mismatch is not claimed");
    assert!(cache
        .take_confirmed(SessionKey::new(&[7; 32], b"ctx"), other.clone())
        .is_none());
    let old = versioned(7, 0, ProtocolVersion::TLS1_3);
    assert!(cache
        .take_confirmed(SessionKey::new(&[7; 32], b""), old)
        .is_none());
    let tls12 = versioned(7, clock.now(), ProtocolVersion::TLS1_2);
    assert!(cache
        .take_confirmed(SessionKey::new(&[7; 32], b""), tls12.clone())
        .is_none());
    assert!(tls12.is_resumable());
    assert!(cache
        .take_confirmed(SessionKey::new(&[], b""), other)
        .is_none());
    assert_eq!(cache.stats().cb_hits, 1);
}
