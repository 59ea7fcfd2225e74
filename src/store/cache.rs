//! Bounded read-through caches of single rows (onboardings, accounts), for the SQLite store
//! only.
//!
//! Consistency: exact, and monotonic. A read never returns a row older than the last write
//! that returned before the read started, nor older than a row any read already returned from
//! the database. It relies on two facts of the SQLite deployment: every write to
//! `onboardings` and `accounts` goes through this process's store (SQLite is one process;
//! the CLI only touches tenants and API keys), and every such write brackets its commit with
//! [`RowCache::writing`]: from just before the commit until after it (and the
//! [`super::ChangeNotice`] it publishes) the row is read from the database, neither served
//! from nor put into the cache. Without that bracket, a commit is visible to database reads
//! before its invalidation runs: one task would read the new row from the database while
//! another is still served the old cached one (the engine claimed a step its last change made
//! ready and read the onboarding without that change's handle). A write whose future is
//! dropped after the commit was sent (a cancelled RPC) cannot know whether it committed: its
//! row stays read from the database until the next write of it completes. New rows need
//! nothing: no negative entries are kept. A read that raced a write cannot re-insert the row it
//! read before that write: fills carry the generation seen before the database read and are
//! dropped when any invalidation happened since; and a fill never replaces a newer cached row
//! ([`Versioned`]), since two reads on either side of a commit can fill in either order.
//!
//! PostgreSQL does not use it: another replica's commit reaches this one only through an
//! asynchronous `NOTIFY`, so a cached row could outlive a write another replica already
//! acknowledged (a client writing through one replica and reading through another would read
//! its own write back stale).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;

use super::{AccountRecord, OnboardingRecord, StoreResult};
use crate::domain::{AccountId, OnboardingId};

/// Onboarding rows kept by default: bounds memory (a row is well under 1 KiB of text) while
/// covering the onboardings clients poll.
pub const DEFAULT_ENTRIES: usize = 4096;
/// Account rows kept by default: every webhook delivery reads its account.
pub const DEFAULT_ACCOUNTS: usize = 1024;

/// The onboarding rows by id.
pub type OnboardingCache = RowCache<OnboardingId, OnboardingRecord>;
/// The account rows by id (sealed secrets stay sealed here).
pub type AccountCache = RowCache<AccountId, AccountRecord>;

/// The SQLite store's caches.
#[derive(Debug)]
pub struct Caches {
    /// Onboardings, invalidated by every onboarding write's notice.
    pub onboardings: OnboardingCache,
    /// Accounts, invalidated by account updates and deletions.
    pub accounts: AccountCache,
}

impl Default for Caches {
    fn default() -> Self {
        Self { onboardings: RowCache::new(DEFAULT_ENTRIES), accounts: RowCache::new(DEFAULT_ACCOUNTS) }
    }
}

struct Inner<K, V> {
    rows: LruCache<K, Arc<V>>,
    /// Bumped by every invalidation.
    generation: u64,
    /// Rows a write is committing now, or whose write was abandoned mid-commit: read from the
    /// database only. At most one per row at a time (the single SQLite writer).
    unsettled: HashMap<K, Unsettled>,
}

/// Why a row bypasses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsettled {
    /// Its write is between just before its commit and its invalidation.
    Writing,
    /// Its write was dropped after it may have committed: settled by the next completed write.
    Abandoned,
}

/// A write of one cached row in progress; see [`RowCache::writing`]. Dropped without
/// [`Writing::done`] (an error, or the write's future cancelled), the row is left
/// [`Unsettled::Abandoned`].
pub struct Writing<'a, K: Hash + Eq + Clone, V> {
    cache: &'a RowCache<K, V>,
    id: K,
    done: bool,
}

impl<K: Hash + Eq + Clone, V> Writing<'_, K, V> {
    /// The write committed (and published its notice): the row may be cached again.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Writing<'_, K, V> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.remove(&self.id);
        if self.done {
            inner.unsettled.remove(&self.id);
        } else {
            inner.unsettled.insert(self.id.clone(), Unsettled::Abandoned);
        }
    }
}

/// A row's version: a fill never replaces a cached row with an older one. Two reads that
/// both started before a write's invalidation can fill in either order (one read the row
/// before the commit, the other after it); without versions the older could land last and be
/// served to a reader that had already seen the newer.
pub trait Versioned {
    /// Grows with every write of the row.
    fn version(&self) -> i64;
}

impl Versioned for OnboardingRecord {
    fn version(&self) -> i64 {
        self.sequence
    }
}

impl Versioned for AccountRecord {
    // Millisecond resolution: two writes within one millisecond tie, and a tie keeps the
    // cached row (invalidation still clears it before the second write returns).
    fn version(&self) -> i64 {
        self.updated_ms
    }
}

/// The cache; see the module documentation for its consistency.
pub struct RowCache<K, V> {
    inner: Mutex<Inner<K, V>>,
}

impl<K: Hash + Eq + Clone, V> std::fmt::Debug for RowCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowCache").field("len", &self.len()).finish()
    }
}

impl<K: Hash + Eq + Clone, V> RowCache<K, V> {
    /// A cache of at most `entries` rows (least recently used evicted first).
    pub fn new(entries: usize) -> Self {
        Self {
            inner: Mutex::new(Inner { rows: LruCache::new(entries.max(1)), generation: 0, unsettled: HashMap::new() }),
        }
    }

    // A panic while holding the lock cannot leave the map half-updated in a way that matters:
    // the worst is a missing entry.
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `id`, after a committed write to it and before that write returns.
    pub fn invalidate(&self, id: &K) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.remove(id);
    }

    /// Starts a write of `id`: call it inside the write's transaction, just before the commit,
    /// and call [`Writing::done`] once the commit returned and its notice went out. Until then
    /// `id` is read from the database only, so no read is served the row the commit replaced
    /// after another read saw the new one.
    pub fn writing(&self, id: &K) -> Writing<'_, K, V> {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.remove(id);
        inner.unsettled.insert(id.clone(), Unsettled::Writing);
        Writing { cache: self, id: id.clone(), done: false }
    }
}

impl<K: Hash + Eq + Clone, V: Versioned> RowCache<K, V> {
    /// The row `id`, from the cache or else from `load` (which reads the database); a found
    /// row is kept unless a write invalidated anything while `load` ran. Shared: a hit copies
    /// nothing.
    pub async fn read_through<F>(&self, id: &K, load: F) -> StoreResult<Option<Arc<V>>>
    where
        F: Future<Output = StoreResult<Option<V>>>,
    {
        let seen = {
            let mut inner = self.lock();
            if inner.unsettled.contains_key(id) {
                None
            } else if let Some(row) = inner.rows.get(id) {
                return Ok(Some(row.clone()));
            } else {
                Some(inner.generation)
            }
        };
        let Some(loaded) = load.await?.map(Arc::new) else {
            return Ok(None);
        };
        let Some(seen) = seen else {
            return Ok(Some(loaded));
        };
        let mut inner = self.lock();
        let newer = inner.rows.peek(id).is_none_or(|cached| cached.version() < loaded.version());
        // `writing` bumps the generation too, so a fill that began before it is dropped.
        if inner.generation == seen && newer {
            inner.rows.insert(id.clone(), loaded.clone());
        }
        Ok(Some(loaded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, OnboardingState, ProviderKind, TenantId, new_id};

    fn row(id: &OnboardingId, sequence: i64) -> OnboardingRecord {
        OnboardingRecord {
            id: id.clone(),
            tenant_id: new_id::<TenantId>(),
            account_id: AccountId::parse("acc").unwrap(),
            provider: ProviderKind::Whapi,
            state: OnboardingState::Live,
            desired_state: None,
            state_reason: String::new(),
            provider_status: String::new(),
            reference: String::new(),
            details_json: "{}".into(),
            engine_json: "{}".into(),
            external_key: None,
            secret: None,
            sequence,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    /// What `read_through` answers (its sequence) when the database holds `db`.
    async fn read(cache: &OnboardingCache, id: &OnboardingId, db: Option<i64>) -> Option<i64> {
        let loaded = db.map(|s| row(id, s));
        cache.read_through(id, async { Ok(loaded) }).await.unwrap().map(|r| r.sequence)
    }

    #[tokio::test]
    async fn hits_until_invalidated() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        assert_eq!(read(&cache, &id, Some(99)).await, Some(1), "a hit does not read the database");
        cache.invalidate(&id);
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2));
    }

    #[tokio::test]
    async fn misses_are_not_kept() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        assert_eq!(read(&cache, &id, None).await, None);
        assert!(cache.is_empty());
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
    }

    /// A read that loaded a row before a write committed must not cache it after the write's
    /// invalidation.
    /// Two reads that both started before the write's invalidation fill in either order: the
    /// one that read the row before the commit, landing last, must not replace the newer row
    /// (a reader that saw the newer one would then read the older back).
    #[tokio::test]
    async fn an_older_fill_does_not_replace_a_newer_row() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        let (older_loaded, older_fill) = tokio::sync::oneshot::channel::<()>();
        let older = {
            let (cache, id) = (&cache, id.clone());
            async move {
                cache
                    .read_through(&id, async {
                        // Read before the commit; fills only after the newer read has.
                        let _ = older_fill.await;
                        Ok(Some(row(&id, 4)))
                    })
                    .await
            }
        };
        let newer = async {
            let got = read(&cache, &id, Some(5)).await;
            let _ = older_loaded.send(());
            got
        };
        let (old, new) = tokio::join!(older, newer);
        assert_eq!((old.unwrap().map(|r| r.sequence), new), (Some(4), Some(5)));
        assert_eq!(read(&cache, &id, Some(6)).await, Some(5), "the newer row stays cached");
    }

    #[tokio::test]
    async fn a_read_racing_a_write_does_not_cache_the_old_row() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        let stale = async {
            // The write commits and invalidates while this read is in the database.
            cache.invalidate(&id);
            Ok(Some(row(&id, 1)))
        };
        let got = cache.read_through(&id, stale).await.unwrap();
        assert_eq!(got.map(|r| r.sequence), Some(1), "the racing read itself may return the old row");
        assert!(cache.is_empty(), "but must not keep it");
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2));
    }

    /// Between a write's commit and its invalidation the database already answers the new
    /// row: the cache must not answer the old one then, nor keep what it reads.
    #[tokio::test]
    async fn a_row_being_written_is_read_from_the_database() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        assert_eq!(read(&cache, &id, Some(7)).await, Some(7));
        let write = cache.writing(&id);
        assert_eq!(read(&cache, &id, Some(8)).await, Some(8), "committed: the database answers");
        assert_eq!(read(&cache, &id, Some(8)).await, Some(8));
        assert!(cache.is_empty(), "nothing cached while the write is unsettled");
        write.done();
        assert_eq!(read(&cache, &id, Some(8)).await, Some(8));
        assert_eq!(read(&cache, &id, Some(99)).await, Some(8), "cached again once settled");
    }

    /// A fill that began before the write started is dropped, even if it lands after.
    #[tokio::test]
    async fn a_fill_begun_before_a_write_is_dropped() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        let got = cache
            .read_through(&id, async {
                cache.writing(&id).done();
                Ok(Some(row(&id, 1)))
            })
            .await
            .unwrap();
        assert_eq!(got.map(|r| r.sequence), Some(1));
        assert!(cache.is_empty());
    }

    /// A write dropped mid-commit may or may not have committed: the row stays read from the
    /// database until a later write of it completes.
    #[tokio::test]
    async fn an_abandoned_write_leaves_the_row_uncached_until_the_next_write() {
        let cache = OnboardingCache::new(8);
        let (id, other) = (new_id::<OnboardingId>(), new_id::<OnboardingId>());
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        drop(cache.writing(&id));
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2), "the commit landed late: still not cached");
        cache.writing(&other).done();
        assert_eq!(read(&cache, &id, Some(3)).await, Some(3), "another row's write settles nothing");
        cache.writing(&id).done();
        assert_eq!(read(&cache, &id, Some(4)).await, Some(4));
        assert_eq!(read(&cache, &id, Some(5)).await, Some(4), "settled: cached again");
    }

    #[tokio::test]
    async fn size_is_bounded_least_recently_used_first() {
        let cache = OnboardingCache::new(3);
        let ids: Vec<OnboardingId> = (0..5).map(|_| new_id()).collect();
        for (i, id) in ids.iter().take(3).enumerate() {
            read(&cache, id, Some(i as i64)).await;
        }
        // Touch the first so the second is the least recently used.
        assert_eq!(read(&cache, &ids[0], None).await, Some(0));
        for id in &ids[3..] {
            read(&cache, id, Some(7)).await;
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(read(&cache, &ids[0], None).await, Some(0), "recently used row kept");
        assert_eq!(read(&cache, &ids[1], None).await, None, "least recently used row evicted");
        assert_eq!(read(&cache, &ids[2], None).await, None, "next least recently used row evicted");
        assert_eq!(read(&cache, &ids[4], None).await, Some(7));
    }
}
