//! Report fragments of the hostile-input suite: name them `4N-hostile-<slug>.md`, start each
//! with a `### ` heading, and say what the attack sends and the outcome this run measured.

pub(crate) use crate::report::{table, write_fragment};

/// Resident memory of this test process (the in-process server and its clients, and any
/// test running alongside), in MiB, for the fragments' "memory bounded" figures.
pub(crate) fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
