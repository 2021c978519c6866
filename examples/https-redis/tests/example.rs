//! Runs the example: two instances on free loopback ports against a real `redis-server`; a
//! client's first connection, to one, is a full handshake, and its second, to the other,
//! resumes through Redis. And the README shows the example's user code as it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reprise_testkit::{wait_until, RedisServer, TestCa};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One instance of the example, killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    fn start(redis: &RedisServer, dir: &std::path::Path) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_https-redis"))
            .arg("127.0.0.1:0")
            .arg(redis.url())
            .args(["keys", "cert.pem", "key.pem"].map(|f| dir.join(f)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the example said {line:?}"))
            .parse()
            .unwrap();
        Instance { child, addr }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS request; the client's handshake kind and the server's answer.
async fn get(addr: SocketAddr, client: &Arc<ClientConfig>) -> (Option<HandshakeKind>, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server may close without close_notify: what was read is the answer.
    let _ = tls.read_to_end(&mut answer).await;
    let kind = tls.get_ref().1.handshake_kind();
    (kind, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_second_instance_resumes_through_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = ca.sign(&["localhost"], None, &key);
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("keys"),
        format!("demo:{}\n", "5a".repeat(32)),
    )
    .unwrap();
    let a = Instance::start(&redis, dir.path());
    let b = Instance::start(&redis, dir.path());

    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        redis.command(&["FLUSHALL"]).unwrap();
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let client = Arc::new(client);

        let (kind, answer) = get(a.addr, &client).await;
        assert_eq!(kind, Some(HandshakeKind::Full), "{version:?}");
        assert!(answer.contains("handshake: Some(Full)"), "{answer}");
        // Sessions reach Redis through a queue: wait for them (bounded).
        let stored = wait_until(Duration::from_secs(10), || {
            redis
                .command(&["DBSIZE"])
                .and_then(|n| n.trim().trim_start_matches(':').parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
        });
        assert!(stored, "{version:?}: nothing reached Redis");

        let (kind, answer) = get(b.addr, &client).await;
        assert_eq!(kind, Some(HandshakeKind::Resumed), "{version:?}");
        assert!(answer.contains("handshake: Some(Resumed)"), "{answer}");
    }
}

#[test]
fn the_readme_shows_the_user_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let main = std::fs::read_to_string(format!("{root}/examples/https-redis/src/main.rs")).unwrap();
    let code = main
        .split("// user code: begin\n")
        .nth(1)
        .and_then(|rest| rest.split("// user code: end").next())
        .unwrap();
    assert!(readme.contains(code.trim_end()), "README.md is out of date");
    assert!(code.lines().count() < 60, "{} lines", code.lines().count());
}
