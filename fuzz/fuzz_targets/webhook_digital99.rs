#![no_main]
//! The digital99 callback parser, through the built-in adapter.

use wa_onboard::domain::Secret;
use wa_onboard::domain::account::Credentials;

#[macro_use]
#[path = "common.rs"]
mod common;

webhook_target!(Credentials::Digital99 { client_id: "c".into(), client_secret: Secret::new("s") });
