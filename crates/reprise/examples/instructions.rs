//! A fixed workload to count the engine's instructions per operation under callgrind, which
//! gives the same count on a busy machine as on a quiet one (criterion's times do not):
//!
//! ```sh
//! cargo build --release -p reprise --example instructions
//! for w in none lookup evict tls13; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/instructions $w 2>&1 | grep Collected
//! done
//! ```
//!
//! Every run first fills a cache of 50,000 sessions (`none` stops there); subtract its count,
//! then divide by the operations: `lookup` 200,000 lookups, `evict` 100,000 puts into the full
//! cache, `tls13` 50,000 times a take and two puts. A second argument `spare` gives each payload
//! vector spare capacity (128 bytes for 100), as a TLS stack's encoder leaves it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use reprise::{ManualClock, Role, SessionCache, SessionKey};

// The benchmarks' ids, so that these counts and the benchmarks' times share their keys.
#[path = "../benches/common/mod.rs"]
mod common;
use common::id;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().map_or("none", String::as_str);
    let capacity = if args.iter().any(|a| a == "spare") {
        128
    } else {
        100
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let cache: SessionCache = SessionCache::builder()
        .size_limit(50_000)
        .timeout_secs(300)
        .clock(clock)
        .build();
    let put = |n: u64| {
        let mut payload = Vec::with_capacity(capacity);
        payload.extend_from_slice(&[0xa5; 100]);
        let s = cache
            .session(&id(n), payload)
            .sid_ctx(b"bench")
            .build()
            .unwrap();
        cache.new_session(Role::Server, s);
    };
    let key = |n: u64| id(n);
    for n in 0..50_000 {
        put(n);
    }
    let mut found = 0u64;
    match workload {
        "lookup" => {
            for r in 0..200_000u64 {
                let k = key((r * 7919) % 50_000);
                found += u64::from(
                    cache
                        .lookup(Role::Server, SessionKey::new(&k, b"bench"))
                        .is_some(),
                );
            }
        }
        "evict" => (50_000..150_000).for_each(put),
        "tls13" => {
            for r in 0..50_000u64 {
                let k = key(r);
                found += u64::from(
                    cache
                        .take(Role::Server, SessionKey::new(&k, b"bench"))
                        .is_some(),
                );
                put(50_000 + 2 * r);
                put(50_001 + 2 * r);
            }
        }
        _ => {}
    }
    println!("{workload}: {found} found, {} cached", cache.len());
}
