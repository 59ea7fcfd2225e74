//! The store's rate slots as the HTTP rate limiter's port ([`RateLog`]): a limiter on it
//! shares the provider limits with every replica on the same database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{RateGrant, RateLog, RateSlots};
use crate::error::AppError;

/// A [`RateLog`] on the store's [`RateSlots`], stamping with the store's clock.
pub struct StoreRateLog {
    slots: Arc<dyn RateSlots>,
}

impl StoreRateLog {
    /// The log on `slots` (an `Arc<dyn Store>` coerces to it), ready for
    /// [`RateLimiter::with_log`](crate::providers::http::RateLimiter::with_log).
    pub fn shared(slots: Arc<dyn RateSlots>) -> Arc<dyn RateLog> {
        Arc::new(Self { slots })
    }
}

#[async_trait]
impl RateLog for StoreRateLog {
    async fn try_acquire(&self, key: &str, limit: u32, window: Duration) -> Result<RateGrant, AppError> {
        Ok(self.slots.rate_acquire(key, limit, window, None).await?)
    }

    async fn restamp(&self, key: &str, slot: i64) -> Result<(), AppError> {
        Ok(self.slots.rate_restamp(key, slot, None).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::RateLimiter;
    use crate::providers::http::ratelimit::log_checks;
    use crate::store::testing;

    /// Runs `check` on a limiter over the store's log, on SQLite, then on PostgreSQL.
    async fn on_both_backends<F: std::future::Future<Output = ()>>(check: impl Fn(RateLimiter) -> F) {
        let limiter = |store| RateLimiter::with_log(StoreRateLog::shared(store));
        let (store, _dir) = testing::sqlite_store().await;
        check(limiter(store)).await;
        let Some((store, url)) = testing::pg_store().await else { return };
        check(limiter(store)).await;
        testing::drop_pg(&url).await;
    }

    #[tokio::test]
    async fn a_slow_call_holds_its_slot_a_window_from_its_answer() {
        on_both_backends(log_checks::a_slow_call_holds_its_slot_a_window_from_its_answer).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_queue() {
        on_both_backends(log_checks::concurrent_callers_queue).await;
    }
}
