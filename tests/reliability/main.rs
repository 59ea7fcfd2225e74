//! Reliability suite (issue 9, items 1 to 3): fault injection against all four simulators,
//! crash recovery with SIGKILL on SQLite and on two PostgreSQL replicas, and a PostgreSQL
//! outage under load. Each test writes its measured figures as a Markdown fragment under
//! `target/reliability/`; `scripts/reliability-report` assembles them into `RELIABILITY.md`.
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

mod common;

mod crash;
mod delivery;
mod faults;
mod outage;
