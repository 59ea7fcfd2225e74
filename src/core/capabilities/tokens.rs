//! Tokens: an onboarding's app token, the account's partner token, hosted-link tokens.

use super::{
    AppTokenView, LinkTokenView, attrs, credential_expiry, details_of, handle_data, hosted_links_of, partner_token_of,
    provider_err, str_of, with_credential_expiry,
};
use crate::core::{Caller, Core};
use crate::domain::{AccountId, EventKind, OnboardingDetails, OnboardingId};
use crate::error::AppError;
use crate::providers::http::TokenStatus;

impl Core {
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
        let data = handle_data(&o)?;
        // The token is stored with the resource it opens: one without the other is a broken
        // row, not a token to hand out (or to audit) under an empty resource id.
        let Some(resource_id) = o.external_key.clone() else {
            return Err(AppError::internal(format!("onboardings/{id} holds a token but no provider resource id")));
        };
        let api_url = str_of(&data, &["api_url", "apiUrl"]).unwrap_or_default().to_string();
        let expire_ms = data.get("token_expire_ms").and_then(|v| v.as_i64());
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
                let (link_expire, remaining) = match details_of(o)? {
                    OnboardingDetails::Exotel(d) => (d.link_expire_ms, d.customers_remaining.unwrap_or(0)),
                    _ => (None, 0),
                };
                (o.expire_ms.or(link_expire), i32::try_from(remaining).unwrap_or(0))
            }
            None => (None, 0),
        };
        Ok(LinkTokenView { status, expire_ms, customers_remaining, onboarding: o.map(|o| o.id) })
    }
}
