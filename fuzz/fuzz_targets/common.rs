//! Shared by the webhook targets: the built-in adapter for one provider, through the public
//! registry exactly as the ingress gets it.

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
