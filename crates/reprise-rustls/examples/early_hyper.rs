//! A hyper server that answers safe requests from TLS 1.3 early data (0-RTT), through
//! reprise-rustls's `Acceptor`; and a rustls client that resumes with early data, to show it.
//!
//! The acceptor gives a connection the configuration that takes early data only when the
//! ticket's single use is confirmed (here, by the cache's memory: no shared tier). When the
//! client sent early data, the acceptor returns the stream as soon as the server's flight is
//! out: hyper reads the request from the early data and its answer leaves as 0.5-RTT data,
//! before the client's Finished. A request that is not safe (a POST) and arrived in early data
//! gets `425 Too Early` (RFC 8470); the client sends it again after the handshake.
//!
//! Run it with `cargo run -p reprise-rustls --example early_hyper`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use reprise::SessionCache;
use reprise_rustls::{
    derive_sid_ctx, AcceptPolicy, Acceptor, ClientAuth, EarlyData, ServerContext, ServerStore,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A stream that counts the bytes hyper read: a request handled while every byte read so far
/// came in early data arrived in early data.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The server: accepts connections, and serves each with hyper.
async fn serve(listener: tokio::net::TcpListener, acceptor: Arc<Acceptor>) -> Result<(), Error> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(accepted) = acceptor.accept(tcp, peer).await else {
                return;
            };
            let accepted_early = accepted.early_data == EarlyData::Accepted;
            // How many bytes of early data hyper has read so far (the stream's first bytes).
            let early = accepted.stream.get_ref().early_data_counter();
            let read = Arc::new(AtomicU64::new(0));
            let seen = read.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let early_read = early.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
                let in_early = accepted_early && seen.load(Ordering::Relaxed) <= early_read;
                let safe = matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS");
                let response = if in_early && !safe {
                    Response::builder()
                        .status(425)
                        .body(Full::new(Bytes::from("too early\n")))
                } else {
                    let yes = if in_early { "yes" } else { "no" };
                    let body =
                        format!("{} {}: early-data {yes}\n", request.method(), request.uri());
                    Response::builder().body(Full::new(Bytes::from(body)))
                };
                async move { response }
            });
            let io = TokioIo::new(Counted {
                inner: accepted.stream,
                read,
            });
            let _ = http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// One blocking client connection: sends `early` as early data if the session allows it,
/// then `after` once the handshake completed (and `early` again if the server refused its
/// early data), and returns what the server answered until it closed.
fn client(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    early: &[u8],
    after: &[u8],
) -> Result<(bool, String), Error> {
    let name = ServerName::try_from("localhost")?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name)?;
    let sent = match conn.early_data() {
        Some(mut writer) if !early.is_empty() => writer.write(early)?,
        _ => 0,
    };
    let mut tcp = std::net::TcpStream::connect(addr)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let accepted = sent > 0 && conn.is_early_data_accepted();
    if !accepted {
        conn.writer().write_all(early)?;
    }
    conn.writer().write_all(after)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut answer = String::new();
    // The server closes after the request with `Connection: close`.
    match tls.read_to_string(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    Ok((accepted, answer))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let chain = vec![cert.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));

    // The server: stateful TLS 1.3 tickets in a Reprise cache; the configuration without early
    // data, and the same one with it, for the connections whose ticket's single use is known.
    let cache = Arc::new(SessionCache::new());
    let sid_ctx = derive_sid_ctx(&chain, ClientAuth::None, b"");
    let store = ServerStore::new(cache, sid_ctx, ClientAuth::None)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)?;
    config.session_storage = Arc::new(store.clone());
    let mut early = config.clone();
    early.max_early_data_size = 16 * 1024;
    early.send_half_rtt_data = true;
    let context = ServerContext::new(Arc::new(config), store).with_early_data(Arc::new(early));
    let acceptor = Arc::new(Acceptor::new(context, AcceptPolicy::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, acceptor.clone()));

    // The client: TLS 1.3, early data enabled, its own session store.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.cert.der().to_vec()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_early_data = true;
    let config = Arc::new(config);

    let get = b"GET /early HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let post = b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi";
    let close = b"GET /after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let runs: [(&str, &[u8]); 3] = [
        ("full", get),
        ("resumed, GET", get),
        ("resumed, POST", post),
    ];
    let outputs = tokio::task::spawn_blocking(move || {
        runs.map(|(what, early)| (what, client(addr, &config, early, close)))
    })
    .await?;
    for (what, output) in outputs {
        let (accepted, answer) = output?;
        println!("--- {what}: early data accepted: {accepted}");
        for line in answer
            .lines()
            .filter(|l| l.starts_with("HTTP/") || l.contains(':'))
        {
            if line.starts_with("HTTP/") || line.contains("early-data") {
                println!("{line}");
            }
        }
    }
    let counters = acceptor.early_data_counters();
    println!(
        "early data offered {}, accepted {}",
        counters.offered(),
        counters.accepted()
    );
    Ok(())
}
