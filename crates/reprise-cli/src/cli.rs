//! The command line: subcommands and their flags, as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reprise::CacheMode;

/// A TLS terminator whose sessions resume through the Reprise cache, and a handshake load
/// generator.
#[derive(Debug, Parser)]
#[command(name = "reprise", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Terminate TLS for clients; sessions resume through the Reprise cache.
    Serve(Box<ServeArgs>),
    /// Generate handshake load against a TLS server and report rates and latencies.
    Bench(BenchArgs),
    /// Print a new key line for a key file (`--key-file`).
    Keygen(KeygenArgs),
    /// Check the settings of `reprise serve` (the same flags and --config) and load every file
    /// they name, without listening or connecting; print "config ok" or the problem.
    CheckConfig(Box<ServeArgs>),
    /// Make a running `reprise serve --pid-file FILE` reload (send it SIGHUP).
    Reload(ReloadArgs),
}

/// `reprise reload` flags.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The pid file the server writes (`reprise serve --pid-file`).
    #[arg(long, value_name = "FILE")]
    pub pid_file: PathBuf,
}

/// `reprise keygen` flags.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key's name [default: key-UNIXTIME].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// A TLS protocol version.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, serde::Deserialize,
)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// rustls's name for the versions in `versions`, in order.
    pub fn rustls(versions: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
        versions
            .iter()
            .map(|v| match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            })
            .collect()
    }
}

/// How the workers of `reprise serve` take connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcceptModel {
    /// One listening socket; the connections go to a shared pool of worker threads that steal
    /// work from each other (a busy worker's connections move to an idle one). Measured ahead
    /// of `per-worker` on two cores (docs/PERFORMANCE.md).
    #[default]
    Shared,
    /// Each worker thread has its own listening socket (SO_REUSEPORT: the kernel spreads the
    /// connections by their addresses) and runs its connections to the end, as nginx's
    /// workers do: no cross-thread wake-ups, and no stealing either.
    PerWorker,
}

impl AcceptModel {
    /// The name, as the flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptModel::PerWorker => "per-worker",
            AcceptModel::Shared => "shared",
        }
    }
}

/// How resumption tickets are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketMode {
    /// Stateless tickets for clients that offer only TLS 1.2 (Go's TLS 1.2 client resumes with
    /// nothing else), stateful single-use TLS 1.3 tickets for every other client.
    Auto,
    /// TLS 1.3 tickets name sessions kept in the cache (single use, visible to the cache); no
    /// TLS 1.2 tickets.
    Stateful,
    /// Tickets carry the session, encrypted with the ticket keys, for both versions: a TLS 1.3
    /// ticket can then be used more than once until it expires.
    Stateless,
    /// No TLS 1.3 tickets and no TLS 1.2 tickets.
    Off,
}

impl TicketMode {
    /// The name, as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketMode::Auto => "auto",
            TicketMode::Stateful => "stateful",
            TicketMode::Stateless => "stateless",
            TicketMode::Off => "off",
        }
    }

    /// Whether this mode encrypts tickets with ticket keys (and so needs a key source).
    pub fn uses_ticket_keys(self) -> bool {
        matches!(self, TicketMode::Auto | TicketMode::Stateless)
    }
}

/// How a server that has a client CA treats client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// Every client must present a certificate that the CA signed.
    Required,
    /// A client may present one; if it does, it must verify.
    Optional,
}

/// A PROXY protocol version to send to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text header.
    V1,
    /// The binary header, with TLVs.
    V2,
}

/// `reprise serve` flags. Each may also be set in the `--config` file; a flag wins.
#[derive(Clone, Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with the same settings as these flags (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on; may be given more than once [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Proxy each decrypted connection to this TCP backend, instead of the built-in responder.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,

    /// Certificate chain, PEM [default: a self-signed certificate for localhost]. Repeat
    /// --cert and --key in pairs to serve several certificates, each chosen by the names in it
    /// (SNI); the first is the default.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Vec<PathBuf>,

    /// Private key, PEM (RSA, ECDSA or Ed25519), of the --cert given in the same position.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Vec<PathBuf>,

    /// Refuse a client whose ClientHello names no certificate's name (or none), instead of
    /// serving it the default certificate.
    #[arg(long)]
    pub strict_sni: bool,

    /// TLS versions to accept [default: 1.2,1.3].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub tls_versions: Option<Vec<TlsVersion>>,

    /// ALPN protocols to offer, in order of preference.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub alpn: Option<Vec<String>>,

    /// Sessions the cache holds; 0 means unlimited [default: 20480].
    #[arg(long, value_name = "N")]
    pub cache_size: Option<usize>,

    /// Session timeout in seconds [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub cache_timeout: Option<u64>,

    /// Cache mode: comma-separated off, client, server, both, no-auto-clear,
    /// no-internal-lookup, no-internal-store, no-internal, update-time [default: server].
    #[arg(long, value_name = "LIST")]
    pub cache_mode: Option<CacheMode>,

    /// Session-id context [default: derived from the certificate and the client-auth settings].
    #[arg(long, value_name = "STRING")]
    pub sid_ctx: Option<String>,

    /// Tickets: auto (stateless TLS 1.2 tickets, stateful TLS 1.3), stateful (TLS 1.3 tickets
    /// kept in the cache), stateless (both versions; TLS 1.3 tickets then replayable until they
    /// expire) or off [default: auto].
    #[arg(long, value_name = "MODE")]
    pub tickets: Option<TicketMode>,

    /// Ticket keys from this file (name:hex lines, the first encrypts, all decrypt; re-read on
    /// SIGHUP) [default: the fleet's ring in Redis with --redis, else keys of this process,
    /// rotated every --ticket-lifetime].
    #[arg(long, value_name = "FILE", conflicts_with = "ticket_keys_from_redis")]
    pub ticket_keys: Option<PathBuf>,

    /// Ticket keys from the fleet's ring in Redis, rotated by the fleet itself and sealed with
    /// --key-file (the default with --redis).
    #[arg(long)]
    pub ticket_keys_from_redis: bool,

    /// Seconds a ticket is valid, and the ticket keys' rotation period, 1 to 604800 (7 days)
    /// [default: --cache-timeout].
    #[arg(long, value_name = "SECONDS")]
    pub ticket_lifetime: Option<u64>,

    /// TLS 1.3 tickets issued per handshake, 0 to 16 [default: 2].
    #[arg(long, value_name = "N")]
    pub tls13_tickets: Option<usize>,

    /// Verify client certificates against this CA bundle (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// With --client-ca: whether a client certificate is required [default: required].
    #[arg(long, value_name = "MODE", requires = "client_ca")]
    pub client_auth: Option<ClientAuthMode>,

    /// Write the server's process id to this file once it listens (for `reprise reload`);
    /// removed when it exits.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Serve Prometheus metrics at /metrics and a health check at /healthz on this address
    /// (16 connections at a time).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Connections served at once; more are closed at accept [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Connections one client address (an IPv6 /64) may hold at once; more are closed at accept
    /// [default: a quarter of --max-connections].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,

    /// Seconds a client has to send its whole ClientHello, from the accept; at most
    /// --handshake-timeout [default: 5, or the handshake timeout if shorter].
    #[arg(long, value_name = "SECONDS")]
    pub hello_timeout: Option<u64>,

    /// Seconds a client has to complete its handshake [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub handshake_timeout: Option<u64>,

    /// Seconds an established connection may stay idle [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,

    /// Seconds open connections get to finish after SIGINT or SIGTERM [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,

    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// How the workers take connections: shared (one socket, a work-stealing pool) or
    /// per-worker (a listening socket each, SO_REUSEPORT) [default: shared].
    #[arg(long, value_name = "MODEL")]
    pub accept_model: Option<AcceptModel>,

    /// Share sessions with a fleet through Redis: redis://HOST:PORT, rediss://HOST:PORT, or
    /// redis+cluster://HOST:PORT,HOST:PORT,... for a cluster.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// Key file sealing the sessions stored in Redis or in --cache-dir: name:hex lines, the first
    /// seals (see `reprise keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// The former name of --key-file, still accepted (with a deprecation line in the log).
    #[arg(long, value_name = "FILE", hide = true, conflicts_with = "key_file")]
    pub redis_key_file: Option<PathBuf>,

    /// Milliseconds a handshake may wait for a Redis read [default: 5].
    #[arg(long, value_name = "N")]
    pub redis_timeout_ms: Option<u64>,

    /// Prefix of the Redis keys and of the invalidation channel [default: reprise:].
    #[arg(long, value_name = "STRING")]
    pub redis_prefix: Option<String>,

    /// Redis reads a second that one client address (IPv4 address, IPv6 /64) may cause with ids
    /// that find nothing, in bursts of twice as many (a read that finds a session earns one
    /// back); 0 for no limit [default: 50].
    #[arg(long, value_name = "N")]
    pub redis_misses_per_address: Option<u32>,

    /// Keep sessions on disk in this directory, so that they survive a restart (alone, or
    /// between memory and --redis). Sealed with --key-file if given, else with a key kept in
    /// the directory.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The cap on the session database file in --cache-dir, in bytes [default: 67108864].
    #[arg(long, value_name = "N")]
    pub cache_dir_max_bytes: Option<u64>,

    /// Read a PROXY protocol header (v1 or v2) from connections whose source is in a
    /// --proxy-protocol-from network, and use the client address it carries.
    #[arg(long)]
    pub accept_proxy_protocol: bool,

    /// A network trusted to send PROXY protocol headers, as a CIDR (10.0.0.0/8, fd00::/8, or a
    /// bare address); repeatable. Needed by --accept-proxy-protocol.
    #[arg(long, value_name = "CIDR")]
    pub proxy_protocol_from: Vec<String>,

    /// Send a PROXY protocol header (v1 or v2; v2 carries the SNI, the ALPN and the TLS version)
    /// with the client's address to the --upstream before the decrypted bytes.
    #[arg(long, value_name = "VERSION")]
    pub upstream_proxy_protocol: Option<ProxyVersion>,

    /// Accept up to this many bytes of TLS 1.3 early data (0-RTT) per resumed connection, 0 to
    /// 16384 [default: 0, off]. Only with stateful tickets, and only when the ticket's single
    /// use is confirmed (by Redis's atomic take in a fleet): early data cannot be replayed.
    #[arg(long, value_name = "BYTES")]
    pub early_data: Option<u32>,

    /// With --upstream and --early-data: forward early data to the upstream at once, before
    /// the handshake completes (by default it is held until then). The upstream then sees
    /// requests before the client proved it completed the handshake; see the README.
    #[arg(long)]
    pub upstream_early_data: bool,

    /// The methods the built-in responder answers when they arrive in early data; others get
    /// 425 Too Early, and the client sends them again after the handshake
    /// [default: GET,HEAD,OPTIONS].
    #[arg(long, value_name = "METHODS", value_delimiter = ',')]
    pub early_data_methods: Option<Vec<String>>,

    /// Write one line per connection, when it ends, to this file (appended; reopened on
    /// SIGHUP), or to the standard output with `-` [default: no access log].
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<PathBuf>,

    /// The access log's format: text (key=value fields) or json (an object per line)
    /// [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub access_log_format: Option<crate::access_log::Format>,
}

/// Whether `reprise bench` makes full or resumed handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Every connection is a full handshake.
    Full,
    /// Every connection after a worker's first resumes the worker's last session.
    Resume,
}

/// `reprise bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server address; repeat it to spread the connections over a fleet, round-robin (each
    /// worker's next connection goes to the next address).
    #[arg(long, value_name = "ADDR", required = true)]
    pub connect: Vec<String>,

    /// Server name for SNI and certificate verification [default: the host of --connect].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,

    /// TLS version to use.
    #[arg(long, value_name = "VERSION", default_value = "1.3")]
    pub tls: TlsVersion,

    /// Full or resumed handshakes.
    #[arg(long, value_name = "MODE", default_value = "resume")]
    pub mode: BenchMode,

    /// Connections in flight at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub concurrency: usize,

    /// Run for this many seconds [default: 10 unless --connections is given].
    #[arg(long, value_name = "SECONDS", conflicts_with = "connections")]
    pub duration: Option<f64>,

    /// Stop after this many connections.
    #[arg(long, value_name = "N")]
    pub connections: Option<u64>,

    /// Close this share of the connections (0 to 1) abruptly, as many real clients do: a plain
    /// TCP close (FIN) right after the handshake, without close_notify.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub abrupt: f64,

    /// Do not verify the server's certificate.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,

    /// Trust this CA bundle (PEM); one of --ca and --insecure is required.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Offer only these cipher suites, by their rustls names (`TLS13_AES_256_GCM_SHA384`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`, ...), comma-separated or repeated
    /// [default: every suite of the provider].
    #[arg(long, value_name = "SUITE", value_delimiter = ',')]
    pub cipher_suite: Vec<String>,

    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Send an HTTP GET of N bytes on each connection and time its first response byte:
    /// as TLS 1.3 early data (0-RTT) when the ticket allows it, otherwise after the handshake
    /// (always after it with 0). Reports how much early data was accepted, and the time to
    /// first byte beside the handshake time.
    #[arg(long, value_name = "N")]
    pub early_data: Option<usize>,
}
