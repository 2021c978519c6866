//! Time sources: the system clock, and a manual clock that tests move by hand.

use core::fmt::Debug;
use core::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time in Unix seconds. The cache asks it whenever it needs "now".
pub trait Clock: Debug + Send + Sync {
    /// The current time, in seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's wall clock, in whole seconds.
///
/// On Linux it reads `CLOCK_REALTIME_COARSE`, which costs about a tenth of `SystemTime::now`
/// and may trail it by one timer tick (a few milliseconds).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::session::unix_now()
    }
}

/// A clock that only moves when told to: tests advance it instead of sleeping.
///
/// ```
/// use reprise::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(11);
/// assert_eq!(clock.now(), 1_011);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock that reads `now`.
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }

    /// Sets the time.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward by `secs` (saturating).
    pub fn advance(&self, secs: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(secs))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The system clock is the wall clock in Unix seconds: never ahead of the precise clock,
    /// and behind it by at most the second a timer tick can straddle.
    #[test]
    fn system_clock_follows_the_wall_clock() {
        for _ in 0..1000 {
            let coarse = SystemClock.now();
            let precise = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            assert!(coarse <= precise, "{coarse} is ahead of {precise}");
            assert!(precise - coarse <= 1, "{coarse} trails {precise}");
        }
    }
}
