//! The load generator's TLS connection: a rustls client driven over a tokio TCP stream by hand,
//! so that the client's last handshake flight and its close_notify leave in one write.
//!
//! `reprise bench` closes every connection right after its handshake. Through `tokio-rustls`
//! the client's Finished is written when the handshake completes and the close_notify in a
//! second write: two TCP segments, each a round of TCP work for the client and the server.
//! Here the handshake stops as soon as the client's side of it is complete, and the flight it
//! still has to send waits for the close_notify queued behind it.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A client connection whose handshake is complete on the client's side.
pub struct ClientConn {
    tcp: TcpStream,
    tls: ClientConnection,
}

impl ClientConn {
    /// Runs the handshake until the client has verified the server's flight. The client's last
    /// flight (its Finished, when the handshake was resumed or is TLS 1.3) is held until
    /// [`ClientConn::close`]. Errors: a rustls error wrapped in `InvalidData`, as `tokio-rustls`
    /// reports it, or the I/O error; an end of stream mid-handshake is `UnexpectedEof`.
    #[cfg(test)]
    pub async fn handshake(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        Ok(Self::handshake_with(tcp, config, name, &[]).await?.0)
    }

    /// Runs the handshake until the client has verified the server's flight, the client's
    /// last flight held until [`send`](Self::send), [`first_byte`](Self::first_byte) or
    /// [`close`](Self::close), sending as much of `early` as the session allows as TLS 1.3
    /// early data, with the ClientHello. Returns the connection and how many bytes of
    /// `early` went (none without a session that allows early data; whether the server
    /// accepted them: [`is_early_data_accepted`](Self::is_early_data_accepted)).
    pub async fn handshake_with(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        early: &[u8],
    ) -> io::Result<(Self, usize)> {
        let mut tls = ClientConnection::new(config, name).map_err(invalid)?;
        let sent = match tls.early_data() {
            Some(mut writer) if !early.is_empty() => writer.write(early)?,
            _ => 0,
        };
        let mut conn = ClientConn { tcp, tls };
        while conn.tls.is_handshaking() {
            if conn.tls.wants_write() {
                conn.write_all().await?;
            } else if conn.read_some().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
        }
        Ok((conn, sent))
    }

    /// Whether the server accepted the early data.
    pub fn is_early_data_accepted(&self) -> bool {
        self.tls.is_early_data_accepted()
    }

    /// Sends `data` (with the handshake's last flight, if it is still held).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.tls.writer().write_all(data)?;
        self.write_all().await
    }

    /// Waits for the first byte of the server's application data (sending what is held).
    /// Not bounded by itself: the caller's timeout bounds it.
    pub async fn first_byte(&mut self) -> io::Result<()> {
        self.write_all().await?;
        let mut one = [0u8; 1];
        loop {
            match self.tls.reader().read(&mut one) {
                Ok(1..) => return Ok(()),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.read_some().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Whether the handshake was full or resumed.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.tls.handshake_kind()
    }

    /// Sends close_notify, in one write with the flight still held, and reads until the
    /// server's close_notify. TLS 1.3 tickets that arrive before it go to the session store on
    /// the way. Not bounded by itself: the caller's timeout bounds it.
    pub async fn close(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        self.write_all().await?;
        let mut sink = [0u8; 2048];
        loop {
            match self.tls.reader().read(&mut sink) {
                // The server's close_notify.
                Ok(0) => return Ok(()),
                // Application data the server sent anyway: discarded.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the stream ended without close_notify.
                Err(e) => return Err(e),
            }
            self.read_some().await?;
        }
    }

    /// Ends the connection without close_notify, as a client that just closes its socket does:
    /// sends the flight still held, then a TCP FIN, and reads until the server's FIN, through
    /// TLS so that TLS 1.3 tickets still reach the session store, and so that no unread data
    /// turns the close into a reset. Not bounded by itself: the caller's timeout bounds it.
    pub async fn close_abruptly(&mut self) -> io::Result<()> {
        self.write_all().await?;
        self.tcp.shutdown().await?;
        while self.read_some().await? > 0 {}
        Ok(())
    }

    /// Reads the TCP stream until its end, so that the server closes first. Not bounded by
    /// itself: the caller's timeout bounds it.
    pub async fn drain(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match self.tcp.try_read(&mut buf) {
                Ok(1..) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.tcp.readable().await.is_err() {
                        return;
                    }
                }
                Ok(0) | Err(_) => return,
            }
        }
    }

    /// Writes everything rustls has queued, waiting for room when the socket is full.
    async fn write_all(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut TryIo(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the socket has (waiting until it has something) and processes it. Returns
    /// the bytes read: 0 at the end of the stream. A TLS error is returned after a best-effort
    /// write of the alert rustls queued for it.
    async fn read_some(&mut self) -> io::Result<usize> {
        let n = loop {
            match self.tls.read_tls(&mut TryIo(&self.tcp)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.readable().await?,
                Err(e) => return Err(e),
            }
        };
        if let Err(e) = self.tls.process_new_packets() {
            let _ = self.tls.write_tls(&mut TryIo(&self.tcp));
            return Err(invalid(e));
        }
        Ok(n)
    }
}

/// A rustls error as an I/O error, the way `tokio-rustls` wraps it.
fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads and writes a tokio TCP stream without waiting: `WouldBlock` when it cannot.
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
