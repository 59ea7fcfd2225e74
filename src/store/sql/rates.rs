//! The shared rate-limit sliding logs (`rate_slots`).

use std::time::Duration;

use async_trait::async_trait;

use super::SqlBackend;
use super::db::{SqlDb, sql};
use crate::domain::UnixMs;
use crate::store::{RateGrant, RateSlots, StoreResult};

#[async_trait]
impl<B: SqlBackend> RateSlots for B {
    async fn rate_acquire(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        now: Option<UnixMs>,
    ) -> StoreResult<RateGrant> {
        if limit == 0 {
            return Ok(RateGrant::Wait(window));
        }
        let window_ms = super::ms(window);
        let mut tx = B::Db::begin(self.writer()).await?;
        B::lock_rate_key(&mut tx, key).await?;
        // Read after the writer and the key's lock are ours (see the trait).
        let now = now.unwrap_or_else(crate::domain::now_ms);
        sql::<B::Db>("DELETE FROM rate_slots WHERE key = $1 AND at_ms <= $2")
            .bind(key)
            .bind(now.saturating_sub(window_ms))
            .execute(&mut tx)
            .await?;
        let (taken, oldest): (i64, Option<i64>) =
            sql::<B::Db>("SELECT COUNT(*) AS n, MIN(at_ms) AS oldest FROM rate_slots WHERE key = $1")
                .bind(key)
                .one(&mut tx)
                .await?;
        let grant = if taken < i64::from(limit) {
            let (seq,): (i64,) = sql::<B::Db>("INSERT INTO rate_slots (key, at_ms) VALUES ($1, $2) RETURNING seq")
                .bind(key)
                .bind(now)
                .one(&mut tx)
                .await?;
            RateGrant::Taken(seq)
        } else {
            let free_at = oldest.unwrap_or(now).saturating_add(window_ms);
            // Clamped to the window: callers' clocks are not perfectly monotonic across
            // replicas, and no slot can be held longer than one window.
            let wait_ms = u64::try_from(free_at.saturating_sub(now).min(window_ms)).unwrap_or(0).max(1);
            RateGrant::Wait(Duration::from_millis(wait_ms))
        };
        B::Db::commit(tx).await?;
        Ok(grant)
    }

    async fn rate_restamp(&self, key: &str, slot: i64, now: Option<UnixMs>) -> StoreResult<()> {
        let now = now.unwrap_or_else(crate::domain::now_ms);
        sql::<B::Db>("UPDATE rate_slots SET at_ms = $3 WHERE key = $1 AND seq = $2 AND at_ms < $3")
            .bind(key)
            .bind(slot)
            .bind(now)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}
