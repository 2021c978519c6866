//! A circuit breaker: after a run of failures, stop asking a store for a while, then let one
//! probe through to see whether it is back.
//!
//! Errors open it at once after the threshold. Missed read deadlines open it only once their run
//! has lasted [`TIMEOUT_RUN`]: a burst of deadlines missed together is what a saturated machine
//! looks like (every read in flight waits behind the same busy threads), while a store that is
//! really down or hung keeps failing.

use std::time::{Duration, Instant};

/// How long a run of missed deadlines must last, unbroken by any success, to open the breaker.
pub(crate) const TIMEOUT_RUN: Duration = Duration::from_millis(100);

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
        /// When the current run of failures began.
        since: Option<Instant>,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`; another is allowed if it never reports back.
    HalfOpen {
        since: Instant,
    },
}

/// The breaker's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go through.
    Closed,
    /// Requests are refused until the cooldown ends.
    Open,
    /// One probe is testing the store.
    HalfOpen,
}

/// A circuit breaker over one store.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed {
                failures: 0,
                since: None,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a request may go to the store now.
    pub(crate) fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { since } if now >= since + self.cooldown => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Reports a request that the store answered.
    pub(crate) fn success(&self) {
        *self.state.lock() = State::Closed {
            failures: 0,
            since: None,
        };
    }

    /// Reports a request that failed; returns whether the breaker just opened.
    pub(crate) fn failure(&self) -> bool {
        self.failure_at(Instant::now(), false)
    }

    /// Reports a request that missed its deadline; returns whether the breaker just opened.
    pub(crate) fn timeout(&self) -> bool {
        self.failure_at(Instant::now(), true)
    }

    fn failure_at(&self, now: Instant, timeout: bool) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { failures, since } => {
                let failures = failures.saturating_add(1);
                let since = since.unwrap_or(now);
                let lasted = !timeout || now.saturating_duration_since(since) >= TIMEOUT_RUN;
                if failures >= self.threshold && lasted {
                    *state = State::Open {
                        until: now + self.cooldown,
                    };
                    true
                } else {
                    *state = State::Closed {
                        failures,
                        since: Some(since),
                    };
                    false
                }
            }
            State::Open { .. } => false,
            State::HalfOpen { .. } => {
                *state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_a_run_of_failures_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(b.allow_at(t0));
        assert!(!b.failure_at(t0, false));
        b.success();
        assert!(!b.failure_at(t0, false));
        assert!(!b.failure_at(t0, false));
        assert!(b.failure_at(t0, false));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_at(t0 + Duration::from_millis(500)));
        // One probe after the cooldown, not two.
        assert!(b.allow_at(t0 + Duration::from_secs(1)));
        assert!(!b.allow_at(t0 + Duration::from_millis(1100)));
        // A failed probe opens it again; a successful one closes it.
        assert!(b.failure_at(t0 + Duration::from_millis(1200), false));
        assert!(!b.allow_at(t0 + Duration::from_millis(1300)));
        assert!(b.allow_at(t0 + Duration::from_millis(2300)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t0 + Duration::from_millis(2300)));
        // A probe that never reports back does not wedge the breaker.
        for _ in 0..3 {
            b.failure_at(t0 + Duration::from_secs(3), false);
        }
        assert!(b.allow_at(t0 + Duration::from_secs(4)));
        assert!(!b.allow_at(t0 + Duration::from_millis(4500)));
        assert!(b.allow_at(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn missed_deadlines_open_it_only_when_their_run_lasts() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        // A burst, as on a saturated machine: not opened, however many.
        for _ in 0..20 {
            assert!(!b.failure_at(t0 + Duration::from_millis(5), true));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // A success ends the run; a new one starts from scratch.
        b.success();
        assert!(!b.failure_at(t0 + Duration::from_millis(50), true));
        assert!(!b.failure_at(t0 + Duration::from_millis(120), true));
        assert!(!b.failure_at(t0 + Duration::from_millis(140), true));
        // Still failing once the run has lasted: open.
        assert!(b.failure_at(t0 + Duration::from_millis(50) + TIMEOUT_RUN, true));
        assert_eq!(b.state(), BreakerState::Open);
        // A probe that misses its deadline reopens it at once.
        assert!(b.allow_at(t0 + Duration::from_secs(2)));
        assert!(b.failure_at(t0 + Duration::from_secs(2), true));
    }
}
