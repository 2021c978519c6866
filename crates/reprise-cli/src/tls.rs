//! TLS material for `reprise serve`: certificates and keys from PEM files or a generated
//! self-signed certificate, chosen per connection by the name the client asks for (SNI), each
//! with its client-certificate verifier, its session-id context and its stapled OCSP response;
//! the rustls server configurations wired to the Reprise cache, and the ticket keys.

mod ocsp;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use reprise::{SessionCache, SidCtx};
use reprise_disk::{DiskConfig, DiskTier};
use reprise_redis::{FleetTicketKeys, RedisConfig, RedisTier};
use reprise_rustls::{
    derive_sid_ctx, named_sid_ctx, AcceptError, ChoosesConfig, ClientAuth, ClientHelloInfo,
    ServerContext, ServerStore, Ticketer,
};
use reprise_seal::tickets::{LocalTicketKeys, TicketCounters, TicketKeyFile, TicketKeySource};
use reprise_seal::KeyRing;
use ring::digest;
/// The crypto provider the binary was built with: aws-lc-rs (the default feature), or ring.
#[cfg(feature = "aws-lc-rs")]
pub use rustls::crypto::aws_lc_rs::default_provider;
/// The crypto provider the binary was built with: aws-lc-rs (the default feature), or ring.
#[cfg(not(feature = "aws-lc-rs"))]
pub use rustls::crypto::ring::default_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::cli::{ClientAuthMode, TicketMode, TlsVersion};
use crate::config::{CertificateSettings, RedisSettings, Settings, TicketKeysFrom};
use crate::metrics::TicketMetrics;

pub use ocsp::Staple;

/// The server's TLS state: its certificates with their rustls configurations, and the cache
/// behind them.
pub struct ServerTls {
    /// The ticket keys and the ticketer's counters, in the modes that use them.
    pub tickets: Option<Tickets>,
    /// The cache behind every certificate's store.
    pub cache: Arc<SessionCache>,
    /// Whether the default certificate was generated at start.
    pub self_signed: bool,
    /// The disk tier behind the cache, if any.
    pub disk: Option<DiskTier>,
    /// The certificates, as the chooser reads them (a reload can swap them whole).
    pub certificates: Arc<ArcSwap<Certificates>>,
    /// What the chooser counted of the names clients asked for.
    pub sni: Arc<SniCounters>,
}

/// One certificate and its security context: its own session-id context, store, ticketer and
/// rustls configurations (two with `--tickets auto`), over the server's one cache.
pub struct Entry {
    /// The certificate file, or `self-signed`.
    pub source: String,
    /// The names it serves, lower-case (`*.example.com` for one label).
    pub names: Vec<String>,
    /// The SHA-256 fingerprint of its leaf.
    pub fingerprint: String,
    /// Its client-certificate policy.
    pub client_auth: ClientAuth,
    main: ServerContext,
    tls12_tickets: Option<ServerContext>,
    /// Its ticketer, in the modes that use one.
    pub ticketer: Option<Arc<Ticketer>>,
    resolver: Arc<EntryResolver>,
    ocsp: Option<Ocsp>,
    /// ClientHellos this entry was chosen for.
    pub hellos: AtomicU64,
}

/// An entry's OCSP response, stapled until it expires.
struct Ocsp {
    staple: Staple,
    /// The key without the response, swapped in once it expired.
    bare: Arc<CertifiedKey>,
    stapled: AtomicBool,
}

impl Entry {
    /// The session-id context of its sessions and tickets.
    pub fn sid_ctx(&self) -> &SidCtx {
        self.main.store().sid_ctx()
    }

    /// Whether its OCSP response is stapled now.
    pub fn ocsp_stapled(&self) -> bool {
        self.ocsp
            .as_ref()
            .is_some_and(|o| o.stapled.load(Ordering::Relaxed))
    }

    /// The context for `hello`, by the ticket rule: with `--tickets auto`, a client whose
    /// hello offers TLS 1.2 and not TLS 1.3 and asks for a ticket gets the TLS 1.2
    /// configuration with tickets; every other client, an unreadable hello included, the
    /// stateful one. So a misparsed hello never receives a stateless (replayable) TLS 1.3
    /// ticket.
    fn context(&self, hello: Option<&ClientHelloInfo>) -> ServerContext {
        match (&self.tls12_tickets, hello) {
            (Some(tls12), Some(h)) if Chooser::wants_tls12_ticket(h) => tls12.clone(),
            _ => self.main.clone(),
        }
    }

    /// Stops stapling the OCSP response once it expired (`now`, seconds since the epoch);
    /// true if it stopped now.
    pub fn check_ocsp(&self, now: i64) -> bool {
        let Some(ocsp) = &self.ocsp else {
            return false;
        };
        if ocsp.staple.expired_at(now) && ocsp.stapled.swap(false, Ordering::Relaxed) {
            self.resolver.key.store(ocsp.bare.clone());
            return true;
        }
        false
    }
}

/// The certificate of an entry, swapped without its OCSP response once that expired.
#[derive(Debug)]
struct EntryResolver {
    key: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for EntryResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// No certificate: the handshake of a hello refused by `--strict-sni` fails there.
#[derive(Debug)]
struct Refuse;

impl ResolvesServerCert for Refuse {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// The message rustls gives when a certificate resolver returns none.
const REFUSED: &str = "no server certificate chain resolved";

/// Whether an accept failed because `--strict-sni` refused the hello's name.
pub fn is_sni_refusal(e: &AcceptError) -> bool {
    matches!(e, AcceptError::Tls(rustls::Error::General(m)) if m == REFUSED)
}

/// Every certificate entry, the default first, and the names that choose them.
pub struct Certificates {
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, usize>,
    /// `*.example.com` as `example.com`.
    wildcard: HashMap<Box<str>, usize>,
    /// With `--strict-sni`, the context of refused hellos.
    refuse: Option<ServerContext>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("entries", &self.entries.len())
            .field("strict_sni", &self.refuse.is_some())
            .finish()
    }
}

/// The longest DNS name.
const MAX_NAME: usize = 253;

impl Certificates {
    /// The entries, the default first (never empty).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry that serves `name` (as the client sent it, any case): an exact name first,
    /// then a wildcard for its first label. No allocation.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        let bytes = name.as_bytes();
        if bytes.len() > MAX_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        let lower = &mut buf[..bytes.len()];
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        let index = match self.exact.get(lower) {
            Some(i) => *i,
            None => {
                let (label, parent) = lower.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                *self.wildcard.get(parent)?
            }
        };
        self.entries.get(index)
    }

    /// Checks every entry's OCSP response at `now`; logs each that expired now.
    pub fn check_ocsp(&self, now: i64) {
        for entry in self.entries() {
            if entry.check_ocsp(now) {
                tracing::warn!(certificate = %entry.source, "OCSP response expired: no longer stapled");
            }
        }
    }
}

/// What the chooser counted of the names clients asked for.
#[derive(Debug, Default)]
pub struct SniCounters {
    /// Hellos that named no certificate's name.
    pub unknown: AtomicU64,
    /// Hellos without a name, or that the parser could not read.
    pub missing: AtomicU64,
    /// Hellos refused by `--strict-sni`.
    pub refused: AtomicU64,
}

/// Chooses each connection's configuration: the certificate entry by the hello's server name
/// (the default entry without one, for an unknown one, or for a hello the parser could not
/// read; or none with `--strict-sni`), then that entry's configuration by the ticket rule
/// ([`Chooser::wants_tls12_ticket`]).
#[derive(Clone, Debug)]
pub struct Chooser {
    certificates: Arc<ArcSwap<Certificates>>,
    counters: Arc<SniCounters>,
}

impl Chooser {
    /// Whether a ClientHello offers TLS 1.2 and not TLS 1.3 (no TLS 1.3 in its
    /// `supported_versions`, or no such extension at all), and asks for a TLS 1.2 ticket (the
    /// `session_ticket` extension). A TLS 1.2 client without that extension resumes by id only:
    /// it gets the stateful configuration, which gives its sessions ids.
    pub fn wants_tls12_ticket(hello: &ClientHelloInfo) -> bool {
        !hello.supports_tls13 && hello.offers_tls12() && hello.session_ticket
    }

    /// The certificates' and the names' metrics, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let certs = self.certificates.load();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP reprise_certificate_info A certificate entry: its names, leaf fingerprint, session-id context (first bytes) and client-certificate policy.");
        let _ = writeln!(out, "# TYPE reprise_certificate_info gauge");
        for (i, e) in certs.entries().iter().enumerate() {
            let _ = writeln!(
                out,
                "reprise_certificate_info{{entry=\"{i}\",names=\"{}\",sha256=\"{}\",sid_ctx=\"{}\",client_auth=\"{}\"}} 1",
                e.names.join(" "),
                e.fingerprint,
                short_hex(e.sid_ctx().as_bytes()),
                client_auth_name(e.client_auth),
            );
        }
        let _ = writeln!(out, "# HELP reprise_certificate_hellos_total ClientHellos each certificate entry was chosen for.");
        let _ = writeln!(out, "# TYPE reprise_certificate_hellos_total counter");
        for (i, e) in certs.entries().iter().enumerate() {
            let _ = writeln!(
                out,
                "reprise_certificate_hellos_total{{entry=\"{i}\"}} {}",
                e.hellos.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP reprise_certificate_ocsp_stapled Whether the entry staples an OCSP response now.");
        let _ = writeln!(out, "# TYPE reprise_certificate_ocsp_stapled gauge");
        for (i, e) in certs.entries().iter().enumerate() {
            let _ = writeln!(
                out,
                "reprise_certificate_ocsp_stapled{{entry=\"{i}\"}} {}",
                u8::from(e.ocsp_stapled())
            );
        }
        let c = &self.counters;
        for (name, help, value) in [
            (
                "unknown",
                "ClientHellos whose server name no certificate serves.",
                &c.unknown,
            ),
            (
                "missing",
                "ClientHellos without a server name, or that could not be read.",
                &c.missing,
            ),
            (
                "refused",
                "ClientHellos refused by --strict-sni.",
                &c.refused,
            ),
        ] {
            let _ = writeln!(out, "# HELP reprise_sni_{name}_total {help}");
            let _ = writeln!(out, "# TYPE reprise_sni_{name}_total counter");
            let _ = writeln!(
                out,
                "reprise_sni_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

impl ChoosesConfig for Chooser {
    fn choose(&self, hello: Option<&ClientHelloInfo>) -> ServerContext {
        let certs = self.certificates.load();
        let name = hello.and_then(|h| h.server_name.as_deref());
        let found = match name {
            Some(name) => {
                let found = certs.find(name);
                if found.is_none() {
                    self.counters.unknown.fetch_add(1, Ordering::Relaxed);
                }
                found
            }
            None => {
                self.counters.missing.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let entry = match (found, &certs.refuse) {
            (Some(entry), _) => entry,
            (None, Some(refuse)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return refuse.clone();
            }
            (None, None) => &certs.entries[0],
        };
        entry.hellos.fetch_add(1, Ordering::Relaxed);
        entry.context(hello)
    }
}

/// The name of a client-certificate policy, for logs and metrics.
pub fn client_auth_name(auth: ClientAuth) -> &'static str {
    match auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    }
}

/// The first bytes of a value in hex, enough to compare contexts in logs and metrics.
pub fn short_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 8 {
        hex + "…"
    } else {
        hex
    }
}

/// Logs each certificate entry: its names, fingerprint, session-id context (distinct for each
/// entry), client-certificate policy and whether it staples an OCSP response.
pub fn log_certificates(tls: &ServerTls, strict_sni: bool) {
    let certs = tls.certificates.load();
    for (i, e) in certs.entries().iter().enumerate() {
        tracing::info!(
            entry = i,
            certificate = %e.source,
            names = %e.names.join(" "),
            sha256 = %e.fingerprint,
            sid_ctx = %short_hex(e.sid_ctx().as_bytes()),
            client_auth = client_auth_name(e.client_auth),
            ocsp = e.ocsp_stapled(),
            default = i == 0,
            "certificate"
        );
    }
    if strict_sni {
        tracing::info!("strict-sni: hellos that name no certificate's name are refused");
    }
}

/// Re-checks the OCSP responses every minute, and stops stapling each once it expired.
pub async fn watch_ocsp(certificates: Arc<ArcSwap<Certificates>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        certificates.load().check_ocsp(ocsp::now());
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
    /// The chooser of every connection's configuration (see [`Chooser`]).
    pub fn chooser(&self) -> Chooser {
        Chooser {
            certificates: self.certificates.clone(),
            counters: self.sni.clone(),
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
        .map_err(|e| anyhow::anyhow!("certificate file {}: {}", path.display(), pem_problem(&e)))?;
    if chain.is_empty() {
        bail!(
            "certificate file {}: no PEM certificate in it",
            path.display()
        );
    }
    Ok(chain)
}

/// A PEM parser's error in words (its own names the markers by their bytes).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "a section has no end line ({})",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { line } => format!(
            "a malformed BEGIN line ({})",
            String::from_utf8_lossy(line)
                .chars()
                .take(64)
                .collect::<String>()
        ),
        E::Base64Decode(e) => format!("bad base64 in a section ({e})"),
        E::NoItemsFound => "nothing of the expected kind in it".to_owned(),
        other => other.to_string(),
    }
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "key file {}: no usable PEM private key ({})",
            path.display(),
            pem_problem(&e)
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

/// The binary's provider ([`default_provider`]) with the AES-128-GCM and ChaCha20 suites
/// (SHA-256) ahead of AES-256-GCM (SHA-384), which the server then prefers whatever the
/// client's order.
///
/// Every suite here is strong; the SHA-256 suites make the key schedule, a large part of a
/// resumed handshake's cost, markedly cheaper: a resumed handshake on a SHA-384 suite costs 12
/// to 23 % more server CPU (`docs/PERFORMANCE.md`, "The crypto provider"), since SHA-384 has no
/// instructions of its own on most CPUs where SHA-256 has.
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

/// The source of a generated certificate.
const SELF_SIGNED: &str = "self-signed";

/// A certificate entry read and checked, before it has a store and configurations.
struct Loaded {
    source: String,
    certified: CertifiedKey,
    names: Vec<String>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    client_auth: ClientAuth,
    sid_ctx: SidCtx,
    staple: Option<Staple>,
    fingerprint: String,
}

/// Reads one certificate entry: its chain and key (which must match), its names, its client
/// CA, its session-id context and its OCSP response.
fn load_entry(c: &CertificateSettings, provider: &Arc<CryptoProvider>) -> anyhow::Result<Loaded> {
    let chain = load_chain(&c.cert)?;
    let key = load_key(&c.key)?;
    let source = c.cert.display().to_string();
    let auth = (c.client_auth.as_ref(), c.sid_ctx.as_deref());
    let mut loaded = loaded(source, chain, key, auth, provider)?;
    if let Some(names) = &c.names {
        loaded.names = names.clone();
    }
    if let Some(path) = &c.ocsp {
        let staple = Staple::load(path, &loaded.certified.cert)?;
        if staple.expired_at(ocsp::now()) {
            tracing::warn!(certificate = %loaded.source, ocsp = %path.display(), "OCSP response expired: not stapled");
        }
        loaded.staple = Some(staple);
    }
    Ok(loaded)
}

/// The client CA and policy of an entry, and its session-id context name.
type AuthAndName<'a> = (
    Option<&'a (std::path::PathBuf, ClientAuthMode)>,
    Option<&'a str>,
);

/// An entry from a chain and key, with the names of its certificate.
fn loaded(
    source: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    (client_auth, name): AuthAndName<'_>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Loaded> {
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        anyhow::anyhow!(
            "certificate and key of {source}: {e} (does the key belong to the certificate?)"
        )
    })?;
    loaded_certified(source, certified, (client_auth, name), provider)
}

/// An entry from a certificate and its signing key, with the names of its certificate.
fn loaded_certified(
    source: String,
    certified: CertifiedKey,
    (client_auth, name): AuthAndName<'_>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Loaded> {
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| anyhow::anyhow!("{source}: no certificate"))?;
    let fingerprint = fingerprint(leaf);
    let names = certificate_names(leaf);
    let (verifier, client_auth, cas) = verifier(client_auth, provider)?;
    // An operator's name still binds the client-auth policy and CAs (not the chain, so that
    // sessions survive a certificate renewal).
    let sid_ctx = match name {
        Some(name) => named_sid_ctx(name.as_bytes(), client_auth, &cas),
        None => {
            let ca_bytes: Vec<u8> = cas.iter().flat_map(|c| c.as_ref().to_vec()).collect();
            derive_sid_ctx(&certified.cert, client_auth, &ca_bytes)
        }
    };
    Ok(Loaded {
        source,
        certified,
        names,
        verifier,
        client_auth,
        sid_ctx,
        staple: None,
        fingerprint,
    })
}

/// The DNS names of a certificate's subjectAltName, lower-case.
fn certificate_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok(x509) = openssl::x509::X509::from_der(leaf) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for general in x509.subject_alt_names().iter().flatten() {
        if let Some(name) = general.dnsname() {
            if let Ok(name) = crate::config::server_name(name) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// A client-certificate verifier, its policy and its CAs.
type Verifier = (
    Option<Arc<dyn ClientCertVerifier>>,
    ClientAuth,
    Vec<CertificateDer<'static>>,
);

/// The client-certificate verifier, policy and CAs of a CA bundle and mode.
fn verifier(
    client_auth: Option<&(std::path::PathBuf, ClientAuthMode)>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Verifier> {
    let Some((ca_path, mode)) = client_auth else {
        return Ok((None, ClientAuth::None, Vec::new()));
    };
    let cas = load_chain(ca_path).with_context(|| "client CA".to_owned())?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| anyhow::anyhow!("client CA file {}: {e}", ca_path.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let (verifier, auth) = match mode {
        ClientAuthMode::Required => (verifier, ClientAuth::Required),
        ClientAuthMode::Optional => (verifier.allow_unauthenticated(), ClientAuth::Optional),
    };
    let verifier = verifier
        .build()
        .map_err(|e| anyhow::anyhow!("client CA file {}: {e}", ca_path.display()))?;
    Ok((Some(verifier), auth, cas))
}

/// Reads every certificate entry of the settings (a self-signed one without any), and checks
/// that no two share a name or a security context.
fn load_entries(
    settings: &Settings,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<(Vec<Loaded>, bool)> {
    if settings.certificates.is_empty() {
        let (chain, key) = self_signed()?;
        let auth = (settings.client_auth.as_ref(), settings.sid_ctx.as_deref());
        let entry = loaded(SELF_SIGNED.to_owned(), chain, key, auth, provider)?;
        return Ok((vec![entry], true));
    }
    let entries = settings
        .certificates
        .iter()
        .map(|c| load_entry(c, provider))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, entry) in entries.iter().enumerate().skip(1) {
        if entry.names.is_empty() {
            bail!(
                "certificate {}: no DNS name in it to serve (give it names)",
                entry.source
            );
        }
        for earlier in &entries[..i] {
            if let Some(name) = entry.names.iter().find(|n| earlier.names.contains(n)) {
                bail!(
                    "certificates {} and {} both serve {name}: give one of them names",
                    earlier.source,
                    entry.source
                );
            }
            if earlier.sid_ctx == entry.sid_ctx {
                bail!(
                    "certificates {} and {} have one session-id context (the same certificate or sid-ctx, and the same client-auth): merge them, or name each its own sid-ctx",
                    earlier.source,
                    entry.source
                );
            }
        }
    }
    Ok((entries, false))
}

/// Builds the server's TLS configuration and its cache from the settings.
pub fn build(settings: &Settings) -> anyhow::Result<ServerTls> {
    let provider = Arc::new(provider());
    // Every certificate first: a bad one stops the start before any tier is opened.
    let (loaded, self_signed) = load_entries(settings, &provider)?;

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
    // `auto` without TLS 1.2 issues only stateful TLS 1.3 tickets: no keys to keep then.
    let tls12 = settings.tls_versions.contains(&TlsVersion::Tls12);
    let tickets = match &settings.ticket_keys {
        Some(from) if settings.tickets == TicketMode::Stateless || tls12 => {
            Some(ticket_keys(settings, from)?)
        }
        _ => None,
    };
    let certificates = assemble(settings, loaded, &provider, &cache, tickets.as_ref())?;
    if let Some(old) = settings.deprecated_key_file {
        tracing::warn!(
            "{old} is deprecated: use key-file (--key-file), which seals the sessions of every tier"
        );
    }
    Ok(ServerTls {
        tickets,
        cache,
        self_signed,
        disk,
        certificates: Arc::new(ArcSwap::from_pointee(certificates)),
        sni: Arc::new(SniCounters::default()),
    })
}

/// What a reload did to the certificate entries, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swapped {
    /// Entries served now.
    pub entries: usize,
    /// Entries whose session-id context is unchanged: their sessions resume on.
    pub kept: usize,
    /// Entries of the same file whose context changed (the certificate, its client CAs or
    /// client-auth policy): their sessions start afresh.
    pub changed: usize,
    /// Entries with a new file.
    pub added: usize,
    /// Entries no longer served.
    pub removed: usize,
}

impl ServerTls {
    /// Reads the certificate entries of `settings` again (chains, keys, client CAs, OCSP
    /// responses) and builds their contexts over this server's cache and ticket keys, without
    /// serving them: an error changes nothing. A self-signed certificate is kept, not
    /// generated again, so that its sessions resume on.
    pub fn prepare_reload(&self, settings: &Settings) -> anyhow::Result<Certificates> {
        let provider = Arc::new(provider());
        let current = self.certificates.load();
        let loaded = match current.entries.first() {
            Some(old) if settings.certificates.is_empty() && old.source == SELF_SIGNED => {
                let certified = CertifiedKey::clone(&old.resolver.key.load());
                let auth = (settings.client_auth.as_ref(), settings.sid_ctx.as_deref());
                vec![loaded_certified(
                    SELF_SIGNED.to_owned(),
                    certified,
                    auth,
                    &provider,
                )?]
            }
            _ => load_entries(settings, &provider)?.0,
        };
        assemble(
            settings,
            loaded,
            &provider,
            &self.cache,
            self.tickets.as_ref(),
        )
    }

    /// Serves `new` to the handshakes that start from now on; a connection already accepted
    /// keeps the configuration it was given. An entry keeps its sessions when its session-id
    /// context did not change; each entry whose context changed is logged.
    pub fn swap(&self, new: Certificates) -> Swapped {
        let old = self.certificates.load_full();
        let mut swapped = Swapped {
            entries: new.entries.len(),
            ..Swapped::default()
        };
        for entry in &new.entries {
            let Some(before) = old.entries.iter().find(|o| o.source == entry.source) else {
                swapped.added += 1;
                tracing::info!(certificate = %entry.source, sid_ctx = %short_hex(entry.sid_ctx().as_bytes()), "reload: certificate added");
                continue;
            };
            entry
                .hellos
                .store(before.hellos.load(Ordering::Relaxed), Ordering::Relaxed);
            if before.sid_ctx() == entry.sid_ctx() {
                swapped.kept += 1;
                if before.fingerprint != entry.fingerprint {
                    tracing::info!(certificate = %entry.source, sha256 = %entry.fingerprint, "reload: certificate renewed under its named sid-ctx: its sessions resume on");
                }
            } else {
                swapped.changed += 1;
                tracing::warn!(
                    certificate = %entry.source,
                    sha256 = %entry.fingerprint,
                    old_sid_ctx = %short_hex(before.sid_ctx().as_bytes()),
                    sid_ctx = %short_hex(entry.sid_ctx().as_bytes()),
                    "reload: the certificate, its client CAs or its client-auth policy changed: a new session-id context, its sessions start afresh"
                );
            }
        }
        for before in &old.entries {
            if !new.entries.iter().any(|e| e.source == before.source) {
                swapped.removed += 1;
                tracing::info!(certificate = %before.source, "reload: certificate removed");
            }
        }
        self.certificates.store(Arc::new(new));
        swapped
    }
}

/// Makes each loaded entry its store over `cache`, its ticketer and its configurations, and
/// the names' tables: what the chooser reads.
fn assemble(
    settings: &Settings,
    loaded: Vec<Loaded>,
    provider: &Arc<CryptoProvider>,
    cache: &Arc<SessionCache>,
    tickets: Option<&Tickets>,
) -> anyhow::Result<Certificates> {
    let versions = TlsVersion::rustls(&settings.tls_versions);
    let alpn: Vec<Vec<u8>> = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    // One configuration, or two with `--tickets auto`: the same certificate, client
    // verifier, ALPN and store, so the same security context.
    let config_for = |versions: &[&'static rustls::SupportedProtocolVersion],
                      verifier: &Option<Arc<dyn ClientCertVerifier>>,
                      resolver: Arc<dyn ResolvesServerCert>|
     -> anyhow::Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .context("TLS versions")?;
        let builder = match verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v.clone()),
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = alpn.clone();
        config.ignore_client_order = true;
        Ok(config)
    };
    let mut entries = Vec::with_capacity(loaded.len());
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (index, l) in loaded.into_iter().enumerate() {
        let bare = Arc::new(l.certified.clone());
        let ocsp = l.staple.map(|staple| {
            let stapled = !staple.expired_at(ocsp::now());
            Ocsp {
                staple,
                bare: bare.clone(),
                stapled: AtomicBool::new(stapled),
            }
        });
        let key = match &ocsp {
            Some(o) if o.stapled.load(Ordering::Relaxed) => Arc::new(CertifiedKey {
                ocsp: Some(o.staple.der.clone()),
                ..l.certified
            }),
            _ => bare,
        };
        let resolver = Arc::new(EntryResolver {
            key: ArcSwap::new(key),
        });
        let mut config = config_for(&versions, &l.verifier, resolver.clone())?;
        let store = ServerStore::new(cache.clone(), l.sid_ctx, l.client_auth)
            .map_err(|e| anyhow::anyhow!("sid-ctx: {e}"))?;
        config.session_storage = Arc::new(store.clone());
        // Each context's tickets are bound to its session-id context, as its sessions are.
        let ticketer = tickets
            .map(|t| Ticketer::new(t.source.clone(), l.sid_ctx.as_bytes(), t.counters.clone()));
        let held_ticketer = ticketer.clone();
        let mut tickets_config = None;
        let tls12 = settings.tls_versions.contains(&TlsVersion::Tls12);
        match (settings.tickets, ticketer) {
            (TicketMode::Auto, Some(ticketer)) => {
                config.send_tls13_tickets = settings.tls13_tickets;
                let tls13 = settings.tls_versions.contains(&TlsVersion::Tls13);
                if tls12 && !tls13 {
                    // No TLS 1.3 to keep stateful: the one configuration has the ticketer.
                    config.ticketer = ticketer;
                } else if tls12 {
                    let mut with_tickets =
                        config_for(&[&rustls::version::TLS12], &l.verifier, resolver.clone())?;
                    // Chosen only for hellos that ask for a ticket: sessions offered by id
                    // still resume, new ones travel in their ticket and take no place in the
                    // cache.
                    with_tickets.session_storage = Arc::new(store.for_tickets());
                    with_tickets.ticketer = ticketer;
                    tickets_config = Some(
                        ServerContext::new(Arc::new(with_tickets), store.for_tickets())
                            .with_versions(&[&rustls::version::TLS12]),
                    );
                }
            }
            (TicketMode::Stateless, Some(ticketer)) => {
                config.ticketer = ticketer;
                config.send_tls13_tickets = settings.tls13_tickets;
            }
            (TicketMode::Off, _) => config.send_tls13_tickets = 0,
            _ => config.send_tls13_tickets = settings.tls13_tickets,
        }
        for name in &l.names {
            let table = match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.into()),
                None => exact.entry(name.as_str().into()),
            };
            table.or_insert(index);
        }
        entries.push(Entry {
            source: l.source,
            names: l.names,
            fingerprint: l.fingerprint,
            client_auth: l.client_auth,
            main: settings
                .early
                .apply(ServerContext::new(Arc::new(config), store).with_versions(&versions)),
            tls12_tickets: tickets_config,
            ticketer: held_ticketer,
            resolver,
            ocsp,
            hellos: AtomicU64::new(0),
        });
    }
    let refuse = if settings.strict_sni {
        // No certificate, no ticket, and a context of its own that nothing is stored under:
        // nothing resumes there, and every handshake fails at the certificate.
        let mut config = config_for(&versions, &None, Arc::new(Refuse))?;
        let sid_ctx = SidCtx::new(b"reprise strict-sni refusal")
            .map_err(|e| anyhow::anyhow!("strict-sni: {e}"))?;
        let store = ServerStore::new(cache.clone(), sid_ctx, ClientAuth::None)
            .map_err(|e| anyhow::anyhow!("strict-sni: {e}"))?
            .for_tickets();
        config.session_storage = Arc::new(store.clone());
        config.send_tls13_tickets = 0;
        Some(ServerContext::new(Arc::new(config), store).with_versions(&versions))
    } else {
        None
    };
    Ok(Certificates {
        entries,
        exact,
        wildcard,
        refuse,
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

    fn named(name: &str) -> ClientHelloInfo {
        ClientHelloInfo {
            server_name: Some(name.to_owned()),
            ..hello(&[0x0304, 0x0303])
        }
    }

    fn server(tickets: TicketMode) -> anyhow::Result<ServerTls> {
        let settings = Settings::resolve(ServeArgs {
            tickets: Some(tickets),
            ..ServeArgs::default()
        })?;
        build(&settings)
    }

    /// The default entry's two configurations.
    fn configs(tls: &ServerTls) -> (Arc<ServerConfig>, Option<Arc<ServerConfig>>) {
        let certs = tls.certificates.load();
        let entry = &certs.entries()[0];
        (
            entry.main.config().clone(),
            entry.tls12_tickets.as_ref().map(|c| c.config().clone()),
        )
    }

    /// With `auto`, only a hello that offers TLS 1.2 and not TLS 1.3 gets the configuration
    /// with the ticketer; an unreadable hello, or one that offers TLS 1.3, the stateful one.
    #[test]
    fn auto_gives_tickets_to_tls12_only_hellos() -> anyhow::Result<()> {
        let tls = server(TicketMode::Auto)?;
        let (config, with_tickets) = configs(&tls);
        let with_tickets = with_tickets.expect("two configurations");
        assert!(with_tickets.ticketer.enabled());
        assert!(!config.ticketer.enabled());
        assert_eq!(config.send_tls13_tickets, 2);
        let chooser = tls.chooser();
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
            assert!(Arc::ptr_eq(&chosen(stateful.as_ref()), &config));
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
        let (config, with_tickets) = configs(&tls);
        assert!(with_tickets.is_none());
        assert!(config.ticketer.enabled());
        let tls = server(TicketMode::Stateful)?;
        let (config, with_tickets) = configs(&tls);
        assert!(with_tickets.is_none() && tls.tickets.is_none());
        assert!(!config.ticketer.enabled());
        let tls = server(TicketMode::Off)?;
        assert_eq!(configs(&tls).0.send_tls13_tickets, 0);
        Ok(())
    }

    /// Three certificates written as PEM files: `a` for a.test and b.test, `w` for
    /// *.w.test, `m` for m.test; and a client CA.
    fn three(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
        let mut paths = Vec::new();
        for (name, sans) in [
            ("a", vec!["a.test", "B.test"]),
            ("w", vec!["*.w.test"]),
            ("m", vec!["m.test"]),
        ] {
            let sans: Vec<String> = sans.into_iter().map(str::to_owned).collect();
            let generated = rcgen::generate_simple_self_signed(sans)?;
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}.key"));
            std::fs::write(&cert, generated.cert.pem())?;
            std::fs::write(&key, generated.signing_key.serialize_pem())?;
            paths.push(cert);
            paths.push(key);
        }
        Ok(paths)
    }

    fn sni_server(strict: bool) -> anyhow::Result<(ServerTls, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let paths = three(dir.path())?;
        let settings = Settings::resolve(ServeArgs {
            cert: paths.iter().step_by(2).cloned().collect(),
            key: paths.iter().skip(1).step_by(2).cloned().collect(),
            strict_sni: strict,
            ..ServeArgs::default()
        })?;
        Ok((build(&settings)?, dir))
    }

    /// Names choose their entry, any case, exact names first, a wildcard for one label only;
    /// anything else gets the default entry; each entry has its own context.
    #[test]
    fn the_server_name_chooses_the_entry() -> anyhow::Result<()> {
        let (tls, _dir) = sni_server(false)?;
        let chooser = tls.chooser();
        let certs = tls.certificates.load();
        let ctx = |i: usize| certs.entries()[i].sid_ctx().as_bytes().to_vec();
        let chosen =
            |h: Option<&ClientHelloInfo>| chooser.choose(h).store().sid_ctx().as_bytes().to_vec();
        assert_ne!(ctx(0), ctx(1));
        assert_ne!(ctx(1), ctx(2));
        assert_ne!(ctx(0), ctx(2));
        for (name, entry) in [
            ("a.test", 0),
            ("b.test", 0),
            ("A.TEST", 0),
            ("x.w.test", 1),
            ("X.W.Test", 1),
            ("m.test", 2),
            // Unknown: the default.
            ("w.test", 0),
            ("x.y.w.test", 0),
            (".w.test", 0),
            ("nothing.test", 0),
        ] {
            assert_eq!(chosen(Some(&named(name))), ctx(entry), "{name}");
        }
        assert_eq!(chosen(None), ctx(0));
        assert_eq!(chosen(Some(&hello(&[0x0304]))), ctx(0));
        assert_eq!(tls.sni.unknown.load(Ordering::Relaxed), 4);
        assert_eq!(tls.sni.missing.load(Ordering::Relaxed), 2);
        assert_eq!(certs.entries()[1].hellos.load(Ordering::Relaxed), 2);
        let long = "a".repeat(300);
        assert!(certs.find(&long).is_none());
        let metrics = chooser.render_metrics();
        assert!(
            metrics.contains("reprise_certificate_info{entry=\"2\",names=\"m.test\""),
            "{metrics}"
        );
        assert!(metrics.contains("reprise_sni_unknown_total 4"), "{metrics}");
        Ok(())
    }

    /// With `--strict-sni`, an unknown name, no name or an unreadable hello get the refusal
    /// context: no certificate, a context of its own.
    #[test]
    fn strict_sni_refuses_what_names_no_entry() -> anyhow::Result<()> {
        let (tls, _dir) = sni_server(true)?;
        let chooser = tls.chooser();
        let certs = tls.certificates.load();
        let refused = certs.refuse.as_ref().expect("a refusal context");
        for hello in [None, Some(hello(&[0x0304])), Some(named("nothing.test"))] {
            let chosen = chooser.choose(hello.as_ref());
            assert!(Arc::ptr_eq(chosen.config(), refused.config()));
            assert!(certs
                .entries()
                .iter()
                .all(|e| e.sid_ctx() != chosen.store().sid_ctx()));
        }
        assert_eq!(tls.sni.refused.load(Ordering::Relaxed), 3);
        let chosen = chooser.choose(Some(&named("m.test")));
        assert_eq!(chosen.store().sid_ctx(), certs.entries()[2].sid_ctx());
        assert!(is_sni_refusal(&AcceptError::Tls(rustls::Error::General(
            REFUSED.to_owned()
        ))));
        Ok(())
    }

    /// rustls's message for a resolver that returns no certificate, which `is_sni_refusal`
    /// relies on: a real handshake against the refusal configuration.
    #[test]
    fn a_refused_handshake_fails_with_the_known_message() -> anyhow::Result<()> {
        let (tls, _dir) = sni_server(true)?;
        let certs = tls.certificates.load();
        let refused = certs.refuse.as_ref().expect("a refusal context");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("nothing.test")?;
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(refused.config().clone())?;
        let mut wire = Vec::new();
        client.write_tls(&mut wire)?;
        server.read_tls(&mut wire.as_slice())?;
        let err = server.process_new_packets().err();
        assert_eq!(err, Some(rustls::Error::General(REFUSED.to_owned())));
        Ok(())
    }

    /// Two entries may not share a name, nor a context.
    #[test]
    fn entries_may_not_share_a_name_or_a_context() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = three(dir.path())?;
        let err = |certs: Vec<std::path::PathBuf>, keys: Vec<std::path::PathBuf>| {
            let settings = Settings::resolve(ServeArgs {
                cert: certs,
                key: keys,
                ..ServeArgs::default()
            });
            settings
                .and_then(|s| build(&s))
                .err()
                .map(|e| format!("{e:#}"))
        };
        let e = err(
            vec![paths[0].clone(), paths[0].clone()],
            vec![paths[1].clone(), paths[1].clone()],
        );
        assert!(e.is_some_and(|e| e.contains("both serve a.test")));
        let e = err(
            vec![paths[0].clone(), paths[2].clone()],
            vec![paths[1].clone(), paths[1].clone()],
        );
        assert!(e.is_some_and(|e| e.contains("does the key belong")));
        Ok(())
    }
}
