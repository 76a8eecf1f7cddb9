use crate::support::*;

#[tokio::test]
async fn allowed_workload_reaches_upstream_and_others_get_403() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let mut gw = OneRoute::kyc_decision(&upstream.url(true))
        .start(&pki, &[("TEST_PROVIDER_KEY", "prov-key-123"), TRACE_LOG])
        .await;
    let port = gw.port;

    let ok = Client::new(&pki, Some(ONBOARDING), port, true)
        .send(
            "GET",
            "/v3/session/abc/decision/?q=1",
            &[("x-api-key", "caller-key")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/v3/session/abc/decision/?q=1");
    assert_eq!(seen.headers.get("x-api-key").unwrap(), "prov-key-123");

    let denied = Client::new(&pki, Some(FRONTEND), port, false)
        .get("/v3/session/abc/decision/")
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    gw.assert_never_logged(&["prov-key-123", "caller-key"])
        .await;
}

#[tokio::test]
async fn headers_that_would_change_the_method_url_or_origin_never_reach_the_upstream() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let gw = decision_gateway(&pki, &upstream, toml::Table::new()).await;
    let port = gw.port;
    let smuggled = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-original-url", "/v3/session/x/delete/"),
        ("x-rewrite-url", "/v3/session/x/delete/"),
        ("forwarded", "for=10.0.0.1;host=admin.internal"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "http"),
        ("x-real-ip", "10.0.0.1"),
    ];
    let reply = Client::new(&pki, Some(ONBOARDING), port, true)
        .send("GET", "/v3/session/s1/decision/", &smuggled, "")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let seen = upstream.last();
    for (name, _) in smuggled {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.method, "GET");
}

#[tokio::test]
async fn forwarded_for_can_be_withheld_from_an_upstream() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let gw = decision_gateway(&pki, &upstream, toml::toml! { forwarded_for = false }).await;
    let port = gw.port;
    let reply = Client::new(&pki, Some(ONBOARDING), port, false)
        .send(
            "GET",
            "/v3/session/s1/decision/",
            &[("x-forwarded-for", "10.1.2.3")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(upstream.last().headers.get("x-forwarded-for").is_none());
}

/// A gateway with one GET route to a session decision on `upstream`, allowed for the
/// onboarding workload; `upstream_extra` is added to the `[[upstreams]]` table.
async fn decision_gateway(
    pki: &Pki,
    upstream: &TestUpstream,
    upstream_extra: toml::Table,
) -> Gateway {
    OneRoute {
        url: &upstream.url(true),
        upstream_extra,
        path: "/v3/session/{id}/decision/",
        ..OneRoute::default()
    }
    .start(pki, &[])
    .await
}
