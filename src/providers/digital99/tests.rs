//! The 99digital adapter against the 99digital simulator.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use super::*;
use crate::domain::account::AccountOptions;
use crate::domain::{AccountId, E164, OnboardingId};
use crate::providers::Progress;
use crate::providers::conformance::{self, ConformanceHarness, Fault};
use crate::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
use crate::sim::common::{Fault as SimFault, Running};
use crate::sim::digital99::{CreatePath, Digital99Sim, Digital99SimConfig};

const LOGIN: &str = "POST /api/settings/accessToken";
const SET_WEBHOOK: &str = "POST /api/settings/setWebhook";
const CREATE: &str = "POST /api/whatsapp/createOnboarding";
const CREATE_FALLBACK: &str = "POST /api/whatsapp/createAccount";
const REGISTERED: &str = "GET /api/whatsapp/getRegisteredNumbers";
const REFERENCE: &str = "cust-ref-42";

fn deps() -> AdapterDeps {
    AdapterDeps {
        http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(2), total: Duration::from_millis(800) })
            .unwrap(),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            total_budget: Duration::from_secs(5),
        },
        poll_interval: Duration::from_secs(9),
    }
}

struct Env {
    sim: Digital99Sim,
    srv: Running,
    p: Digital99Provider,
    webhook_url: String,
    registered: Mutex<HashSet<String>>,
}

async fn env_with(cfg: Digital99SimConfig) -> Env {
    let (sim, srv) = Digital99Sim::spawn(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    sim.core().with_knobs(|k| k.timeout_hold_ms = 1_500);
    Env {
        sim,
        srv,
        p: Digital99Provider::new(&deps()),
        webhook_url: "http://127.0.0.1:1/webhooks/digital99/acct-d99/s3cret".into(),
        registered: Mutex::new(HashSet::new()),
    }
}

async fn env() -> Env {
    env_with(Digital99SimConfig { sandbox: false, ..Default::default() }).await
}

fn number_for(key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 10_000_000;
    format!("97250{n:07}")
}

fn start(number: &str, coexistence: bool, register: Option<VerifyMethod>) -> Digital99Start {
    Digital99Start {
        phone: E164::parse(&format!("+{number}")).unwrap(),
        business_name: "Acme inc".into(),
        display_name: "Acme".into(),
        business_email: Some("john@example.com".into()),
        business_id: Some("1234567".into()),
        business_address: Some("Grove Street, San Andreas".into()),
        coexistence,
        register_number: register,
    }
}

fn request(key: &str, s: Digital99Start) -> StartRequest {
    StartRequest {
        // One onboarding per key, as in the service (the reference we send is this id).
        onboarding_id: OnboardingId::parse(format!("onb-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..12]))
            .unwrap(),
        idempotency_key: key.into(),
        reference: REFERENCE.into(),
        payload: StartPayload::Digital99(s),
    }
}

fn step(step: Digital99Step, req: &StartRequest, handle: Option<ProviderHandle>, data: Value) -> StepRun {
    StepRun {
        name: step.name().into(),
        onboarding_id: req.onboarding_id.clone(),
        request: req.clone(),
        handle,
        secret: None,
        data,
        attempt: 1,
        state: OnboardingState::Pending,
        details: crate::domain::OnboardingDetails::empty(crate::domain::ProviderKind::Digital99),
        was_stalled: false,
    }
}

/// What `create_account` made, as the tests read it.
#[derive(Debug)]
struct Started {
    handle: ProviderHandle,
    reconciled: bool,
}

/// The pipeline steps as the engine drives them, for tests about one call.
impl Digital99Provider {
    /// `create_account` for `req`.
    async fn start(&self, ctx: &CallContext, req: &StartRequest) -> Result<Started, ProviderError> {
        let out = self.run_step(ctx, &step(Digital99Step::CreateAccount, req, None, json!({}))).await?;
        let reconciled = out.attributes.get("reconciled").is_some_and(|v| v == "true");
        Ok(Started { handle: out.handle.expect("create_account records the account"), reconciled })
    }

    /// One `await_customer` poll.
    async fn status(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<Observation, ProviderError> {
        let req = request("status", start(&handle.external_key, false, None));
        Ok(self
            .run_step(ctx, &step(Digital99Step::AwaitCustomer, &req, Some(handle.clone()), json!({})))
            .await?
            .observation)
    }
}

impl Env {
    fn ctx_with(&self, secret: &str) -> CallContext {
        CallContext {
            account_id: AccountId::parse("acct-d99").unwrap(),
            credentials: Credentials::Digital99 {
                client_id: "sandbox-client".into(),
                client_secret: Secret::new(secret),
            },
            options: AccountOptions::default(),
            webhook_url: Secret::new(self.webhook_url.clone()),
            base_url: self.srv.base_url(),
        }
    }

    fn calls(&self, endpoint: &str) -> u64 {
        self.sim.core().counters().calls.get(endpoint).copied().unwrap_or(0)
    }

    fn api(&self) -> String {
        format!("{}/api", self.srv.base_url())
    }

    /// Test setup (not the adapter): registers and verifies `number` straight at the sim.
    async fn register_verified(&self, number: &str) {
        let c = reqwest::Client::new();
        let login: Value = c
            .post(format!("{}/settings/accessToken", self.api()))
            .json(&json!({ "client_id": "sandbox-client", "client_secret": "sandbox-secret" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().unwrap().to_string();
        let post =
            |path: &str, body: Value| c.post(format!("{}/{path}", self.api())).bearer_auth(&token).json(&body).send();
        let r: Value = post("whatsapp/registerNumber", json!({ "whatsapp": number, "method": 1 }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "OK", "{r}");
        let code = self.sim.code(number).unwrap();
        let r: Value = post("whatsapp/verifyNumber", json!({ "whatsapp": number, "code": code }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "OK", "{r}");
    }

    fn ensure_registered(&self, number: &str) {
        if !self.registered.lock().unwrap().insert(number.to_string()) {
            return;
        }
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(self.register_verified(number)));
    }

    fn account(&self, number: &str) -> crate::sim::digital99::AccountView {
        self.sim.accounts().into_iter().find(|a| a.whatsapp == number).expect("account at the sim")
    }
}

#[async_trait]
impl ConformanceHarness for Env {
    fn ctx(&self) -> CallContext {
        self.ctx_with("sandbox-secret")
    }

    fn valid_start(&self, key: &str) -> StartRequest {
        let number = number_for(key);
        self.ensure_registered(&number);
        request(key, start(&number, false, None))
    }

    fn invalid_start(&self, key: &str) -> StartRequest {
        let mut s = start(&number_for(key), false, None);
        s.business_name = "  ".into();
        request(key, s)
    }

    async fn finish_customer(&self, handle: &ProviderHandle) {
        self.sim.finish(&handle.external_key).unwrap();
    }

    async fn inject_next_create(&self, fault: Fault) {
        let f = match fault {
            Fault::ServerError => SimFault::Status { status: 500 },
            Fault::RateLimited => SimFault::TooManyRequests { retry_after_secs: Some(1) },
            Fault::UnknownOutcome => SimFault::Timeout { after_effect: true },
        };
        self.sim.core().fail_next(Some(CREATE), 1, f);
    }

    async fn resources_created(&self) -> u64 {
        self.sim.core().counters().created.get("accounts").copied().unwrap_or(0)
    }

    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8> {
        // docs/providers.md §4.4 default payload (what the simulator posts).
        let body = json!({
            "type": "whatsapp", "event": "onboarding_finished", "whatsapp": handle.external_key,
            "reference": REFERENCE, "status": 1, "timestamp": 1_739_874_663,
        });
        serde_json::to_vec(&body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let e = env().await;
    conformance::run_all(&e.p, &e).await;
    assert_eq!(e.sim.core().counters().duplicate_creates, 0);
    assert_eq!(e.calls(SET_WEBHOOK), 1, "webhook set once per adapter instance");
    assert_eq!(e.sim.webhook_url("sandbox-client").as_deref(), Some(e.webhook_url.as_str()));
}

/// The full pipeline with registration: steps in order, a wrong code, the right one, the
/// account with our reference, then LIVE.
#[tokio::test]
async fn registered_pipeline_runs_in_order_to_live_with_reference() {
    let e = env().await;
    let ctx = e.ctx();
    let number = "972501112233";
    let req = request("onb-1", start(number, false, Some(VerifyMethod::Sms)));
    let specs = e.p.pipeline(&req);
    let names: Vec<_> = specs.iter().map(|s| (s.name, s.enabled, s.polled)).collect();
    assert_eq!(
        names,
        [
            // The stored names: never renamed.
            ("register_number", true, true),
            ("verify_number", true, false),
            ("create_account", true, true),
            ("await_customer", true, true)
        ]
    );
    assert_eq!(specs[1].enter_state, Some(OnboardingState::AwaitingCustomer));

    let out = e.p.run_step(&ctx, &step(Digital99Step::RegisterNumber, &req, None, json!({}))).await.unwrap();
    assert_eq!((out.progress, out.observation.raw_status.as_str()), (Progress::Done, "CODE_SENT"));
    assert_eq!(out.observation.fields["method"], "sms");
    let code = e.sim.code(number).expect("code sent to the number");

    let idle = e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({}))).await.unwrap();
    assert!(matches!(idle.progress, Progress::Wait(_)));
    assert_eq!(idle.observation.raw_status, "CODE_SENT");
    assert_eq!(idle.observation.state, Some(OnboardingState::AwaitingCustomer));

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let rej =
        e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({ "code": wrong }))).await.unwrap();
    assert!(matches!(rej.progress, Progress::Wait(_)));
    assert_eq!(rej.observation.reason, "code rejected");
    assert_eq!(rej.data, Some(json!({ "wrong_codes": 1 })), "code cleared, count kept");

    let ok =
        e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({ "code": code, "wrong_codes": 1 })))
            .await
            .unwrap();
    assert_eq!(ok.progress, Progress::Done);
    assert_eq!(ok.details_view()["number_verified"], json!(true));

    let created = e.p.run_step(&ctx, &step(Digital99Step::CreateAccount, &req, None, json!({}))).await.unwrap();
    assert_eq!(created.observation.state, Some(OnboardingState::AwaitingCustomer));
    let handle = created.handle.clone().unwrap();
    assert_eq!(handle.external_key, number);
    let acc = e.account(number);
    // [C] `reference` is ours, echoed by getAccounts: the onboarding id, unique per onboarding.
    assert_eq!(acc.reference, req.onboarding_id.as_str());
    assert_eq!(created.details_view()["onboarding_link"], json!(acc.onboarding_link));
    assert_eq!(created.details_view()["landing_page"], json!(acc.landing_page));
    assert_eq!(created.details_view()["phone"], json!(format!("+{number}")));
    assert_eq!(created.details_view()["business_name"], json!("Acme inc"));
    assert_eq!(created.details_view()["display_name"], json!("Acme"));
    assert_eq!(created.details_view()["coexistence"], json!(false));
    assert_eq!(e.sim.webhook_url("sandbox-client").as_deref(), Some(e.webhook_url.as_str()));

    // A repeat of the create (crash after it) reconciles.
    let again = e.p.run_step(&ctx, &step(Digital99Step::CreateAccount, &req, None, json!({}))).await.unwrap();
    assert_eq!(again.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(again.handle.as_ref().unwrap(), &handle);
    // So does a repeat of the registration: no new code is sent. The number has left
    // getRegisteredNumbers (vendor: once an account exists); getAccounts says it exists.
    let codes_before = e.calls("POST /api/whatsapp/registerNumber");
    let reg = e.p.run_step(&ctx, &step(Digital99Step::RegisterNumber, &req, None, json!({}))).await.unwrap();
    assert_eq!(reg.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(e.calls("POST /api/whatsapp/registerNumber"), codes_before, "no new code requested");
    assert_eq!(e.sim.core().counters().duplicate_creates, 0);

    let run = step(Digital99Step::AwaitCustomer, &req, Some(handle), json!({}));
    let wait = e.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(wait.progress, Progress::Wait(Duration::from_secs(9)));
    assert_eq!(wait.observation.raw_status, "0");
    e.sim.finish(number).unwrap();
    let live = e.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(live.progress, Progress::Done);
    assert_eq!(live.observation.state, Some(OnboardingState::Live));
    assert_eq!(live.observation.fields["status"], "1");
}

#[tokio::test]
async fn voice_code_path_and_wrong_code_cap() {
    let e = env().await;
    let ctx = e.ctx();
    let number = "972502223344";
    let req = request("onb-v", start(number, false, Some(VerifyMethod::Voice)));
    let out = e.p.run_step(&ctx, &step(Digital99Step::RegisterNumber, &req, None, json!({}))).await.unwrap();
    assert_eq!(out.observation.fields["method"], "voice");
    let code = e.sim.code(number).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut data = json!({});
    for n in 1..=MAX_WRONG_CODES {
        data["code"] = json!(wrong);
        let r = e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, data.clone())).await.unwrap();
        data = r.data.clone().unwrap();
        assert_eq!(data["wrong_codes"], json!(n));
        if n < MAX_WRONG_CODES {
            assert!(matches!(r.progress, Progress::Wait(_)));
        } else {
            assert_eq!(r.progress, Progress::Done);
            assert_eq!(r.observation.state, Some(OnboardingState::Failed));
        }
    }
    // A malformed code is rejected without a call; the right one verifies.
    let before = e.calls("POST /api/whatsapp/verifyNumber");
    let r =
        e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({ "code": "12ab" }))).await.unwrap();
    assert_eq!(r.observation.reason, "code rejected");
    assert_eq!(e.calls("POST /api/whatsapp/verifyNumber"), before);
    let r = e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({ "code": code }))).await.unwrap();
    assert_eq!(r.details_view()["number_verified"], json!(true));
    // A code stored as a JSON number works too.
    let n: u64 = code.parse().unwrap();
    let r = e.p.run_step(&ctx, &step(Digital99Step::VerifyNumber, &req, None, json!({ "code": n }))).await.unwrap();
    assert_eq!(r.details_view()["number_verified"], json!(true));

    let v = e.p.verification().unwrap();
    assert!(v.validate_code("123456").is_ok());
    for bad in ["12345", "1234567", "abcdef", ""] {
        assert!(matches!(v.validate_code(bad), Err(ProviderError::Invalid { field: Some(f), .. }) if f == "code"));
    }
}

/// Advancing the sim clock past the hour expires the token: exactly one new login.
#[tokio::test]
async fn token_refresh_at_expiry_is_one_login() {
    let e = env().await;
    let ctx = e.ctx();
    let h = ProviderHandle { external_key: "972500000001".into(), data: json!({}) };
    e.p.status(&ctx, &h).await.unwrap();
    e.p.status(&ctx, &h).await.unwrap();
    assert_eq!(e.calls(LOGIN), 1, "the token is cached");
    e.sim.core().clock.advance(Duration::from_secs(3_601));
    e.p.status(&ctx, &h).await.unwrap();
    assert_eq!(e.calls(LOGIN), 2, "exactly one new token call");
    e.p.status(&ctx, &h).await.unwrap();
    assert_eq!(e.calls(LOGIN), 2);
    let st = e.p.partner_token().unwrap().partner_token_status();
    assert!(st.cached && st.refresh_count == 2 && st.expires_at.is_some());
    let st = e.p.partner_token().unwrap().refresh_partner_token(&ctx).await.unwrap();
    assert_eq!((st.refresh_count, e.calls(LOGIN)), (3, 3));
}

/// Wrong credentials (reason 2): Unauthenticated, and the next logins within the cool-down
/// are refused without a call, so the adapter itself never walks into the reason-3 block.
#[tokio::test]
async fn wrong_credentials_are_not_retried() {
    let e = env().await;
    let bad = e.ctx_with("wrong-secret");
    for _ in 0..3 {
        let r = e.p.check_credentials(&bad).await;
        assert!(matches!(&r, Err(ProviderError::Unauthenticated { raw }) if raw == "2"), "{r:?}");
    }
    assert_eq!(e.calls(LOGIN), 1, "one login, then the cool-down");
    let st = e.p.partner_token().unwrap().partner_token_status();
    assert!(!format!("{st:?}").contains("wrong-secret"));
}

/// Reason 3 on login (blocked after failed attempts): Unauthenticated, then no more login
/// calls during the cool-down, even with the right secret.
#[tokio::test]
async fn reason_3_stops_logins() {
    let e = env().await;
    // Someone else (same client id) failed three times: 99digital now blocks the login.
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let r: Value = c
            .post(format!("{}/settings/accessToken", e.api()))
            .json(&json!({ "client_id": "sandbox-client", "client_secret": "nope" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["reason"], 2);
    }
    assert_eq!(e.calls(LOGIN), 3);
    for _ in 0..4 {
        let r = e.p.check_credentials(&e.ctx()).await;
        assert!(matches!(&r, Err(ProviderError::Unauthenticated { raw }) if raw == "3"), "{r:?}");
    }
    assert_eq!(e.calls(LOGIN), 4, "one login saw reason 3; none while cooling down");
    assert!(matches!(
        e.p.partner_token().unwrap().refresh_partner_token(&e.ctx()).await,
        Err(ProviderError::Unauthenticated { .. })
    ));
    assert_eq!(e.calls(LOGIN), 4);
}

#[tokio::test]
async fn cancel_open_then_refused_after_finish_and_reasons_kept() {
    let e = env().await;
    let ctx = e.ctx();
    let number = "972503334455";
    e.register_verified(number).await;
    let req = request("onb-c", start(number, false, None));
    let out = e.p.start(&ctx, &req).await.unwrap();
    e.p.cancel(&ctx, &out.handle).await.unwrap();
    assert!(e.sim.accounts().is_empty());
    match e.p.cancel(&ctx, &out.handle).await {
        Err(ProviderError::NotFound { raw }) => assert_eq!(raw, "26"),
        other => panic!("expected NotFound 26, got {other:?}"),
    }
    // Gone at the provider: the poll says FAILED rather than waiting forever.
    assert_eq!(e.p.status(&ctx, &out.handle).await.unwrap().state, Some(OnboardingState::Failed));

    let out = e.p.start(&ctx, &req).await.unwrap();
    assert!(!out.reconciled);
    e.sim.finish(number).unwrap();
    match e.p.cancel(&ctx, &out.handle).await {
        Err(ProviderError::Precondition { raw, .. }) => assert_eq!(raw, "25"),
        other => panic!("expected Precondition 25, got {other:?}"),
    }
    // A number never registered: the sim's (inferred) reason 23 is kept.
    let req = request("onb-x", start("972509998877", false, None));
    match e.p.start(&ctx, &req).await {
        Err(ProviderError::Precondition { raw, .. }) => assert_eq!(raw, "23"),
        other => panic!("expected Precondition 23, got {other:?}"),
    }
}

#[test]
fn reason_table_keeps_n() {
    use client::reason_error;
    type Check = fn(&ProviderError) -> bool;
    let cases: [(i64, Check); 8] = [
        (2, |e| matches!(e, ProviderError::Unauthenticated { .. })),
        (3, |e| matches!(e, ProviderError::Unauthenticated { .. })),
        (4, |e| matches!(e, ProviderError::Invalid { field: Some(f), .. } if f == "digital99.phone")),
        (13, |e| matches!(e, ProviderError::Invalid { .. })),
        (24, |e| matches!(e, ProviderError::Conflict { .. })),
        (25, |e| matches!(e, ProviderError::Precondition { .. })),
        (26, |e| matches!(e, ProviderError::NotFound { .. })),
        (99, |e| matches!(e, ProviderError::Precondition { .. })),
    ];
    for (n, ok) in cases {
        let e = reason_error(n);
        assert!(ok(&e), "{n}: {e:?}");
        let raw = match &e {
            ProviderError::Unauthenticated { raw }
            | ProviderError::Invalid { raw, .. }
            | ProviderError::Conflict { raw, .. }
            | ProviderError::Precondition { raw, .. }
            | ProviderError::NotFound { raw } => raw.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(raw, n.to_string());
    }
}

/// Coexistence: the temporary 97257… number until the business finishes, then the real one;
/// the temporary one is kept. The account is found under either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexistence_retry_finds_the_account_by_reference() {
    // Issue 17 point 5: the number leaves getRegisteredNumbers once an account exists
    // (docs/providers.md §4.2), so a coexistence account, listed under a temporary 97257… number
    // until the business finishes, is found in getAccounts by our `reference`. The sim
    // serves the fallback create path here, so only reconciliation differs from before.
    let e =
        env_with(Digital99SimConfig { sandbox: false, create_path: CreatePath::CreateAccount, ..Default::default() })
            .await;
    let ctx = e.ctx();
    let number = "972504445566";
    e.register_verified(number).await;
    let req = request("onb-co", start(number, true, None));
    // The create's answer is lost: the retry must find the account, not create a second.
    e.sim.core().fail_next(Some(CREATE_FALLBACK), 1, SimFault::Timeout { after_effect: true });
    assert!(matches!(
        e.p.run_step(&ctx, &step(Digital99Step::CreateAccount, &req, None, json!({}))).await,
        Err(ProviderError::UnknownOutcome { .. })
    ));
    let created = e.p.run_step(&ctx, &step(Digital99Step::CreateAccount, &req, None, json!({}))).await.unwrap();
    assert_eq!(created.attributes.get("reconciled").map(String::as_str), Some("true"));
    assert_eq!(e.sim.accounts().len(), 1);
    assert_eq!(e.sim.core().counters().duplicate_creates, 0);
    assert_eq!(e.calls(REGISTERED), 0, "getRegisteredNumbers is no reconciliation source");
    let acc = e.account(number);
    assert!(acc.listed_whatsapp.starts_with("97257"));
    let handle = created.handle.clone().unwrap();
    assert_eq!(handle.external_key, number);
    assert_eq!(created.details_view()["coexistence"], json!(true));
    assert_eq!(created.details_view()["temporary_phone"], json!(format!("+{}", acc.listed_whatsapp)));
    // A handle without the link (an older record) still finds the account by reference.
    let bare = ProviderHandle { external_key: number.into(), data: json!({}) };
    let polled = e.p.run_step(&ctx, &step(Digital99Step::AwaitCustomer, &req, Some(bare), json!({}))).await.unwrap();
    assert_eq!(polled.observation.state, Some(OnboardingState::AwaitingCustomer));

    let mut run = step(Digital99Step::AwaitCustomer, &req, Some(handle.clone()), json!({}));
    let wait = e.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(wait.details_view()["temporary_phone"], json!(format!("+{}", acc.listed_whatsapp)));
    assert_eq!(wait.details_view()["phone"], json!(format!("+{number}")));
    assert_eq!(wait.observation.fields["whatsapp"], acc.listed_whatsapp);
    run.details = wait.details.clone().unwrap();

    e.sim.finish(number).unwrap();
    let live = e.p.run_step(&ctx, &run).await.unwrap();
    assert_eq!(live.observation.state, Some(OnboardingState::Live));
    assert_eq!(live.details_view()["phone"], json!(format!("+{number}")));
    assert_eq!(live.details_view()["temporary_phone"], json!(format!("+{}", acc.listed_whatsapp)));
    assert_eq!(live.observation.fields["whatsapp"], number);
}

/// The webhook the sim really posts routes to the onboarding.
#[tokio::test]
async fn partner_webhook_from_the_sim_routes_to_the_onboarding() {
    let (tx, mut rx) = mpsc::unbounded_channel::<bytes::Bytes>();
    let app = axum::Router::new().route(
        "/webhooks/digital99/acct-d99/s3cret",
        axum::routing::post(move |body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let hook = crate::sim::common::serve(app, SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let mut e = env().await;
    e.webhook_url = format!("{}/webhooks/digital99/acct-d99/s3cret", hook.base_url());
    let ctx = e.ctx();
    assert!(e.p.check_credentials(&ctx).await.is_ok());
    assert_eq!(e.sim.webhook_url("sandbox-client").as_deref(), Some(e.webhook_url.as_str()));
    let number = "972505556677";
    e.register_verified(number).await;
    let req = request("onb-w", start(number, false, None));
    let out = e.p.start(&ctx, &req).await.unwrap();
    e.sim.finish(number).unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let events = e.p.parse_callback(&body).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].external_key, out.handle.external_key);
    assert_eq!(events[0].state, Some(OnboardingState::Live));
    assert_eq!(events[0].fields["reference"], req.onboarding_id.as_str(), "the reference we sent: the onboarding id");
    assert!(events[0].occurred_ms.is_some());
}

#[tokio::test]
async fn inputs_checked_before_any_call() {
    let e = env().await;
    let ctx = e.ctx();
    let mut cases = Vec::new();
    let mut s = start("972501234567", false, None);
    s.display_name = String::new();
    cases.push((s, "digital99.display_name"));
    let mut s = start("972501234567", false, None);
    s.business_email = Some("not an email".into());
    cases.push((s, "digital99.business_email"));
    let mut s = start("972501234567", false, None);
    s.business_name = "x".repeat(300);
    cases.push((s, "digital99.business_name"));
    for (s, field) in cases {
        match e.p.start(&ctx, &request("k", s)).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    assert!(e.sim.core().counters().calls.is_empty(), "nothing reached 99digital");
}

#[test]
fn factory_refuses_other_credentials() {
    let f = factory(deps());
    let mut ctx = CallContext {
        account_id: AccountId::parse("acct-d99").unwrap(),
        credentials: Credentials::Digital99 { client_id: "c".into(), client_secret: Secret::new("s") },
        options: AccountOptions::default(),
        webhook_url: Secret::new("http://127.0.0.1:1/x"),
        base_url: DEFAULT_BASE_URL.into(),
    };
    assert!(f(&ctx).is_ok());
    ctx.credentials = Credentials::Whapi { partner_token: Secret::new("x") };
    assert!(f(&ctx).is_err());
}

/// Issue 17 point 4: the create path is inferred (`inferred::CREATE_ONBOARDING_PATH`,
/// docs/providers.md §4.2); the adapter tries it, falls back to `CREATE_ONBOARDING_FALLBACK`
/// only on a 404 (nothing was created), and names the constant when neither exists.
#[tokio::test]
async fn create_tries_create_onboarding_then_the_fallback_only_on_404() {
    for (path, primary, fallback) in [(CreatePath::CreateOnboarding, 1, 0), (CreatePath::CreateAccount, 1, 1)] {
        let e = env_with(Digital99SimConfig { sandbox: false, create_path: path, ..Default::default() }).await;
        let number = "972507778899";
        e.register_verified(number).await;
        let req = request("onb-path", start(number, false, None));
        let out = e.p.run_step(&e.ctx(), &step(Digital99Step::CreateAccount, &req, None, json!({}))).await.unwrap();
        assert_eq!(out.observation.state, Some(OnboardingState::AwaitingCustomer), "{path:?}");
        assert_eq!((e.calls(CREATE), e.calls(CREATE_FALLBACK)), (primary, fallback), "{path:?}");
        assert_eq!(e.sim.accounts().len(), 1);
    }
    let e = env_with(Digital99SimConfig { create_path: CreatePath::Unpublished, ..Default::default() }).await;
    let req = request("onb-none", start("972507778800", false, None));
    match e.p.run_step(&e.ctx(), &step(Digital99Step::CreateAccount, &req, None, json!({}))).await {
        Err(ProviderError::Precondition { raw, message }) => {
            assert_eq!(raw, "404");
            assert!(message.contains("CREATE_ONBOARDING_PATH"), "{message}");
        }
        other => panic!("expected Precondition naming the constant, got {other:?}"),
    }
    assert_eq!((e.calls(CREATE), e.calls(CREATE_FALLBACK)), (1, 1), "one fallback, no loop");
    // A FAIL envelope on the first path is never a reason to try the second.
    let e = env().await;
    let req = request("onb-fail", start("972507778811", false, None));
    assert!(e.p.run_step(&e.ctx(), &step(Digital99Step::CreateAccount, &req, None, json!({}))).await.is_err());
    assert_eq!((e.calls(CREATE), e.calls(CREATE_FALLBACK)), (1, 0));
}
