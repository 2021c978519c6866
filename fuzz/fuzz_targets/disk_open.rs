//! Fuzzes the disk tier's open on a damaged file: the input is written as `sessions.redb` and
//! the tier opened on it (redb's integrity check, the full read, the unclean-start cleanup),
//! then warmed and written to. No panic may escape, and a file that did not open must have
//! been set aside with the tier empty.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use reprise::{SecretBytes, Session, SessionCache, SessionKey, Tier};
use reprise_disk::{DiskConfig, DiskTier, Recovery};
use reprise_seal::KeyRing;

/// A directory of this process's own on tmpfs when there is one: every open commits, and a
/// commit is an fsync.
fn work_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = ["/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        base.join(format!("reprise-fuzz-disk-{}", std::process::id()))
    })
}

/// The key ring the seed corpus was sealed with.
fn keys() -> KeyRing {
    KeyRing::parse(&format!("fuzz:{}", "5e".repeat(32))).expect("a valid key line")
}

fuzz_target!(|data: &[u8]| {
    let dir = work_dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("work directory");
    std::fs::write(dir.join("sessions.redb"), data).expect("write the input");
    let (tier, startup) = DiskTier::open(DiskConfig::new(dir), Some(keys()))
        .unwrap_or_else(|e| panic!("the tier did not start: {e}"));
    let cache = Arc::new(SessionCache::new());
    cache.attach(Arc::new(tier.clone()));
    let warmed = tier.warm(&cache);
    if let Recovery::SetAside(aside) = &startup.recovery {
        assert!(aside.is_file());
        assert_eq!(warmed, 0);
    }
    let s = Session::builder(&[7; 32], SecretBytes::from(vec![1; 48]))
        .sid_ctx(b"fuzz")
        .build()
        .expect("a session");
    tier.store(&Arc::new(s));
    assert!(tier
        .fetch(SessionKey::new(&[7; 32], b"fuzz"))
        .hit()
        .is_some());
    drop(tier);
});
