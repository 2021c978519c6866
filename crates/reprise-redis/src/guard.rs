//! Guards Redis against read amplification: what a ClientHello offers is attacker-chosen, so
//! reads are filtered before they reach Redis.
//!
//! - A bounded **negative cache** remembers recent misses: a ticket id for
//!   [`TICKET_MISS_TTL`] (a ticket is single-use: one that missed, or that a take is already
//!   after, never resumes again), a TLS 1.2 session id for [`SESSION_MISS_TTL`] (short: another
//!   instance may be writing that session right now). A repeated hello costs no read.
//! - A **budget of misses per client address** (IPv4 address, IPv6 /64) caps the reads one
//!   address can cause with ids that find nothing: a token bucket, where a read is sent only
//!   while the address has a token, and only a miss spends one. Resuming clients behind one
//!   address are never limited (however many read at once), and a flood of made-up ids is.
//!
//! Both are bounded in memory: entries are fingerprints (a keyed 64-bit hash), and each table
//! has a capacity beyond which its oldest (or idle) entries go.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reprise::SessionKey;

use crate::tier::Kind;

/// How long a ticket id that missed (or that a take went after) is answered from memory.
pub const TICKET_MISS_TTL: Duration = Duration::from_secs(10);

/// How long a TLS 1.2 session id that missed is answered from memory.
pub const SESSION_MISS_TTL: Duration = Duration::from_secs(1);

/// Misses remembered per kind, at most (about 40 bytes each).
const MISS_CAPACITY: usize = 1 << 16;

/// Client addresses tracked by the read budget, at most.
const ADDRESS_CAPACITY: usize = 1 << 16;

/// A read budget per client address: `rate` reads per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddressBudget {
    /// Tokens earned per second.
    pub rate: f64,
    /// Tokens an address can hold.
    pub burst: f64,
}

impl AddressBudget {
    /// `misses` a second, with bursts of twice as many; `None` for 0 (no limit).
    pub fn per_second(misses: u32) -> Option<Self> {
        (misses > 0).then(|| Self {
            rate: f64::from(misses),
            burst: 2.0 * f64::from(misses),
        })
    }
}

/// Recent misses of one kind: fingerprints with an expiry, oldest first.
struct Recent {
    ttl: Duration,
    capacity: usize,
    table: Mutex<RecentTable>,
}

#[derive(Default)]
struct RecentTable {
    expiry: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
}

impl Recent {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            table: Mutex::new(RecentTable::default()),
        }
    }

    fn contains(&self, fingerprint: u64, now: Instant) -> bool {
        self.table
            .lock()
            .expiry
            .get(&fingerprint)
            .is_some_and(|&until| until > now)
    }

    /// Remembers a fingerprint; whether it was new (not already remembered and unexpired).
    fn insert(&self, fingerprint: u64, now: Instant) -> bool {
        let until = now + self.ttl;
        let mut t = self.table.lock();
        // The ttl is the same for every entry: the queue is in expiry order.
        while let Some(&(fp, at)) = t.order.front() {
            if at > now && t.order.len() < self.capacity {
                break;
            }
            t.order.pop_front();
            if t.expiry.get(&fp) == Some(&at) {
                t.expiry.remove(&fp);
            }
        }
        let fresh = t
            .expiry
            .insert(fingerprint, until)
            .is_none_or(|before| before <= now);
        t.order.push_back((fingerprint, until));
        fresh
    }

    fn len(&self) -> usize {
        self.table.lock().expiry.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, budget: AddressBudget, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * budget.rate;
        self.tokens = (self.tokens + earned).min(budget.burst);
        self.at = now;
    }
}

/// The guard of one tier: negative caches for both kinds, and the address budget.
pub(crate) struct Guard {
    hasher: RandomState,
    tickets: Recent,
    sessions: Recent,
    budget: Option<AddressBudget>,
    buckets: Mutex<HashMap<u128, Bucket>>,
}

/// The part of an address a budget applies to: an IPv4 address, or an IPv6 /64 (one host's
/// share of a network, typically).
fn address_key(ip: IpAddr) -> u128 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

impl Guard {
    pub(crate) fn new(budget: Option<AddressBudget>) -> Self {
        Self {
            hasher: RandomState::new(),
            tickets: Recent::new(TICKET_MISS_TTL, MISS_CAPACITY),
            sessions: Recent::new(SESSION_MISS_TTL, MISS_CAPACITY),
            budget,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn recent(&self, kind: Kind) -> &Recent {
        match kind {
            Kind::Ticket => &self.tickets,
            Kind::Session => &self.sessions,
        }
    }

    fn fingerprint(&self, key: SessionKey<'_>) -> u64 {
        // Keyed per process: nobody outside can aim collisions at it.
        self.hasher.hash_one((key.sid_ctx, key.id))
    }

    /// Whether the key missed recently (or, for a ticket, a take already went after it).
    pub(crate) fn missed(&self, kind: Kind, key: SessionKey<'_>, now: Instant) -> bool {
        self.recent(kind).contains(self.fingerprint(key), now)
    }

    /// Remembers a miss; whether the key was not remembered already.
    pub(crate) fn remember(&self, kind: Kind, key: SessionKey<'_>, now: Instant) -> bool {
        self.recent(kind).insert(self.fingerprint(key), now)
    }

    /// Whether the client's address may cause a read now: it has a miss left to spend.
    pub(crate) fn allows(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let (Some(budget), Some(ip)) = (self.budget, client) else {
            return true;
        };
        let mut buckets = self.buckets.lock();
        match buckets.get_mut(&address_key(ip)) {
            Some(bucket) => {
                bucket.refill(budget, now);
                bucket.tokens >= 1.0
            }
            // Never missed (or long enough ago): a full bucket.
            None => true,
        }
    }

    /// Spends one miss from the client's budget.
    pub(crate) fn charge(&self, client: Option<IpAddr>, now: Instant) {
        let (Some(budget), Some(ip)) = (self.budget, client) else {
            return;
        };
        let key = address_key(ip);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= ADDRESS_CAPACITY && !buckets.contains_key(&key) {
            // Addresses whose bucket is full again are as good as untracked.
            buckets.retain(|_, b| {
                b.refill(budget, now);
                b.tokens < budget.burst
            });
            if buckets.len() >= ADDRESS_CAPACITY {
                // More busy addresses than the table holds: start over rather than grow.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: budget.burst,
            at: now,
        });
        bucket.refill(budget, now);
        // Reads in flight together may overdraw it a little; it never goes below empty.
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// Misses remembered, both kinds.
    pub(crate) fn remembered(&self) -> usize {
        self.tickets.len() + self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn misses_are_remembered_for_their_kind_and_expire() {
        let g = Guard::new(None);
        let t0 = Instant::now();
        let k = SessionKey::new(b"id", b"ctx");
        assert!(!g.missed(Kind::Ticket, k, t0));
        assert!(g.remember(Kind::Ticket, k, t0));
        assert!(!g.remember(Kind::Ticket, k, t0));
        assert!(g.missed(Kind::Ticket, k, t0 + Duration::from_secs(9)));
        assert!(!g.missed(Kind::Ticket, k, t0 + TICKET_MISS_TTL));
        assert!(!g.missed(Kind::Session, k, t0));
        assert!(!g.missed(Kind::Ticket, SessionKey::new(b"id", b"other"), t0));
        assert!(g.remember(Kind::Session, k, t0));
        assert!(g.missed(Kind::Session, k, t0));
        assert!(!g.missed(Kind::Session, k, t0 + SESSION_MISS_TTL));
    }

    #[test]
    fn the_negative_cache_is_bounded() {
        let r = Recent::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            r.insert(i, t0);
        }
        assert!(r.len() <= 100);
        assert!(r.table.lock().order.len() <= 100);
        assert!(r.contains(999, t0));
        assert!(!r.contains(0, t0));
        // Expired entries go as new ones come.
        r.insert(5000, t0 + Duration::from_secs(11));
        assert_eq!(r.len(), 1);
    }

    /// Reads while allowed, each a miss; how many were allowed.
    fn misses(g: &Guard, client: Option<IpAddr>, n: usize, now: Instant) -> usize {
        (0..n)
            .filter(|_| {
                let allowed = g.allows(client, now);
                if allowed {
                    g.charge(client, now);
                }
                allowed
            })
            .count()
    }

    #[test]
    fn each_address_has_a_budget_of_misses() {
        let g = Guard::new(AddressBudget::per_second(10));
        let t0 = Instant::now();
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let a = Some(ip);
        let b = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(misses(&g, a, 100, t0), 20);
        assert!(!g.allows(a, t0));
        // Another address is not affected; no address means no limit.
        assert!(g.allows(b, t0));
        assert_eq!(misses(&g, None, 100, t0), 100);
        // Time earns more: 10 a second.
        assert!(!g.allows(a, t0 + Duration::from_millis(50)));
        assert_eq!(misses(&g, a, 100, t0 + Duration::from_millis(150)), 1);
        assert_eq!(misses(&g, a, 100, t0 + Duration::from_millis(1150)), 10);
        // The IPv4-mapped form is the same address.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(address_key(ip), address_key(mapped));
    }

    #[test]
    fn ipv6_addresses_share_a_budget_per_64() {
        let one = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
        let same = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 9, 9, 9));
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(address_key(one), address_key(same));
        assert_ne!(address_key(one), address_key(other));
        let g = Guard::new(AddressBudget::per_second(1));
        let t0 = Instant::now();
        g.charge(Some(one), t0);
        g.charge(Some(same), t0);
        assert!(!g.allows(Some(one), t0));
        assert!(g.allows(Some(other), t0));
    }

    #[test]
    fn the_address_table_is_bounded() {
        let g = Guard::new(AddressBudget::per_second(1));
        let t0 = Instant::now();
        for i in 0..(ADDRESS_CAPACITY as u32 + 10) {
            g.charge(Some(IpAddr::V4(Ipv4Addr::from(i))), t0);
        }
        assert!(g.buckets.lock().len() <= ADDRESS_CAPACITY);
    }
}
