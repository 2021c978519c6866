//! The fleet's session-ticket keys: a [`TicketKeySource`] that every instance on one Redis
//! shares, rotated by the clock, with no leader.
//!
//! The scheme, the Redis layout and the fail-open behaviour are documented on
//! [`FleetTicketKeys`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use parking_lot::Mutex;
use reprise::{Clock, Metric, SystemClock};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::config::RedisConfig;
use crate::conn::{Clients, Conn};
use crate::error::ConfigError;
use reprise_seal::tickets::{
    KeyId, Schedule, TicketKey, TicketKeySource, TicketKeys, TICKET_KEY_LEN,
};
use reprise_seal::{KeyRing, OpenError};

/// The source's name, in logs and metrics.
const NAME: &str = "redis";

/// The purpose bound into every sealed ticket key.
const PURPOSE: &[u8] = b"reprise fleet ticket key v1";

/// How long one Redis command (or a connection attempt) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest interval between two periodic reads.
const MAX_POLL: Duration = Duration::from_secs(30);

/// How often the background task looks at the clock for a period boundary (no I/O).
const TICK: Duration = Duration::from_millis(500);

/// The first and the longest delay before retrying a Redis that failed.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The bit set in the id of every local (fallback) key, and in no ring version.
const LOCAL_BIT: u64 = 1 << 63;

/// The associated data that binds a sealed ticket key to its Redis key (and so to its prefix,
/// its period length and its version): a fixed purpose, a zero byte, the key.
pub fn associated_data(redis_key: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(PURPOSE.len() + 1 + redis_key.len());
    ad.extend_from_slice(PURPOSE);
    ad.push(0);
    ad.extend_from_slice(redis_key.as_bytes());
    ad
}

reprise::tier_counters! {
    /// The fleet ring's counters. The gauges (`key_version`, `key_age_seconds`,
    /// `oldest_key_version`, `newest_key_version`, `keys_held`, `fallback_active`) are read
    /// from the ring when a snapshot is taken ([`FleetTicketKeys::stats`]).
    pub struct FleetCounters => FleetStats {
        /// Times the encrypting key changed after the first (rotations, fallbacks, returns to
        /// the fleet's key).
        rotations: Counter = "rotations_total",
        /// The version of the key that encrypts now (0 for a local key, or none).
        key_version: Gauge = "key_version",
        /// Seconds since the key that encrypts now started encrypting.
        key_age_seconds: Gauge = "key_age_seconds",
        /// The oldest version of the fleet's keys held (0: none).
        oldest_key_version: Gauge = "oldest_key_version",
        /// The newest version of the fleet's keys held (0: none).
        newest_key_version: Gauge = "newest_key_version",
        /// Keys held, the fleet's and local ones.
        keys_held: Gauge = "keys_held",
        /// Times this instance fell back to a local key of its own.
        fallbacks: Counter = "fallbacks_total",
        /// Whether a local key encrypts now (tickets resume only on this instance).
        fallback_active: Gauge = "fallback_active",
        /// Redis commands or connection attempts that failed or timed out.
        redis_errors: Counter = "redis_errors_total",
        /// Values in Redis that did not open as a ticket key (each distinct value once).
        malformed: Counter = "malformed_total",
        /// Keys this instance created in Redis (it won the race).
        created: Counter = "created_total",
        /// Announcements of new keys received from other instances.
        pubsub_messages: Counter = "pubsub_messages_total",
    }
}

/// One key held in memory.
struct Held {
    key: Arc<TicketKey>,
    /// The Unix time at which it started (or starts) encrypting.
    since: u64,
    /// The last period in which it encrypted (for a ring key that has not yet: its own); it is
    /// erased when period `last_encrypt + 2` starts.
    last_encrypt: u64,
    /// The period it was made for.
    slot: u64,
}

/// Which key encrypts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The fleet's key of that version.
    Fleet(u64),
    /// The newest local key.
    Local,
    /// None yet: the first read of Redis has not finished.
    Nothing,
}

/// The ring as this instance holds it.
struct State {
    /// The fleet's keys, by version.
    fleet: BTreeMap<u64, Held>,
    /// Local keys, oldest first.
    local: Vec<Held>,
    /// No read of Redis finished yet (success or failure): issue no tickets rather than fall
    /// back at once.
    initial: bool,
    /// Whether a local key encrypts.
    fallback: bool,
    /// The id, version (0 if local) and start of the key that encrypts.
    current: Option<KeyId>,
    current_version: u64,
    current_since: u64,
    /// The snapshot's generation.
    generation: u64,
    /// Fingerprints of malformed values already counted, by version.
    malformed: HashMap<u64, u64>,
    /// Versions erased from memory, still to delete from Redis.
    erased: BTreeSet<u64>,
}

/// What only the task that talks to Redis touches.
struct SyncState {
    conn: Option<Conn>,
    /// The last period whose stale keys were deleted from Redis.
    swept: Option<u64>,
}

struct Shared {
    config: RedisConfig,
    seal: KeyRing,
    clients: Clients,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
    lifetime: Duration,
    channel: String,
    instance: String,
    snapshot: ArcSwap<TicketKeys>,
    /// The period the snapshot was computed for.
    snapshot_slot: AtomicU64,
    state: Mutex<State>,
    sync: tokio::sync::Mutex<SyncState>,
    counters: FleetCounters,
    /// Wakes the background task (an announcement, a reload).
    wake: Notify,
    /// Whether the current period's fleet key encrypts.
    ready: watch::Sender<bool>,
    rng: SystemRandom,
}

/// The fleet's ticket keys, shared through Redis by every instance that uses the same Redis,
/// prefix, lifetime and key ring.
///
/// # The scheme
///
/// Time is cut into periods of one ticket lifetime, numbered from the Unix epoch
/// ([`Schedule`]). Key `n` (its [`KeyId`] is [`KeyId::from_version(n)`](KeyId::from_version)) is
/// the *next* key during period `n - 1`, encrypts during period `n` (*current*), only decrypts
/// during period `n + 1` (*previous*), and is erased when period `n + 2` starts. During period
/// `n` every instance therefore holds keys `n` and `n + 1`, and `n - 1` if it exists: it can
/// decrypt a ticket that any instance (even one whose clock runs a little ahead) issues.
///
/// # Redis layout
///
/// - `{prefix}ticket-key:{period_secs}:{n}`: key `n`'s 32-byte secret, sealed with the
///   [`KeyRing`] (`reprise-seal`, XChaCha20-Poly1305). The associated data binds a fixed purpose
///   and the whole Redis key ([`ticket_key_associated_data`](crate::ticket_key_associated_data)), so a value moved to another slot, another
///   period length or another prefix does not open. Nothing in Redis decrypts a ticket without
///   the key file. The value expires on its own three periods after its period started (two
///   periods after it stopped encrypting): the expiry is the backstop of the `DEL` below.
/// - `{prefix}ticket-keys`: the pub/sub channel on which an instance that created a key says
///   so (`{instance}:{n}`; never key material).
///
/// # Who creates a key
///
/// Whoever first finds a needed key (current or next) missing: it writes one with
/// `SET … NX EX …`, and if another instance won the race, reads the winner back (`GET`), so
/// racing instances converge on one key. If it still holds the key in memory (Redis restarted
/// empty), it writes back the key it holds rather than a new one, so the fleet keeps its ring.
/// It then publishes on the channel; every instance subscribes and re-reads on a message, and
/// also re-reads periodically (every `min(period / 4, 30 s)`), at every period boundary, and
/// when its subscription reconnects. A key found in Redis always wins over a copy held in
/// memory under the same version. At each boundary the keys of periods `n - 2` and before are
/// dropped from memory (each [`TicketKey`] wipes its secret when its last snapshot goes) and
/// deleted from Redis (best effort).
///
/// A value in Redis that does not open (not sealed, sealed for another slot, sealed under a
/// key this instance lacks, the wrong length) is treated as missing by this instance, counted
/// (`malformed_total`) and logged once; it is never overwritten (`SET NX` cannot) nor used.
///
/// # Fail-open
///
/// [`keys`](TicketKeySource::keys) is one atomic load; it never waits on Redis. When a period
/// boundary has passed and the background task has not run yet, it recomputes the snapshot
/// itself (no I/O), so promotion never depends on task scheduling.
///
/// - Redis unreachable: the instance keeps the ring it holds. At a boundary it promotes the
///   next key, which every instance already holds, so the fleet stays in step without Redis.
/// - No next key at a boundary: the current key stays current for one more period at most.
/// - At start, until the first attempt to reach Redis ends (a few seconds at most: every call
///   has its deadline), the snapshot encrypts with nothing: handshakes complete, without a
///   ticket. [`ready`](Self::ready) waits for the fleet's key.
/// - After the hold-over (or at start, if Redis cannot be reached and nothing is held), the
///   instance generates a key of its own: its id has the top bit set, so it never collides
///   with a ring version. One warning line, `fallbacks_total` counts it and `fallback_active` is 1;
///   tickets then resume only on this instance. A local key rotates every period too.
/// - Redis back: the instance adopts the fleet's keys (or creates them, as above), keeps its
///   local key for decrypting only, and erases it two periods after it last encrypted.
///
/// Every Redis call has a deadline; a failed read is retried with a growing delay (up to 5 s);
/// the connection reconnects by itself.
///
/// ```no_run
/// use std::time::Duration;
/// use reprise_redis::{FleetTicketKeys, KeyRing, RedisConfig};
/// use reprise_seal::tickets::TicketKeySource;
///
/// # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
/// let seal = KeyRing::load("/etc/reprise/keys".as_ref())?;
/// let config = RedisConfig::new("redis://10.0.0.5:6379".parse()?);
/// let keys = FleetTicketKeys::start(config, seal, Duration::from_secs(3600))?;
/// keys.ready(Duration::from_secs(2)).await;
/// let snapshot = keys.keys();
/// # drop(snapshot);
/// # Ok(()) }
/// ```
pub struct FleetTicketKeys {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl fmt::Debug for FleetTicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetTicketKeys")
            .field("target", &self.shared.config.target)
            .field("prefix", &self.shared.config.prefix)
            .field("lifetime", &self.shared.lifetime)
            .finish_non_exhaustive()
    }
}

impl Drop for FleetTicketKeys {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FleetTicketKeys {
    /// Starts following the fleet's ring on the current tokio runtime, by the system clock,
    /// with periods of `lifetime` (whole seconds, at least one). Redis need not be up: the
    /// source connects in the background, and falls back to a local key until then.
    pub fn start(
        config: RedisConfig,
        seal: KeyRing,
        lifetime: Duration,
    ) -> Result<Arc<Self>, ConfigError> {
        Self::start_with_clock(config, seal, lifetime, Arc::new(SystemClock))
    }

    /// [`start`](Self::start), reading the time from `clock` (tests move a
    /// [`ManualClock`](reprise::ManualClock)).
    pub fn start_with_clock(
        config: RedisConfig,
        seal: KeyRing,
        lifetime: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ConfigError> {
        let handle = tokio::runtime::Handle::try_current().map_err(ConfigError::NoRuntime)?;
        config.validate()?;
        let schedule = Schedule::new(lifetime).ok_or(ConfigError::Invalid {
            setting: "ticket lifetime",
            problem: "must be at least 1 s",
        })?;
        let clients = Clients::new(&config.target)?;
        let rng = SystemRandom::new();
        let mut instance = [0u8; 8];
        rng.fill(&mut instance).map_err(|_| ConfigError::Random)?;
        let slot = schedule.slot_at(clock.now());
        let shared = Arc::new(Shared {
            channel: format!("{}ticket-keys", config.prefix),
            instance: hex::encode(instance),
            config,
            seal,
            clients,
            clock,
            schedule,
            lifetime: schedule.period(),
            snapshot: ArcSwap::from_pointee(TicketKeys::new(None, Vec::new(), 0)),
            snapshot_slot: AtomicU64::new(slot),
            state: Mutex::new(State {
                fleet: BTreeMap::new(),
                local: Vec::new(),
                initial: true,
                fallback: false,
                current: None,
                current_version: 0,
                current_since: 0,
                generation: 0,
                malformed: HashMap::new(),
                erased: BTreeSet::new(),
            }),
            sync: tokio::sync::Mutex::new(SyncState {
                conn: None,
                swept: None,
            }),
            counters: FleetCounters::default(),
            wake: Notify::new(),
            ready: watch::Sender::new(false),
            rng,
        });
        let cancel = CancellationToken::new();
        handle.spawn(follow(shared.clone(), cancel.clone()));
        handle.spawn(listen(shared.clone(), cancel.clone()));
        Ok(Arc::new(Self { shared, cancel }))
    }

    /// Waits at most `timeout` until the key that encrypts is the fleet's key of the current
    /// period, read from (or written to) Redis; false if it is not by then (Redis down or
    /// slow: the source then serves a local key, and converges later).
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        let ready = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|ready| *ready)).await,
            Ok(Ok(_))
        );
        ready
    }

    /// Reads the fleet's keys from Redis now, creating those missing, as the background task
    /// does periodically; true if Redis answered every command.
    pub async fn refresh(&self) -> bool {
        self.shared.sync().await
    }

    /// Stops the background tasks (as dropping the source does). The keys held stay usable,
    /// and still promote at period boundaries, but are no longer read from Redis.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The Redis key of the ring key numbered `version`.
    pub fn redis_key(&self, version: u64) -> String {
        self.shared.redis_key(version)
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> FleetStats {
        let shared = &self.shared;
        let now = shared.clock.now();
        shared.refresh_snapshot(now);
        let mut stats = shared.counters.snapshot();
        let st = shared.state.lock();
        stats.key_version = st.current_version;
        stats.key_age_seconds = if st.current.is_some() {
            now.saturating_sub(st.current_since)
        } else {
            0
        };
        stats.oldest_key_version = st.fleet.keys().next().copied().unwrap_or(0);
        stats.newest_key_version = st.fleet.keys().next_back().copied().unwrap_or(0);
        stats.keys_held = (st.fleet.len() + st.local.len()) as u64;
        stats.fallback_active = u64::from(st.fallback);
        stats
    }
}

impl TicketKeySource for FleetTicketKeys {
    fn name(&self) -> &str {
        NAME
    }

    fn keys(&self) -> Arc<TicketKeys> {
        let shared = &self.shared;
        shared.refresh_snapshot(shared.clock.now());
        shared.snapshot.load_full()
    }

    fn lifetime(&self) -> Duration {
        self.shared.lifetime
    }

    /// Asks the background task to read Redis again now (on SIGHUP, say).
    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.shared.wake.notify_one();
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        self.stats().metrics()
    }
}

/// Why a value in Redis is not a ticket key.
enum Unusable {
    Open(OpenError),
    Length(usize),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Open(e) => write!(f, "{e}"),
            Unusable::Length(n) => write!(f, "opens to {n} bytes, not {TICKET_KEY_LEN}"),
        }
    }
}

impl Shared {
    fn redis_key(&self, version: u64) -> String {
        format!(
            "{}ticket-key:{}:{version}",
            self.config.prefix,
            self.schedule.period().as_secs()
        )
    }

    /// Recomputes the snapshot if the period changed since it was made (no I/O).
    fn refresh_snapshot(&self, now: u64) {
        let slot = self.schedule.slot_at(now);
        if slot != self.snapshot_slot.load(Ordering::Acquire) {
            let mut st = self.state.lock();
            // Another caller may have done it while this one waited.
            if slot != self.snapshot_slot.load(Ordering::Acquire) {
                self.recompute(&mut st, now);
            }
        }
    }

    /// Erases retired keys, chooses the key that encrypts, falls back to a local key if need
    /// be, and publishes a new snapshot if the keys changed.
    fn recompute(&self, st: &mut State, now: u64) {
        let n = self.schedule.slot_at(now);
        let erased: Vec<u64> = st
            .fleet
            .iter()
            .filter(|(_, h)| h.last_encrypt.saturating_add(2) <= n)
            .map(|(v, _)| *v)
            .collect();
        for v in erased {
            st.fleet.remove(&v);
            st.erased.insert(v);
            debug!(version = v, "ticket key erased");
        }
        st.local.retain(|h| h.last_encrypt.saturating_add(2) > n);

        let mut choice = if st.fleet.contains_key(&n) {
            Choice::Fleet(n)
        } else if let Some(prev) = n.checked_sub(1).filter(|p| st.fleet.contains_key(p)) {
            // No key for this period: the last one stays current, for one period at most.
            Choice::Fleet(prev)
        } else if st.initial {
            Choice::Nothing
        } else {
            Choice::Local
        };
        if choice == Choice::Local && st.local.last().is_none_or(|h| h.slot != n) {
            match self.local_key(now, n) {
                Some(held) => st.local.push(held),
                None => {
                    warn!("cannot draw a local ticket key (random generator failed); issuing no tickets");
                    choice = Choice::Nothing;
                }
            }
        }
        let chosen = match choice {
            Choice::Fleet(v) => st.fleet.get_mut(&v),
            Choice::Local => st.local.last_mut(),
            Choice::Nothing => None,
        };
        let (encrypt, since) = match chosen {
            Some(h) => {
                h.last_encrypt = h.last_encrypt.max(n);
                (Some(h.key.clone()), h.since)
            }
            None => (None, 0),
        };

        let fallback = choice == Choice::Local;
        if fallback && !st.fallback {
            FleetCounters::bump(&self.counters.fallbacks);
            warn!(
                period = n,
                "no fleet ticket key for this period (redis unreachable?): falling back to a local key; tickets resume only on this instance until the fleet converges"
            );
        } else if !fallback && st.fallback {
            if let Choice::Fleet(v) = choice {
                info!(version = v, "ticket keys converged with the fleet again");
            }
        }
        st.fallback = fallback;

        let id = encrypt.as_ref().map(|k| k.id());
        if id != st.current {
            let version = match choice {
                Choice::Fleet(v) => v,
                _ => 0,
            };
            let what = if st.current.is_some() {
                FleetCounters::bump(&self.counters.rotations);
                "ticket key rotated"
            } else {
                "ticket key in use"
            };
            // The id only: it is public (every ticket carries it in clear).
            match (choice, id) {
                (Choice::Fleet(v), _) => info!(version = v, source = "fleet", "{what}"),
                (_, Some(id)) => info!(id = %id, source = "local", "{what}"),
                _ => {}
            }
            st.current = id;
            st.current_version = version;
            st.current_since = since;
        }

        let mut others: Vec<Arc<TicketKey>> =
            st.fleet.values().rev().map(|h| h.key.clone()).collect();
        others.extend(st.local.iter().rev().map(|h| h.key.clone()));
        let old = self.snapshot.load();
        let same_encrypt = match (old.encrypting(), &encrypt) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let candidate = TicketKeys::new(encrypt, others, st.generation + 1);
        let same_decrypt = old.decrypting().len() == candidate.decrypting().len()
            && old
                .decrypting()
                .iter()
                .zip(candidate.decrypting())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !(same_encrypt && same_decrypt) {
            st.generation += 1;
            self.snapshot.store(Arc::new(candidate));
        }
        self.snapshot_slot.store(n, Ordering::Release);
        let ready = choice == Choice::Fleet(n);
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// A fresh local key for period `n`.
    fn local_key(&self, now: u64, n: u64) -> Option<Held> {
        let mut id = [0u8; 8];
        self.rng.fill(&mut id).ok()?;
        let id = u64::from_be_bytes(id) | LOCAL_BIT;
        let key = TicketKey::random(KeyId::from_version(id)).ok()?;
        Some(Held {
            key: Arc::new(key),
            since: now,
            last_encrypt: n,
            slot: n,
        })
    }

    /// Opens a value read from Redis as the ring key of `redis_key`.
    fn open_value(
        &self,
        redis_key: &str,
        value: &[u8],
    ) -> Result<Zeroizing<[u8; TICKET_KEY_LEN]>, Unusable> {
        let plain = self
            .seal
            .open(&associated_data(redis_key), value)
            .map_err(Unusable::Open)?;
        if plain.len() != TICKET_KEY_LEN {
            return Err(Unusable::Length(plain.len()));
        }
        let mut secret = Zeroizing::new([0u8; TICKET_KEY_LEN]);
        secret.copy_from_slice(&plain);
        Ok(secret)
    }

    /// Takes the value read for version `v` into the ring; false if it is unusable (counted
    /// and logged once per distinct value).
    fn adopt(&self, v: u64, redis_key: &str, value: &[u8]) -> bool {
        match self.open_value(redis_key, value) {
            Ok(secret) => {
                let mut st = self.state.lock();
                st.malformed.remove(&v);
                let last_encrypt = match st.fleet.get(&v) {
                    Some(held) if held.key.secret() == &*secret => return true,
                    Some(held) => {
                        info!(
                            version = v,
                            "the fleet's ticket key differs from the one held; adopting the fleet's"
                        );
                        held.last_encrypt
                    }
                    None => v,
                };
                let key = TicketKey::new(KeyId::from_version(v), *secret);
                st.fleet.insert(
                    v,
                    Held {
                        key: Arc::new(key),
                        since: self.schedule.starts(v),
                        last_encrypt,
                        slot: v,
                    },
                );
                true
            }
            Err(why) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                value.hash(&mut hasher);
                let fingerprint = hasher.finish();
                let mut st = self.state.lock();
                if st.malformed.insert(v, fingerprint) != Some(fingerprint) {
                    FleetCounters::bump(&self.counters.malformed);
                    warn!(
                        key = redis_key,
                        reason = %why,
                        "a ticket key in redis is unusable; ignored and left in place"
                    );
                }
                false
            }
        }
    }

    /// One Redis command, within its deadline.
    async fn call<T: redis::FromRedisValue>(&self, conn: &mut Conn, cmd: &redis::Cmd) -> Option<T> {
        match tokio::time::timeout(CALL_TIMEOUT, conn.query::<T>(cmd)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                FleetCounters::bump(&self.counters.redis_errors);
                debug!(error = %self.config.target.scrub(&e.to_string()), "redis command failed (ticket keys)");
                None
            }
            Err(_) => {
                FleetCounters::bump(&self.counters.redis_errors);
                debug!("redis command timed out (ticket keys)");
                None
            }
        }
    }

    /// Reads (and creates) the keys the current period needs, deletes retired ones, and
    /// recomputes the snapshot; true if Redis answered every command.
    async fn sync(&self) -> bool {
        let mut sync = self.sync.lock().await;
        let ok = self.sync_locked(&mut sync).await;
        let mut st = self.state.lock();
        st.initial = false;
        self.recompute(&mut st, self.clock.now());
        ok
    }

    async fn sync_locked(&self, sync: &mut SyncState) -> bool {
        if sync.conn.is_none() {
            match tokio::time::timeout(2 * CALL_TIMEOUT, self.clients.connect()).await {
                Ok(Ok(conn)) => sync.conn = Some(conn),
                Ok(Err(e)) => {
                    FleetCounters::bump(&self.counters.redis_errors);
                    debug!(error = %self.config.target.scrub(&e.to_string()), "cannot connect to redis (ticket keys)");
                    return false;
                }
                Err(_) => {
                    FleetCounters::bump(&self.counters.redis_errors);
                    debug!("connecting to redis timed out (ticket keys)");
                    return false;
                }
            }
        }
        let Some(mut conn) = sync.conn.clone() else {
            return false;
        };
        let now = self.clock.now();
        let n = self.schedule.slot_at(now);
        // Bring the memory up to this period first, so that what is erased is not read back.
        {
            let mut st = self.state.lock();
            self.recompute(&mut st, now);
        }
        let mut ok = true;
        let mut created = Vec::new();
        for v in [n.checked_sub(1), Some(n), n.checked_add(1)]
            .into_iter()
            .flatten()
        {
            let key = self.redis_key(v);
            let Some(value) = self
                .call::<Option<Vec<u8>>>(&mut conn, redis::cmd("GET").arg(&key))
                .await
            else {
                return false;
            };
            match value {
                Some(value) => {
                    self.adopt(v, &key, &value);
                }
                // The previous key is never created: only tickets it issued need it.
                None if v < n => {}
                None => match self.create(&mut conn, v, &key, now).await {
                    Some(true) => created.push(v),
                    Some(false) => {}
                    None => return false,
                },
            }
        }
        for v in created {
            let message = format!("{}:{v}", self.instance);
            ok &= self
                .call::<i64>(
                    &mut conn,
                    redis::cmd("PUBLISH").arg(&self.channel).arg(message),
                )
                .await
                .is_some();
        }
        // Delete what this instance erased, and the key of period n - 2 once per period (an
        // instance that never held it may be the only one up).
        let mut stale: BTreeSet<u64> = std::mem::take(&mut self.state.lock().erased);
        if sync.swept != Some(n) {
            stale.extend(n.checked_sub(2));
        }
        let mut failed = BTreeSet::new();
        for v in stale {
            if v.saturating_add(2) > n {
                continue;
            }
            if self
                .call::<i64>(&mut conn, redis::cmd("DEL").arg(self.redis_key(v)))
                .await
                .is_none()
            {
                failed.insert(v);
            }
        }
        if failed.is_empty() {
            sync.swept = Some(n);
        } else {
            ok = false;
            // Retried at the next read; Redis's expiry is the backstop. Bounded: only the
            // last few periods are worth a retry.
            let mut st = self.state.lock();
            st.erased
                .extend(failed.into_iter().filter(|v| v.saturating_add(5) > n));
        }
        ok
    }

    /// Writes key `v` if it is still missing: the copy held in memory if any, else a new
    /// random one. Then adopts the winner. `Some(true)` if this instance wrote it, `None` if
    /// Redis failed.
    async fn create(&self, conn: &mut Conn, v: u64, key: &str, now: u64) -> Option<bool> {
        let held = self.state.lock().fleet.get(&v).map(|h| h.key.clone());
        let fresh = held.is_none();
        let ticket_key = match held {
            Some(k) => k,
            None => match TicketKey::random(KeyId::from_version(v)) {
                Ok(k) => Arc::new(k),
                Err(_) => {
                    warn!("cannot draw a ticket key (random generator failed)");
                    return Some(false);
                }
            },
        };
        let sealed = match self.seal.seal(&associated_data(key), ticket_key.secret()) {
            Ok(sealed) => sealed,
            Err(e) => {
                warn!(error = %e, "cannot seal a ticket key");
                return Some(false);
            }
        };
        // Gone by itself two periods after it stops encrypting, by this instance's clock.
        let ttl = self
            .schedule
            .starts(v.saturating_add(3))
            .saturating_sub(now)
            .max(1);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(sealed).arg("NX").arg("EX").arg(ttl);
        let written = self.call::<redis::Value>(conn, &set).await?;
        if !matches!(written, redis::Value::Nil) {
            // Ours won: adopt it as written.
            let mut st = self.state.lock();
            st.malformed.remove(&v);
            st.fleet.entry(v).or_insert_with(|| Held {
                key: ticket_key,
                since: self.schedule.starts(v),
                last_encrypt: v,
                slot: v,
            });
            if fresh {
                FleetCounters::bump(&self.counters.created);
                info!(version = v, "created the fleet's ticket key");
            } else {
                info!(
                    version = v,
                    "wrote back the fleet's ticket key held in memory"
                );
            }
            return Some(true);
        }
        // Another instance won the race: read its key back.
        let winner = self
            .call::<Option<Vec<u8>>>(conn, redis::cmd("GET").arg(key))
            .await?;
        if let Some(value) = winner {
            self.adopt(v, key, &value);
        }
        Some(false)
    }
}

/// Follows the ring: reads Redis at start, on announcements, periodically, and at every
/// period boundary; retries a failing Redis with a growing delay.
async fn follow(shared: Arc<Shared>, cancel: CancellationToken) {
    let poll = (shared.schedule.period() / 4).min(MAX_POLL);
    let mut backoff = MIN_BACKOFF;
    loop {
        let ok = tokio::select! {
            _ = cancel.cancelled() => return,
            ok = shared.sync() => ok,
        };
        let wait = if ok {
            backoff = MIN_BACKOFF;
            poll
        } else {
            let wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            wait
        };
        let deadline = Instant::now() + wait;
        let slot = shared.schedule.slot_at(shared.clock.now());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = shared.wake.notified() => break,
                _ = tokio::time::sleep(left.min(TICK)) => {}
            }
            if shared.schedule.slot_at(shared.clock.now()) != slot {
                break;
            }
        }
    }
}

/// Listens for the fleet's announcements, reconnecting with a growing delay; wakes the
/// follower on each (and after each reconnection).
async fn listen(shared: Arc<Shared>, cancel: CancellationToken) {
    let Ok(client) = redis::Client::open(shared.config.target.pubsub_url()) else {
        return;
    };
    let mut delay = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(2 * CALL_TIMEOUT, client.get_async_pubsub()) => r,
        };
        if let Ok(Ok(mut pubsub)) = connected {
            if pubsub.subscribe(&shared.channel).await.is_ok() {
                delay = MIN_BACKOFF;
                shared.wake.notify_one();
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(message) = message else { break };
                    let from = message.get_payload_bytes().split(|b| *b == b':').next();
                    if from != Some(shared.instance.as_bytes()) {
                        FleetCounters::bump(&shared.counters.pubsub_messages);
                        shared.wake.notify_one();
                    }
                }
                debug!("ticket key subscription lost; reconnecting");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
