//! A circuit breaker: after a run of failures, stop asking a store for a while, then let one
//! probe through to see whether it is back.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
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
            state: Mutex::new(State::Closed { failures: 0 }),
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
        *self.state.lock() = State::Closed { failures: 0 };
    }

    /// Reports a request that failed or timed out; returns whether the breaker just opened.
    pub(crate) fn failure(&self) -> bool {
        self.failure_at(Instant::now())
    }

    fn failure_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Open { .. } => false,
            _ => {
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
        assert!(!b.failure_at(t0));
        b.success();
        assert!(!b.failure_at(t0));
        assert!(!b.failure_at(t0));
        assert!(b.failure_at(t0));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_at(t0 + Duration::from_millis(500)));
        // One probe after the cooldown, not two.
        assert!(b.allow_at(t0 + Duration::from_secs(1)));
        assert!(!b.allow_at(t0 + Duration::from_millis(1100)));
        // A failed probe opens it again; a successful one closes it.
        assert!(b.failure_at(t0 + Duration::from_millis(1200)));
        assert!(!b.allow_at(t0 + Duration::from_millis(1300)));
        assert!(b.allow_at(t0 + Duration::from_millis(2300)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t0 + Duration::from_millis(2300)));
        // A probe that never reports back does not wedge the breaker.
        for _ in 0..3 {
            b.failure_at(t0 + Duration::from_secs(3));
        }
        assert!(b.allow_at(t0 + Duration::from_secs(4)));
        assert!(!b.allow_at(t0 + Duration::from_millis(4500)));
        assert!(b.allow_at(t0 + Duration::from_secs(5)));
    }
}
