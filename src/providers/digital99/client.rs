//! Raw 99digital calls through the shared HTTP plumbing: JSON bodies (even on DELETE), Bearer
//! access token, and every `{"status":"FAIL","reason":N}` (sent with HTTP 200) turned into a
//! typed [`ProviderError`] that keeps `N` as its raw code.

use http::StatusCode;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::model::Envelope;
use crate::domain::Secret;
use crate::providers::ProviderError;
use crate::providers::accounts::CredentialProblem;
use crate::providers::http::{BodyError, ErrorBody, HttpClient, HttpFailure, RetryPolicy, retry};

/// What 99digital credentials need before any call: the partner dashboard's `client_id` and
/// `client_secret`, both required by the access-token call (docs/providers.md §4.1 [C]).
pub fn credential_problems(client_id: &str, client_secret: &Secret) -> Vec<CredentialProblem> {
    let mut out = Vec::new();
    if client_id.trim().is_empty() {
        out.push(CredentialProblem::new("client_id", "is required"));
    }
    if client_secret.is_empty() {
        out.push(CredentialProblem::new("client_secret", "is required"));
    }
    out
}

/// 99digital reason codes and what they mean for us. Documented ones are [C] (docs/providers.md
/// §4); the rest are [I]: 99digital publishes no value for them, and these are the values
/// the project's simulator infers. Keep every reason decision in this one table.
pub(super) mod reason {
    /// OK [C].
    pub(crate) const OK: i64 = 1;
    /// Wrong credentials / malformed login JSON [C].
    pub(crate) const WRONG_CREDENTIALS: i64 = 2;
    /// On login: too many failed attempts, IP blocked. Elsewhere: access token missing or
    /// expired [C].
    pub(crate) const TOKEN: i64 = 3;
    /// Number empty or wrong [C].
    pub(crate) const BAD_NUMBER: i64 = 4;
    /// Wrong HTTP verb ("use GET/DELETE/POST"); on setWebhook: URL invalid [C].
    pub(crate) const WRONG_VERB_OR_URL: i64 = 13;
    /// [I] Too many code requests for one number (Meta may block it for 1 h).
    pub(crate) const TOO_MANY_CODES: i64 = 20;
    /// [I] Too many registered numbers waiting (documented cap 500).
    pub(crate) const TOO_MANY_NUMBERS: i64 = 21;
    /// [I] Wrong verification code.
    pub(crate) const WRONG_CODE: i64 = 22;
    /// [I] Number not registered or not verified.
    pub(crate) const NOT_VERIFIED: i64 = 23;
    /// [I] An onboarding account already exists for the number.
    pub(crate) const ACCOUNT_EXISTS: i64 = 24;
    /// Cannot remove an account that finished onboarding [C].
    pub(crate) const FINISHED: i64 = 25;
    /// Onboarding account not found [C].
    pub(crate) const NOT_FOUND: i64 = 26;
    /// Use PATCH [C].
    pub(crate) const USE_PATCH: i64 = 27;
}

/// The typed error for a FAIL `reason` (not the login call: see [`login_error`]).
pub(super) fn reason_error(n: i64) -> ProviderError {
    use reason::*;
    let raw = n.to_string();
    let precondition = |m: &str| ProviderError::Precondition { raw: raw.clone(), message: m.to_string() };
    let invalid = |field: Option<&str>, m: &str| ProviderError::Invalid {
        field: field.map(str::to_string),
        message: m.to_string(),
        raw: raw.clone(),
    };
    match n {
        // A 3 here is an expired token: `with_token` fetches a new one and retries once.
        WRONG_CREDENTIALS | TOKEN => ProviderError::Unauthenticated { raw },
        BAD_NUMBER => invalid(Some("digital99.phone"), "99digital refused the number (empty or wrong)"),
        WRONG_VERB_OR_URL => invalid(None, "99digital refused the request (wrong method or invalid URL)"),
        TOO_MANY_CODES => precondition("too many verification code requests for this number; wait before asking again"),
        TOO_MANY_NUMBERS => precondition("too many registered numbers are waiting for an onboarding account"),
        WRONG_CODE => invalid(Some("code"), "the verification code is wrong"),
        NOT_VERIFIED => precondition("the number is not registered and verified at 99digital"),
        ACCOUNT_EXISTS => {
            ProviderError::Conflict { raw, message: "an onboarding account exists for this number".into() }
        }
        FINISHED => precondition("cannot remove an onboarding account that finished onboarding"),
        NOT_FOUND => ProviderError::NotFound { raw },
        USE_PATCH => invalid(None, "99digital refused the request (use PATCH)"),
        _ => precondition("99digital refused the call"),
    }
}

/// The typed error for a FAIL `reason` of the access-token call [C]: 2 wrong credentials,
/// 3 IP blocked after failed attempts; both are credential problems.
pub(super) fn login_error(n: i64) -> ProviderError {
    match n {
        reason::WRONG_CREDENTIALS | reason::TOKEN => ProviderError::Unauthenticated { raw: n.to_string() },
        other => reason_error(other),
    }
}

/// Finds `FAIL` inside HTTP 2xx. The reason string is `reason N` so [`failure_reason`] can
/// read `N` back. No FAIL reason is worth an in-call retry (an expired token is handled by
/// the token cache).
pub(super) struct FailBody;

const REASON: &str = "reason ";

impl ErrorBody for FailBody {
    fn check(&self, _status: StatusCode, body: &[u8]) -> Option<BodyError> {
        let env: Envelope = serde_json::from_slice(body).ok()?;
        let failed = env.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("FAIL"))
            || env.reason.is_some_and(|r| r != reason::OK);
        failed.then(|| BodyError { retryable: false, reason: format!("{REASON}{}", env.reason.unwrap_or(0)) })
    }
}

/// The FAIL reason carried by a failure found by [`FailBody`].
pub(super) fn failure_reason(f: &HttpFailure) -> Option<i64> {
    match f {
        HttpFailure::Fatal { status: Some(s), reason, .. } if (200..300).contains(s) => {
            reason.strip_prefix(REASON).and_then(|n| n.parse().ok())
        }
        _ => None,
    }
}

fn malformed(class: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Malformed { message: format!("{class}: {e}") }
}

/// One 99digital call's failure: a FAIL reason (mapped by `table`) or an HTTP failure
/// (shared mapping: 5xx retryable, 429 rate limited, 401/403 unauthenticated...).
pub(super) enum CallError {
    /// `{"status":"FAIL","reason":N}`.
    Reason(i64),
    /// Anything else, already mapped.
    Other(ProviderError),
}

impl CallError {
    /// Maps with the general reason table.
    pub(super) fn into_error(self) -> ProviderError {
        match self {
            Self::Reason(n) => reason_error(n),
            Self::Other(e) => e,
        }
    }
}

/// The Partners API.
#[derive(Debug, Clone)]
pub(super) struct Client {
    http: HttpClient,
    retry: RetryPolicy,
}

/// A request body, or none (GET bodies are empty [C]).
pub(super) const NO_BODY: Option<&()> = None;

/// One request to the partners API, apart from where it goes (the account's base URL) and
/// the token it carries: what [`Client::call`] sends.
#[derive(Debug, Clone)]
pub(super) struct Call<'a, B: ?Sized> {
    /// Endpoint class for metrics, logs and the rate limiter (`digital99.access_token`).
    pub(super) class: &'a str,
    /// HTTP method.
    pub(super) method: Method,
    /// Path under `/api/` (`settings/accessToken`).
    pub(super) path: &'a str,
    /// JSON body, if the call has one.
    pub(super) body: Option<&'a B>,
    /// Whether repeating it is harmless: only then is it retried within the call.
    pub(super) idempotent: bool,
}

impl Client {
    pub(super) fn new(http: HttpClient, retry: RetryPolicy) -> Self {
        Self { http, retry }
    }

    /// `{base}/api/{path}`. `base` is the host (`https://partners.99digital.co.il`); a base
    /// that already ends in `/api` is accepted too.
    fn url(base: &str, path: &str) -> Result<Url, ProviderError> {
        let root = base.trim_end_matches('/');
        let root = root.strip_suffix("/api").unwrap_or(root);
        Url::parse(&format!("{root}/api/{path}")).map_err(|_| ProviderError::Precondition {
            raw: String::new(),
            message: "the 99digital base URL is not a valid URL".into(),
        })
    }

    /// One call: JSON body (if any), Bearer token (if any). Idempotent calls are retried
    /// in-call on retryable failures; others get one attempt (the step engine retries them
    /// after reconciling).
    pub(super) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        base: &str,
        bearer: Option<&Secret>,
        call: Call<'_, B>,
    ) -> Result<T, CallError> {
        let Call { class, method, path, body, idempotent } = call;
        let url = Self::url(base, path).map_err(CallError::Other)?;
        let build = || {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(t) = bearer {
                req = req.bearer_auth(t.expose());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            req
        };
        let res = if idempotent {
            retry(&self.retry, || self.http.send(class, build(), true, &FailBody)).await
        } else {
            self.http.send(class, build(), false, &FailBody).await
        };
        let resp = res.map_err(|f| match failure_reason(&f) {
            Some(n) => CallError::Reason(n),
            None => CallError::Other(f.into()),
        })?;
        serde_json::from_slice(&resp.body).map_err(|e| CallError::Other(malformed(class, e)))
    }
}
