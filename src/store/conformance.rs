//! The conformance suite: every check runs against both backends (`sqlite_suite` on a
//! temporary file, `postgres_suite` in a fresh schema), so the two cannot drift apart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::domain::{EventKind, Patch, StepState, new_id, now_ms};

// ----- fixtures -----

async fn tenant(store: &Arc<dyn Store>) -> TenantId {
    let id: TenantId = new_id();
    let rec = TenantRecord { id: id.clone(), name: format!("tenant-{id}"), created_ms: now_ms() };
    store.create_tenant(&rec).await.unwrap();
    id
}

fn sealed(tag: &str) -> Sealed {
    // Every byte value, so an encoding that mangles binary data shows.
    let mut blob: Vec<u8> = (0..=255u8).collect();
    blob.extend_from_slice(tag.as_bytes());
    Sealed { key_id: format!("k-{tag}"), blob }
}

fn account_rec(tenant: &TenantId, provider: ProviderKind) -> AccountRecord {
    let id: AccountId = new_id();
    AccountRecord {
        id: id.clone(),
        tenant_id: tenant.clone(),
        provider,
        display_name: format!("acct {id}"),
        options_json: r#"{"region":"in"}"#.into(),
        credentials: sealed("cred"),
        webhook_secret: sealed("hook"),
        sandbox: true,
        status_json: "{}".into(),
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

async fn account(store: &Arc<dyn Store>, tenant: &TenantId, provider: ProviderKind) -> AccountRecord {
    let rec = account_rec(tenant, provider);
    store.insert_account(&rec, None).await.unwrap();
    rec
}

/// A step row for tests (also used by the stream cache's tests).
pub(crate) fn step(
    id: &OnboardingId,
    name: &str,
    position: i32,
    state: StepState,
    next_run_ms: Option<UnixMs>,
) -> StepRecord {
    StepRecord {
        onboarding_id: id.clone(),
        name: name.into(),
        position,
        state,
        attempts: 0,
        max_attempts: 5,
        next_run_ms,
        lease_owner: None,
        lease_until_ms: None,
        last_error: None,
        last_error_code: None,
        provider_stage_json: "{}".into(),
        data_json: "{}".into(),
        deadline_ms: None,
        started_ms: None,
        finished_ms: None,
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

fn new_onboarding(
    account: &AccountRecord,
    reference: &str,
    steps: &[(&str, StepState, Option<UnixMs>)],
) -> NewOnboarding {
    let id: OnboardingId = new_id();
    let steps =
        steps.iter().enumerate().map(|(i, (name, state, next))| step(&id, name, i as i32, *state, *next)).collect();
    NewOnboarding {
        onboarding: OnboardingRecord {
            id,
            tenant_id: account.tenant_id.clone(),
            account_id: account.id.clone(),
            provider: account.provider,
            state: OnboardingState::Pending,
            desired_state: None,
            state_reason: "accepted".into(),
            provider_status: "".into(),
            reference: reference.into(),
            details_json: r#"{"k":1}"#.into(),
            engine_json: r#"{"e":1}"#.into(),
            external_key: None,
            secret: None,
            sequence: 1,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: 1_000,
            updated_ms: 1_000,
        },
        steps,
        event: NewEvent::new(EventKind::Created, "accepted"),
        idempotency: None,
    }
}

async fn onboarding(store: &Arc<dyn Store>, account: &AccountRecord, reference: &str) -> OnboardingRecord {
    let new = new_onboarding(account, reference, &[("first", StepState::Pending, None)]);
    store.create_onboarding(&new).await.unwrap();
    new.onboarding
}

/// The onboarding of `account` with one provider-side key.
async fn by_key(store: &Arc<dyn Store>, account: &AccountId, key: &str) -> StoreResult<Option<OnboardingRecord>> {
    let mut found = store.onboardings_by_external_keys(account, &[key.to_string()]).await?;
    assert!(found.len() <= 1, "one per key");
    Ok(found.pop())
}

/// A bare change of `id`; `label` is its event's reason, which the checks read back (the store
/// does not interpret the event kind).
fn change(id: &OnboardingId, label: &str) -> OnboardingChange {
    OnboardingChange::new(id, NewEvent::new(EventKind::Callback, label), 2_000)
}

fn webhook(account: &AccountRecord, dedupe: &str, received_ms: UnixMs) -> WebhookEventRecord {
    WebhookEventRecord {
        id: new_id::<OnboardingId>().to_string(),
        provider: account.provider,
        account_id: account.id.clone(),
        dedupe_key: dedupe.into(),
        body: b"{\"event\":1}\x00\xff".to_vec(),
        status: WebhookStatus::Pending,
        note: None,
        lease_owner: None,
        lease_until_ms: None,
        received_ms,
    }
}

fn page(limit: u32, after: Option<String>) -> PageRequest {
    PageRequest { limit, after }
}

// ----- checks -----

async fn check_ping_and_backend(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let _ = store.backend();
}

async fn check_tenants(store: Arc<dyn Store>) {
    let a = TenantRecord { id: new_id(), name: "zeta".into(), created_ms: 5 };
    let b = TenantRecord { id: new_id(), name: "alpha".into(), created_ms: 6 };
    store.create_tenant(&a).await.unwrap();
    store.create_tenant(&b).await.unwrap();
    let dup = TenantRecord { id: new_id(), name: "zeta".into(), created_ms: 7 };
    assert!(matches!(store.create_tenant(&dup).await, Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.tenant_by_name("zeta").await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenant(&b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(store.tenant(&new_id()).await.unwrap(), None);
    assert_eq!(store.tenant_by_name("nobody").await.unwrap(), None);
    assert_eq!(store.list_tenants().await.unwrap(), vec![b, a]);
}

async fn check_api_keys(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let key = ApiKeyRecord {
        id: new_id(),
        tenant_id: t.clone(),
        hash: vec![0, 1, 2, 255, 254],
        prefix: "wak_ab".into(),
        created_ms: 10,
        revoked_ms: None,
    };
    let other = ApiKeyRecord { id: new_id(), hash: vec![9; 32], created_ms: 11, ..key.clone() };
    store.add_api_key(&key).await.unwrap();
    store.add_api_key(&other).await.unwrap();
    let same_hash = ApiKeyRecord { id: new_id(), ..key.clone() };
    assert!(matches!(store.add_api_key(&same_hash).await, Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.api_key_by_hash(&key.hash).await.unwrap(), Some(key.clone()));
    assert_eq!(store.api_key_by_hash(&[7, 7]).await.unwrap(), None);
    assert!(store.revoke_api_key(&key.id, 99).await.unwrap());
    assert!(!store.revoke_api_key(&key.id, 100).await.unwrap(), "revoking twice");
    assert!(!store.revoke_api_key(&new_id(), 100).await.unwrap());
    assert_eq!(store.api_key_by_hash(&key.hash).await.unwrap(), None, "revoked keys do not authenticate");
    let listed = store.list_api_keys(&t).await.unwrap();
    assert_eq!(listed, vec![ApiKeyRecord { revoked_ms: Some(99), ..key }, other]);
    assert!(store.list_api_keys(&tenant(&store).await).await.unwrap().is_empty());
}

async fn check_accounts(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let stranger = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let got = store.account(&t, &a.id).await.unwrap().unwrap();
    assert_eq!(got, a);
    assert_eq!(got.credentials.blob, sealed("cred").blob, "stored bytes are exactly the sealed blob");
    assert_eq!(store.account(&stranger, &a.id).await.unwrap(), None, "tenant isolation");
    assert_eq!(store.account_unscoped(&a.id).await.unwrap(), Some(a.clone()));
    // Keys are global (a tenant's ids are per tenant because its keys carry the tenant).
    let clash = AccountRecord { tenant_id: stranger.clone(), ..a.clone() };
    assert!(matches!(store.insert_account(&clash, None).await, Err(StoreError::AlreadyExists(_))));

    let updated = AccountRecord {
        display_name: "renamed".into(),
        credentials: sealed("rotated"),
        status_json: r#"{"ok":true}"#.into(),
        sandbox: false,
        updated_ms: 2_000,
        ..a.clone()
    };
    store.update_account(&updated).await.unwrap();
    // Both reads see the write at once (where a backend caches accounts, too).
    assert_eq!(store.account(&t, &a.id).await.unwrap(), Some(updated.clone()));
    assert_eq!(store.account_unscoped(&a.id).await.unwrap(), Some(updated.clone()));
    let foreign = AccountRecord { tenant_id: stranger.clone(), ..updated.clone() };
    assert!(matches!(store.update_account(&foreign).await, Err(StoreError::NotFound(_))));

    assert!(!store.delete_account(&stranger, &a.id).await.unwrap(), "other tenant cannot delete");
    assert!(store.delete_account(&t, &a.id).await.unwrap());
    assert!(!store.delete_account(&t, &a.id).await.unwrap());
    assert_eq!(store.account(&t, &a.id).await.unwrap(), None);
    assert_eq!(store.account_unscoped(&a.id).await.unwrap(), None);
}

async fn check_account_listing(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let mut gupshup = Vec::new();
    for i in 0..5 {
        let provider = if i % 2 == 0 { ProviderKind::Gupshup } else { ProviderKind::Whapi };
        let a = account(&store, &t, provider).await;
        if provider == ProviderKind::Gupshup {
            gupshup.push(a.id.clone());
        }
    }
    account(&store, &tenant(&store).await, ProviderKind::Gupshup).await;

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let p = store.list_accounts(&t, None, &page(2, after.clone())).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.iter().map(|a| a.id.clone()));
        pages += 1;
        match p.next_page_token {
            Some(token) => after = Some(token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "ascending ids, no repeats");
    assert_eq!(seen.len(), 5, "only the tenant's accounts");

    gupshup.sort();
    let p = store.list_accounts(&t, Some(ProviderKind::Gupshup), &page(10, None)).await.unwrap();
    assert_eq!(p.items.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), gupshup);
    assert_eq!(p.next_page_token, None);
    let p = store.list_accounts(&t, Some(ProviderKind::Exotel), &page(10, None)).await.unwrap();
    assert!(p.items.is_empty());
}

async fn check_idempotency(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Exotel).await;
    let idem = IdempotencyRecord {
        tenant_id: t.clone(),
        key: "req-1".into(),
        operation: "CreateOnboarding".into(),
        request_hash: vec![1, 2, 3],
        resource: "onboardings/x".into(),
        created_ms: 5,
    };
    let mut first = new_onboarding(&a, "ref", &[("s", StepState::Ready, None)]);
    first.idempotency = Some(idem.clone());
    store.create_onboarding(&first).await.unwrap();
    assert_eq!(store.idempotency(&t, "req-1").await.unwrap(), Some(idem.clone()));
    assert_eq!(store.idempotency(&t, "req-2").await.unwrap(), None);

    let mut second = new_onboarding(&a, "ref", &[("s", StepState::Ready, None)]);
    second.idempotency = Some(IdempotencyRecord { request_hash: vec![9], ..idem.clone() });
    assert!(matches!(store.create_onboarding(&second).await, Err(StoreError::AlreadyExists(_))));
    let sid = &second.onboarding.id;
    assert_eq!(store.onboarding_unscoped(sid).await.unwrap(), None, "nothing written");
    assert!(store.steps(sid).await.unwrap().is_empty());
    assert!(store.events(sid, 0, 10).await.unwrap().is_empty());
    assert_eq!(store.idempotency(&t, "req-1").await.unwrap(), Some(idem.clone()), "winner kept");

    // Accounts take idempotency keys in the same transaction.
    let acct_key = IdempotencyRecord { key: "req-acct".into(), operation: "CreateAccount".into(), ..idem.clone() };
    let acct = account_rec(&t, ProviderKind::Gupshup);
    store.insert_account(&acct, Some(&acct_key)).await.unwrap();
    assert_eq!(store.idempotency(&t, "req-acct").await.unwrap(), Some(acct_key.clone()));
    let loser = account_rec(&t, ProviderKind::Gupshup);
    assert!(matches!(store.insert_account(&loser, Some(&acct_key)).await, Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.account(&t, &loser.id).await.unwrap(), None, "key taken: account not written");
    let fresh_key = IdempotencyRecord { key: "req-acct-2".into(), ..acct_key };
    assert!(matches!(store.insert_account(&acct, Some(&fresh_key)).await, Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.idempotency(&t, "req-acct-2").await.unwrap(), None, "id taken: key not written");

    // Keys are per tenant.
    let t2 = tenant(&store).await;
    let a2 = account(&store, &t2, ProviderKind::Exotel).await;
    let mut third = new_onboarding(&a2, "ref", &[]);
    third.idempotency = Some(IdempotencyRecord { tenant_id: t2.clone(), ..idem });
    store.create_onboarding(&third).await.unwrap();
}

async fn check_create_onboarding(store: Arc<dyn Store>) {
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
async fn check_create_onboardings_is_atomic(store: Arc<dyn Store>) {
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

async fn check_onboarding_reads(store: Arc<dyn Store>) {
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

async fn check_bulk_reads(store: Arc<dyn Store>) {
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

async fn check_latest_sequences(store: Arc<dyn Store>) {
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
}

/// Single-onboarding reads (cached on SQLite) see every write that returned before them,
/// stay tenant-scoped once the row is cached, and never go back to an older sequence while
/// readers race the writer.
async fn check_onboarding_reads_follow_writes(store: Arc<dyn Store>) {
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
    for i in 0..30 {
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

async fn check_pipeline(store: Arc<dyn Store>) {
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

async fn check_list_onboardings(store: Arc<dyn Store>) {
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

async fn check_count_onboardings(store: Arc<dyn Store>) {
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

async fn check_apply_change(store: Arc<dyn Store>) {
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

async fn check_apply_change_wakes_steps_by_name(store: Arc<dyn Store>) {
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

async fn check_apply_change_stale(store: Arc<dyn Store>) {
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

async fn check_apply_change_concurrent(store: Arc<dyn Store>) {
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

async fn check_apply_change_marks_webhook(store: Arc<dyn Store>) {
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

async fn check_apply_change_refuses_a_processed_webhook(store: Arc<dyn Store>) {
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

async fn check_apply_changes_batch(store: Arc<dyn Store>) {
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

async fn check_claim_steps(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    let now = 100_000;
    let new = new_onboarding(
        &a,
        "r",
        &[
            ("ready_now", StepState::Ready, None),
            ("ready_due", StepState::Ready, Some(now)),
            ("ready_later", StepState::Ready, Some(now + 1)),
            ("waiting_due", StepState::Waiting, Some(now - 5)),
            ("waiting_callback", StepState::Waiting, None),
            ("pending", StepState::Pending, Some(0)),
            ("done", StepState::Succeeded, Some(0)),
            ("running_lost", StepState::Running, None),
            ("running_held", StepState::Running, None),
        ],
    );
    let mut new = new;
    let id = new.onboarding.id.clone();
    for s in &mut new.steps {
        s.attempts = 2;
        if s.name == "running_lost" {
            (s.lease_owner, s.lease_until_ms) = (Some("dead".into()), Some(now - 1));
        }
        if s.name == "running_held" {
            (s.lease_owner, s.lease_until_ms) = (Some("alive".into()), Some(now + 10_000));
        }
    }
    store.create_onboarding(&new).await.unwrap();

    let claimed = store.claim_steps("w1", now, Duration::from_secs(30), 100).await.unwrap();
    let names: Vec<&str> = claimed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["ready_now", "ready_due", "waiting_due", "running_lost"]);
    for s in &claimed {
        assert_eq!(s.state, StepState::Running);
        assert_eq!(s.lease_owner.as_deref(), Some("w1"));
        assert_eq!(s.lease_until_ms, Some(now + 30_000));
        assert_eq!(s.started_ms, Some(now));
        let expected_attempts = if s.name == "waiting_due" { 2 } else { 3 };
        assert_eq!(s.attempts, expected_attempts, "{}", s.name);
    }
    assert_eq!(store.steps(&id).await.unwrap().iter().filter(|s| s.lease_owner.as_deref() == Some("w1")).count(), 4);
    assert!(store.claim_steps("w2", now, Duration::from_secs(30), 100).await.unwrap().is_empty(), "leases hold");

    // Leases: the holder renews; after expiry another worker takes it and the first loses it.
    assert!(store.renew_lease(&id, "ready_now", "w1", now + 40_000).await.unwrap());
    assert!(!store.renew_lease(&id, "ready_now", "w2", now + 40_000).await.unwrap());
    let later = now + 40_000;
    let stolen = store.claim_steps("w2", later, Duration::from_secs(30), 100).await.unwrap();
    let stolen_names: HashSet<&str> = stolen.iter().map(|s| s.name.as_str()).collect();
    assert!(
        stolen_names.contains("ready_now")
            && stolen_names.contains("ready_later")
            && stolen_names.contains("running_held")
    );
    assert!(!store.renew_lease(&id, "ready_now", "w1", later + 1).await.unwrap(), "stolen lease");
    assert!(store.renew_lease(&id, "ready_now", "w2", later + 1).await.unwrap());
    assert!(!store.renew_lease(&id, "done", "w2", later + 1).await.unwrap());

    // The limit is honoured.
    let o2 = new_onboarding(
        &a,
        "r",
        &[("a", StepState::Ready, None), ("b", StepState::Ready, None), ("c", StepState::Ready, None)],
    );
    store.create_onboarding(&o2).await.unwrap();
    assert_eq!(store.claim_steps("w3", later, Duration::from_secs(30), 2).await.unwrap().len(), 2);
}

async fn check_claim_steps_disjoint(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let a = account(&store, &t, ProviderKind::Gupshup).await;
    for _ in 0..10 {
        let names: Vec<(String, StepState, Option<UnixMs>)> =
            (0..5).map(|i| (format!("s{i}"), StepState::Ready, Some(10))).collect();
        let steps: Vec<(&str, StepState, Option<UnixMs>)> =
            names.iter().map(|(n, s, r)| (n.as_str(), *s, *r)).collect();
        store.create_onboarding(&new_onboarding(&a, "r", &steps)).await.unwrap();
    }
    let claimer = |worker: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim_steps(worker, 1_000, Duration::from_secs(60), 3).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                for s in batch {
                    assert_eq!(s.lease_owner.as_deref(), Some(worker));
                    got.push((s.onboarding_id, s.name));
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let (one, two) = (claimer("w1"), claimer("w2"));
    let (one, two) = (one.await.unwrap(), two.await.unwrap());
    let mut all: Vec<_> = one.iter().chain(two.iter()).cloned().collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, 50, "every step claimed exactly once (w1 {}, w2 {})", one.len(), two.len());
    assert_eq!(all.len(), 50, "no step claimed twice");
}

async fn check_overdue(store: Arc<dyn Store>) {
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

async fn check_expiring(store: Arc<dyn Store>) {
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

async fn check_webhook_events(store: Arc<dyn Store>) {
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

async fn check_insert_webhook_events(store: Arc<dyn Store>) {
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

fn taken(grant: RateGrant) -> bool {
    matches!(grant, RateGrant::Taken(_))
}

fn wait_of(grant: RateGrant) -> Duration {
    match grant {
        RateGrant::Wait(d) => d,
        RateGrant::Taken(slot) => panic!("expected a wait, got slot {slot}"),
    }
}

async fn check_rate_acquire(store: Arc<dyn Store>) {
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
async fn stamp_of(store: &Arc<dyn Store>, key: &str, window: Duration, probe: i64) -> i64 {
    let wait = wait_of(store.rate_acquire(key, 1, window, Some(probe)).await.unwrap());
    probe + wait.as_millis() as i64 - window.as_millis() as i64
}

async fn check_rate_acquire_stamps_with_the_store_clock(store: Arc<dyn Store>) {
    let window = Duration::from_secs(600);
    let before = now_ms();
    assert!(taken(store.rate_acquire("clock", 1, window, None).await.unwrap()));
    let after = now_ms();
    let stamp = stamp_of(&store, "clock", window, after).await;
    assert!((before..=after).contains(&stamp), "stamped {stamp}, called within {before}..={after}");
}

async fn check_rate_restamp(store: Arc<dyn Store>) {
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

async fn check_notify_subscribe(store: Arc<dyn Store>) {
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

/// Two tenants each own `accounts/x` and `onboardings/y` (their keys are `{tenant}.{id}`):
/// each reads its own, events and steps do not mix, webhooks route to the right account, and
/// a duplicate within one tenant is still refused.
async fn check_ids_per_tenant(store: Arc<dyn Store>) {
    let (ta, tb) = (tenant(&store).await, tenant(&store).await);
    let mut accounts = Vec::new();
    let mut onboardings = Vec::new();
    for t in [&ta, &tb] {
        let a = AccountRecord { id: AccountId::scoped(t, "x").unwrap(), ..account_rec(t, ProviderKind::Whapi) };
        store.insert_account(&a, None).await.unwrap();
        let mut new = new_onboarding(&a, &format!("ref-{t}"), &[("first", StepState::Pending, None)]);
        let id = OnboardingId::scoped(t, "y").unwrap();
        new.onboarding.id = id.clone();
        for s in &mut new.steps {
            s.onboarding_id = id.clone();
        }
        store.create_onboarding(&new).await.unwrap();
        accounts.push(a);
        onboardings.push(new.onboarding);
    }
    let (aa, ab) = (&accounts[0], &accounts[1]);
    let (oa, ob) = (&onboardings[0], &onboardings[1]);
    assert_eq!((aa.id.name(), ab.id.name(), oa.id.name(), ob.id.name()), ("x", "x", "y", "y"));
    assert_ne!(aa.id, ab.id);
    // Each tenant reads its own; the other's key reads as absent.
    assert_eq!(store.account(&ta, &aa.id).await.unwrap().unwrap().tenant_id, ta);
    assert_eq!(store.account(&tb, &ab.id).await.unwrap().unwrap().tenant_id, tb);
    assert_eq!(store.account(&ta, &ab.id).await.unwrap(), None);
    assert_eq!(store.onboarding(&ta, &oa.id).await.unwrap().unwrap().reference, format!("ref-{ta}"));
    assert_eq!(store.onboarding(&tb, &ob.id).await.unwrap().unwrap().reference, format!("ref-{tb}"));
    assert_eq!(store.onboarding(&tb, &oa.id).await.unwrap(), None);
    let listed = store.list_onboardings(&tb, &OnboardingFilter::default(), &page(10, None)).await.unwrap();
    assert_eq!(listed.items.iter().map(|o| &o.id).collect::<Vec<_>>(), vec![&ob.id]);
    let by_account = OnboardingFilter { account_id: Some(aa.id.clone()), ..Default::default() };
    assert_eq!(store.list_onboardings(&ta, &by_account, &page(10, None)).await.unwrap().items.len(), 1);
    assert!(store.list_onboardings(&tb, &by_account, &page(10, None)).await.unwrap().items.is_empty());
    // Events and steps stay with their onboarding.
    store.apply_change(&change(&oa.id, "only-a")).await.unwrap();
    let labels = |evs: Vec<EventRecord>| evs.into_iter().map(|e| e.reason).collect::<Vec<_>>();
    assert_eq!(labels(store.events(&oa.id, 0, 10).await.unwrap()), vec!["accepted", "only-a"]);
    assert_eq!(labels(store.events(&ob.id, 0, 10).await.unwrap()), vec!["accepted"]);
    assert_eq!(store.steps(&ob.id).await.unwrap().len(), 1);
    assert!(store.steps(&ob.id).await.unwrap().iter().all(|s| s.onboarding_id == ob.id));
    // Webhooks: the URL segment is the key; the same dedupe key is one event per account.
    assert_eq!(store.webhook_account(&aa.id).await.unwrap().unwrap().tenant_id, ta);
    assert_eq!(store.webhook_account(&ab.id).await.unwrap().unwrap().tenant_id, tb);
    assert_eq!(store.webhook_account(&AccountId::parse("x").unwrap()).await.unwrap(), None, "no legacy row");
    assert!(store.insert_webhook_event(&webhook(aa, "same", 1)).await.unwrap());
    assert!(store.insert_webhook_event(&webhook(ab, "same", 1)).await.unwrap());
    // Within one tenant, ids are still unique.
    let again = AccountRecord { id: aa.id.clone(), ..account_rec(&ta, ProviderKind::Whapi) };
    assert!(matches!(store.insert_account(&again, None).await, Err(StoreError::AlreadyExists(_))));
    let mut dup = new_onboarding(aa, "dup", &[]);
    dup.onboarding.id = oa.id.clone();
    assert!(matches!(store.create_onboarding(&dup).await, Err(StoreError::AlreadyExists(_))));
}

fn claim(tenant: &TenantId, key: &str, owner: &str, hash: &[u8], until: UnixMs) -> RequestClaim {
    RequestClaim {
        tenant_id: tenant.clone(),
        key: key.into(),
        operation: "Op".into(),
        request_hash: hash.to_vec(),
        owner: owner.into(),
        lease_until_ms: until,
    }
}

async fn check_request_claims(store: Arc<dyn Store>) {
    let t = tenant(&store).await;
    let other = tenant(&store).await;
    let a = claim(&t, "k", "a", &[1, 2, 0, 255], 10_000);
    assert_eq!(store.claim_request(&a, 1_000).await.unwrap(), None, "a new key is claimed");
    // A live claim is held: the holder is returned as stored, binary hash intact.
    let b = claim(&t, "k", "b", &[9], 20_000);
    assert_eq!(store.claim_request(&b, 5_000).await.unwrap(), Some(a.clone()));
    // Another tenant's key of the same name is another claim.
    assert_eq!(store.claim_request(&claim(&other, "k", "b", &[9], 20_000), 5_000).await.unwrap(), None);
    // Only the owner releases it.
    assert!(!store.release_request(&t, "k", "b").await.unwrap());
    assert!(store.release_request(&t, "k", "a").await.unwrap());
    assert_eq!(store.claim_request(&b, 5_000).await.unwrap(), None, "released: the next caller claims it");
    // A lapsed lease is taken over (its owner died); the old owner's release is then a no-op.
    let c = claim(&t, "k", "c", &[7], 40_000);
    assert_eq!(store.claim_request(&c, 20_000).await.unwrap(), None, "taken over at the lease's end");
    assert!(!store.release_request(&t, "k", "b").await.unwrap());
    assert_eq!(store.claim_request(&b, 30_000).await.unwrap(), Some(c));

    // Racing claimers: exactly one wins.
    let mut joins = Vec::new();
    for i in 0..8 {
        let (store, t) = (store.clone(), t.clone());
        joins.push(tokio::spawn(async move {
            store.claim_request(&claim(&t, "race", &format!("w{i}"), &[1], 90_000), 1_000).await.unwrap().is_none()
        }));
    }
    let mut won = 0;
    for j in joins {
        won += usize::from(j.await.unwrap());
    }
    assert_eq!(won, 1);
}

async fn check_resource_bindings(store: Arc<dyn Store>) {
    let (o1, o2): (OnboardingId, OnboardingId) = (new_id(), new_id());
    let bind = |o: &OnboardingId, scope: &str, r: &str| ResourceBinding {
        scope: scope.into(),
        resource: r.into(),
        onboarding_id: o.clone(),
        created_ms: 1_000,
    };
    assert_eq!(store.resource_binding("s", "app").await.unwrap(), None);
    assert_eq!(store.bind_resource(&bind(&o1, "s", "app")).await.unwrap(), o1);
    assert_eq!(store.bind_resource(&bind(&o1, "s", "app")).await.unwrap(), o1, "binding again is a no-op");
    assert_eq!(store.bind_resource(&bind(&o2, "s", "app")).await.unwrap(), o1, "the first holder keeps it");
    assert_eq!(store.bind_resource(&bind(&o2, "s2", "app")).await.unwrap(), o2, "another scope is another resource");
    assert_eq!(store.resource_binding("s", "app").await.unwrap(), Some(o1.clone()));

    // Racing binders of one resource: one holder, whom every binder is told.
    let mut joins = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let o: OnboardingId = new_id();
        joins.push(tokio::spawn(async move { store.bind_resource(&bind(&o, "s", "raced")).await.unwrap() }));
    }
    let mut holders = HashSet::new();
    for j in joins {
        holders.insert(j.await.unwrap());
    }
    assert_eq!(holders.len(), 1);
}

async fn check_create_intents(store: Arc<dyn Store>) {
    let (o1, o2): (OnboardingId, OnboardingId) = (new_id(), new_id());
    let intent = |o: &OnboardingId| CreateIntent {
        onboarding_id: o.clone(),
        step: "link".into(),
        scope: "s".into(),
        subject: "919000000001".into(),
        at_ms: 1_000,
    };
    assert!(store.pending_create_intents("s", "919000000001").await.unwrap().is_empty());
    assert!(!store.begin_create_intent(&intent(&o1)).await.unwrap(), "a first call has nothing pending before it");
    assert!(store.begin_create_intent(&intent(&o1)).await.unwrap(), "the first call's answer was never recorded");
    assert!(!store.begin_create_intent(&intent(&o2)).await.unwrap());
    let mut pending = store.pending_create_intents("s", "919000000001").await.unwrap();
    pending.sort();
    let mut both = vec![o1.clone(), o2.clone()];
    both.sort();
    assert_eq!(pending, both);
    store.resolve_create_intent(&o1, "link").await.unwrap();
    assert_eq!(store.pending_create_intents("s", "919000000001").await.unwrap(), vec![o2.clone()]);
    assert!(!store.begin_create_intent(&intent(&o1)).await.unwrap(), "the last call's answer was recorded");
    assert!(store.pending_create_intents("s", "other").await.unwrap().is_empty());
}

macro_rules! conformance_suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite_suite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _dir) = crate::store::testing::sqlite_store().await;
                    super::$check(store).await;
                }
            )*
        }

        mod postgres_suite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some((store, url)) = crate::store::testing::pg_store().await else { return };
                    super::$check(store).await;
                    crate::store::testing::drop_pg(&url).await;
                }
            )*
        }
    };
}

conformance_suite!(
    check_ping_and_backend,
    check_tenants,
    check_api_keys,
    check_accounts,
    check_ids_per_tenant,
    check_account_listing,
    check_idempotency,
    check_create_onboarding,
    check_create_onboardings_is_atomic,
    check_onboarding_reads,
    check_latest_sequences,
    check_bulk_reads,
    check_onboarding_reads_follow_writes,
    check_pipeline,
    check_list_onboardings,
    check_count_onboardings,
    check_apply_change,
    check_apply_change_stale,
    check_apply_change_wakes_steps_by_name,
    check_apply_change_concurrent,
    check_apply_change_marks_webhook,
    check_apply_change_refuses_a_processed_webhook,
    check_apply_changes_batch,
    check_claim_steps,
    check_claim_steps_disjoint,
    check_overdue,
    check_expiring,
    check_webhook_events,
    check_insert_webhook_events,
    check_rate_acquire,
    check_rate_acquire_stamps_with_the_store_clock,
    check_rate_restamp,
    check_notify_subscribe,
    check_request_claims,
    check_resource_bindings,
    check_create_intents,
);

// ----- backend-specific -----

/// Rows as the code before migration 0003 wrote them (ids global, keys bare), for the
/// migration tests; `blob` spells a byte-string literal in the backend's SQL.
fn pre_0003_rows(blob: fn(&[u8]) -> String) -> String {
    let b = blob(&sealed("hook").blob);
    format!(
        "INSERT INTO tenants VALUES ('t-one', 'one', 1), ('t-two', 'two', 1);
         INSERT INTO accounts VALUES ('x', 't-one', 'whapi', 'X', '{{}}', 'k', {b}, 'k', {b}, TRUE, '{{}}', 1, 1),
                                     ('z', 't-two', 'whapi', 'Z', '{{}}', 'k', {b}, 'k', {b}, TRUE, '{{}}', 1, 1);
         INSERT INTO onboardings (id, tenant_id, account_id, provider, state, state_reason, provider_status,
             reference, details_json, external_key, sequence, created_ms, updated_ms)
             VALUES ('y', 't-one', 'x', 'whapi', 'PENDING', 'r', '', 'ref-y', '{{}}', 'chan-1', 2, 1, 1);
         INSERT INTO onboarding_events VALUES ('y', 1, 'created', 'PENDING', 'PENDING', 'r', '', NULL, '{{}}', 1),
                                              ('y', 2, 'callback', 'PENDING', 'PENDING', 'r', '', 'first', '{{}}', 2);
         INSERT INTO pipeline_steps (onboarding_id, name, position, state, attempts, max_attempts,
             provider_stage_json, data_json, created_ms, updated_ms)
             VALUES ('y', 'first', 0, 'READY', 0, 5, '{{}}', '{{}}', 1, 1);
         INSERT INTO webhook_events VALUES ('w1', 'whapi', 'x', 'd1', {b}, 'PENDING', NULL, NULL, NULL, 1);"
    )
}

/// What the store reads back after migration 0003 converted [`pre_0003_rows`].
async fn check_pre_0003_rows(store: &Arc<dyn Store>) {
    let t1 = TenantId::parse("t-one").unwrap();
    let x = AccountId::scoped(&t1, "x").unwrap();
    let y = OnboardingId::scoped(&t1, "y").unwrap();
    let a = store.account(&t1, &x).await.unwrap().expect("account under its per-tenant key");
    assert_eq!((a.id.as_str(), a.display_name.as_str()), ("t-one.x", "X"));
    assert_eq!(a.webhook_secret.blob, sealed("hook").blob);
    // The webhook URL providers were told (bare id) and the new form both route to it.
    assert_eq!(store.webhook_account(&AccountId::parse("x").unwrap()).await.unwrap().map(|a| a.id), Some(x.clone()));
    assert_eq!(store.webhook_account(&x).await.unwrap().map(|a| a.id), Some(x.clone()));
    let z = store.webhook_account(&AccountId::parse("z").unwrap()).await.unwrap().unwrap();
    assert_eq!((z.id.as_str(), z.tenant_id.as_str()), ("t-two.z", "t-two"));
    let o = store.onboarding(&t1, &y).await.unwrap().expect("onboarding under its per-tenant key");
    assert_eq!((o.account_id.clone(), o.sequence, o.reference.as_str()), (x.clone(), 2, "ref-y"));
    let events = store.events(&y, 0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.onboarding_id.clone(), e.sequence)).collect::<Vec<_>>(),
        vec![(y.clone(), 1), (y.clone(), 2)]
    );
    assert_eq!(store.steps(&y).await.unwrap().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["first"]);
    assert_eq!(by_key(store, &x, "chan-1").await.unwrap().map(|o| o.id), Some(y.clone()));
    assert_eq!(store.webhook_event("w1").await.unwrap().unwrap().account_id, x);
    // The references still hold: the events and steps go with their onboarding, and the
    // migrated ids stay taken within their tenant only.
    store.apply_change(&change(&y, "after")).await.unwrap();
    let again = AccountRecord { id: x.clone(), ..account_rec(&t1, ProviderKind::Whapi) };
    assert!(matches!(store.insert_account(&again, None).await, Err(StoreError::AlreadyExists(_))));
    let t2 = TenantId::parse("t-two").unwrap();
    let theirs = AccountRecord { id: AccountId::scoped(&t2, "x").unwrap(), ..account_rec(&t2, ProviderKind::Whapi) };
    store.insert_account(&theirs, None).await.unwrap();
}

mod sqlite_only {
    use super::*;

    /// Migration 0003 converts rows written with global ids (0001-0002 schema).
    #[tokio::test]
    async fn migration_0003_scopes_existing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        {
            use std::str::FromStr;
            let options =
                sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true).foreign_keys(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
            sqlx::migrate!("./migrations/sqlite").run_to(2, &pool).await.unwrap();
            let rows = pre_0003_rows(|b| format!("X'{}'", hex::encode(b)));
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::connect(&url).await.unwrap());
        check_pre_0003_rows(&store).await;
    }

    #[tokio::test]
    async fn backend_is_sqlite() {
        let (store, _dir) = crate::store::testing::sqlite_store().await;
        assert_eq!(store.backend(), Backend::Sqlite);
    }

    #[tokio::test]
    async fn in_memory_url_works() {
        let store = open("sqlite::memory:").await.unwrap();
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let o = onboarding(&store, &a, "r").await;
        store.apply_change(&change(&o.id, "x")).await.unwrap();
        assert_eq!(store.onboarding(&t, &o.id).await.unwrap().unwrap().sequence, 2);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let t = {
            let store = open(&url).await.unwrap();
            tenant(&store).await
        };
        migrate(&url).await.unwrap();
        let store = open(&url).await.unwrap();
        assert!(store.tenant(&t).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unparsable_stored_enum_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = open(&url).await.unwrap();
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let o = onboarding(&store, &a, "r").await;
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("UPDATE onboardings SET state = 'BOGUS'").execute(&raw).await.unwrap();
        assert!(matches!(store.onboarding(&t, &o.id).await, Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused() {
        assert!(matches!(open("mysql://x").await, Err(StoreError::Other(_))));
    }
}

mod postgres_only {
    use super::*;
    use crate::store::postgres::PgStore;
    use crate::store::testing;
    use sqlx::Connection;

    /// Migration 0003 converts rows written with global ids (0001-0002 schema).
    #[tokio::test]
    async fn migration_0003_scopes_existing_ids() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap();
        {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
            sqlx::migrate!("./migrations/postgres").run_to(2, &pool).await.unwrap();
            let rows = pre_0003_rows(|b| format!("'\\x{}'::bytea", hex::encode(b)));
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
        check_pre_0003_rows(&store).await;
        testing::drop_pg(&url).await;
    }

    /// Part of the suite so that `cargo test` fails loudly without a database.
    #[tokio::test]
    async fn server_is_reachable() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        // A schema of its own: migrating the shared database's public schema would tie it to
        // whichever branch's migrations ran last.
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL test server {} unreachable: {e}. Set {}=skip to opt out.",
                redact_url(&base),
                testing::PG_URL_ENV
            )
        });
        let store = PgStore::connect(&url).await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        drop(store);
        testing::drop_pg(&url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_cross_replicas() {
        let Some((first, url)) = testing::pg_store().await else {
            return;
        };
        let second = PgStore::connect(&url).await.unwrap();
        let mut rx = first.subscribe();
        let notice = ChangeNotice::moved(new_id(), 3);
        second.notify(&notice).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap(), notice);

        // A change written through one replica wakes the other.
        let t = tenant(&first).await;
        let a = account(&first, &t, ProviderKind::Gupshup).await;
        let o = onboarding(&first, &a, "r").await;
        let mut rx2 = second.subscribe();
        first.apply_change(&change(&o.id, "x")).await.unwrap();
        // From another replica: a bare notice (its readers read the event).
        let wanted = ChangeNotice::moved(o.id.clone(), 2);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            // The creation notice (sequence 1) may still be on its way.
            loop {
                let n = rx2.recv().await.unwrap();
                if n.sequence != 1 {
                    return n;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, wanted);

        // Another schema on the same server hears nothing.
        let Some((other, other_url)) = testing::pg_store().await else {
            return;
        };
        let mut rx3 = other.subscribe();
        first.notify(&notice).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), rx3.recv()).await.is_err(), "schemas are isolated");
        drop(second);
        testing::drop_pg(&url).await;
        testing::drop_pg(&other_url).await;
    }

    /// A caller that queued behind another replica holding the key's lock stamps its slot when
    /// it gets the lock, not when it asked: the queueing must not shorten the slot's hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_slot_is_stamped_after_the_key_lock() {
        let Some((store, url)) = testing::pg_store().await else {
            return;
        };
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock(hashtext('held'))").execute(&mut other).await.unwrap();
        let window = Duration::from_secs(600);
        let asked = now_ms();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.rate_acquire("held", 1, window, None).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "queued behind the lock");
        let released = now_ms();
        sqlx::query("SELECT pg_advisory_unlock(hashtext('held'))").execute(&mut other).await.unwrap();
        assert!(taken(waiting.await.unwrap()));
        let stamp = stamp_of(&store, "held", window, now_ms()).await;
        assert!(stamp >= released, "stamped {stamp}: asked at {asked}, lock released at {released}");
        drop(other);
        testing::drop_pg(&url).await;
    }

    #[tokio::test]
    async fn unparsable_stored_enum_is_corrupt() {
        let Some((store, url)) = testing::pg_store().await else {
            return;
        };
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let raw = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE accounts SET provider = 'twilio'").execute(&raw).await.unwrap();
        assert!(matches!(store.account(&t, &a.id).await, Err(StoreError::Corrupt(_))));
        raw.close().await;
        testing::drop_pg(&url).await;
    }

    #[tokio::test]
    async fn outage_is_unavailable_quickly() {
        let started = std::time::Instant::now();
        // Port 1 on loopback: nothing listens.
        match PgStore::connect("postgres://postgres@127.0.0.1:1/test").await {
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("connected to nothing"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn test_schemas_are_created_and_dropped() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap();
        assert!(url.contains("search_path"));
        let store = PgStore::connect(&url).await.unwrap();
        tenant(&(Arc::new(store) as Arc<dyn Store>)).await;
        crate::store::postgres::drop_schema(&url).await.unwrap();
        // Refuses anything that is not a test schema.
        assert!(crate::store::postgres::drop_schema(&base).await.is_err());
    }
}
