//! OpenSSL servers sharing sessions through the Redis tier, against a real `redis-server`:
//! a session made on one instance resumes on another, a TLS 1.3 ticket resumes once in the
//! whole fleet, and a value that does not decode is a miss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{connect, serve, Close, Conn, Pki};
use openssl::ssl::{Ssl, SslContext};
use reprise::{ProtocolVersion, SecretBytes, Session, SessionCache, SharedSession, Tier};
use reprise_openssl::ServerCache;
use reprise_redis::{KeyRing, RedisConfig, RedisTier, Wiring};
use reprise_testkit::{wait_until, RedisServer, Version};

const CTX: &[u8] = b"fleet";

fn keys() -> KeyRing {
    KeyRing::parse(&format!("k1:{}", "3c".repeat(32))).unwrap()
}

/// A tier on its own runtime, with a generous read budget (tests must not depend on the
/// machine's speed), connected.
fn tier(url: &str) -> RedisTier {
    let mut config = RedisConfig::new(url.parse().unwrap());
    config.read_timeout = Duration::from_secs(2);
    let tier = RedisTier::start_detached(config, keys()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || tier
        .stats()
        .connected
        == 1));
    tier
}

/// One instance of a fleet: an OpenSSL server whose Reprise cache has the Redis tier, wired
/// for a TLS stack that looks sessions up synchronously.
struct Instance {
    ctx: SslContext,
    sessions: ServerCache,
    tier: RedisTier,
}

impl Instance {
    fn new(pki: &Pki, v: Version, url: &str) -> Self {
        let cache = Arc::new(SessionCache::new());
        let tier = tier(url).with_wiring(Wiring::Blocking);
        cache.attach(Arc::new(tier.clone()));
        let mut b = pki.server_builder(v);
        let sessions = ServerCache::install(&mut b, cache, CTX).unwrap();
        Self {
            ctx: b.build(),
            sessions,
            tier,
        }
    }

    fn connect(&self, client: &SslContext, offer: Option<&[u8]>) -> Conn {
        let conn = connect(client, offer, Close::Clean, |sock| {
            serve(self.sessions.accept(Ssl::new(&self.ctx).unwrap(), sock))
        });
        assert!(conn.ok);
        conn
    }

    fn wait_written(&self, n: u64) {
        assert!(
            wait_until(Duration::from_secs(10), || self.tier.stats().stores_written
                >= n),
            "{:?}",
            self.tier.stats()
        );
    }
}

/// Two instances sharing one Redis, and a client of the same PKI.
struct Fleet {
    redis: RedisServer,
    _pki: Pki,
    a: Instance,
    b: Instance,
    client: SslContext,
}

impl Fleet {
    fn new(v: Version) -> Self {
        let redis = RedisServer::start();
        let pki = Pki::new();
        let (a, b) = (
            Instance::new(&pki, v, &redis.url()),
            Instance::new(&pki, v, &redis.url()),
        );
        let client = pki.client_builder(v).build();
        Self {
            redis,
            _pki: pki,
            a,
            b,
            client,
        }
    }
}

#[test]
fn a_tls12_session_made_on_one_instance_resumes_on_another() {
    let fleet = Fleet::new(Version::Tls12);
    let (a, b, client) = (&fleet.a, &fleet.b, &fleet.client);
    let first = a.connect(client, None);
    a.wait_written(1);
    let second = b.connect(client, first.session.as_deref());
    assert!(second.resumed);
    assert_eq!(b.sessions.stats().supplied, 1);
    assert_eq!(b.sessions.cache().stats().cb_hits, 1);
    // A TLS 1.2 session resumes again, on either instance.
    assert!(a.connect(client, first.session.as_deref()).resumed);
    assert!(b.connect(client, first.session.as_deref()).resumed);
}

#[test]
fn a_tls13_ticket_resumes_once_in_the_whole_fleet() {
    let fleet = Fleet::new(Version::Tls13);
    let (a, b, client) = (&fleet.a, &fleet.b, &fleet.client);
    let first = a.connect(client, None);
    a.wait_written(2);
    let ticket = first.session.unwrap();
    assert!(b.connect(client, Some(&ticket)).resumed);
    // Taken from Redis (the take script): neither B again nor A, which still has a local copy, resumes it.
    assert!(!b.connect(client, Some(&ticket)).resumed);
    assert!(!a.connect(client, Some(&ticket)).resumed);
}

/// A value that opens (it was sealed with the fleet's key) but is not an OpenSSL session, for
/// one written by a different TLS stack: a miss and a full handshake, never a crash.
#[test]
fn a_value_from_redis_that_does_not_decode_is_a_miss() {
    let fleet = Fleet::new(Version::Tls12);
    let (redis, a, b, client) = (&fleet.redis, &fleet.a, &fleet.b, &fleet.client);
    let first = a.connect(client, None);
    a.wait_written(1);
    let id = a.sessions.cache().sessions()[0].id().as_bytes().to_vec();
    let writer = tier(&redis.url());
    let garbage = Session::builder(&id, SecretBytes::from(b"not a DER session".to_vec()))
        .sid_ctx(CTX)
        .version(ProtocolVersion::TLS1_2)
        .build()
        .unwrap();
    writer.store(&SharedSession::from(garbage));
    assert!(wait_until(Duration::from_secs(10), || writer
        .stats()
        .stores_written
        >= 1));
    let second = b.connect(client, first.session.as_deref());
    assert!(!second.resumed);
    assert_eq!(b.sessions.stats().undecodable, 1);
    assert_eq!(b.tier.stats().read_hits, 1);
    // The server keeps serving: its new session resumes.
    assert!(b.connect(client, second.session.as_deref()).resumed);
}
