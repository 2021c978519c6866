//! Lookups: how a proposed session id becomes a session to resume or to consume, through the
//! internal cache and the external one, with every candidate validated.

use std::sync::Arc;

use crate::cache::{SessionCache, Use};
use crate::callbacks::TakeSessionCallback;
use crate::mode::{CacheMode, Role};
use crate::session::{Session, SessionKey};
use crate::stats::Counters;
use crate::Removal;

/// What the internal cache said about a key.
enum Internal<P> {
    Hit(Arc<Session<P>>),
    /// Found, but not usable: another context, not resumable, or expired. No fallback.
    Unusable,
    Miss,
}

impl<P: Send + Sync + 'static> SessionCache<P> {
    pub(crate) fn find(
        &self,
        role: Role,
        key: SessionKey<'_>,
        use_: Use,
    ) -> Option<Arc<Session<P>>> {
        let mode = self.mode();
        let internal = role == Role::Client || !mode.contains(CacheMode::NO_INTERNAL_LOOKUP);
        if !key.is_well_formed() {
            Counters::bump(&self.counters.rejected_keys);
            if internal {
                Counters::bump(&self.counters.rejected_misses);
            }
            return None;
        }
        let now = self.now();
        if role == Role::Server && use_ == Use::Take {
            if let Some(take) = self.callbacks.take.load_full() {
                return self.take_external_first(&take, key, now);
            }
        }
        if internal {
            match self.find_internal(key, now, use_) {
                Internal::Hit(s) => return Some(s),
                Internal::Unusable => return None,
                Internal::Miss => {}
            }
        }
        match role {
            Role::Server => self.find_external(key, now, use_, mode),
            Role::Client => None,
        }
    }

    fn find_internal(&self, key: SessionKey<'_>, now: u64, use_: Use) -> Internal<P> {
        enum Found<P> {
            Hit(Arc<Session<P>>),
            Taken(Arc<Session<P>>),
            Expired(Arc<Session<P>>),
            Unusable,
            Miss,
        }
        let hash = self.hash(key.id);
        let found = self.with_shard(hash, |shard| {
            let Some((idx, s)) = shard.find(hash, key.id) else {
                shard.counters.misses += 1;
                return Found::Miss;
            };
            if s.sid_ctx().as_bytes() != key.sid_ctx
                || !s.is_resumable()
                || (use_ == Use::Take && s.version().is_reusable())
            {
                return Found::Unusable;
            }
            // The session's own expiry: a hit reads the table and the session, not the slot.
            if s.is_expired_at(now) {
                shard.counters.timeouts += 1;
                return shard
                    .remove_at(hash, idx)
                    .map_or(Found::Unusable, Found::Expired);
            }
            let s = Arc::clone(s);
            shard.counters.hits += 1;
            match use_ {
                Use::Resume => Found::Hit(s),
                Use::Take => {
                    // Removal marks it not resumable under the lock: it is taken exactly once.
                    shard.remove_at(hash, idx);
                    Found::Taken(s)
                }
            }
        });
        match found {
            Found::Hit(s) => Internal::Hit(s),
            Found::Taken(s) => {
                self.release_slot();
                self.fire_remove(&s, Removal::Taken);
                Internal::Hit(s)
            }
            Found::Expired(s) => {
                self.release_slot();
                self.fire_remove(&s, Removal::Expired);
                Internal::Unusable
            }
            Found::Unusable => Internal::Unusable,
            Found::Miss => Internal::Miss,
        }
    }

    /// Validates a session an external cache returned for `key`: its id and context must match
    /// and it must be resumable and unexpired. An expired one gets the remove callback (so the
    /// external cache can drop it) and counts in `timeouts`.
    fn validate_external(
        &self,
        key: SessionKey<'_>,
        now: u64,
        found: Arc<Session<P>>,
    ) -> Option<Arc<Session<P>>> {
        if found.id().as_bytes() != key.id
            || found.sid_ctx().as_bytes() != key.sid_ctx
            || !found.is_resumable()
        {
            return None;
        }
        if found.is_expired_at(now) {
            Counters::bump(&self.counters.external_timeouts);
            found.mark_not_resumable();
            self.fire_remove(&found, Removal::Expired);
            return None;
        }
        Some(found)
    }

    fn count_external_hit(&self) {
        Counters::bump(&self.counters.cb_hits);
        Counters::bump(&self.counters.external_hits);
    }

    fn find_external(
        &self,
        key: SessionKey<'_>,
        now: u64,
        use_: Use,
        mode: CacheMode,
    ) -> Option<Arc<Session<P>>> {
        let get = self.callbacks.get.load_full()?;
        let found = self.validate_external(key, now, get(self, &key)?)?;
        match use_ {
            Use::Resume => {
                self.count_external_hit();
                if !mode.contains(CacheMode::NO_INTERNAL_STORE) {
                    self.add(&found);
                }
            }
            Use::Take => {
                // A TLS 1.2 session is not consumed by a take (see `is_reusable`).
                // Two threads may get the same object from the external cache: one claims it.
                if found.version().is_reusable() || !found.claim() {
                    return None;
                }
                self.count_external_hit();
                // A copy in the internal cache (possible under NO_INTERNAL_LOOKUP) must not
                // outlive the take; and through the trio, the remove callback is what deletes
                // the session from the external cache.
                let copy = self.unlink_takeable(key);
                if let Some(copy) = &copy {
                    self.fire_remove(copy, Removal::Taken);
                }
                if !copy.is_some_and(|c| Arc::ptr_eq(&c, &found)) {
                    self.fire_remove(&found, Removal::Taken);
                }
            }
        }
        Some(found)
    }

    /// Takes the copy cached under this key out of the internal cache, unless it is a session
    /// that a take must leave alone (another context, or a reusable TLS 1.2 session).
    fn unlink_takeable(&self, key: SessionKey<'_>) -> Option<Arc<Session<P>>> {
        let hash = self.hash(key.id);
        let old = self.with_shard(hash, |shard| {
            let (idx, found) = shard.find(hash, key.id)?;
            if found.sid_ctx().as_bytes() != key.sid_ctx || found.version().is_reusable() {
                return None;
            }
            shard.remove_at(hash, idx)
        })?;
        self.release_slot();
        Some(old)
    }

    /// A take with a take callback installed: the external cache decides, atomically, whether
    /// this is the one use of the session. A copy in the internal cache is dropped either way:
    /// if the external cache no longer has the session, it was used elsewhere (or cannot be
    /// vouched for), and a single-use session must not resume on a local copy.
    fn take_external_first(
        &self,
        take: &TakeSessionCallback<P>,
        key: SessionKey<'_>,
        now: u64,
    ) -> Option<Arc<Session<P>>> {
        let claimed = take(self, &key);
        match claimed {
            Some(claimed) => self.claim_confirmed(key, now, claimed),
            None => {
                self.drop_takeable_copy(key);
                None
            }
        }
    }

    /// Resumes a session the external cache handed over for one take: drops any internal copy,
    /// validates the session, and claims it (at most one caller wins).
    pub(crate) fn claim_confirmed(
        &self,
        key: SessionKey<'_>,
        now: u64,
        claimed: Arc<Session<P>>,
    ) -> Option<Arc<Session<P>>> {
        self.drop_takeable_copy(key);
        let found = self.validate_external(key, now, claimed)?;
        if found.version().is_reusable() || !found.claim() {
            return None;
        }
        self.count_external_hit();
        Some(found)
    }

    /// Drops the internal copy a take must not resume on, with the remove callback.
    fn drop_takeable_copy(&self, key: SessionKey<'_>) {
        if let Some(copy) = self.unlink_takeable(key) {
            self.fire_remove(&copy, Removal::Taken);
        }
    }
}
