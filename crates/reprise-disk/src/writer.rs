//! The disk tier's writer thread: it applies the queued writes to the file in batches, purges
//! expired sessions on a timer (expiry by the cache's clock), and keeps the file under its cap.
//! [`Shared`] is what the tier and the writer both hold.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use reprise::{Clock, SystemClock, WriteQueue};
use tracing::warn;

use crate::pending::Pending;
use crate::stats::{add, Counters};
use crate::store::{Op, Store};

/// Writes applied in one transaction, at most.
pub(crate) const BATCH: usize = 1024;

/// How often the writer wakes to write out the queue.
const TICK: Duration = Duration::from_millis(10);

/// How long [`Shared::flush`] waits for the writer, at most.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// The writer's rounds, for [`Shared::flush`]: a flush waits for a round that started after it
/// and emptied the queue.
#[derive(Default)]
struct Rounds {
    /// Rounds started.
    started: u64,
    /// The last round that drained everything queued when it began.
    emptied: u64,
    /// A flush asked the writer not to wait for its next tick.
    hurry: bool,
    /// The writer has ended.
    stopped: bool,
}

/// What the tier and its writer thread share.
pub(crate) struct Shared {
    pub(crate) store: RwLock<Store>,
    pub(crate) pending: Mutex<Pending>,
    pub(crate) queue: WriteQueue<Op>,
    pub(crate) counters: Counters,
    /// The cache's clock, once the tier is attached; the system clock until then.
    pub(crate) clock: OnceLock<Arc<dyn Clock>>,
    rounds: Mutex<Rounds>,
    /// Wakes the writer early (a flush, a close).
    hurry: Condvar,
    /// Tells flushers that a round ended.
    round_done: Condvar,
}

impl Shared {
    pub(crate) fn new(store: Store, write_queue: usize) -> Self {
        let counters = Counters::default();
        counters
            .file_bytes
            .store(store.file_bytes(), core::sync::atomic::Ordering::Relaxed);
        Self {
            store: RwLock::new(store),
            pending: Mutex::new(Pending::default()),
            queue: WriteQueue::new(write_queue),
            counters,
            clock: OnceLock::new(),
            rounds: Mutex::new(Rounds::default()),
            hurry: Condvar::new(),
            round_done: Condvar::new(),
        }
    }

    /// The current time by the cache's clock (the system's before the tier is attached).
    pub(crate) fn now(&self) -> u64 {
        match self.clock.get() {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        }
    }

    /// Waits until every write queued before the call is in the file (or the writer ended,
    /// or 30 seconds passed). Blocking.
    pub(crate) fn flush(&self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut rounds = self.rounds.lock();
        let target = rounds.started + 1;
        rounds.hurry = true;
        self.hurry.notify_one();
        while rounds.emptied < target && !rounds.stopped {
            if self
                .round_done
                .wait_until(&mut rounds, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    /// Closes the queue and wakes the writer, which writes out what is queued and ends.
    pub(crate) fn stop(&self) {
        self.queue.close();
        let mut rounds = self.rounds.lock();
        rounds.hurry = true;
        self.hurry.notify_one();
    }
}

/// The writer thread's work.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_bytes: u64,
    pub(crate) interval: Duration,
}

impl Writer {
    /// Applies queued writes in batches, purges the expired on a timer, and keeps the file
    /// under `max_bytes`. Ends when the queue is closed and written out.
    pub(crate) fn run(&self) {
        let shared = &*self.shared;
        // The data may take about half the file: redb's pages, its copy-on-write and the
        // expiry index take the rest (measured: a file of 1.8 times the data).
        let mut budget = self.max_bytes / 2;
        let mut last_purge = Instant::now();
        let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
        let mut full = false;
        loop {
            // The writer wakes on its own clock and drains the queue: a push never wakes it
            // (that would cost every handshake a context switch), and every commit is an
            // fsync, so fewer, larger transactions are cheaper too. Reads see queued writes.
            let round = {
                let mut rounds = shared.rounds.lock();
                if !full && !rounds.hurry && !shared.queue.is_closed() {
                    shared.hurry.wait_for(&mut rounds, TICK);
                }
                rounds.hurry = false;
                rounds.started += 1;
                rounds.started
            };
            let closed = shared.queue.is_closed();
            let drained = shared.queue.drain(BATCH, &mut batch);
            full = drained == BATCH;
            if !batch.is_empty() {
                self.apply(&mut batch);
            }
            let (over, file_bytes) = {
                let store = shared.store.read();
                let file_bytes = store.file_bytes();
                (
                    store.data_bytes() > budget || file_bytes > self.max_bytes,
                    file_bytes,
                )
            };
            if over || last_purge.elapsed() >= self.interval {
                last_purge = Instant::now();
                self.keep_under_cap(&mut budget);
                shared.pending.lock().forget_expired(shared.now());
            }
            shared.counters.file_bytes.store(
                if over {
                    shared.store.read().file_bytes()
                } else {
                    file_bytes
                },
                core::sync::atomic::Ordering::Relaxed,
            );
            let stop = closed && !full;
            {
                let mut rounds = shared.rounds.lock();
                if !full {
                    rounds.emptied = round;
                }
                rounds.stopped = stop;
            }
            shared.round_done.notify_all();
            if stop {
                return;
            }
        }
    }

    /// Writes a batch in one transaction, then settles its in-flight records. If the batch
    /// failed, the records of its deletions stay (until the sessions expire): a session that
    /// was taken must not be read back from the file.
    fn apply(&self, batch: &mut Vec<Op>) {
        let shared = &*self.shared;
        let counters = &shared.counters;
        // A session deleted later in the same batch (a ticket used within the tick) need not
        // be written at all: its store is skipped, its deletion kept (an older copy may be in
        // the file).
        let mut deleted_later = HashSet::new();
        let mut skip = vec![false; batch.len()];
        for (i, op) in batch.iter().enumerate().rev() {
            match op {
                Op::Delete { key, .. } => {
                    deleted_later.insert(key.as_slice());
                }
                Op::Store { key, .. } => skip[i] = deleted_later.contains(key.as_slice()),
            }
        }
        let skipped = skip.iter().filter(|s| **s).count();
        add(&counters.stores_skipped, skipped as u64);
        let ops = batch
            .iter()
            .zip(&skip)
            .filter(|(_, s)| !**s)
            .map(|(op, _)| op);
        let result = shared.store.read().apply(ops);
        let ok = match result {
            Ok((stored, deleted)) => {
                add(&counters.stores_written, stored);
                add(&counters.deletes_written, deleted);
                true
            }
            Err(e) => {
                add(&counters.write_failures, 1);
                let deletes = batch
                    .iter()
                    .filter(|op| matches!(op, Op::Delete { .. }))
                    .count();
                add(&counters.deletes_lost, deletes as u64);
                warn!(error = %e, writes = batch.len(), "cannot write sessions to disk");
                false
            }
        };
        let mut pending = shared.pending.lock();
        for op in batch.drain(..) {
            if ok || matches!(op, Op::Store { .. }) {
                let (key, seq) = op.entry();
                pending.settle(key, seq);
            }
        }
    }

    /// Purges the expired and, if the data or the file is over budget, the sessions that
    /// expire soonest; compacts the file when it is over its cap (lowering the data budget if
    /// needed). Only compaction keeps readers out, and they do not wait: they miss.
    fn keep_under_cap(&self, budget: &mut u64) {
        let shared = &*self.shared;
        for _ in 0..8 {
            match shared.store.read().purge(shared.now(), *budget) {
                Ok((expired, evicted)) => {
                    add(&shared.counters.purged_expired, expired);
                    add(&shared.counters.evicted_for_size, evicted);
                }
                Err(e) => {
                    warn!(error = %e, "cannot purge the session database");
                    return;
                }
            }
            if shared.store.read().file_bytes() <= self.max_bytes {
                return;
            }
            let mut store = shared.store.write();
            if let Err(e) = store.compact() {
                warn!(error = %e, "cannot compact the session database");
                return;
            }
            if store.file_bytes() <= self.max_bytes {
                return;
            }
            *budget = *budget * 3 / 4;
        }
    }
}
