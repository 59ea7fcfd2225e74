//! The 99digital partner adapter (docs/providers.md §4): 99digital hosts the signup page for a
//! pre-registered number. We log in for a 1 h access token, optionally register and verify
//! the number (SMS or voice code), point the partner webhook at our ingress, create the
//! onboarding account (link + landing page) and follow it through `getAccounts` (status
//! 0 → 1) and the partner webhook.
//!
//! Identity: an onboarding account is keyed by its number (`deleteAccount` takes it, the
//! webhook carries it, a number has at most one account), so `external_key` is the number's
//! digits. For an unfinished coexistence link `getAccounts` shows a temporary `97257…`
//! number instead; such an account is found by its `onboarding_link` (kept in the handle) or
//! by the `reference` we sent (our onboarding id, echoed by `getAccounts`). Reconciliation
//! reads `getAccounts` only: a number leaves `getRegisteredNumbers` once an account exists
//! (docs/providers.md §4.2, "Corrections (issue 17)" #5).

mod client;
mod model;
mod webhook;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use self::client::credential_problems;
use self::client::{Call, CallError, Client, NO_BODY, login_error, reason};
use self::model::{
    AccountItem, AccountsAnswer, CreateAccountAnswer, CreateAccountRequest, DeleteAccountRequest, Envelope,
    LoginAnswer, LoginRequest, RegisterRequest, VerifyRequest, WebhookAnswer, WebhookRequest,
};
use self::webhook::digits;
use super::builtin::AdapterDeps;
use super::http::{TemporaryToken, TokenCache, TokenStatus, with_token};
use super::{
    CallContext, CallbackEvent, CancelOutcome, CredentialsCheck, Digital99Start, Observation, PartnerTokenOps,
    PipelineStep, Provider, ProviderError, ProviderFactory, ProviderHandle, StartPayload, StartRequest, StepOutcome,
    StepRun, StepSpec, VerificationOps, VerifyMethod, step_of,
};
use crate::domain::account::Credentials;
use crate::domain::{
    Capability, Digital99Details, E164, OnboardingDetails, OnboardingState, ProviderKind, Secret, now_ms,
};
use crate::error::AppError;

/// Unconfirmed 99digital facts, in one place [I] (docs/providers.md §4.2 and its "Corrections
/// (issue 17)" #4; research-issue-17 point 4): no public page shows these URLs. Change them
/// here the day 99digital confirms them (the simulator mirrors them by value in
/// `src/sim/digital99/routes.rs`).
pub(super) mod inferred {
    /// Create the onboarding account (link + landing page): the stronger candidate, since the
    /// sibling Facebook page with the same title is `facebook/createOnboarding` [C].
    pub(crate) const CREATE_ONBOARDING_PATH: &str = "whatsapp/createOnboarding";
    /// The older guess for the same call ("Step 2: Create account"), tried only when
    /// [`CREATE_ONBOARDING_PATH`] answers 404 (nothing was created).
    pub(crate) const CREATE_ONBOARDING_FALLBACK: &str = "whatsapp/createAccount";
    /// Verify the registered number's 6-digit code, body `{whatsapp, code}` (field names
    /// inferred too; 99digital's SMS product checks a code on its send URL plus `code`).
    pub(crate) const VERIFY_NUMBER_PATH: &str = "whatsapp/verifyNumber";
}

/// The 99digital pipeline's steps (stored names in [`PipelineStep::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digital99Step {
    /// `register_number`: register the number and send the verification code.
    RegisterNumber,
    /// `verify_number`: wait for the code (submitted through the API into the step's data)
    /// and verify it.
    VerifyNumber,
    /// `create_account`: create the onboarding account (link + landing page).
    CreateAccount,
    /// `await_customer`: poll `getAccounts` until the business finishes.
    AwaitCustomer,
}

impl Digital99Step {
    /// The stored name, usable in constants (the core wakes `verify_number` with a code).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RegisterNumber => "register_number",
            Self::VerifyNumber => "verify_number",
            Self::CreateAccount => "create_account",
            Self::AwaitCustomer => "await_customer",
        }
    }
}

impl PipelineStep for Digital99Step {
    const ALL: &'static [Self] = &[Self::RegisterNumber, Self::VerifyNumber, Self::CreateAccount, Self::AwaitCustomer];

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn display_name(self) -> &'static str {
        match self {
            Self::RegisterNumber => "Register the number and send a verification code",
            Self::VerifyNumber => "Verify the number with the code",
            Self::CreateAccount => "Create the onboarding account and link",
            Self::AwaitCustomer => "Wait for the business to finish the hosted signup",
        }
    }
}
/// Wrong verification codes accepted before the onboarding fails.
pub const MAX_WRONG_CODES: u64 = 5;
/// The production API host; every path starts with `/api` (docs/providers.md §4.1 [C]).
pub const DEFAULT_BASE_URL: &str = "https://partners.99digital.co.il";

/// Documented access-token lifetime [C].
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Refresh this long before the token expires.
const TOKEN_MIN_TTL: Duration = Duration::from_secs(300);
/// [I] After reason 3 on login (IP blocked after failed attempts, "retry later", no duration
/// published) no login is attempted for this long: the engine sees `Unauthenticated`
/// (`REAUTH_REQUIRED`) at once instead of the adapter hammering a blocked login.
pub const LOGIN_COOLDOWN: Duration = Duration::from_secs(15 * 60);
/// [I] After reason 2 (wrong credentials) no login is attempted for this long. This adapter
/// instance's credentials never change (the registry builds a new one when they do), so
/// repeating a rejected login can only walk into 99digital's block after a few failures
/// (reason 3, which blocks our IP for every account).
pub const WRONG_CREDENTIALS_COOLDOWN: Duration = Duration::from_secs(60);
/// How long `verify_number` waits for a code before looking again (it is woken by the code).
const CODE_WAIT: Duration = Duration::from_secs(3600);

/// What this adapter offers besides its ports (partner token, number verification).
const FLOW_CAPABILITIES: [Capability; 6] = [
    Capability::CheckCredentials,
    Capability::HostedLink,
    Capability::AccountStatusPolling,
    Capability::PartnerWebhook,
    Capability::Cancel,
    Capability::Lookup,
];

/// Builds one [`Digital99Provider`] per 99digital account (it holds the account's access
/// token cache, login cool-down and "webhook set" flag).
pub fn factory(deps: AdapterDeps) -> ProviderFactory {
    Arc::new(move |ctx: &CallContext| {
        if ctx.credentials.provider() != ProviderKind::Digital99 {
            return Err(AppError::precondition("the 99digital adapter needs 99digital credentials"));
        }
        Ok(Arc::new(Digital99Provider::new(&deps)) as Arc<dyn Provider>)
    })
}

/// The 99digital adapter for one account.
pub struct Digital99Provider {
    client: Client,
    tokens: TokenCache<Secret>,
    /// No login until then; the reason (2 or 3) that started the cool-down.
    login_blocked_until: Mutex<Option<(Instant, i64)>>,
    /// SHA-256 of the webhook URL last set at 99digital (the URL itself embeds a secret).
    webhook_set: Mutex<Option<String>>,
    poll_interval: Duration,
}

impl std::fmt::Debug for Digital99Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digital99Provider").field("poll_interval", &self.poll_interval).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn invalid(field: &str, message: &str) -> ProviderError {
    ProviderError::Invalid { field: Some(field.into()), message: message.into(), raw: String::new() }
}

/// [I] Field limits are not published; these only catch obvious mistakes before a call.
const MAX_TEXT: usize = 256;

/// The request's 99digital input, checked before any call.
fn start_of(req: &StartRequest) -> Result<&Digital99Start, ProviderError> {
    let StartPayload::Digital99(s) = &req.payload else {
        return Err(invalid("request", "a 99digital account takes a 99digital link request"));
    };
    if !(7..=15).contains(&s.phone.digits().len()) {
        return Err(invalid("digital99.phone", "must be an international number of 7 to 15 digits"));
    }
    for (field, value) in [("digital99.business_name", &s.business_name), ("digital99.display_name", &s.display_name)] {
        if value.trim().is_empty() {
            return Err(invalid(field, "is required"));
        }
        if value.chars().count() > MAX_TEXT {
            return Err(invalid(field, "is too long (at most 256 characters)"));
        }
    }
    let optional = [
        ("digital99.business_email", &s.business_email),
        ("digital99.business_id", &s.business_id),
        ("digital99.business_address", &s.business_address),
    ];
    for (field, value) in optional {
        if value.as_deref().is_some_and(|v| v.chars().count() > MAX_TEXT) {
            return Err(invalid(field, "is too long (at most 256 characters)"));
        }
    }
    if let Some(email) = s.business_email.as_deref().filter(|e| !e.is_empty())
        && (!email.contains('@') || email.chars().any(char::is_whitespace))
    {
        return Err(invalid("digital99.business_email", "is not an email address"));
    }
    Ok(s)
}

/// The number of listed digits; `None` for digits that are no E.164 number (never shown).
fn e164(d: &str) -> Option<E164> {
    E164::parse(d).ok()
}

/// What one `getAccounts` item says about the onboarding.
struct Reading {
    obs: Observation,
    details: Digital99Details,
    finished: bool,
}

/// Reads an account. `number` is the real number we asked for; `known_temp` a temporary
/// number seen earlier (kept once the real one replaces it).
fn read_account(acc: &AccountItem, number: &str, known_temp: Option<&str>) -> Reading {
    let status = acc.status.unwrap_or(0);
    let finished = status == 1;
    let listed = acc.whatsapp.as_deref().map(digits).unwrap_or_default();
    let coexistence = acc.coexistence == Some(1);
    let mut fields = BTreeMap::new();
    fields.insert("status".to_string(), status.to_string());
    fields.insert("whatsapp".to_string(), listed.clone());
    fields.insert("coexistence".to_string(), acc.coexistence.unwrap_or(0).to_string());
    if let Some(t) = acc.create_time {
        fields.insert("create_time".to_string(), t.to_string());
    }
    let (state, reason) = if finished {
        (OnboardingState::Live, "the business finished onboarding")
    } else {
        (OnboardingState::AwaitingCustomer, "waiting for the business to finish onboarding")
    };
    // Coexistence: until the business finishes, 99digital lists a temporary 97257… number;
    // once finished the real one. Keep the temporary one beside it [C].
    let temp = (coexistence && !finished && !listed.is_empty() && listed != number).then(|| listed.clone());
    let phone = if finished && !listed.is_empty() { listed } else { number.to_string() };
    let details = Digital99Details {
        onboarding_link: acc.onboarding_link.clone(),
        landing_page: acc.landing_page.clone(),
        business_name: acc.business_name.clone(),
        display_name: acc.display_name.clone(),
        coexistence: Some(coexistence),
        temporary_phone: temp.as_deref().or(known_temp).and_then(e164),
        phone: e164(&phone),
        ..Digital99Details::default()
    };
    let obs = Observation { raw_status: status.to_string(), fields, state: Some(state), reason: reason.into() };
    Reading { obs, details, finished }
}

fn outcome(progress_done: bool, wait: Duration, r: Reading) -> StepOutcome {
    let out = if progress_done { StepOutcome::done(r.obs) } else { StepOutcome::wait(wait, r.obs) };
    out.with_details(r.details)
}

fn handle_for(number: &str, link: Option<&str>, reference: &str) -> ProviderHandle {
    ProviderHandle {
        external_key: number.to_string(),
        data: json!({ "onboarding_link": link, "reference": reference }),
    }
}

/// The `reference` we send on create and match in `getAccounts` [C: "the reference that was
/// provided by you"]: our onboarding id, unique per onboarding and always set (the caller's
/// own reference may be empty or shared).
fn reference_of(req: &StartRequest) -> &str {
    req.onboarding_id.as_str()
}

impl Digital99Provider {
    /// An adapter using the shared HTTP client and retry policy.
    pub fn new(deps: &AdapterDeps) -> Self {
        Self {
            client: Client::new(deps.http.clone(), deps.retry),
            tokens: TokenCache::new(TOKEN_MIN_TTL),
            login_blocked_until: Mutex::new(None),
            webhook_set: Mutex::new(None),
            poll_interval: deps.poll_interval,
        }
    }

    /// `POST /api/settings/accessToken`, unless a reason-3 block is cooling down.
    async fn fetch_token(&self, ctx: &CallContext) -> Result<TemporaryToken<Secret>, ProviderError> {
        if let Some((until, why)) = *lock(&self.login_blocked_until)
            && Instant::now() < until
        {
            return Err(ProviderError::Unauthenticated { raw: why.to_string() });
        }
        let Credentials::Digital99 { client_id, client_secret } = &ctx.credentials else {
            return Err(ProviderError::Precondition {
                raw: String::new(),
                message: format!("the account holds {} credentials, not 99digital ones", ctx.credentials.provider()),
            });
        };
        let body = LoginRequest { client_id, client_secret: client_secret.expose() };
        let res: Result<LoginAnswer, _> = self
            .client
            .call(
                &ctx.base_url,
                None,
                Call {
                    class: "digital99.access_token",
                    method: Method::POST,
                    path: "settings/accessToken",
                    body: Some(&body),
                    idempotent: true,
                },
            )
            .await;
        let ans = res.map_err(|e| match e {
            CallError::Reason(n) => {
                let cooldown = match n {
                    reason::TOKEN => Some(LOGIN_COOLDOWN),
                    reason::WRONG_CREDENTIALS => Some(WRONG_CREDENTIALS_COOLDOWN),
                    _ => None,
                };
                if let Some(d) = cooldown {
                    tracing::warn!(
                        reason = n,
                        cooldown_s = d.as_secs(),
                        "99digital refused the login; not logging in again until the cool-down ends."
                    );
                    *lock(&self.login_blocked_until) = Some((Instant::now() + d, n));
                }
                login_error(n)
            }
            CallError::Other(e) => e,
        })?;
        let token = ans.access_token.filter(|t| !t.is_empty()).ok_or_else(|| ProviderError::Malformed {
            message: "99digital access token answer without access_token".into(),
        })?;
        // [I] `expiration_time` is the provider's unix seconds: trusted when it is within the
        // documented hour from our clock, else (clock skew) the documented hour is used.
        let left_ms = ans.expiration_time.map(|s| s.saturating_mul(1000).saturating_sub(now_ms()));
        let ttl = match left_ms {
            Some(ms) if ms > 0 && ms <= TOKEN_TTL.as_millis() as i64 => Duration::from_millis(ms as u64),
            _ => TOKEN_TTL,
        };
        Ok(TemporaryToken { token: Secret::new(token), ttl: Some(ttl) })
    }

    /// One authenticated call; on an expired token (reason 3) or a 401 one new token is
    /// fetched and the call repeated once.
    async fn api<B, T>(
        &self,
        ctx: &CallContext,
        class: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<T, ProviderError>
    where
        B: Serialize + ?Sized + Sync,
        T: DeserializeOwned + Send,
    {
        with_token(
            &self.tokens,
            || self.fetch_token(ctx),
            |token: Secret| {
                let method = method.clone();
                async move {
                    self.client
                        .call(&ctx.base_url, Some(&token), Call { class, method, path, body, idempotent })
                        .await
                        .map_err(CallError::into_error)
                }
            },
        )
        .await
    }

    /// Points the partner webhook at our ingress, once per adapter instance and URL (or
    /// always with `force`).
    async fn ensure_webhook(&self, ctx: &CallContext, force: bool) -> Result<(), ProviderError> {
        let url = ctx.webhook_url.expose();
        let fp = hex::encode(Sha256::digest(url.as_bytes()));
        if !force && lock(&self.webhook_set).as_deref() == Some(fp.as_str()) {
            return Ok(());
        }
        let body = WebhookRequest { url };
        let res: Result<WebhookAnswer, _> =
            self.api(ctx, "digital99.set_webhook", Method::POST, "settings/setWebhook", Some(&body), true).await;
        match res {
            Ok(_) => {
                *lock(&self.webhook_set) = Some(fp);
                Ok(())
            }
            Err(ProviderError::Invalid { raw, .. }) => Err(ProviderError::Invalid {
                field: None,
                message: "99digital refused our webhook URL (http(s), at most 512 characters)".into(),
                raw,
            }),
            Err(e) => Err(e),
        }
    }

    async fn accounts(&self, ctx: &CallContext) -> Result<Vec<AccountItem>, ProviderError> {
        let ans: AccountsAnswer =
            self.api(ctx, "digital99.get_accounts", Method::GET, "whatsapp/getAccounts", NO_BODY, true).await?;
        Ok(ans.list)
    }

    /// The account of an onboarding, from `getAccounts` only (docs/providers.md §4.2): by its link
    /// when known, else by our `reference`, else by number (a coexistence account shows a
    /// temporary `97257…` number until it finishes, so the number alone cannot find it).
    async fn find_account(
        &self,
        ctx: &CallContext,
        number: &str,
        link: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Option<AccountItem>, ProviderError> {
        let list = self.accounts(ctx).await?;
        if let Some(a) = link.and_then(|l| list.iter().find(|a| a.onboarding_link.as_deref() == Some(l))) {
            return Ok(Some(a.clone()));
        }
        if let Some(r) = reference.filter(|r| !r.is_empty())
            && let Some(a) = list.iter().find(|a| a.reference.as_deref() == Some(r))
        {
            return Ok(Some(a.clone()));
        }
        Ok(list.into_iter().find(|a| a.whatsapp.as_deref().map(digits).as_deref() == Some(number)))
    }

    /// `POST` the create body to [`inferred::CREATE_ONBOARDING_PATH`], and to
    /// [`inferred::CREATE_ONBOARDING_FALLBACK`] only when the first answers 404 (the path
    /// does not exist, so nothing was created). Never on a FAIL envelope.
    async fn post_create(
        &self,
        ctx: &CallContext,
        body: &CreateAccountRequest<'_>,
    ) -> Result<CreateAccountAnswer, ProviderError> {
        let mut last = None;
        for path in [inferred::CREATE_ONBOARDING_PATH, inferred::CREATE_ONBOARDING_FALLBACK] {
            match self.api(ctx, "digital99.create_account", Method::POST, path, Some(body), false).await {
                Err(ProviderError::NotFound { raw }) => {
                    tracing::warn!(path, "99digital has no such create path (inferred); trying the next.");
                    last = Some(raw);
                }
                other => return other,
            }
        }
        Err(ProviderError::Precondition {
            raw: last.unwrap_or_default(),
            message: format!(
                "99digital create endpoint unknown: neither {} nor {} exists (constants \
                 CREATE_ONBOARDING_PATH / CREATE_ONBOARDING_FALLBACK, docs/providers.md §4.2)",
                inferred::CREATE_ONBOARDING_PATH,
                inferred::CREATE_ONBOARDING_FALLBACK
            ),
        })
    }

    /// Creates the onboarding account, or finds the one an earlier attempt made.
    async fn create_account(&self, ctx: &CallContext, req: &StartRequest) -> Result<StepOutcome, ProviderError> {
        let s = start_of(req)?;
        let number = s.phone.digits().to_string();
        self.ensure_webhook(ctx, false).await?;
        if let Some(found) = self.find_account(ctx, &number, None, Some(reference_of(req))).await? {
            return self.reconciled(found, &number, req);
        }
        let body = CreateAccountRequest {
            whatsapp: &number,
            business_name: s.business_name.trim(),
            business_email: s.business_email.as_deref().unwrap_or_default(),
            business_id: s.business_id.as_deref().unwrap_or_default(),
            business_address: s.business_address.as_deref().unwrap_or_default(),
            display_name: s.display_name.trim(),
            reference: reference_of(req),
            coexistence: u8::from(s.coexistence),
        };
        let ans = match self.post_create(ctx, &body).await {
            Ok(a) => a,
            // [I] "account exists" (a create raced ours): find it once more.
            Err(ProviderError::Conflict { raw, message }) => {
                return match self.find_account(ctx, &number, None, Some(reference_of(req))).await? {
                    Some(found) => self.reconciled(found, &number, req),
                    None => Err(ProviderError::Conflict { raw, message }),
                };
            }
            Err(e) => return Err(e),
        };
        let link = ans.onboarding_link.filter(|l| !l.is_empty()).ok_or_else(|| ProviderError::Malformed {
            message: "99digital create answer without onboarding_link".into(),
        })?;
        let item = AccountItem {
            create_time: None,
            whatsapp: Some(number.clone()),
            coexistence: Some(i64::from(s.coexistence)),
            business_name: Some(s.business_name.trim().to_string()),
            landing_page: ans.landing_page,
            onboarding_link: Some(link.clone()),
            display_name: Some(s.display_name.trim().to_string()),
            reference: Some(reference_of(req).to_string()),
            status: Some(0),
        };
        let mut r = read_account(&item, &number, None);
        r.obs.reason = "onboarding link created; waiting for the business".into();
        Ok(outcome(true, self.poll_interval, r).handle(handle_for(&number, Some(&link), reference_of(req))))
    }

    fn reconciled(&self, found: AccountItem, number: &str, req: &StartRequest) -> Result<StepOutcome, ProviderError> {
        // One account per number: an account made for another reference is not ours (the
        // caller's reference is accepted too: what this adapter sent before issue 17).
        let theirs = found.reference.as_deref().unwrap_or_default();
        if theirs != reference_of(req) && theirs != req.reference {
            return Err(ProviderError::Conflict {
                raw: reason::ACCOUNT_EXISTS.to_string(),
                message: "an onboarding account for this number exists with another reference".into(),
            });
        }
        let link = found.onboarding_link.clone();
        let r = read_account(&found, number, None);
        Ok(outcome(true, self.poll_interval, r)
            .handle(handle_for(number, link.as_deref(), reference_of(req)))
            .attribute("reconciled", "true"))
    }

    /// The current reading for a handle; `None` when the account is gone. `reference`: the
    /// one in the handle, else `fallback_reference` (a handle recorded before it was kept).
    async fn observe(
        &self,
        ctx: &CallContext,
        handle: &ProviderHandle,
        known_temp: Option<&str>,
        fallback_reference: Option<&str>,
    ) -> Result<Option<Reading>, ProviderError> {
        let number = digits(&handle.external_key);
        let link = handle.data.get("onboarding_link").and_then(|v| v.as_str());
        let reference = handle.data.get("reference").and_then(|v| v.as_str()).or(fallback_reference);
        let found = self.find_account(ctx, &number, link, reference).await?;
        Ok(found.map(|a| read_account(&a, &number, known_temp)))
    }

    fn gone() -> Observation {
        Observation {
            raw_status: "NOT_FOUND".into(),
            fields: BTreeMap::new(),
            state: Some(OnboardingState::Failed),
            reason: "the onboarding account no longer exists at 99digital".into(),
        }
    }

    async fn register_number(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let s = start_of(&run.request)?;
        let number = s.phone.digits();
        let Some(method) = s.register_number else {
            let obs = Observation { raw_status: "NOT_REQUESTED".into(), ..Default::default() };
            return Ok(StepOutcome::done(obs));
        };
        // An account for the onboarding means an earlier run got past verification: send no
        // new code (each one counts against the documented 3 requests). Asked of getAccounts:
        // the number has left getRegisteredNumbers by then (docs/providers.md §4.2).
        if self.find_account(ctx, number, None, Some(reference_of(&run.request))).await?.is_some() {
            let obs = Observation { raw_status: "ACCOUNT_EXISTS".into(), ..Default::default() };
            return Ok(StepOutcome::done(obs).attribute("reconciled", "true"));
        }
        let (code, label) = match method {
            VerifyMethod::Sms => (1, "sms"),
            VerifyMethod::Voice => (2, "voice"),
        };
        let body = RegisterRequest { whatsapp: number, method: code };
        let _: Envelope = self
            .api(ctx, "digital99.register_number", Method::POST, "whatsapp/registerNumber", Some(&body), false)
            .await?;
        let mut fields = BTreeMap::new();
        fields.insert("method".to_string(), label.to_string());
        let obs = Observation {
            raw_status: "CODE_SENT".into(),
            fields,
            state: None,
            reason: format!("verification code sent by {label}"),
        };
        Ok(StepOutcome::done(obs).with_details(Digital99Details {
            phone: e164(number),
            number_verified: Some(false),
            ..Digital99Details::default()
        }))
    }

    async fn verify_number(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let s = start_of(&run.request)?;
        let number = s.phone.digits();
        let wrong = run.data.get("wrong_codes").and_then(|v| v.as_u64()).unwrap_or(0);
        let waiting = |raw: &str, reason: &str| Observation {
            raw_status: raw.into(),
            fields: BTreeMap::new(),
            state: Some(OnboardingState::AwaitingCustomer),
            reason: reason.into(),
        };
        // A string; a number is accepted too (6 digits, leading zeros restored).
        let code = run.data.get("code").and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.trim().to_string()),
            serde_json::Value::Number(n) => n.as_u64().map(|n| format!("{n:06}")),
            _ => None,
        });
        let Some(code) = code.as_deref() else {
            return Ok(StepOutcome::wait(CODE_WAIT, waiting("CODE_SENT", "waiting for the verification code")));
        };
        let rejected = if self.validate_code(code).is_err() {
            true
        } else {
            let body = VerifyRequest { whatsapp: number, code };
            let res: Result<Envelope, _> = self
                .api(ctx, "digital99.verify_number", Method::POST, inferred::VERIFY_NUMBER_PATH, Some(&body), true)
                .await;
            match res {
                Ok(_) => false,
                Err(ProviderError::NotFound { raw }) => {
                    return Err(ProviderError::Precondition {
                        raw,
                        message: format!(
                            "99digital verify endpoint unknown: {} does not exist (constant VERIFY_NUMBER_PATH, \
                             docs/providers.md §4.2)",
                            inferred::VERIFY_NUMBER_PATH
                        ),
                    });
                }
                Err(ProviderError::Invalid { field: Some(f), .. }) if f == "code" => true,
                Err(e) => return Err(e),
            }
        };
        if !rejected {
            let obs =
                Observation { raw_status: "VERIFIED".into(), reason: "number verified".into(), ..Default::default() };
            return Ok(StepOutcome::done(obs)
                .with_details(Digital99Details { number_verified: Some(true), ..Digital99Details::default() })
                .data(json!({ "verified": true, "wrong_codes": wrong })));
        }
        let wrong = wrong + 1;
        // The code is dropped from the data either way, so the caller can submit another.
        let data = json!({ "wrong_codes": wrong });
        if wrong >= MAX_WRONG_CODES {
            let obs = Observation {
                raw_status: "CODE_REJECTED".into(),
                fields: BTreeMap::new(),
                state: Some(OnboardingState::Failed),
                reason: format!("{wrong} wrong verification codes"),
            };
            return Ok(StepOutcome::done(obs).data(data).attribute("wrong_codes", wrong.to_string()));
        }
        Ok(StepOutcome::wait(CODE_WAIT, waiting("CODE_REJECTED", "code rejected"))
            .data(data)
            .attribute("wrong_codes", wrong.to_string()))
    }

    async fn await_customer(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let handle = run.handle.as_ref().ok_or_else(|| ProviderError::Precondition {
            raw: String::new(),
            message: "await_customer ran before create_account recorded a handle".into(),
        })?;
        let known_temp = match &run.details {
            OnboardingDetails::Digital99(d) => d.temporary_phone.as_ref().map(|p| p.digits().to_string()),
            _ => None,
        };
        Ok(match self.observe(ctx, handle, known_temp.as_deref(), Some(run.onboarding_id.as_str())).await? {
            None => StepOutcome::done(Self::gone()),
            Some(r) => {
                let done = r.finished;
                outcome(done, self.poll_interval, r)
            }
        })
    }
}

#[async_trait]
impl Provider for Digital99Provider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Digital99
    }

    fn flow_capabilities(&self) -> &[Capability] {
        &FLOW_CAPABILITIES
    }

    /// Logs in (through the token cache) and points the partner webhook at our ingress.
    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        let current: WebhookAnswer =
            self.api(ctx, "digital99.get_webhook", Method::GET, "settings/getWebhook", NO_BODY, true).await?;
        let ours = current.url.as_deref() == Some(ctx.webhook_url.expose());
        if ours {
            *lock(&self.webhook_set) = Some(hex::encode(Sha256::digest(ctx.webhook_url.expose().as_bytes())));
        } else {
            self.ensure_webhook(ctx, true).await?;
        }
        let mut fields = BTreeMap::new();
        if let Credentials::Digital99 { client_id, .. } = &ctx.credentials {
            fields.insert("client_id".to_string(), client_id.clone());
        }
        fields.insert("webhook".to_string(), if ours { "already set" } else { "set" }.to_string());
        Ok(CredentialsCheck { summary: "99digital credentials accepted; partner webhook points at us".into(), fields })
    }

    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        webhook::parse(body)
    }

    /// `deleteAccount`: reason 25 (finished) is `Precondition`, 26 `NotFound` [C].
    async fn cancel(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        let number = digits(&handle.external_key);
        let body = DeleteAccountRequest { whatsapp: &number };
        // One attempt: a repeated delete after a lost answer would read as "not found".
        let _: Envelope = self
            .api(ctx, "digital99.delete_account", Method::DELETE, "whatsapp/deleteAccount", Some(&body), false)
            .await?;
        Ok(CancelOutcome { raw_status: "DELETED".into(), refunded_days: 0 })
    }

    fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec> {
        let register = matches!(&req.payload, StartPayload::Digital99(s) if s.register_number.is_some());
        vec![
            Digital99Step::RegisterNumber.spec().entering(OnboardingState::Pending).enabled(register),
            Digital99Step::VerifyNumber
                .spec()
                .entering(OnboardingState::AwaitingCustomer)
                .enabled(register)
                .not_polled()
                // [I] Codes are not documented to expire; a day to type one in.
                .deadline(Duration::from_secs(24 * 3600)),
            Digital99Step::CreateAccount.spec().entering(OnboardingState::Pending),
            // [I] Links are not documented to expire; a week before the watchdog stalls it.
            Digital99Step::AwaitCustomer.spec().deadline(Duration::from_secs(7 * 24 * 3600)),
        ]
    }

    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        match step_of::<Digital99Step>(ProviderKind::Digital99, run)? {
            Digital99Step::RegisterNumber => self.register_number(ctx, run).await,
            Digital99Step::VerifyNumber => self.verify_number(ctx, run).await,
            Digital99Step::CreateAccount => self.create_account(ctx, &run.request).await,
            Digital99Step::AwaitCustomer => self.await_customer(ctx, run).await,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn partner_token(&self) -> Option<&dyn PartnerTokenOps> {
        Some(self)
    }

    fn verification(&self) -> Option<&dyn VerificationOps> {
        Some(self)
    }
}

#[async_trait]
impl PartnerTokenOps for Digital99Provider {
    async fn refresh_partner_token(&self, ctx: &CallContext) -> Result<TokenStatus, ProviderError> {
        self.tokens.invalidate();
        self.tokens.get_or_refresh(|| self.fetch_token(ctx)).await?;
        Ok(self.tokens.status())
    }

    fn partner_token_status(&self) -> TokenStatus {
        self.tokens.status()
    }
}

impl VerificationOps for Digital99Provider {
    /// [I] A 6-digit code ("likely … 6-digit `code`"; the endpoint is not published).
    fn validate_code(&self, code: &str) -> Result<(), ProviderError> {
        let code = code.trim();
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err(invalid("code", "must be the 6-digit code sent to the number"))
        }
    }
}
