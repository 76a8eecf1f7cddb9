//! The registry with real upstreams built from configuration: what `available` says, and
//! what a reload (`install`) keeps, changes and drops.

use std::sync::Arc;

use rustls::RootCertStore;

use super::*;
use crate::snapshot::tests::{Dir, config};

fn upstream(dir: &Dir, body: &str) -> Upstream {
    let cfg = config(dir, body);
    Upstream::new(
        &cfg.upstreams[0],
        &Arc::new(RootCertStore::empty()),
        &idgate_tls::crypto_provider(),
        &Arc::new(idgate_tls::TlsMaterial::pending(
            idgate_tls::crypto_provider(),
        )),
    )
    .unwrap()
}

fn fail(r: &Resilience, u: &Upstream) {
    let cfg = u.breaker.as_ref().unwrap();
    r.admit(u, cfg).unwrap().record(Outcome::Failure);
}

#[tokio::test]
async fn an_open_breaker_survives_a_reload_and_goes_with_its_upstream() {
    let dir = Dir::new("resilience-reload");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let u = upstream(
        &dir,
        "[upstreams.breaker]\nconsecutive_failures = 2\nopen_duration = \"30s\"",
    );
    r.install(std::slice::from_ref(&u));
    assert_eq!(r.available(&u), Ok(()));
    fail(&r, &u);
    fail(&r, &u);
    let refused = r.available(&u).unwrap_err();
    assert_eq!(refused.why, Why::CircuitOpen);
    assert!(refused.retry_after > Duration::from_secs(28));
    assert!(matches!(
        refused.refusal(&u.name),
        crate::problem::Refusal::CircuitOpen { .. }
    ));

    // The same upstream, rebuilt by a reload: still open.
    let again = upstream(
        &dir,
        "[upstreams.breaker]\nconsecutive_failures = 2\nopen_duration = \"30s\"",
    );
    r.install(std::slice::from_ref(&again));
    assert_eq!(r.breaker_state("didit"), Some(BreakerState::Open));
    assert!(r.available(&again).is_err());

    // A reload without it: its state goes, and it comes back closed.
    r.install(&[]);
    assert_eq!(r.breaker_state("didit"), None);
    r.install(std::slice::from_ref(&again));
    assert_eq!(r.available(&again), Ok(()));
}

#[tokio::test]
async fn a_reload_applies_new_thresholds_to_the_counts_so_far() {
    let dir = Dir::new("resilience-thresholds");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let lax = upstream(&dir, "[upstreams.breaker]\nconsecutive_failures = 5");
    r.install(std::slice::from_ref(&lax));
    fail(&r, &lax);
    fail(&r, &lax);
    assert_eq!(r.breaker_state("didit"), Some(BreakerState::Closed));
    let strict = upstream(&dir, "[upstreams.breaker]\nconsecutive_failures = 3");
    r.install(std::slice::from_ref(&strict));
    fail(&r, &strict);
    assert_eq!(r.breaker_state("didit"), Some(BreakerState::Open));
}

#[tokio::test]
async fn breaker_changes_reach_subscribers() {
    let dir = Dir::new("resilience-events");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let u = upstream(&dir, "[upstreams.breaker]\nconsecutive_failures = 1");
    r.install(std::slice::from_ref(&u));
    let mut events = r.subscribe();
    fail(&r, &u);
    let e = events.try_recv().unwrap();
    assert_eq!(
        (&*e.upstream, e.from, e.to),
        ("didit", BreakerState::Closed, BreakerState::Open)
    );
}

/// The registry's metrics, as the admin listener serves them.
fn encoded(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

#[tokio::test]
async fn a_reload_that_removes_an_upstream_with_its_breaker_open_announces_the_breaker_dropped() {
    let dir = Dir::new("resilience-drop-upstream");
    let mut registry = Registry::default();
    let r = Arc::new(Resilience::new(&mut registry));
    let u = upstream(
        &dir,
        "[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"30s\"",
    );
    r.install(std::slice::from_ref(&u));
    let mut events = r.subscribe();
    let before = Instant::now();
    fail(&r, &u);
    let opened = events.try_recv().unwrap();
    assert_eq!((opened.to, opened.dropped), (BreakerState::Open, false));
    let until = opened.refuses_until.unwrap();
    assert!(until >= before + Duration::from_secs(30), "{opened:?}");
    assert!(encoded(&registry).contains("upstream_breaker_state{upstream=\"didit\"} 1"));

    r.install(&[]);
    let dropped = events.try_recv().unwrap();
    assert_eq!(
        (
            &*dropped.upstream,
            dropped.from,
            dropped.to,
            dropped.dropped
        ),
        ("didit", BreakerState::Open, BreakerState::Closed, true)
    );
    assert!(!encoded(&registry).contains("upstream_breaker_state{"));
}

#[tokio::test]
async fn a_reload_that_removes_only_the_breaker_announces_it_dropped_and_a_new_one_starts_closed() {
    let dir = Dir::new("resilience-drop-breaker");
    let mut registry = Registry::default();
    let r = Arc::new(Resilience::new(&mut registry));
    let with = upstream(
        &dir,
        "[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"30s\"",
    );
    r.install(std::slice::from_ref(&with));
    let mut events = r.subscribe();
    fail(&r, &with);
    assert_eq!(events.try_recv().unwrap().to, BreakerState::Open);

    let without = upstream(&dir, "");
    assert!(without.breaker.is_none());
    r.install(std::slice::from_ref(&without));
    let dropped = events.try_recv().unwrap();
    assert_eq!(
        (dropped.from, dropped.to, dropped.dropped),
        (BreakerState::Open, BreakerState::Closed, true)
    );
    assert_eq!(r.breaker_state("didit"), None);
    assert!(!encoded(&registry).contains("upstream_breaker_state{"));
    // Nothing more to say at the next reload.
    r.install(std::slice::from_ref(&without));
    assert!(events.try_recv().is_err());

    // The section back: a breaker of its own, closed.
    r.install(std::slice::from_ref(&with));
    assert_eq!(r.available(&with), Ok(()));
}

#[tokio::test]
async fn a_request_admitted_after_the_reload_that_dropped_its_breaker_creates_none() {
    let dir = Dir::new("resilience-stale-admit");
    let mut registry = Registry::default();
    let r = Arc::new(Resilience::new(&mut registry));
    let breaker = "[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"30s\"";
    // The snapshot a request took before the reloads.
    let stale = upstream(&dir, breaker);
    r.install(std::slice::from_ref(&stale));
    let mut events = r.subscribe();

    // A reload takes the breaker section away; the request reaches forwarding after it,
    // fails, and runs without a breaker.
    r.install(std::slice::from_ref(&upstream(&dir, "")));
    fail(&r, &stale);
    assert_eq!(r.breaker_state("didit"), None);
    assert!(events.try_recv().is_err(), "no breaker to change");
    assert!(!encoded(&registry).contains("upstream_breaker_state{"));
    assert_eq!(r.available(&stale), Ok(()));

    // A reload takes the upstream away: the request brings back none of its state.
    r.install(&[]);
    fail(&r, &stale);
    let _ = r.available(&stale);
    assert!(r.take_retry(&stale, &budget_with_room(), "connect"));
    assert!(r.upstreams.read().unwrap().is_empty());
    assert!(events.try_recv().is_err());
    let metrics = encoded(&registry);
    assert!(!metrics.contains("upstream_breaker_state{"), "{metrics}");
    assert!(!metrics.contains("upstream_retries_total{"), "{metrics}");

    // Configured again, the breaker starts closed, and the stale request's failure before
    // did not count with it.
    let again = upstream(&dir, breaker);
    r.install(std::slice::from_ref(&again));
    assert_eq!(r.breaker_state("didit"), None);
    assert_eq!(r.available(&again), Ok(()));
}

/// A retry budget that grants a retry.
fn budget_with_room() -> RetryBudgetConfig {
    RetryBudgetConfig {
        percent: 20.0,
        min_per_second: 10,
        window: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_request_let_through_a_breaker_a_reload_took_away_does_not_count_with_a_new_one() {
    let dir = Dir::new("resilience-stale-permit");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let breaker = "[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"30s\"";
    let with = upstream(&dir, breaker);
    r.install(std::slice::from_ref(&with));
    let cfg = with.breaker.as_ref().unwrap();
    let in_flight = r.admit(&with, cfg).unwrap();

    // Taken away and configured again while the request is out; the new breaker has
    // seen a request.
    r.install(std::slice::from_ref(&upstream(&dir, "")));
    r.install(std::slice::from_ref(&with));
    r.admit(&with, cfg).unwrap().record(Outcome::Success);
    assert_eq!(r.breaker_state("didit"), Some(BreakerState::Closed));
    let mut events = r.subscribe();
    in_flight.record(Outcome::Failure);
    assert!(events.try_recv().is_err(), "the new breaker did not open");
    assert_eq!(r.available(&with), Ok(()));
}

/// Lets the breaker of `u` (open for `open_duration`) move on to half-open with the next
/// request: waits its open time out.
async fn past_open_time(u: &Upstream) {
    let open = u.breaker.as_ref().unwrap().open_duration;
    tokio::time::sleep(open).await;
}

#[tokio::test]
async fn a_probe_is_announced_half_open_until_its_request_timeout_and_again_after_one_said_nothing()
{
    let dir = Dir::new("resilience-probe");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let u = upstream(
        &dir,
        "request_timeout = \"7s\"\n[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"10ms\"",
    );
    r.install(std::slice::from_ref(&u));
    let cfg = u.breaker.as_ref().unwrap();
    let mut events = r.subscribe();
    fail(&r, &u);
    assert_eq!(events.try_recv().unwrap().to, BreakerState::Open);
    past_open_time(&u).await;

    let before = Instant::now();
    let probe = r.admit(&u, cfg).unwrap();
    let after = Instant::now();
    let half_open = events.try_recv().unwrap();
    assert_eq!(
        (half_open.from, half_open.to),
        (BreakerState::Open, BreakerState::HalfOpen)
    );
    let until = half_open.refuses_until.unwrap();
    let bound = Duration::from_secs(7);
    assert!(
        before + bound <= until && until <= after + bound,
        "{half_open:?}"
    );
    // Every other request is refused while the probe is out.
    assert_eq!(r.available(&u).unwrap_err().why, Why::CircuitOpen);

    // The probe ends saying nothing (its caller went away): the next request is another
    // probe, which refuses every other request again. Within a second of the last one it is
    // not announced again; a second after it, it is.
    drop(probe);
    let again = r.admit(&u, cfg).unwrap();
    assert!(events.try_recv().is_err());
    drop(again);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Instant::now();
    let third = r.admit(&u, cfg).unwrap();
    let probing = events.try_recv().unwrap();
    assert_eq!(
        (probing.from, probing.to, probing.dropped),
        (BreakerState::HalfOpen, BreakerState::HalfOpen, false)
    );
    assert!(
        probing.refuses_until.unwrap() >= before + bound,
        "{probing:?}"
    );
    third.record(Outcome::Success);
    let closed = events.try_recv().unwrap();
    assert_eq!(closed.to, BreakerState::Closed);
    assert_eq!(closed.refuses_until, None);
}

#[tokio::test]
async fn a_probe_reaches_incident_detection_as_half_open() {
    let dir = Dir::new("resilience-probe-feed");
    let r = Arc::new(Resilience::new(&mut Registry::default()));
    let u = upstream(
        &dir,
        "request_timeout = \"7s\"\n[upstreams.breaker]\nconsecutive_failures = 1\nopen_duration = \"10ms\"",
    );
    r.install(std::slice::from_ref(&u));
    let feed = Arc::new(idgate_incidents::Feed::new(4));
    let task = tokio::spawn(feed_incidents(r.subscribe(), feed.clone()));
    fail(&r, &u);
    past_open_time(&u).await;
    let before = Instant::now();
    let _probe = r.admit(&u, u.breaker.as_ref().unwrap()).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        seen.extend(feed.drain().breaker);
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(
        matches!(&seen[0], idgate_incidents::BreakerEvent::Opened { .. }),
        "{seen:?}"
    );
    let idgate_incidents::BreakerEvent::HalfOpen { upstream, until } = &seen[1] else {
        panic!("{seen:?}");
    };
    assert_eq!(upstream, "didit");
    assert!(
        until.is_some_and(|t| t >= before + Duration::from_secs(7)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_reload_that_removes_an_endpoint_or_its_upstream_takes_its_health_gauge_away() {
    let dir = Dir::new("resilience-endpoint-gauge");
    let mut registry = Registry::default();
    let r = Arc::new(Resilience::new(&mut registry));
    let first = upstream(&dir, "");
    let old = first.endpoints[0].label.clone();
    r.install(std::slice::from_ref(&first));
    let gauge = |label: &str| {
        format!("upstream_endpoint_healthy{{upstream=\"didit\",endpoint=\"{label}\"}} 1")
    };
    assert!(
        encoded(&registry).contains(&gauge(&old)),
        "{}",
        encoded(&registry)
    );

    // A reload replaces the endpoint: the old one's gauge goes, the new one's comes.
    let mut second = upstream(&dir, "");
    second.endpoints[0].label = "verification-2.didit.test:443".into();
    r.install(std::slice::from_ref(&second));
    let metrics = encoded(&registry);
    assert!(!metrics.contains(&gauge(&old)), "{metrics}");
    assert!(
        metrics.contains(&gauge("verification-2.didit.test:443")),
        "{metrics}"
    );

    // A reload without the upstream: none of its endpoints' gauges stay.
    r.install(&[]);
    let metrics = encoded(&registry);
    assert!(!metrics.contains("upstream_endpoint_healthy{"), "{metrics}");
}

#[tokio::test]
async fn a_removed_endpoint_held_by_a_request_in_flight_is_checked_no_more() {
    let dir = Dir::new("resilience-endpoint-check");
    let mut registry = Registry::default();
    let r = Arc::new(Resilience::new(&mut registry));
    let health = "[upstreams.health]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"50ms\"";
    let first = upstream(&dir, health);
    r.install(std::slice::from_ref(&first));
    // A request in flight holds the endpoint's state.
    let held = r.state(&first.name).endpoint(&first.endpoints[0].label);
    let checking = || {
        lock(&held.checker)
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    };
    assert!(checking());

    // A reload replaces the endpoint: its checks end at their next round, though the
    // request still holds its state.
    let mut second = upstream(&dir, health);
    second.endpoints[0].label = "verification-2.didit.test:443".into();
    r.install(std::slice::from_ref(&second));
    let deadline = Instant::now() + Duration::from_secs(10);
    while checking() {
        assert!(
            Instant::now() < deadline,
            "the removed endpoint is still checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = encoded(&registry);
    assert!(
        !metrics.contains(&format!("endpoint=\"{}\"", first.endpoints[0].label)),
        "{metrics}"
    );
}
