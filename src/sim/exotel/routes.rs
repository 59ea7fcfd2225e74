//! HTTP surface: `/v2/accounts/{sid}/isv` (mint, validate) per region, plus `/_sim/exotel`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::state::CompleteError;
use super::{ExotelFaults, ExotelKnobs, ExotelRegion, ExotelSim};
use crate::sim::common::{self, FaultLayerState, lock};

#[derive(Clone)]
struct Ctx {
    sim: ExotelSim,
    region: ExotelRegion,
}

pub(super) fn router(sim: ExotelSim, region: ExotelRegion) -> axum::Router {
    let core = sim.core().clone();
    let fault_state = FaultLayerState { core: core.clone(), bodies: Arc::new(ExotelFaults) };
    let provider = axum::Router::new()
        .route("/v2/accounts/{sid}/isv", post(mint).get(validate))
        .layer(axum::middleware::from_fn_with_state(fault_state, common::fault_middleware))
        .with_state(Ctx { sim: sim.clone(), region });
    let control = axum::Router::new()
        .route("/_sim/exotel/tokens", get(control_tokens))
        .route("/_sim/exotel/tokens/{token}", get(control_token))
        .route("/_sim/exotel/tokens/{token}/complete", post(control_complete))
        .route("/_sim/exotel/knobs", get(control_knobs_get).put(control_knobs_put))
        .with_state(sim);
    provider.merge(control).merge(common::control_router(core))
}

fn request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn description(code: u16) -> &'static str {
    // Wording of the documented HTTP error table [C].
    match code {
        400 => "Bad Request - Something in your header or request body was malformed/missing.",
        401 => "Unauthorized - Necessary credentials were either missing or invalid.",
        402 => {
            "Payment Required - The action is not available on your plan, or you have exceeded usage limits for your current plan."
        }
        403 => "Your credentials are valid, but you don't have access to the requested resource.",
        404 => "Not Found - The object you're requesting doesn't exist.",
        429 => "Too Many Requests",
        _ => "Server Errors - Something went wrong at our end. Please try again.",
    }
}

/// The failure envelope. [I] `error_data` = `{code, description, message}` as in other
/// Exotel v2 APIs; `isv.code` mirrors the error code.
pub(super) fn error_envelope(method: &str, http_code: u16, code: u16, message: &str) -> Value {
    json!({
        "request_id": request_id(),
        "method": method,
        "http_code": http_code,
        "response": { "whatsapp": { "isv": {
            "code": code,
            "status": "failure",
            "error_data": { "code": code, "description": description(code), "message": message },
            "data": null,
        } } }
    })
}

fn success_envelope(method: &str, data: Value) -> Value {
    json!({
        "request_id": request_id(),
        "method": method,
        "http_code": 200,
        "response": { "whatsapp": { "isv": {
            "code": 200, "error_data": null, "status": "success", "data": data,
        } } }
    })
}

fn fail(method: &str, code: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(error_envelope(method, code, code, message))).into_response()
}

/// `(api_key, api_token)` from `Authorization: Basic` (URL userinfo arrives the same way).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = raw.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let (k, t) = s.split_once(':')?;
    Some((k.to_string(), t.to_string()))
}

/// Auth and account checks shared by both calls; `Err` is the error envelope to send.
fn authorize(ctx: &Ctx, method: &str, sid: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    authorize_inner(ctx, sid, headers).map_err(|(code, msg)| Box::new(fail(method, code, &msg)))
}

fn authorize_inner(ctx: &Ctx, sid: &str, headers: &HeaderMap) -> Result<(), (u16, String)> {
    let cfg = ctx.sim.config();
    let Some((key, token)) = basic_credentials(headers) else {
        return Err((401, "Authentication credentials are missing or malformed".to_string()));
    };
    let creds_ok = |a: &super::ExotelAccount| a.api_key == key && a.api_token == token;
    if !cfg.accounts.iter().any(creds_ok) {
        return Err((401, "Invalid API key or token".to_string()));
    }
    // [I] An account exists only in its own region: elsewhere it is 404.
    let Some(account) = cfg.accounts.iter().find(|a| a.sid == sid && a.region == ctx.region) else {
        return Err((404, format!("Account {sid} not found")));
    };
    // [I] Valid credentials of another account: 403 (documented "valid but no access").
    if !creds_ok(account) {
        return Err((403, "Credentials do not grant access to this account".to_string()));
    }
    if lock(&ctx.sim.inner.knobs).forbidden_sids.iter().any(|s| s == sid) {
        return Err((403, "Access to this resource is forbidden".to_string()));
    }
    Ok(())
}

/// `POST /v2/accounts/{sid}/isv[?count=N]`: mints onboarding links. The vendor curl sends
/// `Content-Type: text/plain` and no body; any body is ignored.
async fn mint(
    State(ctx): State<Ctx>,
    Path(sid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&ctx, "POST", &sid, &headers) {
        return *r;
    }
    if lock(&ctx.sim.inner.knobs).payment_required {
        return fail("POST", 402, "The action is not available on your plan");
    }
    let max = ctx.sim.config().max_batch;
    // [I] Batch minting via `?count=N` (docs: "up to 50 URLs can be fetched at a time").
    let count = match q.get("count") {
        None => None,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                let msg = format!("count must be between 1 and {max}; up to {max} URLs can be fetched at a time");
                return fail("POST", 400, &msg);
            }
        },
    };
    let now = ctx.sim.core().clock.now_ms();
    let urls: Vec<String> = {
        let mut st = lock(&ctx.sim.inner.state);
        (0..count.unwrap_or(1))
            .map(|_| format!("{}{}", super::state::ONBOARDING_URL_BASE, st.mint(&sid, ctx.region, now)))
            .collect()
    };
    for _ in &urls {
        ctx.sim.core().count_created("links");
    }
    let first = urls.first().cloned().unwrap_or_default();
    // [I] Placement of `onboarding_url` inside `data`; `onboarding_urls` only for batches.
    let data = match count {
        Some(_) => json!({ "onboarding_url": first, "onboarding_urls": urls }),
        None => json!({ "onboarding_url": first }),
    };
    Json(success_envelope("POST", data)).into_response()
}

/// `GET /v2/accounts/{sid}/isv?access_token=<token>`: token status.
async fn validate(
    State(ctx): State<Ctx>,
    Path(sid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&ctx, "GET", &sid, &headers) {
        return *r;
    }
    let Some(token) = q.get("access_token").map(|t| t.trim()).filter(|t| !t.is_empty()) else {
        return fail("GET", 400, "access_token is required");
    };
    let now = ctx.sim.core().clock.now_ms();
    let status = lock(&ctx.sim.inner.state).validate(ctx.sim.config(), &sid, ctx.region, token, now);
    match status {
        Some(s) => Json(success_envelope("GET", json!({ "onboarding_token_status": s.as_str() }))).into_response(),
        // [I] Unknown token (or another account's) is 404.
        None => fail("GET", 404, "Token not found"),
    }
}

/// `GET /_sim/exotel/tokens`: every token with status and customers.
async fn control_tokens(State(sim): State<ExotelSim>) -> Json<Value> {
    Json(json!(sim.tokens()))
}

/// `GET /_sim/exotel/tokens/{token}`: one token with status and customers (404 if unknown).
async fn control_token(State(sim): State<ExotelSim>, Path(token): Path<String>) -> Response {
    match sim.token(&token) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": "unknown token" }))).into_response(),
    }
}

/// `POST /_sim/exotel/tokens/{token}/complete`: one customer finishes onboarding with the
/// token. 404 unknown, 409 expired or customer cap reached.
async fn control_complete(State(sim): State<ExotelSim>, Path(token): Path<String>) -> Response {
    match sim.complete_customer(&token) {
        Ok(v) => Json(v).into_response(),
        Err(e @ CompleteError::NotFound) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": e.to_string() }))).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

/// `GET /_sim/exotel/knobs`: `{payment_required, forbidden_sids}`.
async fn control_knobs_get(State(sim): State<ExotelSim>) -> Json<ExotelKnobs> {
    Json(sim.knobs())
}

/// `PUT /_sim/exotel/knobs`: replaces `{payment_required, forbidden_sids}`.
async fn control_knobs_put(State(sim): State<ExotelSim>, Json(k): Json<ExotelKnobs>) -> StatusCode {
    sim.set_knobs(k);
    StatusCode::NO_CONTENT
}
