//! Unclean shutdown against the real `reprise serve` binary (issue 13, `semantics.md`,
//! "Unclean shutdown"): a client that closes with a FIN, a RST (SO_LINGER 0) or close_notify,
//! and a server idle timeout, all keep the session; a fatal alert after the handshake removes
//! it. And attack 3: a client that offers someone else's TLS 1.2 session id, completes a full
//! handshake and is killed, evicts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use reprise_testkit::{AnyCert, Version, VERSIONS};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// How the client ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// close_notify, then FIN.
    Notify,
    /// FIN alone.
    Fin,
    /// RST: SO_LINGER 0, then close.
    Rst,
}

/// A TCP stream that keeps the first bytes read and written, to look at the hellos.
struct Tap {
    tcp: TcpStream,
    read: Vec<u8>,
    written: Vec<u8>,
}

/// How much of each direction a [`Tap`] keeps.
const TAPPED: usize = 16 * 1024;

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        let keep = n.min(TAPPED.saturating_sub(self.read.len()));
        self.read.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tcp.write(buf)?;
        let keep = n.min(TAPPED.saturating_sub(self.written.len()));
        self.written.extend_from_slice(&buf[..keep]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

type Conn = StreamOwned<ClientConnection, Tap>;

/// A client for one protocol version that trusts any certificate, with its own session store.
/// It resumes TLS 1.2 by session id only: these tests are about the sessions the cache holds
/// (a TLS 1.2 ticket carries its session, and no server can take it back).
fn client(v: Version, store: Arc<dyn ClientSessionStore>) -> Arc<ClientConfig> {
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_protocol_versions(&[v.rustls()])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption =
        Resumption::store(store).tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    Arc::new(config)
}

fn fresh_client(v: Version) -> Arc<ClientConfig> {
    client(v, Arc::new(ClientSessionMemoryCache::new(8)))
}

/// Connects, asks for `/`, reads the whole answer; the connection and whether it resumed.
fn exchange(server: &Server, config: &Arc<ClientConfig>) -> (Conn, bool) {
    let conn =
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let tap = Tap {
        tcp,
        read: Vec::new(),
        written: Vec::new(),
    };
    let mut tls = StreamOwned::new(conn, tap);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        let text = String::from_utf8_lossy(&response);
        if text.contains("resumed: ") && text.ends_with('\n') {
            break;
        }
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed early");
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.contains("resumed: "), "{text}");
    let resumed = text.contains("resumed: yes");
    (tls, resumed)
}

fn close(mut tls: Conn, how: Ending) {
    match how {
        Ending::Notify => {
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            let _ = tls.sock.tcp.shutdown(Shutdown::Write);
        }
        Ending::Fin => {
            tls.sock.tcp.shutdown(Shutdown::Write).unwrap();
        }
        Ending::Rst => {
            socket2::SockRef::from(&tls.sock.tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    drop(tls);
}

/// Waits (bounded: 10 s) until a metric reaches `value`.
fn wait_metric(server: &Server, name: &str, value: u64) {
    for _ in 0..400 {
        if server.metric(name) >= value {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{name} never reached {value}: {}", server.metrics_text());
}

/// A record that does not decrypt: the client's TLS layer fails on it and sends a fatal
/// alert (bad_record_mac), encrypted, as a client that detected tampering would.
fn send_fatal_alert(tls: &mut Conn) {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend([0x5a; 0x40]);
    let mut rd = &record[..];
    while !rd.is_empty() {
        tls.conn.read_tls(&mut rd).unwrap();
    }
    assert!(tls.conn.process_new_packets().is_err());
    assert!(tls.conn.wants_write(), "an alert to send");
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }
}

#[test]
fn fin_rst_and_close_notify_keep_the_session() {
    let server = Server::start(&[]);
    let mut without = 0;
    for v in VERSIONS {
        for how in [Ending::Fin, Ending::Rst, Ending::Notify] {
            let config = fresh_client(v);
            let (first, resumed) = exchange(&server, &config);
            assert!(!resumed, "{v:?} {how:?}: the first is a full handshake");
            close(first, how);
            if how != Ending::Notify {
                // The server has seen the end of the connection before the next one starts.
                without += 1;
                wait_metric(
                    &server,
                    "reprise_closes_without_close_notify_total",
                    without,
                );
            }
            let (second, resumed) = exchange(&server, &config);
            assert!(resumed, "{v:?} {how:?}: the next connection resumes");
            close(second, Ending::Notify);
        }
    }
    assert_eq!(server.metric("reprise_unclean_shutdowns_total"), 0);
}

#[test]
fn a_server_timeout_keeps_the_session() {
    let server = Server::start(&["--idle-timeout", "1"]);
    for v in VERSIONS {
        let config = fresh_client(v);
        let (mut first, resumed) = exchange(&server, &config);
        assert!(!resumed);
        // Idle: the server closes with its close_notify, which the client reads as the end.
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(first);
        let (second, resumed) = exchange(&server, &config);
        assert!(resumed, "{v:?}: the next connection resumes");
        close(second, Ending::Notify);
    }
    assert_eq!(server.metric("reprise_unclean_shutdowns_total"), 0);
}

#[test]
fn a_fatal_alert_after_the_handshake_removes_the_session() {
    let server = Server::start(&[]);
    for (i, v) in VERSIONS.into_iter().enumerate() {
        let config = fresh_client(v);
        let (mut first, resumed) = exchange(&server, &config);
        assert!(!resumed);
        send_fatal_alert(&mut first);
        wait_metric(&server, "reprise_unclean_shutdowns_total", i as u64 + 1);
        drop(first);
        let (second, resumed) = exchange(&server, &config);
        assert!(!resumed, "{v:?}: the failed connection's session is gone");
        close(second, Ending::Notify);
    }
    assert_eq!(
        server.metric("reprise_closes_without_close_notify_total"),
        0
    );
}

/// A client session store that reads the victim's and keeps nothing of its own: the attacker
/// offers the victim's TLS 1.2 session id, which it saw in clear.
#[derive(Debug)]
struct Offers(Arc<ClientSessionMemoryCache>);

impl ClientSessionStore for Offers {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.tls12_session(name)
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// The session id in a TLS 1.2 ServerHello at the start of `bytes`.
fn server_hello_session_id(bytes: &[u8]) -> Vec<u8> {
    // Record header (5), handshake header (4), version (2), random (32), then the id.
    assert_eq!(bytes.get(5), Some(&2), "a ServerHello");
    let len = usize::from(bytes[5 + 4 + 2 + 32]);
    let start = 5 + 4 + 2 + 32 + 1;
    bytes[start..start + len].to_vec()
}

/// Attack 3 of issue 13: the attacker offers the victim's session id (no SNI, so rustls
/// refuses the resumption and makes a full handshake), and is killed: with a FIN, with a RST,
/// and with a fatal alert after its handshake. The victim still resumes.
#[test]
fn a_forged_session_id_does_not_evict_the_victim_tls12() {
    let server = Server::start(&[]);
    let store = Arc::new(ClientSessionMemoryCache::new(8));
    let victim = client(Version::Tls12, store.clone());
    let (first, resumed) = exchange(&server, &victim);
    assert!(!resumed);
    let victim_id = server_hello_session_id(&first.sock.read);
    assert_eq!(victim_id.len(), 32);
    close(first, Ending::Notify);

    // The same verifier (rustls offers a session only to the verifier that made it), the
    // victim's sessions to read, and no SNI.
    let mut attacker = (*victim).clone();
    attacker.resumption = Resumption::store(Arc::new(Offers(store)))
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    attacker.enable_sni = false;
    let attacker = Arc::new(attacker);
    for (round, how) in [Ending::Fin, Ending::Rst].into_iter().enumerate() {
        let (attack, resumed) = exchange(&server, &attacker);
        assert!(!resumed, "no SNI: a full handshake");
        assert!(
            attack.sock.written.windows(32).any(|w| w == victim_id),
            "the attacker offered the victim's id"
        );
        close(attack, how);
        wait_metric(
            &server,
            "reprise_closes_without_close_notify_total",
            round as u64 + 1,
        );
    }
    let (mut attack, _) = exchange(&server, &attacker);
    send_fatal_alert(&mut attack);
    wait_metric(&server, "reprise_unclean_shutdowns_total", 1);
    drop(attack);

    let (again, resumed) = exchange(&server, &victim);
    assert!(resumed, "the victim still resumes");
    assert_eq!(server_hello_session_id(&again.sock.read), victim_id);
    close(again, Ending::Notify);
}
