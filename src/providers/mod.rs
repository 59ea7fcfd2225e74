//! The `Provider` port (design §5): one minimal, dyn-compatible trait that every BSP adapter
//! implements, its domain types and error, the per-account registry, an in-memory fake and
//! the conformance suite every adapter must pass (one shared suite, as `object_store` has, so
//! no adapter can pass checks of its own choosing).
//!
//! Adapters never touch the store: the engine persists what they return.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::domain::{Capability, ProviderKind};

pub mod accounts;
pub mod builtin;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod digital99;
pub mod error;
pub mod exotel;
pub mod ext;
pub mod gupshup;
pub mod http;
pub mod memory;
pub mod registry;
pub mod steps;
pub mod types;
pub mod whapi;

pub use error::ProviderError;
pub use ext::*;
pub use memory::InMemoryProvider;
pub use registry::{ProviderFactory, ProviderRegistry};
pub use steps::*;
pub use types::*;

/// One provider adapter, bound to one account (see [`ProviderRegistry`]).
///
/// # Contract
///
/// - Methods outside [`Provider::capabilities`] return [`ProviderError::NotSupported`].
/// - Errors are semantic ([`ProviderError`]) and keep the provider's raw code; no message ever
///   holds a credential, token or webhook secret.
/// - A method that may have acted but cannot tell returns [`ProviderError::UnknownOutcome`];
///   callers then go through a reconciling call, never a blind repeat.
/// - Implementations keep no per-onboarding state the engine relies on: everything needed
///   later is in the returned [`ProviderHandle`].
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// Which provider this adapter speaks to.
    fn kind(&self) -> ProviderKind;

    /// What this adapter actually offers: a subset of `self.kind().capabilities()` (the
    /// provider's API may offer more than we built).
    fn capabilities(&self) -> &[Capability];

    /// Tests the account's credentials with a cheap authenticated call.
    ///
    /// Rejected credentials are [`ProviderError::Unauthenticated`], not an `Ok` with a flag.
    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError>;

    /// Creates the provider-side resource (app link, hosted link, channel, 99digital link).
    ///
    /// MUST be safe to call again with the same `req.idempotency_key` after any error,
    /// including [`ProviderError::UnknownOutcome`]: with [`Capability::Lookup`] it first
    /// looks the resource up and, when an earlier attempt made it, returns that same
    /// resource with `reconciled = true` instead of creating a second one. A provider
    /// without a lookup (Exotel) does not claim the capability and never claims
    /// `reconciled`; what a lost create made must then be harmless (an unused link lapses).
    async fn start_onboarding(&self, ctx: &CallContext, req: &StartRequest) -> Result<StartOutcome, ProviderError>;

    /// Reads the resource's current status. Read-only and safe to repeat.
    async fn poll(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<Observation, ProviderError>;

    /// Decodes a callback body (already authenticated by the ingress) into events.
    ///
    /// Pure: no I/O, no state. Garbage is [`ProviderError::Malformed`], never a panic; the
    /// same body always yields the same dedupe keys, so redeliveries dedupe.
    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError>;

    /// Cancels the onboarding at the provider (delete the channel / link).
    ///
    /// [`ProviderError::NotSupported`] without [`Capability::Cancel`];
    /// [`ProviderError::Precondition`] once the onboarding is finished (live or terminal).
    async fn cancel(&self, ctx: &CallContext, handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError>;

    /// Checks a start request before anything is stored or sent, so bad input is refused
    /// synchronously (`INVALID_ARGUMENT` with the field path) with no provider call. The
    /// default accepts everything; adapters check what the provider would refuse.
    fn validate_start(&self, ctx: &CallContext, req: &StartRequest) -> Result<(), ProviderError> {
        let _ = (ctx, req);
        Ok(())
    }

    /// The create call `run` is about to send, when it creates a resource the provider may
    /// later report as already existing (Gupshup's link: one app per phone): the engine records
    /// it before the call and binds what the call returns to this onboarding alone. `None` (the
    /// default) for steps that create nothing or whose resources cannot be found by others.
    fn create_scope(&self, ctx: &CallContext, run: &StepRun) -> Option<CreateScope> {
        let _ = (ctx, run);
        None
    }

    /// The ordered steps for an onboarding with this request. The default is
    /// [`default_pipeline`]: `start` (via [`Provider::start_onboarding`]) then `await_live`
    /// (via [`Provider::poll`]). Adapters with more steps override this and
    /// [`Provider::run_step`] together.
    fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec> {
        let _ = req;
        default_pipeline()
    }

    /// Runs one step of [`Provider::pipeline`]. MUST be safe to repeat (see [`steps`]).
    /// Errors are classified by the engine: retryable ones back off and retry (bounded),
    /// `Unauthenticated` moves the onboarding to `REAUTH_REQUIRED`, others fail it.
    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        default_run_step(self, ctx, run).await
    }

    /// How often a waiting onboarding is polled by default (adapters tune per step through
    /// [`Progress::Wait`]).
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }

    /// Webhook subscriptions on onboarded resources, when the provider has them.
    fn subscriptions(&self) -> Option<&dyn SubscriptionOps> {
        None
    }

    /// The account-level partner token, when the provider has one.
    fn partner_token(&self) -> Option<&dyn PartnerTokenOps> {
        None
    }

    /// The expiry of the account's long-lived credential, when the provider's credentials
    /// expire and the account declares when (Gupshup client secret). No provider call.
    fn credential_expiry(&self, _ctx: &CallContext) -> Option<CredentialExpiry> {
        None
    }

    /// Batch hosted links, when the provider has them.
    fn hosted_links(&self) -> Option<&dyn HostedLinkOps> {
        None
    }

    /// Channel management, when the provider has it.
    fn channels(&self) -> Option<&dyn ChannelOps> {
        None
    }

    /// Number verification, when the provider has it.
    fn verification(&self) -> Option<&dyn VerificationOps> {
        None
    }
}

/// [`Provider::run_step`] for [`default_pipeline`]: `start` creates (reconciling), `await_live`
/// polls until `LIVE` or a terminal state.
pub async fn default_run_step<P: Provider + ?Sized>(
    p: &P,
    ctx: &CallContext,
    run: &StepRun,
) -> Result<StepOutcome, ProviderError> {
    match run.name.as_str() {
        STEP_START => {
            let out = p.start_onboarding(ctx, &run.request).await?;
            let mut step = StepOutcome::done(out.observation).handle(out.handle);
            if out.reconciled {
                step = step.attribute("reconciled", "true");
            }
            Ok(step)
        }
        STEP_AWAIT_LIVE => {
            let handle = run.handle.as_ref().ok_or_else(|| ProviderError::Precondition {
                raw: String::new(),
                message: "await_live ran before start recorded a handle".into(),
            })?;
            let obs = p.poll(ctx, handle).await?;
            Ok(match obs.state {
                Some(s) if s == crate::domain::OnboardingState::Live || s.is_terminal() => StepOutcome::done(obs),
                // A callback already made it LIVE and the provider's status view lags: done
                // (the engine keeps the state LIVE).
                _ if run.state == crate::domain::OnboardingState::Live => StepOutcome::done(obs),
                _ => StepOutcome::wait(p.poll_interval(), obs),
            })
        }
        other => Err(ProviderError::Precondition {
            raw: String::new(),
            message: format!("unknown step '{other}' for {}", p.kind()),
        }),
    }
}
