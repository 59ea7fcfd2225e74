//! The service under test: `wa-onboard serve` as a child process with its own config file,
//! data directory and log files, on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The development tenant's key every bench server uses (never a real secret).
pub(crate) const DEV_KEY: &str = "wao_bench0000000000000000000000000000000000000";

/// How a server is configured.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// Data directory (SQLite file, generated encryption key, logs).
    pub data_dir: PathBuf,
    /// `database.url`; `None`: SQLite under the data directory.
    pub db_url: Option<String>,
    /// Fixed gRPC port; `None`: any free port.
    pub grpc_port: Option<u16>,
    /// Run the in-process simulators (the default configuration does).
    pub sandbox: bool,
    /// First simulator port; `None`: free ports.
    pub sandbox_base_port: Option<u16>,
    /// Keys appended to the `[server]` table (`console = false`...): a second `[server]`
    /// table in `extra_toml` would be a TOML error.
    pub server_toml: String,
    /// More TOML appended to the generated config file.
    pub extra_toml: String,
}

impl ServerConfig {
    /// The default configuration (sandbox on) in `data_dir`, heartbeats every `heartbeat` s.
    pub(crate) fn new(data_dir: &Path, db_url: Option<String>) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            db_url,
            grpc_port: None,
            sandbox: true,
            sandbox_base_port: None,
            server_toml: String::new(),
            extra_toml: String::new(),
        }
    }

    fn toml(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = String::new();
        t.push_str("[server]\n");
        t.push_str(&format!("grpc_addr = {}\n", q(&format!("127.0.0.1:{}", self.grpc_port.unwrap_or(0)))));
        t.push_str("webhook_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n");
        t.push_str(&format!("data_dir = {}\n", q(&self.data_dir.display().to_string())));
        t.push_str("shutdown_grace_secs = 3\n");
        t.push_str(&self.server_toml);
        if let Some(url) = &self.db_url {
            t.push_str(&format!("[database]\nurl = {}\n", q(url)));
        }
        t.push_str(&format!(
            "[sandbox]\nenabled = {}\nbase_port = {}\n",
            self.sandbox,
            self.sandbox_base_port.unwrap_or(0)
        ));
        t.push_str(&self.extra_toml);
        t
    }
}

/// A running server process.
pub(crate) struct Server {
    child: Child,
    /// Process id.
    pub pid: u32,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Webhook ingress address.
    pub webhook: SocketAddr,
}

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Spawns `bin serve` with `cfg` (not waiting for anything).
pub(crate) fn spawn(bin: &Path, cfg: &ServerConfig) -> Result<(Child, PathBuf)> {
    std::fs::create_dir_all(&cfg.data_dir).context("create the data dir")?;
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = cfg.data_dir.join(format!("bench-{n}.toml"));
    std::fs::write(&config, cfg.toml()).context("write the server config")?;
    let out = cfg.data_dir.join(format!("server-{n}.out"));
    let log = std::fs::File::create(cfg.data_dir.join(format!("server-{n}.log")))?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("WA_ONBOARD_DEV_API_KEY", DEV_KEY)
        // One tenant opens every measured stream (10,000, reopened between reps, closing
        // ones still counted): the per-tenant cap bounds a hostile tenant, not what is measured.
        .env("WA_ONBOARD__STREAMS__MAX_PER_TENANT", "1000000")
        .env_remove("WA_ONBOARD_DATABASE_URL")
        .env_remove("WA_ONBOARD_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok((child, out))
}

impl Server {
    /// Starts a server and waits until it reports SERVING.
    pub(crate) async fn start(bin: &Path, cfg: &ServerConfig) -> Result<Self> {
        let (mut child, out) = spawn(bin, cfg)?;
        let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (grpc, webhook) = loop {
            if let Some(status) = child.try_wait()? {
                bail!("server exited with {status}; see {}", cfg.data_dir.display());
            }
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("wa-onboard listening:")) {
                break parse_listening(line)?;
            }
            if Instant::now() > deadline {
                bail!("server did not start within 120 s; see {}", cfg.data_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        wait_serving(grpc, deadline).await?;
        Ok(Self { child, pid, grpc, webhook })
    }

    /// A gRPC channel (one HTTP/2 connection) to the server.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        channel(self.grpc).await
    }

    /// Resident set size, KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        crate::util::rss_kib(self.pid)
    }

    /// CPU time used so far.
    pub(crate) fn cpu(&self) -> Result<Duration> {
        crate::util::cpu_time(self.pid)
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub(crate) fn terminate(&self) -> Result<()> {
        crate::util::sigterm(self.pid)
    }

    /// SIGTERM, then waits for the exit (killing it after 15 s).
    pub(crate) async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = self.terminate();
            if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

fn parse_listening(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> Result<SocketAddr> {
        let i = words.iter().position(|w| *w == key).ok_or_else(|| anyhow!("no '{key}' in '{line}'"))?;
        words.get(i + 1).ok_or_else(|| anyhow!("no address after '{key}'"))?.parse().context("address")
    };
    Ok((after("gRPC")?, after("webhooks")?))
}

/// A channel with its own connection.
pub(crate) async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Whether `Health/Check("")` answers SERVING right now.
async fn serving(addr: SocketAddr) -> bool {
    let Ok(ch) = channel(addr).await else { return false };
    let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await;
    matches!(r, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
}

/// Polls health until SERVING or `deadline`.
pub(crate) async fn wait_serving(addr: SocketAddr, deadline: Instant) -> Result<()> {
    loop {
        if serving(addr).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} not SERVING in time");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A request carrying the bench tenant's key.
pub(crate) fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {DEV_KEY}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (g, w) = parse_listening(
            "wa-onboard listening: gRPC 127.0.0.1:4001  webhooks 127.0.0.1:4002  metrics 127.0.0.1:4003",
        )
        .unwrap();
        assert_eq!(g.port(), 4001);
        assert_eq!(w.port(), 4002);
        assert!(parse_listening("wa-onboard listening: nothing").is_err());
    }

    #[test]
    fn config_is_valid_toml_for_the_service() {
        let dir = std::env::temp_dir().join("wa-bench-config-test");
        let mut cfg = ServerConfig::new(&dir, Some("postgres://postgres@127.0.0.1:5432/test".into()));
        cfg.extra_toml = "[streams]\nheartbeat_secs = 5\n".into();
        let path = dir.join("t.toml");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, cfg.toml()).unwrap();
        let s = wa_onboard::config::Settings::load(Some(&path), &Default::default()).unwrap();
        assert_eq!(s.streams.heartbeat_secs, 5);
        assert!(s.sandbox.enabled);
        assert!(DEV_KEY.starts_with(wa_onboard::core::tenants::KEY_PREFIX));
        std::fs::remove_dir_all(&dir).ok();
    }
}
