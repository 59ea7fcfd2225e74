//! Statistics, `/proc` readings and small helpers.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// Median of `v` (mean of the two middle values for an even count); NaN when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// The `q` quantile (0..=1, nearest rank) of `v`; NaN when empty. Sorts `v`.
pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A free TCP port on loopback (bound, then released: fine for a benchmark).
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// `count` consecutive free ports on loopback, returning the first.
pub(crate) fn free_port_range(count: u16) -> Result<u16> {
    for _ in 0..200 {
        let base = free_port()?;
        if base > u16::MAX - count {
            continue;
        }
        let held: Result<Vec<TcpListener>, _> =
            (0..count).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    Err(anyhow!("no {count} consecutive free ports found"))
}

/// Resident set size of a process, KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// User plus system CPU time of a process (all threads).
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/PID/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/PID/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Sends SIGTERM to `pid`.
pub(crate) fn sigterm(pid: u32) -> Result<()> {
    let pid = i32::try_from(pid).map_err(|_| anyhow!("pid out of range"))?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    if r == 0 { Ok(()) } else { Err(anyhow!("kill({pid}, SIGTERM) failed: {}", std::io::Error::last_os_error())) }
}

/// The machine, from `/proc` (CPU model, cores, memory, kernel).
pub(crate) fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let logical = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    vec![
        ("CPU".into(), format!("{model} ({logical} logical CPUs in /proc/cpuinfo, {online} usable; {mhz} MHz)")),
        ("Memory".into(), mem),
        ("Kernel".into(), format!("Linux {kernel}")),
    ]
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line a command prints, or "unknown".
pub(crate) fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Size of a file in bytes.
pub(crate) fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut v, 1.0), 100.0);
        assert_eq!(quantile(&mut [7.0], 0.99), 7.0);
    }

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
        assert!(!machine().is_empty());
    }
}
