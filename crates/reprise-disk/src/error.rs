//! Errors of the disk tier: what stops it from starting, each with the path it concerns and the
//! error underneath.

use std::path::PathBuf;

use reprise_seal::KeyFileError;
use thiserror::Error;

/// Why the disk tier could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A directory or file could not be created, read, changed or removed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What the tier was doing ("create the directory", "remove the clean-shutdown marker").
        action: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A database file that could not be read was to be moved aside, and could not be.
    #[error("cannot move the unreadable session database {} aside to {} ({damage})", path.display(), aside.display())]
    SetAside {
        /// The database file.
        path: PathBuf,
        /// Where it was to go.
        aside: PathBuf,
        /// Why it could not be read.
        damage: DbFailure,
        /// Why it could not be moved.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the database open.
    #[error("the session database {} is in use by another process", path.display())]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database failed, even on a new, empty file.
    #[error("cannot open the session database {}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed inside it.
        #[source]
        source: DbFailure,
    },
    /// The key ring that seals the stored sessions could not be loaded or generated.
    #[error("cannot use the key ring that seals the stored sessions")]
    Key(#[source] KeyFileError),
    /// The writer thread could not be started.
    #[error("cannot start the disk writer thread")]
    Writer(#[source] std::io::Error),
    /// The cap on the database file is below the smallest one accepted.
    #[error(
        "the cap on the session database is {max_bytes} bytes; it must be at least {min} (1 MiB)"
    )]
    MaxBytes {
        /// The cap asked for.
        max_bytes: u64,
        /// The smallest cap accepted.
        min: u64,
    },
    /// The write queue would hold nothing.
    #[error("the disk write queue must hold at least 1 write")]
    WriteQueue,
}

/// What failed inside the database: redb returned an error, or panicked on a damaged file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbFailure {
    /// redb returned an error.
    #[error(transparent)]
    Redb(Box<redb::Error>),
    /// redb panicked (a file damaged outside it); the panic was caught.
    #[error("the database panicked: {0}")]
    Panicked(String),
}

impl From<redb::Error> for DbFailure {
    fn from(e: redb::Error) -> Self {
        DbFailure::Redb(Box::new(e))
    }
}
