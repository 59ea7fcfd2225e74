//! Fan-out of onboarding changes to streams. One task reads the store's change notices (from
//! this replica and, on PostgreSQL, from every replica) and wakes only the streams watching
//! that onboarding, through a `watch` channel holding its latest sequence. Streams then read
//! the events from the store, so a missed wake-up costs latency, never data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{broadcast, watch};

use crate::domain::OnboardingId;
use crate::store::ChangeNotice;

type Registry = HashMap<OnboardingId, Weak<watch::Sender<i64>>>;

/// The fan-out hub.
#[derive(Clone, Default)]
pub struct Bus {
    inner: Arc<Mutex<Registry>>,
    /// Wakes every watcher at once (after a lagged notice stream, where we cannot know
    /// which onboardings changed).
    all: Arc<watch::Sender<u64>>,
}

/// A stream's registration: dropped with the stream.
pub struct Watcher {
    /// Latest known sequence of the onboarding (may run ahead of what was read).
    pub seq: watch::Receiver<i64>,
    /// Bumped when every watcher must re-read.
    pub all: watch::Receiver<u64>,
    _keep: Arc<watch::Sender<i64>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    /// A new hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in one onboarding.
    pub fn watch(&self, id: &OnboardingId) -> Watcher {
        let mut reg = self.registry();
        let sender = match reg.get(id).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let (tx, _) = watch::channel(0i64);
                let tx = Arc::new(tx);
                reg.insert(id.clone(), Arc::downgrade(&tx));
                tx
            }
        };
        Watcher { seq: sender.subscribe(), all: self.all.subscribe(), _keep: sender }
    }

    /// Delivers one notice.
    pub fn publish(&self, notice: &ChangeNotice) {
        let sender = {
            let mut reg = self.registry();
            match reg.get(&notice.onboarding_id).map(Weak::upgrade) {
                Some(Some(s)) => Some(s),
                Some(None) => {
                    reg.remove(&notice.onboarding_id);
                    None
                }
                None => None,
            }
        };
        if let Some(s) = sender {
            s.send_if_modified(|cur| {
                if notice.sequence > *cur {
                    *cur = notice.sequence;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Wakes every watcher.
    pub fn wake_all(&self) {
        self.all.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Number of onboardings watched (for metrics and tests).
    pub fn watched(&self) -> usize {
        self.registry().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Forwards the store's notices until the store's channel closes.
    pub async fn run(self, mut rx: broadcast::Receiver<ChangeNotice>) {
        loop {
            match rx.recv().await {
                Ok(n) => self.publish(&n),
                Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_watched_onboarding() {
        let bus = Bus::new();
        let a = OnboardingId::parse("a").unwrap();
        let b = OnboardingId::parse("b").unwrap();
        let mut wa = bus.watch(&a);
        let wb = bus.watch(&b);
        bus.publish(&ChangeNotice { onboarding_id: a.clone(), sequence: 3 });
        wa.seq.changed().await.unwrap();
        assert_eq!(*wa.seq.borrow(), 3);
        assert!(!wb.seq.has_changed().unwrap());
        // Older notices never move the cursor back.
        bus.publish(&ChangeNotice { onboarding_id: a.clone(), sequence: 2 });
        assert!(!wa.seq.has_changed().unwrap());
        drop(wa);
        drop(wb);
        assert_eq!(bus.watched(), 0);
    }
}
