//! The Redis tier: a [`Tier`] under a [`SessionCache`], shared by a fleet.
//!
//! - New sessions are sealed and queued ([`WriteQueue`]); a writer task sends them
//!   (`SET … EXAT`) so that Redis expires each at the moment the cache would, by the cache's
//!   clock. A full queue drops writes, counted.
//! - Explicit removals ([`Removal::Explicit`]) delete the session in Redis and tell the fleet
//!   (pub/sub); each instance then forgets its copies, in memory and in the tiers above Redis
//!   ([`TierContext::forget`]). Takes already deleted the session; evictions, expiry, flushes
//!   and shutdown are each instance's business.
//! - Reads have a deadline. A TLS 1.3 ticket is taken with one atomic script (read, and delete
//!   if this instance's key ring can open it): it resumes on one instance, once, and only on the
//!   connection whose take returned it; a local copy alone never resumes a ticket.
//! - Tickets and reusable (TLS 1.2) sessions live in separate key spaces (`PREFIX t:…` and
//!   `PREFIX s:…`, see [`Kind`]): a take never touches a reusable session, whatever id a client
//!   offers.
//! - A value sealed under a key this instance lacks (a rotation in progress) or in a format it
//!   does not know is a miss, and stays in Redis for the instances that can open it.
//! - What a ClientHello offers is filtered first (see the `guard` module): none for an id that
//!   missed recently, and a read budget per client address; [`SessionCache::prefetch`] makes
//!   one read per hello at most.
//! - A circuit breaker stops asking a Redis that keeps failing, and probes it periodically.
//!
//! Two wirings: [`Wiring::Prefetch`] for async servers, which call [`SessionCache::prefetch`]
//! with what the ClientHello offers before the handshake, so that no runtime thread ever waits
//! on Redis; and [`Wiring::Blocking`] for servers whose TLS stack looks sessions up
//! synchronously, which then wait at most the read budget.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use parking_lot::Mutex;
use reprise::{
    Clock, Fetched, Metric, Removal, Request, Session, SessionCache, SessionKey, SharedSession,
    SystemClock, Tier, TierContext, TierFuture, WriteQueue,
};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::breaker::{Breaker, BreakerState};
use crate::config::RedisConfig;
use crate::conn::{Clients, Conn, TakeScript};
use crate::error::ConfigError;
use crate::guard::{AddressBudget, Guard};
use crate::stats::{self, RedisCounters, TierStats};
use reprise_seal::{open_session, seal_session, KeyRing, OpenError};

/// The name of the tier: in metric names, and bound into what it seals.
const NAME: &str = "redis";

/// The longest time-to-live given to a session, whatever its timeout.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// Writes sent to Redis at once.
const WRITE_BATCH: usize = 256;

/// How the tier answers the synchronous lookups of the handshake ([`Tier::fetch`] and
/// [`Tier::take`]); see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wiring {
    /// The handshake never waits on Redis: reads happen in [`SessionCache::prefetch`], before
    /// it, and the synchronous lookups answer [`Fetched::Unavailable`] at once. A TLS 1.3
    /// ticket then resumes only as the ticket the prefetch took for its connection
    /// (`ConnectionSessions::confirm_take` in `reprise-rustls`, or
    /// [`SessionCache::take_confirmed`]); a plain [`SessionCache::take`] never resumes a ticket
    /// on a local copy.
    #[default]
    Prefetch,
    /// The synchronous lookups read Redis, and wait at most the read budget.
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
    counters: RedisCounters,
    guard: Guard,
    take_script: TakeScript,
    /// Writes on their way to Redis, drained by the writer task.
    queue: WriteQueue<Write>,
    /// Tells this instance's invalidations from the fleet's.
    instance: String,
    channel: String,
    /// The caches the tier is attached to (one, usually).
    contexts: Mutex<Vec<TierContext>>,
    /// The clock of the first cache the tier was attached to.
    clock: OnceLock<Arc<dyn Clock>>,
}

struct Inner {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    cancel: CancellationToken,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        // The writer sends what is queued, then ends.
        self.shared.queue.close();
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

/// A Redis tier for [`SessionCache`]s: attach it with [`SessionCache::attach`], last (it is the
/// authority on single use). Clones share one tier (one connection, one write queue, one set of
/// counters); each clone has its own [`Wiring`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use reprise::SessionCache;
/// # use reprise_redis::{KeyRing, RedisConfig, RedisTier, Wiring};
/// # fn f(tier: RedisTier, cache: Arc<SessionCache>) {
/// cache.attach(Arc::new(tier.clone().with_wiring(Wiring::Blocking)));
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
    wiring: Wiring,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("target", &self.inner.shared.config.target)
            .field("prefix", &self.inner.shared.config.prefix)
            .field("keys", &self.inner.shared.keys)
            .field("wiring", &self.wiring)
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// Starts the tier's tasks on the current tokio runtime, wired for
    /// [`Wiring::Prefetch`]. Redis need not be up: the tier connects in the background and
    /// answers `Unavailable` until then.
    pub fn start(config: RedisConfig, keys: KeyRing) -> Result<Self, ConfigError> {
        let handle = tokio::runtime::Handle::try_current().map_err(ConfigError::NoRuntime)?;
        Self::start_on(handle, None, config, keys)
    }

    /// Starts the tier on a small runtime of its own, for servers without one (or whose TLS
    /// stack looks sessions up from threads that must not wait on their own runtime). Wired
    /// for [`Wiring::Prefetch`] too: such servers usually want
    /// [`with_wiring(Wiring::Blocking)`](Self::with_wiring).
    pub fn start_detached(config: RedisConfig, keys: KeyRing) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("reprise-redis")
            .enable_all()
            .build()
            .map_err(ConfigError::Runtime)?;
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
        SystemRandom::new()
            .fill(&mut instance)
            .map_err(|_| ConfigError::Random)?;
        let shared = Arc::new(Shared {
            channel: format!("{}invalidate", config.prefix),
            breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown),
            guard: Guard::new(AddressBudget::per_second(config.misses_per_address)),
            take_script: TakeScript::new(&keys),
            queue: WriteQueue::new(config.write_queue),
            config,
            keys,
            clients,
            conn: ArcSwapOption::empty(),
            counters: RedisCounters::default(),
            instance: hex::encode(instance),
            contexts: Mutex::new(Vec::new()),
            clock: OnceLock::new(),
        });
        let cancel = CancellationToken::new();
        handle.spawn(connector(shared.clone(), cancel.clone()));
        handle.spawn(writer(shared.clone()));
        handle.spawn(subscriber(shared.clone(), cancel.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                handle,
                cancel,
                runtime: Mutex::new(runtime),
            }),
            wiring: Wiring::Prefetch,
        })
    }

    /// This handle, wired as `wiring` (the default is [`Wiring::Prefetch`]).
    #[must_use]
    pub fn with_wiring(mut self, wiring: Wiring) -> Self {
        self.wiring = wiring;
        self
    }

    /// How this handle answers the handshake's synchronous lookups.
    pub fn wiring(&self) -> Wiring {
        self.wiring
    }

    /// Reads a session within the read budget: `take`, a ticket (and removes it, atomically);
    /// otherwise a reusable session. Unfiltered: no negative cache, no address budget. The
    /// session is not validated: [`SessionCache`] does that for what its tiers return.
    pub async fn read(&self, key: SessionKey<'_>, take: bool) -> Fetched {
        let kind = if take { Kind::Ticket } else { Kind::Session };
        self.inner.shared.read(kind, key).await
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
        shared.push(Write::Delete {
            key: shared.redis_key(kind, key),
            invalidate: message,
        });
    }

    /// A snapshot of the tier's counters and gauges.
    pub fn stats(&self) -> TierStats {
        let shared = &self.inner.shared;
        let mut stats = shared.counters.snapshot();
        stats.connected = u64::from(shared.conn.load().is_some());
        stats.breaker_open = u64::from(shared.breaker.state() != BreakerState::Closed);
        stats.misses_remembered = shared.guard.remembered() as u64;
        stats.write_queue = shared.queue.len() as u64;
        stats.writes_dropped_full = shared.queue.dropped();
        stats
    }

    /// The Redis key of a session of `kind`.
    pub fn redis_key(&self, kind: Kind, key: SessionKey<'_>) -> String {
        self.inner.shared.redis_key(kind, key)
    }

    /// A read for a synchronous lookup: waits at most the read budget (plus scheduling).
    fn read_blocking(&self, kind: Kind, key: SessionKey<'_>) -> Fetched {
        if !key.is_well_formed() {
            return Fetched::Miss;
        }
        let shared = self.inner.shared.clone();
        let (id, ctx) = (key.id.to_vec(), key.sid_ctx.to_vec());
        let wait = shared.config.read_timeout + Duration::from_millis(2);
        let fetched = self.block_on(wait, async move {
            shared
                .guarded_read(kind, SessionKey::new(&id, &ctx), None)
                .await
        });
        fetched.unwrap_or(Fetched::Unavailable)
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

impl Tier for RedisTier {
    fn name(&self) -> &str {
        NAME
    }

    /// Reads the time from the cache's clock (the first cache's, if the tier is attached to
    /// several), and applies the fleet's invalidations to the cache and the tiers above.
    fn attach(&self, cx: TierContext) {
        let shared = &self.inner.shared;
        let _ = shared.clock.set(Arc::clone(cx.clock()));
        let mut contexts = shared.contexts.lock();
        contexts.retain(|c| c.cache().is_some());
        contexts.push(cx);
    }

    /// Seals the session and queues a `SET … EXAT`.
    fn store(&self, session: &SharedSession) {
        let shared = &self.inner.shared;
        let Some(exat) = expiry(session, shared.now()) else {
            return;
        };
        match seal_session(&shared.keys, NAME, session) {
            Ok(value) => shared.push(Write::Store {
                key: shared.redis_key(Kind::of(session), session.key()),
                value,
                exat,
            }),
            Err(e) => warn!(error = %e, "cannot seal a session; not stored in Redis"),
        }
    }

    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        match self.wiring {
            Wiring::Prefetch => Fetched::Unavailable,
            Wiring::Blocking => self.read_blocking(Kind::Session, key),
        }
    }

    fn take(&self, key: SessionKey<'_>) -> Fetched {
        match self.wiring {
            Wiring::Prefetch => {
                // A take that no prefetch confirmed for its connection (an identity past those
                // the prefetch reads, a second ClientHello, a hello that could not be parsed)
                // resumes nothing: the cache then drops its local copy, which Redis cannot
                // vouch for.
                if self.inner.shared.holds_takeable_copy(key) {
                    stats::bump(&self.inner.shared.counters.unconfirmed_takes);
                }
                Fetched::Unavailable
            }
            Wiring::Blocking => self.read_blocking(Kind::Ticket, key),
        }
    }

    /// Only an explicit removal (the application's, or an unclean shutdown) concerns the
    /// fleet: it is deleted in Redis and published. A take already removed the session in
    /// Redis; evictions, expiry, flushes and shutdown are this instance's business.
    fn remove(&self, session: &SharedSession, why: Removal) {
        if why == Removal::Explicit {
            self.delete(Kind::of(session), session.key(), true);
        }
    }

    /// The guarded read of one key: [`Fetched::Skipped`] without a read if it missed recently
    /// (or a take already went after it), [`Fetched::Unavailable`] if the client's address
    /// has spent its read budget; else a take of the ticket (`request.take`) or a read of the
    /// session, within the read budget.
    fn prefetch<'a>(&'a self, request: Request<'a>) -> Option<TierFuture<'a>> {
        let shared = &self.inner.shared;
        Some(Box::pin(async move {
            let kind = if request.take {
                Kind::Ticket
            } else {
                Kind::Session
            };
            let fetched = shared.guarded_read(kind, request.key, request.client).await;
            if let Fetched::Hit(_) = fetched {
                stats::bump(&shared.counters.prefetched);
            }
            fetched
        }))
    }

    fn circuit_open(&self) -> bool {
        self.inner.shared.breaker.state() == BreakerState::Open
    }

    fn metrics(&self) -> Vec<Metric> {
        self.stats().metrics()
    }
}

/// When Redis should drop a session (unix seconds, for `EXAT`): through the last second the
/// cache would keep it, capped; `None` if that is already past.
fn expiry(session: &Session, now: u64) -> Option<u64> {
    session.keep_until(now, MAX_TTL_SECS)
}

/// Whether a cache holds a copy of a ticket (not a TLS 1.2 session) for the key.
fn has_takeable_copy(cache: &SessionCache, key: SessionKey<'_>) -> bool {
    cache
        .peek(key.id)
        .is_some_and(|s| s.sid_ctx().as_bytes() == key.sid_ctx && !s.version().is_reusable())
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

    fn open(&self, key: SessionKey<'_>, value: &[u8]) -> Result<SharedSession, OpenError> {
        open_session(&self.keys, NAME, key, value)
    }

    /// The current time by the cache's clock (the system's, before the tier is attached).
    fn now(&self) -> u64 {
        match self.clock.get() {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        }
    }

    /// Whether a cache the tier is attached to holds a takeable copy of the key.
    fn holds_takeable_copy(&self, key: SessionKey<'_>) -> bool {
        let contexts = self.contexts.lock().clone();
        contexts
            .iter()
            .filter_map(TierContext::cache)
            .any(|cache| has_takeable_copy(&cache, key))
    }

    /// Queues a write; a full queue drops it (the queue counts it).
    fn push(&self, write: Write) {
        let queued = match &write {
            Write::Store { .. } => &self.counters.stores_queued,
            Write::Delete { .. } => &self.counters.deletes_queued,
        };
        if self.queue.push(write) {
            stats::bump(queued);
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

    /// A read for a client: skipped when the key missed recently (the negative cache),
    /// refused when the client's address has no misses left; a miss is remembered, and
    /// charged to the address, and a hit credits the address with one. A take
    /// is remembered as it starts: a ticket is single-use, so whatever the outcome, another
    /// take of it here would find nothing.
    async fn guarded_read(
        &self,
        kind: Kind,
        key: SessionKey<'_>,
        client: Option<IpAddr>,
    ) -> Fetched {
        let c = &self.counters;
        let now = Instant::now();
        if self.guard.missed(kind, key, now) {
            stats::bump(&c.negative_hits);
            return Fetched::Skipped;
        }
        if !self.guard.allows(client, now) {
            stats::bump(&c.reads_limited);
            return Fetched::Unavailable;
        }
        if kind == Kind::Ticket {
            self.guard.remember(kind, key, now);
        }
        let fetched = self.read(kind, key).await;
        match fetched {
            Fetched::Hit(_) => self.guard.credit(client, Instant::now()),
            Fetched::Miss => {
                let now = Instant::now();
                self.guard.remember(kind, key, now);
                self.guard.charge(client, now);
            }
            Fetched::Unavailable | Fetched::Skipped => {}
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
    async fn read(&self, kind: Kind, key: SessionKey<'_>) -> Fetched {
        let c = &self.counters;
        let conn = match self.conn.load_full() {
            Some(conn) if self.breaker.allow() => conn,
            _ => {
                stats::bump(&c.reads_skipped);
                return Fetched::Unavailable;
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
            Err(_) if local => Fetched::Unavailable,
            Err(_) => {
                stats::bump(&c.read_timeouts);
                if self.breaker.timeout() {
                    self.opened_breaker();
                }
                Fetched::Unavailable
            }
            Ok(Err(e)) => {
                debug!(error = %self.config.target.scrub(&e.to_string()), "redis read failed");
                stats::bump(&c.read_errors);
                self.failed();
                Fetched::Unavailable
            }
            Ok(Ok(None)) => {
                self.breaker.success();
                stats::bump(&c.read_misses);
                Fetched::Miss
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
    ) -> Fetched {
        let c = &self.counters;
        match self.open(key, value) {
            // A ticket resumes only if this take removed it; a session only if it is reusable.
            Ok(session) if Kind::of(&session) == kind && (kind == Kind::Session || taken) => {
                stats::bump(&c.read_hits);
                Fetched::Hit(session)
            }
            Ok(_) => {
                // Only a writer with the fleet's key puts a value there; not one to resume.
                stats::bump(&c.rejected_values);
                Fetched::Miss
            }
            Err(e) if e.is_unknown() => {
                // Sealed under a key this instance lacks, or in a format it does not know: a
                // rotation or an upgrade in progress. Left for the instances that can open it.
                stats::bump(&c.unknown_key_values);
                stats::bump(&c.read_misses);
                Fetched::Miss
            }
            Err(e) => {
                // Forged, corrupt, or moved from another key: a miss, and gone (a take already
                // removed it).
                debug!(error = %e, "a value in redis did not open; deleting it");
                stats::bump(&c.rejected_values);
                if kind == Kind::Session {
                    self.push(Write::Delete {
                        key: redis_key.to_owned(),
                        invalidate: None,
                    });
                }
                Fetched::Miss
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
        let contexts = self.contexts.lock().clone();
        for cx in &contexts {
            // Memory and the tiers above this one; the tier itself has nothing local.
            cx.forget(key);
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

/// Sends queued writes in batches, until the queue is closed and empty.
async fn writer(shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        shared.queue.ready().await;
        if shared.queue.drain(WRITE_BATCH, &mut batch) == 0 {
            if shared.queue.is_closed() {
                return;
            }
            continue;
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
