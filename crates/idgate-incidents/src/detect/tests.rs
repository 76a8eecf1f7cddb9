//! The rules driven with an injected clock: one tick per simulated second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_config::{IncidentSeverity, IncidentsConfig, RuleSeverities};

use super::*;
use crate::feed::{BreakerEvent, RouteSample};
use crate::incident::EntryKind;

fn cfg() -> IncidentsConfig {
    IncidentsConfig {
        dir: "unused".into(),
        window: Duration::from_secs(10),
        close_after: Duration::from_secs(5),
        min_requests: 20,
        error_ratio: 0.5,
        latency_p99: Duration::from_millis(400),
        tls_failures: 30,
        auth_failures: 30,
        audit_backlog: 0.8,
        severities: RuleSeverities::default(),
        critical_routes: vec![],
        region: Some("eu-west-1".into()),
        max_callers: 2,
        notify: None,
    }
}

/// One second on route `sessions` (upstream `idv`): `ok` answers in `ms`, `failed` with no
/// answer, from `callers`.
fn second(route: &str, ok: u64, failed: u64, ms: usize, callers: &[&str]) -> Sample {
    let mut latency = [0; LATENCY_BUCKETS];
    latency[ms] = ok;
    let r = RouteSample {
        upstream: Some(Arc::from("idv")),
        requests: ok + failed,
        failed,
        upstream_requests: ok + failed,
        upstream_errors: failed,
        refused: failed,
        fallbacks: 0,
        latency,
        callers: callers.iter().map(|c| Box::from(*c)).collect(),
        callers_dropped: false,
    };
    Sample {
        routes: vec![(Arc::from(route), r)],
        ..Sample::default()
    }
}

/// A breaker's refusing deadline `ms` milliseconds on, on the monotonic clock of [`at`].
fn mono(ms: u64) -> Option<Instant> {
    Some(at(ms).mono)
}

struct Clock(u64);

impl Clock {
    fn next(&mut self) -> Tick {
        self.0 += 1000;
        at(self.0)
    }
}

/// The tick at `ms` milliseconds: on the wall clock, and as far on a monotonic clock from
/// a fixed start.
fn at(ms: u64) -> Tick {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Tick {
        wall: Millis(ms),
        mono: *START.get_or_init(Instant::now) + Duration::from_millis(ms),
    }
}

#[test]
fn an_upstream_outage_opens_grows_recovers_and_closes_with_every_failure_counted() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    for _ in 0..5 {
        assert!(
            d.tick(clock.next(), second("sessions", 10, 0, 2, &[]), None)
                .is_empty()
        );
    }
    // Failures: the ratio over the window crosses 0.5 once failures outnumber answers.
    let mut opened = None;
    let mut injected = 0;
    for _ in 0..8 {
        injected += 10;
        let changes = d.tick(
            clock.next(),
            second("sessions", 0, 10, 0, &["key:a", "key:b", "key:c"]),
            None,
        );
        for (kind, i) in changes {
            if kind == ChangeKind::Opened {
                opened = Some(i);
            }
        }
    }
    let opened = opened.expect("the outage opens an incident");
    assert_eq!(opened.rule, Rule::UpstreamErrors);
    assert_eq!(opened.subject.as_deref(), Some("idv"));
    assert_eq!(opened.severity.0, IncidentSeverity::Major);
    assert_eq!(opened.timeline[0].kind, EntryKind::FirstSeen);
    assert_eq!(opened.timeline[1].kind, EntryKind::ThresholdCrossed);
    assert!(opened.affected.routes.contains("sessions"));
    // Two callers are named, the third is counted as more.
    assert_eq!(opened.affected.callers.len(), 2);
    assert!(opened.affected.callers_truncated);
    assert_eq!(opened.classification.geographical_spread, "eu-west-1");
    // Recovery: quiet seconds, then closed after close_after.
    let mut closed = None;
    let mut recovering_seen = false;
    for _ in 0..30 {
        for (kind, i) in d.tick(clock.next(), second("sessions", 10, 0, 2, &[]), None) {
            recovering_seen |= i.state == State::Recovering;
            if kind == ChangeKind::Closed {
                closed = Some(i);
            }
        }
        if closed.is_some() {
            break;
        }
    }
    let closed = closed.expect("the incident closes once healthy");
    assert!(recovering_seen);
    assert_eq!(closed.state, State::Closed);
    assert_eq!(
        closed.requests_failed, injected,
        "every failure, before and after opening"
    );
    assert_eq!(closed.actions.requests_refused, injected);
    assert!(closed.classification.service_downtime_secs >= 1);
    let kinds: Vec<_> = closed.timeline.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EntryKind::Recovering));
    assert_eq!(kinds.last(), Some(&EntryKind::Recovered));
    let closed_at = closed.closed_at.expect("closed_at");
    assert!(closed_at.0 - closed.opened_at.0 >= 5000);
    assert_eq!(d.open_incidents().count(), 0);
}

#[test]
fn too_few_requests_fire_nothing() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(0);
    for _ in 0..20 {
        assert!(
            d.tick(clock.next(), second("sessions", 0, 1, 0, &[]), None)
                .is_empty()
        );
    }
}

#[test]
fn slow_answers_open_a_latency_incident() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(0);
    let mut changes = Vec::new();
    for _ in 0..3 {
        // 1000 ms bucket (index 7), above the 400 ms threshold.
        changes.extend(d.tick(clock.next(), second("sessions", 10, 0, 7, &[]), None));
    }
    let (kind, i) = &changes[0];
    assert_eq!(*kind, ChangeKind::Opened);
    assert_eq!(i.rule, Rule::UpstreamLatency);
    assert!(i.summary.contains("1000 ms"), "{}", i.summary);
    assert_eq!(i.severity.0, IncidentSeverity::Minor);
}

#[test]
fn a_breaker_event_opens_and_its_closing_lets_the_incident_close() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(0);
    let opened = Sample {
        breaker: vec![BreakerEvent::Opened {
            upstream: "idv".into(),
            until: mono(60_000),
        }],
        ..Sample::default()
    };
    let c = d.tick(clock.next(), opened, None);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1.rule, Rule::BreakerOpen);
    // Still open while nothing is said (only its duration grows).
    let c = d.tick(clock.next(), Sample::default(), None);
    assert_eq!(c[0].0, ChangeKind::Updated);
    assert_eq!(c[0].1.state, State::Open);
    assert_eq!(c[0].1.classification.duration_secs, 1);
    let closed = Sample {
        breaker: vec![BreakerEvent::Closed {
            upstream: "idv".into(),
        }],
        ..Sample::default()
    };
    let c = d.tick(clock.next(), closed, None);
    assert_eq!(c[0].1.state, State::Recovering);
    assert!(
        c[0].1
            .timeline
            .iter()
            .any(|e| e.kind == EntryKind::BreakerClosed)
    );
    let mut closed_kind = None;
    for _ in 0..6 {
        for (k, _) in d.tick(clock.next(), Sample::default(), None) {
            closed_kind = Some(k);
        }
    }
    assert_eq!(closed_kind, Some(ChangeKind::Closed));
}

#[test]
fn tls_and_auth_spikes_fire_over_the_window_not_per_second() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(0);
    let spike = |tls, auth| Sample {
        tls_failures: tls,
        auth_failures: auth,
        ..Sample::default()
    };
    assert!(d.tick(clock.next(), spike(20, 29), None).is_empty());
    let c = d.tick(clock.next(), spike(10, 1), None);
    let rules: Vec<_> = c.iter().map(|(_, i)| i.rule).collect();
    assert!(
        rules.contains(&Rule::TlsFailures) && rules.contains(&Rule::AuthFailures),
        "{rules:?}"
    );
    let tls = c
        .iter()
        .find(|(_, i)| i.rule == Rule::TlsFailures)
        .map(|(_, i)| i.requests_failed);
    assert_eq!(tls, Some(30));
}

#[test]
fn audit_backlog_names_the_seq_range_and_counts_drops_as_data_losses() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(0);
    let audit = |depth, last_seq, dropped| {
        Some(AuditState {
            depth,
            capacity: 100,
            last_seq,
            dropped,
        })
    };
    assert!(
        d.tick(clock.next(), Sample::default(), audit(10, 40, 0))
            .is_empty()
    );
    let c = d.tick(clock.next(), Sample::default(), audit(85, 50, 3));
    assert_eq!(c[0].1.rule, Rule::AuditBacklog);
    assert_eq!(
        c[0].1.audit.first_seq,
        Some(41),
        "from the first second of the window"
    );
    let c = d.tick(clock.next(), Sample::default(), audit(90, 70, 8));
    let i = &c[0].1;
    assert_eq!(i.audit.last_seq, Some(70));
    assert_eq!(i.classification.audit_records_dropped, 5);
    assert_eq!(i.classification.data_losses, "5 audit records dropped");
}

#[test]
fn a_critical_route_makes_the_incident_one_level_graver() {
    let mut c = cfg();
    c.critical_routes = vec!["sessions".into()];
    let mut d = Detector::new(c);
    let mut clock = Clock(0);
    let mut opened = None;
    for _ in 0..3 {
        for (k, i) in d.tick(clock.next(), second("sessions", 0, 10, 0, &[]), None) {
            if k == ChangeKind::Opened {
                opened = Some(i);
            }
        }
    }
    let i = opened.expect("opened");
    assert_eq!(i.severity.0, IncidentSeverity::Critical);
    assert_eq!(
        i.classification.critical_services_affected,
        vec!["sessions".to_owned()]
    );
}

#[test]
fn a_critical_route_failing_later_regrades_the_incident() {
    let mut c = cfg();
    c.critical_routes = vec!["payouts".into()];
    let mut d = Detector::new(c);
    let mut clock = Clock(0);
    for _ in 0..3 {
        d.tick(clock.next(), second("sessions", 0, 10, 0, &[]), None);
    }
    let c = d.tick(clock.next(), second("payouts", 0, 10, 0, &[]), None);
    let (kind, i) = &c[0];
    assert_eq!(*kind, ChangeKind::SeverityChanged);
    assert_eq!(i.severity.0, IncidentSeverity::Critical);
    assert!(
        i.timeline
            .iter()
            .any(|e| e.kind == EntryKind::SeverityChanged)
    );
}

#[test]
fn ids_are_sortable_and_safe_file_names() {
    let at = Millis(1_764_663_300_123);
    assert_eq!(
        incident_id(at, Rule::UpstreamErrors, Some("idv")),
        "20251202T081500123Z-upstream_errors-idv"
    );
    let id = incident_id(at, Rule::UpstreamErrors, Some("idv/../x"));
    let digest = idgate_codec::hex::encode(
        &ring::digest::digest(&ring::digest::SHA256, b"idv/../x").as_ref()[..6],
    );
    assert_eq!(
        id,
        format!("20251202T081500123Z-upstream_errors-idv____x-{digest}")
    );
}

/// A safe file name, as the store takes one.
fn is_file_name(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[test]
fn incident_ids_of_distinct_upstreams_opened_in_one_tick_differ() {
    let long = "kyc".repeat(20);
    let names = [
        "kyc-eu".to_owned(),
        "kyc_eu".to_owned(),
        "KYC_eu".to_owned(),
        "kyc.eu".to_owned(),
        format!("{long}-a"),
        format!("{long}-b"),
    ];
    let mut d = Detector::new(cfg());
    let opened = Sample {
        breaker: names
            .iter()
            .map(|u| BreakerEvent::Opened {
                upstream: u.clone(),
                until: mono(1_764_663_330_000),
            })
            .collect(),
        ..Sample::default()
    };
    let changes = d.tick(at(1_764_663_300_000), opened, None);
    assert_eq!(changes.len(), names.len());
    let ids: BTreeSet<&str> = changes.iter().map(|(_, i)| i.id.as_str()).collect();
    assert_eq!(ids.len(), names.len(), "{ids:#?}");
    assert!(ids.iter().all(|id| is_file_name(id)), "{ids:#?}");
    // A name the id spells out exactly keeps the plain form.
    assert!(
        ids.contains("20251202T081500000Z-breaker_open-kyc_eu"),
        "{ids:#?}"
    );
}

/// The incidents a tick changed, by rule.
fn changed(changes: &[(ChangeKind, Incident)], rule: Rule) -> Option<&Incident> {
    changes.iter().map(|(_, i)| i).find(|i| i.rule == rule)
}

#[test]
fn a_breaker_reopening_for_hours_keeps_the_timeline_bounded() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    // Each opening refuses for 5 s.
    let opened = |now: Tick| Sample {
        breaker: vec![BreakerEvent::Opened {
            upstream: "idv".into(),
            until: mono(now.wall.0 + 5000),
        }],
        ..Sample::default()
    };
    let now = clock.next();
    let first = d.tick(now, opened(now), None);
    assert_eq!(first.len(), 1);
    // Three hours of an upstream that stays down: the breaker tries it every 5 s (half
    // open) and opens again.
    let mut reopened = 0;
    let mut last_reopen = Millis(0);
    let mut latest = None;
    for second in 1..=3 * 3600 {
        let now = clock.next();
        let sample = if second % 5 == 0 {
            reopened += 1;
            last_reopen = now.wall;
            opened(now)
        } else {
            Sample::default()
        };
        if let Some(i) = changed(&d.tick(now, sample, None), Rule::BreakerOpen) {
            latest = Some(i.clone());
        }
    }
    let i = latest.expect("the incident changed");
    assert_eq!(i.state, State::Open);
    assert_eq!(
        i.actions.breaker_opened,
        reopened + 1,
        "the opening that opened it, and every reopening"
    );
    assert!(i.timeline.len() <= 3, "{:#?}", i.timeline);
    let e = i
        .timeline
        .iter()
        .find(|e| e.kind == EntryKind::BreakerOpened)
        .expect("a breaker_opened entry");
    assert_eq!(e.count, reopened + 1, "every opening counted");
    assert_eq!(e.last(), last_reopen);
    assert!(!i.timeline_truncated);
    assert_eq!(
        i.classification.service_downtime_secs,
        3 * 3600,
        "refused all along"
    );
}

#[test]
fn a_breaker_whose_probe_hangs_still_counts_as_down() {
    // An upstream that never answers, under steady traffic, with the defaults: open for 5 s,
    // then the next request (20 ms later) is the probe, which every other request waits
    // behind (refused) until its 30 s request timeout; it fails a moment after that and the
    // breaker opens again. Events arrive between ticks, with the next tick's sample; the
    // first probe's bound falls just before a tick and its failure just after.
    let mut d = Detector::new(cfg());
    let start = 1_800_000_000_000;
    let mut clock = Clock(start);
    let mut events = Vec::new();
    let mut opened = start + 979;
    for _ in 0..4 {
        let up = || "idv".to_owned();
        events.push((
            opened,
            BreakerEvent::Opened {
                upstream: up(),
                until: mono(opened + 5000),
            },
        ));
        let probe = opened + 5020;
        events.push((
            probe,
            BreakerEvent::HalfOpen {
                upstream: up(),
                until: mono(probe + 30_000),
            },
        ));
        opened = probe + 30_002;
    }
    let mut changes = Vec::new();
    let mut ticks_after_opening = 0;
    let mut last = start;
    while last < opened {
        let now = clock.next();
        let sample = Sample {
            breaker: events
                .iter()
                .filter(|(at, _)| (last + 1..=now.wall.0).contains(at))
                .map(|(_, e)| e.clone())
                .collect(),
            ..Sample::default()
        };
        last = now.wall.0;
        if !changes.is_empty() {
            ticks_after_opening += 1;
        }
        changes.extend(d.tick(now, sample, None));
    }
    let opened: Vec<_> = changes
        .iter()
        .filter(|(k, _)| *k == ChangeKind::Opened)
        .collect();
    assert_eq!(opened.len(), 1, "one outage, one incident: {changes:#?}");
    let i = d.open_incidents().next().expect("still open");
    assert_eq!(i.state, State::Open);
    assert!(
        !i.timeline
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Recovering | EntryKind::FiresAgain)),
        "{:#?}",
        i.timeline
    );
    assert_eq!(
        i.classification.service_downtime_secs, ticks_after_opening,
        "every second after the opening one refused"
    );

    // The upstream answers again: the last probe succeeds and the breaker closes.
    let closing = Sample {
        breaker: vec![BreakerEvent::Closed {
            upstream: "idv".into(),
        }],
        ..Sample::default()
    };
    d.tick(clock.next(), closing, None);
    let i = closed_within(&mut d, &mut clock, 60).expect("the incident closes");
    assert_eq!(i.classification.service_downtime_secs, ticks_after_opening);
}

/// The breaker's incident ticks after an opening that refuses until `until`: the closing
/// change, if any, within `limit` seconds.
fn closed_within(d: &mut Detector, clock: &mut Clock, limit: usize) -> Option<Incident> {
    for _ in 0..limit {
        for (kind, i) in d.tick(clock.next(), Sample::default(), None) {
            if kind == ChangeKind::Closed {
                return Some(i);
            }
        }
    }
    None
}

#[test]
fn a_breaker_left_open_without_traffic_stops_counting_downtime_after_its_open_time_and_closes() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    let at = clock.next();
    let opened = Sample {
        breaker: vec![BreakerEvent::Opened {
            upstream: "idv".into(),
            until: mono(at.wall.0 + 30_000),
        }],
        ..Sample::default()
    };
    assert_eq!(d.tick(at, opened, None)[0].0, ChangeKind::Opened);
    // No request comes: the breaker would let a probe through after 30 s, but no request
    // makes it move, and it says nothing more.
    let i = closed_within(&mut d, &mut clock, 3600).expect("the incident closes");
    assert_eq!(
        i.classification.service_downtime_secs, 29,
        "the seconds it refused every request, after the one that opened it"
    );
    let closed_at = i.closed_at.expect("closed_at");
    assert_eq!(
        closed_at.0 - at.wall.0,
        30_000 + 5000,
        "open time, then close_after"
    );
    assert_eq!(d.open_incidents().count(), 0);
    // Nothing fires again until the breaker opens again.
    for _ in 0..120 {
        let c = d.tick(clock.next(), Sample::default(), None);
        assert!(c.is_empty(), "{c:#?}");
    }
}

#[test]
fn a_breaker_refuses_for_its_open_time_on_the_monotonic_clock_whatever_the_wall_clock_does() {
    // The system clock is set an hour back, then an hour forward, right after the opening:
    // neither moves the breaker's refusing time, so the downtime is the same either way.
    for step in [-3_600_000_i64, 3_600_000] {
        let mut d = Detector::new(cfg());
        let start = 1_800_000_000_000;
        let opened_at = at(start);
        let opened = Sample {
            breaker: vec![BreakerEvent::Opened {
                upstream: "idv".into(),
                until: mono(start + 30_000),
            }],
            ..Sample::default()
        };
        assert_eq!(d.tick(opened_at, opened, None)[0].0, ChangeKind::Opened);
        let mut closed = None;
        for s in 1..3600_u64 {
            let ms = start + 1000 * s;
            let tick = Tick {
                wall: Millis(ms.saturating_add_signed(step)),
                ..at(ms)
            };
            if let Some((_, i)) = d
                .tick(tick, Sample::default(), None)
                .into_iter()
                .find(|(kind, _)| *kind == ChangeKind::Closed)
            {
                closed = Some((s, i));
                break;
            }
        }
        let (s, i) = closed.expect("the incident closes");
        assert_eq!(s, 35, "open time, then close_after (step {step})");
        assert_eq!(
            i.classification.service_downtime_secs, 29,
            "the seconds it refused every request (step {step})"
        );
    }
}

#[test]
fn a_breaker_dropped_by_a_reload_lets_its_incident_close() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    let at = clock.next();
    let opened = Sample {
        breaker: vec![BreakerEvent::Opened {
            upstream: "idv".into(),
            until: mono(at.wall.0 + 600_000),
        }],
        ..Sample::default()
    };
    d.tick(at, opened, None);
    for _ in 0..3 {
        d.tick(clock.next(), Sample::default(), None);
    }
    let dropped = Sample {
        breaker: vec![BreakerEvent::Dropped {
            upstream: "idv".into(),
        }],
        ..Sample::default()
    };
    let c = d.tick(clock.next(), dropped, None);
    let i = changed(&c, Rule::BreakerOpen).expect("changed");
    assert_eq!(i.state, State::Recovering);
    let note = i
        .timeline
        .iter()
        .find(|e| e.kind == EntryKind::BreakerClosed)
        .expect("a breaker_closed entry");
    assert!(note.detail.contains("removed by a reload"), "{note:?}");
    let i = closed_within(&mut d, &mut clock, 60).expect("the incident closes");
    assert_eq!(i.classification.service_downtime_secs, 3);
    assert_eq!(d.open_incidents().count(), 0);
}

#[test]
fn tls_failure_flapping_does_not_grow_the_timeline() {
    let mut c = cfg();
    c.window = Duration::from_secs(60);
    c.close_after = Duration::from_secs(120);
    c.tls_failures = 50;
    let mut d = Detector::new(c);
    let mut clock = Clock(1_800_000_000_000);
    // A peer that connects and closes 50 times every 61 s: the rule fires for a window,
    // is quiet for a second, and fires again, all day long.
    let mut bursts = 0;
    let mut latest = None;
    for second in 0..24 * 3600 {
        let tls_failures = if second % 61 == 0 {
            bursts += 1;
            50
        } else {
            0
        };
        let sample = Sample {
            tls_failures,
            ..Sample::default()
        };
        if let Some(i) = changed(&d.tick(clock.next(), sample, None), Rule::TlsFailures) {
            latest = Some(i.clone());
        }
    }
    let i = latest.expect("the incident changed");
    assert!(!i.state.is_closed(), "it never closes: {:?}", i.state);
    assert_eq!(i.requests_failed, bursts * 50);
    assert!(i.timeline.len() <= 4, "{:#?}", i.timeline);
    let count = |kind| {
        i.timeline
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.count)
            .sum::<u64>()
    };
    assert_eq!(
        count(EntryKind::FiresAgain),
        bursts - 1,
        "{:#?}",
        i.timeline
    );
    assert!(
        count(EntryKind::Recovering) >= bursts - 1,
        "{:#?}",
        i.timeline
    );
}

#[test]
fn an_unchanged_open_incident_is_not_rewritten_every_tick() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    for _ in 0..10 {
        assert!(d.tick(clock.next(), Sample::default(), None).is_empty());
    }
    let burst = Sample {
        tls_failures: 40,
        ..Sample::default()
    };
    let opened = d.tick(clock.next(), burst, None);
    assert_eq!(opened[0].0, ChangeKind::Opened);
    let opened_at = opened[0].1.opened_at;
    // The burst stays in the 10 s window: the rule fires on, and nothing changes.
    for _ in 0..8 {
        let c = d.tick(clock.next(), Sample::default(), None);
        assert!(c.is_empty(), "nothing to write: {c:#?}");
    }
    // Once it leaves the window, the incident is recovering: a change, written with its
    // duration up to date.
    let mut recovering = None;
    for _ in 0..3 {
        if let Some(i) = changed(
            &d.tick(clock.next(), Sample::default(), None),
            Rule::TlsFailures,
        ) {
            recovering = Some(i.clone());
            break;
        }
    }
    let i = recovering.expect("recovering");
    assert_eq!(i.state, State::Recovering);
    assert_eq!(
        i.classification.duration_secs,
        opened_at.secs_until(i.updated_at)
    );
    assert!(i.classification.duration_secs >= 9);
}

#[test]
fn callers_dropped_in_the_feed_mark_the_incident_truncated() {
    // The feed keeps as many failing callers per second as the incident names in all.
    let feed = crate::feed::Feed::new(2);
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    let callers = ["apikey:a", "apikey:b", "apikey:c"];
    let mut opened = None;
    for _ in 0..5 {
        for caller in &callers {
            for _ in 0..4 {
                feed.request(&crate::feed::RequestEvent {
                    route: "sessions",
                    upstream: Some("idv"),
                    failed: true,
                    upstream_error: true,
                    upstream_latency: None,
                    caller: Some(caller as &dyn std::fmt::Display),
                    fallback: false,
                });
            }
        }
        for (kind, i) in d.tick(clock.next(), feed.drain(), None) {
            if kind == ChangeKind::Opened {
                opened = Some(i);
            }
        }
    }
    let i = opened.expect("opened");
    assert_eq!(i.affected.callers.len(), 2, "{:?}", i.affected);
    assert!(
        i.affected.callers_truncated,
        "three callers failed, two are named: {:?}",
        i.affected
    );
}

#[test]
fn the_breaker_opening_that_opens_an_incident_is_counted_in_its_actions() {
    let mut d = Detector::new(cfg());
    let mut clock = Clock(1_800_000_000_000);
    let now = clock.next();
    let opened = Sample {
        breaker: vec![BreakerEvent::Opened {
            upstream: "idv".into(),
            until: mono(now.wall.0 + 30_000),
        }],
        ..Sample::default()
    };
    let c = d.tick(now, opened, None);
    let i = changed(&c, Rule::BreakerOpen).expect("opened");
    assert_eq!(i.actions.breaker_opened, 1, "{i:#?}");
    let e = i
        .timeline
        .iter()
        .find(|e| e.kind == EntryKind::BreakerOpened)
        .expect("a breaker_opened entry");
    assert_eq!((e.at, e.count), (now.wall, 1));
    // An incident of the upstream's errors opening with the breaker counts it too.
    let mut d = Detector::new(cfg());
    for _ in 0..2 {
        d.tick(clock.next(), second("sessions", 0, 10, 0, &[]), None);
    }
    let now = clock.next();
    let mut failing = second("sessions", 0, 10, 0, &[]);
    failing.breaker = vec![BreakerEvent::Opened {
        upstream: "idv".into(),
        until: mono(now.wall.0 + 30_000),
    }];
    let c = d.tick(now, failing, None);
    let errors = changed(&c, Rule::UpstreamErrors).expect("opened");
    assert_eq!(errors.actions.breaker_opened, 1, "{errors:#?}");
}

/// Ticks `gaps` apart (in milliseconds, in turn) while the upstream fails every request: the
/// incident's downtime once `total` milliseconds have passed since it opened.
fn downtime_after(gaps: &[u64], total: u64, wall_step: i64) -> (u64, u64) {
    let mut d = Detector::new(cfg());
    let mut ms = 1_800_000_000_000;
    let mut wall = ms;
    let tick = |ms: u64, wall: u64| Tick {
        wall: Millis(wall),
        ..at(ms)
    };
    let mut opened_at = None;
    let mut latest = None;
    let mut n = 0;
    while opened_at.is_none_or(|o| ms - o < total) {
        let gap = gaps[n % gaps.len()];
        n += 1;
        ms += gap;
        wall += gap;
        // The wall clock is set once, half way: nothing measured may follow it.
        if opened_at.is_some_and(|o| ms - o >= total / 2) && wall_step != 0 {
            wall = wall.saturating_add_signed(wall_step);
        }
        let now = tick(ms, wall);
        for (kind, i) in d.tick(now, second("sessions", 0, 10, 0, &[]), None) {
            if kind == ChangeKind::Opened {
                opened_at = Some(ms);
            }
            latest = Some(i);
        }
    }
    let i = latest.expect("opened");
    (
        i.classification.service_downtime_secs,
        i.classification.duration_secs,
    )
}

#[test]
fn service_downtime_counts_every_firing_second_when_ticks_are_999_or_1001_ms_apart() {
    // Ten minutes of an outage, ticks as a busy runtime makes them.
    for gaps in [&[999][..], &[1001], &[999, 1001], &[998, 1003, 999]] {
        let (downtime, duration) = downtime_after(gaps, 600_000, 0);
        assert_eq!(downtime, 600, "ticks {gaps:?} ms apart");
        assert_eq!(duration, 600, "ticks {gaps:?} ms apart");
    }
    // The wall clock set back an hour, or forward one, changes neither.
    for step in [-3_600_000, 3_600_000] {
        assert_eq!(
            downtime_after(&[1000], 600_000, step),
            (600, 600),
            "clock set by {step} ms"
        );
    }
}

#[test]
fn latency_p99_of_2s_does_not_fire_on_answers_of_1_2s() {
    let mut c = cfg();
    c.latency_p99 = Duration::from_secs(2);
    let mut d = Detector::new(c);
    let mut clock = Clock(1_800_000_000_000);
    let bucket = |ms: u64| {
        LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len())
    };
    // Answers of 1.2 s, for a whole window: under the threshold, nothing fires.
    for _ in 0..20 {
        let c = d.tick(
            clock.next(),
            second("sessions", 10, 0, bucket(1200), &[]),
            None,
        );
        assert!(c.is_empty(), "{c:#?}");
    }
    // Answers of 3 s fire it.
    let mut opened = None;
    for _ in 0..10 {
        let c = d.tick(
            clock.next(),
            second("sessions", 10, 0, bucket(3000), &[]),
            None,
        );
        if let Some(i) = changed(&c, Rule::UpstreamLatency) {
            opened = Some(i.clone());
            break;
        }
    }
    let i = opened.expect("answers of 3 s open a latency incident");
    assert!(i.summary.contains("above 2500 ms"), "{}", i.summary);
}

#[test]
fn an_upstream_first_seen_past_the_feeds_bound_still_opens_its_incident() {
    let feed = crate::feed::Feed::new(2);
    for i in 0..crate::feed::MAX_PAIRS {
        feed.request(&crate::feed::RequestEvent {
            route: &format!("route-{i}"),
            upstream: Some("idv"),
            failed: false,
            upstream_error: false,
            upstream_latency: Some(Duration::from_millis(20)),
            caller: None,
            fallback: false,
        });
    }
    for _ in 0..20 {
        feed.request(&crate::feed::RequestEvent {
            route: "late",
            upstream: Some("kyc"),
            failed: true,
            upstream_error: true,
            upstream_latency: None,
            caller: None,
            fallback: false,
        });
    }
    let mut d = Detector::new(cfg());
    let changes = d.tick(at(1_800_000_000_000), feed.drain(), None);
    assert!(
        changes.iter().any(|(kind, i)| *kind == ChangeKind::Opened
            && i.rule == Rule::UpstreamErrors
            && i.subject.as_deref() == Some("kyc")
            && i.requests_failed == 20),
        "{changes:?}"
    );
}

/// An incident that fires again soon after it closed opens anew with the window's seconds
/// as its first counts, but not those the closed one counted already: each failure is in
/// one incident.
#[test]
fn an_incident_reopened_soon_after_closing_counts_no_second_the_closed_one_counted() {
    let mut c = cfg();
    c.window = Duration::from_secs(30);
    c.close_after = Duration::from_secs(2);
    let mut d = Detector::new(c);
    let mut clock = Clock(1_800_000_000_000);
    let mut injected = 0;
    let mut closed = Vec::new();
    let mut opened = 0;
    let mut tick = |d: &mut Detector, sample: Sample, closed: &mut Vec<Incident>| {
        for (kind, i) in d.tick(clock.next(), sample, None) {
            match kind {
                ChangeKind::Opened => opened += 1,
                ChangeKind::Closed => closed.push(i),
                _ => {}
            }
        }
    };
    for _ in 0..20 {
        injected += 10;
        tick(&mut d, second("sessions", 0, 10, 0, &[]), &mut closed);
    }
    for _ in 0..60 {
        tick(&mut d, second("sessions", 10, 0, 2, &[]), &mut closed);
        if !closed.is_empty() {
            break;
        }
    }
    assert_eq!(closed.len(), 1, "the first incident closes");
    // The window still holds seconds of the first outage when the second begins.
    for _ in 0..3 {
        injected += 100;
        tick(&mut d, second("sessions", 0, 100, 0, &[]), &mut closed);
    }
    for _ in 0..80 {
        tick(&mut d, second("sessions", 10, 0, 2, &[]), &mut closed);
        if closed.len() == 2 {
            break;
        }
    }
    assert_eq!(closed.len(), 2, "the second incident closes");
    assert_eq!(closed[0].requests_failed, 200);
    assert_eq!(
        closed[0].requests_failed + closed[1].requests_failed,
        injected,
        "a failure counted twice"
    );
    // Its first second is after the first incident's last.
    assert!(closed[1].audit.since >= closed[0].closed_at);
    let _ = opened;
}
