//! The `Provider` port (design §5): one minimal, dyn-compatible trait that every BSP adapter
//! implements, its domain types and error, the per-account registry, an in-memory fake and
//! the conformance suite every adapter must pass (style §1, after `object_store`).
//!
//! Adapters never touch the store: the engine persists what they return.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::domain::{Capability, ProviderKind};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod error;
pub mod http;
pub mod memory;
pub mod registry;
pub mod types;

pub use error::ProviderError;
pub use memory::InMemoryProvider;
pub use registry::{ProviderFactory, ProviderRegistry};
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
    /// including [`ProviderError::UnknownOutcome`]: it first looks the resource up and, when
    /// an earlier attempt made it, returns that same resource with `reconciled = true`
    /// instead of creating a second one.
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
}
