//! Connection limits on the listener: per client address, and the age after which a
//! connection is retired.

use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/anything";

/// A gateway in front of `upstream` whose `[listener]` gets `listener_extra`.
async fn gateway(pki: &Pki, upstream: &TestUpstream, listener_extra: toml::Table) -> Gateway {
    OneRoute {
        url: &upstream.url(false),
        listener_extra,
        ..OneRoute::default()
    }
    .start(pki, &[])
    .await
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed_at_accept() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::toml! { max_connections_per_ip = 2 }).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        let mut first = client.connect().await.unwrap();
        let mut second = client.connect().await.unwrap();
        assert_eq!(first.send("GET", PATH, &[], "").await.unwrap().status, 200);
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);
        // A third from the same address does not get a handshake.
        let third = match client.connect().await {
            Ok(mut c) => c.send("GET", PATH, &[], "").await.map(|r| r.status),
            Err(e) => Err(e),
        };
        assert!(third.is_err(), "a third connection was served: {third:?}");

        // A place freed is a place available again.
        drop(first);
        assert_eventually!(
            match client.connect().await {
                Ok(mut c) => c
                    .send("GET", PATH, &[], "")
                    .await
                    .is_ok_and(|r| r.status == 200),
                Err(_) => false,
            },
            "no connection accepted after one closed"
        );
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics
                .contains(r#"idgate_connections_refused_total{reason="max_connections_per_ip"} "#),
            "{metrics}"
        );
        assert_eventually!(
            gw.output()
                .contains("connection refused at accept: limit reached"),
            "{}",
            gw.output()
        );
    })
    .await
}

#[tokio::test]
async fn a_connection_past_its_max_age_finishes_its_request_then_closes() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = gateway(&pki, &upstream, toml::toml! { max_connection_age = "1s" }).await;
        for h2 in [false, true] {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let mut conn = client.connect().await.unwrap();
            // In flight when the connection turns one second old: answered all the same.
            let r = conn.send("GET", PATH, &[], "").await.unwrap();
            assert_eq!(r.status, 200, "h2 {h2}: {:?}", r.body);
            // Then the connection is gone: the next request needs a new one.
            let again = conn.send("GET", PATH, &[], "").await;
            assert!(
                again.is_err(),
                "h2 {h2}: a retired connection served {again:?}"
            );
            let r = client.get(PATH).await.unwrap();
            assert_eq!(r.status, 200);
        }
    })
    .await
}

#[tokio::test]
async fn an_idle_http2_connection_is_told_to_go_away_but_not_while_a_request_runs() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let mut conn = client.connect().await.unwrap();
        // Longer than the idle timeout, but a request is running: not idle.
        let r = conn.send("GET", PATH, &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        // Then nothing but keep-alive pings for twice the idle timeout: GOAWAY.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let again = conn.send("GET", PATH, &[], "").await;
        assert!(
            again.is_err(),
            "an idle HTTP/2 connection still served {again:?}"
        );
    })
    .await
}

#[tokio::test]
async fn check_refuses_connection_limits_that_cannot_work() {
    let pki = Pki::default_pki();
    for (extra, reason) in [
        (
            toml::toml! { max_connections_per_ip = 0 },
            "must be more than zero",
        ),
        (
            toml::toml! {
                max_connections = 10
                max_connections_per_ip = 11
            },
            "must not be more than listener.max_connections",
        ),
        (
            toml::toml! { max_connection_age = "0s" },
            "must be more than zero",
        ),
    ] {
        let mut config = base_config(&pki)
            .upstream(UpstreamSpec::new("u", "http://127.0.0.1:9"))
            .route(RouteSpec::get("r", "/x", "u"));
        config.listener.extra = extra.clone();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let (code, out, err) = run(std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(&path));
        assert_eq!(code, 2, "{extra}: {out}{err}");
        assert!(
            err.contains(reason) || out.contains(reason),
            "{extra}: {out}{err}"
        );
        assert!(
            err.contains("listener.") || out.contains("listener."),
            "{out}{err}"
        );
    }
}
