//! Exotel ISV wire types (providers.md §2), private to the adapter. Every field is optional
//! where the docs disagree or do not say (the overview sample omits `method`, `http_code` and
//! `error_data`), so parsing is lenient and the meaning is checked in one place.

use serde::Deserialize;

/// The envelope of every answer, success or failure [C]:
/// `{request_id, method, http_code, response: {whatsapp: {isv: {code, error_data, status, data}}}}`.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<D> {
    /// Exotel's request id (logged to correlate with Exotel support).
    pub request_id: Option<String>,
    /// The `response` block.
    pub response: Option<ResponseBlock<D>>,
}

/// `response`.
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

/// `data` of the mint call. [I] The real create response is not published: `onboarding_url`
/// (name confirmed from the validate page) inside `data`; a batch (`?count=N`) also lists
/// every URL in `onboarding_urls`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MintData {
    /// The (first) link.
    pub onboarding_url: Option<String>,
    /// All links of a batch.
    pub onboarding_urls: Option<Vec<String>>,
}

/// `data` of the validate call [C].
#[derive(Debug, Deserialize)]
pub(super) struct ValidateData {
    /// `VALID`, `USED` or `EXPIRED`.
    pub onboarding_token_status: String,
}

impl<D> Envelope<D> {
    /// The `isv` block, if any.
    pub fn isv(self) -> Option<Isv<D>> {
        self.response?.whatsapp?.isv
    }
}
