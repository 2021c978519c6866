//! Black-box tests of the tiers composed: `reprise serve --cache-dir DIR --redis URL`, a disk
//! under memory and above a real `redis-server` shared by two instances, with restarts and a
//! Redis outage, and real `openssl s_client` clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fleet_flags, path_in, reprise, request, Server};
use reprise_testkit::{wait_until, PemFiles, Pki, RedisServer};

/// Two instances' cache directories, one certificate (one session-id context) and one key file.
struct Fleet {
    pki: PemFiles,
    work: tempfile::TempDir,
    keys: String,
}

impl Fleet {
    fn new() -> Fleet {
        let work = tempfile::tempdir().unwrap();
        let out = reprise().args(["keygen", "--name", "k1"]).output().unwrap();
        assert!(out.status.success());
        let keys = path_in(work.path(), "keys");
        std::fs::write(&keys, &out.stdout).unwrap();
        Fleet {
            pki: Pki::new().write_pem(),
            work,
            keys,
        }
    }

    /// Instance `name` with its own cache directory, on `redis_url`.
    fn instance(&self, name: &str, redis_url: &str) -> Server {
        let (cert, key) = (self.pki.path("server.pem"), self.pki.path("server.key"));
        let dir = path_in(self.work.path(), name);
        let args = [
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
            "--cache-dir",
            dir.as_str(),
        ];
        let server = Server::start(&[&args[..], &fleet_flags(redis_url, &self.keys)].concat());
        // The listener is up before the disk is read back: wait for the load to be logged.
        assert!(wait_until(Duration::from_secs(10), || server
            .stderr()
            .contains("sessions loaded from disk")));
        server
    }

    fn sess(&self, name: &str) -> String {
        path_in(self.work.path(), name)
    }
}

fn connected(server: &Server) {
    assert!(
        wait_until(Duration::from_secs(10), || server
            .metric("reprise_redis_connected")
            == 1),
        "{}",
        server.metrics_text()
    );
}

/// Waits (bounded) until an instance has written `n` sessions to Redis.
fn written(server: &Server, n: u64) {
    let ok = wait_until(Duration::from_secs(10), || {
        server.metric("reprise_redis_stores_written_total") >= n
    });
    assert!(ok, "{}", server.metrics_text());
}

/// Waits (bounded) until an instance has written `n` sessions to its disk.
fn on_disk(server: &Server, n: u64) {
    let ok = wait_until(Duration::from_secs(10), || {
        server.metric("reprise_disk_stores_written_total") >= n
    });
    assert!(ok, "{}", server.metrics_text());
}

#[test]
fn disk_under_redis_shares_across_the_fleet_and_survives_restarts_and_outages() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let fleet = Fleet::new();
    let a = fleet.instance("a", &url);
    let b = fleet.instance("b", &url);
    connected(&a);
    connected(&b);

    // Shared across the fleet: a TLS 1.2 session and a TLS 1.3 ticket made on `a` resume on
    // `b`; the ticket resumes once, fleet-wide.
    let (s12, used, unused) = (fleet.sess("s12"), fleet.sess("used"), fleet.sess("unused"));
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(request(&a, &["-tls1_3", "-sess_out", &used]), "New");
    assert_eq!(request(&a, &["-tls1_3", "-sess_out", &unused]), "New");
    written(&a, 3);
    on_disk(&a, 3);
    assert_eq!(
        request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(request(&b, &["-tls1_3", "-sess_in", &used]), "Reused");
    assert_eq!(request(&a, &["-tls1_3", "-sess_in", &used]), "New");

    // After a restart, `a` resumes from its disk; the ticket the fleet used never resumes from
    // the disk's copy, and the unused one resumes once.
    assert_eq!(a.terminate().code(), Some(0));
    let a = fleet.instance("a", &url);
    connected(&a);
    assert!(a.metric("reprise_disk_warmed_total") >= 1);
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(request(&a, &["-tls1_3", "-sess_in", &used]), "New");
    assert_eq!(request(&a, &["-tls1_3", "-sess_in", &unused]), "Reused");
    assert_eq!(request(&b, &["-tls1_3", "-sess_in", &unused]), "New");

    // A Redis outage: a ticket made before it cannot be confirmed and does not resume, while
    // the TLS 1.2 session the disk holds still resumes, even across a restart during the
    // outage.
    let ticket = fleet.sess("ticket");
    assert_eq!(request(&a, &["-tls1_3", "-sess_out", &ticket]), "New");
    written(&a, 4);
    redis.stop();
    assert_eq!(a.terminate().code(), Some(0));
    let a = fleet.instance("a", &url);
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(request(&a, &["-tls1_3", "-sess_in", &ticket]), "New");
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}
