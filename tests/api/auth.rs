use crate::helpers::*;
use wa_onboard::grpc::pb;

#[tokio::test]
async fn calls_without_a_key_are_unauthenticated() {
    let app = spawn_app().await;
    let err = app.providers().list_providers(pb::ListProvidersRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("authorization"), "{}", err.message());
}

#[tokio::test]
async fn calls_with_a_bad_or_revoked_key_are_unauthenticated() {
    let app = spawn_app().await;
    for key in ["wao_notakey", "garbage", ""] {
        let err = app.providers().list_providers(with_key(pb::ListProvidersRequest {}, key)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "key {key:?}");
    }
    // A revoked key stops working (after the short auth cache).
    let store = &app.running().store;
    let tenant = store.tenant_by_name("dev").await.unwrap().unwrap();
    let extra = wa_onboard::core::tenants::add_key(store.as_ref(), &tenant.id, None).await.unwrap();
    app.providers().list_providers(with_key(pb::ListProvidersRequest {}, extra.key.expose())).await.unwrap();
    assert!(store.revoke_api_key(&extra.id, wa_onboard::domain::now_ms()).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    let err =
        app.providers().list_providers(with_key(pb::ListProvidersRequest {}, extra.key.expose())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn good_key_works_and_health_and_reflection_stay_open() {
    let app = spawn_app().await;
    let providers = app.providers().list_providers(app.req(pb::ListProvidersRequest {})).await.unwrap().into_inner();
    assert_eq!(providers.providers.len(), 4);
    let gupshup = &providers.providers[0];
    assert_eq!(gupshup.provider, pb::Provider::Gupshup as i32);
    assert!(gupshup.capabilities.contains(&(pb::Capability::LinkApp as i32)));
    // No adapter yet: the service says so instead of pretending.
    assert!(providers.providers.iter().all(|p| p.implemented), "every adapter is built in");

    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_provider_without_an_adapter_says_unimplemented_not_fake_success() {
    // A build with no adapters registered.
    let app = spawn_with_providers(|_| {}, Some(wa_onboard::providers::ProviderRegistry::new())).await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s1"))).await.unwrap();
    let mut req = pb::CreateOnboardingRequest { account: "accounts/acme".into(), ..Default::default() };
    let err = app.onboardings().create_onboarding(app.req(req.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "no request kind: {err:?}");
    assert_eq!(violations(&err), vec!["request".to_string()]);
    req.request = Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
        app_name: "AcmeSupport".into(),
        waba_id: "123456789".into(),
        phone: "+15551112222".into(),
        ..Default::default()
    }));
    let err = app.onboardings().create_onboarding(app.req(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().to_lowercase().contains("gupshup"), "{}", err.message());
    let err = app
        .accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: "accounts/acme".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn sandbox_mode_runs_simulators_and_gives_the_dev_tenant_accounts() {
    let app = spawn_with(|s| s.sandbox.enabled = true).await;
    let providers = app.providers().list_providers(app.req(pb::ListProvidersRequest {})).await.unwrap().into_inner();
    assert!(providers.providers.iter().all(|p| p.sandbox_available && p.account_count == 1));
    let accounts =
        app.accounts().list_accounts(app.req(pb::ListAccountsRequest::default())).await.unwrap().into_inner();
    let names: Vec<_> = accounts.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["accounts/sandbox-digital99", "accounts/sandbox-exotel", "accounts/sandbox-gupshup", "accounts/sandbox-whapi"]
    );
    assert!(accounts.accounts.iter().all(|a| a.sandbox && a.credentials.is_none()));
    // The simulators answer on the endpoints the core knows.
    let options = wa_onboard::domain::account::AccountOptions::default();
    let whapi = app
        .running()
        .core
        .endpoints()
        .base_url(wa_onboard::domain::ProviderKind::Whapi, &options, true)
        .expect("sandbox");
    let r = reqwest::get(format!("{whapi}/_sim/counters")).await.unwrap();
    assert!(r.status().is_success());
}
