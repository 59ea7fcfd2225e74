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
    assert_eq!(mints, 1, "one mint at Exotel: {figures:?}");
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

async fn get_with(c: &mut pb::onboarding_service_client::OnboardingServiceClient<Channel>, key: &str, name: &str) -> pb::Onboarding {
    c.get_onboarding(with_key(pb::GetOnboardingRequest { name: name.into() }, key))
        .await
        .expect("GetOnboarding")
        .into_inner()
}

fn is_finished(state: i32) -> bool {
    [pb::OnboardingState::Live, pb::OnboardingState::Failed, pb::OnboardingState::Stalled, pb::OnboardingState::Cancelled]
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
                [pb::StepState::Succeeded, pb::StepState::Skipped, pb::StepState::Failed].iter().any(|x| *x as i32 == s.state)
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
        .create_onboarding(app.req(link_request("sandbox-gupshup", "Acme Race Subs", "+919811100011")))
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
