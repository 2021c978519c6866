//! Black-box tests of fleet-wide resumption: several `reprise serve` instances sharing a real
//! `redis-server` (and a real three-node Redis Cluster), with real `openssl s_client` clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fails_to_start, fleet_flags, keygen, path_in, request, Server};
use reprise_testkit::{wait_until, PemFiles, Pki, RedisCluster, RedisServer};

/// A fleet's shared material: one certificate (so one session-id context) and one key file.
struct Fleet {
    pki: PemFiles,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet {
            pki: Pki::new().write_pem(),
            dir,
        };
        fleet.write_keys("keys", &[&keygen("k1")]);
        fleet
    }

    fn write_keys(&self, name: &str, lines: &[&str]) -> String {
        let path = path_in(self.dir.path(), name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// One instance on `redis_url`, with the fleet's key file `keys`.
    fn instance(&self, redis_url: &str, keys: &str) -> Server {
        let (cert, key) = (self.pki.path("server.pem"), self.pki.path("server.key"));
        let key_file = path_in(self.dir.path(), keys);
        let tls = ["--cert", cert.as_str(), "--key", key.as_str()];
        Server::start(&[&tls[..], &fleet_flags(redis_url, &key_file)].concat())
    }

    fn sess(&self, name: &str) -> String {
        path_in(self.dir.path(), name)
    }
}

/// Waits (bounded) until an instance has written `n` sessions to Redis.
fn written(server: &Server, n: u64) {
    let ok = wait_until(Duration::from_secs(10), || {
        server.metric("reprise_redis_stores_written_total") >= n
    });
    assert!(ok, "{}", server.metrics_text());
}

fn cross_instance_resumption(redis_url: &str) {
    let fleet = Fleet::new();
    let nodes: Vec<Server> = (0..3).map(|_| fleet.instance(redis_url, "keys")).collect();
    for n in &nodes {
        assert!(wait_until(Duration::from_secs(10), || n
            .metric("reprise_redis_connected")
            == 1));
    }
    // TLS 1.2: a session made on the first instance resumes on the other two.
    let s12 = fleet.sess("s12");
    assert_eq!(
        request(&nodes[0], &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    written(&nodes[0], 1);
    assert_eq!(
        request(&nodes[1], &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(
        request(&nodes[2], &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );

    // TLS 1.3: two tickets from the first instance; one resumes on each of the others, and a
    // ticket used once never resumes again, anywhere.
    let (t1, t2) = (fleet.sess("t1"), fleet.sess("t2"));
    assert_eq!(request(&nodes[0], &["-tls1_3", "-sess_out", &t1]), "New");
    assert_eq!(request(&nodes[0], &["-tls1_3", "-sess_out", &t2]), "New");
    written(&nodes[0], 1 + 2 * 2);
    assert_eq!(request(&nodes[1], &["-tls1_3", "-sess_in", &t1]), "Reused");
    assert_eq!(request(&nodes[2], &["-tls1_3", "-sess_in", &t2]), "Reused");
    for node in &nodes {
        assert_eq!(request(node, &["-tls1_3", "-sess_in", &t1]), "New");
        assert_eq!(request(node, &["-tls1_3", "-sess_in", &t2]), "New");
    }
}

#[test]
fn sessions_resume_across_three_instances() {
    let redis = RedisServer::start();
    cross_instance_resumption(&redis.url());
}

#[test]
fn sessions_resume_across_three_instances_on_a_cluster() {
    let cluster = RedisCluster::start();
    cross_instance_resumption(&cluster.url());
}

#[test]
fn redis_stopping_mid_run_fails_no_handshake_and_recovers() {
    let mut redis = RedisServer::start();
    let fleet = Fleet::new();
    let (a, b) = (
        fleet.instance(&redis.url(), "keys"),
        fleet.instance(&redis.url(), "keys"),
    );
    let s = fleet.sess("s");
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &s]),
        "New"
    );
    written(&a, 1);

    redis.stop();
    // Every handshake completes; across instances they are all full.
    for _ in 0..5 {
        assert_eq!(
            request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s]),
            "New"
        );
        let t = fleet.sess("t");
        assert_eq!(request(&a, &["-tls1_3", "-sess_out", &t]), "New");
        assert_eq!(request(&b, &["-tls1_3", "-sess_in", &t]), "New");
    }
    assert_eq!(
        b.metric("reprise_handshake_failures_total{reason=\"other\"}"),
        0
    );

    // Redis comes back: resumption across instances comes back by itself within seconds.
    redis.restart();
    let fresh = fleet.sess("fresh");
    let mut back = false;
    for _ in 0..100 {
        if request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &fresh]) == "New"
            && request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &fresh]) == "Reused"
        {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(back, "{}", b.metrics_text());
}

#[test]
fn garbage_and_forged_values_never_resume() {
    let redis = RedisServer::start();
    let fleet = Fleet::new();
    let (a, b) = (
        fleet.instance(&redis.url(), "keys"),
        fleet.instance(&redis.url(), "keys"),
    );
    let (s1, s2) = (fleet.sess("s1"), fleet.sess("s2"));
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &s1]),
        "New"
    );
    written(&a, 1);
    // The TLS 1.2 sessions only (the fleet's ticket keys live under the same prefix).
    let keys = redis.command(&["KEYS", "reprise:s:*"]).unwrap();
    let key1 = keys.lines().next().unwrap().to_owned();
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &s2]),
        "New"
    );
    written(&a, 2);
    let key2 = redis
        .command(&["KEYS", "reprise:s:*"])
        .unwrap()
        .lines()
        .find(|k| *k != key1)
        .unwrap()
        .to_owned();

    // Garbage under the first session's key; the second's sealed value copied under it.
    redis
        .command(&["SET", &key1, "\u{2}garbage\u{0}\u{ff}"])
        .unwrap();
    assert_eq!(
        request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s1]),
        "New"
    );
    let sealed2 = redis.command(&["GET", &key2]).unwrap();
    let forged_key = key1.clone();
    redis.command(&["SET", &forged_key, &sealed2]).unwrap();
    // b remembers that this id missed a moment ago, and asks Redis no more (asked at once, while
    // that memory is fresh: starting another instance first can outlast it on a loaded host)...
    assert_eq!(
        request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s1]),
        "New"
    );
    // ...while another instance reads the forged value, and refuses it.
    let c = fleet.instance(&redis.url(), "keys");
    assert_eq!(
        request(&c, &["-tls1_2", "-no_ticket", "-sess_in", &s1]),
        "New"
    );
    assert_eq!(b.metric("reprise_redis_rejected_values_total"), 1);
    assert_eq!(c.metric("reprise_redis_rejected_values_total"), 1);
    assert!(b.metric("reprise_redis_negative_hits_total") >= 1);
    // Rejected values are deleted; the genuine second session still resumes.
    assert!(wait_until(Duration::from_secs(5), || redis
        .command(&["EXISTS", &key1])
        .as_deref()
        == Some(":0")));
    assert_eq!(
        request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s2]),
        "Reused"
    );
}

#[test]
fn keys_rotate_without_losing_sessions() {
    let redis = RedisServer::start();
    let fleet = Fleet::new();
    let old = keygen("old");
    let new = keygen("new");
    fleet.write_keys("old-only", &[&old]);
    fleet.write_keys("rotated", &[&new, &old]);
    let before = fleet.instance(&redis.url(), "old-only");
    let s = fleet.sess("s");
    assert_eq!(
        request(&before, &["-tls1_2", "-no_ticket", "-sess_out", &s]),
        "New"
    );
    written(&before, 1);
    let after = fleet.instance(&redis.url(), "rotated");
    assert_eq!(
        request(&after, &["-tls1_2", "-no_ticket", "-sess_in", &s]),
        "Reused"
    );
    // A session sealed with the new key is not readable by an instance without it.
    let t = fleet.sess("t");
    assert_eq!(
        request(&after, &["-tls1_2", "-no_ticket", "-sess_out", &t]),
        "New"
    );
    written(&after, 1);
    assert_eq!(
        request(&before, &["-tls1_2", "-no_ticket", "-sess_in", &t]),
        "New"
    );
    // ... nor deleted by it (attack 8): the rotated instances still resume it.
    let after2 = fleet.instance(&redis.url(), "rotated");
    assert_eq!(
        request(&after2, &["-tls1_2", "-no_ticket", "-sess_in", &t]),
        "Reused"
    );
    // The same for a TLS 1.3 ticket: an instance without the key leaves it, one with the key
    // takes it, once.
    let t13 = fleet.sess("t13");
    assert_eq!(request(&after, &["-tls1_3", "-sess_out", &t13]), "New");
    written(&after, 3);
    assert_eq!(request(&before, &["-tls1_3", "-sess_in", &t13]), "New");
    assert!(before.metric("reprise_redis_unknown_key_values_total") >= 2);
    assert_eq!(before.metric("reprise_redis_rejected_values_total"), 0);
    assert_eq!(request(&after2, &["-tls1_3", "-sess_in", &t13]), "Reused");
    assert_eq!(request(&after, &["-tls1_3", "-sess_in", &t13]), "New");
}

#[test]
fn the_redis_password_is_never_logged_nor_in_errors() {
    const PASSWORD: &str = "Pw-9f8e7d6c-secret";
    const WRONG: &str = "Wrong-Pw-1a2b3c";
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let fleet = Fleet::new();
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}", redis.port);
    let (a, b) = (fleet.instance(&url, "keys"), fleet.instance(&url, "keys"));
    // It authenticates: sessions resume across the two instances.
    let s = fleet.sess("s");
    assert_eq!(
        request(&a, &["-tls1_2", "-no_ticket", "-sess_out", &s]),
        "New"
    );
    written(&a, 1);
    assert_eq!(
        request(&b, &["-tls1_2", "-no_ticket", "-sess_in", &s]),
        "Reused"
    );
    for server in [&a, &b] {
        let log = server.stderr();
        assert!(log.contains("connected to redis"), "{log}");
        assert!(log.contains("default:***@127.0.0.1"), "{log}");
        assert!(!log.contains(PASSWORD), "{log}");
        assert!(!server.metrics_text().contains(PASSWORD));
    }
    // A wrong password: the warning about it does not show it either.
    let wrong = fleet.instance(
        &format!("redis://default:{WRONG}@127.0.0.1:{}", redis.port),
        "keys",
    );
    assert!(wait_until(Duration::from_secs(10), || wrong
        .stderr()
        .contains("cannot connect to redis yet")));
    assert!(!wrong.stderr().contains(WRONG), "{}", wrong.stderr());
    // Nor do configuration errors.
    for bad in [
        format!("redis://default:{PASSWORD}@127.0.0.1:notaport"),
        format!("http://default:{PASSWORD}@127.0.0.1:1"),
        format!("redis+cluster://:{PASSWORD}@h:1,:{PASSWORD}@h:x"),
    ] {
        let stderr = fails_to_start(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &bad,
            "--redis-key-file",
            "/nonexistent",
        ]);
        assert!(stderr.contains("redis"), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
}

#[test]
fn redis_down_at_start_is_not_an_error() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let fleet = Fleet::new();
    let server = fleet.instance(&url, "keys");
    assert_eq!(request(&server, &["-tls1_3"]), "New");
    assert_eq!(server.metric("reprise_redis_connected"), 0);
    assert!(wait_until(Duration::from_secs(10), || server
        .stderr()
        .contains("cannot connect to redis yet")));
}

#[test]
fn bad_key_files_are_start_up_errors() {
    let fleet = Fleet::new();
    let short = fleet.write_keys("short", &[&format!("k:{}", "ab".repeat(16))]);
    let garbage = fleet.write_keys("garbage", &["this is not a key"]);
    let empty = fleet.write_keys("empty", &["# nothing"]);
    for (file, want) in [
        (short.as_str(), "32 hex digits; a 256-bit key has 64"),
        (garbage.as_str(), "expected name:hex"),
        (empty.as_str(), "no key"),
        (
            "/nonexistent/keys",
            "cannot read key file /nonexistent/keys",
        ),
    ] {
        let stderr = fails_to_start(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            "redis://127.0.0.1:1",
            "--key-file",
            file,
        ]);
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
    for (args, want) in [
        (
            vec!["--redis", "redis://127.0.0.1:1"],
            "--redis needs --key-file",
        ),
        (vec!["--redis", "http://x", "--key-file", "k"], "redis"),
        (
            vec!["--redis-misses-per-address", "5"],
            "redis-misses-per-address need --redis",
        ),
    ] {
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(&args);
        let stderr = fails_to_start(&argv);
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
}
