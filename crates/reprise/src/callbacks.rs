//! The external-cache callbacks of `SSL_CTX_sess_set_new_cb` and friends, as Rust closures.
//!
//! Every callback gets the cache it belongs to as its first argument (as OpenSSL passes the
//! `SSL_CTX` or the `SSL`), so it can call back into it: the cache never holds a lock while a
//! callback runs. A callback must not own an `Arc` of its cache, or the cache is never dropped.

use std::sync::Arc;

use crate::cache::SessionCache;
use crate::session::{SecretBytes, Session, SessionKey};

/// Called for every new session while caching is enabled for its role.
///
/// Return `true` to keep the session (the callback may clone the `Arc` into an external
/// cache). Return `false` and the session is removed from the internal cache at once.
pub type NewSessionCallback<P = SecretBytes> =
    Arc<dyn Fn(&SessionCache<P>, &Arc<Session<P>>) -> bool + Send + Sync>;

/// Called whenever the cache removes a session: explicit removal, expiry, eviction, a new-session
/// callback that said no, an unclean shutdown, a single-use take, and when the cache is dropped.
///
/// The [`Removal`] says why, so that an external cache shared by a fleet deletes a session
/// everywhere only when it must (an explicit removal or a take), and not when one instance
/// merely ran out of room or shut down.
pub type RemoveSessionCallback<P = SecretBytes> =
    Arc<dyn Fn(&SessionCache<P>, &Arc<Session<P>>, Removal) + Send + Sync>;

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
pub type GetSessionCallback<P = SecretBytes> =
    Arc<dyn Fn(&SessionCache<P>, &SessionKey<'_>) -> Option<Arc<Session<P>>> + Send + Sync>;

/// Reprise's addition to the trio: an atomic get-and-delete, for single-use (TLS 1.3) sessions
/// across a fleet. Without it, a take falls back to the get callback followed by the remove
/// callback, which is not atomic. A take never consumes a TLS 1.2 session
/// ([`ProtocolVersion::is_reusable`](crate::ProtocolVersion::is_reusable)): one the callback
/// returns is refused, so the callback should leave such a session where it is.
pub type TakeSessionCallback<P = SecretBytes> = GetSessionCallback<P>;
