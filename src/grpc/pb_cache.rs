//! The protobuf form of recent stream events, so one event sent to every watcher of an
//! onboarding is converted and encoded once. (`GetOnboarding`'s converted answers are cached in core:
//! [`crate::core::read_cache`].)

use std::sync::{Arc, Weak};

use super::encoded::Encoded;
use super::pb;
use crate::core::read_cache::Lru;
use crate::core::views::EventView;

/// Events kept by [`EventPbCache`]: the recent ones streams are sending now.
pub const EVENT_ENTRIES: usize = 256;

/// An event view (as shared by the streams that send it), the message converted from it and
/// the `WatchOnboarding` answer carrying it, encoded.
type EventEntry = (Weak<EventView>, Arc<pb::OnboardingEvent>, Encoded);

/// The protobuf form of the events streams are sending. The bus hands every stream of
/// an onboarding the same `Arc` of each event, so the view's address names it: an entry
/// holds a `Weak` to the view, which keeps that address from being reused while the entry
/// lives, so a key found is always the very same view (whose conversion is a pure function
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

    /// `pb::OnboardingEvent::from(event)`, converted once per shared view.
    pub fn event(&self, event: &Arc<EventView>) -> pb::OnboardingEvent {
        pb::OnboardingEvent::clone(&self.entry(event).1)
    }

    /// `WatchOnboardingResponse { event }` encoded, once per shared view: every watcher sends
    /// the same bytes.
    pub fn encoded(&self, event: &Arc<EventView>) -> Encoded {
        self.entry(event).2
    }

    fn entry(&self, event: &Arc<EventView>) -> EventEntry {
        let key = Arc::as_ptr(event) as usize;
        if let Some(entry) = self.entries.get(&key) {
            return entry;
        }
        let message = pb::OnboardingEvent::from(event.as_ref());
        let encoded = Encoded::of(&pb::WatchOnboardingResponse {
            message: Some(pb::watch_onboarding_response::Message::Event(message.clone())),
        });
        let entry = (Arc::downgrade(event), Arc::new(message), encoded);
        self.entries.insert(key, entry.clone());
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, OnboardingState, new_id};

    fn event(sequence: i64, attribute: &str) -> Arc<EventView> {
        Arc::new(EventView {
            onboarding_id: new_id(),
            sequence,
            kind: EventKind::StateChanged,
            state: OnboardingState::Live,
            previous_state: OnboardingState::Provisioning,
            reason: "live".into(),
            provider_status: "LIVE".into(),
            step: None,
            attributes: [("a".to_string(), attribute.to_string())].into(),
            created_ms: 5,
        })
    }

    #[test]
    fn an_event_is_converted_once_per_shared_view() {
        let cache = EventPbCache::new(4);
        let e = event(1, "1");
        let fresh = pb::OnboardingEvent::from(e.as_ref());
        assert_eq!(cache.event(&e), fresh);
        assert_eq!(cache.event(&e.clone()), fresh);
        assert_eq!(cache.entries.len(), 1, "one entry for every holder of the view");
        // Encoded once: every holder gets the very same bytes, which decode to the message.
        let (a, b) = (cache.encoded(&e), cache.encoded(&e.clone()));
        assert_eq!(a.0.as_ptr(), b.0.as_ptr(), "shared, not re-encoded");
        let decoded = <pb::WatchOnboardingResponse as prost::Message>::decode(a.0.clone()).unwrap();
        assert_eq!(decoded.message, Some(pb::watch_onboarding_response::Message::Event(fresh.clone())));
        // An equal view elsewhere is another entry, converted the same.
        let copy = Arc::new(EventView::clone(&e));
        assert_eq!(cache.event(&copy), fresh);
        assert_eq!(cache.entries.len(), 2);
    }

    #[test]
    fn a_new_view_is_never_answered_with_an_old_message() {
        let cache = EventPbCache::new(4);
        for i in 0..50 {
            // Each view dropped right after: its entry's `Weak` keeps the address taken, so
            // the next view cannot be mistaken for it.
            let e = event(i, &i.to_string());
            assert_eq!(cache.event(&e), pb::OnboardingEvent::from(e.as_ref()));
            let encoded = pb::WatchOnboardingResponse {
                message: Some(pb::watch_onboarding_response::Message::Event(pb::OnboardingEvent::from(e.as_ref()))),
            };
            assert_eq!(cache.encoded(&e), Encoded::of(&encoded));
        }
        assert_eq!(cache.entries.len(), 4, "bounded");
    }
}
