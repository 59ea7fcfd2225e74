//! The conformance suite every adapter must pass (style §1: a library of checks, as in
//! `object_store::integration`). Each adapter's tests call [`run_all`] (or single checks)
//! with a [`ConformanceHarness`] backed by its simulator. Checks panic with a message on
//! failure, like assertions.

use async_trait::async_trait;

use super::{CallContext, Provider, ProviderError, ProviderHandle, StartOutcome, StartRequest};
use crate::domain::{Capability, OnboardingState};

/// A fault to inject on the next create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next create answers 5xx without creating.
    ServerError,
    /// The next create answers 429 without creating.
    RateLimited,
    /// The next create happens, but the caller cannot learn it (timeout after sending).
    UnknownOutcome,
}

/// What an adapter's simulator supplies so the shared checks can drive it.
#[async_trait]
pub trait ConformanceHarness: Send + Sync {
    /// A context for a valid account.
    fn ctx(&self) -> CallContext;
    /// A start request the provider accepts, with this idempotency key.
    fn valid_start(&self, idempotency_key: &str) -> StartRequest;
    /// A start request the provider (or adapter) refuses as invalid.
    fn invalid_start(&self, idempotency_key: &str) -> StartRequest;
    /// Makes the business owner finish onboarding for this resource.
    async fn finish_customer(&self, handle: &ProviderHandle);
    /// Injects a fault on the next create call.
    async fn inject_next_create(&self, fault: Fault);
    /// How many resources the provider has created so far.
    async fn resources_created(&self) -> u64;
    /// A valid callback body about this resource.
    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8>;
}

/// Polls allowed to reach `LIVE` after the customer finished.
const MAX_POLLS: usize = 10;

fn must<T>(r: Result<T, ProviderError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

async fn start(p: &dyn Provider, h: &dyn ConformanceHarness, key: &str) -> StartOutcome {
    must(p.start_onboarding(&h.ctx(), &h.valid_start(key)).await, "start_onboarding")
}

/// Advertised capabilities are a duplicate-free subset of what the provider's API offers.
pub async fn check_capabilities(p: &dyn Provider, _h: &dyn ConformanceHarness) {
    let api = p.kind().capabilities();
    let caps = p.capabilities();
    for (i, c) in caps.iter().enumerate() {
        assert!(api.contains(c), "{:?} advertised but {} offers no such capability", c, p.kind());
        assert!(!caps[..i].contains(c), "{c:?} advertised twice");
    }
}

/// Start yields an open state; after the customer finishes, polling reaches `LIVE`.
pub async fn check_start_then_poll(p: &dyn Provider, h: &dyn ConformanceHarness) {
    let out = start(p, h, "conf-start-poll").await;
    assert!(!out.handle.external_key.is_empty(), "empty external key");
    assert!(!out.reconciled, "a fresh key must create, not reconcile");
    let first = must(p.poll(&h.ctx(), &out.handle).await, "poll");
    assert!(first.state.is_some_and(|s| !s.is_terminal()), "fresh onboarding polled as {:?}", first.state);
    h.finish_customer(&out.handle).await;
    for _ in 0..MAX_POLLS {
        let obs = must(p.poll(&h.ctx(), &out.handle).await, "poll");
        assert!(!obs.raw_status.is_empty(), "observation without raw status");
        if obs.state == Some(OnboardingState::Live) {
            return;
        }
    }
    panic!("not LIVE after the customer finished and {MAX_POLLS} polls");
}

/// After an unknown outcome, starting again with the same key returns the one resource made.
pub async fn check_idempotent_start_after_unknown_outcome(p: &dyn Provider, h: &dyn ConformanceHarness) {
    let key = "conf-unknown-outcome";
    let before = h.resources_created().await;
    h.inject_next_create(Fault::UnknownOutcome).await;
    match p.start_onboarding(&h.ctx(), &h.valid_start(key)).await {
        Err(ProviderError::UnknownOutcome { .. }) => {}
        other => panic!("expected UnknownOutcome, got {other:?}"),
    }
    assert_eq!(h.resources_created().await, before + 1, "the create should have happened");
    let again = start(p, h, key).await;
    assert!(again.reconciled, "the retry must reconcile");
    let third = start(p, h, key).await;
    assert_eq!(again.handle.external_key, third.handle.external_key, "same key, different resource");
    assert_eq!(h.resources_created().await, before + 1, "a retry created a second resource");
}

/// 5xx and 429 are retryable; invalid input is `Invalid` and not retryable.
pub async fn check_error_classification(p: &dyn Provider, h: &dyn ConformanceHarness) {
    h.inject_next_create(Fault::ServerError).await;
    match p.start_onboarding(&h.ctx(), &h.valid_start("conf-5xx")).await {
        Err(e @ ProviderError::Retryable { .. }) => assert!(e.is_retryable()),
        other => panic!("5xx: expected Retryable, got {other:?}"),
    }
    h.inject_next_create(Fault::RateLimited).await;
    match p.start_onboarding(&h.ctx(), &h.valid_start("conf-429")).await {
        Err(e @ ProviderError::RateLimited { .. }) => assert!(e.is_retryable()),
        other => panic!("429: expected RateLimited, got {other:?}"),
    }
    match p.start_onboarding(&h.ctx(), &h.invalid_start("conf-invalid")).await {
        Err(e @ ProviderError::Invalid { .. }) => assert!(!e.is_retryable()),
        other => panic!("invalid input: expected Invalid, got {other:?}"),
    }
    // The faults did not poison the key: a retry succeeds.
    start(p, h, "conf-5xx").await;
}

/// Garbage callbacks are `Malformed` (never a panic); valid ones yield stable dedupe keys.
pub async fn check_callbacks(p: &dyn Provider, h: &dyn ConformanceHarness) {
    let out = start(p, h, "conf-callback").await;
    let body = h.valid_callback(&out.handle);
    let truncated = &body[..body.len() / 2];
    let garbage: [&[u8]; 5] = [b"", b"not json", b"{", &[0xff, 0xfe, 0x00, 0x01], truncated];
    for g in garbage {
        match p.parse_callback(g) {
            Err(ProviderError::Malformed { .. }) => {}
            other => panic!("garbage {g:?}: expected Malformed, got {other:?}"),
        }
    }
    let events = must(p.parse_callback(&body), "parse_callback");
    assert!(!events.is_empty(), "a valid callback yielded no events");
    assert!(events.iter().all(|e| !e.dedupe_key.is_empty()), "event without dedupe key");
    assert!(
        events.iter().any(|e| e.external_key == out.handle.external_key),
        "no event routes to the onboarding's external key"
    );
    let again = must(p.parse_callback(&body), "parse_callback");
    let keys = |es: &[super::CallbackEvent]| es.iter().map(|e| e.dedupe_key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&events), keys(&again), "a redelivered body must dedupe");
}

/// Cancel: `NotSupported` without the capability; otherwise it cancels an open onboarding
/// and refuses a finished one with `Precondition`.
pub async fn check_cancel(p: &dyn Provider, h: &dyn ConformanceHarness) {
    let open = start(p, h, "conf-cancel-open").await;
    if !p.capabilities().contains(&Capability::Cancel) {
        match p.cancel(&h.ctx(), &open.handle).await {
            Err(ProviderError::NotSupported { capability: Capability::Cancel }) => return,
            other => panic!("cancel without the capability: expected NotSupported, got {other:?}"),
        }
    }
    must(p.cancel(&h.ctx(), &open.handle).await, "cancel open onboarding");
    let done = start(p, h, "conf-cancel-live").await;
    h.finish_customer(&done.handle).await;
    let mut live = false;
    for _ in 0..MAX_POLLS {
        if must(p.poll(&h.ctx(), &done.handle).await, "poll").state == Some(OnboardingState::Live) {
            live = true;
            break;
        }
    }
    assert!(live, "not LIVE after the customer finished");
    match p.cancel(&h.ctx(), &done.handle).await {
        Err(ProviderError::Precondition { .. }) => {}
        other => panic!("cancel once live: expected Precondition, got {other:?}"),
    }
}

/// Every check, in order. Each uses its own idempotency keys, so one provider instance can
/// run them all.
pub async fn run_all(p: &dyn Provider, h: &dyn ConformanceHarness) {
    check_capabilities(p, h).await;
    check_start_then_poll(p, h).await;
    check_idempotent_start_after_unknown_outcome(p, h).await;
    check_error_classification(p, h).await;
    check_callbacks(p, h).await;
    check_cancel(p, h).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::domain::account::{AccountOptions, Credentials};
    use crate::domain::{AccountId, E164, OnboardingId, ProviderKind, Secret, WabaId};
    use crate::providers::{GupshupStart, InMemoryProvider, StartPayload, WhapiStart};

    /// Drives an [`InMemoryProvider`] directly.
    struct MemoryHarness {
        p: Arc<InMemoryProvider>,
        events: AtomicU64,
    }

    #[async_trait]
    impl ConformanceHarness for MemoryHarness {
        fn ctx(&self) -> CallContext {
            let credentials = match self.p.kind() {
                ProviderKind::Whapi => Credentials::Whapi { partner_token: Secret::new("tok") },
                _ => Credentials::Gupshup { email: "a@example.com".into(), secret: Secret::new("s") },
            };
            CallContext {
                account_id: AccountId::parse("acct-conf").unwrap(),
                credentials,
                options: AccountOptions::default(),
                webhook_url: Secret::new("http://127.0.0.1/webhooks/x/acct-conf/secret"),
                base_url: "memory://".into(),
            }
        }

        fn valid_start(&self, key: &str) -> StartRequest {
            let payload = match self.p.kind() {
                ProviderKind::Whapi => StartPayload::Whapi(WhapiStart {
                    channel_name: "Acme".into(),
                    project_id: None,
                    go_live: false,
                    extend_days: 0,
                }),
                _ => StartPayload::Gupshup(GupshupStart {
                    app_name: "Acme Support".into(),
                    waba_id: WabaId::parse("123456789").unwrap(),
                    phone: E164::parse("+15551112222").unwrap(),
                    storage_region: None,
                    subscribe_on_live: None,
                }),
            };
            StartRequest {
                onboarding_id: OnboardingId::parse("onb-1").unwrap(),
                idempotency_key: key.into(),
                reference: "cust-1".into(),
                payload,
            }
        }

        fn invalid_start(&self, key: &str) -> StartRequest {
            StartRequest { payload: StartPayload::Exotel, ..self.valid_start(key) }
        }

        async fn finish_customer(&self, handle: &ProviderHandle) {
            assert!(self.p.finish_customer(&handle.external_key));
        }

        async fn inject_next_create(&self, fault: Fault) {
            match fault {
                Fault::ServerError => {
                    self.p.fail_next(1, ProviderError::Retryable { raw: "503".into(), message: "down".into() })
                }
                Fault::RateLimited => {
                    self.p.fail_next(1, ProviderError::RateLimited { retry_after: None, raw: "429".into() })
                }
                Fault::UnknownOutcome => self.p.unknown_outcome_next_creates(1),
            }
        }

        async fn resources_created(&self) -> u64 {
            self.p.creates()
        }

        fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8> {
            let n = self.events.fetch_add(1, Ordering::Relaxed);
            self.p.render_callback(&format!("evt-{n}"), &handle.external_key, "LIVE")
        }
    }

    fn harness(p: InMemoryProvider) -> MemoryHarness {
        MemoryHarness { p: Arc::new(p), events: AtomicU64::new(0) }
    }

    #[tokio::test]
    async fn memory_provider_with_cancel_passes() {
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        run_all(h.p.as_ref(), &h).await;
        assert!(h.p.polls() > 0);
    }

    #[tokio::test]
    async fn memory_provider_without_cancel_passes() {
        let h = harness(
            InMemoryProvider::new(ProviderKind::Gupshup)
                .with_capabilities([Capability::CheckCredentials, Capability::PipelineStatus, Capability::LiveEvent])
                .with_statuses(["INITIAL", "REVIEW", "PROVISIONING", "LIVE"]),
        );
        run_all(h.p.as_ref(), &h).await;
    }

    #[tokio::test]
    #[should_panic(expected = "advertised but")]
    async fn capability_check_catches_overclaiming() {
        let h = harness(InMemoryProvider::new(ProviderKind::Gupshup).with_capabilities([Capability::Cancel]));
        check_capabilities(h.p.as_ref(), &h).await;
    }

    #[tokio::test]
    async fn check_credentials_honours_scripted_failure() {
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        h.p.fail_next(1, ProviderError::Unauthenticated { raw: "401".into() });
        assert!(matches!(h.p.check_credentials(&h.ctx()).await, Err(ProviderError::Unauthenticated { .. })));
        assert!(h.p.check_credentials(&h.ctx()).await.is_ok());
    }
}
