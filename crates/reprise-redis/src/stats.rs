//! The Redis tier's counters and gauges, declared once: each field's name, metric name and help
//! text (its doc line) come from the one declaration below, through [`reprise::tier_counters!`].

use std::sync::atomic::{AtomicU64, Ordering};

reprise::tier_counters! {
    /// The Redis tier's counters. The gauges (`connected`, `breaker_open`,
    /// `misses_remembered`, `write_queue`) and `writes_dropped_full` are read from their source
    /// when a snapshot is taken ([`RedisTier::stats`](crate::RedisTier::stats)).
    pub struct RedisCounters => TierStats {
        /// Whether a connection to Redis is established.
        connected: Gauge = "connected",
        /// Whether the circuit breaker is open (or probing).
        breaker_open: Gauge = "breaker_open",
        /// Recent misses remembered, so that the same ids cost no Redis read.
        misses_remembered: Gauge = "misses_remembered",
        /// Writes waiting in the queue to Redis.
        write_queue: Gauge = "write_queue",
        /// Times the circuit breaker opened.
        breaker_opens: Counter = "breaker_opens_total",
        /// Sessions queued for writing to Redis.
        stores_queued: Counter = "stores_queued_total",
        /// Sessions written to Redis.
        stores_written: Counter = "stores_written_total",
        /// Deletions queued.
        deletes_queued: Counter = "deletes_queued_total",
        /// Deletions written.
        deletes_written: Counter = "deletes_written_total",
        /// Writes that failed or timed out.
        write_failures: Counter = "write_failures_total",
        /// Writes dropped because the queue was full.
        writes_dropped_full: Counter = "writes_dropped_full_total",
        /// Writes dropped because Redis was unavailable.
        writes_dropped_unavailable: Counter = "writes_dropped_unavailable_total",
        /// Reads that found a session.
        read_hits: Counter = "read_hits_total",
        /// Reads that found nothing.
        read_misses: Counter = "read_misses_total",
        /// Reads that ran out of time (counted against Redis by the circuit breaker).
        read_timeouts: Counter = "read_timeouts_total",
        /// Read deadlines missed because this machine was busy (not counted against Redis).
        read_timeouts_local: Counter = "read_timeouts_local_total",
        /// Reads that failed.
        read_errors: Counter = "read_errors_total",
        /// Reads not sent because Redis was unavailable.
        reads_skipped: Counter = "reads_skipped_total",
        /// Values that did not open (forged, corrupt, wrong kind): deleted.
        rejected_values: Counter = "rejected_values_total",
        /// Values sealed under a key or in a format this instance lacks: misses, kept.
        unknown_key_values: Counter = "unknown_key_values_total",
        /// Reads not sent because the id missed recently (or a take already went after it).
        negative_hits: Counter = "negative_hits_total",
        /// Reads not sent because the client address spent its read budget.
        reads_limited: Counter = "reads_limited_total",
        /// Sessions a prefetch found before a handshake (TLS 1.2 sessions and taken tickets).
        prefetched: Counter = "prefetched_total",
        /// Local ticket copies dropped because Redis could not confirm the take.
        unconfirmed_takes: Counter = "unconfirmed_takes_total",
        /// Removals published to the fleet.
        invalidations_sent: Counter = "invalidations_sent_total",
        /// Removals received from the fleet.
        invalidations_received: Counter = "invalidations_received_total",
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    RedisCounters::bump(c);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}
