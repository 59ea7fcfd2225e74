//! The protobuf form of recently read onboardings, so a client polling `GetOnboarding` does
//! not re-parse the row's details JSON and re-format its names on every call; and of recent
//! stream events, so one event sent to every watcher of an onboarding is converted once.
//!
//! Coherence: an entry is reused only when the row just read from the store is equal, field
//! by field, to the row it was converted from. The conversion is a pure function of the row,
//! so a hit answers exactly what converting the fresh row would; a changed row (whatever
//! changed, bumped sequence or not) is converted again and replaces the entry. The cache
//! never answers without a store read, so it adds no staleness of its own.

use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use hashlink::LruCache;

use super::convert::{event_to_pb, onboarding_to_pb};
use super::pb;
use crate::domain::OnboardingId;
use crate::store::{EventRecord, OnboardingRecord};

/// Entries kept by default: a row and its message are each well under 1 KiB, so this bounds
/// the cache to about 2 MiB while covering the onboardings clients poll.
pub const DEFAULT_ENTRIES: usize = 1024;
/// Events kept by [`EventPbCache`]: the recent ones streams are sending now.
pub const EVENT_ENTRIES: usize = 256;

/// A bounded map, least recently used evicted first, behind a lock. Entries are replaced
/// whole, so a lock poisoned by a panic is still usable.
struct Lru<K, V>(Mutex<LruCache<K, V>>);

impl<K: Hash + Eq, V: Clone> Lru<K, V> {
    fn new(entries: usize) -> Self {
        Self(Mutex::new(LruCache::new(entries.max(1))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<K, V>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the entry (cheap: `Arc`s), so callers work outside the lock.
    fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<K: Hash + Eq, V: Clone> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru").field("len", &self.len()).finish()
    }
}

/// A row and the message converted from it.
struct Entry {
    row: Arc<OnboardingRecord>,
    message: pb::Onboarding,
}

/// The cache; see the module documentation for its coherence.
#[derive(Debug)]
pub struct PbCache {
    entries: Lru<OnboardingId, Arc<Entry>>,
}

impl Default for PbCache {
    fn default() -> Self {
        Self::new(DEFAULT_ENTRIES)
    }
}

impl PbCache {
    /// A cache of at most `entries` messages (least recently used evicted first).
    pub fn new(entries: usize) -> Self {
        Self { entries: Lru::new(entries) }
    }

    /// `onboarding_to_pb(row)`, reusing the message of an equal row converted before (the
    /// very same row when the store shares its cached one: no comparison then).
    pub fn onboarding(&self, row: Arc<OnboardingRecord>) -> pb::Onboarding {
        if let Some(entry) = self.entries.get(&row.id)
            && (Arc::ptr_eq(&entry.row, &row) || entry.row == row)
        {
            return entry.message.clone();
        }
        let message = onboarding_to_pb(&row);
        let id = row.id.clone();
        self.entries.insert(id, Arc::new(Entry { row, message: message.clone() }));
        message
    }
}

/// An event record (as shared by the streams that send it) and the message converted from it.
type EventEntry = (Weak<EventRecord>, Arc<pb::OnboardingEvent>);

/// The protobuf form of the event records streams are sending. The bus hands every stream of
/// an onboarding the same `Arc` of each event, so the record's address names it: an entry
/// holds a `Weak` to the record, which keeps that address from being reused while the entry
/// lives, so a key found is always the very same record (whose conversion is a pure function
/// of it).
#[derive(Debug)]
pub struct EventPbCache {
    entries: Lru<usize, EventEntry>,
}

impl Default for EventPbCache {
    fn default() -> Self {
        Self::new(EVENT_ENTRIES)
    }
}

impl EventPbCache {
    /// A cache of at most `entries` messages (least recently used evicted first).
    pub fn new(entries: usize) -> Self {
        Self { entries: Lru::new(entries) }
    }

    /// `event_to_pb(event)`, converted once per shared record.
    pub fn event(&self, event: &Arc<EventRecord>) -> pb::OnboardingEvent {
        let key = Arc::as_ptr(event) as usize;
        if let Some((_, message)) = self.entries.get(&key) {
            return pb::OnboardingEvent::clone(&message);
        }
        let message = event_to_pb(event);
        self.entries.insert(key, (Arc::downgrade(event), Arc::new(message.clone())));
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, EventKind, OnboardingState, ProviderKind, TenantId, new_id};

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
        assert_eq!(cache.entries.len(), 1);
    }

    fn event(sequence: i64, data_json: &str) -> Arc<EventRecord> {
        Arc::new(EventRecord {
            onboarding_id: new_id(),
            sequence,
            kind: EventKind::StateChanged,
            state: OnboardingState::Live,
            previous_state: OnboardingState::Provisioning,
            reason: "live".into(),
            provider_status: "LIVE".into(),
            step: None,
            data_json: data_json.into(),
            created_ms: 5,
        })
    }

    #[test]
    fn an_event_is_converted_once_per_shared_record() {
        let cache = EventPbCache::new(4);
        let e = event(1, r#"{"a":1}"#);
        assert_eq!(cache.event(&e), event_to_pb(&e));
        assert_eq!(cache.event(&e.clone()), event_to_pb(&e));
        assert_eq!(cache.entries.len(), 1, "one entry for every holder of the record");
        // An equal record elsewhere is another entry, converted the same.
        let copy = Arc::new(EventRecord::clone(&e));
        assert_eq!(cache.event(&copy), event_to_pb(&e));
        assert_eq!(cache.entries.len(), 2);
    }

    #[test]
    fn a_new_record_is_never_answered_with_an_old_message() {
        let cache = EventPbCache::new(4);
        for i in 0..50 {
            // Each record dropped right after: its entry's `Weak` keeps the address taken, so
            // the next record cannot be mistaken for it.
            let e = event(i, &format!(r#"{{"i":{i}}}"#));
            assert_eq!(cache.event(&e), event_to_pb(&e));
        }
        assert_eq!(cache.entries.len(), 4, "bounded");
    }

    #[test]
    fn bounded() {
        let cache = PbCache::new(2);
        for _ in 0..5 {
            cache.onboarding(Arc::new(row(&new_id(), "x")));
        }
        assert_eq!(cache.entries.len(), 2);
    }
}
