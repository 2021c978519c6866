//! A stand-in for the rustls ticketer wt-keys builds in `reprise-rustls`, over the
//! [`TicketSealer`] it already landed, so that this branch's tests run before it lands.
//! Removed when it is merged.

use std::sync::Arc;

use reprise_seal::tickets::{TicketCounters, TicketKeySource, TicketSealer};

/// rustls's `ProducesTickets` over a [`TicketSealer`].
pub struct Ticketer(TicketSealer);

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticketer")
    }
}

impl Ticketer {
    /// A ticketer for the context `sid_ctx`.
    pub fn new(
        source: Arc<dyn TicketKeySource>,
        sid_ctx: &[u8],
        counters: Arc<TicketCounters>,
    ) -> Arc<Self> {
        Arc::new(Self(TicketSealer::new(source, sid_ctx, counters)))
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        u32::try_from(self.0.lifetime().as_secs()).unwrap_or(u32::MAX)
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.seal(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.open(cipher).ok().map(|p| p.to_vec())
    }
}
