//! In-memory state of the Gupshup simulator and the pure rules over it (pipeline timeline,
//! subscription modes, phone splitting). Handlers in `routes.rs` only glue these to HTTP.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The 15 `storageRegion` codes of docs/providers.md 1.1.
pub(super) const STORAGE_REGIONS: [&str; 15] =
    ["BR", "DE", "CH", "GB", "BH", "ZA", "AE", "US", "CA", "AU", "ID", "IN", "JP", "SG", "KR"];

/// Subscription modes in bitmask order (bit = 1 << index). [I] derived table of 1.3.5.
pub(super) const MODE_BITS: [&str; 14] = [
    "SENT",
    "DELIVERED",
    "READ",
    "DELETED",
    "OTHERS",
    "FAILED",
    "MESSAGE",
    "TEMPLATE",
    "ACCOUNT",
    "BILLING",
    "ENQUEUED",
    "FLOWS_MESSAGE",
    "PAYMENTS",
    "ALL",
];

/// Modes accepted only with `version=3`. [I] per the RAKH copy (1.3.5).
const V3_ONLY_MODES: [&str; 4] = ["FLOWS_MESSAGE", "PAYMENTS", "ALL", "OTHERS"];

/// Simulator-specific knobs (beyond the shared `common::Knobs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GupshupKnobs {
    /// The next N link calls create the app but answer the documented "App created, but failed
    /// to set callback" 400, leaving the app without a callback URL.
    pub fail_callback_next: u32,
    /// The next N linked apps fail their pipeline (3 retries, then `creationStage: ERROR`).
    pub fail_next_pipelines: u32,
    /// `GET …/token` answers the TPP guide's string shape instead of the reference's object.
    pub token_as_string: bool,
    // issue 17 points 14-15
    /// Accept only the versions of the **current** `setsubscription-api-v3` page (`2, 3`;
    /// docs/providers.md §1.3.5 [C]) instead of `0..=3` (TPP guide, older pages): the strict
    /// profile.
    pub versions_current_only: bool,
    /// When the partners' client secret expires (sim ms; `None` = never). Client secrets
    /// now expire (at most 3 months, docs/providers.md §1.2 [C]); a login at or after this time
    /// answers 401 `Authentication Failed` ([I] text, `AUTH_FAILED`).
    pub secret_expires_at_ms: Option<i64>,
    // issue 17 points 9-13
    /// Point 9: a link repeating an existing app's name and phone answers the TPP page's 409
    /// `Bot Already Exists` (no `appId`) instead of the export's phone-409 naming the app.
    pub bot_exists_on_relink: bool,
    /// Point 9: body shape of `GET /partner/app/list`.
    pub applist_shape: AppListShape,
    /// Point 9: `GET /partner/app/list` answers 404 (an account without it), so only the
    /// older `GET /partner/account/api/partnerApps` finds apps.
    pub applist_gone: bool,
    /// Point 10: the pipeline body carries `stageRetries` (the vendor's pipeline examples
    /// never show it, so off by default).
    pub pipeline_stage_retries: bool,
    /// Point 10: a failing pipeline shows `creationStage: ERROR` on each retry (with
    /// `stageRetries` 1..=3) before the final ERROR, the other reading of "retries three times
    /// before failing". Implies `stageRetries` in the body.
    pub error_while_retrying: bool,
    /// Point 11: apps linked from now on report `WHATSAPP_PROVISIONING_DONE` with
    /// `pipeLineStage: GET_CERTIFICATE` for one stage before FINALIZE; the live event goes out
    /// at DONE.
    pub done_before_finalize: bool,
    /// Point 12: an expired partner token answers 403 `Invalid Access Token` (a public
    /// client's report) instead of 401 `Authentication Failed`.
    pub partner_token_invalid_403: bool,
    /// Point 13: `PUT /partner/app/{appId}/callbackUrl` answers 404 (retired).
    pub callback_url_gone: bool,
    /// Point 13: `PUT /partner/app/{appId}/callback` answers 404.
    pub callback_gone: bool,
}

/// Body shapes of `GET /partner/app/list` (issue 17 point 9).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum AppListShape {
    /// The documented sample's array (the doc wraps it in braces with `status`, which is
    /// not valid JSON; the array is the closest valid form).
    #[default]
    #[serde(rename = "array")]
    Array,
    /// `{"status":"success","data":[…]}` (RAKH copy).
    #[serde(rename = "data")]
    Data,
    /// `{"status":"success","partnerAppsList":[…]}` (the older list's key).
    #[serde(rename = "partnerAppsList")]
    PartnerAppsList,
}

/// A partial update of [`GupshupKnobs`] (fields left out keep their value).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KnobsPatch {
    /// See [`GupshupKnobs::fail_callback_next`].
    pub fail_callback_next: Option<u32>,
    /// See [`GupshupKnobs::fail_next_pipelines`].
    pub fail_next_pipelines: Option<u32>,
    /// See [`GupshupKnobs::token_as_string`].
    pub token_as_string: Option<bool>,
    // issue 17 points 9-13
    /// See [`GupshupKnobs::bot_exists_on_relink`].
    pub bot_exists_on_relink: Option<bool>,
    /// See [`GupshupKnobs::applist_shape`].
    pub applist_shape: Option<AppListShape>,
    /// See [`GupshupKnobs::applist_gone`].
    pub applist_gone: Option<bool>,
    /// See [`GupshupKnobs::pipeline_stage_retries`].
    pub pipeline_stage_retries: Option<bool>,
    /// See [`GupshupKnobs::error_while_retrying`].
    pub error_while_retrying: Option<bool>,
    /// See [`GupshupKnobs::done_before_finalize`].
    pub done_before_finalize: Option<bool>,
    /// See [`GupshupKnobs::partner_token_invalid_403`].
    pub partner_token_invalid_403: Option<bool>,
    /// See [`GupshupKnobs::callback_url_gone`].
    pub callback_url_gone: Option<bool>,
    /// See [`GupshupKnobs::callback_gone`].
    pub callback_gone: Option<bool>,
    // issue 17 points 14-15
    /// See [`GupshupKnobs::versions_current_only`].
    pub versions_current_only: Option<bool>,
    /// See [`GupshupKnobs::secret_expires_at_ms`]; `Some(None)` (JSON `null`) clears it.
    #[serde(default, deserialize_with = "nullable")]
    pub secret_expires_at_ms: Option<Option<i64>>,
}

/// A field that may be absent (keep), `null` (clear) or a value (set).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl GupshupKnobs {
    /// Applies a patch.
    pub fn apply(&mut self, p: KnobsPatch) {
        if let Some(v) = p.fail_callback_next {
            self.fail_callback_next = v;
        }
        if let Some(v) = p.fail_next_pipelines {
            self.fail_next_pipelines = v;
        }
        if let Some(v) = p.token_as_string {
            self.token_as_string = v;
        }
        // issue 17 points 9-13
        let flags = [
            (p.bot_exists_on_relink, &mut self.bot_exists_on_relink),
            (p.applist_gone, &mut self.applist_gone),
            (p.pipeline_stage_retries, &mut self.pipeline_stage_retries),
            (p.error_while_retrying, &mut self.error_while_retrying),
            (p.done_before_finalize, &mut self.done_before_finalize),
            (p.partner_token_invalid_403, &mut self.partner_token_invalid_403),
            (p.callback_url_gone, &mut self.callback_url_gone),
            (p.callback_gone, &mut self.callback_gone),
        ];
        for (v, slot) in flags {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if let Some(v) = p.applist_shape {
            self.applist_shape = v;
        }
        // issue 17 points 14-15
        if let Some(v) = p.versions_current_only {
            self.versions_current_only = v;
        }
        if let Some(v) = p.secret_expires_at_ms {
            self.secret_expires_at_ms = v;
        }
    }
}

/// A partner token issued by login.
#[derive(Debug, Clone)]
pub(super) struct PartnerSession {
    /// Partner the token belongs to.
    pub partner_id: u64,
    /// Expiry on the sim clock.
    pub exp_ms: i64,
}

/// The non-expiring app token of one app.
#[derive(Debug, Clone)]
pub(super) struct AppToken {
    /// The secret (`sk_…`).
    pub token: String,
    /// `authoriserId` (a uuid).
    pub authoriser_id: String,
    /// `requestorId` (the partner id).
    pub requestor_id: String,
    /// `createdOn` / `modifiedOn`.
    pub created_ms: i64,
}

/// One linked app.
#[derive(Debug, Clone)]
pub(super) struct App {
    /// `appId` (uuid).
    pub id: String,
    /// App ("bot") name, unique across the sim.
    pub name: String,
    /// Linked WABA.
    pub waba_id: String,
    /// Linked phone (E.164 digits).
    pub phone: String,
    /// Owning partner.
    pub partner_id: u64,
    /// Callback URL for v2 events.
    pub callback_url: Option<String>,
    /// `storageRegion`, when given.
    pub storage_region: Option<String>,
    /// Link time.
    pub created_ms: i64,
    /// Order of linking across the sim: lists sort by link time, and apps linked in the same
    /// millisecond keep the order they were linked in (their uuids would order them randomly).
    pub linked_seq: u64,
    /// When the pipeline started (link time in sandbox; `None` until started otherwise).
    pub started_ms: Option<i64>,
    /// The pipeline of this app fails.
    pub fails: bool,
    /// The app token, once requested.
    pub token: Option<AppToken>,
    /// The live callback has been sent.
    pub live_notified: bool,
    /// Reports DONE before FINALIZE (the `done_before_finalize` knob when it was linked).
    pub done_before_finalize: bool,
}

/// One webhook subscription.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    /// Numeric id (sent as a string).
    pub id: u64,
    /// Owning app.
    pub app_id: String,
    /// `active`: whether Gupshup delivers events to it (a disabled one is kept, not sent to).
    pub active: bool,
    /// Modes in bitmask order.
    pub modes: Vec<&'static str>,
    /// `tag`, unique per app.
    pub tag: String,
    /// Target URL.
    pub url: String,
    /// Payload version 0..=3.
    pub version: u8,
    /// `showOnUI` as the caller last set it (dashboard visibility); stored and echoed only.
    pub show_on_ui: bool,
    /// `meta` as sent (JSON string).
    pub meta: Option<String>,
    /// `createdOn`: when it was created, simulated Unix milliseconds.
    pub created_ms: i64,
    /// `modifiedOn`: its last update (create, edit), simulated Unix milliseconds.
    pub modified_ms: i64,
}

impl Subscription {
    /// The `mode` bitmask.
    pub(super) fn mode(&self) -> u64 {
        mode_mask(&self.modes)
    }

    /// Whether account / onboarding events go to this subscription.
    pub(super) fn wants_account_events(&self) -> bool {
        self.active && self.modes.iter().any(|m| *m == "ACCOUNT" || *m == "ALL")
    }

    /// The create-response object (1.3.5).
    pub(super) fn create_json(&self) -> Value {
        json!({
            "active": self.active,
            "appId": self.app_id,
            "createdOn": self.created_ms,
            "id": self.id.to_string(),
            "mode": self.mode(),
            "modifiedOn": self.modified_ms,
            "showOnUI": self.show_on_ui,
            "tag": self.tag,
            "url": self.url,
            "version": self.version,
        })
    }

    /// The get/list object: the create object plus `modes`, `latencyBucket` and `meta`.
    pub(super) fn full_json(&self) -> Value {
        let mut v = self.create_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("modes".into(), json!(self.modes));
            // [I] only value ever seen.
            o.insert("latencyBucket".into(), json!("lt_1_s"));
            if let Some(m) = &self.meta {
                // [I] echoed as the string that was sent.
                o.insert("meta".into(), json!(m));
            }
        }
        v
    }
}

/// Everything the simulator remembers.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Simulator-specific knobs.
    pub knobs: GupshupKnobs,
    /// Partner token -> session.
    pub sessions: HashMap<String, PartnerSession>,
    /// Apps by id.
    pub apps: BTreeMap<String, App>,
    /// App token -> app id.
    pub app_tokens: HashMap<String, String>,
    /// Subscriptions by id (ids are global).
    pub subscriptions: BTreeMap<u64, Subscription>,
    /// Last subscription id handed out.
    pub next_subscription_id: u64,
    /// Apps linked so far (the next app's `linked_seq`).
    pub apps_linked: u64,
}

/// `mode` bitmask of a list of modes (`NONE` = 0).
fn mode_mask(modes: &[&str]) -> u64 {
    modes.iter().filter_map(|m| MODE_BITS.iter().position(|b| b == m)).fold(0, |acc, i| acc | (1u64 << i))
}

/// Parses the `modes` CSV: trims items, rejects unknown modes and v3-only modes for
/// version < 3, dedupes, and returns them in bitmask order (`NONE` alone when only NONE).
pub(super) fn parse_modes(csv: &str, version: u8) -> Option<Vec<&'static str>> {
    let mut seen: Vec<&'static str> = Vec::new();
    for raw in csv.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        let known = if item == "NONE" { "NONE" } else { *MODE_BITS.iter().find(|m| **m == item)? };
        if version < 3 && V3_ONLY_MODES.contains(&known) {
            return None;
        }
        if !seen.contains(&known) {
            seen.push(known);
        }
    }
    if seen.is_empty() {
        return None;
    }
    let mut ordered: Vec<&'static str> = MODE_BITS.iter().copied().filter(|m| seen.contains(m)).collect();
    if ordered.is_empty() {
        ordered.push("NONE");
    }
    Some(ordered)
}

/// Splits an E.164 number (digits, no `+`) into country code and national number.
/// [I] a small prefix table: 1-digit codes 1 and 7, the common 2-digit codes, else 3 digits.
fn split_phone(phone: &str) -> (String, String) {
    const TWO: [&str; 44] = [
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
        "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
        "86", "90", "91", "92", "93", "94", "95", "98",
    ];
    let n = if phone.starts_with('1') || phone.starts_with('7') {
        1
    } else if phone.get(..2).is_some_and(|p| TWO.contains(&p)) {
        2
    } else {
        3
    };
    let n = n.min(phone.len());
    (phone[..n].to_string(), phone[n..].to_string())
}

/// The pipeline as computed from the app's timeline at one instant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PipelineView {
    /// `creationStage`: `INITIAL`, `DOCKER_PROVISIONING`, `WHATSAPP_PROVISIONING_DONE`, or `ERROR`.
    pub creation_stage: &'static str,
    /// `pipeLineStage` (Gupshup's capital L): `CREATE_DOCKER` → `GET_CERTIFICATE` → `FINALIZE`.
    pub pipeline_stage: &'static str,
    /// `embedStage` of the embedded signup: `EMBED_PENDING`, then `EMBED_STARTED`.
    pub embed_stage: &'static str,
    /// `uiFormStage`: `GET_WHATSAPP_APPROVAL` until verification, then `COMPLETE_VERIFICATION`.
    pub ui_form_stage: &'static str,
    /// `whatsappVerificationStatus`: `PN_DN_APPROVED` → `WABA_APPROVED` → `WHATSAPP_VERIFICATION_DONE`.
    pub verification: &'static str,
    /// `stageRetries`: retries of a failing stage so far (0 on the happy path, at most 3).
    pub stage_retries: u32,
    /// `modifiedOn`: time of the last transition.
    pub modified_ms: i64,
    /// Provisioned and live.
    pub live: bool,
    /// Terminal `ERROR`.
    pub failed: bool,
}

/// Steps of the happy path; each lasts `stage_ms`, the last one is live and stays.
/// (creationStage, pipeLineStage, whatsappVerificationStatus, embedStage, uiFormStage)
const HAPPY: [(&str, &str, &str, &str, &str); 4] = [
    ("INITIAL", "CREATE_DOCKER", "PN_DN_APPROVED", "EMBED_PENDING", "GET_WHATSAPP_APPROVAL"),
    ("DOCKER_PROVISIONING", "CREATE_DOCKER", "WABA_APPROVED", "EMBED_STARTED", "GET_WHATSAPP_APPROVAL"),
    ("DOCKER_PROVISIONING", "GET_CERTIFICATE", "WABA_APPROVED", "EMBED_STARTED", "GET_WHATSAPP_APPROVAL"),
    ("WHATSAPP_PROVISIONING_DONE", "FINALIZE", "WHATSAPP_VERIFICATION_DONE", "EMBED_STARTED", "COMPLETE_VERIFICATION"),
];

/// The extra step of the `done_before_finalize` knob: provisioning done, pipeline not yet
/// at FINALIZE.
const DONE_BEFORE_FINALIZE: (&str, &str, &str, &str, &str) = (
    "WHATSAPP_PROVISIONING_DONE",
    "GET_CERTIFICATE",
    "WHATSAPP_VERIFICATION_DONE",
    "EMBED_STARTED",
    "COMPLETE_VERIFICATION",
);

/// Retries before a failing stage gives up (documented: "retries three times").
const MAX_RETRIES: u32 = 3;

/// Lazily computes the pipeline of `app` at `now_ms` with `stage_ms` per step.
///
/// Happy path: step k = elapsed / stage_ms walks [`HAPPY`]; live from step 3.
/// Failure path: stuck at CREATE_DOCKER, `stageRetries` 1..=3 on steps 1..=3, then from step 4
/// `creationStage: ERROR` (the documented error example's other stages) for good.
pub(super) fn pipeline_at(app: &App, now_ms: i64, stage_ms: u64) -> PipelineView {
    let stage_ms = stage_ms.max(1) as i64;
    let step = match app.started_ms {
        Some(s) if now_ms > s => ((now_ms - s) / stage_ms) as u64,
        _ => 0,
    };
    let at = |k: u64| app.started_ms.map_or(app.created_ms, |s| s + k as i64 * stage_ms).max(app.created_ms);
    if app.fails {
        let retries = step.min(u64::from(MAX_RETRIES)) as u32;
        let failed = step > u64::from(MAX_RETRIES);
        let last_step = step.min(u64::from(MAX_RETRIES) + 1);
        return PipelineView {
            creation_stage: if failed {
                "ERROR"
            } else if step == 0 {
                "INITIAL"
            } else {
                "DOCKER_PROVISIONING"
            },
            pipeline_stage: "CREATE_DOCKER",
            embed_stage: "EMBED_PENDING",
            ui_form_stage: "GET_WHATSAPP_APPROVAL",
            verification: "PN_DN_APPROVED",
            stage_retries: retries,
            modified_ms: at(last_step),
            live: false,
            failed,
        };
    }
    // Issue 17 point 11: one stage at DONE before FINALIZE, live (and the live event) from it.
    let steps: Vec<_> = if app.done_before_finalize {
        let mut v = HAPPY.to_vec();
        v.insert(HAPPY.len() - 1, DONE_BEFORE_FINALIZE);
        v
    } else {
        HAPPY.to_vec()
    };
    let last = steps.len() as u64 - 1;
    let k = step.min(last);
    let (c, p, v, e, u) = steps[k as usize];
    let live_from = if app.done_before_finalize { last - 1 } else { last };
    PipelineView {
        creation_stage: c,
        pipeline_stage: p,
        embed_stage: e,
        ui_form_stage: u,
        verification: v,
        stage_retries: 0,
        modified_ms: at(k),
        live: k >= live_from,
        failed: false,
    }
}

/// The `whatsapp` object of `GET …/pipeline` (1.3.4). `stageRetries` only with the
/// `pipeline_stage_retries` or `error_while_retrying` knob (issue 17 point 10: the vendor's
/// pipeline examples never show it); with `error_while_retrying` a failing app's retries
/// show `creationStage: ERROR` already.
pub(super) fn pipeline_json(app: &App, view: &PipelineView, knobs: &GupshupKnobs) -> Value {
    let (cc, national) = split_phone(&app.phone);
    let creation =
        if knobs.error_while_retrying && app.fails && view.stage_retries > 0 { "ERROR" } else { view.creation_stage };
    let mut v = json!({
        "countryCode": cc,
        "createdOn": app.created_ms,
        "creationStage": creation,
        "dialCode": national,
        "embedStage": view.embed_stage,
        "id": app.id,
        "modifiedOn": view.modified_ms,
        "pipeLineStage": view.pipeline_stage,
        "uiFormStage": view.ui_form_stage,
        "whatsappVerificationStatus": view.verification,
    });
    if (knobs.pipeline_stage_retries || knobs.error_while_retrying)
        && let Some(o) = v.as_object_mut()
    {
        o.insert("stageRetries".into(), json!(view.stage_retries));
    }
    v
}

/// Fills the v2 envelope around an event body: `app`, `appId`, `phone`, `timestamp` and
/// `version` are added when missing; everything given is kept as is.
pub(super) fn envelope(app: &App, mut body: Value, now_ms: i64) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.entry("app").or_insert_with(|| json!(app.name));
        o.entry("appId").or_insert_with(|| json!(app.id));
        o.entry("phone").or_insert_with(|| json!(app.phone));
        o.entry("timestamp").or_insert_with(|| json!(now_ms));
        o.entry("version").or_insert_with(|| json!(2));
    }
    body
}

/// The go-live `onboarding-event` (1.4).
pub(super) fn live_event(app: &App, now_ms: i64) -> Value {
    json!({
        "app": app.name,
        "appId": app.id,
        "phone": app.phone,
        "timestamp": now_ms,
        "version": 2,
        "type": "onboarding-event",
        "payload": {
            "type": "docker-status-event",
            "payload": {
                "status": "live",
                // [I] waId = the phone as on WhatsApp (GS-TPP reading); namespace is synthetic.
                "waId": app.phone,
                "namespace": format!("{}_{}", app.waba_id, &app.id[..8.min(app.id.len())]),
            }
        }
    })
}

/// A fresh app token (`sk_` + 32 hex digits).
pub(super) fn new_app_token() -> String {
    let mut raw = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    format!("sk_{}", hex::encode(raw))
}

/// Whether a string is an absolute http(s) URL with a host.
pub(super) fn valid_url(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn mode_mask_matches_documented_samples() {
        assert_eq!(mode_mask(&["SENT", "ENQUEUED"]), 1025);
        assert_eq!(mode_mask(&MODE_BITS), 16383);
        assert_eq!(mode_mask(&["NONE"]), 0);
    }

    #[test]
    fn modes_parse_trim_and_version() {
        let m = parse_modes("SENT,ENQUEUED,DELIVERED,READ,DELETED,MESSAGE, OTHERS", 3).unwrap_or_default();
        assert_eq!(mode_mask(&m), 1119);
        assert!(parse_modes("SENT, OTHERS", 2).is_none());
        assert!(parse_modes("SENT,COPY", 2).is_none());
        assert!(parse_modes("", 2).is_none());
        assert_eq!(parse_modes("NONE", 1), Some(vec!["NONE"]));
    }

    #[test]
    fn phone_split() {
        assert_eq!(split_phone("919087875656"), ("91".into(), "9087875656".into()));
        assert_eq!(split_phone("15551112222"), ("1".into(), "5551112222".into()));
        assert_eq!(split_phone("972501234567"), ("972".into(), "501234567".into()));
    }
}
