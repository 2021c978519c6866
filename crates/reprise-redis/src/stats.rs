//! Counters for every outcome of the Redis tier, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::BreakerState;

/// A snapshot of the Redis tier's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TierStats {
    /// Whether a connection to Redis is established.
    pub connected: bool,
    /// The circuit breaker is open (or half open, probing).
    pub breaker_open: bool,
    /// Times the breaker opened.
    pub breaker_opens: u64,
    /// Sessions queued for writing.
    pub stores_queued: u64,
    /// Sessions written.
    pub stores_written: u64,
    /// Deletions queued.
    pub deletes_queued: u64,
    /// Deletions written.
    pub deletes_written: u64,
    /// Writes (stores and deletions) that failed or timed out.
    pub write_failures: u64,
    /// Writes dropped because the queue was full.
    pub writes_dropped_full: u64,
    /// Writes dropped because Redis was unavailable (not connected, or the breaker open).
    pub writes_dropped_unavailable: u64,
    /// Reads (get or take) that found a session that opened.
    pub read_hits: u64,
    /// Reads that found nothing.
    pub read_misses: u64,
    /// Reads that ran out of time (failures of Redis, for the circuit breaker).
    pub read_timeouts: u64,
    /// Read deadlines missed because this machine was busy (the timer fired late): given a
    /// second budget, and never counted against Redis.
    pub read_timeouts_local: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Reads not sent because Redis was unavailable.
    pub reads_skipped: u64,
    /// Values that did not open (forged, corrupt, bad layout, or of the wrong kind): misses,
    /// deleted.
    pub rejected_values: u64,
    /// Values sealed under a key this instance's ring lacks, or in a format it does not know:
    /// misses, left in Redis for the instances that can open them.
    pub unknown_key_values: u64,
    /// Reads not sent because the same id missed recently (or, for a ticket, a take already
    /// went after it).
    pub negative_hits: u64,
    /// Reads not sent because the client's address had spent its read budget.
    pub reads_limited: u64,
    /// Recent misses remembered now (the negative cache's size).
    pub misses_remembered: u64,
    /// Sessions a prefetch fetched: TLS 1.2 sessions put into the local tier, and TLS 1.3
    /// tickets taken for their connection.
    pub prefetched: u64,
    /// Local copies of single-use sessions dropped because Redis could not confirm the take.
    pub unconfirmed_takes: u64,
    /// Invalidations published to the fleet.
    pub invalidations_sent: u64,
    /// Invalidations received from the fleet and applied.
    pub invalidations_received: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) breaker_opens: AtomicU64,
    pub(crate) stores_queued: AtomicU64,
    pub(crate) stores_written: AtomicU64,
    pub(crate) deletes_queued: AtomicU64,
    pub(crate) deletes_written: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) writes_dropped_full: AtomicU64,
    pub(crate) writes_dropped_unavailable: AtomicU64,
    pub(crate) read_hits: AtomicU64,
    pub(crate) read_misses: AtomicU64,
    pub(crate) read_timeouts: AtomicU64,
    pub(crate) read_timeouts_local: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) reads_skipped: AtomicU64,
    pub(crate) rejected_values: AtomicU64,
    pub(crate) unknown_key_values: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) reads_limited: AtomicU64,
    pub(crate) prefetched: AtomicU64,
    pub(crate) unconfirmed_takes: AtomicU64,
    pub(crate) invalidations_sent: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, connected: bool, breaker: BreakerState) -> TierStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierStats {
            connected,
            breaker_open: breaker != BreakerState::Closed,
            breaker_opens: r(&self.breaker_opens),
            stores_queued: r(&self.stores_queued),
            stores_written: r(&self.stores_written),
            deletes_queued: r(&self.deletes_queued),
            deletes_written: r(&self.deletes_written),
            write_failures: r(&self.write_failures),
            writes_dropped_full: r(&self.writes_dropped_full),
            writes_dropped_unavailable: r(&self.writes_dropped_unavailable),
            read_hits: r(&self.read_hits),
            read_misses: r(&self.read_misses),
            read_timeouts: r(&self.read_timeouts),
            read_timeouts_local: r(&self.read_timeouts_local),
            read_errors: r(&self.read_errors),
            reads_skipped: r(&self.reads_skipped),
            rejected_values: r(&self.rejected_values),
            unknown_key_values: r(&self.unknown_key_values),
            negative_hits: r(&self.negative_hits),
            reads_limited: r(&self.reads_limited),
            misses_remembered: 0,
            prefetched: r(&self.prefetched),
            unconfirmed_takes: r(&self.unconfirmed_takes),
            invalidations_sent: r(&self.invalidations_sent),
            invalidations_received: r(&self.invalidations_received),
        }
    }
}
