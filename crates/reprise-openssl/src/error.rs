//! Errors of the adapters' constructors.

use thiserror::Error;

/// Why an adapter could not be installed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum Error {
    /// The session-id context is empty. The seeds: "the session id context must be set by the
    /// server", since a client may offer a session made in another context.
    #[error("a server needs a non-empty session-id context")]
    EmptySidCtx,
    /// The session-id context is longer than OpenSSL's 32 bytes.
    #[error("the session-id context has {0} bytes; at most 32 are allowed")]
    SidCtxTooLong(usize),
    /// Stateless tickets with a [`TicketKeySource`](reprise_seal::tickets::TicketKeySource)
    /// need OpenSSL 3.0 or newer (its `EVP_MAC_CTX` ticket-key callback); this build links an
    /// older OpenSSL, or LibreSSL or BoringSSL.
    #[error("stateless tickets from a key source need OpenSSL 3.0 or newer")]
    TicketsUnsupported,
    /// OpenSSL refused a setting.
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}
