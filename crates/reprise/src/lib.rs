//! Reprise: a TLS session cache with the semantics of OpenSSL's session cache.
//!
//! A [`SessionCache`] is what an `SSL_CTX` keeps for session resumption: a size limit held
//! exactly, per-session timeouts, the cache modes, the new, remove and get callbacks of an
//! external cache, add and remove, flushing, statistics and session-id contexts. It has no TLS
//! dependency; `reprise-rustls` plugs it into rustls, and the other Reprise crates give it a
//! distributed tier and a TLS terminator.
//!
//! Under its memory a cache can carry an ordered stack of external tiers: a disk that survives
//! restarts, a Redis a fleet shares, or your own. A tier is one trait, [`Tier`], attached with
//! [`SessionCache::attach`]; the [`tier`] module says how the stack reads, writes, takes and
//! removes, with an example to start from.
//!
//! The rules come from OpenSSL's manual pages; `docs/SEEDS.md` in the repository maps every
//! function they name to its item here, and `docs/ARCHITECTURE.md` shows how a session flows.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use reprise::{Role, SecretBytes, SessionCache, SessionKey};
//!
//! let removed = Arc::new(AtomicUsize::new(0));
//! let counter = removed.clone();
//! let cache: SessionCache = SessionCache::builder()
//!     .size_limit(1)
//!     .remove_session_callback(Arc::new(move |_cache, _session, _why| {
//!         counter.fetch_add(1, Ordering::Relaxed);
//!     }))
//!     .build();
//!
//! for id in [[1u8; 32], [2u8; 32]] {
//!     let s = cache.session(&id, SecretBytes::from(vec![0; 48])).build().unwrap();
//!     cache.new_session(Role::Server, s);
//! }
//! // The limit holds exactly one session: the first was evicted, with its remove callback.
//! assert_eq!(cache.len(), 1);
//! assert_eq!(cache.stats().cache_full, 1);
//! assert_eq!(removed.load(Ordering::Relaxed), 1);
//! assert!(cache.lookup(Role::Server, SessionKey::new(&[2; 32], b"")).is_some());
//! ```

mod cache;
mod callbacks;
mod clock;
mod error;
mod expiry;
mod index;
mod lookup;
mod mode;
mod queue;
mod session;
mod shard;
mod shim;
#[cfg(all(test, feature = "shuttle"))]
mod shuttle_tests;
mod stats;
mod thin;
pub mod tier;

pub use cache::{CacheBuilder, NewSession, SessionCache, AUTO_FLUSH_INTERVAL, DEFAULT_SIZE_LIMIT};
pub use callbacks::{
    GetSessionCallback, NewSessionCallback, Removal, RemoveSessionCallback, TakeSessionCallback,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ParseModeError, SessionError};
pub use mode::{CacheMode, Role};
pub use queue::{Ready, WriteQueue};
pub use session::{
    InlineSecret, ProtocolVersion, SecretBytes, Session, SessionBuilder, SessionId, SessionKey,
    SidCtx, Validity, DEFAULT_TIMEOUT_SECS, MAX_SESSION_ID_LEN, MAX_SID_CTX_LEN, MAX_TIMEOUT_SECS,
};
pub use stats::Stats;
pub use thin::Shared;

/// A cached session, as the cache, its callbacks and its tiers share it: [`Shared::ptr_eq`]
/// says whether two are the identical session object.
pub type SharedSession<P = InlineSecret> = Shared<Session<P>>;
pub use tier::{
    Fetched, Metric, MetricKind, Offer, Prefetched, Request, TicketTake, Tier, TierContext,
    TierFuture,
};
