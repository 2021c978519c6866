//! What the `reprise bench` client trusts: a CA bundle (`--ca`), or any certificate
//! (`--insecure`), and the client configuration built on it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
    SupportedCipherSuite,
};

use crate::cli::TlsVersion;

/// How the server's certificate is checked.
pub(super) enum Trust {
    /// Against these roots.
    Roots(RootCertStore),
    /// Not at all (`--insecure`); handshake signatures are still verified.
    Anything,
}

/// Reads a PEM bundle of trusted CA certificates.
pub(super) fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
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

/// The client configuration: exactly one TLS version, the binary's crypto provider
/// ([`crate::tls::default_provider`]) with only the named cipher suites if any are named,
/// resumption disabled (the workers of `--mode resume` replace it with their own store).
pub(super) fn client_config(
    tls: TlsVersion,
    trust: Trust,
    suites: &[String],
) -> anyhow::Result<ClientConfig> {
    let mut provider = crate::tls::default_provider();
    let version = match tls {
        TlsVersion::Tls12 => &rustls::version::TLS12,
        TlsVersion::Tls13 => &rustls::version::TLS13,
    };
    if !suites.is_empty() {
        provider.cipher_suites = only_suites(&provider.cipher_suites, suites, version.version)?;
    }
    let provider = Arc::new(provider);
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

/// The suites of `all` named in `names`, in the order named. An unknown name, or names with no
/// suite of the TLS version asked for, is an error that lists what there is.
fn only_suites(
    all: &[SupportedCipherSuite],
    names: &[String],
    version: ProtocolVersion,
) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let name_of = |s: &SupportedCipherSuite| format!("{:?}", s.suite());
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        match all
            .iter()
            .find(|s| name_of(s).eq_ignore_ascii_case(name.trim()))
        {
            Some(s) => chosen.push(*s),
            None => bail!(
                "--cipher-suite {name}: not a suite of this build's provider, which has {}",
                all.iter().map(name_of).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if !chosen.iter().any(|s| s.version().version == version) {
        bail!("--cipher-suite: none of the suites named is a {version:?} suite");
    }
    Ok(chosen)
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A certificate for localhost from the test PKI, and the key that signs in the handshake:
    /// its own, or another one.
    pub(in crate::bench) fn server_config(
        tls: TlsVersion,
        own_key: bool,
    ) -> Arc<rustls::ServerConfig> {
        use rustls::server::{ClientHello, ResolvesServerCert};
        use rustls::sign::CertifiedKey;

        #[derive(Debug)]
        struct Fixed(Arc<CertifiedKey>);
        impl ResolvesServerCert for Fixed {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
        }

        let pki = reprise_testkit::Pki::new();
        let key = if own_key {
            pki.server_key()
        } else {
            reprise_testkit::Pki::new().server_key()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signer = provider.key_provider.load_private_key(key).unwrap();
        let certified = CertifiedKey::new(pki.server_chain(), signer);
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
        let name = ServerName::try_from("localhost").unwrap();
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
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if to.read_tls(&mut rest).unwrap() == 0 {
                break;
            }
            to.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn the_insecure_verifier_accepts_any_certificate_but_checks_signatures() {
        for tls in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let insecure = || client_config(tls, Trust::Anything, &[]).unwrap();
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

    #[test]
    fn named_cipher_suites_are_the_only_ones_offered() {
        let names = |c: &ClientConfig| {
            c.crypto_provider()
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        let all = client_config(TlsVersion::Tls13, Trust::Anything, &[]).unwrap();
        assert!(names(&all).len() > 2, "{:?}", names(&all));
        let only = |tls, suite: &str| client_config(tls, Trust::Anything, &[suite.to_owned()]);
        for (tls, suite) in [
            (TlsVersion::Tls13, "TLS13_AES_256_GCM_SHA384"),
            (TlsVersion::Tls12, "tls_ecdhe_ecdsa_with_aes_256_gcm_sha384"),
        ] {
            let config = only(tls, suite).unwrap();
            assert_eq!(names(&config), [suite.to_ascii_uppercase()]);
            assert_eq!(
                handshake(config, server_config(tls, true)),
                Ok(()),
                "{suite}"
            );
        }
        let unknown = format!("{:#}", only(TlsVersion::Tls13, "TLS13_ROT13").unwrap_err());
        assert!(
            unknown.contains("TLS13_ROT13") && unknown.contains("TLS13_AES_128_GCM_SHA256"),
            "{unknown}"
        );
        let wrong_version = only(TlsVersion::Tls13, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
        assert!(format!("{:#}", wrong_version.unwrap_err()).contains("TLSv1_3"));
    }

    #[test]
    fn ca_roots_verify_the_chain() {
        let config =
            client_config(TlsVersion::Tls13, Trust::Roots(RootCertStore::empty()), &[]).unwrap();
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
        let missing = load_roots(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let missing = format!("{missing:#}");
        assert!(missing.starts_with("cannot read CA file"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let none = format!("{:#}", load_roots(&empty).unwrap_err());
        assert!(none.contains("no PEM certificate"), "{none}");
    }
}
