//! [`ProviderError`]: the small semantic error every adapter returns, mapped once to
//! [`AppError`].

use std::time::Duration;

use crate::domain::{Capability, ProviderKind};
use crate::error::{AppError, ErrorCode};

/// What went wrong at a provider, by what the caller must do about it. `raw` keeps the
/// provider's own code (HTTP status, error code, message id); never a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Credentials were rejected (401/403 or the provider's equivalent).
    #[error("credentials rejected (provider code {raw})")]
    Unauthenticated {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
    },
    /// Rate limited; wait `retry_after` when given.
    #[error("rate limited (provider code {raw})")]
    RateLimited {
        /// `Retry-After` or the provider's window.
        retry_after: Option<Duration>,
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
    },
    /// Transient (5xx, timeout, connection) and the call is safe to repeat.
    #[error("provider unavailable: {message} (provider code {raw})")]
    Retryable {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
        /// What failed (status line, transport error), for logs and the step's last error.
        message: String,
    },
    /// A non-idempotent call whose effect is unknown (timeout after sending). Repeat only
    /// through an operation that reconciles first (the create step run again with the same key).
    #[error("outcome unknown (provider code {raw})")]
    UnknownOutcome {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
    },
    /// The provider refused the input; repeating will not help.
    #[error("invalid {}: {message} (provider code {raw})", field.as_deref().unwrap_or("request"))]
    Invalid {
        /// Our field path, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
    },
    /// It exists already (name taken, number already onboarded elsewhere).
    #[error("conflict: {message} (provider code {raw})")]
    Conflict {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
        /// What clashed (the taken name or number, and who holds it when known).
        message: String,
    },
    /// The provider has no such resource.
    #[error("not found at provider (provider code {raw})")]
    NotFound {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
    },
    /// The resource is not in a state that allows this (already finished, not connected).
    #[error("precondition failed: {message} (provider code {raw})")]
    Precondition {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
        /// Which state forbids it, in words the caller can act on.
        message: String,
    },
    /// The provider (or our adapter) cannot do this at all.
    #[error("not supported by this provider: {capability:?}")]
    NotSupported {
        /// What is missing.
        capability: Capability,
    },
    /// The credential is past its expiry (a Gupshup client secret whose expiry date passed
    /// and that the provider now refuses): only new credentials help, so callers get
    /// `FAILED_PRECONDITION` with reason `REAUTH_REQUIRED`.
    #[error("credential expired: {message} (provider code {raw})")]
    CredentialExpired {
        /// The provider's own code (HTTP status or error code) as it sent it; empty when none.
        raw: String,
        /// What expired, when, and where to get a new one.
        message: String,
    },
    /// The engine asked for a step the adapter's pipeline does not have (see
    /// [`super::PipelineStep::parse`]): a row from another version, or a bug. Not retryable.
    #[error("unknown step '{step}' for {provider}")]
    UnknownStep {
        /// Whose pipeline was asked.
        provider: ProviderKind,
        /// The stored step name.
        step: String,
    },
    /// A response or callback did not parse.
    #[error("malformed provider data: {message}")]
    Malformed {
        /// What did not parse (no body excerpts: they may hold tokens).
        message: String,
    },
}

impl ProviderError {
    /// True when repeating the same operation later may succeed. `UnknownOutcome` counts:
    /// the operations that return it reconcile before acting again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Retryable { .. } | Self::UnknownOutcome { .. })
    }

    /// The provider's raw code, empty where the variant has none.
    pub fn raw(&self) -> &str {
        match self {
            Self::Unauthenticated { raw }
            | Self::RateLimited { raw, .. }
            | Self::Retryable { raw, .. }
            | Self::UnknownOutcome { raw }
            | Self::Invalid { raw, .. }
            | Self::Conflict { raw, .. }
            | Self::NotFound { raw }
            | Self::Precondition { raw, .. }
            | Self::CredentialExpired { raw, .. } => raw,
            Self::NotSupported { .. } | Self::Malformed { .. } | Self::UnknownStep { .. } => "",
        }
    }
}

/// The one mapping from provider errors to the closed [`ErrorCode`] set.
impl From<(ProviderKind, ProviderError)> for AppError {
    fn from((kind, e): (ProviderKind, ProviderError)) -> Self {
        let raw = e.raw().to_string();
        let name = kind.as_str();
        let err = match e {
            ProviderError::Unauthenticated { .. } => {
                AppError::precondition(format!("{name}: credentials rejected; update the account"))
            }
            ProviderError::RateLimited { retry_after, .. } => {
                let err = AppError::new(ErrorCode::ResourceExhausted, format!("{name}: rate limited"));
                match retry_after {
                    Some(d) => err.with_retry_after(d),
                    None => err,
                }
            }
            ProviderError::Retryable { message, .. } => {
                AppError::new(ErrorCode::Unavailable, format!("{name} unavailable: {message}"))
            }
            ProviderError::UnknownOutcome { .. } => {
                AppError::new(ErrorCode::Unavailable, format!("{name}: outcome unknown, retry to reconcile"))
            }
            ProviderError::Invalid { field: Some(field), message, .. } => {
                let mut err = AppError::invalid(field, message);
                err.message = format!("{name}: {}", err.message);
                err
            }
            ProviderError::Invalid { field: None, message, .. } => {
                AppError::new(ErrorCode::InvalidArgument, format!("{name} refused the request: {message}"))
            }
            ProviderError::Conflict { message, .. } => {
                AppError::new(ErrorCode::AlreadyExists, format!("{name}: {message}"))
            }
            ProviderError::NotFound { .. } => AppError::not_found(format!("{name} resource")),
            ProviderError::Precondition { message, .. } => AppError::precondition(format!("{name}: {message}")),
            ProviderError::UnknownStep { step, .. } => {
                AppError::precondition(format!("{name}: unknown step '{step}' for {name}"))
            }
            ProviderError::CredentialExpired { message, .. } => AppError::precondition(format!("{name}: {message}"))
                .with_reason(crate::error::ErrorReason::ReauthRequired),
            ProviderError::NotSupported { capability } => {
                AppError::unimplemented(format!("{name} does not support {capability:?}"))
            }
            ProviderError::Malformed { message } => {
                AppError::internal(format!("{name} sent data we could not parse: {message}"))
            }
        };
        err.with_provider(name, raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(e: ProviderError) -> AppError {
        (ProviderKind::Gupshup, e).into()
    }

    #[test]
    fn maps_to_closed_codes_with_provider_detail() {
        let e = map(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(6)), raw: "429".into() });
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert_eq!(e.retry_after, Some(Duration::from_secs(6)));
        let p = e.provider.unwrap();
        assert_eq!((p.provider.as_str(), p.raw_code.as_str()), ("gupshup", "429"));

        let e = map(ProviderError::Invalid {
            field: Some("gupshup.app_name".into()),
            message: "taken".into(),
            raw: "400".into(),
        });
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.violations, vec![("gupshup.app_name".to_string(), "taken".to_string())]);

        let cases = [
            (ProviderError::Unauthenticated { raw: "401".into() }, ErrorCode::FailedPrecondition),
            (ProviderError::Retryable { raw: "503".into(), message: "down".into() }, ErrorCode::Unavailable),
            (ProviderError::UnknownOutcome { raw: "timeout".into() }, ErrorCode::Unavailable),
            (ProviderError::Conflict { raw: "409".into(), message: "x".into() }, ErrorCode::AlreadyExists),
            (ProviderError::NotFound { raw: "404".into() }, ErrorCode::NotFound),
            (ProviderError::Precondition { raw: "x".into(), message: "x".into() }, ErrorCode::FailedPrecondition),
            (ProviderError::NotSupported { capability: Capability::Cancel }, ErrorCode::Unimplemented),
            (ProviderError::Malformed { message: "x".into() }, ErrorCode::Internal),
        ];
        for (pe, code) in cases {
            assert_eq!(map(pe).code, code);
        }
    }

    /// Issue 17 point 15: an expired credential is FAILED_PRECONDITION with reason
    /// REAUTH_REQUIRED (a plain rejection keeps the code's own reason).
    #[test]
    fn expired_credential_is_precondition_with_reauth_reason() {
        use tonic_types::StatusExt;
        let e = map(ProviderError::CredentialExpired { raw: "401".into(), message: "client secret expired".into() });
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert_eq!(e.reason, Some(crate::error::ErrorReason::ReauthRequired));
        assert!(!ProviderError::CredentialExpired { raw: String::new(), message: String::new() }.is_retryable());
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.get_details_error_info().map(|i| i.reason), Some("REAUTH_REQUIRED".to_string()));
        let plain: tonic::Status = map(ProviderError::Unauthenticated { raw: "401".into() }).into();
        assert_eq!(plain.get_details_error_info().map(|i| i.reason), Some("FAILED_PRECONDITION".to_string()));
    }

    #[test]
    fn retryable_classification() {
        assert!(ProviderError::Retryable { raw: "502".into(), message: String::new() }.is_retryable());
        assert!(ProviderError::UnknownOutcome { raw: "t".into() }.is_retryable());
        assert!(!ProviderError::Invalid { field: None, message: String::new(), raw: "400".into() }.is_retryable());
        assert!(!ProviderError::Unauthenticated { raw: "401".into() }.is_retryable());
    }
}
