//! Interop suite: client stacks nobody here wrote (Go `crypto/tls`, Node.js `tls`, Python
//! `ssl`, GnuTLS `gnutls-cli`, OpenSSL `s_client` and `s_time`, curl) run chains of sequential
//! connections against the real `reprise serve`, alone and as a two-instance Redis fleet, and
//! every connection after the first must resume, however the one before it closed:
//! close_notify then FIN, FIN alone, RST, or the server closing first.
//!
//! The Go, Node and Python clients are the programs in `tests/interop/`; each prints, per
//! connection, what its TLS stack reports and what the built-in responder's body says
//! (`resumed: yes`). Both must say yes. Through the fleet, the clients connect to a round-robin
//! TCP balancer in this file, so consecutive connections alternate between the instances; the
//! balancer starts each connection once both instances have finished writing to Redis, so a
//! session always reaches the other instance before the client offers it there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{program, require, run};
use common::{fleet_flags, path_in, reprise, reuse_words, s_client, Server};
use reprise_testkit::{wait_until, PemFiles, Pki, RedisServer};

/// Connections per chain: a full handshake, then five that must resume.
const CHAIN: usize = 6;

/// What `reprise serve` the clients reach: one instance, or two sharing a Redis server behind
/// the round-robin balancer.
struct Target {
    name: &'static str,
    /// Where the clients connect.
    addr: SocketAddr,
    pki: PemFiles,
    // Dropped in this order: the balancer, the instances, Redis.
    _balancer: Option<Balancer>,
    servers: Vec<Server>,
    _redis: Option<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Target {
    /// One instance on its defaults.
    fn alone() -> Target {
        let pki = Pki::new().write_pem();
        let server = Server::start(&[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
        ]);
        Target {
            name: "alone",
            addr: server.addr,
            pki,
            _balancer: None,
            servers: vec![server],
            _redis: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Two instances sharing a real `redis-server`, behind the balancer.
    fn fleet() -> Target {
        let pki = Pki::new().write_pem();
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let out = reprise().args(["keygen", "--name", "k1"]).output().unwrap();
        assert!(out.status.success());
        let keys = path_in(dir.path(), "keys");
        std::fs::write(&keys, &out.stdout).unwrap();
        let servers: Vec<Server> = (0..2)
            .map(|_| {
                let (cert, key, url) =
                    (pki.path("server.pem"), pki.path("server.key"), redis.url());
                let tls = ["--cert", cert.as_str(), "--key", key.as_str()];
                Server::start(&[&tls[..], &fleet_flags(&url, &keys)].concat())
            })
            .collect();
        for s in &servers {
            let up = wait_until(Duration::from_secs(10), || {
                s.metric("reprise_redis_connected") == 1
            });
            assert!(up, "{}", s.metrics_text());
        }
        let balancer = Balancer::start(
            servers.iter().map(|s| s.addr).collect(),
            servers.iter().filter_map(|s| s.metrics).collect(),
        );
        Target {
            name: "fleet",
            addr: balancer.addr,
            pki,
            _balancer: Some(balancer),
            servers,
            _redis: Some(redis),
            _dir: dir,
        }
    }

    fn ca(&self) -> String {
        self.pki.path("ca.pem")
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// A round-robin TCP balancer: connection n goes to instance n mod 2. It passes FIN on as FIN
/// and a reset as a reset (SO_LINGER 0), so the instances see how the client closed.
struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn start(upstreams: Vec<SocketAddr>, metrics: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                // Whatever the previous connections queued for Redis is written (or failed)
                // before this one reaches an instance.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !metrics.iter().all(|m| writes_settled(*m)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let upstream = upstreams[n % upstreams.len()];
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pump(client, server));
                std::thread::spawn(move || pump(s2, c2));
            }
        });
        Balancer { addr, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies `from` to `to` until `from` ends: a FIN becomes a FIN (shutdown of `to`'s write
/// side); a reset, or a write refused, resets `to`: SO_LINGER 0, and a read shutdown that ends
/// the opposite pump, so the last descriptor closes with RST.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded by the read timeout: every pass waits at most 30 s for bytes.
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = socket2::SockRef::from(&from).set_linger(Some(Duration::ZERO));
                    let _ = from.shutdown(Shutdown::Read);
                    return;
                }
            }
            Err(_) => {
                let _ = socket2::SockRef::from(&to).set_linger(Some(Duration::ZERO));
                let _ = to.shutdown(Shutdown::Read);
                return;
            }
        }
    }
}

/// Whether an instance has written (or given up on) every Redis write it queued. Any problem
/// reading its metrics counts as "not yet".
fn writes_settled(metrics: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect_timeout(&metrics, Duration::from_secs(1)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    if tcp.read_to_string(&mut text).is_err() {
        return false;
    }
    let value = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let sum = |names: &[&str]| -> Option<u64> {
        names
            .iter()
            .map(|n| value(&format!("reprise_redis_{n}_total")))
            .sum()
    };
    let queued = sum(&["stores_queued", "deletes_queued"]);
    let done = sum(&[
        "stores_written",
        "deletes_written",
        "write_failures",
        "writes_dropped_full",
        "writes_dropped_unavailable",
    ]);
    matches!((queued, done), (Some(q), Some(d)) if d >= q)
}

/// One chain's outcome: how many of the connections after the first resumed.
struct Chain {
    name: String,
    resumed: usize,
    of: usize,
    /// What the client printed, for the failure message.
    detail: String,
}

impl Chain {
    fn complete(&self) -> bool {
        self.of > 0 && self.resumed == self.of
    }
}

/// Asserts every chain resumed every connection after its first, listing them all.
fn assert_all_resumed(target: &Target, chains: &[Chain]) {
    let mut table = String::new();
    for c in chains {
        let _ = writeln!(
            table,
            "interop {}: {:<34} {}/{}",
            target.name, c.name, c.resumed, c.of
        );
    }
    println!("{table}");
    // Through the fleet, both instances resumed connections: the chains really crossed.
    for (i, server) in target.servers.iter().enumerate() {
        let resumed: u64 = ["TLSv1.2", "TLSv1.3"]
            .iter()
            .map(|v| {
                server.metric(&format!(
                    "reprise_handshakes_total{{kind=\"resumed\",version=\"{v}\"}}"
                ))
            })
            .sum();
        assert!(
            resumed > 0,
            "instance {i} of {} resumed nothing:\n{table}",
            target.name
        );
    }
    let failed: Vec<String> = chains
        .iter()
        .filter(|c| !c.complete())
        .map(|c| format!("{} ({}/{}):\n{}", c.name, c.resumed, c.of, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "through {}, some connections did not resume:\n{table}\n{}",
        target.name,
        failed.join("\n")
    );
}

/// A chain of [`CHAIN`] connections by one of the client programs: every connection after the
/// first counts as resumed when both the client's TLS stack and the responder's body say so.
fn program_chain(target: &Target, client: &str, tls: &str, mode: &str) -> Chain {
    let run = program(
        client,
        &[target.addr.to_string()],
        &target.ca(),
        tls,
        mode,
        CHAIN,
    );
    Chain {
        name: format!("{client} TLS {tls} {mode}"),
        resumed: run.resumed_after_first(),
        of: CHAIN - 1,
        detail: run.detail,
    }
}

/// Go (whose TLS 1.2 client resumes with tickets alone: the defaults' TLS 1.2 tickets), Node
/// and Python, each closing in every way: close_notify then FIN, FIN alone, RST, and the server
/// closing first.
fn program_chains(target: &Target) -> Vec<Chain> {
    require("node", "--version", "nodejs");
    require("python3", "--version", "python3");
    let modes = ["notify", "fin", "rst", "server"];
    let mut chains = Vec::new();
    for client in ["go", "node", "python"] {
        for tls in ["1.2", "1.3"] {
            for mode in modes {
                chains.push(program_chain(target, client, tls, mode));
            }
        }
    }
    chains
}

/// `openssl s_client`: a chain through a session file. HTTP/1.0, so the server closes first.
fn s_client_chain(target: &Target, tls: &str) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let sess = path_in(dir.path(), "sess.pem");
    let ca = target.ca();
    let addr = target.addr.to_string();
    let version = format!("-tls{}", tls.replace('.', "_"));
    let (mut resumed, mut detail) = (0, String::new());
    for i in 0..CHAIN {
        let mut args = vec![
            "-connect",
            addr.as_str(),
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-verify_return_error",
            &version,
            "-ign_eof",
            "-sess_out",
            &sess,
        ];
        if i > 0 {
            args.extend(["-sess_in", sess.as_str()]);
        }
        let out = s_client(&args, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let reused = reuse_words(&out) == ["Reused"] && out.contains("resumed: yes") && i > 0;
        resumed += usize::from(reused);
        let _ = writeln!(detail, "{i}: {:?}", reuse_words(&out));
    }
    Chain {
        name: format!("s_client TLS {tls} server"),
        resumed,
        of: CHAIN - 1,
        detail,
    }
}

/// `openssl s_time -reuse` for one second: every connection reuses the first one's session
/// (`r` per resumed connection, `*` per full one). Without `-www` the client closes right
/// after the handshake, without close_notify (TLS 1.2 only: it would never read a TLS 1.3
/// ticket); with `-www` it reads the response and the server closes.
fn s_time_chain(target: &Target, tls: &str, www: bool) -> Chain {
    let addr = target.addr.to_string();
    let version = format!("-tls{}", tls.replace('.', "_"));
    let mut args = vec![
        "s_time", "-connect", &addr, "-reuse", &version, "-time", "1",
    ];
    if www {
        args.extend(["-www", "/"]);
    }
    let out = run("openssl", &args, b"");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The marks follow the line "starting".
    let marks: String = stdout
        .lines()
        .skip_while(|l| *l != "starting")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    let valid = out.status.success() && marks.chars().all(|c| "rt3*".contains(c));
    let resumed = marks.chars().filter(|c| *c == 'r').count();
    let of = marks.chars().count();
    Chain {
        name: format!(
            "s_time -reuse TLS {tls} {}",
            if www { "-www (server)" } else { "(no notify)" }
        ),
        resumed: if valid { resumed } else { 0 },
        // A second's run makes hundreds; fewer than a chain's worth means something broke.
        of: of.max(CHAIN - 1),
        detail: format!(
            "marks: {}\n{}",
            marks.chars().take(200).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `gnutls-cli --resume`: a full handshake closed with close_notify, then one resumption of
/// it whose request asks the server to close; five runs make a chain's five resumptions.
fn gnutls_chain(target: &Target, tls: &str) -> Chain {
    let ca = target.ca();
    let port = target.port();
    let priority = format!("NORMAL:-VERS-ALL:+VERS-TLS{tls}");
    let mut args = vec![
        "--resume",
        "--x509cafile",
        &ca,
        "--priority",
        &priority,
        "-p",
        &port,
        "localhost",
    ];
    if tls == "1.3" {
        // Waits for the ticket before the first connection closes.
        args.push("--waitresumption");
    }
    let (mut resumed, mut detail) = (0, String::new());
    for i in 0..CHAIN - 1 {
        let out = run(
            "gnutls-cli",
            &args,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ok =
            stdout.contains("*** This is a resumed session") && stdout.contains("resumed: yes");
        resumed += usize::from(ok);
        if !ok {
            let _ = writeln!(
                detail,
                "run {i}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Chain {
        name: format!("gnutls-cli --resume TLS {tls} server"),
        resumed,
        of: CHAIN - 1,
        detail,
    }
}

/// curl: one process, the same URL [`CHAIN`] times, `Connection: close` so that the server
/// closes each connection and curl resumes on the next.
fn curl_chain(target: &Target, tls: &str) -> Chain {
    let ca = target.ca();
    let url = format!("https://localhost:{}/", target.port());
    let resolve = format!("localhost:{}:127.0.0.1", target.port());
    let (min, max) = (format!("--tlsv{tls}"), tls.to_owned());
    let mut args = vec![
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &min,
        "--tls-max",
        &max,
        "-H",
        "Connection: close",
    ];
    args.extend(std::iter::repeat_n(url.as_str(), CHAIN));
    let out = run("curl", &args, b"");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (yes, no) = (
        stdout.matches("resumed: yes").count(),
        stdout.matches("resumed: no").count(),
    );
    let valid = out.status.success() && yes + no == CHAIN;
    Chain {
        name: format!("curl TLS {tls} server"),
        resumed: if valid { yes } else { 0 },
        of: CHAIN - 1,
        detail: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// The tools that open their own connections: s_client, s_time, gnutls-cli, curl.
fn tool_chains(target: &Target) -> Vec<Chain> {
    require("gnutls-cli", "--version", "gnutls-bin");
    require("curl", "--version", "curl");
    let mut chains = Vec::new();
    for tls in ["1.2", "1.3"] {
        chains.push(s_client_chain(target, tls));
        chains.push(gnutls_chain(target, tls));
        chains.push(curl_chain(target, tls));
        chains.push(s_time_chain(target, tls, true));
    }
    chains.push(s_time_chain(target, "1.2", false));
    chains
}

#[test]
fn client_programs_resume_however_they_close() {
    let target = Target::alone();
    let chains = program_chains(&target);
    assert_all_resumed(&target, &chains);
}

#[test]
fn client_programs_resume_however_they_close_across_a_fleet() {
    let target = Target::fleet();
    let chains = program_chains(&target);
    assert_all_resumed(&target, &chains);
}

#[test]
fn openssl_gnutls_and_curl_resume() {
    let target = Target::alone();
    let chains = tool_chains(&target);
    assert_all_resumed(&target, &chains);
}

#[test]
fn openssl_gnutls_and_curl_resume_across_a_fleet() {
    let target = Target::fleet();
    let chains = tool_chains(&target);
    assert_all_resumed(&target, &chains);
}
