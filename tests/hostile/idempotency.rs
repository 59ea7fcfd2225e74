//! Cross-tenant app takeover and concurrent idempotent calls (issue 16 items 1, 4, 11). See
//! `main.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wa_onboard::config::Settings;
use wa_onboard::grpc::pb;
use wa_onboard::sim::common::SimCore;

use crate::common::{table, write_fragment};
use crate::helpers::*;

/// Guard against hanging on a loaded 2-core box (not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);
/// Identical calls sent at once.
const PARALLEL: usize = 20;
/// Links per batch in the concurrent `CreateOnboardingLinks`.
const BATCH: i32 = 5;

const EXOTEL_MINT: &str = "POST /v2/accounts/{sid}/isv";
const GUPSHUP_LINK: &str = "POST /partner/tpp/app";
const GUPSHUP_SUBSCRIBE: &str = "POST /partner/app/{app_id}/subscription";
const GUPSHUP_CALLBACK: &str = "PUT /partner/app/{app_id}/callbackUrl";

fn fast(s: &mut Settings) {
    s.sandbox.enabled = true;
    s.sandbox.sims.gupshup.stage_ms = 300;
    s.sandbox.sims.exotel.sandbox = false;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
}

fn calls(core: &SimCore, endpoint: &str) -> u64 {
    core.counters().calls.get(endpoint).copied().unwrap_or(0)
}

fn created(core: &SimCore, kind: &str) -> u64 {
    core.counters().created.get(kind).copied().unwrap_or(0)
}

fn code_counts<T>(results: &[Result<T, tonic::Status>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        let k = match r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

fn show(m: &BTreeMap<String, usize>) -> String {
    m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// Every onboarding of the caller, all pages.
async fn all_onboardings(app: &TestApp) -> Vec<pb::Onboarding> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .onboardings()
            .list_onboardings(app.req(pb::ListOnboardingsRequest {
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            }))
            .await
            .expect("ListOnboardings")
            .into_inner();
        out.extend(page.onboardings);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

// ----- item 4: CreateOnboardingLinks -----

async fn concurrent_links(backend: &str, database_url: Option<String>) -> Vec<(&'static str, String)> {
    let app = spawn_with(|s| {
        fast(s);
        if let Some(url) = database_url {
            s.database.url = url;
        }
    })
    .await;
    let sim = app.running().sandbox.as_ref().expect("sandbox").exotel.core().clone();
    let mints_before = calls(&sim, EXOTEL_MINT);
    let links_before = created(&sim, "links");
    let req = pb::CreateOnboardingLinksRequest {
        account: "accounts/sandbox-exotel".into(),
        count: BATCH,
        reference: "crm-race".into(),
        request_id: "links-race-1".into(),
    };
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..PARALLEL {
        let (mut c, r) = (app.onboardings(), app.req(req.clone()));
        joins.push(tokio::spawn(async move { c.create_onboarding_links(r).await.map(|r| r.into_inner()) }));
    }
    let mut results = Vec::new();
    for j in joins {
        results.push(tokio::time::timeout(PATIENCE, j).await.expect("answered").expect("task"));
    }
    let elapsed = started.elapsed();
    let codes = code_counts(&results);
    let answers: BTreeSet<(String, Vec<String>)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| (r.batch_id.clone(), r.onboardings.iter().map(|o| o.name.clone()).collect()))
        .collect();
    let mints = calls(&sim, EXOTEL_MINT) - mints_before;
    let links = created(&sim, "links") - links_before;
    let stored = all_onboardings(&app).await.iter().filter(|o| o.reference == "crm-race").count();
    let figures = vec![
        ("backend", backend.to_string()),
        ("identical calls sent at once", PARALLEL.to_string()),
        ("answers", show(&codes)),
        ("distinct batches answered", answers.len().to_string()),
        ("Exotel mint calls", mints.to_string()),
        ("links minted at Exotel", links.to_string()),
        ("onboardings stored", stored.to_string()),
        ("slowest answer", format!("{} ms", elapsed.as_millis())),
    ];
    assert_eq!(codes.get("OK").copied(), Some(PARALLEL), "every caller gets the batch: {figures:?}");
    assert_eq!(answers.len(), 1, "one batch for every caller: {figures:?}");
    // One batch: one documented plain POST per link (docs/providers.md §2.2).
    assert_eq!(mints, BATCH as u64, "one batch minted at Exotel: {figures:?}");
    assert_eq!(links, BATCH as u64, "{figures:?}");
    assert_eq!(stored, BATCH as usize, "{figures:?}");
    figures
}

/// Item 4: 20 parallel identical `CreateOnboardingLinks` (one `request_id`) mint once, on
/// SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_onboarding_links_with_one_request_id_mints_once() {
    let mut md = String::from(
        "### Concurrent CreateOnboardingLinks with one request_id\n\n\
         20 identical `CreateOnboardingLinks` calls (5 links, one `request_id`) sent at once. The key is \
         claimed in the store before Exotel is called; the other callers wait for the stored batch.\n\n",
    );
    let sqlite = concurrent_links("SQLite", None).await;
    md.push_str(&table(&sqlite));
    if let Some(url) = pg_schema().await {
        let pg = concurrent_links("PostgreSQL", Some(url.clone())).await;
        md.push('\n');
        md.push_str(&table(&pg));
        drop_pg(&url).await;
    }
    write_fragment("40-hostile-concurrent-links.md", &md);
}

// ----- Gupshup helpers -----

fn gupshup_sim(app: &TestApp) -> &wa_onboard::sim::gupshup::GupshupSim {
    &app.running().sandbox.as_ref().expect("sandbox").gupshup
}

fn link_request(account: &str, app_name: &str, phone: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: "crm".into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: app_name.into(),
            waba_id: "104996122399160".into(),
            phone: phone.into(),
            ..Default::default()
        })),
    }
}

async fn get_with(
    c: &mut pb::onboarding_service_client::OnboardingServiceClient<Channel>,
    key: &str,
    name: &str,
) -> pb::Onboarding {
    c.get_onboarding(with_key(pb::GetOnboardingRequest { name: name.into() }, key))
        .await
        .expect("GetOnboarding")
        .into_inner()
}

fn is_finished(state: i32) -> bool {
    [
        pb::OnboardingState::Live,
        pb::OnboardingState::Failed,
        pb::OnboardingState::Stalled,
        pb::OnboardingState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// Waits until the onboarding is LIVE (with its pipeline done) or has stopped.
async fn settle(app: &TestApp, key: &str, name: &str) -> pb::Onboarding {
    let mut c = app.onboardings();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let o = get_with(&mut c, key, name).await;
        if is_finished(o.state) {
            if o.state != pb::OnboardingState::Live as i32 {
                return o;
            }
            let p = app
                .pipelines()
                .get_pipeline(with_key(pb::GetPipelineRequest { name: format!("{name}/pipeline") }, key))
                .await
                .expect("GetPipeline")
                .into_inner();
            if p.steps.iter().all(|s| {
                [pb::StepState::Succeeded, pb::StepState::Skipped, pb::StepState::Failed]
                    .iter()
                    .any(|x| *x as i32 == s.state)
            }) {
                return get_with(&mut c, key, name).await;
            }
        }
        assert!(Instant::now() < deadline, "{name} never settled; last: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn app_id(o: &pb::Onboarding) -> String {
    match &o.details {
        Some(pb::onboarding::Details::Gupshup(g)) => g.app_id.clone(),
        _ => String::new(),
    }
}

// ----- item 11: CreateSubscription -----

/// Item 11: 20 parallel identical `CreateSubscription` calls (one `request_id`) on a LIVE
/// Gupshup app create one subscription and answer it 20 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_subscription_with_one_request_id_answers_one_subscription() {
    let app = spawn_with(fast).await;
    let key = app.key.expose().to_string();
    let name = app
        .onboardings()
        .create_onboarding(app.req(link_request("sandbox-gupshup", "AcmeRaceSubs", "+919811100011")))
        .await
        .expect("CreateOnboarding")
        .into_inner()
        .name;
    let o = settle(&app, &key, &name).await;
    assert_eq!(o.state, pb::OnboardingState::Live as i32, "{o:?}");
    let sim = gupshup_sim(&app).core().clone();
    let subs_before = created(&sim, "subscriptions");
    let posts_before = calls(&sim, GUPSHUP_SUBSCRIBE);
    let req = pb::CreateSubscriptionRequest {
        parent: name.clone(),
        spec: Some(pb::SubscriptionSpec {
            url: "https://crm.acme.test/wa/race".into(),
            events: vec!["SENT".into(), "DELIVERED".into()],
            tag: "race".into(),
            version: 2,
            ..Default::default()
        }),
        request_id: "sub-race-1".into(),
    };
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..PARALLEL {
        let mut c = pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone());
        let r = app.req(req.clone());
        joins.push(tokio::spawn(async move { c.create_subscription(r).await.map(|r| r.into_inner()) }));
    }
    let mut results = Vec::new();
    for j in joins {
        results.push(tokio::time::timeout(PATIENCE, j).await.expect("answered").expect("task"));
    }
    let elapsed = started.elapsed();
    let codes = code_counts(&results);
    let ids: BTreeSet<String> = results.iter().filter_map(|r| r.as_ref().ok()).map(|s| s.name.clone()).collect();
    let made = created(&sim, "subscriptions") - subs_before;
    let posts = calls(&sim, GUPSHUP_SUBSCRIBE) - posts_before;
    let figures = vec![
        ("identical calls sent at once", PARALLEL.to_string()),
        ("answers", show(&codes)),
        ("distinct subscriptions answered", ids.len().to_string()),
        ("create calls at Gupshup", posts.to_string()),
        ("subscriptions created at Gupshup", made.to_string()),
        ("slowest answer", format!("{} ms", elapsed.as_millis())),
    ];
    write_fragment(
        "40-hostile-concurrent-subscription.md",
        &format!(
            "### Concurrent CreateSubscription with one request_id\n\n\
             20 identical `CreateSubscription` calls (one `request_id`) on a LIVE Gupshup app, sent at once. \
             The key is claimed before Gupshup is called; the other callers answer the stored outcome.\n\n{}",
            table(&figures)
        ),
    );
    assert_eq!(codes.get("OK").copied(), Some(PARALLEL), "{figures:?}");
    assert_eq!(ids.len(), 1, "{figures:?}");
    assert_eq!(made, 1, "{figures:?}");
    assert_eq!(posts, 1, "{figures:?}");
}

// ----- item 1: Gupshup app takeover -----

fn tokens(app: &TestApp) -> pb::token_service_client::TokenServiceClient<Channel> {
    pb::token_service_client::TokenServiceClient::new(app.channel.clone())
}

fn subscriptions(app: &TestApp) -> pb::subscription_service_client::SubscriptionServiceClient<Channel> {
    pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone())
}

fn state_name(o: &pb::Onboarding) -> String {
    pb::OnboardingState::try_from(o.state).map(|s| s.as_str_name().to_string()).unwrap_or_default()
}

/// Item 1: tenant B, on the same (documented sandbox) Gupshup partner login as tenant A,
/// onboards A's phone under another app name: Gupshup's 409 names A's app, which B must not
/// get (no LIVE, no token, no subscriptions, no callback re-pointed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_on_the_same_partner_login_cannot_adopt_an_app_by_phone() {
    let mut partner = None;
    let app = spawn_with(|s| {
        fast(s);
        partner = s.sandbox.sims.gupshup.partners.first().cloned();
    })
    .await;
    let partner = partner.expect("the sandbox has a Gupshup partner");
    let sim = gupshup_sim(&app);
    let core = sim.core().clone();
    const PHONE: &str = "+919822200022";
    let a_key = app.key.expose().to_string();

    // Tenant A: LIVE, with a subscription whose header names are its own business.
    let a_name = app
        .onboardings()
        .create_onboarding(app.req(link_request("sandbox-gupshup", "TenantAShop", PHONE)))
        .await
        .expect("A's CreateOnboarding")
        .into_inner()
        .name;
    let a = settle(&app, &a_key, &a_name).await;
    assert_eq!(a.state, pb::OnboardingState::Live as i32, "{a:?}");
    let a_app = app_id(&a);
    subscriptions(&app)
        .create_subscription(app.req(pb::CreateSubscriptionRequest {
            parent: a_name.clone(),
            spec: Some(pb::SubscriptionSpec {
                url: "https://crm.tenant-a.test/wa".into(),
                events: vec!["SENT".into()],
                tag: "tenant-a".into(),
                version: 2,
                headers: [("X-Tenant-A-Secret".to_string(), "a-secret".to_string())].into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .expect("A's subscription");
    let a_token = tokens(&app)
        .get_app_token(app.req(pb::GetAppTokenRequest { name: a_name.clone() }))
        .await
        .expect("A's token")
        .into_inner()
        .token;
    let callback_before = sim.apps().into_iter().find(|x| x.app_id == a_app).and_then(|x| x.callback_url);
    let callback_sets_before = calls(&core, GUPSHUP_CALLBACK);
    let subs_before = created(&core, "subscriptions");

    // Tenant B: its own account on the same partner login, A's phone, any app name.
    let b_key = app.other_tenant("tenant-b").await.expose().to_string();
    let mut account = gupshup_account("b-gupshup", &partner.secret);
    if let Some(acc) = account.account.as_mut() {
        acc.sandbox = true;
        if let Some(pb::account_credentials::Credentials::Gupshup(g)) =
            acc.credentials.as_mut().and_then(|c| c.credentials.as_mut())
        {
            g.email = partner.email.clone();
        }
    }
    app.accounts().create_account(with_key(account, &b_key)).await.expect("B's account");
    let links_before = calls(&core, GUPSHUP_LINK);
    let b_name = app
        .onboardings()
        .create_onboarding(with_key(link_request("b-gupshup", "TenantBAnything", PHONE), &b_key))
        .await
        .expect("B's CreateOnboarding")
        .into_inner()
        .name;
    let b = settle(&app, &b_key, &b_name).await;
    let b_token = tokens(&app).get_app_token(with_key(pb::GetAppTokenRequest { name: b_name.clone() }, &b_key)).await;
    let b_subs = subscriptions(&app)
        .list_subscriptions(with_key(
            pb::ListSubscriptionsRequest { parent: b_name.clone(), ..Default::default() },
            &b_key,
        ))
        .await;
    let callback_after = sim.apps().into_iter().find(|x| x.app_id == a_app).and_then(|x| x.callback_url);
    let callback_sets = calls(&core, GUPSHUP_CALLBACK) - callback_sets_before;
    let a_subs = subscriptions(&app)
        .list_subscriptions(app.req(pb::ListSubscriptionsRequest { parent: a_name.clone(), ..Default::default() }))
        .await
        .expect("A's subscriptions")
        .into_inner()
        .subscriptions;
    let b_got_token = b_token.as_ref().is_ok_and(|t| t.get_ref().token == a_token);
    let figures = vec![
        ("B's onboarding state", state_name(&b)),
        ("B's state reason", b.state_reason.clone()),
        ("B's app id", if app_id(&b).is_empty() { "none".into() } else { app_id(&b) }),
        (
            "B's GetAppToken",
            match &b_token {
                Ok(_) => "OK".into(),
                Err(s) => format!("{:?}", s.code()),
            },
        ),
        ("B got A's token", b_got_token.to_string()),
        (
            "B's ListSubscriptions",
            match &b_subs {
                Ok(r) => format!("OK ({})", r.get_ref().subscriptions.len()),
                Err(s) => format!("{:?}", s.code()),
            },
        ),
        ("link calls B made", (calls(&core, GUPSHUP_LINK) - links_before).to_string()),
        ("callback URL calls after B", callback_sets.to_string()),
        ("A's app callback unchanged", (callback_after == callback_before).to_string()),
        ("A's subscriptions (after)", a_subs.len().to_string()),
    ];
    write_fragment(
        "40-hostile-app-takeover.md",
        &format!(
            "### Cross-tenant Gupshup app takeover\n\n\
             Tenant B, with its own account on the same (documented sandbox) Gupshup partner login as \
             tenant A, creates an onboarding with A's phone and another app name. Gupshup answers 409 \
             naming A's app; B's onboarding is refused instead of adopting it.\n\n{}",
            table(&figures)
        ),
    );
    assert_ne!(b.state, pb::OnboardingState::Live as i32, "{figures:?}");
    assert_eq!(b.state, pb::OnboardingState::Failed as i32, "{figures:?}");
    assert!(b.state_reason.contains("belongs to another onboarding"), "{figures:?}");
    assert!(!b.state_reason.contains("tenant") && !b.state_reason.contains(&a_name), "names no owner: {figures:?}");
    assert!(app_id(&b).is_empty(), "{figures:?}");
    assert_eq!(b_token.as_ref().map_err(|s| s.code()).err(), Some(tonic::Code::FailedPrecondition), "{figures:?}");
    assert!(b_subs.is_err(), "{figures:?}");
    assert_eq!(callback_after, callback_before, "{figures:?}");
    assert_eq!(callback_sets, 0, "{figures:?}");
    assert_eq!(a_subs.len(), 1, "{figures:?}");
    assert_eq!(created(&core, "subscriptions"), subs_before, "{figures:?}");
}

/// Item 1, same root cause: five onboardings of one tenant with one phone (five app names);
/// at most one gets the phone's app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_onboardings_with_one_phone_do_not_share_one_app() {
    let app = spawn_with(fast).await;
    let key = app.key.expose().to_string();
    const PHONE: &str = "+919833300033";
    let mut names = Vec::new();
    for i in 0..5 {
        let req = link_request("sandbox-gupshup", &format!("FiveShop{i}"), PHONE);
        names
            .push(app.onboardings().create_onboarding(app.req(req)).await.expect("CreateOnboarding").into_inner().name);
    }
    let mut settled = Vec::new();
    for n in &names {
        settled.push(settle(&app, &key, n).await);
    }
    let live = settled.iter().filter(|o| o.state == pb::OnboardingState::Live as i32).count();
    let holders = settled.iter().filter(|o| !app_id(o).is_empty()).count();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for o in &settled {
        *states.entry(state_name(o)).or_default() += 1;
    }
    let apps = gupshup_sim(&app).apps().iter().filter(|a| a.phone == PHONE.trim_start_matches('+')).count();
    let figures = vec![
        ("onboardings created with one phone", names.len().to_string()),
        ("final states", show(&states)),
        ("onboardings holding an app", holders.to_string()),
        ("apps for the phone at Gupshup", apps.to_string()),
    ];
    write_fragment(
        "40-hostile-one-phone-five-onboardings.md",
        &format!(
            "### Five onboardings, one phone\n\n\
             One tenant creates five Gupshup onboardings with the same phone and five app names. \
             Only the one whose call created the app holds it; the others are refused.\n\n{}",
            table(&figures)
        ),
    );
    assert_eq!(live, 1, "{figures:?}");
    assert_eq!(holders, 1, "{figures:?}");
}

/// Item 1, the genuine case: our own link whose answer was lost (Gupshup created the app, the
/// response never came) still reconciles into that app through the 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_lost_link_answer_still_reconciles_into_its_app() {
    let app = spawn_with(|s| {
        fast(s);
        s.providers.http_timeout_secs = 1;
    })
    .await;
    let key = app.key.expose().to_string();
    let sim = gupshup_sim(&app);
    let core = sim.core().clone();
    core.fail_next(Some(GUPSHUP_LINK), 1, wa_onboard::sim::common::Fault::Timeout { after_effect: true });
    let name = app
        .onboardings()
        .create_onboarding(app.req(link_request("sandbox-gupshup", "LostAnswerShop", "+919844400044")))
        .await
        .expect("CreateOnboarding")
        .into_inner()
        .name;
    let o = settle(&app, &key, &name).await;
    let at_sim = sim.apps().into_iter().find(|a| a.app_id == app_id(&o));
    let figures = vec![
        ("state", state_name(&o)),
        ("link calls", calls(&core, GUPSHUP_LINK).to_string()),
        ("apps created", created(&core, "apps").to_string()),
        (
            "callback points at our ingress",
            at_sim
                .as_ref()
                .and_then(|a| a.callback_url.as_ref())
                .is_some_and(|u| u.contains("/webhooks/gupshup/") && u.contains(".sandbox-gupshup/"))
                .to_string(),
        ),
    ];
    write_fragment(
        "40-hostile-lost-link-answer.md",
        &format!(
            "### A lost link answer still reconciles\n\n\
             Gupshup creates the app but the answer is lost (the call times out); the retry's 409 names \
             the app, which this onboarding's own earlier attempt (on record before the call) made.\n\n{}",
            table(&figures)
        ),
    );
    assert_eq!(o.state, pb::OnboardingState::Live as i32, "{figures:?}");
    assert_eq!(created(&core, "apps"), 1, "{figures:?}");
    assert!(calls(&core, GUPSHUP_LINK) >= 2, "{figures:?}");
    assert!(
        at_sim
            .and_then(|a| a.callback_url)
            .is_some_and(|u| u.contains("/webhooks/gupshup/") && u.contains(".sandbox-gupshup/")),
        "{figures:?}"
    );
}

/// Item 4, the claim's edges: a failed mint releases the key (a retry with it mints), and a
/// claim left by an owner that died is taken over once its lease ends (never stuck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_abandoned_links_claim_does_not_block_the_request_id() {
    let app = spawn_with(|s| {
        fast(s);
        // The claim lease (the engine's), short so the abandoned claim lapses in seconds.
        s.engine.lease_secs = 2;
    })
    .await;
    let sim = app.running().sandbox.as_ref().expect("sandbox").exotel.core().clone();
    let req = |rid: &str, reference: &str| pb::CreateOnboardingLinksRequest {
        account: "accounts/sandbox-exotel".into(),
        count: BATCH,
        reference: reference.into(),
        request_id: rid.into(),
    };

    // A mint that fails releases the claim: the retry with the same key mints.
    // 402 (plan limits, documented by Exotel): not retried, so the call fails (a 500 is retried
    // per link and would succeed).
    sim.fail_next(Some(EXOTEL_MINT), 1, wa_onboard::sim::common::Fault::Status { status: 402 });
    let failed = app.onboardings().create_onboarding_links(app.req(req("links-fail", "crm-fail"))).await;
    let retried = app.onboardings().create_onboarding_links(app.req(req("links-fail", "crm-fail"))).await;

    // An owner that claimed the key and died: its claim (the same request) is still on record.
    let running = app.running();
    let tenant = running.store.tenant_by_name("dev").await.expect("store").expect("dev tenant");
    // The core fingerprints the account's store key (`{tenant}.{id}`).
    let account_key = format!("{}.sandbox-exotel", tenant.id.as_str());
    let canonical = serde_json::json!({"account": account_key, "count": BATCH, "reference": "crm-dead"});
    let lease_until = wa_onboard::domain::now_ms() + 2_000;
    let planted = wa_onboard::store::RequestClaim {
        tenant_id: tenant.id.clone(),
        key: "links-dead".into(),
        operation: "CreateOnboardingLinks".into(),
        request_hash: running.core.fingerprint(&[canonical.to_string().as_bytes()]),
        owner: "crashed-replica/1".into(),
        lease_until_ms: lease_until,
    };
    assert_eq!(running.store.claim_request(&planted, wa_onboard::domain::now_ms()).await.expect("plant"), None);
    let mints_before = calls(&sim, EXOTEL_MINT);
    let started = Instant::now();
    let taken_over = app.onboardings().create_onboarding_links(app.req(req("links-dead", "crm-dead"))).await;
    let waited = started.elapsed();
    let answered_at = wa_onboard::domain::now_ms();
    let mints = calls(&sim, EXOTEL_MINT) - mints_before;
    let figures = vec![
        (
            "first call (mint answered 402)",
            match &failed {
                Ok(_) => "OK".into(),
                Err(s) => format!("{:?}", s.code()),
            },
        ),
        (
            "retry with the same request_id",
            match &retried {
                Ok(r) => format!("OK ({} links)", r.get_ref().onboardings.len()),
                Err(s) => format!("{:?}", s.code()),
            },
        ),
        (
            "call behind an abandoned claim",
            match &taken_over {
                Ok(r) => format!("OK ({} links)", r.get_ref().onboardings.len()),
                Err(s) => format!("{:?}", s.code()),
            },
        ),
        ("its wait", format!("{} ms", waited.as_millis())),
        ("answered after the abandoned lease ended", (answered_at >= lease_until).to_string()),
        ("mint calls it made", mints.to_string()),
    ];
    write_fragment(
        "40-hostile-links-claim-recovery.md",
        &format!(
            "### A failed or abandoned request_id claim\n\n\
             A `CreateOnboardingLinks` whose Exotel mint fails, retried with its `request_id`; and one \
             sent while a claim of its key left by a dead owner is still on record.\n\n{}",
            table(&figures)
        ),
    );
    assert!(failed.is_err(), "{figures:?}");
    assert_eq!(retried.as_ref().map(|r| r.get_ref().onboardings.len()).ok(), Some(BATCH as usize), "{figures:?}");
    assert_eq!(taken_over.as_ref().map(|r| r.get_ref().onboardings.len()).ok(), Some(BATCH as usize), "{figures:?}");
    assert!(answered_at >= lease_until, "waited for the abandoned claim's lease: {figures:?}");
    assert_eq!(mints, BATCH as u64, "one batch (a plain POST per link): {figures:?}");
}

/// DELETE calls the Whapi simulator has answered so far.
fn whapi_deletes(sim: &SimCore) -> u64 {
    sim.counters().calls.iter().filter(|(k, _)| k.starts_with("DELETE")).map(|(_, v)| *v).sum()
}

/// A sandbox server with a Whapi onboarding whose channel exists: (app, onboarding name,
/// channel name).
async fn sandbox_whapi_channel(reference: &str, channel_name: &str) -> (TestApp, String, String) {
    let app = spawn_with(fast).await;
    let key = app.key.expose().to_string();
    let name = app
        .onboardings()
        .create_onboarding(app.req(pb::CreateOnboardingRequest {
            account: "accounts/sandbox-whapi".into(),
            reference: reference.into(),
            request_id: String::new(),
            onboarding_id: String::new(),
            request: Some(pb::create_onboarding_request::Request::Whapi(pb::WhapiChannelRequest {
                channel_name: channel_name.into(),
                ..Default::default()
            })),
        }))
        .await
        .expect("CreateOnboarding")
        .into_inner()
        .name;
    let mut c = app.onboardings();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let o = get_with(&mut c, &key, &name).await;
        if let Some(pb::onboarding::Details::Whapi(w)) = &o.details
            && !w.channel_id.is_empty()
        {
            let channel = w.channel.clone();
            return (app, name, channel);
        }
        assert!(Instant::now() < deadline, "no channel: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same race on another `request_id` RPC: parallel identical `DeleteChannel` calls (one
/// `request_id`) delete once and all answer the one refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_delete_channel_with_one_request_id_deletes_once() {
    let (app, _name, channel) = sandbox_whapi_channel("crm-del", "Race Delete").await;
    let sim = app.running().sandbox.as_ref().expect("sandbox").whapi.core().clone();
    let deletes_before = whapi_deletes(&sim);
    let mut joins = Vec::new();
    for _ in 0..PARALLEL {
        let mut ch = pb::channel_service_client::ChannelServiceClient::new(app.channel.clone());
        let r = app.req(pb::DeleteChannelRequest { name: channel.clone(), request_id: "del-race-1".into() });
        joins.push(tokio::spawn(async move { ch.delete_channel(r).await.map(|r| r.into_inner()) }));
    }
    let mut results = Vec::new();
    for j in joins {
        results.push(tokio::time::timeout(PATIENCE, j).await.expect("answered").expect("task"));
    }
    let codes = code_counts(&results);
    let refunds: BTreeSet<i32> = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.refunded_days).collect();
    let deletes = whapi_deletes(&sim) - deletes_before;
    let figures = vec![
        ("identical calls sent at once", PARALLEL.to_string()),
        ("answers", show(&codes)),
        ("distinct refunds answered", refunds.len().to_string()),
        ("delete calls at Whapi", deletes.to_string()),
    ];
    write_fragment(
        "40-hostile-concurrent-delete-channel.md",
        &format!(
            "### Concurrent DeleteChannel with one request_id\n\n\
             20 identical `DeleteChannel` calls (one `request_id`) sent at once: the key is claimed \
             before Whapi is called, so the channel is deleted once and every caller gets its refund.\n\n{}",
            table(&figures)
        ),
    );
    assert_eq!(codes.get("OK").copied(), Some(PARALLEL), "{figures:?}");
    assert_eq!(refunds.len(), 1, "{figures:?}");
    assert_eq!(deletes, 1, "{figures:?}");
}

/// `CancelOnboarding` keeps its `request_id` promise: parallel identical cancels of a Whapi
/// channel (one `request_id`) cancel once at the provider and all answer the one refund; a
/// later cancel answers it too (it answered 0 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancel_onboarding_with_one_request_id_cancels_once() {
    let (app, name, _channel) = sandbox_whapi_channel("crm-cancel", "Race Cancel").await;
    let sim = app.running().sandbox.as_ref().expect("sandbox").whapi.core().clone();
    let deletes_before = whapi_deletes(&sim);
    let mut joins = Vec::new();
    for _ in 0..PARALLEL {
        let mut o = app.onboardings();
        let r = app.req(pb::CancelOnboardingRequest { name: name.clone(), request_id: "cancel-race-1".into() });
        joins.push(tokio::spawn(async move { o.cancel_onboarding(r).await.map(|r| r.into_inner()) }));
    }
    let mut results = Vec::new();
    for j in joins {
        results.push(tokio::time::timeout(PATIENCE, j).await.expect("answered").expect("task"));
    }
    let codes = code_counts(&results);
    let refunds: BTreeSet<i32> = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.refunded_days).collect();
    let deletes = whapi_deletes(&sim) - deletes_before;
    let later = app
        .onboardings()
        .cancel_onboarding(app.req(pb::CancelOnboardingRequest { name: name.clone(), request_id: String::new() }))
        .await
        .expect("a later cancel")
        .into_inner();
    let figures = vec![
        ("identical calls sent at once", PARALLEL.to_string()),
        ("answers", show(&codes)),
        ("distinct refunds answered", refunds.len().to_string()),
        ("delete calls at Whapi", deletes.to_string()),
        ("refund answered to a later cancel", later.refunded_days.to_string()),
    ];
    write_fragment(
        "40-hostile-concurrent-cancel-onboarding.md",
        &format!(
            "### Concurrent CancelOnboarding with one request_id\n\n\
             20 identical `CancelOnboarding` calls (one `request_id`) on a Whapi channel sent at once: \
             the key is claimed before Whapi is called, so the channel is cancelled once and every \
             caller, and a later cancel, gets the one refund.\n\n{}",
            table(&figures)
        ),
    );
    assert_eq!(codes.get("OK").copied(), Some(PARALLEL), "{figures:?}");
    assert_eq!(refunds.len(), 1, "{figures:?}");
    assert_eq!(deletes, 1, "{figures:?}");
    assert_eq!(Some(&later.refunded_days), refunds.iter().next(), "{figures:?}");
}
