//! The session cache: shards for threads, the seeds' modes, limits, callbacks and statistics.
//!
//! Sessions are spread over shards by a hash of their id; each shard has its own lock, so
//! threads that touch different shards never wait for each other. The size limit is global and
//! exact: a slot is reserved in `len` before a session goes in, and released after it comes out,
//! so the number of entries never exceeds the limit. When the cache is full, the victim is the
//! session that expires soonest over all shards (ties: the oldest inserted), read from the
//! heads each shard publishes.
//!
//! No lock is held while a callback runs: every operation collects the sessions it removed and
//! fires the remove callback after unlocking. No operation waits for a lock while it holds one:
//! an add that must evict from another shard only tries that shard's lock, and otherwise
//! releases its own first.

use core::fmt;
use core::hash::BuildHasher;
use std::sync::Arc;

use crate::callbacks::{
    CallbackSlot, GetSessionCallback, NewSessionCallback, Removal, RemoveSessionCallback,
    TakeSessionCallback,
};
use crate::clock::{Clock, SystemClock};
use crate::mode::{CacheMode, Role};
use crate::session::{InlineSecret, Session, SessionBuilder, SessionKey, DEFAULT_TIMEOUT_SECS};
use crate::shard::{HeadKey, Shard, Share};
use crate::shim::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::shim::{thread, Mutex};
use crate::stats::{Counters, Stats};
use crate::tier::{Tier, TierContext};
use crate::SharedSession;

/// The default size limit, in sessions (OpenSSL's `SSL_SESSION_CACHE_MAX_SIZE_DEFAULT`).
pub const DEFAULT_SIZE_LIMIT: usize = 20480;

/// Completed handshakes of a role between two automatic flushes.
pub const AUTO_FLUSH_INTERVAL: u64 = 255;

/// The published head of a shard with no sessions: after every real head (whose `seq` comes from
/// a counter and never reaches `u64::MAX`).
const EMPTY_HEAD: HeadKey = (u64::MAX, u64::MAX);

/// Default shards per core. Two threads that want the same shard at once make one of them wait
/// (spin, yield, sleep), and a lookup holds its shard through its cache misses. On two cores,
/// `perf` put 12 % of the mixed benchmark's time in that waiting with four shards per core, and
/// under 5 % with sixteen.
const SHARDS_PER_CORE: usize = 16;

/// The fewest shards by default.
const DEFAULT_MIN_SHARDS: usize = 16;

/// The most shards by default: an add at capacity reads every shard's published head.
const DEFAULT_MAX_SHARDS: usize = 256;

/// How often an add evicts and retries before it gives up (only under extreme contention).
const MAX_ADD_ATTEMPTS: usize = 1024;

/// One shard and its lock, on cache lines of its own.
#[repr(align(128))]
struct ShardCell<P> {
    shard: Mutex<Shard<P>>,
}

/// A shard's head, published for the eviction scan, which reads every shard's. The heads sit
/// together in one array, four to a cache line, away from the shards' locks and counters that
/// lookups write: a scan of 32 shards reads 8 lines.
struct PublishedHead {
    expiry: AtomicU64,
    seq: AtomicU64,
}

impl PublishedHead {
    #[inline]
    fn empty() -> Self {
        Self {
            expiry: AtomicU64::new(EMPTY_HEAD.0),
            seq: AtomicU64::new(EMPTY_HEAD.1),
        }
    }

    #[inline]
    fn store(&self, (expiry, seq): HeadKey) {
        self.expiry.store(expiry, Ordering::Relaxed);
        self.seq.store(seq, Ordering::Release);
    }

    /// The published key; [`EMPTY_HEAD`] for an empty shard.
    #[inline]
    fn load(&self) -> HeadKey {
        let seq = self.seq.load(Ordering::Acquire);
        (self.expiry.load(Ordering::Relaxed), seq)
    }
}

/// The counters every add touches, on their own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Occupancy {
    /// Sessions in the cache plus slots reserved by adds in flight; never above the limit.
    len: AtomicUsize,
    /// Insertion order, for eviction ties.
    seq: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Callbacks<P> {
    pub(crate) new: CallbackSlot<NewSessionCallback<P>>,
    pub(crate) remove: CallbackSlot<RemoveSessionCallback<P>>,
    pub(crate) get: CallbackSlot<GetSessionCallback<P>>,
    pub(crate) take: CallbackSlot<TakeSessionCallback<P>>,
    /// The attached tiers, in order (see [`Tier`]).
    pub(crate) tiers: CallbackSlot<TierStack<P>>,
}

/// The tiers under a cache's memory, in order.
pub(crate) type TierStack<P> = Vec<Arc<dyn Tier<P>>>;

/// What an internal insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inserted {
    /// The session became a new entry.
    Added,
    /// It replaced another object with the same id.
    Replaced,
    /// The identical object was already there.
    Identical,
    /// Nothing changed: the cache is being dropped, or contention defeated every attempt.
    Refused,
}

/// Whether a lookup resumes a session or consumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    Resume,
    Take,
}

/// The result of [`SessionCache::new_session`].
#[derive(Debug)]
pub struct NewSession<P = InlineSecret> {
    /// The session, now shared.
    pub session: SharedSession<P>,
    /// Whether it is in the internal cache.
    pub stored_internally: bool,
    /// Whether the new-session callback kept it.
    pub kept_by_callback: bool,
    /// Whether it was handed to attached tiers ([`SessionCache::attach`]).
    pub stored_in_tiers: bool,
}

impl<P> NewSession<P> {
    /// Whether any cache holds the session, so that it can be resumed.
    pub fn is_stored(&self) -> bool {
        self.stored_internally || self.kept_by_callback || self.stored_in_tiers
    }
}

/// A TLS session cache for one security context: OpenSSL's `SSL_CTX` session cache in Rust.
///
/// It is `Send + Sync`; share it as `Arc<SessionCache>`. `P` is the payload type (encoded
/// session bytes by default).
///
/// ```
/// use std::sync::Arc;
/// use reprise::{CacheMode, ManualClock, Role, SecretBytes, SessionCache, SessionKey};
///
/// let clock = Arc::new(ManualClock::new(1_000));
/// let cache: SessionCache = SessionCache::builder()
///     .size_limit(2)
///     .timeout_secs(10)
///     .clock(clock.clone())
///     .build();
///
/// // A server completes a full handshake and hands its new session to the cache.
/// let s = cache.session(&[1; 32], SecretBytes::from(vec![0; 48])).sid_ctx(b"svc").build().unwrap();
/// assert!(cache.new_session(Role::Server, s).stored_internally);
///
/// // A client proposes that id: it resumes while the session lives, and not after.
/// let key = SessionKey::new(&[1; 32], b"svc");
/// assert!(cache.lookup(Role::Server, key).is_some());
/// clock.advance(11);
/// assert!(cache.lookup(Role::Server, key).is_none());
/// assert_eq!((cache.stats().hits, cache.stats().timeouts), (1, 1));
/// ```
pub struct SessionCache<P = InlineSecret> {
    shards: Box<[ShardCell<P>]>,
    /// Each shard's head, at the shard's index.
    heads: Box<[PublishedHead]>,
    shard_mask: usize,
    hasher: foldhash::fast::RandomState,
    occupancy: Occupancy,
    mode: AtomicU32,
    /// Shared with the shards, which read it to size their indices.
    size_limit: Arc<AtomicUsize>,
    timeout_secs: AtomicU64,
    clock: Arc<dyn Clock>,
    pub(crate) callbacks: Callbacks<P>,
    pub(crate) counters: Counters,
    closing: AtomicBool,
}

/// Builds a [`SessionCache`]; see [`SessionCache::builder`].
#[must_use]
pub struct CacheBuilder<P = InlineSecret> {
    mode: CacheMode,
    size_limit: usize,
    timeout_secs: u64,
    clock: Arc<dyn Clock>,
    shards: Option<usize>,
    new: Option<NewSessionCallback<P>>,
    remove: Option<RemoveSessionCallback<P>>,
    get: Option<GetSessionCallback<P>>,
    take: Option<TakeSessionCallback<P>>,
}

impl<P: Send + Sync + 'static> Default for CacheBuilder<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Send + Sync + 'static> CacheBuilder<P> {
    /// Starts building a cache of sessions with payload `P`; for the default payload,
    /// [`SessionCache::builder`] says the same with less.
    ///
    /// ```
    /// use reprise::{CacheBuilder, SessionCache};
    /// let cache: SessionCache<u64> = CacheBuilder::new().size_limit(10).build();
    /// assert_eq!(cache.size_limit(), 10);
    /// ```
    pub fn new() -> Self {
        CacheBuilder {
            mode: CacheMode::default(),
            size_limit: DEFAULT_SIZE_LIMIT,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            clock: Arc::new(SystemClock),
            shards: None,
            new: None,
            remove: None,
            get: None,
            take: None,
        }
    }

    /// Sets the mode (default [`CacheMode::SERVER`]).
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the size limit in sessions; 0 means unlimited (default 20480).
    pub fn size_limit(mut self, limit: usize) -> Self {
        self.size_limit = limit;
        self
    }

    /// Sets the timeout given to new sessions, in seconds (default 300).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Sets the clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the number of shards, rounded up to a power of two (default: sixteen per core, 16 to
    /// 256).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Sets the new-session callback.
    pub fn new_session_callback(mut self, cb: NewSessionCallback<P>) -> Self {
        self.new = Some(cb);
        self
    }

    /// Sets the remove-session callback.
    pub fn remove_session_callback(mut self, cb: RemoveSessionCallback<P>) -> Self {
        self.remove = Some(cb);
        self
    }

    /// Sets the get-session callback.
    pub fn get_session_callback(mut self, cb: GetSessionCallback<P>) -> Self {
        self.get = Some(cb);
        self
    }

    /// Sets the take-session callback.
    pub fn take_session_callback(mut self, cb: TakeSessionCallback<P>) -> Self {
        self.take = Some(cb);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> SessionCache<P> {
        let shards = self
            .shards
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(DEFAULT_MIN_SHARDS, |n| {
                        n.get().saturating_mul(SHARDS_PER_CORE)
                    })
                    .clamp(DEFAULT_MIN_SHARDS, DEFAULT_MAX_SHARDS)
            })
            .clamp(1, 1 << 16)
            .next_power_of_two();
        let hasher = foldhash::fast::RandomState::default();
        let size_limit = Arc::new(AtomicUsize::new(self.size_limit));
        SessionCache {
            shards: (0..shards)
                .map(|_| ShardCell {
                    shard: Mutex::new(Shard::new(
                        hasher.clone(),
                        Share::new(Arc::clone(&size_limit), shards),
                    )),
                })
                .collect(),
            heads: (0..shards).map(|_| PublishedHead::empty()).collect(),
            shard_mask: shards - 1,
            hasher,
            occupancy: Occupancy::default(),
            mode: AtomicU32::new(self.mode.bits()),
            size_limit,
            timeout_secs: AtomicU64::new(self.timeout_secs),
            clock: self.clock,
            callbacks: Callbacks {
                new: CallbackSlot::new(self.new),
                remove: CallbackSlot::new(self.remove),
                get: CallbackSlot::new(self.get),
                take: CallbackSlot::new(self.take),
                tiers: CallbackSlot::default(),
            },
            counters: Counters::default(),
            closing: AtomicBool::new(false),
        }
    }
}

impl<P: Send + Sync + 'static> Default for SessionCache<P> {
    fn default() -> Self {
        CacheBuilder::new().build()
    }
}

impl SessionCache {
    /// Starts building a cache of the default payload ([`InlineSecret`]: the bytes in the session's
    /// allocation); for another payload,
    /// [`CacheBuilder::new`].
    ///
    /// The payload is fixed here, so the types of a callback's parameters are inferred:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use reprise::SessionCache;
    /// let cache = SessionCache::builder()
    ///     .new_session_callback(Arc::new(|_cache, session| session.id().as_bytes().len() == 32))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }
}

impl<P: Send + Sync + 'static> SessionCache<P> {
    /// A cache with the defaults: mode SERVER, 20480 sessions, 300 s, the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    // ----- tiers ----------------------------------------------------------------------------

    /// Attaches a tier under the ones already attached: memory first, then the tiers in the
    /// order they were attached; the last one decides takes. See [`Tier`].
    ///
    /// Attach tiers before the cache goes into service: a session stored before a tier is
    /// attached is not in that tier.
    pub fn attach(self: &Arc<Self>, tier: Arc<dyn Tier<P>>) {
        let mut stack: TierStack<P> = self.tiers();
        tier.attach(TierContext::new(self, stack.len()));
        stack.push(tier);
        self.callbacks.tiers.store(Some(Arc::new(stack)));
    }

    /// The attached tiers, in order.
    pub fn tiers(&self) -> TierStack<P> {
        self.callbacks
            .tiers
            .load_full()
            .map(|stack| stack.as_ref().clone())
            .unwrap_or_default()
    }

    /// How many tiers are attached.
    pub fn tier_count(&self) -> usize {
        self.callbacks
            .tiers
            .load()
            .as_ref()
            .map_or(0, |stack| stack.len())
    }

    /// Whether any tier is attached.
    pub fn has_tiers(&self) -> bool {
        self.callbacks.tiers.load().is_some()
    }

    // ----- settings -------------------------------------------------------------------------

    /// The current mode (`SSL_CTX_get_session_cache_mode`).
    pub fn mode(&self) -> CacheMode {
        CacheMode::from_bits_truncate(self.mode.load(Ordering::Relaxed))
    }

    /// Sets the mode and returns the previous one (`SSL_CTX_set_session_cache_mode`).
    pub fn set_mode(&self, mode: CacheMode) -> CacheMode {
        CacheMode::from_bits_truncate(self.mode.swap(mode.bits(), Ordering::Relaxed))
    }

    /// The size limit; 0 means unlimited (`SSL_CTX_sess_get_cache_size`).
    pub fn size_limit(&self) -> usize {
        self.size_limit.load(Ordering::Relaxed)
    }

    /// Sets the size limit and returns the previous one (`SSL_CTX_sess_set_cache_size`).
    ///
    /// Shrinking evicts nothing at once: the sessions over the limit go at the next add.
    pub fn set_size_limit(&self, limit: usize) -> usize {
        self.size_limit.swap(limit, Ordering::Relaxed)
    }

    /// The timeout given to new sessions, in seconds (`SSL_CTX_get_timeout`).
    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.load(Ordering::Relaxed)
    }

    /// Sets the timeout for sessions made from now on; returns the previous one
    /// (`SSL_CTX_set_timeout`). Sessions already made keep theirs.
    pub fn set_timeout_secs(&self, secs: u64) -> u64 {
        self.timeout_secs.swap(secs, Ordering::Relaxed)
    }

    /// The cache's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time by the cache's clock, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Starts building a session with the cache's current time and timeout.
    ///
    /// The payload may be of another type than the cache's, as long as the session converts
    /// into the cache's [`SharedSession`]: for the default cache, a `&[u8]` or a
    /// [`SecretBytes`](crate::SecretBytes), whose bytes move into the session's allocation.
    pub fn session<'a, Q>(&self, id: &'a [u8], payload: Q) -> SessionBuilder<'a, Q> {
        Session::builder(id, payload)
            .time(self.now())
            .timeout_secs(self.timeout_secs())
    }

    // ----- callbacks ------------------------------------------------------------------------

    /// Sets (or with `None` clears) the new-session callback (`SSL_CTX_sess_set_new_cb`).
    pub fn set_new_session_callback(&self, cb: Option<NewSessionCallback<P>>) {
        self.callbacks.new.store(cb.map(Arc::new));
    }

    /// The new-session callback, if set (`SSL_CTX_sess_get_new_cb`).
    pub fn new_session_callback(&self) -> Option<NewSessionCallback<P>> {
        self.callbacks.new.load_full().map(|cb| Arc::clone(&*cb))
    }

    /// Sets (or clears) the remove-session callback (`SSL_CTX_sess_set_remove_cb`).
    pub fn set_remove_session_callback(&self, cb: Option<RemoveSessionCallback<P>>) {
        self.callbacks.remove.store(cb.map(Arc::new));
    }

    /// The remove-session callback, if set (`SSL_CTX_sess_get_remove_cb`).
    pub fn remove_session_callback(&self) -> Option<RemoveSessionCallback<P>> {
        self.callbacks.remove.load_full().map(|cb| Arc::clone(&*cb))
    }

    /// Sets (or clears) the get-session callback (`SSL_CTX_sess_set_get_cb`).
    pub fn set_get_session_callback(&self, cb: Option<GetSessionCallback<P>>) {
        self.callbacks.get.store(cb.map(Arc::new));
    }

    /// The get-session callback, if set (`SSL_CTX_sess_get_get_cb`).
    pub fn get_session_callback(&self) -> Option<GetSessionCallback<P>> {
        self.callbacks.get.load_full().map(|cb| Arc::clone(&*cb))
    }

    /// Sets (or clears) the take-session callback: an atomic get-and-delete in the external
    /// cache, used by [`take`](Self::take) instead of get followed by remove.
    pub fn set_take_session_callback(&self, cb: Option<TakeSessionCallback<P>>) {
        self.callbacks.take.store(cb.map(Arc::new));
    }

    /// The take-session callback, if set.
    pub fn take_session_callback(&self) -> Option<TakeSessionCallback<P>> {
        self.callbacks.take.load_full().map(|cb| Arc::clone(&*cb))
    }

    // ----- add and remove -------------------------------------------------------------------

    /// Adds a session to the internal cache (`SSL_CTX_add_session`).
    ///
    /// Returns `true` if it became a new entry, replacing (silently) any other object with the
    /// same id. Returns `false` if this identical object is already cached: nothing changes
    /// then, except its time under [`CacheMode::UPDATE_TIME`]. When the cache is full, the
    /// session that expires soonest is evicted first (remove callback, `cache_full`).
    pub fn add(&self, session: &SharedSession<P>) -> bool {
        let mut removed = Evicted::default();
        let outcome = self.insert(session, &mut removed);
        self.fire_removed(removed, Removal::Evicted);
        matches!(outcome, Inserted::Added | Inserted::Replaced)
    }

    /// Removes the session with this session's id and marks `session` not resumable
    /// (`SSL_CTX_remove_session`).
    ///
    /// The remove callback is called for `session` whether or not an entry was removed.
    /// Returns whether one was.
    pub fn remove(&self, session: &SharedSession<P>) -> bool {
        let id = session.id().as_bytes();
        let hash = self.hash(id);
        let removed = self.with_shard(hash, |shard| {
            let (idx, _) = shard.find(hash, id)?;
            shard.remove_at(hash, idx)
        });
        let found = removed.is_some();
        if removed.is_some() {
            self.release_slot();
        }
        session.mark_not_resumable();
        self.fire_remove(session, Removal::Explicit);
        found
    }

    /// Removes the session cached under this key, if its context matches, with the remove
    /// callback. An ill-formed key (an empty id, for one) removes nothing and calls nothing.
    pub fn remove_key(&self, key: SessionKey<'_>) -> bool {
        match self.unlink_key(key) {
            Some(old) => {
                self.fire_remove(&old, Removal::Explicit);
                true
            }
            None => false,
        }
    }

    /// Drops the session cached under this key without calling the remove callback: for a
    /// removal that the external cache already knows of (another instance removed it).
    pub fn forget_key(&self, key: SessionKey<'_>) -> bool {
        self.unlink_key(key).is_some()
    }

    /// Takes the session cached under this key out of the cache, if its context matches.
    pub(crate) fn unlink_key(&self, key: SessionKey<'_>) -> Option<SharedSession<P>> {
        if !key.is_well_formed() {
            return None;
        }
        let hash = self.hash(key.id);
        let old = self.with_shard(hash, |shard| {
            let (idx, found) = shard.find(hash, key.id)?;
            if found.sid_ctx().as_bytes() != key.sid_ctx {
                return None;
            }
            shard.remove_at(hash, idx)
        })?;
        self.release_slot();
        Some(old)
    }

    // ----- the handshake path ---------------------------------------------------------------

    /// Hands a newly negotiated session to the cache, as a TLS stack does after a full
    /// handshake (TLS 1.2) or for each ticket it issues (TLS 1.3).
    ///
    /// If caching is enabled for `role`, the session is stored internally (unless
    /// `NO_INTERNAL_STORE`) and the new-session callback is called; if that returns `false`,
    /// the session is removed from the internal cache at once. With caching off for the role,
    /// nothing is stored and no callback runs.
    pub fn new_session(&self, role: Role, session: impl Into<SharedSession<P>>) -> NewSession<P> {
        let session = session.into();
        let mode = self.mode();
        if !mode.contains(role.mode_bit()) {
            return NewSession {
                session,
                stored_internally: false,
                kept_by_callback: false,
                stored_in_tiers: false,
            };
        }
        let mut stored_internally = false;
        if !mode.contains(CacheMode::NO_INTERNAL_STORE) {
            let mut removed = Evicted::default();
            let outcome = self.insert(&session, &mut removed);
            self.fire_removed(removed, Removal::Evicted);
            stored_internally = outcome != Inserted::Refused;
        }
        let mut kept_by_callback = false;
        // A guard, not a clone: no shared reference count to bounce between threads.
        let new_cb = self.callbacks.new.load();
        if let Some(cb) = new_cb.as_ref() {
            kept_by_callback = cb(self, &session);
            if !kept_by_callback && stored_internally {
                self.remove_exact(&session);
                stored_internally = false;
            }
            // The callback may have removed the session itself, or replaced it.
            stored_internally = stored_internally && self.holds(&session);
        }
        let declined = new_cb.is_some() && !kept_by_callback;
        drop(new_cb);
        let mut stored_in_tiers = false;
        // A session the new-session callback declined goes nowhere else either.
        if !declined {
            if let Some(tiers) = self.callbacks.tiers.load().as_ref() {
                for tier in tiers.iter() {
                    tier.store(&session);
                }
                stored_in_tiers = !tiers.is_empty();
            }
        }
        NewSession {
            session,
            stored_internally,
            kept_by_callback,
            stored_in_tiers,
        }
    }

    /// Looks up a session a peer proposed to resume.
    ///
    /// For a server: the internal cache first (unless `NO_INTERNAL_LOOKUP`), then the get
    /// callback, whatever the mode. A session found internally is final: if it belongs to
    /// another context, is not resumable or has expired (then it is removed and counted in
    /// `timeouts`), the result is `None` and the get callback is not asked. A session from the
    /// get callback is validated the same way and, unless `NO_INTERNAL_STORE`, copied into the
    /// internal cache. For a client: the internal cache only.
    ///
    /// An ill-formed key is a miss, and no store is asked.
    pub fn lookup(&self, role: Role, key: SessionKey<'_>) -> Option<SharedSession<P>> {
        self.find(role, key, Use::Resume)
    }

    /// Like [`lookup`](Self::lookup), but the session is consumed: removed from the internal
    /// cache (remove callback) or taken from the external one, and marked not resumable, so it
    /// resumes at most once. This is how TLS 1.3 tickets are used. A TLS 1.2 session
    /// ([`ProtocolVersion::is_reusable`](crate::ProtocolVersion::is_reusable)) is never
    /// consumed: a take of its id is `None` and leaves it cached.
    pub fn take(&self, role: Role, key: SessionKey<'_>) -> Option<SharedSession<P>> {
        self.find(role, key, Use::Take)
    }

    /// Takes a session that the external cache already handed over, atomically and for this
    /// connection only (a `GETDEL` done before the handshake, say), as [`take`](Self::take)
    /// would through a take callback: the session must match `key` (id and context), be
    /// resumable, unexpired and not a TLS 1.2 session, and is claimed (marked not resumable)
    /// so that it resumes at most once. A copy in the internal cache is dropped either way
    /// (remove callback, [`Removal::Taken`]): the external cache is the authority on a take.
    ///
    /// The take callback is not asked, and no internal copy can stand in for `confirmed`.
    pub fn take_confirmed(
        &self,
        key: SessionKey<'_>,
        confirmed: SharedSession<P>,
    ) -> Option<SharedSession<P>> {
        if !key.is_well_formed() {
            Counters::bump(&self.counters.rejected_keys);
            return None;
        }
        self.claim_confirmed(key, self.now(), confirmed)
    }

    /// The session cached under this id, with no validation, statistics or side effect.
    pub fn peek(&self, id: &[u8]) -> Option<SharedSession<P>> {
        if SessionKey::new(id, &[]).is_well_formed() {
            let hash = self.hash(id);
            let shard = self.shards[self.shard_index(hash)].shard.lock();
            shard.find(hash, id).map(|(_, s)| SharedSession::clone(s))
        } else {
            None
        }
    }

    /// Counts a handshake that started (`accept` or `connect`).
    pub fn handshake_started(&self, role: Role) {
        Counters::bump(match role {
            Role::Server => &self.counters.accept,
            Role::Client => &self.counters.connect,
        });
    }

    /// Counts a handshake that completed (`accept_good` or `connect_good`). Every 255th of a
    /// role, expired sessions are flushed, unless `NO_AUTO_CLEAR` or caching is off for it.
    pub fn handshake_completed(&self, role: Role) {
        let n = Counters::bump(match role {
            Role::Server => &self.counters.accept_good,
            Role::Client => &self.counters.connect_good,
        });
        let mode = self.mode();
        if n % AUTO_FLUSH_INTERVAL == 0
            && mode.contains(role.mode_bit())
            && !mode.contains(CacheMode::NO_AUTO_CLEAR)
        {
            self.flush(self.now());
        }
    }

    // ----- flushing -------------------------------------------------------------------------

    /// Removes every session that is expired at `t` (`t > time + timeout`), with the remove
    /// callback for each (`SSL_CTX_flush_sessions`). Returns how many were removed.
    ///
    /// The cost grows with the number removed, not with the size of the cache.
    pub fn flush(&self, t: u64) -> usize {
        self.drain_shards(Removal::Flushed, |shard, out| shard.pop_expired(t, out))
    }

    /// Removes every session, with the remove callback for each. Returns how many.
    pub fn flush_all(&self) -> usize {
        self.drain_shards(Removal::Flushed, |shard, out| shard.drain(out))
    }

    // ----- observation ----------------------------------------------------------------------

    /// The number of sessions in the internal cache (`SSL_CTX_sess_number`).
    pub fn len(&self) -> usize {
        self.occupancy.len.load(Ordering::Acquire)
    }

    /// Whether the internal cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            number: self.len() as u64,
            accept: Counters::read(&self.counters.accept),
            accept_good: Counters::read(&self.counters.accept_good),
            connect: Counters::read(&self.counters.connect),
            connect_good: Counters::read(&self.counters.connect_good),
            hits: Counters::read(&self.counters.external_hits),
            misses: Counters::read(&self.counters.rejected_misses),
            cb_hits: Counters::read(&self.counters.cb_hits),
            timeouts: Counters::read(&self.counters.external_timeouts),
            cache_full: 0,
            rejected_keys: Counters::read(&self.counters.rejected_keys),
        };
        for cell in self.shards.iter() {
            let c = cell.shard.lock().counters;
            stats.hits += c.hits;
            stats.misses += c.misses;
            stats.timeouts += c.timeouts;
            stats.cache_full += c.cache_full;
        }
        stats
    }

    /// Every cached session, in no particular order. Takes each shard's lock in
    /// turn: for inspection and tests, not for the handshake path.
    pub fn sessions(&self) -> Vec<SharedSession<P>> {
        let mut all = Vec::with_capacity(self.len());
        for cell in self.shards.iter() {
            all.extend(cell.shard.lock().iter().cloned());
        }
        all
    }

    // ----- internals ------------------------------------------------------------------------

    pub(crate) fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn shard_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.shard_mask
    }

    /// Runs `f` on the shard for `hash` under its lock, and publishes its head afterwards.
    pub(crate) fn with_shard<R>(&self, hash: u64, f: impl FnOnce(&mut Shard<P>) -> R) -> R {
        let index = self.shard_index(hash);
        let mut shard = self.shards[index].shard.lock();
        let r = f(&mut shard);
        self.publish_if_moved(index, &mut shard);
        r
    }

    /// Publishes shard `index`'s head if it moved; called before the shard's lock is released.
    /// An operation that leaves the head alone (a lookup, an insert at the tail) writes nothing,
    /// and pays one test of a flag: inlined into every locked operation.
    #[inline(always)]
    fn publish_if_moved(&self, index: usize, shard: &mut Shard<P>) {
        if std::mem::take(&mut shard.head_moved) {
            self.publish(index, shard);
        }
    }

    /// Publishes shard `index`'s head.
    fn publish(&self, index: usize, shard: &Shard<P>) {
        self.heads[index].store(shard.head_key().unwrap_or(EMPTY_HEAD));
    }

    /// The shard whose published head expires soonest (ties: the oldest inserted), and that
    /// head's key; `None` when every shard is empty.
    ///
    /// The key is the victim: whoever evicts checks, under the shard's lock, that it is still
    /// the head. Another head may have taken its place since the scan (its session was taken,
    /// removed or evicted by another add), and the shard's next session is not the soonest
    /// anywhere; another scan finds the one that is.
    fn soonest_shard(&self) -> Option<(usize, HeadKey)> {
        let mut best = EMPTY_HEAD;
        let mut index = None;
        for (i, head) in self.heads.iter().enumerate() {
            let key = head.load();
            if key < best {
                best = key;
                index = Some(i);
            }
        }
        index.map(|i| (i, best))
    }

    fn next_seq(&self) -> u64 {
        self.occupancy.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves room for one more session; fails when the cache is full.
    fn try_reserve(&self) -> bool {
        let limit = self.size_limit();
        if limit == 0 {
            self.occupancy.len.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.occupancy
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < limit).then_some(len + 1)
            })
            .is_ok()
    }

    /// Whether the cache holds more than its limit (which can shrink under it).
    fn over_limit(&self) -> bool {
        let limit = self.size_limit();
        limit != 0 && self.len() > limit
    }

    /// Gives back the room of a session that has left its shard.
    pub(crate) fn release_slot(&self) {
        self.occupancy.len.fetch_sub(1, Ordering::AcqRel);
    }

    fn release_slots(&self, n: usize) {
        if n > 0 {
            self.occupancy.len.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Inserts into the internal cache, evicting as needed; evicted sessions go to `removed`.
    fn insert(&self, session: &SharedSession<P>, removed: &mut Evicted<P>) -> Inserted {
        if self.closing.load(Ordering::Acquire) {
            return Inserted::Refused;
        }
        if self.mode().contains(CacheMode::UPDATE_TIME) {
            session.set_time(self.now());
        }
        let id = session.id().as_bytes();
        let hash = self.hash(id);
        let index = self.shard_index(hash);
        for _ in 0..MAX_ADD_ATTEMPTS {
            {
                let mut shard = self.shards[index].shard.lock();
                let expiry = session.expires_at();
                if let Some((idx, found)) = shard.find(hash, id) {
                    let identical = SharedSession::ptr_eq(found, session);
                    if identical && shard.expiry(idx) == expiry {
                        return Inserted::Identical;
                    }
                    // The identical object is refiled because UPDATE_TIME moved its expiry;
                    // another object with this id replaces the old one silently, once the
                    // cache is back within a limit that shrank.
                    if identical || !self.over_limit() {
                        drop(shard.replace(
                            idx,
                            SharedSession::clone(session),
                            expiry,
                            self.next_seq(),
                        ));
                        self.publish_if_moved(index, &mut shard);
                        return if identical {
                            Inserted::Identical
                        } else {
                            Inserted::Replaced
                        };
                    }
                } else if self.try_reserve() {
                    shard.insert(hash, SharedSession::clone(session), expiry, self.next_seq());
                    self.publish_if_moved(index, &mut shard);
                    return Inserted::Added;
                } else if let Some(victim) = self.evict_holding(&mut shard, index) {
                    // Full, and the victim was at hand (this shard, or one free to lock): one
                    // pass, no second lookup. The victim's room passes to this session (no
                    // write to the shared count), unless the limit shrank below the count.
                    removed.push(victim);
                    let room = if self.over_limit() {
                        self.release_slot();
                        self.try_reserve()
                    } else {
                        true
                    };
                    if room {
                        shard.insert(hash, SharedSession::clone(session), expiry, self.next_seq());
                        self.publish_if_moved(index, &mut shard);
                        return Inserted::Added;
                    }
                }
            }
            // Full: evict the session that expires soonest, anywhere, and try again.
            match self.evict_one() {
                Some(victim) => removed.push(victim),
                None => thread::yield_now(),
            }
        }
        Inserted::Refused
    }

    /// Like [`evict_one`](Self::evict_one), while holding the lock of shard `own`: the victim
    /// comes from it, or from another shard whose lock is free right now (never waited for, so
    /// no two locks are ever waited on together). `None` if the victim's shard is busy. The
    /// victim's room stays reserved, for the caller to use or release.
    fn evict_holding(&self, own: &mut Shard<P>, own_index: usize) -> Option<SharedSession<P>> {
        // The own shard's head as it is under this lock, then one scan of the published heads
        // (which spares a cache miss on the head's slot when the victim is elsewhere, most of
        // the time with many shards).
        self.publish_if_moved(own_index, own);
        let (index, key) = self.soonest_shard()?;
        let victim = if index == own_index {
            // Under this lock, the own shard's published head is its head.
            let victim = own.pop_head()?;
            own.counters.cache_full += 1;
            self.publish_if_moved(index, own);
            victim
        } else {
            let mut other = self.shards[index].shard.try_lock()?;
            if other.head_key() != Some(key) {
                return None;
            }
            let victim = other.pop_head()?;
            other.counters.cache_full += 1;
            self.publish_if_moved(index, &mut other);
            victim
        };
        Some(victim)
    }

    /// Evicts the session that expires soonest over all shards (ties: the oldest inserted).
    fn evict_one(&self) -> Option<SharedSession<P>> {
        for _ in 0..self.shards.len() + 1 {
            let (index, key) = self.soonest_shard()?;
            let victim = {
                let mut shard = self.shards[index].shard.lock();
                let victim = if shard.head_key() == Some(key) {
                    shard.pop_head()
                } else {
                    None
                };
                if victim.is_some() {
                    shard.counters.cache_full += 1;
                }
                self.publish_if_moved(index, &mut shard);
                victim
            };
            if let Some(victim) = victim {
                self.release_slot();
                return Some(victim);
            }
            // The head moved since the scan (another session is the soonest now): look again.
        }
        None
    }

    /// Removes exactly this object, if it is still cached, with the remove callback.
    fn remove_exact(&self, session: &SharedSession<P>) {
        let id = session.id().as_bytes();
        let hash = self.hash(id);
        let removed = self.with_shard(hash, |shard| {
            let (idx, found) = shard.find(hash, id)?;
            if SharedSession::ptr_eq(found, session) {
                shard.remove_at(hash, idx)
            } else {
                None
            }
        });
        if let Some(old) = removed {
            self.release_slot();
            self.fire_remove(&old, Removal::Declined);
        }
    }

    /// Removes sessions from every shard with `pick`, then fires the callbacks.
    fn drain_shards(
        &self,
        cause: Removal,
        pick: impl Fn(&mut Shard<P>, &mut Vec<SharedSession<P>>),
    ) -> usize {
        let mut total = 0;
        let mut out = Vec::new();
        for (index, cell) in self.shards.iter().enumerate() {
            {
                let mut shard = cell.shard.lock();
                pick(&mut shard, &mut out);
                self.publish_if_moved(index, &mut shard);
            }
            self.release_slots(out.len());
            total += out.len();
            self.fire_removed(core::mem::take(&mut out), cause);
        }
        total
    }

    pub(crate) fn fire_remove(&self, session: &SharedSession<P>, cause: Removal) {
        if let Some(cb) = self.callbacks.remove.load().as_ref() {
            cb(self, session, cause);
        }
        if let Some(tiers) = self.callbacks.tiers.load().as_ref() {
            for tier in tiers.iter() {
                tier.remove(session, cause);
            }
        }
    }

    /// Whether the internal cache holds this very session.
    fn holds(&self, session: &SharedSession<P>) -> bool {
        self.peek(session.id().as_bytes())
            .is_some_and(|s| SharedSession::ptr_eq(&s, session))
    }

    fn fire_removed(&self, removed: impl IntoIterator<Item = SharedSession<P>>, cause: Removal) {
        let mut removed = removed.into_iter().peekable();
        if removed.peek().is_none() {
            return;
        }
        let cb = self.callbacks.remove.load();
        let tiers = self.callbacks.tiers.load();
        if cb.is_none() && tiers.is_none() {
            return;
        }
        for s in removed {
            if let Some(cb) = cb.as_ref() {
                cb(self, &s, cause);
            }
            if let Some(tiers) = tiers.as_ref() {
                for tier in tiers.iter() {
                    tier.remove(&s, cause);
                }
            }
        }
    }

    /// The index of the shard that holds (or would hold) the session with this id; for tests
    /// that place sessions on chosen shards.
    #[cfg(all(test, feature = "shuttle"))]
    pub(crate) fn shard_of(&self, id: &[u8]) -> usize {
        self.shard_index(self.hash(id))
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut n = 0;
        for (cell, head) in self.shards.iter().zip(self.heads.iter()) {
            let shard = cell.shard.lock();
            shard.check();
            assert_eq!(head.load(), shard.head_key().unwrap_or(EMPTY_HEAD));
            n += shard.len();
        }
        assert_eq!(n, self.len());
    }
}

/// The sessions one add evicted: none or one but for races with other adds, so the first is
/// kept inline and only a second one allocates.
struct Evicted<P> {
    first: Option<SharedSession<P>>,
    rest: Vec<SharedSession<P>>,
}

impl<P> Default for Evicted<P> {
    fn default() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<P> Evicted<P> {
    fn push(&mut self, session: SharedSession<P>) {
        if self.first.is_none() {
            self.first = Some(session);
        } else {
            self.rest.push(session);
        }
    }
}

impl<P> IntoIterator for Evicted<P> {
    type Item = SharedSession<P>;
    type IntoIter = core::iter::Chain<
        core::option::IntoIter<SharedSession<P>>,
        std::vec::IntoIter<SharedSession<P>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl<P> Drop for SessionCache<P> {
    /// Removes every session, with the remove callback for each (as `SSL_CTX_free` does).
    /// Callbacks may still call into the cache; adds are refused from here on.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let remove = self.callbacks.remove.load_full();
        let tiers = self.callbacks.tiers.load_full();
        let mut out = Vec::new();
        for (cell, head) in self.shards.iter().zip(self.heads.iter()) {
            cell.shard.lock().drain(&mut out);
            head.store(EMPTY_HEAD);
        }
        self.occupancy.len.store(0, Ordering::Release);
        if let Some(cb) = &remove {
            for s in &out {
                cb(self, s, Removal::Dropped);
            }
        }
        if let Some(tiers) = &tiers {
            for s in &out {
                for tier in tiers.iter() {
                    tier.remove(s, Removal::Dropped);
                }
            }
        }
    }
}

impl<P> fmt::Debug for SessionCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCache")
            .field("len", &self.occupancy.len.load(Ordering::Relaxed))
            .field(
                "mode",
                &CacheMode::from_bits_truncate(self.mode.load(Ordering::Relaxed)),
            )
            .field("size_limit", &self.size_limit.load(Ordering::Relaxed))
            .field("timeout_secs", &self.timeout_secs.load(Ordering::Relaxed))
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
