//! What `reprise bench` runs: the flags, checked, turned into a [`Plan`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::trust::{client_config, load_roots, Trust};
use crate::cli::{BenchArgs, BenchMode, TlsVersion};

/// The run length when neither `--duration` nor `--connections` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// How long resolving `--connect` may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Server names each worker's session store holds in `--mode resume` (only one is used).
const SESSION_STORE_SERVERS: usize = 4;

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Stop {
    /// After this long; connections still in flight then are abandoned and not counted.
    After(Duration),
    /// After this many attempts, successful or not.
    Connections(u64),
}

/// What to connect to, how, and for how long: the checked flags.
pub(super) struct Plan {
    /// `--connect`, as given.
    pub(super) targets: Vec<String>,
    /// The addresses they resolved to.
    pub(super) addrs: Vec<SocketAddr>,
    /// The name sent in SNI and verified in the certificate.
    pub(super) server_name: ServerName<'static>,
    pub(super) tls: TlsVersion,
    pub(super) mode: BenchMode,
    pub(super) concurrency: usize,
    pub(super) stop: Stop,
    /// The share of connections closed with a bare TCP close, without close_notify.
    pub(super) abrupt: f64,
    pub(super) json: bool,
    /// With `--early-data`: the request each connection sends, and whether it goes as early
    /// data.
    pub(super) request: Option<super::request::Request>,
    /// The client configuration; in `--mode resume` each worker gets a copy with its own store.
    pub(super) config: ClientConfig,
}

impl Plan {
    /// Checks the flags, loads the CA bundle and resolves the address.
    pub(super) async fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let stop = stop_of(args.duration, args.connections)?;
        let abrupt = abrupt_of(args.abrupt)?;
        let trust = match (&args.ca, args.insecure) {
            (Some(path), false) => Trust::Roots(load_roots(path)?),
            (None, true) => Trust::Anything,
            (Some(_), true) => bail!("give either --ca FILE or --insecure, not both"),
            (None, false) => bail!("give --ca FILE or --insecure"),
        };
        let name = match &args.server_name {
            Some(name) => name.clone(),
            None => host_of(args.connect.first().map_or("", String::as_str)).to_owned(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("server name {name:?}: {e}"))?;
        let mut config = client_config(args.tls, trust, &args.cipher_suite)?;
        let request = match args.early_data {
            None => None,
            Some(n) => Some(super::request::Request::new(&name, n, args.tls)?),
        };
        config.enable_early_data = request.as_ref().is_some_and(|r| r.early);
        let mut addrs = Vec::with_capacity(args.connect.len());
        for target in &args.connect {
            addrs.push(resolve(target).await?);
        }
        Ok(Plan {
            targets: args.connect.clone(),
            addrs,
            server_name,
            tls: args.tls,
            mode: args.mode,
            concurrency: args.concurrency,
            stop,
            abrupt,
            json: args.json,
            request,
            config,
        })
    }

    /// The client configuration of one worker.
    pub(super) fn worker_config(&self, shared_full: &Arc<ClientConfig>) -> Arc<ClientConfig> {
        match self.mode {
            BenchMode::Full => shared_full.clone(),
            BenchMode::Resume => {
                let mut config = self.config.clone();
                config.resumption = Resumption::in_memory_sessions(SESSION_STORE_SERVERS);
                Arc::new(config)
            }
        }
    }
}

/// Turns `--duration` and `--connections` into a stopping rule.
fn stop_of(duration: Option<f64>, connections: Option<u64>) -> anyhow::Result<Stop> {
    match (duration, connections) {
        (Some(_), Some(_)) => bail!("give --duration or --connections, not both"),
        (None, Some(0)) => bail!("--connections must be at least 1"),
        (None, Some(n)) => Ok(Stop::Connections(n)),
        (Some(secs), None) => match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Ok(Stop::After(d)),
            _ => bail!("--duration {secs}: expected a positive number of seconds"),
        },
        (None, None) => Ok(Stop::After(DEFAULT_DURATION)),
    }
}

/// Checks `--abrupt`: a share, from 0 to 1.
fn abrupt_of(share: f64) -> anyhow::Result<f64> {
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        bail!("--abrupt {share}: expected a share of the connections from 0 to 1")
    }
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match target.rsplit_once(':') {
        Some((host, _)) => host,
        None => target,
    }
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target))
        .await
        .map_err(|_| anyhow::anyhow!("cannot resolve {target:?}: timed out"))?
        .with_context(|| format!("cannot resolve {target:?} (expected HOST:PORT)"))?;
    let mut addrs = addrs;
    addrs
        .next()
        .ok_or_else(|| anyhow::anyhow!("{target:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_rules() {
        assert_eq!(stop_of(None, None).unwrap(), Stop::After(DEFAULT_DURATION));
        assert_eq!(stop_of(None, Some(5)).unwrap(), Stop::Connections(5));
        assert_eq!(
            stop_of(Some(0.5), None).unwrap(),
            Stop::After(Duration::from_millis(500))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(stop_of(Some(bad), None).is_err(), "{bad}");
        }
        assert!(stop_of(None, Some(0)).is_err());
        assert!(stop_of(Some(1.0), Some(1)).is_err());
    }

    #[test]
    fn abrupt_shares() {
        for good in [0.0, 0.5, 1.0] {
            assert_eq!(abrupt_of(good).unwrap(), good);
        }
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(abrupt_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_of_targets() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
