//! The database file: sealed sessions in redb, indexed by expiry, kept under a size cap, and
//! recovered (or set aside) when it cannot be opened.
//!
//! Two tables. `sessions` maps a session's key (context length, context, id) to its expiry (8
//! bytes, big-endian), its protocol version (2) and the sealed session. `by_expiry` maps the
//! expiry followed by the key to nothing: purging the expired, and evicting the oldest when the
//! file reaches its cap, walk it from the front.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use reprise::{ProtocolVersion, SessionKey};

use crate::error::{DbFailure, DiskError};
use crate::quiet::catch_quietly;

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const BY_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("by_expiry");

/// Bytes before the sealed session in a `sessions` value.
const VALUE_HEADER: usize = 8 + 2;

/// The database's file name inside the cache directory.
pub(crate) const FILE_NAME: &str = "sessions.redb";

/// A session's key in the tables: context length, context, id.
pub(crate) fn table_key(key: SessionKey<'_>) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.sid_ctx.len() + key.id.len());
    k.push(key.sid_ctx.len() as u8);
    k.extend_from_slice(key.sid_ctx);
    k.extend_from_slice(key.id);
    k
}

/// The context and id back out of a table key; `None` if it is malformed.
pub(crate) fn split_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = k.split_first()?;
    let len = usize::from(len);
    (rest.len() > len).then(|| rest.split_at(len))
}

fn expiry_key(expiry: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expiry.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// A stored session: what the value holds besides the sealed bytes.
pub(crate) struct Stored {
    pub(crate) expiry: u64,
    pub(crate) version: ProtocolVersion,
    pub(crate) sealed: Vec<u8>,
}

fn parse_value(v: &[u8]) -> Option<Stored> {
    if v.len() < VALUE_HEADER {
        return None;
    }
    let (head, sealed) = v.split_at(VALUE_HEADER);
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&head[..8]);
    Some(Stored {
        expiry: u64::from_be_bytes(expiry),
        version: ProtocolVersion(u16::from_be_bytes([head[8], head[9]])),
        sealed: sealed.to_vec(),
    })
}

/// One write, as the writer applies it. `seq` is its entry among the in-flight writes (0:
/// none).
pub(crate) enum Op {
    Store {
        key: Vec<u8>,
        expiry: u64,
        version: ProtocolVersion,
        sealed: Arc<[u8]>,
        seq: u64,
    },
    Delete {
        key: Vec<u8>,
        seq: u64,
    },
}

impl Op {
    /// The table key and the in-flight sequence number.
    pub(crate) fn entry(&self) -> (&[u8], u64) {
        match self {
            Op::Store { key, seq, .. } | Op::Delete { key, seq } => (key, *seq),
        }
    }
}

/// What opening the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// A new, empty file.
    Created,
    /// The existing file opened.
    Opened,
    /// The existing file could not be opened; it was moved to this path and a new one created.
    SetAside(PathBuf),
}

/// The open database. Reads and writes need only `&self` (redb reads see the last commit while
/// a write is under way); compaction needs it alone.
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
    /// Bytes of keys and values in the tables (not the file's size).
    data_bytes: AtomicU64,
}

/// Reads every row of both tables, as a start would: the sessions, and every expiry entry with
/// the session it names. Returns the data's size in bytes.
fn check(db: &Database) -> Result<u64, redb::Error> {
    let read = db.begin_read()?;
    let mut bytes = 0u64;
    let mut count = 0u64;
    let sessions = match read.open_table(SESSIONS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    for row in sessions.iter()? {
        let (k, v) = row?;
        bytes += (k.value().len() + v.value().len()) as u64 * 2;
        count += 1;
    }
    let index = read.open_table(BY_EXPIRY)?;
    let mut entries = 0u64;
    for row in index.iter()? {
        let (entry, _) = row?;
        let key = entry.value().get(8..).unwrap_or_default();
        if sessions.get(key)?.is_none() {
            return Err(redb::Error::Corrupted(
                "the expiry index names a session that is not stored".into(),
            ));
        }
        entries += 1;
    }
    if entries != count {
        return Err(redb::Error::Corrupted(
            "the expiry index does not match the sessions".into(),
        ));
    }
    Ok(bytes)
}

/// Why an existing file was not used.
enum Unusable {
    /// Another process has it open: not damage, and not to be touched.
    InUse,
    /// redb failed, or panicked, opening, checking or loading it.
    Damaged(DbFailure),
}

/// Creates the file if it does not exist, readable and writable by the owner only (0600), and
/// takes group and other permissions off an existing one (an older version made it 0644).
fn private_file(path: &Path) -> Result<(), DiskError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let io = |action| {
        move |source| DiskError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = options
        .open(path)
        .map_err(io("create the session database"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = file
            .metadata()
            .map_err(io("read the metadata of the session database"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io("make private the session database"))?;
        }
    }
    drop(file);
    Ok(())
}

/// Opens the file with redb's integrity check (every page checksum of the committed trees), reads
/// every row back, and, after an unclean shutdown, drops the TLS 1.3 sessions. Any error, and
/// any panic of redb on a file damaged outside it, makes the file unusable.
fn open_checked(path: &Path, drop_tls13: bool) -> Result<(Store, u64), Unusable> {
    let opened = catch_quietly(|| -> Result<(Store, u64), redb::Error> {
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)?;
        let bytes = check(&db)?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            data_bytes: AtomicU64::new(bytes),
        };
        let dropped = if drop_tls13 { store.drop_tls13()? } else { 0 };
        Ok((store, dropped))
    });
    match opened {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(redb::Error::DatabaseAlreadyOpen)) => Err(Unusable::InUse),
        Ok(Err(e)) => Err(Unusable::Damaged(e.into())),
        Err(panic) => Err(Unusable::Damaged(DbFailure::Panicked(panic))),
    }
}

/// A name to move a damaged file to: `sessions.redb.corrupt-<unix seconds>` (`stamp`), with a
/// counter if that exists already.
fn aside_path(dir: &Path, stamp: u64) -> PathBuf {
    let first = dir.join(format!("{FILE_NAME}.corrupt-{stamp}"));
    if !first.exists() {
        return first;
    }
    (1..1000)
        .map(|n| dir.join(format!("{FILE_NAME}.corrupt-{stamp}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

impl Store {
    /// Opens (or creates, mode 0600) the database in `dir`. A file that does not open, whose
    /// tables do not read back, or on which redb panics, is moved aside (one warning in the
    /// log) and replaced by an empty one; one that another process holds is an error. With
    /// `drop_tls13` (the last run did not shut down cleanly), an existing file's TLS 1.3
    /// sessions are removed. Returns the store, how the file opened, and how many TLS 1.3
    /// sessions were dropped. `now` (Unix seconds) names a file moved aside.
    pub(crate) fn open(
        dir: &Path,
        drop_tls13: bool,
        now: u64,
    ) -> Result<(Store, Recovery, u64), DiskError> {
        let path = dir.join(FILE_NAME);
        let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        private_file(&path)?;
        let e = match open_checked(&path, drop_tls13 && existed) {
            Ok((store, dropped)) => {
                let recovery = if existed {
                    Recovery::Opened
                } else {
                    Recovery::Created
                };
                return Ok((store, recovery, dropped));
            }
            Err(Unusable::InUse) => return Err(DiskError::InUse { path }),
            Err(Unusable::Damaged(e)) => e,
        };
        let aside = aside_path(dir, now);
        if let Err(source) = std::fs::rename(&path, &aside) {
            return Err(DiskError::SetAside {
                path,
                aside,
                damage: e,
                source,
            });
        }
        private_file(&path)?;
        let (store, _) = match open_checked(&path, false) {
            Ok(done) => done,
            Err(Unusable::InUse) => return Err(DiskError::InUse { path }),
            Err(Unusable::Damaged(source)) => return Err(DiskError::Db { path, source }),
        };
        tracing::warn!(
            file = %path.display(),
            moved_to = %aside.display(),
            error = %e,
            "the session database could not be read; moved it aside and started empty"
        );
        Ok((store, Recovery::SetAside(aside), 0))
    }

    /// Bytes of keys and values in the tables (not the file's size).
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Relaxed)
    }

    fn add_data_bytes(&self, delta: i64) {
        let now = self.data_bytes().saturating_add_signed(delta);
        self.data_bytes.store(now, Ordering::Relaxed);
    }

    /// The file's size on disk.
    pub(crate) fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Applies writes in one transaction; returns how many stores and deletions took effect.
    pub(crate) fn apply<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a Op>,
    ) -> Result<(u64, u64), redb::Error> {
        let txn = self.db.begin_write()?;
        let (mut stored, mut deleted) = (0, 0);
        let mut delta: i64 = 0;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut index = txn.open_table(BY_EXPIRY)?;
            for op in ops {
                match op {
                    Op::Store {
                        key,
                        expiry,
                        version,
                        sealed,
                        ..
                    } => {
                        let mut value = Vec::with_capacity(VALUE_HEADER + sealed.len());
                        value.extend_from_slice(&expiry.to_be_bytes());
                        value.extend_from_slice(&version.0.to_be_bytes());
                        value.extend_from_slice(sealed);
                        let old = sessions
                            .insert(key.as_slice(), value.as_slice())?
                            .map(|v| v.value().to_vec());
                        if let Some(old) = old.as_deref().and_then(parse_value) {
                            index.remove(expiry_key(old.expiry, key).as_slice())?;
                            delta -= ((key.len() + VALUE_HEADER + old.sealed.len()) * 2) as i64;
                        }
                        index.insert(expiry_key(*expiry, key).as_slice(), ())?;
                        delta += ((key.len() + value.len()) * 2) as i64;
                        stored += 1;
                    }
                    Op::Delete { key, .. } => {
                        let old = sessions.remove(key.as_slice())?.map(|v| v.value().to_vec());
                        if let Some(old) = old.as_deref().and_then(parse_value) {
                            index.remove(expiry_key(old.expiry, key).as_slice())?;
                            delta -= ((key.len() + VALUE_HEADER + old.sealed.len()) * 2) as i64;
                            deleted += 1;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        self.add_data_bytes(delta);
        Ok((stored, deleted))
    }

    /// Removes, soonest expiry first, every session expired at `now`, and then as many more as
    /// needed to bring the data under `budget` bytes. Returns (expired, evicted).
    pub(crate) fn purge(&self, now: u64, budget: u64) -> Result<(u64, u64), redb::Error> {
        let txn = self.db.begin_write()?;
        let (mut expired, mut evicted) = (0u64, 0u64);
        let mut delta: i64 = 0;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut index = txn.open_table(BY_EXPIRY)?;
            loop {
                let Some((first, _)) = index.first()? else {
                    break;
                };
                let entry = first.value().to_vec();
                drop(first);
                let mut expiry = [0u8; 8];
                expiry.copy_from_slice(entry.get(..8).unwrap_or(&[0; 8]));
                let over_budget = self.data_bytes().saturating_add_signed(delta) > budget;
                if now <= u64::from_be_bytes(expiry) && !over_budget {
                    break;
                }
                index.remove(entry.as_slice())?;
                let key = entry.get(8..).unwrap_or_default();
                if let Some(v) = sessions.remove(key)? {
                    delta -= ((key.len() + v.value().len()) * 2) as i64;
                }
                if now > u64::from_be_bytes(expiry) {
                    expired += 1;
                } else {
                    evicted += 1;
                }
            }
        }
        txn.commit()?;
        self.add_data_bytes(delta);
        Ok((expired, evicted))
    }

    /// Reclaims free space inside the file.
    pub(crate) fn compact(&mut self) -> Result<bool, redb::Error> {
        Ok(self.db.compact()?)
    }

    /// Removes every TLS 1.3 session: after an unclean shutdown, a ticket may have been used
    /// without its deletion reaching the file. Returns how many.
    pub(crate) fn drop_tls13(&self) -> Result<u64, redb::Error> {
        let mut doomed = Vec::new();
        {
            let read = self.db.begin_read()?;
            let sessions = match read.open_table(SESSIONS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            for row in sessions.iter()? {
                let (k, v) = row?;
                if parse_value(v.value()).is_some_and(|s| s.version == ProtocolVersion::TLS1_3) {
                    doomed.push(Op::Delete {
                        key: k.value().to_vec(),
                        seq: 0,
                    });
                }
            }
        }
        Ok(self.apply(&doomed)?.1)
    }

    /// Reads one session.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Stored>, redb::Error> {
        let read = self.db.begin_read()?;
        let sessions = match read.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(sessions.get(key)?.and_then(|v| parse_value(v.value())))
    }

    /// Every session that expires after `now`, latest expiry first, at most `limit`.
    pub(crate) fn newest(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, redb::Error> {
        let read = self.db.begin_read()?;
        let (sessions, index) = match (read.open_table(SESSIONS), read.open_table(BY_EXPIRY)) {
            (Ok(s), Ok(i)) => (s, i),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in index.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (entry, _) = row?;
            let entry = entry.value();
            let mut expiry = [0u8; 8];
            expiry.copy_from_slice(entry.get(..8).unwrap_or(&[0; 8]));
            if now > u64::from_be_bytes(expiry) {
                break;
            }
            let key = entry.get(8..).unwrap_or_default();
            if let Some(stored) = sessions.get(key)?.and_then(|v| parse_value(v.value())) {
                out.push((key.to_vec(), stored));
            }
        }
        Ok(out)
    }
}
