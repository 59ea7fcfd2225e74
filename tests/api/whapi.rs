//! Whapi.Cloud end to end: the built-in adapter against the simulator, over real gRPC and
//! the real webhook ingress. In sandbox mode (`accounts/sandbox-whapi`) the simulator plays
//! the customer: a QR or pairing code is "used" a few seconds after it was fetched.

use std::time::Duration;

use tonic::Code;
use wa_onboard::grpc::pb;
use wa_onboard::sim::common::Fault;
use wa_onboard::sim::whapi::{WhapiSim, WhapiSimConfig, WhapiSimServers};

use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;
const SANDBOX_ACCOUNT: &str = "accounts/sandbox-whapi";
/// The phone the sandbox customer links (`WhapiSimConfig::sandbox_phone`).
const SANDBOX_PHONE: &str = "+15550001234";

fn fast_engine(s: &mut wa_onboard::config::Settings) {
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
}

async fn sandbox_app() -> TestApp {
    spawn_with(|s| {
        s.sandbox.enabled = true;
        fast_engine(s);
    })
    .await
}

fn sim(app: &TestApp) -> &WhapiSim {
    &app.running().sandbox.as_ref().expect("sandbox mode").whapi
}

fn channels(app: &TestApp) -> pb::channel_service_client::ChannelServiceClient<tonic::transport::Channel> {
    pb::channel_service_client::ChannelServiceClient::new(app.channel.clone())
}

fn tokens(app: &TestApp) -> pb::token_service_client::TokenServiceClient<tonic::transport::Channel> {
    pb::token_service_client::TokenServiceClient::new(app.channel.clone())
}

fn channel_request(
    account: &str,
    name: &str,
    go_live: bool,
    extend_days: i32,
    rid: &str,
) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: account.into(),
        reference: format!("crm-{rid}"),
        request_id: rid.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Whapi(pb::WhapiChannelRequest {
            channel_name: name.into(),
            project_id: String::new(),
            go_live,
            extend_days,
        })),
    }
}

async fn create(app: &TestApp, req: pb::CreateOnboardingRequest) -> String {
    app.onboardings().create_onboarding(app.req(req)).await.expect("create onboarding").into_inner().name
}

async fn get(app: &TestApp, name: &str) -> pb::Onboarding {
    app.onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.into() }))
        .await
        .expect("get onboarding")
        .into_inner()
}

fn whapi_details(o: &pb::Onboarding) -> pb::WhapiOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Whapi(w)) => w.clone(),
        other => panic!("no Whapi details: {other:?}"),
    }
}

/// Polls until the onboarding is in `want` (generous deadline for a loaded CI box).
async fn wait_state(app: &TestApp, name: &str, want: pb::OnboardingState, within: Duration) -> pb::Onboarding {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let o = get(app, name).await;
        if o.state == want as i32 {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not {want:?} within {within:?}: state {:?} ({}), provider status {:?}",
            pb::OnboardingState::try_from(o.state),
            o.state_reason,
            o.provider_status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `f` is true.
async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn channel_id(o: &pb::Onboarding) -> String {
    let w = whapi_details(o);
    assert!(!w.channel_id.is_empty(), "no channel yet: {o:?}");
    assert_eq!(w.channel, format!("channels/{}", w.channel_id));
    w.channel_id
}

fn extend_req(channel: &str, days: i32, rid: &str) -> pb::ExtendChannelRequest {
    pb::ExtendChannelRequest {
        name: format!("channels/{channel}"),
        days,
        comment: "renewal".into(),
        request_id: rid.into(),
    }
}

#[tokio::test]
async fn sandbox_channel_goes_live_extends_once_and_delete_refunds_what_the_balance_shows() {
    let app = sandbox_app().await;
    let sim = sim(&app);
    let name = create(&app, channel_request(SANDBOX_ACCOUNT, "Acme Support", true, 3, "w-main-1")).await;
    let o = wait_state(&app, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);
    let trial_till = sim.channel(&id).expect("channel at the sim").active_till;
    // activeTill is the onboarding's expiry.
    assert_eq!(ms(&o.expire_time), trial_till);
    assert_eq!(ms(&whapi_details(&o).active_till), trial_till);

    // The QR: a real PNG plus the string it encodes, with an expiry.
    let code = channels(&app)
        .get_connect_code(app.req(pb::GetConnectCodeRequest {
            name: format!("channels/{id}"),
            method: Some(pb::get_connect_code_request::Method::Qr(pb::QrCodeRequest { size: 0 })),
        }))
        .await
        .expect("QR")
        .into_inner();
    let Some(pb::connect_code::Code::Qr(qr)) = code.code else { panic!("not a QR: {code:?}") };
    assert!(qr.png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let info = png::Decoder::new(std::io::Cursor::new(qr.png.clone())).read_info().expect("PNG decodes").info().clone();
    assert!(info.width >= 21 && info.width == info.height, "QR image {}x{}", info.width, info.height);
    assert!(qr.raw.starts_with("2@") && qr.raw.len() > 20, "raw QR string {:?}", qr.raw);
    assert!(ms(&code.expire_time) > wa_onboard::domain::now_ms(), "expiry not in the future");

    // The sandbox customer scans; go_live switches the mode (waiting out the restart) and
    // adds the 3 requested days once.
    let o = wait_state(&app, &name, pb::OnboardingState::Live, Duration::from_secs(150)).await;
    let w = whapi_details(&o);
    assert_eq!(w.mode, pb::ChannelMode::Live as i32);
    assert_eq!(w.phone, SANDBOX_PHONE);
    assert_eq!(w.connect_codes_issued, 1);
    let ch = sim.channel(&id).expect("channel");
    assert_eq!(ch.mode, "live");
    assert_eq!(ch.health_text, "AUTH");
    assert_eq!(ch.extended_days, 3);
    assert_eq!(ch.active_till, trial_till + 3 * DAY_MS);
    assert_eq!(sim.billing(&id).expect("billing").len(), 1);
    assert_eq!(ms(&o.expire_time), ch.active_till, "expire_time follows activeTill");

    // ExtendChannel, retried with the same request id: extends once.
    let first = channels(&app).extend_channel(app.req(extend_req(&id, 2, "ext-1"))).await.expect("extend").into_inner();
    assert_eq!((first.days_added, first.already_applied), (2, false));
    let again = channels(&app).extend_channel(app.req(extend_req(&id, 2, "ext-1"))).await.expect("retry").into_inner();
    assert_eq!((again.days_added, again.already_applied), (0, true));
    let billing = sim.billing(&id).expect("billing");
    assert_eq!(billing.len(), 2, "{billing:?}");
    assert!(billing[1].comment.contains("ext-1"), "request id in the comment: {billing:?}");
    let ch = sim.channel(&id).expect("channel");
    assert_eq!(ch.active_till, trial_till + 5 * DAY_MS);
    assert_eq!(ms(&again.channel.as_ref().expect("channel").active_till), ch.active_till);
    let err = channels(&app).extend_channel(app.req(extend_req(&id, 4, "ext-1"))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(sim.billing(&id).expect("billing").len(), 2);
    // The onboarding's expiry moved with the extension.
    assert_eq!(ms(&get(&app, &name).await.expire_time), ch.active_till);

    // Delete: the refund is what the balance gains, and GetPartnerBalance agrees.
    let now = sim.core().clock.now_ms();
    let expected = ((ch.active_till - now) / DAY_MS).min(ch.extended_days);
    let before = sim.balance();
    let deleted = channels(&app)
        .delete_channel(
            app.req(pb::DeleteChannelRequest { name: format!("channels/{id}"), request_id: "del-1".into() }),
        )
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(i64::from(deleted.refunded_days), expected);
    assert_eq!(sim.balance(), before + expected);
    assert!(sim.channel(&id).is_none());
    let balance = channels(&app)
        .get_partner_balance(app.req(pb::GetPartnerBalanceRequest { account: SANDBOX_ACCOUNT.into() }))
        .await
        .expect("balance")
        .into_inner();
    assert_eq!(i64::from(balance.days), sim.balance());
    assert_eq!(get(&app, &name).await.state, pb::OnboardingState::Cancelled as i32);
    assert_eq!(sim.core().counters().rate_limit_violations, 0);
}

#[tokio::test]
async fn sandbox_channel_waits_for_a_code_then_pairs_by_code_and_a_logout_webhook_moves_it_back() {
    let app = sandbox_app().await;
    let sim = sim(&app);
    let name = create(&app, channel_request(SANDBOX_ACCOUNT, "Pairing", false, 0, "w-pair-1")).await;
    let o = wait_state(&app, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);

    // The engine keeps reading health, but nobody fetched a code: nothing gets scanned.
    let health_calls = || sim.core().counters().calls.get("GET /health").copied().unwrap_or(0);
    let seen = health_calls();
    wait_until("the engine polls health", Duration::from_secs(60), || health_calls() >= seen + 3).await;
    let ch = sim.channel(&id).expect("channel");
    assert_eq!(ch.pending_link_at, None, "a scan was scheduled without a code being fetched");
    assert_ne!(ch.health_text, "AUTH");
    let o = get(&app, &name).await;
    assert_eq!(o.state, pb::OnboardingState::AwaitingCustomer as i32);
    assert_eq!(whapi_details(&o).connect_codes_issued, 0);

    // A pairing code for a phone.
    let code = channels(&app)
        .get_connect_code(app.req(pb::GetConnectCodeRequest {
            name: format!("channels/{id}"),
            method: Some(pb::get_connect_code_request::Method::PairingCode(pb::PairingCodeRequest {
                phone: SANDBOX_PHONE.into(),
            })),
        }))
        .await
        .expect("pairing code")
        .into_inner();
    let Some(pb::connect_code::Code::PairingCode(pc)) = code.code else { panic!("not a pairing code: {code:?}") };
    assert!(!pc.code.is_empty());
    assert_eq!(pc.phone, SANDBOX_PHONE);
    assert!(ms(&code.expire_time) > wa_onboard::domain::now_ms());

    let o = wait_state(&app, &name, pb::OnboardingState::Live, Duration::from_secs(60)).await;
    let w = whapi_details(&o);
    assert_eq!(w.phone, SANDBOX_PHONE);
    assert_eq!(w.connect_codes_issued, 1);
    assert_eq!(w.mode, pb::ChannelMode::Trial as i32, "no go_live: stays trial");

    // The customer unlinks the phone: Whapi posts a `users` delete webhook to our ingress.
    let token = tokens(&app)
        .get_app_token(app.req(pb::GetAppTokenRequest { name: name.clone() }))
        .await
        .expect("channel token")
        .into_inner();
    assert_eq!(token.resource_id, id);
    assert_eq!(token.token, sim.channel(&id).expect("channel").token);
    let url = format!("{}/users/logout", token.api_url.trim_end_matches('/'));
    let resp = reqwest::Client::new().post(url).bearer_auth(&token.token).send().await.expect("gate logout");
    assert!(resp.status().is_success(), "logout: {}", resp.status());
    let o = wait_state(&app, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    // The reason is the webhook's (a later `channel` QR event may already be the status).
    assert!(o.state_reason.contains("logged out") && o.state_reason.contains("LOGOUT"), "reason: {}", o.state_reason);
    let steps = pipelines(&app, &name).await;
    // Reopened and due at once: the engine may already be running it.
    let reopened = [pb::StepState::Waiting as i32, pb::StepState::Running as i32];
    assert!(steps.iter().any(|s| s.0 == "await_connection" && reopened.contains(&s.1)), "{steps:?}");

    // The customer links the phone again: the reopened step notices, and it is LIVE again.
    channels(&app)
        .get_connect_code(app.req(pb::GetConnectCodeRequest {
            name: format!("channels/{id}"),
            method: Some(pb::get_connect_code_request::Method::Qr(pb::QrCodeRequest { size: 0 })),
        }))
        .await
        .expect("a new QR");
    let o = wait_state(&app, &name, pb::OnboardingState::Live, Duration::from_secs(60)).await;
    assert_eq!(whapi_details(&o).connect_codes_issued, 2);
}

async fn pipelines(app: &TestApp, name: &str) -> Vec<(String, i32)> {
    app.pipeline(name).await.steps.into_iter().map(|s| (s.name, s.state)).collect()
}

#[tokio::test]
async fn another_tenant_cannot_read_the_channel_or_its_token() {
    let app = sandbox_app().await;
    let name = create(&app, channel_request(SANDBOX_ACCOUNT, "Private", false, 0, "w-tenant-1")).await;
    let o = wait_state(&app, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);
    // The owner can.
    tokens(&app).get_app_token(app.req(pb::GetAppTokenRequest { name: name.clone() })).await.expect("owner's token");
    channels(&app)
        .get_channel(app.req(pb::GetChannelRequest { name: format!("channels/{id}") }))
        .await
        .expect("owner's channel");

    let other = app.other_tenant("intruder").await;
    let err = tokens(&app)
        .get_app_token(with_key(pb::GetAppTokenRequest { name: name.clone() }, other.expose()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = channels(&app)
        .get_channel(with_key(pb::GetChannelRequest { name: format!("channels/{id}") }, other.expose()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = channels(&app).extend_channel(with_key(extend_req(&id, 1, "steal-1"), other.expose())).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(sim(&app).billing(&id).expect("billing").is_empty());
}

/// The creation window, shortened on both sides (the adapter's limiter and the simulator's
/// window) so the test can wait it out; the limit is the documented 20.
const CREATE_WINDOW: Duration = Duration::from_secs(15);

fn registry_with_create_window(window: Duration) -> wa_onboard::providers::ProviderRegistry {
    use wa_onboard::providers::builtin::{AdapterDeps, registry};
    use wa_onboard::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
    use wa_onboard::providers::whapi::{WhapiConfig, WhapiProvider};
    let deps = AdapterDeps {
        http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(5), total: Duration::from_secs(30) })
            .expect("http client"),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy::default(),
        poll_interval: Duration::from_millis(200),
    };
    let mut r = registry(&deps);
    let config = WhapiConfig { create_window: window, ..WhapiConfig::default() };
    r.register(
        wa_onboard::domain::ProviderKind::Whapi,
        std::sync::Arc::new(move |_ctx: &wa_onboard::providers::CallContext| {
            let p: std::sync::Arc<dyn wa_onboard::providers::Provider> =
                std::sync::Arc::new(WhapiProvider::new(&deps).with_config(config.clone()));
            Ok(p)
        }),
    );
    r
}

#[tokio::test]
async fn the_21st_creation_within_the_window_is_queued_and_still_completes() {
    let app = spawn_with_providers(
        |s| {
            s.sandbox.enabled = true;
            s.sandbox.sims.whapi.create_window_secs = CREATE_WINDOW.as_secs();
            fast_engine(s);
        },
        Some(registry_with_create_window(CREATE_WINDOW)),
    )
    .await;
    let sim = sim(&app);
    assert_eq!(sim.config().create_limit, 20);
    let mut names = Vec::new();
    for i in 0..21 {
        names.push(
            create(&app, channel_request(SANDBOX_ACCOUNT, &format!("Shop {i}"), false, 0, &format!("w-burst-{i}")))
                .await,
        );
    }
    for name in &names {
        wait_state(&app, name, pb::OnboardingState::AwaitingCustomer, CREATE_WINDOW * 4 + Duration::from_secs(60))
            .await;
    }
    let c = sim.core().counters();
    assert_eq!(c.rate_limit_violations, 0, "the simulator answered 429: {:?}", c.violations_by_limit);
    assert_eq!(sim.channels().len(), 21);
    // Queued, not failed and retried: every create step ran once, without an error.
    for name in &names {
        let p = app.pipeline(&format!("{name}/pipeline")).await;
        let step = p.steps.iter().find(|s| s.name == "create_channel").expect("create_channel step");
        assert!(step.last_error.is_empty(), "{name}: {step:?}");
    }
}

// ----- ExtendChannel idempotency survives restarts and other replicas -----

/// A Whapi simulator outside the app (it outlives app restarts), playing no customer.
async fn standalone_sim() -> (WhapiSim, WhapiSimServers) {
    let config = WhapiSimConfig { sandbox: false, ..WhapiSimConfig::default() };
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    WhapiSim::spawn(config, any, any).await.expect("simulator starts")
}

fn custom_endpoint_settings(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = false;
    s.providers.allow_custom_endpoints = true;
    // The lost answer below must time out quickly.
    s.providers.http_timeout_secs = 2;
    fast_engine(s);
}

async fn whapi_account(app: &TestApp, sim: &WhapiSim, servers: &WhapiSimServers) {
    let cfg = sim.config();
    app.accounts()
        .create_account(app.req(pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: pb::Provider::Whapi as i32,
                display_name: "Whapi partner".into(),
                credentials: Some(pb::AccountCredentials {
                    credentials: Some(pb::account_credentials::Credentials::Whapi(pb::WhapiCredentials {
                        partner_token: cfg.partner_token.clone(),
                    })),
                }),
                options: Some(pb::AccountOptions {
                    options: Some(pb::account_options::Options::Whapi(pb::WhapiOptions {
                        project_id: cfg.projects[0].id.clone(),
                        partner_name: cfg.partner_name.clone(),
                    })),
                    endpoint: servers.manager.base_url(),
                }),
                ..Default::default()
            }),
            account_id: "whapi".into(),
            request_id: String::new(),
        }))
        .await
        .expect("account");
}

/// Extends with `rid`, but the simulator applies the extension and the answer never arrives.
async fn extend_with_lost_answer(app: &TestApp, sim: &WhapiSim, channel: &str, days: i32, rid: &str) {
    sim.core().with_knobs(|k| k.timeout_hold_ms = 6_000);
    sim.core().fail_next(Some("POST /channels/{id}/extend"), 1, Fault::Timeout { after_effect: true });
    let err = channels(app).extend_channel(app.req(extend_req(channel, days, rid))).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal),
        "lost answer: {err:?}"
    );
    assert_eq!(sim.billing(channel).expect("billing").len(), 1, "the simulator applied it");
}

#[tokio::test]
async fn extend_retried_on_another_replica_after_a_lost_answer_extends_once() {
    let Some(url) = pg_schema().await else { return };
    let (sim, servers) = standalone_sim().await;
    // Replicas share the encryption key, as they would share a Kubernetes Secret.
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let a = spawn_with(|s| {
        custom_endpoint_settings(s);
        s.database.url = url.clone();
        s.security.encryption_key = key.clone();
    })
    .await;
    whapi_account(&a, &sim, &servers).await;
    let name = create(&a, channel_request("accounts/whapi", "Replicated", false, 0, "w-pg-1")).await;
    let o = wait_state(&a, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);
    let till = sim.channel(&id).expect("channel").active_till;

    // A second replica on the same database.
    let b = spawn_with(|s| {
        custom_endpoint_settings(s);
        s.database.url = url.clone();
        s.security.encryption_key = key.clone();
    })
    .await;
    let b_key = a.key.clone();

    extend_with_lost_answer(&a, &sim, &id, 2, "x-1").await;
    // B has never seen this request: only the stored intent tells it the extension happened.
    let retry = channels(&b)
        .extend_channel(with_key(extend_req(&id, 2, "x-1"), b_key.expose()))
        .await
        .expect("retry on B")
        .into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (0, true));
    assert_eq!(sim.billing(&id).expect("billing").len(), 1);
    assert_eq!(sim.channel(&id).expect("channel").active_till, till + 2 * DAY_MS);
    // And back on A.
    let retry = channels(&a).extend_channel(a.req(extend_req(&id, 2, "x-1"))).await.expect("retry on A").into_inner();
    assert!(retry.already_applied);

    // A clean extension on B, retried on A.
    let first = channels(&b)
        .extend_channel(with_key(extend_req(&id, 1, "x-2"), b_key.expose()))
        .await
        .expect("extend on B")
        .into_inner();
    assert_eq!((first.days_added, first.already_applied), (1, false));
    let retry = channels(&a).extend_channel(a.req(extend_req(&id, 1, "x-2"))).await.expect("retry on A").into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (0, true));
    assert_eq!(sim.billing(&id).expect("billing").len(), 2);
    assert_eq!(sim.channel(&id).expect("channel").active_till, till + 3 * DAY_MS);
    assert_eq!(ms(&get(&a, &name).await.expire_time), till + 3 * DAY_MS);

    let (mut a, mut b) = (a, b);
    b.shutdown().await;
    a.shutdown().await;
    drop_pg(&url).await;
}

#[tokio::test]
async fn extend_retried_on_another_replica_while_the_first_call_is_in_flight_is_refused() {
    use tonic_types::StatusExt;
    let Some(url) = pg_schema().await else { return };
    let (sim, servers) = standalone_sim().await;
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    // Long enough an HTTP timeout that the held answer below arrives (late) instead of failing.
    let settings = |s: &mut wa_onboard::config::Settings| {
        custom_endpoint_settings(s);
        s.providers.http_timeout_secs = 20;
        s.database.url = url.clone();
        s.security.encryption_key = key.clone();
    };
    let a = spawn_with(settings).await;
    whapi_account(&a, &sim, &servers).await;
    let name = create(&a, channel_request("accounts/whapi", "In flight", false, 0, "w-pg-2")).await;
    let o = wait_state(&a, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);
    let till = sim.channel(&id).expect("channel").active_till;
    let b = spawn_with(settings).await;
    let b_key = a.key.clone();

    // A's extension lands at the simulator, whose answer is then held for 8 s.
    sim.core().with_knobs(|k| k.timeout_hold_ms = 8_000);
    sim.core().fail_next(Some("POST /channels/{id}/extend"), 1, Fault::Timeout { after_effect: true });
    let first = tokio::spawn({
        let (mut client, req) = (channels(&a), a.req(extend_req(&id, 2, "f-1")));
        async move { client.extend_channel(req).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sim.billing(&id).map_or(0, |b| b.len()) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the extension never reached the simulator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // activeTill has moved at the provider but A has not recorded it: B must not extend again.
    let err = channels(&b)
        .extend_channel(with_key(extend_req(&id, 2, "f-1"), b_key.expose()))
        .await
        .expect_err("a retry while the first call is in flight");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("in progress"), "{err:?}");
    assert!(err.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "retry delay: {err:?}");
    let first = first.await.expect("task").expect("the first call succeeds once its answer arrives").into_inner();
    assert_eq!((first.days_added, first.already_applied), (2, false));
    let retry = channels(&b)
        .extend_channel(with_key(extend_req(&id, 2, "f-1"), b_key.expose()))
        .await
        .expect("retry on B after the first finished")
        .into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (0, true));
    assert_eq!(sim.billing(&id).expect("billing").len(), 1, "extended exactly once");
    assert_eq!(sim.channel(&id).expect("channel").active_till, till + 2 * DAY_MS);

    // A failed attempt releases the key at once: the retry checks and extends (no waiting out
    // the in-flight window).
    sim.core().fail_next(Some("POST /channels/{id}/extend"), 1, Fault::Status { status: 500 });
    let err = channels(&a).extend_channel(a.req(extend_req(&id, 1, "f-2"))).await.expect_err("a 500");
    assert_ne!(err.code(), Code::Ok);
    let retry = channels(&b)
        .extend_channel(with_key(extend_req(&id, 1, "f-2"), b_key.expose()))
        .await
        .expect("retry after a failure")
        .into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (1, false));
    assert_eq!(sim.channel(&id).expect("channel").active_till, till + 3 * DAY_MS);
    let kinds: Vec<String> = all_events(&a, &name).await.into_iter().map(|e| e.r#type).collect();
    assert!(kinds.iter().any(|k| k == "channel_extend_failed"), "{kinds:?}");

    let (mut a, mut b) = (a, b);
    b.shutdown().await;
    a.shutdown().await;
    drop_pg(&url).await;
}

#[tokio::test]
async fn extend_retried_after_a_restart_on_the_same_sqlite_file_extends_once() {
    let (sim, servers) = standalone_sim().await;
    let mut a = spawn_with(custom_endpoint_settings).await;
    whapi_account(&a, &sim, &servers).await;
    let name = create(&a, channel_request("accounts/whapi", "Restarted", false, 0, "w-sqlite-1")).await;
    let o = wait_state(&a, &name, pb::OnboardingState::AwaitingCustomer, Duration::from_secs(60)).await;
    let id = channel_id(&o);
    let till = sim.channel(&id).expect("channel").active_till;
    extend_with_lost_answer(&a, &sim, &id, 3, "r-1").await;
    a.shutdown().await;

    let data_dir = a._dir.path().to_path_buf();
    let b = spawn_with(|s| {
        custom_endpoint_settings(s);
        s.server.data_dir = data_dir;
    })
    .await;
    let retry = channels(&b).extend_channel(b.req(extend_req(&id, 3, "r-1"))).await.expect("retry").into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (0, true));
    assert_eq!(sim.billing(&id).expect("billing").len(), 1);
    assert_eq!(sim.channel(&id).expect("channel").active_till, till + 3 * DAY_MS);
    assert_eq!(ms(&get(&b, &name).await.expire_time), till + 3 * DAY_MS);
}
