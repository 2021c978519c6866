//! Engine benchmarks against baselines measured in the same run: rustls's
//! `ServerSessionMemoryCache`, quick_cache (`hot_allocation(0.0)`), moka (with a TTL) and a
//! `Mutex<HashMap>`. Each benchmark also prints each structure's hit rate: a structure that
//! drops live sessions is not faster, it is broken for this job.
//!
//! `cargo bench -p reprise --bench engine`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{build, id, payload, Rng, Store, NAMES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reprise::{ManualClock, Session, SessionCache, SharedSession};

const LIVE: usize = 100_000;
const TLS13_CAPACITY: usize = 20_480;

/// Hits over lookups, kept per structure while a benchmark runs.
#[derive(Default)]
struct HitRate {
    hits: AtomicU64,
    lookups: AtomicU64,
    /// Lookups of sessions that newer ones may have evicted (not counted in `lookups`).
    evicted: AtomicU64,
}

impl HitRate {
    fn record(&self, hit: bool) {
        self.add(u64::from(hit), 1, 0);
    }
    /// Adds a thread's counts, once per batch: counting every lookup in these shared atomics
    /// would make the threads contend on them, and slow every structure alike.
    fn add(&self, hits: u64, lookups: u64, evicted: u64) {
        self.lookups.fetch_add(lookups, Ordering::Relaxed);
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
    }
    fn report(&self, what: &str) {
        let l = self.lookups.load(Ordering::Relaxed);
        if l == 0 {
            return; // Not run (filtered out).
        }
        let h = self.hits.load(Ordering::Relaxed);
        let e = self.evicted.load(Ordering::Relaxed);
        let note = if e > 0 {
            format!("; not counted: {e} of sessions newer ones may have evicted")
        } else {
            String::new()
        };
        eprintln!(
            "  hit rate {what:<40} {:>7.3} % ({h} of {l}{note})",
            100.0 * h as f64 / l as f64
        );
    }
}

fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut counts = vec![1, 2, cores];
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// A thread's last claimed id, on a cache line of its own.
#[repr(align(128))]
struct Claim(AtomicU64);

/// 90 % lookups of live sessions, 10 % inserts of new ones (each evicting the oldest), over
/// 100,000 sessions of 32-byte ids and 100-byte payloads. Ids are numbered in claim order across
/// all threads; a lookup picks one of the 90,000 ids below every thread's last claim: a thread
/// claims an id only once its previous insert has returned, so those sessions are all in the
/// store, and a cache that keeps the newest 100,000 holds them.
///
/// A miss counts against the hit rate only when the cache had to hold the session: fewer than
/// 100,000 sessions can have been inserted after it (the ids claimed since, plus one in flight
/// per other thread). A thread descheduled for long enough in the middle of a lookup would
/// otherwise see a session legitimately evicted by the others' inserts; such lookups are
/// reported, not counted.
fn mixed(c: &mut Criterion) {
    const WINDOW: u64 = (LIVE as u64) * 9 / 10;
    for threads in thread_counts() {
        let mut group = c.benchmark_group(format!("mixed/{threads}-threads"));
        group.throughput(Throughput::Elements(1));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        for name in NAMES {
            // Built and filled only when the benchmark runs (a filter may skip it).
            let mut setup: Option<Arc<dyn Store>> = None;
            let next = Arc::new(AtomicU64::new(LIVE as u64));
            let rate = Arc::new(HitRate::default());
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                let store = setup
                    .get_or_insert_with(|| {
                        let store = build(name, LIVE);
                        for n in 0..LIVE as u64 {
                            store.put(&id(n));
                        }
                        store
                    })
                    .clone();
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    // Every insert of the last batch has returned: every id below `next` is in.
                    let claims: Arc<[Claim]> = (0..threads)
                        .map(|_| Claim(AtomicU64::new(next.load(Ordering::Relaxed))))
                        .collect();
                    let start = Instant::now();
                    std::thread::scope(|scope| {
                        for t in 0..threads {
                            let (store, next, rate) = (store.clone(), next.clone(), rate.clone());
                            let claims = claims.clone();
                            scope.spawn(move || {
                                let mut rng = Rng(0x1234_5678 ^ ((t as u64 + 1) << 32) ^ iters);
                                let (mut hits, mut lookups, mut evicted) = (0, 0, 0);
                                let others = threads as u64 - 1;
                                for _ in 0..per {
                                    if rng.below(10) == 0 {
                                        let n = next.fetch_add(1, Ordering::Relaxed);
                                        claims[t].0.store(n, Ordering::Release);
                                        store.put(&id(n));
                                        continue;
                                    }
                                    let done = claims
                                        .iter()
                                        .map(|c| c.0.load(Ordering::Acquire))
                                        .min()
                                        .unwrap_or(0);
                                    let x = done - 1 - rng.below(WINDOW);
                                    if store.get(&id(x)) {
                                        hits += 1;
                                        lookups += 1;
                                    } else if next.load(Ordering::Relaxed) - 1 - x + others
                                        < LIVE as u64
                                    {
                                        lookups += 1;
                                    } else {
                                        evicted += 1;
                                    }
                                }
                                rate.add(hits, lookups, evicted);
                            });
                        }
                    });
                    start.elapsed()
                });
            });
            rate.report(&format!("mixed/{threads}-threads/{name}"));
        }
        group.finish();
    }
}

/// The TLS 1.3 pattern at capacity 20480: per handshake, one take (of the newest ticket the
/// client holds) and two puts (the new tickets).
fn tls13(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls13-handshake");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for name in NAMES {
        let mut tickets: Vec<u64> = Vec::new();
        let mut next = 0u64;
        let mut setup: Option<Arc<dyn Store>> = None;
        let rate = HitRate::default();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let store = setup
                .get_or_insert_with(|| {
                    let store = build(name, TLS13_CAPACITY);
                    for _ in 0..TLS13_CAPACITY {
                        store.put(&id(next));
                        tickets.push(next);
                        next += 1;
                    }
                    store
                })
                .clone();
            b.iter(|| {
                let ticket = tickets.pop().unwrap_or(0);
                rate.record(store.take(&id(ticket)));
                for _ in 0..2 {
                    store.put(&id(next));
                    tickets.push(next);
                    next += 1;
                }
                if tickets.len() > 4 * TLS13_CAPACITY {
                    tickets.drain(..2 * TLS13_CAPACITY);
                }
            });
        });
        rate.report(&format!("tls13-handshake/{name}"));
    }
    group.finish();
}

/// One thread's clients in [`tls13_threads`]: the tickets they hold, newest last, and the next
/// of the thread's ids (thread `t` of `n` uses the ids `t`, `t + n`, `t + 2n`...).
struct Lane {
    tickets: Vec<u64>,
    next: u64,
}

impl Lane {
    fn new_ticket(&mut self, threads: u64) -> u64 {
        let n = self.next;
        self.next += threads;
        self.tickets.push(n);
        n
    }
}

/// The TLS 1.3 pattern of [`tls13`] on more than one thread, over one cache of capacity
/// 20480: each thread's handshakes take the newest of its own clients' tickets and put two.
fn tls13_threads(c: &mut Criterion) {
    for threads in thread_counts().into_iter().filter(|&t| t > 1) {
        let mut group = c.benchmark_group(format!("tls13-handshake/{threads}-threads"));
        group.throughput(Throughput::Elements(1));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let n = threads as u64;
        for name in NAMES {
            let mut setup: Option<(Arc<dyn Store>, Vec<Lane>)> = None;
            let rate = Arc::new(HitRate::default());
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                let (store, lanes) = setup.get_or_insert_with(|| {
                    let store = build(name, TLS13_CAPACITY);
                    let mut lanes: Vec<Lane> = (0..n)
                        .map(|t| Lane {
                            tickets: Vec::new(),
                            next: t,
                        })
                        .collect();
                    for i in 0..TLS13_CAPACITY {
                        store.put(&id(lanes[i % threads].new_ticket(n)));
                    }
                    (store, lanes)
                });
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(n);
                    let start = Instant::now();
                    std::thread::scope(|scope| {
                        for lane in lanes.iter_mut() {
                            let (store, rate) = (store.clone(), rate.clone());
                            scope.spawn(move || {
                                let mut hits = 0;
                                for _ in 0..per {
                                    let ticket = lane.tickets.pop().unwrap_or(0);
                                    hits += u64::from(store.take(&id(ticket)));
                                    for _ in 0..2 {
                                        store.put(&id(lane.new_ticket(n)));
                                    }
                                    if lane.tickets.len() > 4 * TLS13_CAPACITY {
                                        lane.tickets.drain(..2 * TLS13_CAPACITY);
                                    }
                                }
                                rate.add(hits, per, 0);
                            });
                        }
                    });
                    start.elapsed()
                });
            });
            rate.report(&format!("tls13-handshake/{threads}-threads/{name}"));
        }
        group.finish();
    }
}

/// Flushing when 1 % of 1,000,000 sessions have expired: Reprise's expiry-ordered flush
/// against a full scan of the same sessions.
fn flush(c: &mut Criterion) {
    const TOTAL: u64 = 1_000_000;
    const EXPIRED: u64 = TOTAL / 100;
    let now = 1_700_000_000;
    let session = |n: u64, expired: bool| {
        let time = if expired { now - 1000 } else { now };
        SharedSession::from(
            Session::builder(&id(n), payload())
                .time(time)
                .timeout_secs(300)
                .build()
                .unwrap(),
        )
    };
    // The million live sessions, in the cache and in the map the full scan walks; built only
    // when one of the two benchmarks runs (a filter may skip both).
    let fill = || {
        let clock = Arc::new(ManualClock::new(now));
        let cache: SessionCache = SessionCache::builder().size_limit(0).clock(clock).build();
        for n in 0..TOTAL - EXPIRED {
            cache.add(&session(n, false));
        }
        let scan: std::collections::HashMap<[u8; 32], SharedSession> = cache
            .sessions()
            .into_iter()
            .map(|s| (*id_of(&s), s))
            .collect();
        (cache, scan)
    };
    let mut live = None;

    let mut group = c.benchmark_group("flush-1pct-of-1M");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let mut round = 0u64;
    group.bench_function("reprise", |b| {
        let (cache, _) = live.get_or_insert_with(fill);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                for n in 0..EXPIRED {
                    cache.add(&session((round << 32) | n, true));
                }
                let start = Instant::now();
                let removed = cache.flush(now);
                total += start.elapsed();
                assert_eq!(removed as u64, EXPIRED);
            }
            total
        });
    });
    group.bench_function("full-scan", |b| {
        let (_, scan) = live.get_or_insert_with(fill);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                for n in 0..EXPIRED {
                    let s = session((round << 32) | n, true);
                    scan.insert(*id_of(&s), s);
                }
                let start = Instant::now();
                let before = scan.len();
                scan.retain(|_, s| !s.is_expired_at(now));
                total += start.elapsed();
                assert_eq!((before - scan.len()) as u64, EXPIRED);
            }
            total
        });
    });
    group.finish();
}

fn id_of(s: &Session) -> &[u8; 32] {
    s.id().as_bytes().try_into().unwrap()
}

criterion_group!(benches, mixed, tls13, tls13_threads, flush);
criterion_main!(benches);
