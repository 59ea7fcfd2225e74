//! Private wire types of the Gupshup Partner API, written from providers.md §1 (never from
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
    pub fn parse(body: &[u8]) -> Self {
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
    pub fn token(&self) -> Option<&str> {
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

impl PipelineResponse {
    /// A field as text (numbers and bools rendered, strings as is).
    pub fn text(&self, key: &str) -> Option<String> {
        scalar_text(self.whatsapp.get(key)?)
    }

    /// `creationStage`.
    pub fn creation_stage(&self) -> String {
        self.text("creationStage").unwrap_or_default()
    }

    /// `pipeLineStage` (capital L, 1.3.4); app-list responses spell it `pipelineStage`, so
    /// that spelling is accepted too [C].
    pub fn pipeline_stage(&self) -> String {
        self.text("pipeLineStage").or_else(|| self.text("pipelineStage")).unwrap_or_default()
    }
}

/// A subscription object (1.3.5): create answers the short form, get/list add `modes`,
/// `latencyBucket` and `meta`.
#[derive(Debug, Deserialize)]
pub(super) struct WireSubscription {
    /// Numeric string in the docs; [I] a number accepted too.
    pub id: Value,
    /// Bitmask.
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
    fn mask_names_match_documented_samples() {
        assert_eq!(modes_of_mask(1025), vec!["SENT", "ENQUEUED"]);
        assert_eq!(modes_of_mask(16383).len(), 14);
        assert!(modes_of_mask(0).is_empty());
    }
}
