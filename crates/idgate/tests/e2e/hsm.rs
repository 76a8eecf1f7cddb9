//! Upstream credentials kept in a real PKCS#11 token (SoftHSM2): wrapped API keys and HMAC
//! keys that never leave the token, imported with `idgate hsm`, used and rotated by a
//! running gateway; a pseudonym key's versions held to 32 bytes at every signature.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::assert_eventually;
use crate::support::*;

async fn gateway_with_credential(
    pki: &Pki,
    upstream: &TestUpstream,
    token: &SoftHsmToken,
    credential: CredentialSpec,
) -> Gateway {
    gateway_with_credential_env(pki, upstream, token, credential, &[]).await
}

/// [`gateway_with_credential`] with `env` added to its environment.
async fn gateway_with_credential_env(
    pki: &Pki,
    upstream: &TestUpstream,
    token: &SoftHsmToken,
    credential: CredentialSpec,
    env: &[(&str, &str)],
) -> Gateway {
    let config = base_config(pki)
        .upstream(
            UpstreamSpec::new("provider", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(credential.refresh_every("250ms")),
        )
        .route(RouteSpec::new(
            "sessions",
            &["GET", "POST", "DELETE"],
            "/v1/{*rest}",
            "provider",
            &[ONBOARDING],
        ));
    let conf = token.conf();
    let mut env = env.to_vec();
    env.push(("SOFTHSM2_CONF", conf.to_str().unwrap()));
    Gateway::start(&config, &env).await
}

#[tokio::test]
async fn wrapped_api_key_from_the_token_reaches_the_provider_and_nowhere_else() {
    let token = SoftHsmToken::new();
    let key = "didit-live-key-7f3a9c21";
    let (code, out, err) = token.hsm(
        &["import-secret", "--uri", &token.uri("didit-api-key")],
        key,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(key) && !err.contains(key));

    let (code, listing, _) = token.hsm(&["list", "--uri", &token.uri("x")], "");
    assert_eq!(code, 0);
    assert!(
        listing.contains("didit-api-key") && listing.contains("wrapped-value"),
        "{listing}"
    );
    assert!(!listing.contains(key));

    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let credential = CredentialSpec::header("x-api-key", &token.uri("didit-api-key"));
    let mut gw =
        gateway_with_credential_env(&pki, &upstream, &token, credential, &[TRACE_LOG]).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
    let reply = client.get("/v1/sessions/abc").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.last().headers.get("x-api-key").unwrap(), key);

    // The token files hold only ciphertext.
    for entry in walk(token.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{entry:?}"
        );
    }
    // Each use is counted per credential label and version.
    let (status, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"idgate_upstream_credential_uses_total{credential="provider",version="1"} 1"#
        ),
        "{metrics}"
    );
    // The key is in no line the gateway wrote, at any level.
    gw.assert_never_logged(&[key]).await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn rotating_the_key_in_the_token_under_load_loses_no_request() {
    let token = SoftHsmToken::new();
    let (code, _, err) = token.hsm(
        &["import-secret", "--uri", &token.uri("didit-api-key")],
        "old-key-1111",
    );
    assert_eq!(code, 0, "{err}");
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let credential = CredentialSpec::header("x-api-key", &token.uri("didit-api-key"));
    let gw = gateway_with_credential(&pki, &upstream, &token, credential).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU32::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let (stop, failures) = (stop.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                match conn.send("GET", "/v1/sessions/x", &[], "").await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, out, err) = token.hsm(
        &["rotate", "--uri", &token.uri("didit-api-key")],
        "new-key-2222",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eventually!(
        upstream
            .last()
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "new-key-2222"),
        "the provider never saw the rotated key"
    );
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        total += t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(total > 20, "too little load to mean anything: {total}");
    // Logged after the new version is put into use: waited for, not assumed written.
    assert_eventually!(
        gw.output().contains("upstream credential rotated"),
        "the rotation was not logged:\n{}",
        gw.output()
    );
    assert!(!gw.output().contains("new-key-2222") && !gw.output().contains("old-key-1111"));
}

#[tokio::test]
async fn sumsub_signature_is_computed_inside_the_token_with_a_non_extractable_key() {
    let token = SoftHsmToken::new();
    let secret = "sumsub-secret-key-0123456789abcdef";
    let (code, _, err) = token.hsm(
        &[
            "import-secret",
            "--kind",
            "hmac",
            "--uri",
            &token.uri("sumsub-hmac"),
        ],
        secret,
    );
    assert_eq!(code, 0, "{err}");
    let (_, listing, _) = token.hsm(&["list", "--uri", &token.uri("x")], "");
    let line = listing
        .lines()
        .find(|l| l.starts_with("sumsub-hmac"))
        .expect(&listing);
    // EXTRACTABLE no, SENSITIVE yes.
    assert!(
        line.contains("hmac-key") && line.contains(" no ") && line.trim_end().ends_with("yes"),
        "{line}"
    );

    let app_token_file = token.dir.path().join("app-token");
    std::fs::write(&app_token_file, "sbx:apptoken123").unwrap();
    std::fs::set_permissions(
        &app_token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let credential = CredentialSpec {
        scheme: Some("sumsub".into()),
        secret: Some(token.uri("sumsub-hmac")),
        ..CredentialSpec::default()
    }
    .with("app_token", format!("file:{}", app_token_file.display()));
    let gw = gateway_with_credential(&pki, &upstream, &token, credential).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
    let body = r#"{"externalUserId":"u-1","levelName":"basic-kyc"}"#;
    let reply = client
        .send(
            "POST",
            "/v1/resources/applicants?levelName=basic-kyc",
            &[("content-type", "application/json")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?} {}", reply.body, gw.output());
    let seen = upstream.last();
    let ts = seen
        .headers
        .get("x-app-access-ts")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let expected = hex_hmac(
        secret,
        format!("{ts}POST/v1/resources/applicants?levelName=basic-kyc{body}").as_bytes(),
    );
    assert_eq!(
        seen.headers.get("x-app-access-sig").unwrap(),
        expected.as_str()
    );
    assert_eq!(seen.headers.get("x-app-token").unwrap(), "sbx:apptoken123");
    assert_eq!(seen.body, body.as_bytes());
}

#[tokio::test]
async fn veriff_signature_covers_the_body_or_the_session_id() {
    let token = SoftHsmToken::new();
    let secret = "veriff-shared-secret-abcdef0123456789";
    let (code, _, err) = token.hsm(
        &[
            "import-secret",
            "--kind",
            "hmac",
            "--uri",
            &token.uri("veriff-hmac"),
        ],
        secret,
    );
    assert_eq!(code, 0, "{err}");
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = base_config(&pki)
        .upstream(
            UpstreamSpec::new("veriff", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec::scheme(
                    "veriff",
                    "env:VERIFF_CLIENT",
                    &token.uri("veriff-hmac"),
                )),
        )
        .route(RouteSpec::new(
            "all",
            &["GET", "POST"],
            "/v1/{*rest}",
            "veriff",
            &[ONBOARDING],
        ));
    let gw = Gateway::start(
        &config,
        &[
            ("SOFTHSM2_CONF", token.conf().to_str().unwrap()),
            ("VERIFF_CLIENT", "veriff-client-key"),
        ],
    )
    .await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let body = r#"{"verification":{"person":{"firstName":"Ana"}}}"#;
    assert_eq!(
        client
            .send("POST", "/v1/sessions", &[], body)
            .await
            .unwrap()
            .status,
        200
    );
    let seen = upstream.last();
    assert_eq!(
        seen.headers.get("x-hmac-signature").unwrap(),
        hex_hmac(secret, body.as_bytes()).as_str()
    );
    assert_eq!(
        seen.headers.get("x-auth-client").unwrap(),
        "veriff-client-key"
    );

    assert_eq!(
        client
            .get("/v1/sessions/sess-42/decision")
            .await
            .unwrap()
            .status,
        200
    );
    let seen = upstream.last();
    assert_eq!(
        seen.headers.get("x-hmac-signature").unwrap(),
        hex_hmac(secret, b"sess-42").as_str()
    );
}

#[tokio::test]
async fn token_initialised_by_idgate_alone_serves_a_credential_through_the_gateway() {
    let token = SoftHsmToken::empty();
    let so_pin = token.dir.path().join("so-pin");
    write_private(&so_pin, b"87654321");
    let pin = token.dir.path().join("pin");
    write_private(&pin, b"1234");
    let init = |extra: &[&str]| {
        let mut args = vec!["init-token", "--module-path", SOFTHSM_MODULE, "--label"];
        args.extend(["idgate", "--so-pin-file", so_pin.to_str().unwrap()]);
        args.extend(["--pin-file", pin.to_str().unwrap()]);
        args.extend(extra);
        token.hsm(&args, "")
    };
    let (code, out, err) = init(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("initialised token \"idgate\""), "{out}");
    token.hsm_ok(&["import-secret"], "didit-api-key", "doomed-key-0000");

    // Initialising again would erase the stored key: refused, and the way to force it named.
    let (code, out, err) = init(&[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("already holds the initialised token \"idgate\"") && err.contains("--force"),
        "{err}"
    );
    let (_, listing, _) = token.hsm(&["list", "--uri", &token.uri("x")], "");
    assert!(listing.contains("didit-api-key"), "{listing}");
    let (code, out, err) = init(&["--force"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, listing, err) = token.hsm(&["list", "--uri", &token.uri("x")], "");
    assert_eq!(code, 0, "{err}");
    assert!(!listing.contains("didit-api-key"), "{listing}");

    let key = "didit-key-from-a-fresh-token";
    token.hsm_ok(&["import-secret"], "didit-api-key", key);
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let credential = CredentialSpec::header("x-api-key", &token.uri("didit-api-key"));
    let gw = gateway_with_credential(&pki, &upstream, &token, credential).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
    assert_eq!(client.get("/v1/sessions/abc").await.unwrap().status, 200);
    assert_eq!(upstream.last().headers.get("x-api-key").unwrap(), key);
}

#[test]
fn init_token_reads_both_pins_from_stdin_and_refuses_a_missing_one() {
    let token = SoftHsmToken::empty();
    let args = [
        "init-token",
        "--module-path",
        SOFTHSM_MODULE,
        "--label",
        "idgate",
    ];
    let (code, _, err) = token.hsm(&args, "5678\n");
    assert_eq!(code, 2);
    assert!(err.contains("no user PIN on stdin"), "{err}");
    assert!(!err.contains("5678"), "{err}");
    let (code, out, err) = token.hsm(&args, "5678\n1234\n");
    assert_eq!(code, 0, "{out}{err}");
    write_private(&token.dir.path().join("pin"), b"1234");
    token.hsm_ok(&["import-secret"], "k", "value");
}

#[test]
fn rotating_past_the_largest_version_is_refused_instead_of_wrapping() {
    let token = SoftHsmToken::new();
    // A key already at the largest version (CKA_ID ffffffff), put there by another tool.
    let key = token.dir.path().join("key.bin");
    write_private(&key, &[7u8; 32]);
    let (code, out, err) = run_bounded(
        std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", token.conf())
            .args([
                "--import",
                key.to_str().unwrap(),
                "--aes",
                "--token",
                "idgate",
            ])
            .args([
                "--label",
                "sumsub-hmac",
                "--id",
                "ffffffff",
                "--pin",
                "1234",
            ]),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = token.hsm(
        &["rotate", "--uri", &token.uri("sumsub-hmac")],
        "sumsub-secret-key-rotated-0123456789",
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("largest version"), "{err}");
    let (_, listing, _) = token.hsm(&["list", "--uri", &token.uri("x")], "");
    let versions: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("sumsub-hmac"))
        .collect();
    assert_eq!(versions.len(), 1, "{listing}");
    assert!(versions[0].contains("4294967295"), "{listing}");
}

/// What the pseudonym of `value` under `key` is: `ps_` and base64url(HMAC-SHA256).
fn pseudonym(key: &str, value: &str) -> String {
    use base64::Engine as _;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&k, value.as_bytes());
    format!(
        "ps_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

#[tokio::test]
async fn a_shorter_token_version_added_after_load_is_not_used() {
    within(async {
        const KEY: &str = "pseudonym-key-in-the-token-3e9a71c05b";
        const SHORT: &str = "sixteen-byte-key";
        const LONGER: &str = "pseudonym-key-in-the-token-rotated-8d2f";
        let token = SoftHsmToken::new();
        let uri = token.uri("pseudonym-key");
        token.hsm_ok(&["import-secret", "--kind", "hmac"], "pseudonym-key", KEY);
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        // The echo upstream answers with the path it was asked for, pseudonymized here.
        let profile = table([
            ("pseudonym_key", uri.as_str().into()),
            (
                "rules",
                toml::Value::Array(vec![toml::Value::Table(table([
                    ("path", "$.path".into()),
                    ("action", "pseudonymize".into()),
                ]))]),
            ),
        ]);
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
            .route(
                RouteSpec::new(
                    "sessions",
                    &["GET"],
                    "/v1/{*rest}",
                    "provider",
                    &[ONBOARDING],
                )
                .with("masking", "pseudonyms"),
            )
            .section(
                "masking",
                table([(
                    "profiles",
                    toml::Value::Table(table([("pseudonyms", toml::Value::Table(profile))])),
                )]),
            );
        let gw = Gateway::start(
            &config,
            &[("SOFTHSM2_CONF", token.conf().to_str().unwrap())],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let path = "/v1/sessions/s-1";
        let reply = client.get(path).await.unwrap();
        assert_eq!(reply.status, 200, "{:?} {}", reply.body, gw.output());
        assert_eq!(reply.json()["path"], pseudonym(KEY, path).as_str());

        // Another version, too short for a pseudonym key, is stored in the running gateway's
        // token (the CLI warns, as it cannot tell what the key is for).
        let (code, out, err) = token.hsm(&["rotate", "--uri", &uri], SHORT);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            err.contains("warning: the HMAC key is 16 bytes long"),
            "{err}"
        );
        // It makes no pseudonym: the answer is refused, not masked with the short key. The
        // gateway measures the version in the signing session, before any C_Sign; the log
        // says so (SoftHSM2 would refuse the short key at C_SignInit itself, other tokens
        // sign with it).
        let reply = client.get(path).await.unwrap();
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status, 503, "{body}");
        assert!(body.contains("masking-unavailable"), "{body}");
        assert!(!body.contains(&pseudonym(SHORT, path)), "{body}");
        assert!(!body.contains(path), "{body}");
        assert_eventually!(
            gw.output()
                .contains("is 16 bytes long; this key needs at least 32"),
            "the log does not say why: {}",
            gw.output()
        );
        assert!(!gw.output().contains(SHORT) && !gw.output().contains(KEY));

        // A version long enough serves again, with no reload.
        token.hsm_ok(&["rotate"], "pseudonym-key", LONGER);
        let reply = client.get(path).await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["path"], pseudonym(LONGER, path).as_str());
    })
    .await;
}
