//! The PROXY protocol with the real binary: headers (v1, v2; IPv4, IPv6) read from a trusted
//! load balancer reach the per-address limits, the logs and a backend (which reads the header
//! `--upstream-proxy-protocol` sends, TLVs included); an untrusted source, a missing or a
//! malformed header close the connection, counted, and the server goes on serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{fails_to_start, free_port, Server};
use reprise_testkit::AnyCert;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A version 1 header, as a load balancer writes it.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A version 2 header (PROXY, TCP), with one TLV a load balancer might add (skipped).
fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x21
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    // PP2_TYPE_UNIQUE_ID, 4 bytes.
    body.extend_from_slice(&[0x05, 0x00, 0x04, 1, 2, 3, 4]);
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, family]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What the backend read from one connection: the client address, and for v2 the TLVs.
#[derive(Debug, Default)]
struct Seen {
    version: u8,
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    authority: Option<String>,
    alpn: Option<String>,
    ssl_version: Option<String>,
    ssl_flags: Option<u8>,
    request: String,
}

/// Reads the header `reprise serve --upstream-proxy-protocol` sends, byte-exactly.
fn read_upstream_header(tcp: &mut TcpStream) -> Seen {
    let mut first = [0u8; 16];
    tcp.read_exact(&mut first).unwrap();
    let mut seen = Seen::default();
    if first[..12] == V2_SIGNATURE {
        seen.version = 2;
        assert_eq!(first[12], 0x21, "version 2, PROXY");
        let len = u16::from_be_bytes([first[14], first[15]]) as usize;
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).unwrap();
        let rest = match first[13] {
            0x11 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let port = u16::from_be_bytes([body[8], body[9]]);
                seen.src = Some(SocketAddr::new(IpAddr::V4(ip), port));
                let ip = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
                let port = u16::from_be_bytes([body[10], body[11]]);
                seen.dst = Some(SocketAddr::new(IpAddr::V4(ip), port));
                &body[12..]
            }
            0x21 => {
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&body[..16]).unwrap());
                let port = u16::from_be_bytes([body[32], body[33]]);
                seen.src = Some(SocketAddr::new(IpAddr::V6(ip), port));
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&body[16..32]).unwrap());
                let port = u16::from_be_bytes([body[34], body[35]]);
                seen.dst = Some(SocketAddr::new(IpAddr::V6(ip), port));
                &body[36..]
            }
            f => panic!("family {f:#x}"),
        };
        for (kind, value) in tlvs(rest) {
            match kind {
                0x01 => seen.alpn = Some(String::from_utf8(value.to_vec()).unwrap()),
                0x02 => seen.authority = Some(String::from_utf8(value.to_vec()).unwrap()),
                0x20 => {
                    seen.ssl_flags = Some(value[0]);
                    for (sub, v) in tlvs(&value[5..]) {
                        if sub == 0x21 {
                            seen.ssl_version = Some(String::from_utf8(v.to_vec()).unwrap());
                        }
                    }
                }
                _ => {}
            }
        }
    } else {
        seen.version = 1;
        let mut line = first.to_vec();
        while !line.ends_with(b"\r\n") {
            assert!(line.len() < 107, "v1 line too long");
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        let text = String::from_utf8(line).unwrap();
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(f[0], "PROXY", "{text}");
        assert!(f[1] == "TCP4" || f[1] == "TCP6", "{text}");
        seen.src = Some(SocketAddr::new(
            f[2].parse().unwrap(),
            f[4].parse().unwrap(),
        ));
        seen.dst = Some(SocketAddr::new(
            f[3].parse().unwrap(),
            f[5].parse().unwrap(),
        ));
    }
    seen
}

fn tlvs(mut rest: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        out.push((rest[0], &rest[3..3 + len]));
        rest = &rest[3 + len..];
    }
    assert!(rest.is_empty(), "TLVs tile the header");
    out
}

/// A backend that reads each connection's header and first request line, answers, and reports
/// what it saw.
fn backend(connections: usize) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut seen = read_upstream_header(&mut tcp);
            let mut buf = [0u8; 256];
            let n = tcp.read(&mut buf).unwrap_or(0);
            seen.request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let _ = tcp.write_all(b"backend says hello\n");
            let _ = tx.send(seen);
        }
    });
    (addr, rx)
}

fn client_config() -> Arc<ClientConfig> {
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects from `from` (a loopback address), sends `header`, and completes a TLS handshake.
fn connect(server: &Server, from: Ipv4Addr, header: &[u8]) -> std::io::Result<Tls> {
    connect_split(server, from, header, header.len())
}

/// [`connect`], with the header sent in two writes (split at `at`), a pause between them: the
/// server reads it as it comes.
fn connect_split(
    server: &Server,
    from: Ipv4Addr,
    header: &[u8],
    at: usize,
) -> std::io::Result<Tls> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    socket.connect_timeout(&server.addr.into(), Duration::from_secs(5))?;
    let mut tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&header[..at])?;
    if at < header.len() {
        std::thread::sleep(Duration::from_millis(100));
        tcp.write_all(&header[at..])?;
    }
    let conn = ClientConnection::new(client_config(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends a request and reads until the server closes (or 64 reads).
fn ask(tls: &mut Tls, request: &[u8], until: &str) -> String {
    tls.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&out).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closed the connection without completing a handshake.
fn refused(server: &Server, from: Ipv4Addr, header: &[u8]) -> bool {
    connect(server, from, header).is_err()
}

#[test]
fn headers_reach_the_backend_and_the_logs() {
    let dst4 = sa("198.51.100.1:443");
    let dst6 = sa("[2001:db8::443]:443");
    let clients = [
        (sa("192.0.2.10:40001"), true),
        (sa("[2001:db8::10]:40002"), true),
        (sa("192.0.2.11:40003"), false),
        (sa("[2001:db8::11]:40004"), false),
    ];
    for upstream_version in ["v1", "v2"] {
        let (backend_addr, seen) = backend(clients.len());
        let upstream = backend_addr.to_string();
        let dir = tempfile::tempdir().unwrap();
        let access_log = dir.path().join("access.log").to_string_lossy().into_owned();
        let server = Server::start(&[
            "--access-log",
            &access_log,
            "--upstream",
            &upstream,
            "--upstream-proxy-protocol",
            upstream_version,
            "--accept-proxy-protocol",
            "--proxy-protocol-from",
            "10.0.0.0/8",
            "--proxy-protocol-from",
            "127.0.0.1/32",
            "--alpn",
            "h2,http/1.1",
        ]);
        for (src, with_v1) in clients {
            let dst = if src.is_ipv4() { dst4 } else { dst6 };
            let header = if with_v1 { v1(src, dst) } else { v2(src, dst) };
            let mut tls = connect(&server, Ipv4Addr::LOCALHOST, &header).unwrap();
            let answer = ask(&mut tls, b"ping\n", "hello");
            assert!(answer.contains("backend says hello"), "{answer:?}");
            let got = seen.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got.src, Some(src), "{upstream_version} after {header:?}");
            assert_eq!(got.dst, Some(dst), "{upstream_version} after {header:?}");
            assert_eq!(got.request, "ping\n");
            if upstream_version == "v2" {
                assert_eq!(got.version, 2);
                assert_eq!(got.authority.as_deref(), Some("localhost"));
                assert_eq!(got.alpn.as_deref(), Some("http/1.1"));
                assert_eq!(got.ssl_version.as_deref(), Some("TLSv1.3"));
                assert_eq!(got.ssl_flags.map(|f| f & 1), Some(1), "PP2_CLIENT_SSL");
            } else {
                assert_eq!(got.version, 1);
            }
        }
        // Each connection's access-log line names the client of its header.
        let logged = reprise_testkit::wait_until(Duration::from_secs(10), || {
            let lines = std::fs::read_to_string(&access_log).unwrap_or_default();
            clients
                .iter()
                .all(|(src, _)| lines.contains(&format!("client={src} ")))
        });
        assert!(
            logged,
            "{}",
            std::fs::read_to_string(&access_log).unwrap_or_default()
        );
        assert_eq!(
            server.metric("reprise_proxy_headers_total{version=\"v1\"}"),
            2
        );
        assert_eq!(
            server.metric("reprise_proxy_headers_total{version=\"v2\"}"),
            2
        );
        // The backend is gone now: the warning names the client of the header, not the proxy.
        let mut tls = connect(
            &server,
            Ipv4Addr::LOCALHOST,
            &v1(sa("203.0.113.77:5555"), dst4),
        )
        .unwrap();
        let _ = ask(&mut tls, b"ping\n", "hello");
        let logged = reprise_testkit::wait_until(Duration::from_secs(10), || {
            server.stderr().contains("peer=203.0.113.77:5555")
        });
        assert!(logged, "{}", server.stderr());
    }
}

#[test]
fn without_an_incoming_header_the_backend_gets_the_tcp_addresses() {
    for upstream_version in ["v1", "v2"] {
        let (backend_addr, seen) = backend(1);
        let upstream = backend_addr.to_string();
        let server = Server::start(&[
            "--upstream",
            &upstream,
            "--upstream-proxy-protocol",
            upstream_version,
        ]);
        let mut tls = connect(&server, Ipv4Addr::LOCALHOST, b"").unwrap();
        let client = tls.sock.local_addr().unwrap();
        let answer = ask(&mut tls, b"ping\n", "hello");
        assert!(answer.contains("backend says hello"), "{answer:?}");
        let got = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.src, Some(client));
        assert_eq!(got.dst, Some(server.addr));
        assert_eq!(got.request, "ping\n");
    }
}

#[test]
fn untrusted_missing_and_malformed_headers_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log").to_string_lossy().into_owned();
    let server = Server::start(&[
        "--access-log",
        &access_log,
        "--accept-proxy-protocol",
        "--proxy-protocol-from",
        "127.0.0.1",
        "--max-connections-per-address",
        "1",
    ]);
    let dst = sa("127.0.0.1:8443");
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let counted = |reason: &str| {
        server.metric(&format!(
            "reprise_proxy_headers_refused_total{{reason=\"{reason}\"}}"
        ))
    };

    // From the trusted source: no header, then malformed ones.
    assert!(refused(&server, Ipv4Addr::LOCALHOST, b""));
    assert_eq!(counted("missing"), 1);
    let mut bad_v2 = v2(sa("192.0.2.1:1"), dst);
    bad_v2[12] = 0x31;
    for bad in [
        &b"PROXY TCP4 192.0.2.1 not-an-address 1 443\r\n"[..],
        b"PROXY TCP6 192.0.2.1 127.0.0.1 1 443\r\n",
        &bad_v2,
    ] {
        assert!(refused(&server, Ipv4Addr::LOCALHOST, bad), "{bad:?}");
    }
    assert_eq!(counted("malformed"), 3);

    // From an untrusted source (127.0.0.2): a header is refused, plain TLS is served.
    let untrusted = Ipv4Addr::new(127, 0, 0, 2);
    assert!(refused(&server, untrusted, &v1(sa("192.0.2.5:1"), dst)));
    assert_eq!(counted("untrusted"), 1);
    let mut plain = connect(&server, untrusted, b"").unwrap();
    assert!(ask(&mut plain, request, "resumed: ").contains("resumed: "));
    drop(plain);

    // The server survived: two clients behind the one trusted proxy each hold a connection,
    // under --max-connections-per-address 1, since each counts against its own address.
    let mut a = connect(
        &server,
        Ipv4Addr::LOCALHOST,
        &v1(sa("192.0.2.20:1000"), dst),
    )
    .unwrap();
    let mut b = connect(
        &server,
        Ipv4Addr::LOCALHOST,
        &v2(sa("[2001:db8::20]:1000"), sa("[::1]:8443")),
    )
    .unwrap();
    assert!(ask(&mut a, request, "resumed: ").contains("resumed: "));
    assert!(ask(&mut b, request, "resumed: ").contains("resumed: "));
    // Headers that arrive in pieces are read as they come.
    let split_v1 = v1(sa("192.0.2.30:1"), dst);
    let mut c = connect_split(&server, Ipv4Addr::LOCALHOST, &split_v1, 20).unwrap();
    assert!(ask(&mut c, request, "resumed: ").contains("resumed: "));
    drop(c);
    let split_v2 = v2(sa("192.0.2.31:1"), dst);
    let mut c = connect_split(&server, Ipv4Addr::LOCALHOST, &split_v2, 14).unwrap();
    assert!(ask(&mut c, request, "resumed: ").contains("resumed: "));
    drop(c);
    // A second connection from a client that holds one is closed.
    let before = server.metric("reprise_connections_rejected_per_address_total");
    assert!(refused(
        &server,
        Ipv4Addr::LOCALHOST,
        &v1(sa("192.0.2.20:1001"), dst)
    ));
    assert_eq!(
        server.metric("reprise_connections_rejected_per_address_total"),
        before + 1
    );
    assert_eq!(
        server.metric("reprise_proxy_headers_total{version=\"v1\"}"),
        3
    );
    assert_eq!(
        server.metric("reprise_proxy_headers_total{version=\"v2\"}"),
        2
    );
    drop((a, b));
    // Each refusal has its access-log line, with the reason.
    let logged = reprise_testkit::wait_until(Duration::from_secs(10), || {
        let lines = std::fs::read_to_string(&access_log).unwrap_or_default();
        let count = |what: &str| lines.lines().filter(|l| l.contains(what)).count();
        count("error=proxy_header_missing") == 1
            && count("error=proxy_header_malformed") == 3
            && count("client=127.0.0.2:") >= 2
            && count("error=proxy_header_untrusted") == 1
    });
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&access_log).unwrap_or_default()
    );
}

#[test]
fn bad_proxy_flags_fail_in_one_line() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(extra);
        fails_to_start(&args)
    };
    let e = serve(&[
        "--accept-proxy-protocol",
        "--proxy-protocol-from",
        "10.0.0.0/33",
    ]);
    assert!(
        e.contains("proxy-protocol-from") && e.contains("10.0.0.0/33"),
        "{e}"
    );
    let e = serve(&[
        "--accept-proxy-protocol",
        "--proxy-protocol-from",
        "10.0.0/8",
    ]);
    assert!(e.contains("proxy-protocol-from"), "{e}");
    let e = serve(&["--accept-proxy-protocol"]);
    assert!(e.contains("--proxy-protocol-from"), "{e}");
    let e = serve(&["--proxy-protocol-from", "10.0.0.0/8"]);
    assert!(e.contains("needs --accept-proxy-protocol"), "{e}");
    let e = serve(&["--upstream-proxy-protocol", "v2"]);
    assert!(e.contains("needs --upstream"), "{e}");
    let e = serve(&[
        "--upstream",
        "127.0.0.1:1",
        "--upstream-proxy-protocol",
        "v3",
    ]);
    assert!(e.contains("v3"), "{e}");
    // The same settings in the config file.
    let dir = tempfile::tempdir().unwrap();
    for (toml, expect) in [
        (
            "accept-proxy-protocol = true\nproxy-protocol-from = [\"fd00::/129\"]\n",
            "fd00::/129",
        ),
        ("upstream-proxy-protocol = \"v3\"\n", "v3"),
        ("accept-proxy-protocol = \"yes\"\n", "expected a boolean"),
    ] {
        let path = dir.path().join("reprise.toml");
        std::fs::write(&path, toml).unwrap();
        let e = serve(&["--config", path.to_str().unwrap()]);
        assert!(e.contains(expect), "{toml}: {e}");
    }
}
