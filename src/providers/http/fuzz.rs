//! Fuzz properties of the shared HTTP classification (issue 9 item 4): any status, any
//! `Retry-After`, any body, any URL: no panic, and the classes stay what the docs say.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;

use super::*;
use crate::fuzzing::{body, config, edge_i64};

/// A `Retry-After` value: delta-seconds of any size, HTTP-dates with absurd fields, junk.
fn retry_after_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        (
            "[A-Za-z]{3}",
            edge_i64(),
            proptest::sample::select(&["Jan", "Feb", "Mar", "Dec", "Foo"][..]),
            edge_i64(),
            edge_i64(),
            edge_i64(),
            edge_i64()
        )
            .prop_map(|(dow, d, mon, y, h, m, s)| format!("{dow}, {d} {mon} {y} {h}:{m}:{s} GMT")),
        any::<String>(),
    ]
}

fn headers_with(retry_after: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(retry_after) {
        h.insert(http::header::RETRY_AFTER, v);
    }
    h
}

/// An error-body hook like the adapters' (JSON with a status field), to drive the 2xx path.
struct StatusField;
impl ErrorBody for StatusField {
    fn check(&self, _s: StatusCode, body: &[u8]) -> Option<BodyError> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let s = v.get("status")?.as_str()?;
        (s != "success").then(|| BodyError { retryable: s == "later", reason: s.chars().take(40).collect() })
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn classify_never_panics_and_keeps_its_classes(
        code in 100u16..1000,
        ra in retry_after_value(),
        b in body(&["status", "message", "error", "code"]),
        idempotent in any::<bool>(),
    ) {
        let status = StatusCode::from_u16(code).expect("100..1000 is a valid status");
        let headers = headers_with(&ra);
        let plain = classify(status, &headers, &b, idempotent, &NoErrorBody);
        let hooked = classify(status, &headers, &b, idempotent, &StatusField);
        match code {
            200..=299 => prop_assert_eq!(&plain, &Outcome::Success),
            429 | 503 => prop_assert!(matches!(plain, Outcome::Retry { .. }), "unexpected class"),
            408 | 500..=599 => prop_assert!(matches!(plain, Outcome::Retry { .. } | Outcome::UnknownOutcome { .. }), "unexpected class"),
            _ => prop_assert!(matches!(plain, Outcome::Fail { .. }), "unexpected class"),
        }
        if !status.is_success() {
            prop_assert_eq!(&plain, &hooked);
        }
        if let Outcome::Retry { after: Some(d), .. } = plain {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
        prop_assert_eq!(oversized(status, idempotent) == Outcome::Success, false);
    }

    #[test]
    fn retry_after_is_bounded(ra in retry_after_value(), now_s in 0u64..4_000_000_000) {
        let now = UNIX_EPOCH + Duration::from_secs(now_s);
        if let Some(d) = retry_after(&headers_with(&ra), now) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn http_dates_parse_back_to_their_instant(secs in 0u64..253_402_300_799) {
        // Format `secs` as an IMF-fixdate (civil from days, Hinnant) and parse it back.
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let text = format!(
            "Mon, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
            MONTHS[(m - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        prop_assert_eq!(parse_http_date(&text), Some(UNIX_EPOCH + Duration::from_secs(secs)), "{}", text);
    }

    #[test]
    fn redacted_urls_keep_no_userinfo_or_query(
        user in "[a-z]{1,8}",
        pass in "[a-zA-Z0-9]{6,16}",
        path in "(/[a-z0-9._-]{0,6}){0,4}",
        q in "[a-zA-Z0-9]{6,16}",
    ) {
        let raw = format!("https://{user}:{pass}@api.example.test{path}?token={q}#{q}");
        if let Ok(u) = url::Url::parse(&raw) {
            let r = redact_url(&u);
            prop_assert!(!r.contains(&pass), "{}", r);
            prop_assert!(!r.contains(&q), "{}", r);
        }
    }

    #[test]
    fn every_failure_maps_to_a_provider_error(
        status in proptest::option::of(100u16..1000),
        after in proptest::option::of(0u64..100_000),
        kind in 0u8..3,
        reason in "[ -~]{0,40}",
    ) {
        let class = "fuzz.class".to_string();
        let url = "https://x.test/y".to_string();
        let f = match kind {
            0 => HttpFailure::Retryable { class, url, status, after: after.map(Duration::from_secs), reason },
            1 => HttpFailure::Fatal { class, url, status, reason },
            _ => HttpFailure::UnknownOutcome { class, url, reason },
        };
        let e = ProviderError::from(f.clone());
        // Only a `Fatal` failure is final; an unknown outcome is retried through a reconcile.
        prop_assert_eq!(e.is_retryable(), !matches!(f, HttpFailure::Fatal { .. }));
        let _ = crate::error::AppError::from((crate::domain::ProviderKind::Gupshup, e));
    }
}

/// Finding 1 (fuzzing, fixed): a `Retry-After` HTTP-date with an absurd year overflowed the
/// day arithmetic (a panic in debug builds, a wrapped instant in release).
#[test]
fn absurd_http_date_years_are_refused() {
    assert_eq!(parse_http_date("Sun, 06 Nov 9223372036854775807 08:49:37 GMT"), None);
    assert_eq!(parse_http_date("Sun, 06 Nov -9223372036854775808 08:49:37 GMT"), None);
    assert_eq!(parse_http_date("Sun, 06 Nov 1994 -1:49:37 GMT"), None);
}

/// Finding 2 (fuzzing, fixed): a huge `Retry-After` was believed as is; the engine then
/// truncated its milliseconds to `i64` (`as i64`), scheduling the retry at a wrapped time.
#[test]
fn huge_retry_after_is_capped() {
    let now = SystemTime::now();
    assert_eq!(retry_after(&headers_with("18446744073709551615"), now), Some(MAX_RETRY_AFTER));
    assert_eq!(retry_after(&headers_with("Fri, 31 Dec 9999 23:59:59 GMT"), now), Some(MAX_RETRY_AFTER));
    assert_eq!(retry_after(&headers_with("7"), now), Some(Duration::from_secs(7)));
}

/// Finding 3 (review of "no unbounded allocation", fixed): provider answers were read whole.
#[tokio::test]
async fn oversized_answers_are_not_read_whole() {
    use super::testserver::{Reply, TestServer};
    let big = "x".repeat(MAX_RESPONSE_BYTES + 1);
    let server = TestServer::start(vec![Reply::status(200).body(&big), Reply::status(200).body(&big)]).await;
    let client = HttpClient::new(HttpTimeouts::default()).expect("client");
    let get =
        client.send("fuzz.get", client.request(reqwest::Method::GET, server.url.clone()), true, &NoErrorBody).await;
    assert!(matches!(get, Err(HttpFailure::Fatal { status: Some(200), .. })), "{get:?}");
    let post =
        client.send("fuzz.post", client.request(reqwest::Method::POST, server.url.clone()), false, &NoErrorBody).await;
    assert!(matches!(post, Err(HttpFailure::UnknownOutcome { .. })), "{post:?}");
}
