//! TLS 1.3 early data (0-RTT) against the real binary: accepted only on the single use of a
//! ticket that the authoritative tier confirmed, never on a replay, on the same instance or on
//! another of a two-instance Redis fleet; refused (the handshake completes) when Redis is down;
//! a POST in early data gets 425 Too Early, then succeeds after the handshake; and without
//! `--early-data`, nothing changes. Clients: `openssl s_client -sess_in … -early_data FILE`,
//! and a rustls client whose first flight (ClientHello and early data) is captured and replayed
//! byte for byte with a raw socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::{fails_to_start, fleet_flags, path_in, request, reuse_words, s_client, Server};
use reprise_testkit::{wait_until, PemFiles, Pki, RedisServer};

const GET_EARLY: &[u8] = b"GET /early HTTP/1.1\r\nHost: localhost\r\n\r\n";
const GET_AFTER: &[u8] = b"GET /after HTTP/1.0\r\nHost: localhost\r\n\r\n";
const POST: &[u8] = b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi";
/// The same POST, closing the connection after its answer.
const POST_CLOSE: &[u8] =
    b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";

/// A directory with the request files s_client sends as early data.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("get"), GET_EARLY).unwrap();
        std::fs::write(dir.path().join("post"), POST).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        path_in(self.dir.path(), name)
    }

    /// A TLS 1.3 session from a full handshake with `server`, saved as `name`.
    fn session(&self, server: &Server, name: &str) -> String {
        let path = self.path(name);
        assert_eq!(request(server, &["-tls1_3", "-sess_out", &path]), "New");
        path
    }
}

/// `s_client -sess_in SESSION -early_data FILE`, then `stdin` after the handshake.
fn with_early_data(server: &Server, session: &str, early: &str, stdin: &[u8]) -> String {
    let addr = server.connect_arg();
    s_client(
        &[
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-tls1_3",
            "-sess_in",
            session,
            "-early_data",
            early,
            "-ign_eof",
        ],
        stdin,
    )
}

fn accepted(out: &str) -> bool {
    out.contains("Early data was accepted")
}

fn rejected(out: &str) -> bool {
    out.contains("Early data was rejected")
}

fn early_metric(server: &Server, name: &str) -> u64 {
    server.metric(&format!("reprise_early_data_{name}_total"))
}

fn rejections(server: &Server, reason: &str) -> u64 {
    server.metric(&format!(
        "reprise_early_data_rejected_total{{reason=\"{reason}\"}}"
    ))
}

fn one_instance(extra: &[&str]) -> (PemFiles, Server) {
    let pki = Pki::new().write_pem();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = Server::start(&[&["--cert", &cert, "--key", &key][..], extra].concat());
    (pki, server)
}

/// On one instance: the early data of a ticket's first use is accepted and answered
/// (`early-data: yes`); the same session offered again gets its early data refused, and the
/// handshake completes (a full one: the ticket was used).
#[test]
fn early_data_is_accepted_once_on_one_instance() {
    let (_pki, server) = one_instance(&["--early-data", "16384"]);
    let files = Files::new();
    let session = files.session(&server, "s1");

    let first = with_early_data(&server, &session, &files.path("get"), GET_AFTER);
    assert!(accepted(&first), "{first}");
    assert_eq!(reuse_words(&first), ["Reused"], "{first}");
    assert!(first.contains("resumed: yes\nearly-data: yes"), "{first}");
    // The request after the handshake, on the same connection, did not come in early data.
    assert!(first.contains("early-data: no"), "{first}");

    let again = with_early_data(&server, &session, &files.path("get"), GET_AFTER);
    assert!(rejected(&again), "{again}");
    assert_eq!(reuse_words(&again), ["New"], "{again}");
    assert!(again.contains("HTTP/1.1 200 OK"), "{again}");
    assert!(!again.contains("early-data: yes"), "{again}");

    assert_eq!(early_metric(&server, "offered"), 2);
    assert_eq!(early_metric(&server, "accepted"), 1);
    assert_eq!(rejections(&server, "not_confirmed"), 1);
}

/// A POST in early data gets 425 Too Early; the same POST sent after the handshake succeeds.
/// A safe method configured away gets 425 too.
#[test]
fn an_unsafe_method_in_early_data_gets_425_then_succeeds_after_the_handshake() {
    let (_pki, server) = one_instance(&["--early-data", "4096"]);
    let files = Files::new();
    let session = files.session(&server, "s1");
    let out = with_early_data(&server, &session, &files.path("post"), POST_CLOSE);
    assert!(accepted(&out), "{out}");
    let too_early = out.find("HTTP/1.1 425 Too Early").expect(&out);
    let ok = out.find("HTTP/1.1 200 OK").expect(&out);
    assert!(too_early < ok, "{out}");
    assert!(out.contains("early-data: no"), "{out}");
    assert_eq!(early_metric(&server, "too_early"), 1);

    let (_pki, server) = one_instance(&["--early-data", "4096", "--early-data-methods", "HEAD"]);
    let session = files.session(&server, "s2");
    let out = with_early_data(&server, &session, &files.path("get"), GET_AFTER);
    assert!(accepted(&out), "{out}");
    assert!(out.contains("HTTP/1.1 425 Too Early"), "{out}");
}

/// Without `--early-data`: tickets allow no early data, s_client sends none, sessions resume
/// as before, the body and the metrics have no early-data lines.
#[test]
fn without_the_flag_nothing_changes() {
    let (_pki, server) = one_instance(&[]);
    let files = Files::new();
    let session = files.session(&server, "s1");
    let out = with_early_data(&server, &session, &files.path("get"), GET_AFTER);
    assert!(!accepted(&out), "{out}");
    assert_eq!(reuse_words(&out), ["Reused"], "{out}");
    assert!(out.contains("resumed: yes"), "{out}");
    assert!(!out.contains("early-data:"), "{out}");
    assert!(!server.metrics_text().contains("reprise_early_data"));
}

/// Bad early-data settings stop the start with one line and exit code 2.
#[test]
fn bad_early_data_settings_are_refused() {
    for args in [
        &["serve", "--early-data", "16385"][..],
        &["serve", "--early-data=-1"],
        &["serve", "--early-data", "lots"],
        &["serve", "--early-data", "1024", "--tickets", "stateless"],
        &["serve", "--early-data", "1024", "--tickets", "off"],
        &["serve", "--early-data", "1024", "--tls-versions", "1.2"],
        &["serve", "--early-data", "1024", "--upstream-early-data"],
        &[
            "serve",
            "--upstream",
            "127.0.0.1:9",
            "--upstream-early-data",
        ],
        &[
            "serve",
            "--early-data",
            "1024",
            "--early-data-methods",
            "get",
        ],
    ] {
        let line = fails_to_start(args);
        assert!(line.contains("early"), "{args:?}: {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = path_in(dir.path(), "reprise.toml");
    std::fs::write(&file, "early-data = 99999\n").unwrap();
    let line = fails_to_start(&["serve", "--config", &file]);
    assert!(line.contains("early-data"), "{line}");
    // The settings file takes them too.
    std::fs::write(
        &file,
        "early-data = 1024\nearly-data-methods = [\"GET\"]\nupstream = \"127.0.0.1:9\"\nupstream-early-data = true\n",
    )
    .unwrap();
    let out = common::reprise()
        .args(["check-config", "--config", &file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upstream that answers each connection's first request with the request line it read,
/// then closes.
fn upstream() -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for _ in 0..2 {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut chunk).unwrap();
                assert!(n > 0, "the request was lost");
                got.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap()
                .to_owned();
            let body = format!("upstream got: {line}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).unwrap();
            lines.push(line);
        }
        lines
    });
    (addr, served)
}

/// With `--upstream`, early data reaches the upstream, held until the handshake completes by
/// default and at once with `--upstream-early-data`: drained from rustls's early-data reader
/// into the stream, nothing lost.
#[test]
fn early_data_reaches_the_upstream_held_or_at_once() {
    for at_once in [false, true] {
        let (addr, served) = upstream();
        let addr = addr.to_string();
        let mut flags = vec!["--early-data", "16384", "--upstream", addr.as_str()];
        if at_once {
            flags.push("--upstream-early-data");
        }
        let (_pki, server) = one_instance(&flags);
        let files = Files::new();
        let session = files.path("s");
        let out = s_client(
            &[
                "-connect",
                &server.connect_arg(),
                "-servername",
                "localhost",
                "-tls1_3",
                "-sess_out",
                &session,
                "-ign_eof",
            ],
            GET_AFTER,
        );
        assert!(out.contains("upstream got: GET /after"), "{out}");
        let out = with_early_data(&server, &session, &files.path("get"), b"");
        assert!(accepted(&out), "{out}");
        assert!(out.contains("upstream got: GET /early"), "{out}");
        assert_eq!(
            served.join().unwrap(),
            ["GET /after HTTP/1.0", "GET /early HTTP/1.1"]
        );
    }
}

/// A client that sends more early data than the instance allows (its ticket came from an
/// instance that allows more) loses its connection: a fatal error in rustls, counted.
#[test]
fn early_data_beyond_the_limit_is_a_fatal_error_and_counted() {
    let (a, b): (&[&str], &[&str]) = (&["--early-data", "16384"], &["--early-data", "64"]);
    let fleet = Fleet::start_with(&[a, b]);
    let files = Files::new();
    let session = files.session(&fleet.a, "s1");
    written(&fleet.a, 2);
    let big = files.path("big");
    let mut request = b"GET /big HTTP/1.1\r\nHost: localhost\r\nX-Pad: ".to_vec();
    request.resize(1000, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    std::fs::write(&big, &request).unwrap();
    let out = with_early_data(fleet.b(), &session, &big, b"");
    assert!(!out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || early_metric(
        fleet.b(),
        "too_much"
    ) == 1));
}

/// `reprise bench --early-data N` sends its GET as early data on resumed connections, and
/// reports how many were accepted and the time to first byte.
#[test]
fn bench_reports_early_data_and_time_to_first_byte() {
    let (_pki, server) = one_instance(&["--early-data", "16384"]);
    let out = server
        .bench()
        .args(["--connections", "20", "--early-data", "300", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["early_data"], 300);
    assert_eq!(report["failures"], 0);
    let resumed = report["resumed"].as_u64().unwrap();
    assert_eq!(resumed, 19, "{report}");
    assert_eq!(report["early_data_sent"], resumed);
    assert_eq!(report["early_data_accepted"], resumed);
    assert!(report["ttfb_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(early_metric(&server, "accepted"), resumed);

    for bad in [
        &["--early-data", "5"][..],
        &["--early-data", "300", "--tls", "1.2"],
    ] {
        let line = fails_to_start(
            &[
                &["bench", "--connect", "127.0.0.1:9", "--insecure"][..],
                bad,
            ]
            .concat(),
        );
        assert!(line.contains("early-data"), "{line}");
    }
}

/// Two instances on one Redis, with one certificate and key file, taking early data.
struct Fleet {
    redis: RedisServer,
    pki: Pki,
    a: Server,
    b: Option<Server>,
    _files: PemFiles,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let early: &[&str] = &["--early-data", "16384"];
        Self::start_with(&[early, early][..n])
    }

    /// One instance per entry of `flags`, each with those flags.
    fn start_with(flags: &[&[&str]]) -> Fleet {
        let redis = RedisServer::start();
        let pki = Pki::new();
        let files = pki.write_pem();
        let dir = tempfile::tempdir().unwrap();
        let keys = path_in(dir.path(), "keys");
        std::fs::write(&keys, common::keygen("k1") + "\n").unwrap();
        let (cert, key) = (files.path("server.pem"), files.path("server.key"));
        let url = redis.url();
        let instance = |extra: &[&str]| {
            let tls = ["--cert", cert.as_str(), "--key", key.as_str()];
            let s = Server::start(&[&tls[..], &fleet_flags(&url, &keys), extra].concat());
            assert!(wait_until(Duration::from_secs(10), || s
                .metric("reprise_redis_connected")
                == 1));
            s
        };
        let a = instance(flags[0]);
        let b = flags.get(1).map(|f| instance(f));
        Fleet {
            redis,
            pki,
            a,
            b,
            _files: files,
            _dir: dir,
        }
    }

    fn b(&self) -> &Server {
        self.b.as_ref().expect("a second instance")
    }
}

/// Waits until `server` wrote at least `n` sessions to Redis.
fn written(server: &Server, n: u64) {
    assert!(wait_until(Duration::from_secs(10), || server
        .metric("reprise_redis_stores_written_total")
        >= n));
}

/// In a two-instance fleet: a ticket from A carries early data on B (its first use, confirmed
/// by Redis); the same session again, on A or on B, gets its early data refused and a full
/// handshake.
#[test]
fn early_data_is_accepted_once_across_a_fleet() {
    let fleet = Fleet::start(2);
    let files = Files::new();
    let session = files.session(&fleet.a, "s1");
    written(&fleet.a, 2);

    let first = with_early_data(fleet.b(), &session, &files.path("get"), GET_AFTER);
    assert!(accepted(&first), "{first}");
    assert!(first.contains("early-data: yes"), "{first}");
    for server in [&fleet.a, fleet.b()] {
        let again = with_early_data(server, &session, &files.path("get"), GET_AFTER);
        assert!(rejected(&again), "{again}");
        assert_eq!(reuse_words(&again), ["New"], "{again}");
        assert!(again.contains("HTTP/1.1 200 OK"), "{again}");
        assert!(!again.contains("early-data: yes"), "{again}");
    }
    assert_eq!(early_metric(fleet.b(), "accepted"), 1);
    assert_eq!(early_metric(&fleet.a, "accepted"), 0);
    assert_eq!(rejections(&fleet.a, "not_confirmed"), 1);
    assert_eq!(rejections(fleet.b(), "not_confirmed"), 1);
}

/// With Redis stopped, no early data is accepted (the take cannot be confirmed), and every
/// handshake completes.
#[test]
fn redis_stopped_accepts_no_early_data_and_handshakes_complete() {
    let mut fleet = Fleet::start(1);
    let files = Files::new();
    let sessions: Vec<String> = (0..3)
        .map(|i| files.session(&fleet.a, &format!("s{i}")))
        .collect();
    written(&fleet.a, 6);
    fleet.redis.stop();
    for session in &sessions {
        let out = with_early_data(&fleet.a, session, &files.path("get"), GET_AFTER);
        assert!(rejected(&out), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
        assert!(!out.contains("early-data: yes"), "{out}");
    }
    assert_eq!(early_metric(&fleet.a, "accepted"), 0);
    let refused = rejections(&fleet.a, "not_confirmed") + rejections(&fleet.a, "breaker_open");
    assert_eq!(refused, 3);
}

/// The first flight of a rustls client (its ClientHello and its early data), captured and
/// replayed byte for byte to the other instance of the fleet, and to the same one: the ticket
/// is not resumed (no `pre_shared_key` in the ServerHello), so no early data is accepted.
#[test]
fn a_replayed_first_flight_is_rejected_on_another_instance() {
    let fleet = Fleet::start(2);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(fleet.pki.roots())
        .with_no_client_auth();
    config.enable_early_data = true;
    let config = Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // A full handshake: the client keeps the tickets.
    let mut conn = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
    let mut tcp = connect(&fleet.a);
    let response = exchange(&mut conn, &mut tcp, GET_AFTER);
    assert!(response.contains("resumed: no"), "{response}");
    written(&fleet.a, 2);

    // The resumption, with early data: its first flight, captured.
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let sent = conn
        .early_data()
        .expect("a ticket that allows early data")
        .write(GET_EARLY);
    assert_eq!(sent.unwrap(), GET_EARLY.len());
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    assert!(flight.len() > GET_EARLY.len() + 200);
    // The legitimate use, on A: accepted.
    let mut tcp = connect(&fleet.a);
    tcp.write_all(&flight).unwrap();
    let response = finish(&mut conn, &mut tcp);
    assert!(conn.is_early_data_accepted(), "{response}");
    assert!(response.contains("early-data: yes"), "{response}");

    // The replays.
    for server in [fleet.b(), &fleet.a] {
        let mut raw = connect(server);
        raw.write_all(&flight).unwrap();
        let extensions = server_hello_extensions(&mut raw);
        assert!(
            !extensions.contains(&41),
            "the replay resumed: {extensions:?}"
        );
        assert!(!extensions.is_empty());
    }
    assert_eq!(early_metric(&fleet.a, "accepted"), 1);
    assert_eq!(early_metric(fleet.b(), "accepted"), 0);
    assert!(wait_until(Duration::from_secs(5), || rejections(
        fleet.b(),
        "not_confirmed"
    ) == 1));
}

fn connect(server: &Server) -> TcpStream {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// A handshake, `request`, and the whole response (the server closes after an HTTP/1.0
/// request).
fn exchange(conn: &mut rustls::ClientConnection, tcp: &mut TcpStream, request: &[u8]) -> String {
    conn.writer().write_all(request).unwrap();
    finish(conn, tcp)
}

/// Drives `conn` until the server closed, sending `GET_AFTER` once the handshake completed if
/// nothing was sent yet; the plaintext received.
fn finish(conn: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut asked = false;
    // Bounded: each round reads from the socket, which times out.
    for _ in 0..1000 {
        while conn.wants_write() {
            conn.write_tls(tcp).unwrap();
        }
        if !conn.is_handshaking() && !asked {
            asked = true;
            conn.writer().write_all(GET_AFTER).unwrap();
            continue;
        }
        match conn.read_tls(tcp) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        conn.process_new_packets().unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the ServerHello's record and returns its extension types.
fn server_hello_extensions(tcp: &mut TcpStream) -> Vec<u16> {
    let mut header = [0u8; 5];
    tcp.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 22, "not a handshake record: {header:?}");
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 2, "not a ServerHello");
    // type, length (4), version (2), random (32), session id.
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(body[at]);
    at += 2 + 1; // cipher suite, compression
    let end = at + 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    at += 2;
    let mut types = Vec::new();
    while at + 4 <= end {
        types.push(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 4 + usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
    }
    types
}
