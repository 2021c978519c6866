//! Errors of the Redis tier's configuration (key files and sealed values: `reprise-seal`).

use thiserror::Error;

/// Why the Redis tier could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The Redis address is not a URL this tier understands (shown with its password hidden).
    #[error("redis address {0:?}: expected redis://HOST:PORT, rediss://HOST:PORT, or redis+cluster://HOST:PORT,HOST:PORT,...")]
    BadUrl(String),
    /// The Redis client refused the address (shown with its password hidden).
    #[error("redis address {url:?}: {reason}")]
    Client {
        /// The address.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A runtime for the tier's tasks could not be started.
    #[error("cannot start the Redis tier's runtime: {0}")]
    Runtime(String),
}
