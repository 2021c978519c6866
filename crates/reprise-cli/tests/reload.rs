//! Hot reload against the real binary (SIGHUP, `reprise reload --pid-file`): an unchanged
//! certificate keeps its sessions, a changed one serves its new chain and starts afresh, a
//! changed client-auth policy never resumes the sessions made before, a reload that fails (bad
//! PEM, a key that does not match, bad TOML, a setting that needs a restart) changes nothing, and
//! connections open across a reload finish their requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{path_in, reprise, reuse_words, s_client, Server};
use reprise_testkit::{wait_until, AnyCert, Pki};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A test PKI and a directory with `web` (web.test) and `api` (api.test) certificates, their
/// keys, the client CA, and the config file that serves them.
struct Site {
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site {
            pki: Pki::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        site.write_leaf("web", &["web.test"], "web");
        site.write_leaf("api", &["api.test"], "api");
        std::fs::write(site.path("ca.pem"), site.pki.ca.cert.pem()).unwrap();
        site
    }

    fn path(&self, name: &str) -> String {
        path_in(self.dir.path(), name)
    }

    /// Writes a new leaf (and key) for `names` as `<file>.pem` and `<file>.key`, with the
    /// common name `cn`.
    fn write_leaf(&self, file: &str, names: &[&str], cn: &str) {
        let leaf = self.pki.ca.leaf(names, Some(cn));
        let chain = leaf.cert.pem() + &self.pki.ca.cert.pem();
        std::fs::write(self.path(&format!("{file}.pem")), chain).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), leaf.key.serialize_pem()).unwrap();
    }

    /// Writes the config file: `listen` (the server's own address), both certificates, and
    /// `api_extra` in the api entry; its path.
    fn config(&self, listen: &str, api_extra: &str) -> String {
        let text = format!(
            "listen = [\"{listen}\"]\npid-file = \"{pid}\"\n\n[[certificate]]\ncert = \"{web}\"\nkey = \"{web_key}\"\n\n[[certificate]]\ncert = \"{api}\"\nkey = \"{api_key}\"\n{api_extra}\n",
            pid = self.path("reprise.pid"),
            web = self.path("web.pem"),
            web_key = self.path("web.key"),
            api = self.path("api.pem"),
            api_key = self.path("api.key"),
        );
        let path = self.path("reprise.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts a server on this config (its own free port, written into the file).
    fn start(&self, api_extra: &str) -> (Server, String) {
        let port = reprise_testkit::free_port();
        let listen = format!("127.0.0.1:{port}");
        let config = self.config(&listen, api_extra);
        let server = Server::start_on(listen.parse().unwrap(), &["--config", &config]);
        (server, listen)
    }

    /// `reprise reload --pid-file`, then waits (bounded) for the reload to be counted as
    /// `result` (`ok` or `error`), `times` times in all.
    fn reload(&self, server: &Server, result: &str, times: u64) {
        let out = reprise()
            .args(["reload", "--pid-file", &self.path("reprise.pid")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let sample = format!("reprise_reloads_total{{result=\"{result}\"}}");
        let counted = wait_until(Duration::from_secs(15), || server.metric(&sample) >= times);
        assert!(counted, "no {sample} = {times}: {}", server.stderr());
        assert_eq!(server.metric(&sample), times);
    }
}

/// One request to `server` for `name`, with `extra` s_client flags: its whole output.
fn named(server: &Server, name: &str, extra: &[&str]) -> String {
    let addr = server.connect_arg();
    let mut args = vec!["-connect", addr.as_str(), "-servername", name, "-ign_eof"];
    args.extend_from_slice(extra);
    s_client(&args, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
}

/// The `New`/`Reused` word of one request's output.
fn word(out: &str) -> String {
    let words = reuse_words(out);
    assert_eq!(words.len(), 1, "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    words[0].clone()
}

/// The SHA-256 fingerprint of the first certificate in `pem` (a file's contents, or s_client's
/// output, which prints the server's leaf), by `openssl x509`.
fn fingerprint(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().rsplit('=').next().unwrap().to_owned();
    assert_eq!(hex.len(), 95, "{text}");
    hex
}

/// The `sid_ctx` label of the `reprise_certificate_info` line of the entry that serves `name`.
fn context(server: &Server, name: &str) -> String {
    let text = server.metrics_text();
    let label = format!("names=\"{name}\"");
    text.lines()
        .filter(|l| l.starts_with("reprise_certificate_info{") && l.contains(&label))
        .filter_map(|l| l.split("sid_ctx=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .next()
        .unwrap_or_else(|| panic!("no entry for {name}: {text}"))
        .to_owned()
}

#[test]
fn an_unchanged_certificate_keeps_its_sessions_and_a_changed_one_starts_afresh() {
    let site = Site::new();
    let (server, _) = site.start("");
    let (web12, web13, api12) = (site.path("w12"), site.path("w13"), site.path("a12"));
    let (web_ctx, api_ctx) = (context(&server, "web.test"), context(&server, "api.test"));
    for (name, version, file) in [
        ("web.test", "-tls1_2", &web12),
        ("web.test", "-tls1_3", &web13),
        ("api.test", "-tls1_2", &api12),
    ] {
        let out = named(&server, name, &[version, "-no_ticket", "-sess_out", file]);
        assert_eq!(word(&out), "New");
    }
    let old_api = std::fs::read_to_string(site.path("api.pem")).unwrap();
    let out = named(&server, "api.test", &[]);
    assert_eq!(fingerprint(&out), fingerprint(&old_api));

    // api gets a new certificate and key; web's files stay as they are.
    site.write_leaf("api", &["api.test"], "api-renewed");
    site.reload(&server, "ok", 1);
    let new_api = std::fs::read_to_string(site.path("api.pem")).unwrap();
    assert_ne!(fingerprint(&new_api), fingerprint(&old_api));

    let out = named(&server, "api.test", &["-tls1_2", "-sess_in", &api12]);
    assert_eq!(
        word(&out),
        "New",
        "a session of the old certificate resumed"
    );
    assert_eq!(fingerprint(&out), fingerprint(&new_api));
    for (version, file) in [("-tls1_2", &web12), ("-tls1_3", &web13)] {
        let out = named(&server, "web.test", &[version, "-sess_in", file]);
        assert_eq!(word(&out), "Reused", "{version}: web's session was lost");
    }
    assert_eq!(context(&server, "web.test"), web_ctx);
    assert_ne!(context(&server, "api.test"), api_ctx);
    let log = server.stderr();
    let afresh: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("its sessions start afresh"))
        .collect();
    assert_eq!(afresh.len(), 1, "{log}");
    assert!(afresh[0].contains("api.pem"), "{log}");
    assert!(
        log.contains("reloaded certificates=2 sessions_kept=1 sessions_afresh=1"),
        "{log}"
    );
}

#[test]
fn a_session_never_resumes_after_its_entry_s_client_auth_policy_changed() {
    let site = Site::new();
    let (server, listen) = site.start("");
    let (s12, s13) = (site.path("s12"), site.path("s13"));
    for (version, file) in [("-tls1_2", &s12), ("-tls1_3", &s13)] {
        let out = named(
            &server,
            "api.test",
            &[version, "-no_ticket", "-sess_out", file],
        );
        assert_eq!(word(&out), "New");
    }
    // The same certificate, now asking for client certificates (optional: s_client, which
    // has none, still connects).
    site.config(
        &listen,
        &format!(
            "client-ca = \"{}\"\nclient-auth = \"optional\"",
            site.path("ca.pem")
        ),
    );
    site.reload(&server, "ok", 1);
    let hits = server.metric("reprise_cache_hits_total");
    for (version, file) in [("-tls1_2", &s12), ("-tls1_3", &s13)] {
        let out = named(&server, "api.test", &[version, "-sess_in", file]);
        assert_eq!(
            word(&out),
            "New",
            "{version}: resumed across a policy change"
        );
    }
    assert_eq!(server.metric("reprise_cache_hits_total"), hits);
    assert!(server.stderr().contains("its sessions start afresh"));
}

/// A change to the files that a reload must refuse.
type Breakage<'a> = Box<dyn Fn() + 'a>;

#[test]
fn a_reload_that_fails_changes_nothing() {
    let site = Site::new();
    let (server, listen) = site.start("");
    let sess = site.path("sess");
    let out = named(
        &server,
        "api.test",
        &["-tls1_2", "-no_ticket", "-sess_out", &sess],
    );
    assert_eq!(word(&out), "New");
    let served = fingerprint(&out);
    let good_pem = std::fs::read(site.path("api.pem")).unwrap();
    let good_key = std::fs::read(site.path("api.key")).unwrap();
    let good_config = std::fs::read(site.path("reprise.toml")).unwrap();

    let breakages: [(&str, Breakage); 5] = [
        (
            "api.pem",
            Box::new(|| {
                std::fs::write(
                    site.path("api.pem"),
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n",
                )
                .unwrap()
            }),
        ),
        (
            "does the key belong to the certificate?",
            Box::new(|| {
                std::fs::copy(site.path("web.key"), site.path("api.key"))
                    .map(drop)
                    .unwrap()
            }),
        ),
        (
            "reprise.toml",
            Box::new(|| {
                std::fs::write(
                    site.path("reprise.toml"),
                    "listen = [\"127.0.0.1:1\"\n[[certificate",
                )
                .unwrap()
            }),
        ),
        (
            "listen changed, which needs a restart",
            Box::new(|| {
                // A new certificate with it: not served either, since the reload fails whole.
                site.write_leaf("api", &["api.test"], "api-next");
                site.config("127.0.0.1:1", "");
            }),
        ),
        (
            "client CA",
            Box::new(|| {
                site.config(
                    &listen,
                    &format!(
                        "client-ca = \"{}\"\nclient-auth = \"required\"",
                        site.path("missing.pem")
                    ),
                );
            }),
        ),
    ];
    for (n, (problem, breakage)) in breakages.iter().enumerate() {
        breakage();
        site.reload(&server, "error", n as u64 + 1);
        let log = server.stderr();
        let failures: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reload failed"))
            .collect();
        assert_eq!(failures.len(), n + 1, "{log}");
        assert!(failures[n].contains(problem), "{problem}: {}", failures[n]);
        assert!(failures[n].contains("nothing changed"), "{}", failures[n]);
        // Everything as it was: the same certificate, and its session resumes.
        let out = named(&server, "api.test", &["-tls1_2", "-sess_in", &sess]);
        assert_eq!(word(&out), "Reused", "after {problem}");
        assert_eq!(fingerprint(&out), served);
        // Put the files back for the next breakage.
        std::fs::write(site.path("api.pem"), &good_pem).unwrap();
        std::fs::write(site.path("api.key"), &good_key).unwrap();
        std::fs::write(site.path("reprise.toml"), &good_config).unwrap();
    }
    assert_eq!(server.metric("reprise_reloads_total{result=\"ok\"}"), 0);
    site.reload(&server, "ok", 1);
    let out = named(&server, "api.test", &["-tls1_2", "-sess_in", &sess]);
    assert_eq!(word(&out), "Reused");
}

/// A TLS connection made with rustls, trusting any certificate.
fn connect(server: &Server, name: &str) -> StreamOwned<ClientConnection, TcpStream> {
    let provider = rustls::crypto::ring::default_provider();
    let config = ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Sends one keep-alive request and reads its response (the built-in responder's body ends
/// with its `resumed:` line).
fn keep_alive_request(tls: &mut StreamOwned<ClientConnection, TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed mid-response");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length: ")
                        .or(l.strip_prefix("Content-Length: "))
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no length: {head}"));
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
    panic!("no whole response: {}", String::from_utf8_lossy(&response));
}

#[test]
fn connections_open_across_a_reload_finish_their_requests() {
    let site = Site::new();
    let (server, _) = site.start("");
    let mut open = connect(&server, "api.test");
    assert!(keep_alive_request(&mut open).starts_with("HTTP/1.1 200"));
    let before = open.conn.peer_certificates().unwrap()[0].clone();

    site.write_leaf("api", &["api.test"], "api-renewed");
    site.reload(&server, "ok", 1);
    // The open connection goes on, on the certificate it was given.
    let second = keep_alive_request(&mut open);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(open.conn.peer_certificates().unwrap()[0], before);
    // A new one gets the new certificate.
    let mut fresh = connect(&server, "api.test");
    assert!(keep_alive_request(&mut fresh).starts_with("HTTP/1.1 200"));
    assert_ne!(fresh.conn.peer_certificates().unwrap()[0], before);
    let failures: u64 = server
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("reprise_handshake_failures_total{"))
        // The harness's readiness probe connects and closes: one eof.
        .filter(|l| !l.contains("reason=\"eof\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failures, 0, "{}", server.metrics_text());
}

#[test]
fn a_self_signed_certificate_is_kept_across_a_reload() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let sess = path_in(dir.path(), "sess");
    let out = named(
        &server,
        "localhost",
        &["-tls1_2", "-no_ticket", "-sess_out", &sess],
    );
    assert_eq!(word(&out), "New");
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sample = "reprise_reloads_total{result=\"ok\"}";
    assert!(wait_until(Duration::from_secs(15), || server
        .metric(sample)
        == 1));
    let again = named(
        &server,
        "localhost",
        &["-tls1_2", "-no_ticket", "-sess_in", &sess],
    );
    assert_eq!(word(&again), "Reused");
    assert_eq!(fingerprint(&again), fingerprint(&out));
}
