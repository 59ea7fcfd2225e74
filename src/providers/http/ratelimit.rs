//! Client-side rate limiting per provider endpoint class and credential. [`RateLimiter::acquire`]
//! queues until a slot is free (it never fails for being over the limit). The sliding logs sit
//! behind this module's port, [`RateLog`]: an in-memory one here ([`MemoryRateLog`], one
//! replica), and the store's shared one (`store::rate_log::StoreRateLog`, every replica on
//! one database), wired in by the application.
//!
//! Why no call can be one too many: a slot is taken before the call, then re-stamped when the
//! provider's answer (or the failure) arrives ([`Slot::sent`]), and held for the window from
//! then. The provider counted the call somewhere between the two, so however long the call
//! took to get there, the next call that slot admits arrives more than a window after it. A
//! small slack (see [`slack_for`]) covers only the provider's own window accounting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::AppError;
use crate::providers::ProviderError;

/// A non-secret fingerprint of a credential id (first 12 hex digits of a SHA-256).
pub fn credential_fingerprint(credential_id: &str) -> String {
    let digest = Sha256::digest(format!("wa-onboard/rate-key/{credential_id}").as_bytes());
    hex::encode(&digest[..6])
}

/// The limiter key `{provider}:{class}:{credential_fingerprint}`.
pub fn rate_key(provider: &str, class: &str, credential_id: &str) -> String {
    format!("{provider}:{class}:{}", credential_fingerprint(credential_id))
}

/// What [`RateLog::try_acquire`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateGrant {
    /// The slot is taken; its id, for [`RateLog::restamp`].
    Taken(i64),
    /// Every slot is held: the time until the oldest frees.
    Wait(Duration),
}

/// The limiter's port: where the sliding logs live.
#[async_trait]
pub trait RateLog: Send + Sync {
    /// Takes a slot now, or says how long to wait before one frees.
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<RateGrant, AppError>;
    /// Re-stamps a taken slot with the current time (see [`Slot::sent`]).
    async fn restamp(&self, key: &str, slot: i64) -> Result<(), AppError>;
}

/// Per key, slot ids with their stamps, oldest first.
type Logs = HashMap<String, VecDeque<(i64, Instant)>>;

/// In-process sliding log (single replica, SQLite deployments), with the last slot id given.
#[derive(Debug, Default)]
pub struct MemoryRateLog {
    logs: Mutex<(i64, Logs)>,
}

#[async_trait]
impl RateLog for MemoryRateLog {
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<RateGrant, AppError> {
        if limit == 0 {
            return Ok(RateGrant::Wait(window));
        }
        let now = Instant::now();
        let mut guard = self.logs.lock().map_err(|_| AppError::internal("rate limiter lock poisoned"))?;
        let (next_id, logs) = &mut *guard;
        let log = logs.entry(key.to_string()).or_default();
        while log.front().is_some_and(|(_, t)| now.duration_since(*t) >= window) {
            log.pop_front();
        }
        if log.len() < limit as usize {
            *next_id += 1;
            log.push_back((*next_id, now));
            return Ok(RateGrant::Taken(*next_id));
        }
        let oldest = log.front().map_or(now, |(_, t)| *t);
        Ok(RateGrant::Wait((oldest + window).saturating_duration_since(now).max(Duration::from_millis(1))))
    }

    async fn restamp(&self, key: &str, slot: i64) -> Result<(), AppError> {
        let now = Instant::now();
        let mut guard = self.logs.lock().map_err(|_| AppError::internal("rate limiter lock poisoned"))?;
        if let Some(log) = guard.1.get_mut(key)
            && let Some(at) = log.iter().position(|(id, _)| *id == slot)
        {
            // `now` is the newest stamp there is: moving the slot to the back keeps the order.
            log.remove(at);
            log.push_back((slot, now));
        }
        Ok(())
    }
}

/// A slot taken by [`RateLimiter::acquire`]. Call [`Slot::sent`] once the call it admitted is
/// answered or has failed. Dropped without that, the slot keeps the stamp it got when taken
/// and only the slack stands between a slow call and the next one.
#[must_use = "call `sent()` once the provider has answered"]
pub struct Slot {
    backend: Arc<dyn RateLog>,
    key: String,
    id: i64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).field("id", &self.id).finish()
    }
}

impl Slot {
    /// The call is over: the provider has counted it by now, so the slot is held a window
    /// from now. A backend failure is logged, not returned: the call itself is done, and the
    /// slot keeps its first stamp.
    pub async fn sent(self) {
        if let Err(e) = self.backend.restamp(&self.key, self.id).await {
            tracing::warn!(key = %self.key, error = %e.message, "Rate limit slot not re-stamped; it keeps its first stamp.");
        }
    }
}

/// The slack added to `window`: a hundredth of it, at least [`RateLimiter::MIN_SLACK`] and at
/// most [`RateLimiter::MAX_SLACK`].
///
/// What it covers: since every slot is re-stamped when its call is answered ([`Slot::sent`]),
/// the trip to the provider no longer needs any; what is left is the provider's own window
/// accounting (its clock's resolution, a window counted in whole seconds), which grows with
/// the window. The floor covers a provider counting a one-second window coarsely; the cap
/// keeps half-hour windows from idling.
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
    backend: Arc<dyn RateLog>,
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
    /// The slack is the window divided by this (1 %).
    pub const SLACK_DIVISOR: u32 = 100;
    /// Least slack, whatever the window.
    pub const MIN_SLACK: Duration = Duration::from_millis(20);
    /// Most slack, whatever the window.
    pub const MAX_SLACK: Duration = Duration::from_secs(1);

    /// On an in-memory log ([`MemoryRateLog`]): limits hold within this process.
    pub fn in_memory() -> Self {
        Self::with_log(Arc::new(MemoryRateLog::default()))
    }

    /// On `log`, e.g. one shared by every replica.
    pub fn with_log(log: Arc<dyn RateLog>) -> Self {
        Self { backend: log, slack: None, max_wait: None }
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

    /// Waits until one of `limit` slots per `window` for `key` is free, and takes it: make the
    /// call, then [`Slot::sent`]. Fails only when the backend does (store down: retryable,
    /// nothing was sent), `limit` is 0, or the slot is further away than `max_wait`
    /// ([`QUEUED`], with the wait as `retry_after`).
    pub async fn acquire(&self, key: &str, limit: u32, window: Duration) -> Result<Slot, ProviderError> {
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
                RateGrant::Taken(id) => {
                    crate::telemetry::metrics::rate_limit_wait(key, started.elapsed());
                    let waited_ms = started.elapsed().as_millis() as u64;
                    if waited_ms > 0 {
                        tracing::debug!(key, waited_ms, "Rate limit slot acquired after waiting.");
                    }
                    return Ok(Slot { backend: self.backend.clone(), key: key.to_string(), id });
                }
                RateGrant::Wait(wait) if self.max_wait.is_some_and(|m| started.elapsed() + wait > m) => {
                    return Err(ProviderError::RateLimited { retry_after: Some(wait), raw: QUEUED.into() });
                }
                RateGrant::Wait(wait) => tokio::time::sleep(wake_after(wait)).await,
            }
        }
    }
}

/// What every [`RateLog`] behind a [`RateLimiter`] must give (run here on [`MemoryRateLog`],
/// and by the store on its shared log).
#[cfg(test)]
pub(crate) mod log_checks {
    use super::*;

    /// Whether no `limit + 1` of `arrivals` (sorted) fall within one `window`.
    pub(crate) fn max_in_window(arrivals: &[std::time::Instant], limit: usize, window: Duration) -> bool {
        arrivals.windows(limit + 1).all(|w| w[limit].duration_since(w[0]) >= window)
    }

    /// A call that took long to be answered holds its slot a window from the answer, not from
    /// when it was taken: the provider may have counted it just before answering. Real time:
    /// the store's log reads the wall clock.
    pub(crate) async fn a_slow_call_holds_its_slot_a_window_from_its_answer(limiter: RateLimiter) {
        let window = Duration::from_millis(300);
        let slot = limiter.acquire("slow", 1, window).await.unwrap();
        let taken = std::time::Instant::now();
        // The call takes 200 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answered = std::time::Instant::now();
        slot.sent().await;
        limiter.acquire("slow", 1, window).await.unwrap().sent().await;
        let next = answered.elapsed();
        // Milliseconds of tolerance: the store stamps in whole milliseconds.
        assert!(next >= window - Duration::from_millis(2), "next call {next:?} after the answer");
        assert!(taken.elapsed() >= window + Duration::from_millis(198));
    }

    /// Nine concurrent callers of a 3 per 500 ms limit queue: never more than three at once.
    pub(crate) async fn concurrent_callers_queue(limiter: RateLimiter) {
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let (limiter, times) = (limiter.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                let slot = limiter.acquire("test:store:x", 3, Duration::from_millis(500)).await?;
                times.lock().unwrap().push(std::time::Instant::now());
                slot.sent().await;
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

#[cfg(test)]
mod tests {
    use super::super::testserver::TestServer;
    use super::super::{HttpClient, HttpTimeouts, NoErrorBody};
    use super::log_checks::max_in_window;
    use super::*;

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
                let slot = limiter.acquire(&key, 5, Duration::from_secs(1)).await?;
                let sent = client
                    .send("test.burst", client.request(reqwest::Method::GET, url), true, &NoErrorBody)
                    .await
                    .map_err(ProviderError::from);
                slot.sent().await;
                sent
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
        assert_eq!(slack_for(Duration::from_secs(4)), Duration::from_millis(40));
        assert_eq!(slack_for(Duration::from_secs(60)), Duration::from_millis(600));
        assert_eq!(slack_for(Duration::from_secs(1)), RateLimiter::MIN_SLACK);
        assert_eq!(slack_for(Duration::from_millis(100)), RateLimiter::MIN_SLACK);
        assert_eq!(slack_for(Duration::from_secs(5 * 60)), RateLimiter::MAX_SLACK);
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
            limiter.acquire("k", 3, window).await.unwrap().sent().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first window's calls go at once");
        limiter.acquire("k", 3, window).await.unwrap().sent().await;
        let waited = t0.elapsed();
        let held = window + slack_for(window);
        assert!(waited >= held, "a slot was reused {waited:?} after it was taken, before {held:?}");
        assert!(waited <= held + Duration::from_millis(10), "the waiter idled: {waited:?}");
        let fixed = RateLimiter::in_memory().with_slack(Duration::from_millis(300));
        let t1 = Instant::now();
        fixed.acquire("k", 1, window).await.unwrap().sent().await;
        fixed.acquire("k", 1, window).await.unwrap().sent().await;
        assert!(t1.elapsed() >= window + Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_slow_call_holds_its_slot_a_window_from_its_answer() {
        log_checks::a_slow_call_holds_its_slot_a_window_from_its_answer(RateLimiter::in_memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_queue() {
        log_checks::concurrent_callers_queue(RateLimiter::in_memory()).await;
    }

    /// Soak finding: steps queued on Whapi's 20 channels per 30 min held every engine slot
    /// while they waited. With a `max_wait`, a slot further away is answered, not awaited.
    #[tokio::test]
    async fn a_slot_beyond_max_wait_is_answered_not_awaited() {
        let limiter = RateLimiter::in_memory().with_max_wait(Duration::from_secs(5));
        limiter.acquire("k", 1, Duration::from_secs(60)).await.unwrap().sent().await;
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
        limiter.acquire("short", 1, Duration::from_millis(100)).await.unwrap().sent().await;
        limiter.acquire("short", 1, Duration::from_millis(100)).await.unwrap().sent().await;
    }

    /// Paused clock: any wait would advance it by about ten seconds.
    #[tokio::test(start_paused = true)]
    async fn other_keys_do_not_wait() {
        let limiter = RateLimiter::in_memory();
        let t0 = Instant::now();
        for i in 0..10 {
            limiter.acquire(&format!("k{i}"), 1, Duration::from_secs(10)).await.unwrap().sent().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
