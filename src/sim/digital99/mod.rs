//! 99digital Partners API simulator (docs/providers.md §4), base path `/api`.
//!
//! JSON everywhere, HTTP 200 for both `OK` and `FAIL` (reason codes). The partner logs in for a
//! 1 h Bearer token, registers and verifies a number, creates an onboarding account (link +
//! landing page) and polls `getAccounts`; a partner webhook announces the finish. In sandbox
//! mode the sim plays the business owner: each account finishes `finish_delay_ms` after it
//! was created. State is per partner (`client_id`).

mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sim::common::{self, Running, SimCore, lock};

pub use state::{AccountView, FinishError};

/// One partner login the simulator accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digital99Client {
    /// `client_id` of `POST /api/settings/accessToken`.
    pub client_id: String,
    /// `client_secret` of the same call.
    pub client_secret: String,
}

/// Simulator settings: accepted clients, documented limits (scalable by tests) and the
/// sandbox business owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Digital99SimConfig {
    /// Accepted clients (default: `sandbox-client` / `sandbox-secret`).
    pub clients: Vec<Digital99Client>,
    /// Play the business owner: accounts finish `finish_delay_ms` after creation, the
    /// verification code is always `sandbox_code`, and a number never registered through the
    /// API counts as registered and verified in the dashboard (default true).
    pub sandbox: bool,
    /// Access-token lifetime (default 3600 s, documented 1 h).
    pub token_ttl_secs: u64,
    /// Consecutive failed logins of one `client_id` that trigger a block (default 3).
    pub max_failed_logins: u32,
    /// How long a blocked `client_id` gets reason 3 (default 3600 s).
    pub block_secs: u64,
    /// The code "sent" in sandbox mode (default `123456`).
    pub sandbox_code: String,
    /// Code requests allowed per registered number (default 3, documented).
    pub max_code_requests: u32,
    /// Registered numbers that may wait without an account (default 500, documented).
    pub max_registered_numbers: usize,
    /// Lifetime of a registered number without an account (default 90 days, documented).
    pub number_ttl_days: u64,
    /// Sandbox: delay between account creation and finish (default 4000 ms).
    pub finish_delay_ms: u64,
    /// Which inferred create path is served (docs/providers.md §4.2: no page shows the URL).
    pub create_path: CreatePath,
    /// Keep a number in `getRegisteredNumbers` (with its `onboarding_link`) after an account
    /// is created for it, as the vendor's sample shows; default false, as the vendor's prose
    /// says ("once you create an account ... the number will be removed from this list").
    pub registered_keeps_link: bool,
}

/// The create-account path the sim serves. Both are inferred [I] (docs/providers.md §4.2,
/// research-issue-17 point 4); the other path answers 404 with a non-JSON body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreatePath {
    /// `POST /api/whatsapp/createOnboarding` (default: the sibling `facebook/createOnboarding`
    /// has the same page title [C]).
    #[default]
    CreateOnboarding,
    /// `POST /api/whatsapp/createAccount` only.
    CreateAccount,
    /// Neither, like a server that implements only what the vendor pages show.
    Unpublished,
}

impl Default for Digital99SimConfig {
    fn default() -> Self {
        Self {
            clients: vec![Digital99Client {
                client_id: "sandbox-client".to_string(),
                client_secret: "sandbox-secret".to_string(),
            }],
            sandbox: true,
            token_ttl_secs: 3_600,
            max_failed_logins: 3,
            block_secs: 3_600,
            sandbox_code: "123456".to_string(),
            max_code_requests: 3,
            max_registered_numbers: 500,
            number_ttl_days: 90,
            finish_delay_ms: 4_000,
            create_path: CreatePath::default(),
            registered_keeps_link: false,
        }
    }
}

struct Inner {
    core: SimCore,
    config: Digital99SimConfig,
    state: Mutex<state::State>,
    ticker_started: AtomicBool,
}

/// The 99digital simulator. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Digital99Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Digital99Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digital99Sim").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Digital99Sim {
    /// A simulator with `config` and a fresh core.
    pub fn new(config: Digital99SimConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                core: SimCore::new(),
                config,
                state: Mutex::new(state::State::default()),
                ticker_started: AtomicBool::new(false),
            }),
        }
    }

    /// Clock, faults, counters.
    pub fn core(&self) -> &SimCore {
        &self.inner.core
    }

    /// The configuration in force.
    pub fn config(&self) -> &Digital99SimConfig {
        &self.inner.config
    }

    /// The whole app: `/api/...`, `/_sim/digital99/...` and the common `/_sim` control API.
    /// Inside a tokio runtime it also starts the ticker that fires finish webhooks on time.
    pub fn router(&self) -> axum::Router {
        self.start_ticker();
        routes::router(self.clone())
    }

    /// Serves the app on `addr` (port 0 picks a free port).
    pub async fn spawn(config: Digital99SimConfig, addr: SocketAddr) -> std::io::Result<(Self, Running)> {
        let sim = Self::new(config);
        let running = common::serve(sim.router(), addr).await?;
        Ok((sim, running))
    }

    /// The code last "sent" to `whatsapp` (any partner).
    pub fn code(&self, whatsapp: &str) -> Option<String> {
        self.settle();
        lock(&self.inner.state).code(whatsapp).map(|n| n.code.clone())
    }

    /// Every onboarding account of every partner, as the sim sees it now.
    pub fn accounts(&self) -> Vec<AccountView> {
        self.settle();
        lock(&self.inner.state).account_views()
    }

    /// Plays the business owner finishing onboarding for `whatsapp` (real or temporary
    /// number) now; the partner webhook follows.
    pub fn finish(&self, whatsapp: &str) -> Result<AccountView, FinishError> {
        self.settle();
        let now = self.inner.core.clock.now_ms();
        let view = lock(&self.inner.state).finish(whatsapp, now)?;
        self.settle();
        // Re-read so `webhook_sent` reflects the settle above.
        let fresh = lock(&self.inner.state)
            .account_views()
            .into_iter()
            .find(|a| a.whatsapp == view.whatsapp && a.client_id == view.client_id);
        Ok(fresh.unwrap_or(view))
    }

    /// The partner webhook URL of `client_id`, if set.
    pub fn webhook_url(&self, client_id: &str) -> Option<String> {
        lock(&self.inner.state).webhook_url(client_id)
    }

    /// Applies clock-driven transitions (sandbox finishes, number expiry) and sends the
    /// webhooks that became due. Called on every request and by the ticker.
    fn settle(&self) {
        let now = self.inner.core.clock.now_ms();
        let due = lock(&self.inner.state).settle(&self.inner.config, now);
        if due.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(count = due.len(), "99digital sim: no runtime, webhooks dropped");
            return;
        }
        for (url, body) in due {
            self.inner.core.send_callback(&url, body);
        }
    }

    fn start_ticker(&self) {
        if tokio::runtime::Handle::try_current().is_err() || self.inner.ticker_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Digital99Sim { inner }.settle();
            }
        });
    }
}

/// Renders injected faults in 99digital's envelope.
struct Digital99Faults;

impl common::FaultBody for Digital99Faults {
    fn error_body(&self, status: u16) -> (String, &'static str) {
        // [I] 5xx carries reason 500; other injected statuses carry their own code.
        let reason = if status >= 500 { 500 } else { status };
        (serde_json::json!({ "status": "FAIL", "reason": reason }).to_string(), "application/json")
    }

    fn rate_limited_body(&self) -> (String, &'static str) {
        // [I] no documented rate-limit reason.
        (r#"{"status":"FAIL","reason":429}"#.to_string(), "application/json")
    }

    fn ok_error_body(&self) -> (String, &'static str) {
        // HTTP 200 FAIL is the provider's normal error style; reason 3 = token expired.
        (r#"{"status":"FAIL","reason":3}"#.to_string(), "application/json")
    }
}
