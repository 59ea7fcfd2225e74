//! Fault injection: 200 onboardings across all four simulators at once while every provider
//! call may fail (20 % 5xx, 10 % 429 of which half carry `Retry-After`, 5 % time out, half
//! of those after the effect) and callbacks are duplicated (10 %) and reordered (10 %).
//!
//! The built-in adapters run against the in-process simulators, with the documented limits
//! kept (counts) but their windows shortened on both sides so the run fits CI, and an HTTP
//! timeout short enough that held answers time out quickly. The test plays the callers: it
//! retries refused creates with the same `request_id`, fetches Whapi connect codes, and calls
//! `RetryPipeline` on an onboarding that exhausted a step's attempts (`STALLED`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wa_onboard::grpc::pb;
use wa_onboard::providers::ProviderRegistry;
use wa_onboard::sim::common::{CallbackFaults, Counters, FaultRates, Knobs};

use crate::common::*;
use crate::helpers::*;

/// How long the whole run may take before the test fails (it normally needs far less).
const PATIENCE: Duration = Duration::from_secs(240);
/// Adapter HTTP timeout; injected timeouts hold the answer longer.
const HTTP_TIMEOUT: Duration = Duration::from_millis(1000);
const TIMEOUT_HOLD_MS: u64 = 1500;

const GUPSHUP_LIVE: usize = 45;
const GUPSHUP_FAILING: usize = 5;
const EXOTEL_BATCHES: usize = 5;
const EXOTEL_BATCH: usize = 10;
const WHAPI: usize = 50;
const DIGITAL99: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// Linked, provisioned, live; every fifth also subscribes on live.
    GupshupLive { subscribe: bool },
    /// The simulator fails the pipeline of `+1555000…` phones: `FAILED`.
    GupshupFailing,
    /// A link from a batch; the sandbox customer uses it: `LIVE`.
    Exotel,
    /// A channel the sandbox customer connects once a QR is fetched: `LIVE` (trial).
    WhapiTrial,
    /// The same, then switched to live mode with one extra day.
    WhapiGoLive,
    /// The number registered and verified (the test submits the code), then an onboarding
    /// account the sandbox business finishes: `LIVE`.
    Digital99,
}

impl Scenario {
    fn expected(self) -> pb::OnboardingState {
        match self {
            Scenario::GupshupFailing => pb::OnboardingState::Failed,
            _ => pb::OnboardingState::Live,
        }
    }
}

/// The built-in adapters with a short HTTP timeout, an in-process limiter, and the Gupshup
/// link and Whapi create windows shortened (same counts as documented; the simulators' windows
/// are shorter still, so only a client that really bursts past the limit is refused).
fn registry() -> ProviderRegistry {
    use wa_onboard::domain::ProviderKind;
    use wa_onboard::providers::builtin::{AdapterDeps, registry};
    use wa_onboard::providers::gupshup::{GupshupLimits, GupshupProvider, Limit};
    use wa_onboard::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
    use wa_onboard::providers::whapi::{WhapiConfig, WhapiProvider};
    let deps = AdapterDeps {
        http: HttpClient::new(HttpTimeouts { connect: HTTP_TIMEOUT, total: HTTP_TIMEOUT }).expect("http client"),
        limiter: RateLimiter::in_memory(),
        retry: RetryPolicy::default(),
        poll_interval: Duration::from_millis(300),
    };
    let mut r = registry(&deps);
    let limits =
        GupshupLimits { link: Limit { max: 10, window: Duration::from_millis(1500) }, ..GupshupLimits::default() };
    let gdeps = deps.clone();
    r.register(
        ProviderKind::Gupshup,
        Arc::new(move |_ctx| {
            Ok(Arc::new(GupshupProvider::with_limits(gdeps.clone(), limits))
                as Arc<dyn wa_onboard::providers::Provider>)
        }),
    );
    let config = WhapiConfig {
        create_window: Duration::from_millis(1500),
        restart_grace: Duration::from_millis(300),
        restart_wait: Duration::from_secs(10),
        code_wait: Duration::from_secs(5),
        wait_step: Duration::from_millis(100),
        ..WhapiConfig::default()
    };
    r.register(
        ProviderKind::Whapi,
        Arc::new(move |_ctx| {
            Ok(Arc::new(WhapiProvider::new(&deps).with_config(config.clone()))
                as Arc<dyn wa_onboard::providers::Provider>)
        }),
    );
    r
}

fn settings(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = true;
    let sims = &mut s.sandbox.sims;
    sims.gupshup.stage_ms = 300;
    sims.gupshup.ticker_ms = 50;
    sims.gupshup.limits.link = wa_onboard::sim::gupshup::LimitSpec { max: 10, window_ms: 1000 };
    sims.exotel.customer_delay_ms = 300;
    sims.whapi.launch_ms = 200;
    sims.whapi.scan_delay_ms = 300;
    sims.whapi.restart_ms = 300;
    sims.whapi.tick_ms = 50;
    sims.whapi.create_window_secs = 1;
    sims.digital99.finish_delay_ms = 500;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 300;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 1000;
    s.engine.lease_secs = 10;
}

fn fault_knobs() -> Knobs {
    Knobs {
        rates: FaultRates { server_error: 0.20, too_many_requests: 0.10, retry_after_share: 0.5, timeout: 0.05 },
        callbacks: CallbackFaults { duplicate_rate: 0.10, reorder_rate: 0.10, duplicate_next: 0 },
        timeout_hold_ms: TIMEOUT_HOLD_MS,
        ..Knobs::default()
    }
}

/// One create (or batch of links) as the caller sends it, retried on transient errors with
/// the same `request_id`. Returns the onboardings' names and how many retries it took.
async fn create(api: &Api, i: usize, sc: Scenario) -> (Vec<(String, Scenario)>, u32) {
    let mut retries = 0;
    loop {
        let r = match sc {
            Scenario::Exotel => {
                bounded(api.onboardings().create_onboarding_links(api.req(pb::CreateOnboardingLinksRequest {
                    account: "accounts/sandbox-exotel".into(),
                    count: EXOTEL_BATCH as i32,
                    reference: format!("exotel-batch-{i}"),
                    request_id: format!("exotel-batch-{i}"),
                })))
                .await
                .map(|r| r.into_inner().onboardings.into_iter().map(|o| (o.name, sc)).collect())
            }
            _ => {
                let req = start_request(i, sc);
                bounded(api.onboardings().create_onboarding(api.req(req)))
                    .await
                    .map(|r| vec![(r.into_inner().name, sc)])
            }
        };
        match r {
            Ok(names) => return (names, retries),
            Err(s) if transient(&s) => {
                retries += 1;
                assert!(retries < 50, "create {i} ({sc:?}) keeps failing: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("create {i} ({sc:?}) refused for good: {s:?}"),
        }
    }
}

fn start_request(i: usize, sc: Scenario) -> pb::CreateOnboardingRequest {
    use pb::create_onboarding_request::Request;
    let (account, request) = match sc {
        Scenario::GupshupLive { subscribe } => (
            "sandbox-gupshup",
            Request::Gupshup(pb::GupshupLinkAppRequest {
                app_name: format!("FaultShop{i:03}"),
                waba_id: "104996122399160".into(),
                phone: format!("+91980{i:07}"),
                subscribe_on_live: subscribe,
                subscription: subscribe.then(|| pb::SubscriptionSpec {
                    url: "https://crm.example.test/wa/events".into(),
                    events: vec!["SENT".into(), "DELIVERED".into()],
                    tag: "crm".into(),
                    version: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        Scenario::GupshupFailing => (
            "sandbox-gupshup",
            Request::Gupshup(pb::GupshupLinkAppRequest {
                app_name: format!("FailingShop{i:03}"),
                waba_id: "104996122399160".into(),
                phone: format!("+1555000{i:04}"),
                ..Default::default()
            }),
        ),
        Scenario::WhapiTrial | Scenario::WhapiGoLive => {
            let live = sc == Scenario::WhapiGoLive;
            (
                "sandbox-whapi",
                Request::Whapi(pb::WhapiChannelRequest {
                    channel_name: format!("Fault Channel {i:03}"),
                    project_id: String::new(),
                    go_live: live,
                    extend_days: i32::from(live),
                }),
            )
        }
        Scenario::Digital99 => (
            "sandbox-digital99",
            Request::Digital99(pb::Digital99LinkRequest {
                phone: format!("+97250{i:07}"),
                business_name: format!("Fault Business {i:03}"),
                display_name: format!("Fault {i:03}"),
                register_number: true,
                verification_method: pb::VerificationMethod::Sms as i32,
                ..Default::default()
            }),
        ),
        Scenario::Exotel => unreachable!("batches go through CreateOnboardingLinks"),
    };
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: format!("fault-{i}"),
        request_id: format!("fault-{i}"),
        onboarding_id: String::new(),
        request: Some(request),
    }
}

fn plan() -> Vec<(usize, Scenario)> {
    let mut p = Vec::new();
    let mut i = 0;
    let mut push = |sc: Scenario, n: usize| {
        for _ in 0..n {
            p.push((i, sc));
            i += 1;
        }
    };
    for k in 0..GUPSHUP_LIVE {
        push(Scenario::GupshupLive { subscribe: k % 5 == 0 }, 1);
    }
    push(Scenario::GupshupFailing, GUPSHUP_FAILING);
    push(Scenario::Exotel, EXOTEL_BATCHES);
    push(Scenario::WhapiTrial, WHAPI / 2);
    push(Scenario::WhapiGoLive, WHAPI - WHAPI / 2);
    push(Scenario::Digital99, DIGITAL99);
    // Interleave providers so every simulator is busy at once.
    p.sort_by_key(|(i, _)| (i * 7919) % 211);
    p
}

fn settled(o: &pb::Onboarding, sc: Scenario) -> bool {
    if o.state != sc.expected() as i32 {
        return false;
    }
    match (sc, &o.details) {
        (Scenario::GupshupLive { subscribe: true }, Some(pb::onboarding::Details::Gupshup(g))) => {
            !g.created_subscription.is_empty()
        }
        (Scenario::GupshupLive { .. } | Scenario::GupshupFailing, _) => true,
        _ => true,
    }
}

fn counters_row(name: &str, c: &Counters) -> String {
    let calls: u64 = c.calls.values().sum();
    let created: Vec<String> = c.created.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "| {name} | {calls} | {} | {} | {} | {} | {} | {} |\n",
        c.faults_injected,
        created.join(", "),
        c.duplicate_creates,
        c.rate_limit_violations,
        c.callbacks_sent,
        c.callbacks_failed
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_onboardings_under_provider_and_callback_faults_end_as_their_scenarios_dictate() {
    let started = Instant::now();
    let app = spawn_with_providers(settings, Some(registry())).await;
    let sandbox = app.running().sandbox.as_ref().expect("sandbox simulators");
    for core in [sandbox.gupshup.core(), sandbox.exotel.core(), sandbox.whapi.core(), sandbox.digital99.core()] {
        core.set_knobs(fault_knobs());
    }
    let api = Api { channel: app.channel.clone(), key: app.key.expose().to_string() };

    // ---- create everything, 16 callers at a time, each retrying refusals with its request_id.
    let plan = plan();
    let created: Vec<(Vec<(String, Scenario)>, u32)> =
        futures::stream::iter(plan.iter().map(|(i, sc)| create(&api, *i, *sc))).buffer_unordered(16).collect().await;
    let create_retries: u32 = created.iter().map(|(_, r)| r).sum();
    let expected: BTreeMap<String, Scenario> = created.into_iter().flat_map(|(n, _)| n).collect();
    let total = GUPSHUP_LIVE + GUPSHUP_FAILING + EXOTEL_BATCHES * EXOTEL_BATCH + WHAPI + DIGITAL99;
    assert_eq!(expected.len(), total, "every create answered with distinct onboardings");
    let watchers: Vec<Watcher> = expected.keys().map(|n| Watcher::start(&api, n)).collect();

    // ---- drive: fetch connect codes, restart stalled pipelines, until every onboarding settles.
    let mut code_asked: HashMap<String, Instant> = HashMap::new();
    let mut retried: BTreeMap<String, u32> = BTreeMap::new();
    let mut connect_codes = 0u32;
    let deadline = Instant::now() + PATIENCE;
    let last = loop {
        let all = match api.list_all().await {
            Ok(all) => all,
            Err(_) => continue,
        };
        let mut pending = Vec::new();
        for o in &all {
            let sc = *expected.get(&o.name).unwrap_or_else(|| panic!("unexpected onboarding {}", o.name));
            let state = pb::OnboardingState::try_from(o.state).unwrap_or(pb::OnboardingState::Unspecified);
            if settled(o, sc) {
                continue;
            }
            pending.push(o.clone());
            match state {
                pb::OnboardingState::Stalled => {
                    let n = retried.entry(o.name.clone()).or_default();
                    *n += 1;
                    assert!(*n <= 10, "{} stalls again and again: {}", o.name, o.state_reason);
                    let _ = api.retry_pipeline(&o.name, &format!("{}-retry-{n}", o.name)).await;
                }
                pb::OnboardingState::AwaitingCustomer
                    if Api::needs_customer(o)
                        && code_asked.get(&o.name).is_none_or(|t| t.elapsed() > Duration::from_secs(3)) =>
                {
                    let acted = api.play_customer(o).await.is_ok();
                    if acted {
                        connect_codes += 1;
                        code_asked.insert(o.name.clone(), Instant::now());
                    }
                }
                s if s != sc.expected()
                    && matches!(
                        s,
                        pb::OnboardingState::Failed
                            | pb::OnboardingState::Expired
                            | pb::OnboardingState::Cancelled
                            | pb::OnboardingState::ReauthRequired
                    ) =>
                {
                    let log = api.events(&o.name).await.unwrap_or_default();
                    panic!("{} ({sc:?}) ended {s:?}: {}; events: {log:#?}", o.name, o.state_reason);
                }
                _ => {}
            }
        }
        assert_eq!(all.len(), total, "no onboarding lost or created twice");
        if pending.is_empty() {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{} onboardings never settled, e.g. {:#?}",
            pending.len(),
            pending.iter().take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let settled_after = started.elapsed();

    // ---- streams: each delivered its onboarding's event log, gap-free and in order.
    let mut step_retries = 0usize;
    let mut stale_callbacks = 0usize;
    let mut resumes = 0u32;
    let mut events_total = 0usize;
    for w in &watchers {
        let log = api.events(&w.name).await.expect("events");
        step_retries += log.iter().filter(|e| e.r#type == "step_retry").count();
        stale_callbacks += log.iter().filter(|e| e.attributes.get("stale").is_some_and(|v| v == "true")).count();
        events_total += log.len();
        w.assert_matches(&evs(&log), Duration::from_secs(30)).await;
        resumes += *w.resumes.lock().expect("lock");
    }
    assert_eq!(resumes, 0, "no stream broke while the server ran");

    // Held (reordered) callbacks go out within 2 s; let them land before reading counters.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (g, e, w, d) = (&sandbox.gupshup, &sandbox.exotel, &sandbox.whapi, &sandbox.digital99);
    let (gc, ec, wc, dc) = (g.core().counters(), e.core().counters(), w.core().counters(), d.core().counters());
    for (name, c) in [("gupshup", &gc), ("exotel", &ec), ("whapi", &wc), ("99digital", &dc)] {
        assert_eq!(c.rate_limit_violations, 0, "{name}: {:?}", c.violations_by_limit);
        assert!(c.faults_injected > 0, "{name}: faults were injected");
    }

    // ---- nothing created twice at any provider.
    let of = |sc: fn(Scenario) -> bool| last.iter().filter(|o| sc(expected[&o.name])).collect::<Vec<_>>();
    // Gupshup: one app per onboarding (phone); a repeat after a lost answer was refused
    // (`duplicate_creates`) and reconciled to the same app.
    let gupshup = of(|s| matches!(s, Scenario::GupshupLive { .. } | Scenario::GupshupFailing));
    let apps = g.apps();
    assert_eq!(gc.created.get("apps").copied(), Some(gupshup.len() as u64), "{gc:?}");
    assert_eq!(apps.iter().map(|a| a.phone.clone()).collect::<BTreeSet<_>>().len(), gupshup.len());
    let subscribed =
        gupshup.iter().filter(|o| matches!(expected[&o.name], Scenario::GupshupLive { subscribe: true })).count();
    assert_eq!(apps.iter().map(|a| a.subscriptions).sum::<usize>(), subscribed, "one subscription per subscriber");
    assert_eq!(apps.iter().filter(|a| a.failed).count(), GUPSHUP_FAILING);
    // Whapi: one channel per onboarding; the go-live day added once.
    let whapi = of(|s| matches!(s, Scenario::WhapiTrial | Scenario::WhapiGoLive));
    assert_eq!(wc.created.get("channels").copied(), Some(whapi.len() as u64), "{wc:?}");
    let channels: HashMap<String, i64> = w.channels().into_iter().map(|c| (c.id, c.extended_days)).collect();
    assert_eq!(channels.len(), whapi.len());
    for o in &whapi {
        let Some(pb::onboarding::Details::Whapi(d)) = &o.details else { panic!("whapi details of {}", o.name) };
        let extra = i64::from(expected[&o.name] == Scenario::WhapiGoLive);
        assert_eq!(channels.get(&d.channel_id), Some(&extra), "{}: days added exactly once", o.name);
    }
    // 99digital: one onboarding account per number.
    assert_eq!(dc.created.get("accounts").copied(), Some(DIGITAL99 as u64), "{dc:?}");
    assert_eq!(d.accounts().len(), DIGITAL99);
    // Exotel has no lookup: a mint whose answer was lost is repeated and its link is never
    // handed out. Each onboarding holds its own link, used by its customer; no orphan link
    // was ever used.
    let exotel = of(|s| s == Scenario::Exotel);
    let tokens: HashMap<String, wa_onboard::sim::exotel::TokenView> =
        e.tokens().into_iter().map(|t| (t.token.clone(), t)).collect();
    let mut ours = BTreeSet::new();
    for o in &exotel {
        let Some(pb::onboarding::Details::Exotel(x)) = &o.details else { panic!("exotel details of {}", o.name) };
        assert!(ours.insert(x.token.clone()), "{}: link shared with another onboarding", o.name);
        let t = tokens.get(&x.token).unwrap_or_else(|| panic!("{}: link unknown to Exotel", o.name));
        assert_eq!(t.status, wa_onboard::sim::exotel::TokenStatus::Used, "{}", o.name);
    }
    let orphans: Vec<_> = tokens.values().filter(|t| !ours.contains(&t.token)).collect();
    assert!(orphans.iter().all(|t| t.first_validated_ms.is_none()), "an orphan link was handed out: {orphans:?}");
    let mut per_batch: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &exotel {
        *per_batch.entry(o.reference.as_str()).or_default() += 1;
    }
    assert_eq!(per_batch.len(), EXOTEL_BATCHES, "{per_batch:?}");
    assert!(per_batch.values().all(|n| *n == EXOTEL_BATCH), "each batch holds its links once: {per_batch:?}");
    let elapsed = started.elapsed();

    // ---- the report fragment.
    let mut counters = String::from(
        "| simulator | calls | faults injected | created | repeat creates refused (reconciled) | rate-limit violations | callbacks sent | callbacks refused |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (name, c) in [("Gupshup", &gc), ("Exotel", &ec), ("Whapi.Cloud", &wc), ("99digital", &dc)] {
        counters.push_str(&counters_row(name, c));
    }
    let by_state = |st: pb::OnboardingState| last.iter().filter(|o| o.state == st as i32).count();
    write_fragment(
        "10-fault-injection.md",
        &format!(
            "### Fault injection (`faults::two_hundred_onboardings_under_provider_and_callback_faults_end_as_their_scenarios_dictate`)\n\n\
             **Injects**, at all four in-process simulators at once: 20 % of provider calls answered 5xx (500/502/503), \
             10 % answered 429 (half with `Retry-After: 1`), 5 % held {TIMEOUT_HOLD_MS} ms against a {} ms adapter timeout \
             (half after the effect: the resource exists, the answer is lost); 10 % of callbacks delivered twice and 10 % held back \
             behind the next one. Scenario: {GUPSHUP_LIVE} Gupshup links (every fifth subscribing on live), {GUPSHUP_FAILING} Gupshup \
             links whose pipeline fails, {EXOTEL_BATCHES} Exotel batches of {EXOTEL_BATCH} links, {WHAPI} Whapi channels (half going live \
             with one extra day), {DIGITAL99} 99digital numbers registered, verified and linked; the Gupshup link and Whapi create limits keep their counts with windows \
             shortened at both ends.\n\n\
             **Checks**: every onboarding ends in its scenario's state; each provider holds exactly one resource per onboarding; \
             zero rate-limit violations; every `WatchOnboarding` stream (one per onboarding, from sequence 0) delivers the \
             event log gap-free and in order.\n\n{}\n{counters}",
            HTTP_TIMEOUT.as_millis(),
            table(&[
                ("onboardings", last.len().to_string()),
                (
                    "ended LIVE / FAILED (as scripted)",
                    format!("{} / {}", by_state(pb::OnboardingState::Live), by_state(pb::OnboardingState::Failed))
                ),
                ("time to settle all", secs(settled_after)),
                ("whole test", secs(elapsed)),
                ("create RPCs refused and retried by the caller", create_retries.to_string()),
                ("step retries (engine, `step_retry` events)", step_retries.to_string()),
                (
                    "onboardings STALLED after max attempts, restarted with RetryPipeline",
                    format!("{} ({} restarts)", retried.len(), retried.values().sum::<u32>())
                ),
                ("Whapi connect codes fetched and 99digital codes submitted by the test", connect_codes.to_string()),
                ("stale (out-of-order) callbacks recorded without a state change", stale_callbacks.to_string()),
                ("events streamed and matched against the log", events_total.to_string()),
                (
                    "Exotel links minted but never handed out (lost answers; Exotel has no lookup)",
                    orphans.len().to_string()
                ),
            ])
        ),
    );
    drop(watchers);
}
