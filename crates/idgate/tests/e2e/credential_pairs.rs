//! The two secrets of a signing scheme (Sumsub's app token and HMAC key) rotate as one pair:
//! a provider accepts them only together, so a request never goes out with a new app token
//! and an old key, and the version counted for each use changes when either of them does.

use std::path::Path;

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/resources/applicants?levelName=basic-kyc";
const BODY: &str = r#"{"externalUserId":"u-1","levelName":"basic-kyc"}"#;

/// The app token the upstream saw last, and whether its signature was made with `secret`.
fn last_signed(upstream: &TestUpstream, secret: &str) -> (String, bool) {
    let seen = upstream.last();
    let header = |name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let ts = header("x-app-access-ts");
    let expected = hex_hmac(secret, format!("{ts}POST{PATH}{BODY}").as_bytes());
    (
        header("x-app-token"),
        header("x-app-access-sig") == expected,
    )
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// The versions counted for the credential `label` so far.
async fn versions_used(admin_port: u16, label: &str) -> Vec<String> {
    let (_, metrics) = admin_get(admin_port, "/metrics").await.unwrap();
    let prefix =
        format!(r#"idgate_upstream_credential_uses_total{{credential="{label}",version=""#);
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_failed_refresh_of_the_sumsub_secret_leaves_the_app_token_unrotated() {
    let files = tempfile::tempdir().unwrap();
    let app_token = files.path().join("app-token");
    let secret = files.path().join("secret");
    write_private(&app_token, b"sbx:app-token-one");
    write_private(&secret, b"sumsub-secret-one-0123456789abcdef");

    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let credential = CredentialSpec {
        scheme: Some("sumsub".into()),
        secret: Some(format!("file:{}", secret.display())),
        ..CredentialSpec::default()
    }
    .with("app_token", format!("file:{}", app_token.display()))
    .refresh_every("250ms");
    let config = base_config(&pki)
        .upstream(
            UpstreamSpec::new("sumsub", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(credential),
        )
        .route(RouteSpec::new(
            "applicants",
            &["POST"],
            "/v1/{*rest}",
            "sumsub",
            &[ONBOARDING],
        ));
    let gw = Gateway::start(&config, &[]).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let post = || client.send("POST", PATH, &[("content-type", "application/json")], BODY);

    assert_eq!(post().await.unwrap().status, 200, "{}", gw.output());
    assert_eq!(
        last_signed(&upstream, "sumsub-secret-one-0123456789abcdef"),
        ("sbx:app-token-one".to_owned(), true)
    );

    // The secret becomes unreadable (a mode the gateway refuses), then a new app token
    // arrives: the refresh cannot read the pair whole, so neither half changes.
    set_mode(&secret, 0o644);
    write_private(&app_token, b"sbx:app-token-two");
    let warned = gw
        .output()
        .matches("cannot refresh upstream credential")
        .count();
    // Two more failed refreshes: the second started after both changes.
    assert_eventually!(
        gw.output()
            .matches("cannot refresh upstream credential")
            .count()
            >= warned + 2,
        "no failed refresh:\n{}",
        gw.output()
    );
    assert_eq!(post().await.unwrap().status, 200, "{}", gw.output());
    assert_eq!(
        last_signed(&upstream, "sumsub-secret-one-0123456789abcdef"),
        ("sbx:app-token-one".to_owned(), true),
        "a new app token went out with the old secret"
    );

    // The new secret arrives: app token and secret change together.
    std::fs::write(&secret, "sumsub-secret-two-0123456789abcdef").unwrap();
    set_mode(&secret, 0o600);
    assert_eventually!(
        post().await.is_ok_and(|r| r.status == 200)
            && last_signed(&upstream, "sumsub-secret-two-0123456789abcdef")
                == ("sbx:app-token-two".to_owned(), true),
        "the new pair never went out whole:\n{}",
        gw.output()
    );

    // The app token alone rotates: the pair is new, and so is the version counted.
    write_private(&app_token, b"sbx:app-token-three");
    assert_eventually!(
        post().await.is_ok_and(|r| r.status == 200)
            && last_signed(&upstream, "sumsub-secret-two-0123456789abcdef")
                == ("sbx:app-token-three".to_owned(), true),
        "the new app token never went out:\n{}",
        gw.output()
    );
    let versions = versions_used(gw.admin_port, "sumsub").await;
    assert_eq!(versions.len(), 3, "{versions:?}");

    // Logged after the new pair is put into use: waited for, not assumed written.
    assert_eventually!(
        gw.output().contains("upstream credential rotated"),
        "the rotation was not logged:\n{}",
        gw.output()
    );
    let out = gw.output();
    assert!(
        !out.contains("sbx:app-token") && !out.contains("sumsub-secret-"),
        "{out}"
    );
}
