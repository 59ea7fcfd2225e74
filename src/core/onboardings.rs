//! Reading onboardings, their event logs and pipelines, and streaming them: snapshot first,
//! then every event from the store in sequence order, read through the bus's shared cache, with
//! heartbeats.

use std::sync::Arc;

use futures::Stream;

use super::bus::{Batch, KeyWatch, StreamPermit, Watcher};
use super::tenants::KeyCheck;
use super::views::{EventView, OnboardingQuery, OnboardingView, StepView};
use super::{Caller, Core};
use crate::domain::{OnboardingId, UnixMs, now_ms};
use crate::domain::{Page, PageRequest};
use crate::error::AppError;
use crate::store::{OnboardingFilter, OnboardingRecord};

/// One item of an onboarding or pipeline stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The current onboarding and its steps; always first.
    Snapshot(Box<OnboardingView>, Vec<StepView>),
    /// One event, with the step it concerns as read with it; shared by every stream of the
    /// onboarding.
    Event(Arc<EventView>, Option<Arc<StepView>>),
    /// Nothing happened.
    Heartbeat {
        /// Server time.
        at_ms: UnixMs,
        /// Latest sequence sent.
        last_sequence: i64,
    },
}

impl Core {
    /// One of the caller's onboardings, as stored (for use cases; callers get
    /// [`OnboardingView`]s).
    pub async fn get_onboarding(&self, caller: &Caller, id: &OnboardingId) -> Result<OnboardingRecord, AppError> {
        self.store
            .onboarding(&caller.tenant, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("onboardings/{}", id.name())))
    }

    /// The caller's onboardings.
    pub async fn list_onboardings(
        &self,
        caller: &Caller,
        query: &OnboardingQuery,
        page: &PageRequest,
    ) -> Result<Page<OnboardingView>, AppError> {
        let filter = OnboardingFilter::from(query);
        Ok(self.store.list_onboardings(&caller.tenant, &filter, page).await?.map(OnboardingView::from))
    }

    /// A page of an onboarding's event log after `after`.
    pub async fn list_events(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        after: i64,
        limit: u32,
    ) -> Result<Page<EventView>, AppError> {
        self.get_onboarding(caller, id).await?;
        let mut items = self.store.events(id, after, limit + 1).await?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.sequence.to_string())
        } else {
            None
        };
        Ok(Page { items: items.into_iter().map(EventView::from).collect(), next_page_token: next })
    }

    /// An onboarding and its steps, read in one snapshot.
    pub async fn get_pipeline(
        &self,
        caller: &Caller,
        id: &OnboardingId,
    ) -> Result<(OnboardingView, Vec<StepView>), AppError> {
        let (o, steps) = self
            .store
            .pipeline(&caller.tenant, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("onboardings/{}", id.name())))?;
        let steps = StepView::all(o.provider, &steps);
        Ok((OnboardingView::from(o), steps))
    }

    /// Streams an onboarding: the snapshot, then events with `sequence > after`, gap-free,
    /// then heartbeats when idle. A state machine polled by the transport (no task, no
    /// channel), so a slow consumer is back-pressured by HTTP/2 flow control and nothing is
    /// buffered beyond the shared window of the bus. Ends when dropped or at shutdown, and
    /// `UNAUTHENTICATED` when `key` (the API key it was opened with) is revoked. Counts against
    /// the tenant's `streams.max_per_tenant`.
    pub async fn watch_onboarding(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        after: i64,
        key: Option<KeyCheck>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<impl Stream<Item = Result<StreamItem, AppError>> + Send + 'static, AppError> {
        if after < 0 {
            return Err(AppError::invalid("after_sequence", "must not be negative"));
        }
        let permit = self.bus.open_stream(&caller.tenant, self.settings.streams.max_per_tenant)?;
        // Register before reading the snapshot, so a change between the two is not missed.
        let watcher = self.bus.watch(id);
        let (onboarding, steps) = self.get_pipeline(caller, id).await?;
        watcher.observe(onboarding.sequence, onboarding.provider);
        let state = WatchState {
            known: onboarding.sequence,
            seen: onboarding.sequence,
            snapshot: Some(StreamItem::Snapshot(Box::new(onboarding), steps)),
            cursor: after,
            batch: None,
            watcher,
            beat: self.bus.beat(),
            shutdown,
            ended: false,
            key: key.map(|k| self.bus.key_watch(k, &caller.tenant)),
            _permit: permit,
        };
        Ok(futures::stream::unfold(state, |mut st| async move { st.next().await.map(|item| (item, st)) }))
    }
}

/// One stream's state between two items.
struct WatchState {
    /// Sent first, then dropped.
    snapshot: Option<StreamItem>,
    /// Latest sequence sent (or the resume point).
    cursor: i64,
    /// Latest sequence known to exist.
    known: i64,
    /// Latest sequence the bus told this stream about: it waits for the bus to move past it,
    /// so an event known but not readable yet is retried at the next move or tick, not in a
    /// busy loop.
    seen: i64,
    /// Events read and not yet sent.
    batch: Option<Batch>,
    watcher: Watcher,
    /// The shared heartbeat tick.
    beat: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    ended: bool,
    /// The revocation watch of the stream's API key, shared with every stream of that key
    /// (one check per key, no timer per stream).
    key: Option<KeyWatch>,
    _permit: StreamPermit,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<StreamItem, AppError>> {
        if let Some(s) = self.snapshot.take() {
            return Some(Ok(s));
        }
        if self.ended {
            return None;
        }
        loop {
            // A stream that always has events to send never waits below: its key's revocation
            // is seen here too.
            if let Some(e) = self.key.as_ref().and_then(KeyWatch::revoked) {
                self.ended = true;
                return Some(Err(e));
            }
            if let Some((event, step)) = self.batch.as_mut().and_then(Batch::pop) {
                self.cursor = event.sequence;
                return Some(Ok(StreamItem::Event(event, step)));
            }
            self.batch = None;
            if self.cursor < self.known {
                // Boxed: only while reading, so an idle stream's state stays small.
                match Box::pin(self.watcher.events_after(self.cursor, self.known)).await {
                    Ok(Some(b)) => {
                        self.batch = Some(b);
                        continue;
                    }
                    // Not readable yet: retried at the next change or tick.
                    Ok(None) => self.known = self.cursor,
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
            }
            tokio::select! {
                latest = self.watcher.moved_past(self.seen) => {
                    self.seen = latest;
                    self.known = self.known.max(latest);
                }
                r = self.beat.changed() => {
                    r.ok()?;
                    self.known = self.known.max(self.watcher.latest());
                    if self.cursor >= self.known {
                        return Some(Ok(StreamItem::Heartbeat { at_ms: now_ms(), last_sequence: self.cursor }));
                    }
                }
                _ = self.shutdown.changed() => return None,
                e = async {
                    match self.key.as_ref() {
                        Some(k) => k.revocation().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
