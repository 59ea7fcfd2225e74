//! Gupshup end to end: the real adapter against the in-process simulator (sandbox mode, which
//! plays the customer), over real gRPC and the real webhook ingress.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wa_onboard::grpc::pb;
use wa_onboard::sim::common::Fault;
use wa_onboard::sim::gupshup::{GupshupSim, KnobsPatch, LimitSpec};

use crate::helpers::*;

/// Milliseconds per simulated pipeline stage (live after three stages).
const STAGE_MS: u64 = 500;
/// How long any wait in these tests may take before it fails: generous for a loaded CI box.
const PATIENCE: Duration = Duration::from_secs(90);

fn fast(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = true;
    s.sandbox.sims.gupshup.stage_ms = STAGE_MS;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
}

async fn sandbox_app() -> TestApp {
    spawn_with(fast).await
}

fn sim(app: &TestApp) -> &GupshupSim {
    &app.running().sandbox.as_ref().expect("sandbox mode runs the simulators").gupshup
}

fn link_request(app_name: &str, request_id: &str) -> pb::CreateOnboardingRequest {
    link_request_for(app_name, "+919876543210", request_id)
}

fn link_request_for(app_name: &str, phone: &str, request_id: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/sandbox-gupshup".into(),
        reference: "crm-7".into(),
        request_id: request_id.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: app_name.into(),
            waba_id: "104996122399160".into(),
            phone: phone.into(),
            ..Default::default()
        })),
    }
}

fn gupshup_details(o: &pb::Onboarding) -> pb::GupshupOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Gupshup(g)) => g.clone(),
        other => panic!("no Gupshup details: {other:?}"),
    }
}

async fn create(app: &TestApp, req: pb::CreateOnboardingRequest) -> String {
    app.onboardings().create_onboarding(app.req(req)).await.expect("CreateOnboarding").into_inner().name
}

async fn get(app: &TestApp, name: &str) -> pb::Onboarding {
    app.onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.into() }))
        .await
        .expect("GetOnboarding")
        .into_inner()
}

fn step<'a>(p: &'a pb::Pipeline, name: &str) -> &'a pb::PipelineStep {
    p.steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name} in {p:?}"))
}

fn finished(s: &pb::PipelineStep) -> bool {
    [pb::StepState::Succeeded, pb::StepState::Skipped, pb::StepState::Failed].iter().any(|x| *x as i32 == s.state)
}

/// Waits until the onboarding is `state` and every pipeline step has finished.
async fn wait_done(app: &TestApp, name: &str, state: pb::OnboardingState) -> (pb::Onboarding, pb::Pipeline) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // Pipeline first: a step's outcome and the details it adds are one write, so the
        // onboarding read after a finished pipeline carries them (read the other way round,
        // the last step could finish in between and the onboarding would miss its details).
        let p = app.pipeline(name).await;
        let o = get(app, name).await;
        if o.state == state as i32 && p.steps.iter().all(finished) {
            return (o, p);
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never finished in {state:?}; last: {o:?} {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the onboarding is in `state` (the pipeline may still run).
async fn wait_state(app: &TestApp, name: &str, state: pb::OnboardingState) -> pb::Onboarding {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let o = get(app, name).await;
        if o.state == state as i32 {
            return o;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {state:?}; last: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn calls(sim: &GupshupSim, endpoint: &str) -> u64 {
    sim.core().counters().calls.get(endpoint).copied().unwrap_or(0)
}

fn created(sim: &GupshupSim, kind: &str) -> u64 {
    sim.core().counters().created.get(kind).copied().unwrap_or(0)
}

const LINK: &str = "POST /partner/tpp/app";
const PIPELINE: &str = "GET /partner/app/{app_id}/pipeline";
const SUBSCRIBE: &str = "POST /partner/app/{app_id}/subscription";

#[tokio::test]
async fn sandbox_onboarding_reaches_live_through_provisioning_and_replays_by_request_id() {
    let app = sandbox_app().await;
    let o =
        app.onboardings().create_onboarding(app.req(link_request("AcmeSupport", "r-1"))).await.unwrap().into_inner();
    let name = o.name.clone();
    let mut stream = app
        .onboardings()
        .watch_onboarding(app.req(pb::WatchOnboardingRequest { name: name.clone(), after_sequence: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let live = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = stream.message().await.unwrap() {
            if let Some(pb::watch_onboarding_response::Message::Event(e)) = msg.message {
                seen.push(e.state);
                if e.state == pb::OnboardingState::Live as i32 {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(live, "not LIVE within 30 s; states seen: {seen:?}");
    assert!(seen.contains(&(pb::OnboardingState::Provisioning as i32)), "{seen:?}");
    let got = app
        .onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.clone() }))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::onboarding::Details::Gupshup(g)) = got.details else { panic!("no gupshup details") };
    assert!(!g.app_id.is_empty());
    assert!(g.app_token_ready);
    assert_eq!(got.reference, "crm-7");
    // The same request_id again: the same onboarding, no second app.
    let again = app.onboardings().create_onboarding(app.req(link_request("AcmeSupport", "r-1"))).await.unwrap();
    assert_eq!(again.into_inner().name, name);
    assert_eq!(created(sim(&app), "apps"), 1);
}

#[tokio::test]
async fn an_invalid_app_name_is_refused_before_anything_is_stored() {
    let app = sandbox_app().await;
    let err = app.onboardings().create_onboarding(app.req(link_request("Acme!!", ""))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(violations(&err), vec!["gupshup.app_name".to_string()]);
    let list =
        app.onboardings().list_onboardings(app.req(pb::ListOnboardingsRequest::default())).await.unwrap().into_inner();
    assert!(list.onboardings.is_empty());
    assert_eq!(calls(sim(&app), LINK), 0, "no call made for an invalid name");
}

#[tokio::test]
async fn subscribe_on_live_creates_the_subscription_only_once_live_under_its_resource_name() {
    let app = sandbox_app().await;
    let mut req = link_request("AcmeSubscribed", "r-sub");
    if let Some(pb::create_onboarding_request::Request::Gupshup(g)) = &mut req.request {
        g.subscribe_on_live = true;
        g.subscription = Some(pb::SubscriptionSpec {
            url: "https://crm.acme.test/wa/events".into(),
            events: vec!["SENT".into(), "DELIVERED".into(), "READ".into(), "ACCOUNT".into()],
            tag: "crm-events".into(),
            version: 2,
            headers: [("X-Auth".to_string(), "hdr-secret-value".to_string())].into(),
            ..Default::default()
        });
    }
    let name = create(&app, req).await;
    let (o, p) = wait_done(&app, &name, pb::OnboardingState::Live).await;
    assert_eq!(step(&p, "subscribe").state, pb::StepState::Succeeded as i32, "{p:?}");
    let g = gupshup_details(&o);
    assert!(g.subscribe_on_live);
    // The requested subscription reads back, without its header values (write-only).
    let asked = g.subscription.clone().expect("the requested subscription");
    assert_eq!(
        (asked.url.as_str(), asked.tag.as_str(), asked.version),
        ("https://crm.acme.test/wa/events", "crm-events", 2)
    );
    assert_eq!(asked.events.len(), 4);
    assert!(asked.headers.is_empty());
    assert!(!format!("{o:?}").contains("hdr-secret-value"));

    // The simulator holds exactly one subscription for the app, made by one create call.
    let sim = sim(&app);
    let at_sim = sim.app(&g.app_id).expect("app at the simulator");
    assert_eq!(at_sim.subscriptions, 1);
    assert_eq!(calls(sim, SUBSCRIBE), 1);

    // Listed through the API under the resource name the onboarding reports.
    let list = pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone())
        .list_subscriptions(app.req(pb::ListSubscriptionsRequest { parent: name.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.subscriptions.len(), 1, "{list:?}");
    let sub = &list.subscriptions[0];
    assert!(!sub.provider_id.is_empty());
    assert_eq!(sub.name, format!("{name}/subscriptions/{}", sub.provider_id));
    assert_eq!(g.created_subscription, sub.name, "created_subscription is the subscription's resource name");
    let spec = sub.spec.clone().unwrap_or_default();
    assert_eq!(spec.tag, "crm-events");
    assert_eq!(spec.url, "https://crm.acme.test/wa/events");
    assert_eq!(spec.version, 2);
    // And that name works with GetSubscription.
    let got = pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone())
        .get_subscription(app.req(pb::GetSubscriptionRequest { name: g.created_subscription.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.provider_id, sub.provider_id);

    // Ordering, at the simulator: created after the app went live there (its pipeline
    // reaches FINALIZE three stages after the link).
    let live_at_sim = at_sim.created_on + 3 * STAGE_MS as i64;
    let created_ms = sub.create_time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    assert!(
        created_ms.is_some_and(|c| c >= live_at_sim),
        "subscription created at {created_ms:?}, before the app was live at {live_at_sim}"
    );
    // Ordering, in the event log: the onboarding was LIVE before the subscribe step ran.
    let evs = all_events(&app, &name).await;
    let live_seq =
        evs.iter().find(|e| e.state == pb::OnboardingState::Live as i32).map(|e| e.sequence).expect("a LIVE event");
    let subscribe_seqs: Vec<i64> = evs.iter().filter(|e| e.step == "subscribe").map(|e| e.sequence).collect();
    assert!(!subscribe_seqs.is_empty(), "the subscribe step left no event: {evs:?}");
    assert!(subscribe_seqs.iter().all(|s| *s > live_seq), "subscribe events {subscribe_seqs:?} vs LIVE at {live_seq}");
    assert!(
        evs.iter().filter(|e| e.sequence < live_seq).all(|e| e.step != "subscribe"),
        "nothing of the subscribe step happened before LIVE"
    );
}

/// A registry of the built-in adapters whose Gupshup adapter enforces `limits` (the
/// production adapter with shorter windows, so a burst runs in seconds).
fn registry_with_gupshup_limits(
    limits: wa_onboard::providers::gupshup::GupshupLimits,
) -> wa_onboard::providers::ProviderRegistry {
    use wa_onboard::providers::builtin::{AdapterDeps, registry};
    use wa_onboard::providers::gupshup::GupshupProvider;
    use wa_onboard::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
    let deps = AdapterDeps {
        http: HttpClient::new(HttpTimeouts::default()).expect("http client"),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy::default(),
        poll_interval: Duration::from_millis(200),
    };
    let mut r = registry(&deps);
    r.register(
        wa_onboard::domain::ProviderKind::Gupshup,
        Arc::new(move |_ctx| {
            Ok(Arc::new(GupshupProvider::with_limits(deps.clone(), limits)) as Arc<dyn wa_onboard::providers::Provider>)
        }),
    );
    r
}

#[tokio::test]
async fn a_burst_of_thirty_onboardings_all_go_live_without_one_rate_limit_violation() {
    use wa_onboard::providers::gupshup::{GupshupLimits, Limit};
    const N: usize = 30;
    // Link-app: 10 per window at both ends. The simulator's window (2 s) is shorter than the
    // adapter's (3 s), so only a client that sends more than 10 links within 2 s is refused,
    // whatever the scheduling delays of a loaded machine; 30 links need three windows.
    let adapter_limits =
        GupshupLimits { link: Limit { max: 10, window: Duration::from_secs(3) }, ..GupshupLimits::default() };
    let app = spawn_with_providers(
        |s| {
            fast(s);
            s.sandbox.sims.gupshup.limits.link = LimitSpec { max: 10, window_ms: 2_000 };
        },
        Some(registry_with_gupshup_limits(adapter_limits)),
    )
    .await;
    let creates = (0..N).map(|i| {
        let req = link_request_for(&format!("BurstShop{i:02}"), &format!("+9198765{i:05}"), &format!("burst-{i}"));
        let mut client = app.onboardings();
        let req = app.req(req);
        async move { client.create_onboarding(req).await.map(|r| r.into_inner().name) }
    });
    let names: Vec<String> =
        futures::future::join_all(creates).await.into_iter().collect::<Result<_, _>>().expect("all accepted");
    for name in &names {
        wait_state(&app, name, pb::OnboardingState::Live).await;
    }
    let sim = sim(&app);
    let counters = sim.core().counters();
    assert_eq!(counters.rate_limit_violations, 0, "{counters:?}");
    assert_eq!(created(sim, "apps"), N as u64, "{counters:?}");
    assert_eq!(calls(sim, LINK), N as u64, "one link call per onboarding, none refused: {counters:?}");
    assert!(sim.apps().iter().all(|a| a.live), "{:?}", sim.apps());
    // One partner login served the whole burst (single-flight token cache).
    assert_eq!(created(sim, "partner_tokens"), 1, "{counters:?}");
}

#[tokio::test]
async fn server_errors_and_429s_with_retry_after_are_retried_and_one_app_is_created() {
    let app = sandbox_app().await;
    let core = sim(&app).core();
    core.fail_next(Some(LINK), 2, Fault::Status { status: 500 });
    core.fail_next(Some(LINK), 1, Fault::TooManyRequests { retry_after_secs: Some(1) });
    core.fail_next(Some(PIPELINE), 1, Fault::Status { status: 503 });
    core.fail_next(Some(PIPELINE), 2, Fault::TooManyRequests { retry_after_secs: Some(1) });
    core.fail_next(Some(PIPELINE), 1, Fault::Status { status: 500 });
    let name = create(&app, link_request("AcmeFlaky", "r-flaky")).await;
    let (o, _) = wait_done(&app, &name, pb::OnboardingState::Live).await;
    let counters = core.counters();
    assert_eq!(counters.faults_injected, 7, "every injected fault was met: {counters:?}");
    assert!(core.with_knobs(|k| k.next.is_empty()));
    assert_eq!(created(sim(&app), "apps"), 1, "{counters:?}");
    assert_eq!(sim(&app).apps().len(), 1);
    assert_eq!(calls(sim(&app), LINK), 4, "three refused link calls, then one that linked: {counters:?}");
    assert_eq!(counters.rate_limit_violations, 0, "{counters:?}");
    let g = gupshup_details(&o);
    assert_eq!(sim(&app).apps()[0].app_id, g.app_id);
    assert!(g.app_token_ready);
}

#[tokio::test]
async fn a_pipeline_error_stage_fails_the_onboarding_with_the_raw_stage() {
    let app = sandbox_app().await;
    // `stageRetries` in the pipeline body (issue 17 point 10: off by default).
    sim(&app).update_knobs(KnobsPatch {
        fail_next_pipelines: Some(1),
        pipeline_stage_retries: Some(true),
        ..Default::default()
    });
    let mut req = link_request("AcmeDoomed", "r-doomed");
    if let Some(pb::create_onboarding_request::Request::Gupshup(g)) = &mut req.request {
        g.subscribe_on_live = true;
        g.subscription = Some(pb::SubscriptionSpec {
            url: "https://crm.acme.test/wa".into(),
            events: vec!["MESSAGE".into()],
            tag: "never".into(),
            version: 2,
            ..Default::default()
        });
    }
    let name = create(&app, req).await;
    let (o, p) = wait_done(&app, &name, pb::OnboardingState::Failed).await;
    let status = o.provider_status.clone().unwrap_or_default();
    assert_eq!(status.code, "ERROR/CREATE_DOCKER", "{o:?}");
    assert_eq!(status.fields.get("creationStage").map(String::as_str), Some("ERROR"));
    assert!(o.state_reason.contains("CREATE_DOCKER"), "{}", o.state_reason);

    let prov = step(&p, "provisioning");
    assert_eq!(prov.state, pb::StepState::Failed as i32, "{prov:?}");
    assert_eq!(prov.provider_stage.get("creationStage").map(String::as_str), Some("ERROR"), "{prov:?}");
    assert_eq!(prov.provider_stage.get("pipeLineStage").map(String::as_str), Some("CREATE_DOCKER"));
    assert_eq!(prov.provider_stage.get("stageRetries").map(String::as_str), Some("3"));
    assert_eq!(step(&p, "subscribe").state, pb::StepState::Skipped as i32, "no subscription for a failed app");
    assert_eq!(calls(sim(&app), SUBSCRIBE), 0);
    let failed = all_events(&app, &name).await.into_iter().filter(|e| e.state == pb::OnboardingState::Failed as i32);
    assert_eq!(failed.count(), 1);
}

/// Posts `body` to `url` and returns the ingress's JSON answer.
async fn post_json(url: &str, body: &serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new().post(url).json(body).send().await.expect("webhook ingress answers");
    assert_eq!(r.status(), 200);
    r.json().await.expect("JSON answer")
}

#[tokio::test]
async fn a_duplicated_live_event_is_acknowledged_and_changes_nothing() {
    // The simulator does not play the customer here: the app stays at INITIAL and only our
    // live event moves the onboarding.
    let app = spawn_with(|s| {
        fast(s);
        s.sandbox.sims.gupshup.sandbox = false;
    })
    .await;
    let name = create(&app, link_request("AcmeCallback", "r-cb")).await;
    let o = wait_state(&app, &name, pb::OnboardingState::Provisioning).await;
    let mut g = gupshup_details(&o);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while g.app_id.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no app id: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        g = gupshup_details(&get(&app, &name).await);
    }
    let at_sim = sim(&app).app(&g.app_id).expect("app at the simulator");
    let callback = at_sim.callback_url.clone().expect("the link set our callback URL");
    assert!(
        callback.starts_with(&format!(
            "http://{}/webhooks/gupshup/{}/",
            app.running().webhook_addr,
            app.account_key("sandbox-gupshup").await.as_str()
        )),
        "{callback}"
    );
    let live = json!({
        "app": at_sim.name, "appId": g.app_id, "phone": at_sim.phone,
        "timestamp": wa_onboard::domain::now_ms(), "version": 2, "type": "onboarding-event",
        "payload": {"type": "docker-status-event", "payload": {"status": "live", "waId": at_sim.phone}}
    });

    assert_eq!(post_json(&callback, &live).await, json!({"accepted": 1, "duplicates": 0}));
    // The event moves the onboarding at once, although Gupshup's pipeline still shows INITIAL
    // (its view lags the event): LIVE, and the provisioning step is done.
    let (o, p) = wait_done(&app, &name, pb::OnboardingState::Live).await;
    assert_eq!(step(&p, "provisioning").state, pb::StepState::Succeeded as i32, "{p:?}");
    assert!(!sim(&app).app(&g.app_id).is_some_and(|a| a.live), "only the event said live");
    assert_eq!(post_json(&callback, &live).await, json!({"accepted": 0, "duplicates": 1}));

    // A later, different event is the barrier: once it is in the log, anything the duplicate
    // could have caused would be too.
    let tier = json!({
        "app": at_sim.name, "appId": g.app_id, "phone": at_sim.phone,
        "timestamp": wa_onboard::domain::now_ms() + 1, "version": 2, "type": "account-event",
        "payload": {"type": "tier-event", "payload": {"event": "UPGRADE", "oldLimit": "TIER_250", "currentLimit": "TIER_1K"}}
    });
    assert_eq!(post_json(&callback, &tier).await, json!({"accepted": 1, "duplicates": 0}));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let evs = loop {
        let evs = all_events(&app, &name).await;
        if evs.iter().any(|e| e.attributes.get("event").is_some_and(|v| v.starts_with("tier-event"))) {
            break evs;
        }
        assert!(tokio::time::Instant::now() < deadline, "the barrier event was never applied: {evs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let live_events: Vec<_> = evs
        .iter()
        .filter(|e| e.attributes.get("event").map(String::as_str) == Some("docker-status-event:live"))
        .collect();
    assert_eq!(live_events.len(), 1, "one event for the live callback, none for its duplicate: {evs:?}");
    assert_eq!(live_events[0].state, pb::OnboardingState::Live as i32);
    let into_live = evs
        .iter()
        .filter(|e| e.state == pb::OnboardingState::Live as i32 && e.previous_state != pb::OnboardingState::Live as i32)
        .count();
    assert_eq!(into_live, 1, "{evs:?}");
    let now = get(&app, &name).await;
    assert_eq!(now.state, pb::OnboardingState::Live as i32, "still LIVE: {now:?}");
    assert!(now.sequence > o.sequence);
    assert_eq!(created(sim(&app), "apps"), 1);
}

#[tokio::test]
async fn the_app_token_goes_to_its_owner_only_and_each_read_is_audited_without_it() {
    let app = sandbox_app().await;
    let name = create(&app, link_request("AcmeTokens", "r-tok")).await;
    let (o, _) = wait_done(&app, &name, pb::OnboardingState::Live).await;
    let g = gupshup_details(&o);
    let mut tokens = pb::token_service_client::TokenServiceClient::new(app.channel.clone());

    let tok = tokens.get_app_token(app.req(pb::GetAppTokenRequest { name: name.clone() })).await.unwrap().into_inner();
    assert_eq!(tok.onboarding, name);
    assert_eq!(tok.provider, pb::Provider::Gupshup as i32);
    assert_eq!(tok.resource_id, g.app_id);
    assert!(tok.expire_time.is_none(), "Gupshup app tokens do not expire");
    // The very token Gupshup holds for the app (get-or-create answers the same one).
    let sim_url = app.running().sandbox.as_ref().expect("sandbox").endpoints().gupshup;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{sim_url}/partner/account/login"))
        .form(&[("email", "sandbox@wa-onboard.local"), ("secret", "sandbox-secret")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let partner = login["token"].as_str().expect("partner token").to_string();
    let at_sim: serde_json::Value = http
        .get(format!("{sim_url}/partner/app/{}/token", g.app_id))
        .header("Authorization", partner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at_sim["token"]["token"].as_str(), Some(tok.token.as_str()), "{at_sim}");

    // Another tenant: NOT_FOUND, as if the onboarding did not exist.
    let other = app.other_tenant("billing").await;
    let err = tokens
        .get_app_token(with_key(pb::GetAppTokenRequest { name: name.clone() }, other.expose()))
        .await
        .expect_err("another tenant cannot read it");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let evs = all_events(&app, &name).await;
    let reads: Vec<_> = evs.iter().filter(|e| e.r#type == "token_read").collect();
    assert_eq!(reads.len(), 1, "one audited read (the refused one is not a read): {evs:?}");
    let dev = app.running().store.tenant_by_name("dev").await.unwrap().expect("dev tenant").id;
    assert_eq!(reads[0].attributes.get("who").map(String::as_str), Some(dev.as_str()));
    assert_eq!(reads[0].attributes.get("resource_id"), Some(&g.app_id));
    assert!(!format!("{evs:?}").contains(&tok.token), "the token never enters the event log");
}

// issue 17 points 14-15

fn expiring_account(id: &str, expire_ms: i64) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account: Some(pb::Account {
            provider: pb::Provider::Gupshup as i32,
            display_name: "Acme expiring secret".into(),
            credentials: Some(pb::AccountCredentials {
                credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                    email: "sandbox@wa-onboard.local".into(),
                    secret: "sandbox-secret".into(),
                })),
            }),
            options: Some(pb::AccountOptions {
                options: Some(pb::account_options::Options::Gupshup(pb::GupshupOptions {
                    client_secret_expire_time: Some(prost_types::Timestamp { seconds: expire_ms / 1000, nanos: 0 }),
                    ..Default::default()
                })),
                endpoint: String::new(),
            }),
            sandbox: true,
            ..Default::default()
        }),
        account_id: id.into(),
        request_id: String::new(),
    }
}

/// Point 15: a declared client-secret expiry is warned of ahead (CheckAccount,
/// GetProviderTokenStatus), and once Gupshup refuses the lapsed secret the account answers
/// FAILED_PRECONDITION with reason REAUTH_REQUIRED.
#[tokio::test]
async fn client_secret_expiry_is_warned_ahead_and_lapsed_secret_needs_reauth() {
    use tonic_types::StatusExt;
    let app = sandbox_app().await;
    let day = 86_400_000;
    let now = wa_onboard::domain::now_ms();
    let mut accounts = app.accounts();
    let created = accounts.create_account(app.req(expiring_account("gs-soon", now + 3 * day))).await.unwrap();
    let opts = created.into_inner().options.and_then(|o| o.options);
    assert!(
        matches!(opts, Some(pb::account_options::Options::Gupshup(ref g)) if g.client_secret_expire_time.is_some()),
        "{opts:?}"
    );
    let check = accounts
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/gs-soon".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(check.ok, "{check:?}");
    assert_eq!(check.credential_expire_time.map(|t| t.seconds), Some((now + 3 * day) / 1000));
    assert!(check.credential_warning.contains("expires at"), "{:?}", check.credential_warning);
    let mut tokens = pb::token_service_client::TokenServiceClient::new(app.channel.clone());
    let status = tokens
        .get_provider_token_status(app.req(pb::GetProviderTokenStatusRequest { account: "accounts/gs-soon".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(status.credential_expire_time.is_some() && !status.credential_warning.is_empty(), "{status:?}");

    // The secret lapsed: Gupshup refuses it and the declared date is past.
    sim(&app).update_knobs(KnobsPatch { secret_expires_at_ms: Some(Some(0)), ..KnobsPatch::default() });
    accounts.create_account(app.req(expiring_account("gs-lapsed", now - day))).await.unwrap();
    let check = accounts
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/gs-lapsed".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(!check.ok);
    assert!(check.message.starts_with("client secret expired"), "{:?}", check.message);
    assert!(check.credential_warning.contains("expired at"), "{:?}", check.credential_warning);
    let err = tokens
        .refresh_provider_token(app.req(pb::RefreshProviderTokenRequest { account: "accounts/gs-lapsed".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.get_details_error_info().map(|i| i.reason).as_deref(), Some("REAUTH_REQUIRED"));
}

/// Point 14: a name with a space is refused at the API before Gupshup is called.
#[tokio::test]
async fn app_name_with_a_space_is_invalid_argument() {
    let app = sandbox_app().await;
    let err = app.onboardings().create_onboarding(app.req(link_request("Acme Support", "r-space"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["gupshup.app_name".to_string()]);
    assert_eq!(calls(sim(&app), LINK), 0);
}

/// Issue 17 point 9: the link happens but its answer is lost; the engine's retry meets the TPP
/// page's 409 `Bot Already Exists` (no `appId`). The adapter finds the app by phone in the
/// app list, the engine adopts it (this onboarding's own lost attempt), and it goes LIVE with
/// one app.
#[tokio::test]
async fn a_lost_link_answer_then_bot_already_exists_still_goes_live() {
    let app = sandbox_app().await;
    sim(&app).update_knobs(KnobsPatch { bot_exists_on_relink: Some(true), ..Default::default() });
    sim(&app).core().fail_next(Some(LINK), 1, Fault::Timeout { after_effect: true });
    let name = create(&app, link_request_for("AcmeLostAnswer", "+919812300017", "r-lost")).await;
    let (o, p) = wait_done(&app, &name, pb::OnboardingState::Live).await;
    assert_eq!(created(sim(&app), "apps"), 1);
    assert_eq!(calls(sim(&app), LINK), 2, "the lost link and the retry that met the 409");
    assert!(calls(sim(&app), "GET /partner/app/list") >= 1);
    let g = gupshup_details(&o);
    assert_eq!(sim(&app).apps()[0].app_id, g.app_id);
    assert_eq!(step(&p, "link_app").state, pb::StepState::Succeeded as i32, "{p:?}");
}
