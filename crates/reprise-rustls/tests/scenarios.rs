//! The behaviour scenarios of `shared/spec/scenarios.md`, on real rustls handshakes in memory,
//! for TLS 1.2 and TLS 1.3, with exact counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{replay_client_hello, transfer, Configs, Counts, Pair, Pki, Server, Version, T0};
use reprise::{
    CacheMode, ManualClock, Role, SecretBytes, Session, SessionCache, SessionKey, SharedSession,
    Stats,
};
use reprise_rustls::{derive_sid_ctx, ClientAuth, ClientStore, ServerStore};
use rustls::HandshakeKind::{Full, Resumed};

fn pki() -> Arc<Pki> {
    Arc::new(Pki::new())
}

/// Counter changes between two moments.
#[derive(Debug, PartialEq, Eq, Default, Clone, Copy)]
struct Delta {
    new: usize,
    remove: usize,
    get: usize,
    hits: u64,
    misses: u64,
    cb_hits: u64,
    timeouts: u64,
    cache_full: u64,
}

struct Mark {
    counts: Counts,
    stats: Stats,
}

impl Server {
    fn mark(&self) -> Mark {
        Mark {
            counts: self.rec.counts(),
            stats: self.cache.stats(),
        }
    }

    fn since(&self, m: &Mark) -> Delta {
        let c = self.rec.counts();
        let s = self.cache.stats();
        Delta {
            new: c.new - m.counts.new,
            remove: c.remove - m.counts.remove,
            get: c.get - m.counts.get,
            hits: s.hits - m.stats.hits,
            misses: s.misses - m.stats.misses,
            cb_hits: s.cb_hits - m.stats.cb_hits,
            timeouts: s.timeouts - m.stats.timeouts,
            cache_full: s.cache_full - m.stats.cache_full,
        }
    }
}

macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        mod tls12 {
            $( #[test] fn $name() { super::$name(super::Version::Tls12) } )*
        }
        mod tls13 {
            $( #[test] fn $name() { super::$name(super::Version::Tls13) } )*
        }
    };
}

both_versions!(
    s01_internal_cache_only,
    s02_external_cache_only,
    s02_no_internal_store_alone,
    s03_both_caches,
    s04_caching_off,
    s05_timeout,
    s05_timeout_boundary,
    s06_size_limit_one,
    s06_size_limit_three,
    s07_flush,
    s08_auto_flush,
    s08_no_auto_clear,
    s09_add_remove,
    s10_new_callback_returns_false,
    s11_context_isolation,
    s11_client_auth_isolation,
    s12_clean_close_keeps_session,
    s12_peer_closes_without_close_notify_keeps_session,
    s12_server_closes_on_timeout_keeps_session,
    s12_corrupted_record_after_handshake_removes,
    s12_fatal_alert_after_handshake_removes,
    s12_resumed_connection_failing_removes_its_session,
    s12_application_abort_removes,
    s12_incomplete_handshake_removes_nothing,
    s13_drop,
    s14_update_time_on_get_copy,
    s15_client_cache,
    s17_hostile_keys,
);

/// Scenario 1: Internal cache only.
fn s01_internal_cache_only(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Full);
    let per = v.per_handshake();
    assert_eq!(
        srv.since(&m),
        Delta {
            new: per,
            ..Default::default()
        }
    );
    assert_eq!(srv.cache.len(), per);

    let m = srv.mark();
    let resumed = srv.connect_keep(&client);
    assert_eq!(resumed.server.handshake_kind(), Some(Resumed));
    match v {
        Version::Tls12 => {
            assert_eq!(
                srv.since(&m),
                Delta {
                    hits: 1,
                    ..Default::default()
                }
            );
            assert_eq!(srv.cache.len(), 1);
        }
        Version::Tls13 => {
            // The ticket is taken (remove callback) and two fresh ones are issued.
            assert_eq!(
                srv.since(&m),
                Delta {
                    new: 2,
                    remove: 1,
                    hits: 1,
                    ..Default::default()
                }
            );
            assert_eq!(srv.cache.len(), 3);
            // Offering that same ticket again: a full handshake.
            let m = srv.mark();
            let kind = replay_client_hello(&resumed.client_flights, &srv.config, &srv.store);
            assert_eq!(kind, Some(Full));
            assert_eq!(
                srv.since(&m),
                Delta {
                    misses: 1,
                    get: 1,
                    ..Default::default()
                }
            );
        }
    }
}

/// Scenario 2: External cache only: NO_INTERNAL, and the get callback serves what the new callback kept.
fn s02_external_cache_only(v: Version) {
    let srv = Server::new(&pki(), v, true);
    srv.cache
        .set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL);
    let client = srv.client();
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Full);
    let per = v.per_handshake();
    assert_eq!(
        srv.since(&m),
        Delta {
            new: per,
            ..Default::default()
        }
    );
    assert_eq!(srv.cache.len(), 0);

    let m = srv.mark();
    assert_eq!(srv.connect(&client), Resumed);
    let expected = match v {
        Version::Tls12 => Delta {
            get: 1,
            cb_hits: 1,
            hits: 1,
            ..Default::default()
        },
        // Single use through the trio: the used ticket gets the remove callback, which deletes
        // it from the external map; two fresh tickets go there.
        Version::Tls13 => Delta {
            get: 1,
            cb_hits: 1,
            hits: 1,
            new: 2,
            remove: 1,
            ..Default::default()
        },
    };
    assert_eq!(srv.since(&m), expected);
    assert_eq!(srv.cache.len(), 0);
    if v == Version::Tls13 {
        assert_eq!(srv.rec.external.lock().len(), 3);
    }
}

/// Scenario 2b: NO_INTERNAL_STORE alone: the internal lookup runs (and misses) before the get callback.
fn s02_no_internal_store_alone(v: Version) {
    let srv = Server::new(&pki(), v, true);
    srv.cache
        .set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    assert_eq!(srv.cache.len(), 0);
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Resumed);
    let d = srv.since(&m);
    assert_eq!((d.misses, d.get, d.cb_hits, d.hits), (1, 1, 1, 1));
    assert_eq!(srv.cache.len(), 0);
}

/// Scenario 3: Both caches under NO_INTERNAL_LOOKUP: a session from the get callback is copied into the
/// internal cache, unless NO_INTERNAL_STORE is also set. TLS 1.3 tickets are consumed instead.
fn s03_both_caches(v: Version) {
    for also_no_store in [false, true] {
        let srv = Server::new(&pki(), v, true);
        let client = srv.client();
        // Made while the internal cache is not written, so only the external map has it.
        srv.cache
            .set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL);
        assert_eq!(srv.connect(&client), Full);
        let mut mode = CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP;
        if also_no_store {
            mode |= CacheMode::NO_INTERNAL_STORE;
        }
        srv.cache.set_mode(mode);
        let before = srv.cache.len();
        let m = srv.mark();
        assert_eq!(srv.connect(&client), Resumed);
        let d = srv.since(&m);
        assert_eq!((d.misses, d.get, d.cb_hits), (0, 1, 1));
        let grown = srv.cache.len() - before;
        match (v, also_no_store) {
            (Version::Tls12, false) => assert_eq!(grown, 1, "copied into the internal cache"),
            (Version::Tls12, true) => assert_eq!(grown, 0),
            // Never copied: the two new tickets only, stored unless NO_INTERNAL_STORE.
            (Version::Tls13, false) => assert_eq!(grown, 2),
            (Version::Tls13, true) => assert_eq!(grown, 0),
        }
    }
}

/// Scenario 4: Caching OFF: nothing stored, no new callback, but the get callback is still asked.
fn s04_caching_off(v: Version) {
    let srv = Server::new(&pki(), v, true);
    let old_client = srv.client();
    assert_eq!(srv.connect(&old_client), Full);
    // Empty the internal cache without deleting the external copy.
    srv.rec.remove_deletes.store(false, Ordering::SeqCst);
    srv.cache.flush_all();
    srv.rec.remove_deletes.store(true, Ordering::SeqCst);
    assert_eq!(srv.cache.set_mode(CacheMode::OFF), CacheMode::SERVER);

    let m = srv.mark();
    assert_eq!(srv.connect(&srv.client()), Full);
    assert_eq!(
        srv.since(&m),
        Delta {
            misses: 0,
            ..Default::default()
        }
    );
    assert_eq!(srv.cache.len(), 0);

    let m = srv.mark();
    assert_eq!(srv.connect(&old_client), Resumed);
    let d = srv.since(&m);
    assert_eq!((d.new, d.get, d.cb_hits, d.misses), (0, 1, 1, 1));
}

/// Scenario 5: Timeout: 10 s; 11 s later the session has expired.
fn s05_timeout(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_timeout_secs(10);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    srv.clock.advance(11);
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Full);
    let per = v.per_handshake();
    assert_eq!(
        srv.since(&m),
        Delta {
            new: per,
            remove: 1,
            timeouts: 1,
            ..Default::default()
        }
    );
    // TLS 1.2: the new session only. TLS 1.3: the unused old ticket (not yet flushed) and two new.
    assert_eq!(
        srv.cache.len(),
        match v {
            Version::Tls12 => 1,
            Version::Tls13 => 3,
        }
    );
}

/// Scenario 5b: At exactly 10 s the session still resumes.
fn s05_timeout_boundary(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_timeout_secs(10);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    srv.clock.advance(10);
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Resumed);
    assert_eq!(srv.since(&m).timeouts, 0);
}

/// Scenario 6: Size limit 1: only the newest session survives.
fn s06_size_limit_one(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_size_limit(1);
    let (first, second) = (srv.client(), srv.client());
    let m = srv.mark();
    assert_eq!(srv.connect(&first), Full);
    assert_eq!(srv.connect(&second), Full);
    // TLS 1.2: two sessions, one evicted. TLS 1.3: four tickets, three evicted.
    let evicted = 2 * v.per_handshake() - 1;
    let d = srv.since(&m);
    assert_eq!((d.cache_full, d.remove), (evicted as u64, evicted));
    assert_eq!(srv.cache.len(), 1);
    // Only the second client's (newest) session resumes.
    assert_eq!(srv.connect(&second), Resumed);
    assert_eq!(srv.connect(&first), Full);
}

/// Scenario 6b: Size limit 3 with 5 sessions holds exactly 3.
fn s06_size_limit_three(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_size_limit(3);
    let m = srv.mark();
    let mut made = 0;
    while made < 5 {
        assert_eq!(srv.connect(&srv.client()), Full);
        made += v.per_handshake();
    }
    assert_eq!(srv.cache.len(), 3);
    let d = srv.since(&m);
    assert_eq!(d.cache_full as usize, made - 3);
    assert_eq!(d.remove, made - 3);
}

/// Scenario 7: Flush: sessions made at now−10, now and now+10, each with timeout 10.
fn s07_flush(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_timeout_secs(10);
    let now = T0 + 100;
    for t in [now - 10, now, now + 10] {
        srv.clock.set(t);
        assert_eq!(srv.connect(&srv.client()), Full);
    }
    let per = v.per_handshake();
    let times = |cache: &SessionCache| {
        let mut t: Vec<u64> = cache.sessions().iter().map(|s| s.time()).collect();
        t.sort();
        t
    };
    let m = srv.mark();
    assert_eq!(srv.cache.flush(now + 9), per);
    assert!(times(&srv.cache).iter().all(|&t| t >= now));
    assert_eq!(srv.cache.flush(now + 11), per);
    assert!(times(&srv.cache).iter().all(|&t| t == now + 10));
    assert_eq!(srv.cache.flush(now + 21), per);
    assert_eq!(srv.cache.len(), 0);
    assert_eq!(srv.since(&m).remove, 3 * per);

    // Re-add the three (their objects, from the remove callback) and flush everything.
    let removed: Vec<SharedSession> = srv.rec.removed.lock().clone();
    for s in &removed {
        assert!(srv.cache.add(s));
    }
    let m = srv.mark();
    assert_eq!(srv.cache.flush_all(), 3 * per);
    assert_eq!(srv.since(&m).remove, 3 * per);
    assert_eq!(srv.cache.len(), 0);
}

/// Ten sessions, already expired, then 255 completed handshakes.
fn auto_flush_run(v: Version, mode: CacheMode) -> (usize, usize) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_mode(mode);
    for i in 0..10u8 {
        let s = Session::builder(&[i + 1; 32], SecretBytes::from(vec![0; 8]))
            .sid_ctx(b"scenario")
            .time(T0 - 1000)
            .timeout_secs(10)
            .build()
            .unwrap();
        assert!(srv.cache.add(&SharedSession::from(s)));
    }
    let m = srv.mark();
    let client = srv.client();
    for _ in 0..255 {
        srv.connect(&client);
    }
    assert_eq!(srv.cache.stats().accept_good, 255);
    let expired_left = srv
        .cache
        .sessions()
        .iter()
        .filter(|s| s.time() == T0 - 1000)
        .count();
    let removed_expired = srv
        .rec
        .removed
        .lock()
        .iter()
        .filter(|s| s.time() == T0 - 1000)
        .count();
    assert!(srv.since(&m).remove >= removed_expired);
    (expired_left, removed_expired)
}

/// Scenario 8: Auto-flush every 255 completed handshakes.
fn s08_auto_flush(v: Version) {
    assert_eq!(auto_flush_run(v, CacheMode::SERVER), (0, 10));
}

/// Scenario 8b: With NO_AUTO_CLEAR, the expired sessions are all still there.
fn s08_no_auto_clear(v: Version) {
    assert_eq!(
        auto_flush_run(v, CacheMode::SERVER | CacheMode::NO_AUTO_CLEAR),
        (10, 0)
    );
}

/// Scenario 9: add / remove, with sessions real handshakes made.
fn s09_add_remove(v: Version) {
    let srv = Server::new(&pki(), v, false);
    // Made without the internal store, so the new callback holds the only copy.
    srv.cache
        .set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    assert_eq!(srv.cache.len(), 0);
    // The newest session: the one rustls's client offers first. NO_INTERNAL_STORE stays on:
    // the application adds sessions by hand, and the internal cache is still searched.
    let s = &srv.rec.made.lock().last().cloned().unwrap();

    let m = srv.mark();
    assert!(srv.cache.add(s));
    assert!(!srv.cache.add(s));
    // t: another object with the same id replaces s, with no remove callback.
    let t = SharedSession::from(
        Session::builder(s.id().as_bytes(), s.payload())
            .sid_ctx(s.sid_ctx().as_bytes())
            .version(s.version())
            .time(s.time())
            .build()
            .unwrap(),
    );
    assert!(srv.cache.add(&t));
    assert_eq!(srv.cache.len(), 1);
    assert!(SharedSession::ptr_eq(
        &srv.cache.peek(s.id().as_bytes()).unwrap(),
        &t
    ));
    assert_eq!(srv.since(&m).remove, 0);

    // u was never cached: false, but the remove callback fires once and u is not resumable.
    let u = SharedSession::from(
        Session::builder(&[0xee; 32], SecretBytes::from(vec![1]))
            .build()
            .unwrap(),
    );
    let m = srv.mark();
    assert!(!srv.cache.remove(&u));
    assert_eq!(srv.since(&m).remove, 1);
    assert!(!u.is_resumable());
    // An empty id: false, and no callback.
    assert!(!srv.cache.remove_key(SessionKey::new(&[], b"scenario")));
    assert_eq!(srv.since(&m).remove, 1);

    // The replacement t carries the same state as s, so the client resumes through it.
    assert_eq!(srv.connect(&client), Resumed);
    // Removing t's id marks it not resumable and fires the callback; the id no longer resumes.
    if v == Version::Tls12 {
        let m = srv.mark();
        assert!(srv.cache.remove(&t));
        assert!(!t.is_resumable());
        assert_eq!(srv.since(&m).remove, 1);
        assert_eq!(srv.connect(&client), Full);
    }
}

/// Scenario 10: A new-session callback that returns false: the session leaves the internal cache at once.
fn s10_new_callback_returns_false(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.rec.keep.store(false, Ordering::SeqCst);
    let client = srv.client();
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Full);
    assert_eq!(srv.cache.len(), 0);
    let d = srv.since(&m);
    assert_eq!(d.new, v.per_handshake());
    assert_eq!(srv.connect(&client), Full);
}

/// Scenario 11: One cache, two server configs with different contexts: nothing crosses.
fn s11_context_isolation(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let store_b = common::store(&srv.cache, b"config-b");
    let config_b = srv.pki.server_config(v, store_b.clone(), ClientAuth::None);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    let made_on_a: Vec<SharedSession> = srv.rec.made.lock().clone();

    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &config_b, &store_b, None);
    assert_eq!(pair.handshake(), Full);
    pair.close_cleanly();
    let d = srv.since(&m);
    assert_eq!(
        (d.hits, d.misses, d.cb_hits, d.timeouts, d.get, d.remove),
        (0, 0, 0, 0, 0, 0)
    );
    // B could neither resume nor consume A's sessions: they are all still cached.
    for s in &made_on_a {
        assert!(srv
            .cache
            .peek(s.id().as_bytes())
            .is_some_and(|c| SharedSession::ptr_eq(&c, s)));
        assert!(s.is_resumable());
    }
}

/// Scenario 11b: Same certificate, one config requires client certificates and one doesn't.
fn s11_client_auth_isolation(v: Version) {
    let pki = pki();
    let clock = Arc::new(ManualClock::new(T0));
    let cache = common::server_cache(&clock);
    let ctx_mtls = derive_sid_ctx(&pki.server_chain(), ClientAuth::Required, b"");
    let ctx_plain = derive_sid_ctx(&pki.server_chain(), ClientAuth::None, b"");
    assert_ne!(ctx_mtls, ctx_plain);
    assert_eq!(
        ServerStore::new(cache.clone(), reprise::SidCtx::EMPTY, ClientAuth::Required).err(),
        Some(reprise_rustls::Error::EmptySidCtxWithClientAuth)
    );
    let mtls = ServerStore::new(cache.clone(), ctx_mtls, ClientAuth::Required).unwrap();
    let plain = ServerStore::new(cache.clone(), ctx_plain, ClientAuth::None).unwrap();
    let mtls_config = pki.server_config(v, mtls.clone(), ClientAuth::Required);
    let plain_config = pki.server_config(v, plain.clone(), ClientAuth::None);
    let client = pki.client_config(v, None, true);

    let run = |config, store: &ServerStore| {
        let mut pair = Pair::new(&client, "localhost", config, store, None);
        let kind = pair.handshake();
        pair.close_cleanly();
        kind
    };
    assert_eq!(run(&mtls_config, &mtls), Full);
    let before = cache.stats();
    assert_eq!(run(&plain_config, &plain), Full);
    let after = cache.stats();
    assert_eq!(
        (after.hits, after.misses, after.timeouts),
        (before.hits, before.misses, before.timeouts)
    );
    // And back: the client offers its newest session, the plain config's, which does not
    // resume on the mTLS config either.
    assert_eq!(run(&mtls_config, &mtls), Full);
}

/// Scenario 12 (clean): the peer closes without close_notify (a FIN or a RST: in memory, the
/// connection is simply dropped after a complete exchange). remove=0, and the session resumes.
/// The server's handle is dropped without `closed_cleanly()`: that is the library's default.
fn s12_peer_closes_without_close_notify_keeps_session(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    assert!(!pair.server_sessions.has_failed());
    drop(pair);
    assert_eq!(srv.since(&m).remove, 0);
    assert_eq!(srv.cache.len(), v.per_handshake());
    assert_eq!(srv.connect(&client), Resumed);
}

/// Scenario 12 (clean): the server closes on an idle timeout: it sends close_notify and drops
/// the connection, the client never answers. remove=0, and the session resumes.
fn s12_server_closes_on_timeout_keeps_session(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    pair.server.send_close_notify();
    transfer(&mut pair.server, &mut pair.client);
    drop(pair);
    assert_eq!(srv.since(&m).remove, 0);
    assert_eq!(srv.connect(&client), Resumed);
}

/// Scenario 12 (clean): after close_notify both ways the session resumes.
fn s12_clean_close_keeps_session(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    assert_eq!(srv.connect(&client), Full);
    assert_eq!(srv.since(&m).remove, 0);
    assert_eq!(srv.connect(&client), Resumed);
}

/// A record that fails to decrypt (as a record corrupted on the way would).
fn corrupted_record() -> Vec<u8> {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend([0x5a; 0x40]);
    record
}

/// Feeds `bytes` to the server and processes them: it must fail.
fn server_fails_on(pair: &mut Pair, bytes: &[u8]) {
    let mut rd = bytes;
    while !rd.is_empty() {
        pair.server.read_tls(&mut rd).unwrap();
    }
    assert!(pair.server_sessions.process(&mut pair.server).is_err());
}

/// Makes the client send a fatal alert (it reads a corrupted record: bad_record_mac), and lets
/// the server receive it.
fn client_sends_fatal_alert(pair: &mut Pair) {
    let record = corrupted_record();
    let mut rd = &record[..];
    while !rd.is_empty() {
        pair.client.read_tls(&mut rd).unwrap();
    }
    assert!(pair.client.process_new_packets().is_err());
    let alert = transfer(&mut pair.client, &mut pair.server);
    assert!(!alert.is_empty(), "the client sent its alert");
    assert!(pair.server_sessions.process(&mut pair.server).is_err());
}

/// Scenario 12 (unclean): the handshake completes, then the server reads a corrupted record
/// (and answers with a fatal alert). remove=1 for each session the connection created, and
/// they don't resume.
fn s12_corrupted_record_after_handshake_removes(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    assert_eq!(srv.cache.len(), v.per_handshake());
    server_fails_on(&mut pair, &corrupted_record());
    assert!(pair.server_sessions.has_failed());
    assert_eq!(srv.since(&m).remove, v.per_handshake());
    assert_eq!(srv.cache.len(), 0);
    drop(pair);
    assert_eq!(srv.since(&m).remove, v.per_handshake(), "once only");
    assert_eq!(srv.connect(&client), Full);
}

/// Scenario 12 (unclean): the handshake completes, then the client sends a fatal alert. The
/// connection's sessions are removed and don't resume.
fn s12_fatal_alert_after_handshake_removes(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    client_sends_fatal_alert(&mut pair);
    assert!(pair.server_sessions.has_failed());
    assert_eq!(srv.since(&m).remove, v.per_handshake());
    drop(pair);
    assert_eq!(srv.connect(&client), Full);
}

/// Scenario 12 (unclean): a resumed connection that fails removes the session it resumed, as
/// well as those it created (TLS 1.3: the new tickets).
fn s12_resumed_connection_failing_removes_its_session(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Resumed);
    let created = match v {
        Version::Tls12 => 0,
        Version::Tls13 => v.per_handshake(),
    };
    assert_eq!(pair.server_sessions.sessions().len(), created + 1);
    // Taking a TLS 1.3 ticket already called the remove callback once (`Removal::Taken`).
    let taken = usize::from(v == Version::Tls13);
    assert_eq!(srv.since(&m).remove, taken);
    client_sends_fatal_alert(&mut pair);
    assert_eq!(srv.since(&m).remove, taken + created + 1);
    drop(pair);
    if v == Version::Tls12 {
        assert_eq!(srv.cache.len(), 0);
        assert_eq!(srv.connect(&client), Full);
    }
}

/// Scenario 12: the application reports an abort with `failed()`: the sessions are removed.
/// Before the handshake completed, `failed()` removes nothing.
fn s12_application_abort_removes(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    let m = srv.mark();
    let pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    pair.server_sessions.failed();
    assert!(pair.server_sessions.has_failed());
    drop(pair);
    assert_eq!(srv.since(&m).remove, 0);

    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    pair.server_sessions.failed();
    assert_eq!(srv.since(&m).remove, v.per_handshake());
    pair.server_sessions.failed();
    assert_eq!(srv.since(&m).remove, v.per_handshake(), "once only");
}

/// Scenario 12: a connection that never completed its handshake removes nothing, even when it
/// fails.
fn s12_incomplete_handshake_removes_nothing(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    let m = srv.mark();
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    transfer(&mut pair.client, &mut pair.server);
    pair.server_sessions.process(&mut pair.server).unwrap();
    server_fails_on(&mut pair, &corrupted_record());
    assert!(pair.server.is_handshaking());
    drop(pair);
    // Only the take of the offered TLS 1.3 ticket (`Removal::Taken`), nothing on failure.
    assert_eq!(srv.since(&m).remove, usize::from(v == Version::Tls13));
    assert_eq!(srv.connect(&client), Resumed);
}

/// A client session store that reads another one and keeps nothing: an attacker that knows a
/// victim's TLS 1.2 session id (it travels in clear) offers it, without spoiling the victim's
/// own store.
#[derive(Debug)]
struct ReadOnly(Arc<rustls::client::ClientSessionMemoryCache>);

impl rustls::client::ClientSessionStore for ReadOnly {
    fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, _: rustls::NamedGroup) {}

    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }

    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.tls12_session(name)
    }

    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
    }

    fn take_tls13_ticket(
        &self,
        _: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// Scenario 12, TLS 1.2 (attack 3 of issue 13): a client offers a cached session's id and
/// fails the resumption (a wrong Finished), or is refused it by the TLS stack and completes a
/// full handshake, then fails: remove=0 for the offered session, which still resumes for its
/// owner. Only the attacker's own new session is removed.
#[test]
fn s12_forged_session_id_removes_nothing_tls12() {
    use rustls::client::{ClientSessionMemoryCache, Resumption};

    let srv = Server::new(&pki(), Version::Tls12, false);
    let store = Arc::new(ClientSessionMemoryCache::new(8));
    let mut victim = (*srv.client()).clone();
    victim.resumption = Resumption::store(store.clone());
    let victim = Arc::new(victim);
    assert_eq!(srv.connect(&victim), Full);
    let victim_id = srv.rec.made.lock()[0].id().as_bytes().to_vec();

    // A wrong Finished: the resumption's last flight does not verify.
    let m = srv.mark();
    let mut pair = Pair::new(&victim, "localhost", &srv.config, &srv.store, None);
    transfer(&mut pair.client, &mut pair.server);
    pair.server_sessions.process(&mut pair.server).unwrap();
    transfer(&mut pair.server, &mut pair.client);
    pair.client.process_new_packets().unwrap();
    let mut finished = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut finished).unwrap();
    }
    let last = finished.len() - 1;
    finished[last] ^= 0x55;
    server_fails_on(&mut pair, &finished);
    assert!(pair.server.is_handshaking());
    assert!(pair.server_sessions.sessions().is_empty());
    drop(pair);
    assert_eq!(srv.since(&m).remove, 0);

    // Refused by the TLS stack (no SNI: rustls resumes only under the same name), a full
    // handshake, then a fatal alert: only the attacker's own session goes.
    let mut attacker = (*victim).clone();
    attacker.resumption = Resumption::store(Arc::new(ReadOnly(store.clone())));
    attacker.enable_sni = false;
    let attacker = Arc::new(attacker);
    let mut pair = Pair::new(&attacker, "localhost", &srv.config, &srv.store, None);
    let hello = transfer(&mut pair.client, &mut pair.server);
    assert!(
        hello.windows(victim_id.len()).any(|w| w == victim_id),
        "the attacker offers the victim's id"
    );
    pair.server_sessions.process(&mut pair.server).unwrap();
    assert_eq!(pair.handshake(), Full);
    client_sends_fatal_alert(&mut pair);
    assert_eq!(srv.since(&m).remove, 1);
    assert_ne!(
        srv.rec.removed.lock()[0].id().as_bytes(),
        &victim_id[..],
        "the attacker's own session was removed, not the victim's"
    );
    drop(pair);

    // And a plain kill after the full handshake removes nothing at all.
    let m = srv.mark();
    let mut pair = Pair::new(&attacker, "localhost", &srv.config, &srv.store, None);
    assert_eq!(pair.handshake(), Full);
    drop(pair);
    assert_eq!(srv.since(&m).remove, 0);

    assert_eq!(srv.connect(&victim), Resumed, "the victim still resumes");
}

/// Scenario 13: Drop: every cached session gets the remove callback.
fn s13_drop(v: Version) {
    let srv = Server::new(&pki(), v, false);
    srv.cache.set_size_limit(5);
    while srv.cache.len() < 5 {
        srv.connect(&srv.client());
    }
    let rec = srv.rec.clone();
    let before = rec.counts().remove;
    drop(srv);
    assert_eq!(rec.counts().remove - before, 5);
}

/// Scenario 14: UPDATE_TIME: a get-callback result is copied in with its time set to now.
fn s14_update_time_on_get_copy(v: Version) {
    let srv = Server::new(&pki(), v, true);
    srv.cache
        .set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    srv.clock.advance(100);
    srv.cache
        .set_mode(CacheMode::SERVER | CacheMode::UPDATE_TIME);
    assert_eq!(srv.connect(&client), Resumed);
    // Every session in the cache was added now: the copied one (TLS 1.2) or new tickets.
    let times: Vec<u64> = srv.cache.sessions().iter().map(|s| s.time()).collect();
    assert!(!times.is_empty());
    assert!(times.iter().all(|&t| t == T0 + 100), "{times:?}");
}

/// Scenario 14b: UPDATE_TIME on add: a session whose time is now−100 gets time now.
#[test]
fn s14_update_time_on_add() {
    let clock = Arc::new(ManualClock::new(T0));
    let cache: SessionCache = SessionCache::builder()
        .clock(clock.clone())
        .mode(CacheMode::SERVER | CacheMode::UPDATE_TIME)
        .build();
    let s = SharedSession::from(
        Session::builder(&[5; 32], SecretBytes::from(vec![0; 4]))
            .time(T0 - 100)
            .build()
            .unwrap(),
    );
    assert!(cache.add(&s));
    assert_eq!(s.time(), T0);
    // Re-adding the identical object is still false, and refreshes the time.
    clock.advance(50);
    assert!(!cache.add(&s));
    assert_eq!(s.time(), T0 + 50);
    // The refreshed expiry is what flush sees.
    assert_eq!(cache.flush(T0 + 301), 0);
    assert_eq!(cache.flush(T0 + 351), 1);
}

/// Scenario 15: The client cache, behind rustls's ClientSessionStore.
fn s15_client_cache(v: Version) {
    let srv = Server::new(&pki(), v, false);
    let client_clock = Arc::new(ManualClock::new(T0));
    let client_cache: Arc<SessionCache<reprise_rustls::ClientSession>> = Arc::new(
        reprise::CacheBuilder::new()
            .mode(CacheMode::CLIENT)
            .clock(client_clock.clone())
            .build(),
    );
    let new = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = new.clone();
    client_cache.set_new_session_callback(Some(Arc::new(move |_, _| {
        n.fetch_add(1, Ordering::SeqCst);
        true
    })));
    let store = ClientStore::new(client_cache.clone());
    let config = srv.pki.client_config(v, Some(store.clone()), false);
    let connect = |name: &str| {
        let mut pair = Pair::new(&config, name, &srv.config, &srv.store, Some(&store));
        let kind = pair.handshake();
        pair.close_cleanly();
        kind
    };
    let per = v.per_handshake();

    assert_eq!(connect("localhost"), Full);
    assert_eq!(new.load(Ordering::SeqCst), per);
    assert_eq!(client_cache.len(), per);
    // Sessions are per server name: another name starts with nothing.
    assert_eq!(connect("other.test"), Full);
    assert_eq!(client_cache.len(), 2 * per);
    assert_eq!(connect("localhost"), Resumed);
    let stats = client_cache.stats();
    assert_eq!((stats.connect, stats.connect_good), (3, 3));
    match v {
        // A resumed TLS 1.2 handshake makes no new session: no new callback.
        Version::Tls12 => assert_eq!(new.load(Ordering::SeqCst), 2),
        // One ticket was offered (and taken); two new ones arrived.
        Version::Tls13 => {
            assert_eq!(new.load(Ordering::SeqCst), 6);
            assert_eq!(client_cache.len(), 5);
            // Each ticket is offered once: two more resumptions use the two remaining tickets
            // for localhost newest first, and each handshake brings two more.
            assert_eq!(connect("localhost"), Resumed);
        }
    }

    // The timeout applies: past it, the client offers nothing and the handshake is full.
    client_clock.advance(client_cache.timeout_secs() + 1);
    assert_eq!(connect("localhost"), Full);
    assert!(client_cache.stats().timeouts >= 1);

    // The size limit applies.
    client_cache.set_size_limit(1);
    connect("other.test");
    assert_eq!(client_cache.len(), 1);
}

/// Scenario 17: Hostile keys through the rustls store interface: misses, no store asked, no panic.
fn s17_hostile_keys(v: Version) {
    use rustls::server::StoresServerSessions;
    let srv = Server::new(&pki(), v, true);
    assert_eq!(srv.connect(&srv.client()), Full);
    let before = srv.mark();
    let big: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for key in [&[][..], &[7u8; 33][..], &big[..]] {
        assert_eq!(srv.store.get(key), None);
        assert_eq!(srv.store.take(key), None);
        assert!(!srv.store.put(key.to_vec(), vec![0; 8]));
    }
    let d = srv.since(&before);
    assert_eq!((d.get, d.hits, d.remove, d.new), (0, 0, 0, 0));
    assert_eq!(
        srv.cache.stats().rejected_keys - before.stats.rejected_keys,
        6
    );
    assert_eq!(srv.cache.len(), v.per_handshake());
}

/// The version recorded on each session is the one negotiated.
#[test]
fn sessions_carry_the_negotiated_version() {
    for v in common::VERSIONS {
        let srv = Server::new(&pki(), v, false);
        srv.connect(&srv.client());
        let expected = match v {
            Version::Tls12 => reprise::ProtocolVersion::TLS1_2,
            Version::Tls13 => reprise::ProtocolVersion::TLS1_3,
        };
        assert!(srv.cache.sessions().iter().all(|s| s.version() == expected));
    }
}

/// Accept statistics come from the connection handles.
#[test]
fn accept_statistics() {
    let srv = Server::new(&pki(), Version::Tls13, false);
    let client = srv.client();
    srv.connect(&client);
    srv.connect(&client);
    let _never_finished = srv.store.connection();
    let stats = srv.cache.stats();
    assert_eq!((stats.accept, stats.accept_good), (3, 2));
    let _ = Role::Server;
}

/// A TLS 1.2 session id is sent in the clear: offered as a TLS 1.3 ticket (a take), it is
/// refused and not consumed, so the client it belongs to still resumes.
#[test]
fn a_tls12_id_taken_as_a_ticket_is_not_burned() {
    use rustls::server::StoresServerSessions;
    let srv = Server::new(&pki(), Version::Tls12, false);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    let id = srv.rec.made.lock()[0].id().as_bytes().to_vec();
    let m = srv.mark();
    assert!(srv.store.take(&id).is_none());
    assert_eq!(srv.since(&m).remove, 0);
    assert_eq!(srv.cache.len(), 1);
    assert_eq!(srv.connect(&client), Resumed);
}

/// With a shared tier whose take confirms nothing (as `reprise-redis`'s prefetch wiring), a
/// local copy never resumes a ticket; the ticket the tier handed over for one connection
/// (`confirm_take`, as `reprise serve` does after its prefetch) resumes on that connection,
/// once, and is one of the connection's sessions.
#[test]
fn with_a_shared_tier_only_a_ticket_confirmed_for_the_connection_resumes() {
    use reprise_rustls::client_hello::{parse, Parsed};
    let srv = Server::new(&pki(), Version::Tls13, false);
    let client = srv.client();
    assert_eq!(srv.connect(&client), Full);
    srv.cache
        .set_take_session_callback(Some(Arc::new(|_, _| None)));

    // No confirmation: the offered ticket's local copy does not resume, and leaves the cache.
    let before = srv.cache.len();
    assert_eq!(srv.connect(&client), Full);
    assert_eq!(srv.cache.len(), before - 1 + 2);

    // The offered ticket confirmed for this connection (a copy, as Redis hands it over).
    let mut pair = Pair::new(&client, "localhost", &srv.config, &srv.store, None);
    let mut hello = Vec::new();
    pair.client.write_tls(&mut hello).unwrap();
    let Parsed::Complete(info) = parse(&hello) else {
        panic!("the ClientHello did not parse");
    };
    let id = info.psk_identities[0].clone();
    let local = srv.cache.peek(&id).unwrap();
    let confirmed = SharedSession::from(
        srv.cache
            .session(&id, local.payload())
            .sid_ctx(local.sid_ctx().as_bytes())
            .version(local.version())
            .build()
            .unwrap(),
    );
    pair.server_sessions.confirm_take(confirmed.clone());
    let mut rd = &hello[..];
    while !rd.is_empty() {
        pair.server.read_tls(&mut rd).unwrap();
    }
    pair.server_sessions.process(&mut pair.server).unwrap();
    assert_eq!(pair.handshake(), Resumed);
    assert!(!confirmed.is_resumable(), "taken");
    assert!(srv.cache.peek(&id).is_none(), "the local copy left");
    assert!(pair
        .server_sessions
        .sessions()
        .iter()
        .any(|s| SharedSession::ptr_eq(s, &confirmed)));
    pair.close_cleanly();
}
