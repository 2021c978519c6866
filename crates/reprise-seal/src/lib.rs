//! Sealed sessions for Reprise's shared and persistent tiers (Redis, disk): a key ring of named
//! 256-bit keys, and the sealing of a session under it, bound to the session's key.
//!
//! A sealed session reveals nothing of its payload (the master secret, the server name, a
//! client certificate): it is encrypted and authenticated with XChaCha20-Poly1305 under the
//! ring's first key, with the session-id context, the id and the format version as associated
//! data. It opens under any key of the ring, and only for the key it was sealed for.
//!
//! ```
//! use reprise::{SecretBytes, Session, SessionKey};
//! use reprise_seal::{open_session, seal_session, KeyRing};
//!
//! let ring = KeyRing::parse(&format!("k1:{}", "ab".repeat(32))).unwrap();
//! let s = Session::builder(&[7; 32], SecretBytes::from(vec![1, 2, 3])).sid_ctx(b"web").build().unwrap();
//! let sealed = seal_session(&ring, &s).unwrap();
//! let back = open_session(&ring, SessionKey::new(&[7; 32], b"web"), &sealed).unwrap();
//! assert_eq!(back.payload().as_bytes(), &[1, 2, 3]);
//! assert!(open_session(&ring, SessionKey::new(&[8; 32], b"web"), &sealed).is_err());
//! ```

mod codec;
mod error;
mod keyring;

pub use codec::{associated_data, decode, encode};
pub use error::{KeyFileError, OpenError};
pub use keyring::{KeyRing, KEY_LEN, MAX_NAME_LEN, SEAL_VERSION};

use reprise::{Session, SessionKey};

/// Seals a session under the ring's first key, bound to its context and id.
pub fn seal_session(ring: &KeyRing, session: &Session) -> Result<Vec<u8>, OpenError> {
    let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
    ring.seal(&associated_data(key), &encode(session))
}

/// Opens a sealed session stored under `key`: any other key, a forged or corrupt value, or one
/// sealed with a key outside the ring is an error.
pub fn open_session(
    ring: &KeyRing,
    key: SessionKey<'_>,
    sealed: &[u8],
) -> Result<Session, OpenError> {
    let plain = ring.open(&associated_data(key), sealed)?;
    decode(key, &plain)
}
