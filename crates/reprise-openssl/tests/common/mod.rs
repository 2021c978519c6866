//! Test harness: a test PKI, OpenSSL contexts, and real handshakes over socket pairs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ErrorCode, HandshakeError, Ssl, SslContextBuilder, SslContextRef, SslMethod, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use reprise_openssl::{set_session, DecodedSession};
use reprise_testkit::Version;

/// A test version as OpenSSL names it.
pub trait SslVersionOf {
    /// The OpenSSL protocol version.
    fn ssl(self) -> SslVersion;
}

impl SslVersionOf for Version {
    fn ssl(self) -> SslVersion {
        match self {
            Version::Tls12 => SslVersion::TLS1_2,
            Version::Tls13 => SslVersion::TLS1_3,
        }
    }
}

/// The test PKI ([`reprise_testkit::Pki`]: a CA, and a server certificate for localhost and
/// other.test) in OpenSSL's types.
pub struct Pki {
    pub ca: X509,
    pub server_cert: X509,
    pub server_key: PKey<Private>,
}

impl Pki {
    pub fn new() -> Self {
        let pki = reprise_testkit::Pki::new();
        Self {
            ca: X509::from_der(pki.ca.cert.der()).unwrap(),
            server_cert: X509::from_der(pki.server.cert.der()).unwrap(),
            server_key: PKey::private_key_from_der(&pki.server.key.serialize_der()).unwrap(),
        }
    }

    /// A server context builder with the certificate, pinned to one protocol version.
    pub fn server_builder(&self, v: Version) -> SslContextBuilder {
        let mut b = SslContextBuilder::new(SslMethod::tls_server()).unwrap();
        b.set_certificate(&self.server_cert).unwrap();
        b.set_private_key(&self.server_key).unwrap();
        b.add_extra_chain_cert(self.ca.clone()).unwrap();
        b.set_min_proto_version(Some(v.ssl())).unwrap();
        b.set_max_proto_version(Some(v.ssl())).unwrap();
        b
    }

    /// A client context builder that trusts the test CA, pinned to one protocol version.
    pub fn client_builder(&self, v: Version) -> SslContextBuilder {
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        b.cert_store_mut().add_cert(self.ca.clone()).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        b.set_min_proto_version(Some(v.ssl())).unwrap();
        b.set_max_proto_version(Some(v.ssl())).unwrap();
        b
    }
}

/// How the client ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// close_notify both ways.
    Clean,
    /// The client goes away without close_notify; the server sees end of file and drops its
    /// connection without sending close_notify either.
    Unclean,
}

/// What a client observed on one connection.
#[derive(Debug, Default)]
pub struct Conn {
    /// Whether the handshake completed.
    pub ok: bool,
    /// Whether it resumed (`SSL_session_reused`).
    pub resumed: bool,
    /// The client's latest session (the last ticket, in TLS 1.3), as DER.
    pub session: Option<Vec<u8>>,
}

pub type Accepted = Result<SslStream<UnixStream>, HandshakeError<UnixStream>>;

/// The server side of a test connection: accept, write a greeting, then read until the client
/// closes. A close_notify is answered with one; end of file is not.
pub fn serve(accepted: Accepted) -> bool {
    let Ok(mut tls) = accepted else {
        return false;
    };
    if tls.write_all(b"hi").is_err() {
        return true;
    }
    let mut buf = [0u8; 64];
    loop {
        match tls.ssl_read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                let _ = tls.shutdown();
                break;
            }
            Err(_) => break,
        }
    }
    true
}

fn socket_pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
}

/// One real connection over a socket pair: `server` runs the server side in its own thread
/// (with [`serve`], typically), the client side runs here and offers `offer`. Returns when
/// both sides are done, so every callback the connection causes has run.
pub fn connect<F>(client_ctx: &SslContextRef, offer: Option<&[u8]>, close: Close, server: F) -> Conn
where
    F: FnOnce(UnixStream) -> bool + Send,
{
    let (client_sock, server_sock) = socket_pair();
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || server(server_sock));
        let mut ssl = Ssl::new(client_ctx).unwrap();
        ssl.set_hostname("localhost").unwrap();
        if let Some(der) = offer {
            set_session(&mut ssl, DecodedSession::from_der(der).unwrap()).unwrap();
        }
        let conn = match ssl.connect(client_sock) {
            Ok(tls) => client_side(tls, close),
            Err(_) => Conn::default(),
        };
        handle.join().unwrap();
        conn
    })
}

/// Reads the greeting (and so, in TLS 1.3, the tickets sent before it), then closes.
pub fn client_side<S: Read + Write>(mut tls: SslStream<S>, close: Close) -> Conn {
    let mut hi = [0u8; 2];
    tls.read_exact(&mut hi).unwrap();
    assert_eq!(&hi, b"hi");
    let conn = Conn {
        ok: true,
        resumed: tls.ssl().session_reused(),
        session: tls.ssl().session().and_then(|s| s.to_der().ok()),
    };
    if close == Close::Clean {
        tls.shutdown().unwrap();
        let mut buf = [0u8; 8];
        while tls.ssl_read(&mut buf).is_ok() {}
    }
    conn
}
