//! The webhook ingress (design §5): an axum server on its own port.
//!
//! `POST /webhooks/{provider}/{account}/{secret}`: the unguessable per-account secret in the
//! path authenticates the provider (none of them sign). Bodies are capped; each event is
//! stored under its dedupe key before the 2xx, so a provider retry after a lost reply is
//! acknowledged and ignored. A store outage answers 503 so the provider retries later.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::core::Core;

/// Largest accepted body. Provider callbacks are a few KiB; anything near this is abuse.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The ingress router (plus `/healthz`).
pub fn router(core: Core) -> Router {
    Router::new()
        .route("/webhooks/{provider}/{account}/{secret}", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

async fn receive(
    State(core): State<Core>,
    Path((provider, account, secret)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let result = core.ingest_webhook(&provider, &account, &secret, &body).await;
    match &result {
        Ok(intake) => {
            crate::telemetry::metrics::webhook_events(&provider, "received", intake.accepted);
            crate::telemetry::metrics::webhook_events(&provider, "duplicate", intake.duplicates);
        }
        Err(_) => crate::telemetry::metrics::webhook_events(&provider, "rejected", 1),
    }
    match result {
        Ok(intake) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"accepted": intake.accepted, "duplicates": intake.duplicates})),
        )
            .into_response(),
        Err(e) => {
            let status = e.code.http();
            (status, axum::Json(serde_json::json!({"error": e.code.as_str(), "message": e.message}))).into_response()
        }
    }
}
