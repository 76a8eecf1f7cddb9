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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Millis,
    pub kind: EntryKind,
    pub detail: String,
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
    pub timeline: Vec<TimelineEntry>,
    pub affected: Affected,
    pub requests_failed: u64,
    pub actions: Actions,
    pub classification: Classification,
    pub audit: AuditRange,
}

impl Incident {
    pub(crate) fn note(&mut self, at: Millis, kind: EntryKind, detail: impl Into<String>) {
        self.timeline.push(TimelineEntry {
            at,
            kind,
            detail: detail.into(),
        });
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
