//! The disk tier on a real database file: restarts, single use, expiry, unclean shutdowns,
//! corrupt files, the size cap, and sealing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reprise::{ProtocolVersion, Role, SecretBytes, Session, SessionCache, SessionKey, Tier};
use reprise_disk::{DiskConfig, DiskTier, Recovery, KEY_FILE};
use reprise_seal::KeyRing;

const CTX: &[u8] = b"disk-test";

fn session(id: u32, version: ProtocolVersion, time: u64, timeout: u64) -> Session<SecretBytes> {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&id.to_be_bytes());
    Session::builder(
        &key,
        SecretBytes::from(format!("SECRET-{id}-").repeat(8).into_bytes()),
    )
    .sid_ctx(CTX)
    .version(version)
    .time(time)
    .timeout_secs(timeout)
    .build()
    .unwrap()
}

fn key_of(id: u32) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&id.to_be_bytes());
    key
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn cache() -> Arc<SessionCache> {
    Arc::new(SessionCache::new())
}

/// Hands the cache a session made now with a 300 s timeout, as a server does after a handshake.
fn add_live(cache: &SessionCache, id: u32, version: ProtocolVersion) {
    cache.new_session(Role::Server, session(id, version, now(), 300));
}

/// One run of a server: a cache with the disk tier attached and warmed.
fn start(dir: &std::path::Path) -> (DiskTier, Arc<SessionCache>, reprise_disk::Startup) {
    let (tier, startup) = DiskTier::open(DiskConfig::new(dir), None).unwrap();
    let cache = cache();
    cache.attach(Arc::new(tier.clone()));
    tier.warm(&cache);
    (tier, cache, startup)
}

#[test]
fn sessions_survive_a_restart_and_the_key_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache, startup) = start(dir.path());
    assert_eq!(startup.recovery, Recovery::Created);
    let key_file = dir.path().join(KEY_FILE);
    assert_eq!(startup.key_file, Some((key_file.clone(), true)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for id in 0..50 {
        add_live(&cache, id, ProtocolVersion::TLS1_2);
    }
    tier.close();
    drop((tier, cache));

    // Nothing readable on disk.
    let raw = std::fs::read(dir.path().join("sessions.redb")).unwrap();
    assert!(!raw.windows(7).any(|w| w == b"SECRET-"));

    let (tier, cache, startup) = start(dir.path());
    assert_eq!(startup.recovery, Recovery::Opened);
    assert!(!startup.unclean);
    assert_eq!(startup.key_file, Some((key_file, false)));
    assert_eq!(tier.stats().warmed, 50);
    let s = cache
        .lookup(Role::Server, SessionKey::new(&key_of(7), CTX))
        .unwrap();
    assert_eq!(
        s.payload(),
        session(7, ProtocolVersion::TLS1_2, 0, 0)
            .payload()
            .as_bytes()
    );
    tier.close();
}

#[test]
fn taken_removed_and_expired_sessions_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache, _) = start(dir.path());
    add_live(&cache, 1, ProtocolVersion::TLS1_3);
    add_live(&cache, 2, ProtocolVersion::TLS1_3);
    add_live(&cache, 3, ProtocolVersion::TLS1_2);
    let gone = cache
        .new_session(
            Role::Server,
            session(4, ProtocolVersion::TLS1_2, now(), 300),
        )
        .session;
    // Expired already: stored, and never warmed.
    cache.new_session(
        Role::Server,
        session(5, ProtocolVersion::TLS1_2, now() - 1000, 10),
    );
    assert!(cache
        .take(Role::Server, SessionKey::new(&key_of(1), CTX))
        .is_some());
    assert!(cache.remove(&gone));
    tier.close();
    drop((tier, cache));

    let (tier, cache, _) = start(dir.path());
    assert!(
        cache
            .take(Role::Server, SessionKey::new(&key_of(1), CTX))
            .is_none(),
        "a used ticket came back"
    );
    assert!(
        cache
            .take(Role::Server, SessionKey::new(&key_of(2), CTX))
            .is_some(),
        "an unused ticket was lost"
    );
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&key_of(3), CTX))
        .is_some());
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&key_of(4), CTX))
        .is_none());
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&key_of(5), CTX))
        .is_none());
    assert_eq!(tier.stats().warmed, 2);
    tier.close();
}

#[test]
fn take_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache, _) = start(dir.path());
    add_live(&cache, 9, ProtocolVersion::TLS1_3);
    tier.flush();
    let id9 = key_of(9);
    let key = SessionKey::new(&id9, CTX);
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| usize::from(tier.take(key).hit().is_some())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
    assert!(tier.fetch(key).hit().is_none());

    // A TLS 1.2 session is not single-use: a take neither hands it out nor deletes it.
    add_live(&cache, 8, ProtocolVersion::TLS1_2);
    tier.flush();
    let id8 = key_of(8);
    let key = SessionKey::new(&id8, CTX);
    assert!(tier.take(key).hit().is_none());
    assert!(tier.fetch(key).hit().is_some());
    tier.close();
}

#[test]
fn an_unclean_shutdown_drops_stored_tls13_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache, _) = start(dir.path());
    add_live(&cache, 1, ProtocolVersion::TLS1_3);
    add_live(&cache, 2, ProtocolVersion::TLS1_2);
    tier.flush();
    // No close(): as if killed.
    drop((tier, cache));
    let (tier, cache, startup) = start(dir.path());
    assert!(startup.unclean);
    assert_eq!(startup.dropped_tls13, 1);
    assert!(cache
        .take(Role::Server, SessionKey::new(&key_of(1), CTX))
        .is_none());
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&key_of(2), CTX))
        .is_some());
    tier.close();
}

#[test]
fn unreadable_files_are_set_aside() {
    for damage in ["garbage", "truncated"] {
        let dir = tempfile::tempdir().unwrap();
        let (tier, cache, _) = start(dir.path());
        for id in 0..2000 {
            add_live(&cache, id, ProtocolVersion::TLS1_2);
        }
        tier.close();
        drop((tier, cache));
        let file = dir.path().join("sessions.redb");
        let len = std::fs::metadata(&file).unwrap().len();
        match damage {
            "garbage" => std::fs::write(&file, vec![0x5a; len as usize]).unwrap(),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(len / 3)
                .unwrap(),
        }
        let (tier, cache, startup) = start(dir.path());
        match &startup.recovery {
            Recovery::SetAside(aside) => {
                assert!(aside.exists(), "{damage}");
                assert!(cache.is_empty());
            }
            // redb may also repair a truncated file from its own metadata.
            Recovery::Opened => assert_eq!(damage, "truncated"),
            Recovery::Created => panic!("{damage}: the file vanished"),
        }
        // Either way, the tier works.
        add_live(&cache, 99_999, ProtocolVersion::TLS1_2);
        tier.flush();
        assert!(tier
            .fetch(SessionKey::new(&key_of(99_999), CTX))
            .hit()
            .is_some());
        tier.close();
    }
}

#[test]
fn the_file_stays_within_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1 << 20;
    let mut config = DiskConfig::new(dir.path());
    config.max_bytes = cap;
    let (tier, _) = DiskTier::open(config, None).unwrap();
    let cache = cache();
    cache.set_size_limit(0);
    cache.attach(Arc::new(tier.clone()));
    // Ten times the cap's worth of sessions (each ~300 bytes sealed).
    let total = (10 * cap / 300) as u32;
    for id in 0..total {
        cache.new_session(
            Role::Server,
            session(id, ProtocolVersion::TLS1_2, now(), 300 + u64::from(id)),
        );
        if id % 1000 == 0 {
            tier.flush();
            assert!(tier.stats().file_bytes <= cap, "{:?}", tier.stats());
        }
    }
    tier.flush();
    let stats = tier.stats();
    assert!(stats.file_bytes <= cap, "{stats:?}");
    assert!(stats.evicted_for_size > 0, "{stats:?}");
    assert_eq!(stats.writes_dropped_full, 0, "{stats:?}");
    // The oldest went first: the newest is still there, the first is not.
    assert!(tier
        .fetch(SessionKey::new(&key_of(total - 1), CTX))
        .hit()
        .is_some());
    assert!(tier.fetch(SessionKey::new(&key_of(0), CTX)).hit().is_none());
    tier.close();
}

/// Attack 8: an instance whose key ring lacks the sealing key (a rolling update of the key
/// file) misses the value and keeps it; an instance with the key still resumes it.
#[test]
fn values_sealed_with_a_key_outside_the_ring_are_missed_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let other = || KeyRing::parse(&format!("other:{}", "77".repeat(32))).unwrap();
    let (tier, _) = DiskTier::open(DiskConfig::new(dir.path()), Some(other())).unwrap();
    let cache = cache();
    cache.attach(Arc::new(tier.clone()));
    add_live(&cache, 1, ProtocolVersion::TLS1_2);
    tier.close();
    drop((tier, cache));
    // The directory's own key (generated now) cannot open it: a miss, not a deletion.
    let (tier, cache, _) = start(dir.path());
    assert_eq!(tier.stats().warmed, 0);
    assert_eq!(tier.stats().unknown_key_values, 1);
    assert_eq!(tier.stats().rejected_values, 0);
    assert!(cache.is_empty());
    assert!(tier.fetch(SessionKey::new(&key_of(1), CTX)).hit().is_none());
    assert!(tier.take(SessionKey::new(&key_of(1), CTX)).hit().is_none());
    assert_eq!(tier.stats().unknown_key_values, 3);
    tier.close();
    drop((tier, cache));
    // The ring that sealed it still resumes it.
    let (tier, _) = DiskTier::open(DiskConfig::new(dir.path()), Some(other())).unwrap();
    let cache = self::cache();
    cache.attach(Arc::new(tier.clone()));
    assert_eq!(tier.warm(&cache), 1);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&key_of(1), CTX))
        .is_some());
    tier.close();
}

/// A server whose memory holds fewer sessions than its disk.
fn start_small(dir: &std::path::Path, limit: usize) -> (DiskTier, Arc<SessionCache>) {
    let (tier, _) = DiskTier::open(DiskConfig::new(dir), None).unwrap();
    let cache = Arc::new(SessionCache::builder().size_limit(limit).build());
    cache.attach(Arc::new(tier.clone()));
    (tier, cache)
}

#[test]
fn sessions_memory_evicted_are_served_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache) = start_small(dir.path(), 2);
    for id in 0..6 {
        add_live(&cache, id, ProtocolVersion::TLS1_2);
    }
    tier.flush();
    assert_eq!(cache.len(), 2);
    let k0 = key_of(0);
    // Memory evicted session 0; the get callback finds it on disk, and it resumes again.
    let s = cache
        .lookup(Role::Server, SessionKey::new(&k0, CTX))
        .unwrap();
    assert_eq!(
        s.payload(),
        session(0, ProtocolVersion::TLS1_2, 0, 0)
            .payload()
            .as_bytes()
    );
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k0, CTX))
        .is_some());
    assert!(tier.stats().read_hits >= 1);
    // An id the disk never saw is a miss.
    let unknown = key_of(77);
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&unknown, CTX))
        .is_none());
    assert!(tier.stats().read_misses >= 1);
    tier.close();
}

#[test]
fn a_ticket_resumes_once_whether_in_memory_in_flight_or_only_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache) = start_small(dir.path(), 1);
    // Ticket 1 is taken at once: its write may still be queued. Whatever the writer did
    // meanwhile, it resumes exactly once.
    add_live(&cache, 1, ProtocolVersion::TLS1_3);
    let k1 = key_of(1);
    assert!(cache
        .take(Role::Server, SessionKey::new(&k1, CTX))
        .is_some());
    assert!(cache
        .take(Role::Server, SessionKey::new(&k1, CTX))
        .is_none());
    // Ticket 2 is pushed out of memory by ticket 3: only the disk has it.
    add_live(&cache, 2, ProtocolVersion::TLS1_3);
    add_live(&cache, 3, ProtocolVersion::TLS1_3);
    tier.flush();
    let k2 = key_of(2);
    assert!(cache.peek(&k2).is_none());
    // Four threads race for it: one wins.
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    usize::from(
                        cache
                            .take(Role::Server, SessionKey::new(&k2, CTX))
                            .is_some(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
    tier.close();
    drop((tier, cache));

    // After a clean restart, neither used ticket comes back; the unused one does.
    let (tier, cache, _) = start(dir.path());
    assert!(cache
        .take(Role::Server, SessionKey::new(&k1, CTX))
        .is_none());
    assert!(cache
        .take(Role::Server, SessionKey::new(&k2, CTX))
        .is_none());
    let k3 = key_of(3);
    assert!(cache
        .take(Role::Server, SessionKey::new(&k3, CTX))
        .is_some());
    tier.close();
}

#[test]
fn a_removed_session_is_not_read_back_before_its_deletion_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (tier, cache) = start_small(dir.path(), 0);
    let made = cache
        .new_session(
            Role::Server,
            session(5, ProtocolVersion::TLS1_2, now(), 300),
        )
        .session;
    tier.flush();
    let k5 = key_of(5);
    // Remove, and look up at once: the deletion may still be queued.
    assert!(cache.remove(&made));
    assert!(cache
        .lookup(Role::Server, SessionKey::new(&k5, CTX))
        .is_none());
    assert!(tier.fetch(SessionKey::new(&k5, CTX)).hit().is_none());
    tier.flush();
    assert!(tier.fetch(SessionKey::new(&k5, CTX)).hit().is_none());
    assert_eq!(tier.stats().in_flight, 0);
    tier.close();
}

/// The cache directory is made 0700 and the database 0600; a database an older version left
/// at 0644 is made private at the next start.
#[cfg(unix)]
#[test]
fn the_directory_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = work.path().join("cache").join("reprise");
    let (tier, _, _) = start(&dir);
    let db = dir.join("sessions.redb");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(dir.parent().unwrap()), 0o700);
    assert_eq!(mode(&db), 0o600);
    tier.close();
    drop(tier);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (tier, _, startup) = start(&dir);
    assert_eq!(startup.recovery, Recovery::Opened);
    assert_eq!(mode(&db), 0o600);
    tier.close();
}
