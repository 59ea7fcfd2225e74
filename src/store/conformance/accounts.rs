//! Conformance: Accounts, and ids scoped per tenant across every area.

use super::*;

pub(super) async fn check_accounts(store: Arc<dyn Store>) {
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

pub(super) async fn check_account_listing(store: Arc<dyn Store>) {
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

/// Two tenants each own `accounts/x` and `onboardings/y` (their keys are `{tenant}.{id}`):
/// each reads its own, events and steps do not mix, webhooks route to the right account, and
/// a duplicate within one tenant is still refused.
pub(super) async fn check_ids_per_tenant(store: Arc<dyn Store>) {
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
