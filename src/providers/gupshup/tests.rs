//! Adapter tests against a spawned [`GupshupSim`] (real HTTP on 127.0.0.1:0): the shared
//! conformance suite plus the Gupshup-specific behaviours. The simulator is written from
//! docs/providers.md independently of the adapter, so a wrong field name fails here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use futures::future::join_all;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::*;
use crate::domain::account::{AccountOptions, Credentials};
use crate::domain::{AccountId, E164, OnboardingId, WabaId};
use crate::providers::builtin::AdapterDeps;
use crate::providers::conformance::{self, ConformanceHarness, Fault as ConfFault};
use crate::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
use crate::providers::{Progress, ProviderCapabilities, StepRun};
use crate::providers::{ResourceRef, WebhookMode};
use crate::sim::common::{Fault, Running};
use crate::sim::gupshup::{GupshupSim, GupshupSimConfig, KnobsPatch, LimitSpec};

const EMAIL: &str = "sandbox@wa-onboard.local";
const SECRET: &str = "sandbox-secret";
/// Long sim stages: time moves only when a test advances the sim clock.
const STAGE_MS: u64 = 10_000;
const WEBHOOK_SECRET: &str = "whk-s3cr3t-path-part";

const LOGIN: &str = "POST /partner/account/login";
const LINK: &str = "POST /partner/tpp/app";
const TOKEN: &str = "GET /partner/app/{app_id}/token";
const PIPELINE: &str = "GET /partner/app/{app_id}/pipeline";
const CALLBACK: &str = "PUT /partner/app/{app_id}/callbackUrl";
const SUB_CREATE: &str = "POST /partner/app/{app_id}/subscription";

fn sim_config() -> GupshupSimConfig {
    GupshupSimConfig { sandbox: false, stage_ms: STAGE_MS, ticker_ms: 50, ..GupshupSimConfig::default() }
}

fn deps() -> AdapterDeps {
    AdapterDeps {
        // A short total timeout so the simulator's held "timeout" faults end quickly.
        http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(2), total: Duration::from_secs(1) }).unwrap(),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            total_budget: Duration::from_secs(10),
        },
        poll_interval: Duration::from_millis(50),
    }
}

struct Env {
    sim: GupshupSim,
    running: Running,
    p: Arc<GupshupProvider>,
    webhook_url: String,
}

impl Env {
    async fn new() -> Self {
        Self::with(sim_config(), GupshupLimits::default(), None).await
    }

    async fn with(config: GupshupSimConfig, limits: GupshupLimits, webhook_url: Option<String>) -> Self {
        let (sim, running) = GupshupSim::spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        sim.core().with_knobs(|k| k.timeout_hold_ms = 1_500);
        let webhook_url =
            webhook_url.unwrap_or_else(|| format!("{}/webhooks/gupshup/acct-gs/{WEBHOOK_SECRET}", running.base_url()));
        let p = Arc::new(GupshupProvider::with_limits(deps(), limits));
        Self { sim, running, p, webhook_url }
    }

    fn ctx_with(&self, secret: &str) -> CallContext {
        CallContext {
            account_id: AccountId::parse("acct-gs").unwrap(),
            credentials: Credentials::Gupshup { email: EMAIL.into(), secret: Secret::new(secret) },
            options: AccountOptions::default(),
            webhook_url: Secret::new(self.webhook_url.clone()),
            base_url: self.running.base_url(),
        }
    }

    fn context(&self) -> CallContext {
        self.ctx_with(SECRET)
    }

    fn calls(&self, endpoint: &str) -> u64 {
        self.sim.core().counters().calls.get(endpoint).copied().unwrap_or(0)
    }

    fn total_calls(&self) -> u64 {
        self.sim.core().counters().calls.values().sum()
    }

    fn created(&self, kind: &str) -> u64 {
        self.sim.core().counters().created.get(kind).copied().unwrap_or(0)
    }

    /// The business finishes and Gupshup provisions: start the pipeline, run the clock past
    /// the last stage.
    fn finish(&self, app_id: &str) {
        assert!(self.sim.start_pipeline(app_id), "unknown app {app_id}");
        self.sim.core().clock.advance(Duration::from_millis(STAGE_MS * 5));
    }
}

/// A start request whose app name and phone derive from `key` (unique per key).
fn start_req(key: &str, sub: Option<SubscriptionSpec>) -> StartRequest {
    let digest = Sha256::digest(key.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().unwrap()) % 100_000_000;
    let name_part: String = key.chars().filter(char::is_ascii_alphanumeric).collect();
    StartRequest {
        onboarding_id: OnboardingId::parse("onb-gs-1").unwrap(),
        idempotency_key: key.into(),
        reference: "cust-1".into(),
        payload: StartPayload::Gupshup(GupshupStart {
            app_name: format!("Acme{name_part}{n}"),
            waba_id: WabaId::parse("104996545612345").unwrap(),
            phone: E164::parse(&format!("+9199{n:08}")).unwrap(),
            storage_region: None,
            subscribe_on_live: sub,
        }),
    }
}

fn with_name(mut req: StartRequest, name: &str) -> StartRequest {
    if let StartPayload::Gupshup(g) = &mut req.payload {
        g.app_name = name.to_string();
    }
    req
}

fn spec(tag: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        url: "https://hooks.example.com/gupshup".into(),
        events: vec!["SENT".into(), "ENQUEUED".into()],
        tag: tag.into(),
        version: 2,
        headers: BTreeMap::from([("Authorization".to_string(), Secret::new("Bearer hdr-s3cr3t"))]),
        mode: WebhookMode::Unspecified,
        active: true,
    }
}

fn step_run(step: GupshupStep, req: &StartRequest) -> StepRun {
    StepRun {
        name: step.name().into(),
        onboarding_id: req.onboarding_id.clone(),
        request: req.clone(),
        handle: None,
        secret: None,
        data: json!({}),
        attempt: 1,
        state: OnboardingState::Pending,
        details: crate::domain::OnboardingDetails::empty(crate::domain::ProviderKind::Gupshup),
        was_stalled: false,
    }
}

/// What `link_app` made, as the tests read it.
#[derive(Debug)]
struct Started {
    handle: ProviderHandle,
    reconciled: bool,
}

/// The pipeline steps as the engine drives them, for tests about one call.
impl GupshupProvider {
    /// `link_app` as the engine runs it: an app the link found (a 409 naming it) is bound to
    /// this onboarding (in these tests always its own) and the step runs again to adopt it.
    async fn start(&self, ctx: &CallContext, req: &StartRequest) -> Result<Started, ProviderError> {
        let mut run = step_run(GupshupStep::LinkApp, req);
        let mut out = self.run_step(ctx, &run).await?;
        if out.found {
            run.handle = out.handle.clone();
            run.data = out.data.clone().unwrap_or_else(|| json!({}));
            run.attempt += 1;
            out = self.run_step(ctx, &run).await?;
        }
        let handle = out.handle.clone().expect("link_app records the app");
        let reconciled = out.attributes.get("reconciled").is_some_and(|v| v == "true");
        Ok(Started { handle, reconciled })
    }

    /// One `provisioning` poll without a stored app token.
    async fn status(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<Observation, ProviderError> {
        let mut run = step_run(GupshupStep::Provisioning, &start_req("status", None));
        run.handle = Some(handle.clone());
        Ok(self.run_step(ctx, &run).await?.observation)
    }
}

fn live_event(app_id: &str, ts: i64) -> Vec<u8> {
    // docs/providers.md 1.4, go-live event.
    json!({
        "app": "AcmeSupport", "appId": app_id, "phone": "919900000001", "timestamp": ts, "version": 2,
        "type": "onboarding-event",
        "payload": {"type": "docker-status-event", "payload": {"status": "live", "waId": "919900000001"}}
    })
    .to_string()
    .into_bytes()
}

#[async_trait]
impl ConformanceHarness for Env {
    fn ctx(&self) -> CallContext {
        self.context()
    }

    fn valid_start(&self, idempotency_key: &str) -> StartRequest {
        start_req(idempotency_key, None)
    }

    fn invalid_start(&self, idempotency_key: &str) -> StartRequest {
        with_name(start_req(idempotency_key, None), "Acme!Support")
    }

    async fn finish_customer(&self, handle: &ProviderHandle) {
        self.finish(&handle.external_key);
    }

    async fn inject_next_create(&self, fault: ConfFault) {
        let f = match fault {
            ConfFault::ServerError => Fault::Status { status: 500 },
            ConfFault::RateLimited => Fault::TooManyRequests { retry_after_secs: None },
            ConfFault::UnknownOutcome => Fault::Timeout { after_effect: true },
        };
        self.sim.core().fail_next(Some(LINK), 1, f);
    }

    async fn resources_created(&self) -> u64 {
        self.created("apps")
    }

    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8> {
        live_event(&handle.external_key, 1_700_000_000_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_against_the_simulator() {
    let env = Env::new().await;
    conformance::run_all(env.p.as_ref(), &env).await;
    assert_eq!(env.sim.core().counters().rate_limit_violations, 0);
}

#[tokio::test]
async fn registry_builds_the_adapter_for_gupshup_accounts() {
    let env = Env::new().await;
    let r = crate::providers::builtin::registry(&deps());
    let p = r.provider_for(&env.context()).unwrap();
    assert_eq!(p.kind(), ProviderKind::Gupshup);
    assert!(p.subscriptions().is_some() && p.partner_token().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_callers_share_one_login() {
    let env = Env::new().await;
    let ctx = env.context();
    // Link with another adapter instance, so the one under test starts with an empty cache.
    let other = GupshupProvider::new(deps());
    let app = other.start(&ctx, &start_req("single-flight", None)).await.unwrap().handle;
    env.sim.core().reset_counters();

    let mut run = step_run(GupshupStep::FetchAppToken, &start_req("single-flight", None));
    run.handle = Some(app);
    let outs = join_all((0..20).map(|_| env.p.run_step(&ctx, &run))).await;
    let secrets: Vec<Secret> = outs.into_iter().map(|o| o.unwrap().secret.unwrap()).collect();
    assert!(secrets.iter().all(|s| s == &secrets[0]));
    assert_eq!(env.calls(LOGIN), 1, "one login for 20 concurrent callers");
    let st = env.p.partner_token_status();
    assert!(st.cached && st.refresh_count == 1 && st.expires_at.is_some());
}

#[tokio::test]
async fn expired_partner_token_is_refreshed_once_on_401() {
    let env = Env::new().await;
    let ctx = env.context();
    let h = env.p.start(&ctx, &start_req("reauth", None)).await.unwrap().handle;
    assert_eq!(env.calls(LOGIN), 1);
    // The simulated Gupshup now considers the cached token expired (our cache does not know).
    env.sim.core().clock.advance(Duration::from_secs(25 * 3600));
    let mut run = step_run(GupshupStep::FetchAppToken, &start_req("reauth", None));
    run.handle = Some(h);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert!(out.secret.is_some());
    assert_eq!(env.calls(LOGIN), 2, "exactly one re-login");
    assert_eq!(env.calls(TOKEN), 2, "the 401 call and its one repeat");
    assert_eq!(env.p.partner_token_status().refresh_count, 2);
}

#[tokio::test]
async fn invalid_input_is_refused_before_any_call() {
    let env = Env::new().await;
    let ctx = env.context();
    let base = start_req("invalid", None);
    let long = "a".repeat(151);
    for name in ["short", "Acme!Support", "Acme_Support", "Acmé Support", long.as_str(), "       "] {
        match env.p.start(&ctx, &with_name(base.clone(), name)).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "gupshup.app_name", "{name}"),
            other => panic!("{name}: expected Invalid, got {other:?}"),
        }
    }
    let mut bad_region = base.clone();
    if let StartPayload::Gupshup(g) = &mut bad_region.payload {
        g.storage_region = Some("XX".into());
    }
    let e = env.p.start(&ctx, &bad_region).await.unwrap_err();
    assert!(matches!(e, ProviderError::Invalid { field: Some(ref f), .. } if f == "gupshup.storage_region"), "{e:?}");
    let bad_sub = start_req("invalid", Some(SubscriptionSpec { url: "not a url".into(), ..spec("t") }));
    let e = env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &bad_sub)).await.unwrap_err();
    assert!(matches!(e, ProviderError::Invalid { field: Some(ref f), .. } if f == "gupshup.subscription.url"), "{e:?}");
    assert_eq!(env.total_calls(), 0, "no call (not even a login) for invalid input");
    // The boundaries are accepted.
    env.p.start(&ctx, &with_name(base.clone(), "Acme01")).await.unwrap();
}

#[tokio::test]
async fn repeated_link_recovers_the_app_from_the_409() {
    let env = Env::new().await;
    let ctx = env.context();
    let req = start_req("dup-link", None);
    let first = env.p.start(&ctx, &req).await.unwrap();
    assert!(!first.reconciled);
    // The step finds the app but leaves it alone: only the engine can tell whether it is this
    // onboarding's (its own lost attempt) or another's.
    let callbacks = env.calls(CALLBACK);
    let found = env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &req)).await.unwrap();
    assert!(found.found);
    assert_eq!(found.progress, Progress::Wait(Duration::ZERO));
    assert_eq!(found.handle.as_ref().unwrap().external_key, first.handle.external_key);
    assert_eq!(env.calls(CALLBACK), callbacks, "a found app is not touched before it is bound");
    // Bound by the engine: the step runs again with the handle and finishes the adoption.
    let mut bound = step_run(GupshupStep::LinkApp, &req);
    bound.handle = found.handle.clone();
    bound.data = found.data.clone().unwrap();
    let again = env.p.run_step(&ctx, &bound).await.unwrap();
    assert_eq!(again.progress, Progress::Done);
    assert!(!again.found);
    assert_eq!(again.handle.as_ref().unwrap().external_key, first.handle.external_key);
    assert_eq!(again.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(again.details_view()["app_id"], json!(first.handle.external_key));
    assert_eq!(env.created("apps"), 1);
    assert_eq!(env.sim.core().counters().duplicate_creates, 1);
    assert_eq!(env.calls(LINK), 2, "the second run makes no link call");
    // The reconciled app's callback is (re)set to our ingress.
    let app = env.sim.app(&first.handle.external_key).unwrap();
    assert_eq!(app.callback_url.as_deref(), Some(env.webhook_url.as_str()));
}

#[tokio::test]
async fn partial_success_callback_is_repaired() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { fail_callback_next: Some(1), ..KnobsPatch::default() });
    let req = start_req("partial", None);
    let out = env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &req)).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    let app_id = out.handle.unwrap().external_key;
    assert_eq!(out.attributes.get("callback_repaired").map(String::as_str), Some("true"));
    assert_eq!(env.calls(CALLBACK), 1);
    let app = env.sim.app(&app_id).unwrap();
    assert_eq!(app.callback_url.as_deref(), Some(env.webhook_url.as_str()), "callback set through the API");
    assert_eq!(env.created("apps"), 1);
}

#[tokio::test]
async fn pipeline_error_is_a_failed_observation_with_the_raw_stage() {
    let env = Env::new().await;
    let ctx = env.context();
    // With `stageRetries` in the body (issue 17 point 10: off by default).
    env.sim.update_knobs(KnobsPatch {
        fail_next_pipelines: Some(1),
        pipeline_stage_retries: Some(true),
        ..KnobsPatch::default()
    });
    let req = start_req("pipeline-error", None);
    let h = env.p.start(&ctx, &req).await.unwrap().handle;
    env.finish(&h.external_key);
    let obs = env.p.status(&ctx, &h).await.unwrap();
    assert_eq!(obs.state, Some(OnboardingState::Failed));
    assert_eq!(obs.fields["creationStage"], "ERROR");
    assert_eq!(obs.fields["pipeLineStage"], "CREATE_DOCKER");
    assert_eq!(obs.fields["stageRetries"], "3");
    assert_eq!(obs.raw_status, "ERROR/CREATE_DOCKER");
    // As a step: done with the FAILED observation, not an error (the engine fails it).
    let mut run = step_run(GupshupStep::Provisioning, &req);
    run.handle = Some(h);
    run.state = OnboardingState::Provisioning;
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::Failed));
    assert_eq!(out.observation.fields["creationStage"], "ERROR");
}

#[tokio::test]
async fn a_live_onboarding_is_not_demoted_by_a_lagging_pipeline() {
    let env = Env::new().await;
    let ctx = env.context();
    let req = start_req("live-before-pipeline", None);
    let h = env.p.start(&ctx, &req).await.unwrap().handle;
    let mut run = step_run(GupshupStep::Provisioning, &req);
    run.handle = Some(h);
    // The live event made the onboarding LIVE; Gupshup's pipeline still says INITIAL.
    run.state = OnboardingState::Live;
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Done, "the live event ends provisioning");
    assert_eq!(out.observation.state, None, "no state change (never back to PROVISIONING)");
    assert_eq!(out.observation.raw_status, "INITIAL/CREATE_DOCKER", "the raw stage is still reported");
    // Still provisioning by our own account: keep waiting.
    run.state = OnboardingState::Provisioning;
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert!(matches!(out.progress, Progress::Wait(_)));
    assert_eq!(out.observation.state, Some(OnboardingState::Provisioning));
}

#[tokio::test]
async fn whole_pipeline_to_live_then_subscribe_once() {
    let env = Env::new().await;
    let ctx = env.context();
    let req = start_req("sequence", Some(spec("on-live")));
    let steps = env.p.pipeline(&req);
    let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
    // The stored names: never renamed.
    assert_eq!(names, ["link_app", "fetch_app_token", "provisioning", "subscribe"]);
    assert!(steps.iter().all(|s| s.enabled));
    assert_eq!(steps[0].enter_state, Some(OnboardingState::Pending));
    assert_eq!(steps[2].enter_state, Some(OnboardingState::Provisioning));
    assert!(!env.p.pipeline(&start_req("sequence", None))[3].enabled, "no subscribe without subscribe_on_live");

    // link_app
    let mut run = step_run(GupshupStep::LinkApp, &req);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    let handle = out.handle.clone().unwrap();
    let app_id = handle.external_key.clone();
    assert_eq!(out.details_view()["app_id"], json!(app_id));
    assert_eq!(out.details_view()["phone"], json!(env.sim.app(&app_id).map(|a| format!("+{}", a.phone)).unwrap()));
    assert_eq!(out.details_view()["subscribe_on_live"], json!(true));
    assert_eq!(env.sim.app(&app_id).unwrap().callback_url.as_deref(), Some(env.webhook_url.as_str()));
    run.handle = Some(handle);

    // fetch_app_token
    run.name = GupshupStep::FetchAppToken.name().into();
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.details_view()["app_token_ready"], json!(true));
    let token = out.secret.unwrap();
    assert!(token.expose().starts_with("sk_"));
    assert!(!format!("{:?}", out.details).contains(token.expose()));
    run.secret = Some(token);

    // provisioning: waits, then live once Gupshup finishes
    run.name = GupshupStep::Provisioning.name().into();
    run.state = OnboardingState::Provisioning;
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Wait(Duration::from_millis(50)));
    assert_eq!(out.observation.state, Some(OnboardingState::Provisioning));
    assert_eq!(out.observation.fields["creationStage"], "INITIAL");
    assert!(out.secret.is_none(), "the stored app token worked");

    // subscribe never runs before live
    let mut early = run.clone();
    early.name = GupshupStep::Subscribe.name().into();
    let out = env.p.run_step(&ctx, &early).await.unwrap();
    assert!(matches!(out.progress, Progress::Wait(_)));
    assert_eq!(env.sim.app(&app_id).unwrap().subscriptions, 0);

    env.finish(&app_id);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::Live));
    assert_eq!(out.observation.raw_status, "WHATSAPP_PROVISIONING_DONE/FINALIZE");
    assert_eq!(out.observation.fields["pipeLineStage"], "FINALIZE");
    run.state = OnboardingState::Live;

    // subscribe, then a repeat reconciles by tag
    run.name = GupshupStep::Subscribe.name().into();
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    let sub_id = out.details_view()["created_subscription"].as_str().unwrap().to_string();
    assert!(!sub_id.is_empty());
    assert!(!out.attributes.contains_key("reconciled"));
    let again = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(again.details_view()["created_subscription"], json!(sub_id));
    assert_eq!(again.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(env.sim.app(&app_id).unwrap().subscriptions, 1);
    assert_eq!(env.calls(SUB_CREATE), 1);
    assert!(!format!("{out:?}{again:?}").contains("hdr-s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_links_at_once_never_exceed_the_link_limit() {
    // The documented 10 / min, with the window shortened to 1 s on both sides to run fast;
    // the keying (per credential) and the queueing are what is under test.
    let window = Duration::from_secs(1);
    let mut config = sim_config();
    config.limits.link = LimitSpec { max: 10, window_ms: 1_000 };
    let limits = GupshupLimits { link: Limit { max: 10, window }, ..GupshupLimits::default() };
    let env = Env::with(config, limits, None).await;
    let ctx = env.context();
    let reqs: Vec<StartRequest> = (0..30).map(|i| start_req(&format!("burst-{i}"), None)).collect();
    let t0 = Instant::now();
    let outs = join_all(reqs.iter().map(|r| env.p.start(&ctx, r))).await;
    for o in outs {
        o.unwrap();
    }
    let c = env.sim.core().counters();
    assert_eq!(c.rate_limit_violations, 0, "{:?}", c.violations_by_limit);
    assert_eq!(env.created("apps"), 30);
    assert_eq!(env.calls(LINK), 30);
    assert_eq!(env.calls(LOGIN), 1);
    assert!(t0.elapsed() >= 2 * window, "30 links at 10 per window need at least two full windows");
}

#[tokio::test]
async fn server_errors_and_429_are_retried() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.core().fail_next(Some(LOGIN), 1, Fault::Status { status: 500 });
    let h = env.p.start(&ctx, &start_req("retries", None)).await.unwrap().handle;
    assert_eq!(env.calls(LOGIN), 2, "login retried after a 500");

    let before = env.calls(PIPELINE);
    env.sim.core().fail_next(Some(PIPELINE), 1, Fault::Status { status: 500 });
    env.sim.core().fail_next(Some(PIPELINE), 1, Fault::TooManyRequests { retry_after_secs: None });
    env.sim.core().fail_next(Some(PIPELINE), 1, Fault::Status { status: 503 });
    let obs = env.p.status(&ctx, &h).await.unwrap();
    assert_eq!(obs.state, Some(OnboardingState::Provisioning));
    assert_eq!(env.calls(PIPELINE) - before, 4, "three faults, then success");

    // Beyond the in-call budget the failure surfaces as retryable, for the engine.
    env.sim.core().fail_next(Some(PIPELINE), 4, Fault::Status { status: 502 });
    let e = env.p.status(&ctx, &h).await.unwrap_err();
    assert!(matches!(e, ProviderError::Retryable { .. }) && e.is_retryable(), "{e:?}");

    // The link itself is not repeated in-call: the engine retries it, reconciling.
    env.sim.core().fail_next(Some(LINK), 1, Fault::TooManyRequests { retry_after_secs: Some(1) });
    let e = env.p.start(&ctx, &start_req("retries-2", None)).await.unwrap_err();
    assert!(matches!(e, ProviderError::RateLimited { retry_after: Some(_), .. }), "{e:?}");
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let env = Env::new().await;
    let wrong = "wr0ng-partner-s3cret";
    let ctx = env.ctx_with(wrong);
    let e = env.p.check_credentials(&ctx).await.unwrap_err();
    assert!(matches!(e, ProviderError::Unauthenticated { .. }), "{e:?}");
    let e2 = env.p.start(&ctx, &start_req("secrets", None)).await.unwrap_err();
    assert!(matches!(e2, ProviderError::Unauthenticated { .. }), "{e2:?}");
    let status = env.p.partner_token_status();
    let texts = [
        format!("{e:?}"),
        format!("{e}"),
        format!("{e2:?}"),
        format!("{e2}"),
        format!("{status:?}"),
        format!("{:?}", env.p),
    ];
    for t in &texts {
        assert!(!t.contains(wrong), "partner secret leaked: {t}");
        assert!(!t.contains(SECRET));
    }
    assert!(status.last_error.is_some());

    // Errors after a successful login carry neither the secret, the partner token's use nor
    // the webhook secret that the link sends in its body.
    let ctx = env.context();
    env.sim.core().fail_next(Some(LINK), 1, Fault::Status { status: 500 });
    let e = env.p.start(&ctx, &start_req("secrets", None)).await.unwrap_err();
    let t = format!("{e:?} {e}");
    assert!(!t.contains(SECRET) && !t.contains(WEBHOOK_SECRET), "{t}");
    assert!(!format!("{ctx:?}").contains(WEBHOOK_SECRET));
}

#[tokio::test]
async fn check_credentials_and_partner_token_ops() {
    let env = Env::new().await;
    let ctx = env.context();
    let check = env.p.check_credentials(&ctx).await.unwrap();
    assert!(check.summary.contains("wa-onboard sandbox"), "{}", check.summary);
    assert_eq!(check.fields.get("partner_id").map(String::as_str), Some("1001"));
    assert_eq!(check.fields.get("is_tpp").map(String::as_str), Some("true"));
    let ops = env.p.partner_token().unwrap();
    let st = ops.refresh_partner_token(&ctx).await.unwrap();
    assert_eq!(st.refresh_count, 2);
    assert_eq!(env.calls(LOGIN), 2);
    let exp = st.expires_at.unwrap();
    let in_23h = crate::domain::now_ms() + 23 * 3600 * 1000;
    assert!(exp > in_23h, "24 h token, from the JWT");
    assert_eq!(ops.partner_token_status(), st);
}

#[tokio::test]
async fn app_token_in_string_shape_is_accepted() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { token_as_string: Some(true), ..KnobsPatch::default() });
    let req = start_req("token-string", None);
    let mut run = step_run(GupshupStep::FetchAppToken, &req);
    run.handle = Some(env.p.start(&ctx, &req).await.unwrap().handle);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert!(out.secret.unwrap().expose().starts_with("sk_"));
}

#[tokio::test]
async fn subscriptions_crud_with_validation_before_any_call() {
    let env = Env::new().await;
    let ctx = env.context();
    let handle = env.p.start(&ctx, &start_req("subs", None)).await.unwrap().handle;
    // No stored secret: the adapter fetches the app token itself.
    let target = ResourceRef { handle, secret: None, request_id: None };
    let ops = env.p.subscriptions().unwrap();
    let before = env.total_calls();

    let bad = [
        (SubscriptionSpec { url: "ftp://x".into(), ..spec("t") }, "spec.url"),
        (SubscriptionSpec { events: vec![], ..spec("t") }, "spec.events"),
        (SubscriptionSpec { events: vec!["COPY".into()], ..spec("t") }, "spec.events"),
        (SubscriptionSpec { events: vec!["ALL".into()], version: 2, ..spec("t") }, "spec.events"),
        (SubscriptionSpec { version: 4, ..spec("t") }, "spec.version"),
        (SubscriptionSpec { tag: " ".into(), ..spec("t") }, "spec.tag"),
        (SubscriptionSpec { mode: WebhookMode::Body, ..spec("t") }, "spec.mode"),
    ];
    for (s, field) in bad {
        match ops.create_subscription(&ctx, &target, &s).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(env.total_calls(), before, "validation made calls");

    let created = ops.create_subscription(&ctx, &target, &spec("primary")).await.unwrap();
    assert_eq!(created.spec.tag, "primary");
    assert_eq!(created.provider_mode, 1025, "SENT + ENQUEUED");
    assert_eq!(created.spec.events, ["SENT", "ENQUEUED"]);
    assert_eq!(created.spec.version, 2);
    match ops.create_subscription(&ctx, &target, &spec("primary")).await {
        Err(ProviderError::Conflict { .. }) => {}
        other => panic!("duplicate tag: expected Conflict, got {other:?}"),
    }
    assert_eq!(env.calls(SUB_CREATE), 1, "a taken tag is refused before the create");

    let list = ops.list_subscriptions(&ctx, &target).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].spec.headers.contains_key("Authorization"), "header names are read back");
    assert!(!format!("{list:?}").contains("hdr-s3cr3t"));
    let got = ops.get_subscription(&ctx, &target, &created.id).await.unwrap();
    assert_eq!(got.id, created.id);
    assert_eq!(got.spec.url, "https://hooks.example.com/gupshup");

    let change = SubscriptionSpec { url: "https://hooks.example.com/v2".into(), active: false, ..spec("primary") };
    let upd =
        ops.update_subscription(&ctx, &target, &created.id, &change, &["url".into(), "active".into()]).await.unwrap();
    assert_eq!(upd.spec.url, "https://hooks.example.com/v2");
    assert!(!upd.spec.active);
    assert_eq!(upd.spec.events, ["SENT", "ENQUEUED"], "modes untouched");

    // ALL needs version 3; the current version (2) applies when the version is not updated.
    let all = SubscriptionSpec { events: vec!["ALL".into()], version: 3, ..spec("primary") };
    match ops.update_subscription(&ctx, &target, &created.id, &all, &["events".into()]).await {
        Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "spec.events"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let upd =
        ops.update_subscription(&ctx, &target, &created.id, &all, &["events".into(), "version".into()]).await.unwrap();
    assert_eq!((upd.spec.version, upd.spec.events.clone()), (3, vec!["ALL".to_string()]));
    match ops.update_subscription(&ctx, &target, &created.id, &all, &["nope".into()]).await {
        Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "update_mask"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    ops.delete_subscription(&ctx, &target, &created.id).await.unwrap();
    assert!(matches!(ops.get_subscription(&ctx, &target, &created.id).await, Err(ProviderError::NotFound { .. })));
    assert!(matches!(ops.delete_subscription(&ctx, &target, &created.id).await, Err(ProviderError::NotFound { .. })));
    assert!(ops.list_subscriptions(&ctx, &target).await.unwrap().is_empty());
}

/// A webhook receiver: the simulator posts its callbacks here, and the test reads the
/// exact bodies it sent.
async fn capture_server() -> (String, mpsc::UnboundedReceiver<Bytes>, Running) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/hook/{secret}",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let running = crate::sim::common::serve(router, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (format!("{}/hook/{WEBHOOK_SECRET}", running.base_url()), rx, running)
}

async fn next_body(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no callback within 5 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_sent_by_the_simulator_parse() {
    let (hook, mut rx, _hook_server) = capture_server().await;
    let env = Env::with(sim_config(), GupshupLimits::default(), Some(hook)).await;
    let ctx = env.context();
    let h = env.p.start(&ctx, &start_req("callbacks", None)).await.unwrap().handle;
    let app_id = h.external_key.clone();

    // The live event, as the simulator sends it when the app goes live.
    env.finish(&app_id);
    assert_eq!(env.p.status(&ctx, &h).await.unwrap().state, Some(OnboardingState::Live));
    let body = next_body(&mut rx).await;
    let evs = env.p.parse_callback(&body).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].external_key, app_id);
    assert_eq!(evs[0].state, Some(OnboardingState::Live));
    assert_eq!(evs[0].raw_status, "docker-status-event:live");
    assert!(evs[0].occurred_ms.is_some());
    assert_eq!(env.p.parse_callback(&body).unwrap()[0].dedupe_key, evs[0].dedupe_key);

    // Account events: raw values kept, no state hinted.
    let events = [
        json!({"type": "account-event", "payload": {"type": "review-event", "payload": {"status": "REJECTED", "actionDate": 1}}}),
        json!({"type": "account-event", "payload": {"type": "tier-event", "payload": {"event": "UPGRADE", "oldLimit": "TIER_1K", "currentLimit": "TIER_10K"}}}),
        json!({"type": "account-event", "payload": {"type": "pndn-event", "payload": {"status": "approved"}}}),
    ];
    let mut keys = vec![evs[0].dedupe_key.clone()];
    for (ev, raw) in events.into_iter().zip(["review-event:REJECTED", "tier-event:UPGRADE", "pndn-event:approved"]) {
        let (_, n) = env.sim.send_event(&app_id, ev).unwrap();
        assert_eq!(n, 1);
        let body = next_body(&mut rx).await;
        let evs = env.p.parse_callback(&body).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].raw_status, raw);
        assert_eq!(evs[0].state, None);
        assert_eq!(evs[0].external_key, app_id);
        keys.push(evs[0].dedupe_key.clone());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "distinct events have distinct dedupe keys");
}

#[tokio::test]
async fn cancel_is_not_supported() {
    let env = Env::new().await;
    let h = ProviderHandle { external_key: "x".into(), data: json!({}) };
    assert!(matches!(
        env.p.cancel(&env.context(), &h).await,
        Err(ProviderError::NotSupported { capability: Capability::Cancel })
    ));
    assert!(!env.p.capabilities().contains(&Capability::Cancel));
}

#[tokio::test]
async fn taken_app_name_is_a_conflict() {
    let env = Env::new().await;
    let ctx = env.context();
    let first = start_req("name-a", None);
    env.p.start(&ctx, &first).await.unwrap();
    let StartPayload::Gupshup(g) = &first.payload else { unreachable!() };
    // Another phone, the same name: Gupshup's "Bot Already Exists".
    let other = with_name(start_req("name-b", None), &g.app_name);
    match env.p.start(&ctx, &other).await {
        Err(e @ ProviderError::Conflict { .. }) => assert!(!e.is_retryable()),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(env.created("apps"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_after_an_unknown_outcome_reconciles_by_tag() {
    let env = Env::new().await;
    let ctx = env.context();
    let req = start_req("sub-unknown", Some(spec("live-hook")));
    let h = env.p.start(&ctx, &req).await.unwrap().handle;
    env.finish(&h.external_key);
    let mut run = step_run(GupshupStep::Subscribe, &req);
    run.handle = Some(h.clone());
    run.state = OnboardingState::Live;
    // The create happens but its answer is lost.
    env.sim.core().fail_next(Some(SUB_CREATE), 1, Fault::Timeout { after_effect: true });
    let e = env.p.run_step(&ctx, &run).await.unwrap_err();
    assert!(matches!(e, ProviderError::UnknownOutcome { .. }) && e.is_retryable(), "{e:?}");
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(env.sim.app(&h.external_key).unwrap().subscriptions, 1);
    assert_eq!(env.calls(SUB_CREATE), 1);
}

// issue 17 points 14-15

/// Point 14: the vendor's name rule (6–150, no special characters) read as
/// `APP_NAME_RE` = letters and digits only: a space is refused before any call (the old
/// rule allowed it); surrounding whitespace is trimmed and the trimmed name is sent.
#[tokio::test]
async fn app_names_with_spaces_are_refused_and_names_are_sent_trimmed() {
    let env = Env::new().await;
    let ctx = env.context();
    for name in ["Acme Support", "Acme-Support1", "AcmeSupport\u{a0}x"] {
        match env.p.start(&ctx, &with_name(start_req("names", None), name)).await {
            Err(ProviderError::Invalid { field: Some(f), message, .. }) => {
                assert_eq!(f, "gupshup.app_name", "{name}");
                assert!(message.contains("special characters are not allowed"), "{name}: {message}");
            }
            other => panic!("{name}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(env.total_calls(), 0, "names are checked before any call");
    let out = env.p.start(&ctx, &with_name(start_req("names", None), "  AcmeTrimmed1  ")).await.unwrap();
    let app = env.sim.app(&out.handle.external_key).expect("the app exists at the sim");
    assert_eq!(app.name, "AcmeTrimmed1");
}

/// Point 14: an unset version (proto 0) sends `DEFAULT_SUBSCRIPTION_VERSION` (3), so the
/// v3-only `OTHERS` of the vendor's own sample is accepted; `COPY` is "not supported"; the
/// simulator's strict profile (current page: versions 2, 3) accepts what we send.
#[tokio::test]
async fn unset_subscription_version_sends_3_with_others_and_copy_is_not_supported() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { versions_current_only: Some(true), ..KnobsPatch::default() });
    let handle = env.p.start(&ctx, &start_req("subs-v3", None)).await.unwrap().handle;
    let target = ResourceRef { handle, secret: None, request_id: None };
    let ops = env.p.subscriptions().unwrap();
    let sample = ["SENT", "ENQUEUED", "DELIVERED", "READ", "DELETED", "MESSAGE", "OTHERS", "TEMPLATE", "ACCOUNT"];
    let s = SubscriptionSpec { events: sample.iter().map(|m| m.to_string()).collect(), version: 0, ..spec("v3") };
    let created = ops.create_subscription(&ctx, &target, &s).await.unwrap();
    assert_eq!(created.spec.version, DEFAULT_SUBSCRIPTION_VERSION);
    assert!(created.spec.events.iter().any(|e| e == "OTHERS"), "{:?}", created.spec.events);
    match ops.create_subscription(&ctx, &target, &SubscriptionSpec { events: vec!["COPY".into()], ..spec("c") }).await {
        Err(ProviderError::Invalid { field: Some(f), message, .. }) => {
            assert_eq!(f, "spec.events");
            assert!(message.contains("not supported"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Point 15: a login refused after the account's declared client-secret expiry is
/// `CredentialExpired` (FAILED_PRECONDITION / REAUTH_REQUIRED), not a plain rejection; the
/// expiry is reported as expiring 14 days ahead, and a refused login before it stays
/// `Unauthenticated`.
#[tokio::test]
async fn expired_client_secret_is_credential_expired_and_expiry_is_reported_ahead() {
    let env = Env::new().await;
    let now = crate::domain::now_ms();
    let day = 86_400_000;
    let mut ctx = env.context();
    ctx.options.secret_expire_ms = Some(now + 3 * day);
    let x = env.p.credential_expiry(&ctx).expect("declared expiry");
    assert_eq!(x.state, crate::providers::CredentialExpiryState::Expiring);
    assert!(x.warning.contains("Settings > API client details"), "{}", x.warning);
    env.p.check_credentials(&ctx).await.expect("not expired yet: the login works");

    // The secret lapses at Gupshup (sim knob) and the declared date has passed.
    env.sim.update_knobs(KnobsPatch { secret_expires_at_ms: Some(Some(0)), ..KnobsPatch::default() });
    ctx.options.secret_expire_ms = Some(now - day);
    match env.p.check_credentials(&ctx).await {
        Err(ProviderError::CredentialExpired { raw, message }) => {
            assert_eq!(raw, "401");
            assert!(message.starts_with("client secret expired (expired "), "{message}");
        }
        other => panic!("expected CredentialExpired, got {other:?}"),
    }
    // Without a declared expiry, the same refusal is a plain rejection.
    ctx.options.secret_expire_ms = None;
    assert!(matches!(env.p.check_credentials(&ctx).await, Err(ProviderError::Unauthenticated { .. })));
}

// ---------- issue 17 points 9-13 ----------

const APP_LIST: &str = "GET /partner/app/list";
const PARTNER_APPS: &str = "GET /partner/account/api/partnerApps";
const CALLBACK_CURRENT: &str = "PUT /partner/app/{app_id}/callback";

/// Point 9: a retried link (same name and phone) that meets the TPP page's 409 `Bot Already
/// Exists` finds its app through the app list, in every list shape and through the older
/// list when the current one is gone.
#[tokio::test]
async fn bot_already_exists_on_a_retried_link_is_recovered_from_the_app_list() {
    use crate::sim::gupshup::AppListShape;
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { bot_exists_on_relink: Some(true), ..KnobsPatch::default() });
    // Another app of the partner, whose phone shares a prefix with ours: never taken for ours.
    env.p.start(&ctx, &start_req("bot-exists-neighbour", None)).await.unwrap();
    let req = start_req("bot-exists", None);
    let first = env.p.start(&ctx, &req).await.unwrap();
    let cases = [
        (AppListShape::Array, false),
        (AppListShape::Data, false),
        (AppListShape::PartnerAppsList, false),
        (AppListShape::Array, true),
    ];
    for (shape, gone) in cases {
        env.sim.update_knobs(KnobsPatch {
            applist_shape: Some(shape),
            applist_gone: Some(gone),
            ..KnobsPatch::default()
        });
        let (list, older) = (env.calls(APP_LIST), env.calls(PARTNER_APPS));
        let found = env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &req)).await.unwrap();
        assert!(found.found, "{shape:?} gone={gone}");
        assert_eq!(found.handle.as_ref().unwrap().external_key, first.handle.external_key, "{shape:?} gone={gone}");
        assert_eq!(env.calls(APP_LIST) - list, 1, "one page is enough");
        assert_eq!(env.calls(PARTNER_APPS) - older, u64::from(gone), "the older list only after a 404");
    }
    // link_app run again (reconciling) sees the same app.
    let again = env.p.start(&ctx, &req).await.unwrap();
    assert!(again.reconciled);
    assert_eq!(again.handle.external_key, first.handle.external_key);
    assert_eq!(env.created("apps"), 2);

    // The name is ours, the phone someone else's: still a conflict, never this app.
    let StartPayload::Gupshup(g) = &req.payload else { unreachable!() };
    let other_phone = with_name(start_req("bot-exists-other", None), &g.app_name);
    match env.p.start(&ctx, &other_phone).await {
        Err(e @ ProviderError::Conflict { .. }) => assert!(!e.is_retryable()),
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// Point 9: an app list Gupshup refuses (a strict server without the lookup) ends in a clean
/// conflict, not a panic or a loop.
#[tokio::test]
async fn bot_already_exists_with_an_unreadable_app_list_is_a_conflict() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { bot_exists_on_relink: Some(true), ..KnobsPatch::default() });
    let req = start_req("bot-exists-refused", None);
    env.p.start(&ctx, &req).await.unwrap();
    env.sim.core().fail_next(Some(APP_LIST), 1, Fault::Status { status: 400 });
    match env.p.start(&ctx, &req).await {
        Err(ProviderError::Conflict { message, .. }) => assert!(message.contains("app list"), "{message}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(env.calls(APP_LIST), 1);
}

/// Point 10: by default the pipeline body has no `stageRetries` (the vendor never shows it
/// there) and the failure reason does not invent one.
#[tokio::test]
async fn a_pipeline_error_without_stage_retries_fails_with_a_plain_reason() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { fail_next_pipelines: Some(1), ..KnobsPatch::default() });
    let h = env.p.start(&ctx, &start_req("error-plain", None)).await.unwrap().handle;
    env.finish(&h.external_key);
    let obs = env.p.status(&ctx, &h).await.unwrap();
    assert_eq!(obs.state, Some(OnboardingState::Failed));
    assert!(!obs.fields.contains_key("stageRetries"));
    assert_eq!(obs.reason, "Gupshup provisioning failed at CREATE_DOCKER");
}

/// Point 10: an ERROR shown while Gupshup still retries (`stageRetries` below 3) does not
/// fail the onboarding; the final one does.
#[tokio::test]
async fn an_error_while_gupshup_retries_is_not_final() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch {
        fail_next_pipelines: Some(1),
        error_while_retrying: Some(true),
        ..KnobsPatch::default()
    });
    let h = env.p.start(&ctx, &start_req("error-retrying", None)).await.unwrap().handle;
    assert!(env.sim.start_pipeline(&h.external_key));
    for retries in 1..=2 {
        env.sim.core().clock.advance(Duration::from_millis(STAGE_MS));
        let obs = env.p.status(&ctx, &h).await.unwrap();
        assert_eq!(obs.fields["creationStage"], "ERROR");
        assert_eq!(obs.fields["stageRetries"], retries.to_string());
        assert_eq!(obs.state, Some(OnboardingState::Provisioning), "retry {retries}: {obs:?}");
    }
    env.sim.core().clock.advance(Duration::from_millis(2 * STAGE_MS));
    let obs = env.p.status(&ctx, &h).await.unwrap();
    assert_eq!(obs.fields["stageRetries"], "3");
    assert_eq!(obs.state, Some(OnboardingState::Failed));
    assert_eq!(obs.reason, "Gupshup provisioning failed at CREATE_DOCKER (stageRetries 3)");
}

/// Point 11: `WHATSAPP_PROVISIONING_DONE` is live before the pipeline reaches FINALIZE, and
/// the lagging stage is visible in the reason.
#[tokio::test]
async fn provisioning_done_before_finalize_is_live() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { done_before_finalize: Some(true), ..KnobsPatch::default() });
    let req = start_req("done-early", None);
    let h = env.p.start(&ctx, &req).await.unwrap().handle;
    assert!(env.sim.start_pipeline(&h.external_key));
    env.sim.core().clock.advance(Duration::from_millis(3 * STAGE_MS));
    let mut run = step_run(GupshupStep::Provisioning, &req);
    run.handle = Some(h);
    run.state = OnboardingState::Provisioning;
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.observation.raw_status, "WHATSAPP_PROVISIONING_DONE/GET_CERTIFICATE");
    assert_eq!(out.observation.state, Some(OnboardingState::Live));
    assert_eq!(out.progress, Progress::Done);
    assert!(out.observation.reason.contains("GET_CERTIFICATE"), "{}", out.observation.reason);
}

/// Point 12: a stored app token that Gupshup no longer accepts makes the pipeline answer its
/// 400; the adapter fetches the token once, retries, and stores the new one.
#[tokio::test]
async fn a_stale_app_token_on_the_pipeline_is_fetched_again_once() {
    let env = Env::new().await;
    let ctx = env.context();
    let req = start_req("stale-token", None);
    let mut run = step_run(GupshupStep::FetchAppToken, &req);
    run.handle = Some(env.p.start(&ctx, &req).await.unwrap().handle);
    let old = env.p.run_step(&ctx, &run).await.unwrap().secret.unwrap();
    let app_id = run.handle.as_ref().unwrap().external_key.clone();
    let new = env.sim.rotate_app_token(&app_id).unwrap();
    run.name = GupshupStep::Provisioning.name().into();
    run.state = OnboardingState::Provisioning;
    run.secret = Some(old);
    let tokens = env.calls(TOKEN);
    let pipelines = env.calls(PIPELINE);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(out.observation.state, Some(OnboardingState::Provisioning));
    assert_eq!(out.secret.as_ref().map(Secret::expose), Some(new.as_str()), "the new token is stored");
    assert_eq!(env.calls(TOKEN) - tokens, 1, "exactly one extra token fetch");
    assert_eq!(env.calls(PIPELINE) - pipelines, 2, "the refused call and its one repeat");

    // The same 400 after a fresh token: the request itself is refused, once, cleanly.
    run.secret = out.secret;
    env.sim.core().fail_next(Some(PIPELINE), 2, Fault::Status { status: 400 });
    let tokens = env.calls(TOKEN);
    match env.p.run_step(&ctx, &run).await {
        Err(ProviderError::Invalid { message, .. }) => assert!(message.contains("pipeline"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(env.calls(TOKEN) - tokens, 1, "one token fetch, no loop");
}

/// Point 12: an expired partner token answered with 403 `Invalid Access Token` is renewed
/// once, as a 401 is.
#[tokio::test]
async fn a_403_invalid_access_token_renews_the_partner_token_once() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch { partner_token_invalid_403: Some(true), ..KnobsPatch::default() });
    let h = env.p.start(&ctx, &start_req("reauth-403", None)).await.unwrap().handle;
    env.sim.core().clock.advance(Duration::from_secs(25 * 3600));
    let mut run = step_run(GupshupStep::FetchAppToken, &start_req("reauth-403", None));
    run.handle = Some(h);
    let out = env.p.run_step(&ctx, &run).await.unwrap();
    assert!(out.secret.is_some());
    assert_eq!(env.calls(LOGIN), 2, "exactly one re-login");
    assert_eq!(env.calls(TOKEN), 2, "the 403 call and its one repeat");
}

/// Point 13: when `PUT …/callbackUrl` is gone (404), the repair uses `PUT …/callback`.
#[tokio::test]
async fn callback_repair_falls_back_to_the_callback_endpoint_on_404() {
    let env = Env::new().await;
    let ctx = env.context();
    env.sim.update_knobs(KnobsPatch {
        fail_callback_next: Some(1),
        callback_url_gone: Some(true),
        ..KnobsPatch::default()
    });
    let out = env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &start_req("callback-gone", None))).await.unwrap();
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.attributes.get("callback_repaired").map(String::as_str), Some("true"));
    assert_eq!((env.calls(CALLBACK), env.calls(CALLBACK_CURRENT)), (1, 1));
    let app = env.sim.app(&out.handle.unwrap().external_key).unwrap();
    assert_eq!(app.callback_url.as_deref(), Some(env.webhook_url.as_str()));

    // Both gone: a clean error, no loop.
    env.sim.update_knobs(KnobsPatch {
        fail_callback_next: Some(1),
        callback_gone: Some(true),
        ..KnobsPatch::default()
    });
    let e =
        env.p.run_step(&ctx, &step_run(GupshupStep::LinkApp, &start_req("callback-gone-2", None))).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    assert_eq!((env.calls(CALLBACK), env.calls(CALLBACK_CURRENT)), (2, 2));
}
