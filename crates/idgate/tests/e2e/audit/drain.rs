//! SIGTERM with slow requests in flight and the audit trail on: every request answered
//! before the process exits 0, and the trail closed so that `audit verify` passes.

use std::time::Duration;

use super::TrailKeys;
use super::gateway::audit_section;
use crate::assert_eventually;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_then_closes_the_trail() {
    within(async {
        let pki = Pki::default_pki();
        let upstream =
            TestUpstream::https(&pki, UpstreamMode::Delay(Duration::from_millis(2500))).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let mut lifecycle = toml::Table::new();
        lifecycle.insert("drain_delay".into(), "500ms".into());
        lifecycle.insert("drain_timeout".into(), "20s".into());
        let config = OneRoute::kyc_decision(&upstream.url(true))
            .config(&pki)
            .section("audit", audit_section(&keys, trail.path(), &[]))
            .section("lifecycle", lifecycle);
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", "sk_test_drain")]).await;
        let in_flight: Vec<_> = (0..6)
            .map(|i| {
                let client = Client::new(&pki, Some(ONBOARDING), gw.port, i % 2 == 1);
                tokio::spawn(async move { client.get("/v3/session/s-1/decision/").await })
            })
            .collect();
        assert_eventually!(
            upstream.requests().len() == in_flight.len(),
            "the requests did not reach the upstream"
        );
        gw.signal("TERM");
        assert_eventually!(
            matches!(admin_get(gw.admin_port, "/readyz").await, Ok((503, _))),
            "/readyz did not turn false; output:\n{}",
            gw.output()
        );
        for r in in_flight {
            let r = r.await.unwrap().expect("the in-flight request is answered");
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        let status = wait_for_exit(&mut gw.child, Duration::from_secs(20));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gw.output());
        let output = gw.output();
        let drained = output.find("all connections drained").unwrap_or(usize::MAX);
        let closed = output.find("audit trail closed").unwrap_or(0);
        assert!(
            drained < closed,
            "the trail closed before the drain:\n{output}"
        );

        let public = keys.public();
        let (code, out, err) = idgate_cli(&[
            "audit",
            "verify",
            "--key",
            public.to_str().unwrap(),
            trail.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    })
    .await
}
