//! TLS 1.3 early data (0-RTT) on the server: what was decided for a connection
//! ([`EarlyData`]), and [`ServerIo`], the server's TLS stream, which drives rustls by hand when
//! a client sends early data, so that the application reads it (tokio-rustls has no
//! server-side early data) and may answer it as 0.5-RTT data, before the client's Finished.
//!
//! Early data is accepted only when the ticket it comes with is known to be used once: taken
//! for this connection by the authoritative tier (Redis's atomic take in a fleet), or by the
//! local tiers of a server with no shared one. Anything else gets a configuration with
//! `max_early_data_size = 0` (the handshake goes on, early data is refused): see
//! [`ServerContext::with_early_data`](crate::ServerContext::with_early_data).

use core::pin::Pin;
use core::task::{Context, Poll};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::connection::ConnectionSessions;
use crate::rewind::Rewind;

/// What became of a connection's early data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyData {
    /// The ClientHello offered none (or could not be read).
    NotOffered,
    /// Accepted: the application reads it first, from the stream.
    Accepted,
    /// Offered and refused; the handshake went on without it (the client sends it again
    /// after the handshake).
    Rejected(EarlyRejection),
}

impl EarlyData {
    /// Whether the client offered early data.
    pub fn offered(self) -> bool {
        self != EarlyData::NotOffered
    }
}

/// Why early data was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EarlyRejection {
    /// The context takes no early data: not configured, stateless tickets, or TLS 1.2.
    Disabled,
    /// The single use of the ticket could not be confirmed: the shared tier had no such
    /// ticket (taken already: a replay), did not answer within the deadline, or the ticket
    /// was not found where it was taken.
    NotConfirmed,
    /// The shared tier's circuit breaker is open: nothing can be confirmed.
    BreakerOpen,
    /// The ClientHello offered early data without a stateful ticket to resume with.
    NotOfferedWithTicket,
    /// The ticket resumed, but rustls refused its early data: not the first identity, too
    /// old, issued without early data, or another ALPN protocol or cipher suite.
    Refused,
}

impl EarlyRejection {
    /// Every reason, for metrics.
    pub const ALL: [EarlyRejection; 5] = [
        EarlyRejection::Disabled,
        EarlyRejection::NotConfirmed,
        EarlyRejection::BreakerOpen,
        EarlyRejection::NotOfferedWithTicket,
        EarlyRejection::Refused,
    ];

    /// A short name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EarlyRejection::Disabled => "disabled",
            EarlyRejection::NotConfirmed => "not_confirmed",
            EarlyRejection::BreakerOpen => "breaker_open",
            EarlyRejection::NotOfferedWithTicket => "not_offered_with_ticket",
            EarlyRejection::Refused => "refused",
        }
    }
}

/// What an [`Acceptor`](crate::Acceptor) counted of early data, as it decided: a replay whose
/// handshake never completes is counted too.
#[derive(Debug, Default)]
pub struct EarlyCounters {
    accepted: AtomicU64,
    rejected: [AtomicU64; EarlyRejection::ALL.len()],
}

impl EarlyCounters {
    pub(crate) fn count(&self, early: EarlyData) {
        let counter = match early {
            EarlyData::NotOffered => return,
            EarlyData::Accepted => &self.accepted,
            EarlyData::Rejected(why) => {
                let i = EarlyRejection::ALL
                    .iter()
                    .position(|r| *r == why)
                    .unwrap_or(0);
                match self.rejected.get(i) {
                    Some(c) => c,
                    None => return,
                }
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// ClientHellos that offered early data.
    pub fn offered(&self) -> u64 {
        self.accepted()
            + EarlyRejection::ALL
                .iter()
                .map(|r| self.rejected(*r))
                .sum::<u64>()
    }

    /// Connections whose early data was accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections whose early data was refused for `why`.
    pub fn rejected(&self, why: EarlyRejection) -> u64 {
        EarlyRejection::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.rejected.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The server's side of an accepted TLS connection, under its
/// [`SessionStream`](crate::SessionStream): tokio-rustls's stream, or, for a client that sent
/// early data, a rustls connection driven by hand. Both give the socket and the rustls
/// connection with [`get_ref`](Self::get_ref) and [`get_mut`](Self::get_mut), as
/// tokio-rustls's stream does.
#[derive(Debug)]
pub enum ServerIo {
    /// A connection without early data: tokio-rustls, handshake complete.
    Tokio(tokio_rustls::server::TlsStream<Rewind<TcpStream>>),
    /// A connection whose client sent early data: the application reads that data first. Its
    /// handshake may still be waiting for the client's Finished: reads complete it.
    Driven(Driven),
}

impl ServerIo {
    /// The socket and the rustls connection.
    pub fn get_ref(&self) -> (&Rewind<TcpStream>, &ServerConnection) {
        match self {
            ServerIo::Tokio(s) => s.get_ref(),
            ServerIo::Driven(d) => (&d.io, &d.conn),
        }
    }

    /// The socket and the rustls connection, mutably.
    pub fn get_mut(&mut self) -> (&mut Rewind<TcpStream>, &mut ServerConnection) {
        match self {
            ServerIo::Tokio(s) => s.get_mut(),
            ServerIo::Driven(d) => (&mut d.io, &mut d.conn),
        }
    }

    /// How many bytes of early data the application has read so far: the first bytes of the
    /// stream, up to this count, came in early data (a request that starts before it arrived
    /// in 0-RTT).
    pub fn early_data_read(&self) -> u64 {
        match self {
            ServerIo::Tokio(_) => 0,
            ServerIo::Driven(d) => d.early_read.load(Ordering::Relaxed),
        }
    }

    /// The counter behind [`early_data_read`](Self::early_data_read), to read while the stream
    /// is borrowed elsewhere.
    pub fn early_data_counter(&self) -> Option<Arc<AtomicU64>> {
        match self {
            ServerIo::Tokio(_) => None,
            ServerIo::Driven(d) => Some(Arc::clone(&d.early_read)),
        }
    }

    /// Completes the handshake, if a client that sent early data has not finished it yet:
    /// reads its Finished (what it sends after is kept for later reads) and sends its tickets.
    /// Call it before closing the connection by hand: [`poll_shutdown`](AsyncWrite::poll_shutdown)
    /// does it itself. Not bounded by itself: the caller's timeout bounds it.
    pub async fn complete_handshake(&mut self) -> io::Result<()> {
        match self {
            ServerIo::Tokio(_) => Ok(()),
            ServerIo::Driven(d) => d.drive(false).await,
        }
    }

    /// Whether the connection failed because the client sent more early data than allowed
    /// (a fatal error of the connection in rustls).
    pub fn early_data_overflowed(&self) -> bool {
        matches!(self, ServerIo::Driven(d) if d.overflowed)
    }
}

/// A rustls server connection over the socket, driven by hand: what tokio-rustls does, plus
/// the early data, read before the rest.
pub struct Driven {
    io: Rewind<TcpStream>,
    conn: ServerConnection,
    sessions: ConnectionSessions,
    /// Early data is given to the application only once the handshake completed.
    hold: bool,
    early_read: Arc<AtomicU64>,
    /// The socket reached its end.
    eof: bool,
    close_sent: bool,
    overflowed: bool,
}

impl core::fmt::Debug for Driven {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driven")
            .field("handshaking", &self.conn.is_handshaking())
            .field("hold", &self.hold)
            .field("early_read", &self.early_read.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A blocking-style reader over an async one: `WouldBlock` when it would wait.
struct SyncIo<'a, 'b> {
    io: &'a mut Rewind<TcpStream>,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl Driven {
    pub(crate) fn new(
        io: Rewind<TcpStream>,
        conn: ServerConnection,
        sessions: ConnectionSessions,
        hold: bool,
    ) -> Self {
        Self {
            io,
            conn,
            sessions,
            hold,
            early_read: Arc::new(AtomicU64::new(0)),
            eof: false,
            close_sent: false,
            overflowed: false,
        }
    }

    /// Whether rustls accepted the client's early data.
    pub(crate) fn early_accepted(&mut self) -> bool {
        self.conn.early_data().is_some()
    }

    /// The rustls connection.
    pub(crate) fn conn(&self) -> &ServerConnection {
        &self.conn
    }

    /// Writes what rustls has to send, until it has nothing more or the socket is full.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bounded: each round writes at least one byte of what rustls holds, or returns.
        while self.conn.wants_write() {
            let mut out = SyncIo {
                io: &mut self.io,
                cx,
            };
            match would_block(self.conn.write_tls(&mut out)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one chunk of TLS from the socket and processes it: `Ok(false)` at the socket's
    /// end (rustls is told).
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let read = {
            let mut input = SyncIo {
                io: &mut self.io,
                cx,
            };
            match would_block(self.conn.read_tls(&mut input)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.sessions.process(&mut self.conn) {
            if matches!(
                e,
                rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::TooMuchEarlyDataReceived)
            ) {
                self.overflowed = true;
            }
            // The alert rustls queued, if the socket takes it now.
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n > 0))
    }

    /// Drives the handshake: until it completes, or, with `until_early`, until the server's
    /// flight went out and rustls accepted the early data (the application may read it and
    /// answer at once).
    pub(crate) async fn drive(&mut self, until_early: bool) -> io::Result<()> {
        core::future::poll_fn(|cx| self.poll_drive(cx, until_early)).await
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>, until_early: bool) -> Poll<io::Result<()>> {
        // Bounded by what the client sends: each round reads from the socket or returns.
        loop {
            match self.poll_write_tls(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if !self.conn.is_handshaking() || (until_early && self.early_accepted()) {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            match self.poll_read_tls(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Copies early data into `buf`, if the application may have it now: true if it did.
    fn read_early(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.hold && self.conn.is_handshaking() {
            return false;
        }
        let Some(mut early) = self.conn.early_data() else {
            return false;
        };
        let n = match early.read(buf.initialize_unfilled()) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return false;
        }
        buf.advance(n);
        self.early_read.fetch_add(n as u64, Ordering::Relaxed);
        true
    }
}

impl AsyncRead for Driven {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bounded by what the client sends: each round reads from the socket or returns.
        loop {
            if this.read_early(buf) {
                return Poll::Ready(Ok(()));
            }
            if !this.hold || !this.conn.is_handshaking() {
                match this.conn.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if this.eof {
                // rustls knows: its reader said how the stream ended, unless the handshake
                // never completed.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            match this.poll_read_tls(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {
                    // The handshake's last messages, tickets: sent when the socket takes them,
                    // or with the next write.
                    if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Driven {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // At most three rounds: a write, a flush that makes room, a write.
        for _ in 0..3 {
            let n = this.conn.writer().write(buf)?;
            let flushed = this.poll_write_tls(cx);
            if n > 0 || buf.is_empty() {
                if let Poll::Ready(Err(e)) = flushed {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            match flushed {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if this.conn.is_handshaking() => {
                    // rustls holds the plaintext until the handshake completes: drive it.
                    match this.poll_read_tls(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(false)) => {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                        }
                        Poll::Ready(Ok(true)) => {}
                    }
                }
                Poll::Ready(Ok(())) => {}
            }
        }
        Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        match this.poll_write_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The handshake first: the client's Finished read, its tickets sent. Closed before,
        // the connection would reset what the client still sends, and leave it no ticket.
        if !this.close_sent {
            match this.poll_drive(cx, false) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if !this.close_sent {
            this.conn.send_close_notify();
            this.close_sent = true;
        }
        match this.poll_write_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tokio(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Driven(d) => Pin::new(d).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tokio(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Driven(d) => Pin::new(d).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tokio(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Driven(d) => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                Pin::new(d).poll_write(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Tokio(s) => s.is_write_vectored(),
            ServerIo::Driven(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tokio(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Driven(d) => Pin::new(d).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tokio(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Driven(d) => Pin::new(d).poll_shutdown(cx),
        }
    }
}
