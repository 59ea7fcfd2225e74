//! Fuzz properties of every Gupshup parser (issue 9 item 4): the callback parser, the 2xx
//! error-body hook, the error envelope, and each answer's model plus the function that
//! turns it into domain values. Any input: no panic, no secret-looking echo, stable keys.

use proptest::prelude::*;

use super::client::{GupshupErrors, app_id_in_message, jwt_ttl};
use super::model::{
    AppTokenResponse, ErrorEnvelope, LinkResponse, LoginResponse, PipelineResponse, SubscriptionList,
    SubscriptionResponse, app_list_items, modes_of_mask, scalar_text,
};
use super::{observe, to_domain};
use crate::fuzzing::{body, config, edge_i64, json_with, object_with};
use crate::providers::http::ErrorBody;

const CALLBACK_KEYS: &[&str] =
    &["app", "appId", "phone", "timestamp", "version", "type", "payload", "status", "event", "gs_app_id", "entry"];
const ANSWER_KEYS: &[&str] = &[
    "status",
    "message",
    "appId",
    "token",
    "id",
    "name",
    "isTpp",
    "whatsapp",
    "creationStage",
    "pipeLineStage",
    "pipelineStage",
    "stageRetries",
    "subscription",
    "subscriptions",
    "mode",
    "modes",
    "tag",
    "url",
    "active",
    "meta",
    "headers",
    "createdOn",
    "modifiedOn",
    "live",
    "data",
    "partnerAppsList",
    "apps",
];

/// A v2 callback envelope with fuzzed parts: reaches past the `type`/`payload` checks.
fn callback() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => body(CALLBACK_KEYS),
        3 => (
            proptest::sample::select(&["onboarding-event", "account-event", "message-event", ""][..]),
            proptest::sample::select(&["live", "tier-event", "review-event", "pndn-event", ""][..]),
            json_with(CALLBACK_KEYS),
            object_with(CALLBACK_KEYS),
            prop_oneof![Just(serde_json::Value::Null), edge_i64().prop_map(serde_json::Value::from), "[0-9a-z]{0,12}".prop_map(serde_json::Value::from)],
            "[0-9a-f-]{0,36}",
        )
            .prop_map(|(kind, ev, extra, inner, ts, app)| {
                serde_json::json!({
                    "app": "Acme", "appId": app, "phone": "15551112222", "timestamp": ts, "version": 2,
                    "type": kind, "payload": {"type": ev, "payload": inner, "extra": extra}
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn callbacks_never_panic_and_dedupe_stably(b in callback()) {
        match super::webhook::parse(&b) {
            Ok(events) => {
                prop_assert!(events.len() <= 1);
                let again = super::webhook::parse(&b).expect("pure: same input, same answer");
                prop_assert_eq!(
                    events.iter().map(|e| e.dedupe_key.clone()).collect::<Vec<_>>(),
                    again.iter().map(|e| e.dedupe_key.clone()).collect::<Vec<_>>()
                );
                for e in &events {
                    prop_assert!(!e.external_key.is_empty());
                    prop_assert!(e.dedupe_key.starts_with("gupshup:"));
                }
            }
            Err(e) => prop_assert!(matches!(e, crate::providers::ProviderError::Malformed { .. }), "unexpected class"),
        }
    }

    #[test]
    fn error_bodies_never_panic(b in body(ANSWER_KEYS), code in 200u16..300) {
        let status = http::StatusCode::from_u16(code).expect("2xx");
        let hook = GupshupErrors.check(status, &b);
        let env = ErrorEnvelope::parse(&b);
        // The hook fires exactly on `"status":"error"`.
        prop_assert_eq!(hook.is_some(), env.status.as_deref() == Some("error"));
        let _ = app_id_in_message(env.message.as_deref());
    }

    #[test]
    fn answers_never_panic(b in body(ANSWER_KEYS)) {
        if let Ok(login) = serde_json::from_slice::<LoginResponse>(&b) {
            let _ = jwt_ttl(&login.token);
            let _ = login.id.as_ref().and_then(scalar_text);
            let _ = (login.name, login.is_tpp);
        }
        if let Ok(link) = serde_json::from_slice::<LinkResponse>(&b) {
            let _ = link.app_id.len();
        }
        if let Ok(t) = serde_json::from_slice::<AppTokenResponse>(&b) {
            prop_assert!(t.token().is_none_or(|s| !s.is_empty()));
        }
        if let Ok(p) = serde_json::from_slice::<PipelineResponse>(&b) {
            let obs = observe(&p);
            prop_assert!(obs.state.is_some());
        }
        // The 409 recovery's app list (issue 17 point 9): any shape, no panic, digits only.
        if let Some(apps) = app_list_items(&b) {
            prop_assert!(apps.iter().all(|a| !a.id.is_empty() && a.phone.chars().all(|c| c.is_ascii_digit())));
        }
        if let Ok(list) = serde_json::from_slice::<SubscriptionList>(&b) {
            for w in list.subscriptions {
                // Header values never come back from the provider's copy; no id is an error.
                if let Ok(s) = to_domain(w) {
                    prop_assert!(!s.id.is_empty());
                    prop_assert!(s.spec.headers.values().all(|v| v.expose() == "[REDACTED]"));
                }
            }
        }
        if let Ok(one) = serde_json::from_slice::<SubscriptionResponse>(&b) {
            let _ = to_domain(one.subscription);
        }
    }

    #[test]
    fn jwt_claims_never_panic(exp in edge_i64(), junk in "[A-Za-z0-9_=.-]{0,40}") {
        use base64::Engine;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
        let _ = jwt_ttl(&format!("h.{claims}.s"));
        let _ = jwt_ttl(&junk);
    }

    #[test]
    fn subscription_masks_never_panic(mask in any::<i64>()) {
        prop_assert!(modes_of_mask(mask).len() <= 14);
    }
}
