//! The server adapter: a Reprise cache as the external session cache of an OpenSSL context.

use core::sync::atomic::{AtomicU64, Ordering};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::sync::Arc;

use openssl::ssl::{
    HandshakeError, Ssl, SslContextBuilder, SslOptions, SslRef, SslSession, SslSessionCacheMode,
    SslSessionRef, SslStream, SslVersion,
};
use reprise::{ProtocolVersion, Role, SessionCache, SessionKey, SidCtx};

use crate::decoded::{self, DecodedSession};
use crate::error::Error;
use crate::sid_ctx::{current_sid_ctx, server_sid_ctx, tag_context};

/// What the adapter did, beyond what the cache's own statistics count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Sessions OpenSSL negotiated and handed to the cache (new-session callback calls).
    pub new_sessions: u64,
    /// Sessions OpenSSL asked for (get-session callback calls).
    pub lookups: u64,
    /// Sessions the cache supplied and OpenSSL was given.
    pub supplied: u64,
    /// Sessions the cache supplied whose DER did not decode: each was a miss.
    pub undecodable: u64,
    /// New sessions that could not be encoded or keyed, and so were not cached.
    pub unencodable: u64,
    /// TLS 1.3 lookups of an id that the cache holds as a TLS 1.2 session: a miss, and the
    /// session is left alone.
    pub version_mismatches: u64,
    /// Removals OpenSSL asked for (remove-session callback calls), for example after a
    /// connection that was not shut down cleanly.
    pub removals: u64,
    /// Removals OpenSSL asked for inside [`ServerCache::accept`] of a handshake that then
    /// failed (a refused or failed resumption): not passed on to the cache, since the peer
    /// never proved it held the session.
    pub ignored_removals: u64,
}

#[derive(Default)]
struct Counters {
    new_sessions: AtomicU64,
    lookups: AtomicU64,
    supplied: AtomicU64,
    undecodable: AtomicU64,
    unencodable: AtomicU64,
    version_mismatches: AtomicU64,
    removals: AtomicU64,
    ignored_removals: AtomicU64,
}

thread_local! {
    /// The removals OpenSSL asked for on this thread during [`ServerCache::accept`], with the
    /// adapter they belong to, held until the handshake's outcome is known.
    static ACCEPTING: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Removals held during one `accept`: the adapter's address and the session ids.
struct Held {
    inner: usize,
    ids: Vec<Vec<u8>>,
}

/// Holds this thread's removals for one adapter until [`finish`](Holding::finish), and puts
/// back what was held before (even if the handshake unwinds).
struct Holding {
    outer: Option<Option<Held>>,
}

impl Holding {
    fn start(inner: usize) -> Self {
        let held = Held {
            inner,
            ids: Vec::new(),
        };
        let outer = ACCEPTING.with(|a| a.replace(Some(held)));
        Self { outer: Some(outer) }
    }

    /// Stops holding, and returns what was held.
    fn finish(mut self) -> Option<Held> {
        let outer = self.outer.take().flatten();
        ACCEPTING.with(|a| a.replace(outer))
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            ACCEPTING.with(|a| a.replace(outer));
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    cache: Arc<SessionCache>,
    sid_ctx: SidCtx,
    counters: Counters,
}

/// A Reprise [`SessionCache`] installed as the external session cache of an OpenSSL server
/// context. Clones share the same cache and statistics.
///
/// OpenSSL's own cache is off (`NO_INTERNAL`): the Reprise cache's mode, size limit, timeout,
/// callbacks and statistics apply to every session. What OpenSSL negotiates goes in through
/// the new-session callback, as DER, under the connection's session-id context; a client's
/// offer comes back through the get-session callback; and what OpenSSL removes (a connection
/// that was not shut down cleanly, a fatal alert) is removed from the cache through the
/// remove-session callback.
#[derive(Clone)]
pub struct ServerCache {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for ServerCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerCache")
            .field("sid_ctx", &self.inner.sid_ctx)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

/// OpenSSL's `SSL_OP_NO_ANTI_REPLAY` (`ssl.h`, 1.1.1 and later: bit 24), which the `openssl`
/// crate does not name.
pub(crate) const NO_ANTI_REPLAY: SslOptions = SslOptions::from_bits_retain(1 << 24);

impl ServerCache {
    /// Wires an OpenSSL server context to `cache`, in one call:
    ///
    /// - sets the session-id context to `sid_ctx` (1 to 32 bytes; see
    ///   [`derive_sid_ctx`](crate::derive_sid_ctx));
    /// - sets OpenSSL's cache mode to `SERVER | NO_INTERNAL`, so that the Reprise cache is the
    ///   only one, and `NO_TICKET`, so that every session is stateful and goes through it
    ///   (TLS 1.2 session ids, TLS 1.3 tickets; stateless tickets would bypass any cache);
    /// - sets `NO_ANTI_REPLAY`: with early data on (`set_max_early_data`), OpenSSL's own
    ///   anti-replay removes a TLS 1.3 ticket from its internal cache on use and refuses the
    ///   resumption when it is not there, and `NO_INTERNAL` keeps it empty, so no TLS 1.3
    ///   ticket would ever resume. Reprise's get callback takes each ticket on use instead
    ///   (single use, fleet-wide with an atomic take): that is the anti-replay;
    /// - installs the new, get and remove callbacks.
    ///
    /// A connection that verifies client certificates (`SslVerifyMode::PEER`) keys its sessions
    /// under `sid_ctx` with its verify mode and the certificates of its context's trust store
    /// mixed in, so that servers sharing a cache and a context name but not their client
    /// verification never resume each other's sessions (OpenSSL's own check compares only the
    /// name). It costs a hash of the trust store's fingerprints per cache call, on such
    /// connections only.
    ///
    /// The cache decides what is stored, for how long (its timeout) and how many (its size
    /// limit). OpenSSL also checks each session it is given against its own session timeout,
    /// which the `openssl` crate gives no way to set: it stays at OpenSSL's 7200 s, so a cache
    /// timeout above that is capped at 7200 s ([`StatelessTickets::install`] on the same
    /// context sets it to the ticket lifetime).
    ///
    /// [`StatelessTickets::install`]: crate::StatelessTickets::install
    ///
    /// Call [`accept`](Self::accept) (or [`handshake_started`](Self::handshake_started) and
    /// [`handshake_completed`](Self::handshake_completed)) for each connection, so that the
    /// cache counts handshakes and flushes expired sessions every 255 of them.
    pub fn install(
        builder: &mut SslContextBuilder,
        cache: Arc<SessionCache>,
        sid_ctx: &[u8],
    ) -> Result<Self, Error> {
        let sid_ctx = server_sid_ctx(sid_ctx)?;
        tag_context(builder, sid_ctx.as_bytes())?;
        builder
            .set_session_cache_mode(SslSessionCacheMode::SERVER | SslSessionCacheMode::NO_INTERNAL);
        builder.set_options(SslOptions::NO_TICKET | NO_ANTI_REPLAY);
        let this = Self {
            inner: Arc::new(Inner {
                cache,
                sid_ctx,
                counters: Counters::default(),
            }),
        };
        let inner = Arc::clone(&this.inner);
        builder.set_new_session_callback(move |ssl: &mut SslRef, session: SslSession| {
            inner.on_new(ssl, &session);
        });
        let inner = Arc::clone(&this.inner);
        builder.set_remove_session_callback(move |_ctx, session: &SslSessionRef| {
            inner.on_remove(session);
        });
        let inner = Arc::clone(&this.inner);
        decoded::set_get_session_callback(builder, move |ssl: &mut SslRef, id: &[u8]| {
            inner.on_get(ssl, id)
        });
        Ok(this)
    }

    /// The cache behind the adapter.
    pub fn cache(&self) -> &Arc<SessionCache> {
        &self.inner.cache
    }

    /// The session-id context given to [`install`](Self::install).
    pub fn sid_ctx(&self) -> &SidCtx {
        &self.inner.sid_ctx
    }

    /// A snapshot of the adapter's counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.inner.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            new_sessions: read(&c.new_sessions),
            lookups: read(&c.lookups),
            supplied: read(&c.supplied),
            undecodable: read(&c.undecodable),
            unencodable: read(&c.unencodable),
            version_mismatches: read(&c.version_mismatches),
            removals: read(&c.removals),
            ignored_removals: read(&c.ignored_removals),
        }
    }

    /// Counts a server handshake that started (`accept`).
    pub fn handshake_started(&self) {
        self.inner.cache.handshake_started(Role::Server);
    }

    /// Counts a server handshake that completed (`accept_good`); every 255th flushes the
    /// cache's expired sessions, unless its mode has `NO_AUTO_CLEAR`.
    pub fn handshake_completed(&self) {
        self.inner.cache.handshake_completed(Role::Server);
    }

    /// Runs the server side of a handshake on a blocking stream, counting it: `accept`, then
    /// `accept_good` if it completes. With a non-blocking stream, a handshake that would block
    /// is not counted as completed: call [`handshake_completed`](Self::handshake_completed)
    /// when it finishes.
    ///
    /// OpenSSL's remove callback does not say which connection removed a session, nor whether
    /// its resumption completed. Here the adapter knows: the removals OpenSSL asks for during
    /// this handshake are held, applied if it completes (or would block), and dropped if it
    /// fails (counted in [`ServerStats::ignored_removals`]). A client that offers someone
    /// else's session id (it travels in clear) and fails the resumption removes nothing.
    pub fn accept<S: Read + Write>(
        &self,
        ssl: Ssl,
        stream: S,
    ) -> Result<SslStream<S>, HandshakeError<S>> {
        self.handshake_started();
        let holding = Holding::start(Arc::as_ptr(&self.inner) as usize);
        let accepted = ssl.accept(stream);
        let held = holding.finish();
        let ids = held.map(|h| h.ids).unwrap_or_default();
        match &accepted {
            Err(HandshakeError::SetupFailure(_) | HandshakeError::Failure(_)) => {
                let ignored = u64::try_from(ids.len()).unwrap_or(u64::MAX);
                self.inner
                    .counters
                    .ignored_removals
                    .fetch_add(ignored, Ordering::Relaxed);
            }
            Ok(_) | Err(HandshakeError::WouldBlock(_)) => {
                for id in &ids {
                    self.inner.remove_id(id);
                }
            }
        }
        let tls = accepted?;
        self.handshake_completed();
        Ok(tls)
    }
}

/// The Reprise name of an OpenSSL protocol version.
pub(crate) fn version_of(version: SslVersion) -> ProtocolVersion {
    if version == SslVersion::TLS1_3 {
        ProtocolVersion::TLS1_3
    } else if version == SslVersion::TLS1_2 {
        ProtocolVersion::TLS1_2
    } else if version == SslVersion::TLS1_1 {
        ProtocolVersion(0x0302)
    } else if version == SslVersion::TLS1 {
        ProtocolVersion(0x0301)
    } else {
        ProtocolVersion::UNKNOWN
    }
}

impl Inner {
    /// OpenSSL's new-session callback: the session goes into the cache as DER, keyed by the
    /// connection's session-id context and the session id. Its time and timeout are the
    /// cache's (its clock's now, its timeout), as for every Reprise session.
    fn on_new(&self, ssl: &SslRef, session: &SslSessionRef) {
        bump(&self.counters.new_sessions);
        let Ok(der) = session.to_der() else {
            bump(&self.counters.unencodable);
            return;
        };
        let sid_ctx = current_sid_ctx(ssl, &self.sid_ctx);
        let built = self
            .cache
            .session(session.id(), der)
            .sid_ctx(sid_ctx.as_bytes())
            .version(version_of(session.protocol_version()))
            .build();
        match built {
            Ok(s) => {
                self.cache.new_session(Role::Server, s);
            }
            // OpenSSL makes 32-byte ids; anything else cannot be keyed.
            Err(_) => bump(&self.counters.unencodable),
        }
    }

    /// OpenSSL's get-session callback. A TLS 1.3 ticket is taken (removed on use, so it
    /// resumes at most once); a TLS 1.2 session is looked up. Either way the cache validates
    /// it (context, expiry, resumable) first, and OpenSSL checks it again. A session whose DER
    /// does not decode is a miss.
    fn on_get(&self, ssl: &SslRef, id: &[u8]) -> Option<DecodedSession> {
        bump(&self.counters.lookups);
        let sid_ctx = current_sid_ctx(ssl, &self.sid_ctx);
        let key = SessionKey::new(id, sid_ctx.as_bytes());
        let found = if ssl.version2() == Some(SslVersion::TLS1_3) {
            // A TLS 1.3 client may name any id as a ticket, for one a TLS 1.2 session id it saw
            // on the wire: taking that would destroy a session it cannot resume anyway.
            if self
                .cache
                .peek(id)
                .is_some_and(|s| s.version() != ProtocolVersion::TLS1_3)
            {
                bump(&self.counters.version_mismatches);
                return None;
            }
            self.cache.take(Role::Server, key)?
        } else {
            self.cache.lookup(Role::Server, key)?
        };
        match DecodedSession::from_der(found.payload()) {
            Ok(session) => {
                bump(&self.counters.supplied);
                Some(session)
            }
            Err(_) => {
                bump(&self.counters.undecodable);
                None
            }
        }
    }

    /// OpenSSL's remove-session callback: OpenSSL removed a session (an unclean shutdown, a
    /// fatal alert, a session it found expired), so the cache removes its copy, with the
    /// cache's remove callback (an explicit removal: the Redis tier deletes it fleet-wide).
    ///
    /// OpenSSL also calls this for sessions that were never cached (every fatal alert does, on
    /// the connection's fresh session): those are not passed on, since there is nothing to
    /// remove, and passing them on would turn failed handshakes into external-cache traffic.
    /// The cache's callbacks never call back into OpenSSL, so this cannot loop.
    ///
    /// Inside [`ServerCache::accept`] the removal waits for the handshake's outcome.
    fn on_remove(&self, session: &SslSessionRef) {
        bump(&self.counters.removals);
        let me = self as *const Inner as usize;
        let held = ACCEPTING.with(|a| match a.borrow_mut().as_mut() {
            Some(held) if held.inner == me => {
                held.ids.push(session.id().to_vec());
                true
            }
            _ => false,
        });
        if !held {
            self.remove_id(session.id());
        }
    }

    /// Removes the cached session with this id, if any, with the cache's remove callback.
    fn remove_id(&self, id: &[u8]) {
        if let Some(cached) = self.cache.peek(id) {
            self.cache.remove(&cached);
        }
    }
}
