//! Lookups: how a proposed session id becomes a session to resume or to consume, through the
//! internal cache and the external one, with every candidate validated.

use crate::cache::{SessionCache, TierStack, Use};
use crate::callbacks::TakeSessionCallback;
use crate::mode::{CacheMode, Role};
use crate::session::{ProtocolVersion, SessionKey, Validity};
use crate::stats::Counters;
use crate::tier::{Fetched, Offer, Prefetched, Request, TicketTake};
use crate::Removal;
use crate::SharedSession;

/// What the internal cache said about a key.
enum Internal<P> {
    Hit(SharedSession<P>),
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
    ) -> Option<SharedSession<P>> {
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
            if let Some(tiers) = self.callbacks.tiers.load_full() {
                return self.take_from_tiers(&tiers, key, now);
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
            Role::Server => self.find_external(key, now, use_, mode).or_else(|| {
                let tiers = self.callbacks.tiers.load_full()?;
                (use_ == Use::Resume)
                    .then(|| self.fetch_from_tiers(&tiers, key, now, mode))
                    .flatten()
            }),
            Role::Client => None,
        }
    }

    /// A lookup that memory and the get callback could not answer: each tier in order; a hit
    /// is validated, copied into memory (unless `NO_INTERNAL_STORE`) and into the tiers above
    /// the one that had it.
    fn fetch_from_tiers(
        &self,
        tiers: &TierStack<P>,
        key: SessionKey<'_>,
        now: u64,
        mode: CacheMode,
    ) -> Option<SharedSession<P>> {
        for (i, tier) in tiers.iter().enumerate() {
            if let Fetched::Hit(found) = tier.fetch(key) {
                if let Some(found) = self.adopt(tiers, i, key, now, found, mode) {
                    self.count_external_hit();
                    return Some(found);
                }
            }
        }
        None
    }

    /// Validates a reusable session that tier `i` returned; a valid one is copied into memory
    /// (unless `NO_INTERNAL_STORE`) and into the tiers above `i`, an expired one is removed
    /// from every tier.
    fn adopt(
        &self,
        tiers: &TierStack<P>,
        i: usize,
        key: SessionKey<'_>,
        now: u64,
        found: SharedSession<P>,
        mode: CacheMode,
    ) -> Option<SharedSession<P>> {
        match found.validate(key, now) {
            Validity::Valid => {}
            Validity::Expired => {
                Counters::bump(&self.counters.external_timeouts);
                found.mark_not_resumable();
                self.notify_tiers(&found, Removal::Expired);
                return None;
            }
            Validity::OtherKey | Validity::NotResumable => return None,
        }
        // A read resumes reusable sessions only: a TLS 1.3 ticket is taken, never read (its id
        // travels in the clear and could be offered as a TLS 1.2 session id).
        if found.version() == ProtocolVersion::TLS1_3 {
            return None;
        }
        if !mode.contains(CacheMode::NO_INTERNAL_STORE) {
            self.add(&found);
        }
        for above in &tiers[..i] {
            above.store(&found);
        }
        Some(found)
    }

    /// A take with tiers attached: the last tier, the authority on single use, decides. Every
    /// other copy (memory's, another tier's) is removed whatever it says: a single-use session
    /// never resumes on a copy that the authority cannot vouch for.
    fn take_from_tiers(
        &self,
        tiers: &TierStack<P>,
        key: SessionKey<'_>,
        now: u64,
    ) -> Option<SharedSession<P>> {
        match tiers.last().map(|authority| authority.take(key)) {
            Some(Fetched::Hit(claimed)) => self.claim_confirmed(key, now, claimed),
            _ => {
                self.drop_takeable_copy(key);
                None
            }
        }
    }

    /// Tells every tier, and only the tiers, that `session` was removed.
    pub(crate) fn notify_tiers(&self, session: &SharedSession<P>, why: Removal) {
        if let Some(tiers) = self.callbacks.tiers.load().as_ref() {
            for tier in tiers.iter() {
                tier.remove(session, why);
            }
        }
    }

    /// Fetches what a ClientHello offers from the tiers, before the handshake, so that the TLS
    /// stack, which asks its store synchronously, finds it in memory.
    ///
    /// - **A TLS 1.3 ticket** is taken from the authority (the last tier) through its
    ///   asynchronous [`Tier::prefetch`](crate::Tier::prefetch), and returned for this
    ///   connection only: hand it to [`take_confirmed`](Self::take_confirmed) (or to
    ///   `ConnectionSessions::confirm_take` in `reprise-rustls`). It is never put in memory.
    ///   The identities are tried in order; the first that the authority actually reads ends
    ///   the search, hit or miss, so one hello costs at most one read.
    /// - **Otherwise, a TLS 1.2 session id** that memory cannot answer is read from the tiers in
    ///   order, down to the last asynchronous one (the synchronous tiers above it synchronously),
    ///   and the first valid session is copied into memory and the tiers above it. Synchronous
    ///   tiers below the last asynchronous one are left to the handshake's own lookup.
    ///
    /// With no tier, or a synchronous authority, there is nothing to do before the handshake:
    /// the result is empty and the handshake's own lookups ask the tiers.
    pub async fn prefetch(&self, offer: Offer<'_>) -> Prefetched<P> {
        let Some(tiers) = self.callbacks.tiers.load_full() else {
            return Prefetched::default();
        };
        let mut take = TicketTake::NotAsked;
        if let Some(authority) = tiers.last() {
            for id in offer.psk_identities {
                let key = SessionKey::new(id, offer.sid_ctx);
                if !key.is_well_formed() {
                    continue;
                }
                let request = Request {
                    key,
                    take: true,
                    client: offer.client,
                };
                let Some(read) = authority.prefetch(request) else {
                    take = TicketTake::Synchronous;
                    break;
                };
                match read.await {
                    Fetched::Skipped => take = TicketTake::Missed,
                    Fetched::Hit(ticket) => return Prefetched::ticket(ticket),
                    Fetched::Miss => return Prefetched::default().with_take(TicketTake::Missed),
                    Fetched::Unavailable => {
                        let take = match authority.circuit_open() {
                            true => TicketTake::CircuitOpen,
                            false => TicketTake::Unavailable,
                        };
                        return Prefetched::default().with_take(take);
                    }
                }
            }
        }
        let Some(id) = offer.session_id else {
            return Prefetched::default().with_take(take);
        };
        let key = SessionKey::new(id, offer.sid_ctx);
        let now = self.now();
        if !key.is_well_formed()
            || self
                .peek(id)
                .is_some_and(|s| s.validate(key, now) == Validity::Valid)
        {
            return Prefetched::default();
        }
        let mode = self.mode();
        let request = Request {
            key,
            take: false,
            client: offer.client,
        };
        // The synchronous tiers above an asynchronous one are asked first, in order; those
        // below the last asynchronous tier are left to the handshake's own lookup, which asks
        // them anyway (so a miss costs them one read, not two).
        let mut unasked = 0;
        for (i, tier) in tiers.iter().enumerate() {
            let Some(read) = tier.prefetch(request) else {
                continue;
            };
            for (j, above) in tiers.iter().enumerate().take(i).skip(unasked) {
                if let Fetched::Hit(found) = above.fetch(key) {
                    if self.adopt(&tiers, j, key, now, found, mode).is_some() {
                        return Prefetched::session();
                    }
                }
            }
            unasked = i + 1;
            if let Fetched::Hit(found) = read.await {
                if self.adopt(&tiers, i, key, now, found, mode).is_some() {
                    return Prefetched::session();
                }
            }
        }
        Prefetched::default()
    }

    fn find_internal(&self, key: SessionKey<'_>, now: u64, use_: Use) -> Internal<P> {
        enum Found<P> {
            Hit(SharedSession<P>),
            Taken(SharedSession<P>),
            Expired(SharedSession<P>),
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
            let s = SharedSession::clone(s);
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
        found: SharedSession<P>,
    ) -> Option<SharedSession<P>> {
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
    ) -> Option<SharedSession<P>> {
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
                if !copy.is_some_and(|c| SharedSession::ptr_eq(&c, &found)) {
                    self.fire_remove(&found, Removal::Taken);
                }
            }
        }
        Some(found)
    }

    /// Takes the copy cached under this key out of the internal cache, unless it is a session
    /// that a take must leave alone (another context, or a reusable TLS 1.2 session).
    fn unlink_takeable(&self, key: SessionKey<'_>) -> Option<SharedSession<P>> {
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
    ) -> Option<SharedSession<P>> {
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
        claimed: SharedSession<P>,
    ) -> Option<SharedSession<P>> {
        // Claimed before the internal copy goes: a tier may hand over the very object memory
        // holds, and dropping that copy marks it not resumable.
        let won = self
            .validate_external(key, now, claimed)
            .filter(|found| !found.version().is_reusable() && found.claim());
        let dropped = self.drop_takeable_copy(key);
        let found = won?;
        if !dropped {
            // The tiers above the authority may hold a copy that memory no longer does.
            self.notify_tiers(&found, Removal::Taken);
        }
        self.count_external_hit();
        Some(found)
    }

    /// Drops the internal copy a take must not resume on, with the remove callback; says
    /// whether there was one.
    fn drop_takeable_copy(&self, key: SessionKey<'_>) -> bool {
        match self.unlink_takeable(key) {
            Some(copy) => {
                self.fire_remove(&copy, Removal::Taken);
                true
            }
            None => false,
        }
    }
}
