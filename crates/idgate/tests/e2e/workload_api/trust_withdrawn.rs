//! What the agent takes away is gone at once: a federated bundle it empties trusts none of
//! that trust domain's CAs, and a JWT bundle stream that fails shows in the metrics.

use std::collections::BTreeMap;

use idgate_workload_test::JwtAuthority;

use crate::support::*;

use super::*;

#[tokio::test]
async fn a_federated_bundle_the_agent_empties_shuts_its_workloads_out() {
    within(async {
        let agent = Agent::start().await;
        let partner_ca = TestCa::new("partner.test").unwrap();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING, PARTNER]), &[]);
        let svid = agent.gateway_svid();
        agent.push(&svid, &[&partner_ca]);
        gw.serving().await;

        let dir = tempfile::tempdir().unwrap();
        let partner = Client::with_identity(
            &agent.bundle_file("bundle.pem"),
            &caller(&partner_ca, PARTNER, dir.path(), "partner"),
            gw.port,
            rustls::DEFAULT_VERSIONS,
        );
        let own = onboarding_client(&agent, dir.path(), gw.port);
        let admitted = |c: &Client| {
            let c = c.clone();
            async move { matches!(c.get("/v1/kyc").await, Ok(r) if r.status == 200) }
        };
        assert!(admitted(&partner).await, "{}", gw.output());

        // The partner's bundle now holds no CA: SPIRE sends it as empty bytes.
        agent.server().set_x509(
            X509State::issued_by(&agent.ca, svid.clone()).with_federated("partner.test", vec![]),
        );
        crate::assert_eventually!(
            !admitted(&partner).await,
            "a trust domain whose bundle the agent emptied must be refused; output:\n{}",
            gw.output()
        );
        assert!(admitted(&own).await);
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "the gateway stopped"
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreadable_jwt_bundle_message_is_refused_and_counted_and_the_stream_kept() {
    within(async {
        let agent = Agent::start().await;
        let own = JwtAuthority::new(TD).unwrap();
        let good: BTreeMap<String, Vec<u8>> = [(
            own.trust_domain().to_owned(),
            JwtAuthority::workload_api_jwks_of(&[&own]),
        )]
        .into();
        agent.server().set_jwt_bundles(good);
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = config(&agent, &upstream, &[ONBOARDING]).section(
            "jwt_svid",
            table([("audiences", strings(&["spiffe://example.org/idgate"]))]),
        );
        let mut gw = Gateway::spawn(&config, &[]);
        agent.push(&agent.gateway_svid(), &[]);
        gw.serving().await;
        crate::assert_eventually!(
            metric(&gw, "idgate_workload_api_jwt_bundles_connected").await == Some(1.0),
            "the JWT bundle stream is not reported open; output:\n{}",
            gw.output()
        );
        assert_eq!(
            metric(&gw, "idgate_workload_api_jwt_bundles_disconnects_total").await,
            Some(0.0)
        );

        // The agent's JWT bundles become unreadable: each such message is refused whole and
        // counted, the stream stays open (connecting again would bring the same message),
        // and the X.509 stream is untouched.
        let broken: BTreeMap<String, Vec<u8>> =
            [(own.trust_domain().to_owned(), b"{".to_vec())].into();
        agent.server().set_jwt_bundles(broken);
        crate::assert_eventually!(
            metric(&gw, "idgate_workload_api_refused_updates_total")
                .await
                .unwrap_or(0.0)
                >= 1.0,
            "the unreadable JWT bundles were not counted as refused; output:\n{}",
            gw.output()
        );
        assert_eq!(
            metric(&gw, "idgate_workload_api_jwt_bundles_connected").await,
            Some(1.0)
        );
        assert_eq!(
            metric(&gw, "idgate_workload_api_jwt_bundles_disconnects_total").await,
            Some(0.0)
        );
        assert_eq!(
            metric(&gw, "idgate_workload_api_connected").await,
            Some(1.0)
        );
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "the gateway stopped"
        );
    })
    .await;
}
