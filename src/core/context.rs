//! From stored rows to what an adapter needs: the decrypted [`CallContext`], the adapter for
//! the account, the sealed start request and the onboarding's provider secret.

use std::sync::Arc;

use base64::Engine as _;

use super::Core;
use crate::domain::account::AccountOptions;
use crate::domain::{OnboardingId, Secret};
use crate::error::AppError;
use crate::providers::{CallContext, Provider, ProviderHandle, ResourceRef, StartRequest};
use crate::store::{AccountRecord, OnboardingRecord, Sealed};

/// The engine's private keys inside an onboarding's `details_json`. Underscored keys are
/// never shown to callers (the gRPC conversion reads proto-named keys only).
pub const ENGINE_KEY: &str = "_engine";

/// The provider handle the pipeline stored for an onboarding, once a step made the resource.
pub fn stored_handle(o: &OnboardingRecord) -> Option<ProviderHandle> {
    let details: serde_json::Value = serde_json::from_str(&o.details_json).ok()?;
    serde_json::from_value(details.get(ENGINE_KEY)?.get("handle")?.clone()).ok()
}

// The AAD binds a sealed value to its row's key. Values sealed before ids were per tenant
// (migration 0003 put the tenant in front of every key) are bound to the bare id, the key's
// name: openers try the key, then the name.
fn aad_request(id: &str) -> String {
    format!("onboarding/{id}/request")
}

fn aad_secret(id: &str) -> String {
    format!("onboarding/{id}/secret")
}

impl Core {
    /// The provider API base URL for an account: its endpoint override, the in-process
    /// simulator for sandbox accounts, else the provider's public host (each provider's folder
    /// names its hosts; [`crate::providers::accounts::Endpoints`] chooses).
    pub fn base_url(&self, account: &AccountRecord, options: &AccountOptions) -> Result<String, AppError> {
        self.endpoints
            .base_url(account.provider, options, account.sandbox)
            .map_err(|e| AppError::precondition(format!("accounts/{} targets the sandbox, but {e}", account.id)))
    }

    /// Everything an adapter needs to act for `account`.
    pub fn call_context(&self, account: &AccountRecord) -> Result<CallContext, AppError> {
        let options: AccountOptions = serde_json::from_str(&account.options_json)
            .map_err(|e| AppError::internal(format!("stored options of accounts/{} do not parse: {e}", account.id)))?;
        Ok(CallContext {
            account_id: account.id.clone(),
            credentials: self.account_credentials(account)?,
            base_url: self.base_url(account, &options)?,
            webhook_url: Secret::new(self.webhook_url(account)?),
            options,
        })
    }

    /// The adapter serving `account` and the context to call it with. `UNIMPLEMENTED` when
    /// this build has no adapter for the provider.
    pub fn provider_for(&self, account: &AccountRecord) -> Result<(Arc<dyn Provider>, CallContext), AppError> {
        let ctx = self.call_context(account)?;
        let p = self.providers.provider_for(&ctx)?;
        Ok((p, ctx))
    }

    /// Seals a start request for storage (it can hold subscription header secrets).
    pub fn seal_request(&self, id: &OnboardingId, req: &StartRequest) -> Result<serde_json::Value, AppError> {
        let plain = serde_json::to_vec(req).map_err(|e| AppError::internal(format!("cannot encode request: {e}")))?;
        let sealed = self
            .cipher
            .seal(&plain, &aad_request(id.as_str()))
            .map_err(|e| AppError::internal(format!("cannot encrypt request: {e}")))?;
        Ok(serde_json::json!({
            "k": sealed.key_id,
            "b": base64::engine::general_purpose::STANDARD.encode(&sealed.blob),
        }))
    }

    /// The start request an onboarding was created with.
    pub fn open_request(&self, o: &OnboardingRecord) -> Result<StartRequest, AppError> {
        let details: serde_json::Value = serde_json::from_str(&o.details_json).unwrap_or_default();
        let sealed = &details[ENGINE_KEY]["request"];
        let corrupt = |what: &str| AppError::internal(format!("onboardings/{}: stored request {what}", o.id));
        let key_id = sealed["k"].as_str().ok_or_else(|| corrupt("is missing"))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(sealed["b"].as_str().unwrap_or_default())
            .map_err(|_| corrupt("is not base64"))?;
        let sealed = Sealed { key_id: key_id.to_string(), blob };
        let plain = self
            .cipher
            .open(&sealed, &aad_request(o.id.as_str()))
            .or_else(|_| self.cipher.open(&sealed, &aad_request(o.id.name())))
            .map_err(|_| corrupt("does not decrypt"))?;
        serde_json::from_slice(&plain).map_err(|_| corrupt("does not parse"))
    }

    /// Seals an onboarding's provider secret (app token, channel token).
    pub fn seal_onboarding_secret(&self, id: &OnboardingId, s: &Secret) -> Result<Sealed, AppError> {
        self.cipher
            .seal_secret(s, &aad_secret(id.as_str()))
            .map_err(|e| AppError::internal(format!("cannot encrypt: {e}")))
    }

    /// The onboarding's provider secret, if any.
    pub fn onboarding_secret(&self, o: &OnboardingRecord) -> Result<Option<Secret>, AppError> {
        o.secret
            .as_ref()
            .map(|s| {
                self.cipher
                    .open_secret(s, &aad_secret(o.id.as_str()))
                    .or_else(|_| self.cipher.open_secret(s, &aad_secret(o.id.name())))
                    .map_err(|_| AppError::internal(format!("onboardings/{}: stored secret does not decrypt", o.id)))
            })
            .transpose()
    }

    /// The provider resource of an onboarding, for capability calls. `FAILED_PRECONDITION`
    /// before the pipeline has created it.
    pub fn resource_ref(&self, o: &OnboardingRecord, request_id: Option<&str>) -> Result<ResourceRef, AppError> {
        let handle = stored_handle(o).ok_or_else(|| {
            AppError::precondition(format!(
                "onboardings/{} has no provider resource yet (state {}); wait for the pipeline",
                o.id, o.state
            ))
        })?;
        Ok(ResourceRef { handle, secret: self.onboarding_secret(o)?, request_id: request_id.map(str::to_string) })
    }
}
