//! `spawn_app()`: a fresh server with its own data dir and ports, plus typed clients.

use std::sync::Once;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use wa_onboard::app::{self, Running};
use wa_onboard::config::Settings;
use wa_onboard::domain::{AccountId, OnboardingId, OnboardingState, ProviderKind, Secret, now_ms};
use wa_onboard::grpc::pb;
use wa_onboard::store::{NewEvent, NewOnboarding, OnboardingChange, OnboardingRecord, Sealed};

pub(crate) struct TestApp {
    pub running: Option<Running>,
    pub key: Secret,
    pub channel: Channel,
    pub _dir: tempfile::TempDir,
}

static TRACING: Once = Once::new();

/// Quiet unless TEST_LOG is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            wa_onboard::telemetry::init("text");
        }
    });
}

pub(crate) fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.grpc_addr = "127.0.0.1:0".into();
    s.server.webhook_addr = "127.0.0.1:0".into();
    s.server.metrics_addr = "127.0.0.1:0".into();
    s.server.data_dir = dir.to_path_buf();
    s.server.health_probe_secs = 1;
    s.server.shutdown_grace_secs = 5;
    s.streams.heartbeat_secs = 1;
    // Tests that need the simulators turn them on.
    s.sandbox.enabled = false;
    s
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub(crate) async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_with_providers(tweak, None).await
}

/// A server whose adapters are the given registry (fakes), or the built-in ones.
pub(crate) async fn spawn_with_providers(
    tweak: impl FnOnce(&mut Settings),
    providers: Option<wa_onboard::providers::ProviderRegistry>,
) -> TestApp {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    let running = app::start_with(settings, None, providers).await.expect("server starts");
    let key = running.dev_api_key.clone().expect("dev key");
    let channel =
        Channel::from_shared(format!("http://{}", running.grpc_addr)).expect("uri").connect().await.expect("connect");
    TestApp { running: Some(running), key, channel, _dir: dir }
}

impl TestApp {
    pub(crate) fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// A request carrying the dev tenant's key.
    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        with_key(msg, self.key.expose())
    }

    pub(crate) fn accounts(&self) -> pb::account_service_client::AccountServiceClient<Channel> {
        pb::account_service_client::AccountServiceClient::new(self.channel.clone())
    }

    pub(crate) fn onboardings(&self) -> pb::onboarding_service_client::OnboardingServiceClient<Channel> {
        pb::onboarding_service_client::OnboardingServiceClient::new(self.channel.clone())
    }

    pub(crate) fn pipelines(&self) -> pb::pipeline_service_client::PipelineServiceClient<Channel> {
        pb::pipeline_service_client::PipelineServiceClient::new(self.channel.clone())
    }

    /// `GetPipeline` for `name` (`onboardings/{id}/pipeline`), as the dev tenant.
    pub(crate) async fn pipeline(&self, name: &str) -> pb::Pipeline {
        self.pipelines()
            .get_pipeline(self.req(pb::GetPipelineRequest { name: name.into() }))
            .await
            .expect("GetPipeline")
            .into_inner()
    }

    pub(crate) fn providers(&self) -> pb::provider_service_client::ProviderServiceClient<Channel> {
        pb::provider_service_client::ProviderServiceClient::new(self.channel.clone())
    }

    /// Opens `WatchOnboarding` on `id` after `after_sequence`, as the dev tenant.
    pub(crate) async fn watch(
        &self,
        id: &OnboardingId,
        after_sequence: i64,
    ) -> tonic::Streaming<pb::WatchOnboardingResponse> {
        self.onboardings()
            .watch_onboarding(
                self.req(pb::WatchOnboardingRequest { name: format!("onboardings/{id}"), after_sequence }),
            )
            .await
            .expect("watch opens")
            .into_inner()
    }

    /// The store key of the dev tenant's onboarding `name` (`onboardings/{id}`), for tests
    /// that read the store directly.
    pub(crate) async fn onboarding_key(&self, name: &str) -> OnboardingId {
        let tenant = self.running().store.tenant_by_name("dev").await.unwrap().unwrap();
        OnboardingId::scoped(&tenant.id, name.trim_start_matches("onboardings/")).expect("onboarding id")
    }

    /// The store key of the dev tenant's account `id`.
    pub(crate) async fn account_key(&self, id: &str) -> AccountId {
        let tenant = self.running().store.tenant_by_name("dev").await.unwrap().unwrap();
        AccountId::scoped(&tenant.id, id).expect("account id")
    }

    /// A second tenant and its key.
    pub(crate) async fn other_tenant(&self, name: &str) -> Secret {
        let (_, key) =
            wa_onboard::core::tenants::create_tenant(self.running().store.as_ref(), name).await.expect("tenant");
        key.key
    }

    /// Inserts an onboarding straight into the store (provider adapters come later) for the
    /// dev tenant, on `account`.
    pub(crate) async fn insert_onboarding(&self, account: &str, reference: &str) -> OnboardingId {
        let store = &self.running().store;
        let tenant = store.tenant_by_name("dev").await.unwrap().unwrap();
        let id = OnboardingId::fresh(&tenant.id);
        let now = now_ms();
        let o = OnboardingRecord {
            id: id.clone(),
            account_id: AccountId::scoped(&tenant.id, account).unwrap(),
            tenant_id: tenant.id,
            provider: ProviderKind::Gupshup,
            state: OnboardingState::Pending,
            desired_state: None,
            state_reason: "accepted".into(),
            provider_status: String::new(),
            reference: reference.into(),
            details_json: r#"{"app_name":"AcmeShop","waba_id":"123","phone":"+15551112222"}"#.into(),
            engine_json: "{}".into(),
            external_key: None,
            secret: None::<Sealed>,
            sequence: 0,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: now,
            updated_ms: now,
        };
        store
            .create_onboarding(&NewOnboarding {
                onboarding: o,
                steps: vec![],
                event: NewEvent::new(wa_onboard::domain::EventKind::Created, "accepted"),
                idempotency: None,
            })
            .await
            .unwrap();
        id
    }

    /// Appends a state change event.
    pub(crate) async fn change_state(&self, id: &OnboardingId, state: OnboardingState, status: &str) -> i64 {
        self.write_state(id, state, Some(status), None).await
    }

    /// [`Self::change_state`] that also sets the provider-side key its callbacks carry.
    pub(crate) async fn link(&self, id: &OnboardingId, state: OnboardingState, external_key: &str) -> i64 {
        self.write_state(id, state, None, Some(external_key)).await
    }

    async fn write_state(
        &self,
        id: &OnboardingId,
        state: OnboardingState,
        status: Option<&str>,
        external_key: Option<&str>,
    ) -> i64 {
        let e = self
            .running()
            .store
            .apply_change(&OnboardingChange {
                state: Some(state),
                provider_status: status.map(Into::into),
                external_key: external_key.map(Into::into),
                ..OnboardingChange::new(
                    id,
                    NewEvent::new(wa_onboard::domain::EventKind::StateChanged, format!("now {state}")),
                    now_ms(),
                )
            })
            .await
            .unwrap();
        self.running().store.notify(&wa_onboard::store::ChangeNotice::moved(id.clone(), e.sequence)).await.unwrap();
        e.sequence
    }

    pub(crate) async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub(crate) fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {key}").parse().expect("metadata");
    r.metadata_mut().insert("authorization", v);
    r
}

pub(crate) fn gupshup_account(id: &str, secret: &str) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account: Some(pb::Account {
            provider: pb::Provider::Gupshup as i32,
            display_name: "Acme".into(),
            credentials: Some(pb::AccountCredentials {
                credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                    email: "ops@acme.test".into(),
                    secret: secret.into(),
                })),
            }),
            ..Default::default()
        }),
        account_id: id.into(),
        request_id: String::new(),
    }
}

/// Field paths of a status's BadRequest violations.
pub(crate) fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A fresh PostgreSQL schema for one test (`None` when the suite runs with
/// `WA_ONBOARD_TEST_DATABASE_URL=skip`); unreachable PostgreSQL fails the test.
pub(crate) async fn pg_schema() -> Option<String> {
    let base = std::env::var("WA_ONBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if base == "skip" {
        eprintln!("SKIPPING PostgreSQL test (WA_ONBOARD_TEST_DATABASE_URL=skip)");
        return None;
    }
    Some(
        wa_onboard::store::postgres::create_test_schema(&base)
            .await
            .expect("PostgreSQL must be reachable for the test suite"),
    )
}

/// Drops a schema made by [`pg_schema`].
pub(crate) async fn drop_pg(url: &str) {
    wa_onboard::store::postgres::drop_schema(url).await.ok();
}

/// A TCP proxy to `target` the test can cut: while cut, it refuses new connections and drops
/// the open ones, as a network partition between the service and PostgreSQL would.
pub(crate) async fn cuttable_proxy(target: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
            let flag = flag.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = async { while !flag.load(std::sync::atomic::Ordering::SeqCst) { tokio::time::sleep(std::time::Duration::from_millis(50)).await } } => {}
                }
            });
        }
    });
    (addr, cut)
}

/// The whole event log of `name` (`onboardings/{id}`), every page.
pub(crate) async fn all_events(app: &TestApp, name: &str) -> Vec<pb::OnboardingEvent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .onboardings()
            .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
                name: name.into(),
                page_size: 1000,
                page_token: page_token.clone(),
            }))
            .await
            .expect("ListOnboardingEvents")
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}
