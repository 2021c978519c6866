//! Memory per cached session at 1,000,000 sessions (32-byte ids, 100-byte payloads), measured
//! with a counting allocator, as the overhead beyond the id and the payload (132 bytes).
//!
//! `cargo bench -p reprise --bench memory`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::alloc::System;

use common::{build, id, NAMES, PAYLOAD_LEN};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SESSIONS: usize = 1_000_000;

fn main() {
    // `cargo bench` passes `--bench`; a filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!(
        "{:<16} {:>14} {:>16} {:>10}",
        "structure", "bytes/session", "overhead/session", "count"
    );
    for name in NAMES {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        // A fresh structure, built inside the measured region so that its tables count too.
        let region = Region::new(GLOBAL);
        let store = build(name, SESSIONS + 1);
        for n in 0..SESSIONS as u64 {
            store.put(&id(n));
        }
        let mut found = 0;
        for n in (0..SESSIONS as u64).step_by(1000) {
            found += usize::from(store.get(&id(n)));
        }
        let change = region.change();
        let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
        let per = net as f64 / SESSIONS as f64;
        println!(
            "{name:<16} {per:>14.1} {:>16.1} {:>10}",
            per - (32 + PAYLOAD_LEN) as f64,
            format!("{found}/{}", SESSIONS / 1000)
        );
        drop(store);
    }
}
