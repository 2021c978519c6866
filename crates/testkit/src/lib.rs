//! Test harness shared by the workspace's tests: real `redis-server` processes, standalone or
//! as a three-node Redis Cluster, on free loopback ports, stopped when dropped; the one test PKI
//! ([`Pki`]), the TLS versions tests run under ([`Version`]) and the accept-anything certificate
//! verifier ([`AnyCert`]).
//!
//! Every wait is bounded. The binaries come from the system (`scripts/test.sh` installs them);
//! a missing binary is a test failure that says what to install, never a silent skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod pki;
mod tls;

pub use pki::{Leaf, PemFiles, Pki, TestCa};
pub use tls::{transfer, AnyCert, Version, VERSIONS};

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one command to a Redis server in RESP and returns the reply as text: simple strings
/// and errors as their line (`+OK`, `-ERR …`), integers as `:N`, bulk strings as their content,
/// arrays as their elements joined by newlines. Enough for the harness, without a client library.
pub fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    redis_command_as(port, None, args)
}

/// [`redis_command`], authenticated first with `password` if given (`AUTH`).
pub fn redis_command_as(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let encode = |args: &[&str]| {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        req
    };
    let mut reader = BufReader::new(tcp.try_clone().ok()?);
    if let Some(password) = password {
        tcp.write_all(encode(&["AUTH", password]).as_bytes()).ok()?;
        read_reply(&mut reader, 0)?;
    }
    tcp.write_all(encode(args).as_bytes()).ok()?;
    read_reply(&mut reader, 0)
}

fn read_reply(reader: &mut impl BufRead, depth: usize) -> Option<String> {
    if depth > 8 {
        return None;
    }
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1)?;
    match kind {
        "$" => {
            let len: i64 = rest.parse().ok()?;
            if len < 0 {
                return Some(String::new());
            }
            let mut body = vec![0u8; usize::try_from(len).ok()? + 2];
            std::io::Read::read_exact(reader, &mut body).ok()?;
            body.truncate(body.len() - 2);
            Some(String::from_utf8_lossy(&body).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            let items: Option<Vec<String>> = (0..n.max(0))
                .map(|_| read_reply(reader, depth + 1))
                .collect();
            Some(items?.join("\n"))
        }
        _ => Some(line.to_owned()),
    }
}

fn redis_server_binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "redis-server is not installed: run scripts/test.sh (it installs it) or apt-get install redis-server");
    "redis-server"
}

/// A `redis-server` on a free loopback port, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The `--requirepass` among the extra arguments, if any.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a standalone server (no persistence) and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_owned());
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            password,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.port;
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
            ("127.0.0.1", port)
        )
        .is_err()));
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let log: PathBuf = self.dir.path().join("redis.log");
        let child = Command::new(redis_server_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--dir",
                &self.dir.path().to_string_lossy(),
                "--logfile",
                &log.to_string_lossy(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        let password = self.password.clone();
        let up = wait_until(Duration::from_secs(20), || {
            redis_command_as(port, password.as_deref(), &["PING"]).as_deref() == Some("+PONG")
        });
        assert!(
            up,
            "redis-server on port {port} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Sends a command (authenticated, on a server started with `--requirepass`) and returns
    /// the reply as text.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        redis_command_as(self.port, self.password.as_deref(), args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A three-node Redis Cluster (masters only) on free loopback ports.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is not installed: run scripts/test.sh");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(Duration::from_secs(30), || {
            nodes.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not become ready");
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}
