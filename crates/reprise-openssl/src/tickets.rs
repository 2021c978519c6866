//! Stateless session tickets for OpenSSL servers, sealed with the keys of a
//! [`TicketKeySource`] (a key file, a fleet's shared ring) through OpenSSL's ticket-key callback
//! (`SSL_CTX_set_tlsext_ticket_key_evp_cb`, OpenSSL 3).
//!
//! OpenSSL keeps its own ticket format (RFC 5077's: a 16-byte key name, an IV, the session
//! encrypted with AES-256-CBC, an HMAC-SHA256 over all of it) and asks the callback only for
//! the keys. Here:
//!
//! - the key name is the ring key's [`KeyId`] (8 bytes) followed by a context tag (8 bytes,
//!   the first bytes of SHA-256 over a label and the session-id context): public, it names
//!   the ring key and the context without revealing either secret;
//! - the AES and HMAC keys are the ring key [derived](reprise_seal::tickets::TicketKey::derive)
//!   for [`OPENSSL_AES_PURPOSE`] and [`OPENSSL_HMAC_PURPOSE`] and for the connection's
//!   session-id context (with its client verification bound in, as [`ServerCache`] keys its
//!   sessions), once per snapshot of the source, never per ticket;
//! - the IV is random (`RAND_bytes`) for every ticket.
//!
//! A ticket sealed with a key the source no longer holds, or for another context, makes a
//! full handshake; one sealed with a key that still decrypts but no longer encrypts resumes
//! and is replaced by a ticket under the current key. OpenSSL itself refuses a session older
//! than its timeout, which [`StatelessTickets::install`] sets to the source's lifetime.
//!
//! This module holds the crate's only `unsafe` besides the two calls of [`crate::decoded`]:
//! the declarations of three libssl functions `openssl-sys` lacks, the installation of the
//! callback, and the callback itself. Each block carries its proof. Everything else (which key,
//! which context, what to count) is safe code that the unit tests below exercise.
//!
//! [`ServerCache`]: crate::ServerCache

// Without OpenSSL 3 the callback is not built, and what it would use is left unused.
#![cfg_attr(not(reprise_ossl3), allow(dead_code))]

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use openssl::ex_data::Index;
use openssl::sha::Sha256;
use openssl::ssl::{SslContext, SslContextBuilder, SslOptions, SslRef};
use parking_lot::Mutex;
use reprise::SidCtx;
use reprise_seal::tickets::{KeyId, TicketKeySource, TicketKeys, TICKET_KEY_LEN};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::sid_ctx::{current_sid_ctx, server_sid_ctx, tag_context};

/// The purpose under which the AES-256-CBC key of an OpenSSL ticket is derived from a ring key
/// (distinct from the rustls ticketer's, so no key serves two ciphers).
pub const OPENSSL_AES_PURPOSE: &[u8] = b"reprise openssl ticket aes-256-cbc v1";

/// The purpose under which the HMAC-SHA256 key of an OpenSSL ticket is derived from a ring key.
pub const OPENSSL_HMAC_PURPOSE: &[u8] = b"reprise openssl ticket hmac-sha256 v1";

/// The length of OpenSSL's ticket key name (`TLSEXT_KEYNAME_LENGTH`).
const KEY_NAME_LEN: usize = 16;
/// The length of a context tag: what the key name holds after the [`KeyId`].
const CTX_TAG_LEN: usize = KEY_NAME_LEN - 8;
/// The IV length of AES-256-CBC, which is also OpenSSL's `EVP_MAX_IV_LENGTH` (16 in every
/// version): the callback never reads or writes more of the IV buffer than this.
const IV_LEN: usize = 16;
/// How many contexts' keys are kept for one snapshot: a context a connection can be switched
/// to, or a client-verification policy of one. Past this, the oldest is derived again.
const MAX_CONTEXTS: usize = 16;

/// What the ticket-key callback did, for one [`StatelessTickets`] (its context and every
/// context a connection was switched to from it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TicketStats {
    /// Tickets sealed.
    pub issued: u64,
    /// Tickets not issued: the source had no key to encrypt with (OpenSSL then sends none).
    pub not_issued: u64,
    /// Tickets whose key and context matched, handed to OpenSSL to decrypt. OpenSSL then checks
    /// the HMAC and the session (its timeout, its session-id context) before it resumes it.
    pub opened: u64,
    /// Of the opened tickets, those sealed with a key that no longer encrypts: OpenSSL replaces
    /// them with a ticket under the current key.
    pub renewed: u64,
    /// Tickets refused: sealed with a key the source does not hold (erased, or never known).
    pub rejected_unknown_key: u64,
    /// Tickets refused: issued for another context (certificate, client-auth policy).
    pub rejected_wrong_context: u64,
}

#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    not_issued: AtomicU64,
    opened: AtomicU64,
    renewed: AtomicU64,
    rejected_unknown_key: AtomicU64,
    rejected_wrong_context: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A 256-bit key, wiped when dropped.
type Secret = Zeroizing<[u8; TICKET_KEY_LEN]>;

/// The context tag of `sid_ctx`: public, it tells contexts apart without revealing a secret.
fn context_tag(sid_ctx: &SidCtx) -> [u8; CTX_TAG_LEN] {
    let mut hash = Sha256::new();
    hash.update(b"reprise openssl ticket context v1\0");
    hash.update(sid_ctx.as_bytes());
    let digest = hash.finish();
    let mut tag = [0u8; CTX_TAG_LEN];
    tag.copy_from_slice(&digest[..CTX_TAG_LEN]);
    tag
}

/// One ring key, derived for one context.
struct ContextKey {
    id: KeyId,
    aes: Secret,
    hmac: Secret,
}

/// The keys of one snapshot, derived for one context.
struct ContextKeys {
    sid_ctx: SidCtx,
    tag: [u8; CTX_TAG_LEN],
    /// Whether the first of `keys` encrypts (a snapshot lists its encrypting key first).
    encrypts: bool,
    /// Every decrypting key.
    keys: Vec<ContextKey>,
}

/// What the callback does with a ticket a client presents.
#[derive(Debug, PartialEq, Eq)]
enum Open<'a> {
    /// Decrypt it with this key (whose id is the ticket's).
    Use(&'a [u8; TICKET_KEY_LEN], &'a [u8; TICKET_KEY_LEN]),
    /// Decrypt it with this key, and replace it: the key no longer encrypts.
    Renew(&'a [u8; TICKET_KEY_LEN], &'a [u8; TICKET_KEY_LEN]),
    /// Full handshake: no such key.
    UnknownKey,
    /// Full handshake: another context's ticket.
    WrongContext,
}

impl ContextKeys {
    fn new(keys: &TicketKeys, sid_ctx: SidCtx) -> Self {
        let ctx = sid_ctx.as_bytes();
        Self {
            sid_ctx,
            tag: context_tag(&sid_ctx),
            encrypts: keys.encrypting().is_some(),
            keys: keys
                .decrypting()
                .iter()
                .map(|k| ContextKey {
                    id: k.id(),
                    aes: k.derive(OPENSSL_AES_PURPOSE, ctx),
                    hmac: k.derive(OPENSSL_HMAC_PURPOSE, ctx),
                })
                .collect(),
        }
    }

    /// The key that seals new tickets, and the key name to put in them.
    fn sealing(&self) -> Option<([u8; KEY_NAME_LEN], &ContextKey)> {
        let key = self.keys.first().filter(|_| self.encrypts)?;
        let mut name = [0u8; KEY_NAME_LEN];
        name[..8].copy_from_slice(key.id.as_bytes());
        name[8..].copy_from_slice(&self.tag);
        Some((name, key))
    }

    /// The key that opens a ticket named `name`.
    fn opening(&self, name: &[u8; KEY_NAME_LEN]) -> Open<'_> {
        let mut id = [0u8; 8];
        id.copy_from_slice(&name[..8]);
        let id = KeyId::from_bytes(id);
        if name[8..] != self.tag {
            return Open::WrongContext;
        }
        match self.keys.iter().position(|k| k.id == id) {
            None => Open::UnknownKey,
            Some(i) => {
                let k = &self.keys[i];
                if i == 0 && self.encrypts {
                    Open::Use(&k.aes, &k.hmac)
                } else if self.encrypts {
                    Open::Renew(&k.aes, &k.hmac)
                } else {
                    // Nothing encrypts: a renewed ticket could not be issued.
                    Open::Use(&k.aes, &k.hmac)
                }
            }
        }
    }
}

/// The keys derived from the source's latest snapshot, per context.
struct Derived {
    generation: Option<u64>,
    contexts: Vec<Arc<ContextKeys>>,
}

/// What the callback finds in the ex data of a context it was installed on.
struct Shared {
    source: Arc<dyn TicketKeySource>,
    sid_ctx: SidCtx,
    counters: Counters,
    derived: Mutex<Derived>,
}

impl Shared {
    /// The keys of `sid_ctx` for the source's current snapshot, derived once per snapshot.
    fn keys_for(&self, sid_ctx: SidCtx) -> Arc<ContextKeys> {
        let snapshot = self.source.keys();
        let mut derived = self.derived.lock();
        if derived.generation != Some(snapshot.generation()) {
            derived.generation = Some(snapshot.generation());
            derived.contexts.clear();
        }
        if let Some(keys) = derived.contexts.iter().find(|c| c.sid_ctx == sid_ctx) {
            return Arc::clone(keys);
        }
        let keys = Arc::new(ContextKeys::new(&snapshot, sid_ctx));
        if derived.contexts.len() >= MAX_CONTEXTS {
            derived.contexts.remove(0);
        }
        derived.contexts.push(Arc::clone(&keys));
        keys
    }

    /// The keys of the connection's context: the session-id context of the context it runs
    /// under (switched, perhaps, by a server-name callback) with its client verification bound
    /// in, as [`ServerCache`](crate::ServerCache) keys sessions.
    fn keys_of(&self, ssl: &SslRef) -> Arc<ContextKeys> {
        self.keys_for(current_sid_ctx(ssl, &self.sid_ctx))
    }
}

/// The ex-data slot of an `SslContext` that holds its ticket keys. Private to this module: no
/// other code can read or replace what it holds.
fn shared_index() -> Option<Index<SslContext, Arc<Shared>>> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<Shared>>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index::<Arc<Shared>>().ok())
}

/// The ticket keys of the context `ssl` runs under, if they were installed there.
fn shared_of(ssl: &SslRef) -> Option<Arc<Shared>> {
    ssl.ssl_context().ex_data(shared_index()?).cloned()
}

/// Stateless session tickets on an OpenSSL server context, with keys from a
/// [`TicketKeySource`]. Clones share the same counters.
///
/// Every server given the same source (a fleet sharing a ring, instances reading one key
/// file) and the same session-id context resumes the tickets of every other; with a source
/// that outlives the process (a file, a ring), a restart forgets none of them.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use openssl::ssl::{SslAcceptor, SslMethod};
/// use reprise_openssl::StatelessTickets;
/// use reprise_seal::tickets::TicketKeyFile;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = TicketKeyFile::open("ticket.keys".as_ref(), Duration::from_secs(3600))?;
/// let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
/// let tickets = StatelessTickets::install(&mut builder, keys, b"my-service")?;
/// let acceptor = builder.build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StatelessTickets {
    shared: Arc<Shared>,
}

impl fmt::Debug for StatelessTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatelessTickets")
            .field("source", &self.shared.source.name())
            .field("sid_ctx", &self.shared.sid_ctx)
            .finish_non_exhaustive()
    }
}

impl StatelessTickets {
    /// Turns on stateless tickets for an OpenSSL server context, sealed with the keys of
    /// `source`, in one call:
    ///
    /// - sets the session-id context to `sid_ctx` (1 to 32 bytes, as
    ///   [`tag_context`](crate::tag_context) does);
    /// - clears `NO_TICKET`, which [`ServerCache::install`](crate::ServerCache::install) sets:
    ///   the cache's default is stateful sessions only, and tickets are this explicit choice.
    ///   Call this after `ServerCache::install` when using both;
    /// - sets OpenSSL's session timeout (`SSL_CTX_set_timeout`) to the source's
    ///   [lifetime](TicketKeySource::lifetime), in whole seconds (at least one): every session
    ///   this context issues carries it inside its ticket, and OpenSSL refuses a session older
    ///   than that. It applies to the sessions a [`ServerCache`](crate::ServerCache) on the
    ///   same context stores, too;
    /// - installs the ticket-key callback.
    ///
    /// TLS 1.2 then resumes through tickets on every server sharing the source (and, with a
    /// `ServerCache`, through session ids as well). TLS 1.3 tickets become stateless too: a
    /// TLS 1.3 ticket can then be used more than once until it expires, which is the choice
    /// this call makes. (OpenSSL has no per-version switch for tickets; it keeps TLS 1.3
    /// tickets stateful only with `NO_TICKET`, or with early data and its anti-replay, which
    /// needs OpenSSL's internal cache.) It clears `SSL_OP_NO_ANTI_REPLAY`, which
    /// [`ServerCache::install`](crate::ServerCache::install) sets: with early data on, OpenSSL
    /// then takes no TLS 1.3 ticket it cannot look up statefully, so a stateless ticket never
    /// carries early data. Install this after the `ServerCache` on a context that has both.
    ///
    /// A connection switched to another context (by a server-name callback) uses the ticket
    /// keys installed on that context, derived for its session-id context: install on every
    /// such context, with the same source. A context without them issues and accepts no
    /// tickets.
    ///
    /// Needs OpenSSL 3.0 or newer ([`Error::TicketsUnsupported`] otherwise).
    pub fn install(
        builder: &mut SslContextBuilder,
        source: Arc<dyn TicketKeySource>,
        sid_ctx: &[u8],
    ) -> Result<Self, Error> {
        let sid_ctx = server_sid_ctx(sid_ctx)?;
        let index = shared_index().ok_or_else(openssl::error::ErrorStack::get)?;
        let lifetime = source.lifetime().as_secs().max(1);
        let shared = Arc::new(Shared {
            source,
            sid_ctx,
            counters: Counters::default(),
            derived: Mutex::new(Derived {
                generation: None,
                contexts: Vec::new(),
            }),
        });
        ffi::install(builder, lifetime)?;
        tag_context(builder, sid_ctx.as_bytes())?;
        builder.clear_options(SslOptions::NO_TICKET);
        // Stateless tickets can be replayed: OpenSSL's anti-replay stays on, so that with
        // early data on it looks tickets up statefully (and refuses what it cannot take)
        // rather than accept early data on a ticket that can be used again.
        builder.clear_options(crate::server::NO_ANTI_REPLAY);
        builder.set_ex_data(index, Arc::clone(&shared));
        Ok(Self { shared })
    }

    /// The source the keys come from.
    pub fn source(&self) -> &Arc<dyn TicketKeySource> {
        &self.shared.source
    }

    /// A snapshot of the callback's counters.
    pub fn stats(&self) -> TicketStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TicketStats {
            issued: get(&c.issued),
            not_issued: get(&c.not_issued),
            opened: get(&c.opened),
            renewed: get(&c.renewed),
            rejected_unknown_key: get(&c.rejected_unknown_key),
            rejected_wrong_context: get(&c.rejected_wrong_context),
        }
    }
}

/// Where the ticket-key callback meets OpenSSL.
#[cfg(reprise_ossl3)]
#[allow(unsafe_code)]
mod ffi {
    use core::ffi::{c_char, c_int, c_long, c_uchar};
    use core::panic::AssertUnwindSafe;

    use foreign_types::ForeignTypeRef;
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::CipherCtxRef;
    use openssl::error::ErrorStack;
    use openssl::ssl::{SslContextBuilder, SslRef};
    use openssl_sys::{EVP_CIPHER_CTX, EVP_MAC_CTX, OSSL_PARAM, SSL, SSL_CTX};
    use reprise_seal::tickets::TICKET_KEY_LEN;

    use super::{bump, shared_of, Open, IV_LEN, KEY_NAME_LEN};

    /// The callback's type, as `SSL_CTX_set_tlsext_ticket_key_evp_cb` takes it:
    /// `int (*)(SSL *, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *,
    /// EVP_MAC_CTX *, int enc)`.
    type TicketKeyCallback = unsafe extern "C" fn(
        *mut SSL,
        *mut c_uchar,
        *mut c_uchar,
        *mut EVP_CIPHER_CTX,
        *mut EVP_MAC_CTX,
        c_int,
    ) -> c_int;

    // SAFETY (of the declarations): each matches its prototype in OpenSSL 3's headers, which
    // the build script made sure of (`reprise_ossl3`: openssl-sys found OpenSSL 3.0 or newer),
    // and each is a real exported function of libssl or libcrypto 3.0, not a macro:
    //
    //     int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx, int (*fp)(SSL *,
    //         unsigned char *, unsigned char *, EVP_CIPHER_CTX *, EVP_MAC_CTX *, int));
    //     long SSL_CTX_set_timeout(SSL_CTX *ctx, long t);
    //     OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf,
    //         size_t bsize);
    //
    // `OSSL_PARAM` is openssl-sys's `#[repr(C)]` copy of the C struct, which openssl-sys
    // already returns by value from `OSSL_PARAM_construct_octet_string`.
    extern "C" {
        fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
            ctx: *mut SSL_CTX,
            fp: Option<TicketKeyCallback>,
        ) -> c_int;
        fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
        fn OSSL_PARAM_construct_utf8_string(
            key: *const c_char,
            buf: *mut c_char,
            bsize: usize,
        ) -> OSSL_PARAM;
    }

    /// Installs the callback on `builder`'s context and sets its session timeout.
    pub(super) fn install(
        builder: &mut SslContextBuilder,
        lifetime_secs: u64,
    ) -> Result<(), super::Error> {
        let timeout = c_long::try_from(lifetime_secs.min(i32::MAX as u64)).unwrap_or(c_long::MAX);
        // SAFETY: `builder.as_ptr()` is the valid `SSL_CTX` the builder owns, and we hold it
        // by `&mut`, so no other thread uses it meanwhile (OpenSSL requires a context not to
        // be configured concurrently). `ticket_key_callback` has exactly the type the
        // function takes (see its declaration) and, being a function, lives forever; it is
        // sound to call as OpenSSL calls it (see its own proof). The callback takes no
        // argument pointer: what it needs, it finds in the ex data of the connection's
        // context, whose lifetime that proof covers. `SSL_CTX_set_timeout` only stores a
        // number in the context.
        let installed = unsafe {
            SSL_CTX_set_timeout(builder.as_ptr(), timeout);
            SSL_CTX_set_tlsext_ticket_key_evp_cb(builder.as_ptr(), Some(ticket_key_callback))
        };
        if installed == 1 {
            Ok(())
        } else {
            Err(ErrorStack::get().into())
        }
    }

    /// Sets the cipher context to AES-256-CBC with `aes` and `iv` (encrypting or decrypting),
    /// and the MAC context to HMAC-SHA256 with `hmac`. Errors mean OpenSSL could not (memory,
    /// a provider missing).
    ///
    /// # Safety
    ///
    /// `cipher` and `mac` must be valid, exclusively ours for the call: the ones OpenSSL
    /// passes to the ticket-key callback.
    unsafe fn init(
        cipher: *mut EVP_CIPHER_CTX,
        mac: *mut EVP_MAC_CTX,
        aes: &[u8; TICKET_KEY_LEN],
        hmac: &[u8; TICKET_KEY_LEN],
        iv: &[u8; IV_LEN],
        encrypt: bool,
    ) -> Result<(), ErrorStack> {
        // SAFETY: per this function's contract, `cipher` is a valid `EVP_CIPHER_CTX` that
        // nothing else uses until we return, so a unique reference to it for this call is
        // sound. The `openssl` crate's safe `encrypt_init`/`decrypt_init` then check the
        // lengths: AES-256-CBC takes a 32-byte key and a 16-byte IV, which is what we pass.
        let cipher = unsafe { CipherCtxRef::from_ptr_mut(cipher) };
        let aes256cbc = Cipher::aes_256_cbc();
        if encrypt {
            cipher.encrypt_init(Some(aes256cbc), Some(aes), Some(iv))?;
        } else {
            cipher.decrypt_init(Some(aes256cbc), Some(aes), Some(iv))?;
        }
        // SAFETY: the parameter list is two `OSSL_PARAM`s, the second the terminator, as
        // `EVP_MAC_init` requires. The first names the digest: its key and value point to
        // NUL-terminated static strings (`bsize` 0 makes OpenSSL take the value's length with
        // `strlen`), which OpenSSL only reads (the `*mut` is the C prototype's; a parameter
        // that sets is never written to). `params` lives until after the call, and
        // `EVP_MAC_init` keeps no pointer into it or into the key: it copies the key (32
        // readable bytes, the length passed). `mac` is valid and ours for the call, per this
        // function's contract.
        let ok = unsafe {
            let params = [
                OSSL_PARAM_construct_utf8_string(
                    c"digest".as_ptr(),
                    c"SHA256".as_ptr().cast_mut(),
                    0,
                ),
                openssl_sys::OSSL_PARAM_construct_end(),
            ];
            openssl_sys::EVP_MAC_init(mac, hmac.as_ptr(), hmac.len(), params.as_ptr())
        };
        if ok == 1 {
            Ok(())
        } else {
            Err(ErrorStack::get())
        }
    }

    /// The ticket-key callback: OpenSSL calls it with `enc` 1 to seal a new ticket (we fill in
    /// the key name and the IV, and set up both contexts) and with `enc` 0 to open one (the
    /// key name and IV are the ticket's; we set up both contexts or refuse). Returns 1 (go
    /// on), 2 (go on, and replace the ticket), 0 (no ticket, or a full handshake) or -1 (an
    /// error: the handshake fails), per `SSL_CTX_set_tlsext_ticket_key_cb(3)`.
    ///
    /// # Safety
    ///
    /// Only OpenSSL calls it, as its manual and source (3.0: `construct_stateless_ticket` in
    /// `ssl/statem/statem_srvr.c`, `tls_decrypt_ticket` in `ssl/t1_lib.c`) guarantee:
    ///
    /// - `s` is the connection being handshaken, on this thread, valid for the call;
    /// - `key_name` points to 16 bytes and `iv` to `EVP_MAX_IV_LENGTH` (16) bytes. To seal,
    ///   both are OpenSSL's own writable arrays, distinct. To open, both point into the
    ///   ticket, which OpenSSL checked holds at least 16 + 16 bytes; they are then only read;
    /// - `ctx` and `hctx` are fresh contexts OpenSSL allocated for this ticket and uses only
    ///   after the callback returns (`hctx` is an `EVP_MAC_CTX`, since the callback was
    ///   installed with the `evp` setter).
    unsafe extern "C" fn ticket_key_callback(
        s: *mut SSL,
        key_name: *mut c_uchar,
        iv: *mut c_uchar,
        ctx: *mut EVP_CIPHER_CTX,
        hctx: *mut EVP_MAC_CTX,
        enc: c_int,
    ) -> c_int {
        if s.is_null() || key_name.is_null() || iv.is_null() || ctx.is_null() || hctx.is_null() {
            return 0;
        }
        // No panic may unwind into OpenSSL's C frames: a panic anywhere below (in a key
        // source, say) is caught and becomes "no ticket" or "full handshake". OpenSSL uses
        // neither context after a 0.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `s` is the valid connection OpenSSL is handshaking on this thread
            // (contract above). A shared reference lives only for this closure, and no code
            // here changes the connection. `SslRef` is an opaque type (an `UnsafeCell`), so
            // this reference asserts nothing about OpenSSL's memory even while the caller up
            // the stack holds the connection by `&mut` (the `openssl` crate's own callbacks
            // rely on the same). The `Shared` found through it is an `Arc` clone
            // taken from its context's ex data: that context is alive (the connection holds a
            // reference to it for as long as it uses it), and its ex data cannot be replaced
            // once built (only `SslContextBuilder::set_ex_data` writes it, and a built
            // `SslContext` has no builder), so the clone is of a live value, and ours after.
            let ssl = unsafe { SslRef::from_ptr(s) };
            let Some(shared) = shared_of(ssl) else {
                return 0;
            };
            let keys = shared.keys_of(ssl);
            let counters = &shared.counters;
            if enc == 1 {
                let Some((name, key)) = keys.sealing() else {
                    bump(&counters.not_issued);
                    return 0;
                };
                let mut fresh_iv = [0u8; IV_LEN];
                if openssl::rand::rand_bytes(&mut fresh_iv).is_err() {
                    return -1;
                }
                // SAFETY: to seal, `key_name` and `iv` are OpenSSL's own distinct, writable
                // arrays of 16 and `EVP_MAX_IV_LENGTH` (16) bytes (contract above); we write
                // exactly 16 bytes to each, from our own arrays, which overlap neither.
                // `ctx` and `hctx` are valid and ours for the call.
                let ok = unsafe {
                    core::ptr::copy_nonoverlapping(name.as_ptr(), key_name, KEY_NAME_LEN);
                    core::ptr::copy_nonoverlapping(fresh_iv.as_ptr(), iv, IV_LEN);
                    init(ctx, hctx, &key.aes, &key.hmac, &fresh_iv, true)
                };
                if ok.is_err() {
                    return -1;
                }
                bump(&counters.issued);
                1
            } else {
                let mut name = [0u8; KEY_NAME_LEN];
                let mut ticket_iv = [0u8; IV_LEN];
                // SAFETY: to open, `key_name` and `iv` point to at least 16 readable bytes
                // each, inside the ticket (contract above); we copy 16 bytes of each into
                // our own arrays and never write through them.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        key_name.cast_const(),
                        name.as_mut_ptr(),
                        KEY_NAME_LEN,
                    );
                    core::ptr::copy_nonoverlapping(iv.cast_const(), ticket_iv.as_mut_ptr(), IV_LEN);
                }
                let (aes, hmac, verdict) = match keys.opening(&name) {
                    Open::UnknownKey => {
                        bump(&counters.rejected_unknown_key);
                        return 0;
                    }
                    Open::WrongContext => {
                        bump(&counters.rejected_wrong_context);
                        return 0;
                    }
                    Open::Use(aes, hmac) => (aes, hmac, 1),
                    Open::Renew(aes, hmac) => (aes, hmac, 2),
                };
                // SAFETY: `ctx` and `hctx` are valid and ours for the call (contract above).
                if unsafe { init(ctx, hctx, aes, hmac, &ticket_iv, false) }.is_err() {
                    return -1;
                }
                bump(&counters.opened);
                if verdict == 2 {
                    bump(&counters.renewed);
                }
                verdict
            }
        }))
        .unwrap_or(0)
    }
}

/// Without OpenSSL 3 there is no `EVP_MAC_CTX` callback to install.
#[cfg(not(reprise_ossl3))]
mod ffi {
    use openssl::ssl::SslContextBuilder;

    pub(super) fn install(_: &mut SslContextBuilder, _: u64) -> Result<(), super::Error> {
        Err(super::Error::TicketsUnsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_seal::tickets::TicketKey;

    fn key(v: u64) -> Arc<TicketKey> {
        Arc::new(TicketKey::new(KeyId::from_version(v), [v as u8; 32]))
    }

    fn ctx(name: &[u8]) -> SidCtx {
        SidCtx::new(name).unwrap()
    }

    #[test]
    fn names_keys_and_verdicts() {
        let keys = TicketKeys::new(Some(key(2)), vec![key(1)], 1);
        let web = ContextKeys::new(&keys, ctx(b"web"));
        let (name, sealing) = web.sealing().unwrap();
        assert_eq!(&name[..8], KeyId::from_version(2).as_bytes());
        assert_eq!(name[8..], context_tag(&ctx(b"web")));
        assert_eq!(web.opening(&name), Open::Use(&sealing.aes, &sealing.hmac));
        // Derived per purpose and per context, never the ring key itself.
        assert_ne!(*sealing.aes, *sealing.hmac);
        assert_ne!(*sealing.aes, [2; 32]);
        let api = ContextKeys::new(&keys, ctx(b"api"));
        assert_ne!(*api.sealing().unwrap().1.aes, *sealing.aes);
        assert_eq!(api.opening(&name), Open::WrongContext);
        // A key that only decrypts: renew.
        let mut old = name;
        old[..8].copy_from_slice(KeyId::from_version(1).as_bytes());
        assert!(matches!(web.opening(&old), Open::Renew(..)));
        old[..8].copy_from_slice(KeyId::from_version(3).as_bytes());
        assert_eq!(web.opening(&old), Open::UnknownKey);
        // Nothing encrypts: no ticket, and old ones still open without renewal.
        let none = ContextKeys::new(&TicketKeys::new(None, vec![key(1)], 2), ctx(b"web"));
        assert!(none.sealing().is_none());
        old[..8].copy_from_slice(KeyId::from_version(1).as_bytes());
        assert!(matches!(none.opening(&old), Open::Use(..)));
    }
}
