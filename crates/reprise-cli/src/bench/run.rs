//! How `reprise bench` drives the handshakes: the workers, one connection at a time each, and
//! the tallies they share.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::net::TcpStream;

use super::plan::{Plan, Stop};
use super::report::show_progress;
use super::request::Request;
use crate::client_conn::ClientConn;

/// How long the TCP connect and the TLS handshake of one connection may take together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the exchange of close_notify alerts may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the server's TCP FIN after its close_notify.
const FIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a worker pauses after a failed attempt, so that a dead server is not hammered in
/// a tight loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);
/// Distinct failure reasons kept; further ones are counted as "other".
const MAX_REASONS: usize = 16;

/// Latencies in microseconds, up to an hour, to three significant digits.
fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("the bounds are constant and valid"),
    }
}

/// What the workers share: the target, the stopping rule, and the tallies.
pub(super) struct Shared {
    /// The servers, in rotation order.
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    pub(super) stop: Stop,
    /// Attempts started, for [`Stop::Connections`].
    claimed: AtomicU64,
    /// When the run ends, for [`Stop::After`].
    deadline: Option<tokio::time::Instant>,
    pub(super) handshakes: AtomicU64,
    pub(super) resumed: AtomicU64,
    pub(super) failures: AtomicU64,
    unclean_closes: AtomicU64,
    abrupt_closes: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
    /// With `--early-data`: the request every connection sends.
    request: Option<Request>,
    /// Connections that sent early data, and those whose early data the server accepted.
    early_sent: AtomicU64,
    early_accepted: AtomicU64,
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
        match done.close {
            Close::Clean => {}
            Close::Unclean => drop(self.unclean_closes.fetch_add(1, Ordering::Relaxed)),
            Close::Abrupt => drop(self.abrupt_closes.fetch_add(1, Ordering::Relaxed)),
        }
        if done.early_sent {
            self.early_sent.fetch_add(1, Ordering::Relaxed);
        }
        if done.early_accepted {
            self.early_accepted.fetch_add(1, Ordering::Relaxed);
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
    close: Close,
    /// With `--early-data`: from the start of the TCP connect to the response's first byte.
    ttfb: Option<Duration>,
    early_sent: bool,
    early_accepted: bool,
}

/// How a connection whose handshake completed ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// close_notify alerts were exchanged.
    Clean,
    /// They were meant to be, but were not (the server closed without one, or timed out).
    Unclean,
    /// On purpose (`--abrupt`): a bare TCP close, without close_notify.
    Abrupt,
}

/// Which of a worker's connections close abruptly: as close to `share` of them as whole
/// connections allow, spread evenly (with a share of one half, every second one). Counted in
/// millionths, so that a share such as 0.3 comes out exact.
struct AbruptPicker {
    millionths: u64,
    owed: u64,
}

impl AbruptPicker {
    const WHOLE: u64 = 1_000_000;

    /// `share` is from 0 to 1 (checked by the plan; anything else is clamped).
    fn new(share: f64) -> Self {
        let millionths = (share.clamp(0.0, 1.0) * Self::WHOLE as f64).round() as u64;
        Self {
            millionths,
            owed: 0,
        }
    }

    /// Whether the next connection closes abruptly.
    fn next(&mut self) -> bool {
        self.owed += self.millionths;
        if self.owed >= Self::WHOLE {
            self.owed -= Self::WHOLE;
            true
        } else {
            false
        }
    }
}

/// What the run produced.
pub(super) struct Outcome {
    pub(super) elapsed: Duration,
    pub(super) handshakes: u64,
    pub(super) resumed: u64,
    pub(super) failures: u64,
    pub(super) unclean_closes: u64,
    pub(super) abrupt_closes: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) reasons: BTreeMap<String, u64>,
    /// With `--early-data`: times to first byte, and the early data sent and accepted.
    pub(super) ttfb: Option<Histogram<u64>>,
    pub(super) early_sent: u64,
    pub(super) early_accepted: u64,
}

/// Runs the workers until the stopping rule says so.
pub(super) async fn execute(plan: &Plan) -> anyhow::Result<Outcome> {
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
        abrupt_closes: AtomicU64::new(0),
        reasons: Mutex::new(BTreeMap::new()),
        request: plan.request.clone(),
        early_sent: AtomicU64::new(0),
        early_accepted: AtomicU64::new(0),
    });
    let progress = (!plan.json && io::stderr().is_terminal())
        .then(|| tokio::spawn(show_progress(shared.clone(), start)));

    let full_config = Arc::new(plan.config.clone());
    let mut workers = Vec::with_capacity(plan.concurrency);
    for index in 0..plan.concurrency {
        let config = plan.worker_config(&full_config);
        let abrupt = AbruptPicker::new(plan.abrupt);
        workers.push(tokio::spawn(worker(shared.clone(), config, index, abrupt)));
    }
    let mut joined = Ok(());
    let mut latency = new_histogram();
    let mut ttfb = new_histogram();
    for w in workers {
        match w.await {
            // The histograms have the same bounds, so adding cannot fail.
            Ok((h, t)) => {
                let _ = latency.add(&h);
                let _ = ttfb.add(&t);
            }
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
        abrupt_closes: shared.abrupt_closes.load(Ordering::Relaxed),
        latency,
        reasons,
        ttfb: plan.request.is_some().then_some(ttfb),
        early_sent: shared.early_sent.load(Ordering::Relaxed),
        early_accepted: shared.early_accepted.load(Ordering::Relaxed),
    })
}

/// One worker: one connection at a time until the stopping rule says so. Each attempt is
/// bounded by its timeouts, and a `--duration` run abandons the attempt in flight at the end.
/// With several servers, worker `index` starts at server `index` and moves to the next one on
/// each connection. Returns the worker's latencies and times to first byte, in microseconds.
async fn worker(
    shared: Arc<Shared>,
    config: Arc<ClientConfig>,
    index: usize,
    mut abrupt: AbruptPicker,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut latency = new_histogram();
    let mut ttfb = new_histogram();
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
            o = attempt(&shared, &config, shared.addrs[next % shared.addrs.len()], abrupt.next()) => o,
        };
        next = next.wrapping_add(1);
        match outcome {
            Ok(done) => {
                let micros = u64::try_from(done.latency.as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
                if let Some(t) = done.ttfb {
                    let micros = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
                    ttfb.saturating_record(micros.max(1));
                }
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
    (latency, ttfb)
}

/// One connection: connect, handshake, close (with close_notify, or a bare TCP close when
/// `abrupt`). A failure is returned as a short reason.
async fn attempt(
    shared: &Shared,
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    abrupt: bool,
) -> Result<Done, String> {
    let start = tokio::time::Instant::now();
    let deadline = start + HANDSHAKE_TIMEOUT;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {}", e.kind())),
        Err(_) => return Err("connect: timed out".to_owned()),
    };
    let _ = tcp.set_nodelay(true);
    let request = shared.request.as_ref();
    let early = request
        .filter(|r| r.early)
        .map_or(&[][..], |r| &r.bytes[..]);
    let name = shared.server_name.clone();
    let handshake = ClientConn::handshake_with(tcp, config.clone(), name, early);
    let (mut tls, sent) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(handshake_reason(&e)),
        Err(_) => return Err("handshake: timed out".to_owned()),
    };
    let latency = start.elapsed();
    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let early_accepted = sent > 0 && tls.is_early_data_accepted();
    let ttfb = match request {
        None => None,
        Some(r) => {
            // What the server did not take as early data goes now.
            let rest = if early_accepted {
                r.bytes.get(sent..).unwrap_or_default()
            } else {
                &r.bytes[..]
            };
            let answered = async {
                tls.send(rest).await?;
                tls.first_byte().await
            };
            match tokio::time::timeout_at(deadline, answered).await {
                Ok(Ok(())) => Some(start.elapsed()),
                Ok(Err(e)) => return Err(format!("request: {}", e.kind())),
                Err(_) => return Err("request: timed out".to_owned()),
            }
        }
    };
    if abrupt {
        // The client closes first, so it keeps the TIME_WAIT state; on loopback Linux reuses
        // such ports for new connections (net.ipv4.tcp_tw_reuse).
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tls.close_abruptly()).await;
        return Ok(Done {
            latency,
            resumed,
            close: Close::Abrupt,
            ttfb,
            early_sent: sent > 0,
            early_accepted,
        });
    }
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
        close: if clean { Close::Clean } else { Close::Unclean },
        ttfb,
        early_sent: sent > 0,
        early_accepted,
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

#[cfg(test)]
mod tests {
    use super::super::trust::tests::server_config;
    use super::super::trust::{client_config, Trust};
    use super::*;
    use crate::cli::TlsVersion;

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
            abrupt_closes: AtomicU64::new(0),
            reasons: Mutex::new(BTreeMap::new()),
            request: None,
            early_sent: AtomicU64::new(0),
            early_accepted: AtomicU64::new(0),
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
    fn abrupt_picks_spread_the_share() {
        for (share, of_ten) in [(0.0, 0), (0.5, 5), (0.3, 3), (1.0, 10)] {
            let mut picker = AbruptPicker::new(share);
            let picks: Vec<bool> = (0..10).map(|_| picker.next()).collect();
            assert_eq!(picks.iter().filter(|&&p| p).count(), of_ten, "{share}");
            if share == 0.5 {
                assert_eq!(&picks[..4], [false, true, false, true]);
            }
        }
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

    /// A rustls server on a loopback socket, driven one blocking read at a time: once the read
    /// that completes its handshake (the client's Finished) has been processed, it reports
    /// whether that same read also held the client's close_notify. Then it answers with its
    /// own close_notify and closes.
    fn one_read_server(
        config: Arc<rustls::ServerConfig>,
    ) -> (SocketAddr, std::thread::JoinHandle<bool>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            for _ in 0..16 {
                while conn.wants_write() {
                    conn.write_tls(&mut tcp).unwrap();
                }
                if !conn.is_handshaking() {
                    // Nothing read since the handshake completed: was the alert in that read?
                    let mut buf = [0u8; 64];
                    let closed = matches!(conn.reader().read(&mut buf), Ok(0));
                    conn.send_close_notify();
                    while conn.wants_write() {
                        conn.write_tls(&mut tcp).unwrap();
                    }
                    tcp.flush().unwrap();
                    return closed;
                }
                assert_ne!(
                    conn.read_tls(&mut tcp).unwrap(),
                    0,
                    "the client closed mid-handshake"
                );
                conn.process_new_packets().unwrap();
            }
            panic!("the handshake did not finish");
        });
        (addr, server)
    }

    #[tokio::test]
    async fn the_close_notify_leaves_with_the_last_flight() {
        // TLS 1.3: the client's Finished is its last flight, held until the close.
        let (addr, server) = one_read_server(server_config(TlsVersion::Tls13, true));
        let config = Arc::new(client_config(TlsVersion::Tls13, Trust::Anything, &[]).unwrap());
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
        assert!(same_read);
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
        let config = Arc::new(client_config(TlsVersion::Tls13, Trust::Anything, &[]).unwrap());
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
}
