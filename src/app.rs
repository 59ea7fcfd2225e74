//! The running service: binds listeners (port 0 works, for tests), opens the store, starts
//! gRPC, the webhook ingress, the metrics endpoint, the simulators in sandbox mode and the
//! background tasks, and shuts everything down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::core::settings::{EngineConfig, ProviderPolicy, ServerConfig, StreamLimits};
use crate::core::{Core, CoreParts, CoreSettings};
use crate::crypto::Cipher;
use crate::domain::Secret;
use crate::store::{self, Store};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// Setting name.
        key: &'static str,
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the database {url}: {source}")]
    Store {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: store::StoreError,
    },
    /// Anything else at start.
    #[error("{0}")]
    Other(String),
}

/// A started service.
pub struct Running {
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// Webhook ingress address.
    pub webhook_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// The development tenant's API key, when the dev tenant is enabled.
    pub dev_api_key: Option<Secret>,
    /// Whether this start generated that key (shown once, then only where it is kept).
    pub dev_api_key_generated: bool,
    /// The store (tests inspect it).
    pub store: Arc<dyn Store>,
    /// The core (tests drive it).
    pub core: Core,
    /// The in-process simulators, in sandbox mode.
    pub sandbox: Option<crate::sim::sandbox::Sandbox>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    grace: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("grpc_addr", &self.grpc_addr).finish_non_exhaustive()
    }
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key, addr: addr.to_string(), source })
}

/// Starts everything described by `settings`. `dev_api_key` fixes the development key.
pub async fn start(settings: Settings, dev_api_key: Option<Secret>) -> Result<Running, StartError> {
    start_with(settings, dev_api_key, None).await
}

/// [`start`] with the provider adapters given (tests inject fakes); `None`: the built-in ones.
pub async fn start_with(
    settings: Settings,
    dev_api_key: Option<Secret>,
    providers: Option<crate::providers::ProviderRegistry>,
) -> Result<Running, StartError> {
    let settings = Arc::new(settings);
    crate::telemetry::metrics::install();
    let fd_limit = crate::listeners::raise_fd_limit();
    let http_limits = crate::listeners::HttpLimits::from_settings(&settings.server, fd_limit);
    let tls = tls_config(&settings.server.tls)?;
    let grpc_listener = bind("server.grpc_addr", &settings.server.grpc_addr).await?;
    let webhook_listener = bind("server.webhook_addr", &settings.server.webhook_addr).await?;
    let metrics_listener = bind("server.metrics_addr", &settings.server.metrics_addr).await?;
    let grpc_addr = local(&grpc_listener)?;
    let webhook_addr = local(&webhook_listener)?;
    let metrics_addr = local(&metrics_listener)?;

    std::fs::create_dir_all(&settings.server.data_dir)
        .map_err(|e| StartError::Other(format!("server.data_dir '{}': {e}", settings.server.data_dir.display())))?;
    let url = settings.database_url();
    let store = store::open(&url).await.map_err(|source| StartError::Store { url: store::redact_url(&url), source })?;
    let store = crate::telemetry::store::MeteredStore::wrap(store);
    let keys = settings.encryption_keys()?;
    let cipher = Cipher::new(&settings.security.encryption_key_id, &keys)
        .map_err(|e| StartError::Other(format!("security: {e}")))?;

    let sandbox = if settings.sandbox.enabled {
        let s = crate::sim::sandbox::Sandbox::start(
            &settings.sandbox.sims,
            &settings.sandbox.host,
            settings.sandbox.base_port,
        )
        .await
        .map_err(|e| StartError::Other(format!("sandbox simulators (sandbox.host / sandbox.base_port): {e}")))?;
        tracing::info!(endpoints = ?s.endpoints(), "Sandbox simulators running.");
        Some(s)
    } else {
        None
    };
    let bus = crate::core::bus::Bus::new(Arc::new(store.clone()), settings.streams.buffer);
    let providers = match providers {
        Some(r) => r,
        None => {
            let http = crate::providers::http::HttpClient::new(crate::providers::http::HttpTimeouts {
                connect: Duration::from_secs(settings.providers.http_timeout_secs.clamp(1, 10)),
                total: Duration::from_secs(settings.providers.http_timeout_secs.max(1)),
            })
            .map_err(|e| StartError::Other(e.message))?;
            let deps = crate::providers::builtin::AdapterDeps {
                http,
                // Store-backed: on PostgreSQL every replica shares the provider limits. A step
                // whose slot is further than 10 s away is rescheduled instead of holding one of
                // the engine's concurrency slots while it waits.
                limiter: crate::providers::http::RateLimiter::with_log(store::rate_log::StoreRateLog::shared(
                    store.clone(),
                ))
                .with_max_wait(Duration::from_secs(10)),
                retry: crate::providers::http::RetryPolicy::default(),
                poll_interval: Duration::from_millis(settings.engine.poll_interval_ms),
            };
            crate::providers::builtin::registry_with_limits(&deps, gupshup_limits(&settings.providers.gupshup_limits))
        }
    };
    let core = Core::new(CoreParts {
        store: store.clone(),
        cipher,
        settings: core_settings(&settings),
        webhook_base: settings.public_webhook_url(webhook_addr),
        bus: bus.clone(),
        endpoints: crate::providers::accounts::Endpoints::new(
            sandbox.as_ref().map(|s| sandbox_endpoints(&s.endpoints())),
        ),
        providers,
    });

    let mut dev_api_key_generated = false;
    let dev_api_key = if settings.dev.enabled {
        let key_file = settings.server.data_dir.join("dev-api-key");
        let (key, generated) = dev_key(dev_api_key, &key_file).map_err(StartError::Other)?;
        crate::core::tenants::ensure_dev_tenant(store.as_ref(), &settings.dev.tenant, &key)
            .await
            .map_err(|e| StartError::Other(format!("development tenant: {}", e.message)))?;
        if settings.sandbox.enabled {
            ensure_sandbox_accounts(&core, store.as_ref(), &settings)
                .await
                .map_err(|e| StartError::Other(format!("sandbox accounts: {}", e.message)))?;
        }
        dev_api_key_generated = generated;
        Some(key)
    } else {
        None
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(bus.run(store.subscribe(), Duration::from_secs(settings.streams.heartbeat_secs))));

    let config_keys = crate::core::tenants::ConfigKeys::default();
    load_config_keys(store.as_ref(), &settings.auth.keys, &config_keys)
        .await
        .map_err(|e| StartError::Other(format!("auth.keys: {}", e.message)))?;
    if let Some(file) = settings.source.clone() {
        tasks.push(tokio::spawn(reload_keys_loop(
            store.clone(),
            file,
            config_keys.clone(),
            Duration::from_secs(settings.auth.reload_secs.max(1)),
            shutdown_rx.clone(),
        )));
    }
    let authenticator = crate::core::tenants::Authenticator::with_config_keys(store.clone(), config_keys)
        .with_revocation_delay(Duration::from_millis(settings.auth.revocation_delay_ms));
    let (router, reporter) = crate::grpc::router(
        core.clone(),
        shutdown_rx.clone(),
        authenticator,
        tls,
        settings.streams.max_per_connection,
        crate::grpc::connect::WebOptions {
            cors: crate::grpc::connect::Cors::new(&settings.server.cors_allowed_origins),
            console: settings.server.console,
        },
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    // Health: overall and per service, NOT_SERVING while the store does not answer.
    tasks.push(tokio::spawn(health_loop(
        store.clone(),
        reporter,
        Duration::from_secs(settings.server.health_probe_secs.max(1)),
        shutdown_rx.clone(),
    )));

    if settings.database.maintenance_secs > 0 {
        tasks.push(tokio::spawn(maintenance_loop(
            store.clone(),
            Duration::from_secs(settings.database.maintenance_secs),
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::listeners::serve_router(
        webhook_listener,
        crate::webhooks::router(core.clone()),
        "webhook",
        http_limits,
        shutdown_rx.clone(),
    )));
    if settings.engine.enabled {
        tasks.push(tokio::spawn(core.clone().run_engine(shutdown_rx.clone())));
    }
    if settings.delivery.enabled {
        let worker =
            crate::core::delivery_worker::DeliveryWorker::new(core.clone(), delivery_worker_settings(&settings))
                .map_err(|e| StartError::Other(format!("delivery worker: {}", e.message)))?;
        tasks.push(tokio::spawn(Arc::new(worker).run(shutdown_rx.clone())));
    }
    tasks.push(tokio::spawn(crate::listeners::serve_router(
        metrics_listener,
        crate::telemetry::metrics::router(),
        "metrics",
        http_limits,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::telemetry::metrics::gauge_loop(
        store.clone(),
        Duration::from_secs(settings.telemetry.gauge_refresh_secs.max(1)),
        shutdown_rx.clone(),
    )));

    // TCP_NODELAY: a unary answer is written as headers, data and trailers; with Nagle's
    // algorithm on, the last write waits for the client's delayed ACK (~40 ms per call).
    // TCP keepalive: a peer that vanished without a FIN (no HTTP/2 PING answer either, when
    // idle) does not keep its descriptor forever.
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let preface_within = http_limits.header_read;
    // HTTP/1.1 connections on the gRPC port idle out like the webhook port's, but never
    // before two heartbeats: a Connect stream over HTTP/1.1 writes nothing else while idle.
    let http1_idle = Duration::from_secs(
        settings.server.idle_timeout_secs.max(1).max(settings.streams.heartbeat_secs.saturating_mul(2)),
    );
    let admission =
        crate::listeners::GrpcAdmission::new(crate::listeners::grpc_connection_cap(&settings.server, fd_limit));
    // Over the cap a connection is dropped (closed) here, before hyper sees it.
    let incoming = futures::StreamExt::filter_map(incoming, move |r| {
        let admitted = match r {
            Ok(io) => admission
                .admit()
                .map(|slot| Ok(crate::listeners::PrefaceDeadline::new(io, preface_within, http1_idle, slot))),
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    let mut grpc_shutdown = shutdown_rx.clone();
    let grpc = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            })
            .await
    });

    tracing::info!(%grpc_addr, %webhook_addr, %metrics_addr, backend = ?store.backend(), "wa-onboard started.");
    Ok(Running {
        grpc_addr,
        webhook_addr,
        metrics_addr,
        dev_api_key,
        dev_api_key_generated,
        store,
        core,
        sandbox,
        shutdown_tx,
        tasks,
        grpc,
        grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    })
}

/// The development tenant's key and whether this start generated it: `fixed` when given, else
/// the one kept in `key_file`, else a new one written there (0600) for later starts to read.
fn dev_key(fixed: Option<Secret>, key_file: &std::path::Path) -> Result<(Secret, bool), String> {
    if let Some(k) = fixed {
        return Ok((k, false));
    }
    if let Ok(s) = std::fs::read_to_string(key_file)
        && !s.trim().is_empty()
    {
        return Ok((Secret::new(s.trim().to_string()), false));
    }
    let key = crate::core::tenants::generate_key();
    if let Some(dir) = key_file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("development tenant: cannot create {}: {e}", dir.display()))?;
    }
    crate::config::write_private(key_file, key.expose())
        .map_err(|e| format!("development tenant: cannot write {}: {e}", key_file.display()))?;
    Ok((key, true))
}

/// The Gupshup adapter's documented limits with the configured parts applied over them.
fn gupshup_limits(s: &crate::config::GupshupLimitSettings) -> crate::providers::gupshup::GupshupLimits {
    use crate::providers::gupshup::{GupshupLimits, Limit};
    let over = |documented: Limit, s: crate::config::RateLimitSetting| {
        documented.with(s.max, s.window_ms.map(Duration::from_millis))
    };
    let d = GupshupLimits::default();
    GupshupLimits { login: over(d.login, s.login), link: over(d.link, s.link), pipeline: over(d.pipeline, s.pipeline) }
}

/// What the core reads of the configuration.
fn core_settings(s: &Settings) -> CoreSettings {
    let e = &s.engine;
    CoreSettings {
        engine: EngineConfig {
            enabled: e.enabled,
            lease_secs: e.lease_secs,
            concurrency: e.concurrency,
            tick_ms: e.tick_ms,
            retry_base_ms: e.retry_base_ms,
            retry_max_ms: e.retry_max_ms,
            expiry_warnings_secs: e.expiry_warnings_secs.clone(),
        },
        server: ServerConfig { shutdown_grace_secs: s.server.shutdown_grace_secs },
        providers: ProviderPolicy {
            allow_custom_endpoints: s.providers.allow_custom_endpoints,
            http_timeout_secs: s.providers.http_timeout_secs,
        },
        streams: StreamLimits { max_per_tenant: s.streams.max_per_tenant },
        delivery: crate::core::settings::DeliveryPolicy { egress: egress_policy(s) },
    }
}

/// The delivery worker's settings from `delivery.*`.
fn delivery_worker_settings(s: &Settings) -> crate::core::delivery_worker::DeliveryWorkerSettings {
    use crate::delivery::retry::{RetryPolicy, Schedule};
    let d = &s.delivery;
    let timeout = Duration::from_millis(d.timeout_ms);
    let schedule = if d.retry_schedule_secs.is_empty() {
        Schedule::default()
    } else {
        Schedule::Delays(d.retry_schedule_secs.iter().map(|&secs| Duration::from_secs(secs)).collect())
    };
    crate::core::delivery_worker::DeliveryWorkerSettings {
        concurrency: u32::try_from(d.concurrency).unwrap_or(u32::MAX),
        tick: Duration::from_millis(d.tick_ms),
        // Longer than an attempt can take, so a live sender never loses its lease.
        lease: timeout.saturating_mul(2) + Duration::from_secs(30),
        retry: RetryPolicy { schedule, ..RetryPolicy::default() },
        limits: crate::delivery::guard::RequestLimits {
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            max_response_bytes: d.max_response_bytes,
        },
        disable_after: Duration::from_secs(d.disable_after_secs),
        nats_urls: d.nats_urls.clone(),
        source: "wa-onboard".into(),
    }
}

/// The delivery egress policy: loopback allowed by default exactly when the sandbox runs.
/// The CIDR lists were checked when the settings were validated; a bad one here is dropped
/// (the check refuses it at start).
fn egress_policy(s: &Settings) -> crate::delivery::guard::EgressPolicy {
    use crate::delivery::guard::EgressPolicy;
    let d = &s.delivery;
    EgressPolicy {
        allow: EgressPolicy::parse_ranges(&d.allow_cidrs).unwrap_or_default(),
        deny: EgressPolicy::parse_ranges(&d.deny_cidrs).unwrap_or_default(),
        allow_loopback: d.allow_loopback.unwrap_or(s.sandbox.enabled),
        allow_private: d.allow_private,
    }
}

/// The simulators as the core sees them: each by the public host it stands in for.
fn sandbox_endpoints(sims: &crate::sim::sandbox::SandboxEndpoints) -> crate::providers::accounts::SandboxEndpoints {
    use crate::providers::{digital99, exotel, gupshup, whapi};
    let mut map = crate::providers::accounts::SandboxEndpoints::new();
    map.insert(gupshup::BASE_URL, &sims.gupshup)
        .insert(exotel::SINGAPORE_BASE_URL, &sims.exotel_singapore)
        .insert(exotel::MUMBAI_BASE_URL, &sims.exotel_mumbai)
        .insert(whapi::MANAGER_BASE_URL, &sims.whapi_manager)
        .insert(digital99::DEFAULT_BASE_URL, &sims.digital99);
    map
}

/// Gives the development tenant one sandbox account per provider (`sandbox-gupshup`...),
/// with the simulators' default credentials, so the whole flow works with grpcurl alone.
async fn ensure_sandbox_accounts(
    core: &Core,
    store: &dyn Store,
    settings: &Settings,
) -> Result<(), crate::error::AppError> {
    use crate::core::accounts::NewAccount;
    use crate::domain::account::{AccountOptions, Credentials, ExotelRegion};
    use crate::domain::{AccountId, ProviderKind};
    let Some(tenant) = store.tenant_by_name(&settings.dev.tenant).await? else { return Ok(()) };
    let caller = crate::core::Caller { tenant: tenant.id };
    let sims = &settings.sandbox.sims;
    let mut wanted = Vec::new();
    if let Some(p) = sims.gupshup.partners.first() {
        wanted.push((
            ProviderKind::Gupshup,
            Credentials::Gupshup { email: p.email.clone(), secret: Secret::new(p.secret.clone()) },
            AccountOptions::default(),
        ));
    }
    if let Some(a) = sims.exotel.accounts.first() {
        let region = match a.region {
            crate::sim::exotel::ExotelRegion::Singapore => ExotelRegion::Singapore,
            crate::sim::exotel::ExotelRegion::Mumbai => ExotelRegion::Mumbai,
        };
        wanted.push((
            ProviderKind::Exotel,
            Credentials::Exotel {
                account_sid: a.sid.clone(),
                api_key: a.api_key.clone(),
                api_token: Secret::new(a.api_token.clone()),
            },
            AccountOptions { exotel_region: Some(region), ..Default::default() },
        ));
    }
    wanted.push((
        ProviderKind::Whapi,
        Credentials::Whapi { partner_token: Secret::new(sims.whapi.partner_token.clone()) },
        AccountOptions {
            project_id: sims.whapi.projects.first().map(|p| p.id.clone()),
            partner_name: Some(sims.whapi.partner_name.clone()),
            ..Default::default()
        },
    ));
    if let Some(c) = sims.digital99.clients.first() {
        wanted.push((
            ProviderKind::Digital99,
            Credentials::Digital99 {
                client_id: c.client_id.clone(),
                client_secret: Secret::new(c.client_secret.clone()),
            },
            AccountOptions::default(),
        ));
    }
    for (provider, credentials, options) in wanted {
        let id = AccountId::scoped(&caller.tenant, &format!("sandbox-{provider}"))
            .map_err(|e| crate::error::AppError::internal(e.0))?;
        if store.account(&caller.tenant, &id).await?.is_some() {
            continue;
        }
        let new = NewAccount {
            id: Some(id),
            provider,
            display_name: format!("Sandbox {}", provider.display_name()),
            credentials,
            options,
            sandbox: true,
        };
        match core.create_account(&caller, new, None).await {
            Ok(_) => {}
            // Another replica made it first.
            Err(e) if e.code == crate::error::ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn local(l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|e| StartError::Other(format!("local address: {e}")))
}

/// Keeps the store's tables vacuumed and analyzed (`database.maintenance_secs`); a failure is
/// logged and tried again next period (the service runs on without it).
async fn maintenance_loop(store: Arc<dyn Store>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match store.maintain_tables().await {
            Ok(done) if !done.is_empty() => tracing::debug!(?done, "Maintained tables."),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Table maintenance failed."),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Probes the store and flips health for the whole server and every service.
async fn health_loop(
    store: Arc<dyn Store>,
    reporter: tonic_health::server::HealthReporter,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut last: Option<bool> = None;
    loop {
        let ok = tokio::time::timeout(every.max(Duration::from_secs(1)), store.ping()).await.is_ok_and(|r| r.is_ok());
        if last != Some(ok) {
            let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            for name in crate::grpc::SERVICE_NAMES {
                reporter.set_service_status(name, status).await;
            }
            if ok {
                tracing::info!("Store reachable: serving.");
            } else {
                tracing::warn!("Store unreachable: NOT_SERVING.");
            }
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

/// The gRPC TLS configuration from `server.tls`, if enabled.
fn tls_config(tls: &crate::config::TlsSettings) -> Result<Option<tonic::transport::ServerTlsConfig>, StartError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !tls.enabled() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StartError::Other(format!("{key} = '{}': {e}", path.display())))
    };
    let cert = read("server.tls.cert_file", &tls.cert_file)?;
    let key = read("server.tls.key_file", &tls.key_file)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !tls.client_ca_file.as_os_str().is_empty() {
        let ca = read("server.tls.client_ca_file", &tls.client_ca_file)?;
        config = config.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(false);
    }
    Ok(Some(config))
}

/// Resolves the config-file keys to tenants (creating missing tenants) and replaces the
/// live set in `into`.
async fn load_config_keys(
    store: &dyn Store,
    keys: &[crate::config::ConfigKey],
    into: &crate::core::tenants::ConfigKeys,
) -> Result<(), crate::error::AppError> {
    use crate::core::tenants;
    use crate::store::{StoreError, TenantRecord};
    let mut map = std::collections::HashMap::new();
    for k in keys {
        let hash = k.hash().map_err(|e| crate::error::AppError::invalid("auth.keys", e.0))?;
        let tenant = match store.tenant_by_name(&k.tenant).await? {
            Some(t) => t,
            None => {
                tenants::validate_name(&k.tenant)?;
                let t = TenantRecord {
                    id: crate::domain::new_id(),
                    name: k.tenant.clone(),
                    created_ms: crate::domain::now_ms(),
                };
                match store.create_tenant(&t).await {
                    Ok(()) => {
                        tracing::info!(tenant = %t.name, "Tenant created for a configured API key.");
                        t
                    }
                    Err(StoreError::AlreadyExists(_)) => tenants::tenant_by_name(store, &k.tenant).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        map.insert(hash, tenant.id);
    }
    let n = map.len();
    *into.write().unwrap_or_else(|e| e.into_inner()) = map;
    tracing::debug!(keys = n, "Configured API keys loaded.");
    Ok(())
}

/// Re-reads `auth.keys` from the config file every `every` and on SIGHUP. A file that no
/// longer parses keeps the current keys (and says why).
async fn reload_keys_loop(
    store: Arc<dyn Store>,
    file: std::path::PathBuf,
    keys: crate::core::tenants::ConfigKeys,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last: Option<Vec<(String, String, bool)>> = None;
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = hangup => {}
            _ = shutdown.changed() => return,
        }
        match Settings::load(Some(&file), &crate::config::Overrides::default()) {
            Ok(s) => {
                // Only a change is worth a store round trip per key.
                let fingerprint: Vec<(String, String, bool)> = s
                    .auth
                    .keys
                    .iter()
                    .map(|k| (k.tenant.clone(), hex::encode(k.hash().unwrap_or_default()), k.key.is_empty()))
                    .collect();
                if last.as_ref() == Some(&fingerprint) {
                    continue;
                }
                match load_config_keys(store.as_ref(), &s.auth.keys, &keys).await {
                    Ok(()) => {
                        tracing::info!(keys = s.auth.keys.len(), "Configured API keys reloaded.");
                        last = Some(fingerprint);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.message, "Configured API keys not reloaded; keeping the current ones.")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Config file not reloaded; keeping the current API keys."),
        }
    }
}

impl Running {
    /// Stops accepting calls, ends streams cleanly, waits up to the grace period for
    /// in-flight calls, then stops background tasks.
    pub async fn shutdown(self) {
        tracing::info!("Shutting down: draining in-flight calls.");
        let _ = self.shutdown_tx.send(true);
        match tokio::time::timeout(self.grace, self.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "gRPC server error during shutdown."),
            Ok(Err(error)) => tracing::error!(%error, "gRPC task failed."),
            Err(_) => tracing::warn!(grace_secs = self.grace.as_secs(), "Grace period over; closing remaining calls."),
        }
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("Stopped.");
    }

    /// Waits for `signal` (see [`shutdown_signal`]), then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// SIGTERM or SIGINT (Ctrl-C elsewhere): what ends `serve` and the CLI's waits. The handlers
/// are installed when this is called, not when it is first polled, so a caller installs them
/// before it announces readiness: a signal sent right after the announcement must not meet
/// the default action (termination without a graceful shutdown).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GupshupLimitSettings, RateLimitSetting};
    use crate::providers::gupshup::GupshupLimits;

    #[test]
    fn gupshup_limits_default_to_the_documented_ones_and_can_be_scaled_in_part() {
        let documented = GupshupLimits::default();
        assert_eq!(gupshup_limits(&Settings::default().providers.gupshup_limits), documented);
        let s = GupshupLimitSettings {
            link: RateLimitSetting { max: Some(3), window_ms: Some(1000) },
            pipeline: RateLimitSetting { max: None, window_ms: Some(2000) },
            ..Default::default()
        };
        let l = gupshup_limits(&s);
        assert_eq!((l.link.max, l.link.window), (3, Duration::from_secs(1)));
        assert_eq!((l.pipeline.max, l.pipeline.window), (documented.pipeline.max, Duration::from_secs(2)));
        assert_eq!(l.login, documented.login, "unset limits keep their documented value");
    }
}
