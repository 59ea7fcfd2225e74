//! The conformance suite every adapter must pass (one library of checks for all, as in
//! `object_store::integration`). Each adapter's tests call [`run_all`] (or single checks)
//! with a [`ConformanceHarness`] backed by its simulator. Checks panic with a message on
//! failure, like assertions.
//!
//! The suite drives what production drives: each adapter's [`Provider::pipeline`], one
//! [`Provider::run_step`] at a time, carrying the handle, secret, step data, details and
//! state between steps the way the engine does ([`Drive`]). Every step is also run a second
//! time as if its first outcome had been lost (the engine then runs it again), and must
//! converge: the same handle, no second resource at the simulator.
//!
//! Which checks apply follows from the adapter's derived capabilities
//! ([`ProviderCapabilities::capabilities`]), never from the test picking checks by hand: a
//! check whose capability is not there reports [`Verdict::Skipped`] with the reason (e.g.
//! "skipped: no lookup capability"), and a capability that is there must pass its check.
//! [`run_all`] returns a [`Report`] so a test can pin exactly what was skipped.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    CallContext, Progress, Provider, ProviderCapabilities, ProviderError, ProviderHandle, StartRequest, StepOutcome,
    StepRun, StepSpec,
};
use crate::domain::{Capability, OnboardingDetails, OnboardingState, Secret};

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

/// Runs of one step (polls, retries) allowed before the suite gives up on it.
const MAX_RUNS: usize = 12;

/// Capabilities through which a provider calls us back: any one makes
/// [`check_callbacks`] apply.
pub const CALLBACK_CAPABILITIES: [Capability; 3] =
    [Capability::LiveEvent, Capability::PartnerWebhook, Capability::Subscriptions];

/// A step name no pipeline has, for [`check_unknown_step`].
pub const UNKNOWN_STEP: &str = "conformance_no_such_step";

fn must<T>(r: Result<T, ProviderError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

fn has(p: &dyn Provider, c: Capability) -> bool {
    p.capabilities().contains(&c)
}

fn reconciled(out: &StepOutcome) -> bool {
    out.attributes.get("reconciled").is_some_and(|v| v == "true")
}

/// One onboarding as the engine carries it between steps: the request, the handle, the
/// secret, each step's data and attempts, the public details and the state.
#[derive(Clone)]
pub struct Drive<'a> {
    p: &'a dyn Provider,
    ctx: CallContext,
    /// The request the onboarding was created with.
    pub request: StartRequest,
    specs: Vec<StepSpec>,
    /// The provider handle, once a step recorded one.
    pub handle: Option<ProviderHandle>,
    secret: Option<Secret>,
    data: BTreeMap<&'static str, Value>,
    attempts: BTreeMap<&'static str, u32>,
    details: OnboardingDetails,
    /// The onboarding's canonical state.
    pub state: OnboardingState,
    finished: bool,
    completed: Vec<&'static str>,
}

impl<'a> Drive<'a> {
    /// A new onboarding of `h.valid_start(key)`.
    pub fn new(p: &'a dyn Provider, h: &dyn ConformanceHarness, key: &str) -> Self {
        Self::with_request(p, h, h.valid_start(key))
    }

    /// A new onboarding of `request`.
    pub fn with_request(p: &'a dyn Provider, h: &dyn ConformanceHarness, request: StartRequest) -> Self {
        let specs = p.pipeline(&request);
        Self {
            p,
            ctx: h.ctx(),
            request,
            specs,
            handle: None,
            secret: None,
            data: BTreeMap::new(),
            attempts: BTreeMap::new(),
            details: OnboardingDetails::empty(p.kind()),
            state: OnboardingState::Pending,
            finished: false,
            completed: Vec::new(),
        }
    }

    /// The enabled steps, in pipeline order (disabled ones are stored as skipped).
    pub fn steps(&self) -> Vec<&'static str> {
        self.specs.iter().filter(|s| s.enabled).map(|s| s.name).collect()
    }

    fn spec(&self, name: &str) -> &StepSpec {
        match self.specs.iter().find(|s| s.name == name) {
            Some(s) => s,
            None => panic!("{} has no step '{name}'", self.p.kind()),
        }
    }

    /// What the adapter gets for one run of `name`.
    pub fn step_run(&self, name: &'static str) -> StepRun {
        StepRun {
            name: name.to_string(),
            onboarding_id: self.request.onboarding_id.clone(),
            request: self.request.clone(),
            handle: self.handle.clone(),
            secret: self.secret.clone(),
            data: self.data.get(name).cloned().unwrap_or_else(|| serde_json::json!({})),
            attempt: self.attempts.get(name).copied().unwrap_or(1),
            state: self.state,
            details: self.details.clone(),
            was_stalled: false,
        }
    }

    /// Counts one more attempt of `name`, as the engine does when it runs a step again after
    /// an error or a lost outcome.
    pub fn count_attempt(&mut self, name: &'static str) {
        *self.attempts.entry(name).or_insert(1) += 1;
    }

    /// Runs `name` once as the engine does: enters the step's state, runs it, and records a
    /// successful outcome (an error counts an attempt instead).
    pub async fn run(&mut self, name: &'static str) -> Result<StepOutcome, ProviderError> {
        if let Some(enter) = self.spec(name).enter_state
            && self.state.enters(enter)
        {
            self.state = enter;
        }
        let run = self.step_run(name);
        match self.p.run_step(&self.ctx, &run).await {
            Ok(out) => {
                self.record(name, &out);
                Ok(out)
            }
            Err(e) => {
                self.count_attempt(name);
                Err(e)
            }
        }
    }

    fn record(&mut self, name: &'static str, out: &StepOutcome) {
        if let Some(h) = &out.handle {
            self.handle = Some(h.clone());
        }
        if let Some(s) = &out.secret {
            self.secret = Some(s.clone());
        }
        if let Some(d) = &out.data {
            self.data.insert(name, d.clone());
        }
        if let Some(d) = &out.details
            && let Err(e) = self.details.merge(d.clone())
        {
            panic!("{} step '{name}' returned details that do not merge: {e}", self.p.kind());
        }
        if let Some(s) = self.state.polled_into(out.observation.state) {
            self.state = s;
        }
    }

    /// After a wait: the first wait once a resource exists (not an adoption wait on a found
    /// one) is where the business finishes onboarding.
    async fn after_wait(&mut self, h: &dyn ConformanceHarness, out: &StepOutcome) {
        if !self.finished
            && !out.found
            && let Some(handle) = &self.handle
        {
            h.finish_customer(handle).await;
            self.finished = true;
        }
    }

    /// Runs `name` until it is done: waits are polled again (the customer finishes at the first
    /// one), retryable errors retried. Any other error panics.
    pub async fn until_done(&mut self, h: &dyn ConformanceHarness, name: &'static str) -> StepOutcome {
        for _ in 0..MAX_RUNS {
            match self.run(name).await {
                Ok(out) if out.progress == Progress::Done => {
                    self.completed.push(name);
                    return out;
                }
                Ok(out) => self.after_wait(h, &out).await,
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("{} step {name}: unexpected error {e:?}", self.p.kind()),
            }
        }
        panic!("{} step {name} not done after {MAX_RUNS} runs", self.p.kind());
    }

    /// The enabled steps not done yet, in order.
    fn remaining(&self) -> Vec<&'static str> {
        self.steps().into_iter().filter(|n| !self.completed.contains(n)).collect()
    }

    /// Runs the steps in order until one recorded a handle; returns that step's outcome.
    pub async fn until_handle(&mut self, h: &dyn ConformanceHarness) -> (&'static str, StepOutcome) {
        for name in self.remaining() {
            let out = self.until_done(h, name).await;
            if self.handle.is_some() {
                return (name, out);
            }
        }
        panic!("{}: no step recorded a handle", self.p.kind());
    }

    /// Runs every remaining step in order; returns the final state.
    pub async fn to_the_end(&mut self, h: &dyn ConformanceHarness) -> OnboardingState {
        for name in self.remaining() {
            if self.state.is_terminal() {
                break;
            }
            self.until_done(h, name).await;
        }
        self.state
    }

    fn handle_key(&self) -> Option<&str> {
        self.handle.as_ref().map(|h| h.external_key.as_str())
    }
}

/// Derived capabilities are a duplicate-free subset of what the provider's API offers.
pub async fn check_capabilities(p: &dyn Provider, _h: &dyn ConformanceHarness) -> Verdict {
    let api = p.kind().capabilities();
    let caps = p.capabilities();
    for (i, c) in caps.iter().enumerate() {
        assert!(api.contains(c), "{:?} advertised but {} offers no such capability", c, p.kind());
        assert!(!caps[..i].contains(c), "{c:?} advertised twice");
    }
    Verdict::Passed
}

/// The pipeline, driven step by step as the engine drives it, creates a fresh resource
/// (never `reconciled`) in an open state and reaches `LIVE` once the customer finishes.
/// Applies to every provider.
pub async fn check_pipeline_reaches_live(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    let mut d = Drive::new(p, h, "conf-pipeline");
    assert!(!d.steps().is_empty(), "an empty pipeline");
    let (_, created) = d.until_handle(h).await;
    assert!(d.handle_key().is_some_and(|k| !k.is_empty()), "empty external key");
    assert!(!reconciled(&created), "a fresh key must create, not reconcile");
    assert!(!d.state.is_terminal(), "fresh onboarding is {:?}", d.state);
    assert_eq!(d.to_the_end(h).await, OnboardingState::Live, "not LIVE after the customer finished");
    Verdict::Passed
}

/// Every step, run a second time from the same carried state as if its first outcome had been
/// lost (one attempt more, as the engine counts it), converges: the same handle and no second
/// resource at the provider. A create is repeated so only with [`Capability::Lookup`]: without
/// it (Exotel) the lost resource is a harmless extra and the repeat makes a new one.
/// Applies to every provider.
pub async fn check_every_step_repeats(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    let lookup = has(p, Capability::Lookup);
    let mut d = Drive::new(p, h, "conf-repeat");
    for name in d.steps() {
        if d.state.is_terminal() {
            break;
        }
        let mut done = false;
        for _ in 0..MAX_RUNS {
            let before = d.clone();
            let created = h.resources_created().await;
            let first = match d.run(name).await {
                Ok(out) => out,
                Err(e) if e.is_retryable() => continue,
                Err(e) => panic!("{} step {name}: unexpected error {e:?}", p.kind()),
            };
            let made = h.resources_created().await;
            if made > created && !lookup {
                // No lookup: a repeat would create again (see above).
                done = first.progress == Progress::Done;
                if !done {
                    d.after_wait(h, &first).await;
                }
                if done {
                    break;
                }
                continue;
            }
            let mut again = before;
            again.count_attempt(name);
            let mut second = must(again.run(name).await, &format!("{name} run again"));
            // An adoption (a found resource the engine binds first) finishes on the next run.
            for _ in 0..MAX_RUNS {
                if !second.found || second.progress == Progress::Done {
                    break;
                }
                second = must(again.run(name).await, &format!("{name} run again after the binding"));
            }
            assert_eq!(h.resources_created().await, made, "step {name} run again created a second resource");
            if d.handle.is_some() {
                assert_eq!(again.handle_key(), d.handle_key(), "step {name} run again: a different handle");
            }
            d = again;
            if second.progress == Progress::Done {
                done = true;
                break;
            }
            d.after_wait(h, &second).await;
        }
        assert!(done, "{} step {name} not done after {MAX_RUNS} runs", p.kind());
    }
    assert_eq!(d.state, OnboardingState::Live, "not LIVE with every step run twice");
    Verdict::Passed
}

/// With [`Capability::Lookup`]: after a create with an unknown outcome, the step run again
/// finds the one resource made (`reconciled`), and runs after that keep the same handle.
/// Skipped without it.
pub async fn check_unknown_outcome_reconciles(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    if !has(p, Capability::Lookup) {
        return Verdict::skipped("lookup");
    }
    let mut d = Drive::new(p, h, "conf-unknown-outcome");
    let before = h.resources_created().await;
    h.inject_next_create(Fault::UnknownOutcome).await;
    let mut lost = None;
    'steps: for name in d.steps() {
        for _ in 0..MAX_RUNS {
            match d.run(name).await {
                Err(ProviderError::UnknownOutcome { .. }) if lost.is_none() => {
                    assert_eq!(h.resources_created().await, before + 1, "the create should have happened");
                    lost = Some(name);
                }
                Err(e) => panic!("{} step {name}: unexpected error {e:?}", p.kind()),
                Ok(out) if out.progress == Progress::Done && lost == Some(name) => {
                    assert!(reconciled(&out), "the retry must reconcile (the provider declares Lookup)");
                    break 'steps;
                }
                Ok(out) if out.progress == Progress::Done => continue 'steps,
                Ok(out) => d.after_wait(h, &out).await,
            }
        }
        panic!("{} step {name} not done after {MAX_RUNS} runs", p.kind());
    }
    let Some(create) = lost else { panic!("expected UnknownOutcome from a create step") };
    let key = d.handle_key().map(str::to_string);
    let mut again = d.clone();
    again.count_attempt(create);
    again.until_done(h, create).await;
    assert_eq!(again.handle_key().map(str::to_string), key, "same key, different resource");
    assert_eq!(h.resources_created().await, before + 1, "a retry created a second resource");
    Verdict::Passed
}

/// Runs `d`'s steps in order until one fails; panics when none does.
async fn first_error(d: &mut Drive<'_>, h: &dyn ConformanceHarness) -> (&'static str, ProviderError) {
    for name in d.steps() {
        for _ in 0..MAX_RUNS {
            match d.run(name).await {
                Err(e) => return (name, e),
                Ok(out) if out.progress == Progress::Done => break,
                Ok(out) => d.after_wait(h, &out).await,
            }
        }
    }
    panic!("no step failed");
}

/// 5xx and 429 on the create are retryable and do not poison the onboarding (the step run
/// again succeeds); invalid input is `Invalid` (from `validate_start` or a step) and not
/// retryable. Applies to every provider.
pub async fn check_error_classification(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    for (fault, key) in [(Fault::ServerError, "conf-5xx"), (Fault::RateLimited, "conf-429")] {
        let mut d = Drive::new(p, h, key);
        h.inject_next_create(fault).await;
        let (name, e) = first_error(&mut d, h).await;
        match (fault, &e) {
            (Fault::ServerError, ProviderError::Retryable { .. })
            | (Fault::RateLimited, ProviderError::RateLimited { .. }) => assert!(e.is_retryable()),
            _ => panic!("{fault:?}: expected it retryable as such, got {e:?}"),
        }
        // The fault did not poison the onboarding: the step run again succeeds.
        d.until_done(h, name).await;
    }
    let invalid = h.invalid_start("conf-invalid");
    let e = match p.validate_start(&h.ctx(), &invalid) {
        Err(e) => e,
        Ok(()) => first_error(&mut Drive::with_request(p, h, invalid), h).await.1,
    };
    assert!(matches!(e, ProviderError::Invalid { .. }), "invalid input: expected Invalid, got {e:?}");
    assert!(!e.is_retryable());
    Verdict::Passed
}

/// With a callback capability ([`CALLBACK_CAPABILITIES`]): garbage callbacks are
/// `Malformed` (never a panic); valid ones yield stable dedupe keys. Skipped without one.
pub async fn check_callbacks(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    if !CALLBACK_CAPABILITIES.iter().any(|c| has(p, *c)) {
        return Verdict::skipped("callback");
    }
    let mut d = Drive::new(p, h, "conf-callback");
    d.until_handle(h).await;
    let Some(handle) = d.handle.clone() else { panic!("no handle") };
    let body = h.valid_callback(&handle);
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
        events.iter().any(|e| e.external_key == handle.external_key),
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
    let mut open = Drive::new(p, h, "conf-cancel-open");
    open.until_handle(h).await;
    let Some(handle) = open.handle.clone() else { panic!("no handle") };
    if !has(p, Capability::Cancel) {
        return match p.cancel(&h.ctx(), &handle).await {
            Err(ProviderError::NotSupported { capability: Capability::Cancel }) => Verdict::skipped("cancel"),
            other => panic!("cancel without the capability: expected NotSupported, got {other:?}"),
        };
    }
    must(p.cancel(&h.ctx(), &handle).await, "cancel open onboarding");
    let mut live = Drive::new(p, h, "conf-cancel-live");
    assert_eq!(live.to_the_end(h).await, OnboardingState::Live, "not LIVE after the customer finished");
    let Some(handle) = live.handle.clone() else { panic!("no handle") };
    match p.cancel(&h.ctx(), &handle).await {
        Err(ProviderError::Precondition { .. }) => {}
        other => panic!("cancel once live: expected Precondition, got {other:?}"),
    }
    Verdict::Passed
}

/// A step name the pipeline does not have is refused as [`ProviderError::UnknownStep`] (not a
/// panic, not silently done), and the pipeline's own names are unique. Applies to every
/// provider.
pub async fn check_unknown_step(p: &dyn Provider, h: &dyn ConformanceHarness) -> Verdict {
    let d = Drive::new(p, h, "conf-unknown-step");
    let names: Vec<&str> = d.specs.iter().map(|s| s.name).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!n.is_empty() && !names[..i].contains(n), "step name '{n}' empty or repeated");
    }
    let run = StepRun { name: UNKNOWN_STEP.into(), ..d.step_run("") };
    match p.run_step(&h.ctx(), &run).await {
        Err(ProviderError::UnknownStep { provider, step }) => {
            assert_eq!((provider, step.as_str()), (p.kind(), UNKNOWN_STEP), "the refusal names the wrong step");
        }
        other => panic!("unknown step: expected UnknownStep, got {other:?}"),
    }
    Verdict::Passed
}

/// Every check, in order; which apply follows from `p.capabilities()`. Each uses its own
/// idempotency keys, so one provider instance can run them all. Prints one line per check
/// (visible with `--nocapture`) and returns the [`Report`].
pub async fn run_all(p: &dyn Provider, h: &dyn ConformanceHarness) -> Report {
    let mut report = Report::default();
    report.checks.push(("capabilities", check_capabilities(p, h).await));
    report.checks.push(("pipeline_reaches_live", check_pipeline_reaches_live(p, h).await));
    report.checks.push(("every_step_repeats", check_every_step_repeats(p, h).await));
    report.checks.push(("unknown_outcome_reconciles", check_unknown_outcome_reconciles(p, h).await));
    report.checks.push(("error_classification", check_error_classification(p, h).await));
    report.checks.push(("callbacks", check_callbacks(p, h).await));
    report.checks.push(("cancel", check_cancel(p, h).await));
    report.checks.push(("unknown_step", check_unknown_step(p, h).await));
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
    use crate::providers::memory::MemoryStep;
    use crate::providers::{GupshupStart, InMemoryProvider, PipelineStep, StartPayload, WhapiStart};

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

    /// An [`InMemoryProvider`] that cannot look anything up: every `start` creates anew (its
    /// idempotency key is made unique), as Exotel's mint does. Declares what it is told; with
    /// `lenient`, it also answers an unknown step as done instead of refusing it.
    #[derive(Debug)]
    struct NoLookup {
        inner: Arc<InMemoryProvider>,
        caps: Vec<Capability>,
        starts: AtomicU64,
        lenient: bool,
    }

    #[async_trait]
    impl Provider for NoLookup {
        fn kind(&self) -> ProviderKind {
            self.inner.kind()
        }
        fn flow_capabilities(&self) -> &[Capability] {
            &self.caps
        }
        async fn check_credentials(
            &self,
            ctx: &CallContext,
        ) -> Result<crate::providers::CredentialsCheck, ProviderError> {
            self.inner.check_credentials(ctx).await
        }
        fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec> {
            self.inner.pipeline(req)
        }
        async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
            match MemoryStep::parse(&run.name) {
                Some(MemoryStep::Start) => {
                    let n = self.starts.fetch_add(1, Ordering::Relaxed);
                    let key = format!("{}-{n}", run.request.idempotency_key);
                    let fresh = StepRun {
                        request: StartRequest { idempotency_key: key, ..run.request.clone() },
                        ..run.clone()
                    };
                    self.inner.run_step(ctx, &fresh).await
                }
                None if self.lenient => Ok(StepOutcome::done(crate::providers::Observation::default())),
                _ => self.inner.run_step(ctx, run).await,
            }
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
        let p = NoLookup { inner: h.p.clone(), caps: caps.to_vec(), starts: AtomicU64::new(0), lenient: false };
        (h, p)
    }

    #[tokio::test]
    async fn memory_provider_with_cancel_passes() {
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        let report = run_all(h.p.as_ref(), &h).await;
        assert!(h.p.polls() > 0);
        // The fake has no subscription port, so it does not claim Whapi's callbacks.
        assert_eq!(report.skipped(), vec![("callbacks", "skipped: no callback capability".to_string())]);
        assert_eq!(report.passed().len(), 7);
    }

    /// The fake drives through the engine's state: `start` enters PENDING, the polls walk the
    /// scripted statuses to LIVE, and the handle stays the one the create recorded.
    #[tokio::test]
    async fn the_drive_carries_what_the_engine_carries() {
        let h = harness(InMemoryProvider::new(ProviderKind::Gupshup));
        let p: &dyn Provider = h.p.as_ref();
        let mut d = Drive::new(p, &h, "drive");
        assert_eq!(d.steps(), ["start", "await_live"]);
        let (step, out) = d.until_handle(&h).await;
        assert_eq!(step, "start");
        let key = d.handle.as_ref().map(|h| h.external_key.clone());
        assert_eq!(out.handle.map(|h| h.external_key), key);
        assert_eq!(d.state, OnboardingState::AwaitingCustomer);
        assert_eq!(d.to_the_end(&h).await, OnboardingState::Live);
        assert_eq!(d.handle.map(|h| h.external_key), key);
        assert_eq!(h.p.creates(), 1);
    }

    #[tokio::test]
    #[should_panic(expected = "run again created a second resource")]
    async fn a_provider_that_claims_lookup_must_not_create_again_on_a_repeat() {
        let (h, p) = no_lookup(&[Capability::CheckCredentials, Capability::Lookup]);
        check_every_step_repeats(&p, &h).await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected UnknownStep")]
    async fn a_provider_that_accepts_an_unknown_step_fails() {
        let (h, mut p) = no_lookup(&[Capability::CheckCredentials]);
        p.lenient = true;
        check_unknown_step(&p, &h).await;
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
                ("unknown_outcome_reconciles", "skipped: no lookup capability".to_string()),
                ("cancel", "skipped: no cancel capability".to_string()),
            ]
        );
        assert_eq!(
            report.passed(),
            [
                "capabilities",
                "pipeline_reaches_live",
                "every_step_repeats",
                "error_classification",
                "callbacks",
                "unknown_step"
            ]
        );
    }

    #[tokio::test]
    async fn a_provider_without_lookup_that_does_not_claim_it_passes() {
        let (h, p) = no_lookup(&[Capability::CheckCredentials, Capability::ChannelLifecycle, Capability::Cancel]);
        let report = run_all(&p, &h).await;
        assert_eq!(
            report.skipped(),
            vec![
                ("unknown_outcome_reconciles", "skipped: no lookup capability".to_string()),
                ("callbacks", "skipped: no callback capability".to_string()),
            ]
        );
    }

    #[tokio::test]
    #[should_panic(expected = "the retry must reconcile")]
    async fn a_provider_that_claims_lookup_must_reconcile() {
        let (h, p) = no_lookup(&[Capability::CheckCredentials, Capability::Lookup]);
        check_unknown_outcome_reconciles(&p, &h).await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected NotSupported")]
    async fn a_provider_that_cancels_without_claiming_it_fails() {
        // The fake cancels whenever its own capability list has Cancel; the wrapper hides it.
        let h = harness(InMemoryProvider::new(ProviderKind::Whapi));
        let p = NoLookup {
            inner: h.p.clone(),
            caps: vec![Capability::CheckCredentials],
            starts: AtomicU64::new(0),
            lenient: false,
        };
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
