//! The conformance suite every adapter must pass (one library of checks for all, as in
//! `object_store::integration`). Each adapter's tests call [`run_all`] (or single checks)
//! with a [`ConformanceHarness`] backed by its simulator. Checks panic with a message on
//! failure, like assertions.
//!
//! Which checks apply follows from the adapter's declared [`Provider::capabilities`], never
//! from the test picking checks by hand: a check whose capability is not declared reports
//! [`Verdict::Skipped`] with the reason (e.g. "skipped: no lookup capability"), and a
//! declared capability must pass its check. [`run_all`] returns a [`Report`] so a test can
//! pin exactly what was skipped.

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

/// What one check concluded (a failure panics instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The check ran and held.
    Passed,
    /// The check does not apply to this adapter; the reason names the missing capability.
    Skipped(String),
}

impl Verdict {
    fn skipped(what: &str) -> Self {
        Self::Skipped(format!("no {what} capability"))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passed => f.write_str("passed"),
            Self::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// The verdict of every check of a [`run_all`], in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `(check name, verdict)`.
    pub checks: Vec<(&'static str, Verdict)>,
}

impl Report {
    /// Names of the checks that ran and held.
    pub fn passed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|(_, v)| *v == Verdict::Passed).map(|(n, _)| *n).collect()
    }

    /// `(check name, "skipped: reason")` of the checks that did not apply.
    pub fn skipped(&self) -> Vec<(&'static str, String)> {
        self.checks.iter().filter(|(_, v)| *v != Verdict::Passed).map(|(n, v)| (*n, v.to_string())).collect()
    }
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
    /// A valid callback body about this resource (only asked of adapters that declare a
    /// callback capability; see [`check_callbacks`]).
    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8>;
}

/// Polls allowed to reach `LIVE` after the customer finished.
const MAX_POLLS: usize = 10;

/// Capabilities through which a provider calls us back: any one makes
/// [`check_callbacks`] apply.
pub const CALLBACK_CAPABILITIES: [Capability; 3] =
    [Capability::LiveEvent, Capability::PartnerWebhook, Capability::Subscriptions];

fn must<T>(r: Result<T, ProviderError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

fn has(p: &dyn Provider, c: Capability) -> bool {
    p.capabilities().contains(&c)
}

async fn start(p: &dyn Provider, h: &dyn ConformanceHarness, key: &str) -> StartOutcome {
    must(p.start_onboarding(&h.ctx(), &h.valid_start(key)).await, "start_onboarding")
}

/// Advertised capabilities are a duplicate-free subset of what the provider's API offers.
pub async fn check_capabilities(p: &dyn Provider, _h: &dyn ConformanceHarness) -> Verdict {
    let api = p.kind().capabilities();
    let caps = p.capabilities();
    for (i, c) in caps.iter().enumerate() {
        assert!(api.contains(c), "{:?} advertised but {} offers no such capability", c, p.kind());
        assert!(!caps[..i].contains(c), "{c:?} advertised twice");
    }
    Verdict::Passed
}

/// Start yields an open state; after the customer finishes, polling reaches `LIVE`.
/// Applies to every provider.
pub async fn check_start_then_poll(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
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
            return Verdict::Passed;
        }
    }
    panic!("not LIVE after the customer finished and {MAX_POLLS} polls");
}

/// With [`Capability::Lookup`]: after an unknown outcome, starting again with the same key
/// returns the one resource made. Skipped without it.
pub async fn check_idempotent_start_after_unknown_outcome(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    if !has(p, Capability::Lookup) {
        return Verdict::skipped("lookup");
    }
    let key = "conf-unknown-outcome";
    let before = h.resources_created().await;
    h.inject_next_create(Fault::UnknownOutcome).await;
    match p.start_onboarding(&h.ctx(), &h.valid_start(key)).await {
        Err(ProviderError::UnknownOutcome { .. }) => {}
        other => panic!("expected UnknownOutcome, got {other:?}"),
    }
    assert_eq!(h.resources_created().await, before + 1, "the create should have happened");
    let again = start(p, h, key).await;
    assert!(again.reconciled, "the retry must reconcile (the provider declares Lookup)");
    let third = start(p, h, key).await;
    assert_eq!(again.handle.external_key, third.handle.external_key, "same key, different resource");
    assert_eq!(h.resources_created().await, before + 1, "a retry created a second resource");
    Verdict::Passed
}

/// 5xx and 429 are retryable; invalid input is `Invalid` and not retryable. Applies to
/// every provider.
pub async fn check_error_classification(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
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
    Verdict::Passed
}

/// With a callback capability ([`CALLBACK_CAPABILITIES`]): garbage callbacks are
/// `Malformed` (never a panic); valid ones yield stable dedupe keys. Skipped without one.
pub async fn check_callbacks(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    if !CALLBACK_CAPABILITIES.iter().any(|c| has(p, *c)) {
        return Verdict::skipped("callback");
    }
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
    Verdict::Passed
}

/// With [`Capability::Cancel`]: cancels an open onboarding and refuses a finished one with
/// `Precondition`. Without it the check is skipped, after confirming that `cancel` answers
/// `NotSupported` as the trait contract requires.
pub async fn check_cancel(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    let open = start(p, h, "conf-cancel-open").await;
    if !has(p, Capability::Cancel) {
        return match p.cancel(&h.ctx(), &open.handle).await {
            Err(ProviderError::NotSupported { capability: Capability::Cancel }) => Verdict::skipped("cancel"),
            other => panic!("cancel without the capability: expected NotSupported, got {other:?}"),
        };
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
    Verdict::Passed
}

/// Every check, in order; which apply follows from `p.capabilities()`. Each uses its own
/// idempotency keys, so one provider instance can run them all. Prints one line per check
/// (visible with `--nocapture`) and returns the [`Report`].
pub async fn run_all(p: &dyn Provider, h: &dyn ConformanceHarness) -> Report {
    let mut report = Report::default();
    report.checks.push(("capabilities", check_capabilities(p, h).await));
    report.checks.push(("start_then_poll", check_start_then_poll(p, h).await));
    report
        .checks
        .push(("idempotent_start_after_unknown_outcome", check_idempotent_start_after_unknown_outcome(p, h).await));
    report.checks.push(("error_classification", check_error_classification(p, h).await));
    report.checks.push(("callbacks", check_callbacks(p, h).await));
    report.checks.push(("cancel", check_cancel(p, h).await));
    for (name, verdict) in &report.checks {
        eprintln!("conformance {}: {name}: {verdict}", p.kind());
    }
    report
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
                    app_name: "AcmeSupport".into(),
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

    /// An [`InMemoryProvider`] that cannot look anything up: every start creates anew (its
    /// idempotency key is made unique), as Exotel's mint does. Declares what it is told.
    #[derive(Debug)]
    struct NoLookup {
        inner: Arc<InMemoryProvider>,
        caps: Vec<Capability>,
        starts: AtomicU64,
    }

    #[async_trait]
    impl Provider for NoLookup {
        fn kind(&self) -> ProviderKind {
            self.inner.kind()
        }
        fn capabilities(&self) -> &[Capability] {
            &self.caps
        }
        async fn check_credentials(
            &self,
            ctx: &CallContext,
        ) -> Result<crate::providers::CredentialsCheck, ProviderError> {
            self.inner.check_credentials(ctx).await
        }
        async fn start_onboarding(&self, ctx: &CallContext, req: &StartRequest) -> Result<StartOutcome, ProviderError> {
            let n = self.starts.fetch_add(1, Ordering::Relaxed);
            let fresh = StartRequest { idempotency_key: format!("{}-{n}", req.idempotency_key), ..req.clone() };
            self.inner.start_onboarding(ctx, &fresh).await
        }
        async fn poll(
            &self,
            ctx: &CallContext,
            handle: &ProviderHandle,
        ) -> Result<crate::providers::Observation, ProviderError> {
            self.inner.poll(ctx, handle).await
        }
        fn parse_callback(&self, body: &[u8]) -> Result<Vec<crate::providers::CallbackEvent>, ProviderError> {
            self.inner.parse_callback(body)
        }
        async fn cancel(
            &self,
            ctx: &CallContext,
            handle: &ProviderHandle,
        ) -> Result<crate::providers::CancelOutcome, ProviderError> {
            self.inner.cancel(ctx, handle).await
        }
    }

    fn no_lookup(caps: &[Capability]) -> (MemoryHarness, NoLookup) {
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi).with_capabilities(caps.to_vec()));
        let p = NoLookup { inner: h.p.clone(), caps: caps.to_vec(), starts: AtomicU64::new(0) };
        (h, p)
    }

    #[tokio::test]
    async fn memory_provider_with_cancel_passes() {
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        let report = run_all(h.p.as_ref(), &h).await;
        assert!(h.p.polls() > 0);
        assert_eq!(report.skipped(), Vec::<(&str, String)>::new(), "every Whapi capability is declared");
        assert_eq!(report.passed().len(), 6);
    }

    #[tokio::test]
    async fn memory_provider_without_cancel_or_lookup_skips_exactly_those() {
        let h = harness(
            InMemoryProvider::new(ProviderKind::Gupshup)
                .with_capabilities([Capability::CheckCredentials, Capability::PipelineStatus, Capability::LiveEvent])
                .with_statuses(["INITIAL", "REVIEW", "PROVISIONING", "LIVE"]),
        );
        let report = run_all(h.p.as_ref(), &h).await;
        assert_eq!(
            report.skipped(),
            vec![
                ("idempotent_start_after_unknown_outcome", "skipped: no lookup capability".to_string()),
                ("cancel", "skipped: no cancel capability".to_string()),
            ]
        );
        assert_eq!(report.passed(), ["capabilities", "start_then_poll", "error_classification", "callbacks"]);
    }

    #[tokio::test]
    async fn a_provider_without_lookup_that_does_not_claim_it_passes() {
        let (h, p) = no_lookup(&[Capability::CheckCredentials, Capability::ChannelLifecycle, Capability::Cancel]);
        let report = run_all(&p, &h).await;
        assert_eq!(
            report.skipped(),
            vec![
                ("idempotent_start_after_unknown_outcome", "skipped: no lookup capability".to_string()),
                ("callbacks", "skipped: no callback capability".to_string()),
            ]
        );
    }

    #[tokio::test]
    #[should_panic(expected = "the retry must reconcile")]
    async fn a_provider_that_claims_lookup_must_reconcile() {
        let (h, p) = no_lookup(&[Capability::CheckCredentials, Capability::Lookup]);
        check_idempotent_start_after_unknown_outcome(&p, &h).await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected NotSupported")]
    async fn a_provider_that_cancels_without_claiming_it_fails() {
        // The fake cancels whenever its own capability list has Cancel; the wrapper hides it.
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        let p = NoLookup { inner: h.p.clone(), caps: vec![Capability::CheckCredentials], starts: AtomicU64::new(0) };
        check_cancel(&p, &h).await;
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
