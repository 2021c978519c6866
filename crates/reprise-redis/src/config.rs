//! Configuration of the Redis tier: where Redis is (one server or a cluster), the key prefix,
//! and the time and space budgets that keep it off the handshake's critical path.
//!
//! A Redis URL may carry a password (`redis://user:PASSWORD@host:port`): it never appears in a
//! log line, a `Debug` or `Display` output or an error; see [`redact`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// Where Redis is. Its `Debug` and `Display` hide the passwords.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a proxy): `redis://HOST:PORT[/DB]` or `rediss://…` for TLS.
    Single(String),
    /// A Redis Cluster, given by several seed nodes:
    /// `redis+cluster://HOST:PORT,HOST:PORT,…` (or `rediss+cluster://` for TLS).
    Cluster(Vec<String>),
}

/// A Redis URL (or a cluster's comma-separated seed list, or any text given as one) with its
/// credentials hidden, for logs and errors: the password becomes `***` (and a user name given
/// alone, which may be a password, too), and a query string (`?…`, where some clients take a
/// password) becomes `?***`.
///
/// ```
/// use reprise_redis::redact;
/// assert_eq!(redact("redis://app:s3cret@10.0.0.5:6379/2"), "redis://app:***@10.0.0.5:6379/2");
/// assert_eq!(redact("redis://:s3cret@h:1"), "redis://:***@h:1");
/// assert_eq!(redact("redis+cluster://:a@h:1,:b@h:2"), "redis+cluster://:***@h:1,:***@h:2");
/// assert_eq!(redact("redis://h:1?password=s3cret"), "redis://h:1?***");
/// assert_eq!(redact("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
/// ```
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let redact_node = |node: &str| -> String {
        let (node, query) = match node.split_once('?') {
            Some((n, _)) => (n, "?***"),
            None => (node, ""),
        };
        let node = match node.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("***@{host}"),
            },
            None => node.to_owned(),
        };
        node + query
    };
    let nodes: Vec<String> = if scheme.contains("+cluster") {
        rest.split(',').map(redact_node).collect()
    } else {
        vec![redact_node(rest)]
    };
    format!("{scheme}{}", nodes.join(","))
}

/// The secrets of a URL: the password (as written and percent-decoded), a user name given
/// alone, and the query string's values.
fn secrets(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut out = Vec::new();
    for node in rest.split(',') {
        let (node, query) = node.split_once('?').unwrap_or((node, ""));
        if let Some((userinfo, _)) = node.rsplit_once('@') {
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            out.push(secret.to_owned());
            out.push(percent_decode(secret));
        }
        out.extend(
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(_, v)| v.to_owned()),
        );
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so that a secret containing another is hidden whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RedisTarget {
    fn urls(&self) -> &[String] {
        match self {
            RedisTarget::Single(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls) => urls,
        }
    }

    /// `text` (an error message, say) with every secret of this target's URLs hidden.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for url in self.urls() {
            for secret in secrets(url) {
                text = text.replace(&secret, "***");
            }
        }
        text
    }

    /// The URL to subscribe for invalidations on: the server, or the first seed node (a
    /// cluster delivers every publication to every node).
    pub(crate) fn pubsub_url(&self) -> &str {
        match self {
            RedisTarget::Single(url) => url,
            RedisTarget::Cluster(urls) => urls.first().map_or("", String::as_str),
        }
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redact(u)).collect();
        f.write_str(&urls.join(","))
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redact(u)).collect();
        match self {
            RedisTarget::Single(_) => f.debug_tuple("Single").field(&urls[0]).finish(),
            RedisTarget::Cluster(_) => f.debug_tuple("Cluster").field(&urls).finish(),
        }
    }
}

impl FromStr for RedisTarget {
    type Err = ConfigError;

    /// ```
    /// use reprise_redis::RedisTarget;
    /// assert_eq!(
    ///     "redis+cluster://10.0.0.1:7000,10.0.0.2:7000".parse::<RedisTarget>().ok(),
    ///     Some(RedisTarget::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()]))
    /// );
    /// assert_eq!(
    ///     "redis://127.0.0.1:6379".parse::<RedisTarget>().ok(),
    ///     Some(RedisTarget::Single("redis://127.0.0.1:6379".into()))
    /// );
    /// assert!("http://x".parse::<RedisTarget>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadUrl(redact(s));
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
    /// Reads that find nothing, a second, that one client address (an IPv4 address, an IPv6
    /// /64) may cause, in bursts of up to twice as many; once they are spent, the address's
    /// reads wait for the budget to refill. A read that finds a session earns one back
    /// (default 50; 0: no limit).
    pub misses_per_address: u32,
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "reprise:";

/// The default read budget per client address, a second.
pub const DEFAULT_MISSES_PER_ADDRESS: u32 = 50;

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
            misses_per_address: DEFAULT_MISSES_PER_ADDRESS,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.read_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "read timeout",
                problem: "must be at least 1 ms",
            });
        }
        if self.write_queue == 0 {
            return Err(ConfigError::Invalid {
                setting: "write queue",
                problem: "must hold at least 1 write",
            });
        }
        if self.prefix.len() > 256
            || self
                .prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ConfigError::Invalid {
                setting: "prefix",
                problem: "must be at most 256 bytes with no spaces or control characters",
            });
        }
        Ok(())
    }
}
