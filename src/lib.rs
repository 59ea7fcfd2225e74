//! wa-onboard: one gRPC API for onboarding businesses onto WhatsApp through several BSPs.

pub mod domain;
pub mod sim;
pub mod store;
