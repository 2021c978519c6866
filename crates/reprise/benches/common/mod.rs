//! The structures the benchmarks compare, behind one small interface: Reprise and its baselines
//! (rustls's memory cache, quick_cache, moka with a TTL, and a `Mutex<HashMap>`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise::{Role, SessionCache, SessionKey};
use rustls::server::StoresServerSessions;

/// The length of a payload in the benchmarks (a TLS 1.2 session encodes to about that).
pub const PAYLOAD_LEN: usize = 100;

/// The payload every session carries.
pub fn payload() -> Vec<u8> {
    vec![0xa5; PAYLOAD_LEN]
}

/// A session id from a number: 32 bytes, well spread.
pub fn id(n: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// What each structure must do for the benchmarks.
pub trait Store: Send + Sync {
    /// Stores a session.
    fn put(&self, id: &[u8; 32]);
    /// Looks a session up; whether it was found.
    fn get(&self, id: &[u8; 32]) -> bool;
    /// Takes a session out; whether it was found.
    fn take(&self, id: &[u8; 32]) -> bool;
}

/// Reprise's engine, as a server uses it.
pub struct Reprise(pub SessionCache);

impl Reprise {
    pub fn new(capacity: usize) -> Self {
        Reprise(
            SessionCache::builder()
                .size_limit(capacity)
                .timeout_secs(3600)
                .build(),
        )
    }
}

impl Store for Reprise {
    fn put(&self, id: &[u8; 32]) {
        let s = self
            .0
            .session(id, payload())
            .sid_ctx(b"bench")
            .build()
            .unwrap();
        self.0.new_session(Role::Server, s);
    }
    fn get(&self, id: &[u8; 32]) -> bool {
        self.0
            .lookup(Role::Server, SessionKey::new(id, b"bench"))
            .is_some()
    }
    fn take(&self, id: &[u8; 32]) -> bool {
        self.0
            .take(Role::Server, SessionKey::new(id, b"bench"))
            .is_some()
    }
}

/// rustls's `ServerSessionMemoryCache`.
pub struct RustlsMemory(pub Arc<rustls::server::ServerSessionMemoryCache>);

impl RustlsMemory {
    pub fn new(capacity: usize) -> Self {
        RustlsMemory(rustls::server::ServerSessionMemoryCache::new(capacity))
    }
}

impl Store for RustlsMemory {
    fn put(&self, id: &[u8; 32]) {
        self.0.put(id.to_vec(), payload());
    }
    fn get(&self, id: &[u8; 32]) -> bool {
        self.0.get(id).is_some()
    }
    fn take(&self, id: &[u8; 32]) -> bool {
        self.0.take(id).is_some()
    }
}

/// quick_cache, with `hot_allocation(0.0)`: roughly first in, first out, so that it keeps
/// sessions it has not seen twice (its default admission policy drops most TLS 1.3 tickets).
pub struct Quick(pub quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>>);

impl Quick {
    pub fn new(capacity: usize) -> Self {
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .hot_allocation(0.0)
            .build()
            .unwrap();
        Quick(quick_cache::sync::Cache::with_options(
            options,
            quick_cache::UnitWeighter,
            quick_cache::DefaultHashBuilder::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        ))
    }
}

impl Store for Quick {
    fn put(&self, id: &[u8; 32]) {
        self.0.insert(id.to_vec(), Arc::from(payload()));
    }
    fn get(&self, id: &[u8; 32]) -> bool {
        self.0.get(&id[..]).is_some()
    }
    fn take(&self, id: &[u8; 32]) -> bool {
        self.0.remove(&id[..]).is_some()
    }
}

/// moka, with a time-to-live like a session cache's timeout.
pub struct Moka(pub moka::sync::Cache<Vec<u8>, Arc<[u8]>>);

impl Moka {
    pub fn new(capacity: usize) -> Self {
        Moka(
            moka::sync::Cache::builder()
                .max_capacity(capacity as u64)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        )
    }
}

impl Store for Moka {
    fn put(&self, id: &[u8; 32]) {
        self.0.insert(id.to_vec(), Arc::from(payload()));
    }
    fn get(&self, id: &[u8; 32]) -> bool {
        self.0.get(&id[..]).is_some()
    }
    fn take(&self, id: &[u8; 32]) -> bool {
        self.0.remove(&id[..]).is_some()
    }
}

/// A `Mutex<HashMap>` with no limit and no expiry: the floor of what a cache costs.
#[derive(Default)]
pub struct MutexMap(pub Mutex<HashMap<Vec<u8>, Arc<[u8]>>>);

impl Store for MutexMap {
    fn put(&self, id: &[u8; 32]) {
        self.0
            .lock()
            .unwrap()
            .insert(id.to_vec(), Arc::from(payload()));
    }
    fn get(&self, id: &[u8; 32]) -> bool {
        self.0.lock().unwrap().get(&id[..]).is_some()
    }
    fn take(&self, id: &[u8; 32]) -> bool {
        self.0.lock().unwrap().remove(&id[..]).is_some()
    }
}

/// The structures' names, Reprise first.
pub const NAMES: [&str; 5] = ["reprise", "rustls", "quick_cache", "moka", "mutex_hashmap"];

/// One structure, by name, at a capacity.
pub fn build(name: &str, capacity: usize) -> Arc<dyn Store> {
    match name {
        "reprise" => Arc::new(Reprise::new(capacity)),
        "rustls" => Arc::new(RustlsMemory::new(capacity)),
        "quick_cache" => Arc::new(Quick::new(capacity)),
        "moka" => Arc::new(Moka::new(capacity)),
        _ => Arc::new(MutexMap::default()),
    }
}

/// Every structure, by name, at a capacity.
pub fn all(capacity: usize) -> Vec<(&'static str, Arc<dyn Store>)> {
    NAMES
        .iter()
        .map(|name| (*name, build(name, capacity)))
        .collect()
}

/// A small, fast, deterministic generator for the workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}
