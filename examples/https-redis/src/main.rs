//! An HTTPS server with hyper whose TLS sessions a fleet shares through Redis: every instance
//! started with the same Redis, key file and certificate resumes the sessions of the others,
//! and no runtime thread ever waits on Redis (reprise-rustls's `Acceptor` fetches what each
//! ClientHello offers before rustls runs).
//!
//! `https-redis LISTEN REDIS_URL KEY_FILE CERT_PEM KEY_PEM`; it prints `listening on ADDR`.
//! The lines between the markers are the user code the README shows.

// user code: begin
use std::sync::Arc;

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response};
use hyper_util::rt::TokioIo;
use reprise::SessionCache;
use reprise_redis::{KeyRing, RedisConfig, RedisTier};
use reprise_rustls::{
    derive_sid_ctx, AcceptPolicy, Acceptor, ClientAuth, ServerContext, ServerStore,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, redis, key_file, cert, key] = &args[..] else {
        return Err("usage: https-redis LISTEN REDIS_URL KEY_FILE CERT_PEM KEY_PEM".into());
    };
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;

    // The cache: memory, then the fleet's Redis (sealed under the key file's keys).
    let cache = Arc::new(SessionCache::new());
    let keys = KeyRing::load(key_file.as_ref())?;
    let tier = RedisTier::start(RedisConfig::new(redis.parse()?), keys)?;
    cache.attach(Arc::new(tier));
    let sid_ctx = derive_sid_ctx(&chain, ClientAuth::None, b"");
    let store = ServerStore::new(cache, sid_ctx, ClientAuth::None)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.session_storage = Arc::new(store.clone());
    let context = ServerContext::new(Arc::new(config), store);
    let acceptor = Arc::new(Acceptor::new(context, AcceptPolicy::default()));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(accepted) = acceptor.accept(tcp, peer).await else {
                return;
            };
            let kind = accepted.stream.get_ref().get_ref().1.handshake_kind();
            let body = format!("handshake: {kind:?}\n");
            let hello = service_fn(move |_| {
                let body = Bytes::from(body.clone());
                async move { Ok::<_, hyper::Error>(Response::new(Full::new(body))) }
            });
            let io = TokioIo::new(accepted.stream);
            let _ = http1::Builder::new().serve_connection(io, hello).await;
        });
    }
}
// user code: end
