//! The engine's locks, atomics and threads, in one place: `parking_lot`'s and the standard
//! library's, or, with the `shuttle` feature, shuttle's, so that the interleaving tests
//! (`shuttle_tests.rs`) control every point where the engine's threads meet.
//!
//! Everything the add, evict, reserve and take paths lock or touch atomically comes from here:
//! a `parking_lot` lock held across a shuttle atomic would block the one OS thread that shuttle
//! runs every test thread on. The callback slots (`arc-swap`, and the flag and writer lock
//! beside it) stay uninstrumented: a load never blocks, and a slot's writer lock is held across
//! no shuttle operation.
//!
//! `Arc` is the standard library's either way (shuttle's is the same type), and a session's
//! `Shared` counts with the standard library's atomics, so the public API does not change with
//! the feature.

#[cfg(not(feature = "shuttle"))]
pub(crate) use core::sync::atomic;
#[cfg(not(feature = "shuttle"))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread;

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::atomic;
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread;
#[cfg(feature = "shuttle")]
pub(crate) use shuttle_mutex::Mutex;

/// Shuttle's mutex behind `parking_lot`'s API: no poisoning, `try_lock` as an `Option`.
#[cfg(feature = "shuttle")]
mod shuttle_mutex {
    use shuttle::sync::{MutexGuard, PoisonError, TryLockError};

    /// A mutual exclusion lock that shuttle schedules around.
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A lock around `value`.
        pub(crate) fn new(value: T) -> Self {
            Self(shuttle::sync::Mutex::new(value))
        }

        /// Waits for the lock. A thread that panicked while holding it left the value as it
        /// was, as with `parking_lot`.
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Takes the lock if it is free now.
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            }
        }
    }
}
