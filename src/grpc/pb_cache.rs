//! The protobuf form of recently read onboardings, so a client polling `GetOnboarding` does
//! not re-parse the row's details JSON and re-format its names on every call.
//!
//! Coherence: an entry is reused only when the row just read from the store is equal, field
//! by field, to the row it was converted from. The conversion is a pure function of the row,
//! so a hit answers exactly what converting the fresh row would; a changed row (whatever
//! changed, bumped sequence or not) is converted again and replaces the entry. The cache
//! never answers without a store read, so it adds no staleness of its own.

use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;

use super::convert::onboarding_to_pb;
use super::pb;
use crate::domain::OnboardingId;
use crate::store::OnboardingRecord;

/// Entries kept by default: a row and its message are each well under 1 KiB, so this bounds
/// the cache to about 2 MiB while covering the onboardings clients poll.
pub const DEFAULT_ENTRIES: usize = 1024;

/// A row and the message converted from it.
struct Entry {
    row: Arc<OnboardingRecord>,
    message: pb::Onboarding,
}

/// The cache; see the module documentation for its coherence.
pub struct PbCache {
    entries: Mutex<LruCache<OnboardingId, Arc<Entry>>>,
}

impl std::fmt::Debug for PbCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PbCache").field("len", &self.lock().len()).finish()
    }
}

impl Default for PbCache {
    fn default() -> Self {
        Self::new(DEFAULT_ENTRIES)
    }
}

impl PbCache {
    /// A cache of at most `entries` messages (least recently used evicted first).
    pub fn new(entries: usize) -> Self {
        Self { entries: Mutex::new(LruCache::new(entries.max(1))) }
    }

    // A panic while holding the lock cannot leave an entry half-written (entries are
    // replaced whole), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, LruCache<OnboardingId, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `onboarding_to_pb(row)`, reusing the message of an equal row converted before (the
    /// very same row when the store shares its cached one: no comparison then).
    pub fn onboarding(&self, row: Arc<OnboardingRecord>) -> pb::Onboarding {
        // Cloned out so the comparison and the message clone run outside the lock.
        let cached = self.lock().get(&row.id).cloned();
        if let Some(entry) = cached
            && (Arc::ptr_eq(&entry.row, &row) || entry.row == row)
        {
            return entry.message.clone();
        }
        let message = onboarding_to_pb(&row);
        let id = row.id.clone();
        self.lock().insert(id, Arc::new(Entry { row, message: message.clone() }));
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, OnboardingState, ProviderKind, TenantId, new_id};

    fn row(id: &OnboardingId, app_name: &str) -> OnboardingRecord {
        OnboardingRecord {
            id: id.clone(),
            tenant_id: new_id::<TenantId>(),
            account_id: AccountId::parse("acc").unwrap(),
            provider: ProviderKind::Gupshup,
            state: OnboardingState::Live,
            desired_state: None,
            state_reason: "live".into(),
            provider_status: "live".into(),
            reference: "ref".into(),
            details_json: serde_json::json!({ "app_name": app_name, "app_id": "a1" }).to_string(),
            external_key: None,
            secret: None,
            sequence: 3,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    fn app_name(m: &pb::Onboarding) -> &str {
        match &m.details {
            Some(pb::onboarding::Details::Gupshup(g)) => &g.app_name,
            other => panic!("unexpected details {other:?}"),
        }
    }

    #[test]
    fn hit_equals_fresh_conversion() {
        let cache = PbCache::new(4);
        let r = row(&new_id(), "one");
        let first = cache.onboarding(Arc::new(r.clone()));
        let second = cache.onboarding(Arc::new(r.clone()));
        assert_eq!(first, onboarding_to_pb(&r));
        assert_eq!(second, first);
    }

    #[test]
    fn any_change_to_the_row_is_converted_again() {
        let cache = PbCache::new(4);
        let id = new_id();
        let r = row(&id, "one");
        assert_eq!(app_name(&cache.onboarding(Arc::new(r.clone()))), "one");
        // Same sequence, different details: still seen.
        let changed = row(&id, "two");
        assert_eq!(changed.sequence, r.sequence);
        assert_eq!(app_name(&cache.onboarding(Arc::new(changed.clone()))), "two");
        let mut state = changed.clone();
        state.state = OnboardingState::Cancelled;
        assert_eq!(cache.onboarding(Arc::new(state.clone())), onboarding_to_pb(&state));
    }

    #[test]
    fn the_same_shared_row_is_a_hit_and_an_equal_copy_too() {
        let cache = PbCache::new(4);
        let shared = Arc::new(row(&new_id(), "one"));
        let first = cache.onboarding(shared.clone());
        assert_eq!(cache.onboarding(shared.clone()), first);
        assert_eq!(cache.onboarding(Arc::new(OnboardingRecord::clone(&shared))), first);
        assert_eq!(cache.lock().len(), 1);
    }

    #[test]
    fn bounded() {
        let cache = PbCache::new(2);
        for _ in 0..5 {
            cache.onboarding(Arc::new(row(&new_id(), "x")));
        }
        assert_eq!(cache.lock().len(), 2);
    }
}
