//! Delivery fault suite (issue 19, "Tests (CI)"): the real binary sends webhooks to local
//! axum receivers that misbehave, while real onboardings (Gupshup links through the standalone
//! simulators) write the events.
//!
//! - A receiver down (connection refused) for `WA_ONBOARD_DELIVERY_OUTAGE_SECS` (default 60),
//!   then answering 500 to 30 % of requests and too slowly (beyond the delivery timeout) to 10 %.
//! - The server on SQLite SIGKILLed mid-delivery and restarted on the same data.
//! - Two replicas on PostgreSQL, one SIGKILLed mid-delivery; the survivor finishes.
//! - Lost acknowledgements: a receiver that processes the first request of every event but
//!   answers only after the delivery timeout, so every event is delivered twice.
//!
//! Every test has two tenants, each with its own destination and receiver. Checks: every event
//! of the log accepted at least once; per onboarding the FIRST acceptances come in sequence
//! order; every request of one event carries the same `webhook-id` (the CloudEvent `id`) and the
//! same body; every signature verifies; a receiver sees only its own tenant's onboardings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use wa_onboard::delivery::signing::{SigningSecret, read_headers, verify};
use wa_onboard::domain::{Secret, now_ms};
use wa_onboard::grpc::pb;

use crate::common::*;

const DEV_KEY: &str = "wao_reliabilitydeliverykey000000000000000000";
const PATIENCE: Duration = Duration::from_secs(240);
/// Per-attempt timeout of the servers; a "slow" answer takes twice as long.
const TIMEOUT_MS: u64 = 1000;

fn outage_len() -> Duration {
    let secs = std::env::var("WA_ONBOARD_DELIVERY_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// One `serve` process on fixed ports, with a fast delivery worker and a short retry schedule.
struct Server {
    proc: Proc,
    name: String,
    dir: PathBuf,
    db_url: String,
    enc_key: String,
    grpc: u16,
}

impl Server {
    fn start(name: &str, dir: &Path, db_url: &str, enc_key: &str) -> Server {
        let grpc = free_port();
        let proc = Self::spawn(name, dir, db_url, enc_key, grpc);
        Server { proc, name: name.into(), dir: dir.into(), db_url: db_url.into(), enc_key: enc_key.into(), grpc }
    }

    fn env<'a>(
        cmd: &'a mut std::process::Command,
        data: &Path,
        db_url: &str,
        enc_key: &str,
    ) -> &'a mut std::process::Command {
        cmd.env("WA_ONBOARD_DEV_API_KEY", DEV_KEY)
            .env("WA_ONBOARD_DATABASE_URL", db_url)
            .env("WA_ONBOARD_DATA_DIR", data)
            .env("WA_ONBOARD__SECURITY__ENCRYPTION_KEY", enc_key)
    }

    fn spawn(name: &str, dir: &Path, db_url: &str, enc_key: &str, grpc: u16) -> Proc {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let mut cmd = bin();
        Self::env(&mut cmd, &data, db_url, enc_key)
            .env("WA_ONBOARD__PROVIDERS__ALLOW_CUSTOM_ENDPOINTS", "true")
            .env("WA_ONBOARD__SANDBOX__ENABLED", "false")
            .env("WA_ONBOARD__ENGINE__LEASE_SECS", "2")
            .env("WA_ONBOARD__ENGINE__TICK_MS", "100")
            .env("WA_ONBOARD__ENGINE__POLL_INTERVAL_MS", "300")
            .env("WA_ONBOARD__ENGINE__RETRY_BASE_MS", "100")
            .env("WA_ONBOARD__ENGINE__RETRY_MAX_MS", "1000")
            .env("WA_ONBOARD__DELIVERY__ALLOW_LOOPBACK", "true")
            .env("WA_ONBOARD__DELIVERY__TICK_MS", "50")
            .env("WA_ONBOARD__DELIVERY__TIMEOUT_MS", TIMEOUT_MS.to_string())
            // Short and long enough: each wait is drawn in [0.5, 1.5) x its step, so 33
            // retries wait about 2 minutes in all (at least 1 in practice): a delivery
            // outlasts a 60 s outage, and a first retry comes within 1.5 s.
            .env("WA_ONBOARD__DELIVERY__RETRY_SCHEDULE_SECS", format!("[1, 1, 2, {}]", ["4"; 30].join(", ")))
            .env("RUST_LOG", "info")
            .args([
                "serve",
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--webhook-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ]);
        let mut proc = Proc::spawn(name, dir, &mut cmd);
        tokio::task::block_in_place(|| proc.listening());
        proc
    }

    fn api(&self) -> Api {
        Api::lazy(&format!("127.0.0.1:{}", self.grpc), DEV_KEY)
    }

    /// A second tenant, made with the CLI on the same store; its API key.
    fn create_tenant(&self, tenant: &str) -> String {
        let mut cmd = bin();
        let out = Self::env(&mut cmd, &self.dir.join(&self.name), &self.db_url, &self.enc_key)
            .args(["tenant", "create", tenant])
            .output()
            .expect("tenant create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace().find(|w| w.starts_with("wao_")).expect("key printed").to_string()
    }

    fn kill(&mut self) {
        self.proc.kill();
    }

    fn restart(&mut self) {
        self.proc = Self::spawn(&self.name, &self.dir, &self.db_url, &self.enc_key, self.grpc);
    }
}

/// How a receiver misbehaves once it listens.
#[derive(Clone, Copy)]
struct Faults {
    /// Share of requests answered 500.
    fail: f64,
    /// Share of requests answered after twice the delivery timeout (the sender gave up).
    slow: f64,
    /// Delay of every other answer.
    delay: Duration,
    /// The first request of every event id is processed (recorded as accepted on arrival)
    /// but answered only after twice the delivery timeout: the acknowledgement is lost and
    /// the sender delivers the event again.
    late_first: bool,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    webhook_id: String,
    body_id: String,
    onboarding: String,
    sequence: i64,
    signature_valid: bool,
    accepted: bool,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    secret: Arc<Mutex<Option<SigningSecret>>>,
    /// Event ids that reached the receiver at least once.
    ids: Arc<Mutex<BTreeSet<String>>>,
}

impl Receiver {
    /// A receiver on a port reserved now, listening only after `down` (connection refused
    /// until then).
    fn start(down: Duration, faults: Faults) -> Receiver {
        let port = free_port();
        let r = Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            seen: Arc::default(),
            secret: Arc::default(),
            ids: Arc::default(),
        };
        let state = r.clone();
        tokio::spawn(async move {
            tokio::time::sleep(down).await;
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move { state.handle(faults, headers, body).await }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the reserved port");
            axum::serve(listener, app).await.expect("receiver");
        });
        r
    }

    async fn handle(&self, faults: Faults, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
        let signed = read_headers(|n| headers.get(n).and_then(|v| v.to_str().ok()));
        let signature_valid = match (&signed, self.secret.lock().expect("lock").as_ref()) {
            (Ok(s), Some(secret)) => verify(&[secret], s, &body, now_ms() / 1000).is_ok(),
            _ => false,
        };
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let roll: f64 = rand::rng().random();
        let body_id = event["id"].as_str().unwrap_or_default().to_string();
        let first = self.ids.lock().expect("lock").insert(body_id.clone());
        let seen = |accepted| Seen {
            webhook_id: signed.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            body_id: body_id.clone(),
            onboarding: event["data"]["onboarding"].as_str().unwrap_or_default().to_string(),
            sequence: event["data"]["sequence"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
            signature_valid,
            accepted,
            body: body.to_vec(),
        };
        if faults.late_first && first {
            // Processed on arrival; the answer comes after the sender gave up.
            self.seen.lock().expect("lock").push(seen(true));
            tokio::time::sleep(Duration::from_millis(2 * TIMEOUT_MS)).await;
            return StatusCode::NO_CONTENT;
        }
        let (status, wait) = if roll < faults.fail {
            (StatusCode::INTERNAL_SERVER_ERROR, faults.delay)
        } else if roll < faults.fail + faults.slow {
            (StatusCode::NO_CONTENT, Duration::from_millis(2 * TIMEOUT_MS))
        } else {
            (StatusCode::NO_CONTENT, faults.delay)
        };
        let accepted = status.is_success() && wait < Duration::from_millis(TIMEOUT_MS);
        let seen = seen(accepted);
        if accepted {
            // Recorded before answering, after the delay: the sender cannot claim the next
            // event of the onboarding before this answer reaches it, so the log order is the
            // order of first acceptance.
            tokio::time::sleep(wait).await;
            self.seen.lock().expect("lock").push(seen);
        } else {
            self.seen.lock().expect("lock").push(seen);
            tokio::time::sleep(wait).await;
        }
        status
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// (onboarding, sequence) pairs accepted at least once, in order of first acceptance.
    fn firsts(&self) -> Vec<(String, i64)> {
        let mut done = BTreeSet::new();
        let mut out = Vec::new();
        for s in self.seen().into_iter().filter(|s| s.accepted) {
            if done.insert((s.onboarding.clone(), s.sequence)) {
                out.push((s.onboarding, s.sequence));
            }
        }
        out
    }
}

/// A tenant of the test: its API, receiver and onboardings.
struct Tenant {
    tag: &'static str,
    api: Api,
    receiver: Receiver,
    onboardings: usize,
}

impl Tenant {
    async fn setup(tag: &'static str, api: Api, sim: &SimProc, receiver: Receiver, onboardings: usize) -> Tenant {
        let req = pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: pb::Provider::Gupshup as i32,
                display_name: format!("Delivery {tag}"),
                credentials: Some(pb::AccountCredentials {
                    credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                        email: "sandbox@wa-onboard.local".into(),
                        secret: "sandbox-secret".into(),
                    })),
                }),
                options: Some(pb::AccountOptions { options: None, endpoint: sim.url("gupshup") }),
                ..Default::default()
            }),
            account_id: "gupshup".into(),
            request_id: format!("account-{tag}"),
        };
        bounded(api.accounts().create_account(api.req(req))).await.expect("create account");
        let mut client = pb::delivery_service_client::DeliveryServiceClient::new(api.channel.clone());
        let created = bounded(client.create_destination(api.req(pb::CreateDestinationRequest {
            destination: Some(pb::Destination {
                display_name: format!("receiver {tag}"),
                sink: Some(pb::destination::Sink::Webhook(pb::WebhookSink {
                    url: receiver.url.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        })))
        .await
        .expect("create destination")
        .into_inner();
        let secret = SigningSecret::parse(&Secret::new(created.signing_secret)).expect("signing secret");
        *receiver.secret.lock().expect("lock") = Some(secret);
        Tenant { tag, api, receiver, onboardings }
    }

    /// Creates the onboardings (retrying through a server kill with the same request id).
    async fn create_onboardings(&self, apis: &[Api], offset: usize) {
        for i in 0..self.onboardings {
            let n = offset + i;
            let req = pb::CreateOnboardingRequest {
                account: "accounts/gupshup".into(),
                reference: format!("{}-{i}", self.tag),
                request_id: format!("{}-{i}", self.tag),
                onboarding_id: String::new(),
                request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
                    app_name: format!("DeliveryShop{n:03}"),
                    waba_id: "104996122399160".into(),
                    phone: format!("+91950{n:07}"),
                    ..Default::default()
                })),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            for turn in 0.. {
                let api = apis[turn % apis.len()].with_key(&self.api.key);
                match bounded(api.onboardings().create_onboarding(api.req(req.clone()))).await {
                    Ok(_) => break,
                    Err(s) if transient(&s) && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(s) => panic!("create {}: {s}", req.reference),
                }
            }
        }
    }

    /// Waits until every onboarding is LIVE and every event of every log was accepted, then
    /// checks order, ids, signatures and isolation. Returns (events, requests) seen.
    async fn settle_and_check(&self, apis: &[Api]) -> (usize, usize) {
        let logs: BTreeMap<String, Vec<i64>> =
            eventually(&format!("{}: every onboarding LIVE", self.tag), PATIENCE, || async {
                for a in apis {
                    let api = a.with_key(&self.api.key);
                    let Ok(all) = api.list_all().await else { continue };
                    if all.len() != self.onboardings || all.iter().any(|o| o.state != pb::OnboardingState::Live as i32)
                    {
                        return None;
                    }
                    let mut logs = BTreeMap::new();
                    for o in &all {
                        let Ok(log) = api.events(&o.name).await else { return None };
                        logs.insert(o.name.clone(), log.iter().map(|e| e.sequence).collect());
                    }
                    return Some(logs);
                }
                None
            })
            .await;
        let total: usize = logs.values().map(Vec::len).sum();
        eventually(&format!("{}: every event accepted", self.tag), PATIENCE, || async {
            let firsts: BTreeSet<(String, i64)> = self.receiver.firsts().into_iter().collect();
            logs.iter().all(|(o, seqs)| seqs.iter().all(|s| firsts.contains(&(o.clone(), *s)))).then_some(())
        })
        .await;
        let seen = self.receiver.seen();
        let firsts = self.receiver.firsts();
        for (o, seqs) in &logs {
            let order: Vec<i64> = firsts.iter().filter(|(f, _)| f == o).map(|(_, s)| *s).collect();
            assert_eq!(&order[..seqs.len()], &seqs[..], "{}: {o}: first acceptances out of sequence order", self.tag);
        }
        let mut ids: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
        let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for s in &seen {
            let body = bodies.entry(s.webhook_id.as_str()).or_insert(s.body.as_slice());
            assert!(
                *body == s.body.as_slice(),
                "{}: every request of {} carries the same body",
                self.tag,
                s.webhook_id
            );
            assert!(logs.contains_key(&s.onboarding), "{}: received another tenant's event {s:?}", self.tag);
            assert!(s.signature_valid, "{}: signature did not verify: {s:?}", self.tag);
            assert_eq!(s.webhook_id, s.body_id, "{}: webhook-id is the CloudEvent id", self.tag);
            ids.entry((s.onboarding.clone(), s.sequence)).or_default().insert(s.webhook_id.clone());
        }
        for (k, v) in &ids {
            assert_eq!(v.len(), 1, "{}: {k:?}: every duplicate carries the same webhook-id: {v:?}", self.tag);
        }
        (total, seen.len())
    }
}

impl Api {
    fn with_key(&self, key: &str) -> Api {
        Api { channel: self.channel.clone(), key: key.to_string() }
    }
}

/// Counts of what a receiver saw: (requests, accepted, duplicates of an accepted event).
fn counts(r: &Receiver) -> (usize, usize, usize) {
    let seen = r.seen();
    let accepted = seen.iter().filter(|s| s.accepted).count();
    (seen.len(), accepted, accepted - r.firsts().len())
}

struct Figures {
    kills: String,
    events: usize,
    requests: usize,
    accepted: usize,
    duplicates: usize,
    other_events: usize,
    other_requests: usize,
    total: Duration,
}

fn report(file: &str, title: &str, injects: &str, f: &Figures) {
    let rows = [
        ("onboardings (tenant A / tenant B)", "4 / 2 Gupshup links".to_string()),
        ("disruption", f.kills.clone()),
        ("tenant A events / requests received / accepted", format!("{} / {} / {}", f.events, f.requests, f.accepted)),
        ("tenant A events accepted more than once (at-least-once duplicates)", f.duplicates.to_string()),
        ("tenant B events / requests received", format!("{} / {}", f.other_events, f.other_requests)),
        ("whole test", secs(f.total)),
    ];
    write_fragment(
        file,
        &format!(
            "### {title}\n\n**Injects**: {injects}\n\n**Checks**: two tenants, each with its own webhook destination \
             and receiver: every event of every log accepted at least once; per onboarding the first acceptances \
             come in sequence order; every request of one event carries the same `webhook-id` (= the CloudEvent \
             `id`); every Standard Webhooks signature verifies; no receiver sees another tenant's event.\n\n{}",
            table(&rows)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_flaky_every_event_arrives_in_order_signed() {
    let started = Instant::now();
    let down = outage_len();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let db = format!("sqlite:{}", dir.path().join("wa-onboard.db").display());
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let server = Server::start("outage", dir.path(), &db, &enc);
    let other_key = server.create_tenant("other");
    let flaky = Faults { fail: 0.3, slow: 0.1, delay: Duration::ZERO, late_first: false };
    let a = Tenant::setup("a", server.api(), &sim, Receiver::start(down, flaky), 4).await;
    let b =
        Tenant::setup("b", server.api().with_key(&other_key), &sim, Receiver::start(Duration::ZERO, flaky), 2).await;
    let apis = [server.api()];
    a.create_onboardings(&apis, 0).await;
    b.create_onboardings(&apis, 10).await;
    let (events, requests) = a.settle_and_check(&apis).await;
    assert!(started.elapsed() >= down, "the check cannot pass before the receiver listens");
    let (other_events, other_requests) = b.settle_and_check(&apis).await;
    let (_, accepted, duplicates) = counts(&a.receiver);
    report(
        "11-delivery-receiver-outage.md",
        "Webhook receiver down, then flaky (`delivery::receiver_down_then_flaky_every_event_arrives_in_order_signed`)",
        &format!(
            "`wa-onboard serve` on SQLite; tenant A's receiver refuses connections for the first {} \
             (`WA_ONBOARD_DELIVERY_OUTAGE_SECS`), then both receivers answer 500 to 30 % of requests and answer 10 % \
             only after twice the 1 s delivery timeout; retry steps 1, 1, 2, then 4 s (each wait 0.5 to 1.5 x its step).",
            secs(down)
        ),
        &Figures {
            kills: format!("receiver A down {}", secs(down)),
            events,
            requests,
            accepted,
            duplicates,
            other_events,
            other_requests,
            total: started.elapsed(),
        },
    );
}

/// Waits until tenant A's receiver has accepted `n` events (the kill then lands mid-delivery).
async fn accepted_at_least(r: &Receiver, n: usize) {
    eventually("deliveries under way", PATIENCE, || async { (r.firsts().len() >= n).then_some(()) }).await;
}

/// Slow, flaky receivers: deliveries are still going when the kill lands.
const SLOW_FLAKY: Faults = Faults { fail: 0.3, slow: 0.0, delay: Duration::from_millis(150), late_first: false };

/// Receivers that lose the acknowledgement of the first request of every event.
const LATE_ACKS: Faults = Faults { fail: 0.0, slow: 0.0, delay: Duration::ZERO, late_first: true };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_duplicate_every_event_with_the_same_id_body_and_order() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let db = format!("sqlite:{}", dir.path().join("wa-onboard.db").display());
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let server = Server::start("late", dir.path(), &db, &enc);
    let other_key = server.create_tenant("other");
    let a = Tenant::setup("a", server.api(), &sim, Receiver::start(Duration::ZERO, LATE_ACKS), 4).await;
    let b = Tenant::setup("b", server.api().with_key(&other_key), &sim, Receiver::start(Duration::ZERO, LATE_ACKS), 2)
        .await;
    let apis = [server.api()];
    a.create_onboardings(&apis, 0).await;
    b.create_onboardings(&apis, 10).await;
    let (events, _) = a.settle_and_check(&apis).await;
    let (other_events, _) = b.settle_and_check(&apis).await;
    // Every event is processed at least twice: the lost acknowledgement's request and the
    // retry. The settle above saw each first one; wait for the retries of the last ones,
    // then check ids, bodies and order again over everything.
    for (r, n) in [(&a.receiver, events), (&b.receiver, other_events)] {
        eventually("every event delivered twice", PATIENCE, || async { (counts(r).2 >= n).then_some(()) }).await;
    }
    tokio::time::sleep(Duration::from_millis(2 * TIMEOUT_MS)).await;
    let (_, requests) = a.settle_and_check(&apis).await;
    let (_, other_requests) = b.settle_and_check(&apis).await;
    let (_, accepted, duplicates) = counts(&a.receiver);
    // At least: a retry answered too slowly on a loaded machine is delivered once more.
    assert!(duplicates >= events, "a duplicate of every event: {duplicates} for {events}");
    assert!(counts(&b.receiver).2 >= other_events, "a duplicate of every event");
    // Order per onboarding holds across the duplicates too: the retry of an event comes
    // before the next event of its onboarding, never after.
    for r in [&a.receiver, &b.receiver] {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for s in r.seen().into_iter().filter(|s| s.accepted) {
            let before = last.insert(s.onboarding.clone(), s.sequence).unwrap_or(0);
            assert!(before <= s.sequence, "{}: sequence {} processed after {before}", s.onboarding, s.sequence);
        }
    }
    report(
        "24-delivery-lost-acks.md",
        "Delivery: lost acknowledgements (`delivery::lost_acknowledgements_duplicate_every_event_with_the_same_id_body_and_order`)",
        "`wa-onboard serve` on SQLite; both receivers process the first request of every event but answer it only \
         after twice the 1 s delivery timeout, so the sender retries and every event arrives twice.",
        &Figures {
            kills: "none (acknowledgements lost)".into(),
            events,
            requests,
            accepted,
            duplicates,
            other_events,
            other_requests,
            total: started.elapsed(),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_killed_mid_delivery_loses_nothing_and_keeps_order() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let db = format!("sqlite:{}", dir.path().join("wa-onboard.db").display());
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let mut server = Server::start("sqlite", dir.path(), &db, &enc);
    let other_key = server.create_tenant("other");
    let a = Tenant::setup("a", server.api(), &sim, Receiver::start(Duration::ZERO, SLOW_FLAKY), 4).await;
    let b = Tenant::setup("b", server.api().with_key(&other_key), &sim, Receiver::start(Duration::ZERO, SLOW_FLAKY), 2)
        .await;
    let apis = [server.api()];
    a.create_onboardings(&apis, 0).await;
    b.create_onboardings(&apis, 10).await;
    let mut kills = Vec::new();
    for n in [3, 8] {
        accepted_at_least(&a.receiver, n).await;
        server.kill();
        kills.push(format!(
            "SIGKILL after {} events accepted ({})",
            a.receiver.firsts().len(),
            secs(started.elapsed())
        ));
        server.restart();
    }
    let (events, requests) = a.settle_and_check(&apis).await;
    let (other_events, other_requests) = b.settle_and_check(&apis).await;
    let (_, accepted, duplicates) = counts(&a.receiver);
    report(
        "22-delivery-crash-sqlite.md",
        "Delivery, SQLite: server killed mid-delivery (`delivery::sqlite_server_killed_mid_delivery_loses_nothing_and_keeps_order`)",
        "`wa-onboard serve` on SQLite is sent SIGKILL twice while it delivers (receivers answer after 150 ms, 500 \
         to 30 %), and restarted on the same data dir and ports each time.",
        &Figures {
            kills: kills.join("; "),
            events,
            requests,
            accepted,
            duplicates,
            other_events,
            other_requests,
            total: started.elapsed(),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_killed_mid_delivery_the_survivor_delivers_everything() {
    let Some(base) = pg_base() else { return };
    let started = Instant::now();
    let db = wa_onboard::store::postgres::create_test_schema(&base)
        .await
        .expect("PostgreSQL must be reachable for the test suite");
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = tokio::task::block_in_place(|| SimProc::start(dir.path()));
    let enc = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let mut x = Server::start("x", dir.path(), &db, &enc);
    let y = Server::start("y", dir.path(), &db, &enc);
    let other_key = y.create_tenant("other");
    let a = Tenant::setup("a", x.api(), &sim, Receiver::start(Duration::ZERO, SLOW_FLAKY), 4).await;
    let b =
        Tenant::setup("b", x.api().with_key(&other_key), &sim, Receiver::start(Duration::ZERO, SLOW_FLAKY), 2).await;
    let both = [x.api(), y.api()];
    a.create_onboardings(&both, 0).await;
    b.create_onboardings(&both, 10).await;
    accepted_at_least(&a.receiver, 4).await;
    x.kill();
    let kills = format!(
        "replica x SIGKILLed after {} events accepted ({})",
        a.receiver.firsts().len(),
        secs(started.elapsed())
    );
    let survivor = [y.api()];
    let (events, requests) = a.settle_and_check(&survivor).await;
    let (other_events, other_requests) = b.settle_and_check(&survivor).await;
    let (_, accepted, duplicates) = counts(&a.receiver);
    report(
        "23-delivery-crash-postgres.md",
        "Delivery, PostgreSQL: two replicas, one killed mid-delivery (`delivery::postgres_replica_killed_mid_delivery_the_survivor_delivers_everything`)",
        "Two `wa-onboard serve` replicas share one PostgreSQL schema and both run the delivery worker (receivers \
         answer after 150 ms, 500 to 30 %); one is sent SIGKILL while it delivers and stays dead; its leases lapse \
         and the survivor sends the rest.",
        &Figures {
            kills,
            events,
            requests,
            accepted,
            duplicates,
            other_events,
            other_requests,
            total: started.elapsed(),
        },
    );
    drop(y);
    wa_onboard::store::postgres::drop_schema(&db).await.ok();
}
