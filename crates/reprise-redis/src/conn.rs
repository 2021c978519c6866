//! Connections to Redis: one multiplexed connection to a server or to a cluster, made in the
//! background (Redis may be down at start) and kept alive by the client library; and the
//! script that takes a ticket.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, FromRedisValue, RedisResult};

use crate::config::RedisTarget;
use crate::error::ConfigError;
use reprise_seal::{KeyRing, SEAL_VERSION};

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

/// Takes a ticket: reads the value, and deletes it only when it is sealed in the format this
/// instance knows (`ARGV[1]`) under a key its ring names (`ARGV[2…]`). A value it cannot open
/// stays for the instances that can (a key rotation in progress). Replies `false` when there is
/// nothing, else `{taken, value}`.
const TAKE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.byte(v, 1) == tonumber(ARGV[1]) then
  local n = string.byte(v, 2)
  if n then
    local name = string.sub(v, 3, 2 + n)
    for i = 2, #ARGV do
      if ARGV[i] == name then
        redis.call('DEL', KEYS[1])
        return {1, v}
      end
    end
  end
end
return {0, v}
";

/// The take script, with this instance's arguments: sent by its digest (`EVALSHA`), and in
/// full only when Redis does not have it yet.
pub(crate) struct TakeScript {
    sha: String,
    args: Vec<Vec<u8>>,
}

impl TakeScript {
    pub(crate) fn new(keys: &KeyRing) -> Self {
        let sha = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, TAKE.as_bytes());
        let mut args = vec![SEAL_VERSION.to_string().into_bytes()];
        args.extend(keys.names().iter().map(|n| n.as_bytes().to_vec()));
        Self {
            sha: hex::encode(sha.as_ref()),
            args,
        }
    }

    /// Runs the take on `key`: `None` if there is nothing, else whether the value was taken,
    /// and the value.
    pub(crate) async fn take(
        &self,
        conn: &mut Conn,
        key: &str,
    ) -> RedisResult<Option<(bool, Vec<u8>)>> {
        let call = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(1).arg(key);
            for a in &self.args {
                cmd.arg(a.as_slice());
            }
            cmd
        };
        let reply = match conn
            .query::<Option<(i64, Vec<u8>)>>(&call("EVALSHA", &self.sha))
            .await
        {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                conn.query::<Option<(i64, Vec<u8>)>>(&call("EVAL", TAKE))
                    .await
            }
            other => other,
        };
        reply.map(|r| r.map(|(taken, value)| (taken == 1, value)))
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
            url: crate::config::redact(url),
            reason: target.scrub(&e.to_string()),
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
