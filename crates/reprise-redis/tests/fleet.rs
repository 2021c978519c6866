//! The fleet's ticket keys against a real `redis-server`: agreement between racing instances,
//! rotation and erasure, fail-open through a Redis outage and convergence after it, sealing,
//! malformed values, and tickets sealed on one instance opening on another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use reprise::ManualClock;
use reprise_redis::{ticket_key_associated_data, FleetTicketKeys, KeyRing, RedisConfig};
use reprise_seal::tickets::{
    KeyId, Rejected, TicketCounters, TicketKeySource, TicketSealer, TICKET_KEY_LEN,
};
use reprise_testkit::{RedisCluster, RedisServer};

/// The period (ticket lifetime) of the tests that move a manual clock.
const PERIOD: u64 = 60;
/// Period number `N` starts at `N * PERIOD`; the clock starts 10 s into it.
const N: u64 = 30_000_000;
const T0: u64 = N * PERIOD + 10;

fn seal() -> KeyRing {
    KeyRing::parse(&format!("k1:{}", "5a".repeat(32))).unwrap()
}

fn start(redis: &RedisServer, clock: &Arc<ManualClock>) -> Arc<FleetTicketKeys> {
    start_on(&redis.url(), clock)
}

fn start_on(url: &str, clock: &Arc<ManualClock>) -> Arc<FleetTicketKeys> {
    let config = RedisConfig::new(url.parse().unwrap());
    FleetTicketKeys::start_with_clock(config, seal(), Duration::from_secs(PERIOD), clock.clone())
        .unwrap()
}

/// Two instances on `url`, both ready and having read the ring once more after the other's
/// start (either may have read before the other's next key existed).
async fn pair_on(
    url: &str,
    clock: &Arc<ManualClock>,
) -> (Arc<FleetTicketKeys>, Arc<FleetTicketKeys>) {
    let (a, b) = (start_on(url, clock), start_on(url, clock));
    assert!(a.ready(Duration::from_secs(10)).await);
    assert!(b.ready(Duration::from_secs(10)).await);
    refreshed(&a).await;
    refreshed(&b).await;
    (a, b)
}

/// The secret of the key that encrypts now, and its id.
fn encrypting(source: &FleetTicketKeys) -> (KeyId, [u8; TICKET_KEY_LEN]) {
    let keys = source.keys();
    let k = keys.encrypting().expect("a key encrypts");
    (k.id(), *k.secret())
}

/// The secret of the key named `version`, if held.
fn held(source: &FleetTicketKeys, version: u64) -> Option<[u8; TICKET_KEY_LEN]> {
    source
        .keys()
        .find(KeyId::from_version(version))
        .map(|k| *k.secret())
}

fn conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn raw_get(redis: &RedisServer, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(&mut conn(redis)).unwrap()
}

fn raw_set(redis: &RedisServer, key: &str, value: &[u8]) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut conn(redis))
        .unwrap();
}

/// Refreshes until Redis answers `source` (bounded).
async fn refreshed(source: &FleetTicketKeys) {
    for _ in 0..100 {
        if source.refresh().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis never answered: {:?}", source.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_started_together_agree_on_one_key() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&redis.url(), &clock).await;

    let (ida, secret_a) = encrypting(&a);
    let (idb, secret_b) = encrypting(&b);
    assert_eq!(ida, KeyId::from_version(N));
    assert_eq!(idb, ida);
    assert_eq!(secret_a, secret_b);
    let next = held(&a, N + 1).expect("the next key is held");
    assert_eq!(held(&b, N + 1), Some(next));
    assert_ne!(next, secret_a);
    // Each key was created once, by one of them: the other read the winner back.
    assert_eq!(a.stats().created + b.stats().created, 2);
    assert_eq!(a.stats().keys_held, 2);
    assert_eq!(a.stats().key_version, N);
    assert_eq!(a.stats().fallbacks, 0);
    assert_eq!(a.name(), "redis");
    assert_eq!(a.lifetime(), Duration::from_secs(PERIOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_promotes_the_next_key_and_erases_the_old_ones() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&redis.url(), &clock).await;
    let current = held(&a, N).unwrap();
    let next = held(&a, N + 1).unwrap();
    let generation = a.keys().generation();
    // Who still holds key N's secret: once erased, nobody (it is wiped when dropped).
    let erased = Arc::downgrade(a.keys().find(KeyId::from_version(N)).unwrap());

    // A period later the next key encrypts on both, before any read of Redis.
    clock.advance(PERIOD);
    assert_eq!(encrypting(&a), (KeyId::from_version(N + 1), next));
    assert_eq!(encrypting(&b), (KeyId::from_version(N + 1), next));
    assert_ne!(a.keys().generation(), generation);
    // The previous key still decrypts.
    assert_eq!(held(&a, N), Some(current));
    // A new next key appears, the same on both.
    refreshed(&a).await;
    refreshed(&b).await;
    let newer = held(&a, N + 2).expect("a new next key");
    assert_eq!(held(&b, N + 2), Some(newer));
    assert_eq!(a.stats().rotations, 1);
    // Whoever created the new key announced it; the other heard it.
    let mut heard = 0;
    for _ in 0..50 {
        heard = a.stats().pubsub_messages + b.stats().pubsub_messages;
        if heard > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(heard > 0, "no announcement heard");

    // Another period: key N is erased, from memory and from Redis.
    clock.advance(PERIOD);
    refreshed(&a).await;
    refreshed(&b).await;
    for s in [&a, &b] {
        assert_eq!(encrypting(s), (KeyId::from_version(N + 2), newer));
        assert!(held(s, N).is_none());
        let stats = s.stats();
        assert_eq!(stats.oldest_key_version, N + 1);
        assert_eq!(stats.newest_key_version, N + 3);
        assert_eq!(stats.keys_held, 3);
        assert_eq!(stats.key_version, N + 2);
        assert_eq!(stats.key_age_seconds, 10);
    }
    assert!(erased.upgrade().is_none(), "key N lingers in memory");
    assert_eq!(raw_get(&redis, &a.redis_key(N)), None);
    assert!(raw_get(&redis, &a.redis_key(N + 1)).is_some());
    assert!(raw_get(&redis, &a.redis_key(N + 3)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_fleet_in_step_then_falls_back_then_converges() {
    let mut redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&redis.url(), &clock).await;
    let next = held(&a, N + 1).unwrap();

    redis.stop();
    assert!(!a.refresh().await);
    assert_eq!(encrypting(&a).0, KeyId::from_version(N));

    // The boundary promotes the next key both hold: still in step, no Redis needed.
    clock.advance(PERIOD);
    assert!(!a.refresh().await);
    assert!(!b.refresh().await);
    assert_eq!(encrypting(&a), (KeyId::from_version(N + 1), next));
    assert_eq!(encrypting(&b), (KeyId::from_version(N + 1), next));

    // No next key: the current one stays current one more period.
    clock.advance(PERIOD);
    assert_eq!(encrypting(&a), (KeyId::from_version(N + 1), next));
    assert_eq!(encrypting(&b), (KeyId::from_version(N + 1), next));
    assert_eq!(a.stats().fallbacks, 0);

    // Then each falls back to a key of its own, counted.
    clock.advance(PERIOD);
    let (local_a, secret_a) = encrypting(&a);
    let (local_b, secret_b) = encrypting(&b);
    assert!(local_a.version() >= 1 << 63, "{local_a}");
    assert_ne!(local_a, local_b);
    assert_ne!(secret_a, secret_b);
    for s in [&a, &b] {
        let stats = s.stats();
        assert_eq!((stats.fallbacks, stats.fallback_active), (1, 1));
        assert_eq!(stats.key_version, 0);
        assert!(stats.redis_errors >= 1);
        // The held-over key still decrypts the tickets it issued.
        assert_eq!(held(s, N + 1), Some(next));
    }
    assert!(!a.refresh().await);
    assert_eq!(a.stats().fallbacks, 1, "one fallback, counted once");

    // Redis back: the fleet converges on one key, and the local keys only decrypt.
    redis.restart();
    refreshed(&a).await;
    refreshed(&b).await;
    refreshed(&a).await;
    let (ida, fleet_a) = encrypting(&a);
    assert_eq!(ida, KeyId::from_version(N + 3));
    assert_eq!(encrypting(&b), (ida, fleet_a));
    assert_eq!(held(&a, N + 4), held(&b, N + 4));
    assert!(held(&a, N + 4).is_some());
    assert_eq!(a.stats().fallback_active, 0);
    assert!(a.keys().find(local_a).is_some());
    assert!(a.ready(Duration::from_secs(1)).await);

    // Two periods later the local key is gone.
    clock.advance(2 * PERIOD);
    refreshed(&a).await;
    assert!(a.keys().find(local_a).is_none());
    assert_eq!(encrypting(&a).0, KeyId::from_version(N + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_gets_the_ring_back_from_memory() {
    let mut redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&redis.url(), &clock).await;
    let (current, next) = (held(&a, N).unwrap(), held(&a, N + 1).unwrap());
    let created = a.stats().created + b.stats().created;

    redis.stop();
    redis.restart();
    assert_eq!(raw_get(&redis, &a.redis_key(N)), None);
    refreshed(&a).await;
    refreshed(&b).await;
    for (version, secret) in [(N, current), (N + 1, next)] {
        let name = a.redis_key(version);
        let raw = raw_get(&redis, &name).expect("written back");
        let opened = seal()
            .open(&ticket_key_associated_data(&name), &raw)
            .unwrap();
        assert_eq!(&opened[..], &secret[..]);
        assert_eq!(held(&b, version), Some(secret));
    }
    assert_eq!(a.stats().created + b.stats().created, created);
    assert_eq!(a.stats().fallbacks + b.stats().fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_means_a_local_key_at_once_then_the_fleet() {
    let mut redis = RedisServer::start();
    redis.stop();
    let clock = Arc::new(ManualClock::new(T0));
    let a = start(&redis, &clock);
    assert!(!a.ready(Duration::from_millis(300)).await);
    for _ in 0..100 {
        if a.stats().fallback_active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (local, _) = encrypting(&a);
    assert!(local.version() >= 1 << 63);
    assert_eq!(a.stats().fallbacks, 1);

    redis.restart();
    assert!(a.ready(Duration::from_secs(20)).await);
    assert_eq!(encrypting(&a).0, KeyId::from_version(N));
    assert!(a.keys().find(local).is_some());
    assert_eq!(a.stats().fallback_active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_nothing_that_opens_without_the_seal_key() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let a = start(&redis, &clock);
    assert!(a.ready(Duration::from_secs(10)).await);
    refreshed(&a).await;

    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut conn(&redis))
        .unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let other = KeyRing::parse(&format!("k1:{}", "77".repeat(32))).unwrap();
    for version in [N, N + 1] {
        let name = a.redis_key(version);
        assert!(names.contains(&name), "{name} in {names:?}");
        let secret = held(&a, version).unwrap();
        let raw = raw_get(&redis, &name).unwrap();
        assert!(!raw.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
        let ad = ticket_key_associated_data(&name);
        assert_eq!(&seal().open(&ad, &raw).unwrap()[..], &secret[..]);
        // Not without the key file, nor moved to another slot.
        assert!(other.open(&ad, &raw).is_err());
        let elsewhere = ticket_key_associated_data(&a.redis_key(version + 7));
        assert!(seal().open(&elsewhere, &raw).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_counted_and_not_used() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    // Keys of these names, written by someone else: not sealed at all, sealed for another
    // slot, and of the wrong length.
    let names = |v: u64| format!("reprise:ticket-key:{PERIOD}:{v}");
    let garbage = b"not a sealed value".to_vec();
    let moved = seal()
        .seal(
            &ticket_key_associated_data(&names(N + 5)),
            &[3; TICKET_KEY_LEN],
        )
        .unwrap();
    let short = seal()
        .seal(&ticket_key_associated_data(&names(N - 1)), &[4; 16])
        .unwrap();
    raw_set(&redis, &names(N + 1), &garbage);
    raw_set(&redis, &names(N), &moved);
    raw_set(&redis, &names(N - 1), &short);

    let a = start(&redis, &clock);
    refreshed(&a).await;
    refreshed(&a).await;
    let stats = a.stats();
    assert_eq!(stats.malformed, 3, "each value counted once: {stats:?}");
    // No usable key for this period: a local key, and nothing planted is held.
    assert_eq!((stats.fallback_active, stats.keys_held), (1, 1));
    for v in [N - 1, N, N + 1] {
        assert!(held(&a, v).is_none());
    }
    assert!(!a.ready(Duration::from_millis(100)).await);
    // Left in place, never overwritten.
    assert_eq!(raw_get(&redis, &names(N + 1)), Some(garbage));
    assert_eq!(raw_get(&redis, &names(N)), Some(moved));

    // Once the slot is free again, the fleet's key is made and used.
    let deleted: i64 = redis::cmd("DEL")
        .arg(names(N))
        .query(&mut conn(&redis))
        .unwrap();
    assert_eq!(deleted, 1);
    refreshed(&a).await;
    assert_eq!(encrypting(&a).0, KeyId::from_version(N));
    assert_eq!(a.stats().fallback_active, 0);
}

/// With the system clock and a one-second lifetime, the background tasks alone keep two
/// instances rotating together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_rotate_by_the_system_clock() {
    let redis = RedisServer::start();
    let make = || {
        let config = RedisConfig::new(redis.url().parse().unwrap());
        FleetTicketKeys::start(config, seal(), Duration::from_secs(1)).unwrap()
    };
    let (a, b) = (make(), make());
    assert!(a.ready(Duration::from_secs(10)).await);
    let first = a.stats().key_version;
    let mut agreed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (sa, sb) = (a.stats(), b.stats());
        if sa.key_version >= first + 2 && sa.key_version == sb.key_version {
            let v = sa.key_version;
            if let (Some(x), Some(y)) = (held(&a, v), held(&b, v)) {
                if x == y {
                    agreed = Some(v);
                    break;
                }
            }
        }
    }
    let v = agreed.expect("the two instances rotated together");
    assert!(a.stats().rotations >= 2);
    assert_eq!(a.stats().fallbacks, 0);
    assert!(a.stats().oldest_key_version >= v - 1);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_shares_the_ring_too() {
    let cluster = RedisCluster::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&cluster.url(), &clock).await;
    assert_eq!(encrypting(&a), encrypting(&b));
    assert_eq!(a.stats().created + b.stats().created, 2);

    for _ in 0..2 {
        clock.advance(PERIOD);
        refreshed(&a).await;
        refreshed(&b).await;
    }
    assert_eq!(encrypting(&a), encrypting(&b));
    assert_eq!(encrypting(&a).0, KeyId::from_version(N + 2));
    assert_eq!(held(&a, N + 3), held(&b, N + 3));
    assert!(held(&a, N).is_none());
    // Key N is gone from whichever node held it; key N + 1 is still there.
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port))
        .collect();
    let mut conn = redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_connection()
        .unwrap();
    for (version, present) in [(N, 0), (N + 1, 1), (N + 3, 1)] {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(a.redis_key(version))
            .query(&mut conn)
            .unwrap();
        assert_eq!(exists, present, "key {version}");
    }
}

/// Tickets sealed on one instance open on the other, across a rotation, and not once their
/// key is erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_sealed_on_one_instance_open_on_the_other() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = pair_on(&redis.url(), &clock).await;
    let sealer = |s: &Arc<FleetTicketKeys>| {
        let source: Arc<dyn TicketKeySource> = s.clone();
        TicketSealer::new(source, b"ctx", Arc::new(TicketCounters::default()))
            .with_clock(clock.clone())
    };
    let (sa, sb) = (sealer(&a), sealer(&b));

    let ticket = sa.seal(b"state one").unwrap();
    assert_eq!(&sb.open(&ticket).unwrap()[..], b"state one");
    // Issued just before a boundary, it opens on the other instance just after.
    clock.advance(PERIOD - 11);
    let late = sa.seal(b"state two").unwrap();
    clock.advance(2);
    assert_eq!(&sb.open(&late).unwrap()[..], b"state two");
    let after = sb.seal(b"state three").unwrap();
    assert_eq!(&sa.open(&after).unwrap()[..], b"state three");
    clock.advance(PERIOD / 2);
    let recent = sa.seal(b"state four").unwrap();
    // Two periods on, key N is erased: its tickets open nowhere.
    clock.advance(PERIOD / 2);
    refreshed(&b).await;
    assert_eq!(sb.open(&late).err(), Some(Rejected::UnknownKey));
    assert_eq!(sa.open(&ticket).err(), Some(Rejected::UnknownKey));
    // A ticket of key N + 1 still opens on both while within its lifetime.
    assert_eq!(&sb.open(&recent).unwrap()[..], b"state four");
    assert_eq!(&sa.open(&recent).unwrap()[..], b"state four");
}
