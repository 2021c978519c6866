//! Black-box tests of `reprise bench`: the real binary against a real `reprise serve` on a free
//! loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{free_port, reprise, Server};
use reprise_testkit::Pki;
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    reprise()
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `bench --json` with `args` and returns its one JSON object, checking that stdout holds
/// nothing else.
fn bench_json(args: &[&str]) -> (Output, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = bench(&all);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(value.is_object(), "{stdout}");
    (out, value)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// `bench --json` against `addr` (server name localhost, `--insecure`) with TLS `tls`, and
/// `extra` flags.
fn bench_localhost(addr: &str, tls: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "--connect",
        addr,
        "--server-name",
        "localhost",
        "--insecure",
        "--tls",
        tls,
    ];
    args.extend_from_slice(extra);
    bench_json(&args)
}

/// `bench --json` against `addr` (server name localhost, `--insecure`): `connections` over
/// `concurrency` workers.
fn bench_against(
    addr: &str,
    tls: &str,
    mode: &str,
    connections: &str,
    concurrency: &str,
) -> (Output, Value) {
    bench_localhost(
        addr,
        tls,
        &[
            "--mode",
            mode,
            "--connections",
            connections,
            "--concurrency",
            concurrency,
        ],
    )
}

/// 20 connections over 4 workers against `server`, with `--insecure`.
fn run_20(server: &Server, tls: &str, mode: &str) -> Value {
    let (out, report) = bench_against(&server.connect_arg(), tls, mode, "20", "4");
    assert!(out.status.success(), "{report}\n{}", stderr(&out));
    assert_eq!(report["tls"], tls);
    assert_eq!(report["mode"], mode);
    assert_eq!(count(&report, "concurrency"), 4);
    assert_eq!(count(&report, "handshakes"), 20, "{report}");
    assert_eq!(count(&report, "failures"), 0, "{report}");
    assert_eq!(count(&report, "unclean_closes"), 0, "{report}");
    for key in ["p50", "p90", "p99", "max"] {
        assert!(
            report["latency_ms"][key]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{key}: {report}"
        );
    }
    let (p50, max) = (&report["latency_ms"]["p50"], &report["latency_ms"]["max"]);
    assert!(p50.as_f64() <= max.as_f64(), "{report}");
    assert!(report["elapsed_secs"].as_f64().is_some_and(|s| s > 0.0));
    assert!(report["handshakes_per_sec"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    report
}

#[test]
fn resume_mode_resumes_all_but_each_workers_first_handshake() {
    let server = Server::start(&[]);
    // TLS 1.2 resumes by session id, TLS 1.3 by (single-use, stateful) ticket.
    for tls in ["1.2", "1.3"] {
        let report = run_20(&server, tls, "resume");
        assert_eq!(count(&report, "resumed"), 20 - 4, "TLS {tls}: {report}");
        assert_eq!(report["resumed_share"].as_f64(), Some(0.8), "{report}");
    }
}

#[test]
fn resume_mode_resumes_with_stateless_tickets() {
    let server = Server::start(&["--tickets", "stateless"]);
    let report = run_20(&server, "1.3", "resume");
    assert_eq!(count(&report, "resumed"), 20 - 4, "{report}");
}

/// The server's count of closes without close_notify, once it has reached `value` (or after
/// 10 s): the server may see the last connection's end after the client has returned.
fn closes_without_close_notify(server: &Server, value: u64) -> u64 {
    let name = "reprise_closes_without_close_notify_total";
    let mut last = server.metric(name);
    for _ in 0..400 {
        if last >= value {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
        last = server.metric(name);
    }
    last
}

#[test]
fn abrupt_closes_skip_close_notify_and_sessions_still_resume() {
    let server = Server::start(&[]);
    let addr = server.connect_arg();
    let mut expected = 0;
    // TLS 1.2: half the connections, every second one of each worker. TLS 1.3: all of them, so
    // each resumption rests on a ticket read by a connection that ended abruptly.
    for (tls, share, connections, workers, abrupt) in
        [("1.2", "0.5", 20, 2, 10), ("1.3", "1", 10, 1, 10)]
    {
        let (out, report) = bench_localhost(
            &addr,
            tls,
            &[
                "--connections",
                &connections.to_string(),
                "--concurrency",
                &workers.to_string(),
                "--abrupt",
                share,
            ],
        );
        assert!(out.status.success(), "{report}\n{}", stderr(&out));
        assert_eq!(
            count(&report, "handshakes"),
            connections,
            "TLS {tls}: {report}"
        );
        assert_eq!(count(&report, "failures"), 0, "TLS {tls}: {report}");
        // Each worker closes every second of its own connections abruptly; the workers take
        // connections from one counter, so a worker with an odd count moves the total by one.
        let closed = count(&report, "abrupt_closes");
        let slack = workers - 1;
        assert!(
            (abrupt - slack..=abrupt + slack).contains(&closed),
            "TLS {tls}: {closed} abrupt closes, expected {abrupt} ± {slack}: {report}"
        );
        assert_eq!(count(&report, "unclean_closes"), 0, "TLS {tls}: {report}");
        assert_eq!(
            count(&report, "resumed"),
            connections - workers,
            "TLS {tls}: every connection but each worker's first resumes: {report}"
        );
        expected += closed;
        assert_eq!(
            closes_without_close_notify(&server, expected),
            expected,
            "TLS {tls}"
        );
    }
    // The abrupt closes are not failures: the sessions were kept, none was removed.
    assert_eq!(server.metric("reprise_unclean_shutdowns_total"), 0);
}

#[test]
fn full_mode_never_resumes() {
    let server = Server::start(&[]);
    for tls in ["1.2", "1.3"] {
        let report = run_20(&server, tls, "full");
        assert_eq!(count(&report, "resumed"), 0, "TLS {tls}: {report}");
        assert_eq!(report["resumed_share"].as_f64(), Some(0.0), "{report}");
    }
}

#[test]
fn human_output_is_a_table() {
    let server = Server::start(&[]);
    let addr = server.connect_arg();
    let out = bench(&[
        "--connect",
        &addr,
        "--server-name",
        "localhost",
        "--insecure",
        "--connections",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "connections",
        "failures",
        "elapsed",
        "handshakes/s",
        "resumed",
        "latency p50",
        "latency p90",
        "latency p99",
        "latency max",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    // 3 connections, 1 worker: the first is full, the others resume.
    assert!(text.contains("66.7 % (2)"), "{text}");
}

#[test]
fn ca_bundle_verifies_the_server_certificate() {
    let pki = Pki::new().write_pem();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    let other_pki = Pki::new().write_pem();
    let other = other_pki.path("ca.pem");
    let server = Server::start(&["--cert", &cert, "--key", &key]);
    let addr = server.connect_arg();
    let args = |ca: &str| {
        vec![
            "--connect".to_owned(),
            addr.clone(),
            "--server-name".to_owned(),
            "localhost".to_owned(),
            "--ca".to_owned(),
            ca.to_owned(),
            "--connections".to_owned(),
            "4".to_owned(),
        ]
    };

    let trusted = args(&ca);
    let (out, report) = bench_json(&trusted.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{report}\n{}", stderr(&out));
    assert_eq!(count(&report, "handshakes"), 4, "{report}");

    // Another CA: every handshake fails on the certificate, and the run fails.
    let untrusted = args(&other);
    let (out, report) = bench_json(&untrusted.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(count(&report, "handshakes"), 0, "{report}");
    assert_eq!(count(&report, "failures"), 4, "{report}");
    let err = stderr(&out);
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[test]
fn nothing_listening_counts_failures_and_exits_1() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (out, report) = bench_json(&[
        "--connect",
        &addr,
        "--insecure",
        "--connections",
        "5",
        "--concurrency",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(count(&report, "handshakes"), 0, "{report}");
    assert_eq!(count(&report, "failures"), 5, "{report}");
    assert_eq!(
        report["failure_reasons"]["connect: connection refused"].as_u64(),
        Some(5),
        "{report}"
    );
    assert!(report["latency_ms"].is_null(), "{report}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn cipher_suite_offers_only_the_suites_named() {
    // The server prefers the SHA-256 suites: a SHA-384 suite is chosen only when nothing else is
    // offered. Which one was negotiated, the access log says.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = Server::start(&["--access-log", log.to_str().unwrap()]);
    let suites = [
        ("1.3", "TLS13_AES_256_GCM_SHA384"),
        ("1.2", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    ];
    for (tls, suite) in suites {
        let (out, report) = bench_localhost(
            &server.connect_arg(),
            tls,
            &["--connections", "3", "--cipher-suite", suite],
        );
        assert!(out.status.success(), "{report}\n{}", stderr(&out));
        assert_eq!(count(&report, "handshakes"), 3, "{report}");
        assert_eq!(count(&report, "resumed"), 2, "{report}");
    }
    // The harness's readiness probe logs a failed handshake, with no cipher.
    let negotiated = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("cipher=")))
            .filter(|c| *c != "-")
            .map(str::to_owned)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (text, ciphers) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ciphers = negotiated(&text);
        if ciphers.len() >= 6 || std::time::Instant::now() > deadline {
            break (text, ciphers);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let expected: Vec<&str> = suites.iter().flat_map(|(_, s)| [*s; 3]).collect();
    assert_eq!(ciphers, expected, "{text}");

    let addr = server.connect_arg();
    let err = startup_error(&[
        "--connect",
        &addr,
        "--insecure",
        "--cipher-suite",
        "TLS13_ROT13",
    ]);
    assert!(
        err.contains("--cipher-suite TLS13_ROT13") && err.contains("TLS13_AES_128_GCM_SHA256"),
        "{err}"
    );
    let err = startup_error(&[
        "--connect",
        &addr,
        "--insecure",
        "--tls",
        "1.2",
        "--cipher-suite",
        suites[0].1,
    ]);
    assert!(err.contains("none of the suites named"), "{err}");
}

/// Runs `bench` with `args` and checks it fails at start: exit code 2, one line on stderr,
/// nothing on stdout. Returns the line.
fn startup_error(args: &[&str]) -> String {
    let out = bench(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    err
}

#[test]
fn bad_flags_are_startup_errors() {
    // Nothing needs to listen: these fail before connecting.
    let addr = format!("127.0.0.1:{}", free_port());
    let err = startup_error(&["--connect", &addr]);
    assert!(err.contains("give --ca FILE or --insecure"), "{err}");

    let missing = Path::new("/nonexistent/reprise-ca.pem").to_str().unwrap();
    let err = startup_error(&["--connect", &addr, "--ca", missing]);
    assert!(err.contains("cannot read CA file"), "{err}");

    let err = startup_error(&["--connect", &addr, "--insecure", "--concurrency", "0"]);
    assert!(err.contains("--concurrency"), "{err}");

    let err = startup_error(&["--connect", &addr, "--insecure", "--duration=0"]);
    assert!(err.contains("--duration"), "{err}");

    for bad in ["1.5", "-0.5", "NaN", "half"] {
        let flag = format!("--abrupt={bad}");
        let err = startup_error(&["--connect", &addr, "--insecure", &flag]);
        assert!(err.contains("--abrupt"), "{err}");
    }

    let err = startup_error(&["--connect", "no-port-here", "--insecure"]);
    assert!(err.contains("cannot resolve"), "{err}");
}

/// `openssl s_server`, killed when dropped.
struct OpensslServer(std::process::Child);

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn resumes_against_openssl_s_server() {
    use std::io::BufRead;
    let pki = Pki::new().write_pem();
    for tls in ["1.2", "1.3"] {
        let port = free_port();
        // Ten connections, then s_server exits; its own session cache (and, for TLS 1.3, its
        // tickets) resume every connection of the single worker but the first.
        let mut child = std::process::Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args([
                "-cert",
                &pki.path("server.pem"),
                "-key",
                &pki.path("server.key"),
            ])
            .args(["-www", "-naccept", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let server = OpensslServer(child);
        let (ready, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("ACCEPT") {
                    let _ = ready.send(());
                }
            }
        });
        listening
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("s_server did not start listening");
        let addr = format!("127.0.0.1:{port}");
        let (out, report) = bench_against(&addr, tls, "resume", "10", "1");
        assert!(out.status.success(), "{report}\n{}", stderr(&out));
        assert_eq!(count(&report, "handshakes"), 10, "TLS {tls}: {report}");
        assert_eq!(count(&report, "failures"), 0, "TLS {tls}: {report}");
        assert_eq!(count(&report, "resumed"), 9, "TLS {tls}: {report}");
        // s_server answers the client's close_notify with its own.
        assert_eq!(count(&report, "unclean_closes"), 0, "TLS {tls}: {report}");
        drop(server);
    }
}
