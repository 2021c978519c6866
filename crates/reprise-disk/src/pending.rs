//! Writes on their way to the file: what a read must see before the writer has committed them,
//! so that a session stored a moment ago is found, and a taken or removed one is not.

use std::collections::HashMap;
use std::sync::Arc;

/// A write that is queued but not yet in the file.
#[derive(Clone)]
pub(crate) enum InFlight {
    /// A session being stored: its sealed bytes.
    Store(Arc<[u8]>),
    /// A session being deleted (taken, removed): reads must miss.
    Delete,
}

struct Entry {
    seq: u64,
    what: InFlight,
    /// When the session expires: past it, the entry can go whatever became of its write.
    expiry: u64,
}

/// The in-flight writes, by table key. Each has a sequence number, so that the writer settles
/// exactly the write it committed and never a newer one for the same key.
#[derive(Default)]
pub(crate) struct Pending {
    map: HashMap<Vec<u8>, Entry>,
    next: u64,
}

impl Pending {
    /// The in-flight write for `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&InFlight> {
        self.map.get(key).map(|e| &e.what)
    }

    /// When the session of the in-flight write for `key` expires, if there is one.
    pub(crate) fn expiry(&self, key: &[u8]) -> Option<u64> {
        self.map.get(key).map(|e| e.expiry)
    }

    /// Records a write about to be queued; returns its sequence number (never 0).
    pub(crate) fn insert(&mut self, key: Vec<u8>, what: InFlight, expiry: u64) -> u64 {
        self.next += 1;
        let seq = self.next;
        self.map.insert(key, Entry { seq, what, expiry });
        seq
    }

    /// The write `seq` for `key` is in the file (or was never queued): forgets it, unless a
    /// newer write for the key has been recorded since.
    pub(crate) fn settle(&mut self, key: &[u8], seq: u64) {
        if self.map.get(key).is_some_and(|e| e.seq == seq) {
            self.map.remove(key);
        }
    }

    /// Forgets the entries of sessions expired at `now`: once a session has expired, no read
    /// can resume it, whether or not its write reached the file.
    pub(crate) fn forget_expired(&mut self, now: u64) {
        self.map.retain(|_, e| e.expiry >= now);
    }

    /// How many writes are in flight.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_an_older_write_keeps_the_newer() {
        let mut p = Pending::default();
        let first = p.insert(b"k".to_vec(), InFlight::Store(Arc::from(&b"v"[..])), 100);
        let second = p.insert(b"k".to_vec(), InFlight::Delete, 100);
        assert_ne!(first, 0);
        p.settle(b"k", first);
        assert!(matches!(p.get(b"k"), Some(InFlight::Delete)));
        p.settle(b"k", second);
        assert!(p.get(b"k").is_none());
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let mut p = Pending::default();
        p.insert(b"old".to_vec(), InFlight::Delete, 10);
        p.insert(b"new".to_vec(), InFlight::Delete, 20);
        p.forget_expired(15);
        assert!(p.get(b"old").is_none());
        assert!(p.get(b"new").is_some());
        assert_eq!(p.len(), 1);
    }
}
