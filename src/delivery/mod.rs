//! Outbound delivery (issue 19, in progress): the self-contained parts that push each event of
//! the log to callers. Nothing here touches the store or the engine yet; the next step wires
//! these to a transactional outbox, the store backends, a `DeliveryService` and the engine's
//! lease pattern (see `docs/architecture.md`, "Outbound delivery").
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
