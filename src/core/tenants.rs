//! Tenants and their API keys. Keys are random, shown once, stored as SHA-256 hashes, and
//! looked up through a short-lived cache so revocation takes effect within seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::domain::{ApiKeyId, Secret, TenantId, new_id, now_ms};
use crate::error::{AppError, ErrorCode};
use crate::store::{ApiKeyRecord, Store, StoreError, TenantRecord};

/// The key and tenant-name rules live in the domain (the configuration applies them too).
pub use crate::domain::api_key::{KEY_PREFIX, hash_key};

/// How long a key lookup is cached by default; also the worst-case delay for a revocation
/// (`auth.revocation_delay_ms`).
const CACHE_TTL: Duration = Duration::from_secs(5);

/// A new API key: the plaintext is returned once and never stored.
#[derive(Debug)]
pub struct IssuedKey {
    /// Key id (for revocation).
    pub id: ApiKeyId,
    /// The key itself.
    pub key: Secret,
}

/// A fresh random key: `wao_` and 40 base62 characters (~238 bits).
pub fn generate_key() -> Secret {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..40).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    Secret::new(format!("{KEY_PREFIX}{body}"))
}

/// Validates a tenant name: what `tenant create NAME` accepts.
pub fn validate_name(name: &str) -> Result<(), AppError> {
    crate::domain::api_key::validate_tenant_name(name).map_err(|e| AppError::invalid("name", e.to_string()))
}

/// Creates a tenant and its first key.
pub async fn create_tenant(store: &dyn Store, name: &str) -> Result<(TenantRecord, IssuedKey), AppError> {
    validate_name(name)?;
    let tenant = TenantRecord { id: new_id(), name: name.to_string(), created_ms: now_ms() };
    store.create_tenant(&tenant).await.map_err(|e| match e {
        StoreError::AlreadyExists(_) => {
            AppError::new(ErrorCode::AlreadyExists, format!("tenant '{name}' already exists"))
        }
        other => other.into(),
    })?;
    let key = add_key(store, &tenant.id, None).await?;
    Ok((tenant, key))
}

/// Adds a key to a tenant; `fixed` stores that key instead of generating one.
pub async fn add_key(store: &dyn Store, tenant: &TenantId, fixed: Option<Secret>) -> Result<IssuedKey, AppError> {
    let key = fixed.unwrap_or_else(generate_key);
    let record = ApiKeyRecord {
        id: new_id(),
        tenant_id: tenant.clone(),
        hash: hash_key(key.expose()),
        prefix: key.expose().chars().take(KEY_PREFIX.len() + 4).collect(),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    store.add_api_key(&record).await?;
    Ok(IssuedKey { id: record.id, key })
}

/// Looks a tenant up by name.
pub async fn tenant_by_name(store: &dyn Store, name: &str) -> Result<TenantRecord, AppError> {
    store.tenant_by_name(name).await?.ok_or_else(|| AppError::not_found(format!("tenant '{name}'")))
}

/// Ensures the development tenant exists and accepts `key` (registered if not already).
/// Where the key comes from (fixed by the operator, or generated once and kept in a file) is
/// the caller's business (`app.rs`).
pub async fn ensure_dev_tenant(store: &dyn Store, name: &str, key: &Secret) -> Result<(), AppError> {
    let tenant = match store.tenant_by_name(name).await? {
        Some(t) => t,
        None => {
            validate_name(name)?;
            let t = TenantRecord { id: new_id(), name: name.to_string(), created_ms: now_ms() };
            match store.create_tenant(&t).await {
                Ok(()) => t,
                // Another replica created it first.
                Err(StoreError::AlreadyExists(_)) => tenant_by_name(store, name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if store.api_key_by_hash(&hash_key(key.expose())).await?.is_none() {
        add_key(store, &tenant.id, Some(key.clone())).await?;
    }
    Ok(())
}

/// Key hash to (tenant or none, when looked up).
type KeyCache = HashMap<Vec<u8>, (Option<TenantId>, Instant)>;

/// API keys declared in the config file: key hash to tenant. Replaced as a whole when the
/// file is re-read; checked before the store, without caching.
pub type ConfigKeys = Arc<std::sync::RwLock<HashMap<Vec<u8>, TenantId>>>;

/// Resolves API keys to tenants, with a short positive and negative cache.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<KeyCache>>,
    config_keys: ConfigKeys,
    /// How long a lookup is cached: the revocation delay.
    ttl: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

impl Authenticator {
    /// A new authenticator over the store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_config_keys(store, ConfigKeys::default())
    }

    /// A new authenticator that also accepts the (live-updated) config-file keys.
    pub fn with_config_keys(store: Arc<dyn Store>, config_keys: ConfigKeys) -> Self {
        Self { store, cache: Arc::default(), config_keys, ttl: CACHE_TTL }
    }

    /// Caches lookups for `delay` (at least 100 ms): a revoked key is refused, and the streams
    /// it opened end, within that delay.
    pub fn with_revocation_delay(mut self, delay: Duration) -> Self {
        self.ttl = delay.max(Duration::from_millis(100));
        self
    }

    /// The tenant owning `key`, or `UNAUTHENTICATED`.
    pub async fn authenticate(&self, key: &str) -> Result<TenantId, AppError> {
        self.authenticate_checked(key).await.map(|(tenant, _)| tenant)
    }

    /// [`Authenticator::authenticate`], with what a stream opened with the key re-checks it by.
    pub async fn authenticate_checked(&self, key: &str) -> Result<(TenantId, KeyCheck), AppError> {
        let unauth = || AppError::new(ErrorCode::Unauthenticated, "invalid or revoked API key");
        if !key.starts_with(KEY_PREFIX) || key.len() > 200 {
            return Err(unauth());
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let tenant = self.lookup(&hash, self.ttl).await?.ok_or_else(unauth)?;
        Ok((tenant, KeyCheck { auth: self.clone(), hash }))
    }

    /// The tenant of a key hash: a config-file key, else the store through a cache entry younger
    /// than `max_age`.
    async fn lookup(&self, hash: &[u8; 32], max_age: Duration) -> Result<Option<TenantId>, AppError> {
        let declared = self.config_keys.read().unwrap_or_else(|e| e.into_inner()).get(&hash[..]).cloned();
        if let Some(tenant) = declared {
            return Ok(Some(tenant));
        }
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&hash[..]).filter(|(_, at)| at.elapsed() < max_age).map(|(t, _)| t.clone())
        };
        let tenant = match cached {
            Some(t) => t,
            None => {
                let t = self.store.api_key_by_hash(hash).await?.map(|k| k.tenant_id);
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() > 10_000 {
                    // Bounded: a flood of random keys cannot grow memory.
                    cache.clear();
                }
                cache.insert(hash.to_vec(), (t.clone(), Instant::now()));
                t
            }
        };
        Ok(tenant)
    }
}

/// What a stream opened with an API key re-checks that key with, so a key revoked (or removed
/// from the config file) while the stream is open ends it within the revocation delay.
#[derive(Clone)]
pub struct KeyCheck {
    auth: Authenticator,
    hash: [u8; 32],
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not even the hash: it identifies the key.
        f.write_str("KeyCheck")
    }
}

impl KeyCheck {
    /// How often a stream re-checks: half the revocation delay, through cache entries at most
    /// that old, so a revocation ends the stream within the delay (one store read per key per
    /// half delay, however many streams the key holds open).
    pub fn every(&self) -> Duration {
        self.auth.ttl / 2
    }

    /// The key's hash: what names it in memory (streams of one key share one check).
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// `UNAUTHENTICATED` once the key no longer maps to `tenant`. A store that does not answer
    /// is not a revocation: the stream stays, and the next check asks again.
    pub async fn recheck(&self, tenant: &TenantId) -> Result<(), AppError> {
        // Detached: a stream that stops being polled mid-read (its client does not read) must
        // not keep the store connection the read holds.
        let (auth, hash, max_age) = (self.auth.clone(), self.hash, self.every());
        let looked_up = super::detached(async move { auth.lookup(&hash, max_age).await }).await;
        match looked_up {
            Ok(Some(t)) if &t == tenant => Ok(()),
            Ok(_) => Err(AppError::new(ErrorCode::Unauthenticated, "API key revoked while the stream was open")),
            Err(error) => {
                tracing::warn!(error = %error.message, "API key re-check of an open stream failed; kept open.");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), 44);
        assert_ne!(a, b);
        assert_eq!(hash_key(a.expose()).len(), 32);
    }

    #[test]
    fn names() {
        assert!(validate_name("billing-svc").is_ok());
        assert!(validate_name("Billing").is_err());
        assert!(validate_name("").is_err());
    }
}
