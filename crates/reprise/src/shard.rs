//! One shard of the cache: a hash table over a slab of slots, kept in expiry order.
//!
//! A shard holds no lock and calls no callback: [`crate::cache`] locks it, and fires callbacks
//! for the sessions it hands back once the lock is released.
//!
//! The table holds slot indices (4 bytes each). A slot's session (its `Arc`) and its place in
//! the expiry order live in two arrays at the same index: a lookup reads only the first, a
//! dense array of pointers (8 bytes a slot, where slots of 32 bytes put four times fewer in a
//! cache line), and never the second. Every live slot sits in one doubly linked list (indices,
//! not pointers) sorted by `(expiry, seq)`: the head is the session that expires soonest, and
//! among those the oldest inserted. `buckets` maps each run of equal expiries to its last slot,
//! so an insert finds its place without walking the list.

use core::hash::BuildHasher;
use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::session::Session;

/// The end of a list.
const NIL: u32 = u32::MAX;

/// The order key of a shard's head: `(expiry, seq)`.
pub(crate) type HeadKey = (u64, u64);

/// A slot's place in the expiry order (its session is in [`Shard::sessions`], same index).
struct Slot {
    /// The last second at which the session is valid, as it was when inserted.
    expiry: u64,
    /// Global insertion order, for ties between equal expiries.
    seq: u64,
    prev: u32,
    /// For a free slot: the next free slot.
    next: u32,
}

/// Counters that change under the shard's lock, summed by [`crate::SessionCache::stats`].
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct ShardCounters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) timeouts: u64,
    pub(crate) cache_full: u64,
}

pub(crate) struct Shard<P> {
    table: HashTable<u32>,
    /// Each slot's session; `None` for a free slot.
    sessions: Vec<Option<Arc<Session<P>>>>,
    /// Each slot's place in the expiry order, at the same index.
    slots: Vec<Slot>,
    /// The cache's hasher, to find a slot's session in the table again.
    hasher: foldhash::fast::RandomState,
    free: u32,
    head: u32,
    tail: u32,
    /// Expiry second → the last slot of its run, for every run but the tail's.
    buckets: BTreeMap<u64, u32>,
    /// Set whenever the head changes; the cache reads and clears it to republish the head.
    pub(crate) head_moved: bool,
    pub(crate) counters: ShardCounters,
}

impl<P> Shard<P> {
    /// An empty shard hashing ids with `hasher` (the cache's).
    pub(crate) fn new(hasher: foldhash::fast::RandomState) -> Self {
        Self {
            table: HashTable::new(),
            sessions: Vec::new(),
            slots: Vec::new(),
            hasher,
            free: NIL,
            head: NIL,
            tail: NIL,
            buckets: BTreeMap::new(),
            head_moved: false,
            counters: ShardCounters::default(),
        }
    }

    /// The number of sessions in this shard.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.slots[idx as usize]
    }

    fn session_at(&self, idx: u32) -> &Arc<Session<P>> {
        match &self.sessions[idx as usize] {
            Some(s) => s,
            None => unreachable!("the table and the list only hold live slots"),
        }
    }

    fn hash_of(&self, idx: u32) -> u64 {
        self.hasher.hash_one(self.session_at(idx).id().as_bytes())
    }

    /// Finds the session with this id: its slot and the session.
    pub(crate) fn find(&self, hash: u64, id: &[u8]) -> Option<(u32, &Arc<Session<P>>)> {
        let sessions = &self.sessions;
        let idx = *self.table.find(hash, |&i| match &sessions[i as usize] {
            Some(s) => s.id().as_bytes() == id,
            None => false,
        })?;
        Some((idx, self.session_at(idx)))
    }

    /// The expiry a slot was filed under.
    pub(crate) fn expiry(&self, idx: u32) -> u64 {
        self.slot(idx).expiry
    }

    /// The order key of the head: the session to evict next.
    pub(crate) fn head_key(&self) -> Option<HeadKey> {
        (self.head != NIL).then(|| {
            let s = self.slot(self.head);
            (s.expiry, s.seq)
        })
    }

    /// Inserts a session whose id is not in the shard.
    pub(crate) fn insert(&mut self, hash: u64, session: Arc<Session<P>>, expiry: u64, seq: u64) {
        let idx = self.alloc(session, expiry, seq);
        let (sessions, hasher) = (&self.sessions, &self.hasher);
        self.table
            .insert_unique(hash, idx, |&i| match &sessions[i as usize] {
                Some(s) => hasher.hash_one(s.id().as_bytes()),
                None => 0,
            });
        self.link(idx);
    }

    /// Puts another session (with the same id) into a slot, refiled under its own expiry.
    pub(crate) fn replace(
        &mut self,
        idx: u32,
        session: Arc<Session<P>>,
        expiry: u64,
        seq: u64,
    ) -> Option<Arc<Session<P>>> {
        self.unlink(idx);
        let old = self.sessions[idx as usize].replace(session);
        let slot = self.slot_mut(idx);
        slot.expiry = expiry;
        slot.seq = seq;
        self.link(idx);
        old
    }

    /// Removes the session in a slot, whose id hashes to `hash`, and marks it not resumable
    /// while the lock is held, so no other thread can put it back and resume it again.
    ///
    /// Callers that found the slot by its id pass the hash they found it with: the id is not
    /// hashed (nor the session read) a second time.
    pub(crate) fn remove_at(&mut self, hash: u64, idx: u32) -> Option<Arc<Session<P>>> {
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        self.unlink(idx);
        let session = self.release(idx)?;
        session.mark_not_resumable();
        Some(session)
    }

    /// Removes the head (the session that expires soonest), if any.
    pub(crate) fn pop_head(&mut self) -> Option<Arc<Session<P>>> {
        if self.head == NIL {
            return None;
        }
        let head = self.head;
        self.remove_at(self.hash_of(head), head)
    }

    /// Removes every session that is expired at `t` (`t > expiry`), soonest first.
    ///
    /// The cost is proportional to the number removed: the list is sorted by expiry.
    pub(crate) fn pop_expired(&mut self, t: u64, out: &mut Vec<Arc<Session<P>>>) {
        while self.head != NIL && self.slot(self.head).expiry < t {
            match self.pop_head() {
                Some(s) => out.push(s),
                None => break,
            }
        }
    }

    /// Removes every session, marking each not resumable.
    pub(crate) fn drain(&mut self, out: &mut Vec<Arc<Session<P>>>) {
        out.reserve(self.table.len());
        for s in self.sessions.drain(..).flatten() {
            s.mark_not_resumable();
            out.push(s);
        }
        self.slots.clear();
        self.table.clear();
        self.buckets.clear();
        self.free = NIL;
        self.head = NIL;
        self.tail = NIL;
        self.head_moved = true;
    }

    /// Every session, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Session<P>>> + '_ {
        self.sessions.iter().filter_map(Option::as_ref)
    }

    fn alloc(&mut self, session: Arc<Session<P>>, expiry: u64, seq: u64) -> u32 {
        let slot = Slot {
            expiry,
            seq,
            prev: NIL,
            next: NIL,
        };
        if self.free != NIL {
            let idx = self.free;
            self.free = self.slot(idx).next;
            *self.slot_mut(idx) = slot;
            self.sessions[idx as usize] = Some(session);
            idx
        } else {
            let idx = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i != NIL)
                .unwrap_or_else(|| panic!("a shard holds at most {} sessions", NIL - 1));
            self.slots.push(slot);
            self.sessions.push(Some(session));
            idx
        }
    }

    fn release(&mut self, idx: u32) -> Option<Arc<Session<P>>> {
        let free = self.free;
        let session = self.sessions[idx as usize].take();
        let slot = self.slot_mut(idx);
        slot.next = free;
        slot.prev = NIL;
        self.free = idx;
        session
    }

    /// Files a slot in the list after the last slot whose expiry is at most its own.
    ///
    /// `buckets` holds the last slot of every expiry's run except the tail's, whose last slot
    /// is the tail itself: the common insert (the newest session expires last, in the same
    /// second as the previous one) touches no map at all.
    fn link(&mut self, idx: u32) {
        let expiry = self.slot(idx).expiry;
        let after = if self.tail != NIL && self.slot(self.tail).expiry <= expiry {
            let tail_expiry = self.slot(self.tail).expiry;
            if tail_expiry < expiry {
                // The old tail's run is no longer the tail's: it goes into the map.
                self.buckets.insert(tail_expiry, self.tail);
            }
            self.tail
        } else {
            // Before the tail's run (or into an empty list): the map knows the place.
            let after = self
                .buckets
                .range(..=expiry)
                .next_back()
                .map_or(NIL, |(_, &last)| last);
            if self.tail != NIL {
                self.buckets.insert(expiry, idx);
            }
            after
        };
        let before = if after == NIL {
            self.head
        } else {
            self.slot(after).next
        };
        {
            let slot = self.slot_mut(idx);
            slot.prev = after;
            slot.next = before;
        }
        if after == NIL {
            self.head = idx;
            self.head_moved = true;
        } else {
            self.slot_mut(after).next = idx;
        }
        if before == NIL {
            self.tail = idx;
        } else {
            self.slot_mut(before).prev = idx;
        }
    }

    /// Takes a slot out of the list, keeping `buckets` true.
    fn unlink(&mut self, idx: u32) {
        let (prev, next, expiry) = {
            let s = self.slot(idx);
            (s.prev, s.next, s.expiry)
        };
        let is_last_of_run = next == NIL || self.slot(next).expiry != expiry;
        if is_last_of_run {
            let is_first_of_run = prev == NIL || self.slot(prev).expiry != expiry;
            if next == NIL {
                // The tail's run, which the map does not hold. If it empties, the run before
                // it becomes the tail's and leaves the map.
                if is_first_of_run && prev != NIL {
                    let prev_expiry = self.slot(prev).expiry;
                    self.buckets.remove(&prev_expiry);
                }
            } else if is_first_of_run {
                self.buckets.remove(&expiry);
            } else {
                self.buckets.insert(expiry, prev);
            }
        }
        if prev == NIL {
            self.head = next;
            self.head_moved = true;
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
    }

    /// Checks the shard's invariants; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut n = 0;
        let mut prev = NIL;
        let mut idx = self.head;
        let mut last_key = None;
        while idx != NIL {
            let s = self.slot(idx);
            assert_eq!(s.prev, prev);
            let key = (s.expiry, s.seq);
            assert!(last_key.is_none_or(|k| k < key), "list out of order");
            let is_last = s.next == NIL || self.slot(s.next).expiry != s.expiry;
            if is_last && s.next != NIL {
                assert_eq!(self.buckets.get(&s.expiry), Some(&idx));
            }
            if s.next == NIL {
                assert_eq!(
                    self.buckets.get(&s.expiry),
                    None,
                    "the tail's run is not in the map"
                );
            }
            last_key = Some(key);
            prev = idx;
            idx = s.next;
            n += 1;
        }
        assert_eq!(self.tail, prev);
        assert_eq!(n, self.table.len());
        // Every table entry is a live slot, found under its session's hash.
        for &i in self.table.iter() {
            assert!(self.sessions[i as usize].is_some());
            assert!(self.table.find(self.hash_of(i), |&x| x == i).is_some());
        }
        // One map entry per run of equal expiries, but the tail's.
        let mut runs = 0;
        let mut idx = self.head;
        while idx != NIL {
            let s = self.slot(idx);
            if s.next == NIL || self.slot(s.next).expiry != s.expiry {
                runs += 1;
            }
            idx = s.next;
        }
        assert_eq!(self.buckets.len(), runs.max(1) - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u8, time: u64) -> Arc<Session<()>> {
        match Session::builder(&[id], ())
            .time(time)
            .timeout_secs(0)
            .build()
        {
            Ok(s) => Arc::new(s),
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
        (Shard::new(hasher), h)
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
