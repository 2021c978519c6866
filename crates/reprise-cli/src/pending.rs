//! Stand-ins for the ticket-key pieces other branches build (wt-keys: the key sources, the
//! counters and the rustls ticketer; wt-fleet: the Redis ring), so that this branch compiles and
//! its chooser can be tested before they land. Removed when they are merged.
#![allow(dead_code, missing_docs, clippy::new_ret_no_self)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reprise_seal::tickets::{TicketKeySource, TicketKeys};

reprise::tier_counters! {
    /// The ticketer's counters.
    pub struct TicketCounters => TicketSnapshot {
        /// Tickets issued.
        issued: Counter = "issued_total",
        /// Tickets decrypted.
        decrypted: Counter = "decrypted_total",
        /// Tickets rejected: unknown key.
        rejected_unknown_key: Counter = "rejected_unknown_key_total",
        /// Tickets rejected: another context.
        rejected_wrong_context: Counter = "rejected_wrong_context_total",
        /// Tickets rejected: expired.
        rejected_expired: Counter = "rejected_expired_total",
        /// Tickets rejected: malformed.
        rejected_malformed: Counter = "rejected_malformed_total",
    }
}

impl TicketCounters {
    pub fn metrics(&self) -> Vec<reprise::Metric> {
        self.snapshot().metrics()
    }
}

#[derive(Debug)]
pub struct LocalTicketKeys(Duration);

impl LocalTicketKeys {
    pub fn new(lifetime: Duration) -> Arc<Self> {
        Arc::new(Self(lifetime))
    }
}

impl TicketKeySource for LocalTicketKeys {
    fn name(&self) -> &str {
        "local"
    }
    fn keys(&self) -> Arc<TicketKeys> {
        Arc::new(TicketKeys::new(None, Vec::new(), 0))
    }
    fn lifetime(&self) -> Duration {
        self.0
    }
}

#[derive(Debug)]
pub struct TicketKeyFile(Duration);

impl TicketKeyFile {
    pub fn open(_path: &Path, lifetime: Duration) -> Result<Arc<Self>, reprise_seal::KeyFileError> {
        Ok(Arc::new(Self(lifetime)))
    }
}

impl TicketKeySource for TicketKeyFile {
    fn name(&self) -> &str {
        "file"
    }
    fn keys(&self) -> Arc<TicketKeys> {
        Arc::new(TicketKeys::new(None, Vec::new(), 0))
    }
    fn lifetime(&self) -> Duration {
        self.0
    }
}

pub struct Ticketer;

impl Ticketer {
    pub fn new(
        _source: Arc<dyn TicketKeySource>,
        _sid_ctx: &[u8],
        _counters: Arc<TicketCounters>,
    ) -> Arc<dyn rustls::server::ProducesTickets> {
        rustls::crypto::ring::Ticketer::new().unwrap_or_else(|_| std::process::abort())
    }
}

#[derive(Debug)]
pub struct FleetTicketKeys(Duration);

impl FleetTicketKeys {
    pub fn start(
        _config: reprise_redis::RedisConfig,
        _seal: reprise_seal::KeyRing,
        lifetime: Duration,
    ) -> Result<Arc<Self>, reprise_redis::ConfigError> {
        Ok(Arc::new(Self(lifetime)))
    }
    pub async fn ready(&self, _timeout: Duration) -> bool {
        true
    }
}

impl TicketKeySource for FleetTicketKeys {
    fn name(&self) -> &str {
        "redis"
    }
    fn keys(&self) -> Arc<TicketKeys> {
        Arc::new(TicketKeys::new(None, Vec::new(), 0))
    }
    fn lifetime(&self) -> Duration {
        self.0
    }
}
