//! The engine's own bookkeeping for one onboarding, stored in `onboardings.engine_json`
//! (until migration 0005, the `_engine` key of `details_json`): never shown to callers.

use serde::{Deserialize, Serialize};

use crate::domain::{OnboardingState, UnixMs};
use crate::error::AppError;
use crate::providers::ProviderHandle;

/// The start request, sealed (the field names are the ones rows have always carried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRequest {
    /// Which encryption key sealed it.
    #[serde(rename = "k")]
    pub key_id: String,
    /// nonce || ciphertext || tag, base64.
    #[serde(rename = "b")]
    pub blob: String,
}

/// What the engine keeps about an onboarding beside its public details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineState {
    /// The request the onboarding was created with, sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<SealedRequest>,
    /// The provider-side resource, once a step made (or a batch preset) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<ProviderHandle>,
    /// The state the onboarding was in when it last stalled or needed credentials:
    /// `RetryPipeline` goes back there. Never cleared: it also tells an adapter that an
    /// earlier run may have sent a create before the restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_from: Option<OnboardingState>,
    /// When the last callback applied to it was sent (the provider's clock), to drop stale ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_callback_ms: Option<UnixMs>,
}

impl EngineState {
    /// Reads the stored text (empty text: nothing recorded yet). Anything else that does not
    /// parse is an error, never "no handle": a handle that vanished would orphan the
    /// provider's resource.
    pub fn parse(json: &str) -> Result<Self, AppError> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(json).map_err(|e| AppError::internal(format!("stored engine state does not parse: {e}")))
    }

    /// The stored text. An error instead of `null` if the handle's data cannot be encoded.
    pub fn to_json(&self) -> Result<String, AppError> {
        serde_json::to_string(self).map_err(|e| AppError::internal(format!("cannot encode engine state: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_text_keeps_the_keys_rows_always_had() {
        let old = r#"{"request":{"k":"key-1","b":"AAEC"},"handle":{"external_key":"app-1","data":{"name":"shop"}},
            "stalled_from":"REAUTH_REQUIRED","last_callback_ms":42}"#;
        let Ok(e) = EngineState::parse(old) else { panic!("engine state does not parse") };
        assert_eq!(e.request, Some(SealedRequest { key_id: "key-1".into(), blob: "AAEC".into() }));
        assert_eq!(e.handle.as_ref().map(|h| h.external_key.as_str()), Some("app-1"));
        assert_eq!(e.stalled_from, Some(OnboardingState::ReauthRequired));
        assert_eq!(e.last_callback_ms, Some(42));
        let again = e.to_json().map(|j| EngineState::parse(&j).ok());
        assert_eq!(again.ok().flatten(), Some(e));
        assert_eq!(EngineState::parse("").ok(), Some(EngineState::default()));
        assert_eq!(EngineState::default().to_json().ok().as_deref(), Some("{}"));
    }

    #[test]
    fn a_state_that_does_not_parse_is_an_error_not_an_empty_one() {
        assert!(EngineState::parse(r#"{"handle":"not a handle"}"#).is_err());
        assert!(EngineState::parse("null").is_err());
    }
}
