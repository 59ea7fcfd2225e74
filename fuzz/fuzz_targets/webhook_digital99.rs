#![no_main]
//! The digital99 callback parser, through the built-in adapter.

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
        common::adapter(Credentials::Digital99 { client_id: "c".into(), client_secret: Secret::new("s") })
    });
    common::check(p.as_ref(), data);
});
