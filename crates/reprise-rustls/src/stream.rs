//! [`SessionStream`]: an async TLS stream that reports its own failures to the connection's
//! [`ConnectionSessions`], so that only a failed connection loses its sessions.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;

use reprise::InlineSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::{is_tls_failure, ConnectionSessions};

/// An `AsyncRead + AsyncWrite` TLS stream (a `tokio-rustls` stream, or anything that reports
/// TLS errors as [`io::ErrorKind::InvalidData`]) together with its connection's
/// [`ConnectionSessions`].
///
/// When the TLS layer fails after the handshake (a fatal alert received or sent, a decrypt or
/// protocol error: `InvalidData`), the stream calls [`ConnectionSessions::failed`], which
/// removes the connection's sessions. A peer that closes without close_notify
/// (`UnexpectedEof`), a reset, a timeout, or simply dropping the stream keep them. Every poll
/// runs inside [`ConnectionSessions::enter`], so sessions that arrive after the handshake (a
/// client's TLS 1.3 tickets) are recorded too.
///
/// ```no_run
/// use std::sync::Arc;
/// use reprise_rustls::{ServerStore, SessionStream};
/// use tokio::io::AsyncWriteExt;
///
/// async fn serve_one(
///     store: &ServerStore,
///     acceptor: &tokio_rustls::TlsAcceptor,
///     tcp: tokio::net::TcpStream,
/// ) -> std::io::Result<()> {
///     let sessions = store.connection();
///     let tls = sessions.instrument(acceptor.accept(tcp)).await?;
///     // Notes the end of the handshake (full or resumed) and takes the handle along.
///     let mut stream = SessionStream::server(tls, sessions);
///     stream.write_all(b"hello\n").await?;
///     stream.shutdown().await
///     // A fatal alert from the client would have removed the session; a FIN does not.
/// }
/// ```
#[derive(Debug)]
pub struct SessionStream<S, P: Send + Sync + 'static = InlineSecret> {
    inner: S,
    sessions: ConnectionSessions<P>,
}

impl<S, P: Send + Sync + 'static> SessionStream<S, P> {
    /// Wraps a stream whose handshake is done. Report the handshake's completion to `sessions`
    /// first ([`ConnectionSessions::handshake_completed`]), or use [`server`](SessionStream::server)
    /// or [`client`](SessionStream::client), which do it.
    pub fn new(inner: S, sessions: ConnectionSessions<P>) -> Self {
        Self { inner, sessions }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably. Errors of I/O done through it directly are not seen by the
    /// wrapper: report a failure with [`ConnectionSessions::failed`].
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The connection's handle: to report an abort ([`ConnectionSessions::failed`]), or ask
    /// whether the connection failed.
    pub fn sessions(&self) -> &ConnectionSessions<P> {
        &self.sessions
    }

    /// The stream and the handle, apart.
    pub fn into_parts(self) -> (S, ConnectionSessions<P>) {
        (self.inner, self.sessions)
    }

    /// Notes a TLS failure in an I/O result.
    fn check<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &polled {
            if is_tls_failure(e) {
                self.sessions.failed();
            }
        }
        polled
    }
}

impl<IO> SessionStream<tokio_rustls::server::TlsStream<IO>> {
    /// Wraps an accepted `tokio-rustls` server stream, and reports the end of its handshake
    /// (full or resumed) to `sessions`.
    pub fn server(
        stream: tokio_rustls::server::TlsStream<IO>,
        sessions: ConnectionSessions,
    ) -> Self {
        sessions.handshake_completed(stream.get_ref().1.handshake_kind());
        Self::new(stream, sessions)
    }
}

impl SessionStream<crate::early::ServerIo> {
    /// Wraps an accepted server stream whose handshake is complete, and reports the end of its
    /// handshake (full or resumed) to `sessions`.
    pub fn server_io(stream: crate::early::ServerIo, sessions: ConnectionSessions) -> Self {
        sessions.handshake_completed(stream.get_ref().1.handshake_kind());
        Self::new(stream, sessions)
    }
}

impl<IO> SessionStream<tokio_rustls::client::TlsStream<IO>, crate::ClientSession> {
    /// Wraps a connected `tokio-rustls` client stream, and reports the end of its handshake
    /// (full or resumed) to `sessions`.
    pub fn client(
        stream: tokio_rustls::client::TlsStream<IO>,
        sessions: ConnectionSessions<crate::ClientSession>,
    ) -> Self {
        sessions.handshake_completed(stream.get_ref().1.handshake_kind());
        Self::new(stream, sessions)
    }
}

impl<S: AsyncRead + Unpin, P: Send + Sync + 'static> AsyncRead for SessionStream<S, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = buf.remaining();
        let filled = buf.filled().len();
        let inner = &mut this.inner;
        let polled = this.sessions.enter(|| Pin::new(inner).poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = polled {
            if room > 0 && buf.filled().len() == filled {
                // End of stream without an error: the peer's close_notify.
                this.sessions.closed_cleanly();
            }
        }
        this.check(polled)
    }
}

impl<S: AsyncWrite + Unpin, P: Send + Sync + 'static> AsyncWrite for SessionStream<S, P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        let polled = this.sessions.enter(|| Pin::new(inner).poll_write(cx, buf));
        this.check(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        let polled = this
            .sessions
            .enter(|| Pin::new(inner).poll_write_vectored(cx, bufs));
        this.check(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        let polled = this.sessions.enter(|| Pin::new(inner).poll_flush(cx));
        this.check(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        let polled = this.sessions.enter(|| Pin::new(inner).poll_shutdown(cx));
        if let Poll::Ready(Ok(())) = polled {
            // Our close_notify went out.
            this.sessions.closed_cleanly();
        }
        this.check(polled)
    }
}
