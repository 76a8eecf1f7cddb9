//! The detectors: a sliding window of one-second [`Sample`]s, the rules evaluated over it at
//! each tick, and the incidents they open, update and close. Pure: the time of each tick is
//! given, so tests drive it with their own clock.
//!
//! Each tick brings two times: the wall clock's, for the timestamps an incident shows, and
//! a monotonic one, for what is measured between ticks (downtime, quiet time, duration),
//! in milliseconds: a clock set back or forward, or ticks a little less than a second
//! apart, change no count.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_config::{IncidentSeverity, IncidentsConfig};

use crate::feed::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS, Sample};
use crate::incident::{
    Actions, Affected, AuditRange, Classification, EntryKind, Incident, Millis, Rule, Severity,
    State,
};

/// The audit trail's state at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditState {
    pub depth: u64,
    pub capacity: u64,
    /// The last entry written.
    pub last_seq: u64,
    /// Records lost since the start (a counter).
    pub dropped: u64,
}

/// What a tick did to an incident; every change is stored, some are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Opened,
    SeverityChanged,
    /// Counts, timeline or state changed.
    Updated,
    Closed,
}

impl ChangeKind {
    /// Whether the notification webhook hears of it.
    pub fn notifies(self) -> bool {
        !matches!(self, Self::Updated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::SeverityChanged => "severity_changed",
            Self::Updated => "updated",
            Self::Closed => "closed",
        }
    }
}

type Key = (Rule, Option<String>);

/// When a tick happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The wall clock: the incidents' timestamps.
    pub wall: Millis,
    /// A monotonic clock: what is measured between ticks.
    pub mono: Instant,
}

impl Tick {
    /// Now, by both clocks.
    pub fn now() -> Self {
        Self {
            wall: crate::service::now(),
            mono: Instant::now(),
        }
    }
}

/// Whole milliseconds from `since` to `until` (0 if `until` is earlier).
fn millis_between(since: Instant, until: Instant) -> u64 {
    u64::try_from(until.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}

/// A rule that fires at this tick, with what it measured.
struct Finding {
    severity: IncidentSeverity,
    summary: String,
}

/// One second in the window: its sample and the audit trail's last seq before it.
struct Second {
    /// Its place in the run of seconds since the detector started.
    index: u64,
    sample: Sample,
    seq_before: Option<u64>,
}

/// Per-upstream sums over the window.
#[derive(Default)]
struct UpstreamSums {
    requests: u64,
    errors: u64,
    latency: [u64; LATENCY_BUCKETS],
}

/// See the module documentation.
pub struct Detector {
    cfg: IncidentsConfig,
    window: VecDeque<Second>,
    /// Upstreams whose breaker refuses every request, and until when at the latest: open,
    /// or half-open with a probe out. An entry goes when its breaker closes or is dropped,
    /// or once that time has passed: from then on an open breaker lets a probe through at
    /// the next request, and only that probe (announced as half-open) makes it refuse again.
    breakers_open: BTreeMap<String, Option<Instant>>,
    open: HashMap<Key, Open>,
    /// Of each incident closed while seconds it counted are still in the window, the last of
    /// them: an incident of the same rule and subject opening meanwhile starts after it, so
    /// that no second is counted by two incidents.
    counted_through: HashMap<Key, u64>,
    /// The index the next second gets.
    next_index: u64,
    last_tick: Option<Instant>,
    /// The audit trail at the last tick.
    audit: Option<AuditState>,
}

/// An incident still open and what its next tick needs.
struct Open {
    incident: Incident,
    /// Since when the rule has not fired.
    quiet_since: Option<Instant>,
    /// When it opened, by the monotonic clock: its duration.
    opened: Instant,
    /// The service downtime so far, in milliseconds (the incident shows whole seconds).
    downtime_ms: u64,
    dropped_at_open: u64,
    /// The rule's own severity, before a critical route raises it.
    base: IncidentSeverity,
}

impl Detector {
    pub fn new(cfg: IncidentsConfig) -> Self {
        Self {
            cfg,
            window: VecDeque::new(),
            breakers_open: BTreeMap::new(),
            open: HashMap::new(),
            counted_through: HashMap::new(),
            next_index: 0,
            last_tick: None,
            audit: None,
        }
    }

    /// The incidents open now.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().map(|o| &o.incident)
    }

    fn window_len(&self) -> usize {
        usize::try_from(self.cfg.window.as_secs().max(1)).unwrap_or(60)
    }

    /// One tick: `sample` is what the last second brought. Returns the incidents changed.
    pub fn tick(
        &mut self,
        now: Tick,
        sample: Sample,
        audit: Option<AuditState>,
    ) -> Vec<(ChangeKind, Incident)> {
        let elapsed = self.last_tick.map_or(1000, |t| millis_between(t, now.mono));
        self.last_tick = Some(now.mono);
        self.breakers(now.mono, &sample.breaker);
        let breaker_events = sample.breaker.clone();
        let latest = sample.clone();
        let now_seq = audit.map(|a| a.last_seq);
        self.window.push_back(Second {
            index: self.next_index,
            sample,
            // The first second has no tick before it: its entries start after now's.
            seq_before: self.audit.map(|a| a.last_seq).or(now_seq),
        });
        self.next_index += 1;
        while self.window.len() > self.window_len() {
            self.window.pop_front();
        }
        if let Some(first) = self.window.front().map(|s| s.index) {
            self.counted_through.retain(|_, last| *last >= first);
        }
        self.audit = audit;
        let findings = self.evaluate();
        let mut changes = Vec::new();
        // Open incidents first: they learn this second's counts.
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            let finding = findings.get(&key);
            if let Some(change) =
                self.advance(&key, now, elapsed, finding, &latest, &breaker_events)
            {
                changes.push(change);
            }
        }
        for (key, finding) in findings {
            if !self.open.contains_key(&key) {
                let incident = self.open_incident(key.clone(), now, finding, &breaker_events);
                changes.push((ChangeKind::Opened, incident));
            }
        }
        changes
    }

    /// Takes the breakers' events of the last second, in order, and forgets the breakers
    /// whose refusing time has passed. A breaker that opened in this second counts as open
    /// at this tick even if its open time (shorter than a second) is already over, so that
    /// no opening goes unseen. A probe counts a second past its bound
    /// ([`PROBE_ANSWER_MARGIN`]).
    fn breakers(&mut self, now: Instant, events: &[crate::feed::BreakerEvent]) {
        use crate::feed::BreakerEvent as E;
        let mut opened_now = BTreeSet::new();
        for e in events {
            match e {
                E::Opened { upstream, until } => {
                    self.breakers_open.insert(upstream.clone(), *until);
                    opened_now.insert(upstream.as_str());
                }
                E::HalfOpen { upstream, until } => {
                    let until = until.and_then(|t| t.checked_add(PROBE_ANSWER_MARGIN));
                    self.breakers_open.insert(upstream.clone(), until);
                }
                E::Closed { upstream } | E::Dropped { upstream } => {
                    self.breakers_open.remove(upstream);
                    opened_now.remove(upstream.as_str());
                }
            }
        }
        self.breakers_open
            .retain(|u, until| until.is_none_or(|t| now < t) || opened_now.contains(u.as_str()));
    }

    /// Every rule over the window: which fire now, for which subject.
    fn evaluate(&self) -> BTreeMap<Key, Finding> {
        let cfg = &self.cfg;
        let sev = &cfg.severities;
        let mut found = BTreeMap::new();
        let mut sums: BTreeMap<Arc<str>, UpstreamSums> = BTreeMap::new();
        for s in &self.window {
            for (_, r) in &s.sample.routes {
                let Some(u) = &r.upstream else { continue };
                let e = sums.entry(u.clone()).or_default();
                e.requests += r.upstream_requests;
                e.errors += r.upstream_errors;
                for (acc, n) in e.latency.iter_mut().zip(r.latency) {
                    *acc += n;
                }
            }
        }
        let secs = self.window.len();
        for (u, s) in &sums {
            if s.requests >= cfg.min_requests {
                let ratio = s.errors as f64 / s.requests as f64;
                if ratio >= cfg.error_ratio {
                    found.insert(
                        (Rule::UpstreamErrors, Some(u.to_string())),
                        Finding {
                            severity: sev.upstream_errors,
                            summary: format!(
                                "upstream {u}: {} of {} requests failed over {secs}s (ratio {ratio:.2}, threshold {:.2})",
                                s.errors, s.requests, cfg.error_ratio
                            ),
                        },
                    );
                }
            }
            let answered: u64 = s.latency.iter().sum();
            if answered >= cfg.min_requests {
                // Only the p99's bucket is known: the rule fires when all of it lies above
                // the threshold, so that answers under the threshold never fire it.
                let (above, p99) = percentile_ms(&s.latency, 0.99);
                let limit = u64::try_from(cfg.latency_p99.as_millis()).unwrap_or(u64::MAX);
                if above >= limit {
                    found.insert(
                        (Rule::UpstreamLatency, Some(u.to_string())),
                        Finding {
                            severity: sev.upstream_latency,
                            summary: format!(
                                "upstream {u}: p99 latency over {secs}s is above {above} ms (at most {p99} ms), threshold {limit} ms ({answered} answers)"
                            ),
                        },
                    );
                }
            }
        }
        for u in self.breakers_open.keys() {
            found.insert(
                (Rule::BreakerOpen, Some(u.clone())),
                Finding {
                    severity: sev.breaker_open,
                    summary: format!("upstream {u}: circuit breaker open"),
                },
            );
        }
        let tls: u64 = self.window.iter().map(|s| s.sample.tls_failures).sum();
        if tls >= cfg.tls_failures {
            found.insert(
                (Rule::TlsFailures, None),
                Finding {
                    severity: sev.tls_failures,
                    summary: format!(
                        "{tls} TLS handshake failures over {secs}s (threshold {})",
                        cfg.tls_failures
                    ),
                },
            );
        }
        let auth: u64 = self.window.iter().map(|s| s.sample.auth_failures).sum();
        if auth >= cfg.auth_failures {
            found.insert(
                (Rule::AuthFailures, None),
                Finding {
                    severity: sev.auth_failures,
                    summary: format!(
                        "{auth} failed authentications over {secs}s (threshold {})",
                        cfg.auth_failures
                    ),
                },
            );
        }
        if let Some(a) = self.audit
            && a.capacity > 0
            && a.depth as f64 >= cfg.audit_backlog * a.capacity as f64
        {
            found.insert(
                (Rule::AuditBacklog, None),
                Finding {
                    severity: sev.audit_backlog,
                    summary: format!(
                        "audit queue holds {} of {} records (threshold {:.0}%)",
                        a.depth,
                        a.capacity,
                        cfg.audit_backlog * 100.0
                    ),
                },
            );
        }
        found
    }

    fn open_incident(
        &mut self,
        key: Key,
        tick: Tick,
        f: Finding,
        breaker: &[crate::feed::BreakerEvent],
    ) -> Incident {
        let now = tick.wall;
        let (rule, subject) = key.clone();
        // The window's seconds, but those an incident of this key closed with.
        let after = self.counted_through.remove(&key);
        let fresh = |s: &&Second| after.is_none_or(|last| s.index > last);
        let uncounted = self.window.iter().filter(fresh).count();
        let window_start = Millis(now.0.saturating_sub(uncounted as u64 * 1000));
        let mut incident = Incident {
            id: incident_id(now, rule, subject.as_deref()),
            rule,
            subject: subject.clone(),
            severity: Severity(f.severity),
            state: State::Open,
            opened_at: now,
            updated_at: now,
            closed_at: None,
            summary: f.summary.clone(),
            timeline: Vec::new(),
            timeline_truncated: false,
            affected: Affected::default(),
            requests_failed: 0,
            actions: Actions::default(),
            classification: Classification {
                data_losses: "none known".into(),
                geographical_spread: self.cfg.region.clone().unwrap_or_else(|| "n/a".into()),
                ..Classification::default()
            },
            audit: AuditRange {
                first_seq: self
                    .window
                    .iter()
                    .find(fresh)
                    .and_then(|s| s.seq_before)
                    .map(|s| s + 1),
                last_seq: self.audit.map(|a| a.last_seq),
                since: Some(window_start),
                until: None,
            },
        };
        incident.note(
            window_start,
            EntryKind::FirstSeen,
            "first second of the window that fired the rule",
        );
        incident.note(now, EntryKind::ThresholdCrossed, f.summary);
        // The window's counts are the incident's first.
        let seconds: Vec<Sample> = self
            .window
            .iter()
            .filter(fresh)
            .map(|s| s.sample.clone())
            .collect();
        for s in &seconds {
            self.count(&mut incident, s);
        }
        self.settle_severity(&mut incident, f.severity, now, false);
        if let Some(u) = &subject {
            incident.affected.upstreams.insert(u.clone());
        }
        // The breaker opening that opens the incident (or comes with it) is one of its own.
        breaker_notes(&mut incident, now, breaker);
        self.open.insert(
            key,
            Open {
                incident: incident.clone(),
                quiet_since: None,
                opened: tick.mono,
                downtime_ms: 0,
                base: f.severity,
                dropped_at_open: self.audit.map_or(0, |a| a.dropped),
            },
        );
        incident
    }

    /// Adds one second's counts to an incident.
    fn count(&self, incident: &mut Incident, s: &Sample) {
        match incident.rule {
            Rule::TlsFailures => incident.requests_failed += s.tls_failures,
            Rule::AuthFailures => incident.requests_failed += s.auth_failures,
            Rule::AuditBacklog => {}
            _ => {
                let subject = incident.subject.as_deref();
                for (route, r) in &s.routes {
                    if r.upstream.as_deref() != subject || (r.failed == 0 && r.fallbacks == 0) {
                        continue;
                    }
                    incident.requests_failed += r.failed;
                    incident.actions.requests_refused += r.refused;
                    incident.actions.fallbacks_served += r.fallbacks;
                    incident.affected.routes.insert(route.to_string());
                    // Callers the feed could not note this second: more failed than named.
                    if r.callers_dropped {
                        incident.affected.callers_truncated = true;
                    }
                    for c in &r.callers {
                        if incident.affected.callers.len() < self.cfg.max_callers {
                            incident.affected.callers.insert(c.to_string());
                        } else if !incident.affected.callers.contains(&**c) {
                            incident.affected.callers_truncated = true;
                        }
                    }
                }
            }
        }
    }

    /// The rule's severity, one level graver when a critical route is affected.
    fn settle_severity(
        &self,
        incident: &mut Incident,
        base: IncidentSeverity,
        now: Millis,
        announce: bool,
    ) -> bool {
        let critical: Vec<String> = incident
            .affected
            .routes
            .iter()
            .filter(|r| self.cfg.critical_routes.contains(r))
            .cloned()
            .collect();
        let severity = if critical.is_empty() {
            base
        } else {
            base.raised()
        };
        incident.classification.critical_services_affected = critical;
        incident.classification.clients_affected = incident.affected.callers.len() as u64;
        if severity != incident.severity.0 {
            let was = incident.severity;
            incident.severity = Severity(severity);
            if announce {
                incident.note(
                    now,
                    EntryKind::SeverityChanged,
                    format!("{was} → {severity}", severity = severity.as_str()),
                );
                return true;
            }
        }
        false
    }

    fn advance(
        &mut self,
        key: &Key,
        tick: Tick,
        elapsed: u64,
        finding: Option<&Finding>,
        latest: &Sample,
        breaker: &[crate::feed::BreakerEvent],
    ) -> Option<(ChangeKind, Incident)> {
        let close_after = u64::try_from(self.cfg.close_after.as_millis()).unwrap_or(u64::MAX);
        let now = tick.wall;
        let audit = self.audit;
        let mut open = self.open.remove(key)?;
        let before = open.incident.clone();
        let mut inc = open.incident;
        self.count(&mut inc, latest);
        breaker_notes(&mut inc, now, breaker);
        if let Some(a) = audit {
            inc.audit.last_seq = Some(a.last_seq);
            let dropped = a.dropped.saturating_sub(open.dropped_at_open);
            inc.classification.audit_records_dropped = dropped;
            inc.classification.data_losses = if dropped == 0 {
                "none known".into()
            } else {
                format!("{dropped} audit records dropped")
            };
        }
        let mut kind = ChangeKind::Updated;
        match finding {
            Some(f) => {
                if inc.rule.is_downtime() {
                    open.downtime_ms = open.downtime_ms.saturating_add(elapsed);
                    inc.classification.service_downtime_secs = open.downtime_ms / 1000;
                }
                if open.quiet_since.take().is_some() {
                    inc.state = State::Open;
                    inc.note(now, EntryKind::FiresAgain, f.summary.clone());
                }
                inc.summary = f.summary.clone();
                open.base = f.severity;
                if self.settle_severity(&mut inc, f.severity, now, true) {
                    kind = ChangeKind::SeverityChanged;
                }
            }
            None => {
                if self.settle_severity(&mut inc, open.base, now, true) {
                    kind = ChangeKind::SeverityChanged;
                }
                match open.quiet_since {
                    None => {
                        open.quiet_since = Some(tick.mono);
                        inc.state = State::Recovering;
                        inc.note(now, EntryKind::Recovering, "the rule no longer fires");
                    }
                    Some(since) if millis_between(since, tick.mono) >= close_after => {
                        inc.state = State::Closed;
                        inc.closed_at = Some(now);
                        inc.audit.until = Some(now);
                        inc.classification.duration_secs =
                            millis_between(open.opened, tick.mono) / 1000;
                        inc.note(
                            now,
                            EntryKind::Recovered,
                            format!("healthy for {}s: closed", close_after / 1000),
                        );
                        inc.updated_at = now;
                        if let Some(last) = self.window.back() {
                            self.counted_through.insert(key.clone(), last.index);
                        }
                        return Some((ChangeKind::Closed, inc));
                    }
                    Some(_) => {}
                }
            }
        }
        // The time that passed is no change by itself: `duration_secs` is brought up to date
        // with a real change (and counted to the moment of asking by the admin endpoint), so
        // an incident that nothing happens to is neither written nor compared again.
        let changed = inc != before;
        if changed {
            inc.updated_at = now;
            inc.classification.duration_secs = millis_between(open.opened, tick.mono) / 1000;
        }
        open.incident = inc.clone();
        self.open.insert(key.clone(), open);
        changed.then_some((kind, inc))
    }
}

/// How long past its bound a probe still counts as out. A probe that times
/// out ends at its bound, and the breaker's opening reaches the detector a moment later: a
/// tick in between would see the breaker refuse nothing. It also covers a probe let through
/// shortly after the one announced, which is not announced again (at most once a second).
const PROBE_ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// The bounds of the bucket holding the `q` quantile: it is above the first (0 for the
/// first bucket) and at most the second (the last bound doubled for the open bucket).
fn percentile_ms(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> (u64, u64) {
    let total: u64 = buckets.iter().sum();
    let rank = (q * total as f64).ceil() as u64;
    let last = LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1];
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank.max(1) {
            let below = i.checked_sub(1).map_or(0, |j| LATENCY_BOUNDS_MS[j]);
            return (below, LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(last * 2));
        }
    }
    (0, 0)
}

/// Notes the breakers' events of a tick that concern the incident's upstreams, and counts
/// their openings.
fn breaker_notes(inc: &mut Incident, now: Millis, events: &[crate::feed::BreakerEvent]) {
    use crate::feed::BreakerEvent as E;
    for e in events {
        match e {
            E::Opened { upstream, .. } if inc.affected.upstreams.contains(upstream) => {
                inc.actions.breaker_opened += 1;
                inc.note(
                    now,
                    EntryKind::BreakerOpened,
                    format!("circuit breaker of {upstream} opened"),
                );
            }
            E::Closed { upstream } if inc.affected.upstreams.contains(upstream) => {
                inc.note(
                    now,
                    EntryKind::BreakerClosed,
                    format!("circuit breaker of {upstream} closed"),
                );
            }
            E::Dropped { upstream } if inc.affected.upstreams.contains(upstream) => {
                inc.note(
                    now,
                    EntryKind::BreakerClosed,
                    format!(
                        "circuit breaker of {upstream} removed by a reload: requests are no longer refused"
                    ),
                );
            }
            _ => {}
        }
    }
}

/// `20261202T081500123Z-upstream_errors-idv`: sortable, unique per rule and subject, and
/// safe as a file name. A subject not spelled out exactly (anything but lower-case letters,
/// digits and `_`, or longer than 48) is followed by a digest of it:
/// `20261202T081500123Z-breaker_open-kyc_eu-d9ee10fac657` for `kyc-eu`.
pub fn incident_id(at: Millis, rule: Rule, subject: Option<&str>) -> String {
    let compact: String = at
        .rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut id = format!("{compact}-{}", rule.as_str());
    if let Some(s) = subject {
        id.push('-');
        id.extend(
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .take(MAX_ID_SUBJECT),
        );
        // A subject the id does not spell out exactly (`kyc-eu` and `KYC_eu` both read
        // `kyc_eu`; a long name is cut) gets a digest of its exact bytes, so that upstreams
        // whose names differ open incidents whose ids (and files) differ. One spelled out
        // exactly has no `-` in it, so it cannot meet one with a digest.
        let exact = s.len() <= MAX_ID_SUBJECT
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !exact {
            let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
            id.push('-');
            id.push_str(&idgate_codec::hex::encode(&digest.as_ref()[..6]));
        }
    }
    id
}

/// The most characters of the subject an incident id spells out.
const MAX_ID_SUBJECT: usize = 48;

#[cfg(test)]
mod tests;
