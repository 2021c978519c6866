//! The tier's counters, declared once: the atomics stay private to the crate, the snapshot
//! ([`MemcachedStats`]) and its metrics are public.

reprise::tier_counters! {
    /// The memcached tier's counters.
    pub struct Counters => MemcachedStats {
        /// Writes (set or delete) memcached acknowledged.
        writes: Counter = "writes_total",
        /// Writes that failed: memcached down, too slow, or refusing.
        write_failures: Counter = "write_failures_total",
        /// Writes dropped because the queue was full.
        writes_dropped: Counter = "writes_dropped_total",
        /// Writes queued now.
        write_queue: Gauge = "write_queue",
        /// Reads that found a session or won a ticket.
        read_hits: Counter = "read_hits_total",
        /// Reads that found nothing.
        read_misses: Counter = "read_misses_total",
        /// Reads that could not be answered in time (memcached down or slow).
        reads_unavailable: Counter = "reads_unavailable_total",
        /// Takes that read a ticket but lost the delete to another take.
        takes_lost: Counter = "takes_lost_total",
        /// Values that did not open (forged, corrupt, moved) or were of the wrong kind.
        rejected_values: Counter = "rejected_values_total",
        /// Values sealed with a key this ring does not have, left in place.
        unknown_key_values: Counter = "unknown_key_values_total",
    }
}
