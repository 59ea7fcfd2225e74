//! Shared machinery for the provider simulators: a clock tests can advance, fault knobs,
//! counters, documented-limit windows, callback delivery and a control API.
//!
//! Simulators never import adapter code: they are written from `docs/providers.md` so that a
//! field-name mistake in an adapter fails against its simulator.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Locks a mutex, recovering the data if a previous holder panicked: a simulator must keep
/// answering even after a bug in one handler.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wall clock plus an offset that tests can advance (e.g. to expire a 24 h token).
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    offset_ms: Arc<AtomicI64>,
}

impl SimClock {
    /// Milliseconds since the Unix epoch, as the simulated provider sees them.
    pub fn now_ms(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> i64 {
        self.now_ms() / 1000
    }

    /// Moves simulated time forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// One scripted failure for the next matching call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this HTTP status and the provider's generic error body for it.
    Status {
        /// The HTTP status code to answer with (e.g. 500, 503).
        status: u16,
    },
    /// Answer 429 with the provider's rate-limit body, optionally with `Retry-After` seconds.
    TooManyRequests {
        /// Seconds to put in `Retry-After`; `None` sends no such header.
        retry_after_secs: Option<u64>,
    },
    /// Never answer before the client gives up. With `after_effect`, the handler runs first
    /// (the create happened) and only the response is lost: the case that needs reconciling.
    Timeout {
        /// Whether the handler's effect (e.g. the create) happens before the response is lost.
        after_effect: bool,
    },
    /// HTTP 200 with the provider's error body (providers that do this).
    OkWithErrorBody,
}

/// Probabilistic faults, for the fault-injection suite.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultRates {
    /// Share of calls answered 500..=503.
    pub server_error: f64,
    /// Share of calls answered 429.
    pub too_many_requests: f64,
    /// Of the 429s, the share that carries `Retry-After`.
    pub retry_after_share: f64,
    /// Share of calls that time out (half before, half after their effect).
    pub timeout: f64,
}

/// Callback delivery faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CallbackFaults {
    /// Deliver each callback twice with this probability.
    pub duplicate_rate: f64,
    /// Hold a callback back (delivered after the next one) with this probability.
    pub reorder_rate: f64,
    /// Deliver the next N callbacks twice.
    pub duplicate_next: u32,
}

/// Every knob a test can turn on a simulator.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Knobs {
    /// Added to every call.
    pub latency_ms: u64,
    /// Faults for the next calls, consumed in order. `endpoint` (e.g. `POST /partner/tpp/app`)
    /// restricts a fault to one endpoint; `None` matches any.
    pub next: VecDeque<ScriptedFault>,
    /// Random faults.
    pub rates: FaultRates,
    /// Callback faults.
    pub callbacks: CallbackFaults,
    /// How long a timeout fault holds the request, in ms (default 30 s when 0).
    pub timeout_hold_ms: u64,
}

/// A fault bound to the next call of one endpoint (or any endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptedFault {
    /// `METHOD /path/template` as routed, e.g. `GET /partner/app/{app_id}/pipeline`.
    pub endpoint: Option<String>,
    /// What to do.
    pub fault: Fault,
}

/// Counters a test reads back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Calls per `METHOD /path/template`, including faulted and rejected ones.
    pub calls: HashMap<String, u64>,
    /// Calls rejected because they exceeded a documented limit (a client bug).
    pub rate_limit_violations: u64,
    /// Violations per limit name.
    pub violations_by_limit: HashMap<String, u64>,
    /// Resources created, per kind (e.g. `apps`, `channels`, `links`).
    pub created: HashMap<String, u64>,
    /// Creates that returned an already-existing resource (client retried a create).
    pub duplicate_creates: u64,
    /// Faults injected (scripted or random).
    pub faults_injected: u64,
    /// Callbacks delivered (HTTP attempts, duplicates included).
    pub callbacks_sent: u64,
    /// Callbacks whose delivery failed (non-2xx or connection error).
    pub callbacks_failed: u64,
}

/// A sliding-window counter that enforces a documented limit, e.g. 10 calls per 60 s.
#[derive(Debug, Default)]
pub struct Windows {
    hits: HashMap<String, VecDeque<i64>>,
}

impl Windows {
    /// Records a call under `key` at `now_ms`; returns `Err(retry_after_ms)` when the call
    /// exceeds `limit` calls within `window`. Rejected calls are not counted in the window.
    pub fn hit(&mut self, key: &str, limit: usize, window: Duration, now_ms: i64) -> Result<(), i64> {
        let w = window.as_millis() as i64;
        let q = self.hits.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| *t <= now_ms - w) {
            q.pop_front();
        }
        if q.len() >= limit {
            let oldest = q.front().copied().unwrap_or(now_ms);
            return Err((oldest + w - now_ms).max(1));
        }
        q.push_back(now_ms);
        Ok(())
    }
}

/// The state every simulator shares: clock, knobs, counters, limit windows, callbacks.
#[derive(Debug, Clone, Default)]
pub struct SimCore {
    /// Simulated time.
    pub clock: SimClock,
    knobs: Arc<Mutex<Knobs>>,
    counters: Arc<Mutex<Counters>>,
    windows: Arc<Mutex<Windows>>,
    held_callbacks: Arc<Mutex<Vec<PendingCallback>>>,
    http: reqwest::Client,
}

#[derive(Debug, Clone)]
struct PendingCallback {
    url: String,
    body: serde_json::Value,
}

impl SimCore {
    /// A fresh core with no faults.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Replaces the knobs.
    pub fn set_knobs(&self, knobs: Knobs) {
        *lock(&self.knobs) = knobs;
    }

    /// Edits the knobs in place.
    pub fn with_knobs<R>(&self, f: impl FnOnce(&mut Knobs) -> R) -> R {
        f(&mut lock(&self.knobs))
    }

    /// Queues `n` copies of a fault for the next calls to `endpoint` (any when `None`).
    pub fn fail_next(&self, endpoint: Option<&str>, n: usize, fault: Fault) {
        let mut k = lock(&self.knobs);
        for _ in 0..n {
            k.next.push_back(ScriptedFault { endpoint: endpoint.map(str::to_string), fault: fault.clone() });
        }
    }

    /// A copy of the counters.
    pub fn counters(&self) -> Counters {
        lock(&self.counters).clone()
    }

    /// Resets counters (not state).
    pub fn reset_counters(&self) {
        *lock(&self.counters) = Counters::default();
    }

    /// Counts one created resource of `kind`.
    pub fn count_created(&self, kind: &str) {
        *lock(&self.counters).created.entry(kind.to_string()).or_default() += 1;
    }

    /// Counts a create that found the resource already there.
    pub fn count_duplicate_create(&self) {
        lock(&self.counters).duplicate_creates += 1;
    }

    /// Enforces a documented limit. On excess, counts a violation and returns the time until
    /// a slot frees, so the handler can answer the provider's 429.
    pub fn check_limit(&self, limit_name: &str, key: &str, limit: usize, window: Duration) -> Result<(), Duration> {
        let now = self.clock.now_ms();
        let full_key = format!("{limit_name}:{key}");
        match lock(&self.windows).hit(&full_key, limit, window, now) {
            Ok(()) => Ok(()),
            Err(ms) => {
                let mut c = lock(&self.counters);
                c.rate_limit_violations += 1;
                *c.violations_by_limit.entry(limit_name.to_string()).or_default() += 1;
                Err(Duration::from_millis(ms as u64))
            }
        }
    }

    /// Picks the fault (if any) for a call to `endpoint`, consuming a scripted one first.
    fn take_fault(&self, endpoint: &str) -> (Option<Fault>, u64) {
        let mut k = lock(&self.knobs);
        let latency = k.latency_ms;
        if let Some(pos) = k.next.iter().position(|f| f.endpoint.as_deref().is_none_or(|e| e == endpoint)) {
            let f = k.next.remove(pos).map(|f| f.fault);
            return (f, latency);
        }
        let r = k.rates.clone();
        drop(k);
        let mut rng = rand::rng();
        let x: f64 = rng.random();
        let fault = if x < r.server_error {
            Some(Fault::Status { status: [500, 502, 503][rng.random_range(0..3)] })
        } else if x < r.server_error + r.too_many_requests {
            let with = rng.random::<f64>() < r.retry_after_share;
            Some(Fault::TooManyRequests { retry_after_secs: with.then_some(1) })
        } else if x < r.server_error + r.too_many_requests + r.timeout {
            Some(Fault::Timeout { after_effect: rng.random::<bool>() })
        } else {
            None
        };
        (fault, latency)
    }

    fn timeout_hold(&self) -> Duration {
        let ms = lock(&self.knobs).timeout_hold_ms;
        Duration::from_millis(if ms == 0 { 30_000 } else { ms })
    }

    /// Posts a callback (JSON) to `url`, applying the duplicate / reorder knobs. Delivery runs
    /// in the background; failures are counted, not retried (tests read the counters).
    pub fn send_callback(&self, url: &str, body: serde_json::Value) {
        let (dup, hold) = {
            let mut k = lock(&self.knobs);
            let mut rng = rand::rng();
            let dup = if k.callbacks.duplicate_next > 0 {
                k.callbacks.duplicate_next -= 1;
                true
            } else {
                rng.random::<f64>() < k.callbacks.duplicate_rate
            };
            (dup, rng.random::<f64>() < k.callbacks.reorder_rate)
        };
        let cb = PendingCallback { url: url.to_string(), body };
        if hold {
            // Held back: goes out after the next callback, or after 2 s, whichever is first.
            lock(&self.held_callbacks).push(cb);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                me.flush_held().await;
            });
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.deliver(&cb).await;
            if dup {
                me.deliver(&cb).await;
            }
            me.flush_held().await;
        });
    }

    async fn flush_held(&self) {
        let held: Vec<PendingCallback> = std::mem::take(&mut *lock(&self.held_callbacks));
        for cb in held {
            self.deliver(&cb).await;
        }
    }

    async fn deliver(&self, cb: &PendingCallback) {
        let ok = self.http.post(&cb.url).json(&cb.body).send().await.map(|r| r.status().is_success()).unwrap_or(false);
        let mut c = lock(&self.counters);
        c.callbacks_sent += 1;
        if !ok {
            c.callbacks_failed += 1;
        }
    }
}

/// How a simulator renders an injected fault in its provider's wire format.
pub trait FaultBody: Send + Sync + 'static {
    /// The body and content type of an error with `status` (500, 503, 401...).
    fn error_body(&self, status: u16) -> (String, &'static str);
    /// The body of a 429.
    fn rate_limited_body(&self) -> (String, &'static str);
    /// The body of "HTTP 200 with an error", where the provider does that.
    fn ok_error_body(&self) -> (String, &'static str);
}

/// State for the fault middleware.
#[derive(Clone)]
pub struct FaultLayerState {
    /// The simulator core.
    pub core: SimCore,
    /// The provider's error rendering.
    pub bodies: Arc<dyn FaultBody>,
}

fn raw_response(status: StatusCode, (body, ctype): (String, &'static str)) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Middleware that counts calls per endpoint and injects faults and latency. Install it
/// with `axum::middleware::from_fn_with_state` on the provider routes (not on `/_sim`).
pub async fn fault_middleware(State(st): State<FaultLayerState>, req: Request<Body>, next: Next) -> Response {
    let endpoint = format!(
        "{} {}",
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string())
    );
    *lock(&st.core.counters).calls.entry(endpoint.clone()).or_default() += 1;
    let (fault, latency) = st.core.take_fault(&endpoint);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let Some(fault) = fault else {
        return next.run(req).await;
    };
    lock(&st.core.counters).faults_injected += 1;
    match fault {
        Fault::Status { status } => {
            let s = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            raw_response(s, st.bodies.error_body(status))
        }
        Fault::TooManyRequests { retry_after_secs } => {
            let mut r = raw_response(StatusCode::TOO_MANY_REQUESTS, st.bodies.rate_limited_body());
            if let Some(s) = retry_after_secs
                && let Ok(v) = HeaderValue::from_str(&s.to_string())
            {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            r
        }
        Fault::Timeout { after_effect } => {
            let hold = st.core.timeout_hold();
            if after_effect {
                let resp = next.run(req).await;
                tokio::time::sleep(hold).await;
                resp
            } else {
                tokio::time::sleep(hold).await;
                raw_response(StatusCode::GATEWAY_TIMEOUT, st.bodies.error_body(504))
            }
        }
        Fault::OkWithErrorBody => raw_response(StatusCode::OK, st.bodies.ok_error_body()),
    }
}

/// Control API shared by every simulator, mounted under `/_sim`:
/// `GET /_sim/counters`, `POST /_sim/counters/reset`, `GET|PUT /_sim/knobs`,
/// `POST /_sim/fail` (one [`ScriptedFault`] plus `count`), `POST /_sim/clock/advance` (`{"secs":N}`).
pub fn control_router(core: SimCore) -> axum::Router {
    #[derive(Deserialize)]
    struct FailReq {
        endpoint: Option<String>,
        fault: Fault,
        #[serde(default = "one")]
        count: usize,
    }
    fn one() -> usize {
        1
    }
    #[derive(Deserialize)]
    struct Advance {
        secs: u64,
    }
    axum::Router::new()
        .route("/_sim/counters", get(|State(c): State<SimCore>| async move { Json(c.counters()) }))
        .route(
            "/_sim/counters/reset",
            post(|State(c): State<SimCore>| async move {
                c.reset_counters();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/knobs",
            get(|State(c): State<SimCore>| async move { Json(c.with_knobs(|k| k.clone())) }).put(
                |State(c): State<SimCore>, Json(k): Json<Knobs>| async move {
                    c.set_knobs(k);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sim/fail",
            post(|State(c): State<SimCore>, Json(f): Json<FailReq>| async move {
                c.fail_next(f.endpoint.as_deref(), f.count, f.fault);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/clock/advance",
            post(|State(c): State<SimCore>, Json(a): Json<Advance>| async move {
                c.clock.advance(Duration::from_secs(a.secs));
                Json(serde_json::json!({ "now_ms": c.clock.now_ms() }))
            }),
        )
        .with_state(core)
}

/// A running simulator: its address and the task serving it (aborted on drop).
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on `addr` (port 0 picks a free port).
pub async fn serve(router: axum::Router, addr: SocketAddr) -> std::io::Result<Running> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "Simulator server stopped.");
        }
    });
    Ok(Running { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_enforces_limit_and_frees_slots() {
        let mut w = Windows::default();
        for i in 0..10 {
            assert!(w.hit("k", 10, Duration::from_secs(60), i).is_ok());
        }
        let wait = w.hit("k", 10, Duration::from_secs(60), 100).unwrap_err();
        assert_eq!(wait, 60_000 - 100);
        assert!(w.hit("k", 10, Duration::from_secs(60), 60_000).is_ok());
        assert!(w.hit("other", 10, Duration::from_secs(60), 100).is_ok());
    }

    #[test]
    fn clock_advances() {
        let c = SimClock::default();
        let a = c.now_ms();
        c.advance(Duration::from_secs(86_400));
        assert!(c.now_ms() - a >= 86_400_000);
    }

    #[test]
    fn scripted_faults_match_endpoint_first() {
        let core = SimCore::new();
        core.fail_next(Some("POST /a"), 1, Fault::Status { status: 500 });
        assert_eq!(core.take_fault("GET /b").0, None);
        assert_eq!(core.take_fault("POST /a").0, Some(Fault::Status { status: 500 }));
        assert_eq!(core.take_fault("POST /a").0, None);
    }
}
