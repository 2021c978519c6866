//! One shard of the cache: a hash table over a slab of slots, kept in expiry order.
//!
//! A shard holds no lock and calls no callback: [`crate::cache`] locks it, and fires callbacks
//! for the sessions it hands back once the lock is released.
//!
//! The index ([`crate::index`]) holds slot indices with a few bits of their hash, 4 bytes an
//! entry at load up to 0.8, and grows toward the shard's share of the cache's size limit rather
//! than doubling past it: about 5.3 bytes a session at a million. A slot's session (its
//! `Shared` pointer) and its place in the expiry order live in two arrays at the same index: a
//! lookup reads only the first, a dense array of pointers (8 bytes a slot, where slots of 32
//! bytes put four times fewer in a cache line), and never the second, which [`crate::expiry`]
//! keeps sorted by `(expiry, seq)`.

use core::hash::BuildHasher;
use std::sync::Arc;

use crate::expiry::{ExpiryOrder, Key};
use crate::index::Index;
use crate::shim::atomic::{AtomicUsize, Ordering};
use crate::SharedSession;

/// What a shard knows of the cache's size limit: enough to size its index for its share.
pub(crate) struct Share {
    /// The cache's size limit (0: unlimited), read when the index grows, so that a new limit
    /// counts from the next growth.
    limit: Arc<AtomicUsize>,
    /// The number of shards the limit is shared by.
    shards: usize,
}

impl Share {
    /// A share of `limit` among `shards` shards.
    pub(crate) fn new(limit: Arc<AtomicUsize>, shards: usize) -> Self {
        Self {
            limit,
            shards: shards.max(1),
        }
    }

    /// The sessions a shard may expect to hold at most: its share of the limit, with slack for
    /// the spread of a hash (a shard's count varies by about the square root of its share),
    /// 5 % or three square roots, whichever is more. 0 when the cache is unlimited.
    fn hint(&self) -> usize {
        let share = self.limit.load(Ordering::Relaxed).div_ceil(self.shards);
        share.saturating_add((share / 20).max(3 * share.isqrt()))
    }
}

/// The order key of a shard's head: `(expiry, seq)`.
pub(crate) type HeadKey = Key;

/// Counters that change under the shard's lock, summed by [`crate::SessionCache::stats`].
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct ShardCounters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) timeouts: u64,
    pub(crate) cache_full: u64,
}

pub(crate) struct Shard<P> {
    index: Index,
    /// Each slot's session; `None` for a free slot.
    sessions: Vec<Option<SharedSession<P>>>,
    /// Each slot's place in the expiry order, at the same index.
    order: ExpiryOrder,
    /// The cache's hasher, to hash a slot's session again when the index grows.
    hasher: foldhash::fast::RandomState,
    /// The shard's share of the size limit, toward which the index grows.
    share: Share,
    /// Set whenever the head changes; the cache reads and clears it to republish the head.
    pub(crate) head_moved: bool,
    pub(crate) counters: ShardCounters,
}

impl<P> Shard<P> {
    /// An empty shard hashing ids with `hasher` (the cache's), holding `share` of the limit. It
    /// allocates nothing until its first session.
    pub(crate) fn new(hasher: foldhash::fast::RandomState, share: Share) -> Self {
        Self {
            index: Index::new(),
            sessions: Vec::new(),
            order: ExpiryOrder::new(),
            hasher,
            share,
            head_moved: false,
            counters: ShardCounters::default(),
        }
    }

    /// The number of sessions in this shard.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn session_at(&self, idx: u32) -> &SharedSession<P> {
        match &self.sessions[idx as usize] {
            Some(s) => s,
            None => unreachable!("the table and the list only hold live slots"),
        }
    }

    fn hash_of(&self, idx: u32) -> u64 {
        self.hasher.hash_one(self.session_at(idx).id().as_bytes())
    }

    /// Finds the session with this id: its slot and the session.
    pub(crate) fn find(&self, hash: u64, id: &[u8]) -> Option<(u32, &SharedSession<P>)> {
        let sessions = &self.sessions;
        let idx = self.index.find(hash, |i| match sessions.get(i as usize) {
            Some(Some(s)) => s.id().as_bytes() == id,
            _ => false,
        })?;
        Some((idx, self.session_at(idx)))
    }

    /// The expiry a slot was filed under.
    pub(crate) fn expiry(&self, idx: u32) -> u64 {
        self.order.expiry(idx)
    }

    /// The order key of the head: the session to evict next.
    pub(crate) fn head_key(&self) -> Option<HeadKey> {
        self.order.head_key()
    }

    /// Inserts a session whose id is not in the shard.
    pub(crate) fn insert(&mut self, hash: u64, session: SharedSession<P>, expiry: u64, seq: u64) {
        let (idx, moved) = self.order.insert(expiry, seq);
        self.head_moved |= moved;
        match self.sessions.get_mut(idx as usize) {
            Some(free) => *free = Some(session),
            None => self.sessions.push(Some(session)),
        }
        let (sessions, hasher, share) = (&self.sessions, &self.hasher, &self.share);
        self.index.insert(
            hash,
            idx,
            sessions.capacity(),
            || share.hint(),
            |i| match sessions.get(i as usize) {
                Some(Some(s)) => hasher.hash_one(s.id().as_bytes()),
                _ => unreachable!("the index only holds live slots"),
            },
        );
    }

    /// Puts another session (with the same id) into a slot, refiled under its own expiry.
    pub(crate) fn replace(
        &mut self,
        idx: u32,
        session: SharedSession<P>,
        expiry: u64,
        seq: u64,
    ) -> Option<SharedSession<P>> {
        self.head_moved |= self.order.refile(idx, expiry, seq);
        self.sessions[idx as usize].replace(session)
    }

    /// Removes the session in a slot, whose id hashes to `hash`, and marks it not resumable
    /// while the lock is held, so no other thread can put it back and resume it again.
    ///
    /// Callers that found the slot by its id pass the hash they found it with: the id is not
    /// hashed (nor the session read) a second time.
    pub(crate) fn remove_at(&mut self, hash: u64, idx: u32) -> Option<SharedSession<P>> {
        self.index.remove(hash, idx);
        self.head_moved |= self.order.remove(idx);
        let session = self.sessions[idx as usize].take()?;
        session.mark_not_resumable();
        Some(session)
    }

    /// Removes the head (the session that expires soonest), if any.
    pub(crate) fn pop_head(&mut self) -> Option<SharedSession<P>> {
        let head = self.order.head()?;
        self.remove_at(self.hash_of(head), head)
    }

    /// Removes every session that is expired at `t` (`t > expiry`), soonest first.
    ///
    /// The cost is proportional to the number removed: the list is sorted by expiry.
    pub(crate) fn pop_expired(&mut self, t: u64, out: &mut Vec<SharedSession<P>>) {
        while self.order.head_key().is_some_and(|(expiry, _)| expiry < t) {
            match self.pop_head() {
                Some(s) => out.push(s),
                None => break,
            }
        }
    }

    /// Removes every session, marking each not resumable.
    pub(crate) fn drain(&mut self, out: &mut Vec<SharedSession<P>>) {
        out.reserve(self.index.len());
        for s in self.sessions.drain(..).flatten() {
            s.mark_not_resumable();
            out.push(s);
        }
        self.order.clear();
        self.index.clear();
        self.head_moved = true;
    }

    /// Every session, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SharedSession<P>> + '_ {
        self.sessions.iter().filter_map(Option::as_ref)
    }

    /// Checks the shard's invariants; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let listed = self.order.check();
        assert_eq!(listed, self.index.len(), "one listed slot per index entry");
        // A slot holds a session exactly when it is listed.
        let listed: std::collections::HashSet<u32> = self.order.iter().collect();
        for (i, s) in self.sessions.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            assert_eq!(s.is_some(), listed.contains(&i), "slot {i}");
        }
        // Every index entry is a live slot, found under its session's hash, at its true
        // displacement and in Robin Hood order.
        for i in self.index.slots() {
            assert!(
                self.sessions[i as usize].is_some(),
                "indexed slot {i} is live"
            );
        }
        self.index.check(|i| self.hash_of(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Session;

    fn session(id: u8, time: u64) -> SharedSession<()> {
        match Session::builder(&[id], ())
            .time(time)
            .timeout_secs(0)
            .build()
        {
            Ok(s) => SharedSession::from(s),
            Err(e) => panic!("{e}"),
        }
    }

    /// A shard and the hash function it uses.
    fn shard() -> (Shard<()>, impl Fn(&[u8]) -> u64) {
        let hasher = foldhash::fast::RandomState::default();
        let h = {
            let hasher = hasher.clone();
            move |id: &[u8]| hasher.hash_one(id)
        };
        let limit = Arc::new(AtomicUsize::new(0));
        (Shard::new(hasher, Share::new(limit, 1)), h)
    }

    #[test]
    fn keeps_expiry_order_and_fifo_ties() {
        let (mut shard, h) = shard();
        let times = [5u64, 3, 5, 1, 9, 3, 5, 0];
        for (i, &t) in times.iter().enumerate() {
            let id = [i as u8];
            shard.insert(h(&id), session(i as u8, t), t, i as u64);
            shard.check();
        }
        let mut popped = Vec::new();
        while let Some(s) = shard.pop_head() {
            shard.check();
            popped.push(s.id().as_bytes()[0]);
        }
        // Sorted by time, and by insertion among equal times.
        assert_eq!(popped, vec![7, 3, 1, 5, 0, 2, 6, 4]);
    }

    #[test]
    fn removal_anywhere_keeps_buckets_true() {
        let (mut shard, h) = shard();
        for i in 0..30u8 {
            let t = u64::from(i % 4);
            shard.insert(h(&[i]), session(i, t), t, u64::from(i));
        }
        for i in (0..30u8).step_by(3) {
            let Some((idx, _)) = shard.find(h(&[i]), &[i]) else {
                panic!("{i} missing")
            };
            assert!(shard.remove_at(h(&[i]), idx).is_some());
            shard.check();
            assert!(shard.find(h(&[i]), &[i]).is_none());
        }
        let mut out = Vec::new();
        shard.pop_expired(2, &mut out);
        shard.check();
        assert!(out.iter().all(|s| s.time() < 2));
        assert!(shard.iter().all(|s| s.time() >= 2));
        let before = shard.len();
        let Some((idx, _)) = shard.find(h(&[2]), &[2]) else {
            panic!("2 missing")
        };
        let old = shard.replace(idx, session(2, 100), 100, 1000);
        assert_eq!(old.map(|o| o.time()), Some(2));
        shard.check();
        assert_eq!(shard.len(), before);
        // The replacement expires last: it is the last one popped.
        let mut last = None;
        while let Some(s) = shard.pop_head() {
            last = Some(s.time());
        }
        assert_eq!(last, Some(100));
    }
}
