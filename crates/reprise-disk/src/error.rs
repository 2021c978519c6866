//! Errors of the disk tier: what stops it from starting.

use thiserror::Error;

/// Why the disk tier could not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The cache directory or a file in it could not be used.
    #[error("cache-dir: {0}")]
    Io(String),
    /// Another process has the database open.
    #[error("cache-dir: {0} is in use by another process")]
    InUse(String),
    /// The database failed.
    #[error("cache-dir database: {0}")]
    Db(String),
    /// The key file could not be read or generated.
    #[error("cache-dir key: {0}")]
    Key(String),
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
}
