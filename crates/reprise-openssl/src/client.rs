//! The client adapter: a client's sessions, per server name, in a Reprise cache in CLIENT mode.

use core::sync::atomic::{AtomicU64, Ordering};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use openssl::ex_data::Index;
use openssl::sha::Sha256;
use openssl::ssl::{
    ConnectConfiguration, HandshakeError, NameType, Ssl, SslContextBuilder, SslRef, SslSession,
    SslSessionCacheMode, SslStream,
};
use reprise::{ProtocolVersion, Role, SessionCache, SessionKey};

use crate::decoded::{self, DecodedSession};
use crate::server::version_of;

/// What the client adapter did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Sessions OpenSSL handed over (one per full TLS 1.2 handshake, one per TLS 1.3 ticket).
    pub new_sessions: u64,
    /// Sessions not cached because the connection had no server name.
    pub unnamed: u64,
    /// Sessions not cached because they could not be encoded.
    pub unencodable: u64,
    /// Sessions offered to a server.
    pub offered: u64,
    /// Cached sessions whose DER did not decode: not offered.
    pub undecodable: u64,
}

#[derive(Default)]
struct Counters {
    new_sessions: AtomicU64,
    unnamed: AtomicU64,
    unencodable: AtomicU64,
    offered: AtomicU64,
    undecodable: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The server name a connection is for, as [`ClientCache::prepare`] recorded it.
struct ServerNameTag(String);

fn name_index() -> Option<Index<Ssl, ServerNameTag>> {
    static INDEX: OnceLock<Option<Index<Ssl, ServerNameTag>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index::<ServerNameTag>().ok())
}

/// The cache key of a server name's session: a SHA-256 of a label and the name, 32 bytes, used
/// as the session id in the client cache.
pub fn client_session_key(server_name: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"reprise-openssl client session\0");
    hash.update(server_name.as_bytes());
    hash.finish()
}

struct Inner {
    cache: Arc<SessionCache>,
    counters: Counters,
}

/// A client's sessions, one per server name, in a Reprise cache.
///
/// Give the cache [`CacheMode::CLIENT`](reprise::CacheMode::CLIENT) (or `BOTH`): a client
/// caches nothing otherwise. The cache's size limit, timeout, callbacks and statistics apply.
/// OpenSSL never picks a session for a client by itself (the seeds: "the application must
/// select the session to be reused by using the SSL_set_session(3) function"): this does, by
/// server name. A TLS 1.2 session is offered until it expires; a TLS 1.3 ticket is offered
/// once, then the next one the server sends replaces it.
///
/// Clones share the same cache.
#[derive(Clone)]
pub struct ClientCache {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientCache")
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl ClientCache {
    /// A client store over `cache`.
    pub fn new(cache: Arc<SessionCache>) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                counters: Counters::default(),
            }),
        }
    }

    /// Wires an OpenSSL client context to the cache: OpenSSL's client cache mode is turned on
    /// (`CLIENT | NO_INTERNAL`, so that the new-session callback fires and OpenSSL keeps no
    /// copy of its own), and the new-session callback stores each session under its
    /// connection's server name.
    pub fn install(&self, builder: &mut SslContextBuilder) {
        builder
            .set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL);
        let inner = Arc::clone(&self.inner);
        builder.set_new_session_callback(move |ssl: &mut SslRef, session: SslSession| {
            inner.on_new(ssl, &session);
        });
    }

    /// The cache behind the store.
    pub fn cache(&self) -> &Arc<SessionCache> {
        &self.inner.cache
    }

    /// A snapshot of the adapter's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            new_sessions: read(&c.new_sessions),
            unnamed: read(&c.unnamed),
            unencodable: read(&c.unencodable),
            offered: read(&c.offered),
            undecodable: read(&c.undecodable),
        }
    }

    /// The session to offer to `server_name`, if the cache has a valid one. A TLS 1.3 ticket is
    /// taken out of the cache (offered once); a TLS 1.2 session stays.
    pub fn session_for(&self, server_name: &str) -> Option<DecodedSession> {
        let id = client_session_key(server_name);
        let key = SessionKey::new(&id, b"");
        let cache = &self.inner.cache;
        let single_use = cache
            .peek(&id)
            .is_some_and(|s| s.version() == ProtocolVersion::TLS1_3);
        let found = if single_use {
            cache.take(Role::Client, key)?
        } else {
            cache.lookup(Role::Client, key)?
        };
        match DecodedSession::from_der(found.payload()) {
            Ok(session) => Some(session),
            Err(_) => {
                bump(&self.inner.counters.undecodable);
                None
            }
        }
    }

    /// Prepares a client connection to `server_name`: records the name (so that the sessions
    /// the connection brings are cached under it, with or without SNI) and offers the cached
    /// session, if any. Returns whether a session was offered.
    pub fn prepare(&self, ssl: &mut SslRef, server_name: &str) -> bool {
        if let Some(index) = name_index() {
            ssl.set_ex_data(index, ServerNameTag(server_name.to_owned()));
        }
        let Some(session) = self.session_for(server_name) else {
            return false;
        };
        let offered = decoded::set_session(ssl, session).is_ok();
        if offered {
            bump(&self.inner.counters.offered);
        }
        offered
    }

    /// Connects to `server_name` over `stream` with a configuration from
    /// [`SslConnector::configure`](openssl::ssl::SslConnector::configure), offering the cached
    /// session, and counts the handshake (`connect`, then `connect_good` if it completes).
    pub fn connect<S: Read + Write>(
        &self,
        mut config: ConnectConfiguration,
        server_name: &str,
        stream: S,
    ) -> Result<SslStream<S>, HandshakeError<S>> {
        let cache = &self.inner.cache;
        cache.handshake_started(Role::Client);
        self.prepare(&mut config, server_name);
        let tls = config.connect(server_name, stream)?;
        cache.handshake_completed(Role::Client);
        Ok(tls)
    }
}

impl Inner {
    fn on_new(&self, ssl: &SslRef, session: &SslSession) {
        bump(&self.counters.new_sessions);
        let tagged = name_index().and_then(|index| ssl.ex_data(index));
        let name = match tagged {
            Some(tag) => Some(tag.0.as_str()),
            None => ssl.servername(NameType::HOST_NAME),
        };
        let Some(name) = name else {
            bump(&self.counters.unnamed);
            return;
        };
        let Ok(der) = session.to_der() else {
            bump(&self.counters.unencodable);
            return;
        };
        let id = client_session_key(name);
        let built = self
            .cache
            .session(&id, der)
            .version(version_of(session.protocol_version()))
            .build();
        match built {
            Ok(s) => {
                self.cache.new_session(Role::Client, s);
            }
            Err(_) => bump(&self.counters.unencodable),
        }
    }
}
