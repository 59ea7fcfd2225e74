//! Logging: `tracing` to stderr, human text or JSON. Secrets never reach it because they are
//! [`crate::domain::Secret`] values (redacted `Debug`/`Display`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are no-ops). `RUST_LOG` overrides the
/// default `info` level.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,sqlx=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
