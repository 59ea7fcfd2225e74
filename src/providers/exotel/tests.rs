//! The Exotel adapter against the Exotel simulator (both clusters).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::domain::account::{AccountOptions, Credentials, ExotelRegion};
use crate::domain::{AccountId, E164, OnboardingId, Secret, WabaId};
use crate::providers::conformance::{self, ConformanceHarness, Fault};
use crate::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
use crate::providers::{GupshupStart, StepRun};
use crate::sim::common::Fault as SimFault;
use crate::sim::exotel::{ExotelKnobs, ExotelSim, ExotelSimConfig, ExotelSimServers, TokenStatus};

const MINT: &str = "POST /v2/accounts/{sid}/isv";
const VALIDATE: &str = "GET /v2/accounts/{sid}/isv";

fn deps() -> AdapterDeps {
    AdapterDeps {
        // Short total timeout so a held response becomes an unknown outcome quickly.
        http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(2), total: Duration::from_millis(800) })
            .unwrap(),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            total_budget: Duration::from_secs(5),
        },
        poll_interval: Duration::from_secs(7),
    }
}

struct Env {
    sim: ExotelSim,
    srv: ExotelSimServers,
    p: ExotelProvider,
}

async fn env() -> Env {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = ExotelSimConfig { sandbox: false, ..Default::default() };
    let (sim, srv) = ExotelSim::spawn(cfg, any, any).await.unwrap();
    sim.core().with_knobs(|k| k.timeout_hold_ms = 1_500);
    Env { sim, srv, p: ExotelProvider::new(&deps()) }
}

fn ctx_for(base: String, sid: &str, key: &str, token: &str) -> CallContext {
    CallContext {
        account_id: AccountId::parse("acct-exotel").unwrap(),
        credentials: Credentials::Exotel {
            account_sid: sid.into(),
            api_key: key.into(),
            api_token: Secret::new(token),
        },
        options: AccountOptions::default(),
        webhook_url: Secret::new("http://127.0.0.1:1/webhooks/exotel/acct-exotel/s3cret"),
        base_url: base,
    }
}

impl Env {
    fn sg(&self) -> CallContext {
        ctx_for(self.srv.singapore.base_url(), "sandbox-sg", "sandbox-key", "sandbox-token")
    }

    fn mumbai(&self) -> CallContext {
        ctx_for(self.srv.mumbai.base_url(), "sandbox-in", "sandbox-key", "sandbox-token")
    }

    fn calls(&self, endpoint: &str) -> u64 {
        self.sim.core().counters().calls.get(endpoint).copied().unwrap_or(0)
    }

    fn links(&self) -> u64 {
        self.sim.core().counters().created.get("links").copied().unwrap_or(0)
    }
}

fn request(key: &str, payload: StartPayload) -> StartRequest {
    StartRequest {
        onboarding_id: OnboardingId::parse("onb-exotel").unwrap(),
        idempotency_key: key.into(),
        reference: "ref-1".into(),
        payload,
    }
}

fn step(step: ExotelStep, handle: Option<ProviderHandle>) -> StepRun {
    StepRun {
        name: step.name().into(),
        onboarding_id: OnboardingId::parse("onb-exotel").unwrap(),
        request: request("onb-exotel", StartPayload::Exotel),
        handle,
        secret: None,
        data: json!({}),
        attempt: 1,
        state: OnboardingState::Pending,
        details: crate::domain::OnboardingDetails::empty(crate::domain::ProviderKind::Exotel),
        was_stalled: false,
    }
}

/// What `mint_link` made, as the tests read it.
#[derive(Debug)]
struct Started {
    handle: ProviderHandle,
    reconciled: bool,
}

/// The pipeline steps as the engine drives them, for tests about one call.
impl ExotelProvider {
    /// `mint_link` for `req`, no link recorded yet.
    async fn start(&self, ctx: &CallContext, req: &StartRequest) -> Result<Started, ProviderError> {
        let run = StepRun { request: req.clone(), ..step(ExotelStep::MintLink, None) };
        let out = self.run_step(ctx, &run).await?;
        let reconciled = out.attributes.get("reconciled").is_some_and(|v| v == "true");
        Ok(Started { handle: out.handle.expect("mint_link records the link"), reconciled })
    }

    /// One `await_customer` poll of the link token.
    async fn status(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<Observation, ProviderError> {
        Ok(self.run_step(ctx, &step(ExotelStep::AwaitCustomer, Some(handle.clone()))).await?.observation)
    }
}

#[async_trait]
impl ConformanceHarness for Env {
    fn ctx(&self) -> CallContext {
        self.sg()
    }

    fn valid_start(&self, key: &str) -> StartRequest {
        request(key, StartPayload::Exotel)
    }

    fn invalid_start(&self, key: &str) -> StartRequest {
        request(
            key,
            StartPayload::Gupshup(GupshupStart {
                app_name: "AcmeSupport".into(),
                waba_id: WabaId::parse("123456789").unwrap(),
                phone: E164::parse("+15551112222").unwrap(),
                storage_region: None,
                subscribe_on_live: None,
            }),
        )
    }

    async fn finish_customer(&self, handle: &ProviderHandle) {
        self.sim.complete_customer(&handle.external_key).unwrap();
    }

    async fn inject_next_create(&self, fault: Fault) {
        let f = match fault {
            Fault::ServerError => SimFault::Status { status: 503 },
            Fault::RateLimited => SimFault::TooManyRequests { retry_after_secs: None },
            Fault::UnknownOutcome => SimFault::Timeout { after_effect: true },
        };
        self.sim.core().fail_next(Some(MINT), 1, f);
    }

    async fn resources_created(&self) -> u64 {
        self.links()
    }

    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8> {
        // Exotel documents no callback; this is what one would look like if it existed.
        serde_json::to_vec(&json!({ "token": handle.external_key, "status": "USED" })).unwrap()
    }
}

/// The whole shared suite. Exotel declares no lookup, no callback and no cancel capability,
/// so exactly those checks are skipped, and `mint_link` is not repeated after it minted (the
/// tests below pin what Exotel does instead); every capability it declares is checked.
#[tokio::test]
async fn conformance() {
    let e = env().await;
    let report = conformance::run_all(&e.p, &e).await;
    assert_eq!(
        report.skipped(),
        vec![
            ("unknown_outcome_reconciles", "skipped: no lookup capability".to_string()),
            ("callbacks", "skipped: no callback capability".to_string()),
            ("cancel", "skipped: no cancel capability".to_string()),
        ]
    );
    assert_eq!(
        report.passed(),
        ["capabilities", "pipeline_reaches_live", "every_step_repeats", "error_classification", "unknown_step"]
    );
}

/// Exotel has no lookup: after an unknown outcome a repeat mints a new link (never claims
/// `reconciled`); the lost one lapses unused.
#[tokio::test]
async fn unknown_outcome_then_repeat_mints_a_fresh_link() {
    let e = env().await;
    e.inject_next_create(Fault::UnknownOutcome).await;
    let req = e.valid_start("k");
    match e.p.start(&e.sg(), &req).await {
        Err(ProviderError::UnknownOutcome { .. }) => {}
        other => panic!("expected UnknownOutcome, got {other:?}"),
    }
    assert_eq!(e.links(), 1, "the held call did mint");
    let again = e.p.start(&e.sg(), &req).await.unwrap();
    assert!(!again.reconciled);
    assert_eq!(e.links(), 2);
    assert_eq!(e.sim.token(&again.handle.external_key).unwrap().status, TokenStatus::Valid);
}

#[tokio::test]
async fn callbacks_are_refused_as_malformed() {
    let e = env().await;
    let h = ProviderHandle { external_key: "t".into(), data: json!({}) };
    for body in [e.valid_callback(&h), Vec::new(), b"not json".to_vec()] {
        assert!(matches!(e.p.parse_callback(&body), Err(ProviderError::Malformed { .. })));
    }
}

/// Issue 17 point 1: no vendor page documents a batch parameter (docs/providers.md §2.2), so a
/// batch of N is N plain POSTs (the sim answers 400 to `?count`), all returned together.
#[tokio::test]
async fn batch_of_50_is_50_plain_calls_and_51_or_0_are_refused_before_any_call() {
    let e = env().await;
    let ops = e.p.hosted_links().unwrap();
    for bad in [0, 51] {
        match ops.mint_links(&e.sg(), bad).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "count"),
            other => panic!("count {bad}: expected Invalid count, got {other:?}"),
        }
    }
    assert_eq!(e.calls(MINT), 0, "refused counts must not reach Exotel");

    let links = ops.mint_links(&e.sg(), 50).await.unwrap();
    assert_eq!(links.len(), 50);
    assert_eq!(e.calls(MINT), 50, "one documented call per link");
    assert_eq!(e.links(), 50);
    let mut tokens: Vec<_> = links.iter().map(|l| l.token.clone()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 50);
    for l in &links {
        let v = e.sim.token(&l.token).expect("token known to the sim");
        assert_eq!(v.onboarding_url, l.url);
        assert!(l.expire_ms.unwrap() > now_ms() + LINK_TTL.as_millis() as i64 - 60_000);
    }
    let one = ops.mint_links(&e.sg(), 1).await.unwrap();
    assert_eq!((one.len(), e.calls(MINT)), (1, 51));
}

/// A batch goes through the shared plumbing: a 5xx on one of its calls is retried in-call
/// (the batch is still whole), and the calls are paced by the rate limiter (`MINT_PACE`).
#[tokio::test]
async fn batch_calls_are_retried_and_paced() {
    let e = env().await;
    e.sim.core().fail_next(Some(MINT), 1, SimFault::Status { status: 503 });
    let started = std::time::Instant::now();
    let n = MINT_PACE.0 + 5;
    let links = e.p.hosted_links().unwrap().mint_links(&e.sg(), n).await.unwrap();
    assert_eq!(links.len(), n as usize);
    assert_eq!(e.links(), u64::from(n));
    assert_eq!(e.calls(MINT), u64::from(n) + 1, "the 503 was retried once");
    // More calls than one pace window allows: the batch waited for the window to roll.
    assert!(started.elapsed() >= MINT_PACE.1 * 9 / 10, "not paced: {:?}", started.elapsed());
}

/// Issue 17 point 2: every placement of the link a vendor page shows yields the link; the
/// create page's published sample (the validate body, no link) is a clear Malformed error
/// that keeps the body.
#[tokio::test]
async fn every_documented_create_answer_shape_yields_the_link() {
    use crate::sim::exotel::CreateShape;
    let e = env().await;
    for shape in [
        CreateShape::DataOnboardingUrl,
        CreateShape::IsvUrl,
        CreateShape::DataUrl,
        CreateShape::BareOverview,
        CreateShape::DataUrlList,
    ] {
        e.sim.set_knobs(ExotelKnobs { create_shape: shape, ..Default::default() });
        let out = e.p.start(&e.sg(), &e.valid_start("k")).await.unwrap_or_else(|err| panic!("{shape:?}: {err}"));
        assert!(e.sim.token(&out.handle.external_key).is_some(), "{shape:?}");
    }
    e.sim.set_knobs(ExotelKnobs { create_shape: CreateShape::ValidateCopy, ..Default::default() });
    match e.p.start(&e.sg(), &e.valid_start("k")).await {
        Err(ProviderError::Malformed { message }) => {
            assert!(message.contains("exotel create answer has no URL"), "{message}");
            assert!(message.contains("onboarding_token_status"), "raw body kept: {message}");
            assert!(!message.contains("sandbox-token"), "{message}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[tokio::test]
async fn pipeline_mints_then_reaches_used_as_live() {
    let e = env().await;
    let specs = e.p.pipeline(&e.valid_start("k"));
    let names: Vec<_> = specs.iter().map(|s| s.name).collect();
    // The stored names: never renamed.
    assert_eq!(names, ["mint_link", "await_customer"]);
    assert!(specs[1].deadline >= Duration::from_secs(25 * 3600));

    let out = e.p.run_step(&e.sg(), &step(ExotelStep::MintLink, None)).await.unwrap();
    assert_eq!(out.progress, super::super::Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::AwaitingCustomer));
    let handle = out.handle.clone().unwrap();
    let token = handle.external_key.clone();
    let view = e.sim.token(&token).expect("external key is the sim's token");
    assert_eq!(out.details_view()["onboarding_url"], json!(view.onboarding_url));
    assert_eq!(out.details_view()["token"], json!(token));
    assert_eq!(out.details_view()["token_status"], json!("VALID"));
    assert_eq!(out.details_view()["customers_remaining"], json!(5));
    let exp = out.details_view()["link_expire_ms"].as_i64().unwrap();
    assert_eq!(out.expire_ms, Some(exp));
    assert!((exp - now_ms() - LINK_TTL.as_millis() as i64).abs() < 60_000);

    // A repeat with the handle recorded mints nothing more.
    let again = e.p.run_step(&e.sg(), &step(ExotelStep::MintLink, Some(handle.clone()))).await.unwrap();
    assert_eq!(again.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(e.links(), 1);

    let wait = e.p.run_step(&e.sg(), &step(ExotelStep::AwaitCustomer, Some(handle.clone()))).await.unwrap();
    assert_eq!(wait.progress, super::super::Progress::Wait(Duration::from_secs(7)));
    assert_eq!(wait.observation.raw_status, "VALID");

    e.sim.complete_customer(&token).unwrap();
    let live = e.p.run_step(&e.sg(), &step(ExotelStep::AwaitCustomer, Some(handle))).await.unwrap();
    assert_eq!(live.progress, super::super::Progress::Done);
    assert_eq!(live.observation.state, Some(OnboardingState::Live));
    assert_eq!(live.observation.raw_status, "USED");
    assert_eq!(live.observation.fields["onboarding_token_status"], "USED");
    assert_eq!(live.details_view()["token_status"], json!("USED"));
    assert_eq!(live.details_view()["customers_remaining"], json!(4));
}

/// Batch links: each onboarding starts at `await_customer` with only the handle.
#[tokio::test]
async fn batch_link_awaits_with_preset_handle_and_expires_after_24h() {
    let e = env().await;
    let links = e.p.hosted_links().unwrap().mint_links(&e.mumbai(), 3).await.unwrap();
    let details = serde_json::to_value(&links[1].details).unwrap();
    assert_eq!(details["token"], json!(links[1].token));
    assert_eq!(details["customers_remaining"], json!(5));
    assert_eq!(details["link_expire_ms"], json!(links[1].expire_ms.unwrap()));
    let mut run = step(ExotelStep::AwaitCustomer, Some(link_handle(&links[1])));
    run.details = links[1].details.clone().into();
    let wait = e.p.run_step(&e.mumbai(), &run).await.unwrap();
    assert_eq!(wait.observation.state, Some(OnboardingState::AwaitingCustomer));

    e.sim.core().clock.advance(LINK_TTL);
    let out = e.p.run_step(&e.mumbai(), &run).await.unwrap();
    assert_eq!(out.progress, super::super::Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::Expired));
    assert_eq!(out.observation.raw_status, "EXPIRED");
    assert_eq!(out.details_view()["customers_remaining"], json!(0));
    let st = e.p.hosted_links().unwrap().validate_token(&e.mumbai(), &links[1].token).await.unwrap();
    assert_eq!(st, LinkTokenStatus { state: LinkTokenState::Expired, raw: "EXPIRED".into() });
}

/// One source of truth: a batch link carries the same public details (same keys, same
/// status and customer count) as the link the single-onboarding step mints.
#[tokio::test]
async fn batch_links_carry_the_same_details_as_the_single_link_step() {
    let e = env().await;
    let single = e.p.run_step(&e.sg(), &step(ExotelStep::MintLink, None)).await.unwrap();
    let links = e.p.hosted_links().unwrap().mint_links(&e.sg(), 2).await.unwrap();
    for l in &links {
        let batch = serde_json::to_value(&l.details).unwrap();
        let one = single.details_view();
        let keys = |d: &serde_json::Value| d.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&batch), keys(&one));
        for k in ["token_status", "customers_remaining"] {
            assert_eq!(batch[k], one[k], "{k}");
        }
        assert_eq!(l.details.customers_remaining, Some(MAX_CUSTOMERS_PER_LINK));
        assert_eq!(l.details.token.as_deref(), Some(l.token.as_str()));
        assert_eq!(l.details.onboarding_url.as_deref(), Some(l.url.as_str()));
        assert_eq!(l.details.link_expire_ms, l.expire_ms);
    }
}

#[tokio::test]
async fn validate_token_reports_live_status_and_checks_shape() {
    let e = env().await;
    let ops = e.p.hosted_links().unwrap();
    let link = ops.mint_links(&e.sg(), 1).await.unwrap().remove(0);
    assert_eq!(ops.validate_token(&e.sg(), &link.token).await.unwrap().state, LinkTokenState::Valid);
    e.sim.complete_customer(&link.token).unwrap();
    assert_eq!(ops.validate_token(&e.sg(), &link.token).await.unwrap().state, LinkTokenState::Used);
    let before = e.calls(VALIDATE);
    for bad in ["", "a/b", "x?y=1"] {
        match ops.validate_token(&e.sg(), bad).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "token"),
            other => panic!("{bad:?}: expected Invalid token, got {other:?}"),
        }
    }
    assert_eq!(e.calls(VALIDATE), before);
    assert!(matches!(
        ops.validate_token(&e.sg(), "00000000-0000-0000-0000-000000000000").await,
        Err(ProviderError::NotFound { .. })
    ));
}

#[tokio::test]
async fn each_region_gets_only_its_own_calls() {
    let e = env().await;
    let sg = e.p.hosted_links().unwrap().mint_links(&e.sg(), 2).await.unwrap();
    let mb = e.p.hosted_links().unwrap().mint_links(&e.mumbai(), 1).await.unwrap();
    use crate::sim::exotel::ExotelRegion as SimRegion;
    for l in &sg {
        let v = e.sim.token(&l.token).unwrap();
        assert_eq!((v.region, v.sid.as_str()), (SimRegion::Singapore, "sandbox-sg"));
    }
    let v = e.sim.token(&mb[0].token).unwrap();
    assert_eq!((v.region, v.sid.as_str()), (SimRegion::Mumbai, "sandbox-in"));
    // The Singapore account does not exist on the Mumbai cluster.
    let wrong = ctx_for(e.srv.mumbai.base_url(), "sandbox-sg", "sandbox-key", "sandbox-token");
    match e.p.check_credentials(&wrong).await {
        Err(ProviderError::Precondition { raw, message }) => {
            assert_eq!(raw, "404");
            assert!(message.contains("exotel_region"), "{message}");
        }
        other => panic!("expected Precondition, got {other:?}"),
    }
    assert!(e.p.check_credentials(&e.sg()).await.is_ok());
    assert!(e.p.check_credentials(&e.mumbai()).await.is_ok());
}

#[tokio::test]
async fn bad_credentials_payment_and_forbidden_map_to_clear_errors() {
    let e = env().await;
    let bad = ctx_for(e.srv.singapore.base_url(), "sandbox-sg", "sandbox-key", "wrong-token");
    match e.p.check_credentials(&bad).await {
        Err(err @ ProviderError::Unauthenticated { .. }) => {
            assert!(!format!("{err:?} {err}").contains("wrong-token"), "secret leaked");
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    assert!(matches!(e.p.start(&bad, &e.valid_start("k")).await, Err(ProviderError::Unauthenticated { .. })));
    assert_eq!(e.links(), 0);

    e.sim.set_knobs(ExotelKnobs { payment_required: true, ..Default::default() });
    match e.p.hosted_links().unwrap().mint_links(&e.sg(), 2).await {
        Err(ProviderError::Precondition { raw, message }) => {
            assert_eq!(raw, "402");
            assert!(message.contains("payment required"));
        }
        other => panic!("expected Precondition 402, got {other:?}"),
    }
    e.sim.set_knobs(ExotelKnobs { forbidden_sids: vec!["sandbox-sg".into()], ..Default::default() });
    assert!(matches!(
        e.p.start(&e.sg(), &e.valid_start("k")).await,
        Err(ProviderError::Unauthenticated { raw }) if raw == "403"
    ));
}

#[tokio::test]
async fn failure_inside_http_200_is_read_from_the_isv_block() {
    let e = env().await;
    e.sim.core().fail_next(Some(MINT), 1, SimFault::OkWithErrorBody);
    match e.p.start(&e.sg(), &e.valid_start("k")).await {
        Err(err @ ProviderError::Retryable { .. }) => {
            assert!(matches!(&err, ProviderError::Retryable { raw, .. } if raw == "500"), "{err:?}");
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
    // Validation is idempotent: a 5xx is retried in-call.
    let link = e.p.hosted_links().unwrap().mint_links(&e.sg(), 1).await.unwrap().remove(0);
    e.sim.core().fail_next(Some(VALIDATE), 1, SimFault::Status { status: 502 });
    let obs = e.p.status(&e.sg(), &ProviderHandle { external_key: link.token, data: json!({}) }).await.unwrap();
    assert_eq!(obs.raw_status, "VALID");
}

#[test]
fn token_is_the_last_path_segment() {
    assert_eq!(
        token_of("https://messaging.exotel.com/ua-links/isv-onboard/41eabcd-abcdabcd").unwrap(),
        "41eabcd-abcdabcd"
    );
    assert_eq!(token_of("https://messaging.exotel.com/ua-links/isv-onboard/abc/").unwrap(), "abc");
    assert!(token_of("not a url").is_err());
}

#[test]
fn factory_refuses_other_credentials() {
    let f = factory(deps());
    let mut ctx = ctx_for("http://127.0.0.1:1".into(), "sid", "k", "t");
    assert!(f(&ctx).is_ok());
    ctx.credentials = Credentials::Whapi { partner_token: Secret::new("x") };
    assert!(f(&ctx).is_err());
}

#[test]
fn region_base_urls() {
    assert_eq!(region_base_url(ExotelRegion::Singapore), "https://api.exotel.com");
    assert_eq!(region_base_url(ExotelRegion::Mumbai), "https://api.in.exotel.com");
}

/// A body kept in an error message loses the account's key and token and secret-named values.
#[test]
fn error_bodies_are_kept_redacted() {
    let body = br#"{"response":{"whatsapp":{"isv":{"data":{"echo":"key-123:tok-456","token":"t0ps3cret"}}}}}"#;
    let out = client::redacted_excerpt(body, &["key-123", "tok-456"]);
    assert!(out.contains("echo"), "{out}");
    for s in ["key-123", "tok-456", "t0ps3cret"] {
        assert!(!out.contains(s), "{s} leaked: {out}");
    }
    assert!(client::redacted_excerpt(&[b'x'; 5000], &[]).len() < 700);
}

/// `error_data` with a message is a failure inside HTTP 200 even with `status: success`;
/// `null` or `{}` is not (docs/providers.md §2.4).
#[test]
fn error_data_inside_a_success_is_a_failure() {
    use crate::providers::http::ErrorBody;
    let body = |e: &str| {
        format!(
            r#"{{"response":{{"whatsapp":{{"isv":{{"code":200,"status":"success","error_data":{e},"data":{{}}}}}}}}}}"#
        )
    };
    let hook = client::IsvBody;
    assert!(hook.check(http::StatusCode::OK, body("null").as_bytes()).is_none());
    assert!(hook.check(http::StatusCode::OK, body("{}").as_bytes()).is_none());
    let found = hook.check(http::StatusCode::OK, body(r#"{"message":"nope"}"#).as_bytes()).expect("a failure");
    assert!(found.reason.starts_with("isv code 400"), "{}", found.reason);
}

/// Issue 17 point 3 (docs/providers.md §2.5 #3): an Exotel onboarding is a link. `USED` is LIVE as
/// "link used" (never a named business), with the raw status and both capacity bounds;
/// `EXPIRED` without a `USED` says the outcome is unknown; and when the provider reads `USED`
/// only after 5 completions (sim knob `used_after`), 1–4 completions keep the link waiting.
#[tokio::test]
async fn used_is_live_as_link_used_with_capacity_bounds_and_expired_is_unknown_outcome() {
    let e = env().await;
    let out = e.p.run_step(&e.sg(), &step(ExotelStep::MintLink, None)).await.unwrap();
    assert_eq!(out.details_view()["max_customers_per_link"], json!(MAX_CUSTOMERS_PER_LINK));
    assert_eq!(out.details_view()["customers_remaining_min"], json!(5));
    assert_eq!(out.details_view()["used_meaning"], json!(used_meaning_text()));
    assert!(out.details_view().get("live_meaning").is_none());
    let handle = out.handle.unwrap();
    e.sim.complete_customer(&handle.external_key).unwrap();
    let live = e.p.run_step(&e.sg(), &step(ExotelStep::AwaitCustomer, Some(handle))).await.unwrap();
    assert_eq!(live.observation.state, Some(OnboardingState::Live));
    assert_eq!(live.observation.raw_status, "USED");
    assert_eq!(live.observation.reason, "exotel link used (Exotel does not say which business)");
    assert_eq!(live.details_view()["live_meaning"], json!(LIVE_MEANING));
    assert_eq!(live.details_view()["customers_remaining"], json!(4));
    assert_eq!(live.details_view()["customers_remaining_min"], json!(0));
    assert_eq!(live.details_view()["max_customers_per_link"], json!(5));
    assert!(used_meaning_text().starts_with("at_least_one_completion"), "USED_MEANS is reading A");

    // Reading B on the provider side: four completions leave the token VALID, so we wait.
    e.sim.set_knobs(ExotelKnobs { used_after: 5, ..Default::default() });
    let out = e.p.run_step(&e.sg(), &step(ExotelStep::MintLink, None)).await.unwrap();
    let handle = out.handle.unwrap();
    e.sim.complete_customers(&handle.external_key, 4).unwrap();
    let run = step(ExotelStep::AwaitCustomer, Some(handle));
    let wait = e.p.run_step(&e.sg(), &run).await.unwrap();
    assert_eq!(wait.observation.state, Some(OnboardingState::AwaitingCustomer));
    assert!(wait.details_view().get("live_meaning").is_none());
    e.sim.core().clock.advance(LINK_TTL);
    let expired = e.p.run_step(&e.sg(), &run).await.unwrap();
    assert_eq!(expired.observation.state, Some(OnboardingState::Expired));
    assert_eq!(expired.observation.reason, "link expired; Exotel does not report whether anyone onboarded with it");
    assert_eq!(expired.details_view()["customers_remaining_min"], json!(0));
}

/// CheckAccount sends the documented validate call (`access_token` is mandatory,
/// docs/providers.md §2.3): the old probe, a bare `GET …/isv`, took the 400 for "fine".
#[tokio::test]
async fn check_credentials_sends_the_documented_validate_call_with_the_probe_token() {
    use axum::extract::RawQuery;
    let seen: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |RawQuery(q): RawQuery| {
        let log = log.clone();
        async move {
            let has = q.as_deref().is_some_and(|q| q.starts_with("access_token="));
            log.lock().unwrap().push(q);
            // A vendor-pages-only server: the parameter is mandatory.
            if has {
                (axum::http::StatusCode::BAD_REQUEST, "malformed")
            } else {
                (axum::http::StatusCode::BAD_REQUEST, "access_token is required")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let p = ExotelProvider::new(&deps());
    p.check_credentials(&ctx_for(base, "sid-1", "k", "t")).await.expect("a 400 for the probe is fine");
    let q = seen.lock().unwrap().clone();
    assert_eq!(q, vec![Some(format!("access_token={}", client::CHECK_PROBE_TOKEN))]);
}
