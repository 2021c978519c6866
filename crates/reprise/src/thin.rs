//! The engine's two thin owners, and its only `unsafe` code: [`Shared`], a reference-counted
//! pointer of one word with no weak count, whose allocation can carry secret bytes after its
//! value (the *tail*), and [`ThinBytes`], a boxed byte string of one word with its length in its
//! own allocation.
//!
//! Both exist for memory. A cached session is one `Shared<Session<InlineSecret>>`: an 8-byte
//! header (a 32-bit count and the tail's length), the session's fields, and its payload's bytes,
//! in one allocation. Against `std::sync::Arc` (two 8-byte counts) and a payload behind its own
//! pointer (`Box<[u8]>`: a pointer and an 8-byte length) that saves 24 bytes per session
//! (`docs/PERFORMANCE.md`, "Memory per session"). `ThinBytes` is what
//! [`SecretBytes`](crate::SecretBytes) is made of: a payload kept apart from a session.
//!
//! Every `unsafe` block below says why it is sound. Aliasing, which valgrind does not check,
//! rests on three facts proved where they are used: a `Shared`'s value is only ever reached
//! through shared references (no `&mut` to it exists after it is written); its tail is reached
//! only from the pointer `alloc` returned (never through a reference to the value, whose
//! provenance would not cover it) and written only before that pointer is returned and by the
//! last drop; a `ThinBytes`'s bytes are only written before the pointer is returned by its
//! constructor, and in `drop`, which has the only reference. The module's tests, and the
//! engine's model test, run under valgrind in `scripts/test.sh`.
#![allow(unsafe_code)]

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// Past this many references, a clone aborts the process rather than risk the count wrapping
/// (which would free a value still in use). The count is 32 bits, so this is 2^31 clones of one
/// value: 16 GiB of pointers, which only leaked clones (`mem::forget`) reach in practice.
const MAX_REFS: u32 = i32::MAX as u32;

/// The allocation a [`Shared`] points to: the count, the tail's length, then the value; the tail's
/// bytes, if any, follow the value in the same allocation.
struct Inner<T> {
    refs: AtomicU32,
    /// The tail's length, or [`LONG_MARKER`] when it does not fit (the length is then the tail's
    /// first 8 bytes). Written once, before the pointer is returned; only read after.
    tail: u32,
    value: T,
}

/// A thread-safe reference-counted pointer, like `std::sync::Arc` without weak references:
/// one word on the stack or in a table, and an 8-byte header (a 32-bit count and the tail's
/// length) in front of the value.
///
/// Clones point to the same allocation; [`Shared::ptr_eq`] tells whether two do, which is what
/// `semantics.md` calls "the identical session object". The value is dropped with the last
/// clone.
///
/// The engine can put secret bytes (a session's payload) in the same allocation, after the
/// value: the *tail*, zeroed before it is freed. See
/// [`SharedSession::payload`](crate::SharedSession::payload).
///
/// ```
/// use reprise::Shared;
/// let a = Shared::new(String::from("session"));
/// let b = a.clone();
/// assert!(Shared::ptr_eq(&a, &b));
/// assert!(!Shared::ptr_eq(&a, &Shared::new(String::from("session"))));
/// assert_eq!((b.as_str(), Shared::strong_count(&a)), ("session", 2));
/// ```
pub struct Shared<T> {
    /// The start of an `Inner<T>` allocated by `with_tail` with `layout(tail)`; the pointer
    /// `alloc` returned, so it may reach the whole allocation, tail included.
    ptr: NonNull<Inner<T>>,
    /// A `Shared<T>` owns (a share of) an `Inner<T>`, and may drop it.
    _owns: PhantomData<Inner<T>>,
}

// SAFETY: as for `Arc<T>`: a `Shared<T>` sent to another thread gives it shared access to the
// value (hence `T: Sync`) and possibly the last drop of it (hence `T: Send`); the count is
// atomic. The tail is plain bytes, written only before the pointer exists and by the last drop.
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: a `&Shared<T>` lets another thread clone it (an atomic increment) and read the value
// through `&T` and the tail through `&[u8]`: the same conditions as `Send` above.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Moves `value` into a new allocation, with a count of one and no tail.
    pub fn new(value: T) -> Self {
        Self::with_tail(value, &[])
    }

    /// The allocation's layout for a tail of `len` bytes, and where the tail's bytes start.
    fn layout(len: usize) -> (Layout, usize) {
        let header: usize = if len < LONG_MARKER as usize { 0 } else { 8 };
        let layout = header
            .checked_add(len)
            .and_then(|n| Layout::array::<u8>(n).ok())
            .and_then(|tail| Layout::new::<Inner<T>>().extend(tail).ok());
        match layout {
            Some((layout, offset)) => (layout, offset + header),
            // The tail's bytes exist in memory already (they are copied from a slice), and
            // the value is a sized type, so both fit an `isize` together with 8 more bytes.
            None => unreachable!("a value and {len} bytes that exist fit a layout"),
        }
    }

    /// Moves `value` into a new allocation with a copy of `tail` after it (for the engine's
    /// sessions, whose payload lives there).
    pub(crate) fn with_tail(value: T, tail: &[u8]) -> Self {
        let len = tail.len();
        let (layout, start) = Self::layout(len);
        // SAFETY: the layout holds an `Inner<T>`, whose 8-byte header makes its size nonzero,
        // as `alloc` requires.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<Inner<T>>();
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        let short = u32::try_from(len).ok().filter(|&n| n != LONG_MARKER);
        // SAFETY: the allocation is `layout`: an `Inner<T>` at its start (aligned, since the
        // layout's alignment is `Inner<T>`'s), then the tail from `size_of::<Inner<T>>()`, whose
        // bytes start at `start` (after the 8-byte long length when there is one), inside the
        // allocation by `layout`'s construction. Only `raw` points to it yet, so the writes alias
        // nothing, and `tail` cannot overlap memory allocated just now.
        unsafe {
            raw.write(Inner {
                refs: AtomicU32::new(1),
                tail: short.unwrap_or(LONG_MARKER),
                value,
            });
            let bytes = raw.cast::<u8>();
            if short.is_none() {
                bytes
                    .add(core::mem::size_of::<Inner<T>>())
                    .cast::<u64>()
                    .write_unaligned(len as u64);
            }
            core::ptr::copy_nonoverlapping(tail.as_ptr(), bytes.add(start), len);
        }
        Self {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The tail's length, and where its bytes start.
    #[inline]
    fn tail_len_and_start(&self) -> (usize, usize) {
        let short = self.inner().tail;
        if short != LONG_MARKER {
            return (short as usize, core::mem::size_of::<Inner<T>>());
        }
        let at = core::mem::size_of::<Inner<T>>();
        // SAFETY: a marker means `with_tail` wrote the 8-byte length at the tail's start, inside
        // the allocation, reached through `ptr`, which may reach all of it; never written again.
        let long = unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(at)
                .cast::<u64>()
                .read_unaligned()
        };
        // It was a `usize` when written, on this machine.
        (long as usize, at + 8)
    }

    /// The bytes stored after the value (empty for [`Shared::new`]).
    #[inline]
    pub(crate) fn tail(this: &Self) -> &[u8] {
        let (len, start) = this.tail_len_and_start();
        // SAFETY: `with_tail` initialised `len` bytes at `start`, inside the allocation, which
        // lives as long as `this`. `ptr` came from `alloc` for the whole allocation (no
        // reference narrowed it), so it may reach the tail. The tail is only written before the
        // pointer is returned and by the last drop, which no `&Self` outlives: the shared slice
        // aliases nothing mutable.
        unsafe { core::slice::from_raw_parts(this.ptr.as_ptr().cast::<u8>().add(start), len) }
    }

    /// Whether two pointers point to the same allocation (the identical object).
    #[inline]
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// The address of the value, for logs and maps keyed by identity; never dereferenced here.
    #[inline]
    pub fn as_ptr(this: &Self) -> *const T {
        // `&raw const` makes no reference: the address of the field, computed in place.
        // SAFETY: `ptr` points to a live `Inner<T>` (see `inner`), so offsetting to its field
        // stays in the allocation.
        unsafe { &raw const (*this.ptr.as_ptr()).value }
    }

    /// How many pointers share the value right now (another thread may change it at once).
    pub fn strong_count(this: &Self) -> usize {
        this.inner().refs.load(Ordering::Acquire) as usize
    }

    #[inline]
    fn inner(&self) -> &Inner<T> {
        // SAFETY: `ptr` came from `alloc` in `with_tail`, initialised there, and is freed only
        // when the count drops to zero, which cannot happen while `self` (one of the counted
        // pointers) lives. Nothing ever makes a `&mut Inner<T>` after `with_tail`: every access
        // is through this shared reference, and the count is atomic, so the reference aliases
        // nothing mutable.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Clone for Shared<T> {
    #[inline]
    fn clone(&self) -> Self {
        // Relaxed suffices for an increment (as in `Arc`): the new pointer is made from an
        // existing one, which already keeps the value alive; no other memory is published.
        let old = self.inner().refs.fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            // 2^31 live clones take 16 GiB of pointers: only leaked ones (`mem::forget`) get
            // here, and going on could wrap the count to zero.
            std::process::abort();
        }
        Self {
            ptr: self.ptr,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for Shared<T> {
    #[inline]
    fn drop(&mut self) {
        // Release: every use of the value through this pointer happens before the decrement.
        // Once it is done another thread may free the allocation; the reference to the count is
        // not used after the call (std's `Arc` decrements the same way: a reference to an
        // atomic, an `UnsafeCell`, promises nothing about the memory once it is last used).
        if self.inner().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Acquire, paired with the other pointers' Release decrements: their uses of the value
        // and the tail happen before they are dropped and wiped below.
        fence(Ordering::Acquire);
        self.drop_last();
    }
}

impl<T> Shared<T> {
    /// Drops the value, zeroes the tail and frees the allocation; called by the last pointer.
    #[cold]
    fn drop_last(&mut self) {
        let (len, start) = self.tail_len_and_start();
        let (layout, _) = Self::layout(len);
        let raw = self.ptr.as_ptr();
        // SAFETY: the count was 1 and this pointer held it, so no other pointer exists and none
        // can be made (a clone needs a pointer): this is the only access to the allocation, and
        // no reference into it is alive (`tail_len_and_start`'s ended above). The value was
        // initialised by `with_tail` and is dropped once, here; the tail's `len` bytes at
        // `start` are inside the allocation, and written through `raw`, which may reach them.
        // The allocation was made by `alloc` with `layout(len)` for this very `len` (read back
        // from what `with_tail` wrote) and is freed once: only the decrement that reached zero
        // gets here.
        unsafe {
            core::ptr::drop_in_place(&raw mut (*raw).value);
            if len > 0 {
                let tail = raw.cast::<u8>().add(start);
                tail.write_bytes(0, len);
                // Keeps the compiler from removing the zeroing as a store to memory about to
                // be freed (the `zeroize` crate's barrier, as for `SecretBytes`).
                zeroize::optimization_barrier(core::slice::from_raw_parts(tail, len));
            }
            std::alloc::dealloc(raw.cast::<u8>(), layout);
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> AsRef<T> for Shared<T> {
    fn as_ref(&self) -> &T {
        self
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The length of a [`ThinBytes`] in front of its bytes: 4 bytes, or, for 4 GiB and more, a
/// marker and 8 more bytes.
const SHORT: usize = 4;
const LONG: usize = 12;
const LONG_MARKER: u32 = u32::MAX;

/// An immutable byte string behind one pointer: its length (4 bytes) and its bytes in one
/// allocation. What [`SecretBytes`](crate::SecretBytes) is made of; it zeroes nothing itself.
pub(crate) struct ThinBytes {
    /// The start of the allocation, whose layout is [`ThinBytes::layout`] of the length.
    ptr: NonNull<u8>,
    /// A `ThinBytes` owns its bytes.
    _owns: PhantomData<[u8]>,
}

// SAFETY: a `ThinBytes` owns its allocation and never shares it: moving it to another thread
// moves the only owner.
unsafe impl Send for ThinBytes {}
// SAFETY: through `&ThinBytes` the bytes can only be read.
unsafe impl Sync for ThinBytes {}

impl ThinBytes {
    /// The header's size and the allocation's layout for `len` bytes.
    fn layout(len: usize) -> (usize, Layout) {
        let header = if len < LONG_MARKER as usize {
            SHORT
        } else {
            LONG
        };
        match header
            .checked_add(len)
            .and_then(|size| Layout::from_size_align(size, 4).ok())
        {
            Some(layout) => (header, layout),
            // The bytes exist in memory already, so their size plus 12 fits an `isize`.
            None => unreachable!("{len} bytes exist, so {len} + {header} fits a layout"),
        }
    }

    /// A copy of `bytes`.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        let len = bytes.len();
        let (header, layout) = Self::layout(len);
        // SAFETY: the layout's size is at least 4, never zero, as `alloc` requires.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the allocation is `header + len` bytes, aligned to 4, and only `ptr` points to
        // it: the header's 4 (or 12) bytes are written at its start (the 8-byte length
        // unaligned, at offset 4), then the `len` bytes after them, from `bytes`, which cannot
        // overlap memory allocated just now.
        unsafe {
            if header == SHORT {
                // `len < u32::MAX` in this branch.
                ptr.as_ptr().cast::<u32>().write(len as u32);
            } else {
                ptr.as_ptr().cast::<u32>().write(LONG_MARKER);
                ptr.as_ptr()
                    .add(SHORT)
                    .cast::<u64>()
                    .write_unaligned(len as u64);
            }
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr().add(header), len);
        }
        Self {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The header's size and the number of bytes.
    #[inline]
    fn header_and_len(&self) -> (usize, usize) {
        // SAFETY: the allocation starts with the 4-byte length (aligned to 4) that `copy_from`
        // wrote, followed, when it is the marker, by the 8-byte length; both are initialised
        // and only read here.
        unsafe {
            let short = self.ptr.as_ptr().cast::<u32>().read();
            if short != LONG_MARKER {
                (SHORT, short as usize)
            } else {
                let long = self.ptr.as_ptr().add(SHORT).cast::<u64>().read_unaligned();
                // It was a `usize` when written, on this machine.
                (LONG, long as usize)
            }
        }
    }

    /// The number of bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.header_and_len().1
    }

    /// The bytes.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        let (header, len) = self.header_and_len();
        // SAFETY: `copy_from` initialised the `len` bytes after the header, inside the
        // allocation, which lives as long as `self`; they are never written while a `ThinBytes`
        // other than the one being dropped can see them, so a shared slice aliases nothing
        // mutable.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().add(header), len) }
    }

    /// Runs `f` on the bytes, mutably: for zeroing them before they are freed.
    pub(crate) fn with_bytes_mut(&mut self, f: impl FnOnce(&mut [u8])) {
        let (header, len) = self.header_and_len();
        // SAFETY: as in `as_slice`, and `&mut self` is the only reference to the allocation
        // (a `ThinBytes` never shares it), so the mutable slice is unique while `f` runs.
        f(unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(header), len) })
    }
}

impl Clone for ThinBytes {
    fn clone(&self) -> Self {
        Self::copy_from(self.as_slice())
    }
}

impl Drop for ThinBytes {
    fn drop(&mut self) {
        let (_, layout) = Self::layout(self.len());
        // SAFETY: `ptr` was allocated by `copy_from` with `layout(len)` for the same `len`
        // (read back from the header it wrote), and it is freed once, here, by its only owner.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as Counter;
    use std::sync::Arc;

    /// Counts its drops.
    struct Dropped(Arc<Counter>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn shared_drops_its_value_once_with_the_last_pointer() {
        let drops = Arc::new(Counter::new(0));
        let a = Shared::new(Dropped(Arc::clone(&drops)));
        let b = a.clone();
        let c = Shared::clone(&b);
        assert_eq!(Shared::strong_count(&a), 3);
        assert!(Shared::ptr_eq(&a, &c));
        assert_eq!(Shared::as_ptr(&a), Shared::as_ptr(&c));
        drop(a);
        drop(b);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        assert_eq!(Shared::strong_count(&c), 1);
        drop(c);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert_eq!(core::mem::size_of::<Shared<[u8; 64]>>(), 8);
        assert_eq!(core::mem::size_of::<Option<Shared<u8>>>(), 8);
    }

    #[test]
    fn shared_across_threads_frees_exactly_once() {
        let drops = Arc::new(Counter::new(0));
        let shared = Shared::new((Dropped(Arc::clone(&drops)), vec![7u8; 100]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mine = shared.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..200 {
                        held.push(mine.clone());
                        assert_eq!(held[held.len() - 1].1[99], 7);
                    }
                    held.len()
                })
            })
            .collect();
        drop(shared);
        for t in threads {
            assert_eq!(t.join().ok(), Some(200));
        }
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tails_round_trip_beside_the_value_and_drop_once() {
        let drops = Arc::new(Counter::new(0));
        for len in [0usize, 1, 3, 7, 8, 100, 4097] {
            let src: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let a = Shared::with_tail((Dropped(Arc::clone(&drops)), len as u64), &src);
            let b = a.clone();
            drop(a);
            assert_eq!(Shared::tail(&b), &src[..]);
            assert_eq!(b.1, len as u64);
            assert_eq!(Shared::strong_count(&b), 1);
        }
        // Each value dropped once, with its last pointer.
        assert_eq!(drops.load(Ordering::Relaxed), 7);
        assert!(Shared::tail(&Shared::new(5u8)).is_empty());
    }

    #[test]
    fn tails_are_shared_across_threads() {
        let shared = Shared::with_tail(vec![1u8; 3], &[9u8; 100]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mine = shared.clone();
                std::thread::spawn(move || {
                    let held: Vec<_> = (0..200).map(|_| mine.clone()).collect();
                    held.iter()
                        .all(|h| Shared::tail(h) == &[9u8; 100][..] && h[2] == 1)
                })
            })
            .collect();
        drop(shared);
        for t in threads {
            assert_eq!(t.join().ok(), Some(true));
        }
    }

    #[test]
    fn a_session_sized_value_and_its_payload_take_one_block() {
        // A session with an inline payload is 56 bytes: with the header and a 100-byte
        // payload, one allocation of 164 bytes.
        let (layout, start) = Shared::<[u64; 7]>::layout(100);
        assert_eq!((layout.size(), layout.align(), start), (164, 8, 64));
        // A tail whose length needs more than 32 bits keeps it in its first 8 bytes.
        let short = u32::MAX as usize - 1;
        assert_eq!(Shared::<[u64; 7]>::layout(short).1, 64);
        assert_eq!(Shared::<[u64; 7]>::layout(short + 1).1, 72);
        assert_eq!(core::mem::size_of::<Inner<()>>(), 8);
    }

    #[test]
    fn thin_bytes_round_trip_every_length() {
        for len in [0usize, 1, 3, 4, 5, 31, 100, 4097] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let thin = ThinBytes::copy_from(&src);
            assert_eq!(thin.len(), len);
            assert_eq!(thin.as_slice(), &src[..]);
            let copy = thin.clone();
            drop(thin);
            assert_eq!(copy.as_slice(), &src[..]);
        }
        assert_eq!(core::mem::size_of::<ThinBytes>(), 8);
        assert_eq!(ThinBytes::layout(100).1.size(), 104);
        assert_eq!(ThinBytes::layout(u32::MAX as usize).0, LONG);
    }

    #[test]
    fn thin_bytes_can_be_wiped_in_place() {
        let mut thin = ThinBytes::copy_from(b"master secret");
        thin.with_bytes_mut(|b| b.fill(0));
        assert_eq!(thin.as_slice(), &[0u8; 13]);
    }
}
