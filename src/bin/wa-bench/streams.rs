//! Many server streams over a fixed number of HTTP/2 connections: `WatchOnboarding` and, as
//! the stack's baseline, `grpc.health.v1.Health/Watch`. Every message is timestamped on
//! arrival into a shared [`Recorder`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wa_onboard::domain::OnboardingId;
use wa_onboard::grpc::pb;
use wa_onboard::grpc::pb::onboarding_service_client::OnboardingServiceClient;
use wa_onboard::grpc::pb::watch_onboarding_response::Message as M;

/// Attribute of a bench webhook event carrying its sequence number.
pub(crate) const SEQ_ATTR: &str = "bench_seq";
const NONE: u64 = u64::MAX;

/// What the streams saw.
pub(crate) struct Recorder {
    /// Time zero of every timestamp here.
    pub epoch: Instant,
    /// First arrival per bench sequence, ns after `epoch` (0: not yet).
    pub arrivals: Vec<AtomicU64>,
    /// Arrivals of the broadcast under test (one event to many watchers, or health
    /// NOT_SERVING), ns after `epoch`.
    pub broadcast: Mutex<Vec<u64>>,
    broadcast_seq: AtomicU64,
    /// Streams whose first message arrived.
    pub opened: AtomicUsize,
    /// Streams that could not open.
    pub failed: AtomicUsize,
    /// Streams that ended (server closed or error).
    pub ended: AtomicUsize,
    /// Heartbeats received.
    pub heartbeats: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
}

impl Recorder {
    /// A recorder for bench sequences `0..seqs`.
    pub(crate) fn new(epoch: Instant, seqs: usize) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            arrivals: (0..seqs).map(|_| AtomicU64::new(0)).collect(),
            broadcast: Mutex::new(Vec::new()),
            broadcast_seq: AtomicU64::new(NONE),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            heartbeats: AtomicU64::new(0),
            events: AtomicU64::new(0),
        })
    }

    /// ns since `epoch`, at least 1.
    pub(crate) fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Records every arrival of `seq` into [`Recorder::broadcast`].
    pub(crate) fn expect_broadcast(&self, seq: u64) {
        self.broadcast.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.broadcast_seq.store(seq, Ordering::SeqCst);
    }

    /// Broadcast arrivals so far.
    pub(crate) fn broadcast_arrivals(&self) -> Vec<u64> {
        self.broadcast.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push_broadcast(&self, at: u64) {
        self.broadcast.lock().unwrap_or_else(|e| e.into_inner()).push(at);
    }

    fn on_onboarding(&self, m: pb::WatchOnboardingResponse) {
        let at = self.now();
        match m.message {
            Some(M::Event(e)) => {
                self.events.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = e.attributes.get(SEQ_ATTR).and_then(|s| s.parse::<u64>().ok()) {
                    if seq == self.broadcast_seq.load(Ordering::Relaxed) {
                        self.push_broadcast(at);
                    }
                    if let Some(slot) = self.arrivals.get(seq as usize) {
                        let _ = slot.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
                    }
                }
            }
            Some(M::Heartbeat(_)) => {
                self.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn on_health(&self, status: i32) {
        if status == ServingStatus::NotServing as i32 {
            self.push_broadcast(self.now());
        }
    }

    /// Waits until `n` streams opened (error if any failed or it takes over `limit`).
    pub(crate) async fn wait_opened(&self, n: usize, limit: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let (ok, bad) = (self.opened.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst));
            if bad > 0 {
                bail!("{bad} of {n} streams failed to open");
            }
            if ok >= n {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!("only {ok} of {n} streams opened within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Open streams; dropping or closing ends them.
pub(crate) struct StreamSet {
    tasks: Vec<JoinHandle<()>>,
    _channels: Vec<Channel>,
}

impl StreamSet {
    /// Cancels every stream (RST_STREAM) and closes the connections.
    pub(crate) fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for StreamSet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(crate::server::channel(addr).await?);
    }
    Ok(v)
}

/// Opens one `WatchOnboarding` per entry of `targets` over `conns` connections.
pub(crate) async fn open_onboarding(
    addr: SocketAddr,
    targets: &[OnboardingId],
    conns: usize,
    rec: &Arc<Recorder>,
) -> Result<StreamSet> {
    let chans = channels(addr, conns).await?;
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(targets.len());
    for (i, id) in targets.iter().enumerate() {
        let mut client = OnboardingServiceClient::new(chans[i % chans.len()].clone());
        let rec = rec.clone();
        let gate = gate.clone();
        let name = format!("onboardings/{id}");
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let req = crate::server::authed(pb::WatchOnboardingRequest { name, after_sequence: 0 });
            let mut s = match client.watch_onboarding(req).await {
                Ok(r) => r.into_inner(),
                Err(_) => {
                    rec.failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            match s.message().await {
                Ok(Some(first)) => {
                    rec.on_onboarding(first);
                    rec.opened.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    rec.failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            drop(permit);
            while let Ok(Some(m)) = s.message().await {
                rec.on_onboarding(m);
            }
            rec.ended.fetch_add(1, Ordering::SeqCst);
        }));
    }
    Ok(StreamSet { tasks, _channels: chans })
}

/// Opens `n` `Health/Watch("")` streams over `conns` connections.
pub(crate) async fn open_health(addr: SocketAddr, n: usize, conns: usize, rec: &Arc<Recorder>) -> Result<StreamSet> {
    let chans = channels(addr, conns).await?;
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = HealthClient::new(chans[i % chans.len()].clone());
        let rec = rec.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut s = match client.watch(HealthCheckRequest { service: String::new() }).await {
                Ok(r) => r.into_inner(),
                Err(_) => {
                    rec.failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            match s.message().await {
                Ok(Some(first)) => {
                    rec.on_health(first.status);
                    rec.opened.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    rec.failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            drop(permit);
            while let Ok(Some(m)) = s.message().await {
                rec.on_health(m.status);
            }
            rec.ended.fetch_add(1, Ordering::SeqCst);
        }));
    }
    Ok(StreamSet { tasks, _channels: chans })
}
