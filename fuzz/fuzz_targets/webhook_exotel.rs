#![no_main]
//! The exotel callback parser, through the built-in adapter.

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use wa_onboard::domain::Secret;
use wa_onboard::domain::account::Credentials;
use wa_onboard::providers::Provider;

#[path = "common.rs"]
mod common;

static ADAPTER: OnceLock<Arc<dyn Provider>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let p = ADAPTER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let _g = rt.enter();
        common::adapter(Credentials::Exotel { account_sid: "a".into(), api_key: "k".into(), api_token: Secret::new("t") })
    });
    common::check(p.as_ref(), data);
});
