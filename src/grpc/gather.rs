//! The messages that streams of one HTTP/2 connection send at the same moment (a heartbeat
//! tick, an event to many watchers), written to the socket together.
//!
//! hyper runs every HTTP/2 stream as a task of its own, and the connection's task writes the
//! frames they queue. A stream that queues a frame wakes the connection task, and tokio polls a
//! task woken by the running one next, in the worker's LIFO slot (turning that off is unstable
//! API, tokio-rs/tokio#4941). So the connection wrote every message alone: one `writev`, one
//! TCP send and one wakeup of the peer per heartbeat, most of what an idle stream cost the
//! server. [`Gathered`] wakes an idle standby task of ours right after its message was queued;
//! the standby takes the LIFO slot, which moves the connection task to the back of the
//! worker's queue, behind the other streams woken with this one: they queue their frames
//! first, and the connection writes them in one go. Nothing is delayed beyond the tasks
//! already due, and nothing changes for a stream whose messages the connection writes anyway.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

/// Standby tasks per worker thread: one is taken per wake until it runs again.
const STANDBYS: usize = 4;

/// The standby tasks started from one thread.
struct Standby {
    wakers: [AtomicWaker; STANDBYS],
}

impl Standby {
    fn start(runtime: &tokio::runtime::Handle) -> Arc<Self> {
        let s = Arc::new(Self { wakers: std::array::from_fn(|_| AtomicWaker::new()) });
        for i in 0..STANDBYS {
            runtime.spawn(standby(Arc::downgrade(&s), i));
        }
        s
    }

    /// Wakes one idle standby, if one is idle (else the connection writes as before).
    fn wake_one(&self) {
        for w in &self.wakers {
            if let Some(w) = w.take() {
                w.wake();
                return;
            }
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        // So the tasks see it gone and end.
        for w in &self.wakers {
            w.wake();
        }
    }
}

/// A standby task: does nothing when woken, until its [`Standby`] is dropped.
async fn standby(of: Weak<Standby>, i: usize) {
    futures::future::poll_fn(|cx| match of.upgrade() {
        Some(s) => {
            s.wakers[i].register(cx.waker());
            Poll::Pending
        }
        None => Poll::Ready(()),
    })
    .await
}

thread_local! {
    /// This thread's standbys, with the runtime they run on (a thread of a runtime that
    /// ended, as in tests, starts new ones on the next).
    static STANDBY: RefCell<Option<(tokio::runtime::Id, Arc<Standby>)>> = const { RefCell::new(None) };
}

/// Lets the connection task that a stream just woke run after the tasks already due.
fn nudge() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let id = runtime.id();
    STANDBY.with_borrow_mut(|slot| match slot {
        Some((on, s)) if *on == id => s.wake_one(),
        _ => {
            let s = Standby::start(&runtime);
            s.wake_one();
            *slot = Some((id, s));
        }
    });
}

/// A server stream whose messages [`nudge`] the connection (see the module docs).
pub(crate) struct Gathered<S> {
    inner: S,
    /// Polls answered `Pending` since the last message (saturating; 2 stops counting).
    pending_since_item: u8,
}

impl<S> Gathered<S> {
    /// `inner`, gathered.
    pub(crate) fn new(inner: S) -> Self {
        // Nothing sent yet: nothing to nudge.
        Self { inner, pending_since_item: 2 }
    }
}

impl<S: Stream + Unpin> Stream for Gathered<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let r = Pin::new(&mut self.inner).poll_next(cx);
        match r {
            Poll::Ready(Some(_)) => self.pending_since_item = 0,
            Poll::Ready(None) => {}
            Poll::Pending => {
                // tonic polls once more after a message before it hands the frame to HTTP/2
                // (the first `Pending`); the next poll comes after the frame was queued and the
                // connection task woken: that is the moment to nudge.
                if self.pending_since_item == 1 {
                    nudge();
                }
                self.pending_since_item = self.pending_since_item.saturating_add(1).min(2);
            }
        }
        r
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gathered_stream_yields_everything_in_order_and_ends() {
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
        let mut s = Gathered::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let producer = tokio::spawn(async move {
            for i in 0..1000 {
                tx.send(i).await.unwrap();
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut got = Vec::new();
        while let Some(i) = s.next().await {
            got.push(i);
        }
        producer.await.unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn standbys_start_once_per_runtime_and_end_with_their_owner() {
        nudge();
        let s = STANDBY.with_borrow(|s| s.as_ref().map(|(_, s)| Arc::downgrade(s))).unwrap();
        // Let the standbys register, then nudge again: the same ones, woken, not new ones.
        tokio::task::yield_now().await;
        nudge();
        assert!(Arc::ptr_eq(&s.upgrade().unwrap(), &STANDBY.with_borrow(|s| s.as_ref().unwrap().1.clone())));
        // A new owner (as when the thread serves another runtime) lets the old tasks end.
        STANDBY.with_borrow_mut(|slot| *slot = None);
        assert!(s.upgrade().is_none());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_alive_tasks(), 0, "the standbys ended");
    }
}
