//! Provider accounts.

use async_trait::async_trait;

use super::db::{Sql, SqlDb, sql};
use super::{SqlBackend, records};
use crate::domain::{AccountId, ProviderKind, TenantId};
use crate::store::cache::Writing;
use crate::store::{AccountRecord, Accounts, IdempotencyRecord, Page, PageRequest, Sealed, StoreError, StoreResult};

/// An `accounts` row, every column nullable so that the outer join of
/// [`Accounts::webhook_account`] decodes a miss exactly as it decodes a hit (a URL for no
/// account costs what one for an account costs); plain reads never see a NULL.
#[derive(sqlx::FromRow)]
struct AccountRow {
    id: Option<String>,
    tenant_id: Option<String>,
    provider: Option<String>,
    display_name: Option<String>,
    options_json: Option<String>,
    credentials_key_id: Option<String>,
    credentials: Option<Vec<u8>>,
    webhook_key_id: Option<String>,
    webhook_secret: Option<Vec<u8>>,
    sandbox: Option<bool>,
    status_json: Option<String>,
    created_ms: Option<i64>,
    updated_ms: Option<i64>,
}

impl AccountRow {
    /// The account, or `None` for the all-NULL row of an outer join that matched nothing.
    fn into_record(self) -> StoreResult<Option<AccountRecord>> {
        let (Some(id), Some(tenant_id), Some(provider)) = (self.id, self.tenant_id, self.provider) else {
            return Ok(None);
        };
        let missing = || StoreError::Corrupt("account row with NULL columns".into());
        Ok(Some(AccountRecord {
            id: super::id(id)?,
            tenant_id: super::id(tenant_id)?,
            provider: super::provider(provider)?,
            display_name: self.display_name.ok_or_else(missing)?,
            options_json: self.options_json.ok_or_else(missing)?,
            credentials: Sealed {
                key_id: self.credentials_key_id.ok_or_else(missing)?,
                blob: self.credentials.ok_or_else(missing)?,
            },
            webhook_secret: Sealed {
                key_id: self.webhook_key_id.ok_or_else(missing)?,
                blob: self.webhook_secret.ok_or_else(missing)?,
            },
            sandbox: self.sandbox.ok_or_else(missing)?,
            status_json: self.status_json.ok_or_else(missing)?,
            created_ms: self.created_ms.ok_or_else(missing)?,
            updated_ms: self.updated_ms.ok_or_else(missing)?,
        }))
    }
}

impl TryFrom<AccountRow> for AccountRecord {
    type Error = StoreError;
    fn try_from(r: AccountRow) -> StoreResult<Self> {
        r.into_record()?.ok_or_else(|| StoreError::Corrupt("account row with NULL key columns".into()))
    }
}

/// Binds the columns `update_account` writes, in this order: `display_name`, `options_json`,
/// `credentials_key_id`, `credentials`, `webhook_key_id`, `webhook_secret`, `sandbox`,
/// `status_json` (eight placeholders, in both the `INSERT` and the `UPDATE`).
fn bind_updatable<DB: SqlDb>(query: Sql<DB>, a: &AccountRecord) -> Sql<DB> {
    query
        .bind(a.display_name.as_str())
        .bind(a.options_json.as_str())
        .bind(a.credentials.key_id.as_str())
        .bind(a.credentials.blob.as_slice())
        .bind(a.webhook_secret.key_id.as_str())
        .bind(a.webhook_secret.blob.as_slice())
        .bind(a.sandbox)
        .bind(a.status_json.as_str())
}

/// The account `id` whatever its tenant, through the backend's cache if any.
async fn account_row<B: SqlBackend>(backend: &B, id: &AccountId) -> StoreResult<Option<AccountRecord>> {
    let row = super::row_by_id::<B, _, AccountRow, _>(
        backend,
        backend.caches().map(|c| &c.accounts),
        "SELECT * FROM accounts WHERE id = $1",
        id,
    );
    Ok(row.await?.map(std::sync::Arc::unwrap_or_clone))
}

#[async_trait]
impl<B: SqlBackend> Accounts for B {
    async fn insert_account(&self, a: &AccountRecord, idempotency: Option<&IdempotencyRecord>) -> StoreResult<()> {
        let mut tx = B::Db::begin(self.writer()).await?;
        if let Some(k) = idempotency {
            super::tenants::insert_idempotency(&mut tx, k).await?;
        }
        let insert = sql::<B::Db>(
            "INSERT INTO accounts (id, tenant_id, provider, display_name, options_json, \
             credentials_key_id, credentials, webhook_key_id, webhook_secret, sandbox, status_json, \
             created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(a.id.as_str())
        .bind(a.tenant_id.as_str())
        .bind(a.provider.as_str());
        bind_updatable(insert, a).bind(a.created_ms).bind(a.updated_ms).execute(&mut tx).await?;
        B::Db::commit(tx).await?;
        Ok(())
    }

    async fn account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<Option<AccountRecord>> {
        // By primary key, then scoped: another tenant's id reads as absent.
        Ok(account_row(self, id).await?.filter(|a| a.tenant_id == *tenant))
    }

    async fn account_unscoped(&self, id: &AccountId) -> StoreResult<Option<AccountRecord>> {
        account_row(self, id).await
    }

    async fn webhook_account(&self, segment: &AccountId) -> StoreResult<Option<AccountRecord>> {
        // One statement for both forms (keys hold a '.', legacy ids never do). An outer join,
        // so a miss also returns (and decodes) one row, as a hit does.
        let row = sql::<B::Db>(
            "SELECT a.* FROM (SELECT CAST($1 AS TEXT) AS want) w \
             LEFT JOIN accounts a ON a.id = w.want OR a.legacy_id = w.want",
        )
        .bind(segment.as_str())
        .optional::<AccountRow>(self.reader());
        Ok(row.await?.map(AccountRow::into_record).transpose()?.flatten())
    }

    async fn list_accounts(
        &self,
        tenant: &TenantId,
        provider: Option<ProviderKind>,
        page: &PageRequest,
    ) -> StoreResult<Page<AccountRecord>> {
        let rows = sql::<B::Db>(
            "SELECT * FROM accounts WHERE tenant_id = $1 AND ($2 IS NULL OR provider = $2) \
             AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(provider.map(|p| p.as_str()))
        .bind(page.after.as_deref())
        .bind(super::page_limit(page.limit))
        .all::<AccountRow>(self.reader())
        .await?;
        Ok(super::page(records(rows)?, page.limit, |a: &AccountRecord| a.id.as_str().to_string()))
    }

    async fn update_account(&self, a: &AccountRecord) -> StoreResult<()> {
        let update = sql::<B::Db>(
            "UPDATE accounts SET display_name = $3, options_json = $4, credentials_key_id = $5, \
             credentials = $6, webhook_key_id = $7, webhook_secret = $8, sandbox = $9, \
             status_json = $10, updated_ms = $11 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(a.tenant_id.as_str())
        .bind(a.id.as_str());
        // One autocommit statement: the row is read from the database around it (`store::cache`).
        let writing = self.caches().map(|c| c.accounts.writing(&a.id));
        let done = bind_updatable(update, a).bind(a.updated_ms).execute(self.writer()).await?;
        writing.into_iter().for_each(Writing::done);
        if done == 0 {
            return Err(StoreError::NotFound(format!("account {}", a.id)));
        }
        Ok(())
    }

    async fn delete_account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<bool> {
        let writing = self.caches().map(|c| c.accounts.writing(id));
        let done = sql::<B::Db>("DELETE FROM accounts WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(self.writer())
            .await?;
        writing.into_iter().for_each(Writing::done);
        Ok(done > 0)
    }
}
