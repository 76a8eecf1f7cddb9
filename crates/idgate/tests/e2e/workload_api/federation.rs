//! Federated trust domains added and removed by the agent at run time.

use crate::support::*;

use super::*;

#[tokio::test]
async fn a_federated_bundle_added_at_run_time_lets_its_workloads_in_and_removing_it_shuts_them_out()
{
    within(async {
        let agent = Agent::start().await;
        let partner_ca = TestCa::new("partner.test").unwrap();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING, PARTNER]), &[]);
        let svid = agent.gateway_svid();
        agent.push(&svid, &[]);
        gw.serving().await;

        let dir = tempfile::tempdir().unwrap();
        let bundle = agent.bundle_file("bundle.pem");
        let partner = Client::with_identity(
            &bundle,
            &caller(&partner_ca, PARTNER, dir.path(), "partner"),
            gw.port,
            rustls::DEFAULT_VERSIONS,
        );
        let own = onboarding_client(&agent, dir.path(), gw.port);
        let admitted = |c: &Client| {
            let c = c.clone();
            async move { matches!(c.get("/v1/kyc").await, Ok(r) if r.status == 200) }
        };
        assert!(admitted(&own).await);
        assert!(
            !admitted(&partner).await,
            "partner.test is not federated yet"
        );

        // The agent federates with partner.test: its workloads get in, without a restart.
        let before = bundle_updates(&gw).await;
        agent.push(&svid, &[&partner_ca]);
        crate::assert_eventually!(
            bundle_updates(&gw).await > before,
            "the federated bundle was not taken; output:\n{}",
            gw.output()
        );
        assert!(admitted(&partner).await, "{}", gw.output());
        let pid = gw.child.id();

        // The federation ends: they are shut out again; the own trust domain is untouched.
        let before = bundle_updates(&gw).await;
        agent.push(&svid, &[]);
        crate::assert_eventually!(
            bundle_updates(&gw).await > before,
            "the removal was not taken; output:\n{}",
            gw.output()
        );
        assert!(
            !admitted(&partner).await,
            "a removed trust domain must be refused"
        );
        assert!(admitted(&own).await);
        assert_eq!(gw.child.id(), pid);
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "the gateway restarted"
        );
        // Both refusals were handshakes the verifier failed, counted as such.
        let refused = metric(
            &gw,
            "idgate_tls_handshake_failures_total{reason=\"unknown_ca\"}",
        )
        .await;
        assert!(refused.unwrap_or(0.0) >= 2.0, "{refused:?}");
    })
    .await;
}
