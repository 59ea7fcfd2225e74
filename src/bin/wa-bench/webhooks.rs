//! Webhook load: Gupshup `account-event` callbacks (the v2 envelope of docs/providers.md 1.4)
//! posted to the ingress over HTTP/1.1 keep-alive connections, either paced (open loop, a
//! fixed rate) or as fast as the ingress answers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::streams::{Recorder, SEQ_ATTR};
use crate::util::quantile;

/// A Gupshup tier event for `app_id`, carrying `seq` (which the service keeps as an event
/// attribute) and a provider timestamp.
pub(crate) fn event_body(app_id: &str, seq: u64, timestamp_ms: i64) -> Vec<u8> {
    serde_json::json!({
        "app": "BenchApp", "appId": app_id, "phone": "919000000000", "timestamp": timestamp_ms,
        "version": 2, "type": "account-event",
        "payload": {"type": "tier-event", "payload": {
            "event": "UPGRADE", "oldLimit": "TIER_1K", "currentLimit": "TIER_10K", SEQ_ATTR: seq.to_string()
        }}
    })
    .to_string()
    .into_bytes()
}

/// An HTTP client for `workers` concurrent connections.
pub(crate) fn client(workers: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")
}

/// What a paced run did.
#[derive(Debug)]
pub(crate) struct Paced {
    /// When each event's 2xx arrived, ns after the recorder's epoch (0: failed).
    pub done: Vec<u64>,
    /// Non-2xx answers or transport errors.
    pub errors: u64,
    /// Events per second actually sent.
    pub achieved_rate: f64,
    /// Largest delay of a send behind its schedule, ms.
    pub max_lag_ms: f64,
}

/// Posts `total` events at `rate` per second (event `i` due at `i / rate` s), each built by
/// `body(i)`, with up to `workers` in flight.
pub(crate) async fn paced(
    url: &str,
    total: u64,
    rate: f64,
    workers: usize,
    rec: &Arc<Recorder>,
    body: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
) -> Result<Paced> {
    let http = client(workers)?;
    let next = Arc::new(AtomicU64::new(0));
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, next, done, errors, lag, rec, body) =
            (http.clone(), next.clone(), done.clone(), errors.clone(), lag.clone(), rec.clone(), body.clone());
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                lag.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                match http.post(&url).header("content-type", "application/json").body(body(i)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let at = rec.now();
                        let _ = r.bytes().await;
                        done[i as usize].store(at, Ordering::SeqCst);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(Paced {
        done: done.iter().map(|d| d.load(Ordering::SeqCst)).collect(),
        errors: errors.load(Ordering::SeqCst),
        achieved_rate: total as f64 / elapsed.max(1e-9),
        max_lag_ms: lag.load(Ordering::SeqCst) as f64 / 1000.0,
    })
}

/// What a closed-loop flood did.
#[derive(Debug)]
pub(crate) struct Flood {
    /// Events stored (answer `accepted`), or 2xx answers for a plain GET.
    pub accepted: u64,
    /// Answers `duplicates` (acknowledged, not stored again).
    pub duplicates: u64,
    /// Non-2xx or transport errors.
    pub errors: u64,
    /// Measured seconds.
    pub secs: f64,
    /// Median 2xx latency, ms.
    pub p50_ms: f64,
    /// 99th percentile 2xx latency, ms.
    pub p99_ms: f64,
}

impl Flood {
    /// Accepted per second.
    pub(crate) fn rate(&self) -> f64 {
        self.accepted as f64 / self.secs.max(1e-9)
    }
}

/// Posts as fast as `workers` connections allow for `secs`; every `dup_every`-th request
/// re-sends a body already accepted (a provider retry). `body == None`: `GET url` instead
/// (the ingress's own ceiling).
pub(crate) async fn flood(
    url: &str,
    workers: usize,
    secs: f64,
    dup_every: u64,
    body: Option<Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>>,
) -> Result<Flood> {
    let http = client(workers)?;
    let counter = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let recent: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::new(Mutex::new(VecDeque::new()));
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, counter, accepted, duplicates, errors, recent, lat, body) = (
            http.clone(),
            counter.clone(),
            accepted.clone(),
            duplicates.clone(),
            errors.clone(),
            recent.clone(),
            lat.clone(),
            body.clone(),
        );
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let Some(make) = &body else {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            accepted.fetch_add(1, Ordering::Relaxed);
                            mine.push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                };
                let dup = if dup_every > 0 && i % dup_every == dup_every - 1 {
                    let r = recent.lock().unwrap_or_else(|e| e.into_inner());
                    r.get((i as usize / 7) % r.len().max(1)).cloned()
                } else {
                    None
                };
                let is_dup = dup.is_some();
                let b = dup.unwrap_or_else(|| make(i));
                match http.post(&url).header("content-type", "application/json").body(b.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        mine.push(started.elapsed().as_secs_f64() * 1000.0);
                        let a = v.get("accepted").and_then(serde_json::Value::as_u64).unwrap_or(0);
                        let d = v.get("duplicates").and_then(serde_json::Value::as_u64).unwrap_or(0);
                        accepted.fetch_add(a, Ordering::Relaxed);
                        duplicates.fetch_add(d, Ordering::Relaxed);
                        if a > 0 && !is_dup {
                            let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
                            r.push_back(b);
                            if r.len() > 1000 {
                                r.pop_front();
                            }
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *lat.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Flood {
        accepted: accepted.load(Ordering::SeqCst),
        duplicates: duplicates.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
        secs,
        p50_ms: quantile(&mut l, 0.5),
        p99_ms: quantile(&mut l, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_sequence_and_differ() {
        let a: serde_json::Value = serde_json::from_slice(&event_body("app-1", 7, 1000)).unwrap();
        assert_eq!(a["appId"], "app-1");
        assert_eq!(a["payload"]["payload"][SEQ_ATTR], "7");
        assert_ne!(event_body("app-1", 7, 1000), event_body("app-1", 8, 1000));
    }
}
