//! What the use cases and the engine read of the configuration, and nothing else. Each field
//! carries the name of the configuration key it comes from (`engine.lease_secs` is
//! `settings.engine.lease_secs`), so a reader greps from one to the other; `app.rs` builds it
//! from the loaded configuration, which `core` never sees.

/// The configuration of the use cases and the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreSettings {
    /// Pipeline engine: leases, retries, expiry warnings.
    pub engine: EngineConfig,
    /// The process: how long a shutdown waits for running steps.
    pub server: ServerConfig,
    /// Provider calls: endpoint policy and the HTTP timeout the use cases plan around.
    pub providers: ProviderPolicy,
    /// Limits of the watch streams (how many one tenant may hold open on this replica).
    pub streams: StreamLimits,
    /// Outbound delivery (`delivery.*`).
    pub delivery: DeliveryPolicy,
}

/// What the delivery use cases check destinations against (`delivery.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Which webhook URLs and addresses may be reached (`delivery.allow_loopback`,
    /// `delivery.allow_cidrs`, `delivery.deny_cidrs`).
    pub egress: crate::delivery::guard::EgressPolicy,
}

/// The engine's configuration (`engine.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Whether this replica runs the engine (off: an API-only replica; webhook events are then
    /// stored for other replicas instead of handed over in memory).
    pub enabled: bool,
    /// How long a claimed step or `request_id` stays ours without renewal, seconds.
    pub lease_secs: u64,
    /// Steps run concurrently by this replica.
    pub concurrency: usize,
    /// Idle time between claims when nothing woke the engine, milliseconds.
    pub tick_ms: u64,
    /// First retry delay of a failed step, milliseconds (doubles per attempt, jittered).
    pub retry_base_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_ms: u64,
    /// Seconds before an onboarding's expiry at which an `expiry_warning` event is written.
    pub expiry_warnings_secs: Vec<u64>,
}

/// The process settings the engine reads (`server.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Seconds a shutdown waits for running steps to finish and release their leases.
    pub shutdown_grace_secs: u64,
}

/// Provider-call policy (`providers.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderPolicy {
    /// Whether accounts may carry an endpoint override (off in production: a tenant could
    /// otherwise point the service at internal hosts).
    pub allow_custom_endpoints: bool,
    /// Per-call HTTP timeout, seconds: a use case that must tell a call still in flight from
    /// one that died bounds its wait with it.
    pub http_timeout_secs: u64,
}

/// Stream limits (`streams.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open watch streams per tenant on this replica.
    pub max_per_tenant: usize,
}
