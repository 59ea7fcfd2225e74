//! Per-tenant ids, the development key, webhook timing, file modes (issue 16 items 10, 12 to 14).

use tonic::Code;
use wa_onboard::grpc::pb;

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
            app_name: "Acme Support".into(),
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
    let path = |u: &str| u.rsplitn(2, '/').nth(1).unwrap_or_default().to_string();
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
    assert_eq!((a_onb.name.as_str(), a_onb.account.as_str(), a_onb.reference.as_str()), ("onboardings/y", "accounts/x", "ref-a"));
    assert_eq!((b_onb.name.as_str(), b_onb.account.as_str(), b_onb.reference.as_str()), ("onboardings/y", "accounts/x", "ref-b"));
    assert_eq!((a_list, b_list), (vec!["ref-a".to_string()], vec!["ref-b".to_string()]));
    for (what, r) in [("account", a_dup_account.err()), ("A onboarding", a_dup_onboarding.err()), ("B onboarding", b_dup_onboarding.err())] {
        let s = r.unwrap_or_else(|| panic!("a duplicate {what} within a tenant must be refused"));
        assert_eq!(s.code(), Code::AlreadyExists, "{what}: {}", s.message());
        assert!(!s.message().contains(".x") && !s.message().contains(".y"), "the message names the id, not the internal key: {}", s.message());
    }
    assert_ne!(path(&a_url), path(&b_url), "each account has its own webhook URL");
}
