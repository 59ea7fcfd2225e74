//! Prometheus metrics: one process-wide recorder (the `metrics` facade), rendered at
//! `GET /metrics` on the metrics port. Every name is listed in [`NAMES`] and in docs/operations.md.
//!
//! Call sites use the small functions below (one line each), so adapters, the engine and
//! the ingress stay free of label plumbing. Labels are bounded: provider and endpoint
//! classes come from code, gRPC paths are checked against the compiled descriptors.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// The delivery worker (core) records these; they are listed and described here with the rest.
pub use crate::core::delivery_worker::{
    DEAD_LETTERS, DELIVERIES, DELIVERY_ATTEMPT, DELIVERY_BACKLOG, DELIVERY_LATENCY,
};
use crate::providers::http::{HttpFailure, Outcome};
use crate::store::Store;

/// gRPC calls finished, by `service`, `method`, `code`.
pub const GRPC_REQUESTS: &str = "wa_onboard_grpc_requests_total";
/// gRPC call latency (to the last byte of the response), by `service`, `method`, `code`.
pub const GRPC_DURATION: &str = "wa_onboard_grpc_request_duration_seconds";
/// Server streams open now (`Watch*` RPCs), by `service`, `method`.
pub const GRPC_STREAMS_OPEN: &str = "wa_onboard_grpc_streams_open";
/// Provider HTTP attempts, by `provider`, `endpoint`, `outcome`.
pub const PROVIDER_REQUESTS: &str = "wa_onboard_provider_requests_total";
/// Provider HTTP attempt latency, by `provider`, `endpoint`, `outcome`.
pub const PROVIDER_DURATION: &str = "wa_onboard_provider_request_duration_seconds";
/// Provider calls retried, by `provider`, `endpoint`.
pub const PROVIDER_RETRIES: &str = "wa_onboard_provider_retries_total";
/// Time spent waiting for a client-side rate-limit slot, by `provider`, `endpoint`.
pub const RATE_LIMIT_WAIT: &str = "wa_onboard_rate_limit_wait_seconds";
/// Slot acquisitions that had to wait, by `provider`, `endpoint`.
pub const RATE_LIMIT_WAITS: &str = "wa_onboard_rate_limit_waits_total";
/// Onboardings in the store, by `provider`, `state` (refreshed periodically; every replica
/// reports the same totals: aggregate with `max`, not `sum`).
pub const ONBOARDINGS: &str = "wa_onboard_onboardings";
/// Pipeline step runs (one provider step), by `provider`, `step`, `outcome`.
pub const STEP_DURATION: &str = "wa_onboard_pipeline_step_duration_seconds";
/// Webhook events, by `provider`, `result` (`received`, `duplicate`, `rejected`).
pub const WEBHOOK_EVENTS: &str = "wa_onboard_webhook_events_total";
/// Store call latency, by `operation`, `outcome`.
pub const STORE_DURATION: &str = "wa_onboard_store_operation_duration_seconds";
/// Always 1, with the `version` label.
pub const BUILD_INFO: &str = "wa_onboard_build_info";
/// Credential-expiry warnings issued (by `CheckAccount`, `GetProviderTokenStatus` and
/// partner logins), by `provider`, `state` (`expiring`, `expired`).
pub const CREDENTIAL_EXPIRY_WARNINGS: &str = "wa_onboard_credential_expiry_warnings_total";

/// Every metric family this service exports.
pub const NAMES: [&str; 19] = [
    GRPC_REQUESTS,
    GRPC_DURATION,
    GRPC_STREAMS_OPEN,
    PROVIDER_REQUESTS,
    PROVIDER_DURATION,
    PROVIDER_RETRIES,
    RATE_LIMIT_WAIT,
    RATE_LIMIT_WAITS,
    ONBOARDINGS,
    STEP_DURATION,
    WEBHOOK_EVENTS,
    STORE_DURATION,
    BUILD_INFO,
    CREDENTIAL_EXPIRY_WARNINGS,
    DELIVERIES,
    DELIVERY_LATENCY,
    DELIVERY_ATTEMPT,
    DELIVERY_BACKLOG,
    DEAD_LETTERS,
];

/// Histogram buckets, seconds: 1 ms to 60 s.
const BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (first call) and returns its handle; `None` when
/// another recorder was installed first (an embedding program's), in which case metrics go
/// there and `/metrics` says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder =
                PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS).ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            ::metrics::set_global_recorder(recorder).ok()?;
            describe();
            ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(GRPC_REQUESTS, "gRPC calls finished, by service, method and status code.");
    describe_histogram!(GRPC_DURATION, Unit::Seconds, "gRPC call latency to the end of the response.");
    describe_gauge!(GRPC_STREAMS_OPEN, "Server streams open now.");
    describe_counter!(PROVIDER_REQUESTS, "Provider HTTP attempts, by provider, endpoint class and outcome.");
    describe_histogram!(PROVIDER_DURATION, Unit::Seconds, "Provider HTTP attempt latency.");
    describe_counter!(PROVIDER_RETRIES, "Provider calls retried after a retryable failure.");
    describe_histogram!(RATE_LIMIT_WAIT, Unit::Seconds, "Time waited for a client-side rate-limit slot.");
    describe_counter!(RATE_LIMIT_WAITS, "Rate-limit slot acquisitions that had to wait.");
    describe_gauge!(ONBOARDINGS, "Onboardings in the store by provider and state (all replicas).");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Pipeline step run time (the provider work of one step).");
    describe_counter!(WEBHOOK_EVENTS, "Webhook events received, duplicated or rejected, by provider.");
    describe_counter!(
        CREDENTIAL_EXPIRY_WARNINGS,
        "Credential-expiry warnings (expiring within the warning lead, or expired), by provider and state."
    );
    // Only Gupshup credentials expire today: its two series exist from the start, at 0.
    for state in ["expiring", "expired"] {
        ::metrics::counter!(CREDENTIAL_EXPIRY_WARNINGS, "provider" => "gupshup", "state" => state).increment(0);
    }
    describe_histogram!(STORE_DURATION, Unit::Seconds, "Store call latency by operation.");
    describe_gauge!(BUILD_INFO, "Build information.");
    describe_counter!(
        DELIVERIES,
        "Outbound delivery attempts finished, by outcome (delivered, retry, dead, disabled)."
    );
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "Event commit to receiver acknowledgement, by sink.");
    describe_histogram!(DELIVERY_ATTEMPT, Unit::Seconds, "One delivery attempt's duration, by sink.");
    describe_gauge!(DELIVERY_BACKLOG, "Pending deliveries per destination; outbox rows as destination=\"outbox\".");
    describe_counter!(DEAD_LETTERS, "Deliveries dead-lettered after their last attempt.");
}

/// The exposition text for `GET /metrics`.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics are recorded by another recorder in this process\n".to_string(),
    }
}

/// Splits an endpoint class (`gupshup.link_app`) into provider and endpoint labels.
fn class_labels(class: &str) -> (String, String) {
    match class.split_once('.') {
        Some((p, e)) => (p.to_string(), e.to_string()),
        None => ("unknown".to_string(), class.to_string()),
    }
}

/// The `outcome` label of a classified provider attempt.
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Retry { .. } => "retryable",
        Outcome::Fail { .. } => "failed",
        Outcome::UnknownOutcome { .. } => "unknown_outcome",
    }
}

/// One provider HTTP attempt (`class` like `gupshup.link_app`).
pub fn provider_call(class: &str, outcome: &Outcome, elapsed: Duration) {
    let (provider, endpoint) = class_labels(class);
    let outcome = outcome_label(outcome);
    let labels = [("provider", provider), ("endpoint", endpoint), ("outcome", outcome.to_string())];
    ::metrics::counter!(PROVIDER_REQUESTS, &labels).increment(1);
    ::metrics::histogram!(PROVIDER_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// A provider call about to be retried after `failure`.
pub fn provider_retry(failure: &HttpFailure) {
    let class = match failure {
        HttpFailure::Retryable { class, .. }
        | HttpFailure::Fatal { class, .. }
        | HttpFailure::UnknownOutcome { class, .. } => class,
    };
    let (provider, endpoint) = class_labels(class);
    ::metrics::counter!(PROVIDER_RETRIES, "provider" => provider, "endpoint" => endpoint).increment(1);
}

/// A rate-limit slot taken after `waited` (zero when free). `key` is a
/// [`crate::providers::http::rate_key`]: `provider:class:fingerprint`.
pub fn rate_limit_wait(key: &str, waited: Duration) {
    let mut parts = key.split(':');
    let provider = parts.next().unwrap_or("unknown").to_string();
    let endpoint = parts.next().unwrap_or("unknown");
    // Classes are usually `provider.endpoint`; keep the endpoint part.
    let endpoint = endpoint.split_once('.').map_or(endpoint, |(_, e)| e).to_string();
    let labels = [("provider", provider), ("endpoint", endpoint)];
    ::metrics::histogram!(RATE_LIMIT_WAIT, &labels).record(waited.as_secs_f64());
    if !waited.is_zero() {
        ::metrics::counter!(RATE_LIMIT_WAITS, &labels).increment(1);
    }
}

/// One pipeline step run by the engine.
pub fn step_run(provider: crate::domain::ProviderKind, step: &str, ok: bool, elapsed: Duration) {
    ::metrics::histogram!(
        STEP_DURATION,
        "provider" => provider.to_string(),
        "step" => step.to_string(),
        "outcome" => if ok { "ok" } else { "error" },
    )
    .record(elapsed.as_secs_f64());
}

/// Webhook events on `provider` (the path segment; anything unknown is `unknown`).
pub fn webhook_events(provider: &str, result: &'static str, n: usize) {
    if n == 0 {
        return;
    }
    let provider = provider.parse::<crate::domain::ProviderKind>().map_or("unknown".to_string(), |p| p.to_string());
    ::metrics::counter!(WEBHOOK_EVENTS, "provider" => provider, "result" => result).increment(n as u64);
}

/// A credential-expiry warning (issue 17 point 15).
pub fn credential_expiry_warning(
    provider: crate::domain::ProviderKind,
    state: crate::providers::CredentialExpiryState,
) {
    ::metrics::counter!(CREDENTIAL_EXPIRY_WARNINGS, "provider" => provider.to_string(), "state" => state.as_str())
        .increment(1);
}

/// A store call.
pub fn store_call(operation: &'static str, ok: bool, elapsed: Duration) {
    ::metrics::histogram!(STORE_DURATION, "operation" => operation, "outcome" => if ok { "ok" } else { "error" })
        .record(elapsed.as_secs_f64());
}

/// One store operation's latency histograms, resolved once: a hot read (`GetOnboarding`)
/// then records without building a labelled key and looking it up in the registry.
#[derive(Debug)]
pub struct StoreOp {
    name: &'static str,
    ok: OnceLock<::metrics::Histogram>,
    error: OnceLock<::metrics::Histogram>,
}

impl StoreOp {
    /// The operation `name` (the `operation` label).
    pub const fn new(name: &'static str) -> Self {
        Self { name, ok: OnceLock::new(), error: OnceLock::new() }
    }

    /// Records one call, like [`store_call`].
    pub fn record(&self, ok: bool, elapsed: Duration) {
        // Handles are kept only once this module's recorder is the global one: a handle
        // resolved before that (or under another recorder, in tests) would be a no-op or
        // belong elsewhere for good. The recorder has no idle timeout, so a kept handle
        // stays the registered one.
        if !matches!(HANDLE.get(), Some(Some(_))) {
            return store_call(self.name, ok, elapsed);
        }
        let (cell, outcome) = if ok { (&self.ok, "ok") } else { (&self.error, "error") };
        cell.get_or_init(|| ::metrics::histogram!(STORE_DURATION, "operation" => self.name, "outcome" => outcome))
            .record(elapsed.as_secs_f64());
    }
}

/// Sets the onboardings gauge from the store's counts; combinations that disappeared go
/// to zero.
pub async fn refresh_onboardings(store: &dyn Store, seen: &mut std::collections::BTreeSet<(String, String)>) {
    let Ok(counts) = store.count_onboardings().await else { return };
    let mut now = std::collections::BTreeSet::new();
    for (provider, state, n) in counts {
        let key = (provider.to_string(), state.to_string());
        ::metrics::gauge!(ONBOARDINGS, "provider" => key.0.clone(), "state" => key.1.clone()).set(n as f64);
        now.insert(key);
    }
    for (provider, state) in seen.difference(&now) {
        ::metrics::gauge!(ONBOARDINGS, "provider" => provider.clone(), "state" => state.clone()).set(0.0);
    }
    *seen = now;
}

/// Refreshes the onboardings gauge every `every` and runs the exporter's upkeep.
pub async fn gauge_loop(store: Arc<dyn Store>, every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut seen = std::collections::BTreeSet::new();
    loop {
        refresh_onboardings(store.as_ref(), &mut seen).await;
        if let Some(h) = install() {
            h.run_upkeep();
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The metrics port: `GET /metrics` (Prometheus text format) and `GET /healthz`.
pub fn router() -> axum::Router {
    use axum::http::header;
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render())
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
}
