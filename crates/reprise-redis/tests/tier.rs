//! The Redis tier against a real `redis-server` (and a real three-node cluster): sealing,
//! expiry, single-use takes, invalidation, fail-open behaviour and both wirings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use reprise::{
    Fetched, Offer, ProtocolVersion, Removal, Role, SecretBytes, SessionCache, SessionKey,
    SharedSession, Tier,
};
use reprise_redis::{KeyRing, Kind, RedisConfig, RedisTier, Wiring};
use reprise_testkit::{wait_until, RedisCluster, RedisServer};

const CTX: &[u8] = b"test-context";

fn ring(text: &str) -> KeyRing {
    KeyRing::parse(text).unwrap()
}

fn keys() -> KeyRing {
    ring(&format!("k1:{}", "5a".repeat(32)))
}

/// A tier with a generous read budget: tests must not depend on the machine's speed.
fn tier(url: &str, keys: KeyRing) -> RedisTier {
    let mut config = RedisConfig::new(url.parse().unwrap());
    config.read_timeout = Duration::from_secs(2);
    RedisTier::start(config, keys).unwrap()
}

/// A cache with the tier attached, as one instance of a fleet.
fn instance(tier: &RedisTier, wiring: Wiring) -> Arc<SessionCache> {
    let cache = Arc::new(SessionCache::new());
    cache.attach(Arc::new(tier.clone().with_wiring(wiring)));
    cache
}

/// The identities of an offer, borrowed.
fn refs(ids: &[Vec<u8>]) -> Vec<&[u8]> {
    ids.iter().map(Vec::as_slice).collect()
}

fn new_session(cache: &SessionCache, id: u8, version: ProtocolVersion) -> SharedSession {
    let payload = SecretBytes::from(format!("MASTER-SECRET-{id}-").repeat(4).into_bytes());
    let s = cache
        .session(&[id; 32], payload)
        .sid_ctx(CTX)
        .version(version)
        .build()
        .unwrap();
    let new = cache.new_session(Role::Server, s);
    assert!(new.is_stored());
    new.session
}

async fn wait_written(tier: &RedisTier, n: u64) {
    for _ in 0..500 {
        if tier.stats().stores_written >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not written: {:?}", tier.stats());
}

async fn wait_connected(tier: &RedisTier) {
    for _ in 0..500 {
        if tier.stats().connected == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never connected");
}

/// Two instances with their own tiers on one Redis, wired for prefetch, both connected.
async fn two_instances(
    redis: &RedisServer,
) -> (RedisTier, RedisTier, Arc<SessionCache>, Arc<SessionCache>) {
    let (ta, tb) = (tier(&redis.url(), keys()), tier(&redis.url(), keys()));
    let (a, b) = (
        instance(&ta, Wiring::Prefetch),
        instance(&tb, Wiring::Prefetch),
    );
    wait_connected(&ta).await;
    wait_connected(&tb).await;
    (ta, tb, a, b)
}

fn key(id: u8) -> [u8; 32] {
    [id; 32]
}

/// What one connection resumes when rustls takes the ticket `k` after prefetching `offer`, as
/// `ServerStore::take` does: the ticket Redis handed over for this connection if it is `k`,
/// else whatever the cache's own take gives (with a shared tier: nothing, whatever the cache
/// holds locally).
async fn prefetch_and_take(
    cache: &SessionCache,
    offer: Offer<'_>,
    k: SessionKey<'_>,
) -> Option<SharedSession> {
    let prefetched = cache.prefetch(offer).await;
    match prefetched.into_ticket() {
        Some(ticket) if ticket.id().as_bytes() == k.id => cache.take_confirmed(k, ticket),
        _ => cache.take(Role::Server, k),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_instance_resumes_on_another() {
    let redis = RedisServer::start();
    let (ta, tb, a, b) = two_instances(&redis).await;
    let made = new_session(&a, 1, ProtocolVersion::TLS1_2);
    wait_written(&ta, 1).await;

    assert!(b
        .lookup(Role::Server, SessionKey::new(&key(1), CTX))
        .is_none());
    let prefetched = b
        .prefetch(Offer {
            sid_ctx: CTX,
            session_id: Some(&key(1)),
            psk_identities: &[],
            client: None,
        })
        .await;
    assert!(
        prefetched.into_ticket().is_none(),
        "a TLS 1.2 session is no ticket"
    );
    let got = b
        .lookup(Role::Server, SessionKey::new(&key(1), CTX))
        .unwrap();
    assert_eq!(got.payload(), made.payload());
    assert_eq!(
        (got.time(), got.timeout_secs(), got.version()),
        (made.time(), made.timeout_secs(), made.version())
    );
    assert_eq!(tb.stats().prefetched, 1);

    // Redis expires it at the same second the cache would: the second after its last valid one.
    let redis_key = ta.redis_key(Kind::Session, SessionKey::new(&key(1), CTX));
    let expiretime: u64 = redis
        .command(&["EXPIRETIME", &redis_key])
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert_eq!(expiretime, made.expires_at() + 1);

    // Nothing in Redis reveals the payload (the master secret) or the context in the clear.
    let raw = redis.command(&["GET", &redis_key]).unwrap();
    assert!(!raw.contains("MASTER-SECRET"));
    assert!(!raw.contains("test-context"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_ticket_is_taken_once_across_the_fleet() {
    let redis = RedisServer::start();
    let tiers: Vec<RedisTier> = (0..3).map(|_| tier(&redis.url(), keys())).collect();
    let caches: Vec<Arc<SessionCache>> = tiers
        .iter()
        .map(|t| instance(t, Wiring::Prefetch))
        .collect();
    for t in &tiers {
        wait_connected(t).await;
    }
    new_session(&caches[0], 7, ProtocolVersion::TLS1_3);
    wait_written(&tiers[0], 1).await;
    let ids = vec![key(7).to_vec()];
    let offer = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&ids),
        client: None,
    };
    let id7 = key(7);
    let k = SessionKey::new(&id7, CTX);

    // Instance 1 takes it from Redis and resumes it.
    assert!(prefetch_and_take(&caches[1], offer, k).await.is_some());
    // Instance 2 finds nothing; instance 0 still holds its local copy, but Redis cannot
    // confirm the take, so it drops it.
    assert!(prefetch_and_take(&caches[2], offer, k).await.is_none());
    assert!(caches[0].peek(&key(7)).is_some());
    assert!(prefetch_and_take(&caches[0], offer, k).await.is_none());
    assert!(caches[0].peek(&key(7)).is_none());
    assert_eq!(tiers[0].stats().unconfirmed_takes, 1);
    assert_eq!(
        redis
            .command(&["EXISTS", &tiers[0].redis_key(Kind::Ticket, k)])
            .as_deref(),
        Some(":0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_session_id_offered_as_a_ticket_burns_nothing() {
    // A TLS 1.2 session id travels in the clear; anyone could offer it as a TLS 1.3 ticket.
    // Tickets and reusable sessions live in separate key spaces: the take finds nothing and
    // leaves the session untouched (no read-and-restore, no window where it is gone).
    let redis = RedisServer::start();
    let (ta, tb, a, b) = two_instances(&redis).await;
    new_session(&a, 3, ProtocolVersion::TLS1_2);
    wait_written(&ta, 1).await;
    let ids = vec![key(3).to_vec()];
    let as_ticket = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&ids),
        client: None,
    };
    let id3 = key(3);
    let k = SessionKey::new(&id3, CTX);
    let redis_key = ta.redis_key(Kind::Session, k);
    assert!(redis_key.starts_with("reprise:s:"));
    assert!(ta.redis_key(Kind::Ticket, k).starts_with("reprise:t:"));
    let ttl_before = redis.command(&["PEXPIRETIME", &redis_key]).unwrap();

    // On the instance that made it, and on another: a miss, and nothing is lost.
    assert!(prefetch_and_take(&a, as_ticket, k).await.is_none());
    assert!(a.lookup(Role::Server, k).is_some(), "local copy kept");
    assert!(prefetch_and_take(&b, as_ticket, k).await.is_none());
    assert!(matches!(tb.read(k, true).await, Fetched::Miss));
    // The session was never touched: same key, same expiry, still resumable fleet-wide.
    assert_eq!(
        redis.command(&["PEXPIRETIME", &redis_key]).unwrap(),
        ttl_before
    );
    assert!(matches!(tb.read(k, false).await, Fetched::Hit(_)));
    // And no take ever ran against a reusable session's key.
    assert_eq!(
        redis
            .command(&["EXISTS", &ta.redis_key(Kind::Ticket, k)])
            .as_deref(),
        Some(":0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_removal_is_never_undone_by_a_concurrent_take() {
    // Attack 9: a take racing an explicit removal of a TLS 1.2 session used to read it
    // (GETDEL), then write it back (SET NX), resurrecting a removal that landed in between.
    let redis = RedisServer::start();
    let (ta, tb, a, _b) = two_instances(&redis).await;
    for round in 0..20u8 {
        let id = key(100 + round);
        let s = new_session(&a, 100 + round, ProtocolVersion::TLS1_2);
        wait_written(&ta, u64::from(round) + 1).await;
        let k = SessionKey::new(&id, CTX);
        let ids = vec![id.to_vec()];
        // Takes of the session id from another instance, around the removal.
        let takes = (0..8).map(|_| {
            let tb = tb.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let cache: Arc<SessionCache> = Arc::new(SessionCache::new());
                cache.attach(Arc::new(tb.clone()));
                let offer = Offer {
                    sid_ctx: CTX,
                    session_id: None,
                    psk_identities: &refs(&ids),
                    client: None,
                };
                let _ = cache.prefetch(offer).await;
                let _ = tb.read(SessionKey::new(&ids[0], CTX), true).await;
            })
        });
        let takes: Vec<_> = takes.collect();
        assert!(a.remove(&s));
        for t in takes {
            t.await.unwrap();
        }
        // The removal is written (bounded wait), and nothing brings the session back.
        let deleted = wait_until(Duration::from_secs(5), || {
            ta.stats().deletes_written > u64::from(round)
        });
        assert!(deleted, "{:?}", ta.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            redis
                .command(&["EXISTS", &ta.redis_key(Kind::Session, k)])
                .as_deref(),
            Some(":0"),
            "round {round}: the removed session came back"
        );
        assert!(matches!(tb.read(k, false).await, Fetched::Miss));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_forged_and_moved_values_are_misses_and_deleted() {
    let redis = RedisServer::start();
    let t = tier(&redis.url(), keys());
    let c = instance(&t, Wiring::Prefetch);
    wait_connected(&t).await;
    new_session(&c, 1, ProtocolVersion::TLS1_2);
    wait_written(&t, 1).await;
    let good = t.redis_key(Kind::Session, SessionKey::new(&key(1), CTX));
    let sealed = redis.command(&["GET", &good]).unwrap();

    // Garbage under a valid key; a real value moved to another key; a value sealed under a key
    // this instance does not have.
    let moved = t.redis_key(Kind::Session, SessionKey::new(&key(2), CTX));
    redis.command(&["SET", &moved, &sealed]).unwrap();
    let garbage = t.redis_key(Kind::Session, SessionKey::new(&key(3), CTX));
    redis
        .command(&["SET", &garbage, "\u{2}\u{2}garbage"])
        .unwrap();
    let other_tier = tier(&redis.url(), ring(&format!("other:{}", "77".repeat(32))));
    let other_cache = instance(&other_tier, Wiring::Prefetch);
    wait_connected(&other_tier).await;
    new_session(&other_cache, 4, ProtocolVersion::TLS1_2);
    wait_written(&other_tier, 1).await;

    for id in [2u8, 3, 4] {
        let idk = key(id);
        let k = SessionKey::new(&idk, CTX);
        assert!(matches!(t.read(k, false).await, Fetched::Miss), "{id}");
    }
    let stats = t.stats();
    assert_eq!((stats.rejected_values, stats.unknown_key_values), (2, 1));
    // The garbage and the moved value are deleted (asynchronously: wait, bounded).
    let exists = |id: u8| {
        redis
            .command(&[
                "EXISTS",
                &t.redis_key(Kind::Session, SessionKey::new(&key(id), CTX)),
            ])
            .as_deref()
            == Some(":1")
    };
    let gone = wait_until(Duration::from_secs(5), || !exists(2) && !exists(3));
    assert!(gone);
    // The one sealed under a key this instance lacks stays, for the instances that have it.
    assert!(exists(4));
    assert!(matches!(
        other_tier.read(SessionKey::new(&key(4), CTX), false).await,
        Fetched::Hit(_)
    ));
    // The genuine one still opens.
    assert!(matches!(
        t.read(SessionKey::new(&key(1), CTX), false).await,
        Fetched::Hit(_)
    ));
    // Under another context it does not: the context is part of the key and of the sealing.
    assert!(matches!(
        t.read(SessionKey::new(&key(1), b"other-context"), false)
            .await,
        Fetched::Miss
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_losing_sessions() {
    let redis = RedisServer::start();
    let old = format!("old:{}", "11".repeat(32));
    let new = format!("new:{}", "22".repeat(32));
    let t_old = tier(&redis.url(), ring(&old));
    let c_old = instance(&t_old, Wiring::Prefetch);
    wait_connected(&t_old).await;
    new_session(&c_old, 9, ProtocolVersion::TLS1_2);
    wait_written(&t_old, 1).await;

    let t_rotated = tier(&redis.url(), ring(&format!("{new}\n{old}")));
    let c_rotated = instance(&t_rotated, Wiring::Prefetch);
    wait_connected(&t_rotated).await;
    assert!(matches!(
        t_rotated.read(SessionKey::new(&key(9), CTX), false).await,
        Fetched::Hit(_)
    ));
    // New sessions are sealed with the new key, which the old ring cannot open.
    new_session(&c_rotated, 10, ProtocolVersion::TLS1_2);
    wait_written(&t_rotated, 1).await;
    assert!(matches!(
        t_old.read(SessionKey::new(&key(10), CTX), false).await,
        Fetched::Miss
    ));
    // ... and does not delete either (attack 8): a rolling update of the key file loses nothing.
    assert!(matches!(
        t_rotated.read(SessionKey::new(&key(10), CTX), false).await,
        Fetched::Hit(_)
    ));

    // A ticket sealed with the new key: an instance without the key cannot take it, and leaves
    // it for one that can, which takes it once.
    new_session(&c_rotated, 11, ProtocolVersion::TLS1_3);
    wait_written(&t_rotated, 2).await;
    let id11 = key(11);
    let k11 = SessionKey::new(&id11, CTX);
    let ticket_key = t_rotated.redis_key(Kind::Ticket, k11);
    let ids = vec![id11.to_vec()];
    let offer = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&ids),
        client: None,
    };
    assert!(prefetch_and_take(&c_old, offer, k11).await.is_none());
    assert!(matches!(t_old.read(k11, true).await, Fetched::Miss));
    assert_eq!(t_old.stats().unknown_key_values, 3);
    assert_eq!(t_old.stats().rejected_values, 0);
    assert_eq!(
        redis.command(&["EXISTS", &ticket_key]).as_deref(),
        Some(":1")
    );
    let c_other = instance(&t_rotated, Wiring::Prefetch);
    assert!(prefetch_and_take(&c_other, offer, k11).await.is_some());
    assert_eq!(
        redis.command(&["EXISTS", &ticket_key]).as_deref(),
        Some(":0")
    );

    // A value in a format this instance does not know (a newer version): a miss, kept.
    let id12 = key(12);
    let k12 = SessionKey::new(&id12, CTX);
    for kind in [Kind::Ticket, Kind::Session] {
        let redis_key = t_rotated.redis_key(kind, k12);
        redis
            .command(&["SET", &redis_key, "\u{9}\u{3}newsomething-sealed-later"])
            .unwrap();
        assert!(matches!(
            t_rotated.read(k12, kind == Kind::Ticket).await,
            Fetched::Miss
        ));
        assert_eq!(
            redis.command(&["EXISTS", &redis_key]).as_deref(),
            Some(":1"),
            "{kind:?}"
        );
    }
    assert_eq!(t_rotated.stats().unknown_key_values, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_removal_reaches_the_whole_fleet() {
    let redis = RedisServer::start();
    let (ta, tb, a, b) = two_instances(&redis).await;
    // Let both subscriptions settle (bounded): a publication is only seen once subscribed.
    let subscribed = wait_until(Duration::from_secs(5), || {
        redis
            .command(&["PUBSUB", "NUMSUB", "reprise:invalidate"])
            .as_deref()
            == Some("reprise:invalidate\n:2")
    });
    assert!(subscribed);

    let s = new_session(&a, 5, ProtocolVersion::TLS1_2);
    wait_written(&ta, 1).await;
    let prefetched = b
        .prefetch(Offer {
            sid_ctx: CTX,
            session_id: Some(&key(5)),
            psk_identities: &[],
            client: None,
        })
        .await;
    assert!(prefetched.into_ticket().is_none());
    assert!(b.peek(&key(5)).is_some());

    assert!(a.remove(&s));
    let id5 = key(5);
    let k = SessionKey::new(&id5, CTX);
    let dropped = wait_until(Duration::from_secs(5), || b.peek(&key(5)).is_none());
    assert!(dropped, "{:?}", tb.stats());
    assert_eq!(
        redis
            .command(&["EXISTS", &ta.redis_key(Kind::Session, k)])
            .as_deref(),
        Some(":0")
    );
    assert_eq!(tb.stats().invalidations_received, 1);
    assert_eq!(ta.stats().invalidations_received, 0);

    // Evictions and expiry are local: they delete nothing in Redis.
    a.set_size_limit(1);
    new_session(&a, 6, ProtocolVersion::TLS1_2);
    new_session(&a, 8, ProtocolVersion::TLS1_2);
    wait_written(&ta, 3).await;
    assert_eq!(a.stats().cache_full, 1);
    assert_eq!(
        redis
            .command(&[
                "EXISTS",
                &ta.redis_key(Kind::Session, SessionKey::new(&key(6), CTX))
            ])
            .as_deref(),
        Some(":1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_and_in_the_middle_is_survived() {
    let mut redis = RedisServer::start();
    redis.stop();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.read_timeout = Duration::from_millis(200);
    config.breaker_cooldown = Duration::from_millis(200);
    let t = RedisTier::start(config, keys()).unwrap();
    let c = instance(&t, Wiring::Prefetch);
    // Down at start: nothing connects, everything is a quick "unavailable".
    new_session(&c, 1, ProtocolVersion::TLS1_2);
    let id1 = key(1);
    let k = SessionKey::new(&id1, CTX);
    assert!(matches!(t.read(k, false).await, Fetched::Unavailable));
    assert!(t.stats().connected == 0);

    // Up: the tier connects by itself and works.
    redis.restart();
    wait_connected(&t).await;
    new_session(&c, 2, ProtocolVersion::TLS1_2);
    wait_written(&t, 1).await;
    assert!(matches!(
        t.read(SessionKey::new(&key(2), CTX), false).await,
        Fetched::Hit(_)
    ));

    // Down in the middle: reads fail fast, the breaker opens, nothing hangs.
    redis.stop();
    for _ in 0..10 {
        assert!(matches!(
            t.read(SessionKey::new(&key(2), CTX), false).await,
            Fetched::Unavailable
        ));
    }
    let stats = t.stats();
    assert!(stats.breaker_opens >= 1, "{stats:?}");
    assert!(stats.read_errors + stats.read_timeouts >= 1, "{stats:?}");
    assert!(stats.reads_skipped >= 1, "{stats:?}");

    // Back: within a few seconds, the breaker's probe closes it and reads hit again.
    redis.restart();
    new_session(&c, 3, ProtocolVersion::TLS1_2);
    let mut back = false;
    for _ in 0..300 {
        new_session(&c, 4, ProtocolVersion::TLS1_2);
        if let Fetched::Hit(_) = t.read(SessionKey::new(&key(4), CTX), false).await {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "{:?}", t.stats());
}

#[tokio::test]
async fn a_full_write_queue_drops_and_counts() {
    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.write_queue = 1;
    let t = RedisTier::start(config, keys()).unwrap();
    let c = instance(&t, Wiring::Prefetch);
    // On this single-threaded runtime the writer cannot run during the loop: the queue
    // holds one write and the other nine are dropped, and no handshake waits.
    for id in 1..=10 {
        new_session(&c, id, ProtocolVersion::TLS1_2);
    }
    let stats = t.stats();
    assert_eq!((stats.stores_queued, stats.writes_dropped_full), (1, 9));
}

#[test]
fn blocking_wiring_serves_synchronous_lookups() {
    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.read_timeout = Duration::from_secs(2);
    let (ta, tb) = (
        RedisTier::start_detached(config.clone(), keys()).unwrap(),
        RedisTier::start_detached(config, keys()).unwrap(),
    );
    let (a, b) = (
        instance(&ta, Wiring::Blocking),
        instance(&tb, Wiring::Blocking),
    );
    assert!(wait_until(Duration::from_secs(10), || ta.stats().connected
        == 1
        && tb.stats().connected == 1));
    new_session(&a, 1, ProtocolVersion::TLS1_2);
    new_session(&a, 2, ProtocolVersion::TLS1_3);
    assert!(wait_until(Duration::from_secs(10), || ta
        .stats()
        .stores_written
        >= 2));

    // B's lookup fetches the TLS 1.2 session from Redis (and copies it in); its take takes the
    // ticket, once.
    assert!(b
        .lookup(Role::Server, SessionKey::new(&key(1), CTX))
        .is_some());
    assert_eq!(b.stats().cb_hits, 1);
    assert!(b.peek(&key(1)).is_some());
    assert!(b
        .take(Role::Server, SessionKey::new(&key(2), CTX))
        .is_some());
    // A's local copy of the ticket cannot resume any more: Redis, the last tier, decides takes.
    assert!(a
        .take(Role::Server, SessionKey::new(&key(2), CTX))
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_works_the_same() {
    let cluster = RedisCluster::start();
    let (ta, tb) = (tier(&cluster.url(), keys()), tier(&cluster.url(), keys()));
    let (a, b) = (
        instance(&ta, Wiring::Prefetch),
        instance(&tb, Wiring::Prefetch),
    );
    wait_connected(&ta).await;
    wait_connected(&tb).await;
    for id in 1..=20 {
        new_session(
            &a,
            id,
            if id % 2 == 0 {
                ProtocolVersion::TLS1_3
            } else {
                ProtocolVersion::TLS1_2
            },
        );
    }
    wait_written(&ta, 20).await;
    for id in (1..=20u8).step_by(2) {
        let prefetched = b
            .prefetch(Offer {
                sid_ctx: CTX,
                session_id: Some(&key(id)),
                psk_identities: &[],
                client: None,
            })
            .await;
        assert!(prefetched.into_ticket().is_none());
        assert!(
            b.lookup(Role::Server, SessionKey::new(&key(id), CTX))
                .is_some(),
            "{id}"
        );
    }
    for id in (2..=20u8).step_by(2) {
        let ids = vec![key(id).to_vec()];
        let offer = Offer {
            sid_ctx: CTX,
            session_id: None,
            psk_identities: &refs(&ids),
            client: None,
        };
        let kid = key(id);
        let k = SessionKey::new(&kid, CTX);
        assert!(prefetch_and_take(&b, offer, k).await.is_some(), "{id}");
        assert!(prefetch_and_take(&a, offer, k).await.is_none(), "{id}");
    }
    // The keys spread over the three nodes.
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.command(&["DBSIZE"])
                .unwrap()
                .trim_start_matches(':')
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), 10);
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "{per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_copy_alone_never_resumes_a_ticket() {
    let redis = RedisServer::start();
    let (ta, _tb, a, b) = two_instances(&redis).await;
    new_session(&a, 4, ProtocolVersion::TLS1_3);
    wait_written(&ta, 1).await;
    let id4 = key(4);
    let k = SessionKey::new(&id4, CTX);
    let redis_key = ta.redis_key(Kind::Ticket, k);

    // The instance that made the ticket holds a copy, and Redis has it. A take that no
    // prefetch confirmed for this connection (the ticket past the identities the prefetch
    // reads, a second ClientHello, a hello the parser could not read) resumes nothing.
    assert!(a.peek(&key(4)).is_some());
    assert!(a.take(Role::Server, k).is_none());
    assert_eq!(ta.stats().unconfirmed_takes, 1);
    // A prefetch of other identities confirms nothing for this one either.
    let others: Vec<Vec<u8>> = (40..44).map(|i| key(i).to_vec()).collect();
    let offer = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&others),
        client: None,
    };
    let copy = a
        .session(&key(4), SecretBytes::from(vec![4; 48]))
        .sid_ctx(CTX)
        .version(ProtocolVersion::TLS1_3)
        .build()
        .unwrap();
    assert!(a.add(&SharedSession::from(copy)));
    assert!(prefetch_and_take(&a, offer, k).await.is_none());
    // Nothing burnt the ticket in Redis: the fleet can still resume it, exactly once.
    assert_eq!(
        redis.command(&["EXISTS", &redis_key]).as_deref(),
        Some(":1")
    );
    let mine = vec![key(4).to_vec()];
    let offer = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&mine),
        client: None,
    };
    let prefetched = b.prefetch(offer).await;
    let ticket = prefetched.into_ticket().unwrap();
    assert!(
        b.take(Role::Server, k).is_none(),
        "only through the connection"
    );
    assert!(b.take_confirmed(k, ticket.clone()).is_some());
    assert!(b.take_confirmed(k, ticket).is_none(), "once");
    assert!(prefetch_and_take(&a, offer, k).await.is_none());
    assert!(prefetch_and_take(&b, offer, k).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_wiring_takes_a_ticket_once_whoever_holds_a_copy() {
    let redis = RedisServer::start();
    let (ta, tb) = (tier(&redis.url(), keys()), tier(&redis.url(), keys()));
    let (a, b) = (
        instance(&ta, Wiring::Blocking),
        instance(&tb, Wiring::Blocking),
    );
    wait_connected(&ta).await;
    wait_connected(&tb).await;
    new_session(&a, 6, ProtocolVersion::TLS1_3);
    wait_written(&ta, 1).await;
    let id6 = key(6);
    let k = SessionKey::new(&id6, CTX);
    // The maker's take goes through Redis too (GETDEL), and then nobody resumes it again:
    // neither the maker (its copy left with the take) nor another instance.
    let (a2, b2) = (a.clone(), b.clone());
    let taken = tokio::task::spawn_blocking(move || {
        let id6 = key(6);
        let k = SessionKey::new(&id6, CTX);
        let first = a2.take(Role::Server, k).is_some();
        let again = a2.take(Role::Server, k).is_some();
        let elsewhere = b2.take(Role::Server, k).is_some();
        (first, again, elsewhere)
    })
    .await
    .unwrap();
    assert_eq!(taken, (true, false, false));
    assert!(a.peek(&key(6)).is_none());
    assert_eq!(
        redis
            .command(&["EXISTS", &ta.redis_key(Kind::Ticket, k)])
            .as_deref(),
        Some(":0")
    );
}

/// Redis reads since the last `CONFIG RESETSTAT`: key lookups, hits and misses (one per GET,
/// GETDEL or take script).
fn redis_reads(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "stats"]).unwrap();
    info.lines()
        .filter(|l| l.starts_with("keyspace_hits:") || l.starts_with("keyspace_misses:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hellos_cost_at_most_one_read_and_repeated_ones_none() {
    // Attack 4: made-up ids and identities must not turn into Redis reads.
    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.read_timeout = Duration::from_secs(2);
    config.misses_per_address = 0; // the negative cache alone, first
    let t = RedisTier::start(config, keys()).unwrap();
    let c = instance(&t, Wiring::Prefetch);
    wait_connected(&t).await;
    let attacker = Some("192.0.2.7".parse().unwrap());

    // Hellos with four random identities, each repeated (de-duplicated): one read each.
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    for n in 0..50u32 {
        let fresh = |i: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            id[4..8].copy_from_slice(&i.to_be_bytes());
            id.to_vec()
        };
        let ids = vec![fresh(1), fresh(1), fresh(2), fresh(3), fresh(2)];
        let offer = Offer {
            sid_ctx: CTX,
            session_id: None,
            psk_identities: &refs(&ids),
            client: attacker,
        };
        let _ = c.prefetch(offer).await;
    }
    assert_eq!(redis_reads(&redis), 50);
    // The same hello again and again: no read at all, whether tickets or a TLS 1.2 id.
    let ids = vec![key(200).to_vec(), key(201).to_vec()];
    let repeated = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&ids),
        client: attacker,
    };
    let id202 = key(202);
    let repeated12 = Offer {
        sid_ctx: CTX,
        session_id: Some(&id202),
        psk_identities: &[],
        client: attacker,
    };
    let _ = c.prefetch(repeated).await;
    let _ = c.prefetch(repeated).await; // identity 201 now, the first one unknown
    let _ = c.prefetch(repeated12).await;
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    for _ in 0..20 {
        let _ = c.prefetch(repeated).await;
        let _ = c.prefetch(repeated12).await;
    }
    // TLS 1.2 misses are remembered for a second only: at most one read per second here.
    let reads = redis_reads(&redis);
    assert!(reads <= 1, "{reads} reads for repeated hellos");
    assert!(t.stats().negative_hits >= 40, "{:?}", t.stats());
    let remembered = t.stats().misses_remembered;
    assert!((52..=53).contains(&remembered), "{:?}", t.stats());

    // A real ticket offered behind made-up identities still resumes once; offered again,
    // it costs nothing.
    let maker = tier(&redis.url(), keys());
    let made = instance(&maker, Wiring::Prefetch);
    wait_connected(&maker).await;
    new_session(&made, 210, ProtocolVersion::TLS1_3);
    let id210 = key(210);
    assert!(wait_until(Duration::from_secs(10), || redis
        .command(&[
            "EXISTS",
            &t.redis_key(Kind::Ticket, SessionKey::new(&id210, CTX))
        ])
        .as_deref()
        == Some(":1")));
    let ids = vec![key(200).to_vec(), key(201).to_vec(), id210.to_vec()];
    let offer = Offer {
        sid_ctx: CTX,
        session_id: None,
        psk_identities: &refs(&ids),
        client: attacker,
    };
    let k210 = SessionKey::new(&id210, CTX);
    assert!(prefetch_and_take(&c, offer, k210).await.is_some());
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    assert!(prefetch_and_take(&c, offer, k210).await.is_none());
    assert_eq!(redis_reads(&redis), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_address_has_a_read_budget_that_hits_give_back() {
    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.read_timeout = Duration::from_secs(2);
    config.misses_per_address = 5; // bursts of 10
    let t = RedisTier::start(config, keys()).unwrap();
    let c = instance(&t, Wiring::Prefetch);
    wait_connected(&t).await;
    let maker = tier(&redis.url(), keys());
    let made = instance(&maker, Wiring::Prefetch);
    wait_connected(&maker).await;

    // 200 hellos with random ids from one address: the budget (10 at once, 5 more a second)
    // bounds the reads.
    let attacker = Some("2001:db8:1:2::66".parse().unwrap());
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let started = std::time::Instant::now();
    for n in 0..200u32 {
        let mut id = [7u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let offer = Offer {
            sid_ctx: CTX,
            session_id: Some(&id),
            psk_identities: &[],
            client: attacker,
        };
        let _ = c.prefetch(offer).await;
    }
    let allowed = 10 + 5 * (started.elapsed().as_secs() + 1);
    let reads = redis_reads(&redis);
    assert!(reads <= allowed, "{reads} reads, {allowed} allowed");
    assert!(t.stats().reads_limited >= 200 - allowed, "{:?}", t.stats());

    // A neighbour in the same /64 shares the budget; one elsewhere does not.
    let neighbour = Some("2001:db8:1:2:ffff::1".parse().unwrap());
    let elsewhere = Some("2001:db8:1:3::1".parse().unwrap());
    let id = [0xee_u8; 32];
    let limited = t.stats().reads_limited;
    for (client, limited_more) in [(neighbour, 1), (elsewhere, 1)] {
        let offer = Offer {
            sid_ctx: CTX,
            session_id: Some(&id),
            psk_identities: &[],
            client,
        };
        let _ = c.prefetch(offer).await;
        assert_eq!(t.stats().reads_limited, limited + limited_more);
    }

    // A client behind one address that resumes is not limited, even when some reads miss:
    // each hit earns a miss back.
    let resumer = Some("198.51.100.9".parse().unwrap());
    for n in 0..30u8 {
        new_session(&made, n, ProtocolVersion::TLS1_2);
    }
    wait_written(&maker, 30).await;
    let limited = t.stats().reads_limited;
    for n in 0..30u8 {
        // One that misses (its session expired, say), then one that resumes.
        let gone = [0xa0 ^ n; 32];
        let id = key(n);
        for id in [&gone, &id] {
            let offer = Offer {
                sid_ctx: CTX,
                session_id: Some(id),
                psk_identities: &[],
                client: resumer,
            };
            let _ = c.prefetch(offer).await;
        }
        assert!(
            c.lookup(Role::Server, SessionKey::new(&id, CTX)).is_some(),
            "{n}"
        );
    }
    assert_eq!(t.stats().reads_limited, limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_is_in_no_debug_output_or_error() {
    // Attack 5, for the library: the binary's logs are tested in reprise-cli.
    const PASSWORD: &str = "Sup3r-s3cret-PW";
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}", redis.port);
    let target: reprise_redis::RedisTarget = url.parse().unwrap();
    let config = RedisConfig::new(target.clone());
    for shown in [
        format!("{target:?}"),
        format!("{target}"),
        format!("{config:?}"),
    ] {
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }
    let t = RedisTier::start(config, keys()).unwrap();
    assert!(!format!("{t:?}").contains(PASSWORD));
    // It does authenticate and work.
    let c = instance(&t, Wiring::Prefetch);
    wait_connected(&t).await;
    new_session(&c, 1, ProtocolVersion::TLS1_2);
    wait_written(&t, 1).await;
    // Errors about the address hide it too, even when the address is malformed.
    for bad in [
        format!("http://app:{PASSWORD}@host:1"),
        format!("redis://app:{PASSWORD}@host:notaport"),
        format!("redis+cluster://:{PASSWORD}@h:1,:{PASSWORD}@h:x"),
        format!("redis://h:1/x?password={PASSWORD}"),
    ] {
        let shown = match bad.parse::<reprise_redis::RedisTarget>() {
            Err(e) => e.to_string(),
            Ok(target) => match RedisTier::start(RedisConfig::new(target), keys()) {
                Err(e) => e.to_string(),
                Ok(t) => format!("{t:?}"),
            },
        };
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    assert_eq!(
        reprise_redis::redact(&url),
        format!("redis://default:***@127.0.0.1:{}", redis.port)
    );
}

#[tokio::test]
async fn a_deadline_missed_because_this_machine_is_busy_is_no_redis_failure() {
    // Attack 4: a saturated CPU fires timers late; that must not open the circuit breaker.
    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url().parse().unwrap());
    config.read_timeout = Duration::from_millis(10);
    config.breaker_threshold = 1;
    let t = RedisTier::start(config, keys()).unwrap();
    wait_connected(&t).await;
    // Redis holds every command for a while, so that no answer can arrive.
    assert_eq!(
        redis
            .command(&["CLIENT", "PAUSE", "5000", "ALL"])
            .as_deref(),
        Some("+OK")
    );
    // The read is sent, then this (single-threaded) runtime is kept busy well past its
    // deadline: the timer fires late.
    let id = key(1);
    let busy = async {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(100));
    };
    let (fetched, ()) = tokio::join!(t.read(SessionKey::new(&id, CTX), false), busy);
    assert!(matches!(fetched, Fetched::Unavailable));
    let stats = t.stats();
    assert_eq!(stats.read_timeouts_local, 1, "{stats:?}");
    assert_eq!(stats.read_timeouts, 0, "{stats:?}");
    assert_eq!(stats.breaker_opens, 0, "{stats:?}");
    assert_eq!(stats.breaker_open, 0);
}

/// A tier above Redis, standing in for a disk: a map of sessions, with counts of what the
/// cache asked of it.
#[derive(Default)]
struct MapTier {
    sessions: parking_lot::Mutex<std::collections::HashMap<Vec<u8>, SharedSession>>,
    removed: std::sync::atomic::AtomicUsize,
    forgotten: std::sync::atomic::AtomicUsize,
}

impl MapTier {
    fn holds(&self, id: &[u8]) -> bool {
        self.sessions.lock().contains_key(id)
    }
}

impl Tier for MapTier {
    fn name(&self) -> &str {
        "map"
    }
    fn store(&self, session: &SharedSession) {
        self.sessions.lock().insert(
            session.id().as_bytes().to_vec(),
            SharedSession::clone(session),
        );
    }
    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        self.sessions
            .lock()
            .get(key.id)
            .cloned()
            .map_or(Fetched::Miss, Fetched::Hit)
    }
    fn take(&self, key: SessionKey<'_>) -> Fetched {
        self.sessions
            .lock()
            .remove(key.id)
            .map_or(Fetched::Miss, Fetched::Hit)
    }
    fn remove(&self, session: &SharedSession, _why: Removal) {
        self.removed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sessions.lock().remove(session.id().as_bytes());
    }
    fn forget(&self, key: SessionKey<'_>) {
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sessions.lock().remove(key.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_invalidation_reaches_the_tiers_above_redis() {
    let redis = RedisServer::start();
    let (ta, tb) = (tier(&redis.url(), keys()), tier(&redis.url(), keys()));
    let a = instance(&ta, Wiring::Prefetch);
    // Instance B keeps a local tier (a disk, say) above Redis.
    let local = Arc::new(MapTier::default());
    let b: Arc<SessionCache> = Arc::new(SessionCache::new());
    b.attach(local.clone());
    b.attach(Arc::new(tb.clone()));
    wait_connected(&ta).await;
    wait_connected(&tb).await;
    let subscribed = wait_until(Duration::from_secs(5), || {
        redis
            .command(&["PUBSUB", "NUMSUB", "reprise:invalidate"])
            .as_deref()
            == Some("reprise:invalidate\n:2")
    });
    assert!(subscribed);

    // A makes a session; B fetches it from Redis, into memory and into its local tier.
    let s = new_session(&a, 5, ProtocolVersion::TLS1_2);
    wait_written(&ta, 1).await;
    let prefetched = b
        .prefetch(Offer {
            sid_ctx: CTX,
            session_id: Some(&key(5)),
            psk_identities: &[],
            client: None,
        })
        .await;
    assert!(prefetched.found_session());
    assert!(b.peek(&key(5)).is_some());
    assert!(local.holds(&key(5)), "copied into the tier above Redis");

    // A removes it: B forgets it in memory and in the tier above, without a removal of its
    // own (no echo back to the fleet).
    assert!(a.remove(&s));
    let forgotten = wait_until(Duration::from_secs(5), || {
        b.peek(&key(5)).is_none() && !local.holds(&key(5))
    });
    assert!(forgotten, "{:?}", tb.stats());
    assert_eq!(local.forgotten.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(local.removed.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(tb.stats().invalidations_received, 1);
    assert_eq!(tb.stats().invalidations_sent, 0);
    // And B's lookups find it nowhere.
    assert!(b
        .lookup(Role::Server, SessionKey::new(&key(5), CTX))
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_reads_the_time_from_the_cache_clock() {
    // A session valid for 60 days is kept in Redis for 30 at most, counted from the cache's
    // clock, not the system's: here ten days ahead.
    let redis = RedisServer::start();
    let t = tier(&redis.url(), keys());
    let system_now = reprise::Clock::now(&reprise::SystemClock);
    let ahead = system_now + 10 * 24 * 3600;
    let clock = Arc::new(reprise::ManualClock::new(ahead));
    let c: Arc<SessionCache> = Arc::new(SessionCache::builder().clock(clock.clone()).build());
    c.attach(Arc::new(t.clone()));
    wait_connected(&t).await;
    let s = c
        .session(&key(1), SecretBytes::from(vec![1; 48]))
        .sid_ctx(CTX)
        .version(ProtocolVersion::TLS1_2)
        .timeout_secs(60 * 24 * 3600)
        .build()
        .unwrap();
    assert!(c.new_session(Role::Server, s).is_stored());
    wait_written(&t, 1).await;
    let redis_key = t.redis_key(Kind::Session, SessionKey::new(&key(1), CTX));
    let expiretime: u64 = redis
        .command(&["EXPIRETIME", &redis_key])
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert_eq!(expiretime, ahead + 30 * 24 * 3600);
}
