//! Cost growth (issue 21, target 8): the per-call cost of the reads that touch the stored
//! onboardings, at growing table sizes (10k, 100k, 1M by default, a tenth of them mid-pipeline
//! with steps waiting), on one backend. Each figure is a median latency taken as a ratio to a
//! baseline measured in the same repetition (Health/Check for the gRPC calls, the store's
//! `SELECT 1` ping for the claim query), so the curve compares ratios, not noisy absolute times.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wa_onboard::grpc::pb;
use wa_onboard::grpc::pb::onboarding_service_client::OnboardingServiceClient;
use wa_onboard::store::Store;

use crate::Opts;
use crate::report::{Report, Target, spread};
use crate::seed::Seeded;
use crate::server::{Server, ServerConfig, authed};
use crate::util::median;

/// The growth target: each figure at the largest size within this factor of the smallest's.
const MAX_GROWTH: f64 = 1.3;

/// One figure of the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Figure {
    /// `GetOnboarding` of a random stored onboarding.
    Get,
    /// `ListOnboardings` filtered by state, first page of 50.
    ListFiltered,
    /// `ListOnboardings`, the 20th page of 50.
    ListPage20,
    /// The engine's claim query (`Store::claim_steps`), nothing due.
    Claim,
    /// `WatchOnboarding` of a random onboarding until its first message.
    WatchFirst,
}

impl Figure {
    const ALL: [Figure; 5] = [Figure::Get, Figure::ListFiltered, Figure::ListPage20, Figure::Claim, Figure::WatchFirst];

    fn label(self) -> &'static str {
        match self {
            Figure::Get => "GetOnboarding",
            Figure::ListFiltered => "ListOnboardings, state filter, page 1",
            Figure::ListPage20 => "ListOnboardings, page 20",
            Figure::Claim => "claim_steps (engine), nothing due",
            Figure::WatchFirst => "WatchOnboarding, first message",
        }
    }

    fn baseline(self) -> &'static str {
        match self {
            Figure::Claim => "store ping",
            _ => "Health/Check",
        }
    }
}

/// Medians of one table size: per figure, the per-repetition latencies (µs) and ratios.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    /// Stored onboardings.
    pub size: usize,
    /// Seconds the seeding up to this size took (this step only).
    pub seed_secs: f64,
    /// Per figure (in [`Figure::ALL`] order): per-repetition median latency, µs.
    pub micros: Vec<Vec<f64>>,
    /// Per figure: per-repetition ratio to its baseline.
    pub ratios: Vec<Vec<f64>>,
    /// Per-repetition median Health/Check latency, µs.
    pub health: Vec<f64>,
    /// Per-repetition median store ping latency, µs.
    pub ping: Vec<f64>,
}

/// Growth of figure `f` from the first point to `p`: the ratio of their median ratios.
fn growth(first: &Point, p: &Point, f: usize) -> f64 {
    median(&p.ratios[f]) / median(&first.ratios[f])
}

/// Runs the curve on one backend (`db_url` `None`: SQLite in the work dir).
pub(crate) async fn growth_suite(
    opts: &Opts,
    rep: &mut Report,
    backend: &str,
    db_url: Option<String>,
) -> Result<Vec<Point>> {
    let dir = opts.work_dir.join(format!("growth-{}", backend.to_lowercase()));
    let url = db_url.clone().unwrap_or_else(|| format!("sqlite:{}", dir.join("wa-onboard.db").display()));
    let cfg = ServerConfig::new(&dir, db_url);
    // Once to make the schema, the dev tenant and the bench account; the seeding runs with no
    // server up, so its commits wake nobody and the server starts on the new size cold.
    let s = Server::start(&opts.server, &cfg).await?;
    crate::suites::webhook_url(&s).await?;
    s.stop().await?;
    let store = wa_onboard::store::open(&url).await.context("open the store")?;
    let waiting_every = (1.0 / opts.growth_waiting.clamp(0.0001, 1.0)).round() as usize;
    let mut ids: Vec<Seeded> = Vec::new();
    let mut points = Vec::new();
    for &size in &opts.growth_sizes {
        if size < ids.len() {
            bail!("--growth-sizes must grow: {size} after {}", ids.len());
        }
        let t = Instant::now();
        let more = crate::seed::seed_into(&store, ids.len(), size - ids.len(), waiting_every).await?;
        ids.extend(more);
        crate::seed::analyse(&url).await?;
        let seed_secs = t.elapsed().as_secs_f64();
        eprintln!("growth {backend}: {size} onboardings stored ({seed_secs:.1} s for this step)");
        let s = Server::start(&opts.server, &cfg).await?;
        let point = measure(opts, &s, &store, &ids, size, seed_secs).await;
        s.stop().await?;
        points.push(point?);
    }
    report(opts, rep, backend, &points, waiting_every);
    Ok(points)
}

async fn measure(
    opts: &Opts,
    s: &Server,
    store: &Arc<dyn Store>,
    ids: &[Seeded],
    size: usize,
    seed_secs: f64,
) -> Result<Point> {
    let ch = s.channel().await?;
    let mut oc = OnboardingServiceClient::new(ch.clone());
    let mut hc = HealthClient::new(ch);
    let calls = opts.growth_calls.max(10);
    // Page 20: the token after 19 pages, found once (a keyset token stays valid).
    let mut token = String::new();
    for _ in 0..19 {
        let r = oc
            .list_onboardings(authed(pb::ListOnboardingsRequest {
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .context("ListOnboardings (walking to page 20)")?
            .into_inner();
        token = r.next_page_token;
    }
    anyhow::ensure!(!token.is_empty(), "fewer than 20 pages stored");
    let mut point = Point {
        size,
        seed_secs,
        micros: vec![Vec::new(); Figure::ALL.len()],
        ratios: vec![Vec::new(); Figure::ALL.len()],
        health: Vec::new(),
        ping: Vec::new(),
    };
    // Warm the connection and the server's per-tenant caches (the key lookup).
    for _ in 0..50 {
        hc.check(HealthCheckRequest { service: String::new() }).await?;
        oc.get_onboarding(authed(pb::GetOnboardingRequest { name: format!("onboardings/{}", ids[0].id) })).await?;
    }
    for _ in 0..opts.reps {
        let health = timed(calls, || {
            let mut hc = hc.clone();
            async move { hc.check(HealthCheckRequest { service: String::new() }).await.map(drop).map_err(Into::into) }
        })
        .await?;
        let ping = timed(calls, || {
            let store = store.clone();
            async move { store.ping().await.map_err(Into::into) }
        })
        .await?;
        for (f, figure) in Figure::ALL.iter().enumerate() {
            let us = match figure {
                Figure::Get => {
                    timed(calls, || {
                        let mut oc = oc.clone();
                        let name = format!("onboardings/{}", pick(ids).id);
                        async move {
                            oc.get_onboarding(authed(pb::GetOnboardingRequest { name }))
                                .await
                                .map(drop)
                                .map_err(Into::into)
                        }
                    })
                    .await?
                }
                Figure::ListFiltered => {
                    timed(calls, || {
                        let mut oc = oc.clone();
                        async move {
                            let r = oc
                                .list_onboardings(authed(pb::ListOnboardingsRequest {
                                    page_size: 50,
                                    state: pb::OnboardingState::Provisioning as i32,
                                    ..Default::default()
                                }))
                                .await?
                                .into_inner();
                            anyhow::ensure!(r.onboardings.len() == 50, "filtered page had {}", r.onboardings.len());
                            Ok(())
                        }
                    })
                    .await?
                }
                Figure::ListPage20 => {
                    timed(calls, || {
                        let mut oc = oc.clone();
                        let page_token = token.clone();
                        async move {
                            let r = oc
                                .list_onboardings(authed(pb::ListOnboardingsRequest {
                                    page_size: 50,
                                    page_token,
                                    ..Default::default()
                                }))
                                .await?
                                .into_inner();
                            anyhow::ensure!(r.onboardings.len() == 50, "page 20 had {}", r.onboardings.len());
                            Ok(())
                        }
                    })
                    .await?
                }
                Figure::Claim => {
                    timed(calls, || {
                        let store = store.clone();
                        async move {
                            let got = store
                                .claim_steps(
                                    "wa-bench-probe",
                                    wa_onboard::domain::now_ms(),
                                    Duration::from_secs(30),
                                    16,
                                )
                                .await?;
                            // Nothing is due: a claimed step would be work taken from the server.
                            anyhow::ensure!(got.is_empty(), "the probe claimed {} steps", got.len());
                            Ok(())
                        }
                    })
                    .await?
                }
                Figure::WatchFirst => {
                    timed(calls / 2, || {
                        let mut oc = oc.clone();
                        let name = format!("onboardings/{}", pick(ids).id);
                        async move {
                            let mut stream = oc
                                .watch_onboarding(authed(pb::WatchOnboardingRequest { name, after_sequence: 0 }))
                                .await?
                                .into_inner();
                            stream.message().await?.context("stream ended before its first message")?;
                            Ok(())
                        }
                    })
                    .await?
                }
            };
            let base = if *figure == Figure::Claim { ping } else { health };
            point.micros[f].push(us);
            point.ratios[f].push(us / base);
        }
        point.health.push(health);
        point.ping.push(ping);
    }
    Ok(point)
}

fn pick(ids: &[Seeded]) -> &Seeded {
    &ids[rand::rng().random_range(0..ids.len())]
}

/// Median latency of `n` sequential calls, µs.
async fn timed<F, Fut>(n: usize, mut call: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let fut = call();
        let t = Instant::now();
        fut.await?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&v))
}

fn size_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn report(opts: &Opts, rep: &mut Report, backend: &str, points: &[Point], waiting_every: usize) {
    let Some(first) = points.first() else { return };
    let Some(last) = points.last() else { return };
    let mut t = format!("## 7. Cost growth to {} onboardings: {backend}\n\n", size_label(last.size));
    let _ = writeln!(
        t,
        "Onboardings seeded through the store's own bulk path (`Store::create_onboardings`, \
         batches of 1000) with the server stopped, then a fresh server per size; every \
         {waiting_every}th is mid-pipeline (`PROVISIONING`, four steps, one `WAITING` on a poll a day \
         away), the rest `LIVE`. Per size, {} repetitions of {} sequential calls per figure \
         (half as many stream opens), interleaved with their baseline: each figure is its median \
         latency over the baseline's in the same repetition (Health/Check for gRPC calls, the \
         store's `SELECT 1` for the claim query, which wa-bench runs through the library on the \
         same database). `GetOnboarding` and `WatchOnboarding` pick a random stored onboarding \
         per call, so above the 4096-row cache most reads go to the store. Growth = a figure's \
         ratio at that size over its ratio at {} (median of repetitions, min–max of the \
         per-repetition ratios in brackets).\n",
        opts.reps,
        opts.growth_calls,
        size_label(first.size)
    );
    t.push_str("| figure | baseline |");
    for p in points {
        let _ = write!(t, " {} µs | {} ratio |", size_label(p.size), size_label(p.size));
    }
    let _ = writeln!(t, " growth {} → {} |", size_label(first.size), size_label(last.size));
    t.push_str("|---|---|");
    for _ in points {
        t.push_str("---|---|");
    }
    t.push_str("---|\n");
    let mut worst: (f64, &str) = (0.0, "");
    for (f, figure) in Figure::ALL.iter().enumerate() {
        let _ = write!(t, "| {} | {} |", figure.label(), figure.baseline());
        for p in points {
            let _ = write!(t, " {:.0} | {:.2} {} |", median(&p.micros[f]), median(&p.ratios[f]), spread(&p.ratios[f]));
        }
        let g = growth(first, last, f);
        if g > worst.0 {
            worst = (g, figure.label());
        }
        let _ = writeln!(t, " {g:.2} × |");
    }
    t.push_str("| *Health/Check (baseline)* | |");
    for p in points {
        let _ = write!(t, " {:.0} | |", median(&p.health));
    }
    t.push_str(" |\n| *store ping (baseline)* | |");
    for p in points {
        let _ = write!(t, " {:.0} | |", median(&p.ping));
    }
    t.push_str(" |\n");
    let seeded: Vec<String> = points.iter().map(|p| format!("{} {:.0} s", size_label(p.size), p.seed_secs)).collect();
    let _ = writeln!(t, "\nSeeding time per step (cumulative size: time of that step): {}.", seeded.join(", "));
    // The curve as text a plotting tool reads (scripts/bench-plot).
    t.push_str("\n<details><summary>curve data (size, figure, ratio)</summary>\n\n```\n");
    for p in points {
        for (f, figure) in Figure::ALL.iter().enumerate() {
            let _ = writeln!(t, "{backend}\t{}\t{}\t{:.4}", p.size, figure.label(), median(&p.ratios[f]));
        }
    }
    t.push_str("```\n\n</details>\n");
    rep.section(t);
    rep.target(Target {
        name: format!(
            "cost growth {} → {} stored onboardings ({backend}): GetOnboarding, ListOnboardings (filtered, page 20), claim, WatchOnboarding first message",
            size_label(first.size),
            size_label(last.size)
        ),
        goal: format!("each ≤ {MAX_GROWTH} × its figure at {}", size_label(first.size)),
        measured: format!("worst {:.2} × ({})", worst.0, worst.1),
        met: worst.0 <= MAX_GROWTH,
        why: format!(
            "the figure that grows most is {}; see the cost-growth table of {backend} for the curve.",
            worst.1
        ),
    });
}

/// The cost-growth curves of every backend as one SVG line chart (no plotting dependency: a
/// few dozen elements written here): x = stored onboardings (log scale), y = growth over the
/// smallest size, one line per figure, the target as a dashed line.
pub(crate) fn svg(curves: &[(String, Vec<Point>)]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 360.0;
    const COLOURS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let panel_w = W / curves.len().max(1) as f64;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        H + 90.0
    );
    let y_max = curves
        .iter()
        .flat_map(|(_, ps)| ps.iter().flat_map(move |p| (0..Figure::ALL.len()).map(move |f| growth(&ps[0], p, f))))
        .filter(|g| g.is_finite())
        .fold(MAX_GROWTH + 0.2, f64::max);
    for (c, (backend, points)) in curves.iter().enumerate() {
        let (Some(first), Some(last)) = (points.first(), points.last()) else { continue };
        let x0 = c as f64 * panel_w + 50.0;
        let pw = panel_w - 70.0;
        let (top, ph) = (30.0, H - 60.0);
        let lx = |n: usize| {
            let (a, b) =
                ((first.size as f64).log10(), (last.size as f64).log10().max((first.size as f64).log10() + 1e-9));
            x0 + ((n as f64).log10() - a) / (b - a) * pw
        };
        let ly = |g: f64| top + ph - (g / y_max) * ph;
        let _ = writeln!(o, "<text x=\"{:.0}\" y=\"18\" font-size=\"13\">cost growth: {backend}</text>", x0);
        let _ = writeln!(
            o,
            "<line x1=\"{x0:.0}\" y1=\"{:.0}\" x2=\"{x0:.0}\" y2=\"{top:.0}\" stroke=\"black\"/>\
             <line x1=\"{x0:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"black\"/>",
            top + ph,
            top + ph,
            x0 + pw,
            top + ph
        );
        let mut tick = 0.0;
        while tick <= y_max + 1e-9 {
            let _ = writeln!(
                o,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{tick:.1}</text>",
                x0 - 4.0,
                ly(tick) + 4.0
            );
            tick += 0.5;
        }
        for p in points {
            let _ = writeln!(
                o,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
                lx(p.size),
                top + ph + 14.0,
                size_label(p.size)
            );
        }
        let _ = writeln!(
            o,
            "<line x1=\"{x0:.0}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\" stroke=\"grey\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" fill=\"grey\" text-anchor=\"end\">target {MAX_GROWTH} ×</text>",
            x0 + pw,
            x0 + pw,
            ly(MAX_GROWTH) - 3.0,
            y = ly(MAX_GROWTH)
        );
        for (f, colour) in COLOURS.iter().enumerate().take(Figure::ALL.len()) {
            let pts: Vec<String> =
                points.iter().map(|p| format!("{:.1},{:.1}", lx(p.size), ly(growth(first, p, f)))).collect();
            let _ = writeln!(
                o,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
    }
    for (f, figure) in Figure::ALL.iter().enumerate() {
        let y = H + 10.0 + f as f64 * 15.0;
        let _ = writeln!(
            o,
            "<line x1=\"50\" y1=\"{y:.0}\" x2=\"70\" y2=\"{y:.0}\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"76\" y=\"{:.0}\">{} (figure over its value at the smallest size)</text>",
            COLOURS[f],
            y + 4.0,
            figure.label()
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_labelled_short() {
        assert_eq!(size_label(10_000), "10k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(1234), "1234");
    }

    #[test]
    fn growth_is_the_ratio_of_median_ratios() {
        let p = |size, r: f64| Point {
            size,
            seed_secs: 0.0,
            micros: vec![vec![1.0]; 5],
            ratios: vec![vec![r, r, r]; 5],
            health: vec![1.0],
            ping: vec![1.0],
        };
        assert!((growth(&p(10, 2.0), &p(100, 2.5), 0) - 1.25).abs() < 1e-9);
        let svg = svg(&[("SQLite".into(), vec![p(10_000, 2.0), p(1_000_000, 2.5)])]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), Figure::ALL.len());
    }
}
