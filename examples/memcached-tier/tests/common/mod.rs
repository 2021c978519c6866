//! The test harness: a real `memcached` on a free loopback port, and raw commands to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reprise_testkit::{free_port, wait_until};

/// How long a test waits for anything (a write to land, a server to start).
pub const WAIT: Duration = Duration::from_secs(10);

/// A `memcached` process on a free loopback port, killed when dropped.
pub struct Memcached {
    port: u16,
    child: Option<Child>,
}

impl Memcached {
    pub fn start() -> Memcached {
        // Another process may take the port between `free_port` and memcached's bind (the
        // readiness connect then reaches that process, and memcached exits): start again on
        // another port, three times at most.
        for _ in 0..3 {
            let mut m = Memcached {
                port: free_port(),
                child: None,
            };
            m.spawn();
            std::thread::sleep(Duration::from_millis(50));
            if !m.exited() {
                return m;
            }
        }
        panic!("memcached could not keep a free port three times");
    }

    pub fn spawn(&mut self) {
        let child = Command::new("memcached")
            // `-u` is required when the tests run as root, and ignored otherwise.
            .args([
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-t",
                "1",
                "-m",
                "16",
                "-u",
                "root",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached not found: scripts/test.sh installs it (apt-get install memcached)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "memcached did not start on port {port}"
        );
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One raw command on a fresh connection; the reply, read until it ends with one of `ends`.
    pub fn raw(&self, command: &[u8], ends: &[&[u8]]) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(command).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !ends.iter().any(|e| reply.ends_with(e)) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "memcached closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
        reply
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let reply = self.raw(format!("get {key}\r\n").as_bytes(), &[b"END\r\n"]);
        if reply == b"END\r\n" {
            return None;
        }
        let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
        let header = std::str::from_utf8(&reply[..header_end]).unwrap();
        let len: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
        Some(reply[header_end + 2..header_end + 2 + len].to_vec())
    }

    /// The seconds memcached will keep `key` (meta get with the `t` flag); -1: forever.
    pub fn ttl(&self, key: &str) -> Option<i64> {
        let reply = self.raw(format!("mg {key} t\r\n").as_bytes(), &[b"\r\n"]);
        let reply = String::from_utf8(reply).unwrap();
        reply
            .trim_end()
            .strip_prefix("HD t")
            .map(|t| t.parse().unwrap())
    }

    pub fn set(&self, key: &str, value: &[u8]) {
        let mut cmd = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        assert_eq!(self.raw(&cmd, &[b"\r\n"]), b"STORED\r\n");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.stop();
    }
}
