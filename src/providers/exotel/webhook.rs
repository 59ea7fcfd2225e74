//! Exotel callbacks: there are none. Exotel publishes no callback or webhook for ISV
//! onboarding completion (docs/providers.md §2.3); completion is read from the token status.
//! Anything posted to the Exotel ingress is therefore refused as [`ProviderError::Malformed`].

use crate::providers::{CallbackEvent, ProviderError};

/// Refuses every body: Exotel documents no callbacks for hosted links.
pub(super) fn parse(body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
    Err(ProviderError::Malformed {
        message: format!(
            "Exotel sends no callbacks for ISV onboarding links; a {}-byte body was refused (token status is polled)",
            body.len()
        ),
    })
}
