//! The disk tier in a stack, above a shared tier that decides takes (a stand-in for Redis): the
//! disk is never asked to take, a taken ticket's disk copy goes, a removal learned by the tier
//! below is forgotten on disk, and with the shared tier down the disk still resumes TLS 1.2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use reprise::{
    Fetched, ProtocolVersion, Removal, Role, SecretBytes, Session, SessionCache, SessionKey,
    SharedSession, Tier, TierContext,
};
use reprise_disk::{DiskConfig, DiskTier};

const CTX: &[u8] = b"stack";

/// A shared tier over a map: the last of the stack, so the one that decides takes.
#[derive(Default)]
struct Shared {
    map: Mutex<HashMap<Vec<u8>, SharedSession>>,
    down: AtomicBool,
    takes: AtomicUsize,
    cx: OnceLock<TierContext>,
}

impl Tier for Shared {
    fn name(&self) -> &str {
        "shared"
    }

    fn attach(&self, cx: TierContext) {
        let _ = self.cx.set(cx);
    }

    fn store(&self, session: &SharedSession) {
        self.map
            .lock()
            .insert(session.id().as_bytes().to_vec(), session.duplicate());
    }

    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        if self.down.load(Ordering::SeqCst) {
            return Fetched::Unavailable;
        }
        let map = self.map.lock();
        map.get(key.id)
            .map_or(Fetched::Miss, |s| Fetched::Hit(s.duplicate()))
    }

    fn take(&self, key: SessionKey<'_>) -> Fetched {
        self.takes.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Fetched::Unavailable;
        }
        let taken = self.map.lock().remove(key.id);
        taken.map_or(Fetched::Miss, Fetched::Hit)
    }

    fn remove(&self, session: &SharedSession, why: Removal) {
        if matches!(why, Removal::Explicit | Removal::Taken | Removal::Expired) {
            self.map.lock().remove(session.id().as_bytes());
        }
    }
}

fn id(n: u8) -> [u8; 32] {
    [n; 32]
}

fn session(cache: &SessionCache, n: u8, version: ProtocolVersion) -> Session<SecretBytes> {
    cache
        .session(&id(n), SecretBytes::from(vec![n; 48]))
        .sid_ctx(CTX)
        .version(version)
        .build()
        .unwrap()
}

/// Memory, then the disk, then the shared tier.
fn stack(dir: &std::path::Path) -> (Arc<SessionCache>, DiskTier, Arc<Shared>) {
    let (disk, _) = DiskTier::open(DiskConfig::new(dir), None).unwrap();
    let shared = Arc::new(Shared::default());
    let cache = Arc::new(SessionCache::new());
    cache.attach(Arc::new(disk.clone()));
    cache.attach(shared.clone());
    (cache, disk, shared)
}

fn on_disk(disk: &DiskTier, n: u8) -> bool {
    disk.fetch(SessionKey::new(&id(n), CTX)).hit().is_some()
}

#[test]
fn the_shared_tier_decides_takes_and_the_disk_copy_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, disk, shared) = stack(dir.path());
    cache.new_session(Role::Server, session(&cache, 1, ProtocolVersion::TLS1_3));
    cache.new_session(Role::Server, session(&cache, 2, ProtocolVersion::TLS1_3));
    disk.flush();
    assert!(on_disk(&disk, 1) && on_disk(&disk, 2));
    let reads = disk.stats().read_hits;

    // The shared tier has ticket 1: it resumes once, and the disk's copy goes, though the
    // disk was never asked to take it.
    let k1 = id(1);
    assert!(cache
        .take(Role::Server, SessionKey::new(&k1, CTX))
        .is_some());
    assert!(cache
        .take(Role::Server, SessionKey::new(&k1, CTX))
        .is_none());
    assert_eq!(shared.takes.load(Ordering::SeqCst), 2);
    assert_eq!(disk.stats().read_hits, reads, "the disk decided a take");
    assert!(!on_disk(&disk, 1));

    // Another instance used ticket 2: the shared tier no longer has it. Memory's and the
    // disk's copies do not resume, and both go.
    shared.map.lock().clear();
    let k2 = id(2);
    assert!(cache
        .take(Role::Server, SessionKey::new(&k2, CTX))
        .is_none());
    assert!(cache.peek(&k2).is_none());
    disk.flush();
    assert!(!on_disk(&disk, 1) && !on_disk(&disk, 2));
    assert!(disk.stats().deletes_written >= 2, "{:?}", disk.stats());
    disk.close();
}

#[test]
fn with_the_shared_tier_down_the_disk_resumes_tls12_and_no_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, disk, shared) = stack(dir.path());
    cache.new_session(Role::Server, session(&cache, 3, ProtocolVersion::TLS1_2));
    cache.new_session(Role::Server, session(&cache, 4, ProtocolVersion::TLS1_3));
    // Memory lets both go (a flush is not a removal the disk acts on).
    cache.flush_all();
    shared.down.store(true, Ordering::SeqCst);
    let (k3, k4) = (id(3), id(4));
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k3, CTX))
        .is_some());
    assert!(disk.stats().read_hits >= 1);
    // A ticket needs the shared tier to confirm its single use: it does not resume.
    assert!(cache
        .take(Role::Server, SessionKey::new(&k4, CTX))
        .is_none());
    disk.close();
}

#[test]
fn a_removal_learned_below_is_forgotten_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, disk, shared) = stack(dir.path());
    cache.new_session(Role::Server, session(&cache, 5, ProtocolVersion::TLS1_2));
    cache.new_session(Role::Server, session(&cache, 6, ProtocolVersion::TLS1_2));
    disk.flush();
    // Session 5 is written; session 6 is forgotten while its write may still be queued.
    let k5 = id(5);
    let k6 = id(6);
    let cx = shared.cx.get().unwrap();
    assert!(cx.forget(SessionKey::new(&k5, CTX)), "memory held it");
    assert!(cx.forget(SessionKey::new(&k6, CTX)));
    assert!(!on_disk(&disk, 5) && !on_disk(&disk, 6));
    assert_eq!(disk.stats().forgotten, 2);
    disk.flush();
    assert!(!on_disk(&disk, 5) && !on_disk(&disk, 6));
    // Neither comes back from the disk; the shared tier, which learned of it, is left alone.
    shared.down.store(true, Ordering::SeqCst);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k5, CTX))
        .is_none());
    // Forgetting what the disk never had costs nothing.
    assert!(!cx.forget(SessionKey::new(&id(7), CTX)));
    assert_eq!(disk.stats().forgotten, 2);
    disk.close();
}

/// Each reason a session leaves memory, and what the disk does with it: an explicit removal
/// deletes; an eviction or a flush keeps (still good after a restart).
#[test]
fn the_disk_keeps_what_memory_merely_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = DiskTier::open(DiskConfig::new(dir.path()), None).unwrap();
    let cache = Arc::new(SessionCache::builder().size_limit(1).build());
    cache.attach(Arc::new(disk.clone()));
    let explicit = cache
        .new_session(Role::Server, session(&cache, 8, ProtocolVersion::TLS1_2))
        .session;
    assert!(cache.remove(&explicit));
    // Session 9 is evicted by session 10, which is then flushed.
    cache.new_session(Role::Server, session(&cache, 9, ProtocolVersion::TLS1_2));
    cache.new_session(Role::Server, session(&cache, 10, ProtocolVersion::TLS1_2));
    assert!(cache.peek(&id(9)).is_none());
    cache.flush_all();
    disk.flush();
    assert!(!on_disk(&disk, 8), "removed explicitly, yet kept");
    assert!(on_disk(&disk, 9), "evicted from memory, and lost on disk");
    assert!(on_disk(&disk, 10), "flushed from memory, and lost on disk");
    disk.close();
}
