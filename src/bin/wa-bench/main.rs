//! `wa-bench`: the benchmark suite of issue 8. Starts `wa-onboard serve` (release build) as a
//! separate process on loopback, drives it with h2load (unary) and with this program's own
//! tonic / HTTP clients (streams, webhooks), and writes `BENCHMARKS.md`. Every figure is the
//! median of `--reps` repetitions and is reported next to a baseline measured in the same run.
//!
//! Run it through `scripts/bench` (builds the release binaries, installs h2load if needed).

mod delivery;
mod growth;
mod ratelimit;
mod replicas;
mod report;
mod seed;
mod server;
mod streams;
mod suites;
mod unary;
mod util;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(name = "wa-bench", about = "Benchmarks wa-onboard (issue 8) and writes BENCHMARKS.md")]
pub struct Opts {
    /// The service binary under test (a release build).
    #[arg(long, default_value = "target/release/wa-onboard")]
    pub server: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Repetitions of every measurement (the report shows medians and the min–max spread;
    /// issue 21 asks for at least five).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// PostgreSQL base URL (a fresh schema is made and dropped); `skip` leaves PostgreSQL out.
    #[arg(long, env = "WA_ONBOARD_TEST_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub pg_url: String,
    /// Suites to run: footprint, unary, streams, ingest, ratelimit, replicas, growth, delivery.
    /// `replicas` is two servers on PostgreSQL (skipped with `--pg-url skip`). `growth` (seeding
    /// up to a million onboardings per backend) and `delivery` are not in the default set: they
    /// take tens of minutes; `scripts/bench --only growth,delivery` runs them.
    #[arg(long, value_delimiter = ',', default_value = "footprint,unary,streams,ingest,ratelimit,replicas")]
    pub only: Vec<String>,
    /// Backends of the `delivery` and `growth` suites: `sqlite`, `postgresql` (the latter
    /// also needs `--pg-url`).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgresql")]
    pub backends: Vec<String>,
    /// Measured seconds per h2load run.
    #[arg(long, default_value_t = 1.5)]
    pub unary_secs: f64,
    /// Onboardings seeded, and streams opened per stream measurement.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Seconds of the paced webhook load in the fan-out measurement.
    #[arg(long, default_value_t = 30)]
    pub fanout_secs: u64,
    /// Webhook events per second in the fan-out measurement (issue 21: 2,000).
    #[arg(long, default_value_t = 2000.0)]
    pub fanout_rate: f64,
    /// Webhook events per second in the cross-replica fan-out (`replicas` suite).
    #[arg(long, default_value_t = 1000.0)]
    pub replica_rate: f64,
    /// Repetitions of the 30 s fan-out load (each rep reopens the streams anyway).
    #[arg(long, default_value_t = 1)]
    pub fanout_reps: usize,
    /// Seconds per webhook ingest run.
    #[arg(long, default_value_t = 3.0)]
    pub ingest_secs: f64,
    /// Heartbeat interval of the server under test, seconds (idle CPU is measured over one).
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Onboardings per rate-limit burst.
    #[arg(long, default_value_t = 50)]
    pub burst: u32,
    /// NATS server of the delivery suite's JetStream destination.
    #[arg(long, env = "WA_ONBOARD_TEST_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Seconds of paced webhook load per delivery latency cell.
    #[arg(long, default_value_t = 10.0)]
    pub delivery_secs: f64,
    /// Webhook events per second in the delivery suite.
    #[arg(long, default_value_t = 1000.0)]
    pub delivery_rate: f64,
    /// Seconds the delivery suite's receiver is down before the backlog drain is measured.
    #[arg(long, default_value_t = 60)]
    pub outage_secs: u64,
    /// Onboardings seeded for the delivery suite (the events are spread over them).
    #[arg(long, default_value_t = 1000)]
    pub delivery_onboardings: usize,
    /// Stored onboardings at each point of the cost-growth curve (`growth` suite), growing.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub growth_sizes: Vec<usize>,
    /// Sequential calls per figure per repetition in the cost-growth suite.
    #[arg(long, default_value_t = 300)]
    pub growth_calls: usize,
    /// Fraction of the cost-growth onboardings that are mid-pipeline with a step waiting.
    #[arg(long, default_value_t = 0.1)]
    pub growth_waiting: f64,
    /// Scratch directory (data dirs, logs); removed at the end unless `--keep`.
    #[arg(long, default_value = "target/bench-work")]
    pub work_dir: PathBuf,
    /// Keep the scratch directory.
    #[arg(long)]
    pub keep: bool,
    /// The command line shown in the report as "how to re-run".
    #[arg(long, default_value = "scripts/bench")]
    pub command: String,
}

impl Opts {
    fn wants(&self, suite: &str) -> bool {
        self.only.iter().any(|s| s == suite)
    }

    /// Whether the `delivery` and `growth` suites run on `backend` (`sqlite`, `postgresql`).
    fn on(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b.eq_ignore_ascii_case(backend))
            && (backend != "postgresql" || self.pg_url != "skip")
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    anyhow::ensure!(opts.server.is_file(), "{} not found: build it with cargo build --release", opts.server.display());
    anyhow::ensure!(
        std::process::Command::new("h2load").arg("--version").output().is_ok(),
        "h2load not found (apt-get install nghttp2-client; scripts/bench does it)"
    );
    anyhow::ensure!(opts.reps >= 1, "--reps must be at least 1");
    let _ = std::fs::remove_dir_all(&opts.work_dir);
    std::fs::create_dir_all(&opts.work_dir)?;
    let mut rep = report::Report::start(&opts);
    let started = std::time::Instant::now();

    if opts.wants("footprint") {
        suites::footprint(&opts, &mut rep).await?;
    }
    let sqlite_dir = opts.work_dir.join("sqlite");
    let needs_sqlite = ["unary", "streams", "ingest"].iter().any(|s| opts.wants(s));
    let seeded = if needs_sqlite {
        let s = server::Server::start(&opts.server, &server::ServerConfig::new(&sqlite_dir, None)).await?;
        let url = format!("sqlite:{}", sqlite_dir.join("wa-onboard.db").display());
        suites::webhook_url(&s).await?;
        let t = std::time::Instant::now();
        let seeded = seed::seed(&url, opts.streams).await?;
        eprintln!("seeded {} onboardings on SQLite in {:.1} s", seeded.len(), t.elapsed().as_secs_f64());
        if opts.wants("unary") {
            suites::unary(&opts, &mut rep, &s, "SQLite", &seeded).await?;
        }
        s.stop().await?;
        seeded
    } else {
        Vec::new()
    };
    if opts.wants("streams") {
        suites::streams(&opts, &mut rep, &sqlite_dir, &seeded).await?;
    }
    if opts.wants("ingest") {
        let s = server::Server::start(&opts.server, &server::ServerConfig::new(&sqlite_dir, None)).await?;
        suites::ingest(&opts, &mut rep, &s, "SQLite", &seeded).await?;
        s.stop().await?;
    }
    if (opts.wants("unary") || opts.wants("ingest")) && opts.pg_url != "skip" {
        let url = wa_onboard::store::postgres::create_test_schema(&opts.pg_url)
            .await
            .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", wa_onboard::store::redact_url(&opts.pg_url)))?;
        let result = async {
            let dir = opts.work_dir.join("pg");
            let s = server::Server::start(&opts.server, &server::ServerConfig::new(&dir, Some(url.clone()))).await?;
            suites::webhook_url(&s).await?;
            let t = std::time::Instant::now();
            let seeded = seed::seed(&url, opts.streams).await?;
            eprintln!("seeded {} onboardings on PostgreSQL in {:.1} s", seeded.len(), t.elapsed().as_secs_f64());
            if opts.wants("unary") {
                suites::unary(&opts, &mut rep, &s, "PostgreSQL", &seeded).await?;
            }
            if opts.wants("ingest") {
                suites::ingest(&opts, &mut rep, &s, "PostgreSQL", &seeded).await?;
            }
            s.stop().await
        }
        .await;
        wa_onboard::store::postgres::drop_schema(&url).await.ok();
        result?;
    } else if opts.pg_url == "skip" {
        rep.note("PostgreSQL was skipped (`--pg-url skip`).");
    }
    if opts.wants("ratelimit") {
        ratelimit::single(&opts, &mut rep).await?;
        if opts.pg_url != "skip" {
            let url = wa_onboard::store::postgres::create_test_schema(&opts.pg_url)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", wa_onboard::store::redact_url(&opts.pg_url)))?;
            let result = ratelimit::replicas(&opts, &mut rep, &url).await;
            wa_onboard::store::postgres::drop_schema(&url).await.ok();
            result?;
        }
    }
    if opts.wants("replicas") && opts.pg_url != "skip" {
        let url = wa_onboard::store::postgres::create_test_schema(&opts.pg_url)
            .await
            .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", wa_onboard::store::redact_url(&opts.pg_url)))?;
        let result = replicas::replicas(&opts, &mut rep, &url).await;
        wa_onboard::store::postgres::drop_schema(&url).await.ok();
        result?;
    }
    if opts.wants("delivery") {
        if opts.on("sqlite") {
            delivery::delivery(&opts, &mut rep, "SQLite", None).await?;
        }
        if opts.on("postgresql") {
            let url = wa_onboard::store::postgres::create_test_schema(&opts.pg_url)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", wa_onboard::store::redact_url(&opts.pg_url)))?;
            let result = delivery::delivery(&opts, &mut rep, "PostgreSQL", Some(url.clone())).await;
            wa_onboard::store::postgres::drop_schema(&url).await.ok();
            result?;
        }
    }
    if opts.wants("growth") {
        let mut curves = Vec::new();
        if opts.on("sqlite") {
            curves.push(("SQLite".to_string(), growth::growth_suite(&opts, &mut rep, "SQLite", None).await?));
        }
        if opts.on("postgresql") {
            let url = wa_onboard::store::postgres::create_test_schema(&opts.pg_url)
                .await
                .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", wa_onboard::store::redact_url(&opts.pg_url)))?;
            let result = growth::growth_suite(&opts, &mut rep, "PostgreSQL", Some(url.clone())).await;
            wa_onboard::store::postgres::drop_schema(&url).await.ok();
            curves.push(("PostgreSQL".to_string(), result?));
        }
        // Beside the report: BENCHMARKS.md -> BENCHMARKS-growth.svg, linked from its section.
        let plot = opts.out.with_file_name(format!(
            "{}-growth.svg",
            opts.out.file_stem().and_then(|s| s.to_str()).unwrap_or("BENCHMARKS")
        ));
        std::fs::write(&plot, growth::svg(&curves))?;
        let name = plot.file_name().and_then(|s| s.to_str()).unwrap_or("BENCHMARKS-growth.svg");
        rep.section(format!("The cost-growth curves as a plot: ![cost growth]({name})\n"));
    }
    rep.finish(started.elapsed());
    std::fs::write(&opts.out, rep.render())?;
    eprintln!("wrote {} ({:.0} s)", opts.out.display(), started.elapsed().as_secs_f64());
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.work_dir);
    }
    Ok(())
}
