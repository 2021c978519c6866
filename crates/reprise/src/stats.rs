//! Statistics: the counters of `SSL_CTX_sess_number` and friends.

use core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a cache's statistics. Every counter but `number` only grows.
///
/// It compares whole, and a test builds the value it expects from the default:
///
/// ```
/// use reprise::{Role, SessionCache, SessionKey, Stats};
/// let cache: SessionCache = SessionCache::new();
/// let s = cache.session(&[1; 32], &[0u8; 48][..]).build().unwrap();
/// cache.new_session(Role::Server, s);
/// cache.lookup(Role::Server, SessionKey::new(&[1; 32], b""));
/// cache.lookup(Role::Server, SessionKey::new(&[2; 32], b""));
/// assert_eq!(cache.stats(), Stats { number: 1, hits: 1, misses: 1, ..Stats::default() });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions in the internal cache now (`SSL_CTX_sess_number`).
    pub number: u64,
    /// Server handshakes started (`SSL_CTX_sess_accept`).
    pub accept: u64,
    /// Server handshakes completed (`SSL_CTX_sess_accept_good`).
    pub accept_good: u64,
    /// Client handshakes started (`SSL_CTX_sess_connect`).
    pub connect: u64,
    /// Client handshakes completed (`SSL_CTX_sess_connect_good`).
    pub connect_good: u64,
    /// Sessions found and valid, internally or through the get callback (`SSL_CTX_sess_hits`).
    pub hits: u64,
    /// Internal lookups that found nothing, counted before the get callback (`SSL_CTX_sess_misses`).
    pub misses: u64,
    /// Sessions the get callback supplied that were valid (`SSL_CTX_sess_cb_hits`).
    pub cb_hits: u64,
    /// Sessions found expired at lookup (`SSL_CTX_sess_timeouts`).
    pub timeouts: u64,
    /// Sessions evicted because the cache was full (`SSL_CTX_sess_cache_full`).
    pub cache_full: u64,
    /// Lookups refused before any store was asked, because the key was empty or too long.
    pub rejected_keys: u64,
}

/// Counters that change outside the shards' locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accept: AtomicU64,
    pub(crate) accept_good: AtomicU64,
    pub(crate) connect: AtomicU64,
    pub(crate) connect_good: AtomicU64,
    pub(crate) external_hits: AtomicU64,
    pub(crate) cb_hits: AtomicU64,
    pub(crate) external_timeouts: AtomicU64,
    pub(crate) rejected_keys: AtomicU64,
    pub(crate) rejected_misses: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
