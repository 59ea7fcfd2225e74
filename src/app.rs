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
use crate::core::Core;
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
    let http_limits = HttpLimits::from_settings(&settings.server, raise_fd_limit());
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
                limiter: crate::providers::http::RateLimiter::store_backed(store.clone())
                    .with_max_wait(Duration::from_secs(10)),
                retry: crate::providers::http::RetryPolicy::default(),
                poll_interval: Duration::from_millis(settings.engine.poll_interval_ms),
            };
            crate::providers::builtin::registry_with_limits(&deps, settings.providers.gupshup_limits.into())
        }
    };
    let core = Core {
        store: store.clone(),
        cipher: Arc::new(cipher),
        settings: settings.clone(),
        webhook_base: settings.public_webhook_url(webhook_addr),
        bus: bus.clone(),
        sandbox_running: sandbox.is_some(),
        sandbox: sandbox.as_ref().map(|s| Arc::new(s.endpoints())),
        providers: Arc::new(providers),
        engine_wake: Arc::new(tokio::sync::Notify::new()),
        webhook_handoff: Arc::new(crate::core::callbacks::Handoff::default()),
        webhook_intake: Arc::default(),
        worker_id: format!("{}-{}", std::process::id(), crate::domain::new_id::<String>()),
    };

    let mut dev_api_key_generated = false;
    let dev_api_key = if settings.dev.enabled {
        let key_file = settings.server.data_dir.join("dev-api-key");
        let key = crate::core::tenants::ensure_dev_tenant(store.as_ref(), &settings.dev.tenant, dev_api_key, &key_file)
            .await
            .map_err(|e| StartError::Other(format!("development tenant: {}", e.message)))?;
        if settings.sandbox.enabled {
            ensure_sandbox_accounts(&core, &settings)
                .await
                .map_err(|e| StartError::Other(format!("sandbox accounts: {}", e.message)))?;
        }
        dev_api_key_generated = key.generated;
        Some(key.key)
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
    let (router, reporter) = crate::grpc::router(core.clone(), shutdown_rx.clone(), authenticator, tls)
        .map_err(|e| StartError::Other(e.to_string()))?;
    // Health: overall and per service, NOT_SERVING while the store does not answer.
    tasks.push(tokio::spawn(health_loop(
        store.clone(),
        reporter,
        Duration::from_secs(settings.server.health_probe_secs.max(1)),
        shutdown_rx.clone(),
    )));

    tasks.push(tokio::spawn(serve_router(
        webhook_listener,
        crate::webhooks::router(core.clone()),
        "webhook",
        http_limits,
        shutdown_rx.clone(),
    )));
    if settings.engine.enabled {
        tasks.push(tokio::spawn(core.clone().run_engine(shutdown_rx.clone())));
    }
    tasks.push(tokio::spawn(serve_router(
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
    let incoming = futures::StreamExt::map(incoming, move |r| r.map(|io| PrefaceDeadline::new(io, preface_within)));
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

/// Gives the development tenant one sandbox account per provider (`sandbox-gupshup`...),
/// with the simulators' default credentials, so the whole flow works with grpcurl alone.
async fn ensure_sandbox_accounts(core: &Core, settings: &Settings) -> Result<(), crate::error::AppError> {
    use crate::core::accounts::NewAccount;
    use crate::domain::account::{AccountOptions, Credentials, ExotelRegion};
    use crate::domain::{AccountId, ProviderKind};
    let Some(tenant) = core.store.tenant_by_name(&settings.dev.tenant).await? else { return Ok(()) };
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
        if core.store.account(&caller.tenant, &id).await?.is_some() {
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

/// Raises the soft open-file limit to the hard one, so a flood of connections meets the
/// listeners' caps rather than the process limit, and returns the soft limit in force.
#[cfg(unix)]
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit only reads the struct passed; failure (e.g. a hard limit above
        // the kernel's nr_open) leaves the soft limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_fd_limit() -> Option<u64> {
    None
}

/// Bytes of the HTTP/2 client preface that opens every gRPC connection.
const PREFACE_LEN: usize = 24;

/// A gRPC connection that must send its first 24 bytes (the HTTP/2 preface, or a TLS
/// ClientHello) within a deadline: hyper waits for the preface forever, so sockets that send
/// nothing or half a preface would each keep a descriptor. Once they are in, HTTP/2 keepalive
/// PINGs watch the connection.
struct PrefaceDeadline {
    io: tokio::net::TcpStream,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
}

impl PrefaceDeadline {
    fn new(io: tokio::net::TcpStream, within: Duration) -> Self {
        Self { io, deadline: Some(Box::pin(tokio::time::sleep(within))), seen: 0 }
    }
}

impl tokio::io::AsyncRead for PrefaceDeadline {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.deadline.is_some() {
                    this.seen += buf.filled().len() - before;
                    if this.seen >= PREFACE_LEN {
                        this.deadline = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within server.header_read_timeout_secs",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl tokio::io::AsyncWrite for PrefaceDeadline {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for PrefaceDeadline {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Limits of each plain HTTP listener (webhook ingress, metrics).
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    header_read: Duration,
    idle: Duration,
    max_connections: usize,
}

impl HttpLimits {
    /// From `server.*`; an automatic cap is a quarter of the open-file limit `fd_limit`, so
    /// both HTTP ports flooded together still leave half the descriptors to gRPC and the store.
    fn from_settings(s: &crate::config::ServerSettings, fd_limit: Option<u64>) -> Self {
        let max_connections = match s.max_http_connections {
            0 => fd_limit.map_or(1024, |n| (n / 4).clamp(16, 65_536) as usize),
            n => n,
        };
        Self {
            header_read: Duration::from_secs(s.header_read_timeout_secs.max(1)),
            idle: Duration::from_secs(s.idle_timeout_secs.max(1)),
            max_connections,
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had none.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn idle_since(&self) -> tokio::time::Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection will have been idle for `idle`, if it is idle now.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        (self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0).then(|| self.idle_since() + idle)
    }
}

/// Marks one request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock restarts when the last request in flight is answered.
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            *since = tokio::time::Instant::now();
        }
    }
}

/// Serves an axum router until shutdown, with what `axum::serve` lacks against floods: at
/// most `limits.max_connections` open connections (more are accepted and closed at once, so
/// the descriptor goes back at once instead of the backlog filling), HTTP/1 headers within
/// `header_read`, and every connection closed once it has had no request in flight for
/// `idle` (before its first request too: idle sockets, partial request lines, partial HTTP/2
/// prefaces), plus HTTP/2 limits.
async fn serve_router(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read).max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(16 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of descriptors (or a connection reset before accept): wait, don't spin.
                tracing::warn!(%error, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    listener = what,
                    max = limits.max_connections,
                    refused,
                    "connection cap reached; closing new connections (server.max_http_connections)"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(builder.clone(), tcp, app.clone(), limits, shutdown.clone(), slot));
    }
}

/// One HTTP connection, closed when idle for `limits.idle` or drained at shutdown.
async fn serve_connection(
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    tcp: tokio::net::TcpStream,
    app: axum::Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    use tower::ServiceExt;
    let activity = Arc::new(Activity {
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        idle_since: std::sync::Mutex::new(tokio::time::Instant::now()),
    });
    let tracked = activity.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let busy = InFlight::begin(&tracked);
        let app = app.clone();
        async move {
            // A request whose body trickles in (or whose handler hangs) gets the idle period
            // too, then a 408 and the connection closed.
            let r = match tokio::time::timeout(limits.idle, app.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => {
                    use axum::response::IntoResponse;
                    Ok((
                        http::StatusCode::REQUEST_TIMEOUT,
                        [(http::header::CONNECTION, "close")],
                        "request not completed in time",
                    )
                        .into_response())
                }
            };
            drop(busy);
            r
        }
    });
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        // Busy: look again one idle period later.
        let wake = activity.idle_deadline(limits.idle).unwrap_or_else(|| tokio::time::Instant::now() + limits.idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                if activity.idle_deadline(limits.idle).is_some_and(|d| d <= tokio::time::Instant::now()) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            _ = shutdown.wait_for(|s| *s), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
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

    /// Waits for SIGINT or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
