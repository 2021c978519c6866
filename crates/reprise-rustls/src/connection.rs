//! Per-connection handles: which sessions a connection made or used, its handshake statistics,
//! and the removal of its sessions when it ends without a clean shutdown.
//!
//! rustls calls the stores from inside `process_new_packets`, without saying for which
//! connection. A [`ConnectionSessions`] handle tells them: while the connection's packets are
//! processed inside [`ConnectionSessions::enter`] (or a future wrapped by
//! [`ConnectionSessions::instrument`]), the stores record into it the sessions they store or
//! resume. When the handle is dropped after a completed handshake without a close_notify from
//! either side, those sessions are removed from the cache, as the seeds require.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use parking_lot::Mutex;
use reprise::{Role, SecretBytes, Session, SessionCache, SessionKey};
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
    sessions: Vec<Arc<Session<P>>>,
    pending: Option<PendingCommit>,
    /// A ticket the shared tier handed over for this connection; see
    /// [`ConnectionSessions::confirm_take`].
    confirmed: Option<Arc<Session<P>>>,
    completed: bool,
    clean: bool,
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

    /// Records a session the connection stored or resumed.
    pub(crate) fn record(&self, session: &Arc<Session<P>>) {
        self.state.lock().sessions.push(Arc::clone(session));
    }

    /// The ticket confirmed for this connection, if it is the one under `key`: handed out
    /// once.
    pub(crate) fn take_confirmed(&self, key: SessionKey<'_>) -> Option<Arc<Session<P>>> {
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
/// Dropping the handle after a completed handshake with no clean close removes the sessions
/// the connection made or resumed, with the remove callback.
pub struct ConnectionSessions<P: Send + Sync + 'static = SecretBytes> {
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
                pending: None,
                confirmed: None,
                completed: false,
                clean: false,
            }),
        });
        Self {
            cache,
            role,
            tracked,
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

    /// Processes a rustls connection's packets, and notes the end of its handshake and a
    /// close_notify from the peer.
    pub fn process<D>(&self, conn: &mut ConnectionCommon<D>) -> Result<IoState, rustls::Error> {
        let was_handshaking = conn.is_handshaking();
        let io = self.enter(|| conn.process_new_packets())?;
        if was_handshaking && !conn.is_handshaking() {
            self.handshake_completed(conn.handshake_kind());
        }
        if io.peer_has_closed() {
            self.closed_cleanly();
        }
        Ok(io)
    }

    /// Notes that the handshake completed, with the kind rustls reports. Counts it, runs the
    /// automatic flush when due, and commits a deferred new session if the handshake was full.
    /// Only the first call counts.
    pub fn handshake_completed(&self, kind: Option<HandshakeKind>) {
        let pending = {
            let mut state = self.tracked.state.lock();
            if state.completed {
                return;
            }
            state.completed = true;
            state.pending.take()
        };
        if let Some(commit) = pending {
            if kind != Some(HandshakeKind::Resumed) {
                enter(&self.tracked, commit);
            }
        }
        self.cache.handshake_completed(self.role);
    }

    /// Hands the connection a TLS 1.3 ticket that the shared tier took for it (atomically,
    /// a `GETDEL` before the handshake; see `RedisTier::prefetch` in `reprise-redis`).
    ///
    /// With a shared tier, this is the only way a ticket resumes: when the TLS stack takes the
    /// ticket's id on this connection, the store resumes this session
    /// ([`SessionCache::take_confirmed`]) rather than any local copy, and records it as one of
    /// the connection's sessions. A later confirmation replaces an earlier one.
    pub fn confirm_take(&self, ticket: Arc<Session<P>>) {
        self.tracked.state.lock().confirmed = Some(ticket);
    }

    /// Notes a clean close: a close_notify was sent or received. The sessions then survive
    /// the end of the connection.
    pub fn closed_cleanly(&self) {
        self.tracked.state.lock().clean = true;
    }

    /// Whether the handshake has completed.
    pub fn is_handshake_complete(&self) -> bool {
        self.tracked.state.lock().completed
    }

    /// The sessions this connection made or resumed so far.
    pub fn sessions(&self) -> Vec<Arc<Session<P>>> {
        self.tracked.state.lock().sessions.clone()
    }
}

impl<P: Send + Sync + 'static> Drop for ConnectionSessions<P> {
    fn drop(&mut self) {
        let sessions = {
            let mut state = self.tracked.state.lock();
            if !state.completed || state.clean {
                return;
            }
            core::mem::take(&mut state.sessions)
        };
        for session in &sessions {
            self.cache.remove(session);
        }
    }
}

impl<P: Send + Sync + 'static> core::fmt::Debug for ConnectionSessions<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = self.tracked.state.lock();
        f.debug_struct("ConnectionSessions")
            .field("role", &self.role)
            .field("sessions", &state.sessions.len())
            .field("completed", &state.completed)
            .field("clean", &state.clean)
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
