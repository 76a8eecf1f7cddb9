//! Storage round trips, restart handling and the report's content, over a real directory.

use std::collections::BTreeSet;

use idgate_incidents::incident::{
    Actions, Affected, AuditRange, Classification, EntryKind, IncidentSeverity, Severity,
    TimelineEntry,
};
use idgate_incidents::{Incident, Millis, Rule, State, Store, StoreError, report};

fn incident(id: &str, state: State) -> Incident {
    Incident {
        id: id.into(),
        rule: Rule::UpstreamErrors,
        subject: Some("idv".into()),
        severity: Severity(IncidentSeverity::Major),
        state,
        opened_at: Millis(1_764_663_300_000),
        updated_at: Millis(1_764_663_360_000),
        closed_at: None,
        summary: "upstream idv: 40 of 40 requests failed".into(),
        timeline: vec![TimelineEntry::new(
            Millis(1_764_663_300_000),
            EntryKind::ThresholdCrossed,
            "crossed",
        )],
        timeline_truncated: false,
        affected: Affected {
            routes: BTreeSet::from(["sessions".to_owned()]),
            upstreams: BTreeSet::from(["idv".to_owned()]),
            callers: BTreeSet::from(["api_key:ci".to_owned()]),
            callers_truncated: false,
        },
        requests_failed: 40,
        actions: Actions {
            requests_refused: 40,
            breaker_opened: 0,
            fallbacks_served: 3,
        },
        classification: Classification {
            clients_affected: 1,
            duration_secs: 60,
            service_downtime_secs: 55,
            data_losses: "none known".into(),
            audit_records_dropped: 0,
            critical_services_affected: vec![],
            geographical_spread: "n/a".into(),
        },
        audit: AuditRange {
            first_seq: Some(101),
            last_seq: Some(160),
            since: Some(Millis(1_764_663_240_000)),
            until: None,
        },
    }
}

#[test]
fn incidents_round_trip_and_open_ones_are_closed_as_interrupted_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let open = incident("20251202T081500000Z-upstream_errors-idv", State::Open);
    let mut done = incident("20251201T000000000Z-upstream_errors-idv", State::Closed);
    done.closed_at = Some(Millis(1_764_577_300_000));
    store.save(&open).expect("save");
    store.save(&done).expect("save");
    assert_eq!(store.load(&open.id).expect("load"), open);
    let all = store.load_all().expect("all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, done.id, "oldest first");
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let closed = store
        .close_interrupted(Millis(1_764_670_000_000), &mut Default::default())
        .expect("close");
    assert_eq!(closed.len(), 1);
    let again = Store::at(dir.path()).load(&open.id).expect("load");
    assert_eq!(again.state, State::Interrupted);
    assert_eq!(again.closed_at, Some(open.updated_at));
    assert_eq!(
        again.timeline.last().map(|e| e.kind),
        Some(EntryKind::Interrupted)
    );
    // The closed one is left as it was.
    assert_eq!(store.load(&done.id).expect("load"), done);
}

#[test]
fn ids_that_are_not_file_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for id in ["../x", "a/b", "", ".hidden"] {
        assert!(
            matches!(store.load(id), Err(StoreError::NotFound(_))),
            "{id}"
        );
    }
}

#[test]
fn the_report_names_routes_failures_and_the_audit_range_with_its_command() {
    let i = incident("20251202T081500000Z-upstream_errors-idv", State::Open);
    let md = report::markdown(&i, None);
    assert!(md.contains("`sessions`"), "{md}");
    assert!(md.contains("Requests failed: **40**"), "{md}");
    assert!(md.contains("Entries `seq` 101 to 160"), "{md}");
    assert!(
        md.contains("idgate audit show --config /etc/idgate/idgate.toml --since 2025-12-02T08:14:00.000Z --until 2025-12-02T08:16:00.000Z"),
        "{md}"
    );
    assert!(md.contains("| Service downtime | 55s |"), "{md}");
    assert!(
        md.contains("- Fallbacks served (the failover upstream or a cached answer): 3"),
        "{md}"
    );
    let json: Incident = serde_json::from_str(&report::json(&i)).expect("json");
    assert_eq!(json, i);
}

#[test]
fn the_report_shows_folded_entries_and_what_the_timeline_left_out() {
    let mut i = incident("20251202T081500000Z-upstream_errors-idv", State::Open);
    let mut folded = TimelineEntry::new(
        Millis(1_764_663_310_000),
        EntryKind::BreakerOpened,
        "circuit breaker of idv opened",
    );
    folded.count = 12;
    folded.last_at = Some(Millis(1_764_663_365_000));
    let mut omitted = TimelineEntry::new(
        Millis(1_764_663_370_000),
        EntryKind::Omitted,
        "entries left out to keep the timeline bounded",
    );
    omitted.count = 40;
    omitted.last_at = Some(Millis(1_764_663_500_000));
    i.timeline.extend([folded, omitted]);
    i.timeline_truncated = true;
    let md = report::markdown(&i, None);
    assert!(
        md.contains("- 2025-12-02T08:15:10.000Z — breaker_opened, 12 times to 2025-12-02T08:16:05.000Z: circuit breaker of idv opened (the latest)"),
        "{md}"
    );
    assert!(
        md.contains("- 2025-12-02T08:16:10.000Z to 2025-12-02T08:18:20.000Z — 40 more entries left out to keep the timeline bounded"),
        "{md}"
    );
    assert!(
        md.contains("- Duration: 1m 0s (up to the last update)"),
        "{md}"
    );
}
