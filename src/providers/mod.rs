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
/// - The engine drives an onboarding through [`Provider::pipeline`] and
///   [`Provider::run_step`] alone (the conformance suite drives them the same way).
/// - Methods outside [`ProviderCapabilities::capabilities`] return
///   [`ProviderError::NotSupported`].
/// - Errors are semantic ([`ProviderError`]) and keep the provider's raw code; no message ever
///   holds a credential, token or webhook secret.
/// - A method that may have acted but cannot tell returns [`ProviderError::UnknownOutcome`];
///   callers then go through a reconciling call, never a blind repeat.
/// - Implementations keep no per-onboarding state the engine relies on: everything needed
///   later is in the returned [`ProviderHandle`], secret and step data.
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// Which provider this adapter speaks to.
    fn kind(&self) -> ProviderKind;

    /// What this adapter offers that no port accessor below stands for: the onboarding flow
    /// (`LinkApp`, `HostedLink`, `Lookup`, `Cancel`, callbacks...). Port capabilities
    /// ([`PORT_CAPABILITIES`]) listed here are ignored: they come from the port being `Some`
    /// (see [`ProviderCapabilities::capabilities`]), so the two cannot disagree.
    fn flow_capabilities(&self) -> &[Capability];

    /// Tests the account's credentials with a cheap authenticated call.
    ///
    /// Rejected credentials are [`ProviderError::Unauthenticated`], not an `Ok` with a flag.
    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError>;

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

    /// The ordered steps for an onboarding with this request, named by the adapter's
    /// [`PipelineStep`] enum (the one [`Provider::run_step`] matches on).
    fn pipeline(&self, req: &StartRequest) -> Vec<StepSpec>;

    /// Runs one step of [`Provider::pipeline`]. MUST be safe to repeat (see [`steps`]): a
    /// create looks first (with [`Capability::Lookup`]) and returns the resource an earlier,
    /// lost attempt made. A name the pipeline does not have is [`ProviderError::UnknownStep`].
    /// Errors are classified by the engine: retryable ones back off and retry (bounded),
    /// `Unauthenticated` moves the onboarding to `REAUTH_REQUIRED`, others fail it.
    async fn run_step(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError>;

    /// How often a waiting onboarding is polled by default (adapters tune per step through
    /// [`Progress::Wait`]).
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }

    /// Webhook subscriptions on onboarded resources, when the provider has them (grants
    /// [`Capability::Subscriptions`]).
    fn subscriptions(&self) -> Option<&dyn SubscriptionOps> {
        None
    }

    /// The account-level partner token, when the provider has one (grants
    /// [`Capability::PartnerToken`]).
    fn partner_token(&self) -> Option<&dyn PartnerTokenOps> {
        None
    }

    /// The expiry of the account's long-lived credential, when the provider's credentials
    /// expire and the account declares when (Gupshup client secret). No provider call.
    fn credential_expiry(&self, _ctx: &CallContext) -> Option<CredentialExpiry> {
        None
    }

    /// Batch hosted links, when the provider has them (grants [`Capability::BatchLinks`] and
    /// [`Capability::TokenValidation`]).
    fn hosted_links(&self) -> Option<&dyn HostedLinkOps> {
        None
    }

    /// Channel management, when the provider has it (grants the channel capabilities:
    /// lifecycle, connect code, mode, extend, delete with refund, balance).
    fn channels(&self) -> Option<&dyn ChannelOps> {
        None
    }

    /// Number verification, when the provider has it (grants
    /// [`Capability::NumberRegistration`]).
    fn verification(&self) -> Option<&dyn VerificationOps> {
        None
    }
}

/// One optional capability port of [`Provider`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// [`Provider::subscriptions`].
    Subscriptions,
    /// [`Provider::partner_token`].
    PartnerToken,
    /// [`Provider::hosted_links`].
    HostedLinks,
    /// [`Provider::channels`].
    Channels,
    /// [`Provider::verification`].
    Verification,
}

/// The capabilities each port grants. Only a port that is `Some` grants them;
/// [`Provider::flow_capabilities`] cannot.
pub const PORT_CAPABILITIES: [(Port, &[Capability]); 5] = [
    (Port::Subscriptions, &[Capability::Subscriptions]),
    (Port::PartnerToken, &[Capability::PartnerToken]),
    (Port::HostedLinks, &[Capability::BatchLinks, Capability::TokenValidation]),
    (
        Port::Channels,
        &[
            Capability::ChannelLifecycle,
            Capability::ConnectCode,
            Capability::ChannelMode,
            Capability::ExtendDays,
            Capability::DeleteRefund,
            Capability::PartnerBalance,
        ],
    ),
    (Port::Verification, &[Capability::NumberRegistration]),
];

impl Port {
    /// Whether `p` offers this port.
    pub fn offered_by<P: Provider + ?Sized>(self, p: &P) -> bool {
        match self {
            Self::Subscriptions => p.subscriptions().is_some(),
            Self::PartnerToken => p.partner_token().is_some(),
            Self::HostedLinks => p.hosted_links().is_some(),
            Self::Channels => p.channels().is_some(),
            Self::Verification => p.verification().is_some(),
        }
    }
}

/// What an adapter offers, derived in one place for every [`Provider`] (an adapter cannot
/// override it): its [`Provider::flow_capabilities`] without port capabilities, plus those
/// of each port it offers ([`PORT_CAPABILITIES`]). Sorted, without duplicates.
pub trait ProviderCapabilities {
    /// The derived capabilities: a subset of `self.kind().capabilities()`.
    fn capabilities(&self) -> Vec<Capability>;
}

impl<P: Provider + ?Sized> ProviderCapabilities for P {
    fn capabilities(&self) -> Vec<Capability> {
        let granted_by_a_port = |c: &Capability| PORT_CAPABILITIES.iter().any(|(_, caps)| caps.contains(c));
        let mut caps: Vec<Capability> =
            self.flow_capabilities().iter().copied().filter(|c| !granted_by_a_port(c)).collect();
        for (port, granted) in PORT_CAPABILITIES {
            if port.offered_by(self) {
                caps.extend_from_slice(granted);
            }
        }
        caps.sort();
        caps.dedup();
        caps
    }
}
