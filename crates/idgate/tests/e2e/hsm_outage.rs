//! A PKCS#11 token that goes away while the gateway runs (SoftHSM2: its token directory is
//! moved out of the token store and back). Requests that need the token get a clear 503
//! problem and the log names the credential; when the token returns, the gateway uses it
//! again without a restart.
//!
//! The HMAC key never leaves the token, so every request signs inside it: the outage is seen
//! by the very next request, unlike a wrapped API key, whose unwrapped value stays in memory.

use crate::assert_eventually;
use crate::support::*;

#[tokio::test]
async fn token_outage_gives_503_problem_and_log_line_and_recovers_without_restart() {
    let token = SoftHsmToken::new();
    let secret = "veriff-outage-secret-0123456789abcdef";
    token.hsm_ok(&["import-secret", "--kind", "hmac"], "veriff-hmac", secret);

    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = base_config(&pki)
        .upstream(
            UpstreamSpec::new("veriff", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec {
                    label: Some("veriff-hsm".into()),
                    ..CredentialSpec::scheme(
                        "veriff",
                        "env:VERIFF_CLIENT",
                        &token.uri("veriff-hmac"),
                    )
                }),
        )
        .route(RouteSpec::new(
            "sessions",
            &["POST"],
            "/v1/sessions",
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
    let post = || client.send("POST", "/v1/sessions", &[], body);

    let reply = post().await.unwrap();
    assert_eq!(reply.status, 200, "{}", gw.output());
    assert_eq!(
        upstream.last().headers.get("x-hmac-signature").unwrap(),
        hex_hmac(secret, body.as_bytes()).as_str()
    );

    // The token goes away.
    let token_dir = token.token_dir();
    let away = token.dir.path().join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let seen_before = upstream.requests().len();

    for _ in 0..3 {
        let reply = post().await.unwrap();
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        let problem = reply.json();
        assert_eq!(
            problem["type"].as_str(),
            Some("https://idgate.dev/problems/credential-unavailable"),
            "{problem}"
        );
        assert_eq!(problem["status"], 503);
        // The caller is told to retry, not about tokens, slots or labels.
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            !text.contains("idgate") || text.contains("idgate.dev"),
            "{text}"
        );
        assert!(
            !text.contains("PKCS") && !text.contains("veriff-hmac"),
            "{text}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        seen_before,
        "an unsigned request reached the provider"
    );
    // The log says which credential failed and why, once per refused request.
    assert_eventually!(
        json_lines(&gw.output()).iter().any(|l| {
            l.get("problem").and_then(|p| p.as_str()) == Some("credential-unavailable")
                && l.get("reason")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.contains("veriff-hsm") && r.contains("token"))
        }),
        "no log line names the credential:\n{}",
        gw.output()
    );
    assert_eventually!(
        gw.output().contains("PKCS#11 token is unavailable"),
        "the outage was not logged:\n{}",
        gw.output()
    );

    // The token returns: the gateway finds it again by itself.
    std::fs::rename(&away, &token_dir).unwrap();
    assert_eventually!(
        post().await.is_ok_and(|r| r.status == 200),
        "the gateway did not recover after the token returned:\n{}",
        gw.output()
    );
    assert_eq!(
        upstream.last().headers.get("x-hmac-signature").unwrap(),
        hex_hmac(secret, body.as_bytes()).as_str()
    );
    // The log is read by another thread: give it the time to catch up.
    assert_eventually!(
        gw.output().contains("PKCS#11 token is available again"),
        "{}",
        gw.output()
    );
    assert!(!gw.output().contains(secret));
}

#[tokio::test]
async fn wrapped_key_keeps_serving_from_memory_during_an_outage_and_rotation_resumes_after() {
    let token = SoftHsmToken::new();
    token.hsm_ok(&["import-secret"], "didit-api-key", "wrapped-key-one");
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = base_config(&pki)
        .upstream(
            UpstreamSpec::new("didit", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(
                    CredentialSpec::header("x-api-key", &token.uri("didit-api-key"))
                        .refresh_every("250ms"),
                ),
        )
        .route(RouteSpec::get(
            "decision",
            "/v3/session/{id}/decision/",
            "didit",
        ));
    let gw = Gateway::start(
        &config,
        &[("SOFTHSM2_CONF", token.conf().to_str().unwrap())],
    )
    .await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let get = || client.get("/v3/session/s-1/decision/");
    assert_eq!(get().await.unwrap().status, 200);

    let token_dir = token.token_dir();
    let away = token.dir.path().join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    // The refresh fails and says so; requests go on with the value already unwrapped.
    assert_eventually!(
        gw.output().contains("cannot refresh upstream credential"),
        "no warning about the failed refresh:\n{}",
        gw.output()
    );
    for _ in 0..3 {
        assert_eq!(get().await.unwrap().status, 200);
        assert_eq!(
            upstream.last().headers.get("x-api-key").unwrap(),
            "wrapped-key-one"
        );
    }

    // Back, and rotated: the running gateway picks the new version up by itself.
    std::fs::rename(&away, &token_dir).unwrap();
    token.hsm_ok(&["rotate"], "didit-api-key", "wrapped-key-two");
    assert_eventually!(
        get().await.is_ok()
            && upstream
                .last()
                .headers
                .get("x-api-key")
                .is_some_and(|v| v == "wrapped-key-two"),
        "the rotation after the outage never reached the upstream:\n{}",
        gw.output()
    );
    // Logged as the token is used again, read from the pipe by another thread: waited for.
    assert_eventually!(
        gw.output().contains("PKCS#11 token is available again"),
        "the token's return was not logged:\n{}",
        gw.output()
    );
    let out = gw.output();
    assert!(!out.contains("wrapped-key-one") && !out.contains("wrapped-key-two"));
}
