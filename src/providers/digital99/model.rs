//! 99digital Partners API wire types (docs/providers.md §4), private to the adapter. Numbers and
//! flags are read leniently (as JSON numbers or strings: the docs show `expiration_time` as a
//! string and `status` as a number), missing fields default.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An integer sent as a number or a numeric string.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(Value::Bool(b)) => Some(i64::from(b)),
        _ => None,
    })
}

/// A string sent as a string or a number (phone digits can come either way).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// The envelope every answer shares: `{"status":"OK"|"FAIL","reason":N}` [C].
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    /// `OK` or `FAIL`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
    /// `1` OK, otherwise why it failed.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub reason: Option<i64>,
}

/// `POST /api/settings/accessToken` body [C].
#[derive(Serialize)]
pub(super) struct LoginRequest<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

/// Its answer [C]: `{access_token, expiration_time (unix s, a string), token_type, reason}`.
#[derive(Deserialize)]
pub(super) struct LoginAnswer {
    #[serde(default, deserialize_with = "lenient_string")]
    pub access_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub expiration_time: Option<i64>,
}

/// `POST /api/settings/setWebhook` body [C].
#[derive(Serialize)]
pub(super) struct WebhookRequest<'a> {
    pub url: &'a str,
}

/// `setWebhook` / `getWebhook` answer [C]: `{"status":"OK","url":"…","reason":1}`.
#[derive(Deserialize)]
pub(super) struct WebhookAnswer {
    #[serde(default, deserialize_with = "lenient_string")]
    pub url: Option<String>,
}

/// `POST /api/whatsapp/registerNumber` body [C]: `method` 1 = SMS, 2 = voice.
#[derive(Serialize)]
pub(super) struct RegisterRequest<'a> {
    pub whatsapp: &'a str,
    pub method: u8,
}

/// The verify body [I]: endpoint and field names not published (path in
/// `inferred::VERIFY_NUMBER_PATH`, docs/providers.md §4.2).
#[derive(Serialize)]
pub(super) struct VerifyRequest<'a> {
    pub whatsapp: &'a str,
    pub code: &'a str,
}

/// The create body: endpoint inferred (`inferred::CREATE_ONBOARDING_PATH`, docs/providers.md
/// §4.2); fields are those `getAccounts` echoes back [C]. `reference` is our onboarding id.
#[derive(Serialize)]
pub(super) struct CreateAccountRequest<'a> {
    pub whatsapp: &'a str,
    pub business_name: &'a str,
    pub business_email: &'a str,
    pub business_id: &'a str,
    pub business_address: &'a str,
    pub display_name: &'a str,
    pub reference: &'a str,
    pub coexistence: u8,
}

/// Its answer [I]: `{whatsapp, onboarding_link, landing_page}` beside the envelope.
#[derive(Deserialize)]
pub(super) struct CreateAccountAnswer {
    #[serde(default, deserialize_with = "lenient_string")]
    pub onboarding_link: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub landing_page: Option<String>,
}

/// `GET /api/whatsapp/getAccounts` answer [C] (seed 003).
#[derive(Deserialize)]
pub(super) struct AccountsAnswer {
    #[serde(default)]
    pub list: Vec<AccountItem>,
}

/// One onboarding account [C].
#[derive(Debug, Clone, Deserialize)]
pub(super) struct AccountItem {
    /// Unix seconds.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub create_time: Option<i64>,
    /// The number; for an unfinished coexistence link a temporary `97257…` one.
    #[serde(default, deserialize_with = "lenient_string")]
    pub whatsapp: Option<String>,
    /// 0 / 1.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub coexistence: Option<i64>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub business_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub landing_page: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub onboarding_link: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub reference: Option<String>,
    /// 0 = the client has not finished, 1 = finished.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub status: Option<i64>,
}

/// `DELETE /api/whatsapp/deleteAccount` body [C].
#[derive(Serialize)]
pub(super) struct DeleteAccountRequest<'a> {
    pub whatsapp: &'a str,
}

/// The partner webhook body. [I] The field list is not published; docs/providers.md's default:
/// `{"type":"whatsapp","event":"onboarding_finished","whatsapp","reference","status":1,"timestamp"}`.
#[derive(Debug, Deserialize)]
pub(super) struct WebhookEvent {
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub event: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub whatsapp: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub status: Option<i64>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}
