//! The disk tier: sessions that survive a restart, for a server that runs alone.
//!
//! New sessions are sealed and queued; one writer thread applies the queue to the database in
//! batches, purges expired sessions in the background, and keeps the file under its cap by
//! evicting the sessions that expire soonest. Nothing on the handshake path waits for a write:
//! at start, [`DiskTier::warm`] loads the stored sessions into the in-memory cache (call it off
//! the async runtime); after that, the cache's get and take callbacks read the file (a read of
//! the page cache, microseconds, never behind the writer) only for what memory no longer holds
//! and for the single use of TLS 1.3 tickets. Writes still in the queue are visible to those
//! reads, so a ticket stored or taken a moment ago is seen as such.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use reprise::{Removal, Session, SessionCache, SessionKey};
use reprise_seal::{open_session, seal_session, KeyRing, OpenError};
use tracing::{info, warn};

use crate::error::DiskError;
use crate::pending::{InFlight, Pending};
use crate::quiet::catch_quietly;
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

/// How often the writer wakes to write out the queue.
const TICK: Duration = Duration::from_millis(10);

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
    /// Sessions taken or removed before their turn to be written: never written.
    pub stores_skipped: u64,
    /// Writes dropped because the queue was full.
    pub writes_dropped_full: u64,
    /// Batches of writes that failed.
    pub write_failures: u64,
    /// Deletions that never reached the file (the queue was full, or their batch failed). Any
    /// at all, and the shutdown is not marked clean: the next start drops the stored TLS 1.3
    /// tickets, since one of them may have been used.
    pub deletes_lost: u64,
    /// Expired sessions purged.
    pub purged_expired: u64,
    /// Sessions evicted to keep the file under its cap.
    pub evicted_for_size: u64,
    /// Stored values that did not open (forged, corrupt, sealed for another tier): deleted.
    pub rejected_values: u64,
    /// Stored values sealed with a key not in the ring, or in a seal format this build does not
    /// know: misses, and kept (a rolling update of the key file, or of the binary, must not
    /// throw sessions away).
    pub unknown_key_values: u64,
    /// Sessions loaded into the cache at start.
    pub warmed: u64,
    /// Reads (get or take) that found a session that opened.
    pub read_hits: u64,
    /// Reads that found nothing (or a session already taken or removed).
    pub read_misses: u64,
    /// Reads not made because the file was being compacted: misses, never a wait.
    pub reads_skipped: u64,
    /// Reads that failed in the database.
    pub read_errors: u64,
    /// Takes refused because the session is a TLS 1.2 one, which is not single-use.
    pub refused_takes: u64,
    /// The database file's size.
    pub file_bytes: u64,
    /// Writes not yet in the file that reads take into account (a gauge).
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    stores_queued: AtomicU64,
    stores_written: AtomicU64,
    deletes_written: AtomicU64,
    stores_skipped: AtomicU64,
    writes_dropped_full: AtomicU64,
    write_failures: AtomicU64,
    deletes_lost: AtomicU64,
    purged_expired: AtomicU64,
    evicted_for_size: AtomicU64,
    rejected_values: AtomicU64,
    unknown_key_values: AtomicU64,
    warmed: AtomicU64,
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    reads_skipped: AtomicU64,
    read_errors: AtomicU64,
    refused_takes: AtomicU64,
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
    store: Arc<RwLock<Store>>,
    pending: Arc<Mutex<Pending>>,
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

/// Creates the cache directory (and its missing parents) with mode 0700. An existing one is
/// left as it is (it may be the operator's), with a warning if group or others can enter it.
fn private_dir(dir: &Path) -> Result<(), DiskError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let existed = dir.is_dir();
    builder
        .create(dir)
        .map_err(|e| DiskError::Io(format!("cannot create {}: {e}", dir.display())))?;
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
    file.write_all(line.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
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
        private_dir(&dir)?;
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
        let marker = dir.join(CLEAN_MARKER);
        let marked_clean = marker.exists();
        let (store, recovery, dropped_tls13) = Store::open(&dir, !marked_clean)?;
        let unclean = recovery == Recovery::Opened && !marked_clean;
        if marked_clean {
            std::fs::remove_file(&marker)
                .map_err(|e| DiskError::Io(format!("cannot remove {}: {e}", marker.display())))?;
        }
        if unclean {
            warn!(dropped = dropped_tls13, "the last run did not shut down cleanly: dropped the stored TLS 1.3 tickets, which may have been used");
        }
        let counters = Arc::new(Counters::default());
        counters
            .file_bytes
            .store(store.file_bytes(), Ordering::Relaxed);
        let store = Arc::new(RwLock::new(store));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, rx) = mpsc::sync_channel(config.write_queue);
        let writer = {
            let shared = Writer {
                store: store.clone(),
                pending: pending.clone(),
                counters: counters.clone(),
                max_bytes: config.max_bytes,
                interval: config.purge_interval,
            };
            std::thread::Builder::new()
                .name("reprise-disk".into())
                .spawn(move || shared.run(&rx))
                .map_err(|e| DiskError::Io(format!("cannot start the disk writer: {e}")))?
        };
        let tier = DiskTier {
            inner: Arc::new(Inner {
                keys,
                store,
                pending,
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

    /// Plugs the tier into a cache as its external cache: new sessions are stored; a lookup
    /// that memory misses reads the file (get); a TLS 1.3 ticket is taken through the file,
    /// atomically (take), so it resumes once even if memory had evicted it; and sessions
    /// removed explicitly or found expired are deleted. Evictions, flushes and the cache's own
    /// shutdown leave the disk alone: those sessions are still good after a restart.
    pub fn install(&self, cache: &SessionCache) {
        let tier = self.clone();
        cache.set_new_session_callback(Some(Arc::new(move |_, session| {
            tier.store(session);
            true
        })));
        let tier = self.clone();
        cache.set_remove_session_callback(Some(Arc::new(move |_, session, why| {
            // A take already deleted the session (see `take`); the others concern the file.
            if matches!(why, Removal::Explicit | Removal::Expired) {
                tier.delete(session);
            }
        })));
        let tier = self.clone();
        cache.set_get_session_callback(Some(Arc::new(move |_, key| tier.get(*key).map(Arc::new))));
        let tier = self.clone();
        cache
            .set_take_session_callback(Some(Arc::new(move |_, key| tier.take(*key).map(Arc::new))));
    }

    /// Loads the stored sessions that are still valid into `cache`, newest first, up to its
    /// size limit. Blocking: run it on a thread of its own (`spawn_blocking`).
    pub fn warm(&self, cache: &SessionCache) -> u64 {
        let limit = match cache.size_limit() {
            0 => usize::MAX,
            n => n,
        };
        // The file was checked when it opened; a panic here (a file changed since) is caught
        // all the same, and the server starts without its sessions.
        let rows = match catch_quietly(|| self.inner.store.read().newest(cache.now(), limit)) {
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
                "disk",
                SessionKey::new(id, ctx),
                &stored.sealed,
            ) {
                Ok(session) => {
                    cache.add(&Arc::new(session));
                    warmed += 1;
                }
                Err(e) => {
                    if self.rejected(e) {
                        self.queue(Op::Delete { key, seq: 0 });
                    }
                }
            }
        }
        add(&self.inner.counters.warmed, warmed);
        warmed
    }

    /// Reads a session: a write still queued for it counts (a stored one is found, a deleted
    /// one is not). A value that does not open is a miss, counted and deleted. Blocking, for
    /// microseconds: it never waits for the writer.
    pub fn get(&self, key: SessionKey<'_>) -> Option<Session> {
        let tk = table_key(key);
        let in_flight = self.inner.pending.lock().get(&tk).cloned();
        let session = match in_flight {
            Some(InFlight::Delete) => None,
            Some(InFlight::Store(sealed)) => self.open_value(key, &sealed),
            None => self
                .read(&tk)
                .and_then(|sealed| self.open_value(key, &sealed)),
        };
        self.count_read(session.is_some());
        session
    }

    /// Takes a session: reads it as [`get`](Self::get) does and, in the same step, marks it
    /// deleted and queues its deletion, so that of any number of takes one gets it. A TLS 1.2
    /// session ([`ProtocolVersion::is_reusable`](reprise::ProtocolVersion::is_reusable)) is not
    /// single-use: it is neither handed out nor deleted.
    pub fn take(&self, key: SessionKey<'_>) -> Option<Session> {
        let tk = table_key(key);
        // Takes hold the in-flight table throughout: they are serialized, and each sees the
        // deletions of those before it.
        let mut pending = self.inner.pending.lock();
        let sealed: Option<Arc<[u8]>> = match pending.get(&tk) {
            Some(InFlight::Delete) => None,
            Some(InFlight::Store(sealed)) => Some(sealed.clone()),
            None => self.read(&tk).map(Arc::from),
        };
        let session = match sealed {
            None => None,
            Some(sealed) => match open_session(&self.inner.keys, "disk", key, &sealed) {
                Ok(session) => Some(session),
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
                    None
                }
            },
        };
        let Some(session) = session else {
            self.count_read(false);
            return None;
        };
        if session.version().is_reusable() {
            add(&self.inner.counters.refused_takes, 1);
            return None;
        }
        let seq = pending.insert(tk.clone(), InFlight::Delete, session.expires_at());
        self.queue_locked(&mut pending, Op::Delete { key: tk, seq });
        self.count_read(true);
        Some(session)
    }

    /// The sealed value stored under a table key, from the file. Never waits: while the file
    /// is being compacted, this is a miss.
    fn read(&self, tk: &[u8]) -> Option<Vec<u8>> {
        let Some(store) = self.inner.store.try_read() else {
            add(&self.inner.counters.reads_skipped, 1);
            return None;
        };
        match store.get(tk) {
            Ok(found) => found.map(|s| s.sealed),
            Err(e) => {
                add(&self.inner.counters.read_errors, 1);
                warn!(error = %e, "cannot read the session database");
                None
            }
        }
    }

    fn count_read(&self, hit: bool) {
        let c = &self.inner.counters;
        add(if hit { &c.read_hits } else { &c.read_misses }, 1);
    }

    fn open_value(&self, key: SessionKey<'_>, sealed: &[u8]) -> Option<Session> {
        match open_session(&self.inner.keys, "disk", key, sealed) {
            Ok(s) => Some(s),
            Err(e) => {
                if self.rejected(e) {
                    self.queue(Op::Delete {
                        key: table_key(key),
                        seq: 0,
                    });
                }
                None
            }
        }
    }

    /// Counts a stored value that did not open; true if it is to be deleted. One sealed with a
    /// key this ring lacks, or in an unknown format, is a miss that stays: another instance, or
    /// this one after the key file is updated, opens it.
    fn rejected(&self, e: OpenError) -> bool {
        let c = &self.inner.counters;
        if e.is_unknown() {
            add(&c.unknown_key_values, 1);
            false
        } else {
            add(&c.rejected_values, 1);
            true
        }
    }

    /// Seals a session and queues it for writing. Until it is written, reads find it here.
    pub fn store(&self, session: &Session) {
        let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
        let sealed: Arc<[u8]> = match seal_session(&self.inner.keys, "disk", session) {
            Ok(sealed) => sealed.into(),
            Err(e) => {
                warn!(error = %e, "cannot seal a session; not stored on disk");
                return;
            }
        };
        let tk = table_key(key);
        let expiry = session.expires_at();
        let mut pending = self.inner.pending.lock();
        let seq = pending.insert(tk.clone(), InFlight::Store(sealed.clone()), expiry);
        let op = Op::Store {
            key: tk,
            expiry,
            version: session.version(),
            sealed,
            seq,
        };
        if self.queue_locked(&mut pending, op) {
            add(&self.inner.counters.stores_queued, 1);
        }
    }

    /// Queues the deletion of a session. Until it is written, reads miss it.
    pub fn delete(&self, session: &Session) {
        let tk = table_key(SessionKey::new(
            session.id().as_bytes(),
            session.sid_ctx().as_bytes(),
        ));
        let mut pending = self.inner.pending.lock();
        let seq = pending.insert(tk.clone(), InFlight::Delete, session.expires_at());
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
        let c = &self.inner.counters;
        let is_delete = matches!(op, Op::Delete { .. });
        let writes = self.inner.writes.lock();
        let sent = writes
            .as_ref()
            .is_some_and(|tx| match tx.try_send(Msg::Op(op)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            });
        if !sent {
            add(&c.writes_dropped_full, 1);
            if is_delete {
                add(&c.deletes_lost, 1);
            }
        }
        sent
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

    /// Writes out the queue, stops the writer and, if every deletion reached the file, marks
    /// the shutdown clean, so that the next start keeps the stored TLS 1.3 tickets. If one was
    /// lost ([`DiskStats::deletes_lost`]), the next start drops them: a ticket whose deletion
    /// is lost may have been used. Blocking; later writes are dropped.
    pub fn close(&self) {
        self.flush();
        drop(self.inner.writes.lock().take());
        if let Some(writer) = self.inner.writer.lock().take() {
            let _ = writer.join();
        }
        let lost = self.inner.counters.deletes_lost.load(Ordering::Relaxed);
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
        let c = &self.inner.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            stores_queued: r(&c.stores_queued),
            stores_written: r(&c.stores_written),
            deletes_written: r(&c.deletes_written),
            stores_skipped: r(&c.stores_skipped),
            writes_dropped_full: r(&c.writes_dropped_full),
            write_failures: r(&c.write_failures),
            deletes_lost: r(&c.deletes_lost),
            purged_expired: r(&c.purged_expired),
            evicted_for_size: r(&c.evicted_for_size),
            rejected_values: r(&c.rejected_values),
            unknown_key_values: r(&c.unknown_key_values),
            warmed: r(&c.warmed),
            read_hits: r(&c.read_hits),
            read_misses: r(&c.read_misses),
            reads_skipped: r(&c.reads_skipped),
            read_errors: r(&c.read_errors),
            refused_takes: r(&c.refused_takes),
            file_bytes: r(&c.file_bytes),
            in_flight: self.inner.pending.lock().len() as u64,
        }
    }
}

/// What the writer thread works on.
struct Writer {
    store: Arc<RwLock<Store>>,
    pending: Arc<Mutex<Pending>>,
    counters: Arc<Counters>,
    max_bytes: u64,
    interval: Duration,
}

impl Writer {
    /// Applies queued writes in batches, purges the expired on a timer, and keeps the file
    /// under `max_bytes`. Ends when every sender is gone.
    fn run(&self, rx: &mpsc::Receiver<Msg>) {
        // The data may take about half the file: redb's pages, its copy-on-write and the
        // expiry index take the rest (measured: a file of 1.8 times the data).
        let mut budget = self.max_bytes / 2;
        let mut last_purge = Instant::now();
        let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
        let mut flushed: Vec<SyncSender<()>> = Vec::new();
        let mut full = false;
        loop {
            // The writer wakes on its own clock and drains the queue: a send never wakes it
            // (that would cost every handshake a context switch), and every commit is an
            // fsync, so fewer, larger transactions are cheaper too. Reads see queued writes.
            if !full {
                std::thread::sleep(TICK);
            }
            let mut stop = false;
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
            full = batch.len() == BATCH;
            if !batch.is_empty() {
                self.apply(&mut batch);
            }
            let (over, file_bytes) = {
                let store = self.store.read();
                let file_bytes = store.file_bytes();
                (
                    store.data_bytes() > budget || file_bytes > self.max_bytes,
                    file_bytes,
                )
            };
            if over || last_purge.elapsed() >= self.interval {
                last_purge = Instant::now();
                self.keep_under_cap(&mut budget);
                self.pending.lock().forget_expired(unix_now());
            }
            self.counters.file_bytes.store(
                if over {
                    self.store.read().file_bytes()
                } else {
                    file_bytes
                },
                Ordering::Relaxed,
            );
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            if stop {
                return;
            }
        }
    }

    /// Writes a batch in one transaction, then settles its in-flight records. If the batch
    /// failed, the records of its deletions stay (until the sessions expire): a session that
    /// was taken must not be read back from the file.
    fn apply(&self, batch: &mut Vec<Op>) {
        // A session deleted later in the same batch (a ticket used within the tick) need not
        // be written at all: its store is skipped, its deletion kept (an older copy may be in
        // the file).
        let mut deleted_later = HashSet::new();
        let mut skip = vec![false; batch.len()];
        for (i, op) in batch.iter().enumerate().rev() {
            match op {
                Op::Delete { key, .. } => {
                    deleted_later.insert(key.as_slice());
                }
                Op::Store { key, .. } => skip[i] = deleted_later.contains(key.as_slice()),
            }
        }
        let skipped = skip.iter().filter(|s| **s).count();
        add(&self.counters.stores_skipped, skipped as u64);
        let ops = batch
            .iter()
            .zip(&skip)
            .filter(|(_, s)| !**s)
            .map(|(op, _)| op);
        let result = self.store.read().apply(ops);
        let ok = match result {
            Ok((stored, deleted)) => {
                add(&self.counters.stores_written, stored);
                add(&self.counters.deletes_written, deleted);
                true
            }
            Err(e) => {
                add(&self.counters.write_failures, 1);
                let deletes = batch
                    .iter()
                    .filter(|op| matches!(op, Op::Delete { .. }))
                    .count();
                add(&self.counters.deletes_lost, deletes as u64);
                warn!(error = %e, writes = batch.len(), "cannot write sessions to disk");
                false
            }
        };
        let mut pending = self.pending.lock();
        for op in batch.drain(..) {
            if ok || matches!(op, Op::Store { .. }) {
                let (key, seq) = op.entry();
                pending.settle(key, seq);
            }
        }
    }

    /// Purges the expired and, if the data or the file is over budget, the sessions that
    /// expire soonest; compacts the file when it is over its cap (lowering the data budget if
    /// needed). Only compaction keeps readers out, and they do not wait: they miss.
    fn keep_under_cap(&self, budget: &mut u64) {
        for _ in 0..8 {
            match self.store.read().purge(unix_now(), *budget) {
                Ok((expired, evicted)) => {
                    add(&self.counters.purged_expired, expired);
                    add(&self.counters.evicted_for_size, evicted);
                }
                Err(e) => {
                    warn!(error = %e, "cannot purge the session database");
                    return;
                }
            }
            if self.store.read().file_bytes() <= self.max_bytes {
                return;
            }
            let mut store = self.store.write();
            if let Err(e) = store.compact() {
                warn!(error = %e, "cannot compact the session database");
                return;
            }
            if store.file_bytes() <= self.max_bytes {
                return;
            }
            *budget = *budget * 3 / 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise::{ProtocolVersion, Role, SecretBytes};

    fn ticket(id: u8) -> Session {
        match Session::builder(&[id; 32], SecretBytes::from(vec![id; 48]))
            .sid_ctx(b"ctx")
            .version(ProtocolVersion::TLS1_3)
            .time(unix_now())
            .timeout_secs(300)
            .build()
        {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// With the writer held off the file, every read must come from the in-flight writes.
    #[test]
    fn reads_see_writes_the_writer_has_not_applied() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (tier, _) = DiskTier::open(DiskConfig::new(dir.path()), None)?;
        let cache = Arc::new(SessionCache::new());
        tier.install(&cache);
        let key = SessionKey::new(&[1; 32], b"ctx");
        {
            let _compacting = tier.inner.store.write();
            cache.new_session(Role::Server, ticket(1));
            assert!(tier.get(key).is_some(), "a queued store is visible");
            assert!(cache.take(Role::Server, key).is_some());
            assert!(
                cache.take(Role::Server, key).is_none(),
                "a queued take is visible"
            );
            assert!(tier.get(key).is_none());
            // A file read meanwhile would wait: it is skipped instead.
            assert!(tier.get(SessionKey::new(&[2; 32], b"ctx")).is_none());
            assert_eq!(tier.stats().reads_skipped, 1);
            assert!(tier.stats().in_flight >= 1);
        }
        tier.flush();
        assert!(tier.get(key).is_none());
        assert_eq!(tier.stats().in_flight, 0);
        tier.close();
        Ok(())
    }

    /// Attack 10: a ticket whose deletion never reached the file (the queue was full while
    /// the file was being compacted) must not resume after a clean restart.
    #[test]
    fn a_lost_deletion_leaves_no_clean_marker() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut config = DiskConfig::new(dir.path());
        config.write_queue = 2;
        let (tier, _) = DiskTier::open(config.clone(), None)?;
        let mut lost = None;
        {
            // Compaction holds the writer off the file: the queue fills and stays full.
            let _compacting = tier.inner.store.write();
            let mut filler = 100u8;
            for id in 1..=50u8 {
                // A ticket stored (its write queued), then the queue filled, then the ticket
                // used: its deletion finds the queue full.
                let queued = tier.stats().stores_queued;
                tier.store(&ticket(id));
                if tier.stats().stores_queued == queued {
                    continue;
                }
                let before = tier.stats().writes_dropped_full;
                for _ in 0..100_000 {
                    if tier.stats().writes_dropped_full > before {
                        break;
                    }
                    filler = filler.wrapping_add(1).max(100);
                    tier.store(&ticket(filler));
                }
                let dropped = tier.stats().writes_dropped_full;
                assert!(tier.take(SessionKey::new(&[id; 32], b"ctx")).is_some());
                if tier.stats().writes_dropped_full > dropped {
                    lost = Some(id);
                    break;
                }
            }
        }
        let lost = lost.ok_or("no deletion was dropped")?;
        assert!(tier.stats().deletes_lost >= 1, "{:?}", tier.stats());
        tier.close();
        assert!(!dir.path().join(CLEAN_MARKER).exists());
        drop(tier);

        let (tier, startup) = DiskTier::open(config, None)?;
        let cache = Arc::new(SessionCache::new());
        tier.install(&cache);
        tier.warm(&cache);
        assert!(startup.unclean, "{startup:?}");
        assert!(
            cache
                .take(Role::Server, SessionKey::new(&[lost; 32], b"ctx"))
                .is_none(),
            "ticket {lost} was used, its deletion lost, and it resumed after a restart"
        );
        tier.close();
        Ok(())
    }
}
