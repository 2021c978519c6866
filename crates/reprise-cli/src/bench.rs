//! `reprise bench`: a handshake load generator on a rustls client.
//!
//! `--concurrency` worker tasks each loop over one connection at a time: TCP connect, TLS
//! handshake, then a clean close. The close sends close_notify (in the same write as the
//! client's last handshake flight when it has one left: see [`crate::client_conn`]) and reads
//! until the server's
//! close_notify, so that TLS 1.3 tickets (which the server sends after the handshake) reach the
//! client's session store, and then waits for the server's TCP FIN so that the server, not the
//! load generator, is the side left in TIME_WAIT (a client-side TIME_WAIT per connection would
//! run out of ephemeral ports at a few hundred connections per second against a remote server).
//!
//! Latency is measured from the start of the TCP connect to the completion of the handshake as
//! the client sees it: when it has verified the server's Finished. Each worker records it in an HdrHistogram (microseconds, three
//! significant digits), merged at the end: memory stays fixed however long the run.
//!
//! In `--mode full` every worker shares one client configuration with resumption disabled. In
//! `--mode resume` every worker has its own configuration and in-memory session store, so it
//! resumes its own sessions: TLS 1.2 by session id (or ticket, if the server issues them),
//! TLS 1.3 by ticket. Each worker's first handshake is therefore full.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::cli::{BenchArgs, BenchMode, TlsVersion};
use crate::client_conn::ClientConn;
use crate::startup;

/// The run length when neither `--duration` nor `--connections` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// How long the TCP connect and the TLS handshake of one connection may take together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the exchange of close_notify alerts may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the server's TCP FIN after its close_notify.
const FIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a worker pauses after a failed attempt, so that a dead server is not hammered in
/// a tight loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);
/// How long resolving `--connect` may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Server names each worker's session store holds in `--mode resume` (only one is used).
const SESSION_STORE_SERVERS: usize = 4;
/// Distinct failure reasons kept; further ones are counted as "other".
const MAX_REASONS: usize = 16;
/// How often the progress bar is updated.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the load generator and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args).await.map_err(startup)?;
    let outcome = execute(&plan).await?;
    let report = Report::new(&plan, &outcome);
    if plan.json {
        let text = serde_json::to_string(&report).context("encoding the report")?;
        println!("{text}");
    } else {
        print!("{}", report.human());
    }
    if report.handshakes == 0 {
        if report.failures > 0 {
            bail!(
                "all {} attempts failed: {}",
                report.failures,
                reasons_line(&report.failure_reasons)
            );
        }
        bail!("no handshake completed in {:.3} s", report.elapsed_secs);
    }
    Ok(())
}

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// After this long; connections still in flight then are abandoned and not counted.
    After(Duration),
    /// After this many attempts, successful or not.
    Connections(u64),
}

/// What to connect to, how, and for how long: the checked flags.
struct Plan {
    /// `--connect`, as given.
    targets: Vec<String>,
    /// The addresses they resolved to.
    addrs: Vec<SocketAddr>,
    /// The name sent in SNI and verified in the certificate.
    server_name: ServerName<'static>,
    tls: TlsVersion,
    mode: BenchMode,
    concurrency: usize,
    stop: Stop,
    json: bool,
    /// The client configuration; in `--mode resume` each worker gets a copy with its own store.
    config: ClientConfig,
}

impl Plan {
    /// Checks the flags, loads the CA bundle and resolves the address.
    async fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let stop = stop_of(args.duration, args.connections)?;
        let trust = match (&args.ca, args.insecure) {
            (Some(path), false) => Trust::Roots(load_roots(path)?),
            (None, true) => Trust::Anything,
            (Some(_), true) => bail!("give either --ca FILE or --insecure, not both"),
            (None, false) => bail!("give --ca FILE or --insecure"),
        };
        let name = match &args.server_name {
            Some(name) => name.clone(),
            None => host_of(args.connect.first().map_or("", String::as_str)).to_owned(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("server name {name:?}: {e}"))?;
        let config = client_config(args.tls, trust)?;
        let mut addrs = Vec::with_capacity(args.connect.len());
        for target in &args.connect {
            addrs.push(resolve(target).await?);
        }
        Ok(Plan {
            targets: args.connect.clone(),
            addrs,
            server_name,
            tls: args.tls,
            mode: args.mode,
            concurrency: args.concurrency,
            stop,
            json: args.json,
            config,
        })
    }

    /// The client configuration of one worker.
    fn worker_config(&self, shared_full: &Arc<ClientConfig>) -> Arc<ClientConfig> {
        match self.mode {
            BenchMode::Full => shared_full.clone(),
            BenchMode::Resume => {
                let mut config = self.config.clone();
                config.resumption = Resumption::in_memory_sessions(SESSION_STORE_SERVERS);
                Arc::new(config)
            }
        }
    }
}

/// Turns `--duration` and `--connections` into a stopping rule.
fn stop_of(duration: Option<f64>, connections: Option<u64>) -> anyhow::Result<Stop> {
    match (duration, connections) {
        (Some(_), Some(_)) => bail!("give --duration or --connections, not both"),
        (None, Some(0)) => bail!("--connections must be at least 1"),
        (None, Some(n)) => Ok(Stop::Connections(n)),
        (Some(secs), None) => match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Ok(Stop::After(d)),
            _ => bail!("--duration {secs}: expected a positive number of seconds"),
        },
        (None, None) => Ok(Stop::After(DEFAULT_DURATION)),
    }
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match target.rsplit_once(':') {
        Some((host, _)) => host,
        None => target,
    }
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target))
        .await
        .map_err(|_| anyhow::anyhow!("cannot resolve {target:?}: timed out"))?
        .with_context(|| format!("cannot resolve {target:?} (expected HOST:PORT)"))?;
    let mut addrs = addrs;
    addrs
        .next()
        .ok_or_else(|| anyhow::anyhow!("{target:?} resolves to no address"))
}

/// How the server's certificate is checked.
enum Trust {
    /// Against these roots.
    Roots(RootCertStore),
    /// Not at all (`--insecure`); handshake signatures are still verified.
    Anything,
}

/// Reads a PEM bundle of trusted CA certificates.
fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("CA file {}: no PEM certificate in it", path.display());
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The client configuration: exactly one TLS version, the ring provider, resumption disabled
/// (the workers of `--mode resume` replace it with their own store).
fn client_config(tls: TlsVersion, trust: Trust) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let version = match tls {
        TlsVersion::Tls12 => &rustls::version::TLS12,
        TlsVersion::Tls13 => &rustls::version::TLS13,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .context("TLS version")?;
    let mut config = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(&provider)))
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A verifier for `--insecure`: it accepts any certificate chain for any name, but still checks
/// that the handshake was signed by the certificate's key, with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new(provider: &CryptoProvider) -> Self {
        AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Latencies in microseconds, up to an hour, to three significant digits.
fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("the bounds are constant and valid"),
    }
}

/// What the workers share: the target, the stopping rule, and the tallies.
struct Shared {
    /// The servers, in rotation order.
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    stop: Stop,
    /// Attempts started, for [`Stop::Connections`].
    claimed: AtomicU64,
    /// When the run ends, for [`Stop::After`].
    deadline: Option<tokio::time::Instant>,
    handshakes: AtomicU64,
    resumed: AtomicU64,
    failures: AtomicU64,
    unclean_closes: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Whether another attempt may start; in `--connections` mode this takes one.
    fn claim(&self) -> bool {
        match self.stop {
            Stop::Connections(n) => self.claimed.fetch_add(1, Ordering::Relaxed) < n,
            Stop::After(_) => self
                .deadline
                .is_none_or(|deadline| tokio::time::Instant::now() < deadline),
        }
    }

    fn record(&self, done: &Done) {
        if done.resumed {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
        if !done.clean {
            self.unclean_closes.fetch_add(1, Ordering::Relaxed);
        }
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, reason: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another worker panicked; the map is still usable.
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        let key = if reasons.contains_key(&reason) || reasons.len() < MAX_REASONS {
            reason
        } else {
            "other".to_owned()
        };
        *reasons.entry(key).or_insert(0) += 1;
    }
}

/// A connection whose handshake completed.
struct Done {
    /// From the start of the TCP connect to the completion of the handshake.
    latency: Duration,
    resumed: bool,
    /// Whether close_notify alerts were exchanged.
    clean: bool,
}

/// What the run produced.
struct Outcome {
    elapsed: Duration,
    handshakes: u64,
    resumed: u64,
    failures: u64,
    unclean_closes: u64,
    latency: Histogram<u64>,
    reasons: BTreeMap<String, u64>,
}

/// Runs the workers until the stopping rule says so.
async fn execute(plan: &Plan) -> anyhow::Result<Outcome> {
    let start = tokio::time::Instant::now();
    let deadline = match plan.stop {
        Stop::After(d) => Some(start + d),
        Stop::Connections(_) => None,
    };
    let shared = Arc::new(Shared {
        addrs: plan.addrs.clone(),
        server_name: plan.server_name.clone(),
        stop: plan.stop,
        claimed: AtomicU64::new(0),
        deadline,
        handshakes: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        unclean_closes: AtomicU64::new(0),
        reasons: Mutex::new(BTreeMap::new()),
    });
    let progress = (!plan.json && io::stderr().is_terminal())
        .then(|| tokio::spawn(show_progress(shared.clone(), start)));

    let full_config = Arc::new(plan.config.clone());
    let mut workers = Vec::with_capacity(plan.concurrency);
    for index in 0..plan.concurrency {
        let config = plan.worker_config(&full_config);
        workers.push(tokio::spawn(worker(shared.clone(), config, index)));
    }
    let mut joined = Ok(());
    let mut latency = new_histogram();
    for w in workers {
        match w.await {
            // Both histograms have the same bounds, so adding cannot fail.
            Ok(h) => drop(latency.add(&h)),
            Err(e) => joined = Err(anyhow::anyhow!("a worker failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        // The task clears its bar when dropped; wait for that before printing.
        let _ = progress.await;
    }
    joined?;

    let reasons = shared
        .reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Outcome {
        elapsed,
        handshakes: shared.handshakes.load(Ordering::Relaxed),
        resumed: shared.resumed.load(Ordering::Relaxed),
        failures: shared.failures.load(Ordering::Relaxed),
        unclean_closes: shared.unclean_closes.load(Ordering::Relaxed),
        latency,
        reasons,
    })
}

/// One worker: one connection at a time until the stopping rule says so. Each attempt is
/// bounded by its timeouts, and a `--duration` run abandons the attempt in flight at the end.
/// With several servers, worker `index` starts at server `index` and moves to the next one on
/// each connection. Returns the worker's latencies, in microseconds.
async fn worker(shared: Arc<Shared>, config: Arc<ClientConfig>, index: usize) -> Histogram<u64> {
    let mut latency = new_histogram();
    let mut next = index;
    let deadline = shared.deadline;
    let stop = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    while shared.claim() {
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => break,
            o = attempt(&shared, &config, shared.addrs[next % shared.addrs.len()]) => o,
        };
        next = next.wrapping_add(1);
        match outcome {
            Ok(done) => {
                let micros = u64::try_from(done.latency.as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
                shared.record(&done);
            }
            Err(reason) => {
                tracing::debug!(%reason, "connection failed");
                shared.fail(reason);
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(FAILURE_BACKOFF) => {}
                }
            }
        }
    }
    latency
}

/// One connection: connect, handshake, close. A failure is returned as a short reason.
async fn attempt(
    shared: &Shared,
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<Done, String> {
    let start = tokio::time::Instant::now();
    let deadline = start + HANDSHAKE_TIMEOUT;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {}", e.kind())),
        Err(_) => return Err("connect: timed out".to_owned()),
    };
    let _ = tcp.set_nodelay(true);
    let handshake = ClientConn::handshake(tcp, config.clone(), shared.server_name.clone());
    let mut tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(handshake_reason(&e)),
        Err(_) => return Err("handshake: timed out".to_owned()),
    };
    let latency = start.elapsed();
    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let clean = matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, tls.close()).await,
        Ok(Ok(()))
    );
    if clean {
        // Leave the TCP close to the server, so that it, not us, keeps the TIME_WAIT state.
        let _ = tokio::time::timeout(FIN_TIMEOUT, tls.drain()).await;
    }
    Ok(Done {
        latency,
        resumed,
        clean,
    })
}

/// The short reason of a failed handshake.
fn handshake_reason(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("handshake: {tls}"),
        None => format!("handshake: {}", e.kind()),
    }
}

/// Shows a progress bar on stderr until aborted; it is cleared when the task is dropped.
fn show_progress(shared: Arc<Shared>, start: tokio::time::Instant) -> impl Future<Output = ()> {
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
    /// The length of the run in seconds.
    pub elapsed_secs: f64,
    /// Completed handshakes per second of the run.
    pub handshakes_per_sec: f64,
    /// Handshake latency from the start of the TCP connect, in milliseconds; null without
    /// handshakes.
    pub latency_ms: Option<Latency>,
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
    fn new(plan: &Plan, outcome: &Outcome) -> Self {
        let h = &outcome.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let latency = (!h.is_empty()).then(|| Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        });
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
            elapsed_secs: secs,
            handshakes_per_sec: if secs > 0.0 {
                outcome.handshakes as f64 / secs
            } else {
                0.0
            },
            latency_ms: latency,
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
        if self.unclean_closes > 0 {
            let _ = writeln!(out, "  unclean closes {:>12}", self.unclean_closes);
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
fn reasons_line(reasons: &BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<_> = reasons.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    sorted
        .iter()
        .map(|(reason, count)| format!("{reason} ({count})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stopping_rules() {
        assert_eq!(
            stop_of(None, None).ok(),
            Some(Stop::After(DEFAULT_DURATION))
        );
        assert_eq!(stop_of(None, Some(5)).ok(), Some(Stop::Connections(5)));
        assert_eq!(
            stop_of(Some(0.5), None).ok(),
            Some(Stop::After(Duration::from_millis(500)))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(stop_of(Some(bad), None).is_err(), "{bad}");
        }
        assert!(stop_of(None, Some(0)).is_err());
        assert!(stop_of(Some(1.0), Some(1)).is_err());
    }

    #[test]
    fn hosts_of_targets() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let shared = Shared {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            server_name: ServerName::try_from("localhost").unwrap(),
            stop: Stop::Connections(1),
            claimed: AtomicU64::new(0),
            deadline: None,
            handshakes: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            unclean_closes: AtomicU64::new(0),
            reasons: Mutex::new(BTreeMap::new()),
        };
        assert!(shared.claim());
        assert!(!shared.claim());
        for i in 0..100 {
            shared.fail(format!("reason {i}"));
        }
        shared.fail("reason 0".to_owned());
        let reasons = shared.reasons.lock().unwrap().clone();
        assert_eq!(reasons.len(), MAX_REASONS + 1);
        assert_eq!(reasons.get("reason 0"), Some(&2));
        assert_eq!(reasons.get("other"), Some(&(100 - MAX_REASONS as u64)));
        assert_eq!(shared.failures.load(Ordering::Relaxed), 101);
    }

    #[test]
    fn reasons_line_puts_the_most_frequent_first() {
        let reasons = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)]);
        assert_eq!(reasons_line(&reasons), "b (3), a (1)");
    }

    #[test]
    fn handshake_reasons_name_the_tls_error() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert_eq!(
            handshake_reason(&e),
            "handshake: received fatal alert: HandshakeFailure"
        );
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(handshake_reason(&e), "handshake: unexpected end of file");
    }

    /// A certificate for localhost, and the key that signs in the handshake: its own, or
    /// another one.
    fn server_config(tls: TlsVersion, own_key: bool) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::server::{ClientHello, ResolvesServerCert};
        use rustls::sign::CertifiedKey;

        #[derive(Debug)]
        struct Fixed(Arc<CertifiedKey>);
        impl ResolvesServerCert for Fixed {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
        }

        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = if own_key {
            generated.signing_key
        } else {
            rcgen::KeyPair::generate().unwrap()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signer = provider.key_provider.load_private_key(der).unwrap();
        let certified = CertifiedKey::new(vec![generated.cert.der().clone()], signer);
        let version = match tls {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap();
        let config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
        Arc::new(config)
    }

    /// Runs a handshake in memory.
    fn handshake(
        client: ClientConfig,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name =
            ServerName::try_from("localhost").map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut client =
            rustls::Connection::from(rustls::ClientConnection::new(Arc::new(client), name)?);
        let mut server = rustls::Connection::from(rustls::ServerConnection::new(server)?);
        for _ in 0..16 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            transfer(&mut client, &mut server)?;
            transfer(&mut server, &mut client)?;
        }
        Err(rustls::Error::General(
            "the handshake did not finish".to_owned(),
        ))
    }

    fn transfer(
        from: &mut rustls::Connection,
        to: &mut rustls::Connection,
    ) -> Result<(), rustls::Error> {
        let io = |e: io::Error| rustls::Error::General(e.to_string());
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).map_err(io)?;
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if to.read_tls(&mut rest).map_err(io)? == 0 {
                break;
            }
            to.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn the_insecure_verifier_accepts_any_certificate_but_checks_signatures() {
        for tls in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let insecure = || client_config(tls, Trust::Anything).unwrap();
            assert_eq!(
                handshake(insecure(), server_config(tls, true)),
                Ok(()),
                "{tls:?}"
            );
            let wrong_key = handshake(insecure(), server_config(tls, false));
            assert!(
                matches!(
                    wrong_key,
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::BadSignature
                    ))
                ),
                "{tls:?}: {wrong_key:?}"
            );
        }
    }

    /// A rustls server on a loopback socket, driven one blocking read at a time: once the read
    /// that completes its handshake (the client's Finished) has been processed, it reports
    /// whether that same read also held the client's close_notify. Then it answers with its
    /// own close_notify and closes.
    fn one_read_server(
        config: Arc<rustls::ServerConfig>,
    ) -> (SocketAddr, std::thread::JoinHandle<Result<bool, String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let (mut tcp, _) = listener.accept().map_err(|x| e(&x))?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|x| e(&x))?;
            let mut conn = rustls::ServerConnection::new(config).map_err(|x| e(&x))?;
            for _ in 0..16 {
                while conn.wants_write() {
                    conn.write_tls(&mut tcp).map_err(|x| e(&x))?;
                }
                if !conn.is_handshaking() {
                    // Nothing read since the handshake completed: was the alert in that read?
                    let mut buf = [0u8; 64];
                    let closed = matches!(conn.reader().read(&mut buf), Ok(0));
                    conn.send_close_notify();
                    while conn.wants_write() {
                        conn.write_tls(&mut tcp).map_err(|x| e(&x))?;
                    }
                    tcp.flush().map_err(|x| e(&x))?;
                    return Ok(closed);
                }
                if conn.read_tls(&mut tcp).map_err(|x| e(&x))? == 0 {
                    return Err("the client closed mid-handshake".to_owned());
                }
                conn.process_new_packets().map_err(|x| e(&x))?;
            }
            Err("the handshake did not finish".to_owned())
        });
        (addr, server)
    }

    #[tokio::test]
    async fn the_close_notify_leaves_with_the_last_flight() {
        // TLS 1.3: the client's Finished is its last flight, held until the close.
        let (addr, server) = one_read_server(server_config(TlsVersion::Tls13, true));
        let config = Arc::new(client_config(TlsVersion::Tls13, Trust::Anything).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConn::handshake(tcp, config, name).await.unwrap();
        assert_eq!(conn.handshake_kind(), Some(HandshakeKind::Full));
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
        assert!(matches!(closed, Ok(Ok(()))), "{closed:?}");
        let same_read = tokio::task::spawn_blocking(move || server.join())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(same_read, Ok(true));
    }

    #[tokio::test]
    async fn a_server_that_closes_without_close_notify_is_an_unclean_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(TlsVersion::Tls13, true);
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // The handshake is complete once the client's Finished is read; then a bare FIN.
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).unwrap();
            }
        });
        let config = Arc::new(client_config(TlsVersion::Tls13, Trust::Anything).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConn::handshake(tcp, config, name).await.unwrap();
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
        tokio::task::spawn_blocking(move || server.join())
            .await
            .unwrap()
            .unwrap();
        let kind = match &closed {
            Ok(Err(e)) => Some(e.kind()),
            _ => None,
        };
        assert_eq!(kind, Some(io::ErrorKind::UnexpectedEof), "{closed:?}");
    }

    #[test]
    fn ca_roots_verify_the_chain() {
        let config =
            client_config(TlsVersion::Tls13, Trust::Roots(RootCertStore::empty())).unwrap();
        let untrusted = handshake(config, server_config(TlsVersion::Tls13, true));
        assert!(
            matches!(
                untrusted,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{untrusted:?}"
        );
    }

    #[test]
    fn unusable_ca_files_are_reported() {
        let missing = load_roots(Path::new("/nonexistent/ca.pem"))
            .err()
            .map(|e| format!("{e:#}"));
        assert!(missing.is_some_and(|e| e.starts_with("cannot read CA file")));
        let dir = std::env::temp_dir().join(format!("reprise-bench-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        let _ = std::fs::write(&empty, "not a certificate\n");
        let none = load_roots(&empty).err().map(|e| format!("{e:#}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(none.is_some_and(|e| e.contains("no PEM certificate")));
    }
}
