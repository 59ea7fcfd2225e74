//! HTTP surface under `/api` (one handler per path that checks the verb itself, because a
//! wrong verb is a `FAIL` reason, not a 405) plus `/_sim/digital99`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};

use super::state::{NewAccount, reason};
use super::{CreatePath, Digital99Faults, Digital99Sim, FinishError};
use crate::sim::common::{self, FaultLayerState, lock};

// Inferred paths [I] (docs/providers.md §4.2): no vendor page shows these URLs. They mirror the
// adapter's constants (`providers::digital99::inferred`) by value, not by import, so the
// two are written from the docs separately; change both the day 99digital confirms them.
/// [I] Create the onboarding account (stronger candidate: sibling `facebook/createOnboarding`).
const CREATE_ONBOARDING_PATH: &str = "/api/whatsapp/createOnboarding";
/// [I] The older guess for the same call.
const CREATE_ACCOUNT_PATH: &str = "/api/whatsapp/createAccount";
/// [I] Verify the registered number's code.
const VERIFY_NUMBER_PATH: &str = "/api/whatsapp/verifyNumber";

pub(super) fn router(sim: Digital99Sim) -> axum::Router {
    let core = sim.core().clone();
    let fault_state = FaultLayerState { core: core.clone(), bodies: Arc::new(Digital99Faults) };
    let api = axum::Router::new()
        .route("/api/settings/accessToken", any(access_token))
        .route("/api/settings/setWebhook", any(set_webhook))
        .route("/api/settings/getWebhook", any(get_webhook))
        .route("/api/settings/setBusiness", any(set_business))
        .route("/api/whatsapp/registerNumber", any(register_number))
        .route(VERIFY_NUMBER_PATH, any(verify_number))
        .route("/api/whatsapp/getRegisteredNumbers", any(get_registered_numbers))
        .route(CREATE_ONBOARDING_PATH, any(create_onboarding))
        .route(CREATE_ACCOUNT_PATH, any(create_account_path))
        .route("/api/whatsapp/getAccounts", any(get_accounts))
        .route("/api/whatsapp/deleteAccount", any(delete_account))
        .layer(axum::middleware::from_fn_with_state(fault_state, common::fault_middleware));
    let control = axum::Router::new()
        .route("/_sim/digital99/codes/{whatsapp}", get(control_code))
        .route("/_sim/digital99/accounts", get(control_accounts))
        .route("/_sim/digital99/accounts/{whatsapp}/finish", post(control_finish));
    api.merge(control).with_state(sim).merge(common::control_router(core))
}

fn fail(reason: u32) -> Json<Value> {
    Json(json!({ "status": "FAIL", "reason": reason }))
}

fn ok(extra: Value) -> Json<Value> {
    let mut body = json!({ "status": "OK", "reason": reason::OK });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    Json(body)
}

/// Verb check, settle, Bearer auth. `Ok(client_id)` or the FAIL body to send.
/// [I] The verb is checked before the token.
fn guard(sim: &Digital99Sim, method: &Method, expected: Method, headers: &HeaderMap) -> Result<String, Json<Value>> {
    if *method != expected {
        let r = if expected == Method::PATCH { reason::USE_PATCH } else { reason::WRONG_VERB };
        return Err(fail(r));
    }
    sim.settle();
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string())
        .ok_or_else(|| fail(reason::TOKEN))?;
    let now = sim.core().clock.now_ms();
    lock(&sim.inner.state).client_for(&token, now).ok_or_else(|| fail(reason::TOKEN))
}

fn json_object(body: &Bytes) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A string field: `Ok(None)` when missing or null, `Err` when not a string.
fn opt_str(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// International digits without `+` [C]; [I] length 7..=15 (E.164).
fn whatsapp_field(obj: &Map<String, Value>) -> Option<String> {
    let w = opt_str(obj, "whatsapp").ok().flatten()?;
    let valid = (7..=15).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(w)
}

/// `POST /api/settings/accessToken` `{"client_id","client_secret"}` -> 1 h Bearer token.
async fn access_token(State(sim): State<Digital99Sim>, method: Method, body: Bytes) -> Json<Value> {
    if method != Method::POST {
        return fail(reason::WRONG_VERB);
    }
    sim.settle();
    let Some(obj) = json_object(&body) else {
        return fail(reason::WRONG_CREDENTIALS);
    };
    let (Ok(Some(id)), Ok(Some(secret))) = (opt_str(&obj, "client_id"), opt_str(&obj, "client_secret")) else {
        return fail(reason::WRONG_CREDENTIALS);
    };
    let now = sim.core().clock.now_ms();
    let res = lock(&sim.inner.state).login(sim.config(), &id, &secret, now);
    match res {
        Ok((token, exp)) => ok(json!({
            "access_token": token,
            "expiration_time": exp.to_string(),
            "token_type": "Bearer",
        })),
        Err(r) => fail(r),
    }
}

/// `POST /api/settings/setWebhook` `{"url"}`: http(s), at most 512 chars, else reason 13.
async fn set_webhook(State(sim): State<Digital99Sim>, method: Method, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let client = match guard(&sim, &method, Method::POST, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let url = json_object(&body).and_then(|o| opt_str(&o, "url").ok().flatten());
    let valid = url.as_deref().filter(|u| {
        u.chars().count() <= 512
            && url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some())
    });
    let Some(url) = valid else {
        return fail(reason::BAD_URL);
    };
    lock(&sim.inner.state).set_webhook(&client, url);
    ok(json!({ "url": url }))
}

/// `GET /api/settings/getWebhook`. [I] `url` is `""` when none is set.
async fn get_webhook(State(sim): State<Digital99Sim>, method: Method, headers: HeaderMap) -> Json<Value> {
    let client = match guard(&sim, &method, Method::GET, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let url = lock(&sim.inner.state).webhook_url(&client).unwrap_or_default();
    ok(json!({ "url": url }))
}

/// `PATCH /api/settings/setBusiness`: any of the documented page fields, echoed back.
/// [I] Unknown fields are ignored; a non-string value fails like an invalid one.
async fn set_business(State(sim): State<Digital99Sim>, method: Method, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let client = match guard(&sim, &method, Method::PATCH, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(obj) = json_object(&body) else {
        return fail(reason::BAD_INPUT);
    };
    let rules: [(&str, usize, u32); 5] = [
        ("onboarding_logo", 512, reason::BAD_LOGO),
        ("onboarding_message", 200, reason::BAD_MESSAGE),
        ("onboarding_button", 50, reason::BAD_BUTTON),
        ("onboarding_success", 200, reason::BAD_SUCCESS_FAILED),
        ("onboarding_failed", 200, reason::BAD_SUCCESS_FAILED),
    ];
    let mut echo = Map::new();
    for (name, max, r) in rules {
        let value = match opt_str(&obj, name) {
            Ok(None) => continue,
            Ok(Some(v)) => v,
            Err(()) => return fail(r),
        };
        let too_long = value.chars().count() > max;
        // Logo must be an https URL (image size is not checked).
        let bad_logo = name == "onboarding_logo" && !url::Url::parse(&value).is_ok_and(|u| u.scheme() == "https");
        if too_long || bad_logo {
            return fail(r);
        }
        echo.insert(name.to_string(), Value::String(value));
    }
    lock(&sim.inner.state).set_business(&client, &echo);
    ok(Value::Object(echo))
}

/// `POST /api/whatsapp/registerNumber` `{"whatsapp","method":1|2}`: "sends" a code.
async fn register_number(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let client = match guard(&sim, &method, Method::POST, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(obj) = json_object(&body) else {
        return fail(reason::BAD_INPUT);
    };
    let Some(whatsapp) = whatsapp_field(&obj) else {
        return fail(reason::BAD_INPUT);
    };
    // [I] `method` accepted as 1/2 or "1"/"2"; anything else is reason 4.
    let m = match obj.get("method") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    if !matches!(m, Some(1 | 2)) {
        return fail(reason::BAD_INPUT);
    }
    let now = sim.core().clock.now_ms();
    let res = lock(&sim.inner.state).register(sim.config(), &client, &whatsapp, now);
    match res {
        // [I] response fields beyond the envelope.
        Ok(_) => ok(json!({ "whatsapp": whatsapp })),
        Err(r) => fail(r),
    }
}

/// `POST /api/whatsapp/verifyNumber` `{"whatsapp","code"}` [I endpoint].
async fn verify_number(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let client = match guard(&sim, &method, Method::POST, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(obj) = json_object(&body) else {
        return fail(reason::BAD_INPUT);
    };
    let Some(whatsapp) = whatsapp_field(&obj) else {
        return fail(reason::BAD_INPUT);
    };
    let code = match obj.get("code") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return fail(reason::WRONG_CODE),
    };
    let res = lock(&sim.inner.state).verify(&client, &whatsapp, &code);
    match res {
        Ok(()) => ok(json!({ "whatsapp": whatsapp })),
        Err(r) => fail(r),
    }
}

/// `GET /api/whatsapp/getRegisteredNumbers`.
async fn get_registered_numbers(State(sim): State<Digital99Sim>, method: Method, headers: HeaderMap) -> Json<Value> {
    let client = match guard(&sim, &method, Method::GET, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let list = lock(&sim.inner.state).registered_numbers(sim.config(), &client);
    ok(json!({ "list": list }))
}

/// A path this server does not serve: 404 with a non-JSON body.
fn not_served() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

/// [`CREATE_ONBOARDING_PATH`], when `create_path` serves it.
async fn create_onboarding(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if sim.config().create_path != CreatePath::CreateOnboarding {
        return not_served();
    }
    create_account(State(sim), method, headers, body).await.into_response()
}

/// [`CREATE_ACCOUNT_PATH`], when `create_path` serves it.
async fn create_account_path(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if sim.config().create_path != CreatePath::CreateAccount {
        return not_served();
    }
    create_account(State(sim), method, headers, body).await.into_response()
}

/// Create the onboarding account [I endpoint and fields, from the getAccounts schema].
async fn create_account(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let client = match guard(&sim, &method, Method::POST, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(obj) = json_object(&body) else {
        return fail(reason::BAD_INPUT);
    };
    let Some(whatsapp) = whatsapp_field(&obj) else {
        return fail(reason::BAD_INPUT);
    };
    let text = |name: &str| opt_str(&obj, name).map(Option::unwrap_or_default);
    let fields = (|| -> Result<NewAccount, ()> {
        let coexistence = match obj.get("coexistence") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(c @ (0 | 1)) => c as u8,
                _ => return Err(()),
            },
        };
        let acc = NewAccount {
            whatsapp: whatsapp.clone(),
            business_name: text("business_name")?,
            business_email: text("business_email")?,
            business_id: text("business_id")?,
            business_address: text("business_address")?,
            display_name: text("display_name")?,
            reference: text("reference")?,
            coexistence,
        };
        // [I] business_name and display_name are mandatory.
        if acc.business_name.trim().is_empty() || acc.display_name.trim().is_empty() {
            return Err(());
        }
        Ok(acc)
    })();
    let Ok(fields) = fields else {
        return fail(reason::BAD_INPUT);
    };
    let now = sim.core().clock.now_ms();
    let res = lock(&sim.inner.state).create_account(sim.config(), &client, fields, now);
    match res {
        Ok((link, landing)) => {
            sim.core().count_created("accounts");
            // [I] response shape; `whatsapp` echoes the real number requested.
            ok(json!({ "whatsapp": whatsapp, "onboarding_link": link, "landing_page": landing }))
        }
        Err(r) => {
            if r == reason::ACCOUNT_EXISTS {
                sim.core().count_duplicate_create();
            }
            fail(r)
        }
    }
}

/// `GET /api/whatsapp/getAccounts` (seed 003).
async fn get_accounts(State(sim): State<Digital99Sim>, method: Method, headers: HeaderMap) -> Json<Value> {
    let client = match guard(&sim, &method, Method::GET, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let list = lock(&sim.inner.state).accounts_list(&client);
    ok(json!({ "list": list }))
}

/// `DELETE /api/whatsapp/deleteAccount` `{"whatsapp"}`: reasons 4, 25, 26.
async fn delete_account(
    State(sim): State<Digital99Sim>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let client = match guard(&sim, &method, Method::DELETE, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(whatsapp) = json_object(&body).and_then(|o| whatsapp_field(&o)) else {
        return fail(reason::BAD_INPUT);
    };
    let res = lock(&sim.inner.state).delete_account(&client, &whatsapp);
    match res {
        // Documented order: status, whatsapp, reason.
        Ok(()) => Json(json!({ "status": "OK", "whatsapp": whatsapp, "reason": reason::OK })),
        Err(r) => fail(r),
    }
}

/// `GET /_sim/digital99/codes/{whatsapp}`: the code last "sent" to the number
/// (`{whatsapp, code, code_requests, verified}`), 404 if never registered.
async fn control_code(State(sim): State<Digital99Sim>, Path(whatsapp): Path<String>) -> Response {
    sim.settle();
    match lock(&sim.inner.state).code_view(&whatsapp) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": "number not registered" }))).into_response(),
    }
}

/// `GET /_sim/digital99/accounts`: every onboarding account of every partner.
async fn control_accounts(State(sim): State<Digital99Sim>) -> Json<Value> {
    Json(json!(sim.accounts()))
}

/// `POST /_sim/digital99/accounts/{whatsapp}/finish`: the business owner finishes now
/// (real or temporary number); 404 unknown, 409 already finished.
async fn control_finish(State(sim): State<Digital99Sim>, Path(whatsapp): Path<String>) -> Response {
    match sim.finish(&whatsapp) {
        Ok(v) => Json(v).into_response(),
        Err(e @ FinishError::NotFound) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": e.to_string() }))).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}
