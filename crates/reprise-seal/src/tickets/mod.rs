//! Ticket keys: the contract between what supplies a server's session-ticket keys (a key file, a
//! fleet's shared ring, this process alone) and what encrypts tickets with them (the rustls
//! ticketer of `reprise-rustls`, OpenSSL's ticket-key callback).
//!
//! A [`TicketKeySource`] hands out [`TicketKeys`]: an immutable snapshot of the key that
//! encrypts new tickets and of every key that still decrypts. A source replaces its snapshot
//! when its keys change (a rotation, a reloaded file), and gives each snapshot a new
//! [`generation`](TicketKeys::generation), so that a ticketer re-derives its keys only then.
//!
//! A ring key is never used as it is: each security context (session-id context) derives its
//! own keys from it ([`TicketKey::derive`], HKDF-SHA256), so a ticket issued under one
//! certificate or client-auth policy never decrypts under another, even when a whole fleet
//! shares one ring.
//!
//! Writing a source of one's own (keys from a secrets manager, say) takes one trait:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use reprise_seal::tickets::{KeyId, TicketKey, TicketKeySource, TicketKeys};
//!
//! /// One fixed key, for a test.
//! #[derive(Debug)]
//! struct Fixed(Arc<TicketKeys>);
//!
//! impl TicketKeySource for Fixed {
//!     fn name(&self) -> &str {
//!         "fixed"
//!     }
//!     fn keys(&self) -> Arc<TicketKeys> {
//!         self.0.clone()
//!     }
//!     fn lifetime(&self) -> Duration {
//!         Duration::from_secs(300)
//!     }
//! }
//!
//! let key = Arc::new(TicketKey::new(KeyId::from_version(1), [7; 32]));
//! let source = Fixed(Arc::new(TicketKeys::new(Some(key), Vec::new(), 1)));
//! assert_eq!(source.keys().encrypting().map(|k| k.id()), Some(KeyId::from_version(1)));
//! ```
//!
//! What this module provides on top of the contract:
//!
//! - [`TicketSealer`]: the ticket format (documented in [`sealer`]) and its encryption, for one
//!   context of one server, with every outcome counted in [`TicketCounters`];
//! - [`TicketKeyFile`]: keys from a file the operator distributes (the first encrypts, all
//!   decrypt), reloaded when the file changes and on [`reload`](TicketKeySource::reload);
//! - [`LocalTicketKeys`]: random keys of this process alone, rotated by the [`Schedule`];
//! - [`ring_snapshot`] and [`erase_retired`]: the rules of a numbered ring (next, current,
//!   previous), for a source that keeps one (the local keys, a fleet's shared ring).

mod file;
mod local;
pub mod sealer;

pub use file::{FileCounters, FileStats, TicketKeyFile};
pub use local::{LocalCounters, LocalKeysError, LocalStats, LocalTicketKeys};
pub use sealer::{
    Rejected, TicketCounters, TicketSealer, TicketStats, MAX_FUTURE_SKEW_SECS,
    RUSTLS_TICKET_PURPOSE, TICKET_FORMAT, TICKET_OVERHEAD,
};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ring::hkdf;
use zeroize::Zeroizing;

/// The length of a ticket key's secret, in bytes (256 bits).
pub const TICKET_KEY_LEN: usize = 32;

/// The public name of a ticket key: it travels in every ticket's clear header, so that a
/// server finds the key that opens a ticket without trying them all. It reveals nothing of the
/// secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// An id from its bytes, as read from a ticket's header.
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// The id of the key numbered `version` in a ring whose keys are numbered (big-endian).
    pub const fn from_version(version: u64) -> Self {
        Self(version.to_be_bytes())
    }

    /// The id of a key known only by its secret (a key file's): the first 8 bytes of
    /// HMAC-SHA256 under the secret, so that every instance given the same secret names it
    /// the same way, whatever the file calls it.
    pub fn of_secret(secret: &[u8; TICKET_KEY_LEN]) -> Self {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, b"reprise ticket key id");
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag.as_ref()[..8]);
        Self(id)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// The version number of a numbered ring's key ([`from_version`](Self::from_version)).
    pub const fn version(&self) -> u64 {
        u64::from_be_bytes(self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One ticket key: its public [`KeyId`] and its 256-bit secret, wiped when dropped. Its `Debug`
/// shows the id only.
pub struct TicketKey {
    id: KeyId,
    secret: Zeroizing<[u8; TICKET_KEY_LEN]>,
}

impl TicketKey {
    /// A key named `id` with the secret `secret` (which the caller should wipe, or move in from
    /// a `Zeroizing` buffer).
    pub fn new(id: KeyId, secret: [u8; TICKET_KEY_LEN]) -> Self {
        Self {
            id,
            secret: Zeroizing::new(secret),
        }
    }

    /// A key with a fresh random secret from the system's generator.
    pub fn random(id: KeyId) -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut secret = Zeroizing::new([0u8; TICKET_KEY_LEN]);
        ring::rand::SystemRandom::new().fill(&mut secret[..])?;
        Ok(Self { id, secret })
    }

    /// The key's public name.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret, for a source that must seal it for storage (never for logs).
    pub fn secret(&self) -> &[u8; TICKET_KEY_LEN] {
        &self.secret
    }

    /// The 256-bit key of one security context and one purpose: HKDF-SHA256 with the ring
    /// key as input keying material, a fixed salt, and `purpose ‖ 0 ‖ sid_ctx` as info.
    ///
    /// `purpose` separates the uses of one ring key (the rustls ticketer's AEAD key, OpenSSL's
    /// cipher and HMAC keys); `sid_ctx` separates the contexts, so a ticket never opens in a
    /// context other than its own.
    pub fn derive(&self, purpose: &[u8], sid_ctx: &[u8]) -> Zeroizing<[u8; TICKET_KEY_LEN]> {
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                TICKET_KEY_LEN
            }
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"reprise ticket key v1");
        let prk = salt.extract(&self.secret[..]);
        let info = [purpose, &[0u8], sid_ctx];
        let mut out = Zeroizing::new([0u8; TICKET_KEY_LEN]);
        // `expand` fails only when the output is longer than 255 hash lengths, and `fill` only
        // when the buffer's length differs from `Len`: neither can happen here.
        if let Ok(okm) = prk.expand(&info, Len) {
            let _ = okm.fill(&mut out[..]);
        }
        out
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a source's keys: the one that encrypts new tickets (if any), and every key
/// that decrypts, the encrypting one included.
#[derive(Debug)]
pub struct TicketKeys {
    encrypt: Option<Arc<TicketKey>>,
    decrypt: Vec<Arc<TicketKey>>,
    generation: u64,
}

impl TicketKeys {
    /// A snapshot that encrypts with `encrypt` (None: issue no tickets) and decrypts with it and
    /// with `others`. `generation` must differ from the previous snapshot's whenever the keys
    /// differ.
    pub fn new(
        encrypt: Option<Arc<TicketKey>>,
        others: Vec<Arc<TicketKey>>,
        generation: u64,
    ) -> Self {
        let mut decrypt = Vec::with_capacity(others.len() + 1);
        decrypt.extend(encrypt.iter().cloned());
        for k in others {
            if !decrypt.iter().any(|d| d.id() == k.id()) {
                decrypt.push(k);
            }
        }
        Self {
            encrypt,
            decrypt,
            generation,
        }
    }

    /// The key that encrypts new tickets, if any.
    pub fn encrypting(&self) -> Option<&Arc<TicketKey>> {
        self.encrypt.as_ref()
    }

    /// Every key that decrypts, the encrypting one first.
    pub fn decrypting(&self) -> &[Arc<TicketKey>] {
        &self.decrypt
    }

    /// The key named `id`, if it still decrypts.
    pub fn find(&self, id: KeyId) -> Option<&Arc<TicketKey>> {
        self.decrypt.iter().find(|k| k.id() == id)
    }

    /// The snapshot's generation: a new one whenever the keys change.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Rotation by the clock, the same on every instance without talking: time is cut into periods
/// of one ticket lifetime, numbered from the Unix epoch. Key `n` is learned during period
/// `n - 1` (it is then the *next* key), encrypts during period `n` (*current*), decrypts during
/// period `n + 1` (*previous*: the tickets it issued live one lifetime at most), and is erased
/// when period `n + 2` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    period: u64,
}

impl Schedule {
    /// A schedule whose periods last `period` (whole seconds); None below one second.
    pub fn new(period: Duration) -> Option<Self> {
        let period = period.as_secs();
        (period >= 1).then_some(Self { period })
    }

    /// The length of a period.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period)
    }

    /// The number of the period that contains the Unix time `unix_secs`.
    pub fn slot_at(&self, unix_secs: u64) -> u64 {
        unix_secs / self.period
    }

    /// The Unix time at which period `slot` starts.
    pub fn starts(&self, slot: u64) -> u64 {
        slot.saturating_mul(self.period)
    }
}

/// The snapshot of a numbered ring (keys by version, as [`Schedule`] numbers the periods)
/// during period `slot`:
///
/// - key `slot` (*current*) encrypts;
/// - keys `slot + 1` (*next*: learned a period early, so that every holder decrypts a ticket
///   before any holder issues one) and `slot - 1` (*previous*: its tickets live one lifetime
///   at most) decrypt too;
/// - when key `slot` is missing (no next key could be learned in time, during an outage), key
///   `slot - 1` stays the encrypting key for this one more period, rather than issuing no
///   tickets; when that is missing too, the snapshot encrypts with nothing.
///
/// Keys outside `slot - 1 ..= slot + 1` are left out (see [`erase_retired`]). `generation`
/// becomes the snapshot's [`generation`](TicketKeys::generation).
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Arc;
/// use reprise_seal::tickets::{ring_snapshot, KeyId, TicketKey};
///
/// let ring: BTreeMap<u64, Arc<TicketKey>> = (4..=7)
///     .map(|v| (v, Arc::new(TicketKey::new(KeyId::from_version(v), [v as u8; 32]))))
///     .collect();
/// let keys = ring_snapshot(&ring, 6, 1);
/// assert_eq!(keys.encrypting().map(|k| k.id().version()), Some(6));
/// let mut held: Vec<u64> = keys.decrypting().iter().map(|k| k.id().version()).collect();
/// held.sort();
/// assert_eq!(held, [5, 6, 7]);
/// // Period 8 came and key 8 never did: key 7 keeps encrypting, for one period.
/// assert_eq!(ring_snapshot(&ring, 8, 2).encrypting().map(|k| k.id().version()), Some(7));
/// assert!(ring_snapshot(&ring, 9, 3).encrypting().is_none());
/// ```
pub fn ring_snapshot(
    ring: &BTreeMap<u64, Arc<TicketKey>>,
    slot: u64,
    generation: u64,
) -> TicketKeys {
    let current = ring.get(&slot);
    let previous = slot.checked_sub(1).and_then(|v| ring.get(&v));
    let next = slot.checked_add(1).and_then(|v| ring.get(&v));
    let encrypt = current.or(previous).cloned();
    let others = [current, next, previous]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    TicketKeys::new(encrypt, others, generation)
}

/// Erases from a numbered ring every key retired two periods or more before period `slot`
/// (versions below `slot - 1`), and returns how many. A key's secret is zeroized when the last
/// holder of its `Arc` lets go of it: the source's previous snapshot, and a ticketer's keys
/// derived from it, which it re-derives on its next ticket.
pub fn erase_retired(ring: &mut BTreeMap<u64, Arc<TicketKey>>, slot: u64) -> usize {
    let keep = ring.split_off(&slot.saturating_sub(1));
    let erased = std::mem::replace(ring, keep);
    erased.len()
}

/// Where a server's ticket keys come from.
///
/// Implement it to supply keys from elsewhere: the ticketer calls [`keys`](Self::keys) for
/// every ticket it issues or opens, and re-derives its per-context keys when the snapshot's
/// generation changes. Rotation, erasure and fail-open are the source's business.
pub trait TicketKeySource: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics (`file`, `redis`, `local`).
    fn name(&self) -> &str;

    /// The keys to use now. Called on every ticket issued or opened: it must be cheap (an
    /// atomic load) and must never block.
    fn keys(&self) -> Arc<TicketKeys>;

    /// How long a ticket is valid after it was issued. A ticket older than this never
    /// decrypts, whichever key sealed it.
    fn lifetime(&self) -> Duration;

    /// Reads the keys again from where they come from (a file on SIGHUP). The default has
    /// nothing to read. An error keeps the keys as they were.
    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }

    /// The source's own counters and gauges (rotations, the current key's version and age,
    /// fallbacks), named without a prefix. The default has none.
    fn metrics(&self) -> Vec<reprise::tier::Metric> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_by_context_and_purpose() {
        let k = TicketKey::new(KeyId::from_version(3), [9; TICKET_KEY_LEN]);
        let a = k.derive(b"rustls", b"ctx-a");
        assert_eq!(*a, *k.derive(b"rustls", b"ctx-a"));
        assert_ne!(*a, *k.derive(b"rustls", b"ctx-b"));
        assert_ne!(*a, *k.derive(b"openssl", b"ctx-a"));
        assert_ne!(*a, [9; TICKET_KEY_LEN]);
        // No ambiguity between where the purpose ends and the context starts.
        assert_ne!(*k.derive(b"ab", b"c"), *k.derive(b"a", b"bc"));
    }

    #[test]
    fn ids_and_snapshots() {
        assert_eq!(KeyId::from_version(258).version(), 258);
        assert_eq!(KeyId::from_version(258).to_string(), "0000000000000102");
        assert_eq!(KeyId::of_secret(&[1; 32]), KeyId::of_secret(&[1; 32]));
        assert_ne!(KeyId::of_secret(&[1; 32]), KeyId::of_secret(&[2; 32]));
        let k1 = Arc::new(TicketKey::new(KeyId::from_version(1), [1; 32]));
        let k2 = Arc::new(TicketKey::new(KeyId::from_version(2), [2; 32]));
        let keys = TicketKeys::new(Some(k2.clone()), vec![k2.clone(), k1.clone()], 7);
        assert_eq!(keys.decrypting().len(), 2);
        assert_eq!(keys.decrypting()[0].id(), k2.id());
        assert!(keys.find(k1.id()).is_some());
        assert!(keys.find(KeyId::from_version(3)).is_none());
        assert!(!format!("{k1:?}").contains("[1, 1"));
    }

    #[test]
    fn retired_keys_are_erased() {
        let mut ring: BTreeMap<u64, Arc<TicketKey>> = (0..6)
            .map(|v| (v, Arc::new(TicketKey::new(KeyId::from_version(v), [1; 32]))))
            .collect();
        let weak = Arc::downgrade(&ring[&2]);
        assert_eq!(erase_retired(&mut ring, 4), 3);
        assert_eq!(ring.keys().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert!(weak.upgrade().is_none(), "key 2 was not dropped");
        assert_eq!(erase_retired(&mut ring, 0), 0);
        assert_eq!(erase_retired(&mut ring, 1), 0);
        let keys = ring_snapshot(&ring, 0, 1);
        assert!(keys.encrypting().is_none() && keys.decrypting().is_empty());
        let keys = ring_snapshot(&ring, 2, 1);
        assert_eq!(keys.encrypting().map(|k| k.id().version()), None);
        assert_eq!(keys.decrypting().len(), 1);
    }

    #[test]
    fn schedule_slots() {
        assert!(Schedule::new(Duration::from_millis(999)).is_none());
        let s = Schedule::new(Duration::from_secs(300)).unwrap();
        assert_eq!(s.slot_at(0), 0);
        assert_eq!(s.slot_at(299), 0);
        assert_eq!(s.slot_at(300), 1);
        assert_eq!(s.starts(s.slot_at(1234) + 1), 1500);
        assert_eq!(s.starts(u64::MAX), u64::MAX);
    }
}
