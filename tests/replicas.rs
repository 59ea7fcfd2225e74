//! Three `wa-onboard serve` processes on one PostgreSQL schema and one standalone simulator
//! process (`wa-onboard sim`), all talking over real sockets:
//!
//! - an onboarding created on replica A, whose live callback the simulator delivers to replica
//!   B's ingress, watched on replica C: all three agree on every event;
//! - the replica holding a step's lease while the provider call is in flight is killed with
//!   SIGKILL: its lease lapses, a survivor finishes the onboarding, and the provider holds the
//!   app once.
//!
//! The PostgreSQL server is required (the suite fails rather than skips when it is down), as for
//! every other PostgreSQL test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::transport::Channel;
use wa_onboard::domain::{OnboardingId, now_ms};
use wa_onboard::grpc::pb;

#[allow(dead_code)]
#[path = "common/child.rs"]
mod child;
use child::{Proc, SERVE_ANY_PORT, bin, sim_endpoints};

const DEV_KEY: &str = "wao_replicatestkey000000000000000000000000";
const WAIT: Duration = Duration::from_secs(60);

/// One `serve` process and its clients.
struct Replica {
    proc: Proc,
    pid: u32,
    channel: Channel,
    webhook: String,
}

/// Settings every replica shares, through the documented environment overrides.
fn replica_command(dir: &Path, db_url: &str, key: &str, public_webhook: Option<&str>) -> Command {
    let mut cmd = bin();
    cmd.env("WA_ONBOARD_DEV_API_KEY", DEV_KEY)
        .env("WA_ONBOARD_DATABASE_URL", db_url)
        .env("WA_ONBOARD_DATA_DIR", dir)
        .env("WA_ONBOARD__SECURITY__ENCRYPTION_KEY", key)
        .env("WA_ONBOARD__PROVIDERS__ALLOW_CUSTOM_ENDPOINTS", "true")
        .env("WA_ONBOARD__SANDBOX__ENABLED", "false")
        .env("WA_ONBOARD__ENGINE__LEASE_SECS", "2")
        .env("WA_ONBOARD__ENGINE__TICK_MS", "100")
        .env("WA_ONBOARD__ENGINE__POLL_INTERVAL_MS", "500")
        .env("WA_ONBOARD__ENGINE__RETRY_BASE_MS", "100")
        .env("WA_ONBOARD__ENGINE__RETRY_MAX_MS", "1000")
        .env("RUST_LOG", "info")
        .args(SERVE_ANY_PORT);
    if let Some(url) = public_webhook {
        cmd.env("WA_ONBOARD__SERVER__PUBLIC_WEBHOOK_URL", url);
    }
    cmd
}

async fn start_replica(name: &str, dir: &Path, db_url: &str, key: &str, public_webhook: Option<&str>) -> Replica {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("data dir");
    let mut proc = Proc::spawn(name, dir, &mut replica_command(&data, db_url, key, public_webhook));
    let at = proc.listening();
    let channel = Channel::from_shared(format!("http://{}", at.grpc)).expect("uri").connect().await.expect("connect");
    let pid = proc.child.id();
    Replica { proc, pid, channel, webhook: format!("http://{}", at.webhooks) }
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {DEV_KEY}").parse().expect("header"));
    r
}

impl Replica {
    fn onboardings(&self) -> pb::onboarding_service_client::OnboardingServiceClient<Channel> {
        pb::onboarding_service_client::OnboardingServiceClient::new(self.channel.clone())
    }

    async fn get(&self, name: &str) -> pb::Onboarding {
        self.onboardings()
            .get_onboarding(req(pb::GetOnboardingRequest { name: name.into() }))
            .await
            .expect("get")
            .into_inner()
    }

    /// The whole event log as (sequence, type, state).
    async fn events(&self, name: &str) -> Vec<(i64, String, i32)> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .onboardings()
                .list_onboarding_events(req(pb::ListOnboardingEventsRequest {
                    name: name.into(),
                    page_size: 100,
                    page_token,
                }))
                .await
                .expect("events")
                .into_inner();
            out.extend(page.events.into_iter().map(|e| (e.sequence, e.r#type, e.state)));
            if page.next_page_token.is_empty() {
                return out;
            }
            page_token = page.next_page_token;
        }
    }

    /// Watches `name` from `after` until `state`; returns every event sequence and state seen.
    async fn watch_until(&self, name: &str, after: i64, state: pb::OnboardingState) -> Vec<(i64, i32)> {
        let mut stream = self
            .onboardings()
            .watch_onboarding(req(pb::WatchOnboardingRequest { name: name.into(), after_sequence: after }))
            .await
            .expect("watch")
            .into_inner();
        let mut seen = Vec::new();
        let done = tokio::time::timeout(WAIT, async {
            while let Ok(Some(msg)) = stream.message().await {
                if let Some(pb::watch_onboarding_response::Message::Event(e)) = msg.message {
                    seen.push((e.sequence, e.state));
                    if e.state == state as i32 {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(
            done,
            "{}: {name} never reached {state:?}; seen {seen:?}; log:\n{}",
            self.proc.name,
            self.proc.log_tail()
        );
        seen
    }
}

struct Sim {
    _proc: Proc,
    gupshup: String,
    http: reqwest::Client,
}

impl Sim {
    fn start(dir: &Path) -> Sim {
        // Linked apps stay at INITIAL until the test starts their pipeline, so the test decides
        // when an onboarding can go live; stages are short once started.
        let mut cmd = bin();
        cmd.env("WA_ONBOARD__SANDBOX__SIMS__GUPSHUP__SANDBOX", "false")
            .env("WA_ONBOARD__SANDBOX__SIMS__GUPSHUP__STAGE_MS", "200")
            .env("WA_ONBOARD__SANDBOX__SIMS__GUPSHUP__TICKER_MS", "50")
            .env("WA_ONBOARD_DATA_DIR", dir)
            .args(["sim", "--base-port", "0"]);
        let mut proc = Proc::spawn("sim", dir, &mut cmd);
        let gupshup = sim_endpoints(&proc.wait_for("99digital")).remove("gupshup").expect("gupshup endpoint line");
        Sim { _proc: proc, gupshup, http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.gupshup));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("sim control call");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json::<Value>().await.unwrap_or(Value::Null)
    }

    async fn counters(&self) -> Value {
        self.call(reqwest::Method::GET, "/_sim/counters", None).await
    }

    async fn apps(&self) -> Vec<Value> {
        match self.call(reqwest::Method::GET, "/_sim/gupshup/apps", None).await {
            Value::Array(a) => a,
            other => panic!("apps: {other}"),
        }
    }

    async fn start_pipeline(&self, app_id: &str) {
        self.call(reqwest::Method::POST, &format!("/_sim/gupshup/apps/{app_id}/start"), None).await;
    }
}

fn link_request(app_name: &str, phone: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/replicated".into(),
        reference: app_name.into(),
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

fn app_id_of(o: &pb::Onboarding) -> String {
    match &o.details {
        Some(pb::onboarding::Details::Gupshup(g)) => g.app_id.clone(),
        other => panic!("no gupshup details: {other:?}"),
    }
}

fn assert_gap_free(seen: &[(i64, i32)], after: i64, what: &str) {
    let seqs: Vec<i64> = seen.iter().map(|(s, _)| *s).collect();
    let expected: Vec<i64> = (after + 1..after + 1 + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "{what}: stream sequences must be contiguous");
}

/// Polls until `f` yields a value (a step lease, an app at the simulator...).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_and_a_killed_lease_holder_loses_nothing() {
    let base = std::env::var("WA_ONBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if base == "skip" {
        eprintln!("SKIPPING PostgreSQL test (WA_ONBOARD_TEST_DATABASE_URL=skip)");
        return;
    }
    let db_url = wa_onboard::store::postgres::create_test_schema(&base)
        .await
        .expect("PostgreSQL must be reachable for the test suite");
    let dir = tempfile::tempdir().expect("tempdir");
    // The replicas share the encryption key as they would share a Kubernetes Secret.
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();

    let sim = Sim::start(dir.path());
    // B first: its ingress is the public webhook URL every replica hands to the provider, as a
    // load balancer's would be; which replica gets the callback is then B's, by construction.
    let b = start_replica("b", dir.path(), &db_url, &key, None).await;
    let a = start_replica("a", dir.path(), &db_url, &key, Some(&b.webhook)).await;
    let c = start_replica("c", dir.path(), &db_url, &key, Some(&b.webhook)).await;
    let mut replicas = vec![a, b, c];

    // The Gupshup account (created on A) points at the standalone simulator.
    let account = pb::account_service_client::AccountServiceClient::new(replicas[0].channel.clone())
        .create_account(req(pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: pb::Provider::Gupshup as i32,
                display_name: "Replicated partner".into(),
                credentials: Some(pb::AccountCredentials {
                    credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                        email: "sandbox@wa-onboard.local".into(),
                        secret: "sandbox-secret".into(),
                    })),
                }),
                options: Some(pb::AccountOptions { endpoint: sim.gupshup.clone(), ..Default::default() }),
                ..Default::default()
            }),
            account_id: "replicated".into(),
            request_id: String::new(),
        }))
        .await
        .expect("create account")
        .into_inner();
    assert!(
        account.webhook_url.starts_with(&replicas[1].webhook),
        "{} vs {}",
        account.webhook_url,
        replicas[1].webhook
    );

    // ---- 1. Created on A, callback to B, watched on C: all agree.
    let one = replicas[0]
        .onboardings()
        .create_onboarding(req(link_request("ReplicaOne", "+919800000001")))
        .await
        .expect("create on A")
        .into_inner();
    let watched_on_c = {
        let c = &replicas[2];
        let name = one.name.clone();
        let app = eventually("the first app at the simulator", || async {
            let o = c.get(&name).await;
            let id = app_id_of(&o);
            (o.state == pb::OnboardingState::Provisioning as i32 && !id.is_empty()).then_some(id)
        })
        .await;
        let apps = sim.apps().await;
        let at_sim = apps.iter().find(|x| x["appId"] == app.as_str()).expect("app at the simulator");
        let callback = at_sim["callbackUrl"].as_str().unwrap_or_default();
        assert!(callback.starts_with(&replicas[1].webhook), "the provider calls B back: {at_sim}");
        // The test plays Meta: the pipeline runs and the simulator calls B's ingress.
        sim.start_pipeline(&app).await;
        c.watch_until(&one.name, 0, pb::OnboardingState::Live).await
    };
    assert_gap_free(&watched_on_c, 0, "C's stream");
    let counters = sim.counters().await;
    assert!(counters["callbacks_sent"].as_u64().unwrap_or(0) >= 1, "{counters}");
    assert_eq!(counters["callbacks_failed"].as_u64(), Some(0), "B accepted every callback: {counters}");
    let stored = wa_onboard::store::open(&db_url).await.expect("store");
    let db = sqlx::PgPool::connect(&db_url).await.expect("pool");
    // B stored the callback before answering it; some replica's engine then applied it.
    eventually("B's callback stored and applied", || async {
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM webhook_events").fetch_all(&db).await.ok()?;
        (!statuses.is_empty() && statuses.iter().all(|s| s == "PROCESSED" || s == "IGNORED")).then_some(())
    })
    .await;
    // The log is complete once every step is done (LIVE comes before the step's own record).
    let dev = stored.tenant_by_name("dev").await.expect("store").expect("dev tenant").id;
    let one_id = OnboardingId::scoped(&dev, one.name.trim_start_matches("onboardings/")).expect("onboarding id");
    eventually("the first pipeline done", || async {
        let steps = stored.steps(&one_id).await.ok()?;
        steps.iter().all(|s| s.state.is_done()).then_some(())
    })
    .await;
    let logs = {
        let mut logs = Vec::new();
        for r in &replicas {
            let o = r.get(&one.name).await;
            assert_eq!(o.state, pb::OnboardingState::Live as i32, "{} sees LIVE", r.proc.name);
            logs.push(r.events(&one.name).await);
        }
        logs
    };
    assert!(logs.windows(2).all(|w| w[0] == w[1]), "every replica reads the same event log: {logs:?}");
    // The stream carried exactly the log's events, in order, up to LIVE.
    let log_states: Vec<(i64, i32)> = logs[0].iter().map(|(s, _, st)| (*s, *st)).collect();
    assert_eq!(watched_on_c[..], log_states[..watched_on_c.len()], "C's stream against the log");

    // ---- 2. SIGKILL the replica that holds the link step's lease while the create is in flight.
    // The simulator performs the next link and then holds the answer, so the holder is
    // mid-step: the app exists at the provider, the replica has not recorded it.
    sim.call(reqwest::Method::PUT, "/_sim/knobs", Some(json!({"timeout_hold_ms": 120_000}))).await;
    sim.call(
        reqwest::Method::POST,
        "/_sim/fail",
        Some(json!({"endpoint": "POST /partner/tpp/app", "fault": {"kind": "timeout", "after_effect": true}})),
    )
    .await;
    let two = replicas[0]
        .onboardings()
        .create_onboarding(req(link_request("ReplicaTwo", "+919800000002")))
        .await
        .expect("create")
        .into_inner();
    let two_id = OnboardingId::scoped(&dev, two.name.trim_start_matches("onboardings/")).expect("onboarding id");
    let holder_pid = eventually("a replica mid-way through link_app", || async {
        let steps = stored.steps(&two_id).await.ok()?;
        let link = steps.into_iter().find(|s| s.name == "link_app")?;
        let owner = link.lease_owner.filter(|_| link.lease_until_ms.is_some_and(|u| u > now_ms()))?;
        let in_flight = sim.apps().await.iter().any(|x| x["phone"].as_str().is_some_and(|p| p.ends_with("9800000002")));
        in_flight.then(|| owner.split('-').next().and_then(|p| p.parse::<u32>().ok())).flatten()
    })
    .await;
    let killed = replicas.iter().position(|r| r.pid == holder_pid).expect("the lease holder is one of the replicas");
    let mut dead = replicas.remove(killed);
    dead.proc.kill();
    eprintln!("killed replica {} (pid {holder_pid}) holding link_app", dead.proc.name);

    // A survivor takes the lapsed lease, links again (the provider answers that the app exists
    // and names it), and carries on; the test then lets the provider finish provisioning.
    let survivor = &replicas[0];
    let app_two = eventually("the second onboarding past link_app", || async {
        let o = survivor.get(&two.name).await;
        let id = app_id_of(&o);
        (!id.is_empty()).then_some(id)
    })
    .await;
    sim.start_pipeline(&app_two).await;
    let seen = survivor.watch_until(&two.name, 0, pb::OnboardingState::Live).await;
    assert_gap_free(&seen, 0, "the survivor's stream");
    eventually("the second pipeline done", || async {
        let steps = stored.steps(&two_id).await.ok()?;
        steps.iter().all(|s| s.state.is_done()).then_some(())
    })
    .await;
    for r in &replicas {
        assert_eq!(r.get(&two.name).await.state, pb::OnboardingState::Live as i32, "{} sees LIVE", r.proc.name);
    }
    assert_eq!(replicas[0].events(&two.name).await, replicas[1].events(&two.name).await);

    // The provider holds each app once: two onboardings, two apps, one per phone.
    let apps = sim.apps().await;
    let mut per_phone: BTreeMap<String, usize> = BTreeMap::new();
    for app in &apps {
        *per_phone.entry(app["phone"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    assert_eq!(per_phone.values().copied().collect::<Vec<_>>(), vec![1, 1], "{apps:?}");
    let counters = sim.counters().await;
    assert_eq!(counters["created"]["apps"].as_u64(), Some(2), "{counters}");
    let link_step =
        stored.steps(&two_id).await.expect("steps").into_iter().find(|s| s.name == "link_app").expect("step");
    assert!(link_step.attempts >= 2, "the survivor redid the step: {link_step:?}");
    drop(replicas);
    drop(dead);
    db.close().await;
    wa_onboard::store::postgres::drop_schema(&db_url).await.ok();
}
