#![no_main]
//! The gupshup callback parser, through the built-in adapter.

use wa_onboard::domain::Secret;
use wa_onboard::domain::account::Credentials;

#[macro_use]
#[path = "common.rs"]
mod common;

webhook_target!(Credentials::Gupshup { email: "f@x".into(), secret: Secret::new("s") });
