//! Interleaving tests: the exact size limit, cross-shard eviction and single-use takes, each
//! run under shuttle's deterministic schedulers (random, then PCT) with fixed seeds.
//!
//! Built only with the `shuttle` feature, which swaps the engine's locks and atomics for
//! shuttle's (`shim.rs`), so that shuttle decides which thread runs at every lock and atomic
//! the engine touches. Run them with
//! `cargo test -p reprise --features shuttle --lib shuttle_tests` (the engine's other tests
//! need the real locks). A failure prints the schedule; `shuttle::replay` runs it again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Config, MaxSteps, Runner};

use crate::shim::thread;
use crate::{
    CacheBuilder, CacheMode, Fetched, ManualClock, Removal, Role, Session, SessionCache,
    SessionKey, SharedSession, Tier,
};

/// Schedules explored per scheduler and test; the whole run stays within seconds.
const ITERATIONS: usize = 1_000;

/// Preemptions PCT places in each schedule: enough for a remove between an add's scan of the
/// heads and its lock of the victim's shard, and another elsewhere.
const PCT_DEPTH: usize = 3;

/// Runs `f` under the random scheduler, then under PCT, each from a fixed seed.
fn explore(seed: u64, f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let mut config = Config::new();
    // The engine's Relaxed and AcqRel orderings are explored as SeqCst: known, and not news.
    config.silence_warnings = true;
    // Every schedule of these tests ends in a few thousand steps; a livelock fails.
    config.max_steps = MaxSteps::FailAfter(200_000);
    let g = Arc::clone(&f);
    Runner::new(
        RandomScheduler::new_from_seed(seed, ITERATIONS),
        config.clone(),
    )
    .run(move || g());
    Runner::new(
        PctScheduler::new_from_seed(seed, PCT_DEPTH, ITERATIONS),
        config,
    )
    .run(move || f());
}

/// What the remove callback saw: each session's first id byte and why it left.
type Log = Arc<Mutex<Vec<(u8, Removal)>>>;

fn entries(log: &Log) -> Vec<(u8, Removal)> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A cache of `shards` shards holding at most `limit` sessions, at time 1,000, whose remove
/// callback writes to the returned log. The log's lock is the standard library's: the callback
/// holds it across no shuttle operation, so it never blocks.
fn cache(shards: usize, limit: usize, mode: CacheMode) -> (Arc<SessionCache<()>>, Log) {
    let log: Log = Arc::default();
    let writer = Arc::clone(&log);
    let cache = CacheBuilder::<()>::new()
        .clock(Arc::new(ManualClock::new(1_000)))
        .shards(shards)
        .size_limit(limit)
        .mode(mode)
        .remove_session_callback(Arc::new(move |_, s, why| {
            writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((s.id().as_bytes()[0], why));
        }))
        .build();
    (Arc::new(cache), log)
}

/// A session with the 32-byte id `[id; 32]`, made at 1,000 and expiring at `expiry`.
fn session(id: u8, expiry: u64) -> SharedSession<()> {
    match Session::builder(&[id; 32], ())
        .time(1_000)
        .timeout_secs(expiry - 1_000)
        .build()
    {
        Ok(s) => SharedSession::from(s),
        Err(e) => panic!("{e}"),
    }
}

fn key(id: &[u8; 32]) -> SessionKey<'_> {
    SessionKey::new(id, b"")
}

/// The first id byte, from `from` on, whose session goes to shard `shard`.
fn id_on_shard(cache: &SessionCache<()>, shard: usize, from: u8) -> u8 {
    match (from..=u8::MAX).find(|&id| cache.shard_of(&[id; 32]) == shard) {
        Some(id) => id,
        None => panic!("no id from {from} on shard {shard}"),
    }
}

fn join(threads: Vec<thread::JoinHandle<()>>) {
    for t in threads {
        if t.join().is_err() {
            panic!("a thread panicked");
        }
    }
}

/// The ids the cache holds, by first byte.
fn held(cache: &SessionCache<()>) -> BTreeSet<u8> {
    cache
        .sessions()
        .iter()
        .map(|s| s.id().as_bytes()[0])
        .collect()
}

/// Three threads add two sessions each into a cache of three: the count never exceeds the
/// limit, whoever looks, and once they are done it is exact, with one eviction per session
/// over the limit.
#[test]
fn concurrent_adds_never_exceed_the_limit() {
    const LIMIT: usize = 3;
    explore(1, || {
        let (cache, log) = cache(4, LIMIT, CacheMode::SERVER);
        let threads = (0..3u8)
            .map(|t| {
                let cache = Arc::clone(&cache);
                thread::spawn(move || {
                    for i in 0..2u8 {
                        let id = 1 + 2 * t + i;
                        assert!(cache.add(&session(id, 1_010 + u64::from(id))));
                        assert!(cache.len() <= LIMIT);
                    }
                })
            })
            .collect();
        for _ in 0..4 {
            assert!(cache.len() <= LIMIT, "{} over {LIMIT}", cache.len());
            thread::yield_now();
        }
        join(threads);
        cache.check_invariants();
        assert_eq!(cache.len(), LIMIT);
        let kept = held(&cache);
        assert_eq!(kept.len(), LIMIT);
        let log = entries(&log);
        assert_eq!(log.len(), 6 - LIMIT);
        assert_eq!(cache.stats().cache_full, (6 - LIMIT) as u64);
        // Each session is either kept or evicted, once.
        let mut seen = kept.clone();
        for (id, why) in log {
            assert_eq!(why, Removal::Evicted);
            assert!(
                seen.insert(id),
                "session {id} evicted twice, or evicted and kept"
            );
        }
        assert_eq!(seen, (1..=6).collect());
    });
}

/// What the third thread does while two adds evict across shards.
#[derive(Clone, Copy, Debug)]
enum Meanwhile {
    Remove,
    Take,
    Flush,
}

/// Two shards: A holds the sessions expiring at 1,010 and 1,030, B the one at 1,020. Two adds,
/// each into the shard that does not hold its victim, must evict across shards while a third
/// thread removes, takes or flushes the soonest (1,010). No schedule deadlocks (shuttle fails
/// a schedule in which every thread waits for another), and whatever
/// the order, the victims are the soonest to expire: the session at 1,030 outlives the one at
/// 1,020, even when the one at 1,010 leaves (or another add evicts it) between an add's scan
/// of the heads and its lock of the victim's shard.
#[test]
fn cross_shard_eviction_picks_the_soonest_despite_removals() {
    for (seed, meanwhile) in [
        (2, Meanwhile::Remove),
        (3, Meanwhile::Take),
        (4, Meanwhile::Flush),
    ] {
        explore(seed, move || {
            let (cache, log) = cache(2, 3, CacheMode::SERVER);
            let a1 = id_on_shard(&cache, 0, 1);
            let a3 = id_on_shard(&cache, 0, a1 + 1);
            let b2 = id_on_shard(&cache, 1, 1);
            for (id, expiry) in [(a1, 1_010), (b2, 1_020), (a3, 1_030)] {
                assert!(cache.add(&session(id, expiry)));
            }
            // The new sessions expire last, each in the other shard than its victim's.
            let n1 = id_on_shard(&cache, 1, a3.max(b2) + 1);
            let n2 = id_on_shard(&cache, 0, n1 + 1);
            let adds = [n1, n2].map(|id| {
                let cache = Arc::clone(&cache);
                thread::spawn(move || assert!(cache.add(&session(id, 1_100))))
            });
            let other = {
                let cache = Arc::clone(&cache);
                thread::spawn(move || match meanwhile {
                    Meanwhile::Remove => {
                        cache.remove_key(key(&[a1; 32]));
                    }
                    Meanwhile::Take => {
                        if let Some(s) = cache.take(Role::Server, key(&[a1; 32])) {
                            assert_eq!(s.id().as_bytes(), &[a1; 32]);
                        }
                    }
                    Meanwhile::Flush => {
                        assert!(cache.flush(1_015) <= 1);
                    }
                })
            };
            join(adds.into_iter().chain([other]).collect());
            cache.check_invariants();
            let kept = held(&cache);
            let log = entries(&log);
            let context = format!("{meanwhile:?}: a1 {a1}, b2 {b2}, a3 {a3}; removed {log:?}");
            // The victims are the soonest: b2 always goes, and a3 never while b2 stays. The
            // new sessions expire last, and are never victims.
            assert!(
                kept == BTreeSet::from([a3, n1, n2]) || kept == BTreeSet::from([n1, n2]),
                "kept {kept:?}; {context}"
            );
            assert!(log.contains(&(b2, Removal::Evicted)), "{context}");
            // Each session left once at most: a1 once (evicted, or by the third thread), and
            // a3 only when an add that found the cache full evicted after the third thread made
            // room (the cache is then one under its limit, never over it).
            for id in [a1, b2, a3] {
                let left = log.iter().filter(|(i, _)| *i == id).count();
                assert_eq!(left, usize::from(!kept.contains(&id)), "{id}; {context}");
            }
            assert_eq!(log.len() + kept.len(), 5, "{context}");
        });
    }
}

/// Four threads race for one TLS 1.3 ticket in the internal cache: three take it while the
/// fourth adds the same session again (a racing new-session). Exactly one take gets it, and
/// the ticket is never resumable after.
#[test]
fn an_internal_ticket_is_taken_exactly_once() {
    explore(5, || {
        let (cache, log) = cache(2, 0, CacheMode::SERVER);
        let ticket = session(7, 1_100);
        assert!(cache.add(&ticket));
        let wins = Arc::new(Mutex::new(0usize));
        let mut threads: Vec<_> = (0..3)
            .map(|_| {
                let (cache, wins) = (Arc::clone(&cache), Arc::clone(&wins));
                thread::spawn(move || {
                    if cache.take(Role::Server, key(&[7; 32])).is_some() {
                        *wins.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                    }
                })
            })
            .collect();
        threads.push({
            let (cache, ticket) = (Arc::clone(&cache), SharedSession::clone(&ticket));
            thread::spawn(move || {
                cache.add(&ticket);
            })
        });
        join(threads);
        cache.check_invariants();
        assert_eq!(*wins.lock().unwrap_or_else(PoisonError::into_inner), 1);
        assert!(!ticket.is_resumable());
        assert!(cache.take(Role::Server, key(&[7; 32])).is_none());
        let taken = entries(&log)
            .into_iter()
            .filter(|&(_, why)| why == Removal::Taken)
            .count();
        assert_eq!(taken, 1);
    });
}

/// An external cache hands the same ticket to every thread that asks (the get callback), while
/// a fourth thread holds a copy confirmed elsewhere (`take_confirmed`): exactly one of the four
/// resumes it.
#[test]
fn an_external_ticket_is_claimed_exactly_once() {
    explore(6, || {
        let (cache, _log) = cache(2, 0, CacheMode::SERVER | CacheMode::NO_INTERNAL_LOOKUP);
        let ticket = session(9, 1_100);
        let external = SharedSession::clone(&ticket);
        cache.set_get_session_callback(Some(Arc::new(
            move |_: &SessionCache<()>, _: &SessionKey<'_>| Some(SharedSession::clone(&external)),
        )));
        let wins = Arc::new(Mutex::new(0usize));
        let threads = (0..4)
            .map(|t| {
                let (cache, wins, ticket) = (
                    Arc::clone(&cache),
                    Arc::clone(&wins),
                    SharedSession::clone(&ticket),
                );
                thread::spawn(move || {
                    let got = if t == 0 {
                        cache.take_confirmed(key(&[9; 32]), ticket)
                    } else {
                        cache.take(Role::Server, key(&[9; 32]))
                    };
                    if got.is_some() {
                        *wins.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                    }
                })
            })
            .collect();
        join(threads);
        cache.check_invariants();
        assert_eq!(*wins.lock().unwrap_or_else(PoisonError::into_inner), 1);
        assert!(!ticket.is_resumable());
    });
}

/// A tier that keeps sessions in a map behind a lock that shuttle schedules around, standing in
/// for a disk or a Redis: its take is atomic. A tier that `copies` hands out a session of its
/// own, as a tier that decodes what it stored does; otherwise the very object it was given.
struct MapTier {
    map: crate::shim::Mutex<HashMap<Vec<u8>, SharedSession<()>>>,
    copies: bool,
}

impl MapTier {
    fn new(copies: bool) -> Arc<Self> {
        Arc::new(Self {
            map: crate::shim::Mutex::new(HashMap::new()),
            copies,
        })
    }

    fn holds(&self, id: &[u8]) -> bool {
        self.map.lock().contains_key(id)
    }

    fn hand_out(&self, s: Option<SharedSession<()>>) -> Fetched<()> {
        let Some(s) = s else {
            return Fetched::Miss;
        };
        if !self.copies {
            return Fetched::Hit(s);
        }
        match Session::builder(s.id().as_bytes(), ())
            .sid_ctx(s.sid_ctx().as_bytes())
            .version(s.version())
            .time(s.time())
            .timeout_secs(s.timeout_secs())
            .build()
        {
            Ok(copy) => Fetched::Hit(SharedSession::from(copy)),
            Err(e) => panic!("{e}"),
        }
    }
}

impl Tier<()> for MapTier {
    fn name(&self) -> &str {
        "map"
    }
    fn store(&self, session: &SharedSession<()>) {
        self.map.lock().insert(
            session.id().as_bytes().to_vec(),
            SharedSession::clone(session),
        );
    }
    fn fetch(&self, key: SessionKey<'_>) -> Fetched<()> {
        let found = self.map.lock().get(key.id).cloned();
        self.hand_out(found)
    }
    fn take(&self, key: SessionKey<'_>) -> Fetched<()> {
        let found = self.map.lock().remove(key.id);
        self.hand_out(found)
    }
    fn remove(&self, session: &SharedSession<()>, _why: Removal) {
        self.map.lock().remove(session.id().as_bytes());
    }
}

/// A ticket stored in memory (or not, under `NO_INTERNAL_STORE`) and in a stack of two tiers,
/// taken by three threads at once: the last tier decides, one take at most resumes it, and
/// afterwards no copy is left anywhere. When the tiers hand out copies of their own, as tiers
/// that decode do, exactly one take resumes it.
///
/// When a tier hands out the very object memory holds, a take can lose it: a take the
/// authority refused drops memory's copy and marks that object not resumable, between the
/// winner's take from the authority and its claim. No take resumes the ticket then; single
/// use still holds.
#[test]
fn a_ticket_in_a_stack_of_tiers_is_taken_at_most_once() {
    for (seed, mode, copies) in [
        (7, CacheMode::SERVER, true),
        (8, CacheMode::SERVER | CacheMode::NO_INTERNAL_STORE, true),
        (9, CacheMode::SERVER, false),
    ] {
        explore(seed, move || {
            let (cache, _log) = cache(2, 0, mode);
            let (lower, authority) = (MapTier::new(copies), MapTier::new(copies));
            cache.attach(lower.clone());
            cache.attach(authority.clone());
            let ticket = match Session::builder(&[5; 32], ())
                .time(1_000)
                .timeout_secs(100)
                .build()
            {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            };
            assert!(cache.new_session(Role::Server, ticket).stored_in_tiers);
            let wins = Arc::new(Mutex::new(0usize));
            let threads = (0..3)
                .map(|_| {
                    let (cache, wins) = (Arc::clone(&cache), Arc::clone(&wins));
                    thread::spawn(move || {
                        if cache.take(Role::Server, key(&[5; 32])).is_some() {
                            *wins.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                        }
                    })
                })
                .collect();
            join(threads);
            cache.check_invariants();
            let wins = *wins.lock().unwrap_or_else(PoisonError::into_inner);
            let context = format!("{mode:?}, copies {copies}");
            if copies {
                assert_eq!(wins, 1, "{context}");
            } else {
                assert!(wins <= 1, "{context}");
            }
            assert!(
                cache.peek(&[5; 32]).is_none(),
                "{context}: memory kept a copy"
            );
            assert!(
                !lower.holds(&[5; 32]),
                "{context}: the lower tier kept a copy"
            );
            assert!(
                !authority.holds(&[5; 32]),
                "{context}: the authority kept it"
            );
        });
    }
}
