//! SIGTERM with slow requests in flight and the audit trail on: every request answered
//! before the process exits 0, and the trail closed so that `audit verify` passes; and
//! requests the drain gives up on, recorded before the trail closes.

use std::time::Duration;

use super::TrailKeys;
use super::gateway::{audit_section, entries};
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
        let status = gw.wait_exit(Duration::from_secs(20));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gw.output());
        // The process has exited, but its last lines may still be on their way through the
        // pipe to the thread that reads it: waited for, then their order checked.
        assert_eventually!(
            gw.output().contains("all connections drained")
                && gw.output().contains("audit trail closed"),
            "the drain's or the trail's closing line is missing:\n{}",
            gw.output()
        );
        let output = gw.output();
        let drained = output.find("all connections drained").unwrap();
        let closed = output.find("audit trail closed").unwrap();
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

/// The drain gives up (`drain_timeout`) on requests whose upstream has not answered: their
/// connections are cut, HTTP/1.1 and HTTP/2 alike, and each request is in the trail (499)
/// before it closes, so that no request that reached the gateway goes unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_the_drain_timeout_are_recorded_in_the_trail_before_it_closes() {
    within(async {
        let pki = Pki::default_pki();
        let upstream =
            TestUpstream::https(&pki, UpstreamMode::Delay(Duration::from_secs(40))).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let mut lifecycle = toml::Table::new();
        lifecycle.insert("drain_delay".into(), "0s".into());
        lifecycle.insert("drain_timeout".into(), "1s".into());
        let config = OneRoute::kyc_decision(&upstream.url(true))
            .config(&pki)
            .section("audit", audit_section(&keys, trail.path(), &[]))
            .section("lifecycle", lifecycle);
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", "sk_test_cut")]).await;
        let ids = ["cut-over-http1", "cut-over-http2"];
        let in_flight: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let client = Client::new(&pki, Some(ONBOARDING), gw.port, i == 1);
                let id = (*id).to_owned();
                tokio::spawn(async move {
                    client
                        .send(
                            "GET",
                            "/v3/session/s-1/decision/",
                            &[("x-request-id", &id)],
                            "",
                        )
                        .await
                })
            })
            .collect();
        assert_eventually!(
            upstream.requests().len() == ids.len(),
            "the requests did not reach the upstream"
        );
        gw.signal("TERM");
        let signalled = std::time::Instant::now();
        for r in in_flight {
            let r = r.await.unwrap();
            assert!(r.is_err(), "a cut request was answered: {r:?}");
        }
        let status = gw.wait_exit(Duration::from_secs(15));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gw.output());
        // drain_timeout (1 s), the cut and the trail's close, well within the bound.
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the shutdown took {:?}",
            signalled.elapsed()
        );
        let entries = entries(trail.path(), &[]);
        for id in ids {
            let mine: Vec<_> = entries
                .iter()
                .filter(|e| e["metadata"]["uid"] == id)
                .collect();
            assert_eq!(mine.len(), 1, "one record for {id}: {entries:#?}");
            assert_eq!(mine[0]["http_response"]["code"], 499, "{:#?}", mine[0]);
        }
        let public = keys.public();
        let (code, out, err) = idgate_cli(&[
            "audit",
            "verify",
            "--key",
            public.to_str().unwrap(),
            trail.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("sealed") && !out.contains("dropped:"), "{out}");
        // Logged before the exit, read from the pipe by another thread: waited for.
        assert_eventually!(
            gw.output()
                .contains("drain timeout reached; closing the remaining connections")
                && gw.output().contains("remaining connections closed"),
            "{}",
            gw.output()
        );
        let output = gw.output();
        assert!(!output.contains("records are lost"), "{output}");
    })
    .await
}
