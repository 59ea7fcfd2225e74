//! Private wire types of the Gupshup Partner API, written from docs/providers.md §1 (never from
//! the simulator). Every lenient choice about an undocumented or conflicting shape is here,
//! named and marked, so it can be corrected in one place.

use serde::Deserialize;
use serde_json::{Map, Value};

/// `{"status":"error","message":…}` plus the `appId` some link-app errors carry (1.3.2).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorEnvelope {
    /// `"error"` on failures.
    #[serde(default)]
    pub status: Option<String>,
    /// Human message; the only machine-readable part of most errors.
    #[serde(default)]
    pub message: Option<String>,
    /// The 409 "already exists with phone" and the partial-success 400 name the app.
    #[serde(default, rename = "appId")]
    pub app_id: Option<String>,
}

impl ErrorEnvelope {
    /// Parses an error body; anything unparsable is an empty envelope.
    pub(super) fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// `POST /partner/account/login` 200 (1.3.1). The token is read separately so it never sits
/// in a `Debug`-able struct.
#[derive(Deserialize)]
pub(super) struct LoginResponse {
    /// The PARTNER_TOKEN (JWT).
    pub token: String,
    /// Partner id (a number in the docs).
    #[serde(default)]
    pub id: Option<Value>,
    /// Partner name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tech-Provider flag. [I] true for a TPP partner.
    #[serde(default, rename = "isTpp")]
    pub is_tpp: Option<bool>,
}

/// `POST /partner/tpp/app` 200 (1.3.2).
#[derive(Debug, Deserialize)]
pub(super) struct LinkResponse {
    /// The new app's id.
    #[serde(rename = "appId")]
    pub app_id: String,
}

/// `GET /partner/app/{appId}/token` 200 (1.3.3): the reference shows
/// `{"status":"success","token":{"token":"sk_…",…}}`, the TPP guide `{"name":…,"token":"…"}`.
/// [C2] accept both (`token.token` when an object, else `token`).
#[derive(Deserialize)]
pub(super) struct AppTokenResponse {
    /// Object or string.
    pub token: Value,
}

impl AppTokenResponse {
    /// The token string, whichever shape it came in.
    pub(super) fn token(&self) -> Option<&str> {
        match &self.token {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("token").and_then(Value::as_str),
            _ => None,
        }
        .filter(|s| !s.is_empty())
    }
}

/// `GET /partner/app/{appId}/pipeline` 200 (1.3.4). The `whatsapp` object is kept raw: its
/// stage values become the step's `provider_stage` map.
#[derive(Debug, Deserialize)]
pub(super) struct PipelineResponse {
    /// Stage fields (`creationStage`, `pipeLineStage`, `stageRetries`, …).
    pub whatsapp: Map<String, Value>,
}

/// `creationStage` when provisioning is done (1.3.4).
pub(super) const CREATION_DONE: &str = "WHATSAPP_PROVISIONING_DONE";
/// `creationStage` of a failed pipeline (HTTP 200 still).
pub(super) const CREATION_ERROR: &str = "ERROR";
/// `pipeLineStage` of the last stage.
pub(super) const PIPELINE_FINALIZE: &str = "FINALIZE";

/// Whether LIVE also needs `pipeLineStage: FINALIZE` once `creationStage` is
/// `WHATSAPP_PROVISIONING_DONE` (docs/providers.md 1.3.4 / 1.7 point 11). [I] `false`: public
/// clients disagree (some require both, others `creationStage` alone) and the vendor defines
/// "live" by the live event and the `live` flag, not by the pipeline stage.
pub(super) const LIVE_NEEDS_FINALIZE: bool = false;

/// Retries the vendor says a failing pipeline makes before failing: "In case of an error,
/// the pipeline retries three times before failing" [C] (docs/providers.md 1.3.4, 1.7 point 10).
pub(super) const PIPELINE_RETRIES: u32 = 3;

/// Whether a `creationStage: ERROR` is the final one (docs/providers.md 1.7 point 10). [I] the
/// vendor never links `stageRetries` to the three retries; public clients fail on the first
/// ERROR [C2]. So an ERROR is final unless the same answer says, through a `stageRetries`
/// below [`PIPELINE_RETRIES`], that Gupshup is still retrying (the other reading of the vendor
/// sentence); a retry count that never ends is caught by the provisioning deadline.
pub(super) fn error_is_final(stage_retries: Option<u32>) -> bool {
    stage_retries.is_none_or(|n| n >= PIPELINE_RETRIES)
}

/// `GET /partner/app/list` page size for the 409 recovery lookup (docs/providers.md 1.3.6, 1.7
/// point 9). [I] the vendor documents no maximum (default 10); a phone filter matches few apps.
pub(super) const APP_LIST_PAGE_SIZE: usize = 50;
/// Pages read before the lookup gives up. [I] a contains-search on the full phone number
/// matches one app, or a handful; the bound only stops a server that never ends a listing.
pub(super) const APP_LIST_MAX_PAGES: usize = 5;

/// One app of an app listing: `/partner/app/list` items [C] or `partnerAppsList` items [C2]
/// (docs/providers.md 1.3.6). Only what the 409 recovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListedApp {
    /// The app id (`id`): a 409 recovery adopts it when the phone matches.
    pub id: String,
    /// The app name (`name`), compared with ours to explain a name conflict.
    pub name: String,
    /// `phone`, digits only (empty when absent: `phone?` in the older list).
    pub phone: String,
}

/// The items of an app listing (docs/providers.md 1.3.6, 1.7 point 9): a bare array (the vendor
/// sample), or the array under `data` (RAKH), `partnerAppsList` (older list) or `apps` (a
/// public client reads all three [C2]). Items without an `id` are skipped; anything else is
/// `None` (an answer we cannot read).
pub(super) fn app_list_items(body: &[u8]) -> Option<Vec<ListedApp>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let items = match &v {
        Value::Array(a) => a,
        Value::Object(o) => ["data", "partnerAppsList", "apps"].iter().find_map(|k| o.get(*k)?.as_array())?,
        _ => return None,
    };
    Some(
        items
            .iter()
            .filter_map(|i| {
                let text = |k: &str| i.get(k).and_then(scalar_text).unwrap_or_default();
                let id = text("id");
                (!id.is_empty()).then(|| ListedApp {
                    id,
                    name: text("name"),
                    phone: text("phone").chars().filter(char::is_ascii_digit).collect(),
                })
            })
            .collect(),
    )
}

impl PipelineResponse {
    /// A field as text (numbers and bools rendered, strings as is).
    pub(super) fn text(&self, key: &str) -> Option<String> {
        scalar_text(self.whatsapp.get(key)?)
    }

    /// `creationStage` (how far the app's creation got), empty when absent.
    pub(super) fn creation_stage(&self) -> String {
        self.text("creationStage").unwrap_or_default()
    }

    /// `stageRetries` when present as a non-negative integer (or numeric string).
    pub(super) fn stage_retries(&self) -> Option<u32> {
        self.text("stageRetries")?.trim().parse().ok()
    }

    /// The `live` flag of app objects (app list [C], `appDetails` [C2]; docs/providers.md 1.3.6),
    /// should the pipeline answer carry it.
    pub(super) fn live_flag(&self) -> bool {
        matches!(self.whatsapp.get("live"), Some(Value::Bool(true)))
            || self.text("live").is_some_and(|t| t.eq_ignore_ascii_case("true"))
    }

    /// `pipeLineStage` (capital L, 1.3.4); app-list responses spell it `pipelineStage`, so
    /// that spelling is accepted too [C].
    pub(super) fn pipeline_stage(&self) -> String {
        self.text("pipeLineStage").or_else(|| self.text("pipelineStage")).unwrap_or_default()
    }
}

/// A subscription object (1.3.5): create answers the short form, get/list add `modes`,
/// `latencyBucket` and `meta`.
#[derive(Debug, Deserialize)]
pub(super) struct WireSubscription {
    /// Numeric string in the docs; [I] a number accepted too.
    pub id: Value,
    /// The subscribed modes as Gupshup's bitmask (one bit per mode name).
    #[serde(default)]
    pub mode: Option<i64>,
    /// Mode names (get/list only).
    #[serde(default)]
    pub modes: Option<Vec<String>>,
    /// Unique per app.
    #[serde(default)]
    pub tag: String,
    /// Target URL.
    #[serde(default)]
    pub url: String,
    /// 0–3; [I] a numeric string accepted too.
    #[serde(default)]
    pub version: Option<Value>,
    /// Deliveries on.
    #[serde(default)]
    pub active: Option<bool>,
    /// `{"headers":{…}}` as a JSON string (or object) [C2].
    #[serde(default)]
    pub meta: Option<Value>,
    /// Created (ms).
    #[serde(default, rename = "createdOn")]
    pub created_on: Option<i64>,
    /// Modified (ms).
    #[serde(default, rename = "modifiedOn")]
    pub modified_on: Option<i64>,
}

/// `{"status":"success","subscription":{…}}`.
#[derive(Debug, Deserialize)]
pub(super) struct SubscriptionResponse {
    /// The subscription.
    pub subscription: WireSubscription,
}

/// `{"status":"success","subscriptions":[…]}`.
#[derive(Debug, Deserialize)]
pub(super) struct SubscriptionList {
    /// All of the app's subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<WireSubscription>,
}

/// Subscription modes in bitmask order (bit = 1 << index). [I] derived in 1.3.5 from two
/// documented samples; used only to name modes when a response has the mask but no list.
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

/// The 15 `storageRegion` codes (1.1) [C].
pub(super) const STORAGE_REGIONS: [&str; 15] =
    ["BR", "DE", "CH", "GB", "BH", "ZA", "AE", "US", "CA", "AU", "ID", "IN", "JP", "SG", "KR"];

/// Mode names of a bitmask, in bit order.
pub(super) fn modes_of_mask(mask: i64) -> Vec<String> {
    MODE_BITS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, m)| m.to_string()).collect()
}

/// A JSON scalar as text; `None` for null, arrays and objects.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn token_in_both_shapes() {
        let obj: AppTokenResponse =
            serde_json::from_str(r#"{"status":"success","token":{"token":"sk_1","expiresOn":0}}"#).unwrap();
        assert_eq!(obj.token(), Some("sk_1"));
        let s: AppTokenResponse = serde_json::from_str(r#"{"name":"P","terms_read":true,"token":"sk_2"}"#).unwrap();
        assert_eq!(s.token(), Some("sk_2"));
        let bad: AppTokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(bad.token(), None);
    }

    #[test]
    fn app_list_in_every_shape() {
        let item = r#"{"id":"a1","name":"Acme One","phone":"919900000001","live":false}"#;
        let want = vec![ListedApp { id: "a1".into(), name: "Acme One".into(), phone: "919900000001".into() }];
        for body in [
            format!("[{item}]"),
            format!(r#"{{"status":"success","data":[{item}]}}"#),
            format!(r#"{{"status":"success","partnerAppsList":[{item}]}}"#),
            format!(r#"{{"apps":[{item}]}}"#),
        ] {
            assert_eq!(app_list_items(body.as_bytes()), Some(want.clone()), "{body}");
        }
        assert_eq!(app_list_items(b"[]"), Some(vec![]));
        assert_eq!(app_list_items(br#"{"status":"success"}"#), None);
        assert_eq!(app_list_items(b"not json"), None);
        // An item without id is skipped; a numeric id and a formatted phone are read.
        let odd = br#"[{"name":"x"},{"id":7,"name":"y","phone":"+91 99-1"}]"#;
        assert_eq!(
            app_list_items(odd),
            Some(vec![ListedApp { id: "7".into(), name: "y".into(), phone: "91991".into() }])
        );
    }

    #[test]
    fn only_a_final_error_is_final() {
        assert!(error_is_final(None));
        assert!(error_is_final(Some(3)));
        assert!(error_is_final(Some(4)));
        assert!(!error_is_final(Some(0)));
        assert!(!error_is_final(Some(2)));
    }

    #[test]
    fn mask_names_match_documented_samples() {
        assert_eq!(modes_of_mask(1025), vec!["SENT", "ENQUEUED"]);
        assert_eq!(modes_of_mask(16383).len(), 14);
        assert!(modes_of_mask(0).is_empty());
    }
}
