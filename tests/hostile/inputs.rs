//! Field limits, control characters, oversized errors and messages (issue 16 items 5 to 8,
//! 15). Every attack goes over real gRPC to a real server with the sandbox simulators; the
//! simulators' counters say whether anything reached a provider, the store whether anything
//! was kept.

use std::collections::HashMap;
use std::time::Instant;

use tonic::Code;
use wa_onboard::grpc::pb;

use crate::common::{table, write_fragment};
use crate::helpers::*;

const MIB: usize = 1 << 20;

fn sandbox(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = true;
    // Nobody completes an Exotel link unless a test says so.
    s.sandbox.sims.exotel.sandbox = false;
}

/// Calls the four simulators received, per `provider METHOD /path`.
fn provider_calls(app: &TestApp) -> HashMap<String, u64> {
    let sb = app.running().sandbox.as_ref().expect("sandbox");
    let mut out = HashMap::new();
    for (name, core) in [
        ("gupshup", sb.gupshup.core()),
        ("exotel", sb.exotel.core()),
        ("whapi", sb.whapi.core()),
        ("digital99", sb.digital99.core()),
    ] {
        for (endpoint, n) in core.counters().calls {
            out.insert(format!("{name} {endpoint}"), n);
        }
    }
    out
}

fn total(calls: &HashMap<String, u64>) -> u64 {
    calls.values().sum()
}

async fn onboarding_count(app: &TestApp) -> usize {
    let mut n = 0;
    let mut page_token = String::new();
    loop {
        let page = app
            .onboardings()
            .list_onboardings(app.req(pb::ListOnboardingsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            }))
            .await
            .expect("list onboardings")
            .into_inner();
        n += page.onboardings.len();
        if page.next_page_token.is_empty() {
            return n;
        }
        page_token = page.next_page_token;
    }
}

async fn account_count(app: &TestApp) -> usize {
    app.accounts()
        .list_accounts(app.req(pb::ListAccountsRequest { page_size: 1000, ..Default::default() }))
        .await
        .expect("list accounts")
        .into_inner()
        .accounts
        .len()
}

fn links(reference: &str, count: i32) -> pb::CreateOnboardingLinksRequest {
    pb::CreateOnboardingLinksRequest {
        account: "accounts/sandbox-exotel".into(),
        count,
        reference: reference.into(),
        request_id: String::new(),
    }
}

fn onboarding(
    account: &str,
    reference: &str,
    request: pb::create_onboarding_request::Request,
) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: reference.into(),
        request: Some(request),
        ..Default::default()
    }
}

fn exotel_link(reference: &str) -> pb::CreateOnboardingRequest {
    onboarding("sandbox-exotel", reference, pb::create_onboarding_request::Request::Exotel(pb::ExotelLinkRequest {}))
}

/// Asserts `r` is `INVALID_ARGUMENT` naming `field`, with a message no longer than `max`
/// and free of database text; returns the status.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<tonic::Response<T>, tonic::Status>, field: &str) -> tonic::Status {
    let status = match r {
        Ok(ok) => panic!("{what}: accepted: {:?}", ok.into_inner()),
        Err(s) => s,
    };
    let shown: String = status.message().chars().take(200).collect();
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {shown}");
    assert!(
        violations(&status).iter().any(|f| f == field),
        "{what}: no violation on {field}: {:?}",
        violations(&status)
    );
    for db in ["UTF8", "0x00", "invalid byte sequence", "sqlx", "SQLSTATE", "constraint"] {
        assert!(!status.message().contains(db), "{what}: database text in the error: {shown}");
    }
    assert!(status.message().len() <= 1024, "{what}: {} bytes of message", status.message().len());
    status
}

/// Item 5: a NUL in a reference or a display name. On PostgreSQL it used to answer
/// `INTERNAL` with the database's text, after Exotel had minted the link; SQLite stored it.
async fn nul_attack(backend: &str, app: &TestApp) -> Vec<(&'static str, String)> {
    let before = provider_calls(app);
    let stored_before = onboarding_count(app).await;
    let accounts_before = account_count(app).await;

    let r = app.onboardings().create_onboarding_links(app.req(links("crm\0links", 3))).await;
    let links_status = refused(&format!("{backend}: CreateOnboardingLinks reference"), r, "reference");
    let r = app.onboardings().create_onboarding(app.req(exotel_link("crm\0one"))).await;
    refused(&format!("{backend}: CreateOnboarding reference"), r, "reference");
    let mut account = gupshup_account("nul-name", "s3cret");
    account.account.as_mut().expect("account").display_name = "Acme\0Shop".into();
    let r = app.accounts().create_account(app.req(account)).await;
    refused(&format!("{backend}: CreateAccount display_name"), r, "account.display_name");

    let after = provider_calls(app);
    let mints = |c: &HashMap<String, u64>| c.get("exotel POST /v2/accounts/{sid}/isv").copied().unwrap_or(0);
    assert_eq!(mints(&after), mints(&before), "{backend}: Exotel minted a link for a refused call");
    let stored = onboarding_count(app).await - stored_before;
    let accounts = account_count(app).await - accounts_before;
    assert_eq!((stored, accounts), (0, 0), "{backend}: a refused call stored something");
    vec![
        ("backend", backend.to_string()),
        ("answer", format!("{:?}", links_status.code())),
        ("Exotel mint calls", (mints(&after) - mints(&before)).to_string()),
        ("onboardings stored", stored.to_string()),
        ("accounts stored", accounts.to_string()),
    ]
}

#[tokio::test]
async fn nul_bytes_are_refused_before_exotel_mints_on_sqlite_and_postgresql() {
    let mut rows = Vec::new();
    let mut lite = spawn_with(sandbox).await;
    rows.push(nul_attack("SQLite", &lite).await);
    lite.shutdown().await;
    if let Some(url) = pg_schema().await {
        let mut pg = spawn_with(|s| {
            sandbox(s);
            s.database.url = url.clone();
        })
        .await;
        rows.push(nul_attack("PostgreSQL", &pg).await);
        pg.shutdown().await;
        drop_pg(&url).await;
    }
    let mut md = String::from(
        "### NUL bytes in a reference and a display name\n\n\
         `CreateOnboardingLinks` and `CreateOnboarding` (Exotel) with `reference = \"crm\\0…\"`, and \
         `CreateAccount` with a display name holding a NUL, on each backend.\n\n",
    );
    for r in rows {
        md.push_str(&table(&r));
        md.push('\n');
    }
    write_fragment("41-hostile-nul-bytes.md", &md);
}

#[tokio::test]
async fn one_mib_reference_in_create_onboarding_links_is_refused_and_nothing_is_stored() {
    let app = spawn_with(sandbox).await;
    let before = provider_calls(&app);
    let rss_before = crate::common::rss_mib();
    let reference = "r".repeat(MIB);
    let started = Instant::now();
    let r = app.onboardings().create_onboarding_links(app.req(links(&reference, 50))).await;
    let took = started.elapsed();
    let status = refused("CreateOnboardingLinks 1 MiB reference", r, "reference");
    let after = provider_calls(&app);
    let stored = onboarding_count(&app).await;
    let rss_growth = crate::common::rss_mib() - rss_before;
    assert_eq!(total(&after), total(&before), "a provider was called: {after:?}");
    assert_eq!(stored, 0, "onboardings stored");
    // The service still answers a normal call at once.
    let ok = app.onboardings().create_onboarding_links(app.req(links("crm-ok", 2))).await.expect("a normal batch");
    assert_eq!(ok.into_inner().onboardings.len(), 2);
    write_fragment(
        "41-hostile-reference-1mib.md",
        &format!(
            "### One 1 MiB reference for fifty links\n\n`CreateOnboardingLinks` with `count = 50` and a \
             1 MiB `reference` (it used to be stored 50 times).\n\n{}",
            table(&[
                ("answer", format!("{:?}", status.code())),
                ("answer time", format!("{} ms", took.as_millis())),
                ("error message", format!("{} bytes", status.message().len())),
                ("onboardings stored", stored.to_string()),
                ("provider calls made", (total(&after) - total(&before)).to_string()),
                ("a normal batch of 2 afterwards", "answered".into()),
                ("RSS growth of the test process (tests run alongside)", format!("{rss_growth:.1} MiB")),
            ])
        ),
    );
}

fn account(
    id: &str,
    provider: pb::Provider,
    credentials: pb::account_credentials::Credentials,
    options: Option<pb::account_options::Options>,
) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account: Some(pb::Account {
            provider: provider as i32,
            display_name: "Hostile".into(),
            credentials: Some(pb::AccountCredentials { credentials: Some(credentials) }),
            options: Some(pb::AccountOptions { options, endpoint: String::new() }),
            sandbox: true,
            ..Default::default()
        }),
        account_id: id.into(),
        request_id: String::new(),
    }
}

fn spec(url: &str, events: Vec<String>, tag: &str, headers: HashMap<String, String>) -> pb::SubscriptionSpec {
    pb::SubscriptionSpec { url: url.into(), events, tag: tag.into(), headers, ..Default::default() }
}

fn subscription(parent: &str, spec: pb::SubscriptionSpec) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest { parent: parent.into(), spec: Some(spec), request_id: String::new() }
}

/// One item 7 case: a request and the field its violation must name.
enum Attack {
    Onboarding(pb::CreateOnboardingRequest),
    Account(pb::CreateAccountRequest),
    Subscription(pb::CreateSubscriptionRequest),
}

async fn send(app: &TestApp, attack: Attack) -> Result<(), tonic::Status> {
    match attack {
        Attack::Onboarding(r) => app.onboardings().create_onboarding(app.req(r)).await.map(|_| ()),
        Attack::Account(r) => app.accounts().create_account(app.req(r)).await.map(|_| ()),
        Attack::Subscription(r) => pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone())
            .create_subscription(app.req(r))
            .await
            .map(|_| ()),
    }
}

#[tokio::test]
async fn item7_fields_are_refused_before_anything_is_stored_or_sent() {
    use pb::account_credentials::Credentials as C;
    use pb::account_options::Options as O;
    use pb::create_onboarding_request::Request as R;
    let app = spawn_with(sandbox).await;
    // A live Gupshup onboarding, so a subscription would otherwise reach the adapter.
    let live = app.insert_onboarding("sandbox-gupshup", "live").await;
    app.change_state(&live, wa_onboard::domain::OnboardingState::Live, "live").await;
    let parent = format!("onboardings/{live}");
    let big = "x".repeat(MIB);
    let whapi = |name: &str, project: &str| {
        Attack::Onboarding(onboarding(
            "sandbox-whapi",
            "w",
            R::Whapi(pb::WhapiChannelRequest {
                channel_name: name.into(),
                project_id: project.into(),
                go_live: false,
                extend_days: 0,
            }),
        ))
    };
    let d99 = Attack::Onboarding(onboarding(
        "sandbox-digital99",
        "d",
        R::Digital99(pb::Digital99LinkRequest {
            phone: "+15551112222".into(),
            business_name: big.clone(),
            display_name: "Acme".into(),
            ..Default::default()
        }),
    ));
    let url = "https://hooks.example/in";
    let events = |e: Vec<String>| spec(url, e, "t1", HashMap::new());
    let cases: Vec<(&str, Attack, &str)> = vec![
        ("Whapi channel_name with NUL", whapi("Acme\0Shop", ""), "whapi.channel_name"),
        ("1 MiB Whapi project_id", whapi("Acme", &big), "whapi.project_id"),
        ("Whapi project_id ../../partners/x", whapi("Acme", "../../partners/x"), "whapi.project_id"),
        ("1 MiB 99digital business_name", d99, "digital99.business_name"),
        (
            "1 MiB subscription url",
            Attack::Subscription(subscription(&parent, events(vec!["SENT".into()]).tap_url(&big))),
            "spec.url",
        ),
        (
            "1 MiB subscription tag",
            Attack::Subscription(subscription(&parent, spec(url, vec!["SENT".into()], &big, HashMap::new()))),
            "spec.tag",
        ),
        (
            "100k subscription events",
            Attack::Subscription(subscription(&parent, events(vec!["SENT".into(); 100_000]))),
            "spec.events",
        ),
        (
            "10k subscription headers",
            Attack::Subscription(subscription(
                &parent,
                spec(url, vec!["SENT".into()], "t1", (0..10_000).map(|i| (format!("x-h{i}"), "v".into())).collect()),
            )),
            "spec.headers",
        ),
        (
            "1 MiB storage_region",
            Attack::Account(account(
                "big-region",
                pb::Provider::Gupshup,
                C::Gupshup(pb::GupshupCredentials { email: "ops@acme.test".into(), secret: "s".into() }),
                Some(O::Gupshup(pb::GupshupOptions { storage_region: big.clone(), ..Default::default() })),
            )),
            "account.options.gupshup.storage_region",
        ),
        (
            "1 MiB Exotel account_sid",
            Attack::Account(account(
                "big-sid",
                pb::Provider::Exotel,
                C::Exotel(pb::ExotelCredentials {
                    account_sid: big.clone(),
                    api_key: "sandbox-key".into(),
                    api_token: "sandbox-token".into(),
                }),
                None,
            )),
            "account.credentials.exotel.account_sid",
        ),
        (
            "1 MiB Whapi partner token",
            Attack::Account(account(
                "big-secret",
                pb::Provider::Whapi,
                C::Whapi(pb::WhapiCredentials { partner_token: big.clone() }),
                None,
            )),
            "account.credentials.whapi.partner_token",
        ),
    ];
    let accounts_before = account_count(&app).await;
    let onboardings_before = onboarding_count(&app).await;
    let before = provider_calls(&app);
    let mut rows = Vec::new();
    for (what, attack, field) in cases {
        let started = Instant::now();
        let status = match send(&app, attack).await {
            Ok(()) => panic!("{what}: accepted"),
            Err(s) => s,
        };
        let took = started.elapsed();
        let shown: String = status.message().chars().take(200).collect();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {shown}");
        assert!(violations(&status).iter().any(|f| f == field), "{what}: {:?}", violations(&status));
        assert!(status.message().len() <= 1024, "{what}: {} bytes of message", status.message().len());
        rows.push(format!(
            "| {what} | {:?} on `{field}` | {} bytes | {} ms |\n",
            status.code(),
            status.message().len(),
            took.as_millis()
        ));
    }
    let after = provider_calls(&app);
    let accounts = account_count(&app).await - accounts_before;
    let onboardings = onboarding_count(&app).await - onboardings_before;
    assert_eq!(total(&after), total(&before), "a provider was called: before {before:?}, after {after:?}");
    assert_eq!((accounts, onboardings), (0, 0), "a refused request stored something");
    let mut md = String::from(
        "### Oversized and malformed fields bound for a provider\n\n\
         One request per field: a NUL, 1 MiB, or a path (`../../partners/x`) where a provider id \
         goes, 100k events, 10k headers.\n\n| attack | answer | message | time |\n|---|---|---|---|\n",
    );
    md.extend(rows);
    md.push('\n');
    md.push_str(&table(&[
        ("provider calls made", (total(&after) - total(&before)).to_string()),
        ("accounts stored", accounts.to_string()),
        ("onboardings stored", onboardings.to_string()),
    ]));
    write_fragment("41-hostile-fields-bound-for-providers.md", &md);
}

trait TapUrl {
    fn tap_url(self, url: &str) -> Self;
}

impl TapUrl for pb::SubscriptionSpec {
    fn tap_url(mut self, url: &str) -> Self {
        self.url = url.into();
        self
    }
}

#[tokio::test]
async fn errors_about_oversized_input_quote_only_a_short_prefix() {
    let app = spawn_with(sandbox).await;
    let live = app.insert_onboarding("sandbox-gupshup", "live").await;
    app.change_state(&live, wa_onboard::domain::OnboardingState::Live, "live").await;
    let parent = format!("onboardings/{live}");
    let big = "Z".repeat(MIB);
    let subs = || pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone());
    let url = "https://hooks.example/in";
    let mut rows = Vec::new();

    let gupshup = |region: &str| {
        onboarding(
            "sandbox-gupshup",
            "g",
            pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
                app_name: "AcmeShop".into(),
                waba_id: "1234567".into(),
                phone: "+15551112222".into(),
                storage_region: region.into(),
                ..Default::default()
            }),
        )
    };
    let r = app.onboardings().create_onboarding(app.req(gupshup(&big))).await;
    let s = refused("1 MiB storage_region", r, "gupshup.storage_region");
    rows.push(("1 MiB `storage_region`", s));

    let r = subs()
        .create_subscription(app.req(subscription(&parent, spec(url, vec![big.clone()], "t1", HashMap::new()))))
        .await;
    let s = refused("1 MiB subscription mode", r, "spec.events");
    rows.push(("1 MiB Gupshup mode in `events`", s));

    let headers = HashMap::from([(format!("{big} "), "v".to_string())]);
    let r =
        subs().create_subscription(app.req(subscription(&parent, spec(url, vec!["SENT".into()], "t1", headers)))).await;
    let s = refused("1 MiB header name", r, "spec.headers");
    rows.push(("1 MiB header name", s));

    let r = subs()
        .update_subscription(app.req(pb::UpdateSubscriptionRequest {
            name: format!("{parent}/subscriptions/s1"),
            spec: Some(spec(url, vec!["SENT".into()], "t1", HashMap::new())),
            update_mask: Some(prost_types::FieldMask { paths: vec![big.clone()] }),
        }))
        .await;
    let s = refused("1 MiB update_mask path", r, "update_mask");
    rows.push(("1 MiB `update_mask` path", s));

    let r =
        app.onboardings().get_onboarding(app.req(pb::GetOnboardingRequest { name: format!("accounts/{big}") })).await;
    let s = refused("1 MiB resource name", r, "name");
    rows.push(("1 MiB resource name", s));

    // A wrong name within the limit is still quoted as a short prefix.
    let name = format!("accounts/{}", "a".repeat(400));
    let r = app.onboardings().get_onboarding(app.req(pb::GetOnboardingRequest { name })).await;
    let s = refused("wrong collection", r, "name");
    assert!(s.message().contains("'accounts/aaa") && s.message().contains("…'"), "{}", s.message());
    assert!(s.message().len() < 200, "{}", s.message());

    let mut md = String::from(
        "### Errors about 1 MiB values\n\nEach request carries one 1 MiB value where an error used to \
         quote it whole (a 2 MiB message, which clients saw as a metadata-size error).\n\n\
         | input | answer | message |\n|---|---|---|\n",
    );
    for (what, s) in rows {
        md.push_str(&format!("| {what} | {:?} | {} bytes |\n", s.code(), s.message().len()));
    }
    write_fragment("41-hostile-error-echo.md", &md);
}

#[tokio::test]
async fn a_message_above_the_size_limit_is_resource_exhausted() {
    let app = spawn_with(sandbox).await;
    let started = Instant::now();
    let r = app.onboardings().create_onboarding(app.req(exotel_link(&"r".repeat(5 * MIB)))).await;
    let took = started.elapsed();
    let status = r.expect_err("a 5 MiB message is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    let stored = onboarding_count(&app).await;
    assert_eq!(stored, 0);
    write_fragment(
        "41-hostile-oversized-message.md",
        &format!(
            "### A request above the message size limit\n\n`CreateOnboarding` with a 5 MiB reference \
             (the limit is 4 MiB).\n\n{}",
            table(&[
                ("answer", format!("{:?}", status.code())),
                ("answer time", format!("{} ms", took.as_millis())),
                ("onboardings stored", stored.to_string()),
            ])
        ),
    );
}
