//! From stored rows to what an adapter needs: the decrypted [`CallContext`], the adapter for
//! the account, the sealed start request and the onboarding's provider secret.

use std::sync::Arc;

use base64::Engine as _;

use super::Core;
use super::engine::{EngineState, SealedRequest};
use crate::domain::account::AccountOptions;
use crate::domain::{OnboardingId, Secret};
use crate::error::AppError;
use crate::providers::{CallContext, Provider, ProviderHandle, ResourceRef, StartRequest};
use crate::store::{AccountRecord, OnboardingRecord, Sealed};

/// The provider handle the pipeline stored for an onboarding, once a step made the resource.
/// Engine state that does not parse is an error, not "no resource".
pub fn stored_handle(o: &OnboardingRecord) -> Result<Option<ProviderHandle>, AppError> {
    Ok(engine_state(o)?.handle)
}

/// The engine's bookkeeping of an onboarding, parsed.
pub fn engine_state(o: &OnboardingRecord) -> Result<EngineState, AppError> {
    EngineState::parse(&o.engine_json).map_err(|e| AppError::internal(format!("onboardings/{}: {}", o.id, e.message)))
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
    pub fn seal_request(&self, id: &OnboardingId, req: &StartRequest) -> Result<SealedRequest, AppError> {
        let plain = serde_json::to_vec(req).map_err(|e| AppError::internal(format!("cannot encode request: {e}")))?;
        let sealed = self
            .cipher
            .seal(&plain, &aad_request(id.as_str()))
            .map_err(|e| AppError::internal(format!("cannot encrypt request: {e}")))?;
        Ok(SealedRequest {
            key_id: sealed.key_id,
            blob: base64::engine::general_purpose::STANDARD.encode(&sealed.blob),
        })
    }

    /// The start request an onboarding was created with (from its parsed engine state).
    pub fn open_request(&self, o: &OnboardingRecord, engine: &EngineState) -> Result<StartRequest, AppError> {
        let corrupt = |what: &str| AppError::internal(format!("onboardings/{}: stored request {what}", o.id));
        let sealed = engine.request.as_ref().ok_or_else(|| corrupt("is missing"))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(sealed.blob.as_bytes())
            .map_err(|_| corrupt("is not base64"))?;
        let sealed = Sealed { key_id: sealed.key_id.clone(), blob };
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
        let handle = stored_handle(o)?.ok_or_else(|| {
            AppError::precondition(format!(
                "onboardings/{} has no provider resource yet (state {}); wait for the pipeline",
                o.id, o.state
            ))
        })?;
        Ok(ResourceRef { handle, secret: self.onboarding_secret(o)?, request_id: request_id.map(str::to_string) })
    }
}
