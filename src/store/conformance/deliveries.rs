//! Conformance: outbound delivery (destinations, outbox fan-out, leased ordered deliveries,
//! dead letters, replays), tenant-scoped.

use super::*;

const NOW: UnixMs = 10_000;
const LEASE: Duration = Duration::from_secs(30);

pub(super) fn destination(tenant: &TenantId, name: &str, filter: DeliveryFilter) -> DestinationRecord {
    DestinationRecord {
        id: new_id::<OnboardingId>().to_string(),
        tenant_id: tenant.clone(),
        name: name.into(),
        enabled: true,
        disabled_reason: String::new(),
        disabled_cause: None,
        disabled_notice_id: None,
        filter,
        sink: SinkKind::Webhook,
        url: "https://example.com/hook".into(),
        header_names: vec!["x-a".into()],
        headers: Some(sealed("headers")),
        subject: String::new(),
        secret: sealed("sign"),
        previous_secret: None,
        previous_secret_until_ms: None,
        failing_since_ms: None,
        disabled_ms: None,
        disabled_status: None,
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

async fn dest(store: &Arc<dyn Store>, tenant: &TenantId, name: &str, filter: DeliveryFilter) -> DestinationRecord {
    let d = destination(tenant, name, filter);
    store.create_destination(&d).await.unwrap();
    d
}

/// `(onboarding, sequence)` of each delivery.
fn keys(ds: &[DeliveryRecord]) -> Vec<(OnboardingId, i64)> {
    ds.iter().map(|d| (d.onboarding_id.clone(), d.sequence)).collect()
}

fn outcome(d: &DeliveryRecord, state: DeliveryState, next: UnixMs) -> DeliveryUpdate {
    DeliveryUpdate {
        destination_id: d.destination_id.clone(),
        onboarding_id: d.onboarding_id.clone(),
        sequence: d.sequence,
        state,
        next_attempt_ms: next,
        last_status: Some(500),
        last_error: Some("boom".into()),
        at_ms: NOW,
        unattempted: false,
    }
}

/// A whole replay in one chunk; how many were queued.
async fn replay(store: &Arc<dyn Store>, t: &TenantId, d: &str, from: &RedeliverFrom, now: UnixMs) -> StoreResult<u64> {
    Ok(store.redeliver(t, d, from, None, 10_000, now).await?.queued)
}

fn disable(d: &DestinationRecord, cause: DisableCause, status: Option<i32>, at: UnixMs) -> DestinationDisable {
    DestinationDisable {
        destination_id: d.id.clone(),
        cause,
        message: format!("{} at {at}", cause.as_str()),
        last_status: status,
        at_ms: at,
        notice_id: new_id::<OnboardingId>().to_string(),
    }
}

async fn all_deliveries(store: &Arc<dyn Store>, d: &DestinationRecord) -> Vec<DeliveryRecord> {
    let q = DeliveryQuery { state: None, limit: 100, after: None };
    store.list_deliveries(&d.tenant_id, &d.id, &q).await.unwrap().items
}

pub(super) async fn check_destinations(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let other = tenant(&store).await;
    let mut a = dest(&store, &t, "a", DeliveryFilter::default()).await;
    let b = dest(&store, &t, "b", DeliveryFilter { kinds: vec![EventKind::StateChanged], ..Default::default() }).await;
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.destination(&other, &a.id).await.unwrap(), None, "another tenant's");
    assert_eq!(store.destination_unscoped(&b.id).await.unwrap(), Some(b.clone()));
    assert!(matches!(store.create_destination(&a).await, Err(StoreError::AlreadyExists(_))));

    let first = store.list_destinations(&t, &page(1, None)).await.unwrap();
    assert_eq!(first.items.len(), 1);
    let rest = store.list_destinations(&t, &page(10, first.next_page_token.clone())).await.unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_page_token, None);
    assert!(store.list_destinations(&other, &page(10, None)).await.unwrap().items.is_empty());

    // Every mutable field round-trips, the secret's bytes included.
    a.name = "renamed".into();
    a.sink = SinkKind::Nats;
    a.subject = "wa.{tenant}.{type}".into();
    a.previous_secret = Some(a.secret.clone());
    a.previous_secret_until_ms = Some(5_000);
    a.secret = sealed("new");
    a.filter.providers = vec![ProviderKind::Whapi];
    a.updated_ms = 2_000;
    store.update_destination(&a, 1_000).await.unwrap();
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(a.clone()));
    let theirs = DestinationRecord { tenant_id: other.clone(), ..a.clone() };
    assert!(matches!(store.update_destination(&theirs, 2_000).await, Err(StoreError::NotFound(_))));
    // Written from a stale read: refused, nothing changed.
    let stale = DestinationRecord { name: "stale".into(), ..a.clone() };
    assert!(matches!(store.update_destination(&stale, 1_000).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(a.clone()));

    // Health: a failure stamps the first failing time, a success clears it.
    assert_eq!(store.note_destination_health(&a.id, false, 3_000).await.unwrap(), Some(3_000));
    assert_eq!(store.note_destination_health(&a.id, false, 4_000).await.unwrap(), Some(3_000));
    assert_eq!(store.note_destination_health(&a.id, true, 5_000).await.unwrap(), None);
    let gone = disable(&a, DisableCause::Gone, Some(410), 6_000);
    let notice = store.disable_destination(&gone).await.unwrap().expect("disabled");
    let disabled = store.destination(&t, &a.id).await.unwrap().unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason, "GONE at 6000");
    assert_eq!(
        (disabled.disabled_cause, disabled.disabled_notice_id.as_deref()),
        (Some(DisableCause::Gone), Some(gone.notice_id.as_str()))
    );
    assert_eq!((disabled.disabled_ms, disabled.disabled_status), (Some(6_000), Some(410)));
    assert_eq!(store.notice_unscoped(&notice.id).await.unwrap(), Some(notice.clone()));
    // Already disabled: a second verdict (another replica's) changes nothing and writes no
    // second notice.
    let late = disable(&a, DisableCause::FailingTooLong, None, 7_000);
    assert_eq!(store.disable_destination(&late).await.unwrap(), None);
    assert_eq!(store.notice_unscoped(&late.notice_id).await.unwrap(), None);
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(disabled.clone()));
    // Re-enabling (the use case clears the fields) stores the cleared fields.
    let enabled = DestinationRecord {
        enabled: true,
        disabled_reason: String::new(),
        disabled_cause: None,
        disabled_notice_id: None,
        disabled_ms: None,
        disabled_status: None,
        updated_ms: disabled.updated_ms + 1,
        ..disabled.clone()
    };
    store.update_destination(&enabled, disabled.updated_ms).await.unwrap();
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(enabled.clone()));
    let by_caller = DestinationRecord {
        enabled: false,
        disabled_cause: Some(DisableCause::ByCaller),
        updated_ms: enabled.updated_ms + 1,
        ..enabled.clone()
    };
    store.update_destination(&by_caller, enabled.updated_ms).await.unwrap();
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), Some(by_caller));

    assert!(!store.delete_destination(&other, &a.id).await.unwrap());
    assert!(store.delete_destination(&t, &a.id).await.unwrap());
    assert_eq!(store.destination(&t, &a.id).await.unwrap(), None);
    assert!(!store.delete_destination(&t, &a.id).await.unwrap());
}

pub(super) async fn check_fan_out(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let other = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let their_acct = account(&store, &other, ProviderKind::Whapi).await;
    let any = dest(&store, &t, "any", DeliveryFilter::default()).await;
    let callbacks =
        dest(&store, &t, "callbacks", DeliveryFilter { kinds: vec![EventKind::Callback], ..Default::default() }).await;
    let other_provider =
        dest(&store, &t, "gupshup", DeliveryFilter { providers: vec![ProviderKind::Gupshup], ..Default::default() })
            .await;
    let other_account =
        dest(&store, &t, "acct", DeliveryFilter { accounts: vec![their_acct.id.clone()], ..Default::default() }).await;
    let mut off = dest(&store, &t, "off", DeliveryFilter::default()).await;
    off.enabled = false;
    store.update_destination(&off, off.updated_ms).await.unwrap();
    let theirs = dest(&store, &other, "theirs", DeliveryFilter::default()).await;

    let o = onboarding(&store, &acct, "r").await;
    store.apply_change(&change(&o.id, "cb")).await.unwrap();
    let their_o = onboarding(&store, &their_acct, "r").await;
    assert_eq!(store.delivery_backlog().await.unwrap().0, 3, "one outbox row per event");

    let stats = store.dispatch_outbox(NOW, 100).await.unwrap();
    assert_eq!(stats, DispatchStats { events: 3, deliveries: 4 });
    assert_eq!(keys(&all_deliveries(&store, &any).await), vec![(o.id.clone(), 1), (o.id.clone(), 2)]);
    assert_eq!(keys(&all_deliveries(&store, &callbacks).await), vec![(o.id.clone(), 2)]);
    assert!(all_deliveries(&store, &other_provider).await.is_empty());
    assert!(all_deliveries(&store, &other_account).await.is_empty());
    assert!(all_deliveries(&store, &off).await.is_empty(), "disabled destinations get nothing");
    assert_eq!(keys(&all_deliveries(&store, &theirs).await), vec![(their_o.id.clone(), 1)]);
    // Another tenant's listing of my destination is empty.
    let q = DeliveryQuery { state: None, limit: 10, after: None };
    assert!(store.list_deliveries(&other, &any.id, &q).await.unwrap().items.is_empty());

    let pending = all_deliveries(&store, &any).await;
    assert!(pending.iter().all(|d| d.state == DeliveryState::Pending && d.attempts == 0 && d.tenant_id == t));
    assert_eq!(pending[0].event_id(), format!("{}/1", o.id));

    // The outbox is drained: a second pass finds nothing and writes nothing.
    assert_eq!(store.dispatch_outbox(NOW, 100).await.unwrap(), DispatchStats::default());
    let (outbox, per_destination) = store.delivery_backlog().await.unwrap();
    assert_eq!(outbox, 0);
    let total: i64 = per_destination.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 4);

    // Fan-out in small passes gives the same rows, and replaying an event already fanned out
    // (redeliver of a pending one) adds none.
    store.apply_change(&change(&o.id, "more")).await.unwrap();
    assert_eq!(store.dispatch_outbox(NOW, 1).await.unwrap(), DispatchStats { events: 1, deliveries: 2 });
    let from = RedeliverFrom::Sequence { onboarding_id: o.id.clone(), sequence: 3 };
    assert_eq!(replay(&store, &t, &any.id, &from, NOW).await.unwrap(), 1);
    assert_eq!(all_deliveries(&store, &any).await.len(), 3);

    // A tenant without an enabled destination writes no outbox rows (nothing would empty
    // them); once it has one, its next event is in the outbox.
    let quiet = tenant(&store).await;
    let quiet_acct = account(&store, &quiet, ProviderKind::Whapi).await;
    let mut paused = dest(&store, &quiet, "paused", DeliveryFilter::default()).await;
    paused.enabled = false;
    store.update_destination(&paused, paused.updated_ms).await.unwrap();
    let q_o = onboarding(&store, &quiet_acct, "r").await;
    store.apply_change(&change(&q_o.id, "cb")).await.unwrap();
    assert_eq!(store.delivery_backlog().await.unwrap().0, 0, "no outbox rows without an enabled destination");
    let live = dest(&store, &quiet, "live", DeliveryFilter::default()).await;
    store.apply_change(&change(&q_o.id, "more")).await.unwrap();
    assert_eq!(store.delivery_backlog().await.unwrap().0, 1);
    assert_eq!(store.dispatch_outbox(NOW, 100).await.unwrap(), DispatchStats { events: 1, deliveries: 1 });
    assert_eq!(keys(&all_deliveries(&store, &live).await), vec![(q_o.id.clone(), 3)]);
}

pub(super) async fn check_claim_order(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let a = onboarding(&store, &acct, "a").await;
    store.apply_change(&change(&a.id, "a2")).await.unwrap();
    store.apply_change(&change(&a.id, "a3")).await.unwrap();
    let b = onboarding(&store, &acct, "b").await;
    store.dispatch_outbox(NOW, 100).await.unwrap();

    // One per onboarding: the later sequences wait for the first.
    let mut first = store.claim_deliveries("w1", NOW, LEASE, 10, 1).await.unwrap();
    first.sort_by(|x, y| x.onboarding_id.cmp(&y.onboarding_id));
    let mut want = vec![(a.id.clone(), 1), (b.id.clone(), 1)];
    want.sort();
    assert_eq!(keys(&first), want);
    assert!(first.iter().all(|d| d.attempts == 1 && d.lease_owner.as_deref() == Some("w1")));
    assert!(store.claim_deliveries("w2", NOW, LEASE, 10, 1).await.unwrap().is_empty(), "leased and held back");

    let a1 = first.iter().find(|x| x.onboarding_id == a.id).unwrap();
    // A failing a1 holds back a2 (not b's events); a retry is due later.
    assert!(store.finish_delivery(&outcome(a1, DeliveryState::Pending, NOW + 1_000), "w1").await.unwrap());
    assert!(store.claim_deliveries("w1", NOW, LEASE, 10, 1).await.unwrap().is_empty());
    let again = store.claim_deliveries("w1", NOW + 1_000, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&again), vec![(a.id.clone(), 1)]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!((again[0].last_status, again[0].last_error.as_deref()), (Some(500), Some("boom")));

    let mut ok = outcome(&again[0], DeliveryState::Delivered, NOW + 1_000);
    ok.last_status = Some(200);
    ok.last_error = None;
    assert!(store.finish_delivery(&ok, "w1").await.unwrap());
    assert!(!store.finish_delivery(&ok, "w1").await.unwrap(), "no lease any more");
    let next = store.claim_deliveries("w1", NOW + 1_000, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&next), vec![(a.id.clone(), 2)]);

    // A disabled destination's deliveries are not claimed.
    let mut off = store.destination(&t, &d.id).await.unwrap().unwrap();
    assert!(store.finish_delivery(&outcome(&next[0], DeliveryState::Pending, NOW), "w1").await.unwrap());
    off.enabled = false;
    store.update_destination(&off, off.updated_ms).await.unwrap();
    assert!(store.claim_deliveries("w1", NOW + 2_000, LEASE, 10, 1).await.unwrap().is_empty());

    let listed = all_deliveries(&store, &d).await;
    let a1 = listed.iter().find(|x| x.onboarding_id == a.id && x.sequence == 1).unwrap();
    assert_eq!((a1.state, a1.delivered_ms, a1.last_status), (DeliveryState::Delivered, Some(NOW), Some(200)));
    // Paging by event id, and by state.
    let q = DeliveryQuery { state: None, limit: 2, after: None };
    let p1 = store.list_deliveries(&t, &d.id, &q).await.unwrap();
    assert_eq!(p1.items.len(), 2);
    let q2 = DeliveryQuery { after: p1.next_page_token.clone(), ..q };
    let p2 = store.list_deliveries(&t, &d.id, &q2).await.unwrap();
    assert_eq!(p2.items.len(), 2);
    assert_eq!(p2.next_page_token, None);
    let delivered = DeliveryQuery { state: Some(DeliveryState::Delivered), limit: 10, after: None };
    assert_eq!(keys(&store.list_deliveries(&t, &d.id, &delivered).await.unwrap().items), vec![(a.id.clone(), 1)]);
}

pub(super) async fn check_lease_expiry(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    dest(&store, &t, "d", DeliveryFilter::default()).await;
    let o = onboarding(&store, &acct, "a").await;
    store.dispatch_outbox(NOW, 100).await.unwrap();
    let lease = Duration::from_secs(1);
    let held = store.claim_deliveries("w1", NOW, lease, 10, 1).await.unwrap();
    assert_eq!(keys(&held), vec![(o.id.clone(), 1)]);
    assert!(store.claim_deliveries("w2", NOW + 999, lease, 10, 1).await.unwrap().is_empty());
    // The lease lapsed (a crashed sender): another worker takes it over, a second attempt.
    let taken = store.claim_deliveries("w2", NOW + 1_000, lease, 10, 1).await.unwrap();
    assert_eq!(keys(&taken), vec![(o.id.clone(), 1)]);
    assert_eq!((taken[0].attempts, taken[0].lease_owner.as_deref()), (2, Some("w2")));
    assert!(!store.finish_delivery(&outcome(&held[0], DeliveryState::Delivered, NOW), "w1").await.unwrap());
    assert!(store.finish_delivery(&outcome(&taken[0], DeliveryState::Delivered, NOW), "w2").await.unwrap());
}

pub(super) async fn check_dead_letter_and_redeliver(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let other = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let o = onboarding(&store, &acct, "a").await;
    store.apply_change(&change(&o.id, "a2")).await.unwrap();
    store.dispatch_outbox(NOW, 100).await.unwrap();

    // The last attempt dead-letters; a dead letter no longer holds back the next event.
    let first = store.claim_deliveries("w", NOW, LEASE, 10, 1).await.unwrap();
    assert!(store.finish_delivery(&outcome(&first[0], DeliveryState::Dead, NOW), "w").await.unwrap());
    let second = store.claim_deliveries("w", NOW, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&second), vec![(o.id.clone(), 2)]);
    assert!(store.finish_delivery(&outcome(&second[0], DeliveryState::Delivered, NOW), "w").await.unwrap());
    let dead = DeliveryQuery { state: Some(DeliveryState::Dead), limit: 10, after: None };
    let listed = store.list_deliveries(&t, &d.id, &dead).await.unwrap().items;
    assert_eq!(keys(&listed), vec![(o.id.clone(), 1)]);
    assert_eq!(listed[0].last_error.as_deref(), Some("boom"));
    assert!(store.claim_deliveries("w", NOW, LEASE, 10, 1).await.unwrap().is_empty());

    // Replay from a sequence: both back to pending, attempts reset, in order again.
    let from = RedeliverFrom::Sequence { onboarding_id: o.id.clone(), sequence: 1 };
    assert_eq!(replay(&store, &t, &d.id, &from, NOW + 5).await.unwrap(), 2);
    let replayed = store.claim_deliveries("w", NOW + 5, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&replayed), vec![(o.id.clone(), 1)]);
    assert_eq!(replayed[0].attempts, 1);
    assert!(store.finish_delivery(&outcome(&replayed[0], DeliveryState::Delivered, NOW), "w").await.unwrap());

    // Replay from a time: only the events committed since (the change at 2_000, not the
    // creation at 1_000).
    let since = RedeliverFrom::Time(1_500);
    assert_eq!(replay(&store, &t, &d.id, &since, NOW + 10).await.unwrap(), 1);
    // Another tenant cannot replay to my destination, nor replay my onboarding to theirs.
    assert!(matches!(replay(&store, &other, &d.id, &since, NOW).await, Err(StoreError::NotFound(_))));
    let theirs = dest(&store, &other, "theirs", DeliveryFilter::default()).await;
    assert_eq!(replay(&store, &other, &theirs.id, &from, NOW).await.unwrap(), 0);
    assert_eq!(replay(&store, &other, &theirs.id, &RedeliverFrom::Time(0), NOW).await.unwrap(), 0);

    // Deleting the destination drops its deliveries.
    assert!(store.delete_destination(&t, &d.id).await.unwrap());
    assert_eq!(store.delivery_backlog().await.unwrap().1, vec![]);
}

/// A replay that raced the outbox: the fan-out finds the queue's lowest row of its batch
/// there already (and delivered), so the head it would have given that row goes to the
/// queue's lowest pending row instead; the queue does not stall.
pub(super) async fn check_fan_out_after_a_replay_raced_the_outbox(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let o = onboarding(&store, &acct, "a").await;
    // Event 1 is still in the outbox when a replay queues it, and it is delivered.
    let from = RedeliverFrom::Sequence { onboarding_id: o.id.clone(), sequence: 1 };
    assert_eq!(replay(&store, &t, &d.id, &from, NOW).await.unwrap(), 1);
    let first = store.claim_deliveries("w", NOW, LEASE, 10, 4).await.unwrap();
    assert_eq!(keys(&first), vec![(o.id.clone(), 1)]);
    assert!(store.finish_delivery(&outcome(&first[0], DeliveryState::Delivered, NOW), "w").await.unwrap());
    // Events 2 and 3 follow; one pass fans out 1 (there already), 2 and 3.
    store.apply_change(&change(&o.id, "a2")).await.unwrap();
    store.apply_change(&change(&o.id, "a3")).await.unwrap();
    let stats = store.dispatch_outbox(NOW, 100).await.unwrap();
    assert_eq!((stats.events, stats.deliveries), (3, 2));
    let next = store.claim_deliveries("w", NOW, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&next), vec![(o.id.clone(), 2)], "2 is the head, 3 behind it");
    assert!(store.finish_delivery(&outcome(&next[0], DeliveryState::Delivered, NOW), "w").await.unwrap());
    let last = store.claim_deliveries("w", NOW, LEASE, 10, 1).await.unwrap();
    assert_eq!(keys(&last), vec![(o.id.clone(), 3)]);
}

/// A pass larger than one statement's chunk of pairs and rows fans out every event once.
pub(super) async fn check_fan_out_in_chunks(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let batch: Vec<NewOnboarding> = (0..1_100).map(|i| new_onboarding(&acct, &format!("r{i}"), &[])).collect();
    store.create_onboardings(&batch).await.unwrap();
    assert_eq!(store.dispatch_outbox(NOW, 2_000).await.unwrap(), DispatchStats { events: 1_100, deliveries: 1_100 });
    assert_eq!(store.delivery_backlog().await.unwrap(), (0, vec![(d.id.clone(), 1_100)]));
}

/// A replay larger than one chunk: chunks of `limit` events, each its own transaction, go on
/// after the previous chunk's last event and together queue every event once; one
/// onboarding's replay split inside its log too.
pub(super) async fn check_redeliver_in_chunks(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let batch: Vec<NewOnboarding> = (0..1_100).map(|i| new_onboarding(&acct, &format!("r{i}"), &[])).collect();
    store.create_onboardings(&batch).await.unwrap();
    let o = onboarding(&store, &acct, "long").await;
    for i in 0..4 {
        store.apply_change(&change(&o.id, &format!("c{i}"))).await.unwrap();
    }
    store.dispatch_outbox(NOW, 5_000).await.unwrap();
    // Deliver everything, so the replay's resets are visible.
    loop {
        let got = store.claim_deliveries("w", NOW, LEASE, 1_000, 1).await.unwrap();
        if got.is_empty() {
            break;
        }
        for g in &got {
            assert!(store.finish_delivery(&outcome(g, DeliveryState::Delivered, NOW), "w").await.unwrap());
        }
    }
    let from = RedeliverFrom::Time(0);
    let (mut after, mut queued, mut chunks) = (None, 0, 0);
    loop {
        let chunk = store.redeliver(&t, &d.id, &from, after.as_ref(), 500, NOW + 1).await.unwrap();
        chunks += 1;
        queued += chunk.queued;
        if chunk.scanned < 500 {
            break;
        }
        assert_ne!(chunk.last, after, "each chunk goes on after the previous one");
        after = chunk.last;
    }
    assert_eq!((chunks, queued), (3, 1_105), "1,101 onboardings' 1,105 events in chunks of 500");
    let pending = DeliveryQuery { state: Some(DeliveryState::Pending), limit: 1_000, after: None };
    let mut seen = store.list_deliveries(&t, &d.id, &pending).await.unwrap();
    let mut total = seen.items.len();
    while let Some(next) = seen.next_page_token.clone() {
        seen = store.list_deliveries(&t, &d.id, &DeliveryQuery { after: Some(next), ..pending.clone() }).await.unwrap();
        total += seen.items.len();
    }
    assert_eq!(total, 1_105, "every event pending again, none twice");

    // One onboarding in chunks of two: 5 events give 2 + 2 + 1, in sequence order.
    let from = RedeliverFrom::Sequence { onboarding_id: o.id.clone(), sequence: 1 };
    let first = store.redeliver(&t, &d.id, &from, None, 2, NOW + 2).await.unwrap();
    assert_eq!((first.queued, first.scanned), (2, 2));
    assert_eq!(first.last, Some(ReplayCursor { onboarding_id: o.id.clone(), sequence: 2 }));
    let second = store.redeliver(&t, &d.id, &from, first.last.as_ref(), 2, NOW + 2).await.unwrap();
    assert_eq!(second.last.as_ref().map(|c| c.sequence), Some(4));
    let third = store.redeliver(&t, &d.id, &from, second.last.as_ref(), 2, NOW + 2).await.unwrap();
    assert_eq!((third.queued, third.scanned, third.last.map(|c| c.sequence)), (1, 1, Some(5)));
    let done = store
        .redeliver(&t, &d.id, &from, Some(&ReplayCursor { onboarding_id: o.id.clone(), sequence: 5 }), 2, NOW)
        .await
        .unwrap();
    assert_eq!(done, ReplayChunk { queued: 0, scanned: 0, last: None });
    // Replayed rows are claimable again (each is a possible queue head), in sequence order.
    let claimed = store.claim_deliveries("w2", NOW + 3, LEASE, 2_000, 1).await.unwrap();
    assert_eq!(claimed.len(), 1_101, "one head per onboarding: {}", claimed.len());
    assert!(claimed.iter().all(|c| c.sequence == 1), "each queue from its first event");
}

/// The worker's disable: the destination's fields, a notice, and one pending notice delivery
/// per other enabled destination of the tenant whose filter admits it, in one transaction;
/// notice deliveries are leased, finished, and tenant-scoped.
pub(super) async fn check_disable_writes_a_notice(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let other = tenant(&store).await;
    let failing = dest(&store, &t, "failing", DeliveryFilter::default()).await;
    let any = dest(&store, &t, "any", DeliveryFilter::default()).await;
    let kinds_only =
        dest(&store, &t, "kinds", DeliveryFilter { kinds: vec![EventKind::StateChanged], ..Default::default() }).await;
    let named = dest(
        &store,
        &t,
        "named",
        DeliveryFilter {
            kinds: vec![EventKind::StateChanged],
            notices: vec![NoticeKind::DestinationDisabled],
            ..Default::default()
        },
    )
    .await;
    let scoped =
        dest(&store, &t, "gupshup", DeliveryFilter { providers: vec![ProviderKind::Gupshup], ..Default::default() })
            .await;
    let mut off = dest(&store, &t, "off", DeliveryFilter::default()).await;
    off.enabled = false;
    store.update_destination(&off, off.updated_ms).await.unwrap();
    let theirs = dest(&store, &other, "theirs", DeliveryFilter::default()).await;

    let x = disable(&failing, DisableCause::FailingTooLong, Some(503), NOW);
    let notice = store.disable_destination(&x).await.unwrap().expect("disabled");
    assert_eq!(
        notice,
        NoticeRecord {
            id: x.notice_id.clone(),
            tenant_id: t.clone(),
            destination_id: failing.id.clone(),
            display_name: "failing".into(),
            cause: DisableCause::FailingTooLong,
            message: x.message.clone(),
            http_status: Some(503),
            created_ms: NOW,
        }
    );
    assert_eq!(notice.event_id(), format!("notices/{}", notice.id));
    // To the other enabled destinations whose filter admits it: not the disabled one, not
    // a kinds-only filter, not a disabled one, not another tenant's; provider filters do not
    // apply to notices.
    let mut want = vec![any.id.clone(), named.id.clone(), scoped.id.clone()];
    want.sort();
    let fanned = store.notice_deliveries(&t, &notice.id).await.unwrap();
    assert_eq!(fanned.iter().map(|d| d.destination_id.clone()).collect::<Vec<_>>(), want);
    assert!(fanned.iter().all(|d| d.state == DeliveryState::Pending && d.attempts == 0 && d.tenant_id == t));
    assert!(!fanned.iter().any(|d| [&kinds_only.id, &off.id, &theirs.id, &failing.id].contains(&&d.destination_id)));
    assert!(store.notice_deliveries(&other, &notice.id).await.unwrap().is_empty());

    // Leased once each; a second claimer gets none until the lease lapses.
    let claimed = store.claim_notice_deliveries("w1", NOW, LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|d| d.attempts == 1 && d.lease_owner.as_deref() == Some("w1")));
    assert!(store.claim_notice_deliveries("w2", NOW, LEASE, 10).await.unwrap().is_empty());
    let finish = |d: &NoticeDeliveryRecord, state, next| NoticeDeliveryUpdate {
        destination_id: d.destination_id.clone(),
        notice_id: d.notice_id.clone(),
        state,
        next_attempt_ms: next,
        last_status: Some(500),
        last_error: None,
        at_ms: NOW,
    };
    assert!(store.finish_notice_delivery(&finish(&claimed[0], DeliveryState::Delivered, NOW), "w1").await.unwrap());
    assert!(!store.finish_notice_delivery(&finish(&claimed[1], DeliveryState::Delivered, NOW), "w2").await.unwrap());
    assert!(store.finish_notice_delivery(&finish(&claimed[1], DeliveryState::Pending, NOW + 100), "w1").await.unwrap());
    // A lapsed lease is taken over; a retry comes when due.
    let lapsed = NOW + 31_000;
    let again = store.claim_notice_deliveries("w2", lapsed, LEASE, 10).await.unwrap();
    let mut ids: Vec<&str> = again.iter().map(|d| d.destination_id.as_str()).collect();
    ids.sort();
    let mut expect = vec![claimed[1].destination_id.as_str(), claimed[2].destination_id.as_str()];
    expect.sort();
    assert_eq!(ids, expect);
    assert!(!store.finish_notice_delivery(&finish(&claimed[2], DeliveryState::Delivered, NOW), "w1").await.unwrap());
    let states = store.notice_deliveries(&t, &notice.id).await.unwrap();
    let delivered = states.iter().find(|d| d.destination_id == claimed[0].destination_id).unwrap();
    assert_eq!((delivered.state, delivered.delivered_ms), (DeliveryState::Delivered, Some(NOW)));

    // Deleting a receiving destination drops its notice deliveries; the notice stays.
    assert!(store.delete_destination(&t, &any.id).await.unwrap());
    assert!(!store.notice_deliveries(&t, &notice.id).await.unwrap().iter().any(|d| d.destination_id == any.id));
    assert!(store.notice_unscoped(&notice.id).await.unwrap().is_some());
    // A disabled receiver's notices are not claimed.
    let y = disable(&named, DisableCause::Gone, Some(410), NOW + 40_000);
    let second = store.disable_destination(&y).await.unwrap().expect("disabled");
    let claimed = store.claim_notice_deliveries("w3", NOW + 100_000, LEASE, 10).await.unwrap();
    assert!(claimed.iter().all(|d| d.destination_id != named.id), "a disabled destination receives nothing");
    assert!(claimed.iter().any(|d| d.notice_id == second.id && d.destination_id == scoped.id));
}

/// After an outage: every queue's head failed and is due later, so the oldest due rows are
/// all blocked behind them. Claims still take only heads, one per queue, in order of due
/// time, each queue's events strictly in sequence order, including events fanned out while
/// their predecessor was leased; and a batch of outcomes is written in one call.
/// Runs (`run > 1`): a head brings the pending rows right behind it in its queue, leased and
/// counted the same way; a sender that stops early releases the rest and undoes their
/// attempts; finishing a whole run in one batch makes the next row the head; and a run never
/// jumps a row it cannot take (leased by another).
pub(super) async fn check_claim_runs(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    // Scoped keys, as the service makes them (`Display` shows only the name: a store that
    // matched rows by it would find none).
    let scoped = |name: &str| {
        let mut new = new_onboarding(&acct, name, &[("first", StepState::Pending, None)]);
        let id = OnboardingId::scoped(&t, name).unwrap();
        new.onboarding.id = id.clone();
        for s in &mut new.steps {
            s.onboarding_id = id.clone();
        }
        new
    };
    let new_a = scoped("a");
    store.create_onboarding(&new_a).await.unwrap();
    let a = new_a.onboarding;
    for j in 2..=6 {
        store.apply_change(&change(&a.id, &format!("a{j}"))).await.unwrap();
    }
    let new_b = scoped("b");
    store.create_onboarding(&new_b).await.unwrap();
    let b = new_b.onboarding;
    store.dispatch_outbox(NOW, 100).await.unwrap();

    let first = store.claim_deliveries("w", NOW, LEASE, 10, 4).await.unwrap();
    let mut want = vec![(a.id.clone(), 1), (a.id.clone(), 2), (a.id.clone(), 3), (a.id.clone(), 4), (b.id.clone(), 1)];
    want.sort();
    assert_eq!(keys(&first), want, "a's head and the three rows behind it, b's only row");
    assert!(first.iter().all(|x| x.attempts == 1 && x.lease_owner.as_deref() == Some("w")));
    assert!(store.claim_deliveries("w2", NOW, LEASE, 10, 4).await.unwrap().is_empty(), "the run is leased");

    // a1 delivered, a2 failed: a3 and a4 were never sent.
    let get = |o: &OnboardingId, seq: i64| first.iter().find(|x| &x.onboarding_id == o && x.sequence == seq).unwrap();
    let mut released = outcome(get(&a.id, 3), DeliveryState::Delivered, NOW);
    released.unattempted = true;
    let mut released2 = outcome(get(&a.id, 4), DeliveryState::Dead, NOW);
    released2.unattempted = true;
    let batch = vec![
        outcome(get(&a.id, 1), DeliveryState::Delivered, NOW),
        outcome(get(&a.id, 2), DeliveryState::Pending, NOW + 1_000),
        released,
        released2,
        outcome(get(&b.id, 1), DeliveryState::Delivered, NOW),
    ];
    assert_eq!(store.finish_deliveries(&batch, "w").await.unwrap(), vec![true; 5]);
    let listed = all_deliveries(&store, &d).await;
    let row = |seq: i64| listed.iter().find(|x| x.onboarding_id == a.id && x.sequence == seq).unwrap().clone();
    for seq in [3, 4] {
        let r = row(seq);
        assert_eq!(
            (r.state, r.attempts, r.lease_owner),
            (DeliveryState::Pending, 0, None),
            "a{seq} released as it was"
        );
        assert_eq!((r.last_status, r.delivered_ms), (None, None));
    }
    assert_eq!((row(2).attempts, row(2).last_status), (1, Some(500)));
    assert!(store.claim_deliveries("w", NOW, LEASE, 10, 4).await.unwrap().is_empty(), "a2 retries later");

    // A retried head goes alone (it failed before: its run waits until it gets through);
    // then the rest of the queue comes as one run, all delivered in one batch.
    let retry = store.claim_deliveries("w", NOW + 1_000, LEASE, 10, 10).await.unwrap();
    assert_eq!(keys(&retry), vec![(a.id.clone(), 2)]);
    assert_eq!(retry[0].attempts, 2);
    let ok = outcome(&retry[0], DeliveryState::Delivered, NOW);
    assert_eq!(store.finish_deliveries(&[ok], "w").await.unwrap(), vec![true]);
    let second = store.claim_deliveries("w", NOW + 1_000, LEASE, 10, 10).await.unwrap();
    assert_eq!(keys(&second), (3..=6).map(|s| (a.id.clone(), s)).collect::<Vec<_>>());
    assert_eq!(second.iter().map(|x| x.attempts).collect::<Vec<_>>(), vec![1, 1, 1, 1]);
    let done: Vec<DeliveryUpdate> = second.iter().map(|x| outcome(x, DeliveryState::Delivered, NOW)).collect();
    assert_eq!(store.finish_deliveries(&done, "w").await.unwrap(), vec![true; 4]);
    for j in 7..=9 {
        store.apply_change(&change(&a.id, &format!("a{j}"))).await.unwrap();
    }
    store.dispatch_outbox(NOW, 100).await.unwrap();

    // w takes a7 and a8, then gives a7 back: a7 is claimable again, a8 is still w's, so a run
    // from a7 stops there instead of jumping to a9.
    let held = store.claim_deliveries("w", NOW + 1_000, LEASE, 10, 2).await.unwrap();
    assert_eq!(keys(&held), vec![(a.id.clone(), 7), (a.id.clone(), 8)]);
    let mut back = outcome(&held[0], DeliveryState::Pending, NOW);
    back.unattempted = true;
    assert_eq!(store.finish_deliveries(&[back], "w").await.unwrap(), vec![true]);
    let other = store.claim_deliveries("w2", NOW + 1_000, LEASE, 10, 5).await.unwrap();
    assert_eq!(keys(&other), vec![(a.id.clone(), 7)], "no row behind a leased one");
    assert_eq!(other[0].attempts, 1);
}

pub(super) async fn check_claims_with_blocked_backlog(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let acct = account(&store, &t, ProviderKind::Whapi).await;
    let d = dest(&store, &t, "d", DeliveryFilter::default()).await;
    let mut queues = Vec::new();
    for i in 0..5 {
        let o = onboarding(&store, &acct, &format!("r{i}")).await;
        for j in 2..=20 {
            store.apply_change(&change(&o.id, &format!("{i}-{j}"))).await.unwrap();
        }
        queues.push(o.id);
    }
    // Small passes: batches hold several events of one queue, and queues span batches.
    while store.dispatch_outbox(NOW, 7).await.unwrap().events > 0 {}
    assert_eq!(store.delivery_backlog().await.unwrap(), (0, vec![(d.id.clone(), 100)]));

    let heads = store.claim_deliveries("w", NOW, LEASE, 100, 1).await.unwrap();
    let mut want: Vec<(OnboardingId, i64)> = queues.iter().map(|o| (o.clone(), 1)).collect();
    want.sort();
    assert_eq!(keys(&heads), want, "one head per queue");
    // The receiver is down: every head is retried later, behind 95 older blocked rows.
    let retries: Vec<DeliveryUpdate> = heads.iter().map(|h| outcome(h, DeliveryState::Pending, NOW + 1_000)).collect();
    assert_eq!(store.finish_deliveries(&retries, "w").await.unwrap(), vec![true; 5]);
    assert!(
        store.claim_deliveries("w", NOW + 999, LEASE, 100, 1).await.unwrap().is_empty(),
        "nothing due but blocked rows"
    );
    let two = store.claim_deliveries("w", NOW + 1_000, LEASE, 2, 1).await.unwrap();
    assert_eq!(keys(&two), want[..2].to_vec(), "due heads by due time, then onboarding");
    let rest = store.claim_deliveries("w", NOW + 1_000, LEASE, 100, 1).await.unwrap();
    assert_eq!(keys(&rest), want[2..].to_vec());

    // Drain: each round claims every queue's next sequence, none twice, in order; a lost
    // lease in a batch is reported in its place and changes nothing.
    let mut leased: Vec<DeliveryRecord> = two.into_iter().chain(rest).collect();
    let mut seen: Vec<(OnboardingId, i64)> = Vec::new();
    let mut rounds = 0;
    while !leased.is_empty() {
        rounds += 1;
        let mut ons: Vec<&OnboardingId> = leased.iter().map(|x| &x.onboarding_id).collect();
        ons.sort();
        ons.dedup();
        assert_eq!(ons.len(), leased.len(), "one claim per queue at a time");
        if rounds == 3 {
            // More events for the first queue while its head is leased.
            store.apply_change(&change(&queues[0], "late")).await.unwrap();
            store.dispatch_outbox(NOW, 100).await.unwrap();
        }
        let mut batch: Vec<DeliveryUpdate> =
            leased.iter().map(|x| outcome(x, DeliveryState::Delivered, NOW + 1_000)).collect();
        let mut lost = outcome(&leased[0], DeliveryState::Delivered, NOW + 1_000);
        lost.sequence = 10_000;
        batch.insert(1, lost);
        let mut written = vec![true; leased.len() + 1];
        written[1] = false;
        assert_eq!(store.finish_deliveries(&batch, "w").await.unwrap(), written);
        seen.extend(keys(&leased));
        leased = store.claim_deliveries("w", NOW + 1_000, LEASE, 100, 1).await.unwrap();
    }
    assert_eq!(rounds, 21, "20 events per queue, 21 for the first");
    for (i, o) in queues.iter().enumerate() {
        let got: Vec<i64> = seen.iter().filter(|(x, _)| x == o).map(|(_, s)| *s).collect();
        let n = if i == 0 { 21 } else { 20 };
        assert_eq!(got, (1..=n).collect::<Vec<i64>>(), "queue {i} in sequence order");
    }
    assert_eq!(store.delivery_backlog().await.unwrap(), (0, vec![]));
}
