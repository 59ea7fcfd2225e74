//! Fan-out of onboarding changes to streams. One task reads the store's change notices (from
//! this replica and, on PostgreSQL, from every replica) and moves the latest known sequence of
//! the watched onboarding (an atomic and a few `Notify`s per onboarding, so only its streams wake:
//! a `watch` channel costs ten times the memory, and there is one topic per stream when every
//! stream watches its own onboarding). The
//! same task drives the shared heartbeat ticks, and every few periods (or at once after a
//! lagged notice stream) reconciles all watched onboardings against the store in one bulk
//! read, so a missed notice costs latency, never data. Streams are spread over
//! [`BEAT_SLOTS`] ticks a period apart from each other's, so their heartbeats go out in small
//! steady groups: one tick for 10,000 streams is a burst of 10,000 messages that delays every
//! event sent behind it.
//!
//! The events themselves come from the store, the single source of truth, through a shared
//! per-onboarding cache of recent events ([`Window`]): when a notice moves an onboarding's
//! sequence, the first stream that needs the new events reads them (with the steps they
//! concern) once, every other stream of that onboarding awaits the same read and shares its
//! `Arc`s. A stream whose cursor lies before the cached range reads the store on its own. An
//! onboarding with a single stream keeps no window: there is nobody to share it with, and the
//! stream holds what it read until sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::{Notify, broadcast, watch};

use super::detached;
use super::tenants::KeyCheck;
use super::views::{EventView, StepView};
use crate::domain::{OnboardingId, ProviderKind, TenantId};
use crate::error::AppError;
use crate::store::{ChangeNotice, EventRecord, StepRecord, Store, StoreResult};

/// How many events one store read returns.
const PAGE: u32 = 200;
/// Heartbeat periods between two bulk reconciliations with the store.
const RECONCILE_EVERY: u64 = 3;
/// Waiter lists per watched onboarding.
const MOVED_SHARDS: usize = 8;
/// Heartbeat groups: each period has this many ticks, each waking its own group of streams.
pub const BEAT_SLOTS: usize = 16;
/// How many times a stream joins a shared read that does not cover its cursor before it
/// reads on its own (several streams at different cursors may take turns filling).
const FILL_ROUNDS: usize = 3;

/// What the bus reads: the store, or a test double that counts the reads.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Events with `sequence > after`, ascending, at most `limit`.
    async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>>;
    /// The onboarding's steps.
    async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>>;
    /// The current sequences of the given onboardings (unknown ones left out).
    async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>>;
    /// A value that differs whenever an event was committed since it was last read, if the
    /// log has one ([`crate::store::Onboardings::events_marker`]).
    async fn events_marker(&self) -> StoreResult<Option<i64>> {
        Ok(None)
    }
}

#[async_trait]
impl EventLog for Arc<dyn Store> {
    async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.as_ref().events(id, after, limit).await
    }

    async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>> {
        self.as_ref().steps(id).await
    }

    async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>> {
        self.as_ref().latest_sequences(ids).await
    }

    async fn events_marker(&self) -> StoreResult<Option<i64>> {
        self.as_ref().events_marker().await
    }
}

/// One event as streams send it, with the step it concerns (as read with the event): views
/// built once per read and shared by every stream of the onboarding.
pub type Delivered = (Arc<EventView>, Option<Arc<StepView>>);

/// Consecutive events of one onboarding: every event with `lo < sequence <= hi()` is in
/// `events`, in order. Immutable once built; shared between the streams that read it.
#[derive(Debug, Default)]
pub struct Window {
    lo: i64,
    events: Vec<Delivered>,
    /// The read that built it reached the end of the log (fewer than a page came back).
    reached_end: bool,
    /// The topic's latest known sequence when that read started.
    known_at_start: i64,
}

impl Window {
    fn hi(&self) -> i64 {
        self.events.last().map_or(self.lo, |(e, _)| e.sequence)
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A stream's position in a window: the events after its cursor, yielded one at a time.
#[derive(Debug)]
pub struct Batch {
    window: Arc<Window>,
    next: usize,
}

impl Batch {
    /// The events of `window` after `cursor`, when the window holds every one of them up to
    /// its end.
    fn after(window: &Arc<Window>, cursor: i64) -> Option<Self> {
        if cursor < window.lo || cursor >= window.hi() {
            return None;
        }
        let next = window.events.partition_point(|(e, _)| e.sequence <= cursor);
        Some(Self { window: window.clone(), next })
    }

    /// The next event, if any is left.
    pub fn pop(&mut self) -> Option<Delivered> {
        let d = self.window.events.get(self.next).cloned();
        self.next += 1;
        d
    }
}

type Fill = Shared<BoxFuture<'static, Result<Arc<Window>, AppError>>>;

#[derive(Default)]
struct Cache {
    window: Arc<Window>,
    /// The read in flight, which every stream needing the same events awaits.
    fill: Option<Fill>,
}

/// One watched onboarding; lives while any of its streams does.
struct Topic {
    id: OnboardingId,
    /// Latest sequence known to exist; only moves forward.
    latest: AtomicI64,
    /// Woken when `latest` moves; a stream waits on one shard (its registration order), so
    /// thousands of streams of one onboarding do not all queue on one waiter list.
    moved: [Notify; MOVED_SHARDS],
    /// Streams registered ([`Watcher`]s alive).
    watchers: AtomicUsize,
    /// The onboarding's provider, once a stream read its snapshot: its steps' display names
    /// come from that provider's pipeline.
    provider: OnceLock<ProviderKind>,
    cache: Mutex<Cache>,
}

impl Topic {
    fn new(id: &OnboardingId) -> Self {
        Self {
            id: id.clone(),
            latest: AtomicI64::new(0),
            moved: std::array::from_fn(|_| Notify::new()),
            watchers: AtomicUsize::new(0),
            provider: OnceLock::new(),
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latest(&self) -> i64 {
        self.latest.load(Ordering::SeqCst)
    }

    /// Adds a committed event to the window: appended when it follows the window's last event,
    /// else (a gap, which an out-of-order notice can leave) a window of its own. Readers whose
    /// cursor lies before it read the store, as for any event out of the window.
    fn push(&self, delivered: Delivered, keep: usize) {
        let sequence = delivered.0.sequence;
        let mut cache = self.cache();
        let current = &cache.window;
        if current.hi() >= sequence && !current.is_empty() {
            return;
        }
        let (lo, events) = if !current.is_empty() && current.hi() == sequence - 1 {
            appended(current.lo, current.events.clone(), [delivered], keep)
        } else {
            (sequence - 1, vec![delivered])
        };
        cache.window = Arc::new(Window { lo, events, reached_end: true, known_at_start: sequence });
    }

    /// Moves the latest known sequence forward (never back); wakes the topic's streams.
    fn advance(&self, sequence: i64) {
        if self.latest.fetch_max(sequence, Ordering::SeqCst) < sequence {
            for shard in &self.moved {
                shard.notify_waiters();
            }
        }
    }
}

type Registry = HashMap<OnboardingId, Weak<Topic>>;

struct Inner {
    log: Arc<dyn EventLog>,
    registry: Mutex<Registry>,
    /// Events kept per watched onboarding beyond what the latest read returned.
    keep: usize,
    /// The heartbeat ticks, one per group of streams.
    beats: Vec<watch::Sender<u64>>,
    /// The group the next stream joins (round robin).
    next_slot: AtomicUsize,
    reconcile: Notify,
    /// The log's events marker when the last complete reconciliation started: while it has
    /// not moved, no event was committed since, so nothing can have been missed and the bulk
    /// read (most of an idle server's work on SQLite, 10,000 rows every few periods) is skipped.
    reconciled: Mutex<Option<i64>>,
    /// Open streams per tenant (only tenants with one open).
    open: Mutex<HashMap<TenantId, usize>>,
    /// The revocation watch of every API key holding streams open.
    keys: Arc<Mutex<KeyRegistry>>,
}

/// The fan-out hub.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

/// A stream's registration: dropped with the stream.
pub struct Watcher {
    topic: Arc<Topic>,
    log: Arc<dyn EventLog>,
    keep: usize,
    /// Which of the topic's waiter lists this stream waits on.
    shard: usize,
}

/// One open stream counted against its tenant's limit; dropped with the stream.
pub struct StreamPermit {
    inner: Weak<Inner>,
    tenant: TenantId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut open = inner.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&self.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.tenant);
                }
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.topic.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    /// A hub reading `log`, keeping at least `keep` recent events per watched onboarding.
    pub fn new(log: Arc<dyn EventLog>, keep: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                registry: Mutex::default(),
                keep: keep.max(1),
                beats: (0..BEAT_SLOTS).map(|_| watch::channel(0).0).collect(),
                next_slot: AtomicUsize::new(0),
                reconcile: Notify::new(),
                reconciled: Mutex::default(),
                open: Mutex::default(),
                keys: Arc::default(),
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more open stream of `tenant`, or refuses it `RESOURCE_EXHAUSTED` when the
    /// tenant already has `limit` open here: every open stream costs memory (and, when its
    /// client stops reading, the messages queued for it), so one tenant cannot take it all.
    pub fn open_stream(&self, tenant: &TenantId, limit: usize) -> Result<StreamPermit, AppError> {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(tenant.clone()).or_default();
        if *n >= limit {
            return Err(AppError::new(
                crate::error::ErrorCode::ResourceExhausted,
                format!("this tenant already has {limit} open streams (streams.max_per_tenant); close one and retry"),
            )
            .with_retry_after(Duration::from_secs(5)));
        }
        *n += 1;
        Ok(StreamPermit { inner: Arc::downgrade(&self.inner), tenant: tenant.clone() })
    }

    /// Open streams of `tenant` (for tests).
    pub fn open_streams(&self, tenant: &TenantId) -> usize {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).copied().unwrap_or(0)
    }

    /// The revocation watch of the key a stream of `tenant` was opened with, shared by every
    /// open stream of that key: one check per key per [`KeyRecheck::every`], however many
    /// streams it holds open, and no timer or wakeup per stream while the key stays valid.
    pub fn key_watch(&self, key: impl KeyRecheck, tenant: &TenantId) -> KeyWatch {
        let id = (key.id(), tenant.clone());
        let mut keys = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = keys.get(&id).and_then(Weak::upgrade) {
            return KeyWatch { state };
        }
        let state = Arc::new(KeyState::default());
        keys.insert(id.clone(), Arc::downgrade(&state));
        tokio::spawn(check_key(Arc::downgrade(&self.inner.keys), Arc::downgrade(&state), key, id));
        KeyWatch { state }
    }

    /// Registers interest in one onboarding.
    pub fn watch(&self, id: &OnboardingId) -> Watcher {
        let topic = {
            let mut reg = self.registry();
            match reg.get(id).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    let t = Arc::new(Topic::new(id));
                    reg.insert(id.clone(), Arc::downgrade(&t));
                    t
                }
            }
        };
        let shard = topic.watchers.fetch_add(1, Ordering::SeqCst) % MOVED_SHARDS;
        Watcher { log: self.inner.log.clone(), keep: self.inner.keep, topic, shard }
    }

    /// A heartbeat tick shared with a group of streams: changes once per heartbeat period, at
    /// its group's moment in the period.
    pub fn beat(&self) -> watch::Receiver<u64> {
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.beats.len();
        self.inner.beats[slot].subscribe()
    }

    fn topic(&self, id: &OnboardingId) -> Option<Arc<Topic>> {
        let mut reg = self.registry();
        match reg.get(id).map(Weak::upgrade) {
            Some(Some(t)) => Some(t),
            Some(None) => {
                reg.remove(id);
                None
            }
            None => None,
        }
    }

    /// Delivers one notice. One that carries its committed event puts the event in the
    /// topic's window first, so the streams woken take it from there without a store read.
    pub fn publish(&self, notice: &ChangeNotice) {
        if let Some(t) = self.topic(&notice.onboarding_id) {
            // Before any snapshot (no provider known yet) nobody can be waiting for the event
            // in the window: streams read it from the store.
            if let (Some(c), Some(provider)) = (&notice.committed, t.provider.get()) {
                let step = c.step.as_ref().map(|s| Arc::new(StepView::new(Some(*provider), s)));
                t.push((Arc::new(EventView::from(c.event.as_ref())), step), self.inner.keep);
            }
            t.advance(notice.sequence);
        }
    }

    /// Asks for a reconciliation of every watched onboarding with the store now (after a
    /// lagged notice stream, where we cannot know which onboardings changed).
    pub fn wake_all(&self) {
        self.inner.reconcile.notify_one();
    }

    /// Number of onboardings watched (for metrics and tests).
    pub fn watched(&self) -> usize {
        self.registry().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Reads the sequences of every watched onboarding in bulk and moves those that changed
    /// without a notice (another replica's lost notice, a lagged receiver).
    pub async fn reconcile(&self) -> Result<(), AppError> {
        // Closed streams' entries go whether or not the bulk read runs.
        self.registry().retain(|_, w| w.strong_count() > 0);
        // Read before the bulk read, so an event committed during it moves the marker and is
        // caught by the next reconciliation.
        let marker = self.inner.log.events_marker().await?;
        if marker.is_some() && marker == *self.reconciled() {
            return Ok(());
        }
        let topics: Vec<Arc<Topic>> = self.registry().values().filter_map(Weak::upgrade).collect();
        if topics.is_empty() {
            return Ok(());
        }
        let ids: Vec<OnboardingId> = topics.iter().map(|t| t.id.clone()).collect();
        let by_id: HashMap<&OnboardingId, &Arc<Topic>> = topics.iter().map(|t| (&t.id, t)).collect();
        for (id, sequence) in self.inner.log.latest_sequences(&ids).await? {
            if let Some(t) = by_id.get(&id) {
                t.advance(sequence);
            }
        }
        *self.reconciled() = marker;
        Ok(())
    }

    fn reconciled(&self) -> MutexGuard<'_, Option<i64>> {
        self.inner.reconciled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forwards the store's notices until the store's channel closes, ticks each heartbeat
    /// group every `heartbeat` (the groups evenly apart), and reconciles every few periods.
    pub async fn run(self, mut rx: broadcast::Receiver<ChangeNotice>, heartbeat: Duration) {
        let notices = async {
            loop {
                match rx.recv().await {
                    Ok(n) => self.publish(&n),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let ticks = async {
            let slots = self.inner.beats.len();
            let step = (heartbeat / slots as u32).max(Duration::from_millis(1));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                let due = tokio::select! {
                    _ = ticker.tick() => {
                        self.inner.beats[n as usize % slots].send_modify(|b| *b = b.wrapping_add(1));
                        n = n.wrapping_add(1);
                        n.is_multiple_of(RECONCILE_EVERY * slots as u64)
                    }
                    _ = self.inner.reconcile.notified() => true,
                };
                if due && let Err(error) = self.reconcile().await {
                    tracing::warn!(error = %error.message, "stream reconciliation with the store failed");
                }
            }
        };
        tokio::select! {
            _ = notices => {}
            _ = ticks => {}
        }
    }
}

/// What a stream's key is checked with (the authenticator's [`KeyCheck`], or a test double).
#[async_trait]
pub trait KeyRecheck: Send + Sync + 'static {
    /// Identifies the key (its hash): streams of the same key share one check.
    fn id(&self) -> [u8; 32];
    /// Time between two checks.
    fn every(&self) -> Duration;
    /// `UNAUTHENTICATED` once the key no longer maps to `tenant`.
    async fn recheck(&self, tenant: &TenantId) -> Result<(), AppError>;
}

#[async_trait]
impl KeyRecheck for KeyCheck {
    fn id(&self) -> [u8; 32] {
        *self.hash()
    }

    fn every(&self) -> Duration {
        KeyCheck::every(self)
    }

    async fn recheck(&self, tenant: &TenantId) -> Result<(), AppError> {
        KeyCheck::recheck(self, tenant).await
    }
}

type KeyRegistry = HashMap<([u8; 32], TenantId), Weak<KeyState>>;

/// One key's verdict, shared by its streams.
#[derive(Default)]
struct KeyState {
    /// Set once, when the key was found revoked.
    revoked: OnceLock<AppError>,
    /// Woken when `revoked` is set.
    notify: Notify,
}

/// A stream's share of its key's revocation watch; dropped with the stream.
pub struct KeyWatch {
    state: Arc<KeyState>,
}

impl KeyWatch {
    /// The error that ends the stream, once its key was found revoked.
    pub fn revoked(&self) -> Option<AppError> {
        self.state.revoked.get().cloned()
    }

    /// Waits until the key is found revoked.
    pub async fn revocation(&self) -> AppError {
        loop {
            // Registered before the check, so a revocation between the two still wakes us.
            let woken = self.state.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(e) = self.revoked() {
                return e;
            }
            woken.await;
        }
    }
}

/// Checks one key every [`KeyRecheck::every`] while any stream holds its watch; on revocation
/// tells every such stream, and forgets the key (a key put back in the config file later
/// starts afresh).
async fn check_key(
    registry: Weak<Mutex<KeyRegistry>>,
    state: Weak<KeyState>,
    key: impl KeyRecheck,
    id: ([u8; 32], TenantId),
) {
    let forget = |registry: &Weak<Mutex<KeyRegistry>>| {
        if let Some(r) = registry.upgrade() {
            let mut keys = r.lock().unwrap_or_else(|e| e.into_inner());
            if keys.get(&id).is_some_and(|w| w.ptr_eq(&state)) {
                keys.remove(&id);
            }
        }
    };
    loop {
        tokio::time::sleep(key.every()).await;
        if state.strong_count() == 0 {
            break;
        }
        if let Err(e) = key.recheck(&id.1).await {
            forget(&registry);
            if let Some(s) = state.upgrade() {
                let _ = s.revoked.set(e);
                s.notify.notify_waiters();
            }
            return;
        }
    }
    forget(&registry);
}

impl Watcher {
    /// Records a sequence known to exist (the snapshot's), so shared reads account for it,
    /// and the onboarding's provider (its step views' display names).
    pub fn observe(&self, sequence: i64, provider: ProviderKind) {
        // An onboarding's provider never changes, so the first one set is the one.
        let _ = self.topic.provider.set(provider);
        self.topic.advance(sequence);
    }

    /// The latest sequence known to exist (may run ahead of what was read).
    pub fn latest(&self) -> i64 {
        self.topic.latest()
    }

    /// Waits until the latest known sequence passes `seen`, and returns it.
    pub async fn moved_past(&self, seen: i64) -> i64 {
        loop {
            // Registered before the check, so a move between the two still wakes us.
            let moved = self.topic.moved[self.shard].notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let latest = self.topic.latest();
            if latest > seen {
                return latest;
            }
            moved.await;
        }
    }

    /// The events after `cursor`, where `known > cursor` is a sequence known to exist: from
    /// the shared window when it covers the cursor, else from one shared read, else (cursor
    /// before the cached range) from a read of this stream's own. `None` when the store has
    /// nothing after `cursor` yet.
    pub async fn events_after(&self, cursor: i64, known: i64) -> Result<Option<Batch>, AppError> {
        for _ in 0..FILL_ROUNDS {
            let fill = {
                let mut cache = self.topic.cache();
                if let Some(b) = Batch::after(&cache.window, cursor) {
                    if self.topic.watchers.load(Ordering::SeqCst) <= 1 {
                        // A lone stream holds what it takes until sent; nothing to keep.
                        cache.window = Arc::default();
                    }
                    return Ok(Some(b));
                }
                if !cache.window.is_empty() && cursor < cache.window.lo {
                    break;
                }
                match &cache.fill {
                    Some(f) => f.clone(),
                    None => {
                        let f = self.start_fill(&cache.window, cursor);
                        cache.fill = Some(f.clone());
                        f
                    }
                }
            };
            let window = fill.await?;
            if let Some(b) = Batch::after(&window, cursor) {
                return Ok(Some(b));
            }
            if cursor >= window.hi() && window.reached_end && window.known_at_start >= known {
                return Ok(None);
            }
        }
        let (log, id, provider) = (self.log.clone(), self.topic.id.clone(), self.topic.provider.get().copied());
        let own =
            detached(async move { read_window(log.as_ref(), &id, provider, cursor, None, usize::MAX, known).await })
                .await?;
        Ok(Batch::after(&Arc::new(own), cursor))
    }

    /// A shared read of the events after `cursor`: appended to `current` when the cursor is
    /// at its end, else replacing it. Installs its window when done; holds the topic weakly
    /// so an abandoned read never keeps it alive.
    fn start_fill(&self, current: &Arc<Window>, cursor: i64) -> Fill {
        let base = (!current.is_empty() && cursor == current.hi()).then(|| current.clone());
        let topic = Arc::downgrade(&self.topic);
        let log = self.log.clone();
        let id = self.topic.id.clone();
        let keep = self.keep;
        let known = self.topic.latest();
        let provider = self.topic.provider.get().copied();
        detached(async move {
            let r = read_window(log.as_ref(), &id, provider, cursor, base.as_deref(), keep, known).await.map(Arc::new);
            if let Some(t) = topic.upgrade() {
                let shared = t.watchers.load(Ordering::SeqCst) > 1;
                let mut cache = t.cache();
                cache.fill = None;
                match &r {
                    // Kept for the other streams of this onboarding; a lone stream holds the
                    // window until sent, so there is nothing to keep.
                    Ok(w) if cache.window.is_empty() || w.hi() >= cache.window.hi() => {
                        cache.window = if shared { w.clone() } else { Arc::default() };
                    }
                    // A committed event pushed meanwhile moved the window past this read.
                    Ok(_) | Err(_) => {}
                }
            }
            r
        })
        .boxed()
        .shared()
    }
}

/// Reads one page of events after `from` (and, when any concerns a step, the steps once),
/// appended to `base` if given, keeping at least `keep` events and everything just read.
async fn read_window(
    log: &dyn EventLog,
    id: &OnboardingId,
    provider: Option<ProviderKind>,
    from: i64,
    base: Option<&Window>,
    keep: usize,
    known_at_start: i64,
) -> Result<Window, AppError> {
    let events = log.events(id, from, PAGE).await?;
    let reached_end = events.len() < PAGE as usize;
    let steps: Vec<Arc<StepView>> = if events.iter().any(|e| e.step.is_some()) {
        log.steps(id).await?.iter().map(|s| Arc::new(StepView::new(provider, s))).collect()
    } else {
        Vec::new()
    };
    let fresh = events.into_iter().map(|e| {
        let step = e.step.as_ref().and_then(|s| steps.iter().find(|st| &st.name == s).cloned());
        (Arc::new(EventView::from(e)), step)
    });
    let (lo, all) = match base {
        Some(b) => appended(b.lo, b.events.clone(), fresh, keep),
        None => appended(from, Vec::new(), fresh, keep),
    };
    Ok(Window { lo, events: all, reached_end, known_at_start })
}

/// `events` (all after `lo`) with `fresh` appended, cut from the front to at least `keep`
/// events and everything fresh; returns the new `lo` with them.
fn appended(
    mut lo: i64,
    mut events: Vec<Delivered>,
    fresh: impl IntoIterator<Item = Delivered>,
    keep: usize,
) -> (i64, Vec<Delivered>) {
    let before = events.len();
    events.extend(fresh);
    let keep = keep.max(events.len() - before);
    if events.len() > keep {
        let cut = events.len() - keep;
        lo = events[cut - 1].0.sequence;
        events.drain(..cut);
    }
    (lo, events)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::domain::OnboardingState;

    /// An in-memory event log that counts reads and can hold them until released.
    #[derive(Default)]
    struct Log {
        events: Mutex<Vec<EventRecord>>,
        steps: Mutex<Vec<StepRecord>>,
        event_reads: AtomicUsize,
        step_reads: AtomicUsize,
        /// Bulk reads of the latest sequences.
        bulk_reads: AtomicUsize,
        gate: tokio::sync::RwLock<()>,
    }

    impl Log {
        fn push(&self, step: Option<&str>) -> i64 {
            let mut events = self.events.lock().unwrap();
            let sequence = events.len() as i64 + 1;
            events.push(EventRecord {
                onboarding_id: id(),
                sequence,
                kind: crate::domain::EventKind::Callback,
                state: OnboardingState::Provisioning,
                previous_state: OnboardingState::Provisioning,
                reason: String::new(),
                provider_status: String::new(),
                step: step.map(String::from),
                data_json: "{}".into(),
                created_ms: sequence,
            });
            sequence
        }

        fn reads(&self) -> usize {
            self.event_reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl EventLog for Log {
        async fn events(&self, _: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
            let _open = self.gate.read().await;
            self.event_reads.fetch_add(1, Ordering::SeqCst);
            let events = self.events.lock().unwrap();
            Ok(events.iter().filter(|e| e.sequence > after).take(limit as usize).cloned().collect())
        }

        async fn steps(&self, _: &OnboardingId) -> StoreResult<Vec<StepRecord>> {
            self.step_reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.steps.lock().unwrap().clone())
        }

        async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>> {
            self.bulk_reads.fetch_add(1, Ordering::SeqCst);
            let last = self.events.lock().unwrap().len() as i64;
            Ok(ids.iter().filter(|i| **i == id()).map(|i| (i.clone(), last)).collect())
        }

        // As SQLite's: grows with every event appended.
        async fn events_marker(&self) -> StoreResult<Option<i64>> {
            Ok(Some(self.events.lock().unwrap().len() as i64))
        }
    }

    fn id() -> OnboardingId {
        OnboardingId::parse("a").unwrap()
    }

    fn bus(log: &Arc<Log>, keep: usize) -> Bus {
        Bus::new(log.clone(), keep)
    }

    /// A log of `n` events and two watchers (so the window is shared and kept) over a bus
    /// keeping `keep` of them.
    fn watched_log(n: usize, keep: usize) -> (Arc<Log>, Bus, Watcher, Watcher) {
        let log = Arc::new(Log::default());
        for _ in 0..n {
            log.push(None);
        }
        let bus = bus(&log, keep);
        let (w, other) = (bus.watch(&id()), bus.watch(&id()));
        // As `watch_onboarding` does once it read the snapshot.
        w.observe(0, ProviderKind::Gupshup);
        (log, bus, w, other)
    }

    /// Every event after `cursor` up to `known`, as a stream would collect them.
    async fn drain(w: &Watcher, mut cursor: i64, known: i64) -> Vec<i64> {
        let mut seen = Vec::new();
        while cursor < known {
            let Some(mut b) = w.events_after(cursor, known).await.unwrap() else { break };
            while let Some((e, _)) = b.pop() {
                assert_eq!(e.sequence, cursor + 1, "gap-free");
                cursor = e.sequence;
                seen.push(cursor);
            }
        }
        seen
    }

    #[tokio::test]
    async fn wakes_only_the_watched_onboarding() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 8);
        let a = id();
        let b = OnboardingId::parse("b").unwrap();
        let wa = bus.watch(&a);
        let wb = bus.watch(&b);
        let waiting = wa.moved_past(0);
        bus.publish(&ChangeNotice::moved(a.clone(), 3));
        assert_eq!(waiting.await, 3);
        assert_eq!(wb.latest(), 0);
        // Older notices never move the cursor back.
        bus.publish(&ChangeNotice::moved(a.clone(), 2));
        assert_eq!(wa.latest(), 3);
        drop(wa);
        drop(wb);
        assert_eq!(bus.watched(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_streams_share_one_read() {
        let log = Arc::new(Log::default());
        log.push(None);
        log.push(Some("link"));
        let step = crate::store::conformance::step(&id(), "link", 0, crate::domain::StepState::Running, None);
        log.steps.lock().unwrap().push(step);
        let bus = bus(&log, 8);
        let watchers: Vec<Arc<Watcher>> = (0..50).map(|_| Arc::new(bus.watch(&id()))).collect();
        bus.publish(&ChangeNotice::moved(id(), 2));
        // Hold the store read until every stream waits, so they all overlap it.
        let hold = log.gate.write().await;
        let tasks: Vec<_> = watchers
            .iter()
            .map(|w| {
                let w = w.clone();
                tokio::spawn(async move { w.events_after(0, 2).await.unwrap().expect("events") })
            })
            .collect();
        // Every stream awaits the one read in flight (50 clones plus the cache's own).
        let topic = watchers[0].topic.clone();
        while topic.cache().fill.as_ref().and_then(Shared::strong_count) != Some(51) {
            tokio::task::yield_now().await;
        }
        drop(hold);
        let mut batches = Vec::new();
        for t in tasks {
            batches.push(t.await.unwrap());
        }
        assert_eq!(log.reads(), 1, "one store read for 50 streams");
        assert_eq!(log.step_reads.load(Ordering::SeqCst), 1);
        let (e1, s1) = batches[0].pop().unwrap();
        let (e2, s2) = batches[0].pop().unwrap();
        assert_eq!((e1.sequence, e2.sequence), (1, 2));
        assert!(s1.is_none());
        assert_eq!(s2.as_ref().map(|s| s.name.as_str()), Some("link"));
        // Shared, not copied.
        let (other, other_step) = batches[49].nth_for_test(1);
        assert!(Arc::ptr_eq(&e2, &other));
        assert!(Arc::ptr_eq(s2.as_ref().unwrap(), other_step.as_ref().unwrap()));
        // The next event: one more read, appended to the window.
        log.push(None);
        for w in &watchers {
            assert_eq!(drain(w, 2, 3).await, vec![3]);
        }
        assert_eq!(log.reads(), 2);
    }

    impl Batch {
        fn nth_for_test(&self, n: usize) -> Delivered {
            self.window.events[self.next + n].clone()
        }
    }

    #[tokio::test]
    async fn streams_before_the_window_read_on_their_own_without_gaps() {
        let (log, _bus, w, _other) = watched_log(10, 4);
        // An up-to-date stream fills the window from 8; it keeps at least 4 events.
        assert_eq!(drain(&w, 8, 10).await, vec![9, 10]);
        for _ in 0..6 {
            log.push(None);
        }
        assert_eq!(drain(&w, 10, 16).await, (11..=16).collect::<Vec<_>>());
        assert_eq!(log.reads(), 2);
        let reads = log.reads();
        // A stream from the start lies before the window (10, 16]: own reads, then the window.
        assert_eq!(drain(&w, 0, 16).await, (1..=16).collect::<Vec<_>>());
        assert_eq!(log.reads(), reads + 1, "one own read reaches the end");
        // Within the window: no read at all.
        assert_eq!(drain(&w, 13, 16).await, vec![14, 15, 16]);
        assert_eq!(log.reads(), reads + 1);
        // Nothing after the end: None, not an endless retry.
        assert!(w.events_after(16, 16).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn long_catch_up_pages_and_window_is_bounded() {
        let (log, _bus, w, _other) = watched_log(450, 4);
        assert_eq!(drain(&w, 0, 450).await, (1..=450).collect::<Vec<_>>());
        // Three pages: 200 + 200 + 50, each kept whole while it is the newest read.
        assert_eq!(log.reads(), 3);
        let window = w.topic.cache().window.clone();
        assert_eq!((window.lo, window.hi(), window.events.len()), (400, 450, 50));
        log.push(None);
        drain(&w, 450, 451).await;
        let window = w.topic.cache().window.clone();
        assert_eq!((window.lo, window.hi()), (447, 451), "evicted down to `keep`");
    }

    #[tokio::test]
    async fn a_topic_dies_with_its_last_stream() {
        let (_log, bus, w, other) = watched_log(1, 4);
        drain(&w, 0, 1).await;
        let weak = Arc::downgrade(&w.topic);
        drop(w);
        assert!(!weak.upgrade().unwrap().cache().window.is_empty(), "kept while a stream is left");
        drop(other);
        assert!(weak.upgrade().is_none(), "window freed with the topic");
        assert_eq!(bus.watched(), 0);
        // A new watcher starts with an empty window.
        let w = bus.watch(&id());
        assert!(w.topic.cache().window.is_empty());
    }

    #[tokio::test]
    async fn a_lone_stream_keeps_no_window() {
        let log = Arc::new(Log::default());
        log.push(None);
        log.push(None);
        let bus = bus(&log, 4);
        let w = bus.watch(&id());
        assert_eq!(drain(&w, 0, 2).await, vec![1, 2]);
        assert!(w.topic.cache().window.is_empty(), "nothing kept for nobody");
        // A second stream: from then on the window is kept for both.
        let other = bus.watch(&id());
        log.push(None);
        assert_eq!(drain(&w, 2, 3).await, vec![3]);
        assert!(!w.topic.cache().window.is_empty());
        let reads = log.reads();
        assert_eq!(drain(&other, 2, 3).await, vec![3]);
        assert_eq!(log.reads(), reads, "the second stream read the kept window");
    }

    /// The notice this replica's store sends for the log's event `sequence`.
    fn committed(log: &Log, sequence: i64) -> ChangeNotice {
        let event = log.events.lock().unwrap()[sequence as usize - 1].clone();
        let steps = log.steps.lock().unwrap().clone();
        ChangeNotice::committed(&event, &steps)
    }

    #[tokio::test]
    async fn committed_events_reach_streams_without_a_read() {
        let (log, bus, w, other) = watched_log(2, 4);
        assert_eq!(drain(&w, 0, 2).await, vec![1, 2]);
        let reads = log.reads();
        let step = crate::store::conformance::step(&id(), "link", 0, crate::domain::StepState::Running, None);
        log.steps.lock().unwrap().push(step);
        let mut cursors = [2, 2];
        for _ in 0..5 {
            let sequence = log.push(Some("link"));
            bus.publish(&committed(&log, sequence));
            for (stream, cursor) in [&w, &other].into_iter().zip(cursors.iter_mut()) {
                let mut b = stream.events_after(*cursor, sequence).await.unwrap().expect("from the window");
                while let Some((e, s)) = b.pop() {
                    assert_eq!(e.sequence, *cursor + 1, "gap-free");
                    assert_eq!(s.map(|s| s.name.clone()).as_deref(), Some("link"), "with its step");
                    *cursor = e.sequence;
                }
                assert_eq!(*cursor, sequence);
            }
        }
        assert_eq!(log.reads(), reads, "no store read");
        assert_eq!(log.step_reads.load(Ordering::SeqCst), 0);
        let window = w.topic.cache().window.clone();
        assert_eq!((window.lo, window.hi()), (3, 7), "bounded to `keep`");
        // A stream behind the window still gets everything, from the store.
        assert_eq!(drain(&w, 0, 7).await, (1..=7).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_committed_event_after_a_gap_starts_a_window_of_its_own() {
        let (log, bus, w, _other) = watched_log(1, 8);
        assert_eq!(drain(&w, 0, 1).await, vec![1]);
        // Event 2's notice is late: 3's arrives first.
        log.push(None);
        let third = log.push(None);
        bus.publish(&committed(&log, third));
        let window = w.topic.cache().window.clone();
        assert_eq!((window.lo, window.hi()), (2, 3));
        let reads = log.reads();
        assert_eq!(drain(&w, 1, 3).await, vec![2, 3], "the gap read from the store");
        assert_eq!(log.reads(), reads + 1);
        // The late notice changes nothing; a stale one never moves the window back.
        bus.publish(&committed(&log, 2));
        assert_eq!(w.topic.cache().window.hi(), 3);
        assert_eq!(w.latest(), 3);
    }

    #[tokio::test]
    async fn a_lone_stream_takes_the_committed_event_and_keeps_nothing() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let w = bus.watch(&id());
        w.observe(0, ProviderKind::Gupshup);
        let sequence = log.push(None);
        bus.publish(&committed(&log, sequence));
        assert_eq!(drain(&w, 0, 1).await, vec![1]);
        assert_eq!(log.reads(), 0);
        assert!(w.topic.cache().window.is_empty(), "nothing kept for nobody");
    }

    #[tokio::test]
    async fn a_committed_event_before_the_snapshot_is_read_from_the_store() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let w = bus.watch(&id());
        let sequence = log.push(None);
        bus.publish(&committed(&log, sequence));
        assert!(w.topic.cache().window.is_empty(), "no provider known: no step view to make yet");
        w.observe(sequence, ProviderKind::Gupshup);
        assert_eq!(drain(&w, 0, 1).await, vec![1]);
        assert_eq!(log.reads(), 1);
    }

    #[tokio::test]
    async fn step_views_carry_their_providers_display_name() {
        let (log, bus, w, _other) = watched_log(0, 4);
        let step = crate::store::conformance::step(&id(), "link_app", 0, crate::domain::StepState::Running, None);
        log.steps.lock().unwrap().push(step);
        let first = log.push(Some("link_app"));
        let mut read = w.events_after(0, first).await.unwrap().expect("read");
        let (_, step) = read.pop().expect("one event");
        let shown = step.expect("its step").display_name.clone();
        assert_eq!(shown, "Link the WABA and phone to a new Gupshup app", "from the store");
        let second = log.push(Some("link_app"));
        bus.publish(&committed(&log, second));
        let mut pushed = w.events_after(first, second).await.unwrap().expect("from the window");
        let (_, step) = pushed.pop().expect("one event");
        assert_eq!(step.expect("its step").display_name, shown, "committed");
    }

    #[tokio::test]
    async fn a_committed_event_of_an_unwatched_onboarding_is_dropped() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let sequence = log.push(None);
        bus.publish(&committed(&log, sequence));
        assert_eq!(bus.watched(), 0);
        let w = bus.watch(&id());
        assert!(w.topic.cache().window.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_go_out_in_groups_spread_over_the_period() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let (_tx, rx) = broadcast::channel(1);
        let period = Duration::from_millis(1600);
        let step = period / BEAT_SLOTS as u32;
        tokio::spawn(bus.clone().run(rx, period));
        let mut beats: Vec<watch::Receiver<u64>> = (0..2 * BEAT_SLOTS).map(|_| bus.beat()).collect();
        let mut count = vec![0; beats.len()];
        tokio::time::sleep(step / 2).await;
        for _ in 0..2 * BEAT_SLOTS {
            tokio::time::sleep(step).await;
            let mut woken = 0;
            for (b, c) in beats.iter_mut().zip(&mut count) {
                if b.has_changed().unwrap() {
                    b.borrow_and_update();
                    *c += 1;
                    woken += 1;
                }
            }
            assert_eq!(woken, 2, "each tick wakes one group");
        }
        assert!(count.iter().all(|c| *c == 2), "every stream beats once a period: {count:?}");
    }

    #[test]
    fn open_streams_are_bounded_per_tenant() {
        let bus = bus(&Arc::new(Log::default()), 4);
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let first = bus.open_stream(&a, 2).unwrap();
        let _second = bus.open_stream(&a, 2).unwrap();
        let refused = bus.open_stream(&a, 2).err().unwrap();
        assert_eq!(refused.code, crate::error::ErrorCode::ResourceExhausted);
        assert!(refused.message.contains("streams.max_per_tenant"), "{}", refused.message);
        assert!(refused.retry_after.is_some());
        let _other = bus.open_stream(&b, 2).expect("another tenant has its own count");
        drop(first);
        assert_eq!(bus.open_streams(&a), 1);
        let _again = bus.open_stream(&a, 2).expect("a closed stream frees its place");
    }

    /// A key that counts its checks and is revoked on demand.
    #[derive(Clone, Default)]
    struct Key {
        checks: Arc<AtomicUsize>,
        revoked: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl KeyRecheck for Key {
        fn id(&self) -> [u8; 32] {
            [7; 32]
        }

        fn every(&self) -> Duration {
            Duration::from_secs(1)
        }

        async fn recheck(&self, _: &TenantId) -> Result<(), AppError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.revoked.load(Ordering::SeqCst) {
                Err(AppError::new(crate::error::ErrorCode::Unauthenticated, "revoked"))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_check_serves_all_its_streams_and_revocation_reaches_each() {
        let bus = bus(&Arc::new(Log::default()), 4);
        let key = Key::default();
        let tenant = TenantId::parse("t").unwrap();
        let watches: Vec<KeyWatch> = (0..100).map(|_| bus.key_watch(key.clone(), &tenant)).collect();
        let waiting: Vec<_> = watches
            .iter()
            .map(|w| {
                tokio::spawn({
                    let state = w.state.clone();
                    async move { KeyWatch { state }.revocation().await }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(key.checks.load(Ordering::SeqCst), 3, "one check per period for 100 streams");
        assert!(watches.iter().all(|w| w.revoked().is_none()));
        key.revoked.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for w in waiting {
            assert_eq!(w.await.unwrap().code, crate::error::ErrorCode::Unauthenticated);
        }
        assert!(watches.iter().all(|w| w.revoked().is_some()), "seen without waiting too");
        // A stream opened after the revocation starts a fresh watch (the layer refuses a
        // revoked key; a key put back in the config file is valid again).
        key.revoked.store(false, Ordering::SeqCst);
        let later = bus.key_watch(key.clone(), &tenant);
        assert!(later.revoked().is_none());
        // Another tenant's streams of an equal key id are watched apart.
        let other = bus.key_watch(key.clone(), &TenantId::parse("u").unwrap());
        assert!(!Arc::ptr_eq(&other.state, &later.state));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_no_longer_checked_once_its_streams_closed() {
        let bus = bus(&Arc::new(Log::default()), 4);
        let key = Key::default();
        let tenant = TenantId::parse("t").unwrap();
        let w = bus.key_watch(key.clone(), &tenant);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(key.checks.load(Ordering::SeqCst), 1);
        drop(w);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(key.checks.load(Ordering::SeqCst), 1, "no check for nobody");
        assert!(bus.inner.keys.lock().unwrap().is_empty(), "forgotten");
    }

    #[tokio::test]
    async fn reconcile_catches_a_missed_notice() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let w = bus.watch(&id());
        log.push(None);
        log.push(None);
        assert_eq!(w.latest(), 0);
        bus.reconcile().await.unwrap();
        assert_eq!(w.moved_past(0).await, 2);
    }

    #[tokio::test]
    async fn reconcile_skips_its_bulk_read_until_an_event_was_committed() {
        let log = Arc::new(Log::default());
        let bus = bus(&log, 4);
        let w = bus.watch(&id());
        log.push(None);
        bus.reconcile().await.unwrap();
        assert_eq!((log.bulk_reads.load(Ordering::SeqCst), w.latest()), (1, 1));
        // Nothing committed since: nothing to miss, no bulk read.
        bus.reconcile().await.unwrap();
        bus.reconcile().await.unwrap();
        assert_eq!(log.bulk_reads.load(Ordering::SeqCst), 1);
        // An event whose notice was lost moves the marker: read, and caught.
        log.push(None);
        bus.reconcile().await.unwrap();
        assert_eq!(log.bulk_reads.load(Ordering::SeqCst), 2);
        assert_eq!(w.moved_past(1).await, 2);
        // A log without a marker (PostgreSQL) reads every time.
        struct NoMarker(Arc<Log>);
        #[async_trait]
        impl EventLog for NoMarker {
            async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
                self.0.events(id, after, limit).await
            }
            async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>> {
                self.0.steps(id).await
            }
            async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>> {
                self.0.latest_sequences(ids).await
            }
        }
        let plain = Bus::new(Arc::new(NoMarker(log.clone())), 4);
        let _w = plain.watch(&id());
        plain.reconcile().await.unwrap();
        plain.reconcile().await.unwrap();
        assert_eq!(log.bulk_reads.load(Ordering::SeqCst), 4);
    }
}
