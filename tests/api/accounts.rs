use crate::helpers::*;
use wa_onboard::grpc::pb;

#[tokio::test]
async fn create_get_list_delete_never_returns_credentials() {
    let app = spawn_app().await;
    let mut c = app.accounts();
    let created = c.create_account(app.req(gupshup_account("acme", "very-secret-1"))).await.unwrap().into_inner();
    assert_eq!(created.name, "accounts/acme");
    assert!(created.credentials.is_none());
    assert!(created.credentials_set);
    // The URL names the account's key (`{tenant}.acme`): unique across tenants.
    let key = app.account_key("acme").await;
    assert!(created.webhook_url.contains(&format!("/webhooks/gupshup/{}/", key.as_str())), "{}", created.webhook_url);

    let got =
        c.get_account(app.req(pb::GetAccountRequest { name: "accounts/acme".into() })).await.unwrap().into_inner();
    assert!(got.credentials.is_none());
    assert!(got.webhook_url.is_empty(), "the webhook secret is shown only at creation");
    assert!(!format!("{got:?}").contains("very-secret-1"));

    for i in 0..3 {
        c.create_account(app.req(gupshup_account(&format!("acme-{i}"), "s"))).await.unwrap();
    }
    let page1 = c
        .list_accounts(app.req(pb::ListAccountsRequest { page_size: 3, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.accounts.len(), 3);
    assert!(!page1.next_page_token.is_empty());
    let page2 = c
        .list_accounts(app.req(pb::ListAccountsRequest {
            page_size: 3,
            page_token: page1.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.accounts.len(), 1);
    assert!(page2.next_page_token.is_empty());
    assert!(page1.accounts.iter().chain(&page2.accounts).all(|a| a.credentials.is_none()));

    c.delete_account(app.req(pb::DeleteAccountRequest { name: "accounts/acme".into(), force: false })).await.unwrap();
    let err = c.get_account(app.req(pb::GetAccountRequest { name: "accounts/acme".into() })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn credentials_are_encrypted_at_rest() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "plaintext-never-stored"))).await.unwrap();
    // Read the raw row with a separate connection, as an attacker with the file would.
    let url = format!("sqlite:{}", app._dir.path().join("wa-onboard.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (blob, key_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT credentials, credentials_key_id FROM accounts WHERE id = $1")
            .bind(app.account_key("acme").await.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(key_id, "k1");
    assert!(blob.len() > 28);
    let hay = String::from_utf8_lossy(&blob);
    assert!(!hay.contains("plaintext-never-stored"));
    assert!(!hay.contains("ops@acme.test"));
    // Nothing else in the database holds it either.
    let dump: Vec<(String,)> = sqlx::query_as("SELECT options_json || status_json || display_name FROM accounts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(dump.iter().all(|(s,)| !s.contains("plaintext-never-stored")));
    // And the service can still use it.
    let record = app.running().store.account_unscoped(&app.account_key("acme").await).await.unwrap().unwrap();
    match app.running().core.account_credentials(&record).unwrap() {
        wa_onboard::domain::account::Credentials::Gupshup { secret, .. } => {
            assert_eq!(secret.expose(), "plaintext-never-stored")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn create_is_idempotent_with_request_id() {
    let app = spawn_app().await;
    let mut c = app.accounts();
    let mut req = gupshup_account("", "s1");
    req.request_id = "req-1".into();
    let a = c.create_account(app.req(req.clone())).await.unwrap().into_inner();
    let b = c.create_account(app.req(req.clone())).await.unwrap().into_inner();
    assert_eq!(a.name, b.name, "the retry returns the same account");
    let all = c.list_accounts(app.req(pb::ListAccountsRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.accounts.len(), 1, "only one account was created");

    // Same key, different request: refused, with the key named.
    let mut other = gupshup_account("", "s2");
    other.request_id = "req-1".into();
    let err = c.create_account(app.req(other)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("req-1"), "{}", err.message());

    // Concurrent retries with one key create one account.
    let mut req = gupshup_account("", "s3");
    req.request_id = "req-2".into();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut c = app.accounts();
        let r = app.req(req.clone());
        handles.push(tokio::spawn(async move { c.create_account(r).await.map(|a| a.into_inner().name) }));
    }
    let mut names = std::collections::HashSet::new();
    for h in handles {
        names.insert(h.await.unwrap().unwrap());
    }
    assert_eq!(names.len(), 1);
    let all = c.list_accounts(app.req(pb::ListAccountsRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.accounts.len(), 2);
}

#[tokio::test]
async fn invalid_requests_get_field_violations() {
    let app = spawn_app().await;
    let mut c = app.accounts();
    let mut req = gupshup_account("Not_Valid", "");
    req.request_id = "x".repeat(200);
    let err = c.create_account(app.req(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let v = violations(&err);
    assert!(v.contains(&"account_id".to_string()), "{v:?}");
    assert!(v.contains(&"request_id".to_string()), "{v:?}");

    let mut req = gupshup_account("ok", "");
    req.account.as_mut().unwrap().provider = 0;
    let err = c.create_account(app.req(req)).await.unwrap_err();
    assert!(violations(&err).contains(&"account.provider".to_string()));

    // Credentials of another provider, and missing secret.
    let mut req = gupshup_account("ok", "");
    req.account.as_mut().unwrap().provider = pb::Provider::Exotel as i32;
    let err = c.create_account(app.req(req)).await.unwrap_err();
    let v = violations(&err);
    assert!(v.contains(&"account.credentials".to_string()), "{v:?}");

    // Custom endpoints are off by default (SSRF guard).
    let mut req = gupshup_account("ok", "s");
    req.account.as_mut().unwrap().options =
        Some(pb::AccountOptions { endpoint: "http://10.0.0.1/".into(), options: None });
    let err = c.create_account(app.req(req)).await.unwrap_err();
    assert!(violations(&err).contains(&"account.options.endpoint".to_string()));

    for name in ["acme", "accounts/", "accounts/UPPER", "onboardings/x"] {
        let err = c.get_account(app.req(pb::GetAccountRequest { name: name.into() })).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        assert_eq!(violations(&err), vec!["name".to_string()]);
    }
    let err = c
        .list_accounts(app.req(pb::ListAccountsRequest { page_size: -1, page_token: "zz".into(), provider: 99 }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err).len(), 3);
}

#[tokio::test]
async fn other_tenants_resources_are_not_found() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let onboarding = app.insert_onboarding("acme", "ref-1").await;
    let other = app.other_tenant("other-svc").await;
    let k = other.expose();
    let err = app
        .accounts()
        .get_account(with_key(pb::GetAccountRequest { name: "accounts/acme".into() }, k))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = app
        .accounts()
        .delete_account(with_key(pb::DeleteAccountRequest { name: "accounts/acme".into(), force: true }, k))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let name = format!("onboardings/{onboarding}");
    let err = app
        .onboardings()
        .get_onboarding(with_key(pb::GetOnboardingRequest { name: name.clone() }, k))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = app
        .onboardings()
        .watch_onboarding(with_key(pb::WatchOnboardingRequest { name: name.clone(), after_sequence: 0 }, k))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err =
        app.pipelines().get_pipeline(with_key(pb::GetPipelineRequest { name: name.clone() }, k)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let listed =
        app.accounts().list_accounts(with_key(pb::ListAccountsRequest::default(), k)).await.unwrap().into_inner();
    assert!(listed.accounts.is_empty());
    let listed = app
        .onboardings()
        .list_onboardings(with_key(pb::ListOnboardingsRequest::default(), k))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.onboardings.is_empty());
    // The owner still sees everything.
    app.onboardings().get_onboarding(app.req(pb::GetOnboardingRequest { name })).await.unwrap();
}

#[tokio::test]
async fn delete_with_open_onboardings_needs_force() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    let err = app
        .accounts()
        .delete_account(app.req(pb::DeleteAccountRequest { name: "accounts/acme".into(), force: false }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    app.accounts()
        .delete_account(app.req(pb::DeleteAccountRequest { name: "accounts/acme".into(), force: true }))
        .await
        .unwrap();
    let o = app
        .onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: format!("onboardings/{id}") }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.state, pb::OnboardingState::Failed as i32);
}

#[tokio::test]
async fn list_onboardings_filters_and_pages() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let a = app.insert_onboarding("acme", "ref-a").await;
    app.insert_onboarding("acme", "ref-b").await;
    app.insert_onboarding("acme", "ref-b").await;
    app.change_state(&a, wa_onboard::domain::OnboardingState::Live, "WHATSAPP_PROVISIONING_DONE").await;
    let mut c = app.onboardings();
    let by_ref = c
        .list_onboardings(app.req(pb::ListOnboardingsRequest { reference: "ref-b".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_ref.onboardings.len(), 2);
    let live = c
        .list_onboardings(
            app.req(pb::ListOnboardingsRequest { state: pb::OnboardingState::Live as i32, ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.onboardings.len(), 1);
    assert_eq!(live.onboardings[0].provider_status.as_ref().unwrap().code, "WHATSAPP_PROVISIONING_DONE");
    let p1 = c
        .list_onboardings(app.req(pb::ListOnboardingsRequest { page_size: 2, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let p2 = c
        .list_onboardings(app.req(pb::ListOnboardingsRequest {
            page_size: 2,
            page_token: p1.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.onboardings.len() + p2.onboardings.len(), 3);
    assert!(p2.next_page_token.is_empty());
    // An accounts token does not page onboardings.
    let accounts_tok = wa_onboard::grpc::convert::page_token("accounts", Some("x".into()));
    let err = c
        .list_onboardings(app.req(pb::ListOnboardingsRequest { page_token: accounts_tok, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["page_token".to_string()]);
}
