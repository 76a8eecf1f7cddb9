//! The drain on SIGTERM under load, with `[lifecycle]`: `/readyz` false at once while the
//! listener still accepts for `drain_delay`, then closed; every request in flight answered
//! before the process exits 0.

use std::time::{Duration, Instant};

use crate::assert_eventually;
use crate::support::*;

use super::{DECISION, Setup};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_turns_not_ready_first_and_cuts_no_request_in_flight() {
    within(async {
        let upstream_delay = Duration::from_secs(3);
        let mut s = Setup::start_with(UpstreamMode::Delay(upstream_delay), |c| {
            let mut lifecycle = toml::Table::new();
            lifecycle.insert("drain_delay".into(), "1500ms".into());
            lifecycle.insert("drain_timeout".into(), "20s".into());
            c.sections.insert("lifecycle".into(), lifecycle.into());
        })
        .await;
        let (status, _) = admin_get(s.gw.admin_port, "/readyz").await.unwrap();
        assert_eq!(status, 200);
        // Slow requests in flight on HTTP/1.1 and HTTP/2 connections.
        let clients: Vec<_> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    s.client(Some(ONBOARDING))
                } else {
                    s.client_h2(Some(ONBOARDING))
                }
            })
            .collect();
        let in_flight: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.get(DECISION).await }))
            .collect();
        assert_eventually!(
            s.upstream.requests().len() == in_flight.len(),
            "the requests did not reach the upstream"
        );

        s.gw.signal("TERM");
        let signalled = Instant::now();
        // Not ready first...
        assert_eventually!(
            matches!(admin_get(s.gw.admin_port, "/readyz").await, Ok((503, _))),
            "/readyz did not turn false; output:\n{}",
            s.gw.output()
        );
        // ...while the listener still takes a new connection, whose request is in flight
        // when the listener closes and is answered like the others.
        assert!(
            signalled.elapsed() < Duration::from_millis(1500),
            "too slow to check the delay: {:?}",
            signalled.elapsed()
        );
        let late = s.client(Some(ONBOARDING));
        let late = tokio::spawn(async move { late.get(DECISION).await });
        assert_eventually!(
            s.upstream.requests().len() == 7,
            "a connection during drain_delay was not served; output:\n{}",
            s.gw.output()
        );
        // After drain_delay the listener is closed while requests are still in flight.
        tokio::time::sleep_until((signalled + Duration::from_millis(2000)).into()).await;
        assert!(
            s.gw.child.try_wait().unwrap().is_none(),
            "exited with requests in flight; output:\n{}",
            s.gw.output()
        );
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port))
                .await
                .is_err(),
            "the listener still accepts after drain_delay"
        );

        for (i, r) in in_flight.into_iter().chain([late]).enumerate() {
            let r = r.await.unwrap().expect("the in-flight request is answered");
            assert_eq!(r.status, 200, "{:?}", r.body);
            // An HTTP/1.1 connection says, on the answer in flight, that it ends there.
            if i % 2 == 0 {
                assert_eq!(r.header("connection"), Some("close"), "request {i}");
            }
        }
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("still running after the drain; output:\n{}", s.gw.output()));
        assert_eq!(status.code(), Some(0), "output:\n{}", s.gw.output());
        let output = s.gw.output();
        let not_ready = output
            .find("shutting down: not ready")
            .unwrap_or(usize::MAX);
        let closed = output.find("listener closed: draining").unwrap_or(0);
        assert!(not_ready < closed, "output:\n{output}");
        assert!(
            output.contains("all connections drained"),
            "output:\n{output}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_while_draining_exits_at_once_and_not_0() {
    within(async {
        let mut s = Setup::start_with(UpstreamMode::Delay(Duration::from_secs(10)), |c| {
            let mut lifecycle = toml::Table::new();
            lifecycle.insert("drain_timeout".into(), "30s".into());
            c.sections.insert("lifecycle".into(), lifecycle.into());
        })
        .await;
        let client = s.client(Some(ONBOARDING));
        let _in_flight = tokio::spawn(async move { client.get(DECISION).await });
        assert_eventually!(
            s.upstream.requests().len() == 1,
            "the request did not reach the upstream"
        );
        s.gw.signal("TERM");
        assert_eventually!(
            s.gw.output().contains("draining in-flight requests"),
            "the drain did not start; output:\n{}",
            s.gw.output()
        );
        let second = Instant::now();
        s.gw.signal("TERM");
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(5)).unwrap_or_else(|| {
            panic!("a second SIGTERM did not end the drain:\n{}", s.gw.output())
        });
        assert!(second.elapsed() < Duration::from_secs(5));
        assert_eq!(status.code(), Some(143), "output:\n{}", s.gw.output());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_delay_set_by_a_reload_is_the_one_used() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let mut text = std::fs::read_to_string(&s.gw.config_path).unwrap();
        text.push_str("\n[lifecycle]\ndrain_delay = \"2s\"\n");
        std::fs::write(&s.gw.config_path, text).unwrap();
        s.gw.signal("HUP");
        assert_eventually!(
            s.gw.output().contains("configuration reloaded"),
            "not reloaded; output:\n{}",
            s.gw.output()
        );
        s.gw.signal("TERM");
        let signalled = Instant::now();
        assert_eventually!(
            matches!(admin_get(s.gw.admin_port, "/readyz").await, Ok((503, _))),
            "/readyz did not turn false; output:\n{}",
            s.gw.output()
        );
        // Not ready, and still serving new connections well after the signal.
        tokio::time::sleep_until((signalled + Duration::from_millis(1000)).into()).await;
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!(r.status, 200);
        let status = wait_for_exit(&mut s.gw.child, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("still running after the drain; output:\n{}", s.gw.output()));
        assert_eq!(status.code(), Some(0), "output:\n{}", s.gw.output());
        assert!(
            signalled.elapsed() >= Duration::from_secs(2),
            "{:?}",
            signalled.elapsed()
        );
    })
    .await
}
