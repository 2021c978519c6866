//! Scenario 16: callbacks that call back into the cache, during eviction, flush, explicit
//! remove, expiry at lookup and drop, neither deadlock nor panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reprise::{
    CacheMode, ManualClock, Role, SecretBytes, Session, SessionCache, SessionKey, SharedSession,
};

fn session(id: u8, time: u64, timeout: u64) -> SharedSession {
    SharedSession::from(
        Session::builder(&[id; 32], SecretBytes::from(vec![id; 16]))
            .time(time)
            .timeout_secs(timeout)
            .build()
            .unwrap(),
    )
}

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A cache whose remove callback adds, removes, looks up and counts on the same cache.
fn reentrant_cache(
    clock: &Arc<ManualClock>,
    limit: usize,
) -> (Arc<SessionCache>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let cache = Arc::new(
        SessionCache::builder()
            .clock(clock.clone())
            .size_limit(limit)
            .remove_session_callback(Arc::new(
                move |cache: &SessionCache, s: &SharedSession, _why| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    if DEPTH.with(|d| d.get()) > 0 {
                        return;
                    }
                    DEPTH.with(|d| d.set(1));
                    let id = s.id().as_bytes()[0];
                    // Everything a callback may do, on the cache that is calling it.
                    let _ = cache.len();
                    let _ = cache.lookup(Role::Server, SessionKey::new(s.id().as_bytes(), b""));
                    let again = session(id.wrapping_add(100), cache.now(), 300);
                    cache.add(&again);
                    cache.remove(&again);
                    let _ = cache.stats();
                    let _ = cache.sessions();
                    assert!(cache.size_limit() == 0 || cache.len() <= cache.size_limit());
                    DEPTH.with(|d| d.set(0));
                },
            ))
            .build(),
    );
    (cache, calls)
}

#[test]
fn during_eviction() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (cache, calls) = reentrant_cache(&clock, 2);
    for id in 1..=5 {
        cache.add(&session(id, 1_000, 300));
    }
    // The callbacks' own adds evict too, so fewer may remain; never more than the limit, and
    // the newest session is never a victim.
    assert!((1..=2).contains(&cache.len()));
    assert!(cache.peek(&[5; 32]).is_some());
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert!(cache.stats().cache_full >= 3);
}

#[test]
fn during_flush_and_flush_all() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (cache, calls) = reentrant_cache(&clock, 0);
    for id in 1..=5 {
        cache.add(&session(id, 1_000, id as u64));
    }
    assert_eq!(cache.flush(1_004), 3);
    // 3 flushed, and each callback's own add+remove adds one more call.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.flush_all(), 2);
    assert_eq!(cache.len(), 0);
}

#[test]
fn during_explicit_remove_and_expiry_at_lookup() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (cache, calls) = reentrant_cache(&clock, 0);
    let s = session(1, 1_000, 10);
    cache.add(&s);
    assert!(cache.remove(&s));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let t = session(2, 1_000, 10);
    cache.add(&t);
    clock.advance(11);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(t.id().as_bytes(), b""))
        .is_none());
    assert_eq!(cache.stats().timeouts, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn during_take() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (cache, calls) = reentrant_cache(&clock, 0);
    let s = session(1, 1_000, 10);
    cache.add(&s);
    let taken = cache.take(Role::Server, SessionKey::new(s.id().as_bytes(), b""));
    assert!(taken.is_some_and(|t| SharedSession::ptr_eq(&t, &s)));
    assert!(!s.is_resumable());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn during_drop() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (cache, calls) = reentrant_cache(&clock, 0);
    for id in 1..=5 {
        cache.add(&session(id, 1_000, 300));
    }
    let cache = Arc::try_unwrap(cache).unwrap();
    drop(cache);
    // Five sessions, each with a callback; the callbacks' own adds are refused while the
    // cache is being dropped, and their removes of never-cached sessions fire once each.
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[test]
fn new_and_get_callbacks_may_reenter() {
    let clock = Arc::new(ManualClock::new(1_000));
    let cache: SessionCache = SessionCache::builder()
        .clock(clock)
        .mode(CacheMode::SERVER)
        .new_session_callback(Arc::new(|cache: &SessionCache, s: &SharedSession| {
            // Looks itself up, then keeps the session.
            cache
                .lookup(Role::Server, SessionKey::new(s.id().as_bytes(), b""))
                .is_some()
        }))
        .get_session_callback(Arc::new(|cache: &SessionCache, key: &SessionKey<'_>| {
            let _ = cache.len();
            let s = session(key.id[0], cache.now(), 300);
            cache.add(&s);
            Some(s)
        }))
        .build();
    let s = cache
        .session(&[9; 32], SecretBytes::from(vec![1]))
        .build()
        .unwrap();
    assert!(cache.new_session(Role::Server, s).stored_internally);
    // A miss goes to the get callback, which adds on its own; the result is valid.
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&[8; 32], b""))
        .is_some());
    assert_eq!(cache.len(), 2);
}
