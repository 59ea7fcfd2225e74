#![no_main]
//! The whapi callback parser, through the built-in adapter.

use wa_onboard::domain::Secret;
use wa_onboard::domain::account::Credentials;

#[macro_use]
#[path = "common.rs"]
mod common;

webhook_target!(Credentials::Whapi { partner_token: Secret::new("t") });
