//! Black-box test harness: runs the real `reprise` binary on free loopback ports, and real
//! `openssl s_client` against it. The test PKI comes from `reprise_testkit`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod clients;

/// The `reprise` binary under test.
pub fn reprise() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reprise"))
}

pub use reprise_testkit::free_port;

/// A running `reprise serve`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `reprise serve --listen 127.0.0.1:<free> <args>` with metrics on another free port,
    /// and waits (at most 20 s) until both accept connections.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, true)
    }

    /// Like [`start`](Self::start), with or without the metrics listener. If another process
    /// takes a chosen port before the server binds it, it starts again on others (3 times).
    pub fn start_with(args: &[&str], with_metrics: bool) -> Server {
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let listen = ["--listen", &addr.to_string()].map(str::to_owned);
            if let Some(server) = Self::spawn(addr, &listen, args, with_metrics) {
                return server;
            }
        }
        panic!("reprise serve could not bind free ports three times");
    }

    /// Starts `reprise serve <args>` (with metrics on a free port) whose `args` make it listen
    /// on `addr` (a config file's `listen`), and waits (at most 20 s) until it serves.
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> Server {
        Self::spawn(addr, &[], args, true)
            .unwrap_or_else(|| panic!("reprise serve could not listen on {addr}"))
    }

    /// Spawns the server and waits until it serves; `None` if it could not bind its ports.
    fn spawn(
        addr: SocketAddr,
        listen: &[String],
        args: &[&str],
        with_metrics: bool,
    ) -> Option<Server> {
        {
            let dir = tempfile::tempdir().unwrap();
            let stderr_path = dir.path().join("stderr.log");
            let metrics: Option<SocketAddr> =
                with_metrics.then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            let mut cmd = reprise();
            cmd.arg("serve").args(listen);
            if let Some(m) = metrics {
                cmd.arg("--metrics-listen").arg(m.to_string());
            }
            cmd.args(args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap());
            let mut server = Server {
                child: Some(cmd.spawn().unwrap()),
                addr,
                metrics,
                stderr_path,
                _dir: dir,
            };
            if server.wait_ready() {
                return Some(server);
            }
            let log = server.stderr();
            assert!(log.contains("cannot listen"), "reprise serve exited: {log}");
            None
        }
    }

    /// Waits (at most 20 s) until the server accepts connections; false if it exited.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let targets: Vec<SocketAddr> = std::iter::once(self.addr).chain(self.metrics).collect();
        for target in targets {
            loop {
                if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                    return false;
                }
                assert!(
                    Instant::now() < deadline,
                    "reprise serve did not start: {}",
                    self.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        true
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the server logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `host:port` for s_client.
    pub fn connect_arg(&self) -> String {
        self.addr.to_string()
    }

    /// `reprise bench` against this server, trusting any certificate for `localhost`; the
    /// caller adds the load.
    pub fn bench(&self) -> Command {
        let mut bench = reprise();
        bench.args([
            "bench",
            "--connect",
            &self.connect_arg(),
            "--server-name",
            "localhost",
            "--insecure",
        ]);
        bench
    }

    /// The metrics page.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics.expect("started with metrics"), "/metrics")
    }

    /// One metric's value (the sample whose name and labels start with `prefix`).
    pub fn metric(&self, prefix: &str) -> u64 {
        let text = self.metrics_text();
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "reprise serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP GET over TCP; the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out
}

/// Runs `openssl s_client` with `args`, feeding `stdin`, with a 20 s limit.
pub fn s_client(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out: Output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The `New`/`Reused` words of every session line s_client printed.
pub fn reuse_words(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let word = l.split(',').next()?;
            (word == "New" || word == "Reused").then(|| word.to_owned())
        })
        .collect()
}

/// One HTTP/1.0 request through s_client (so TLS 1.3 tickets arrive before it exits), optionally
/// saving or reusing a session file; the `New`/`Reused` word.
pub fn request(server: &Server, extra: &[&str]) -> String {
    let addr = server.connect_arg();
    let mut args = vec![
        "-connect",
        addr.as_str(),
        "-servername",
        "localhost",
        "-ign_eof",
    ];
    args.extend_from_slice(extra);
    let out = s_client(&args, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let words = reuse_words(&out);
    assert_eq!(words.len(), 1, "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    words[0].clone()
}

/// A path inside `dir`, as a string.
pub fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Runs `reprise` expecting a start-up failure: exit code 2 and exactly one line on stderr.
pub fn fails_to_start(args: &[&str]) -> String {
    let out = reprise()
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    stderr
}

/// `reprise keygen --name NAME`: one key-file line.
pub fn keygen(name: &str) -> String {
    let out = reprise().args(["keygen", "--name", name]).output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1);
    let (got_name, hex) = line.trim().split_once(':').unwrap();
    assert_eq!(got_name, name);
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    line.trim().to_owned()
}

/// The flags that put an instance in a Redis fleet: the shared Redis, the fleet's key file, and
/// a generous read budget (the tests must not depend on the machine's speed).
pub fn fleet_flags<'a>(redis_url: &'a str, key_file: &'a str) -> [&'a str; 6] {
    [
        "--redis",
        redis_url,
        "--key-file",
        key_file,
        "--redis-timeout-ms",
        "500",
    ]
}
