//! `BENCHMARKS.md`: every figure comes from this run; nothing in it is typed by hand.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Opts;

/// One target of the issue.
/// The `measured` text should carry the spread over repetitions ([`spread`]) where the figure
/// is a median of several.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// What is measured.
    pub name: String,
    /// The goal.
    pub goal: String,
    /// The measured value.
    pub measured: String,
    /// Met or not.
    pub met: bool,
    /// Why it is missed (shown only when missed).
    pub why: String,
}

/// The spread of per-repetition values, shown beside a median so a ratio that crosses its
/// target only by noise is visible: `[min–max, n = 5]`.
pub(crate) fn spread(v: &[f64]) -> String {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    match (finite.iter().copied().reduce(f64::min), finite.iter().copied().reduce(f64::max)) {
        (Some(lo), Some(hi)) => format!("[{}–{}, n = {}]", short(lo), short(hi), finite.len()),
        _ => "[no data]".into(),
    }
}

/// Two to three significant digits, as the tables print ratios and times.
fn short(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The report being built.
pub(crate) struct Report {
    date: String,
    command: String,
    load_start: String,
    load_end: String,
    duration: Duration,
    versions: Vec<(String, String)>,
    targets: Vec<Target>,
    sections: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    /// A report for a run with `opts`, stamped now.
    pub(crate) fn start(opts: &Opts) -> Self {
        let date = crate::util::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let mut command = opts.command.clone();
        let defaults = [
            ("--reps", opts.reps.to_string()),
            ("--unary-secs", opts.unary_secs.to_string()),
            ("--streams", opts.streams.to_string()),
            ("--conns", opts.conns.to_string()),
            ("--fanout-secs", opts.fanout_secs.to_string()),
            ("--fanout-rate", opts.fanout_rate.to_string()),
            ("--fanout-reps", opts.fanout_reps.to_string()),
            ("--ingest-secs", opts.ingest_secs.to_string()),
            ("--heartbeat-secs", opts.heartbeat_secs.to_string()),
            ("--burst", opts.burst.to_string()),
            ("--delivery-secs", opts.delivery_secs.to_string()),
            ("--delivery-rate", opts.delivery_rate.to_string()),
            ("--outage-secs", opts.outage_secs.to_string()),
            ("--delivery-onboardings", opts.delivery_onboardings.to_string()),
            ("--growth-sizes", opts.growth_sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
            ("--growth-calls", opts.growth_calls.to_string()),
            ("--growth-waiting", opts.growth_waiting.to_string()),
        ];
        command.push_str(" \\\n    --only ");
        command.push_str(&opts.only.join(","));
        for (k, v) in defaults {
            let _ = write!(command, " {k} {v}");
        }
        let versions = vec![
            ("rustc".to_string(), crate::util::command_line("rustc", &["--version"])),
            ("h2load".to_string(), crate::util::command_line("h2load", &["--version"])),
            ("wa-onboard".to_string(), crate::util::command_line(&opts.server.display().to_string(), &["version"])),
        ];
        Self {
            date,
            command,
            load_start: crate::util::loadavg(),
            load_end: String::new(),
            duration: Duration::ZERO,
            versions,
            targets: Vec::new(),
            sections: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a target line.
    pub(crate) fn target(&mut self, t: Target) {
        self.targets.push(t);
    }

    /// Adds a section (Markdown, starting with its `##` title).
    pub(crate) fn section(&mut self, s: String) {
        eprintln!("{s}");
        self.sections.push(s);
    }

    /// Adds a note at the end.
    pub(crate) fn note(&mut self, s: &str) {
        self.notes.push(s.to_string());
    }

    /// Stamps the end of the run.
    pub(crate) fn finish(&mut self, took: Duration) {
        self.duration = took;
        self.load_end = crate::util::loadavg();
    }

    /// The Markdown text.
    pub(crate) fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# Benchmarks\n\n");
        let _ = writeln!(
            o,
            "Written by `wa-bench` (`src/bin/wa-bench/`) on {}; the whole suite took {:.0} s. \
             Nothing here is edited by hand: re-run the command below to refresh it.\n",
            self.date,
            self.duration.as_secs_f64()
        );
        o.push_str(
            "Every figure is the median of the repetitions shown, with its baseline measured by \
             the same run on the same server process or binary: these machines are shared and \
             noisy, so compare ratios, not absolute numbers. Server and load generators run as \
             separate processes on loopback, sharing the machine's cores.\n\n",
        );
        o.push_str("## Machine\n\n| | |\n|---|---|\n");
        for (k, v) in crate::util::machine() {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        let _ = writeln!(o, "| Load average (1/5/15 min) at start | {} |", self.load_start);
        let _ = writeln!(o, "| Load average at end | {} |", self.load_end);
        for (k, v) in &self.versions {
            let _ = writeln!(o, "| {k} | `{v}` |");
        }
        o.push_str("\n## How to re-run\n\n```sh\n");
        let _ = writeln!(o, "{}", self.command);
        o.push_str(
            "```\n\n`scripts/bench` builds `wa-onboard` and `wa-bench` in release mode, installs \
             h2load (Debian `nghttp2-client`) when missing, and runs `target/release/wa-bench` \
             with its arguments; `target/release/wa-bench --help` lists every option.\n\n",
        );
        o.push_str("## Targets\n\n| measurement | target | measured | |\n|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.name,
                t.goal,
                t.measured,
                if t.met { "met" } else { "**missed**" }
            );
        }
        let missed: Vec<&Target> = self.targets.iter().filter(|t| !t.met).collect();
        if !missed.is_empty() {
            o.push_str("\nWhy the missed targets are missed:\n\n");
            for t in missed {
                let _ = writeln!(o, "- **{}**: {}", t.name, t.why);
            }
        }
        o.push('\n');
        for s in &self.sections {
            o.push_str(s);
            o.push('\n');
        }
        if !self.notes.is_empty() {
            o.push_str("## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_shows_min_max_and_count() {
        assert_eq!(spread(&[0.91, 0.88, f64::NAN, 0.95]), "[0.880–0.950, n = 3]");
        assert_eq!(spread(&[12.0, 250.0]), "[12.0–250, n = 2]");
        assert_eq!(spread(&[]), "[no data]");
    }
}
