//! Fuzz properties of every 99digital parser (issue 9 item 4): the partner webhook, the
//! `FAIL` envelope hook and reason tables, and each answer's model with the function that
//! reads it into domain values. Any input: no panic.

use proptest::prelude::*;

use super::client::{FailBody, failure_reason, login_error, reason_error};
use super::model::{AccountsAnswer, CreateAccountAnswer, Envelope, LoginAnswer, WebhookAnswer};
use super::read_account;
use crate::fuzzing::{body, config, edge_i64, json_with, text};
use crate::providers::ProviderError;
use crate::providers::http::{ErrorBody, HttpFailure};

const KEYS: &[&str] = &[
    "status",
    "reason",
    "access_token",
    "expiration_time",
    "token_type",
    "url",
    "list",
    "whatsapp",
    "expiration",
    "onboarding_link",
    "comment",
    "landing_page",
    "create_time",
    "coexistence",
    "business_name",
    "display_name",
    "reference",
    "type",
    "event",
    "timestamp",
];

/// A webhook item with the documented fields, values fuzzed (numbers as strings too).
fn webhook() -> impl Strategy<Value = Vec<u8>> {
    let item = (
        proptest::sample::select(&["whatsapp", "builder", "partners", "WhatsApp"][..]),
        text(),
        json_with(KEYS),
        json_with(KEYS),
        prop_oneof![edge_i64().prop_map(serde_json::Value::from), text().prop_map(serde_json::Value::from)],
        proptest::option::of(edge_i64()),
    )
        .prop_map(
            |(kind, event, number, reference, status, ts): (
                &str,
                String,
                serde_json::Value,
                serde_json::Value,
                serde_json::Value,
                Option<i64>,
            )| {
                serde_json::json!({
                    "type": kind, "event": event, "whatsapp": number, "reference": reference,
                    "status": status, "timestamp": ts
                })
            },
        )
        .boxed();
    prop_oneof![
        2 => body(KEYS),
        2 => item.clone().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(item, 0..4).prop_map(|v| serde_json::Value::Array(v).to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn webhooks_never_panic_and_dedupe_stably(b in webhook()) {
        match super::webhook::parse(&b) {
            Ok(events) => {
                let again = super::webhook::parse(&b).expect("pure");
                prop_assert_eq!(events.len(), again.len());
                for (a, b) in events.iter().zip(&again) {
                    prop_assert_eq!(&a.dedupe_key, &b.dedupe_key);
                    prop_assert!(!a.external_key.is_empty());
                    prop_assert!(a.external_key.chars().all(|c| c.is_ascii_digit()));
                }
            }
            Err(e) => prop_assert!(matches!(e, ProviderError::Malformed { .. }), "unexpected class"),
        }
    }

    #[test]
    fn fail_bodies_never_panic_and_round_trip_their_reason(b in body(KEYS), code in 200u16..300) {
        let status = http::StatusCode::from_u16(code).expect("2xx");
        if let Some(found) = FailBody.check(status, &b) {
            let f = HttpFailure::Fatal { class: "fuzz".into(), url: "-".into(), status: Some(code), reason: found.reason };
            // What the hook writes, `failure_reason` reads back.
            let n = failure_reason(&f);
            prop_assert!(n.is_some());
            let _ = reason_error(n.unwrap_or_default());
        }
    }

    #[test]
    fn reason_tables_are_total(n in edge_i64()) {
        let _ = reason_error(n);
        let _ = login_error(n);
    }

    #[test]
    fn answers_never_panic(b in body(KEYS), number in "[0-9]{0,15}", temp in proptest::option::of("[0-9]{0,15}")) {
        let _ = serde_json::from_slice::<Envelope>(&b);
        if let Ok(l) = serde_json::from_slice::<LoginAnswer>(&b) {
            let _ = (l.access_token.map(|t| t.len()), l.expiration_time);
        }
        let _ = serde_json::from_slice::<WebhookAnswer>(&b).map(|w| w.url);
        let _ = serde_json::from_slice::<CreateAccountAnswer>(&b).map(|c| (c.onboarding_link, c.landing_page));
        if let Ok(a) = serde_json::from_slice::<AccountsAnswer>(&b) {
            for acc in &a.list {
                let r = read_account(acc, &number, temp.as_deref());
                prop_assert!(r.obs.state.is_some());
                // The number asked for is shown until the business finishes.
                if !r.finished && crate::domain::E164::parse(&number).is_ok() {
                    prop_assert!(r.details.phone.is_some());
                }
            }
        }
    }
}

/// Finding-free guard: a timestamp of `i64::MAX` (kept as ms) and one just under the
/// seconds/ms threshold both stay in range.
#[test]
fn webhook_timestamps_stay_in_range() {
    for ts in [i64::MAX, 100_000_000_000, 1] {
        let body = serde_json::json!({"type": "whatsapp", "whatsapp": "15551112222", "status": 1, "timestamp": ts});
        let events = super::webhook::parse(body.to_string().as_bytes()).expect("parses");
        assert!(events[0].occurred_ms.is_some_and(|t| t > 0));
    }
}
