//! Tenants, API keys and idempotency records.

use async_trait::async_trait;

use super::db::{SqlDb, sql};
use super::{SqlBackend, records};
use crate::domain::{ApiKeyId, TenantId, UnixMs};
use crate::store::{ApiKeyRecord, IdempotencyRecord, StoreError, StoreResult, TenantRecord, Tenants};

/// A `tenants` row.
#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    name: String,
    created_ms: i64,
}

impl TryFrom<TenantRow> for TenantRecord {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> StoreResult<Self> {
        Ok(Self { id: super::id(r.id)?, name: r.name, created_ms: r.created_ms })
    }
}

/// An `api_keys` row.
#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    tenant_id: String,
    hash: Vec<u8>,
    prefix: String,
    created_ms: i64,
    revoked_ms: Option<i64>,
}

impl TryFrom<ApiKeyRow> for ApiKeyRecord {
    type Error = StoreError;
    fn try_from(r: ApiKeyRow) -> StoreResult<Self> {
        Ok(Self {
            id: super::id(r.id)?,
            tenant_id: super::id(r.tenant_id)?,
            hash: r.hash,
            prefix: r.prefix,
            created_ms: r.created_ms,
            revoked_ms: r.revoked_ms,
        })
    }
}

/// An `idempotency_keys` row.
#[derive(sqlx::FromRow)]
struct IdempotencyRow {
    tenant_id: String,
    key: String,
    operation: String,
    request_hash: Vec<u8>,
    resource: String,
    created_ms: i64,
}

impl TryFrom<IdempotencyRow> for IdempotencyRecord {
    type Error = StoreError;
    fn try_from(r: IdempotencyRow) -> StoreResult<Self> {
        Ok(Self {
            tenant_id: super::id(r.tenant_id)?,
            key: r.key,
            operation: r.operation,
            request_hash: r.request_hash,
            resource: r.resource,
            created_ms: r.created_ms,
        })
    }
}

/// Writes an idempotency record inside `tx` (beside the account or onboarding it names).
pub(super) async fn insert_idempotency<DB: SqlDb>(
    tx: &mut sqlx::Transaction<'static, DB>,
    k: &IdempotencyRecord,
) -> StoreResult<()> {
    sql::<DB>(
        "INSERT INTO idempotency_keys (tenant_id, key, operation, request_hash, resource, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(k.tenant_id.as_str())
    .bind(k.key.as_str())
    .bind(k.operation.as_str())
    .bind(k.request_hash.as_slice())
    .bind(k.resource.as_str())
    .bind(k.created_ms)
    .execute(tx)
    .await?;
    Ok(())
}

/// [`insert_idempotency`] of each of `keys`, in multi-row statements.
pub(super) async fn insert_idempotencies<DB: SqlDb>(
    tx: &mut sqlx::Transaction<'static, DB>,
    keys: &[&IdempotencyRecord],
) -> StoreResult<()> {
    const COLUMNS: usize = 6;
    for chunk in keys.chunks(super::rows_per_statement::<DB>(COLUMNS)) {
        let text = format!(
            "INSERT INTO idempotency_keys (tenant_id, key, operation, request_hash, resource, created_ms) VALUES {}",
            super::value_tuples(chunk.len(), COLUMNS, "")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sql::<DB>(sqlx::AssertSqlSafe(text));
        for k in chunk {
            query = query
                .bind(k.tenant_id.as_str())
                .bind(k.key.as_str())
                .bind(k.operation.as_str())
                .bind(k.request_hash.as_slice())
                .bind(k.resource.as_str())
                .bind(k.created_ms);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

#[async_trait]
impl<B: SqlBackend> Tenants for B {
    async fn create_tenant(&self, t: &TenantRecord) -> StoreResult<()> {
        sql::<B::Db>("INSERT INTO tenants (id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(t.id.as_str())
            .bind(t.name.as_str())
            .bind(t.created_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRecord>> {
        let row = sql::<B::Db>("SELECT * FROM tenants WHERE name = $1").bind(name).optional::<TenantRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }

    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        let row =
            sql::<B::Db>("SELECT * FROM tenants WHERE id = $1").bind(id.as_str()).optional::<TenantRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        records(sql::<B::Db>("SELECT * FROM tenants ORDER BY name").all::<TenantRow>(self.reader()).await?)
    }

    async fn add_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        sql::<B::Db>(
            "INSERT INTO api_keys (id, tenant_id, hash, prefix, created_ms, revoked_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(k.id.as_str())
        .bind(k.tenant_id.as_str())
        .bind(k.hash.as_slice())
        .bind(k.prefix.as_str())
        .bind(k.created_ms)
        .bind(k.revoked_ms)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sql::<B::Db>("SELECT * FROM api_keys WHERE hash = $1 AND revoked_ms IS NULL")
            .bind(hash)
            .optional::<ApiKeyRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = sql::<B::Db>("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_ms, id")
            .bind(tenant.as_str())
            .all::<ApiKeyRow>(self.reader());
        records(rows.await?)
    }

    async fn revoke_api_key(&self, id: &ApiKeyId, at: UnixMs) -> StoreResult<bool> {
        let done = sql::<B::Db>("UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
            .bind(id.as_str())
            .bind(at)
            .execute(self.writer())
            .await?;
        Ok(done > 0)
    }

    async fn idempotency(&self, tenant: &TenantId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let row = sql::<B::Db>("SELECT * FROM idempotency_keys WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.as_str())
            .bind(key)
            .optional::<IdempotencyRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }
}
