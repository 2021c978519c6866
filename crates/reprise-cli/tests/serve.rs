//! Black-box tests of `reprise serve`: the real binary, real `openssl s_client` clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{fails_to_start, http_get, path_in, request, reuse_words, s_client, Server};
use reprise_testkit::{AnyCert, Pki};

fn reconnect_tls12(server: &Server) -> Vec<String> {
    let addr = server.connect_arg();
    let out = s_client(
        &[
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-tls1_2",
            "-no_ticket",
            "-reconnect",
        ],
        b"",
    );
    reuse_words(&out)
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tls12_reconnect_gives_one_new_then_five_reused() {
    let server = Server::start(&[]);
    assert_eq!(
        reconnect_tls12(&server),
        words(&["New", "Reused", "Reused", "Reused", "Reused", "Reused"])
    );
}

#[test]
fn tls13_ticket_resumes_once() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let sess = path_in(dir.path(), "tls13.sess");
    assert_eq!(request(&server, &["-tls1_3", "-sess_out", &sess]), "New");
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &sess]), "Reused");
    // The same ticket a third time: it was taken, so the handshake is full.
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &sess]), "New");
}

#[test]
fn responder_reports_the_handshake() {
    let server = Server::start(&[]);
    let addr = server.connect_arg();
    let out = s_client(
        &[
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-tls1_3",
            "-ign_eof",
            "-quiet",
        ],
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(out.contains("protocol: TLSv1.3"), "{out}");
    assert!(out.contains("cipher: TLS13_"), "{out}");
    assert!(out.contains("resumed: no"), "{out}");
}

#[test]
fn cache_mode_off_never_resumes() {
    let server = Server::start(&["--cache-mode", "off"]);
    assert_eq!(reconnect_tls12(&server), words(&["New"; 6]));
    let dir = tempfile::tempdir().unwrap();
    let sess = path_in(dir.path(), "s");
    assert_eq!(request(&server, &["-tls1_3", "-sess_out", &sess]), "New");
    assert_eq!(server.metric("reprise_cache_sessions"), 0);
}

#[test]
fn expired_sessions_do_not_resume() {
    let server = Server::start(&["--cache-timeout", "1"]);
    let dir = tempfile::tempdir().unwrap();
    for (flag, name) in [("-tls1_2", "s12"), ("-tls1_3", "s13")] {
        let sess = path_in(dir.path(), name);
        assert_eq!(
            request(&server, &[flag, "-no_ticket", "-sess_out", &sess]),
            "New"
        );
        // The scenario itself is a wait of two seconds past a one-second timeout.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            request(&server, &[flag, "-no_ticket", "-sess_in", &sess]),
            "New"
        );
    }
    assert_eq!(server.metric("reprise_cache_timeouts_total"), 2);
}

#[test]
fn cache_size_one_keeps_only_the_newest_session() {
    let server = Server::start(&["--cache-size", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let (older, newer) = (path_in(dir.path(), "a"), path_in(dir.path(), "b"));
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &older]),
        "New"
    );
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &newer]),
        "New"
    );
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &newer]),
        "Reused"
    );
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &older]),
        "New"
    );
    assert_eq!(server.metric("reprise_cache_sessions"), 1);
    assert!(server.metric("reprise_cache_cache_full_total") >= 1);
}

/// The session-id context an instance logged at start.
fn logged_sid_ctx(server: &Server) -> String {
    let log = server.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("session cache ready"))
        .unwrap_or_else(|| panic!("{log}"));
    let start = line.find("sid_ctx=").unwrap() + "sid_ctx=".len();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

#[test]
fn sessions_never_cross_between_mtls_and_plain() {
    let pki = Pki::new().write_pem();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let plain = Server::start(&["--cert", &cert, "--key", &key]);
    let plain_twin = Server::start(&["--cert", &cert, "--key", &key]);
    let mtls = Server::start(&["--cert", &cert, "--key", &key, "--client-ca", &ca]);
    // Instances with the same settings share a context (so a fleet can share sessions);
    // requiring client certificates gives another.
    assert_eq!(logged_sid_ctx(&plain), logged_sid_ctx(&plain_twin));
    assert_ne!(logged_sid_ctx(&plain), logged_sid_ctx(&mtls));

    let dir = tempfile::tempdir().unwrap();
    let client = [
        "-cert",
        &pki.path("client.pem"),
        "-key",
        &pki.path("client.key"),
    ];
    for flag in ["-tls1_2", "-tls1_3"] {
        let from_mtls = path_in(dir.path(), "m");
        let mut args = vec![flag, "-no_ticket", "-sess_out", &from_mtls];
        args.extend_from_slice(&client);
        assert_eq!(request(&mtls, &args), "New");
        assert_eq!(request(&plain, &[flag, "-sess_in", &from_mtls]), "New");
        let from_plain = path_in(dir.path(), "p");
        assert_eq!(request(&plain, &[flag, "-sess_out", &from_plain]), "New");
        let mut args = vec![flag, "-sess_in", &from_plain];
        args.extend_from_slice(&client);
        assert_eq!(request(&mtls, &args), "New");
    }
    // Without a client certificate the mTLS instance refuses the handshake.
    let addr = mtls.connect_arg();
    let out = s_client(
        &[
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-tls1_3",
            "-ign_eof",
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert!(!out.contains("200 OK"), "{out}");
}

/// An echo backend: each connection echoes until EOF, then closes its side.
fn echo_backend() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        // Serves exactly one connection.
        if let Ok((mut tcp, _)) = listener.accept() {
            let mut buf = [0u8; 8192];
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tcp.shutdown(std::net::Shutdown::Write);
        }
    });
    (addr, handle)
}
#[test]
fn upstream_proxies_both_directions_with_half_close() {
    let (backend, echo) = echo_backend();
    let server = Server::start(&["--upstream", &backend.to_string()]);
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // Write everything, then half-close with close_notify; the echo keeps coming back.
    for chunk in payload.chunks(16_384) {
        tls.write_all(chunk).unwrap();
    }
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut echoed = Vec::new();
    tls.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
    echo.join().unwrap();
}

#[test]
fn metrics_count_what_clients_saw() {
    let server = Server::start(&[]);
    let seen12 = reconnect_tls12(&server);
    let dir = tempfile::tempdir().unwrap();
    let sess = path_in(dir.path(), "s");
    let seen13 = [
        request(&server, &["-tls1_3", "-sess_out", &sess]),
        request(&server, &["-tls1_3", "-sess_in", &sess]),
    ];
    let count = |seen: &[String], word: &str| seen.iter().filter(|w| *w == word).count() as u64;
    let m = |labels: &str| server.metric(&format!("reprise_handshakes_total{labels}"));
    assert_eq!(
        m("{kind=\"full\",version=\"TLSv1.2\"}"),
        count(&seen12, "New")
    );
    assert_eq!(
        m("{kind=\"resumed\",version=\"TLSv1.2\"}"),
        count(&seen12, "Reused")
    );
    assert_eq!(
        m("{kind=\"full\",version=\"TLSv1.3\"}"),
        count(&seen13, "New")
    );
    assert_eq!(
        m("{kind=\"resumed\",version=\"TLSv1.3\"}"),
        count(&seen13, "Reused")
    );
    assert_eq!(
        server.metric("reprise_cache_hits_total"),
        count(&seen12, "Reused") + count(&seen13, "Reused")
    );
    assert_eq!(server.metric("reprise_cache_accept_good_total"), 8);
    let health = http_get(server.metrics.unwrap(), "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"),
        "{health}"
    );
}

#[test]
fn sigterm_exits_zero_with_a_connection_open() {
    let server = Server::start(&["--shutdown-timeout", "2"]);
    let idle = TcpStream::connect(server.addr).unwrap();
    assert_eq!(reconnect_tls12(&server).len(), 6);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    drop(idle);
}

#[test]
fn rsa_and_ed25519_keys_work() {
    for pki in [Pki::with_rsa_server(), Pki::with_ed25519_server()] {
        let pki = pki.write_pem();
        let server = Server::start(&[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
        ]);
        assert_eq!(
            request(
                &server,
                &[
                    "-tls1_3",
                    "-CAfile",
                    &pki.path("ca.pem"),
                    "-verify_return_error"
                ]
            ),
            "New"
        );
        assert_eq!(
            request(
                &server,
                &[
                    "-tls1_2",
                    "-no_ticket",
                    "-CAfile",
                    &pki.path("ca.pem"),
                    "-verify_return_error"
                ]
            ),
            "New"
        );
    }
}

#[test]
fn bad_input_at_start_is_one_line_and_exit_2() {
    let pki = Pki::new().write_pem();
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        fails_to_start(&args)
    };
    let e = serve(&[
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
    ]);
    assert!(
        e.contains("cannot read certificate file /nonexistent/cert.pem"),
        "{e}"
    );
    let e = serve(&[
        "--cert",
        &pki.path("server.pem"),
        "--key",
        &pki.path("other.key"),
    ]);
    assert!(e.contains("certificate and key"), "{e}");
    let e = serve(&[
        "--cert",
        &pki.path("server.pem"),
        "--key",
        &pki.path("ca.pem"),
    ]);
    assert!(e.contains("key file"), "{e}");
    let e = serve(&[
        "--cert",
        &pki.path("server.key"),
        "--key",
        &pki.path("server.key"),
    ]);
    assert!(e.contains("certificate file"), "{e}");
    let e = serve(&["--cache-size", "many"]);
    assert!(e.contains("--cache-size"), "{e}");
    let e = serve(&["--cache-mode", "server,sever"]);
    assert!(e.contains("sever"), "{e}");
    let e = serve(&["--tickets", "sometimes"]);
    assert!(e.contains("sometimes"), "{e}");
    let e = serve(&["--client-ca", "/nonexistent/ca.pem"]);
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    let e = serve(&["--upstream", "no-port"]);
    assert!(e.contains("HOST:PORT"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let config = path_in(dir.path(), "reprise.toml");
    std::fs::write(&config, "cache-size = 10\ncache-mode = \"sever\"\n").unwrap();
    let e = serve(&["--config", &config]);
    assert!(e.contains("cache-mode") && e.contains("sever"), "{e}");
    std::fs::write(&config, "cache-sise = 10\n").unwrap();
    let e = serve(&["--config", &config]);
    assert!(e.contains("cache-sise"), "{e}");
    let e = serve(&["--config", "/nonexistent/reprise.toml"]);
    assert!(e.contains("/nonexistent/reprise.toml"), "{e}");

    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = fails_to_start(&["serve", "--listen", &addr]);
    assert!(e.contains("cannot listen on"), "{e}");
}

#[test]
fn config_file_settings_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = path_in(dir.path(), "reprise.toml");
    std::fs::write(&config, "cache-mode = \"off\"\ncache-size = 7\n").unwrap();
    let off = Server::start(&["--config", &config]);
    assert_eq!(reconnect_tls12(&off), words(&["New"; 6]));
    let on = Server::start(&["--config", &config, "--cache-mode", "server"]);
    assert_eq!(reconnect_tls12(&on)[1], "Reused");
}

#[test]
fn garbage_and_stalled_clients_lose_only_their_connection() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    // Garbage: not TLS at all.
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
        .unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    // A stall mid-handshake: half a record header, then nothing.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    // Everyone else is served meanwhile.
    assert_eq!(request(&server, &["-tls1_3"]), "New");
    // The stalled connection is closed by the server after the handshake timeout.
    let mut buf = [0u8; 64];
    let closed = matches!(stalled.read(&mut buf), Ok(0) | Err(_));
    assert!(closed);
    assert!(server.metric("reprise_handshake_failures_total{reason=\"invalid_message\"}") >= 1);
    assert_eq!(
        server.metric("reprise_handshake_failures_total{reason=\"timeout\"}"),
        1
    );
    assert_eq!(reconnect_tls12(&server)[5], "Reused");
    // Failures a client causes are counted, not logged at info: a flood cannot fill the log.
    assert!(!server.stderr().contains("handshake failed"));
}

#[test]
fn many_idle_connections_do_not_stop_service() {
    let server = Server::start(&[]);
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    assert_eq!(request(&server, &["-tls1_3"]), "New");
    assert_eq!(reconnect_tls12(&server)[5], "Reused");
    drop(idle);
}

#[test]
fn max_connections_closes_the_excess_at_accept() {
    // All from one address: the per-address limit must not be the one that closes them.
    let server = Server::start(&[
        "--max-connections",
        "5",
        "--max-connections-per-address",
        "6",
    ]);
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // Wait until the server has taken all five (bounded).
    for _ in 0..200 {
        if server.metric("reprise_connections_open") == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut extra = TcpStream::connect(server.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)));
    assert!(server.metric("reprise_connections_rejected_total") >= 1);
    drop(idle);
    // Once they are gone, service comes back (bounded retries while the server notices).
    let mut served = false;
    for _ in 0..100 {
        if server.metric("reprise_connections_open") == 0 {
            served = request(&server, &["-tls1_3"]) == "New";
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served);
}

#[test]
fn a_close_notify_before_any_request_is_answered_and_keeps_the_session() {
    let server = Server::start(&[]);
    let provider = rustls::crypto::ring::default_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(4);
    let config = Arc::new(config);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        kinds.push(tls.conn.handshake_kind());
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        // The server's close_notify (an end without it is an UnexpectedEof error), then the
        // end of the TCP stream, and nothing else.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(tls.sock.read(&mut [0u8; 16]).unwrap(), 0);
    }
    // Closed cleanly, the first session stays in the cache and the second connection resumes it.
    let full = Some(rustls::HandshakeKind::Full);
    assert_eq!(kinds, [full, Some(rustls::HandshakeKind::Resumed)]);
    assert_eq!(server.metric("reprise_unclean_shutdowns_total"), 0);
}

/// Both accept models with two workers: every connection is served, and sessions resume
/// whichever worker took the connection (one cache). Bad values stop the start.
#[test]
fn two_workers_serve_and_share_one_cache_in_both_accept_models() {
    for model in ["per-worker", "shared"] {
        let server = Server::start(&["--workers", "2", "--accept-model", model]);
        let dir = tempfile::tempdir().unwrap();
        let sess = common::path_in(dir.path(), "sess");
        let first = common::request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &sess]);
        assert_eq!(first, "New");
        for _ in 0..12 {
            let word = common::request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &sess]);
            assert_eq!(word, "Reused", "{model}");
        }
        assert!(
            server.stderr().contains(&format!("accept=\"{model}\""))
                || server.stderr().contains(&format!("accept={model}")),
            "{}",
            server.stderr()
        );
        assert_eq!(server.metric("reprise_cache_hits_total"), 12);
    }
    for bad in [
        &["--workers", "0"][..],
        &["--workers", "1025"][..],
        &["--accept-model", "round-robin"][..],
    ] {
        let line = common::fails_to_start(&[&["serve"][..], bad].concat());
        assert!(
            line.contains("workers") || line.contains("accept-model"),
            "{line}"
        );
    }
}
