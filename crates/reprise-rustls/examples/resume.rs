//! A full and then a resumed rustls handshake over loopback TCP, through a Reprise cache, for
//! TLS 1.2 and TLS 1.3; then the cache's statistics.
//!
//! Run it with `cargo run --release -p reprise-rustls --example resume`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use reprise::SessionCache;
use reprise_rustls::{derive_sid_ctx, ClientAuth, ServerStore};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
    StreamOwned,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Serves `n` connections: handshake, read one line, answer, close cleanly.
fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    store: ServerStore,
    n: usize,
) -> Result<()> {
    for _ in 0..n {
        let (mut tcp, _) = listener.accept()?;
        let sessions = store.connection();
        let mut conn = ServerConnection::new(config.clone())?;
        // The cache's stores learn which connection they work for inside `enter`.
        sessions.enter(|| -> Result<()> {
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp)?;
            }
            Ok(())
        })?;
        sessions.handshake_completed(conn.handshake_kind());
        let mut stream = StreamOwned::new(conn, tcp);
        let mut line = [0u8; 5];
        if let Err(e) = sessions.enter(|| stream.read_exact(&mut line)) {
            // A TLS failure (a fatal alert, a bad record) removes the connection's sessions;
            // a client that merely went away (FIN, RST) keeps them.
            if reprise_rustls::is_tls_failure(&e) {
                sessions.failed();
            }
            return Err(e.into());
        }
        let kind = match stream.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        stream.write_all(kind.as_bytes())?;
        stream.conn.send_close_notify();
        sessions.closed_cleanly();
        sessions.enter(|| stream.conn.complete_io(&mut stream.sock))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let chain = vec![cert.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert.cert.der().to_vec()))?;
    let roots = Arc::new(roots);

    // One cache; its sessions are namespaced by a context derived from the certificate.
    let cache = Arc::new(SessionCache::new());
    let sid_ctx = derive_sid_ctx(&chain, ClientAuth::None, b"");
    let store = ServerStore::new(cache.clone(), sid_ctx, ClientAuth::None)?;

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut server_config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[version])?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?;
        server_config.session_storage = Arc::new(store.clone());
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = {
            let (config, store) = (Arc::new(server_config), store.clone());
            thread::spawn(move || serve(listener, config, store, 2))
        };

        let client_config = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(default_provider()))
                .with_protocol_versions(&[version])?
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        for attempt in 1..=2 {
            let conn =
                ClientConnection::new(client_config.clone(), ServerName::try_from("localhost")?)?;
            let mut stream = StreamOwned::new(conn, TcpStream::connect(addr)?);
            stream.write_all(b"hello")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            let version = stream
                .conn
                .protocol_version()
                .map_or("?".to_owned(), |v| format!("{v:?}"));
            println!("{version} connection {attempt}: server says {answer} handshake");
        }
        server.join().map_err(|_| "server thread panicked")??;
    }

    let s = cache.stats();
    println!();
    println!("cache statistics");
    for (name, value) in [
        ("number", s.number),
        ("accept", s.accept),
        ("accept_good", s.accept_good),
        ("hits", s.hits),
        ("misses", s.misses),
        ("cb_hits", s.cb_hits),
        ("timeouts", s.timeouts),
        ("cache_full", s.cache_full),
    ] {
        println!("  {name:<12} {value}");
    }
    Ok(())
}
