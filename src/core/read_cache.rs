//! What an edge made of recently read onboardings (the gRPC layer: the `pb::Onboarding` of
//! `GetOnboarding`, the benchmark's hot path), so a client polling one onboarding does not
//! re-parse its details and re-format its names on every call. Generic over the edge's
//! message, so core names no wire type.
//!
//! Coherence: an entry is reused only when the row just read from the store is equal, field
//! by field, to the row it was made from. The conversion is a pure function of the row, so a
//! hit answers exactly what converting the fresh row would; a changed row (whatever changed,
//! bumped sequence or not) is converted again and replaces the entry. The cache never answers
//! without a store read, so it adds no staleness of its own.

use std::hash::Hash;
use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use super::views::OnboardingView;
use super::{Caller, Core};
use crate::domain::OnboardingId;
use crate::error::AppError;
use crate::store::OnboardingRecord;

/// Entries kept by default: a row and its message are each well under 1 KiB, so this bounds
/// the cache to about 2 MiB while covering the onboardings clients poll.
pub const DEFAULT_ENTRIES: usize = 1024;

/// A bounded map, least recently used evicted first, behind a lock. Entries are replaced
/// whole, so a lock poisoned by a panic is still usable.
pub struct Lru<K, V>(Mutex<LruCache<K, V>>);

impl<K: Hash + Eq, V: Clone> Lru<K, V> {
    /// At most `entries` entries (at least one).
    pub fn new(entries: usize) -> Self {
        Self(Mutex::new(LruCache::new(entries.max(1))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<K, V>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the entry (cheap when `V` is an `Arc`), so callers work outside the lock.
    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Adds or replaces the entry of `key`.
    pub fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru").field("len", &self.len()).finish()
    }
}

/// A row and what the edge made of it.
struct Entry<M> {
    row: Arc<OnboardingRecord>,
    message: M,
}

/// Messages made from onboarding rows; see the module documentation for its coherence.
pub struct OnboardingReadCache<M> {
    entries: Lru<OnboardingId, Arc<Entry<M>>>,
}

impl<M> std::fmt::Debug for OnboardingReadCache<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnboardingReadCache").field("len", &self.entries.len()).finish()
    }
}

impl<M: Clone> Default for OnboardingReadCache<M> {
    fn default() -> Self {
        Self::new(DEFAULT_ENTRIES)
    }
}

impl<M: Clone> OnboardingReadCache<M> {
    /// A cache of at most `entries` messages (least recently used evicted first).
    pub fn new(entries: usize) -> Self {
        Self { entries: Lru::new(entries) }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `convert(view of row)`, reusing the message of an equal row converted before (the
    /// very same row when the store shares its cached one: no comparison then). The view is
    /// built, and the details parsed, only on a miss.
    fn message(&self, row: Arc<OnboardingRecord>, convert: impl FnOnce(&OnboardingView) -> M) -> M {
        if let Some(entry) = self.entries.get(&row.id)
            && (Arc::ptr_eq(&entry.row, &row) || entry.row == row)
        {
            return entry.message.clone();
        }
        let message = convert(&OnboardingView::from(row.as_ref()));
        let id = row.id.clone();
        self.entries.insert(id, Arc::new(Entry { row, message: message.clone() }));
        message
    }
}

impl Core {
    /// One of the caller's onboardings as `convert` makes it from its view, read from the
    /// store on every call and converted again only when the row changed (`cache`).
    pub async fn get_onboarding_cached<M: Clone>(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        cache: &OnboardingReadCache<M>,
        convert: impl FnOnce(&OnboardingView) -> M,
    ) -> Result<M, AppError> {
        let row = self
            .store
            .onboarding_shared(&caller.tenant, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("onboardings/{}", id.name())))?;
        Ok(cache.message(row, convert))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::domain::{AccountId, OnboardingDetails, OnboardingState, ProviderKind, TenantId, new_id};

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
            engine_json: "{}".into(),
            external_key: None,
            secret: None,
            sequence: 3,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    /// What a test edge makes of a view: its app name and state, counting conversions.
    fn convert(count: &AtomicUsize) -> impl FnOnce(&OnboardingView) -> (String, OnboardingState) + '_ {
        move |v| {
            count.fetch_add(1, Ordering::SeqCst);
            let name = match &v.details {
                OnboardingDetails::Gupshup(g) => g.app_name.clone().unwrap_or_default(),
                other => panic!("unexpected details {other:?}"),
            };
            (name, v.state)
        }
    }

    #[test]
    fn hit_equals_fresh_conversion_and_converts_once() {
        let cache = OnboardingReadCache::new(4);
        let n = AtomicUsize::new(0);
        let r = row(&new_id(), "one");
        let first = cache.message(Arc::new(r.clone()), convert(&n));
        let second = cache.message(Arc::new(r.clone()), convert(&n));
        assert_eq!(first, ("one".to_string(), OnboardingState::Live));
        assert_eq!(second, first);
        assert_eq!(n.load(Ordering::SeqCst), 1, "an equal row is not converted again");
    }

    #[test]
    fn any_change_to_the_row_is_converted_again() {
        let cache = OnboardingReadCache::new(4);
        let n = AtomicUsize::new(0);
        let id = new_id();
        let r = row(&id, "one");
        assert_eq!(cache.message(Arc::new(r.clone()), convert(&n)).0, "one");
        // Same sequence, different details: still seen.
        let changed = row(&id, "two");
        assert_eq!(changed.sequence, r.sequence);
        assert_eq!(cache.message(Arc::new(changed.clone()), convert(&n)).0, "two");
        let mut state = changed.clone();
        state.state = OnboardingState::Cancelled;
        assert_eq!(cache.message(Arc::new(state), convert(&n)).1, OnboardingState::Cancelled);
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_same_shared_row_is_a_hit_and_an_equal_copy_too() {
        let cache = OnboardingReadCache::new(4);
        let n = AtomicUsize::new(0);
        let shared = Arc::new(row(&new_id(), "one"));
        let first = cache.message(shared.clone(), convert(&n));
        assert_eq!(cache.message(shared.clone(), convert(&n)), first);
        assert_eq!(cache.message(Arc::new(OnboardingRecord::clone(&shared)), convert(&n)), first);
        assert_eq!(cache.len(), 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bounded() {
        let cache = OnboardingReadCache::new(2);
        let n = AtomicUsize::new(0);
        for _ in 0..5 {
            cache.message(Arc::new(row(&new_id(), "x")), convert(&n));
        }
        assert_eq!(cache.len(), 2);
    }
}
