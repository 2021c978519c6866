//! Session-id contexts derived from what makes a server's security context: its certificate
//! chain (or an operator's name for the context) and its client-certificate policy, with the
//! client CAs it trusts.

use reprise::SidCtx;
use ring::digest;
use rustls::pki_types::CertificateDer;

/// A server's client-certificate policy, which is part of its security context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client certificate is asked for and verified if sent.
    Optional,
    /// A verified client certificate is required.
    Required,
}

impl ClientAuth {
    fn tag(self) -> u8 {
        match self {
            ClientAuth::None => 0,
            ClientAuth::Optional => 1,
            ClientAuth::Required => 2,
        }
    }
}

/// Derives a 32-byte session-id context from a certificate chain, a client-certificate policy
/// and any extra bytes that distinguish the configuration (a client CA bundle, say).
///
/// Every instance that serves the same certificate with the same settings gets the same
/// context, so a fleet resumes each other's sessions; a change in any input gives another
/// context, so sessions never cross between configurations.
///
/// ```
/// use reprise_rustls::{derive_sid_ctx, ClientAuth};
/// use rustls::pki_types::CertificateDer;
///
/// let chain = [CertificateDer::from(vec![1, 2, 3])];
/// let a = derive_sid_ctx(&chain, ClientAuth::None, b"");
/// assert_eq!(a, derive_sid_ctx(&chain, ClientAuth::None, b""));
/// assert_ne!(a, derive_sid_ctx(&chain, ClientAuth::Required, b""));
/// assert_eq!(a.as_bytes().len(), 32);
/// ```
pub fn derive_sid_ctx(
    chain: &[CertificateDer<'_>],
    client_auth: ClientAuth,
    extra: &[u8],
) -> SidCtx {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"reprise sid_ctx v1\0");
    ctx.update(&[client_auth.tag()]);
    ctx.update(&(chain.len() as u64).to_be_bytes());
    for cert in chain {
        ctx.update(&(cert.len() as u64).to_be_bytes());
        ctx.update(cert);
    }
    ctx.update(&(extra.len() as u64).to_be_bytes());
    ctx.update(extra);
    let hash = ctx.finish();
    match SidCtx::new(hash.as_ref()) {
        Ok(sid_ctx) => sid_ctx,
        Err(_) => unreachable!("a SHA-256 digest is 32 bytes, the longest context allowed"),
    }
}

/// A session-id context from a name the operator chose (`reprise serve --sid-ctx`), with the
/// client-certificate policy and the trusted client CAs always bound in.
///
/// The name is mixed in, never a replacement: two servers that share a name but differ in
/// client authentication (one without it, one that requires certificates from some CA, one that
/// trusts another CA) get different contexts, so a session made without a client certificate
/// never resumes where one is required. The certificate chain is deliberately left out: that
/// is what a name is for, so that sessions survive a certificate renewal (or are shared by
/// servers with different certificates for the same service). Use [`derive_sid_ctx`] to bind
/// the chain too.
///
/// It is a SHA-256 over a label, the name, the policy and each CA's DER, each length-prefixed.
///
/// ```
/// use reprise_rustls::{named_sid_ctx, ClientAuth};
/// use rustls::pki_types::CertificateDer;
///
/// let ca = [CertificateDer::from(vec![1, 2, 3])];
/// let other_ca = [CertificateDer::from(vec![4, 5, 6])];
/// let plain = named_sid_ctx(b"web", ClientAuth::None, &[]);
/// assert_eq!(plain, named_sid_ctx(b"web", ClientAuth::None, &[]));
/// assert_ne!(plain, named_sid_ctx(b"web", ClientAuth::Required, &ca));
/// assert_ne!(
///     named_sid_ctx(b"web", ClientAuth::Required, &ca),
///     named_sid_ctx(b"web", ClientAuth::Required, &other_ca)
/// );
/// assert_ne!(plain, named_sid_ctx(b"api", ClientAuth::None, &[]));
/// ```
pub fn named_sid_ctx(
    name: &[u8],
    client_auth: ClientAuth,
    client_cas: &[CertificateDer<'_>],
) -> SidCtx {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"reprise named sid_ctx v1\0");
    ctx.update(&(name.len() as u64).to_be_bytes());
    ctx.update(name);
    ctx.update(&[client_auth.tag()]);
    ctx.update(&(client_cas.len() as u64).to_be_bytes());
    for ca in client_cas {
        ctx.update(&(ca.len() as u64).to_be_bytes());
        ctx.update(ca);
    }
    let hash = ctx.finish();
    match SidCtx::new(hash.as_ref()) {
        Ok(sid_ctx) => sid_ctx,
        Err(_) => unreachable!("a SHA-256 digest is 32 bytes, the longest context allowed"),
    }
}
