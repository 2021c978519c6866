//! A sealed on-disk tier for the Reprise session cache: the sessions of a server that runs
//! alone survive its restarts, so that after a deploy its clients resume instead of all paying
//! for a full handshake at once.
//!
//! Sessions are stored in one [redb](https://docs.rs/redb) file, sealed with the same key ring
//! as the Redis tier (XChaCha20-Poly1305, bound to each session's key): nothing on disk reveals a
//! session's secrets without the key. Without a key file of the operator's, the tier generates
//! one in its directory (mode 0600).
//!
//! **Forward secrecy.** A stored session can be decrypted by whoever holds the key, for as long
//! as the session lives: a disk image plus the key recovers the traffic keys of every session
//! still within its timeout. Keep the cache timeout short, and the key file off the data disk
//! (`--redis-key-file` on a tmpfs or a secrets mount) so that the two are not lost together.
//!
//! ```no_run
//! use std::sync::Arc;
//! use reprise::SessionCache;
//! use reprise_disk::{DiskConfig, DiskTier};
//!
//! let cache = Arc::new(SessionCache::new());
//! let (disk, _startup) = DiskTier::open(DiskConfig::new("/var/cache/reprise"), None).unwrap();
//! disk.install(&cache);
//! disk.warm(&cache); // at start, off the async runtime
//! // … serve …
//! disk.close(); // at shutdown: writes out the queue, marks the shutdown clean
//! ```

mod error;
mod pending;
mod quiet;
mod store;
mod tier;

pub use error::DiskError;
pub use store::Recovery;
pub use tier::{
    DiskConfig, DiskStats, DiskTier, Startup, DEFAULT_MAX_BYTES, KEY_FILE, MIN_MAX_BYTES,
};
