//! Conformance: Tenants, API keys and idempotency records.

use super::*;

pub(super) async fn check_tenants(store: Arc<dyn Store>) {
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

pub(super) async fn check_api_keys(store: Arc<dyn Store>) {
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

pub(super) async fn check_idempotency(store: Arc<dyn Store>) {
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
