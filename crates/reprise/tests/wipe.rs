//! A session's secret bytes are zeroed before their memory goes back to the allocator: the
//! payload kept in a shared session's own allocation, and the vector a TLS stack hands over.
//!
//! The test binary's allocator is `System` with one look added: when the block that holds a
//! watched address is freed, it reads the watched bytes first and records whether any is nonzero.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use reprise::{Role, Session, SessionCache, SharedSession};

/// The watched bytes: their address and length (0 when nothing is watched).
static WATCH_AT: AtomicUsize = AtomicUsize::new(0);
static WATCH_LEN: AtomicUsize = AtomicUsize::new(0);
/// Watched blocks freed, and how many of them still held a nonzero byte.
static FREED: AtomicUsize = AtomicUsize::new(0);
static DIRTY: AtomicUsize = AtomicUsize::new(0);
/// One test watches at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Watching;

// SAFETY: every call is forwarded to `System` with the caller's arguments, so `System`'s
// guarantees are this allocator's. The one addition, in `dealloc`, only reads: the watched bytes
// lie inside the block being freed (checked by address against its layout), which `dealloc`'s
// caller guarantees is a live block of `layout.size()` bytes; the test sets the watch on bytes it
// wrote itself (a payload or a vector it filled), so they are initialised.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded, see above.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (at, len) = (
            WATCH_AT.load(Ordering::SeqCst),
            WATCH_LEN.load(Ordering::SeqCst),
        );
        let start = ptr as usize;
        if len > 0 && at >= start && at + len <= start + layout.size() {
            // SAFETY: the watched bytes are inside this live block (just checked) and were
            // initialised by the test, as said above; they are only read.
            let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, len) };
            FREED.fetch_add(1, Ordering::SeqCst);
            if bytes.iter().any(|&b| b != 0) {
                DIRTY.fetch_add(1, Ordering::SeqCst);
            }
        }
        // SAFETY: forwarded, see above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Watches `len` initialised bytes at `at`, with fresh counts.
fn watch_at(at: *const u8, len: usize) {
    FREED.store(0, Ordering::SeqCst);
    DIRTY.store(0, Ordering::SeqCst);
    WATCH_LEN.store(0, Ordering::SeqCst);
    WATCH_AT.store(at as usize, Ordering::SeqCst);
    WATCH_LEN.store(len, Ordering::SeqCst);
}

fn watch(bytes: &[u8]) {
    watch_at(bytes.as_ptr(), bytes.len());
}

/// Stops watching; returns (watched blocks freed, of which dirty).
fn unwatch() -> (usize, usize) {
    WATCH_LEN.store(0, Ordering::SeqCst);
    (FREED.load(Ordering::SeqCst), DIRTY.load(Ordering::SeqCst))
}

#[test]
fn a_cached_sessions_payload_is_zeroed_before_it_is_freed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cache: SessionCache = SessionCache::new();
    let secret = vec![0xab_u8; 777];
    let new = cache.new_session(
        Role::Server,
        cache.session(&[1; 32], &secret[..]).build().unwrap(),
    );
    assert!(new.is_stored());
    let session = new.session;
    assert_eq!(session.payload(), &secret[..]);
    watch(session.payload());
    // The cache lets it go, a clone made by a lookup goes, then the last pointer.
    let found = cache.lookup(Role::Server, session.key());
    assert!(found.is_some_and(|f| SharedSession::ptr_eq(&f, &session)));
    assert_eq!(cache.flush_all(), 1);
    assert_eq!(counts(), (0, 0), "freed while a pointer was left");
    watch(session.payload());
    drop(session);
    assert_eq!(unwatch(), (1, 0), "freed once, every byte zero");
}

/// (watched blocks freed, of which dirty) so far, without ending the watch.
fn counts() -> (usize, usize) {
    (FREED.load(Ordering::SeqCst), DIRTY.load(Ordering::SeqCst))
}

#[test]
fn the_vector_a_tls_stack_hands_over_is_zeroed_whole() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // rustls pushes its encoding onto a vector, which leaves spare capacity: bytes past the
    // length that held secrets too.
    let mut encoded = Vec::with_capacity(256);
    encoded.resize(256, 0x5a);
    encoded.truncate(100);
    // The whole capacity is watched: the 156 bytes past the length were written above.
    // `resize` initialised all 256 bytes, so the allocator may read them.
    watch_at(encoded.as_ptr(), 256);
    let shared = SharedSession::from(Session::builder(&[2; 32], encoded).build().unwrap());
    assert_eq!(unwatch(), (1, 0), "the vector was freed zeroed");
    assert_eq!(shared.payload(), &[0x5a; 100][..]);
}
