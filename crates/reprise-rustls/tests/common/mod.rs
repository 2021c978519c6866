//! Test harness: a test PKI, rustls configs, in-memory handshakes and counting callbacks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use reprise::{ManualClock, Session, SessionCache, SessionKey, SharedSession};
use reprise_rustls::{ClientAuth, ClientSession, ClientStore, ConnectionSessions, ServerStore};
use rustls::client::Resumption;
use rustls::crypto::ring as provider;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

/// The time the manual clocks start at.
pub const T0: u64 = 1_700_000_000;

pub use reprise_testkit::{Pki, Version, VERSIONS};

/// rustls configurations on the test PKI, with Reprise's stores.
pub trait Configs {
    /// A server config whose sessions go through `store`.
    fn server_config(
        &self,
        version: Version,
        store: ServerStore,
        client_auth: ClientAuth,
    ) -> Arc<ServerConfig>;

    /// A client config with rustls's own in-memory session cache, or `store` if given.
    fn client_config(
        &self,
        version: Version,
        store: Option<ClientStore>,
        with_cert: bool,
    ) -> Arc<ClientConfig>;
}

impl Configs for Pki {
    fn server_config(
        &self,
        version: Version,
        store: ServerStore,
        client_auth: ClientAuth,
    ) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[version.rustls()])
            .unwrap();
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    self.roots(),
                    Arc::new(rustls::crypto::ring::default_provider()),
                );
                let verifier = if client_auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().unwrap())
            }
        };
        let mut config = builder
            .with_single_cert(self.server_chain(), self.server_key())
            .unwrap();
        config.session_storage = Arc::new(store);
        config.send_tls13_tickets = 2;
        Arc::new(config)
    }

    fn client_config(
        &self,
        version: Version,
        store: Option<ClientStore>,
        with_cert: bool,
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[version.rustls()])
            .unwrap()
            .with_root_certificates(self.roots());
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(self.client_chain(), self.client_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        if let Some(store) = store {
            config.resumption = Resumption::store(Arc::new(store));
        }
        Arc::new(config)
    }
}

pub use reprise_testkit::transfer;

/// One client/server pair talking in memory, each side with its connection handle.
pub struct Pair {
    pub client: ClientConnection,
    pub server: ServerConnection,
    pub server_sessions: ConnectionSessions,
    pub client_sessions: Option<ConnectionSessions<ClientSession>>,
    /// Every record the client sent, in order: for replays.
    pub client_flights: Vec<Vec<u8>>,
}

impl Pair {
    pub fn new(
        client_config: &Arc<ClientConfig>,
        server_name: &str,
        server_config: &Arc<ServerConfig>,
        server_store: &ServerStore,
        client_store: Option<&ClientStore>,
    ) -> Self {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        Self {
            client: ClientConnection::new(client_config.clone(), name).unwrap(),
            server: ServerConnection::new(server_config.clone()).unwrap(),
            server_sessions: server_store.connection(),
            client_sessions: client_store.map(ClientStore::connection),
            client_flights: Vec::new(),
        }
    }

    fn process_client(&mut self) {
        match &self.client_sessions {
            Some(cs) => cs.process(&mut self.client).map(drop).unwrap(),
            None => self.client.process_new_packets().map(drop).unwrap(),
        }
    }

    /// Runs the handshake, and then the post-handshake messages (TLS 1.3 tickets), to quiet.
    pub fn handshake(&mut self) -> HandshakeKind {
        for _ in 0..32 {
            let to_server = transfer(&mut self.client, &mut self.server);
            if !to_server.is_empty() {
                self.server_sessions.process(&mut self.server).unwrap();
            }
            let to_client = transfer(&mut self.server, &mut self.client);
            if !to_client.is_empty() {
                self.process_client();
            }
            let quiet = to_server.is_empty() && to_client.is_empty();
            if !to_server.is_empty() {
                self.client_flights.push(to_server);
            }
            if quiet && !self.client.is_handshaking() && !self.server.is_handshaking() {
                return self.server.handshake_kind().unwrap();
            }
        }
        panic!("the handshake did not finish in 32 round trips");
    }

    /// Sends close_notify from the client and lets the server read it.
    pub fn close_cleanly(&mut self) {
        self.client.send_close_notify();
        if let Some(cs) = &self.client_sessions {
            cs.closed_cleanly();
        }
        transfer(&mut self.client, &mut self.server);
        self.server_sessions.process(&mut self.server).unwrap();
        assert!(self.server_sessions.is_handshake_complete());
    }
}

/// Replays a client's first flight (its ClientHello) to a fresh server connection, and returns
/// the handshake kind the server chose for it.
pub fn replay_client_hello(
    flights: &[Vec<u8>],
    server_config: &Arc<ServerConfig>,
    store: &ServerStore,
) -> Option<HandshakeKind> {
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    let sessions = store.connection();
    let mut rd = &flights[0][..];
    while !rd.is_empty() {
        server.read_tls(&mut rd).unwrap();
    }
    sessions.process(&mut server).unwrap();
    server.handshake_kind()
}

/// Counts callback invocations, and serves an external cache filled by the new callback.
#[derive(Default)]
pub struct Recorder {
    pub new: AtomicUsize,
    pub remove: AtomicUsize,
    pub get: AtomicUsize,
    /// What the new callback returns.
    pub keep: AtomicBool,
    /// Whether the remove callback deletes from the external map.
    pub remove_deletes: AtomicBool,
    pub external: Mutex<HashMap<Vec<u8>, SharedSession>>,
    /// Every session the new callback saw, in order.
    pub made: Mutex<Vec<SharedSession>>,
    /// Every session the remove callback saw, in order.
    pub removed: Mutex<Vec<SharedSession>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counts {
    pub new: usize,
    pub remove: usize,
    pub get: usize,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        let r = Arc::new(Self::default());
        r.keep.store(true, Ordering::SeqCst);
        r.remove_deletes.store(true, Ordering::SeqCst);
        r
    }

    pub fn counts(&self) -> Counts {
        Counts {
            new: self.new.load(Ordering::SeqCst),
            remove: self.remove.load(Ordering::SeqCst),
            get: self.get.load(Ordering::SeqCst),
        }
    }

    /// Installs counting new, remove and get callbacks on a cache. The get callback returns
    /// None unless `serve_external` is set, then whatever the new callback stored.
    pub fn install(self: &Arc<Self>, cache: &SessionCache, serve_external: bool) {
        let r = self.clone();
        cache.set_new_session_callback(Some(Arc::new(move |_, s| {
            r.new.fetch_add(1, Ordering::SeqCst);
            r.made.lock().push(s.clone());
            let keep = r.keep.load(Ordering::SeqCst);
            if keep {
                // An external cache holds its own copy, as if serialized and read back.
                let copy = Session::builder(s.id().as_bytes(), s.payload())
                    .sid_ctx(s.sid_ctx().as_bytes())
                    .version(s.version())
                    .time(s.time())
                    .timeout_secs(s.timeout_secs())
                    .build()
                    .unwrap();
                r.external
                    .lock()
                    .insert(s.id().as_bytes().to_vec(), SharedSession::from(copy));
            }
            keep
        })));
        let r = self.clone();
        cache.set_remove_session_callback(Some(Arc::new(move |_, s, _why| {
            r.remove.fetch_add(1, Ordering::SeqCst);
            r.removed.lock().push(s.clone());
            if r.remove_deletes.load(Ordering::SeqCst) {
                r.external.lock().remove(s.id().as_bytes());
            }
        })));
        let r = self.clone();
        cache.set_get_session_callback(Some(Arc::new(move |_, key: &SessionKey<'_>| {
            r.get.fetch_add(1, Ordering::SeqCst);
            if serve_external {
                r.external.lock().get(key.id).cloned()
            } else {
                None
            }
        })));
    }
}

/// A server cache on a manual clock, with a counting recorder.
pub fn server_cache(clock: &Arc<ManualClock>) -> Arc<SessionCache> {
    Arc::new(SessionCache::builder().clock(clock.clone()).build())
}

pub fn store(cache: &Arc<SessionCache>, ctx: &[u8]) -> ServerStore {
    ServerStore::new(
        cache.clone(),
        reprise::SidCtx::new(ctx).unwrap(),
        ClientAuth::None,
    )
    .unwrap()
}

/// Everything a server-side scenario needs: one cache, one store, one server config.
pub struct Server {
    pub pki: Arc<Pki>,
    pub version: Version,
    pub clock: Arc<ManualClock>,
    pub cache: Arc<SessionCache>,
    pub store: ServerStore,
    pub config: Arc<ServerConfig>,
    pub rec: Arc<Recorder>,
}

impl Server {
    pub fn new(pki: &Arc<Pki>, version: Version, serve_external: bool) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let cache = server_cache(&clock);
        let rec = Recorder::new();
        rec.install(&cache, serve_external);
        let store = store(&cache, b"scenario");
        let config = pki.server_config(version, store.clone(), ClientAuth::None);
        Self {
            pki: pki.clone(),
            version,
            clock,
            cache,
            store,
            config,
            rec,
        }
    }

    /// A new client with its own rustls session cache.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.pki.client_config(self.version, None, false)
    }

    /// One connection from `client`, handshaken and closed cleanly; the server's handshake kind.
    pub fn connect(&self, client: &Arc<ClientConfig>) -> HandshakeKind {
        let mut pair = Pair::new(client, "localhost", &self.config, &self.store, None);
        let kind = pair.handshake();
        pair.close_cleanly();
        kind
    }

    /// Like [`connect`], keeping the pair (and so the client's flights) for inspection.
    pub fn connect_keep(&self, client: &Arc<ClientConfig>) -> Pair {
        let mut pair = Pair::new(client, "localhost", &self.config, &self.store, None);
        pair.handshake();
        pair.close_cleanly();
        pair
    }
}
