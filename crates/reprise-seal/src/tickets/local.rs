//! Ticket keys of this process alone: random, rotated by the clock, never stored anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use reprise::{Clock, SystemClock};
use ring::rand::{SecureRandom, SystemRandom};

use super::{
    erase_retired, ring_snapshot, KeyId, Schedule, TicketKey, TicketKeySource, TicketKeys,
};

reprise::tier_counters! {
    /// The counters and gauges of a process's own ticket keys.
    pub struct LocalCounters => LocalStats {
        /// Rotations: a new key became the encrypting one.
        rotations: Counter = "rotations_total",
        /// The version of the encrypting key: the number of the current period.
        key_version: Gauge = "key_version",
        /// Seconds since the encrypting key started encrypting.
        key_age_seconds: Gauge = "key_age_seconds",
        /// Keys held (next, current, previous).
        keys: Gauge = "keys",
    }
}

/// Why local ticket keys could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalKeysError {
    /// The lifetime (the rotation period) is under one second.
    #[error("the ticket lifetime must be at least one second")]
    Lifetime,
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
}

/// The ring and the period it was last brought to.
#[derive(Debug)]
struct Ring {
    keys: BTreeMap<u64, Arc<TicketKey>>,
    /// The period of the snapshot held.
    slot: u64,
    generation: u64,
}

/// Random ticket keys that only this process holds, rotated by the [`Schedule`]: key `n` is
/// made during period `n - 1`, encrypts during period `n`, decrypts during period `n + 1`, and
/// is erased (and its secret zeroized) when period `n + 2` starts. Tickets resume only on this
/// process, and none survives a restart: what rustls's own ticketer does, with the rotation,
/// the erasure and the metrics of the other sources.
///
/// A key's version is its period's number ([`LocalStats::key_version`]); its [`KeyId`] is
/// random, so that a ticket from another process's local keys is an unknown key here, not a
/// forgery.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use reprise::ManualClock;
/// use reprise_seal::tickets::{LocalTicketKeys, TicketKeySource};
///
/// let clock = Arc::new(ManualClock::new(1_000));
/// let keys = LocalTicketKeys::with_clock(Duration::from_secs(100), clock.clone()).unwrap();
/// let first = keys.keys().encrypting().unwrap().id();
/// clock.advance(100);
/// assert_ne!(keys.keys().encrypting().unwrap().id(), first);
/// assert!(keys.keys().find(first).is_some(), "the previous key still decrypts");
/// clock.advance(100);
/// assert!(keys.keys().find(first).is_none(), "erased");
/// assert_eq!(keys.stats().rotations, 2);
/// ```
pub struct LocalTicketKeys {
    schedule: Schedule,
    lifetime: Duration,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    keys: ArcSwap<TicketKeys>,
    /// The period of the snapshot in `keys`: checked on every call without the lock.
    slot: AtomicU64,
    ring: Mutex<Ring>,
    counters: LocalCounters,
}

impl LocalTicketKeys {
    /// Keys for tickets that live `lifetime` (at least one second), which is also the rotation
    /// period, on the system clock.
    pub fn new(lifetime: Duration) -> Result<Arc<Self>, LocalKeysError> {
        Self::with_clock(lifetime, Arc::new(SystemClock))
    }

    /// The same on `clock` (a [`ManualClock`](reprise::ManualClock) in tests).
    pub fn with_clock(
        lifetime: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, LocalKeysError> {
        let schedule = Schedule::new(lifetime).ok_or(LocalKeysError::Lifetime)?;
        let rng = SystemRandom::new();
        let slot = schedule.slot_at(clock.now());
        let mut keys = BTreeMap::new();
        for version in [slot, slot.saturating_add(1)] {
            keys.insert(version, Arc::new(new_key(&rng)?));
        }
        let snapshot = ring_snapshot(&keys, slot, 1);
        let source = Self {
            schedule,
            lifetime,
            clock,
            rng,
            keys: ArcSwap::from_pointee(snapshot),
            slot: AtomicU64::new(slot),
            ring: Mutex::new(Ring {
                keys,
                slot,
                generation: 1,
            }),
            counters: LocalCounters::default(),
        };
        source.counters.keys.store(2, Ordering::Relaxed);
        source.counters.key_version.store(slot, Ordering::Relaxed);
        Ok(Arc::new(source))
    }

    /// The counters and gauges, read now (the key's age as of now).
    pub fn stats(&self) -> LocalStats {
        let now = self.clock.now();
        self.refresh(now);
        let mut stats = self.counters.snapshot();
        let started = self.schedule.starts(stats.key_version);
        stats.key_age_seconds = now.saturating_sub(started);
        stats
    }

    /// Brings the ring to the period of `now`, if it moved forward.
    fn refresh(&self, now: u64) {
        let slot = self.schedule.slot_at(now);
        if slot <= self.slot.load(Ordering::Acquire) {
            // Same period, or a clock that went back: the keys stay as they are.
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if slot <= ring.slot {
            return; // Another thread rotated meanwhile.
        }
        let erased = erase_retired(&mut ring.keys, slot);
        for version in [slot, slot.saturating_add(1)] {
            if ring.keys.contains_key(&version) {
                continue;
            }
            match new_key(&self.rng) {
                Ok(key) => {
                    ring.keys.insert(version, Arc::new(key));
                }
                Err(_) => {
                    // Keep what is held; the next call tries again.
                    tracing::error!(
                        source = "local",
                        "the system's random number generator failed: ticket keys not rotated"
                    );
                    return;
                }
            }
        }
        ring.slot = slot;
        ring.generation += 1;
        self.keys
            .store(Arc::new(ring_snapshot(&ring.keys, slot, ring.generation)));
        self.slot.store(slot, Ordering::Release);
        LocalCounters::bump(&self.counters.rotations);
        let c = &self.counters;
        c.key_version.store(slot, Ordering::Relaxed);
        c.keys.store(ring.keys.len() as u64, Ordering::Relaxed);
        tracing::info!(
            source = "local",
            version = slot,
            erased,
            "ticket key rotated"
        );
    }
}

/// A key with a random secret and a random id.
fn new_key(rng: &SystemRandom) -> Result<TicketKey, LocalKeysError> {
    let mut id = [0u8; 8];
    rng.fill(&mut id).map_err(|_| LocalKeysError::Random)?;
    TicketKey::random(KeyId::from_bytes(id)).map_err(|_| LocalKeysError::Random)
}

impl TicketKeySource for LocalTicketKeys {
    fn name(&self) -> &str {
        "local"
    }

    fn keys(&self) -> Arc<TicketKeys> {
        self.refresh(self.clock.now());
        self.keys.load_full()
    }

    fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn metrics(&self) -> Vec<reprise::tier::Metric> {
        self.stats().metrics()
    }
}

impl fmt::Debug for LocalTicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTicketKeys")
            .field("period", &self.schedule.period())
            .field("slot", &self.slot.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tickets::{Rejected, TicketCounters, TicketSealer};
    use reprise::ManualClock;

    const PERIOD: u64 = 100;
    /// The start of period 18.
    const T0: u64 = 1_800;

    #[test]
    fn keys_rotate_and_are_erased_at_the_start_of_period_n_plus_2() {
        let clock = Arc::new(ManualClock::new(T0 + 5));
        let source =
            LocalTicketKeys::with_clock(Duration::from_secs(PERIOD), clock.clone()).unwrap();
        let keys = source.keys();
        let k18 = keys.encrypting().unwrap().clone();
        assert_eq!(keys.decrypting().len(), 2, "current and next");
        let k19 = keys
            .decrypting()
            .iter()
            .find(|k| k.id() != k18.id())
            .unwrap()
            .clone();
        let weak18 = Arc::downgrade(&k18);
        drop((keys, k18));
        let stats = source.stats();
        assert_eq!((stats.key_version, stats.key_age_seconds), (18, 5));
        assert_eq!(stats.rotations, 0);

        // Period 19: the next key encrypts, the previous still decrypts.
        clock.set(T0 + PERIOD);
        let keys = source.keys();
        assert_eq!(keys.encrypting().map(|k| k.id()), Some(k19.id()));
        assert!(weak18
            .upgrade()
            .is_some_and(|k| keys.find(k.id()).is_some()));
        assert_eq!(keys.decrypting().len(), 3);
        drop(keys);
        // Still period 19 at its last second.
        clock.set(T0 + 2 * PERIOD - 1);
        assert!(weak18.upgrade().is_some());

        // Period 20: key 18 is gone from the snapshot and from memory.
        clock.set(T0 + 2 * PERIOD);
        let keys = source.keys();
        assert!(weak18.upgrade().is_none(), "key 18 still held in period 20");
        assert!(keys.find(k19.id()).is_some());
        let stats = source.stats();
        assert_eq!((stats.rotations, stats.key_version, stats.keys), (2, 20, 3));
        assert_eq!(stats.key_age_seconds, 0);
    }

    #[test]
    fn tickets_follow_the_rotation_and_a_jump_erases_everything() {
        let clock = Arc::new(ManualClock::new(T0));
        let source =
            LocalTicketKeys::with_clock(Duration::from_secs(PERIOD), clock.clone()).unwrap();
        let counters = Arc::new(TicketCounters::default());
        let sealer = TicketSealer::new(source.clone(), b"c", counters).with_clock(clock.clone());
        let t = sealer.seal(b"p").unwrap();
        clock.advance(PERIOD);
        // Within its lifetime and its key still held.
        let t2 = sealer.seal(b"q").unwrap();
        clock.set(T0 + PERIOD + PERIOD / 2);
        assert_eq!(sealer.open(&t).err(), Some(Rejected::Expired));
        assert!(sealer.open(&t2).is_ok());
        // The process slept for ten periods: nothing it held decrypts.
        clock.advance(10 * PERIOD);
        assert_eq!(sealer.open(&t2).err(), Some(Rejected::UnknownKey));
        assert_eq!(source.keys().decrypting().len(), 2);
        // A clock that goes back keeps the keys.
        let id = source.keys().encrypting().unwrap().id();
        clock.set(T0);
        assert_eq!(source.keys().encrypting().unwrap().id(), id);
    }

    #[test]
    fn two_processes_never_share_ids() {
        let clock = Arc::new(ManualClock::new(T0));
        let a = LocalTicketKeys::with_clock(Duration::from_secs(PERIOD), clock.clone()).unwrap();
        let b = LocalTicketKeys::with_clock(Duration::from_secs(PERIOD), clock).unwrap();
        let counters = Arc::new(TicketCounters::default());
        let sa = TicketSealer::new(a, b"c", counters.clone());
        let sb = TicketSealer::new(b, b"c", counters);
        let t = sa.seal(b"p").unwrap();
        assert_eq!(sb.open(&t).err(), Some(Rejected::UnknownKey));
        assert!(LocalTicketKeys::new(Duration::from_millis(500)).is_err());
    }
}
