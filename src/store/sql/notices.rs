//! Service notices about destinations (issue 19, item 4): the worker's disable, the notice it
//! writes in the same transaction, and the leased notice deliveries.

use std::time::Duration;

use async_trait::async_trait;

use super::db::{SqlDb, sql};
use super::deliveries::enabled_destinations;
use super::{SqlBackend, locking, records};
use crate::domain::{TenantId, UnixMs};
use crate::store::{
    DeliveryState, DestinationDisable, DisableCause, NoticeDeliveryRecord, NoticeDeliveryUpdate, NoticeKind,
    NoticeRecord, Notices, StoreError, StoreResult,
};

/// A `destination_notices` row.
#[derive(sqlx::FromRow)]
struct NoticeRow {
    id: String,
    tenant_id: String,
    destination_id: String,
    display_name: String,
    cause: String,
    message: String,
    http_status: Option<i32>,
    created_ms: i64,
}

impl TryFrom<NoticeRow> for NoticeRecord {
    type Error = StoreError;
    fn try_from(r: NoticeRow) -> StoreResult<Self> {
        Ok(Self {
            id: r.id,
            tenant_id: super::id(r.tenant_id)?,
            destination_id: r.destination_id,
            display_name: r.display_name,
            cause: DisableCause::parse(&r.cause)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown disable cause '{}'", r.cause)))?,
            message: r.message,
            http_status: r.http_status,
            created_ms: r.created_ms,
        })
    }
}

/// A `notice_deliveries` row.
#[derive(sqlx::FromRow)]
struct NoticeDeliveryRow {
    destination_id: String,
    notice_id: String,
    tenant_id: String,
    state: String,
    attempts: i32,
    next_attempt_ms: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    lease_owner: Option<String>,
    lease_until_ms: Option<i64>,
    created_ms: i64,
    delivered_ms: Option<i64>,
}

impl TryFrom<NoticeDeliveryRow> for NoticeDeliveryRecord {
    type Error = StoreError;
    fn try_from(r: NoticeDeliveryRow) -> StoreResult<Self> {
        Ok(Self {
            destination_id: r.destination_id,
            notice_id: r.notice_id,
            tenant_id: super::id(r.tenant_id)?,
            state: DeliveryState::parse(&r.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state '{}'", r.state)))?,
            attempts: r.attempts,
            next_attempt_ms: r.next_attempt_ms,
            last_status: r.last_status,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_until_ms: r.lease_until_ms,
            created_ms: r.created_ms,
            delivered_ms: r.delivered_ms,
        })
    }
}

/// Leases due notice deliveries to `$1` until `$2` (`$3` now, `$4` the limit). Notices keep
/// no order between them (each is about a different disable), so there is no head rule.
/// The candidates are a `MATERIALIZED` CTE, computed once (see `deliveries::CLAIM`).
const CLAIM_NOTICES: [&str; 2] = locking!(
    "WITH c AS MATERIALIZED (SELECT n.destination_id, n.notice_id \
     FROM notice_deliveries n JOIN delivery_destinations t ON t.id = n.destination_id \
     WHERE t.enabled AND n.state = 'PENDING' AND n.next_attempt_ms <= $3 \
     AND (n.lease_until_ms IS NULL OR n.lease_until_ms <= $3) \
     ORDER BY n.next_attempt_ms, n.notice_id LIMIT $4",
    " FOR UPDATE OF n SKIP LOCKED",
    ") UPDATE notice_deliveries SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
     WHERE (destination_id, notice_id) IN (SELECT destination_id, notice_id FROM c) RETURNING *",
);

#[async_trait]
impl<B: SqlBackend> Notices for B {
    async fn disable_destination(&self, x: &DestinationDisable) -> StoreResult<Option<NoticeRecord>> {
        let mut tx = B::Db::begin(self.writer()).await?;
        // Only an enabled one: a second replica's verdict writes nothing (no second notice,
        // and the time does not move). On PostgreSQL the row lock orders the two.
        let row = sql::<B::Db>(
            "UPDATE delivery_destinations SET enabled = FALSE, disabled_reason = $2, disabled_ms = $3, \
             disabled_status = $4, disabled_cause = $5, disabled_notice_id = $6, \
             updated_ms = CASE WHEN updated_ms >= $3 THEN updated_ms + 1 ELSE $3 END \
             WHERE id = $1 AND enabled RETURNING tenant_id, name",
        )
        .bind(x.destination_id.as_str())
        .bind(x.message.as_str())
        .bind(x.at_ms)
        .bind(x.last_status)
        .bind(x.cause.as_str())
        .bind(x.notice_id.as_str())
        .optional::<(String, String)>(&mut tx)
        .await?;
        let Some((tenant, name)) = row else {
            B::Db::commit(tx).await?;
            return Ok(None);
        };
        let notice = NoticeRecord {
            id: x.notice_id.clone(),
            tenant_id: super::id(tenant.clone())?,
            destination_id: x.destination_id.clone(),
            display_name: name,
            cause: x.cause,
            message: x.message.clone(),
            http_status: x.last_status,
            created_ms: x.at_ms,
        };
        sql::<B::Db>(
            "INSERT INTO destination_notices (id, tenant_id, destination_id, display_name, cause, message, \
             http_status, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(notice.id.as_str())
        .bind(tenant.as_str())
        .bind(notice.destination_id.as_str())
        .bind(notice.display_name.as_str())
        .bind(notice.cause.as_str())
        .bind(notice.message.as_str())
        .bind(notice.http_status)
        .bind(notice.created_ms)
        .execute(&mut tx)
        .await?;
        // The disabled one is no longer enabled, so it is not among them.
        for d in enabled_destinations(&mut tx, &tenant).await? {
            if !d.filter.admits_notice(NoticeKind::DestinationDisabled) {
                continue;
            }
            sql::<B::Db>(
                "INSERT INTO notice_deliveries (destination_id, notice_id, tenant_id, state, attempts, \
                 next_attempt_ms, created_ms) VALUES ($1, $2, $3, 'PENDING', 0, $4, $4)",
            )
            .bind(d.id.as_str())
            .bind(notice.id.as_str())
            .bind(tenant.as_str())
            .bind(notice.created_ms)
            .execute(&mut tx)
            .await?;
        }
        B::Db::commit(tx).await?;
        Ok(Some(notice))
    }

    async fn notice_unscoped(&self, id: &str) -> StoreResult<Option<NoticeRecord>> {
        let row = sql::<B::Db>("SELECT * FROM destination_notices WHERE id = $1")
            .bind(id)
            .optional::<NoticeRow>(self.reader())
            .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn claim_notice_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<NoticeDeliveryRecord>> {
        // Every worker pass calls this and notices are rare: a plain read first, so an empty
        // table costs no write statement (on SQLite, no write lock beside the event path's).
        let due = sql::<B::Db>(
            "SELECT destination_id FROM notice_deliveries WHERE state = 'PENDING' AND next_attempt_ms <= $1 LIMIT 1",
        )
        .bind(now)
        .optional::<(String,)>(self.writer())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let rows = sql::<B::Db>(B::locking(CLAIM_NOTICES))
            .bind(worker)
            .bind(now.saturating_add(super::ms(lease)))
            .bind(now)
            .bind(i64::from(limit))
            .all::<NoticeDeliveryRow>(self.writer())
            .await?;
        records(rows)
    }

    async fn finish_notice_delivery(&self, u: &NoticeDeliveryUpdate, worker: &str) -> StoreResult<bool> {
        let delivered = (u.state == DeliveryState::Delivered).then_some(u.at_ms);
        let done = sql::<B::Db>(
            "UPDATE notice_deliveries SET state = $4, next_attempt_ms = $5, last_status = $6, last_error = $7, \
             delivered_ms = $8, lease_owner = NULL, lease_until_ms = NULL \
             WHERE destination_id = $1 AND notice_id = $2 AND lease_owner = $3 AND state = 'PENDING'",
        )
        .bind(u.destination_id.as_str())
        .bind(u.notice_id.as_str())
        .bind(worker)
        .bind(u.state.as_str())
        .bind(u.next_attempt_ms)
        .bind(u.last_status)
        .bind(u.last_error.as_deref())
        .bind(delivered)
        .execute(self.writer())
        .await?;
        Ok(done > 0)
    }

    async fn notice_deliveries(&self, tenant: &TenantId, notice_id: &str) -> StoreResult<Vec<NoticeDeliveryRecord>> {
        let rows = sql::<B::Db>(
            "SELECT * FROM notice_deliveries WHERE tenant_id = $1 AND notice_id = $2 ORDER BY destination_id",
        )
        .bind(tenant.as_str())
        .bind(notice_id)
        .all::<NoticeDeliveryRow>(self.reader())
        .await?;
        records(rows)
    }
}
