//! Across replicas (issue 21, target 6): two `wa-onboard serve` processes on one PostgreSQL
//! database. Webhooks are posted to replica A; the streams are open on replica B, which learns
//! of A's commits only through the store's cross-replica notices (PostgreSQL LISTEN/NOTIFY).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wa_onboard::domain::OnboardingId;

use crate::Opts;
use crate::report::{Report, Target};
use crate::seed::{self, Seeded};
use crate::server::{Server, ServerConfig};
use crate::streams::{self, Recorder};
use crate::suites::{Broadcast, broadcast_stats, ms, spread, wait_for, webhook_url};
use crate::util::{median, quantile};
use crate::webhooks;

/// One repetition's figures.
struct Rep {
    p50: f64,
    p99: f64,
    max: f64,
    sent: u64,
    lost: u64,
    errors: u64,
    rate: f64,
    lag_ms: f64,
    /// One event posted to B, its n watchers on B.
    same: Broadcast,
    /// One event posted to A, its n watchers on B.
    cross: Broadcast,
}

/// `url` (a webhook URL of one replica) pointed at `s`'s ingress.
fn on(url: &str, s: &Server) -> Result<String> {
    let mut u = reqwest::Url::parse(url).context("webhook URL")?;
    u.set_ip_host(s.webhook.ip()).map_err(|()| anyhow!("webhook host"))?;
    u.set_port(Some(s.webhook.port())).map_err(|()| anyhow!("webhook port"))?;
    Ok(u.to_string())
}

/// The `replicas` suite on the fresh schema `url`.
pub(crate) async fn replicas(opts: &Opts, rep: &mut Report, url: &str) -> Result<()> {
    let n = opts.streams;
    // The replicas share the encryption key, as they would share a Kubernetes Secret (each
    // would otherwise generate its own and not read the other's sealed credentials).
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let config = |name: &str| {
        let mut c = ServerConfig::new(&opts.work_dir.join(name), Some(url.to_string()));
        c.extra_toml =
            format!("[streams]\nheartbeat_secs = {}\n[security]\nencryption_key = {key:?}\n", opts.heartbeat_secs);
        c
    };
    let a = Server::start(&opts.server, &config("replica-a")).await?;
    let url_a = webhook_url(&a).await?;
    let t = Instant::now();
    let seeded = seed::seed(url, n).await?;
    eprintln!("seeded {} onboardings on PostgreSQL (replicas) in {:.1} s", seeded.len(), t.elapsed().as_secs_f64());
    let b = Server::start(&opts.server, &config("replica-b")).await?;
    let url_b = on(&url_a, &b)?;
    let mut reps = Vec::new();
    for r in 0..opts.reps {
        let t = Instant::now();
        reps.push(one_rep(opts, &b, &url_a, &url_b, &seeded, r).await?);
        eprintln!("replica repetition {r} took {:.0} s", t.elapsed().as_secs_f64());
    }
    a.stop().await?;
    b.stop().await?;
    report(opts, rep, &reps);
    Ok(())
}

async fn one_rep(opts: &Opts, b: &Server, url_a: &str, url_b: &str, seeded: &[Seeded], r: usize) -> Result<Rep> {
    let n = opts.streams;
    let settle = Duration::from_secs(1);
    let epoch = Instant::now();
    let total = (opts.replica_rate * opts.fanout_secs as f64) as u64;

    // Paced webhooks to A, n streams on n onboardings on B.
    let rec = Recorder::new(epoch, total as usize);
    let targets: Vec<OnboardingId> = seeded.iter().cycle().take(n).map(|x| x.id.clone()).collect();
    let set = streams::open_onboarding(b.grpc, &targets, opts.conns, &rec).await?;
    rec.wait_opened(n, Duration::from_secs(180)).await?;
    tokio::time::sleep(settle).await;
    let apps: Arc<Vec<String>> = Arc::new(seeded.iter().cycle().take(n).map(|x| x.app_id.clone()).collect());
    let base_ts = wa_onboard::domain::now_ms();
    let body: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> =
        Arc::new(move |i| webhooks::event_body(&apps[i as usize % apps.len()], i, base_ts + i as i64));
    let paced = webhooks::paced(url_a, total, opts.replica_rate, 64, &rec, body).await?;
    let expected = paced.done.iter().filter(|d| **d > 0).count();
    let arrived = |rec: &Recorder| {
        paced
            .done
            .iter()
            .enumerate()
            .filter(|(i, d)| **d > 0 && rec.arrivals[*i].load(std::sync::atomic::Ordering::SeqCst) > 0)
            .count()
    };
    wait_for(Duration::from_secs(20), || arrived(&rec) >= expected).await;
    let (mut lat, mut lost) = (Vec::new(), 0);
    for (i, d) in paced.done.iter().enumerate() {
        if *d == 0 {
            continue;
        }
        match rec.arrivals[i].load(std::sync::atomic::Ordering::SeqCst) {
            0 => lost += 1,
            at => lat.push(ms(at.saturating_sub(*d))),
        }
    }
    set.close();
    tokio::time::sleep(settle).await;

    // One event to n watchers of one onboarding on B: posted to B, then to A.
    let first = seeded.first().ok_or_else(|| anyhow!("nothing seeded"))?;
    let brec = Recorder::new(epoch, 0);
    let same: Vec<OnboardingId> = std::iter::repeat_n(first.id.clone(), n).collect();
    let many = streams::open_onboarding(b.grpc, &same, opts.conns, &brec).await?;
    brec.wait_opened(n, Duration::from_secs(180)).await?;
    tokio::time::sleep(settle).await;
    let http = webhooks::client(1)?;
    let one = |to: &str, k: u64| {
        let (http, brec, to) = (http.clone(), brec.clone(), to.to_string());
        let seq = 2_000_000_000 + 2 * r as u64 + k;
        let app = first.app_id.clone();
        async move {
            brec.expect_broadcast(seq);
            let ts = wa_onboard::domain::now_ms() + 10_000_000 + seq as i64;
            let body = webhooks::event_body(&app, seq, ts);
            let resp = http.post(&to).header("content-type", "application/json").body(body).send().await?;
            let t_done = brec.now();
            anyhow::ensure!(resp.status().is_success(), "webhook answered {}", resp.status());
            wait_for(Duration::from_secs(60), || brec.broadcast_arrivals().len() >= n).await;
            let stats = broadcast_stats(&brec.broadcast_arrivals(), t_done);
            tokio::time::sleep(Duration::from_secs(1)).await;
            anyhow::Ok(stats)
        }
    };
    let same_b = one(url_b, 0).await?;
    let cross = one(url_a, 1).await?;
    many.close();
    tokio::time::sleep(settle).await;
    Ok(Rep {
        p50: quantile(&mut lat, 0.5),
        p99: quantile(&mut lat, 0.99),
        max: lat.iter().copied().fold(0.0, f64::max),
        sent: total,
        lost,
        errors: paced.errors,
        rate: paced.achieved_rate,
        lag_ms: paced.max_lag_ms,
        same: same_b,
        cross,
    })
}

fn report(opts: &Opts, rep: &mut Report, reps: &[Rep]) {
    let n = opts.streams;
    let all = |f: &dyn Fn(&Rep) -> f64| reps.iter().map(f).collect::<Vec<_>>();
    let msf = |v: f64| format!("{v:.1} ms");
    let lost: u64 = reps.iter().map(|x| x.lost).sum();
    let errors: u64 = reps.iter().map(|x| x.errors).sum();
    let p99 = median(&all(&|x| x.p99));
    let mut s = format!(
        "## 7. Across replicas (PostgreSQL)\n\nTwo server processes (A and B) on one PostgreSQL \
         database; B learns of A's commits only through PostgreSQL LISTEN/NOTIFY. {n} \
         `WatchOnboarding` streams open on B over {} connections on {n} onboardings; Gupshup \
         `account-event` callbacks posted to A at {} events/s for {} s (open loop, 64 HTTP/1.1 \
         connections). Latency = from A's HTTP 2xx reaching the poster to the event arriving on \
         B's stream (same process, one clock). {} repetitions: median (min–max).\n\n\
         | p50 | p99 | max | events sent | not arrived 20 s after the last post | non-2xx | achieved rate | worst send lag |\n\
         |---|---|---|---|---|---|---|---|\n",
        opts.conns,
        opts.replica_rate,
        opts.fanout_secs,
        reps.len()
    );
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {lost} | {errors} | {:.0}/s | {:.0} ms |",
        spread(&all(&|x| x.p50), msf),
        spread(&all(&|x| x.p99), msf),
        spread(&all(&|x| x.max), msf),
        reps.iter().map(|x| x.sent).sum::<u64>(),
        median(&all(&|x| x.rate)),
        median(&all(&|x| x.lag_ms))
    );
    let _ = write!(
        s,
        "\n**One event to {n} watchers on B**: {n} streams on B on one onboarding; one webhook \
         posted to B (same replica), then one posted to A (across), same streams, same \
         repetition. Times from the webhook's 2xx.\n\n\
         | | posted to B (same replica) | posted to A (across replicas) | ratio |\n|---|---|---|---|\n"
    );
    let ratio = |f: &dyn Fn(&Broadcast) -> f64| all(&|x| f(&x.cross) / f(&x.same));
    let _ = writeln!(
        s,
        "| median watcher | {} | {} | {} |",
        spread(&all(&|x| x.same.p50), msf),
        spread(&all(&|x| x.cross.p50), msf),
        spread(&ratio(&|b| b.p50), |v| format!("{v:.2}"))
    );
    let _ = writeln!(
        s,
        "| last watcher | {} | {} | {} |",
        spread(&all(&|x| x.same.last), msf),
        spread(&all(&|x| x.cross.last), msf),
        spread(&ratio(&|b| b.last), |v| format!("{v:.2}"))
    );
    let _ = writeln!(
        s,
        "| watchers reached | {:.0} | {:.0} | |",
        median(&all(&|x| x.same.got as f64)),
        median(&all(&|x| x.cross.got as f64))
    );
    rep.section(s);
    rep.target(Target {
        name: format!(
            "fan-out p99 across replicas at {} events/s over {n} streams (PostgreSQL, A → B)",
            opts.replica_rate
        ),
        goal: "≤ 50 ms, nothing lost".into(),
        measured: format!("{}, {lost} not arrived within 20 s", spread(&all(&|x| x.p99), msf)),
        met: p99 <= 50.0 && lost == 0 && errors == 0,
        why: "A's commit reaches B as a PostgreSQL NOTIFY carrying the onboarding and its sequence \
              (not the event), so B's streams of that onboarding read the new events once from \
              the store (one shared read per onboarding) before sending them; A's own streams get \
              the event with its commit."
            .into(),
    });
}
