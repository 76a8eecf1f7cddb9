//! An update the agent sends that cannot be read (a certificate the client library refuses):
//! refused whole, counted, and the stream kept.

use rustls_pki_types::CertificateDer;

use crate::support::*;

use super::*;

async fn counter(gw: &Gateway, name: &str) -> f64 {
    metric(gw, name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn an_unreadable_update_is_refused_whole_and_the_stream_goes_on_to_the_next() {
    within(async {
        let agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);
        let first = agent.gateway_svid();
        agent.push(&first, &[]);
        gw.serving().await;
        let dir = tempfile::tempdir().unwrap();
        let own = onboarding_client(&agent, dir.path(), gw.port);
        let admitted = |c: &Client| {
            let c = c.clone();
            async move { matches!(c.get("/v1/kyc").await, Ok(r) if r.status == 200) }
        };
        assert!(admitted(&own).await);
        let leaf = presented_leaf(&own).await.unwrap();
        let svids = svid_updates(&gw).await;
        let lost = counter(&gw, "idgate_workload_api_disconnects_total").await;

        // A new SVID, with a federated bundle that is not a certificate: the message cannot
        // be read, so nothing of it is taken, the SVID included.
        let second = agent.gateway_svid();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        agent.server().set_x509(
            X509State::issued_by(&agent.ca, second.clone())
                .with_federated("partner.test", vec![garbage]),
        );
        crate::assert_eventually!(
            counter(&gw, "idgate_workload_api_refused_updates_total").await >= 1.0,
            "the unreadable update was not counted as refused; output:\n{}",
            gw.output()
        );
        assert_eq!(svid_updates(&gw).await, svids);
        assert_eq!(presented_leaf(&own).await.unwrap(), leaf);
        assert!(admitted(&own).await, "the trust in force stays");
        // The stream was kept: not lost, not opened again.
        assert_eq!(
            counter(&gw, "idgate_workload_api_disconnects_total").await,
            lost
        );
        assert_eq!(counter(&gw, "idgate_workload_api_connected").await, 1.0);
        assert!(
            gw.output()
                .contains("the SPIFFE Workload API sent an update that cannot be read"),
            "{}",
            gw.output()
        );

        // The next readable update is taken on the same stream.
        let third = agent.gateway_svid();
        agent.push(&third, &[]);
        crate::assert_eventually!(
            svid_updates(&gw).await > svids,
            "the readable update after it was not taken; output:\n{}",
            gw.output()
        );
        assert_ne!(presented_leaf(&own).await.unwrap(), leaf);
        assert!(admitted(&own).await);
        assert_eq!(
            counter(&gw, "idgate_workload_api_disconnects_total").await,
            lost
        );
    })
    .await;
}
