//! Session-id contexts: deriving one from a configuration, and recording it on an OpenSSL
//! context so that the adapters know which one a connection runs under.

use std::sync::OnceLock;

use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::sha::Sha256;
use openssl::ssl::{SslContext, SslContextBuilder, SslRef, SslVerifyMode};
use openssl::x509::X509Ref;
use reprise::SidCtx;

use crate::error::Error;

/// The ex-data slot of an `SslContext` that holds its session-id context.
fn sid_ctx_index() -> Option<Index<SslContext, SidCtx>> {
    static INDEX: OnceLock<Option<Index<SslContext, SidCtx>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index::<SidCtx>().ok())
}

/// Validates a session-id context for a server: 1 to 32 bytes.
pub(crate) fn server_sid_ctx(sid_ctx: &[u8]) -> Result<SidCtx, Error> {
    if sid_ctx.is_empty() {
        return Err(Error::EmptySidCtx);
    }
    SidCtx::new(sid_ctx).map_err(|_| Error::SidCtxTooLong(sid_ctx.len()))
}

/// Sets the session-id context of an OpenSSL context (`SSL_CTX_set_session_id_context`) and
/// records it where the Reprise adapters read it.
///
/// [`ServerCache::install`](crate::ServerCache::install) does this for the context it is
/// installed on. Call it for every other context a connection may be switched to with
/// [`SslRef::set_ssl_context`] (typically in a server-name callback): OpenSSL then keeps using
/// the first context's session cache and callbacks, but with the new context's session-id
/// context, and the adapter keys the connection's sessions with it.
pub fn tag_context(builder: &mut SslContextBuilder, sid_ctx: &[u8]) -> Result<(), Error> {
    let ctx = server_sid_ctx(sid_ctx)?;
    builder.set_session_id_context(sid_ctx)?;
    if let Some(index) = sid_ctx_index() {
        builder.set_ex_data(index, ctx);
    }
    Ok(())
}

/// The session-id context a connection's sessions are keyed under: the one recorded on its
/// current context (or `default` if that context was not tagged), with the client-certificate
/// policy bound in.
///
/// When the connection verifies client certificates, its verify mode and the certificates of
/// its context's trust store are mixed into the context, whatever the application named it: a
/// session made without a client certificate never resumes where one is asked for, nor one
/// verified against other CAs. OpenSSL's own session-id context (the one it checks inside the
/// session) stays the one the application set. Without client verification the context is
/// used as it is.
pub(crate) fn current_sid_ctx(ssl: &SslRef, default: &SidCtx) -> SidCtx {
    let base = sid_ctx_index()
        .and_then(|index| ssl.ssl_context().ex_data(index).copied())
        .unwrap_or(*default);
    bind_client_auth(ssl, base)
}

/// `base`, with the connection's client verification mixed in if it verifies clients.
fn bind_client_auth(ssl: &SslRef, base: SidCtx) -> SidCtx {
    let mode = ssl.verify_mode();
    if !mode.contains(SslVerifyMode::PEER) {
        return base;
    }
    // The trusted CAs, by fingerprint, in a canonical order.
    let mut cas: Vec<Vec<u8>> = ssl
        .ssl_context()
        .cert_store()
        .all_certificates()
        .iter()
        .filter_map(|ca| ca.digest(MessageDigest::sha256()).ok())
        .map(|digest| digest.to_vec())
        .collect();
    cas.sort_unstable();
    let mut hash = Sha256::new();
    hash.update(b"reprise-openssl client-auth binding v1\0");
    hash.update(&(base.as_bytes().len() as u64).to_be_bytes());
    hash.update(base.as_bytes());
    hash.update(&mode.bits().to_be_bytes());
    hash.update(&(cas.len() as u64).to_be_bytes());
    for ca in &cas {
        hash.update(ca);
    }
    SidCtx::new(&hash.finish()).unwrap_or(base)
}

/// Derives a session-id context from what makes a server's sessions safe to resume: its
/// certificate chain, whether it verifies client certificates, and any other configuration
/// bytes. Every instance with the same settings derives the same context (so a fleet shares
/// sessions), and sessions never cross to a different configuration.
///
/// It is a SHA-256 over a label, each certificate's DER (length-prefixed), the client-auth
/// flag and `extra`.
///
/// ```
/// use reprise_openssl::derive_sid_ctx;
/// let a = derive_sid_ctx(&[], false, b"").unwrap();
/// let b = derive_sid_ctx(&[], true, b"").unwrap();
/// assert_ne!(a, b);
/// assert_eq!(a.as_bytes().len(), 32);
/// ```
pub fn derive_sid_ctx(
    chain: &[&X509Ref],
    verifies_clients: bool,
    extra: &[u8],
) -> Result<SidCtx, Error> {
    let mut hash = Sha256::new();
    hash.update(b"reprise-openssl session-id context v1\0");
    for cert in chain {
        let der = cert.to_der()?;
        hash.update(&(der.len() as u64).to_be_bytes());
        hash.update(&der);
    }
    hash.update(&[u8::from(verifies_clients)]);
    hash.update(&(extra.len() as u64).to_be_bytes());
    hash.update(extra);
    server_sid_ctx(&hash.finish())
}
