//! The client adapter: rustls's `ClientSessionStore` over a Reprise cache in CLIENT mode.
//!
//! The cache holds the sessions, so its size limit, timeout, callbacks and statistics apply. A
//! small index maps each server name to the ids of its sessions: at most one TLS 1.2 session
//! and [`MAX_TLS13_TICKETS_PER_SERVER`] TLS 1.3 tickets, newest offered first, each offered
//! once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use reprise::{CacheMode, ProtocolVersion, Role, SessionCache, SessionKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

use crate::connection::{ConnectionSessions, Tracked};

/// TLS 1.3 tickets kept per server, as rustls's own client cache does.
pub const MAX_TLS13_TICKETS_PER_SERVER: usize = 8;

/// Server names remembered by default; see [`ClientStore::with_max_servers`].
pub const DEFAULT_MAX_SERVERS: usize = 4096;

/// The length of the ids the client store gives its sessions.
const ID_LEN: usize = 16;

/// A client session as the cache holds it: rustls's value and the server it is for.
pub struct ClientSession {
    server_name: ServerName<'static>,
    value: ClientValue,
}

enum ClientValue {
    Tls12(Tls12ClientSessionValue),
    /// Taken out when the ticket is offered, so it is offered at most once.
    Tls13(Mutex<Option<Tls13ClientSessionValue>>),
}

impl ClientSession {
    /// The server the session is for.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The protocol version of the session.
    pub fn version(&self) -> ProtocolVersion {
        match self.value {
            ClientValue::Tls12(_) => ProtocolVersion::TLS1_2,
            ClientValue::Tls13(_) => ProtocolVersion::TLS1_3,
        }
    }
}

impl core::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The rustls values hold secrets: never printed.
        f.debug_struct("ClientSession")
            .field("server_name", &self.server_name)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct ServerEntry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<[u8; ID_LEN]>,
    /// Oldest first.
    tls13: VecDeque<[u8; ID_LEN]>,
}

struct Index {
    servers: HashMap<ServerName<'static>, ServerEntry>,
    /// Server names in the order they were first seen, to bound the index.
    order: VecDeque<ServerName<'static>>,
    max_servers: usize,
}

/// A rustls client session store backed by a [`SessionCache`] of [`ClientSession`]s.
///
/// Give the cache [`CacheMode::CLIENT`] (or `BOTH`): a client caches nothing otherwise.
///
/// ```
/// use std::sync::Arc;
/// use reprise::{CacheBuilder, CacheMode};
/// use reprise_rustls::{ClientSession, ClientStore};
///
/// let cache = Arc::new(CacheBuilder::<ClientSession>::new().mode(CacheMode::CLIENT).build());
/// let store = ClientStore::new(cache);
/// // client_config.resumption = rustls::client::Resumption::store(Arc::new(store));
/// # let _ = store;
/// ```
///
/// Clones share the same index and cache.
#[derive(Clone)]
pub struct ClientStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Arc<SessionCache<ClientSession>>,
    index: Mutex<Index>,
    id_prefix: [u8; 8],
    next_id: AtomicU64,
}

impl ClientStore {
    /// A store over `cache`, remembering up to [`DEFAULT_MAX_SERVERS`] server names.
    pub fn new(cache: Arc<SessionCache<ClientSession>>) -> Self {
        let mut id_prefix = [0u8; 8];
        // A random prefix keeps ids distinct between stores that share a cache. If the system
        // has no randomness, ids stay unique within this store, which is what matters.
        let _ = SystemRandom::new().fill(&mut id_prefix);
        Self {
            inner: Arc::new(Inner {
                cache,
                index: Mutex::new(Index {
                    servers: HashMap::new(),
                    order: VecDeque::new(),
                    max_servers: DEFAULT_MAX_SERVERS,
                }),
                id_prefix,
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Bounds the number of server names remembered (at least 1). When a new name would
    /// exceed it, the oldest name and its sessions are dropped.
    pub fn with_max_servers(self, max_servers: usize) -> Self {
        self.inner.index.lock().max_servers = max_servers.max(1);
        self
    }

    /// The cache behind the store.
    pub fn cache(&self) -> &Arc<SessionCache<ClientSession>> {
        &self.inner.cache
    }

    /// A handle for one new connection; see [`ConnectionSessions`]. Counts `connect`.
    ///
    /// Through it, a TLS 1.2 session that rustls saves again after resuming it is recognised
    /// as the same session, so the new-session callback fires once per full handshake.
    pub fn connection(&self) -> ConnectionSessions<ClientSession> {
        ConnectionSessions::new(Arc::clone(&self.inner.cache), Role::Client)
    }
}

impl Inner {
    fn fresh_id(&self) -> [u8; ID_LEN] {
        let mut id = [0u8; ID_LEN];
        id[..8].copy_from_slice(&self.id_prefix);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    fn key(id: &[u8; ID_LEN]) -> SessionKey<'_> {
        SessionKey::new(id, &[])
    }

    /// Edits the index entry for a server, creating it (and bounding the index) if needed.
    /// Ids it drops are removed from the cache after the lock is released.
    fn edit<R>(&self, name: &ServerName<'static>, f: impl FnOnce(&mut ServerEntry) -> R) -> R {
        let mut dropped = Vec::new();
        let r = {
            let mut index = self.index.lock();
            if !index.servers.contains_key(name) {
                while index.servers.len() >= index.max_servers {
                    let Some(oldest) = index.order.pop_front() else {
                        break;
                    };
                    if let Some(entry) = index.servers.remove(&oldest) {
                        dropped.extend(entry.tls12);
                        dropped.extend(entry.tls13);
                    }
                }
                index.order.push_back(name.clone());
            }
            f(index.servers.entry(name.clone()).or_default())
        };
        for id in dropped {
            self.cache.remove_key(Self::key(&id));
        }
        r
    }

    fn read<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut ServerEntry) -> R) -> Option<R> {
        // The index is keyed by owned names; a borrowed one is copied to look it up.
        let name = name.to_owned();
        self.index.lock().servers.get_mut(&name).map(f)
    }

    /// Hands a new session to the cache; its id if the cache stored it.
    fn store(
        &self,
        name: &ServerName<'static>,
        version: ProtocolVersion,
        value: ClientValue,
    ) -> Option<[u8; ID_LEN]> {
        let id = self.fresh_id();
        let session = self
            .cache
            .session(
                &id,
                ClientSession {
                    server_name: name.clone(),
                    value,
                },
            )
            .version(version)
            .build()
            .ok()?;
        let new = self.cache.new_session(Role::Client, session);
        if !new.stored_internally {
            return None;
        }
        Tracked::with_current(&self.cache, |conn| conn.record(&new.session));
        Some(id)
    }

    fn commit_tls12(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let Some(id) = self.store(&name, ProtocolVersion::TLS1_2, ClientValue::Tls12(value)) else {
            return;
        };
        if let Some(old) = self.edit(&name, |entry| entry.tls12.replace(id)) {
            self.cache.remove_key(Self::key(&old));
        }
    }
}

impl ClientSessionStore for ClientStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner
            .edit(&server_name, |entry| entry.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner
            .read(server_name, |entry| entry.kx_hint)
            .flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if !self.inner.cache.mode().contains(CacheMode::CLIENT) {
            return;
        }
        // rustls saves a TLS 1.2 session again after resuming it. Inside a tracked connection
        // the store waits for the handshake's kind: a resumed handshake made no new session.
        let inner = Arc::clone(&self.inner);
        let mut pending = Some((server_name, value));
        let deferred = Tracked::with_current(&self.inner.cache, |conn| {
            if let Some((name, value)) = pending.take() {
                conn.defer(Box::new(move || inner.commit_tls12(name, value)));
            }
        });
        if deferred.is_none() {
            if let Some((name, value)) = pending {
                self.inner.commit_tls12(name, value);
            }
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let id = self
            .inner
            .read(server_name, |entry| entry.tls12)
            .flatten()?;
        match self.inner.cache.lookup(Role::Client, Inner::key(&id)) {
            Some(session) => {
                Tracked::with_current(&self.inner.cache, |conn| conn.candidate(&session));
                match &session.payload().value {
                    ClientValue::Tls12(value) => Some(value.clone()),
                    ClientValue::Tls13(_) => None,
                }
            }
            None => {
                self.inner.read(server_name, |entry| {
                    if entry.tls12 == Some(id) {
                        entry.tls12 = None;
                    }
                });
                None
            }
        }
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(id) = self
            .inner
            .read(server_name, |entry| entry.tls12.take())
            .flatten()
        {
            self.inner.cache.remove_key(Inner::key(&id));
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let value = ClientValue::Tls13(Mutex::new(Some(value)));
        let Some(id) = self
            .inner
            .store(&server_name, ProtocolVersion::TLS1_3, value)
        else {
            return;
        };
        let overflow = self.inner.edit(&server_name, |entry| {
            entry.tls13.push_back(id);
            if entry.tls13.len() > MAX_TLS13_TICKETS_PER_SERVER {
                entry.tls13.pop_front()
            } else {
                None
            }
        });
        if let Some(old) = overflow {
            self.inner.cache.remove_key(Inner::key(&old));
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        for _ in 0..MAX_TLS13_TICKETS_PER_SERVER {
            let id = self
                .inner
                .read(server_name, |entry| entry.tls13.pop_back())
                .flatten()?;
            let Some(session) = self.inner.cache.take(Role::Client, Inner::key(&id)) else {
                continue;
            };
            if let ClientValue::Tls13(slot) = &session.payload().value {
                if let Some(value) = slot.lock().take() {
                    return Some(value);
                }
            }
        }
        None
    }
}

impl core::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientStore")
            .field("cache", &self.inner.cache)
            .field("servers", &self.inner.index.lock().servers.len())
            .finish_non_exhaustive()
    }
}
