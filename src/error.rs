//! One closed set of error codes, mapped once to gRPC and once to HTTP. Every layer converts
//! its own rich errors into [`AppError`] at its boundary.

use std::time::Duration;

/// The closed set. Add a variant only when callers must act differently on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed; see the field violations.
    InvalidArgument,
    /// No such resource for this tenant (also: another tenant's resource).
    NotFound,
    /// It exists already (or an idempotency key was reused for another request).
    AlreadyExists,
    /// The system is not in a state that allows this (finished onboarding, no sandbox...).
    FailedPrecondition,
    /// Missing or invalid API key.
    Unauthenticated,
    /// A limit was hit; retry after the given delay.
    ResourceExhausted,
    /// A dependency (store, provider) is down; retry.
    Unavailable,
    /// Not built yet for this provider.
    Unimplemented,
    /// The call took too long.
    DeadlineExceeded,
    /// Concurrent change; retry.
    Aborted,
    /// A bug or an unexpected provider answer.
    Internal,
}

impl ErrorCode {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Unimplemented => tonic::Code::Unimplemented,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Aborted => tonic::Code::Aborted,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status, for the webhook ingress.
    pub fn http(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::InvalidArgument => S::BAD_REQUEST,
            Self::NotFound => S::NOT_FOUND,
            Self::AlreadyExists => S::CONFLICT,
            Self::FailedPrecondition => S::UNPROCESSABLE_ENTITY,
            Self::Unauthenticated => S::UNAUTHORIZED,
            Self::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Self::Unavailable => S::SERVICE_UNAVAILABLE,
            Self::Unimplemented => S::NOT_IMPLEMENTED,
            Self::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            Self::Aborted => S::CONFLICT,
            Self::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine name, used as `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Aborted => "ABORTED",
            Self::Internal => "INTERNAL",
        }
    }
}

/// `ErrorInfo.reason` of a `FAILED_PRECONDITION` whose fix is new credentials: the
/// provider credential expired (e.g. a Gupshup client secret past its expiry date).
pub const REASON_REAUTH_REQUIRED: &str = "REAUTH_REQUIRED";

/// A finer `ErrorInfo.reason` than the code's name (one byte: `AppError` stays small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// [`REASON_REAUTH_REQUIRED`].
    ReauthRequired,
}

impl ErrorReason {
    /// The `ErrorInfo.reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReauthRequired => REASON_REAUTH_REQUIRED,
        }
    }
}

/// A provider's own error code, kept in the error details (`ErrorInfo.metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderErrorDetail {
    /// Which provider.
    pub provider: String,
    /// Its raw code (HTTP status, message, reason number).
    pub raw_code: String,
}

/// The error every use case returns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct AppError {
    /// The class.
    pub code: ErrorCode,
    /// Human message, no secrets.
    pub message: String,
    /// Field violations (field path, description), for `InvalidArgument`.
    pub violations: Vec<(String, String)>,
    /// When to retry, for `ResourceExhausted` / `Unavailable`.
    pub retry_after: Option<Duration>,
    /// The provider's raw code, when a provider failed.
    pub provider: Option<ProviderErrorDetail>,
    /// A finer `ErrorInfo.reason` than the code's name (e.g. [`REASON_REAUTH_REQUIRED`]).
    pub reason: Option<ErrorReason>,
}

impl AppError {
    /// A new error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), violations: Vec::new(), retry_after: None, provider: None, reason: None }
    }

    /// `NOT_FOUND` for a resource name.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// `FAILED_PRECONDITION`: the request is valid but the resource is not in a state that
    /// allows it (e.g. cancelling a live onboarding); retrying unchanged will not help.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    /// `INTERNAL`: a bug or broken invariant on our side, not the caller's fault; the message
    /// reaches the caller, so it names what broke but never a secret.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `UNAVAILABLE`: a dependency is down or busy; retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// `UNIMPLEMENTED` naming what is missing and where it will come from.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unimplemented, message)
    }

    /// `INVALID_ARGUMENT` with one field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let (field, description) = (field.into(), description.into());
        Self {
            code: ErrorCode::InvalidArgument,
            message: format!("invalid {field}: {description}"),
            violations: vec![(field, description)],
            retry_after: None,
            provider: None,
            reason: None,
        }
    }

    /// Adds a field violation (kept alongside the code, e.g. for `ALREADY_EXISTS`).
    pub fn with_violation(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.violations.push((field.into(), description.into()));
        self
    }

    /// Sets a finer `ErrorInfo.reason` than the code's name.
    pub fn with_reason(mut self, reason: ErrorReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Adds a retry delay.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// Adds the provider's raw code.
    pub fn with_provider(mut self, provider: impl Into<String>, raw_code: impl Into<String>) -> Self {
        self.provider = Some(ProviderErrorDetail { provider: provider.into(), raw_code: raw_code.into() });
        self
    }
}

/// Collects field violations, then fails once with all of them.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// A collector with no violation yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one. A field keeps its first violation only: the limits table checks every
    /// field first, and a later check of the same oversized field would only repeat it.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        let field = field.into();
        if !self.0.iter().any(|(f, _)| *f == field) {
            self.0.push((field, description.into()));
        }
    }

    /// Records the error of a parse, returning its value if it parsed.
    pub fn check<T, E: std::fmt::Display>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    /// `Ok` when none were recorded.
    pub fn finish(self) -> Result<(), AppError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let summary = self.0.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ");
        Err(AppError {
            code: ErrorCode::InvalidArgument,
            message: format!("invalid request: {summary}"),
            violations: self.0,
            retry_after: None,
            provider: None,
            reason: None,
        })
    }
}

/// Characters of caller input an error message may quote.
pub const QUOTE_MAX: usize = 64;

/// Caller input as an error message may show it: in single quotes, at most [`QUOTE_MAX`]
/// characters then `…`, control characters and quotes escaped. A 1 MiB value must not make a
/// 2 MiB message (clients then see a metadata-size error instead of ours), and a NUL or a
/// newline must not reach a log line or a header as is.
pub fn quote(input: &str) -> String {
    let mut out = String::with_capacity(QUOTE_MAX + 8);
    out.push('\'');
    let mut chars = input.chars();
    for c in chars.by_ref().take(QUOTE_MAX) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('\'');
    out
}

impl From<AppError> for tonic::Status {
    fn from(e: AppError) -> Self {
        let mut details = tonic_types::ErrorDetails::new();
        for (field, description) in &e.violations {
            details.add_bad_request_violation(field.clone(), description.clone());
        }
        if let Some(d) = e.retry_after {
            details.set_retry_info(Some(d));
        }
        let mut metadata = std::collections::HashMap::new();
        if let Some(p) = &e.provider {
            metadata.insert("provider".to_string(), p.provider.clone());
            metadata.insert("provider_code".to_string(), p.raw_code.clone());
        }
        details.set_error_info(e.reason.map_or(e.code.as_str(), ErrorReason::as_str), "wa-onboard", metadata);
        use tonic_types::StatusExt;
        tonic::Status::with_error_details(e.code.grpc(), e.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn violations_become_bad_request_details() {
        let mut v = Violations::new();
        v.add("account.display_name", "too long");
        v.add("request_id", "too long");
        let status: tonic::Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[0].field, "account.display_name");
    }

    #[test]
    fn provider_code_and_retry_kept() {
        let e = AppError::new(ErrorCode::ResourceExhausted, "slow down")
            .with_retry_after(Duration::from_secs(3))
            .with_provider("gupshup", "429");
        let status: tonic::Status = e.into();
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata.get("provider_code").map(String::as_str), Some("429"));
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(3)));
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        assert_eq!(quote("abc"), "'abc'");
        assert_eq!(quote("a\0b\n'"), "'a\\0b\\n\\''");
        let long = quote(&"x".repeat(1 << 20));
        assert_eq!(long.chars().count(), QUOTE_MAX + 3);
        assert!(long.ends_with("…'"));
    }

    #[test]
    fn database_text_never_reaches_the_caller() {
        let e =
            AppError::from(crate::store::StoreError::Other("invalid byte sequence for encoding \"UTF8\": 0x00".into()));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("UTF8"), "{}", e.message);
    }

    #[test]
    fn every_code_maps() {
        for c in [ErrorCode::NotFound, ErrorCode::Unavailable, ErrorCode::Internal] {
            assert!(c.http().as_u16() >= 400);
            assert_ne!(c.grpc(), tonic::Code::Ok);
        }
    }
}
