//! A cached provider token (partner login, app token) in the style of object_store's
//! `client/token.rs`: refreshed when within `min_ttl` of expiry, single-flight (concurrent
//! callers share one fetch), invalidated on a 401 for exactly one re-fetch. Use `T = Secret`
//! (or a struct of `Secret`s): [`TokenStatus`] reports on the token, never the token itself.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::HttpFailure;
use crate::domain::{UnixMs, now_ms};
use crate::providers::ProviderError;

/// A freshly fetched token and how long it lives (`None`: until a 401).
#[derive(Debug, Clone)]
pub struct TemporaryToken<T> {
    /// The token.
    pub token: T,
    /// Its lifetime from now.
    pub ttl: Option<Duration>,
}

/// What `GetProviderTokenStatus` reports. Never holds the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// A token is cached.
    pub cached: bool,
    /// When the cached token expires.
    pub expires_at: Option<UnixMs>,
    /// When the last successful fetch finished.
    pub last_refresh: Option<UnixMs>,
    /// Successful fetches so far.
    pub refresh_count: u64,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
    /// When the long-lived credential the token is fetched with expires (Gupshup client
    /// secret), if declared; filled by the core from `Provider::credential_expiry`.
    pub credential_expires_at: Option<UnixMs>,
    /// A warning while that credential is expiring or expired (empty otherwise).
    pub credential_warning: String,
}

/// Errors that can say "the provider rejected the credential" (a 401).
pub trait AuthFailure {
    /// True for a 401 from the provider.
    fn is_unauthenticated(&self) -> bool;
}

impl AuthFailure for HttpFailure {
    fn is_unauthenticated(&self) -> bool {
        self.status() == Some(401)
    }
}

impl AuthFailure for ProviderError {
    fn is_unauthenticated(&self) -> bool {
        matches!(self, ProviderError::Unauthenticated { .. })
    }
}

struct Cached<T> {
    token: T,
    expiry: Option<Instant>,
    generation: u64,
}

struct State<T> {
    cached: Option<Cached<T>>,
    status: TokenStatus,
}

/// A single-flight token cache.
pub struct TokenCache<T> {
    state: Mutex<State<T>>,
    refresh: tokio::sync::Mutex<()>,
    min_ttl: Duration,
}

impl<T> std::fmt::Debug for TokenCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("min_ttl", &self.min_ttl).finish_non_exhaustive()
    }
}

impl<T: Clone + Send> TokenCache<T> {
    /// A cache that refreshes tokens `min_ttl` before they expire.
    pub fn new(min_ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State { cached: None, status: TokenStatus::default() }),
            refresh: tokio::sync::Mutex::new(()),
            min_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self) -> Option<(T, u64)> {
        let st = self.lock();
        let c = st.cached.as_ref()?;
        let ok = c.expiry.is_none_or(|e| e.saturating_duration_since(Instant::now()) > self.min_ttl);
        ok.then(|| (c.token.clone(), c.generation))
    }

    /// The cached token, or a new one from `fetch` (one fetch for all concurrent callers).
    pub async fn get_or_refresh<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<TemporaryToken<T>, E>>,
    {
        self.get_with_generation(&fetch).await.map(|(t, _)| t)
    }

    async fn get_with_generation<E, F, Fut>(&self, fetch: &F) -> Result<(T, u64), E>
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<TemporaryToken<T>, E>>,
    {
        if let Some(hit) = self.fresh() {
            return Ok(hit);
        }
        let _guard = self.refresh.lock().await;
        // Another caller may have refreshed while we waited for the lock.
        if let Some(hit) = self.fresh() {
            return Ok(hit);
        }
        match fetch().await {
            Ok(t) => {
                let mut st = self.lock();
                st.status.refresh_count += 1;
                let now = now_ms();
                st.status.last_refresh = Some(now);
                st.status.last_error = None;
                st.status.cached = true;
                st.status.expires_at = t.ttl.map(|d| now.saturating_add(d.as_millis() as i64));
                let generation = st.status.refresh_count;
                st.cached =
                    Some(Cached { token: t.token.clone(), expiry: t.ttl.map(|d| Instant::now() + d), generation });
                Ok((t.token, generation))
            }
            Err(e) => {
                self.lock().status.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Drops the cached token so the next call fetches a new one.
    pub fn invalidate(&self) {
        let mut st = self.lock();
        st.cached = None;
        st.status.cached = false;
        st.status.expires_at = None;
    }

    /// Drops the cached token only if it is still the one of `generation` (so many callers
    /// that saw the same 401 cause one re-fetch, not many).
    fn invalidate_generation(&self, generation: u64) {
        let same = self.lock().cached.as_ref().is_some_and(|c| c.generation == generation);
        if same {
            self.invalidate();
        }
    }

    /// Status for `GetProviderTokenStatus`.
    pub fn status(&self) -> TokenStatus {
        self.lock().status.clone()
    }
}

/// Runs `call` with a cached token; on a 401 invalidates the token, fetches a new one and
/// retries the call once. A second 401 is returned to the caller (no loop).
pub async fn with_token<T, R, E, F, FFut, C, CFut>(cache: &TokenCache<T>, fetch: F, call: C) -> Result<R, E>
where
    T: Clone + Send,
    E: AuthFailure + std::fmt::Display,
    F: Fn() -> FFut,
    FFut: Future<Output = Result<TemporaryToken<T>, E>>,
    C: Fn(T) -> CFut,
    CFut: Future<Output = Result<R, E>>,
{
    let (token, generation) = cache.get_with_generation(&fetch).await?;
    match call(token).await {
        Err(e) if e.is_unauthenticated() => {
            tracing::info!(error = %e, "Provider rejected the cached token; fetching a new one once.");
            cache.invalidate_generation(generation);
            let (token, _) = cache.get_with_generation(&fetch).await?;
            call(token).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::domain::secret::Secret;

    fn unauth() -> HttpFailure {
        HttpFailure::Fatal { class: "t.c".into(), url: "u".into(), status: Some(401), reason: "HTTP 401".into() }
    }

    async fn fetch_counting(n: &AtomicU32, ttl: Duration) -> Result<TemporaryToken<Secret>, HttpFailure> {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(TemporaryToken { token: Secret::new(format!("tok-{i}")), ttl: Some(ttl) })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::<Secret>::new(Duration::from_secs(10)));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache.get_or_refresh(|| fetch_counting(&fetches, Duration::from_secs(3600))).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().expose(), "tok-1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let st = cache.status();
        assert!(st.cached && st.refresh_count == 1 && st.expires_at.is_some() && st.last_error.is_none());
        assert!(!format!("{st:?}").contains("tok-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_expiry() {
        let cache = TokenCache::<Secret>::new(Duration::from_secs(10));
        let n = AtomicU32::new(0);
        let ttl = Duration::from_secs(60);
        assert_eq!(cache.get_or_refresh(|| fetch_counting(&n, ttl)).await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(cache.get_or_refresh(|| fetch_counting(&n, ttl)).await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(cache.get_or_refresh(|| fetch_counting(&n, ttl)).await.unwrap().expose(), "tok-2");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn one_refetch_on_401_then_success() {
        let cache = TokenCache::<Secret>::new(Duration::from_secs(10));
        let n = AtomicU32::new(0);
        let calls = AtomicU32::new(0);
        let r = with_token(
            &cache,
            || fetch_counting(&n, Duration::from_secs(3600)),
            |t: Secret| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if t.expose() == "tok-1" { Err(unauth()) } else { Ok(t.expose().to_string()) } }
            },
        )
        .await;
        assert_eq!(r.unwrap(), "tok-2");
        assert_eq!((n.load(Ordering::SeqCst), calls.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn second_401_is_surfaced() {
        let cache = TokenCache::<Secret>::new(Duration::from_secs(10));
        let n = AtomicU32::new(0);
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_token(
            &cache,
            || fetch_counting(&n, Duration::from_secs(3600)),
            |_t: Secret| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unauth()) }
            },
        )
        .await;
        assert!(r.unwrap_err().is_unauthenticated());
        assert_eq!((n.load(Ordering::SeqCst), calls.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn fetch_error_recorded() {
        let cache = TokenCache::<Secret>::new(Duration::from_secs(10));
        let r = cache
            .get_or_refresh(|| async {
                Err::<TemporaryToken<Secret>, _>(HttpFailure::Fatal {
                    class: "gupshup.login".into(),
                    url: "u".into(),
                    status: Some(403),
                    reason: "HTTP 403".into(),
                })
            })
            .await;
        assert!(r.is_err());
        let st = cache.status();
        assert!(!st.cached);
        assert!(st.last_error.unwrap().contains("403"));
    }
}
