//! Outbound delivery (issue 19): the self-contained parts that push each event of the log to
//! callers. Nothing here touches the store or the engine: the store's `Deliveries` area (the
//! transactional outbox), `core::delivery` (the `DeliveryService` use cases) and
//! `core::delivery_worker` (the lease-claimed sender) call them (see `docs/architecture.md`,
//! "Outbound delivery").
//!
//! - [`cloudevent`]: the message, a CloudEvents 1.0 JSON event;
//! - [`signing`]: Standard Webhooks secrets, signatures and headers;
//! - [`guard`]: egress safety (URL checks, address allow/deny lists, the resolver that checks
//!   resolved addresses at connect time, the client without redirects);
//! - [`retry`]: the pure retry policy (schedule with full jitter, `Retry-After`, outcomes);
//! - [`webhook`]: one HTTPS attempt through the guarded client;
//! - [`nats`]: the JetStream publisher (`Nats-Msg-Id`, duplicate-aware acks).

pub mod cloudevent;
pub mod guard;
pub mod nats;
pub mod retry;
pub mod signing;
pub mod webhook;
