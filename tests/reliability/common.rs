//! Plumbing shared by the reliability tests: a gRPC client that survives restarts, stream
//! watchers that resume, child processes killed with SIGKILL, a PostgreSQL proxy that can be
//! cut, and the report fragments.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use wa_onboard::grpc::pb;

/// Upper bound of any single RPC in these tests: a hang fails the call, never the suite.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);

/// One event as the tests compare them: sequence, type, state.
type Ev = (i64, String, i32);

/// A gRPC endpoint and the tenant key to call it with. The channel connects lazily and
/// reconnects, so the same client keeps working across a server restart on the same port.
#[derive(Clone)]
pub(crate) struct Api {
    pub channel: Channel,
    pub key: String,
}

impl Api {
    pub(crate) fn lazy(addr: &str, key: &str) -> Api {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Api { channel, key: key.to_string() }
    }

    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", format!("Bearer {}", self.key).parse().expect("header"));
        r.set_timeout(RPC_TIMEOUT);
        r
    }

    pub(crate) fn onboardings(&self) -> pb::onboarding_service_client::OnboardingServiceClient<Channel> {
        pb::onboarding_service_client::OnboardingServiceClient::new(self.channel.clone())
    }

    pub(crate) fn pipelines(&self) -> pb::pipeline_service_client::PipelineServiceClient<Channel> {
        pb::pipeline_service_client::PipelineServiceClient::new(self.channel.clone())
    }

    pub(crate) fn channels(&self) -> pb::channel_service_client::ChannelServiceClient<Channel> {
        pb::channel_service_client::ChannelServiceClient::new(self.channel.clone())
    }

    pub(crate) fn accounts(&self) -> pb::account_service_client::AccountServiceClient<Channel> {
        pb::account_service_client::AccountServiceClient::new(self.channel.clone())
    }

    /// Every onboarding of the tenant.
    pub(crate) async fn list_all(&self) -> Result<Vec<pb::Onboarding>, tonic::Status> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut client = self.onboardings();
            let call = client.list_onboardings(self.req(pb::ListOnboardingsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            }));
            let page = bounded(call).await?.into_inner();
            out.extend(page.onboardings);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// The whole event log of one onboarding.
    pub(crate) async fn events(&self, name: &str) -> Result<Vec<pb::OnboardingEvent>, tonic::Status> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut client = self.onboardings();
            let call = client.list_onboarding_events(self.req(pb::ListOnboardingEventsRequest {
                name: name.into(),
                page_size: 100,
                page_token,
            }));
            let page = bounded(call).await?.into_inner();
            out.extend(page.events);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// Requests a QR for a Whapi onboarding's channel (the sandbox customer scans it).
    pub(crate) async fn connect_code(&self, o: &pb::Onboarding) -> Result<(), tonic::Status> {
        let Some(pb::onboarding::Details::Whapi(w)) = &o.details else { return Ok(()) };
        if w.channel.is_empty() {
            return Ok(());
        }
        let mut client = self.channels();
        let call = client.get_connect_code(self.req(pb::GetConnectCodeRequest {
            name: w.channel.clone(),
            method: Some(pb::get_connect_code_request::Method::Qr(pb::QrCodeRequest { size: 0 })),
        }));
        bounded(call).await.map(|_| ())
    }

    /// Submits the sandbox verification code of a 99digital onboarding that registers its
    /// number (the sandbox always sends `123456`).
    pub(crate) async fn submit_code(&self, o: &pb::Onboarding) -> Result<(), tonic::Status> {
        let mut client = self.onboardings();
        let call = client.submit_verification_code(
            self.req(pb::SubmitVerificationCodeRequest { name: o.name.clone(), code: "123456".into() }),
        );
        bounded(call).await.map(|_| ())
    }

    /// Whether the onboarding waits for its customer, and this test must act as one: fetch a
    /// Whapi connect code, or type in a 99digital verification code.
    pub(crate) fn needs_customer(o: &pb::Onboarding) -> bool {
        o.state == pb::OnboardingState::AwaitingCustomer as i32
            && match &o.details {
                Some(pb::onboarding::Details::Whapi(w)) => !w.channel.is_empty(),
                Some(pb::onboarding::Details::Digital99(d)) => !d.number_verified,
                _ => false,
            }
    }

    /// Acts as the customer of `o` (see [`Api::needs_customer`]).
    pub(crate) async fn play_customer(&self, o: &pb::Onboarding) -> Result<(), tonic::Status> {
        match &o.details {
            Some(pb::onboarding::Details::Whapi(_)) => self.connect_code(o).await,
            Some(pb::onboarding::Details::Digital99(_)) => self.submit_code(o).await,
            _ => Ok(()),
        }
    }

    /// Restarts a stalled pipeline.
    pub(crate) async fn retry_pipeline(&self, name: &str, request_id: &str) -> Result<(), tonic::Status> {
        let mut client = self.pipelines();
        let call = client
            .retry_pipeline(self.req(pb::RetryPipelineRequest { name: name.into(), request_id: request_id.into() }));
        bounded(call).await.map(|_| ())
    }
}

/// Runs an RPC future under [`RPC_TIMEOUT`] (plus slack): a hang becomes `DEADLINE_EXCEEDED`.
pub(crate) async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT + Duration::from_secs(5), f).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("the test's RPC bound expired")),
    }
}

/// Codes a client retries (the same request again, with the same `request_id`).
pub(crate) fn transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Unavailable | ResourceExhausted | DeadlineExceeded | Aborted | Unknown | Cancelled | Internal)
}

/// A `WatchOnboarding` stream from sequence 0, resumed with `after_sequence` whenever it
/// breaks (server restart, replica killed), collecting every event it delivers.
pub(crate) struct Watcher {
    pub name: String,
    pub seen: Arc<Mutex<Vec<Ev>>>,
    pub resumes: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub(crate) fn start(api: &Api, name: &str) -> Watcher {
        Self::start_on(std::slice::from_ref(api), name)
    }

    /// Watches through the first of `apis`, moving to the next one each time the stream
    /// breaks (a replica died: resume on another).
    pub(crate) fn start_on(apis: &[Api], name: &str) -> Watcher {
        let seen: Arc<Mutex<Vec<Ev>>> = Arc::default();
        let resumes: Arc<Mutex<u32>> = Arc::default();
        let (apis, n, s, r) = (apis.to_vec(), name.to_string(), seen.clone(), resumes.clone());
        let task = tokio::spawn(async move {
            for turn in 0.. {
                let api = &apis[turn % apis.len()];
                let after = s.lock().expect("lock").last().map_or(0, |e| e.0);
                let mut req =
                    tonic::Request::new(pb::WatchOnboardingRequest { name: n.clone(), after_sequence: after });
                req.metadata_mut().insert("authorization", format!("Bearer {}", api.key).parse().expect("header"));
                if let Ok(resp) = api.onboardings().watch_onboarding(req).await {
                    let mut stream = resp.into_inner();
                    while let Ok(Some(msg)) = stream.message().await {
                        if let Some(pb::watch_onboarding_response::Message::Event(e)) = msg.message {
                            s.lock().expect("lock").push((e.sequence, e.r#type, e.state));
                        }
                    }
                }
                *r.lock().expect("lock") += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Watcher { name: name.to_string(), seen, resumes, task }
    }

    pub(crate) fn seen(&self) -> Vec<Ev> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until the stream has delivered `log` (the event log read afterwards), then
    /// asserts it delivered exactly that: every sequence once, in order, none missing.
    pub(crate) async fn assert_matches(&self, log: &[Ev], patience: Duration) {
        let last = log.last().map_or(0, |e| e.0);
        let deadline = tokio::time::Instant::now() + patience;
        while self.seen().last().map_or(0, |e| e.0) < last && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = self.seen();
        assert_gap_free(log, &format!("{} event log", self.name));
        assert_eq!(seen, log, "{}: the stream must deliver the event log exactly (gap-free, in order)", self.name);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sequences 1, 2, 3... with no gap and no repeat.
pub(crate) fn assert_gap_free(log: &[Ev], what: &str) {
    let seqs: Vec<i64> = log.iter().map(|e| e.0).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "{what}: sequences must be 1..n without gaps");
}

pub(crate) fn evs(log: &[pb::OnboardingEvent]) -> Vec<Ev> {
    log.iter().map(|e| (e.sequence, e.r#type.clone(), e.state)).collect()
}

/// Polls `f` until it yields a value, for at most `patience`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- child processes -----

pub(crate) use crate::child::{Proc, bin};

/// A port free right now (bound, then released), for a server that must come back on the
/// same address after a restart.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The standalone simulators (`wa-onboard sim`): they outlive every server kill, so their
/// counters see everything the servers ever sent.
pub(crate) struct SimProc {
    _proc: Proc,
    pub endpoints: BTreeMap<String, String>,
    http: reqwest::Client,
}

impl SimProc {
    /// Starts the simulators with short stage delays (sandbox: they play the customers).
    pub(crate) fn start(dir: &Path) -> SimProc {
        let mut cmd = bin();
        cmd.env("WA_ONBOARD__SANDBOX__SIMS__GUPSHUP__STAGE_MS", "300")
            .env("WA_ONBOARD__SANDBOX__SIMS__GUPSHUP__TICKER_MS", "50")
            .env("WA_ONBOARD__SANDBOX__SIMS__EXOTEL__CUSTOMER_DELAY_MS", "300")
            .env("WA_ONBOARD__SANDBOX__SIMS__WHAPI__LAUNCH_MS", "200")
            .env("WA_ONBOARD__SANDBOX__SIMS__WHAPI__SCAN_DELAY_MS", "300")
            .env("WA_ONBOARD__SANDBOX__SIMS__WHAPI__TICK_MS", "50")
            .env("WA_ONBOARD__SANDBOX__SIMS__DIGITAL99__FINISH_DELAY_MS", "500")
            .env("WA_ONBOARD_DATA_DIR", dir)
            .env("RUST_LOG", "warn")
            .args(["sim", "--base-port", "0"]);
        let mut proc = Proc::spawn("sim", dir, &mut cmd);
        let endpoints = crate::child::sim_endpoints(&proc.wait_for("99digital"));
        for k in ["gupshup", "exotel singapore", "whapi manager", "99digital"] {
            assert!(endpoints.contains_key(k), "no {k} endpoint in {endpoints:?}");
        }
        SimProc { _proc: proc, endpoints, http: reqwest::Client::new() }
    }

    pub(crate) fn url(&self, which: &str) -> String {
        self.endpoints[which].clone()
    }

    pub(crate) async fn get(&self, which: &str, path: &str) -> serde_json::Value {
        let r = self.http.get(format!("{}{path}", self.url(which))).send().await.expect("sim control call");
        assert!(r.status().is_success(), "{which}{path}: {}", r.status());
        r.json().await.expect("json")
    }

    pub(crate) async fn counters(&self, which: &str) -> serde_json::Value {
        self.get(which, "/_sim/counters").await
    }
}

/// The PostgreSQL base URL of the suite, `None` when it runs with `skip`.
pub(crate) fn pg_base() -> Option<String> {
    let base = std::env::var("WA_ONBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if base == "skip" {
        eprintln!("SKIPPING PostgreSQL test (WA_ONBOARD_TEST_DATABASE_URL=skip)");
        return None;
    }
    Some(base)
}

// ----- report fragments -----

pub(crate) use crate::report::{table, write_fragment};

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
