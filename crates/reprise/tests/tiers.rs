//! The stack of tiers through the public API: writes reach every tier, reads go in order, the
//! last tier decides takes, removals reach every tier, and the async prefetch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use reprise::{
    CacheMode, Fetched, ManualClock, Offer, ProtocolVersion, Removal, Request, Role, SecretBytes,
    Session, SessionCache, SessionKey, SharedSession, Stats, Tier, TierContext, TierFuture,
};

/// A tier over a map, which records what it was told. `down` makes every read unavailable;
/// `is_async` gives it a prefetch.
#[derive(Default)]
struct MapTier {
    name: &'static str,
    map: Mutex<HashMap<Vec<u8>, SharedSession>>,
    removals: Mutex<Vec<(Vec<u8>, Removal)>>,
    reads: AtomicUsize,
    takes: AtomicUsize,
    prefetches: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
    is_async: bool,
    cx: OnceLock<TierContext>,
}

impl MapTier {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            ..Self::default()
        })
    }

    fn asynchronous(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            is_async: true,
            ..Self::default()
        })
    }

    fn has(&self, id: u8) -> bool {
        self.map.lock().contains_key(&[id; 32][..])
    }

    fn put(&self, session: impl Into<SharedSession>) {
        let session = session.into();
        self.map
            .lock()
            .insert(session.id().as_bytes().to_vec(), session);
    }

    fn removals(&self, id: u8) -> Vec<Removal> {
        self.removals
            .lock()
            .iter()
            .filter(|(k, _)| k[..] == [id; 32])
            .map(|(_, why)| *why)
            .collect()
    }

    fn read(&self, key: SessionKey<'_>, take: bool) -> Fetched {
        if self.down.load(Ordering::SeqCst) {
            return Fetched::Unavailable;
        }
        let mut map = self.map.lock();
        let found = if take {
            map.remove(key.id)
        } else {
            map.get(key.id).map(SharedSession::duplicate)
        };
        found.map_or(Fetched::Miss, Fetched::Hit)
    }
}

impl Tier for MapTier {
    fn name(&self) -> &str {
        self.name
    }

    fn attach(&self, cx: TierContext) {
        let _ = self.cx.set(cx);
    }

    fn store(&self, session: &SharedSession) {
        // A copy, as a real tier decodes one: memory marks its own object not resumable when it
        // lets it go, and that must not reach the tier's.
        self.put(session.duplicate());
    }

    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.is_async {
            // Like a network tier: the handshake path never waits on it.
            return Fetched::Unavailable;
        }
        self.read(key, false)
    }

    fn take(&self, key: SessionKey<'_>) -> Fetched {
        self.takes.fetch_add(1, Ordering::SeqCst);
        if self.is_async {
            return Fetched::Unavailable;
        }
        self.read(key, true)
    }

    fn remove(&self, session: &SharedSession, why: Removal) {
        self.removals
            .lock()
            .push((session.id().as_bytes().to_vec(), why));
        if matches!(why, Removal::Explicit | Removal::Taken | Removal::Expired) {
            self.map.lock().remove(session.id().as_bytes());
        }
    }

    fn forget(&self, key: SessionKey<'_>) {
        self.map.lock().remove(key.id);
    }

    fn prefetch<'a>(&'a self, request: Request<'a>) -> Option<TierFuture<'a>> {
        if !self.is_async {
            return None;
        }
        // The work happens when the future runs, not before.
        let (id, ctx) = (request.key.id.to_vec(), request.key.sid_ctx.to_vec());
        Some(Box::pin(async move {
            self.prefetches.fetch_add(1, Ordering::SeqCst);
            self.read(SessionKey::new(&id, &ctx), request.take)
        }))
    }
}

const CTX: &[u8] = b"ctx";

fn key(id: u8) -> [u8; 32] {
    [id; 32]
}

fn session(cache: &SessionCache, id: u8, version: ProtocolVersion) -> Session<SecretBytes> {
    cache
        .session(&key(id), SecretBytes::from(vec![id; 48]))
        .sid_ctx(CTX)
        .version(version)
        .build()
        .unwrap()
}

fn stack(tiers: &[&Arc<MapTier>]) -> (Arc<SessionCache>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(10_000));
    let cache = Arc::new(
        SessionCache::builder()
            .timeout_secs(100)
            .clock(clock.clone())
            .build(),
    );
    for tier in tiers {
        cache.attach(Arc::clone(tier) as Arc<dyn Tier>);
    }
    (cache, clock)
}

/// Blocks on a future that never waits (the test tiers answer at once).
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the test tiers never wait"),
    }
}

#[test]
fn writes_reach_every_tier_and_reads_go_in_order_with_backfill() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    let new = cache.new_session(Role::Server, session(&cache, 1, ProtocolVersion::TLS1_2));
    assert!(new.stored_internally && new.stored_in_tiers && new.is_stored());
    assert!(disk.has(1) && shared.has(1));

    // Only the shared tier has session 2: a lookup finds it there after memory and the disk
    // missed, and copies it into memory and into the disk.
    shared.put(session(&cache, 2, ProtocolVersion::TLS1_2));
    let k2 = key(2);
    let found = cache.lookup(Role::Server, SessionKey::new(&k2, CTX));
    assert!(found.is_some());
    assert_eq!(disk.reads.load(Ordering::SeqCst), 1);
    assert_eq!(shared.reads.load(Ordering::SeqCst), 1);
    assert!(
        disk.has(2),
        "backfilled into the tier above the one that had it"
    );
    assert!(cache.peek(&k2).is_some(), "copied into memory");
    // Now memory answers: no tier is read again.
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k2, CTX))
        .is_some());
    assert_eq!(shared.reads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().cb_hits, 1);
}

#[test]
fn a_session_under_another_context_never_resumes_from_a_tier() {
    let disk = MapTier::new("disk");
    let (cache, _) = stack(&[&disk]);
    disk.put(session(&cache, 3, ProtocolVersion::TLS1_2));
    let k = key(3);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k, b"other"))
        .is_none());
    assert!(cache.peek(&k).is_none(), "nothing copied into memory");
}

#[test]
fn an_expired_session_from_a_tier_is_a_miss_and_leaves_every_tier() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, clock) = stack(&[&disk, &shared]);
    shared.put(session(&cache, 4, ProtocolVersion::TLS1_2));
    clock.advance(101);
    let k = key(4);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k, CTX))
        .is_none());
    assert_eq!(cache.stats().timeouts, 1);
    assert_eq!(shared.removals(4), [Removal::Expired]);
    assert!(!shared.has(4));
}

#[test]
fn the_last_tier_decides_a_take_and_every_copy_goes() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    cache.new_session(Role::Server, session(&cache, 5, ProtocolVersion::TLS1_3));
    assert!(cache.peek(&key(5)).is_some() && disk.has(5) && shared.has(5));

    // The authority no longer has it (another instance took it): memory's and the disk's
    // copies do not resume, and both go.
    shared.map.lock().clear();
    let k = key(5);
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_none());
    assert!(cache.peek(&k).is_none());
    assert!(!disk.has(5));
    assert_eq!(disk.removals(5), [Removal::Taken]);

    // The authority has it and memory does not: the take resumes once, and the disk's copy
    // goes too.
    cache.new_session(Role::Server, session(&cache, 6, ProtocolVersion::TLS1_3));
    cache.flush_all();
    assert!(disk.has(6) && shared.has(6));
    let k = key(6);
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_some());
    assert!(!disk.has(6) && !shared.has(6));
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_none());
    assert_eq!(shared.takes.load(Ordering::SeqCst), 3);
}

#[test]
fn an_unavailable_authority_resumes_no_ticket_but_the_disk_still_resumes_tls12() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    cache.new_session(Role::Server, session(&cache, 7, ProtocolVersion::TLS1_3));
    cache.new_session(Role::Server, session(&cache, 8, ProtocolVersion::TLS1_2));
    cache.flush_all();
    shared.down.store(true, Ordering::SeqCst);
    let (k7, k8) = (key(7), key(8));
    assert!(cache
        .take(Role::Server, SessionKey::new(&k7, CTX))
        .is_none());
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k8, CTX))
        .is_some());
    // A take never consumes a TLS 1.2 session.
    assert!(cache
        .take(Role::Server, SessionKey::new(&k8, CTX))
        .is_none());
    assert!(disk.has(8));
}

#[test]
fn with_only_local_tiers_the_last_one_takes() {
    let disk = MapTier::new("disk");
    let (cache, _) = stack(&[&disk]);
    cache.new_session(Role::Server, session(&cache, 9, ProtocolVersion::TLS1_3));
    let k = key(9);
    let taken = cache.take(Role::Server, SessionKey::new(&k, CTX));
    assert!(taken.is_some_and(|s| !s.is_resumable()), "claimed once");
    assert!(cache.peek(&k).is_none() && !disk.has(9));
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_none());
}

#[test]
fn removals_reach_every_tier_with_their_reason() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, clock) = stack(&[&disk, &shared]);
    let new = cache.new_session(Role::Server, session(&cache, 10, ProtocolVersion::TLS1_2));
    cache.remove(&new.session);
    assert_eq!(disk.removals(10), [Removal::Explicit]);
    assert_eq!(shared.removals(10), [Removal::Explicit]);
    cache.new_session(Role::Server, session(&cache, 11, ProtocolVersion::TLS1_2));
    clock.advance(101);
    cache.flush(reprise::Clock::now(&*clock));
    assert_eq!(shared.removals(11), [Removal::Flushed]);
    cache.new_session(Role::Server, session(&cache, 12, ProtocolVersion::TLS1_2));
    drop(cache);
    assert_eq!(disk.removals(12), [Removal::Dropped]);
}

#[test]
fn a_removal_learned_from_below_is_forgotten_above_without_an_echo() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::new("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    cache.new_session(Role::Server, session(&cache, 13, ProtocolVersion::TLS1_2));
    let cx = shared.cx.get().unwrap();
    assert_eq!(cx.position(), 1);
    assert_eq!(cx.now(), 10_000, "the tier reads the cache's clock");
    let k = key(13);
    assert!(cx.forget(SessionKey::new(&k, CTX)));
    assert!(cache.peek(&k).is_none() && !disk.has(13));
    assert!(
        shared.has(13),
        "the tier that learned of it is not told again"
    );
    assert!(shared.removals(13).is_empty() && disk.removals(13).is_empty());
}

#[test]
fn prefetch_takes_a_ticket_from_the_authority_for_one_connection() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::asynchronous("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    cache.new_session(Role::Server, session(&cache, 14, ProtocolVersion::TLS1_3));
    let k = key(14);
    // The handshake's own take cannot confirm with an async authority.
    let offer_ids: [&[u8]; 2] = [&[99; 32], &k];
    let fetched = now(cache.prefetch(Offer {
        sid_ctx: CTX,
        psk_identities: &offer_ids,
        ..Offer::default()
    }));
    // The first identity was read (a miss), which ends the search: one read per hello.
    assert!(fetched.into_ticket().is_none());
    assert_eq!(shared.prefetches.load(Ordering::SeqCst), 1);

    let fetched = now(cache.prefetch(Offer {
        sid_ctx: CTX,
        psk_identities: &[&k],
        ..Offer::default()
    }));
    let ticket = fetched
        .into_ticket()
        .expect("the authority handed the ticket over");
    assert!(!shared.has(14));
    let resumed = cache.take_confirmed(SessionKey::new(&k, CTX), ticket);
    assert!(resumed.is_some());
    assert!(
        cache.peek(&k).is_none() && !disk.has(14),
        "every copy is gone"
    );
    // A plain take never resumes it again.
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_none());
}

/// What the authority did with the offered tickets, for a server deciding on 0-RTT: confirmed
/// only when it took the ticket for this connection.
#[test]
fn prefetch_says_what_the_authority_did_with_the_tickets() {
    use reprise::TicketTake;
    let (disk, shared) = (MapTier::new("disk"), MapTier::asynchronous("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    cache.new_session(Role::Server, session(&cache, 15, ProtocolVersion::TLS1_3));
    let k = key(15);
    let offer = |ids: &[&[u8]]| {
        now(cache.prefetch(Offer {
            sid_ctx: CTX,
            psk_identities: ids,
            ..Offer::default()
        }))
        .ticket_take()
    };
    assert_eq!(offer(&[]), TicketTake::NotAsked);
    shared.down.store(true, Ordering::SeqCst);
    assert_eq!(offer(&[&k]), TicketTake::Unavailable);
    shared.down.store(false, Ordering::SeqCst);
    let first = offer(&[&k]);
    assert_eq!(first, TicketTake::Confirmed);
    assert!(first.confirms());
    // The replay: the ticket is gone.
    let again = offer(&[&k]);
    assert_eq!(again, TicketTake::Missed);
    assert!(!again.confirms());
    // A synchronous authority takes during the handshake: its take is the only one.
    let (local, _) = stack(&[&MapTier::new("disk")]);
    let taken = now(local.prefetch(Offer {
        sid_ctx: CTX,
        psk_identities: &[&k],
        ..Offer::default()
    }));
    assert_eq!(taken.ticket_take(), TicketTake::Synchronous);
}

#[test]
fn prefetch_reads_a_tls12_session_in_order_into_memory() {
    let (disk, shared) = (MapTier::new("disk"), MapTier::asynchronous("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    shared.put(session(&cache, 15, ProtocolVersion::TLS1_2));
    let k = key(15);
    let offer = Offer {
        sid_ctx: CTX,
        session_id: Some(&k),
        ..Offer::default()
    };
    let fetched = now(cache.prefetch(offer));
    assert!(fetched.found_session());
    assert!(cache.peek(&k).is_some() && disk.has(15));
    // In memory now: a second prefetch reads nothing.
    let fetched = now(cache.prefetch(offer));
    assert!(!fetched.found_session());
    assert_eq!(shared.prefetches.load(Ordering::SeqCst), 1);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k, CTX))
        .is_some());
}

#[test]
fn a_declined_session_reaches_no_tier_and_stored_internally_tells_the_truth() {
    let disk = MapTier::new("disk");
    let clock = Arc::new(ManualClock::new(10_000));
    let cache = Arc::new(
        SessionCache::builder()
            .clock(clock)
            .new_session_callback(Arc::new(|_cache, session| session.id().as_bytes()[0] != 1))
            .build(),
    );
    cache.attach(disk.clone());
    let declined = cache.new_session(Role::Server, session(&cache, 1, ProtocolVersion::TLS1_2));
    assert!(!declined.is_stored() && !disk.has(1));

    // A callback that removes the session it is given, and keeps it.
    cache.set_new_session_callback(Some(Arc::new(|cache, session| {
        cache.remove(session);
        true
    })));
    let new = cache.new_session(Role::Server, session(&cache, 2, ProtocolVersion::TLS1_2));
    assert!(!new.stored_internally, "the callback removed it");
    assert_eq!(cache.len(), 0);
}

#[test]
fn stats_compare_whole() {
    let disk = MapTier::new("disk");
    let (cache, _) = stack(&[&disk]);
    disk.put(session(&cache, 16, ProtocolVersion::TLS1_2));
    let k = key(16);
    cache.lookup(Role::Server, SessionKey::new(&k, CTX));
    assert_eq!(
        cache.stats(),
        Stats {
            number: 1,
            hits: 1,
            misses: 1,
            cb_hits: 1,
            ..Stats::default()
        }
    );
    // NO_INTERNAL_STORE keeps a tier's hit out of memory.
    cache.set_mode(CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE);
    cache.flush_all();
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k, CTX))
        .is_some());
    assert!(cache.is_empty());
}

#[test]
fn prefetch_leaves_synchronous_tiers_below_the_last_async_one_to_the_handshake() {
    // Memory and a disk only: nothing to gain before the handshake, and a miss costs one read.
    let disk = MapTier::new("disk");
    let (cache, _) = stack(&[&disk]);
    let k = key(17);
    let offer = Offer {
        sid_ctx: CTX,
        session_id: Some(&k),
        ..Offer::default()
    };
    assert!(!now(cache.prefetch(offer)).found_session());
    assert_eq!(disk.reads.load(Ordering::SeqCst), 0);

    // A disk above a shared async tier: the disk is asked first, and its hit spares the read
    // of the shared tier.
    let (disk, shared) = (MapTier::new("disk"), MapTier::asynchronous("shared"));
    let (cache, _) = stack(&[&disk, &shared]);
    disk.put(session(&cache, 17, ProtocolVersion::TLS1_2));
    assert!(now(cache.prefetch(offer)).found_session());
    assert_eq!(disk.reads.load(Ordering::SeqCst), 1);
    assert_eq!(shared.prefetches.load(Ordering::SeqCst), 0);
}

#[test]
fn a_read_never_adopts_a_ticket_from_a_tier() {
    // A ticket id travels in the clear: offered as a TLS 1.2 session id, it must not resume,
    // nor land in memory.
    let disk = MapTier::new("disk");
    let (cache, _) = stack(&[&disk]);
    disk.put(session(&cache, 18, ProtocolVersion::TLS1_3));
    let k = key(18);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k, CTX))
        .is_none());
    assert!(cache.peek(&k).is_none());
    let cx = disk.cx.get().unwrap();
    assert!(cx.is_last(), "one tier: the authority");
    let shared = MapTier::new("shared");
    cache.attach(shared.clone());
    assert!(!cx.is_last() && shared.cx.get().unwrap().is_last());
    // Still takeable, once, from the authority that holds it.
    shared.put(session(&cache, 18, ProtocolVersion::TLS1_3));
    assert!(cache.take(Role::Server, SessionKey::new(&k, CTX)).is_some());
    assert!(!disk.has(18), "the disk's copy went with the take");
}
