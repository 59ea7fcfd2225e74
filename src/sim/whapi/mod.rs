//! Whapi.Cloud simulator (docs/providers.md §3): the partner "manager" API (projects, channels,
//! modes, days, partner balance) and the per-channel "gate" API (health, QR / pairing code,
//! logout, settings, limits), each on its own listener, plus `channel` / `users` / `days`
//! webhooks. In sandbox mode it plays the customer: a fetched QR or pairing code is "used"
//! after `scan_delay_ms` and the phone gets linked.

// Handlers return ready axum `Response`s as errors once per request; boxing them adds noise.
#![allow(clippy::result_large_err)]

mod gate;
mod manager;
mod qr;
mod state;
mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::common::{self, FaultBody, FaultLayerState, Running, SimCore, lock};
use state::{BillingEntry, SimState};
use webhooks::Delivery;

/// One partner project (`GET /projects`); channels are created inside a project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhapiProject {
    /// Project id, sent as `projectId` when creating a channel.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// Simulator configuration: accepted credentials, partner agreement, delays and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WhapiSimConfig {
    /// Partner API token accepted by the manager API (`Authorization: Bearer …`).
    pub partner_token: String,
    /// Partner name used in `/partners/{partnerName}/settings`.
    pub partner_name: String,
    /// Projects of the partner.
    pub projects: Vec<WhapiProject>,
    /// Channels' `apiUrl`; empty = the gate listener's base URL with a trailing `/`.
    pub api_url: String,
    /// Play the customer: link the phone `scan_delay_ms` after a QR / pairing code is fetched.
    pub sandbox: bool,
    /// Free trial days per the partner agreement (not taken from the balance).
    pub trial_days: i64,
    /// Initial partner balance, in days.
    pub balance_days: i64,
    /// Channel creations allowed per window (documented: 20 per 30 minutes).
    pub create_limit: usize,
    /// Window of `create_limit`, in seconds (documented: 1800).
    pub create_window_secs: u64,
    /// How long a channel restarts after a mode change (documented ~30 s).
    pub restart_ms: u64,
    /// Time from first wakeup to the QR state (INIT -> LAUNCH -> QR).
    pub launch_ms: u64,
    /// QR lifetime; a new QR is issued (and the old one expires) after it.
    pub qr_ttl_secs: u64,
    /// Pairing code lifetime.
    pub pairing_ttl_secs: u64,
    /// Sandbox: delay between fetching a QR / pairing code and the phone being linked.
    pub scan_delay_ms: u64,
    /// Sandbox: phone linked by a QR scan.
    pub sandbox_phone: String,
    /// Sandbox: WhatsApp profile name of the linked user.
    pub sandbox_user_name: String,
    /// `version` reported by `/health`.
    pub version: String,
    /// Period of the background task that fires transition webhooks.
    pub tick_ms: u64,
    /// Accept `PATCH /channels/{id}/mode` `{"mode":"dev"}` (default false: the vendor shows
    /// only `live` [C] and `trial` [C2] as request values, docs/providers.md §3.3).
    pub accept_dev_patch: bool,
    /// Send the QR lifetime `expire` as a fractional number (`19.5`): the vendor's OpenAPI
    /// types it as a number, not an integer (docs/providers.md §3.4 [C2]).
    pub qr_expire_float: bool,
}

impl Default for WhapiSimConfig {
    fn default() -> Self {
        Self {
            partner_token: "sandbox-partner-token".into(),
            partner_name: "sandbox".into(),
            projects: vec![WhapiProject { id: "sandbox-project".into(), name: "Sandbox".into() }],
            api_url: String::new(),
            sandbox: true,
            trial_days: 5,
            balance_days: 100,
            create_limit: 20,
            create_window_secs: 1800,
            restart_ms: 30_000,
            launch_ms: 1_000,
            qr_ttl_secs: 20,
            pairing_ttl_secs: 60,
            scan_delay_ms: 3_000,
            sandbox_phone: "15550001234".into(),
            sandbox_user_name: "Sandbox User".into(),
            version: "1.8.3-sim".into(),
            tick_ms: 200,
            accept_dev_patch: false,
            qr_expire_float: false,
        }
    }
}

/// The two listeners of a spawned simulator (dropping them stops serving).
#[derive(Debug)]
pub struct WhapiSimServers {
    /// Partner API (`https://manager.whapi.cloud` in production).
    pub manager: Running,
    /// Per-channel API (`https://gate.whapi.cloud`); channels' `apiUrl` points here.
    pub gate: Running,
}

/// Read-only view of one channel for tests and the control API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhapiChannelView {
    /// Channel id (`WORD-XXXXX`).
    pub id: String,
    /// Channel (gate) token.
    pub token: String,
    /// `trial` | `live` | `dev` (Sandbox) | `dev_archive` (docs/providers.md §3.3).
    pub mode: String,
    /// `active` | `stopped`.
    pub status: String,
    /// Health code (1 INIT, 2 LAUNCH, 3 QR, 4 AUTH, 5 ERROR).
    pub health_code: u8,
    /// Health text.
    pub health_text: String,
    /// Linked phone, if any.
    pub phone: Option<String>,
    /// Epoch ms when the channel stops.
    pub active_till: i64,
    /// Days moved from the balance to this channel (not yet refunded).
    pub extended_days: i64,
    /// Epoch ms when the sandbox customer links the phone, if scheduled.
    pub pending_link_at: Option<i64>,
}

/// The simulator. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct WhapiSim {
    inner: Arc<Inner>,
}

struct Inner {
    core: SimCore,
    config: WhapiSimConfig,
    state: Mutex<SimState>,
    api_url: Mutex<String>,
    ticker_started: AtomicBool,
    http: reqwest::Client,
}

/// Renders injected faults as Whapi error bodies.
struct WhapiFaults;

impl FaultBody for WhapiFaults {
    fn error_body(&self, status: u16) -> (String, &'static str) {
        let msg = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
        (error_json(status, msg, "injected fault").to_string(), "application/json")
    }

    fn rate_limited_body(&self) -> (String, &'static str) {
        (error_json(429, "Too Many Requests", "rate limit exceeded").to_string(), "application/json")
    }

    fn ok_error_body(&self) -> (String, &'static str) {
        // [I] HTTP 200 carrying an error object.
        (json!({"error": {"code": 500, "message": "internal"}}).to_string(), "application/json")
    }
}

/// [I] Whapi error body: `{"error":{"code","message","details"}}` (schema not confirmed).
pub(crate) fn error_json(code: u16, message: &str, details: &str) -> Value {
    json!({"error": {"code": code, "message": message, "details": details}})
}

/// An error response in the Whapi error body.
pub(crate) fn err(status: StatusCode, message: &str, details: &str) -> Response {
    (status, Json(error_json(status.as_u16(), message, details))).into_response()
}

/// Parses an optional JSON body; an empty body is `{}`.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(err(StatusCode::BAD_REQUEST, "Bad Request", "body must be a JSON object")),
        Err(e) => Err(err(StatusCode::BAD_REQUEST, "Bad Request", &format!("invalid JSON: {e}"))),
    }
}

/// The `Bearer` token of a request, if any.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

impl WhapiSim {
    /// A simulator with fresh state.
    pub fn new(config: WhapiSimConfig) -> Self {
        let state = SimState::new(&config);
        Self {
            inner: Arc::new(Inner {
                core: SimCore::new(),
                api_url: Mutex::new(config.api_url.clone()),
                state: Mutex::new(state),
                config,
                ticker_started: AtomicBool::new(false),
                http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
            }),
        }
    }

    /// Shared machinery: clock, knobs, counters.
    pub fn core(&self) -> &SimCore {
        &self.inner.core
    }

    /// The configuration in force.
    pub fn config(&self) -> &WhapiSimConfig {
        &self.inner.config
    }

    /// Sets channels' `apiUrl` (e.g. when embedding `router()` behind one listener).
    pub fn set_api_url(&self, url: &str) {
        *lock(&self.inner.api_url) = url.to_string();
    }

    /// Channels' current `apiUrl`.
    pub fn api_url(&self) -> String {
        lock(&self.inner.api_url).clone()
    }

    /// Manager and gate routes, fault middleware and all control endpoints on one router
    /// (the paths do not overlap). Starts the webhook ticker when inside a Tokio runtime.
    pub fn router(&self) -> axum::Router {
        self.ensure_ticker();
        self.with_faults(manager::routes().merge(gate::routes()))
            .merge(self.control())
            .merge(common::control_router(self.inner.core.clone()))
    }

    /// The partner ("manager") API with control endpoints.
    pub fn manager_router(&self) -> axum::Router {
        self.ensure_ticker();
        self.with_faults(manager::routes()).merge(self.control()).merge(common::control_router(self.inner.core.clone()))
    }

    /// The per-channel ("gate") API with control endpoints.
    pub fn gate_router(&self) -> axum::Router {
        self.ensure_ticker();
        self.with_faults(gate::routes()).merge(self.control()).merge(common::control_router(self.inner.core.clone()))
    }

    fn with_faults(&self, routes: axum::Router<WhapiSim>) -> axum::Router {
        let fs = FaultLayerState { core: self.inner.core.clone(), bodies: Arc::new(WhapiFaults) };
        routes
            .fallback(|| async { err(StatusCode::NOT_FOUND, "Not Found", "unknown path") })
            .layer(axum::middleware::from_fn_with_state(fs, common::fault_middleware))
            .with_state(self.clone())
    }

    /// Serves the manager API on `manager_addr` and the gate API on `gate_addr` (port 0
    /// picks a free port). Channels' `apiUrl` becomes the gate URL unless configured.
    pub async fn spawn(
        config: WhapiSimConfig,
        manager_addr: SocketAddr,
        gate_addr: SocketAddr,
    ) -> std::io::Result<(Self, WhapiSimServers)> {
        let sim = Self::new(config);
        let gate = common::serve(sim.gate_router(), gate_addr).await?;
        if sim.api_url().is_empty() {
            sim.set_api_url(&format!("{}/", gate.base_url()));
        }
        let manager = common::serve(sim.manager_router(), manager_addr).await?;
        Ok((sim, WhapiSimServers { manager, gate }))
    }

    /// Starts (once) the task that fires transition webhooks; it ends when the sim is dropped.
    fn ensure_ticker(&self) {
        if tokio::runtime::Handle::try_current().is_err() || self.inner.ticker_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = Duration::from_millis(self.inner.config.tick_ms.max(10));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            loop {
                iv.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                WhapiSim { inner }.tx(|_, _, _| ());
            }
        });
    }

    /// Runs `f` on the state after bringing every channel up to the clock, brings them up
    /// again (so `f`'s transitions are reported), then delivers the resulting webhooks.
    pub(crate) fn tx<R>(&self, f: impl FnOnce(&mut SimState, i64, &mut Vec<Delivery>) -> R) -> R {
        let cfg = &self.inner.config;
        let now = self.inner.core.clock.now_ms();
        let mut out = Vec::new();
        let r = {
            let mut st = lock(&self.inner.state);
            st.advance_all(now, cfg, &mut out);
            let r = f(&mut st, now, &mut out);
            st.advance_all(now, cfg, &mut out);
            r
        };
        for d in out {
            webhooks::deliver(&self.inner.core, &self.inner.http, d);
        }
        r
    }

    /// Partner balance in days.
    pub fn balance(&self) -> i64 {
        self.tx(|st, _, _| st.balance)
    }

    /// All channels, current as of the sim clock.
    pub fn channels(&self) -> Vec<WhapiChannelView> {
        let cfg = self.inner.config.clone();
        self.tx(|st, now, _| st.channels.values().map(|c| c.view(now, &cfg)).collect())
    }

    /// One channel, if it exists.
    pub fn channel(&self, id: &str) -> Option<WhapiChannelView> {
        let cfg = self.inner.config.clone();
        self.tx(|st, now, _| st.channels.get(id).map(|c| c.view(now, &cfg)))
    }

    /// Billing history (`extend` calls) of a channel.
    pub fn billing(&self, id: &str) -> Option<Vec<BillingEntry>> {
        self.tx(|st, _, _| st.channels.get(id).map(|c| c.billing.clone()))
    }

    /// Links `phone` to the channel now (the customer scanned the QR). `None` uses
    /// `sandbox_phone`. Fails when the channel is unknown, stopped or already linked.
    pub fn scan(&self, id: &str, phone: Option<&str>) -> Result<(), String> {
        let cfg = self.inner.config.clone();
        self.tx(|st, now, out| {
            let c = st.channels.get_mut(id).ok_or("unknown channel")?;
            c.link_now(now, phone.unwrap_or(&cfg.sandbox_phone), &cfg.sandbox_user_name, &cfg, out)
        })
        .map_err(str::to_string)
    }

    /// Puts the channel in health ERROR (fires the `channel` webhook).
    pub fn set_error(&self, id: &str) -> bool {
        self.tx(|st, _, _| st.channels.get_mut(id).map(|c| c.error = true).is_some())
    }

    /// Sets a channel's mode as the partner dashboard does (e.g. Sandbox, reported as
    /// `dev`, or an archived sandbox, `dev_archive`, docs/providers.md §3.3): the API documents
    /// no request value for those. False when the channel is unknown.
    pub fn set_channel_mode(&self, id: &str, mode: &str) -> bool {
        self.tx(|st, _, _| st.channels.get_mut(id).map(|c| c.mode = mode.to_string()).is_some())
    }

    fn control(&self) -> axum::Router {
        control_routes().with_state(self.clone())
    }
}

/// Whapi control endpoints, under `/_sim/whapi`:
/// - `GET /_sim/whapi/channels`: every channel's state ([`WhapiChannelView`]).
/// - `GET /_sim/whapi/balance`: `{"balance","allocated"}` in days.
/// - `GET /_sim/whapi/channels/{id}/billing`: `[{days, comment, at}]` extend history.
/// - `POST /_sim/whapi/channels/{id}/scan` (body optional `{"phone","name","rowdata"}`): links
///   now; with `rowdata`, 410 if that QR has expired.
/// - `POST /_sim/whapi/channels/{id}/error`: health ERROR (+ `channel` webhook).
fn control_routes() -> axum::Router<WhapiSim> {
    axum::Router::new()
        .route("/_sim/whapi/channels", get(|State(s): State<WhapiSim>| async move { Json(s.channels()) }))
        .route(
            "/_sim/whapi/balance",
            get(|State(s): State<WhapiSim>| async move {
                let (b, a) = s.tx(|st, _, _| (st.balance, st.allocated));
                Json(json!({"balance": b, "allocated": a}))
            }),
        )
        .route(
            "/_sim/whapi/channels/{id}/billing",
            get(|State(s): State<WhapiSim>, Path(id): Path<String>| async move {
                match s.billing(&id) {
                    Some(b) => Json(b).into_response(),
                    None => err(StatusCode::NOT_FOUND, "Not Found", "unknown channel"),
                }
            }),
        )
        .route("/_sim/whapi/channels/{id}/scan", post(control_scan))
        .route(
            "/_sim/whapi/channels/{id}/error",
            post(|State(s): State<WhapiSim>, Path(id): Path<String>| async move {
                if s.set_error(&id) {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    err(StatusCode::NOT_FOUND, "Not Found", "unknown channel")
                }
            }),
        )
}

async fn control_scan(State(s): State<WhapiSim>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cfg = s.inner.config.clone();
    let phone = body.get("phone").and_then(Value::as_str).unwrap_or(&cfg.sandbox_phone).to_string();
    let name = body.get("name").and_then(Value::as_str).unwrap_or(&cfg.sandbox_user_name).to_string();
    let rowdata = body.get("rowdata").and_then(Value::as_str).map(str::to_string);
    let res: Result<(), (StatusCode, String)> = s.tx(|st, now, out| {
        let c = st.channels.get_mut(&id).ok_or((StatusCode::NOT_FOUND, "unknown channel".to_string()))?;
        if let Some(r) = rowdata
            && c.current_qr(now, &cfg).map(|(q, _)| q) != Some(r)
        {
            return Err((StatusCode::GONE, "QR code expired".to_string()));
        }
        c.link_now(now, &phone, &name, &cfg, out).map_err(|e| (StatusCode::CONFLICT, e.to_string()))
    });
    match res {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((s, m)) => err(s, s.canonical_reason().unwrap_or("Error"), &m),
    }
}

/// Header map used by webhook deliveries.
pub(crate) type Headers = HashMap<String, String>;
