//! The Whapi.Cloud partner adapter (docs/providers.md §3): a channel (a hosted WhatsApp Web-style
//! session) is created on the partner ("manager") API, its webhooks are pointed at our
//! ingress, the customer links a phone by QR or pairing code on the channel's Gate API, and
//! the channel optionally goes live and gets days from the partner balance.
//!
//! Pipeline (step names fixed): `create_channel` → `configure_webhooks` → `await_connection`
//! → `go_live` (only when asked). Capability ports: [`ChannelOps`] (get, connect code, mode,
//! extend, delete with refund, balance) and [`SubscriptionOps`] over the channel's webhooks.
//!
//! Idempotency of the create: the channel name carries a short digest of the onboarding's
//! idempotency key (`"<channel_name> · <10 hex>"`), and a create first lists the partner's
//! channels for that exact name in the project (Whapi has no idempotency header).

mod channels;
mod client;
mod model;
mod pipeline;
mod subscriptions;
mod webhook;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use self::client::{Client, Gate};
pub use self::client::{MANAGER_BASE_URL, credential_problems};
use self::model::{Channel, Health};
use super::builtin::AdapterDeps;
use super::http::{RateLimiter, rate_key};
use super::{
    CallContext, CallbackEvent, CancelOutcome, ChannelOps, CredentialsCheck, Observation, Provider, ProviderError,
    ProviderFactory, ProviderHandle, StartPayload, StartRequest, StepOutcome, StepRun, StepSpec, SubscriptionOps,
    WhapiStart,
};
use crate::domain::{Capability, E164, OnboardingState, ProviderKind, Secret, UnixMs};

pub use self::pipeline::WhapiStep;

/// Provider name carried by rate keys and logs.
pub const PROVIDER: &str = "whapi";

/// One day in ms (Whapi bills in days).
const DAY_MS: i64 = 86_400_000;

/// `activeTill` may differ from our arithmetic by this much and still count as extended [I].
const EXTEND_TOLERANCE_MS: i64 = 60_000;

/// Longest channel name we accept from callers (proto: up to 100 characters).
const MAX_CHANNEL_NAME: usize = 100;

/// Most days one extension may add (proto: `extend_days` at most 365).
const MAX_EXTEND_DAYS: u32 = 365;

/// Tunables of the adapter; the defaults follow the documented Whapi behaviour.
#[derive(Debug, Clone)]
pub struct WhapiConfig {
    /// Channel creations allowed per `create_window` per partner token ([C] 20 per 30 min).
    pub create_limit: u32,
    /// Window of `create_limit`.
    pub create_window: Duration,
    /// After a mode change the channel restarts; no gate call for this long ([C] ~30 s).
    pub restart_grace: Duration,
    /// `set_mode` waits at most this long for the restarted channel to answer again.
    pub restart_wait: Duration,
    /// `connect_code` waits at most this long for a launching channel to show a code.
    pub code_wait: Duration,
    /// Pause between two health reads while waiting (restart, launch).
    pub wait_step: Duration,
}

impl Default for WhapiConfig {
    fn default() -> Self {
        Self {
            create_limit: 20,
            create_window: Duration::from_secs(30 * 60),
            restart_grace: Duration::from_secs(30),
            restart_wait: Duration::from_secs(60),
            code_wait: Duration::from_secs(15),
            wait_step: Duration::from_secs(1),
        }
    }
}

/// A `request_id` extension in flight or done, remembered so a retry never extends twice.
#[derive(Debug, Clone)]
struct ExtendEntry {
    /// `activeTill` before the call.
    before: i64,
    /// Days asked for.
    days: u32,
    /// True once the extension is known to be applied.
    applied: bool,
}

/// The Whapi.Cloud adapter for one account.
pub struct WhapiProvider {
    client: Client,
    limiter: RateLimiter,
    poll_interval: Duration,
    config: WhapiConfig,
    /// Extension ledger by `channel_id/request_id` (in-process; see [`ChannelOps::extend`]).
    extends: tokio::sync::Mutex<HashMap<String, ExtendEntry>>,
}

impl std::fmt::Debug for WhapiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhapiProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The factory registered in [`super::builtin::registry`]: one adapter per account.
pub fn factory(deps: AdapterDeps) -> ProviderFactory {
    Arc::new(move |_ctx: &CallContext| -> Result<Arc<dyn Provider>, crate::error::AppError> {
        Ok(Arc::new(WhapiProvider::new(&deps)))
    })
}

/// What this adapter offers besides its ports (channels, subscriptions).
const FLOW_CAPABILITIES: &[Capability] =
    &[Capability::CheckCredentials, Capability::AppToken, Capability::Cancel, Capability::Lookup];

fn invalid(field: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Invalid { field: Some(field.to_string()), message: message.into(), raw: "validation".into() }
}

/// The Whapi part of a start request, validated (before any call).
fn whapi_start(req: &StartRequest) -> Result<&WhapiStart, ProviderError> {
    let StartPayload::Whapi(w) = &req.payload else {
        return Err(invalid("request", "payload is for another provider"));
    };
    if req.idempotency_key.is_empty() {
        return Err(invalid("request_id", "must not be empty"));
    }
    let name = w.channel_name.trim();
    if name.is_empty() || name.chars().count() > MAX_CHANNEL_NAME {
        return Err(invalid("whapi.channel_name", format!("must be 1 to {MAX_CHANNEL_NAME} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("whapi.channel_name", "must not contain control characters"));
    }
    if w.extend_days > MAX_EXTEND_DAYS {
        return Err(invalid("whapi.extend_days", format!("must be at most {MAX_EXTEND_DAYS}")));
    }
    if w.extend_days > 0 && !w.go_live {
        return Err(invalid("whapi.extend_days", "days are added once live: set go_live"));
    }
    if w.project_id.as_deref().is_some_and(|p| p.chars().any(|c| c.is_control() || c == '/')) {
        return Err(invalid("whapi.project_id", "must be a Whapi project id"));
    }
    Ok(w)
}

/// The channel name that carries the idempotency key: `"<name> · <10 hex of sha256(key)>"`.
fn channel_name_for(w: &WhapiStart, idempotency_key: &str) -> String {
    let digest = Sha256::digest(format!("wa-onboard/whapi/{idempotency_key}").as_bytes());
    format!("{} · {}", w.channel_name.trim(), &hex::encode(digest)[..10])
}

fn handle_for(ch: &Channel, go_live: bool) -> ProviderHandle {
    ProviderHandle {
        external_key: ch.id.clone(),
        data: json!({ "apiUrl": ch.api_url, "projectId": ch.project_id, "name": ch.name, "go_live": go_live }),
    }
}

/// Raw channel fields worth keeping in an observation (never the token).
fn channel_fields(ch: &Channel, fields: &mut BTreeMap<String, String>) {
    fields.insert("channel_id".into(), ch.id.clone());
    if !ch.mode.is_empty() {
        // Raw, whatever the value (docs/providers.md §3.3); an archived sandbox is flagged.
        fields.insert("mode".into(), ch.mode.clone());
        if ch.mode.trim().eq_ignore_ascii_case(channels::SANDBOX_ARCHIVED_WIRE) {
            fields.insert("archived".into(), "true".into());
        }
    }
    if !ch.status.is_empty() {
        fields.insert("status".into(), ch.status.clone());
    }
    if let Some(t) = ch.active_till {
        fields.insert("activeTill".into(), t.to_string());
    }
}

/// The observation of a channel that stopped because `activeTill` passed.
fn stopped_observation(ch: &Channel) -> Observation {
    let mut fields = BTreeMap::new();
    channel_fields(ch, &mut fields);
    Observation {
        raw_status: "stopped".into(),
        fields,
        state: Some(OnboardingState::Expired),
        reason: "the channel stopped: its active period (activeTill) ended".into(),
    }
}

/// Maps a health reading to an observation. `AUTH` (phone linked) is `LIVE` unless a switch
/// to live is still pending (then `PROVISIONING`); `ERROR` and the link states are
/// `AWAITING_CUSTOMER` (the customer must scan or re-scan).
fn health_observation(health: &Health, ch: Option<&Channel>, go_live: bool) -> Observation {
    let text = health.text();
    let mut fields = BTreeMap::from([
        ("health_code".to_string(), health.status.code.to_string()),
        ("health_text".to_string(), text.clone()),
    ]);
    if let Some(ch) = ch {
        channel_fields(ch, &mut fields);
    }
    let live_mode = ch.is_some_and(|c| channels::mode_of(&c.mode) == Some(crate::providers::ChannelMode::Live));
    let (state, reason) = match text.as_str() {
        "AUTH" if !go_live || live_mode => (OnboardingState::Live, "the phone is connected".to_string()),
        "AUTH" => (OnboardingState::Provisioning, "the phone is connected; switching the channel to live".to_string()),
        "ERROR" => (OnboardingState::AwaitingCustomer, "the channel reported health ERROR; reconnect the phone".into()),
        other => (OnboardingState::AwaitingCustomer, format!("waiting for the phone to connect (health {other})")),
    };
    Observation { raw_status: text, fields, state: Some(state), reason }
}

/// `+digits` when the provider's phone parses as E.164.
fn e164(digits: &str) -> Option<E164> {
    E164::parse(digits).ok()
}

/// True for the error a stopped (expired) channel answers on the gate ([I] 402).
fn is_stopped_error(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Precondition { raw, .. } if raw == "402")
}

impl WhapiProvider {
    /// An adapter with the default [`WhapiConfig`].
    pub fn new(deps: &AdapterDeps) -> Self {
        Self {
            client: Client::new(deps.http.clone(), deps.retry),
            limiter: deps.limiter.clone(),
            poll_interval: deps.poll_interval,
            config: WhapiConfig::default(),
            extends: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the tunables.
    pub fn with_config(mut self, config: WhapiConfig) -> Self {
        self.config = config;
        self
    }

    /// Unlinks the phone from the channel (`POST /users/logout`); Whapi then sends a `users`
    /// logout webhook.
    pub async fn logout_channel(&self, ctx: &CallContext, target: &super::ResourceRef) -> Result<(), ProviderError> {
        let gate = self.gate_for(ctx, &target.handle, target.secret.as_ref()).await?.0;
        self.client.logout(&gate).await
    }

    /// Where to call the channel's Gate API: `apiUrl` from the handle and the token from the
    /// stored secret; whatever is missing comes from `GET /channels/{id}` (returned too).
    async fn gate_for(
        &self,
        ctx: &CallContext,
        handle: &ProviderHandle,
        secret: Option<&Secret>,
    ) -> Result<(Gate, Option<Channel>), ProviderError> {
        let api_url = handle.data.get("apiUrl").and_then(Value::as_str).filter(|u| !u.is_empty());
        if let (Some(api_url), Some(token)) = (api_url, secret.filter(|s| !s.is_empty())) {
            return Ok((Gate { api_url: api_url.to_string(), token: token.clone() }, None));
        }
        let ch = self.client.get_channel(ctx, &handle.external_key).await?;
        let gate = gate_of(&ch, secret)?;
        Ok((gate, Some(ch)))
    }

    /// The project to create in: the request's, the account's, or the partner's only one.
    async fn project_for(&self, ctx: &CallContext, w: &WhapiStart) -> Result<String, ProviderError> {
        if let Some(p) = w.project_id.as_deref().filter(|p| !p.is_empty()) {
            return Ok(p.to_string());
        }
        if let Some(p) = ctx.options.project_id.as_deref().filter(|p| !p.is_empty()) {
            return Ok(p.to_string());
        }
        let projects = self.client.projects(ctx).await?;
        match projects.as_slice() {
            [only] if !only.id.is_empty() => Ok(only.id.clone()),
            _ => {
                Err(invalid("whapi.project_id", "required: the partner has several projects and the account sets none"))
            }
        }
    }

    /// Creates the channel, first looking for the one an earlier attempt may have created
    /// when `earlier_attempt` (the lookup needs the channel list, which no vendor page
    /// documents, docs/providers.md §3.2 [C2]: a first attempt has nothing to find and sends only
    /// the documented `PUT /channels`). Returns the channel and whether it was found
    /// (reconciled). A lookup that fails never falls through to a second create: a second
    /// channel costs days.
    async fn create_or_find(
        &self,
        ctx: &CallContext,
        req: &StartRequest,
        earlier_attempt: bool,
    ) -> Result<(Channel, bool), ProviderError> {
        let w = whapi_start(req)?;
        let name = channel_name_for(w, &req.idempotency_key);
        let project = self.project_for(ctx, w).await?;
        if earlier_attempt {
            match self.find_channel(ctx, &name, &project).await {
                Ok(Some(ch)) => return Ok((ch, true)),
                Ok(None) => {}
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    return Err(ProviderError::Precondition {
                        raw: "reconcile_create".into(),
                        message: format!(
                            "an earlier attempt may have created the channel, and the channel list that would \
                             tell cannot be read ({e}); not creating a second channel"
                        ),
                    });
                }
            }
        }
        let token = client::partner_token(ctx)?;
        // [C] 20 creations per 30 minutes per partner token: queue here instead of a 429.
        let key = rate_key(PROVIDER, "create_channel", token.expose());
        let slot = self.limiter.acquire(&key, self.config.create_limit, self.config.create_window).await?;
        let created = self.client.create_channel(ctx, &name, &project).await;
        slot.sent().await;
        let ch = created?;
        if ch.id.is_empty() || ch.token.is_empty() {
            return Err(ProviderError::Malformed {
                message: "whapi.create_channel: channel without id or token".into(),
            });
        }
        Ok((ch, false))
    }

    /// The oldest channel named `name` in `project`, with its token (fetched when the list
    /// omits it).
    async fn find_channel(
        &self,
        ctx: &CallContext,
        name: &str,
        project: &str,
    ) -> Result<Option<Channel>, ProviderError> {
        let mut found: Vec<Channel> = self
            .client
            .list_channels(ctx)
            .await?
            .into_iter()
            .filter(|c| c.name == name && (c.project_id.is_empty() || c.project_id == project))
            .collect();
        found.sort_by_key(|c| c.creation_ts.unwrap_or(i64::MAX));
        let Some(ch) = found.into_iter().next() else { return Ok(None) };
        if !ch.token.is_empty() && !ch.api_url.is_empty() {
            return Ok(Some(ch));
        }
        Ok(Some(self.client.get_channel(ctx, &ch.id).await?))
    }
}

/// The Gate of a channel object, preferring the stored token.
fn gate_of(ch: &Channel, secret: Option<&Secret>) -> Result<Gate, ProviderError> {
    let token = match secret.filter(|s| !s.is_empty()) {
        Some(s) => s.clone(),
        None if !ch.token.is_empty() => Secret::new(ch.token.clone()),
        None => return Err(ProviderError::Malformed { message: "whapi.get_channel: channel without token".into() }),
    };
    if ch.api_url.is_empty() {
        return Err(ProviderError::Malformed { message: "whapi.get_channel: channel without apiUrl".into() });
    }
    Ok(Gate { api_url: ch.api_url.clone(), token })
}

fn now_ms() -> UnixMs {
    crate::domain::now_ms()
}

#[async_trait]
impl Provider for WhapiProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Whapi
    }

    fn flow_capabilities(&self) -> &[Capability] {
        FLOW_CAPABILITIES
    }

    /// A cheap partner call (`GET /projects`) validates the partner token.
    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        let projects = self.client.projects(ctx).await?;
        let mut fields = BTreeMap::from([("projects".to_string(), projects.len().to_string())]);
        if let Some(p) = ctx.options.project_id.as_deref() {
            fields.insert("project_found".into(), projects.iter().any(|x| x.id == p).to_string());
        }
        Ok(CredentialsCheck { summary: format!("Whapi partner token valid ({} projects)", projects.len()), fields })
    }

    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        webhook::parse(body)
    }

    /// Deletes the channel (unused paid days go back to the balance). Refused once the phone
    /// is connected: a connected channel is a finished onboarding, removed through
    /// `DeleteChannel` instead.
    async fn cancel(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        let ch = self.client.get_channel(ctx, &handle.external_key).await?;
        if !ch.is_stopped() {
            let gate = gate_of(&ch, None)?;
            match self.client.health(&gate, false).await {
                Ok(h) if h.text() == "AUTH" => {
                    return Err(ProviderError::Precondition {
                        raw: "AUTH".into(),
                        message: "the channel is connected: the onboarding is finished".into(),
                    });
                }
                Ok(_) => {}
                Err(e) if is_stopped_error(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let deleted = self.client.delete_channel(ctx, &handle.external_key).await?;
        let refunded_days = u32::try_from(deleted.refunded_days.unwrap_or(0).max(0)).unwrap_or(u32::MAX);
        Ok(CancelOutcome { raw_status: "deleted".into(), refunded_days })
    }

    fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec> {
        pipeline::specs(req)
    }

    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        self.run_pipeline_step(ctx, run).await
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn subscriptions(&self) -> Option<&dyn SubscriptionOps> {
        Some(self)
    }

    fn channels(&self) -> Option<&dyn ChannelOps> {
        Some(self)
    }
}
