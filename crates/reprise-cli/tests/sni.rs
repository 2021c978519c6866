//! Several certificates on one listener, against the real binary: each answers its names (SNI),
//! the first is the default, `--strict-sni` refuses unknown names, each entry is its own
//! security context (an mTLS entry and a plain one never share a session, TLS 1.2 and 1.3),
//! OCSP responses are stapled (an expired one is not), and bad settings stop the start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{fails_to_start, path_in, reuse_words, s_client, Server};
use reprise_testkit::{wait_until, Leaf, Pki};

/// The test CA, and two leaves it signs: `web` (web.test, www.web.test) and `api` (api.test,
/// *.api.test), written with their chains (leaf, then CA) into `dir`.
struct Two {
    pki: Pki,
    web: Leaf,
    api: Leaf,
    dir: tempfile::TempDir,
}

impl Two {
    fn new() -> Two {
        let pki = Pki::new();
        let web = pki.ca.leaf(&["web.test", "www.web.test"], Some("web"));
        let api = pki.ca.leaf(&["api.test", "*.api.test"], Some("api"));
        let dir = tempfile::tempdir().unwrap();
        let ca = pki.ca.cert.pem();
        for (name, leaf) in [("web", &web), ("api", &api)] {
            std::fs::write(
                dir.path().join(format!("{name}.pem")),
                leaf.cert.pem() + &ca,
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                leaf.key.serialize_pem(),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        std::fs::write(dir.path().join("client.pem"), pki.client.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("client.key"),
            pki.client.key.serialize_pem(),
        )
        .unwrap();
        Two { pki, web, api, dir }
    }

    fn path(&self, name: &str) -> String {
        path_in(self.dir.path(), name)
    }

    /// Writes `text` as a config file; its path.
    fn config(&self, text: &str) -> String {
        let path = self.path("reprise.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Both as flags, web first (the default).
    fn flags(&self) -> Vec<String> {
        [
            "--cert", "web.pem", "--key", "web.key", "--cert", "api.pem", "--key", "api.key",
        ]
        .iter()
        .map(|a| {
            if a.starts_with("--") {
                (*a).to_owned()
            } else {
                self.path(a)
            }
        })
        .collect()
    }
}

/// One request through s_client with `extra` flags: its whole output.
fn get(server: &Server, extra: &[&str]) -> String {
    let addr = server.connect_arg();
    let mut args = vec!["-connect", addr.as_str(), "-ign_eof"];
    args.extend_from_slice(extra);
    s_client(&args, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
}

/// One request to `server` asking for the server name `name`.
fn named(server: &Server, name: &str, extra: &[&str]) -> String {
    get(server, &[&["-servername", name][..], extra].concat())
}

/// The common name of the certificate the server presented.
fn served_cn(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("subject=CN = "))
        .map(str::to_owned)
}

/// The `New`/`Reused` word of one request.
fn word(out: &str) -> String {
    let words = reuse_words(out);
    assert_eq!(words.len(), 1, "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    words[0].clone()
}

/// A metric's value, by its whole name and labels.
fn metric(server: &Server, sample: &str) -> u64 {
    server.metric(sample)
}

/// The `sid_ctx` label of every `reprise_certificate_info` line.
fn contexts(server: &Server) -> Vec<String> {
    server
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("reprise_certificate_info{"))
        .filter_map(|l| l.split("sid_ctx=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_certificate_answers_its_names_and_the_first_is_the_default() {
    let two = Two::new();
    let flags = two.flags();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    for (name, cn) in [
        ("web.test", "web"),
        ("WWW.Web.Test", "web"),
        ("api.test", "api"),
        ("v1.api.test", "api"),
        // Unknown, or a wildcard two labels down: the default.
        ("unknown.test", "web"),
        ("a.b.api.test", "web"),
    ] {
        let out = get(&server, &["-servername", name]);
        assert_eq!(served_cn(&out).as_deref(), Some(cn), "{name}: {out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    }
    // The start's readiness probe (a connection without a hello) counts as missing too: wait
    // until it is counted (bounded), so that it does not land with the request below.
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&server, "reprise_sni_missing_total") >= 1
    }));
    let missing = metric(&server, "reprise_sni_missing_total");
    let out = get(&server, &["-noservername"]);
    assert_eq!(served_cn(&out).as_deref(), Some("web"), "{out}");
    assert_eq!(metric(&server, "reprise_sni_unknown_total"), 2);
    assert_eq!(metric(&server, "reprise_sni_missing_total"), missing + 1);
    assert_eq!(
        metric(&server, "reprise_certificate_hellos_total{entry=\"1\"}"),
        2
    );
    // Each entry its own context, in the metrics and in the start log.
    let ctx = contexts(&server);
    assert_eq!(ctx.len(), 2);
    assert_ne!(ctx[0], ctx[1]);
    let log = server.stderr();
    for c in &ctx {
        assert!(log.contains(&format!("sid_ctx={c}")), "{c}: {log}");
    }
}

#[test]
fn strict_sni_refuses_unknown_names_and_hellos_without_one() {
    let two = Two::new();
    let mut flags = two.flags();
    flags.push("--strict-sni".to_owned());
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    // The start's readiness probe (a connection without a hello) is refused too: wait until
    // it is counted (bounded), so that it does not land among the two below.
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&server, "reprise_sni_refused_total") >= 1
    }));
    let before = metric(&server, "reprise_sni_refused_total");
    for refused in [&["-servername", "unknown.test"][..], &["-noservername"][..]] {
        let out = get(&server, refused);
        assert!(served_cn(&out).is_none(), "{out}");
        assert!(!out.contains("200 OK"), "{out}");
    }
    let out = get(&server, &["-servername", "api.test"]);
    assert_eq!(served_cn(&out).as_deref(), Some("api"), "{out}");
    assert_eq!(metric(&server, "reprise_sni_refused_total"), before + 2);
    // The server survives, and logs no warning for a refusal.
    assert!(!server.stderr().contains("WARN"), "{}", server.stderr());
}

/// The plain entry serves web.test and www.web.test; the mTLS entry (client certificate
/// optional, so that a handshake without one completes) serves api.test. rustls already
/// refuses a session offered under another name, so what is checked is what it does not see:
/// the mTLS entry's store never finds the plain entry's sessions (the cache's hits stay, a
/// TLS 1.2 ticket is rejected for its context, a TLS 1.3 ticket is not taken), while the
/// plain entry's two names share one context (its store finds the session under the other
/// name, then rustls refuses it for the name).
#[test]
fn an_mtls_entry_and_a_plain_entry_never_share_a_session() {
    let two = Two::new();
    let config = two.config(&format!(
        r#"
        [[certificate]]
        cert = "{web}"
        key = "{web_key}"

        [[certificate]]
        cert = "{api}"
        key = "{api_key}"
        client-ca = "{ca}"
        client-auth = "optional"
        "#,
        web = two.path("web.pem"),
        web_key = two.path("web.key"),
        api = two.path("api.pem"),
        api_key = two.path("api.key"),
        ca = two.path("ca.pem"),
    ));
    let server = Server::start(&["--config", &config]);
    let ctx = contexts(&server);
    assert_eq!(ctx.len(), 2);
    assert_ne!(ctx[0], ctx[1]);
    let hits = || metric(&server, "reprise_cache_hits_total");
    let sess = two.path("sess");

    // TLS 1.2, sessions by id.
    let out = named(
        &server,
        "web.test",
        &["-tls1_2", "-no_ticket", "-sess_out", &sess],
    );
    assert_eq!(word(&out), "New");
    let before = hits();
    let out = named(
        &server,
        "api.test",
        &["-tls1_2", "-no_ticket", "-sess_in", &sess],
    );
    assert_eq!(word(&out), "New");
    assert_eq!(served_cn(&out).as_deref(), Some("api"));
    assert_eq!(
        hits(),
        before,
        "the mTLS entry's store found a plain session"
    );
    let out = named(
        &server,
        "www.web.test",
        &["-tls1_2", "-no_ticket", "-sess_in", &sess],
    );
    assert_eq!(word(&out), "New");
    assert_eq!(hits(), before + 1, "one entry's names share one context");
    let out = named(
        &server,
        "web.test",
        &["-tls1_2", "-no_ticket", "-sess_in", &sess],
    );
    assert_eq!(word(&out), "Reused");

    // TLS 1.2, tickets: the mTLS entry's ticketer rejects the plain entry's ticket for its
    // context.
    let wrong = "reprise_tickets_rejected_total{reason=\"wrong_context\"}";
    let out = named(&server, "web.test", &["-tls1_2", "-sess_out", &sess]);
    assert_eq!(word(&out), "New");
    let rejected = metric(&server, wrong);
    let out = named(&server, "api.test", &["-tls1_2", "-sess_in", &sess]);
    assert_eq!(word(&out), "New");
    assert_eq!(metric(&server, wrong), rejected + 1);
    let out = named(&server, "web.test", &["-tls1_2", "-sess_in", &sess]);
    assert_eq!(word(&out), "Reused");

    // TLS 1.3, stateful tickets: offered under the mTLS entry, the plain entry's ticket is not
    // taken, and still resumes under its own name.
    let out = named(&server, "web.test", &["-tls1_3", "-sess_out", &sess]);
    assert_eq!(word(&out), "New");
    let out = named(&server, "api.test", &["-tls1_3", "-sess_in", &sess]);
    assert_eq!(word(&out), "New");
    assert_eq!(served_cn(&out).as_deref(), Some("api"));
    let out = named(&server, "web.test", &["-tls1_3", "-sess_in", &sess]);
    assert_eq!(word(&out), "Reused");
    // Under the plain entry's other name, a ticket is taken (one context), and rustls then
    // refuses it for the name: it is spent.
    let out = named(&server, "web.test", &["-tls1_3", "-sess_out", &sess]);
    assert_eq!(word(&out), "New");
    let out = named(&server, "www.web.test", &["-tls1_3", "-sess_in", &sess]);
    assert_eq!(word(&out), "New");
    let out = named(&server, "web.test", &["-tls1_3", "-sess_in", &sess]);
    assert_eq!(word(&out), "New");
    for version in ["TLSv1.2", "TLSv1.3"] {
        let resumed = format!("reprise_handshakes_total{{kind=\"resumed\",version=\"{version}\"}}");
        assert_eq!(
            metric(&server, &resumed),
            if version == "TLSv1.2" { 2 } else { 1 }
        );
    }
}

/// Writes an OCSP response for `leaf` as `name`: valid a day, or already expired.
///
/// `openssl ocsp` dates its responses from now on. An expired one is that response with its
/// times (producedAt, thisUpdate, nextUpdate: each a DER GeneralizedTime) moved back to 2001,
/// which leaves it well-formed; its signature no longer verifies, which the server does not
/// check, and no client sees it, since it is not stapled.
fn ocsp(two: &Two, leaf: &Leaf, expired: bool, name: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let mut der = two.pki.ca.ocsp_response(leaf, 1, work.path());
    if expired {
        let mut moved = 0;
        let mut i = 0;
        while i + 17 <= der.len() {
            let time = &der[i + 2..i + 17];
            if der[i] == 0x18
                && der[i + 1] == 15
                && time[..14].iter().all(u8::is_ascii_digit)
                && time[14] == b'Z'
            {
                der[i + 2..i + 6].copy_from_slice(b"2001");
                moved += 1;
                i += 17;
            } else {
                i += 1;
            }
        }
        assert!(moved >= 2, "no dates found in the OCSP response");
    }
    let path = two.path(name);
    std::fs::write(&path, der).unwrap();
    path
}

fn entries_with_ocsp(two: &Two, web_ocsp: &str, api_ocsp: &str) -> String {
    format!(
        r#"
        [[certificate]]
        cert = "{web}"
        key = "{web_key}"
        ocsp = "{web_ocsp}"

        [[certificate]]
        cert = "{api}"
        key = "{api_key}"
        ocsp = "{api_ocsp}"
        "#,
        web = two.path("web.pem"),
        web_key = two.path("web.key"),
        api = two.path("api.pem"),
        api_key = two.path("api.key"),
    )
}

#[test]
fn ocsp_responses_are_stapled_and_an_expired_one_is_not() {
    let two = Two::new();
    let good = ocsp(&two, &two.web, false, "web.ocsp");
    let expired = ocsp(&two, &two.api, true, "api.ocsp");
    let config = two.config(&entries_with_ocsp(&two, &good, &expired));
    let server = Server::start(&["--config", &config]);
    for version in ["-tls1_2", "-tls1_3"] {
        let out = named(&server, "web.test", &["-status", version]);
        assert!(out.contains("OCSP Response Status: successful"), "{out}");
        assert!(out.contains("Cert Status: good"), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
        let out = named(&server, "api.test", &["-status", version]);
        assert!(out.contains("OCSP response: no response sent"), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    }
    assert_eq!(
        metric(&server, "reprise_certificate_ocsp_stapled{entry=\"0\"}"),
        1
    );
    assert_eq!(
        metric(&server, "reprise_certificate_ocsp_stapled{entry=\"1\"}"),
        0
    );
    let log = server.stderr();
    assert_eq!(log.matches("OCSP response expired").count(), 1, "{log}");

    // The responses are read again on SIGHUP: now api's is fresh and web's has expired.
    ocsp(&two, &two.api, false, "api.ocsp");
    ocsp(&two, &two.web, true, "web.ocsp");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = wait_until(Duration::from_secs(15), || {
        metric(&server, "reprise_reloads_total{result=\"ok\"}") == 1
    });
    assert!(reloaded, "{}", server.stderr());
    for version in ["-tls1_2", "-tls1_3"] {
        let out = named(&server, "api.test", &["-status", version]);
        assert!(out.contains("Cert Status: good"), "{out}");
        let out = named(&server, "web.test", &["-status", version]);
        assert!(out.contains("OCSP response: no response sent"), "{out}");
    }
    assert_eq!(
        metric(&server, "reprise_certificate_ocsp_stapled{entry=\"0\"}"),
        0
    );
}

#[test]
fn bad_certificate_settings_are_one_line_and_exit_2() {
    let two = Two::new();
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        fails_to_start(&args)
    };
    let (web, web_key, api, api_key) = (
        two.path("web.pem"),
        two.path("web.key"),
        two.path("api.pem"),
        two.path("api.key"),
    );
    // Flags.
    let e = serve(&["--cert", &web, "--key", &web_key, "--cert", &api]);
    assert!(e.contains("in pairs"), "{e}");
    let e = serve(&[
        "--cert",
        &web,
        "--key",
        &web_key,
        "--cert",
        "/nonexistent/a.pem",
        "--key",
        &api_key,
    ]);
    assert!(e.contains("/nonexistent/a.pem"), "{e}");
    let e = serve(&[
        "--cert", &web, "--key", &web_key, "--cert", &api, "--key", &web_key,
    ]);
    assert!(e.contains("does the key belong"), "{e}");
    let e = serve(&[
        "--cert", &web, "--key", &web_key, "--cert", &web, "--key", &web_key,
    ]);
    assert!(e.contains("both serve web.test"), "{e}");
    let e = serve(&["--strict-sni=yes"]);
    assert!(e.contains("strict-sni"), "{e}");

    // The settings file.
    let good_ocsp = ocsp(&two, &two.web, false, "web.ocsp");
    let garbage = two.path("garbage.ocsp");
    std::fs::write(&garbage, b"not an OCSP response").unwrap();
    let entry =
        |extra: &str| format!("[[certificate]]\ncert = \"{web}\"\nkey = \"{web_key}\"\n{extra}\n");
    let cases: Vec<(String, &str)> = vec![
        (format!("[[certificate]]\ncert = \"{web}\"\n"), "cert and key are both needed"),
        (entry("names = [\"bad name\"]"), "not a DNS name"),
        (entry("names = []"), "names is empty"),
        (entry("colour = \"blue\""), "colour"),
        (entry("client-auth = \"required\""), "client-auth needs client-ca"),
        (entry("client-auth = \"sometimes\""), "sometimes"),
        (entry("ocsp = \"/nonexistent/x.ocsp\""), "/nonexistent/x.ocsp"),
        (entry(&format!("ocsp = \"{garbage}\"")), "not a DER OCSP response"),
        (
            format!("[[certificate]]\ncert = \"{api}\"\nkey = \"{api_key}\"\nocsp = \"{good_ocsp}\"\n"),
            "not for this certificate",
        ),
        (entry("sid-ctx = \"a-name-much-longer-than-thirty-two-bytes\""), "sid-ctx"),
        (format!("cert = \"{web}\"\nkey = \"{web_key}\"\n{}", entry("")), "give one of the two"),
        (format!("client-ca = \"{}\"\n{}", two.path("ca.pem"), entry("")), "in each [[certificate]]"),
        (
            format!("{}{}", entry("names = [\"one.test\"]"), entry("names = [\"two.test\"]")),
            "one session-id context",
        ),
        (
            format!(
                "{}[[certificate]]\ncert = \"{api}\"\nkey = \"{api_key}\"\nnames = [\"WEB.test\"]\n",
                entry("")
            ),
            "both serve web.test",
        ),
        ("strict-sni = \"yes\"\n".to_owned(), "expected a boolean"),
    ];
    for (text, expected) in cases {
        let config = two.config(&text);
        let e = serve(&["--config", &config]);
        assert!(e.contains(expected), "{expected}: {e}\n{text}");
    }
}
