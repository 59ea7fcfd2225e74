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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::providers::http::{HttpClient, HttpTimeouts, RateLimiter, RetryPolicy};
    use crate::providers::{PORT_CAPABILITIES, Provider, ProviderCapabilities};

    fn adapters() -> Vec<Arc<dyn Provider>> {
        let deps = AdapterDeps {
            http: HttpClient::new(HttpTimeouts { connect: Duration::from_secs(1), total: Duration::from_secs(1) })
                .unwrap(),
            limiter: RateLimiter::in_memory(),
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(5),
        };
        vec![
            Arc::new(super::super::gupshup::GupshupProvider::new(deps.clone())),
            Arc::new(super::super::exotel::ExotelProvider::new(&deps)),
            Arc::new(super::super::whapi::WhapiProvider::new(&deps)),
            Arc::new(super::super::digital99::Digital99Provider::new(&deps)),
        ]
    }

    /// Capabilities come from one mechanism: a port's capabilities are advertised exactly when
    /// the port is there, no adapter declares one in its flow list (it would be ignored), and
    /// with both every built-in adapter offers all of its provider's API as `ListProviders`
    /// lists it.
    #[test]
    fn each_adapters_capabilities_match_its_ports() {
        let adapters = adapters();
        let kinds: Vec<ProviderKind> = adapters.iter().map(|p| p.kind()).collect();
        assert_eq!(kinds, ProviderKind::ALL, "one adapter per provider");
        for p in adapters {
            let caps = p.capabilities();
            for (port, granted) in PORT_CAPABILITIES {
                let offered = port.offered_by(p.as_ref());
                for c in granted {
                    assert_eq!(caps.contains(c), offered, "{}: {c:?} advertised iff {port:?} is offered", p.kind());
                    assert!(!p.flow_capabilities().contains(c), "{}: port capability {c:?} declared", p.kind());
                }
            }
            let mut api = p.kind().capabilities().to_vec();
            api.sort();
            assert_eq!(caps, api, "{} offers all of its API", p.kind());
        }
    }
}
