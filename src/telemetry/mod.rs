//! Logging, trace export and metrics.
//!
//! Logs: `tracing` to stderr, human text or JSON. Secrets never reach them because they are
//! [`crate::domain::Secret`] values (redacted `Debug`/`Display`) and URLs are redacted.
//! Traces: optional OTLP/gRPC export ([`crate::config::TelemetrySettings`]); a W3C
//! `traceparent` in the incoming gRPC metadata becomes the parent of the call's span.
//! Metrics: [`metrics`], served on the metrics port.

pub mod grpc;
pub mod metrics;
pub mod store;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::TelemetrySettings;

/// Keeps the trace exporter alive; dropping it flushes and stops the export.
#[derive(Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("exporting", &self.provider.is_some()).finish()
    }
}

impl TelemetryGuard {
    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(error) = p.shutdown()
        {
            eprintln!("warning: trace export did not flush: {error}");
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber without trace export (tests, subcommands).
pub fn init(format: &str) {
    let _ = init_with(format, &TelemetrySettings::default());
}

/// Installs the global subscriber (once; later calls are no-ops) and, when
/// `telemetry.otlp_endpoint` is set, the OTLP span exporter. `RUST_LOG` overrides the
/// default `info` level. Must run inside the Tokio runtime when exporting. An exporter that
/// cannot be built is reported and skipped: the service runs without trace export.
pub fn init_with(format: &str, settings: &TelemetrySettings) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,sqlx=warn,tower=warn"));
    let fmt: BoxedLayer = if format == "json" {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    let mut layers = vec![fmt];
    let (provider, problem) = match tracer_provider(settings) {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("wa-onboard");
            layers.push(Box::new(tracing_opentelemetry::layer().with_tracer(tracer)));
            (Some(provider), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    let installed = tracing_subscriber::registry().with(layers).with(filter).try_init().is_ok();
    if let Some(error) = problem {
        tracing::warn!(%error, endpoint = %settings.otlp_endpoint, "Trace export disabled: the OTLP exporter cannot be built.");
    }
    match provider {
        Some(p) if installed => {
            tracing::info!(endpoint = %settings.otlp_endpoint, "Exporting traces over OTLP/gRPC.");
            TelemetryGuard { provider: Some(p) }
        }
        Some(p) => {
            // Another subscriber was installed first: nothing would reach this exporter.
            let _ = p.shutdown();
            TelemetryGuard::default()
        }
        None => TelemetryGuard::default(),
    }
}

fn tracer_provider(settings: &TelemetrySettings) -> Result<Option<SdkTracerProvider>, String> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    if settings.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(5));
    if settings.otlp_endpoint.starts_with("https://") {
        builder = builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
            .with_resource(resource)
            .build(),
    ))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the W3C trace context in `headers` (`traceparent`, `tracestate`), if any, the
/// parent of `span`. Without trace export this records nothing.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
