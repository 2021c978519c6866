//! OpenSSL adapters for the Reprise session cache.
//!
//! OpenSSL hands a server's sessions to an external cache through three callbacks: new, get and
//! remove (`SSL_CTX_sess_set_new_cb` and friends). This crate makes a [`reprise::SessionCache`]
//! that external cache, so a server built on the [`openssl`] crate gets the Reprise engine (an
//! exact size limit, timeouts, modes, statistics, single-use TLS 1.3 tickets) and, through the
//! engine's own callbacks, the Redis tier of `reprise-redis`.
//!
//! - [`ServerCache::install`] wires an `SslContextBuilder` to a cache in one call: it sets the
//!   session-id context, turns on `SERVER | NO_INTERNAL` mode and `NO_TICKET` (so every
//!   session is stateful and goes through the cache: TLS 1.2 session ids, TLS 1.3 tickets), and
//!   installs the three callbacks. Sessions are stored as OpenSSL's DER (`i2d_SSL_SESSION`),
//!   keyed by session-id context and session id. TLS 1.3 tickets are taken on use, so each
//!   resumes at most once.
//! - [`ClientCache`] keeps a client's sessions per server name in a cache in CLIENT mode.
//! - [`StatelessTickets::install`] turns on stateless tickets sealed with the keys of a
//!   [`TicketKeySource`](reprise_seal::tickets::TicketKeySource) (a key file, a fleet's shared
//!   ring), through OpenSSL 3's ticket-key callback: every server sharing the source resumes
//!   every other's tickets, each context with keys of its own. `ServerCache::install` alone
//!   keeps tickets off; this is the explicit choice to turn them on.
//! - `unsafe` is used in two places only, each block with the proof that it is sound:
//!   [`DecodedSession`], [`set_get_session_callback`] and [`set_session`] (the two calls of the
//!   `openssl` crate that require it), and the private `ffi` part of the tickets module (the
//!   declarations of three libssl functions `openssl-sys` lacks, installing the ticket-key
//!   callback, and the callback itself).
//!
//! ```no_run
//! use std::sync::Arc;
//! use openssl::ssl::{SslAcceptor, SslMethod};
//! use reprise::SessionCache;
//! use reprise_openssl::ServerCache;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Arc::new(SessionCache::builder().timeout_secs(600).build());
//! let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
//! builder.set_certificate_chain_file("fullchain.pem")?;
//! builder.set_private_key_file("key.pem", openssl::ssl::SslFiletype::PEM)?;
//! let sessions = ServerCache::install(&mut builder, cache, b"my-service")?;
//! let acceptor = builder.build();
//! let listener = std::net::TcpListener::bind("127.0.0.1:8443")?;
//! for tcp in listener.incoming() {
//!     let ssl = openssl::ssl::Ssl::new(acceptor.context())?;
//!     // Counts the handshake (and runs the automatic flush every 255 completed ones).
//!     if let Ok(tls) = sessions.accept(ssl, tcp?) {
//!         println!("resumed: {}", tls.ssl().session_reused());
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod decoded;
mod error;
mod server;
mod sid_ctx;
mod tickets;

pub use client::{client_session_key, ClientCache, ClientStats};
pub use decoded::{set_get_session_callback, set_session, DecodedSession};
pub use error::Error;
pub use server::{ServerCache, ServerStats};
pub use sid_ctx::{derive_sid_ctx, tag_context};
pub use tickets::{StatelessTickets, TicketStats, OPENSSL_AES_PURPOSE, OPENSSL_HMAC_PURPOSE};
