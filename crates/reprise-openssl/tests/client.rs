//! The client adapter on real OpenSSL handshakes: sessions per server name, TLS 1.3 tickets
//! offered once, the cache's timeout and size limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{client_side, serve, Close, Pki, SslVersionOf};
use openssl::ssl::{Ssl, SslConnector, SslContext, SslMethod, SslVerifyMode};
use reprise::{CacheMode, ManualClock, SessionCache, SharedSession};
use reprise_openssl::{client_session_key, ClientCache, ServerCache};
use reprise_testkit::{Version, VERSIONS};

struct Rig {
    server_ctx: SslContext,
    server: ServerCache,
    connector: SslConnector,
    client: ClientCache,
    clock: Arc<ManualClock>,
    new: Arc<AtomicUsize>,
}

impl Rig {
    fn new(pki: &Pki, v: Version) -> Self {
        let mut b = pki.server_builder(v);
        let server =
            ServerCache::install(&mut b, Arc::new(SessionCache::new()), b"client-test").unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let cache = Arc::new(
            SessionCache::builder()
                .mode(CacheMode::CLIENT)
                .clock(clock.clone())
                .build(),
        );
        let new = Arc::new(AtomicUsize::new(0));
        let n = new.clone();
        cache.set_new_session_callback(Some(Arc::new(move |_, _| {
            n.fetch_add(1, Ordering::SeqCst);
            true
        })));
        let client = ClientCache::new(cache);
        let mut cb = SslConnector::builder(SslMethod::tls_client()).unwrap();
        cb.cert_store_mut().add_cert(pki.ca.clone()).unwrap();
        cb.set_verify(SslVerifyMode::PEER);
        cb.set_min_proto_version(Some(v.ssl())).unwrap();
        cb.set_max_proto_version(Some(v.ssl())).unwrap();
        client.install(&mut cb);
        Self {
            server_ctx: b.build(),
            server,
            connector: cb.build(),
            client,
            clock,
            new,
        }
    }

    /// One connection to `name`; whether it resumed.
    fn connect(&self, name: &str) -> bool {
        let (client_sock, server_sock) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                serve(
                    self.server
                        .accept(Ssl::new(&self.server_ctx).unwrap(), server_sock),
                )
            });
            let config = self.connector.configure().unwrap();
            let tls = self.client.connect(config, name, client_sock).unwrap();
            let conn = client_side(tls, Close::Clean);
            assert!(server.join().unwrap());
            conn.resumed
        })
    }
}

/// Sessions are cached per server name, the new callback fires once per full TLS 1.2
/// handshake and once per TLS 1.3 ticket, and a TLS 1.3 ticket is offered once.
#[test]
fn sessions_resume_per_server_name() {
    let pki = Pki::new();
    for v in VERSIONS {
        let rig = Rig::new(&pki, v);
        let cache = rig.client.cache();
        assert!(!rig.connect("localhost"));
        assert_eq!(rig.new.load(Ordering::SeqCst), v.per_handshake(), "{v:?}");
        // One entry per server name: the newest ticket replaces the older one.
        assert_eq!(cache.len(), 1);
        assert!(!rig.connect("other.test"));
        assert_eq!(cache.len(), 2);
        assert!(rig.connect("localhost"), "{v:?}");
        assert!(rig.connect("other.test"), "{v:?}");
        let stats = cache.stats();
        assert_eq!((stats.connect, stats.connect_good), (4, 4));
        assert_eq!(rig.client.stats().offered, 2);
        match v {
            // A resumed TLS 1.2 handshake makes no new session.
            Version::Tls12 => assert_eq!(rig.new.load(Ordering::SeqCst), 2),
            // Each resumption brings one new ticket from OpenSSL's server.
            Version::Tls13 => assert_eq!(rig.new.load(Ordering::SeqCst), 6),
        }
        assert!(rig.connect("localhost"), "{v:?}");
    }
}

#[test]
fn a_tls13_ticket_is_offered_once() {
    let pki = Pki::new();
    let rig = Rig::new(&pki, Version::Tls13);
    rig.connect("localhost");
    assert!(rig.client.session_for("localhost").is_some());
    assert!(rig.client.session_for("localhost").is_none());
    assert!(!rig.connect("localhost"));

    let rig = Rig::new(&pki, Version::Tls12);
    rig.connect("localhost");
    assert!(rig.client.session_for("localhost").is_some());
    assert!(rig.client.session_for("localhost").is_some());
}

/// The client cache's timeout and size limit apply.
#[test]
fn timeout_and_size_limit_apply() {
    let pki = Pki::new();
    for v in VERSIONS {
        let rig = Rig::new(&pki, v);
        let cache = rig.client.cache();
        rig.connect("localhost");
        rig.clock.advance(cache.timeout_secs() + 1);
        assert!(!rig.connect("localhost"), "{v:?}");
        assert!(cache.stats().timeouts >= 1);
        cache.set_size_limit(1);
        rig.connect("other.test");
        assert_eq!(cache.len(), 1);
        assert!(cache.peek(&client_session_key("other.test")).is_some());
        assert!(!rig.connect("localhost"), "{v:?}");
    }
}

/// A value in the client cache that is not a session is never offered.
#[test]
fn an_undecodable_value_is_not_offered() {
    let pki = Pki::new();
    let rig = Rig::new(&pki, Version::Tls12);
    let cache = rig.client.cache();
    let id = client_session_key("localhost");
    let s = cache
        .session(&id, reprise::SecretBytes::from(vec![1, 2, 3]))
        .build()
        .unwrap();
    assert!(cache.add(&SharedSession::from(s)));
    assert!(!rig.connect("localhost"));
    assert_eq!(rig.client.stats().undecodable, 1);
    assert!(rig.connect("localhost"));
}
