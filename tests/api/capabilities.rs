//! Capability RPCs (CheckAccount, TokenService, SubscriptionService, ChannelService) over real
//! gRPC, against an in-memory test adapter registered for every provider kind:
//! Gupshup = subscriptions + partner token, Exotel = hosted links, Whapi = channels +
//! subscriptions, 99digital = none of them (for `UNIMPLEMENTED`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use wa_onboard::app;
use wa_onboard::domain::{Capability, E164, OnboardingId, OnboardingState, ProviderKind, Secret, now_ms};
use wa_onboard::error::AppError;
use wa_onboard::grpc::pb;
use wa_onboard::providers::http::TokenStatus;
use wa_onboard::providers::*;
use wa_onboard::store::{NewEvent, NewOnboarding, OnboardingRecord};

use crate::helpers::*;

// ----- the test adapter -----

#[derive(Debug, Default)]
struct FakeState {
    /// Every provider call, by operation name.
    calls: Mutex<Vec<String>>,
    /// The next provider call fails with this.
    fail_next: Mutex<Option<ProviderError>>,
    reject_credentials: Mutex<bool>,
    subs: Mutex<BTreeMap<String, ProviderSubscription>>,
    next_sub: Mutex<u32>,
    /// Request ids already applied by `extend`.
    extended: Mutex<HashMap<String, u32>>,
    refreshes: Mutex<u64>,
}

impl FakeState {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, op: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|c| *c == op).count()
    }

    fn fail_next(&self, e: ProviderError) {
        *self.fail_next.lock().unwrap() = Some(e);
    }

    fn call(&self, op: &str) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(op.to_string());
        match self.fail_next.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Fake {
    kind: ProviderKind,
    caps: Vec<Capability>,
    state: Arc<FakeState>,
}

impl Fake {
    fn has(&self, c: Capability) -> bool {
        self.caps.contains(&c)
    }
}

fn need_token(target: &ResourceRef) -> Result<(), ProviderError> {
    match &target.secret {
        Some(s) if s.expose() == "resource-token" => Ok(()),
        _ => Err(ProviderError::Unauthenticated { raw: "no-resource-token".into() }),
    }
}

fn channel(target: &ResourceRef, mode: ChannelMode) -> ChannelInfo {
    ChannelInfo {
        id: target.handle.external_key.clone(),
        display_name: "Acme channel".into(),
        mode: Some(mode),
        health: "AUTH".into(),
        phone: Some(E164::parse("+15551112222").unwrap()),
        active_till_ms: Some(now_ms() + 10 * 86_400_000 + 60_000),
        stopped: false,
        api_url: "https://gate.example/chan".into(),
        created_ms: Some(1_700_000_000_000),
    }
}

#[async_trait]
impl Provider for Fake {
    fn kind(&self) -> ProviderKind {
        self.kind
    }
    fn flow_capabilities(&self) -> &[Capability] {
        &self.caps
    }
    async fn check_credentials(&self, _ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        self.state.call("check")?;
        if *self.state.reject_credentials.lock().unwrap() {
            return Err(ProviderError::Unauthenticated { raw: "1003".into() });
        }
        Ok(CredentialsCheck { summary: "partner Acme".into(), fields: BTreeMap::new() })
    }
    // Onboardings are seeded straight into the store: the fake runs no pipeline.
    fn pipeline(&self, _req: &StartRequest) -> Vec<StepSpec> {
        Vec::new()
    }
    async fn run_step(&self, _ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        Err(ProviderError::UnknownStep { provider: self.kind, step: run.name.clone() })
    }
    fn parse_callback(&self, _body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        Ok(Vec::new())
    }
    async fn cancel(&self, _ctx: &CallContext, _handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        Err(ProviderError::NotSupported { capability: Capability::Cancel })
    }
    fn subscriptions(&self) -> Option<&dyn SubscriptionOps> {
        self.has(Capability::Subscriptions).then_some(self as &dyn SubscriptionOps)
    }
    fn partner_token(&self) -> Option<&dyn PartnerTokenOps> {
        self.has(Capability::PartnerToken).then_some(self as &dyn PartnerTokenOps)
    }
    fn hosted_links(&self) -> Option<&dyn HostedLinkOps> {
        self.has(Capability::TokenValidation).then_some(self as &dyn HostedLinkOps)
    }
    fn channels(&self) -> Option<&dyn ChannelOps> {
        self.has(Capability::ChannelLifecycle).then_some(self as &dyn ChannelOps)
    }
}

fn stored(id: &str, spec: &SubscriptionSpec) -> ProviderSubscription {
    let mut spec = spec.clone();
    spec.headers = spec.headers.keys().map(|k| (k.clone(), Secret::new("[REDACTED]"))).collect();
    ProviderSubscription { id: id.into(), spec, provider_mode: 7, created_ms: Some(now_ms()), updated_ms: None }
}

#[async_trait]
impl SubscriptionOps for Fake {
    /// Playing Gupshup, the fake keeps Gupshup's rule (its adapter's `accepts_subscriptions`).
    fn accepts_subscriptions(&self, state: OnboardingState) -> Result<(), String> {
        if self.kind == ProviderKind::Gupshup && state != OnboardingState::Live {
            return Err("Gupshup subscriptions need a LIVE app".into());
        }
        Ok(())
    }
    async fn create_subscription(
        &self,
        _ctx: &CallContext,
        target: &ResourceRef,
        spec: &SubscriptionSpec,
    ) -> Result<ProviderSubscription, ProviderError> {
        self.state.call("create_subscription")?;
        need_token(target)?;
        if spec.events.iter().any(|e| e == "BOGUS") {
            return Err(ProviderError::Invalid {
                field: Some("spec.events".into()),
                message: "unknown mode BOGUS".into(),
                raw: "1002".into(),
            });
        }
        let mut n = self.state.next_sub.lock().unwrap();
        *n += 1;
        let s = stored(&format!("Sub{n}"), spec);
        self.state.subs.lock().unwrap().insert(s.id.clone(), s.clone());
        Ok(s)
    }
    async fn list_subscriptions(
        &self,
        _ctx: &CallContext,
        target: &ResourceRef,
    ) -> Result<Vec<ProviderSubscription>, ProviderError> {
        self.state.call("list_subscriptions")?;
        need_token(target)?;
        Ok(self.state.subs.lock().unwrap().values().cloned().collect())
    }
    async fn get_subscription(
        &self,
        _ctx: &CallContext,
        _target: &ResourceRef,
        id: &str,
    ) -> Result<ProviderSubscription, ProviderError> {
        self.state.call("get_subscription")?;
        self.state.subs.lock().unwrap().get(id).cloned().ok_or(ProviderError::NotFound { raw: "404".into() })
    }
    async fn update_subscription(
        &self,
        _ctx: &CallContext,
        _target: &ResourceRef,
        id: &str,
        spec: &SubscriptionSpec,
        fields: &[String],
    ) -> Result<ProviderSubscription, ProviderError> {
        self.state.call("update_subscription")?;
        let mut subs = self.state.subs.lock().unwrap();
        let s = subs.get_mut(id).ok_or(ProviderError::NotFound { raw: "404".into() })?;
        for f in fields {
            match f.as_str() {
                "url" => s.spec.url = spec.url.clone(),
                "active" => s.spec.active = spec.active,
                other => panic!("unexpected field {other}"),
            }
        }
        Ok(s.clone())
    }
    async fn delete_subscription(
        &self,
        _ctx: &CallContext,
        _target: &ResourceRef,
        id: &str,
    ) -> Result<(), ProviderError> {
        self.state.call("delete_subscription")?;
        self.state.subs.lock().unwrap().remove(id).map(drop).ok_or(ProviderError::NotFound { raw: "404".into() })
    }
}

#[async_trait]
impl PartnerTokenOps for Fake {
    async fn refresh_partner_token(&self, _ctx: &CallContext) -> Result<TokenStatus, ProviderError> {
        self.state.call("refresh")?;
        *self.state.refreshes.lock().unwrap() += 1;
        Ok(self.partner_token_status())
    }
    fn partner_token_status(&self) -> TokenStatus {
        let n = *self.state.refreshes.lock().unwrap();
        TokenStatus {
            cached: n > 0,
            expires_at: (n > 0).then(|| now_ms() + 3_600_000),
            last_refresh: (n > 0).then(now_ms),
            refresh_count: n,
            last_error: None,
            ..TokenStatus::default()
        }
    }
}

#[async_trait]
impl HostedLinkOps for Fake {
    fn max_batch(&self) -> u32 {
        50
    }
    fn link_payload(&self) -> wa_onboard::providers::StartPayload {
        wa_onboard::providers::StartPayload::Exotel
    }
    async fn mint_links(&self, _ctx: &CallContext, _count: u32) -> Result<Vec<MintedLink>, ProviderError> {
        Ok(Vec::new())
    }
    async fn validate_token(&self, _ctx: &CallContext, token: &str) -> Result<LinkTokenStatus, ProviderError> {
        self.state.call("validate_token")?;
        Ok(if token == "tok-used" {
            LinkTokenStatus { state: LinkTokenState::Used, raw: "USED".into() }
        } else {
            LinkTokenStatus { state: LinkTokenState::Valid, raw: "VALID".into() }
        })
    }
}

#[async_trait]
impl ChannelOps for Fake {
    async fn get_channel(&self, _ctx: &CallContext, target: &ResourceRef) -> Result<ChannelInfo, ProviderError> {
        self.state.call("get_channel")?;
        need_token(target)?;
        Ok(channel(target, ChannelMode::Trial))
    }
    async fn connect_code(
        &self,
        _ctx: &CallContext,
        _target: &ResourceRef,
        method: &ConnectMethod,
    ) -> Result<IssuedConnectCode, ProviderError> {
        self.state.call("connect_code")?;
        let code = match method {
            ConnectMethod::Qr { .. } => ConnectCode::Qr { png: b"\x89PNG".to_vec(), raw: "2@qr".into() },
            ConnectMethod::PairingCode { phone } => {
                ConnectCode::PairingCode { code: "ABCD-EFGH".into(), phone: phone.clone() }
            }
        };
        Ok(IssuedConnectCode { code, expire_ms: Some(now_ms() + 20_000) })
    }
    async fn set_mode(
        &self,
        _ctx: &CallContext,
        target: &ResourceRef,
        mode: ChannelMode,
    ) -> Result<ChannelInfo, ProviderError> {
        self.state.call("set_mode")?;
        Ok(channel(target, mode))
    }
    async fn extend(
        &self,
        _ctx: &CallContext,
        target: &ResourceRef,
        days: u32,
        _comment: &str,
    ) -> Result<ExtendOutcome, ProviderError> {
        self.state.call("extend")?;
        let rid = target.request_id.clone().expect("extend carries the request id");
        let mut done = self.state.extended.lock().unwrap();
        let already_applied = done.contains_key(&rid);
        done.entry(rid).or_insert(days);
        Ok(ExtendOutcome {
            channel: channel(target, ChannelMode::Live),
            days_added: if already_applied { 0 } else { days },
            already_applied,
        })
    }
    async fn delete_channel(&self, _ctx: &CallContext, _target: &ResourceRef) -> Result<u32, ProviderError> {
        self.state.call("delete_channel")?;
        Ok(7)
    }
    async fn partner_balance(&self, _ctx: &CallContext) -> Result<Balance, ProviderError> {
        self.state.call("balance")?;
        Ok(Balance { days: 120, trial_days: 3 })
    }
}

fn registry(state: &Arc<FakeState>) -> ProviderRegistry {
    use Capability::*;
    let mut r = ProviderRegistry::new();
    let kinds: [(ProviderKind, Vec<Capability>); 4] = [
        (ProviderKind::Gupshup, vec![CheckCredentials, PartnerToken, Subscriptions, AppToken]),
        (ProviderKind::Exotel, vec![CheckCredentials, HostedLink, TokenValidation]),
        (ProviderKind::Whapi, vec![CheckCredentials, ChannelLifecycle, Subscriptions, AppToken]),
        (ProviderKind::Digital99, vec![CheckCredentials]),
    ];
    for (kind, caps) in kinds {
        let state = state.clone();
        r.register(
            kind,
            Arc::new(move |_ctx: &CallContext| -> Result<Arc<dyn Provider>, AppError> {
                Ok(Arc::new(Fake { kind, caps: caps.clone(), state: state.clone() }))
            }),
        );
    }
    r
}

// ----- harness -----

struct Env {
    app: TestApp,
    fake: Arc<FakeState>,
    /// The other tenant's key.
    other: Secret,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Arc::new(FakeState::default());
        let running =
            app::start_with(test_settings(dir.path()), None, Some(registry(&fake))).await.expect("server starts");
        let key = running.dev_api_key.clone().expect("dev key");
        let channel =
            Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.expect("connect");
        let app = TestApp { running: Some(running), key, channel, _dir: dir };
        let other = app.other_tenant("other").await;
        Self { app, fake, other }
    }

    fn req<T>(&self, m: T) -> tonic::Request<T> {
        self.app.req(m)
    }

    fn other<T>(&self, m: T) -> tonic::Request<T> {
        with_key(m, self.other.expose())
    }

    fn tokens(&self) -> pb::token_service_client::TokenServiceClient<Channel> {
        pb::token_service_client::TokenServiceClient::new(self.app.channel.clone())
    }

    fn subs(&self) -> pb::subscription_service_client::SubscriptionServiceClient<Channel> {
        pb::subscription_service_client::SubscriptionServiceClient::new(self.app.channel.clone())
    }

    fn channels(&self) -> pb::channel_service_client::ChannelServiceClient<Channel> {
        pb::channel_service_client::ChannelServiceClient::new(self.app.channel.clone())
    }

    /// Creates a dev-tenant account of `provider` through the API.
    async fn account(&self, id: &str, provider: ProviderKind) {
        use pb::account_credentials::Credentials as C;
        let (p, creds) = match provider {
            ProviderKind::Gupshup => (
                pb::Provider::Gupshup,
                C::Gupshup(pb::GupshupCredentials { email: "ops@acme.test".into(), secret: "s".into() }),
            ),
            ProviderKind::Exotel => (
                pb::Provider::Exotel,
                C::Exotel(pb::ExotelCredentials {
                    account_sid: "sid".into(),
                    api_key: "k".into(),
                    api_token: "t".into(),
                }),
            ),
            ProviderKind::Whapi => {
                (pb::Provider::Whapi, C::Whapi(pb::WhapiCredentials { partner_token: "partner".into() }))
            }
            ProviderKind::Digital99 => (
                pb::Provider::Digital99,
                C::Digital99(pb::Digital99Credentials { client_id: "c".into(), client_secret: "s".into() }),
            ),
        };
        let req = pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: p as i32,
                display_name: "Acme".into(),
                credentials: Some(pb::AccountCredentials { credentials: Some(creds) }),
                ..Default::default()
            }),
            account_id: id.into(),
            request_id: String::new(),
        };
        self.app.accounts().create_account(self.req(req)).await.expect("account created");
    }

    /// Inserts a dev-tenant onboarding with a provider handle (`external_key`) and a sealed
    /// resource token, as the pipeline leaves them.
    async fn onboarding(
        &self,
        account: &str,
        provider: ProviderKind,
        external_key: Option<&str>,
        token: Option<&str>,
        state: OnboardingState,
        details: serde_json::Value,
    ) -> OnboardingId {
        let running = self.app.running();
        let tenant = running.store.tenant_by_name("dev").await.unwrap().unwrap();
        let id = OnboardingId::fresh(&tenant.id);
        let engine = wa_onboard::core::engine::EngineState {
            handle: external_key.map(|k| ProviderHandle {
                external_key: k.into(),
                data: serde_json::json!({ "apiUrl": "https://gate.example/chan", "name": "Acme channel" }),
            }),
            ..Default::default()
        };
        let now = now_ms();
        let o = OnboardingRecord {
            id: id.clone(),
            account_id: wa_onboard::domain::AccountId::scoped(&tenant.id, account).unwrap(),
            tenant_id: tenant.id,
            provider,
            state,
            desired_state: None,
            state_reason: "test".into(),
            provider_status: "QR".into(),
            reference: String::new(),
            details_json: details.to_string(),
            engine_json: engine.to_json().unwrap(),
            external_key: external_key.map(str::to_string),
            secret: token.map(|t| running.core.seal_onboarding_secret(&id, &Secret::new(t)).unwrap()),
            sequence: 0,
            state_deadline_ms: None,
            expire_ms: Some(now + 86_400_000),
            created_ms: now,
            updated_ms: now,
        };
        running
            .store
            .create_onboarding(&NewOnboarding {
                onboarding: o,
                steps: vec![],
                event: NewEvent::new(wa_onboard::domain::EventKind::Created, "test"),
                idempotency: None,
            })
            .await
            .unwrap();
        id
    }

    async fn events(&self, id: &OnboardingId) -> Vec<pb::OnboardingEvent> {
        self.app
            .onboardings()
            .list_onboarding_events(self.req(pb::ListOnboardingEventsRequest {
                name: format!("onboardings/{id}"),
                page_size: 100,
                page_token: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .events
    }
}

fn provider_code(s: &tonic::Status) -> String {
    s.get_details_error_info().and_then(|i| i.metadata.get("provider_code").cloned()).unwrap_or_default()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code) -> tonic::Status {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    s
}

// ----- tests -----

#[tokio::test]
async fn check_account_stores_the_result_and_a_rejection_is_not_an_error() {
    let env = Env::new().await;
    env.account("acme", ProviderKind::Gupshup).await;
    let mut c = env.app.accounts();
    let name = || pb::CheckAccountRequest { name: "accounts/acme".into() };

    let ok = c.check_account(env.req(name())).await.unwrap().into_inner();
    assert!(ok.ok && ok.provider_code.is_empty() && ok.check_time.is_some(), "{ok:?}");
    assert_eq!(ok.message, "partner Acme");
    let got = c.get_account(env.req(pb::GetAccountRequest { name: "accounts/acme".into() })).await.unwrap();
    assert_eq!(got.into_inner().last_check, Some(ok));

    *env.fake.reject_credentials.lock().unwrap() = true;
    let rejected = c.check_account(env.req(name())).await.unwrap().into_inner();
    assert!(!rejected.ok);
    assert_eq!(rejected.provider_code, "1003");
    let got = c.get_account(env.req(pb::GetAccountRequest { name: "accounts/acme".into() })).await.unwrap();
    assert_eq!(got.into_inner().last_check, Some(rejected.clone()));

    // Provider down: an error with the raw code, and the stored result is untouched.
    env.fake.fail_next(ProviderError::Retryable { raw: "503".into(), message: "down".into() });
    let s = assert_code(c.check_account(env.req(name())).await, tonic::Code::Unavailable);
    assert_eq!(provider_code(&s), "503");
    let got = c.get_account(env.req(pb::GetAccountRequest { name: "accounts/acme".into() })).await.unwrap();
    assert_eq!(got.into_inner().last_check, Some(rejected));

    let calls = env.fake.count("check");
    assert_code(c.check_account(env.other(name())).await, tonic::Code::NotFound);
    let s = assert_code(
        c.check_account(env.req(pb::CheckAccountRequest { name: "acme".into() })).await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["name"]);
    assert_eq!(env.fake.count("check"), calls, "no provider call for another tenant or a bad name");
}

#[tokio::test]
async fn app_token_is_returned_to_its_owner_and_every_read_is_audited() {
    let env = Env::new().await;
    env.account("chan", ProviderKind::Whapi).await;
    let id = env
        .onboarding(
            "chan",
            ProviderKind::Whapi,
            Some("CHAN-1"),
            Some("resource-token"),
            OnboardingState::Live,
            serde_json::json!({}),
        )
        .await;
    let name = format!("onboardings/{id}");
    let mut t = env.tokens();

    let tok = t.get_app_token(env.req(pb::GetAppTokenRequest { name: name.clone() })).await.unwrap().into_inner();
    assert_eq!(tok.token, "resource-token");
    assert_eq!(tok.resource_id, "CHAN-1");
    assert_eq!(tok.api_url, "https://gate.example/chan");
    assert_eq!(tok.provider, pb::Provider::Whapi as i32);
    assert_eq!(tok.onboarding, name);

    let events = env.events(&id).await;
    let reads: Vec<_> = events.iter().filter(|e| e.r#type == "token_read").collect();
    assert_eq!(reads.len(), 1);
    let tenant = env.app.running().store.tenant_by_name("dev").await.unwrap().unwrap().id;
    assert_eq!(reads[0].attributes.get("who").map(String::as_str), Some(tenant.as_str()));
    assert!(!format!("{events:?}").contains("resource-token"), "the token never enters the event log");

    // Another tenant: NOT_FOUND, and no audit event.
    assert_code(t.get_app_token(env.other(pb::GetAppTokenRequest { name: name.clone() })).await, tonic::Code::NotFound);
    assert_eq!(env.events(&id).await.iter().filter(|e| e.r#type == "token_read").count(), 1);

    // Before the pipeline fetched it.
    let pending =
        env.onboarding("chan", ProviderKind::Whapi, None, None, OnboardingState::Pending, serde_json::json!({})).await;
    assert_code(
        t.get_app_token(env.req(pb::GetAppTokenRequest { name: format!("onboardings/{pending}") })).await,
        tonic::Code::FailedPrecondition,
    );
    let s = assert_code(
        t.get_app_token(env.req(pb::GetAppTokenRequest { name: "channels/x".into() })).await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["name"]);
}

#[tokio::test]
async fn partner_token_refresh_and_status() {
    let env = Env::new().await;
    env.account("gs", ProviderKind::Gupshup).await;
    env.account("ex", ProviderKind::Exotel).await;
    let mut t = env.tokens();
    let acct = |a: &str| pb::GetProviderTokenStatusRequest { account: format!("accounts/{a}") };
    let refresh = |a: &str| pb::RefreshProviderTokenRequest { account: format!("accounts/{a}") };

    let before = t.get_provider_token_status(env.req(acct("gs"))).await.unwrap().into_inner();
    assert!(!before.cached && before.refresh_count == 0);
    let after = t.refresh_provider_token(env.req(refresh("gs"))).await.unwrap().into_inner();
    assert!(after.cached && after.expire_time.is_some() && after.refresh_time.is_some(), "{after:?}");
    assert_eq!((after.account.as_str(), after.refresh_count), ("accounts/gs", 1));
    let status = t.get_provider_token_status(env.req(acct("gs"))).await.unwrap().into_inner();
    assert_eq!(status.refresh_count, 1);

    env.fake.fail_next(ProviderError::RateLimited { retry_after: None, raw: "429".into() });
    let s = assert_code(t.refresh_provider_token(env.req(refresh("gs"))).await, tonic::Code::ResourceExhausted);
    assert_eq!(provider_code(&s), "429");

    let s = assert_code(t.refresh_provider_token(env.req(refresh("ex"))).await, tonic::Code::Unimplemented);
    assert!(s.message().contains("Exotel"), "{}", s.message());
    assert_code(t.get_provider_token_status(env.req(acct("ex"))).await, tonic::Code::Unimplemented);
    assert_code(t.refresh_provider_token(env.other(refresh("gs"))).await, tonic::Code::NotFound);
    assert_code(t.get_provider_token_status(env.other(acct("gs"))).await, tonic::Code::NotFound);
    assert_eq!(env.fake.count("refresh"), 2);
}

#[tokio::test]
async fn validate_onboarding_token_reports_the_link_and_its_onboarding() {
    let env = Env::new().await;
    env.account("ex", ProviderKind::Exotel).await;
    env.account("d99", ProviderKind::Digital99).await;
    let id = env
        .onboarding(
            "ex",
            ProviderKind::Exotel,
            Some("tok-1"),
            None,
            OnboardingState::AwaitingCustomer,
            serde_json::json!({ "customers_remaining": 3 }),
        )
        .await;
    let mut t = env.tokens();
    let req = |a: &str, tok: &str| pb::ValidateOnboardingTokenRequest { account: a.into(), token: tok.into() };

    let r = t.validate_onboarding_token(env.req(req("accounts/ex", "tok-1"))).await.unwrap().into_inner();
    assert_eq!(r.status, pb::OnboardingTokenStatus::Valid as i32);
    assert_eq!(r.raw_status, "VALID");
    assert_eq!(r.onboarding, format!("onboardings/{id}"));
    assert_eq!(r.customers_remaining, 3);
    assert!(r.expire_time.is_some());

    let r = t.validate_onboarding_token(env.req(req("accounts/ex", "tok-used"))).await.unwrap().into_inner();
    assert_eq!(r.status, pb::OnboardingTokenStatus::Used as i32);
    assert!(r.onboarding.is_empty() && r.customers_remaining == 0);

    let calls = env.fake.count("validate_token");
    let s = assert_code(t.validate_onboarding_token(env.req(req("ex", "a b/c"))).await, tonic::Code::InvalidArgument);
    let mut fields = violations(&s);
    // The limits table reports `token` first (it has no character rule for `account`).
    fields.sort();
    assert_eq!(fields, ["account", "token"]);
    assert_code(t.validate_onboarding_token(env.other(req("accounts/ex", "tok-1"))).await, tonic::Code::NotFound);
    assert_code(t.validate_onboarding_token(env.req(req("accounts/d99", "tok-1"))).await, tonic::Code::Unimplemented);
    assert_eq!(env.fake.count("validate_token"), calls, "no provider call on bad input, other tenant, no capability");
}

fn spec(url: &str, events: &[&str]) -> pb::SubscriptionSpec {
    pb::SubscriptionSpec {
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        tag: "main".into(),
        version: 3,
        headers: [("Authorization".to_string(), "Bearer hook-secret".to_string())].into(),
        mode: 0,
        active: false,
    }
}

#[tokio::test]
async fn subscriptions_crud_paging_idempotency_and_errors() {
    let env = Env::new().await;
    env.account("gs", ProviderKind::Gupshup).await;
    env.account("d99", ProviderKind::Digital99).await;
    let live = env
        .onboarding(
            "gs",
            ProviderKind::Gupshup,
            Some("app-1"),
            Some("resource-token"),
            OnboardingState::Live,
            serde_json::json!({}),
        )
        .await;
    let parent = format!("onboardings/{live}");
    let mut c = env.subs();
    let create = |s: pb::SubscriptionSpec, rid: &str| pb::CreateSubscriptionRequest {
        parent: parent.clone(),
        spec: Some(s),
        request_id: rid.into(),
    };

    // Create, with a retry under the same request_id.
    let sub = c.create_subscription(env.req(create(spec("https://hooks.example/a", &["SENT"]), "r-1"))).await.unwrap();
    let sub = sub.into_inner();
    assert_eq!(sub.name, format!("{parent}/subscriptions/{}", sub.provider_id));
    assert_eq!(sub.header_names, ["Authorization"]);
    let spec_out = sub.spec.clone().unwrap();
    assert!(spec_out.headers.is_empty() && spec_out.active, "{spec_out:?}");
    assert!(!format!("{sub:?}").contains("hook-secret"));
    let again = c.create_subscription(env.req(create(spec("https://hooks.example/a", &["SENT"]), "r-1"))).await;
    assert_eq!(again.unwrap().into_inner().provider_id, sub.provider_id);
    assert_eq!(env.fake.count("create_subscription"), 1, "the retry made no second subscription");
    let s = assert_code(
        c.create_subscription(env.req(create(spec("https://hooks.example/other", &["SENT"]), "r-1"))).await,
        tonic::Code::AlreadyExists,
    );
    assert_eq!(violations(&s), ["request_id"]);
    let logged = env.events(&live).await;
    assert!(logged.iter().any(|e| e.r#type == "subscription_created"));
    assert!(!format!("{logged:?}").contains("hook-secret"));

    // Validation first: every violation, no provider call.
    let calls = env.fake.calls().len();
    let bad = pb::CreateSubscriptionRequest {
        parent: "onboardings/".into(),
        spec: Some(spec("ftp://x", &[])),
        request_id: String::new(),
    };
    let s = assert_code(c.create_subscription(env.req(bad)).await, tonic::Code::InvalidArgument);
    assert_eq!(violations(&s), ["parent", "spec.url", "spec.events"]);
    let s = assert_code(
        c.create_subscription(env.req(pb::CreateSubscriptionRequest {
            parent: parent.clone(),
            spec: None,
            request_id: String::new(),
        }))
        .await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["spec"]);
    assert_eq!(env.fake.calls().len(), calls);

    // The provider's own refusal keeps its field path and raw code.
    let s = assert_code(
        c.create_subscription(env.req(create(spec("https://hooks.example/b", &["BOGUS"]), ""))).await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["spec.events"]);
    assert_eq!(provider_code(&s), "1002");

    // Paging over the provider's list; tokens are bound to the parent.
    for u in ["https://hooks.example/b", "https://hooks.example/c"] {
        c.create_subscription(env.req(create(spec(u, &["READ"]), ""))).await.unwrap();
    }
    let list =
        |token: &str| pb::ListSubscriptionsRequest { parent: parent.clone(), page_size: 2, page_token: token.into() };
    let p1 = c.list_subscriptions(env.req(list(""))).await.unwrap().into_inner();
    assert_eq!(p1.subscriptions.len(), 2);
    assert!(!p1.next_page_token.is_empty());
    let p2 = c.list_subscriptions(env.req(list(&p1.next_page_token))).await.unwrap().into_inner();
    assert_eq!(p2.subscriptions.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let other_parent = env
        .onboarding(
            "gs",
            ProviderKind::Gupshup,
            Some("app-2"),
            Some("resource-token"),
            OnboardingState::Live,
            serde_json::json!({}),
        )
        .await;
    let s = assert_code(
        c.list_subscriptions(env.req(pb::ListSubscriptionsRequest {
            parent: format!("onboardings/{other_parent}"),
            page_size: 2,
            page_token: p1.next_page_token.clone(),
        }))
        .await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["page_token"]);

    // Get, update (mask), delete.
    let got = c.get_subscription(env.req(pb::GetSubscriptionRequest { name: sub.name.clone() })).await.unwrap();
    assert_eq!(got.into_inner().provider_id, sub.provider_id);
    let upd = pb::UpdateSubscriptionRequest {
        name: sub.name.clone(),
        spec: Some(pb::SubscriptionSpec { url: "https://hooks.example/new".into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["url".into()] }),
    };
    let updated = c.update_subscription(env.req(upd.clone())).await.unwrap().into_inner();
    assert_eq!(updated.spec.unwrap().url, "https://hooks.example/new");
    let s = assert_code(
        c.update_subscription(env.req(pb::UpdateSubscriptionRequest { update_mask: None, ..upd.clone() })).await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["update_mask"]);
    c.delete_subscription(env.req(pb::DeleteSubscriptionRequest { name: sub.name.clone() })).await.unwrap();
    let s = assert_code(
        c.get_subscription(env.req(pb::GetSubscriptionRequest { name: sub.name.clone() })).await,
        tonic::Code::NotFound,
    );
    assert_eq!(provider_code(&s), "404");

    // Another tenant: NOT_FOUND on every RPC, without a provider call.
    let calls = env.fake.calls().len();
    assert_code(
        c.create_subscription(env.other(create(spec("https://h.example", &["SENT"]), ""))).await,
        tonic::Code::NotFound,
    );
    assert_code(c.list_subscriptions(env.other(list(""))).await, tonic::Code::NotFound);
    assert_code(
        c.get_subscription(env.other(pb::GetSubscriptionRequest { name: sub.name.clone() })).await,
        tonic::Code::NotFound,
    );
    assert_code(c.update_subscription(env.other(upd)).await, tonic::Code::NotFound);
    assert_code(
        c.delete_subscription(env.other(pb::DeleteSubscriptionRequest { name: sub.name.clone() })).await,
        tonic::Code::NotFound,
    );
    assert_eq!(env.fake.calls().len(), calls);

    // A provider without subscriptions, and a Gupshup app that is not live yet.
    let d99 = env
        .onboarding(
            "d99",
            ProviderKind::Digital99,
            Some("15551112222"),
            None,
            OnboardingState::Live,
            serde_json::json!({}),
        )
        .await;
    let s = assert_code(
        c.list_subscriptions(
            env.req(pb::ListSubscriptionsRequest { parent: format!("onboardings/{d99}"), ..Default::default() }),
        )
        .await,
        tonic::Code::Unimplemented,
    );
    assert!(s.message().contains("99digital"), "{}", s.message());
    let provisioning = env
        .onboarding(
            "gs",
            ProviderKind::Gupshup,
            Some("app-3"),
            Some("resource-token"),
            OnboardingState::Provisioning,
            serde_json::json!({}),
        )
        .await;
    assert_code(
        c.create_subscription(env.req(pb::CreateSubscriptionRequest {
            parent: format!("onboardings/{provisioning}"),
            spec: Some(spec("https://h.example", &["SENT"])),
            request_id: String::new(),
        }))
        .await,
        tonic::Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn channels_lifecycle_over_the_whapi_port() {
    let env = Env::new().await;
    env.account("wh", ProviderKind::Whapi).await;
    env.account("wh2", ProviderKind::Whapi).await;
    env.account("gs", ProviderKind::Gupshup).await;
    let details = serde_json::json!({ "channel_id": "CHAN-1", "mode": "trial", "phone": "+15551112222" });
    let id = env
        .onboarding(
            "wh",
            ProviderKind::Whapi,
            Some("CHAN-1"),
            Some("resource-token"),
            OnboardingState::AwaitingCustomer,
            details,
        )
        .await;
    env.onboarding(
        "wh2",
        ProviderKind::Whapi,
        Some("CHAN-2"),
        Some("resource-token"),
        OnboardingState::Live,
        serde_json::json!({}),
    )
    .await;
    // A Whapi onboarding whose channel is not created yet is not a channel.
    env.onboarding("wh", ProviderKind::Whapi, None, None, OnboardingState::Pending, serde_json::json!({})).await;
    let mut c = env.channels();
    let name = "channels/CHAN-1".to_string();

    // Get: refreshed from the provider.
    let ch = c.get_channel(env.req(pb::GetChannelRequest { name: name.clone() })).await.unwrap().into_inner();
    assert_eq!(ch.name, name);
    assert_eq!(ch.onboarding, format!("onboardings/{id}"));
    assert_eq!(ch.account, "accounts/wh");
    assert_eq!(ch.health, pb::ChannelHealth::Auth as i32);
    assert_eq!(ch.mode, pb::ChannelMode::Trial as i32);
    assert_eq!(ch.days_remaining, 10);
    assert_eq!(ch.phone, "+15551112222");

    // List: from stored details, no provider call; paging and the account filter.
    let calls = env.fake.calls().len();
    let l1 = c
        .list_channels(env.req(pb::ListChannelsRequest { page_size: 1, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l1.channels.len(), 1);
    let l2 = c
        .list_channels(env.req(pb::ListChannelsRequest {
            page_size: 1,
            page_token: l1.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l2.channels.len(), 1);
    assert!(l2.next_page_token.is_empty(), "the channel-less onboarding does not make a page");
    let mut names: Vec<_> = l1.channels.iter().chain(&l2.channels).map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["channels/CHAN-1", "channels/CHAN-2"]);
    let only = c
        .list_channels(env.req(pb::ListChannelsRequest { account: "accounts/wh2".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.channels.len(), 1);
    assert_eq!(only.channels[0].name, "channels/CHAN-2");
    let theirs = c.list_channels(env.other(pb::ListChannelsRequest::default())).await.unwrap().into_inner();
    assert!(theirs.channels.is_empty());
    assert_eq!(env.fake.calls().len(), calls);

    // Connect codes.
    use pb::get_connect_code_request::Method;
    let qr = c.get_connect_code(env.req(pb::GetConnectCodeRequest { name: name.clone(), method: None })).await.unwrap();
    let qr = qr.into_inner();
    assert!(
        matches!(&qr.code, Some(pb::connect_code::Code::Qr(q)) if q.png.starts_with(b"\x89PNG") && q.raw == "2@qr")
    );
    assert!(qr.expire_time.is_some());
    let pairing = pb::GetConnectCodeRequest {
        name: name.clone(),
        method: Some(Method::PairingCode(pb::PairingCodeRequest { phone: "+15551112222".into() })),
    };
    let pc = c.get_connect_code(env.req(pairing)).await.unwrap().into_inner();
    assert!(matches!(&pc.code, Some(pb::connect_code::Code::PairingCode(p)) if p.code == "ABCD-EFGH"));

    // Mode.
    let live = c
        .set_channel_mode(env.req(pb::SetChannelModeRequest { name: name.clone(), mode: pb::ChannelMode::Live as i32 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.mode, pb::ChannelMode::Live as i32);

    // Extend: idempotent on request_id, recognised from the onboarding's event log.
    let ext = |rid: &str, days: i32| pb::ExtendChannelRequest {
        name: name.clone(),
        days,
        comment: "renewal".into(),
        request_id: rid.into(),
    };
    let first = c.extend_channel(env.req(ext("ext-1", 30))).await.unwrap().into_inner();
    assert_eq!((first.days_added, first.already_applied), (30, false));
    assert!(first.channel.is_some());
    let retry = c.extend_channel(env.req(ext("ext-1", 30))).await.unwrap().into_inner();
    assert_eq!((retry.days_added, retry.already_applied), (0, true));
    assert_eq!(env.fake.count("extend"), 1, "the retry must not reach the provider");

    // Validation first, all violations, no provider call.
    let calls = env.fake.calls().len();
    let s = assert_code(
        c.extend_channel(env.req(pb::ExtendChannelRequest {
            name: "chan".into(),
            days: 0,
            comment: String::new(),
            request_id: String::new(),
        }))
        .await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["name", "days", "request_id"]);
    let s = assert_code(c.extend_channel(env.req(ext("ext-2", 366))).await, tonic::Code::InvalidArgument);
    assert_eq!(violations(&s), ["days"]);
    let s = assert_code(
        c.get_connect_code(env.req(pb::GetConnectCodeRequest {
            name: name.clone(),
            method: Some(Method::PairingCode(pb::PairingCodeRequest { phone: "555".into() })),
        }))
        .await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["pairing_code.phone"]);
    let s = assert_code(
        c.set_channel_mode(env.req(pb::SetChannelModeRequest { name: name.clone(), mode: 0 })).await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(violations(&s), ["mode"]);
    assert_eq!(env.fake.calls().len(), calls);

    // Another tenant: NOT_FOUND on every RPC taking a name, without a provider call.
    assert_code(c.get_channel(env.other(pb::GetChannelRequest { name: name.clone() })).await, tonic::Code::NotFound);
    assert_code(
        c.get_connect_code(env.other(pb::GetConnectCodeRequest { name: name.clone(), method: None })).await,
        tonic::Code::NotFound,
    );
    assert_code(
        c.set_channel_mode(env.other(pb::SetChannelModeRequest { name: name.clone(), mode: 3 })).await,
        tonic::Code::NotFound,
    );
    assert_code(c.extend_channel(env.other(ext("ext-3", 5))).await, tonic::Code::NotFound);
    assert_code(
        c.delete_channel(env.other(pb::DeleteChannelRequest { name: name.clone(), request_id: String::new() })).await,
        tonic::Code::NotFound,
    );
    assert_code(
        c.get_partner_balance(env.other(pb::GetPartnerBalanceRequest { account: "accounts/wh".into() })).await,
        tonic::Code::NotFound,
    );
    assert_eq!(env.fake.calls().len(), calls);

    // Provider errors keep their raw code.
    env.fake.fail_next(ProviderError::Precondition { raw: "409".into(), message: "already connected".into() });
    let s = assert_code(
        c.get_connect_code(env.req(pb::GetConnectCodeRequest { name: name.clone(), method: None })).await,
        tonic::Code::FailedPrecondition,
    );
    assert_eq!(provider_code(&s), "409");

    // Balance; UNIMPLEMENTED for an account without channels.
    let b = c
        .get_partner_balance(env.req(pb::GetPartnerBalanceRequest { account: "accounts/wh".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.days, b.trial_days, b.account.as_str()), (120, 3, "accounts/wh"));
    assert_code(
        c.get_partner_balance(env.req(pb::GetPartnerBalanceRequest { account: "accounts/gs".into() })).await,
        tonic::Code::Unimplemented,
    );

    // Delete: refunded days, the onboarding is CANCELLED, a retry returns the same refund.
    let del = pb::DeleteChannelRequest { name: name.clone(), request_id: "del-1".into() };
    let d = c.delete_channel(env.req(del.clone())).await.unwrap().into_inner();
    assert_eq!(d.refunded_days, 7);
    let o = env
        .app
        .onboardings()
        .get_onboarding(env.req(pb::GetOnboardingRequest { name: format!("onboardings/{id}") }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.state, pb::OnboardingState::Cancelled as i32);
    let ev = env.events(&id).await;
    let deleted = ev.iter().find(|e| e.r#type == "channel_deleted").expect("channel_deleted event");
    assert_eq!(deleted.attributes.get("refunded_days").map(String::as_str), Some("7"));
    let again = c.delete_channel(env.req(del)).await.unwrap().into_inner();
    assert_eq!(again.refunded_days, 7);
    assert_eq!(env.fake.count("delete_channel"), 1);
}
