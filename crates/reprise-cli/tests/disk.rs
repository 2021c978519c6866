//! Black-box tests of `reprise serve --cache-dir`: sessions survive restarts, with real
//! `openssl s_client` clients, SIGTERM and kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fails_to_start, path_in, request, Server};
use reprise_testkit::{wait_until, PemFiles, Pki};

/// A cache directory in a fresh work directory, and the flags every start of a test's server
/// passes: the same certificate each time, so the session-id context stays the same.
struct Disk {
    _pki: PemFiles,
    work: tempfile::TempDir,
    dir: String,
    args: Vec<String>,
}

impl Disk {
    fn new(extra: &[&str]) -> Self {
        let pki = Pki::new().write_pem();
        let mut args = vec![
            "--cert".to_string(),
            pki.path("server.pem"),
            "--key".to_string(),
            pki.path("server.key"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let work = tempfile::tempdir().unwrap();
        let dir = path_in(work.path(), "cache");
        Self {
            _pki: pki,
            work,
            dir,
            args,
        }
    }

    /// A file in the work directory (for `-sess_out` and `-sess_in`).
    fn file(&self, name: &str) -> String {
        path_in(self.work.path(), name)
    }

    /// The session database.
    fn database(&self) -> std::path::PathBuf {
        self.work.path().join("cache").join("sessions.redb")
    }

    /// Starts `reprise serve --cache-dir` with the test's flags.
    fn serve(&self) -> Server {
        let mut args = vec!["--cache-dir", self.dir.as_str()];
        args.extend(self.args.iter().map(String::as_str));
        Server::start(&args)
    }

    fn restart_cleanly(&self, server: Server) -> Server {
        assert_eq!(server.terminate().code(), Some(0));
        self.serve()
    }
}

/// `reprise bench` making full TLS 1.3 handshakes, four at a time, for `extent` (a duration or a
/// number of connections): load that makes the server write tickets continuously.
fn ticket_load(server: &Server, extent: [&str; 2]) -> std::process::Command {
    let mut bench = server.bench();
    bench
        .args([
            "--tls",
            "1.3",
            "--mode",
            "full",
            "--concurrency",
            "4",
            "--json",
        ])
        .args(extent);
    bench
}

#[test]
fn sessions_survive_a_restart_and_used_tickets_do_not() {
    let disk = Disk::new(&[]);
    let (s12, used, unused) = (disk.file("s12"), disk.file("used"), disk.file("unused"));

    let server = disk.serve();
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(request(&server, &["-tls1_3", "-sess_out", &used]), "New");
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &used]), "Reused");
    assert_eq!(request(&server, &["-tls1_3", "-sess_out", &unused]), "New");
    let server = disk.restart_cleanly(server);
    // The listener is up before the file is read back: wait for the load to be logged.
    assert!(wait_until(Duration::from_secs(10), || server
        .stderr()
        .contains("sessions loaded from disk")));

    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &used]), "New");
    // A ticket not used before the clean restart resumes once after it.
    assert_eq!(
        request(&server, &["-tls1_3", "-sess_in", &unused]),
        "Reused"
    );
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &unused]), "New");
    assert!(server.metric("reprise_disk_warmed_total") >= 2);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn expired_sessions_do_not_come_back() {
    let disk = Disk::new(&["--cache-timeout", "1"]);
    let s12 = disk.file("s12");
    let server = disk.serve();
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(server.terminate().code(), Some(0));
    // The scenario is a timeout passing while the server is down.
    std::thread::sleep(Duration::from_secs(2));
    let server = disk.serve();
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "New"
    );
    assert_eq!(server.metric("reprise_disk_warmed_total"), 0);
}

#[test]
fn kill_9_in_the_middle_of_writes_then_a_clean_start() {
    let disk = Disk::new(&["--tls13-tickets", "8"]);
    let s12 = disk.file("s12");
    let server = disk.serve();
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert!(wait_until(Duration::from_secs(10), || server
        .metric("reprise_disk_stores_written_total")
        >= 1));
    // Load that writes tickets continuously, and a SIGKILL in the middle of it.
    let mut load = ticket_load(&server, ["--duration", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || server
        .metric("reprise_disk_stores_written_total")
        >= 500));
    let pid = server.pid();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let _ = load.kill();
    let _ = load.wait();
    drop(server);

    let server = disk.serve();
    let log = server.stderr();
    assert!(!log.contains("moved it aside"), "{log}");
    assert!(log.contains("did not shut down cleanly"), "{log}");
    // The TLS 1.2 session, written before the crash, still resumes.
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_garbage_or_truncated_database_is_set_aside() {
    for damage in ["garbage", "truncated"] {
        let disk = Disk::new(&[]);
        let server = disk.serve();
        for _ in 0..20 {
            assert_eq!(request(&server, &["-tls1_2", "-no_ticket"]), "New");
        }
        assert_eq!(server.terminate().code(), Some(0));
        let file = disk.database();
        let len = std::fs::metadata(&file).unwrap().len();
        match damage {
            "garbage" => std::fs::write(&file, b"this is not a database".repeat(100)).unwrap(),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(len / 2)
                .unwrap(),
        }
        let server = disk.serve();
        let log = server.stderr();
        let lines = log.lines().filter(|l| l.contains("moved it aside")).count();
        if damage == "garbage" {
            assert_eq!(lines, 1, "{log}");
        } else {
            // redb may repair a truncated file instead; either way the server starts and serves.
            assert!(lines <= 1, "{log}");
        }
        assert_eq!(request(&server, &["-tls1_3"]), "New");
        assert_eq!(server.terminate().code(), Some(0));
    }
}

#[test]
fn the_database_stays_within_its_cap() {
    let cap: u64 = 1 << 20;
    let disk = Disk::new(&[
        "--cache-dir-max-bytes",
        &cap.to_string(),
        "--tls13-tickets",
        "8",
    ]);
    let server = disk.serve();
    // Ten times the cap's worth: a sealed ticket is a few hundred bytes.
    let target = 10 * cap / 300;
    let mut rounds = 0;
    while server.metric("reprise_disk_stores_written_total") < target {
        rounds += 1;
        assert!(
            rounds <= 60,
            "not enough sessions written: {}",
            server.metrics_text()
        );
        let out = ticket_load(&server, ["--connections", "500"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // Every queued store written (or skipped for a later deletion in its batch); bounded, and
    // generous for a loaded machine.
    assert!(
        wait_until(Duration::from_secs(30), || {
            server.metric("reprise_disk_stores_queued_total")
                == server.metric("reprise_disk_stores_written_total")
                    + server.metric("reprise_disk_stores_skipped_total")
        }),
        "{}",
        server.metrics_text()
    );
    assert_eq!(server.terminate().code(), Some(0));
    let size = std::fs::metadata(disk.database()).unwrap().len();
    assert!(size <= cap, "{size} > {cap}");
    let server = disk.serve();
    assert!(server.metric("reprise_disk_file_bytes") <= cap);
}

#[test]
fn disk_flags_are_checked() {
    for (args, want) in [
        // With Redis under it, the disk seals with the fleet's key ring, not one of its own.
        (
            vec!["--cache-dir", "/tmp/x", "--redis", "redis://127.0.0.1:1"],
            "--redis needs --key-file",
        ),
        (
            vec!["--cache-dir-max-bytes", "5000000"],
            "cache-dir-max-bytes needs --cache-dir",
        ),
        (
            vec!["--cache-dir", "/tmp/x", "--cache-dir-max-bytes", "1000"],
            "at least 1048576",
        ),
        (
            vec!["--cache-dir", "/proc/reprise-cannot-create"],
            "cache-dir",
        ),
        // The key file's former name still names it, and a bad one is still one line.
        (
            vec![
                "--cache-dir",
                "/tmp/x",
                "--redis-key-file",
                "/nonexistent/keys",
            ],
            "cannot read key file /nonexistent/keys",
        ),
        (
            vec!["--key-file", "/tmp/keys", "--redis-key-file", "/tmp/keys"],
            "--key-file",
        ),
    ] {
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(&args);
        let stderr = fails_to_start(&argv);
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
}

/// Attack 6: a database on which redb itself panics (a file from the fuzzing corpus: the server
/// used to exit 101 on every start) is set aside with one log line and no panic output; the
/// server starts empty, serves, and resumes.
#[test]
fn a_database_that_makes_redb_panic_is_set_aside() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/disk_open");
    let crashing = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("panic-")
        })
        .expect("a panic-* file in the corpus");
    let disk = Disk::new(&[]);
    let cache = disk.database().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&crashing, disk.database()).unwrap();

    let server = disk.serve();
    let log = server.stderr();
    assert_eq!(
        log.lines().filter(|l| l.contains("moved it aside")).count(),
        1,
        "{log}"
    );
    assert!(!log.contains("panicked at"), "{log}");
    assert!(!log.contains("stack backtrace"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sessions.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(cache.join(&aside[0])).unwrap().len(),
        std::fs::read(&crashing).unwrap().len()
    );
    let s12 = disk.file("s12");
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    // A clean restart opens the new file, and nothing more is set aside.
    let server = disk.restart_cleanly(server);
    assert!(!server.stderr().contains("moved it aside"));
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

/// Item 11: the cache directory is 0700 and the database 0600; a key file that group or others
/// can read is used, with one warning that names it and not its contents.
#[cfg(unix)]
#[test]
fn files_are_private_and_an_exposed_key_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let disk = Disk::new(&[]);
    let cache = disk.database().parent().unwrap().to_path_buf();
    let s12 = disk.file("s12");
    let server = disk.serve();
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&disk.database()), 0o600);
    let key = cache.join("key");
    assert_eq!(mode(&key), 0o600);
    assert!(!server.stderr().contains("can be read by group or others"));
    assert_eq!(server.terminate().code(), Some(0));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = disk.serve();
    let log = server.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("can be read by group or others"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("mode=644"), "{log}");
    let key_hex = std::fs::read_to_string(&key).unwrap();
    let key_hex = key_hex.trim().split(':').nth(1).unwrap();
    assert!(!log.contains(key_hex), "the key is in the log");
    // The key still works: the session stored before the restart resumes.
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

/// `--key-file` seals the stored sessions with the operator's key ring (no key is generated in
/// the directory); its former name, `--redis-key-file`, still works, and logs one deprecation
/// line.
#[test]
fn the_key_file_flag_and_its_former_name_both_seal_the_disk() {
    for flag in ["--key-file", "--redis-key-file"] {
        let keys_dir = tempfile::tempdir().unwrap();
        let keys = path_in(keys_dir.path(), "keys");
        std::fs::write(&keys, format!("ops:{}\n", "ab".repeat(32))).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let disk = Disk::new(&[flag, &keys]);
        let s12 = disk.file("s12");
        let server = disk.serve();
        assert_eq!(
            request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
            "New",
            "{flag}"
        );
        let server = disk.restart_cleanly(server);
        assert!(wait_until(Duration::from_secs(10), || server
            .stderr()
            .contains("sessions loaded from disk")));
        assert_eq!(
            request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
            "Reused",
            "{flag}"
        );
        let cache = disk.database().parent().unwrap().to_path_buf();
        assert!(!cache.join("key").exists(), "{flag}: a key was generated");
        let log = server.stderr();
        let deprecations = log.lines().filter(|l| l.contains("deprecated")).count();
        let want = usize::from(flag == "--redis-key-file");
        assert_eq!(deprecations, want, "{flag}: {log}");
        assert_eq!(server.terminate().code(), Some(0));
    }
}
