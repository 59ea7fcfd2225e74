//! Exotel ISV wire types (docs/providers.md §2), private to the adapter. Every field is optional
//! where the docs disagree or do not say (the overview sample omits `method`, `http_code` and
//! `error_data`), so parsing is lenient and the meaning is checked in one place.

use serde::Deserialize;

/// The envelope of every answer, success or failure [C]:
/// `{request_id, method, http_code, response: {whatsapp: {isv: {code, error_data, status, data}}}}`.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<D> {
    /// The `response` block.
    pub response: Option<ResponseBlock<D>>,
}

/// The `response` object of an Exotel answer: it wraps the `whatsapp` block with the data.
#[derive(Debug, Deserialize)]
pub(super) struct ResponseBlock<D> {
    /// `response.whatsapp`.
    pub whatsapp: Option<WhatsappBlock<D>>,
}

/// `response.whatsapp`.
#[derive(Debug, Deserialize)]
pub(super) struct WhatsappBlock<D> {
    /// `response.whatsapp.isv`.
    pub isv: Option<Isv<D>>,
}

/// `response.whatsapp.isv`: the status of the ISV call and its data.
#[derive(Debug, Deserialize)]
pub(super) struct Isv<D> {
    /// Mirrors the HTTP code (200 on success).
    pub code: Option<u16>,
    /// `success` or `failure` [C2].
    pub status: Option<String>,
    /// Null on success; [I] `{code, description, message}` on failure.
    pub error_data: Option<ErrorData>,
    /// The payload.
    pub data: Option<D>,
}

/// `error_data` [I]: the schema is not published for ISV; Exotel v2 APIs use these names.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorData {
    /// Human message.
    pub message: Option<String>,
    /// Longer description.
    pub description: Option<String>,
}

/// [I] Where the create answer may hold the link, relative to `response.whatsapp.isv`, tried
/// in order (docs/providers.md §2.2, "Corrections (issue 17)" #2). The real create answer is not
/// published: the vendor pages show only the field-table path `whatsapp → isv → Url` and the
/// key `onboarding_url` (validate page) [C]; the rest are the same names one level up or down.
/// Each value may be one string or a list of strings. The day Exotel publishes the answer,
/// this is the one place to change.
pub(super) const CREATE_URL_PATHS: [&[&str]; 6] =
    [&["data", "onboarding_url"], &["data", "Url"], &["data", "url"], &["Url"], &["url"], &["onboarding_url"]];

/// [I] Last resort: a link anywhere under `response.whatsapp.isv` is an `https` URL whose
/// path holds this segment (the documented link shape
/// `https://messaging.exotel.com/ua-links/isv-onboard/<token>`, docs/providers.md §2.2 [C]).
pub(super) const LINK_PATH_MARKER: &str = "/isv-onboard/";

/// The links of a create answer (`body` = the whole envelope), by [`CREATE_URL_PATHS`] then
/// [`LINK_PATH_MARKER`]; `None` when there is none (e.g. the create page's own sample, which
/// is a validate body).
pub(super) fn create_urls(body: &serde_json::Value) -> Option<Vec<String>> {
    let isv = body.pointer("/response/whatsapp/isv")?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.trim().to_string()],
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).map(|s| s.trim().to_string()).collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    };
    for path in CREATE_URL_PATHS {
        let found = path.iter().try_fold(isv, |v, k| v.get(*k)).map(strings).unwrap_or_default();
        if !found.is_empty() {
            return Some(found);
        }
    }
    let mut found = Vec::new();
    scan_links(isv, &mut found);
    (!found.is_empty()).then_some(found)
}

fn scan_links(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => {
            let is_link =
                url::Url::parse(s.trim()).is_ok_and(|u| u.scheme() == "https" && u.path().contains(LINK_PATH_MARKER));
            if is_link {
                out.push(s.trim().to_string());
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| scan_links(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| scan_links(x, out)),
        _ => {}
    }
}

/// `data` of the validate call [C].
#[derive(Debug, Deserialize)]
pub(super) struct ValidateData {
    /// `VALID`, `USED` or `EXPIRED`.
    pub onboarding_token_status: String,
}

impl<D> Envelope<D> {
    /// The `isv` block, if any.
    pub(super) fn isv(self) -> Option<Isv<D>> {
        self.response?.whatsapp?.isv
    }
}
