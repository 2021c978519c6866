//! The disk tier: sessions that survive a restart, as a [`reprise::Tier`].
//!
//! New sessions are sealed and queued ([`Tier::store`]); the writer thread ([`crate::writer`])
//! applies the queue to the database in batches, purges expired sessions in the background, and
//! keeps the file under its cap by evicting the sessions that expire soonest. Nothing on the
//! handshake path waits for a write: at start, [`DiskTier::warm`] loads the stored sessions into
//! the in-memory cache (call it off the async runtime); after that, the cache reads the file (a
//! read of the page cache, microseconds, never behind the writer) only for what memory no longer
//! holds ([`Tier::fetch`]) and, when the disk is the last tier, for the single use of TLS 1.3
//! tickets ([`Tier::take`]). Writes still in the queue are visible to those reads, so a ticket
//! stored or taken a moment ago is seen as such.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use reprise::{
    Clock, Fetched, Metric, Removal, SessionCache, SessionKey, SharedSession, SystemClock, Tier,
    TierContext,
};
use reprise_seal::{open_session, seal_session, KeyRing, OpenError};
use tracing::{info, warn};

use crate::error::DiskError;
use crate::pending::{InFlight, Pending};
use crate::quiet::catch_quietly;
use crate::stats::{add, DiskStats};
use crate::store::{split_key, table_key, Op, Recovery, Store};
use crate::writer::{Shared, Writer};

/// The tier's name: in logs and metric names, and bound into what it seals.
pub const NAME: &str = "disk";

/// The key file's name inside the cache directory, when no key ring is given.
pub const KEY_FILE: &str = "key";

/// The marker a clean shutdown leaves, and a start removes.
pub(crate) const CLEAN_MARKER: &str = "clean-shutdown";

/// The default cap on the database file.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The smallest cap accepted.
pub const MIN_MAX_BYTES: u64 = 1 << 20;

/// How long a deletion learned from a tier below ([`Tier::forget`]) guards reads when the
/// session's own expiry cannot be read (the file is being compacted): the longest a TLS 1.3
/// ticket may live.
const FORGET_GUARD_SECS: u64 = 7 * 86_400;

/// The disk tier's settings.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The directory that holds the database (and, if no key ring is given, the key file).
    pub dir: PathBuf,
    /// The database file never grows beyond this many bytes (default 64 MiB).
    pub max_bytes: u64,
    /// Writes waiting for the writer; when full, new writes are dropped and counted.
    pub write_queue: usize,
    /// How often expired sessions are purged.
    pub purge_interval: Duration,
}

impl DiskConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            write_queue: 65536,
            purge_interval: Duration::from_secs(10),
        }
    }
}

/// What happened when the tier started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// How the database file opened.
    pub recovery: Recovery,
    /// Whether the previous run ended without a clean shutdown.
    pub unclean: bool,
    /// TLS 1.3 sessions dropped because of it: one may have been used without its deletion
    /// reaching the file, and a ticket must never resume twice.
    pub dropped_tls13: u64,
    /// The key file, and whether it was generated now.
    pub key_file: Option<(PathBuf, bool)>,
}

struct Inner {
    keys: KeyRing,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    /// The cache the tier is attached to.
    cx: OnceLock<TierContext>,
}

impl Inner {
    /// Writes out the queue and stops the writer.
    fn stop_writer(&self) {
        self.shared.stop();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Inner {
    /// Stops the writer (after it applies what is queued) without marking the shutdown clean:
    /// only [`DiskTier::close`] does that.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// Sessions on disk, sealed, for a server that restarts: a [`Tier`] to attach under the
/// in-memory cache ([`SessionCache::attach`]), above a shared tier if there is one. Clones
/// share one tier.
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Creates the cache directory (and its missing parents) with mode 0700. An existing one is
/// left as it is (it may be the operator's), with a warning if group or others can enter it.
fn private_dir(dir: &Path) -> Result<(), DiskError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let existed = dir.is_dir();
    builder.create(dir).map_err(|source| DiskError::Io {
        action: "create the cache directory",
        path: dir.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    if existed {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_or(0, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            warn!(
                dir = %dir.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the cache directory is open to group or others; the files in it are private (0600), but consider chmod 700"
            );
        }
    }
    Ok(())
}

/// Loads the key ring from `dir/key`, or generates that file (mode 0600) on first start, with a
/// key named after the time `now`.
fn own_key(dir: &Path, now: u64) -> Result<(KeyRing, PathBuf, bool), DiskError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let ring = KeyRing::load(&path).map_err(DiskError::Key)?;
        return Ok((ring, path, false));
    }
    let line = KeyRing::generate_line(&format!("disk-{now}")).map_err(DiskError::Key)?;
    let io = |action| {
        let path = path.clone();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io("create the key file"))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io("write the key file"))?;
    let ring = KeyRing::parse(&line).map_err(DiskError::Key)?;
    Ok((ring, path, true))
}

/// What the file had under a key.
enum FileRead {
    Found(Vec<u8>),
    Absent,
    /// Not read: the file is being compacted, or the read failed.
    Unavailable,
}

impl DiskTier {
    /// Opens the tier in `config.dir`, sealing with `keys` or, without them, with a key file it
    /// keeps in the directory (generated on first start, mode 0600). Starts the writer thread.
    ///
    /// A database file that cannot be read is moved aside (one warning in the log) and the tier
    /// starts empty. After an unclean shutdown, stored TLS 1.3 sessions are dropped.
    ///
    /// Until the tier is attached to a cache, its writer reads the time from the system clock;
    /// after, from the cache's.
    pub fn open(config: DiskConfig, keys: Option<KeyRing>) -> Result<(Self, Startup), DiskError> {
        if config.max_bytes < MIN_MAX_BYTES {
            return Err(DiskError::MaxBytes {
                max_bytes: config.max_bytes,
                min: MIN_MAX_BYTES,
            });
        }
        if config.write_queue == 0 {
            return Err(DiskError::WriteQueue);
        }
        let now = SystemClock.now();
        let dir = config.dir.clone();
        private_dir(&dir)?;
        let (keys, key_file) = match keys {
            Some(keys) => (keys, None),
            None => {
                let (ring, path, generated) = own_key(&dir, now)?;
                if generated {
                    info!(
                        key_file = %path.display(),
                        "generated a key for the session cache on disk; whoever holds it can read the stored sessions until they expire: keep the cache timeout short, or give a key ring kept off this disk"
                    );
                }
                (ring, Some((path, generated)))
            }
        };
        let marker = dir.join(CLEAN_MARKER);
        let marked_clean = marker.exists();
        let (store, recovery, dropped_tls13) = Store::open(&dir, !marked_clean, now)?;
        let unclean = recovery == Recovery::Opened && !marked_clean;
        if marked_clean {
            std::fs::remove_file(&marker).map_err(|source| DiskError::Io {
                action: "remove the clean-shutdown marker",
                path: marker.clone(),
                source,
            })?;
        }
        if unclean {
            warn!(dropped = dropped_tls13, "the last run did not shut down cleanly: dropped the stored TLS 1.3 tickets, which may have been used");
        }
        let shared = Arc::new(Shared::new(store, config.write_queue));
        let writer = Writer {
            shared: Arc::clone(&shared),
            max_bytes: config.max_bytes,
            interval: config.purge_interval,
        };
        let writer = std::thread::Builder::new()
            .name("reprise-disk".into())
            .spawn(move || writer.run())
            .map_err(DiskError::Writer)?;
        let tier = DiskTier {
            inner: Arc::new(Inner {
                keys,
                shared,
                writer: Mutex::new(Some(writer)),
                dir,
                cx: OnceLock::new(),
            }),
        };
        Ok((
            tier,
            Startup {
                recovery,
                unclean,
                dropped_tls13,
                key_file,
            },
        ))
    }

    /// Loads the stored sessions that are still valid (by the cache's clock) into `cache`,
    /// newest first, up to its size limit. Blocking: run it on a thread of its own
    /// (`spawn_blocking`).
    pub fn warm(&self, cache: &SessionCache) -> u64 {
        let limit = match cache.size_limit() {
            0 => usize::MAX,
            n => n,
        };
        let shared = &*self.inner.shared;
        // The file was checked when it opened; a panic here (a file changed since) is caught
        // all the same, and the server starts without its sessions.
        let rows = match catch_quietly(|| shared.store.read().newest(cache.now(), limit)) {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the session database; starting without its sessions");
                return 0;
            }
            Err(panic) => {
                warn!(error = %panic, "cannot read the session database; starting without its sessions");
                return 0;
            }
        };
        let mut warmed = 0;
        for (key, stored) in rows {
            let Some((ctx, id)) = split_key(&key) else {
                continue;
            };
            match open_session(
                &self.inner.keys,
                NAME,
                SessionKey::new(id, ctx),
                &stored.sealed,
            ) {
                Ok(session) => {
                    cache.add(&session);
                    warmed += 1;
                }
                Err(e) => {
                    if self.rejected(e) {
                        self.queue(Op::Delete { key, seq: 0 });
                    }
                }
            }
        }
        add(&shared.counters.warmed, warmed);
        warmed
    }

    /// Reads a session: a write still queued for it counts (a stored one is found, a deleted
    /// one is not). A value that does not open is a miss, counted and deleted. Blocking, for
    /// microseconds: it never waits for the writer.
    fn get(&self, key: SessionKey<'_>) -> Fetched {
        let tk = table_key(key);
        let in_flight = self.inner.shared.pending.lock().get(&tk).cloned();
        let found = match in_flight {
            Some(InFlight::Delete) => Fetched::Miss,
            Some(InFlight::Store(sealed)) => self.open_value(key, &sealed),
            None => match self.read(&tk) {
                FileRead::Found(sealed) => self.open_value(key, &sealed),
                FileRead::Absent => Fetched::Miss,
                FileRead::Unavailable => Fetched::Unavailable,
            },
        };
        self.count_read(matches!(found, Fetched::Hit(_)));
        found
    }

    /// Takes a session: reads it as [`get`](Self::get) does and, in the same step, marks it
    /// deleted and queues its deletion, so that of any number of takes one gets it. A TLS 1.2
    /// session ([`ProtocolVersion::is_reusable`](reprise::ProtocolVersion::is_reusable)) is not
    /// single-use: it is neither handed out nor deleted.
    fn take_session(&self, key: SessionKey<'_>) -> Fetched {
        let shared = &*self.inner.shared;
        let tk = table_key(key);
        // Takes hold the in-flight table throughout: they are serialized, and each sees the
        // deletions of those before it.
        let mut pending = shared.pending.lock();
        let sealed: Arc<[u8]> = match pending.get(&tk) {
            Some(InFlight::Delete) => {
                self.count_read(false);
                return Fetched::Miss;
            }
            Some(InFlight::Store(sealed)) => sealed.clone(),
            None => match self.read(&tk) {
                FileRead::Found(sealed) => Arc::from(sealed),
                FileRead::Absent => {
                    self.count_read(false);
                    return Fetched::Miss;
                }
                FileRead::Unavailable => {
                    self.count_read(false);
                    return Fetched::Unavailable;
                }
            },
        };
        let session = match open_session(&self.inner.keys, NAME, key, &sealed) {
            Ok(session) => session,
            Err(e) => {
                if self.rejected(e) {
                    self.queue_locked(
                        &mut pending,
                        Op::Delete {
                            key: tk.clone(),
                            seq: 0,
                        },
                    );
                }
                self.count_read(false);
                return Fetched::Miss;
            }
        };
        if session.version().is_reusable() {
            add(&shared.counters.refused_takes, 1);
            return Fetched::Miss;
        }
        let seq = pending.insert(tk.clone(), InFlight::Delete, session.expires_at());
        self.queue_locked(&mut pending, Op::Delete { key: tk, seq });
        self.count_read(true);
        Fetched::Hit(session)
    }

    /// The sealed value stored under a table key, from the file. Never waits: while the file
    /// is being compacted, the file is not read.
    fn read(&self, tk: &[u8]) -> FileRead {
        let shared = &*self.inner.shared;
        let Some(store) = shared.store.try_read() else {
            add(&shared.counters.reads_skipped, 1);
            return FileRead::Unavailable;
        };
        match store.get(tk) {
            Ok(Some(stored)) => FileRead::Found(stored.sealed),
            Ok(None) => FileRead::Absent,
            Err(e) => {
                add(&shared.counters.read_errors, 1);
                warn!(error = %e, "cannot read the session database");
                FileRead::Unavailable
            }
        }
    }

    fn count_read(&self, hit: bool) {
        let c = &self.inner.shared.counters;
        add(if hit { &c.read_hits } else { &c.read_misses }, 1);
    }

    fn open_value(&self, key: SessionKey<'_>, sealed: &[u8]) -> Fetched {
        match open_session(&self.inner.keys, NAME, key, sealed) {
            Ok(s) => Fetched::Hit(s),
            Err(e) => {
                if self.rejected(e) {
                    self.queue(Op::Delete {
                        key: table_key(key),
                        seq: 0,
                    });
                }
                Fetched::Miss
            }
        }
    }

    /// Counts a stored value that did not open; true if it is to be deleted. One sealed with a
    /// key this ring lacks, or in an unknown format, is a miss that stays: another instance, or
    /// this one after the key file is updated, opens it.
    fn rejected(&self, e: OpenError) -> bool {
        let c = &self.inner.shared.counters;
        if e.is_unknown() {
            add(&c.unknown_key_values, 1);
            false
        } else {
            add(&c.rejected_values, 1);
            true
        }
    }

    /// Seals a session and queues it for writing. Until it is written, reads find it here.
    fn store_session(&self, session: &SharedSession) {
        let shared = &*self.inner.shared;
        let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
        let sealed: Arc<[u8]> = match seal_session(&self.inner.keys, NAME, session) {
            Ok(sealed) => sealed.into(),
            Err(e) => {
                warn!(error = %e, "cannot seal a session; not stored on disk");
                return;
            }
        };
        let tk = table_key(key);
        let expiry = session.expires_at();
        let mut pending = shared.pending.lock();
        let seq = pending.insert(tk.clone(), InFlight::Store(sealed.clone()), expiry);
        let op = Op::Store {
            key: tk,
            expiry,
            version: session.version(),
            sealed,
            seq,
        };
        if self.queue_locked(&mut pending, op) {
            add(&shared.counters.stores_queued, 1);
        }
    }

    /// Queues the deletion of the session under a table key, which expires at `expiry`. Until
    /// it is written, reads miss it.
    fn delete(&self, tk: Vec<u8>, expiry: u64) {
        let mut pending = self.inner.shared.pending.lock();
        let seq = pending.insert(tk.clone(), InFlight::Delete, expiry);
        self.queue_locked(&mut pending, Op::Delete { key: tk, seq });
    }

    /// Queues a write recorded in the in-flight table (held by the caller); if the queue is
    /// full, the record of a store is dropped with it. The record of a dropped deletion stays
    /// until the session expires, so that what was deleted is never read back.
    fn queue_locked(&self, pending: &mut Pending, op: Op) -> bool {
        let (key, seq) = op.entry();
        let (key, seq, store) = (key.to_vec(), seq, matches!(op, Op::Store { .. }));
        let queued = self.queue(op);
        if !queued && store {
            pending.settle(&key, seq);
        }
        queued
    }

    fn queue(&self, op: Op) -> bool {
        let shared = &*self.inner.shared;
        let is_delete = matches!(op, Op::Delete { .. });
        let queued = shared.queue.push(op);
        if !queued {
            add(&shared.counters.writes_dropped_full, 1);
            if is_delete {
                add(&shared.counters.deletes_lost, 1);
            }
        }
        queued
    }

    /// Waits until every write queued so far is on disk. Blocking.
    pub fn flush(&self) {
        self.inner.shared.flush();
    }

    /// Writes out the queue, stops the writer and, if every deletion reached the file, marks
    /// the shutdown clean, so that the next start keeps the stored TLS 1.3 tickets. If one was
    /// lost ([`DiskStats::deletes_lost`]), the next start drops them: a ticket whose deletion
    /// is lost may have been used. Blocking; later writes are dropped.
    pub fn close(&self) {
        self.inner.stop_writer();
        let lost = self
            .inner
            .shared
            .counters
            .deletes_lost
            .load(Ordering::Relaxed);
        if lost > 0 {
            warn!(
                deletes_lost = lost,
                "deletions did not reach the session database; not marking the shutdown clean, so the next start drops the stored TLS 1.3 tickets"
            );
            return;
        }
        let marker = self.inner.dir.join(CLEAN_MARKER);
        if let Err(e) = std::fs::write(&marker, b"") {
            warn!(error = %e, file = %marker.display(), "cannot mark the shutdown clean");
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DiskStats {
        let shared = &*self.inner.shared;
        let mut stats = shared.counters.snapshot();
        stats.in_flight = shared.pending.lock().len() as u64;
        stats
    }
}

impl Tier for DiskTier {
    fn name(&self) -> &str {
        NAME
    }

    /// Keeps the context: from now on the writer reads the time from the cache's clock. A
    /// tier is attached to one cache; a second attach keeps the first cache's clock.
    fn attach(&self, cx: TierContext) {
        let clock = Arc::clone(cx.clock());
        if self.inner.cx.set(cx).is_err() {
            warn!("the disk tier is attached to a second cache; it keeps the first's clock");
            return;
        }
        let _ = self.inner.shared.clock.set(clock);
    }

    fn store(&self, session: &SharedSession) {
        self.store_session(session);
    }

    fn fetch(&self, key: SessionKey<'_>) -> Fetched {
        self.get(key)
    }

    fn take(&self, key: SessionKey<'_>) -> Fetched {
        self.take_session(key)
    }

    /// Deletes a session removed explicitly, taken, or found expired; keeps one that memory
    /// evicted, flushed or dropped (still good after a restart: memory's business, not the
    /// disk's), or that was never stored (declined).
    fn remove(&self, session: &SharedSession, why: Removal) {
        let tk = table_key(SessionKey::new(
            session.id().as_bytes(),
            session.sid_ctx().as_bytes(),
        ));
        match why {
            Removal::Explicit | Removal::Expired => {}
            // When the disk is the last tier, its own take deleted the session already.
            Removal::Taken => {
                if matches!(
                    self.inner.shared.pending.lock().get(&tk),
                    Some(InFlight::Delete)
                ) {
                    return;
                }
            }
            _ => return,
        }
        self.delete(tk, session.expires_at());
    }

    /// Deletes the session under `key`: a tier below learned that it was removed elsewhere.
    fn forget(&self, key: SessionKey<'_>) {
        let shared = &*self.inner.shared;
        let tk = table_key(key);
        let in_flight = {
            let pending = shared.pending.lock();
            match pending.get(&tk) {
                Some(InFlight::Delete) => return,
                Some(InFlight::Store(_)) => pending.expiry(&tk),
                None => None,
            }
        };
        // The deletion guards reads until the session expires: its expiry, from the in-flight
        // store or from the file.
        let expiry = match in_flight {
            Some(expiry) => expiry,
            None => match shared.store.try_read().map(|s| s.get(&tk)) {
                Some(Ok(Some(stored))) => stored.expiry,
                Some(Ok(None)) => return,
                Some(Err(_)) | None => shared.now() + FORGET_GUARD_SECS,
            },
        };
        add(&shared.counters.forgotten, 1);
        self.delete(tk, expiry);
    }

    fn metrics(&self) -> Vec<Metric> {
        self.stats().metrics()
    }
}

#[cfg(test)]
#[path = "tier_tests.rs"]
mod tests;
