//! The access log of `reprise serve` (`--access-log FILE|-`): one line per connection when it
//! ends, in text or JSON, written by a thread of its own.
//!
//! A connection's task only fills a [`Record`] (copies of what it already holds, the SNI in
//! place) and pushes it onto a bounded queue under a lock held for that push; it never
//! allocates, formats, writes or waits on the writer. When the queue is full the line is
//! dropped and counted (`reprise_access_log_dropped_total`). The writer thread never waits on
//! the queue (a sender would then have to wake it, a system call per connection): it takes the
//! queued lines all at once every 50 ms, formats them, writes through a buffer,
//! flushes at least every second and at shutdown, and opens the file again on SIGHUP (for log
//! rotation).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Lines waiting for the writer, at most; more are dropped and counted. Enough for
/// [`DRAIN_EVERY`] at over 300 000 connections a second. The records wait by value (176 bytes
/// each, no heap of their own): under 3 MB when full, and as much again for the batch being
/// written.
const QUEUE: usize = 16_384;

/// How often the writer takes the queued lines.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// The longest a written line waits in the buffer before it reaches the file.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The standard output (`-`).
    Stdout,
    /// A file, opened for appending (created if missing).
    File(PathBuf),
}

impl Target {
    /// `-` is the standard output; anything else a file.
    pub fn parse(path: &Path) -> Self {
        if path.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(path.to_owned())
        }
    }
}

/// The format of the lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `key=value` fields separated by spaces, after the time.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The access-log settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where the lines go.
    pub target: Target,
    /// Their format.
    pub format: Format,
}

/// How a handshake went, as far as resumption goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    /// No handshake completed.
    None,
    /// A full handshake.
    Full,
    /// TLS 1.2, resumed by session id from the cache.
    SessionId,
    /// TLS 1.3, resumed with a stateful ticket (a session kept in the cache).
    StatefulTicket,
    /// TLS 1.2 or 1.3, resumed with a ticket the ticketer decrypted (no cache involved).
    StatelessTicket,
}

impl Resumption {
    /// The field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Resumption::None => "none",
            Resumption::Full => "full",
            Resumption::SessionId => "session_id",
            Resumption::StatefulTicket => "stateful_ticket",
            Resumption::StatelessTicket => "stateless_ticket",
        }
    }

    /// What a completed handshake was: `stateful` says whether the connection resumed a
    /// session of the cache (its handle holds one), as opposed to one its ticket carried.
    pub fn of(
        kind: Option<rustls::HandshakeKind>,
        version: Option<rustls::ProtocolVersion>,
        stateful: bool,
    ) -> Self {
        if kind != Some(rustls::HandshakeKind::Resumed) {
            return Resumption::Full;
        }
        match (stateful, version) {
            (false, _) => Resumption::StatelessTicket,
            (true, Some(rustls::ProtocolVersion::TLSv1_3)) => Resumption::StatefulTicket,
            (true, _) => Resumption::SessionId,
        }
    }
}

/// Where a resumed session of the cache was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Already in memory.
    Memory,
    /// Brought from a tier (disk, Redis) before the handshake.
    Tier,
}

impl Source {
    /// The field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Tier => "tier",
        }
    }

    /// For a stateful resumption, whether the prefetch brought its session (a TLS 1.2 session
    /// into memory, or a TLS 1.3 ticket the tier took for the connection).
    pub fn of(resumption: Resumption, prefetch: reprise_rustls::Prefetch) -> Option<Self> {
        use reprise_rustls::Prefetch;
        match resumption {
            Resumption::SessionId | Resumption::StatefulTicket => Some(match prefetch {
                Prefetch::Session | Prefetch::Ticket => Source::Tier,
                _ => Source::Memory,
            }),
            _ => None,
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client sent close_notify (with `--upstream`: a close_notify went either way).
    CloseNotify,
    /// The server closed first, with close_notify (a `Connection: close` request, a bad one).
    ServerClose,
    /// The client closed the connection without close_notify.
    Eof,
    /// The connection was reset.
    Reset,
    /// It stayed idle past `--idle-timeout`.
    IdleTimeout,
    /// The server was shutting down.
    Shutdown,
    /// A TLS failure after the handshake (a fatal alert, a bad record).
    TlsError,
    /// Another socket error.
    IoError,
    /// The handshake did not complete; the record's `error` says why.
    HandshakeFailed,
}

impl End {
    /// The field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            End::CloseNotify => "close_notify",
            End::ServerClose => "server_close",
            End::Eof => "eof",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
            End::TlsError => "tls_error",
            End::IoError => "io_error",
            End::HandshakeFailed => "handshake_failed",
        }
    }
}

/// The name of an accept error, for the `error` field.
pub fn accept_error(e: &reprise_rustls::AcceptError) -> &'static str {
    use reprise_rustls::AcceptError;
    match e {
        AcceptError::HelloTimeout => "hello_timeout",
        AcceptError::HandshakeTimeout => "handshake_timeout",
        e => crate::metrics::Failure::of_accept(e).as_str(),
    }
}

/// One connection, as the writer formats it. Holds no secret: names, numbers and an address.
#[derive(Debug)]
pub struct Record {
    /// When the connection ended.
    pub time: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The server name the client asked for, as rustls accepted it.
    pub sni: Sni,
    /// The negotiated version.
    pub version: Option<rustls::ProtocolVersion>,
    /// The negotiated cipher suite.
    pub suite: Option<rustls::CipherSuite>,
    /// Full, resumed and how, or no handshake.
    pub resumption: Resumption,
    /// For a resumption through the cache, where its session was.
    pub source: Option<Source>,
    /// From the accept to the end of the handshake (or to its failure).
    pub handshake: Duration,
    /// Application bytes received from the client (decrypted).
    pub bytes_in: u64,
    /// Application bytes sent to the client (before encryption).
    pub bytes_out: u64,
    /// How it ended.
    pub end: End,
    /// Why the handshake failed.
    pub error: Option<&'static str>,
}

/// A server name, held without a heap allocation when it is short (nearly all are): a
/// connection's task hands its record to the writer thread, and a buffer it allocated but the
/// writer freed would cost the allocator a cross-thread free per connection.
#[derive(Clone, Debug, Default)]
pub enum Sni {
    /// None was sent.
    #[default]
    None,
    /// Up to [`Sni::INLINE`] bytes, in place.
    Short {
        /// The name's length.
        len: u8,
        /// The name, then zeros.
        bytes: [u8; Sni::INLINE],
    },
    /// A longer name (rare: DNS names reach 253 bytes).
    Long(Box<str>),
}

impl Sni {
    /// The longest name held in place.
    pub const INLINE: usize = 62;

    /// The name, copied.
    pub fn new(name: Option<&str>) -> Self {
        match name {
            None => Sni::None,
            Some(n) if n.len() <= Self::INLINE => {
                let mut bytes = [0u8; Self::INLINE];
                bytes[..n.len()].copy_from_slice(n.as_bytes());
                // At most INLINE (62): fits a u8.
                Sni::Short {
                    len: n.len() as u8,
                    bytes,
                }
            }
            Some(n) => Sni::Long(n.into()),
        }
    }

    /// The name, if any.
    pub fn as_deref(&self) -> Option<&str> {
        match self {
            Sni::None => None,
            // Copied from a `&str` whole: always UTF-8.
            Sni::Short { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).ok(),
            Sni::Long(name) => Some(name),
        }
    }
}

/// What the connection tasks and the writer thread share.
struct Queue {
    /// Records waiting for the writer, which takes them all at once every [`DRAIN_EVERY`]: a
    /// connection's task holds the lock for one push, and the cache lines move between the
    /// cores once per batch rather than once per record.
    pending: Mutex<Vec<Record>>,
    dropped: AtomicU64,
    /// Set on SIGHUP: the writer opens its file again before its next line (a flag, so that a
    /// full queue cannot lose the request).
    reopen: AtomicBool,
    /// Set by [`AccessLog::close`]: the writer writes out what is pending, flushes and stops.
    closing: AtomicBool,
}

impl Queue {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        // A panic while holding the lock leaves a vector of whole records: still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side, shared by the connection tasks.
pub struct AccessLog {
    queue: Arc<Queue>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the target (an error names the file) and starts the writer thread.
    pub fn open(settings: &Settings) -> anyhow::Result<Self> {
        let out = Output::open(&settings.target)?;
        let queue = Arc::new(Queue {
            pending: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        let writer = Writer {
            queue: queue.clone(),
            out,
            target: settings.target.clone(),
            format: settings.format,
            line: String::with_capacity(512),
            failed: false,
        };
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .context("starting the access-log writer")?;
        Ok(Self {
            queue,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Offers a line to the writer, without waiting on it: dropped and counted if
    /// [`QUEUE`] lines are waiting already.
    pub fn log(&self, record: Record) {
        let mut pending = self.queue.pending();
        if pending.len() < QUEUE {
            pending.push(record);
        } else {
            drop(pending);
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the writer to open its file again (after a rotation).
    pub fn reopen(&self) {
        self.queue.reopen.store(true, Ordering::Release);
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// The metrics of the access log, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP reprise_access_log_dropped_total Access-log lines dropped because the writer could not keep up or the file could not be written.\n\
             # TYPE reprise_access_log_dropped_total counter\n\
             reprise_access_log_dropped_total {}\n",
            self.dropped()
        )
    }

    /// Writes out every queued line, flushes, and stops the writer (blocking: call it off the
    /// runtime's threads).
    pub fn close(&self) {
        self.queue.closing.store(true, Ordering::Release);
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The open target.
enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &Target) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Stdout => Output::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout())),
            Target::File(path) => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .with_context(|| format!("access-log {}: cannot open", path.display()))?;
                Output::File(BufWriter::with_capacity(64 * 1024, file))
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(w) => w,
        }
    }
}

/// The writer thread's state.
struct Writer {
    queue: Arc<Queue>,
    out: Output,
    target: Target,
    format: Format,
    /// One line, reused.
    line: String,
    /// Whether a write failed since the last success (logged once).
    failed: bool,
}

impl Writer {
    fn run(mut self) {
        let mut last_flush = Instant::now();
        let mut pending = false;
        let mut dropped_logged = 0;
        // The batch being written; swapped with the queue's vector, so that neither allocates
        // once both have grown to the busiest batch.
        let mut batch: Vec<Record> = Vec::new();
        loop {
            // Never waiting on the queue: a sender that found the writer waiting would have to
            // wake it, a system call and a context switch per connection. The lines are
            // drained in batches instead.
            std::thread::sleep(DRAIN_EVERY);
            if self.queue.reopen.swap(false, Ordering::AcqRel) {
                self.flush();
                pending = false;
                match Output::open(&self.target) {
                    Ok(out) => self.out = out,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "access log not reopened; writing to the file already open")
                    }
                }
            }
            // Read before the batch is taken: every line logged before `close` is in it.
            let closing =
                self.queue.closing.load(Ordering::Acquire) || Arc::strong_count(&self.queue) == 1;
            std::mem::swap(&mut *self.queue.pending(), &mut batch);
            for record in batch.drain(..) {
                self.line.clear();
                match self.format {
                    Format::Text => text(&record, &mut self.line),
                    Format::Json => json(&record, &mut self.line),
                }
                self.line.push('\n');
                let written = self.out.writer().write_all(self.line.as_bytes());
                self.written(written);
                pending = true;
            }
            if closing {
                self.flush();
                return;
            }
            if pending && last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                pending = false;
                last_flush = Instant::now();
                let dropped = self.queue.dropped.load(Ordering::Relaxed);
                if dropped > dropped_logged {
                    tracing::warn!(
                        dropped = dropped - dropped_logged,
                        "access-log lines dropped: the writer could not keep up"
                    );
                    dropped_logged = dropped;
                }
            }
        }
    }

    fn flush(&mut self) {
        let flushed = self.out.writer().flush();
        self.written(flushed);
    }

    /// Notes the result of a write: a failure is logged once (until a write succeeds again),
    /// and the line counted as dropped.
    fn written(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failed = false,
            Err(e) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.failed {
                    tracing::warn!(error = %e, "cannot write the access log");
                    self.failed = true;
                }
            }
        }
    }
}

thread_local! {
    /// The second formatted last and its `YYYY-MM-DDTHH:MM:SS`: the writer's lines come in
    /// bursts within one second, which then cost no date arithmetic.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `2026-12-03T14:39:15.123Z`.
pub fn rfc3339(time: SystemTime, out: &mut String) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, text) = SECOND.get();
    let second = if cached == secs {
        text
    } else {
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let mut fresh = String::with_capacity(19);
        let _ = write!(
            fresh,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            rest / 3600,
            rest / 60 % 60,
            rest % 60,
        );
        match <[u8; 19]>::try_from(fresh.as_bytes()) {
            Ok(bytes) => {
                SECOND.set((secs, bytes));
                bytes
            }
            // A year past 9999: not cached.
            Err(_) => {
                out.push_str(&fresh);
                push_millis(since.subsec_millis(), out);
                return;
            }
        }
    };
    // Always ASCII: written above from digits, dashes, colons and a `T`.
    out.push_str(std::str::from_utf8(&second).unwrap_or_default());
    push_millis(since.subsec_millis(), out);
}

/// `.mmmZ`.
fn push_millis(millis: u32, out: &mut String) {
    out.push('.');
    for digit in [millis / 100 % 10, millis / 10 % 10, millis % 10] {
        out.push(char::from_digit(digit, 10).unwrap_or('0'));
    }
    out.push('Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Counted in 400-year eras from 0000-03-01, so that the leap day ends each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn version_name(version: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match version? {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

fn suite_name(suite: Option<rustls::CipherSuite>) -> Option<&'static str> {
    suite?.as_str()
}

/// Writes a client-controlled value for the text format: printable ASCII but `\`, `"` and `=`
/// as is, every other byte as `\xHH`; `-` for nothing.
fn escaped(value: Option<&str>, out: &mut String) {
    let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'\\' | b'"' | b'=');
    match value {
        None | Some("") => out.push('-'),
        // The usual name needs no escape: one copy.
        Some(v) if v.bytes().all(plain) => out.push_str(v),
        Some(v) => {
            for b in v.bytes() {
                if plain(b) {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
}

/// A number in decimal, without the formatting machinery (the writer's lines are mostly
/// numbers).
fn push_u64(n: u64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        // A digit: always ASCII.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Digits only: always UTF-8.
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or_default());
}

/// `ip:port`, as `SocketAddr`'s `Display` writes it (`[ip]:port` for IPv6), an IPv4 address
/// without the formatting machinery.
fn push_addr(addr: SocketAddr, out: &mut String) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(u64::from(octet), out);
            }
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(':');
    push_u64(u64::from(addr.port()), out);
}

/// A duration in milliseconds with three decimals: `1.234`.
fn push_ms(d: Duration, out: &mut String) {
    // Integer arithmetic: cheaper than formatting a float.
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(micros / 1000, out);
    out.push('.');
    let frac = micros % 1000;
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        push_u64(digit, out);
    }
}

/// The text line (without its newline).
pub fn text(r: &Record, out: &mut String) {
    rfc3339(r.time, out);
    out.push_str(" client=");
    push_addr(r.client, out);
    out.push_str(" sni=");
    escaped(r.sni.as_deref(), out);
    for (key, value) in [
        (" version=", version_name(r.version).unwrap_or("-")),
        (" cipher=", suite_name(r.suite).unwrap_or("-")),
        (" resumed=", r.resumption.as_str()),
        (" from=", r.source.map_or("-", Source::as_str)),
    ] {
        out.push_str(key);
        out.push_str(value);
    }
    out.push_str(" handshake_ms=");
    push_ms(r.handshake, out);
    out.push_str(" bytes_in=");
    push_u64(r.bytes_in, out);
    out.push_str(" bytes_out=");
    push_u64(r.bytes_out, out);
    out.push_str(" end=");
    out.push_str(r.end.as_str());
    out.push_str(" error=");
    out.push_str(r.error.unwrap_or("-"));
}

/// A JSON string (with its quotes), or `null`: `"` and `\` escaped, control characters as
/// `\u00XX`, everything else as it is (a `&str` is valid UTF-8).
fn push_json_str(value: Option<&str>, out: &mut String) {
    let Some(value) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The JSON line (without its newline), written by hand: the fields in a fixed order, every
/// string escaped ([`push_json_str`]).
pub fn json(r: &Record, out: &mut String) {
    out.push_str("{\"time\":\"");
    rfc3339(r.time, out);
    out.push_str("\",\"client\":\"");
    push_addr(r.client, out);
    out.push_str("\",\"sni\":");
    push_json_str(r.sni.as_deref(), out);
    for (key, value) in [
        (",\"version\":", version_name(r.version)),
        (",\"cipher\":", suite_name(r.suite)),
        (",\"resumed\":", Some(r.resumption.as_str())),
        (",\"from\":", r.source.map(Source::as_str)),
    ] {
        out.push_str(key);
        push_json_str(value, out);
    }
    out.push_str(",\"handshake_ms\":");
    push_ms(r.handshake, out);
    out.push_str(",\"bytes_in\":");
    push_u64(r.bytes_in, out);
    out.push_str(",\"bytes_out\":");
    push_u64(r.bytes_out, out);
    out.push_str(",\"end\":");
    push_json_str(Some(r.end.as_str()), out);
    out.push_str(",\"error\":");
    push_json_str(r.error, out);
    out.push('}');
}

/// A stream that counts the application bytes read from it and written to it.
pub struct Counted<'a, S> {
    inner: &'a mut S,
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub written: u64,
}

impl<'a, S> Counted<'a, S> {
    /// Counts what goes through `inner`.
    pub fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read += n as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_millis(1_764_772_755_123),
            client: "192.0.2.7:40000".parse().unwrap_or_else(|_| unreachable!()),
            sni: Sni::new(Some("a\"b\\c=d e\u{1}é")),
            version: Some(rustls::ProtocolVersion::TLSv1_3),
            suite: Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            resumption: Resumption::StatefulTicket,
            source: Some(Source::Tier),
            handshake: Duration::from_micros(1234),
            bytes_in: 78,
            bytes_out: 120,
            end: End::CloseNotify,
            error: None,
        }
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        let mut s = String::new();
        rfc3339(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        rfc3339(
            UNIX_EPOCH + Duration::from_millis(1_764_772_755_123),
            &mut s,
        );
        assert_eq!(s, "2025-12-03T14:39:15.123Z");
        s.clear();
        // A leap day, and the day after.
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut s);
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        s.clear();
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_868_800), &mut s);
        assert_eq!(s, "2000-03-01T00:00:00.000Z");
        // The same second again (from the cache), other milliseconds.
        s.clear();
        rfc3339(UNIX_EPOCH + Duration::from_millis(951_868_800_042), &mut s);
        assert_eq!(s, "2000-03-01T00:00:00.042Z");
    }

    #[test]
    fn text_escapes_client_strings() {
        let mut s = String::new();
        text(&record(), &mut s);
        assert_eq!(
            s,
            "2025-12-03T14:39:15.123Z client=192.0.2.7:40000 sni=a\\x22b\\x5cc\\x3dd\\x20e\\x01\\xc3\\xa9 \
             version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 resumed=stateful_ticket from=tier \
             handshake_ms=1.234 bytes_in=78 bytes_out=120 end=close_notify error=-"
        );
        assert_eq!(s.split(" ").count(), 12);
    }

    #[test]
    fn addresses_and_numbers_are_written_as_display_writes_them() {
        for addr in [
            "192.0.2.7:40000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::1]:8443",
            "[::ffff:192.0.2.1]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap_or_else(|_| unreachable!());
            let mut s = String::new();
            push_addr(addr, &mut s);
            assert_eq!(s, addr.to_string());
        }
        for n in [0, 7, 10, 999, 1000, 65_535, u64::MAX] {
            let mut s = String::new();
            push_u64(n, &mut s);
            assert_eq!(s, n.to_string());
        }
        for (micros, text) in [
            (0, "0.000"),
            (1, "0.001"),
            (1234, "1.234"),
            (60_000_010, "60000.010"),
        ] {
            let mut s = String::new();
            push_ms(Duration::from_micros(micros), &mut s);
            assert_eq!(s, text);
        }
    }

    #[test]
    fn json_strings_escape_what_json_requires() -> anyhow::Result<()> {
        for text in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "\u{0}\u{1f}\u{7f}",
            "tab\tnl\n",
            "é☃𝄞",
        ] {
            let mut s = String::new();
            push_json_str(Some(text), &mut s);
            let back: String = serde_json::from_str(&s)?;
            assert_eq!(back, text, "{s}");
        }
        let mut record = record();
        record.client = "[2001:db8::1]:8443".parse()?;
        record.error = Some("timeout");
        let mut s = String::new();
        json(&record, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s)?;
        assert_eq!(v["client"], "[2001:db8::1]:8443");
        assert_eq!(v["error"], "timeout");
        assert_eq!(v["version"], "TLSv1.3");
        assert_eq!(v["bytes_out"], 120);
        Ok(())
    }

    #[test]
    fn server_names_short_and_long_come_back_whole() {
        let exact = "a".repeat(Sni::INLINE);
        let long = "b".repeat(Sni::INLINE + 1);
        for name in [
            None,
            Some(""),
            Some("web.test"),
            Some(exact.as_str()),
            Some(long.as_str()),
        ] {
            assert_eq!(Sni::new(name).as_deref(), name);
        }
        assert!(matches!(Sni::new(Some(&exact)), Sni::Short { .. }));
        assert!(matches!(Sni::new(Some(&long)), Sni::Long(_)));
        // The queue holds records by value: its memory is QUEUE times this, twice.
        assert!(
            std::mem::size_of::<Record>() <= 256,
            "{}",
            std::mem::size_of::<Record>()
        );
    }

    #[test]
    fn json_is_valid_and_round_trips_the_sni() -> anyhow::Result<()> {
        let mut s = String::new();
        json(&record(), &mut s);
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s)?;
        assert_eq!(v["sni"], "a\"b\\c=d e\u{1}é");
        assert_eq!(v["resumed"], "stateful_ticket");
        assert_eq!(v["from"], "tier");
        assert_eq!(v["handshake_ms"], 1.234);
        assert_eq!(v["error"], serde_json::Value::Null);
        Ok(())
    }

    #[test]
    fn resumption_kinds() {
        use rustls::{HandshakeKind as K, ProtocolVersion as V};
        use Resumption as R;
        assert_eq!(R::of(Some(K::Full), Some(V::TLSv1_3), true), R::Full);
        assert_eq!(
            R::of(Some(K::Resumed), Some(V::TLSv1_2), true),
            R::SessionId
        );
        assert_eq!(
            R::of(Some(K::Resumed), Some(V::TLSv1_3), true),
            R::StatefulTicket
        );
        assert_eq!(
            R::of(Some(K::Resumed), Some(V::TLSv1_2), false),
            R::StatelessTicket
        );
        use reprise_rustls::Prefetch as P;
        assert_eq!(Source::of(R::SessionId, P::Session), Some(Source::Tier));
        assert_eq!(
            Source::of(R::StatefulTicket, P::Nothing),
            Some(Source::Memory)
        );
        assert_eq!(Source::of(R::StatelessTicket, P::Ticket), None);
    }

    #[test]
    fn settings_from_the_file_and_the_flags() -> anyhow::Result<()> {
        use crate::cli::ServeArgs;
        use crate::config::Settings as ServeSettings;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("reprise.toml");
        std::fs::write(
            &config,
            "access-log = \"/var/log/a.log\"\naccess-log-format = \"json\"\n",
        )?;
        let resolve = |args: ServeArgs| {
            ServeSettings::resolve(ServeArgs {
                config: Some(config.clone()),
                ..args
            })
        };
        let s = resolve(ServeArgs::default())?;
        assert_eq!(
            s.access_log,
            Some(Settings {
                target: Target::File("/var/log/a.log".into()),
                format: Format::Json,
            })
        );
        let s = resolve(ServeArgs {
            access_log: Some("-".into()),
            access_log_format: Some(Format::Text),
            ..ServeArgs::default()
        })?;
        assert_eq!(
            s.access_log,
            Some(Settings {
                target: Target::Stdout,
                format: Format::Text,
            })
        );
        let off = ServeSettings::resolve(ServeArgs::default())?;
        assert_eq!(off.access_log, None);
        Ok(())
    }

    #[test]
    fn a_closed_log_has_written_every_line() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&Settings {
            target: Target::File(path.clone()),
            format: Format::Json,
        })?;
        // More than one batch's worth may be waiting at the close: all are written, in order.
        for i in 0..1000u64 {
            let mut r = record();
            r.bytes_in = i;
            log.log(r);
        }
        log.close();
        let text = std::fs::read_to_string(&path)?;
        let mut seen = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            seen.push(v["bytes_in"].as_u64());
        }
        assert_eq!(seen, (0..1000).map(Some).collect::<Vec<_>>());
        assert_eq!(log.dropped(), 0);
        Ok(())
    }
}
