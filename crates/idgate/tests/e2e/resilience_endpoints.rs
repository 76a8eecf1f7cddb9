//! An upstream with several endpoints over real sockets: requests balanced over the
//! healthy ones, an endpoint killed under load costs no idempotent request (retried on
//! another, then out of rotation by its health checks) and comes back when its checks pass;
//! with every endpoint down, `503 upstream-unavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::assert_eventually;
use crate::resilience_upstream::{Flaky, client, load, table};
use crate::support::*;

fn health(interval: &str, timeout: &str) -> toml::Value {
    toml::Value::Table(table(&[
        ("path", "/healthz".into()),
        ("interval", interval.into()),
        ("timeout", timeout.into()),
        ("healthy_threshold", 2.into()),
        ("unhealthy_threshold", 1.into()),
    ]))
}

async fn start(pki: &Pki, a: &Flaky, b: &Flaky, health: toml::Value) -> Gateway {
    let retry = toml::Value::Table(table(&[("attempts", 2.into()), ("backoff", "5ms".into())]));
    start_with(pki, &[a, b], table(&[("retry", retry), ("health", health)])).await
}

/// One upstream `provider` with `endpoints` and the `extra` keys.
async fn start_with(pki: &Pki, endpoints: &[&Flaky], mut extra: toml::Table) -> Gateway {
    let mut config = OneRoute {
        url: "http://unused.invalid",
        ..OneRoute::default()
    }
    .config(pki);
    let up = &mut config.upstreams[0];
    up.url = String::new();
    let urls = endpoints.iter().map(|e| e.url().into()).collect();
    extra.insert("endpoints".into(), toml::Value::Array(urls));
    up.extra = extra;
    Gateway::start(&config, &[]).await
}

async fn healthy(gw: &Gateway, endpoint: &Flaky) -> Option<bool> {
    let metrics = admin_get(gw.admin_port, "/metrics").await.unwrap().1;
    let series = format!(
        "idgate_upstream_endpoint_healthy{{upstream=\"provider\",endpoint=\"127.0.0.1:{}\"}} ",
        endpoint.port
    );
    let line = metrics.lines().find(|l| l.starts_with(&series))?;
    Some(line.ends_with(" 1"))
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_get_and_comes_back_when_its_checks_pass() {
    within(async {
        let pki = Pki::default_pki();
        let mut a = Flaky::start().await;
        let b = Flaky::start().await;
        let gw = start(&pki, &a, &b, health("200ms", "100ms")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = load(&pki, &gw, 4, stop.clone());
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Both take requests while both are up.
        assert!(a.seen().iter().filter(|m| *m == "GET").count() > 5);
        assert!(b.seen().iter().filter(|m| *m == "GET").count() > 5);

        a.kill();
        assert_eventually!(healthy(&gw, &a).await == Some(false), "still in rotation");
        let a_before = a.seen().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.restart().await;
        assert_eventually!(healthy(&gw, &a).await == Some(true), "not back");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let mut answers = Vec::new();
        while let Some(r) = callers.join_next().await {
            answers.extend(r.unwrap());
        }
        let failed: Vec<_> = answers.iter().filter(|a| a.1 != 200).collect();
        assert!(
            failed.is_empty(),
            "{} of {} failed: {failed:?}",
            failed.len(),
            answers.len()
        );
        // Back in rotation: it serves requests again, besides its checks.
        let served_again = a.seen()[a_before..].iter().filter(|m| *m == "GET").count();
        assert!(served_again > 5, "{served_again}");
    })
    .await;
}

#[tokio::test]
async fn with_every_endpoint_down_the_answer_is_upstream_unavailable() {
    within(async {
        let pki = Pki::default_pki();
        let mut a = Flaky::start().await;
        let mut b = Flaky::start().await;
        let gw = start(&pki, &a, &b, health("100ms", "50ms")).await;
        let c = client(&pki, &gw);
        assert_eq!(c.get("/v1/x").await.unwrap().status, 200);
        a.kill();
        b.kill();
        assert_eventually!(
            healthy(&gw, &a).await == Some(false) && healthy(&gw, &b).await == Some(false),
            "still in rotation"
        );
        let r = c.get("/v1/x").await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(
            r.json()["type"],
            "https://idgate.dev/problems/upstream-unavailable"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    })
    .await;
}

#[tokio::test]
async fn a_hanging_endpoint_costs_one_first_byte_timeout_and_all_attempts_stay_within_the_request_timeout()
 {
    within(async {
        let pki = Pki::default_pki();
        let (a, b) = (Flaky::start().await, Flaky::start().await);
        a.hang.store(true, Ordering::SeqCst);
        let retry = toml::Value::Table(table(&[
            ("attempts", 3.into()),
            ("backoff", "5ms".into()),
            ("on", toml::Value::Array(vec!["timeout".into()])),
        ]));
        // Without first_byte_timeout, an attempt on the hanging endpoint would last the whole
        // request_timeout, and end in a 504 at 10 s.
        let gw = start_with(
            &pki,
            &[&a, &b],
            table(&[
                ("retry", retry),
                ("request_timeout", "10s".into()),
                ("first_byte_timeout", "200ms".into()),
            ]),
        )
        .await;
        let c = client(&pki, &gw);
        // Each request's first endpoint is a random pick of the two, equally loaded: go on
        // until the hanging one has been tried (ten requests miss it once in 1,024 runs;
        // forty, once in 2^40).
        let mut sent = 0;
        while sent < 10 || (a.seen().is_empty() && sent < 40) {
            let at = Instant::now();
            assert_eq!(c.get("/v1/x").await.unwrap().status, 200);
            let took = at.elapsed();
            // One first_byte_timeout (200 ms) at most, then the other endpoint's answer: the
            // bound is far from the 10 s the hanging attempt would cost without it, and leaves
            // a busy machine ample time for the rest.
            assert!(took < Duration::from_secs(3), "{took:?}");
            sent += 1;
        }
        assert!(!a.seen().is_empty(), "the hanging endpoint was never tried");
        assert_eq!(b.seen().len(), sent);

        // Every endpoint hangs: the attempts together stop at request_timeout. Ten retries
        // of 200 ms each would take 2.2 s if nothing stopped them.
        let hung = Flaky::start().await;
        hung.hang.store(true, Ordering::SeqCst);
        let many = toml::Value::Table(table(&[
            ("attempts", 10.into()),
            ("backoff", "5ms".into()),
            ("on", toml::Value::Array(vec!["timeout".into()])),
        ]));
        let gw = start_with(
            &pki,
            &[&hung],
            table(&[
                ("retry", many),
                ("request_timeout", "500ms".into()),
                ("first_byte_timeout", "200ms".into()),
            ]),
        )
        .await;
        let at = Instant::now();
        let r = client(&pki, &gw).get("/v1/x").await.unwrap();
        assert_eq!(r.status, 504);
        let took = at.elapsed();
        // At request_timeout (500 ms); uncapped, the eleven attempts would last at least
        // 2.2 s. The upper bound lies between, a second past the timeout.
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert!(
            (2..=3).contains(&hung.seen().len()),
            "{}",
            hung.seen().len()
        );
    })
    .await;
}
