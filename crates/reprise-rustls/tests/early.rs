//! Early data through the `Acceptor`, on loopback with a real rustls client: the server reads
//! the early data from the stream and answers it before the client's Finished (or, holding it,
//! after); a replay of the same first flight is refused; a context without early data refuses
//! it, and the handshake completes every time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use reprise::SessionCache;
use reprise_rustls::{
    derive_sid_ctx, AcceptPolicy, Acceptor, ClientAuth, EarlyData, EarlyRejection, ServerContext,
    ServerStore,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EARLY: &[u8] = b"early request\n";

struct Setup {
    early: ServerContext,
    plain: ServerContext,
    client: Arc<rustls::ClientConfig>,
}

fn setup() -> Setup {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = vec![cert.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let cache = Arc::new(SessionCache::new());
    let store = ServerStore::new(
        cache,
        derive_sid_ctx(&chain, ClientAuth::None, b""),
        ClientAuth::None,
    )
    .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.session_storage = Arc::new(store.clone());
    let mut with_early = config.clone();
    with_early.max_early_data_size = 1024;
    with_early.send_half_rtt_data = true;
    let plain = ServerContext::new(Arc::new(config), store);
    let early = plain.clone().with_early_data(Arc::new(with_early));
    assert!(early.takes_early_data() && !plain.takes_early_data());

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_early_data = true;
    Setup {
        early,
        plain,
        client: Arc::new(client),
    }
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Served {
    early_data: EarlyData,
    /// Whether the handshake was complete when the acceptor returned.
    complete_at_accept: bool,
    /// The first line read from the stream.
    line: Vec<u8>,
    early_read: u64,
}

/// Accepts one connection, reads one line, answers it, closes.
async fn serve_one(
    listener: &tokio::net::TcpListener,
    acceptor: &Acceptor<ServerContext>,
) -> Served {
    let (tcp, peer) = listener.accept().await.unwrap();
    let accepted = acceptor.accept(tcp, peer).await.unwrap();
    let complete_at_accept = !accepted.stream.get_ref().get_ref().1.is_handshaking();
    let early_data = accepted.early_data;
    let mut stream = accepted.stream;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        line.push(byte[0]);
    }
    let early_read = stream.get_ref().early_data_read();
    stream.write_all(b"answer: ").await.unwrap();
    stream.write_all(&line).await.unwrap();
    stream.shutdown().await.unwrap();
    Served {
        early_data,
        complete_at_accept,
        line,
        early_read,
    }
}

/// A blocking client connection: `EARLY` as early data if the session allows, again after the
/// handshake if it was not accepted; returns whether it was accepted, the answer, and the
/// bytes it wrote first (its first flight).
fn client(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> (bool, String, Vec<u8>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let sent = conn.early_data().map_or(0, |mut w| w.write(EARLY).unwrap());
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(&flight).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    let accepted = sent > 0 && conn.is_early_data_accepted();
    if !accepted {
        conn.writer().write_all(EARLY).unwrap();
    }
    let mut answer = String::new();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let _ = tls.read_to_string(&mut answer);
    (accepted, answer, flight)
}

async fn round(
    listener: &tokio::net::TcpListener,
    acceptor: &Acceptor<ServerContext>,
    config: &Arc<rustls::ClientConfig>,
) -> (Served, bool, String, Vec<u8>) {
    let addr = listener.local_addr().unwrap();
    let config = config.clone();
    let client = tokio::task::spawn_blocking(move || client(addr, config));
    let served = serve_one(listener, acceptor).await;
    let (accepted, answer, flight) = client.await.unwrap();
    (served, accepted, answer, flight)
}

#[tokio::test]
async fn early_data_is_read_from_the_stream_and_answered_before_the_finished() {
    let s = setup();
    let acceptor = Acceptor::new(s.early.clone(), AcceptPolicy::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();

    let (full, accepted, answer, _) = round(&listener, &acceptor, &s.client).await;
    assert_eq!(full.early_data, EarlyData::NotOffered);
    assert!(!accepted && full.complete_at_accept);
    assert_eq!(answer, "answer: early request\n");

    let (resumed, accepted, answer, flight) = round(&listener, &acceptor, &s.client).await;
    assert!(accepted);
    assert_eq!(resumed.early_data, EarlyData::Accepted);
    // Returned before the client's Finished: the answer went out as 0.5-RTT data.
    assert!(!resumed.complete_at_accept);
    assert_eq!(resumed.line, EARLY);
    assert_eq!(resumed.early_read, EARLY.len() as u64);
    assert_eq!(answer, "answer: early request\n");

    // The same first flight again: the ticket was taken, no early data, no resumption (the
    // raw client never finishes: the handshake times out).
    let addr = listener.local_addr().unwrap();
    let replay = tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&flight).await.unwrap();
        let mut sink = vec![0u8; 4096];
        let limit = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, tcp.read(&mut sink)).await;
    });
    let (tcp, peer) = listener.accept().await.unwrap();
    let mut policy = AcceptPolicy::default();
    policy.handshake_timeout = Some(std::time::Duration::from_millis(300));
    let replay_acceptor = Acceptor::new(s.early.clone(), policy);
    assert!(replay_acceptor.accept(tcp, peer).await.is_err());
    replay.await.unwrap();
    let counters = replay_acceptor.early_data_counters();
    assert_eq!(counters.accepted(), 0);
    assert_eq!(counters.rejected(EarlyRejection::NotConfirmed), 1);
    assert_eq!(acceptor.early_data_counters().accepted(), 1);
}

#[tokio::test]
async fn held_early_data_is_read_after_the_handshake() {
    let s = setup();
    let mut policy = AcceptPolicy::default();
    policy.hold_early_data = true;
    let acceptor = Acceptor::new(s.early.clone(), policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    round(&listener, &acceptor, &s.client).await;
    let (resumed, accepted, answer, _) = round(&listener, &acceptor, &s.client).await;
    assert!(accepted);
    assert_eq!(resumed.early_data, EarlyData::Accepted);
    assert!(resumed.complete_at_accept);
    assert_eq!(resumed.line, EARLY);
    assert_eq!(answer, "answer: early request\n");
}

#[tokio::test]
async fn a_context_without_early_data_refuses_it_and_the_handshake_completes() {
    let s = setup();
    let early = Acceptor::new(s.early.clone(), AcceptPolicy::default());
    let plain = Acceptor::new(s.plain.clone(), AcceptPolicy::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A ticket that allows early data, from the context that takes it...
    round(&listener, &early, &s.client).await;
    // ...offered where early data is off: refused, resumed, the request sent again.
    let (served, accepted, answer, _) = round(&listener, &plain, &s.client).await;
    assert!(!accepted);
    assert_eq!(
        served.early_data,
        EarlyData::Rejected(EarlyRejection::Disabled)
    );
    assert_eq!(served.early_read, 0);
    assert_eq!(answer, "answer: early request\n");
}
