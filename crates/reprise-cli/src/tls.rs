//! TLS material for `reprise serve`: certificates and keys from PEM files or a generated
//! self-signed certificate, the client-certificate verifier, the session-id context, the
//! rustls server configurations wired to the Reprise cache, and the ticket keys.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use reprise::SessionCache;
use reprise_disk::{DiskConfig, DiskTier};
use reprise_redis::{FleetTicketKeys, RedisConfig, RedisTier};
use reprise_rustls::{
    derive_sid_ctx, named_sid_ctx, ChoosesConfig, ClientAuth, ClientHelloInfo, ServerContext,
    ServerStore, Ticketer,
};
use reprise_seal::tickets::{LocalTicketKeys, TicketCounters, TicketKeyFile, TicketKeySource};
use reprise_seal::KeyRing;
use ring::digest;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::cli::{ClientAuthMode, TicketMode, TlsVersion};
use crate::config::{RedisSettings, Settings, TicketKeysFrom};
use crate::metrics::TicketMetrics;

/// The server's TLS state: its rustls configurations and the cache behind them.
pub struct ServerTls {
    /// The rustls configuration of every connection that does not get `tickets_config`:
    /// stateful (or no) TLS 1.3 tickets, and with `--tickets stateless` the ticketer for both
    /// versions.
    pub config: Arc<ServerConfig>,
    /// With `--tickets auto`: the TLS 1.2-only configuration with the ticketer, for clients that
    /// offer only TLS 1.2 (see [`ServerTls::chooser`]).
    pub tickets_config: Option<Arc<ServerConfig>>,
    /// The ticket keys and the ticketer's counters, in the modes that use them.
    pub tickets: Option<Tickets>,
    /// The ticketer of the context, in the modes that use one: [`serve`](crate::serve)
    /// refreshes it every second, so that an erased key's derived copy goes at once.
    pub ticketer: Option<Arc<Ticketer>>,
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

/// Chooses each connection's configuration (see [`ServerTls::chooser`]).
#[derive(Clone, Debug)]
pub struct Chooser {
    /// The stateful configuration (or the only one).
    main: ServerContext,
    /// With `--tickets auto`, the TLS 1.2-only configuration with the ticketer.
    tls12_tickets: Option<ServerContext>,
}

impl Chooser {
    /// Whether a ClientHello offers TLS 1.2 and not TLS 1.3 (no TLS 1.3 in its
    /// `supported_versions`, or no such extension at all), and asks for a TLS 1.2 ticket (the
    /// `session_ticket` extension). A TLS 1.2 client without that extension resumes by id only:
    /// it gets the stateful configuration, which gives its sessions ids.
    pub fn wants_tls12_ticket(hello: &ClientHelloInfo) -> bool {
        !hello.supports_tls13 && hello.offers_tls12() && hello.session_ticket
    }
}

impl ChoosesConfig for Chooser {
    fn choose(&self, hello: Option<&ClientHelloInfo>) -> ServerContext {
        match (&self.tls12_tickets, hello) {
            (Some(tls12), Some(h)) if Self::wants_tls12_ticket(h) => tls12.clone(),
            _ => self.main.clone(),
        }
    }
}

/// The ticket keys of a server and what its ticketer counted.
pub struct Tickets {
    /// Where the keys come from.
    pub source: Arc<dyn TicketKeySource>,
    /// The fleet's ring, when the keys come from Redis (to wait for it at start).
    pub fleet: Option<Arc<FleetTicketKeys>>,
    /// Whether the source reads something again on SIGHUP (a key file).
    pub reloadable: bool,
    /// The ticketer's counters: issued, decrypted, rejected by reason.
    pub counters: Arc<TicketCounters>,
}

impl ServerTls {
    /// What a connection gets, from its ClientHello: with `--tickets auto`, a client whose hello
    /// offers TLS 1.2 and not TLS 1.3 gets the TLS 1.2 configuration with tickets; every other
    /// client, an unreadable hello included, the stateful one. So a misparsed hello never
    /// receives a stateless (replayable) TLS 1.3 ticket.
    pub fn chooser(&self, versions: &[TlsVersion]) -> Chooser {
        Chooser {
            main: ServerContext::new(self.config.clone(), self.store.clone())
                .with_versions(&TlsVersion::rustls(versions)),
            tls12_tickets: self.tickets_config.as_ref().map(|config| {
                ServerContext::new(config.clone(), self.store.for_tickets())
                    .with_versions(&[&rustls::version::TLS12])
            }),
        }
    }

    /// The ticket mode, source and counters, for `/metrics`.
    pub fn ticket_metrics(&self, mode: TicketMode) -> TicketMetrics {
        TicketMetrics {
            mode: mode.as_str(),
            source: self.tickets.as_ref().map(|t| t.source.name().to_owned()),
            counters: self
                .tickets
                .as_ref()
                .map(|t| t.counters.snapshot().metrics())
                .unwrap_or_default(),
            keys: self
                .tickets
                .as_ref()
                .map(|t| t.source.metrics())
                .unwrap_or_default(),
        }
    }
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

    // The client-certificate policy and its CA bundle are part of the security context.
    let (verifier, client_auth, cas) = match &settings.client_auth {
        None => (None, ClientAuth::None, Vec::new()),
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
            (Some(verifier), auth, cas)
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

    // One configuration, or two with `--tickets auto`: the same certificate, client
    // verifier, ALPN and store, so the same security context.
    let config_for = |versions: &[TlsVersion]| -> anyhow::Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&TlsVersion::rustls(versions))
            .context("TLS versions")?;
        let builder = match &verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v.clone()),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                anyhow::anyhow!(
                    "certificate and key: {e} (does the key belong to the certificate?)"
                )
            })?;
        config.alpn_protocols = settings
            .alpn
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        config.ignore_client_order = true;
        Ok(config)
    };
    let mut config = config_for(&settings.tls_versions)?;

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
        let tier = RedisTier::start(redis_config(r), keys).context("redis")?;
        cache.attach(Arc::new(tier));
    }
    let store = ServerStore::new(cache.clone(), sid_ctx, client_auth)
        .map_err(|e| anyhow::anyhow!("sid-ctx: {e}"))?;
    config.session_storage = Arc::new(store.clone());
    // `auto` without TLS 1.2 issues only stateful TLS 1.3 tickets: no keys to keep then.
    let tls12 = settings.tls_versions.contains(&TlsVersion::Tls12);
    let tickets = match &settings.ticket_keys {
        Some(from) if settings.tickets == TicketMode::Stateless || tls12 => {
            Some(ticket_keys(settings, from)?)
        }
        _ => None,
    };
    // Each context's tickets are bound to its session-id context, as its sessions are.
    let ticketer = tickets
        .as_ref()
        .map(|t| Ticketer::new(t.source.clone(), sid_ctx.as_bytes(), t.counters.clone()));
    let held_ticketer = ticketer.clone();
    let mut tickets_config = None;
    match (settings.tickets, ticketer) {
        (TicketMode::Auto, Some(ticketer)) => {
            config.send_tls13_tickets = settings.tls13_tickets;
            let tls13 = settings.tls_versions.contains(&TlsVersion::Tls13);
            if tls12 && !tls13 {
                // No TLS 1.3 to keep stateful: the one configuration has the ticketer.
                config.ticketer = ticketer;
            } else if tls12 {
                let mut with_tickets = config_for(&[TlsVersion::Tls12])?;
                // Chosen only for hellos that ask for a ticket: sessions offered by id still
                // resume, new ones travel in their ticket and take no place in the cache.
                with_tickets.session_storage = Arc::new(store.for_tickets());
                with_tickets.ticketer = ticketer;
                tickets_config = Some(Arc::new(with_tickets));
            }
        }
        (TicketMode::Stateless, Some(ticketer)) => {
            config.ticketer = ticketer;
            config.send_tls13_tickets = settings.tls13_tickets;
        }
        (TicketMode::Off, _) => config.send_tls13_tickets = 0,
        _ => config.send_tls13_tickets = settings.tls13_tickets,
    }
    if let Some(old) = settings.deprecated_key_file {
        tracing::warn!(
            "{old} is deprecated: use key-file (--key-file), which seals the sessions of every tier"
        );
    }
    Ok(ServerTls {
        config: Arc::new(config),
        tickets_config,
        tickets,
        ticketer: held_ticketer,
        store,
        cache,
        fingerprint,
        self_signed,
        disk,
    })
}

/// The Redis client settings of the session tier and of the fleet's ticket-key ring.
fn redis_config(r: &RedisSettings) -> RedisConfig {
    let mut config = RedisConfig::new(r.target.clone());
    config.prefix = r.prefix.clone();
    config.read_timeout = r.timeout;
    config.misses_per_address = r.misses_per_address;
    config
}

/// Opens the ticket-key source the settings name.
fn ticket_keys(settings: &Settings, from: &TicketKeysFrom) -> anyhow::Result<Tickets> {
    let lifetime = settings.ticket_lifetime;
    let (source, fleet): (Arc<dyn TicketKeySource>, _) = match from {
        TicketKeysFrom::Local => (
            LocalTicketKeys::new(lifetime)
                .map_err(|e| anyhow::Error::new(e).context("ticket keys"))?,
            None,
        ),
        TicketKeysFrom::File(path) => {
            let file = TicketKeyFile::open(path, lifetime)
                .map_err(|e| anyhow::Error::new(e).context("ticket-keys"))?;
            (file, None)
        }
        TicketKeysFrom::Redis => {
            let Some(r) = &settings.redis else {
                bail!("--ticket-keys-from-redis needs --redis and --key-file");
            };
            let seal = KeyRing::load(&r.key_file)
                .map_err(|e| anyhow::Error::new(e).context("key-file"))?;
            let fleet = FleetTicketKeys::start(redis_config(r), seal, lifetime)
                .map_err(|e| anyhow::Error::new(e).context("ticket-keys-from-redis"))?;
            (fleet.clone(), Some(fleet))
        }
    };
    Ok(Tickets {
        source,
        fleet,
        reloadable: matches!(from, TicketKeysFrom::File(_)),
        counters: Arc::new(TicketCounters::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;

    fn hello(versions: &[u16]) -> ClientHelloInfo {
        ClientHelloInfo {
            supports_tls13: versions.contains(&0x0304),
            versions: versions.to_vec(),
            session_ticket: true,
            ..ClientHelloInfo::default()
        }
    }

    fn server(tickets: TicketMode) -> anyhow::Result<ServerTls> {
        let settings = Settings::resolve(ServeArgs {
            tickets: Some(tickets),
            ..ServeArgs::default()
        })?;
        build(&settings)
    }

    /// With `auto`, only a hello that offers TLS 1.2 and not TLS 1.3 gets the configuration
    /// with the ticketer; an unreadable hello, or one that offers TLS 1.3, the stateful one.
    #[test]
    fn auto_gives_tickets_to_tls12_only_hellos() -> anyhow::Result<()> {
        let tls = server(TicketMode::Auto)?;
        let with_tickets = tls.tickets_config.clone().expect("two configurations");
        assert!(with_tickets.ticketer.enabled());
        assert!(!tls.config.ticketer.enabled());
        assert_eq!(tls.config.send_tls13_tickets, 2);
        let chooser = tls.chooser(&[TlsVersion::Tls12, TlsVersion::Tls13]);
        let chosen = |h: Option<&ClientHelloInfo>| chooser.choose(h).config().clone();
        assert!(Arc::ptr_eq(&chosen(Some(&hello(&[]))), &with_tickets));
        assert!(Arc::ptr_eq(&chosen(Some(&hello(&[0x0303]))), &with_tickets));
        assert!(Arc::ptr_eq(
            &chosen(Some(&hello(&[0x0a0a, 0x0303]))),
            &with_tickets
        ));
        let id_only = ClientHelloInfo {
            session_ticket: false,
            ..hello(&[0x0303])
        };
        for stateful in [
            None,
            Some(hello(&[0x0304, 0x0303])),
            Some(hello(&[0x0304])),
            Some(id_only),
        ] {
            assert!(Arc::ptr_eq(&chosen(stateful.as_ref()), &tls.config));
        }
        // Both configurations bind their sessions and tickets to one session-id context.
        let tls12 = hello(&[0x0303]);
        assert_eq!(
            chooser.choose(None).store().sid_ctx().as_bytes(),
            chooser.choose(Some(&tls12)).store().sid_ctx().as_bytes()
        );
        Ok(())
    }

    #[test]
    fn stateless_has_one_configuration_with_the_ticketer_and_stateful_none() -> anyhow::Result<()> {
        let tls = server(TicketMode::Stateless)?;
        assert!(tls.tickets_config.is_none());
        assert!(tls.config.ticketer.enabled());
        let tls = server(TicketMode::Stateful)?;
        assert!(tls.tickets_config.is_none() && tls.tickets.is_none());
        assert!(!tls.config.ticketer.enabled());
        let tls = server(TicketMode::Off)?;
        assert_eq!(tls.config.send_tls13_tickets, 0);
        Ok(())
    }
}
