//! `reprise serve`: listeners, the per-connection task (handshake through the cache, then the
//! built-in responder or the proxy to `--upstream`), the metrics endpoint and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use reprise_rustls::{AcceptError, AcceptPolicy, Accepted, Acceptor, ServerTlsStream};

use crate::access_log::{self, AccessLog, End, Record, Resumption, Source};
use crate::admission::{AddressPermit, PerAddress};
use crate::cli::{AcceptModel, ServeArgs};
use crate::config::Settings;
use crate::early::EarlyMetrics;
use crate::http::{self, Ending};
use crate::metrics::{Failure, Metrics};
use crate::proxy::{self, ProxyMetrics};
use crate::startup;
use crate::tls::{self, Chooser, ServerTls};

/// PSK identities fetched from the tiers per ClientHello, at most (clients offer one).
const MAX_PREFETCHED_IDENTITIES: usize = 4;

/// Connections the metrics listener serves at once; more wait in the listen backlog.
const METRICS_CONNECTIONS: usize = 16;

/// How long a connection to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client that sent early data may take to finish its handshake when the server
/// closes the connection.
const HANDSHAKE_END_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection task shares.
struct Shared {
    /// The flags, read again with the config file on a reload.
    args: ServeArgs,
    settings: Settings,
    tls: ServerTls,
    acceptor: Acceptor<Chooser>,
    metrics: Metrics,
    proxy_metrics: ProxyMetrics,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The access log, with `--access-log`.
    access_log: Option<AccessLog>,
    /// Whether the listeners serve: `/healthz` answers 503 until then.
    ready: AtomicBool,
    /// What became of early data.
    early_metrics: EarlyMetrics,
}

/// How long the start waits for the fleet's ticket-key ring before serving with what it has.
const TICKET_KEYS_READY: Duration = Duration::from_secs(3);

/// Runs the terminator until SIGINT or SIGTERM; SIGHUP reloads what can be reloaded.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // First of all, so that a SIGHUP during the start reloads nothing instead of killing.
    let mut signals = Signals::install().map_err(startup)?;
    let settings = Settings::resolve(args.clone()).map_err(startup)?;
    let tls = tls::build(&settings).map_err(startup)?;
    if let Some(upstream) = &settings.upstream {
        check_host_port(upstream).map_err(startup)?;
    }
    let access_log = match &settings.access_log {
        Some(log) => Some(AccessLog::open(log).map_err(startup)?),
        None => None,
    };
    // One socket per address, or one per worker and address (SO_REUSEPORT).
    let sockets = match (settings.accept_model, settings.workers) {
        (AcceptModel::PerWorker, n) if n > 1 => n,
        _ => 1,
    };
    let mut listeners = Vec::new();
    for addr in &settings.listen {
        listeners.push(bind(addr, sockets).await.map_err(startup)?);
    }
    let metrics_listener = match &settings.metrics_listen {
        Some(addr) => {
            let socket = bind(addr, 1).await.map_err(startup)?.pop();
            let socket = socket
                .context("metrics-listen: no socket")
                .map_err(startup)?;
            Some(TcpListener::from_std(socket).map_err(startup)?)
        }
        None => None,
    };
    // Written once the listeners are bound; removed when this function returns.
    let _pid_file = match &settings.pid_file {
        Some(path) => Some(crate::pidfile::PidFile::create(path).map_err(startup)?),
        None => None,
    };

    // Shared from here on, so that the metrics listener answers during the rest of the start
    // (with /healthz not ready).
    let shared = Arc::new(Shared {
        acceptor: acceptor(&settings, &tls),
        tls,
        metrics: Metrics::default(),
        proxy_metrics: ProxyMetrics::default(),
        permits: Arc::new(Semaphore::new(settings.max_connections)),
        per_address: PerAddress::new(settings.max_connections_per_address),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        access_log,
        ready: AtomicBool::new(false),
        early_metrics: EarlyMetrics::default(),
        settings,
        args,
    });
    let (settings, tls) = (&shared.settings, &shared.tls);
    let mut loops = Vec::new();
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "metrics at /metrics, health at /healthz");
        }
        loops.push(tokio::spawn(metrics_loop(shared.clone(), listener)));
    }

    if tls.self_signed {
        let certs = tls.certificates.load();
        let sha256 = certs.entries().first().map(|e| e.fingerprint.as_str());
        info!(
            sha256 = sha256.unwrap_or_default(),
            "generated a self-signed certificate for localhost"
        );
    }
    for l in listeners.iter().filter_map(|per_worker| per_worker.first()) {
        if let Ok(addr) = l.local_addr() {
            info!(
                %addr,
                workers = settings.workers,
                accept = settings.accept_model.as_str(),
                "listening"
            );
        }
    }
    let default_ctx = tls
        .certificates
        .load()
        .entries()
        .first()
        .map(|e| short_hex(e.sid_ctx().as_bytes()))
        .unwrap_or_default();
    info!(
        sid_ctx = %default_ctx,
        mode = %settings.cache_mode,
        size = settings.cache_size,
        timeout = settings.cache_timeout,
        "session cache ready"
    );

    match &tls.tickets {
        None => info!(mode = settings.tickets.as_str(), "tickets"),
        Some(t) => {
            // Names the mode and the source, never a key.
            info!(
                mode = settings.tickets.as_str(),
                keys = t.source.name(),
                lifetime = settings.ticket_lifetime.as_secs(),
                "tickets"
            );
            if let Some(fleet) = &t.fleet {
                if !fleet.ready(TICKET_KEYS_READY).await {
                    // The source has logged its fallback already.
                    info!(
                        waited = TICKET_KEYS_READY.as_secs(),
                        "serving before the fleet's ticket key could be read; it is adopted when Redis answers"
                    );
                }
            }
        }
    }

    if tls.tickets.is_some() {
        // Rotations and erasures take effect on an idle server too: no derived copy of an
        // erased key outlives it by more than a second. The entries are read each time: a
        // reload replaces them.
        let certificates = tls.certificates.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for entry in certificates.load().entries() {
                    if let Some(ticketer) = &entry.ticketer {
                        ticketer.sealer().refresh();
                    }
                }
            }
        });
    }
    tls::log_certificates(tls, settings.strict_sni);
    tokio::spawn(tls::watch_ocsp(tls.certificates.clone()));

    if let Some(disk) = &tls.disk {
        // Loads the stored sessions before the first client, on a blocking thread.
        let (disk, cache) = (disk.clone(), tls.cache.clone());
        let warmed = tokio::task::spawn_blocking(move || disk.warm(&cache))
            .await
            .unwrap_or(0);
        info!(sessions = warmed, "sessions loaded from disk");
    }

    // Dropped without waiting at the end (a runtime may not be dropped inside another).
    let pool = start_workers(&shared, listeners, &mut loops).map_err(startup)?;
    shared.ready.store(true, Ordering::Release);
    crate::notify::notify("READY=1");

    while signals.next().await == Signal::Reload {
        if let Some(log) = &shared.access_log {
            log.reopen();
        }
        reload(shared.clone()).await;
    }
    info!("shutting down: no new connections");
    crate::notify::notify("STOPPING=1");
    shared.shutdown.cancel();
    for l in loops {
        let _ = l.await;
    }
    shared.tasks.close();
    let open = shared.tasks.len();
    if open > 0 {
        info!(open, "waiting for open connections");
    }
    if tokio::time::timeout(shared.settings.shutdown_timeout, shared.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = shared.tasks.len(),
            "shutdown deadline passed; closing the rest"
        );
    }
    if let Some(disk) = shared.tls.disk.clone() {
        // Writes out the queue and marks the shutdown clean, so TLS 1.3 tickets are kept.
        let _ = tokio::task::spawn_blocking(move || disk.close()).await;
    }
    if shared.access_log.is_some() {
        // Writes out the queued lines.
        let held = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(log) = &held.access_log {
                log.close();
            }
        })
        .await;
    }
    if let Some(pool) = pool {
        pool.shutdown_background();
    }
    info!("stopped");
    Ok(())
}

/// Starts the accept loops: with one worker, on this thread's runtime; per worker, a thread
/// each with a single-threaded runtime and its own sockets (one per address, from `listeners`'
/// SO_REUSEPORT groups), the first worker on this thread; shared, on a work-stealing runtime of
/// `workers` threads, which is returned (it must outlive the connections).
fn start_workers(
    shared: &Arc<Shared>,
    listeners: Vec<Vec<std::net::TcpListener>>,
    loops: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Option<tokio::runtime::Runtime>> {
    let workers = shared.settings.workers;
    if workers > 1 && shared.settings.accept_model == AcceptModel::Shared {
        let pool = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("reprise-worker")
            .enable_all()
            .build()
            .context("starting the worker threads")?;
        for std_listener in listeners.into_iter().flatten() {
            let shared = shared.clone();
            let handle = pool.spawn(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(listener) => accept_loop(shared, listener).await,
                    Err(e) => warn!(error = %e, "cannot register a listening socket"),
                }
            });
            loops.push(handle);
        }
        return Ok(Some(pool));
    }
    // Per worker (or one worker): worker i takes socket i of every address.
    let mut by_worker: Vec<Vec<std::net::TcpListener>> = Vec::new();
    for group in listeners {
        for (i, socket) in group.into_iter().enumerate() {
            if by_worker.len() <= i {
                by_worker.push(Vec::new());
            }
            by_worker[i].push(socket);
        }
    }
    let mut by_worker = by_worker.into_iter();
    for std_listener in by_worker.next().unwrap_or_default() {
        let listener = TcpListener::from_std(std_listener).context("listening socket")?;
        loops.push(tokio::spawn(accept_loop(shared.clone(), listener)));
    }
    for (i, sockets) in by_worker.enumerate() {
        let shared = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a worker thread")?;
        std::thread::Builder::new()
            .name(format!("reprise-worker-{}", i + 1))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut accepting = Vec::new();
                    for std_listener in sockets {
                        match TcpListener::from_std(std_listener) {
                            Ok(l) => accepting.push(tokio::spawn(accept_loop(shared.clone(), l))),
                            Err(e) => warn!(error = %e, "cannot register a listening socket"),
                        }
                    }
                    for a in accepting {
                        let _ = a.await;
                    }
                    // This runtime drives its connections until they end; the main thread
                    // bounds the wait with --shutdown-timeout, then exits.
                    shared.tasks.wait().await;
                });
            })
            .context("starting a worker thread")?;
    }
    Ok(None)
}

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// SIGINT or SIGTERM: stop gracefully.
    Stop,
    /// SIGHUP: reload the certificates and the ticket-key file.
    Reload,
}

/// The signals `reprise serve` handles.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// The next signal. A stream that ends (it cannot, while the runtime lives) counts as a stop.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Stop,
            _ = self.term.recv() => Signal::Stop,
            r = self.hup.recv() => if r.is_some() { Signal::Reload } else { Signal::Stop },
        }
    }
}

/// SIGHUP (or `reprise reload`): reads the config file again with the flags given at start,
/// then the certificates, keys, client CAs and OCSP responses, and the ticket-key file. New
/// handshakes use what was read; open connections keep what they were given. A reload that
/// fails, or that changes a setting which needs a restart, changes nothing: one line in the
/// log, counted in `reprise_reloads_total{result="error"}`.
async fn reload(shared: Arc<Shared>) {
    let held = shared.clone();
    // Files are read and keys parsed: off the runtime's threads.
    let result = tokio::task::spawn_blocking(move || reload_now(&held))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the reload task failed: {e}")));
    shared.metrics.reload(result.is_ok());
    match result {
        Ok((s, keys)) => info!(
            certificates = s.entries,
            sessions_kept = s.kept,
            sessions_afresh = s.changed,
            added = s.added,
            removed = s.removed,
            "reloaded{}",
            if keys { "; ticket keys reloaded" } else { "" }
        ),
        Err(e) => {
            let e = format!("{e:#}").replace('\n', " ");
            warn!("reload failed, nothing changed: {e}");
        }
    }
}

/// Reads everything a reload applies, then applies it; an error before the swap changes
/// nothing. True if the ticket-key file was read again.
fn reload_now(shared: &Shared) -> anyhow::Result<(tls::Swapped, bool)> {
    let settings = Settings::resolve(shared.args.clone())?;
    shared.settings.check_reloadable(&settings)?;
    let certificates = shared.tls.prepare_reload(&settings)?;
    let mut keys = false;
    if let Some(tickets) = shared.tls.tickets.as_ref().filter(|t| t.reloadable) {
        // The last step that can fail: its error keeps the keys held, and the certificates.
        tickets
            .source
            .reload()
            .map_err(|e| anyhow::anyhow!("ticket keys not reloaded: {e}"))?;
        keys = true;
    }
    Ok((shared.tls.swap(certificates), keys))
}

/// Checks that an upstream is `HOST:PORT`.
pub(crate) fn check_host_port(upstream: &str) -> anyhow::Result<()> {
    let port = upstream
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()))
        .filter(|(host, port)| !host.is_empty() && port.is_ok());
    match port {
        Some(_) => Ok(()),
        None => anyhow::bail!("upstream {upstream:?}: expected HOST:PORT"),
    }
}

/// Listening sockets for `addr`: one, or `count` that share the address (SO_REUSEPORT; the
/// kernel spreads the connections over them). Blocking-free: they are registered with a
/// runtime later, by the worker that serves them.
async fn bind(addr: &str, count: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve listen address {addr:?}"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match bind_group(a, count) {
            Ok(group) => return Ok(group),
            Err(e) => last = Some(anyhow::anyhow!("cannot listen on {a}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("listen address {addr:?} resolves to nothing")))
}

/// `count` sockets listening on `addr` (the first one's port when `addr` asks for any).
fn bind_group(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut group = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        // Accepted sockets inherit it on Linux, which spares a system call per connection.
        socket.set_tcp_nodelay(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        group.push(listener);
    }
    Ok(group)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // A trusted proxy's connections count against the client address its header
                // carries, once read.
                let per_address = if proxy::trusted(&shared.settings, peer.ip()) {
                    None
                } else {
                    let Some(p) = shared.per_address.try_acquire(peer.ip()) else {
                        shared.metrics.connection_rejected_per_address();
                        debug!(%peer, "max-connections-per-address reached: connection closed");
                        continue;
                    };
                    Some(p)
                };
                let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                    shared.metrics.connection_rejected();
                    debug!(%peer, "max-connections reached: connection closed");
                    continue;
                };
                // On Linux an accepted socket inherits TCP_NODELAY from the listener
                // (`bind_group`); elsewhere it is set here.
                #[cfg(not(target_os = "linux"))]
                let _ = tcp.set_nodelay(true);
                let permits = (permit, per_address);
                shared
                    .tasks
                    .spawn(connection(shared.clone(), tcp, peer, permits));
            }
            Err(e) => {
                // Out of file descriptors, say: back off a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection open for as long as it lives.
struct Open<'a>(&'a Metrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// The acceptor every connection goes through, as any user of `reprise-rustls` would build it:
/// the configuration chooser (two configurations with `--tickets auto`), and the policy from the
/// settings.
fn acceptor(settings: &Settings, tls: &ServerTls) -> Acceptor<Chooser> {
    let mut policy = AcceptPolicy::default();
    policy.max_psk_identities = MAX_PREFETCHED_IDENTITIES;
    policy.hello_timeout = Some(settings.hello_timeout);
    policy.handshake_timeout = Some(settings.handshake_timeout);
    // An upstream gets early data only once the handshake completed, unless told otherwise.
    policy.hold_early_data = settings.upstream.is_some() && !settings.early.upstream_at_once;
    if let Some(redis) = &settings.redis {
        // The tier gives up at its read deadline by itself; this is the backstop.
        policy.prefetch_deadline = redis.timeout.saturating_mul(2);
    }
    Acceptor::new(tls.chooser(), policy)
}

/// A connection until its handshake completes, under `--hello-timeout` and
/// `--handshake-timeout`: until its ClientHello has arrived, it holds little more than what the
/// client sent. The rest of its life, larger, is allocated after.
async fn connection(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    permits: (OwnedSemaphorePermit, Option<AddressPermit>),
) {
    shared.metrics.connection_opened();
    let _open = Open(&shared.metrics);
    let started = Instant::now();
    // The PROXY protocol header, from a trusted source: the client's address from here on.
    let (peer, local, _per_address) = match proxied(&shared, &mut tcp, peer).await {
        Ok(proxied) => proxied,
        Err(Some((client, end, error))) => {
            return log_unfinished(&shared, client, started, end, error);
        }
        Err(None) => return,
    };
    // In a block of its own, so that the accepted stream (large) is no part of this future:
    // it moves into the boxed rest of the connection.
    let established = {
        let accepted = tokio::select! {
            r = shared.acceptor.accept(tcp, peer) => r,
            _ = shared.shutdown.cancelled() => {
                log_unfinished(&shared, peer, started, End::Shutdown, None);
                return;
            }
        };
        match accepted {
            Ok(accepted) => Box::pin(established(&shared, accepted, peer, local, started)),
            Err(e) => {
                if crate::early::is_too_much(&e) {
                    shared.early_metrics.too_much();
                }
                let error = access_log::accept_error(&e);
                log_unfinished(&shared, peer, started, End::HandshakeFailed, Some(error));
                return handshake_failed(&shared, &e, peer);
            }
        }
    };
    established.await;
    drop(permits);
}

/// The client's address and the address it connected to, after the PROXY protocol header of a
/// trusted source (counted against the client address's limit); or the TCP ones. An error: the
/// connection is to be closed (counted, and logged at debug level), with what its access-log
/// line says, if it has one.
async fn proxied(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(SocketAddr, Option<SocketAddr>, Option<AddressPermit>), Option<Unproxied>> {
    let settings = &shared.settings;
    if settings.proxy_protocol_from.is_empty() {
        // The address the client connected to, for a header sent upstream.
        let local = match settings.upstream_proxy_protocol {
            Some(_) => tcp.local_addr().ok(),
            None => None,
        };
        return Ok((peer, local, None));
    }
    let local = tcp.local_addr().ok();
    if !proxy::trusted(settings, peer.ip()) {
        // An untrusted source is served as plain TLS; a header it sends is not honoured, and
        // counted here (the TLS handshake would fail on it anyway).
        let mut first = [0u8; 12];
        let peeked = tokio::select! {
            r = tokio::time::timeout(settings.hello_timeout, tcp.peek(&mut first)) => r,
            _ = shared.shutdown.cancelled() => return Err(Some((peer, End::Shutdown, None))),
        };
        match peeked {
            Ok(Ok(n)) if proxy::looks_like_header(&first[..n]) => {
                shared.proxy_metrics.refused(proxy::Refused::Untrusted);
                debug!(%peer, "PROXY protocol header from an untrusted source: connection closed");
                return Err(Some((
                    peer,
                    End::HandshakeFailed,
                    Some("proxy_header_untrusted"),
                )));
            }
            // Silent for the whole hello timeout: the acceptor would give it another.
            Err(_) => {
                shared.metrics.failure(Failure::Timeout);
                debug!(%peer, "handshake failed: no ClientHello within hello-timeout");
                return Err(Some((peer, End::HandshakeFailed, Some("hello_timeout"))));
            }
            // The rest (a socket error, an end) is the acceptor's to report.
            Ok(_) => return Ok((peer, local, None)),
        }
    }
    let read = tokio::select! {
        r = tokio::time::timeout(settings.hello_timeout, proxy::read_header(tcp)) => r,
        _ = shared.shutdown.cancelled() => return Err(Some((peer, End::Shutdown, None))),
    };
    let header = match read {
        Ok(Ok(header)) => header,
        Ok(Err(proxy::ProxyError::Closed)) => {
            // As without the PROXY protocol: a client gone before its first byte.
            shared.metrics.failure(Failure::Eof);
            debug!(%peer, "closed before the PROXY protocol header");
            return Err(Some((peer, End::HandshakeFailed, Some("eof"))));
        }
        Ok(Err(e)) => {
            let (why, label) = match e {
                proxy::ProxyError::Missing => (proxy::Refused::Missing, "proxy_header_missing"),
                _ => (proxy::Refused::Malformed, "proxy_header_malformed"),
            };
            shared.proxy_metrics.refused(why);
            debug!(%peer, error = %e, "PROXY protocol header refused: connection closed");
            return Err(Some((peer, End::HandshakeFailed, Some(label))));
        }
        Err(_) => {
            shared.metrics.failure(Failure::Timeout);
            debug!(%peer, "no whole PROXY protocol header within hello-timeout: connection closed");
            return Err(Some((peer, End::HandshakeFailed, Some("hello_timeout"))));
        }
    };
    shared.proxy_metrics.accepted(header.version);
    let (client, local) = match header.addresses {
        Some((src, dst)) => (src, Some(dst)),
        None => (peer, local),
    };
    let Some(permit) = shared.per_address.try_acquire(client.ip()) else {
        shared.metrics.connection_rejected_per_address();
        debug!(peer = %client, proxy = %peer, "max-connections-per-address reached: connection closed");
        // Not logged, as a connection closed at accept for its address is not.
        return Err(None);
    };
    debug!(peer = %client, proxy = %peer, version = header.version.as_str(), "PROXY protocol header");
    Ok((client, local, Some(permit)))
}

/// The access-log line of a connection whose handshake did not complete.
fn log_unfinished(
    shared: &Shared,
    peer: SocketAddr,
    started: Instant,
    end: End,
    error: Option<&'static str>,
) {
    if let Some(log) = &shared.access_log {
        log.log(Record {
            time: std::time::SystemTime::now(),
            client: peer,
            sni: access_log::Sni::None,
            version: None,
            suite: None,
            resumption: Resumption::None,
            source: None,
            handshake: started.elapsed(),
            bytes_in: 0,
            bytes_out: 0,
            end,
            error,
        });
    }
}

/// Why a connection ended before its handshake, at its PROXY protocol header: the address to
/// log, how it ended, and the access log's `error`.
type Unproxied = (SocketAddr, End, Option<&'static str>);

/// Counts and logs a connection whose handshake did not complete.
fn handshake_failed(shared: &Shared, e: &AcceptError, peer: SocketAddr) {
    let reason = Failure::of_accept(e);
    shared.metrics.failure(reason);
    match e {
        AcceptError::HelloTimeout => {
            debug!(%peer, reason = reason.as_str(), "handshake failed: no ClientHello within hello-timeout");
        }
        AcceptError::HandshakeTimeout => {
            debug!(%peer, reason = reason.as_str(), "handshake failed: timed out");
        }
        // The client's doing (it went away, sent garbage, offered nothing in common): counted
        // in the metrics, and logged at debug so that a client that resets every connection
        // (openssl s_time does) or a flood cannot fill the log.
        e if e.is_client_fault() || tls::is_sni_refusal(e) => {
            debug!(%peer, reason = reason.as_str(), error = %e, "handshake failed");
        }
        e => warn!(%peer, reason = reason.as_str(), error = %e, "handshake failed"),
    }
}

/// The connection's traffic, after its handshake.
async fn established(
    shared: &Shared,
    accepted: Accepted,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    started: Instant,
) {
    let handshake_time = started.elapsed();
    let mut stream = accepted.stream;
    let (kind, version, suite, proxy_header) = {
        let (_, conn) = stream.get_ref().get_ref();
        (
            conn.handshake_kind(),
            conn.protocol_version(),
            conn.negotiated_cipher_suite(),
            proxy::upstream_header(&shared.settings, peer, local, conn),
        )
    };
    // A TLS failure from here on (a fatal alert, a bad record) removes the connection's
    // sessions. A FIN, a reset or a timeout keeps them.
    shared.metrics.handshake(kind, version);
    let resumed = kind == Some(rustls::HandshakeKind::Resumed);
    // Read now: a failure later takes the connection's sessions away.
    let from_cache =
        resumed && shared.access_log.is_some() && !stream.sessions().sessions().is_empty();
    debug!(%peer, ?version, resumed, "handshake completed");

    let traffic = Traffic::default();
    let (ending, responded) = match &shared.settings.upstream {
        None => {
            let body = || {
                format!(
                    "protocol: {}\ncipher: {}\nresumed: {}\n",
                    version_name(version),
                    suite.map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite())),
                    if resumed { "yes" } else { "no" },
                )
            };
            let idle = shared.settings.idle_timeout;
            let early = &shared.settings.early;
            let rule = early.enabled().then(|| crate::early::Rule {
                read: stream.get_ref().early_data_counter().unwrap_or_default(),
                safe_methods: &early.safe_methods,
                metrics: &shared.early_metrics,
            });
            let mut counted = access_log::Counted::new(&mut stream);
            let responded =
                http::respond(&mut counted, &body, idle, &shared.shutdown, rule.as_ref()).await;
            traffic.add(counted.read, counted.written);
            let ending = match responded {
                Ending::Close | Ending::Idle | Ending::Shutdown => {
                    close_notify(&mut stream, false).await
                }
                Ending::PeerClosed => close_notify(&mut stream, true).await,
                ending => ending,
            };
            (ending, Some(responded))
        }
        Some(upstream) => (
            proxy(shared, &mut stream, upstream, peer, &proxy_header, &traffic).await,
            None,
        ),
    };
    if stream.get_ref().early_data_overflowed() {
        shared.early_metrics.too_much();
    }
    let failed = stream.sessions().has_failed();
    if failed {
        shared.metrics.unclean_shutdown();
    } else if ending.is_unclean() {
        // No close_notify either way (a FIN, a reset): the session is kept.
        shared.metrics.close_without_close_notify();
    }
    if let Some(log) = &shared.access_log {
        let resumption = Resumption::of(kind, version, from_cache);
        let end = match (failed, responded.unwrap_or(ending)) {
            (true, _) => End::TlsError,
            (false, Ending::Close) => End::ServerClose,
            (false, Ending::Idle) => End::IdleTimeout,
            (false, Ending::Shutdown) => End::Shutdown,
            (false, Ending::PeerClosed | Ending::Clean) => End::CloseNotify,
            (false, Ending::Unclean) => End::Eof,
            (false, Ending::Broken(std::io::ErrorKind::ConnectionReset)) => End::Reset,
            (false, Ending::Broken(_)) => End::IoError,
        };
        let (_, conn) = stream.get_ref().get_ref();
        log.log(Record {
            time: std::time::SystemTime::now(),
            client: peer,
            sni: access_log::Sni::new(conn.server_name()),
            version,
            suite: suite.map(|s| s.suite()),
            resumption,
            source: Source::of(resumption, accepted.prefetch),
            handshake: handshake_time,
            bytes_in: traffic.read.load(Ordering::Relaxed),
            bytes_out: traffic.written.load(Ordering::Relaxed),
            end,
            error: None,
        });
    }
}

/// Application bytes a connection moved, each way.
#[derive(Default)]
struct Traffic {
    /// From the client.
    read: AtomicU64,
    /// To the client.
    written: AtomicU64,
}

impl Traffic {
    fn add(&self, read: u64, written: u64) {
        self.read.fetch_add(read, Ordering::Relaxed);
        self.written.fetch_add(written, Ordering::Relaxed);
    }
}

/// The server's side of a connection after its handshake.
type Tls = ServerTlsStream;

/// The first bytes of a value in hex, enough to compare contexts in logs.
fn short_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 8 {
        hex + "…"
    } else {
        hex
    }
}

fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "unknown",
    }
}

/// Proxies a decrypted connection to the upstream in both directions, passing half-closes on.
async fn proxy(
    shared: &Shared,
    tls: &mut Tls,
    upstream: &str,
    peer: SocketAddr,
    proxy_header: &[u8],
    traffic: &Traffic,
) -> Ending {
    let connected =
        tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await;
    let mut up = match connected {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            warn!(%peer, %upstream, error = %e, "upstream connect failed");
            return close(tls).await;
        }
        Err(_) => {
            warn!(%peer, %upstream, "upstream connect timed out");
            return close(tls).await;
        }
    };
    let _ = up.set_nodelay(true);
    if !proxy_header.is_empty() {
        if let Err(e) = up.write_all(proxy_header).await {
            warn!(%peer, %upstream, error = %e, "upstream write failed");
            return close(tls).await;
        }
    }
    let last_activity = AtomicU64::new(0);
    let started = Instant::now();
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut up_read, mut up_write) = up.into_split();
    let to_upstream = async {
        // Ok: the client's close_notify; Err: its connection ended without one.
        let r = pump(
            &mut client_read,
            &mut up_write,
            &last_activity,
            started,
            &traffic.read,
        )
        .await;
        let _ = up_write.shutdown().await;
        r.is_ok()
    };
    let to_client = async {
        let _ = pump(
            &mut up_read,
            &mut client_write,
            &last_activity,
            started,
            &traffic.written,
        )
        .await;
        // The upstream is done: send close_notify.
        client_write.shutdown().await.is_ok()
    };
    let idle = shared.settings.idle_timeout;
    let watchdog = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(last) >= idle {
                return;
            }
        }
    };
    tokio::select! {
        (peer_closed, we_closed) = async { tokio::join!(to_upstream, to_client) } => {
            if peer_closed || we_closed { Ending::Clean } else { Ending::Unclean }
        }
        _ = watchdog => {
            debug!(%peer, "idle: closing");
            let mut tls = client_read.unsplit(client_write);
            close(&mut tls).await
        }
        _ = shared.shutdown.cancelled() => {
            let mut tls = client_read.unsplit(client_write);
            close(&mut tls).await
        }
    }
}

/// Copies until EOF, noting the time of every transfer and counting the bytes in `moved`.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    last_activity: &AtomicU64,
    started: Instant,
    moved: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Sends close_notify, without a TCP shutdown: the connection closes when dropped, one system
/// call fewer per connection.
///
/// When the client has already sent its close_notify (`peer_closed`), ours goes out with
/// `MSG_MORE`: the kernel holds it until the close that follows, which sends it in the same
/// segment as the FIN, one loopback or network round of TCP work fewer per connection. Only
/// then: had the client sent more data, unread at the close, the kernel would answer with a
/// reset and drop the held alert.
async fn close_notify(stream: &mut Tls, peer_closed: bool) -> Ending {
    // A client that sent early data may not have finished its handshake yet: it gets its
    // tickets, and its Finished is not answered with a reset.
    let finishing = stream.get_mut().complete_handshake();
    match tokio::time::timeout(HANDSHAKE_END_TIMEOUT, finishing).await {
        Ok(Ok(())) => {}
        _ => return Ending::Unclean,
    }
    let (io, conn) = stream.get_mut().get_mut();
    conn.send_close_notify();
    if peer_closed {
        let mut held = HeldWriter(io.inner());
        while conn.wants_write() {
            match conn.write_tls(&mut held) {
                Ok(_) => {}
                // The socket buffer is full: the flush below waits for room.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Ending::Unclean,
            }
        }
    }
    match stream.flush().await {
        Ok(()) => Ending::Clean,
        Err(_) => Ending::Unclean,
    }
}

/// `MSG_MORE` where the kernel has it (Linux); elsewhere the alert is simply sent at once.
#[cfg(any(target_os = "linux", target_os = "android"))]
const HOLD: libc::c_int = libc::MSG_MORE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const HOLD: libc::c_int = 0;

/// Writes to a TCP socket with `MSG_MORE`, without waiting: `WouldBlock` when it is full.
struct HeldWriter<'a>(&'a TcpStream);

impl std::io::Write for HeldWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let tcp = self.0;
        tcp.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(tcp).send_vectored_with_flags(bufs, HOLD)
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends close_notify and closes.
async fn close<S: AsyncWrite + Unpin>(stream: &mut S) -> Ending {
    match stream.shutdown().await {
        Ok(()) => Ending::Clean,
        Err(_) => Ending::Unclean,
    }
}

async fn metrics_loop(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        // A slot first: while all are taken, new connections wait in the listen backlog.
        let slot = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            s = slots.clone().acquire_owned() => s,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut tcp, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                http::read_request(&mut tcp, &mut buf),
            )
            .await;
            let (status, body) = match read {
                Ok(Ok(req)) if req.path == "/metrics" => {
                    let tiers: Vec<_> = shared
                        .tls
                        .cache
                        .tiers()
                        .iter()
                        .map(|tier| (tier.name().to_owned(), tier.metrics()))
                        .collect();
                    let cache = shared.tls.cache.stats();
                    let tickets = shared.tls.ticket_metrics(shared.settings.tickets);
                    let mut body = shared.metrics.render(&cache, &tiers, &tickets);
                    body.push_str(&shared.acceptor.chooser().render_metrics());
                    if shared.settings.early.enabled() {
                        let counters = shared.acceptor.early_data_counters();
                        shared.early_metrics.render(counters, &mut body);
                    }
                    if !shared.settings.proxy_protocol_from.is_empty() {
                        shared.proxy_metrics.render(&mut body);
                    }
                    if let Some(log) = &shared.access_log {
                        body.push_str(&log.render_metrics());
                    }
                    ("200 OK", body)
                }
                Ok(Ok(req)) if req.path == "/healthz" => {
                    let (status, body) = health(shared.ready.load(Ordering::Acquire));
                    (status, body.to_owned())
                }
                Ok(Ok(_)) => ("404 Not Found", "not found\n".to_owned()),
                _ => return,
            };
            let _ = http::write_response(
                &mut tcp,
                status,
                "text/plain; version=0.0.4",
                body.as_bytes(),
                false,
                false,
            )
            .await;
            let _ = tcp.shutdown().await;
        });
    }
}

/// The answer of `/healthz`: 503 until the listeners serve, 200 after.
fn health(ready: bool) -> (&'static str, &'static str) {
    if ready {
        ("200 OK", "ok\n")
    } else {
        ("503 Service Unavailable", "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_is_not_ready_until_the_listeners_serve() {
        assert_eq!(health(false).0, "503 Service Unavailable");
        assert_eq!(health(true), ("200 OK", "ok\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        for count in [1, 2] {
            let group = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), count).unwrap();
            assert_eq!(group.len(), count);
            let listener = &group[0];
            listener.set_nonblocking(false).unwrap();
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            // With SO_REUSEPORT the kernel picks the socket: accept on the one that has it.
            let accepted = group
                .iter()
                .find_map(|l| {
                    l.set_nonblocking(true).unwrap();
                    (0..200).find_map(|_| match l.accept() {
                        Ok((tcp, _)) => Some(tcp),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            None
                        }
                    })
                })
                .unwrap();
            assert!(accepted.nodelay().unwrap(), "{count} listeners");
        }
    }
}
