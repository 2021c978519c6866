//! The TLS versions tests run under, a rustls verifier that accepts any certificate, and the
//! in-memory transport of records between a client and a server.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ConnectionCommon, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};

/// A TLS protocol version a test runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Every version, in order: tests that hold under both loop over these.
pub const VERSIONS: [Version; 2] = [Version::Tls12, Version::Tls13];

impl Version {
    /// The rustls version.
    pub fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Version::Tls12 => &rustls::version::TLS12,
            Version::Tls13 => &rustls::version::TLS13,
        }
    }

    /// Sessions a full handshake makes with the test servers: one TLS 1.2 session, or two
    /// TLS 1.3 tickets (rustls servers configured to send two, and OpenSSL's default).
    pub fn per_handshake(self) -> usize {
        match self {
            Version::Tls12 => 1,
            Version::Tls13 => 2,
        }
    }
}

/// A rustls client verifier that accepts any certificate chain for any name (for tests that
/// talk to a server whose CA they do not hold), but still checks the handshake signatures with
/// the provider's algorithms.
#[derive(Debug)]
pub struct AnyCert(pub CryptoProvider);

impl Default for AnyCert {
    /// With ring's default provider.
    fn default() -> Self {
        AnyCert(rustls::crypto::ring::default_provider())
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Moves every TLS record `from` has to send into `to`, in memory; returns the bytes moved
/// (empty when `from` had nothing to say).
pub fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> Vec<u8> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    buf
}
