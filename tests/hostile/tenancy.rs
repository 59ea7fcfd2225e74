//! Per-tenant ids, the development key, webhook timing, file modes (issue 16 items 10, 12 to 14).

use tonic::Code;
use wa_onboard::grpc::pb;

use crate::child::{Proc, SERVE_ANY_PORT, bin};
use crate::common;
use crate::helpers::*;

fn outcome<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn onboarding_request(account: &str, id: &str, reference: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: reference.into(),
        request_id: String::new(),
        onboarding_id: id.into(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: "AcmeSupport".into(),
            waba_id: "123456789".into(),
            phone: "+15551112222".into(),
            ..Default::default()
        })),
    }
}

/// Item 10: tenant B takes the ids tenant A already uses. Before, B got ALREADY_EXISTS
/// ("accounts/x already exists") for a name its own GetAccount answered NOT_FOUND for: an
/// existence oracle across tenants, and a way to squat another tenant's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_free_and_invisible() {
    let app = spawn_with(|s| s.engine.enabled = false).await;
    let a = app.key.expose().to_string();
    let b = app.other_tenant("tenant-b").await.expose().to_string();
    let accounts = || app.accounts();
    let onboardings = || app.onboardings();
    let account_as = |display: &str| {
        let mut r = gupshup_account("x", "s3cret");
        if let Some(acc) = r.account.as_mut() {
            acc.display_name = display.into();
        }
        r
    };

    let a_account = accounts().create_account(with_key(account_as("A's"), &a)).await.expect("A creates accounts/x");
    onboardings().create_onboarding(with_key(onboarding_request("x", "y", "ref-a"), &a)).await.expect("A creates y");
    // The attack: B names A's ids.
    let b_account = accounts().create_account(with_key(account_as("B's"), &b)).await;
    let b_onboarding = onboardings().create_onboarding(with_key(onboarding_request("x", "y", "ref-b"), &b)).await;
    let (b_account_outcome, b_onboarding_outcome) = (outcome(&b_account), outcome(&b_onboarding));

    // Each tenant sees only its own.
    let get_account = |key: String| async move {
        accounts()
            .get_account(with_key(pb::GetAccountRequest { name: "accounts/x".into() }, &key))
            .await
            .map(|r| r.into_inner().display_name)
    };
    let get_onboarding = |key: String| async move {
        onboardings()
            .get_onboarding(with_key(pb::GetOnboardingRequest { name: "onboardings/y".into() }, &key))
            .await
            .map(|r| r.into_inner())
    };
    let listed = |key: String| async move {
        onboardings()
            .list_onboardings(with_key(pb::ListOnboardingsRequest::default(), &key))
            .await
            .map(|r| r.into_inner().onboardings.into_iter().map(|o| o.reference).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let a_sees = get_account(a.clone()).await.ok();
    let b_sees = get_account(b.clone()).await.ok();
    let a_onb = get_onboarding(a.clone()).await.ok();
    let b_onb = get_onboarding(b.clone()).await.ok();
    let (a_list, b_list) = (listed(a.clone()).await, listed(b.clone()).await);

    // A duplicate within one tenant is still refused.
    let a_dup_account = accounts().create_account(with_key(account_as("again"), &a)).await;
    let a_dup_onboarding = onboardings().create_onboarding(with_key(onboarding_request("x", "y", "again"), &a)).await;
    let b_dup_onboarding = onboardings().create_onboarding(with_key(onboarding_request("x", "y", "again"), &b)).await;

    let a_url = a_account.into_inner().webhook_url;
    let b_url = b_account.as_ref().map(|r| r.get_ref().webhook_url.clone()).unwrap_or_default();
    let path = |u: &str| u.rsplit_once('/').map(|x| x.0).unwrap_or_default().to_string();
    common::write_fragment(
        "43-hostile-tenant-ids.md",
        &format!(
            "### Taking another tenant's ids\n\nTenant B creates `accounts/x` and `onboardings/y`, which tenant A \
             already owns, then both read them back and each retries its own ids.\n\n{}",
            common::table(&[
                ("B: CreateAccount accounts/x", b_account_outcome.clone()),
                ("B: CreateOnboarding onboardings/y", b_onboarding_outcome.clone()),
                ("A: GetAccount accounts/x (display name)", format!("{a_sees:?}")),
                ("B: GetAccount accounts/x (display name)", format!("{b_sees:?}")),
                ("A: GetOnboarding onboardings/y (reference)", format!("{:?}", a_onb.as_ref().map(|o| &o.reference))),
                ("B: GetOnboarding onboardings/y (reference)", format!("{:?}", b_onb.as_ref().map(|o| &o.reference))),
                ("A: ListOnboardings (references)", format!("{a_list:?}")),
                ("B: ListOnboardings (references)", format!("{b_list:?}")),
                ("A: CreateAccount accounts/x again", format!("{:?}", a_dup_account.as_ref().err().map(|s| s.code()))),
                (
                    "A: CreateOnboarding onboardings/y again",
                    format!("{:?}", a_dup_onboarding.as_ref().err().map(|s| s.code())),
                ),
                (
                    "B: CreateOnboarding onboardings/y again",
                    format!("{:?}", b_dup_onboarding.as_ref().err().map(|s| s.code())),
                ),
                ("webhook URLs of A's and B's accounts/x differ", (path(&a_url) != path(&b_url)).to_string()),
            ])
        ),
    );

    assert!(b_account.is_ok(), "B may own accounts/x too: {b_account_outcome}");
    assert!(b_onboarding.is_ok(), "B may own onboardings/y too: {b_onboarding_outcome}");
    assert_eq!(a_sees.as_deref(), Some("A's"));
    assert_eq!(b_sees.as_deref(), Some("B's"));
    let (a_onb, b_onb) = (a_onb.expect("A reads y"), b_onb.expect("B reads y"));
    assert_eq!(
        (a_onb.name.as_str(), a_onb.account.as_str(), a_onb.reference.as_str()),
        ("onboardings/y", "accounts/x", "ref-a")
    );
    assert_eq!(
        (b_onb.name.as_str(), b_onb.account.as_str(), b_onb.reference.as_str()),
        ("onboardings/y", "accounts/x", "ref-b")
    );
    assert_eq!((a_list, b_list), (vec!["ref-a".to_string()], vec!["ref-b".to_string()]));
    for (what, r) in [
        ("account", a_dup_account.err()),
        ("A onboarding", a_dup_onboarding.err()),
        ("B onboarding", b_dup_onboarding.err()),
    ] {
        let s = r.unwrap_or_else(|| panic!("a duplicate {what} within a tenant must be refused"));
        assert_eq!(s.code(), Code::AlreadyExists, "{what}: {}", s.message());
        assert!(
            !s.message().contains(".x") && !s.message().contains(".y"),
            "the message names the id, not the internal key: {}",
            s.message()
        );
    }
    assert_ne!(path(&a_url), path(&b_url), "each account has its own webhook URL");
}

/// Starts `serve` on `dir`, waits for the line about the development key, stops it; returns
/// everything it printed.
fn serve_once(name: &str, dir: &std::path::Path) -> String {
    let mut serve = Proc::spawn(name, dir, bin().arg("--data-dir").arg(dir).args(SERVE_ANY_PORT));
    serve.listening();
    serve.wait_for("Development tenant");
    serve.terminate();
    serve.stdout()
}

/// Item 12: the development key was printed at every start (into every collected log), not
/// only when generated as the README says.
#[test]
fn the_dev_key_is_printed_once_then_only_where_it_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = serve_once("first", dir.path());
    let key_file = dir.path().join("dev-api-key");
    let key = std::fs::read_to_string(&key_file).expect("key file").trim().to_string();
    let second = serve_once("second", dir.path());
    let said = |out: &str| out.lines().filter(|l| l.contains("Development tenant")).collect::<Vec<_>>().join(" / ");
    let where_kept = second.contains(&format!("kept in {}", key_file.display()));
    common::write_fragment(
        "43-hostile-dev-key.md",
        &format!(
            "### The development key in every start's output\n\n`serve` starts twice on one data directory \
             (the first start generates the key).\n\n{}",
            common::table(&[
                ("first start: lines with the key", first.lines().filter(|l| l.contains(&key)).count().to_string()),
                ("second start: lines with the key", second.lines().filter(|l| l.contains(&key)).count().to_string()),
                ("second start says", format!("`{}`", said(&second).replace(&key, "<key>"))),
                ("second start names the key file", where_kept.to_string()),
            ])
        ),
    );
    assert!(first.contains(&key), "the first start shows the key it generated:\n{first}");
    assert!(!second.contains(&key), "a later start must not print the key again:\n{second}");
    assert!(where_kept, "a later start says where the key is kept:\n{second}");
}

fn mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o777)
}

/// Item 14: the SQLite database (sealed credentials, every tenant's data) was created 0644
/// while the key files next to it are 0600.
#[test]
fn the_database_files_are_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("wa-onboard.db");
    let files = |db: &std::path::Path| {
        ["", "-wal", "-shm"].map(|s| {
            let mut p = db.as_os_str().to_owned();
            p.push(s);
            std::path::PathBuf::from(p)
        })
    };
    let show = |m: Option<u32>| m.map_or("absent".to_string(), |m| format!("{m:o}"));
    let mut serve = Proc::spawn("modes", dir.path(), bin().arg("--data-dir").arg(dir.path()).args(SERVE_ANY_PORT));
    serve.listening();
    let created: Vec<Option<u32>> = files(&db).iter().map(|f| mode(f)).collect();
    let key_mode = mode(&dir.path().join("dev-api-key"));
    serve.terminate();
    // An existing database left readable by others is tightened at the next start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut again =
        Proc::spawn("modes-again", dir.path(), bin().arg("--data-dir").arg(dir.path()).args(SERVE_ANY_PORT));
    again.listening();
    let tightened = mode(&db);
    again.terminate();
    common::write_fragment(
        "43-hostile-file-modes.md",
        &format!(
            "### World-readable database file\n\n`serve` starts on an empty data directory (umask {:04o}), then \
             again after the database was made 0644.\n\n{}",
            umask(),
            common::table(&[
                ("wa-onboard.db", show(created[0])),
                ("wa-onboard.db-wal", show(created[1])),
                ("wa-onboard.db-shm", show(created[2])),
                ("dev-api-key", show(key_mode)),
                ("wa-onboard.db after chmod 0644 and a restart", show(tightened)),
            ])
        ),
    );
    assert_eq!(created[0], Some(0o600), "database file");
    for (m, f) in created.iter().zip(["db", "-wal", "-shm"]).skip(1) {
        assert!(m.is_none_or(|m| m == 0o600), "{f} is {}", show(*m));
    }
    assert_eq!(tightened, Some(0o600), "an existing looser database is tightened");
}

/// The umask children start with (a shell's), for the report.
fn umask() -> u32 {
    let out = std::process::Command::new("sh").args(["-c", "umask"]).output().expect("umask");
    u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 8).unwrap_or(0)
}

/// Median, in microseconds.
fn median_us(samples: &mut [std::time::Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Item 13: a webhook URL naming no account was answered measurably slower than one naming an
/// account with a wrong secret (the tester measured 198 µs against 171 µs), so timing told
/// which account ids exist. Both must do the same work: the answers are identical, and their
/// medians (interleaved, thousands each) agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refusals_take_the_same_time_for_a_missing_account_and_a_wrong_secret() {
    const ROUNDS: usize = 2_000;
    let app = spawn_with(|s| s.engine.enabled = false).await;
    let created = app.accounts().create_account(app.req(gupshup_account("hook", "s3cret"))).await.expect("account");
    let url = created.into_inner().webhook_url;
    // `{base}/webhooks/gupshup/{account}/{secret}`
    let (prefix, secret) = url.rsplit_once('/').expect("secret segment");
    let (base, account) = prefix.rsplit_once('/').expect("account segment");
    let unknown_account = account.replace("hook", "hooq");
    let wrong_secret: String = secret.chars().rev().collect();
    assert_ne!(wrong_secret, secret);
    let kinds = [
        ("no such account", format!("{base}/{unknown_account}/{wrong_secret}")),
        ("account, wrong secret", format!("{base}/{account}/{wrong_secret}")),
    ];
    let http = reqwest::Client::new();
    let body = br#"{"app":"x","type":"message-event","payload":{}}"#.to_vec();
    let once = |url: String| {
        let (http, body) = (http.clone(), body.clone());
        async move {
            let t = std::time::Instant::now();
            let r = http.post(url).body(body).send().await.expect("ingress answers");
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (t.elapsed(), status, text)
        }
    };
    // Warm both paths (connection, caches), then interleave, alternating which goes first.
    for _ in 0..200 {
        for (_, u) in &kinds {
            once(u.clone()).await;
        }
    }
    // A shared CI box adds noise that can swamp a few percent now and then: up to three
    // measurements, the best one counts. A real difference in work (the bug: 16 to 30 %) shows
    // in every one of them.
    let mut answers = [std::collections::BTreeSet::new(), std::collections::BTreeSet::new()];
    let mut best: Option<(f64, f64, f64)> = None;
    for _attempt in 0..3 {
        let mut samples = [Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS)];
        for round in 0..ROUNDS {
            for i in [round % 2, 1 - round % 2] {
                let (took, status, text) = once(kinds[i].1.clone()).await;
                samples[i].push(took);
                answers[i].insert((status, text));
            }
        }
        let [mut unknown, mut wrong] = samples;
        let (m_unknown, m_wrong) = (median_us(&mut unknown), median_us(&mut wrong));
        let gap = (m_unknown - m_wrong).abs() / m_wrong;
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, m_unknown, m_wrong));
        }
        if gap < 0.10 {
            break;
        }
    }
    let (gap, m_unknown, m_wrong) = best.expect("measured");
    common::write_fragment(
        "43-hostile-webhook-timing.md",
        &format!(
            "### Webhook timing oracle for account ids\n\n{ROUNDS} deliveries each to a URL naming no account and to \
             one naming an account with a wrong secret, interleaved over one HTTP connection.\n\n{}",
            common::table(&[
                ("answers, no such account", format!("{:?}", answers[0])),
                ("answers, account with a wrong secret", format!("{:?}", answers[1])),
                ("median, no such account", format!("{m_unknown:.0} µs")),
                ("median, account with a wrong secret", format!("{m_wrong:.0} µs")),
                ("relative gap of the medians", format!("{:.1} %", gap * 100.0)),
            ])
        ),
    );
    assert_eq!(answers[0], answers[1], "the same answer either way");
    assert_eq!(answers[0].len(), 1, "one answer: {:?}", answers[0]);
    // Before the fix the gap was 16 % (the tester, release build) to 30 % (this suite, debug
    // build on a loaded box); the same work leaves noise, a few percent.
    assert!(gap < 0.10, "medians differ by {:.1} % ({m_unknown:.0} µs vs {m_wrong:.0} µs)", gap * 100.0);
}
