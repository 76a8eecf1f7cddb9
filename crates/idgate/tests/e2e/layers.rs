//! How a route's authentication layers combine.

use crate::support::*;

/// A gateway whose route accepts `{ any = ["mtls", "api_key"] }`, with an (empty) key store.
async fn any_gateway(pki: &Pki, upstream: &TestUpstream) -> Gateway {
    let pepper = pki.path().join("pepper");
    std::fs::write(&pepper, "0123456789abcdef0123456789abcdef-pepper").unwrap();
    std::fs::set_permissions(&pepper, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let any = toml::toml! { any = ["mtls", "api_key"] };
    let config = base_config(pki)
        .section(
            "api_keys",
            table([
                ("store", path_value(&pki.path().join("keys.redb"))),
                ("pepper", format!("file:{}", pepper.display()).into()),
            ]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::new(
                "either",
                &["GET"],
                "/v3/sessions/",
                "provider",
                &[ONBOARDING, "apikey:batch"],
            )
            .with("auth", toml::Value::Array(vec![any.into()])),
        );
    Gateway::start(&config, &[TRACE_LOG]).await
}

#[tokio::test]
async fn any_layer_refuses_a_presented_bad_credential_even_when_another_layer_passes() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let mut gw = any_gateway(&pki, &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

    // The SVID alone passes.
    assert_eq!(client.get("/v3/sessions/").await.unwrap().status, 200);

    // The same SVID with a wrong (unknown, revoked, forged…) API key is refused: a bad
    // credential is never silently ignored.
    let bogus = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52));
    let reply = client
        .send("GET", "/v3/sessions/", &[("x-api-key", &bogus)], "")
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert_eq!(
        reply.json()["type"],
        "https://idgate.dev/problems/invalid-api-key"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the refused request reached the provider"
    );
    gw.assert_never_logged(&[&bogus]).await;
}
