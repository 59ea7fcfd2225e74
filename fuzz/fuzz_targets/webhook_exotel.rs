#![no_main]
//! The exotel callback parser, through the built-in adapter.

use wa_onboard::domain::Secret;
use wa_onboard::domain::account::Credentials;

#[macro_use]
#[path = "common.rs"]
mod common;

webhook_target!(Credentials::Exotel { account_sid: "a".into(), api_key: "k".into(), api_token: Secret::new("t") });
