//! The contract of an external tier: one trait that a disk store, a shared Redis, or any other
//! cache implements to sit under the internal cache, and the types the stack of tiers trades in.
//!
//! A [`SessionCache`] keeps its sessions in memory. Tiers attached to it
//! ([`SessionCache::attach`]) form an ordered stack under that memory, for example a disk that
//! survives restarts, then a Redis a fleet shares:
//!
//! - **writes go to every tier**: each new session is handed to [`Tier::store`];
//! - **reads go through the stack in order**: a lookup that memory cannot answer asks each
//!   tier's [`Tier::fetch`] in turn, validates what it finds with
//!   [`Session::validate`](crate::Session::validate), and copies a hit into memory and into the
//!   tiers before the one that had it;
//! - **a take is decided by the last tier**, the authority on single use (Redis in a fleet):
//!   only its [`Tier::take`] can hand a single-use session over, and every other copy, in memory
//!   or in another tier, is removed, with [`Removal::Taken`];
//! - **removals go to every tier**, with their [`Removal`], so that each decides what concerns
//!   it (a shared tier deletes a session only when it is removed explicitly or taken);
//! - **an optional async prefetch** ([`Tier::prefetch`]) lets a tier that talks to the network
//!   answer before the handshake, so that the TLS stack never waits on it
//!   ([`SessionCache::prefetch`]).
//!
//! The seeds' raw new, get, remove and take callbacks stay as they were, for OpenSSL parity; a
//! tier does not use them, and a cache may have both (the callbacks are asked first).
//!
//! ```
//! use std::sync::Arc;
//! use std::collections::HashMap;
//! use parking_lot::Mutex;
//! use reprise::{Fetched, Removal, Role, SecretBytes, SessionCache, SessionKey, SharedSession, Tier};
//!
//! /// A tier that keeps copies of sessions in a map, standing in for a real store (which would
//! /// seal and encode them).
//! #[derive(Default)]
//! struct MapTier(Mutex<HashMap<Vec<u8>, SharedSession>>);
//!
//! impl Tier for MapTier {
//!     fn name(&self) -> &str { "map" }
//!     fn store(&self, session: &SharedSession) {
//!         self.0.lock().insert(session.id().as_bytes().to_vec(), session.duplicate());
//!     }
//!     fn fetch(&self, key: SessionKey<'_>) -> Fetched {
//!         let found = self.0.lock().get(key.id).map(SharedSession::duplicate);
//!         found.map_or(Fetched::Miss, Fetched::Hit)
//!     }
//!     fn take(&self, key: SessionKey<'_>) -> Fetched {
//!         let found = self.0.lock().remove(key.id);
//!         found.map_or(Fetched::Miss, Fetched::Hit)
//!     }
//!     fn remove(&self, session: &SharedSession, why: Removal) {
//!         // Memory's evictions and flushes are memory's business.
//!         if matches!(why, Removal::Explicit | Removal::Taken | Removal::Expired) {
//!             self.0.lock().remove(session.id().as_bytes());
//!         }
//!     }
//! }
//!
//! let cache: Arc<SessionCache> = Arc::new(SessionCache::new());
//! cache.attach(Arc::new(MapTier::default()));
//! let s = cache.session(&[7; 32], SecretBytes::from(vec![0; 48])).build().unwrap();
//! assert!(cache.new_session(Role::Server, s).stored_in_tiers);
//! cache.flush_all(); // memory forgets it; the tier keeps its copy
//! assert!(cache.lookup(Role::Server, SessionKey::new(&[7; 32], b"")).is_some());
//! assert_eq!(cache.stats().cb_hits, 1);
//! ```

use core::future::Future;
use core::pin::Pin;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use crate::cache::SessionCache;
use crate::callbacks::Removal;
use crate::clock::Clock;
use crate::session::{InlineSecret, SessionKey};
use crate::SharedSession;

/// A future a tier returns from [`Tier::prefetch`].
pub type TierFuture<'a, P = InlineSecret> = Pin<Box<dyn Future<Output = Fetched<P>> + Send + 'a>>;

/// What a tier found for a key.
#[derive(Debug)]
pub enum Fetched<P = InlineSecret> {
    /// A session. The cache validates it ([`Session::validate`](crate::Session::validate))
    /// before it resumes.
    Hit(SharedSession<P>),
    /// The tier was asked and has nothing usable: no entry, or a value that did not decode.
    Miss,
    /// The tier could not answer: it is down, too slow, or refuses to block here. For a take,
    /// the session is then not resumed (its single use cannot be confirmed).
    Unavailable,
    /// The tier did not ask its store at all, and knows the answer is a miss (a key that missed
    /// a moment ago, say). Costs nothing, so a prefetch goes on to the next identity.
    Skipped,
}

impl<P> Fetched<P> {
    /// The session, if this is a hit.
    pub fn hit(self) -> Option<SharedSession<P>> {
        match self {
            Fetched::Hit(s) => Some(s),
            _ => None,
        }
    }
}

/// One read of a [`Tier::prefetch`]: the key, whether it is a take, and who asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The session's key.
    pub key: SessionKey<'a>,
    /// A take (a single-use TLS 1.3 ticket, removed atomically) rather than a read.
    pub take: bool,
    /// The client's address, for a tier that budgets the reads each client may cause.
    pub client: Option<IpAddr>,
}

/// How a tier is told about its cache when it is attached: the cache's clock, and a way to
/// forget a session that another instance removed.
pub struct TierContext<P = InlineSecret> {
    cache: Weak<SessionCache<P>>,
    clock: Arc<dyn Clock>,
    position: usize,
}

impl<P> Clone for TierContext<P> {
    fn clone(&self) -> Self {
        Self {
            cache: Weak::clone(&self.cache),
            clock: Arc::clone(&self.clock),
            position: self.position,
        }
    }
}

impl<P> core::fmt::Debug for TierContext<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TierContext")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<P: Send + Sync + 'static> TierContext<P> {
    pub(crate) fn new(cache: &Arc<SessionCache<P>>, position: usize) -> Self {
        Self {
            cache: Arc::downgrade(cache),
            clock: Arc::clone(cache.clock()),
            position,
        }
    }

    /// The cache's clock: a tier reads the time from it, never from the system directly, so
    /// that tests can move it by hand.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time by the cache's clock, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The cache, while it lives.
    pub fn cache(&self) -> Option<Arc<SessionCache<P>>> {
        self.cache.upgrade()
    }

    /// The tier's place in the stack: 0 for the first tier under memory.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether the tier is the last of the stack now, the authority on takes: the one the
    /// cache asks to take, where every other tier is told of a take with [`Removal::Taken`].
    /// A tier attached later changes the answer.
    pub fn is_last(&self) -> bool {
        self.cache
            .upgrade()
            .is_some_and(|cache| cache.tier_count() == self.position + 1)
    }

    /// Forgets the session under `key` in memory and in every tier above this one
    /// ([`Tier::forget`]), without a remove callback: for a removal this tier learned of from
    /// elsewhere (another instance of a fleet removed the session). Returns whether memory held
    /// it.
    pub fn forget(&self, key: SessionKey<'_>) -> bool {
        let Some(cache) = self.cache.upgrade() else {
            return false;
        };
        let held = cache.forget_key(key);
        for tier in cache.tiers().iter().take(self.position) {
            tier.forget(key);
        }
        held
    }
}

/// An external tier under a [`SessionCache`]: a store of sessions outside memory.
///
/// Implement it in a crate of its own, attach it with [`SessionCache::attach`], and the cache
/// does the rest: it writes every new session to the tier, reads from it in order, validates
/// what it returns, leaves take decisions to the last tier, and tells every tier of every
/// removal. See the module documentation for the rules of the stack.
///
/// Every method is called on the handshake path, outside the cache's locks. None may block
/// for long: a write should queue (and drop, and count, when the queue is full), and a read
/// that needs the network should answer [`Fetched::Unavailable`] here and do its work in
/// [`prefetch`](Tier::prefetch).
pub trait Tier<P = InlineSecret>: Send + Sync {
    /// A short name for the tier (`"disk"`, `"redis"`): in logs, in metric names
    /// (`reprise_<name>_…`: use lowercase letters, digits and `_`), and bound into what the
    /// tier seals, so that a value never moves between tiers.
    fn name(&self) -> &str;

    /// Called once when the tier is attached to a cache, before the cache makes any other call
    /// (a tier used before it is attached, directly, has no context yet).
    fn attach(&self, cx: TierContext<P>) {
        let _ = cx;
    }

    /// Stores a new session. Every tier gets every new session.
    ///
    /// Keep a copy (an encoding), not the `SharedSession`: memory marks its own object not
    /// resumable when it lets the session go (evicted, flushed, taken), and a tier that handed
    /// that very object back from [`fetch`](Tier::fetch) or [`take`](Tier::take) would see it
    /// refused.
    fn store(&self, session: &SharedSession<P>);

    /// Reads a reusable session (TLS 1.2), synchronously.
    fn fetch(&self, key: SessionKey<'_>) -> Fetched<P>;

    /// Takes a single-use session (a TLS 1.3 ticket): returns it and removes it, atomically,
    /// so that of any number of takes of one key, at most one gets it. Only the last tier of
    /// the stack is asked.
    fn take(&self, key: SessionKey<'_>) -> Fetched<P>;

    /// The cache removed `session`, for the reason `why`.
    fn remove(&self, session: &SharedSession<P>, why: Removal);

    /// Forgets the session under `key` without telling anyone: a tier below this one learned
    /// that it was removed elsewhere ([`TierContext::forget`]). By default, nothing.
    fn forget(&self, key: SessionKey<'_>) {
        let _ = key;
    }

    /// An asynchronous read or take, for a tier that talks to the network: `None` (the
    /// default) if the tier answers synchronously, through [`fetch`](Tier::fetch) and
    /// [`take`](Tier::take). See [`SessionCache::prefetch`].
    ///
    /// Do the work inside the future, not before returning it: the cache may drop it unpolled
    /// when a tier above answers first.
    fn prefetch<'a>(&'a self, request: Request<'a>) -> Option<TierFuture<'a, P>> {
        let _ = request;
        None
    }

    /// Whether the tier's circuit breaker is open now: it refuses to ask its store, and its
    /// reads answer [`Fetched::Unavailable`] at once. By default, never. Lets a server tell
    /// why a take could not be confirmed ([`TicketTake::CircuitOpen`]).
    fn circuit_open(&self) -> bool {
        false
    }

    /// The tier's counters and gauges, for a metrics endpoint. By default, none.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
}

/// What a ClientHello offers to resume, for [`SessionCache::prefetch`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Offer<'a> {
    /// The session-id context of the connection.
    pub sid_ctx: &'a [u8],
    /// The TLS 1.2 session id, if the handshake can be TLS 1.2 (a TLS 1.3 client's compatibility
    /// session id is not one to look up).
    pub session_id: Option<&'a [u8]>,
    /// The TLS 1.3 PSK identities (stateful ticket ids) to try, in the client's order, already
    /// cut to the number the server's policy allows.
    pub psk_identities: &'a [&'a [u8]],
    /// The client's address, for tiers that budget reads per client.
    pub client: Option<IpAddr>,
}

/// What [`SessionCache::prefetch`] got for one connection.
#[must_use = "a ticket taken by a prefetch resumes only when handed to the connection"]
#[derive(Debug)]
pub struct Prefetched<P = InlineSecret> {
    ticket: Option<SharedSession<P>>,
    session: bool,
    take: TicketTake,
}

impl<P> Default for Prefetched<P> {
    fn default() -> Self {
        Self {
            ticket: None,
            session: false,
            take: TicketTake::NotAsked,
        }
    }
}

impl<P> Prefetched<P> {
    pub(crate) fn ticket(ticket: SharedSession<P>) -> Self {
        Self {
            ticket: Some(ticket),
            session: false,
            take: TicketTake::Confirmed,
        }
    }

    pub(crate) fn session() -> Self {
        Self {
            ticket: None,
            session: true,
            take: TicketTake::NotAsked,
        }
    }

    pub(crate) fn with_take(mut self, take: TicketTake) -> Self {
        self.take = take;
        self
    }

    /// The single-use ticket the authoritative tier handed over for this connection, if any.
    /// It resumes only when handed to the connection
    /// ([`SessionCache::take_confirmed`], or `ConnectionSessions::confirm_take` in
    /// `reprise-rustls`); dropped, it is gone.
    pub fn into_ticket(self) -> Option<SharedSession<P>> {
        self.ticket
    }

    /// Whether the prefetch brought a reusable session into memory.
    pub fn found_session(&self) -> bool {
        self.session
    }

    /// What the authority said about the TLS 1.3 tickets offered: whether the single use of
    /// the one this connection resumes with is confirmed. A server accepts 0-RTT data only on
    /// a confirmed take ([`TicketTake::confirms`]).
    pub fn ticket_take(&self) -> TicketTake {
        self.take
    }
}

/// What the authoritative tier said, in a [`SessionCache::prefetch`], about the TLS 1.3
/// tickets a ClientHello offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TicketTake {
    /// No ticket to ask about (none offered, or no tier attached: memory takes it, atomically,
    /// during the handshake).
    #[default]
    NotAsked,
    /// The authority answers synchronously (a disk on one server): the handshake's own take
    /// asks it, atomically.
    Synchronous,
    /// The authority took the ticket for this connection, and only for it.
    Confirmed,
    /// The authority has no such ticket: never stored here, expired, or taken already (a
    /// replay).
    Missed,
    /// The authority could not answer: down, too slow, or the client's read budget is spent.
    Unavailable,
    /// The authority's circuit breaker is open: it was not asked.
    CircuitOpen,
}

impl TicketTake {
    /// Whether a take that succeeds for this connection is known to be its single use: taken
    /// by the shared authority for it ([`Confirmed`](Self::Confirmed)), or by a tier or memory
    /// that is the only copy there is ([`NotAsked`](Self::NotAsked),
    /// [`Synchronous`](Self::Synchronous)).
    pub fn confirms(self) -> bool {
        matches!(
            self,
            TicketTake::Confirmed | TicketTake::NotAsked | TicketTake::Synchronous
        )
    }
}

/// Whether a metric only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (a Prometheus counter).
    Counter,
    /// Goes up and down (a Prometheus gauge).
    Gauge,
}

/// One counter or gauge of a tier, with its name and help text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The name, without the tier's prefix (`stores_total`).
    pub name: &'static str,
    /// What it counts, in one line.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The current value.
    pub value: u64,
}

/// Declares a tier's counters once: a struct of atomics, a snapshot struct of plain values, and
/// the [`Metric`]s (names, help texts, values) of a snapshot.
///
/// ```
/// reprise::tier_counters! {
///     /// The counters of a tier.
///     pub struct Counters => Snapshot {
///         /// Sessions stored, in one
///         /// declaration.
///         stores: Counter = "stores_total",
///         /// Entries held now.
///         held: Gauge = "entries",
///     }
/// }
/// let c = Counters::default();
/// c.stores.fetch_add(2, core::sync::atomic::Ordering::Relaxed);
/// let snap = c.snapshot();
/// assert_eq!(snap.stores, 2);
/// assert_eq!(snap.metrics()[0].name, "stores_total");
/// assert_eq!(snap.metrics()[0].help, "Sessions stored, in one declaration.");
/// ```
#[macro_export]
macro_rules! tier_counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident => $snapshot:ident {
            $( $(#[doc = $help:literal])+ $field:ident : $kind:ident = $metric:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( $(#[doc = $help])+ pub $field: ::core::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("A snapshot of [`", stringify!($name), "`].")]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $snapshot {
            $( $(#[doc = $help])+ pub $field: u64, )*
        }

        impl $name {
            /// Adds one to a counter.
            #[inline]
            pub fn bump(counter: &::core::sync::atomic::AtomicU64) {
                counter.fetch_add(1, ::core::sync::atomic::Ordering::Relaxed);
            }

            /// Reads every counter.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(::core::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        impl $snapshot {
            /// Every value with its metric name and help text.
            pub fn metrics(&self) -> ::std::vec::Vec<$crate::Metric> {
                ::std::vec![
                    $( $crate::Metric {
                        name: $metric,
                        help: concat!($($help),+).trim_start(),
                        kind: $crate::MetricKind::$kind,
                        value: self.$field,
                    }, )*
                ]
            }
        }
    };
}
