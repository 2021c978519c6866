//! Black-box tests of what operators run `reprise serve` with: the access log (text and JSON,
//! to a file or the standard output, for completed and failed handshakes), `reprise
//! check-config`, `/healthz` readiness, and the bad input of their flags.
//!
//! Every wait is a bounded poll; nothing asserts how long anything took.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::program;
use common::{
    fails_to_start, fleet_flags, free_port, http_get, keygen, path_in, reprise, request, Server,
};
use reprise_testkit::{Pki, RedisServer};

/// The lines of a log file, once `count` are there (at most 20 s).
fn lines_when(path: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{count} lines expected in the access log, got: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A text line's fields, by name (the time is `time`).
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    let mut parts = line.split(' ');
    let mut map = std::collections::HashMap::new();
    map.insert("time".to_owned(), parts.next().unwrap().to_owned());
    for part in parts {
        let (k, v) = part.split_once('=').unwrap_or_else(|| panic!("{line}"));
        map.insert(k.to_owned(), v.to_owned());
    }
    map
}

/// Checks an RFC 3339 UTC time with milliseconds: `2026-12-03T14:39:15.123Z`.
fn is_rfc3339(time: &str) -> bool {
    let b = time.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && time
            .bytes()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// One connection as the access log says, whatever the format.
#[derive(Debug)]
struct Line {
    time: String,
    client: String,
    sni: Option<String>,
    version: Option<String>,
    cipher: Option<String>,
    resumed: String,
    from: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    end: String,
    error: Option<String>,
}

/// The lines of connections that failed their handshake, and the others.
fn completed(lines: Vec<Line>) -> (Vec<Line>, Vec<Line>) {
    lines.into_iter().partition(|l| l.end == "handshake_failed")
}

fn parse_text(line: &str) -> Line {
    let f = fields(line);
    let opt = |k: &str| Some(f[k].clone()).filter(|v| v != "-");
    assert!(f.contains_key("handshake_ms"), "{line}");
    assert!(
        f["handshake_ms"].parse::<f64>().is_ok_and(|ms| ms >= 0.0),
        "{line}"
    );
    Line {
        time: f["time"].clone(),
        client: f["client"].clone(),
        sni: opt("sni"),
        version: opt("version"),
        cipher: opt("cipher"),
        resumed: f["resumed"].clone(),
        from: opt("from"),
        bytes_in: f["bytes_in"].parse().unwrap(),
        bytes_out: f["bytes_out"].parse().unwrap(),
        end: f["end"].clone(),
        error: opt("error"),
    }
}

fn parse_json(line: &str) -> Line {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    assert!(
        v["handshake_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert_eq!(v.as_object().unwrap().len(), 12, "{line}");
    Line {
        time: s("time").unwrap(),
        client: s("client").unwrap(),
        sni: s("sni"),
        version: s("version"),
        cipher: s("cipher"),
        resumed: s("resumed").unwrap(),
        from: s("from"),
        bytes_in: v["bytes_in"].as_u64().unwrap(),
        bytes_out: v["bytes_out"].as_u64().unwrap(),
        end: s("end").unwrap(),
        error: s("error"),
    }
}

/// The s_client requests of the access-log tests: TLS 1.2 by session id and by stateless
/// ticket (the default `--tickets auto`), TLS 1.3 by stateful ticket; each a full handshake
/// then a resumption.
fn s_client_pairs(server: &Server, dir: &std::path::Path) -> Vec<(&'static str, &'static str)> {
    let cases = [
        ("-tls1_2", Some("-no_ticket"), "session_id"),
        ("-tls1_2", None, "stateless_ticket"),
        ("-tls1_3", None, "stateful_ticket"),
    ];
    let mut expected = Vec::new();
    for (i, (version, extra, how)) in cases.into_iter().enumerate() {
        let sess = path_in(dir, &format!("sess{i}"));
        let mut first = vec![version, "-sess_out", sess.as_str()];
        first.extend(extra);
        assert_eq!(request(server, &first), "New");
        let mut second = vec![version, "-sess_in", sess.as_str()];
        second.extend(extra);
        assert_eq!(request(server, &second), "Reused", "{how}");
        let v = if version == "-tls1_2" {
            "TLSv1.2"
        } else {
            "TLSv1.3"
        };
        expected.push((v, "full"));
        expected.push((v, how));
    }
    expected
}

fn check_s_client_lines(lines: &[Line], expected: &[(&str, &str)]) {
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (version, how)) in lines.iter().zip(expected) {
        assert!(is_rfc3339(&line.time), "{line:?}");
        assert!(line.client.starts_with("127.0.0.1:"), "{line:?}");
        assert_eq!(line.sni.as_deref(), Some("localhost"), "{line:?}");
        assert_eq!(line.version.as_deref(), Some(*version), "{line:?}");
        let cipher = line.cipher.as_deref().unwrap_or_default();
        assert!(
            cipher.starts_with("TLS13_") == (*version == "TLSv1.3") && cipher.starts_with("TLS"),
            "{line:?}"
        );
        assert_eq!(line.resumed, *how, "{line:?}");
        // Sessions of the cache come from memory here (no tier); tickets carry theirs.
        let from = matches!(*how, "session_id" | "stateful_ticket").then_some("memory");
        assert_eq!(line.from.as_deref(), from, "{line:?}");
        // One HTTP/1.0 request, answered, then the server closes (with close_notify).
        assert!(line.bytes_in >= 18 && line.bytes_out > 100, "{line:?}");
        assert_eq!(line.end, "server_close", "{line:?}");
        assert_eq!(line.error, None, "{line:?}");
    }
}

/// Full and resumed handshakes of `openssl s_client`, TLS 1.2 and 1.3, in both formats; then a
/// Python client that resets its connections, and one that closes with a FIN only.
#[test]
fn access_log_lines_for_full_and_resumed_handshakes() {
    let pki = Pki::new().write_pem();
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let log = path_in(dir.path(), "access.log");
        let server = Server::start(&[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
            "--access-log",
            &log,
            "--access-log-format",
            format,
        ]);
        let parse = |l: &String| {
            if format == "json" {
                parse_json(l)
            } else {
                assert!(!l.starts_with('{'), "{l}");
                parse_text(l)
            }
        };
        let expected = s_client_pairs(&server, dir.path());
        // The harness's probe of the start (a connection without a hello) comes first.
        let all: Vec<Line> = lines_when(&log, expected.len() + 1)
            .iter()
            .map(parse)
            .collect();
        let (probe, lines) = completed(all);
        assert_eq!(probe.len(), 1, "{probe:#?}");
        check_s_client_lines(&lines, &expected);

        // Python's `ssl`, resumed, closing abruptly: a reset, then a FIN without close_notify.
        let addr = [server.connect_arg()];
        for mode in ["rst", "fin"] {
            let run = program("python", &addr, &pki.path("ca.pem"), "1.3", mode, 2);
            assert_eq!(run.resumed_after_first(), 1, "{}", run.detail);
        }
        let all: Vec<Line> = lines_when(&log, expected.len() + 5)
            .iter()
            .map(parse)
            .collect();
        let (_, lines) = completed(all);
        let python = &lines[expected.len()..];
        assert_eq!(python.len(), 4, "{python:#?}");
        for (i, line) in python.iter().enumerate() {
            let (how, end) = match i {
                0 => ("full", "reset"),
                1 => ("stateful_ticket", "reset"),
                2 => ("full", "eof"),
                _ => ("stateful_ticket", "eof"),
            };
            assert_eq!(line.resumed, how, "{line:?}");
            assert_eq!(line.end, end, "{line:?}");
            assert_eq!(line.version.as_deref(), Some("TLSv1.3"), "{line:?}");
            assert!(line.bytes_in > 0 && line.bytes_out > 0, "{line:?}");
        }
        assert_eq!(server.metric("reprise_access_log_dropped_total"), 0);
        assert!(server.terminate().success());
    }
}

/// Connections that never complete a handshake get a line too, with the reason.
#[test]
fn access_log_lines_for_failed_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let log = path_in(dir.path(), "access.log");
    let server = Server::start(&["--access-log", &log, "--access-log-format", "json"]);
    // The harness's probe of the start: a connection closed without a hello.
    let probe = parse_json(&lines_when(&log, 1)[0]);
    // Not TLS at all.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = tcp.read_to_end(&mut Vec::new());
    let not_tls = parse_json(&lines_when(&log, 2)[1]);
    // A client that goes away before its hello is complete.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).unwrap();
    drop(tcp);
    let gone = parse_json(&lines_when(&log, 3)[2]);
    for (line, error) in [
        (&probe, "eof"),
        (&not_tls, "invalid_message"),
        (&gone, "eof"),
    ] {
        assert_eq!(line.end, "handshake_failed", "{line:?}");
        assert_eq!(line.error.as_deref(), Some(error), "{line:?}");
        assert_eq!(line.resumed, "none", "{line:?}");
        assert_eq!((line.version.as_deref(), line.sni.as_deref()), (None, None));
        assert!(line.client.starts_with("127.0.0.1:"), "{line:?}");
    }
}

/// `--access-log -` writes the lines to the standard output. Under a service manager
/// (`$NOTIFY_SOCKET`), the server says `READY=1` once it serves and `STOPPING=1` at SIGTERM.
#[test]
fn access_log_to_stdout_and_readiness_notification() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = path_in(dir.path(), "stdout");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let mut child = reprise()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--access-log", "-"])
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut datagram = [0u8; 64];
    let n = notify.recv(&mut datagram).unwrap();
    assert_eq!(&datagram[..n], b"READY=1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = common::s_client(
        &[
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-ign_eof",
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    // The probe of the start (no hello), then the request.
    let lines: Vec<Line> = lines_when(&stdout, 2)
        .iter()
        .map(|l| parse_text(l))
        .collect();
    let (_, done) = completed(lines);
    assert_eq!(done.len(), 1, "{done:#?}");
    let last = &done[0];
    assert_eq!(last.resumed, "full", "{last:?}");
    assert_eq!(last.sni.as_deref(), Some("localhost"), "{last:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = notify.recv(&mut datagram).unwrap();
    assert_eq!(&datagram[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// `reprise check-config`: "config ok" and exit 0 for good settings (Redis unreachable), one
/// line and exit 2 for each problem, every file loaded as `serve` loads it.
#[test]
fn check_config_loads_every_file() {
    let pki = Pki::new().write_pem();
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "seal.keys");
    std::fs::write(&keys, keygen("k1") + "\n").unwrap();
    let ticket_keys = path_in(dir.path(), "tickets.keys");
    std::fs::write(&ticket_keys, keygen("t1") + "\n").unwrap();
    let bad_pem = path_in(dir.path(), "bad.pem");
    std::fs::write(&bad_pem, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let cache_dir = path_in(dir.path(), "cache");
    let log = path_in(dir.path(), "access.log");
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let config = path_in(dir.path(), "reprise.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:1\"]\ncert = {cert:?}\nkey = {key:?}\nclient-ca = {ca:?}\n\
             redis = \"redis://127.0.0.1:1\"\nkey-file = {keys:?}\ncache-dir = {cache_dir:?}\n\
             access-log = {log:?}\naccess-log-format = \"json\"\n"
        ),
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let out = reprise()
            .arg("check-config")
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, "config ok\n");
    };
    ok(&["--config", &config]);
    ok(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--ticket-keys",
        &ticket_keys,
    ]);
    ok(&[]);
    // Nothing was opened but the access log: the disk tier's directory is untouched.
    assert!(!std::path::Path::new(&cache_dir).exists());

    let missing = path_in(dir.path(), "missing.pem");
    let other_key = pki.path("other.key");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cert", &missing, "--key", &key], "missing.pem"),
        (vec!["--cert", &bad_pem, "--key", &key], "bad.pem"),
        (vec!["--cert", &cert, "--key", &other_key], "key"),
        (vec!["--client-ca", &bad_pem], "bad.pem"),
        (vec!["--ticket-keys", &bad_pem], "ticket-keys"),
        (
            vec!["--redis", "redis://127.0.0.1:1", "--key-file", &missing],
            "key-file",
        ),
        (vec!["--access-log", "/nonexistent-dir/a.log"], "access-log"),
        (vec!["--access-log-format", "json"], "access-log-format"),
        (vec!["--config", &missing], "missing.pem"),
        (vec!["--upstream", "no-port"], "upstream"),
        (
            vec!["--pid-file", "/nonexistent-dir/reprise.pid"],
            "pid-file",
        ),
    ];
    for (args, named) in cases {
        let line = fails_to_start(&[&["check-config"][..], &args].concat());
        assert!(line.contains(named), "{args:?}: {line}");
    }
}

/// `/healthz` is 503 until the listeners serve, then 200. The start is held by a fleet ticket
/// ring whose Redis never answers (the server waits for it a few seconds): the statuses seen
/// must go from 503 to 200, never back.
#[test]
fn healthz_is_ready_once_the_listeners_serve() {
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "seal.keys");
    std::fs::write(&keys, keygen("k1") + "\n").unwrap();
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let server = Server::start(&["--redis", &url, "--key-file", &keys]);
    let metrics = server.metrics.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http_get(metrics, "/healthz");
        let status = response.split(' ').nth(1).unwrap_or_default().to_owned();
        assert!(
            (status == "503" && response.ends_with("starting\n"))
                || (status == "200" && response.ends_with("ok\n")),
            "{response}"
        );
        seen.push(status.clone());
        if status == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ready: it stays so, and the TLS listener serves.
    for _ in 0..3 {
        assert!(http_get(metrics, "/healthz").starts_with("HTTP/1.1 200 "));
    }
    assert_eq!(request(&server, &[]), "New");
    drop(silent);
}

/// Every new flag, wrong: one line naming it, exit 2.
#[test]
fn bad_access_log_flags_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let unwritable = "/nonexistent-dir/access.log";
    let line = fails_to_start(&["serve", "--access-log", unwritable]);
    assert!(
        line.contains("access-log") && line.contains(unwritable),
        "{line}"
    );
    let line = fails_to_start(&["serve", "--access-log", "-", "--access-log-format", "xml"]);
    assert!(line.contains("xml"), "{line}");
    let line = fails_to_start(&["serve", "--access-log-format", "json"]);
    assert!(
        line.contains("access-log-format needs access-log"),
        "{line}"
    );
    let line = fails_to_start(&["serve", "--access-log", ""]);
    assert!(line.contains("access-log"), "{line}");
    let config = path_in(dir.path(), "bad.toml");
    std::fs::write(
        &config,
        "access-log = \"-\"\naccess-log-format = \"yaml\"\n",
    )
    .unwrap();
    let line = fails_to_start(&["serve", "--config", &config]);
    assert!(
        line.contains("yaml") || line.contains("access-log-format"),
        "{line}"
    );
    let line = fails_to_start(&["check-config", "--access-log-format", "xml"]);
    assert!(line.contains("xml"), "{line}");
}

/// Two instances sharing sessions through a real Redis: a session made on one and resumed on
/// the other was brought from the tier (TLS 1.2 by session id, TLS 1.3 by stateful ticket); a
/// resumption on the instance that made it, from memory.
#[test]
fn access_log_says_when_a_session_came_from_the_tier() {
    let redis = RedisServer::start();
    let url = redis.url();
    let pki = Pki::new().write_pem();
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "seal.keys");
    std::fs::write(&keys, keygen("k1") + "\n").unwrap();
    let logs = [path_in(dir.path(), "a.log"), path_in(dir.path(), "b.log")];
    let start = |log: &str| {
        let mut args = vec![
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
            "--tickets",
            "stateful",
            "--access-log",
            log,
            "--access-log-format",
            "json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(fleet_flags(&url, &keys).map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&args)
    };
    let (a, b) = (start(&logs[0]), start(&logs[1]));
    let mut on_b = 0;
    for (i, version) in ["-tls1_2", "-tls1_3"].into_iter().enumerate() {
        let sess = path_in(dir.path(), &format!("sess{i}"));
        assert_eq!(request(&a, &[version, "-sess_out", &sess]), "New");
        // The session reaches Redis in the background: poll until B resumes it (bounded).
        let mut resumed = false;
        for _ in 0..50 {
            let tmp = path_in(dir.path(), &format!("retry{i}"));
            std::fs::copy(&sess, &tmp).unwrap();
            on_b += 1;
            if request(&b, &[version, "-sess_in", &tmp]) == "Reused" {
                resumed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(resumed, "{version}: never resumed on the other instance");
    }
    // Each request on B, and the harness's probe.
    let (_, on_b) = completed(
        lines_when(&logs[1], on_b + 1)
            .iter()
            .map(|l| parse_json(l))
            .collect(),
    );
    let tier: Vec<_> = on_b
        .iter()
        .filter(|l| l.from.as_deref() == Some("tier"))
        .map(|l| (l.version.clone().unwrap_or_default(), l.resumed.clone()))
        .collect();
    assert_eq!(
        tier,
        [
            ("TLSv1.2".to_owned(), "session_id".to_owned()),
            ("TLSv1.3".to_owned(), "stateful_ticket".to_owned())
        ],
        "{on_b:#?}"
    );
}

/// The systemd unit of `contrib/` runs commands this binary accepts: its `ExecStartPre` and
/// `ExecStart` command lines, with a real settings file, pass `check-config`.
#[test]
fn the_systemd_unit_runs_valid_commands() {
    let unit_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/reprise.service");
    let unit = std::fs::read_to_string(unit_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = path_in(dir.path(), "reprise.toml");
    std::fs::write(&config, "listen = [\"127.0.0.1:1\"]\n").unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(value("Type"), ["notify"]);
    assert_eq!(value("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    let commands: Vec<String> = value("ExecStartPre")
        .into_iter()
        .chain(value("ExecStart"))
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    for command in commands {
        let mut words = command.split(' ');
        assert_eq!(words.next(), Some("/usr/local/bin/reprise"), "{command}");
        let args: Vec<&str> = words
            .map(|w| match w {
                "serve" => "check-config",
                "/etc/reprise/reprise.toml" => config.as_str(),
                w => w,
            })
            .collect();
        let out = reprise().args(&args).output().unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(0), &b"config ok\n"[..]),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// With `--upstream`, the bytes counted are those the proxy moves each way.
#[test]
fn access_log_counts_what_the_proxy_moves() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = backend.local_addr().unwrap().to_string();
    // Reads the 6 bytes sent, answers 11, and closes.
    let served = std::thread::spawn(move || {
        let (mut tcp, _) = backend.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = [0u8; 6];
        tcp.read_exact(&mut got).unwrap();
        tcp.write_all(b"hello back\n").unwrap();
        got
    });
    let dir = tempfile::tempdir().unwrap();
    let log = path_in(dir.path(), "access.log");
    let server = Server::start(&["--upstream", &upstream, "--access-log", &log]);
    let out = common::s_client(
        &[
            "-connect",
            &server.connect_arg(),
            "-servername",
            "localhost",
            "-ign_eof",
        ],
        b"hello\n",
    );
    assert!(out.contains("hello back"), "{out}");
    assert_eq!(&served.join().unwrap(), b"hello\n");
    let all: Vec<Line> = lines_when(&log, 2).iter().map(|l| parse_text(l)).collect();
    let (_, done) = completed(all);
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!((done[0].bytes_in, done[0].bytes_out), (6, 11), "{done:#?}");
    assert_eq!(done[0].end, "close_notify", "{done:#?}");
}

/// Log rotation: after the file is moved away, SIGHUP makes the server write to a new file at
/// the old path; the moved file keeps the lines written before.
#[test]
fn access_log_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let log = path_in(dir.path(), "access.log");
    let rotated = path_in(dir.path(), "access.log.1");
    let server = Server::start(&["--access-log", &log]);
    assert_eq!(request(&server, &[]), "New");
    // The harness's probe and the request.
    lines_when(&log, 2);
    std::fs::rename(&log, &rotated).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The signal is handled in the background: request until a line reaches the new file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut requests = 0;
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "no new access log");
        assert_eq!(request(&server, &[]), "New");
        requests += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(requests >= 1);
    let before: Vec<Line> = lines_when(&rotated, 2)
        .iter()
        .map(|l| parse_text(l))
        .collect();
    // The request before the rotation (and maybe some made before the signal was handled).
    let (_, done) = completed(before);
    assert!(!done.is_empty());
    let after = parse_text(&lines_when(&log, 1)[0]);
    assert_eq!(after.resumed, "full", "{after:?}");
}
