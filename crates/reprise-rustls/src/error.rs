//! Errors of the adapters' constructors.

use thiserror::Error;

/// Why an adapter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A server that asks for client certificates needs a non-empty session-id context, or a
    /// session made under one verification policy could resume under another.
    #[error("a server that verifies client certificates needs a non-empty session-id context")]
    EmptySidCtxWithClientAuth,
}
