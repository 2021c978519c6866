//! Slowloris and the other admission limits, against the real binary: idle connections from one
//! address do not lock other clients out, a ClientHello that does not arrive is given up on
//! before the handshake timeout, the metrics listener serves a bounded number of connections,
//! and out-of-range limits are refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{fails_to_start, request, Server};

/// A TCP connection to `to` from the loopback address `from` (any 127.0.0.0/8 address is
/// local on Linux).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Waits (bounded) until `metric` reaches `value`; its last value.
fn wait_metric(server: &Server, metric: &str, value: u64) -> u64 {
    let mut last = 0;
    for _ in 0..200 {
        last = server.metric(metric);
        if last >= value {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    last
}

#[test]
fn idle_sockets_from_one_address_do_not_lock_others_out() {
    // The attack of issue 13: as many idle sockets as --max-connections, each having sent the
    // first 3 bytes of a record header. The handshake timeout is long, so only the per-address
    // limit (default: a quarter, 5) can let the next client in.
    let server = Server::start(&["--max-connections", "20", "--handshake-timeout", "60"]);
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect_from("127.0.0.2", server.addr);
            s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            s
        })
        .collect();
    assert_eq!(
        wait_metric(
            &server,
            "reprise_connections_rejected_per_address_total",
            15
        ),
        15,
        "the attacker's address holds 5 connections, the other 15 are closed at accept"
    );
    assert_eq!(server.metric("reprise_connections_open"), 5);
    // Another address is served at once, and more than once.
    assert_eq!(request(&server, &["-tls1_3"]), "New");
    assert_eq!(request(&server, &["-tls1_2"]), "New");
    assert_eq!(server.metric("reprise_connections_rejected_total"), 0);
    drop(idle);
}

#[test]
fn a_clienthello_that_does_not_arrive_is_given_up_at_the_hello_timeout() {
    // The handshake timeout is far longer than the read below waits: only the hello timeout can
    // close the stalled connection in time.
    let server = Server::start(&["--hello-timeout", "1", "--handshake-timeout", "120"]);
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(stalled.read(&mut buf), Ok(0)));
    assert_eq!(
        server.metric("reprise_handshake_failures_total{reason=\"timeout\"}"),
        1
    );
    assert_eq!(request(&server, &["-tls1_3"]), "New");
}

#[test]
fn an_explicit_per_address_limit_applies() {
    let server = Server::start(&["--max-connections-per-address", "2"]);
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| connect_from("127.0.0.3", server.addr))
        .collect();
    assert_eq!(
        wait_metric(&server, "reprise_connections_rejected_per_address_total", 2),
        2
    );
    drop(idle);
    // Once they are gone, the address is served again (bounded retries while the server notices).
    let mut open = u64::MAX;
    for _ in 0..200 {
        open = server.metric("reprise_connections_open");
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(open, 0);
    let mut again = connect_from("127.0.0.3", server.addr);
    again.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = again.read_to_end(&mut reply);
    // rustls answers plain text with a TLS alert: the connection was admitted, not closed bare.
    assert_eq!(reply.first(), Some(&21), "{reply:?}");
}

#[test]
fn the_metrics_listener_serves_sixteen_connections_at_a_time() {
    let server = Server::start(&[]);
    let metrics = server.metrics.unwrap();
    assert!(server.metrics_text().contains("reprise_connections_open"));
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // The 17th waits in the backlog: it is not answered while the 16 hold their slots (they
    // would time out only after 5 s).
    let mut waiting = TcpStream::connect(metrics).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(waiting.read(&mut buf).is_err(), "answered past the limit");
    // Once they close, it is served.
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = String::new();
    waiting.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");
}

#[test]
fn out_of_range_admission_flags_are_refused_at_start() {
    let err = fails_to_start(&["serve", "--tls13-tickets", "17"]);
    assert!(err.contains("tls13-tickets"), "{err}");
    let err = fails_to_start(&["serve", "--max-connections-per-address", "0"]);
    assert!(err.contains("max-connections-per-address"), "{err}");
    let err = fails_to_start(&["serve", "--hello-timeout", "0"]);
    assert!(err.contains("hello-timeout"), "{err}");
    let err = fails_to_start(&[
        "serve",
        "--hello-timeout",
        "20",
        "--handshake-timeout",
        "10",
    ]);
    assert!(err.contains("must not exceed handshake-timeout"), "{err}");
}
