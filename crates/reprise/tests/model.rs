//! Model-based property test: random operation sequences run against a small, obviously correct
//! reference model of one cache and against the engine (one shard, and the default number), and
//! every observable is compared after every step.
//!
//! The model is written from `shared/spec/semantics.md` and the seeds. Where those leave a detail
//! open, the model follows OpenSSL 3.x (as the spec says to) and the comment at that spot says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proptest::collection::vec;
use proptest::prelude::*;
use reprise::{
    CacheMode, Clock, ManualClock, Role, Session, SessionCache, SessionKey, SharedSession, Stats,
};

/// A session whose payload is its token: its index in the pool of objects a case made.
type Obj = SharedSession<u64>;

const START: u64 = 1_000;

/// Ids 1..=6, of 1, 16 or 32 bytes, so that short and full-length ids both occur.
fn id_bytes(id: u8) -> Vec<u8> {
    vec![id; [1, 16, 32][usize::from(id % 3)]]
}

fn ctx_bytes(ctx: u8) -> Vec<u8> {
    match ctx {
        0 => Vec::new(),
        _ => b"svc-b".to_vec(),
    }
}

/// Picks one of the objects a case made, whatever their number.
#[derive(Clone, Copy, Debug)]
struct Index(u16);

impl Index {
    fn index(self, len: usize) -> usize {
        usize::from(self.0) % len
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- operations -------------------------------------------------------------------------------

/// A session to build: its id, context, time relative to now and timeout.
#[derive(Clone, Debug)]
struct ObjSpec {
    id: u8,
    ctx: u8,
    dt: i8,
    timeout: u64,
    /// A time so late that `time + timeout` saturates (never expires, or almost).
    far_future: bool,
}

#[derive(Clone, Debug)]
enum KeySpec {
    Valid {
        id: u8,
        ctx: u8,
    },
    Empty,
    /// 33 bytes: one too many. Its 32-byte prefix is the id of a cached session for ids 2 and 5.
    TooLong {
        id: u8,
    },
}

impl KeySpec {
    fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        match *self {
            KeySpec::Valid { id, ctx } => (id_bytes(id), ctx_bytes(ctx)),
            KeySpec::Empty => (Vec::new(), Vec::new()),
            KeySpec::TooLong { id } => (vec![id; 33], Vec::new()),
        }
    }
}

#[derive(Clone, Debug)]
enum FlushAt {
    Delta(i8),
    Max,
}

#[derive(Clone, Debug)]
enum Op {
    /// Builds a session object without adding it.
    Make(ObjSpec),
    /// Builds a session object and adds it.
    AddNew(ObjSpec),
    /// Adds an existing object again (maybe the identical one that is cached).
    Add(Index),
    Remove(Index),
    RemoveKey(KeySpec),
    Lookup(Role, KeySpec),
    Take(Role, KeySpec),
    NewSession(Role, ObjSpec),
    Flush(FlushAt),
    FlushAll,
    SetMode(u32),
    SetSizeLimit(usize),
    Advance(u64),
    Started(Role),
    /// Completes this many handshakes of the role (auto-flush every 255).
    Completed(Role, u64),
    /// What the new-session callback returns from now on.
    NewReturns(bool),
    /// Whether the remove callback deletes the identical object from the external map.
    ExtDeleteOnRemove(bool),
    /// Puts an object into the external map under some id (maybe not its own).
    ExtPut(Index, u8),
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![3 => Just(Role::Server), 1 => Just(Role::Client)]
}

fn obj_spec() -> impl Strategy<Value = ObjSpec> {
    (
        1u8..=6,
        0u8..=1,
        -6i8..=3,
        0u64..=5,
        prop::bool::weighted(0.05),
    )
        .prop_map(|(id, ctx, dt, timeout, far_future)| ObjSpec {
            id,
            ctx,
            dt,
            timeout,
            far_future,
        })
}

fn key_spec() -> impl Strategy<Value = KeySpec> {
    prop_oneof![
        12 => (1u8..=6, 0u8..=1).prop_map(|(id, ctx)| KeySpec::Valid { id, ctx }),
        1 => Just(KeySpec::Empty),
        1 => (1u8..=6).prop_map(|id| KeySpec::TooLong { id }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => obj_spec().prop_map(Op::Make),
        8 => obj_spec().prop_map(Op::AddNew),
        4 => any::<u16>().prop_map(Index).prop_map(Op::Add),
        3 => any::<u16>().prop_map(Index).prop_map(Op::Remove),
        2 => key_spec().prop_map(Op::RemoveKey),
        8 => (role(), key_spec()).prop_map(|(r, k)| Op::Lookup(r, k)),
        4 => (role(), key_spec()).prop_map(|(r, k)| Op::Take(r, k)),
        6 => (role(), obj_spec()).prop_map(|(r, s)| Op::NewSession(r, s)),
        2 => prop_oneof![
            8 => (-6i8..=6).prop_map(FlushAt::Delta),
            1 => Just(FlushAt::Max),
        ]
        .prop_map(Op::Flush),
        1 => Just(Op::FlushAll),
        3 => (0u32..=0x7ff).prop_map(Op::SetMode),
        2 => (0usize..=6).prop_map(Op::SetSizeLimit),
        4 => (0u64..=4).prop_map(Op::Advance),
        1 => role().prop_map(Op::Started),
        2 => (role(), prop_oneof![Just(1u64), Just(100), Just(254), Just(255)])
            .prop_map(|(r, n)| Op::Completed(r, n)),
        2 => any::<bool>().prop_map(Op::NewReturns),
        1 => any::<bool>().prop_map(Op::ExtDeleteOnRemove),
        2 => (any::<u16>().prop_map(Index), 1u8..=6).prop_map(|(i, id)| Op::ExtPut(i, id)),
    ]
}

// ----- what an operation returned -----------------------------------------------------------------

/// Everything an operation returns, with sessions named by token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ret {
    None,
    Bool(bool),
    Token(Option<u64>),
    New {
        stored_internally: bool,
        kept_by_callback: bool,
    },
    Count(usize),
    Mode(CacheMode),
    Limit(usize),
}

/// What the callbacks saw during one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CallbackLog {
    /// Tokens, in call order.
    new: Vec<u64>,
    /// Tokens, sorted: the order across shards is not specified.
    remove: Vec<u64>,
    /// (id, sid_ctx) the get callback was asked for, in call order.
    get: Vec<(Vec<u8>, Vec<u8>)>,
}

// ----- the engine under test ----------------------------------------------------------------------

/// The state the engine's callbacks share with the test: an external cache and call logs.
struct External {
    new_returns: bool,
    delete_on_remove: bool,
    map: HashMap<Vec<u8>, Obj>,
    log: CallbackLog,
}

struct Engine {
    clock: Arc<ManualClock>,
    cache: SessionCache<u64>,
    ext: Arc<Mutex<External>>,
    pool: Vec<Obj>,
}

impl Engine {
    fn new(limit: usize, shards: Option<usize>) -> Self {
        let clock = Arc::new(ManualClock::new(START));
        let ext = Arc::new(Mutex::new(External {
            new_returns: true,
            delete_on_remove: false,
            map: HashMap::new(),
            log: CallbackLog::default(),
        }));
        let (e_new, e_remove, e_get) = (ext.clone(), ext.clone(), ext.clone());
        let mut builder = reprise::CacheBuilder::<u64>::new()
            .size_limit(limit)
            .clock(clock.clone())
            .new_session_callback(Arc::new(move |_cache, s: &Obj| {
                let mut e = lock(&e_new);
                e.log.new.push(*s.payload());
                let keep = e.new_returns;
                if keep {
                    e.map.insert(s.id().as_bytes().to_vec(), s.clone());
                }
                keep
            }))
            .remove_session_callback(Arc::new(move |_cache, s: &Obj, _why| {
                let mut e = lock(&e_remove);
                e.log.remove.push(*s.payload());
                if e.delete_on_remove {
                    let id = s.id().as_bytes();
                    if e.map.get(id).is_some_and(|m| SharedSession::ptr_eq(m, s)) {
                        e.map.remove(id);
                    }
                }
            }))
            .get_session_callback(Arc::new(move |_cache, key: &SessionKey<'_>| {
                let mut e = lock(&e_get);
                e.log.get.push((key.id.to_vec(), key.sid_ctx.to_vec()));
                e.map.get(key.id).cloned()
            }));
        if let Some(n) = shards {
            builder = builder.shards(n);
        }
        Engine {
            clock,
            cache: builder.build(),
            ext,
            pool: Vec::new(),
        }
    }

    fn build(&self, spec: &ObjSpec) -> Session<u64> {
        let now = self.clock.now();
        let token = self.pool.len() as u64;
        let time = if spec.far_future {
            u64::MAX - 2
        } else {
            now.saturating_add_signed(i64::from(spec.dt))
        };
        let id = id_bytes(spec.id);
        let ctx = ctx_bytes(spec.ctx);
        match Session::builder(&id, token)
            .sid_ctx(&ctx)
            .time(time)
            .timeout_secs(spec.timeout)
            .build()
        {
            Ok(s) => s,
            Err(e) => panic!("test ids and contexts are valid: {e}"),
        }
    }

    fn apply(&mut self, op: &Op) -> Ret {
        let cache = &self.cache;
        match op {
            Op::Make(spec) => {
                let s = SharedSession::from(self.build(spec));
                self.pool.push(s);
                Ret::None
            }
            Op::AddNew(spec) => {
                let s = SharedSession::from(self.build(spec));
                self.pool.push(s.clone());
                Ret::Bool(self.cache.add(&s))
            }
            Op::Add(i) => match self.pick(i) {
                Some(s) => Ret::Bool(cache.add(&s)),
                None => Ret::None,
            },
            Op::Remove(i) => match self.pick(i) {
                Some(s) => Ret::Bool(cache.remove(&s)),
                None => Ret::None,
            },
            Op::RemoveKey(k) => {
                let (id, ctx) = k.bytes();
                Ret::Bool(cache.remove_key(SessionKey::new(&id, &ctx)))
            }
            Op::Lookup(role, k) => {
                let (id, ctx) = k.bytes();
                Ret::Token(
                    cache
                        .lookup(*role, SessionKey::new(&id, &ctx))
                        .map(|s| *s.payload()),
                )
            }
            Op::Take(role, k) => {
                let (id, ctx) = k.bytes();
                Ret::Token(
                    cache
                        .take(*role, SessionKey::new(&id, &ctx))
                        .map(|s| *s.payload()),
                )
            }
            Op::NewSession(role, spec) => {
                let s = self.build(spec);
                let n = self.cache.new_session(*role, s);
                self.pool.push(n.session.clone());
                Ret::New {
                    stored_internally: n.stored_internally,
                    kept_by_callback: n.kept_by_callback,
                }
            }
            Op::Flush(at) => {
                let t = match at {
                    FlushAt::Delta(d) => self.clock.now().saturating_add_signed(i64::from(*d)),
                    FlushAt::Max => u64::MAX,
                };
                Ret::Count(cache.flush(t))
            }
            Op::FlushAll => Ret::Count(cache.flush_all()),
            Op::SetMode(bits) => Ret::Mode(cache.set_mode(CacheMode::from_bits_truncate(*bits))),
            Op::SetSizeLimit(n) => Ret::Limit(cache.set_size_limit(*n)),
            Op::Advance(d) => {
                self.clock.advance(*d);
                Ret::None
            }
            Op::Started(role) => {
                cache.handshake_started(*role);
                Ret::None
            }
            Op::Completed(role, n) => {
                for _ in 0..*n {
                    cache.handshake_completed(*role);
                }
                Ret::None
            }
            Op::NewReturns(b) => {
                lock(&self.ext).new_returns = *b;
                Ret::None
            }
            Op::ExtDeleteOnRemove(b) => {
                lock(&self.ext).delete_on_remove = *b;
                Ret::None
            }
            Op::ExtPut(i, id) => {
                if let Some(s) = self.pick(i) {
                    lock(&self.ext).map.insert(id_bytes(*id), s);
                }
                Ret::None
            }
        }
    }

    fn pick(&self, i: &Index) -> Option<Obj> {
        (!self.pool.is_empty()).then(|| self.pool[i.index(self.pool.len())].clone())
    }

    fn take_log(&self) -> CallbackLog {
        let mut log = std::mem::take(&mut lock(&self.ext).log);
        log.remove.sort_unstable();
        log
    }

    fn ext_map(&self) -> BTreeMap<Vec<u8>, u64> {
        lock(&self.ext)
            .map
            .iter()
            .map(|(k, s)| (k.clone(), *s.payload()))
            .collect()
    }

    /// (token, time) of every cached session, sorted.
    fn contents(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self
            .cache
            .sessions()
            .iter()
            .map(|s| (*s.payload(), s.time()))
            .collect();
        v.sort_unstable();
        v
    }

    /// (time, resumable) of every object the case made.
    fn objects(&self) -> Vec<(u64, bool)> {
        self.pool
            .iter()
            .map(|s| (s.time(), s.is_resumable()))
            .collect()
    }
}

// ----- the reference model ------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ModelObj {
    id: Vec<u8>,
    ctx: Vec<u8>,
    time: u64,
    timeout: u64,
    resumable: bool,
}

impl ModelObj {
    fn expiry(&self) -> u64 {
        self.time.saturating_add(self.timeout)
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    token: u64,
    /// The expiry the entry was filed under.
    expiry: u64,
    /// Insertion order, for eviction ties.
    seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inserted {
    Added,
    Replaced,
    Identical,
}

struct Model {
    now: u64,
    mode: CacheMode,
    limit: usize,
    /// The cache: id → entry. One entry per id.
    entries: BTreeMap<Vec<u8>, Entry>,
    next_seq: u64,
    objs: Vec<ModelObj>,
    stats: Stats,
    new_returns: bool,
    delete_on_remove: bool,
    ext: BTreeMap<Vec<u8>, u64>,
    log: CallbackLog,
}

impl Model {
    fn new(limit: usize) -> Self {
        Model {
            now: START,
            mode: CacheMode::SERVER,
            limit,
            entries: BTreeMap::new(),
            next_seq: 0,
            objs: Vec::new(),
            stats: Stats::default(),
            new_returns: true,
            delete_on_remove: false,
            ext: BTreeMap::new(),
            log: CallbackLog::default(),
        }
    }

    fn make(&mut self, spec: &ObjSpec) -> u64 {
        let time = if spec.far_future {
            u64::MAX - 2
        } else {
            self.now.saturating_add_signed(i64::from(spec.dt))
        };
        self.objs.push(ModelObj {
            id: id_bytes(spec.id),
            ctx: ctx_bytes(spec.ctx),
            time,
            timeout: spec.timeout,
            resumable: true,
        });
        self.objs.len() as u64 - 1
    }

    fn obj(&mut self, token: u64) -> &mut ModelObj {
        &mut self.objs[token as usize]
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The remove callback: logs, and maybe deletes the identical object from the external map.
    fn fire_remove(&mut self, token: u64) {
        self.log.remove.push(token);
        if self.delete_on_remove {
            let id = self.objs[token as usize].id.clone();
            if self.ext.get(&id) == Some(&token) {
                self.ext.remove(&id);
            }
        }
    }

    /// Takes an entry out of the cache: marked not resumable, remove callback.
    fn unlink(&mut self, id: &[u8]) -> Option<u64> {
        let e = self.entries.remove(id)?;
        self.obj(e.token).resumable = false;
        self.fire_remove(e.token);
        Some(e.token)
    }

    fn insert(&mut self, token: u64) -> Inserted {
        // UPDATE_TIME: the time is set to now whenever the session is added.
        if self.mode.contains(CacheMode::UPDATE_TIME) {
            let now = self.now;
            self.obj(token).time = now;
        }
        let expiry = self.objs[token as usize].expiry();
        let id = self.objs[token as usize].id.clone();
        if let Some(e) = self.entries.get(&id).copied() {
            if e.token == token {
                // The identical object: nothing changes but the time (no eviction either). If
                // UPDATE_TIME moved its expiry it is filed again, as OpenSSL's
                // SSL_SESSION_list_add does (it counts as the newest among equal expiries). The
                // spec leaves the tie order open here.
                if e.expiry != expiry {
                    let seq = self.seq();
                    self.entries.insert(id, Entry { token, expiry, seq });
                }
                return Inserted::Identical;
            }
        }
        // "Shrinking the limit evicts nothing at once. The extra sessions go at the next add":
        // any add but the identical one. A new entry needs room for itself (len < limit); a
        // replacement keeps the count, so it evicts down to the limit. Victim: the session that
        // expires soonest, ties the oldest inserted; the old object with the same id may be it
        // (then the add makes a new entry), the session being added never is.
        loop {
            let len = self.entries.len();
            let present = self.entries.contains_key(&id);
            let room = match (self.limit, present) {
                (0, _) => true,
                (limit, true) => len <= limit,
                (limit, false) => len < limit,
            };
            if room {
                break;
            }
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.expiry, e.seq))
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else { break };
            self.stats.cache_full += 1;
            self.unlink(&victim);
        }
        let seq = self.seq();
        // Another object with the same id is replaced silently: no callback, not marked.
        match self.entries.insert(id, Entry { token, expiry, seq }) {
            Some(_) => Inserted::Replaced,
            None => Inserted::Added,
        }
    }

    fn add(&mut self, token: u64) -> bool {
        matches!(self.insert(token), Inserted::Added | Inserted::Replaced)
    }

    fn remove(&mut self, token: u64) -> bool {
        let id = self.objs[token as usize].id.clone();
        // Whatever object has that id leaves, without a callback of its own: the callback is
        // for the session passed in, whether or not something was removed.
        let found = match self.entries.remove(&id) {
            Some(e) => {
                self.obj(e.token).resumable = false;
                true
            }
            None => false,
        };
        self.obj(token).resumable = false;
        self.fire_remove(token);
        found
    }

    fn well_formed(id: &[u8], ctx: &[u8]) -> bool {
        (1..=32).contains(&id.len()) && ctx.len() <= 32
    }

    fn remove_key(&mut self, id: &[u8], ctx: &[u8]) -> bool {
        if !Self::well_formed(id, ctx) {
            return false;
        }
        match self.entries.get(id) {
            Some(e) if self.objs[e.token as usize].ctx == ctx => self.unlink(id).is_some(),
            _ => false,
        }
    }

    fn find(&mut self, role: Role, id: &[u8], ctx: &[u8], take: bool) -> Option<u64> {
        let internal = role == Role::Client || !self.mode.contains(CacheMode::NO_INTERNAL_LOOKUP);
        if !Self::well_formed(id, ctx) {
            // A miss, and no store is asked.
            self.stats.rejected_keys += 1;
            if internal {
                self.stats.misses += 1;
            }
            return None;
        }
        if internal {
            match self.entries.get(id).copied() {
                None => self.stats.misses += 1,
                Some(e) => {
                    let o = &self.objs[e.token as usize];
                    // Another context (or a dead session): a miss that changes no counter, and
                    // final: the get callback is not asked (OpenSSL checks after its lookup).
                    if o.ctx != ctx || !o.resumable {
                        return None;
                    }
                    if self.now > e.expiry {
                        self.stats.timeouts += 1;
                        self.unlink(id);
                        return None;
                    }
                    self.stats.hits += 1;
                    if take {
                        self.unlink(id);
                    }
                    return Some(e.token);
                }
            }
        }
        if role == Role::Client {
            return None;
        }
        // The get callback: always asked on a server, whatever the mode.
        self.log.get.push((id.to_vec(), ctx.to_vec()));
        let found = *self.ext.get(id)?;
        let o = self.objs[found as usize].clone();
        if o.id != id || o.ctx != ctx || !o.resumable {
            return None;
        }
        if self.now > o.expiry() {
            self.stats.timeouts += 1;
            self.obj(found).resumable = false;
            self.fire_remove(found);
            return None;
        }
        self.stats.cb_hits += 1;
        self.stats.hits += 1;
        if take {
            self.obj(found).resumable = false;
            // A copy in the internal cache must not outlive the take.
            let copy = match self.entries.get(id) {
                Some(e) if self.objs[e.token as usize].ctx == ctx => self.unlink(id),
                _ => None,
            };
            if copy != Some(found) {
                self.fire_remove(found);
            }
        } else if !self.mode.contains(CacheMode::NO_INTERNAL_STORE) {
            self.insert(found);
        }
        Some(found)
    }

    fn flush(&mut self, t: u64) -> usize {
        let expired: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| t > e.expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.unlink(id);
        }
        expired.len()
    }

    fn flush_all(&mut self) -> usize {
        let all: Vec<Vec<u8>> = self.entries.keys().cloned().collect();
        for id in &all {
            self.unlink(id);
        }
        all.len()
    }

    fn new_session(&mut self, role: Role, spec: &ObjSpec) -> Ret {
        let token = self.make(spec);
        let bit = match role {
            Role::Server => CacheMode::SERVER,
            Role::Client => CacheMode::CLIENT,
        };
        if !self.mode.contains(bit) {
            return Ret::New {
                stored_internally: false,
                kept_by_callback: false,
            };
        }
        let mut stored = false;
        if !self.mode.contains(CacheMode::NO_INTERNAL_STORE) {
            self.insert(token);
            stored = true;
        }
        self.log.new.push(token);
        let kept = self.new_returns;
        if kept {
            let id = self.objs[token as usize].id.clone();
            self.ext.insert(id, token);
        } else if stored {
            // Removed from the internal cache at once, with the remove callback.
            let id = self.objs[token as usize].id.clone();
            if self.entries.get(&id).is_some_and(|e| e.token == token) {
                self.unlink(&id);
            }
            stored = false;
        }
        Ret::New {
            stored_internally: stored,
            kept_by_callback: kept,
        }
    }

    fn completed(&mut self, role: Role, n: u64) {
        for _ in 0..n {
            let (count, bit) = match role {
                Role::Server => (&mut self.stats.accept_good, CacheMode::SERVER),
                Role::Client => (&mut self.stats.connect_good, CacheMode::CLIENT),
            };
            *count += 1;
            // Every 255th completed handshake of the role flushes with t = now, unless
            // NO_AUTO_CLEAR. Like OpenSSL's ssl_update_cache, only while caching is on for the
            // role (the spec does not say either way).
            if *count % 255 == 0
                && self.mode.contains(bit)
                && !self.mode.contains(CacheMode::NO_AUTO_CLEAR)
            {
                self.flush(self.now);
            }
        }
    }

    fn pick(&self, i: &Index) -> Option<u64> {
        (!self.objs.is_empty()).then(|| i.index(self.objs.len()) as u64)
    }

    fn apply(&mut self, op: &Op) -> Ret {
        match op {
            Op::Make(spec) => {
                self.make(spec);
                Ret::None
            }
            Op::AddNew(spec) => {
                let t = self.make(spec);
                Ret::Bool(self.add(t))
            }
            Op::Add(i) => match self.pick(i) {
                Some(t) => Ret::Bool(self.add(t)),
                None => Ret::None,
            },
            Op::Remove(i) => match self.pick(i) {
                Some(t) => Ret::Bool(self.remove(t)),
                None => Ret::None,
            },
            Op::RemoveKey(k) => {
                let (id, ctx) = k.bytes();
                Ret::Bool(self.remove_key(&id, &ctx))
            }
            Op::Lookup(role, k) => {
                let (id, ctx) = k.bytes();
                Ret::Token(self.find(*role, &id, &ctx, false))
            }
            Op::Take(role, k) => {
                let (id, ctx) = k.bytes();
                Ret::Token(self.find(*role, &id, &ctx, true))
            }
            Op::NewSession(role, spec) => self.new_session(*role, spec),
            Op::Flush(at) => {
                let t = match at {
                    FlushAt::Delta(d) => self.now.saturating_add_signed(i64::from(*d)),
                    FlushAt::Max => u64::MAX,
                };
                Ret::Count(self.flush(t))
            }
            Op::FlushAll => Ret::Count(self.flush_all()),
            Op::SetMode(bits) => {
                let old = self.mode;
                self.mode = CacheMode::from_bits_truncate(*bits);
                Ret::Mode(old)
            }
            Op::SetSizeLimit(n) => {
                // Shrinking evicts nothing now; the next add does.
                let old = self.limit;
                self.limit = *n;
                Ret::Limit(old)
            }
            Op::Advance(d) => {
                self.now += d;
                Ret::None
            }
            Op::Started(role) => {
                match role {
                    Role::Server => self.stats.accept += 1,
                    Role::Client => self.stats.connect += 1,
                }
                Ret::None
            }
            Op::Completed(role, n) => {
                self.completed(*role, *n);
                Ret::None
            }
            Op::NewReturns(b) => {
                self.new_returns = *b;
                Ret::None
            }
            Op::ExtDeleteOnRemove(b) => {
                self.delete_on_remove = *b;
                Ret::None
            }
            Op::ExtPut(i, id) => {
                if let Some(t) = self.pick(i) {
                    self.ext.insert(id_bytes(*id), t);
                }
                Ret::None
            }
        }
    }

    fn take_log(&mut self) -> CallbackLog {
        let mut log = std::mem::take(&mut self.log);
        log.remove.sort_unstable();
        log
    }

    fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.number = self.entries.len() as u64;
        s
    }

    fn contents(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self
            .entries
            .values()
            .map(|e| (e.token, self.objs[e.token as usize].time))
            .collect();
        v.sort_unstable();
        v
    }

    fn objects(&self) -> Vec<(u64, bool)> {
        self.objs.iter().map(|o| (o.time, o.resumable)).collect()
    }

    /// The model's own invariants: entries are filed under their object's id and expiry.
    fn check(&self) -> Result<(), TestCaseError> {
        for (id, e) in &self.entries {
            let o = &self.objs[e.token as usize];
            prop_assert_eq!(&o.id, id, "model: entry under a foreign id");
            prop_assert_eq!(o.expiry(), e.expiry, "model: stale expiry");
        }
        Ok(())
    }
}

// ----- running a case -----------------------------------------------------------------------------

fn compare(step: usize, op: &Op, engine: &Engine, model: &Model) -> Result<(), TestCaseError> {
    model.check()?;
    let ctx = format!("after step {step} ({op:?})");
    prop_assert_eq!(engine.cache.stats(), model.stats(), "stats {}", ctx);
    prop_assert_eq!(engine.cache.len(), model.entries.len(), "len {}", ctx);
    prop_assert_eq!(engine.contents(), model.contents(), "contents {}", ctx);
    prop_assert_eq!(
        engine.objects(),
        model.objects(),
        "objects (time, resumable) {}",
        ctx
    );
    prop_assert_eq!(engine.ext_map(), model.ext.clone(), "external map {}", ctx);
    prop_assert_eq!(engine.cache.mode(), model.mode, "mode {}", ctx);
    prop_assert_eq!(engine.cache.size_limit(), model.limit, "size limit {}", ctx);
    Ok(())
}

/// What the engine returned and what its callbacks saw, step by step.
type Trace = Vec<(Ret, CallbackLog)>;

fn run(limit: usize, ops: &[Op], shards: Option<usize>) -> Result<Trace, TestCaseError> {
    let mut engine = Engine::new(limit, shards);
    let mut model = Model::new(limit);
    let mut trace = Trace::new();
    for (step, op) in ops.iter().enumerate() {
        let got = engine.apply(op);
        let want = model.apply(op);
        prop_assert_eq!(&got, &want, "return value at step {} ({:?})", step, op);
        let (got_log, want_log) = (engine.take_log(), model.take_log());
        prop_assert_eq!(&got_log, &want_log, "callbacks at step {} ({:?})", step, op);
        compare(step, op, &engine, &model)?;
        trace.push((got, got_log));
    }
    // Dropping the cache calls the remove callback once for each cached session.
    let Engine {
        cache, ext, pool, ..
    } = engine;
    drop(cache);
    let mut removed = std::mem::take(&mut lock(&ext).log.remove);
    removed.sort_unstable();
    let mut want: Vec<u64> = model.entries.values().map(|e| e.token).collect();
    want.sort_unstable();
    prop_assert_eq!(removed, want.clone(), "remove callbacks on drop");
    for t in want {
        prop_assert!(
            !pool[t as usize].is_resumable(),
            "dropped session {} still resumable",
            t
        );
    }
    Ok(trace)
}

/// Cases per property: 256, or `MODEL_CASES` (`scripts/test.sh` runs fewer under valgrind,
/// which is some thirty times slower).
fn cases() -> u32 {
    std::env::var("MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The engine, with one shard and with the default number, behaves as the model does.
    #[test]
    fn engine_matches_model(limit in 0usize..=5, ops in vec(op(), 1..80)) {
        run(limit, &ops, Some(1))?;
        run(limit, &ops, None)?;
    }
}

// ----- fixed sequences, so that the rarer paths are always exercised -----------------------------

fn spec(id: u8, dt: i8, timeout: u64) -> ObjSpec {
    ObjSpec {
        id,
        ctx: 0,
        dt,
        timeout,
        far_future: false,
    }
}

/// Runs a fixed sequence against the model with 1, 4 and the default number of shards, and
/// returns the trace (the same for all) for the test's own, model-independent assertions.
fn run_fixed(limit: usize, ops: &[Op]) -> Trace {
    let mut traces = [Some(1), Some(4), None].map(|shards| match run(limit, ops, shards) {
        Ok(trace) => trace,
        Err(e) => panic!("shards {shards:?}: {e}"),
    });
    std::mem::take(&mut traces[0])
}

fn removed(trace: &Trace, step: usize) -> &[u64] {
    &trace[step].1.remove
}

fn got(trace: &Trace, step: usize) -> &Ret {
    &trace[step].0
}

/// Every 255 completed handshakes flush the expired sessions; NO_AUTO_CLEAR stops that.
#[test]
fn auto_flush_every_255_handshakes() {
    let mut ops: Vec<Op> = (1..=5).map(|id| Op::AddNew(spec(id, -3, 1))).collect();
    ops.push(Op::AddNew(spec(6, 0, 5)));
    ops.extend([
        Op::Completed(Role::Server, 254),
        Op::Completed(Role::Client, 255),
        Op::Completed(Role::Server, 1),
        Op::AddNew(spec(1, -3, 1)),
        Op::SetMode(CacheMode::SERVER.bits() | CacheMode::NO_AUTO_CLEAR.bits()),
        Op::Completed(Role::Server, 255),
        Op::SetMode(CacheMode::SERVER.bits()),
        Op::Completed(Role::Server, 255),
    ]);
    let trace = run_fixed(0, &ops);
    assert!(
        removed(&trace, 6).is_empty(),
        "flushed before the 255th handshake"
    );
    assert_eq!(
        removed(&trace, 8),
        [0, 1, 2, 3, 4],
        "the 255th handshake flushes"
    );
    assert!(removed(&trace, 11).is_empty(), "NO_AUTO_CLEAR flushed");
    assert_eq!(removed(&trace, 13), [6], "the 765th handshake flushes");
}

/// Shrinking the limit evicts nothing until the next add, which evicts down to the limit.
#[test]
fn shrinking_evicts_at_the_next_add() {
    let mut ops: Vec<Op> = (1..=5)
        .map(|id| Op::AddNew(spec(id, 0, u64::from(id))))
        .collect();
    ops.extend([
        Op::SetSizeLimit(2),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::AddNew(spec(6, 0, 0)),
        Op::SetSizeLimit(1),
        Op::AddNew(spec(6, 0, 9)),
        Op::AddNew(spec(2, 0, 9)),
    ]);
    let trace = run_fixed(0, &ops);
    assert_eq!(got(&trace, 5), &Ret::Limit(0));
    assert!(removed(&trace, 5).is_empty(), "the shrink itself evicted");
    assert_eq!(got(&trace, 6), &Ret::Token(Some(0)));
    // Expiries 1001..=1005 and 1000 for the new one: the four soonest go, the newcomer stays.
    assert_eq!(removed(&trace, 7), [0, 1, 2, 3]);
    // A replacement over the shrunk limit evicts down to it; the old object with the same id
    // (expiry 1000) is the soonest, so it goes by eviction, then the next soonest.
    assert_eq!(removed(&trace, 9), [4, 5]);
    assert_eq!(removed(&trace, 10), [6]);
}

/// The external cache: filled by the new callback, asked after a miss, copied in, validated.
#[test]
fn external_cache_round_trip() {
    let no_internal = CacheMode::SERVER.bits() | CacheMode::NO_INTERNAL.bits();
    let ops = vec![
        Op::SetMode(no_internal),
        Op::NewSession(Role::Server, spec(1, 0, 5)),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 1 }),
        Op::SetMode(CacheMode::SERVER.bits() | CacheMode::NO_INTERNAL_LOOKUP.bits()),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::SetMode(CacheMode::OFF.bits()),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::Advance(6),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::SetMode(CacheMode::SERVER.bits()),
        Op::NewSession(Role::Server, spec(2, 0, 5)),
        Op::ExtDeleteOnRemove(true),
        Op::Take(Role::Server, KeySpec::Valid { id: 2, ctx: 0 }),
        Op::ExtPut(Index(0), 3),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 3, ctx: 0 }),
        Op::Lookup(Role::Server, KeySpec::Empty),
        Op::Lookup(Role::Server, KeySpec::TooLong { id: 2 }),
    ];
    let trace = run_fixed(3, &ops);
    let asked = |step: usize| trace[step].1.get.len();
    assert_eq!((got(&trace, 2), asked(2)), (&Ret::Token(Some(0)), 1));
    assert_eq!(
        (got(&trace, 3), asked(3)),
        (&Ret::Token(None), 1),
        "context mismatch"
    );
    assert_eq!((got(&trace, 5), asked(5)), (&Ret::Token(Some(0)), 1));
    assert_eq!(
        (got(&trace, 7), asked(7)),
        (&Ret::Token(Some(0)), 0),
        "copied in at step 5"
    );
    assert_eq!(
        (got(&trace, 9), removed(&trace, 9)),
        (&Ret::Token(None), &[0][..]),
        "expired"
    );
    assert_eq!(got(&trace, 13), &Ret::Token(Some(1)));
    assert_eq!(
        got(&trace, 15),
        &Ret::Token(None),
        "a session filed under a foreign id"
    );
    for step in [16, 17] {
        assert_eq!(
            (got(&trace, step), asked(step)),
            (&Ret::Token(None), 0),
            "hostile key"
        );
    }
}

/// UPDATE_TIME re-adding the identical session refiles it as the newest among equal expiries,
/// as OpenSSL's `SSL_SESSION_list_add` does: here id 2 (inserted after id 1, but before id 1
/// was refreshed) is evicted, not id 1. The spec's "oldest inserted" leaves this case open.
#[test]
fn update_time_refresh_counts_as_newest_for_ties() {
    let update_time = CacheMode::SERVER.bits() | CacheMode::UPDATE_TIME.bits();
    let ops = vec![
        Op::SetMode(update_time),
        Op::AddNew(spec(1, 0, 2)),
        Op::Advance(1),
        Op::AddNew(spec(2, 0, 2)),
        Op::Add(Index(0)),
        Op::SetSizeLimit(2),
        Op::AddNew(spec(3, 0, 5)),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 1, ctx: 0 }),
        Op::Lookup(Role::Server, KeySpec::Valid { id: 2, ctx: 0 }),
    ];
    let trace = run_fixed(0, &ops);
    assert_eq!(removed(&trace, 6), [1]);
    assert_eq!(got(&trace, 7), &Ret::Token(Some(0)));
    assert_eq!(got(&trace, 8), &Ret::Token(None));
}
