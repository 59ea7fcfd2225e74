//! Exotel WhatsApp ISV onboarding-link simulator (docs/providers.md §2).
//!
//! Two regional hosts (Singapore `api.exotel.com`, Mumbai `api.in.exotel.com`) served by two
//! listeners over one shared state. The partner mints 24 h onboarding links and polls their
//! token status (VALID / USED / EXPIRED); in sandbox mode the sim plays one customer who opens
//! the link a few seconds after the token is first validated.

mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::sim::common::{self, Running, SimCore, lock};

pub use state::{CompleteError, CustomerView, TokenStatus, TokenView};

/// Which Exotel cluster a listener (and an account) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExotelRegion {
    /// `api.exotel.com`.
    Singapore,
    /// `api.in.exotel.com`.
    Mumbai,
}

/// One Exotel account the simulator accepts; it exists only in its own region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExotelAccount {
    /// Account SID (path segment `/v2/accounts/{sid}`).
    pub sid: String,
    /// Basic-auth user.
    pub api_key: String,
    /// Basic-auth password.
    pub api_token: String,
    /// Cluster the account lives in.
    pub region: ExotelRegion,
}

/// Simulator settings: accepted accounts, token rules and the sandbox customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExotelSimConfig {
    /// Accepted accounts (default: `sandbox-sg` in Singapore, `sandbox-in` in Mumbai, both
    /// with key `sandbox-key` and token `sandbox-token`).
    pub accounts: Vec<ExotelAccount>,
    /// Play the customer: one customer completes `customer_delay_ms` after the token is first
    /// validated (default true).
    pub sandbox: bool,
    /// Link validity (default 86 400 s, documented 24 h).
    pub token_ttl_secs: u64,
    /// Customers one token can onboard (default 5, documented).
    pub customers_per_token: usize,
    /// Delay of the sandbox customer after the first validation (default 3000 ms).
    pub customer_delay_ms: u64,
    /// Every mint answers 402 (plan exhausted).
    pub payment_required: bool,
    /// SIDs whose calls answer 403.
    pub forbidden_sids: Vec<String>,
}

impl Default for ExotelSimConfig {
    fn default() -> Self {
        let account = |sid: &str, region| ExotelAccount {
            sid: sid.to_string(),
            api_key: "sandbox-key".to_string(),
            api_token: "sandbox-token".to_string(),
            region,
        };
        Self {
            accounts: vec![account("sandbox-sg", ExotelRegion::Singapore), account("sandbox-in", ExotelRegion::Mumbai)],
            sandbox: true,
            token_ttl_secs: 86_400,
            customers_per_token: 5,
            customer_delay_ms: 3_000,
            payment_required: false,
            forbidden_sids: Vec::new(),
        }
    }
}

/// Runtime knobs beyond the common ones (`GET|PUT /_sim/exotel/knobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExotelKnobs {
    /// Every mint answers 402.
    pub payment_required: bool,
    /// SIDs whose calls answer 403.
    pub forbidden_sids: Vec<String>,
    /// Where the mint answer puts the link (docs/providers.md §2.2; the real create answer is
    /// not published, so tests cover every shape the vendor pages show).
    pub create_shape: CreateShape,
    /// How many completions turn a token `USED` (default 1; 0 is read as 1). Exotel does not
    /// define `USED` (docs/providers.md §2.5 #3): 1 plays "at least one customer finished"
    /// (reading A), 5 plays "the quota of 5 is spent" (reading B: 1–4 completions leave the
    /// token `VALID`). Either way the token reads `EXPIRED` after its 24 h.
    pub used_after: usize,
}

impl Default for ExotelKnobs {
    fn default() -> Self {
        Self {
            payment_required: false,
            forbidden_sids: Vec::new(),
            create_shape: CreateShape::default(),
            used_after: 1,
        }
    }
}

/// Placements of the created link in the mint answer, each one a vendor page shows
/// (docs/providers.md §2.2, research-issue-17 point 2). Never `onboarding_urls`: no page has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateShape {
    /// [I] Default: `response.whatsapp.isv.data.onboarding_url` (key named on the validate
    /// page [C], its place inside `data` inferred).
    #[default]
    DataOnboardingUrl,
    /// `response.whatsapp.isv.Url`: the create page's field table [C].
    IsvUrl,
    /// `response.whatsapp.isv.data.url`.
    DataUrl,
    /// The overview's envelope (no `method`, `http_code`, `error_data`) [C], with
    /// `data.onboarding_url`.
    BareOverview,
    /// `response.whatsapp.isv.data.Url` as a one-element list.
    DataUrlList,
    /// The create page's sample as published: the validate body, no link at all [C] (a doc
    /// copy/paste error; an adapter must fail clearly on it).
    ValidateCopy,
}

struct Inner {
    core: SimCore,
    config: ExotelSimConfig,
    state: Mutex<state::State>,
    knobs: Mutex<ExotelKnobs>,
}

/// The Exotel simulator: shared state for both regional listeners. Cheap to clone.
#[derive(Clone)]
pub struct ExotelSim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExotelSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExotelSim").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// Both running listeners of a spawned [`ExotelSim`] (dropping them stops the servers).
#[derive(Debug)]
pub struct ExotelSimServers {
    /// Stands in for `api.exotel.com`.
    pub singapore: Running,
    /// Stands in for `api.in.exotel.com`.
    pub mumbai: Running,
}

impl ExotelSimServers {
    /// The listener of `region`.
    pub fn region(&self, region: ExotelRegion) -> &Running {
        match region {
            ExotelRegion::Singapore => &self.singapore,
            ExotelRegion::Mumbai => &self.mumbai,
        }
    }
}

impl ExotelSim {
    /// A simulator with `config` and a fresh core.
    pub fn new(config: ExotelSimConfig) -> Self {
        let knobs = ExotelKnobs {
            payment_required: config.payment_required,
            forbidden_sids: config.forbidden_sids.clone(),
            create_shape: CreateShape::default(),
            used_after: 1,
        };
        Self {
            inner: Arc::new(Inner {
                core: SimCore::new(),
                config,
                state: Mutex::new(state::State::with_used_after(knobs.used_after)),
                knobs: Mutex::new(knobs),
            }),
        }
    }

    /// Clock, faults, counters.
    pub fn core(&self) -> &SimCore {
        &self.inner.core
    }

    /// The configuration in force.
    pub fn config(&self) -> &ExotelSimConfig {
        &self.inner.config
    }

    /// The Singapore listener's app (provider routes plus control). See [`Self::region_router`].
    pub fn router(&self) -> axum::Router {
        self.region_router(ExotelRegion::Singapore)
    }

    /// The app of one regional host: `/v2/...` for that region's accounts, plus `/_sim`.
    pub fn region_router(&self, region: ExotelRegion) -> axum::Router {
        routes::router(self.clone(), region)
    }

    /// Serves both regions (port 0 picks free ports).
    pub async fn spawn(
        config: ExotelSimConfig,
        singapore: SocketAddr,
        mumbai: SocketAddr,
    ) -> std::io::Result<(Self, ExotelSimServers)> {
        let sim = Self::new(config);
        let sg = common::serve(sim.region_router(ExotelRegion::Singapore), singapore).await?;
        let mb = common::serve(sim.region_router(ExotelRegion::Mumbai), mumbai).await?;
        Ok((sim, ExotelSimServers { singapore: sg, mumbai: mb }))
    }

    /// Current knobs.
    pub fn knobs(&self) -> ExotelKnobs {
        lock(&self.inner.knobs).clone()
    }

    /// Replaces the knobs.
    pub fn set_knobs(&self, knobs: ExotelKnobs) {
        lock(&self.inner.state).used_after = knobs.used_after;
        *lock(&self.inner.knobs) = knobs;
    }

    /// One token as the sim sees it (status computed at the current sim time).
    pub fn token(&self, token: &str) -> Option<TokenView> {
        let now = self.inner.core.clock.now_ms();
        lock(&self.inner.state).view(&self.inner.config, token, now)
    }

    /// Every minted token.
    pub fn tokens(&self) -> Vec<TokenView> {
        let now = self.inner.core.clock.now_ms();
        lock(&self.inner.state).views(&self.inner.config, now)
    }

    /// Plays one customer completing onboarding with `token`.
    pub fn complete_customer(&self, token: &str) -> Result<TokenView, CompleteError> {
        self.complete_customers(token, 1)
    }

    /// Plays `times` customers completing onboarding with `token` (all or none; see
    /// [`CompleteError`]).
    pub fn complete_customers(&self, token: &str, times: usize) -> Result<TokenView, CompleteError> {
        let now = self.inner.core.clock.now_ms();
        lock(&self.inner.state).complete(&self.inner.config, token, times, now)
    }
}

/// Renders injected faults as Exotel error envelopes.
struct ExotelFaults;

impl common::FaultBody for ExotelFaults {
    fn error_body(&self, status: u16) -> (String, &'static str) {
        // [I] the fault layer does not know the verb; "POST" (the mint) is used.
        let body = routes::error_envelope("POST", status, status, "injected fault");
        (body.to_string(), "application/json")
    }

    fn rate_limited_body(&self) -> (String, &'static str) {
        let body = routes::error_envelope("POST", 429, 429, "Too many requests");
        (body.to_string(), "application/json")
    }

    fn ok_error_body(&self) -> (String, &'static str) {
        // [I] HTTP 200 whose isv block reports a failure with code 500.
        let body = routes::error_envelope("POST", 200, 500, "injected failure");
        (body.to_string(), "application/json")
    }
}
