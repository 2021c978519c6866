//! Sealed sessions for Reprise's shared and persistent tiers (Redis, disk): a key ring of named
//! 256-bit keys, and the sealing of a session under it, bound to the session's key.
//!
//! A sealed session reveals nothing of its payload (the master secret, the server name, a
//! client certificate): it is encrypted and authenticated with XChaCha20-Poly1305 under the
//! ring's first key, with the tier's name ([`reprise::Tier::name`]), the session-id context, the id and the
//! format version as associated data. It opens under any key of the ring, and only in the tier
//! and for the key it was sealed for.
//!
//! ```
//! use reprise::{Session, SessionKey, SharedSession};
//! use reprise_seal::{open_session, seal_session, KeyRing};
//!
//! let ring = KeyRing::parse(&format!("k1:{}", "ab".repeat(32))).unwrap();
//! let s = Session::builder(&[7; 32], &[1u8, 2, 3][..]).sid_ctx(b"web").build().unwrap();
//! let s = SharedSession::from(s);
//! let sealed = seal_session(&ring, "redis", &s).unwrap();
//! let back = open_session(&ring, "redis", SessionKey::new(&[7; 32], b"web"), &sealed).unwrap();
//! assert_eq!(back.payload(), &[1, 2, 3]);
//! assert!(open_session(&ring, "redis", SessionKey::new(&[8; 32], b"web"), &sealed).is_err());
//! assert!(open_session(&ring, "disk", SessionKey::new(&[7; 32], b"web"), &sealed).is_err());
//! ```

mod codec;
mod error;
mod keyring;
pub mod tickets;

pub use codec::{associated_data, decode, encode};
pub use error::{KeyFileError, OpenError};
pub use keyring::{KeyRing, KEY_LEN, MAX_NAME_LEN, SEAL_VERSION};

use reprise::{SessionKey, SharedSession};

/// Seals a session under the ring's first key, for the tier named `tier`, bound to its context and id.
pub fn seal_session(
    ring: &KeyRing,
    tier: &str,
    session: &SharedSession,
) -> Result<Vec<u8>, OpenError> {
    let key = SessionKey::new(session.id().as_bytes(), session.sid_ctx().as_bytes());
    ring.seal(&associated_data(tier, key), &encode(session))
}

/// Opens a sealed session stored under `key` in `tier`: another key, another tier, a forged or
/// corrupt value, or one sealed with a key outside the ring is an error. Of those errors,
/// [`OpenError::is_unknown`] tells the ones to keep (a key or format this ring does not have)
/// from the ones to delete.
pub fn open_session(
    ring: &KeyRing,
    tier: &str,
    key: SessionKey<'_>,
    sealed: &[u8],
) -> Result<SharedSession, OpenError> {
    let plain = ring.open(&associated_data(tier, key), sealed)?;
    decode(key, &plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise::Session;

    #[test]
    fn a_value_sealed_for_one_tier_never_opens_in_the_other(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let ring = KeyRing::parse(&format!("k:{}", "42".repeat(32)))?;
        let s = SharedSession::from(
            Session::builder(&[9; 32], &[5; 48][..])
                .sid_ctx(b"ctx")
                .build()?,
        );
        let key = SessionKey::new(&[9; 32], b"ctx");
        for (sealed_for, other) in [("redis", "disk"), ("disk", "redis")] {
            let sealed = seal_session(&ring, sealed_for, &s)?;
            assert!(open_session(&ring, sealed_for, key, &sealed).is_ok());
            let e = open_session(&ring, other, key, &sealed).err();
            assert_eq!(
                e,
                Some(OpenError::Forged),
                "{sealed_for:?} opened in {other:?}"
            );
            assert!(!OpenError::Forged.is_unknown());
        }
        assert!(OpenError::UnknownKey.is_unknown() && OpenError::Version(2).is_unknown());
        Ok(())
    }
}
