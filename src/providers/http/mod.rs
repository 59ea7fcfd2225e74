//! Shared HTTP plumbing for provider adapters: one `reqwest::Client` with timeouts, one
//! response classification ([`classify`]), URL redaction, and the status-to-[`ProviderError`]
//! mapping. Retry, rate limiting and token caching live in the submodules.

pub mod ratelimit;
pub mod retry;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::ProviderError;
use crate::error::AppError;

pub use ratelimit::{QUEUED, RateLimiter, credential_fingerprint, rate_key};
pub use retry::{RetryPolicy, retry};
pub use token::{AuthFailure, TemporaryToken, TokenCache, TokenStatus, with_token};

/// A provider response as received: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body bytes.
    pub body: Bytes,
}

/// What to do with one attempt's result. Written once, used by every adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded: use the response.
    Success,
    /// Try again, not before `after` when the provider said so.
    Retry {
        /// The provider's `Retry-After`, if any.
        after: Option<Duration>,
        /// Why (no secrets).
        reason: String,
    },
    /// Never retry.
    Fail {
        /// Why (no secrets).
        reason: String,
    },
    /// A non-idempotent call may or may not have taken effect: reconcile before repeating.
    UnknownOutcome {
        /// Why (no secrets).
        reason: String,
    },
}

/// An adapter's hook for providers that answer errors with HTTP 2xx (Gupshup
/// `{"status":"error"}`, 99digital `{"status":"FAIL","reason":N}`).
pub trait ErrorBody: Send + Sync {
    /// `None` when the 2xx body is a success; otherwise the error and whether it is retryable.
    fn check(&self, status: StatusCode, body: &[u8]) -> Option<BodyError>;
}

/// An error found in a 2xx body by an [`ErrorBody`] hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// Retry (e.g. a "try later" reason code) or fail.
    pub retryable: bool,
    /// The provider's code or message (no secrets).
    pub reason: String,
}

/// The hook for providers whose 2xx bodies are always successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoErrorBody;

impl ErrorBody for NoErrorBody {
    fn check(&self, _status: StatusCode, _body: &[u8]) -> Option<BodyError> {
        None
    }
}

/// Classifies a received response. 2xx succeeds unless `hook` finds an error body; 429 and
/// 5xx retry (429 and 503 honour `Retry-After`); 408 retries; 504 on a non-idempotent call is
/// an unknown outcome (the gateway may have forwarded it); other 4xx fail.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    is_idempotent: bool,
    hook: &dyn ErrorBody,
) -> Outcome {
    if status.is_success() {
        return match hook.check(status, body) {
            None => Outcome::Success,
            Some(BodyError { retryable: true, reason }) => Outcome::Retry { after: None, reason },
            Some(BodyError { retryable: false, reason }) => Outcome::Fail { reason },
        };
    }
    let reason = format!("HTTP {}", status.as_u16());
    match status.as_u16() {
        429 | 503 => Outcome::Retry { after: retry_after(headers, SystemTime::now()), reason },
        504 if !is_idempotent => Outcome::UnknownOutcome { reason },
        408 | 500..=599 => Outcome::Retry { after: None, reason },
        _ => Outcome::Fail { reason },
    }
}

/// Classifies a transport error. A failed connect never sent anything, so it retries; a
/// timeout or a lost connection retries only an idempotent call and is otherwise an unknown
/// outcome.
pub fn classify_transport(e: &reqwest::Error, is_idempotent: bool) -> Outcome {
    let reason = e_reason(e);
    if e.is_builder() {
        Outcome::Fail { reason }
    } else if e.is_connect() || is_idempotent {
        Outcome::Retry { after: None, reason }
    } else {
        Outcome::UnknownOutcome { reason }
    }
}

fn e_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    };
    // The top-level message carries the full URL; its sources do not.
    let mut msg = kind.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The longest `Retry-After` believed. A larger value (a broken or hostile provider) would
/// park a step for years, and its milliseconds no longer fit the `i64` schedule; it is
/// capped here, once, for every adapter.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` as delta-seconds or an IMF-fixdate HTTP-date, capped at
/// [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_dow, day, mon, year, hms, "GMT"] = parts.as_slice() else { return None };
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    // Bounded fields keep the arithmetic below far from overflow (a year like
    // 99999999999999999 used to overflow it).
    if !(1..=31).contains(&day)
        || !(1..=9999).contains(&year)
        || !(0..=23).contains(&h)
        || !(0..=59).contains(&m)
        || !(0..=60).contains(&sec)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The largest provider answer read. Real answers are a few KiB (a QR PNG a few dozen); a
/// provider streaming more is broken or hostile, and reading it whole would be an unbounded
/// allocation.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Reads the body up to `max` bytes; `None` when it is larger (the rest is not read).
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Option<Bytes>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// The outcome of an answer over [`MAX_RESPONSE_BYTES`]: it cannot be parsed, so it fails;
/// a non-idempotent call the provider accepted (2xx) may have acted: reconcile.
pub fn oversized(status: StatusCode, is_idempotent: bool) -> Outcome {
    let reason = format!("HTTP {}: answer larger than {MAX_RESPONSE_BYTES} bytes", status.as_u16());
    if status.is_success() && !is_idempotent { Outcome::UnknownOutcome { reason } } else { Outcome::Fail { reason } }
}

/// A URL fit for logs and errors: no userinfo, query or fragment.
pub fn redact_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// A failed provider call, after classification. Carries no secrets and redacted URLs only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpFailure {
    /// Worth another attempt (5xx, 429, transport error on an idempotent call...).
    #[error("{class} ({url}): retryable: {reason}")]
    Retryable {
        /// Endpoint class, e.g. `gupshup.link_app`.
        class: String,
        /// Redacted URL.
        url: String,
        /// HTTP status, when one was received.
        status: Option<u16>,
        /// The provider's `Retry-After`.
        after: Option<Duration>,
        /// What went wrong (status line, transport error, error body summary); no secrets.
        reason: String,
    },
    /// Never retried (4xx, error body the hook calls final...).
    #[error("{class} ({url}): failed: {reason}")]
    Fatal {
        /// Endpoint class.
        class: String,
        /// Redacted URL.
        url: String,
        /// HTTP status, when one was received.
        status: Option<u16>,
        /// What the provider answered (status, error body summary) that rules out a retry.
        reason: String,
    },
    /// A non-idempotent call may have taken effect: reconcile before repeating.
    #[error("{class} ({url}): outcome unknown, reconcile before repeating: {reason}")]
    UnknownOutcome {
        /// Endpoint class.
        class: String,
        /// Redacted URL.
        url: String,
        /// Why the effect is unknown (a timeout or 504 after sending, a 2xx we could not read).
        reason: String,
    },
}

impl HttpFailure {
    /// True for [`HttpFailure::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// The provider's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { after, .. } => *after,
            _ => None,
        }
    }

    /// The HTTP status, when one was received.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } | Self::Fatal { status, .. } => *status,
            Self::UnknownOutcome { .. } => None,
        }
    }
}

/// Status-to-error mapping, written once: every adapter's HTTP failure becomes a semantic
/// [`ProviderError`] here, and `ProviderError` alone maps to the gRPC-facing `AppError`
/// (`providers::error`). Adapters refine first where the provider's body says more (a
/// Gupshup 409 "already exists" that names the app, a 99digital reason code).
impl From<HttpFailure> for ProviderError {
    fn from(f: HttpFailure) -> Self {
        let raw = f.status().map_or_else(|| "transport".to_string(), |s| s.to_string());
        match f {
            HttpFailure::UnknownOutcome { .. } => ProviderError::UnknownOutcome { raw },
            HttpFailure::Retryable { status: Some(429), after, .. } => {
                ProviderError::RateLimited { retry_after: after, raw }
            }
            HttpFailure::Retryable { class, reason, .. } => {
                ProviderError::Retryable { raw, message: format!("{class}: {reason}") }
            }
            HttpFailure::Fatal { status: Some(401 | 403), .. } => ProviderError::Unauthenticated { raw },
            HttpFailure::Fatal { status: Some(404), .. } => ProviderError::NotFound { raw },
            HttpFailure::Fatal { status: Some(409), class, reason, .. } => {
                ProviderError::Conflict { raw, message: format!("{class}: {reason}") }
            }
            HttpFailure::Fatal { status: Some(400 | 422) | None, class, reason, .. } => {
                ProviderError::Invalid { field: None, message: format!("{class}: {reason}"), raw }
            }
            HttpFailure::Fatal { class, reason, .. } => {
                ProviderError::Precondition { raw, message: format!("{class}: {reason}") }
            }
        }
    }
}

/// Timeouts for [`HttpClient`], from the service config.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Whole request, headers and body.
    pub total: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), total: Duration::from_secs(15) }
    }
}

/// One shared `reqwest::Client` (connection pool) with timeouts and our user agent.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// Builds the client.
    pub fn new(timeouts: HttpTimeouts) -> Result<Self, AppError> {
        let inner = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .user_agent(concat!("wa-onboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AppError::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { inner })
    }

    /// The underlying client, to start a request.
    pub fn request(&self, method: reqwest::Method, url: url::Url) -> reqwest::RequestBuilder {
        self.inner.request(method, url)
    }

    /// Sends one attempt and classifies it. `class` (e.g. `gupshup.link_app`) names the
    /// endpoint in logs and errors; `idempotent` says whether repeating the call is safe.
    pub async fn send(
        &self,
        class: &str,
        req: reqwest::RequestBuilder,
        idempotent: bool,
        hook: &dyn ErrorBody,
    ) -> Result<RawResponse, HttpFailure> {
        let c = self.send_keeping_body(class, req, idempotent, hook).await?;
        match c.failure {
            None => Ok(c.response),
            Some(f) => Err(f),
        }
    }

    /// [`HttpClient::send`], but a failure classified from a response comes with that
    /// response: some providers' error bodies say what to do next (Gupshup's 409 names the
    /// app that already exists). Transport failures have no response and are `Err`.
    pub async fn send_keeping_body(
        &self,
        class: &str,
        req: reqwest::RequestBuilder,
        idempotent: bool,
        hook: &dyn ErrorBody,
    ) -> Result<Classified, HttpFailure> {
        let req = req.build().map_err(|e| HttpFailure::Fatal {
            class: class.to_string(),
            url: "?".to_string(),
            status: None,
            reason: format!("cannot build request: {}", e.without_url()),
        })?;
        let url = redact_url(req.url());
        let method = req.method().clone();
        let started = tokio::time::Instant::now();
        let result = async {
            let resp = self.inner.execute(req).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
            let oversized = body.is_none();
            Ok::<_, reqwest::Error>((RawResponse { status, headers, body: body.unwrap_or_default() }, oversized))
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (outcome, status) = match &result {
            Ok((r, true)) => (oversized(r.status, idempotent), Some(r.status.as_u16())),
            Ok((r, false)) => (classify(r.status, &r.headers, &r.body, idempotent, hook), Some(r.status.as_u16())),
            Err(e) => (classify_transport(e, idempotent), None),
        };
        let result = result.map(|(r, _)| r);
        tracing::debug!(class, %method, url, status, elapsed_ms, outcome = ?outcome, "Provider call.");
        crate::telemetry::metrics::provider_call(class, &outcome, started.elapsed());
        let name = class.to_string();
        let class = name.clone();
        let failure = match outcome {
            Outcome::Success => None,
            Outcome::Retry { after, reason } => Some(HttpFailure::Retryable { class, url, status, after, reason }),
            Outcome::Fail { reason } => Some(HttpFailure::Fatal { class, url, status, reason }),
            Outcome::UnknownOutcome { reason } => Some(HttpFailure::UnknownOutcome { class, url, reason }),
        };
        match (result, failure) {
            (Ok(response), failure) => Ok(Classified { response, failure }),
            (Err(_), Some(f)) => Err(f),
            // A transport error is never classified a success; kept total without a panic.
            (Err(_), None) => {
                Err(HttpFailure::Fatal { class: name, url: "-".into(), status: None, reason: "transport error".into() })
            }
        }
    }
}

/// A provider's answer and, when the shared rules call it a failure, that failure.
#[derive(Debug)]
pub struct Classified {
    /// What the provider answered.
    pub response: RawResponse,
    /// Why it is not a success, if it is not.
    pub failure: Option<HttpFailure>,
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod testserver;

#[cfg(test)]
mod tests {
    use super::*;

    struct Gupshup;
    impl ErrorBody for Gupshup {
        fn check(&self, _s: StatusCode, body: &[u8]) -> Option<BodyError> {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            (v["status"] == "error").then(|| BodyError { retryable: false, reason: v["message"].to_string() })
        }
    }

    #[test]
    fn classification() {
        let h = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(classify(ok, &h, b"{}", false, &Gupshup), Outcome::Success);
        assert!(matches!(classify(ok, &h, br#"{"status":"error"}"#, true, &Gupshup), Outcome::Fail { .. }));
        for s in [500, 502, 503, 429, 408] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(st, &h, b"", false, &NoErrorBody), Outcome::Retry { .. }), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(st, &h, b"", true, &NoErrorBody), Outcome::Fail { .. }), "{s}");
        }
        let gw = StatusCode::GATEWAY_TIMEOUT;
        assert!(matches!(classify(gw, &h, b"", false, &NoErrorBody), Outcome::UnknownOutcome { .. }));
        assert!(matches!(classify(gw, &h, b"", true, &NoErrorBody), Outcome::Retry { .. }));
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(7)));
        h.insert("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(&h, at - Duration::from_secs(30)), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&h, at + Duration::from_secs(30)), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, SystemTime::now()), None);
    }

    #[test]
    fn urls_redacted() {
        let u = url::Url::parse("https://user:pw@api.example.com/partner/app?token=abc#frag").unwrap();
        assert_eq!(redact_url(&u), "https://api.example.com/partner/app");
    }

    #[test]
    fn provider_error_mapping() {
        let fatal = |status: Option<u16>| HttpFailure::Fatal {
            class: "gupshup.link_app".into(),
            url: "u".into(),
            status,
            reason: "r".into(),
        };
        let f = HttpFailure::Retryable {
            class: "gupshup.link_app".into(),
            url: "u".into(),
            status: Some(429),
            after: Some(Duration::from_secs(2)),
            reason: "HTTP 429".into(),
        };
        assert_eq!(
            ProviderError::from(f),
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(2)), raw: "429".into() }
        );
        assert!(matches!(ProviderError::from(fatal(Some(401))), ProviderError::Unauthenticated { .. }));
        assert!(matches!(ProviderError::from(fatal(Some(403))), ProviderError::Unauthenticated { .. }));
        assert!(matches!(ProviderError::from(fatal(Some(404))), ProviderError::NotFound { .. }));
        assert!(matches!(ProviderError::from(fatal(Some(409))), ProviderError::Conflict { .. }));
        assert!(matches!(ProviderError::from(fatal(Some(400))), ProviderError::Invalid { .. }));
        assert!(matches!(ProviderError::from(fatal(None)), ProviderError::Invalid { .. }));
        assert!(matches!(ProviderError::from(fatal(Some(402))), ProviderError::Precondition { .. }));
        let u = HttpFailure::UnknownOutcome { class: "c".into(), url: "u".into(), reason: "timeout".into() };
        assert_eq!(ProviderError::from(u), ProviderError::UnknownOutcome { raw: "transport".into() });
        let r = HttpFailure::Retryable {
            class: "c".into(),
            url: "u".into(),
            status: Some(502),
            after: None,
            reason: "x".into(),
        };
        assert!(ProviderError::from(r).is_retryable());
    }
}
