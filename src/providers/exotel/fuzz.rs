//! Fuzz properties of every Exotel parser (issue 9 item 4): the ingress parser (which
//! refuses everything), the `isv` error hook and status mapping, and the mint / validate
//! answers with the functions that read them. Any input: no panic.

use proptest::prelude::*;

use super::client::redacted_excerpt;
use super::client::{IsvBody, to_error};
use super::model::{Envelope, ValidateData, create_urls};
use super::{TokenReading, minted, token_of};
use crate::fuzzing::{body, config, edge_i64, json_with, text};
use crate::providers::ProviderError;
use crate::providers::http::{ErrorBody, HttpFailure};

const KEYS: &[&str] = &[
    "request_id",
    "method",
    "http_code",
    "response",
    "whatsapp",
    "isv",
    "code",
    "status",
    "error_data",
    "message",
    "description",
    "data",
    "onboarding_url",
    "onboarding_urls",
    "onboarding_token_status",
];

/// The documented envelope with fuzzed `isv` parts.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => body(KEYS),
        3 => (edge_i64(), text(), json_with(KEYS), json_with(KEYS))
            .prop_map(|(code, status, err, data)| {
                serde_json::json!({
                    "request_id": "r", "method": "POST", "http_code": 200,
                    "response": {"whatsapp": {"isv": {"code": code, "status": status, "error_data": err, "data": data}}}
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn callbacks_are_always_refused(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(matches!(super::webhook::parse(&b), Err(ProviderError::Malformed { .. })), "unexpected class");
    }

    #[test]
    fn isv_bodies_never_panic_and_map_to_errors(b in answer(), code in 200u16..300) {
        if let Some(found) = IsvBody.check(http::StatusCode::from_u16(code).expect("2xx"), &b) {
            let f = if found.retryable {
                HttpFailure::Retryable { class: "fuzz".into(), url: "-".into(), status: Some(code), after: None, reason: found.reason }
            } else {
                HttpFailure::Fatal { class: "fuzz".into(), url: "-".into(), status: Some(code), reason: found.reason }
            };
            let _ = to_error(f);
        }
    }

    #[test]
    fn answers_never_panic(b in answer(), minted_ms in edge_i64()) {
        if let Some(urls) = serde_json::from_slice::<serde_json::Value>(&b).ok().as_ref().and_then(create_urls) {
            for url in urls {
                if let Ok(link) = minted(url, minted_ms) {
                    prop_assert!(!link.token.is_empty());
                }
            }
        }
        let excerpt = redacted_excerpt(&b, &["sandbox-token"]);
        prop_assert!(!excerpt.contains("sandbox-token"));
        if let Some(isv) = serde_json::from_slice::<Envelope<ValidateData>>(&b).ok().and_then(Envelope::isv)
            && let Some(d) = isv.data
        {
            let r = TokenReading::new(d.onboarding_token_status);
            let _ = r.observation();
            let _ = r.customers_remaining();
        }
    }

    #[test]
    fn token_urls_never_panic(u in text()) {
        if let Ok(t) = token_of(&u) {
            prop_assert!(!t.is_empty());
        }
    }
}
