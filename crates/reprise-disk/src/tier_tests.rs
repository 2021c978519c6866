//! Unit tests of the disk tier's internals: reads while the writer is held off the file, a
//! lost deletion, and expiry by the cache's clock.

use super::*;
use reprise::{ManualClock, ProtocolVersion, Role, SecretBytes, Session};

fn ticket(id: u8) -> SharedSession {
    match Session::builder(&[id; 32], SecretBytes::from(vec![id; 48]))
        .sid_ctx(b"ctx")
        .version(ProtocolVersion::TLS1_3)
        .time(SystemClock.now())
        .timeout_secs(300)
        .build()
    {
        Ok(s) => SharedSession::from(s),
        Err(e) => panic!("{e}"),
    }
}

fn attach(tier: &DiskTier, cache: &Arc<SessionCache>) {
    cache.attach(Arc::new(tier.clone()));
}

fn hit(f: Fetched) -> bool {
    matches!(f, Fetched::Hit(_))
}

/// With the writer held off the file, every read must come from the in-flight writes.
#[test]
fn reads_see_writes_the_writer_has_not_applied() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (tier, _) = DiskTier::open(DiskConfig::new(dir.path()), None)?;
    let cache = Arc::new(SessionCache::new());
    attach(&tier, &cache);
    let key = SessionKey::new(&[1; 32], b"ctx");
    {
        let _compacting = tier.inner.shared.store.write();
        cache.new_session(Role::Server, ticket(1));
        assert!(hit(tier.get(key)), "a queued store is visible");
        assert!(cache.take(Role::Server, key).is_some());
        assert!(
            cache.take(Role::Server, key).is_none(),
            "a queued take is visible"
        );
        assert!(!hit(tier.get(key)));
        // A file read meanwhile would wait: it is not made, and the tier says so.
        assert!(matches!(
            tier.get(SessionKey::new(&[2; 32], b"ctx")),
            Fetched::Unavailable
        ));
        assert_eq!(tier.stats().reads_skipped, 1);
        assert!(tier.stats().in_flight >= 1);
    }
    tier.flush();
    assert!(!hit(tier.get(key)));
    assert_eq!(tier.stats().in_flight, 0);
    // The disk's own take deleted the ticket; the removal the cache reported after it
    // queued nothing more.
    assert_eq!(tier.stats().deletes_written, 0, "{:?}", tier.stats());
    tier.close();
    Ok(())
}

/// Attack 10: a ticket whose deletion never reached the file (the queue was full while
/// the file was being compacted) must not resume after a clean restart.
#[test]
fn a_lost_deletion_leaves_no_clean_marker() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = DiskConfig::new(dir.path());
    config.write_queue = 2;
    let (tier, _) = DiskTier::open(config.clone(), None)?;
    let mut lost = None;
    {
        // Compaction holds the writer off the file: the queue fills and stays full.
        let _compacting = tier.inner.shared.store.write();
        let mut filler = 100u8;
        for id in 1..=50u8 {
            // A ticket stored (its write queued), then the queue filled, then the ticket
            // used: its deletion finds the queue full.
            let queued = tier.stats().stores_queued;
            tier.store_session(&ticket(id));
            if tier.stats().stores_queued == queued {
                continue;
            }
            let before = tier.stats().writes_dropped_full;
            for _ in 0..100_000 {
                if tier.stats().writes_dropped_full > before {
                    break;
                }
                filler = filler.wrapping_add(1).max(100);
                tier.store_session(&ticket(filler));
            }
            let dropped = tier.stats().writes_dropped_full;
            assert!(hit(tier.take_session(SessionKey::new(&[id; 32], b"ctx"))));
            if tier.stats().writes_dropped_full > dropped {
                lost = Some(id);
                break;
            }
        }
    }
    let lost = lost.ok_or("no deletion was dropped")?;
    assert!(tier.stats().deletes_lost >= 1, "{:?}", tier.stats());
    tier.close();
    assert!(!dir.path().join(CLEAN_MARKER).exists());
    drop(tier);

    let (tier, startup) = DiskTier::open(config, None)?;
    let cache = Arc::new(SessionCache::new());
    attach(&tier, &cache);
    tier.warm(&cache);
    assert!(startup.unclean, "{startup:?}");
    assert!(
        cache
            .take(Role::Server, SessionKey::new(&[lost; 32], b"ctx"))
            .is_none(),
        "ticket {lost} was used, its deletion lost, and it resumed after a restart"
    );
    tier.close();
    Ok(())
}

/// The writer purges by the cache's clock, not the system's: a session made at a manual
/// time long past stays until that clock passes its expiry.
#[test]
fn expiry_is_decided_by_the_cache_clock() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = DiskConfig::new(dir.path());
    // A purge at every round of the writer: each flush runs one after its writes.
    config.purge_interval = Duration::ZERO;
    let (tier, _) = DiskTier::open(config, None)?;
    let clock = Arc::new(ManualClock::new(10_000));
    let cache = Arc::new(
        SessionCache::builder()
            .timeout_secs(100)
            .clock(clock.clone())
            .build(),
    );
    attach(&tier, &cache);
    let id = [3; 32];
    let key = SessionKey::new(&id, b"ctx");
    let s = cache
        .session(&id, SecretBytes::from(vec![3; 48]))
        .sid_ctx(b"ctx")
        .version(ProtocolVersion::TLS1_2)
        .build()?;
    cache.new_session(Role::Server, s);
    tier.flush();
    // By the system's clock it expired in 1970; by the cache's it has 100 s to live.
    assert_eq!(tier.stats().stores_written, 1, "{:?}", tier.stats());
    assert_eq!(tier.stats().purged_expired, 0, "{:?}", tier.stats());
    // Memory lets it go (a flush leaves the disk alone) and the disk serves it.
    cache.flush_all();
    assert!(cache.lookup(Role::Server, key).is_some());
    assert_eq!(tier.stats().read_hits, 1);
    // A restart's warm-up reads the same clock.
    let other = Arc::new(SessionCache::builder().clock(clock.clone()).build());
    assert_eq!(tier.warm(&other), 1);
    cache.flush_all();

    clock.advance(101);
    tier.flush();
    assert_eq!(tier.stats().purged_expired, 1, "{:?}", tier.stats());
    assert!(matches!(tier.get(key), Fetched::Miss));
    assert!(cache.lookup(Role::Server, key).is_none());
    tier.close();
    Ok(())
}
