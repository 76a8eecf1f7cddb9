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
    let before = SystemTime::now();
    fail(&r, &u);
    let opened = events.try_recv().unwrap();
    assert_eq!((opened.to, opened.dropped), (BreakerState::Open, false));
    let until = opened.open_until.unwrap();
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
