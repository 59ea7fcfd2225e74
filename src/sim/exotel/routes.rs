//! HTTP surface: `/v2/accounts/{sid}/isv` (mint, validate) per region, plus `/_sim/exotel`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::CompleteError;
use super::{CreateShape, ExotelFaults, ExotelKnobs, ExotelRegion, ExotelSim};
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

/// `POST /v2/accounts/{sid}/isv`: mints ONE onboarding link (docs/providers.md §2.2). The vendor
/// curl sends `Content-Type: text/plain`, no body and no query string [C]; public clients send
/// `application/json` with `{}` [C2]. No page documents a request parameter (no `count`): any
/// query parameter, or a body other than empty / `{}`, is a 400 in the Exotel envelope.
async fn mint(
    State(ctx): State<Ctx>,
    Path(sid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&ctx, "POST", &sid, &headers) {
        return *r;
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let names: Vec<&str> = q.split('&').map(|p| p.split('=').next().unwrap_or("")).collect();
        let msg = format!("unknown request parameter(s): {}; this API takes none", names.join(", "));
        return fail("POST", 400, &msg);
    }
    let trimmed = body.trim_ascii();
    if !trimmed.is_empty() && trimmed != b"{}" {
        return fail("POST", 400, "the request body must be empty");
    }
    let knobs = lock(&ctx.sim.inner.knobs).clone();
    if knobs.payment_required {
        return fail("POST", 402, "The action is not available on your plan");
    }
    let now = ctx.sim.core().clock.now_ms();
    let url = {
        let mut st = lock(&ctx.sim.inner.state);
        format!("{}{}", super::state::ONBOARDING_URL_BASE, st.mint(&sid, ctx.region, now))
    };
    ctx.sim.core().count_created("links");
    Json(mint_answer(knobs.create_shape, &url)).into_response()
}

/// The mint answer in one of the shapes the vendor pages show (docs/providers.md §2.2).
fn mint_answer(shape: CreateShape, url: &str) -> Value {
    let with_isv = |isv: Value| {
        json!({
            "request_id": request_id(), "method": "POST", "http_code": 200,
            "response": { "whatsapp": { "isv": isv } }
        })
    };
    match shape {
        CreateShape::DataOnboardingUrl => success_envelope("POST", json!({ "onboarding_url": url })),
        CreateShape::DataUrl => success_envelope("POST", json!({ "url": url })),
        CreateShape::DataUrlList => success_envelope("POST", json!({ "Url": [url] })),
        CreateShape::IsvUrl => with_isv(json!({ "code": 200, "error_data": null, "status": "success", "Url": url })),
        CreateShape::BareOverview => json!({
            "request_id": request_id(),
            "response": { "whatsapp": { "isv": { "code": 200, "status": "success",
                "data": { "onboarding_url": url } } } }
        }),
        // The create page's published sample: the validate body (no link).
        CreateShape::ValidateCopy => with_isv(json!({
            "code": 200, "error_data": null, "status": "success",
            "data": { "onboarding_token_status": "VALID" }
        })),
    }
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
    // `access_token` is the only documented parameter [C] (docs/providers.md §2.3).
    let mut unknown: Vec<&str> = q.keys().map(String::as_str).filter(|k| *k != "access_token").collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return fail("GET", 400, &format!("unknown request parameter(s): {}", unknown.join(", ")));
    }
    let Some(token) = q.get("access_token").map(|t| t.trim()).filter(|t| !t.is_empty()) else {
        return fail("GET", 400, "access_token is required");
    };
    // [I] A token not shaped like the UUIDs Exotel hands out (hex digits and `-`, docs/providers.md
    // §2.3 "UUID token") is a malformed request, the documented 400, not an unknown one.
    if !token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return fail("GET", 400, "access_token is not a token");
    }
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

/// Query of `POST /_sim/exotel/tokens/{token}/complete`.
#[derive(Debug, Deserialize)]
struct CompleteQuery {
    /// How many customers finish (default 1).
    times: Option<usize>,
}

/// `POST /_sim/exotel/tokens/{token}/complete[?times=n]`: `n` customers (default 1) finish
/// onboarding with the token, all or none. 400 for `times=0`, 404 unknown, 409 expired or
/// customer cap (5) passed.
async fn control_complete(
    State(sim): State<ExotelSim>,
    Path(token): Path<String>,
    Query(q): Query<CompleteQuery>,
) -> Response {
    let times = q.times.unwrap_or(1);
    if times == 0 {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "times must be at least 1" }))).into_response();
    }
    match sim.complete_customers(&token, times) {
        Ok(v) => Json(v).into_response(),
        Err(e @ CompleteError::NotFound) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": e.to_string() }))).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

/// `GET /_sim/exotel/knobs`: `{payment_required, forbidden_sids, create_shape, used_after}`.
async fn control_knobs_get(State(sim): State<ExotelSim>) -> Json<ExotelKnobs> {
    Json(sim.knobs())
}

/// `PUT /_sim/exotel/knobs`: replaces `{payment_required, forbidden_sids, create_shape,
/// used_after}`.
async fn control_knobs_put(State(sim): State<ExotelSim>, Json(k): Json<ExotelKnobs>) -> StatusCode {
    sim.set_knobs(k);
    StatusCode::NO_CONTENT
}
