//! What `reprise bench` reports: the figures of a run, as a table or as JSON, and the progress
//! bar shown while it runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustls::pki_types::ServerName;
use serde::Serialize;

use super::plan::{Plan, Stop};
use super::run::{Outcome, Shared};
use crate::cli::{BenchMode, TlsVersion};

/// How often the progress bar is updated.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Shows a progress bar on stderr until aborted; it is cleared when the task is dropped.
pub(super) fn show_progress(
    shared: Arc<Shared>,
    start: tokio::time::Instant,
) -> impl Future<Output = ()> {
    let (len, by_time) = match shared.stop {
        Stop::Connections(n) => (n, false),
        Stop::After(d) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), true),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if by_time {
        "{spinner} [{elapsed_precise}] {wide_bar} {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let guard = ClearOnDrop(bar);
    async move {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            tick.tick().await;
            let handshakes = shared.handshakes.load(Ordering::Relaxed);
            let failures = shared.failures.load(Ordering::Relaxed);
            let resumed = shared.resumed.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            let rate = if secs > 0.0 {
                handshakes as f64 / secs
            } else {
                0.0
            };
            let position = if by_time {
                u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
            } else {
                handshakes + failures
            };
            guard.0.set_position(position.min(len));
            guard.0.set_message(format!(
                "{handshakes} handshakes, {rate:.0}/s, {:.1} % resumed, {failures} failed",
                share(resumed, handshakes) * 100.0
            ));
        }
    }
}

/// Clears a progress bar when dropped.
struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The figures `reprise bench` reports; with `--json`, printed as they are.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `--connect`, as given (comma-separated when repeated).
    pub connect: String,
    /// The addresses connected to (comma-separated, in rotation order).
    pub address: String,
    /// The server name sent and verified.
    pub server_name: String,
    /// `"1.2"` or `"1.3"`.
    pub tls: &'static str,
    /// `"full"` or `"resume"`.
    pub mode: &'static str,
    /// Worker tasks, each with one connection at a time.
    pub concurrency: usize,
    /// Connections whose handshake completed.
    pub handshakes: u64,
    /// Of those, the resumed ones.
    pub resumed: u64,
    /// `resumed / handshakes`, from 0 to 1 (0 when there were no handshakes).
    pub resumed_share: f64,
    /// Attempts that failed (connect or handshake).
    pub failures: u64,
    /// The failures by reason.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Completed handshakes after which close_notify alerts were not exchanged cleanly.
    pub unclean_closes: u64,
    /// Completed handshakes closed on purpose without close_notify (`--abrupt`).
    pub abrupt_closes: u64,
    /// The length of the run in seconds.
    pub elapsed_secs: f64,
    /// Completed handshakes per second of the run.
    pub handshakes_per_sec: f64,
    /// Handshake latency from the start of the TCP connect, in milliseconds; null without
    /// handshakes.
    pub latency_ms: Option<Latency>,
    /// With `--early-data N`: N (the request's size); null without.
    pub early_data: Option<usize>,
    /// With `--early-data`: connections that sent their request as early data.
    pub early_data_sent: u64,
    /// Of those, the ones whose early data the server accepted.
    pub early_data_accepted: u64,
    /// With `--early-data`: time from the start of the TCP connect to the response's first
    /// byte, in milliseconds; null otherwise.
    pub ttfb_ms: Option<Latency>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Report {
    pub(super) fn new(plan: &Plan, outcome: &Outcome) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let percentiles = |h: &hdrhistogram::Histogram<u64>| {
            (!h.is_empty()).then(|| Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
            })
        };
        let latency = percentiles(&outcome.latency);
        let ttfb = outcome.ttfb.as_ref().and_then(percentiles);
        let secs = outcome.elapsed.as_secs_f64();
        Report {
            connect: plan.targets.join(","),
            address: plan
                .addrs
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
            server_name: server_name_text(&plan.server_name),
            tls: match plan.tls {
                TlsVersion::Tls12 => "1.2",
                TlsVersion::Tls13 => "1.3",
            },
            mode: match plan.mode {
                BenchMode::Full => "full",
                BenchMode::Resume => "resume",
            },
            concurrency: plan.concurrency,
            handshakes: outcome.handshakes,
            resumed: outcome.resumed,
            resumed_share: share(outcome.resumed, outcome.handshakes),
            failures: outcome.failures,
            failure_reasons: outcome.reasons.clone(),
            unclean_closes: outcome.unclean_closes,
            abrupt_closes: outcome.abrupt_closes,
            elapsed_secs: secs,
            handshakes_per_sec: if secs > 0.0 {
                outcome.handshakes as f64 / secs
            } else {
                0.0
            },
            latency_ms: latency,
            early_data: plan.request.as_ref().map(|r| match r.early {
                true => r.bytes.len(),
                false => 0,
            }),
            early_data_sent: outcome.early_sent,
            early_data_accepted: outcome.early_accepted,
            ttfb_ms: ttfb,
        }
    }

    /// The report as a small table.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}, {}): TLS {}, {} handshakes, concurrency {}",
            self.connect, self.address, self.server_name, self.tls, self.mode, self.concurrency
        );
        let _ = writeln!(out, "  connections    {:>12}", self.handshakes);
        let _ = writeln!(out, "  failures       {:>12}", self.failures);
        let _ = writeln!(out, "  elapsed        {:>12.3} s", self.elapsed_secs);
        let _ = writeln!(out, "  handshakes/s   {:>12.1}", self.handshakes_per_sec);
        let _ = writeln!(
            out,
            "  resumed        {:>12.1} % ({})",
            self.resumed_share * 100.0,
            self.resumed
        );
        match &self.latency_ms {
            Some(l) => {
                for (name, value) in [
                    ("p50", l.p50),
                    ("p90", l.p90),
                    ("p99", l.p99),
                    ("max", l.max),
                ] {
                    let _ = writeln!(out, "  latency {name}    {value:>12.3} ms");
                }
            }
            None => {
                let _ = writeln!(out, "  latency        {:>12}", "-");
            }
        }
        if let Some(n) = self.early_data {
            let _ = writeln!(
                out,
                "  early data     {:>12} sent, {} accepted ({n} bytes)",
                self.early_data_sent, self.early_data_accepted
            );
            match &self.ttfb_ms {
                Some(l) => {
                    for (name, value) in [("p50", l.p50), ("p90", l.p90), ("p99", l.p99)] {
                        let _ = writeln!(out, "  ttfb {name}       {value:>12.3} ms");
                    }
                }
                None => {
                    let _ = writeln!(out, "  ttfb           {:>12}", "-");
                }
            }
        }
        if self.unclean_closes > 0 {
            let _ = writeln!(out, "  unclean closes {:>12}", self.unclean_closes);
        }
        if self.abrupt_closes > 0 {
            let _ = writeln!(out, "  abrupt closes  {:>12}", self.abrupt_closes);
        }
        if !self.failure_reasons.is_empty() {
            let _ = writeln!(out, "  failure reasons:");
            for (reason, count) in &self.failure_reasons {
                let _ = writeln!(out, "    {count:>8}  {reason}");
            }
        }
        out
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The failure reasons on one line, most frequent first.
pub(super) fn reasons_line(reasons: &BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<_> = reasons.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    sorted
        .iter()
        .map(|(reason, count)| format!("{reason} ({count})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_line_puts_the_most_frequent_first() {
        let reasons = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)]);
        assert_eq!(reasons_line(&reasons), "b (3), a (1)");
    }
}
