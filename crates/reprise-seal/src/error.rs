//! Errors of sealing: key files and sealed values.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a key file or key could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("key file {} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// A line is malformed.
    #[error("key file line {line}: {reason}")]
    Line {
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A line is malformed, in a named file.
    #[error("key file {path} line {line}: {reason}")]
    FileLine {
        /// The file.
        path: String,
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No key at all.
    #[error("key file has no key: expected lines of name:hex (64 hex digits)")]
    Empty,
    /// A key name with characters outside letters, digits, '-', '_' and '.', or too long.
    #[error("key name {0:?} must be 1 to 32 letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
}

impl KeyFileError {
    /// The same error, naming the file it came from.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            KeyFileError::Line { line, reason } => KeyFileError::FileLine {
                path: path.display().to_string(),
                line,
                reason,
            },
            KeyFileError::Empty => KeyFileError::Line {
                line: 0,
                reason: format!("{} has no key: expected lines of name:hex", path.display()),
            },
            other => other,
        }
    }
}

/// Why a stored value could not be opened: it is then a miss, counted; deleted unless
/// [`is_unknown`](Self::is_unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Too short, or not laid out as a sealed value.
    #[error("malformed sealed value")]
    Malformed,
    /// A format version this build does not know.
    #[error("unknown sealed-value version {0}")]
    Version(u8),
    /// Sealed with a key that is not in the ring.
    #[error("sealed with a key that is not in the key ring")]
    UnknownKey,
    /// The authentication tag does not match: forged, corrupted, or moved to another key.
    #[error("authentication failed")]
    Forged,
    /// The plaintext does not decode as a session.
    #[error("the sealed session does not decode")]
    BadSession,
    /// The system's random number generator failed while sealing.
    #[error("the system's random number generator failed")]
    Random,
}

impl OpenError {
    /// Whether the value may be good for another instance: sealed with a key not in this ring,
    /// or in a format version this build does not know. Such a value is a miss and is never
    /// deleted, so that a rolling update of the key file (or of the binary) loses no session.
    /// The other errors (forged, corrupt, malformed) mean the value is no good to anyone.
    pub fn is_unknown(&self) -> bool {
        matches!(self, OpenError::UnknownKey | OpenError::Version(_))
    }
}
