//! The disk tier's counters and gauges, declared once: the atomics the tier and its writer
//! bump, the snapshot [`DiskStats`], and the metric names and help texts a metrics endpoint
//! renders (as `reprise_disk_<name>`).

reprise::tier_counters! {
    /// The disk tier's counters, shared by the tier and its writer thread.
    pub struct Counters => DiskStats {
        /// Size of the session database file, in bytes.
        file_bytes: Gauge = "file_bytes",
        /// Writes not yet in the file that reads take into account.
        in_flight: Gauge = "in_flight",
        /// Sessions queued for writing to disk.
        stores_queued: Counter = "stores_queued_total",
        /// Sessions written to disk.
        stores_written: Counter = "stores_written_total",
        /// Deletions written to disk.
        deletes_written: Counter = "deletes_written_total",
        /// Sessions taken or removed before they were written: never written.
        stores_skipped: Counter = "stores_skipped_total",
        /// Writes dropped because the queue was full.
        writes_dropped_full: Counter = "writes_dropped_full_total",
        /// Batches of writes that failed.
        write_failures: Counter = "write_failures_total",
        /// Deletions that never reached the file: the shutdown is then not marked clean.
        deletes_lost: Counter = "deletes_lost_total",
        /// Expired sessions purged from disk.
        purged_expired: Counter = "purged_expired_total",
        /// Sessions evicted to keep the file under its cap.
        evicted_for_size: Counter = "evicted_for_size_total",
        /// Stored values that did not open (forged, corrupt, sealed for another tier): deleted.
        rejected_values: Counter = "rejected_values_total",
        /// Stored values sealed with a key not in the ring, or in an unknown format: misses, kept.
        unknown_key_values: Counter = "unknown_key_values_total",
        /// Sessions loaded from disk at start.
        warmed: Counter = "warmed_total",
        /// Reads that the disk served (lookups memory missed, and ticket takes).
        read_hits: Counter = "read_hits_total",
        /// Reads that the disk did not serve.
        read_misses: Counter = "read_misses_total",
        /// Reads not made while the file was compacted (misses).
        reads_skipped: Counter = "reads_skipped_total",
        /// Reads that failed.
        read_errors: Counter = "read_errors_total",
        /// Ticket lookups that named a TLS 1.2 session: misses.
        refused_takes: Counter = "refused_takes_total",
        /// Sessions deleted because a tier below learned they were removed elsewhere.
        forgotten: Counter = "forgotten_total",
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &core::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise::MetricKind;

    #[test]
    fn every_metric_has_a_distinct_name_and_a_one_line_help() {
        let metrics = DiskStats::default().metrics();
        let mut names: Vec<_> = metrics.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), metrics.len());
        for m in &metrics {
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{m:?}");
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == MetricKind::Counter,
                "{m:?}"
            );
        }
    }
}
