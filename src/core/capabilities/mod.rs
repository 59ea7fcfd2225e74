//! Capability use cases beyond the onboarding pipeline: credentials checks, app and partner
//! tokens, hosted-link token validation, webhook subscriptions and Whapi channels.
//!
//! Each one resolves the caller's resource first (tenant-scoped: another tenant's resource is
//! `NOT_FOUND`), then the account's adapter and its capability port (`UNIMPLEMENTED` naming
//! the provider when the adapter has none), then calls it. Provider errors go through the one
//! mapping (`From<(ProviderKind, ProviderError)> for AppError`), which keeps the raw code.

mod channels;
mod subscriptions;
mod tokens;

use std::sync::Arc;

use super::accounts::CheckResult;
use super::context::stored_handle;
use super::pipeline_rows::details_of;
use super::{Caller, Core};
use crate::domain::{
    AccountId, EventKind, OnboardingDetails, OnboardingId, Patch, ProviderKind, Secret, UnixMs, WhapiDetails, now_ms,
};
use crate::error::{AppError, ErrorCode};
use crate::providers::http::TokenStatus;
use crate::providers::{
    Balance, CallContext, ChannelInfo, ChannelOps, CredentialExpiry, CredentialExpiryState, HostedLinkOps,
    LinkTokenStatus, PartnerTokenOps, Provider, ProviderError, ProviderSubscription, ResourceRef, SubscriptionOps,
};
use crate::store::{AccountRecord, NewEvent, OnboardingChange, OnboardingRecord, StoreError};

pub use channels::MAX_EXTEND_DAYS;

/// An onboarding's messaging token. Treat as a secret.
#[derive(Debug, Clone)]
pub struct AppTokenView {
    /// The onboarding the token was fetched for.
    pub onboarding: OnboardingId,
    /// Who issued it.
    pub provider: ProviderKind,
    /// The messaging token itself (Gupshup app token, Whapi channel token): a secret.
    pub token: Secret,
    /// The provider's id of what it authorises (the onboarding's external key).
    pub resource_id: String,
    /// Base URL to use it against, when the provider has one per resource.
    pub api_url: String,
    /// Expiry, when known.
    pub expire_ms: Option<UnixMs>,
}

/// A hosted-link token's live status, with what we know of it.
#[derive(Debug, Clone)]
pub struct LinkTokenView {
    /// As the provider reports it now.
    pub status: LinkTokenStatus,
    /// When the link lapses, if we minted it.
    pub expire_ms: Option<UnixMs>,
    /// Customers that can still onboard with it, as observed (0 when unknown).
    pub customers_remaining: i32,
    /// Our onboarding for this link, if any.
    pub onboarding: Option<OnboardingId>,
}

/// A subscription at the provider and the onboarding it belongs to.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    /// Parent onboarding.
    pub onboarding: OnboardingId,
    /// The onboarding's provider, which holds the subscription.
    pub provider: ProviderKind,
    /// As the provider holds it.
    pub subscription: ProviderSubscription,
}

/// A channel and where it lives on our side.
#[derive(Debug, Clone)]
pub struct ChannelView {
    /// The onboarding that created it.
    pub onboarding: OnboardingId,
    /// The account the channel was created under (and whose partner balance pays for it).
    pub account: AccountId,
    /// The channel (from the provider for single reads, from stored details in lists).
    pub info: ChannelInfo,
}

/// The result of `ExtendChannel`.
#[derive(Debug, Clone)]
pub struct ExtendView {
    /// The channel after.
    pub channel: ChannelView,
    /// Days added now.
    pub days_added: u32,
    /// True when this request id had already been applied.
    pub already_applied: bool,
}

fn missing(kind: ProviderKind, what: &str) -> AppError {
    AppError::unimplemented(format!("the {} adapter does not offer {what}", kind.display_name()))
}

fn provider_err(kind: ProviderKind) -> impl Fn(ProviderError) -> AppError {
    move |e| AppError::from((kind, e))
}

/// The adapter-private data of the onboarding's stored handle (`Null` before there is one).
fn handle_data(o: &OnboardingRecord) -> Result<serde_json::Value, AppError> {
    Ok(stored_handle(o)?.map_or(serde_json::Value::Null, |h| h.data))
}

fn str_of<'a>(v: &'a serde_json::Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_str()).filter(|s| !s.is_empty()))
}

fn attrs(pairs: &[(&str, serde_json::Value)]) -> serde_json::Value {
    serde_json::Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn subscriptions_of(p: &dyn Provider) -> Result<&dyn SubscriptionOps, AppError> {
    p.subscriptions().ok_or_else(|| missing(p.kind(), "webhook subscriptions (SubscriptionService)"))
}

fn channels_of(p: &dyn Provider) -> Result<&dyn ChannelOps, AppError> {
    p.channels().ok_or_else(|| missing(p.kind(), "channel management (ChannelService)"))
}

/// The account credential's expiry (issue 17 point 15), counted and logged while it is
/// expiring or expired so operators hear of it before logins start failing.
fn credential_expiry(p: &dyn Provider, ctx: &CallContext) -> Option<CredentialExpiry> {
    let x = p.credential_expiry(ctx)?;
    if x.state != CredentialExpiryState::Valid {
        crate::telemetry::metrics::credential_expiry_warning(p.kind(), x.state);
        tracing::warn!(account = %ctx.account_id, provider = %p.kind(), state = x.state.as_str(), "{}", x.warning);
    }
    Some(x)
}

fn with_credential_expiry(mut status: TokenStatus, x: Option<CredentialExpiry>) -> TokenStatus {
    if let Some(x) = x {
        status.credential_expires_at = Some(x.expire_ms);
        status.credential_warning = x.warning;
    }
    status
}

fn partner_token_of(p: &dyn Provider) -> Result<&dyn PartnerTokenOps, AppError> {
    p.partner_token().ok_or_else(|| missing(p.kind(), "a cached partner token"))
}

fn hosted_links_of(p: &dyn Provider) -> Result<&dyn HostedLinkOps, AppError> {
    p.hosted_links().ok_or_else(|| missing(p.kind(), "hosted-link token validation"))
}

/// What a capability call on an onboarded resource needs.
struct Target {
    onboarding: OnboardingRecord,
    provider: Arc<dyn Provider>,
    ctx: CallContext,
    resource: ResourceRef,
}

impl Core {
    async fn account_provider(
        &self,
        caller: &Caller,
        id: &AccountId,
    ) -> Result<(AccountRecord, Arc<dyn Provider>, CallContext), AppError> {
        let record = self.account_record(caller, id).await?;
        let (p, ctx) = self.provider_for(&record)?;
        Ok((record, p, ctx))
    }

    /// The adapter of an onboarding's account, checked for a capability before the resource
    /// is resolved (so a provider without it is `UNIMPLEMENTED` in every state).
    async fn target(
        &self,
        caller: &Caller,
        o: OnboardingRecord,
        request_id: Option<&str>,
        check: fn(&dyn Provider) -> Result<(), AppError>,
    ) -> Result<Target, AppError> {
        let account = self.store.account(&caller.tenant, &o.account_id).await?.ok_or_else(|| {
            AppError::precondition(format!("the account of onboardings/{} (accounts/{}) is gone", o.id, o.account_id))
        })?;
        let (provider, ctx) = self.provider_for(&account)?;
        check(provider.as_ref())?;
        let resource = self.resource_ref(&o, request_id)?;
        Ok(Target { onboarding: o, provider, ctx, resource })
    }

    /// The first event of `kind` whose attributes carry this `request_id`, if any.
    async fn event_with_request_id(
        &self,
        id: &OnboardingId,
        kind: EventKind,
        request_id: &str,
    ) -> Result<Option<serde_json::Value>, AppError> {
        Ok(self.events_with_request_id(id, &[kind], request_id).await?.into_iter().next().map(|(_, d)| d))
    }

    /// Every event of one of `kinds` whose attributes carry this `request_id`, in log order,
    /// with its kind (one pass over the log).
    async fn events_with_request_id(
        &self,
        id: &OnboardingId,
        kinds: &[EventKind],
        request_id: &str,
    ) -> Result<Vec<(EventKind, serde_json::Value)>, AppError> {
        let mut found = Vec::new();
        self.each_event(id, |e| {
            if kinds.contains(&e.kind) {
                let d: serde_json::Value = serde_json::from_str(&e.data_json).unwrap_or_default();
                if d["request_id"].as_str() == Some(request_id) {
                    found.push((e.kind, d));
                }
            }
        })
        .await?;
        Ok(found)
    }

    /// Appends an event that also edits the (Whapi) onboarding's channel details (and
    /// optionally its expiry), re-reading and retrying on a concurrent change so no other
    /// write is lost.
    async fn record_with_details(
        &self,
        id: &OnboardingId,
        event: NewEvent,
        expire_ms: Option<UnixMs>,
        edit: impl Fn(&mut WhapiDetails),
    ) -> Result<(), AppError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let o = self
                .store
                .onboarding_unscoped(id)
                .await?
                .ok_or_else(|| AppError::not_found(format!("onboardings/{id}")))?;
            let mut details = details_of(&o)?;
            let OnboardingDetails::Whapi(d) = &mut details else {
                return Err(AppError::internal(format!(
                    "onboardings/{id} is a {} onboarding, not a channel",
                    o.provider
                )));
            };
            edit(d);
            let text = details.to_json().map_err(|e| AppError::internal(e.to_string()))?;
            let change = OnboardingChange {
                expect_sequence: Some(o.sequence),
                details_json: Some(text),
                expire_ms: expire_ms.map_or(Patch::Keep, Patch::Set),
                ..OnboardingChange::new(id, event.clone(), now_ms())
            };
            match self.store.apply_change(&change).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::new(ErrorCode::Aborted, format!("onboardings/{id}: too many concurrent changes; retry")))
    }

    /// Appends an audit event (no state change).
    async fn audit(
        &self,
        id: &OnboardingId,
        kind: EventKind,
        reason: &str,
        attributes: serde_json::Value,
    ) -> Result<(), AppError> {
        let event = NewEvent::new(kind, reason).with_attributes(&attributes);
        let change = OnboardingChange::new(id, event, now_ms());
        self.store.apply_change(&change).await?;
        Ok(())
    }

    // ----- accounts -----

    /// Tests the account's credentials at the provider and stores the result as the
    /// account's `last_check`. A rejection is an `ok = false` result with the provider's
    /// code; any other failure (provider down, rate limited) is an error and stores nothing.
    pub async fn check_account(&self, caller: &Caller, id: &AccountId) -> Result<CheckResult, AppError> {
        let (_, p, ctx) = self.account_provider(caller, id).await?;
        let kind = p.kind();
        let expiry = credential_expiry(p.as_ref(), &ctx);
        let (credential_expire_ms, credential_warning) =
            expiry.as_ref().map_or((None, String::new()), |x| (Some(x.expire_ms), x.warning.clone()));
        let mut result = match p.check_credentials(&ctx).await {
            Ok(c) => CheckResult {
                ok: true,
                message: if c.summary.is_empty() { "credentials accepted".into() } else { c.summary },
                provider_code: String::new(),
                at_ms: now_ms(),
                ..CheckResult::default()
            },
            Err(ProviderError::Unauthenticated { raw }) => CheckResult {
                ok: false,
                message: format!("{} rejected the credentials", kind.display_name()),
                provider_code: raw,
                at_ms: now_ms(),
                ..CheckResult::default()
            },
            // The check's own answer: the credential lapsed (the adapter says which, when).
            Err(ProviderError::CredentialExpired { raw, message }) => {
                CheckResult { ok: false, message, provider_code: raw, at_ms: now_ms(), ..CheckResult::default() }
            }
            Err(e) => return Err((kind, e).into()),
        };
        result.credential_expire_ms = credential_expire_ms;
        result.credential_warning = credential_warning;
        // Re-read: the provider call may have taken a while.
        let mut record = self.account_record(caller, id).await?;
        let mut status = Core::account_status(&record);
        status.last_check = Some(result.clone());
        record.status_json =
            serde_json::to_string(&status).map_err(|e| AppError::internal(format!("account status: {e}")))?;
        record.updated_ms = result.at_ms;
        self.store.update_account(&record).await?;
        tracing::info!(account = %id, ok = result.ok, provider_code = %result.provider_code, "Credentials checked.");
        Ok(result)
    }

    /// The partner's day balance for a (Whapi) account.
    pub async fn get_partner_balance(&self, caller: &Caller, id: &AccountId) -> Result<Balance, AppError> {
        let (_, p, ctx) = self.account_provider(caller, id).await?;
        let ops = channels_of(p.as_ref())?;
        ops.partner_balance(&ctx).await.map_err(provider_err(p.kind()))
    }
}
