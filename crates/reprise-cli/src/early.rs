//! TLS 1.3 early data (0-RTT) in `reprise serve`: the `--early-data` settings, the early-data
//! configuration each stateful context gets, the built-in responder's rule (requests that
//! arrived in early data are answered only for safe methods, others get `425 Too Early`), and
//! the metrics.

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::bail;
use reprise_rustls::{EarlyCounters, EarlyRejection, ServerContext};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cli::TicketMode;

/// The most early data a client may send, in bytes (16 KiB: one TLS record).
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

/// The methods answered from early data by default (RFC 9110's safe methods a client may
/// send there; RFC 8470).
pub const DEFAULT_SAFE_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// The early-data settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlySettings {
    /// The most early data accepted per connection, in bytes; 0: none (the default).
    pub max: u32,
    /// With `--upstream`: forward early data at once, before the handshake completes.
    pub upstream_at_once: bool,
    /// The methods the built-in responder answers when they arrive in early data.
    pub safe_methods: Vec<String>,
}

impl Default for EarlySettings {
    fn default() -> Self {
        Self {
            max: 0,
            upstream_at_once: false,
            safe_methods: DEFAULT_SAFE_METHODS
                .iter()
                .map(|m| (*m).to_owned())
                .collect(),
        }
    }
}

/// What the settings that bear on early data say, from the flags and the settings file.
pub struct EarlyInputs {
    /// `--early-data BYTES`.
    pub bytes: Option<u32>,
    /// `--upstream-early-data`.
    pub upstream_at_once: bool,
    /// `--early-data-methods`.
    pub methods: Option<Vec<String>>,
    /// Whether there is an `--upstream`.
    pub upstream: bool,
    /// The ticket mode.
    pub tickets: TicketMode,
    /// Whether TLS 1.3 is enabled.
    pub tls13: bool,
    /// TLS 1.3 tickets per handshake.
    pub tls13_tickets: usize,
}

impl EarlySettings {
    /// Checks the settings: each problem is one line.
    pub fn resolve(i: EarlyInputs) -> anyhow::Result<Self> {
        let max = i.bytes.unwrap_or(0);
        if max > MAX_EARLY_DATA {
            bail!("early-data is {max} bytes; the limit is {MAX_EARLY_DATA}");
        }
        if max > 0 {
            match i.tickets {
                TicketMode::Auto | TicketMode::Stateful => {}
                TicketMode::Stateless => bail!(
                    "early-data needs stateful TLS 1.3 tickets (--tickets auto or stateful): stateless tickets can be replayed"
                ),
                TicketMode::Off => bail!("early-data needs TLS 1.3 tickets; --tickets is off"),
            }
            if !i.tls13 {
                bail!("early-data needs TLS 1.3 in --tls-versions");
            }
            if i.tls13_tickets == 0 {
                bail!("early-data needs TLS 1.3 tickets; --tls13-tickets is 0");
            }
        }
        if i.upstream_at_once && !i.upstream {
            bail!("--upstream-early-data needs --upstream");
        }
        if i.upstream_at_once && max == 0 {
            bail!("--upstream-early-data needs --early-data");
        }
        let safe_methods = match i.methods {
            None => Self::default().safe_methods,
            Some(methods) => {
                for m in &methods {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        bail!("early-data-methods: {m:?} is not a method (upper-case letters)");
                    }
                }
                methods
            }
        };
        Ok(Self {
            max,
            upstream_at_once: i.upstream_at_once,
            safe_methods,
        })
    }

    /// Whether early data is on.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// `context`, taking early data if the settings say so and its tickets are stateful: the
    /// same configuration with `max_early_data_size` and 0.5-RTT data, chosen by the acceptor
    /// only where the ticket's single use is confirmed.
    pub fn apply(&self, context: ServerContext) -> ServerContext {
        let config = context.config();
        if !self.enabled() || config.ticketer.enabled() || config.send_tls13_tickets == 0 {
            return context;
        }
        let mut early = (**config).clone();
        early.max_early_data_size = self.max;
        early.send_half_rtt_data = true;
        context.with_early_data(Arc::new(early))
    }
}

/// What the server counted of early data, beside what its acceptor counted
/// ([`EarlyCounters`]).
#[derive(Debug, Default)]
pub struct EarlyMetrics {
    too_early: AtomicU64,
    too_much: AtomicU64,
}

impl EarlyMetrics {
    /// Counts a `425 Too Early` answer.
    pub fn too_early(&self) {
        bump(&self.too_early);
    }

    /// Counts a connection that failed because its client sent more early data than allowed.
    pub fn too_much(&self) {
        bump(&self.too_much);
    }

    /// The metrics, with the acceptor's `counters`, in the Prometheus text format.
    pub fn render(&self, counters: &EarlyCounters, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "reprise_early_data_offered_total",
            "ClientHellos that offered TLS 1.3 early data.",
            &[(String::new(), counters.offered())],
        );
        family(
            "reprise_early_data_accepted_total",
            "Connections whose early data was accepted (its ticket's single use confirmed).",
            &[(String::new(), counters.accepted())],
        );
        let rejected: Vec<(String, u64)> = EarlyRejection::ALL
            .iter()
            .map(|r| {
                let labels = format!("{{reason=\"{}\"}}", r.as_str());
                (labels, counters.rejected(*r))
            })
            .collect();
        family(
            "reprise_early_data_rejected_total",
            "ClientHellos whose early data was refused (the handshake goes on), by reason.",
            &rejected,
        );
        family(
            "reprise_early_data_too_early_total",
            "Requests that arrived in early data with a method that is not safe, answered 425 Too Early.",
            &[(String::new(), get(&self.too_early))],
        );
        family(
            "reprise_early_data_too_much_total",
            "Connections that failed because the client sent more early data than allowed (fatal in rustls).",
            &[(String::new(), get(&self.too_much))],
        );
    }
}

/// Whether a handshake failed because the client sent more early data than allowed.
pub fn is_too_much(e: &reprise_rustls::AcceptError) -> bool {
    matches!(
        e,
        reprise_rustls::AcceptError::Tls(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::TooMuchEarlyDataReceived
        ))
    )
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the built-in responder needs to know of a connection's early data.
pub struct Rule<'a> {
    /// How many bytes of early data the application read so far: the stream's first bytes.
    pub read: Arc<AtomicU64>,
    /// The methods answered from early data.
    pub safe_methods: &'a [String],
    /// Where 425 answers are counted.
    pub metrics: &'a EarlyMetrics,
}

impl Rule<'_> {
    /// Whether a request that starts at byte `start` of the stream arrived (at least in part)
    /// in early data.
    pub fn arrived_early(&self, start: u64) -> bool {
        start < self.read.load(Ordering::Relaxed)
    }

    /// Whether `method` may be answered from early data.
    pub fn is_safe(&self, method: &str) -> bool {
        self.safe_methods.iter().any(|m| m == method)
    }
}

/// A stream that counts the bytes read through it.
pub struct Tally<'a, S> {
    inner: &'a mut S,
    /// Bytes read so far.
    pub read: u64,
}

impl<'a, S> Tally<'a, S> {
    /// Counts what is read from `inner`.
    pub fn new(inner: &'a mut S) -> Self {
        Self { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tally<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tally<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(bytes: Option<u32>) -> EarlyInputs {
        EarlyInputs {
            bytes,
            upstream_at_once: false,
            methods: None,
            upstream: false,
            tickets: TicketMode::Auto,
            tls13: true,
            tls13_tickets: 2,
        }
    }

    #[test]
    fn off_by_default_and_bounded() -> anyhow::Result<()> {
        assert!(!EarlySettings::resolve(inputs(None))?.enabled());
        assert_eq!(EarlySettings::resolve(inputs(Some(16384)))?.max, 16384);
        let too_much = EarlySettings::resolve(inputs(Some(16385)));
        assert!(too_much.is_err());
        Ok(())
    }

    #[test]
    fn needs_stateful_tls13_tickets() {
        for (tickets, tls13, n) in [
            (TicketMode::Stateless, true, 2),
            (TicketMode::Off, true, 2),
            (TicketMode::Auto, false, 2),
            (TicketMode::Stateful, true, 0),
        ] {
            let mut i = inputs(Some(1024));
            i.tickets = tickets;
            i.tls13 = tls13;
            i.tls13_tickets = n;
            assert!(
                EarlySettings::resolve(i).is_err(),
                "{tickets:?} {tls13} {n}"
            );
        }
    }

    #[test]
    fn upstream_early_data_needs_an_upstream_and_early_data() {
        let mut i = inputs(Some(1024));
        i.upstream_at_once = true;
        assert!(EarlySettings::resolve(i).is_err());
        let mut i = inputs(None);
        i.upstream_at_once = true;
        i.upstream = true;
        assert!(EarlySettings::resolve(i).is_err());
        let mut i = inputs(Some(1024));
        i.upstream_at_once = true;
        i.upstream = true;
        assert!(EarlySettings::resolve(i).is_ok_and(|s| s.upstream_at_once));
    }

    #[test]
    fn methods_are_checked() {
        let mut i = inputs(Some(1024));
        i.methods = Some(vec!["get".into()]);
        assert!(EarlySettings::resolve(i).is_err());
    }

    #[test]
    fn a_request_is_early_if_it_starts_in_early_data() {
        let metrics = EarlyMetrics::default();
        let methods = vec!["GET".to_owned()];
        let rule = Rule {
            read: Arc::new(AtomicU64::new(10)),
            safe_methods: &methods,
            metrics: &metrics,
        };
        assert!(rule.arrived_early(0) && rule.arrived_early(9));
        assert!(!rule.arrived_early(10));
        assert!(rule.is_safe("GET") && !rule.is_safe("POST"));
    }
}
