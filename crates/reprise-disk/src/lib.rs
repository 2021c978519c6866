//! A sealed on-disk tier for the Reprise session cache: the sessions of a server survive its
//! restarts, so that after a deploy its clients resume instead of all paying for a full
//! handshake at once.
//!
//! [`DiskTier`] is a [`reprise::Tier`]: attach it under the in-memory cache, alone or above a
//! shared tier (Redis), and the cache writes every new session to it, reads it for what memory
//! no longer holds, and tells it of every removal. When it is the last tier, it decides the
//! single use of TLS 1.3 tickets (an atomic take); above a shared tier, the shared tier decides
//! and the disk's copy of a taken ticket is deleted.
//!
//! Sessions are stored in one [redb](https://docs.rs/redb) file, sealed with a
//! [`reprise_seal::KeyRing`] (XChaCha20-Poly1305, bound to each session's key and to the tier's
//! name): nothing on disk reveals a session's secrets without the key. Without a key ring of
//! the operator's, the tier generates a key file in its directory (mode 0600).
//!
//! **Forward secrecy.** A stored session can be decrypted by whoever holds the key, for as long
//! as the session lives: a disk image plus the key recovers the traffic keys of every session
//! still within its timeout. Keep the cache timeout short, and the key ring off the data disk
//! (a key file on a tmpfs or a secrets mount) so that the two are not lost together.
//!
//! ```no_run
//! use std::sync::Arc;
//! use reprise::SessionCache;
//! use reprise_disk::{DiskConfig, DiskTier};
//!
//! let cache = Arc::new(SessionCache::new());
//! let (disk, _startup) = DiskTier::open(DiskConfig::new("/var/cache/reprise"), None).unwrap();
//! cache.attach(Arc::new(disk.clone()));
//! disk.warm(&cache); // at start, off the async runtime
//! // … serve …
//! disk.close(); // at shutdown: writes out the queue, marks the shutdown clean
//! ```

mod error;
mod pending;
mod quiet;
mod stats;
mod store;
mod tier;
mod writer;

pub use error::{DbFailure, DiskError};
pub use stats::DiskStats;
pub use store::Recovery;
pub use tier::{DiskConfig, DiskTier, Startup, DEFAULT_MAX_BYTES, KEY_FILE, MIN_MAX_BYTES, NAME};
