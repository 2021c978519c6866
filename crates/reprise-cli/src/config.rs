//! `reprise serve` settings: the TOML file, the flags over it, the defaults under both, and the
//! checks that run before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use reprise::CacheMode;
use serde::Deserialize;

use reprise_redis::RedisTarget;

use crate::cli::{AcceptModel, ClientAuthMode, ProxyVersion, ServeArgs, TicketMode, TlsVersion};
use crate::proxy::Cidr;

/// The settings file: the flags' names and meanings, in TOML.
///
/// ```toml
/// listen = ["127.0.0.1:8443", "[::1]:8443"]
/// cache-size = 50000
/// cache-mode = "server,no-auto-clear"
/// tls-versions = ["1.2", "1.3"]
/// tickets = "auto"
/// ticket-keys = "/etc/reprise/tickets.keys"
/// ticket-lifetime = 3600
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    listen: Option<Vec<String>>,
    upstream: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tls_versions: Option<Vec<TlsVersion>>,
    alpn: Option<Vec<String>>,
    cache_size: Option<usize>,
    cache_timeout: Option<u64>,
    cache_mode: Option<String>,
    sid_ctx: Option<String>,
    tickets: Option<TicketMode>,
    ticket_keys: Option<PathBuf>,
    ticket_keys_from_redis: Option<bool>,
    ticket_lifetime: Option<u64>,
    tls13_tickets: Option<usize>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuthMode>,
    metrics_listen: Option<String>,
    pid_file: Option<PathBuf>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    hello_timeout: Option<u64>,
    handshake_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    shutdown_timeout: Option<u64>,
    workers: Option<usize>,
    accept_model: Option<AcceptModel>,
    redis: Option<String>,
    key_file: Option<PathBuf>,
    /// The former name of `key-file`.
    redis_key_file: Option<PathBuf>,
    redis_timeout_ms: Option<u64>,
    redis_prefix: Option<String>,
    redis_misses_per_address: Option<u32>,
    cache_dir: Option<PathBuf>,
    cache_dir_max_bytes: Option<u64>,
    access_log: Option<PathBuf>,
    access_log_format: Option<crate::access_log::Format>,
    accept_proxy_protocol: Option<bool>,
    proxy_protocol_from: Option<Vec<String>>,
    upstream_proxy_protocol: Option<ProxyVersion>,
    early_data: Option<u32>,
    upstream_early_data: Option<bool>,
    early_data_methods: Option<Vec<String>>,
    certificate: Option<Vec<CertificateFile>>,
    strict_sni: Option<bool>,
}

/// One `[[certificate]]` entry of the settings file: a certificate, its key, and the security
/// context it serves.
///
/// ```toml
/// [[certificate]]
/// cert = "/etc/reprise/www.pem"
/// key = "/etc/reprise/www.key"
///
/// [[certificate]]
/// cert = "/etc/reprise/api.pem"
/// key = "/etc/reprise/api.key"
/// names = ["api.example.com"]
/// client-ca = "/etc/reprise/clients.pem"
/// client-auth = "required"
/// ocsp = "/etc/reprise/api.ocsp.der"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertificateFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    names: Option<Vec<String>>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuthMode>,
    ocsp: Option<PathBuf>,
    sid_ctx: Option<String>,
}

/// Everything `reprise serve` runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// The TCP backend, or `None` for the built-in responder.
    pub upstream: Option<String>,
    /// The certificates, the default first; empty for a self-signed certificate.
    pub certificates: Vec<CertificateSettings>,
    /// Whether a hello that names no certificate's name (or none) is refused rather than
    /// served the default certificate.
    pub strict_sni: bool,
    /// TLS versions to accept, sorted, at least one.
    pub tls_versions: Vec<TlsVersion>,
    /// ALPN protocols to offer.
    pub alpn: Vec<String>,
    /// The cache's size limit (0 = unlimited).
    pub cache_size: usize,
    /// The cache's session timeout, in seconds.
    pub cache_timeout: u64,
    /// The cache mode.
    pub cache_mode: CacheMode,
    /// An explicit session-id context, or `None` to derive one.
    pub sid_ctx: Option<String>,
    /// How tickets are made.
    pub tickets: TicketMode,
    /// Where the ticket keys come from (None with `stateful` and `off`, which use none).
    pub ticket_keys: Option<TicketKeysFrom>,
    /// How long a ticket is valid, and the ticket keys' rotation period.
    pub ticket_lifetime: Duration,
    /// TLS 1.3 tickets per handshake.
    pub tls13_tickets: usize,
    /// The client CA bundle and policy, for mTLS.
    pub client_auth: Option<(PathBuf, ClientAuthMode)>,
    /// The metrics address.
    pub metrics_listen: Option<String>,
    /// Where to write the process id once listening (`reprise reload` reads it).
    pub pid_file: Option<PathBuf>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once.
    pub max_connections_per_address: usize,
    /// Time a client has to send its ClientHello, from the accept.
    pub hello_timeout: Duration,
    /// Time allowed for a handshake.
    pub handshake_timeout: Duration,
    /// Time an established connection may stay idle.
    pub idle_timeout: Duration,
    /// Time open connections get after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// The Redis tier, if any.
    pub redis: Option<RedisSettings>,
    /// The disk tier, if any.
    pub disk: Option<DiskSettings>,
    /// The former name of the key file's flag or setting, if one was used: logged once the
    /// server has its TLS state, so that a start-up error stays one line.
    pub deprecated_key_file: Option<&'static str>,
    /// The access log, if any.
    pub access_log: Option<crate::access_log::Settings>,
    /// Worker threads that serve connections.
    pub workers: usize,
    /// How the workers take connections.
    pub accept_model: AcceptModel,
    /// The networks whose PROXY protocol headers are read; empty: none is read.
    pub proxy_protocol_from: Vec<Cidr>,
    /// The PROXY protocol version sent to the upstream, if any.
    pub upstream_proxy_protocol: Option<ProxyVersion>,
    /// TLS 1.3 early data.
    pub early: crate::early::EarlySettings,
}

/// One certificate and the security context it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSettings {
    /// The PEM chain file.
    pub cert: PathBuf,
    /// The PEM key file.
    pub key: PathBuf,
    /// The names it serves, lower-case (`*.example.com` for one label under example.com), or
    /// `None` for the DNS names of the certificate.
    pub names: Option<Vec<String>>,
    /// The client CA bundle and policy, for mTLS.
    pub client_auth: Option<(PathBuf, ClientAuthMode)>,
    /// A DER OCSP response to staple.
    pub ocsp: Option<PathBuf>,
    /// An explicit session-id context name, or `None` to derive one.
    pub sid_ctx: Option<String>,
}

/// Where the ticket keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketKeysFrom {
    /// Keys of this process alone, rotated every ticket lifetime: tickets resume only on the
    /// instance that issued them, and not after a restart.
    Local,
    /// A key file the operator distributes and rotates (`--ticket-keys`).
    File(PathBuf),
    /// The fleet's ring in Redis (`--ticket-keys-from-redis`, the default with `--redis`).
    Redis,
}

/// Where and how to keep sessions on disk across restarts.
#[derive(Debug, Clone)]
pub struct DiskSettings {
    /// The directory.
    pub dir: PathBuf,
    /// The cap on the database file.
    pub max_bytes: u64,
    /// The key file (`--key-file`), or `None` for a key kept in the directory.
    pub key_file: Option<PathBuf>,
}

/// Where and how to share sessions through Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server or cluster.
    pub target: RedisTarget,
    /// The key file.
    pub key_file: PathBuf,
    /// The read budget.
    pub timeout: Duration,
    /// The key prefix.
    pub prefix: String,
    /// Reads a second per client address that find nothing (0: no limit).
    pub misses_per_address: u32,
}

/// The defaults, in one place.
pub mod defaults {
    /// Where to listen.
    pub const LISTEN: &str = "127.0.0.1:8443";
    /// Connections served at once.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Seconds for a handshake.
    pub const HANDSHAKE_TIMEOUT: u64 = 10;
    /// Seconds for the ClientHello (or the handshake timeout, if shorter).
    pub const HELLO_TIMEOUT: u64 = 5;
    /// The most TLS 1.3 tickets a handshake may issue.
    pub const MAX_TLS13_TICKETS: usize = 16;
    /// Seconds of idleness allowed.
    pub const IDLE_TIMEOUT: u64 = 60;
    /// Seconds to finish after a shutdown signal.
    pub const SHUTDOWN_TIMEOUT: u64 = 10;
    /// The most worker threads.
    pub const MAX_WORKERS: usize = 1024;
    /// TLS 1.3 tickets per handshake.
    pub const TLS13_TICKETS: usize = 2;
    /// Milliseconds a handshake may wait on Redis.
    pub const REDIS_TIMEOUT_MS: u64 = 5;
    /// The longest ticket lifetime, in seconds: 7 days, the most RFC 8446 (§4.6.1) lets a
    /// TLS 1.3 ticket live.
    pub const MAX_TICKET_LIFETIME: u64 = 604_800;
}

impl FileConfig {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's messages span several lines; keep the first, which names the problem.
            let first = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("config file {}: {first}{at}", path.display())
        })
    }
}

impl Settings {
    /// Checks that `new` (the settings read again on a reload) differs from these only in what
    /// a reload applies: the certificates and what their contexts are built from (`certificate`
    /// entries, `cert`/`key`, `client-ca`/`client-auth`, `sid-ctx`, `strict-sni`, `alpn`,
    /// `tls13-tickets`). Any other change (listen addresses, Redis, the tiers, timeouts,
    /// limits...) needs a restart: the error names each such setting.
    pub fn check_reloadable(&self, new: &Settings) -> anyhow::Result<()> {
        let mut probe = new.clone();
        probe.certificates.clone_from(&self.certificates);
        probe.strict_sni = self.strict_sni;
        probe.alpn.clone_from(&self.alpn);
        probe.client_auth.clone_from(&self.client_auth);
        probe.sid_ctx.clone_from(&self.sid_ctx);
        probe.tls13_tickets = self.tls13_tickets;
        probe.deprecated_key_file = self.deprecated_key_file;
        // Every field, by its debug form: a setting added later needs a restart unless it is
        // copied above.
        let (old, new) = (format!("{self:#?}"), format!("{probe:#?}"));
        if old == new {
            return Ok(());
        }
        bail!(
            "{} changed, which needs a restart",
            changed_settings(&old, &new)
        )
    }

    /// Merges the flags over the file (if `--config` names one) over the defaults, and checks
    /// the result.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Self> {
        let listen = if !args.listen.is_empty() {
            args.listen
        } else {
            file.listen
                .unwrap_or_else(|| vec![defaults::LISTEN.to_owned()])
        };
        if listen.is_empty() {
            bail!("listen: at least one address is needed");
        }
        let mut tls_versions = args
            .tls_versions
            .or(file.tls_versions)
            .unwrap_or_else(|| vec![TlsVersion::Tls12, TlsVersion::Tls13]);
        tls_versions.sort();
        tls_versions.dedup();
        if tls_versions.is_empty() {
            bail!("tls-versions: at least one version is needed (1.2, 1.3)");
        }
        let cache_mode = match args.cache_mode {
            Some(mode) => mode,
            None => match file.cache_mode {
                Some(text) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("cache-mode: {e}"))?,
                None => CacheMode::default(),
            },
        };
        let sid_ctx = args.sid_ctx.or(file.sid_ctx);
        check_sid_ctx(sid_ctx.as_deref())?;
        let client_auth = client_auth(
            args.client_ca.or(file.client_ca),
            args.client_auth.or(file.client_auth),
        )?;
        if client_auth.is_some() && sid_ctx.as_deref() == Some("") {
            bail!("sid-ctx: a server that verifies client certificates needs a non-empty session-id context");
        }
        let certificates = certificates(
            (args.cert, args.key),
            (file.cert, file.key),
            file.certificate,
            &client_auth,
            &sid_ctx,
        )?;
        let strict_sni = args.strict_sni || file.strict_sni.unwrap_or(false);
        let tls13_tickets = args
            .tls13_tickets
            .or(file.tls13_tickets)
            .unwrap_or(defaults::TLS13_TICKETS);
        if tls13_tickets > defaults::MAX_TLS13_TICKETS {
            bail!(
                "tls13-tickets is {tls13_tickets}; the limit is {}",
                defaults::MAX_TLS13_TICKETS
            );
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults::MAX_CONNECTIONS);
        if max_connections == 0 {
            bail!("max-connections must be at least 1");
        }
        let handshake_timeout = args
            .handshake_timeout
            .or(file.handshake_timeout)
            .unwrap_or(defaults::HANDSHAKE_TIMEOUT);
        if handshake_timeout == 0 {
            bail!("handshake-timeout must be at least 1 second");
        }
        let max_connections_per_address = args
            .max_connections_per_address
            .or(file.max_connections_per_address)
            .unwrap_or((max_connections / 4).max(1));
        if max_connections_per_address == 0 {
            bail!("max-connections-per-address must be at least 1");
        }
        let hello_timeout = match args.hello_timeout.or(file.hello_timeout) {
            Some(0) => bail!("hello-timeout must be at least 1 second"),
            Some(t) if t > handshake_timeout => bail!(
                "hello-timeout ({t} s) must not exceed handshake-timeout ({handshake_timeout} s)"
            ),
            Some(t) => t,
            None => defaults::HELLO_TIMEOUT.min(handshake_timeout),
        };
        let idle_timeout = args
            .idle_timeout
            .or(file.idle_timeout)
            .unwrap_or(defaults::IDLE_TIMEOUT);
        if idle_timeout == 0 {
            bail!("idle-timeout must be at least 1 second");
        }
        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        if workers == 0 || workers > defaults::MAX_WORKERS {
            bail!(
                "workers is {workers}; it must be between 1 and {}",
                defaults::MAX_WORKERS
            );
        }
        let accept_model = args.accept_model.or(file.accept_model).unwrap_or_default();
        let (key_file, deprecated_key_file) = key_file(
            [args.key_file, args.redis_key_file],
            [file.key_file, file.redis_key_file],
        )?;
        let cache_dir = args.cache_dir.or(file.cache_dir);
        let cache_dir_max_bytes = args.cache_dir_max_bytes.or(file.cache_dir_max_bytes);
        let disk = match cache_dir {
            Some(dir) => {
                let max_bytes = cache_dir_max_bytes.unwrap_or(reprise_disk::DEFAULT_MAX_BYTES);
                if max_bytes < reprise_disk::MIN_MAX_BYTES {
                    bail!(
                        "cache-dir-max-bytes must be at least {} (1 MiB)",
                        reprise_disk::MIN_MAX_BYTES
                    );
                }
                Some(DiskSettings {
                    dir,
                    max_bytes,
                    key_file: key_file.clone(),
                })
            }
            None if cache_dir_max_bytes.is_some() => bail!("cache-dir-max-bytes needs --cache-dir"),
            None => None,
        };
        let redis_url = args.redis.or(file.redis);
        // Without Redis, a key file given with --cache-dir is the disk's alone.
        let redis_key_file = if disk.is_some() && redis_url.is_none() {
            None
        } else {
            key_file
        };
        let redis = match (redis_url, redis_key_file) {
            (Some(url), Some(key_file)) => {
                let target: RedisTarget = url.parse().map_err(|e| anyhow::anyhow!("redis: {e}"))?;
                let ms = args
                    .redis_timeout_ms
                    .or(file.redis_timeout_ms)
                    .unwrap_or(defaults::REDIS_TIMEOUT_MS);
                if ms == 0 {
                    bail!("redis-timeout-ms must be at least 1");
                }
                if cache_mode.contains(CacheMode::NO_INTERNAL_LOOKUP) {
                    bail!("cache-mode: no-internal-lookup cannot go with redis, which fetches sessions into the internal cache before each handshake");
                }
                Some(RedisSettings {
                    target,
                    key_file,
                    timeout: Duration::from_millis(ms),
                    prefix: args
                        .redis_prefix
                        .or(file.redis_prefix)
                        .unwrap_or_else(|| reprise_redis::DEFAULT_PREFIX.to_owned()),
                    misses_per_address: args
                        .redis_misses_per_address
                        .or(file.redis_misses_per_address)
                        .unwrap_or(reprise_redis::DEFAULT_MISSES_PER_ADDRESS),
                })
            }
            (Some(_), None) => bail!(
                "--redis needs --key-file (sessions in Redis are sealed; see `reprise keygen`)"
            ),
            (None, Some(_)) => bail!("--key-file needs --redis or --cache-dir"),
            (None, None) => {
                if args.redis_timeout_ms.or(file.redis_timeout_ms).is_some()
                    || args.redis_prefix.or(file.redis_prefix).is_some()
                    || args
                        .redis_misses_per_address
                        .or(file.redis_misses_per_address)
                        .is_some()
                {
                    bail!(
                        "redis-timeout-ms, redis-prefix and redis-misses-per-address need --redis"
                    );
                }
                None
            }
        };
        let cache_timeout = args
            .cache_timeout
            .or(file.cache_timeout)
            .unwrap_or(reprise::DEFAULT_TIMEOUT_SECS);
        let tickets = args.tickets.or(file.tickets).unwrap_or(TicketMode::Auto);
        let (ticket_keys, ticket_lifetime) = ticket_keys(
            tickets,
            [
                TicketKeysArgs {
                    file: args.ticket_keys,
                    from_redis: args.ticket_keys_from_redis,
                    lifetime: args.ticket_lifetime,
                },
                TicketKeysArgs {
                    file: file.ticket_keys,
                    from_redis: file.ticket_keys_from_redis.unwrap_or(false),
                    lifetime: file.ticket_lifetime,
                },
            ],
            redis.is_some(),
            cache_timeout,
        )?;
        let upstream = args.upstream.or(file.upstream);
        let (proxy_protocol_from, upstream_proxy_protocol) = proxy_protocol(
            args.accept_proxy_protocol || file.accept_proxy_protocol.unwrap_or(false),
            if args.proxy_protocol_from.is_empty() {
                file.proxy_protocol_from.unwrap_or_default()
            } else {
                args.proxy_protocol_from
            },
            args.upstream_proxy_protocol
                .or(file.upstream_proxy_protocol),
            upstream.is_some(),
        )?;
        let access_log = access_log(
            args.access_log.or(file.access_log),
            args.access_log_format.or(file.access_log_format),
        )?;
        let early = crate::early::EarlySettings::resolve(crate::early::EarlyInputs {
            bytes: args.early_data.or(file.early_data),
            upstream_at_once: args.upstream_early_data || file.upstream_early_data.unwrap_or(false),
            methods: args.early_data_methods.or(file.early_data_methods),
            upstream: upstream.is_some(),
            tickets,
            tls13: tls_versions.contains(&TlsVersion::Tls13),
            tls13_tickets,
        })?;
        Ok(Self {
            listen,
            upstream,
            certificates,
            strict_sni,
            tls_versions,
            alpn: args.alpn.or(file.alpn).unwrap_or_default(),
            cache_size: args
                .cache_size
                .or(file.cache_size)
                .unwrap_or(reprise::DEFAULT_SIZE_LIMIT),
            cache_timeout,
            cache_mode,
            sid_ctx,
            tickets,
            ticket_keys,
            ticket_lifetime,
            tls13_tickets,
            client_auth,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            pid_file: args.pid_file.or(file.pid_file),
            max_connections,
            max_connections_per_address,
            hello_timeout: Duration::from_secs(hello_timeout),
            handshake_timeout: Duration::from_secs(handshake_timeout),
            idle_timeout: Duration::from_secs(idle_timeout),
            shutdown_timeout: Duration::from_secs(
                args.shutdown_timeout
                    .or(file.shutdown_timeout)
                    .unwrap_or(defaults::SHUTDOWN_TIMEOUT),
            ),
            redis,
            disk,
            deprecated_key_file,
            proxy_protocol_from,
            upstream_proxy_protocol,
            access_log,
            early,
            workers,
            accept_model,
        })
    }
}

/// Checks an operator's session-id context name.
fn check_sid_ctx(sid_ctx: Option<&str>) -> anyhow::Result<()> {
    if let Some(ctx) = sid_ctx {
        if ctx.len() > reprise::MAX_SID_CTX_LEN {
            bail!(
                "sid-ctx is {} bytes long; the limit is {}",
                ctx.len(),
                reprise::MAX_SID_CTX_LEN
            );
        }
    }
    Ok(())
}

/// The client CA and policy: a policy needs a CA, a CA alone means `required`.
fn client_auth(
    ca: Option<PathBuf>,
    mode: Option<ClientAuthMode>,
) -> anyhow::Result<Option<(PathBuf, ClientAuthMode)>> {
    match (ca, mode) {
        (Some(ca), mode) => Ok(Some((ca, mode.unwrap_or(ClientAuthMode::Required)))),
        (None, Some(_)) => bail!("client-auth needs client-ca"),
        (None, None) => Ok(None),
    }
}

/// The certificates: the `--cert`/`--key` pairs, else the file's `[[certificate]]` entries,
/// else its `cert`/`key`; none for a self-signed certificate. The flags' pairs and the file's
/// `cert`/`key` take the server-wide client CA and session-id context; an entry names its own.
fn certificates(
    (certs, keys): (Vec<PathBuf>, Vec<PathBuf>),
    (file_cert, file_key): (Option<PathBuf>, Option<PathBuf>),
    entries: Option<Vec<CertificateFile>>,
    client_auth: &Option<(PathBuf, ClientAuthMode)>,
    sid_ctx: &Option<String>,
) -> anyhow::Result<Vec<CertificateSettings>> {
    let plain = |cert, key| CertificateSettings {
        cert,
        key,
        names: None,
        client_auth: client_auth.clone(),
        ocsp: None,
        sid_ctx: sid_ctx.clone(),
    };
    if !certs.is_empty() || !keys.is_empty() {
        if certs.len() != keys.len() {
            bail!(
                "--cert and --key come in pairs: {} --cert, {} --key",
                certs.len(),
                keys.len()
            );
        }
        return Ok(certs
            .into_iter()
            .zip(keys)
            .map(|(c, k)| plain(c, k))
            .collect());
    }
    match (entries, file_cert, file_key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            bail!("cert and key, or [[certificate]] entries: give one of the two")
        }
        (None, Some(cert), Some(key)) => Ok(vec![plain(cert, key)]),
        (None, None, None) => Ok(Vec::new()),
        (None, Some(_), None) => bail!("--cert needs --key"),
        (None, None, Some(_)) => bail!("--key needs --cert"),
        (Some(entries), None, None) => {
            if entries.is_empty() {
                bail!("[[certificate]]: at least one entry is needed");
            }
            if client_auth.is_some() {
                bail!("client-ca and client-auth go in each [[certificate]] entry that verifies client certificates");
            }
            entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| certificate_entry(i + 1, e, sid_ctx))
                .collect()
        }
    }
}

/// Checks one `[[certificate]]` entry (`n` counts from 1).
fn certificate_entry(
    n: usize,
    entry: CertificateFile,
    sid_ctx: &Option<String>,
) -> anyhow::Result<CertificateSettings> {
    let (Some(cert), Some(key)) = (entry.cert, entry.key) else {
        bail!("[[certificate]] entry {n}: cert and key are both needed");
    };
    let names = match entry.names {
        None => None,
        Some(names) if names.is_empty() => {
            bail!("[[certificate]] entry {n}: names is empty (leave it out to use the certificate's names)")
        }
        Some(names) => Some(
            names
                .iter()
                .map(|name| server_name(name))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| anyhow::anyhow!("[[certificate]] entry {n}: {e}"))?,
        ),
    };
    let client_auth = client_auth(entry.client_ca, entry.client_auth)
        .map_err(|e| anyhow::anyhow!("[[certificate]] entry {n}: {e}"))?;
    let sid_ctx = entry.sid_ctx.or_else(|| sid_ctx.clone());
    check_sid_ctx(sid_ctx.as_deref())
        .map_err(|e| anyhow::anyhow!("[[certificate]] entry {n}: {e}"))?;
    if client_auth.is_some() && sid_ctx.as_deref() == Some("") {
        bail!("[[certificate]] entry {n}: sid-ctx: a server that verifies client certificates needs a non-empty session-id context");
    }
    Ok(CertificateSettings {
        cert,
        key,
        names,
        client_auth,
        ocsp: entry.ocsp,
        sid_ctx,
    })
}

/// A server name a certificate entry serves, lower-cased: a DNS name, or `*.` and a DNS name
/// for any one label under it.
pub fn server_name(name: &str) -> anyhow::Result<String> {
    let lower = name.to_ascii_lowercase();
    let host = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        bail!("names: {name:?} is not a DNS name (nor *. and one)");
    }
    Ok(lower)
}

/// The PROXY protocol settings, checked: the trusted networks (needed by, and only with,
/// accept-proxy-protocol), and the version sent upstream (needs an upstream).
fn proxy_protocol(
    accept: bool,
    from: Vec<String>,
    upstream_version: Option<ProxyVersion>,
    with_upstream: bool,
) -> anyhow::Result<(Vec<Cidr>, Option<ProxyVersion>)> {
    let from = from
        .iter()
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|e| anyhow::anyhow!("proxy-protocol-from: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    match (accept, from.is_empty()) {
        (true, true) => bail!("--accept-proxy-protocol needs at least one --proxy-protocol-from CIDR (the load balancers trusted to send headers)"),
        (false, false) => bail!("--proxy-protocol-from needs --accept-proxy-protocol"),
        _ => {}
    }
    if upstream_version.is_some() && !with_upstream {
        bail!("--upstream-proxy-protocol needs --upstream");
    }
    Ok((from, upstream_version))
}

/// The access-log settings: a format without a target has no effect, and is an error.
fn access_log(
    path: Option<PathBuf>,
    format: Option<crate::access_log::Format>,
) -> anyhow::Result<Option<crate::access_log::Settings>> {
    match (path, format) {
        (None, None) => Ok(None),
        (None, Some(_)) => bail!("access-log-format needs access-log"),
        (Some(path), _) if path.as_os_str().is_empty() => {
            bail!("access-log: give a file, or - for the standard output")
        }
        (Some(path), format) => Ok(Some(crate::access_log::Settings {
            target: crate::access_log::Target::parse(&path),
            format: format.unwrap_or_default(),
        })),
    }
}

/// The ticket-key settings of the flags or of the settings file.
struct TicketKeysArgs {
    file: Option<PathBuf>,
    from_redis: bool,
    lifetime: Option<u64>,
}

/// Where the ticket keys come from and the ticket lifetime: the flags over the settings file
/// over the defaults (the fleet's ring with Redis, else keys of this process; the cache
/// timeout). A key source or a lifetime given to a mode that uses no ticket keys (`stateful`,
/// `off`) is an error, as every other setting that would have no effect.
fn ticket_keys(
    mode: TicketMode,
    [flags, file]: [TicketKeysArgs; 2],
    with_redis: bool,
    cache_timeout: u64,
) -> anyhow::Result<(Option<TicketKeysFrom>, Duration)> {
    if file.file.is_some() && file.from_redis {
        bail!("ticket-keys and ticket-keys-from-redis are two sources: give one");
    }
    let lifetime = flags.lifetime.or(file.lifetime);
    match lifetime {
        Some(0) => bail!("ticket-lifetime must be at least 1 second"),
        Some(secs) if secs > defaults::MAX_TICKET_LIFETIME => bail!(
            "ticket-lifetime is {secs} s; the limit is {} s (7 days)",
            defaults::MAX_TICKET_LIFETIME
        ),
        _ => {}
    }
    // The flags' source wins over the file's, whichever each names.
    let explicit = match (flags.file, flags.from_redis) {
        (Some(path), _) => Some(TicketKeysFrom::File(path)),
        (None, true) => Some(TicketKeysFrom::Redis),
        (None, false) => match file.file {
            Some(path) => Some(TicketKeysFrom::File(path)),
            None => file.from_redis.then_some(TicketKeysFrom::Redis),
        },
    };
    if !mode.uses_ticket_keys() {
        if explicit.is_some() || lifetime.is_some() {
            bail!(
                "ticket-keys, ticket-keys-from-redis and ticket-lifetime have no effect with --tickets {}: use --tickets auto or stateless",
                mode.as_str()
            );
        }
        return Ok((None, Duration::from_secs(cache_timeout.max(1))));
    }
    if explicit == Some(TicketKeysFrom::Redis) && !with_redis {
        bail!("--ticket-keys-from-redis needs --redis and --key-file");
    }
    let source = explicit.unwrap_or(if with_redis {
        TicketKeysFrom::Redis
    } else {
        TicketKeysFrom::Local
    });
    let secs = lifetime.unwrap_or_else(|| cache_timeout.clamp(1, defaults::MAX_TICKET_LIFETIME));
    Ok((Some(source), Duration::from_secs(secs)))
}

/// The key file: the flag (`--key-file`, or its former name `--redis-key-file`) over the
/// settings file (`key-file`, or `redis-key-file`); and the former name, if one was used.
fn key_file(
    [flag, old_flag]: [Option<PathBuf>; 2],
    [setting, old_setting]: [Option<PathBuf>; 2],
) -> anyhow::Result<(Option<PathBuf>, Option<&'static str>)> {
    if setting.is_some() && old_setting.is_some() {
        bail!("key-file and redis-key-file are one setting: give key-file only");
    }
    let old = if old_flag.is_some() {
        Some("--redis-key-file")
    } else if old_setting.is_some() {
        Some("the redis-key-file setting")
    } else {
        None
    };
    Ok((flag.or(old_flag).or(setting).or(old_setting), old))
}

/// The names (as in the config file) of the top-level fields whose lines differ between two
/// pretty debug forms of [`Settings`], comma-separated.
fn changed_settings(old: &str, new: &str) -> String {
    // Each top-level field's lines, in order.
    fn fields(text: &str) -> Vec<(&str, Vec<&str>)> {
        let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in text.lines() {
            let name = line
                .strip_prefix("    ")
                .and_then(|rest| rest.split_once(':'))
                .map(|(name, _)| name)
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                });
            match (name, out.last_mut()) {
                (Some(name), _) => out.push((name, vec![line])),
                (None, Some((_, lines))) => lines.push(line),
                (None, None) => {}
            }
        }
        out
    }
    let old = fields(old);
    let changed: Vec<String> = fields(new)
        .iter()
        .filter(|field| !old.contains(field))
        .map(|(name, _)| name.replace('_', "-"))
        .collect();
    if changed.is_empty() {
        "a setting".to_owned()
    } else {
        changed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> anyhow::Result<FileConfig> {
        Ok(toml::from_str(toml)?)
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() -> anyhow::Result<()> {
        let file = parse(
            r#"
            listen = ["127.0.0.1:9000"]
            cache-size = 5
            cache-mode = "server,no-auto-clear"
            tls-versions = ["1.3"]
            tickets = "off"
            "#,
        )?;
        let args = ServeArgs {
            cache_size: Some(7),
            ..ServeArgs::default()
        };
        let s = Settings::merge(args, file)?;
        assert_eq!(s.listen, vec!["127.0.0.1:9000".to_owned()]);
        assert_eq!(s.cache_size, 7);
        assert_eq!(s.cache_mode, CacheMode::SERVER | CacheMode::NO_AUTO_CLEAR);
        assert_eq!(s.tls_versions, vec![TlsVersion::Tls13]);
        assert_eq!(s.tickets, TicketMode::Off);
        assert_eq!(s.cache_timeout, 300);
        assert_eq!(s.tls13_tickets, 2);
        Ok(())
    }

    #[test]
    fn the_key_file_has_a_new_name_and_keeps_its_old_one() -> anyhow::Result<()> {
        let with = |args: ServeArgs, file: &str| -> anyhow::Result<Option<PathBuf>> {
            let args = ServeArgs {
                cache_dir: Some("/tmp/reprise-unused".into()),
                ..args
            };
            Ok(Settings::merge(args, parse(file)?)?
                .disk
                .and_then(|d| d.key_file))
        };
        let new = ServeArgs {
            key_file: Some("new.keys".into()),
            ..ServeArgs::default()
        };
        let old = ServeArgs {
            redis_key_file: Some("old.keys".into()),
            ..ServeArgs::default()
        };
        assert_eq!(with(new, "")?, Some("new.keys".into()));
        assert_eq!(with(old, "")?, Some("old.keys".into()));
        let deprecated = |args: ServeArgs, file: &str| -> anyhow::Result<Option<&'static str>> {
            Ok(Settings::merge(args, parse(file)?)?.deprecated_key_file)
        };
        let old = ServeArgs {
            redis_key_file: Some("old.keys".into()),
            cache_dir: Some("/tmp/reprise-unused".into()),
            ..ServeArgs::default()
        };
        assert_eq!(deprecated(old, "")?, Some("--redis-key-file"));
        assert_eq!(
            deprecated(
                ServeArgs::default(),
                "key-file = \"f.keys\"\ncache-dir = \"/tmp/x\""
            )?,
            None
        );
        assert_eq!(
            deprecated(
                ServeArgs::default(),
                "redis-key-file = \"f.keys\"\ncache-dir = \"/tmp/x\""
            )?,
            Some("the redis-key-file setting")
        );
        assert_eq!(
            with(ServeArgs::default(), "key-file = \"f.keys\"")?,
            Some("f.keys".into())
        );
        assert_eq!(
            with(ServeArgs::default(), "redis-key-file = \"g.keys\"")?,
            Some("g.keys".into())
        );
        // A flag wins over the file, whichever name either uses.
        let old = ServeArgs {
            redis_key_file: Some("old.keys".into()),
            ..ServeArgs::default()
        };
        assert_eq!(with(old, "key-file = \"f.keys\"")?, Some("old.keys".into()));
        let both = with(
            ServeArgs::default(),
            "key-file = \"f.keys\"\nredis-key-file = \"g.keys\"",
        );
        assert!(both
            .err()
            .is_some_and(|e| e.to_string().contains("one setting")));
        Ok(())
    }

    #[test]
    fn ticket_keys_default_by_mode_and_tier() -> anyhow::Result<()> {
        let merge = |args: ServeArgs, file: &str| Settings::merge(args, parse(file)?);
        // Defaults: auto, keys of this process, the cache timeout.
        let s = merge(ServeArgs::default(), "cache-timeout = 120")?;
        assert_eq!(s.tickets, TicketMode::Auto);
        assert_eq!(s.ticket_keys, Some(TicketKeysFrom::Local));
        assert_eq!(s.ticket_lifetime, Duration::from_secs(120));
        // With Redis, the fleet's ring.
        let fleet = || ServeArgs {
            redis: Some("redis://127.0.0.1:1".into()),
            key_file: Some("k".into()),
            ..ServeArgs::default()
        };
        assert_eq!(merge(fleet(), "")?.ticket_keys, Some(TicketKeysFrom::Redis));
        // A file wins over the ring, a flag over the settings file.
        let s = merge(
            ServeArgs {
                ticket_keys: Some("t.keys".into()),
                ticket_lifetime: Some(60),
                ..fleet()
            },
            "ticket-keys-from-redis = true\nticket-lifetime = 30",
        )?;
        assert_eq!(s.ticket_keys, Some(TicketKeysFrom::File("t.keys".into())));
        assert_eq!(s.ticket_lifetime, Duration::from_secs(60));
        let s = merge(ServeArgs::default(), "ticket-keys = \"f.keys\"")?;
        assert_eq!(s.ticket_keys, Some(TicketKeysFrom::File("f.keys".into())));
        // Stateful and off use no keys.
        let s = merge(ServeArgs::default(), "tickets = \"stateful\"")?;
        assert_eq!(s.ticket_keys, None);
        // A long cache timeout caps the default lifetime at 7 days.
        let s = merge(ServeArgs::default(), "cache-timeout = 9999999")?;
        assert_eq!(s.ticket_lifetime, Duration::from_secs(604_800));
        Ok(())
    }

    #[test]
    fn bad_ticket_settings_name_the_problem() {
        let err = |args: ServeArgs, file: &str| -> String {
            match parse(file).and_then(|f| Settings::merge(args, f)) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let lifetime = |secs| ServeArgs {
            ticket_lifetime: Some(secs),
            ..ServeArgs::default()
        };
        assert!(err(lifetime(0), "").contains("ticket-lifetime must be at least 1"));
        assert!(err(lifetime(604_801), "").contains("ticket-lifetime is 604801"));
        let from_redis = ServeArgs {
            ticket_keys_from_redis: true,
            ..ServeArgs::default()
        };
        assert!(err(from_redis, "").contains("--ticket-keys-from-redis needs --redis"));
        assert!(err(
            ServeArgs::default(),
            "ticket-keys = \"a\"\nticket-keys-from-redis = true"
        )
        .contains("give one"));
        let stateful_with_keys = ServeArgs {
            tickets: Some(TicketMode::Stateful),
            ticket_keys: Some("t.keys".into()),
            ..ServeArgs::default()
        };
        assert!(err(stateful_with_keys, "").contains("no effect with --tickets stateful"));
        assert!(err(
            ServeArgs::default(),
            "tickets = \"off\"\nticket-lifetime = 5"
        )
        .contains("no effect with --tickets off"));
    }

    #[test]
    fn certificates_come_from_the_flags_else_the_entries_else_cert_and_key() -> anyhow::Result<()> {
        let merge = |args: ServeArgs, file: &str| Settings::merge(args, parse(file)?);
        let pairs = ServeArgs {
            cert: vec!["a.pem".into(), "b.pem".into()],
            key: vec!["a.key".into(), "b.key".into()],
            client_ca: Some("ca.pem".into()),
            ..ServeArgs::default()
        };
        let entries =
            "[[certificate]]\ncert = \"e.pem\"\nkey = \"e.key\"\nnames = [\"*.Example.com\"]\n";
        let s = merge(pairs, entries)?;
        assert_eq!(s.certificates.len(), 2);
        assert_eq!(s.certificates[1].cert, PathBuf::from("b.pem"));
        // The flags' pairs take the server-wide client CA.
        assert!(s.certificates.iter().all(|c| c.client_auth.is_some()));
        let s = merge(ServeArgs::default(), entries)?;
        assert_eq!(
            s.certificates[0].names,
            Some(vec!["*.example.com".to_owned()])
        );
        assert!(merge(ServeArgs::default(), "")?.certificates.is_empty());
        assert!(merge(ServeArgs::default(), "strict-sni = true")?.strict_sni);
        Ok(())
    }

    #[test]
    fn proxy_protocol_settings() -> anyhow::Result<()> {
        let merge = |args: ServeArgs, file: &str| Settings::merge(args, parse(file)?);
        let s = merge(
            ServeArgs::default(),
            "accept-proxy-protocol = true\nproxy-protocol-from = [\"10.0.0.0/8\", \"fd00::/8\"]\nupstream = \"127.0.0.1:1\"\nupstream-proxy-protocol = \"v2\"",
        )?;
        assert_eq!(s.proxy_protocol_from.len(), 2);
        assert_eq!(s.upstream_proxy_protocol, Some(ProxyVersion::V2));
        // The flags' networks replace the file's.
        let s = merge(
            ServeArgs {
                proxy_protocol_from: vec!["192.0.2.1".into()],
                ..ServeArgs::default()
            },
            "accept-proxy-protocol = true\nproxy-protocol-from = [\"10.0.0.0/8\"]",
        )?;
        assert_eq!(s.proxy_protocol_from.len(), 1);
        assert!(s.proxy_protocol_from[0].contains("192.0.2.1".parse()?));
        let s = merge(ServeArgs::default(), "")?;
        assert!(s.proxy_protocol_from.is_empty() && s.upstream_proxy_protocol.is_none());
        let err = |file: &str| {
            merge(ServeArgs::default(), file)
                .err()
                .map(|e| e.to_string())
        };
        assert!(
            err("accept-proxy-protocol = true").is_some_and(|e| e.contains("needs at least one"))
        );
        assert!(err("proxy-protocol-from = [\"10.0.0.0/8\"]")
            .is_some_and(|e| e.contains("needs --accept")));
        assert!(
            err("upstream-proxy-protocol = \"v1\"").is_some_and(|e| e.contains("needs --upstream"))
        );
        Ok(())
    }

    #[test]
    fn server_names_are_dns_names_or_one_wildcard_label() {
        assert_eq!(
            server_name("WWW.Example.com").ok(),
            Some("www.example.com".to_owned())
        );
        assert_eq!(
            server_name("*.example.com").ok(),
            Some("*.example.com".to_owned())
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "a b",
            "*.*.example.com",
            "w*.example.com",
            "a.b.",
        ] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_the_problem() {
        let unknown = parse("cache-sise = 5").err().map(|e| e.to_string());
        assert!(unknown.is_some_and(|e| e.contains("cache-sise")));
        let bad_mode = Settings::merge(
            ServeArgs::default(),
            FileConfig {
                cache_mode: Some("sever".into()),
                ..FileConfig::default()
            },
        );
        assert!(bad_mode
            .err()
            .is_some_and(|e| e.to_string().contains("sever")));
        let long_ctx = Settings::merge(
            ServeArgs {
                sid_ctx: Some("x".repeat(33)),
                ..ServeArgs::default()
            },
            FileConfig::default(),
        );
        assert!(long_ctx
            .err()
            .is_some_and(|e| e.to_string().contains("sid-ctx")));
        let no_key = Settings::merge(
            ServeArgs::default(),
            FileConfig {
                cert: Some("c.pem".into()),
                ..FileConfig::default()
            },
        );
        assert!(no_key
            .err()
            .is_some_and(|e| e.to_string().contains("--cert needs --key")));
    }

    #[test]
    fn a_reload_applies_certificates_and_refuses_what_needs_a_restart() -> anyhow::Result<()> {
        let merge = |file: &str| Settings::merge(ServeArgs::default(), parse(file)?);
        let base = "listen = [\"127.0.0.1:1\"]\ncache-size = 100\n";
        let old = merge(base)?;
        let reloadable = format!(
            "{base}strict-sni = true\nalpn = [\"h2\"]\nsid-ctx = \"new\"\n[[certificate]]\ncert = \"a.pem\"\nkey = \"a.key\"\n"
        );
        old.check_reloadable(&merge(&reloadable)?)?;
        old.check_reloadable(&old.clone())?;
        for (change, setting) in [
            ("listen = [\"127.0.0.1:2\"]\ncache-size = 100\n", "listen"),
            (
                "listen = [\"127.0.0.1:1\"]\ncache-size = 100\nmetrics-listen = \"127.0.0.1:3\"\n",
                "metrics-listen",
            ),
            ("listen = [\"127.0.0.1:1\"]\ncache-size = 200\n", "cache-size"),
            (
                "listen = [\"127.0.0.1:1\"]\ncache-size = 100\nredis = \"redis://127.0.0.1:1\"\nkey-file = \"k\"\n",
                "redis",
            ),
        ] {
            let err = old
                .check_reloadable(&merge(change)?)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let (named, rest) = err.split_once(" changed, ").unwrap_or_default();
            assert!(
                named.split(", ").any(|n| n == setting) && rest.starts_with("which needs a restart"),
                "{change}: {err}"
            );
        }
        Ok(())
    }
}
