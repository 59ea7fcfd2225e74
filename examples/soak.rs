//! Soak driver (issue 9 item 6; run by `scripts/soak`, not by CI).
//!
//! Starts the given `wa-onboard` binary on a fresh PostgreSQL schema in sandbox mode, then
//! for `--secs` seconds keeps up mixed load: onboardings on all four sandbox providers,
//! unary reads, `--streams` open `WatchOnboarding` streams, and webhook deliveries (valid,
//! duplicate and malformed). Every `--sample-secs` it reads the server's RSS and open file
//! descriptors from `/proc`. At the end it lets the work settle and checks consistency: every
//! onboarding in an expected state and every event log gap-free. Prints a Markdown report
//! (also written to `--out`); exits non-zero when a check fails.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wa_onboard::grpc::pb;

#[derive(Debug)]
struct Args {
    bin: String,
    secs: u64,
    streams: usize,
    sample_secs: u64,
    database: String,
    out: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bin: "target/release/wa-onboard".into(),
        secs: 600,
        streams: 2000,
        sample_secs: 5,
        database: std::env::var("WA_ONBOARD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--bin" => a.bin = v()?,
            "--secs" => a.secs = v()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--streams" => a.streams = v()?.parse().map_err(|e| format!("--streams: {e}"))?,
            "--sample-secs" => a.sample_secs = v()?.parse().map_err(|e| format!("--sample-secs: {e}"))?,
            "--database" => a.database = v()?,
            "--out" => a.out = Some(v()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Counters {
    unary_ok: AtomicU64,
    unary_err: AtomicU64,
    creates_ok: AtomicU64,
    creates_err: AtomicU64,
    stream_msgs: AtomicU64,
    stream_errs: AtomicU64,
    /// Streams open right now, and the most ever open at once.
    streams_open: AtomicU64,
    streams_open_max: AtomicU64,
    hooks_2xx: AtomicU64,
    hooks_4xx: AtomicU64,
    hooks_5xx_or_err: AtomicU64,
}

/// A step waiting for a slot of the provider's rate limit: READY, rescheduled (a next attempt
/// time in the future, within the longest provider window, 30 min, plus its slack), with the
/// limiter's `rate_limit_queue` code.
fn waits_for_rate_limit(step: &pb::PipelineStep) -> bool {
    let now_ms = wa_onboard::domain::now_ms();
    let next_ms = step.next_attempt_time.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    step.state == pb::StepState::Ready as i32
        && step.last_error_code == wa_onboard::providers::http::QUEUED
        && next_ms > now_ms
        && next_ms - now_ms <= 31 * 60 * 1000
}

fn req<T>(key: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Ok(v) = format!("Bearer {key}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn proc_sample(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

/// The 1-minute load average of the machine (the soak shares it with whatever else runs).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Now, as RFC 3339 UTC (seconds).
fn now_utc() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    prost_types::Timestamp { seconds: secs, nanos: 0 }.to_string()
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

fn create_request(i: u64) -> pb::CreateOnboardingRequest {
    use pb::create_onboarding_request::Request as R;
    let (account, r) = match i % 4 {
        0 => (
            "sandbox-gupshup",
            R::Gupshup(pb::GupshupLinkAppRequest {
                app_name: format!("SoakShop{i}"),
                waba_id: format!("{}", 100_000_000_000_000u64 + i),
                phone: format!("+9198{:08}", i),
                ..Default::default()
            }),
        ),
        1 => ("sandbox-exotel", R::Exotel(pb::ExotelLinkRequest::default())),
        2 => (
            "sandbox-whapi",
            R::Whapi(pb::WhapiChannelRequest { channel_name: format!("soak-{i}"), ..Default::default() }),
        ),
        _ => (
            "sandbox-digital99",
            R::Digital99(pb::Digital99LinkRequest {
                phone: format!("+1555{:07}", i),
                business_name: format!("Soak {i}"),
                display_name: format!("Soak {i}"),
                // The number is registered and verified first (the sandbox code, below).
                register_number: true,
                ..Default::default()
            }),
        ),
    };
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: format!("soak-{i}"),
        request_id: format!("soak-{i}"),
        onboarding_id: String::new(),
        request: Some(r),
    }
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<bool, String> {
    let a = args()?;
    let schema_url = wa_onboard::store::postgres::create_test_schema(&a.database).await.map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("wa-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("soak.toml");
    std::fs::write(
        &cfg,
        "[engine]\ntick_ms = 100\npoll_interval_ms = 1000\n\n[sandbox.sims.gupshup]\nstage_ms = 1000\n",
    )
    .map_err(|e| e.to_string())?;
    let key = format!("wao_soak{}", uuid::Uuid::new_v4().simple());
    let mut child = Command::new(&a.bin)
        .env("WA_ONBOARD_DEV_API_KEY", &key)
        .env("WA_ONBOARD_DATABASE_URL", &schema_url)
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&dir)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", a.bin))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("wa-onboard listening: gRPC ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| "the server did not start")?;
    let result = drive(&a, &addr, &key, pid).await;
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    let _ = wa_onboard::store::postgres::drop_schema(&schema_url).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (report, ok) = result?;
    println!("{report}");
    if let Some(out) = &a.out {
        std::fs::write(out, &report).map_err(|e| format!("{out}: {e}"))?;
    }
    Ok(ok)
}

async fn drive(a: &Args, addr: &str, key: &str, pid: u32) -> Result<(String, bool), String> {
    let connect = || async {
        Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())
    };
    let ch = connect().await?;
    let c = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let key = Arc::new(key.to_string());
    let names: Arc<tokio::sync::RwLock<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();

    // A webhook endpoint to post to (its URL is shown at creation only).
    let hook_url = pb::account_service_client::AccountServiceClient::new(ch.clone())
        .create_account(req(
            &key,
            pb::CreateAccountRequest {
                account_id: "soak-hooks".into(),
                account: Some(pb::Account {
                    provider: pb::Provider::Gupshup as i32,
                    display_name: "hooks".into(),
                    credentials: Some(pb::AccountCredentials {
                        credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                            email: "hooks@soak.test".into(),
                            secret: "x".into(),
                        })),
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .map_err(|e| format!("create hook account: {e}"))?
        .into_inner()
        .webhook_url;

    // Onboardings: one every 2 s, rotating the four providers (within Gupshup's 10/min).
    {
        let (c, stop, key, names, ch) = (c.clone(), stop.clone(), key.clone(), names.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut cl = pb::onboarding_service_client::OnboardingServiceClient::new(ch);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match cl.create_onboarding(req(&key, create_request(i))).await {
                    Ok(o) => {
                        c.creates_ok.fetch_add(1, Ordering::Relaxed);
                        let name = o.into_inner().name;
                        if i % 4 == 3 {
                            // 99digital: the business owner types the SMS code (sandbox: 123456)
                            // once the code was sent.
                            let (mut v, key, name) = (cl.clone(), key.clone(), name.clone());
                            tokio::spawn(async move {
                                for _ in 0..120 {
                                    let m =
                                        pb::SubmitVerificationCodeRequest { name: name.clone(), code: "123456".into() };
                                    if v.submit_verification_code(req(&key, m)).await.is_ok() {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            });
                        }
                        names.write().await.push(name);
                    }
                    Err(_) => {
                        c.creates_err.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    // Wait for a first onboarding so streams and reads have something to name.
    let t0 = Instant::now();
    while names.read().await.is_empty() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Streams: `a.streams` open WatchOnboarding streams over 20 connections; a stream that
    // ends (finished onboarding) or fails is reopened on another onboarding.
    let conns = 20usize;
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(connect().await?);
    }
    for s in 0..a.streams {
        let (c, stop, key, names) = (c.clone(), stop.clone(), key.clone(), names.clone());
        let ch = channels[s % conns].clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = pb::onboarding_service_client::OnboardingServiceClient::new(ch);
            let mut n = s;
            while !stop.load(Ordering::Relaxed) {
                let name = {
                    let v = names.read().await;
                    if v.is_empty() { None } else { Some(v[n % v.len()].clone()) }
                };
                n += 7;
                let Some(name) = name else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                match cl.watch_onboarding(req(&key, pb::WatchOnboardingRequest { name, after_sequence: 0 })).await {
                    Ok(st) => {
                        let mut st = st.into_inner();
                        let open = c.streams_open.fetch_add(1, Ordering::Relaxed) + 1;
                        c.streams_open_max.fetch_max(open, Ordering::Relaxed);
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            match tokio::time::timeout(Duration::from_secs(2), st.message()).await {
                                Ok(Ok(Some(_))) => {
                                    c.stream_msgs.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Ok(None)) => break,
                                Ok(Err(_)) => {
                                    c.stream_errs.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Err(_) => {}
                            }
                        }
                        c.streams_open.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        c.stream_errs.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }));
    }

    // Unary reads: 8 workers, mixed RPCs.
    for w in 0..8u64 {
        let (c, stop, key, names, ch) = (c.clone(), stop.clone(), key.clone(), names.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut o = pb::onboarding_service_client::OnboardingServiceClient::new(ch.clone());
            let mut p = pb::pipeline_service_client::PipelineServiceClient::new(ch.clone());
            let mut pr = pb::provider_service_client::ProviderServiceClient::new(ch.clone());
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let name = {
                    let v = names.read().await;
                    v.get((i as usize) % v.len().max(1)).cloned().unwrap_or_default()
                };
                let ok = match i % 5 {
                    0 => o.get_onboarding(req(&key, pb::GetOnboardingRequest { name })).await.is_ok(),
                    1 => o
                        .list_onboardings(req(&key, pb::ListOnboardingsRequest { page_size: 50, ..Default::default() }))
                        .await
                        .is_ok(),
                    2 => p.get_pipeline(req(&key, pb::GetPipelineRequest { name })).await.is_ok(),
                    3 => o
                        .list_onboarding_events(req(
                            &key,
                            pb::ListOnboardingEventsRequest { name, page_size: 100, ..Default::default() },
                        ))
                        .await
                        .is_ok(),
                    _ => pr.list_providers(req(&key, pb::ListProvidersRequest::default())).await.is_ok(),
                };
                if ok { &c.unary_ok } else { &c.unary_err }.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Webhooks: 5/s, valid account events (for apps we do not know), duplicates, garbage.
    {
        let (c, stop) = (c.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = match i % 4 {
                    3 => b"not json".to_vec(),
                    n => serde_json::json!({
                        "app": "soak", "appId": format!("00000000-0000-4000-8000-{:012}", i / 2),
                        "timestamp": 1_700_000_000_000u64 + i / 2, "version": 2, "type": "account-event",
                        "payload": {"type": "tier-event", "payload": {"event": format!("TIER_{n}")}}
                    })
                    .to_string()
                    .into_bytes(),
                };
                match http.post(&hook_url).body(body).send().await {
                    Ok(r) if r.status().is_success() => c.hooks_2xx.fetch_add(1, Ordering::Relaxed),
                    Ok(r) if r.status().is_client_error() => c.hooks_4xx.fetch_add(1, Ordering::Relaxed),
                    _ => c.hooks_5xx_or_err.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Sampling.
    let start = Instant::now();
    let (started_at, load_start) = (now_utc(), load_average());
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    // Streams open at each sample, for the over-time table.
    let mut open_at: Vec<u64> = Vec::new();
    while start.elapsed() < Duration::from_secs(a.secs) {
        let (rss, fds) = proc_sample(pid);
        samples.push((start.elapsed().as_secs_f64(), rss, fds));
        open_at.push(c.streams_open.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(a.sample_secs.max(1))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let (rss_end, fds_end) = proc_sample(pid);
    let load_secs = start.elapsed().as_secs_f64();
    let load_end = load_average();

    // Settle, then check consistency.
    let mut o = pb::onboarding_service_client::OnboardingServiceClient::new(ch.clone());
    let mut pl = pb::pipeline_service_client::PipelineServiceClient::new(ch.clone());
    let all = names.read().await.clone();
    let expected = |s: i32| {
        use pb::OnboardingState as S;
        let s = S::try_from(s).unwrap_or(S::Unspecified);
        match s {
            S::Live => true,
            // Hosted links and codes wait on a (simulated) customer who may not be done yet.
            // PENDING (no step started yet) is allowed while work settles, not after.
            S::AwaitingCustomer | S::Provisioning | S::Pending => true,
            _ => false,
        }
    };
    let settle_start = Instant::now();
    let settle_until = settle_start + Duration::from_secs(60);
    // (provider, state) -> (onboardings, age in s of the oldest one not LIVE).
    let mut states: BTreeMap<(String, String), (usize, i64)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut pending;
    let mut queued;
    let mut events_total;
    loop {
        states.clear();
        problems.clear();
        pending = Vec::new();
        queued = 0usize;
        events_total = 0usize;
        for name in &all {
            let ob = match o.get_onboarding(req(&key, pb::GetOnboardingRequest { name: name.clone() })).await {
                Ok(x) => x.into_inner(),
                Err(e) => {
                    problems.push(format!("{name}: get failed: {}", e.message()));
                    continue;
                }
            };
            let st = pb::OnboardingState::try_from(ob.state).map(|s| s.as_str_name().to_string()).unwrap_or_default();
            let provider = pb::Provider::try_from(ob.provider).map(|p| p.as_str_name()).unwrap_or("?");
            let short = |s: &str, prefix: &str| s.strip_prefix(prefix).unwrap_or(s).to_string();
            let entry = states.entry((short(provider, "PROVIDER_"), short(&st, "ONBOARDING_STATE_"))).or_insert((0, 0));
            entry.0 += 1;
            if ob.state != pb::OnboardingState::Live as i32 {
                let created_ms = ob.create_time.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
                entry.1 = entry.1.max((wa_onboard::domain::now_ms() - created_ms) / 1000);
            }
            if ob.state == pb::OnboardingState::Pending as i32 {
                // Not stuck when its step waits for a slot of the provider's own rate limit
                // (Whapi: 20 channels per 30 min, far below what this load asks for): the
                // engine rescheduled it for when the slot frees, without counting an attempt.
                match pl.get_pipeline(req(&key, pb::GetPipelineRequest { name: name.clone() })).await {
                    Ok(p) if p.get_ref().steps.iter().any(waits_for_rate_limit) => queued += 1,
                    Ok(_) => pending.push(name.clone()),
                    Err(e) => problems.push(format!("{name}: pipeline read failed: {}", e.message())),
                }
            }
            if !expected(ob.state) {
                problems.push(format!("{name}: unexpected state {st} ({})", ob.state_reason));
            }
            // The event log: sequences 1..=n with no gap, n = the onboarding's sequence.
            let mut seqs = Vec::new();
            let mut token = String::new();
            loop {
                let page = o
                    .list_onboarding_events(req(
                        &key,
                        pb::ListOnboardingEventsRequest {
                            name: name.clone(),
                            page_size: 1000,
                            page_token: token.clone(),
                        },
                    ))
                    .await
                    .map_err(|e| format!("events of {name}: {e}"))?
                    .into_inner();
                seqs.extend(page.events.iter().map(|e| e.sequence));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            events_total += seqs.len();
            let gap_free = seqs.iter().enumerate().all(|(i, s)| *s == i as i64 + 1);
            if !gap_free || seqs.last().copied().unwrap_or(0) < ob.sequence {
                problems.push(format!("{name}: event log not gap-free (n={}, sequence={})", seqs.len(), ob.sequence));
            }
        }
        if problems.is_empty() && pending.is_empty() {
            break;
        }
        if Instant::now() > settle_until {
            // Nothing new arrives any more: an onboarding that still has not started is stuck.
            problems.extend(pending.iter().map(|n| format!("{n}: still PENDING 60 s after the load stopped")));
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    // Figures.
    let warm: Vec<&(f64, u64, usize)> = samples.iter().filter(|s| s.0 >= load_secs * 0.2).collect();
    let xs: Vec<f64> = warm.iter().map(|s| s.0 / 60.0).collect();
    let ys: Vec<f64> = warm.iter().map(|s| s.1 as f64).collect();
    let rss_slope = slope(&xs, &ys);
    let rss_mean = if ys.is_empty() { 0.0 } else { ys.iter().sum::<f64>() / ys.len() as f64 };
    // "No growth trend": the fitted growth over the whole run stays under 10 % of the mean.
    let growth_pct = if rss_mean > 0.0 { rss_slope * (load_secs / 60.0) / rss_mean * 100.0 } else { 0.0 };
    let rss_ok = growth_pct < 10.0;
    let fd_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let fd_first = warm.first().map(|s| s.2).unwrap_or(0);
    let unary = c.unary_ok.load(Ordering::Relaxed) + c.unary_err.load(Ordering::Relaxed);
    let err_rate = if unary == 0 { 0.0 } else { c.unary_err.load(Ordering::Relaxed) as f64 / unary as f64 * 100.0 };
    let creates_err = c.creates_err.load(Ordering::Relaxed);
    let hooks_bad = c.hooks_5xx_or_err.load(Ordering::Relaxed);
    let ok = problems.is_empty() && rss_ok && err_rate < 0.1 && creates_err == 0 && hooks_bad == 0;

    let mut r = String::from("### Last soak run\n\n");
    r.push_str(&format!("`SOAK_SECS={} SOAK_STREAMS={} scripts/soak`\n\n", a.secs, a.streams));
    r.push_str(&format!(
        "Soak run of {started_at}: {:.0} s of load ({} streams requested), PostgreSQL, release binary, \
         sandbox simulators; {} cores, load average {load_start} at the start and {load_end} at the end \
         (the machine is shared).\n\n",
        load_secs,
        a.streams,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    r.push_str("| figure | value |\n|---|---|\n");
    r.push_str(&format!(
        "| unary calls (ok / failed) | {} / {} ({err_rate:.3} % errors) |\n",
        c.unary_ok.load(Ordering::Relaxed),
        c.unary_err.load(Ordering::Relaxed)
    ));
    r.push_str(&format!(
        "| onboardings created (ok / failed) | {} / {creates_err} |\n",
        c.creates_ok.load(Ordering::Relaxed)
    ));
    r.push_str(&format!(
        "| streams open at once (max) / stream messages received / stream errors | {} / {} / {} |\n",
        c.streams_open_max.load(Ordering::Relaxed),
        c.stream_msgs.load(Ordering::Relaxed),
        c.stream_errs.load(Ordering::Relaxed)
    ));
    r.push_str(&format!(
        "| webhooks 2xx / 4xx (malformed, expected) / 5xx or failed | {} / {} / {hooks_bad} |\n",
        c.hooks_2xx.load(Ordering::Relaxed),
        c.hooks_4xx.load(Ordering::Relaxed)
    ));
    r.push_str(&format!(
        "| RSS first / mean (after warm-up) / last | {} / {:.0} / {} KiB |\n",
        samples.first().map(|s| s.1).unwrap_or(0),
        rss_mean,
        rss_end
    ));
    r.push_str(&format!("| RSS trend (least squares, after warm-up) | {rss_slope:+.1} KiB/min = {growth_pct:+.2} % over the run ({}) |\n", if rss_ok { "no growth trend" } else { "GROWING" }));
    r.push_str(&format!("| open fds after warm-up / max / at end | {fd_first} / {fd_max} / {fds_end} |\n"));
    r.push_str(&format!(
        "| settling after the load (until no onboarding is PENDING, at most 60 s) | {:.0} s |\n",
        settle_start.elapsed().as_secs_f64()
    ));
    r.push_str(&format!(
        "| PENDING, queued on a provider rate limit (step rescheduled for its next slot; not stuck) | {queued} |\n"
    ));
    r.push_str(&format!("| events checked (gap-free logs) | {events_total} over {} onboardings |\n", all.len()));
    r.push_str(&format!("| consistency problems | {} |\n", problems.len()));
    for p in problems.iter().take(20) {
        r.push_str(&format!("\n- {p}"));
    }
    r.push_str(
        "\n\nOnboardings at the end, by provider and state (age: since creation, of the oldest one not \
                LIVE):\n\n| provider | state | onboardings | oldest not LIVE |\n|---|---|---|---|\n",
    );
    for ((provider, state), (n, age)) in &states {
        let age = if state == "LIVE" { "-".to_string() } else { format!("{age} s") };
        r.push_str(&format!("| {provider} | {state} | {n} | {age} |\n"));
    }
    r.push_str(&over_time(&samples, &open_at));
    r.push_str(&format!("\nResult: {}\n", if ok { "PASS" } else { "FAIL" }));
    Ok((r, ok))
}

/// RSS, fds and open streams over the run: the first sample of every minute, and the last.
fn over_time(samples: &[(f64, u64, usize)], open_at: &[u64]) -> String {
    let mut t = String::from(
        "\n\nOver time (server process):\n\n| time | RSS (KiB) | open fds | streams open |\n|---|---|---|---|\n",
    );
    let mut next_minute = 0.0;
    for (i, (secs, rss, fds)) in samples.iter().enumerate() {
        if *secs >= next_minute || i + 1 == samples.len() {
            let open = open_at.get(i).copied().unwrap_or(0);
            t.push_str(&format!("| {:.0} s | {rss} | {fds} | {open} |\n", secs));
            while next_minute <= *secs {
                next_minute += 60.0;
            }
        }
    }
    t
}
