//! Pure domain types: typed ids, providers and capabilities, the canonical onboarding state
//! machine, pipeline steps, secrets. Imports nothing else of ours.

pub mod account;
pub mod api_key;
pub mod details;
pub mod event;
pub mod ids;
pub mod modes;
pub mod page;
pub mod pipeline;
pub mod provider;
pub mod secret;
pub mod state;

pub use details::{
    DetailsError, Digital99Details, ExotelDetails, GupshupDetails, OnboardingDetails, ProviderFields,
    RequestedSubscription, WhapiDetails,
};
pub use event::{EventKind, Patch};
pub use ids::*;
pub use modes::{ChannelMode, WebhookMode};
pub use page::{Page, PageRequest};
pub use pipeline::StepState;
pub use provider::{Capability, ProviderKind};
pub use secret::Secret;
pub use state::OnboardingState;

/// Milliseconds since the Unix epoch: the one time unit stored and compared everywhere.
pub type UnixMs = i64;

/// Current wall-clock time in [`UnixMs`].
pub fn now_ms() -> UnixMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
