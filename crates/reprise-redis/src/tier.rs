//! The Redis tier: the external cache of a [`SessionCache`], shared by a fleet.
//!
//! - New sessions are sealed and queued; a writer task sends them (`SET … EXAT`) so that Redis
//!   expires each at the moment the cache would. A full queue drops writes, counted.
//! - Explicit removals delete the session in Redis and tell the fleet (pub/sub), whose
//!   instances drop their local copies.
//! - Reads have a deadline. A TLS 1.3 ticket is taken with one atomic script (read, and delete
//!   if this instance's key ring can open it): it resumes on one instance, once, and only on the
//!   connection whose take returned it; a local copy alone never resumes a ticket.
//! - Tickets and reusable (TLS 1.2) sessions live in separate key spaces (`PREFIX t:…` and
//!   `PREFIX s:…`, see [`Kind`]): a take never touches a reusable session, whatever id a client
//!   offers.
//! - A value sealed under a key this instance lacks (a rotation in progress) or in a format it
//!   does not know is a miss, and stays in Redis for the instances that can open it.
//! - What a ClientHello offers is filtered first (see the `guard` module): at most one read per
//!   hello, none for an id that missed recently, and a read budget per client address.
//! - A circuit breaker stops asking a Redis that keeps failing, and probes it periodically.
//!
//! Two wirings: [`Wiring::Prefetch`] for async servers, which call [`RedisTier::prefetch`] with
//! what the ClientHello offers before the handshake, so that no runtime thread ever waits on
//! Redis; and [`Wiring::Blocking`] for servers whose TLS stack calls the get and take callbacks
//! synchronously, which then wait at most the read budget.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use parking_lot::Mutex;
use reprise::{Removal, Session, SessionCache, SessionKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::breaker::Breaker;
use crate::config::RedisConfig;
use crate::conn::{Clients, Conn, TakeScript};
use crate::error::ConfigError;
use crate::guard::{AddressBudget, Guard};
use crate::stats::{self, Counters, TierStats};
use reprise_seal::{open_session, seal_session, KeyRing, OpenError};

/// The longest time-to-live given to a session, whatever its timeout.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// Writes sent to Redis at once.
const WRITE_BATCH: usize = 256;

/// What a read found.
#[derive(Debug)]
pub enum Fetch {
    /// A session that opened and decoded (for a take: and that the take removed from Redis).
    Hit(Session),
    /// Nothing there, or a value that did not open: a forged or corrupt one (deleted), or one
    /// sealed under a key or in a format this instance does not know (left for others).
    Miss,
    /// Redis did not answer in time, failed, is not connected, or the breaker is open.
    Unavailable,
}

/// How the tier plugs into a cache; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// New and remove callbacks, and a take callback that confirms nothing: reads happen in
    /// [`RedisTier::prefetch`], and a TLS 1.3 ticket resumes only as the [`Prefetched`] ticket
    /// handed to the connection (`ConnectionSessions::confirm_take` in `reprise-rustls`, or
    /// [`SessionCache::take_confirmed`]). A plain [`SessionCache::take`] never resumes a ticket
    /// on a local copy.
    Prefetch,
    /// New, remove, get and take callbacks; get and take wait at most the read budget.
    Blocking,
}

/// Which key space a session lives in, in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A single-use TLS 1.3 ticket (`PREFIX t:…`): only ever taken, atomically.
    Ticket,
    /// A reusable (TLS 1.2) session (`PREFIX s:…`): read, never taken; deleted only by an
    /// explicit removal.
    Session,
}

impl Kind {
    /// The key space of a session: by its protocol version.
    pub fn of(session: &Session) -> Kind {
        if session.version().is_reusable() {
            Kind::Session
        } else {
            Kind::Ticket
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Ticket => "t:",
            Kind::Session => "s:",
        }
    }
}

/// What a ClientHello offers to resume, for [`RedisTier::prefetch`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Offer<'a> {
    /// The TLS 1.2 session id, if the handshake can be TLS 1.2 (a TLS 1.3 client's compatibility
    /// session id is not one to look up).
    pub session_id: Option<&'a [u8]>,
    /// The TLS 1.3 PSK identities (stateful ticket ids), in the client's order.
    pub psk_identities: &'a [Vec<u8>],
    /// The client's address, for the read budget per address
    /// ([`RedisConfig::misses_per_address`]); `None` leaves the hello unbudgeted.
    pub client: Option<IpAddr>,
}

/// What [`RedisTier::prefetch`] got for one connection: the TLS 1.3 ticket Redis handed over
/// (taken atomically, so no other connection can have it), if any.
///
/// The ticket resumes only through the connection it was fetched for: hand it to
/// `ConnectionSessions::confirm_take` (`reprise-rustls`) or [`SessionCache::take_confirmed`].
/// Dropped, it is gone: Redis no longer has it.
#[must_use = "a ticket taken from Redis resumes only when handed to the connection's confirm_take"]
#[derive(Debug, Default)]
pub struct Prefetched {
    ticket: Option<Arc<Session>>,
}

impl Prefetched {
    /// The ticket Redis handed over, if any.
    pub fn ticket(&self) -> Option<&Arc<Session>> {
        self.ticket.as_ref()
    }

    /// The ticket Redis handed over, if any, by value.
    pub fn into_ticket(self) -> Option<Arc<Session>> {
        self.ticket
    }
}

enum Write {
    Store {
        key: String,
        value: Vec<u8>,
        exat: u64,
    },
    Delete {
        key: String,
        invalidate: Option<String>,
    },
}

/// What the tier's tasks share.
struct Shared {
    config: RedisConfig,
    keys: KeyRing,
    clients: Clients,
    conn: ArcSwapOption<Conn>,
    breaker: Breaker,
    counters: Counters,
    guard: Guard,
    take_script: TakeScript,
    /// The write queue, for deletions decided while reading (weak: the writer ends when the
    /// tier is dropped).
    writes: mpsc::WeakSender<Write>,
    /// Tells this instance's invalidations from the fleet's.
    instance: String,
    channel: String,
    caches: Mutex<Vec<Weak<SessionCache>>>,
}

struct Inner {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Write>,
    handle: tokio::runtime::Handle,
    cancel: CancellationToken,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

/// A Redis-backed external cache for [`SessionCache`]s. Clones share one tier.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("target", &self.inner.shared.config.target)
            .field("prefix", &self.inner.shared.config.prefix)
            .field("keys", &self.inner.shared.keys)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RedisTier {
    /// Starts the tier's tasks on the current tokio runtime. Redis need not be up: the tier
    /// connects in the background and answers `Unavailable` until then.
    pub fn start(config: RedisConfig, keys: KeyRing) -> Result<Self, ConfigError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::Runtime(
                "RedisTier::start needs a tokio runtime; use start_detached".into(),
            )
        })?;
        Self::start_on(handle, None, config, keys)
    }

    /// Starts the tier on a small runtime of its own, for servers without one (or whose TLS
    /// stack calls the callbacks from threads that must not wait on their own runtime).
    pub fn start_detached(config: RedisConfig, keys: KeyRing) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("reprise-redis")
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Runtime(e.to_string()))?;
        let handle = runtime.handle().clone();
        Self::start_on(handle, Some(runtime), config, keys)
    }

    fn start_on(
        handle: tokio::runtime::Handle,
        runtime: Option<tokio::runtime::Runtime>,
        config: RedisConfig,
        keys: KeyRing,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let clients = Clients::new(&config.target)?;
        let mut instance = [0u8; 8];
        SystemRandom::new().fill(&mut instance).map_err(|_| {
            ConfigError::Runtime("the system's random number generator failed".into())
        })?;
        let (writes, rx) = mpsc::channel(config.write_queue);
        let shared = Arc::new(Shared {
            channel: format!("{}invalidate", config.prefix),
            breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown),
            guard: Guard::new(AddressBudget::per_second(config.misses_per_address)),
            take_script: TakeScript::new(&keys),
            writes: writes.downgrade(),
            config,
            keys,
            clients,
            conn: ArcSwapOption::empty(),
            counters: Counters::default(),
            instance: hex::encode(instance),
            caches: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        handle.spawn(connector(shared.clone(), cancel.clone()));
        handle.spawn(writer(shared.clone(), rx));
        handle.spawn(subscriber(shared.clone(), cancel.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writes,
                handle,
                cancel,
                runtime: Mutex::new(runtime),
            }),
        })
    }

    /// Plugs the tier into a cache as its external cache, and subscribes the cache to the
    /// fleet's invalidations.
    pub fn install(&self, cache: &Arc<SessionCache>, wiring: Wiring) {
        self.inner.shared.caches.lock().push(Arc::downgrade(cache));
        let tier = self.clone();
        cache.set_new_session_callback(Some(Arc::new(move |_, session| {
            tier.store(session);
            true
        })));
        let tier = self.clone();
        cache.set_remove_session_callback(Some(Arc::new(move |_, session, why| {
            // Only an explicit removal (the application's, or an unclean shutdown) concerns
            // the fleet. Takes already removed the session in Redis; evictions, expiry,
            // flushes and shutdown are this instance's business.
            if why == Removal::Explicit {
                tier.delete(
                    Kind::of(session),
                    SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes()),
                    true,
                );
            }
        })));
        match wiring {
            Wiring::Prefetch => {
                cache.set_get_session_callback(None);
                // A take that the connection's prefetch did not confirm (an identity it did not
                // read, a second ClientHello, a hello it could not parse) resumes nothing: the
                // engine then drops the local copy, which Redis cannot vouch for.
                let tier = self.clone();
                cache.set_take_session_callback(Some(Arc::new(move |cache, key| {
                    if has_takeable_copy(cache, *key) {
                        stats::bump(&tier.inner.shared.counters.unconfirmed_takes);
                    }
                    None
                })));
            }
            Wiring::Blocking => {
                let tier = self.clone();
                cache.set_get_session_callback(Some(Arc::new(move |_, key| {
                    tier.read_blocking(Kind::Session, *key)
                })));
                let tier = self.clone();
                cache.set_take_session_callback(Some(Arc::new(move |_, key| {
                    tier.read_blocking(Kind::Ticket, *key)
                })));
            }
        }
    }

    /// Fetches what a ClientHello offers, before the handshake: the first TLS 1.3 ticket that
    /// Redis hands over (taken atomically), returned for this connection only; or else the TLS
    /// 1.2 session, into the local tier of `cache` (unless it has it already).
    ///
    /// The ticket is not added to the local tier: hand it to the connection
    /// (`ConnectionSessions::confirm_take` in `reprise-rustls`), the only way it resumes under
    /// [`Wiring::Prefetch`]. A local copy of a ticket never resumes with a shared tier.
    ///
    /// One hello costs at most one Redis read: identities that missed recently are answered
    /// from memory, and only the first other one is taken (clients offer one ticket), so
    /// repeated identities cost nothing. Reads that find nothing are budgeted per client
    /// address ([`RedisConfig::misses_per_address`]); a read that finds a session earns one back.
    pub async fn prefetch(
        &self,
        cache: &SessionCache,
        sid_ctx: &[u8],
        offer: Offer<'_>,
    ) -> Prefetched {
        let shared = &self.inner.shared;
        for identity in offer.psk_identities {
            let key = SessionKey::new(identity, sid_ctx);
            if !key.is_well_formed() {
                continue;
            }
            if shared.guard.missed(Kind::Ticket, key, Instant::now()) {
                stats::bump(&shared.counters.negative_hits);
                continue;
            }
            // The one read of this hello.
            if let Fetch::Hit(session) = shared.guarded_read(Kind::Ticket, key, offer.client).await
            {
                stats::bump(&shared.counters.prefetched);
                return Prefetched {
                    ticket: Some(Arc::new(session)),
                };
            }
            return Prefetched::default();
        }
        if let Some(id) = offer.session_id {
            let key = SessionKey::new(id, sid_ctx);
            if key.is_well_formed() && !has_valid(cache, key) {
                if let Fetch::Hit(session) =
                    shared.guarded_read(Kind::Session, key, offer.client).await
                {
                    cache.add(&Arc::new(session));
                    stats::bump(&shared.counters.prefetched);
                }
            }
        }
        Prefetched::default()
    }

    /// Reads a session within the read budget: `take`, a ticket (and removes it, atomically);
    /// otherwise a reusable session. Unfiltered: no negative cache, no address budget.
    pub async fn fetch(&self, key: SessionKey<'_>, take: bool) -> Fetch {
        let kind = if take { Kind::Ticket } else { Kind::Session };
        self.inner.shared.read(kind, key).await
    }

    /// Seals a session and queues it for writing.
    pub fn store(&self, session: &Session) {
        let shared = &self.inner.shared;
        let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
        let Some(exat) = expiry(session) else {
            return;
        };
        let sealed = seal_session(&shared.keys, "redis", session);
        match sealed {
            Ok(value) => self.queue(Write::Store {
                key: shared.redis_key(Kind::of(session), key),
                value,
                exat,
            }),
            Err(e) => warn!(error = %e, "cannot seal a session; not stored in Redis"),
        }
    }

    /// Queues a deletion from the key space of `kind`, and an invalidation for the fleet if
    /// `invalidate`.
    pub fn delete(&self, kind: Kind, key: SessionKey<'_>, invalidate: bool) {
        let shared = &self.inner.shared;
        let message = invalidate.then(|| {
            format!(
                "{}:{}:{}",
                shared.instance,
                hex::encode(key.sid_ctx),
                hex::encode(key.id)
            )
        });
        self.queue(Write::Delete {
            key: shared.redis_key(kind, key),
            invalidate: message,
        });
    }

    /// A snapshot of the tier's counters.
    pub fn stats(&self) -> TierStats {
        let shared = &self.inner.shared;
        let mut stats = shared
            .counters
            .snapshot(shared.conn.load().is_some(), shared.breaker.state());
        stats.misses_remembered = shared.guard.remembered() as u64;
        stats
    }

    /// The Redis key of a session of `kind`.
    pub fn redis_key(&self, kind: Kind, key: SessionKey<'_>) -> String {
        self.inner.shared.redis_key(kind, key)
    }

    fn queue(&self, write: Write) {
        self.inner.shared.queue(&self.inner.writes, write);
    }

    /// A read from a synchronous callback: waits at most the read budget (plus scheduling).
    fn read_blocking(&self, kind: Kind, key: SessionKey<'_>) -> Option<Arc<Session>> {
        if !key.is_well_formed() {
            return None;
        }
        let shared = self.inner.shared.clone();
        let (id, ctx) = (key.id.to_vec(), key.sid_ctx.to_vec());
        let wait = shared.config.read_timeout + Duration::from_millis(2);
        let fetched = self.block_on(wait, async move {
            shared
                .guarded_read(kind, SessionKey::new(&id, &ctx), None)
                .await
        });
        match fetched {
            Some(Fetch::Hit(session)) => Some(Arc::new(session)),
            _ => None,
        }
    }

    fn block_on<T: Send + 'static>(
        &self,
        wait: Duration,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(wait).ok()
    }
}

/// When Redis should drop a session (unix seconds, for `EXAT`): through the last second the
/// cache would keep it, capped; `None` if that is already past.
fn expiry(session: &Session) -> Option<u64> {
    let now = unix_now();
    let exat = session
        .expires_at()
        .saturating_add(1)
        .min(now.saturating_add(MAX_TTL_SECS));
    (exat > now).then_some(exat)
}

/// Whether the local tier holds a copy of a ticket (not a TLS 1.2 session) for the key.
fn has_takeable_copy(cache: &SessionCache, key: SessionKey<'_>) -> bool {
    cache
        .peek(key.id)
        .is_some_and(|s| s.sid_ctx().as_bytes() == key.sid_ctx && !s.version().is_reusable())
}

/// Whether the local tier holds a resumable, unexpired session for the key.
fn has_valid(cache: &SessionCache, key: SessionKey<'_>) -> bool {
    cache.peek(key.id).is_some_and(|s| {
        s.sid_ctx().as_bytes() == key.sid_ctx && s.is_resumable() && !s.is_expired_at(cache.now())
    })
}

impl Shared {
    fn redis_key(&self, kind: Kind, key: SessionKey<'_>) -> String {
        format!(
            "{}{}{}:{}",
            self.config.prefix,
            kind.tag(),
            hex::encode(key.sid_ctx),
            hex::encode(key.id)
        )
    }

    fn open(&self, key: SessionKey<'_>, value: &[u8]) -> Result<Session, OpenError> {
        open_session(&self.keys, "redis", key, value)
    }

    fn queue(&self, writes: &mpsc::Sender<Write>, write: Write) {
        let counters = &self.counters;
        let queued = match &write {
            Write::Store { .. } => &counters.stores_queued,
            Write::Delete { .. } => &counters.deletes_queued,
        };
        match writes.try_send(write) {
            Ok(()) => stats::bump(queued),
            Err(mpsc::error::TrySendError::Full(_)) => stats::bump(&counters.writes_dropped_full),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                stats::bump(&counters.writes_dropped_unavailable)
            }
        }
    }

    fn failed(&self) {
        if self.breaker.failure() {
            self.opened_breaker();
        }
    }

    fn opened_breaker(&self) {
        stats::bump(&self.counters.breaker_opens);
        warn!("redis keeps failing: circuit breaker open");
    }

    /// A read for a client: answered from the negative cache when the key missed recently,
    /// refused when the client's address has no misses left; a miss is remembered, and
    /// charged to the address, and a hit credits the address with one. A take
    /// is remembered as it starts: a ticket is single-use, so whatever the outcome, another
    /// take of it here would find nothing.
    async fn guarded_read(&self, kind: Kind, key: SessionKey<'_>, client: Option<IpAddr>) -> Fetch {
        let c = &self.counters;
        let now = Instant::now();
        if self.guard.missed(kind, key, now) {
            stats::bump(&c.negative_hits);
            return Fetch::Miss;
        }
        if !self.guard.allows(client, now) {
            stats::bump(&c.reads_limited);
            return Fetch::Unavailable;
        }
        if kind == Kind::Ticket {
            self.guard.remember(kind, key, now);
        }
        let fetched = self.read(kind, key).await;
        match fetched {
            Fetch::Hit(_) => self.guard.credit(client, Instant::now()),
            Fetch::Miss => {
                let now = Instant::now();
                self.guard.remember(kind, key, now);
                self.guard.charge(client, now);
            }
            Fetch::Unavailable => {}
        }
        fetched
    }

    /// Whether a deadline that just passed was missed because this machine is busy: the timer
    /// fired well after it was due, so the runtime was late, not (only) Redis.
    fn fired_late(&self, started: Instant) -> bool {
        let budget = self.config.read_timeout;
        let slack = (budget / 2).max(Duration::from_millis(2));
        started.elapsed() >= budget + slack
    }

    /// One read, within the read budget: `GET` for a reusable session, the take script for a
    /// ticket.
    async fn read(&self, kind: Kind, key: SessionKey<'_>) -> Fetch {
        let c = &self.counters;
        let conn = match self.conn.load_full() {
            Some(conn) if self.breaker.allow() => conn,
            _ => {
                stats::bump(&c.reads_skipped);
                return Fetch::Unavailable;
            }
        };
        let mut conn = (*conn).clone();
        let redis_key = self.redis_key(kind, key);
        let started = Instant::now();
        let query = async {
            match kind {
                // (taken, value): a value is taken only when this ring names its key.
                Kind::Ticket => self.take_script.take(&mut conn, &redis_key).await,
                Kind::Session => {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(&redis_key);
                    conn.query::<Option<Vec<u8>>>(&cmd)
                        .await
                        .map(|v| v.map(|v| (false, v)))
                }
            }
        };
        tokio::pin!(query);
        let budget = self.config.read_timeout;
        let mut reply = tokio::time::timeout(budget, &mut query).await;
        let mut local = false;
        if reply.is_err() && self.fired_late(started) {
            // The runtime was late, not Redis: the answer is likely in already. Another budget
            // for it, and either way this is no failure of Redis.
            local = true;
            stats::bump(&c.read_timeouts_local);
            reply = tokio::time::timeout(budget, &mut query).await;
        }
        match reply {
            Err(_) if local => Fetch::Unavailable,
            Err(_) => {
                stats::bump(&c.read_timeouts);
                if self.breaker.timeout() {
                    self.opened_breaker();
                }
                Fetch::Unavailable
            }
            Ok(Err(e)) => {
                debug!(error = %self.config.target.scrub(&e.to_string()), "redis read failed");
                stats::bump(&c.read_errors);
                self.failed();
                Fetch::Unavailable
            }
            Ok(Ok(None)) => {
                self.breaker.success();
                stats::bump(&c.read_misses);
                Fetch::Miss
            }
            Ok(Ok(Some((taken, value)))) => {
                self.breaker.success();
                self.opened(kind, key, &redis_key, taken, &value)
            }
        }
    }

    /// What a value read from Redis is worth.
    fn opened(
        &self,
        kind: Kind,
        key: SessionKey<'_>,
        redis_key: &str,
        taken: bool,
        value: &[u8],
    ) -> Fetch {
        let c = &self.counters;
        match self.open(key, value) {
            // A ticket resumes only if this take removed it; a session only if it is reusable.
            Ok(session) if Kind::of(&session) == kind && (kind == Kind::Session || taken) => {
                stats::bump(&c.read_hits);
                Fetch::Hit(session)
            }
            Ok(_) => {
                // Only a writer with the fleet's key puts a value there; not one to resume.
                stats::bump(&c.rejected_values);
                Fetch::Miss
            }
            Err(e) if e.is_unknown() => {
                // Sealed under a key this instance lacks, or in a format it does not know: a
                // rotation or an upgrade in progress. Left for the instances that can open it.
                stats::bump(&c.unknown_key_values);
                stats::bump(&c.read_misses);
                Fetch::Miss
            }
            Err(e) => {
                // Forged, corrupt, or moved from another key: a miss, and gone (a take already
                // removed it).
                debug!(error = %e, "a value in redis did not open; deleting it");
                stats::bump(&c.rejected_values);
                if kind == Kind::Session {
                    if let Some(writes) = self.writes.upgrade() {
                        self.queue(
                            &writes,
                            Write::Delete {
                                key: redis_key.to_owned(),
                                invalidate: None,
                            },
                        );
                    }
                }
                Fetch::Miss
            }
        }
    }

    async fn send(&self, conn: &Conn, write: Write) -> bool {
        let mut conn = conn.clone();
        match write {
            Write::Store { key, value, exat } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value).arg("EXAT").arg(exat);
                let ok = conn.query::<()>(&cmd).await.is_ok();
                if ok {
                    stats::bump(&self.counters.stores_written);
                }
                ok
            }
            Write::Delete { key, invalidate } => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                let mut ok = conn.query::<i64>(&cmd).await.is_ok();
                if ok {
                    stats::bump(&self.counters.deletes_written);
                }
                if let Some(message) = invalidate {
                    let mut publish = redis::cmd("PUBLISH");
                    publish.arg(&self.channel).arg(message);
                    let sent = conn.query::<i64>(&publish).await.is_ok();
                    if sent {
                        stats::bump(&self.counters.invalidations_sent);
                    }
                    ok &= sent;
                }
                ok
            }
        }
    }

    /// Sends a batch of writes concurrently over the multiplexed connection.
    async fn flush(&self, batch: &mut Vec<Write>) {
        let n = batch.len();
        let conn = match self.conn.load_full() {
            Some(conn) if self.breaker.allow() => conn,
            _ => {
                stats::add(&self.counters.writes_dropped_unavailable, n);
                batch.clear();
                return;
            }
        };
        let sends = futures_util::future::join_all(batch.drain(..).map(|w| self.send(&conn, w)));
        match tokio::time::timeout(self.config.write_timeout, sends).await {
            Ok(results) => {
                let failed = results.iter().filter(|ok| !**ok).count();
                stats::add(&self.counters.write_failures, failed);
                if failed == 0 {
                    self.breaker.success();
                } else {
                    self.failed();
                }
            }
            Err(_) => {
                stats::add(&self.counters.write_failures, n);
                self.failed();
            }
        }
    }

    /// Applies an invalidation from another instance: `instance:ctx-hex:id-hex`.
    fn invalidated(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = text.splitn(3, ':');
        let (Some(instance), Some(ctx), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if instance == self.instance || ctx.len() > 64 || id.len() > 64 {
            return;
        }
        let (Ok(ctx), Ok(id)) = (hex::decode(ctx), hex::decode(id)) else {
            return;
        };
        let key = SessionKey::new(&id, &ctx);
        let mut caches = self.caches.lock();
        caches.retain(|c| c.strong_count() > 0);
        for cache in caches.iter().filter_map(Weak::upgrade) {
            cache.forget_key(key);
        }
        stats::bump(&self.counters.invalidations_received);
    }
}

/// Connects in the background, retrying with backoff, until it succeeds or the tier stops.
async fn connector(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(2), shared.clients.connect()) => r,
        };
        match attempt {
            Ok(Ok(conn)) => {
                shared.conn.store(Some(Arc::new(conn)));
                info!(target = %shared.config.target, "connected to redis");
                return;
            }
            Ok(Err(e)) if !warned => {
                let error = shared.config.target.scrub(&e.to_string());
                warn!(%error, "cannot connect to redis yet; serving without it and retrying");
                warned = true;
            }
            Err(_) if !warned => {
                warn!("cannot connect to redis yet (timed out); serving without it and retrying");
                warned = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Sends queued writes in batches until every sender is gone.
async fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(write) = rx.recv().await {
        batch.push(write);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        shared.flush(&mut batch).await;
    }
}

/// Listens for the fleet's invalidations, reconnecting with backoff.
async fn subscriber(shared: Arc<Shared>, cancel: CancellationToken) {
    let Ok(client) = redis::Client::open(shared.config.target.pubsub_url()) else {
        return;
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()) => r,
        };
        if let Ok(Ok(mut pubsub)) = connected {
            if pubsub.subscribe(&shared.channel).await.is_ok() {
                delay = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = messages.next() => m,
                    };
                    match message {
                        Some(m) => shared.invalidated(m.get_payload_bytes()),
                        None => break,
                    }
                }
                debug!("invalidation subscription lost; reconnecting");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
