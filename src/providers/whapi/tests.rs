//! The Whapi adapter against its simulator (real HTTP on 127.0.0.1): the conformance suite,
//! the pipeline step by step, the channel and subscription ports, webhooks as the simulator
//! sends them, the creation limit and reconciliation after a lost answer.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::domain::account::{AccountOptions, Credentials};
use crate::domain::{AccountId, OnboardingId};
use crate::providers::builtin::AdapterDeps;
use crate::providers::conformance::{self, ConformanceHarness, Fault};
use crate::providers::http::{HttpClient, HttpTimeouts, RetryPolicy};
use crate::providers::{
    ChannelMode, ConnectCode, ConnectMethod, PipelineStep, Progress, ResourceRef, StepOutcome, SubscriptionSpec,
};
use crate::sim::common::{self as simc, Running};
use crate::sim::whapi::{WhapiSim, WhapiSimConfig, WhapiSimServers};

const PT: &str = "sandbox-partner-token";
const DAY: i64 = 86_400_000;

struct Env {
    sim: WhapiSim,
    servers: WhapiSimServers,
    provider: WhapiProvider,
    hook_url: String,
    hooks: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    _hook_server: Running,
    http: reqwest::Client,
}

fn sim_cfg() -> WhapiSimConfig {
    WhapiSimConfig {
        sandbox: false,
        launch_ms: 50,
        restart_ms: 300,
        tick_ms: 50,
        qr_ttl_secs: 2,
        scan_delay_ms: 200,
        ..Default::default()
    }
}

fn adapter_cfg() -> WhapiConfig {
    WhapiConfig {
        restart_grace: Duration::from_millis(150),
        restart_wait: Duration::from_secs(5),
        code_wait: Duration::from_secs(3),
        wait_step: Duration::from_millis(50),
        ..Default::default()
    }
}

fn deps() -> AdapterDeps {
    AdapterDeps {
        // Short total timeout: the "lost answer" fault holds the response longer than this.
        http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(2), total: Duration::from_secs(1) }).unwrap(),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            total_budget: Duration::from_secs(5),
        },
        poll_interval: Duration::from_millis(50),
    }
}

/// A webhook receiver standing in for our ingress: collects raw bodies.
async fn hook_server() -> (String, mpsc::UnboundedReceiver<Vec<u8>>, Running) {
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let tx = tx.clone();
        async move {
            let bytes = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
            let _ = tx.send(bytes.to_vec());
            "ok"
        }
    });
    let running = simc::serve(app, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (format!("{}/webhooks/whapi/acct-whapi/s3cret-path", running.base_url()), rx, running)
}

async fn env_with(sim: WhapiSimConfig, cfg: WhapiConfig) -> Env {
    let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (sim, servers) = WhapiSim::spawn(sim, a, a).await.unwrap();
    let (hook_url, rx, hs) = hook_server().await;
    Env {
        sim,
        servers,
        provider: WhapiProvider::new(&deps()).with_config(cfg),
        hook_url,
        hooks: tokio::sync::Mutex::new(rx),
        _hook_server: hs,
        http: reqwest::Client::new(),
    }
}

async fn env() -> Env {
    env_with(sim_cfg(), adapter_cfg()).await
}

fn start_req(key: &str, name: &str, go_live: bool, extend_days: u32) -> StartRequest {
    StartRequest {
        onboarding_id: OnboardingId::parse("onb-whapi-1").unwrap(),
        idempotency_key: key.into(),
        reference: "cust-1".into(),
        payload: StartPayload::Whapi(WhapiStart { channel_name: name.into(), project_id: None, go_live, extend_days }),
    }
}

/// What the engine would keep for one onboarding between steps.
struct Run {
    req: StartRequest,
    handle: Option<ProviderHandle>,
    secret: Option<Secret>,
    data: BTreeMap<String, Value>,
    details: crate::domain::OnboardingDetails,
    was_stalled: bool,
    state: OnboardingState,
}

impl Run {
    fn new(req: StartRequest) -> Self {
        Self {
            req,
            handle: None,
            secret: None,
            data: BTreeMap::new(),
            details: crate::domain::OnboardingDetails::empty(crate::domain::ProviderKind::Whapi),
            was_stalled: false,
            state: OnboardingState::Pending,
        }
    }

    fn step_run(&self, step: WhapiStep) -> StepRun {
        let name = step.name();
        StepRun {
            name: name.into(),
            onboarding_id: self.req.onboarding_id.clone(),
            request: self.req.clone(),
            handle: self.handle.clone(),
            secret: self.secret.clone(),
            data: self.data.get(name).cloned().unwrap_or_else(|| json!({})),
            attempt: 1,
            state: self.state,
            details: self.details.clone(),
            was_stalled: self.was_stalled,
        }
    }

    /// The details so far as their stored JSON object.
    fn view(&self) -> Value {
        serde_json::to_value(&self.details).unwrap()
    }

    fn apply(&mut self, step: WhapiStep, out: &StepOutcome) {
        let name = step.name();
        if let Some(h) = &out.handle {
            self.handle = Some(h.clone());
        }
        if let Some(s) = &out.secret {
            self.secret = Some(s.clone());
        }
        if let Some(d) = &out.data {
            self.data.insert(name.into(), d.clone());
        }
        if let Some(d) = &out.details {
            self.details.merge(d.clone()).unwrap();
        }
        if let Some(s) = out.observation.state {
            self.state = s;
        }
    }

    fn target(&self) -> ResourceRef {
        ResourceRef { handle: self.handle.clone().unwrap(), secret: self.secret.clone(), request_id: None }
    }

    fn channel_id(&self) -> String {
        self.handle.as_ref().unwrap().external_key.clone()
    }
}

/// What `create_channel` made, as the tests read it.
#[derive(Debug)]
struct Started {
    handle: ProviderHandle,
    observation: Observation,
    reconciled: bool,
}

/// The pipeline steps as the engine drives them, for tests about one call.
impl WhapiProvider {
    /// `create_channel` as a repeat runs it (attempt 2: it looks for an earlier attempt's
    /// channel before it creates).
    async fn start(&self, ctx: &CallContext, req: &StartRequest) -> Result<Started, ProviderError> {
        let run = StepRun { attempt: 2, ..Run::new(req.clone()).step_run(WhapiStep::CreateChannel) };
        let out = self.run_step(ctx, &run).await?;
        let reconciled = out.attributes.get("reconciled").is_some_and(|v| v == "true");
        Ok(Started {
            handle: out.handle.expect("create_channel records the channel"),
            observation: out.observation,
            reconciled,
        })
    }

    /// One `await_connection` health read, without the stored channel token.
    async fn status(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<Observation, ProviderError> {
        let mut run = Run::new(start_req("status", "Status", false, 0));
        run.handle = Some(handle.clone());
        Ok(self.run_step(ctx, &run.step_run(WhapiStep::AwaitConnection)).await?.observation)
    }
}

impl Env {
    fn ctx(&self) -> CallContext {
        self.ctx_with_token(PT)
    }

    fn ctx_with_token(&self, token: &str) -> CallContext {
        CallContext {
            account_id: AccountId::parse("acct-whapi").unwrap(),
            credentials: Credentials::Whapi { partner_token: Secret::new(token) },
            options: AccountOptions { project_id: Some("sandbox-project".into()), ..Default::default() },
            webhook_url: Secret::new(self.hook_url.clone()),
            base_url: self.servers.manager.base_url(),
        }
    }

    /// Runs one step once, recording its outcome like the engine.
    async fn step(&self, run: &mut Run, step: WhapiStep) -> StepOutcome {
        let out = self
            .provider
            .run_step(&self.ctx(), &run.step_run(step))
            .await
            .unwrap_or_else(|e| panic!("{step:?}: {e:?}"));
        run.apply(step, &out);
        out
    }

    /// Runs a step until it is done (bounded).
    async fn step_done(&self, run: &mut Run, step: WhapiStep) -> StepOutcome {
        for _ in 0..200 {
            let out = self.step(run, step).await;
            match out.progress {
                Progress::Done => return out,
                Progress::Wait(d) => tokio::time::sleep(d.min(Duration::from_millis(100))).await,
            }
        }
        panic!("{step:?} never finished");
    }

    /// Wakes the channel (gate health with its token) and links the phone once it shows a QR.
    async fn scan(&self, channel_id: &str, phone: Option<&str>) {
        let token = self.sim.channel(channel_id).expect("channel").token;
        for _ in 0..100 {
            let _ = self
                .http
                .get(format!("{}/health", self.servers.gate.base_url()))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            if self.sim.scan(channel_id, phone).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not scan {channel_id}");
    }

    /// The channel's gate settings, read directly from the simulator.
    async fn settings(&self, channel_id: &str) -> Value {
        let token = self.sim.channel(channel_id).unwrap().token;
        let r = self
            .http
            .get(format!("{}/settings", self.servers.gate.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.json().await.unwrap()
    }

    /// The next webhook body our ingress received that matches `pred`.
    async fn next_hook(&self, pred: impl Fn(&Value) -> bool) -> Vec<u8> {
        let mut rx = self.hooks.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let body = tokio::time::timeout_at(deadline, rx.recv()).await.expect("webhook not received").unwrap();
            if pred(&serde_json::from_slice(&body).unwrap_or(Value::Null)) {
                return body;
            }
        }
    }

    fn calls(&self) -> u64 {
        self.sim.core().counters().calls.values().sum()
    }

    /// A channel created through the pipeline, webhooks configured.
    async fn channel(&self, key: &str, go_live: bool, extend_days: u32) -> Run {
        let mut run = Run::new(start_req(key, "Acme Support", go_live, extend_days));
        self.step(&mut run, WhapiStep::CreateChannel).await;
        self.step(&mut run, WhapiStep::ConfigureWebhooks).await;
        run
    }
}

#[async_trait]
impl ConformanceHarness for Env {
    fn ctx(&self) -> CallContext {
        Env::ctx(self)
    }

    fn valid_start(&self, key: &str) -> StartRequest {
        start_req(key, "Acme Support", false, 0)
    }

    fn invalid_start(&self, key: &str) -> StartRequest {
        start_req(key, "   ", false, 0)
    }

    async fn finish_customer(&self, handle: &ProviderHandle) {
        self.scan(&handle.external_key, None).await;
    }

    async fn inject_next_create(&self, fault: Fault) {
        let f = match fault {
            Fault::ServerError => simc::Fault::Status { status: 503 },
            Fault::RateLimited => simc::Fault::TooManyRequests { retry_after_secs: None },
            Fault::UnknownOutcome => {
                self.sim.core().with_knobs(|k| k.timeout_hold_ms = 2_500);
                simc::Fault::Timeout { after_effect: true }
            }
        };
        self.sim.core().fail_next(Some("PUT /channels"), 1, f);
    }

    async fn resources_created(&self) -> u64 {
        self.sim.core().counters().created.get("channels").copied().unwrap_or(0)
    }

    fn valid_callback(&self, handle: &ProviderHandle) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "health": {"start_at": 1_713_774_883, "uptime": 78, "status": {"code": 3, "text": "QR"}, "version": "1.8.3"},
            "event": {"type": "channel", "event": "post"},
            "channel_id": handle.external_key,
        }))
        .unwrap()
    }
}

#[tokio::test]
async fn conformance_against_the_simulator() {
    let e = env().await;
    conformance::run_all(&e.provider, &e).await;
    // Every create went through the limiter and none reached the sim's 429.
    assert_eq!(e.sim.core().counters().rate_limit_violations, 0);
}

#[test]
fn pipeline_shape() {
    let p = WhapiProvider::new(&deps());
    let names: Vec<_> = p.pipeline(&start_req("k", "A", true, 3)).iter().map(|s| (s.name, s.enabled)).collect();
    assert_eq!(
        names,
        [("create_channel", true), ("configure_webhooks", true), ("await_connection", true), ("go_live", true)]
    );
    let specs = p.pipeline(&start_req("k", "A", false, 0));
    assert!(!specs[3].enabled, "go_live runs only when asked");
    assert_eq!(specs[0].enter_state, Some(OnboardingState::Pending));
    assert_eq!(specs[2].enter_state, Some(OnboardingState::AwaitingCustomer));
    assert!(specs[2].deadline >= Duration::from_secs(24 * 3600));
    // The stored names: never renamed.
    assert_eq!(
        WhapiStep::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(),
        ["create_channel", "configure_webhooks", "await_connection", "go_live"]
    );
}

#[tokio::test]
async fn registered_in_builtin_registry() {
    let r = crate::providers::builtin::registry(&deps());
    assert!(r.implemented(ProviderKind::Whapi));
}

fn decode_png(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

/// create → webhooks → QR (valid PNG) → scan → AUTH → go_live (+3 days) → extend (retry does
/// not extend twice) → delete refunds, the balance agreeing at every point.
#[tokio::test]
async fn full_flow_qr_go_live_extend_delete() {
    let e = env().await;
    let ctx = e.ctx();
    let mut run = Run::new(start_req("onb-full", "Acme Support", true, 3));

    // 1. create_channel
    let t0 = crate::domain::now_ms();
    let out = e.step(&mut run, WhapiStep::CreateChannel).await;
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.attributes["reconciled"], "false");
    let id = run.channel_id();
    let simch = e.sim.channel(&id).expect("the sim has the channel");
    assert_eq!(run.secret.as_ref().unwrap().expose(), simch.token, "the channel token is the step's secret");
    assert_eq!(run.view()["channel_id"], json!(id));
    assert_eq!(run.view()["mode"], json!("trial"));
    assert_eq!(run.view()["go_live"], json!(true));
    assert_eq!(run.view()["extend_days"], json!(3));
    let trial_till = run.view()["active_till_ms"].as_i64().unwrap();
    assert_eq!(trial_till, simch.active_till);
    assert!((trial_till - (t0 + 5 * DAY)).abs() < 5_000);
    assert_eq!(out.expire_ms, Some(trial_till));
    assert!(!format!("{:?}", out.details).contains(&simch.token), "no token in details");
    assert!(!format!("{:?}", out.handle).contains(&simch.token), "no token in the handle");
    assert_eq!(run.handle.as_ref().unwrap().data["apiUrl"], json!(e.sim.api_url()));

    // 2. configure_webhooks keeps another integration's webhook and is idempotent.
    let token = simch.token.clone();
    let other =
        json!({"webhooks": [{"url": "http://other.example/hook", "events": [{"type": "messages", "method": "post"}]}]});
    let r = e
        .http
        .patch(format!("{}/settings", e.servers.gate.base_url()))
        .bearer_auth(&token)
        .json(&other)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let out = e.step(&mut run, WhapiStep::ConfigureWebhooks).await;
    assert_eq!(out.attributes["webhooks_changed"], "true");
    let hooks = e.settings(&id).await["webhooks"].clone();
    let hooks = hooks.as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    assert!(hooks.iter().any(|h| h["url"] == "http://other.example/hook"));
    let ours = hooks.iter().find(|h| h["url"] == json!(e.hook_url)).expect("our ingress webhook");
    assert_eq!(ours["mode"], "body");
    let types: Vec<&str> = ours["events"].as_array().unwrap().iter().map(|ev| ev["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"channel") && types.contains(&"users"), "{types:?}");
    let calls_before = e.calls();
    let out = e.step(&mut run, WhapiStep::ConfigureWebhooks).await;
    assert_eq!(out.attributes["webhooks_changed"], "false");
    assert_eq!(e.sim.core().counters().calls.get("PATCH /settings"), Some(&2), "no second PATCH");
    assert!(e.calls() > calls_before);
    assert!(!format!("{out:?}").contains("s3cret-path"), "the webhook URL is a secret");

    // 3. await_connection waits while the phone is not linked.
    let out = e.step(&mut run, WhapiStep::AwaitConnection).await;
    assert!(matches!(out.progress, Progress::Wait(_)));
    assert_eq!(out.observation.state, Some(OnboardingState::AwaitingCustomer));

    // The QR: a PNG that decodes, its raw string being the one the sim accepts.
    let target = run.target();
    let code = e.provider.connect_code(&ctx, &target, &ConnectMethod::Qr { size: 0 }).await.unwrap();
    let ConnectCode::Qr { png, raw } = &code.code else { panic!("not a QR: {code:?}") };
    let (w, h) = decode_png(png);
    assert!(w >= 21 && w == h, "{w}x{h}");
    assert!(raw.starts_with("2@"), "{raw}");
    let now = crate::domain::now_ms();
    let exp = code.expire_ms.unwrap();
    assert!(exp > now && exp <= now + 3_000, "QR expiry {exp} vs now {now}");
    // After it expired, a fresh one.
    tokio::time::sleep(Duration::from_millis((exp - now + 100) as u64)).await;
    let fresh = e.provider.connect_code(&ctx, &target, &ConnectMethod::Qr { size: 0 }).await.unwrap();
    let ConnectCode::Qr { raw: raw2, .. } = &fresh.code else { panic!() };
    assert_ne!(raw, raw2, "a fresh QR after expiry");
    assert!(fresh.expire_ms.unwrap() > exp);
    let r = e
        .http
        .post(format!("{}/_sim/whapi/channels/{id}/scan", e.servers.manager.base_url()))
        .json(&json!({"rowdata": raw2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT, "the sim accepts the raw QR string");
    match e.provider.connect_code(&ctx, &target, &ConnectMethod::Qr { size: 0 }).await {
        Err(ProviderError::Precondition { .. }) => {}
        other => panic!("connected channel: expected Precondition, got {other:?}"),
    }

    // The login webhook reaches the ingress; the woken step sees AUTH.
    let body = e.next_hook(|v| v["event"]["type"] == "users").await;
    let evs = e.provider.parse_callback(&body).unwrap();
    assert_eq!((evs[0].raw_status.as_str(), evs[0].state, evs[0].external_key.as_str()), ("LOGIN", None, id.as_str()));
    let out = e.step(&mut run, WhapiStep::AwaitConnection).await;
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::Provisioning), "go_live pending");
    assert_eq!(out.observation.raw_status, "AUTH");
    assert_eq!(run.view()["phone"], json!("+15550001234"));

    // 4. go_live: mode live, restart waited out, +3 days once.
    assert_eq!(e.sim.balance(), 100);
    let out = e.step_done(&mut run, WhapiStep::GoLive).await;
    assert_eq!(out.observation.state, Some(OnboardingState::Live));
    assert_eq!(run.view()["mode"], json!("live"));
    let simch = e.sim.channel(&id).unwrap();
    assert_eq!(simch.mode, "live");
    assert_eq!(simch.extended_days, 3);
    assert_eq!(run.view()["active_till_ms"], json!(simch.active_till));
    assert_eq!(simch.active_till, trial_till + 3 * DAY);
    assert_eq!(e.sim.balance(), 97);
    let billing = e.sim.billing(&id).unwrap();
    assert_eq!(billing.len(), 1);
    assert!(billing[0].comment.contains("onb-whapi-1") && billing[0].comment.contains("go_live"), "{billing:?}");
    // No gate call hit the restarting channel.
    let c = e.sim.core().counters();
    assert_eq!(c.calls.get("PATCH /channels/{id}/mode"), Some(&1));

    // A crash after the extension but before its result was stored: the marker says
    // "extending", activeTill says it happened: no second extension.
    let marker = json!({"mode_set_at": 0, "extend": {"before": trial_till, "days": 3}});
    run.data.insert(WhapiStep::GoLive.name().into(), marker);
    let out = e.step_done(&mut run, WhapiStep::GoLive).await;
    assert_eq!(out.attributes["already_applied"], "true");
    assert_eq!(e.sim.billing(&id).unwrap().len(), 1);
    assert_eq!(e.sim.balance(), 97);

    // 5. ExtendChannel, retried with the same request id: extends once.
    let mut target = run.target();
    target.request_id = Some("req-ext-1".into());
    let first = e.provider.extend(&ctx, &target, 2, "renewal").await.unwrap();
    assert_eq!((first.days_added, first.already_applied), (2, false));
    assert_eq!(first.channel.active_till_ms, Some(trial_till + 5 * DAY));
    let again = e.provider.extend(&ctx, &target, 2, "renewal").await.unwrap();
    assert_eq!((again.days_added, again.already_applied), (0, true));
    assert_eq!(again.channel.active_till_ms, Some(trial_till + 5 * DAY));
    let billing = e.sim.billing(&id).unwrap();
    assert_eq!(billing.len(), 2);
    assert!(billing[1].comment.contains("req-ext-1"), "{billing:?}");
    assert_eq!(e.sim.balance(), 95);
    let bal = e.provider.partner_balance(&ctx).await.unwrap();
    assert_eq!(bal.days, 95);
    assert_eq!(bal.trial_days, 5);
    match e.provider.extend(&ctx, &target, 4, "renewal").await {
        Err(ProviderError::Conflict { .. }) => {}
        other => panic!("same request id, other days: expected Conflict, got {other:?}"),
    }

    let info = e.provider.get_channel(&ctx, &run.target()).await.unwrap();
    assert_eq!(info.mode, Some(ChannelMode::Live));
    assert_eq!(info.health, "AUTH");
    assert_eq!(info.phone.as_ref().map(E164::as_str), Some("+15550001234"));
    assert_eq!(info.active_till_ms, Some(trial_till + 5 * DAY));

    // 6. delete: the refund is the unused paid days (here all 5), back on the balance.
    let simch = e.sim.channel(&id).unwrap();
    let unused = (simch.active_till - e.sim.core().clock.now_ms()) / DAY;
    let expected = unused.min(simch.extended_days);
    assert_eq!(expected, 5);
    let refunded = e.provider.delete_channel(&ctx, &run.target()).await.unwrap();
    assert_eq!(i64::from(refunded), expected);
    assert_eq!(e.sim.balance(), 100);
    assert_eq!(e.provider.partner_balance(&ctx).await.unwrap().days, 100);
    assert!(e.sim.channel(&id).is_none());
    assert_eq!(e.sim.core().counters().rate_limit_violations, 0);
}

#[tokio::test]
async fn go_live_without_days_and_trial_connection_is_live() {
    let e = env().await;
    let mut run = e.channel("onb-trial", false, 0).await;
    e.step(&mut run, WhapiStep::AwaitConnection).await;
    e.scan(&run.channel_id(), None).await;
    let out = e.step_done(&mut run, WhapiStep::AwaitConnection).await;
    assert_eq!(out.observation.state, Some(OnboardingState::Live), "a connected trial channel is usable");
    assert_eq!(e.sim.channel(&run.channel_id()).unwrap().mode, "trial");

    let mut run = e.channel("onb-live-nodays", true, 0).await;
    e.scan(&run.channel_id(), None).await;
    e.step_done(&mut run, WhapiStep::AwaitConnection).await;
    let out = e.step_done(&mut run, WhapiStep::GoLive).await;
    assert_eq!(out.observation.state, Some(OnboardingState::Live));
    assert_eq!(e.sim.channel(&run.channel_id()).unwrap().mode, "live");
    assert!(e.sim.billing(&run.channel_id()).unwrap().is_empty());
    assert_eq!(e.sim.balance(), 100);
}

#[tokio::test]
async fn pairing_code_path() {
    // Sandbox: the simulated customer types the code on the phone whose number we sent.
    let e = env_with(WhapiSimConfig { sandbox: true, ..sim_cfg() }, adapter_cfg()).await;
    let ctx = e.ctx();
    let mut run = e.channel("onb-pair", false, 0).await;
    let phone = E164::parse("+447700900123").unwrap();
    let code = e
        .provider
        .connect_code(&ctx, &run.target(), &ConnectMethod::PairingCode { phone: phone.clone() })
        .await
        .unwrap();
    let ConnectCode::PairingCode { code: c, phone: p } = &code.code else { panic!("{code:?}") };
    assert!(!c.is_empty());
    assert_eq!(p, &phone);
    let now = crate::domain::now_ms();
    let exp = code.expire_ms.unwrap();
    assert!(exp > now + 50_000 && exp <= now + 61_000, "pairing code expiry");
    let out = e.step_done(&mut run, WhapiStep::AwaitConnection).await;
    assert_eq!(out.observation.state, Some(OnboardingState::Live));
    assert_eq!(run.view()["phone"], json!("+447700900123"));
    assert_eq!(e.sim.channel(&run.channel_id()).unwrap().phone.as_deref(), Some("447700900123"));
}

#[tokio::test]
async fn logout_and_error_webhooks_move_back_to_awaiting_customer() {
    let e = env().await;
    let ctx = e.ctx();
    let mut run = e.channel("onb-logout", false, 0).await;
    let id = run.channel_id();
    e.scan(&id, None).await;
    e.step_done(&mut run, WhapiStep::AwaitConnection).await;
    assert_eq!(run.state, OnboardingState::Live);

    e.provider.logout_channel(&ctx, &run.target()).await.unwrap();
    let body = e.next_hook(|v| v["event"]["type"] == "users" && v["event"]["event"] == "delete").await;
    let evs = e.provider.parse_callback(&body).unwrap();
    assert_eq!(evs.len(), 1);
    let ev = &evs[0];
    assert_eq!(ev.external_key, id);
    assert_eq!(ev.raw_status, "LOGOUT");
    assert_eq!(ev.state, Some(OnboardingState::AwaitingCustomer));
    assert!(!ev.fields["reason"].is_empty());
    assert_eq!(ev.fields["phone"], "15550001234");
    assert_eq!(e.provider.parse_callback(&body).unwrap()[0].dedupe_key, ev.dedupe_key, "stable dedupe key");
    // Polling agrees: back to the QR.
    let obs = e.provider.status(&ctx, run.handle.as_ref().unwrap()).await.unwrap();
    assert_eq!(obs.state, Some(OnboardingState::AwaitingCustomer));

    assert!(e.sim.set_error(&id));
    let body = e.next_hook(|v| v["event"]["type"] == "channel" && v["health"]["status"]["text"] == "ERROR").await;
    let ev = &e.provider.parse_callback(&body).unwrap()[0];
    assert_eq!((ev.raw_status.as_str(), ev.state), ("ERROR", Some(OnboardingState::AwaitingCustomer)));
    assert!(ev.fields["reason"].contains("ERROR"));
    assert!(ev.occurred_ms.is_some());
    let obs = e.provider.status(&ctx, run.handle.as_ref().unwrap()).await.unwrap();
    assert_eq!((obs.raw_status.as_str(), obs.state), ("ERROR", Some(OnboardingState::AwaitingCustomer)));
}

#[test]
fn parses_documented_webhook_bodies() {
    let p = WhapiProvider::new(&deps());
    // docs/providers.md §3.5 examples.
    let qr = br#"{ "health": { "start_at": 1713774883, "uptime": 78, "status": { "code": 3, "text": "QR" },
              "version": "1.8.3-74-gf7df472" },
  "event": { "type": "channel", "event": "post" }, "channel_id": "MANTIS-M72HC" }"#;
    let ev = &p.parse_callback(qr).unwrap()[0];
    assert_eq!((ev.external_key.as_str(), ev.raw_status.as_str(), ev.state), ("MANTIS-M72HC", "QR", None));
    assert_eq!(ev.occurred_ms, Some((1_713_774_883 + 78) * 1000));
    let login = br#"{ "user": { "id": "61371989950", "name": "Jonathan" },
  "event": { "type": "users", "event": "post" }, "channel_id": "MANTIS-M72HC" }"#;
    let ev2 = &p.parse_callback(login).unwrap()[0];
    assert_eq!((ev2.raw_status.as_str(), ev2.state), ("LOGIN", None));
    assert_eq!(ev2.fields["phone"], "61371989950");
    assert_ne!(ev.dedupe_key, ev2.dedupe_key);
    // Same event, other key order and whitespace: same dedupe key.
    let reordered = br#"{"channel_id":"MANTIS-M72HC","event":{"event":"post","type":"users"},"user":{"name":"Jonathan","id":"61371989950"}}"#;
    assert_eq!(p.parse_callback(reordered).unwrap()[0].dedupe_key, ev2.dedupe_key);
    for bad in [&br#"{"event":{"type":"users","event":"post"}}"#[..], br#"[1,2]"#, br#"{"channel_id":"X"}"#] {
        assert!(
            matches!(p.parse_callback(bad), Err(ProviderError::Malformed { .. })),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn twenty_first_creation_within_the_window_queues() {
    // The documented limit is the default; the test shrinks the window to 2 s on both sides.
    let d = WhapiConfig::default();
    assert_eq!((d.create_limit, d.create_window), (20, Duration::from_secs(30 * 60)));
    let window = Duration::from_secs(2);
    let e = env_with(
        WhapiSimConfig { create_limit: 20, create_window_secs: 2, ..sim_cfg() },
        WhapiConfig { create_limit: 20, create_window: window, ..adapter_cfg() },
    )
    .await;
    let t0 = tokio::time::Instant::now();
    let mut last = Duration::ZERO;
    for i in 0..21 {
        let out = e.provider.start(&e.ctx(), &start_req(&format!("burst-{i}"), "Burst", false, 0)).await;
        assert!(out.is_ok(), "creation {i} failed: {out:?}");
        last = t0.elapsed();
        if i == 19 {
            assert!(last < window, "the first 20 do not wait");
        }
    }
    assert!(last >= window, "the 21st waited for the window ({last:?})");
    let c = e.sim.core().counters();
    assert_eq!(c.created["channels"], 21);
    assert_eq!(c.rate_limit_violations, 0, "the sim never answered 429");
}

#[tokio::test]
async fn create_after_unknown_outcome_reconciles() {
    let e = env().await;
    e.inject_next_create(Fault::UnknownOutcome).await;
    let mut run = Run::new(start_req("onb-lost", "Acme Support", false, 0));
    match e.provider.run_step(&e.ctx(), &run.step_run(WhapiStep::CreateChannel)).await {
        Err(e @ ProviderError::UnknownOutcome { .. }) => assert!(e.is_retryable()),
        other => panic!("expected UnknownOutcome, got {other:?}"),
    }
    // The engine counts the failed attempt: the retry is attempt 2, which looks first.
    let mut retry = run.step_run(WhapiStep::CreateChannel);
    retry.attempt = 2;
    let out = e.provider.run_step(&e.ctx(), &retry).await.expect("retry");
    run.apply(WhapiStep::CreateChannel, &out);
    assert_eq!(out.attributes["reconciled"], "true");
    let chans = e.sim.channels();
    assert_eq!(chans.len(), 1, "one channel at the sim");
    assert_eq!(e.sim.core().counters().created["channels"], 1);
    assert_eq!(run.channel_id(), chans[0].id);
    assert_eq!(run.secret.as_ref().unwrap().expose(), chans[0].token);
    // Another onboarding with the same channel name is another channel.
    let mut other = Run::new(start_req("onb-other", "Acme Support", false, 0));
    let out = e.step(&mut other, WhapiStep::CreateChannel).await;
    assert_eq!(out.attributes["reconciled"], "false");
    assert_ne!(other.channel_id(), run.channel_id());
}

fn spec(url: &str, events: &[&str], headers: usize) -> SubscriptionSpec {
    SubscriptionSpec {
        url: url.into(),
        events: events.iter().map(|s| s.to_string()).collect(),
        headers: (0..headers).map(|i| (format!("X-H{i}"), Secret::new(format!("v{i}")))).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn subscription_crud_on_channel_webhooks() {
    let e = env().await;
    let ctx = e.ctx();
    let run = e.channel("onb-subs", false, 0).await;
    let id = run.channel_id();
    let target = run.target();
    let subs = e.provider.subscriptions().unwrap();

    // Refused before any call.
    let calls = e.calls();
    for (s, field) in [
        (spec("https://crm.example/hook", &["messages"], 6), "spec.headers"),
        (spec("https://crm.example/hook", &["nope"], 0), "spec.events"),
        (spec("https://crm.example/hook", &["messages:get"], 0), "spec.events"),
        (spec("https://crm.example/hook", &[], 0), "spec.events"),
        (spec("ftp://crm.example/hook", &["messages"], 0), "spec.url"),
        (spec(&e.hook_url, &["messages"], 0), "spec.url"),
    ] {
        match subs.create_subscription(&ctx, &target, &s).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, field),
            other => panic!("{s:?}: expected Invalid {field}, got {other:?}"),
        }
    }
    assert_eq!(e.calls(), calls, "validation made no call");

    let created = subs
        .create_subscription(&ctx, &target, &spec("https://crm.example/hook", &["messages", "statuses:put"], 2))
        .await
        .unwrap();
    assert_eq!(created.spec.events, ["messages", "statuses:put"]);
    let listed = subs.list_subscriptions(&ctx, &target).await.unwrap();
    assert_eq!(listed.len(), 1, "our ingress is not listed");
    assert_eq!(listed[0].id, created.id);
    assert!(!format!("{listed:?}").contains("v0"), "header values are not read back");
    let got = subs.get_subscription(&ctx, &target, &created.id).await.unwrap();
    assert_eq!(got.spec.url, "https://crm.example/hook");
    assert_eq!(got.spec.headers.keys().collect::<Vec<_>>(), ["X-H0", "X-H1"]);
    match subs.create_subscription(&ctx, &target, &spec("https://crm.example/hook", &["messages"], 0)).await {
        Err(ProviderError::Conflict { .. }) => {}
        other => panic!("same URL twice: expected Conflict, got {other:?}"),
    }

    // Update only the events: headers stay as they were at Whapi.
    let upd = subs
        .update_subscription(&ctx, &target, &created.id, &spec("", &["chats"], 0), &["events".to_string()])
        .await
        .unwrap();
    assert_eq!(upd.spec.events, ["chats"]);
    let settings = e.settings(&id).await;
    let hook =
        settings["webhooks"].as_array().unwrap().iter().find(|h| h["url"] == "https://crm.example/hook").unwrap();
    assert_eq!(hook["events"], json!([{"type": "chats", "method": "post"}]));
    assert_eq!(hook["headers"], json!({"X-H0": "v0", "X-H1": "v1"}));
    match subs.update_subscription(&ctx, &target, &created.id, &spec("", &[], 9), &["headers".to_string()]).await {
        Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "spec.headers"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A new URL is a new id.
    let moved = subs
        .update_subscription(&ctx, &target, &created.id, &spec("https://crm.example/v2", &[], 0), &["url".to_string()])
        .await
        .unwrap();
    assert_ne!(moved.id, created.id);
    assert!(matches!(subs.get_subscription(&ctx, &target, &created.id).await, Err(ProviderError::NotFound { .. })));

    // Our own webhook can be neither seen nor removed.
    let ingress_id = subscriptions::subscription_id(&e.hook_url);
    assert!(matches!(subs.delete_subscription(&ctx, &target, &ingress_id).await, Err(ProviderError::NotFound { .. })));
    subs.delete_subscription(&ctx, &target, &moved.id).await.unwrap();
    assert!(subs.list_subscriptions(&ctx, &target).await.unwrap().is_empty());
    let settings = e.settings(&id).await;
    let hooks = settings["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["url"], json!(e.hook_url), "the ingress webhook survived");
}

#[tokio::test]
async fn credentials_check_and_redaction() {
    let e = env().await;
    let ok = e.provider.check_credentials(&e.ctx()).await.unwrap();
    assert_eq!(ok.fields["project_found"], "true");
    let err = e.provider.check_credentials(&e.ctx_with_token("wrong-token-123")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthenticated { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("wrong-token-123"));
    let run = e.channel("onb-redact", false, 0).await;
    let token = run.secret.as_ref().unwrap().expose().to_string();
    assert!(!format!("{:?} {:?}", e.provider, run.target()).contains(&token));
    assert!(!format!("{:?}", e.ctx()).contains(PT));
}

#[tokio::test]
async fn expired_trial_is_expired() {
    let e = env().await;
    let mut run = e.channel("onb-expire", false, 0).await;
    e.sim.core().clock.advance(Duration::from_secs(6 * 86_400));
    let obs = e.provider.status(&e.ctx(), run.handle.as_ref().unwrap()).await.unwrap();
    assert_eq!((obs.raw_status.as_str(), obs.state), ("stopped", Some(OnboardingState::Expired)));
    let out = e.step(&mut run, WhapiStep::AwaitConnection).await;
    assert_eq!(out.progress, Progress::Done);
    assert_eq!(out.observation.state, Some(OnboardingState::Expired));
    // Cancel still deletes a stopped channel (nothing to refund: trial days only).
    let c = e.provider.cancel(&e.ctx(), run.handle.as_ref().unwrap()).await.unwrap();
    assert_eq!(c.refunded_days, 0);
    assert!(e.sim.channels().is_empty());
}

#[tokio::test]
async fn invalid_requests_make_no_call() {
    let e = env().await;
    let calls = e.calls();
    for (req, field) in [
        (start_req("k1", "", false, 0), "whapi.channel_name"),
        (start_req("k2", &"x".repeat(101), false, 0), "whapi.channel_name"),
        (start_req("k3", "Acme", true, 366), "whapi.extend_days"),
        (start_req("k4", "Acme", false, 3), "whapi.extend_days"),
    ] {
        match e.provider.start(&e.ctx(), &req).await {
            Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, field),
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }
    assert_eq!(e.calls(), calls);
}

#[tokio::test]
async fn balance_alert_and_list_path_fallback() {
    let e = env().await;
    let mut ctx = e.ctx();
    assert!(matches!(
        e.provider.set_balance_alert(&ctx, "https://ops.example/days", 96).await,
        Err(ProviderError::Invalid { .. })
    ));
    ctx.options.partner_name = Some("sandbox".into());
    e.provider.set_balance_alert(&ctx, &e.hook_url, 96).await.unwrap();
    e.provider.set_balance_alert(&ctx, &e.hook_url, 96).await.unwrap();
    assert_eq!(e.provider.balance_alert_limit(&ctx).await.unwrap(), Some(96));
    // Crossing the threshold fires the `days` webhook at that URL.
    let run = e.channel("onb-alert", false, 0).await;
    e.provider.extend(&ctx, &run.target(), 5, "top up").await.unwrap();
    let body = e.next_hook(|v| v["event"]["type"] == "days").await;
    assert!(!body.is_empty());

    // [C2] list path variants: a 404 on `/channels/list` falls back to `/channels`.
    e.sim.core().fail_next(Some("GET /channels/list"), 1, simc::Fault::Status { status: 404 });
    let again = e.provider.start(&ctx, &start_req("onb-alert", "Acme Support", false, 0)).await.unwrap();
    assert!(again.reconciled);
    assert_eq!(e.sim.core().counters().calls.get("GET /channels"), Some(&1));
}

#[test]
fn webhook_without_health_is_kept_without_state() {
    let p = WhapiProvider::new(&deps());
    let body = br#"{"event":{"type":"channel","event":"patch"},"channel_id":"MANTIS-M72HC","qr":{"rowdata":"2@x"}}"#;
    let ev = &p.parse_callback(body).unwrap()[0];
    assert_eq!((ev.raw_status.as_str(), ev.state, ev.occurred_ms), ("channel.patch", None, None));
}

/// [I] QR field names disagree between public clients: a gate answering `/users/login` with
/// `qr` + `expire` and no raw string still yields a PNG and the raw string (from
/// `/users/login/rowdata` and `/users/login/image`). A proxy in front of the sim's gate
/// rewrites that one answer.
#[tokio::test]
async fn qr_without_raw_string_in_json_uses_rowdata_and_image() {
    let e = env().await;
    let run = e.channel("onb-qr-variant", false, 0).await;
    let id = run.channel_id();
    let gate = e.servers.gate.base_url();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let gate = gate.clone();
        async move {
            let http = reqwest::Client::new();
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let auth = req.headers().get("authorization").cloned();
            let mut fwd = http.request(req.method().clone(), format!("{gate}{path}"));
            if let Some(a) = auth {
                fwd = fwd.header("authorization", a);
            }
            let resp = fwd.send().await.unwrap();
            let status = resp.status();
            let ctype = resp.headers().get("content-type").cloned();
            let bytes = resp.bytes().await.unwrap();
            if req.uri().path() == "/users/login" && status.is_success() {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                let b64 = v["base64"].as_str().unwrap_or_default().trim_start_matches("data:image/png;base64,");
                let body = json!({"status": v["status"], "qr": b64, "expire": v["expire"]});
                return axum::response::IntoResponse::into_response(axum::Json(body));
            }
            let mut r = axum::response::IntoResponse::into_response((status, bytes.to_vec()));
            if let Some(c) = ctype {
                r.headers_mut().insert("content-type", c);
            }
            r
        }
    });
    let proxy = simc::serve(app, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut target = run.target();
    target.handle.data["apiUrl"] = json!(format!("{}/", proxy.base_url()));
    let code = e.provider.connect_code(&e.ctx(), &target, &ConnectMethod::Qr { size: 0 }).await.unwrap();
    let ConnectCode::Qr { png, raw } = &code.code else { panic!("{code:?}") };
    decode_png(png);
    assert!(code.expire_ms.is_some());
    let c = e.sim.core().counters();
    assert_eq!(c.calls.get("GET /users/login/rowdata"), Some(&1));
    assert_eq!(c.calls.get("GET /users/login/image"), Some(&1));
    let r = e
        .http
        .post(format!("{}/_sim/whapi/channels/{id}/scan", e.servers.manager.base_url()))
        .json(&json!({"rowdata": raw}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
}

#[test]
fn connection_wait_backs_off_to_spare_the_trial_quota() {
    let base = Duration::from_secs(5);
    assert_eq!(pipeline::connection_poll_delay(base, 0), base);
    assert_eq!(pipeline::connection_poll_delay(base, 5), base);
    assert_eq!(pipeline::connection_poll_delay(base, 6), base * 2);
    assert_eq!(pipeline::connection_poll_delay(base, 1000), Duration::from_secs(300));
    // A day of waiting stays well under the trial's 1,000 requests a month.
    let (mut t, mut n) = (Duration::ZERO, 0u64);
    while t < Duration::from_secs(86_400) {
        t += pipeline::connection_poll_delay(base, n);
        n += 1;
    }
    assert!(n < 400, "{n} health reads in 24 h");
}

/// A gate in front of the sim's that rewrites the `/users/login` JSON answer with `rewrite`.
async fn login_proxy(e: &Env, rewrite: fn(Value) -> Value) -> Running {
    let gate = e.servers.gate.base_url();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let gate = gate.clone();
        async move {
            let http = reqwest::Client::new();
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let mut fwd = http.request(req.method().clone(), format!("{gate}{path}"));
            if let Some(a) = req.headers().get("authorization").cloned() {
                fwd = fwd.header("authorization", a);
            }
            let resp = fwd.send().await.unwrap();
            let status = resp.status();
            let ctype = resp.headers().get("content-type").cloned();
            let bytes = resp.bytes().await.unwrap();
            if req.uri().path() == "/users/login" && status.is_success() {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                if v["status"] == "OK" {
                    // Raw text so the field order is the rewrite's, not a map's.
                    let body = rewrite(v);
                    return axum::response::IntoResponse::into_response((
                        [("content-type", "application/json")],
                        body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string()),
                    ));
                }
            }
            let mut r = axum::response::IntoResponse::into_response((status, bytes.to_vec()));
            if let Some(c) = ctype {
                r.headers_mut().insert("content-type", c);
            }
            r
        }
    });
    simc::serve(app, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// Issue 17 point 8: the QR lifetime is `expire`, a JSON number (docs/providers.md §3.4 [C2]):
/// a fractional one (the sim's `qr_expire_float`) is read, rounded up to whole seconds.
#[tokio::test]
async fn qr_expire_is_a_number_possibly_fractional() {
    let e = env_with(WhapiSimConfig { qr_expire_float: true, qr_ttl_secs: 20, ..sim_cfg() }, adapter_cfg()).await;
    let run = e.channel("onb-qr-float", false, 0).await;
    let code = e.provider.connect_code(&e.ctx(), &run.target(), &ConnectMethod::Qr { size: 0 }).await.unwrap();
    let ConnectCode::Qr { png, .. } = &code.code else { panic!("{code:?}") };
    decode_png(png);
    let left = code.expire_ms.expect("expire read") - crate::domain::now_ms();
    assert!(left > 0 && left <= 20_000, "{left} ms");
}

/// Issue 17 point 8: field order and an extra `qr` field (a third-party stub's name) do not
/// matter: the image comes from `base64`, the lifetime from `expire`.
#[tokio::test]
async fn qr_answer_with_other_field_order_and_extra_qr_field_yields_the_base64_image() {
    let e = env().await;
    let run = e.channel("onb-qr-order", false, 0).await;
    let proxy = login_proxy(&e, |v| {
        Value::String(format!(
            r#"{{"expire":{},"qr":"not-an-image","rowdata":{},"base64":{},"expires_in":999,"status":"OK"}}"#,
            v["expire"], v["rowdata"], v["base64"]
        ))
    })
    .await;
    let mut target = run.target();
    target.handle.data["apiUrl"] = json!(format!("{}/", proxy.base_url()));
    let code = e.provider.connect_code(&e.ctx(), &target, &ConnectMethod::Qr { size: 0 }).await.unwrap();
    let ConnectCode::Qr { png, raw } = &code.code else { panic!("{code:?}") };
    decode_png(png);
    assert!(raw.starts_with("2@"), "{raw}");
    let left = code.expire_ms.unwrap() - crate::domain::now_ms();
    assert!(left <= 2_000, "`expire` wins over `expires_in`: {left} ms");
}

/// Issue 17 point 6: every documented mode value reads (docs/providers.md §3.3): `dev` and
/// `dev_archive` are Sandbox, an unknown value is kept raw; Sandbox is never sent.
#[tokio::test]
async fn sandbox_reads_as_dev_and_is_never_sent() {
    let e = env().await;
    let ctx = e.ctx();
    let run = e.channel("onb-modes", false, 0).await;
    let id = run.channel_id();
    for (wire, mode) in [
        ("dev", Some(ChannelMode::Sandbox)),
        ("dev_archive", Some(ChannelMode::Sandbox)),
        ("trial", Some(ChannelMode::Trial)),
        ("platinum", None),
    ] {
        assert!(e.sim.set_channel_mode(&id, wire));
        let info = e.provider.get_channel(&ctx, &run.target()).await.unwrap_or_else(|err| panic!("{wire}: {err}"));
        assert_eq!(info.mode, mode, "{wire}");
    }
    // The raw value stays visible; an archived sandbox is flagged.
    e.sim.set_channel_mode(&id, "dev_archive");
    // A repeated create finds the channel and reports its fields.
    let obs = e.provider.start(&ctx, &run.req).await.unwrap().observation;
    assert_eq!(obs.fields.get("mode").map(String::as_str), Some("dev_archive"));
    assert_eq!(obs.fields.get("archived").map(String::as_str), Some("true"));

    let before = e.sim.core().counters().calls.get("PATCH /channels/{id}/mode").copied().unwrap_or(0);
    match e.provider.set_mode(&ctx, &run.target(), ChannelMode::Sandbox).await {
        Err(ProviderError::Invalid { field: Some(f), .. }) => assert_eq!(f, "mode"),
        other => panic!("expected Invalid mode, got {other:?}"),
    }
    let after = e.sim.core().counters().calls.get("PATCH /channels/{id}/mode").copied().unwrap_or(0);
    assert_eq!(after, before, "nothing sent for Sandbox");
}

/// Issue 17 point 7: the lookup that prevents a second channel pages through the partner
/// list (`count` + `offset`, docs/providers.md §3.2): a channel past the first page is found.
#[tokio::test]
async fn lookup_finds_a_channel_past_the_first_page() {
    let e = env_with(WhapiSimConfig { create_limit: 1_000, ..sim_cfg() }, adapter_cfg()).await;
    let ctx = e.ctx();
    for _ in 0..150 {
        let r = e
            .http
            .put(format!("{}/channels", e.servers.manager.base_url()))
            .bearer_auth(PT)
            .json(&json!({"name": "someone else", "projectId": "sandbox-project"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // The channel an earlier attempt created for this onboarding sits at position 120 of the
    // (id-ordered) list, past the default page of 100.
    let req = start_req("onb-page", "Acme Support", false, 0);
    let StartPayload::Whapi(w) = &req.payload else { unreachable!() };
    let name = channel_name_for(w, &req.idempotency_key);
    let mut ids: Vec<String> = e.sim.channels().into_iter().map(|c| c.id).collect();
    ids.sort();
    let target = ids[120].clone();
    e.sim.tx(|st, _, _| st.channels.get_mut(&target).unwrap().name = name.clone());
    let created = e.sim.core().counters().created.get("channels").copied();
    let out = e.provider.start(&ctx, &req).await.unwrap();
    assert!(out.reconciled, "found, not created again");
    assert_eq!(out.handle.external_key, target);
    assert_eq!(e.sim.core().counters().created.get("channels").copied(), created);
    assert_eq!(e.sim.core().counters().calls.get("GET /channels/list"), Some(&2), "two pages of 100");
}

/// The public `mode` detail keeps the domain names the core and the API read.
#[test]
fn mode_detail_uses_domain_names() {
    use super::channels::detail_mode;
    assert_eq!(detail_mode("dev"), Some(ChannelMode::Sandbox));
    assert_eq!(detail_mode("dev_archive"), Some(ChannelMode::Sandbox));
    assert_eq!(detail_mode("live"), Some(ChannelMode::Live));
    assert_eq!(detail_mode(""), Some(ChannelMode::Trial));
    assert_eq!(detail_mode("platinum"), None, "unknown: the raw word stays in the observation");
}

/// The first create attempt sends only the documented `PUT /channels` (docs/providers.md §3.2):
/// no vendor page lists channels, and attempt 1 has nothing to find. The old code listed
/// first on every attempt, so a vendor-pages-only server failed the very first create.
#[tokio::test]
async fn first_create_attempt_sends_no_channel_list() {
    let e = env().await;
    let mut run = Run::new(start_req("onb-first", "Acme Support", false, 0));
    let out = e.step(&mut run, WhapiStep::CreateChannel).await;
    assert_eq!(out.attributes["reconciled"], "false");
    let calls = e.sim.core().counters().calls;
    assert_eq!(calls.get("GET /channels/list"), None, "{calls:?}");
    assert_eq!(calls.get("GET /channels"), None, "{calls:?}");
    assert_eq!(e.sim.core().counters().created["channels"], 1);
}

/// A retry whose lookup cannot be read stops with a Precondition instead of creating a
/// second channel (a second channel costs days).
#[tokio::test]
async fn retry_whose_channel_list_cannot_be_read_never_creates_again() {
    let e = env().await;
    let run = Run::new(start_req("onb-nolist", "Acme Support", false, 0));
    e.sim.core().fail_next(Some("GET /channels/list"), 1, simc::Fault::Status { status: 400 });
    let mut retry = run.step_run(WhapiStep::CreateChannel);
    retry.attempt = 2;
    match e.provider.run_step(&e.ctx(), &retry).await {
        Err(ProviderError::Precondition { raw, message }) => {
            assert_eq!(raw, "reconcile_create");
            assert!(message.contains("second channel"), "{message}");
        }
        other => panic!("expected Precondition, got {other:?}"),
    }
    assert_eq!(e.sim.core().counters().created.get("channels").copied().unwrap_or(0), 0);
}

/// A restarted pipeline (RetryPipeline after a stall) counts attempts afresh: the engine's
/// `stalled_from` mark (`StepRun::was_stalled`) makes attempt 1 look first anyway, so a lost create is found, not
/// repeated.
#[tokio::test]
async fn create_after_a_stall_and_restart_looks_first() {
    let e = env().await;
    e.inject_next_create(Fault::UnknownOutcome).await;
    let mut run = Run::new(start_req("onb-stalled", "Acme Support", false, 0));
    assert!(e.provider.run_step(&e.ctx(), &run.step_run(WhapiStep::CreateChannel)).await.is_err());
    run.was_stalled = true;
    let out = e.step(&mut run, WhapiStep::CreateChannel).await;
    assert_eq!(out.attributes["reconciled"], "true");
    assert_eq!(e.sim.core().counters().created["channels"], 1, "one channel");
}
