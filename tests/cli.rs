//! The `wa-onboard` binary as an operator uses it: version, tenants, config errors, serve
//! with graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wa-onboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WA_ONBOARD") {
            c.env_remove(k);
        }
    }
    c
}

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = bin().arg("--data-dir").arg(dir).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn version_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = run(&["version"], dir.path());
    assert!(ok);
    assert!(out.starts_with("wa-onboard "), "{out}");
}

#[test]
fn tenants_are_managed_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(&["tenant", "create", "billing-svc"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("wao_"), "the key is printed once: {out}");
    let (ok, _, err) = run(&["tenant", "create", "billing-svc"], dir.path());
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, out, _) = run(&["tenant", "add-key", "billing-svc"], dir.path());
    assert!(ok);
    let key_id = out.split_whitespace().nth(2).unwrap().to_string();
    let (ok, list, _) = run(&["tenant", "list"], dir.path());
    assert!(ok);
    assert!(list.contains("billing-svc"));
    assert_eq!(list.matches("active").count(), 2);
    assert!(!list.contains(&out.split_whitespace().last().unwrap().to_string()), "listing never shows a full key");
    let (ok, out, err) = run(&["tenant", "revoke-key", &key_id], dir.path());
    assert!(ok, "{out} {err}");
    let (_, list, _) = run(&["tenant", "list"], dir.path());
    assert_eq!(list.matches("revoked").count(), 1);
    let (ok, _, err) = run(&["tenant", "revoke-key", &key_id], dir.path());
    assert!(!ok, "{err}");
    let (ok, _, err) = run(&["tenant", "create", "Bad Name"], dir.path());
    assert!(!ok);
    assert!(err.contains("name"), "{err}");
}

#[test]
fn invalid_config_fails_fast_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\nmetrics_addr = \"not-an-address\"\n").unwrap();
    let out = bin().arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path()).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.metrics_addr"), "{err}");
    let out = bin()
        .env("WA_ONBOARD__STREAMS__HEARTBEAT_SECS", "99")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("streams.heartbeat_secs"));
}

#[test]
fn serve_prints_the_dev_key_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .env("WA_ONBOARD_DEV_API_KEY", "wao_fixedkeyfortests0000000000000000000000")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let mut seen = String::new();
    use std::io::Read;
    let mut buf = [0u8; 512];
    while !seen.contains("API key") && started.elapsed() < Duration::from_secs(30) {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("wao_fixedkeyfortests0000000000000000000000"), "{seen}");
    // SIGTERM: graceful shutdown, exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}
