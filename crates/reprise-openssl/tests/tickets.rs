//! Stateless tickets with keys from a `TicketKeySource`, on real OpenSSL handshakes: across
//! instances, per context, after a key is dropped, through a rotation, past the lifetime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{connect, serve, Close, Conn, Pki};
use openssl::ssl::{Ssl, SslContext, SslSessionCacheMode, SslVerifyMode};
use parking_lot::Mutex;
use reprise::SessionCache;
use reprise_openssl::{tag_context, ServerCache, StatelessTickets, TicketStats};
use reprise_seal::tickets::{KeyId, TicketKey, TicketKeySource, TicketKeys};
use reprise_testkit::{Version, VERSIONS};

/// Keys set by the test: `encrypt` encrypts, it and `others` decrypt.
#[derive(Debug)]
struct Keys {
    keys: Mutex<Arc<TicketKeys>>,
    lifetime: Duration,
}

fn key(version: u64) -> Arc<TicketKey> {
    let secret = [version as u8 ^ 0x5a; 32];
    Arc::new(TicketKey::new(KeyId::from_version(version), secret))
}

impl Keys {
    fn new(encrypt: Option<u64>, others: &[u64], lifetime_secs: u64) -> Arc<Self> {
        let keys = Arc::new(Self {
            keys: Mutex::new(Arc::new(TicketKeys::new(None, Vec::new(), 0))),
            lifetime: Duration::from_secs(lifetime_secs),
        });
        keys.set(encrypt, others);
        keys
    }

    fn set(&self, encrypt: Option<u64>, others: &[u64]) {
        let mut keys = self.keys.lock();
        let generation = keys.generation() + 1;
        let others = others.iter().map(|&v| key(v)).collect();
        *keys = Arc::new(TicketKeys::new(encrypt.map(key), others, generation));
    }
}

impl TicketKeySource for Keys {
    fn name(&self) -> &str {
        "test"
    }
    fn keys(&self) -> Arc<TicketKeys> {
        self.keys.lock().clone()
    }
    fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// A source that panics: the callback must not let it unwind into OpenSSL.
#[derive(Debug)]
struct Panics;

impl TicketKeySource for Panics {
    fn name(&self) -> &str {
        "panics"
    }
    fn keys(&self) -> Arc<TicketKeys> {
        panic!("a key source failed");
    }
    fn lifetime(&self) -> Duration {
        Duration::from_secs(300)
    }
}

/// One server instance: its own context (OpenSSL's internal cache off, so that only a ticket
/// can resume), stateless tickets from a shared source.
struct Instance {
    ctx: SslContext,
    tickets: StatelessTickets,
}

impl Instance {
    fn new(pki: &Pki, v: Version, source: Arc<dyn TicketKeySource>, sid_ctx: &[u8]) -> Self {
        Self::with(pki, v, source, sid_ctx, |_| {})
    }

    fn with(
        pki: &Pki,
        v: Version,
        source: Arc<dyn TicketKeySource>,
        sid_ctx: &[u8],
        configure: impl FnOnce(&mut openssl::ssl::SslContextBuilder),
    ) -> Self {
        let mut b = pki.server_builder(v);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        configure(&mut b);
        let tickets = StatelessTickets::install(&mut b, source, sid_ctx).unwrap();
        Self {
            ctx: b.build(),
            tickets,
        }
    }

    /// One handshake offering `offer`; it must complete.
    fn connect(&self, client: &SslContext, offer: Option<&[u8]>) -> Conn {
        self.connect_timed(client, offer).0
    }

    /// One handshake offering `offer`, and the timeout of the server's session: what OpenSSL
    /// seals into the ticket it issues.
    fn connect_timed(&self, client: &SslContext, offer: Option<&[u8]>) -> (Conn, Option<i64>) {
        let timeout = Mutex::new(None);
        let conn = connect(client, offer, Close::Clean, |sock| {
            let accepted = Ssl::new(&self.ctx).unwrap().accept(sock);
            if let Ok(tls) = &accepted {
                *timeout.lock() = tls.ssl().session().map(|s| s.timeout());
            }
            serve(accepted)
        });
        assert!(conn.ok);
        (conn, timeout.into_inner())
    }

    fn stats(&self) -> TicketStats {
        self.tickets.stats()
    }
}

#[test]
fn a_ticket_resumes_on_another_instance_sharing_the_source() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[], 300);
        let a = Instance::new(&pki, v, source.clone(), b"svc");
        let b = Instance::new(&pki, v, source.clone(), b"svc");
        let client = pki.client_builder(v).build();
        let (first, timeout) = a.connect_timed(&client, None);
        assert!(!first.resumed);
        assert_eq!(a.stats().issued, v.per_handshake() as u64, "{v:?}");
        // OpenSSL's session timeout is the source's lifetime: it travels inside the ticket.
        assert_eq!(timeout, Some(300), "{v:?}");
        let ticket = first.session.unwrap();
        let second = b.connect(&client, Some(&ticket));
        assert!(second.resumed, "{v:?}");
        let stats = b.stats();
        assert_eq!((stats.opened, stats.renewed), (1, 0), "{v:?}");
        // A stateless ticket resumes again (TLS 1.3 included: the documented exception).
        assert!(a.connect(&client, Some(&ticket)).resumed, "{v:?}");
    }
}

#[test]
fn a_ticket_never_resumes_under_another_context() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[], 300);
        let web = Instance::new(&pki, v, source.clone(), b"web");
        let api = Instance::new(&pki, v, source.clone(), b"api");
        // The same name, but verifying client certificates: another policy, another context.
        let mtls = Instance::with(&pki, v, source.clone(), b"web", |b| {
            b.set_verify(SslVerifyMode::PEER);
            b.cert_store_mut().add_cert(pki.ca.clone()).unwrap();
        });
        let client = pki.client_builder(v).build();
        let ticket = web.connect(&client, None).session.unwrap();
        for other in [&api, &mtls] {
            assert!(!other.connect(&client, Some(&ticket)).resumed, "{v:?}");
            let stats = other.stats();
            assert_eq!(
                (stats.rejected_wrong_context, stats.opened),
                (1, 0),
                "{v:?}"
            );
        }
        assert!(web.connect(&client, Some(&ticket)).resumed, "{v:?}");
        // The mTLS context's own tickets resume there, not on the plain one.
        let own = mtls.connect(&client, None).session.unwrap();
        assert!(mtls.connect(&client, Some(&own)).resumed, "{v:?}");
        assert!(!web.connect(&client, Some(&own)).resumed, "{v:?}");
        assert_eq!(web.stats().rejected_wrong_context, 1, "{v:?}");
    }
}

/// A connection switched to another context (as a server-name callback does) seals and opens
/// its tickets with the keys installed on that context, for its session-id context; a context
/// without tickets installed issues and accepts none.
#[test]
fn a_switched_connection_uses_its_new_contexts_keys() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[], 300);
        let home = Instance::new(&pki, v, source.clone(), b"home");
        let other = Instance::new(&pki, v, source.clone(), b"other");
        let bare = {
            let mut b = pki.server_builder(v);
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
            tag_context(&mut b, b"bare").unwrap();
            b.build()
        };
        let client = pki.client_builder(v).build();
        let switched = |to: &SslContext, offer: Option<&[u8]>| {
            let conn = connect(&client, offer, Close::Clean, |sock| {
                let mut ssl = Ssl::new(&home.ctx).unwrap();
                ssl.set_ssl_context(to).unwrap();
                serve(ssl.accept(sock))
            });
            assert!(conn.ok);
            conn
        };
        let ticket = switched(&other.ctx, None).session.unwrap();
        assert_eq!(home.stats().issued, 0, "{v:?}");
        assert_eq!(other.stats().issued, v.per_handshake() as u64, "{v:?}");
        assert!(switched(&other.ctx, Some(&ticket)).resumed, "{v:?}");
        assert!(other.connect(&client, Some(&ticket)).resumed, "{v:?}");
        assert!(!home.connect(&client, Some(&ticket)).resumed, "{v:?}");
        assert_eq!(home.stats().rejected_wrong_context, 1, "{v:?}");
        let before = (home.stats(), other.stats());
        let untracked = switched(&bare, None);
        if let Some(session) = untracked.session {
            assert!(!switched(&bare, Some(&session)).resumed, "{v:?}");
        }
        assert_eq!((home.stats(), other.stats()), before, "{v:?}");
    }
}

#[test]
fn a_ticket_whose_key_was_dropped_does_not_resume() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[], 300);
        let a = Instance::new(&pki, v, source.clone(), b"svc");
        let client = pki.client_builder(v).build();
        let ticket = a.connect(&client, None).session.unwrap();
        source.set(Some(2), &[]);
        let full = a.connect(&client, Some(&ticket));
        assert!(!full.resumed, "{v:?}");
        assert_eq!(a.stats().rejected_unknown_key, 1, "{v:?}");
        // The full handshake issued a ticket under the new key, which resumes.
        assert!(a.connect(&client, full.session.as_deref()).resumed, "{v:?}");
    }
}

#[test]
fn a_rotation_resumes_old_tickets_and_renews_them() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[2], 300);
        let a = Instance::new(&pki, v, source.clone(), b"svc");
        let b = Instance::new(&pki, v, source.clone(), b"svc");
        let client = pki.client_builder(v).build();
        let old = a.connect(&client, None).session.unwrap();
        // Key 2 encrypts now; key 1 only decrypts.
        source.set(Some(2), &[1]);
        let resumed = b.connect(&client, Some(&old));
        assert!(resumed.resumed, "{v:?}");
        let stats = b.stats();
        assert_eq!((stats.opened, stats.renewed), (1, 1), "{v:?}");
        assert!(stats.issued >= 1, "{v:?}");
        // Key 1 is erased: the old ticket is refused, the renewed one resumes.
        source.set(Some(2), &[]);
        assert!(!a.connect(&client, Some(&old)).resumed, "{v:?}");
        let renewed = resumed.session.unwrap();
        assert_ne!(renewed, old);
        assert!(a.connect(&client, Some(&renewed)).resumed, "{v:?}");
    }
}

#[test]
fn without_an_encrypting_key_no_ticket_is_issued() {
    let pki = Pki::new();
    for v in VERSIONS {
        let source = Keys::new(None, &[1], 300);
        let a = Instance::new(&pki, v, source, b"svc");
        let client = pki.client_builder(v).build();
        let conn = a.connect(&client, None);
        let stats = a.stats();
        assert_eq!(stats.issued, 0, "{v:?}");
        assert!(stats.not_issued >= 1, "{v:?}");
        if let Some(session) = conn.session {
            assert!(!a.connect(&client, Some(&session)).resumed, "{v:?}");
        }
    }
}

#[test]
fn a_panicking_source_costs_tickets_not_handshakes() {
    let pki = Pki::new();
    for v in VERSIONS {
        let a = Instance::new(&pki, v, Arc::new(Panics), b"svc");
        let client = pki.client_builder(v).build();
        let conn = a.connect(&client, None);
        assert!(!conn.resumed);
        assert_eq!(a.stats(), TicketStats::default(), "{v:?}");
    }
}

/// A ticket older than the lifetime never resumes: OpenSSL's session timeout, set to the
/// lifetime, is sealed inside the ticket. One second of lifetime, so the test waits two.
#[test]
fn a_ticket_older_than_its_lifetime_does_not_resume() {
    let pki = Pki::new();
    let mut tickets = Vec::new();
    for v in VERSIONS {
        let source = Keys::new(Some(1), &[], 1);
        let a = Instance::new(&pki, v, source, b"svc");
        let client = pki.client_builder(v).build();
        let (conn, timeout) = a.connect_timed(&client, None);
        assert_eq!(timeout, Some(1), "{v:?}");
        let ticket = conn.session.unwrap();
        tickets.push((v, a, client, ticket));
    }
    std::thread::sleep(Duration::from_millis(2100));
    for (v, a, client, ticket) in tickets {
        assert!(!a.connect(&client, Some(&ticket)).resumed, "{v:?}");
        if v == Version::Tls12 {
            // The client did offer it and its key opened it: OpenSSL refused the session's age.
            assert_eq!(a.stats().opened, 1, "{v:?}");
        } else {
            // OpenSSL's TLS 1.3 client may itself stop offering a ticket past its lifetime
            // hint (then the server never sees it); offered, the server refuses it as above.
            assert!(a.stats().opened <= 1, "{v:?}");
        }
    }
}

/// With a `ServerCache` on the same context (installed first: it sets `NO_TICKET`, which the
/// tickets clear), TLS 1.2 resumes on an instance whose cache is empty: through the ticket.
#[test]
fn tickets_beside_a_server_cache() {
    let pki = Pki::new();
    let source = Keys::new(Some(1), &[], 300);
    let v = Version::Tls12;
    let instance = || {
        let cache = Arc::new(SessionCache::new());
        let mut b = pki.server_builder(v);
        let sessions = ServerCache::install(&mut b, cache, b"svc").unwrap();
        let tickets = StatelessTickets::install(&mut b, source.clone(), b"svc").unwrap();
        (b.build(), sessions, tickets)
    };
    let (a, a_sessions, _) = instance();
    let (b, b_sessions, b_tickets) = instance();
    let client = pki.client_builder(v).build();
    let handshake = |ctx: &SslContext, sessions: &ServerCache, offer: Option<&[u8]>| {
        let conn = connect(&client, offer, Close::Clean, |sock| {
            serve(sessions.accept(Ssl::new(ctx).unwrap(), sock))
        });
        assert!(conn.ok);
        conn
    };
    let ticket = handshake(&a, &a_sessions, None).session.unwrap();
    assert!(handshake(&b, &b_sessions, Some(&ticket)).resumed);
    assert_eq!(b_tickets.stats().opened, 1);
    assert_eq!(b_sessions.stats().supplied, 0);
}
