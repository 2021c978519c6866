//! Configuration of the Redis tier: where Redis is (one server or a cluster), the key prefix,
//! and the time and space budgets that keep it off the handshake's critical path.

use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a proxy): `redis://HOST:PORT[/DB]` or `rediss://…` for TLS.
    Single(String),
    /// A Redis Cluster, given by several seed nodes:
    /// `redis+cluster://HOST:PORT,HOST:PORT,…` (or `rediss+cluster://` for TLS).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The URL to subscribe for invalidations on: the server, or the first seed node (a
    /// cluster delivers every publication to every node).
    pub(crate) fn pubsub_url(&self) -> &str {
        match self {
            RedisTarget::Single(url) => url,
            RedisTarget::Cluster(urls) => urls.first().map_or("", String::as_str),
        }
    }
}

impl FromStr for RedisTarget {
    type Err = ConfigError;

    /// ```
    /// use reprise_redis::RedisTarget;
    /// assert_eq!(
    ///     "redis+cluster://10.0.0.1:7000,10.0.0.2:7000".parse(),
    ///     Ok(RedisTarget::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()]))
    /// );
    /// assert_eq!("redis://127.0.0.1:6379".parse(), Ok(RedisTarget::Single("redis://127.0.0.1:6379".into())));
    /// assert!("http://x".parse::<RedisTarget>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadUrl(s.to_owned());
        let check_host_port = |hp: &str| -> Result<(), ConfigError> {
            let authority = hp.rsplit_once('@').map_or(hp, |(_, a)| a);
            let authority = authority.split('/').next().unwrap_or_default();
            let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(())
        };
        for (scheme, plain) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let nodes: Vec<String> = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        check_host_port(n)?;
                        Ok(format!("{plain}{n}"))
                    })
                    .collect::<Result<_, ConfigError>>()?;
                if nodes.is_empty() {
                    return Err(bad());
                }
                return Ok(RedisTarget::Cluster(nodes));
            }
        }
        for scheme in ["redis://", "rediss://"] {
            if let Some(rest) = s.strip_prefix(scheme) {
                check_host_port(rest)?;
                return Ok(RedisTarget::Single(s.to_owned()));
            }
        }
        Err(bad())
    }
}

/// The Redis tier's settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: RedisTarget,
    /// Prepended to every key and to the invalidation channel (default `reprise:`).
    pub prefix: String,
    /// How long a read may take before the handshake goes on without it (default 5 ms).
    pub read_timeout: Duration,
    /// How long a batch of writes may take (default 1 s); writes never wait in a handshake.
    pub write_timeout: Duration,
    /// Writes waiting to be sent; when full, new writes are dropped and counted (default 65536).
    pub write_queue: usize,
    /// Consecutive failures that open the circuit breaker (default 5).
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a probe (default 1 s).
    pub breaker_cooldown: Duration,
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "reprise:";

/// The default read budget.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(5);

impl RedisConfig {
    /// The defaults, for `target`.
    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            prefix: DEFAULT_PREFIX.to_owned(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: Duration::from_secs(1),
            write_queue: 65536,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "redis read timeout must be at least 1 ms".into(),
            ));
        }
        if self.write_queue == 0 {
            return Err(ConfigError::Invalid(
                "redis write queue must hold at least 1 write".into(),
            ));
        }
        if self.prefix.len() > 256
            || self
                .prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ConfigError::Invalid(
                "redis prefix must be at most 256 bytes with no spaces or control characters"
                    .into(),
            ));
        }
        Ok(())
    }
}
