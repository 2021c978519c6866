//! The `Acceptor` on real loopback connections with real rustls clients (tokio-rustls): the
//! chooser sees what the ClientHello offers and picks the config, the prefetch brings a
//! TLS 1.2 session from a tier and hands a TLS 1.3 ticket to its connection (which resumes
//! once), an unreadable hello gets the default config, and a prefetch past its deadline
//! leaves a full handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Configs, Pki, Version, VERSIONS};
use parking_lot::Mutex;
use reprise::{
    Fetched, Removal, Request, SessionCache, SessionKey, SharedSession, Tier, TierFuture,
};
use reprise_rustls::client_hello::Parsed;
use reprise_rustls::{
    AcceptError, AcceptPolicy, Acceptor, ChoosesConfig, ClientHelloInfo, Prefetch, ServerContext,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// A shared store standing in for a network tier (a fleet's Redis): it answers only through
/// its async prefetch, never synchronously, and keeps copies, not the cache's own objects.
#[derive(Default)]
struct SharedTier {
    map: Arc<Mutex<HashMap<Vec<u8>, SharedSession>>>,
    prefetches: AtomicUsize,
    /// A prefetch that never answers.
    hang: bool,
}

impl SharedTier {
    /// Another instance's view of the same store.
    fn sharing(&self, hang: bool) -> Self {
        Self {
            map: self.map.clone(),
            prefetches: AtomicUsize::new(0),
            hang,
        }
    }

    fn holds(&self, id: &[u8]) -> bool {
        self.map.lock().contains_key(id)
    }
}

impl Tier for SharedTier {
    fn name(&self) -> &str {
        "shared"
    }

    fn store(&self, session: &SharedSession) {
        self.map.lock().insert(
            session.id().as_bytes().to_vec(),
            SharedSession::duplicate(session),
        );
    }

    fn fetch(&self, _key: SessionKey<'_>) -> Fetched {
        Fetched::Unavailable
    }

    fn take(&self, _key: SessionKey<'_>) -> Fetched {
        Fetched::Unavailable
    }

    fn remove(&self, session: &SharedSession, why: Removal) {
        if matches!(why, Removal::Explicit | Removal::Taken) {
            self.map.lock().remove(session.id().as_bytes());
        }
    }

    fn prefetch<'a>(&'a self, request: Request<'a>) -> Option<TierFuture<'a>> {
        self.prefetches.fetch_add(1, Ordering::SeqCst);
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            if self.hang {
                std::future::pending::<()>().await;
            }
            let mut map = self.map.lock();
            let found = if request.take {
                map.remove(request.key.id)
            } else {
                map.get(request.key.id).map(SharedSession::duplicate)
            };
            found.map_or(Fetched::Miss, Fetched::Hit)
        }))
    }
}

/// What the server saw of one accepted connection.
#[derive(Debug)]
struct Seen {
    kind: Option<HandshakeKind>,
    prefetch: Prefetch,
    hello: Option<ClientHelloInfo>,
    /// The ids of the sessions the connection created (or resumed).
    sessions: Vec<Vec<u8>>,
}

/// A server on a free loopback port: each connection is accepted, greeted and closed, and what
/// the server saw goes to the channel. Serves at most 16 connections.
async fn serve<C: ChoosesConfig + 'static>(
    acceptor: Acceptor<C>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<Seen, AcceptError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = Arc::new(acceptor);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let seen = match acceptor.accept(tcp, peer).await {
                    Ok(mut accepted) => {
                        let kind = accepted.stream.get_ref().get_ref().1.handshake_kind();
                        let _ = accepted.stream.write_all(b"hi").await;
                        let _ = accepted.stream.shutdown().await;
                        let sessions = accepted.stream.sessions().sessions();
                        Ok(Seen {
                            kind,
                            prefetch: accepted.prefetch,
                            hello: accepted.hello,
                            sessions: sessions
                                .iter()
                                .map(|s| s.id().as_bytes().to_vec())
                                .collect(),
                        })
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx)
}

/// One client connection to `name`: the handshake, then the greeting to its end (the TLS 1.3
/// tickets come with it). Returns whether the client resumed.
async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let connector = TlsConnector::from(config.clone());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut greeting = Vec::new();
    tls.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"hi");
    tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// What the server saw of the next connection.
async fn next(rx: &mut mpsc::UnboundedReceiver<Result<Seen, AcceptError>>) -> Seen {
    let seen = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
    seen.unwrap().unwrap().unwrap()
}

fn context(pki: &Pki, v: Version, cache: &Arc<SessionCache>, ctx: &[u8]) -> ServerContext {
    let store = common::store(cache, ctx);
    let config = pki.server_config(v, store.clone(), reprise_rustls::ClientAuth::None);
    ServerContext::new(config, store).with_versions(&[v.rustls()])
}

/// A cache with a shared tier under its memory.
fn tiered(tier: Arc<SharedTier>) -> Arc<SessionCache> {
    let cache = Arc::new(SessionCache::new());
    cache.attach(tier);
    cache
}

#[tokio::test]
async fn the_chooser_sees_the_hello_and_picks_the_config() {
    let pki = Pki::new();
    for v in VERSIONS {
        let web = Arc::new(SessionCache::new());
        let api = Arc::new(SessionCache::new());
        let (web_cx, api_cx) = (
            context(&pki, v, &web, b"web"),
            context(&pki, v, &api, b"api"),
        );
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let seen = hellos.clone();
        let chooser = move |hello: Option<&ClientHelloInfo>| {
            seen.lock().push(hello.cloned());
            match hello.and_then(|h| h.server_name.as_deref()) {
                Some("other.test") => api_cx.clone(),
                _ => web_cx.clone(),
            }
        };
        let (addr, mut rx) = serve(Acceptor::new(chooser, AcceptPolicy::default())).await;
        let mut client = (*pki.client_config(v, None, false)).clone();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = Arc::new(client);

        assert!(!connect(addr, &client, "other.test").await, "{v:?}");
        let first = next(&mut rx).await;
        assert!(connect(addr, &client, "other.test").await, "{v:?}");
        let second = next(&mut rx).await;
        assert_eq!(second.kind, Some(HandshakeKind::Resumed), "{v:?}");

        // The config for other.test served both; the other cache saw nothing.
        assert_eq!(api.stats().accept_good, 2, "{v:?}");
        assert_eq!(web.stats().accept, 0, "{v:?}");
        let hellos = hellos.lock().clone();
        assert_eq!(hellos.len(), 2);
        for hello in &hellos {
            let hello = hello.as_ref().unwrap();
            assert_eq!(hello.server_name.as_deref(), Some("other.test"));
            assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            assert!(!hello.early_data);
            match v {
                Version::Tls12 => {
                    assert!(!hello.versions.contains(&0x0304), "{:?}", hello.versions);
                    assert!(hello.offers_tls12() && !hello.supports_tls13);
                }
                Version::Tls13 => {
                    assert_eq!(hello.versions, vec![0x0304]);
                    assert!(hello.supports_tls13 && !hello.offers_tls12());
                }
            }
        }
        // The second hello offers what the first connection made.
        let resumed = second.hello.as_ref().unwrap();
        assert_eq!(hellos[1].as_ref(), Some(resumed));
        match v {
            Version::Tls12 => assert_eq!(first.sessions, vec![resumed.session_id.clone()]),
            Version::Tls13 => {
                assert_eq!(resumed.psk_identities.len(), 1);
                assert!(first.sessions.contains(&resumed.psk_identities[0]));
            }
        }
        // No tier: nothing to prefetch.
        assert_eq!(second.prefetch, Prefetch::NotAsked);
    }
}

/// Two instances, each with its cache over one shared tier, in one session-id context.
struct Fleet {
    tier_a: Arc<SharedTier>,
    tier_b: Arc<SharedTier>,
    a: Arc<SessionCache>,
    b: Arc<SessionCache>,
    addr_a: SocketAddr,
    rx_a: mpsc::UnboundedReceiver<Result<Seen, AcceptError>>,
    addr_b: SocketAddr,
    rx_b: mpsc::UnboundedReceiver<Result<Seen, AcceptError>>,
}

impl Fleet {
    async fn start(pki: &Pki, v: Version) -> Fleet {
        let tier_a = Arc::new(SharedTier::default());
        let tier_b = Arc::new(tier_a.sharing(false));
        let (a, b) = (tiered(tier_a.clone()), tiered(tier_b.clone()));
        let instance =
            |cache| Acceptor::new(context(pki, v, cache, b"fleet"), AcceptPolicy::default());
        let (addr_a, rx_a) = serve(instance(&a)).await;
        let (addr_b, rx_b) = serve(instance(&b)).await;
        Fleet {
            tier_a,
            tier_b,
            a,
            b,
            addr_a,
            rx_a,
            addr_b,
            rx_b,
        }
    }
}

#[tokio::test]
async fn a_tls12_session_resumes_on_another_instance_through_the_prefetch() {
    let pki = Pki::new();
    let v = Version::Tls12;
    let Fleet {
        tier_a,
        tier_b,
        b,
        addr_a,
        mut rx_a,
        addr_b,
        mut rx_b,
        ..
    } = Fleet::start(&pki, v).await;
    let client = pki.client_config(v, None, false);

    assert!(!connect(addr_a, &client, "localhost").await);
    let made = next(&mut rx_a).await.sessions;
    assert_eq!(made.len(), 1);
    assert!(tier_a.holds(&made[0]));
    assert!(b.peek(&made[0]).is_none());

    // B has never seen the session: only its prefetch from the tier can resume it (the
    // tier's synchronous read answers nothing).
    assert!(connect(addr_b, &client, "localhost").await);
    let seen = next(&mut rx_b).await;
    assert_eq!(seen.kind, Some(HandshakeKind::Resumed));
    assert_eq!(seen.prefetch, Prefetch::Session);
    assert_eq!(tier_b.prefetches.load(Ordering::SeqCst), 1);
    assert!(
        b.peek(&made[0]).is_some(),
        "the session is now in B's memory"
    );

    // Memory answers the next time: no read of the tier.
    assert!(connect(addr_b, &client, "localhost").await);
    assert_eq!(next(&mut rx_b).await.prefetch, Prefetch::Nothing);
    assert_eq!(tier_b.prefetches.load(Ordering::SeqCst), 1);
}

/// The ClientHello a client sends for `name`, caught by a listener that answers nothing: the
/// client spends the ticket it offers, and no server has seen it.
async fn caught_hello(config: &Arc<ClientConfig>, name: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let catcher = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        for _ in 0..64 {
            if let Parsed::Complete(_) = reprise_rustls::client_hello::parse(&bytes) {
                return bytes;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its hello");
            bytes.extend_from_slice(&chunk[..n]);
        }
        panic!("no whole ClientHello in 64 reads");
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let _refused = TlsConnector::from(config.clone()).connect(name, tcp).await;
    catcher.await.unwrap()
}

/// Whether the server's first flight, in answer to `hello`, accepts a PSK: its ServerHello
/// carries the pre_shared_key extension (41).
async fn replay_accepts_psk(addr: SocketAddr, hello: &[u8]) -> bool {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut header = [0u8; 5];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 22, "a handshake record");
    let mut record = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    tcp.read_exact(&mut record).await.unwrap();
    assert_eq!(record[0], 2, "a ServerHello");
    // type, length (4), version (2), random (32), session id, suite (2), compression (1).
    let sid_len = usize::from(record[4 + 2 + 32]);
    let mut at = 4 + 2 + 32 + 1 + sid_len + 2 + 1;
    let ext_end = at + 2 + usize::from(u16::from_be_bytes([record[at], record[at + 1]]));
    at += 2;
    let mut psk = false;
    while at + 4 <= ext_end {
        let ext = u16::from_be_bytes([record[at], record[at + 1]]);
        let len = usize::from(u16::from_be_bytes([record[at + 2], record[at + 3]]));
        psk |= ext == 41;
        at += 4 + len;
    }
    psk
}

#[tokio::test]
async fn a_tls13_ticket_taken_by_the_prefetch_resumes_once() {
    let pki = Pki::new();
    let v = Version::Tls13;
    let Fleet {
        tier_a,
        a,
        addr_a,
        mut rx_a,
        addr_b,
        mut rx_b,
        ..
    } = Fleet::start(&pki, v).await;
    let client = pki.client_config(v, None, false);

    assert!(!connect(addr_a, &client, "localhost").await);
    let tickets = next(&mut rx_a).await.sessions;
    assert_eq!(tickets.len(), 2);
    assert!(tickets
        .iter()
        .all(|t| tier_a.holds(t) && a.peek(t).is_some()));

    // A hello that offers one ticket, caught on its way: sent later, as many times as an
    // attacker likes, it resumes on the first server to see it, once.
    let hello = caught_hello(&client, "localhost").await;
    let other = match reprise_rustls::client_hello::parse(&hello) {
        Parsed::Complete(info) => info.psk_identities[0].clone(),
        parsed => panic!("{parsed:?}"),
    };
    assert!(tier_a.holds(&other) && a.peek(&other).is_some());

    // On B: the ticket is taken from the tier for this connection, and resumes.
    assert!(connect(addr_b, &client, "localhost").await);
    let seen = next(&mut rx_b).await;
    assert_eq!(seen.prefetch, Prefetch::Ticket);
    assert_eq!(seen.kind, Some(HandshakeKind::Resumed));
    let used = seen.hello.unwrap().psk_identities[0].clone();
    assert!(!tier_a.holds(&used), "taken from the shared tier");

    assert_ne!(other, used);
    assert!(replay_accepts_psk(addr_b, &hello).await, "the first use");
    assert!(!tier_a.holds(&other));
    assert!(!replay_accepts_psk(addr_b, &hello).await);
    // A still holds a copy in memory: without the tier's take, it does not resume.
    assert!(!replay_accepts_psk(addr_a, &hello).await);
    assert!(
        a.peek(&other).is_none(),
        "A's copy went with the failed take"
    );
}

#[tokio::test]
async fn an_unreadable_hello_gets_the_default_config_and_no_ticket() {
    let pki = Pki::new();
    let v = Version::Tls13;
    let tier = Arc::new(SharedTier::default());
    let cache = tiered(tier.clone());
    let cx = context(&pki, v, &cache, b"default");
    let unread = Arc::new(AtomicUsize::new(0));
    let chooser = {
        let (cx, unread) = (cx.clone(), unread.clone());
        move |hello: Option<&ClientHelloInfo>| {
            if hello.is_none() {
                unread.fetch_add(1, Ordering::SeqCst);
            }
            cx.clone()
        }
    };
    let (addr, mut rx) = serve(Acceptor::new(chooser.clone(), AcceptPolicy::default())).await;
    // A policy that reads too little of any hello for the parser to decide.
    let mut short = AcceptPolicy::default();
    short.max_first_flight = 64;
    let (short_addr, mut short_rx) = serve(Acceptor::new(chooser, short)).await;
    let client = pki.client_config(v, None, false);

    assert!(!connect(addr, &client, "localhost").await);
    let tickets = next(&mut rx).await.sessions;
    assert!(tickets.iter().all(|t| tier.holds(t)));
    assert_eq!(unread.load(Ordering::SeqCst), 0);

    // rustls reads the whole hello and completes the handshake with the default config; the
    // ticket it offers is not taken for it, so it does not resume.
    assert!(!connect(short_addr, &client, "localhost").await);
    let seen = next(&mut short_rx).await;
    assert_eq!(unread.load(Ordering::SeqCst), 1);
    assert!(seen.hello.is_none());
    assert_eq!(seen.prefetch, Prefetch::NotAsked);
    assert_eq!(seen.kind, Some(HandshakeKind::Full));
    assert_eq!(tier.prefetches.load(Ordering::SeqCst), 0);

    // Not TLS at all: the default config's rustls refuses it, and it is the client's fault.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let Err(e) = refused else {
        panic!("accepted plain text")
    };
    assert!(matches!(e, AcceptError::Tls(_)), "{e:?}");
    assert!(e.is_client_fault());
    assert_eq!(unread.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_prefetch_past_its_deadline_leaves_a_full_handshake() {
    let pki = Pki::new();
    for v in VERSIONS {
        let tier_a = Arc::new(SharedTier::default());
        let slow = Arc::new(tier_a.sharing(true));
        let (a, b) = (tiered(tier_a.clone()), tiered(slow.clone()));
        let (addr_a, mut rx_a) = serve(Acceptor::new(
            context(&pki, v, &a, b"fleet"),
            AcceptPolicy::default(),
        ))
        .await;
        let mut policy = AcceptPolicy::default();
        policy.prefetch_deadline = Duration::from_millis(20);
        let (addr_b, mut rx_b) = serve(Acceptor::new(context(&pki, v, &b, b"fleet"), policy)).await;
        let client = pki.client_config(v, None, false);

        assert!(!connect(addr_a, &client, "localhost").await);
        let made = next(&mut rx_a).await.sessions;
        assert!(made.iter().all(|s| tier_a.holds(s)), "{v:?}");

        assert!(!connect(addr_b, &client, "localhost").await, "{v:?}");
        let seen = next(&mut rx_b).await;
        assert_eq!(seen.prefetch, Prefetch::TimedOut, "{v:?}");
        assert_eq!(seen.kind, Some(HandshakeKind::Full), "{v:?}");
        assert_eq!(slow.prefetches.load(Ordering::SeqCst), 1, "{v:?}");
        assert_eq!(b.stats().accept_good, 1, "{v:?}");
    }
}

#[tokio::test]
async fn a_silent_client_times_out_on_the_sooner_deadline() {
    let pki = Pki::new();
    let cache = Arc::new(SessionCache::new());
    let cx = context(&pki, Version::Tls13, &cache, b"slow");
    for (hello, handshake, hello_first) in [
        (Some(50), Some(10_000), true),
        (Some(10_000), Some(50), false),
        (None, Some(50), false),
    ] {
        let mut policy = AcceptPolicy::default();
        policy.hello_timeout = hello.map(Duration::from_millis);
        policy.handshake_timeout = handshake.map(Duration::from_millis);
        let (addr, mut rx) = serve(Acceptor::new(cx.clone(), policy)).await;
        // Half a record header, then nothing.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[22, 3]).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        let e = match seen.unwrap().unwrap() {
            Err(e) => e,
            Ok(seen) => panic!("accepted: {seen:?}"),
        };
        match hello_first {
            true => assert!(matches!(e, AcceptError::HelloTimeout), "{e:?}"),
            false => assert!(matches!(e, AcceptError::HandshakeTimeout), "{e:?}"),
        }
        assert!(e.is_client_fault());
    }
    assert_eq!(cache.stats().accept, 0, "no handshake began");
}
