//! Black-box tests of session tickets: the real `reprise serve` (one instance on its defaults,
//! or three sharing a real `redis-server`), real clients (Go `crypto/tls`, Python `ssl`,
//! `openssl s_client`), and what `/metrics` counts.
//!
//! - On the defaults (`--tickets auto`), TLS 1.2 clients resume with tickets (Go's TLS 1.2
//!   client resumes no other way), and TLS 1.3 tickets stay stateful and single-use.
//! - Three instances on one Redis take their ticket keys from the fleet's ring and resume each
//!   other's tickets, through rotations, a Redis outage (fail-open, then the local fallback),
//!   and Redis coming back.
//! - A ticket never resumes in another security context (an mTLS instance on the same ring).
//! - A ticket-key file is shared by hand and re-read on SIGHUP; bad input stops the start with
//!   one line.
//!
//! Rotation tests use short lifetimes (2 or 3 s). The fleet's periods are cut from the Unix
//! epoch, so the tests read the wall clock to act just before or after a boundary; every wait
//! is a bounded poll, and nothing asserts how long anything took.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::clients::program;
use common::{fails_to_start, fleet_flags, keygen, path_in, request, Server};
use reprise_testkit::{wait_until, PemFiles, Pki, RedisServer};

/// The ticketer's counter `name` (`issued`, `decrypted`).
fn tickets(server: &Server, name: &str) -> u64 {
    server.metric(&format!("reprise_tickets_{name}_total"))
}

/// The ticketer's rejections for `reason`.
fn rejected(server: &Server, reason: &str) -> u64 {
    server.metric(&format!(
        "reprise_tickets_rejected_total{{reason=\"{reason}\"}}"
    ))
}

/// Every rejection, whatever the reason.
fn rejected_any(server: &Server) -> u64 {
    ["unknown_key", "wrong_context", "expired", "malformed"]
        .iter()
        .map(|r| rejected(server, r))
        .sum()
}

/// The fleet key source's metric `name` (`key_version`, `fallback_active`, ...).
fn ring(server: &Server, name: &str) -> u64 {
    server.metric(&format!("reprise_ticket_keys_{name}"))
}

/// Failed handshakes, whatever the reason but a client gone before its hello (`eof`): the
/// harness's readiness probe is one, counted whenever the server gets to it. Every client
/// here also checks its own handshake (`request` asserts the response).
fn failures(server: &Server) -> u64 {
    server
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("reprise_handshake_failures_total{"))
        .filter(|l| !l.contains("reason=\"eof\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends SIGHUP to `server` and waits (bounded) until its log holds `what` `times` times.
fn hup(server: &Server, times: usize, what: &str) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let logged = wait_until(Duration::from_secs(10), || {
        server.stderr().matches(what).count() >= times
    });
    assert!(logged, "no {what:?} after SIGHUP: {}", server.stderr());
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the wall clock is between `from_ms` and `to_ms` into a period of `period_s`
/// seconds (the fleet's periods start at multiples of the period since the epoch).
fn wait_for_phase(period_s: u64, from_ms: u64, to_ms: u64) {
    let period = period_s * 1000;
    for _ in 0..3 {
        let phase = unix_ms() % period;
        if (from_ms..to_ms).contains(&phase) {
            return;
        }
        let wait = (from_ms + period - phase) % period;
        std::thread::sleep(Duration::from_millis(wait));
    }
    panic!("could not reach phase {from_ms}..{to_ms} ms of a {period_s} s period");
}

/// `-tls1_2` or `-tls1_3` with a session file to write (`out`) or to offer (`in`).
fn sess<'a>(version: &'a str, flag: &'a str, file: &'a str) -> [&'a str; 3] {
    [version, flag, file]
}

/// Instances sharing one certificate (one session-id context) and, for a fleet, one Redis and
/// one key file.
struct Fleet {
    pki: PemFiles,
    dir: tempfile::TempDir,
    redis: RedisServer,
    keys: String,
    servers: Vec<Server>,
}

impl Fleet {
    /// `n` instances (one after the other) on one new Redis, ticket keys from its ring (the
    /// default with `--redis`), each with `extra` flags; waits until each has its ring and its
    /// session tier is up.
    fn start(n: usize, extra: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let keys = path_in(dir.path(), "keys");
        std::fs::write(&keys, keygen("k1") + "\n").unwrap();
        let mut fleet = Fleet {
            pki: Pki::new().write_pem(),
            dir,
            redis: RedisServer::start(),
            keys,
            servers: Vec::new(),
        };
        for _ in 0..n {
            let server = fleet.instance(extra);
            fleet.servers.push(server);
        }
        fleet
    }

    /// One more instance on the fleet's Redis.
    fn instance(&self, extra: &[&str]) -> Server {
        let (cert, key, url) = (
            self.pki.path("server.pem"),
            self.pki.path("server.key"),
            self.redis.url(),
        );
        let tls = ["--cert", cert.as_str(), "--key", key.as_str()];
        let server = Server::start(&[&tls[..], &fleet_flags(&url, &self.keys), extra].concat());
        let up = wait_until(Duration::from_secs(10), || {
            server.metric("reprise_redis_connected") == 1
                && server.metric("reprise_ticket_keys_source{source=\"redis\"}") == 1
                && ring(&server, "key_version") > 0
        });
        assert!(up, "{}", server.metrics_text());
        server
    }

    fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.to_string()).collect()
    }

    fn file(&self, name: &str) -> String {
        path_in(self.dir.path(), name)
    }

    fn ca(&self) -> String {
        self.pki.path("ca.pem")
    }
}

/// On `reprise serve` with only a certificate: Go's TLS 1.2 client resumes (tickets), and so
/// does `s_client -tls1_2` through a ticket; TLS 1.3 tickets stay stateful and single-use.
#[test]
fn the_defaults_resume_tls12_with_tickets_and_keep_tls13_single_use() {
    let pki = Pki::new().write_pem();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = Server::start(&["--cert", &cert, "--key", &key]);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("reprise_tickets_mode{mode=\"auto\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reprise_ticket_keys_source{source=\"local\"} 1"),
        "{metrics}"
    );
    assert!(server
        .stderr()
        .contains("tickets mode=\"auto\" keys=\"local\""));

    let cached = server.metric("reprise_cache_sessions");
    let go = program(
        "go",
        &[server.addr.to_string()],
        &pki.path("ca.pem"),
        "1.2",
        "notify",
        6,
    );
    assert_eq!(go.resumed_after_first(), 5, "{}", go.detail);
    assert!(tickets(&server, "decrypted") >= 5);
    // A session that travels in its ticket takes no place in the cache...
    assert_eq!(server.metric("reprise_cache_sessions"), cached);
    // ...while a TLS 1.2 client that asks for no ticket gets an id, and resumes by it.
    let dir = tempfile::tempdir().unwrap();
    let by_id = path_in(dir.path(), "id.pem");
    let id_only = ["-tls1_2", "-no_ticket", "-sess_out", &by_id];
    assert_eq!(request(&server, &id_only), "New");
    assert_eq!(server.metric("reprise_cache_sessions"), cached + 1);
    let decrypted = tickets(&server, "decrypted");
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &by_id]),
        "Reused"
    );
    assert_eq!(tickets(&server, "decrypted"), decrypted);

    let s12 = path_in(dir.path(), "s12.pem");
    assert_eq!(request(&server, &sess("-tls1_2", "-sess_out", &s12)), "New");
    let decrypted = tickets(&server, "decrypted");
    assert_eq!(
        request(&server, &sess("-tls1_2", "-sess_in", &s12)),
        "Reused"
    );
    assert_eq!(tickets(&server, "decrypted"), decrypted + 1);

    // TLS 1.3: the ticketer issues nothing, and a ticket resumes once.
    let issued = tickets(&server, "issued");
    let s13 = path_in(dir.path(), "s13.pem");
    assert_eq!(request(&server, &sess("-tls1_3", "-sess_out", &s13)), "New");
    assert_eq!(
        request(&server, &sess("-tls1_3", "-sess_in", &s13)),
        "Reused"
    );
    assert_eq!(request(&server, &sess("-tls1_3", "-sess_in", &s13)), "New");
    assert_eq!(tickets(&server, "issued"), issued);
    assert_eq!(failures(&server), 0, "{}", server.metrics_text());

    // SIGHUP reloads the certificate (unchanged), and leaves the server serving; SIGTERM still
    // stops it.
    hup(&server, 1, "reloaded certificates=1");
    assert_eq!(request(&server, &["-tls1_2"]), "New");
    assert_eq!(server.terminate().code(), Some(0));
}

/// Three instances on one Redis, on their defaults: Go's and s_client's TLS 1.2 tickets resume
/// on every instance, through the fleet's ring.
#[test]
fn a_fleet_resumes_each_others_tls12_tickets() {
    let fleet = Fleet::start(3, &[]);
    let go = program("go", &fleet.addrs(), &fleet.ca(), "1.2", "notify", 6);
    assert_eq!(go.resumed_after_first(), 5, "{}", go.detail);
    for (i, s) in fleet.servers.iter().enumerate() {
        assert!(
            tickets(s, "decrypted") >= 1,
            "instance {i}: {}",
            s.metrics_text()
        );
    }

    let s12 = fleet.file("s12.pem");
    let [a, b, c] = &fleet.servers[..] else {
        panic!()
    };
    assert_eq!(request(a, &sess("-tls1_2", "-sess_out", &s12)), "New");
    // A hello that offers a ticket resumes by it or not at all: the session id that comes with
    // it is not looked up in Redis.
    let reads = |s: &Server| {
        s.metric("reprise_redis_read_hits_total") + s.metric("reprise_redis_read_misses_total")
    };
    for other in [b, c] {
        let decrypted = tickets(other, "decrypted");
        let read = reads(other);
        assert_eq!(request(other, &sess("-tls1_2", "-sess_in", &s12)), "Reused");
        assert_eq!(tickets(other, "decrypted"), decrypted + 1);
        assert_eq!(reads(other), read, "{}", other.metrics_text());
    }
}

/// Two instances started at the same moment on an empty Redis agree on one key: each resumes
/// the other's tickets at once.
#[test]
fn two_instances_started_together_agree_on_one_key() {
    let mut fleet = Fleet::start(0, &[]);
    let started: Vec<Server> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| fleet.instance(&[])))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    fleet.servers = started;
    let [a, b] = &fleet.servers[..] else { panic!() };
    assert_eq!(ring(a, "key_version"), ring(b, "key_version"));
    for (from, to) in [(a, b), (b, a)] {
        let s12 = fleet.file("s12.pem");
        assert_eq!(request(from, &sess("-tls1_2", "-sess_out", &s12)), "New");
        assert_eq!(request(to, &sess("-tls1_2", "-sess_in", &s12)), "Reused");
    }
}

/// Three instances with `--tickets stateless`: TLS 1.3 tickets from s_client and Python resume
/// on every instance; a stateless ticket can be used again (the operator's choice).
#[test]
fn a_stateless_fleet_resumes_each_others_tls13_tickets() {
    let fleet = Fleet::start(3, &["--tickets", "stateless"]);
    let s13 = fleet.file("s13.pem");
    let [a, b, c] = &fleet.servers[..] else {
        panic!()
    };
    assert_eq!(request(a, &sess("-tls1_3", "-sess_out", &s13)), "New");
    for other in [b, c, b] {
        assert_eq!(request(other, &sess("-tls1_3", "-sess_in", &s13)), "Reused");
    }
    assert!(tickets(b, "decrypted") >= 2 && tickets(c, "decrypted") >= 1);

    let py = program("python", &fleet.addrs(), &fleet.ca(), "1.3", "notify", 6);
    assert_eq!(py.resumed_after_first(), 5, "{}", py.detail);
}

/// A 3-second lifetime: a ticket issued just before a rotation resumes on every instance just
/// after it; a ticket older than its lifetime resumes nowhere; a key erased at its time is gone
/// from Redis and from every instance.
#[test]
fn rotation_keeps_fresh_tickets_and_drops_old_ones() {
    const LIFETIME: u64 = 3;
    let fleet = Fleet::start(3, &["--ticket-lifetime", "3"]);
    let [a, b, c] = &fleet.servers[..] else {
        panic!()
    };
    let s12 = fleet.file("s12.pem");

    // Issued in the last second of a period, under the key of that period (checked after, and
    // tried again if a slow client crossed the boundary).
    let mut issued_under = None;
    for _ in 0..3 {
        wait_for_phase(LIFETIME, 2000, 2600);
        let version = ring(a, "key_version");
        assert_eq!(request(a, &sess("-tls1_2", "-sess_out", &s12)), "New");
        if ring(a, "key_version") == version {
            issued_under = Some(version);
            break;
        }
    }
    let version = issued_under.expect("no ticket issued before a boundary in three tries");
    let rotated = wait_until(Duration::from_secs(10), || {
        fleet
            .servers
            .iter()
            .all(|s| ring(s, "key_version") > version)
    });
    assert!(rotated, "{}", a.metrics_text());
    for s in [b, c, a] {
        assert_eq!(request(s, &sess("-tls1_2", "-sess_in", &s12)), "Reused");
    }

    // Issued early in a period, offered once it is older than its lifetime (its key still
    // decrypts then, as the previous one): refused as expired, everywhere.
    let old = fleet.file("old.pem");
    wait_for_phase(LIFETIME, 100, 900);
    let issued_at = unix_ms();
    assert_eq!(request(a, &sess("-tls1_2", "-sess_out", &old)), "New");
    let aged = wait_until(Duration::from_secs(10), || {
        unix_ms() > issued_at + LIFETIME * 1000 + 300
    });
    assert!(aged);
    for s in [b, c, a] {
        let refused = rejected_any(s);
        assert_eq!(request(s, &sess("-tls1_2", "-sess_in", &old)), "New");
        assert_eq!(rejected_any(s), refused + 1, "{}", s.metrics_text());
    }
    assert!(
        fleet
            .servers
            .iter()
            .map(|s| rejected(s, "expired"))
            .sum::<u64>()
            >= 1,
        "{}",
        a.metrics_text()
    );

    // The key of `version` is erased two periods after it stopped encrypting: from every
    // instance and from Redis.
    let erased = wait_until(Duration::from_secs(15), || {
        fleet
            .servers
            .iter()
            .all(|s| ring(s, "oldest_key_version") > version)
    });
    assert!(erased, "{}", a.metrics_text());
    let redis_key = format!("reprise:ticket-key:{LIFETIME}:{version}");
    let gone = wait_until(Duration::from_secs(5), || {
        fleet.redis.command(&["EXISTS", &redis_key]).as_deref() == Some(":0")
    });
    assert!(gone, "{redis_key} still in Redis");
    let newer = format!("reprise:ticket-key:{LIFETIME}:{}", ring(a, "key_version"));
    assert_eq!(
        fleet.redis.command(&["EXISTS", &newer]).as_deref(),
        Some(":1")
    );
}

/// Redis killed: no handshake fails, tickets keep resuming across instances on the ring held,
/// then each instance falls back to a key of its own (counted); Redis back on the same port:
/// the fleet converges again.
#[test]
fn a_redis_outage_fails_open_falls_back_and_converges() {
    let mut fleet = Fleet::start(3, &["--ticket-lifetime", "2"]);
    let s12 = fleet.file("s12.pem");
    assert_eq!(
        request(&fleet.servers[0], &sess("-tls1_2", "-sess_out", &s12)),
        "New"
    );
    fleet.redis.stop();
    for s in &fleet.servers[1..] {
        assert_eq!(request(s, &sess("-tls1_2", "-sess_in", &s12)), "Reused");
    }

    // Handshakes go on while the held ring runs out; each instance then falls back.
    let mut connections = 0;
    let fell_back = wait_until(Duration::from_secs(30), || {
        let s = &fleet.servers[connections % 3];
        assert_eq!(request(s, &["-tls1_2"]), "New");
        connections += 1;
        fleet
            .servers
            .iter()
            .all(|s| ring(s, "fallback_active") == 1 && ring(s, "fallbacks_total") >= 1)
    });
    assert!(fell_back, "{}", fleet.servers[0].metrics_text());
    for (i, s) in fleet.servers.iter().enumerate() {
        assert_eq!(failures(s), 0, "instance {i}: {}", s.metrics_text());
    }

    fleet.redis.restart();
    let converged = wait_until(Duration::from_secs(30), || {
        let versions: Vec<u64> = fleet
            .servers
            .iter()
            .map(|s| ring(s, "key_version"))
            .collect();
        fleet
            .servers
            .iter()
            .all(|s| ring(s, "fallback_active") == 0)
            && versions.iter().all(|v| *v == versions[0])
    });
    assert!(converged, "{}", fleet.servers[0].metrics_text());
    // A ticket from one instance resumes on the others (tried a few times: a boundary may
    // fall between the issue and the resumption while the fleet re-reads its ring).
    let after = fleet.file("after.pem");
    let mut resumed = false;
    for _ in 0..5 {
        assert_eq!(
            request(&fleet.servers[2], &sess("-tls1_2", "-sess_out", &after)),
            "New"
        );
        resumed = fleet.servers[..2]
            .iter()
            .all(|s| request(s, &sess("-tls1_2", "-sess_in", &after)) == "Reused");
        if resumed {
            break;
        }
    }
    assert!(resumed, "{}", fleet.servers[0].metrics_text());
}

/// A ticket issued by a plain instance never resumes on an instance that requires client
/// certificates, though both share the ring: another session-id context, another derived key.
#[test]
fn a_ticket_never_resumes_in_another_context() {
    let mut fleet = Fleet::start(1, &[]);
    let ca = fleet.ca();
    let mtls = fleet.instance(&["--client-ca", &ca]);
    let (cert, key) = (fleet.pki.path("client.pem"), fleet.pki.path("client.key"));
    let client_cert = ["-cert", cert.as_str(), "-key", key.as_str()];
    let plain = fleet.servers.remove(0);

    let s12 = fleet.file("plain.pem");
    assert_eq!(request(&plain, &sess("-tls1_2", "-sess_out", &s12)), "New");
    let refused = rejected_any(&mtls);
    let offered = [&sess("-tls1_2", "-sess_in", &s12)[..], &client_cert].concat();
    assert_eq!(request(&mtls, &offered), "New");
    assert_eq!(rejected_any(&mtls), refused + 1, "{}", mtls.metrics_text());
    assert_eq!(
        rejected(&mtls, "wrong_context"),
        1,
        "{}",
        mtls.metrics_text()
    );

    // The mTLS instance resumes its own tickets.
    let own = fleet.file("mtls.pem");
    let out = [&sess("-tls1_2", "-sess_out", &own)[..], &client_cert].concat();
    assert_eq!(request(&mtls, &out), "New");
    let back = [&sess("-tls1_2", "-sess_in", &own)[..], &client_cert].concat();
    assert_eq!(request(&mtls, &back), "Reused");
}

/// Two instances share a ticket-key file; SIGHUP re-reads it: a new first key encrypts, the
/// old one still decrypts, a bad file keeps the keys held, and a key taken out stops
/// decrypting.
#[test]
fn a_ticket_key_file_is_shared_and_reloaded_on_sighup() {
    let pki = Pki::new().write_pem();
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "tickets.keys");
    let write = |lines: &[&str]| std::fs::write(&keys, lines.join("\n") + "\n").unwrap();
    let (k1, k2) = (keygen("t1"), keygen("t2"));
    write(&[&k1]);
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let start = || Server::start(&["--cert", &cert, "--key", &key, "--ticket-keys", &keys]);
    let (a, b) = (start(), start());
    assert!(a
        .metrics_text()
        .contains("reprise_ticket_keys_source{source=\"file\"} 1"));
    assert!(!a.stderr().contains(&k1[3..]), "a key in the log");

    let t1 = path_in(dir.path(), "t1.pem");
    assert_eq!(request(&a, &sess("-tls1_2", "-sess_out", &t1)), "New");
    assert_eq!(request(&b, &sess("-tls1_2", "-sess_in", &t1)), "Reused");

    // t2 first: it encrypts, t1 still decrypts.
    write(&[&k2, &k1]);
    hup(&a, 1, "ticket keys reloaded");
    hup(&b, 1, "ticket keys reloaded");
    assert_eq!(request(&b, &sess("-tls1_2", "-sess_in", &t1)), "Reused");
    let t2 = path_in(dir.path(), "t2.pem");
    assert_eq!(request(&a, &sess("-tls1_2", "-sess_out", &t2)), "New");
    assert_eq!(request(&b, &sess("-tls1_2", "-sess_in", &t2)), "Reused");

    // A broken file: one line in the log, the keys held stay, the server serves on.
    write(&["t3:not-a-key"]);
    hup(&a, 1, "ticket keys not reloaded");
    assert_eq!(request(&a, &sess("-tls1_2", "-sess_in", &t2)), "Reused");
    assert_eq!(request(&a, &sess("-tls1_2", "-sess_in", &t1)), "Reused");

    // t1 taken out: its tickets no longer resume.
    write(&[&k2]);
    hup(&b, 2, "ticket keys reloaded");
    let refused = rejected(&b, "unknown_key");
    assert_eq!(request(&b, &sess("-tls1_2", "-sess_in", &t1)), "New");
    assert_eq!(rejected(&b, "unknown_key"), refused + 1);
    assert_eq!(request(&b, &sess("-tls1_2", "-sess_in", &t2)), "Reused");
    assert_eq!(a.terminate().code(), Some(0));
}

/// Bad ticket settings stop the start with one line naming the problem (exit 2); a ticket-key
/// file that group or others can read starts, with a warning.
#[test]
fn bad_ticket_settings_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = path_in(dir.path(), name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path
    };
    let serve = |extra: &[&str]| {
        fails_to_start(&[&["serve", "--listen", "127.0.0.1:0"][..], extra].concat())
    };
    let good = keygen("good");
    let bad_line = file("bad-line.keys", &format!("{good}\nthis is not a key\n"));
    let e = serve(&["--ticket-keys", &bad_line]);
    assert!(e.contains("ticket-keys") && e.contains("line 2"), "{e}");
    let short = file("short.keys", "short:0123456789abcdef\n");
    let e = serve(&["--ticket-keys", &short]);
    assert!(e.contains("ticket-keys") && e.contains("hex digits"), "{e}");
    let e = serve(&["--ticket-lifetime", "0"]);
    assert!(
        e.contains("ticket-lifetime must be at least 1 second"),
        "{e}"
    );
    let e = serve(&["--ticket-lifetime", "99999999"]);
    assert!(e.contains("ticket-lifetime is 99999999"), "{e}");
    let e = serve(&["--ticket-keys-from-redis"]);
    assert!(e.contains("--ticket-keys-from-redis needs --redis"), "{e}");
    let e = serve(&["--tickets", "stateful", "--ticket-keys", &short]);
    assert!(e.contains("no effect with --tickets stateful"), "{e}");
    let missing = path_in(dir.path(), "missing.keys");
    let e = serve(&["--ticket-keys", &missing]);
    assert!(
        e.contains("ticket-keys") && e.contains("missing.keys"),
        "{e}"
    );

    let readable = file("readable.keys", &format!("{good}\n"));
    std::fs::set_permissions(
        &readable,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start(&["--ticket-keys", &readable]);
    let log = server.stderr();
    assert!(log.contains("group or others"), "{log}");
    assert!(!log.contains(&good[5..]), "a key in the log: {log}");
}

/// The ticket in an `openssl s_client` session file, as `openssl sess_id -text` prints it.
fn ticket_of(session: &str) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["sess_id", "-in", session, "-noout", "-text"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut bytes = Vec::new();
    // The hex dump after "TLS session ticket:": `0000 - 01 00 … 07-08 …   ascii`.
    for line in text
        .lines()
        .skip_while(|l| !l.contains("TLS session ticket:"))
        .skip(1)
    {
        let Some((offset, rest)) = line.trim().split_once(" - ") else {
            break;
        };
        if offset.len() != 4 || !offset.bytes().all(|b| b.is_ascii_hexdigit()) {
            break;
        }
        let hex: String = rest.get(..48).unwrap_or(rest).replace(['-', ' '], "");
        for pair in hex.as_bytes().chunks(2) {
            bytes.push(u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap());
        }
    }
    assert!(bytes.len() > 61, "no ticket in:\n{text}");
    bytes
}

/// Writes a copy of `session` whose ticket has the byte at `at` flipped.
fn forged(session: &str, at: usize, out: &str) {
    let der = format!("{out}.der");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    run(&["sess_id", "-in", session, "-outform", "DER", "-out", &der]);
    let ticket = ticket_of(session);
    let mut bytes = std::fs::read(&der).unwrap();
    let start = bytes
        .windows(ticket.len())
        .position(|w| w == ticket.as_slice())
        .expect("the ticket in the DER session");
    bytes[start + at] ^= 0x40;
    std::fs::write(&der, &bytes).unwrap();
    run(&["sess_id", "-inform", "DER", "-in", &der, "-out", out]);
}

/// An attacker's tickets: one byte changed in the key id, the context tag or the ciphertext of a
/// real ticket. Each makes a full handshake (never a failure, never a resumption), counted by
/// its reason; the real ticket still resumes after them.
#[test]
fn forged_tickets_make_full_handshakes_counted_by_reason() {
    let pki = Pki::new().write_pem();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = Server::start(&["--cert", &cert, "--key", &key]);
    let dir = tempfile::tempdir().unwrap();
    let real = path_in(dir.path(), "real.pem");
    assert_eq!(
        request(&server, &sess("-tls1_2", "-sess_out", &real)),
        "New"
    );
    // The ticket's clear header: format (1), key id (8), context tag (4), nonce (24).
    for (at, reason) in [(3, "unknown_key"), (10, "wrong_context"), (50, "malformed")] {
        let fake = path_in(dir.path(), &format!("{reason}.pem"));
        forged(&real, at, &fake);
        let before = rejected(&server, reason);
        assert_eq!(request(&server, &["-tls1_2", "-sess_in", &fake]), "New");
        assert_eq!(rejected(&server, reason), before + 1, "{reason}");
    }
    assert_eq!(request(&server, &["-tls1_2", "-sess_in", &real]), "Reused");
    assert_eq!(failures(&server), 0, "{}", server.metrics_text());
}

/// `reprise reload` signals the server its pid file names: the ticket-key file is read again.
/// The pid file is removed when the server exits; a missing or bad one is one line and exit 2.
#[test]
fn reprise_reload_signals_the_server_of_the_pid_file() {
    let pki = Pki::new().write_pem();
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "tickets.keys");
    std::fs::write(&keys, keygen("t1") + "\n").unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pid_file = path_in(dir.path(), "reprise.pid");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = Server::start(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--ticket-keys",
        &keys,
        "--pid-file",
        &pid_file,
    ]);
    // Written once the listeners are bound, a moment after they accept connections.
    let expected = server.pid().to_string();
    let written = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|w| w.trim() == expected)
    });
    assert!(written, "no pid file {pid_file}");

    let out = common::reprise()
        .args(["reload", "--pid-file", &pid_file])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let logged = wait_until(Duration::from_secs(10), || {
        server.stderr().contains("ticket keys reloaded")
    });
    assert!(logged, "{}", server.stderr());
    assert_eq!(request(&server, &["-tls1_2"]), "New");
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!std::path::Path::new(&pid_file).exists());

    let line = fails_to_start(&["reload", "--pid-file", &pid_file]);
    assert!(line.contains("pid-file"), "{line}");
    std::fs::write(&pid_file, "not a pid\n").unwrap();
    let line = fails_to_start(&["reload", "--pid-file", &pid_file]);
    assert!(line.contains("does not hold a process id"), "{line}");
}
