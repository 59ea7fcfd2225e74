//! Private Whapi.Cloud wire types (docs/providers.md §3), written from the contract, not from the
//! simulator. Where the contract is unconfirmed ([I] / [C2]) the types are lenient, and each
//! such choice is named here, in one place, so it can be corrected against live traffic.

use serde::Deserialize;
use serde_json::Value;

/// A channel object of the manager API (`PUT /channels`, `GET /channels/{id}`, list) [C].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Channel {
    pub id: String,
    pub name: String,
    #[serde(rename = "projectId")]
    pub project_id: String,
    #[serde(rename = "apiUrl")]
    pub api_url: String,
    /// The channel (gate) token: a secret, wrapped at once by the caller.
    pub token: String,
    #[serde(rename = "creationTS")]
    pub creation_ts: Option<i64>,
    /// Epoch ms when the channel stops unless extended.
    #[serde(rename = "activeTill")]
    pub active_till: Option<i64>,
    /// Raw mode (docs/providers.md §3.3): `trial`, `live`, `dev` (Sandbox), `dev_archive`; read by
    /// `channels::mode_of`, kept raw when unknown.
    pub mode: String,
    /// `active`, or [I] `stopped` once `activeTill` passed.
    pub status: String,
    pub stopped: bool,
    /// [C2] present on listed channels once linked.
    pub phone: Option<String>,
}

impl Channel {
    /// Stopped: by the flag or by the status text [I].
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped || self.status.eq_ignore_ascii_case("stopped")
    }
}

/// [C2] The list-channels response: three public clients disagree; accept a bare array or
/// `{"channels":[…]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ChannelList {
    Wrapped { channels: Vec<Channel> },
    Bare(Vec<Channel>),
}

impl ChannelList {
    pub(super) fn into_vec(self) -> Vec<Channel> {
        match self {
            Self::Wrapped { channels } | Self::Bare(channels) => channels,
        }
    }
}

/// A project (`GET /projects`) [C] path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Project {
    pub id: String,
}

/// [I] `GET /projects` shape: array or `{"projects":[…]}` (public code handles both).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ProjectList {
    Wrapped { projects: Vec<Project> },
    Bare(Vec<Project>),
}

impl ProjectList {
    pub(super) fn into_vec(self) -> Vec<Project> {
        match self {
            Self::Wrapped { projects } | Self::Bare(projects) => projects,
        }
    }
}

/// [C2] Partner info (`GET /partners`): balance in days and trial days. Field names from one
/// third-party client; `balance` [I].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Partner {
    pub name: String,
    #[serde(alias = "days", alias = "balanceDays")]
    pub balance: i64,
    #[serde(rename = "trialDays")]
    pub trial_days: i64,
    #[serde(rename = "liveDays")]
    pub live_days: i64,
}

/// `{"code":N,"text":"QR"}` [C].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HealthStatus {
    pub code: i64,
    pub text: String,
}

/// A user as `users` webhooks (and maybe health [I]) carry it: `id` is the phone digits [C].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct User {
    pub id: String,
    pub name: String,
}

/// Gate `GET /health` and the `health` of `channel` webhooks [C].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Health {
    pub status: HealthStatus,
    /// Epoch seconds the instance started [C].
    pub start_at: Option<i64>,
    /// Seconds since `start_at` [C].
    pub uptime: Option<i64>,
    /// [I] some deployments include the linked user.
    pub user: Option<User>,
}

impl Health {
    /// The status text, upper-cased; derived from the code when the text is missing
    /// ([C] 1 INIT, 2 LAUNCH, 3 QR, 5 ERROR; [I] 4 AUTH).
    pub(super) fn text(&self) -> String {
        if !self.status.text.is_empty() {
            return self.status.text.to_ascii_uppercase();
        }
        match self.status.code {
            1 => "INIT",
            2 => "LAUNCH",
            3 => "QR",
            4 => "AUTH",
            5 => "ERROR",
            _ => "UNKNOWN",
        }
        .to_string()
    }

    /// When this reading was taken, in epoch ms: `start_at + uptime` (both seconds) [C];
    /// `None` when the sum does not fit (the values are the provider's, not trusted).
    pub(super) fn at_ms(&self) -> Option<i64> {
        self.start_at?.checked_add(self.uptime.unwrap_or(0))?.checked_mul(1000)
    }
}

/// [C2] The OpenAPI `QR` object (docs/providers.md §3.4), answered by `GET /users/login` and
/// `GET /users/login/rowdata`: `{status (required: OK | TIMEOUT | WAITING | ERROR), base64?,
/// rowdata?, expire? (a number, "seconds until the QR code expires")}`. Read from the JSON
/// value, not by serde field names, so field order, a number typed `19.5`, or an extra field
/// (a third-party stub's `qr`) never breaks it: the first present name of each list wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Value")]
pub(crate) struct LoginQr {
    /// Upper-cased; empty when absent (read leniently: a code present means OK).
    pub status: String,
    pub base64: Option<String>,
    pub rowdata: Option<String>,
    /// Whole seconds left (`expire` rounded up, clamped to `0..=QR_MAX_EXPIRE_SECS`).
    pub expire: Option<i64>,
}

/// The image field: `base64` [C2]; `qr` / `image` only as lenient aliases [I] (stub names).
pub(crate) const QR_IMAGE_FIELDS: [&str; 3] = ["base64", "qr", "image"];
/// The raw QR string: `rowdata` [C2]; `rowData` / `raw` lenient [I].
pub(crate) const QR_ROWDATA_FIELDS: [&str; 3] = ["rowdata", "rowData", "raw"];
/// The lifetime: `expire` [C2]; `expires_in` / `expiresIn` lenient [I] (the old stub name).
pub(crate) const QR_EXPIRE_FIELDS: [&str; 3] = ["expire", "expires_in", "expiresIn"];
/// Longest lifetime believed (the value is the provider's) [I].
pub(crate) const QR_MAX_EXPIRE_SECS: f64 = 3600.0;

/// The first of `names` holding a non-empty string.
fn first_str(v: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string))
}

/// The first of `names` holding a number (or a numeric string), as whole seconds rounded up.
pub(crate) fn expire_secs(v: &Value, names: &[&str]) -> Option<i64> {
    names.iter().find_map(|n| {
        let x = v.get(*n)?;
        let f = x.as_f64().or_else(|| x.as_str().and_then(|s| s.trim().parse::<f64>().ok()))?;
        f.is_finite().then(|| f.clamp(0.0, QR_MAX_EXPIRE_SECS).ceil() as i64)
    })
}

impl From<Value> for LoginQr {
    fn from(v: Value) -> Self {
        Self {
            status: v.get("status").and_then(Value::as_str).unwrap_or_default().trim().to_ascii_uppercase(),
            base64: first_str(&v, &QR_IMAGE_FIELDS),
            rowdata: first_str(&v, &QR_ROWDATA_FIELDS),
            expire: expire_secs(&v, &QR_EXPIRE_FIELDS),
        }
    }
}

/// `GET /users/login/rowdata` answers the same `QR` object [C2].
pub(crate) type LoginRowdata = LoginQr;

/// [C2] `GET /users/login/{phone}`: the OpenAPI `AuthCode` object, `{code}` only (no
/// lifetime; see `PAIRING_CODE_TTL`). Other names kept as lenient aliases [I].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Value")]
pub(crate) struct PairingCode {
    pub code: Option<String>,
    /// Only if a gate ever sends one [I].
    pub expire: Option<i64>,
}

/// Pairing code field names: `code` [C2]; the rest lenient [I].
pub(crate) const PAIRING_CODE_FIELDS: [&str; 4] = ["code", "pairing_code", "otp", "auth_code"];

impl From<Value> for PairingCode {
    fn from(v: Value) -> Self {
        Self { code: first_str(&v, &PAIRING_CODE_FIELDS), expire: expire_secs(&v, &QR_EXPIRE_FIELDS) }
    }
}

/// [I] `DELETE /channels/{id}` response: the refund field is not documented.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Deleted {
    #[serde(alias = "refundedDays", alias = "refunded", alias = "days")]
    pub refunded_days: Option<i64>,
}

/// A webhook entry of gate `/settings` [C]. Kept as raw JSON so fields we do not model
/// (and other integrations' webhooks) survive a read-modify-write untouched.
pub(crate) type WebhookJson = serde_json::Map<String, Value>;

/// The `webhooks` array of gate settings; absent or not an array is empty.
pub(crate) fn webhooks_of(settings: &Value) -> Vec<WebhookJson> {
    settings
        .get("webhooks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|w| w.as_object().cloned()).collect())
        .unwrap_or_default()
}

/// The event types a webhook entry subscribes to, as `(type, method)`.
pub(crate) fn events_of(w: &WebhookJson) -> Vec<(String, String)> {
    w.get("events")
        .and_then(Value::as_array)
        .map(|evs| {
            evs.iter()
                .filter_map(|e| {
                    let t = e.get("type")?.as_str()?.to_string();
                    let m = e.get("method").and_then(Value::as_str).unwrap_or("post").to_string();
                    Some((t, m))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// [C] Event types accepted in `webhooks[].events[].type` (the deprecated ones included, so
/// existing subscriptions still validate).
pub(crate) const EVENT_TYPES: &[&str] = &[
    "messages",
    "statuses",
    "chats",
    "contacts",
    "groups",
    "presences",
    "calls",
    "channel",
    "users",
    "labels",
    "service",
    "message",
    "ack",
    "chat",
    "status",
];

/// [C] Event methods.
pub(crate) const EVENT_METHODS: &[&str] = &["post", "put", "delete", "patch"];

/// [C] At most this many headers per webhook.
pub(crate) const MAX_HEADERS: usize = 5;

/// A webhook callback body (docs/providers.md §3.5) [C]: `event.type`/`event.event`,
/// `channel_id`, and `health` (channel events) or `user` (users events).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Callback {
    pub event: CallbackKind,
    pub channel_id: String,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub user: Option<User>,
    /// [I] QR refresh payload (`channel`/`patch`): not documented.
    #[serde(default)]
    pub qr: Option<Value>,
}

/// `{"type":"channel","event":"post"}` [C].
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CallbackKind {
    #[serde(rename = "type")]
    pub kind: String,
    pub event: String,
}

/// [I] Error body `{"error":{"code","message","details"}}` (schema not confirmed), also seen
/// with HTTP 200.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorEnvelope {
    pub error: Option<ErrorDetail>,
}

/// The inner error object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorDetail {
    pub code: Option<i64>,
    pub message: String,
}
