//! Per-channel ("gate") API routes, docs/providers.md §3.4 / §3.5.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::state::{AUTH, Channel, ERROR, QR, random_string};
use super::webhooks::{self, Delivery};
use super::{WhapiSim, WhapiSimConfig, bearer, err, parse_body, qr};

/// Gate routes (state: the sim).
pub(crate) fn routes() -> axum::Router<WhapiSim> {
    axum::Router::new()
        .route("/health", get(health))
        .route("/users/login", get(login_json))
        .route("/users/login/image", get(login_image))
        .route("/users/login/rowdata", get(login_rowdata))
        .route("/users/login/{phone}", get(login_code))
        .route("/users/logout", post(logout))
        .route("/settings", get(get_settings).patch(patch_settings).delete(reset_settings))
        .route("/limits", get(limits))
}

type Q = Query<HashMap<String, String>>;

/// Authenticates the channel token and runs `f` on that channel. Expired channels answer
/// 402 [I]; during a restart every call but `/health` answers 503 [I].
fn with_channel<R>(
    sim: &WhapiSim,
    headers: &HeaderMap,
    during_restart: bool,
    f: impl FnOnce(&mut Channel, i64, &WhapiSimConfig, &mut Vec<Delivery>) -> R,
) -> Result<R, Response> {
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let cfg = sim.config().clone();
    sim.tx(|st, now, out| {
        let c = st.by_token(&token).ok_or_else(unauthorized)?;
        c.api_requests += 1;
        if c.stopped {
            return Err(err(StatusCode::PAYMENT_REQUIRED, "Payment Required", "channel stopped: active period ended"));
        }
        if !during_restart && c.restart_until.is_some_and(|r| now < r) {
            return Err(err(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "channel is restarting"));
        }
        Ok(f(c, now, &cfg, out))
    })
}

fn unauthorized() -> Response {
    err(StatusCode::UNAUTHORIZED, "Unauthorized", "invalid or missing channel token")
}

/// `wakeup` query flag, default true.
fn wakeup(q: &HashMap<String, String>) -> Result<bool, Response> {
    match q.get("wakeup").map(String::as_str) {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(_) => Err(err(StatusCode::BAD_REQUEST, "Bad Request", "wakeup must be true or false")),
    }
}

fn wake(c: &mut Channel, now: i64, wakeup: bool) {
    if wakeup && c.woken_at.is_none() {
        c.woken_at = Some(now);
    }
}

async fn health(State(sim): State<WhapiSim>, headers: HeaderMap, Query(q): Q) -> Response {
    let wakeup = match wakeup(&q) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match with_channel(&sim, &headers, true, |c, now, cfg, _| {
        wake(c, now, wakeup);
        c.health_json(now, cfg)
    }) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

enum Login {
    Qr(String, i64),
    Waiting,
    Authed,
    Failed,
}

/// Wakes the channel and returns its QR; in sandbox, a first fetch schedules the scan.
fn fetch_qr(sim: &WhapiSim, headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Login, Response> {
    let wakeup = wakeup(q)?;
    with_channel(sim, headers, false, |c, now, cfg, _| {
        wake(c, now, wakeup);
        match c.code(now, cfg) {
            AUTH => Login::Authed,
            ERROR => Login::Failed,
            QR => {
                c.schedule_link(now, &cfg.sandbox_phone, false, cfg);
                c.current_qr(now, cfg).map(|(r, e)| Login::Qr(r, e)).unwrap_or(Login::Waiting)
            }
            _ => Login::Waiting,
        }
    })
}

/// The `expire` value: whole seconds, or half a second less with `qr_expire_float`.
fn expire_of(sim: &WhapiSim, secs: i64) -> Value {
    if sim.config().qr_expire_float { json!(secs as f64 - 0.5) } else { json!(secs) }
}

fn not_qr(l: Login) -> Response {
    match l {
        // [C2] 409 when already authenticated.
        Login::Authed => err(StatusCode::CONFLICT, "Conflict", "channel already authenticated"),
        // [I] ERROR state: 503 until the channel restarts (mode change) or logs out.
        Login::Failed => err(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "channel is in ERROR state"),
        // [C2] `{"status":"WAITING"}` while the channel launches; retry shortly.
        _ => Json(json!({"status": "WAITING"})).into_response(),
    }
}

async fn login_json(State(sim): State<WhapiSim>, headers: HeaderMap, Query(q): Q) -> Response {
    match fetch_qr(&sim, &headers, &q) {
        Ok(Login::Qr(rowdata, expires_in)) => match qr::png(&rowdata) {
            Ok(png) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                // [C2] The OpenAPI `QR` object (docs/providers.md §3.4): `status` (required),
                // `base64` (clients strip a data-URL prefix), `rowdata`, `expire` (a number).
                Json(json!({
                    "status": "OK",
                    "base64": format!("data:image/png;base64,{b64}"),
                    "rowdata": rowdata,
                    "expire": expire_of(&sim, expires_in),
                }))
                .into_response()
            }
            Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &e),
        },
        Ok(other) => not_qr(other),
        Err(r) => r,
    }
}

async fn login_image(State(sim): State<WhapiSim>, headers: HeaderMap, Query(q): Q) -> Response {
    match fetch_qr(&sim, &headers, &q) {
        Ok(Login::Qr(rowdata, _)) => match qr::png(&rowdata) {
            Ok(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
            Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &e),
        },
        Ok(other) => not_qr(other),
        Err(r) => r,
    }
}

async fn login_rowdata(State(sim): State<WhapiSim>, headers: HeaderMap, Query(q): Q) -> Response {
    match fetch_qr(&sim, &headers, &q) {
        // [C2] The same `QR` object (docs/providers.md §3.4): `status` required.
        Ok(Login::Qr(rowdata, expires_in)) => {
            Json(json!({"status": "OK", "rowdata": rowdata, "expire": expire_of(&sim, expires_in)})).into_response()
        }
        Ok(other) => not_qr(other),
        Err(r) => r,
    }
}

async fn login_code(
    State(sim): State<WhapiSim>,
    headers: HeaderMap,
    Path(phone): Path<String>,
    Query(q): Q,
) -> Response {
    // [C] digits only, no `+` or spaces; [I] 7..=15 digits (E.164 length).
    if !(7..=15).contains(&phone.len()) || !phone.bytes().all(|b| b.is_ascii_digit()) {
        return err(StatusCode::BAD_REQUEST, "Bad Request", "PhoneNumber must be 7-15 digits, no + or spaces");
    }
    let wakeup = match wakeup(&q) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let res = with_channel(&sim, &headers, false, |c, now, cfg, _| {
        wake(c, now, wakeup);
        match c.code(now, cfg) {
            AUTH => Login::Authed,
            ERROR => Login::Failed,
            QR => {
                c.schedule_link(now, &phone, true, cfg);
                Login::Qr(String::new(), cfg.pairing_ttl_secs as i64)
            }
            _ => Login::Waiting,
        }
    });
    match res {
        Ok(Login::Qr(_, _ttl)) => {
            let raw = random_string(8, b"ABCDEFGHJKLMNPQRSTVWXYZ0123456789");
            // [C2] The OpenAPI `AuthCode` object is `{code}` only, no lifetime (docs/providers.md §3.4);
            // the sim still expires it after `pairing_ttl_secs`.
            Json(json!({"code": format!("{}-{}", &raw[..4], &raw[4..])})).into_response()
        }
        Ok(other) => not_qr(other),
        Err(r) => r,
    }
}

async fn logout(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    match with_channel(&sim, &headers, false, |c, now, _, out| c.logout(now, out)) {
        // [I] `{"success":true}`.
        Ok(true) => Json(json!({"success": true})).into_response(),
        // [I] logging out an unlinked channel is a 409.
        Ok(false) => err(StatusCode::CONFLICT, "Conflict", "channel is not authenticated"),
        Err(r) => r,
    }
}

async fn get_settings(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    match with_channel(&sim, &headers, false, |c, _, _, _| c.settings.clone()) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn patch_settings(State(sim): State<WhapiSim>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let res = with_channel(&sim, &headers, false, |c, _, _, _| {
        let next = webhooks::patch_settings(&c.settings, &body)?;
        c.settings = next.clone();
        Ok::<Value, String>(next)
    });
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => err(StatusCode::BAD_REQUEST, "Bad Request", &e),
        Err(r) => r,
    }
}

async fn reset_settings(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    match with_channel(&sim, &headers, false, |c, _, _, _| {
        c.settings = webhooks::default_settings();
        c.settings.clone()
    }) {
        // [I] answers the settings after reset.
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn limits(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    let res = with_channel(&sim, &headers, false, |c, _, _, _| {
        let capped = c.mode != "live";
        let lim = |n: u64| if capped { json!(n) } else { Value::Null };
        // [I] shape; [C] trial/sandbox limits 150 messages/day, 5 chats/month, 1000 requests/month.
        json!({
            "messages_day": {"limit": lim(150), "used": 0},
            "chats_month": {"limit": lim(5), "used": 0},
            "api_requests_month": {"limit": lim(1000), "used": c.api_requests},
        })
    });
    match res {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}
