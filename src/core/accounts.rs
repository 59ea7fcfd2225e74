//! Provider accounts: credentials encrypted at rest and never returned; each account gets an
//! unguessable webhook secret for its ingress URL.

use base64::Engine;
use rand::RngCore;

use super::{Caller, Core};
use crate::domain::account::{AccountOptions, Credentials};
use crate::domain::{AccountId, EventKind, OnboardingState, Patch, ProviderKind, Secret, now_ms};
use crate::error::{AppError, ErrorCode, Violations};
use crate::store::{AccountRecord, NewEvent, OnboardingChange, OnboardingFilter, Page, PageRequest, StoreError};

/// What a caller asks to create.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Requested id, or generated.
    pub id: Option<AccountId>,
    /// Which provider's API the account talks to; fixed for the account's lifetime.
    pub provider: ProviderKind,
    /// The caller's name for the account, shown in listings (not unique).
    pub display_name: String,
    /// Credentials (must match the provider).
    pub credentials: Credentials,
    /// Non-secret provider options (region, project, endpoint override), validated per provider.
    pub options: AccountOptions,
    /// Target the built-in simulator.
    pub sandbox: bool,
}

/// An account as returned to its tenant: never the credentials or the webhook secret
/// (except inside `webhook_url`, only in the create response).
#[derive(Debug, Clone)]
pub struct AccountView {
    /// The account's id (`accounts/{id}` in resource names).
    pub id: AccountId,
    /// The BSP this account's credentials belong to.
    pub provider: ProviderKind,
    /// The caller's name for the account, as given at create.
    pub display_name: String,
    /// Whether it runs against the built-in simulators.
    pub sandbox: bool,
    /// Whether credentials are stored (they are write-only, never returned).
    pub credentials_set: bool,
    /// The account's stored options (`options_json`), parsed for the response.
    pub options: AccountOptions,
    /// Non-secret status (the last credentials check), parsed.
    pub status: AccountStatus,
    /// The ingress URL (only in the create response).
    pub webhook_url: Option<String>,
    /// When the account was created (Unix ms).
    pub created_ms: crate::domain::UnixMs,
    /// When the account's options, credentials or status last changed (Unix ms).
    pub updated_ms: crate::domain::UnixMs,
}

impl AccountView {
    /// The view of `record` with its parsed `options`.
    fn new(record: &AccountRecord, options: AccountOptions, webhook_url: Option<String>) -> Self {
        Self {
            id: record.id.clone(),
            provider: record.provider,
            display_name: record.display_name.clone(),
            sandbox: record.sandbox,
            credentials_set: !record.credentials.blob.is_empty(),
            options,
            status: Core::account_status(record),
            webhook_url,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
        }
    }
}

/// Result of the last credentials check, kept in the account's status JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// Whether the provider accepted the credentials.
    pub ok: bool,
    /// What to tell the caller: the provider's summary, or which provider rejected them.
    pub message: String,
    /// Provider's raw code.
    pub provider_code: String,
    /// When the check ran, Unix milliseconds.
    pub at_ms: i64,
    /// When the account's long-lived credential expires, if declared (issue 17 point 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expire_ms: Option<i64>,
    /// Set while that credential is expiring or expired.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_warning: String,
}

/// Non-secret account status, stored as JSON.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AccountStatus {
    /// Last credentials check.
    pub last_check: Option<CheckResult>,
}

const OP_CREATE: &str = "CreateAccount";

/// A fresh webhook path secret: 32 random bytes, URL-safe base64.
pub(crate) fn new_webhook_secret() -> Secret {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

// The AAD binds a sealed value to its row's key. Values sealed before ids were per tenant
// (migration 0003 put the tenant in front of every key) are bound to the bare id, the key's
// name: openers try the key, then the name.
fn aad_credentials(id: &str) -> String {
    format!("account/{id}/credentials")
}

fn aad_webhook(id: &str) -> String {
    format!("account/{id}/webhook")
}

impl Core {
    /// Creates an account (idempotent with `request_id`).
    pub async fn create_account(
        &self,
        caller: &Caller,
        new: NewAccount,
        request_id: Option<&str>,
    ) -> Result<AccountView, AppError> {
        self.validate_new_account(&new)?;
        let canonical = serde_json::json!({
            "id": new.id.as_ref().map(AccountId::as_str),
            "provider": new.provider.as_str(),
            "display_name": new.display_name,
            "options": new.options,
            "sandbox": new.sandbox,
        })
        .to_string();
        let creds = new.credentials.to_sealable_json().map_err(AppError::internal)?;
        let hash = self.fingerprint(&[canonical.as_bytes(), creds.expose().as_bytes()]);
        if let Some(resource) = self.replay(&caller.tenant, request_id, OP_CREATE, &hash).await? {
            return self.account_replayed(caller, &resource).await;
        }
        let id = new.id.clone().unwrap_or_else(|| AccountId::fresh(&caller.tenant));
        let webhook_secret = new_webhook_secret();
        let seal_err = |e: crate::crypto::CryptoError| AppError::internal(format!("cannot encrypt credentials: {e}"));
        let now = now_ms();
        let record = AccountRecord {
            id: id.clone(),
            tenant_id: caller.tenant.clone(),
            provider: new.provider,
            display_name: new.display_name,
            options_json: serde_json::to_string(&new.options).map_err(|e| AppError::internal(e.to_string()))?,
            credentials: self.cipher.seal_secret(&creds, &aad_credentials(id.as_str())).map_err(seal_err)?,
            webhook_secret: self.cipher.seal_secret(&webhook_secret, &aad_webhook(id.as_str())).map_err(seal_err)?,
            sandbox: new.sandbox,
            status_json: "{}".into(),
            created_ms: now,
            updated_ms: now,
        };
        let idem = self.idempotency_record(&caller.tenant, request_id, OP_CREATE, hash, format!("accounts/{id}"));
        match self.store.insert_account(&record, idem.as_ref()).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                // Either the id is taken or a concurrent retry with the same request_id won.
                if let Some(resource) = self.replay(&caller.tenant, request_id, OP_CREATE, &idem_hash(&idem)).await? {
                    return self.account_replayed(caller, &resource).await;
                }
                return Err(AppError::new(
                    ErrorCode::AlreadyExists,
                    format!("account 'accounts/{}' already exists", id.name()),
                )
                .with_violation("account_id", "already in use"));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(account = %id, provider = %record.provider, "Account created.");
        let url = self.webhook_url(&record)?;
        Ok(AccountView::new(&record, new.options, Some(url)))
    }

    async fn account_replayed(&self, caller: &Caller, resource: &str) -> Result<AccountView, AppError> {
        let id = resource.strip_prefix("accounts/").unwrap_or(resource);
        // Written as a key (`{tenant}.{id}`), or as a bare id before ids were per tenant.
        let id = AccountId::parse(id)
            .and_then(|id| AccountId::scoped(&caller.tenant, id.name()))
            .map_err(|e| AppError::internal(format!("stored idempotency resource: {e}")))?;
        let record = self.account_record(caller, &id).await?;
        let mut view = self.view(&record)?;
        view.webhook_url = Some(self.webhook_url(&record)?);
        Ok(view)
    }

    fn validate_new_account(&self, new: &NewAccount) -> Result<(), AppError> {
        let mut v = Violations::new();
        if new.credentials.provider() != new.provider {
            v.add(
                "account.credentials",
                format!("credentials are for {}, the account is for {}", new.credentials.provider(), new.provider),
            );
        }
        // The provider's rules; the field path names its credentials message
        // (`account.credentials.gupshup.email`).
        let kind = new.credentials.provider();
        for p in crate::providers::accounts::credential_problems(&new.credentials) {
            v.add(format!("account.credentials.{kind}.{}", p.field), p.problem);
        }
        if new.display_name.chars().count() > 200 {
            v.add("account.display_name", "must be at most 200 characters");
        }
        if let Some(ep) = &new.options.endpoint {
            if !self.settings.providers.allow_custom_endpoints {
                v.add(
                    "account.options.endpoint",
                    "custom endpoints are disabled in this deployment (providers.allow_custom_endpoints)",
                );
            } else if !url::Url::parse(ep).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                v.add("account.options.endpoint", "must be an http(s) URL");
            }
        }
        v.finish()?;
        if new.sandbox && !self.endpoints.sandbox_running() {
            return Err(AppError::precondition("this deployment runs no sandbox (sandbox.enabled = false)"));
        }
        Ok(())
    }

    /// One of the caller's accounts, as stored (for use cases; callers get [`AccountView`]s).
    pub(crate) async fn account_record(&self, caller: &Caller, id: &AccountId) -> Result<AccountRecord, AppError> {
        self.store
            .account(&caller.tenant, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("accounts/{}", id.name())))
    }

    fn view(&self, record: &AccountRecord) -> Result<AccountView, AppError> {
        let options = serde_json::from_str(&record.options_json).map_err(|e| {
            AppError::internal(format!("stored options of accounts/{} do not parse: {e}", record.id.name()))
        })?;
        Ok(AccountView::new(record, options, None))
    }

    /// Gets one of the caller's accounts.
    pub async fn get_account(&self, caller: &Caller, id: &AccountId) -> Result<AccountView, AppError> {
        let record = self.account_record(caller, id).await?;
        self.view(&record)
    }

    /// Lists the caller's accounts.
    pub async fn list_accounts(
        &self,
        caller: &Caller,
        provider: Option<ProviderKind>,
        page: &PageRequest,
    ) -> Result<Page<AccountView>, AppError> {
        let p = self.store.list_accounts(&caller.tenant, provider, page).await?;
        let items = p.items.iter().map(|r| self.view(r)).collect::<Result<_, _>>()?;
        Ok(Page { items, next_page_token: p.next_page_token })
    }

    /// Deletes an account; with open onboardings only when `force` (they become `FAILED`).
    pub async fn delete_account(&self, caller: &Caller, id: &AccountId, force: bool) -> Result<(), AppError> {
        self.account_record(caller, id).await?;
        let filter = OnboardingFilter { account_id: Some(id.clone()), ..Default::default() };
        let mut open = Vec::new();
        let mut page = PageRequest { limit: 500, after: None };
        loop {
            let p = self.store.list_onboardings(&caller.tenant, &filter, &page).await?;
            open.extend(p.items.into_iter().filter(|o| !o.state.is_finished()));
            match p.next_page_token {
                Some(t) => page.after = Some(t),
                None => break,
            }
        }
        if !open.is_empty() && !force {
            return Err(AppError::precondition(format!(
                "accounts/{} has {} onboarding(s) that are not finished (e.g. onboardings/{}); finish or cancel them, or delete with force",
                id.name(),
                open.len(),
                open[0].id.name()
            )));
        }
        for o in open {
            let change = OnboardingChange {
                state: Some(OnboardingState::Failed),
                state_reason: Some(format!("account accounts/{} was deleted", id.name())),
                state_deadline_ms: Patch::Clear,
                ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, "account deleted"), now_ms())
            };
            self.store.apply_change(&change).await?;
        }
        if !self.store.delete_account(&caller.tenant, id).await? {
            return Err(AppError::not_found(format!("accounts/{}", id.name())));
        }
        tracing::info!(account = %id, "Account deleted.");
        Ok(())
    }

    /// The decrypted credentials of an account (for adapters only).
    pub fn account_credentials(&self, record: &AccountRecord) -> Result<Credentials, AppError> {
        let plain = self
            .cipher
            .open_secret(&record.credentials, &aad_credentials(record.id.as_str()))
            .or_else(|_| self.cipher.open_secret(&record.credentials, &aad_credentials(record.id.name())))
            .map_err(|e| AppError::internal(format!("credentials of accounts/{}: {e}", record.id)))?;
        Credentials::from_sealed_json(&plain).map_err(AppError::internal)
    }

    /// The account's webhook secret.
    pub fn webhook_secret(&self, record: &AccountRecord) -> Result<Secret, AppError> {
        self.cipher
            .open_secret(&record.webhook_secret, &aad_webhook(record.id.as_str()))
            .or_else(|_| self.cipher.open_secret(&record.webhook_secret, &aad_webhook(record.id.name())))
            .map_err(|e| AppError::internal(format!("webhook secret of accounts/{}: {e}", record.id)))
    }

    /// The ingress URL providers call for this account. Contains the secret: never log it.
    pub fn webhook_url(&self, record: &AccountRecord) -> Result<String, AppError> {
        let secret = self.webhook_secret(record)?;
        Ok(format!("{}/webhooks/{}/{}/{}", self.webhook_base, record.provider, record.id.as_str(), secret.expose()))
    }

    /// Parsed non-secret status. One that does not parse reads as empty on purpose: it only
    /// caches provider answers, which the next `CheckAccount` writes again.
    pub fn account_status(record: &AccountRecord) -> AccountStatus {
        serde_json::from_str(&record.status_json).unwrap_or_default()
    }
}

fn idem_hash(idem: &Option<crate::store::IdempotencyRecord>) -> Vec<u8> {
    idem.as_ref().map(|r| r.request_hash.clone()).unwrap_or_default()
}
