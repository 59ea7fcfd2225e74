//! Crash recovery: the real binary, killed with SIGKILL at random points while 100
//! onboardings (all four providers) are created and run.
//!
//! - SQLite: one `serve` process, killed three times (the first kill usually lands while
//!   creates are still arriving), restarted each time on the same data dir and ports.
//! - PostgreSQL: two replicas on one schema, one of them killed; the survivor finishes.
//!
//! The simulators run in their own `wa-onboard sim` process, so they survive every kill and
//! their counters see every call any server instance ever made. The test plays the callers
//! (creates retried with the same `request_id` until answered) and the customers (Whapi QR,
//! 99digital verification code). Streams opened from sequence 0 resume with `after_sequence`
//! whenever their server dies. Nothing may be lost, nothing created twice at a provider, and
//! every onboarding must complete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use wa_onboard::grpc::pb;

use crate::common::*;

const DEV_KEY: &str = "wao_reliabilitycrashkey00000000000000000000";
const PATIENCE: Duration = Duration::from_secs(180);

const GUPSHUP: usize = 6;
const EXOTEL_BATCHES: usize = 4;
const EXOTEL_BATCH: usize = 10;
const WHAPI: usize = 12;
const DIGITAL99: usize = 42;
const TOTAL: usize = GUPSHUP + EXOTEL_BATCHES * EXOTEL_BATCH + WHAPI + DIGITAL99;

/// One `serve` process on fixed ports (so callers and provider callbacks reach its successor).
struct Server {
    proc: Proc,
    name: String,
    dir: PathBuf,
    db_url: String,
    enc_key: String,
    grpc: u16,
    webhook: u16,
}

impl Server {
    fn start(name: &str, dir: &Path, db_url: &str, enc_key: &str) -> Server {
        let (grpc, webhook) = (free_port(), free_port());
        let proc = Self::spawn(name, dir, db_url, enc_key, grpc, webhook);
        Server {
            proc,
            name: name.into(),
            dir: dir.into(),
            db_url: db_url.into(),
            enc_key: enc_key.into(),
            grpc,
            webhook,
        }
    }

    fn spawn(name: &str, dir: &Path, db_url: &str, enc_key: &str, grpc: u16, webhook: u16) -> Proc {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let mut cmd = bin();
        cmd.env("WA_ONBOARD_DEV_API_KEY", DEV_KEY)
            .env("WA_ONBOARD_DATABASE_URL", db_url)
            .env("WA_ONBOARD_DATA_DIR", &data)
            .env("WA_ONBOARD__SECURITY__ENCRYPTION_KEY", enc_key)
            .env("WA_ONBOARD__PROVIDERS__ALLOW_CUSTOM_ENDPOINTS", "true")
            .env("WA_ONBOARD__SANDBOX__ENABLED", "false")
            .env("WA_ONBOARD__ENGINE__LEASE_SECS", "2")
            .env("WA_ONBOARD__ENGINE__TICK_MS", "100")
            .env("WA_ONBOARD__ENGINE__POLL_INTERVAL_MS", "300")
            .env("WA_ONBOARD__ENGINE__RETRY_BASE_MS", "100")
            .env("WA_ONBOARD__ENGINE__RETRY_MAX_MS", "1000")
            .env("RUST_LOG", "info")
            .args([
                "serve",
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--webhook-addr",
                &format!("127.0.0.1:{webhook}"),
                "--metrics-addr",
                "127.0.0.1:0",
            ]);
        let mut proc = Proc::spawn(name, dir, &mut cmd);
        // A blocking wait on the child's stdout: keep it off the async workers.
        tokio::task::block_in_place(|| proc.listening());
        proc
    }

    fn api(&self) -> Api {
        Api::lazy(&format!("127.0.0.1:{}", self.grpc), DEV_KEY)
    }

    fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the same server again: same data dir, database, key and ports.
    fn restart(&mut self) {
        self.proc = Self::spawn(&self.name, &self.dir, &self.db_url, &self.enc_key, self.grpc, self.webhook);
    }
}

/// The four accounts, pointing at the standalone simulators.
async fn create_accounts(api: &Api, sim: &SimProc) {
    use pb::account_credentials::Credentials as C;
    use pb::account_options::Options as O;
    let accounts = [
        (
            "gupshup",
            pb::Provider::Gupshup,
            C::Gupshup(pb::GupshupCredentials {
                email: "sandbox@wa-onboard.local".into(),
                secret: "sandbox-secret".into(),
            }),
            None,
            sim.url("gupshup"),
        ),
        (
            "exotel",
            pb::Provider::Exotel,
            C::Exotel(pb::ExotelCredentials {
                account_sid: "sandbox-sg".into(),
                api_key: "sandbox-key".into(),
                api_token: "sandbox-token".into(),
            }),
            Some(O::Exotel(pb::ExotelOptions { region: pb::ExotelRegion::Singapore as i32 })),
            sim.url("exotel singapore"),
        ),
        (
            "whapi",
            pb::Provider::Whapi,
            C::Whapi(pb::WhapiCredentials { partner_token: "sandbox-partner-token".into() }),
            Some(O::Whapi(pb::WhapiOptions { project_id: "sandbox-project".into(), partner_name: "sandbox".into() })),
            sim.url("whapi manager"),
        ),
        (
            "digital99",
            pb::Provider::Digital99,
            C::Digital99(pb::Digital99Credentials {
                client_id: "sandbox-client".into(),
                client_secret: "sandbox-secret".into(),
            }),
            None,
            sim.url("99digital"),
        ),
    ];
    for (id, provider, creds, options, endpoint) in accounts {
        let req = pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: provider as i32,
                display_name: format!("Crash {id}"),
                credentials: Some(pb::AccountCredentials { credentials: Some(creds) }),
                options: Some(pb::AccountOptions { options, endpoint }),
                ..Default::default()
            }),
            account_id: id.into(),
            request_id: format!("account-{id}"),
        };
        let mut client = api.accounts();
        bounded(client.create_account(api.req(req))).await.expect("create account");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gupshup,
    Exotel,
    Whapi,
    Digital99,
}

fn plan() -> Vec<(usize, Kind)> {
    let mut p: Vec<(usize, Kind)> = Vec::new();
    let counts =
        [(Kind::Gupshup, GUPSHUP), (Kind::Exotel, EXOTEL_BATCHES), (Kind::Whapi, WHAPI), (Kind::Digital99, DIGITAL99)];
    for (kind, n) in counts {
        for _ in 0..n {
            let i = p.len();
            p.push((i, kind));
        }
    }
    p.sort_by_key(|(i, _)| (i * 7919) % 101);
    p
}

fn start_request(i: usize, kind: Kind) -> pb::CreateOnboardingRequest {
    use pb::create_onboarding_request::Request;
    let (account, request) = match kind {
        Kind::Gupshup => (
            "gupshup",
            Request::Gupshup(pb::GupshupLinkAppRequest {
                app_name: format!("CrashShop{i:03}"),
                waba_id: "104996122399160".into(),
                phone: format!("+91970{i:07}"),
                ..Default::default()
            }),
        ),
        Kind::Whapi => (
            "whapi",
            Request::Whapi(pb::WhapiChannelRequest {
                channel_name: format!("Crash Channel {i:03}"),
                project_id: String::new(),
                go_live: false,
                extend_days: 0,
            }),
        ),
        Kind::Digital99 => (
            "digital99",
            Request::Digital99(pb::Digital99LinkRequest {
                phone: format!("+97252{i:07}"),
                business_name: format!("Crash Business {i:03}"),
                display_name: format!("Crash {i:03}"),
                register_number: true,
                verification_method: pb::VerificationMethod::Sms as i32,
                ..Default::default()
            }),
        ),
        Kind::Exotel => unreachable!("batches go through CreateOnboardingLinks"),
    };
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: format!("crash-{i}"),
        request_id: format!("crash-{i}"),
        onboarding_id: String::new(),
        request: Some(request),
    }
}

/// Creates one onboarding (or a batch of links), retrying through server deaths with the
/// same `request_id`, and starts a watcher on each. `apis` are tried in turn.
async fn create(apis: &[Api], i: usize, kind: Kind, watchers: &Mutex<Vec<Watcher>>) -> u32 {
    let mut attempts = 0u32;
    loop {
        let api = &apis[attempts as usize % apis.len()];
        let r = match kind {
            Kind::Exotel => {
                let mut c = api.onboardings();
                bounded(c.create_onboarding_links(api.req(pb::CreateOnboardingLinksRequest {
                    account: "accounts/exotel".into(),
                    count: EXOTEL_BATCH as i32,
                    reference: format!("crash-batch-{i}"),
                    request_id: format!("crash-batch-{i}"),
                })))
                .await
                .map(|r| r.into_inner().onboardings.into_iter().map(|o| o.name).collect::<Vec<_>>())
            }
            _ => {
                let mut c = api.onboardings();
                bounded(c.create_onboarding(api.req(start_request(i, kind)))).await.map(|r| vec![r.into_inner().name])
            }
        };
        match r {
            Ok(names) => {
                // Watch through the replica that answered first, then the others.
                let k = attempts as usize % apis.len();
                let order: Vec<Api> = apis[k..].iter().chain(&apis[..k]).cloned().collect();
                let mut w = watchers.lock().expect("lock");
                for n in names {
                    w.push(Watcher::start_on(&order, &n));
                }
                return attempts;
            }
            Err(s) if transient(&s) => {
                attempts += 1;
                assert!(attempts < 300, "create {i} ({kind:?}) never answered: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("create {i} ({kind:?}) refused for good: {s:?}"),
        }
    }
}

/// What the run measured, for the report.
#[derive(Default)]
struct Figures {
    creates_retried: u32,
    restarts_of_stalled: u32,
    stream_resumes: u32,
    events: usize,
    orphan_links: usize,
    settle: Duration,
    per_provider: Vec<(String, String)>,
}

/// Drives every onboarding to its end (playing the customers, restarting stalled
/// pipelines), then checks nothing was lost or duplicated, at us and at the providers.
async fn settle_and_check(apis: &[Api], sim: &SimProc, watchers: &Mutex<Vec<Watcher>>, started: Instant) -> Figures {
    let mut f = Figures::default();
    let mut asked: HashMap<String, Instant> = HashMap::new();
    let mut restarts: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + PATIENCE;
    let mut turn = 0usize;
    let last = loop {
        turn += 1;
        let api = &apis[turn % apis.len()];
        let Ok(all) = api.list_all().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut pending = 0;
        for o in &all {
            let state = pb::OnboardingState::try_from(o.state).unwrap_or(pb::OnboardingState::Unspecified);
            match state {
                pb::OnboardingState::Live => continue,
                pb::OnboardingState::Stalled => {
                    let n = restarts.entry(o.name.clone()).or_default();
                    *n += 1;
                    assert!(*n <= 10, "{} stalls again and again: {}", o.name, o.state_reason);
                    let _ = api.retry_pipeline(&o.name, &format!("{}-retry-{n}", o.name)).await;
                }
                pb::OnboardingState::AwaitingCustomer
                    if Api::needs_customer(o)
                        && asked.get(&o.name).is_none_or(|t| t.elapsed() > Duration::from_secs(3)) =>
                {
                    let acted = api.play_customer(o).await.is_ok();
                    if acted {
                        asked.insert(o.name.clone(), Instant::now());
                    }
                }
                pb::OnboardingState::Failed
                | pb::OnboardingState::Expired
                | pb::OnboardingState::Cancelled
                | pb::OnboardingState::ReauthRequired => {
                    let log = api.events(&o.name).await.unwrap_or_default();
                    panic!("{} ended {state:?}: {}; events: {log:#?}", o.name, o.state_reason);
                }
                _ => {}
            }
            pending += 1;
        }
        if all.len() != TOTAL {
            let mut per_ref: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for o in &all {
                per_ref.entry(o.reference.as_str()).or_default().push(o.name.as_str());
            }
            let odd: Vec<_> = per_ref
                .iter()
                .filter(|(r, v)| v.len() != if r.starts_with("crash-batch-") { EXOTEL_BATCH } else { 1 })
                .map(|(r, v)| (r, v.len()))
                .collect();
            panic!("{} onboardings instead of {TOTAL} (lost or created twice): {odd:?}", all.len());
        }
        if pending == 0 {
            break all;
        }
        assert!(Instant::now() < deadline, "{pending} onboardings never completed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    f.settle = started.elapsed();
    f.restarts_of_stalled = restarts.values().sum();

    // One onboarding per reference (Exotel: one batch of links per reference).
    let mut per_ref: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &last {
        *per_ref.entry(o.reference.as_str()).or_default() += 1;
    }
    for (r, n) in &per_ref {
        let want = if r.starts_with("crash-batch-") { EXOTEL_BATCH } else { 1 };
        assert_eq!(*n, want, "reference {r}: {n} onboardings");
    }
    assert_eq!(per_ref.len(), GUPSHUP + EXOTEL_BATCHES + WHAPI + DIGITAL99);

    // Streams: every one delivered its log gap-free, across restarts and kills.
    let api = &apis[0];
    let watchers = std::mem::take(&mut *watchers.lock().expect("lock"));
    assert_eq!(watchers.len(), TOTAL, "a watcher per onboarding");
    for w in &watchers {
        let log = evs(&api.events(&w.name).await.expect("events"));
        f.events += log.len();
        w.assert_matches(&log, Duration::from_secs(30)).await;
        f.stream_resumes += *w.resumes.lock().expect("lock");
    }
    drop(watchers);

    // At the providers: one resource per onboarding, no rate-limit violation.
    let count = |v: &Value, kind: &str| v["created"][kind].as_u64().unwrap_or(0);
    let g = sim.counters("gupshup").await;
    let e = sim.counters("exotel singapore").await;
    let w = sim.counters("whapi manager").await;
    let d = sim.counters("99digital").await;
    for (name, c) in [("gupshup", &g), ("exotel", &e), ("whapi", &w), ("99digital", &d)] {
        assert_eq!(c["rate_limit_violations"].as_u64(), Some(0), "{name}: {c}");
    }
    assert_eq!(count(&g, "apps"), GUPSHUP as u64, "gupshup: {g}");
    assert_eq!(count(&w, "channels"), WHAPI as u64, "whapi: {w}");
    assert_eq!(count(&d, "accounts"), DIGITAL99 as u64, "99digital: {d}");
    let apps = sim.get("gupshup", "/_sim/gupshup/apps").await;
    let phones: BTreeSet<String> =
        apps.as_array().into_iter().flatten().filter_map(|a| a["phone"].as_str().map(str::to_string)).collect();
    assert_eq!(phones.len(), GUPSHUP, "one app per phone: {apps}");
    // Exotel has no lookup: a batch whose answer a kill lost is minted again; those links are
    // never handed out.
    let ours: BTreeSet<String> = last
        .iter()
        .filter_map(|o| match &o.details {
            Some(pb::onboarding::Details::Exotel(x)) => Some(x.token.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ours.len(), EXOTEL_BATCHES * EXOTEL_BATCH, "each Exotel onboarding holds its own link");
    let tokens = sim.get("exotel singapore", "/_sim/exotel/tokens").await;
    let tokens = tokens.as_array().cloned().unwrap_or_default();
    let orphans: Vec<&Value> = tokens.iter().filter(|t| !ours.contains(t["token"].as_str().unwrap_or(""))).collect();
    assert!(orphans.iter().all(|t| t["first_validated_ms"].is_null()), "an orphan link was handed out: {orphans:?}");
    assert_eq!(tokens.len() - orphans.len(), ours.len(), "every link we hold exists at Exotel");
    f.orphan_links = orphans.len();
    f.per_provider = vec![
        (
            "Gupshup apps / onboardings".into(),
            format!(
                "{} / {GUPSHUP} ({} repeat links refused and reconciled)",
                count(&g, "apps"),
                g["duplicate_creates"]
            ),
        ),
        ("Whapi channels / onboardings".into(), format!("{} / {WHAPI}", count(&w, "channels"))),
        (
            "99digital accounts / onboardings".into(),
            format!("{} / {DIGITAL99} ({} repeat creates refused)", count(&d, "accounts"), d["duplicate_creates"]),
        ),
        (
            "Exotel links minted / onboardings".into(),
            format!("{} / {}", count(&e, "links"), EXOTEL_BATCHES * EXOTEL_BATCH),
        ),
    ];
    f
}

fn seed() -> u64 {
    std::env::var("WA_ONBOARD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_killed_three_times_loses_nothing_and_creates_nothing_twice() {
    let seed = seed();
    eprintln!("crash seed {seed} (set WA_ONBOARD_CRASH_SEED to replay the kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let db = format!("sqlite:{}", dir.path().join("wa-onboard.db").display());
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let mut server = Server::start("sqlite", dir.path(), &db, &enc);
    let api = server.api();
    create_accounts(&api, &sim).await;

    let watchers: Arc<Mutex<Vec<Watcher>>> = Arc::default();
    let creator = {
        let (api, watchers) = (api.clone(), watchers.clone());
        tokio::spawn(async move {
            let apis = [api];
            let retried: Vec<u32> = futures::stream::iter(plan().into_iter().map(|(i, k)| {
                let (apis, watchers) = (&apis, &watchers);
                async move { create(apis, i, k, watchers).await }
            }))
            .buffer_unordered(4)
            .collect()
            .await;
            retried.iter().sum::<u32>()
        })
    };
    // Three SIGKILLs at random points; the first usually lands while creates still arrive.
    let mut kills = Vec::new();
    for k in 0..3 {
        let wait = Duration::from_millis(rng.random_range(if k == 0 { 200..1500 } else { 500..3000 }));
        tokio::time::sleep(wait).await;
        let made = watchers.lock().expect("lock").len();
        server.kill();
        kills.push(format!("after {} ({made} onboardings created)", secs(started.elapsed())));
        server.restart();
    }
    let creates_retried = creator.await.expect("creator");
    let mut f = settle_and_check(&[api], &sim, &watchers, started).await;
    f.creates_retried = creates_retried;
    report(
        "20-crash-recovery-sqlite.md",
        "SQLite: one server, killed three times (`crash::sqlite_server_killed_three_times_loses_nothing_and_creates_nothing_twice`)",
        "`wa-onboard serve` on SQLite is sent SIGKILL three times at random points (the first while the 100 creates are \
         still arriving, 4 at a time), and restarted on the same data dir and ports each time.",
        seed,
        &kills,
        &f,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_killed_mid_run_the_survivor_finishes_everything() {
    let Some(base) = pg_base() else { return };
    let seed = seed();
    eprintln!("crash seed {seed} (set WA_ONBOARD_CRASH_SEED to replay the kill time)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let db = wa_onboard::store::postgres::create_test_schema(&base)
        .await
        .expect("PostgreSQL must be reachable for the test suite");
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let a = Server::start("a", dir.path(), &db, &enc);
    let mut b = Server::start("b", dir.path(), &db, &enc);
    let apis = [a.api(), b.api()];
    create_accounts(&apis[0], &sim).await;

    let watchers: Arc<Mutex<Vec<Watcher>>> = Arc::default();
    let creator = {
        let (apis, watchers) = (apis.clone(), watchers.clone());
        tokio::spawn(async move {
            let retried: Vec<u32> = futures::stream::iter(plan().into_iter().map(|(i, k)| {
                // Half the callers go to each replica; a caller whose replica died moves on.
                let apis: Vec<Api> = if i % 2 == 0 { apis.to_vec() } else { apis.iter().rev().cloned().collect() };
                let watchers = &watchers;
                async move { create(&apis, i, k, watchers).await }
            }))
            .buffer_unordered(4)
            .collect()
            .await;
            retried.iter().sum::<u32>()
        })
    };
    let wait = Duration::from_millis(rng.random_range(500..3000));
    tokio::time::sleep(wait).await;
    let made = watchers.lock().expect("lock").len();
    b.kill();
    let kills = vec![format!("replica b after {} ({made} onboardings created)", secs(started.elapsed()))];
    let creates_retried = creator.await.expect("creator");
    // The survivor serves everything from here on (callers and provider callbacks that went
    // to b fail; polling covers them).
    let survivor = [apis[0].clone()];
    let mut f = settle_and_check(&survivor, &sim, &watchers, started).await;
    f.creates_retried = creates_retried;
    report(
        "21-crash-recovery-postgres.md",
        "PostgreSQL: two replicas, one killed (`crash::postgres_replica_killed_mid_run_the_survivor_finishes_everything`)",
        "Two `wa-onboard serve` replicas share one PostgreSQL schema; callers spread the 100 creates over both; one \
         replica is sent SIGKILL at a random point and stays dead. Its leases lapse (2 s) and the survivor takes its \
         steps over; callers and streams on the dead replica move to the survivor.",
        seed,
        &kills,
        &f,
        started.elapsed(),
    );
    drop(a);
    drop(b);
    wa_onboard::store::postgres::drop_schema(&db).await.ok();
}

fn report(file: &str, title: &str, injects: &str, seed: u64, kills: &[String], f: &Figures, total: Duration) {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "onboardings (Gupshup / Exotel links / Whapi / 99digital)",
            format!("{TOTAL} ({GUPSHUP} / {} / {WHAPI} / {DIGITAL99})", EXOTEL_BATCHES * EXOTEL_BATCH),
        ),
        ("kills", kills.join("; ")),
        ("seed", seed.to_string()),
        ("completed LIVE", TOTAL.to_string()),
        ("creates answered only after a retry (server down)", f.creates_retried.to_string()),
        ("stalled pipelines restarted with RetryPipeline", f.restarts_of_stalled.to_string()),
        ("stream resumes (after_sequence) / events matched", format!("{} / {}", f.stream_resumes, f.events)),
        ("Exotel links minted but never handed out", f.orphan_links.to_string()),
        ("time until all completed", secs(f.settle)),
        ("whole test", secs(total)),
    ];
    for (k, v) in &f.per_provider {
        rows.push((k.as_str(), v.clone()));
    }
    write_fragment(
        file,
        &format!(
            "### {title}\n\n**Injects**: {injects}\n\n**Checks**: exactly {TOTAL} onboardings exist (one per reference; \
             one batch of {EXOTEL_BATCH} per Exotel reference), every one completes `LIVE`, every stream (opened from \
             sequence 0 and resumed after each kill) delivers its event log gap-free, each provider holds one app / \
             channel / account per onboarding, and no documented rate limit was exceeded.\n\n{}",
            table(&rows)
        ),
    );
}
