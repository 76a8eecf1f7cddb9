//! An upstream that cannot be reached or is too slow: 502 and 504 problems that do not name it.

use std::time::{Duration, Instant};

use crate::support::*;

use super::{
    DECISION, PROVIDER_TOKEN, PROVIDER_TOKEN_ENV, Setup, assert_problem, pki, provider_upstream,
    with_standard_routes,
};

#[tokio::test]
async fn unreachable_upstream_gets_502_problem_without_its_address() {
    within(async {
        let pki = pki();
        let closed_port = ClosedPort::new();
        let closed = closed_port.port;
        let mut upstream =
            provider_upstream("provider", &closed_port.url("https"), &pki.files.bundle);
        upstream.connect_timeout = Some("2s".into());
        let config = with_standard_routes(base_config(&pki).upstream(upstream), "provider");
        let gw = Gateway::start(&config, &[(PROVIDER_TOKEN_ENV, PROVIDER_TOKEN)]).await;
        let port = gw.port;
        for h2 in [false, true] {
            let r = Client::new(&pki, Some(ONBOARDING), port, h2)
                .get(DECISION)
                .await
                .unwrap();
            let p = assert_problem(
                &r,
                502,
                &[&format!(":{closed}"), "Connection refused", "connect"],
            );
            assert_eq!(
                p["type"],
                "https://idgate.dev/problems/upstream-unreachable"
            );
            // The port number alone must not be in the human-readable members either.
            for k in ["title", "detail", "type"] {
                assert!(!p[k].as_str().unwrap().contains(&closed.to_string()), "{p}");
            }
        }
        drop(gw);
    })
    .await
}

#[tokio::test]
async fn slow_upstream_gets_504_problem_without_its_address() {
    within(async {
        let s = Setup::start_with(UpstreamMode::Delay(Duration::from_secs(5)), |c| {
            c.upstreams[0].request_timeout = Some("300ms".into());
        })
        .await;
        let upstream_port = s.upstream.addr.port();
        let started = Instant::now();
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        let took = started.elapsed();
        let p = assert_problem(&r, 504, &[&format!(":{upstream_port}")]);
        assert_eq!(p["type"], "https://idgate.dev/problems/upstream-timeout");
        for k in ["title", "detail", "type"] {
            assert!(
                !p[k].as_str().unwrap().contains(&upstream_port.to_string()),
                "{p}"
            );
        }
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "answered after {took:?}; the timeout is 300ms"
        );
        assert_eq!(
            s.upstream.requests().len(),
            1,
            "the request did reach the slow upstream"
        );
    })
    .await
}
