//! The 99digital partner webhook (docs/providers.md §4.4): one JSON `POST` per event. Only
//! `type: "whatsapp"` events concern onboardings; `builder` / `partners` events are ignored.
//! [I] The payload fields are not published; see [`super::model::WebhookEvent`].

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::model::WebhookEvent;
use crate::domain::OnboardingState;
use crate::providers::{CallbackEvent, ProviderError};

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::Malformed { message: message.into() }
}

/// Digits of a phone number as 99digital writes it (international, no `+`).
pub(super) fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Decodes one webhook body (an object, or an array of them) into events.
pub(super) fn parse(body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("99digital webhook is not JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err(malformed("99digital webhook is neither an object nor an array")),
    };
    let mut events = Vec::new();
    for item in items {
        // Same item, same bytes (serde_json maps are sorted): a stable dedupe fallback.
        let fingerprint = hex::encode(Sha256::digest(item.to_string().as_bytes()));
        let ev: WebhookEvent =
            serde_json::from_value(item).map_err(|e| malformed(format!("99digital webhook event: {e}")))?;
        let kind = ev.kind.clone().unwrap_or_else(|| "whatsapp".to_string());
        if !kind.eq_ignore_ascii_case("whatsapp") {
            continue;
        }
        let number = ev.whatsapp.as_deref().map(digits).filter(|d| !d.is_empty());
        let Some(number) = number else {
            return Err(malformed("99digital whatsapp webhook without a whatsapp number"));
        };
        let event = ev.event.clone().unwrap_or_default();
        let finished = ev.status == Some(1) || event.eq_ignore_ascii_case("onboarding_finished");
        let raw_status = if event.is_empty() { format!("status {}", ev.status.unwrap_or(0)) } else { event.clone() };
        // Unix seconds [I]; a value that is clearly in ms is kept as is.
        let occurred_ms = ev.timestamp.filter(|t| *t > 0).map(|t| if t > 100_000_000_000 { t } else { t * 1000 });
        let dedupe_key = match ev.timestamp {
            Some(t) => format!("digital99:{kind}:{event}:{number}:{}:{t}", ev.status.unwrap_or(0)),
            None => format!("digital99:{fingerprint}"),
        };
        let mut fields = BTreeMap::new();
        fields.insert("type".to_string(), kind);
        if !event.is_empty() {
            fields.insert("event".to_string(), event);
        }
        fields.insert("whatsapp".to_string(), number.clone());
        if let Some(r) = ev.reference.filter(|r| !r.is_empty()) {
            fields.insert("reference".to_string(), r);
        }
        if let Some(s) = ev.status {
            fields.insert("status".to_string(), s.to_string());
        }
        events.push(CallbackEvent {
            dedupe_key,
            external_key: number,
            raw_status,
            state: finished.then_some(OnboardingState::Live),
            fields,
            occurred_ms,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_event_routes_by_number_with_stable_key() {
        let body = br#"{"type":"whatsapp","event":"onboarding_finished","whatsapp":"972501234567","reference":"r1","status":1,"timestamp":1739874663}"#;
        let a = parse(body).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].external_key, "972501234567");
        assert_eq!(a[0].state, Some(OnboardingState::Live));
        assert_eq!(a[0].occurred_ms, Some(1_739_874_663_000));
        assert_eq!(a[0].fields["reference"], "r1");
        assert_eq!(parse(body).unwrap()[0].dedupe_key, a[0].dedupe_key);
    }

    #[test]
    fn other_types_ignored_and_garbage_malformed() {
        assert!(parse(br#"{"type":"builder","id":1}"#).unwrap().is_empty());
        assert!(parse(br#"[]"#).unwrap().is_empty());
        for bad in [&b""[..], b"{", b"42", br#"{"type":"whatsapp"}"#, br#"{"whatsapp":{"x":1}}"#] {
            assert!(matches!(parse(bad), Err(ProviderError::Malformed { .. })), "{bad:?}");
        }
        // No timestamp: still a stable key, and no occurrence time.
        let body = br#"{"type":"whatsapp","whatsapp":"972501234567","status":0}"#;
        let e = parse(body).unwrap();
        assert_eq!(e[0].dedupe_key, parse(body).unwrap()[0].dedupe_key);
        assert_eq!((e[0].state, e[0].occurred_ms), (None, None));
    }
}
