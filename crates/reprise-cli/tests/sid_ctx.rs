//! Attack 2 of issue 13, against the real binary: an explicit `--sid-ctx` still binds the
//! client-certificate policy and the trusted CAs, so a session made without a client
//! certificate never resumes where one is asked for, whether the sessions are shared through
//! Redis or kept in a `--cache-dir` across a configuration change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fleet_flags, path_in, reprise, request, s_client, Server};
use reprise_testkit::Pki;
use reprise_testkit::{wait_until, RedisServer};

/// `reprise keygen`: one key-file line.
fn keygen() -> String {
    let out = reprise().args(["keygen", "--name", "k1"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) until an instance has written `n` sessions to Redis.
fn written(server: &Server, n: u64) {
    let ok = wait_until(Duration::from_secs(10), || {
        server.metric("reprise_redis_stores_written_total") >= n
    });
    assert!(ok, "{} sessions not written to Redis", n);
}

/// One request without a client certificate, reusing `sess`: s_client's whole output.
fn resume_without_cert(server: &Server, version: &str, sess: &str) -> String {
    let addr = server.connect_arg();
    s_client(
        &[
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-ign_eof",
            version,
            "-no_ticket",
            "-sess_in",
            sess,
        ],
        b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
}

#[test]
fn a_named_context_shared_through_redis_never_carries_a_session_into_mtls() {
    let redis = RedisServer::start();
    let pki = Pki::new().write_pem();
    let dir = tempfile::tempdir().unwrap();
    let keys = path_in(dir.path(), "keys");
    std::fs::write(&keys, keygen()).unwrap();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let url = redis.url();
    let instance = |extra: &[&str]| {
        let mut args = vec!["--cert", &cert, "--key", &key, "--sid-ctx", "web"];
        args.extend_from_slice(&fleet_flags(&url, &keys));
        args.extend_from_slice(extra);
        Server::start(&args)
    };
    let plain = instance(&[]);
    let plain_twin = instance(&[]);
    let required = instance(&["--client-ca", &ca]);
    let optional = instance(&["--client-ca", &ca, "--client-auth", "optional"]);

    let mut stored = 0;
    for version in ["-tls1_2", "-tls1_3"] {
        // The fleet shares sessions under the name: the plain twin resumes them.
        let shared = path_in(dir.path(), "shared");
        assert_eq!(
            request(&plain, &[version, "-no_ticket", "-sess_out", &shared]),
            "New"
        );
        stored += if version == "-tls1_2" { 1 } else { 2 };
        written(&plain, stored);
        assert_eq!(
            request(&plain_twin, &[version, "-no_ticket", "-sess_in", &shared]),
            "Reused"
        );

        // Where a certificate is optional, the plain session is not resumed: a full handshake.
        let sess = path_in(dir.path(), "for-optional");
        assert_eq!(
            request(&plain, &[version, "-no_ticket", "-sess_out", &sess]),
            "New"
        );
        stored += if version == "-tls1_2" { 1 } else { 2 };
        written(&plain, stored);
        assert_eq!(
            request(&optional, &[version, "-no_ticket", "-sess_in", &sess]),
            "New"
        );

        // Where one is required, the plain session is not resumed, and without a certificate
        // the handshake fails.
        let sess = path_in(dir.path(), "for-required");
        assert_eq!(
            request(&plain, &[version, "-no_ticket", "-sess_out", &sess]),
            "New"
        );
        stored += if version == "-tls1_2" { 1 } else { 2 };
        written(&plain, stored);
        let out = resume_without_cert(&required, version, &sess);
        assert!(!out.contains("Reused"), "{out}");
        assert!(!out.contains("resumed: yes"), "{out}");
        assert!(!out.contains("200 OK"), "{out}");
    }
    for version in ["TLSv1.2", "TLSv1.3"] {
        let resumed = format!("reprise_handshakes_total{{kind=\"resumed\",version=\"{version}\"}}");
        assert_eq!(required.metric(&resumed), 0);
        assert_eq!(optional.metric(&resumed), 0);
        assert_eq!(plain_twin.metric(&resumed), 1);
    }
}

#[test]
fn adding_a_client_ca_under_the_same_name_drops_the_sessions_on_disk() {
    let pki = Pki::new().write_pem();
    let work = tempfile::tempdir().unwrap();
    let cache = path_in(work.path(), "cache");
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--cert",
            &cert,
            "--key",
            &key,
            "--sid-ctx",
            "web",
            "--cache-dir",
            &cache,
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    };
    let (s12, s13) = (path_in(work.path(), "s12"), path_in(work.path(), "s13"));

    let server = start(&[]);
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_out", &s12]),
        "New"
    );
    assert_eq!(request(&server, &["-tls1_3", "-sess_out", &s13]), "New");
    assert_eq!(server.terminate().code(), Some(0));

    // The same name, now with client certificates required: no resumption.
    let server = start(&["--client-ca", &ca]);
    for (version, sess) in [("-tls1_2", &s12), ("-tls1_3", &s13)] {
        let out = resume_without_cert(&server, version, sess);
        assert!(!out.contains("Reused"), "{out}");
        assert!(!out.contains("200 OK"), "{out}");
    }
    assert_eq!(server.terminate().code(), Some(0));

    // Optional: a full handshake.
    let server = start(&["--client-ca", &ca, "--client-auth", "optional"]);
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "New"
    );
    assert_eq!(server.terminate().code(), Some(0));

    // Back to the plain configuration: the session on disk resumes (the name alone still
    // matches, and a certificate renewal would not change it).
    let server = start(&[]);
    assert_eq!(
        request(&server, &["-tls1_2", "-no_ticket", "-sess_in", &s12]),
        "Reused"
    );
    assert_eq!(request(&server, &["-tls1_3", "-sess_in", &s13]), "Reused");
}
