//! Fault injection for resilience rehearsals: refused without `[testing] fault_injection`;
//! with it, said loudly at start-up and on every reload and shown on `/metrics`; aborts
//! answer `fault-injected` without calling the upstream and delays wait, each for about
//! its share of requests (all and none exactly).

use std::time::{Duration, Instant};

use crate::assert_eventually;
use crate::support::*;

const LOUD: &str = "FAULT INJECTION IS ON";

fn faults(entries: toml::Table) -> toml::Value {
    toml::Value::Table(entries)
}

fn config(pki: &Pki, upstream: &TestUpstream, testing: bool) -> GatewayConfig {
    let route = |name: &str, f: toml::Table| {
        RouteSpec::new(
            name,
            &["GET"],
            &format!("/{name}/{{*rest}}"),
            "p",
            &[ONBOARDING],
        )
        .with("faults", faults(f))
    };
    let config = base_config(pki)
        .upstream(UpstreamSpec::new("p", &upstream.url(false)))
        .route(route(
            "all",
            table([("abort_percent", 100.into()), ("abort_status", 503.into())]),
        ))
        .route(route("none", table([("abort_percent", 0.into())])))
        .route(route("half", table([("abort_percent", 50.into())])))
        .route(route(
            "slow",
            table([("delay", "300ms".into()), ("delay_percent", 100.into())]),
        ));
    if testing {
        config.section("testing", table([("fault_injection", true.into())]))
    } else {
        config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_refused_without_the_testing_switch() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idgate.toml");
    std::fs::write(&file, config(&pki, &upstream, false).to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let f = file.display();
    for i in 0..4 {
        assert!(
            err.contains(&format!(
                "{f}: routes[{i}].faults: faults are injected only in rehearsals: set [testing] fault_injection = true"
            )),
            "{err}"
        );
    }
    // With the switch the same file is valid, and says so loudly.
    std::fs::write(&file, config(&pki, &upstream, true).to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(LOUD) && err.contains("routes all, none, half, slow"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_and_delays_take_their_share_and_the_switch_is_loud() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = Gateway::start(&config(&pki, &upstream, true), &[]).await;
        assert!(gw.output().contains(LOUD), "{}", gw.output());
        let (status, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            metrics.contains("idgate_fault_injection_enabled 1"),
            "{metrics}"
        );
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let mut conn = c.connect().await.unwrap();

        // 100 %: every request aborted, none reaches the upstream.
        for _ in 0..20 {
            let r = conn.send("GET", "/all/x", &[], "").await.unwrap();
            assert_eq!(r.status, 503);
            assert_eq!(
                r.json()["type"],
                "https://idgate.dev/problems/fault-injected"
            );
        }
        assert!(upstream.requests().is_empty());
        // 0 %: none.
        for _ in 0..20 {
            let r = conn.send("GET", "/none/x", &[], "").await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        assert_eq!(upstream.requests().len(), 20);
        // 50 % of 200: the standard deviation is about 7; the band is more than 5 of them.
        let mut aborted = 0;
        for _ in 0..200 {
            let r = conn.send("GET", "/half/x", &[], "").await.unwrap();
            match r.status {
                503 => aborted += 1,
                200 => {}
                other => panic!("{other}: {:?}", r.body),
            }
        }
        assert!((60..=140).contains(&aborted), "{aborted} of 200 aborted");
        assert_eq!(upstream.requests().len(), 20 + 200 - aborted);
        // A delay waits, then forwards.
        let started = Instant::now();
        let r = conn.send("GET", "/slow/x", &[], "").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Every reload says it again.
        gw.signal("HUP");
        assert_eventually!(
            gw.output().matches(LOUD).count() >= 2,
            "no warning on reload:\n{}",
            gw.output()
        );
    })
    .await;
}
