//! The ticket format, and the sealing and opening of tickets under a [`TicketKeySource`].
//!
//! # Format (version 1)
//!
//! ```text
//! offset  length  field
//!      0       1  format: 1
//!      1       8  KeyId of the ring key that sealed it
//!      9       4  context tag: the first 4 bytes of SHA-256("reprise ticket context v1" ‖ 0 ‖ sid_ctx)
//!     13      24  nonce: 16 bytes drawn once per sealer ‖ a 64-bit counter, big-endian
//!     37       n  XChaCha20-Poly1305 ciphertext of (issued-at, Unix seconds, 8 bytes big-endian ‖ plaintext)
//!   37+n      16  Poly1305 tag
//! ```
//!
//! The 37-byte header is the associated data: none of it can be changed without the tag
//! failing. The AEAD key is the ring key [derived](super::TicketKey::derive) for the purpose
//! [`RUSTLS_TICKET_PURPOSE`] and the session-id context, so a ticket only opens in the context
//! it was sealed for. A ticket costs [`TICKET_OVERHEAD`] bytes on top of what it carries.
//!
//! The header reveals which ring key sealed the ticket (a public name) and a tag of the
//! session-id context, which is public too; neither says anything of a secret. With the tag, a
//! ticket presented to the wrong context (another certificate, another client-auth policy) is
//! told apart from a forged or damaged one without trying to decrypt it.
//!
//! # Why XChaCha20-Poly1305 and this nonce
//!
//! A whole fleet shares each key, and for as long as a rotation period: nonces chosen by
//! different processes must never collide, without any coordination. A 192-bit nonce made of
//! 128 random bits per sealer and a counter makes a collision as unlikely as guessing the key,
//! and needs no system call per ticket. A random 96-bit nonce per ticket, as AES-GCM takes, is
//! bounded to some 2³² tickets per key by the birthday bound, which a large fleet can reach
//! within a long period, and costs a `getrandom` call each time.
//!
//! The construction is the standard XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): HChaCha20
//! (from the `chacha20` crate) turns the key and the nonce's first 16 bytes into a subkey, and
//! ring's ChaCha20-Poly1305 (RFC 8439) seals under it with the nonce `0⁴ ‖ last 8 bytes`. A
//! sealer's nonces all share its random part, so it computes its subkey once per key; opening
//! computes one HChaCha20 (unless the ticket is this sealer's own). ring's assembly costs a
//! fraction of the pure-Rust `chacha20poly1305` crate's fixed cost per message on short
//! messages like tickets; the micro-benchmark `benches/tickets.rs` of `reprise-rustls`
//! measures both, AES-256-GCM with random nonces, and rustls's own ticketer.
//!
//! The derived keys and subkeys are wiped when dropped. ring's key objects are built on the
//! stack for each ticket (for ChaCha20 that is a copy of 32 bytes) and are not wiped by ring.
//!
//! # Validity
//!
//! A ticket opens only within [`TicketKeySource::lifetime`] of being issued (its age in whole
//! seconds must be below the lifetime), and not when it claims to be issued more than
//! [`MAX_FUTURE_SKEW_SECS`] in the future. Both are checked after the tag, so they cannot be
//! forged.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use reprise::{Clock, SystemClock};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use super::{KeyId, TicketKeySource, TicketKeys, TICKET_KEY_LEN};

/// The format byte that starts every ticket of this version.
pub const TICKET_FORMAT: u8 = 1;

/// The purpose under which a sealer derives its AEAD keys from the ring keys
/// ([`TicketKey::derive`](super::TicketKey::derive)). Another user of the same ring keys
/// (OpenSSL's ticket-key callback) must use a purpose of its own.
pub const RUSTLS_TICKET_PURPOSE: &[u8] = b"reprise rustls ticket v1";

/// How far in the future a ticket's issue time may be (clocks of a fleet differ a little).
pub const MAX_FUTURE_SKEW_SECS: u64 = 60;

const ID_LEN: usize = 8;
const CTX_TAG_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const NONCE_RANDOM_LEN: usize = 16;
const AEAD_TAG_LEN: usize = 16;
const ISSUED_LEN: usize = 8;
const ID_AT: usize = 1;
const CTX_AT: usize = ID_AT + ID_LEN;
const NONCE_AT: usize = CTX_AT + CTX_TAG_LEN;
const HEADER_LEN: usize = NONCE_AT + NONCE_LEN;

/// The bytes a ticket adds to the plaintext it carries: header, issue time and tag.
pub const TICKET_OVERHEAD: usize = HEADER_LEN + ISSUED_LEN + AEAD_TAG_LEN;

reprise::tier_counters! {
    /// What became of the tickets a server sealed and was offered, shared by all its contexts
    /// (one [`TicketSealer`] each).
    pub struct TicketCounters => TicketStats {
        /// Tickets issued.
        issued: Counter = "issued_total",
        /// Tickets not issued: the key source had no key to encrypt with.
        not_issued: Counter = "not_issued_total",
        /// Tickets that opened.
        decrypted: Counter = "decrypted_total",
        /// Tickets refused: sealed with a key this server does not hold (erased, or never known).
        rejected_unknown_key: Counter = "rejected_unknown_key_total",
        /// Tickets refused: issued for another context (certificate, client-auth policy).
        rejected_wrong_context: Counter = "rejected_wrong_context_total",
        /// Tickets refused: older than their lifetime, or dated in the future.
        rejected_expired: Counter = "rejected_expired_total",
        /// Tickets refused: malformed, forged or damaged (the authentication failed).
        rejected_malformed: Counter = "rejected_malformed_total",
    }
}

/// Why a ticket did not open. The connection then makes a full handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Sealed with a key the source does not hold (erased, or from another fleet).
    #[error("ticket sealed with an unknown key")]
    UnknownKey,
    /// Issued for another context: another certificate or client-auth policy.
    #[error("ticket issued for another context")]
    WrongContext,
    /// Older than the lifetime, or issued implausibly far in the future.
    #[error("ticket expired")]
    Expired,
    /// Not a ticket of this format, or forged or damaged: the authentication failed.
    #[error("malformed or forged ticket")]
    Malformed,
}

/// A 256-bit key, wiped when dropped.
type Secret = Zeroizing<[u8; TICKET_KEY_LEN]>;

/// HChaCha20: the subkey of XChaCha20 for `key` and the first 16 bytes of a nonce.
fn hchacha20(key: &[u8; TICKET_KEY_LEN], nonce_prefix: &[u8; NONCE_RANDOM_LEN]) -> Secret {
    use chacha20::cipher::consts::U10;
    use chacha20::cipher::generic_array::GenericArray;
    let mut out = chacha20::hchacha::<U10>(
        GenericArray::from_slice(key),
        GenericArray::from_slice(nonce_prefix),
    );
    let mut subkey = Zeroizing::new([0u8; TICKET_KEY_LEN]);
    subkey.copy_from_slice(&out);
    out.as_mut_slice().zeroize();
    subkey
}

/// ring's ChaCha20-Poly1305 under `subkey` (a 32-byte key is always accepted).
fn chacha(subkey: &Secret) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, &subkey[..])
        .ok()
        .map(LessSafeKey::new)
}

/// The ChaCha20-Poly1305 nonce of XChaCha20-Poly1305: four zero bytes and the last 8 bytes of
/// the 24-byte nonce.
fn inner_nonce(counter: &[u8]) -> Option<Nonce> {
    let mut nonce = [0u8; 12];
    nonce.get_mut(4..)?.copy_from_slice(counter.get(..8)?);
    Some(Nonce::assume_unique_for_key(nonce))
}

/// One ring key, derived for one context.
struct ContextKey {
    id: KeyId,
    key: Secret,
    /// The subkey of this sealer's own nonce prefix: every ticket it seals with this key, and
    /// every one of those it opens.
    own: Option<Secret>,
}

/// The keys of one snapshot, derived for one context.
struct Derived {
    /// The snapshot's generation.
    generation: u64,
    /// Whether the first of `keys` encrypts (the snapshot puts its encrypting key first).
    encrypts: bool,
    /// Every decrypting key.
    keys: Vec<ContextKey>,
}

impl Derived {
    fn new(keys: &TicketKeys, sid_ctx: &[u8], prefix: Option<&[u8; NONCE_RANDOM_LEN]>) -> Self {
        let keys_derived = keys
            .decrypting()
            .iter()
            .map(|k| {
                let key = k.derive(RUSTLS_TICKET_PURPOSE, sid_ctx);
                let own = prefix.map(|p| hchacha20(&key, p));
                ContextKey {
                    id: k.id(),
                    key,
                    own,
                }
            })
            .collect();
        Self {
            generation: keys.generation(),
            encrypts: keys.encrypting().is_some(),
            keys: keys_derived,
        }
    }

    fn encrypting(&self) -> Option<&ContextKey> {
        self.keys.first().filter(|_| self.encrypts)
    }

    fn find(&self, id: KeyId) -> Option<&ContextKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Seals and opens the tickets of one context (one session-id context) with the keys of a
/// [`TicketKeySource`], in the format the [module](self) describes.
///
/// It derives the context's keys once per snapshot of the source (when its generation
/// changes), never per ticket, and counts every outcome in the shared [`TicketCounters`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use reprise_seal::tickets::{LocalTicketKeys, Rejected, TicketCounters, TicketSealer};
///
/// let keys = LocalTicketKeys::new(Duration::from_secs(300)).unwrap();
/// let counters = Arc::new(TicketCounters::default());
/// let web = TicketSealer::new(keys.clone(), b"web", counters.clone());
/// let ticket = web.seal(b"session state").unwrap();
/// assert_eq!(&web.open(&ticket).unwrap()[..], b"session state");
/// let api = TicketSealer::new(keys, b"api", counters.clone());
/// assert_eq!(api.open(&ticket).err(), Some(Rejected::WrongContext));
/// let stats = counters.snapshot();
/// assert_eq!((stats.issued, stats.decrypted, stats.rejected_wrong_context), (1, 1, 1));
/// ```
pub struct TicketSealer {
    source: Arc<dyn TicketKeySource>,
    sid_ctx: Box<[u8]>,
    ctx_tag: [u8; CTX_TAG_LEN],
    counters: Arc<TicketCounters>,
    clock: Arc<dyn Clock>,
    /// The random part of every nonce; None if the system's generator failed (then no ticket
    /// is issued).
    nonce_prefix: Option<[u8; NONCE_RANDOM_LEN]>,
    nonce_counter: AtomicU64,
    derived: ArcSwap<Derived>,
}

/// The context tag of `sid_ctx`: public, it tells contexts apart without revealing a secret.
fn context_tag(sid_ctx: &[u8]) -> [u8; CTX_TAG_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"reprise ticket context v1\0");
    ctx.update(sid_ctx);
    let digest = ctx.finish();
    let mut tag = [0u8; CTX_TAG_LEN];
    tag.copy_from_slice(&digest.as_ref()[..CTX_TAG_LEN]);
    tag
}

impl TicketSealer {
    /// A sealer for the context `sid_ctx`, with keys from `source`, counting in `counters`.
    pub fn new(
        source: Arc<dyn TicketKeySource>,
        sid_ctx: &[u8],
        counters: Arc<TicketCounters>,
    ) -> Self {
        let mut prefix = [0u8; NONCE_RANDOM_LEN];
        let nonce_prefix = SystemRandom::new().fill(&mut prefix).ok().map(|()| prefix);
        if nonce_prefix.is_none() {
            tracing::error!(
                source = source.name(),
                "the system's random number generator failed: no ticket will be issued"
            );
        }
        let derived =
            ArcSwap::from_pointee(Derived::new(&source.keys(), sid_ctx, nonce_prefix.as_ref()));
        Self {
            ctx_tag: context_tag(sid_ctx),
            sid_ctx: sid_ctx.into(),
            source,
            counters,
            clock: Arc::new(SystemClock),
            nonce_prefix,
            nonce_counter: AtomicU64::new(0),
            derived,
        }
    }

    /// The same sealer reading the time from `clock` (for tests; the default is the system's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key source.
    pub fn source(&self) -> &Arc<dyn TicketKeySource> {
        &self.source
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<TicketCounters> {
        &self.counters
    }

    /// How long a ticket stays valid: the source's lifetime.
    pub fn lifetime(&self) -> Duration {
        self.source.lifetime()
    }

    /// Catches up with the source now rather than at the next ticket: a rotation or erasure
    /// the source made (or makes lazily, on this read) takes effect, and the derived keys of a
    /// key the source erased are dropped and wiped. A server calls it periodically (every
    /// second, say), so that an idle server keeps no copy of an erased key, whatever its traffic.
    pub fn refresh(&self) {
        drop(self.derived());
    }

    /// The ciphers of the source's current snapshot, derived again only when it changed.
    fn derived(&self) -> Guard<Arc<Derived>> {
        let keys = self.source.keys();
        let held = self.derived.load();
        if held.generation == keys.generation() {
            return held;
        }
        let fresh = Arc::new(Derived::new(
            &keys,
            &self.sid_ctx,
            self.nonce_prefix.as_ref(),
        ));
        self.derived.store(fresh.clone());
        Guard::from_inner(fresh)
    }

    /// Seals `plain` into a ticket under the source's encrypting key; None (counted) when the
    /// source has none.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ticket = self.seal_uncounted(plain);
        let counter = match ticket {
            Some(_) => &self.counters.issued,
            None => &self.counters.not_issued,
        };
        TicketCounters::bump(counter);
        ticket
    }

    fn seal_uncounted(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let prefix = self.nonce_prefix.as_ref()?;
        let derived = self.derived();
        let key = derived.encrypting()?;
        let cipher = chacha(key.own.as_ref()?)?;
        let counter = self
            .nonce_counter
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes();

        // Allocated once at its final size: the plaintext is encrypted in place and never
        // left behind by a reallocation.
        let mut out = Vec::with_capacity(TICKET_OVERHEAD + plain.len());
        out.push(TICKET_FORMAT);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&self.ctx_tag);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&counter);
        out.extend_from_slice(&self.clock.now().to_be_bytes());
        out.extend_from_slice(plain);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let sealed = inner_nonce(&counter).and_then(|n| {
            cipher
                .seal_in_place_separate_tag(n, Aad::from(&*header), body)
                .ok()
        });
        match sealed {
            Some(tag) => {
                out.extend_from_slice(tag.as_ref());
                Some(out)
            }
            None => {
                // Never for a ticket-sized plaintext; wipe it anyway.
                out.zeroize();
                None
            }
        }
    }

    /// Opens a ticket sealed for this context under a key the source still holds, within its
    /// lifetime; the outcome is counted. The plaintext is wiped when dropped.
    pub fn open(&self, ticket: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rejected> {
        let opened = self.open_uncounted(ticket);
        let c = &self.counters;
        let counter = match opened {
            Ok(_) => &c.decrypted,
            Err(Rejected::UnknownKey) => &c.rejected_unknown_key,
            Err(Rejected::WrongContext) => &c.rejected_wrong_context,
            Err(Rejected::Expired) => &c.rejected_expired,
            Err(Rejected::Malformed) => &c.rejected_malformed,
        };
        TicketCounters::bump(counter);
        opened
    }

    fn open_uncounted(&self, ticket: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rejected> {
        if ticket.len() < TICKET_OVERHEAD || ticket[0] != TICKET_FORMAT {
            return Err(Rejected::Malformed);
        }
        let (header, sealed) = ticket.split_at(HEADER_LEN);
        if header[CTX_AT..NONCE_AT] != self.ctx_tag {
            return Err(Rejected::WrongContext);
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&header[ID_AT..CTX_AT]);
        let derived = self.derived();
        let key = derived
            .find(KeyId::from_bytes(id))
            .ok_or(Rejected::UnknownKey)?;
        let (prefix, counter) = header[NONCE_AT..].split_at(NONCE_RANDOM_LEN);
        let mut ticket_prefix = [0u8; NONCE_RANDOM_LEN];
        ticket_prefix.copy_from_slice(prefix);
        let cipher = match (&key.own, &self.nonce_prefix) {
            (Some(own), Some(mine)) if *mine == ticket_prefix => chacha(own),
            _ => chacha(&hchacha20(&key.key, &ticket_prefix)),
        }
        .ok_or(Rejected::Malformed)?;
        let nonce = inner_nonce(counter).ok_or(Rejected::Malformed)?;
        // Ciphertext and tag, opened in place in a buffer wiped when dropped.
        let mut plain = Zeroizing::new(sealed.to_vec());
        let len = cipher
            .open_in_place(nonce, Aad::from(header), &mut plain)
            .map_err(|_| Rejected::Malformed)?
            .len();
        plain.truncate(len);
        let mut issued = [0u8; ISSUED_LEN];
        issued.copy_from_slice(plain.get(..ISSUED_LEN).ok_or(Rejected::Malformed)?);
        let issued = u64::from_be_bytes(issued);
        let now = self.clock.now();
        if issued > now.saturating_add(MAX_FUTURE_SKEW_SECS)
            || now.saturating_sub(issued) >= self.source.lifetime().as_secs()
        {
            return Err(Rejected::Expired);
        }
        // In place: the bytes moved stay in the buffer, which is wiped whole when dropped.
        plain.drain(..ISSUED_LEN);
        Ok(plain)
    }
}

impl fmt::Debug for TicketSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public facts only: never a key.
        f.debug_struct("TicketSealer")
            .field("source", &self.source.name())
            .field("context_tag", &format_args!("{:02x?}", self.ctx_tag))
            .field("generation", &self.derived.load().generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tickets::{TicketKey, TicketKeys};
    use fixed::Fixed;
    use proptest::prelude::*;
    use reprise::ManualClock;

    /// A source with keys set by hand.
    mod fixed {
        use super::*;
        use std::sync::Mutex;

        #[derive(Debug)]
        pub struct Fixed {
            pub keys: Mutex<Arc<TicketKeys>>,
            pub lifetime: Duration,
        }

        impl Fixed {
            pub fn new(encrypt: Option<u64>, others: &[u64], lifetime: u64) -> Arc<Self> {
                let s = Arc::new(Self {
                    keys: Mutex::new(Arc::new(TicketKeys::new(None, Vec::new(), 0))),
                    lifetime: Duration::from_secs(lifetime),
                });
                s.set(encrypt, others, 1);
                s
            }

            pub fn set(&self, encrypt: Option<u64>, others: &[u64], generation: u64) {
                let key = |v: u64| Arc::new(TicketKey::new(KeyId::from_version(v), [v as u8; 32]));
                let keys = TicketKeys::new(
                    encrypt.map(key),
                    others.iter().copied().map(key).collect(),
                    generation,
                );
                *self.keys.lock().unwrap() = Arc::new(keys);
            }
        }

        impl TicketKeySource for Fixed {
            fn name(&self) -> &str {
                "fixed"
            }
            fn keys(&self) -> Arc<TicketKeys> {
                self.keys.lock().unwrap().clone()
            }
            fn lifetime(&self) -> Duration {
                self.lifetime
            }
        }
    }

    const T0: u64 = 1_800_000_000;

    fn sealer(
        source: &Arc<Fixed>,
        ctx: &[u8],
        clock: &Arc<ManualClock>,
    ) -> (TicketSealer, Arc<TicketCounters>) {
        let counters = Arc::new(TicketCounters::default());
        let s = TicketSealer::new(source.clone(), ctx, counters.clone()).with_clock(clock.clone());
        (s, counters)
    }

    #[test]
    fn round_trip_and_layout() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(2), &[1], 300);
        let (s, counters) = sealer(&source, b"ctx", &clock);
        let plain = vec![0x5a; 150];
        let t = s.seal(&plain).unwrap();
        assert_eq!(t.len(), plain.len() + TICKET_OVERHEAD);
        assert_eq!(t[0], TICKET_FORMAT);
        assert_eq!(&t[ID_AT..CTX_AT], KeyId::from_version(2).as_bytes());
        assert_eq!(t[CTX_AT..NONCE_AT], context_tag(b"ctx"));
        assert!(
            !t.windows(16).any(|w| w == &plain[..16]),
            "plaintext in clear"
        );
        assert_eq!(&s.open(&t).unwrap()[..], &plain[..]);
        // Two tickets of the same plaintext differ (nonces never repeat).
        let t2 = s.seal(&plain).unwrap();
        assert_ne!(t[NONCE_AT..HEADER_LEN], t2[NONCE_AT..HEADER_LEN]);
        assert_eq!(&s.open(&t2).unwrap()[..], &plain[..]);
        // Empty plaintexts too.
        assert!(s.open(&s.seal(b"").unwrap()).unwrap().is_empty());
        let stats = counters.snapshot();
        assert_eq!((stats.issued, stats.decrypted), (3, 3));
        assert!(!format!("{s:?}").contains("[2, 2"));
    }

    /// The construction is the standard XChaCha20-Poly1305: the pure-Rust implementation
    /// opens what the sealer sealed, and the sealer opens what it sealed.
    #[test]
    fn tickets_are_standard_xchacha20_poly1305() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};

        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(2), &[], 300);
        let (s, _) = sealer(&source, b"ctx", &clock);
        let key = source.keys().decrypting()[0].derive(RUSTLS_TICKET_PURPOSE, b"ctx");
        let reference = XChaCha20Poly1305::new((&*key).into());
        let plain = b"a session of some length, longer than one ChaCha20 block of 64 bytes.";
        let t = s.seal(plain).unwrap();
        let (header, sealed) = t.split_at(HEADER_LEN);
        let opened = reference
            .decrypt(
                XNonce::from_slice(&header[NONCE_AT..]),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .unwrap();
        assert_eq!(&opened[..ISSUED_LEN], &T0.to_be_bytes());
        assert_eq!(&opened[ISSUED_LEN..], plain);

        // Sealed elsewhere, with another nonce prefix: opened by the general path.
        let mut other = header.to_vec();
        other[NONCE_AT..NONCE_AT + 16].copy_from_slice(&[0xee; 16]);
        let mut body = T0.to_be_bytes().to_vec();
        body.extend_from_slice(plain);
        let sealed = reference
            .encrypt(
                XNonce::from_slice(&other[NONCE_AT..]),
                Payload {
                    msg: &body,
                    aad: &other,
                },
            )
            .unwrap();
        other.extend_from_slice(&sealed);
        assert_eq!(&s.open(&other).unwrap()[..], plain);
    }

    #[test]
    fn wrong_context_and_unknown_key() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(2), &[1], 300);
        let (a, ca) = sealer(&source, b"plain", &clock);
        let (b, cb) = sealer(&source, b"mtls", &clock);
        let t = a.seal(b"x").unwrap();
        assert_eq!(b.open(&t).err(), Some(Rejected::WrongContext));
        assert_eq!(cb.snapshot().rejected_wrong_context, 1);
        // Another source whose keys are others.
        let other = Fixed::new(Some(3), &[], 300);
        let (c, cc) = sealer(&other, b"plain", &clock);
        assert_eq!(c.open(&t).err(), Some(Rejected::UnknownKey));
        assert_eq!(cc.snapshot().rejected_unknown_key, 1);
        // The same id with another secret: the authentication fails.
        let liar = Fixed::new(Some(2), &[], 300);
        *liar.keys.lock().unwrap() = Arc::new(TicketKeys::new(
            Some(Arc::new(TicketKey::new(KeyId::from_version(2), [9; 32]))),
            Vec::new(),
            1,
        ));
        let (d, cd) = sealer(&liar, b"plain", &clock);
        assert_eq!(d.open(&t).err(), Some(Rejected::Malformed));
        assert_eq!(cd.snapshot().rejected_malformed, 1);
        assert_eq!(ca.snapshot().issued, 1);
    }

    #[test]
    fn keys_follow_the_source_and_decrypt_only_keys_do_not_encrypt() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(1), &[], 300);
        let (s, counters) = sealer(&source, b"c", &clock);
        let old = s.seal(b"old").unwrap();
        // Rotated: 2 encrypts, 1 still decrypts.
        source.set(Some(2), &[1], 2);
        let new = s.seal(b"new").unwrap();
        assert_eq!(&new[ID_AT..CTX_AT], KeyId::from_version(2).as_bytes());
        assert_eq!(&s.open(&old).unwrap()[..], b"old");
        // Key 1 erased.
        source.set(Some(2), &[], 3);
        assert_eq!(s.open(&old).err(), Some(Rejected::UnknownKey));
        assert_eq!(&s.open(&new).unwrap()[..], b"new");
        // Nothing to encrypt with: no ticket, counted; old ones still open.
        source.set(None, &[2], 4);
        assert!(s.seal(b"x").is_none());
        assert_eq!(&s.open(&new).unwrap()[..], b"new");
        assert_eq!(counters.snapshot().not_issued, 1);
    }

    /// An idle sealer lets go of an erased key's derived copy when refreshed, with no ticket
    /// sealed or opened.
    #[test]
    fn refresh_drops_the_derived_keys_of_erased_keys() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(2), &[1], 300);
        let (s, counters) = sealer(&source, b"c", &clock);
        let one = KeyId::from_version(1);
        assert!(s.derived.load().find(one).is_some());
        source.set(Some(2), &[], 2);
        assert!(s.derived.load().find(one).is_some(), "nothing read yet");
        s.refresh();
        assert!(s.derived.load().find(one).is_none());
        assert!(s.derived.load().find(KeyId::from_version(2)).is_some());
        assert_eq!(counters.snapshot(), Default::default());
    }

    #[test]
    fn tickets_expire_by_lifetime_and_future_dates_do_not_open() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(1), &[], 10);
        let (s, counters) = sealer(&source, b"c", &clock);
        let t = s.seal(b"p").unwrap();
        clock.advance(9);
        assert!(s.open(&t).is_ok());
        clock.advance(1);
        assert_eq!(s.open(&t).err(), Some(Rejected::Expired));
        clock.advance(10_000);
        assert_eq!(s.open(&t).err(), Some(Rejected::Expired));
        // Issued by an instance whose clock is far ahead.
        let ahead = Arc::new(ManualClock::new(T0 + 1_000));
        let (future, _) = sealer(&source, b"c", &ahead);
        let f = future.seal(b"p").unwrap();
        clock.set(T0 + 1_000 - MAX_FUTURE_SKEW_SECS);
        assert!(s.open(&f).is_ok(), "within the allowed skew");
        clock.set(T0 + 1_000 - MAX_FUTURE_SKEW_SECS - 1);
        assert_eq!(s.open(&f).err(), Some(Rejected::Expired));
        assert_eq!(counters.snapshot().rejected_expired, 3);
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_refused() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Fixed::new(Some(1), &[], 300);
        let (s, counters) = sealer(&source, b"c", &clock);
        let t = s.seal(&[7; 64]).unwrap();
        for i in 0..t.len() * 8 {
            let mut bad = t.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let want = if (ID_AT..CTX_AT).contains(&(i / 8)) {
                Rejected::UnknownKey
            } else if (CTX_AT..NONCE_AT).contains(&(i / 8)) {
                Rejected::WrongContext
            } else {
                Rejected::Malformed
            };
            assert_eq!(s.open(&bad).err(), Some(want), "bit {i}");
        }
        for n in 0..t.len() {
            assert_eq!(s.open(&t[..n]).err(), Some(Rejected::Malformed), "{n}");
        }
        let stats = counters.snapshot();
        assert_eq!(stats.decrypted, 0);
        assert!(stats.rejected_malformed > 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let clock = Arc::new(ManualClock::new(T0));
            let source = Fixed::new(Some(1), &[], 300);
            let (s, _) = sealer(&source, b"c", &clock);
            prop_assert!(s.open(&bytes).is_err());
        }

        #[test]
        fn mutated_tickets_never_open_as_another_plaintext(
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<Option<usize>>(),
        ) {
            let clock = Arc::new(ManualClock::new(T0));
            let source = Fixed::new(Some(1), &[], 300);
            let (s, _) = sealer(&source, b"c", &clock);
            let good = s.seal(&plain).unwrap();
            let mut t = good.clone();
            for (at, x) in edits {
                let at = at % t.len();
                t[at] ^= x;
            }
            if let Some(cut) = cut {
                t.truncate(cut % (t.len() + 1));
            }
            match s.open(&t) {
                Ok(p) => {
                    prop_assert_eq!(&t, &good);
                    prop_assert_eq!(&p[..], &plain[..]);
                }
                Err(_) => prop_assert_ne!(&t, &good),
            }
        }
    }
}
