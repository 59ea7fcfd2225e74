//! Conformance: Durable work: step leases, request claims, resource bindings, create intents.

use super::*;

pub(super) async fn check_claim_steps(store: Arc<dyn Store>) {
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

pub(super) async fn check_claim_steps_disjoint(store: Arc<dyn Store>) {
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

pub(super) async fn check_request_claims(store: Arc<dyn Store>) {
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

pub(super) async fn check_resource_bindings(store: Arc<dyn Store>) {
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

pub(super) async fn check_create_intents(store: Arc<dyn Store>) {
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
