//! rustls adapters for the Reprise session cache.
//!
//! - [`ServerStore`] implements rustls's `StoresServerSessions`: TLS 1.2 session ids and
//!   TLS 1.3 stateful tickets (single-use) go through a [`reprise::SessionCache`], namespaced
//!   by session-id context.
//! - [`ClientStore`] implements `ClientSessionStore` over a cache in CLIENT mode.
//! - [`ConnectionSessions`] is the per-connection handle: handshake statistics, the automatic
//!   flush, and the removal of a connection's sessions when it fails after its handshake (a
//!   fatal alert, a TLS error, an abort). A peer closing without close_notify keeps them.
//! - [`SessionStream`] (feature `tokio`, on by default) wraps an async TLS stream and reports
//!   its TLS failures to the handle itself.
//! - [`Acceptor`] (feature `tokio`) accepts TLS connections on tokio: it reads each ClientHello
//!   with Reprise's parser, lets a [`ChoosesConfig`] pick the `ServerConfig` from it, fetches
//!   what the hello offers from the cache's tiers within a deadline (no runtime thread waits on
//!   the network), and completes the handshake into a [`SessionStream`].
//! - [`Ticketer`] implements `ProducesTickets`: stateless tickets sealed with keys from a
//!   [`tickets::TicketKeySource`] (a key file, a fleet's shared ring, rotating local keys), so
//!   that every server given the same keys resumes every other's tickets.
//!
//! ```
//! use std::sync::Arc;
//! use reprise::SessionCache;
//! use reprise_rustls::{derive_sid_ctx, ClientAuth, ServerStore};
//! # fn config(chain: Vec<rustls::pki_types::CertificateDer<'static>>,
//! #           key: rustls::pki_types::PrivateKeyDer<'static>) -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Arc::new(SessionCache::new());
//! let sid_ctx = derive_sid_ctx(&chain, ClientAuth::None, b"");
//! let store = ServerStore::new(cache, sid_ctx, ClientAuth::None)?;
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let mut config = rustls::ServerConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_no_client_auth()
//!     .with_single_cert(chain, key)?;
//! config.session_storage = Arc::new(store);
//! # Ok(()) }
//! ```

#[cfg(feature = "tokio")]
mod acceptor;
mod client;
pub mod client_hello;
mod connection;
#[cfg(feature = "tokio")]
mod early;
mod error;
#[cfg(feature = "tokio")]
mod rewind;
mod server;
mod sid_ctx;
#[cfg(feature = "tokio")]
mod stream;
mod ticketer;

#[cfg(feature = "tokio")]
pub use acceptor::{
    AcceptError, AcceptPolicy, Accepted, Acceptor, ChoosesConfig, Prefetch, ServerContext,
    ServerTlsStream,
};
pub use client::{ClientSession, ClientStore, DEFAULT_MAX_SERVERS, MAX_TLS13_TICKETS_PER_SERVER};
pub use client_hello::{ClientHelloInfo, ClientHelloParser};
pub use connection::{is_tls_failure, ConnectionSessions, Instrumented};
#[cfg(feature = "tokio")]
pub use early::{Driven, EarlyCounters, EarlyData, EarlyRejection, ServerIo};
pub use error::Error;
#[cfg(feature = "tokio")]
pub use rewind::Rewind;
pub use server::ServerStore;
pub use sid_ctx::{derive_sid_ctx, named_sid_ctx, ClientAuth};
#[cfg(feature = "tokio")]
pub use stream::SessionStream;
pub use ticketer::Ticketer;

/// Ticket keys and their sources, from `reprise-seal`: what a [`Ticketer`] takes.
pub use reprise_seal::tickets;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}
