//! Sessions: the cached unit, its bounded identifiers and its secret payload.

use core::fmt;
use std::sync::Arc;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::SessionError;
use crate::shim::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::thin::{Shared, ThinBytes};

/// The longest session id TLS allows, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 32;

/// The longest session-id context OpenSSL allows, in bytes.
pub const MAX_SID_CTX_LEN: usize = 32;

/// The longest session timeout, in seconds (about 136 years); longer timeouts become this.
pub const MAX_TIMEOUT_SECS: u64 = u32::MAX as u64;

/// The default session timeout, in seconds (the value OpenSSL documents).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Up to 32 bytes stored inline, so that ids and contexts never allocate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ShortBytes {
    len: u8,
    bytes: [u8; 32],
}

impl ShortBytes {
    /// Callers have checked `src.len() <= 32`.
    fn copy_from(src: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..src.len()].copy_from_slice(src);
        Self {
            len: src.len() as u8,
            bytes,
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Writes a short hexadecimal prefix: enough to tell values apart in logs, never the whole value.
fn fmt_prefix(f: &mut fmt::Formatter<'_>, name: &str, bytes: &[u8]) -> fmt::Result {
    write!(f, "{name}(")?;
    for b in bytes.iter().take(4) {
        write!(f, "{b:02x}")?;
    }
    if bytes.len() > 4 {
        write!(f, "…")?;
    }
    write!(f, "; {} bytes)", bytes.len())
}

/// A session id: 1 to 32 bytes.
///
/// An empty or longer id cannot be represented, so every cached session has a valid id.
///
/// ```
/// use reprise::SessionId;
/// assert!(SessionId::new(&[7; 32]).is_ok());
/// assert!(SessionId::new(&[]).is_err());
/// assert!(SessionId::new(&[7; 33]).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(ShortBytes);

impl SessionId {
    /// Validates and copies an id.
    pub fn new(id: &[u8]) -> Result<Self, SessionError> {
        match id.len() {
            0 => Err(SessionError::EmptyId),
            n if n > MAX_SESSION_ID_LEN => Err(SessionError::IdTooLong(n)),
            _ => Ok(Self(ShortBytes::copy_from(id))),
        }
    }

    /// The id's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_prefix(f, "SessionId", self.as_bytes())
    }
}

/// A session-id context: 0 to 32 bytes that name the security context a session belongs to.
///
/// A session only resumes under the context it was created in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SidCtx(ShortBytes);

impl SidCtx {
    /// The empty context.
    pub const EMPTY: SidCtx = SidCtx(ShortBytes {
        len: 0,
        bytes: [0; 32],
    });

    /// Validates and copies a context.
    pub fn new(ctx: &[u8]) -> Result<Self, SessionError> {
        if ctx.len() > MAX_SID_CTX_LEN {
            return Err(SessionError::SidCtxTooLong(ctx.len()));
        }
        Ok(Self(ShortBytes::copy_from(ctx)))
    }

    /// The context's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// Whether the context is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

impl Default for SidCtx {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl fmt::Debug for SidCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_prefix(f, "SidCtx", self.as_bytes())
    }
}

/// A TLS protocol version, as its wire value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ProtocolVersion(pub u16);

impl ProtocolVersion {
    /// Not known to the cache.
    pub const UNKNOWN: ProtocolVersion = ProtocolVersion(0);
    /// TLS 1.2.
    pub const TLS1_2: ProtocolVersion = ProtocolVersion(0x0303);
    /// TLS 1.3.
    pub const TLS1_3: ProtocolVersion = ProtocolVersion(0x0304);

    /// Whether this is a known protocol before TLS 1.3 (SSL 3.0 to TLS 1.2, DTLS 1.0 and
    /// 1.2): its sessions resume by an id sent in the clear, any number of times. A take
    /// (single use) never consumes such a session, or anyone who saw a TLS 1.2 session id on
    /// the wire could burn it by offering the id as a TLS 1.3 ticket.
    #[inline]
    pub fn is_reusable(self) -> bool {
        matches!(self.0, 0x0300..=0x0303 | 0xfeff | 0xfefd)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TLS1_2 => f.write_str("TLSv1.2"),
            Self::TLS1_3 => f.write_str("TLSv1.3"),
            Self(v) => write!(f, "0x{v:04x}"),
        }
    }
}

/// Secret bytes, such as an encoded TLS session: redacted in `Debug`, zeroed on drop.
///
/// One pointer (8 bytes), with the length in front of the bytes in their allocation.
#[derive(Clone)]
pub struct SecretBytes(ThinBytes);

impl SecretBytes {
    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The number of bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SecretBytes {}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        let secret = Self(ThinBytes::copy_from(&v));
        wipe_vec(v);
        secret
    }
}

/// Zeroes all of a vector's capacity before it is freed, since bytes past the length may have
/// held secrets too (one `memset`, kept by the barrier, as in `wipe`).
fn wipe_vec(mut v: Vec<u8>) {
    let capacity = v.capacity();
    v.clear();
    v.resize(capacity, 0);
    zeroize::optimization_barrier(v.as_slice());
}

impl From<&[u8]> for SecretBytes {
    fn from(v: &[u8]) -> Self {
        Self(ThinBytes::copy_from(v))
    }
}

impl Drop for SecretBytes {
    /// Zeroes the bytes the way the `zeroize` crate documents for its own types: plain writes
    /// (one `memset`), then its optimization barrier, which keeps the compiler from removing
    /// them. `Zeroize for [u8]` writes one volatile byte at a time, about ten times slower
    /// for a 100-byte session, in a path every evicted or taken session goes through.
    fn drop(&mut self) {
        self.0.with_bytes_mut(wipe);
    }
}

/// Zeroes secret bytes: one `memset`, which the barrier keeps from being optimised away.
#[inline]
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    zeroize::optimization_barrier(bytes);
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The key a lookup uses: the id a peer proposed and the context it must belong to.
///
/// Both are untrusted and may have any length: a lookup with an invalid key is a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey<'a> {
    /// The proposed session id.
    pub id: &'a [u8],
    /// The session-id context of the connection that looks it up.
    pub sid_ctx: &'a [u8],
}

impl<'a> SessionKey<'a> {
    /// A key for `id` under the context `sid_ctx`.
    pub fn new(id: &'a [u8], sid_ctx: &'a [u8]) -> Self {
        Self { id, sid_ctx }
    }

    /// Whether the key can name a session at all (id of 1..=32 bytes, context of at most 32).
    #[inline]
    pub fn is_well_formed(&self) -> bool {
        (1..=MAX_SESSION_ID_LEN).contains(&self.id.len()) && self.sid_ctx.len() <= MAX_SID_CTX_LEN
    }
}

/// What [`Session::validate`] says about a session found for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// It may resume.
    Valid,
    /// Its id or its session-id context is not the key's: it belongs to another context.
    OtherKey,
    /// It was removed or taken.
    NotResumable,
    /// Its time plus timeout has passed.
    Expired,
}

/// One TLS session: what a client can later resume.
///
/// Sessions are immutable once built, except for the fields the cache itself maintains: the
/// time (updated under [`CacheMode::UPDATE_TIME`](crate::CacheMode::UPDATE_TIME)) and the
/// resumable flag (cleared when the session is removed). They are shared as
/// [`SharedSession`](crate::SharedSession), and "the identical session" means the same
/// allocation ([`Shared::ptr_eq`](crate::Shared::ptr_eq)).
pub struct Session<P = InlineSecret> {
    // Laid out to keep the per-session overhead small: the context is shared between the
    // sessions of a context, and the small fields pack together.
    time: AtomicU64,
    sid_ctx: Arc<SharedSidCtx>,
    payload: P,
    id: SessionId,
    version: ProtocolVersion,
    resumable: AtomicBool,
    timeout_secs: u32,
}

// What the layout is for (`docs/PERFORMANCE.md`, "Memory per session"): a session with the
// default payload in 56 bytes, 64 with its `Shared` header, the payload's bytes after them in the
// same allocation; with a `SecretBytes` payload (one pointer) in 64 (shuttle's atomics, in the
// interleaving tests only, are larger).
#[cfg(all(target_pointer_width = "64", not(feature = "shuttle")))]
const _: () = assert!(
    core::mem::size_of::<Session>() == 56 && core::mem::size_of::<Session<SecretBytes>>() == 64
);

impl<P> Session<P> {
    /// Starts building a session with the given id and payload.
    ///
    /// The defaults: an empty context, [`ProtocolVersion::UNKNOWN`], the current system time,
    /// a timeout of [`DEFAULT_TIMEOUT_SECS`], resumable. [`SessionCache::session`](crate::SessionCache::session)
    /// starts from the cache's clock and timeout instead.
    ///
    /// ```
    /// use reprise::{ProtocolVersion, SecretBytes, Session};
    /// let s = Session::builder(&[1; 32], SecretBytes::from(vec![0u8; 48]))
    ///     .sid_ctx(b"my-service")
    ///     .version(ProtocolVersion::TLS1_2)
    ///     .time(1_000)
    ///     .timeout_secs(10)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(s.expires_at(), 1_010);
    /// assert!(!s.is_expired_at(1_010));
    /// assert!(s.is_expired_at(1_011));
    /// ```
    pub fn builder(id: &[u8], payload: P) -> SessionBuilder<'_, P> {
        SessionBuilder {
            id,
            sid_ctx: &[],
            version: ProtocolVersion::UNKNOWN,
            time: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            resumable: true,
            payload,
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The session-id context the session belongs to.
    pub fn sid_ctx(&self) -> &SidCtx {
        &self.sid_ctx.0
    }

    /// The protocol version the session was negotiated with.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The session's time (creation, or the last add under `UPDATE_TIME`), in Unix seconds.
    pub fn time(&self) -> u64 {
        self.time.load(Ordering::Relaxed)
    }

    /// The session's timeout, in seconds.
    pub fn timeout_secs(&self) -> u64 {
        u64::from(self.timeout_secs)
    }

    /// The last second at which the session is still valid: `time + timeout`, saturating.
    ///
    /// A session whose expiry would overflow never expires.
    pub fn expires_at(&self) -> u64 {
        self.time().saturating_add(u64::from(self.timeout_secs))
    }

    /// Whether the session is expired at `now`: strictly `now > time + timeout`.
    pub fn is_expired_at(&self, now: u64) -> bool {
        now > self.expires_at()
    }

    /// Whether the session may still be resumed. Removing a session clears this.
    pub fn is_resumable(&self) -> bool {
        self.resumable.load(Ordering::Acquire)
    }

    /// The payload: the TLS stack's state for this session.
    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// A new session with this one's id, context, version, time and timeout, and `payload`:
    /// what a tier keeps or hands back (never the cache's own object, which the cache marks
    /// not resumable when it lets the session go).
    ///
    /// ```
    /// use reprise::{SecretBytes, Session};
    /// let s = Session::builder(&[1; 32], SecretBytes::from(vec![7; 48])).sid_ctx(b"web").build().unwrap();
    /// let copy = s.copy_with(SecretBytes::from(s.payload().as_bytes()));
    /// assert_eq!((copy.key(), copy.time(), copy.payload().as_bytes()), (s.key(), s.time(), &[7; 48][..]));
    /// ```
    pub fn copy_with<Q>(&self, payload: Q) -> Session<Q> {
        Session {
            id: self.id,
            sid_ctx: Arc::clone(&self.sid_ctx),
            version: self.version,
            timeout_secs: self.timeout_secs,
            time: AtomicU64::new(self.time()),
            resumable: AtomicBool::new(true),
            payload,
        }
    }

    /// The last second a store outside memory should keep the session (Unix seconds): its
    /// expiry plus one, capped at `max_ttl` seconds from `now`; `None` if that is already past.
    /// For a store that expires entries by itself (Redis `EXAT`, memcached's exptime).
    ///
    /// ```
    /// use reprise::{SecretBytes, Session};
    /// let s = Session::builder(&[1; 32], SecretBytes::from(vec![0; 48])).time(1_000).timeout_secs(300).build().unwrap();
    /// assert_eq!(s.keep_until(1_000, 3_600), Some(1_301));
    /// assert_eq!(s.keep_until(1_000, 60), Some(1_060));
    /// assert_eq!(s.keep_until(1_301, 3_600), None);
    /// ```
    pub fn keep_until(&self, now: u64, max_ttl: u64) -> Option<u64> {
        let until = self
            .expires_at()
            .saturating_add(1)
            .min(now.saturating_add(max_ttl));
        (until > now).then_some(until)
    }

    /// The key the session is cached under: its id and its context.
    pub fn key(&self) -> SessionKey<'_> {
        SessionKey::new(self.id.as_bytes(), self.sid_ctx().as_bytes())
    }

    /// Whether the session may resume a lookup of `key` at `now`: the one validation every
    /// store applies to a session it found, in memory or in a tier.
    ///
    /// ```
    /// use reprise::{SecretBytes, Session, SessionKey, Validity};
    /// let s = Session::builder(&[1; 32], SecretBytes::from(vec![0u8; 48]))
    ///     .sid_ctx(b"web").time(1_000).timeout_secs(10).build().unwrap();
    /// assert_eq!(s.validate(s.key(), 1_010), Validity::Valid);
    /// assert_eq!(s.validate(SessionKey::new(&[1; 32], b"api"), 1_010), Validity::OtherKey);
    /// assert_eq!(s.validate(s.key(), 1_011), Validity::Expired);
    /// ```
    pub fn validate(&self, key: SessionKey<'_>, now: u64) -> Validity {
        if self.id.as_bytes() != key.id || self.sid_ctx().as_bytes() != key.sid_ctx {
            Validity::OtherKey
        } else if !self.is_resumable() {
            Validity::NotResumable
        } else if self.is_expired_at(now) {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    pub(crate) fn set_time(&self, t: u64) {
        self.time.store(t, Ordering::Relaxed);
    }

    pub(crate) fn mark_not_resumable(&self) {
        self.resumable.store(false, Ordering::Release);
    }

    /// Clears the resumable flag and says whether this call cleared it: of any number of
    /// threads that claim one session, exactly one wins.
    pub(crate) fn claim(&self) -> bool {
        self.resumable.swap(false, Ordering::AcqRel)
    }
}

impl Session<SecretBytes> {
    /// A copy of the session with a copy of its payload (zeroed on drop, as the original's):
    /// [`copy_with`](Session::copy_with) for a `SecretBytes` payload.
    pub fn duplicate(&self) -> Session<SecretBytes> {
        self.copy_with(SecretBytes::from(self.payload.as_bytes()))
    }
}

impl<P> Session<P> {
    /// The session with `payload` in place of its own, and its own.
    fn swap_payload<Q>(self, payload: Q) -> (Session<Q>, P) {
        let Session {
            time,
            sid_ctx,
            payload: old,
            id,
            version,
            resumable,
            timeout_secs,
        } = self;
        let session = Session {
            time,
            sid_ctx,
            payload,
            id,
            version,
            resumable,
            timeout_secs,
        };
        (session, old)
    }
}

/// The default payload of a cached session: secret bytes (a TLS stack's encoded session) kept
/// in the session's own allocation, after its fields, and zeroed when the last pointer to it
/// goes. It saves the pointer and the second allocation a [`SecretBytes`] payload needs
/// (`docs/PERFORMANCE.md`, "Memory per session").
///
/// The bytes live in the shared allocation, so they are read from a
/// [`SharedSession`](crate::SharedSession): [`SharedSession::payload`](crate::SharedSession::payload).
/// A session is built with any payload and becomes a shared one with its bytes moved in:
///
/// ```
/// use reprise::{SecretBytes, Session, SharedSession};
/// let built = Session::builder(&[1; 32], SecretBytes::from(vec![7; 48])).build().unwrap();
/// let shared = SharedSession::from(built);
/// assert_eq!(shared.payload(), &[7; 48][..]);
/// let borrowed = Session::builder(&[2; 32], &b"encoded"[..]).build().unwrap();
/// assert_eq!(SharedSession::from(borrowed).payload(), b"encoded");
/// ```
// Neither `Clone` nor `Copy`: `session.payload().clone()` on a `&Session<InlineSecret>` (not
// the shared session) would copy a marker with no bytes; without them it does not compile.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct InlineSecret;

impl Shared<Session<InlineSecret>> {
    /// The payload: the TLS stack's state for this session, kept in the session's allocation.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        Shared::tail(self)
    }

    /// A new session with this one's id, context, version, time, timeout and a copy of its
    /// payload, resumable: what a tier keeps or hands back (never the cache's own object).
    ///
    /// ```
    /// use reprise::{SecretBytes, Session, SharedSession};
    /// let s = SharedSession::from(Session::builder(&[1; 32], &[7u8; 48][..]).build().unwrap());
    /// let copy = s.duplicate();
    /// assert!(!SharedSession::ptr_eq(&s, &copy));
    /// assert_eq!((copy.key(), copy.payload()), (s.key(), s.payload()));
    /// ```
    pub fn duplicate(&self) -> Self {
        Shared::with_tail(self.copy_with(InlineSecret), self.payload())
    }
}

impl From<Session<SecretBytes>> for Shared<Session<InlineSecret>> {
    /// Moves the payload's bytes into the shared session's allocation; the `SecretBytes` is
    /// zeroed as it is dropped.
    fn from(session: Session<SecretBytes>) -> Self {
        let (session, payload) = session.swap_payload(InlineSecret);
        Shared::with_tail(session, payload.as_bytes())
    }
}

impl From<Session<Vec<u8>>> for Shared<Session<InlineSecret>> {
    /// Copies the payload into the shared session's allocation, then zeroes all of the
    /// vector's capacity (as [`SecretBytes::from`] does) before it is freed: what a TLS stack's
    /// encoded session, handed over as a `Vec`, takes.
    fn from(session: Session<Vec<u8>>) -> Self {
        let (session, payload) = session.swap_payload(InlineSecret);
        let shared = Shared::with_tail(session, &payload);
        wipe_vec(payload);
        shared
    }
}

impl From<Session<&[u8]>> for Shared<Session<InlineSecret>> {
    /// Copies the borrowed payload into the shared session's allocation.
    fn from(session: Session<&[u8]>) -> Self {
        let (session, payload) = session.swap_payload(InlineSecret);
        Shared::with_tail(session, payload)
    }
}

impl<P> fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload holds secrets: it is never printed.
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("sid_ctx", self.sid_ctx())
            .field("version", &self.version)
            .field("time", &self.time())
            .field("timeout_secs", &self.timeout_secs)
            .field("resumable", &self.is_resumable())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Session`]; see [`Session::builder`].
#[must_use]
pub struct SessionBuilder<'a, P> {
    id: &'a [u8],
    sid_ctx: &'a [u8],
    version: ProtocolVersion,
    time: Option<u64>,
    timeout_secs: u64,
    resumable: bool,
    payload: P,
}

impl<'a, P> SessionBuilder<'a, P> {
    /// Sets the session-id context (at most 32 bytes).
    pub fn sid_ctx(mut self, sid_ctx: &'a [u8]) -> Self {
        self.sid_ctx = sid_ctx;
        self
    }

    /// Sets the protocol version.
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }

    /// Sets the session's time, in Unix seconds.
    pub fn time(mut self, time: u64) -> Self {
        self.time = Some(time);
        self
    }

    /// Sets the timeout, in seconds; at most [`MAX_TIMEOUT_SECS`] (136 years), which longer
    /// timeouts become.
    pub fn timeout_secs(mut self, timeout_secs: u64) -> Self {
        self.timeout_secs = timeout_secs;
        self
    }

    /// Sets whether the session may be resumed (the default is yes).
    pub fn resumable(mut self, resumable: bool) -> Self {
        self.resumable = resumable;
        self
    }

    /// Validates the id and context and builds the session.
    pub fn build(self) -> Result<Session<P>, SessionError> {
        let id = SessionId::new(self.id)?;
        let sid_ctx = shared_sid_ctx(self.sid_ctx)?;
        let time = self.time.unwrap_or_else(unix_now);
        Ok(Session {
            id,
            sid_ctx,
            version: self.version,
            timeout_secs: u32::try_from(self.timeout_secs).unwrap_or(u32::MAX),
            time: AtomicU64::new(time),
            resumable: AtomicBool::new(self.resumable),
            payload: self.payload,
        })
    }
}

/// A context shared by sessions, on a cache line of its own, apart from the `Arc`'s reference
/// count: every session made or dropped writes the count, every lookup reads the context, and
/// on one line the two would make threads that add sessions slow down the lookups of the others.
#[repr(align(64))]
struct SharedSidCtx(SidCtx);

/// The one shared copy of a context: sessions of one context (the sessions of one server
/// configuration, typically made one after another) share it, which keeps 25 bytes per session
/// out of the cache. A thread remembers the last context it built a session for.
fn shared_sid_ctx(ctx: &[u8]) -> Result<Arc<SharedSidCtx>, SessionError> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Arc<SharedSidCtx>>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(shared) if shared.0.as_bytes() == ctx => Ok(Arc::clone(shared)),
            _ => {
                let shared = Arc::new(SharedSidCtx(SidCtx::new(ctx)?));
                *last = Some(Arc::clone(&shared));
                Ok(shared)
            }
        }
    })
}

/// The system's time in Unix seconds (0 if the clock is before 1970).
///
/// On Linux this reads `CLOCK_REALTIME_COARSE`: the wall clock as of the last timer tick, read
/// from the vDSO in about 3 ns where `SystemTime::now` takes about 35 ns (measured on the CI
/// machine). It may trail the precise clock by one tick (a few milliseconds), which only
/// matters to a cache that counts in whole seconds at the edge of a second.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn unix_now() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(now.tv_sec).unwrap_or(0)
}

/// The system's time in Unix seconds (0 if the clock is before 1970).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_every_byte() {
        let mut bytes: Vec<u8> = (1..=255).collect();
        wipe(&mut bytes);
        assert_eq!(bytes.len(), 255);
        assert!(bytes.iter().all(|&b| b == 0));
        // A Vec with spare capacity goes through the copy-then-wipe path.
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"secret");
        assert_eq!(SecretBytes::from(v).as_bytes(), b"secret");
    }

    #[test]
    fn ids_are_bounded() {
        assert_eq!(SessionId::new(&[]), Err(SessionError::EmptyId));
        assert_eq!(SessionId::new(&[0; 33]), Err(SessionError::IdTooLong(33)));
        assert_eq!(
            SessionId::new(&[9; 1]).map(|i| i.as_bytes().to_vec()),
            Ok(vec![9])
        );
        assert!(SidCtx::new(&[]).is_ok_and(|c| c.is_empty()));
        assert_eq!(SidCtx::new(&[0; 33]), Err(SessionError::SidCtxTooLong(33)));
    }

    #[test]
    fn expiry_is_strict_and_saturating() -> Result<(), SessionError> {
        let s = Session::builder(b"x", ())
            .time(100)
            .timeout_secs(10)
            .build()?;
        assert!(!s.is_expired_at(110));
        assert!(s.is_expired_at(111));
        let forever = Session::builder(b"y", ())
            .time(u64::MAX - 1)
            .timeout_secs(10)
            .build()?;
        assert_eq!(forever.expires_at(), u64::MAX);
        assert!(!forever.is_expired_at(u64::MAX));
        Ok(())
    }

    #[test]
    fn long_timeouts_clamp_and_contexts_are_shared() -> Result<(), SessionError> {
        let s = Session::builder(b"x", ())
            .time(0)
            .timeout_secs(u64::MAX)
            .build()?;
        assert_eq!(s.timeout_secs(), MAX_TIMEOUT_SECS);
        assert_eq!(s.expires_at(), MAX_TIMEOUT_SECS);
        let a = Session::builder(b"a", ()).sid_ctx(b"ctx").build()?;
        let b = Session::builder(b"b", ()).sid_ctx(b"ctx").build()?;
        let c = Session::builder(b"c", ()).sid_ctx(b"other").build()?;
        assert!(Arc::ptr_eq(&a.sid_ctx, &b.sid_ctx));
        assert_eq!(c.sid_ctx().as_bytes(), b"other");
        assert_eq!(a.sid_ctx().as_bytes(), b"ctx");
        Ok(())
    }

    #[test]
    fn secrets_are_not_printed() -> Result<(), SessionError> {
        let s =
            Session::builder(&[0xab; 32], SecretBytes::from(b"master-secret".to_vec())).build()?;
        let printed = format!("{s:?} {:?}", s.payload());
        assert!(!printed.contains("master"), "{printed}");
        assert!(printed.contains("abababab…"), "{printed}");
        Ok(())
    }

    #[test]
    fn secret_bytes_from_vec_keeps_content() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"abc");
        assert_eq!(SecretBytes::from(v).as_bytes(), b"abc");
        assert_eq!(SecretBytes::from(b"xyz".to_vec()).as_bytes(), b"xyz");
    }
}
