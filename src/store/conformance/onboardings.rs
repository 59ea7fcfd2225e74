//! Conformance: Onboardings, steps and events: creation, reads, changes, and the watchdog's scans.

use super::*;

pub(super) async fn check_create_onboarding(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Whapi).await;
    let mut new = new_onboarding(
        &a,
        "ref-1",
        &[("create_channel", StepState::Ready, None), ("wait_scan", StepState::Pending, None)],
    );
    new.onboarding.external_key = Some("CHAN-1".into());
    new.onboarding.secret = Some(sealed("token"));
    new.onboarding.desired_state = Some(OnboardingState::Live);
    new.onboarding.state_deadline_ms = Some(50_000);
    new.onboarding.expire_ms = Some(60_000);
    let mut rx = store.subscribe();
    let event = store.create_onboarding(&new).await.unwrap();
    let id = &new.onboarding.id;
    assert_eq!(event.sequence, 1);
    assert_eq!(event.kind, EventKind::Created);
    assert_eq!(event.state, OnboardingState::Pending);
    assert_eq!(event.previous_state, OnboardingState::Pending);
    assert_eq!(store.events(id, 0, 10).await.unwrap(), vec![event.clone()]);
    assert_eq!(store.onboarding(&t, id).await.unwrap(), Some(new.onboarding.clone()));
    let steps = store.steps(id).await.unwrap();
    assert_eq!(steps, new.steps);
    let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!((&notice.onboarding_id, notice.sequence), (id, 1));
    // This replica's notice carries the committed event, so its streams need not read it back.
    let committed = notice.committed.expect("a local notice carries its event");
    assert_eq!(*committed.event, event);
    assert_eq!(committed.step, None);
    // Same id twice.
    let again = NewOnboarding { idempotency: None, ..new.clone() };
    assert!(matches!(store.create_onboarding(&again).await, Err(StoreError::AlreadyExists(_))));
}

/// A batch (one `CreateOnboardingLinks`) is all or nothing: when one row cannot be written,
/// none of the batch is, so a replay of the request never finds half a batch behind.
pub(super) async fn check_create_onboardings_is_atomic(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Exotel).await;
    let taken = onboarding(&store, &a, "taken").await;
    let first = new_onboarding(&a, "batch", &[("await_customer", StepState::Ready, Some(1_000))]);
    let mut clash = new_onboarding(&a, "batch", &[]);
    clash.onboarding.id = taken.id.clone();
    let mut last = new_onboarding(&a, "batch", &[]);
    last.idempotency = Some(IdempotencyRecord {
        tenant_id: t.clone(),
        key: "links-1".into(),
        operation: "links".into(),
        request_hash: vec![1],
        resource: "batches/b".into(),
        created_ms: 1_000,
    });
    let err = store.create_onboardings(&[first.clone(), clash, last.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    for id in [&first.onboarding.id, &last.onboarding.id] {
        assert_eq!(store.onboarding(&t, id).await.unwrap(), None, "nothing of the failed batch is stored");
        assert!(store.events(id, 0, 10).await.unwrap().is_empty());
        assert!(store.steps(id).await.unwrap().is_empty());
    }
    assert_eq!(store.idempotency(&t, "links-1").await.unwrap(), None);
    // The same batch without the clash goes in whole, with its idempotency record.
    let events = store.create_onboardings(&[first.clone(), last.clone()]).await.unwrap();
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 1]);
    assert_eq!(store.onboarding(&t, &first.onboarding.id).await.unwrap(), Some(first.onboarding.clone()));
    assert_eq!(store.steps(&first.onboarding.id).await.unwrap(), first.steps);
    assert!(store.idempotency(&t, "links-1").await.unwrap().is_some());
}

/// A bulk create (multi-row statements, chunked under the bind limit) stores what creating
/// the same onboardings one at a time stores: rows, steps (a name given twice stored as its
/// upserts leave it), first events, outbox entries and idempotency records, and sends each
/// onboarding's notice, in batch order, carrying its event and its named step.
pub(super) async fn check_create_onboardings_in_bulk(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    // An enabled destination: every first event goes to the outbox.
    let d = super::deliveries::destination(&t, "d", DeliveryFilter::default());
    store.create_destination(&d).await.unwrap();
    let spec = |i: usize| {
        let steps: &[(&str, StepState, Option<UnixMs>)] = if i.is_multiple_of(2) {
            &[
                ("a", StepState::Succeeded, None),
                ("b", StepState::Ready, Some(2_000)),
                ("c", StepState::Waiting, Some(9_000)),
                ("d", StepState::Pending, None),
            ]
        } else {
            &[]
        };
        let mut new = new_onboarding(&a, &format!("r{i}"), steps);
        if i.is_multiple_of(3) {
            new.onboarding.external_key = Some(format!("key-{i}"));
            new.onboarding.secret = Some(sealed("bulk"));
            new.onboarding.expire_ms = Some(60_000 + i as i64);
            new.onboarding.desired_state = Some(OnboardingState::Live);
        }
        if i.is_multiple_of(4) || i == 5 {
            // At 5, a step the batch does not write.
            new.event.step = Some("c".into());
        }
        if i % 1_000 == 7 {
            new.idempotency = Some(IdempotencyRecord {
                tenant_id: t.clone(),
                key: format!("bulk-{i}-{}", new.onboarding.id),
                operation: "links".into(),
                request_hash: vec![7],
                resource: format!("onboardings/{}", new.onboarding.id),
                created_ms: 1_000,
            });
        }
        if i == 10 {
            // "c" again: the later one's fields, the first one's `created_ms`.
            let mut again = step(&new.onboarding.id, "c", 5, StepState::Ready, Some(3_000));
            again.created_ms = 5_000;
            new.steps.push(again);
        }
        new
    };
    let expected_steps = |new: &NewOnboarding| {
        let mut steps = new.steps.clone();
        if let Some(dup) = steps.iter().rposition(|s| s.name == "c")
            && steps.iter().position(|s| s.name == "c") != Some(dup)
        {
            let later = steps.remove(dup);
            let first = steps.iter_mut().find(|s| s.name == "c").unwrap();
            *first = StepRecord { created_ms: first.created_ms, ..later };
        }
        steps.sort_by(|x, y| (x.position, &x.name).cmp(&(y.position, &y.name)));
        steps
    };
    // More rows than one statement holds on every table but the idempotency keys.
    let n = crate::store::sql::rows_per_statement::<sqlx::Postgres>(10) + 20;
    let bulk: Vec<NewOnboarding> = (0..n).map(spec).collect();
    let events = store.create_onboardings(&bulk).await.unwrap();
    assert_eq!(events.len(), n);
    // The same onboardings one at a time, under other ids, for comparison.
    let singles: Vec<usize> = vec![0, 1, 3, 4, 7, 10, n - 1];
    let mut one_by_one = Vec::new();
    for &i in &singles {
        let mut new = spec(i);
        let id: OnboardingId = new_id();
        new.onboarding.id = id.clone();
        new.onboarding.reference = format!("single-{i}");
        new.steps.iter_mut().for_each(|s| s.onboarding_id = id.clone());
        if let Some(k) = &mut new.idempotency {
            k.key = format!("single-{}", k.key);
        }
        let event = store.create_onboarding(&new).await.unwrap();
        one_by_one.push((i, new, event));
    }
    let renamed = |e: &EventRecord, id: &OnboardingId| EventRecord { onboarding_id: id.clone(), ..e.clone() };
    for (i, new) in bulk.iter().enumerate() {
        let id = &new.onboarding.id;
        assert_eq!(store.onboarding(&t, id).await.unwrap().as_ref(), Some(&new.onboarding), "row {i}");
        let stored_steps = store.steps(id).await.unwrap();
        assert_eq!(stored_steps, expected_steps(new), "steps of {i}");
        let log = store.events(id, 0, 10).await.unwrap();
        assert_eq!(log, vec![events[i].clone()], "events of {i}");
        assert_eq!(events[i].sequence, 1);
        assert_eq!(events[i].step, new.event.step);
        if let Some(k) = &new.idempotency {
            assert_eq!(store.idempotency(&t, &k.key).await.unwrap().map(|r| r.resource), Some(k.resource.clone()));
        }
    }
    for (i, single, event) in &one_by_one {
        let id = &single.onboarding.id;
        let bulk_id = &bulk[*i].onboarding.id;
        let stored = store.onboarding(&t, id).await.unwrap().unwrap();
        assert_eq!(OnboardingRecord { id: bulk_id.clone(), reference: format!("r{i}"), ..stored }, bulk[*i].onboarding);
        let steps: Vec<StepRecord> = store
            .steps(id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| StepRecord { onboarding_id: bulk_id.clone(), ..s })
            .collect();
        assert_eq!(steps, store.steps(bulk_id).await.unwrap(), "steps of {i}, one by one and in bulk");
        assert_eq!(renamed(event, bulk_id), events[*i], "event of {i}");
    }
    // Every first event went to the outbox exactly once.
    let total = n + singles.len();
    let stats = store.dispatch_outbox(10_000, 2 * total as u32).await.unwrap();
    assert_eq!((stats.events, stats.deliveries), (total as u64, total as u64));

    // Notices: one per onboarding, in batch order, each with its event and named step (a
    // batch the bus holds whole).
    let mut rx = store.subscribe();
    let small: Vec<NewOnboarding> = (0..300).map(spec).collect();
    let events = store.create_onboardings(&small).await.unwrap();
    for (new, event) in small.iter().zip(&events) {
        let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!((&notice.onboarding_id, notice.sequence), (&new.onboarding.id, 1));
        let named = new.event.step.as_deref().map(|n| expected_steps(new).into_iter().find(|s| s.name == n));
        match named {
            // Names a step it did not write: a bare notice, its readers read the step.
            Some(None) => assert_eq!(notice.committed, None),
            named => {
                let committed = notice.committed.expect("a local notice carries its event");
                assert_eq!(*committed.event, *event);
                assert_eq!(committed.step.as_deref(), named.flatten().as_ref());
            }
        }
    }
    assert!(store.create_onboardings(&[]).await.unwrap().is_empty());
}

pub(super) async fn check_onboarding_reads(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let stranger = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let mut new = new_onboarding(&a, "r", &[]);
    new.onboarding.external_key = Some("app-1".into());
    store.create_onboarding(&new).await.unwrap();
    let id = &new.onboarding.id;
    assert_eq!(store.onboarding(&stranger, id).await.unwrap(), None, "tenant isolation");
    assert_eq!(store.onboarding_unscoped(id).await.unwrap().map(|o| o.tenant_id), Some(t.clone()));
    assert_eq!(by_key(&store, &a.id, "app-1").await.unwrap().map(|o| o.id), Some(id.clone()));
    assert_eq!(by_key(&store, &a.id, "app-2").await.unwrap(), None);
    let other_account = account(&store, &t, ProviderKind::Gupshup).await;
    assert_eq!(by_key(&store, &other_account.id, "app-1").await.unwrap(), None);
    // A key set later by a change is found too.
    let o2 = onboarding(&store, &a, "r").await;
    store
        .apply_change(&OnboardingChange { external_key: Some("app-2".into()), ..change(&o2.id, "linked") })
        .await
        .unwrap();
    assert_eq!(by_key(&store, &a.id, "app-2").await.unwrap().map(|o| o.id), Some(o2.id));
    assert!(
        store
            .list_onboardings(&stranger, &OnboardingFilter::default(), &page(10, None))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub(super) async fn check_bulk_reads(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let b = account(&store, &t, ProviderKind::Gupshup).await;
    let keyed = |account: &AccountRecord, key: &str, steps: &[(&str, StepState, Option<UnixMs>)]| {
        let mut new = new_onboarding(account, key, steps);
        new.onboarding.external_key = Some(key.into());
        new
    };
    let mut created = Vec::new();
    for new in [
        keyed(&a, "k1", &[("first", StepState::Pending, None)]),
        keyed(&a, "k2", &[("b", StepState::Ready, None), ("a", StepState::Pending, None)]),
        // The key reused by a later attempt: that one is the answer.
        keyed(&a, "k1", &[]),
        keyed(&b, "k2", &[("first", StepState::Pending, None)]),
    ] {
        store.create_onboarding(&new).await.unwrap();
        created.push(new.onboarding);
    }
    assert!(store.onboardings_by_external_keys(&a.id, &[]).await.unwrap().is_empty());
    // More keys than one query binds, most of them unknown.
    let mut keys: Vec<String> = (0..1200).map(|i| format!("unknown-{i}")).collect();
    keys.insert(7, "k1".into());
    keys.push("k2".into());
    let mut found = store.onboardings_by_external_keys(&a.id, &keys).await.unwrap();
    found.sort_by(|x, y| x.id.cmp(&y.id));
    // Ids are time-ordered to the millisecond: two made within one compare by their random part.
    let newest_k1 = if created[2].id > created[0].id { &created[2] } else { &created[0] };
    let mut want = vec![created[1].clone(), newest_k1.clone()];
    want.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(found, want);
    for o in &found {
        let one = by_key(&store, &a.id, o.external_key.as_deref().unwrap()).await.unwrap();
        assert_eq!(one.as_ref(), Some(o), "the same answer for one key");
    }

    assert!(store.steps_of(&[]).await.unwrap().is_empty());
    let mut ids: Vec<OnboardingId> = (0..1200).map(|_| new_id()).collect();
    ids.insert(3, created[1].id.clone());
    ids.push(created[0].id.clone());
    ids.push(created[2].id.clone());
    let all = store.steps_of(&ids).await.unwrap();
    assert_eq!(all.len(), 3);
    for o in &created[..3] {
        let mine: Vec<StepRecord> = all.iter().filter(|s| s.onboarding_id == o.id).cloned().collect();
        assert_eq!(mine, store.steps(&o.id).await.unwrap(), "as `steps` orders them");
    }
    assert!(all.iter().all(|s| s.onboarding_id != created[3].id));
}

pub(super) async fn check_latest_sequences(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let one = onboarding(&store, &a, "one").await;
    let two = onboarding(&store, &a, "two").await;
    for _ in 0..2 {
        store.apply_change(&change(&two.id, "moved")).await.unwrap();
    }
    assert!(store.latest_sequences(&[]).await.unwrap().is_empty());
    // More ids than one query binds, most of them unknown: those are left out.
    let mut ids: Vec<OnboardingId> = (0..1200).map(|_| new_id()).collect();
    ids.insert(3, one.id.clone());
    ids.push(two.id.clone());
    let mut got = store.latest_sequences(&ids).await.unwrap();
    got.sort();
    let mut want = vec![(one.id.clone(), one.sequence), (two.id.clone(), two.sequence + 2)];
    want.sort();
    assert_eq!(got, want);

    // The events marker: SQLite's moves with every committed event and only then (stream
    // reconciliation skips its bulk read while it stands still); PostgreSQL has none.
    let before = store.events_marker().await.unwrap();
    match store.backend() {
        crate::store::Backend::Sqlite => {
            assert!(before.is_some());
            assert_eq!(store.events_marker().await.unwrap(), before, "no event, no move");
            assert!(store.latest_sequences(&ids).await.is_ok());
            store.apply_change(&change(&one.id, "moved")).await.unwrap();
            let after = store.events_marker().await.unwrap();
            assert_ne!(after, before, "an event moves it");
            onboarding(&store, &a, "three").await;
            assert_ne!(store.events_marker().await.unwrap(), after, "a new onboarding's first event too");
        }
        crate::store::Backend::Postgres => assert_eq!(before, None),
    }
}

/// Single-onboarding reads (cached on SQLite) see every write that returned before them,
/// stay tenant-scoped once the row is cached, and never go back to an older sequence while
/// readers race the writer.
pub(super) async fn check_onboarding_reads_follow_writes(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let stranger = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Whapi).await;
    let o = onboarding(&store, &a, "r").await;
    assert_eq!(store.onboarding(&t, &o.id).await.unwrap().map(|o| o.sequence), Some(1));
    assert_eq!(store.onboarding(&stranger, &o.id).await.unwrap(), None, "a cached row stays scoped");
    let e = store
        .apply_change(&OnboardingChange { state: Some(OnboardingState::Live), ..change(&o.id, "live") })
        .await
        .unwrap();
    let read = store.onboarding(&t, &o.id).await.unwrap().unwrap();
    assert_eq!((read.sequence, read.state), (e.sequence, OnboardingState::Live));
    assert_eq!(store.onboarding_unscoped(&o.id).await.unwrap().map(|o| o.sequence), Some(e.sequence));
    assert_eq!(store.onboarding(&stranger, &o.id).await.unwrap(), None);
    // The shared read answers the same, scoped the same.
    assert_eq!(store.onboarding_shared(&t, &o.id).await.unwrap().as_deref(), Some(&read));
    assert_eq!(store.onboarding_shared(&stranger, &o.id).await.unwrap(), None);
    assert_eq!(store.onboarding_shared(&t, &new_id()).await.unwrap(), None);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, t, id, stop) = (store.clone(), t.clone(), o.id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let seq = store.onboarding(&t, &id).await.unwrap().unwrap().sequence;
                    assert!(seq >= last, "read sequence {seq} after {last}");
                    let shared = store.onboarding_shared(&t, &id).await.unwrap().unwrap().sequence;
                    assert!(shared >= seq, "shared read sequence {shared} after {seq}");
                    last = shared;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Enough writes that a read landing between a commit and its cache invalidation (a
    // reader that saw the new row from the database, then the old one from the cache) shows.
    for i in 0..300 {
        let e = store.apply_change(&change(&o.id, &format!("c{i}"))).await.unwrap();
        let seen = store.onboarding(&t, &o.id).await.unwrap().unwrap().sequence;
        assert_eq!(seen, e.sequence, "a read after a returned write sees it");
        assert_eq!(store.onboarding_shared(&t, &o.id).await.unwrap().unwrap().sequence, e.sequence);
        assert_eq!(store.onboarding_unscoped(&o.id).await.unwrap().unwrap().sequence, e.sequence);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
}

pub(super) async fn check_pipeline(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let stranger = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let new = new_onboarding(&a, "r", &[("b", StepState::Ready, None), ("a", StepState::Pending, None)]);
    store.create_onboarding(&new).await.unwrap();
    let id = new.onboarding.id.clone();
    let (o, steps) = store.pipeline(&t, &id).await.unwrap().unwrap();
    assert_eq!(o, new.onboarding);
    assert_eq!(steps, store.steps(&id).await.unwrap());
    assert_eq!(store.pipeline(&stranger, &id).await.unwrap(), None, "tenant isolation");
    assert_eq!(store.pipeline(&t, &new_id()).await.unwrap(), None);
    let bare = new_onboarding(&a, "bare", &[]);
    store.create_onboarding(&bare).await.unwrap();
    assert_eq!(store.pipeline(&t, &bare.onboarding.id).await.unwrap(), Some((bare.onboarding.clone(), vec![])));

    // Every change writes the same counter into the onboarding and into a step: a reader must
    // never see the two apart.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, t, id, stop) = (store.clone(), t.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                    let (o, steps) = store.pipeline(&t, &id).await.unwrap().unwrap();
                    let step = steps.iter().find(|s| s.name == "b").unwrap();
                    if o.sequence > 1 {
                        assert_eq!(o.details_json, step.data_json, "one snapshot at sequence {}", o.sequence);
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut b = new.steps[0].clone();
    for i in 0..40 {
        b.data_json = format!(r#"{{"n":{i}}}"#);
        let c =
            OnboardingChange { details_json: Some(b.data_json.clone()), steps: vec![b.clone()], ..change(&id, "n") };
        store.apply_change(&c).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
}

pub(super) async fn check_list_onboardings(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let g = account(&store, &t, ProviderKind::Gupshup).await;
    let w = account(&store, &t, ProviderKind::Whapi).await;
    let mut ids = Vec::new();
    let (mut whapi, mut on_g, mut batch_a) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..7 {
        let acct = if i % 2 == 0 { &g } else { &w };
        let o = onboarding(&store, acct, if i < 3 { "batch-a" } else { "batch-b" }).await;
        if i % 2 == 1 {
            whapi.push(o.id.clone());
        } else {
            on_g.push(o.id.clone());
        }
        if i < 3 {
            batch_a.push(o.id.clone());
        }
        ids.push(o.id);
    }
    let (live, last_g) = (ids[4].clone(), ids[6].clone());
    for v in [&mut whapi, &mut on_g, &mut batch_a] {
        v.sort();
    }
    store
        .apply_change(&OnboardingChange { state: Some(OnboardingState::Live), ..change(&live, "live") })
        .await
        .unwrap();
    onboarding(&store, &account(&store, &tenant(&store).await, ProviderKind::Gupshup).await, "batch-a").await;

    let list = |filter: OnboardingFilter| {
        let store = store.clone();
        let t = t.clone();
        async move {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let p = store.list_onboardings(&t, &filter, &page(3, after)).await.unwrap();
                all.extend(p.items.into_iter().map(|o| o.id));
                match p.next_page_token {
                    Some(token) => after = Some(token),
                    None => return all,
                }
            }
        }
    };
    // Ids are time-ordered only to the millisecond: compare with the id order.
    ids.sort();
    assert_eq!(list(OnboardingFilter::default()).await, ids);
    let by_provider = list(OnboardingFilter { provider: Some(ProviderKind::Whapi), ..Default::default() }).await;
    assert_eq!(by_provider, whapi);
    let by_account = list(OnboardingFilter { account_id: Some(g.id.clone()), ..Default::default() }).await;
    assert_eq!(by_account, on_g);
    let by_ref = list(OnboardingFilter { reference: Some("batch-a".into()), ..Default::default() }).await;
    assert_eq!(by_ref, batch_a);
    let by_state = list(OnboardingFilter { state: Some(OnboardingState::Live), ..Default::default() }).await;
    assert_eq!(by_state, vec![live]);
    let combined = list(OnboardingFilter {
        provider: Some(ProviderKind::Gupshup),
        state: Some(OnboardingState::Pending),
        reference: Some("batch-b".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(combined, vec![last_g]);

    // Stable paging: rows inserted while paging appear once, at the end, and nothing repeats.
    let first = store.list_onboardings(&t, &OnboardingFilter::default(), &page(3, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await; // a later millisecond: a larger id
    let late = onboarding(&store, &g, "late").await;
    let mut rest = list_after(&store, &t, first.next_page_token.clone()).await;
    let mut all: Vec<_> = first.items.into_iter().map(|o| o.id).collect();
    all.append(&mut rest);
    let mut expected = ids.clone();
    expected.push(late.id);
    assert_eq!(all, expected);
}

async fn list_after(store: &Arc<dyn Store>, t: &TenantId, mut after: Option<String>) -> Vec<OnboardingId> {
    let mut all = Vec::new();
    while let Some(token) = after {
        let p = store.list_onboardings(t, &OnboardingFilter::default(), &page(3, Some(token))).await.unwrap();
        all.extend(p.items.into_iter().map(|o| o.id));
        after = p.next_page_token;
    }
    all
}

pub(super) async fn check_count_onboardings(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let g = account(&store, &t, ProviderKind::Gupshup).await;
    let d = account(&store, &t, ProviderKind::Digital99).await;
    onboarding(&store, &g, "r").await;
    onboarding(&store, &g, "r").await;
    let o = onboarding(&store, &d, "r").await;
    store
        .apply_change(&OnboardingChange { state: Some(OnboardingState::Failed), ..change(&o.id, "failed") })
        .await
        .unwrap();
    let mut counts = store.count_onboardings().await.unwrap();
    counts.sort_by_key(|(p, s, _)| (p.as_str(), s.as_str()));
    assert_eq!(
        counts,
        vec![
            (ProviderKind::Digital99, OnboardingState::Failed, 1),
            (ProviderKind::Gupshup, OnboardingState::Pending, 2)
        ]
    );
}

pub(super) async fn check_apply_change(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let mut new = new_onboarding(&a, "r", &[("link_app", StepState::Ready, None), ("poll", StepState::Pending, None)]);
    new.onboarding.desired_state = Some(OnboardingState::Cancelled);
    new.onboarding.state_deadline_ms = Some(9_000);
    store.create_onboarding(&new).await.unwrap();
    let id = new.onboarding.id.clone();
    let mut rx = store.subscribe();

    let mut done = step(&id, "link_app", 0, StepState::Succeeded, None);
    done.attempts = 1;
    done.finished_ms = Some(2_000);
    let added = step(&id, "subscribe", 2, StepState::Pending, None);
    let ev = store
        .apply_change(&OnboardingChange {
            expect_sequence: Some(1),
            state: Some(OnboardingState::AwaitingCustomer),
            desired_state: Patch::Clear,
            state_reason: Some("link out".into()),
            provider_status: Some("STAGE_1".into()),
            details_json: Some(r#"{"k":2}"#.into()),
            external_key: Some("app-9".into()),
            secret: Some(sealed("app-token")),
            state_deadline_ms: Patch::Clear,
            expire_ms: Patch::Set(77),
            steps: vec![done.clone(), added.clone()],
            event: NewEvent {
                data_json: r#"{"x":1}"#.into(),
                ..NewEvent::new(EventKind::StateChanged, "link out").at_step("link_app")
            },
            ..change(&id, "ignored")
        })
        .await
        .unwrap();
    assert_eq!(
        ev,
        EventRecord {
            onboarding_id: id.clone(),
            sequence: 2,
            kind: crate::domain::EventKind::StateChanged,
            state: OnboardingState::AwaitingCustomer,
            previous_state: OnboardingState::Pending,
            reason: "link out".into(),
            provider_status: "STAGE_1".into(),
            step: Some("link_app".into()),
            data_json: r#"{"x":1}"#.into(),
            created_ms: 2_000,
        }
    );
    let o = store.onboarding(&t, &id).await.unwrap().unwrap();
    let expected = OnboardingRecord {
        state: OnboardingState::AwaitingCustomer,
        desired_state: None,
        state_reason: "link out".into(),
        provider_status: "STAGE_1".into(),
        details_json: r#"{"k":2}"#.into(),
        external_key: Some("app-9".into()),
        secret: Some(sealed("app-token")),
        sequence: 2,
        state_deadline_ms: None,
        expire_ms: Some(77),
        updated_ms: 2_000,
        ..new.onboarding.clone()
    };
    assert_eq!(o, expected);
    let steps = store.steps(&id).await.unwrap();
    assert_eq!(steps, vec![done.clone(), new.steps[1].clone(), added], "upserted by name, in position order");
    let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(notice.sequence, 2);
    let committed = notice.committed.expect("a local notice carries its event");
    assert_eq!(*committed.event, ev);
    assert_eq!(committed.step.as_deref(), Some(&done), "the step the event names, as written");

    // An empty change keeps every field and still appends an event.
    let ev3 = store.apply_change(&change(&id, "token_read")).await.unwrap();
    assert_eq!(
        (ev3.sequence, ev3.state, ev3.previous_state),
        (3, OnboardingState::AwaitingCustomer, OnboardingState::AwaitingCustomer)
    );
    assert_eq!(store.onboarding(&t, &id).await.unwrap().unwrap(), OnboardingRecord { sequence: 3, ..expected });

    let tail = store.events(&id, 1, 10).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(store.events(&id, 0, 2).await.unwrap().iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2]);
    assert!(store.events(&id, 3, 10).await.unwrap().is_empty());

    let missing = change(&new_id(), "x");
    assert!(matches!(store.apply_change(&missing).await, Err(StoreError::NotFound(_))));

    // The notice's step is the row as stored: an upsert keeps the step's first `created_ms`.
    while rx.try_recv().is_ok() {}
    let rewritten = StepRecord { created_ms: 99_999, attempts: 2, ..done.clone() };
    let named = |step: &str| NewEvent { step: Some(step.into()), ..change(&id, "retried").event };
    let ev4 = store
        .apply_change(&OnboardingChange { steps: vec![rewritten.clone()], event: named("link_app"), ..change(&id, "") })
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let committed = notice.committed.expect("a local notice carries its event");
    assert_eq!(*committed.event, ev4);
    let stored = store.steps(&id).await.unwrap().into_iter().find(|s| s.name == "link_app").unwrap();
    assert_eq!(stored.created_ms, done.created_ms);
    assert_eq!(committed.step.as_deref(), Some(&stored));
    // An event naming a step the change did not write: the notice cannot carry it whole.
    store.apply_change(&OnboardingChange { event: named("poll"), ..change(&id, "") }).await.unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!((notice.sequence, notice.committed), (5, None));
}

pub(super) async fn check_apply_change_wakes_steps_by_name(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Whapi).await;
    let new = new_onboarding(&a, "r", &[("wait", StepState::Waiting, Some(50_000)), ("run", StepState::Running, None)]);
    store.create_onboarding(&new).await.unwrap();
    let id = new.onboarding.id.clone();
    // The steps' own runs write their data after the waker read them.
    let mut waiting = new.steps[0].clone();
    waiting.data_json = r#"{"marker":1}"#.into();
    let mut running = new.steps[1].clone();
    running.data_json = r#"{"marker":2}"#.into();
    running.lease_owner = Some("worker-1".into());
    store
        .apply_change(&OnboardingChange { steps: vec![waiting.clone(), running.clone()], ..change(&id, "ran") })
        .await
        .unwrap();

    let wake = OnboardingChange {
        wake_steps: vec!["wait".into(), "run".into(), "missing".into()],
        at_ms: 7_000,
        ..change(&id, "callback")
    };
    store.apply_change(&wake).await.unwrap();
    let steps = store.steps(&id).await.unwrap();
    let by = |n: &str| steps.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(by("wait"), StepRecord { next_run_ms: Some(7_000), updated_ms: 7_000, ..waiting }, "due now, data kept");
    assert_eq!(by("run"), running, "a step that is not waiting is left alone");
    assert_eq!(steps.len(), 2, "no step made up");
}

pub(super) async fn check_apply_change_stale(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let o = onboarding(&store, &a, "r").await;
    let hook = webhook(&a, "d1", 1);
    assert!(store.insert_webhook_event(&hook).await.unwrap());
    store.apply_change(&change(&o.id, "one")).await.unwrap();
    let before = store.onboarding(&t, &o.id).await.unwrap();
    let stale = OnboardingChange {
        expect_sequence: Some(1),
        state: Some(OnboardingState::Live),
        steps: vec![step(&o.id, "first", 0, StepState::Succeeded, None), step(&o.id, "new", 1, StepState::Ready, None)],
        webhook_event_id: Some(hook.id.clone()),
        ..change(&o.id, "stale")
    };
    assert!(matches!(store.apply_change(&stale).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.onboarding(&t, &o.id).await.unwrap(), before, "nothing written");
    assert_eq!(store.events(&o.id, 0, 10).await.unwrap().len(), 2);
    let steps = store.steps(&o.id).await.unwrap();
    assert_eq!((steps.len(), steps[0].state), (1, StepState::Pending));
    assert_eq!(store.webhook_event(&hook.id).await.unwrap().unwrap().status, WebhookStatus::Pending);
    // A change naming a missing webhook event is refused whole.
    let bad = OnboardingChange { webhook_event_id: Some("nope".into()), ..change(&o.id, "bad") };
    assert!(matches!(store.apply_change(&bad).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.onboarding(&t, &o.id).await.unwrap(), before);
    // With the right sequence it applies.
    let ok = OnboardingChange { expect_sequence: Some(2), ..stale };
    assert_eq!(store.apply_change(&ok).await.unwrap().sequence, 3);
}

pub(super) async fn check_apply_change_concurrent(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let o = onboarding(&store, &a, "r").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let id = o.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let mut c = change(&id, &format!("w{i}"));
                if i % 2 == 0 {
                    c.expect_sequence = Some(store.onboarding_unscoped(&id).await.unwrap().unwrap().sequence);
                }
                match store.apply_change(&c).await {
                    Ok(ev) => return (ev.sequence, conflicts),
                    // Only a stale `expect_sequence` may conflict; plain changes serialise.
                    Err(StoreError::Conflict(_)) if i % 2 == 0 => conflicts += 1,
                    Err(e) => panic!("applier {i}: {e}"),
                }
                assert!(conflicts < 1_000, "applier {i} starved");
            }
        }));
    }
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.push(task.await.unwrap().0);
    }
    sequences.sort();
    assert_eq!(sequences, (2..=21).collect::<Vec<i64>>(), "each applier got its own sequence");
    let events = store.events(&o.id, 0, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=21).collect::<Vec<i64>>(), "gap-free");
    let labels: HashSet<_> = events.iter().map(|e| e.reason.clone()).collect();
    assert_eq!(labels.len(), 21);
    assert_eq!(store.onboarding_unscoped(&o.id).await.unwrap().unwrap().sequence, 21);
}

pub(super) async fn check_apply_change_marks_webhook(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Whapi).await;
    let o = onboarding(&store, &a, "r").await;
    let hook = webhook(&a, "evt-1", 10);
    assert!(store.insert_webhook_event(&hook).await.unwrap());
    let claimed = store.claim_webhook_events("w", 100, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = OnboardingChange { webhook_event_id: Some(hook.id.clone()), ..change(&o.id, "callback") };
    store.apply_change(&c).await.unwrap();
    let stored = store.webhook_event(&hook.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.lease_owner), (WebhookStatus::Processed, None));
    assert!(store.claim_webhook_events("w", 1_000_000, Duration::from_secs(30), 10).await.unwrap().is_empty());
}

pub(super) async fn check_apply_change_refuses_a_processed_webhook(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let o = onboarding(&store, &a, "r").await;
    let hook = webhook(&a, "evt-1", 10);
    assert!(store.insert_webhook_event(&hook).await.unwrap());
    let c = OnboardingChange { webhook_event_id: Some(hook.id.clone()), ..change(&o.id, "callback") };
    assert_eq!(store.apply_change(&c).await.unwrap().sequence, 2);
    // The same event again (a worker whose lease lapsed meanwhile): refused, nothing written.
    assert!(matches!(store.apply_change(&c).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.events(&o.id, 0, 10).await.unwrap().len(), 2);
}

pub(super) async fn check_apply_changes_batch(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let (o1, o2, o3) =
        (onboarding(&store, &a, "r").await, onboarding(&store, &a, "r").await, onboarding(&store, &a, "r").await);
    let hooks: Vec<WebhookEventRecord> = (0..4).map(|i| webhook(&a, &format!("b{i}"), i)).collect();
    for h in &hooks {
        assert!(store.insert_webhook_event(h).await.unwrap());
    }
    store.finish_webhook_event(&hooks[3].id, WebhookStatus::Processed, None).await.unwrap();
    let mut rx = store.subscribe();
    let hooked = |id: &OnboardingId, kind: &str, seq: i64, hook: &WebhookEventRecord| OnboardingChange {
        expect_sequence: Some(seq),
        webhook_event_id: Some(hook.id.clone()),
        ..change(id, kind)
    };
    let batch = vec![
        // Two chained changes of o1: the second expects the sequence the first makes, and
        // rewrites the step the first added.
        OnboardingChange {
            state: Some(OnboardingState::AwaitingCustomer),
            steps: vec![step(&o1.id, "first", 0, StepState::Waiting, None)],
            ..hooked(&o1.id, "one", 1, &hooks[0])
        },
        OnboardingChange {
            provider_status: Some("two".into()),
            steps: vec![step(&o1.id, "first", 0, StepState::Waiting, Some(7))],
            ..hooked(&o1.id, "two", 2, &hooks[1])
        },
        // A stale change of o2, then one whose expected sequence happens to be right: computed
        // on top of the stale one, it must not apply either.
        OnboardingChange { expect_sequence: Some(5), ..change(&o2.id, "stale") },
        OnboardingChange { expect_sequence: Some(1), ..change(&o2.id, "after-stale") },
        // o3's webhook event was already processed elsewhere.
        hooked(&o3.id, "again", 1, &hooks[3]),
        change(&new_id(), "nobody"),
        // o2's pending event, in an unrelated change of o1 that is fine.
        OnboardingChange { webhook_event_id: Some(hooks[2].id.clone()), ..change(&o1.id, "three") },
    ];
    let outcomes = store.apply_changes(&batch).await.unwrap();
    assert_eq!(outcomes.len(), batch.len());
    let applied: Vec<(String, i64, OnboardingState, OnboardingState)> = outcomes
        .iter()
        .filter_map(|o| match o {
            ChangeOutcome::Applied(e) => Some((e.reason.clone(), e.sequence, e.previous_state, e.state)),
            _ => None,
        })
        .collect();
    let (pending, awaiting) = (OnboardingState::Pending, OnboardingState::AwaitingCustomer);
    assert_eq!(
        applied,
        vec![
            ("one".into(), 2, pending, awaiting),
            ("two".into(), 3, awaiting, awaiting),
            ("three".into(), 4, awaiting, awaiting)
        ]
    );
    assert!(matches!(outcomes[2], ChangeOutcome::Conflict(_)), "{:?}", outcomes[2]);
    assert!(matches!(outcomes[3], ChangeOutcome::Conflict(_)), "{:?}", outcomes[3]);
    assert!(matches!(outcomes[4], ChangeOutcome::AlreadyProcessed(_)), "{:?}", outcomes[4]);
    assert!(matches!(outcomes[5], ChangeOutcome::NotFound(_)), "{:?}", outcomes[5]);
    let now1 = store.onboarding_unscoped(&o1.id).await.unwrap().unwrap();
    assert_eq!((now1.sequence, now1.state, now1.provider_status.as_str()), (4, awaiting, "two"));
    let steps = store.steps(&o1.id).await.unwrap();
    assert_eq!((steps.len(), steps[0].state, steps[0].next_run_ms), (1, StepState::Waiting, Some(7)));
    for (o, seq) in [(&o2, 1), (&o3, 1)] {
        assert_eq!(store.onboarding_unscoped(&o.id).await.unwrap().unwrap().sequence, seq, "untouched");
        assert_eq!(store.events(&o.id, 0, 10).await.unwrap().len(), 1);
    }
    for h in &hooks {
        assert_eq!(store.webhook_event(&h.id).await.unwrap().unwrap().status, WebhookStatus::Processed);
    }
    // One notice per applied change, after the commit.
    let mut notices = Vec::new();
    while notices.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if n.onboarding_id == o1.id {
            notices.push(n.sequence);
        }
    }
    assert_eq!(notices, vec![2, 3, 4]);

    // An error rolls the whole batch back, changes already made in it included.
    let before = store.onboarding_unscoped(&o1.id).await.unwrap().unwrap();
    let broken = vec![change(&o1.id, "kept?"), OnboardingChange { onboarding_id: None, ..change(&o1.id, "broken") }];
    assert!(store.apply_changes(&broken).await.is_err());
    assert_eq!(store.onboarding_unscoped(&o1.id).await.unwrap().unwrap(), before);
    assert_eq!(store.events(&o1.id, 0, 10).await.unwrap().len(), 4);
    assert!(store.apply_changes(&[]).await.unwrap().is_empty());
}

pub(super) async fn check_overdue(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Exotel).await;
    let mk = |deadline: Option<UnixMs>, state: OnboardingState| {
        let mut n = new_onboarding(&a, "r", &[]);
        n.onboarding.state_deadline_ms = deadline;
        n.onboarding.state = state;
        n
    };
    let late2 = mk(Some(50), OnboardingState::AwaitingCustomer);
    let late1 = mk(Some(10), OnboardingState::Pending);
    let cases = [
        late2.clone(),
        late1.clone(),
        mk(Some(100), OnboardingState::Pending),
        mk(Some(200), OnboardingState::Pending),
        mk(None, OnboardingState::Pending),
        mk(Some(5), OnboardingState::Failed),
        mk(Some(5), OnboardingState::Cancelled),
        mk(Some(5), OnboardingState::Expired),
    ];
    for c in &cases {
        store.create_onboarding(c).await.unwrap();
    }
    let overdue = store.overdue_onboardings(100, 10).await.unwrap();
    assert_eq!(
        overdue.iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
        vec![late1.onboarding.id.clone(), late2.onboarding.id]
    );
    assert_eq!(store.overdue_onboardings(100, 1).await.unwrap().len(), 1);
    // Clearing the deadline takes it off the list.
    let c = OnboardingChange { state_deadline_ms: Patch::Clear, ..change(&late1.onboarding.id, "moved") };
    store.apply_change(&c).await.unwrap();
    assert_eq!(store.overdue_onboardings(100, 10).await.unwrap().len(), 1);
}

pub(super) async fn check_expiring(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Whapi).await;
    let now: UnixMs = 100_000_000;
    let hour = 3_600;
    let mk = |created: UnixMs, expire: Option<UnixMs>, state: OnboardingState| {
        let mut n = new_onboarding(&a, "r", &[]);
        n.onboarding.created_ms = created;
        n.onboarding.expire_ms = expire;
        n.onboarding.state = state;
        n
    };
    let soon = mk(1_000, Some(now + 1_000_000), OnboardingState::Live);
    let sooner = mk(1_000, Some(now + 500_000), OnboardingState::AwaitingCustomer);
    let cases = [
        soon.clone(),
        sooner.clone(),
        mk(1_000, Some(now + 5_000_000), OnboardingState::Live), // outside the hour
        mk(now - 100_000, Some(now + 1_000_000), OnboardingState::Live), // lived less than the hour
        mk(1_000, Some(now - 1), OnboardingState::Live),         // already past
        mk(1_000, None, OnboardingState::Live),                  // no expiry
        mk(1_000, Some(now + 1_000), OnboardingState::Failed),   // terminal
        mk(1_000, Some(now + 1_000), OnboardingState::Expired),  // terminal
    ];
    for c in &cases {
        store.create_onboarding(c).await.unwrap();
    }
    let ids = |v: Vec<OnboardingRecord>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.expiring_onboardings(now, hour, 10).await.unwrap()),
        vec![sooner.onboarding.id.clone(), soon.onboarding.id.clone()],
        "soonest first"
    );
    assert_eq!(store.expiring_onboardings(now, hour, 1).await.unwrap().len(), 1);
    // Warned at the hour: off the hour's list and the day's; still due for a smaller threshold.
    let warned = OnboardingChange { expiry_warned_secs: Some(hour), ..change(&soon.onboarding.id, "expiry_warning") };
    store.apply_change(&warned).await.unwrap();
    assert_eq!(ids(store.expiring_onboardings(now, hour, 10).await.unwrap()), vec![sooner.onboarding.id.clone()]);
    assert!(!ids(store.expiring_onboardings(now, 24 * hour, 10).await.unwrap()).contains(&soon.onboarding.id));
    assert!(ids(store.expiring_onboardings(now, 1_200, 10).await.unwrap()).contains(&soon.onboarding.id));
    // The same expiry written again keeps the warning; a new expiry forgets it.
    let same = OnboardingChange { expire_ms: Patch::Set(now + 1_000_000), ..change(&soon.onboarding.id, "polled") };
    store.apply_change(&same).await.unwrap();
    assert!(!ids(store.expiring_onboardings(now, hour, 10).await.unwrap()).contains(&soon.onboarding.id));
    let moved = OnboardingChange { expire_ms: Patch::Set(now + 2_000_000), ..change(&soon.onboarding.id, "extended") };
    store.apply_change(&moved).await.unwrap();
    assert!(ids(store.expiring_onboardings(now, hour, 10).await.unwrap()).contains(&soon.onboarding.id));
}
