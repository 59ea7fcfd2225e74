//! The Gupshup Tech-Provider adapter (docs/providers.md §1): partner login with a cached 24 h
//! token, app linking (`POST /partner/tpp/app`) with 409 recovery and callback repair, the
//! app token, the provisioning pipeline poll, the go-live and account callbacks, and
//! per-app webhook subscriptions.
//!
//! Pipeline: `link_app` → `fetch_app_token` → `provisioning` → `subscribe` (only with
//! `subscribe_on_live`, and only once live).

mod client;
mod credentials;
#[cfg(test)]
mod fuzz;
mod model;
mod subscriptions;
#[cfg(test)]
mod tests;
mod validation;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

pub use client::{BASE_URL, GupshupLimits, Limit};
use client::{Client, LinkForm, Linked};
pub use credentials::credential_problems;
use model::{
    CREATION_DONE, CREATION_ERROR, LIVE_NEEDS_FINALIZE, PIPELINE_FINALIZE, PIPELINE_RETRIES, PipelineResponse,
    error_is_final, scalar_text,
};

use subscriptions::{create_form, to_domain};
pub use validation::{APP_NAME_RE, DEFAULT_SUBSCRIPTION_VERSION};
use validation::{validate_spec, validate_start};

use super::builtin::AdapterDeps;
use super::http::TokenStatus;
use super::{
    CallContext, CallbackEvent, CancelOutcome, CreateScope, CredentialsCheck, GupshupStart, Observation,
    PartnerTokenOps, PipelineStep, Provider, ProviderError, ProviderFactory, ProviderHandle, ProviderSubscription,
    StartPayload, StartRequest, StepOutcome, StepRun, StepSpec, SubscriptionOps, SubscriptionSpec, step_of,
};
use crate::domain::{AppId, Capability, GupshupDetails, OnboardingState, ProviderKind, Secret, WabaId};
use crate::error::AppError;

/// The Gupshup pipeline's steps (stored names in [`PipelineStep::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GupshupStep {
    /// `link_app`: link the WABA and phone to a new Gupshup app.
    LinkApp,
    /// `fetch_app_token`: fetch the app token (stored as the onboarding secret).
    FetchAppToken,
    /// `provisioning`: poll the provisioning pipeline until live or failed.
    Provisioning,
    /// `subscribe`: create the `subscribe_on_live` subscription, once live.
    Subscribe,
}

impl PipelineStep for GupshupStep {
    const ALL: &'static [Self] = &[Self::LinkApp, Self::FetchAppToken, Self::Provisioning, Self::Subscribe];

    fn name(self) -> &'static str {
        match self {
            Self::LinkApp => "link_app",
            Self::FetchAppToken => "fetch_app_token",
            Self::Provisioning => "provisioning",
            Self::Subscribe => "subscribe",
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            Self::LinkApp => "Link the WABA and phone to a new Gupshup app",
            Self::FetchAppToken => "Fetch the Gupshup app token",
            Self::Provisioning => "Wait for Gupshup provisioning to finish",
            Self::Subscribe => "Create the subscription requested for live",
        }
    }
}

/// How long provisioning may take before the watchdog stalls the onboarding [I].
const PROVISIONING_DEADLINE: Duration = Duration::from_secs(3600);

/// What this adapter offers besides its ports (partner token, subscriptions): with them, all
/// of Gupshup's API capabilities (no cancel: docs/providers.md has no way to delete a linked
/// app).
const FLOW_CAPABILITIES: [Capability; 6] = [
    Capability::CheckCredentials,
    Capability::LinkApp,
    Capability::AppToken,
    Capability::PipelineStatus,
    Capability::LiveEvent,
    Capability::Lookup,
];

/// The factory registered in [`super::builtin::registry`]: one adapter (and partner-token
/// cache) per Gupshup account.
pub fn factory(deps: AdapterDeps) -> ProviderFactory {
    factory_with_limits(deps, GupshupLimits::default())
}

/// [`factory`] with other client-side limits (configured; benchmarks scale them down).
pub fn factory_with_limits(deps: AdapterDeps, limits: GupshupLimits) -> ProviderFactory {
    Arc::new(move |ctx: &CallContext| -> Result<Arc<dyn Provider>, AppError> {
        if ctx.credentials.provider() != ProviderKind::Gupshup {
            return Err(AppError::internal(format!(
                "the Gupshup adapter was asked to serve a {} account",
                ctx.credentials.provider()
            )));
        }
        Ok(Arc::new(GupshupProvider::with_limits(deps.clone(), limits)))
    })
}

/// The Gupshup adapter for one account.
#[derive(Debug)]
pub struct GupshupProvider {
    client: Client,
    poll_interval: Duration,
}

impl GupshupProvider {
    /// An adapter with the documented rate limits.
    pub fn new(deps: AdapterDeps) -> Self {
        Self::with_limits(deps, GupshupLimits::default())
    }

    /// An adapter with other limits (tests shorten the windows).
    pub fn with_limits(deps: AdapterDeps, limits: GupshupLimits) -> Self {
        Self { client: Client::new(deps.http, deps.limiter, deps.retry, limits), poll_interval: deps.poll_interval }
    }

    /// Links the app: validates before any call, recovers the app of an earlier attempt from
    /// the 409 (untouched: the engine must bind it first, see [`Self::run_link`]), repairs a
    /// callback that failed to set.
    async fn link(&self, ctx: &CallContext, req: &StartRequest) -> Result<LinkOutcome, ProviderError> {
        let (start, form) = validate_start(ctx, req)?;
        let linked = match self.client.link_app(ctx, &form, &ctx.webhook_url).await {
            Ok(l) => l,
            // "Bot Already Exists" [C]: the name is taken, possibly by our own earlier link
            // whose answer was lost (docs/providers.md 1.7 point 9).
            Err(e) if e.status() == Some(409) => self.recover_bot_exists(ctx, &form, &e).await?,
            Err(e) => {
                let lc = e.message_lc();
                let raw = e.status().map(|s| s.to_string()).unwrap_or_default();
                let message = e.message.clone().unwrap_or_default();
                return Err(match e.status() {
                    Some(400) if lc.contains("app name") => {
                        ProviderError::Invalid { field: Some("gupshup.app_name".into()), message, raw }
                    }
                    Some(400) if lc.contains("region") => {
                        ProviderError::Invalid { field: Some("gupshup.storage_region".into()), message, raw }
                    }
                    _ => e.into(),
                });
            }
        };
        let (app_id, reconciled, repaired) = match linked {
            Linked::Created(id) => (id, false, false),
            // An earlier attempt (or a crash before we saw its answer) linked this phone, or
            // someone else did. Its callback may never have been set (a partial success we did
            // not get to repair); `run_link` sets it again once the app is known to be ours:
            // setting our own URL twice is harmless, re-pointing another's app is not.
            Linked::Exists(id) => (id, true, false),
            Linked::CallbackFailed(id) => {
                self.ensure_callback(ctx, &id).await?;
                (id, false, true)
            }
        };
        Ok(LinkOutcome { start: start.clone(), form, app_id, reconciled, repaired })
    }

    /// A 409 without the app's id (`Bot Already Exists`): looks the partner's apps up by
    /// phone (docs/providers.md 1.3.6, 1.7 point 9). An app with exactly our phone is the one an
    /// earlier attempt linked → [`Linked::Exists`], and the engine's binding rules decide
    /// whether this onboarding may adopt it (the same path as the phone-409). Anything else
    /// leaves the name taken → `Conflict`.
    async fn recover_bot_exists(
        &self,
        ctx: &CallContext,
        form: &LinkForm,
        e: &client::CallError,
    ) -> Result<Linked, ProviderError> {
        let message = e.message.clone().unwrap_or_default();
        let conflict = |why: String| ProviderError::Conflict { raw: "409".into(), message: why };
        let apps = match self.client.find_apps_by_phone(ctx, &form.phone).await {
            Ok(apps) => apps,
            // A transient failure: the engine retries the step, which links (409) and looks again.
            Err(err) if err.is_retryable() => return Err(err),
            Err(err) => {
                return Err(conflict(format!(
                    "app name is taken at Gupshup ({message}), and the app list could not be read: {err}"
                )));
            }
        };
        if let Some(app) = apps.iter().find(|a| a.phone == form.phone) {
            tracing::info!(app_id = %app.id, "Gupshup 409 recovered: the phone's app is in the app list.");
            return Ok(Linked::Exists(app.id.clone()));
        }
        let why = match apps.iter().find(|a| a.name.eq_ignore_ascii_case(&form.name)) {
            Some(other) => format!(
                "app name '{}' is used by another of this partner's apps ({}, phone {})",
                form.name, other.id, other.phone
            ),
            None => format!("app name is taken at Gupshup: {message}"),
        };
        Err(conflict(why))
    }

    /// Sets the app's callback URL to our ingress.
    async fn ensure_callback(&self, ctx: &CallContext, app_id: &str) -> Result<(), ProviderError> {
        match self.client.set_callback(ctx, app_id, None, &ctx.webhook_url).await {
            Ok(()) => Ok(()),
            // The phone's app is not ours to act on (another partner's, [I]).
            Err(ProviderError::Unauthenticated { raw } | ProviderError::NotFound { raw }) => {
                Err(ProviderError::Conflict {
                    raw,
                    message: format!("the phone is already linked to app {app_id}, which this account cannot access"),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn run_link(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        if run.handle.is_some() && run.data.get(ADOPTING) == Some(&Value::Bool(true)) {
            // Second half of an adoption: the engine bound the found app to this onboarding
            // (it was our own earlier attempt), so now it may be touched.
            let app_id = app_of(run)?.to_string();
            let (start, form) = validate_start(ctx, &run.request)?;
            self.ensure_callback(ctx, &app_id).await?;
            let out = LinkOutcome { start: start.clone(), form, app_id, reconciled: true, repaired: false };
            return Ok(linked(out));
        }
        let out = self.link(ctx, &run.request).await?;
        if out.reconciled {
            // The 409 named an existing app. Nothing touches it (its callback included) until the
            // engine has decided it is this onboarding's own and bound it; then this step runs
            // again and finishes above.
            let obs = Observation {
                raw_status: "APP_EXISTS".into(),
                fields: BTreeMap::from([("appId".to_string(), out.app_id.clone())]),
                state: None,
                reason: String::new(),
            };
            return Ok(StepOutcome::wait(Duration::ZERO, obs)
                .handle(out.handle())
                .found()
                .data(json!({"app_id": out.app_id, ADOPTING: true})));
        }
        Ok(linked(out))
    }

    async fn run_fetch_token(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let app_id = app_of(run)?;
        // Get-or-create at Gupshup: safe to repeat [C].
        let token = self.client.app_token(ctx, app_id, false).await?;
        let obs = Observation {
            raw_status: "APP_TOKEN_ISSUED".into(),
            fields: BTreeMap::from([("appId".to_string(), app_id.to_string())]),
            state: None,
            reason: String::new(),
        };
        Ok(StepOutcome::done(obs).secret(token).with_details(token_ready()))
    }

    async fn run_provisioning(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let app_id = app_of(run)?;
        let (resp, token) = self.client.pipeline(ctx, app_id, run.secret.as_ref()).await?;
        let mut obs = observe(&resp);
        // The live event arrived (the onboarding is LIVE) while the pipeline still shows an
        // earlier stage: the event is Gupshup's go-live signal [C], the pipeline view lags.
        // Never demote a LIVE onboarding for that; the step is done (subscriptions may follow).
        let live_by_event = run.state == OnboardingState::Live && obs.state == Some(OnboardingState::Provisioning);
        if live_by_event {
            obs.state = None;
            obs.reason = format!("live event received; the pipeline still reports {}", obs.raw_status);
        }
        let mut step = match obs.state {
            Some(OnboardingState::Live | OnboardingState::Failed) => StepOutcome::done(obs),
            None if live_by_event => StepOutcome::done(obs),
            _ => StepOutcome::wait(self.poll_interval, obs),
        };
        // The stored app token was rejected and fetched again: store the new one.
        if run.secret.as_ref() != Some(&token) {
            step = step.secret(token).with_details(token_ready());
        }
        Ok(step)
    }

    async fn run_subscribe(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let app_id = app_of(run)?;
        let spec = match &run.request.payload {
            StartPayload::Gupshup(GupshupStart { subscribe_on_live: Some(spec), .. }) => spec,
            _ => {
                let obs = Observation { raw_status: "NO_SUBSCRIPTION_REQUESTED".into(), ..Observation::default() };
                return Ok(StepOutcome::done(obs));
            }
        };
        if run.state != OnboardingState::Live {
            // Gupshup: subscribe only after the live event [C]. The engine runs this step
            // after provisioning reached LIVE; should it run earlier, wait rather than fail.
            let obs = Observation {
                raw_status: "WAITING_FOR_LIVE".into(),
                reason: "subscriptions are created once the app is live".into(),
                ..Observation::default()
            };
            return Ok(StepOutcome::wait(self.poll_interval, obs));
        }
        let (sub, reconciled) = self.subscribe_reconciling(ctx, app_id, run.secret.as_ref(), spec).await?;
        let obs = Observation {
            raw_status: if sub.spec.active { "SUBSCRIPTION_ACTIVE".into() } else { "SUBSCRIPTION_INACTIVE".into() },
            fields: BTreeMap::from([
                ("subscriptionId".to_string(), sub.id.clone()),
                ("tag".to_string(), sub.spec.tag.clone()),
                ("mode".to_string(), sub.provider_mode.to_string()),
            ]),
            state: None,
            reason: String::new(),
        };
        let mut step = StepOutcome::done(obs)
            .with_details(GupshupDetails { created_subscription: Some(sub.id), ..GupshupDetails::default() });
        if reconciled {
            step = step.attribute("reconciled", "true");
        }
        Ok(step)
    }

    /// Creates the subscription unless one with its tag exists (tags are unique per app, so
    /// the tag is the natural key an earlier attempt is found by).
    async fn subscribe_reconciling(
        &self,
        ctx: &CallContext,
        app_id: &str,
        token: Option<&Secret>,
        spec: &SubscriptionSpec,
    ) -> Result<(ProviderSubscription, bool), ProviderError> {
        validate_spec(spec, "gupshup.subscription.")?;
        let (existing, token) = self.client.list_subscriptions(ctx, app_id, token).await?;
        if let Some(w) = existing.into_iter().find(|s| s.tag == spec.tag) {
            return Ok((to_domain(w)?, true));
        }
        let created = self.client.create_subscription(ctx, app_id, Some(&token), &create_form(spec)).await?;
        Ok((to_domain(created)?, false))
    }
}

/// The details patch of a fetched app token.
fn token_ready() -> GupshupDetails {
    GupshupDetails { app_token_ready: Some(true), ..GupshupDetails::default() }
}

/// Step data key: the link found an existing app, which the engine must bind first.
const ADOPTING: &str = "adopting";

/// The finished `link_app` step of a link.
fn linked(out: LinkOutcome) -> StepOutcome {
    let handle = out.handle();
    let mut step = StepOutcome::done(out.observation())
        .handle(handle)
        .data(json!({"app_id": out.app_id, "reconciled": out.reconciled, "callback_repaired": out.repaired}))
        .with_details(GupshupDetails {
            app_id: AppId::parse(out.app_id.clone()).ok(),
            app_name: Some(out.form.name.clone()),
            waba_id: WabaId::parse(out.form.waba_id.clone()).ok(),
            phone: Some(out.start.phone.clone()),
            storage_region: Some(out.form.storage_region.clone().unwrap_or_default()),
            subscribe_on_live: Some(out.start.subscribe_on_live.is_some()),
            ..GupshupDetails::default()
        });
    if out.reconciled {
        step = step.attribute("reconciled", "true");
    }
    if out.repaired {
        step = step.attribute("callback_repaired", "true");
    }
    step
}

/// What a link produced.
struct LinkOutcome {
    start: GupshupStart,
    form: LinkForm,
    app_id: String,
    reconciled: bool,
    repaired: bool,
}

impl LinkOutcome {
    fn handle(&self) -> ProviderHandle {
        ProviderHandle {
            external_key: self.app_id.clone(),
            data: json!({
                "app_name": self.form.name,
                "waba_id": self.form.waba_id,
                "phone": self.form.phone,
                "storage_region": self.form.storage_region,
            }),
        }
    }

    fn observation(&self) -> Observation {
        let mut fields = BTreeMap::from([("appId".to_string(), self.app_id.clone())]);
        if self.repaired {
            fields.insert("callbackRepaired".into(), "true".into());
        }
        Observation {
            // [I] Gupshup answers only `status: success` here; the stages come from the poll.
            raw_status: "APP_LINKED".into(),
            fields,
            state: None,
            reason: String::new(),
        }
    }
}

/// The app id of the onboarding (set by `link_app`).
fn app_of(run: &StepRun) -> Result<&str, ProviderError> {
    run.handle.as_ref().map(|h| h.external_key.as_str()).filter(|k| !k.is_empty()).ok_or_else(|| {
        ProviderError::Precondition {
            raw: String::new(),
            message: format!("{} ran before link_app recorded the app", run.name),
        }
    })
}

/// Pipeline stages → canonical state (1.3.4, 1.7 points 10 and 11): a final `ERROR`
/// ([`error_is_final`]) failed; `WHATSAPP_PROVISIONING_DONE` (with `FINALIZE` only if
/// [`LIVE_NEEDS_FINALIZE`]) or a `live: true` flag live; anything else still provisioning.
fn observe(p: &PipelineResponse) -> Observation {
    let creation = p.creation_stage();
    let stage = p.pipeline_stage();
    let fields: BTreeMap<String, String> =
        p.whatsapp.iter().filter_map(|(k, v)| scalar_text(v).map(|t| (k.clone(), t))).collect();
    let retries = p.stage_retries();
    let done = creation == CREATION_DONE && (!LIVE_NEEDS_FINALIZE || stage == PIPELINE_FINALIZE);
    let (state, reason) = if creation == CREATION_ERROR && error_is_final(retries) {
        let tail = retries.map(|n| format!(" (stageRetries {n})")).unwrap_or_default();
        (OnboardingState::Failed, format!("Gupshup provisioning failed at {stage}{tail}"))
    } else if creation == CREATION_ERROR {
        let n = retries.unwrap_or_default();
        (OnboardingState::Provisioning, format!("Gupshup is retrying {stage} ({n} of {PIPELINE_RETRIES} retries)"))
    } else if done || p.live_flag() {
        let reason = if stage == PIPELINE_FINALIZE {
            "provisioned".to_string()
        } else {
            // Visible, as the pipeline lags the go-live (public clients warn of it).
            format!("provisioned; the pipeline still reports {stage}")
        };
        (OnboardingState::Live, reason)
    } else {
        (OnboardingState::Provisioning, String::new())
    };
    Observation { raw_status: format!("{creation}/{stage}"), fields, state: Some(state), reason }
}

#[async_trait]
impl Provider for GupshupProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gupshup
    }

    fn flow_capabilities(&self) -> &[Capability] {
        &FLOW_CAPABILITIES
    }

    /// The declared client-secret expiry (issue 17 point 15; `credentials.rs`).
    fn credential_expiry(&self, ctx: &CallContext) -> Option<super::CredentialExpiry> {
        credentials::secret_expiry(&ctx.options, crate::domain::now_ms())
    }

    /// A partner login (forced, so it really tests the credentials now).
    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        self.client.refresh_partner(ctx).await?;
        let info = self.client.partner_info();
        let mut fields = BTreeMap::new();
        if let Some(id) = &info.partner_id {
            fields.insert("partner_id".to_string(), id.clone());
        }
        if let Some(t) = info.is_tpp {
            fields.insert("is_tpp".to_string(), t.to_string());
        }
        let summary = match &info.name {
            Some(n) => format!("Gupshup partner '{n}'"),
            None => "Gupshup partner login succeeded".to_string(),
        };
        Ok(CredentialsCheck { summary, fields })
    }

    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        webhook::parse(body)
    }

    async fn cancel(&self, _ctx: &CallContext, _handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        Err(ProviderError::NotSupported { capability: Capability::Cancel })
    }

    fn validate_start(&self, ctx: &CallContext, req: &StartRequest) -> Result<(), ProviderError> {
        validate_start(ctx, req).map(drop)
    }

    /// The link: one app per phone under a partner login, which a 409 names to anyone.
    fn create_scope(&self, ctx: &CallContext, run: &StepRun) -> Option<CreateScope> {
        if GupshupStep::parse(&run.name) != Some(GupshupStep::LinkApp) || run.handle.is_some() {
            return None;
        }
        let (_, form) = validate_start(ctx, &run.request).ok()?;
        let (email, _) = client::credentials(ctx).ok()?;
        let base = ctx.base_url.trim_end_matches('/');
        Some(CreateScope { identity: format!("gupshup\n{base}\n{}", email.to_ascii_lowercase()), subject: form.phone })
    }

    fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec> {
        let subscribe = matches!(&req.payload, StartPayload::Gupshup(g) if g.subscribe_on_live.is_some());
        vec![
            GupshupStep::LinkApp.spec().entering(OnboardingState::Pending),
            GupshupStep::FetchAppToken.spec(),
            GupshupStep::Provisioning.spec().entering(OnboardingState::Provisioning).deadline(PROVISIONING_DEADLINE),
            GupshupStep::Subscribe.spec().enabled(subscribe),
        ]
    }

    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        match step_of::<GupshupStep>(ProviderKind::Gupshup, run)? {
            GupshupStep::LinkApp => self.run_link(ctx, run).await,
            GupshupStep::FetchAppToken => self.run_fetch_token(ctx, run).await,
            GupshupStep::Provisioning => self.run_provisioning(ctx, run).await,
            GupshupStep::Subscribe => self.run_subscribe(ctx, run).await,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn subscriptions(&self) -> Option<&dyn SubscriptionOps> {
        Some(self)
    }

    fn partner_token(&self) -> Option<&dyn PartnerTokenOps> {
        Some(self)
    }
}

#[async_trait]
impl PartnerTokenOps for GupshupProvider {
    async fn refresh_partner_token(&self, ctx: &CallContext) -> Result<TokenStatus, ProviderError> {
        self.client.refresh_partner(ctx).await
    }

    fn partner_token_status(&self) -> TokenStatus {
        self.client.partner_status()
    }
}
