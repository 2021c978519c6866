//! The test PKI: a throwaway CA, and a server and a client certificate it signs, in rcgen's,
//! rustls's and PEM form.

use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

/// A throwaway certificate authority ("Reprise test CA") that signs test certificates.
pub struct TestCa {
    /// The CA's own self-signed certificate.
    pub cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA with a fresh key.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Reprise test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for the DNS `names`, with `common_name` if given, for `key`.
    pub fn sign(
        &self,
        names: &[&str],
        common_name: Option<&str>,
        key: &KeyPair,
    ) -> rcgen::Certificate {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.signed_by(key, &self.issuer).unwrap()
    }
}

impl TestCa {
    /// The CA's private key, PEM (PKCS#8): to sign OCSP responses with `openssl ocsp`.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A leaf for the DNS `names` (a fresh ECDSA P-256 key), with `common_name` if given.
    pub fn leaf(&self, names: &[&str], common_name: Option<&str>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        Leaf {
            cert: self.sign(names, common_name, &key),
            key,
        }
    }

    /// An OCSP response, DER, that this CA signs for `leaf`, saying "good", valid for `days`
    /// days (at least 1) from now, made with `openssl ocsp` in `dir` (which gets the CA's
    /// files and an index).
    pub fn ocsp_response(&self, leaf: &Leaf, days: u32, dir: &std::path::Path) -> Vec<u8> {
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        std::fs::write(path("ocsp-ca.pem"), self.cert.pem()).unwrap();
        std::fs::write(path("ocsp-ca.key"), self.key_pem()).unwrap();
        std::fs::write(path("ocsp-leaf.pem"), leaf.cert.pem()).unwrap();
        // The index, as `openssl ca` keeps it: one valid certificate, by its serial.
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in", &path("ocsp-leaf.pem")])
            .output()
            .expect("openssl is not installed: run scripts/test.sh");
        assert!(out.status.success(), "openssl x509 failed");
        let serial = String::from_utf8(out.stdout).unwrap();
        let serial = serial.trim().trim_start_matches("serial=");
        let index = format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=leaf\n");
        std::fs::write(path("ocsp-index.txt"), index).unwrap();
        let days = days.to_string();
        let out = Command::new("openssl")
            .args([
                "ocsp",
                "-index",
                &path("ocsp-index.txt"),
                "-rsigner",
                &path("ocsp-ca.pem"),
                "-rkey",
                &path("ocsp-ca.key"),
                "-CA",
                &path("ocsp-ca.pem"),
                "-issuer",
                &path("ocsp-ca.pem"),
                "-cert",
                &path("ocsp-leaf.pem"),
                "-ndays",
                &days,
                "-respout",
                &path("ocsp-resp.der"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl ocsp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path("ocsp-resp.der")).unwrap()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A certificate the test CA signed, and its key.
pub struct Leaf {
    /// The certificate.
    pub cert: rcgen::Certificate,
    /// Its key.
    pub key: KeyPair,
}

impl Leaf {
    /// The certificate, then the CA's: the chain a peer presents.
    pub fn chain(&self, ca: &TestCa) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone(), ca.cert.der().clone()]
    }

    /// The key in rustls's form (PKCS#8).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// The test PKI: a CA, a server certificate for `localhost` and `other.test`, and a client
/// certificate for `client.test` (common name `client`). Keys are ECDSA P-256 unless a
/// constructor says otherwise.
pub struct Pki {
    /// The certificate authority.
    pub ca: TestCa,
    /// The server's certificate and key.
    pub server: Leaf,
    /// The client's certificate and key.
    pub client: Leaf,
}

impl Pki {
    /// The DNS names of the server certificate.
    pub const SERVER_NAMES: [&'static str; 2] = ["localhost", "other.test"];

    /// A PKI with ECDSA P-256 keys throughout.
    pub fn new() -> Pki {
        Self::with_server_key(KeyPair::generate().unwrap())
    }

    /// A PKI whose server key is a 2048-bit RSA key (ring cannot generate RSA keys: the
    /// `openssl` binary makes one, rcgen signs with it).
    pub fn with_rsa_server() -> Pki {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl is not installed: run scripts/test.sh");
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).unwrap();
        Self::with_server_key(
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap(),
        )
    }

    /// A PKI whose server key is an Ed25519 key.
    pub fn with_ed25519_server() -> Pki {
        Self::with_server_key(KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap())
    }

    /// A PKI whose server certificate is for `server_key`.
    pub fn with_server_key(server_key: KeyPair) -> Pki {
        let ca = TestCa::new();
        let server = Leaf {
            cert: ca.sign(&Self::SERVER_NAMES, None, &server_key),
            key: server_key,
        };
        let client_key = KeyPair::generate().unwrap();
        let client = Leaf {
            cert: ca.sign(&["client.test"], Some("client"), &client_key),
            key: client_key,
        };
        Pki { ca, server, client }
    }

    /// The CA's certificate.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.cert.der().clone()
    }

    /// A root store holding the CA alone.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        Arc::new(roots)
    }

    /// The server's chain: its certificate, then the CA's.
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        self.server.chain(&self.ca)
    }

    /// The server's key, in rustls's form.
    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        self.server.key_der()
    }

    /// The client's chain: its certificate, then the CA's.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        self.client.chain(&self.ca)
    }

    /// The client's key, in rustls's form.
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        self.client.key_der()
    }

    /// Writes the PKI as PEM files in a new temporary directory:
    /// - `ca.pem`: the CA's certificate;
    /// - `server.pem`: the server's certificate, then the CA's; `server.key`: its key;
    /// - `client.pem`: the client's certificate; `client.key`: its key;
    /// - `other.key`: a fresh key that matches no certificate.
    pub fn write_pem(&self) -> PemFiles {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = self.ca.cert.pem();
        write("ca.pem", ca.clone());
        write("server.pem", self.server.cert.pem() + &ca);
        write("server.key", self.server.key.serialize_pem());
        write("client.pem", self.client.cert.pem());
        write("client.key", self.client.key.serialize_pem());
        write("other.key", KeyPair::generate().unwrap().serialize_pem());
        PemFiles { dir }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`Pki`] written as PEM files ([`Pki::write_pem`]); the directory is removed when dropped.
pub struct PemFiles {
    /// The directory holding the files.
    pub dir: tempfile::TempDir,
}

impl PemFiles {
    /// The path of file `name` (`ca.pem`, `server.pem`, `server.key`, …), as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}
