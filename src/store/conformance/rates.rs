//! Conformance: The shared rate-limit logs.

use super::*;

pub(super) fn taken(grant: RateGrant) -> bool {
    matches!(grant, RateGrant::Taken(_))
}

fn wait_of(grant: RateGrant) -> Duration {
    match grant {
        RateGrant::Wait(d) => d,
        RateGrant::Taken(slot) => panic!("expected a wait, got slot {slot}"),
    }
}

pub(super) async fn check_rate_acquire(store: Arc<dyn Store>) {
    let window = Duration::from_secs(60);
    let now = 1_000_000;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.rate_acquire("gupshup:login", 5, window, Some(now + i)).await.unwrap()
        }));
    }
    let mut slots = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            RateGrant::Taken(slot) => assert!(slots.insert(slot), "slot ids are distinct"),
            RateGrant::Wait(wait) => assert!(wait > Duration::ZERO && wait <= window, "{wait:?}"),
        }
    }
    assert_eq!(slots.len(), 5, "exactly the limit is granted");
    // The wait is until the oldest slot leaves the window. Which five tasks won the race is up to
    // the scheduler, so the oldest granted slot is somewhere in `now..now + 50`.
    let wait = wait_of(store.rate_acquire("gupshup:login", 5, window, Some(now + 100)).await.unwrap());
    assert!(wait >= Duration::from_millis(60_000 - 100) && wait < Duration::from_millis(60_000 - 100 + 50), "{wait:?}");
    // Other keys are independent; after the window slots free up.
    assert!(taken(store.rate_acquire("other", 1, window, Some(now)).await.unwrap()));
    assert!(!taken(store.rate_acquire("other", 1, window, Some(now + 1)).await.unwrap()));
    assert!(taken(store.rate_acquire("other", 1, window, Some(now + 60_000)).await.unwrap()));
    assert!(taken(store.rate_acquire("gupshup:login", 5, window, Some(now + 200_000)).await.unwrap()));
    assert_eq!(store.rate_acquire("none", 0, window, Some(now)).await.unwrap(), RateGrant::Wait(window));
}

/// The stamp a `limit` 1 slot holds, derived from the wait a second caller is told at `probe`.
pub(super) async fn stamp_of(store: &Arc<dyn Store>, key: &str, window: Duration, probe: i64) -> i64 {
    let wait = wait_of(store.rate_acquire(key, 1, window, Some(probe)).await.unwrap());
    probe + wait.as_millis() as i64 - window.as_millis() as i64
}

pub(super) async fn check_rate_acquire_stamps_with_the_store_clock(store: Arc<dyn Store>) {
    let window = Duration::from_secs(600);
    let before = now_ms();
    assert!(taken(store.rate_acquire("clock", 1, window, None).await.unwrap()));
    let after = now_ms();
    let stamp = stamp_of(&store, "clock", window, after).await;
    assert!((before..=after).contains(&stamp), "stamped {stamp}, called within {before}..={after}");
}

pub(super) async fn check_rate_restamp(store: Arc<dyn Store>) {
    let window = Duration::from_secs(60);
    let t0 = 5_000_000;
    let RateGrant::Taken(slot) = store.rate_acquire("restamp", 1, window, Some(t0)).await.unwrap() else {
        panic!("the first slot is free");
    };
    // The call was answered 3 s later: the slot is held a window from then.
    store.rate_restamp("restamp", slot, Some(t0 + 3_000)).await.unwrap();
    assert_eq!(stamp_of(&store, "restamp", window, t0 + 10_000).await, t0 + 3_000);
    // Never moved back; other keys' and unknown slots are left alone.
    store.rate_restamp("restamp", slot, Some(t0 + 1_000)).await.unwrap();
    store.rate_restamp("other-key", slot, Some(t0 + 9_000)).await.unwrap();
    store.rate_restamp("restamp", slot + 1_000, Some(t0 + 9_000)).await.unwrap();
    assert_eq!(stamp_of(&store, "restamp", window, t0 + 10_000).await, t0 + 3_000);
    // It frees a window after the new stamp, not the old one.
    assert!(!taken(store.rate_acquire("restamp", 1, window, Some(t0 + 60_000)).await.unwrap()));
    assert!(taken(store.rate_acquire("restamp", 1, window, Some(t0 + 63_000)).await.unwrap()));
}
