//! [`Acceptor`]: TLS server connections for tokio that resume through the cache's tiers without
//! blocking a runtime thread, with the `ServerConfig` chosen per connection from its ClientHello.
//!
//! rustls asks its session store synchronously, from inside the handshake: a store that must
//! ask the network (a Redis a fleet shares) would park a runtime thread there. The acceptor
//! does the network part first:
//!
//! 1. it reads the client's first flight, under a timeout, into a buffer that grows only with
//!    what the client sent, and parses its ClientHello with Reprise's own parser
//!    ([`client_hello`](crate::client_hello));
//! 2. it asks the application's [`ChoosesConfig`] which [`ServerContext`] (a rustls
//!    `ServerConfig` and the [`ServerStore`] in it) serves this hello: by server name, offered
//!    versions, ALPN, PSK identities, early data;
//! 3. it fetches what the hello offers to resume from the cache's tiers
//!    ([`SessionCache::prefetch`](reprise::SessionCache::prefetch)), within the policy's
//!    deadline: a TLS 1.2 session is brought into memory, a TLS 1.3 ticket the authoritative
//!    tier handed over is given to this connection only
//!    ([`ConnectionSessions::confirm_take`]). A prefetch past its deadline is dropped and the
//!    handshake goes on (fail-open: a full handshake);
//! 4. it replays the bytes it read ([`Rewind`]) into tokio-rustls with the chosen config, with
//!    the connection's handle around the handshake, and returns the stream
//!    ([`SessionStream`], which reports TLS failures after the handshake to the handle).
//!
//! A hello the parser cannot read (not TLS, malformed, or larger than the policy allows) gets
//! the chooser's default context and no prefetch: rustls answers it, and no TLS 1.3 ticket
//! resumes from it where a shared tier must confirm the take.
//!
//! ```no_run
//! use std::sync::Arc;
//! use reprise_rustls::{AcceptPolicy, Acceptor, ServerContext, ServerStore};
//! use tokio::io::AsyncWriteExt;
//!
//! async fn serve(
//!     config: Arc<rustls::ServerConfig>,
//!     store: ServerStore,
//! ) -> std::io::Result<()> {
//!     let acceptor = Arc::new(Acceptor::new(
//!         ServerContext::new(config, store),
//!         AcceptPolicy::default(),
//!     ));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//!     loop {
//!         let (tcp, peer) = listener.accept().await?;
//!         let acceptor = acceptor.clone();
//!         tokio::spawn(async move {
//!             let Ok(mut accepted) = acceptor.accept(tcp, peer).await else { return };
//!             let _ = accepted.stream.write_all(b"hello\n").await;
//!             let _ = accepted.stream.shutdown().await;
//!         });
//!     }
//! }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reprise::{Offer, TicketTake};
use rustls::ServerConfig;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::client_hello::{ClientHelloInfo, ClientHelloParser, Parsed, MAX_FIRST_FLIGHT};
use crate::connection::ConnectionSessions;
use crate::early::{Driven, EarlyCounters, EarlyData, EarlyRejection, ServerIo};
use crate::rewind::Rewind;
use crate::server::ServerStore;
use crate::stream::SessionStream;

/// The first read's buffer: most ClientHellos fit, and an idle client that sent a few bytes
/// holds no more than this.
const FIRST_READ: usize = 512;

/// The most a read grows the buffer by: one TLS record's worth.
const MAX_GROWTH: usize = 16 * 1024;

/// The server's side of an accepted connection: tokio-rustls's stream over the socket (with the
/// ClientHello replayed), wrapped with its connection's handle.
/// A connection whose client sent early data is driven by hand ([`ServerIo::Driven`]): the
/// application reads that data first.
pub type ServerTlsStream = SessionStream<ServerIo>;

/// What serves one connection: a rustls configuration and the [`ServerStore`] it keeps its
/// sessions in (the store in `config.session_storage`), with the protocol versions the
/// configuration enables.
///
/// The acceptor reads the store's cache and session-id context to prefetch, and the versions to
/// know what to prefetch: a TLS 1.3 client's legacy session id is not looked up where TLS 1.3
/// will be negotiated. rustls does not tell a configuration's versions, so say them with
/// [`with_versions`](Self::with_versions) when they are not both TLS 1.2 and TLS 1.3.
#[derive(Clone, Debug)]
pub struct ServerContext {
    config: Arc<ServerConfig>,
    store: ServerStore,
    tls12: bool,
    tls13: bool,
    /// The same configuration, with early data allowed.
    early: Option<Arc<ServerConfig>>,
}

impl ServerContext {
    /// A context for `config`, whose `session_storage` is `store`, with TLS 1.2 and TLS 1.3
    /// enabled (rustls's default).
    pub fn new(config: Arc<ServerConfig>, store: ServerStore) -> Self {
        Self {
            config,
            store,
            tls12: true,
            tls13: true,
            early: None,
        }
    }

    /// The same context, taking TLS 1.3 early data (0-RTT) with `early`: the context's
    /// configuration with a non-zero `max_early_data_size` (and `send_half_rtt_data` to answer
    /// it before the client's Finished), stateful tickets, the same store.
    ///
    /// The acceptor gives a connection `early` only when early data cannot be replayed: the
    /// ClientHello offers no ticket (a full handshake, whose tickets then allow early data),
    /// or the ticket it offers was taken for this connection by the authoritative tier (the
    /// local tiers, without a shared one). Every other connection gets the context's
    /// configuration, which must have `max_early_data_size = 0`: the handshake goes on, early
    /// data is refused. A configuration with a ticketer (stateless tickets) never takes early
    /// data: `early` is ignored then.
    pub fn with_early_data(mut self, early: Arc<ServerConfig>) -> Self {
        let stateful = early.max_early_data_size > 0
            && early.send_tls13_tickets > 0
            && !early.ticketer.enabled()
            && !self.config.ticketer.enabled();
        self.early = stateful.then_some(early);
        self
    }

    /// Whether the context takes early data ([`with_early_data`](Self::with_early_data)).
    pub fn takes_early_data(&self) -> bool {
        self.early.is_some()
    }

    /// The same context, with the versions `config` was built with
    /// (`ServerConfig::builder_with_protocol_versions`).
    pub fn with_versions(mut self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        self.tls12 = versions
            .iter()
            .any(|v| v.version == rustls::ProtocolVersion::TLSv1_2);
        self.tls13 = versions
            .iter()
            .any(|v| v.version == rustls::ProtocolVersion::TLSv1_3);
        self
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The session store.
    pub fn store(&self) -> &ServerStore {
        &self.store
    }
}

/// Chooses the context that serves a connection, from what its ClientHello shows.
///
/// `hello` is None when the parser could not read one (not TLS, malformed, too large, or the
/// client closed first): return the default context then; rustls will answer the client.
///
/// Implemented for a single [`ServerContext`] (always that one) and for closures:
///
/// ```
/// # use reprise_rustls::{ClientHelloInfo, ServerContext, ChoosesConfig};
/// fn by_name(api: ServerContext, web: ServerContext) -> impl ChoosesConfig {
///     move |hello: Option<&ClientHelloInfo>| match hello.and_then(|h| h.server_name.as_deref()) {
///         Some("api.example.com") => api.clone(),
///         _ => web.clone(),
///     }
/// }
/// ```
pub trait ChoosesConfig: Send + Sync {
    /// The context for a connection whose ClientHello is `hello`.
    fn choose(&self, hello: Option<&ClientHelloInfo>) -> ServerContext;
}

impl ChoosesConfig for ServerContext {
    fn choose(&self, _hello: Option<&ClientHelloInfo>) -> ServerContext {
        self.clone()
    }
}

impl<F> ChoosesConfig for F
where
    F: Fn(Option<&ClientHelloInfo>) -> ServerContext + Send + Sync,
{
    fn choose(&self, hello: Option<&ClientHelloInfo>) -> ServerContext {
        self(hello)
    }
}

/// How an [`Acceptor`] treats each connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcceptPolicy {
    /// How long the prefetch from the tiers may take. Past it, the prefetch is dropped and the
    /// handshake goes on without it (a full handshake, unless memory has the session). Set it
    /// a little above the tiers' own read deadlines. Default 100 ms.
    pub prefetch_deadline: Duration,
    /// How many TLS 1.3 PSK identities of one ClientHello are tried, in the client's order
    /// (clients offer one; a hostile hello can list thousands). Default 4.
    pub max_psk_identities: usize,
    /// The most bytes of a first flight read for its ClientHello; past it, the hello counts as
    /// unreadable and rustls decides. At most (and by default)
    /// [`MAX_FIRST_FLIGHT`](crate::client_hello::MAX_FIRST_FLIGHT).
    pub max_first_flight: usize,
    /// How long the client may take to send its ClientHello; None for no limit. Default 10 s.
    pub hello_timeout: Option<Duration>,
    /// How long the whole accept may take, from the call to the end of the handshake, the
    /// ClientHello included; None for no limit. Default 10 s.
    pub handshake_timeout: Option<Duration>,
    /// Whether early data is held until the handshake completes (the client's Finished): it
    /// is read then, first, and nothing is answered before. By default (false), the accepted
    /// stream is returned as soon as the server's flight went out, the early data readable at
    /// once, and what the application writes goes out as 0.5-RTT data: one round trip saved.
    pub hold_early_data: bool,
}

impl Default for AcceptPolicy {
    fn default() -> Self {
        Self {
            prefetch_deadline: Duration::from_millis(100),
            max_psk_identities: 4,
            max_first_flight: MAX_FIRST_FLIGHT,
            hello_timeout: Some(Duration::from_secs(10)),
            handshake_timeout: Some(Duration::from_secs(10)),
            hold_early_data: false,
        }
    }
}

/// What the prefetch of one connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Nothing to ask: no readable hello, nothing offered to resume, or no tier attached.
    NotAsked,
    /// The tiers had nothing usable (or memory already had the session).
    Nothing,
    /// A TLS 1.2 session was brought into memory.
    Session,
    /// The authoritative tier took a TLS 1.3 ticket for this connection, and it was handed to
    /// the connection.
    Ticket,
    /// The prefetch passed its deadline and was dropped.
    TimedOut,
}

/// An accepted TLS connection.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted {
    /// The stream, with the connection's handle ([`SessionStream::sessions`]).
    pub stream: ServerTlsStream,
    /// The ClientHello as Reprise's parser read it; None if it could not.
    pub hello: Option<ClientHelloInfo>,
    /// What the prefetch did.
    pub prefetch: Prefetch,
    /// What became of the client's early data. When accepted, it is the first thing read from
    /// the stream ([`ServerIo::early_data_read`] counts it), and the handshake may still be
    /// waiting for the client's Finished (unless the policy holds early data).
    pub early_data: EarlyData,
}

/// Why a connection was not accepted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No ClientHello arrived within the policy's hello timeout.
    #[error("no ClientHello within the hello timeout")]
    HelloTimeout,
    /// The handshake did not complete within the policy's handshake timeout.
    #[error("the handshake did not complete within the handshake timeout")]
    HandshakeTimeout,
    /// The client went away mid-handshake: end of stream, reset, broken pipe.
    #[error("the client closed the connection: {0}")]
    Closed(#[source] io::Error),
    /// The handshake failed as rustls reports: garbage, nothing in common, a bad client
    /// certificate, an alert, or an error of the server's own.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] rustls::Error),
    /// Another socket error.
    #[error("socket error: {0}")]
    Io(#[source] io::Error),
}

impl AcceptError {
    /// Whether the client caused the failure (it was slow, went away, sent garbage or offered
    /// nothing usable), rather than the server: a busy server sees such failures all the time,
    /// and logs them quietly.
    pub fn is_client_fault(&self) -> bool {
        match self {
            AcceptError::Tls(e) => matches!(
                e,
                rustls::Error::InvalidMessage(_)
                    | rustls::Error::InappropriateMessage { .. }
                    | rustls::Error::InappropriateHandshakeMessage { .. }
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::PeerMisbehaved(_)
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
            ),
            _ => true,
        }
    }

    fn from_io(e: io::Error) -> Self {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return AcceptError::Tls(tls.clone());
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => AcceptError::Closed(e),
            _ => AcceptError::Io(e),
        }
    }
}

/// Accepts TLS connections on tokio: the ClientHello read with Reprise's parser, the config
/// chosen from it, what it offers fetched from the tiers, then the handshake. See the module
/// documentation.
#[derive(Debug)]
pub struct Acceptor<C = ServerContext> {
    chooser: C,
    policy: AcceptPolicy,
    early: EarlyCounters,
}

impl<C: ChoosesConfig> Acceptor<C> {
    /// An acceptor that chooses each connection's context with `chooser`.
    pub fn new(chooser: C, policy: AcceptPolicy) -> Self {
        Self {
            chooser,
            policy,
            early: EarlyCounters::default(),
        }
    }

    /// What the acceptor counted of early data: offered, accepted, refused by reason.
    pub fn early_data_counters(&self) -> &EarlyCounters {
        &self.early
    }

    /// The policy.
    pub fn policy(&self) -> &AcceptPolicy {
        &self.policy
    }

    /// The chooser.
    pub fn chooser(&self) -> &C {
        &self.chooser
    }

    /// Accepts a connection from `peer` (its address goes to the tiers, which may budget reads
    /// per client): reads its ClientHello, chooses its context, prefetches, and completes the
    /// handshake.
    ///
    /// Until the ClientHello has arrived, the connection holds only the bytes the client sent
    /// and one timer; the rest of the state is allocated after. The [`Accepted`] it returns is
    /// large (rustls's connection state, over a kilobyte): a task that awaits more after the
    /// accept keeps its own future small by boxing what follows, as `reprise serve` does.
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Accepted, AcceptError> {
        let started = tokio::time::Instant::now();
        let policy = &self.policy;
        let handshake_deadline = policy.handshake_timeout.map(|t| started + t);
        // One timer while the hello is awaited: the sooner of the two deadlines.
        let hello_first = policy
            .hello_timeout
            .is_some_and(|h| policy.handshake_timeout.is_none_or(|t| h <= t));
        let hello_deadline = match policy.hello_timeout {
            Some(h) if hello_first => Some(started + h),
            _ => handshake_deadline,
        };
        let max = policy.max_first_flight.min(MAX_FIRST_FLIGHT);
        let first = match hello_deadline {
            Some(at) => tokio::time::timeout_at(at, read_first_flight(&tcp, max))
                .await
                .map_err(|_| match hello_first {
                    true => AcceptError::HelloTimeout,
                    false => AcceptError::HandshakeTimeout,
                })?,
            None => read_first_flight(&tcp, max).await,
        }
        .map_err(AcceptError::from_io)?;
        // The rest, larger, is allocated only now.
        Box::pin(self.handshake(tcp, peer, first, handshake_deadline)).await
    }

    /// Everything after the ClientHello.
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        first: FirstFlight,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Accepted, AcceptError> {
        let handshake = self.handshake_now(tcp, peer, first);
        match deadline {
            Some(at) => tokio::time::timeout_at(at, handshake)
                .await
                .unwrap_or(Err(AcceptError::HandshakeTimeout)),
            None => handshake.await,
        }
    }

    async fn handshake_now(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        first: FirstFlight,
    ) -> Result<Accepted, AcceptError> {
        let context = self.chooser.choose(first.hello.as_ref());
        let sessions = context.store.connection();
        let (prefetch, take) = match &first.hello {
            Some(hello) => self.prefetch(&context, &sessions, hello, peer).await,
            None => (Prefetch::NotAsked, TicketTake::NotAsked),
        };
        let (config, early) = early_decision(&context, first.hello.as_ref(), prefetch, take);
        let stream = Rewind::new(first.bytes, tcp);
        if early.is_ok() && first.hello.as_ref().is_some_and(|h| h.early_data) {
            // rustls may accept early data: drive it by hand, to read it.
            let conn = rustls::ServerConnection::new(config).map_err(AcceptError::Tls)?;
            let hold = self.policy.hold_early_data;
            let mut driven = Driven::new(stream, conn, sessions.share(), hold);
            let driven_result = sessions.instrument(driven.drive(!hold)).await;
            let early_data = if driven.early_accepted() {
                EarlyData::Accepted
            } else if driven.conn().handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                EarlyData::Rejected(EarlyRejection::Refused)
            } else {
                // No resumption: the ticket was not found where it was taken.
                EarlyData::Rejected(EarlyRejection::NotConfirmed)
            };
            self.early.count(early_data);
            driven_result.map_err(AcceptError::from_io)?;
            return Ok(Accepted {
                // The handle notes the end of the handshake as reads complete it.
                stream: SessionStream::new(ServerIo::Driven(driven), sessions),
                hello: first.hello,
                prefetch,
                early_data,
            });
        }
        let early_data = match (&first.hello, early) {
            (Some(h), Err(why)) if h.early_data => EarlyData::Rejected(why),
            // Offered, and allowed, but not to a hello that reached here: none.
            _ => EarlyData::NotOffered,
        };
        self.early.count(early_data);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = sessions
            .instrument(acceptor.accept(stream))
            .await
            .map_err(AcceptError::from_io)?;
        Ok(Accepted {
            // Notes the handshake's end; a TLS failure from here on removes the connection's
            // sessions.
            stream: SessionStream::server_io(ServerIo::Tokio(tls), sessions),
            hello: first.hello,
            prefetch,
            early_data,
        })
    }

    /// Fetches from the tiers what `hello` offers to resume, before rustls reads it.
    ///
    /// A ticket resumes only if taken here: one this read did not take (an identity past the
    /// policy's count, a second ClientHello after a HelloRetryRequest that offers another)
    /// gets a full handshake where a shared tier must confirm takes.
    async fn prefetch(
        &self,
        context: &ServerContext,
        sessions: &ConnectionSessions,
        hello: &ClientHelloInfo,
        peer: SocketAddr,
    ) -> (Prefetch, TicketTake) {
        let cache = context.store.cache();
        if !cache.has_tiers() {
            return (Prefetch::NotAsked, TicketTake::NotAsked);
        }
        let tls13 = context.tls13 && hello.supports_tls13;
        // A TLS 1.3 client's legacy session id is random: only a TLS 1.2 handshake looks it up,
        // and only without a ticket (rustls resumes a hello that offers one by it or not at
        // all: fetching the id would cost a tier's round trip for nothing).
        let session_id = (!tls13
            && context.tls12
            && hello.offers_tls12()
            && !hello.offers_session_ticket
            && !hello.session_id.is_empty())
        .then_some(hello.session_id.as_slice());
        // Stateful tickets only: a stateless ticket is its own session, and no tier has it.
        let config = &context.config;
        let stateful = config.send_tls13_tickets > 0 && !config.ticketer.enabled();
        let identities: Vec<&[u8]> = if tls13 && stateful {
            hello
                .psk_identities
                .iter()
                .take(self.policy.max_psk_identities)
                .map(Vec::as_slice)
                .collect()
        } else {
            Vec::new()
        };
        if session_id.is_none() && identities.is_empty() {
            return (Prefetch::NotAsked, TicketTake::NotAsked);
        }
        let offer = Offer {
            sid_ctx: context.store.sid_ctx().as_bytes(),
            session_id,
            psk_identities: &identities,
            client: Some(peer.ip()),
        };
        let deadline = self.policy.prefetch_deadline;
        let Ok(prefetched) = tokio::time::timeout(deadline, cache.prefetch(offer)).await else {
            return (Prefetch::TimedOut, TicketTake::Unavailable);
        };
        let take = prefetched.ticket_take();
        if prefetched.found_session() {
            return (Prefetch::Session, take);
        }
        match prefetched.into_ticket() {
            Some(ticket) => {
                sessions.confirm_take(ticket);
                (Prefetch::Ticket, take)
            }
            None => (Prefetch::Nothing, take),
        }
    }
}

/// The configuration a connection gets, and whether it may take early data (or why not).
///
/// The early-data configuration goes to a hello that offers no ticket (a full handshake: its
/// new tickets allow early data) and to one whose ticket's single use is confirmed: taken for
/// this connection by the authoritative tier, or, with no shared tier, about to be taken by
/// memory or a local tier during the handshake. Every other hello gets the context's own
/// configuration (no early data) and the reason.
fn early_decision(
    context: &ServerContext,
    hello: Option<&ClientHelloInfo>,
    prefetch: Prefetch,
    take: TicketTake,
) -> (Arc<ServerConfig>, Result<(), EarlyRejection>) {
    let plain = Arc::clone(&context.config);
    let Some(early) = &context.early else {
        return (plain, Err(EarlyRejection::Disabled));
    };
    let Some(hello) = hello else {
        return (plain, Err(EarlyRejection::NotConfirmed));
    };
    if !context.tls13 || !hello.supports_tls13 {
        return (plain, Err(EarlyRejection::Disabled));
    }
    if hello.psk_identities.is_empty() {
        if hello.early_data {
            return (plain, Err(EarlyRejection::NotOfferedWithTicket));
        }
        return (Arc::clone(early), Ok(()));
    }
    let confirmed = match context.store.cache().has_tiers() {
        // Memory takes the ticket during the handshake, atomically: the only copy there is.
        false => true,
        true => prefetch == Prefetch::Ticket || take == TicketTake::Synchronous,
    };
    if confirmed {
        return (Arc::clone(early), Ok(()));
    }
    let why = match take {
        TicketTake::CircuitOpen => EarlyRejection::BreakerOpen,
        _ => EarlyRejection::NotConfirmed,
    };
    (plain, Err(why))
}

/// A client's first bytes, as read, and the ClientHello they hold.
#[derive(Debug)]
struct FirstFlight {
    /// Every byte read, to be read again by rustls.
    bytes: Vec<u8>,
    /// The ClientHello, if the bytes hold a whole, well-formed one. None if they are malformed
    /// (rustls answers with the right alert), if the client closed first, or if they reached
    /// the limit undecided (rustls decides).
    hello: Option<ClientHelloInfo>,
}

/// Reads from `tcp` until its ClientHello is complete, shown malformed, `max` bytes were read,
/// or the client closes.
///
/// While nothing has arrived, the connection holds no buffer. The buffer then grows with what
/// the client sent, about doubling at each full read: its capacity stays under twice the bytes
/// read plus [`FIRST_READ`], and never exceeds `max`. The caller bounds the time.
async fn read_first_flight(tcp: &TcpStream, max: usize) -> io::Result<FirstFlight> {
    let mut bytes = Vec::new();
    let mut parser = ClientHelloParser::new();
    loop {
        match parser.parse(&bytes) {
            Parsed::Complete(info) => {
                return Ok(FirstFlight {
                    bytes,
                    hello: Some(info),
                })
            }
            Parsed::Invalid(_) => return Ok(FirstFlight { bytes, hello: None }),
            Parsed::Incomplete if bytes.len() >= max => {
                return Ok(FirstFlight { bytes, hello: None })
            }
            Parsed::Incomplete => {}
        }
        tcp.readable().await?;
        if bytes.len() == bytes.capacity() {
            let grow = bytes
                .len()
                .clamp(FIRST_READ, MAX_GROWTH)
                .min(max - bytes.len());
            bytes.reserve_exact(grow);
        }
        match tcp.try_read_buf(&mut bytes) {
            Ok(0) => return Ok(FirstFlight { bytes, hello: None }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_buffer_grows_with_what_was_sent() -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        // A record and a ClientHello header announcing 1000 bytes, then 200 of them.
        let mut partial = vec![22, 3, 1, 0x03, 0xec, 1, 0, 0x03, 0xe8, 3, 3];
        partial.resize(209, 0);
        client.write_all(&partial).await?;
        client.shutdown().await?;
        let flight = read_first_flight(&server, MAX_FIRST_FLIGHT).await?;
        assert_eq!(flight.bytes, partial);
        assert!(flight.hello.is_none());
        assert!(
            flight.bytes.capacity() <= 2 * partial.len() + FIRST_READ,
            "capacity {}",
            flight.bytes.capacity()
        );
        Ok(())
    }

    #[tokio::test]
    async fn reading_stops_at_the_limit_undecided() -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        // A ClientHello announcing 1000 bytes, cut short by a limit of 100.
        let mut partial = vec![22, 3, 1, 0x03, 0xec, 1, 0, 0x03, 0xe8, 3, 3];
        partial.resize(300, 0);
        client.write_all(&partial).await?;
        let flight = read_first_flight(&server, 100).await?;
        assert!(flight.hello.is_none());
        assert!(
            (100..=300).contains(&flight.bytes.len()),
            "{}",
            flight.bytes.len()
        );
        assert_eq!(flight.bytes[..], partial[..flight.bytes.len()]);
        Ok(())
    }

    #[test]
    fn errors_tell_the_clients_faults() {
        let eof = AcceptError::from_io(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(matches!(eof, AcceptError::Closed(_)) && eof.is_client_fault());
        let garbage = AcceptError::from_io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ));
        assert!(matches!(garbage, AcceptError::Tls(_)) && garbage.is_client_fault());
        let ours = AcceptError::from_io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("no key".into()),
        ));
        assert!(!ours.is_client_fault());
        assert!(AcceptError::HelloTimeout.is_client_fault());
    }
}
