//! wa-onboard: one gRPC API for onboarding businesses onto WhatsApp through several BSP
//! partner APIs (Gupshup, Exotel, Whapi.Cloud, 99digital).
//!
//! Layout: `domain` (pure types and the state machine), `core` (use cases over the `Store`
//! and `Provider` ports), `providers` (the `Provider` port, registry, in-memory fake,
//! conformance suite), `store` (SQLite and PostgreSQL), `grpc` (thin handlers),
//! `webhooks` (HTTP ingress), `delivery` (outbound events: signing, egress guard, senders),
//! `sim` (provider simulators), `listeners` (flood-hardened HTTP
//! and gRPC listeners), `app` (wiring).

pub mod app;
pub mod config;
pub mod core;
pub mod crypto;
pub mod delivery;
pub mod domain;
pub mod error;
#[cfg(test)]
mod fuzzing;
pub mod grpc;
mod listeners;
pub mod providers;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod webhooks;
