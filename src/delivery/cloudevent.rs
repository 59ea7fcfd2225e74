//! The message of outbound delivery: a CloudEvents 1.0 event in the JSON event format
//! (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md>, `formats/json-format.md`),
//! sent in structured mode (`bindings/http-protocol-binding.md` §3.2: the whole event is the body,
//! `Content-Type: application/cloudevents+json`).

use serde_json::{Map, Value, json};

use crate::domain::EventKind;

/// The CloudEvents version this envelope follows (`specversion`).
pub const SPEC_VERSION: &str = "1.0";
/// `Content-Type` of a structured-mode HTTP request (HTTP binding §3.2.1).
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// `datacontenttype`: `data` is the `OnboardingEvent` in proto JSON.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// Prefix of `type`; the event kind's wire name follows (`wa.onboard.onboarding.state_changed`).
pub const TYPE_PREFIX: &str = "wa.onboard.onboarding.";
/// `type` of the notice that the service disabled a destination.
pub const DESTINATION_DISABLED_TYPE: &str = "wa.onboard.destination.disabled";
/// The extension attribute carrying the onboarding's caller-chosen reference.
pub const REFERENCE_EXTENSION: &str = "reference";

/// Why an event could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    /// A required attribute is empty (spec: `id`, `source` non-empty; `subject` non-empty when
    /// present).
    #[error("CloudEvents attribute {0} must not be empty")]
    Empty(&'static str),
    /// An attribute holds whitespace or control characters (`source` is a URI-reference).
    #[error("CloudEvents attribute {0} holds whitespace or control characters")]
    BadCharacters(&'static str),
    /// `time` is not representable (before year 0 or after 9999).
    #[error("CloudEvents time {0} ms is out of range")]
    Time(i64),
}

/// What an event is: one of an onboarding's log, or a service notice about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An onboarding event of this kind (`wa.onboard.onboarding.<kind>`).
    Onboarding(EventKind),
    /// The service disabled a destination (`wa.onboard.destination.disabled`).
    DestinationDisabled,
}

impl From<EventKind> for EventType {
    fn from(kind: EventKind) -> Self {
        Self::Onboarding(kind)
    }
}

impl EventType {
    /// The short name filters and NATS `{type}` use: the kind's wire name, or
    /// `destination_disabled` (one subject token, no dot).
    pub fn token(self) -> &'static str {
        match self {
            Self::Onboarding(kind) => kind.as_str(),
            Self::DestinationDisabled => "destination_disabled",
        }
    }

    /// The `type` attribute.
    pub fn type_name(self) -> String {
        match self {
            Self::Onboarding(kind) => type_name(kind),
            Self::DestinationDisabled => DESTINATION_DISABLED_TYPE.to_string(),
        }
    }
}

/// What the caller supplies; [`CloudEvent::new`] validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventParts {
    /// A stable event id: the same on every delivery and redelivery of one event (it is also
    /// the `webhook-id` and the `Nats-Msg-Id`, so receivers and the stream deduplicate on it).
    pub id: String,
    /// `source`, a URI-reference naming this service instance (e.g. `/wa-onboard/tenants/t1`).
    pub source: String,
    /// What it is; `type` is [`EventType::type_name`].
    pub kind: EventType,
    /// `subject`: the onboarding's resource name (a notice's: the destination's).
    pub subject: String,
    /// When the event was committed, Unix milliseconds (`time`, RFC 3339).
    pub time_ms: i64,
    /// The onboarding's caller-chosen reference, the `reference` extension (omitted if empty).
    pub reference: Option<String>,
    /// `data`: any JSON value (the proto JSON of the `OnboardingEvent`).
    pub data: Value,
}

/// A validated CloudEvents 1.0 event.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    parts: EventParts,
    time: String,
}

impl CloudEvent {
    /// Validates the required attributes.
    pub fn new(parts: EventParts) -> Result<Self, CloudEventError> {
        for (name, value) in [("id", &parts.id), ("source", &parts.source), ("subject", &parts.subject)] {
            if value.is_empty() {
                return Err(CloudEventError::Empty(name));
            }
        }
        for (name, value) in [("id", &parts.id), ("source", &parts.source)] {
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(CloudEventError::BadCharacters(name));
            }
        }
        let time = rfc3339(parts.time_ms)?;
        Ok(Self { parts, time })
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.parts.id
    }

    /// What it is.
    pub fn kind(&self) -> EventType {
        self.parts.kind
    }

    /// The `type` attribute.
    pub fn type_name(&self) -> String {
        self.parts.kind.type_name()
    }

    /// The JSON event format: one object with the context attributes, the extension and `data`.
    pub fn to_json(&self) -> Value {
        let p = &self.parts;
        let mut event = Map::new();
        event.insert("specversion".into(), json!(SPEC_VERSION));
        event.insert("id".into(), json!(p.id));
        event.insert("source".into(), json!(p.source));
        event.insert("type".into(), json!(self.type_name()));
        event.insert("subject".into(), json!(p.subject));
        event.insert("time".into(), json!(self.time));
        event.insert("datacontenttype".into(), json!(DATA_CONTENT_TYPE));
        if let Some(reference) = p.reference.as_deref().filter(|r| !r.is_empty()) {
            event.insert(REFERENCE_EXTENSION.into(), json!(reference));
        }
        event.insert("data".into(), p.data.clone());
        Value::Object(event)
    }

    /// The request body: [`Self::to_json`] serialized (the bytes that are signed and sent).
    pub fn to_body(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }
}

/// `type` of an event kind.
pub fn type_name(kind: EventKind) -> String {
    format!("{TYPE_PREFIX}{}", kind.as_str())
}

/// CloudEvents attribute naming rule (spec §"Attribute Naming Convention"): lower-case ASCII
/// letters and digits only; at most 20 characters is a SHOULD, kept here as a must.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Unix milliseconds as RFC 3339 in UTC (`prost_types::Timestamp` prints that format).
fn rfc3339(ms: i64) -> Result<String, CloudEventError> {
    // 0000-01-01 to 9999-12-31: the range RFC 3339's four-digit year can hold.
    const MIN_S: i64 = -62_167_219_200;
    const MAX_S: i64 = 253_402_300_799;
    let seconds = ms.div_euclid(1000);
    if !(MIN_S..=MAX_S).contains(&seconds) {
        return Err(CloudEventError::Time(ms));
    }
    let nanos = (ms.rem_euclid(1000) * 1_000_000) as i32;
    Ok(prost_types::Timestamp { seconds, nanos }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> EventParts {
        EventParts {
            id: "evt_01J0000000000000000000000".into(),
            source: "/wa-onboard/tenants/acme".into(),
            kind: EventKind::StateChanged.into(),
            subject: "onboardings/0191a4b2-7c1e-7000-8000-000000000001".into(),
            time_ms: 1_700_000_000_123,
            reference: Some("shop-42".into()),
            data: json!({"type": "state_changed", "sequence": "7"}),
        }
    }

    #[test]
    fn the_json_format_carries_every_attribute() {
        let event = CloudEvent::new(parts()).unwrap();
        let body: Value = serde_json::from_slice(&event.to_body()).unwrap();
        assert_eq!(
            body,
            json!({
                "specversion": "1.0",
                "id": "evt_01J0000000000000000000000",
                "source": "/wa-onboard/tenants/acme",
                "type": "wa.onboard.onboarding.state_changed",
                "subject": "onboardings/0191a4b2-7c1e-7000-8000-000000000001",
                "time": "2023-11-14T22:13:20.123Z",
                "datacontenttype": "application/json",
                "reference": "shop-42",
                "data": {"type": "state_changed", "sequence": "7"},
            })
        );
        assert_eq!(event.id(), "evt_01J0000000000000000000000");
        assert_eq!(event.kind(), EventType::Onboarding(EventKind::StateChanged));
        let notice = CloudEvent::new(EventParts { kind: EventType::DestinationDisabled, ..parts() }).unwrap();
        assert_eq!(notice.to_json()["type"], "wa.onboard.destination.disabled");
        assert_eq!(notice.kind().token(), "destination_disabled");
    }

    #[test]
    fn an_empty_reference_is_omitted_and_whole_seconds_print_without_fraction() {
        let event = CloudEvent::new(EventParts { reference: Some(String::new()), time_ms: 0, ..parts() }).unwrap();
        let body = event.to_json();
        assert!(body.get("reference").is_none(), "{body}");
        assert_eq!(body["time"], "1970-01-01T00:00:00Z");
        let none = CloudEvent::new(EventParts { reference: None, ..parts() }).unwrap().to_json();
        assert!(none.get("reference").is_none());
    }

    #[test]
    fn required_attributes_are_validated() {
        let bad = |f: fn(&mut EventParts)| {
            let mut p = parts();
            f(&mut p);
            CloudEvent::new(p).unwrap_err()
        };
        assert_eq!(bad(|p| p.id.clear()), CloudEventError::Empty("id"));
        assert_eq!(bad(|p| p.source.clear()), CloudEventError::Empty("source"));
        assert_eq!(bad(|p| p.subject.clear()), CloudEventError::Empty("subject"));
        assert_eq!(bad(|p| p.source = "/a b".into()), CloudEventError::BadCharacters("source"));
        assert_eq!(bad(|p| p.id = "evt\n1".into()), CloudEventError::BadCharacters("id"));
        assert_eq!(bad(|p| p.time_ms = i64::MAX), CloudEventError::Time(i64::MAX));
    }

    #[test]
    fn every_kind_has_a_dotted_type_and_the_extension_name_is_legal() {
        for kind in EventKind::ALL {
            let t = type_name(kind);
            assert!(t.starts_with("wa.onboard.onboarding."), "{t}");
            assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'), "{t}");
        }
        assert!(is_valid_attribute_name(REFERENCE_EXTENSION));
        for reserved in ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"] {
            assert!(is_valid_attribute_name(reserved), "{reserved}");
            assert_ne!(reserved, REFERENCE_EXTENSION);
        }
        assert!(!is_valid_attribute_name("Reference"));
        assert!(!is_valid_attribute_name("ref_id"));
        assert!(!is_valid_attribute_name(""));
        assert!(!is_valid_attribute_name("abcdefghijklmnopqrstu"));
    }
}
