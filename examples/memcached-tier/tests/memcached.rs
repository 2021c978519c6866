//! The memcached tier against a real `memcached` on a free loopback port: sessions shared by two
//! caches, tickets taken once, tampered values refused, and an outage that costs only misses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use reprise::{
    Fetched, Offer, ProtocolVersion, Removal, Role, SessionCache, SessionKey, SharedSession, Tier,
};
use reprise_memcached_example::{Kind, MemcachedConfig, MemcachedTier};
use reprise_seal::{seal_session, KeyRing};
use reprise_testkit::{free_port, wait_until};
use tokio::runtime::Runtime;

use common::{Memcached, WAIT};

const CTX: &[u8] = b"web";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ring() -> KeyRing {
    KeyRing::parse(&format!("k1:{}", "5a".repeat(32))).unwrap()
}

/// One instance of a fleet: its own cache, with its own memcached tier attached.
fn instance(rt: &Runtime, addr: SocketAddr) -> (Arc<SessionCache>, Arc<MemcachedTier>) {
    let _in_runtime = rt.enter();
    let mut config = MemcachedConfig::new(addr);
    // Generous: the test machine may be busy; the outcome, not the time, is asserted.
    config.read_timeout = Duration::from_secs(2);
    config.write_timeout = Duration::from_secs(2);
    let tier = Arc::new(MemcachedTier::start(config, ring()).unwrap());
    let cache = Arc::new(SessionCache::new());
    cache.attach(tier.clone());
    (cache, tier)
}

fn session(cache: &SessionCache, id: u8, version: ProtocolVersion) -> SharedSession {
    cache
        .session(&[id; 32], vec![id; 48])
        .sid_ctx(CTX)
        .version(version)
        .build()
        .map(SharedSession::from)
        .unwrap()
}

fn offer_session(id: &[u8]) -> Offer<'_> {
    Offer {
        sid_ctx: CTX,
        session_id: Some(id),
        ..Offer::default()
    }
}

#[test]
fn a_session_stored_through_one_cache_is_found_by_another() {
    let rt = runtime();
    let mc = Memcached::start();
    let (a, tier_a) = instance(&rt, mc.addr());
    let (b, tier_b) = instance(&rt, mc.addr());

    let stored = a.new_session(Role::Server, session(&a, 1, ProtocolVersion::TLS1_2));
    assert!(stored.stored_in_tiers);
    let key = SessionKey::new(&[1; 32], CTX);
    let mkey = tier_a.memcached_key(Kind::Session, key);
    assert!(wait_until(WAIT, || mc.get(&mkey).is_some()));
    let sealed = mc.get(&mkey).unwrap();
    assert!(
        !sealed.windows(48).any(|w| w == [1u8; 48]),
        "the payload is sealed"
    );

    // The handshake's own lookup never waits on memcached: B does not have it yet.
    assert!(matches!(tier_b.fetch(key), Fetched::Unavailable));
    assert!(b.lookup(Role::Server, key).is_none());
    // The prefetch before the handshake brings it into B's memory.
    let prefetched = rt.block_on(b.prefetch(offer_session(&[1; 32])));
    assert!(prefetched.found_session());
    let found = b.lookup(Role::Server, key).expect("B resumes A's session");
    assert_eq!(found.payload(), &[1u8; 48]);
    assert_eq!(found.version(), ProtocolVersion::TLS1_2);
    // A TLS 1.2 session is read, not taken: still there for a third instance.
    assert!(mc.get(&mkey).is_some());

    let stats = tier_b.stats();
    assert_eq!((stats.read_hits, stats.read_misses), (1, 0));
    assert_eq!(tier_a.stats().writes, 1);
    let names: Vec<_> = tier_b.metrics().iter().map(|m| m.name).collect();
    assert!(names.contains(&"read_hits_total") && names.contains(&"write_queue"));

    // An explicit removal on A deletes it for the fleet.
    assert!(a.remove(&stored.session));
    assert!(wait_until(WAIT, || mc.get(&mkey).is_none()));
    let again = rt.block_on(b.prefetch(offer_session(&[1; 32])));
    assert!(
        !again.found_session(),
        "B still holds it in memory, so no read"
    );
}

#[test]
fn a_ticket_is_taken_once_across_two_caches() {
    let rt = runtime();
    let mc = Memcached::start();
    let (a, tier_a) = instance(&rt, mc.addr());
    let (b, tier_b) = instance(&rt, mc.addr());
    let (c, tier_c) = instance(&rt, mc.addr());

    const TICKETS: u8 = 20;
    for id in 1..=TICKETS {
        a.new_session(Role::Server, session(&a, id, ProtocolVersion::TLS1_3));
    }
    for id in 1..=TICKETS {
        let mkey = tier_a.memcached_key(Kind::Ticket, SessionKey::new(&[id; 32], CTX));
        assert!(wait_until(WAIT, || mc.get(&mkey).is_some()), "ticket {id}");
    }

    let mut winners = 0;
    for id in 1..=TICKETS {
        let ident = [id; 32];
        let identities: [&[u8]; 1] = [&ident];
        let offer = Offer {
            sid_ctx: CTX,
            psk_identities: &identities,
            ..Offer::default()
        };
        let (from_b, from_c) =
            rt.block_on(async { tokio::join!(b.prefetch(offer), c.prefetch(offer)) });
        let (from_b, from_c) = (from_b.into_ticket(), from_c.into_ticket());
        assert!(
            from_b.is_some() != from_c.is_some(),
            "ticket {id}: exactly one instance takes it"
        );
        let (cache, ticket) = match (from_b, from_c) {
            (Some(t), None) => (&b, t),
            (None, Some(t)) => (&c, t),
            _ => unreachable!(),
        };
        let key = SessionKey::new(&ident, CTX);
        let resumed = cache
            .take_confirmed(key, ticket)
            .expect("the winner resumes");
        assert_eq!(resumed.payload(), &[id; 48]);
        winners += 1;
        assert!(mc.get(&tier_a.memcached_key(Kind::Ticket, key)).is_none());
        // A, which made it, cannot resume it either: memcached no longer vouches for it.
        assert!(a.take(Role::Server, key).is_none());
        // Nor can a later prefetch.
        assert!(rt.block_on(b.prefetch(offer)).into_ticket().is_none());
    }
    assert_eq!(winners, u32::from(TICKETS));
    let (sb, sc) = (tier_b.stats(), tier_c.stats());
    assert_eq!(sb.read_hits + sc.read_hits, u64::from(TICKETS));
    assert_eq!(sb.reads_unavailable + sc.reads_unavailable, 0);
}

#[test]
fn a_value_forged_or_moved_to_another_key_is_a_miss() {
    let rt = runtime();
    let mc = Memcached::start();
    let (a, tier) = instance(&rt, mc.addr());
    let (b, tier_b) = instance(&rt, mc.addr());
    fn k(id: &[u8; 32]) -> SessionKey<'_> {
        SessionKey::new(id, CTX)
    }
    let ids: [[u8; 32]; 6] = core::array::from_fn(|i| [i as u8; 32]);
    let s1 = a.new_session(Role::Server, session(&a, 1, ProtocolVersion::TLS1_2));
    a.new_session(Role::Server, session(&a, 3, ProtocolVersion::TLS1_3));
    let s1_key = tier.memcached_key(Kind::Session, k(&ids[1]));
    let t3_key = tier.memcached_key(Kind::Ticket, k(&ids[3]));
    assert!(wait_until(WAIT, || mc.get(&s1_key).is_some()
        && mc.get(&t3_key).is_some()));
    let s1_value = mc.get(&s1_key).unwrap();

    // Moved to another id.
    mc.set(&tier.memcached_key(Kind::Session, k(&ids[2])), &s1_value);
    assert!(!rt
        .block_on(b.prefetch(offer_session(&[2; 32])))
        .found_session());
    // Moved to another context.
    let other_ctx = SessionKey::new(&[1; 32], b"api");
    mc.set(&tier.memcached_key(Kind::Session, other_ctx), &s1_value);
    let offer = Offer {
        sid_ctx: b"api",
        session_id: Some(&[1; 32]),
        ..Offer::default()
    };
    assert!(!rt.block_on(b.prefetch(offer)).found_session());
    // Moved from a session's key to a ticket's (same id and context: only the kind differs).
    mc.set(&tier.memcached_key(Kind::Ticket, k(&ids[1])), &s1_value);
    let id1 = [1u8; 32];
    let idents1: [&[u8]; 1] = [&id1];
    let take1 = Offer {
        sid_ctx: CTX,
        psk_identities: &idents1,
        ..Offer::default()
    };
    assert!(rt.block_on(b.prefetch(take1)).into_ticket().is_none());
    // Bytes in no format this ring knows: a miss, left in place (a rotation or an upgrade
    // may be under way; the instances that know it can open it).
    let unknown_key = tier.memcached_key(Kind::Session, k(&ids[4]));
    mc.set(&unknown_key, &[0x42; 120]);
    assert!(!rt
        .block_on(b.prefetch(offer_session(&[4; 32])))
        .found_session());
    // Sealed for another tier, under the right key.
    let for_redis =
        seal_session(&ring(), "redis", &session(&a, 5, ProtocolVersion::TLS1_2)).unwrap();
    mc.set(&tier.memcached_key(Kind::Session, k(&ids[5])), &for_redis);
    assert!(!rt
        .block_on(b.prefetch(offer_session(&[5; 32])))
        .found_session());
    // A ticket with one bit flipped.
    let mut t3 = mc.get(&t3_key).unwrap();
    let last = t3.len() - 1;
    t3[last] ^= 1;
    mc.set(&t3_key, &t3);
    let id3 = [3u8; 32];
    let ids3: [&[u8]; 1] = [&id3];
    let take3 = Offer {
        sid_ctx: CTX,
        psk_identities: &ids3,
        ..Offer::default()
    };
    assert!(rt.block_on(b.prefetch(take3)).into_ticket().is_none());

    let stats = tier_b.stats();
    assert_eq!(stats.read_hits, 0);
    assert_eq!(stats.rejected_values, 5, "{stats:?}");
    assert_eq!(stats.unknown_key_values, 1, "{stats:?}");
    assert!(mc.get(&unknown_key).is_some());
    // What did not open under its own key is deleted (by B's writer).
    let moved = tier.memcached_key(Kind::Session, k(&ids[2]));
    assert!(wait_until(WAIT, || mc.get(&moved).is_none()));
    assert!(b.is_empty(), "nothing tampered reached B's memory");
    // The untouched original still resumes.
    assert!(rt
        .block_on(b.prefetch(offer_session(&[1; 32])))
        .found_session());
    assert_eq!(
        b.lookup(Role::Server, k(&ids[1]))
            .map(|s| s.payload().to_vec()),
        Some(s1.session.payload().to_vec())
    );
}

#[test]
fn memcached_down_or_silent_costs_misses_and_never_blocks_the_handshake() {
    let rt = runtime();
    let mut mc = Memcached::start();
    let (a, tier_a) = instance(&rt, mc.addr());
    let (b, tier_b) = instance(&rt, mc.addr());
    mc.stop();

    a.new_session(Role::Server, session(&a, 1, ProtocolVersion::TLS1_2));
    a.new_session(Role::Server, session(&a, 2, ProtocolVersion::TLS1_3));
    assert!(wait_until(WAIT, || tier_a.stats().write_failures == 2));
    let (k1, k2) = (
        SessionKey::new(&[1; 32], CTX),
        SessionKey::new(&[2; 32], CTX),
    );
    // The synchronous calls of the handshake answer at once, whatever memcached does.
    assert!(matches!(tier_b.fetch(k1), Fetched::Unavailable));
    assert!(matches!(tier_b.take(k2), Fetched::Unavailable));
    assert!(b.lookup(Role::Server, k1).is_none());
    assert!(b.take(Role::Server, k2).is_none());
    // A is memory first: its TLS 1.2 session still resumes there; its ticket needs memcached.
    assert!(a.lookup(Role::Server, k1).is_some());
    assert!(a.take(Role::Server, k2).is_none());
    // The prefetch: refused connections, so unavailable.
    assert!(!rt
        .block_on(b.prefetch(offer_session(&[1; 32])))
        .found_session());
    let id2 = [2u8; 32];
    let ids: [&[u8]; 1] = [&id2];
    let take2 = Offer {
        sid_ctx: CTX,
        psk_identities: &ids,
        ..Offer::default()
    };
    assert!(rt.block_on(b.prefetch(take2)).into_ticket().is_none());
    assert_eq!(tier_b.stats().reads_unavailable, 2);

    // memcached comes back on the same port: the writer reconnects.
    mc.spawn();
    a.new_session(Role::Server, session(&a, 3, ProtocolVersion::TLS1_2));
    let k3 = tier_a.memcached_key(Kind::Session, SessionKey::new(&[3; 32], CTX));
    assert!(wait_until(WAIT, || mc.get(&k3).is_some()));
    assert!(rt
        .block_on(b.prefetch(offer_session(&[3; 32])))
        .found_session());

    // A server that accepts and never answers: the prefetch gives up at its deadline.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (c, tier_c) = {
        let _in_runtime = rt.enter();
        let mut config = MemcachedConfig::new(silent.local_addr().unwrap());
        config.read_timeout = Duration::from_millis(200);
        let tier = Arc::new(MemcachedTier::start(config, ring()).unwrap());
        let cache = Arc::new(SessionCache::new());
        cache.attach(tier.clone());
        (cache, tier)
    };
    assert!(!rt
        .block_on(c.prefetch(offer_session(&[1; 32])))
        .found_session());
    assert!(rt.block_on(c.prefetch(take2)).into_ticket().is_none());
    assert_eq!(tier_c.stats().reads_unavailable, 2);
    assert!(matches!(tier_c.fetch(k1), Fetched::Unavailable));
}

/// A synchronous authority under the memcached tier, standing in for another shared store. It
/// keeps copies, never memory's own `Arc` (which memory marks not resumable when it lets go).
#[derive(Default)]
struct MapTier(parking_lot::Mutex<std::collections::HashMap<Vec<u8>, SharedSession>>);

impl Tier for MapTier {
    fn name(&self) -> &str {
        "map"
    }
    fn store(&self, session: &SharedSession) {
        let id = session.id().as_bytes().to_vec();
        self.0.lock().insert(id, session.duplicate());
    }
    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        let found = self.0.lock().get(key.id).map(SharedSession::duplicate);
        found.map_or(Fetched::Miss, Fetched::Hit)
    }
    fn take(&self, key: SessionKey<'_>) -> Fetched {
        let found = self.0.lock().remove(key.id);
        found.map_or(Fetched::Miss, Fetched::Hit)
    }
    fn remove(&self, session: &SharedSession, why: Removal) {
        if matches!(why, Removal::Explicit | Removal::Taken | Removal::Expired) {
            self.0.lock().remove(session.id().as_bytes());
        }
    }
}

#[test]
fn above_another_authority_the_tier_drops_a_ticket_the_authority_took() {
    let rt = runtime();
    let mc = Memcached::start();
    let (cache, tier) = instance(&rt, mc.addr());
    cache.attach(Arc::new(MapTier::default()));
    cache.new_session(Role::Server, session(&cache, 7, ProtocolVersion::TLS1_3));
    let key = SessionKey::new(&[7; 32], CTX);
    let mkey = tier.memcached_key(Kind::Ticket, key);
    assert!(wait_until(WAIT, || mc.get(&mkey).is_some()));
    // The map, last, decides the take; the memcached copy goes with it.
    let taken = cache
        .take(Role::Server, key)
        .expect("the authority hands it over");
    assert_eq!(taken.payload(), &[7u8; 48]);
    assert!(wait_until(WAIT, || mc.get(&mkey).is_none()));
    assert!(cache.take(Role::Server, key).is_none());
}

#[test]
fn a_session_expires_in_memcached_when_the_cache_would_drop_it() {
    let rt = runtime();
    let mc = Memcached::start();
    let store_with = |cache: Arc<SessionCache>, id: u8| {
        let tier = {
            let _in_runtime = rt.enter();
            Arc::new(MemcachedTier::start(MemcachedConfig::new(mc.addr()), ring()).unwrap())
        };
        cache.attach(tier.clone());
        let s = cache
            .session(&[id; 32], vec![id; 48])
            .sid_ctx(CTX)
            .version(ProtocolVersion::TLS1_2)
            .timeout_secs(120)
            .build()
            .unwrap();
        cache.new_session(Role::Server, s);
        let mkey = tier.memcached_key(Kind::Session, SessionKey::new(&[id; 32], CTX));
        assert!(wait_until(WAIT, || mc.get(&mkey).is_some()), "session {id}");
        mc.ttl(&mkey).unwrap()
    };
    // The system clock: an absolute time, the second after the last valid one.
    let ttl = store_with(Arc::new(SessionCache::new()), 1);
    assert!((60..=125).contains(&ttl), "ttl {ttl}");
    // A manual clock near zero: its absolute times are under 30 days, which memcached would read
    // as seconds from now (1,000,120 s here, 11 days); the tier sends the seconds left instead.
    let manual = Arc::new(reprise::ManualClock::new(1_000_000));
    let cache = Arc::new(SessionCache::builder().clock(manual).build());
    let ttl = store_with(cache, 2);
    assert!((60..=125).contains(&ttl), "ttl {ttl}");
}

/// Memory, then the disk tier, then memcached (the authority): the tier composes with a tier it
/// knows nothing of, and neither was changed for the other.
#[test]
fn under_a_disk_tier_sessions_survive_a_restart_and_memcached_decides_tickets() {
    use reprise_disk::{DiskConfig, DiskTier};
    let rt = runtime();
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let instance_on_disk = |addr: SocketAddr| {
        let (disk, _startup) = DiskTier::open(DiskConfig::new(dir.path()), Some(ring())).unwrap();
        let cache = Arc::new(SessionCache::new());
        cache.attach(Arc::new(disk.clone()));
        let tier = {
            let _in_runtime = rt.enter();
            let mut config = MemcachedConfig::new(addr);
            config.read_timeout = Duration::from_secs(2);
            Arc::new(MemcachedTier::start(config, ring()).unwrap())
        };
        cache.attach(tier.clone());
        (cache, disk, tier)
    };
    let (a, disk, tier) = instance_on_disk(mc.addr());
    let (b, _) = instance(&rt, mc.addr());
    let (k1, k2, k3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    a.new_session(Role::Server, session(&a, 1, ProtocolVersion::TLS1_2));
    a.new_session(Role::Server, session(&a, 2, ProtocolVersion::TLS1_3));
    a.new_session(Role::Server, session(&a, 3, ProtocolVersion::TLS1_3));
    for (kind, id) in [
        (Kind::Session, &k1),
        (Kind::Ticket, &k2),
        (Kind::Ticket, &k3),
    ] {
        let mkey = tier.memcached_key(kind, SessionKey::new(id, CTX));
        assert!(wait_until(WAIT, || mc.get(&mkey).is_some()));
    }
    static K2: [u8; 32] = [2; 32];
    static K3: [u8; 32] = [3; 32];
    static TICKET2: [&[u8]; 1] = [&K2];
    static TICKET3: [&[u8]; 1] = [&K3];
    let offer = |idents: &'static [&'static [u8]]| Offer {
        sid_ctx: CTX,
        psk_identities: idents,
        ..Offer::default()
    };
    // Another instance uses ticket 2 while A restarts.
    assert!(rt
        .block_on(b.prefetch(offer(&TICKET2)))
        .into_ticket()
        .is_some());
    disk.close();
    drop((a, disk, tier));

    // A restarts, and cannot reach memcached (nothing listens where it points).
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (a, disk, _tier) = instance_on_disk(nowhere);
    // The TLS 1.2 session resumes from the disk; a ticket needs memcached to confirm its take.
    assert!(a.lookup(Role::Server, SessionKey::new(&k1, CTX)).is_some());
    assert!(a.take(Role::Server, SessionKey::new(&k3, CTX)).is_none());
    assert!(rt
        .block_on(a.prefetch(offer(&TICKET3)))
        .into_ticket()
        .is_none());
    disk.close();
    drop((a, disk));

    // A restarts again, memcached reachable: ticket 3 resumes once; ticket 2, which B used,
    // never resumes from A's disk.
    let (a, _disk, _tier) = instance_on_disk(mc.addr());
    let ticket = rt
        .block_on(a.prefetch(offer(&TICKET3)))
        .into_ticket()
        .unwrap();
    assert!(a
        .take_confirmed(SessionKey::new(&k3, CTX), ticket)
        .is_some());
    assert!(rt
        .block_on(a.prefetch(offer(&TICKET3)))
        .into_ticket()
        .is_none());
    assert!(rt
        .block_on(a.prefetch(offer(&TICKET2)))
        .into_ticket()
        .is_none());
    assert!(a.take(Role::Server, SessionKey::new(&k2, CTX)).is_none());
}
