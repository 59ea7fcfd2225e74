//! Which adapter serves which provider, and one adapter instance per account.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{CallContext, Provider};
use crate::domain::{AccountId, ProviderKind};
use crate::error::AppError;

/// Builds an adapter for one account. Adapters hold per-account state (token cache, rate
/// limiter, HTTP client for the base URL), hence one instance per account.
pub type ProviderFactory = Arc<dyn Fn(&CallContext) -> Result<Arc<dyn Provider>, AppError> + Send + Sync>;

/// Adapter factories by [`ProviderKind`], plus a cache of built adapters per account.
///
/// The cache key includes a fingerprint of the credentials, options and base URL, so a
/// credentials change yields a new instance (and drops the old token cache) without the
/// caller tracking versions.
#[derive(Default)]
pub struct ProviderRegistry {
    factories: HashMap<ProviderKind, ProviderFactory>,
    cache: Mutex<HashMap<AccountId, Cached>>,
}

/// A built adapter and the fingerprint of what it was built from.
type Cached = (String, Arc<dyn Provider>);

impl fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<_> = self.factories.keys().collect();
        kinds.sort();
        f.debug_struct("ProviderRegistry").field("implemented", &kinds).finish_non_exhaustive()
    }
}

impl ProviderRegistry {
    /// Empty: nothing implemented.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the factory for `kind`.
    pub fn register(&mut self, kind: ProviderKind, factory: ProviderFactory) -> &mut Self {
        self.factories.insert(kind, factory);
        self
    }

    /// Whether an adapter for `kind` is built.
    pub fn implemented(&self, kind: ProviderKind) -> bool {
        self.factories.contains_key(&kind)
    }

    /// The adapter for `ctx`'s account, built on first use and rebuilt when its credentials,
    /// options or base URL change. `UNIMPLEMENTED` when no adapter exists for the provider.
    pub fn provider_for(&self, ctx: &CallContext) -> Result<Arc<dyn Provider>, AppError> {
        let kind = ctx.credentials.provider();
        let factory = self
            .factories
            .get(&kind)
            .ok_or_else(|| AppError::unimplemented(format!("the {} adapter is not built yet", kind.display_name())))?;
        let version = fingerprint(ctx)?;
        if let Some((v, p)) = self.lock().get(&ctx.account_id)
            && *v == version
        {
            return Ok(Arc::clone(p));
        }
        // Built outside the lock: factories may do non-trivial setup.
        let built = factory(ctx)?;
        if built.kind() != kind {
            return Err(AppError::internal(format!("factory for {kind} built a {} adapter", built.kind())));
        }
        let mut cache = self.lock();
        // Another caller may have raced us; keep whichever is cached for this version.
        let entry = cache.entry(ctx.account_id.clone()).or_insert_with(|| (version.clone(), Arc::clone(&built)));
        if entry.0 != version {
            *entry = (version, Arc::clone(&built));
        }
        Ok(Arc::clone(&entry.1))
    }

    /// Drops the cached adapter of a deleted or changed account.
    pub fn forget(&self, account_id: &AccountId) {
        self.lock().remove(account_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Cached>> {
        // A panic elsewhere cannot leave the map inconsistent (single inserts/removes).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A one-way digest of what an adapter instance is built from; never logged in clear. A part
/// that does not serialise is an error: hashing it as empty would miss a change and keep an
/// adapter built from the old credentials or options.
fn fingerprint(ctx: &CallContext) -> Result<String, AppError> {
    let mut h = Sha256::new();
    h.update(ctx.credentials.to_sealable_json().map_err(AppError::internal)?.expose().as_bytes());
    h.update([0]);
    let options = serde_json::to_vec(&ctx.options).map_err(|e| AppError::internal(format!("account options: {e}")))?;
    h.update(options);
    h.update([0]);
    h.update(ctx.base_url.as_bytes());
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Secret;
    use crate::domain::account::{AccountOptions, Credentials};
    use crate::error::ErrorCode;
    use crate::providers::InMemoryProvider;

    fn ctx(token: &str) -> CallContext {
        CallContext {
            account_id: AccountId::parse("acct-1").unwrap(),
            credentials: Credentials::Whapi { partner_token: Secret::new(token) },
            options: AccountOptions::default(),
            webhook_url: Secret::new("http://localhost/webhooks/whapi/acct-1/s3cret"),
            base_url: "http://localhost:1".into(),
        }
    }

    #[test]
    fn caches_per_account_and_credentials() {
        let mut r = ProviderRegistry::new();
        r.register(
            ProviderKind::Whapi,
            Arc::new(|_ctx: &CallContext| -> Result<Arc<dyn Provider>, AppError> {
                Ok(Arc::new(InMemoryProvider::new(ProviderKind::Whapi)))
            }),
        );
        assert!(r.implemented(ProviderKind::Whapi));
        assert!(!r.implemented(ProviderKind::Gupshup));
        let a = r.provider_for(&ctx("t1")).unwrap();
        let b = r.provider_for(&ctx("t1")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = r.provider_for(&ctx("t2")).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        r.forget(&AccountId::parse("acct-1").unwrap());
        let d = r.provider_for(&ctx("t2")).unwrap();
        assert!(!Arc::ptr_eq(&c, &d));
        assert!(!format!("{r:?}").contains("t2"));
    }

    #[test]
    fn unimplemented_kind() {
        let r = ProviderRegistry::new();
        let err = r.provider_for(&ctx("t1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unimplemented);
    }
}
