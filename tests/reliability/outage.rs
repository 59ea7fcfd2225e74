//! Store outage: the connection to PostgreSQL is cut for ~20 s (a TCP proxy between the
//! service and PostgreSQL drops every connection and refuses new ones) while callers keep
//! creating and reading onboardings and the providers keep calling back.
//!
//! While it lasts: health reports NOT_SERVING, every RPC that needs the store fails with
//! `UNAVAILABLE` within its bound (no hang, no panic), and the webhook ingress answers 5xx so
//! the provider retries. Once it is back: health is SERVING again, the callers' retries (same
//! `request_id`) are accepted once each, and every onboarding completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use wa_onboard::grpc::pb;

use crate::common::*;
use crate::helpers::*;

/// Panics anywhere in this process while the outage test runs (a panic inside a server task
/// would not fail the test by itself).
static PANICS: AtomicU32 = AtomicU32::new(0);

fn outage_len() -> Duration {
    let secs = std::env::var("WA_ONBOARD_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

fn exotel_request(i: usize) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/sandbox-exotel".into(),
        reference: format!("load-{i}"),
        request_id: format!("load-{i}"),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Exotel(pb::ExotelLinkRequest {})),
    }
}

fn gupshup_request(i: usize) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/sandbox-gupshup".into(),
        reference: format!("before-{i}"),
        request_id: format!("before-{i}"),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: format!("OutageShop{i:02}"),
            waba_id: "104996122399160".into(),
            phone: format!("+91960{i:07}"),
            ..Default::default()
        })),
    }
}

/// What the callers saw during the run.
#[derive(Default)]
struct Calls {
    ok: u32,
    unavailable: u32,
    other: Vec<String>,
    slowest_failure: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_for_twenty_seconds_under_load_refuses_cleanly_and_resumes() {
    let Some(base) = pg_base() else { return };
    let started = Instant::now();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let schema_url = wa_onboard::store::postgres::create_test_schema(&base)
        .await
        .expect("PostgreSQL must be reachable for the test suite");
    let parsed = url::Url::parse(&schema_url).expect("url");
    let target = format!("{}:{}", parsed.host_str().expect("host"), parsed.port().unwrap_or(5432));
    let (proxy, cut) = cuttable_proxy(target).await;
    let mut via_proxy = parsed.clone();
    let (h, p) = proxy.split_once(':').expect("host:port");
    via_proxy.set_host(Some(h)).expect("host");
    via_proxy.set_port(Some(p.parse().expect("port"))).expect("port");
    let app = spawn_with(|s| {
        s.database.url = via_proxy.to_string();
        s.sandbox.enabled = true;
        // Gupshup apps go live (and call back) a few seconds in: during the outage.
        s.sandbox.sims.gupshup.stage_ms = 1500;
        s.sandbox.sims.exotel.customer_delay_ms = 300;
        s.engine.tick_ms = 50;
        s.engine.poll_interval_ms = 300;
        s.engine.retry_base_ms = 50;
        s.engine.retry_max_ms = 1000;
    })
    .await;
    let api = Api { channel: app.channel.clone(), key: app.key.expose().to_string() };
    let sandbox = app.running().sandbox.as_ref().expect("sandbox");
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let check = |svc: &str| tonic_health::pb::HealthCheckRequest { service: svc.into() };
    assert_eq!(health.check(check("")).await.expect("health").into_inner().status, ServingStatus::Serving as i32);
    // The ingress URL the Gupshup sandbox account hands to the provider (only `CreateAccount`
    // returns it, so read it where the service keeps it).
    let running = app.running();
    let dev = running.store.tenant_by_name("dev").await.expect("store").expect("dev tenant").id;
    let record = running
        .store
        .account_unscoped(&wa_onboard::domain::AccountId::scoped(&dev, "sandbox-gupshup").expect("id"))
        .await
        .expect("store")
        .expect("sandbox account");
    let webhook_url = running.core.webhook_url(&record).expect("webhook url");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http");
    // A well-formed Gupshup account event for an app nobody knows: stored and ignored when
    // the store is up, refused with a 5xx while it is down.
    let callback = serde_json::json!({
        "app": "Unknown App", "timestamp": 1_700_000_000_000_i64, "version": 2, "type": "account-event",
        "payload": {"type": "live", "payload": {}}, "gs_app_id": "00000000-0000-0000-0000-000000000000"
    });

    // ---- before: Gupshup onboardings whose apps will go live (and call back) mid-outage.
    let mut names = Vec::new();
    for i in 0..8 {
        let mut c = api.onboardings();
        names.push(bounded(c.create_onboarding(api.req(gupshup_request(i)))).await.expect("create").into_inner().name);
    }
    let before_callbacks = sandbox.gupshup.core().counters().callbacks_failed;

    // ---- load: a caller creating and reading all along, pacing 250 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (api, stop, first) = (api.clone(), stop.clone(), names[0].clone());
        tokio::spawn(async move {
            let mut calls = Calls::default();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let mut c = api.onboardings();
                let created = bounded(c.create_onboarding(api.req(exotel_request(i)))).await;
                let read = bounded(c.get_onboarding(api.req(pb::GetOnboardingRequest { name: first.clone() }))).await;
                for r in [created.map(|_| ()), read.map(|_| ())] {
                    match r {
                        Ok(()) => calls.ok += 1,
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            calls.unavailable += 1;
                            calls.slowest_failure = calls.slowest_failure.max(t.elapsed());
                        }
                        Err(s) => calls.other.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (calls, i)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // ---- the outage.
    let outage = outage_len();
    let cut_at = Instant::now();
    cut.store(true, Ordering::SeqCst);
    let down = eventually("health NOT_SERVING", Duration::from_secs(30), || {
        let mut health = health.clone();
        async move {
            let s = health.check(check("wa.onboard.v1.OnboardingService")).await.ok()?.into_inner().status;
            (s == ServingStatus::NotServing as i32).then(Instant::now)
        }
    })
    .await;
    let detect = down - cut_at;
    // The ingress refuses provider callbacks with a 5xx, so the provider retries later.
    let r = http.post(&webhook_url).json(&callback).send().await.expect("ingress answers");
    assert!(r.status().is_server_error(), "webhook during the outage: {}", r.status());
    let webhook_status_down = r.status().as_u16();
    let remaining = outage.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(remaining).await;
    let sim_refused = sandbox.gupshup.core().counters().callbacks_failed - before_callbacks;

    // ---- back.
    cut.store(false, Ordering::SeqCst);
    let restored_at = Instant::now();
    let up = eventually("health SERVING again", Duration::from_secs(60), || {
        let mut health = health.clone();
        async move {
            let s = health.check(check("")).await.ok()?.into_inner().status;
            (s == ServingStatus::Serving as i32).then(Instant::now)
        }
    })
    .await;
    let recover = up - restored_at;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (calls, sent) = load.await.expect("load task");
    assert!(calls.other.is_empty(), "only UNAVAILABLE while the store is down: {:?}", calls.other);
    assert!(calls.unavailable > 0, "the load met the outage");
    let r = http.post(&webhook_url).json(&callback).send().await.expect("ingress answers");
    assert!(r.status().is_success(), "webhook after the outage: {}", r.status());

    // ---- every create the caller ever sent is accepted exactly once on retry.
    for i in 0..sent {
        let mut c = api.onboardings();
        let name = eventually("a create retried after the outage", Duration::from_secs(60), || {
            let req = api.req(exotel_request(i));
            let mut c = c.clone();
            async move { bounded(c.create_onboarding(req)).await.ok().map(|r| r.into_inner().name) }
        })
        .await;
        c.get_onboarding(api.req(pb::GetOnboardingRequest { name: name.clone() })).await.expect("get");
        names.push(name);
    }
    let all = api.list_all().await.expect("list");
    assert_eq!(all.len(), names.len(), "one onboarding per request, none lost, none doubled");

    // ---- and everything completes.
    for name in &names {
        eventually(&format!("{name} LIVE"), Duration::from_secs(90), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let mut c = api.onboardings();
                let o = bounded(c.get_onboarding(api.req(pb::GetOnboardingRequest { name }))).await.ok()?.into_inner();
                (o.state == pb::OnboardingState::Live as i32).then_some(())
            }
        })
        .await;
        let log = evs(&api.events(name).await.expect("events"));
        assert_gap_free(&log, name);
    }
    let apps = sandbox.gupshup.core().counters().created.get("apps").copied();
    assert_eq!(apps, Some(8), "one Gupshup app per onboarding");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no panic anywhere in the process");
    let total = started.elapsed();
    wa_onboard::store::postgres::drop_schema(&schema_url).await.ok();

    write_fragment(
        "30-store-outage.md",
        &format!(
            "### PostgreSQL connection cut under load (`outage::postgres_cut_for_twenty_seconds_under_load_refuses_cleanly_and_resumes`)\n\n\
             **Injects**: a TCP proxy between the service and PostgreSQL drops every connection and refuses new ones for {} \
             (`WA_ONBOARD_OUTAGE_SECS`), while a caller creates an Exotel onboarding and reads one every 250 ms and 8 Gupshup \
             apps go live at the simulator (their callbacks hit the ingress mid-outage).\n\n\
             **Checks**: health goes NOT_SERVING and comes back SERVING; every RPC during the outage fails with `UNAVAILABLE` \
             within its bound (no other code, no hang, no panic in the process); the ingress answers a provider callback with a \
             5xx during the outage and 200 after; every create the caller sent is accepted exactly once when retried with its \
             `request_id`; every onboarding then completes `LIVE` with a gap-free event log. Runs in CI.\n\n{}",
            secs(outage),
            table(&[
                ("outage", secs(outage)),
                ("health NOT_SERVING after the cut", secs(detect)),
                ("health SERVING after the restore", secs(recover)),
                ("RPCs answered OK / UNAVAILABLE during the run", format!("{} / {}", calls.ok, calls.unavailable)),
                (
                    "slowest UNAVAILABLE answer (create + read pair)",
                    format!("{} ms", calls.slowest_failure.as_millis())
                ),
                ("other error codes", calls.other.len().to_string()),
                ("webhook answer during / after", format!("{webhook_status_down} / 200")),
                ("provider callbacks refused during the outage (simulator count)", sim_refused.to_string()),
                ("onboardings completed LIVE afterwards", names.len().to_string()),
                ("whole test", secs(total)),
            ])
        ),
    );
}
