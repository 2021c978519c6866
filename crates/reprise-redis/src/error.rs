//! Errors of the Redis tier's configuration and start (key files and sealed values have theirs
//! in `reprise-seal`).

use thiserror::Error;

/// Why the Redis tier could not be configured or started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The Redis address is not a URL this tier understands (shown with its password hidden).
    #[error("redis address {0:?}: expected redis://HOST:PORT, rediss://HOST:PORT, or redis+cluster://HOST:PORT,HOST:PORT,...")]
    BadUrl(String),
    /// The Redis client refused the address (shown with its password hidden). The client's
    /// reason is kept as text, with the address's secrets scrubbed from it, rather than as a
    /// source: the client's own error may quote the password.
    #[error("redis address {url:?}: {reason}")]
    Client {
        /// The address, redacted.
        url: String,
        /// What the client said, scrubbed of the address's secrets.
        reason: String,
    },
    /// A setting is out of range.
    #[error("redis {setting}: {problem}")]
    Invalid {
        /// The setting (a field of [`RedisConfig`](crate::RedisConfig)).
        setting: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// [`RedisTier::start`](crate::RedisTier::start) was called outside a tokio runtime
    /// ([`RedisTier::start_detached`](crate::RedisTier::start_detached) brings its own).
    #[error("the Redis tier needs a tokio runtime to start on")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The tier's own runtime could not be started.
    #[error("cannot start the Redis tier's runtime")]
    Runtime(#[source] std::io::Error),
    /// The system's random number generator failed (the tier draws its instance id from it).
    #[error("the system's random number generator failed")]
    Random,
}
