//! Durable work: step leases, request claims, resource bindings and create intents.

use std::time::Duration;

use async_trait::async_trait;

use super::db::{SqlDb, sql};
use super::onboardings::{StepRow, step_columns};
use super::{SqlBackend, locking, records};
use crate::domain::{OnboardingId, TenantId, UnixMs};
use crate::store::{CreateIntent, RequestClaim, ResourceBinding, StepRecord, StoreError, StoreResult, WorkQueue};

/// A `request_claims` row.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    tenant_id: String,
    key: String,
    operation: String,
    request_hash: Vec<u8>,
    owner: String,
    lease_until_ms: i64,
}

impl TryFrom<ClaimRow> for RequestClaim {
    type Error = StoreError;
    fn try_from(r: ClaimRow) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: super::id(r.tenant_id)?,
            key: r.key,
            operation: r.operation,
            request_hash: r.request_hash,
            owner: r.owner,
            lease_until_ms: r.lease_until_ms,
        })
    }
}

/// Leases due steps to `$1` until `$2` (`$3` is now, `$4` the limit). READY with no next-run
/// time is due now; WAITING with none waits for a callback. A RUNNING step whose lease lapsed
/// was abandoned by a crashed worker.
/// The candidates are a `MATERIALIZED` CTE, computed once: in `UPDATE .. WHERE k IN (SELECT
/// .. LIMIT .. FOR UPDATE SKIP LOCKED)` PostgreSQL may run the subquery again for every outer
/// row (see `deliveries::CLAIM`).
pub(super) const CLAIM_STEPS: [&str; 2] = locking!(
    "WITH c AS MATERIALIZED (SELECT onboarding_id, name FROM pipeline_steps \
     WHERE (state = 'READY' AND (next_run_ms IS NULL OR next_run_ms <= $3)) \
     OR (state = 'WAITING' AND next_run_ms <= $3) \
     OR (state = 'RUNNING' AND (lease_until_ms IS NULL OR lease_until_ms <= $3)) \
     ORDER BY COALESCE(next_run_ms, 0), onboarding_id, position LIMIT $4",
    " FOR UPDATE SKIP LOCKED",
    concat!(
        ") UPDATE pipeline_steps SET state = 'RUNNING', lease_owner = $1, lease_until_ms = $2, \
         attempts = CASE WHEN state = 'WAITING' THEN attempts ELSE attempts + 1 END, \
         started_ms = COALESCE(started_ms, $3), updated_ms = $3 \
         WHERE (onboarding_id, name) IN (SELECT onboarding_id, name FROM c) RETURNING ",
        step_columns!()
    ),
);

#[async_trait]
impl<B: SqlBackend> WorkQueue for B {
    async fn claim_steps(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<StepRecord>> {
        let rows = sql::<B::Db>(B::locking(CLAIM_STEPS))
            .bind(worker)
            .bind(now.saturating_add(super::ms(lease)))
            .bind(now)
            .bind(i64::from(limit))
            .all::<StepRow>(self.writer());
        let mut steps: Vec<StepRecord> = records(rows.await?)?;
        steps.sort_by(|a, b| (&a.onboarding_id, a.position).cmp(&(&b.onboarding_id, b.position)));
        Ok(steps)
    }

    async fn renew_lease(&self, id: &OnboardingId, step: &str, worker: &str, until: UnixMs) -> StoreResult<bool> {
        let done = sql::<B::Db>(
            "UPDATE pipeline_steps SET lease_until_ms = $4 \
             WHERE onboarding_id = $1 AND name = $2 AND lease_owner = $3 AND state = 'RUNNING'",
        )
        .bind(id.as_str())
        .bind(step)
        .bind(worker)
        .bind(until)
        .execute(self.writer())
        .await?;
        Ok(done > 0)
    }

    async fn release_step(&self, step: &StepRecord, worker: &str) -> StoreResult<bool> {
        let done = sql::<B::Db>(
            "UPDATE pipeline_steps SET state = $4, attempts = $5, next_run_ms = $6, lease_owner = NULL, \
             lease_until_ms = NULL, last_error = $7, last_error_code = $8, provider_stage_json = $9, \
             data_json = $10, updated_ms = $11 \
             WHERE onboarding_id = $1 AND name = $2 AND lease_owner = $3 AND state = 'RUNNING'",
        )
        .bind(step.onboarding_id.as_str())
        .bind(step.name.as_str())
        .bind(worker)
        .bind(step.state.as_str())
        .bind(step.attempts)
        .bind(step.next_run_ms)
        .bind(step.last_error.as_deref())
        .bind(step.last_error_code.as_deref())
        .bind(step.provider_stage_json.as_str())
        .bind(step.data_json.as_str())
        .bind(step.updated_ms)
        .execute(self.writer())
        .await?;
        Ok(done > 0)
    }

    async fn claim_request(&self, claim: &RequestClaim, now: UnixMs) -> StoreResult<Option<RequestClaim>> {
        // The holder can release between the upsert and the read: then claim again.
        for _ in 0..3 {
            // New, or taken over from a lapsed lease; a live claim is left alone.
            let won = sql::<B::Db>(
                "INSERT INTO request_claims (tenant_id, key, operation, request_hash, owner, lease_until_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, key) DO UPDATE SET operation = excluded.operation, \
                 request_hash = excluded.request_hash, owner = excluded.owner, \
                 lease_until_ms = excluded.lease_until_ms \
                 WHERE request_claims.lease_until_ms <= $7",
            )
            .bind(claim.tenant_id.as_str())
            .bind(claim.key.as_str())
            .bind(claim.operation.as_str())
            .bind(claim.request_hash.as_slice())
            .bind(claim.owner.as_str())
            .bind(claim.lease_until_ms)
            .bind(now)
            .execute(self.writer())
            .await?;
            if won > 0 {
                return Ok(None);
            }
            let holder = sql::<B::Db>("SELECT * FROM request_claims WHERE tenant_id = $1 AND key = $2")
                .bind(claim.tenant_id.as_str())
                .bind(claim.key.as_str())
                .optional::<ClaimRow>(self.writer())
                .await?;
            if let Some(holder) = holder {
                return Ok(Some(holder.try_into()?));
            }
        }
        Err(StoreError::Conflict(format!("request claim '{}' keeps changing hands", claim.key)))
    }

    async fn release_request(&self, tenant: &TenantId, key: &str, owner: &str) -> StoreResult<bool> {
        let done = sql::<B::Db>("DELETE FROM request_claims WHERE tenant_id = $1 AND key = $2 AND owner = $3")
            .bind(tenant.as_str())
            .bind(key)
            .bind(owner)
            .execute(self.writer())
            .await?;
        Ok(done > 0)
    }

    async fn bind_resource(&self, b: &ResourceBinding) -> StoreResult<OnboardingId> {
        // The primary key decides between racing binders, on every replica.
        sql::<B::Db>(
            "INSERT INTO resource_bindings (scope, resource, onboarding_id, created_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (scope, resource) DO NOTHING",
        )
        .bind(b.scope.as_str())
        .bind(b.resource.as_str())
        .bind(b.onboarding_id.as_str())
        .bind(b.created_ms)
        .execute(self.writer())
        .await?;
        let (holder,): (String,) =
            sql::<B::Db>("SELECT onboarding_id FROM resource_bindings WHERE scope = $1 AND resource = $2")
                .bind(b.scope.as_str())
                .bind(b.resource.as_str())
                .one(self.writer())
                .await?;
        super::id(holder)
    }

    async fn resource_binding(&self, scope: &str, resource: &str) -> StoreResult<Option<OnboardingId>> {
        let row = sql::<B::Db>("SELECT onboarding_id FROM resource_bindings WHERE scope = $1 AND resource = $2")
            .bind(scope)
            .bind(resource)
            .optional::<(String,)>(self.reader());
        row.await?.map(|(id,)| super::id(id)).transpose()
    }

    async fn begin_create_intent(&self, i: &CreateIntent) -> StoreResult<bool> {
        let mut tx = B::Db::begin(self.writer()).await?;
        let before = sql::<B::Db>("SELECT pending FROM create_intents WHERE onboarding_id = $1 AND step = $2")
            .bind(i.onboarding_id.as_str())
            .bind(i.step.as_str())
            .optional::<(i64,)>(&mut tx)
            .await?;
        sql::<B::Db>(
            "INSERT INTO create_intents (onboarding_id, step, scope, subject, pending, calls, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, 1, 1, $5, $5) \
             ON CONFLICT (onboarding_id, step) DO UPDATE SET scope = excluded.scope, \
             subject = excluded.subject, pending = 1, calls = create_intents.calls + 1, \
             updated_ms = excluded.updated_ms",
        )
        .bind(i.onboarding_id.as_str())
        .bind(i.step.as_str())
        .bind(i.scope.as_str())
        .bind(i.subject.as_str())
        .bind(i.at_ms)
        .execute(&mut tx)
        .await?;
        B::Db::commit(tx).await?;
        Ok(before == Some((1,)))
    }

    async fn resolve_create_intent(&self, onboarding: &OnboardingId, step: &str) -> StoreResult<()> {
        sql::<B::Db>("UPDATE create_intents SET pending = 0 WHERE onboarding_id = $1 AND step = $2")
            .bind(onboarding.as_str())
            .bind(step)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn pending_create_intents(&self, scope: &str, subject: &str) -> StoreResult<Vec<OnboardingId>> {
        let rows = sql::<B::Db>(
            "SELECT DISTINCT onboarding_id FROM create_intents \
             WHERE scope = $1 AND subject = $2 AND pending = 1 ORDER BY onboarding_id",
        )
        .bind(scope)
        .bind(subject)
        .all::<(String,)>(self.writer())
        .await?;
        rows.into_iter().map(|(id,)| super::id(id)).collect()
    }
}
