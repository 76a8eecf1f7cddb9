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
        // Wide enough that a busy machine still does what it must inside them: open a
        // connection during the delay, and see the listener closed while the slow requests
        // (`upstream_delay`, longer than the delay) are still running.
        let drain_delay = Duration::from_millis(2500);
        let upstream_delay = Duration::from_secs(5);
        let mut s = Setup::start_with(UpstreamMode::Delay(upstream_delay), |c| {
            let mut lifecycle = toml::Table::new();
            lifecycle.insert("drain_delay".into(), "2500ms".into());
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

        // Noted before the signal is sent: no later than the gateway's own start of the
        // drain, so that a time measured from it is never longer than the gateway's.
        let signalled = Instant::now();
        s.gw.signal("TERM");
        // Not ready first...
        assert_eventually!(
            matches!(admin_get(s.gw.admin_port, "/readyz").await, Ok((503, _))),
            "/readyz did not turn false; output:\n{}",
            s.gw.output()
        );
        // ...while the listener still takes a new connection, whose request is in flight
        // when the listener closes and is answered like the others.
        let late = s.client(Some(ONBOARDING));
        let late = tokio::spawn(async move { late.get(DECISION).await });
        assert_eventually!(
            s.upstream.requests().len() == 7,
            "a connection {:?} after the signal, within drain_delay, was not served; output:\n{}",
            signalled.elapsed(),
            s.gw.output()
        );
        // After drain_delay, and not before, the listener is closed, while requests are
        // still in flight: the late one reached the upstream after the signal, and takes
        // `upstream_delay` there.
        assert_eventually!(
            tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port))
                .await
                .is_err(),
            "the listener still accepts {:?} after the signal; output:\n{}",
            signalled.elapsed(),
            s.gw.output()
        );
        assert!(
            signalled.elapsed() >= drain_delay,
            "the listener closed {:?} after the signal, before drain_delay",
            signalled.elapsed()
        );
        assert!(
            s.gw.child.try_wait().unwrap().is_none(),
            "exited with requests in flight; output:\n{}",
            s.gw.output()
        );

        for (i, r) in in_flight.into_iter().chain([late]).enumerate() {
            let r = r.await.unwrap().expect("the in-flight request is answered");
            assert_eq!(r.status, 200, "{:?}", r.body);
            // An HTTP/1.1 connection says, on the answer in flight, that it ends there.
            if i % 2 == 0 {
                assert_eq!(r.header("connection"), Some("close"), "request {i}");
            }
        }
        let status = s
            .gw
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("still running after the drain; output:\n{}", s.gw.output()));
        assert_eq!(status.code(), Some(0), "output:\n{}", s.gw.output());
        assert!(
            signalled.elapsed() >= upstream_delay,
            "exited {:?} after the signal, before the late request was answered",
            signalled.elapsed()
        );
        // The process has exited, but its last lines may still be on their way through the
        // pipe to the thread that reads it: waited for, then their order checked.
        assert_eventually!(
            [
                "shutting down: not ready",
                "listener closed: draining",
                "all connections drained"
            ]
            .iter()
            .all(|line| s.gw.output().contains(line)),
            "the drain's lines are missing; output:\n{}",
            s.gw.output()
        );
        let output = s.gw.output();
        let not_ready = output.find("shutting down: not ready").unwrap();
        let closed = output.find("listener closed: draining").unwrap();
        assert!(not_ready < closed, "output:\n{output}");
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
        let status = s.gw.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
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
        // Started without `[lifecycle]`: no drain delay, the listener closes at the signal.
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let drain_delay = Duration::from_secs(3);
        let mut text = std::fs::read_to_string(&s.gw.config_path).unwrap();
        text.push_str("\n[lifecycle]\ndrain_delay = \"3s\"\n");
        // Renamed over, whole: the file watch never reads it half-written.
        let tmp = s.gw.config_path.with_extension("editing");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &s.gw.config_path).unwrap();
        s.gw.signal("HUP");
        // The drain settings are in force before the reload says it is done.
        assert_eventually!(
            s.gw.output().contains("configuration reloaded"),
            "not reloaded; output:\n{}",
            s.gw.output()
        );

        // Noted before the signal is sent: no later than the gateway's own start of the
        // drain, so that a time measured from it is never longer than the gateway's.
        let signalled = Instant::now();
        s.gw.signal("TERM");
        // The gateway says which delay it drains with...
        let shutting_down = || {
            json_lines(&s.gw.output()).into_iter().find(|l| {
                l.get("message").and_then(|m| m.as_str())
                    == Some("shutting down: not ready; the listener closes after drain_delay")
            })
        };
        assert_eventually!(
            shutting_down().is_some(),
            "the drain did not start; output:\n{}",
            s.gw.output()
        );
        assert_eq!(
            shutting_down()
                .and_then(|l| l.get("drain_delay").cloned())
                .and_then(|d| d.as_str().map(str::to_owned))
                .as_deref(),
            Some("3s"),
            "output:\n{}",
            s.gw.output()
        );
        // ...and keeps to it: not ready, yet still serving a new connection...
        assert_eventually!(
            matches!(admin_get(s.gw.admin_port, "/readyz").await, Ok((503, _))),
            "/readyz did not turn false; output:\n{}",
            s.gw.output()
        );
        let r = s
            .client(Some(ONBOARDING))
            .get(DECISION)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a connection {:?} after the signal was not served: {e}; output:\n{}",
                    signalled.elapsed(),
                    s.gw.output()
                )
            });
        assert_eq!(r.status, 200);
        // ...and exiting no sooner than the delay after the signal.
        let status = s
            .gw
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("still running after the drain; output:\n{}", s.gw.output()));
        assert_eq!(status.code(), Some(0), "output:\n{}", s.gw.output());
        assert!(
            signalled.elapsed() >= drain_delay,
            "{:?}",
            signalled.elapsed()
        );
    })
    .await
}
