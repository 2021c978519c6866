//! The server adapter: rustls's `StoresServerSessions` over a Reprise cache, for one
//! session-id context.

use std::sync::Arc;

use reprise::{ProtocolVersion, Role, SessionCache, SessionKey, SidCtx};
use rustls::server::StoresServerSessions;

use crate::connection::{ConnectionSessions, Tracked};
use crate::error::Error;
use crate::sid_ctx::ClientAuth;

/// A rustls server session store backed by a [`SessionCache`].
///
/// It stores TLS 1.2 sessions (by session id) and TLS 1.3 stateful tickets (by ticket id), and
/// resumes them through the cache, so the cache's mode, size limit, timeout, callbacks and
/// statistics all apply. TLS 1.3 tickets are taken: each resumes at most once (with a shared
/// tier, only when handed to the connection with [`ConnectionSessions::confirm_take`]). Every
/// session carries this store's session-id context, and only resumes through a store with the
/// same one, so one cache can serve several `ServerConfig`s without a session crossing between
/// them.
///
/// ```
/// use std::sync::Arc;
/// use reprise::{SessionCache, SidCtx};
/// use reprise_rustls::{ClientAuth, ServerStore};
///
/// let cache = Arc::new(SessionCache::new());
/// let store = ServerStore::new(cache, SidCtx::new(b"web").unwrap(), ClientAuth::None).unwrap();
/// // server_config.session_storage = Arc::new(store);
/// # let _ = store;
/// ```
#[derive(Debug, Clone)]
pub struct ServerStore {
    cache: Arc<SessionCache>,
    sid_ctx: SidCtx,
    /// False for a store that resumes ids but gives new sessions none ([`Self::for_tickets`]).
    new_ids: bool,
}

impl ServerStore {
    /// A store for the security context `sid_ctx`.
    ///
    /// A server that asks for client certificates must have a non-empty context (OpenSSL fails
    /// such handshakes; this refuses the configuration up front).
    pub fn new(
        cache: Arc<SessionCache>,
        sid_ctx: SidCtx,
        client_auth: ClientAuth,
    ) -> Result<Self, Error> {
        if client_auth != ClientAuth::None && sid_ctx.is_empty() {
            return Err(Error::EmptySidCtxWithClientAuth);
        }
        Ok(Self {
            cache,
            sid_ctx,
            new_ids: true,
        })
    }

    /// The same store, for a configuration that gives TLS 1.2 tickets to the clients that ask
    /// for one: it still resumes the sessions clients offer by id, but gives new sessions no id,
    /// so rustls stores nothing. A session that travels in a ticket then takes no place in the
    /// cache nor in its tiers (no write to a shared tier for it), as OpenSSL does when it
    /// issues a ticket. Choose such a configuration only for hellos that carry the
    /// `session_ticket` extension ([`ClientHelloInfo::session_ticket`](crate::ClientHelloInfo)):
    /// a client without it would get neither an id nor a ticket.
    #[must_use]
    pub fn for_tickets(&self) -> Self {
        Self {
            new_ids: false,
            ..self.clone()
        }
    }

    /// The cache behind the store.
    pub fn cache(&self) -> &Arc<SessionCache> {
        &self.cache
    }

    /// The session-id context of the sessions this store makes and accepts.
    pub fn sid_ctx(&self) -> &SidCtx {
        &self.sid_ctx
    }

    /// A handle for one new connection; see [`ConnectionSessions`]. Counts `accept`.
    pub fn connection(&self) -> ConnectionSessions {
        ConnectionSessions::new(Arc::clone(&self.cache), Role::Server)
    }

    fn key<'a>(&'a self, id: &'a [u8]) -> SessionKey<'a> {
        SessionKey::new(id, self.sid_ctx.as_bytes())
    }

    /// Notes a session the current connection created.
    fn record(&self, session: &reprise::SharedSession) {
        Tracked::with_current(&self.cache, |conn| conn.record(session));
    }

    /// Notes a session the current connection offers to resume: it becomes the connection's
    /// only if the handshake completes as a resumption.
    fn candidate(&self, session: &reprise::SharedSession) {
        Tracked::with_current(&self.cache, |conn| conn.candidate(session));
    }
}

impl StoresServerSessions for ServerStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let version = peek_version(&value);
        let built = self
            .cache
            .session(&key, value)
            .sid_ctx(self.sid_ctx.as_bytes())
            .version(version)
            .build();
        let Ok(session) = built else {
            // rustls makes 32-byte ids; anything else cannot be cached.
            return false;
        };
        let new = self.cache.new_session(Role::Server, session);
        if new.is_stored() {
            self.record(&new.session);
        }
        new.is_stored()
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let session = self.cache.lookup(Role::Server, self.key(key))?;
        self.candidate(&session);
        Some(session.payload().to_vec())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(key);
        // A ticket the shared tier took for this very connection comes first; without one, the
        // cache decides (with a shared tier, its take callback confirms nothing).
        let confirmed = Tracked::with_current(&self.cache, |conn| conn.take_confirmed(key));
        let session = match confirmed.flatten() {
            Some(ticket) => self.cache.take_confirmed(key, ticket)?,
            None => self.cache.take(Role::Server, key)?,
        };
        // Taken, but the connection's own only once the handshake resumes with it.
        self.candidate(&session);
        Some(session.payload().to_vec())
    }

    fn can_cache(&self) -> bool {
        let mode = self.cache.mode();
        self.new_ids
            && mode.contains(reprise::CacheMode::SERVER)
            && (!mode.contains(reprise::CacheMode::NO_INTERNAL_STORE)
                || self.cache.new_session_callback().is_some()
                || self.cache.has_tiers())
    }
}

/// Reads the protocol version from rustls's encoding of a server session value.
///
/// The encoding starts with an optional SNI (a presence byte, then a length-prefixed name) and
/// then the version. Anything unexpected gives [`ProtocolVersion::UNKNOWN`]; the version is
/// informative only, and rustls itself checks it on resumption.
pub(crate) fn peek_version(value: &[u8]) -> ProtocolVersion {
    let rest = match value.split_first() {
        Some((0, rest)) => rest,
        Some((1, rest)) => match rest.split_first() {
            Some((&len, rest)) => rest.get(usize::from(len)..).unwrap_or_default(),
            None => &[],
        },
        _ => &[],
    };
    match rest {
        [hi, lo, ..] => ProtocolVersion(u16::from_be_bytes([*hi, *lo])),
        _ => ProtocolVersion::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_version_reads_with_and_without_sni() {
        assert_eq!(peek_version(&[0, 3, 4, 9]), ProtocolVersion::TLS1_3);
        assert_eq!(
            peek_version(&[1, 3, b'a', b'b', b'c', 3, 3]),
            ProtocolVersion::TLS1_2
        );
        for bad in [&[][..], &[1], &[1, 200, 1], &[0, 3], &[7, 3, 3]] {
            assert_eq!(peek_version(bad), ProtocolVersion::UNKNOWN, "{bad:?}");
        }
    }
}
