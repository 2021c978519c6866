//! Per-connection handles: which sessions a connection made or resumed, its handshake
//! statistics, and the removal of its sessions when it fails after its handshake.
//!
//! rustls calls the stores from inside `process_new_packets`, without saying for which
//! connection. A [`ConnectionSessions`] handle tells them: while the connection's packets are
//! processed inside [`ConnectionSessions::enter`] (or a future wrapped by
//! [`ConnectionSessions::instrument`]), the stores record into it the sessions they store, and
//! the sessions they look up as candidates for a resumption.
//!
//! An unclean shutdown is decided by the server's own side, as in OpenSSL: a connection whose
//! handshake completed and which then fails (a fatal alert sent or received, a protocol,
//! decrypt or record error, or an abort by the application, [`ConnectionSessions::failed`])
//! loses its sessions, with the remove callback. A peer that closes without close_notify (FIN
//! or RST), a server-sent close_notify and a timeout keep them: dropping the handle never
//! removes anything.
//!
//! "The connection's sessions" are those it created and the one it actually resumed. A
//! session it merely looked up, or tried to resume and failed, is only a candidate, promoted
//! when the handshake completes as a resumption: a TLS 1.2 session id travels in clear text,
//! and whoever offers one has not proved that they hold its secret.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use parking_lot::Mutex;
use reprise::{InlineSecret, Role, SessionCache, SessionKey, SharedSession};
use rustls::{ConnectionCommon, HandshakeKind, IoState};

thread_local! {
    /// The connections whose packets this thread is processing now, innermost last.
    static CURRENT: RefCell<Vec<Arc<dyn Any + Send + Sync>>> = const { RefCell::new(Vec::new()) };
}

/// A deferred store of a new session, committed once the handshake turns out to be full.
pub(crate) type PendingCommit = Box<dyn FnOnce() + Send>;

/// What a connection's handle knows, shared with the stores through the thread-local.
pub(crate) struct Tracked<P> {
    /// The address of the cache this connection belongs to, to ignore other caches' stores.
    cache: usize,
    state: Mutex<TrackedState<P>>,
}

struct TrackedState<P> {
    /// The sessions the connection created, and the one it resumed.
    sessions: Vec<SharedSession<P>>,
    /// Sessions looked up for a resumption: the connection's only if the handshake resumes.
    candidates: Vec<SharedSession<P>>,
    pending: Option<PendingCommit>,
    /// A ticket the shared tier handed over for this connection; see
    /// [`ConnectionSessions::confirm_take`].
    confirmed: Option<SharedSession<P>>,
    completed: bool,
    clean: bool,
    failed: bool,
}

impl<P: Send + Sync + 'static> Tracked<P> {
    /// Runs `f` with the connection being processed on this thread, if it belongs to `cache`.
    pub(crate) fn with_current<R>(
        cache: &Arc<SessionCache<P>>,
        f: impl FnOnce(&Tracked<P>) -> R,
    ) -> Option<R> {
        let current = CURRENT.with(|c| c.borrow().last().cloned())?;
        let tracked = current.downcast_ref::<Tracked<P>>()?;
        (tracked.cache == cache_addr(cache)).then(|| f(tracked))
    }

    /// Records a session the connection created.
    pub(crate) fn record(&self, session: &SharedSession<P>) {
        self.state.lock().sessions.push(session.clone());
    }

    /// Records a session the connection looked up to resume. It becomes one of the
    /// connection's sessions only if the handshake completes as a resumption.
    pub(crate) fn candidate(&self, session: &SharedSession<P>) {
        let mut state = self.state.lock();
        if state.completed {
            // Looked up after the handshake: no resumption can use it any more.
            return;
        }
        state.candidates.push(SharedSession::clone(session));
    }

    /// The ticket confirmed for this connection, if it is the one under `key`: handed out
    /// once.
    pub(crate) fn take_confirmed(&self, key: SessionKey<'_>) -> Option<SharedSession<P>> {
        let mut state = self.state.lock();
        let matches = state
            .confirmed
            .as_ref()
            .is_some_and(|s| s.id().as_bytes() == key.id && s.sid_ctx().as_bytes() == key.sid_ctx);
        if matches {
            state.confirmed.take()
        } else {
            None
        }
    }

    /// Defers a store until [`ConnectionSessions::handshake_completed`] says whether the
    /// handshake was full (commit) or resumed (drop).
    pub(crate) fn defer(&self, commit: PendingCommit) {
        self.state.lock().pending = Some(commit);
    }
}

fn cache_addr<P>(cache: &Arc<SessionCache<P>>) -> usize {
    Arc::as_ptr(cache) as usize
}

/// Pops the thread's current connection when dropped, even if the closure panicked.
struct Exit;

impl Drop for Exit {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().pop());
    }
}

fn enter<P: Send + Sync + 'static, R>(tracked: &Arc<Tracked<P>>, f: impl FnOnce() -> R) -> R {
    let any: Arc<dyn Any + Send + Sync> = tracked.clone();
    CURRENT.with(|c| c.borrow_mut().push(any));
    let _exit = Exit;
    f()
}

/// One connection's view of the cache.
///
/// Create it when the connection starts (from [`ServerStore::connection`](crate::ServerStore::connection)
/// or [`ClientStore::connection`](crate::ClientStore::connection)): that counts `accept` or
/// `connect`. Process the connection's packets through it. Report the end of the handshake
/// (counted in `accept_good` or `connect_good`, with the automatic flush every 255) and a clean
/// close. [`process`](Self::process) does all three for a rustls connection driven by hand.
///
/// A connection that fails after its handshake loses its sessions (those it created, and the
/// one it resumed), with the remove callback: [`process`](Self::process) and
/// [`SessionStream`](crate::SessionStream) notice a TLS failure themselves, and the
/// application reports an abort with [`failed`](Self::failed). Dropping the handle keeps the
/// sessions, whether or not a close_notify was exchanged: a peer closing without one (FIN or
/// RST) is not a failure.
pub struct ConnectionSessions<P: Send + Sync + 'static = InlineSecret> {
    cache: Arc<SessionCache<P>>,
    role: Role,
    tracked: Arc<Tracked<P>>,
}

impl<P: Send + Sync + 'static> ConnectionSessions<P> {
    pub(crate) fn new(cache: Arc<SessionCache<P>>, role: Role) -> Self {
        cache.handshake_started(role);
        let tracked = Arc::new(Tracked {
            cache: cache_addr(&cache),
            state: Mutex::new(TrackedState {
                sessions: Vec::new(),
                candidates: Vec::new(),
                pending: None,
                confirmed: None,
                completed: false,
                clean: false,
                failed: false,
            }),
        });
        Self {
            cache,
            role,
            tracked,
        }
    }

    /// Another handle on the same connection (nothing is counted): for a stream that drives
    /// the handshake by hand while the application holds the first handle.
    #[cfg(feature = "tokio")]
    pub(crate) fn share(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            role: self.role,
            tracked: Arc::clone(&self.tracked),
        }
    }

    /// Runs `f` (which processes this connection's packets) so that the stores know the
    /// connection they work for.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        enter(&self.tracked, f)
    }

    /// Wraps a future that drives this connection (a `tokio-rustls` accept or connect, say),
    /// so that every poll runs as if inside [`enter`](Self::enter).
    pub fn instrument<F: Future>(&self, future: F) -> Instrumented<F, P> {
        Instrumented {
            inner: future,
            tracked: Arc::clone(&self.tracked),
        }
    }

    /// Processes a rustls connection's packets, and notes the end of its handshake, a
    /// close_notify from the peer, and a failure: an error after the handshake completed (a
    /// fatal alert sent or received, a protocol or decrypt error) removes the connection's
    /// sessions, as [`failed`](Self::failed) does. An error during the handshake removes
    /// nothing.
    pub fn process<D>(&self, conn: &mut ConnectionCommon<D>) -> Result<IoState, rustls::Error> {
        let was_handshaking = conn.is_handshaking();
        let processed = self.enter(|| conn.process_new_packets());
        if was_handshaking && !conn.is_handshaking() {
            self.handshake_completed(conn.handshake_kind());
        }
        let io = match processed {
            Ok(io) => io,
            Err(e) => {
                if !conn.is_handshaking() {
                    self.failed();
                }
                return Err(e);
            }
        };
        if io.peer_has_closed() {
            self.closed_cleanly();
        }
        Ok(io)
    }

    /// Notes that the handshake completed, with the kind rustls reports. Counts it, runs the
    /// automatic flush when due, commits a deferred new session if the handshake was full, and
    /// makes the looked-up session the connection's own if it resumed. Only the first call
    /// counts.
    pub fn handshake_completed(&self, kind: Option<HandshakeKind>) {
        let resumed = kind == Some(HandshakeKind::Resumed);
        let pending = {
            let mut state = self.tracked.state.lock();
            if state.completed {
                return;
            }
            state.completed = true;
            let candidates = core::mem::take(&mut state.candidates);
            if resumed {
                state.sessions.extend(candidates);
            }
            state.pending.take()
        };
        if let Some(commit) = pending {
            if !resumed {
                enter(&self.tracked, commit);
            }
        }
        self.cache.handshake_completed(self.role);
    }

    /// Hands the connection a TLS 1.3 ticket that the shared tier took for it (atomically,
    /// before the handshake; see [`SessionCache::prefetch`]).
    ///
    /// With a shared tier, this is the only way a ticket resumes: when the TLS stack takes the
    /// ticket's id on this connection, the store resumes this session
    /// ([`SessionCache::take_confirmed`]) rather than any local copy, and records it as one of
    /// the connection's sessions. A later confirmation replaces an earlier one.
    pub fn confirm_take(&self, ticket: SharedSession<P>) {
        self.tracked.state.lock().confirmed = Some(ticket);
    }

    /// Notes a close_notify sent or received. Informative only: the sessions survive the end
    /// of the connection whether or not it is called.
    pub fn closed_cleanly(&self) {
        self.tracked.state.lock().clean = true;
    }

    /// Whether [`closed_cleanly`](Self::closed_cleanly) was called, or [`process`](Self::process)
    /// saw the peer's close_notify.
    pub fn is_closed_cleanly(&self) -> bool {
        self.tracked.state.lock().clean
    }

    /// Reports that the connection failed after its handshake: a fatal alert, a TLS error, or
    /// an abort by the application. Removes the sessions the connection created or resumed,
    /// with the remove callback, once. Before the handshake completed it removes nothing (the
    /// peer proved nothing), but the connection still counts as failed.
    pub fn failed(&self) {
        let sessions = {
            let mut state = self.tracked.state.lock();
            state.failed = true;
            if !state.completed {
                return;
            }
            core::mem::take(&mut state.sessions)
        };
        for session in &sessions {
            self.cache.remove(session);
        }
    }

    /// Whether [`failed`](Self::failed) was called, or a TLS failure was seen.
    pub fn has_failed(&self) -> bool {
        self.tracked.state.lock().failed
    }

    /// Whether the handshake has completed.
    pub fn is_handshake_complete(&self) -> bool {
        self.tracked.state.lock().completed
    }

    /// The sessions this connection created or resumed so far (not the ones it only looked
    /// up, until its handshake completes as a resumption).
    pub fn sessions(&self) -> Vec<SharedSession<P>> {
        self.tracked.state.lock().sessions.clone()
    }
}

/// Whether an I/O error from a TLS stream (tokio-rustls, or rustls's own `Stream`) is a TLS
/// failure: a fatal alert received or sent, a protocol, decrypt or record error. Those come as
/// [`io::ErrorKind::InvalidData`](std::io::ErrorKind::InvalidData). A peer closing without
/// close_notify (`UnexpectedEof`), a reset, or a timeout is not one.
pub fn is_tls_failure(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::InvalidData
}

impl<P: Send + Sync + 'static> core::fmt::Debug for ConnectionSessions<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = self.tracked.state.lock();
        f.debug_struct("ConnectionSessions")
            .field("role", &self.role)
            .field("sessions", &state.sessions.len())
            .field("candidates", &state.candidates.len())
            .field("completed", &state.completed)
            .field("clean", &state.clean)
            .field("failed", &state.failed)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// A future that runs each poll inside [`ConnectionSessions::enter`].
    pub struct Instrumented<F, P> {
        #[pin]
        inner: F,
        tracked: Arc<Tracked<P>>,
    }
}

impl<F: Future, P: Send + Sync + 'static> Future for Instrumented<F, P> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        enter(this.tracked, || inner.poll(cx))
    }
}
