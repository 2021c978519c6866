//! The engine's two thin owners, and its only `unsafe` code: [`Shared`], a reference-counted
//! pointer of one word with no weak count, and [`ThinBytes`], a boxed byte string of one word
//! with its length in its own allocation.
//!
//! Both exist for memory: a cached session is one `Shared<Session>`, and its payload one
//! `ThinBytes`. Against `std::sync::Arc` (two counts) and `Box<[u8]>` (a pointer and a length)
//! they save 12 bytes per session: 8 each, less the 4-byte length in front of the bytes
//! (`docs/PERFORMANCE.md`, "Memory per session").
//!
//! Every `unsafe` block below says why it is sound. Aliasing, which valgrind does not check,
//! rests on two facts proved where they are used: a `Shared`'s value is only ever reached
//! through shared references (no `&mut` to it exists after `new`), and a `ThinBytes`'s bytes are
//! only written before the pointer is returned by its constructor, and in `drop`, which has the
//! only reference. The module's tests, and the engine's model test, run under valgrind in
//! `scripts/test.sh`.
#![allow(unsafe_code)]

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicUsize, Ordering};

/// Past this many references, a clone aborts the process rather than risk the count wrapping
/// (which would free a value still in use): the limit `std::sync::Arc` uses too.
const MAX_REFS: usize = isize::MAX as usize;

/// The allocation a [`Shared`] points to: the count, then the value.
struct Inner<T> {
    refs: AtomicUsize,
    value: T,
}

/// A thread-safe reference-counted pointer, like `std::sync::Arc` without weak references:
/// one word on the stack or in a table, one count in front of the value.
///
/// Clones point to the same allocation; [`Shared::ptr_eq`] tells whether two do, which is what
/// `semantics.md` calls "the identical session object". The value is dropped with the last
/// clone.
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
    ptr: NonNull<Inner<T>>,
    /// A `Shared<T>` owns (a share of) an `Inner<T>`, and may drop it.
    _owns: PhantomData<Inner<T>>,
}

// SAFETY: as for `Arc<T>`: a `Shared<T>` sent to another thread gives it shared access to the
// value (hence `T: Sync`) and possibly the last drop of it (hence `T: Send`); the count is
// atomic.
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: a `&Shared<T>` lets another thread clone it (an atomic increment) and read the value
// through `&T`: the same conditions as `Send` above.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Moves `value` into a new allocation, with a count of one.
    pub fn new(value: T) -> Self {
        let inner = Box::new(Inner {
            refs: AtomicUsize::new(1),
            value,
        });
        Self {
            ptr: NonNull::from(Box::leak(inner)),
            _owns: PhantomData,
        }
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
        this.inner().refs.load(Ordering::Acquire)
    }

    #[inline]
    fn inner(&self) -> &Inner<T> {
        // SAFETY: `ptr` came from `Box::leak` in `new` and is freed only when the count drops
        // to zero, which cannot happen while `self` (one of the counted pointers) lives. Nothing
        // ever makes a `&mut Inner<T>` after `new`: every access is through this shared
        // reference, and the count is atomic, so the reference aliases nothing mutable.
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
            // `isize::MAX` live clones cannot fit in memory: only leaked ones (`mem::forget`)
            // get here, and going on could wrap the count to zero.
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
        // happen before it is dropped below.
        fence(Ordering::Acquire);
        // SAFETY: the count was 1 and this pointer held it, so no other pointer exists and none
        // can be made (a clone needs a pointer): this is the only access to the allocation,
        // which `Box::leak` made from a `Box<Inner<T>>` of this very layout. It is freed once:
        // only the decrement that reached zero gets here.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
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
