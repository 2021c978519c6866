//! Sessions decoded from DER, and the two calls of the `openssl` crate that need `unsafe`.
//!
//! The `openssl` crate marks two session calls `unsafe`, for one reason (see OpenSSL's
//! `SSL_set_session(3)`): a session inserted into a context's cache carries that cache's list
//! links, so one session object may only ever be used with one context. A session handed to
//! OpenSSL must therefore not be associated with another context.
//!
//! A [`DecodedSession`] makes that checkable by construction: it can only be made by decoding
//! DER (`d2i_SSL_SESSION`), which allocates a new `SSL_SESSION` that is in no context's cache;
//! it is neither `Clone` nor does it ever lend out the `SSL_SESSION` inside, so no code can put
//! it into a cache; and the two functions here consume it, so it is handed to OpenSSL once.
//! Reprise stores sessions as DER, so this is exactly the form in which they come back.

use core::fmt;

use openssl::error::ErrorStack;
use openssl::ssl::{SslContextBuilder, SslRef, SslSession, SslVersion};

/// A session freshly decoded from DER, associated with no OpenSSL context.
///
/// ```
/// use reprise_openssl::DecodedSession;
/// assert!(DecodedSession::from_der(b"not a session").is_err());
/// ```
pub struct DecodedSession(SslSession);

impl DecodedSession {
    /// Decodes a session serialized with `i2d_SSL_SESSION` ([`SslSessionRef::to_der`]).
    ///
    /// [`SslSessionRef::to_der`]: openssl::ssl::SslSessionRef::to_der
    pub fn from_der(der: &[u8]) -> Result<Self, ErrorStack> {
        SslSession::from_der(der).map(Self)
    }

    /// The session id.
    pub fn id(&self) -> &[u8] {
        self.0.id()
    }

    /// The protocol version the session was negotiated with.
    pub fn protocol_version(&self) -> SslVersion {
        self.0.protocol_version()
    }
}

impl fmt::Debug for DecodedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The session holds a master secret: only its id's first bytes are printed.
        let id = self.id();
        write!(f, "DecodedSession(")?;
        for b in id.iter().take(4) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…; {} bytes)", id.len())
    }
}

/// Installs a get-session callback (`SSL_CTX_sess_set_get_cb`) whose sessions are
/// [`DecodedSession`]s: the safe form of [`SslContextBuilder::set_get_session_callback`].
///
/// OpenSSL calls it on a server when a client proposes a session id (TLS 1.2) or a stateful
/// ticket (TLS 1.3) that the internal cache did not supply; the second argument is that id,
/// untrusted. Return `None` for a miss. OpenSSL then checks the session itself (protocol
/// version, session-id context, timeout) before it resumes it.
#[allow(unsafe_code)]
pub fn set_get_session_callback<F>(builder: &mut SslContextBuilder, callback: F)
where
    F: Fn(&mut SslRef, &[u8]) -> Option<DecodedSession> + 'static + Sync + Send,
{
    // SAFETY: the `openssl` crate's contract for `set_get_session_callback` is that "the
    // returned `SslSession` must not be associated with a different `SslContext`". Every
    // session this closure returns is the inside of a `DecodedSession`, taken by value: it was
    // allocated by `d2i_SSL_SESSION` in `DecodedSession::from_der`, which makes an `SSL_SESSION`
    // with no owner and no cache links, and since `DecodedSession` is not `Clone` and never
    // exposes its `SslSession` or a reference to it, no code can have added it to any
    // context's cache since. It is therefore associated with no context at all, and handing it
    // to OpenSSL (which takes over our reference: the crate sets `*copy = 0`) associates it
    // with this one only.
    unsafe {
        builder.set_get_session_callback(move |ssl, id| callback(ssl, id).map(|d| d.0));
    }
}

/// Offers a session to resume on a client connection (`SSL_set_session`): the safe form of
/// [`SslRef::set_session`]. Call it before the handshake.
///
/// The session is consumed: OpenSSL keeps its own reference, and no other connection can be
/// given the same object.
#[allow(unsafe_code)]
pub fn set_session(ssl: &mut SslRef, session: DecodedSession) -> Result<(), ErrorStack> {
    // SAFETY: the `openssl` crate's contract for `SslRef::set_session` is that "the session is
    // associated with the same `SslContext` as this `Ssl`". The reason (SSL_set_session(3)) is
    // the cache links a session gains when it is inserted into a context's cache. This session
    // was made by `d2i_SSL_SESSION` and, as argued in `set_get_session_callback`, has never been
    // reachable by any code that could insert it into a cache: it has no links and no owner.
    // From this call on, OpenSSL holds the only other reference and can associate it with this
    // connection's context only; ours is dropped when `session` goes out of scope below.
    unsafe { ssl.set_session(&session.0) }
}
