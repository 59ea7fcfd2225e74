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

    fn limiter(store: Arc<dyn crate::store::Store>) -> RateLimiter {
        RateLimiter::with_log(StoreRateLog::shared(store))
    }

    #[tokio::test]
    async fn a_slow_call_holds_its_slot_a_window_from_its_answer() {
        let (store, _dir) = testing::sqlite_store().await;
        log_checks::a_slow_call_holds_its_slot_a_window_from_its_answer(limiter(store)).await;
        let Some((store, url)) = testing::pg_store().await else { return };
        log_checks::a_slow_call_holds_its_slot_a_window_from_its_answer(limiter(store)).await;
        testing::drop_pg(&url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_queue() {
        let (store, _dir) = testing::sqlite_store().await;
        log_checks::concurrent_callers_queue(limiter(store)).await;
        let Some((store, url)) = testing::pg_store().await else { return };
        log_checks::concurrent_callers_queue(limiter(store)).await;
        testing::drop_pg(&url).await;
    }
}
