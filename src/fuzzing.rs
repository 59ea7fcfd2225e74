//! Shared proptest strategies for the in-crate fuzz properties (issue 9 item 4): arbitrary
//! bytes, arbitrary JSON, and JSON "shaped" like a provider body (objects whose keys are
//! drawn mostly from the names the parser looks for, so serde gets past the first field).
//!
//! Case counts are bounded for CI (the whole set runs in seconds); `WA_FUZZ_CASES` raises
//! them for a longer local run, e.g. `WA_FUZZ_CASES=200000 cargo test --lib fuzz`.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

/// The proptest config of every fuzz property: `default` cases unless `WA_FUZZ_CASES` says
/// more, no regression files written into the source tree (findings become named tests).
pub(crate) fn config(default: u32) -> Config {
    let cases = std::env::var("WA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Integers that break arithmetic: the extremes, around zero, epoch-like values.
pub(crate) fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MAX / 1000 + 1),
        Just(-1),
        Just(0),
        Just(1),
        Just(1_700_000_000),
        Just(1_700_000_000_000),
        any::<i64>(),
        -1000i64..1000,
    ]
}

/// Short strings with the characters parsers split on, unicode, and control characters.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _:/.+@=-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        Just(String::new()),
        Just("live".to_string()),
        Just("ERROR".to_string()),
        Just("FAIL".to_string()),
        Just("error".to_string()),
        Just("success".to_string()),
        Just("data:image/png;base64,iVBORw0KGgo=".to_string()),
        Just("App 0f8fad5b-d9cb-469f-a165-70867728950e already exists".to_string()),
        Just("https://example.test/a/b/tok".to_string()),
        Just("Sun, 06 Nov 1994 08:49:37 GMT".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_i64().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
        edge_i64().prop_map(|n| Value::String(n.to_string())),
    ]
}

/// Arbitrary JSON, a few levels deep, with keys drawn from `keys` three times in four.
pub(crate) fn json_with(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    let key = move || {
        prop_oneof![
            3 => proptest::sample::select(if keys.is_empty() { &["k"][..] } else { keys }).prop_map(str::to_string),
            1 => "[a-z_]{0,8}",
        ]
    };
    leaf()
        .prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
            ]
        })
        .boxed()
}

/// An object at the top (most provider bodies are), keys from `keys`.
pub(crate) fn object_with(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    proptest::collection::vec(
        (
            proptest::sample::select(if keys.is_empty() { &["k"][..] } else { keys }).prop_map(str::to_string),
            json_with(keys),
        ),
        0..10,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    .boxed()
}

/// A body as a parser may receive it: raw bytes, a JSON text of any shape, or a shaped
/// object (the most useful), sometimes truncated.
pub(crate) fn body(keys: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        2 => json_with(keys).prop_map(|v| v.to_string().into_bytes()),
        5 => object_with(keys).prop_map(|v| v.to_string().into_bytes()),
        1 => (object_with(keys), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let mut b = v.to_string().into_bytes();
            let at = cut.index(b.len() + 1);
            b.truncate(at);
            b
        }),
    ]
    .boxed()
}
