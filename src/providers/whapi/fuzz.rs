//! Fuzz properties of every Whapi parser (issue 9 item 4): `channel` / `users` webhooks, the
//! 2xx error-body hook, and each manager / gate answer with the functions that turn it into
//! domain values. Any input: no panic; the channel token never reaches an observation.

use proptest::prelude::*;

use super::channels::{decode_png, expiry, info};
use super::client::{WhapiErrorBody, decode};
use super::model::{
    Channel, ChannelList, Deleted, Health, LoginQr, LoginRowdata, PairingCode, Partner, ProjectList, events_of,
    webhooks_of,
};
use super::pipeline::with_ingress;
use super::subscriptions::to_subscription;
use super::{handle_for, health_observation, stopped_observation};
use crate::fuzzing::{body, config, edge_i64, json_with, object_with, text};
use crate::providers::ProviderError;
use crate::providers::http::ErrorBody;

const KEYS: &[&str] = &[
    "event",
    "type",
    "channel_id",
    "health",
    "status",
    "code",
    "text",
    "start_at",
    "uptime",
    "user",
    "id",
    "name",
    "qr",
    "expires_in",
    "channels",
    "projects",
    "projectId",
    "apiUrl",
    "token",
    "creationTS",
    "activeTill",
    "mode",
    "stopped",
    "phone",
    "balance",
    "days",
    "trialDays",
    "liveDays",
    "base64",
    "rowdata",
    "expire",
    "pairing_code",
    "refundedDays",
    "webhooks",
    "events",
    "method",
    "url",
    "headers",
    "error",
    "message",
];

/// A webhook with the documented envelope and fuzzed parts.
fn webhook() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => body(KEYS),
        3 => (
            proptest::sample::select(&["channel", "users", "messages", "CHANNEL", ""][..]),
            proptest::sample::select(&["post", "patch", "delete", "put", ""][..]),
            "[A-Z0-9-]{0,12}",
            object_with(KEYS),
            (edge_i64(), edge_i64(), edge_i64(), text()),
            json_with(KEYS),
        )
            .prop_map(|(kind, ev, channel, extra, (code, start, up, t), user)| {
                serde_json::json!({
                    "event": {"type": kind, "event": ev}, "channel_id": channel,
                    "health": {"status": {"code": code, "text": t}, "start_at": start, "uptime": up},
                    "user": user, "qr": extra
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

/// A channel object with fuzzed fields (edge integers in the time fields).
fn channel_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => body(KEYS),
        2 => (text(), text(), proptest::option::of(edge_i64()), proptest::option::of(edge_i64()), any::<bool>(), text())
            .prop_map(|(id, mode, till, created, stopped, phone)| {
                serde_json::json!({
                    "id": id, "name": "n", "projectId": "p", "apiUrl": "https://gate.example.test",
                    "token": "SECRET-CHANNEL-TOKEN", "creationTS": created, "activeTill": till,
                    "mode": mode, "status": "active", "stopped": stopped, "phone": phone
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn webhooks_never_panic_and_dedupe_stably(b in webhook()) {
        match super::webhook::parse(&b) {
            Ok(events) => {
                prop_assert_eq!(events.len(), 1);
                let again = super::webhook::parse(&b).expect("pure");
                prop_assert_eq!(&events[0].dedupe_key, &again[0].dedupe_key);
                prop_assert!(!events[0].external_key.trim().is_empty());
            }
            Err(e) => prop_assert!(matches!(e, ProviderError::Malformed { .. }), "unexpected class"),
        }
    }

    #[test]
    fn error_bodies_never_panic(b in body(KEYS), code in 200u16..300) {
        let _ = WhapiErrorBody.check(http::StatusCode::from_u16(code).expect("2xx"), &b);
    }

    #[test]
    fn channel_answers_never_panic_nor_leak_the_token(b in channel_json(), go_live in any::<bool>()) {
        if let Ok(ch) = decode::<Channel>("fuzz", &b) {
            let view = info(&ch, "AUTH".into());
            prop_assert_eq!(view.stopped, ch.is_stopped());
            let obs = stopped_observation(&ch);
            prop_assert!(obs.fields.values().all(|v| !v.contains("SECRET-CHANNEL-TOKEN")));
            let h = handle_for(&ch, go_live);
            prop_assert!(!h.data.to_string().contains("SECRET-CHANNEL-TOKEN"));
            let health = Health::default();
            let obs = health_observation(&health, Some(&ch), go_live);
            prop_assert!(obs.fields.values().all(|v| !v.contains("SECRET-CHANNEL-TOKEN")));
        }
        if let Ok(list) = decode::<ChannelList>("fuzz", &b) {
            for ch in list.into_vec() {
                let _ = info(&ch, String::new());
            }
        }
        let _ = decode::<ProjectList>("fuzz", &b).map(ProjectList::into_vec);
        let _ = decode::<Partner>("fuzz", &b);
        let _ = decode::<Deleted>("fuzz", &b);
    }

    #[test]
    fn gate_answers_never_panic(b in body(KEYS), go_live in any::<bool>()) {
        if let Ok(h) = decode::<Health>("fuzz", &b) {
            let _ = h.at_ms();
            let obs = health_observation(&h, None, go_live);
            prop_assert!(obs.state.is_some());
        }
        if let Ok(qr) = decode::<LoginQr>("fuzz", &b) {
            if let Some(b64) = qr.base64.as_deref() {
                let _ = decode_png(b64);
            }
            let _ = expiry(qr.expire);
        }
        if let Ok(rd) = decode::<LoginRowdata>("fuzz", &b) {
            let _ = expiry(rd.expire);
        }
        if let Ok(pc) = decode::<PairingCode>("fuzz", &b) {
            let _ = expiry(pc.expire);
        }
    }

    #[test]
    fn settings_never_panic(settings in object_with(KEYS), ingress in text()) {
        let hooks = webhooks_of(&settings);
        for w in &hooks {
            let _ = events_of(w);
            let s = to_subscription(w);
            prop_assert!(s.spec.headers.values().all(|v| v.expose() == "[REDACTED]"));
        }
        let (merged, _) = with_ingress(hooks, &ingress);
        let (_, changed_again) = with_ingress(merged, &ingress);
        // Idempotent: a second merge changes nothing.
        prop_assert!(!changed_again);
    }

    #[test]
    fn expiries_never_panic(s in proptest::option::of(edge_i64())) {
        if let Some(at) = expiry(s) {
            prop_assert!(at > 0);
        }
    }
}

/// Finding 4 (fuzzing, fixed): a `channel` webhook whose health had `start_at`/`uptime` near
/// `i64::MAX` overflowed `at_ms` (a panic in debug builds, a wrapped time in release).
#[test]
fn huge_health_times_do_not_overflow() {
    let body = serde_json::json!({
        "event": {"type": "channel", "event": "post"}, "channel_id": "CH-1",
        "health": {"status": {"code": 4, "text": "AUTH"}, "start_at": i64::MAX, "uptime": i64::MAX}
    });
    let events = super::webhook::parse(body.to_string().as_bytes()).expect("parses");
    assert_eq!(events[0].occurred_ms, None);
}

/// Finding 5 (fuzzing, fixed): a QR or pairing code with `expires_in` near `i64::MAX`
/// overflowed the expiry arithmetic.
#[test]
fn huge_code_expiries_saturate() {
    assert_eq!(expiry(Some(i64::MAX)), Some(i64::MAX));
    assert_eq!(expiry(Some(-5)), None);
}
