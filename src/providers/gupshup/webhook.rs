//! Gupshup callbacks (docs/providers.md 1.4): the v2 envelope
//! `{app, appId, phone, timestamp, version, type, payload:{type, payload:{…}}}` carrying the
//! go-live `onboarding-event` and the `account-event`s. Pure: no I/O, no state.
//!
//! Gupshup signs nothing; the ingress authenticates by the secret in the URL path.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::model::scalar_text;
use crate::domain::OnboardingState;
use crate::providers::{CallbackEvent, ProviderError};

/// Envelope `type` of the go-live event.
const ONBOARDING_EVENT: &str = "onboarding-event";
/// Envelope `type` of account events.
const ACCOUNT_EVENT: &str = "account-event";

fn malformed(message: &str) -> ProviderError {
    ProviderError::Malformed { message: format!("gupshup callback: {message}") }
}

/// Decodes one callback body into events (zero or one: Gupshup sends one event per body).
///
/// Events that do not concern onboarding (messages, billing, v3 Meta-format bodies) decode
/// to no event rather than an error, so the ingress acknowledges them.
pub(super) fn parse(body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&format!("{:?}", e.classify())))?;
    let Value::Object(top) = &value else {
        return Err(malformed("not a JSON object"));
    };
    // v3 subscriptions wrap Meta's format with `gs_app_id` [C2]: message traffic, not ours.
    if top.contains_key("gs_app_id") && top.contains_key("entry") {
        return Ok(Vec::new());
    }
    let kind = top.get("type").and_then(Value::as_str).ok_or_else(|| malformed("no `type`"))?;
    if kind != ONBOARDING_EVENT && kind != ACCOUNT_EVENT {
        return Ok(Vec::new());
    }
    let outer = top.get("payload").and_then(Value::as_object).ok_or_else(|| malformed("no `payload` object"))?;
    let event_type = outer.get("type").and_then(Value::as_str).ok_or_else(|| malformed("no `payload.type`"))?;
    let empty = Map::new();
    let inner = match outer.get("payload") {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(malformed("`payload.payload` is not an object")),
    };
    // Route by appId [I] (the phone alone cannot route: our handle is keyed by appId).
    let Some(app_id) = top.get("appId").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        tracing::warn!(kind, event_type, "Gupshup callback without appId; ignored.");
        return Ok(Vec::new());
    };
    let occurred_ms = top.get("timestamp").and_then(|t| t.as_i64().or_else(|| t.as_str()?.parse().ok()));

    let mut fields = BTreeMap::new();
    fields.insert("type".to_string(), kind.to_string());
    fields.insert("event_type".to_string(), event_type.to_string());
    for key in ["app", "phone", "version"] {
        if let Some(v) = top.get(key).and_then(scalar_text) {
            fields.insert(key.to_string(), v);
        }
    }
    for (k, v) in inner {
        let text = match v {
            Value::Array(_) | Value::Object(_) => Some(canonical(v)),
            other => scalar_text(other),
        };
        if let Some(t) = text {
            fields.insert(k.clone(), t);
        }
    }

    let status = inner.get("status").and_then(scalar_text);
    let (raw_status, state) = match (kind, event_type) {
        (ONBOARDING_EVENT, _) => {
            let s = status.unwrap_or_default();
            // Only `status:"live"` has been seen [C]; anything else carries no state.
            let state = s.eq_ignore_ascii_case("live").then_some(OnboardingState::Live);
            (format!("{event_type}:{s}"), state)
        }
        // [I] Account events hint no canonical state. docs/providers.md does not say that a review
        // or display-name (pndn) rejection ends Gupshup's provisioning (its documented failure
        // signal is the pipeline's `creationStage: ERROR`, which the poll step sees), and a
        // rejection can be appealed, so mapping it to the terminal FAILED would be a guess
        // that cannot be undone. The raw values are kept in the event fields.
        (_, "tier-event") => {
            let e = inner.get("event").and_then(scalar_text).unwrap_or_default();
            (format!("{event_type}:{e}"), None)
        }
        (_, _) => match status {
            Some(s) => (format!("{event_type}:{s}"), None),
            None => (event_type.to_string(), None),
        },
    };

    Ok(vec![CallbackEvent {
        dedupe_key: dedupe_key(&value),
        external_key: app_id.to_string(),
        raw_status,
        state,
        fields,
        occurred_ms,
    }])
}

/// No provider event id exists in the v2 envelope, so the key is a digest of the canonical
/// event (sorted keys): the same event redelivered yields the same key whatever the key order.
fn dedupe_key(v: &Value) -> String {
    let digest = Sha256::digest(canonical(v).as_bytes());
    format!("gupshup:{}", hex::encode(&digest[..16]))
}

/// JSON with object keys sorted, independent of serde_json's map ordering features.
fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod unit {
    use serde_json::json;

    use super::*;

    const APP: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn account(event_type: &str, payload: Value, ts: i64) -> Vec<u8> {
        json!({"app": "AcmeSupport", "appId": APP, "phone": "919087875656", "timestamp": ts, "version": 2,
               "type": "account-event", "payload": {"type": event_type, "payload": payload}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn live_event() {
        let body = json!({"app": "AcmeSupport", "appId": APP, "phone": "919087875656", "timestamp": 1636986446609i64,
            "version": 2, "type": "onboarding-event",
            "payload": {"type": "docker-status-event", "payload": {"status": "live", "waId": "919087875656"}}});
        let evs = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!(e.external_key, APP);
        assert_eq!(e.state, Some(OnboardingState::Live));
        assert_eq!(e.raw_status, "docker-status-event:live");
        assert_eq!(e.occurred_ms, Some(1636986446609));
        assert_eq!(e.fields["waId"], "919087875656");
        assert!(e.dedupe_key.starts_with("gupshup:"));
    }

    #[test]
    fn account_events_carry_raw_values_and_no_state() {
        let cases = [
            ("review-event", json!({"status": "REJECTED", "actionDate": 1}), "review-event:REJECTED", "status"),
            (
                "status-event",
                json!({"status": "ACCOUNT_VIOLATION", "violation_type": "SPAM"}),
                "status-event:ACCOUNT_VIOLATION",
                "violation_type",
            ),
            (
                "pndn-event",
                json!({"status": "rejected", "rejectedReason": "INVALID_FORMAT"}),
                "pndn-event:rejected",
                "rejectedReason",
            ),
            (
                "tier-event",
                json!({"event": "UPGRADE", "oldLimit": "TIER_1K", "currentLimit": "TIER_10K"}),
                "tier-event:UPGRADE",
                "currentLimit",
            ),
            (
                "capability-event",
                json!({"maxDailyConversationPerPhone": 1000, "maxPhoneNumbersPerBusiness": 2}),
                "capability-event",
                "maxPhoneNumbersPerBusiness",
            ),
        ];
        let mut keys = std::collections::HashSet::new();
        for (t, p, raw, field) in cases {
            let evs = parse(&account(t, p, 1700000000000)).unwrap();
            assert_eq!(evs.len(), 1, "{t}");
            assert_eq!(evs[0].raw_status, raw);
            assert_eq!(evs[0].state, None, "{t}");
            assert!(evs[0].fields.contains_key(field), "{t}: {:?}", evs[0].fields);
            assert_eq!(evs[0].fields["event_type"], t);
            assert_eq!(evs[0].occurred_ms, Some(1700000000000));
            assert!(keys.insert(evs[0].dedupe_key.clone()), "dedupe keys must differ between events");
        }
        let restricted = json!({"status": "ACCOUNT_RESTRICTED",
            "restrictionInfo": [{"restrictionType": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1}]});
        let evs = parse(&account("status-event", restricted, 1)).unwrap();
        assert!(evs[0].fields["restrictionInfo"].contains("RESTRICTED_BIZ_INITIATED_MESSAGING"));
    }

    #[test]
    fn dedupe_key_ignores_key_order_but_not_content() {
        let a = br#"{"appId":"x","type":"account-event","timestamp":5,"payload":{"type":"tier-event","payload":{"event":"UPGRADE"}}}"#;
        let b = br#"{"payload":{"payload":{"event":"UPGRADE"},"type":"tier-event"},"timestamp":5,"type":"account-event","appId":"x"}"#;
        let c = br#"{"appId":"x","type":"account-event","timestamp":6,"payload":{"type":"tier-event","payload":{"event":"UPGRADE"}}}"#;
        let k = |b: &[u8]| parse(b).unwrap()[0].dedupe_key.clone();
        assert_eq!(k(a), k(b));
        assert_ne!(k(a), k(c));
    }

    #[test]
    fn unrelated_or_unroutable_bodies_yield_nothing() {
        let msg =
            br#"{"app":"a","appId":"x","timestamp":1,"version":2,"type":"message-event","payload":{"type":"sent"}}"#;
        assert!(parse(msg).unwrap().is_empty());
        let v3 = br#"{"object":"whatsapp_business_account","entry":[],"gs_app_id":"x"}"#;
        assert!(parse(v3).unwrap().is_empty());
        let no_app = br#"{"type":"account-event","payload":{"type":"tier-event","payload":{}}}"#;
        assert!(parse(no_app).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_malformed() {
        for g in [
            &b""[..],
            b"[]",
            b"42",
            b"{}",
            b"{\"type\":\"account-event\"}",
            b"{\"type\":\"onboarding-event\",\"payload\":{}}",
        ] {
            assert!(matches!(parse(g), Err(ProviderError::Malformed { .. })), "{:?}", String::from_utf8_lossy(g));
        }
    }
}
