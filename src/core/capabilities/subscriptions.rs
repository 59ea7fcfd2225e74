//! Webhook subscriptions at the provider, idempotent on `request_id` through the event log.

use super::{SubscriptionView, Target, attrs, provider_err, subscriptions_of};
use crate::core::claims::ClaimKey;
use crate::core::{Caller, Core};
use crate::domain::{EventKind, OnboardingId};
use crate::error::{AppError, ErrorCode};
use crate::providers::{ProviderSubscription, SubscriptionSpec};
use crate::store::{Page, PageRequest};

/// Operation name of `CreateSubscription` request claims.
const OP_CREATE_SUBSCRIPTION: &str = "CreateSubscription";

impl Core {
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
        // The provider's own rule (Gupshup: only a live app takes subscriptions).
        if let Err(reason) = ops.accepts_subscriptions(t.onboarding.state) {
            return Err(AppError::precondition(format!("{reason}; onboardings/{id} is {}", t.onboarding.state)));
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
            // The replay answers the subscription the first call made: without its id there is
            // nothing to answer with (an empty id would ask the provider for no subscription).
            let Some(sub_id) = prior["subscription"].as_str().filter(|s| !s.is_empty()) else {
                return Err(AppError::internal(format!(
                    "the subscription_created event of request_id '{rid}' names no subscription"
                )));
            };
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
}
