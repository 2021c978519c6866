//! Connections to Redis: one multiplexed connection to a server or to a cluster, made in the
//! background (Redis may be down at start) and kept alive by the client library.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, FromRedisValue, RedisResult};

use crate::config::RedisTarget;
use crate::error::ConfigError;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A cheap-to-clone handle to a multiplexed connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Sends one command and reads its reply.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// Clients for a target, checked when the tier starts (before any connection is tried).
// One per tier, made once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Clients {
    Single(Client),
    Cluster(ClusterClient),
}

impl Clients {
    /// Checks the addresses and makes the clients; no connection is made yet.
    pub(crate) fn new(target: &RedisTarget) -> Result<Self, ConfigError> {
        let client_err = |url: &str, e: redis::RedisError| ConfigError::Client {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        match target {
            RedisTarget::Single(url) => Client::open(url.as_str())
                .map(Clients::Single)
                .map_err(|e| client_err(url, e)),
            RedisTarget::Cluster(urls) => {
                for url in urls {
                    Client::open(url.as_str()).map_err(|e| client_err(url, e))?;
                }
                ClusterClient::builder(urls.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(Duration::from_secs(1))
                    .retries(2)
                    .build()
                    .map(Clients::Cluster)
                    .map_err(|e| client_err(&urls.join(","), e))
            }
        }
    }

    /// Connects once.
    pub(crate) async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Clients::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Clients::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}
