//! TLS material for `reprise serve`: certificates and keys from PEM files or a generated
//! self-signed certificate, the client-certificate verifier, the session-id context, and the
//! rustls server configuration wired to the Reprise cache.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use reprise::SessionCache;
use reprise_disk::{DiskConfig, DiskTier};
use reprise_redis::{RedisConfig, RedisTier};
use reprise_rustls::{derive_sid_ctx, named_sid_ctx, ClientAuth, ServerStore};
use reprise_seal::KeyRing;
use ring::digest;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::cli::{ClientAuthMode, TicketMode, TlsVersion};
use crate::config::Settings;

/// The server's TLS state: its rustls configuration and the cache behind it.
pub struct ServerTls {
    /// The rustls configuration every connection uses.
    pub config: Arc<ServerConfig>,
    /// The session store the configuration uses.
    pub store: ServerStore,
    /// The cache behind the store.
    pub cache: Arc<SessionCache>,
    /// The SHA-256 fingerprint of the leaf certificate, as colon-separated hex.
    pub fingerprint: String,
    /// Whether the certificate was generated at start.
    pub self_signed: bool,
    /// The disk tier behind the cache, if any.
    pub disk: Option<DiskTier>,
}

/// Reads a PEM certificate chain; the first certificate is the leaf.
pub fn load_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read certificate file {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("certificate file {}: {e}", path.display()))?;
    if chain.is_empty() {
        bail!(
            "certificate file {}: no PEM certificate in it",
            path.display()
        );
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "key file {}: no usable PEM private key ({e})",
            path.display()
        )
    })
}

/// A self-signed ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1.
pub fn self_signed() -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("generated key: {e}"))?;
    Ok((vec![generated.cert.der().clone()], key))
}

/// The SHA-256 fingerprint of a certificate, as `AB:CD:…`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let hash = digest::digest(&digest::SHA256, cert);
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The ring provider with the AES-128-GCM and ChaCha20 suites (SHA-256) ahead of
/// AES-256-GCM (SHA-384), which the server then prefers whatever the client's order.
///
/// Every suite here is strong; the SHA-256 suites make the key schedule, a large part of a
/// resumed handshake's cost, markedly cheaper (SHA-384 has no fast path on many CPUs).
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        matches!(
            s.suite(),
            S::TLS13_AES_256_GCM_SHA384
                | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    provider
}

/// Builds the server's TLS configuration and its cache from the settings.
pub fn build(settings: &Settings) -> anyhow::Result<ServerTls> {
    let (chain, key, self_signed) = match &settings.cert_key {
        Some((cert, key)) => (load_chain(cert)?, load_key(key)?, false),
        None => {
            let (chain, key) = self_signed()?;
            (chain, key, true)
        }
    };
    let fingerprint = fingerprint(&chain[0]);

    let provider = Arc::new(provider());
    let versions = TlsVersion::rustls(&settings.tls_versions);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("TLS versions")?;

    // The client-certificate policy and its CA bundle are part of the security context.
    let (builder, client_auth, cas) = match &settings.client_auth {
        None => (builder.with_no_client_auth(), ClientAuth::None, Vec::new()),
        Some((ca_path, mode)) => {
            let cas = load_chain(ca_path).with_context(|| "client CA".to_owned())?;
            let mut roots = RootCertStore::empty();
            for ca in &cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| anyhow::anyhow!("client CA file {}: {e}", ca_path.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let (verifier, auth) = match mode {
                ClientAuthMode::Required => (verifier, ClientAuth::Required),
                ClientAuthMode::Optional => {
                    (verifier.allow_unauthenticated(), ClientAuth::Optional)
                }
            };
            let verifier = verifier
                .build()
                .map_err(|e| anyhow::anyhow!("client CA file {}: {e}", ca_path.display()))?;
            (builder.with_client_cert_verifier(verifier), auth, cas)
        }
    };

    // An operator's name still binds the client-auth policy and CAs (not the chain, so that
    // sessions survive a certificate renewal).
    let sid_ctx = match &settings.sid_ctx {
        Some(name) => named_sid_ctx(name.as_bytes(), client_auth, &cas),
        None => {
            let ca_bytes: Vec<u8> = cas.iter().flat_map(|c| c.as_ref().to_vec()).collect();
            derive_sid_ctx(&chain, client_auth, &ca_bytes)
        }
    };

    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow::anyhow!("certificate and key: {e} (does the key belong to the certificate?)")
    })?;
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.ignore_client_order = true;

    let cache = Arc::new(
        SessionCache::builder()
            .mode(settings.cache_mode)
            .size_limit(settings.cache_size)
            .timeout_secs(settings.cache_timeout)
            .build(),
    );
    // The stack under memory: the disk first, then Redis, the last tier, which decides takes.
    let disk = match &settings.disk {
        None => None,
        Some(d) => {
            let keys = match &d.key_file {
                Some(path) => Some(
                    KeyRing::load(path).map_err(|e| anyhow::Error::new(e).context("key-file"))?,
                ),
                None => None,
            };
            let mut config = DiskConfig::new(&d.dir);
            config.max_bytes = d.max_bytes;
            let (tier, startup) = DiskTier::open(config, keys)
                .map_err(|e| anyhow::Error::new(e).context("cache-dir"))?;
            tracing::info!(dir = %d.dir.display(), recovery = ?startup.recovery, "session cache on disk");
            cache.attach(Arc::new(tier.clone()));
            Some(tier)
        }
    };
    if let Some(r) = &settings.redis {
        let keys =
            KeyRing::load(&r.key_file).map_err(|e| anyhow::Error::new(e).context("key-file"))?;
        let mut config = RedisConfig::new(r.target.clone());
        config.prefix = r.prefix.clone();
        config.read_timeout = r.timeout;
        config.misses_per_address = r.misses_per_address;
        let tier = RedisTier::start(config, keys).context("redis")?;
        cache.attach(Arc::new(tier));
    }
    let store = ServerStore::new(cache.clone(), sid_ctx, client_auth)
        .map_err(|e| anyhow::anyhow!("sid-ctx: {e}"))?;
    config.session_storage = Arc::new(store.clone());
    match settings.tickets {
        TicketMode::Stateful => config.send_tls13_tickets = settings.tls13_tickets,
        TicketMode::Stateless => {
            config.ticketer = rustls::crypto::ring::Ticketer::new().context("ticket keys")?;
            config.send_tls13_tickets = settings.tls13_tickets;
        }
        TicketMode::Off => config.send_tls13_tickets = 0,
    }
    if let Some(old) = settings.deprecated_key_file {
        tracing::warn!(
            "{old} is deprecated: use key-file (--key-file), which seals the sessions of every tier"
        );
    }
    Ok(ServerTls {
        config: Arc::new(config),
        store,
        cache,
        fingerprint,
        self_signed,
        disk,
    })
}
