//! The real `wa-onboard` binary as a child process, shared by every suite that starts it
//! (`cli`, `api`, `replicas`, `reliability`) through `#[path = "../common/child.rs"] mod child;`:
//! spawn it with stdout drained on a thread (a full pipe would block it) and stderr in a log
//! file, wait for a line, parse the listening line, stop it with SIGTERM or SIGKILL.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a child may take to print an awaited line, or to exit after SIGTERM.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// `serve` on ports the kernel picks; the listening line tells which.
pub(crate) const SERVE_ANY_PORT: [&str; 7] =
    ["serve", "--grpc-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"];

/// The binary under test. It inherits none of the test process's `WA_ONBOARD*`, `RUST_LOG` or
/// `OTEL_*` variables, so a child sees exactly the settings its test gives it.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wa-onboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WA_ONBOARD") || k == "RUST_LOG" || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c
}

/// Where `serve` listens, from its line
/// `wa-onboard listening: gRPC 127.0.0.1:P  webhooks 127.0.0.1:Q  metrics 127.0.0.1:R`.
#[derive(Clone, Debug)]
pub(crate) struct Listening {
    pub grpc: String,
    pub webhooks: String,
    pub metrics: String,
}

impl Listening {
    pub(crate) fn parse(line: &str) -> Option<Listening> {
        let words: Vec<&str> = line.strip_prefix("wa-onboard listening:")?.split_whitespace().collect();
        let after = |label: &str| {
            let i = words.iter().position(|w| *w == label)?;
            words.get(i + 1).map(|w| w.to_string())
        };
        Some(Listening { grpc: after("gRPC")?, webhooks: after("webhooks")?, metrics: after("metrics")? })
    }
}

/// The endpoints `wa-onboard sim` prints, one `<name> <url>` line each (`gupshup`,
/// `exotel singapore`, `whapi manager`, `99digital`...), by name.
pub(crate) fn sim_endpoints(lines: &[String]) -> BTreeMap<String, String> {
    let mut endpoints = BTreeMap::new();
    for l in lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        if let Some(url) = words.last().filter(|w| w.starts_with("http://")) {
            endpoints.insert(words[..words.len() - 1].join(" "), url.to_string());
        }
    }
    endpoints
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub(crate) struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything the child printed to stdout so far.
    stdout: Arc<Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout piped and stderr appended to `{dir}/{name}.log`.
    pub(crate) fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::options().create(true).append(true).open(&log).expect("log file");
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn wa-onboard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        let all: Arc<Mutex<String>> = Arc::default();
        let kept = all.clone();
        // Drain stdout for the whole life of the child so it never blocks on a full pipe.
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                {
                    let mut kept = kept.lock().expect("lock");
                    kept.push_str(&line);
                    kept.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Proc { name: name.into(), child, lines, stdout: all, drain: Some(drain), log }
    }

    /// Stdout lines from the last call on, up to and including the first one that contains
    /// `marker`; panics (with the log's tail) after [`PATIENCE`].
    pub(crate) fn wait_for(&mut self, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let done = line.contains(marker);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("{}: no '{marker}' on stdout; saw {seen:?}; log:\n{}", self.name, self.log_tail()),
            }
        }
    }

    /// Waits for `serve`'s listening line and parses it.
    pub(crate) fn listening(&mut self) -> Listening {
        let lines = self.wait_for("wa-onboard listening:");
        let line = lines.last().map(String::as_str).unwrap_or_default();
        Listening::parse(line).unwrap_or_else(|| panic!("{}: unreadable listening line '{line}'", self.name))
    }

    /// Everything the child printed to stdout so far.
    pub(crate) fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Everything the child wrote to stderr (its logs) so far.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of the logs, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = self.logs();
        text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM (graceful shutdown), then waits for the exit; panics after [`PATIENCE`]. After
    /// this, [`Proc::stdout`] holds all the child ever printed.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("{}: did not stop on SIGTERM; log:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The pipe is closed: the drain thread ends once it has read the last line.
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        status
    }

    /// SIGKILL (no shutdown hook runs) and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
