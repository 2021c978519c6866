//! A shard's expiry order: a slab of slots kept in one list sorted by `(expiry, seq)`.
//!
//! Every live slot sits in one doubly linked list (indices, not pointers) sorted by
//! `(expiry, seq)`: the head is the slot that expires soonest, and among those the oldest
//! inserted. `buckets` maps each run of equal expiries to its last slot, so an insert finds its
//! place without walking the list. Freed slots form a free list through their `next` link and
//! are reused first, so slot indices stay dense.
//!
//! The order knows nothing of sessions: [`crate::shard`] keeps each slot's session in an array
//! of its own at the same index, so a lookup never reads this one.

use std::collections::{BTreeMap, HashMap};

/// The end of a list.
const NIL: u32 = u32::MAX;

/// A packed value that says: the exact value is in [`Packed::far`].
const FAR: u32 = u32::MAX;

/// Half the window of a packed value: a new base sits this far below the value that sets it.
const HALF_WINDOW: u64 = 1 << 31;

/// A slot's order key: `(expiry, seq)`.
pub(crate) type Key = (u64, u64);

/// A slot's place in the expiry order: 16 bytes.
///
/// The expiry and the insertion order are 64-bit values stored in 32 bits each, as offsets
/// from a base ([`Packed`]); one out of its window is stored exactly beside the slab. The
/// order is always that of the exact 64-bit values.
struct Slot {
    /// The last second at which the slot's session is valid, as it was when filed; packed.
    expiry: u32,
    /// Global insertion order, for ties between equal expiries; packed.
    seq: u32,
    prev: u32,
    /// For a free slot: the next free slot.
    next: u32,
}

// What the packing is for: a slot in 16 bytes.
const _: () = assert!(core::mem::size_of::<Slot>() == 16);

/// 64-bit values stored as 32-bit offsets from `base`, exactly.
///
/// A value `v` with `0 <= v - base < FAR` is stored as `v - base`, and read back as
/// `base + (v - base) = v`: no overflow, since that sum is `v` itself. Any other value is
/// stored as [`FAR`] and its exact value kept in `far`, under its slot's index. So a read
/// always returns the exact value that was stored, whatever the base; the base only decides
/// how many values take the slower, larger road (none, in a cache whose expiries lie within
/// 68 years of each other and whose insertion counter has not moved by 2^31 since a rebase).
struct Packed {
    base: u64,
    /// Slot index → exact value, for the live slots whose packed value is [`FAR`].
    far: HashMap<u32, u64>,
}

impl Packed {
    fn new(base: u64) -> Self {
        Self {
            base,
            far: HashMap::new(),
        }
    }

    /// The packed form of `value` for slot `idx`.
    #[inline(always)]
    fn pack(&mut self, idx: u32, value: u64) -> u32 {
        match value.checked_sub(self.base) {
            // `off < FAR` fits in 32 bits and is not the marker.
            Some(off) if off < u64::from(FAR) => off as u32,
            _ => self.pack_far(idx, value),
        }
    }

    /// Keeps `value` aside for slot `idx`: the rare road, out of the hot path.
    #[cold]
    #[inline(never)]
    fn pack_far(&mut self, idx: u32, value: u64) -> u32 {
        self.far.insert(idx, value);
        FAR
    }

    /// The exact value slot `idx` stored as `packed`.
    #[inline(always)]
    fn unpack(&self, idx: u32, packed: u32) -> u64 {
        if packed != FAR {
            // `pack` stored `value - base`: this is `value`, and cannot overflow.
            self.base + u64::from(packed)
        } else {
            self.unpack_far(idx)
        }
    }

    /// The value kept aside for slot `idx`.
    #[cold]
    #[inline(never)]
    fn unpack_far(&self, idx: u32) -> u64 {
        match self.far.get(&idx) {
            Some(&value) => value,
            None => unreachable!("a slot packed as far has its exact value aside"),
        }
    }

    /// Forgets slot `idx`'s value, stored as `packed` (its slot is being freed or refiled).
    #[inline(always)]
    fn forget(&mut self, idx: u32, packed: u32) {
        if packed == FAR {
            self.forget_far(idx);
        }
    }

    /// Drops the value kept aside for slot `idx`.
    #[cold]
    #[inline(never)]
    fn forget_far(&mut self, idx: u32) {
        self.far.remove(&idx);
    }

    /// Whether `value` would be stored in 32 bits.
    #[inline(always)]
    fn fits(&self, value: u64) -> bool {
        value
            .checked_sub(self.base)
            .is_some_and(|off| off < u64::from(FAR))
    }
}

/// The slab of slots and the list that orders the live ones by `(expiry, seq)`.
///
/// The methods that change the list return whether its head changed (another slot, or the same
/// slot under another key), which the shard republishes for the cache's eviction scan.
pub(crate) struct ExpiryOrder {
    slots: Vec<Slot>,
    free: u32,
    head: u32,
    tail: u32,
    /// Expiry second → the last slot of its run, for every run but the tail's.
    buckets: BTreeMap<u64, u32>,
    /// The slots' expiries. The base is set when a slot is filed into an empty list, 2^31
    /// seconds (68 years) below its expiry, and never moves while the list holds a slot.
    expiries: Packed,
    /// The slots' insertion orders. The base is set when a slot is filed into an empty list,
    /// at its seq; when a seq reaches `base + 2^32 - 1`, every live slot is packed again
    /// under a base 2^31 below it ([`ExpiryOrder::rebase_seqs`]).
    seqs: Packed,
}

impl ExpiryOrder {
    /// An empty order.
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            buckets: BTreeMap::new(),
            expiries: Packed::new(0),
            seqs: Packed::new(0),
        }
    }

    #[inline]
    fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    #[inline]
    fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.slots[idx as usize]
    }

    /// The slot that expires soonest (ties: the oldest filed), if any.
    #[inline]
    pub(crate) fn head(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// The order key of the head: the slot to evict next.
    #[inline]
    pub(crate) fn head_key(&self) -> Option<Key> {
        (self.head != NIL).then(|| self.key(self.head))
    }

    /// The exact order key of a live slot.
    #[inline(always)]
    fn key(&self, idx: u32) -> Key {
        let s = self.slot(idx);
        (
            self.expiries.unpack(idx, s.expiry),
            self.seqs.unpack(idx, s.seq),
        )
    }

    /// The expiry a live slot was filed under.
    #[inline(always)]
    pub(crate) fn expiry(&self, idx: u32) -> u64 {
        self.expiries.unpack(idx, self.slot(idx).expiry)
    }

    /// Stores a slot's key, packed; the slot is not in the list, and holds no packed value.
    #[inline(always)]
    fn set_key(&mut self, idx: u32, expiry: u64, seq: u64) {
        if self.head == NIL || !self.seqs.fits(seq) {
            self.rebase_for(expiry, seq);
        }
        let expiry = self.expiries.pack(idx, expiry);
        let seq = self.seqs.pack(idx, seq);
        let slot = self.slot_mut(idx);
        slot.expiry = expiry;
        slot.seq = seq;
    }

    /// Moves the bases before a slot is filed under `(expiry, seq)`: both, when the list is
    /// empty; the seqs', when `seq` has passed the window.
    #[cold]
    #[inline(never)]
    fn rebase_for(&mut self, expiry: u64, seq: u64) {
        if self.head == NIL {
            // Nothing is packed under the old bases (an empty list holds no value aside).
            self.expiries = Packed::new(expiry.saturating_sub(HALF_WINDOW));
            self.seqs = Packed::new(seq);
        } else if seq > self.seqs.base {
            // `seq >= base + 2^32 - 1 > 2^31`: no underflow.
            self.rebase_seqs(seq - HALF_WINDOW);
        }
    }

    /// Forgets a slot's key (the slot is being freed or refiled).
    #[inline]
    fn forget_key(&mut self, idx: u32) {
        let (expiry, seq) = {
            let s = self.slot(idx);
            (s.expiry, s.seq)
        };
        self.expiries.forget(idx, expiry);
        self.seqs.forget(idx, seq);
        let slot = self.slot_mut(idx);
        slot.expiry = 0;
        slot.seq = 0;
    }

    /// Packs every live slot's seq again under `base`: what keeps seqs in 32 bits as the
    /// global counter grows. It walks the list once, and runs at most once per 2^31 values of
    /// the counter, so its cost spread over the inserts is well under one slot per insert.
    #[cold]
    fn rebase_seqs(&mut self, base: u64) {
        let old = std::mem::replace(&mut self.seqs, Packed::new(base));
        let mut idx = self.head;
        while idx != NIL {
            let (packed, next) = {
                let s = self.slot(idx);
                (s.seq, s.next)
            };
            let seq = old.unpack(idx, packed);
            let packed = self.seqs.pack(idx, seq);
            self.slot_mut(idx).seq = packed;
            idx = next;
        }
    }

    /// Takes a free slot (a reused one first) and files it under `(expiry, seq)`. Returns its
    /// index, and whether the head changed.
    #[inline]
    pub(crate) fn insert(&mut self, expiry: u64, seq: u64) -> (u32, bool) {
        let slot = Slot {
            expiry: 0,
            seq: 0,
            prev: NIL,
            next: NIL,
        };
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self.slot(idx).next;
            *self.slot_mut(idx) = slot;
            idx
        } else {
            let idx = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i != NIL)
                .unwrap_or_else(|| panic!("a shard holds at most {} sessions", NIL - 1));
            self.slots.push(slot);
            idx
        };
        self.set_key(idx, expiry, seq);
        (idx, self.link(idx))
    }

    /// Files a live slot again, under a new key. Returns whether the head changed.
    #[inline]
    pub(crate) fn refile(&mut self, idx: u32, expiry: u64, seq: u64) -> bool {
        let unlinked = self.unlink(idx);
        self.forget_key(idx);
        self.set_key(idx, expiry, seq);
        let linked = self.link(idx);
        unlinked | linked
    }

    /// Takes a live slot out of the list and frees it. Returns whether the head changed.
    #[inline]
    pub(crate) fn remove(&mut self, idx: u32) -> bool {
        let moved = self.unlink(idx);
        self.forget_key(idx);
        let free = self.free;
        let slot = self.slot_mut(idx);
        slot.next = free;
        slot.prev = NIL;
        self.free = idx;
        moved
    }

    /// Frees every slot; indices start from 0 again.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.buckets.clear();
        self.expiries = Packed::new(0);
        self.seqs = Packed::new(0);
        self.free = NIL;
        self.head = NIL;
        self.tail = NIL;
    }

    /// Files a slot in the list after the last slot whose expiry is at most its own. Returns
    /// whether it became the head.
    ///
    /// `buckets` holds the last slot of every expiry's run except the tail's, whose last slot
    /// is the tail itself: the common insert (the newest session expires last, in the same
    /// second as the previous one) touches no map at all.
    #[inline]
    fn link(&mut self, idx: u32) -> bool {
        let expiry = self.expiry(idx);
        let tail_expiry = (self.tail != NIL).then(|| self.expiry(self.tail));
        let after = if let Some(tail_expiry) = tail_expiry.filter(|&t| t <= expiry) {
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
        } else {
            self.slot_mut(after).next = idx;
        }
        if before == NIL {
            self.tail = idx;
        } else {
            self.slot_mut(before).prev = idx;
        }
        after == NIL
    }

    /// Takes a slot out of the list, keeping `buckets` true. Returns whether it was the head.
    #[inline]
    fn unlink(&mut self, idx: u32) -> bool {
        let (prev, next) = {
            let s = self.slot(idx);
            (s.prev, s.next)
        };
        let expiry = self.expiry(idx);
        let is_last_of_run = next == NIL || self.expiry(next) != expiry;
        if is_last_of_run {
            let is_first_of_run = prev == NIL || self.expiry(prev) != expiry;
            if next == NIL {
                // The tail's run, which the map does not hold. If it empties, the run before
                // it becomes the tail's and leaves the map.
                if is_first_of_run && prev != NIL {
                    let prev_expiry = self.expiry(prev);
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
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
        prev == NIL
    }

    /// The live slots from head to tail; for tests.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        core::iter::successors(self.head(), |&idx| {
            let next = self.slot(idx).next;
            (next != NIL).then_some(next)
        })
    }

    /// Checks every invariant, panicking on the first broken one, and returns the number of
    /// live slots; for tests.
    ///
    /// - the list runs from `head` to `tail`, each slot's `prev` naming the slot before it;
    /// - it is sorted by `(expiry, seq)` (the exact values), with no two equal keys;
    /// - a value is kept aside exactly when its slot is live and packs it as [`FAR`];
    /// - `buckets` holds, for each run of equal expiries but the tail's, the run's last slot,
    ///   and nothing else;
    /// - every slot is either in the list or in the free list, never both, and the free list
    ///   ends (no cycle).
    #[cfg(test)]
    pub(crate) fn check(&self) -> usize {
        let mut live = vec![false; self.slots.len()];
        let mut n = 0;
        let mut prev = NIL;
        let mut idx = self.head;
        let mut last_key: Option<Key> = None;
        let mut runs = 0;
        let (mut far_expiries, mut far_seqs) = (0, 0);
        while idx != NIL {
            assert!(
                (idx as usize) < self.slots.len(),
                "link {idx} out of the slab"
            );
            assert!(!live[idx as usize], "slot {idx} twice in the list");
            live[idx as usize] = true;
            let s = self.slot(idx);
            assert_eq!(s.prev, prev, "slot {idx}: prev link");
            let key = self.key(idx);
            let expiry = key.0;
            assert_eq!(
                s.expiry == FAR,
                self.expiries.far.contains_key(&idx),
                "slot {idx}: an expiry is aside exactly when packed as far"
            );
            assert_eq!(
                s.seq == FAR,
                self.seqs.far.contains_key(&idx),
                "slot {idx}: a seq is aside exactly when packed as far"
            );
            far_expiries += usize::from(s.expiry == FAR);
            far_seqs += usize::from(s.seq == FAR);
            assert!(
                last_key.is_none_or(|k| k < key),
                "list out of order at slot {idx}"
            );
            let is_last_of_run = s.next == NIL || self.expiry(s.next) != expiry;
            if is_last_of_run {
                runs += 1;
                if s.next == NIL {
                    assert_eq!(
                        self.buckets.get(&expiry),
                        None,
                        "the tail's run is not in the map"
                    );
                } else {
                    assert_eq!(
                        self.buckets.get(&expiry),
                        Some(&idx),
                        "the bucket of second {expiry} names its run's last slot"
                    );
                }
            }
            last_key = Some(key);
            prev = idx;
            idx = s.next;
            n += 1;
        }
        assert_eq!(self.tail, prev, "tail is the last slot of the list");
        assert_eq!(
            self.expiries.far.len(),
            far_expiries,
            "no expiry aside for a free slot"
        );
        assert_eq!(
            self.seqs.far.len(),
            far_seqs,
            "no seq aside for a free slot"
        );
        assert_eq!(
            self.buckets.len(),
            runs.max(1) - 1,
            "one bucket per run but the tail's"
        );
        let mut free = 0;
        let mut idx = self.free;
        while idx != NIL {
            assert!(
                (idx as usize) < self.slots.len(),
                "free link {idx} out of the slab"
            );
            assert!(
                !live[idx as usize],
                "slot {idx} both free and listed, or free twice"
            );
            live[idx as usize] = true;
            idx = self.slot(idx).next;
            free += 1;
        }
        assert_eq!(n + free, self.slots.len(), "every slot listed or free");
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list's keys, head to tail.
    fn keys(order: &ExpiryOrder) -> Vec<Key> {
        order.iter().map(|i| order.key(i)).collect()
    }

    #[test]
    fn files_by_expiry_then_seq_and_reports_head_moves() {
        let mut order = ExpiryOrder::new();
        assert_eq!(order.check(), 0);
        assert_eq!(order.head_key(), None);
        let mut moved = Vec::new();
        for (seq, expiry) in [5u64, 3, 5, 1, 9, 3, 5, 0].into_iter().enumerate() {
            let (_, m) = order.insert(expiry, seq as u64);
            moved.push(m);
            order.check();
        }
        assert_eq!(moved, [true, true, false, true, false, false, false, true]);
        assert_eq!(
            keys(&order),
            [
                (0, 7),
                (1, 3),
                (3, 1),
                (3, 5),
                (5, 0),
                (5, 2),
                (5, 6),
                (9, 4)
            ]
        );
        assert_eq!(order.check(), 8);
    }

    #[test]
    fn removes_and_refiles_anywhere_keeping_buckets_true() {
        let mut order = ExpiryOrder::new();
        let idx: Vec<u32> = (0..30u64).map(|i| order.insert(i % 4, i).0).collect();
        assert_eq!(order.check(), 30);
        for &i in idx.iter().step_by(3) {
            order.remove(i);
            order.check();
        }
        assert_eq!(order.check(), 20);
        // Freed slots are reused before the slab grows.
        let (reused, _) = order.insert(2, 100);
        assert!(idx.iter().step_by(3).any(|&i| i == reused));
        order.check();
        // Refiling the head elsewhere moves the head; refiling the tail to the tail does not.
        let Some(head) = order.head() else {
            panic!("empty")
        };
        assert!(order.refile(head, 50, 101));
        order.check();
        assert_eq!(order.expiry(head), 50);
        let Some(tail) = order.iter().last() else {
            panic!("empty")
        };
        assert_eq!(tail, head);
        assert!(!order.refile(tail, 60, 102));
        order.check();
        // Removing every slot, head first, leaves an empty list and an empty map.
        while let Some(h) = order.head() {
            assert!(order.remove(h));
            order.check();
        }
        assert_eq!(order.head_key(), None);
        assert!(order.buckets.is_empty());
        order.clear();
        assert_eq!(order.check(), 0);
        assert_eq!(order.insert(7, 0), (0, true));
    }

    /// Random operations against a model (a sorted set of keys): the list always holds the
    /// model's keys in order, and every invariant holds after every step. `expiry` draws an
    /// expiry from a random number; `step` draws how far the insertion counter moves.
    fn run_against_model(expiry: impl Fn(u64) -> u64, step: impl Fn(u64) -> u64) {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut order = ExpiryOrder::new();
        let mut model: std::collections::BTreeMap<Key, u32> = BTreeMap::new();
        let mut seq = 0u64;
        for _ in 0..3_000 {
            let r = next();
            let expiry = expiry(next());
            seq = seq.saturating_add(step(next()));
            match r % 4 {
                0 | 1 => {
                    let before = order.head_key();
                    let (idx, moved) = order.insert(expiry, seq);
                    model.insert((expiry, seq), idx);
                    assert_eq!(moved, order.head_key() != before);
                }
                2 if !model.is_empty() => {
                    let nth = (next() % model.len() as u64) as usize;
                    let Some((&key, &idx)) = model.iter().nth(nth) else {
                        unreachable!()
                    };
                    let before = order.head_key();
                    let moved = order.remove(idx);
                    model.remove(&key);
                    assert_eq!(moved, order.head_key() != before);
                }
                3 if !model.is_empty() => {
                    let nth = (next() % model.len() as u64) as usize;
                    let Some((&key, &idx)) = model.iter().nth(nth) else {
                        unreachable!()
                    };
                    let before = order.head_key();
                    let moved = order.refile(idx, expiry, seq);
                    model.remove(&key);
                    model.insert((expiry, seq), idx);
                    assert_eq!(moved, order.head_key() != before);
                }
                _ => {}
            }
            assert_eq!(order.check(), model.len());
        }
        assert_eq!(keys(&order), model.keys().copied().collect::<Vec<_>>());
    }

    #[test]
    fn matches_a_sorted_model_under_random_operations() {
        run_against_model(|r| r % 12, |_| 1);
    }

    /// Expiries that do not fit in 32 bits beside each other (0, `u64::MAX`, and seconds more
    /// than 2^32 apart) and an insertion counter that jumps by up to 2^33 (so its base moves
    /// many times, and old seqs go aside): the order is still exactly that of the 64-bit keys.
    #[test]
    fn keys_out_of_the_32_bit_window_keep_the_exact_order() {
        let wide = |r: u64| match r % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - r % 3,
            3 => 10_000_000_000 + (1 << 32) + r % 3,
            4 => 10_000_000_000 - (1 << 31) - r % 3,
            _ => 10_000_000_000 + r % 5,
        };
        run_against_model(wide, |r| if r % 16 == 0 { r % (1 << 33) } else { 1 });
        // The tie rule across a counter that has run far past 2^32.
        let mut order = ExpiryOrder::new();
        let old = order.insert(500, 7).0;
        for k in 1..6u64 {
            order.insert(500, k << 32);
            order.check();
        }
        let newest = order.insert(499, 6 << 32).0;
        assert_eq!(order.head(), Some(newest));
        order.remove(newest);
        assert_eq!(order.head(), Some(old));
        assert_eq!(order.head_key(), Some((500, 7)));
        assert!(order.seqs.far.contains_key(&old));
        assert_eq!(order.check(), 6);
    }
}
