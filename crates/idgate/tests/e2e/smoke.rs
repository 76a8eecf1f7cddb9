use crate::support::*;

#[tokio::test]
async fn allowed_workload_reaches_upstream_and_others_get_403() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"{base}
[[upstreams]]
name = "provider"
url = "{url}"
ca = "{ca}"
[upstreams.credential]
header = "x-api-key"
secret = "env:TEST_PROVIDER_KEY"

[[routes]]
name = "decision"
methods = ["GET"]
path = "/v3/session/{{session_id}}/decision/"
upstream = "provider"
allow = ["spiffe://example.org/ns/kyc/*"]
"#,
        base = base_config(&pki, port, admin),
        url = upstream.url(true),
        ca = pki.files.bundle.display(),
    );
    let gw = Gateway::start(
        &config,
        port,
        admin,
        &[("TEST_PROVIDER_KEY", "prov-key-123")],
    )
    .await;

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
    assert!(!gw.output().contains("prov-key-123"));
}
