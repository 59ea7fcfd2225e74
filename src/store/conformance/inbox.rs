//! Conformance: The webhook inbox.

use super::*;

pub(super) async fn check_webhook_events(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let b = account(&store, &t, ProviderKind::Gupshup).await;
    let e1 = webhook(&a, "k1", 20);
    let e2 = webhook(&a, "k2", 10);
    assert!(store.insert_webhook_event(&e1).await.unwrap());
    assert!(store.insert_webhook_event(&e2).await.unwrap());
    assert!(!store.insert_webhook_event(&webhook(&a, "k1", 30)).await.unwrap(), "duplicate");
    assert!(store.insert_webhook_event(&webhook(&b, "k1", 30)).await.unwrap(), "dedupe is per account");
    assert_eq!(store.webhook_event(&e1.id).await.unwrap(), Some(e1.clone()));
    assert_eq!(store.webhook_event("missing").await.unwrap(), None);

    let lease = Duration::from_secs(10);
    let claimed = store.claim_webhook_events("w1", 1_000, lease, 2).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![e2.id.clone(), e1.id.clone()],
        "oldest first"
    );
    assert!(claimed.iter().all(|e| e.lease_owner.as_deref() == Some("w1") && e.lease_until_ms == Some(11_000)));
    assert_eq!(claimed[0].body, e2.body);
    assert_eq!(store.claim_webhook_events("w2", 1_000, lease, 10).await.unwrap().len(), 1, "only the unleased one");

    store.finish_webhook_event(&e1.id, WebhookStatus::Ignored, Some("unknown app")).await.unwrap();
    let done = store.webhook_event(&e1.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.note.as_deref(), done.lease_owner),
        (WebhookStatus::Ignored, Some("unknown app"), None)
    );
    assert!(matches!(
        store.finish_webhook_event("missing", WebhookStatus::Processed, None).await,
        Err(StoreError::NotFound(_))
    ));
    // After the lease lapses the unfinished one comes back; the finished one never does.
    let again = store.claim_webhook_events("w3", 20_000, lease, 10).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|e| e.id != e1.id));
}

pub(super) async fn check_insert_webhook_events(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let b = account(&store, &t, ProviderKind::Gupshup).await;
    let before = webhook(&a, "old", 1);
    assert!(store.insert_webhook_event(&before).await.unwrap());
    assert_eq!(store.insert_webhook_events(&[]).await.unwrap(), Vec::<bool>::new());
    // More than one statement's worth, with a key stored before, a key twice in the batch
    // (the first wins) and the same key for another account.
    let mut batch: Vec<WebhookEventRecord> = (0..300).map(|i| webhook(&a, &format!("k{i}"), 10 + i)).collect();
    batch.insert(7, webhook(&a, "old", 5));
    batch.insert(100, webhook(&a, "k3", 6));
    batch.push(webhook(&b, "k3", 7));
    let stored = store.insert_webhook_events(&batch).await.unwrap();
    assert_eq!(stored.len(), batch.len());
    let refused: Vec<usize> = stored.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect();
    assert_eq!(refused, vec![7, 100], "the stored key and the second k3 of account a");
    for (e, s) in batch.iter().zip(&stored) {
        assert_eq!(store.webhook_event(&e.id).await.unwrap().is_some(), *s, "{}", e.dedupe_key);
    }
    assert_eq!(store.webhook_event(&batch[3].id).await.unwrap(), Some(batch[3].clone()), "stored as given");

    // All or nothing: a row that fails (an id already used) leaves none of the batch behind.
    let mut bad = vec![webhook(&a, "n1", 1), webhook(&b, "n2", 1)];
    let mut reused = webhook(&b, "n3", 1);
    reused.id = before.id.clone();
    bad.push(reused);
    assert!(store.insert_webhook_events(&bad).await.is_err());
    assert_eq!(store.webhook_event(&bad[0].id).await.unwrap(), None);
    assert_eq!(store.webhook_event(&bad[1].id).await.unwrap(), None);
    assert_eq!(store.webhook_event(&before.id).await.unwrap(), Some(before));
}

/// PostgreSQL analyzes a table that changed past autoanalyze's threshold, and vacuums one
/// whose dead rows passed autovacuum's, once each; SQLite has nothing to do.
pub(super) async fn check_maintain_tables(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let batch: Vec<_> = (0..80).map(|i| webhook(&a, &format!("s{i}"), i)).collect();
    store.insert_webhook_events(&batch).await.unwrap();
    if store.backend() != Backend::Postgres {
        assert_eq!(store.maintain_tables().await.unwrap(), Vec::<String>::new());
        return;
    }
    // A session's counts reach the statistics views within about a second.
    let until = |want: &'static str| {
        let store = store.clone();
        async move {
            let mut done = Vec::new();
            for _ in 0..50 {
                done = store.maintain_tables().await.unwrap();
                if done.iter().any(|c| c == want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("never ran {want}: last {done:?}");
        }
    };
    until("ANALYZE (SKIP_LOCKED) webhook_events").await;
    let again = store.maintain_tables().await.unwrap();
    assert!(!again.iter().any(|c| c.ends_with(" webhook_events")), "ran again: {again:?}");
    // Every row finished: one dead version each now.
    for e in &batch {
        store.finish_webhook_event(&e.id, WebhookStatus::Processed, None).await.unwrap();
    }
    until("VACUUM (SKIP_LOCKED, ANALYZE) webhook_events").await;
}
