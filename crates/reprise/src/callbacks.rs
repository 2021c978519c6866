//! The external-cache callbacks of `SSL_CTX_sess_set_new_cb` and friends, as Rust closures.
//!
//! Every callback gets the cache it belongs to as its first argument (as OpenSSL passes the
//! `SSL_CTX` or the `SSL`), so it can call back into it: the cache never holds a lock while a
//! callback runs. A callback must not own an `Arc` of its cache, or the cache is never dropped.

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};
use parking_lot::Mutex;

use crate::cache::SessionCache;
use crate::session::{InlineSecret, SessionKey};
use crate::SharedSession;

/// Called for every new session while caching is enabled for its role.
///
/// Return `true` to keep the session (the callback may clone the `SharedSession` into an
/// external cache). Return `false` and the session is removed from the internal cache at once.
pub type NewSessionCallback<P = InlineSecret> =
    Arc<dyn Fn(&SessionCache<P>, &SharedSession<P>) -> bool + Send + Sync>;

/// Called whenever the cache removes a session: explicit removal, expiry, eviction, a new-session
/// callback that said no, an unclean shutdown, a single-use take, and when the cache is dropped.
///
/// The [`Removal`] says why, so that an external cache shared by a fleet deletes a session
/// everywhere only when it must (an explicit removal or a take), and not when one instance
/// merely ran out of room or shut down.
pub type RemoveSessionCallback<P = InlineSecret> =
    Arc<dyn Fn(&SessionCache<P>, &SharedSession<P>, Removal) + Send + Sync>;

/// Why the cache removed a session, as the remove callback is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Removal {
    /// [`SessionCache::remove`] or [`SessionCache::remove_key`]: the application removed it,
    /// or a connection that used it ended without a clean shutdown.
    Explicit,
    /// A single-use take consumed it (TLS 1.3).
    Taken,
    /// It was found expired at lookup.
    Expired,
    /// [`SessionCache::flush`] or [`SessionCache::flush_all`] removed it.
    Flushed,
    /// It was evicted because the cache was full.
    Evicted,
    /// The new-session callback returned `false`.
    Declined,
    /// The cache is being dropped.
    Dropped,
}

/// Called on a server when a client proposes a session that the internal cache did not supply,
/// even when caching is off. Its result is validated like any other candidate.
pub type GetSessionCallback<P = InlineSecret> =
    Arc<dyn Fn(&SessionCache<P>, &SessionKey<'_>) -> Option<SharedSession<P>> + Send + Sync>;

/// Reprise's addition to the trio: an atomic get-and-delete, for single-use (TLS 1.3) sessions
/// across a fleet. Without it, a take falls back to the get callback followed by the remove
/// callback, which is not atomic. A take never consumes a TLS 1.2 session
/// ([`ProtocolVersion::is_reusable`](crate::ProtocolVersion::is_reusable)): one the callback
/// returns is refused, so the callback should leave such a session where it is.
pub type TakeSessionCallback<P = InlineSecret> = GetSessionCallback<P>;

/// Where the cache keeps one callback: behind an `ArcSwapOption`, so that setting it never
/// waits for an operation in flight, with a flag that spares the hot path the load when no
/// callback is set (most caches set few of the four; a load costs about 15 ns, a flag 1).
pub(crate) struct CallbackSlot<T> {
    set: AtomicBool,
    cb: ArcSwapOption<T>,
    /// Serialises stores, so that the flag always says what the last store left.
    writer: Mutex<()>,
}

impl<T> Default for CallbackSlot<T> {
    fn default() -> Self {
        Self::new(None)
    }
}

impl<T> CallbackSlot<T> {
    /// A slot holding `cb`, if any.
    pub(crate) fn new(cb: Option<T>) -> Self {
        Self {
            set: AtomicBool::new(cb.is_some()),
            cb: ArcSwapOption::from_pointee(cb),
            writer: Mutex::new(()),
        }
    }

    /// Sets or (with `None`) clears the callback.
    pub(crate) fn store(&self, cb: Option<Arc<T>>) {
        let _writer = self.writer.lock();
        let is_set = cb.is_some();
        self.cb.store(cb);
        self.set.store(is_set, Ordering::Release);
    }

    /// The callback, as a guard that holds no shared reference count.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Option<Arc<T>>> {
        if self.set.load(Ordering::Acquire) {
            self.cb.load()
        } else {
            Guard::from_inner(None)
        }
    }

    /// The callback, as an `Arc` of its own.
    #[inline]
    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        if self.set.load(Ordering::Acquire) {
            self.cb.load_full()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_loads_what_the_last_store_left() {
        let slot: CallbackSlot<u32> = CallbackSlot::default();
        assert!(slot.load().is_none());
        assert_eq!(slot.load_full(), None);
        slot.store(Some(Arc::new(7)));
        assert_eq!(slot.load().as_deref(), Some(&7));
        assert_eq!(slot.load_full().as_deref(), Some(&7));
        slot.store(None);
        assert!(slot.load().is_none());
        assert_eq!(CallbackSlot::new(Some(3)).load_full().as_deref(), Some(&3));
    }

    #[test]
    fn racing_stores_leave_the_flag_true_to_the_callback() {
        let slot: Arc<CallbackSlot<u32>> = Arc::default();
        for round in 0..50u32 {
            let threads: Vec<_> = (0..4u32)
                .map(|t| {
                    let slot = Arc::clone(&slot);
                    std::thread::spawn(move || {
                        for i in 0..100u32 {
                            let set = (i + t + round) % 2 == 0;
                            slot.store(set.then(|| Arc::new(i)));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join()
                    .unwrap_or_else(|_| panic!("a storing thread panicked"));
            }
            // Whatever store came last, the flag agrees with the callback it left.
            assert_eq!(
                slot.load().is_some(),
                slot.cb.load().is_some(),
                "round {round}"
            );
        }
    }
}
