#![no_main]
//! Shared HTTP classification: any status, Retry-After value and body.

use libfuzzer_sys::fuzz_target;
use wa_onboard::providers::http::{MAX_RETRY_AFTER, NoErrorBody, Outcome, classify, retry_after};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let code = 100 + u16::from_be_bytes([data[0], data[1]]) % 900;
    let Ok(status) = http::StatusCode::from_u16(code) else { return };
    let split = 2 + usize::from(data[2]).min(data.len() - 3);
    let (ra, body) = data[3..].split_at(split - 2);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(ra) {
        headers.insert(http::header::RETRY_AFTER, v);
    }
    if let Some(d) = retry_after(&headers, std::time::SystemTime::now()) {
        assert!(d <= MAX_RETRY_AFTER);
    }
    let o = classify(status, &headers, body, data[2] % 2 == 0, &NoErrorBody);
    if status.is_success() {
        assert_eq!(o, Outcome::Success);
    }
});
