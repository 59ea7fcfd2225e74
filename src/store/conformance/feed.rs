//! Conformance: Change notification.

use super::*;

pub(super) async fn check_notify_subscribe(store: Arc<dyn Store>) {
    let mut rx1 = store.subscribe();
    let mut rx2 = store.subscribe();
    let notice = ChangeNotice::moved(new_id(), 7);
    store.notify(&notice).await.unwrap();
    for rx in [&mut rx1, &mut rx2] {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap(), notice);
    }
    // Delivered once: no echo comes back (on PostgreSQL, through LISTEN).
    let second = ChangeNotice::moved(new_id(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.notify(&second).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx1.recv()).await.unwrap().unwrap(), second);
}
