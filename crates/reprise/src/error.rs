//! Errors of the engine's constructors: everything else is a return value, never a panic.

use thiserror::Error;

/// Why a session or key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// A session id must have at least one byte.
    #[error("session id is empty")]
    EmptyId,
    /// A session id has at most 32 bytes.
    #[error("session id is {0} bytes long; the limit is 32")]
    IdTooLong(usize),
    /// A session-id context has at most 32 bytes.
    #[error("session-id context is {0} bytes long; the limit is 32")]
    SidCtxTooLong(usize),
}

/// Why a cache mode could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown cache mode {0:?}: expected a comma-separated list of off, client, server, both, no-auto-clear, no-internal-lookup, no-internal-store, no-internal, update-time")]
pub struct ParseModeError(pub String);
