//! Client-side rate limiting per provider endpoint class and credential. [`RateLimiter::acquire`]
//! queues until a slot is free (it never fails for being over the limit). Two backends: an
//! in-memory sliding log (one replica) and the [`Store`]'s shared sliding log (PostgreSQL
//! replicas). Every slot is held for the window plus a slack proportional to it (see
//! [`slack_for`]), so jitter between when we take a slot and when the provider counts the call
//! cannot squeeze one call too many into a provider window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::AppError;
use crate::providers::ProviderError;
use crate::store::Store;

/// A non-secret fingerprint of a credential id (first 12 hex digits of a SHA-256).
pub fn credential_fingerprint(credential_id: &str) -> String {
    let digest = Sha256::digest(format!("wa-onboard/rate-key/{credential_id}").as_bytes());
    hex::encode(&digest[..6])
}

/// The limiter key `{provider}:{class}:{credential_fingerprint}`.
pub fn rate_key(provider: &str, class: &str, credential_id: &str) -> String {
    format!("{provider}:{class}:{}", credential_fingerprint(credential_id))
}

/// Where the sliding logs live.
#[async_trait]
pub trait RateBackend: Send + Sync {
    /// Takes a slot now, or says how long to wait before one frees.
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<Option<Duration>, AppError>;
}

/// In-process sliding log (single replica, SQLite deployments).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    logs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

#[async_trait]
impl RateBackend for MemoryBackend {
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<Option<Duration>, AppError> {
        if limit == 0 {
            return Ok(Some(window));
        }
        let now = Instant::now();
        let mut logs = self.logs.lock().map_err(|_| AppError::internal("rate limiter lock poisoned"))?;
        let log = logs.entry(key.to_string()).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= window) {
            log.pop_front();
        }
        if log.len() < limit as usize {
            log.push_back(now);
            return Ok(None);
        }
        let oldest = log.front().copied().unwrap_or(now);
        Ok(Some((oldest + window).saturating_duration_since(now).max(Duration::from_millis(1))))
    }
}

/// The store's sliding log, shared by every replica.
pub struct StoreBackend {
    store: Arc<dyn Store>,
}

#[async_trait]
impl RateBackend for StoreBackend {
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<Option<Duration>, AppError> {
        Ok(self.store.rate_acquire(key, limit, window, None).await?)
    }
}

/// The slack added to `window`: a twentieth of it, at least [`RateLimiter::MIN_SLACK`] and at
/// most [`RateLimiter::MAX_SLACK`].
///
/// Why proportional: providers count calls by their own arrival clock, so what the slack must
/// absorb is how much one call's trip to the provider can exceed another's (network and
/// scheduling jitter, a slower connection set-up) plus any coarseness of the provider's own
/// window accounting, which grows with the window: a fixed 100 ms is lost in the noise of a
/// minute-long window. The floor covers the absolute part, the delay between taking a slot and
/// the call arriving: on a starved two-core machine 50 ms let an 11th call into a one-second
/// window (the simulator counted violations), so it stays at 100 ms. The cap keeps half-hour
/// windows from idling for minutes.
pub fn slack_for(window: Duration) -> Duration {
    (window / RateLimiter::SLACK_DIVISOR).clamp(RateLimiter::MIN_SLACK, RateLimiter::MAX_SLACK)
}

/// How long a waiter sleeps past the instant a slot frees: a little jitter (at most a
/// fiftieth of the wait, 1 to 10 ms) spreads waiters that wake for the same freed slot over
/// the backend without costing a noticeable share of the window. Sleeping later than the
/// slot frees can never cause a violation, only a little idle time.
fn wake_after(wait: Duration) -> Duration {
    let jitter_cap = (wait.as_millis() as u64 / 50).clamp(1, 10);
    wait + Duration::from_millis(rand::rng().random_range(0..=jitter_cap))
}

/// `raw` of the [`ProviderError::RateLimited`] that [`RateLimiter::acquire`] answers when the
/// next slot is further away than its `max_wait`: nothing was sent, so the engine reschedules
/// the step for then without counting an attempt.
pub const QUEUED: &str = "rate_limit_queue";

/// Queues callers until the limit allows them through.
#[derive(Clone)]
pub struct RateLimiter {
    backend: Arc<dyn RateBackend>,
    /// A fixed slack instead of [`slack_for`] (tests).
    slack: Option<Duration>,
    max_wait: Option<Duration>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("slack", &self.slack)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The slack is the window divided by this (5 %).
    pub const SLACK_DIVISOR: u32 = 20;
    /// Least slack, whatever the window.
    pub const MIN_SLACK: Duration = Duration::from_millis(100);
    /// Most slack, whatever the window.
    pub const MAX_SLACK: Duration = Duration::from_secs(2);

    /// In-memory backend.
    pub fn in_memory() -> Self {
        Self::with_backend(Arc::new(MemoryBackend::default()))
    }

    /// Store-backed (shared across replicas).
    pub fn store_backed(store: Arc<dyn Store>) -> Self {
        Self::with_backend(Arc::new(StoreBackend { store }))
    }

    /// Any backend.
    pub fn with_backend(backend: Arc<dyn RateBackend>) -> Self {
        Self { backend, slack: None, max_wait: None }
    }

    /// Waits at most `max_wait` for a slot; a longer wait answers [`QUEUED`] instead. The
    /// engine's limiter has one: a caller that waits holds one of its concurrency slots, and
    /// enough callers queued on one limit (Whapi: 20 channels per 30 min) would otherwise
    /// hold them all and stall every other onboarding.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Adds a fixed `slack` to every window instead of [`slack_for`] the window.
    pub fn with_slack(mut self, slack: Duration) -> Self {
        self.slack = Some(slack);
        self
    }

    /// Waits until one of `limit` slots per `window` for `key` is free, and takes it. Fails
    /// only when the backend does (store down: retryable, nothing was sent), `limit` is 0, or
    /// the slot is further away than `max_wait` ([`QUEUED`], with the wait as `retry_after`).
    pub async fn acquire(&self, key: &str, limit: u32, window: Duration) -> Result<(), ProviderError> {
        if limit == 0 {
            return Err(ProviderError::Precondition {
                raw: "rate_limit".into(),
                message: format!("rate limit for {key} is 0"),
            });
        }
        let window = window.saturating_add(self.slack.unwrap_or_else(|| slack_for(window)));
        let started = Instant::now();
        loop {
            let slot = self.backend.try_acquire(key, limit, window).await.map_err(|e| ProviderError::Retryable {
                raw: "rate_limiter".into(),
                message: format!("rate limiter unavailable: {}", e.message),
            })?;
            match slot {
                None => {
                    crate::telemetry::metrics::rate_limit_wait(key, started.elapsed());
                    let waited_ms = started.elapsed().as_millis() as u64;
                    if waited_ms > 0 {
                        tracing::debug!(key, waited_ms, "Rate limit slot acquired after waiting.");
                    }
                    return Ok(());
                }
                Some(wait) if self.max_wait.is_some_and(|m| started.elapsed() + wait > m) => {
                    return Err(ProviderError::RateLimited { retry_after: Some(wait), raw: QUEUED.into() });
                }
                Some(wait) => tokio::time::sleep(wake_after(wait)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testserver::TestServer;
    use super::super::{HttpClient, HttpTimeouts, NoErrorBody};
    use super::*;

    fn max_in_window(arrivals: &[std::time::Instant], limit: usize, window: Duration) -> bool {
        arrivals.windows(limit + 1).all(|w| w[limit].duration_since(w[0]) >= window)
    }

    #[test]
    fn fingerprint_hides_the_id() {
        let k = rate_key("gupshup", "link_app", "partner-secret-id-123");
        assert!(k.starts_with("gupshup:link_app:"));
        assert!(!k.contains("partner-secret-id-123"));
        assert_eq!(k, rate_key("gupshup", "link_app", "partner-secret-id-123"));
        assert_ne!(k, rate_key("gupshup", "link_app", "other"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_callers_queue_under_five_per_second() {
        let server = TestServer::start(Vec::new()).await;
        let client = HttpClient::new(HttpTimeouts::default()).unwrap();
        let limiter = RateLimiter::in_memory();
        let key = rate_key("test", "burst", "cred-1");
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (client, limiter, key, url) = (client.clone(), limiter.clone(), key.clone(), server.url.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire(&key, 5, Duration::from_secs(1)).await?;
                client
                    .send("test.burst", client.request(reqwest::Method::GET, url), true, &NoErrorBody)
                    .await
                    .map_err(ProviderError::from)
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let arrivals = server.arrivals();
        assert_eq!(arrivals.len(), 50);
        assert!(max_in_window(&arrivals, 5, Duration::from_secs(1)), "more than 5 requests in a 1 s window");
    }

    #[test]
    fn slack_is_proportional_within_floor_and_cap() {
        assert_eq!(slack_for(Duration::from_secs(4)), Duration::from_millis(200));
        assert_eq!(slack_for(Duration::from_secs(10)), Duration::from_millis(500));
        assert_eq!(slack_for(Duration::from_secs(1)), RateLimiter::MIN_SLACK);
        assert_eq!(slack_for(Duration::from_millis(100)), RateLimiter::MIN_SLACK);
        assert_eq!(slack_for(Duration::from_secs(60)), RateLimiter::MAX_SLACK);
        assert_eq!(slack_for(Duration::from_secs(30 * 60)), RateLimiter::MAX_SLACK);
        assert_eq!(slack_for(Duration::ZERO), RateLimiter::MIN_SLACK);
    }

    /// On tokio's paused clock (which the in-memory backend reads): the next slot frees
    /// exactly one window plus its slack after the oldest, and the waiter takes it within the
    /// jitter bound, so the limiter neither squeezes calls in nor idles a slot away.
    #[tokio::test(start_paused = true)]
    async fn a_slot_frees_after_the_window_and_its_slack() {
        let limiter = RateLimiter::in_memory();
        let window = Duration::from_secs(1);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.acquire("k", 3, window).await.unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first window's calls go at once");
        limiter.acquire("k", 3, window).await.unwrap();
        let waited = t0.elapsed();
        let held = window + slack_for(window);
        assert!(waited >= held, "a slot was reused {waited:?} after it was taken, before {held:?}");
        assert!(waited <= held + Duration::from_millis(10), "the waiter idled: {waited:?}");
        let fixed = RateLimiter::in_memory().with_slack(Duration::from_millis(300));
        let t1 = Instant::now();
        fixed.acquire("k", 1, window).await.unwrap();
        fixed.acquire("k", 1, window).await.unwrap();
        assert!(t1.elapsed() >= window + Duration::from_millis(300));
    }

    /// Soak finding: steps queued on Whapi's 20 channels per 30 min held every engine slot
    /// while they waited. With a `max_wait`, a slot further away is answered, not awaited.
    #[tokio::test]
    async fn a_slot_beyond_max_wait_is_answered_not_awaited() {
        let limiter = RateLimiter::in_memory().with_max_wait(Duration::from_secs(5));
        limiter.acquire("k", 1, Duration::from_secs(60)).await.unwrap();
        match limiter.acquire("k", 1, Duration::from_secs(60)).await {
            Err(e @ ProviderError::RateLimited { retry_after: Some(d), .. }) => {
                assert_eq!(e.raw(), QUEUED);
                assert!(e.is_retryable());
                let held = Duration::from_secs(60) + slack_for(Duration::from_secs(60));
                assert!(d > Duration::from_secs(5) && d <= held, "{d:?}");
            }
            other => panic!("expected {QUEUED}, got {other:?}"),
        }
        // A slot within `max_wait` is still waited for.
        limiter.acquire("short", 1, Duration::from_millis(100)).await.unwrap();
        limiter.acquire("short", 1, Duration::from_millis(100)).await.unwrap();
    }

    /// Paused clock: any wait would advance it by about ten seconds.
    #[tokio::test(start_paused = true)]
    async fn other_keys_do_not_wait() {
        let limiter = RateLimiter::in_memory();
        let t0 = Instant::now();
        for i in 0..10 {
            limiter.acquire(&format!("k{i}"), 1, Duration::from_secs(10)).await.unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_backed_limiter_queues() {
        let (store, _dir) = crate::store::testing::sqlite_store().await;
        let limiter = RateLimiter::store_backed(store);
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let (limiter, times) = (limiter.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire("test:store:x", 3, Duration::from_millis(500)).await?;
                times.lock().unwrap().push(std::time::Instant::now());
                Ok::<_, ProviderError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 9);
        // Small tolerance: the store clock is milliseconds, the test clock nanoseconds.
        assert!(max_in_window(&times, 3, Duration::from_millis(490)));
    }
}
