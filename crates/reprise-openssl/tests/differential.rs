//! The differential test: OpenSSL's own session cache is the oracle.
//!
//! Every behaviour scenario of `shared/spec/scenarios.md` that makes sense for OpenSSL (1 to 9,
//! 11 to 13, and 10 through a raw callback) runs twice, on real OpenSSL 3 handshakes over
//! socket pairs, TLS 1.2 (session ids) and TLS 1.3 (stateful tickets, 2 per full handshake):
//!
//! 1. with OpenSSL's internal cache, and counting new, remove and get callbacks on the
//!    `SSL_CTX` (the oracle);
//! 2. with Reprise as the external cache ([`ServerCache`]), and the same counting callbacks on
//!    the Reprise cache.
//!
//! Each step records what a client observes (whether it resumed), the new, remove and get
//! callback invocations since the previous step, the number of cached sessions, and whatever
//! else the scenario returns (add and remove results). The two traces must be equal, except
//! for the differences listed in [`DEPARTURES`], each with the sentence of the seeds (or of
//! `shared/spec/semantics.md`) that decides it. An unlisted difference fails the test, and so
//! does a listed one that no longer happens.
//!
//! OpenSSL's cache is driven through the `openssl` crate where it can be. Four things it does
//! not wrap (setting the session timeout, a session's time, flushing, and the number of cached
//! sessions) are called through libssl directly, in the `libssl` module below, and so is a
//! new-session callback that returns 0 (the crate's always returns 1). No test sleeps: time is
//! moved by setting session times in OpenSSL and by a clock offset in Reprise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::c_long;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{connect, serve, Close, Pki};
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslOptions, SslSession, SslSessionCacheMode,
};
use parking_lot::Mutex;
use reprise::{
    CacheMode, Clock, ProtocolVersion, SecretBytes, Session, SessionCache, SessionKey,
    SharedSession,
};
use reprise_openssl::{set_get_session_callback, tag_context, DecodedSession, ServerCache};
use reprise_testkit::Version;

// ----- the expected differences --------------------------------------------------------------

/// One expected difference between OpenSSL's cache and Reprise, and what decides it.
#[derive(Debug)]
struct Departure {
    scenario: &'static str,
    /// `None`: both versions.
    version: Option<Version>,
    step: &'static str,
    field: &'static str,
    openssl: i64,
    reprise: i64,
    why: &'static str,
}

const SINGLE_USE: &str =
    "seeds (SSL_CTX_sess_set_get_cb(3), 1.1.1): \"In TLSv1.3 it is recommended \
     that each SSL_SESSION object is only used for resumption once. One way of enforcing that is \
     for applications to call SSL_CTX_remove_session(3) after a session has been used.\" Reprise \
     takes a ticket on use (remove callback); OpenSSL 3.0 removes a stateful ticket only when \
     early data with anti-replay is on, so a ticket resumes again and again.";

const SINGLE_USE_NOT_COPIED: &str = "semantics.md, TLS 1.3: \"a ticket resumes at most once. The \
     server takes it out of the cache on use\"; so a ticket from the get callback is taken, never \
     copied into the internal cache, where OpenSSL copies it (and keeps it reusable).";

const RESUMPTION_TICKETS: &str = "seeds: \"In TLSv1.3 it is recommended that each SSL_SESSION \
     object is only used for resumption once.\" The consequence on the next offer of a used \
     ticket: Reprise's handshake is a full one, which asks the get callback after the internal \
     miss and brings two tickets, where OpenSSL resumes again and sends one.";

const EXPIRED_TLS13: &str = "seeds: \"The remove_session_cb() is called whenever the SSL engine \
     removes a session from the internal cache. This happens when the session is removed because \
     it is expired\"; semantics.md: \"An expired session found at lookup is removed (remove \
     callback)\". OpenSSL 3.0 removes an expired session at lookup only for TLS <= 1.2; an \
     expired TLS 1.3 ticket stays until a flush.";

const SIZE_LIMIT: &str =
    "semantics.md: \"The cache holds exactly the size limit. OpenSSL 3.x holds \
     one fewer; we fix that.\" (OpenSSL counts the session being added before it evicts.)";

const AUTO_FLUSH: &str = "seeds (SSL_CTX_set_session_cache_mode(3)): \"Normally the session cache \
     is checked for expired sessions every 255 connections\". Reprise flushes at the 255th \
     completed handshake; OpenSSL 3.0 flushes when its accept_good counter is 255 modulo 256 \
     before it counts the handshake, i.e. at the 256th, then every 256.";

const NEW_RETURNS_0: &str = "seeds: \"If the callback returns 0, the session will be immediately \
     removed from the internal cache\". OpenSSL 3.0 ignores the return value (it only drops the \
     reference it gave the callback), so the session stays cached and resumes.";

const TLS12: Option<Version> = Some(Version::Tls12);
const TLS13: Option<Version> = Some(Version::Tls13);
const BOTH: Option<Version> = None;

/// A row of [`DEPARTURES`]: scenario, version, step, field, OpenSSL's value, Reprise's, why.
const fn d(
    scenario: &'static str,
    version: Option<Version>,
    step: &'static str,
    field: &'static str,
    openssl: i64,
    reprise: i64,
    why: &'static str,
) -> Departure {
    Departure {
        scenario,
        version,
        step,
        field,
        openssl,
        reprise,
        why,
    }
}

/// Every difference the test expects, and why. Nothing else may differ.
#[rustfmt::skip]
const DEPARTURES: &[Departure] = &[
    // 1: internal cache only.
    d("s01_internal_cache_only", TLS13, "resume", "remove", 0, 1, SINGLE_USE),
    d("s01_internal_cache_only", TLS13, "resume", "number", 3, 2, SINGLE_USE),
    d("s01_internal_cache_only", TLS13, "replay", "resumed", 1, 0, SINGLE_USE),
    d("s01_internal_cache_only", TLS13, "replay", "get", 0, 1, RESUMPTION_TICKETS),
    d("s01_internal_cache_only", TLS13, "replay", "new", 1, 2, RESUMPTION_TICKETS),
    // 2: external cache only. Through the trio, a take is a get followed by the remove
    // callback, which deletes the used ticket from the external cache.
    d("s02_external_cache_only", TLS13, "resume", "remove", 0, 1, SINGLE_USE),
    d("s02_no_internal_store_alone", TLS13, "resume", "remove", 0, 1, SINGLE_USE),
    // 3: both caches.
    d("s03_both_caches", TLS13, "copy_resume", "number", 2, 1, SINGLE_USE_NOT_COPIED),
    d("s03_both_caches", TLS13, "copy_resume", "remove", 0, 1, SINGLE_USE),
    d("s03_both_caches", TLS13, "nostore_resume", "remove", 0, 1, SINGLE_USE),
    // 4: caching off (OpenSSL copies a get-callback result in even then; so does Reprise for
    // TLS 1.2).
    d("s04_caching_off", TLS13, "off_resume", "number", 1, 0, SINGLE_USE_NOT_COPIED),
    d("s04_caching_off", TLS13, "off_resume", "remove", 0, 1, SINGLE_USE),
    // 5: timeout.
    d("s05_timeout", TLS13, "expired", "number", 4, 3, EXPIRED_TLS13),
    d("s05_timeout", TLS13, "expired", "remove", 0, 1, EXPIRED_TLS13),
    d("s05_timeout_boundary", TLS13, "boundary", "number", 3, 2, SINGLE_USE),
    d("s05_timeout_boundary", TLS13, "boundary", "remove", 0, 1, SINGLE_USE),
    // 6: size limit. With a limit of 1 OpenSSL holds 1 (it cannot evict the session it is
    // adding); above 1 it holds one fewer.
    d("s06_size_limit_three", BOTH, "filled", "number", 2, 3, SIZE_LIMIT),
    d("s06_size_limit_three", TLS12, "filled", "remove", 3, 2, SIZE_LIMIT),
    d("s06_size_limit_three", TLS13, "filled", "remove", 4, 3, SIZE_LIMIT),
    // 8: auto-flush. In TLS 1.3 OpenSSL counts the handshake before it issues the tickets (and
    // updates the cache), so it flushes at the 255th too.
    d("s08_auto_flush", TLS12, "after_255", "expired_removed", 0, 10, AUTO_FLUSH),
    d("s08_auto_flush", TLS12, "after_255", "remove", 0, 10, AUTO_FLUSH),
    d("s08_auto_flush", TLS12, "after_255", "number", 265, 255, AUTO_FLUSH),
    d("s08_auto_flush", TLS12, "after_256", "remove", 10, 0, AUTO_FLUSH),
    // 9: add and remove agree; the replacement ticket is used once.
    d("s09_add_remove", TLS13, "resume_t", "number", 1, 0, SINGLE_USE),
    d("s09_add_remove", TLS13, "resume_t", "remove", 0, 1, SINGLE_USE),
    // 10: the new-session callback returns 0. Reprise removes the session (with the remove
    // callback, as for any removal); OpenSSL keeps it, and it resumes.
    d("s10_new_callback_returns_false", TLS12, "full", "number", 1, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "full", "remove", 0, 1, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "again", "resumed", 1, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "again", "get", 0, 1, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "again", "new", 0, 1, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "again", "number", 1, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS12, "again", "remove", 0, 1, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "full", "number", 2, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "full", "remove", 0, 2, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "again", "resumed", 1, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "again", "get", 0, 1, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "again", "new", 1, 2, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "again", "number", 3, 0, NEW_RETURNS_0),
    d("s10_new_callback_returns_false", TLS13, "again", "remove", 0, 2, NEW_RETURNS_0),
    // 11: nothing crosses between the contexts, on either side; each ticket is used once.
    d("s11_context_isolation", TLS13, "a_again", "number", 5, 4, SINGLE_USE),
    d("s11_context_isolation", TLS13, "a_again", "remove", 0, 1, SINGLE_USE),
    d("s11_context_isolation", TLS13, "b_again", "number", 6, 4, SINGLE_USE),
    d("s11_context_isolation", TLS13, "b_again", "remove", 0, 1, SINGLE_USE),
    // 12 (clean half): the resumed ticket is used once.
    d("s12_clean_close_keeps_session", TLS13, "resume", "number", 3, 2, SINGLE_USE),
    d("s12_clean_close_keeps_session", TLS13, "resume", "remove", 0, 1, SINGLE_USE),
];

// ----- time ----------------------------------------------------------------------------------

fn real_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reprise's clock in these tests: real time moved forward by an offset (time passing), or
/// pinned to a given second.
#[derive(Debug, Default)]
struct TestClock {
    offset: AtomicU64,
    pinned: AtomicU64,
}

impl Clock for TestClock {
    fn now(&self) -> u64 {
        match self.pinned.load(Ordering::SeqCst) {
            0 => real_now() + self.offset.load(Ordering::SeqCst),
            t => t,
        }
    }
}

// ----- libssl, for the oracle ----------------------------------------------------------------

/// The libssl calls the oracle needs that the `openssl` crate does not wrap (or wraps as
/// `unsafe`). Test-only. Every context and session passed in is alive for the call (borrowed),
/// and no handshake runs at the same time: the harness joins each connection's threads before
/// it touches the cache.
mod libssl {
    use std::ffi::{c_int, c_long};
    use std::ptr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use foreign_types::ForeignTypeRef;
    use openssl::ssl::{SslContextRef, SslSessionRef};
    use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

    // The prototypes of OpenSSL 3.0's <openssl/ssl.h>.
    extern "C" {
        fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
        fn SSL_CTX_flush_sessions(ctx: *mut SSL_CTX, tm: c_long);
        fn SSL_SESSION_set_time(s: *mut SSL_SESSION, t: c_long) -> c_long;
    }

    /// `SSL_CTRL_SESS_NUMBER` of <openssl/ssl.h>.
    const SSL_CTRL_SESS_NUMBER: c_int = 20;

    /// `SSL_CTX_set_timeout`: the timeout of sessions made from now on.
    #[allow(unsafe_code)]
    pub fn set_timeout(ctx: &SslContextRef, secs: u64) {
        let t = c_long::try_from(secs).unwrap();
        // SAFETY: a live SSL_CTX, the prototype of ssl.h; it stores a number.
        unsafe {
            SSL_CTX_set_timeout(ctx.as_ptr(), t);
        }
    }

    /// `SSL_CTX_set_session_cache_mode`.
    #[allow(unsafe_code)]
    pub fn set_mode(ctx: &SslContextRef, mode: c_long) {
        // SAFETY: a live SSL_CTX; openssl-sys's binding of the ssl.h macro; it stores a number.
        unsafe {
            openssl_sys::SSL_CTX_set_session_cache_mode(ctx.as_ptr(), mode);
        }
    }

    /// `SSL_CTX_sess_number`: sessions in the internal cache.
    #[allow(unsafe_code)]
    pub fn number(ctx: &SslContextRef) -> usize {
        // SAFETY: a live SSL_CTX; SSL_CTRL_SESS_NUMBER takes no pointer argument (NULL).
        let n = unsafe {
            openssl_sys::SSL_CTX_ctrl(ctx.as_ptr(), SSL_CTRL_SESS_NUMBER, 0, ptr::null_mut())
        };
        usize::try_from(n).unwrap()
    }

    /// `SSL_CTX_flush_sessions`: removes the sessions expired at `t` (all of them for 0), with
    /// the remove callback for each.
    #[allow(unsafe_code)]
    pub fn flush(ctx: &SslContextRef, t: u64) {
        let t = c_long::try_from(t).unwrap();
        // SAFETY: a live SSL_CTX; the remove callback it calls is the oracle's, which does not
        // call back into OpenSSL.
        unsafe { SSL_CTX_flush_sessions(ctx.as_ptr(), t) }
    }

    /// `SSL_SESSION_set_time`. For a session in a cache, OpenSSL 3.0 takes the cache's lock and
    /// re-files it; the cache's context is alive (the rig owns it).
    #[allow(unsafe_code)]
    pub fn set_time(session: &SslSessionRef, t: u64) {
        let t = c_long::try_from(t).unwrap();
        // SAFETY: a live SSL_SESSION (we hold a reference); the prototype of ssl.h.
        unsafe {
            SSL_SESSION_set_time(session.as_ptr(), t);
        }
    }

    /// How many times [`declining_new_session`] ran.
    pub static DECLINED: AtomicUsize = AtomicUsize::new(0);

    /// A new-session callback that counts and returns 0. It does not touch the session.
    extern "C" fn declining_new_session(_ssl: *mut SSL, _session: *mut SSL_SESSION) -> c_int {
        DECLINED.fetch_add(1, Ordering::SeqCst);
        0
    }

    /// Installs [`declining_new_session`] (`SSL_CTX_sess_set_new_cb`).
    #[allow(unsafe_code)]
    pub fn set_declining_new_session_callback(ctx: &SslContextRef) {
        let cb = declining_new_session as unsafe extern "C" fn(*mut SSL, *mut SSL_SESSION) -> c_int;
        // SAFETY: a live SSL_CTX and a callback of the right type that never unwinds; OpenSSL
        // keeps its own reference to the session when the callback returns 0.
        unsafe { openssl_sys::SSL_CTX_sess_set_new_cb(ctx.as_ptr(), Some(cb)) }
    }

    /// `SSL_CTX_add_session` for a session that is either freshly decoded from DER or was made
    /// by this context (so never used with another one).
    #[allow(unsafe_code)]
    pub fn add(ctx: &SslContextRef, session: &SslSessionRef) -> bool {
        // SAFETY: the `openssl` crate's contract is that the session has never been used with
        // another context; the callers pass only sessions this context's new-session callback
        // produced, or sessions they just decoded from DER.
        unsafe { ctx.add_session(session) }
    }

    /// `SSL_CTX_remove_session`, under the same condition as [`add`].
    #[allow(unsafe_code)]
    pub fn remove(ctx: &SslContextRef, session: &SslSessionRef) -> bool {
        // SAFETY: as for `add`.
        unsafe { ctx.remove_session(session) }
    }
}

// ----- the two sides -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    OpenSsl,
    Reprise,
}

/// Counting callbacks, and the external cache they keep, for either side.
#[derive(Default)]
struct Rec {
    new: AtomicUsize,
    remove: AtomicUsize,
    get: AtomicUsize,
    /// What Reprise's new-session callback returns.
    keep: AtomicBool,
    /// Whether the get callback serves what the new callback stored.
    serve_external: AtomicBool,
    /// Whether the remove callback deletes from the external cache.
    remove_deletes: AtomicBool,
    /// OpenSSL's side: id → DER, as an application keeps sessions (`i2d_SSL_SESSION`).
    external: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// Reprise's side: id → its own copy of the session.
    external_reprise: Mutex<HashMap<Vec<u8>, SharedSession>>,
    made: Mutex<Vec<SslSession>>,
    made_reprise: Mutex<Vec<SharedSession>>,
    removed_ids: Mutex<Vec<Vec<u8>>>,
}

/// A session a scenario holds, on either side.
enum Handle {
    OpenSsl(SslSession),
    Reprise(SharedSession),
}

impl Handle {
    fn id(&self) -> Vec<u8> {
        match self {
            Handle::OpenSsl(s) => s.id().to_vec(),
            Handle::Reprise(s) => s.id().as_bytes().to_vec(),
        }
    }
}

#[derive(Clone, Copy)]
struct Config {
    mode: CacheMode,
    size: usize,
    timeout: u64,
    serve_external: bool,
    keep: bool,
    /// Accept early data: on OpenSSL's side this turns on OpenSSL's anti-replay (which removes
    /// a stateful ticket on use); on Reprise's, the cache's take does that.
    anti_replay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: CacheMode::SERVER,
            size: 20480,
            timeout: 300,
            serve_external: false,
            keep: true,
            anti_replay: false,
        }
    }
}

const SID_CTX: &[u8] = b"scenario";

/// One client: the session it offers next, and the one it offered last.
#[derive(Default, Clone)]
struct Client {
    offer: Option<Vec<u8>>,
    last_offered: Option<Vec<u8>>,
}

impl Client {
    fn offering(der: Option<Vec<u8>>) -> Self {
        Self {
            offer: der,
            last_offered: None,
        }
    }
}

type Obs = BTreeMap<&'static str, i64>;

/// One side's run of one scenario: a server, its cache, and the trace of observations.
struct Rig<'p> {
    side: Side,
    v: Version,
    pki: &'p Pki,
    rec: Arc<Rec>,
    ctx: Option<SslContext>,
    other: Option<SslContext>,
    cache: Option<Arc<SessionCache>>,
    adapter: Option<ServerCache>,
    clock: Arc<TestClock>,
    client_ctx: SslContext,
    /// Whether OpenSSL's side runs a new-session callback that returns 0 (scenario 10).
    declining: bool,
    mark: [usize; 3],
    trace: Vec<(&'static str, Obs)>,
}

impl<'p> Rig<'p> {
    fn new(side: Side, v: Version, pki: &'p Pki, cfg: Config) -> Self {
        let rec = Arc::new(Rec::default());
        rec.keep.store(cfg.keep, Ordering::SeqCst);
        rec.serve_external
            .store(cfg.serve_external, Ordering::SeqCst);
        rec.remove_deletes.store(true, Ordering::SeqCst);
        let clock = Arc::new(TestClock::default());
        let mut b = pki.server_builder(v);
        let (ctx, cache, adapter) = match side {
            Side::OpenSsl => {
                b.set_session_id_context(SID_CTX).unwrap();
                b.set_options(SslOptions::NO_TICKET);
                b.set_session_cache_mode(SslSessionCacheMode::from_bits_retain(c_long::from(
                    cfg.mode.bits() as i32,
                )));
                b.set_session_cache_size(i32::try_from(cfg.size).unwrap());
                install_oracle_callbacks(&mut b, &rec);
                if cfg.anti_replay {
                    b.set_max_early_data(16384).unwrap();
                }
                let ctx = b.build();
                libssl::set_timeout(&ctx, cfg.timeout);
                (ctx, None, None)
            }
            Side::Reprise => {
                let cache = Arc::new(
                    SessionCache::builder()
                        .mode(cfg.mode)
                        .size_limit(cfg.size)
                        .timeout_secs(cfg.timeout)
                        .clock(clock.clone())
                        .build(),
                );
                install_reprise_callbacks(&cache, &rec);
                let adapter = ServerCache::install(&mut b, cache.clone(), SID_CTX).unwrap();
                if cfg.anti_replay {
                    // Early data on, as on OpenSSL's side: Reprise's take is the anti-replay.
                    b.set_max_early_data(16384).unwrap();
                }
                (b.build(), Some(cache), Some(adapter))
            }
        };
        Self {
            side,
            v,
            pki,
            rec,
            ctx: Some(ctx),
            other: None,
            cache,
            adapter,
            clock,
            client_ctx: pki.client_builder(v).build(),
            declining: false,
            mark: [0; 3],
            trace: Vec::new(),
        }
    }

    fn ctx(&self) -> &SslContext {
        self.ctx.as_ref().unwrap()
    }

    fn cache(&self) -> &Arc<SessionCache> {
        self.cache.as_ref().unwrap()
    }

    /// Scenario 10: OpenSSL's new-session callback returns 0; Reprise's returns false.
    fn decline_new_sessions(&mut self) {
        match self.side {
            Side::OpenSsl => {
                libssl::set_declining_new_session_callback(self.ctx());
                self.declining = true;
            }
            Side::Reprise => self.rec.keep.store(false, Ordering::SeqCst),
        }
        self.mark = self.counts();
    }

    /// A second server configuration with another session-id context, sharing this server's
    /// cache: connections start on this context and switch to it (as a server-name callback
    /// does), so OpenSSL keeps using this context's cache and callbacks.
    fn add_other_config(&mut self) {
        let mut b = self.pki.server_builder(self.v);
        match self.side {
            Side::OpenSsl => {
                b.set_session_id_context(b"config-b").unwrap();
                b.set_options(SslOptions::NO_TICKET);
            }
            Side::Reprise => {
                tag_context(&mut b, b"config-b").unwrap();
                b.set_options(SslOptions::NO_TICKET);
            }
        }
        self.other = Some(b.build());
    }

    fn counts(&self) -> [usize; 3] {
        let new = if self.declining {
            libssl::DECLINED.load(Ordering::SeqCst)
        } else {
            self.rec.new.load(Ordering::SeqCst)
        };
        [
            new,
            self.rec.remove.load(Ordering::SeqCst),
            self.rec.get.load(Ordering::SeqCst),
        ]
    }

    fn number(&self) -> usize {
        match (&self.ctx, self.side) {
            (None, _) => 0,
            (Some(ctx), Side::OpenSsl) => libssl::number(ctx),
            (Some(_), Side::Reprise) => self.cache().len(),
        }
    }

    /// Records a step: the callback counts since the previous step, the number of cached
    /// sessions, and `extra`.
    fn observe(&mut self, step: &'static str, extra: &[(&'static str, i64)]) {
        let now = self.counts();
        let mut obs = Obs::new();
        obs.insert("new", (now[0] - self.mark[0]) as i64);
        obs.insert("remove", (now[1] - self.mark[1]) as i64);
        obs.insert("get", (now[2] - self.mark[2]) as i64);
        obs.insert("number", self.number() as i64);
        for (k, v) in extra {
            obs.insert(k, *v);
        }
        self.mark = now;
        self.trace.push((step, obs));
    }

    /// One connection from `client`, which offers its session and keeps the newest one it
    /// gets. Returns 1 if it resumed, 0 if not.
    fn connect_with(&self, client: &mut Client, close: Close, on_other: bool) -> i64 {
        let offer = client.offer.take();
        let conn = connect(&self.client_ctx, offer.as_deref(), close, |sock| {
            let mut ssl = Ssl::new(self.ctx()).unwrap();
            if on_other {
                ssl.set_ssl_context(self.other.as_ref().unwrap()).unwrap();
            }
            match &self.adapter {
                Some(adapter) => serve(adapter.accept(ssl, sock)),
                None => serve(ssl.accept(sock)),
            }
        });
        assert!(conn.ok, "the handshake failed");
        client.last_offered = offer;
        if conn.session.is_some() {
            client.offer = conn.session;
        }
        i64::from(conn.resumed)
    }

    fn connect(&self, client: &mut Client) -> i64 {
        self.connect_with(client, Close::Clean, false)
    }

    /// A full handshake from a new client, whose sessions get the time `t`.
    fn connect_at(&self, t: u64) -> Client {
        let mut client = Client::default();
        match self.side {
            Side::OpenSsl => {
                let before = self.rec.made.lock().len();
                self.connect(&mut client);
                for s in &self.rec.made.lock()[before..] {
                    libssl::set_time(s, t);
                }
            }
            Side::Reprise => {
                self.clock.pinned.store(t, Ordering::SeqCst);
                self.connect(&mut client);
                self.clock.pinned.store(0, Ordering::SeqCst);
            }
        }
        client
    }

    fn set_mode(&self, mode: CacheMode) {
        match self.side {
            Side::OpenSsl => libssl::set_mode(self.ctx(), c_long::from(mode.bits() as i32)),
            Side::Reprise => {
                self.cache().set_mode(mode);
            }
        }
    }

    /// Time passes: `secs` seconds.
    fn age(&self, secs: u64) {
        match self.side {
            Side::OpenSsl => {
                for s in self.rec.made.lock().iter() {
                    libssl::set_time(s, (s.time() as u64) - secs);
                }
                for der in self.rec.external.lock().values_mut() {
                    let s = SslSession::from_der(der).unwrap();
                    libssl::set_time(&s, (s.time() as u64) - secs);
                    *der = s.to_der().unwrap();
                }
            }
            Side::Reprise => {
                self.clock.offset.fetch_add(secs, Ordering::SeqCst);
            }
        }
    }

    fn flush(&self, t: u64) {
        match self.side {
            Side::OpenSsl => libssl::flush(self.ctx(), t),
            Side::Reprise => {
                self.cache().flush(t);
            }
        }
    }

    fn flush_all(&self) {
        match self.side {
            Side::OpenSsl => libssl::flush(self.ctx(), 0),
            Side::Reprise => {
                self.cache().flush_all();
            }
        }
    }

    fn add(&self, h: &Handle) -> i64 {
        i64::from(match h {
            Handle::OpenSsl(s) => libssl::add(self.ctx(), s),
            Handle::Reprise(s) => self.cache().add(s),
        })
    }

    fn remove(&self, h: &Handle) -> i64 {
        i64::from(match h {
            Handle::OpenSsl(s) => libssl::remove(self.ctx(), s),
            Handle::Reprise(s) => self.cache().remove(s),
        })
    }

    /// The newest session the server's new-session callback saw.
    fn last_made(&self) -> Handle {
        match self.side {
            Side::OpenSsl => Handle::OpenSsl(self.rec.made.lock().last().unwrap().clone()),
            Side::Reprise => Handle::Reprise(self.rec.made_reprise.lock().last().unwrap().clone()),
        }
    }

    /// Every session the server's new-session callback saw.
    fn all_made(&self) -> Vec<Handle> {
        match self.side {
            Side::OpenSsl => self
                .rec
                .made
                .lock()
                .iter()
                .cloned()
                .map(Handle::OpenSsl)
                .collect(),
            Side::Reprise => self
                .rec
                .made_reprise
                .lock()
                .iter()
                .cloned()
                .map(Handle::Reprise)
                .collect(),
        }
    }

    /// Another object for the same session: decoded again from its DER (OpenSSL), or built
    /// again from its fields (Reprise).
    fn copy_of(&self, h: &Handle) -> Handle {
        match h {
            Handle::OpenSsl(s) => {
                Handle::OpenSsl(SslSession::from_der(&s.to_der().unwrap()).unwrap())
            }
            Handle::Reprise(s) => Handle::Reprise(copy_session(s)),
        }
    }

    /// A session made by another server, from its DER, with time `t` and timeout `timeout`.
    fn decode(&self, der: &[u8], t: u64, timeout: u64) -> Handle {
        let s = SslSession::from_der(der).unwrap();
        match self.side {
            Side::OpenSsl => {
                libssl::set_time(&s, t);
                Handle::OpenSsl(s)
            }
            Side::Reprise => Handle::Reprise(SharedSession::from(
                Session::builder(s.id(), SecretBytes::from(der))
                    .sid_ctx(SID_CTX)
                    .version(version_of(self.v))
                    .time(t)
                    .timeout_secs(timeout)
                    .build()
                    .unwrap(),
            )),
        }
    }

    /// How many of these ids the remove callback has seen.
    fn removed_among(&self, ids: &BTreeSet<Vec<u8>>) -> i64 {
        self.rec
            .removed_ids
            .lock()
            .iter()
            .filter(|id| ids.contains(*id))
            .count() as i64
    }

    /// Drops the server: its context, and with it (Reprise) the adapter and the cache.
    fn drop_server(&mut self) {
        self.other = None;
        self.ctx = None;
        self.adapter = None;
        self.cache = None;
    }
}

fn version_of(v: Version) -> ProtocolVersion {
    match v {
        Version::Tls12 => ProtocolVersion::TLS1_2,
        Version::Tls13 => ProtocolVersion::TLS1_3,
    }
}

fn copy_session(s: &SharedSession) -> SharedSession {
    let copy = Session::builder(s.id().as_bytes(), s.payload())
        .sid_ctx(s.sid_ctx().as_bytes())
        .version(s.version())
        .time(s.time())
        .timeout_secs(s.timeout_secs())
        .build()
        .unwrap();
    SharedSession::from(copy)
}

/// OpenSSL's side: counting callbacks on the SSL_CTX; the new one keeps a DER copy.
fn install_oracle_callbacks(b: &mut SslContextBuilder, rec: &Arc<Rec>) {
    let r = rec.clone();
    b.set_new_session_callback(move |_ssl, session| {
        r.new.fetch_add(1, Ordering::SeqCst);
        let der = session.to_der().unwrap();
        r.external.lock().insert(session.id().to_vec(), der);
        r.made.lock().push(session);
    });
    let r = rec.clone();
    b.set_remove_session_callback(move |_ctx, session| {
        r.remove.fetch_add(1, Ordering::SeqCst);
        r.removed_ids.lock().push(session.id().to_vec());
        if r.remove_deletes.load(Ordering::SeqCst) {
            r.external.lock().remove(session.id());
        }
    });
    let r = rec.clone();
    set_get_session_callback(b, move |_ssl, id| {
        r.get.fetch_add(1, Ordering::SeqCst);
        if !r.serve_external.load(Ordering::SeqCst) {
            return None;
        }
        let der = r.external.lock().get(id).cloned()?;
        DecodedSession::from_der(&der).ok()
    });
}

/// Reprise's side: the same counting callbacks, on the Reprise cache.
fn install_reprise_callbacks(cache: &SessionCache, rec: &Arc<Rec>) {
    let r = rec.clone();
    cache.set_new_session_callback(Some(Arc::new(move |_, s| {
        r.new.fetch_add(1, Ordering::SeqCst);
        r.made_reprise.lock().push(s.clone());
        let keep = r.keep.load(Ordering::SeqCst);
        if keep {
            r.external_reprise
                .lock()
                .insert(s.id().as_bytes().to_vec(), copy_session(s));
        }
        keep
    })));
    let r = rec.clone();
    cache.set_remove_session_callback(Some(Arc::new(move |_, s, _why| {
        r.remove.fetch_add(1, Ordering::SeqCst);
        r.removed_ids.lock().push(s.id().as_bytes().to_vec());
        if r.remove_deletes.load(Ordering::SeqCst) {
            r.external_reprise.lock().remove(s.id().as_bytes());
        }
    })));
    let r = rec.clone();
    cache.set_get_session_callback(Some(Arc::new(move |_, key: &SessionKey<'_>| {
        r.get.fetch_add(1, Ordering::SeqCst);
        if !r.serve_external.load(Ordering::SeqCst) {
            return None;
        }
        r.external_reprise.lock().get(key.id).cloned()
    })));
}

/// DERs of `n` sessions made by a plain OpenSSL server (same certificate and session-id
/// context), with timeout `timeout`.
fn sessions_from_another_server(pki: &Pki, v: Version, n: usize, timeout: u64) -> Vec<Vec<u8>> {
    let ders = Arc::new(Mutex::new(Vec::new()));
    let mut b = pki.server_builder(v);
    b.set_session_id_context(SID_CTX).unwrap();
    b.set_options(SslOptions::NO_TICKET);
    b.set_session_cache_mode(SslSessionCacheMode::SERVER | SslSessionCacheMode::NO_INTERNAL);
    let d = ders.clone();
    b.set_new_session_callback(move |_, s| d.lock().push(s.to_der().unwrap()));
    let ctx = b.build();
    libssl::set_timeout(&ctx, timeout);
    let client = pki.client_builder(v).build();
    while ders.lock().len() < n {
        connect(&client, None, Close::Clean, |sock| {
            serve(Ssl::new(&ctx).unwrap().accept(sock))
        });
    }
    let mut ders = ders.lock().clone();
    ders.truncate(n);
    ders
}

// ----- comparing -----------------------------------------------------------------------------

type Trace = Vec<(&'static str, Obs)>;

/// A scenario: runs on one side and returns its trace.
type Scenario = fn(Side, Version, &Pki) -> Trace;

/// Runs a scenario on both sides and compares. The one scenario that checks a session at
/// exactly its expiry is sensitive to a second boundary: it is run again on a side where the
/// clock's second changed during the run (OpenSSL reads the real clock).
fn differential(scenario: &'static str, v: Version, run: Scenario) {
    let sensitive = scenario == "s05_timeout_boundary";
    let pki = Pki::new();
    let trace = |side| -> Trace {
        for _ in 0..5 {
            let start = real_now();
            let trace = run(side, v, &pki);
            if !sensitive || real_now() == start {
                return trace;
            }
        }
        panic!("{scenario}: the clock's second changed during every attempt");
    };
    let openssl = trace(Side::OpenSsl);
    let reprise = trace(Side::Reprise);
    compare(scenario, v, &openssl, &reprise);
}

fn compare(scenario: &str, v: Version, openssl: &Trace, reprise: &Trace) {
    let steps = |t: &Trace| t.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(
        steps(openssl),
        steps(reprise),
        "{scenario} {v:?}: the steps differ"
    );
    let expected: Vec<&Departure> = DEPARTURES
        .iter()
        .filter(|d| d.scenario == scenario && d.version.is_none_or(|x| x == v))
        .collect();
    let mut seen = vec![false; expected.len()];
    let mut errors = Vec::new();
    for ((step, o), (_, r)) in openssl.iter().zip(reprise) {
        let fields: BTreeSet<&str> = o.keys().chain(r.keys()).copied().collect();
        for field in fields {
            let (ov, rv) = (o.get(field), r.get(field));
            if ov == rv {
                continue;
            }
            let listed = expected.iter().position(|d| {
                d.step == *step
                    && d.field == field
                    && ov == Some(&d.openssl)
                    && rv == Some(&d.reprise)
            });
            match listed {
                Some(i) => seen[i] = true,
                None => errors.push(format!(
                    "unlisted difference: {scenario} {v:?} step {step:?} field {field:?}: \
                     OpenSSL {ov:?}, Reprise {rv:?}"
                )),
            }
        }
    }
    for (d, seen) in expected.iter().zip(seen) {
        if !seen {
            errors.push(format!("listed difference that did not happen: {d:?}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{}\nOpenSSL: {openssl:?}\nReprise: {reprise:?}",
        errors.join("\n")
    );
}

/// Every departure names a real scenario and field, and says why with a quoted sentence.
#[test]
fn every_departure_is_explained() {
    for d in DEPARTURES {
        assert!(d.why.contains('"'), "{d:?}");
        assert!(
            [
                "new",
                "remove",
                "get",
                "number",
                "resumed",
                "expired_removed"
            ]
            .contains(&d.field),
            "{d:?}"
        );
        assert_ne!(d.openssl, d.reprise, "{d:?}");
    }
}

macro_rules! scenarios {
    ($($name:ident: $($version:ident)|+;)*) => {
        $(
            mod $name {
                $(
                    #[test]
                    #[allow(non_snake_case)]
                    fn $version() {
                        super::differential(
                            stringify!($name),
                            super::Version::$version,
                            super::$name,
                        )
                    }
                )+
            }
        )*
    };
}

scenarios! {
    s01_internal_cache_only: Tls12 | Tls13;
    s01_with_anti_replay: Tls13;
    s02_external_cache_only: Tls12 | Tls13;
    s02_no_internal_store_alone: Tls12 | Tls13;
    s03_both_caches: Tls12 | Tls13;
    s04_caching_off: Tls12 | Tls13;
    s05_timeout: Tls12 | Tls13;
    s05_timeout_boundary: Tls12 | Tls13;
    s06_size_limit_one: Tls12 | Tls13;
    s06_size_limit_three: Tls12 | Tls13;
    s07_flush: Tls12 | Tls13;
    s08_auto_flush: Tls12 | Tls13;
    s08_no_auto_clear: Tls12 | Tls13;
    s09_add_remove: Tls12 | Tls13;
    s11_context_isolation: Tls12 | Tls13;
    s12_unclean_shutdown: Tls12;
    s12_clean_close_keeps_session: Tls12 | Tls13;
    s13_drop: Tls12 | Tls13;
}

/// Scenario 10 counts OpenSSL's new-session calls in a process-wide counter, so both
/// versions run in this one test, one after the other.
#[test]
fn s10_new_callback_returns_false() {
    for v in [Version::Tls12, Version::Tls13] {
        differential("s10_new_callback_returns_false", v, s10);
    }
}

// ----- the scenarios -------------------------------------------------------------------------

fn rig<'p>(side: Side, v: Version, pki: &'p Pki, cfg: Config) -> Rig<'p> {
    Rig::new(side, v, pki, cfg)
}

/// Scenario 1: internal cache only. A full handshake, a resumption, and (TLS 1.3) the same
/// ticket offered again.
fn s01_internal_cache_only(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(side, v, pki, Config::default());
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    let r = rig.connect(&mut c);
    rig.observe("resume", &[("resumed", r)]);
    if v == Version::Tls13 {
        let mut replay = Client::offering(c.last_offered.clone());
        let r = rig.connect(&mut replay);
        rig.observe("replay", &[("resumed", r)]);
    }
    rig.trace
}

/// Scenario 1 again, with OpenSSL accepting early data: its anti-replay protection removes a
/// stateful ticket on use (SSL_CTX_remove_session), and it agrees with Reprise, which confirms
/// what `SINGLE_USE` says.
fn s01_with_anti_replay(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            anti_replay: true,
            ..Config::default()
        },
    );
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    let r = rig.connect(&mut c);
    rig.observe("resume", &[("resumed", r)]);
    let r = rig.connect(&mut Client::offering(c.last_offered.clone()));
    rig.observe("replay", &[("resumed", r)]);
    rig.trace
}

fn full_then_resume(mut rig: Rig<'_>) -> Trace {
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    let r = rig.connect(&mut c);
    rig.observe("resume", &[("resumed", r)]);
    rig.trace
}

/// Scenario 2: external cache only (NO_INTERNAL); the get callback serves what the new
/// callback stored.
fn s02_external_cache_only(side: Side, v: Version, pki: &Pki) -> Trace {
    full_then_resume(rig(
        side,
        v,
        pki,
        Config {
            mode: CacheMode::SERVER | CacheMode::NO_INTERNAL,
            serve_external: true,
            ..Config::default()
        },
    ))
}

/// Scenario 2b: NO_INTERNAL_STORE alone: the internal lookup runs (and misses) first.
fn s02_no_internal_store_alone(side: Side, v: Version, pki: &Pki) -> Trace {
    full_then_resume(rig(
        side,
        v,
        pki,
        Config {
            mode: CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE,
            serve_external: true,
            ..Config::default()
        },
    ))
}

/// Scenario 3: both caches. A session made while nothing is stored internally, then looked
/// up under NO_INTERNAL_LOOKUP: the get callback's session is copied into the internal cache,
/// unless NO_INTERNAL_STORE is set too.
fn s03_both_caches(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut trace = Trace::new();
    for (no_store, steps) in [
        (false, ["copy_full", "copy_resume"]),
        (true, ["nostore_full", "nostore_resume"]),
    ] {
        let mut rig = rig(
            side,
            v,
            pki,
            Config {
                mode: CacheMode::SERVER | CacheMode::NO_INTERNAL,
                serve_external: true,
                ..Config::default()
            },
        );
        let mut c = Client::default();
        let r = rig.connect(&mut c);
        rig.observe(steps[0], &[("resumed", r)]);
        let mut mode = CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP;
        if no_store {
            mode |= CacheMode::NO_INTERNAL_STORE;
        }
        rig.set_mode(mode);
        let r = rig.connect(&mut c);
        rig.observe(steps[1], &[("resumed", r)]);
        trace.append(&mut rig.trace);
    }
    trace
}

/// Scenario 4: caching OFF: nothing is stored and no new callback runs, but the get callback
/// is still asked, and its session resumes.
fn s04_caching_off(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            serve_external: true,
            ..Config::default()
        },
    );
    let mut old = Client::default();
    let r = rig.connect(&mut old);
    rig.observe("full", &[("resumed", r)]);
    // Empty the internal cache, keeping the external copies.
    rig.rec.remove_deletes.store(false, Ordering::SeqCst);
    rig.flush_all();
    rig.rec.remove_deletes.store(true, Ordering::SeqCst);
    rig.observe("flush_all", &[]);
    rig.set_mode(CacheMode::OFF);
    let r = rig.connect(&mut Client::default());
    rig.observe("off_full", &[("resumed", r)]);
    let r = rig.connect(&mut old);
    rig.observe("off_resume", &[("resumed", r)]);
    rig.trace
}

/// Scenario 5: timeout 10 s; 11 s later the session has expired.
fn s05_timeout(side: Side, v: Version, pki: &Pki) -> Trace {
    resume_after(side, v, pki, 11, "expired")
}

/// Scenario 5b: at exactly 10 s the session still resumes.
fn s05_timeout_boundary(side: Side, v: Version, pki: &Pki) -> Trace {
    resume_after(side, v, pki, 10, "boundary")
}

/// With a 10 s timeout: a full handshake, then a resumption attempt `secs` later.
fn resume_after(side: Side, v: Version, pki: &Pki, secs: u64, label: &'static str) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            timeout: 10,
            ..Config::default()
        },
    );
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    rig.age(secs);
    let r = rig.connect(&mut c);
    rig.observe(label, &[("resumed", r)]);
    rig.trace
}

/// Scenario 6: size limit 1: two full handshakes; only the newest session is kept.
fn s06_size_limit_one(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            size: 1,
            ..Config::default()
        },
    );
    let (mut a, mut b) = (Client::default(), Client::default());
    let r = rig.connect(&mut a);
    rig.observe("a_full", &[("resumed", r)]);
    let r = rig.connect(&mut b);
    rig.observe("b_full", &[("resumed", r)]);
    let r = rig.connect(&mut b);
    rig.observe("b_again", &[("resumed", r)]);
    let r = rig.connect(&mut a);
    rig.observe("a_again", &[("resumed", r)]);
    rig.trace
}

/// Scenario 6b: size limit 3, five sessions made.
fn s06_size_limit_three(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            size: 3,
            ..Config::default()
        },
    );
    let mut made = 0;
    while made < 5 {
        rig.connect(&mut Client::default());
        made += v.per_handshake();
    }
    rig.observe("filled", &[]);
    rig.trace
}

/// Scenario 7: sessions made at now−10, now and now+10 with timeout 10, flushed at now+9,
/// now+11 and now+21; then added back and flushed all at once.
fn s07_flush(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            timeout: 10,
            ..Config::default()
        },
    );
    let now = real_now();
    for t in [now - 10, now, now + 10] {
        rig.connect_at(t);
    }
    rig.observe("made", &[]);
    rig.flush(now + 9);
    rig.observe("flush_early", &[]);
    rig.flush(now + 11);
    rig.observe("flush_middle", &[]);
    rig.flush(now + 21);
    rig.observe("flush_late", &[]);
    let added = rig.all_made().iter().map(|h| rig.add(h)).sum();
    rig.observe("added_back", &[("added", added)]);
    rig.flush_all();
    rig.observe("flush_all", &[]);
    rig.trace
}

/// Ten expired sessions are cached, then 255 completed handshakes, then one more.
fn auto_flush_run(side: Side, v: Version, pki: &Pki, mode: CacheMode) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            mode,
            ..Config::default()
        },
    );
    let past = real_now() - 1000;
    let mut ids = BTreeSet::new();
    let mut added = 0;
    for der in sessions_from_another_server(pki, v, 10, 10) {
        let h = rig.decode(&der, past, 10);
        ids.insert(h.id());
        added += rig.add(&h);
    }
    rig.observe("expired_added", &[("added", added)]);
    for _ in 0..255 {
        rig.connect(&mut Client::default());
    }
    let gone = rig.removed_among(&ids);
    rig.observe("after_255", &[("expired_removed", gone)]);
    rig.connect(&mut Client::default());
    let gone = rig.removed_among(&ids);
    rig.observe("after_256", &[("expired_removed", gone)]);
    rig.trace
}

/// Scenario 8: the expired sessions are flushed automatically.
fn s08_auto_flush(side: Side, v: Version, pki: &Pki) -> Trace {
    auto_flush_run(side, v, pki, CacheMode::SERVER)
}

/// Scenario 8b: with NO_AUTO_CLEAR they all stay.
fn s08_no_auto_clear(side: Side, v: Version, pki: &Pki) -> Trace {
    auto_flush_run(side, v, pki, CacheMode::SERVER | CacheMode::NO_AUTO_CLEAR)
}

/// Scenario 9: add and remove, with sessions real handshakes made, under NO_INTERNAL_STORE
/// (the application fills the internal cache by hand; it is still searched).
fn s09_add_remove(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(
        side,
        v,
        pki,
        Config {
            mode: CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE,
            ..Config::default()
        },
    );
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    // The newest session: the one the client offers.
    let s = rig.last_made();
    let add_s = rig.add(&s);
    let add_s_again = rig.add(&s);
    let t = rig.copy_of(&s);
    let add_t = rig.add(&t);
    rig.observe(
        "adds",
        &[
            ("add_s", add_s),
            ("add_s_again", add_s_again),
            ("add_t", add_t),
        ],
    );
    // u was never cached.
    let u = rig.decode(
        &sessions_from_another_server(pki, v, 1, 300)[0],
        real_now(),
        300,
    );
    let removed = rig.remove(&u);
    rig.observe("remove_u", &[("removed", removed)]);
    // The replacement t carries the same state as s, so the client resumes through it.
    let r = rig.connect(&mut c);
    rig.observe("resume_t", &[("resumed", r)]);
    if v == Version::Tls12 {
        let removed = rig.remove(&t);
        rig.observe("remove_t", &[("removed", removed)]);
        let r = rig.connect(&mut c);
        rig.observe("after_remove", &[("resumed", r)]);
    }
    rig.trace
}

/// Scenario 10: a new-session callback that returns 0 (false).
fn s10(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(side, v, pki, Config::default());
    rig.decline_new_sessions();
    let mut c = Client::default();
    let r = rig.connect(&mut c);
    rig.observe("full", &[("resumed", r)]);
    let r = rig.connect(&mut c);
    rig.observe("again", &[("resumed", r)]);
    rig.trace
}

/// Scenario 11: one cache, two server configurations with different session-id contexts (the
/// second reached by switching the connection's context, as a server-name callback does).
fn s11_context_isolation(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(side, v, pki, Config::default());
    rig.add_other_config();
    let mut a = Client::default();
    let r = rig.connect(&mut a);
    rig.observe("a_full", &[("resumed", r)]);
    let a_session = a.offer.clone();
    let mut b = Client::offering(a_session.clone());
    let r = rig.connect_with(&mut b, Close::Clean, true);
    rig.observe("a_offered_to_b", &[("resumed", r)]);
    let r = rig.connect(&mut Client::offering(a_session));
    rig.observe("a_again", &[("resumed", r)]);
    let r = rig.connect_with(&mut b, Close::Clean, true);
    rig.observe("b_again", &[("resumed", r)]);
    rig.trace
}

/// Scenario 12: TLS 1.2, the connection is dropped without close_notify after the handshake.
fn s12_unclean_shutdown(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(side, v, pki, Config::default());
    let mut c = Client::default();
    let r = rig.connect_with(&mut c, Close::Unclean, false);
    rig.observe("unclean", &[("resumed", r)]);
    let r = rig.connect(&mut c);
    rig.observe("after_unclean", &[("resumed", r)]);
    rig.trace
}

/// Scenario 12b: after a clean close the session resumes.
fn s12_clean_close_keeps_session(side: Side, v: Version, pki: &Pki) -> Trace {
    full_then_resume(rig(side, v, pki, Config::default()))
}

/// Scenario 13: a server whose cache holds at least 5 sessions is dropped.
fn s13_drop(side: Side, v: Version, pki: &Pki) -> Trace {
    let mut rig = rig(side, v, pki, Config::default());
    while rig.number() < 5 {
        rig.connect(&mut Client::default());
    }
    rig.observe("filled", &[]);
    rig.drop_server();
    rig.observe("dropped", &[]);
    rig.trace
}
