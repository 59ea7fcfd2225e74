//! Rate-limit utilisation (issue 8 target 5, issue 21 targets 7 and 10): bursts of Gupshup
//! `CreateOnboarding` calls against a simulator whose link-app limit is scaled to 10 per
//! second, counted at the simulator. One server on SQLite (in-process simulator), and three
//! replicas on one PostgreSQL database sharing ONE standalone simulator process
//! (`wa-onboard sim`), so the simulator sees every replica's calls and judges their sum.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tonic::transport::Channel;
use wa_onboard::grpc::pb;
use wa_onboard::grpc::pb::account_service_client::AccountServiceClient;
use wa_onboard::grpc::pb::onboarding_service_client::OnboardingServiceClient;

use crate::Opts;
use crate::report::{Report, Target, spread};
use crate::server::{Server, ServerConfig, authed};
use crate::util::median;

/// The scaled link limit: calls per window.
const MAX: u32 = 10;
/// The scaled window, ms.
const WINDOW_MS: u64 = 1000;
/// Creates per burst over the three replicas (issue 21, target 7).
const REPLICA_BURST: u32 = 150;
/// Replicas sharing the limit.
const REPLICAS: usize = 3;

/// One burst's outcome.
#[derive(Debug, Clone, Copy)]
struct Burst {
    /// Link calls per second after the first window.
    achieved: f64,
    /// `achieved` over the allowed rate.
    utilisation: f64,
    /// Calls the simulator refused as over its limit.
    violations: u64,
    /// First to last link call at the simulator, s.
    spread_s: f64,
    /// Until every CreateOnboarding was answered, s.
    accepted_s: f64,
}

/// The TOML of the simulator's scaled limit.
fn sim_limit_toml() -> String {
    format!("[sandbox.sims.gupshup.limits.link]\nmax = {MAX}\nwindow_ms = {WINDOW_MS}\n")
}

/// The TOML of the adapter's scaled limit (the same).
fn adapter_limit_toml() -> String {
    format!("[providers.gupshup_limits.link]\nmax = {MAX}\nwindow_ms = {WINDOW_MS}\n")
}

/// The simulator's link-call and violation counters.
async fn counters(http: &reqwest::Client, url: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value = http.get(url).send().await?.json().await?;
    let links = v["calls"]["POST /partner/tpp/app"].as_u64().unwrap_or(0);
    let violations = v["rate_limit_violations"].as_u64().unwrap_or(0);
    Ok((links, violations))
}

/// `n` CreateOnboarding calls at once, spread round-robin over `clients`, on `account`; waits
/// until the simulator at `sim` counted all their link calls. `seq` (below 100) makes this
/// burst's references, WABA ids and phones distinct from every other burst's of the run.
async fn burst(clients: &[Channel], account: &str, sim: &str, n: u32, seq: u32) -> Result<Burst> {
    let http = crate::webhooks::client(1)?;
    let (links0, viol0) = counters(&http, sim).await?;
    let calls = (0..n).map(|i| {
        let mut c = OnboardingServiceClient::new(clients[i as usize % clients.len()].clone());
        let account = account.to_string();
        async move {
            c.create_onboarding(authed(pb::CreateOnboardingRequest {
                account,
                reference: format!("burst-{seq}-{i}"),
                request_id: format!("bench-burst-{seq}-{i}-{}", std::process::id()),
                request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
                    app_name: format!("BenchBurst{seq}x{i}"),
                    waba_id: format!("2049961{seq:02}{i:06}"),
                    phone: format!("+9197{seq:02}{i:06}"),
                    ..Default::default()
                })),
                ..Default::default()
            }))
            .await
        }
    });
    let t_req = Instant::now();
    for res in futures::future::join_all(calls).await {
        res.context("CreateOnboarding in the burst")?;
    }
    let accepted_s = t_req.elapsed().as_secs_f64();
    // Sample the simulator's counter until every link arrived.
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(120 + u64::from(n) / u64::from(MAX) * WINDOW_MS / 1000);
    let last = loop {
        let (links, _) = counters(&http, sim).await?;
        let now = t_req.elapsed().as_secs_f64();
        if links > links0 && first.is_none() {
            first = Some(now);
        }
        if links >= links0 + u64::from(n) {
            break now;
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} links reached the simulator", links - links0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, viol1) = counters(&http, sim).await?;
    let first = first.unwrap_or(last);
    let allowed = f64::from(MAX) / (WINDOW_MS as f64 / 1000.0);
    // The first window's MAX calls go at once, so the rate is over the rest.
    let achieved = f64::from(n - MAX) / (last - first).max(1e-9);
    Ok(Burst {
        achieved,
        utilisation: achieved / allowed,
        violations: viol1 - viol0,
        spread_s: last - first,
        accepted_s,
    })
}

fn table(results: &[Burst]) -> String {
    let col = |f: fn(&Burst) -> f64| results.iter().map(f).collect::<Vec<_>>();
    let mut t = String::from("| | median | spread |\n|---|---|---|\n");
    let achieved = col(|b| b.achieved);
    let _ = writeln!(t, "| achieved link calls/s | {:.2} | {} |", median(&achieved), spread(&achieved));
    let _ = writeln!(t, "| allowed | {:.2} | |", f64::from(MAX) / (WINDOW_MS as f64 / 1000.0));
    let util = col(|b| b.utilisation);
    let _ = writeln!(t, "| utilisation | {:.3} | {} |", median(&util), spread(&util));
    let s = col(|b| b.spread_s);
    let _ = writeln!(t, "| first → last link call | {:.2} s | {} |", median(&s), spread(&s));
    let a = col(|b| b.accepted_s);
    let _ = writeln!(t, "| burst accepted (all CreateOnboarding answered) | {:.2} s | {} |", median(&a), spread(&a));
    let violations: u64 = results.iter().map(|b| b.violations).sum();
    let _ = writeln!(t, "| violations seen by the simulator (all runs) | {violations} | |");
    t
}

fn why(window_ms: u64) -> String {
    format!(
        "every slot is held for the window from when its call was answered (the provider \
         counted the call before that, so no slack has to cover the trip) plus a slack of 1 % \
         of the window, at least 20 ms (the provider's own window accounting), and waiters \
         wake up to 10 ms late to spread them: at a {window_ms} ms window that caps \
         utilisation near {:.2}, and each call's own round trip (a store transaction and the \
         HTTP exchange) comes on top, since its slot is held from the answer.",
        window_ms as f64 / (window_ms as f64 + 25.0)
    )
}

/// One server on SQLite with its in-process simulator (issue 21 target 10: ≥ 0.97).
pub(crate) async fn single(opts: &Opts, rep: &mut Report) -> Result<()> {
    let dir = opts.work_dir.join("ratelimit");
    let mut cfg = ServerConfig::new(&dir, None);
    let base = crate::util::free_port_range(6)?;
    cfg.sandbox_base_port = Some(base);
    cfg.extra_toml = format!("{}{}", sim_limit_toml(), adapter_limit_toml());
    let s = Server::start(&opts.server, &cfg).await?;
    let sim = format!("http://127.0.0.1:{base}/_sim/counters");
    let mut results = Vec::new();
    for r in 0..opts.reps {
        // A fresh connection per burst, as before.
        let ch = s.channel().await?;
        results.push(burst(&[ch], "accounts/sandbox-gupshup", &sim, opts.burst, r as u32 % 50).await?);
        // Start the next burst with an empty window.
        tokio::time::sleep(Duration::from_millis(WINDOW_MS * 2)).await;
    }
    s.stop().await?;
    let util: Vec<f64> = results.iter().map(|b| b.utilisation).collect();
    let violations: u64 = results.iter().map(|b| b.violations).sum();
    let mut t = format!(
        "## 5. Rate-limit utilisation (Gupshup link app, SQLite)\n\nThe simulator's link-app limit \
         scaled from 10 per minute to {MAX} per {WINDOW_MS} ms (`sandbox.sims.gupshup.limits.link`) and \
         the adapter's to the same (`providers.gupshup_limits.link`). A burst of {} `CreateOnboarding` \
         calls at once, {} repetitions; the simulator's call counter is sampled every 10 ms. The first \
         window's {MAX} calls go at once, so throughput = ({} − {MAX}) calls / (last call − first call), \
         against the allowed {MAX} per window. Violations = calls the simulator rejected as over its \
         limit.\n\n",
        opts.burst, opts.reps, opts.burst
    );
    t.push_str(&table(&results));
    rep.section(t);
    let u = median(&util);
    rep.target(Target {
        name: format!("rate-limit utilisation, {MAX} per {WINDOW_MS} ms (one server, SQLite)"),
        goal: "≥ 0.97, 0 violations".into(),
        measured: format!("{u:.3} {}, {violations} violations", spread(&util)),
        met: u >= 0.97 && violations == 0,
        why: why(WINDOW_MS),
    });
    Ok(())
}

/// The standalone simulator process (`wa-onboard sim`) all replicas call.
struct Sim {
    child: tokio::process::Child,
}

impl Sim {
    async fn start(bin: &Path, dir: &Path, base: u16) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("sim.toml");
        std::fs::write(&config, sim_limit_toml())?;
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("sim")
            .arg("--base-port")
            .arg(base.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("sim.out"))?)
            .stderr(std::fs::File::create(dir.join("sim.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("spawn wa-onboard sim")?;
        let http = crate::webhooks::client(1)?;
        let url = format!("http://127.0.0.1:{base}/_sim/counters");
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters(&http, &url).await.is_err() {
            if Instant::now() > deadline {
                bail!("wa-onboard sim did not answer on {base}; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = crate::util::sigterm(pid);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// Three replicas on one PostgreSQL database, one shared simulator (issue 21 target 7).
pub(crate) async fn replicas(opts: &Opts, rep: &mut Report, db_url: &str) -> Result<()> {
    let dir = opts.work_dir.join("ratelimit-replicas");
    let base = crate::util::free_port_range(6)?;
    let sim = Sim::start(&opts.server, &dir.join("sim"), base).await?;
    let result = async {
        let mut servers = Vec::new();
        for _ in 0..REPLICAS {
            // One data directory: the replicas must share the credential encryption key the
            // first one generates there (started one after the other, so no race).
            let mut cfg = ServerConfig::new(&dir.join("replicas"), Some(db_url.to_string()));
            // Production-like: no in-process simulators; the account points at the shared one.
            cfg.sandbox = false;
            cfg.extra_toml = format!("[providers]\nallow_custom_endpoints = true\n{}", adapter_limit_toml());
            servers.push(Server::start(&opts.server, &cfg).await?);
        }
        let run = async {
            let account = shared_account(&servers[0], base).await?;
            let mut channels = Vec::new();
            for s in &servers {
                channels.push(s.channel().await?);
            }
            let sim_url = format!("http://127.0.0.1:{base}/_sim/counters");
            let mut results = Vec::new();
            for r in 0..opts.reps {
                results.push(burst(&channels, &account, &sim_url, REPLICA_BURST, 50 + r as u32 % 50).await?);
                tokio::time::sleep(Duration::from_millis(WINDOW_MS * 2)).await;
            }
            Ok::<_, anyhow::Error>(results)
        }
        .await;
        for s in servers {
            s.stop().await?;
        }
        run
    }
    .await;
    sim.stop().await?;
    let results = result?;
    let util: Vec<f64> = results.iter().map(|b| b.utilisation).collect();
    let violations: u64 = results.iter().map(|b| b.violations).sum();
    let mut t = format!(
        "## 5b. Rate-limit utilisation across {REPLICAS} replicas (Gupshup link app, PostgreSQL)\n\n\
         {REPLICAS} `wa-onboard serve` processes on one PostgreSQL database (sandbox off), one \
         Gupshup account whose endpoint is ONE standalone simulator process (`wa-onboard sim`, link \
         limit {MAX} per {WINDOW_MS} ms), so the simulator judges the sum of all replicas' calls; the \
         adapters' limit is the same, shared through the store's rate slots. A burst of \
         {REPLICA_BURST} `CreateOnboarding` calls at once, round-robin over the replicas, {} \
         repetitions; throughput and violations counted as in section 5.\n\n",
        opts.reps
    );
    t.push_str(&table(&results));
    rep.section(t);
    let u = median(&util);
    rep.target(Target {
        name: format!(
            "rate-limit utilisation, {MAX} per {WINDOW_MS} ms shared by {REPLICAS} replicas (PostgreSQL, {REPLICA_BURST} creates)"
        ),
        goal: "≥ 0.9, 0 violations".into(),
        measured: format!("{u:.3} {}, {violations} violations", spread(&util)),
        met: u >= 0.9 && violations == 0,
        why: format!(
            "{} On PostgreSQL each slot is a row taken in a transaction that all replicas \
             contend for, so a waiter's wake-up costs a store round trip more than on one server.",
            why(WINDOW_MS)
        ),
    });
    Ok(())
}

/// A Gupshup account of the dev tenant whose endpoint is the shared simulator, with its
/// default partner credentials; returns its resource name.
async fn shared_account(s: &Server, base: u16) -> Result<String> {
    let mut c = AccountServiceClient::new(s.channel().await?);
    let a = c
        .create_account(authed(pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: pb::Provider::Gupshup as i32,
                display_name: "wa-bench shared simulator".into(),
                credentials: Some(pb::AccountCredentials {
                    credentials: Some(pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
                        email: "sandbox@wa-onboard.local".into(),
                        secret: "sandbox-secret".into(),
                    })),
                }),
                options: Some(pb::AccountOptions { endpoint: format!("http://127.0.0.1:{base}"), options: None }),
                ..Default::default()
            }),
            account_id: "bench-shared-sim".into(),
            request_id: "wa-bench-shared-sim-1".into(),
        }))
        .await
        .context("CreateAccount (shared simulator)")?
        .into_inner();
    if a.name.is_empty() {
        return Err(anyhow!("CreateAccount returned no name"));
    }
    Ok(a.name)
}
