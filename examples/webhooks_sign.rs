//! Signs and sends webhooks with wa-onboard's own delivery code, for `scripts/webhooks-check`,
//! which verifies what arrives with the published Standard Webhooks library.
//!
//! `webhooks_sign <receiver base URL>` POSTs through the real sender (development egress
//! policy: loopback allowed):
//! - `/single`: event `evt_single`, signed now with secret A;
//! - `/rotated`: event `evt_rotated`, signed now while A is rotated to B (both signatures);
//! - `/stale`: event `evt_stale`, signed with A ten minutes ago (outside the replay window).
//!
//! Then prints one JSON object: both secrets, the statuses, and our signature of the
//! specification's test vector.

use std::time::{Duration, SystemTime};

use wa_onboard::delivery::cloudevent::{CloudEvent, EventParts};
use wa_onboard::delivery::guard::{EgressPolicy, RequestLimits};
use wa_onboard::delivery::signing::{SigningKeys, SigningSecret};
use wa_onboard::delivery::webhook::{ExtraHeaders, WebhookRequest, WebhookSender};
use wa_onboard::domain::{EventKind, Secret};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let base = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: webhooks_sign <receiver base URL>"))?;
    let now = i64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs())?;
    let a = SigningSecret::generate();
    let b = SigningSecret::generate();
    let single = SigningKeys::new(a.clone());
    let rotated = SigningKeys::new(a.clone()).rotate(b.clone(), now + 3600);
    let sender = WebhookSender::new(
        EgressPolicy::development(),
        RequestLimits { timeout: Duration::from_secs(10), ..RequestLimits::default() },
    )?;
    let extra = ExtraHeaders::default();

    let mut statuses = serde_json::Map::new();
    for (path, keys, timestamp) in [("single", &single, now), ("rotated", &rotated, now), ("stale", &single, now - 600)]
    {
        let event = CloudEvent::new(EventParts {
            id: format!("evt_{path}"),
            source: "/wa-onboard/webhooks-check".into(),
            kind: EventKind::StateChanged.into(),
            subject: "onboardings/webhooks-check".into(),
            time_ms: now * 1000,
            reference: Some("check-ref".into()),
            data: serde_json::json!({"type": "state_changed", "note": "signed by wa-onboard"}),
        })?;
        let url = format!("{base}/{path}");
        let result =
            sender.send(&WebhookRequest { url: &url, extra_headers: &extra, keys, event: &event, timestamp }).await;
        let status = result.status.ok_or_else(|| anyhow::anyhow!("{url}: {:?}", result.error))?;
        statuses.insert(path.into(), status.into());
    }

    // The test vector of standard-webhooks/standard-webhooks (libraries/python/tests).
    let vector = SigningSecret::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))?;
    let vector_signature = vector.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
    let out = serde_json::json!({
        "secret_a": a.expose().expose(),
        "secret_b": b.expose().expose(),
        "statuses": statuses,
        "vector_signature": vector_signature,
    });
    println!("{out}");
    Ok(())
}
