//! Session-id contexts derived from what makes a server's security context: its certificate
//! chain and its client-certificate policy.

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
