//! Raw Exotel ISV calls through the shared HTTP plumbing: Basic auth in the `Authorization`
//! header (never in the URL), the `isv` envelope checked for failures inside HTTP 2xx, and
//! Exotel's documented HTTP codes mapped to clear errors.

use http::StatusCode;
use reqwest::Method;
use url::Url;

use super::model::{Envelope, ValidateData, create_urls};
use crate::domain::Secret;
use crate::domain::account::Credentials;
use crate::providers::accounts::CredentialProblem;
use crate::providers::http::{
    BodyError, ErrorBody, HttpClient, HttpFailure, RateLimiter, RetryPolicy, rate_key, retry,
};
use crate::providers::{CallContext, ProviderError};

/// What Exotel credentials need before any call: the account SID, API key and API token of the
/// dashboard's API settings page, none empty (docs/providers.md §2.1 [C]).
pub fn credential_problems(account_sid: &str, api_key: &str, api_token: &Secret) -> Vec<CredentialProblem> {
    let mut out = Vec::new();
    if account_sid.trim().is_empty() {
        out.push(CredentialProblem::new("account_sid", "is required"));
    }
    if api_key.trim().is_empty() {
        out.push(CredentialProblem::new("api_key", "is required"));
    }
    if api_token.is_empty() {
        out.push(CredentialProblem::new("api_token", "is required"));
    }
    out
}

/// [I] The `access_token` [`Client::check`] validates (docs/providers.md §2.5, CheckAccount): not
/// shaped like a token Exotel hands out (a UUID: hex digits and `-`), so a documented 400
/// "malformed" answers it without any token lookup. What Exotel answers for it is not
/// published; a 404 (also the answer for an SID unknown on the cluster) fails the check.
pub(super) const CHECK_PROBE_TOKEN: &str = "wa-onboard-credentials-check";

/// One account's coordinates, borrowed from the call context.
pub(super) struct Account<'a> {
    sid: &'a str,
    api_key: &'a str,
    api_token: &'a Secret,
    /// The account's cluster (`api.exotel.com` / `api.in.exotel.com`), resolved by the engine
    /// from `options.exotel_region`: the adapter trusts it and adds nothing region-specific.
    base_url: &'a str,
}

impl<'a> Account<'a> {
    /// The Exotel credentials of `ctx`.
    pub(super) fn of(ctx: &'a CallContext) -> Result<Self, ProviderError> {
        match &ctx.credentials {
            Credentials::Exotel { account_sid, api_key, api_token } => {
                Ok(Self { sid: account_sid, api_key, api_token, base_url: &ctx.base_url })
            }
            other => Err(ProviderError::Precondition {
                raw: String::new(),
                message: format!("the account holds {} credentials, not Exotel ones", other.provider()),
            }),
        }
    }

    /// `{base}/v2/accounts/{sid}/isv`, the SID escaped as one path segment.
    fn isv_url(&self) -> Result<Url, ProviderError> {
        let bad = |what: &str| ProviderError::Precondition { raw: String::new(), message: what.to_string() };
        let mut url = Url::parse(self.base_url).map_err(|_| bad("the Exotel base URL is not a valid URL"))?;
        {
            let mut segs = url.path_segments_mut().map_err(|_| bad("the Exotel base URL cannot take a path"))?;
            segs.pop_if_empty().extend(["v2", "accounts", self.sid, "isv"]);
        }
        Ok(url)
    }

    fn request(&self, http: &HttpClient, method: Method, url: Url) -> reqwest::RequestBuilder {
        // Basic auth in the header: the documented `key:token@host` form would put the token
        // in a URL, which must never happen (it could be logged).
        http.request(method, url).basic_auth(self.api_key, Some(self.api_token.expose()))
    }
}

/// The hook that finds a failure inside an HTTP 2xx: `isv.status` other than `success`, or
/// an `isv.code` of 300 or more. The reason starts with `isv code N` so [`to_error`] can read
/// the code back.
pub(super) struct IsvBody;

/// Prefix of a [`BodyError`] reason written by [`IsvBody`].
const ISV_CODE: &str = "isv code ";

impl ErrorBody for IsvBody {
    fn check(&self, _status: StatusCode, body: &[u8]) -> Option<BodyError> {
        // An unparseable 2xx is not an error *status*; the caller reports it as Malformed.
        let isv = serde_json::from_slice::<Envelope<serde_json::Value>>(body).ok()?.isv()?;
        let status_failed = isv.status.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("success"));
        let code = isv.code.unwrap_or(0);
        // An `error_data` that says something is a failure even with `status: success`
        // (docs/providers.md §2.4); `null` or `{}` is not.
        let has_error = isv.error_data.as_ref().is_some_and(|e| e.message.is_some() || e.description.is_some());
        if !status_failed && code < 300 && !has_error {
            return None;
        }
        let message = isv.error_data.and_then(|e| e.message.or(e.description)).unwrap_or_default();
        // `error_data` with a 2xx code: no code to read back, so it reads as a 400.
        let code = if code < 300 { 400 } else { code };
        Some(BodyError { retryable: code >= 500 || code == 429, reason: format!("{ISV_CODE}{code}: {message}") })
    }
}

/// Exotel's HTTP codes (docs/providers.md §2.4) as semantic errors; a failure inside a 2xx is
/// mapped by its `isv.code`. Retry classes (429, 5xx, transport, unknown outcome) keep the
/// shared mapping.
pub(super) fn to_error(f: HttpFailure) -> ProviderError {
    let body_code = match &f {
        HttpFailure::Retryable { status: Some(s), reason, .. } | HttpFailure::Fatal { status: Some(s), reason, .. }
            if (200..300).contains(s) =>
        {
            reason.strip_prefix(ISV_CODE).and_then(|r| r.split(':').next()).and_then(|c| c.parse::<u16>().ok())
        }
        _ => None,
    };
    let code = body_code.or(f.status());
    let raw = code.map(|c| c.to_string()).unwrap_or_default();
    match code {
        Some(401 | 403) => ProviderError::Unauthenticated { raw },
        Some(402) => ProviderError::Precondition {
            raw,
            message: "payment required: the action is not on the Exotel plan or its usage limits are exceeded".into(),
        },
        Some(404) => ProviderError::NotFound { raw },
        Some(400) => ProviderError::Invalid { field: None, message: f.to_string(), raw },
        Some(429) if body_code.is_some() => ProviderError::RateLimited { retry_after: None, raw },
        Some(c) if body_code.is_some() && c >= 500 => ProviderError::Retryable { raw, message: f.to_string() },
        _ => f.into(),
    }
}

fn malformed(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Malformed { message: format!("exotel {what}: {e}") }
}

/// The ISV endpoints.
#[derive(Debug, Clone)]
pub(super) struct Client {
    http: HttpClient,
    limiter: RateLimiter,
    retry: RetryPolicy,
}

/// Most of an answer body kept in an error message.
const BODY_EXCERPT: usize = 600;

/// Keys whose values never reach an error message.
const SECRET_KEYS: [&str; 8] =
    ["token", "api_token", "api_key", "access_token", "authorization", "secret", "password", "auth"];

/// `body` as a short, secret-free excerpt for an error message: the account's own key and
/// token replaced wherever they appear, and the values of secret-named keys replaced.
pub(super) fn redacted_excerpt(body: &[u8], secrets: &[&str]) -> String {
    let mut text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            redact_keys(&mut v);
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        text = text.replace(s, "[REDACTED]");
    }
    if text.len() > BODY_EXCERPT {
        let mut cut = BODY_EXCERPT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn redact_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) && !x.is_null() {
                    *x = serde_json::Value::String("[REDACTED]".into());
                } else {
                    redact_keys(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

/// How [`Client::mint`] sends its one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MintAttempts {
    /// One attempt: the single-link step, which the engine retries as a whole.
    Once,
    /// Retried in-call through the retry policy where the plumbing calls it safe (5xx, 429,
    /// connect errors; never an unknown outcome): a link of a batch, so one hiccup does not
    /// throw the links already minted away. A 5xx that did mint leaves a link nobody gets;
    /// it lapses after 24 h.
    Retried,
}

impl Client {
    pub(super) fn new(http: HttpClient, limiter: RateLimiter, retry: RetryPolicy) -> Self {
        Self { http, limiter, retry }
    }

    /// `POST /v2/accounts/{sid}/isv`: mints one link, exactly as the vendor curl
    /// (docs/providers.md §2.2 [C]): `Content-Type: text/plain`, no body, no query string (no
    /// page documents a parameter; there is no `count`). Each attempt waits for a slot of the
    /// account's mint pace ([`super::MINT_PACE`], [I]: Exotel publishes no limit).
    pub(super) async fn mint(&self, acct: &Account<'_>, attempts: MintAttempts) -> Result<Vec<String>, ProviderError> {
        let url = acct.isv_url()?;
        let key = rate_key("exotel", "mint", &format!("{}:{}", acct.sid, acct.api_key));
        let (limit, window) = super::MINT_PACE;
        let policy = match attempts {
            MintAttempts::Once => RetryPolicy { max_attempts: 1, ..self.retry },
            MintAttempts::Retried => self.retry,
        };
        // The limiter's own error (store down, queue too long) is kept as is: nothing was sent.
        let limited = std::sync::Mutex::new(None);
        let sent = retry(&policy, || {
            let req =
                acct.request(&self.http, Method::POST, url.clone()).header(http::header::CONTENT_TYPE, "text/plain");
            let (key, limited) = (&key, &limited);
            async move {
                let slot = match self.limiter.acquire(key, limit, window).await {
                    Ok(s) => s,
                    Err(e) => {
                        *limited.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                        return Err(HttpFailure::Fatal {
                            class: "exotel.mint".into(),
                            url: "-".into(),
                            status: None,
                            reason: "rate limiter".into(),
                        });
                    }
                };
                let res = self.http.send("exotel.mint", req, false, &IsvBody).await;
                slot.sent().await;
                res
            }
        })
        .await;
        if let Some(e) = limited.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            return Err(e);
        }
        let resp = sent.map_err(to_error)?;
        let no_url = || ProviderError::Malformed {
            message: format!(
                "exotel create answer has no URL (looked at {} under response.whatsapp.isv); body: {}",
                super::model::CREATE_URL_PATHS.iter().map(|p| p.join(".")).collect::<Vec<_>>().join(", "),
                redacted_excerpt(&resp.body, &[acct.api_key, acct.api_token.expose()])
            ),
        };
        let body: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|_| no_url())?;
        let urls = create_urls(&body).ok_or_else(no_url)?;
        let request_id = body.get("request_id").and_then(|v| v.as_str()).unwrap_or_default();
        tracing::debug!(request_id, links = urls.len(), "Exotel minted an onboarding link.");
        Ok(urls)
    }

    /// `GET /v2/accounts/{sid}/isv?access_token=…`: the raw token status. Idempotent, so
    /// retried in-call. The link token is not a credential (it is in the URL the business
    /// gets), and the shared client drops query strings from logs anyway.
    pub(super) async fn validate(&self, acct: &Account<'_>, token: &str) -> Result<String, ProviderError> {
        let mut url = acct.isv_url()?;
        url.query_pairs_mut().append_pair("access_token", token);
        let resp = retry(&self.retry, || {
            let req = acct.request(&self.http, Method::GET, url.clone());
            self.http.send("exotel.validate", req, true, &IsvBody)
        })
        .await
        .map_err(to_error)?;
        let env: Envelope<ValidateData> =
            serde_json::from_slice(&resp.body).map_err(|e| malformed("validate answer", e))?;
        env.isv()
            .and_then(|i| i.data)
            .map(|d| d.onboarding_token_status)
            .ok_or_else(|| malformed("validate answer", "no onboarding_token_status"))
    }

    /// [I] A cheap authenticated call that creates nothing: the documented validate call
    /// (docs/providers.md §2.3, `access_token` mandatory) with [`CHECK_PROBE_TOKEN`], a token no
    /// account was ever given. Exotel checks the credentials and the account first, so
    /// 401/403 mean rejected credentials and 404 an SID unknown on this cluster; 400 (the
    /// probe is not token-shaped) or 200 mean both are fine. Minting would spend a link (and
    /// possibly plan quota); a GET without `access_token` is not a documented request.
    pub(super) async fn check(&self, acct: &Account<'_>) -> Result<(), ProviderError> {
        let mut url = acct.isv_url()?;
        url.query_pairs_mut().append_pair("access_token", CHECK_PROBE_TOKEN);
        let res = retry(&self.retry, || {
            let req = acct.request(&self.http, Method::GET, url.clone());
            self.http.send("exotel.check", req, true, &IsvBody)
        })
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(f) if f.status() == Some(400) => Ok(()),
            Err(f) => match to_error(f) {
                ProviderError::NotFound { raw } => Err(ProviderError::Precondition {
                    raw,
                    message: "account SID not found on this Exotel cluster (check the account SID and exotel_region)"
                        .into(),
                }),
                e => Err(e),
            },
        }
    }
}
