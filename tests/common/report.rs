//! Report fragments, shared by the suites that write them (`reliability`, `hostile`) through
//! `#[path = "../common/report.rs"] mod report;`: one Markdown file per test under
//! `target/reliability/`, which `scripts/reliability-report` assembles into `RELIABILITY.md`.

use std::path::{Path, PathBuf};

/// Writes `target/reliability/{file}` with the figures this run measured, stamped with the
/// time and the suite (`cargo test --test <suite>`) that wrote it.
pub(crate) fn write_fragment(file: &str, markdown: &str) {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    let dir = dir.join("reliability");
    std::fs::create_dir_all(&dir).expect("report dir");
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let when = prost_types::Timestamp { seconds: stamp, nanos: 0 }.to_string();
    let suite = env!("CARGO_CRATE_NAME");
    let body = format!("{markdown}\n_Measured {when} by `cargo test --test {suite}`._\n");
    std::fs::write(dir.join(file), body).expect("write fragment");
}

/// A two-column Markdown table.
pub(crate) fn table(rows: &[(&str, String)]) -> String {
    let mut t = String::from("| figure | value |\n|---|---|\n");
    for (k, v) in rows {
        t.push_str(&format!("| {k} | {v} |\n"));
    }
    t
}
