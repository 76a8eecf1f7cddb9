//! An in-house upstream that authenticates the gateway by mutual TLS: it is presented the
//! gateway's SVID from the Workload API, the newest one after each rotation.

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::*;

use super::*;

/// An upstream with an SVID of `agent`'s CA that requires a client SVID of the same CA.
async fn mesh_upstream(agent: &Agent) -> TestUpstream {
    let svid = agent
        .ca
        .svid(
            "spiffe://example.org/ns/kyc/sa/liveness",
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in agent.ca.bundle() {
        roots.add(c).unwrap();
    }
    TestUpstream::mutual_tls(
        svid.chain.clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8.clone())),
        roots,
        UpstreamMode::Echo,
    )
    .await
}

#[tokio::test]
async fn an_upstream_requiring_mutual_tls_is_presented_the_gateways_newest_svid() {
    within(async {
        let agent = Agent::start().await;
        let upstream = mesh_upstream(&agent).await;
        let bundle = agent.bundle_file("bundle.pem");
        let config = GatewayConfig::new(Path::new("-"), Path::new("-"))
            .workload_api(&agent.endpoint())
            .json_log("info")
            .upstream(
                UpstreamSpec::new("liveness", &upstream.url(true))
                    .ca(&bundle)
                    .with("client_certificate", "svid")
                    // A new connection, so a new handshake, for every request.
                    .with("pool_max_idle", 0),
            )
            .upstream(UpstreamSpec::new("anonymous", &upstream.url(true)).ca(&bundle))
            .route(RouteSpec::new(
                "kyc",
                &["GET"],
                "/v1/kyc",
                "liveness",
                &[ONBOARDING],
            ))
            .route(RouteSpec::new(
                "anonymous",
                &["GET"],
                "/v1/anonymous",
                "anonymous",
                &[ONBOARDING],
            ));
        let mut gw = Gateway::spawn(&config, &[]);
        let first = agent.gateway_svid();
        agent.push(&first, &[]);
        gw.serving().await;
        let dir = tempfile::tempdir().unwrap();
        let client = onboarding_client(&agent, dir.path(), gw.port);

        assert_eq!(
            client.get("/v1/kyc").await.unwrap().status,
            200,
            "{}",
            gw.output()
        );
        assert_eq!(upstream.last().client_cert.as_ref(), Some(&first.chain[0]));

        let next = agent.gateway_svid();
        agent.push(&next, &[]);
        crate::assert_eventually!(
            svid_updates(&gw).await >= 2.0,
            "rotation not taken; output:\n{}",
            gw.output()
        );
        assert_eq!(client.get("/v1/kyc").await.unwrap().status, 200);
        assert_eq!(
            upstream.last().client_cert.as_ref(),
            Some(&next.chain[0]),
            "a new upstream connection must present the newest SVID"
        );

        // Without client_certificate the gateway presents nothing, and the upstream refuses.
        let seen = upstream.requests().len();
        let refused = client.get("/v1/anonymous").await.unwrap();
        assert_eq!(refused.status, 502, "{:?}", refused.body);
        assert_eq!(upstream.requests().len(), seen);
    })
    .await;
}
