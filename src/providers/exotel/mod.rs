//! The Exotel ISV adapter (docs/providers.md §2): Exotel hosts the signup page; we mint 24 h
//! onboarding links (one per call, up to 50 per batch) and poll each link token's status
//! (`VALID` / `USED` / `EXPIRED`) until the business finishes or the link lapses.
//!
//! Pipeline: `mint_link` (one link) then `await_customer` (token status poll). Batch links
//! from `CreateOnboardingLinks` are minted by [`HostedLinkOps::mint_links`] and each
//! onboarding starts at `await_customer` with its handle preset, so that step needs only the
//! handle (`external_key` = token).

mod client;
mod model;
mod webhook;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

pub use self::client::credential_problems;
use self::client::{Account, Client, MintAttempts};
use super::builtin::AdapterDeps;
use super::{
    CallContext, CallbackEvent, CancelOutcome, CredentialsCheck, HostedLinkOps, LinkTokenState, LinkTokenStatus,
    MintedLink, Observation, PipelineStep, Provider, ProviderError, ProviderFactory, ProviderHandle, StartPayload,
    StartRequest, StepOutcome, StepRun, StepSpec, step_of,
};
use crate::domain::account::{AccountOptions, ExotelRegion};
use crate::domain::{Capability, ExotelDetails, OnboardingState, ProviderKind, UnixMs, now_ms};
use crate::error::AppError;

/// The Exotel pipeline's steps (stored names in [`PipelineStep::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExotelStep {
    /// `mint_link`: mints the onboarding's link.
    MintLink,
    /// `await_customer`: polls the link token until the business finishes or the link lapses.
    AwaitCustomer,
}

impl ExotelStep {
    /// The stored name, usable in constants (the core presets batch onboardings past
    /// `mint_link`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MintLink => "mint_link",
            Self::AwaitCustomer => "await_customer",
        }
    }
}

impl PipelineStep for ExotelStep {
    const ALL: &'static [Self] = &[Self::MintLink, Self::AwaitCustomer];

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn display_name(self) -> &'static str {
        match self {
            Self::MintLink => "Mint the onboarding link",
            Self::AwaitCustomer => "Wait for the business to finish the hosted signup",
        }
    }
}
/// Largest batch of links ("up to 50 URLs can be fetched at a time", docs/providers.md §2.2 [C]);
/// a batch is that many single calls.
pub const MAX_BATCH: u32 = 50;
/// Customers one link (token) can onboard within its 24 h: "A single token can successfully
/// onboard up to five different customers within the 24-hour timeframe" (docs/providers.md §2.2
/// [C]). For display only: Exotel reports no count, so nothing is enforced with it.
pub const MAX_CUSTOMERS_PER_LINK: i64 = 5;

/// What a `USED` token status means, among the readings the vendor pages allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedMeaning {
    /// Reading A: at least one customer finished with the link (it may onboard more).
    AtLeastOneCompletion,
    /// Reading B: all [`MAX_CUSTOMERS_PER_LINK`] customers finished (the quota is spent).
    QuotaExhausted,
}

/// [I] The meaning of `USED` (docs/providers.md §2.5 #3, research-issue-17 point 3). Exotel
/// returns `VALID`, `EXPIRED` or `USED` and defines none of them [C]. We take reading A
/// ("at least one completion"): it is the only reading under which a link given to one
/// customer ever reads `USED` (under reading B it would stay `VALID` and end `EXPIRED`).
/// Either way `USED` never says *which* business finished, so an Exotel onboarding is a
/// *link*, and its LIVE means "link used" ([`LIVE_MEANING`]). Change it here if Exotel ever
/// defines the status.
pub const USED_MEANS: UsedMeaning = UsedMeaning::AtLeastOneCompletion;

/// The `live_meaning` detail of a LIVE Exotel onboarding: the link was used, by a business
/// Exotel does not name (see [`USED_MEANS`]).
pub const LIVE_MEANING: &str = "link_used";

/// The `used_meaning` detail: [`USED_MEANS`] in words, for callers deciding for themselves.
pub fn used_meaning_text() -> &'static str {
    match USED_MEANS {
        UsedMeaning::AtLeastOneCompletion => {
            "at_least_one_completion: at least one business finished with the link, which may onboard up to 5 in 24 h; Exotel does not say which"
        }
        UsedMeaning::QuotaExhausted => {
            "quota_exhausted: all 5 businesses the link allows finished; Exotel does not say which"
        }
    }
}
/// [I] Pace of mint calls per account: Exotel publishes no rate limit (docs/providers.md §2.4),
/// so a batch (N calls, §2.2) goes at most this many calls per window.
pub const MINT_PACE: (u32, Duration) = (10, Duration::from_secs(1));
/// Link validity [C].
pub const LINK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The Singapore cluster [C].
pub const SINGAPORE_BASE_URL: &str = "https://api.exotel.com";
/// The Mumbai cluster [C].
pub const MUMBAI_BASE_URL: &str = "https://api.in.exotel.com";

/// The API base URL of an account's cluster, for the engine to put in
/// [`CallContext::base_url`] (the adapter itself trusts whatever base URL it gets).
pub fn region_base_url(region: ExotelRegion) -> &'static str {
    match region {
        ExotelRegion::Singapore => SINGAPORE_BASE_URL,
        ExotelRegion::Mumbai => MUMBAI_BASE_URL,
    }
}

/// The public base URL of an account: its region's cluster, Singapore unless it says Mumbai
/// (docs/providers.md §2.1 [C]).
pub fn public_base_url(options: &AccountOptions) -> &'static str {
    region_base_url(options.exotel_region.unwrap_or_default())
}

/// What this adapter offers besides its hosted-links port (batch links, token validation): no
/// cancel (Exotel has no call to revoke a link; it lapses).
const FLOW_CAPABILITIES: [Capability; 2] = [Capability::CheckCredentials, Capability::HostedLink];

/// Builds one [`ExotelProvider`] per Exotel account.
pub fn factory(deps: AdapterDeps) -> ProviderFactory {
    Arc::new(move |ctx: &CallContext| {
        if ctx.credentials.provider() != ProviderKind::Exotel {
            return Err(AppError::precondition("the Exotel adapter needs Exotel credentials"));
        }
        Ok(Arc::new(ExotelProvider::new(&deps)) as Arc<dyn super::Provider>)
    })
}

/// The Exotel adapter for one account.
#[derive(Debug, Clone)]
pub struct ExotelProvider {
    client: Client,
    poll_interval: Duration,
}

/// The status Exotel gives a token nobody has used yet [C].
const FRESH_TOKEN_STATUS: &str = "VALID";

/// A link token's status as this adapter reads it.
struct TokenReading {
    raw: String,
    state: Option<LinkTokenState>,
}

impl TokenReading {
    fn new(raw: String) -> Self {
        let state = match raw.trim().to_ascii_uppercase().as_str() {
            "VALID" => Some(LinkTokenState::Valid),
            "USED" => Some(LinkTokenState::Used),
            "EXPIRED" => Some(LinkTokenState::Expired),
            _ => None,
        };
        Self { raw, state }
    }

    /// The onboarding state the status implies (docs/providers.md §2.5 #3).
    ///
    /// An Exotel onboarding is one *link*, not one business: `USED` ([`USED_MEANS`], [I])
    /// says someone finished with the link, never who, so LIVE here means "link used"
    /// ([`LIVE_MEANING`]) and no business identity is ever attached. `EXPIRED` (24 h after
    /// minting) seen without an earlier `USED` ends the onboarding as `EXPIRED`, not FAILED:
    /// Exotel does not report whether anyone onboarded with it.
    fn onboarding_state(&self) -> Option<OnboardingState> {
        match self.state? {
            LinkTokenState::Valid => Some(OnboardingState::AwaitingCustomer),
            LinkTokenState::Used => Some(OnboardingState::Live),
            LinkTokenState::Expired => Some(OnboardingState::Expired),
        }
    }

    /// How many more businesses the token can onboard, at most.
    ///
    /// [I] Exotel reports no count, only the status (read through [`USED_MEANS`]): `VALID`
    /// means nobody used it (all 5 left), `EXPIRED` means none (the 24 h are over). For `USED`
    /// at least one of the 5 is consumed, so 4 is the most that can be left.
    fn customers_remaining(&self) -> Option<i64> {
        match self.state? {
            LinkTokenState::Valid => Some(MAX_CUSTOMERS_PER_LINK),
            LinkTokenState::Used => Some(MAX_CUSTOMERS_PER_LINK - 1),
            LinkTokenState::Expired => Some(0),
        }
    }

    /// How many more businesses the token can onboard, at least (the capacity a caller can
    /// count on). [I] Under [`USED_MEANS`] `VALID` is untouched (5); a `USED` link may have
    /// onboarded all 5 already (Exotel does not say), so 0 is all that is certain.
    fn customers_remaining_min(&self) -> Option<i64> {
        match self.state? {
            LinkTokenState::Valid => Some(MAX_CUSTOMERS_PER_LINK),
            LinkTokenState::Used | LinkTokenState::Expired => Some(0),
        }
    }

    fn observation(&self) -> Observation {
        let mut fields = BTreeMap::new();
        fields.insert("onboarding_token_status".to_string(), self.raw.clone());
        let reason = match self.state {
            Some(LinkTokenState::Valid) => "link not used yet",
            Some(LinkTokenState::Used) => "exotel link used (Exotel does not say which business)",
            Some(LinkTokenState::Expired) => "link expired; Exotel does not report whether anyone onboarded with it",
            None => "unknown token status",
        };
        Observation { raw_status: self.raw.clone(), fields, state: self.onboarding_state(), reason: reason.into() }
    }

    fn details(&self, out: StepOutcome) -> StepOutcome {
        out.with_details(ExotelDetails {
            token_status: Some(self.raw.clone()),
            max_customers_per_link: Some(MAX_CUSTOMERS_PER_LINK),
            used_meaning: Some(used_meaning_text().into()),
            customers_remaining: self.customers_remaining(),
            customers_remaining_min: self.customers_remaining_min(),
            live_meaning: (self.state == Some(LinkTokenState::Used)).then(|| LIVE_MEANING.into()),
            ..ExotelDetails::default()
        })
    }
}

/// The token of an onboarding URL: its last path segment [C].
fn token_of(onboarding_url: &str) -> Result<String, ProviderError> {
    url::Url::parse(onboarding_url)
        .ok()
        .and_then(|u| u.path_segments().and_then(|mut s| s.rfind(|p| !p.is_empty()).map(str::to_string)))
        .ok_or_else(|| ProviderError::Malformed { message: "exotel onboarding_url has no token segment".into() })
}

/// A freshly minted link, with the public details of the onboarding that follows it
/// ([`link_details`]): the single-onboarding path (`mint_link`) and the batch path
/// (`CreateOnboardingLinks`) both take them from here.
fn minted(url: String, minted_ms: UnixMs) -> Result<MintedLink, ProviderError> {
    let token = token_of(&url)?;
    let mut fields = BTreeMap::new();
    fields.insert("onboarding_url".to_string(), url.clone());
    // The mint answer carries no expiry [C: none documented]: 24 h from minting.
    let expire_ms = minted_ms.saturating_add(LINK_TTL.as_millis() as i64);
    let mut link = MintedLink {
        url,
        token,
        expire_ms: Some(expire_ms),
        provider_status: FRESH_TOKEN_STATUS.into(),
        fields,
        details: ExotelDetails::default(),
    };
    link.details = link_details(&link);
    Ok(link)
}

/// The handle of an onboarding that follows `link`: what `CreateOnboardingLinks` presets
/// before the onboarding starts at `await_customer` (`external_key` = the token).
pub fn link_handle(link: &MintedLink) -> ProviderHandle {
    ProviderHandle { external_key: link.token.clone(), data: json!({ "onboarding_url": link.url }) }
}

/// The public details of a freshly minted link (proto `ExotelOnboarding` names; the caller
/// adds `batch_id` for a batch): `onboarding_url`, `token`, `token_status` (`VALID`),
/// `customers_remaining` and `customers_remaining_min` (5), `max_customers_per_link`,
/// `used_meaning` and `link_expire_ms`.
pub fn link_details(link: &MintedLink) -> ExotelDetails {
    ExotelDetails {
        onboarding_url: Some(link.url.clone()),
        token: Some(link.token.clone()),
        token_status: Some(link.provider_status.clone()),
        customers_remaining: Some(MAX_CUSTOMERS_PER_LINK),
        customers_remaining_min: Some(MAX_CUSTOMERS_PER_LINK),
        max_customers_per_link: Some(MAX_CUSTOMERS_PER_LINK),
        used_meaning: Some(used_meaning_text().into()),
        link_expire_ms: link.expire_ms,
        ..ExotelDetails::default()
    }
}

fn check_payload(req: &StartRequest) -> Result<(), ProviderError> {
    match req.payload {
        StartPayload::Exotel => Ok(()),
        ref other => Err(ProviderError::Invalid {
            field: Some("request".into()),
            message: format!("an Exotel account takes an Exotel link request, not a {} one", other.kind()),
            raw: String::new(),
        }),
    }
}

fn check_token(token: &str) -> Result<(), ProviderError> {
    let ok = !token.is_empty()
        && token.len() <= 128
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Invalid {
            field: Some("token".into()),
            message: "must be the last path segment of an Exotel onboarding URL (letters, digits, '-')".into(),
            raw: String::new(),
        })
    }
}

impl ExotelProvider {
    /// An adapter using the shared HTTP client and retry policy.
    pub fn new(deps: &AdapterDeps) -> Self {
        Self {
            client: Client::new(deps.http.clone(), deps.limiter.clone(), deps.retry),
            poll_interval: deps.poll_interval,
        }
    }

    /// Mints one link for one onboarding.
    ///
    /// Exotel has no lookup (no list of links, no client reference), so this cannot
    /// reconcile: a repeat after an unknown outcome mints a new link, and the one minted by
    /// the lost call is never handed out and lapses harmlessly after 24 h.
    async fn mint_one(&self, ctx: &CallContext) -> Result<(MintedLink, StepOutcome), ProviderError> {
        let acct = Account::of(ctx)?;
        let now = now_ms();
        let url = self
            .client
            .mint(&acct, MintAttempts::Once)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::Malformed { message: "exotel mint answer without a link".into() })?;
        let link = minted(url, now)?;
        let mut obs = TokenReading::new(link.provider_status.clone()).observation();
        obs.fields.insert("onboarding_url".into(), link.url.clone());
        obs.reason = "link minted; waiting for the business".into();
        let mut out = StepOutcome::done(obs).handle(link_handle(&link));
        out.details = Some(link.details.clone().into());
        out.expire_ms = link.expire_ms;
        Ok((link, out))
    }

    async fn read_token(&self, ctx: &CallContext, token: &str) -> Result<TokenReading, ProviderError> {
        let acct = Account::of(ctx)?;
        Ok(TokenReading::new(self.client.validate(&acct, token).await?))
    }

    async fn await_customer(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let handle =
            run.handle.as_ref().filter(|h| !h.external_key.is_empty()).ok_or_else(|| ProviderError::Precondition {
                raw: String::new(),
                message: "await_customer ran without a link token".into(),
            })?;
        let reading = self.read_token(ctx, &handle.external_key).await?;
        let obs = reading.observation();
        let out = match obs.state {
            Some(s) if s == OnboardingState::Live || s.is_terminal() => StepOutcome::done(obs),
            _ => StepOutcome::wait(self.poll_interval, obs),
        };
        Ok(reading.details(out))
    }
}

#[async_trait]
impl Provider for ExotelProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Exotel
    }

    fn flow_capabilities(&self) -> &[Capability] {
        &FLOW_CAPABILITIES
    }

    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        let acct = Account::of(ctx)?;
        self.client.check(&acct).await?;
        let mut fields = BTreeMap::new();
        if let crate::domain::account::Credentials::Exotel { account_sid, .. } = &ctx.credentials {
            fields.insert("account_sid".to_string(), account_sid.clone());
        }
        Ok(CredentialsCheck { summary: "Exotel credentials accepted".into(), fields })
    }

    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        webhook::parse(body)
    }

    async fn cancel(&self, _ctx: &CallContext, _handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        // Exotel has no call to revoke a link; it lapses after 24 h.
        Err(ProviderError::NotSupported { capability: Capability::Cancel })
    }

    fn pipeline(&self, _req: &StartRequest) -> Vec<StepSpec> {
        vec![
            ExotelStep::MintLink.spec().entering(OnboardingState::Pending),
            // The link lives 24 h; an hour of slack lets the EXPIRED status be observed.
            ExotelStep::AwaitCustomer.spec().deadline(LINK_TTL + Duration::from_secs(3600)),
        ]
    }

    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        match step_of::<ExotelStep>(ProviderKind::Exotel, run)? {
            ExotelStep::MintLink => {
                check_payload(&run.request)?;
                if let Some(h) = run.handle.as_ref().filter(|h| !h.external_key.is_empty()) {
                    // A link is already recorded (preset by a batch): mint nothing more.
                    let reading = self.read_token(ctx, &h.external_key).await?;
                    return Ok(reading
                        .details(StepOutcome::done(reading.observation()))
                        .attribute("reconciled", "true"));
                }
                // Never `reconciled`: see `mint_one`.
                Ok(self.mint_one(ctx).await?.1)
            }
            ExotelStep::AwaitCustomer => self.await_customer(ctx, run).await,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn hosted_links(&self) -> Option<&dyn HostedLinkOps> {
        Some(self)
    }
}

#[async_trait]
impl HostedLinkOps for ExotelProvider {
    fn max_batch(&self) -> u32 {
        MAX_BATCH
    }

    fn link_payload(&self) -> StartPayload {
        StartPayload::Exotel
    }

    async fn mint_links(&self, ctx: &CallContext, count: u32) -> Result<Vec<MintedLink>, ProviderError> {
        if !(1..=MAX_BATCH).contains(&count) {
            return Err(ProviderError::Invalid {
                field: Some("count".into()),
                message: format!("must be between 1 and {MAX_BATCH}"),
                raw: String::new(),
            });
        }
        let acct = Account::of(ctx)?;
        let now = now_ms();
        // No batch parameter exists (docs/providers.md §2.2 [C]): one documented call per link,
        // paced and retried by the shared plumbing. The batch is returned whole or not at all
        // (the core stores it atomically); links minted before a failure are never handed
        // out and lapse after 24 h.
        let mut urls = Vec::with_capacity(count as usize);
        while urls.len() < count as usize {
            urls.extend(self.client.mint(&acct, MintAttempts::Retried).await?);
        }
        urls.truncate(count as usize);
        urls.into_iter().map(|u| minted(u, now)).collect()
    }

    async fn validate_token(&self, ctx: &CallContext, token: &str) -> Result<LinkTokenStatus, ProviderError> {
        check_token(token)?;
        let reading = self.read_token(ctx, token).await?;
        let state = reading.state.ok_or_else(|| ProviderError::Malformed {
            message: format!("exotel token status '{}' is none of VALID, USED, EXPIRED", reading.raw),
        })?;
        Ok(LinkTokenStatus { state, raw: reading.raw })
    }
}
