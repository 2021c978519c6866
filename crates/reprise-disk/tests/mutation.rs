//! A real database file, mutated in many ways (bit flips, bytes overwritten, blocks zeroed or
//! copied, truncation, extension), and the disk tier opened on each: no panic escapes, a file
//! that does not check out is set aside, and the tier starts empty and works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use reprise::{ProtocolVersion, Role, SecretBytes, Session, SessionCache, SessionKey, Tier};
use reprise_disk::{DiskConfig, DiskTier, Recovery};
use reprise_seal::KeyRing;

const CTX: &[u8] = b"mutation";

/// Mutants per run: enough to reach redb's panics on a damaged file (about 1 in 15 did before
/// the open was protected), few enough to run in seconds.
const MUTANTS: u64 = 300;

fn keys() -> KeyRing {
    KeyRing::parse(&format!("m:{}", "5e".repeat(32))).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn session(id: u32, version: ProtocolVersion) -> Session<SecretBytes> {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&id.to_be_bytes());
    Session::builder(&key, SecretBytes::from(vec![id as u8; 64]))
        .sid_ctx(CTX)
        .version(version)
        .time(now())
        .timeout_secs(3600)
        .build()
        .unwrap()
}

/// A database written by the tier itself: TLS 1.2 and 1.3 sessions, a few deletions, closed
/// cleanly.
fn real_database(dir: &Path) -> Vec<u8> {
    let (tier, _) = DiskTier::open(DiskConfig::new(dir), Some(keys())).unwrap();
    let cache = Arc::new(SessionCache::new());
    cache.attach(Arc::new(tier.clone()));
    for id in 0..40 {
        let version = if id % 2 == 0 {
            ProtocolVersion::TLS1_2
        } else {
            ProtocolVersion::TLS1_3
        };
        cache.new_session(Role::Server, session(id, version));
    }
    tier.flush();
    for id in (1..10).step_by(2) {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&(id as u32).to_be_bytes());
        cache.take(Role::Server, SessionKey::new(&key, CTX));
    }
    tier.close();
    drop((tier, cache));
    std::fs::read(dir.join("sessions.redb")).unwrap()
}

/// xorshift64*: reproducible mutants without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutant of `file`, chosen by `rng`.
fn mutate(file: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = file.to_vec();
    let len = m.len();
    match rng.below(8) {
        0 => {
            // A few bit flips.
            for _ in 0..=rng.below(4) {
                let i = rng.below(len);
                m[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            // Random bytes over a short run.
            let at = rng.below(len);
            for b in m.iter_mut().skip(at).take(1 + rng.below(16)) {
                *b = rng.next() as u8;
            }
        }
        2 => {
            // Interesting values (0, 0xff, lengths) over 8 bytes.
            let at = rng.below(len.saturating_sub(8));
            let v: u64 = [0, u64::MAX, 1, 0x8000_0000, 4096, 0x7fff_ffff_ffff_ffff][rng.below(6)];
            m[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        3 => {
            // A 4 KiB page zeroed.
            let page = rng.below(len / 4096) * 4096;
            m[page..(page + 4096).min(len)].fill(0);
        }
        4 => {
            // One page copied over another.
            let pages = (len / 4096).max(1);
            let (from, to) = (rng.below(pages) * 4096, rng.below(pages) * 4096);
            let n = 4096.min(len - from).min(len - to);
            let src = m[from..from + n].to_vec();
            m[to..to + n].copy_from_slice(&src);
        }
        5 => m.truncate(rng.below(len)),
        6 => {
            // Extended with garbage.
            for _ in 0..1 + rng.below(8192) {
                m.push(rng.next() as u8);
            }
        }
        _ => {
            // The header region (the first 4 KiB), where redb's roots and lengths live.
            for _ in 0..=rng.below(3) {
                let i = rng.below(4096.min(len));
                m[i] = rng.next() as u8;
            }
        }
    }
    m
}

/// How one mutant fared.
#[derive(Default)]
struct Tally {
    panicked: u64,
    set_aside: u64,
    opened: u64,
}

/// Opens the tier on `mutant` (number `n`) in a fresh directory and checks the outcome.
fn try_mutant(n: usize, mutant: &[u8], tally: &mut Tally) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sessions.redb"), mutant).unwrap();
    let run = std::panic::catch_unwind(|| {
        let (tier, startup) = DiskTier::open(DiskConfig::new(dir.path()), Some(keys()))
            .map_err(|e| format!("mutant {n}: {e}"))?;
        let cache = Arc::new(SessionCache::new());
        cache.attach(Arc::new(tier.clone()));
        let warmed = tier.warm(&cache);
        // The tier works, whatever the file was (checked on a tenth of the mutants: a write
        // and a clean close take the writer a few ticks).
        let mut found = true;
        if n % 10 == 0 {
            cache.new_session(Role::Server, session(1_000_000, ProtocolVersion::TLS1_2));
            tier.flush();
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&1_000_000u32.to_be_bytes());
            found = tier.fetch(SessionKey::new(&key, CTX)).hit().is_some();
            tier.close();
        }
        Ok::<_, String>((startup.recovery, warmed, found))
    });
    match run {
        Err(_) => tally.panicked += 1,
        Ok(Err(e)) => panic!("{e}"),
        Ok(Ok((recovery, warmed, found))) => {
            assert!(found, "mutant {n}: the tier does not work after opening");
            match recovery {
                Recovery::SetAside(aside) => {
                    tally.set_aside += 1;
                    assert_eq!(warmed, 0, "mutant {n}: set aside, yet sessions loaded");
                    // Kept for the operator (redb may have begun a repair of it).
                    assert!(aside.is_file(), "mutant {n}: nothing set aside");
                    let name = aside.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(name.starts_with("sessions.redb.corrupt-"), "{name}");
                }
                Recovery::Opened => tally.opened += 1,
                Recovery::Created => panic!("mutant {n}: the file vanished"),
            }
        }
    }
}

#[test]
fn mutated_database_files_never_panic_and_are_set_aside() {
    let original_dir = tempfile::tempdir().unwrap();
    let original = real_database(original_dir.path());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mutants: Vec<(usize, Vec<u8>)> = (0..MUTANTS as usize)
        .map(|n| (n, mutate(&original, &mut rng)))
        .filter(|(_, m)| *m != original)
        .collect();
    // Four threads: each open waits mostly on the disk (redb commits with fsync).
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = mutants
            .chunks(mutants.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || {
                    let mut tally = Tally::default();
                    for (n, mutant) in chunk {
                        try_mutant(*n, mutant, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (panicked, set_aside, opened) =
        (sum(|t| t.panicked), sum(|t| t.set_aside), sum(|t| t.opened));
    eprintln!("{MUTANTS} mutants: {panicked} panicked, {set_aside} set aside, {opened} opened");
    assert_eq!(panicked, 0, "{panicked} of {MUTANTS} mutants panicked");
    assert!(set_aside > MUTANTS / 4, "only {set_aside} set aside");
}
