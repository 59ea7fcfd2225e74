//! The webhook inbox (`webhook_events`).

use std::time::Duration;

use async_trait::async_trait;

use super::db::{SqlDb, sql};
use super::{SqlBackend, locking, records};
use crate::domain::UnixMs;
use crate::store::{StoreError, StoreResult, WebhookEventRecord, WebhookInbox, WebhookStatus};

/// A `webhook_events` row.
#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    provider: String,
    account_id: String,
    dedupe_key: String,
    body: Vec<u8>,
    status: String,
    note: Option<String>,
    lease_owner: Option<String>,
    lease_until_ms: Option<i64>,
    received_ms: i64,
}

impl TryFrom<WebhookRow> for WebhookEventRecord {
    type Error = StoreError;
    fn try_from(r: WebhookRow) -> StoreResult<Self> {
        Ok(Self {
            id: r.id,
            provider: super::provider(r.provider)?,
            account_id: super::id(r.account_id)?,
            dedupe_key: r.dedupe_key,
            body: r.body,
            status: super::webhook_status(r.status)?,
            note: r.note,
            lease_owner: r.lease_owner,
            lease_until_ms: r.lease_until_ms,
            received_ms: r.received_ms,
        })
    }
}

/// Pending events whose lease is free, oldest first, leased to `$1` until `$2`.
/// The candidates are a `MATERIALIZED` CTE, computed once (see `deliveries::CLAIM`).
pub(super) const CLAIM: [&str; 2] = locking!(
    "WITH c AS MATERIALIZED (SELECT id FROM webhook_events WHERE status = 'PENDING' \
     AND (lease_until_ms IS NULL OR lease_until_ms <= $3) ORDER BY received_ms, id LIMIT $4",
    " FOR UPDATE SKIP LOCKED",
    ") UPDATE webhook_events SET lease_owner = $1, lease_until_ms = $2 \
     WHERE id IN (SELECT id FROM c) RETURNING *",
);

#[async_trait]
impl<B: SqlBackend> WebhookInbox for B {
    async fn insert_webhook_event(&self, e: &WebhookEventRecord) -> StoreResult<bool> {
        let stored = self.insert_webhook_events(std::slice::from_ref(e)).await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    async fn insert_webhook_events(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // One multi-row statement per chunk: on SQLite every statement is a round trip to the
        // connection's worker thread, so a row each would cost the writer far more than the
        // rows themselves. Rows that hit an existing dedupe key (or one earlier in the same
        // statement) are skipped and not returned.
        let mut stored = std::collections::HashSet::new();
        let mut tx = B::Db::begin(self.writer()).await?;
        for chunk in events.chunks(super::WEBHOOK_INSERT_CHUNK) {
            let mut query = sql::<B::Db>(sqlx::AssertSqlSafe(super::insert_webhooks_sql(chunk.len())));
            for e in chunk {
                query = query
                    .bind(e.id.as_str())
                    .bind(e.provider.as_str())
                    .bind(e.account_id.as_str())
                    .bind(e.dedupe_key.as_str())
                    .bind(e.body.as_slice())
                    .bind(e.status.as_str())
                    .bind(e.note.as_deref())
                    .bind(e.lease_owner.as_deref())
                    .bind(e.lease_until_ms)
                    .bind(e.received_ms);
            }
            stored.extend(query.all::<(String,)>(&mut tx).await?.into_iter().map(|(id,)| id));
        }
        B::Db::commit(tx).await?;
        Ok(events.iter().map(|e| stored.contains(&e.id)).collect())
    }

    async fn claim_webhook_events(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRecord>> {
        let rows = sql::<B::Db>(B::locking(CLAIM))
            .bind(worker)
            .bind(now.saturating_add(super::ms(lease)))
            .bind(now)
            .bind(i64::from(limit))
            .all::<WebhookRow>(self.writer());
        let mut events: Vec<WebhookEventRecord> = records(rows.await?)?;
        events.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        Ok(events)
    }

    async fn finish_webhook_event(&self, id: &str, status: WebhookStatus, note: Option<&str>) -> StoreResult<()> {
        let done = sql::<B::Db>(
            "UPDATE webhook_events SET status = $2, note = $3, lease_owner = NULL, lease_until_ms = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(note)
        .execute(self.writer())
        .await?;
        if done == 0 {
            return Err(StoreError::NotFound(format!("webhook event {id}")));
        }
        Ok(())
    }

    async fn webhook_event(&self, id: &str) -> StoreResult<Option<WebhookEventRecord>> {
        let row =
            sql::<B::Db>("SELECT * FROM webhook_events WHERE id = $1").bind(id).optional::<WebhookRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }
}
