//! The pipeline engine end to end over real gRPC and the real webhook ingress, with the
//! in-memory provider fake standing in for a BSP (each real adapter has its own tests against
//! its simulator).

use std::sync::Arc;
use std::time::Duration;

use wa_onboard::core::callbacks::Handed;
use wa_onboard::domain::{OnboardingId, ProviderKind, StepState, now_ms};
use wa_onboard::grpc::pb;
use wa_onboard::providers::{InMemoryProvider, Provider, ProviderError, ProviderRegistry};

use crate::helpers::*;

fn registry(kind: ProviderKind, fake: &Arc<InMemoryProvider>) -> ProviderRegistry {
    let mut r = ProviderRegistry::new();
    let f = Arc::clone(fake);
    r.register(kind, Arc::new(move |_ctx| Ok(Arc::clone(&f) as Arc<dyn Provider>)));
    r
}

fn fast(s: &mut wa_onboard::config::Settings) {
    s.engine.tick_ms = 20;
    s.engine.retry_base_ms = 10;
    s.engine.retry_max_ms = 40;
    s.engine.lease_secs = 2;
}

async fn app_with(kind: ProviderKind, fake: &Arc<InMemoryProvider>) -> TestApp {
    spawn_with_providers(fast, Some(registry(kind, fake))).await
}

/// Creates the account and returns its webhook URL (shown only in the create response).
async fn account(app: &TestApp, id: &str) -> String {
    let a = app.accounts().create_account(app.req(gupshup_account(id, "partner-secret"))).await.unwrap().into_inner();
    a.webhook_url
}

fn gupshup_request(account: &str, request_id: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: "crm-42".into(),
        request_id: request_id.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: "AcmeSupport".into(),
            waba_id: "123456789".into(),
            phone: "+15551112222".into(),
            ..Default::default()
        })),
    }
}

async fn create(app: &TestApp, account: &str, request_id: &str) -> OnboardingId {
    let o =
        app.onboardings().create_onboarding(app.req(gupshup_request(account, request_id))).await.unwrap().into_inner();
    app.onboarding_key(&o.name).await
}

async fn get(app: &TestApp, id: &OnboardingId) -> pb::Onboarding {
    app.onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: format!("onboardings/{id}") }))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the onboarding reaches `state` (or fails the test after 15 s).
async fn wait_state(app: &TestApp, id: &OnboardingId, state: pb::OnboardingState) -> pb::Onboarding {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let o = get(app, id).await;
        if o.state == state as i32 {
            return o;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached {state:?}; last: {o:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn events(app: &TestApp, id: &OnboardingId) -> Vec<pb::OnboardingEvent> {
    app.onboardings()
        .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
            name: format!("onboardings/{id}"),
            page_size: 1000,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test]
async fn happy_path_reaches_live_with_every_transition_recorded() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    let o = wait_state(&app, &id, pb::OnboardingState::Live).await;
    assert_eq!(o.reference, "crm-42");
    assert_eq!(o.provider_status.unwrap().code, "LIVE");
    let evs = events(&app, &id).await;
    let seqs: Vec<i64> = evs.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gap-free sequence");
    let states: Vec<i32> = evs.iter().map(|e| e.state).collect();
    for s in [pb::OnboardingState::AwaitingCustomer, pb::OnboardingState::Provisioning, pb::OnboardingState::Live] {
        assert!(states.contains(&(s as i32)), "{s:?} missing from {states:?}");
    }
    assert_eq!(fake.creates(), 1);
    let p = app.pipeline(&format!("onboardings/{id}/pipeline")).await;
    assert!(p.steps.iter().all(|s| s.state == pb::StepState::Succeeded as i32), "{:?}", p.steps);
    // The stored request is sealed: nothing of it is readable in the details or the engine state.
    let rec = app.running().store.onboarding_unscoped(&id).await.unwrap().unwrap();
    assert!(!rec.details_json.contains("\"request\""), "request stored in the details: {}", rec.details_json);
    assert!(!rec.engine_json.contains("AcmeSupport"), "request stored in clear: {}", rec.engine_json);
    assert!(rec.engine_json.contains("\"request\""), "the sealed request is in the engine state: {}", rec.engine_json);
}

#[tokio::test]
async fn request_id_replays_one_onboarding_and_one_create() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let a = create(&app, "acme", "req-1").await;
    let b = create(&app, "acme", "req-1").await;
    assert_eq!(a, b);
    wait_state(&app, &a, pb::OnboardingState::Live).await;
    assert_eq!(fake.creates(), 1);
    // The same key for a different request is refused.
    let mut other = gupshup_request("acme", "req-1");
    other.reference = "other".into();
    let err = app.onboardings().create_onboarding(app.req(other)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[tokio::test]
async fn transient_errors_and_unknown_outcomes_retry_without_duplicates() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    fake.fail_next(2, ProviderError::Retryable { raw: "503".into(), message: "down".into() });
    fake.unknown_outcome_next_creates(1);
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::Live).await;
    assert_eq!(fake.creates(), 1, "a create with an unknown outcome was repeated blindly");
    let evs = events(&app, &id).await;
    let retries = evs.iter().filter(|e| e.r#type == "step_retry").count();
    assert!(retries >= 3, "expected the 2 failures and the unknown outcome retried: {retries}");
    assert!(evs.iter().any(|e| e.attributes.get("reconciled").is_some_and(|v| v == "true")));
    assert!(evs.iter().any(|e| e.attributes.get("error_code").is_some_and(|v| v == "503")));
}

/// Soak finding: steps queued on a provider's rate limit (Whapi: 20 channels per 30 min) held
/// every engine slot and stalled all other onboardings. The limiter now answers a long queue
/// with `QUEUED` and the engine reschedules the step; those answers are not attempts, so more
/// of them than the step allows attempts (8) neither stall it nor use up its attempts.
#[tokio::test]
async fn a_long_rate_limit_queue_reschedules_without_using_up_attempts() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let queued = ProviderError::RateLimited {
        retry_after: Some(Duration::from_millis(10)),
        raw: wa_onboard::providers::http::QUEUED.into(),
    };
    fake.fail_next(12, queued);
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::Live).await;
    let evs = events(&app, &id).await;
    let retries = evs.iter().filter(|e| e.r#type == "step_retry").count();
    assert!(retries >= 12, "every queued answer is rescheduled: {retries}");
    let p = app.pipeline(&format!("onboardings/{id}/pipeline")).await;
    assert_eq!(p.steps[0].attempts, 1, "only the run that went through counts: {:?}", p.steps[0]);
    assert_eq!(fake.creates(), 1);
}

#[tokio::test]
async fn exhausted_retries_stall_and_retry_pipeline_resumes() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    // The start step allows 8 attempts: 8 failures exhaust it.
    fake.fail_next(8, ProviderError::Retryable { raw: "502".into(), message: "bad gateway".into() });
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    let o = wait_state(&app, &id, pb::OnboardingState::Stalled).await;
    assert!(o.state_reason.contains("8 attempts"), "{}", o.state_reason);
    let p = app
        .pipelines()
        .retry_pipeline(
            app.req(pb::RetryPipelineRequest { name: format!("onboardings/{id}/pipeline"), request_id: String::new() }),
        )
        .await
        .unwrap()
        .into_inner();
    // Restarted: ready again (or already picked up by the engine).
    assert_ne!(p.steps[0].state, pb::StepState::Stalled as i32, "{:?}", p.steps[0]);
    wait_state(&app, &id, pb::OnboardingState::Live).await;
    // Retrying a live onboarding is refused.
    let err = app
        .pipelines()
        .retry_pipeline(
            app.req(pb::RetryPipelineRequest { name: format!("onboardings/{id}/pipeline"), request_id: String::new() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn rejected_credentials_need_reauth_and_refusals_fail_with_the_raw_code() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    fake.fail_next(1, ProviderError::Unauthenticated { raw: "401".into() });
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    let o = wait_state(&app, &id, pb::OnboardingState::ReauthRequired).await;
    assert!(o.state_reason.contains("credentials"), "{}", o.state_reason);

    fake.fail_next(
        1,
        ProviderError::Invalid { field: None, message: "phone already onboarded".into(), raw: "E-1009".into() },
    );
    let id2 = create(&app, "acme", "").await;
    let o = wait_state(&app, &id2, pb::OnboardingState::Failed).await;
    assert_eq!(o.provider_status.unwrap().code, "E-1009");
    let p = app.running().store.steps(&id2).await.unwrap();
    assert_eq!(p[0].state, StepState::Failed);
    assert_eq!(p[1].state, StepState::Skipped);
}

#[tokio::test]
async fn watchdog_stalls_an_onboarding_past_its_deadline() {
    // Never reaches LIVE on its own.
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup).with_statuses(["INITIAL"]));
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    let o = wait_state(&app, &id, pb::OnboardingState::AwaitingCustomer).await;
    let deadline = o.state_deadline.expect("a waiting onboarding has a deadline");
    let past = deadline.seconds * 1000 + 1000;
    let n = app.running().core.watchdog_tick(past).await.unwrap();
    assert_eq!(n, 1);
    let o = get(&app, &id).await;
    assert_eq!(o.state, pb::OnboardingState::Stalled as i32);
    assert!(o.state_reason.contains("deadline"), "{}", o.state_reason);
    assert!(o.state_deadline.is_none());
}

async fn post(url: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn callbacks_dedupe_and_stale_ones_change_nothing() {
    // The customer finishes only when the test says so; polls are rare, so the callback is
    // what moves the onboarding.
    let fake = Arc::new(
        InMemoryProvider::new(ProviderKind::Gupshup)
            .with_statuses(["INITIAL", "INITIAL", "LIVE"])
            .with_poll_interval(Duration::from_secs(3600)),
    );
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    let url = account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::AwaitingCustomer).await;
    let key = app.running().store.onboarding_unscoped(&id).await.unwrap().unwrap().external_key.unwrap();

    assert!(fake.finish_customer(&key));
    // The newer event (LIVE at t=2000) arrives first, then a duplicate, then an older one.
    let live = fake.render_callback_at("ev-2", &key, "LIVE", 2000);
    let (s, body) = post(&url, live.clone()).await;
    assert_eq!((s, body["accepted"].as_u64()), (200, Some(1)));
    let (s, body) = post(&url, live).await;
    assert_eq!((s, body["duplicates"].as_u64()), (200, Some(1)));
    let (s, _) = post(&url, fake.render_callback_at("ev-1", &key, "PROVISIONING", 1000)).await;
    assert_eq!(s, 200);
    wait_state(&app, &id, pb::OnboardingState::Live).await;
    // Let the stale one be processed, then check it moved nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = get(&app, &id).await;
    assert_eq!(o.state, pb::OnboardingState::Live as i32);
    let evs = events(&app, &id).await;
    let callbacks: Vec<_> = evs.iter().filter(|e| e.attributes.contains_key("event")).collect();
    assert_eq!(callbacks.len(), 2, "one per distinct event: {callbacks:?}");
    assert!(callbacks.iter().any(|e| e.attributes.get("stale").is_some_and(|v| v == "true")));
}

#[tokio::test]
async fn ingress_refuses_bad_calls_and_keeps_malformed_bodies() {
    let fake = Arc::new(
        InMemoryProvider::new(ProviderKind::Gupshup)
            .with_statuses(["INITIAL"])
            .with_poll_interval(Duration::from_secs(3600)),
    );
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    let url = account(&app, "acme").await;
    let base = url.rsplit_once('/').unwrap().0.to_string();
    // An onboarding whose callback is valid, to show the refused calls change nothing.
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::AwaitingCustomer).await;
    let key = app.running().store.onboarding_unscoped(&id).await.unwrap().unwrap().external_key.unwrap();
    let before = events(&app, &id).await;
    let valid = fake.render_callback_at("ev-x", &key, "LIVE", 5000);
    // Wrong secret and unknown account: the same 404, nothing stored, even with a valid body.
    assert_eq!(post(&format!("{base}/wrong-secret"), valid.clone()).await.0, 404);
    assert_eq!(post(&url.replace(".acme/", ".nobody/"), valid.clone()).await.0, 404);
    let unknown = url.replace(".acme/", ".nobody/");
    assert_eq!(post(&unknown, b"{}".to_vec()).await.0, 404);
    assert_eq!(post(&url.replace("/gupshup/", "/exotel/"), b"{}".to_vec()).await.0, 404);
    // Oversized: 413 before the handler runs.
    assert_eq!(post(&url, vec![b'x'; 300 * 1024]).await.0, 413);
    // Malformed: 400, kept for inspection.
    let (s, body) = post(&url, b"not json".to_vec()).await;
    assert_eq!(s, 400, "{body}");
    let store = &app.running().store;
    let kept = store.claim_webhook_events("inspector", now_ms(), Duration::from_secs(1), 10).await.unwrap();
    assert!(kept.is_empty(), "malformed bodies are never processed");
    // The malformed row exists under its content hash: a redelivery is a duplicate.
    let (s, _) = post(&url, b"not json".to_vec()).await;
    assert_eq!(s, 400);
    // Nothing the refused calls carried reached the onboarding: no event, no state change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = events(&app, &id).await;
    assert_eq!(after.len(), before.len(), "no event from a refused call: {after:?}");
    assert_eq!(get(&app, &id).await.state, pb::OnboardingState::AwaitingCustomer as i32);
}

#[tokio::test]
async fn cancel_records_intent_then_cancels_at_the_provider() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup).with_statuses(["INITIAL"]));
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::AwaitingCustomer).await;
    let r = app
        .onboardings()
        .cancel_onboarding(
            app.req(pb::CancelOnboardingRequest { name: format!("onboardings/{id}"), request_id: String::new() }),
        )
        .await
        .unwrap()
        .into_inner();
    let o = r.onboarding.unwrap();
    assert_eq!(o.state, pb::OnboardingState::Cancelled as i32);
    let evs = events(&app, &id).await;
    assert!(evs.iter().any(|e| e.r#type == "cancel_requested"));
    // Cancelling again is a no-op; the steps are all done.
    app.onboardings()
        .cancel_onboarding(
            app.req(pb::CancelOnboardingRequest { name: format!("onboardings/{id}"), request_id: String::new() }),
        )
        .await
        .unwrap();
    let steps = app.running().store.steps(&id).await.unwrap();
    assert!(steps.iter().all(|s| s.state.is_done()), "{steps:?}");
}

#[tokio::test]
async fn a_dead_workers_lease_lapses_and_another_replica_finishes_without_a_duplicate() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    // Replica A accepts requests but runs no engine; replica B (same database) does the work.
    let Some(url) = pg_schema().await else { return };
    // Replicas share the encryption key, as they would share a Kubernetes Secret.
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let a = spawn_with_providers(
        |s| {
            fast(s);
            s.database.url = url.clone();
            s.security.encryption_key = key.clone();
            s.engine.enabled = false;
        },
        Some(registry(ProviderKind::Gupshup, &fake)),
    )
    .await;
    account(&a, "acme").await;
    let id = create(&a, "acme", "").await;
    // A worker claims the start step, performs the create, and dies before recording it.
    let claimed = a.running().store.claim_steps("dead-worker", now_ms(), Duration::from_secs(1), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let core = &a.running().core;
    let rec = a.running().store.onboarding_unscoped(&id).await.unwrap().unwrap();
    let req = core.open_request(&rec, &wa_onboard::core::context::engine_state(&rec).unwrap()).unwrap();
    fake.start(&req).unwrap();
    assert_eq!(fake.creates(), 1);

    let b = spawn_with_providers(
        |s| {
            fast(s);
            s.database.url = url.clone();
            s.security.encryption_key = key.clone();
        },
        Some(registry(ProviderKind::Gupshup, &fake)),
    )
    .await;
    wait_state(&b, &id, pb::OnboardingState::Live).await;
    assert_eq!(fake.creates(), 1, "the takeover created a second resource");
    let evs = events(&b, &id).await;
    assert!(evs.iter().any(|e| e.attributes.get("reconciled").is_some_and(|v| v == "true")));
    drop(a);
    drop(b);
    drop_pg(&url).await;
}

async fn warnings(app: &TestApp, id: &OnboardingId) -> Vec<pb::OnboardingEvent> {
    events(app, id).await.into_iter().filter(|e| e.r#type == "expiry_warning").collect()
}

#[tokio::test]
async fn expiry_warnings_come_once_per_threshold_and_re_arm_when_the_expiry_moves() {
    let app = spawn_app().await;
    let id = app.insert_onboarding("acme", "trial").await;
    let store = &app.running().store;
    let core = &app.running().core;
    let hour: i64 = 3_600_000;
    let set_expiry = |expire: i64| wa_onboard::store::OnboardingChange {
        expire_ms: wa_onboard::domain::Patch::Set(expire),
        ..wa_onboard::store::OnboardingChange::new(
            &id,
            wa_onboard::store::NewEvent::new(wa_onboard::domain::EventKind::ProviderStatus, "trial days"),
            now_ms(),
        )
    };
    let expire = now_ms() + 72 * hour;
    store.apply_change(&set_expiry(expire)).await.unwrap();
    assert_eq!(core.expiry_tick(expire - 48 * hour).await.unwrap(), 0, "two days out: nothing yet");
    assert_eq!(core.expiry_tick(expire - 23 * hour).await.unwrap(), 1, "inside the day");
    assert_eq!(core.expiry_tick(expire - 22 * hour).await.unwrap(), 0, "once per threshold");
    let w = warnings(&app, &id).await;
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].attributes["threshold_secs"], "86400");
    assert!(w[0].reason.contains("expires in 23 h"), "{}", w[0].reason);
    assert_eq!(w[0].state, pb::OnboardingState::Pending as i32, "a warning changes no state");
    assert_eq!(core.expiry_tick(expire - hour / 2).await.unwrap(), 1, "inside the hour");
    assert_eq!(warnings(&app, &id).await[1].attributes["threshold_secs"], "3600");
    assert_eq!(core.expiry_tick(expire - hour / 4).await.unwrap(), 0);

    // Extended by two days: the warnings re-arm for the new expiry.
    let extended = expire + 48 * hour;
    store.apply_change(&set_expiry(extended)).await.unwrap();
    assert_eq!(core.expiry_tick(extended - 10 * hour).await.unwrap(), 1);
    // Both thresholds crossed at once (the first pass comes late): one warning, the smaller.
    let id2 = app.insert_onboarding("acme", "late").await;
    let mut late = set_expiry(now_ms() + 72 * hour);
    late.onboarding_id = Some(id2.clone());
    store.apply_change(&late).await.unwrap();
    let wa_onboard::domain::Patch::Set(expire2) = late.expire_ms else { unreachable!() };
    assert_eq!(core.expiry_tick(expire2 - hour / 2).await.unwrap(), 1);
    assert_eq!(core.expiry_tick(expire2 - hour / 3).await.unwrap(), 0);
    let w2 = warnings(&app, &id2).await;
    assert_eq!(w2.len(), 1);
    assert_eq!(w2[0].attributes["threshold_secs"], "3600");
    // Past the expiry: no warnings (terminal states are covered by the store suite).
    assert_eq!(core.expiry_tick(extended + hour).await.unwrap(), 0);
}

#[tokio::test]
async fn a_poll_lagging_behind_the_live_callback_does_not_demote_it() {
    // The provider's status view never catches up on its own: only the callback says LIVE.
    let fake = Arc::new(
        InMemoryProvider::new(ProviderKind::Gupshup)
            .with_statuses(["PROVISIONING"])
            .with_poll_interval(Duration::from_millis(100)),
    );
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    let url = account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    wait_state(&app, &id, pb::OnboardingState::Provisioning).await;
    let key = app.running().store.onboarding_unscoped(&id).await.unwrap().unwrap().external_key.unwrap();
    let (s, _) = post(&url, fake.render_callback_at("ev-live", &key, "LIVE", now_ms())).await;
    assert_eq!(s, 200);
    wait_state(&app, &id, pb::OnboardingState::Live).await;
    // The next poll still reads PROVISIONING: the step finishes, the state stays LIVE, and
    // polling stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let steps = app.running().store.steps(&id).await.unwrap();
        if steps.iter().all(|s| s.state.is_done()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "await_live never finished: {steps:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let polls = fake.polls();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.polls(), polls, "no polling once the pipeline is done");
    assert_eq!(get(&app, &id).await.state, pb::OnboardingState::Live as i32);
    let states: Vec<i32> = events(&app, &id).await.iter().map(|e| e.state).collect();
    let first_live = states.iter().position(|s| *s == pb::OnboardingState::Live as i32).unwrap();
    assert!(states[first_live..].iter().all(|s| *s == pb::OnboardingState::Live as i32), "{states:?}");
}

// ----- webhook batches -----

/// An app whose engine does not run: webhook events stay pending (unleased) until the test
/// applies them as one batch.
async fn batch_app(fake: &Arc<InMemoryProvider>) -> TestApp {
    spawn_with_providers(
        |s| {
            fast(s);
            s.engine.enabled = false;
        },
        Some(registry(ProviderKind::Gupshup, fake)),
    )
    .await
}

/// An onboarding awaiting the customer, whose callbacks carry `key`.
async fn keyed(app: &TestApp, account: &str, key: &str) -> OnboardingId {
    let id = app.insert_onboarding(account, "batch").await;
    app.link(&id, wa_onboard::domain::OnboardingState::AwaitingCustomer, key).await;
    id
}

/// A batch app, the webhook URL of its account and two onboardings awaiting the customer
/// (callback keys `key-a` and `key-b`).
async fn two_keyed(fake: &Arc<InMemoryProvider>) -> (TestApp, String, OnboardingId, OnboardingId) {
    let app = batch_app(fake).await;
    let url = account(&app, "acme").await;
    let (a, b) = (keyed(&app, "acme", "key-a").await, keyed(&app, "acme", "key-b").await);
    (app, url, a, b)
}

/// Every pending webhook event, claimed for the test's own worker.
async fn claim_all(app: &TestApp) -> Vec<Handed> {
    let store = &app.running().store;
    store
        .claim_webhook_events("test-worker", now_ms(), Duration::from_secs(60), 100)
        .await
        .unwrap()
        .into_iter()
        .map(Handed::claimed)
        .collect()
}

/// (kind, state, stale?) of the events after the first two (created, linked).
async fn callback_events(app: &TestApp, id: &OnboardingId) -> Vec<(String, i32, bool)> {
    events(app, id)
        .await
        .into_iter()
        .skip(2)
        .map(|e| (e.r#type.clone(), e.state, e.attributes.get("stale").is_some_and(|v| v == "true")))
        .collect()
}

#[tokio::test]
async fn one_batch_chains_callbacks_of_an_onboarding_and_never_applies_one_twice() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let (app, url, a, b) = two_keyed(&fake).await;
    // For a: a newer event, a duplicate delivery, then one older than the newest (stale).
    post_in_order(
        &url,
        &fake,
        &[
            ("a-1", "key-a", "PROVISIONING", 1000),
            ("a-2", "key-a", "LIVE", 3000),
            ("a-2", "key-a", "LIVE", 3000),
            ("b-1", "key-b", "LIVE", 1000),
            ("a-3", "key-a", "REVIEW", 2000),
            ("x-1", "key-nobody", "LIVE", 1000),
        ],
    )
    .await;
    let mut batch = claim_all(&app).await;
    assert_eq!(batch.len(), 5, "the duplicate delivery was not stored");
    // The same row twice in a batch (handed over, then claimed after its lease lapsed).
    batch.push(batch[0].clone());
    let report = app.running().core.apply_webhooks(batch.clone()).await;
    assert_eq!((report.applied, report.finished, report.conflicts, report.deferred), (4, 1, 0, 0), "{report:?}");
    let (live, prov) = (pb::OnboardingState::Live as i32, pb::OnboardingState::Provisioning as i32);
    assert_eq!(
        callback_events(&app, &a).await,
        vec![
            ("state_changed".into(), prov, false),
            ("state_changed".into(), live, false),
            ("callback".into(), live, true)
        ]
    );
    assert_eq!(callback_events(&app, &b).await, vec![("state_changed".into(), live, false)]);
    let store = &app.running().store;
    for ev in &batch {
        let status = store.webhook_event(&ev.record.id).await.unwrap().unwrap().status;
        assert_ne!(status, wa_onboard::store::WebhookStatus::Pending);
    }

    // Redelivered to a worker whose lease lapsed meanwhile: nothing is applied again.
    let again = app.running().core.apply_webhooks(batch).await;
    assert_eq!((again.applied, again.already_processed, again.deferred), (0, 4, 0), "{again:?}");
    assert_eq!(callback_events(&app, &a).await.len(), 3);
    assert_eq!(callback_events(&app, &b).await.len(), 1);
}

/// Posts callbacks `(event id, resource key, status, provider time)` one after another, each
/// answered 200. Claims order by arrival time, then id: a distinct millisecond between two
/// posts keeps the posting order.
async fn post_in_order(url: &str, fake: &InMemoryProvider, callbacks: &[(&str, &str, &str, i64)]) {
    for &(ev, key, status, at) in callbacks {
        assert_eq!(post(url, fake.render_callback_at(ev, key, status, at)).await.0, 200);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[tokio::test]
async fn a_conflict_inside_a_batch_is_planned_again_on_the_fresh_row_in_order() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let (app, url, a, b) = two_keyed(&fake).await;
    post_in_order(
        &url,
        &fake,
        &[("a-1", "key-a", "PROVISIONING", 1000), ("b-1", "key-b", "LIVE", 1000), ("a-2", "key-a", "LIVE", 2000)],
    )
    .await;
    let core = &app.running().core;
    let plan = core.plan_webhooks(claim_all(&app).await).await;
    assert_eq!(plan.changes(), 3);
    // Another writer (an RPC, a step) moves a between planning and writing.
    app.change_state(&a, wa_onboard::domain::OnboardingState::Provisioning, "moved-elsewhere").await;
    let (report, retry) = core.commit_webhooks(plan).await;
    assert_eq!((report.applied, report.conflicts), (1, 2), "{report:?}");
    let keys: Vec<&str> = retry.iter().map(|h| h.record.dedupe_key.as_str()).collect();
    assert!(keys[0].contains("a-1") && keys[1].contains("a-2"), "in their order: {keys:?}");
    let report = core.apply_webhooks(retry).await;
    assert_eq!((report.applied, report.conflicts), (2, 0), "{report:?}");
    // Planned on the moved row: the first callback finds PROVISIONING already there.
    let (live, prov) = (pb::OnboardingState::Live as i32, pb::OnboardingState::Provisioning as i32);
    assert_eq!(
        callback_events(&app, &a).await,
        vec![
            ("state_changed".into(), prov, false),
            ("callback".into(), prov, false),
            ("state_changed".into(), live, false)
        ]
    );
    assert_eq!(callback_events(&app, &b).await, vec![("state_changed".into(), live, false)]);
}

#[tokio::test]
async fn events_handed_to_an_engine_that_died_are_claimed_once_their_lease_lapses() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let app = batch_app(&fake).await;
    let url = account(&app, "acme").await;
    let a = keyed(&app, "acme", "key-a").await;
    // A replica with an engine takes the webhook: stored leased to it, queued in its memory.
    let mut settings = app.running().core.settings().clone();
    settings.engine.enabled = true;
    settings.engine.lease_secs = 1;
    let dead = app.running().core.other_replica(settings);
    let secret = url.rsplit('/').next().unwrap();
    let body = fake.render_callback_at("a-1", "key-a", "LIVE", 1000);
    let acme = app.account_key("acme").await;
    let intake = dead.ingest_webhook("gupshup", acme.as_str(), secret, &body).await.unwrap();
    assert_eq!(intake.accepted, 1);
    assert_eq!(dead.handed_over(), 1);
    // It dies before applying: the queue is gone, the row is pending under its lease.
    drop(dead);
    let live = &app.running().core;
    assert_eq!(live.webhook_tick().await.unwrap(), 0, "still leased to the dead replica");
    assert!(callback_events(&app, &a).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(live.webhook_tick().await.unwrap(), 1, "claimed once the lease lapsed");
    assert_eq!(
        callback_events(&app, &a).await,
        vec![("state_changed".into(), pb::OnboardingState::Live as i32, false)]
    );
    assert_eq!(live.webhook_tick().await.unwrap(), 0, "applied once");
}

/// `GetOnboarding` is answered from pre-encoded bytes cached beside the row they encode: it
/// answers what converting the row does (ListOnboardings converts it on every call), and a
/// change of the row is answered at once, however often the old answer was served before.
#[tokio::test]
async fn get_onboarding_answers_the_current_row_from_its_cached_bytes() {
    let fake = Arc::new(InMemoryProvider::new(ProviderKind::Gupshup));
    let app = app_with(ProviderKind::Gupshup, &fake).await;
    account(&app, "acme").await;
    let id = create(&app, "acme", "").await;
    let listed = |app: &TestApp| {
        let req = app.req(pb::ListOnboardingsRequest { reference: "crm-42".into(), ..Default::default() });
        let client = app.onboardings();
        async move {
            let mut page = client.clone().list_onboardings(req).await.unwrap().into_inner().onboardings;
            assert_eq!(page.len(), 1);
            page.remove(0)
        }
    };
    let live = wait_state(&app, &id, pb::OnboardingState::Live).await;
    for _ in 0..3 {
        let got = get(&app, &id).await;
        assert_eq!(got, live, "cached answers stay equal");
        assert_eq!(got, listed(&app).await, "and equal to a fresh conversion");
    }
    // Written through the store: the next read answers the new row, not the cached bytes.
    let mut change = wa_onboard::store::OnboardingChange::new(
        &id,
        wa_onboard::store::NewEvent::new(wa_onboard::domain::EventKind::Callback, "changed"),
        wa_onboard::domain::now_ms(),
    );
    change.state_reason = Some("changed after caching".into());
    app.running().store.apply_change(&change).await.unwrap();
    let changed = get(&app, &id).await;
    assert_ne!(changed, live);
    assert_eq!(changed, listed(&app).await);
}
