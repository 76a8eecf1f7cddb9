//! JWT-SVID callers verified with the JWT bundles the agent streams: no bundle file, and
//! each change the agent sends (a federated trust domain, a key rotation) takes effect.

use std::collections::BTreeMap;

use idgate_workload_test::JwtAuthority;

use crate::support::*;

use super::*;

const AUDIENCE: &str = "spiffe://example.org/idgate";

fn bundles(authorities: &[&JwtAuthority]) -> BTreeMap<String, Vec<u8>> {
    let mut by_domain: BTreeMap<String, Vec<&JwtAuthority>> = BTreeMap::new();
    for a in authorities {
        by_domain
            .entry(a.trust_domain().to_owned())
            .or_default()
            .push(a);
    }
    by_domain
        .into_iter()
        // As SPIRE's agent sends them: without `use`.
        .map(|(td, keys)| (td, JwtAuthority::workload_api_jwks_of(&keys)))
        .collect()
}

async fn jwt_updates(gw: &Gateway) -> f64 {
    metric(
        gw,
        "idgate_workload_api_updates_total{kind=\"jwt_bundles\"}",
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn jwt_svids_are_verified_with_the_agents_jwt_bundles_as_they_change() {
    within(async {
        let agent = Agent::start().await;
        let own = JwtAuthority::new(TD).unwrap();
        let partner = JwtAuthority::new("partner.test").unwrap();
        agent.server().set_jwt_bundles(bundles(&[&own]));
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut config = GatewayConfig::new(Path::new("-"), Path::new("-"))
            .workload_api(&agent.endpoint())
            .json_log("info")
            .section("jwt_svid", table([("audiences", strings(&[AUDIENCE]))]))
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new(
                    "kyc",
                    &["GET"],
                    "/v1/kyc",
                    "provider",
                    &[ONBOARDING, PARTNER],
                )
                .with("auth", strings(&["jwt_svid"])),
            );
        config.listener.client_auth = ClientAuth::Optional;
        let mut gw = Gateway::spawn(&config, &[]);
        agent.push(&agent.gateway_svid(), &[]);
        gw.serving().await;
        crate::assert_eventually!(
            jwt_updates(&gw).await >= 1.0,
            "no JWT bundles taken; output:\n{}",
            gw.output()
        );

        // A client without a certificate, as behind a proxy that ends the callers' TLS.
        let client = Client {
            config: tls_client_config(
                &agent.bundle_file("bundle.pem"),
                None,
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port: gw.port,
            h2: false,
        };
        let status = |token: String| {
            let client = client.clone();
            async move {
                client
                    .send(
                        "GET",
                        "/v1/kyc",
                        &[("authorization", &format!("Bearer {token}"))],
                        "",
                    )
                    .await
                    .unwrap()
                    .status
            }
        };
        let ttl = Duration::from_secs(300);
        assert_eq!(
            status(own.mint(ONBOARDING, &[AUDIENCE], ttl).unwrap()).await,
            200,
            "{}",
            gw.output()
        );
        assert_eq!(
            status(
                own.mint(ONBOARDING, &["spiffe://example.org/other"], ttl)
                    .unwrap()
            )
            .await,
            401
        );
        let from_partner = partner.mint(PARTNER, &[AUDIENCE], ttl).unwrap();
        assert_eq!(
            status(from_partner.clone()).await,
            401,
            "partner.test has no bundle yet"
        );

        // The agent federates with partner.test: its JWT-SVIDs are taken, without a restart.
        let before = jwt_updates(&gw).await;
        agent.server().set_jwt_bundles(bundles(&[&own, &partner]));
        crate::assert_eventually!(
            jwt_updates(&gw).await > before,
            "the new JWT bundles were not taken; output:\n{}",
            gw.output()
        );
        assert_eq!(status(from_partner.clone()).await, 200, "{}", gw.output());

        // example.org rotates its key and partner.test leaves: the old key and the partner
        // are refused, the new key is taken.
        let rotated = JwtAuthority::new(TD).unwrap();
        let old_token = own.mint(ONBOARDING, &[AUDIENCE], ttl).unwrap();
        let before = jwt_updates(&gw).await;
        agent.server().set_jwt_bundles(bundles(&[&rotated]));
        crate::assert_eventually!(
            jwt_updates(&gw).await > before,
            "the rotation was not taken; output:\n{}",
            gw.output()
        );
        assert_eq!(status(old_token).await, 401);
        assert_eq!(status(from_partner).await, 401);
        assert_eq!(
            status(rotated.mint(ONBOARDING, &[AUDIENCE], ttl).unwrap()).await,
            200
        );
        assert_eq!(upstream.requests().len(), 3);
    })
    .await;
}
