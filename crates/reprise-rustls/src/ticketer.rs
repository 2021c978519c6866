//! A rustls ticketer (`ProducesTickets`) whose keys come from a [`TicketKeySource`]: a key
//! file, a fleet's shared ring, or this process's own rotating keys.

use std::fmt;
use std::sync::Arc;

use reprise_seal::tickets::{TicketCounters, TicketKeySource, TicketSealer};
use rustls::server::ProducesTickets;

/// Stateless session tickets for rustls, sealed with keys from a [`TicketKeySource`] in the
/// format of [`reprise_seal::tickets::sealer`].
///
/// Unlike rustls's own ticketer, whose keys never leave the process, every server given the
/// same source (the same key file, the same Redis ring) resumes every other's tickets, and a
/// restart forgets none. Each context derives its own keys from the ring keys: make one
/// ticketer per `ServerConfig`, with that config's session-id context, so that a ticket issued
/// under one certificate or client-auth policy never resumes under another. Every context of a
/// server shares one [`TicketCounters`].
///
/// A ticketer governs both TLS versions of its config: TLS 1.2 tickets (RFC 5077), and TLS 1.3
/// stateless tickets, which, unlike Reprise's stateful ones, can be used more than once until
/// they expire.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use reprise_rustls::{derive_sid_ctx, ClientAuth, Ticketer};
/// use reprise_rustls::tickets::{TicketCounters, TicketKeyFile};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("ticket.keys");
/// # std::fs::write(&path, format!("k1:{}\n", "ab".repeat(32)))?;
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
/// let chain = vec![cert.cert.der().clone()];
/// let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
///
/// // One key source and one set of counters for the whole server...
/// let keys = TicketKeyFile::open(&path, Duration::from_secs(3600))?;
/// let counters = Arc::new(TicketCounters::default());
/// // ...and one ticketer per config, with the config's own context.
/// let sid_ctx = derive_sid_ctx(&chain, ClientAuth::None, b"");
/// let provider = Arc::new(rustls::crypto::ring::default_provider());
/// let mut config = rustls::ServerConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()?
///     .with_no_client_auth()
///     .with_single_cert(chain, key)?;
/// config.ticketer = Ticketer::new(keys, sid_ctx.as_bytes(), counters.clone());
/// assert!(config.ticketer.enabled());
/// assert_eq!(config.ticketer.lifetime(), 3600);
/// # Ok(()) }
/// ```
pub struct Ticketer {
    sealer: TicketSealer,
}

impl Ticketer {
    /// A ticketer for the context `sid_ctx`, with keys from `source`, counting in `counters`.
    pub fn new(
        source: Arc<dyn TicketKeySource>,
        sid_ctx: &[u8],
        counters: Arc<TicketCounters>,
    ) -> Arc<Self> {
        Self::from_sealer(TicketSealer::new(source, sid_ctx, counters))
    }

    /// A ticketer over a sealer made beforehand (one with a test clock, say).
    pub fn from_sealer(sealer: TicketSealer) -> Arc<Self> {
        Arc::new(Self { sealer })
    }

    /// The sealer: its source, its counters.
    pub fn sealer(&self) -> &TicketSealer {
        &self.sealer
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.sealer.lifetime().as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.sealer.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        // rustls takes the plaintext as a plain Vec: it is moved out, not copied.
        let mut plain = self.sealer.open(cipher).ok()?;
        Some(std::mem::take(&mut *plain))
    }
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ticketer").field(&self.sealer).finish()
    }
}
