//! Settings: embedded defaults, then an optional TOML file, then `WA_ONBOARD__SECTION__KEY`
//! environment variables, then command-line flags. `serve` with nothing at all works.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::Secret;

/// Everything configurable: the file, then `WA_ONBOARD__*` variables, then flags
/// (docs/operations.md lists every key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Listeners, data dir, logging.
    pub server: ServerSettings,
    /// Where the store lives (`database.url`; SQLite under the data dir when empty).
    pub database: DatabaseSettings,
    /// The keys that seal credentials and signing secrets at rest.
    pub security: SecuritySettings,
    /// The development tenant created at start.
    pub dev: DevSettings,
    /// Built-in provider simulators.
    pub sandbox: SandboxSettings,
    /// Provider endpoints and policy.
    pub providers: ProviderSettings,
    /// Server-stream limits and heartbeats.
    pub streams: StreamSettings,
    /// The pipeline engine's workers, leases, retries and watchdog.
    pub engine: EngineSettings,
    /// Metrics and trace export.
    pub telemetry: TelemetrySettings,
    /// API keys declared in the config file (re-read while the server runs).
    pub auth: AuthSettings,
    /// Outbound delivery of events to tenants' destinations (issue 19).
    pub delivery: DeliverySettings,
    /// The config file these settings were read from, if any (re-read for `auth.keys`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Listeners and process settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listener.
    pub grpc_addr: String,
    /// Webhook ingress listener.
    pub webhook_addr: String,
    /// Prometheus metrics listener.
    pub metrics_addr: String,
    /// Base URL providers use to reach the webhook ingress; empty: `http://{webhook_addr}`.
    pub public_webhook_url: String,
    /// Where the SQLite file and generated development secrets live.
    pub data_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: String,
    /// Seconds in-flight calls get to finish on SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
    /// Seconds between store health probes.
    pub health_probe_secs: u64,
    /// TLS (and mutual TLS) for the gRPC port.
    pub tls: TlsSettings,
    /// Seconds a client of the webhook and metrics ports has to send a request's headers, and a
    /// gRPC client its HTTP/2 preface.
    pub header_read_timeout_secs: u64,
    /// Seconds a webhook or metrics connection may stay without a request in flight (before
    /// its first request too: an idle or half-sent connection is closed after this).
    pub idle_timeout_secs: u64,
    /// Open connections per HTTP port (webhook, metrics); more are accepted and closed at once.
    /// 0: a quarter of the open-file limit, so a flood leaves descriptors for gRPC and the store.
    pub max_http_connections: usize,
    /// Open connections on the gRPC port (gRPC, Connect, gRPC-Web, the console); more are
    /// accepted and closed at once. 0: half the open-file limit. Each connection carries many
    /// streams, so the cap bounds descriptors, not watchers.
    pub max_grpc_connections: usize,
    /// Origins browsers may call the gRPC port from (Connect, gRPC-Web), e.g.
    /// `https://console.example.com`; `*` is any origin. Empty: no CORS headers (off).
    pub cors_allowed_origins: Vec<String>,
    /// Serve the operator console (a static page, a Connect client) at `GET /` on the gRPC
    /// port. On by default, as the development tenant and sandbox are; off in production.
    pub console: bool,
}

/// TLS for the gRPC listener. Plaintext when `cert_file` is empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Server certificate chain, PEM. Set with `key_file` to serve gRPC over TLS only.
    pub cert_file: PathBuf,
    /// The certificate's private key, PEM.
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign client certificates. Set: mutual TLS, every client
    /// must present a certificate from this CA (API keys are still required).
    pub client_ca_file: PathBuf,
}

impl TlsSettings {
    /// True when the gRPC port serves TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// Metrics and OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector endpoint (e.g. `http://otel-collector:4317`); empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans.
    pub service_name: String,
    /// Share of new traces sampled (0.0 to 1.0); a sampled incoming `traceparent` is
    /// always followed.
    pub sample_ratio: f64,
    /// Seconds between refreshes of the onboardings-by-state gauge from the store.
    pub gauge_refresh_secs: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "wa-onboard".into(),
            sample_ratio: 1.0,
            gauge_refresh_secs: 15,
        }
    }
}

/// API keys from the config file, beside the ones in the store (`wa-onboard tenant ...`).
/// The file is re-read every `reload_secs` (and on SIGHUP): a key added there works, and a
/// key removed from it is refused, without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The keys.
    pub keys: Vec<ConfigKey>,
    /// Seconds between re-reads of the config file.
    pub reload_secs: u64,
    /// Milliseconds a key lookup is cached: a key revoked in the store is refused, and the
    /// streams it opened end `UNAUTHENTICATED`, within this delay.
    pub revocation_delay_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { keys: Vec::new(), reload_secs: 5, revocation_delay_ms: 5_000 }
    }
}

/// One API key declared in the config: its tenant (created if missing) and either the
/// SHA-256 of the key (hex, what `wa-onboard tenant gen-key` prints) or the key itself
/// (from an environment variable or a mounted Secret).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigKey {
    /// Tenant name.
    pub tenant: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
    /// The key itself (`wao_...`).
    #[serde(serialize_with = "ser_redacted")]
    pub key: String,
}

impl std::fmt::Debug for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigKey")
            .field("tenant", &self.tenant)
            .field("key_sha256", &self.key_sha256)
            .field("key", &if self.key.is_empty() { "" } else { "[REDACTED]" })
            .finish()
    }
}

impl ConfigKey {
    /// The key's SHA-256, as stored and looked up.
    pub fn hash(&self) -> Result<Vec<u8>, ConfigError> {
        match (self.key.is_empty(), self.key_sha256.is_empty()) {
            (false, true) if self.key.starts_with(crate::domain::api_key::KEY_PREFIX) => {
                Ok(crate::domain::api_key::hash_key(&self.key))
            }
            (false, true) => Err(ConfigError(format!(
                "auth.keys (tenant '{}'): key must start with '{}'",
                self.tenant,
                crate::domain::api_key::KEY_PREFIX
            ))),
            (true, false) => match hex::decode(self.key_sha256.trim()) {
                Ok(h) if h.len() == 32 => Ok(h),
                _ => {
                    Err(ConfigError(format!("auth.keys (tenant '{}'): key_sha256 must be 64 hex digits", self.tenant)))
                }
            },
            _ => {
                Err(ConfigError(format!("auth.keys (tenant '{}'): set exactly one of key_sha256 and key", self.tenant)))
            }
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".into(),
            webhook_addr: "127.0.0.1:8080".into(),
            metrics_addr: "127.0.0.1:9090".into(),
            public_webhook_url: String::new(),
            data_dir: PathBuf::from("data"),
            log_format: "text".into(),
            shutdown_grace_secs: 10,
            health_probe_secs: 2,
            tls: TlsSettings::default(),
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_http_connections: 0,
            max_grpc_connections: 0,
            cors_allowed_origins: Vec::new(),
            console: true,
        }
    }
}

/// `database.*`: the store's URL and pool.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite:PATH` or `postgres://...`; empty: `sqlite:{data_dir}/wa-onboard.db`.
    pub url: String,
    /// PostgreSQL: how often to vacuum and analyze the service's tables past autovacuum's
    /// default thresholds, so queue tables that grow from empty in seconds are neither planned
    /// from no statistics nor scanned through their dead rows; 0: never (autovacuum alone).
    pub maintenance_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: String::new(), maintenance_secs: 10 }
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &crate::store::redact_url(&self.url))
            .field("maintenance_secs", &self.maintenance_secs)
            .finish()
    }
}

/// Encryption at rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Primary key (32 bytes, base64). Empty: a key generated once under `data_dir`
    /// (development only; production sets it from a Kubernetes Secret).
    #[serde(serialize_with = "ser_redacted")]
    pub encryption_key: String,
    /// Id stored with every ciphertext sealed by the primary key.
    pub encryption_key_id: String,
    /// Older keys still needed to read existing data, by id (rotation).
    #[serde(serialize_with = "ser_redacted_map")]
    pub previous_keys: BTreeMap<String, String>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self { encryption_key: String::new(), encryption_key_id: "k1".into(), previous_keys: BTreeMap::new() }
    }
}

fn ser_redacted<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_empty() { "" } else { "[REDACTED]" })
}

fn ser_redacted_map<S: serde::Serializer>(v: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for k in v.keys() {
        m.serialize_entry(k, "[REDACTED]")?;
    }
    m.end()
}

/// The development tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevSettings {
    /// Create it at start.
    pub enabled: bool,
    /// Its name.
    pub tenant: String,
}

impl Default for DevSettings {
    fn default() -> Self {
        Self { enabled: true, tenant: "dev".into() }
    }
}

/// Built-in simulators.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Run the simulators in-process and give the development tenant sandbox accounts.
    pub enabled: bool,
    /// Interface the simulators listen on.
    pub host: String,
    /// First port (the six listeners take consecutive ports); 0: free ports.
    pub base_port: u16,
    /// Per-simulator settings (`[sandbox.sims.gupshup]`...: credentials accepted, delays,
    /// limits).
    pub sims: crate::sim::sandbox::SimSettings,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self { enabled: true, host: "127.0.0.1".into(), base_port: 0, sims: Default::default() }
    }
}

/// Provider endpoints and policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// Allow `AccountOptions.endpoint` overrides (staging, tests). Off in production: a
    /// tenant could otherwise point the service at internal hosts.
    pub allow_custom_endpoints: bool,
    /// Per-call HTTP timeout, seconds.
    pub http_timeout_secs: u64,
    /// Client-side rate limits of the Gupshup adapter, per credential: unset parts are the
    /// documented ones (the adapter's `GupshupLimits::default`). Benchmarks scale them down
    /// together with the simulator's (`sandbox.sims.gupshup.limits`); above the provider's
    /// real limits they only earn 429s.
    pub gupshup_limits: GupshupLimitSettings,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self { allow_custom_endpoints: false, http_timeout_secs: 15, gupshup_limits: Default::default() }
    }
}

/// At most `max` calls per `window_ms` milliseconds; an unset part keeps the adapter's
/// documented value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSetting {
    /// Calls per window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Window length, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// The Gupshup adapter's limits (`providers.gupshup_limits.{login,link,pipeline}`): only the
/// shape of the overrides; the documented values live with the adapter
/// (`providers::gupshup::GupshupLimits`), and `app.rs` applies these over them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GupshupLimitSettings {
    /// Partner login.
    pub login: RateLimitSetting,
    /// Link app.
    pub link: RateLimitSetting,
    /// Pipeline poll.
    pub pipeline: RateLimitSetting,
}

/// Outbound delivery (`[delivery]`): webhooks and NATS JetStream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Whether this replica runs the delivery worker (dispatcher and senders).
    pub enabled: bool,
    /// NATS servers of NATS destinations (never from callers); empty: NATS destinations
    /// stay pending.
    pub nats_urls: Vec<String>,
    /// Webhooks to loopback hosts (and plain http to them). Unset: allowed exactly when the
    /// sandbox runs (development).
    pub allow_loopback: Option<bool>,
    /// Private and shared address ranges reachable.
    pub allow_private: bool,
    /// When not empty, only these CIDR ranges are reached.
    pub allow_cidrs: Vec<String>,
    /// Never reached (link-local and cloud metadata are refused whatever is listed).
    pub deny_cidrs: Vec<String>,
    /// Retry delays, seconds; empty: exponential from 30 s doubling to 8 h, 15 retries.
    pub retry_schedule_secs: Vec<u64>,
    /// Per-attempt timeout, milliseconds.
    pub timeout_ms: u64,
    /// Response bytes read at most.
    pub max_response_bytes: usize,
    /// A destination failing this long is disabled, seconds.
    pub disable_after_secs: u64,
    /// Deliveries in flight at once on this replica.
    pub concurrency: usize,
    /// Idle time between claims, milliseconds.
    pub tick_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            nats_urls: Vec::new(),
            allow_loopback: None,
            allow_private: false,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            retry_schedule_secs: Vec::new(),
            timeout_ms: 10_000,
            max_response_bytes: 64 * 1024,
            disable_after_secs: 5 * 24 * 3600,
            concurrency: 16,
            tick_ms: 200,
        }
    }
}

/// `streams.*`: how many streams a tenant may hold and how often they carry heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Seconds between heartbeats on an idle stream (at most 15).
    pub heartbeat_secs: u64,
    /// Recent events kept in memory per watched onboarding, shared by its streams; a stream
    /// further behind reads the store on its own.
    pub buffer: usize,
    /// Concurrent calls (streams included) per gRPC connection: HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`. Generous: one client channel often carries a watch
    /// stream per onboarding beside its unary calls, and calls over the limit queue in it.
    pub max_per_connection: u32,
    /// Open `WatchOnboarding` and `WatchPipeline` streams per tenant on this replica; more are
    /// refused `RESOURCE_EXHAUSTED`.
    pub max_per_tenant: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self { heartbeat_secs: 10, buffer: 64, max_per_connection: 1_000, max_per_tenant: 10_000 }
    }
}

/// Pipeline engine: leases, retries, polling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Run the engine in this process. Off: an API-only replica (others do the work).
    pub enabled: bool,
    /// How long a claimed step stays ours without renewal; a crashed replica's work is
    /// picked up this long after it died. Also the lease of a `request_id` claimed before its
    /// provider call (callers with the same key wait at most about this long).
    pub lease_secs: u64,
    /// Steps run concurrently per replica.
    pub concurrency: usize,
    /// Idle time between claims when nothing woke the engine, milliseconds.
    pub tick_ms: u64,
    /// First retry delay of a failed step, milliseconds (doubles per attempt, jittered).
    pub retry_base_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_ms: u64,
    /// Default provider polling interval, milliseconds (adapters may ask for longer).
    pub poll_interval_ms: u64,
    /// How long before an onboarding's `expire_time` (a link, a trial) an `expiry_warning`
    /// event is sent, in seconds; one event per threshold. Empty: no warnings.
    pub expiry_warnings_secs: Vec<u64>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_secs: 30,
            concurrency: 32,
            tick_ms: 500,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            poll_interval_ms: 3000,
            expiry_warnings_secs: vec![86_400, 3_600],
        }
    }
}

/// Command-line overrides, applied last.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--grpc-addr`.
    pub grpc_addr: Option<String>,
    /// `--webhook-addr`.
    pub webhook_addr: Option<String>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads defaults, then `file` (if any), then the environment, then `overrides`, and
    /// validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("WA_ONBOARD__").split("__").lowercase(true));
        let mut s: Settings = fig.extract().map_err(|e| ConfigError(figment_message(&e)))?;
        if let Some(v) = &overrides.grpc_addr {
            s.server.grpc_addr = v.clone();
        }
        if let Some(v) = &overrides.webhook_addr {
            s.server.webhook_addr = v.clone();
        }
        if let Some(v) = &overrides.metrics_addr {
            s.server.metrics_addr = v.clone();
        }
        if let Some(v) = &overrides.data_dir {
            s.server.data_dir = v.clone();
        }
        if let Some(v) = &overrides.database_url {
            s.database.url = v.clone();
        }
        if let Some(v) = &overrides.log_format {
            s.server.log_format = v.clone();
        }
        s.source = file.map(Path::to_path_buf);
        s.validate()?;
        Ok(s)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("server.grpc_addr", &self.server.grpc_addr),
            ("server.webhook_addr", &self.server.webhook_addr),
            ("server.metrics_addr", &self.server.metrics_addr),
        ] {
            v.parse::<SocketAddr>().map_err(|e| {
                ConfigError(format!("{key} = '{v}' is not a socket address (e.g. 127.0.0.1:50051): {e}"))
            })?;
        }
        if !matches!(self.server.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "server.log_format = '{}' must be 'text' or 'json'",
                self.server.log_format
            )));
        }
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(format!(
                "database.url = '{}' must start with sqlite: or postgres://",
                crate::store::redact_url(url)
            )));
        }
        if !self.server.public_webhook_url.is_empty() && url::Url::parse(&self.server.public_webhook_url).is_err() {
            return Err(ConfigError(format!(
                "server.public_webhook_url = '{}' is not a URL",
                self.server.public_webhook_url
            )));
        }
        for (key, ranges) in
            [("delivery.allow_cidrs", &self.delivery.allow_cidrs), ("delivery.deny_cidrs", &self.delivery.deny_cidrs)]
        {
            crate::delivery::guard::EgressPolicy::parse_ranges(ranges)
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        if self.delivery.concurrency == 0 || self.delivery.timeout_ms == 0 || self.delivery.tick_ms == 0 {
            return Err(ConfigError("delivery.concurrency, timeout_ms and tick_ms must be at least 1".into()));
        }
        if self.streams.heartbeat_secs == 0 || self.streams.heartbeat_secs > 15 {
            return Err(ConfigError("streams.heartbeat_secs must be between 1 and 15".into()));
        }
        if self.streams.buffer == 0 {
            return Err(ConfigError("streams.buffer must be at least 1".into()));
        }
        if self.streams.max_per_connection == 0 || self.streams.max_per_tenant == 0 {
            return Err(ConfigError("streams.max_per_connection and streams.max_per_tenant must be at least 1".into()));
        }
        if !(100..=600_000).contains(&self.auth.revocation_delay_ms) {
            return Err(ConfigError("auth.revocation_delay_ms must be between 100 and 600000".into()));
        }
        if self.server.header_read_timeout_secs == 0 || self.server.idle_timeout_secs == 0 {
            return Err(ConfigError(
                "server.header_read_timeout_secs and server.idle_timeout_secs must be at least 1".into(),
            ));
        }
        let e = &self.engine;
        if e.lease_secs == 0 || e.concurrency == 0 || e.tick_ms == 0 || e.poll_interval_ms == 0 {
            return Err(ConfigError(
                "engine.lease_secs, engine.concurrency, engine.tick_ms and engine.poll_interval_ms must be at least 1"
                    .into(),
            ));
        }
        if e.retry_base_ms == 0 || e.retry_max_ms < e.retry_base_ms {
            return Err(ConfigError("engine.retry_base_ms must be at least 1 and at most engine.retry_max_ms".into()));
        }
        if e.expiry_warnings_secs.iter().any(|&t| !(60..=31_536_000).contains(&t)) {
            return Err(ConfigError(
                "engine.expiry_warnings_secs: each threshold must be between 60 and 31536000 seconds".into(),
            ));
        }
        let g = &self.providers.gupshup_limits;
        if [g.login, g.link, g.pipeline].iter().any(|l| l.max == Some(0) || l.window_ms == Some(0)) {
            return Err(ConfigError(
                "providers.gupshup_limits: every limit needs max and window_ms of at least 1".into(),
            ));
        }
        if self.security.encryption_key_id.is_empty() {
            return Err(ConfigError("security.encryption_key_id must not be empty".into()));
        }
        let tls = &self.server.tls;
        if tls.enabled() == tls.key_file.as_os_str().is_empty() {
            return Err(ConfigError("server.tls.cert_file and server.tls.key_file must be set together".into()));
        }
        if !tls.enabled() && !tls.client_ca_file.as_os_str().is_empty() {
            return Err(ConfigError("server.tls.client_ca_file needs server.tls.cert_file and key_file".into()));
        }
        let t = &self.telemetry;
        if !t.otlp_endpoint.is_empty() {
            match url::Url::parse(&t.otlp_endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(ConfigError(format!(
                        "telemetry.otlp_endpoint = '{}' must be an http:// or https:// URL",
                        t.otlp_endpoint
                    )));
                }
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(ConfigError("telemetry.sample_ratio must be between 0.0 and 1.0".into()));
        }
        if t.gauge_refresh_secs == 0 || self.auth.reload_secs == 0 {
            return Err(ConfigError("telemetry.gauge_refresh_secs and auth.reload_secs must be at least 1".into()));
        }
        for k in &self.auth.keys {
            crate::domain::api_key::validate_tenant_name(&k.tenant)
                .map_err(|e| ConfigError(format!("auth.keys: tenant '{}': {e}", k.tenant)))?;
            k.hash()?;
        }
        Ok(())
    }

    /// The database URL, defaulting to the SQLite file under the data dir.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite:{}", self.server.data_dir.join("wa-onboard.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// Base URL of the webhook ingress as providers see it.
    pub fn public_webhook_url(&self, bound: SocketAddr) -> String {
        if self.server.public_webhook_url.is_empty() {
            format!("http://{bound}")
        } else {
            self.server.public_webhook_url.trim_end_matches('/').to_string()
        }
    }

    /// The encryption keys as `(id, key)` pairs, primary first. An empty primary key means
    /// the development key under the data dir, created on first use.
    pub fn encryption_keys(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        let primary = if self.security.encryption_key.is_empty() {
            dev_key(&self.server.data_dir)?
        } else {
            Secret::new(self.security.encryption_key.clone())
        };
        let mut keys = vec![(self.security.encryption_key_id.clone(), primary)];
        for (id, k) in &self.security.previous_keys {
            keys.push((id.clone(), Secret::new(k.clone())));
        }
        Ok(keys)
    }
}

/// Reads or creates (mode 0600) the development encryption key.
fn dev_key(data_dir: &Path) -> Result<Secret, ConfigError> {
    let path = data_dir.join("dev-encryption.key");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(s.trim().to_string()));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ConfigError(format!("server.data_dir = '{}' cannot be created: {e}", data_dir.display())))?;
    let key = crate::crypto::Cipher::generate_key();
    write_private(&path, key.expose()).map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
    Ok(key)
}

/// Writes a file readable by the owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())
}

fn figment_message(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() { e.to_string() } else { format!("{key}: {}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.server.grpc_addr, "127.0.0.1:50051");
        assert!(s.database_url().starts_with("sqlite:"));
    }

    #[test]
    fn gupshup_limits_are_unset_by_default_and_can_be_set_in_part() {
        assert_eq!(Settings::default().providers.gupshup_limits, GupshupLimitSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[providers.gupshup_limits.link]\nmax = 10\nwindow_ms = 1000\n").unwrap();
        let s = Settings::load(Some(&f), &Overrides::default()).unwrap();
        let g = s.providers.gupshup_limits;
        assert_eq!(g.link, RateLimitSetting { max: Some(10), window_ms: Some(1000) });
        assert_eq!(g.login, RateLimitSetting::default(), "unset: the adapter's documented limit");
        std::fs::write(&f, "[providers.gupshup_limits.pipeline]\nwindow_ms = 2000\n").unwrap();
        let s = Settings::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(s.providers.gupshup_limits.pipeline, RateLimitSetting { max: None, window_ms: Some(2000) });
        std::fs::write(&f, "[providers.gupshup_limits.link]\nmax = 0\nwindow_ms = 1000\n").unwrap();
        let e = Settings::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("providers.gupshup_limits"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\ngrpc_addr = \"nope\"\n").unwrap();
        let e = Settings::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("server.grpc_addr"), "{e}");
        std::fs::write(&f, "[server]\ngrpc_adr = \"127.0.0.1:1\"\n").unwrap();
        let e = Settings::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("grpc_adr"), "{e}");
        std::fs::write(&f, "[streams]\nheartbeat_secs = \"x\"\n").unwrap();
        let e = Settings::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("streams.heartbeat_secs"), "{e}");
        std::fs::write(&f, "[engine]\nexpiry_warnings_secs = [3600, 5]\n").unwrap();
        let e = Settings::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("engine.expiry_warnings_secs"), "{e}");
        std::fs::write(&f, "[engine]\nexpiry_warnings_secs = []\n").unwrap();
        assert!(Settings::load(Some(&f), &Overrides::default()).unwrap().engine.expiry_warnings_secs.is_empty());
    }

    #[test]
    fn overrides_win() {
        let o = Overrides { grpc_addr: Some("127.0.0.1:1".into()), ..Default::default() };
        assert_eq!(Settings::load(None, &o).unwrap().server.grpc_addr, "127.0.0.1:1");
    }

    #[test]
    fn secrets_not_serialized() {
        let mut s = Settings::default();
        s.security.encryption_key = "c2VjcmV0".into();
        let out = toml_like(&s);
        assert!(!out.contains("c2VjcmV0"));
    }

    fn toml_like(s: &Settings) -> String {
        serde_json::to_string(s).unwrap()
    }
}
