//! Decoding of Whapi `channel` and `users` webhooks (docs/providers.md §3.5). Whapi signs nothing:
//! the ingress authenticates by the secret in the path before this runs.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::model::Callback;
use crate::domain::OnboardingState;
use crate::providers::{CallbackEvent, ProviderError};

/// Raw status of a `users`/`post` event (the phone linked).
pub(crate) const RAW_LOGIN: &str = "LOGIN";
/// Raw status of a `users`/`delete` event (the phone unlinked).
pub(crate) const RAW_LOGOUT: &str = "LOGOUT";

fn malformed(message: &str) -> ProviderError {
    ProviderError::Malformed { message: message.to_string() }
}

/// Decodes one webhook body into (at most) one event.
///
/// Whapi events carry no id, so the dedupe key is a digest of the canonical JSON body: a
/// redelivery is byte-for-byte the same event. [I] Two `users` events with identical bodies
/// (the same phone logging in twice) dedupe into one; the polled `await_connection` step still
/// sees the second login through `/health`, so only the wake-up is lost.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(&format!("webhook body did not parse ({:?})", e.classify())))?;
    if !value.is_object() {
        return Err(malformed("webhook body is not a JSON object"));
    }
    let cb: Callback = serde_json::from_value(value.clone())
        .map_err(|e| malformed(&format!("webhook body has no event / channel_id ({:?})", e.classify())))?;
    if cb.channel_id.trim().is_empty() {
        return Err(malformed("webhook without channel_id"));
    }
    // serde_json's map is ordered by key, so this is canonical whatever the sender's order. It
    // is the dedupe key's input: hashing an empty fallback would merge every such event in one.
    let canonical = serde_json::to_vec(&value).map_err(|_| malformed("webhook body does not re-serialise"))?;
    let digest = hex::encode(&Sha256::digest(&canonical)[..12]);
    let kind = cb.event.kind.to_ascii_lowercase();
    let event = cb.event.event.to_ascii_lowercase();
    let mut fields = BTreeMap::from([("event".to_string(), format!("{kind}.{event}"))]);

    let (raw_status, state, occurred_ms) = match (kind.as_str(), event.as_str()) {
        ("users", "post") => {
            let user = cb.user.ok_or_else(|| malformed("users event without user"))?;
            fields.insert("phone".into(), user.id);
            // The login means "connected", but whether that is LIVE or PROVISIONING depends
            // on a pending go_live that a pure parser cannot know: no hint, the woken
            // `await_connection` step decides.
            (RAW_LOGIN.to_string(), None, None)
        }
        ("users", "delete") => {
            if let Some(u) = cb.user {
                fields.insert("phone".into(), u.id);
            }
            fields.insert("reason".into(), "the phone was logged out of the channel".into());
            (RAW_LOGOUT.to_string(), Some(OnboardingState::AwaitingCustomer), None)
        }
        // [I] QR refreshes (`channel`/`patch`) have no documented payload: without a health
        // object the event is kept, with no state.
        ("channel", _) if cb.health.is_none() => (format!("{kind}.{event}"), None, None),
        ("channel", _) => {
            let health = cb.health.unwrap_or_default();
            let text = health.text();
            fields.insert("health_code".into(), health.status.code.to_string());
            if let Some(qr) = cb.qr.as_ref().and_then(|q| q.get("expires_in")).and_then(Value::as_i64) {
                fields.insert("qr_expires_in".into(), qr.to_string());
            }
            let state = if text == "ERROR" {
                fields.insert("reason".into(), "the channel reported health ERROR".into());
                Some(OnboardingState::AwaitingCustomer)
            } else {
                // INIT / LAUNCH / QR say nothing new; AUTH is decided by the woken step
                // (LIVE or PROVISIONING, see above).
                None
            };
            (text, state, health.at_ms())
        }
        _ => (format!("{kind}.{event}"), None, None),
    };
    Ok(vec![CallbackEvent {
        dedupe_key: format!("whapi:{}:{kind}.{event}:{digest}", cb.channel_id),
        external_key: cb.channel_id,
        raw_status,
        state,
        fields,
        occurred_ms,
    }])
}
