//! An incident as it is stored, served and reported: what fired, how grave, when, its
//! timeline, what it affected, and the fields of DORA's major-incident classification.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use idgate_config::IncidentSeverity;

/// A moment, in milliseconds since the Unix epoch; RFC 3339 (UTC) in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub fn rfc3339(self) -> String {
        idgate_audit::json::format_millis(self.0)
    }

    /// Seconds from `self` to `later` (0 if `later` is earlier).
    pub fn secs_until(self, later: Millis) -> u64 {
        later.0.saturating_sub(self.0) / 1000
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        idgate_audit::json::parse_time(&s)
            .map(Millis)
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 UTC time"))
    }
}

/// Which rule opened the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// An upstream's share of failed requests over the window.
    UpstreamErrors,
    /// An upstream's 99th-percentile latency over the window.
    UpstreamLatency,
    /// An upstream's circuit breaker is open.
    BreakerOpen,
    /// TLS handshake failures over the window.
    TlsFailures,
    /// Failed authentications over the window.
    AuthFailures,
    /// The audit queue's depth against its capacity.
    AuditBacklog,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamErrors => "upstream_errors",
            Self::UpstreamLatency => "upstream_latency",
            Self::BreakerOpen => "breaker_open",
            Self::TlsFailures => "tls_failures",
            Self::AuthFailures => "auth_failures",
            Self::AuditBacklog => "audit_backlog",
        }
    }

    /// Whether the rule is about one upstream (its subject).
    pub fn per_upstream(self) -> bool {
        matches!(
            self,
            Self::UpstreamErrors | Self::UpstreamLatency | Self::BreakerOpen
        )
    }

    /// Whether, while it fires, the upstream's service counts as down (DORA's downtime).
    pub fn is_downtime(self) -> bool {
        matches!(self, Self::UpstreamErrors | Self::BreakerOpen)
    }
}

/// Where the incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The rule fires.
    Open,
    /// The rule stopped firing; the incident closes after `close_after` of quiet.
    Recovering,
    Closed,
    /// The gateway stopped while the incident was open; closed at the next start.
    Interrupted,
}

impl State {
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Closed | Self::Interrupted)
    }
}

/// What happened, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    FirstSeen,
    ThresholdCrossed,
    SeverityChanged,
    BreakerOpened,
    BreakerClosed,
    Recovering,
    FiresAgain,
    Recovered,
    Interrupted,
    /// Stands for the entries left out of a long timeline (see [`Incident::note`]).
    Omitted,
}

impl EntryKind {
    /// Whether a repeat of it is folded into the entry before (see [`Incident::note`]):
    /// what can happen again and again while an incident lasts.
    fn folds(self) -> bool {
        matches!(
            self,
            Self::SeverityChanged
                | Self::BreakerOpened
                | Self::BreakerClosed
                | Self::Recovering
                | Self::FiresAgain
        )
    }
}

/// The first entries a timeline always keeps.
pub const TIMELINE_HEAD: usize = 16;
/// The most entries a timeline holds: its first [`TIMELINE_HEAD`], one [`EntryKind::Omitted`]
/// for what was left out, and the latest.
pub const TIMELINE_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened (the first time, for a folded entry).
    pub at: Millis,
    pub kind: EntryKind,
    /// Its words (the latest occurrence's, for a folded entry).
    pub detail: String,
    /// How many times it happened (how many occurrences were left out, for
    /// [`EntryKind::Omitted`]); 1 when absent.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
    /// When it last happened, for an entry that stands for more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<Millis>,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl TimelineEntry {
    pub fn new(at: Millis, kind: EntryKind, detail: impl Into<String>) -> Self {
        Self {
            at,
            kind,
            detail: detail.into(),
            count: 1,
            last_at: None,
        }
    }

    /// When it last happened.
    pub fn last(&self) -> Millis {
        self.last_at.unwrap_or(self.at)
    }

    /// Takes `other`, which happened after it, into its count and times.
    fn absorb(&mut self, other: &TimelineEntry) {
        self.count = self.count.saturating_add(other.count);
        self.last_at = Some(self.last().max(other.last()));
    }
}

/// Who and what the incident touched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    pub routes: BTreeSet<String>,
    pub upstreams: BTreeSet<String>,
    /// Principal labels of failing callers, at most `max_callers`.
    pub callers: BTreeSet<String>,
    /// More callers failed than are named.
    pub callers_truncated: bool,
}

/// What the gateway did while the incident was open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actions {
    /// Requests the gateway answered with an error itself (no upstream answer to relay).
    pub requests_refused: u64,
    /// Times a circuit breaker of an affected upstream opened.
    pub breaker_opened: u64,
    /// Requests the upstream failed that a fallback answered in its place (the route's
    /// failover upstream, or the caller's cached answer).
    #[serde(default)]
    pub fallbacks_served: u64,
}

/// DORA's classification criteria for major ICT-related incidents (Commission Delegated
/// Regulation (EU) 2024/1772, art. 1–8), as far as the gateway can know them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Distinct callers whose requests failed (a lower bound when `callers_truncated`).
    pub clients_affected: u64,
    pub duration_secs: u64,
    /// Seconds during which the affected upstream's service was unavailable (its error rule
    /// or breaker fired).
    pub service_downtime_secs: u64,
    /// "none known", or the audit records lost while the incident was open.
    pub data_losses: String,
    pub audit_records_dropped: u64,
    /// Affected routes the configuration marks critical.
    pub critical_services_affected: Vec<String>,
    /// The configured region, or "n/a".
    pub geographical_spread: String,
}

/// The audit records written while the incident was open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRange {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// From the start of the window that fired the rule.
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

/// One incident; see the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub rule: Rule,
    /// The upstream of a per-upstream rule.
    pub subject: Option<String>,
    pub severity: Severity,
    pub state: State,
    pub opened_at: Millis,
    pub updated_at: Millis,
    pub closed_at: Option<Millis>,
    /// The last measurement that crossed the threshold.
    pub summary: String,
    /// What happened, in order, bounded: see [`Incident::note`].
    pub timeline: Vec<TimelineEntry>,
    /// The timeline left entries out (an [`EntryKind::Omitted`] entry counts them).
    #[serde(default)]
    pub timeline_truncated: bool,
    pub affected: Affected,
    pub requests_failed: u64,
    pub actions: Actions,
    pub classification: Classification,
    pub audit: AuditRange,
}

impl Incident {
    /// Adds an entry to the timeline, which stays bounded however long the incident lasts
    /// and however often its rule flaps:
    ///
    /// - a repeat of what the last entry, or the one before it, says (a breaker that opens
    ///   again at each retry; a rule flapping between `recovering` and `fires_again`) is
    ///   folded into that entry: its `count` grows, `last_at` moves on, and `detail` takes
    ///   the latest words;
    /// - past [`TIMELINE_MAX`] entries, the first [`TIMELINE_HEAD`] and the latest are kept,
    ///   and one [`EntryKind::Omitted`] entry after the first ones counts what lies between
    ///   (from its `at` to its `last_at`); `timeline_truncated` says so.
    pub(crate) fn note(&mut self, at: Millis, kind: EntryKind, detail: impl Into<String>) {
        let entry = TimelineEntry::new(at, kind, detail);
        if kind.folds()
            && let Some(same) = self
                .timeline
                .iter_mut()
                .rev()
                .take(2)
                .find(|e| e.kind == kind)
        {
            same.absorb(&entry);
            same.detail = entry.detail;
            return;
        }
        self.timeline.push(entry);
        if self.timeline.len() <= TIMELINE_MAX {
            return;
        }
        self.timeline_truncated = true;
        if self.timeline[TIMELINE_HEAD].kind != EntryKind::Omitted {
            let first = &self.timeline[TIMELINE_HEAD];
            let mut marker = TimelineEntry::new(
                first.at,
                EntryKind::Omitted,
                "entries left out to keep the timeline bounded",
            );
            marker.count = 0;
            self.timeline.insert(TIMELINE_HEAD, marker);
        }
        // In one pass: a timeline read from a file may be far over the bound.
        let excess = self.timeline.len() - TIMELINE_MAX;
        let (head, rest) = self.timeline.split_at_mut(TIMELINE_HEAD + 1);
        if let (Some(marker), Some(gone)) = (head.last_mut(), rest.get(..excess)) {
            for g in gone {
                marker.absorb(g);
            }
        }
        self.timeline
            .drain(TIMELINE_HEAD + 1..TIMELINE_HEAD + 1 + excess);
    }
}

/// [`IncidentSeverity`] as JSON ("minor", "major", "critical").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Severity(pub IncidentSeverity);

impl Serialize for Severity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IncidentSeverity::parse(&s)
            .map(Severity)
            .ok_or_else(|| serde::de::Error::custom("not minor, major or critical"))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> Incident {
        Incident {
            id: "20251202T081500000Z-breaker_open-idv".into(),
            rule: Rule::BreakerOpen,
            subject: Some("idv".into()),
            severity: Severity(IncidentSeverity::Major),
            state: State::Open,
            opened_at: Millis(0),
            updated_at: Millis(0),
            closed_at: None,
            summary: String::new(),
            timeline: Vec::new(),
            timeline_truncated: false,
            affected: Affected::default(),
            requests_failed: 0,
            actions: Actions::default(),
            classification: Classification::default(),
            audit: AuditRange::default(),
        }
    }

    #[test]
    fn a_timeline_keeps_its_first_and_latest_entries_and_counts_what_it_left_out() {
        let mut i = incident();
        i.note(Millis(0), EntryKind::FirstSeen, "first");
        i.note(Millis(1000), EntryKind::ThresholdCrossed, "crossed");
        // A cycle of three that folding alone does not bound.
        let cycle = [
            EntryKind::BreakerOpened,
            EntryKind::BreakerClosed,
            EntryKind::SeverityChanged,
        ];
        let mut noted = 2;
        let mut t = 1000;
        for n in 0..1000 {
            t += 1000;
            i.note(Millis(t), cycle[n % 3], format!("event {n}"));
            noted += 1;
        }
        assert_eq!(i.timeline.len(), TIMELINE_MAX);
        assert!(i.timeline_truncated);
        assert_eq!(i.timeline[0].kind, EntryKind::FirstSeen);
        assert_eq!(i.timeline[1].kind, EntryKind::ThresholdCrossed);
        assert_eq!(i.timeline[2].detail, "event 0", "the first ones are kept");
        let marker = &i.timeline[TIMELINE_HEAD];
        assert_eq!(marker.kind, EntryKind::Omitted);
        assert_eq!(marker.at, Millis(2000 + (TIMELINE_HEAD as u64 - 2) * 1000));
        assert!(marker.last() < i.timeline[TIMELINE_HEAD + 1].at);
        let last = i.timeline.last().map(|e| (e.at, e.detail.as_str()));
        assert_eq!(last, Some((Millis(t), "event 999")), "the latest are kept");
        // Every occurrence is accounted for.
        assert_eq!(i.timeline.iter().map(|e| e.count).sum::<u64>(), noted);
        assert!(
            i.timeline
                .windows(2)
                .all(|w| w[0].last() <= w[1].at || w[1].kind == EntryKind::Omitted)
        );
        // The closing entry still goes at the end.
        i.note(Millis(t + 1000), EntryKind::Recovered, "closed");
        assert_eq!(i.timeline.len(), TIMELINE_MAX);
        assert_eq!(
            i.timeline.last().map(|e| e.kind),
            Some(EntryKind::Recovered)
        );
    }

    #[test]
    fn a_timeline_read_far_over_its_bound_is_cut_back_to_it_with_every_occurrence_counted() {
        let mut i = incident();
        let kinds = [EntryKind::BreakerOpened, EntryKind::BreakerClosed];
        i.timeline = (0..100_000u64)
            .map(|n| TimelineEntry::new(Millis(n), kinds[n as usize % 2], format!("e{n}")))
            .collect();
        i.note(Millis(100_000), EntryKind::Recovered, "closed");
        assert_eq!(i.timeline.len(), TIMELINE_MAX);
        assert!(i.timeline_truncated);
        assert_eq!(
            i.timeline[TIMELINE_HEAD - 1].detail,
            format!("e{}", TIMELINE_HEAD - 1)
        );
        let marker = &i.timeline[TIMELINE_HEAD];
        assert_eq!(marker.kind, EntryKind::Omitted);
        assert_eq!(marker.at, Millis(TIMELINE_HEAD as u64));
        assert_eq!(
            marker.last(),
            Millis(i.timeline[TIMELINE_HEAD + 1].at.0 - 1)
        );
        assert_eq!(i.timeline.iter().map(|e| e.count).sum::<u64>(), 100_001);
        assert_eq!(
            i.timeline.last().map(|e| e.kind),
            Some(EntryKind::Recovered)
        );
    }

    #[test]
    fn repeats_fold_into_one_entry_with_their_count_and_times() {
        let mut i = incident();
        i.note(Millis(0), EntryKind::ThresholdCrossed, "crossed");
        for n in 0..5u64 {
            i.note(Millis(1000 + n * 2000), EntryKind::Recovering, "quiet");
            i.note(
                Millis(2000 + n * 2000),
                EntryKind::FiresAgain,
                format!("fires {n}"),
            );
        }
        assert_eq!(i.timeline.len(), 3, "{:#?}", i.timeline);
        let fires = &i.timeline[2];
        assert_eq!(
            (fires.count, fires.at, fires.last()),
            (5, Millis(2000), Millis(10_000))
        );
        assert_eq!(fires.detail, "fires 4", "the latest words");
        // A single entry is written as before; a folded one with its count and last time.
        let json = serde_json::to_value(&i.timeline).unwrap_or_default();
        assert!(json[0].get("count").is_none() && json[0].get("last_at").is_none());
        assert_eq!(json[2]["count"], 5);
        assert_eq!(json[2]["last_at"], "1970-01-01T00:00:10.000Z");
        let back: Vec<TimelineEntry> = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, i.timeline);
    }
}
