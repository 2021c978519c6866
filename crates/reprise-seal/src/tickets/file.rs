//! Ticket keys from a file the operator distributes: the first key encrypts, every key
//! decrypts; the file is read again when it changes and on demand (SIGHUP).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{KeyId, TicketKey, TicketKeySource, TicketKeys, TICKET_KEY_LEN};
use crate::error::KeyFileError;
use crate::keyring::{parse_key_lines, read_key_file};

reprise::tier_counters! {
    /// The counters and gauges of a ticket key file.
    pub struct FileCounters => FileStats {
        /// Times the file was read again and its keys taken.
        reloads: Counter = "reloads_total",
        /// Times the file was read again and did not load: the keys held were kept.
        reload_errors: Counter = "reload_errors_total",
        /// Keys held (that decrypt; the first encrypts).
        keys: Gauge = "keys",
    }
}

/// How often the watcher looks at the file.
const POLL: Duration = Duration::from_secs(1);

/// What identifies one version of the file: a replaced, rewritten or touched file differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

fn identity(path: &Path) -> Option<Identity> {
    // Follows symbolic links: a file swapped behind one (a Kubernetes secret) is seen.
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Some(Identity {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: (meta.dev(), meta.ino()),
        #[cfg(unix)]
        changed: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// The mutable part: the version of the file last read, and the snapshots' generation.
#[derive(Debug)]
struct State {
    seen: Option<Identity>,
    generation: u64,
}

/// Ticket keys read from a file of `name:hex` lines, the format of
/// [`KeyRing`](crate::KeyRing) key files (64 hex digits, 256 bits; `#` comments): the first key
/// encrypts, every key decrypts. A key's [`KeyId`] is [`KeyId::of_secret`], so instances given
/// the same secret agree on it whatever they call it.
///
/// The file is read again when it changes (a watcher thread looks at its size, times and inode
/// once a second, and stops when the source is dropped) and on
/// [`reload`](TicketKeySource::reload). A reload that fails keeps the keys held, logs one line
/// (never key material) and is counted. Rotating by hand: add the new key second, wait until
/// every instance has it, move it first, and remove the old one a lifetime later.
///
/// ```
/// use std::time::Duration;
/// use reprise_seal::tickets::{TicketKeyFile, TicketKeySource};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("ticket.keys");
/// std::fs::write(&path, format!("new:{}\nold:{}\n", "ab".repeat(32), "cd".repeat(32))).unwrap();
/// let source = TicketKeyFile::open(&path, Duration::from_secs(3600)).unwrap();
/// assert_eq!(source.keys().decrypting().len(), 2);
/// std::fs::write(&path, format!("bad:{}\n", "ab".repeat(16))).unwrap();
/// let e = source.reload().unwrap_err().to_string();
/// assert!(e.contains("line 1") && e.contains("ticket.keys"), "{e}");
/// assert_eq!(source.keys().decrypting().len(), 2, "the old keys stay");
/// ```
pub struct TicketKeyFile {
    path: PathBuf,
    lifetime: Duration,
    keys: ArcSwap<TicketKeys>,
    state: Mutex<State>,
    counters: FileCounters,
    warned: AtomicBool,
    /// Dropped with the source: the watcher then stops at once.
    _stop: mpsc::Sender<()>,
}

/// The keys of a key file, parsed; whether group or others may read the file.
fn load(path: &Path) -> Result<(Vec<Arc<TicketKey>>, bool), KeyFileError> {
    let file = read_key_file(path)?;
    let parsed = parse_key_lines(file.text()?).map_err(|e| e.in_file(path))?;
    let keys = parsed
        .iter()
        .map(|k| {
            let secret: &[u8; TICKET_KEY_LEN] = &k.secret;
            Arc::new(TicketKey::new(KeyId::of_secret(secret), *secret))
        })
        .collect();
    Ok((keys, file.exposed()))
}

impl TicketKeyFile {
    /// Reads the key file at `path` and watches it; tickets live `lifetime`. An error names
    /// the file (and the line, for a bad one).
    pub fn open(path: &Path, lifetime: Duration) -> Result<Arc<Self>, KeyFileError> {
        Self::open_polling(path, lifetime, POLL)
    }

    /// [`open`](Self::open), looking at the file every `poll`.
    fn open_polling(
        path: &Path,
        lifetime: Duration,
        poll: Duration,
    ) -> Result<Arc<Self>, KeyFileError> {
        let seen = identity(path);
        let (keys, exposed) = load(path)?;
        let held = keys.len();
        let (stop, stopped) = mpsc::channel();
        let source = Arc::new(Self {
            path: path.to_path_buf(),
            lifetime,
            keys: ArcSwap::from_pointee(snapshot(keys, 1)),
            state: Mutex::new(State {
                seen,
                generation: 1,
            }),
            counters: FileCounters::default(),
            warned: AtomicBool::new(false),
            _stop: stop,
        });
        source.counters.keys.store(held as u64, Ordering::Relaxed);
        if exposed {
            source.warn_exposed();
        }
        let weak = Arc::downgrade(&source);
        std::thread::Builder::new()
            .name("reprise-ticket-keys".into())
            .spawn(move || watch(&weak, &stopped, poll))
            .map_err(|e| KeyFileError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(source)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters, read now.
    pub fn stats(&self) -> FileStats {
        self.counters.snapshot()
    }

    fn warn_exposed(&self) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key_file = %self.path.display(),
                "the ticket key file can be read by group or others; chmod 600 it"
            );
        }
    }

    /// Reads the file again if it changed since it was last read.
    fn poll(&self) {
        let now = identity(&self.path);
        let changed = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.seen != now
        };
        if changed {
            // Logged and counted inside.
            let _ = self.read_again();
        }
    }

    /// Reads the file and takes its keys, or keeps the old ones and says why, in one line.
    fn read_again(&self) -> Result<(), KeyFileError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken before reading: a change during the read is seen at the next look.
        state.seen = identity(&self.path);
        match load(&self.path) {
            Ok((keys, exposed)) => {
                let held = keys.len();
                state.generation += 1;
                self.keys.store(Arc::new(snapshot(keys, state.generation)));
                FileCounters::bump(&self.counters.reloads);
                self.counters.keys.store(held as u64, Ordering::Relaxed);
                tracing::info!(
                    key_file = %self.path.display(),
                    keys = held,
                    "ticket keys reloaded"
                );
                if exposed {
                    self.warn_exposed();
                }
                Ok(())
            }
            Err(e) => {
                FileCounters::bump(&self.counters.reload_errors);
                tracing::warn!(error = %e, "ticket key file not reloaded; keeping the keys held");
                Err(e)
            }
        }
    }
}

/// The first key encrypts; all decrypt.
fn snapshot(keys: Vec<Arc<TicketKey>>, generation: u64) -> TicketKeys {
    let first = keys.first().cloned();
    TicketKeys::new(first, keys, generation)
}

/// The watcher: looks at the file once every `poll` until the source is dropped.
fn watch(source: &Weak<TicketKeyFile>, stopped: &mpsc::Receiver<()>, poll: Duration) {
    // Ends when the sender, held by the source, is dropped.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(poll) {
        let Some(source) = source.upgrade() else {
            return;
        };
        source.poll();
    }
}

impl TicketKeySource for TicketKeyFile {
    fn name(&self) -> &str {
        "file"
    }

    fn keys(&self) -> Arc<TicketKeys> {
        self.keys.load_full()
    }

    fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.read_again().map_err(Into::into)
    }

    fn metrics(&self) -> Vec<reprise::tier::Metric> {
        self.counters.snapshot().metrics()
    }
}

impl fmt::Debug for TicketKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.load();
        let ids: Vec<KeyId> = keys.decrypting().iter().map(|k| k.id()).collect();
        f.debug_struct("TicketKeyFile")
            .field("path", &self.path)
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tickets::{Rejected, TicketCounters, TicketSealer};

    fn line(name: &str, byte: &str) -> String {
        format!("{name}:{}\n", byte.repeat(32))
    }

    fn id(byte: u8) -> KeyId {
        KeyId::of_secret(&[byte; 32])
    }

    #[test]
    fn first_key_encrypts_and_ids_come_from_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("# c\n{}{}", line("a", "11"), line("b", "22")),
        )
        .unwrap();
        let source = TicketKeyFile::open(&path, Duration::from_secs(60)).unwrap();
        let keys = source.keys();
        assert_eq!(keys.encrypting().map(|k| k.id()), Some(id(0x11)));
        assert!(keys.find(id(0x22)).is_some());
        assert_eq!(source.stats().keys, 2);
        assert_eq!(source.lifetime(), Duration::from_secs(60));
        let printed = format!("{source:?}");
        assert!(!printed.contains(&"11".repeat(32)), "{printed}");
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        for (text, want) in [
            (
                format!("{}x:{}\n", line("a", "11"), "ab".repeat(31)),
                "line 2",
            ),
            ("a:zz\n".to_owned(), "line 1"),
            ("no colon\n".to_owned(), "line 1"),
            ("# nothing\n".to_owned(), "no key"),
        ] {
            std::fs::write(&path, &text).unwrap();
            let e = TicketKeyFile::open(&path, Duration::from_secs(60))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let e = TicketKeyFile::open(&dir.path().join("absent"), Duration::from_secs(60));
        assert!(e.is_err_and(|e| e.to_string().contains("absent")));
    }

    #[test]
    fn reload_takes_a_new_first_key_and_old_tickets_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, line("old", "11")).unwrap();
        let source = TicketKeyFile::open(&path, Duration::from_secs(3600)).unwrap();
        let counters = Arc::new(TicketCounters::default());
        let sealer = TicketSealer::new(source.clone(), b"ctx", counters.clone());
        let old = sealer.seal(b"old ticket").unwrap();

        std::fs::write(&path, format!("{}{}", line("new", "22"), line("old", "11"))).unwrap();
        source.reload().unwrap();
        assert_eq!(source.stats().reloads, 1);
        let new = sealer.seal(b"new ticket").unwrap();
        assert_eq!(&new[1..9], id(0x22).as_bytes());
        assert_eq!(&sealer.open(&old).unwrap()[..], b"old ticket");

        // A bad file keeps the keys held, and says so once.
        std::fs::write(&path, format!("{}broken\n", line("new", "22"))).unwrap();
        assert!(source.reload().is_err());
        assert_eq!(source.stats().reload_errors, 1);
        assert_eq!(&sealer.open(&old).unwrap()[..], b"old ticket");
        assert_eq!(&sealer.open(&new).unwrap()[..], b"new ticket");

        // Replaced entirely: the old tickets are gone.
        std::fs::write(&path, line("other", "33")).unwrap();
        source.reload().unwrap();
        assert_eq!(sealer.open(&old).err(), Some(Rejected::UnknownKey));
        assert_eq!(sealer.open(&new).err(), Some(Rejected::UnknownKey));
        assert_eq!(source.stats().keys, 1);
    }

    #[test]
    fn the_watcher_sees_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, line("a", "11")).unwrap();
        let poll = Duration::from_millis(50);
        let source = TicketKeyFile::open_polling(&path, Duration::from_secs(60), poll).unwrap();
        // Replaced by a rename, as deployment tools do.
        let next = dir.path().join("keys.new");
        std::fs::write(&next, format!("{}{}", line("b", "22"), line("a", "11"))).unwrap();
        std::fs::rename(&next, &path).unwrap();
        let seen = wait_until(Duration::from_secs(10), || {
            source.keys().encrypting().map(|k| k.id()) == Some(id(0x22))
        });
        assert!(seen, "the new first key was not picked up");
        assert_eq!(source.stats().reloads, 1);
        // A bad version is counted once, not once a second.
        std::fs::write(&path, "garbage\n").unwrap();
        let seen = wait_until(Duration::from_secs(10), || {
            source.stats().reload_errors == 1
        });
        assert!(seen, "the bad file was not looked at");
        std::thread::sleep(poll * 5);
        assert_eq!(source.stats().reload_errors, 1);
        assert_eq!(source.keys().decrypting().len(), 2);
    }

    #[test]
    fn the_watcher_stops_with_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, line("a", "11")).unwrap();
        let source = TicketKeyFile::open(&path, Duration::from_secs(60)).unwrap();
        let weak = Arc::downgrade(&source);
        drop(source);
        // The watcher holds the source only while it looks at the file, never longer.
        assert!(wait_until(Duration::from_secs(10), || weak
            .upgrade()
            .is_none()));
    }

    /// Waits until `check` holds, for at most `limit`; whether it did.
    fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            if check() {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
