//! Metrics of `reprise serve`: handshakes by kind and version, failures by reason, connections,
//! and the cache's statistics, in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use reprise::{Metric, MetricKind, Stats};
use rustls::{HandshakeKind, ProtocolVersion};

/// Why a handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The client did not finish within the handshake timeout.
    Timeout,
    /// The client closed the connection mid-handshake.
    Eof,
    /// A socket error.
    Io,
    /// The client sent something that is not TLS, or malformed TLS.
    InvalidMessage,
    /// The client and the server have nothing in common (versions, suites, groups, ALPN).
    PeerIncompatible,
    /// The client broke the protocol.
    PeerMisbehaved,
    /// The client sent an alert.
    AlertReceived,
    /// The client's certificate did not verify, or none was sent when one is required.
    ClientCertificate,
    /// Anything else rustls reports.
    Other,
}

impl Failure {
    const ALL: [Failure; 9] = [
        Failure::Timeout,
        Failure::Eof,
        Failure::Io,
        Failure::InvalidMessage,
        Failure::PeerIncompatible,
        Failure::PeerMisbehaved,
        Failure::AlertReceived,
        Failure::ClientCertificate,
        Failure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Eof => "eof",
            Failure::Io => "io",
            Failure::InvalidMessage => "invalid_message",
            Failure::PeerIncompatible => "peer_incompatible",
            Failure::PeerMisbehaved => "peer_misbehaved",
            Failure::AlertReceived => "alert_received",
            Failure::ClientCertificate => "client_certificate",
            Failure::Other => "other",
        }
    }

    /// Classifies why the acceptor did not accept a connection.
    pub fn of_accept(e: &reprise_rustls::AcceptError) -> Failure {
        use reprise_rustls::AcceptError;
        match e {
            AcceptError::HelloTimeout | AcceptError::HandshakeTimeout => Failure::Timeout,
            AcceptError::Closed(_) => Failure::Eof,
            AcceptError::Tls(tls) => Failure::of_tls(tls),
            AcceptError::Io(io) => Failure::of(io),
            _ => Failure::Other,
        }
    }

    /// Classifies a rustls error.
    fn of_tls(tls: &rustls::Error) -> Failure {
        match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => Failure::InvalidMessage,
            rustls::Error::PeerIncompatible(_) => Failure::PeerIncompatible,
            rustls::Error::PeerMisbehaved(_) => Failure::PeerMisbehaved,
            rustls::Error::AlertReceived(_) => Failure::AlertReceived,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                Failure::ClientCertificate
            }
            _ => Failure::Other,
        }
    }

    /// Classifies the error a tokio-rustls handshake returned.
    pub fn of(e: &std::io::Error) -> Failure {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Failure::of_tls(tls);
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => Failure::Eof,
            std::io::ErrorKind::InvalidData => Failure::InvalidMessage,
            _ => Failure::Io,
        }
    }

    fn index(self) -> usize {
        Failure::ALL
            .iter()
            .position(|f| *f == self)
            .unwrap_or(Failure::ALL.len() - 1)
    }
}

/// What `/metrics` shows of the tickets: the mode, the key source, the ticketer's counters and
/// the source's own metrics.
#[derive(Debug, Clone, Default)]
pub struct TicketMetrics {
    /// The ticket mode (`auto`, `stateful`, `stateless`, `off`).
    pub mode: &'static str,
    /// The key source's name (`local`, `file`, `redis`); None when the mode uses no keys.
    pub source: Option<String>,
    /// The ticketer's counters (`issued_total`, `rejected_<reason>_total`, ...).
    pub counters: Vec<Metric>,
    /// The key source's metrics (rotations, the current key's version and age, ...).
    pub keys: Vec<Metric>,
}

/// The server's counters; the cache keeps its own.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `[kind][version]`: kind 0 full, 1 resumed; version 0 TLS 1.2, 1 TLS 1.3.
    handshakes: [[AtomicU64; 2]; 2],
    failures: [AtomicU64; Failure::ALL.len()],
    connections_total: AtomicU64,
    connections_rejected: AtomicU64,
    connections_rejected_per_address: AtomicU64,
    connections_open: AtomicI64,
    sessions_removed_unclean: AtomicU64,
    closes_without_close_notify: AtomicU64,
    /// `[failed, succeeded]` reloads (SIGHUP).
    reloads: [AtomicU64; 2],
}

impl Metrics {
    /// Counts a completed handshake.
    pub fn handshake(&self, kind: Option<HandshakeKind>, version: Option<ProtocolVersion>) {
        let k = usize::from(kind == Some(HandshakeKind::Resumed));
        let v = usize::from(version == Some(ProtocolVersion::TLSv1_3));
        self.handshakes[k][v].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed handshake.
    pub fn failure(&self, reason: Failure) {
        self.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted connection, now open.
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection closed at accept because the server was at its limit.
    pub fn connection_rejected(&self) {
        self.connections_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed at accept because its client address held
    /// max-connections-per-address.
    pub fn connection_rejected_per_address(&self) {
        self.connections_rejected_per_address
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that failed after its handshake (a fatal alert, a TLS error): its
    /// sessions were removed.
    pub fn unclean_shutdown(&self) {
        self.sessions_removed_unclean
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that ended after its handshake without close_notify on either side
    /// (a FIN or a reset from the client): its sessions are kept.
    pub fn close_without_close_notify(&self) {
        self.closes_without_close_notify
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reload (SIGHUP, `reprise reload`) that took effect, or one that failed and
    /// changed nothing.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these metrics, the cache's statistics, and the
    /// metrics of each tier (its name, and what its `Tier::metrics` declares).
    pub fn render(
        &self,
        cache: &Stats,
        tiers: &[(String, Vec<Metric>)],
        tickets: &TicketMetrics,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        family(
            "reprise_cache_sessions",
            "gauge",
            "Sessions in the cache (number).",
            &plain(cache.number),
        );
        let cache_counters = [
            ("accept", cache.accept, "Handshakes started (accept)."),
            (
                "accept_good",
                cache.accept_good,
                "Handshakes completed (accept_good).",
            ),
            ("hits", cache.hits, "Sessions found and resumed (hits)."),
            (
                "misses",
                cache.misses,
                "Internal lookups that found nothing (misses).",
            ),
            (
                "cb_hits",
                cache.cb_hits,
                "Sessions the external cache supplied (cb_hits).",
            ),
            (
                "timeouts",
                cache.timeouts,
                "Sessions found expired (timeouts).",
            ),
            (
                "cache_full",
                cache.cache_full,
                "Sessions evicted because the cache was full (cache_full).",
            ),
            (
                "rejected_keys",
                cache.rejected_keys,
                "Lookups with malformed session ids.",
            ),
        ];
        for (name, value, help) in cache_counters {
            family(
                &format!("reprise_cache_{name}_total"),
                "counter",
                help,
                &plain(value),
            );
        }
        let mut handshakes = Vec::new();
        for (k, kind) in ["full", "resumed"].iter().enumerate() {
            for (v, version) in ["TLSv1.2", "TLSv1.3"].iter().enumerate() {
                let value = self.handshakes[k][v].load(Ordering::Relaxed);
                handshakes.push((format!("{{kind=\"{kind}\",version=\"{version}\"}}"), value));
            }
        }
        family(
            "reprise_handshakes_total",
            "counter",
            "Completed handshakes, by kind and version.",
            &handshakes,
        );
        let failures: Vec<(String, u64)> = Failure::ALL
            .iter()
            .map(|f| {
                (
                    format!("{{reason=\"{}\"}}", f.as_str()),
                    self.failures[f.index()].load(Ordering::Relaxed),
                )
            })
            .collect();
        family(
            "reprise_handshake_failures_total",
            "counter",
            "Failed handshakes, by reason.",
            &failures,
        );
        family(
            "reprise_connections_total",
            "counter",
            "Connections accepted.",
            &plain(self.connections_total.load(Ordering::Relaxed)),
        );
        family(
            "reprise_connections_rejected_total",
            "counter",
            "Connections closed at accept because max-connections were open.",
            &plain(self.connections_rejected.load(Ordering::Relaxed)),
        );
        family(
            "reprise_connections_rejected_per_address_total",
            "counter",
            "Connections closed at accept because their client address (an IPv6 /64) had max-connections-per-address open.",
            &plain(
                self.connections_rejected_per_address
                    .load(Ordering::Relaxed),
            ),
        );
        family(
            "reprise_connections_open",
            "gauge",
            "Connections open now.",
            &plain(self.connections_open.load(Ordering::Relaxed).max(0) as u64),
        );
        family(
            "reprise_unclean_shutdowns_total",
            "counter",
            "Connections that failed after their handshake (a fatal alert, a TLS error); their sessions were removed.",
            &plain(self.sessions_removed_unclean.load(Ordering::Relaxed)),
        );
        family(
            "reprise_closes_without_close_notify_total",
            "counter",
            "Connections that ended after their handshake without close_notify on either side (a FIN or a reset); their sessions were kept.",
            &plain(self.closes_without_close_notify.load(Ordering::Relaxed)),
        );
        family(
            "reprise_reloads_total",
            "counter",
            "Reloads (SIGHUP, reprise reload): ok took effect; error changed nothing.",
            &[
                (
                    "{result=\"ok\"}".to_owned(),
                    self.reloads[1].load(Ordering::Relaxed),
                ),
                (
                    "{result=\"error\"}".to_owned(),
                    self.reloads[0].load(Ordering::Relaxed),
                ),
            ],
        );
        family(
            "reprise_tickets_mode",
            "gauge",
            "The ticket mode (--tickets): 1 for the mode in use.",
            &[(format!("{{mode=\"{}\"}}", tickets.mode), 1)],
        );
        if let Some(source) = &tickets.source {
            family(
                "reprise_ticket_keys_source",
                "gauge",
                "Where the ticket keys come from: 1 for the source in use (local, file, redis).",
                &[(format!("{{source=\"{}\"}}", metric_name(source)), 1)],
            );
        }
        // The ticketer's counters, `reprise_tickets_<name>`; its rejections by reason
        // (`rejected_<reason>_total`) as one family with a `reason` label.
        let mut rejected = Vec::new();
        for m in &tickets.counters {
            match m
                .name
                .strip_prefix("rejected_")
                .and_then(|r| r.strip_suffix("_total"))
            {
                Some(reason) => rejected.push((format!("{{reason=\"{reason}\"}}"), m.value)),
                None => family(
                    &format!("reprise_tickets_{}", m.name),
                    kind_name(m.kind),
                    m.help,
                    &plain(m.value),
                ),
            }
        }
        if !rejected.is_empty() {
            family(
                "reprise_tickets_rejected_total",
                "counter",
                "Tickets that did not decrypt, by reason (unknown_key, wrong_context, expired, malformed).",
                &rejected,
            );
        }
        for m in &tickets.keys {
            family(
                &format!("reprise_ticket_keys_{}", m.name),
                kind_name(m.kind),
                m.help,
                &plain(m.value),
            );
        }
        // Each tier's counters and gauges, as it declares them: `reprise_<tier>_<name>`.
        for (tier, metrics) in tiers {
            // A tier names itself: only what a metric name may hold goes into one.
            let tier = metric_name(tier);
            for m in metrics {
                family(
                    &format!("reprise_{tier}_{}", m.name),
                    kind_name(m.kind),
                    m.help,
                    &plain(m.value),
                );
            }
        }
        out
    }
}

/// A name as a metric name (or label value) may hold it: lower-case ASCII letters, digits and
/// underscores.
fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The Prometheus type of a metric.
fn kind_name(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_disk::DiskStats;

    #[test]
    fn renders_every_family_once() {
        let m = Metrics::default();
        m.handshake(Some(HandshakeKind::Resumed), Some(ProtocolVersion::TLSv1_3));
        m.handshake(Some(HandshakeKind::Full), Some(ProtocolVersion::TLSv1_2));
        m.failure(Failure::Timeout);
        let text = m.render(&Stats::default(), &[], &TicketMetrics::default());
        assert!(text.contains("reprise_handshakes_total{kind=\"resumed\",version=\"TLSv1.3\"} 1"));
        assert!(text.contains("reprise_handshakes_total{kind=\"full\",version=\"TLSv1.2\"} 1"));
        assert!(text.contains("reprise_handshakes_total{kind=\"full\",version=\"TLSv1.3\"} 0"));
        assert!(text.contains("reprise_handshake_failures_total{reason=\"timeout\"} 1"));
        assert!(text.contains("reprise_cache_hits_total 0"));
        assert_eq!(
            text.matches("# TYPE reprise_handshakes_total counter")
                .count(),
            1
        );
    }

    /// A tier's families (here the disk's) keep their names, kinds and help texts, from the
    /// tier's own declaration.
    #[test]
    fn renders_the_disk_tier_from_its_declaration() {
        let disk = DiskStats {
            warmed: 3,
            file_bytes: 4096,
            ..DiskStats::default()
        };
        let tiers = [("disk".to_owned(), disk.metrics())];
        let text = Metrics::default().render(&Stats::default(), &tiers, &TicketMetrics::default());
        for line in [
            "# TYPE reprise_disk_file_bytes gauge",
            "reprise_disk_file_bytes 4096",
            "# TYPE reprise_disk_in_flight gauge",
            "# HELP reprise_disk_warmed_total Sessions loaded from disk at start.",
            "# TYPE reprise_disk_warmed_total counter",
            "reprise_disk_warmed_total 3",
            "reprise_disk_stores_written_total 0",
            "reprise_disk_writes_dropped_full_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }

    /// The ticketer's rejections become one family with a reason label; the key source's
    /// metrics are `reprise_ticket_keys_<name>`.
    #[test]
    fn renders_tickets_by_reason_and_the_key_source() {
        let metric = |name, kind, value| Metric {
            name,
            help: "h",
            kind,
            value,
        };
        let tickets = TicketMetrics {
            mode: "auto",
            source: Some("redis".to_owned()),
            counters: vec![
                metric("issued_total", MetricKind::Counter, 4),
                metric("rejected_unknown_key_total", MetricKind::Counter, 2),
                metric("rejected_expired_total", MetricKind::Counter, 1),
            ],
            keys: vec![metric("current_version", MetricKind::Gauge, 7)],
        };
        let text = Metrics::default().render(&Stats::default(), &[], &tickets);
        for line in [
            "reprise_tickets_mode{mode=\"auto\"} 1",
            "reprise_ticket_keys_source{source=\"redis\"} 1",
            "reprise_tickets_issued_total 4",
            "# TYPE reprise_tickets_rejected_total counter",
            "reprise_tickets_rejected_total{reason=\"unknown_key\"} 2",
            "reprise_tickets_rejected_total{reason=\"expired\"} 1",
            "# TYPE reprise_ticket_keys_current_version gauge",
            "reprise_ticket_keys_current_version 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
        assert_eq!(
            text.matches("# TYPE reprise_tickets_rejected_total")
                .count(),
            1
        );
    }

    #[test]
    fn classifies_io_errors() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(Failure::of(&eof), Failure::Eof);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(Failure::of(&tls), Failure::ClientCertificate);
    }
}
