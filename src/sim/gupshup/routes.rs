//! HTTP handlers of the Gupshup simulator: wire format of docs/providers.md §1.3 and the
//! `/_sim/gupshup/...` control endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use serde_json::{Value, json};

use super::GupshupSim;
use super::state::{
    App, AppListShape, AppToken, PartnerSession, STORAGE_REGIONS, State as SimState, Subscription, new_app_token,
    parse_modes, pipeline_at, pipeline_json, valid_url,
};
use crate::sim::common::{self, FaultBody, FaultLayerState};

const AUTH_FAILED: &str = "Authentication Failed";
const TOO_MANY: &str = "Too Many Requests";
const REVIEW: &str = "Please review the request parameters and retry";
const INTERNAL: &str =
    "Internal server error. Please try again later. If the issue persists, contact Gupshup Dev Support.";

/// Renders injected faults as Gupshup error bodies.
struct GupshupFaultBody;

fn body_of(message: &str) -> (String, &'static str) {
    (json!({"status": "error", "message": message}).to_string(), "application/json")
}

impl FaultBody for GupshupFaultBody {
    fn error_body(&self, status: u16) -> (String, &'static str) {
        body_of(match status {
            401 => AUTH_FAILED,
            // [I] generic messages for injected 4xx.
            403 => "Unauthorized Access",
            400..=499 => REVIEW,
            _ => INTERNAL,
        })
    }
    fn rate_limited_body(&self) -> (String, &'static str) {
        body_of(TOO_MANY)
    }
    fn ok_error_body(&self) -> (String, &'static str) {
        body_of(REVIEW)
    }
}

/// Builds the full router (provider routes behind the fault middleware, plus control).
pub(super) fn router(sim: GupshupSim) -> Router {
    let faults = FaultLayerState { core: sim.core().clone(), bodies: Arc::new(GupshupFaultBody) };
    let api = Router::new()
        .route("/partner/account/login", post(login))
        .route("/partner/tpp/app", post(link_app))
        .route("/partner/app/{app_id}/token", get(app_token))
        .route("/partner/app/{app_id}/token/", get(app_token))
        .route("/partner/app/{app_id}/pipeline", get(pipeline))
        .route("/partner/app/{app_id}/callbackUrl", put(set_callback_url))
        // issue 17 points 9-13
        .route("/partner/app/{app_id}/callback", put(set_callback))
        .route("/partner/app/list", get(app_list))
        .route("/partner/account/api/partnerApps", get(partner_apps))
        .route(
            "/partner/app/{app_id}/subscription",
            post(create_subscription).get(list_subscriptions).delete(delete_all_subscriptions),
        )
        .route(
            "/partner/app/{app_id}/subscription/{subscription_id}",
            get(get_subscription).put(update_subscription).delete(delete_subscription),
        )
        .route_layer(from_fn_with_state(faults, common::fault_middleware));
    let control = Router::new()
        .route("/_sim/gupshup/apps", get(control_apps))
        .route("/_sim/gupshup/apps/{app_id}/events", post(control_event))
        .route("/_sim/gupshup/apps/{app_id}/start", post(control_start))
        .route("/_sim/gupshup/apps/{app_id}/rotate-token", post(control_rotate_token))
        .route("/_sim/gupshup/knobs", get(control_get_knobs).put(control_put_knobs));
    api.merge(control).with_state(sim.clone()).merge(common::control_router(sim.core().clone()))
}

// ---------- helpers ----------

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

fn success(v: Value) -> Response {
    (StatusCode::OK, Json(v)).into_response()
}

/// Parses a form body; unparsable bodies (e.g. JSON) read as empty.
fn form(body: &Bytes) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).map(|v| v.into_iter().collect()).unwrap_or_default()
}

/// A non-empty trimmed form field.
fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn parse_bool(s: Option<&str>) -> Option<bool> {
    match s?.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Who is calling.
enum Caller {
    Partner(u64),
    App(String),
}

/// Resolves the raw token in `Authorization` or `token` (no `Bearer` prefix is stripped:
/// Gupshup documents the raw token, so a `Bearer` adapter bug shows up as a 401).
fn caller(st: &SimState, headers: &HeaderMap, now_ms: i64) -> Option<Caller> {
    ["authorization", "token"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(str::trim))
        .find_map(|t| {
            if let Some(s) = st.sessions.get(t) {
                return (now_ms < s.exp_ms).then_some(Caller::Partner(s.partner_id));
            }
            st.app_tokens.get(t).map(|a| Caller::App(a.clone()))
        })
}

/// The answer to a call without a valid partner token: 401 `Authentication Failed`, or with
/// the `partner_token_invalid_403` knob 403 `Invalid Access Token` for a token that was issued
/// and has expired (issue 17 point 12).
fn partner_rejection(st: &SimState, headers: &HeaderMap, now_ms: i64) -> Response {
    let expired = ["authorization", "token"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(str::trim))
        .any(|t| st.sessions.get(t).is_some_and(|s| now_ms >= s.exp_ms));
    if expired && st.knobs.partner_token_invalid_403 {
        error(StatusCode::FORBIDDEN, "Invalid Access Token")
    } else {
        error(StatusCode::UNAUTHORIZED, AUTH_FAILED)
    }
}

enum Denied {
    Unauthenticated,
    NotOwner,
    UnknownApp,
}

/// Checks that the caller may act on `app_id` (partner owning it, or its own app token).
fn authorize_app(st: &SimState, headers: &HeaderMap, app_id: &str, now: i64, app_token_ok: bool) -> Result<(), Denied> {
    let app = st.apps.get(app_id);
    match caller(st, headers, now) {
        None => Err(Denied::Unauthenticated),
        Some(Caller::Partner(pid)) => match app {
            None => Err(Denied::UnknownApp),
            Some(a) if a.partner_id != pid => Err(Denied::NotOwner),
            Some(_) => Ok(()),
        },
        Some(Caller::App(_)) if !app_token_ok => Err(Denied::Unauthenticated),
        Some(Caller::App(own)) => match app {
            None => Err(Denied::UnknownApp),
            Some(_) if own != app_id => Err(Denied::NotOwner),
            Some(_) => Ok(()),
        },
    }
}

/// Error mapping for app-token endpoints (subscriptions, callbackUrl).
fn app_denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated => error(StatusCode::UNAUTHORIZED, AUTH_FAILED),
        // [I] documented subscription error strings.
        Denied::NotOwner => error(StatusCode::FORBIDDEN, "Unauthorized Access"),
        Denied::UnknownApp => error(StatusCode::BAD_REQUEST, "Invalid app id provided"),
    }
}

/// A rejection (status, message) rendered later; keeps `Result`s small.
type Reject = (StatusCode, &'static str);

fn reject((status, message): Reject) -> Response {
    error(status, message)
}

fn too_many() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, TOO_MANY)
}

fn random_jwt(email: &str, partner_id: u64, now_ms: i64, exp_ms: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = json!({
        "sub": email,
        "partnerId": partner_id,
        "iat": now_ms / 1000,
        "exp": exp_ms / 1000,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut sig = [0u8; 32];
    rand::rng().fill(&mut sig);
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(sig))
}

// ---------- provider endpoints ----------

/// `POST /partner/account/login` (1.3.1).
async fn login(State(sim): State<GupshupSim>, body: Bytes) -> Response {
    let f = form(&body);
    let email = field(&f, "email").unwrap_or_default().to_string();
    let secret = field(&f, "secret").or_else(|| field(&f, "password")).unwrap_or_default();
    let lim = sim.config().limits.login;
    if sim.core().check_limit("login", &email, lim.max, lim.window()).is_err() {
        return too_many();
    }
    let Some(p) = sim.config().partners.iter().find(|p| p.email == email && p.secret == secret && !email.is_empty())
    else {
        // [I] undocumented login error body.
        return error(StatusCode::UNAUTHORIZED, AUTH_FAILED);
    };
    let now = sim.core().clock.now_ms();
    // issue 17 point 15: an expired client secret no longer logs in (docs/providers.md §1.2).
    if sim.state().knobs.secret_expires_at_ms.is_some_and(|at| now >= at) {
        return error(StatusCode::UNAUTHORIZED, AUTH_FAILED);
    }
    let exp_ms = now + sim.config().partner_token_ttl_secs as i64 * 1000;
    let token = random_jwt(&p.email, p.partner_id, now, exp_ms);
    {
        let mut st = sim.state();
        st.sessions.retain(|_, s| s.exp_ms > now);
        st.sessions.insert(token.clone(), PartnerSession { partner_id: p.partner_id, exp_ms });
    }
    sim.core().count_created("partner_tokens");
    success(json!({
        "token": token, "id": p.partner_id, "name": p.name, "terms_read": true, "admin": true,
        "email": p.email, "activationRead": false, "billingType": "PREPAID", "contactName": p.name,
        "phoneNumber": "", "enableCustomer": false, "enableWallet": true, "enableInrWallet": false,
        "enableLoaderWallet": false, "enableAppOnboarding": true,
        // [I] true for a Tech-Provider partner.
        "isTpp": true,
        "onboardEnabled": false,
    }))
}

/// `POST /partner/tpp/app` (1.3.2).
async fn link_app(State(sim): State<GupshupSim>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    let Some(Caller::Partner(pid)) = caller(&st, &headers, now) else {
        return partner_rejection(&st, &headers, now);
    };
    let lim = sim.config().limits.link;
    if sim.core().check_limit("link_app", &pid.to_string(), lim.max, lim.window()).is_err() {
        return too_many();
    }
    let name = f.get("name").map(String::as_str).unwrap_or_default();
    let len = name.chars().count();
    if !(6..=150).contains(&len) {
        return error(StatusCode::BAD_REQUEST, "App name should be between 6 to 150 characters in length");
    }
    // "Special Characters are not allowed" (docs/providers.md §1.3.2 [C]); [I] special = anything
    // but ASCII letters and digits (a space too), as a public client test expects
    // `^[A-Za-z0-9]{6,150}$` [C2] (§1.7 #14).
    if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return error(StatusCode::BAD_REQUEST, "Invalid characters used in app name");
    }
    let (Some(waba_id), Some(phone)) = (field(&f, "wabaId"), field(&f, "phone")) else {
        // [I] generic message for missing wabaId / phone.
        return error(StatusCode::BAD_REQUEST, REVIEW);
    };
    // [I] phone must be E.164 digits without '+'.
    if !phone.chars().all(|c| c.is_ascii_digit()) {
        return error(StatusCode::BAD_REQUEST, REVIEW);
    }
    let region = field(&f, "storageRegion");
    if region.is_some_and(|r| !STORAGE_REGIONS.contains(&r)) {
        return error(StatusCode::BAD_REQUEST, "Invalid Region Passed");
    }
    // [I] bot names are compared case-insensitively. With `bot_exists_on_relink` (issue 17
    // point 9) the name is checked first, as the TPP page documents only this 409: a retried
    // link (same name and phone) then learns nothing but "Bot Already Exists".
    let name_taken = st.apps.values().any(|a| a.name.eq_ignore_ascii_case(name));
    if name_taken && st.knobs.bot_exists_on_relink {
        drop(st);
        sim.core().count_duplicate_create();
        return error(StatusCode::CONFLICT, "Bot Already Exists");
    }
    // [I] the phone conflict is checked before the name, so a retried link (same name and
    // phone) gets the recoverable 409 carrying the appId.
    if let Some(existing) = st.apps.values().find(|a| a.phone == phone) {
        let id = existing.id.clone();
        drop(st);
        sim.core().count_duplicate_create();
        return (
            StatusCode::CONFLICT,
            Json(json!({"status": "error", "message": format!("App {id} already exists with phone {phone}"), "appId": id})),
        )
            .into_response();
    }
    if name_taken {
        return error(StatusCode::CONFLICT, "Bot Already Exists");
    }
    let cb = field(&f, "callbackUrl");
    // [I] an invalid callbackUrl, or the fail_callback_next knob (only consumed when a
    // callbackUrl is given), yields the documented partial success.
    let callback_failed = match cb {
        None => false,
        Some(u) if !valid_url(u) => true,
        Some(_) if st.knobs.fail_callback_next > 0 => {
            st.knobs.fail_callback_next -= 1;
            true
        }
        Some(_) => false,
    };
    let mut fails = sim.config().fail_phone_prefixes.iter().any(|p| !p.is_empty() && phone.starts_with(p.as_str()));
    if !fails && st.knobs.fail_next_pipelines > 0 {
        st.knobs.fail_next_pipelines -= 1;
        fails = true;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let done_before_finalize = st.knobs.done_before_finalize;
    let linked_seq = st.apps_linked;
    st.apps_linked += 1;
    st.apps.insert(
        id.clone(),
        App {
            id: id.clone(),
            name: name.to_string(),
            waba_id: waba_id.to_string(),
            phone: phone.to_string(),
            partner_id: pid,
            callback_url: if callback_failed { None } else { cb.map(str::to_string) },
            storage_region: region.map(str::to_string),
            created_ms: now,
            linked_seq,
            started_ms: sim.config().sandbox.then_some(now),
            fails,
            token: None,
            live_notified: false,
            done_before_finalize,
        },
    );
    drop(st);
    sim.core().count_created("apps");
    if callback_failed {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "error", "appId": id, "message": "App created, but failed to set callback on the application"})),
        )
            .into_response();
    }
    success(json!({"status": "success", "appId": id}))
}

/// `GET /partner/app/{appId}/token` (1.3.3): get-or-create the non-expiring app token.
async fn app_token(State(sim): State<GupshupSim>, Path(app_id): Path<String>, headers: HeaderMap) -> Response {
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    let Some(Caller::Partner(pid)) = caller(&st, &headers, now) else {
        return partner_rejection(&st, &headers, now);
    };
    let as_string = st.knobs.token_as_string;
    let Some(app) = st.apps.get_mut(&app_id) else {
        // [I] message borrowed from the onboarding APIs.
        return error(StatusCode::BAD_REQUEST, "Invalid app id provided");
    };
    if app.partner_id != pid {
        // The app-list page's text for "app does not belong to the Partner" [C] (issue 17
        // point 12: `Invalid Access Token` is a rejected token, which a re-login cures).
        return error(StatusCode::FORBIDDEN, "Unauthorized Access");
    }
    let mut created = false;
    let tok = app
        .token
        .get_or_insert_with(|| {
            created = true;
            AppToken {
                token: new_app_token(),
                authoriser_id: uuid::Uuid::new_v4().to_string(),
                requestor_id: pid.to_string(),
                created_ms: now,
            }
        })
        .clone();
    st.app_tokens.insert(tok.token.clone(), app_id);
    drop(st);
    if created {
        sim.core().count_created("app_tokens");
    }
    if as_string {
        let name =
            sim.config().partners.iter().find(|p| p.partner_id == pid).map(|p| p.name.clone()).unwrap_or_default();
        return success(json!({"name": name, "terms_read": true, "token": tok.token}));
    }
    success(json!({
        "status": "success",
        "token": {
            "token": tok.token, "authoriserId": tok.authoriser_id, "requestorId": tok.requestor_id,
            "createdOn": tok.created_ms, "modifiedOn": tok.created_ms, "expiresOn": 0, "active": true,
        }
    }))
}

/// `GET /partner/app/{appId}/pipeline` (1.3.4), computed lazily from the sim clock.
async fn pipeline(State(sim): State<GupshupSim>, Path(app_id): Path<String>, headers: HeaderMap) -> Response {
    let now = sim.core().clock.now_ms();
    let (whatsapp, live_pending) = {
        let st = sim.state();
        // [I] partner token accepted too. A missing, stale or foreign token and an unknown
        // app are all the documented 400 ("Validate request parameters or authorization
        // token", 1.3.4; issue 17 point 12).
        if authorize_app(&st, &headers, &app_id, now, true).is_err() {
            return error(StatusCode::BAD_REQUEST, REVIEW);
        }
        let lim = sim.config().limits.pipeline;
        if sim.core().check_limit("pipeline", &app_id, lim.max, lim.window()).is_err() {
            return too_many();
        }
        let Some(app) = st.apps.get(&app_id) else {
            return error(StatusCode::BAD_REQUEST, REVIEW);
        };
        let view = pipeline_at(app, now, sim.config().stage_ms);
        (pipeline_json(app, &view, &st.knobs), view.live && !app.live_notified)
    };
    if live_pending {
        sim.tick();
    }
    success(json!({"status": "success", "whatsapp": whatsapp}))
}

/// `PUT /partner/app/{appId}/callbackUrl` (1.3.6, legacy): sets or repairs the callback.
async fn set_callback_url(
    State(sim): State<GupshupSim>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if st.knobs.callback_url_gone {
        return not_found();
    }
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    let Some(url) = field(&f, "callbackUrl") else {
        return error(StatusCode::BAD_REQUEST, REVIEW);
    };
    if !valid_url(url) {
        // [I] same message as subscriptions.
        return error(StatusCode::BAD_REQUEST, "Invalid URL Passed");
    }
    if let Some(a) = st.apps.get_mut(&app_id) {
        a.callback_url = Some(url.to_string());
    }
    // [I] undocumented success body.
    success(json!({"status": "success"}))
}

/// [I] Gupshup's answer to a path it does not serve is undocumented.
fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not Found")
}

/// Modes `PUT …/callback` accepts (docs/providers.md 1.3.6).
const CALLBACK_MODES: [&str; 8] = ["NONE", "READ", "DELIVERED", "SENT", "DELETED", "OTHERS", "TEMPLATE", "ACCOUNT"];

/// `PUT /partner/app/{appId}/callback` (1.3.6): partner token; form `url` (required, valid),
/// `modes` (CSV of [`CALLBACK_MODES`]), `directForwarding`, `notifyWithPhone` (`true` /
/// `false`); any other field, or a value outside these, is a 400.
async fn set_callback(
    State(sim): State<GupshupSim>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if st.knobs.callback_gone {
        return not_found();
    }
    match caller(&st, &headers, now) {
        Some(Caller::Partner(pid)) => match st.apps.get(&app_id) {
            None => return error(StatusCode::BAD_REQUEST, "Invalid app id provided"),
            Some(a) if a.partner_id != pid => return error(StatusCode::FORBIDDEN, "Unauthorized Access"),
            Some(_) => {}
        },
        // The page documents the partner token only.
        Some(Caller::App(_)) => return error(StatusCode::UNAUTHORIZED, AUTH_FAILED),
        None => return partner_rejection(&st, &headers, now),
    }
    const FIELDS: [&str; 4] = ["url", "modes", "directForwarding", "notifyWithPhone"];
    if f.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        return error(StatusCode::BAD_REQUEST, REVIEW);
    }
    let Some(url) = field(&f, "url").filter(|u| valid_url(u)) else {
        return error(StatusCode::BAD_REQUEST, "Invalid URL Passed");
    };
    let modes: Vec<&str> = field(&f, "modes").map(|m| m.split(',').map(str::trim).collect()).unwrap_or_default();
    if modes.iter().any(|m| !CALLBACK_MODES.contains(m)) {
        return error(StatusCode::BAD_REQUEST, "Invalid modes passed");
    }
    for b in ["directForwarding", "notifyWithPhone"] {
        if f.contains_key(b) && parse_bool(f.get(b).map(String::as_str)).is_none() {
            return error(StatusCode::BAD_REQUEST, REVIEW);
        }
    }
    let url = url.to_string();
    if let Some(a) = st.apps.get_mut(&app_id) {
        a.callback_url = Some(url.clone());
    }
    // [I] the sample is truncated after `url`.
    success(json!({"status": "success", "callback": {"url": url, "modes": modes}}))
}

/// One app as an item of `GET /partner/app/list` (1.3.6).
fn list_item(app: &App, now: i64, stage_ms: u64) -> Value {
    let view = pipeline_at(app, now, stage_ms);
    json!({
        "id": app.id, "name": app.name,
        // [I] the app type of the details sample.
        "type": "apicallbackpost",
        "live": view.live, "phone": app.phone, "stopped": false, "storageRegion": app.storage_region,
        "uiFormStage": view.ui_form_stage, "pipelineStage": view.pipeline_stage,
        "creationStage": view.creation_stage, "whatsappVerificationStatus": view.verification,
        "version": 2, "products": ["ANALYTICS", "CUSTOMER_SUPPORT"],
        "createdOn": app.created_ms, "modifiedOn": view.modified_ms,
    })
}

/// `GET /partner/app/list?name=&phone=&pageNo=&pageSize=` (1.3.6): the partner's own apps,
/// `name` / `phone` contains-search AND-ed, pages from 1 (default size 10). Any other query
/// parameter, or a page number / size that is not a positive integer, is a 400.
async fn app_list(State(sim): State<GupshupSim>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let now = sim.core().clock.now_ms();
    let st = sim.state();
    if st.knobs.applist_gone {
        return not_found();
    }
    let pid = match caller(&st, &headers, now) {
        Some(Caller::Partner(pid)) => pid,
        Some(Caller::App(_)) => return error(StatusCode::UNAUTHORIZED, "Unauthorized Access"),
        None => return partner_rejection(&st, &headers, now),
    };
    let q: Vec<(String, String)> = match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
        Ok(q) => q,
        Err(_) => return error(StatusCode::BAD_REQUEST, REVIEW),
    };
    let mut filter = (None::<String>, None::<String>);
    let (mut page_no, mut page_size) = (1usize, 10usize);
    for (k, v) in &q {
        let positive = || v.parse::<usize>().ok().filter(|n| *n > 0);
        match k.as_str() {
            "name" => filter.0 = Some(v.to_ascii_lowercase()),
            "phone" => filter.1 = Some(v.clone()),
            "pageNo" => match positive() {
                Some(n) => page_no = n,
                None => return error(StatusCode::BAD_REQUEST, REVIEW),
            },
            "pageSize" => match positive() {
                Some(n) => page_size = n,
                None => return error(StatusCode::BAD_REQUEST, REVIEW),
            },
            _ => return error(StatusCode::BAD_REQUEST, REVIEW),
        }
    }
    let mut apps: Vec<&App> = st
        .apps
        .values()
        .filter(|a| a.partner_id == pid)
        .filter(|a| filter.0.as_ref().is_none_or(|n| a.name.to_ascii_lowercase().contains(n.as_str())))
        .filter(|a| filter.1.as_ref().is_none_or(|p| a.phone.contains(p.as_str())))
        .collect();
    // [I] the list's order is undocumented: oldest first, same-millisecond links in link
    // order (docs/providers.md, GET /partner/app/list).
    apps.sort_by_key(|a| (a.created_ms, a.linked_seq));
    let stage_ms = sim.config().stage_ms;
    let items: Vec<Value> = apps
        .iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|a| list_item(a, now, stage_ms))
        .collect();
    match st.knobs.applist_shape {
        AppListShape::Array => success(Value::Array(items)),
        AppListShape::Data => success(json!({"status": "success", "data": items})),
        AppListShape::PartnerAppsList => success(json!({"status": "success", "partnerAppsList": items})),
    }
}

/// `GET /partner/account/api/partnerApps` (1.3.6, [C2]): all of the partner's apps.
async fn partner_apps(State(sim): State<GupshupSim>, headers: HeaderMap) -> Response {
    let now = sim.core().clock.now_ms();
    let st = sim.state();
    let pid = match caller(&st, &headers, now) {
        Some(Caller::Partner(pid)) => pid,
        Some(Caller::App(_)) => return error(StatusCode::UNAUTHORIZED, AUTH_FAILED),
        None => return partner_rejection(&st, &headers, now),
    };
    let stage_ms = sim.config().stage_ms;
    let mut apps: Vec<&App> = st.apps.values().filter(|a| a.partner_id == pid).collect();
    apps.sort_by_key(|a| (a.created_ms, a.linked_seq));
    let list: Vec<Value> = apps
        .iter()
        .map(|a| {
            let view = pipeline_at(a, now, stage_ms);
            json!({
                "id": a.id, "name": a.name, "customerId": "NA", "live": view.live, "partnerId": pid,
                "createdOn": a.created_ms, "modifiedOn": view.modified_ms, "partnerCreated": true,
                "cxpEnabled": false, "partnerUsage": true, "stopped": false, "healthy": true, "cap": 0,
                "phone": a.phone,
            })
        })
        .collect();
    success(json!({"status": "success", "partnerAppsList": list}))
}

/// Validated subscription fields (all optional, for create and update).
struct SubInput {
    modes: Option<Vec<&'static str>>,
    tag: Option<String>,
    url: Option<String>,
    version: Option<u8>,
    show_on_ui: Option<bool>,
    meta: Option<String>,
    active: Option<bool>,
}

/// Validates subscription form fields against the effective version.
/// `base` holds the current subscription on update (its version / modes apply when omitted).
fn sub_input(
    f: &HashMap<String, String>,
    base: Option<&Subscription>,
    versions_current_only: bool,
) -> Result<SubInput, Reject> {
    // Versions `0,1,2,3` (TPP guide, older pages) or, in the strict profile, `2, 3` (current
    // v3 page), docs/providers.md §1.3.5 [C].
    let lowest = if versions_current_only { 2 } else { 0 };
    let version = match field(f, "version") {
        Some(v) => match v.parse::<u8>() {
            Ok(n) if (lowest..=3).contains(&n) => Some(n),
            // [I] message for a bad version.
            _ => return Err((StatusCode::BAD_REQUEST, "Invalid Version Passed")),
        },
        None if base.is_none() => {
            return Err((StatusCode::BAD_REQUEST, "Invalid Version Passed"));
        }
        None => None,
    };
    let eff_version = version.or(base.map(|b| b.version)).unwrap_or(0);
    let invalid_modes = || (StatusCode::BAD_REQUEST, "Invalid modes passed");
    let modes = match field(f, "modes") {
        Some(csv) => Some(parse_modes(csv, eff_version).ok_or_else(invalid_modes)?),
        None if base.is_none() => return Err(invalid_modes()),
        None => {
            // Re-check kept modes against a changed version.
            let csv = base.map(|b| b.modes.join(",")).unwrap_or_default();
            parse_modes(&csv, eff_version).ok_or_else(invalid_modes)?;
            None
        }
    };
    let tag = field(f, "tag").map(str::to_string);
    if tag.is_none() && base.is_none() {
        // [I] generic message for a missing tag.
        return Err((StatusCode::BAD_REQUEST, REVIEW));
    }
    let url = field(f, "url").map(str::to_string);
    match (&url, base) {
        (Some(u), _) if !valid_url(u) => {
            return Err((StatusCode::BAD_REQUEST, "Invalid URL Passed"));
        }
        (None, None) => return Err((StatusCode::BAD_REQUEST, "Invalid URL Passed")),
        _ => {}
    }
    let meta = field(f, "meta").map(str::to_string);
    // [I] meta must be a JSON object when given.
    if meta.as_deref().is_some_and(|m| !serde_json::from_str::<Value>(m).is_ok_and(|v| v.is_object())) {
        return Err((StatusCode::BAD_REQUEST, REVIEW));
    }
    // [I] doCheck is accepted; the simulator never probes the URL.
    Ok(SubInput {
        modes,
        tag,
        url,
        version,
        show_on_ui: parse_bool(field(f, "showOnUI")),
        meta,
        active: parse_bool(field(f, "active")),
    })
}

fn duplicate_tag(st: &SimState, app_id: &str, tag: &str, except: Option<u64>) -> bool {
    st.subscriptions.values().any(|s| s.app_id == app_id && s.tag == tag && Some(s.id) != except)
}

/// `POST /partner/app/{appId}/subscription` (1.3.5).
async fn create_subscription(
    State(sim): State<GupshupSim>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    let input = match sub_input(&f, None, st.knobs.versions_current_only) {
        Ok(i) => i,
        Err(r) => return reject(r),
    };
    let tag = input.tag.unwrap_or_default();
    if duplicate_tag(&st, &app_id, &tag, None) {
        // [I] message for a duplicate tag.
        return error(StatusCode::BAD_REQUEST, "Duplicate tag");
    }
    st.next_subscription_id += 1;
    let sub = Subscription {
        id: st.next_subscription_id,
        app_id: app_id.clone(),
        active: input.active.unwrap_or(true),
        modes: input.modes.unwrap_or_default(),
        tag,
        url: input.url.unwrap_or_default(),
        version: input.version.unwrap_or(0),
        show_on_ui: input.show_on_ui.unwrap_or(false),
        meta: input.meta,
        created_ms: now,
        modified_ms: now,
    };
    let out = sub.create_json();
    st.subscriptions.insert(sub.id, sub);
    drop(st);
    sim.core().count_created("subscriptions");
    success(json!({"status": "success", "subscription": out}))
}

/// `GET /partner/app/{appId}/subscription` (1.3.5).
async fn list_subscriptions(State(sim): State<GupshupSim>, Path(app_id): Path<String>, headers: HeaderMap) -> Response {
    let now = sim.core().clock.now_ms();
    let st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    let subs: Vec<Value> =
        st.subscriptions.values().filter(|s| s.app_id == app_id).map(Subscription::full_json).collect();
    // [I] 200 (RAKH says 204 with a body, which cannot be).
    success(json!({"status": "success", "subscriptions": subs}))
}

/// Looks up a subscription by path id, checking ownership.
fn owned_subscription(st: &SimState, app_id: &str, raw_id: &str) -> Result<u64, Reject> {
    let sub = raw_id.parse::<u64>().ok().and_then(|id| st.subscriptions.get(&id));
    match sub {
        None => Err((StatusCode::BAD_REQUEST, "Subscription Does Not Exist")),
        Some(s) if s.app_id != app_id => Err((StatusCode::FORBIDDEN, "Not Subscription Owner")),
        Some(s) => Ok(s.id),
    }
}

/// `GET /partner/app/{appId}/subscription/{subscriptionId}` (1.3.5).
async fn get_subscription(
    State(sim): State<GupshupSim>,
    Path((app_id, sub_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let now = sim.core().clock.now_ms();
    let st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    match owned_subscription(&st, &app_id, &sub_id) {
        Ok(id) => {
            let v = st.subscriptions.get(&id).map(Subscription::full_json).unwrap_or_default();
            success(json!({"status": "success", "subscription": v}))
        }
        Err(r) => reject(r),
    }
}

/// `PUT /partner/app/{appId}/subscription/{subscriptionId}` (1.3.5).
async fn update_subscription(
    State(sim): State<GupshupSim>,
    Path((app_id, sub_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    let id = match owned_subscription(&st, &app_id, &sub_id) {
        Ok(id) => id,
        Err(r) => return reject(r),
    };
    let input = match sub_input(&f, st.subscriptions.get(&id), st.knobs.versions_current_only) {
        Ok(i) => i,
        Err(r) => return reject(r),
    };
    if input.tag.as_deref().is_some_and(|t| duplicate_tag(&st, &app_id, t, Some(id))) {
        return error(StatusCode::BAD_REQUEST, "Duplicate tag");
    }
    let Some(s) = st.subscriptions.get_mut(&id) else {
        return error(StatusCode::BAD_REQUEST, "Subscription Does Not Exist");
    };
    if let Some(m) = input.modes {
        s.modes = m;
    }
    if let Some(t) = input.tag {
        s.tag = t;
    }
    if let Some(u) = input.url {
        s.url = u;
    }
    if let Some(v) = input.version {
        s.version = v;
    }
    if let Some(b) = input.show_on_ui {
        s.show_on_ui = b;
    }
    if let Some(m) = input.meta {
        s.meta = Some(m);
    }
    if let Some(a) = input.active {
        s.active = a;
    }
    s.modified_ms = now;
    // [I] update answers the full object.
    success(json!({"status": "success", "subscription": s.full_json()}))
}

/// `DELETE /partner/app/{appId}/subscription/{subscriptionId}` (1.3.5): 204.
async fn delete_subscription(
    State(sim): State<GupshupSim>,
    Path((app_id, sub_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    match owned_subscription(&st, &app_id, &sub_id) {
        Ok(id) => {
            st.subscriptions.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => reject(r),
    }
}

/// `DELETE /partner/app/{appId}/subscription` (1.3.5): 204, limited to 5 / min.
async fn delete_all_subscriptions(
    State(sim): State<GupshupSim>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let now = sim.core().clock.now_ms();
    let mut st = sim.state();
    if let Err(d) = authorize_app(&st, &headers, &app_id, now, true) {
        return app_denied(d);
    }
    let lim = sim.config().limits.delete_all_subscriptions;
    if sim.core().check_limit("delete_all_subscriptions", &app_id, lim.max, lim.window()).is_err() {
        return too_many();
    }
    st.subscriptions.retain(|_, s| s.app_id != app_id);
    StatusCode::NO_CONTENT.into_response()
}

// ---------- control endpoints ----------

/// `GET /_sim/gupshup/apps`: every app with its current stage, liveness and callback URL.
async fn control_apps(State(sim): State<GupshupSim>) -> Response {
    Json(sim.apps()).into_response()
}

/// `POST /_sim/gupshup/apps/{appId}/events`: delivers an account event (e.g.
/// `{"type":"account-event","payload":{"type":"tier-event","payload":{…}}}`) or any full body,
/// with the v2 envelope fields filled in, to the app's callback URL and ACCOUNT/ALL
/// subscriptions. Answers `{"delivered":N,"event":{…}}`.
async fn control_event(State(sim): State<GupshupSim>, Path(app_id): Path<String>, Json(body): Json<Value>) -> Response {
    if !body.is_object() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "body must be a JSON object"}))).into_response();
    }
    match sim.send_event(&app_id, body) {
        Some((event, n)) => Json(json!({"delivered": n, "event": event})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "unknown app"}))).into_response(),
    }
}

/// `POST /_sim/gupshup/apps/{appId}/start`: starts the pipeline of an app (non-sandbox mode).
async fn control_start(State(sim): State<GupshupSim>, Path(app_id): Path<String>) -> Response {
    if sim.start_pipeline(&app_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"error": "unknown app"}))).into_response()
    }
}

/// `POST /_sim/gupshup/apps/{appId}/rotate-token`: replaces the app's token (the old one is
/// refused from now on); answers `{"token":…}`, 404 for an unknown app or one without a token.
async fn control_rotate_token(State(sim): State<GupshupSim>, Path(app_id): Path<String>) -> Response {
    match sim.rotate_app_token(&app_id) {
        Some(token) => Json(json!({"token": token})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "unknown app or no token yet"}))).into_response(),
    }
}

/// `GET /_sim/gupshup/knobs`: the simulator-specific knobs.
async fn control_get_knobs(State(sim): State<GupshupSim>) -> Response {
    Json(sim.knobs()).into_response()
}

/// `PUT /_sim/gupshup/knobs`: partial update of any field of [`super::GupshupKnobs`];
/// answers the resulting knobs.
async fn control_put_knobs(State(sim): State<GupshupSim>, Json(p): Json<super::KnobsPatch>) -> Response {
    Json(sim.update_knobs(p)).into_response()
}
