//! Replays the disk-file fuzzing corpus (`fuzz/corpus/disk_open/`) through the disk tier: no
//! panic escapes, `valid-*` files open with their sessions, `panic-*` files (on which redb
//! itself panics) and `corrupt-*` files (on which it fails) are set aside, and the tier starts
//! empty and works.
//!
//! `REPRISE_WRITE_CORPUS=1 cargo test -p reprise-disk --test corpus` writes the seeds again: a
//! real database and mutants of it, sorted by what plain redb (no integrity check) does on them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use reprise::{
    ProtocolVersion, Role, SecretBytes, Session, SessionCache, SessionKey, SharedSession, Tier,
};
use reprise_disk::{DiskConfig, DiskTier, Recovery};
use reprise_seal::KeyRing;

const CTX: &[u8] = b"corpus";

/// Sessions in the `valid-*` seeds.
const SESSIONS: u32 = 6;

/// The key ring the seeds were sealed with (the fuzz target uses the same).
fn keys() -> KeyRing {
    KeyRing::parse(&format!("fuzz:{}", "5e".repeat(32))).unwrap()
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/disk_open")
}

fn id(n: u32) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    key
}

/// A database written by the tier: TLS 1.2 and 1.3 sessions that expire in about 30 years.
fn real_database(dir: &Path) -> Vec<u8> {
    let (tier, _) = DiskTier::open(DiskConfig::new(dir), Some(keys())).unwrap();
    let cache = Arc::new(SessionCache::new());
    cache.attach(Arc::new(tier.clone()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for n in 0..SESSIONS {
        let version = [ProtocolVersion::TLS1_2, ProtocolVersion::TLS1_3][n as usize % 2];
        let s = Session::builder(&id(n), SecretBytes::from(vec![n as u8; 48]))
            .sid_ctx(CTX)
            .version(version)
            .time(now)
            .timeout_secs(30 * 365 * 86_400)
            .build()
            .unwrap();
        cache.new_session(Role::Server, s);
        // A commit each: redb gives back the end of the file at a later commit.
        tier.flush();
    }
    tier.close();
    drop((tier, cache));
    std::fs::read(dir.join("sessions.redb")).unwrap()
}

/// What redb alone, opened without its integrity check, does on a file: the way the tier
/// opened it before it was protected. `Some(true)`: it panicked.
fn plain_redb(bytes: &[u8]) -> Option<bool> {
    const SESSIONS_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.redb");
    std::fs::write(&path, bytes).unwrap();
    let run = std::panic::catch_unwind(|| -> Result<(), redb::Error> {
        let db = redb::Database::create(&path)?;
        let read = db.begin_read()?;
        let table = read.open_table(SESSIONS_TABLE)?;
        for row in table.iter()? {
            row?;
        }
        Ok(())
    });
    match run {
        Err(_) => Some(true),
        Ok(Err(_)) => Some(false),
        Ok(Ok(())) => None,
    }
}

/// Writes the seeds: the database, three mutants on which plain redb panics, three on which
/// it fails.
fn write_corpus() {
    let out = corpus_dir();
    std::fs::create_dir_all(&out).unwrap();
    let work = tempfile::tempdir().unwrap();
    let original = real_database(work.path());
    std::fs::write(out.join("valid-tier.redb"), &original).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut panics, mut errors) = (0, 0);
    for n in 0..20_000 {
        if panics == 3 && errors == 3 {
            break;
        }
        let mut m = original.clone();
        for _ in 0..=next() % 4 {
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        match plain_redb(&m) {
            Some(true) if panics < 3 => {
                panics += 1;
                std::fs::write(out.join(format!("panic-{n}.redb")), &m).unwrap();
            }
            Some(false) if errors < 3 => {
                errors += 1;
                std::fs::write(out.join(format!("corrupt-{n}.redb")), &m).unwrap();
            }
            _ => {}
        }
    }
}

#[test]
fn the_corpus_opens_without_a_panic() {
    if std::env::var_os("REPRISE_WRITE_CORPUS").is_some() {
        write_corpus();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let named = |prefix: &str| {
        files
            .iter()
            .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .count()
    };
    assert!(named("valid-") >= 1 && named("panic-") >= 1 && named("corrupt-") >= 1);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(file).unwrap();
        if name.starts_with("panic-") {
            assert_eq!(
                plain_redb(&bytes),
                Some(true),
                "{name}: plain redb no longer panics"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sessions.redb"), &bytes).unwrap();
        let (tier, startup) = DiskTier::open(DiskConfig::new(dir.path()), Some(keys())).unwrap();
        let cache = Arc::new(SessionCache::new());
        cache.attach(Arc::new(tier.clone()));
        let warmed = tier.warm(&cache);
        if name.starts_with("valid-") {
            assert_eq!(startup.recovery, Recovery::Opened, "{name}");
            // No clean-shutdown marker beside a copied file: the TLS 1.3 half is dropped.
            assert_eq!(warmed, u64::from(SESSIONS / 2), "{name}");
            assert!(cache
                .lookup(Role::Server, SessionKey::new(&id(0), CTX))
                .is_some());
        } else if name.starts_with("panic-") || name.starts_with("corrupt-") {
            assert!(
                matches!(startup.recovery, Recovery::SetAside(_)),
                "{name}: {:?}",
                startup.recovery
            );
            assert_eq!(warmed, 0, "{name}");
        }
        // Other files (the fuzzer's finds) must only open without a panic, and the tier work.
        let s = Session::builder(&id(999), SecretBytes::from(vec![9; 48]))
            .sid_ctx(CTX)
            .build()
            .unwrap();
        tier.store(&SharedSession::from(s));
        assert!(
            tier.fetch(SessionKey::new(&id(999), CTX)).hit().is_some(),
            "{name}"
        );
        drop(tier);
    }
}
