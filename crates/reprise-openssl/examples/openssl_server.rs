//! An OpenSSL-based TLS server whose sessions live in a Reprise cache, and, with `--redis`, in
//! the Redis tier that a fleet of such servers shares; with `--ticket-keys`, it issues stateless
//! tickets sealed with the keys of that file, which every instance given the file resumes.
//!
//! ```sh
//! cargo run -p reprise-openssl --example openssl_server -- [--listen ADDR] [--cert FILE --key FILE]
//!     [--sid-ctx STRING] [--redis URL --redis-key-file FILE] [--ticket-keys FILE]
//! openssl s_client -connect 127.0.0.1:9443 -tls1_2 -reconnect < /dev/null | grep -E '^(New|Reused)'
//! ```
//!
//! Each connection is served on its own thread: the handshake goes through
//! [`ServerCache::accept`] (which counts it), then an HTTP request, if one comes, is answered
//! with whether the handshake resumed. A client that leaves without close_notify has its
//! session removed, as OpenSSL's manual requires. Without `--cert`, the certificate is a
//! self-signed one for localhost, made at start.

use std::error::Error;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{ErrorCode, Ssl, SslAcceptor, SslMethod};
use openssl::x509::X509;
use reprise::SessionCache;
use reprise_openssl::{derive_sid_ctx, ServerCache, StatelessTickets};
use reprise_redis::{KeyRing, RedisConfig, RedisTier, Wiring};
use reprise_seal::tickets::TicketKeyFile;

const USAGE: &str = "usage: openssl_server [--listen ADDR] [--cert FILE --key FILE] \
                     [--sid-ctx STRING] [--redis URL --redis-key-file FILE] [--ticket-keys FILE]";

#[derive(Default)]
struct Args {
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sid_ctx: Option<String>,
    redis: Option<String>,
    redis_key_file: Option<String>,
    ticket_keys: Option<String>,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Args::default();
        while let Some(flag) = args.next() {
            let slot = match flag.as_str() {
                "--listen" => &mut parsed.listen,
                "--cert" => &mut parsed.cert,
                "--key" => &mut parsed.key,
                "--sid-ctx" => &mut parsed.sid_ctx,
                "--redis" => &mut parsed.redis,
                "--redis-key-file" => &mut parsed.redis_key_file,
                "--ticket-keys" => &mut parsed.ticket_keys,
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown flag {other}\n{USAGE}")),
            };
            *slot = Some(args.next().ok_or_else(|| format!("{flag} needs a value"))?);
        }
        Ok(parsed)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openssl_server: {e}");
            ExitCode::from(2)
        }
    }
}

/// A self-signed certificate for localhost.
fn self_signed() -> Result<(Vec<X509>, PKey<Private>), Box<dyn Error>> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    Ok((
        vec![X509::from_der(cert.der())?],
        PKey::private_key_from_der(&key.serialize_der())?,
    ))
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = Args::parse(std::env::args().skip(1))?;
    let (chain, key) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            X509::stack_from_pem(&std::fs::read(cert)?)?,
            PKey::private_key_from_pem(&std::fs::read(key)?)?,
        ),
        (None, None) => self_signed()?,
        _ => return Err("--cert and --key go together".into()),
    };
    let leaf = chain
        .first()
        .ok_or("the certificate file holds no certificate")?;

    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    builder.set_certificate(leaf)?;
    for cert in &chain[1..] {
        builder.add_extra_chain_cert(cert.clone())?;
    }
    builder.set_private_key(&key)?;
    builder.check_private_key()?;

    // Every instance of a fleet must use the same context: by default it is derived from the
    // certificate chain, so instances with the same certificate agree.
    let sid_ctx = match &args.sid_ctx {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let refs: Vec<_> = chain.iter().map(|c| c.as_ref()).collect();
            derive_sid_ctx(&refs, false, b"")?.as_bytes().to_vec()
        }
    };

    // 20480 sessions, 300 s: Reprise's defaults.
    let cache = Arc::new(SessionCache::new());
    let _tier = match (&args.redis, &args.redis_key_file) {
        (Some(url), Some(file)) => {
            let keys = KeyRing::load(Path::new(file))?;
            // OpenSSL looks sessions up synchronously: the tier runs on its own small
            // runtime, and a read waits at most its budget (5 ms).
            let tier = RedisTier::start_detached(RedisConfig::new(url.parse()?), keys)?
                .with_wiring(Wiring::Blocking);
            cache.attach(Arc::new(tier.clone()));
            eprintln!("sessions shared through {url}");
            Some(tier)
        }
        (None, None) => None,
        _ => return Err("--redis and --redis-key-file go together".into()),
    };
    let timeout = Duration::from_secs(cache.timeout_secs());
    let sessions = ServerCache::install(&mut builder, cache, &sid_ctx)?;
    // After the cache: it turns tickets off, and this turns them on. Tickets live as long as
    // cached sessions.
    if let Some(file) = &args.ticket_keys {
        let keys = TicketKeyFile::open(Path::new(file), timeout)?;
        StatelessTickets::install(&mut builder, keys, &sid_ctx)?;
        eprintln!("stateless tickets with the keys of {file}");
    }
    let acceptor = Arc::new(builder.build());

    let listener = TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:9443"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let (acceptor, sessions) = (acceptor.clone(), sessions.clone());
        std::thread::spawn(move || serve(&acceptor, &sessions, tcp));
    }
    Ok(())
}

/// One connection: the handshake, then at most one HTTP request.
fn serve(acceptor: &SslAcceptor, sessions: &ServerCache, tcp: TcpStream) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        return;
    };
    let mut tls = match sessions.accept(ssl, tcp) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("handshake failed: {e}");
            return;
        }
    };
    let resumed = tls.ssl().session_reused();
    let version = tls.ssl().version_str();
    eprintln!("{version} {}", if resumed { "resumed" } else { "full" });
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.ssl_read(&mut buf) {
            Ok(n) => {
                request.extend_from_slice(&buf[..n]);
                if request.windows(4).any(|w| w == b"\r\n\r\n") || request.len() > 16384 {
                    let body = format!(
                        "resumed: {}\nversion: {version}\n",
                        if resumed { "yes" } else { "no" }
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                    break;
                }
            }
            // The client closed cleanly.
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => break,
            // The client went away without close_notify: dropping the connection without one
            // makes OpenSSL remove its session (and the cache with it).
            Err(_) => return,
        }
    }
    let _ = tls.shutdown();
}
