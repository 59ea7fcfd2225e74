//! Unary throughput with h2load (nghttp2-client): gRPC over HTTP/2 with a pre-framed body
//! (5-byte gRPC header + protobuf), `content-type: application/grpc`, `te: trailers`; or the
//! Connect protocol's unary JSON (`application/json`, the body as is) on the same port.
//! h2load counts every HTTP 200 as a success and gRPC errors are HTTP 200 too, so each run is
//! checked by its response byte count: `data` bytes / expected response frame = successes.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use crate::util::quantile;

/// One RPC to load.
#[derive(Debug, Clone)]
pub(crate) struct Rpc {
    /// Short label (`Health/Check`, `GetOnboarding`...).
    pub label: &'static str,
    /// HTTP/2 path.
    pub path: &'static str,
    /// Request bytes: protobuf for gRPC, JSON for Connect.
    pub request: Vec<u8>,
    /// Connect unary JSON instead of gRPC: the body goes unframed as `application/json`.
    pub connect_json: bool,
    /// Send the API key.
    pub auth: bool,
    /// Length of one response: 5 + message length for gRPC, the JSON body's length for
    /// Connect; from a real call.
    pub response_frame: u64,
}

/// The outcome of one h2load run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Requests per second over the measured duration.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Whether the response bytes match `succeeded` full responses (no gRPC errors).
    pub valid: bool,
}

/// Connections and streams per connection for a total concurrency.
fn shape(concurrency: usize) -> (usize, usize) {
    let c = concurrency.clamp(1, 16);
    (c, concurrency.div_ceil(c))
}

/// Runs h2load once.
pub(crate) async fn h2load(addr: SocketAddr, rpc: &Rpc, concurrency: usize, secs: f64, dir: &Path) -> Result<Run> {
    let body = dir.join(format!("{}.bin", rpc.label.replace('/', "_")));
    if rpc.connect_json {
        std::fs::write(&body, &rpc.request)?;
    } else {
        let mut framed = Vec::with_capacity(rpc.request.len() + 5);
        framed.push(0u8);
        framed.extend_from_slice(&u32::try_from(rpc.request.len())?.to_be_bytes());
        framed.extend_from_slice(&rpc.request);
        std::fs::write(&body, &framed)?;
    }
    let log = dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let (c, m) = shape(concurrency);
    let mut cmd = tokio::process::Command::new("h2load");
    // No `--warm-up-time`: h2load would count the warm-up's bytes but not its requests, and the
    // byte check below needs both to match.
    cmd.args(["-D", &format!("{}ms", (secs * 1000.0) as u64), "-t", "1"])
        .args(["-c", &c.to_string(), "-m", &m.to_string()])
        .arg("-d")
        .arg(&body)
        .arg(format!("--log-file={}", log.display()));
    if rpc.connect_json {
        cmd.args(["-H", "content-type: application/json", "-H", "connect-protocol-version: 1"]);
    } else {
        cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    }
    if rpc.auth {
        cmd.args(["-H", &format!("authorization: Bearer {}", crate::server::DEV_KEY)]);
    }
    cmd.arg(format!("http://{addr}{}", rpc.path));
    let out = cmd.output().await.context("run h2load")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    }
    let parsed = parse(&stdout)?;
    let mut lat: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    let p50_ms = quantile(&mut lat, 0.5);
    let p99_ms = quantile(&mut lat, 0.99);
    let implied = parsed.data_bytes as f64 / rpc.response_frame.max(1) as f64;
    let valid = parsed.succeeded > 0 && parsed.failed == 0 && (implied / parsed.succeeded as f64 - 1.0).abs() < 0.005;
    Ok(Run { rps: parsed.rps, p50_ms, p99_ms, valid })
}

#[derive(Debug, PartialEq)]
struct Parsed {
    rps: f64,
    succeeded: u64,
    failed: u64,
    data_bytes: u64,
}

fn parse(out: &str) -> Result<Parsed> {
    let line = |prefix: &str| out.lines().find(|l| l.trim_start().starts_with(prefix)).map(str::trim);
    let finished = line("finished in").ok_or_else(|| anyhow!("no 'finished in' line:\n{out}"))?;
    let rps = finished
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no req/s in '{finished}'"))?;
    let requests = line("requests:").ok_or_else(|| anyhow!("no 'requests:' line"))?;
    let count = |word: &str| -> u64 {
        requests
            .trim_start_matches("requests:")
            .split(',')
            .find_map(|p| p.trim().strip_suffix(word).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    };
    let traffic = line("traffic:").ok_or_else(|| anyhow!("no 'traffic:' line"))?;
    // "... , 427.06KB (437283) data"
    let data_bytes = traffic
        .rsplit_once(" data")
        .and_then(|(head, _)| head.rsplit_once('(')?.1.split(')').next()?.parse().ok())
        .ok_or_else(|| anyhow!("no data bytes in '{traffic}'"))?;
    Ok(Parsed { rps, succeeded: count(" succeeded"), failed: count(" failed") + count(" errored"), data_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_output() {
        let out = "starting benchmark...\n\
            finished in 2.00s, 31234.50 req/s, 1.23MB/s\n\
            requests: 62469 total, 62469 started, 62469 done, 62400 succeeded, 69 failed, 0 errored, 0 timeout\n\
            status codes: 62469 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            traffic: 2.12MB (2223456) total, 123.4KB (126345) headers (space savings 95.12%), 427.06KB (437283) data\n";
        let p = parse(out).unwrap();
        assert_eq!(p, Parsed { rps: 31234.5, succeeded: 62400, failed: 69, data_bytes: 437283 });
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn shapes() {
        assert_eq!(shape(1), (1, 1));
        assert_eq!(shape(16), (16, 1));
        assert_eq!(shape(64), (16, 4));
        assert_eq!(shape(256), (16, 16));
    }
}
