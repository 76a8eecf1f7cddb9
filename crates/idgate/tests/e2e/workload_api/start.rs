//! Start-up: not ready until the agent delivers the gateway's SVID.

use crate::support::*;

use super::*;

#[tokio::test]
async fn the_gateway_is_not_ready_and_serves_no_tls_until_the_agent_delivers_its_svid() {
    within(async {
        let agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);

        // The admin listener is up and says not ready; the agent has no SVID for it yet.
        let waiting = |gw: &Gateway| {
            log_lines(
                gw,
                "idgate_proxy::gateway",
                "waiting for the gateway's SVID from the SPIFFE Workload API; not ready until it comes",
            )
            .first()
            .and_then(|l| l.get("admin")?.as_str()?.parse::<std::net::SocketAddr>().ok())
        };
        crate::assert_eventually!(
            waiting(&gw).is_some(),
            "no waiting line; output:\n{}",
            gw.output()
        );
        gw.admin_port = waiting(&gw).unwrap().port();
        let (status, _) = admin_get(gw.admin_port, "/readyz").await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(
            metric(&gw, "idgate_workload_api_connected").await,
            Some(0.0),
            "before any SVID the stream counts as not connected"
        );

        let svid = agent.gateway_svid();
        agent.push(&svid, &[]);
        gw.serving().await;
        let (status, _) = admin_get(gw.admin_port, "/readyz").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(metric(&gw, "idgate_workload_api_connected").await, Some(1.0));

        let dir = tempfile::tempdir().unwrap();
        let client = onboarding_client(&agent, dir.path(), gw.port);
        assert_eq!(presented_leaf(&client).await.unwrap(), svid.chain[0].to_vec());
        let reply = client.get("/v1/kyc").await.unwrap();
        assert_eq!(reply.status, 200, "{}", gw.output());
        assert_eq!(upstream.requests().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_gateway_without_a_registration_entry_keeps_waiting_and_says_why() {
    within(async {
        let agent = Agent::start().await;
        agent.server().set_no_identity();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);
        crate::assert_eventually!(
            gw.output()
                .contains("no registration entry matching the gateway"),
            "the refusal is not explained; output:\n{}",
            gw.output()
        );
        assert!(!gw.ready_file.exists(), "it must not report serving");
    })
    .await;
}

#[tokio::test]
async fn a_listener_port_taken_when_the_svid_arrives_ends_the_gateway_naming_it() {
    within(async {
        let agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = config(&agent, &upstream, &[ONBOARDING]);
        config.listener.bind = taken.local_addr().unwrap();
        let mut gw = Gateway::spawn(&config, &[]);
        agent.push(&agent.gateway_svid(), &[]);
        crate::assert_eventually!(
            gw.child.try_wait().unwrap().is_some(),
            "the gateway kept running without its listener; output:\n{}",
            gw.output()
        );
        // Reaped already: the status is the one try_wait saw.
        assert!(!gw.child.wait().unwrap().success());
        crate::assert_eventually!(
            gw.output()
                .contains(&format!("listener.bind {}", taken.local_addr().unwrap())),
            "the error does not name listener.bind; output:\n{}",
            gw.output()
        );
        assert!(!gw.ready_file.exists());
    })
    .await;
}

#[tokio::test]
async fn svid_hint_presents_the_svid_of_the_hinted_entry_not_the_default_one() {
    within(async {
        let agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut config = config(&agent, &upstream, &[ONBOARDING]);
        config.identity.svid_hint = Some("mtls-listener".to_owned());
        let mut gw = Gateway::spawn(&config, &[]);
        let other = agent
            .ca
            .svid("spiffe://example.org/batch", Duration::from_secs(3600))
            .unwrap();
        let listener = agent.gateway_svid();
        agent.server().set_x509(
            X509State::new(idgate_workload_test::X509Identity::new(
                other.clone(),
                agent.ca.bundle(),
            ))
            .with_identity(
                idgate_workload_test::X509Identity::new(listener.clone(), agent.ca.bundle())
                    .with_hint("mtls-listener"),
            ),
        );
        gw.serving().await;
        let dir = tempfile::tempdir().unwrap();
        let client = onboarding_client(&agent, dir.path(), gw.port);
        assert_eq!(
            presented_leaf(&client).await.unwrap(),
            listener.chain[0].to_vec()
        );
        assert_ne!(other.chain[0], listener.chain[0]);
    })
    .await;
}
