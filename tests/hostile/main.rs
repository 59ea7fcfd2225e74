//! Hostile-input suite (issue 16): each test reproduces one attack a hostile tenant or an
//! anonymous client made against the service, over real sockets, and fails on the code before
//! its fix. Each writes what it sent and what it measured as a Markdown fragment
//! (`target/reliability/4N-hostile-*.md`); `scripts/reliability-report` assembles them into the
//! "Hostile input" section of `RELIABILITY.md`.
//!
//! One binary (faster to link), one module per area; shared plumbing in `common`.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../common/child.rs"]
mod child;

#[path = "../common/report.rs"]
mod report;

#[allow(dead_code)]
mod common;

// Cross-tenant app takeover and concurrent idempotent calls (items 1, 4, 11).
mod idempotency;
// Field limits, control characters, oversized errors and messages (items 5 to 8, 15).
mod inputs;
// Blocked streams, connection floods, revoked keys' streams (items 2, 3, 9).
mod transport;
// Per-tenant ids, the development key, webhook timing, file modes (items 10, 12 to 14).
mod tenancy;
