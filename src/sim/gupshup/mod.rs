//! Gupshup Partner API simulator (docs/providers.md §1): partner login, Tech-Provider app linking,
//! app tokens, the provisioning pipeline (advancing on the sim clock), the go-live callback,
//! subscriptions, and control endpoints under `/_sim/gupshup/...`.
//!
//! In sandbox mode the simulator "plays Gupshup and Meta": a linked app walks the documented
//! pipeline stages every `stage_ms` and goes live (or fails, for configured phones) by itself.

mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sim::common::{self, Running, SimCore, lock};

pub use state::{AppListShape, GupshupKnobs, KnobsPatch};
use state::{State, envelope, live_event, pipeline_at};

/// One partner account the simulator accepts at login.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PartnerCredential {
    /// Partner-portal login email (`email` form field).
    pub email: String,
    /// Client secret (`secret`, or the older `password` field).
    pub secret: String,
    /// Partner id (`id` in the login response, owner of the apps it links).
    pub partner_id: u64,
    /// Display name (`name` in the login response and the string-shaped token response).
    pub name: String,
}

impl Default for PartnerCredential {
    fn default() -> Self {
        Self {
            email: "sandbox@wa-onboard.local".into(),
            secret: "sandbox-secret".into(),
            partner_id: 1001,
            name: "wa-onboard sandbox".into(),
        }
    }
}

/// A documented rate limit: at most `max` calls per `window_ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LimitSpec {
    /// Calls allowed in the window.
    pub max: usize,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

impl LimitSpec {
    /// The window as a `Duration`.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// The documented limits (docs/providers.md 1.5); scalable for tests and benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GupshupLimits {
    /// `POST /partner/account/login`, per email: 10 / 60 s.
    pub login: LimitSpec,
    /// `POST /partner/tpp/app`, per partner: 10 / min.
    pub link: LimitSpec,
    /// `GET …/pipeline`, per app: 10 / s.
    pub pipeline: LimitSpec,
    /// `DELETE …/subscription` (all), per app: 5 / min.
    pub delete_all_subscriptions: LimitSpec,
}

impl Default for GupshupLimits {
    fn default() -> Self {
        Self {
            login: LimitSpec { max: 10, window_ms: 60_000 },
            link: LimitSpec { max: 10, window_ms: 60_000 },
            pipeline: LimitSpec { max: 10, window_ms: 1_000 },
            delete_all_subscriptions: LimitSpec { max: 5, window_ms: 60_000 },
        }
    }
}

/// Configuration of the Gupshup simulator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GupshupSimConfig {
    /// Partner accounts accepted at login.
    pub partners: Vec<PartnerCredential>,
    /// When true, linked apps start provisioning at once and go live by themselves; when
    /// false they stay at `INITIAL` until `POST /_sim/gupshup/apps/{appId}/start`.
    pub sandbox: bool,
    /// Milliseconds per pipeline step (live after 3 steps; failure after 4).
    pub stage_ms: u64,
    /// Partner token lifetime in seconds (documented 24 h).
    pub partner_token_ttl_secs: u64,
    /// Apps whose phone starts with one of these fail their pipeline.
    pub fail_phone_prefixes: Vec<String>,
    /// Initial value of [`GupshupKnobs::fail_callback_next`].
    pub fail_callback_next: u32,
    /// Initial value of [`GupshupKnobs::fail_next_pipelines`].
    pub fail_next_pipelines: u32,
    /// Initial value of [`GupshupKnobs::token_as_string`].
    pub token_as_string: bool,
    /// Rate limits.
    pub limits: GupshupLimits,
    /// How often the ticker looks for apps that went live, in ms.
    pub ticker_ms: u64,
}

impl Default for GupshupSimConfig {
    fn default() -> Self {
        Self {
            partners: vec![PartnerCredential::default()],
            sandbox: true,
            stage_ms: 1_500,
            partner_token_ttl_secs: 86_400,
            // [I] a reserved-looking US test range fails by default.
            fail_phone_prefixes: vec!["1555000".into()],
            fail_callback_next: 0,
            fail_next_pipelines: 0,
            token_as_string: false,
            limits: GupshupLimits::default(),
            ticker_ms: 200,
        }
    }
}

/// A snapshot of one app, for tests and `GET /_sim/gupshup/apps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppSnapshot {
    /// The app's id (`appId` on the wire), as the partner API returned it at link time.
    pub app_id: String,
    /// App name.
    pub name: String,
    /// Linked phone.
    pub phone: String,
    /// Linked WABA id.
    pub waba_id: String,
    /// Owning partner.
    pub partner_id: u64,
    /// Callback URL (none after a failed callback set).
    pub callback_url: Option<String>,
    /// `storageRegion` when given.
    pub storage_region: Option<String>,
    /// Link time (ms).
    pub created_on: i64,
    /// Current `creationStage`.
    pub creation_stage: String,
    /// Current `pipeLineStage`.
    pub pipeline_stage: String,
    /// Current `stageRetries`.
    pub stage_retries: u32,
    /// Provisioned and live.
    pub live: bool,
    /// Pipeline ended in `ERROR`.
    pub failed: bool,
    /// The live callback went out.
    pub live_notified: bool,
    /// Whether an app token was issued.
    pub has_token: bool,
    /// Number of subscriptions.
    pub subscriptions: usize,
}

struct Inner {
    config: GupshupSimConfig,
    core: SimCore,
    state: Mutex<State>,
    ticker_started: AtomicBool,
}

/// The Gupshup simulator. Cheap to clone (shared state).
#[derive(Clone)]
pub struct GupshupSim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GupshupSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GupshupSim").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl GupshupSim {
    /// A simulator with `config` and empty state.
    pub fn new(config: GupshupSimConfig) -> Self {
        let state = State {
            knobs: GupshupKnobs {
                fail_callback_next: config.fail_callback_next,
                fail_next_pipelines: config.fail_next_pipelines,
                token_as_string: config.token_as_string,
                ..GupshupKnobs::default()
            },
            next_subscription_id: 8_000,
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                config,
                core: SimCore::new(),
                state: Mutex::new(state),
                ticker_started: AtomicBool::new(false),
            }),
        }
    }

    /// Shared machinery: clock, knobs, counters.
    pub fn core(&self) -> &SimCore {
        &self.inner.core
    }

    /// The configuration in use.
    pub fn config(&self) -> &GupshupSimConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// All routes: provider API (with the fault middleware), `/_sim/gupshup/...` and the
    /// shared `/_sim/...` control API. Starts the live-callback ticker when called inside a
    /// tokio runtime.
    pub fn router(&self) -> axum::Router {
        self.ensure_ticker();
        routes::router(self.clone())
    }

    /// Binds `addr` (port 0 picks one) and serves [`Self::router`].
    pub async fn spawn(config: GupshupSimConfig, addr: SocketAddr) -> std::io::Result<(Self, Running)> {
        let sim = Self::new(config);
        let running = common::serve(sim.router(), addr).await?;
        Ok((sim, running))
    }

    fn ensure_ticker(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.ticker_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = Duration::from_millis(self.inner.config.ticker_ms.max(10));
        rt.spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                GupshupSim { inner }.tick();
            }
        });
    }

    /// Sends the live callback of every app that has gone live since the last call. Run by
    /// the ticker and on each pipeline read; public so embedders can drive it directly.
    pub fn tick(&self) {
        let now = self.core().clock.now_ms();
        let stage_ms = self.inner.config.stage_ms;
        let mut out: Vec<(String, Value)> = Vec::new();
        {
            let mut st = self.state();
            let due: Vec<(String, i64)> = st
                .apps
                .values()
                .filter(|a| !a.live_notified)
                .filter_map(|a| {
                    let v = pipeline_at(a, now, stage_ms);
                    v.live.then(|| (a.id.clone(), v.modified_ms))
                })
                .collect();
            for (id, live_ms) in due {
                let targets = account_targets(&st, &id);
                if let Some(app) = st.apps.get_mut(&id) {
                    app.live_notified = true;
                    let body = live_event(app, live_ms);
                    out.extend(targets.into_iter().map(|u| (u, body.clone())));
                }
            }
        }
        for (url, body) in out {
            self.core().send_callback(&url, body);
        }
    }

    /// Snapshots of all apps, oldest id order.
    pub fn apps(&self) -> Vec<AppSnapshot> {
        let now = self.core().clock.now_ms();
        let st = self.state();
        let mut v: Vec<AppSnapshot> = st.apps.values().map(|a| self.snapshot(&st, a, now)).collect();
        v.sort_by_key(|a| a.created_on);
        v
    }

    /// Snapshot of one app.
    pub fn app(&self, app_id: &str) -> Option<AppSnapshot> {
        let now = self.core().clock.now_ms();
        let st = self.state();
        st.apps.get(app_id).map(|a| self.snapshot(&st, a, now))
    }

    fn snapshot(&self, st: &State, a: &state::App, now: i64) -> AppSnapshot {
        let v = pipeline_at(a, now, self.inner.config.stage_ms);
        AppSnapshot {
            app_id: a.id.clone(),
            name: a.name.clone(),
            phone: a.phone.clone(),
            waba_id: a.waba_id.clone(),
            partner_id: a.partner_id,
            callback_url: a.callback_url.clone(),
            storage_region: a.storage_region.clone(),
            created_on: a.created_ms,
            creation_stage: v.creation_stage.into(),
            pipeline_stage: v.pipeline_stage.into(),
            stage_retries: v.stage_retries,
            live: v.live,
            failed: v.failed,
            live_notified: a.live_notified,
            has_token: a.token.is_some(),
            subscriptions: st.subscriptions.values().filter(|s| s.app_id == a.id).count(),
        }
    }

    /// Current simulator-specific knobs.
    pub fn knobs(&self) -> GupshupKnobs {
        self.state().knobs.clone()
    }

    /// Replaces the simulator-specific knobs.
    pub fn set_knobs(&self, knobs: GupshupKnobs) {
        self.state().knobs = knobs;
    }

    /// Applies a partial knob update and returns the result.
    pub fn update_knobs(&self, patch: KnobsPatch) -> GupshupKnobs {
        let mut st = self.state();
        st.knobs.apply(patch);
        st.knobs.clone()
    }

    /// Starts the pipeline of an app (needed when `sandbox` is false; no-op if started).
    /// Returns false for an unknown app.
    pub fn start_pipeline(&self, app_id: &str) -> bool {
        let now = self.core().clock.now_ms();
        let mut st = self.state();
        match st.apps.get_mut(app_id) {
            Some(a) => {
                a.started_ms.get_or_insert(now);
                true
            }
            None => false,
        }
    }

    /// Replaces an app's token with a new one (the old one stops working), as when Gupshup
    /// rotates or revokes it (issue 17 point 12). Returns the new token, or `None` for an app
    /// without a token.
    pub fn rotate_app_token(&self, app_id: &str) -> Option<String> {
        let mut st = self.state();
        let app = st.apps.get_mut(app_id)?;
        let tok = app.token.as_mut()?;
        let old = std::mem::replace(&mut tok.token, state::new_app_token());
        let new = tok.token.clone();
        st.app_tokens.remove(&old);
        st.app_tokens.insert(new.clone(), app_id.to_string());
        Some(new)
    }

    /// Delivers an account event (or any body) for `app_id`, filling the v2 envelope, to the
    /// app's callback URL and its ACCOUNT/ALL subscriptions. Returns the filled event and the
    /// number of targets, or `None` for an unknown app.
    pub fn send_event(&self, app_id: &str, body: Value) -> Option<(Value, usize)> {
        let now = self.core().clock.now_ms();
        let (event, targets) = {
            let st = self.state();
            let app = st.apps.get(app_id)?;
            (envelope(app, body, now), account_targets(&st, app_id))
        };
        for url in &targets {
            self.core().send_callback(url, event.clone());
        }
        Some((event, targets.len()))
    }
}

/// Callback URL plus URLs of active subscriptions with ACCOUNT or ALL.
fn account_targets(st: &State, app_id: &str) -> Vec<String> {
    let mut urls: Vec<String> = st.apps.get(app_id).and_then(|a| a.callback_url.clone()).into_iter().collect();
    urls.extend(
        st.subscriptions.values().filter(|s| s.app_id == app_id && s.wants_account_events()).map(|s| s.url.clone()),
    );
    urls
}
