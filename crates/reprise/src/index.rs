//! A shard's index: a Robin Hood hash table from an id's hash to its slot, in 4 bytes an entry.
//!
//! An entry is one `u32` that packs, from the high bits down, a displacement (its distance from
//! its home bucket, plus one, so that 0 is an empty bucket), a tag (low bits of the hash) and the
//! slot index. The slot field is as wide as the shard's slab needs; the tag takes what is left.
//! When the slab outgrows the slot field the table is packed again (in place, each tag losing its
//! top bits), and past 2^24 slots, where no tag bit is left, the entries become `u64`s.
//!
//! The bucket count need not be a power of two: a hash's home is `(hash * buckets) >> 64`, from
//! the hash's high bits; the tag is its low bits. Linear probing keeps each run sorted by home
//! (Robin Hood): a lookup stops at the first entry closer to its own home than the lookup is to
//! its, and a removal shifts the run after it back by one, so there are no tombstones and no
//! session is read or hashed on a removal. The table grows at load 0.8, toward a hint (the
//! shard's share of the cache's size limit) rather than to double when the hint is near, and
//! when a displacement would not fit its field. Growing, and going to `u64` entries, reads every
//! session's id again to hash it.

/// Displacement bits of the default layout: displacements up to 253.
const DISP_BITS: u32 = 8;

/// The widest displacement field: a displacement is below the number of entries (at most
/// 2^32, slots being `u32`s), so a field of 32 bits does not overflow short of 2^32 entries.
const MAX_DISP_BITS: u32 = 32;

/// The fewest entries a table is allocated for.
const MIN_CAPACITY: usize = 4;

/// A mask of the `bits` low bits.
#[inline(always)]
fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// The bits a slot index below `capacity` needs.
fn slot_bits_for(capacity: usize) -> u32 {
    match capacity {
        0 | 1 => 0,
        c => (usize::BITS - (c - 1).leading_zeros()).min(32),
    }
}

/// A hash's home bucket among `buckets`: the multiply-high range reduction, from its high bits.
#[inline(always)]
fn home(hash: u64, buckets: usize) -> usize {
    ((u128::from(hash) * buckets as u128) >> 64) as usize
}

/// The entries a table of `buckets` buckets holds before it grows: 80 % of them. At 0.9 the
/// table took 0.6 bytes less per entry, and 8 to 14 % more instructions per operation (callgrind,
/// `examples/instructions.rs`: longer runs to probe on a lookup and to shift on an insert or a
/// removal).
fn capacity_of(buckets: usize) -> usize {
    buckets / 5 * 4 + buckets % 5 * 4 / 5
}

/// The buckets that hold `capacity` entries at load 0.8.
fn buckets_for(capacity: usize) -> usize {
    capacity.saturating_add(capacity.div_ceil(4)).max(2)
}

/// Where the fields of an entry lie, and the masks that follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Width of the slot field (the low bits).
    slot_bits: u32,
    /// Width of the tag field, above the slot.
    tag_bits: u32,
    /// Width of the displacement field, above the tag (the high bits).
    disp_bits: u32,
    /// Whether entries are `u64`s rather than `u32`s.
    wide: bool,
    /// The mask of the slot field.
    slot_mask: u64,
    /// The mask of a tag, before its shift into place.
    tag_mask: u64,
}

impl Layout {
    /// The layout for slots below `2^slot_bits` and displacements in `disp_bits`, in `budget`
    /// bits if they fit, else in 64.
    fn new(slot_bits: u32, disp_bits: u32, budget: u32) -> Self {
        let (slot_bits, disp_bits) = (slot_bits.min(32), disp_bits.clamp(2, MAX_DISP_BITS));
        let wide = slot_bits + disp_bits > budget;
        let word = if wide { 64 } else { budget };
        let tag_bits = word - slot_bits - disp_bits;
        Self {
            slot_bits,
            tag_bits,
            disp_bits,
            wide,
            slot_mask: mask(slot_bits),
            tag_mask: mask(tag_bits),
        }
    }

    /// The number of slots the slot field can name.
    fn slot_room(self) -> usize {
        usize::try_from(1u64 << self.slot_bits).unwrap_or(usize::MAX)
    }

    /// The mask of the slot field.
    #[inline(always)]
    fn slot_mask(self) -> u64 {
        self.slot_mask
    }

    /// The mask of a tag, before its shift into place.
    #[inline(always)]
    fn tag_mask(self) -> u64 {
        self.tag_mask
    }

    /// Where the displacement field starts.
    #[inline(always)]
    fn disp_shift(self) -> u32 {
        self.slot_bits + self.tag_bits
    }

    /// One displacement, in place: the difference between two neighbours' entries of a run.
    #[inline(always)]
    fn step(self) -> u64 {
        1 << self.disp_shift()
    }

    /// The largest stored displacement field (the displacement plus one). One below the
    /// field's top, so that the probe's bound, one above it, still fits in the field.
    #[inline(always)]
    fn max_stored(self) -> u64 {
        mask(self.disp_bits) - 1
    }

    /// The entries at or above this one hold the largest displacement: they cannot move on.
    #[inline(always)]
    fn full(self) -> u64 {
        self.max_stored() << self.disp_shift()
    }

    /// A hash's tag, in place.
    #[inline(always)]
    fn tag(self, hash: u64) -> u64 {
        (hash & self.tag_mask) << self.slot_bits
    }
}

/// An entry: `u32` or `u64`.
trait Word:
    Copy
    + Ord
    + core::ops::Add<Output = Self>
    + core::ops::Sub<Output = Self>
    + core::ops::BitAnd<Output = Self>
    + core::ops::BitOr<Output = Self>
    + core::ops::Not<Output = Self>
{
    /// The empty entry.
    const ZERO: Self;
    /// `v` as an entry; the layout keeps every value it passes within the word.
    fn of(v: u64) -> Self;
    /// The entry as a `u64`.
    fn wide(self) -> u64;
    /// The entry minus one, wrapping: the empty entry becomes the largest.
    fn dec(self) -> Self;
}

impl Word for u32 {
    const ZERO: Self = 0;

    #[inline(always)]
    fn of(v: u64) -> Self {
        v as u32
    }

    #[inline(always)]
    fn wide(self) -> u64 {
        u64::from(self)
    }

    #[inline(always)]
    fn dec(self) -> Self {
        self.wrapping_sub(1)
    }
}

impl Word for u64 {
    const ZERO: Self = 0;

    #[inline(always)]
    fn of(v: u64) -> Self {
        v
    }

    #[inline(always)]
    fn wide(self) -> u64 {
        self
    }

    #[inline(always)]
    fn dec(self) -> Self {
        self.wrapping_sub(1)
    }
}

/// The entries, as wide as the layout says.
enum Entries {
    /// `u32` entries.
    Narrow(Box<[u32]>),
    /// `u64` entries, for slots beyond the narrow budget.
    Wide(Box<[u64]>),
}

/// Runs `$body` with `$w` bound to the entries, whichever their width.
macro_rules! with_words {
    ($entries:expr, $w:ident => $body:expr) => {
        match $entries {
            Entries::Narrow($w) => $body,
            Entries::Wide($w) => $body,
        }
    };
}

impl Entries {
    /// `buckets` empty entries.
    fn empty(buckets: usize, wide: bool) -> Self {
        if wide {
            Self::Wide(vec![0; buckets].into_boxed_slice())
        } else {
            Self::Narrow(vec![0; buckets].into_boxed_slice())
        }
    }

    /// Every non-empty entry, widened.
    fn occupied(&self) -> Vec<u64> {
        with_words!(self, w => w.iter().map(|e| e.wide()).filter(|&e| e != 0).collect())
    }
}

/// A displacement did not fit its field: the table must grow or widen that field.
#[derive(Debug)]
struct Overflow;

/// The first entry from `from` on, wrapping at the end, for which `stop` holds.
#[inline(always)]
fn scan<T: Word>(w: &[T], from: usize, stop: impl Fn(T) -> bool) -> Option<usize> {
    let (before, after) = w.split_at_checked(from)?;
    match after.iter().position(|&e| stop(e)) {
        Some(i) => Some(from + i),
        None => before.iter().position(|&e| stop(e)),
    }
}

/// Moves each entry of `w[from..to]` (wrapping) one bucket on, one step further from home;
/// `w[to]` is empty and `w[from]` is left as it was.
#[inline(always)]
fn shift_on<T: Word>(w: &mut [T], from: usize, to: usize, step: T) {
    let on = |run: &mut [T]| {
        for i in (1..run.len()).rev() {
            run[i] = run[i - 1] + step;
        }
    };
    if from <= to {
        on(&mut w[from..=to]);
    } else {
        let last = w.len() - 1;
        on(&mut w[..=to]);
        w[0] = w[last] + step;
        on(&mut w[from..]);
    }
}

/// Moves each entry of `w[from + 1..to]` (wrapping) one bucket back, one step nearer home,
/// over `w[from]`, and empties the bucket before `to`.
#[inline(always)]
fn shift_back<T: Word>(w: &mut [T], from: usize, to: usize, step: T) {
    let back = |run: &mut [T]| {
        for i in 1..run.len() {
            run[i - 1] = run[i] - step;
        }
    };
    if from < to {
        back(&mut w[from..to]);
        w[to - 1] = T::ZERO;
    } else if to == 0 {
        back(&mut w[from..]);
        let last = w.len() - 1;
        w[last] = T::ZERO;
    } else {
        back(&mut w[from..]);
        let last = w.len() - 1;
        w[last] = w[0] - step;
        back(&mut w[..to]);
        w[to - 1] = T::ZERO;
    }
}

/// Finds the slot for which `eq` holds among the entries under `hash`.
#[inline(always)]
fn find_in<T: Word>(w: &[T], l: Layout, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
    let n = w.len();
    let mut pos = home(hash, n);
    let (step, slot_mask) = (T::of(l.step()), T::of(l.slot_mask()));
    // `floor`: the entry of this distance with no tag and slot 0. An entry below it is empty or
    // nearer its home than we are to ours, so ours is not further on. It reaches at most one
    // above the largest stored field, so it fits. `want`: the distance and the tag.
    let mut floor = step;
    let mut want = step | T::of(l.tag(hash));
    loop {
        let e = *w.get(pos)?;
        if e < floor {
            return None;
        }
        if e & !slot_mask == want {
            let slot = (e & slot_mask).wide() as u32;
            if eq(slot) {
                return Some(slot);
            }
        }
        pos += 1;
        if pos == n {
            pos = 0;
        }
        floor = floor + step;
        want = want + step;
    }
}

/// Inserts `slot` under `hash`, or changes nothing and fails if a displacement would overflow.
fn insert_in<T: Word>(w: &mut [T], l: Layout, hash: u64, slot: u32) -> Result<(), Overflow> {
    let n = w.len();
    let mut pos = home(hash, n);
    let (step, full) = (T::of(l.step()), T::of(l.full()));
    let mut floor = step;
    // Past the entries as far or further from their home than we are from ours.
    while *w.get(pos).ok_or(Overflow)? >= floor {
        pos += 1;
        if pos == n {
            pos = 0;
        }
        floor = floor + step;
    }
    if floor > full {
        return Err(Overflow);
    }
    // The run from `pos` to the next empty bucket moves one bucket on, each one further: stop
    // at the empty bucket, or at an entry that cannot go further (`e >= full`), in one compare.
    let below_full = T::of(l.full() - 1);
    let end = scan(w, pos, |e| e.dec() >= below_full).ok_or(Overflow)?;
    if w[end] != T::ZERO {
        return Err(Overflow);
    }
    shift_on(w, pos, end, step);
    w[pos] = floor | T::of(l.tag(hash) | u64::from(slot));
    Ok(())
}

/// Removes `slot`'s entry under `hash`; whether it was there.
fn remove_in<T: Word>(w: &mut [T], l: Layout, hash: u64, slot: u32) -> bool {
    let n = w.len();
    let mut pos = home(hash, n);
    let step = T::of(l.step());
    // The displacement and slot fields; the tag need not be compared.
    let fields = !T::of(l.tag_mask() << l.slot_bits);
    let mut want = step | T::of(u64::from(slot));
    let mut floor = step;
    loop {
        let Some(&e) = w.get(pos) else {
            return false;
        };
        if e < floor {
            return false;
        }
        if e & fields == want {
            break;
        }
        pos += 1;
        if pos == n {
            pos = 0;
        }
        floor = floor + step;
        want = want + step;
    }
    // Backward shift: the entries after it, up to an empty one or one at its home, move back.
    let after = if pos + 1 == n { 0 } else { pos + 1 };
    let two = step + step;
    match scan(w, after, |e| e < two) {
        Some(end) => shift_back(w, pos, end, step),
        // Not without an empty bucket; the table keeps one.
        None => w[pos] = T::ZERO,
    }
    true
}

/// Packs each entry of `w` again from layout `from` to layout `to`, of the same width and
/// with no more tag bits: displacements and positions stay, tags lose their top bits.
fn repack_in<T: Word>(w: &mut [T], from: Layout, to: Layout) {
    for x in w.iter_mut() {
        let e = x.wide();
        if e != 0 {
            let stored = e >> from.disp_shift();
            let tag = (e >> from.slot_bits) & to.tag_mask();
            let slot = e & from.slot_mask();
            *x = T::of(stored << to.disp_shift() | tag << to.slot_bits | slot);
        }
    }
}

/// The index of one shard: slot indices by their session's hash.
///
/// The index keeps no hashes: growing, and widening its entries, asks the shard for a slot's
/// hash (`hash_of`), which reads and hashes the slot's id.
pub(crate) struct Index {
    entries: Entries,
    /// The number of buckets.
    buckets: usize,
    /// The entries it holds before it grows.
    capacity: usize,
    len: usize,
    layout: Layout,
    /// The bits of a narrow entry: 32, or fewer in tests.
    budget: u32,
}

impl Index {
    /// An empty index of `u32` entries with 8-bit displacements; it allocates nothing.
    pub(crate) fn new() -> Self {
        Self::with_budget(32, DISP_BITS)
    }

    /// An empty index whose narrow entries have `budget` bits (at most 32), of which
    /// `disp_bits` (at least 2) hold the displacement: small numbers let a test reach every
    /// layout with few entries.
    pub(crate) fn with_budget(budget: u32, disp_bits: u32) -> Self {
        let budget = budget.clamp(2, 32);
        Self {
            entries: Entries::Narrow(Box::default()),
            buckets: 0,
            capacity: 0,
            len: 0,
            layout: Layout::new(0, disp_bits.min(budget), budget),
            budget,
        }
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes the entries take.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.buckets * if self.layout.wide { 8 } else { 4 }
    }

    /// The entries the table holds before it grows.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// Finds the slot under `hash` for which `eq` holds (`eq` sees only slots whose tag matches).
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        with_words!(&self.entries, w => find_in(w, self.layout, hash, eq))
    }

    /// Inserts `slot` under `hash`; the slot is not in the index.
    ///
    /// `slot_capacity` is the slab's capacity: the slot field follows it. `hint` is the number
    /// of entries this index is expected to reach (0: no idea), read only when it grows, and
    /// `hash_of` gives a slot's hash when it grows or widens.
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        slot: u32,
        slot_capacity: usize,
        hint: impl Fn() -> usize,
        hash_of: impl Fn(u32) -> u64,
    ) {
        let slots = slot_capacity.max((slot as usize).saturating_add(1));
        if slots > self.layout.slot_room() {
            self.relayout(slot_bits_for(slots), self.layout.disp_bits, &hash_of);
        }
        if self.len >= self.capacity {
            self.grow(hint(), &hash_of);
        }
        loop {
            let layout = self.layout;
            match with_words!(&mut self.entries, w => insert_in(w, layout, hash, slot)) {
                Ok(()) => break,
                Err(Overflow) => self.overflowed(hint(), &hash_of),
            }
        }
        self.len += 1;
    }

    /// Removes `slot`'s entry under `hash`; whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let layout = self.layout;
        let removed = with_words!(&mut self.entries, w => remove_in(w, layout, hash, slot));
        self.len -= usize::from(removed);
        removed
    }

    /// Removes every entry, keeping the table.
    pub(crate) fn clear(&mut self) {
        match &mut self.entries {
            Entries::Narrow(w) => w.fill(0),
            Entries::Wide(w) => w.fill(0),
        }
        self.len = 0;
    }

    /// A displacement would not fit: grow if the table is at least half full (a longer run
    /// comes from load), else widen the displacement field (it comes from equal hashes).
    #[cold]
    #[inline(never)]
    fn overflowed(&mut self, hint: usize, hash_of: &dyn Fn(u32) -> u64) {
        if self.len >= self.capacity / 2 || self.layout.disp_bits >= MAX_DISP_BITS {
            self.grow(hint, hash_of);
        } else {
            self.relayout(self.layout.slot_bits, self.layout.disp_bits + 1, hash_of);
        }
    }

    /// Grows the table: to the hint when it lies between now and 2.5 times now, else to double.
    ///
    /// So the last growth before the hint lands on it rather than past it, and a table holds
    /// at most 2.5 times its entries ahead of need, however far the hint.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, hint: usize, hash_of: &dyn Fn(u32) -> u64) {
        let capacity = self.capacity;
        let doubled = capacity.saturating_mul(2).max(MIN_CAPACITY);
        let target = if hint > capacity && hint <= doubled.saturating_add(doubled / 4) {
            hint
        } else {
            doubled
        };
        self.rebuild(buckets_for(target), self.layout, hash_of);
    }

    /// Changes the widths of the slot and displacement fields: in place when the word stays
    /// and tags only lose bits, else by hashing every slot again.
    #[cold]
    #[inline(never)]
    fn relayout(&mut self, slot_bits: u32, disp_bits: u32, hash_of: &dyn Fn(u32) -> u64) {
        let to = Layout::new(slot_bits, disp_bits, self.budget);
        let from = self.layout;
        if to.wide == from.wide && to.tag_bits <= from.tag_bits {
            with_words!(&mut self.entries, w => repack_in(w, from, to));
            self.layout = to;
        } else {
            self.rebuild(self.buckets, to, hash_of);
        }
    }

    /// Builds the table again with `buckets` buckets under `layout` (or a wider displacement
    /// field, if one overflows), hashing every slot again.
    fn rebuild(&mut self, mut buckets: usize, mut layout: Layout, hash_of: &dyn Fn(u32) -> u64) {
        let slot_mask = self.layout.slot_mask();
        let slots: Vec<u32> = self
            .entries
            .occupied()
            .into_iter()
            .map(|e| (e & slot_mask) as u32)
            .collect();
        self.entries = Entries::Narrow(Box::default());
        'build: loop {
            let mut entries = Entries::empty(buckets, layout.wide);
            for &slot in &slots {
                let hash = hash_of(slot);
                if with_words!(&mut entries, w => insert_in(w, layout, hash, slot)).is_err() {
                    let wider = Layout::new(layout.slot_bits, layout.disp_bits + 1, self.budget);
                    if wider == layout {
                        // The widest field, in a run of 2^32 entries: more buckets, at least,
                        // do not make it longer.
                        buckets = buckets.saturating_mul(2);
                    }
                    layout = wider;
                    continue 'build;
                }
            }
            self.entries = entries;
            self.buckets = buckets;
            self.capacity = capacity_of(buckets);
            self.layout = layout;
            return;
        }
    }

    /// Every slot in the index, in bucket order.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> Vec<u32> {
        let slot_mask = self.layout.slot_mask();
        self.entries
            .occupied()
            .into_iter()
            .map(|e| (e & slot_mask) as u32)
            .collect()
    }

    /// Checks the invariants, `hash_of` giving each slot's hash: each entry's displacement is
    /// its distance from its home, runs are in Robin Hood order, tags are the hashes', slots are
    /// unique and within the slot field, each entry is found under its hash, and `len` counts
    /// them.
    #[cfg(test)]
    pub(crate) fn check(&self, hash_of: impl Fn(u32) -> u64) {
        let l = self.layout;
        let n = self.buckets;
        assert!(self.len <= self.capacity || n == 0, "load within 0.8");
        assert_eq!(
            l.slot_bits + l.tag_bits + l.disp_bits,
            if l.wide { 64 } else { self.budget }
        );
        let words: Vec<u64> = match &self.entries {
            Entries::Narrow(w) => w.iter().map(|&e| u64::from(e)).collect(),
            Entries::Wide(w) => w.to_vec(),
        };
        assert_eq!(words.len(), n);
        let mut seen = std::collections::HashSet::new();
        for (pos, &e) in words.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let stored = e >> l.disp_shift();
            assert!(
                stored >= 1 && stored <= l.max_stored(),
                "displacement field {stored}"
            );
            let disp = (stored - 1) as usize;
            let slot = (e & l.slot_mask()) as u32;
            assert!(seen.insert(slot), "slot {slot} once");
            let hash = hash_of(slot);
            assert_eq!(
                (home(hash, n) + disp) % n,
                pos,
                "slot {slot}: true displacement"
            );
            assert_eq!(
                e & (l.tag_mask() << l.slot_bits),
                l.tag(hash),
                "slot {slot}: tag"
            );
            // Robin Hood: the entry before is empty and this one at home, or this one is at most
            // one further from its home.
            let before = words[(pos + n - 1) % n];
            if before == 0 {
                assert_eq!(disp, 0, "slot {slot}: after an empty bucket, at home");
            } else {
                let before_disp = (before >> l.disp_shift()) - 1;
                assert!(
                    disp as u64 <= before_disp + 1,
                    "slot {slot}: Robin Hood order"
                );
            }
            assert_eq!(
                self.find(hash, |s| s == slot),
                Some(slot),
                "slot {slot} found"
            );
        }
        assert_eq!(seen.len(), self.len, "len counts the entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A model: slot → hash, with the hash given by a test hasher.
    struct Harness {
        /// The index under test.
        index: Index,
        /// Each indexed slot's hash.
        hashes: HashMap<u32, u64>,
        /// The slab's capacity, as the shard would pass it.
        slab: usize,
        /// The hint the index grows toward.
        hint: usize,
    }

    impl Harness {
        /// A harness around an empty index.
        fn new(index: Index, hint: usize) -> Self {
            Self {
                index,
                hashes: HashMap::new(),
                slab: 0,
                hint,
            }
        }

        /// Inserts a new slot under `hash`, growing the slab as a `Vec` would.
        fn insert(&mut self, slot: u32, hash: u64) {
            assert!(self.hashes.insert(slot, hash).is_none());
            // The slab grows by doubling, as a `Vec` does.
            while self.slab <= slot as usize {
                self.slab = (self.slab * 2).max(4);
            }
            let hashes = &self.hashes;
            let hint = self.hint;
            self.index
                .insert(hash, slot, self.slab, || hint, |s| hashes[&s]);
        }

        /// Removes a slot; whether the index had it.
        fn remove(&mut self, slot: u32) -> bool {
            match self.hashes.remove(&slot) {
                Some(hash) => self.index.remove(hash, slot),
                None => false,
            }
        }

        /// Checks the index's invariants and that it holds exactly the model's slots.
        fn check(&self) {
            self.index.check(|s| self.hashes[&s]);
            assert_eq!(self.index.len(), self.hashes.len());
            for (&slot, &hash) in &self.hashes {
                // Found by slot, and `eq` sees only candidates under that hash's tag.
                assert_eq!(self.index.find(hash, |s| s == slot), Some(slot));
            }
        }
    }

    /// Hashes that spread over the whole range (a 64-bit mixer).
    fn spread(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A test hasher that maps every key to one of `kinds` hashes: many collisions.
    fn colliding(x: u64, kinds: u64) -> u64 {
        spread(x % kinds.max(1))
    }

    /// An operation on the index and its model.
    #[derive(Clone, Debug)]
    enum Op {
        /// Insert a key (if new) in the next free slot.
        Insert(u64),
        /// Remove the n-th live key, modulo their number.
        Remove(usize),
        /// Look a key up.
        Find(u64),
    }

    /// Random operations, inserts most often.
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                3 => any::<u64>().prop_map(Op::Insert),
                2 => any::<usize>().prop_map(Op::Remove),
                1 => any::<u64>().prop_map(Op::Find),
            ],
            0..400,
        )
    }

    /// Runs `ops` against a `HashMap` model: keys → slots, slots reused from a free list as
    /// the expiry slab reuses them.
    fn run(index: Index, hint: usize, ops: &[Op], hash: impl Fn(u64) -> u64) {
        let mut h = Harness::new(index, hint);
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut keys: Vec<u64> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut next_slot = 0u32;
        let mut key_of: HashMap<u32, u64> = HashMap::new();
        for op in ops {
            match *op {
                Op::Insert(k) => {
                    if model.contains_key(&k) {
                        continue;
                    }
                    let slot = free.pop().unwrap_or_else(|| {
                        next_slot += 1;
                        next_slot - 1
                    });
                    model.insert(k, slot);
                    key_of.insert(slot, k);
                    keys.push(k);
                    h.insert(slot, hash(k));
                }
                Op::Remove(i) => {
                    if keys.is_empty() {
                        continue;
                    }
                    let k = keys.swap_remove(i % keys.len());
                    let Some(slot) = model.remove(&k) else {
                        panic!("model lost {k}")
                    };
                    key_of.remove(&slot);
                    assert!(h.remove(slot));
                    free.push(slot);
                }
                Op::Find(k) => {
                    let found = h.index.find(hash(k), |s| key_of.get(&s) == Some(&k));
                    assert_eq!(found, model.get(&k).copied());
                }
            }
            h.check();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn matches_a_hash_map(ops in ops()) {
            run(Index::new(), 0, &ops, spread);
        }

        #[test]
        fn matches_a_hash_map_with_collisions(ops in ops(), kinds in 1u64..8) {
            run(Index::new(), 0, &ops, |k| colliding(k, kinds));
        }

        #[test]
        fn matches_a_hash_map_in_small_budgets(
            ops in ops(), budget in 6u32..=16, disp in 2u32..=4, kinds in 1u64..64, hint in 0usize..300,
        ) {
            // Small words: re-packs, no tag bits, wide entries and overflowing displacements
            // all within a few hundred entries.
            run(Index::with_budget(budget, disp), hint, &ops, |k| colliding(k, kinds));
        }

        #[test]
        fn matches_a_hash_map_with_few_hash_bits(ops in ops(), hint in 0usize..300) {
            // Hashes that differ only in their high bits (the home) or only in their low bits
            // (the tag).
            run(Index::with_budget(12, 3), hint, &ops, |k| spread(k) & 0xff00_0000_0000_0000);
            run(Index::with_budget(12, 3), hint, &ops, |k| spread(k) & 0xff);
        }
    }

    #[test]
    fn repacks_as_the_slab_grows_down_to_no_tag_then_wide() {
        // 16-bit entries, 4 of displacement: 12 bits for slot and tag.
        let mut h = Harness::new(Index::with_budget(16, 4), 0);
        let mut seen = Vec::new();
        for slot in 0..5000u32 {
            h.insert(slot, spread(u64::from(slot)));
            let l = h.index.layout;
            if seen.last() != Some(&l) {
                seen.push(l);
                h.check();
            }
        }
        h.check();
        // Tags shrank as slots grew, reached zero, then entries went wide.
        assert!(seen.iter().any(|l| !l.wide && l.tag_bits == 0));
        assert!(seen.iter().any(|l| !l.wide && l.tag_bits > 0));
        assert!(seen.last().is_some_and(|l| l.wide && l.slot_bits == 13));
        for slot in (0..5000u32).step_by(2) {
            assert!(h.remove(slot));
        }
        h.check();
    }

    #[test]
    fn zero_tag_bits_still_finds_by_slot() {
        // 8-bit entries with 4 of displacement: slots of 4 bits leave no tag.
        let mut h = Harness::new(Index::with_budget(8, 4), 0);
        for slot in 0..16u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        assert_eq!(h.index.layout.tag_bits, 0);
        assert!(!h.index.layout.wide);
        h.check();
        for slot in 0..16u32 {
            assert!(h.remove(slot));
            h.check();
        }
        assert_eq!(h.index.len(), 0);
    }

    #[test]
    fn overflowing_displacement_grows_then_widens() {
        // Displacements of 2 bits: at most 1. Two equal hashes need displacement 1, a third 2.
        let mut h = Harness::new(Index::with_budget(32, 2), 0);
        for slot in 0..3u32 {
            h.insert(slot, 42);
            h.check();
        }
        // The third overflowed at load 3/4: the table grew (from 4 entries to 8) before the
        // field widened (the load was then 3/8).
        assert_eq!(h.index.buckets, buckets_for(8));
        assert_eq!(h.index.layout.disp_bits, 3, "{:?}", h.index.layout);
        // A hundred equal hashes: the field widens as far as it must.
        for slot in 3..100u32 {
            h.insert(slot, 42);
        }
        h.check();
        assert!(h.index.layout.max_stored() > 99);
        for slot in 0..100u32 {
            assert!(h.remove(slot));
        }
        h.check();
    }

    #[test]
    fn narrow_displacements_with_spread_hashes() {
        // Spread hashes in 3-bit displacements (at most 5): runs overflow often, above half load
        // the table grows, below it the field widens; nothing is lost either way.
        let mut h = Harness::new(Index::with_budget(32, 3), 0);
        for slot in 0..2000u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        h.check();
        assert!(h.index.layout.disp_bits > 3, "{:?}", h.index.layout);
        for slot in (0..2000u32).step_by(3) {
            assert!(h.remove(slot));
        }
        h.check();
    }

    #[test]
    fn wraps_around_the_end() {
        // Hashes whose home is the last bucket: their run wraps to the first.
        let mut h = Harness::new(Index::new(), 0);
        h.insert(0, 1);
        let n = h.index.buckets;
        assert!(n >= 5);
        let last = u64::MAX - 7;
        assert_eq!(home(last, n), n - 1);
        for slot in 1..4u32 {
            h.insert(slot, last - u64::from(slot));
            h.check();
        }
        // The first bucket holds a wrapped entry, displaced past the end.
        let Entries::Narrow(w) = &h.index.entries else {
            panic!("narrow")
        };
        assert!(w[0] >> h.index.layout.disp_shift() > 1, "{:x}", w[0]);
        assert_eq!(h.index.slots().len(), 4);
        assert!(h.remove(1));
        h.check();
        assert!(h.remove(0));
        h.check();
        assert!(h.remove(3));
        h.check();
        assert_eq!(h.index.find(last - 2, |s| s == 2), Some(2));
    }

    #[test]
    fn grows_to_the_hint_not_past_it() {
        let hint = 31_250 + 31_250 / 20;
        let mut h = Harness::new(Index::new(), hint);
        for slot in 0..31_250u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        h.check();
        assert_eq!(h.index.buckets, buckets_for(hint));
        // About 5.25 bytes an entry, where doubling to 65,536 would have left 8.4.
        assert!(h.index.bytes() * 10 < 31_250 * 54, "{}", h.index.bytes());
        // Past the hint, it doubles.
        let capacity = h.index.capacity();
        for slot in 31_250..=capacity as u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        assert_eq!(h.index.buckets, buckets_for(2 * capacity));
    }

    #[test]
    fn a_far_hint_allocates_nothing_ahead() {
        let mut h = Harness::new(Index::new(), 100_000_000);
        for slot in 0..10u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        assert!(h.index.bytes() <= 128, "{}", h.index.bytes());
    }

    #[test]
    fn spread_hashes_fit_8_bit_displacements_at_full_load() {
        // The default layout at a million entries, filled to its load of 0.8: no overflow-driven growth.
        let mut h = Harness::new(Index::new(), 1_000_000);
        for slot in 0..1_000_000u32 {
            h.insert(slot, spread(u64::from(slot)));
        }
        assert_eq!(h.index.buckets, buckets_for(1_000_000));
        assert_eq!(h.index.layout.disp_bits, DISP_BITS);
    }

    #[test]
    fn layout_widths() {
        assert_eq!(slot_bits_for(0), 0);
        assert_eq!(slot_bits_for(2), 1);
        assert_eq!(slot_bits_for(32_768), 15);
        assert_eq!(slot_bits_for(32_769), 16);
        assert_eq!(slot_bits_for(usize::MAX), 32);
        let l = Layout::new(15, 8, 32);
        assert_eq!((l.tag_bits, l.wide), (9, false));
        let l = Layout::new(24, 8, 32);
        assert_eq!((l.tag_bits, l.wide), (0, false));
        let l = Layout::new(25, 8, 32);
        assert_eq!((l.tag_bits, l.wide), (31, true));
        let l = Layout::new(32, 32, 32);
        assert_eq!((l.tag_bits, l.wide), (0, true));
        for n in [2usize, 5, 10, 36_458, 1 << 40] {
            let c = capacity_of(n);
            assert!(c < n && buckets_for(c) <= n);
            assert!(capacity_of(buckets_for(c)) >= c);
        }
    }
}
