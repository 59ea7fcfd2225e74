//! Capability use cases beyond the onboarding pipeline: credentials checks, app and partner
//! tokens, hosted-link token validation, webhook subscriptions and Whapi channels.
//!
//! Each one resolves the caller's resource first (tenant-scoped: another tenant's resource is
//! `NOT_FOUND`), then the account's adapter and its capability port (`UNIMPLEMENTED` naming
//! the provider when the adapter has none), then calls it. Provider errors go through the one
//! mapping (`From<(ProviderKind, ProviderError)> for AppError`), which keeps the raw code.

use std::sync::Arc;
use std::time::Duration;

use super::accounts::CheckResult;
use super::claims::ClaimKey;
use super::context::ENGINE_KEY;
use super::{Caller, Core};
use crate::domain::{
    AccountId, ChannelId, E164, EventKind, OnboardingId, OnboardingState, Patch, ProviderKind, Secret, UnixMs, now_ms,
};
use crate::error::{AppError, ErrorCode};
use crate::providers::http::TokenStatus;
use crate::providers::{
    Balance, CallContext, ChannelInfo, ChannelMode, ChannelOps, ConnectMethod, CredentialExpiry, CredentialExpiryState,
    ExtendOutcome, HostedLinkOps, IssuedConnectCode, LinkTokenStatus, PartnerTokenOps, Provider, ProviderError,
    ProviderSubscription, ResourceRef, SubscriptionOps, SubscriptionSpec,
};
use crate::store::{
    AccountRecord, NewEvent, OnboardingChange, OnboardingFilter, OnboardingRecord, Page, PageRequest, StoreError,
};

/// Operation name of `CreateSubscription` request claims.
const OP_CREATE_SUBSCRIPTION: &str = "CreateSubscription";

/// Operation name of `DeleteChannel` request claims.
const OP_DELETE_CHANNEL: &str = "DeleteChannel";

/// Most days one `ExtendChannel` may add.
pub const MAX_EXTEND_DAYS: u32 = 365;

/// One day in ms (channel days).
const DAY_MS: i64 = 86_400_000;

/// How far `activeTill` may fall short of "before + days" and still count as extended (the
/// provider computes it from its own clock).
const EXTEND_TOLERANCE_MS: i64 = 60_000;

/// Refuses a `request_id` reused with another number of days.
fn same_extension(prior: &serde_json::Value, days: u32, request_id: &str) -> Result<(), AppError> {
    match prior["days"].as_u64() {
        Some(d) if d != u64::from(days) => Err(AppError::new(
            ErrorCode::AlreadyExists,
            format!("request_id '{request_id}' was already used for a different ExtendChannel request ({d} days)"),
        )
        .with_violation("request_id", "already used for a different request")),
        _ => Ok(()),
    }
}

/// An onboarding's messaging token. Treat as a secret.
#[derive(Debug, Clone)]
pub struct AppTokenView {
    /// The onboarding.
    pub onboarding: OnboardingId,
    /// Who issued it.
    pub provider: ProviderKind,
    /// The token.
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
    /// Provider.
    pub provider: ProviderKind,
    /// As the provider holds it.
    pub subscription: ProviderSubscription,
}

/// A channel and where it lives on our side.
#[derive(Debug, Clone)]
pub struct ChannelView {
    /// The onboarding that created it.
    pub onboarding: OnboardingId,
    /// The account.
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

fn details(o: &OnboardingRecord) -> serde_json::Value {
    serde_json::from_str(&o.details_json).unwrap_or_default()
}

/// The adapter-private data of the onboarding's stored handle.
fn handle_data(d: &serde_json::Value) -> &serde_json::Value {
    &d[ENGINE_KEY]["handle"]["data"]
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
        let record = self.get_account(caller, id).await?.record;
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

    /// Appends an event that also edits the onboarding's details (and optionally its
    /// expiry), re-reading and retrying on a concurrent change so no other write is lost.
    async fn record_with_details(
        &self,
        id: &OnboardingId,
        event: NewEvent,
        expire_ms: Option<UnixMs>,
        edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Result<(), AppError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let o = self
                .store
                .onboarding_unscoped(id)
                .await?
                .ok_or_else(|| AppError::not_found(format!("onboardings/{id}")))?;
            let mut d = match details(&o) {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            edit(&mut d);
            let change = OnboardingChange {
                expect_sequence: Some(o.sequence),
                details_json: Some(serde_json::Value::Object(d).to_string()),
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
        let mut record = self.get_account(caller, id).await?.record;
        let mut status = Core::account_status(&record);
        status.last_check = Some(result.clone());
        record.status_json =
            serde_json::to_string(&status).map_err(|e| AppError::internal(format!("account status: {e}")))?;
        record.updated_ms = result.at_ms;
        self.store.update_account(&record).await?;
        tracing::info!(account = %id, ok = result.ok, provider_code = %result.provider_code, "Credentials checked.");
        Ok(result)
    }

    // ----- tokens -----

    /// The onboarding's messaging token (Gupshup app token, Whapi channel token), for its
    /// owner only. Every read appends a `token_read` event (who, resource; never the token)
    /// before the token is returned.
    pub async fn get_app_token(&self, caller: &Caller, id: &OnboardingId) -> Result<AppTokenView, AppError> {
        let o = self.get_onboarding(caller, id).await?;
        let Some(token) = self.onboarding_secret(&o)? else {
            return Err(AppError::precondition(format!(
                "onboardings/{id} has no app token yet (state {}); the pipeline fetches it",
                o.state
            )));
        };
        let d = details(&o);
        let resource_id = o.external_key.clone().unwrap_or_default();
        let api_url = str_of(handle_data(&d), &["api_url", "apiUrl"]).unwrap_or_default().to_string();
        let expire_ms = handle_data(&d).get("token_expire_ms").and_then(|v| v.as_i64());
        self.audit(
            &o.id,
            EventKind::TokenRead,
            "app token read through GetAppToken",
            attrs(&[("who", caller.tenant.as_str().into()), ("resource_id", resource_id.clone().into())]),
        )
        .await?;
        tracing::info!(onboarding = %o.id, tenant = %caller.tenant, "App token read.");
        Ok(AppTokenView { onboarding: o.id, provider: o.provider, token, resource_id, api_url, expire_ms })
    }

    /// Forces a refresh of the account's cached partner / access token.
    pub async fn refresh_provider_token(&self, caller: &Caller, id: &AccountId) -> Result<TokenStatus, AppError> {
        let (_, p, ctx) = self.account_provider(caller, id).await?;
        let ops = partner_token_of(p.as_ref())?;
        let status = ops.refresh_partner_token(&ctx).await.map_err(provider_err(p.kind()))?;
        Ok(with_credential_expiry(status, credential_expiry(p.as_ref(), &ctx)))
    }

    /// The account's cached partner / access token status (no provider call, no secret),
    /// with the expiry of the credential it is fetched with.
    pub async fn get_provider_token_status(&self, caller: &Caller, id: &AccountId) -> Result<TokenStatus, AppError> {
        let (_, p, ctx) = self.account_provider(caller, id).await?;
        let status = partner_token_of(p.as_ref())?.partner_token_status();
        Ok(with_credential_expiry(status, credential_expiry(p.as_ref(), &ctx)))
    }

    /// A hosted-link token's live status, plus our onboarding for that link, if any.
    pub async fn validate_onboarding_token(
        &self,
        caller: &Caller,
        account: &AccountId,
        token: &str,
    ) -> Result<LinkTokenView, AppError> {
        let (_, p, ctx) = self.account_provider(caller, account).await?;
        let ops = hosted_links_of(p.as_ref())?;
        let status = ops.validate_token(&ctx, token).await.map_err(provider_err(p.kind()))?;
        let o = self
            .store
            .onboarding_by_resource(&caller.tenant, p.kind(), token)
            .await?
            .filter(|o| &o.account_id == account);
        let (expire_ms, customers_remaining) = match &o {
            Some(o) => {
                let d = details(o);
                let expire = o.expire_ms.or_else(|| d.get("link_expire_ms").and_then(|v| v.as_i64()));
                let remaining = d.get("customers_remaining").and_then(|v| v.as_i64()).unwrap_or(0);
                (expire, i32::try_from(remaining).unwrap_or(0))
            }
            None => (None, 0),
        };
        Ok(LinkTokenView { status, expire_ms, customers_remaining, onboarding: o.map(|o| o.id) })
    }

    // ----- subscriptions -----

    async fn subscription_target(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        request_id: Option<&str>,
    ) -> Result<Target, AppError> {
        let o = self.get_onboarding(caller, id).await?;
        self.target(caller, o, request_id, |p| subscriptions_of(p).map(drop)).await
    }

    fn subscription_view(t: &Target, subscription: ProviderSubscription) -> SubscriptionView {
        SubscriptionView { onboarding: t.onboarding.id.clone(), provider: t.provider.kind(), subscription }
    }

    /// Creates a subscription at the provider. With a `request_id`, a retry returns the
    /// subscription the first call made (the key and a keyed hash of the spec are kept in
    /// the onboarding's event log); the same key with another spec is `ALREADY_EXISTS`.
    pub async fn create_subscription(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        spec: &SubscriptionSpec,
        request_id: Option<&str>,
    ) -> Result<SubscriptionView, AppError> {
        let t = self.subscription_target(caller, id, request_id).await?;
        let ops = subscriptions_of(t.provider.as_ref())?;
        let kind = t.provider.kind();
        if kind == ProviderKind::Gupshup && t.onboarding.state != OnboardingState::Live {
            return Err(AppError::precondition(format!(
                "Gupshup subscriptions need a LIVE app; onboardings/{id} is {}",
                t.onboarding.state
            )));
        }
        let plain = serde_json::to_vec(spec).map_err(|e| AppError::internal(format!("cannot encode spec: {e}")))?;
        let hash = hex::encode(self.fingerprint(&[b"CreateSubscription", &plain]));
        let Some(rid) = request_id else {
            let sub = ops.create_subscription(&t.ctx, &t.resource, spec).await.map_err(provider_err(kind))?;
            let data = attrs(&[("subscription", sub.id.clone().into())]);
            self.audit(id, EventKind::SubscriptionCreated, "subscription created at the provider", data).await?;
            return Ok(Self::subscription_view(&t, sub));
        };
        // Claimed before the create (the key is per onboarding, as the event log keeps it):
        // concurrent calls with this key wait for the one subscription instead of each trying
        // to create it (and all but one failing on the taken tag).
        let key = ClaimKey {
            tenant: &caller.tenant,
            key: format!("onboardings/{id}/subscriptions\n{rid}"),
            operation: OP_CREATE_SUBSCRIPTION,
            hash: hash.as_bytes(),
        };
        let stored = || async {
            let Some(prior) = self.event_with_request_id(id, EventKind::SubscriptionCreated, rid).await? else {
                return Ok(None);
            };
            if prior["request_hash"].as_str() != Some(hash.as_str()) {
                return Err(AppError::new(
                    ErrorCode::AlreadyExists,
                    format!("request_id '{rid}' was already used for a different CreateSubscription request"),
                )
                .with_violation("request_id", "already used for a different request"));
            }
            let sub_id = prior["subscription"].as_str().unwrap_or_default();
            let sub = ops.get_subscription(&t.ctx, &t.resource, sub_id).await.map_err(provider_err(kind))?;
            Ok(Some(Self::subscription_view(&t, sub)))
        };
        let create = || async {
            let sub = ops.create_subscription(&t.ctx, &t.resource, spec).await.map_err(provider_err(kind))?;
            let data = attrs(&[
                ("subscription", sub.id.clone().into()),
                ("request_id", rid.into()),
                ("request_hash", hash.clone().into()),
            ]);
            self.audit(id, EventKind::SubscriptionCreated, "subscription created at the provider", data).await?;
            Ok(Self::subscription_view(&t, sub))
        };
        self.once_per_key(key, stored, create).await
    }

    /// The onboarding's subscriptions as the provider reports them, paged (`page.after` is
    /// the offset in the provider's list).
    pub async fn list_subscriptions(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        page: &PageRequest,
    ) -> Result<Page<SubscriptionView>, AppError> {
        let offset = match page.after.as_deref() {
            None => 0,
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| AppError::invalid("page_token", "is not a token returned by this list"))?,
        };
        let t = self.subscription_target(caller, id, None).await?;
        let ops = subscriptions_of(t.provider.as_ref())?;
        let all = ops.list_subscriptions(&t.ctx, &t.resource).await.map_err(provider_err(t.provider.kind()))?;
        let end = offset.saturating_add(page.limit.max(1) as usize).min(all.len());
        let next_page_token = (end < all.len()).then(|| end.to_string());
        let items = all.into_iter().skip(offset).take(end.saturating_sub(offset));
        Ok(Page { items: items.map(|s| Self::subscription_view(&t, s)).collect(), next_page_token })
    }

    /// One subscription, as the provider reports it now.
    pub async fn get_subscription(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        sub: &str,
    ) -> Result<SubscriptionView, AppError> {
        let t = self.subscription_target(caller, id, None).await?;
        let ops = subscriptions_of(t.provider.as_ref())?;
        let s = ops.get_subscription(&t.ctx, &t.resource, sub).await.map_err(provider_err(t.provider.kind()))?;
        Ok(Self::subscription_view(&t, s))
    }

    /// Changes the fields of a subscription named in `fields` (proto names).
    pub async fn update_subscription(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        sub: &str,
        spec: &SubscriptionSpec,
        fields: &[String],
    ) -> Result<SubscriptionView, AppError> {
        let t = self.subscription_target(caller, id, None).await?;
        let ops = subscriptions_of(t.provider.as_ref())?;
        let s = ops
            .update_subscription(&t.ctx, &t.resource, sub, spec, fields)
            .await
            .map_err(provider_err(t.provider.kind()))?;
        Ok(Self::subscription_view(&t, s))
    }

    /// Deletes a subscription at the provider.
    pub async fn delete_subscription(&self, caller: &Caller, id: &OnboardingId, sub: &str) -> Result<(), AppError> {
        let t = self.subscription_target(caller, id, None).await?;
        let ops = subscriptions_of(t.provider.as_ref())?;
        ops.delete_subscription(&t.ctx, &t.resource, sub).await.map_err(provider_err(t.provider.kind()))?;
        self.audit(
            id,
            EventKind::SubscriptionDeleted,
            "subscription deleted at the provider",
            attrs(&[("subscription", sub.into())]),
        )
        .await
    }

    // ----- channels (Whapi) -----

    async fn channel_target(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<Target, AppError> {
        let o = self
            .store
            .onboarding_by_resource(&caller.tenant, ProviderKind::Whapi, channel.as_str())
            .await?
            .ok_or_else(|| AppError::not_found(format!("channels/{channel}")))?;
        self.target(caller, o, request_id, |p| channels_of(p).map(drop)).await
    }

    fn channel_view(t: &Target, info: ChannelInfo) -> ChannelView {
        ChannelView { onboarding: t.onboarding.id.clone(), account: t.onboarding.account_id.clone(), info }
    }

    /// A channel, refreshed from the provider.
    pub async fn get_channel(&self, caller: &Caller, channel: &ChannelId) -> Result<ChannelView, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(t.provider.kind()))?;
        Ok(Self::channel_view(&t, info))
    }

    /// The tenant's channels (Whapi onboardings that have one), from stored details: no
    /// provider call per item. `page.after` is the last onboarding id of the previous page.
    pub async fn list_channels(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
        page: &PageRequest,
    ) -> Result<Page<ChannelView>, AppError> {
        let filter = OnboardingFilter {
            provider: Some(ProviderKind::Whapi),
            account_id: account.cloned(),
            ..Default::default()
        };
        let limit = page.limit.max(1) as usize;
        let mut cursor = page.after.clone();
        let mut out = Vec::new();
        loop {
            let req = PageRequest { limit: page.limit.max(1), after: cursor.clone() };
            let p = self.store.list_onboardings(&caller.tenant, &filter, &req).await?;
            let more = p.next_page_token.is_some() && !p.items.is_empty();
            for o in p.items {
                if o.external_key.is_some() {
                    if out.len() == limit {
                        // One more channel exists: the next page resumes before it.
                        return Ok(Page { items: out, next_page_token: cursor });
                    }
                    out.push(stored_channel(&o));
                }
                cursor = Some(o.id.as_str().to_string());
            }
            if !more {
                return Ok(Page { items: out, next_page_token: None });
            }
        }
    }

    /// A fresh QR or pairing code.
    pub async fn get_connect_code(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        method: &ConnectMethod,
    ) -> Result<IssuedConnectCode, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let code = ops.connect_code(&t.ctx, &t.resource, method).await.map_err(provider_err(t.provider.kind()))?;
        // Counted per onboarding (`connect_codes_issued` in its details); the code itself
        // never goes into the log.
        let m = match method {
            ConnectMethod::Qr { .. } => "qr",
            ConnectMethod::PairingCode { .. } => "pairing_code",
        };
        let event = NewEvent::new(EventKind::ConnectCodeIssued, "a connect code was issued")
            .with_attributes(&attrs(&[("method", m.into())]));
        self.record_with_details(&t.onboarding.id, event, None, |d| {
            let n = d.get("connect_codes_issued").and_then(serde_json::Value::as_i64).unwrap_or(0);
            d.insert("connect_codes_issued".into(), n.saturating_add(1).into());
        })
        .await?;
        Ok(code)
    }

    /// Switches the channel's mode.
    pub async fn set_channel_mode(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        mode: ChannelMode,
    ) -> Result<ChannelView, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let info = ops.set_mode(&t.ctx, &t.resource, mode).await.map_err(provider_err(t.provider.kind()))?;
        let m = match mode {
            ChannelMode::Trial => "trial",
            ChannelMode::Sandbox => "sandbox",
            ChannelMode::Live => "live",
        };
        let event = NewEvent::new(EventKind::ChannelModeSet, "channel mode switched")
            .with_attributes(&attrs(&[("mode", m.into())]));
        // The stored details follow, so GetOnboarding and ListChannels show the new mode.
        self.record_with_details(&t.onboarding.id, event, None, |d| {
            d.insert("mode".into(), m.into());
        })
        .await?;
        Ok(Self::channel_view(&t, info))
    }

    /// Adds days; idempotent on `request_id`, durably (across restarts and replicas), with
    /// the mechanism `DeleteChannel` and `CreateSubscription` use: the key lives in the
    /// onboarding's event log.
    ///
    /// Before calling the provider an intent event (`channel_extend_requested`: key, days,
    /// `activeTill` before) is appended, conditional on the sequence read before the log was
    /// searched, so two concurrent first attempts cannot both pass; after the call the
    /// outcome (`channel_extended`) is appended and the stored `activeTill` / expiry move.
    /// A retry finds the outcome (already applied), or only the intent (the earlier answer
    /// was lost): then `activeTill` having moved by the days means it was applied.
    pub async fn extend_channel(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        days: u32,
        comment: &str,
        request_id: &str,
    ) -> Result<ExtendView, AppError> {
        if !(1..=MAX_EXTEND_DAYS).contains(&days) {
            return Err(AppError::invalid("days", format!("must be between 1 and {MAX_EXTEND_DAYS}")));
        }
        if request_id.is_empty() {
            return Err(AppError::invalid("request_id", "is required: a retry with the same key never extends twice"));
        }
        const ATTEMPTS: usize = 8;
        let mut attempt = 0;
        // The longest the provider calls may take: read, extend and re-read, each bounded by the
        // HTTP timeout, plus room for the rate limiter. The intent carries the window's end, so
        // a retry anywhere can tell an attempt still in flight from one that died with its
        // replica.
        let window_ms = i64::try_from(self.settings.providers.http_timeout_secs.max(1))
            .unwrap_or(i64::MAX / 4_000)
            .saturating_mul(3_000)
            .saturating_add(5_000);
        let (t, before, recovering, until_ms) = loop {
            let t = self.channel_target(caller, channel, Some(request_id)).await?;
            let ops = channels_of(t.provider.as_ref())?;
            let kind = t.provider.kind();
            let id = t.onboarding.id.clone();
            let prior = self
                .events_with_request_id(
                    &id,
                    &[EventKind::ChannelExtendRequested, EventKind::ChannelExtended, EventKind::ChannelExtendFailed],
                    request_id,
                )
                .await?;
            for (k, d) in &prior {
                if *k != EventKind::ChannelExtendFailed {
                    same_extension(d, days, request_id)?;
                }
            }
            if prior.iter().any(|(k, _)| *k == EventKind::ChannelExtended) {
                let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?;
                return Ok(ExtendView { channel: Self::channel_view(&t, info), days_added: 0, already_applied: true });
            }
            let now = now_ms();
            let latest = prior.iter().rposition(|(k, _)| *k == EventKind::ChannelExtendRequested);
            if let Some(i) = latest
                && !prior[i + 1..].iter().any(|(k, _)| *k == EventKind::ChannelExtendFailed)
                && let Some(until) = prior[i].1["in_flight_until_ms"].as_i64().filter(|u| *u > now)
            {
                // Another call with this key (here or on another replica) may be adding the
                // days right now and activeTill has not moved yet: extending too would add
                // them twice.
                let wait = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                return Err(AppError::unavailable(format!(
                    "an ExtendChannel with this request_id is in progress (for up to {} s more); retry with the same request_id",
                    wait.as_secs().max(1)
                ))
                .with_retry_after(wait.clamp(Duration::from_secs(1), Duration::from_secs(5))));
            }
            // A retry after an attempt that failed or died compares with the first reading.
            let before = match prior.iter().find(|(k, _)| *k == EventKind::ChannelExtendRequested) {
                Some((_, first)) => first["active_till_ms"].as_i64(),
                None => ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?.active_till_ms,
            };
            let until_ms = now.saturating_add(window_ms);
            let mut data = vec![("request_id", request_id.into()), ("days", days.into())];
            if let Some(b) = before {
                data.push(("active_till_ms", b.into()));
            }
            data.push(("in_flight_until_ms", until_ms.into()));
            let intent = OnboardingChange {
                // The log was searched after this sequence was read: nothing else was
                // appended in between (or the write fails and we look again), so of two
                // retries racing here only one goes on.
                expect_sequence: Some(t.onboarding.sequence),
                ..OnboardingChange::new(
                    &id,
                    NewEvent::new(EventKind::ChannelExtendRequested, "adding days to the channel")
                        .with_attributes(&attrs(&data)),
                    now,
                )
            };
            match self.store.apply_change(&intent).await {
                Ok(_) => break (t, before, latest.is_some(), until_ms),
                Err(StoreError::Conflict(_)) if attempt + 1 < ATTEMPTS => attempt += 1,
                Err(StoreError::Conflict(m)) => return Err(AppError::new(ErrorCode::Aborted, m)),
                Err(e) => return Err(e.into()),
            }
        };
        let ops = channels_of(t.provider.as_ref())?;
        let kind = t.provider.kind();
        let id = t.onboarding.id.clone();
        let run = async {
            if recovering {
                // An earlier attempt with this key may have extended without us learning it.
                let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?;
                let target = before.map(|b| b.saturating_add(i64::from(days) * DAY_MS));
                if let (Some(target), Some(now_till)) = (target, info.active_till_ms)
                    && now_till.saturating_add(EXTEND_TOLERANCE_MS) >= target
                {
                    return Ok(ExtendOutcome { channel: info, days_added: 0, already_applied: true });
                }
            }
            ops.extend(&t.ctx, &t.resource, days, comment).await.map_err(provider_err(kind))
        };
        // Never outlive the intent's window: past it, a retry may take over.
        let left = Duration::from_millis(u64::try_from(until_ms.saturating_sub(now_ms())).unwrap_or(0));
        let outcome = match tokio::time::timeout(left, run).await {
            Ok(r) => r,
            Err(_) => Err(AppError::unavailable(
                "the provider did not finish the extension in time; retry with the same request_id",
            )),
        };
        let out = match outcome {
            Ok(out) => out,
            Err(e) => {
                // Tells retries this attempt is over: they check whether the days landed before
                // extending again. If this write fails too, the window's end says the same.
                let raw = e.provider.as_ref().map(|p| p.raw_code.clone()).unwrap_or_else(|| e.code.as_str().into());
                let data = attrs(&[("request_id", request_id.into()), ("error", raw.into())]);
                if let Err(w) =
                    self.audit(&id, EventKind::ChannelExtendFailed, "adding days to the channel failed", data).await
                {
                    tracing::warn!(onboarding = %id, error = %w.message, "Could not record the failed extension.");
                }
                return Err(e);
            }
        };
        self.record_extended(&id, request_id, days, out.channel.active_till_ms, out.already_applied).await?;
        Ok(ExtendView {
            channel: Self::channel_view(&t, out.channel),
            days_added: out.days_added,
            already_applied: out.already_applied,
        })
    }

    /// The outcome of an extension: the event, and the channel's new `activeTill` as the
    /// onboarding's details and expiry.
    async fn record_extended(
        &self,
        id: &OnboardingId,
        request_id: &str,
        days: u32,
        active_till_ms: Option<UnixMs>,
        found_applied: bool,
    ) -> Result<(), AppError> {
        let mut data = vec![("days_added", days.into()), ("days", days.into()), ("request_id", request_id.into())];
        if found_applied {
            data.push(("found_applied", true.into()));
        }
        if let Some(t) = active_till_ms {
            data.push(("active_till_ms", t.into()));
        }
        let event =
            NewEvent::new(EventKind::ChannelExtended, "days added to the channel").with_attributes(&attrs(&data));
        self.record_with_details(id, event, active_till_ms, |d| {
            if let Some(t) = active_till_ms {
                d.insert("active_till_ms".into(), t.into());
            }
        })
        .await
    }

    /// Deletes the channel and records its onboarding `CANCELLED` (the channel is gone).
    /// Returns the refunded days. With a `request_id`, a retry after success returns the
    /// days refunded the first time.
    pub async fn delete_channel(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<u32, AppError> {
        let t = self.channel_target(caller, channel, request_id).await?;
        let Some(rid) = request_id else { return self.delete_channel_now(&t, channel, None).await };
        // Claimed before the delete: concurrent calls with this key wait for the one delete
        // (and its refund) instead of racing it at the provider, where all but one would fail.
        let key = ClaimKey {
            tenant: &caller.tenant,
            key: format!("channels/{channel}/delete\n{rid}"),
            operation: OP_DELETE_CHANNEL,
            hash: channel.as_str().as_bytes(),
        };
        let id = t.onboarding.id.clone();
        let stored = || async {
            let prior = self.event_with_request_id(&id, EventKind::ChannelDeleted, rid).await?;
            Ok(prior.map(|p| p["refunded_days"].as_u64().and_then(|d| u32::try_from(d).ok()).unwrap_or(0)))
        };
        self.once_per_key(key, stored, || self.delete_channel_now(&t, channel, Some(rid))).await
    }

    /// Deletes the channel at the provider and records it (see [`Core::delete_channel`]).
    async fn delete_channel_now(
        &self,
        t: &Target,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<u32, AppError> {
        let ops = channels_of(t.provider.as_ref())?;
        let id = t.onboarding.id.clone();
        let refunded = ops.delete_channel(&t.ctx, &t.resource).await.map_err(provider_err(t.provider.kind()))?;
        let mut data = vec![("channel", channel.as_str().into()), ("refunded_days", refunded.into())];
        if let Some(rid) = request_id {
            data.push(("request_id", rid.into()));
        }
        let now = now_ms();
        let mut change = OnboardingChange::new(
            &id,
            NewEvent::new(EventKind::ChannelDeleted, "channel deleted through DeleteChannel")
                .with_attributes(&attrs(&data)),
            now,
        );
        if !t.onboarding.state.is_terminal() {
            // The engine must not keep driving a channel that no longer exists.
            change.steps = super::engine::skip_unfinished(self.store.steps(&id).await?, now);
            change.state = Some(OnboardingState::Cancelled);
            change.desired_state = Patch::Clear;
            change.state_reason = Some("the channel was deleted".into());
            change.state_deadline_ms = Patch::Clear;
        }
        self.apply(change).await?;
        tracing::info!(onboarding = %id, channel = %channel, refunded, "Channel deleted.");
        Ok(refunded)
    }

    /// The partner's day balance for a (Whapi) account.
    pub async fn get_partner_balance(&self, caller: &Caller, id: &AccountId) -> Result<Balance, AppError> {
        let (_, p, ctx) = self.account_provider(caller, id).await?;
        let ops = channels_of(p.as_ref())?;
        ops.partner_balance(&ctx).await.map_err(provider_err(p.kind()))
    }
}

/// A channel from what the store knows (the pipeline keeps it current), for cheap lists.
fn stored_channel(o: &OnboardingRecord) -> ChannelView {
    let d = details(o);
    let data = handle_data(&d);
    let mode = match d.get("mode").and_then(|v| v.as_str()).unwrap_or_default() {
        "trial" => Some(ChannelMode::Trial),
        "sandbox" => Some(ChannelMode::Sandbox),
        "live" => Some(ChannelMode::Live),
        _ => None,
    };
    let info = ChannelInfo {
        id: o.external_key.clone().unwrap_or_default(),
        display_name: str_of(&d, &["channel_name"]).or_else(|| str_of(data, &["name"])).unwrap_or_default().into(),
        mode,
        health: if o.state.is_terminal() { "STOPPED".into() } else { o.provider_status.clone() },
        phone: str_of(&d, &["phone"]).and_then(|p| E164::parse(p).ok()),
        active_till_ms: d.get("active_till_ms").and_then(|v| v.as_i64()).or(o.expire_ms),
        stopped: o.state.is_terminal(),
        api_url: str_of(data, &["api_url", "apiUrl"]).unwrap_or_default().into(),
        created_ms: None,
    };
    ChannelView { onboarding: o.id.clone(), account: o.account_id.clone(), info }
}
