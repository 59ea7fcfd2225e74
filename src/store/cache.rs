//! Bounded read-through caches of single rows (onboardings, accounts), for the SQLite store
//! only.
//!
//! Consistency: exact (a read never returns a row older than the last write that returned
//! before the read started). It relies on two facts of the SQLite deployment: every write to
//! `onboardings` and `accounts` goes through this process's store (SQLite is one process;
//! the CLI only touches tenants and API keys), and every such write invalidates the entry
//! after its commit and before it returns (an onboarding's through the [`super::ChangeNotice`]
//! every onboarding write publishes, which streams already rely on; an account's in
//! `update_account` and `delete_account`). New rows need nothing: no negative entries are
//! kept. A read that raced a write cannot re-insert the row it read before that write: fills
//! carry the generation seen before the database read and are dropped when any invalidation
//! happened since; and a fill never replaces a newer cached row ([`Versioned`]), since two reads
//! on either side of a commit can fill in either order before its invalidation. Between a
//! change's commit and its invalidation, a reader could still read the new row from the
//! database (a miss, or an uncached read) and then the old cached one: so `apply_change(s)`
//! fence the rows they change from before their transaction until after their notices
//! ([`RowCache::writing`]; account updates and deletes too); fenced rows are read from the
//! database and fill nothing. (That gap lost the engine a 99digital handle: it claimed the step
//! a commit made ready, straight from the database, and read the onboarding from the cache.) A
//! write whose future is dropped after its commit may have been sent (a cancelled RPC) cannot
//! know whether or when it committed: its row stays read from the database until a write of it
//! that began later completes.
//!
//! PostgreSQL keeps only a lagging onboarding cache, for API reads (`onboarding_shared`, what
//! `GetOnboarding` reads): another replica's commit reaches this one only through an
//! asynchronous `NOTIFY`, so there a cached row can outlive a write another replica already
//! acknowledged. Its rule: exact for this replica's own writes (they invalidate before they
//! return, as on SQLite), and behind another replica's commit by at most the notice's latency;
//! a lost notice (the listener reconnected: everything is forgotten then; a replica died between
//! its commit and its `NOTIFY`) is bounded by the entry's maximum age
//! ([`RowCache::with_max_age`]). Reads that decide writes (the engine's, `onboarding`,
//! `onboarding_unscoped`) do not go through it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// Each row with when it was read from the database.
    rows: LruCache<K, (Arc<V>, Instant)>,
    /// Bumped by every invalidation.
    generation: u64,
    /// Rows with a write in flight ([`RowCache::writing`]): read past the cache.
    writing: HashMap<K, usize>,
    /// Rows whose write was dropped unfinished, with the generation then: read past the cache
    /// until a write that began after that completes.
    abandoned: HashMap<K, u64>,
}

/// A write of one cached row in flight; see [`RowCache::writing`]. Dropped without
/// [`Writing::done`] (an error, or the write's future cancelled), the row is left abandoned.
pub struct Writing<'a, K: Hash + Eq + Clone, V> {
    cache: &'a RowCache<K, V>,
    id: K,
    /// The generation the fence began at.
    began: u64,
    done: bool,
}

impl<K: Hash + Eq + Clone, V> Writing<'_, K, V> {
    /// The write committed and published its notice: the row may be cached again.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Writing<'_, K, V> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.remove(&self.id);
        if let Some(n) = inner.writing.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.writing.remove(&self.id);
            }
        }
        if self.done {
            if inner.abandoned.get(&self.id).is_some_and(|at| *at < self.began) {
                inner.abandoned.remove(&self.id);
            }
        } else {
            let at = inner.generation;
            inner.abandoned.insert(self.id.clone(), at);
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
    /// Rows older than this are read again (`None`: kept until invalidated or evicted).
    max_age: Option<Duration>,
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
            inner: Mutex::new(Inner {
                rows: LruCache::new(entries.max(1)),
                generation: 0,
                writing: HashMap::new(),
                abandoned: HashMap::new(),
            }),
            max_age: None,
        }
    }

    /// [`RowCache::new`] whose rows are read again once `max_age` old: the bound on a row
    /// whose invalidation was lost (PostgreSQL's cache, see the module documentation).
    pub fn with_max_age(entries: usize, max_age: Duration) -> Self {
        Self { max_age: Some(max_age), ..Self::new(entries) }
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

    /// Fences `id` for a write: take it before the write's commit (before its transaction is
    /// simplest) and call [`Writing::done`] once the commit returned and its notice went out.
    /// Until then reads of `id` go to the database and fill nothing. Without it a reader could
    /// read the committed row from the database (a miss, or another read path) and then the
    /// older cached row, in the window between the commit and the invalidation.
    pub fn writing(&self, id: &K) -> Writing<'_, K, V> {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.remove(id);
        *inner.writing.entry(id.clone()).or_insert(0) += 1;
        Writing { cache: self, id: id.clone(), began: inner.generation, done: false }
    }

    /// Forgets every row (invalidations may have been lost), dropping fills in flight too.
    pub fn invalidate_all(&self) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.rows.clear();
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
            if inner.writing.contains_key(id) || inner.abandoned.contains_key(id) {
                None
            } else {
                match inner.rows.get(id) {
                    Some((row, read)) if self.max_age.is_none_or(|max| read.elapsed() < max) => {
                        return Ok(Some(row.clone()));
                    }
                    _ => Some(inner.generation),
                }
            }
        };
        // Fenced by a write in flight: the database only.
        let Some(seen) = seen else {
            return Ok(load.await?.map(Arc::new));
        };
        // Stamped before the read: the age bounds how far the row can be behind the database.
        let read = Instant::now();
        let Some(loaded) = load.await?.map(Arc::new) else {
            return Ok(None);
        };
        let mut inner = self.lock();
        // An expired row is replaced by the re-read even when the versions tie.
        let newer = inner.rows.peek(id).is_none_or(|(cached, cached_read)| {
            cached.version() < loaded.version()
                || (cached.version() == loaded.version()
                    && self.max_age.is_some_and(|max| cached_read.elapsed() >= max))
        });
        if inner.generation == seen && newer {
            inner.rows.insert(id.clone(), (loaded.clone(), read));
        }
        Ok(Some(loaded))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    async fn rows_past_their_max_age_are_read_again() {
        let id = new_id::<OnboardingId>();
        let expiring = OnboardingCache::with_max_age(8, Duration::ZERO);
        assert_eq!(read(&expiring, &id, Some(1)).await, Some(1));
        assert_eq!(read(&expiring, &id, Some(1)).await, Some(1));
        // A write whose invalidation was lost (same or newer version) is read once expired.
        assert_eq!(read(&expiring, &id, Some(2)).await, Some(2));
        let lasting = OnboardingCache::with_max_age(8, Duration::from_secs(3600));
        assert_eq!(read(&lasting, &id, Some(1)).await, Some(1));
        assert_eq!(read(&lasting, &id, Some(2)).await, Some(1), "young rows are hits");
    }

    #[tokio::test]
    async fn invalidate_all_forgets_every_row_and_fills_in_flight() {
        let cache = OnboardingCache::new(8);
        let (a, b) = (new_id::<OnboardingId>(), new_id::<OnboardingId>());
        read(&cache, &a, Some(1)).await;
        read(&cache, &b, Some(1)).await;
        cache.invalidate_all();
        assert!(cache.is_empty());
        let racing = async {
            cache.invalidate_all();
            Ok(Some(row(&a, 1)))
        };
        cache.read_through(&a, racing).await.unwrap();
        assert!(cache.is_empty(), "a read that raced the reset is not kept");
        assert_eq!(read(&cache, &a, Some(2)).await, Some(2));
    }

    /// Between a write's commit and its invalidation a reader may read the new row from the
    /// database; the fence keeps it from reading the old cached row afterwards.
    #[tokio::test]
    async fn a_fenced_row_is_read_past_the_cache_until_the_write_ends() {
        let cache = OnboardingCache::new(8);
        let id = new_id::<OnboardingId>();
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        let (first, second) = (cache.writing(&id), cache.writing(&id));
        // Committed, not yet invalidated: reads see the database and fill nothing.
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2));
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2));
        assert!(cache.is_empty());
        first.done();
        assert_eq!(read(&cache, &id, Some(3)).await, Some(3), "fenced while any write is in flight");
        second.done();
        assert_eq!(read(&cache, &id, Some(3)).await, Some(3));
        assert_eq!(read(&cache, &id, Some(4)).await, Some(3), "cached again once every write ended");
        // A read that started before the fence does not fill after it.
        cache.invalidate(&id);
        let racing = async {
            cache.writing(&id).done();
            Ok(Some(row(&id, 3)))
        };
        cache.read_through(&id, racing).await.unwrap();
        assert_eq!(read(&cache, &id, Some(5)).await, Some(5));
    }

    /// A write dropped unfinished may have committed, or may still commit: its row is read
    /// from the database until a write of it that began later completes.
    #[tokio::test]
    async fn an_abandoned_write_leaves_the_row_uncached_until_a_later_write_completes() {
        let cache = OnboardingCache::new(8);
        let (id, other) = (new_id::<OnboardingId>(), new_id::<OnboardingId>());
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        let earlier = cache.writing(&id);
        drop(cache.writing(&id));
        assert_eq!(read(&cache, &id, Some(1)).await, Some(1));
        earlier.done();
        assert_eq!(read(&cache, &id, Some(2)).await, Some(2), "a write begun before the abandoned one settles nothing");
        assert_eq!(read(&cache, &id, Some(3)).await, Some(3));
        cache.writing(&other).done();
        assert_eq!(read(&cache, &id, Some(4)).await, Some(4), "nor does another row's write");
        cache.writing(&id).done();
        assert_eq!(read(&cache, &id, Some(5)).await, Some(5));
        assert_eq!(read(&cache, &id, Some(6)).await, Some(5), "settled: cached again");
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
