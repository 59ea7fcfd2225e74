//! Hosted-link providers end to end (issue 5): the real Exotel and 99digital adapters against
//! their in-process simulators (sandbox mode), over real gRPC, the real engine and the real
//! webhook ingress. The simulators' clocks, counters and control calls stand in for the
//! business owner and for time passing.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_types::StatusExt;
use wa_onboard::config::Settings;
use wa_onboard::grpc::pb;
use wa_onboard::sim::common::SimCore;
use wa_onboard::sim::digital99::Digital99Sim;
use wa_onboard::sim::exotel::{ExotelRegion as SimRegion, ExotelSim, TokenStatus};

use crate::helpers::*;

const EXOTEL_MINT: &str = "POST /v2/accounts/{sid}/isv";
const D99_LOGIN: &str = "POST /api/settings/accessToken";
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Generous bound for the engine to get somewhere on a loaded 2-core box (not a timing
/// assertion: only a guard against hanging).
const PATIENCE: Duration = Duration::from_secs(60);

// ----- setup -----

fn fast(s: &mut Settings) {
    s.sandbox.enabled = true;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
}

/// Sandbox with the simulated business owners held back: nobody completes an Exotel link
/// and no 99digital account finishes unless the test says so.
async fn quiet_app() -> TestApp {
    spawn_with(|s| {
        fast(s);
        s.sandbox.sims.exotel.sandbox = false;
        s.sandbox.sims.digital99.finish_delay_ms = DAY.as_millis() as u64;
    })
    .await
}

/// Sandbox with the simulators' defaults: they play the business owner after a delay.
async fn sandbox_app() -> TestApp {
    spawn_with(fast).await
}

fn exotel_sim(app: &TestApp) -> &ExotelSim {
    &app.running().sandbox.as_ref().expect("sandbox").exotel
}

fn d99_sim(app: &TestApp) -> &Digital99Sim {
    &app.running().sandbox.as_ref().expect("sandbox").digital99
}

fn calls(core: &SimCore, endpoint: &str) -> u64 {
    core.counters().calls.get(endpoint).copied().unwrap_or(0)
}

fn created(core: &SimCore, kind: &str) -> u64 {
    core.counters().created.get(kind).copied().unwrap_or(0)
}

fn tokens(app: &TestApp) -> pb::token_service_client::TokenServiceClient<Channel> {
    pb::token_service_client::TokenServiceClient::new(app.channel.clone())
}

async fn get(app: &TestApp, name: &str) -> pb::Onboarding {
    app.onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.into() }))
        .await
        .expect("get onboarding")
        .into_inner()
}

fn state_of(o: &pb::Onboarding) -> pb::OnboardingState {
    pb::OnboardingState::try_from(o.state).unwrap_or(pb::OnboardingState::Unspecified)
}

fn raw_status(o: &pb::Onboarding) -> String {
    o.provider_status.as_ref().map(|p| p.code.clone()).unwrap_or_default()
}

/// Polls `GetOnboarding` until `pred` holds; panics with the last state after [`PATIENCE`].
async fn wait_until(app: &TestApp, name: &str, what: &str, pred: impl Fn(&pb::Onboarding) -> bool) -> pb::Onboarding {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let o = get(app, name).await;
        if pred(&o) {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not {what} in time; last state {:?} ({}), provider status {:?}",
            state_of(&o),
            o.state_reason,
            raw_status(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(app: &TestApp, name: &str, state: pb::OnboardingState) -> pb::Onboarding {
    wait_until(app, name, state.as_str_name(), |o| state_of(o) == state).await
}

fn provider_code(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().and_then(|i| i.metadata.get("provider_code").cloned())
}

// ----- Exotel -----

fn exotel(o: &pb::Onboarding) -> &pb::ExotelOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Exotel(e)) => e,
        other => panic!("{}: expected Exotel details, got {other:?}", o.name),
    }
}

fn links_request(account: &str, count: i32) -> pb::CreateOnboardingLinksRequest {
    pb::CreateOnboardingLinksRequest {
        account: format!("accounts/{account}"),
        count,
        reference: "crm-exo".into(),
        request_id: String::new(),
    }
}

fn exotel_link_request(account: &str, reference: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: reference.into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Exotel(pb::ExotelLinkRequest {})),
    }
}

fn exotel_account(id: &str, sid: &str, api_token: &str, region: pb::ExotelRegion) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account: Some(pb::Account {
            provider: pb::Provider::Exotel as i32,
            display_name: "Acme Exotel".into(),
            credentials: Some(pb::AccountCredentials {
                credentials: Some(pb::account_credentials::Credentials::Exotel(pb::ExotelCredentials {
                    account_sid: sid.into(),
                    api_key: "sandbox-key".into(),
                    api_token: api_token.into(),
                })),
            }),
            options: Some(pb::AccountOptions {
                options: Some(pb::account_options::Options::Exotel(pb::ExotelOptions { region: region as i32 })),
                endpoint: String::new(),
            }),
            sandbox: true,
            ..Default::default()
        }),
        account_id: id.into(),
        request_id: String::new(),
    }
}

async fn validate(app: &TestApp, account: &str, token: &str) -> pb::ValidateOnboardingTokenResponse {
    tokens(app)
        .validate_onboarding_token(
            app.req(pb::ValidateOnboardingTokenRequest { account: format!("accounts/{account}"), token: token.into() }),
        )
        .await
        .expect("validate token")
        .into_inner()
}

#[tokio::test]
async fn exotel_batch_of_50_links_awaits_customers_for_24h_with_customers_remaining() {
    let app = quiet_app().await;
    let sim = exotel_sim(&app);
    let before = wa_onboard::domain::now_ms();
    let resp = app
        .onboardings()
        .create_onboarding_links(app.req(links_request("sandbox-exotel", 50)))
        .await
        .expect("50 links")
        .into_inner();
    let after = wa_onboard::domain::now_ms();
    assert_eq!(resp.onboardings.len(), 50);
    assert!(!resp.batch_id.is_empty());
    assert_eq!(calls(sim.core(), EXOTEL_MINT), 50, "one documented Exotel call per link (docs/providers.md §2.2)");
    assert_eq!(created(sim.core(), "links"), 50);
    let mut seen_tokens = std::collections::HashSet::new();
    for o in &resp.onboardings {
        assert_eq!(state_of(o), pb::OnboardingState::AwaitingCustomer, "{}", o.name);
        assert_eq!(o.reference, "crm-exo");
        let expire = o.expire_time.as_ref().expect("expire_time").seconds * 1000;
        let day = DAY.as_millis() as i64;
        assert!(expire >= before + day - 1000 && expire <= after + day + 1000, "expire_time is not +24 h");
        let e = exotel(o);
        // The minted-link path carries the same public details as a single link.
        assert_eq!(e.customers_remaining, 5, "{}: customers_remaining missing on a batch link", o.name);
        assert_eq!(e.token_status, "VALID");
        assert_eq!(e.batch_id, resp.batch_id);
        assert_eq!(e.link_expire_time, o.expire_time);
        assert!(e.onboarding_url.ends_with(&format!("/{}", e.token)), "{}", e.onboarding_url);
        let v = sim.token(&e.token).expect("every link is known to Exotel");
        assert_eq!(v.onboarding_url, e.onboarding_url);
        assert!(seen_tokens.insert(e.token.clone()), "token handed out twice");
    }
    // Stored, not just answered: the listing and the token validation agree.
    let list = app
        .onboardings()
        .list_onboardings(app.req(pb::ListOnboardingsRequest {
            page_size: 100,
            account: "accounts/sandbox-exotel".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.onboardings.len(), 50);
    let first = &resp.onboardings[0];
    let v = validate(&app, "sandbox-exotel", &exotel(first).token).await;
    assert_eq!(v.status, pb::OnboardingTokenStatus::Valid as i32);
    assert_eq!(v.raw_status, "VALID");
    assert_eq!(v.customers_remaining, 5);
    assert_eq!(v.onboarding, first.name);
    assert_eq!(v.expire_time, first.expire_time);
}

#[tokio::test]
async fn exotel_51_links_are_refused_before_anything_is_stored_or_minted() {
    let app = quiet_app().await;
    for count in [51, 0] {
        let err = app
            .onboardings()
            .create_onboarding_links(app.req(links_request("sandbox-exotel", count)))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{count}: {err:?}");
        assert_eq!(violations(&err), vec!["count".to_string()], "{count}");
    }
    let sim = exotel_sim(&app);
    assert_eq!(calls(sim.core(), EXOTEL_MINT), 0, "nothing reached Exotel");
    assert_eq!(created(sim.core(), "links"), 0);
    assert!(sim.tokens().is_empty());
    let list =
        app.onboardings().list_onboardings(app.req(pb::ListOnboardingsRequest::default())).await.unwrap().into_inner();
    assert!(list.onboardings.is_empty(), "nothing stored");
}

#[tokio::test]
async fn exotel_link_used_by_a_customer_goes_live_by_polling_and_validate_reports_it() {
    let app = quiet_app().await;
    let resp = app
        .onboardings()
        .create_onboarding_links(app.req(links_request("sandbox-exotel", 2)))
        .await
        .unwrap()
        .into_inner();
    let (used, idle) = (&resp.onboardings[0], &resp.onboardings[1]);
    let token = exotel(used).token.clone();
    // The engine polls the token (Exotel sends no callback).
    wait_until(&app, &used.name, "polled", |_| {
        exotel_sim(&app).token(&token).is_some_and(|t| t.first_validated_ms.is_some())
    })
    .await;
    exotel_sim(&app).complete_customer(&token).expect("the customer completes with the link");
    assert_eq!(exotel_sim(&app).token(&token).unwrap().status, TokenStatus::Used);

    let live = wait_state(&app, &used.name, pb::OnboardingState::Live).await;
    assert_eq!(raw_status(&live), "USED");
    assert_eq!(exotel(&live).token_status, "USED");
    assert_eq!(exotel(&live).customers_remaining, 4);
    // Issue 17 point 3: LIVE is "link used"; the capacity a caller can count on is 0.
    assert_eq!(exotel(&live).live_meaning, "link_used");
    assert_eq!(exotel(&live).customers_remaining_min, 0);
    assert_eq!(exotel(&live).max_customers_per_link, 5);
    assert!(exotel(&live).used_meaning.starts_with("at_least_one_completion"), "{:?}", exotel(&live).used_meaning);
    assert!(live.state_reason.contains("does not say which business"), "{:?}", live.state_reason);
    let v = validate(&app, "sandbox-exotel", &token).await;
    assert_eq!(v.status, pb::OnboardingTokenStatus::Used as i32);
    assert_eq!(v.raw_status, "USED");
    assert_eq!(v.customers_remaining, 4);
    assert_eq!(v.onboarding, used.name);
    // The other link of the batch is untouched.
    let other = get(&app, &idle.name).await;
    assert_eq!(state_of(&other), pb::OnboardingState::AwaitingCustomer);
    assert_eq!(validate(&app, "sandbox-exotel", &exotel(idle).token).await.raw_status, "VALID");
}

#[tokio::test]
async fn exotel_link_expires_when_24_hours_pass_on_the_provider_clock() {
    let app = quiet_app().await;
    let o = app
        .onboardings()
        .create_onboarding(app.req(exotel_link_request("sandbox-exotel", "crm-expire")))
        .await
        .unwrap()
        .into_inner();
    let waiting = wait_until(&app, &o.name, "AWAITING_CUSTOMER with a link", |o| {
        state_of(o) == pb::OnboardingState::AwaitingCustomer && !exotel(o).token.is_empty()
    })
    .await;
    let token = exotel(&waiting).token.clone();
    assert_eq!(exotel(&waiting).customers_remaining, 5);
    assert_eq!(exotel(&waiting).customers_remaining_min, 5);
    assert_eq!(exotel(&waiting).max_customers_per_link, 5);
    assert!(exotel(&waiting).live_meaning.is_empty());
    assert!(waiting.expire_time.is_some());

    exotel_sim(&app).core().clock.advance(DAY);
    let expired = wait_state(&app, &o.name, pb::OnboardingState::Expired).await;
    assert_eq!(raw_status(&expired), "EXPIRED");
    assert_eq!(exotel(&expired).customers_remaining, 0);
    let v = validate(&app, "sandbox-exotel", &token).await;
    assert_eq!(v.status, pb::OnboardingTokenStatus::Expired as i32);
    assert_eq!(v.customers_remaining, 0);
    assert_eq!(v.onboarding, o.name);
    // A lapsed link cannot be used any more.
    assert!(exotel_sim(&app).complete_customer(&token).is_err());
}

#[tokio::test]
async fn exotel_account_in_mumbai_is_served_by_the_mumbai_cluster() {
    let app = quiet_app().await;
    let sim = exotel_sim(&app);
    app.accounts()
        .create_account(app.req(exotel_account("exo-mumbai", "sandbox-in", "sandbox-token", pb::ExotelRegion::Mumbai)))
        .await
        .expect("mumbai account");
    let check = app
        .accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/exo-mumbai".into() }))
        .await
        .expect("check")
        .into_inner();
    assert!(check.ok, "{check:?}");

    let mumbai =
        app.onboardings().create_onboarding_links(app.req(links_request("exo-mumbai", 3))).await.unwrap().into_inner();
    let singapore = app
        .onboardings()
        .create_onboarding_links(app.req(links_request("sandbox-exotel", 2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(calls(sim.core(), EXOTEL_MINT), 5, "one documented call per link");
    let regions = |r: &pb::CreateOnboardingLinksResponse| {
        r.onboardings
            .iter()
            .map(|o| {
                let t = sim.token(&exotel(o).token).expect("token at the sim");
                (t.region, t.sid)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(regions(&mumbai), vec![(SimRegion::Mumbai, "sandbox-in".to_string()); 3]);
    assert_eq!(regions(&singapore), vec![(SimRegion::Singapore, "sandbox-sg".to_string()); 2]);
    // The Mumbai links are polled on the Mumbai cluster too (a token is unknown elsewhere).
    let name = &mumbai.onboardings[0].name;
    let token = exotel(&mumbai.onboardings[0]).token.clone();
    wait_until(&app, name, "polled", |_| sim.token(&token).is_some_and(|t| t.first_validated_ms.is_some())).await;
    assert_eq!(validate(&app, "exo-mumbai", &token).await.raw_status, "VALID");
    assert_eq!(state_of(&get(&app, name).await), pb::OnboardingState::AwaitingCustomer);

    // The same SID declared in the wrong region: a clear error naming the region option.
    app.accounts()
        .create_account(app.req(exotel_account(
            "exo-wrong-region",
            "sandbox-in",
            "sandbox-token",
            pb::ExotelRegion::Singapore,
        )))
        .await
        .unwrap();
    let err = app
        .accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/exo-wrong-region".into() }))
        .await
        .expect_err("unknown SID on the Singapore cluster");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("exotel_region"), "{}", err.message());
    assert_eq!(provider_code(&err).as_deref(), Some("404"));
}

#[tokio::test]
async fn exotel_bad_credentials_fail_the_check_and_the_onboarding_keeps_the_raw_code() {
    let app = quiet_app().await;
    let sim = exotel_sim(&app);
    app.accounts()
        .create_account(app.req(exotel_account("exo-bad", "sandbox-sg", "wrong-token", pb::ExotelRegion::Singapore)))
        .await
        .unwrap();
    let check = app
        .accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/exo-bad".into() }))
        .await
        .expect("a rejected check is an answer, not an error")
        .into_inner();
    assert!(!check.ok);
    assert_eq!(check.provider_code, "401");
    assert!(check.message.contains("rejected"), "{}", check.message);
    assert!(!check.message.contains("wrong-token"));

    // Batch: refused synchronously with Exotel's code, nothing stored.
    let err = app
        .onboardings()
        .create_onboarding_links(app.req(links_request("exo-bad", 3)))
        .await
        .expect_err("rejected credentials");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(provider_code(&err).as_deref(), Some("401"));
    assert!(!format!("{err:?}").contains("wrong-token"), "secret leaked");
    assert_eq!(created(sim.core(), "links"), 0);

    // Single link: the engine stops at REAUTH_REQUIRED with the raw code.
    let o = app
        .onboardings()
        .create_onboarding(app.req(exotel_link_request("exo-bad", "crm-bad")))
        .await
        .unwrap()
        .into_inner();
    let stuck = wait_state(&app, &o.name, pb::OnboardingState::ReauthRequired).await;
    assert_eq!(raw_status(&stuck), "401");
    assert!(!stuck.state_reason.contains("wrong-token"));
    assert_eq!(created(sim.core(), "links"), 0);
    let list = app
        .onboardings()
        .list_onboardings(
            app.req(pb::ListOnboardingsRequest { account: "accounts/exo-bad".into(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.onboardings.len(), 1, "only the single-link onboarding exists");
}

#[tokio::test]
async fn exotel_sandbox_link_reaches_live_on_its_own() {
    let app = sandbox_app().await;
    let o = app
        .onboardings()
        .create_onboarding(app.req(exotel_link_request("sandbox-exotel", "crm-sandbox")))
        .await
        .unwrap()
        .into_inner();
    let live = wait_state(&app, &o.name, pb::OnboardingState::Live).await;
    assert_eq!(raw_status(&live), "USED");
    assert_eq!(live.reference, "crm-sandbox");
}

// ----- 99digital -----

const NUMBER: &str = "+972501234567";

fn d99(o: &pb::Onboarding) -> &pb::Digital99Onboarding {
    match &o.details {
        Some(pb::onboarding::Details::Digital99(d)) => d,
        other => panic!("{}: expected 99digital details, got {other:?}", o.name),
    }
}

fn d99_request(reference: &str, coexistence: bool, register: bool) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/sandbox-digital99".into(),
        reference: reference.into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Digital99(pb::Digital99LinkRequest {
            phone: NUMBER.into(),
            business_name: "Acme inc".into(),
            business_email: "john@example.com".into(),
            business_id: "1234567".into(),
            business_address: "Grove Street, San Andreas".into(),
            display_name: "Acme".into(),
            coexistence,
            register_number: register,
            verification_method: pb::VerificationMethod::Sms as i32,
        })),
    }
}

async fn submit_code(app: &TestApp, name: &str, code: &str) -> Result<pb::Onboarding, tonic::Status> {
    app.onboardings()
        .submit_verification_code(app.req(pb::SubmitVerificationCodeRequest { name: name.into(), code: code.into() }))
        .await
        .map(|r| r.into_inner())
}

/// [`submit_code`] once the step waits for it: the SMS reaches the sim (and the test) while the
/// step that asked for it may still be on its way to waiting, and until then a code is refused
/// as FAILED_PRECONDITION.
async fn submit_when_waiting(app: &TestApp, name: &str, code: &str) -> Result<pb::Onboarding, tonic::Status> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match submit_code(app, name, code).await {
            Err(e) if e.code() == tonic::Code::FailedPrecondition && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Whether the onboarding's event log has an event whose reason contains `needle`.
async fn has_event(app: &TestApp, name: &str, needle: &str) -> bool {
    let events = app
        .onboardings()
        .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
            name: name.into(),
            page_size: 1000,
            page_token: String::new(),
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    events.iter().any(|e| e.reason.contains(needle))
}

/// Creates an onboarding that registers the number, verifies it with the code the sim
/// "sent" and waits for the hosted link.
async fn verified_link(app: &TestApp, reference: &str, coexistence: bool) -> pb::Onboarding {
    let o = app
        .onboardings()
        .create_onboarding(app.req(d99_request(reference, coexistence, true)))
        .await
        .expect("create")
        .into_inner();
    let digits = NUMBER.trim_start_matches('+');
    wait_until(app, &o.name, "waiting for the code", |_| d99_sim(app).code(digits).is_some()).await;
    let code = d99_sim(app).code(digits).expect("code sent");
    submit_when_waiting(app, &o.name, &code).await.expect("submit code");
    wait_until(app, &o.name, "given a link", |o| !d99(o).onboarding_link.is_empty()).await
}

#[tokio::test]
async fn digital99_number_registered_and_verified_then_finished_goes_live_with_reference() {
    let app = quiet_app().await;
    let sim = d99_sim(&app);
    let digits = NUMBER.trim_start_matches('+');
    let o =
        app.onboardings().create_onboarding(app.req(d99_request("crm-99", false, true))).await.unwrap().into_inner();
    // Registration: a code is sent, then the onboarding waits for it.
    let waiting = wait_until(&app, &o.name, "waiting for the verification code", |o| {
        state_of(o) == pb::OnboardingState::AwaitingCustomer && sim.code(digits).is_some()
    })
    .await;
    assert!(!d99(&waiting).number_verified);
    assert!(d99(&waiting).onboarding_link.is_empty(), "no link before the number is verified");
    let code = sim.code(digits).expect("code sent by SMS");

    // A wrong code is refused by 99digital and the step keeps waiting for another.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    submit_when_waiting(&app, &o.name, wrong).await.expect("a well-formed code is accepted for checking");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !has_event(&app, &o.name, "code rejected").await {
        assert!(tokio::time::Instant::now() < deadline, "the wrong code was never rejected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sim.accounts().is_empty(), "no account for an unverified number");
    // A malformed code never reaches 99digital.
    let err = submit_code(&app, &o.name, "12ab").await.expect_err("malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["code".to_string()]);

    submit_when_waiting(&app, &o.name, &code).await.expect("right code");
    let linked = wait_until(&app, &o.name, "given a link", |o| !d99(o).onboarding_link.is_empty()).await;
    assert_eq!(state_of(&linked), pb::OnboardingState::AwaitingCustomer);
    let d = d99(&linked);
    assert!(d.number_verified);
    assert!(!d.landing_page.is_empty());
    assert_eq!((d.business_name.as_str(), d.display_name.as_str(), d.phone.as_str()), ("Acme inc", "Acme", NUMBER));
    // 99digital's `reference` is the onboarding id (unique, always set: what reconciliation
    // matches on, docs/providers.md §4.2 issue 17 #5); the caller's reference stays ours.
    let at_sim = sim.accounts();
    assert_eq!(at_sim.len(), 1);
    // The store key (`{tenant}.{id}`): unique across tenants sharing a partner account.
    assert_eq!(at_sim[0].reference.rsplit_once('.').map(|(_, id)| id), o.name.strip_prefix("onboardings/"));
    assert_eq!(at_sim[0].onboarding_link, d.onboarding_link);

    // The business owner finishes on 99digital's page.
    sim.finish(digits).expect("finish");
    let live = wait_state(&app, &o.name, pb::OnboardingState::Live).await;
    assert_eq!(live.reference, "crm-99");
    assert_eq!(d99(&live).phone, NUMBER);
    let by_ref = app
        .onboardings()
        .list_onboardings(app.req(pb::ListOnboardingsRequest { reference: "crm-99".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_ref.onboardings.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), [o.name.as_str()]);
}

#[tokio::test]
async fn digital99_expired_access_token_is_replaced_by_exactly_one_login() {
    let app = quiet_app().await;
    let sim = d99_sim(&app);
    let check = |app: &TestApp| {
        let mut c = app.accounts();
        let req = app.req(pb::CheckAccountRequest { name: "accounts/sandbox-digital99".into() });
        async move { c.check_account(req).await.expect("check").into_inner() }
    };
    assert!(check(&app).await.ok);
    assert_eq!(calls(sim.core(), D99_LOGIN), 1);
    assert!(check(&app).await.ok);
    assert_eq!(calls(sim.core(), D99_LOGIN), 1, "the token is cached");

    // The token dies at 99digital (1 h on its clock) while our cache still trusts it.
    sim.core().clock.advance(Duration::from_secs(3601));
    assert!(check(&app).await.ok, "an expired token is replaced transparently");
    assert_eq!(calls(sim.core(), D99_LOGIN), 2, "exactly one new login");
    assert!(check(&app).await.ok);
    assert_eq!(calls(sim.core(), D99_LOGIN), 2);
    let status = tokens(&app)
        .get_provider_token_status(
            app.req(pb::GetProviderTokenStatusRequest { account: "accounts/sandbox-digital99".into() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(status.cached);
    assert_eq!(status.refresh_count, 2);
    assert!(status.last_error.is_empty());
}

#[tokio::test]
async fn digital99_login_reason_3_is_reauth_required_without_hammering() {
    let app = quiet_app().await;
    let sim = d99_sim(&app);
    let base = app.running().sandbox.as_ref().expect("sandbox").endpoints().digital99;
    // Someone on our IP fails three logins: 99digital blocks the client (reason 3).
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r: serde_json::Value = http
            .post(format!("{base}/api/settings/accessToken"))
            .json(&serde_json::json!({ "client_id": "sandbox-client", "client_secret": "not-it" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "FAIL");
    }
    let before = calls(sim.core(), D99_LOGIN);

    let o = app
        .onboardings()
        .create_onboarding(app.req(d99_request("crm-blocked", false, false)))
        .await
        .unwrap()
        .into_inner();
    let stuck = wait_state(&app, &o.name, pb::OnboardingState::ReauthRequired).await;
    assert_eq!(raw_status(&stuck), "3");
    assert_eq!(calls(sim.core(), D99_LOGIN), before + 1, "one login, then stop");

    // Everything else on the account answers at once, without touching the login.
    let check = app
        .accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/sandbox-digital99".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(!check.ok);
    assert_eq!(check.provider_code, "3");
    let err = tokens(&app)
        .refresh_provider_token(
            app.req(pb::RefreshProviderTokenRequest { account: "accounts/sandbox-digital99".into() }),
        )
        .await
        .expect_err("blocked");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(provider_code(&err).as_deref(), Some("3"));
    let mut second = d99_request("crm-blocked-2", false, false);
    if let Some(pb::create_onboarding_request::Request::Digital99(d)) = second.request.as_mut() {
        d.phone = "+972509999999".into();
    }
    let o2 = app.onboardings().create_onboarding(app.req(second)).await.unwrap().into_inner();
    wait_state(&app, &o2.name, pb::OnboardingState::ReauthRequired).await;
    assert_eq!(calls(sim.core(), D99_LOGIN), before + 1, "no login was repeated into the block");
    assert!(sim.accounts().is_empty());
}

#[tokio::test]
async fn digital99_cancel_deletes_an_open_link_and_is_refused_once_finished() {
    let app = quiet_app().await;
    let sim = d99_sim(&app);
    let digits = NUMBER.trim_start_matches('+');

    // Open: cancelled at 99digital (deleteAccount) and here.
    let open = verified_link(&app, "crm-cancel", false).await;
    let resp = app
        .onboardings()
        .cancel_onboarding(app.req(pb::CancelOnboardingRequest { name: open.name.clone(), request_id: String::new() }))
        .await
        .expect("cancel an open link")
        .into_inner();
    let cancelled = resp.onboarding.expect("onboarding");
    assert_eq!(state_of(&cancelled), pb::OnboardingState::Cancelled);
    assert!(sim.accounts().is_empty(), "the account was deleted at 99digital");

    // Finished: a new link for the same (still registered) number, finished by the owner.
    let o = app
        .onboardings()
        .create_onboarding(app.req(d99_request("crm-finished", false, false)))
        .await
        .unwrap()
        .into_inner();
    wait_until(&app, &o.name, "given a link", |o| !d99(o).onboarding_link.is_empty()).await;
    sim.finish(digits).expect("finish");
    // Whether our side has seen the finish yet (LIVE) or 99digital refuses (reason 25), the
    // caller gets FAILED_PRECONDITION and nothing is deleted.
    let err = app
        .onboardings()
        .cancel_onboarding(app.req(pb::CancelOnboardingRequest { name: o.name.clone(), request_id: String::new() }))
        .await
        .expect_err("finished onboardings cannot be cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let live = wait_state(&app, &o.name, pb::OnboardingState::Live).await;
    assert_eq!(live.desired_state, pb::OnboardingState::Unspecified as i32, "no cancel left pending");
    let at_sim = sim.accounts();
    assert_eq!(at_sim.len(), 1);
    assert_eq!(at_sim[0].status, 1);
    // Asked again once LIVE: still refused.
    let again = app
        .onboardings()
        .cancel_onboarding(app.req(pb::CancelOnboardingRequest { name: o.name.clone(), request_id: String::new() }))
        .await
        .expect_err("still finished");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn digital99_coexistence_temporary_number_is_replaced_by_the_real_one() {
    let app = quiet_app().await;
    let sim = d99_sim(&app);
    let o = verified_link(&app, "crm-coex", true).await;
    // Until the business finishes, 99digital lists a temporary 97257… number.
    let waiting =
        wait_until(&app, &o.name, "showing the temporary number", |o| !d99(o).temporary_phone.is_empty()).await;
    let d = d99(&waiting);
    assert!(d.coexistence);
    assert!(d.temporary_phone.starts_with("+97257"), "{}", d.temporary_phone);
    assert_ne!(d.temporary_phone, NUMBER);
    let temp = d.temporary_phone.trim_start_matches('+').to_string();
    assert_eq!(sim.accounts()[0].listed_whatsapp, temp);

    sim.finish(&temp).expect("the owner finishes (found by the temporary number)");
    assert_eq!(sim.accounts()[0].listed_whatsapp, NUMBER.trim_start_matches('+'));
    let live = wait_state(&app, &o.name, pb::OnboardingState::Live).await;
    let d = d99(&live);
    assert_eq!(d.phone, NUMBER, "the real number replaces the temporary one");
    assert!(d.coexistence);
    assert_eq!(live.reference, "crm-coex");
}

#[tokio::test]
async fn digital99_sandbox_link_reaches_live_on_its_own() {
    let app = sandbox_app().await;
    let o = app
        .onboardings()
        .create_onboarding(app.req(d99_request("crm-sandbox", false, false)))
        .await
        .unwrap()
        .into_inner();
    let live = wait_state(&app, &o.name, pb::OnboardingState::Live).await;
    assert_eq!(live.reference, "crm-sandbox");
    assert!(!d99(&live).onboarding_link.is_empty());
}
