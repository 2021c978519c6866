//! The disk tier: sessions that survive a restart, for a server that runs alone.
//!
//! New sessions are sealed and queued; one writer thread applies the queue to the database in
//! batches, purges expired sessions in the background, and keeps the file under its cap by
//! evicting the sessions that expire soonest. Nothing on the handshake path waits on the disk:
//! at start, [`DiskTier::warm`] loads the stored sessions into the in-memory cache (call it off
//! the async runtime), and from then on the cache answers from memory.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use reprise::{Removal, Session, SessionCache, SessionKey};
use reprise_seal::{open_session, seal_session, KeyRing};
use tracing::{info, warn};

use crate::error::DiskError;
use crate::store::{split_key, table_key, Op, Recovery, Store};

/// The key file's name inside the cache directory, when no key file is given.
pub const KEY_FILE: &str = "key";

/// The marker a clean shutdown leaves, and a start removes.
const CLEAN_MARKER: &str = "clean-shutdown";

/// The default cap on the database file.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The smallest cap accepted.
pub const MIN_MAX_BYTES: u64 = 1 << 20;

/// Writes applied in one transaction, at most.
const BATCH: usize = 1024;

/// The disk tier's settings.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The directory that holds the database (and, if no key file is given, the key).
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

/// A snapshot of the tier's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Sessions queued for writing.
    pub stores_queued: u64,
    /// Sessions written.
    pub stores_written: u64,
    /// Deletions written.
    pub deletes_written: u64,
    /// Writes dropped because the queue was full.
    pub writes_dropped_full: u64,
    /// Batches of writes that failed.
    pub write_failures: u64,
    /// Expired sessions purged.
    pub purged_expired: u64,
    /// Sessions evicted to keep the file under its cap.
    pub evicted_for_size: u64,
    /// Stored values that did not open (forged, corrupt, sealed with an unknown key): deleted.
    pub rejected_values: u64,
    /// Sessions loaded into the cache at start.
    pub warmed: u64,
    /// The database file's size.
    pub file_bytes: u64,
}

#[derive(Default)]
struct Counters {
    stores_queued: AtomicU64,
    stores_written: AtomicU64,
    deletes_written: AtomicU64,
    writes_dropped_full: AtomicU64,
    write_failures: AtomicU64,
    purged_expired: AtomicU64,
    evicted_for_size: AtomicU64,
    rejected_values: AtomicU64,
    warmed: AtomicU64,
    file_bytes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

enum Msg {
    Op(Op),
    /// Apply everything queued so far, then answer.
    Flush(SyncSender<()>),
}

struct Inner {
    keys: KeyRing,
    store: Arc<Mutex<Store>>,
    writes: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    dir: PathBuf,
}

impl Drop for Inner {
    /// Stops the writer (after it applies what is queued) without marking the shutdown clean:
    /// only [`DiskTier::close`] does that.
    fn drop(&mut self) {
        drop(self.writes.lock().take());
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

/// Sessions on disk, sealed, for a server that restarts. Clones share one tier.
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads the key ring from `dir/key`, or generates that file (mode 0600) on first start.
fn own_key(dir: &Path) -> Result<(KeyRing, PathBuf, bool), DiskError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let ring = KeyRing::load(&path).map_err(|e| DiskError::Key(e.to_string()))?;
        return Ok((ring, path, false));
    }
    let line = KeyRing::generate_line(&format!("disk-{}", unix_now()))
        .map_err(|e| DiskError::Key(e.to_string()))?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| DiskError::Key(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(format!("{}\n", &*line).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| DiskError::Key(format!("cannot write {}: {e}", path.display())))?;
    let ring = KeyRing::parse(&line).map_err(|e| DiskError::Key(e.to_string()))?;
    Ok((ring, path, true))
}

impl DiskTier {
    /// Opens the tier in `config.dir`, sealing with `keys` or, without them, with a key file it
    /// keeps in the directory (generated on first start, mode 0600). Starts the writer thread.
    ///
    /// A database file that cannot be read is moved aside (one warning in the log) and the tier
    /// starts empty. After an unclean shutdown, stored TLS 1.3 sessions are dropped.
    pub fn open(config: DiskConfig, keys: Option<KeyRing>) -> Result<(Self, Startup), DiskError> {
        if config.max_bytes < MIN_MAX_BYTES {
            return Err(DiskError::Invalid(format!(
                "cache-dir-max-bytes must be at least {MIN_MAX_BYTES} (1 MiB)"
            )));
        }
        if config.write_queue == 0 {
            return Err(DiskError::Invalid(
                "the disk write queue must hold at least 1 write".into(),
            ));
        }
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| DiskError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let (keys, key_file) = match keys {
            Some(keys) => (keys, None),
            None => {
                let (ring, path, generated) = own_key(&dir)?;
                if generated {
                    info!(
                        key_file = %path.display(),
                        "generated a key for the session cache on disk; whoever holds it can read the stored sessions until they expire: keep the cache timeout short, or give --redis-key-file kept off this disk"
                    );
                }
                (ring, Some((path, generated)))
            }
        };
        let (mut store, recovery) = Store::open(&dir)?;
        let marker = dir.join(CLEAN_MARKER);
        let unclean = recovery == Recovery::Opened && !marker.exists();
        if marker.exists() {
            std::fs::remove_file(&marker)
                .map_err(|e| DiskError::Io(format!("cannot remove {}: {e}", marker.display())))?;
        }
        let dropped_tls13 = if unclean {
            let n = store
                .drop_tls13()
                .map_err(|e| DiskError::Db(e.to_string()))?;
            warn!(dropped = n, "the last run did not shut down cleanly: dropped the stored TLS 1.3 tickets, which may have been used");
            n
        } else {
            0
        };
        let counters = Arc::new(Counters::default());
        counters
            .file_bytes
            .store(store.file_bytes(), Ordering::Relaxed);
        let store = Arc::new(Mutex::new(store));
        let (tx, rx) = mpsc::sync_channel(config.write_queue);
        let writer = {
            let (store, counters) = (store.clone(), counters.clone());
            let (max_bytes, interval) = (config.max_bytes, config.purge_interval);
            std::thread::Builder::new()
                .name("reprise-disk".into())
                .spawn(move || writer(&store, &counters, &rx, max_bytes, interval))
                .map_err(|e| DiskError::Io(format!("cannot start the disk writer: {e}")))?
        };
        let tier = DiskTier {
            inner: Arc::new(Inner {
                keys,
                store,
                writes: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                counters,
                dir,
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

    /// Plugs the tier into a cache: new sessions are stored, and sessions removed explicitly,
    /// taken (TLS 1.3) or found expired are deleted. Evictions, flushes and the cache's own
    /// shutdown leave the disk alone: those sessions are still good after a restart.
    pub fn install(&self, cache: &SessionCache) {
        let tier = self.clone();
        cache.set_new_session_callback(Some(Arc::new(move |_, session| {
            tier.store(session);
            true
        })));
        let tier = self.clone();
        cache.set_remove_session_callback(Some(Arc::new(move |_, session, why| {
            if matches!(why, Removal::Explicit | Removal::Taken | Removal::Expired) {
                tier.delete(SessionKey::new(
                    session.id().as_bytes(),
                    session.sid_ctx().as_bytes(),
                ));
            }
        })));
    }

    /// Loads the stored sessions that are still valid into `cache`, newest first, up to its
    /// size limit. Blocking: run it on a thread of its own (`spawn_blocking`).
    pub fn warm(&self, cache: &SessionCache) -> u64 {
        let limit = match cache.size_limit() {
            0 => usize::MAX,
            n => n,
        };
        let rows = match self.inner.store.lock().newest(cache.now(), limit) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "cannot read the session database; starting without its sessions");
                return 0;
            }
        };
        let mut warmed = 0;
        for (key, stored) in rows {
            let Some((ctx, id)) = split_key(&key) else {
                continue;
            };
            match open_session(&self.inner.keys, SessionKey::new(id, ctx), &stored.sealed) {
                Ok(session) => {
                    cache.add(&Arc::new(session));
                    warmed += 1;
                }
                Err(_) => {
                    add(&self.inner.counters.rejected_values, 1);
                    self.queue(Op::Delete { key });
                }
            }
        }
        add(&self.inner.counters.warmed, warmed);
        warmed
    }

    /// Reads a session, validated: a value that does not open is a miss, counted and deleted.
    /// Blocking.
    pub fn get(&self, key: SessionKey<'_>) -> Option<Session> {
        let stored = self.inner.store.lock().get(&table_key(key)).ok()??;
        self.open_value(key, &stored.sealed)
    }

    /// Reads and deletes a session, under the store's lock: it is handed out once. Blocking.
    /// A TLS 1.2 session ([`ProtocolVersion::is_reusable`](reprise::ProtocolVersion::is_reusable))
    /// is not single-use: it is neither handed out nor deleted.
    pub fn take(&self, key: SessionKey<'_>) -> Option<Session> {
        let mut store = self.inner.store.lock();
        let stored = store.get(&table_key(key)).ok()??;
        let session = self.open_value(key, &stored.sealed)?;
        if session.version().is_reusable() {
            return None;
        }
        store.take(&table_key(key)).ok()??;
        Some(session)
    }

    fn open_value(&self, key: SessionKey<'_>, sealed: &[u8]) -> Option<Session> {
        match open_session(&self.inner.keys, key, sealed) {
            Ok(s) => Some(s),
            Err(_) => {
                add(&self.inner.counters.rejected_values, 1);
                self.delete(key);
                None
            }
        }
    }

    /// Seals a session and queues it for writing.
    pub fn store(&self, session: &Session) {
        let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
        match seal_session(&self.inner.keys, session) {
            Ok(sealed) => {
                let op = Op::Store {
                    key: table_key(key),
                    expiry: session.expires_at(),
                    version: session.version(),
                    sealed,
                };
                if self.queue(op) {
                    add(&self.inner.counters.stores_queued, 1);
                }
            }
            Err(e) => warn!(error = %e, "cannot seal a session; not stored on disk"),
        }
    }

    /// Queues a deletion.
    pub fn delete(&self, key: SessionKey<'_>) {
        self.queue(Op::Delete {
            key: table_key(key),
        });
    }

    fn queue(&self, op: Op) -> bool {
        let writes = self.inner.writes.lock();
        let Some(tx) = writes.as_ref() else {
            return false;
        };
        match tx.try_send(Msg::Op(op)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                add(&self.inner.counters.writes_dropped_full, 1);
                false
            }
        }
    }

    /// Waits until every write queued so far is on disk. Blocking.
    pub fn flush(&self) {
        let tx = self.inner.writes.lock().clone();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    /// Writes out the queue, stops the writer and marks the shutdown clean, so that the next
    /// start keeps the stored TLS 1.3 tickets. Blocking; later writes are dropped.
    pub fn close(&self) {
        self.flush();
        drop(self.inner.writes.lock().take());
        if let Some(writer) = self.inner.writer.lock().take() {
            let _ = writer.join();
        }
        let marker = self.inner.dir.join(CLEAN_MARKER);
        if let Err(e) = std::fs::write(&marker, b"") {
            warn!(error = %e, file = %marker.display(), "cannot mark the shutdown clean");
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DiskStats {
        let c = &self.inner.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            stores_queued: r(&c.stores_queued),
            stores_written: r(&c.stores_written),
            deletes_written: r(&c.deletes_written),
            writes_dropped_full: r(&c.writes_dropped_full),
            write_failures: r(&c.write_failures),
            purged_expired: r(&c.purged_expired),
            evicted_for_size: r(&c.evicted_for_size),
            rejected_values: r(&c.rejected_values),
            warmed: r(&c.warmed),
            file_bytes: r(&c.file_bytes),
        }
    }
}

/// The writer thread: applies queued writes in batches, purges the expired on a timer, and
/// keeps the file under `max_bytes`. Ends when every sender is gone.
fn writer(
    store: &Mutex<Store>,
    counters: &Counters,
    rx: &mpsc::Receiver<Msg>,
    max_bytes: u64,
    interval: Duration,
) {
    // The data may take about half the file: redb's pages, its copy-on-write and the expiry
    // index take the rest (measured: a file of 1.8 times the data).
    let mut budget = max_bytes / 2;
    let mut last_purge = Instant::now();
    let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
    let mut flushed: Vec<SyncSender<()>> = Vec::new();
    loop {
        let wait = interval
            .saturating_sub(last_purge.elapsed())
            .max(Duration::from_millis(1));
        let mut stop = false;
        match rx.recv_timeout(wait) {
            Ok(Msg::Op(op)) => batch.push(op),
            Ok(Msg::Flush(done)) => flushed.push(done),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stop = true,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Flush(done)) => flushed.push(done),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            }
        }
        let mut store = store.lock();
        if !batch.is_empty() {
            match store.apply(&batch) {
                Ok((stored, deleted)) => {
                    add(&counters.stores_written, stored);
                    add(&counters.deletes_written, deleted);
                }
                Err(e) => {
                    add(&counters.write_failures, 1);
                    warn!(error = %e, writes = batch.len(), "cannot write sessions to disk");
                }
            }
            batch.clear();
        }
        let over = store.data_bytes > budget || store.file_bytes() > max_bytes;
        if over || last_purge.elapsed() >= interval {
            last_purge = Instant::now();
            keep_under_cap(&mut store, counters, max_bytes, &mut budget);
        }
        counters
            .file_bytes
            .store(store.file_bytes(), Ordering::Relaxed);
        drop(store);
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if stop {
            return;
        }
    }
}

/// Purges the expired and, if the data or the file is over budget, the sessions that expire
/// soonest; compacts the file when it is over its cap (lowering the data budget if needed).
fn keep_under_cap(store: &mut Store, counters: &Counters, max_bytes: u64, budget: &mut u64) {
    for _ in 0..8 {
        match store.purge(unix_now(), *budget) {
            Ok((expired, evicted)) => {
                add(&counters.purged_expired, expired);
                add(&counters.evicted_for_size, evicted);
            }
            Err(e) => {
                warn!(error = %e, "cannot purge the session database");
                return;
            }
        }
        if store.file_bytes() <= max_bytes {
            return;
        }
        if let Err(e) = store.compact() {
            warn!(error = %e, "cannot compact the session database");
            return;
        }
        if store.file_bytes() <= max_bytes {
            return;
        }
        *budget = *budget * 3 / 4;
    }
}
