//! The agent going away and coming back.

use crate::support::*;

use super::*;

#[tokio::test]
async fn losing_the_agent_keeps_the_last_svid_serving_with_a_warning_and_it_reconnects() {
    within(async {
        let mut agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);
        let svid = agent.gateway_svid();
        agent.push(&svid, &[]);
        gw.serving().await;
        let dir = tempfile::tempdir().unwrap();
        let client = onboarding_client(&agent, dir.path(), gw.port);
        let mut kept = client.connect().await.unwrap();
        assert_eq!(
            kept.send("GET", "/v1/kyc", &[], "").await.unwrap().status,
            200
        );

        agent.stop().await;
        crate::assert_eventually!(
            metric(&gw, "idgate_workload_api_connected").await == Some(0.0),
            "the loss is not reported; output:\n{}",
            gw.output()
        );
        crate::assert_eventually!(
            !log_lines(
                &gw,
                "idgate_tls::workload",
                "SPIFFE Workload API unreachable: the current SVID keeps serving until it expires",
            )
            .is_empty(),
            "no warning; output:\n{}",
            gw.output()
        );
        // The last SVID keeps serving: old connections and new handshakes alike.
        assert_eq!(
            kept.send("GET", "/v1/kyc", &[], "").await.unwrap().status,
            200
        );
        assert_eq!(
            presented_leaf(&client).await.unwrap(),
            svid.chain[0].to_vec()
        );
        assert_eq!(client.get("/v1/kyc").await.unwrap().status, 200);
        let (status, _) = admin_get(gw.admin_port, "/readyz").await.unwrap();
        assert_eq!(status, 200, "an SVID still valid keeps the gateway ready");

        // The agent comes back (with a rotated SVID): the gateway reconnects by itself.
        agent.restart().await;
        let next = agent.gateway_svid();
        agent.push(&next, &[]);
        crate::assert_eventually!(
            metric(&gw, "idgate_workload_api_connected").await == Some(1.0),
            "no reconnection; output:\n{}",
            gw.output()
        );
        crate::assert_eventually!(
            presented_leaf(&client).await.ok() == Some(next.chain[0].to_vec()),
            "the SVID sent after the restart is not served"
        );
        assert!(
            metric(&gw, "idgate_workload_api_disconnects_total")
                .await
                .unwrap_or(0.0)
                >= 1.0
        );
    })
    .await;
}

#[tokio::test]
async fn once_the_last_svid_expires_without_the_agent_the_gateway_is_not_ready() {
    within(async {
        let mut agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);
        let now = std::time::SystemTime::now();
        let short = agent
            .ca
            .svid_with_validity(
                GATEWAY_ID,
                now - Duration::from_secs(60),
                now + Duration::from_secs(3),
            )
            .unwrap();
        agent.push(&short, &[]);
        gw.serving().await;
        assert_eq!(admin_get(gw.admin_port, "/readyz").await.unwrap().0, 200);

        agent.stop().await;
        // Still valid: ready. Once expired, every handshake would fail: not ready.
        crate::assert_eventually!(
            admin_get(gw.admin_port, "/readyz").await.unwrap().0 == 503,
            "an expired SVID leaves the gateway ready; output:\n{}",
            gw.output()
        );
        // Not before the certificate's own notAfter (whole seconds, so up to one before the
        // validity asked for).
        let until = idgate_tls::not_after(&short.chain[0]).unwrap();
        assert!(std::time::SystemTime::now() >= until);

        // The agent comes back with a fresh SVID: ready again.
        agent.restart().await;
        agent.push(&agent.gateway_svid(), &[]);
        crate::assert_eventually!(
            admin_get(gw.admin_port, "/readyz").await.unwrap().0 == 200,
            "not ready after a fresh SVID; output:\n{}",
            gw.output()
        );
    })
    .await;
}
