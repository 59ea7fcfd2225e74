//! The adapters built into this binary, registered once at start.

use std::time::Duration;

use super::ProviderRegistry;
use super::http::{HttpClient, RateLimiter, RetryPolicy};
use crate::domain::ProviderKind;

/// What every adapter factory gets: the shared HTTP client, the rate limiter (store-backed,
/// so shared by every replica on PostgreSQL) and the retry policy.
#[derive(Debug, Clone)]
pub struct AdapterDeps {
    /// Shared connection pool with the configured timeouts.
    pub http: HttpClient,
    /// Provider rate limits.
    pub limiter: RateLimiter,
    /// In-call retries of idempotent requests (the engine retries steps on top).
    pub retry: RetryPolicy,
    /// How often waiting onboardings are polled by default.
    pub poll_interval: Duration,
}

/// A registry with every built-in adapter, at the documented rate limits.
pub fn registry(deps: &AdapterDeps) -> ProviderRegistry {
    registry_with_limits(deps, super::gupshup::GupshupLimits::default())
}

/// [`registry`] with the Gupshup adapter's limits given (`providers.gupshup_limits`).
pub fn registry_with_limits(deps: &AdapterDeps, gupshup: super::gupshup::GupshupLimits) -> ProviderRegistry {
    let mut r = ProviderRegistry::new();
    r.register(ProviderKind::Gupshup, super::gupshup::factory_with_limits(deps.clone(), gupshup));
    r.register(ProviderKind::Exotel, super::exotel::factory(deps.clone()));
    r.register(ProviderKind::Digital99, super::digital99::factory(deps.clone()));
    r.register(ProviderKind::Whapi, super::whapi::factory(deps.clone()));
    r
}
