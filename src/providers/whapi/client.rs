//! Raw Whapi.Cloud HTTP calls through the shared plumbing: the partner ("manager") API at the
//! account's base URL with the partner token, and the per-channel Gate API at the channel's
//! `apiUrl` with the channel token. Reads are retried in-call; creates, extends and deletes are
//! sent once (a lost answer is `UnknownOutcome`, and the callers reconcile before repeating).

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::{
    Channel, ChannelList, Deleted, ErrorEnvelope, Health, LoginQr, LoginRowdata, PairingCode, Partner, Project,
    ProjectList,
};
use crate::domain::Secret;
use crate::domain::account::Credentials;
use crate::providers::accounts::CredentialProblem;
use crate::providers::http::{BodyError, ErrorBody, HttpClient, RawResponse, RetryPolicy, retry};
use crate::providers::{CallContext, ProviderError};

/// The partner ("manager") API's host; channels are then reached at the `apiUrl` each one
/// returns (docs/providers.md §3.1 [C]).
pub const MANAGER_BASE_URL: &str = "https://manager.whapi.cloud";

/// What Whapi credentials need before any call: the partner API token of the partner panel
/// (docs/providers.md §3.1 [C]).
pub fn credential_problems(partner_token: &Secret) -> Vec<CredentialProblem> {
    if partner_token.is_empty() { vec![CredentialProblem::new("partner_token", "is required")] } else { Vec::new() }
}

/// [C2] Path of the partner channel list (public partner client, docs/providers.md §3.2; no vendor
/// page documents listing channels). `GET /channels/list/{projectId}` exists too [C2].
pub(super) const LIST_CHANNELS_PATH: [&str; 2] = ["channels", "list"];
/// [C2] The other list path seen in a client's migration note, tried on a 404.
pub(super) const LIST_CHANNELS_FALLBACK: [&str; 1] = ["channels"];
/// [C2]/[I] Paging parameters `(count, offset)`: the partner client's, and Whapi's Gate
/// OpenAPI convention for every list (docs/providers.md §3.2); never `limit`.
pub(super) const LIST_PAGE_PARAMS: (&str, &str) = ("count", "offset");
/// [C2] Page size asked for: the documented default (`count` 1..=500, default 100).
pub(super) const LIST_PAGE_SIZE: usize = 100;
/// [I] Hard cap on pages read, against a server that never ends the list.
pub(super) const LIST_MAX_PAGES: usize = 100;

fn incomplete_list(why: &str) -> ProviderError {
    ProviderError::Precondition {
        raw: "list_channels".into(),
        message: format!("cannot read the whole Whapi channel list ({why}); refusing to risk a duplicate channel"),
    }
}

/// [I] Whapi answers some errors with HTTP 200 and `{"error":{…}}`.
pub(super) struct WhapiErrorBody;

impl ErrorBody for WhapiErrorBody {
    fn check(&self, _status: StatusCode, body: &[u8]) -> Option<BodyError> {
        let env: ErrorEnvelope = serde_json::from_slice(body).ok()?;
        let e = env.error?;
        let code = e.code.unwrap_or(0);
        Some(BodyError { retryable: code == 429 || code >= 500, reason: format!("error body, code {code}") })
    }
}

/// Where and how to call one channel's Gate API.
#[derive(Clone)]
pub(crate) struct Gate {
    /// The channel's `apiUrl` (not secret).
    pub api_url: String,
    /// The channel token.
    pub token: Secret,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

/// The HTTP side of the adapter.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: HttpClient,
    retry: RetryPolicy,
}

/// The partner token of a Whapi account.
pub(crate) fn partner_token(ctx: &CallContext) -> Result<&Secret, ProviderError> {
    match &ctx.credentials {
        Credentials::Whapi { partner_token } => Ok(partner_token),
        _ => Err(ProviderError::Unauthenticated { raw: "wrong_provider_credentials".into() }),
    }
}

/// `base` with `segments` appended (each percent-encoded as one path segment).
fn url(base: &str, segments: &[&str]) -> Result<url::Url, ProviderError> {
    let mut u = url::Url::parse(base).map_err(|e| ProviderError::Invalid {
        field: Some("account.endpoint".into()),
        message: format!("not a URL: {e}"),
        raw: "base_url".into(),
    })?;
    {
        let mut p = u.path_segments_mut().map_err(|()| ProviderError::Invalid {
            field: Some("account.endpoint".into()),
            message: "URL cannot take a path".into(),
            raw: "base_url".into(),
        })?;
        p.pop_if_empty().extend(segments);
    }
    Ok(u)
}

/// Decodes a JSON body; errors name the endpoint class and the serde category only (bodies
/// may hold tokens).
pub(crate) fn decode<T: DeserializeOwned>(class: &str, body: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Malformed {
        message: format!("{class}: response did not parse ({:?})", e.classify()),
    })
}

impl Client {
    pub(super) fn new(http: HttpClient, retry: RetryPolicy) -> Self {
        Self { http, retry }
    }

    /// One request; `idempotent` ones are retried per the policy, others sent once.
    async fn call(
        &self,
        class: &str,
        method: reqwest::Method,
        u: url::Url,
        token: &Secret,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<RawResponse, ProviderError> {
        let build = || {
            let mut r = self
                .http
                .request(method.clone(), u.clone())
                .bearer_auth(token.expose())
                .header(http::header::ACCEPT, "application/json");
            if let Some(b) = body {
                r = r.json(b);
            }
            r
        };
        let res = if idempotent {
            retry(&self.retry, || self.http.send(class, build(), true, &WhapiErrorBody)).await
        } else {
            self.http.send(class, build(), false, &WhapiErrorBody).await
        };
        res.map_err(ProviderError::from)
    }

    async fn mgr(
        &self,
        ctx: &CallContext,
        class: &str,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<RawResponse, ProviderError> {
        let token = partner_token(ctx)?;
        self.call(class, method, url(&ctx.base_url, segments)?, token, body, idempotent).await
    }

    /// The URL of a Gate endpoint of channel `g`.
    fn gate_url(g: &Gate, segments: &[&str], query: &[(&str, String)]) -> Result<url::Url, ProviderError> {
        let mut u = url(&g.api_url, segments)?;
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(u)
    }

    /// A Gate GET (retried).
    async fn gate_get(
        &self,
        g: &Gate,
        class: &str,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<RawResponse, ProviderError> {
        let u = Self::gate_url(g, segments, query)?;
        self.call(class, reqwest::Method::GET, u, &g.token, None, true).await
    }

    // ---- partner (manager) API ----

    /// `GET /projects`.
    pub(super) async fn projects(&self, ctx: &CallContext) -> Result<Vec<Project>, ProviderError> {
        let r = self.mgr(ctx, "whapi.projects", reqwest::Method::GET, &["projects"], None, true).await?;
        Ok(decode::<ProjectList>("whapi.projects", &r.body)?.into_vec())
    }

    /// `GET /partners` [C2].
    pub(super) async fn partner(&self, ctx: &CallContext) -> Result<Partner, ProviderError> {
        let r = self.mgr(ctx, "whapi.partner", reqwest::Method::GET, &["partners"], None, true).await?;
        decode("whapi.partner", &r.body)
    }

    /// [C2] The partner channel list (no vendor page documents it, docs/providers.md §3.2), paged
    /// with [`LIST_PAGE_PARAMS`] until a short page, so the lookup that prevents a second
    /// channel cannot miss one on a large account. Falls back to [`LIST_CHANNELS_FALLBACK`]
    /// (same paging) when [`LIST_CHANNELS_PATH`] is unknown (404).
    pub(super) async fn list_channels(&self, ctx: &CallContext) -> Result<Vec<Channel>, ProviderError> {
        match self.list_pages(ctx, &LIST_CHANNELS_PATH).await {
            Err(ProviderError::NotFound { .. }) => self.list_pages(ctx, &LIST_CHANNELS_FALLBACK).await,
            other => other,
        }
    }

    async fn list_pages(&self, ctx: &CallContext, segments: &[&str]) -> Result<Vec<Channel>, ProviderError> {
        const CLASS: &str = "whapi.list_channels";
        let token = partner_token(ctx)?;
        let (count_param, offset_param) = LIST_PAGE_PARAMS;
        let mut all: Vec<Channel> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut previous_first: Option<String> = None;
        for page in 0..LIST_MAX_PAGES {
            let mut u = url(&ctx.base_url, segments)?;
            u.query_pairs_mut()
                .append_pair(count_param, &LIST_PAGE_SIZE.to_string())
                .append_pair(offset_param, &(page * LIST_PAGE_SIZE).to_string());
            let r = self.call(CLASS, reqwest::Method::GET, u, token, None, true).await?;
            let items = decode::<ChannelList>(CLASS, &r.body)?.into_vec();
            let n = items.len();
            let first = items.first().map(|c| c.id.clone());
            if page > 0 && first.is_some() && first == previous_first {
                // The server ignores `offset`: the list cannot be proven complete, and a
                // missed channel would be created twice.
                return Err(incomplete_list("the channel list ignores `offset`"));
            }
            previous_first = first;
            for c in items {
                if seen.insert(c.id.clone()) {
                    all.push(c);
                }
            }
            // A short page ends the list; a page longer than asked means `count` is ignored
            // and the whole list came at once.
            if n != LIST_PAGE_SIZE {
                return Ok(all);
            }
        }
        Err(incomplete_list(&format!("more than {} channels", LIST_MAX_PAGES * LIST_PAGE_SIZE)))
    }

    /// `GET /channels/{id}`.
    pub(super) async fn get_channel(&self, ctx: &CallContext, id: &str) -> Result<Channel, ProviderError> {
        let r = self.mgr(ctx, "whapi.get_channel", reqwest::Method::GET, &["channels", id], None, true).await?;
        decode("whapi.get_channel", &r.body)
    }

    /// `PUT /channels` with `name` + `projectId`: sent once (not idempotent at Whapi).
    pub(super) async fn create_channel(
        &self,
        ctx: &CallContext,
        name: &str,
        project_id: &str,
    ) -> Result<Channel, ProviderError> {
        let body = json!({ "name": name, "projectId": project_id });
        let r = self.mgr(ctx, "whapi.create_channel", reqwest::Method::PUT, &["channels"], Some(&body), false).await?;
        decode("whapi.create_channel", &r.body)
    }

    /// `PATCH /channels/{id}/mode`: setting the same mode twice is harmless, so retried.
    pub(super) async fn set_mode(&self, ctx: &CallContext, id: &str, mode: &str) -> Result<Channel, ProviderError> {
        let body = json!({ "mode": mode });
        let r = self
            .mgr(ctx, "whapi.set_mode", reqwest::Method::PATCH, &["channels", id, "mode"], Some(&body), true)
            .await?;
        decode("whapi.set_mode", &r.body)
    }

    /// `POST /channels/{id}/extend` with `days` and the required `comment`: sent once.
    pub(super) async fn extend(
        &self,
        ctx: &CallContext,
        id: &str,
        days: u32,
        comment: &str,
    ) -> Result<Channel, ProviderError> {
        let body = json!({ "days": days, "comment": comment });
        let r = self
            .mgr(ctx, "whapi.extend", reqwest::Method::POST, &["channels", id, "extend"], Some(&body), false)
            .await?;
        decode("whapi.extend", &r.body)
    }

    /// `DELETE /channels/{id}`: sent once (a repeat after success would be a 404 and lose the
    /// refund count).
    pub(super) async fn delete_channel(&self, ctx: &CallContext, id: &str) -> Result<Deleted, ProviderError> {
        let r = self.mgr(ctx, "whapi.delete_channel", reqwest::Method::DELETE, &["channels", id], None, false).await?;
        // The channel is gone whatever the body says: an unreadable body ([I] shape) must not
        // turn a done delete into an error; the refund is then unknown (0).
        match decode::<Deleted>("whapi.delete_channel", &r.body) {
            Ok(d) => Ok(d),
            Err(e) => {
                tracing::warn!(error = %e, "Whapi delete answered an unreadable body; refund unknown.");
                Ok(Deleted::default())
            }
        }
    }

    /// `GET /partners/{partnerName}/settings` [C]: balance alert webhooks and `days_limit`.
    pub(super) async fn partner_settings(&self, ctx: &CallContext, partner: &str) -> Result<Value, ProviderError> {
        let segs = ["partners", partner, "settings"];
        let r = self.mgr(ctx, "whapi.partner_settings", reqwest::Method::GET, &segs, None, true).await?;
        decode("whapi.partner_settings", &r.body)
    }

    /// `PATCH /partners/{partnerName}/settings` [C]: partial update (same patch, same result).
    pub(super) async fn patch_partner_settings(
        &self,
        ctx: &CallContext,
        partner: &str,
        patch: &Value,
    ) -> Result<Value, ProviderError> {
        let segs = ["partners", partner, "settings"];
        let r = self.mgr(ctx, "whapi.patch_partner_settings", reqwest::Method::PATCH, &segs, Some(patch), true).await?;
        decode("whapi.patch_partner_settings", &r.body)
    }

    // ---- per-channel Gate API ----

    /// `GET /health`; `wakeup=false` reads without starting the channel.
    pub(super) async fn health(&self, g: &Gate, wakeup: bool) -> Result<Health, ProviderError> {
        let q = [("wakeup", wakeup.to_string())];
        let r = self.gate_get(g, "whapi.health", &["health"], &q).await?;
        decode("whapi.health", &r.body)
    }

    fn qr_query(size: u32) -> Vec<(&'static str, String)> {
        let mut q = vec![("wakeup", "true".to_string())];
        if size > 0 {
            q.push(("size", size.to_string()));
        }
        q
    }

    /// `GET /users/login`: the QR as JSON (base64 PNG).
    pub(super) async fn login_qr(&self, g: &Gate, size: u32) -> Result<LoginQr, ProviderError> {
        let q = Self::qr_query(size);
        let r = self.gate_get(g, "whapi.login_qr", &["users", "login"], &q).await?;
        decode("whapi.login_qr", &r.body)
    }

    /// `GET /users/login/image`: the QR as a PNG. `None` when the answer is JSON (the
    /// channel is not showing a QR yet).
    pub(super) async fn login_image(&self, g: &Gate, size: u32) -> Result<Option<Vec<u8>>, ProviderError> {
        let q = Self::qr_query(size);
        let r = self.gate_get(g, "whapi.login_image", &["users", "login", "image"], &q).await?;
        let is_png = r.body.starts_with(b"\x89PNG\r\n\x1a\n");
        Ok(is_png.then(|| r.body.to_vec()))
    }

    /// `GET /users/login/rowdata`: the raw QR string.
    pub(super) async fn login_rowdata(&self, g: &Gate) -> Result<LoginRowdata, ProviderError> {
        let q = [("wakeup", "true".to_string())];
        let r = self.gate_get(g, "whapi.login_rowdata", &["users", "login", "rowdata"], &q).await?;
        decode("whapi.login_rowdata", &r.body)
    }

    /// `GET /users/login/{PhoneNumber}` (digits only): a pairing code.
    pub(super) async fn pairing_code(&self, g: &Gate, digits: &str) -> Result<PairingCode, ProviderError> {
        let q = [("wakeup", "true".to_string())];
        let r = self.gate_get(g, "whapi.pairing_code", &["users", "login", digits], &q).await?;
        decode("whapi.pairing_code", &r.body)
    }

    /// `POST /users/logout`: unlinks the phone.
    pub(super) async fn logout(&self, g: &Gate) -> Result<(), ProviderError> {
        let u = Self::gate_url(g, &["users", "logout"], &[])?;
        self.call("whapi.logout", reqwest::Method::POST, u, &g.token, None, false).await?;
        Ok(())
    }

    /// `GET /settings`, as raw JSON (read-modify-write keeps what we do not model).
    pub(super) async fn get_settings(&self, g: &Gate) -> Result<Value, ProviderError> {
        let r = self.gate_get(g, "whapi.get_settings", &["settings"], &[]).await?;
        decode("whapi.get_settings", &r.body)
    }

    /// `PATCH /settings` (partial update: absent fields unchanged). The same patch twice is
    /// the same result, so retried.
    pub(super) async fn patch_settings(&self, g: &Gate, patch: &Value) -> Result<Value, ProviderError> {
        let u = Self::gate_url(g, &["settings"], &[])?;
        let r = self.call("whapi.patch_settings", reqwest::Method::PATCH, u, &g.token, Some(patch), true).await?;
        decode("whapi.patch_settings", &r.body)
    }
}
