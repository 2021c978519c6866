//! `SessionStream` on real loopback connections (tokio-rustls on both sides): a fatal alert
//! after the handshake removes the connection's sessions; a FIN, a RST and a close_notify keep
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Configs, Pki, Version, VERSIONS};
use reprise::SessionCache;
use reprise_rustls::{ClientAuth, ServerStore, SessionStream};
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How the client ends its connection after the server's greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    CloseNotify,
    Fin,
    Rst,
    FatalAlert,
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    resumed: bool,
    /// The error of the server's read after the greeting (None: a clean end of stream).
    error: Option<io::ErrorKind>,
    failed: bool,
    closed_cleanly: bool,
}

struct Setup {
    v: Version,
    cache: Arc<SessionCache>,
    store: ServerStore,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    removed: Arc<AtomicUsize>,
}

impl Setup {
    fn new(pki: &Pki, v: Version) -> Self {
        let cache = Arc::new(SessionCache::new());
        let removed = Arc::new(AtomicUsize::new(0));
        let r = removed.clone();
        cache.set_remove_session_callback(Some(Arc::new(move |_, _, _| {
            r.fetch_add(1, Ordering::SeqCst);
        })));
        let store = common::store(&cache, b"stream");
        let server = pki.server_config(v, store.clone(), ClientAuth::None);
        let client = pki.client_config(v, None, false);
        Self {
            v,
            cache,
            store,
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(client),
            removed,
        }
    }

    /// One connection: the server greets, the client reads the greeting and ends as told.
    async fn connect(&self, end: End) -> Seen {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = self.store.clone();
        let acceptor = self.acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let sessions = store.connection();
            let tls = sessions.instrument(acceptor.accept(tcp)).await.unwrap();
            let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
            let mut stream = SessionStream::server(tls, sessions);
            stream.write_all(b"hi").await.unwrap();
            stream.flush().await.unwrap();
            let mut buf = [0u8; 16];
            let error = match stream.read(&mut buf).await {
                Ok(n) => {
                    assert_eq!(n, 0, "the client sends nothing");
                    None
                }
                Err(e) => Some(e.kind()),
            };
            Seen {
                resumed,
                error,
                failed: stream.sessions().has_failed(),
                closed_cleanly: stream.sessions().is_closed_cleanly(),
            }
        });

        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = self.connector.connect(name, tcp).await.unwrap();
        let mut hi = [0u8; 2];
        tls.read_exact(&mut hi).await.unwrap();
        assert_eq!(&hi, b"hi");
        match end {
            End::CloseNotify => tls.shutdown().await.unwrap(),
            End::Fin => tls.get_mut().0.shutdown().await.unwrap(),
            End::Rst => {
                socket2::SockRef::from(&tls.get_ref().0)
                    .set_linger(Some(std::time::Duration::ZERO))
                    .unwrap();
                drop(tls);
            }
            End::FatalAlert => {
                // A record that does not decrypt: the client's TLS layer fails and sends a
                // fatal alert (bad_record_mac), as a client that detected tampering would.
                let (tcp, conn) = tls.get_mut();
                let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
                record.extend([0x5a; 0x40]);
                let mut rd = &record[..];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                }
                assert!(conn.process_new_packets().is_err());
                let mut alert = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut alert).unwrap();
                }
                assert!(!alert.is_empty());
                tcp.write_all(&alert).await.unwrap();
                tcp.shutdown().await.unwrap();
            }
        }
        server.await.unwrap()
    }
}

async fn run(v: Version, end: End) {
    let pki = Pki::new();
    let setup = Setup::new(&pki, v);
    let first = setup.connect(end).await;
    assert!(!first.resumed);
    let removed = setup.removed.load(Ordering::SeqCst);
    match end {
        End::FatalAlert => {
            assert_eq!(first.error, Some(io::ErrorKind::InvalidData), "{v:?}");
            assert!(first.failed);
            assert_eq!(removed, setup.v.per_handshake(), "{v:?}");
            assert_eq!(setup.cache.len(), 0);
        }
        End::Fin | End::Rst => {
            assert!(first.error.is_some(), "{v:?} {end:?}: {first:?}");
            assert_ne!(
                first.error,
                Some(io::ErrorKind::InvalidData),
                "{v:?} {end:?}"
            );
            assert!(!first.failed && !first.closed_cleanly, "{v:?} {end:?}");
            assert_eq!(removed, 0, "{v:?} {end:?}");
        }
        End::CloseNotify => {
            assert_eq!(first.error, None);
            assert!(!first.failed && first.closed_cleanly);
            assert_eq!(removed, 0);
        }
    }
    let second = setup.connect(End::CloseNotify).await;
    assert_eq!(
        second.resumed,
        end != End::FatalAlert,
        "{v:?} {end:?}: resumes unless the first connection failed"
    );
}

#[tokio::test]
async fn a_fatal_alert_after_the_handshake_removes_the_sessions() {
    for v in VERSIONS {
        run(v, End::FatalAlert).await;
    }
}

#[tokio::test]
async fn a_fin_without_close_notify_keeps_the_sessions() {
    for v in VERSIONS {
        run(v, End::Fin).await;
    }
}

#[tokio::test]
async fn a_reset_keeps_the_sessions() {
    for v in VERSIONS {
        run(v, End::Rst).await;
    }
}

#[tokio::test]
async fn a_close_notify_keeps_the_sessions() {
    for v in VERSIONS {
        run(v, End::CloseNotify).await;
    }
}
