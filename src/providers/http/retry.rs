//! Retry with capped exponential backoff and full jitter, honouring `Retry-After`, within an
//! attempt count and a total time budget. Only [`HttpFailure::Retryable`] is retried: a
//! `Fatal` or `UnknownOutcome` failure returns at once (the caller reconciles the latter).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::HttpFailure;

/// How hard to retry one logical call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff cap; doubles per attempt.
    pub base: Duration,
    /// Largest backoff cap.
    pub max_backoff: Duration,
    /// Give up when the next sleep would end after this much time since the first attempt.
    pub total_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            total_budget: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (0-based): full jitter, uniform in
    /// `[0, min(max_backoff, base * 2^retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.base.saturating_mul(2u32.saturating_pow(retry.min(30))).min(self.max_backoff);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=cap_ms))
    }
}

/// Runs `op` until it succeeds, fails for good, or the policy is spent; sleeps
/// `max(backoff, Retry-After)` between attempts. Returns the last failure.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut op: F) -> Result<T, HttpFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HttpFailure>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 1u32;
    loop {
        let failure = match op().await {
            Ok(v) => return Ok(v),
            Err(f) if !f.is_retryable() => return Err(f),
            Err(f) => f,
        };
        if attempt >= policy.max_attempts {
            return Err(failure);
        }
        let sleep = policy.backoff(attempt - 1).max(failure.retry_after().unwrap_or(Duration::ZERO));
        if started.elapsed().saturating_add(sleep) > policy.total_budget {
            return Err(failure);
        }
        tracing::debug!(attempt, sleep_ms = sleep.as_millis() as u64, error = %failure, "Retrying provider call.");
        crate::telemetry::metrics::provider_retry(&failure);
        tokio::time::sleep(sleep).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::testserver::{Reply, TestServer};
    use super::super::{BodyError, ErrorBody, HttpClient, HttpTimeouts, NoErrorBody};
    use super::*;
    use http::StatusCode;

    fn failure(after: Option<Duration>) -> HttpFailure {
        HttpFailure::Retryable { class: "t.c".into(), url: "u".into(), status: Some(503), after, reason: "x".into() }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            total_budget: Duration::from_secs(30),
        }
    }

    fn client(total: Duration) -> HttpClient {
        HttpClient::new(HttpTimeouts { connect: Duration::from_secs(5), total }).unwrap()
    }

    #[test]
    fn backoff_is_capped() {
        let p = policy();
        for r in 0..40 {
            assert!(p.backoff(r) <= p.max_backoff);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_budget() {
        let calls = AtomicU32::new(0);
        let t0 = tokio::time::Instant::now();
        let r: Result<(), _> = retry(&policy(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(failure(Some(Duration::from_secs(5))))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(t0.elapsed() >= Duration::from_secs(10));

        // A Retry-After past the budget stops at once.
        let p = RetryPolicy { total_budget: Duration::from_secs(3), ..policy() };
        let calls = AtomicU32::new(0);
        let t0 = tokio::time::Instant::now();
        let r: Result<(), _> = retry(&p, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(failure(Some(Duration::from_secs(5))))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_fatal_or_unknown() {
        for f in [
            HttpFailure::Fatal { class: "c".into(), url: "u".into(), status: Some(400), reason: "r".into() },
            HttpFailure::UnknownOutcome { class: "c".into(), url: "u".into(), reason: "r".into() },
        ] {
            let calls = AtomicU32::new(0);
            let r: Result<(), _> = retry(&policy(), || {
                calls.fetch_add(1, Ordering::SeqCst);
                let f = f.clone();
                async move { Err(f) }
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    async fn call(
        c: &HttpClient,
        s: &TestServer,
        method: reqwest::Method,
        idempotent: bool,
        hook: &dyn ErrorBody,
    ) -> Result<super::super::RawResponse, HttpFailure> {
        retry(&policy(), || c.send("test.call", c.request(method.clone(), s.url.clone()), idempotent, hook)).await
    }

    #[tokio::test]
    async fn server_500_then_200_is_retried() {
        let s = TestServer::start(vec![Reply::status(500), Reply::status(200).body("ok")]).await;
        let r = call(&client(Duration::from_secs(5)), &s, reqwest::Method::POST, false, &NoErrorBody).await.unwrap();
        assert_eq!(&r.body[..], b"ok");
        assert_eq!(s.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn server_429_retry_after_waits() {
        let s = TestServer::start(vec![Reply::status(429).header("retry-after", "2"), Reply::status(200)]).await;
        let t0 = tokio::time::Instant::now();
        let r = call(&client(Duration::from_secs(3600)), &s, reqwest::Method::POST, false, &NoErrorBody).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(t0.elapsed() >= Duration::from_secs(2));
        assert_eq!(s.count(), 2);
    }

    #[tokio::test]
    async fn server_400_not_retried() {
        let s = TestServer::start(vec![Reply::status(400), Reply::status(200)]).await;
        let r = call(&client(Duration::from_secs(5)), &s, reqwest::Method::GET, true, &NoErrorBody).await;
        assert!(matches!(r, Err(HttpFailure::Fatal { status: Some(400), .. })), "{r:?}");
        assert_eq!(s.count(), 1);
    }

    #[tokio::test]
    async fn post_timeout_is_unknown_outcome() {
        let s = TestServer::start(vec![Reply::status(200).delay(Duration::from_secs(2))]).await;
        let r = call(&client(Duration::from_millis(200)), &s, reqwest::Method::POST, false, &NoErrorBody).await;
        assert!(matches!(r, Err(HttpFailure::UnknownOutcome { .. })), "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.count(), 1);
        let e: crate::providers::ProviderError = r.unwrap_err().into();
        assert!(matches!(e, crate::providers::ProviderError::UnknownOutcome { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn get_timeout_is_retried() {
        let s = TestServer::start(vec![Reply::status(200).delay(Duration::from_secs(2)), Reply::status(200)]).await;
        let r = call(&client(Duration::from_millis(200)), &s, reqwest::Method::GET, true, &NoErrorBody).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(s.count(), 2);
    }

    /// 99digital style: `{"status":"FAIL","reason":N}`; reason 7 is "try later".
    struct Digital99;
    impl ErrorBody for Digital99 {
        fn check(&self, _s: StatusCode, body: &[u8]) -> Option<BodyError> {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            (v["status"] == "FAIL").then(|| BodyError { retryable: v["reason"] == 7, reason: v["reason"].to_string() })
        }
    }

    #[tokio::test]
    async fn error_body_retried_or_failed_per_hook() {
        let c = client(Duration::from_secs(5));
        let s = TestServer::start(vec![
            Reply::status(200).body(r#"{"status":"FAIL","reason":7}"#),
            Reply::status(200).body(r#"{"status":"OK"}"#),
        ])
        .await;
        let r = call(&c, &s, reqwest::Method::POST, false, &Digital99).await.unwrap();
        assert_eq!(&r.body[..], br#"{"status":"OK"}"#);
        assert_eq!(s.count(), 2);

        let s = TestServer::start(vec![Reply::status(200).body(r#"{"status":"FAIL","reason":3}"#)]).await;
        let r = call(&c, &s, reqwest::Method::POST, false, &Digital99).await;
        assert!(matches!(r, Err(HttpFailure::Fatal { .. })), "{r:?}");
        assert_eq!(s.count(), 1);
    }
}
