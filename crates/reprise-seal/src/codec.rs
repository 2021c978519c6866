//! The plaintext form of a session inside a sealed value, and the associated data that binds
//! a sealed value to its tier (by name) and its key (the session-id context and the id).

use reprise::{ProtocolVersion, Session, SessionKey, SharedSession};
use zeroize::Zeroizing;

use crate::error::OpenError;
use crate::keyring::SEAL_VERSION;

/// The version of the plaintext layout.
const CODEC_VERSION: u8 = 1;

/// Header: codec version (1), protocol version (2), time (8), timeout (8).
const HEADER: usize = 1 + 2 + 8 + 8;

/// What starts the associated data of every sealed value.
const LABEL: &[u8] = b"reprise-sealed\0";

/// The associated data of a sealed session: a label, the name of the tier it is sealed for
/// (the tier's [`Tier::name`](reprise::Tier::name)), the seal format version, and the session's
/// context and id (its key in the tier), each length-prefixed. The tier's name in it means a
/// value sealed for one tier never opens in another: a copy of the disk file cannot be replayed
/// into Redis, nor a Redis value into the disk file.
pub fn associated_data(tier: &str, key: SessionKey<'_>) -> Vec<u8> {
    let tier = &tier.as_bytes()[..tier.len().min(usize::from(u8::MAX))];
    let mut ad =
        Vec::with_capacity(LABEL.len() + 4 + tier.len() + key.sid_ctx.len() + key.id.len());
    ad.extend_from_slice(LABEL);
    ad.push(tier.len() as u8);
    ad.extend_from_slice(tier);
    ad.push(SEAL_VERSION);
    ad.push(key.sid_ctx.len() as u8);
    ad.extend_from_slice(key.sid_ctx);
    ad.push(key.id.len() as u8);
    ad.extend_from_slice(key.id);
    ad
}

/// Everything of a session but its id and context (which are in the Redis key and the
/// associated data): version, time, timeout and payload.
pub fn encode(session: &SharedSession) -> Zeroizing<Vec<u8>> {
    let payload = session.payload();
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER + payload.len()));
    out.push(CODEC_VERSION);
    out.extend_from_slice(&session.version().0.to_be_bytes());
    out.extend_from_slice(&session.time().to_be_bytes());
    out.extend_from_slice(&session.timeout_secs().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Rebuilds the session stored under `key` from its plaintext, its payload copied into the
/// session's own allocation.
pub fn decode(key: SessionKey<'_>, plain: &[u8]) -> Result<SharedSession, OpenError> {
    match plain.first() {
        // Sealed by a later build, in a layout this one does not know: a value to keep.
        Some(&v) if v != CODEC_VERSION => return Err(OpenError::Version(v)),
        _ if plain.len() < HEADER => return Err(OpenError::BadSession),
        _ => {}
    }
    let version = u16::from_be_bytes([plain[1], plain[2]]);
    let mut time = [0u8; 8];
    time.copy_from_slice(&plain[3..11]);
    let mut timeout = [0u8; 8];
    timeout.copy_from_slice(&plain[11..19]);
    Session::builder(key.id, &plain[HEADER..])
        .sid_ctx(key.sid_ctx)
        .version(ProtocolVersion(version))
        .time(u64::from_be_bytes(time))
        .timeout_secs(u64::from_be_bytes(timeout))
        .build()
        .map(SharedSession::from)
        .map_err(|_| OpenError::BadSession)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_input() -> Result<(), Box<dyn std::error::Error>> {
        let s = SharedSession::from(
            Session::builder(&[3; 32], &[9; 50][..])
                .sid_ctx(b"ctx")
                .version(ProtocolVersion::TLS1_3)
                .time(1234)
                .timeout_secs(300)
                .build()?,
        );
        let key = SessionKey::new(&[3; 32], b"ctx");
        let back = decode(key, &encode(&s))?;
        assert_eq!(back.id(), s.id());
        assert_eq!(back.sid_ctx(), s.sid_ctx());
        assert_eq!(back.version(), s.version());
        assert_eq!((back.time(), back.timeout_secs()), (1234, 300));
        assert_eq!(back.payload(), s.payload());
        let plain = encode(&s);
        for n in 0..HEADER {
            assert_eq!(decode(key, &plain[..n]).err(), Some(OpenError::BadSession));
        }
        assert!(decode(SessionKey::new(&[], b""), &plain).is_err());
        let mut later = plain.to_vec();
        later[0] = CODEC_VERSION + 1;
        assert_eq!(
            decode(key, &later).err(),
            Some(OpenError::Version(CODEC_VERSION + 1))
        );
        assert_ne!(
            associated_data("redis", key),
            associated_data("redis", SessionKey::new(&[3; 32], b"ctx2"))
        );
        assert_ne!(associated_data("redis", key), associated_data("disk", key));
        // The label names no tier; the tier's own name follows it, then the format version.
        assert!(associated_data("redis", key).starts_with(b"reprise-sealed\0\x05redis\x02\x03ctx"));
        Ok(())
    }
}
