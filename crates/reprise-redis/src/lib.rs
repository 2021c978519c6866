//! A Redis tier for the Reprise session cache, so that a fleet of servers resumes each other's
//! sessions.
//!
//! It is a [`reprise::Tier`]: attached to a [`reprise::SessionCache`] (last, under memory and
//! any local tier such as a disk), it stores every new session, deletes explicitly removed
//! ones fleet-wide, and fetches what a client offers. It is:
//!
//! - **sealed**: every value is encrypted and authenticated (XChaCha20-Poly1305) under a
//!   [`KeyRing`], bound to its Redis key and to the tier's name; nothing in Redis reveals a
//!   master secret, a server name or a client certificate, and a value that does not open is a
//!   miss, counted (and deleted if forged or corrupt; kept if sealed under a key this instance
//!   lacks, so that keys rotate without losing sessions);
//! - **single-use for TLS 1.3**: as the last tier it decides takes; a ticket is taken with one
//!   atomic script, so it resumes on exactly one instance, once, on the connection the take was
//!   made for; a local copy alone never resumes a ticket; tickets and reusable TLS 1.2
//!   sessions live in separate key spaces, so a take never touches a reusable session;
//! - **cheap to attack**: one Redis read per ClientHello at most, none for an id that missed
//!   recently, and a read budget per client address;
//! - **fail-open, and never in the way**: writes leave through a bounded queue, reads have a
//!   deadline (5 ms by default), a circuit breaker stops asking a failing Redis, and when Redis
//!   is down every handshake still completes, as a full one.
//!
//! The crate also shares session-ticket keys across a fleet: [`FleetTicketKeys`] is a
//! [`TicketKeySource`](reprise_seal::tickets::TicketKeySource) whose ring lives in Redis,
//! sealed, rotated by the clock with no leader, and fail-open when Redis is unreachable.
//!
//! ```no_run
//! use std::sync::Arc;
//! use reprise::{Offer, SessionCache};
//! use reprise_redis::{KeyRing, RedisConfig, RedisTier};
//!
//! # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::load("/etc/reprise/keys".as_ref())?;
//! let config = RedisConfig::new("redis://10.0.0.5:6379".parse()?);
//! let tier = RedisTier::start(config, keys)?;
//! let cache = Arc::new(SessionCache::new());
//! cache.attach(Arc::new(tier.clone()));
//! // Before each handshake, with what the ClientHello offers and the connection's handle
//! // (reprise-rustls):
//! let offer = Offer { sid_ctx: b"app", ..Offer::default() };
//! if let Some(ticket) = cache.prefetch(offer).await.into_ticket() {
//!     // sessions.confirm_take(ticket);
//! #   drop(ticket);
//! }
//! # Ok(()) }
//! ```

mod breaker;
mod config;
mod conn;
mod error;
mod guard;
mod stats;
mod tickets;
mod tier;

pub use breaker::BreakerState;
pub use config::{
    redact, RedisConfig, RedisTarget, DEFAULT_MISSES_PER_ADDRESS, DEFAULT_PREFIX,
    DEFAULT_READ_TIMEOUT,
};
pub use error::ConfigError;
pub use guard::{SESSION_MISS_TTL, TICKET_MISS_TTL};
pub use reprise_seal::{KeyFileError, KeyRing, OpenError, KEY_LEN, MAX_NAME_LEN, SEAL_VERSION};
pub use stats::{RedisCounters, TierStats};
pub use tickets::{
    associated_data as ticket_key_associated_data, FleetCounters, FleetStats, FleetTicketKeys,
};
pub use tier::{Kind, RedisTier, Wiring};
