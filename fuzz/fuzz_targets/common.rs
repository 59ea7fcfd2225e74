//! Shared by the webhook targets: the built-in adapter for one provider, through the public
//! registry exactly as the ingress gets it, and [`webhook_target!`], the whole target.

use std::sync::Arc;

use wa_onboard::domain::account::{AccountOptions, Credentials};
use wa_onboard::domain::{AccountId, Secret};
use wa_onboard::providers::builtin::{AdapterDeps, registry};
use wa_onboard::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
use wa_onboard::providers::{CallContext, Provider};

pub fn adapter(credentials: Credentials) -> Arc<dyn Provider> {
    let deps = AdapterDeps {
        http: HttpClient::new(HttpTimeouts::default()).expect("client"),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy::default(),
        poll_interval: std::time::Duration::from_secs(5),
    };
    let ctx = CallContext {
        account_id: AccountId::parse("fuzz").expect("id"),
        credentials,
        options: AccountOptions { partner_name: Some("fuzz".into()), ..Default::default() },
        webhook_url: Secret::new("http://127.0.0.1:1/webhooks/x/fuzz/s"),
        base_url: "http://127.0.0.1:1".into(),
    };
    registry(&deps).provider_for(&ctx).expect("adapter")
}

/// The parser contract: no panic; same body, same dedupe keys.
pub fn check(p: &dyn Provider, data: &[u8]) {
    if let Ok(a) = p.parse_callback(data) {
        let b = p.parse_callback(data).expect("pure");
        assert_eq!(
            a.iter().map(|e| &e.dedupe_key).collect::<Vec<_>>(),
            b.iter().map(|e| &e.dedupe_key).collect::<Vec<_>>()
        );
    }
}

/// A webhook parser target: `webhook_target!(credentials expression)` builds the adapter once
/// (inside a runtime, as the HTTP client needs one) and checks [`check`] on every input.
macro_rules! webhook_target {
    ($credentials:expr) => {
        static ADAPTER: std::sync::OnceLock<std::sync::Arc<dyn wa_onboard::providers::Provider>> =
            std::sync::OnceLock::new();

        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            let p = ADAPTER.get_or_init(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                let _g = rt.enter();
                common::adapter($credentials)
            });
            common::check(p.as_ref(), data);
        });
    };
}
