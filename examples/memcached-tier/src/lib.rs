//! A memcached tier for Reprise, written against the public [`reprise::Tier`] contract only:
//! sessions sealed with `reprise_seal` and shared by every instance that points at one
//! memcached server.
//!
//! - **store**: the session is sealed for the tier named `memcached` (the name is bound into
//!   the associated data, so a value never moves between tiers or keys) and queued on a
//!   [`reprise::WriteQueue`]; a tokio task sends `set` with the session's expiry as an
//!   absolute Unix time by the cache's clock ([`reprise::TierContext::now`]). A full queue
//!   drops the write and counts it.
//! - **fetch and take** (called on the handshake path, synchronously) answer
//!   [`Fetched::Unavailable`] at once: they never wait on the network.
//! - **prefetch** ([`SessionCache::prefetch`](reprise::SessionCache::prefetch), before the
//!   handshake) does the network read: `get` for a TLS 1.2 session, and for a TLS 1.3 ticket a
//!   take, `get` then `delete`.
//! - **remove** deletes on an explicit removal ([`Removal::Explicit`]), and on a take
//!   ([`Removal::Taken`]) that a tier below this one decided; evictions, expiry and flushes are
//!   each instance's own business. memcached has no publish/subscribe, so an explicit removal
//!   on one instance does not reach the memory of the others (the Redis tier publishes it and
//!   calls [`TierContext::forget`](reprise::TierContext::forget) on each instance).
//! - A tier attached to several caches reads the time from the first one's clock.
//!
//! # What a take guarantees
//!
//! memcached has no get-and-delete, so a take is a `get`, then a `delete` of the same key, and
//! the reply to the `delete` decides: `DELETED` means this take removed the item, so it wins
//! and resumes; `NOT_FOUND` means another take (or an eviction, or an expiry) removed it
//! first, so it is a miss. memcached applies commands on one key one at a time, so **of any
//! number of takes of one stored item, on one memcached server, at most one reads `DELETED`**:
//! a ticket resumes at most once fleet-wide. What it does not guarantee:
//!
//! - the value returned is the one read by the `get`; if the key were `set` again between the
//!   `get` and the `delete`, the winner would resume the older value. A ticket id is random and
//!   stored once, so that never happens through Reprise; memcached's meta `md KEY C<cas>` would
//!   close even that gap, at the price of needing memcached 1.6;
//! - a take whose `delete` was sent but whose reply was lost (timeout, connection reset) is a
//!   miss, and the ticket may be gone: a ticket lost, never a ticket used twice;
//! - with several memcached servers sharded by a client, the guarantee holds per server; with
//!   replication (mcrouter's all-sync pools) it does not hold.
//!
//! A value that does not open (forged, corrupt, moved from another key, sealed for another
//! tier) is a miss and counted; a value sealed with a key this ring lacks is left in place for
//! the instances that can open it.
//!
//! # What it leaves out
//!
//! - No per-client read budget and no negative cache: every identity a ClientHello offers
//!   (up to the acceptor's limit) costs one memcached round trip. Reads in flight are capped
//!   (64); past the cap a prefetch is unavailable at once.
//! - No blocking wiring: a TLS stack that looks sessions up only synchronously (OpenSSL, rustls
//!   without the acceptor's prefetch) resumes nothing through this tier.

mod proto;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use reprise::{
    Fetched, Metric, Removal, Request, Session, SessionKey, SharedSession, SystemClock, Tier,
    TierContext, TierFuture, WriteQueue,
};
use reprise_seal::{open_session, seal_session, KeyRing};
use thiserror::Error;
use tokio::time::timeout;
use tracing::{debug, warn};

use proto::Conn;
use stats::Counters;
pub use stats::MemcachedStats;

/// The tier's name: in metric names, and bound into every value it seals.
pub const NAME: &str = "memcached";

/// memcached reads an `exptime` above this (30 days) as an absolute Unix time, and one at or
/// below it as seconds from now.
const RELATIVE_LIMIT: u64 = 30 * 24 * 3600;

/// The longest a session is kept in memcached, whatever its timeout.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// The longest key prefix: keeps every key under memcached's 250 bytes.
const MAX_PREFIX: usize = 100;

/// Idle connections kept for reads.
const POOL: usize = 8;

/// Reads in flight at once (each on its own connection); past it, a prefetch is
/// [`Fetched::Unavailable`] at once rather than one more connection to memcached.
const MAX_READS: usize = 64;

/// Writes sent per round of the writer.
const BATCH: usize = 256;

/// Where the tier's memcached is, and its budgets.
#[derive(Clone, Debug)]
pub struct MemcachedConfig {
    /// The server's address.
    pub addr: SocketAddr,
    /// What every key starts with (printable ASCII, no space, at most 100 bytes).
    pub prefix: String,
    /// The budget of one prefetch (connect, `get`, `delete`): past it, the read is
    /// [`Fetched::Unavailable`].
    pub read_timeout: Duration,
    /// The budget of one write (connect and `set` or `delete`).
    pub write_timeout: Duration,
    /// The most writes queued; more are dropped and counted.
    pub queue: usize,
}

impl MemcachedConfig {
    /// The defaults for a server at `addr`: prefix `reprise:`, reads 20 ms, writes 1 s, a
    /// queue of 65536 writes.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            prefix: "reprise:".to_owned(),
            read_timeout: Duration::from_millis(20),
            write_timeout: Duration::from_secs(1),
            queue: 65536,
        }
    }
}

/// Why the tier could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// Not called inside a tokio runtime, which the writer task needs.
    #[error("the memcached tier needs a tokio runtime to run its writer")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The key prefix is too long or has a space or a control character.
    #[error(
        "memcached key prefix must be at most {MAX_PREFIX} printable ASCII bytes without spaces"
    )]
    BadPrefix,
}

/// A queued write.
enum Write {
    Set {
        key: String,
        value: Vec<u8>,
        exptime: u64,
    },
    Delete {
        key: String,
    },
}

struct Shared {
    config: MemcachedConfig,
    keys: KeyRing,
    queue: WriteQueue<Write>,
    counters: Counters,
    cx: OnceLock<TierContext>,
    pool: Mutex<Vec<Conn>>,
    reads: tokio::sync::Semaphore,
}

/// A [`Tier`] that shares sealed sessions through one memcached server.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use reprise::SessionCache;
/// use reprise_memcached_example::{MemcachedConfig, MemcachedTier};
/// let keys = reprise_seal::KeyRing::load("/etc/reprise/keys".as_ref())?;
/// let tier = MemcachedTier::start(MemcachedConfig::new("127.0.0.1:11211".parse()?), keys)?;
/// let cache = Arc::new(SessionCache::new());
/// cache.attach(Arc::new(tier));
/// # Ok(()) }
/// ```
pub struct MemcachedTier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemcachedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedTier")
            .field("addr", &self.shared.config.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MemcachedTier {
    fn drop(&mut self) {
        // The writer sends what is queued, then ends.
        self.shared.queue.close();
    }
}

/// Whether a key is for a single-use ticket (`t:`) or a reusable TLS 1.2 session (`s:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TLS 1.3 ticket, taken once.
    Ticket,
    /// A TLS 1.2 session, read any number of times.
    Session,
}

impl Kind {
    /// The kind a session is stored as.
    pub fn of(session: &Session) -> Kind {
        if session.version().is_reusable() {
            Kind::Session
        } else {
            Kind::Ticket
        }
    }
}

impl MemcachedTier {
    /// Starts the tier and its writer task on the current tokio runtime. memcached may be
    /// down: writes then fail (counted) and reads are unavailable until it is up.
    pub fn start(config: MemcachedConfig, keys: KeyRing) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(StartError::NoRuntime)?;
        let prefix = config.prefix.as_bytes();
        if prefix.len() > MAX_PREFIX || !prefix.iter().all(|b| b.is_ascii_graphic()) {
            return Err(StartError::BadPrefix);
        }
        let shared = Arc::new(Shared {
            queue: WriteQueue::new(config.queue),
            config,
            keys,
            counters: Counters::default(),
            cx: OnceLock::new(),
            pool: Mutex::new(Vec::new()),
            reads: tokio::sync::Semaphore::new(MAX_READS),
        });
        runtime.spawn(writer(Arc::clone(&shared)));
        Ok(Self { shared })
    }

    /// The memcached key of a session: the prefix, the kind, then the context and the id in
    /// hex.
    pub fn memcached_key(&self, kind: Kind, key: SessionKey<'_>) -> String {
        self.shared.key(kind, key)
    }

    /// Whether this tier is the last of its cache's stack, the one that decides takes (also
    /// before it is attached, or once its cache is gone).
    fn is_authority(&self) -> bool {
        self.shared
            .cx
            .get()
            .is_none_or(|cx| cx.cache().is_none() || cx.is_last())
    }

    /// The tier's counters now.
    pub fn stats(&self) -> MemcachedStats {
        let c = &self.shared.counters;
        let q = &self.shared.queue;
        c.writes_dropped
            .store(q.dropped(), std::sync::atomic::Ordering::Relaxed);
        c.write_queue
            .store(q.len() as u64, std::sync::atomic::Ordering::Relaxed);
        c.snapshot()
    }
}

impl Tier for MemcachedTier {
    fn name(&self) -> &str {
        NAME
    }

    /// Keeps the context, for the cache's clock.
    fn attach(&self, cx: TierContext) {
        let _ = self.shared.cx.set(cx);
    }

    /// Seals the session and queues a `set` that expires with it.
    fn store(&self, session: &SharedSession) {
        let shared = &self.shared;
        let now = shared.now();
        let Some(exptime) = exptime(session, now) else {
            return;
        };
        match seal_session(&shared.keys, NAME, session) {
            Ok(value) => {
                shared.queue.push(Write::Set {
                    key: shared.key(Kind::of(session), session.key()),
                    value,
                    exptime,
                });
            }
            Err(e) => warn!(error = %e, "cannot seal a session; not stored in memcached"),
        }
    }

    /// Never waits on the network: the read happens in [`prefetch`](Tier::prefetch).
    fn fetch(&self, _key: SessionKey<'_>) -> Fetched {
        Fetched::Unavailable
    }

    /// Never waits on the network: a ticket resumes only as the one a prefetch took for its
    /// connection.
    fn take(&self, _key: SessionKey<'_>) -> Fetched {
        Fetched::Unavailable
    }

    /// Deletes on an explicit removal, and on a take that another tier (the authority, below
    /// this one) decided: a take this tier decided already deleted the ticket. Evictions,
    /// expiry and flushes are each instance's own business.
    fn remove(&self, session: &SharedSession, why: Removal) {
        if why == Removal::Explicit || (why == Removal::Taken && !self.is_authority()) {
            let shared = &self.shared;
            shared.queue.push(Write::Delete {
                key: shared.key(Kind::of(session), session.key()),
            });
        }
    }

    /// A `get` (a TLS 1.2 session), or a take (`get`, then `delete`; see the crate's
    /// documentation), within the read budget.
    fn prefetch<'a>(&'a self, request: Request<'a>) -> Option<TierFuture<'a>> {
        let shared = &self.shared;
        Some(Box::pin(async move {
            let kind = if request.take {
                Kind::Ticket
            } else {
                Kind::Session
            };
            let fetched = shared.read(kind, request.key).await;
            let c = &shared.counters;
            Counters::bump(match fetched {
                Fetched::Hit(_) => &c.read_hits,
                Fetched::Unavailable => &c.reads_unavailable,
                Fetched::Miss | Fetched::Skipped => &c.read_misses,
            });
            fetched
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        self.stats().metrics()
    }
}

/// The `exptime` of a session: the second after its last valid one by the cache's clock (as
/// the cache would drop it), capped; `None` if already past. Absolute, unless the clock is not
/// a real Unix time (a manual clock near zero): memcached reads an `exptime` of 30 days or less
/// as seconds from now, so the seconds left are sent instead.
fn exptime(session: &Session, now: u64) -> Option<u64> {
    let at = session.keep_until(now, MAX_TTL_SECS)?;
    Some(if at > RELATIVE_LIMIT { at } else { at - now })
}

impl Shared {
    fn key(&self, kind: Kind, key: SessionKey<'_>) -> String {
        let tag = match kind {
            Kind::Ticket => "t:",
            Kind::Session => "s:",
        };
        format!(
            "{}{tag}{}:{}",
            self.config.prefix,
            hex::encode(key.sid_ctx),
            hex::encode(key.id)
        )
    }

    fn now(&self) -> u64 {
        match self.cx.get() {
            Some(cx) => cx.now(),
            None => reprise::Clock::now(&SystemClock),
        }
    }

    async fn conn(&self) -> std::io::Result<Conn> {
        let idle = self.pool.lock().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => Conn::connect(self.config.addr).await,
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL {
            pool.push(conn);
        }
    }

    async fn read(&self, kind: Kind, key: SessionKey<'_>) -> Fetched {
        let Ok(_permit) = self.reads.try_acquire() else {
            return Fetched::Unavailable;
        };
        let mkey = self.key(kind, key);
        // A connection that timed out mid-command is dropped, not reused.
        let read = timeout(self.config.read_timeout, async {
            let mut conn = self.conn().await?;
            let value = conn.get(&mkey).await?;
            Ok::<_, std::io::Error>((conn, value))
        })
        .await;
        let value = match read {
            Ok(Ok((conn, value))) => {
                self.give_back(conn);
                value
            }
            Ok(Err(e)) => {
                debug!(error = %e, "memcached read failed");
                return Fetched::Unavailable;
            }
            Err(_) => return Fetched::Unavailable,
        };
        let Some(value) = value else {
            return Fetched::Miss;
        };
        let session = match self.open(kind, key, &mkey, &value) {
            Some(session) => session,
            None => return Fetched::Miss,
        };
        if kind == Kind::Session {
            return Fetched::Hit(session);
        }
        // A take: the delete decides who won.
        let deleted = timeout(self.config.read_timeout, async {
            let mut conn = self.conn().await?;
            let deleted = conn.delete(&mkey).await?;
            Ok::<_, std::io::Error>((conn, deleted))
        })
        .await;
        match deleted {
            Ok(Ok((conn, true))) => {
                self.give_back(conn);
                Fetched::Hit(session)
            }
            Ok(Ok((conn, false))) => {
                self.give_back(conn);
                Counters::bump(&self.counters.takes_lost);
                Fetched::Miss
            }
            // Perhaps deleted, perhaps not: never resumed.
            Ok(Err(_)) | Err(_) => Fetched::Unavailable,
        }
    }

    /// Opens a value read under `mkey`: `None` if it does not open, or is not of the kind
    /// asked (a TLS 1.2 session moved under a ticket's key, or the reverse).
    fn open(
        &self,
        kind: Kind,
        key: SessionKey<'_>,
        mkey: &str,
        value: &[u8],
    ) -> Option<SharedSession> {
        let c = &self.counters;
        match open_session(&self.keys, NAME, key, value) {
            Ok(session) if Kind::of(&session) == kind => Some(session),
            Ok(_) => {
                Counters::bump(&c.rejected_values);
                None
            }
            Err(e) if e.is_unknown() => {
                Counters::bump(&c.unknown_key_values);
                None
            }
            Err(e) => {
                debug!(error = %e, "a value in memcached did not open; deleting it");
                Counters::bump(&c.rejected_values);
                self.queue.push(Write::Delete {
                    key: mkey.to_owned(),
                });
                None
            }
        }
    }
}

/// Sends the queued writes, one connection, reconnecting after a failure.
async fn writer(shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        shared.queue.ready().await;
        batch.clear();
        shared.queue.drain(BATCH, &mut batch);
        if batch.is_empty() && shared.queue.is_closed() {
            return;
        }
        for write in batch.drain(..) {
            let sent = timeout(shared.config.write_timeout, async {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => Conn::connect(shared.config.addr).await?,
                };
                let ok = match &write {
                    Write::Set {
                        key,
                        value,
                        exptime,
                    } => c.set(key, value, *exptime).await?,
                    // NOT_FOUND is fine: the session is gone either way.
                    Write::Delete { key } => {
                        c.delete(key).await?;
                        true
                    }
                };
                Ok::<_, std::io::Error>((c, ok))
            })
            .await;
            let counter = match sent {
                Ok(Ok((c, ok))) => {
                    conn = Some(c);
                    if ok {
                        &shared.counters.writes
                    } else {
                        &shared.counters.write_failures
                    }
                }
                _ => &shared.counters.write_failures,
            };
            Counters::bump(counter);
        }
    }
}
