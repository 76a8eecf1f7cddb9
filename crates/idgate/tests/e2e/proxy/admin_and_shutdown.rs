//! The admin endpoints, and shutdown on SIGTERM: exit 0, every access line written,
//! idle connections closed and in-flight requests finished.

use std::time::{Duration, Instant};

use crate::assert_eventually;
use crate::support::*;

use super::{DECISION, Setup, access_lines, assert_problem};

// --------------------------------------------------------------------------------- admin

#[tokio::test]
async fn health_endpoints_answer_on_admin_port_and_not_on_public_listener() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        for path in ["/healthz", "/readyz"] {
            let (status, body) = admin_get(s.gw.admin_port, path).await.unwrap();
            assert_eq!(status, 200, "admin {path}: {body}");
            for c in [s.client(Some(ONBOARDING)), s.client_h2(Some(ONBOARDING))] {
                let r = c.get(path).await.unwrap();
                assert_problem(&r, 404, &[]);
            }
        }
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

// ------------------------------------------------------------------------------ shutdown

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_0() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!(r.status, 200);
        s.gw.signal("TERM");
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15));
        let status = status.unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_the_access_line_of_every_request_before_exiting() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Delay(Duration::from_millis(300))).await;
        let (_, metrics) = admin_get(s.gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_access_log_dropped_total 0"),
            "{metrics}"
        );
        let clients: Vec<_> = (0..5).map(|_| s.client(Some(ONBOARDING))).collect();
        let in_flight: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.get(DECISION).await }))
            .collect();
        assert_eventually!(
            s.upstream.requests().len() == in_flight.len(),
            "the requests did not reach the upstream"
        );
        // Their lines are made as the gateway stops: it must write them before it exits.
        s.gw.signal("TERM");
        let mut rids = Vec::new();
        for r in in_flight {
            let r = r.await.unwrap().expect("the in-flight request is answered");
            assert_eq!(r.status, 200, "{:?}", r.body);
            rids.push(r.header("x-request-id").unwrap().to_owned());
        }
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "output:\n{}",
            s.gw.output()
        );
        assert_eventually!(
            access_lines(&s.gw).len() >= rids.len(),
            "expected {} access lines; output:\n{}",
            rids.len(),
            s.gw.output()
        );
        let lines = access_lines(&s.gw);
        for rid in &rids {
            let mine = |l: &&std::collections::HashMap<String, serde_json::Value>| {
                l.get("request_id").and_then(|v| v.as_str()) == Some(rid)
            };
            assert_eq!(lines.iter().filter(mine).count(), 1, "one line for {rid}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_idle_keep_alive_connections_exits_0_promptly() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let mut h1 = s.client(Some(ONBOARDING)).connect().await.unwrap();
        let mut h2 = s.client_h2(Some(ONBOARDING)).connect().await.unwrap();
        assert_eq!(h1.send("GET", DECISION, &[], "").await.unwrap().status, 200);
        assert_eq!(h2.send("GET", DECISION, &[], "").await.unwrap().status, 200);
        // Both connections stay open and idle while the gateway is told to stop.
        s.gw.signal("TERM");
        let started = Instant::now();
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "idle connections held the shutdown for {:?}",
            started.elapsed()
        );
        drop((h1, h2));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let client = s.client(Some(ONBOARDING));
        let in_flight = tokio::spawn(async move { client.get(DECISION).await });
        assert_eventually!(
            s.upstream.requests().len() == 1,
            "the request did not reach the upstream"
        );
        s.gw.signal("TERM");
        let r = in_flight
            .await
            .unwrap()
            .expect("the in-flight request is answered");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
    })
    .await
}
