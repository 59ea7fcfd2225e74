//! Partner ("manager") API routes, docs/providers.md §3.2 / §3.3.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use serde_json::{Value, json};

use super::state::{BillingEntry, Channel, DAY_MS, NewChannel};
use super::webhooks::{self, validate_webhooks};
use super::{WhapiSim, bearer, err, parse_body};

/// Manager routes (state: the sim).
pub(crate) fn routes() -> axum::Router<WhapiSim> {
    axum::Router::new()
        .route("/projects", get(list_projects))
        // [C2] three list variants seen in public clients; all served.
        .route("/channels", put(create_channel).get(list_channels))
        .route("/channels/list", get(list_channels))
        .route("/channels/list/{project_id}", get(list_project_channels))
        .route("/channels/{id}", get(get_channel).delete(delete_channel))
        .route("/channels/{id}/mode", patch(change_mode))
        .route("/channels/{id}/extend", post(extend))
        .route("/partners", get(partner_info))
        .route("/partners/{name}/settings", get(get_partner_settings).patch(patch_partner_settings))
}

fn auth(sim: &WhapiSim, headers: &HeaderMap) -> Result<(), Response> {
    match bearer(headers) {
        Some(t) if t == sim.config().partner_token => Ok(()),
        _ => Err(err(StatusCode::UNAUTHORIZED, "Unauthorized", "invalid or missing partner token")),
    }
}

fn not_found() -> Response {
    err(StatusCode::NOT_FOUND, "Not Found", "channel not found")
}

fn bad(details: &str) -> Response {
    err(StatusCode::BAD_REQUEST, "Bad Request", details)
}

async fn list_projects(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    // [I] `{"projects":[{id,name}]}` (array vs object unconfirmed).
    Json(json!({"projects": sim.config().projects})).into_response()
}

async fn create_channel(State(sim): State<WhapiSim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cfg = sim.config().clone();
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty()) else {
        return bad("name is required");
    };
    let Some(project) = body.get("projectId").and_then(Value::as_str) else {
        return bad("projectId is required");
    };
    if !cfg.projects.iter().any(|p| p.id == project) {
        return bad("projectId does not exist");
    }
    if body.get("phone").is_some_and(|p| !p.is_string()) {
        return bad("phone must be a string");
    }
    // [C] more than 20 creations within 30 minutes -> 429 until the window resets.
    let window = Duration::from_secs(cfg.create_window_secs);
    if let Err(wait) = sim.core().check_limit("channel_create", &cfg.partner_name, cfg.create_limit, window) {
        let details = format!(
            "more than {} channels created within {} s; retry in {} s",
            cfg.create_limit,
            cfg.create_window_secs,
            wait.as_secs().max(1)
        );
        return err(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", &details);
    }
    let api_url = sim.api_url();
    let ch = sim.tx(|st, now, _| {
        let new = NewChannel {
            id: st.new_channel_id(),
            token: st.new_token(),
            name: name.to_string(),
            project_id: project.to_string(),
            owner_id: st.owner_id.clone(),
        };
        let c = Channel::new(new, now, &cfg);
        let v = c.to_json(&api_url);
        st.channels.insert(c.id.clone(), c);
        v
    });
    sim.core().count_created("channels");
    Json(ch).into_response()
}

/// [C2] Default and largest page of the channel list: Whapi pages every list with `count`
/// (1..=500, default 100) and `offset` (>= 0) (docs/providers.md §3.2, WH-OAS).
pub(crate) const LIST_DEFAULT_COUNT: usize = 100;
/// Largest `count`.
pub(crate) const LIST_MAX_COUNT: usize = 500;

/// `count` / `offset` of a list request, or the 400 to answer.
fn page_of(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let num = |k: &str| q.get(k).map(|v| v.trim().parse::<usize>());
    let count = match num("count") {
        None => LIST_DEFAULT_COUNT,
        Some(Ok(n)) if (1..=LIST_MAX_COUNT).contains(&n) => n,
        Some(_) => return Err(bad(&format!("count must be a number from 1 to {LIST_MAX_COUNT}"))),
    };
    let offset = match num("offset") {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(bad("offset must be a number >= 0")),
    };
    Ok((count, offset))
}

fn list(sim: &WhapiSim, project: Option<&str>, q: &HashMap<String, String>) -> Response {
    let (count, offset) = match page_of(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let api_url = sim.api_url();
    let channels: Vec<Value> = sim.tx(|st, _, _| {
        st.channels
            .values()
            .filter(|c| project.is_none_or(|p| c.project_id == p))
            .skip(offset)
            .take(count)
            .map(|c| c.to_json(&api_url))
            .collect()
    });
    Json(json!({"channels": channels})).into_response()
}

async fn list_channels(
    State(sim): State<WhapiSim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    list(&sim, None, &q)
}

async fn list_project_channels(
    State(sim): State<WhapiSim>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    if !sim.config().projects.iter().any(|p| p.id == project) {
        return err(StatusCode::NOT_FOUND, "Not Found", "project not found");
    }
    list(&sim, Some(&project), &q)
}

async fn get_channel(State(sim): State<WhapiSim>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let api_url = sim.api_url();
    match sim.tx(|st, _, _| st.channels.get(&id).map(|c| c.to_json(&api_url))) {
        Some(v) => Json(v).into_response(),
        None => not_found(),
    }
}

async fn change_mode(State(sim): State<WhapiSim>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Request values the vendor shows: `live` [C], `trial` [C2]; `dev` (Sandbox) only behind
    // `accept_dev_patch` (docs/providers.md §3.3). `sandbox` is nobody's value.
    let accept_dev = sim.config().accept_dev_patch;
    let Some(mode) = body
        .get("mode")
        .and_then(Value::as_str)
        .filter(|m| ["live", "trial"].contains(m) || (accept_dev && *m == "dev"))
    else {
        return bad("mode must be one of live, trial");
    };
    let api_url = sim.api_url();
    let restart = sim.config().restart_ms as i64;
    let res = sim.tx(|st, now, _| {
        let c = st.channels.get_mut(&id)?;
        c.mode = mode.to_string();
        // [C] the channel restarts after a mode change; [I] this clears an ERROR state.
        c.restart_until = Some(now + restart);
        c.error = false;
        Some(c.to_json(&api_url))
    });
    match res {
        Some(v) => Json(v).into_response(),
        None => not_found(),
    }
}

async fn extend(State(sim): State<WhapiSim>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(days) = body.get("days").and_then(Value::as_i64).filter(|d| *d >= 1) else {
        return bad("days must be an integer >= 1");
    };
    let Some(comment) = body.get("comment").and_then(Value::as_str).filter(|c| !c.trim().is_empty()) else {
        return bad("comment is required");
    };
    let api_url = sim.api_url();
    let partner = sim.config().partner_name.clone();
    let res: Result<Value, Response> = sim.tx(|st, now, out| {
        if !st.channels.contains_key(&id) {
            return Err(not_found());
        }
        if st.balance < days {
            // [I] insufficient balance -> 402.
            return Err(err(
                StatusCode::PAYMENT_REQUIRED,
                "Payment Required",
                &format!("balance is {} days, {} requested", st.balance, days),
            ));
        }
        st.balance -= days;
        st.allocated += days;
        let balance = st.balance;
        let alert = st.days_limit.is_some_and(|l| balance <= l);
        if alert {
            // [I] `days` event payload (not documented).
            let body = json!({"event": {"type": "days", "event": "post"}, "balance": balance, "partner": partner});
            out.extend(webhooks::deliveries(&st.partner_webhooks, "days", "post", &body));
        }
        let c = st.channels.get_mut(&id).ok_or_else(not_found)?;
        c.active_till = c.active_till.max(now) + days * DAY_MS;
        c.stopped = false;
        c.extended_days += days;
        c.billing.push(BillingEntry { days, comment: comment.to_string(), at: now });
        Ok(c.to_json(&api_url))
    });
    match res {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn delete_channel(State(sim): State<WhapiSim>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let refunded = sim.tx(|st, now, _| {
        let c = st.channels.remove(&id)?;
        // [I] refund = min(whole unused days, days that came from the balance).
        let unused = ((c.active_till - now) / DAY_MS).max(0);
        let refund = unused.min(c.extended_days).max(0);
        st.balance += refund;
        st.allocated -= c.extended_days;
        Some(refund)
    });
    match refunded {
        // [I] response body (not documented).
        Some(n) => Json(json!({"deleted": true, "refunded_days": n})).into_response(),
        None => not_found(),
    }
}

async fn partner_info(State(sim): State<WhapiSim>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return r;
    }
    let cfg = sim.config();
    let (balance, allocated) = sim.tx(|st, _, _| (st.balance, st.allocated));
    // [I] liveDays = days allocated to channels from the balance; trialDays = agreement.
    Json(json!({"name": cfg.partner_name, "balance": balance, "liveDays": allocated, "trialDays": cfg.trial_days}))
        .into_response()
}

fn partner_check(sim: &WhapiSim, headers: &HeaderMap, name: &str) -> Result<(), Response> {
    auth(sim, headers)?;
    if name != sim.config().partner_name {
        return Err(err(StatusCode::NOT_FOUND, "Not Found", "partner not found"));
    }
    Ok(())
}

async fn get_partner_settings(State(sim): State<WhapiSim>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = partner_check(&sim, &headers, &name) {
        return r;
    }
    let v = sim.tx(|st, _, _| json!({"webhooks": st.partner_webhooks, "days_limit": st.days_limit}));
    Json(v).into_response()
}

async fn patch_partner_settings(
    State(sim): State<WhapiSim>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = partner_check(&sim, &headers, &name) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut hooks = None;
    let mut limit = None;
    for (k, v) in body.as_object().into_iter().flatten() {
        match k.as_str() {
            // [I] partner webhooks accept only the `days` event type.
            "webhooks" => match validate_webhooks(v, &["days"]) {
                Ok(h) => hooks = Some(h),
                Err(e) => return bad(&e),
            },
            "days_limit" => match v {
                Value::Null => limit = Some(None),
                _ => match v.as_i64().filter(|n| *n >= 0) {
                    Some(n) => limit = Some(Some(n)),
                    None => return bad("days_limit must be a non-negative integer"),
                },
            },
            other => return bad(&format!("{other} is not an allowed setting")),
        }
    }
    let v = sim.tx(|st, _, _| {
        if let Some(h) = hooks {
            st.partner_webhooks = h;
        }
        if let Some(l) = limit {
            st.days_limit = l;
        }
        json!({"webhooks": st.partner_webhooks, "days_limit": st.days_limit})
    });
    Json(v).into_response()
}
