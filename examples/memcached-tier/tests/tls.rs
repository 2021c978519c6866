//! Real rustls handshakes through reprise-rustls's `Acceptor`: a client's first connection, to
//! one instance, is a full handshake; its second, to another instance sharing only memcached,
//! resumes, under TLS 1.2 and TLS 1.3 (whose ticket the second instance takes from memcached).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reprise::SessionCache;
use reprise_memcached_example::{MemcachedConfig, MemcachedTier};
use reprise_rustls::{
    derive_sid_ctx, AcceptPolicy, Acceptor, ClientAuth, Prefetch, ServerContext, ServerStore,
};
use reprise_seal::KeyRing;
use reprise_testkit::{wait_until, Pki, Version, VERSIONS};

use common::{Memcached, WAIT};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One server instance: its own cache and memcached tier, an acceptor, and an accept loop that
/// answers `hi` and reports each connection's prefetch.
async fn instance(
    pki: &Pki,
    memcached: SocketAddr,
    version: Version,
) -> (
    SocketAddr,
    Arc<MemcachedTier>,
    tokio::sync::mpsc::UnboundedReceiver<Prefetch>,
) {
    let mut config = MemcachedConfig::new(memcached);
    config.read_timeout = Duration::from_secs(2);
    let keys = KeyRing::parse(&format!("k1:{}", "5a".repeat(32))).unwrap();
    let tier = Arc::new(MemcachedTier::start(config, keys).unwrap());
    let cache = Arc::new(SessionCache::new());
    cache.attach(tier.clone());

    let sid_ctx = derive_sid_ctx(&pki.server_chain(), ClientAuth::None, b"");
    let store = ServerStore::new(cache, sid_ctx, ClientAuth::None).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version.rustls()])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain(), pki.server_key())
        .unwrap();
    server.session_storage = Arc::new(store.clone());
    server.send_tls13_tickets = version.per_handshake();
    let mut policy = AcceptPolicy::default();
    policy.prefetch_deadline = Duration::from_secs(3);
    let acceptor = Acceptor::new(ServerContext::new(Arc::new(server), store), policy);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let Ok(mut accepted) = acceptor.accept(tcp, peer).await else {
                continue;
            };
            let _ = tx.send(accepted.prefetch);
            let _ = accepted.stream.write_all(b"hi").await;
            let _ = accepted.stream.shutdown().await;
        }
    });
    (addr, tier, rx)
}

/// One connection: the handshake's kind, once the server's answer (and tickets) are read.
async fn connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> Option<HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"hi");
    tls.get_ref().1.handshake_kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_a_second_instance_through_memcached() {
    let mc = Memcached::start();
    let pki = Pki::new();
    for version in VERSIONS {
        let (a, tier_a, _) = instance(&pki, mc.addr(), version).await;
        let (b, _, mut b_prefetch) = instance(&pki, mc.addr(), version).await;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version.rustls()])
                .unwrap()
                .with_root_certificates(pki.roots())
                .with_no_client_auth(),
        );

        assert_eq!(connect(a, &client).await, Some(HandshakeKind::Full));
        let sessions = version.per_handshake() as u64;
        let written = tokio::task::spawn_blocking(move || {
            wait_until(WAIT, || tier_a.stats().writes == sessions)
        });
        assert!(
            written.await.unwrap(),
            "{version:?}: A's sessions reach memcached"
        );
        assert_eq!(
            connect(b, &client).await,
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
        let expected = match version {
            Version::Tls12 => Prefetch::Session,
            Version::Tls13 => Prefetch::Ticket,
        };
        assert_eq!(b_prefetch.recv().await, Some(expected), "{version:?}");
    }
}
