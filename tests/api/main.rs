//! Black-box tests: the real server on port 0, real gRPC over TCP, real SQLite (and
//! PostgreSQL where it matters). One binary (faster to link), one module per area.

mod helpers;

#[allow(dead_code)]
#[path = "../common/child.rs"]
mod child;

mod accounts;
mod auth;
mod capabilities;
mod connect;
mod delivery;
mod engine;
mod gupshup;
mod health_shutdown;
mod hosted;
mod observe;
mod security;
mod tls;
mod watch;
mod whapi;
