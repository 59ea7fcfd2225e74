//! Reading onboardings, their event logs and pipelines, and streaming them: snapshot first,
//! then every event from the store in sequence order, woken by the bus, with heartbeats.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Caller, Core};
use crate::domain::{OnboardingId, UnixMs, now_ms};
use crate::error::AppError;
use crate::store::{EventRecord, OnboardingFilter, OnboardingRecord, Page, PageRequest, StepRecord};

/// One item of an onboarding or pipeline stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The current onboarding and its steps; always first.
    Snapshot(Box<OnboardingRecord>, Vec<StepRecord>),
    /// One event, with the steps as they are after it when the event concerns a step.
    Event(Box<EventRecord>, Option<Box<StepRecord>>),
    /// Nothing happened.
    Heartbeat {
        /// Server time.
        at_ms: UnixMs,
        /// Latest sequence sent.
        last_sequence: i64,
    },
}

/// How many events one store read returns while catching up.
const PAGE: u32 = 200;

impl Core {
    /// One of the caller's onboardings.
    pub async fn get_onboarding(&self, caller: &Caller, id: &OnboardingId) -> Result<OnboardingRecord, AppError> {
        self.store.onboarding(&caller.tenant, id).await?.ok_or_else(|| AppError::not_found(format!("onboardings/{id}")))
    }

    /// The caller's onboardings.
    pub async fn list_onboardings(
        &self,
        caller: &Caller,
        filter: &OnboardingFilter,
        page: &PageRequest,
    ) -> Result<Page<OnboardingRecord>, AppError> {
        Ok(self.store.list_onboardings(&caller.tenant, filter, page).await?)
    }

    /// A page of an onboarding's event log after `after`.
    pub async fn list_events(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        after: i64,
        limit: u32,
    ) -> Result<Page<EventRecord>, AppError> {
        self.get_onboarding(caller, id).await?;
        let mut items = self.store.events(id, after, limit + 1).await?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.sequence.to_string())
        } else {
            None
        };
        Ok(Page { items, next_page_token: next })
    }

    /// An onboarding and its steps.
    pub async fn get_pipeline(
        &self,
        caller: &Caller,
        id: &OnboardingId,
    ) -> Result<(OnboardingRecord, Vec<StepRecord>), AppError> {
        let o = self.get_onboarding(caller, id).await?;
        let steps = self.store.steps(id).await?;
        Ok((o, steps))
    }

    /// Streams an onboarding. The receiver yields the snapshot, then events with
    /// `sequence > after`, gap-free, then heartbeats when idle. The stream ends when the
    /// receiver is dropped or the server shuts down.
    pub async fn watch_onboarding(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        after: i64,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<mpsc::Receiver<Result<StreamItem, AppError>>, AppError> {
        if after < 0 {
            return Err(AppError::invalid("after_sequence", "must not be negative"));
        }
        // Register before reading the snapshot, so a change between the two is not missed.
        let watcher = self.bus.watch(id);
        let (onboarding, steps) = self.get_pipeline(caller, id).await?;
        let (tx, rx) = mpsc::channel(self.settings.streams.buffer);
        let core = self.clone();
        let id = id.clone();
        let heartbeat = Duration::from_secs(self.settings.streams.heartbeat_secs);
        tokio::spawn(async move {
            let mut cursor = after;
            let snapshot_seq = onboarding.sequence;
            if tx.send(Ok(StreamItem::Snapshot(Box::new(onboarding), steps))).await.is_err() {
                return;
            }
            core.stream_loop(&id, &mut cursor, snapshot_seq, watcher, heartbeat, shutdown, &tx).await;
        });
        Ok(rx)
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_loop(
        &self,
        id: &OnboardingId,
        cursor: &mut i64,
        mut known: i64,
        mut watcher: super::bus::Watcher,
        heartbeat: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        tx: &mpsc::Sender<Result<StreamItem, AppError>>,
    ) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            // Catch up from the store: the single source of truth. The bounded channel makes a
            // slow consumer wait here without buffering more than `streams.buffer` messages.
            while *cursor < known {
                let events = match self.store.events(id, *cursor, PAGE).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if events.is_empty() {
                    break;
                }
                let steps = if events.iter().any(|e| e.step.is_some()) {
                    self.store.steps(id).await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                for e in events {
                    *cursor = e.sequence;
                    let step =
                        e.step.as_ref().and_then(|s| steps.iter().find(|st| &st.name == s).cloned()).map(Box::new);
                    if tx.send(Ok(StreamItem::Event(Box::new(e), step))).await.is_err() {
                        return;
                    }
                }
                ticker.reset();
            }
            tokio::select! {
                r = watcher.seq.changed() => {
                    if r.is_err() { return; }
                    known = known.max(*watcher.seq.borrow_and_update());
                }
                r = watcher.all.changed() => {
                    if r.is_err() { return; }
                    known = self.latest_sequence(id).await.unwrap_or(known);
                }
                _ = ticker.tick() => {
                    // A missed notice (another replica, a lagged receiver) is caught here.
                    known = self.latest_sequence(id).await.unwrap_or(known);
                    if *cursor >= known
                        && tx.send(Ok(StreamItem::Heartbeat { at_ms: now_ms(), last_sequence: *cursor })).await.is_err()
                    {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    }

    async fn latest_sequence(&self, id: &OnboardingId) -> Result<i64, AppError> {
        Ok(self.store.onboarding_unscoped(id).await?.map(|o| o.sequence).unwrap_or(0))
    }
}
