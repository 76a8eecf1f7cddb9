//! `[incidents]`: the rules that open an incident, their thresholds and severities, where
//! incidents are stored, what DORA's classification needs from the operator (critical
//! routes, region) and the webhook told of each change.

use std::path::PathBuf;
use std::time::Duration;

use idgate_secrets::SecretRef;
use serde::Deserialize;

use crate::context::Ctx;

/// How grave an incident is; ordered, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IncidentSeverity {
    Minor,
    Major,
    Critical,
}

impl IncidentSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minor" => Some(Self::Minor),
            "major" => Some(Self::Major),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    /// One level graver (critical stays critical).
    pub fn raised(self) -> Self {
        match self {
            Self::Minor => Self::Major,
            Self::Major | Self::Critical => Self::Critical,
        }
    }
}

/// The severity each rule opens its incidents with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSeverities {
    pub upstream_errors: IncidentSeverity,
    pub upstream_latency: IncidentSeverity,
    pub breaker_open: IncidentSeverity,
    pub tls_failures: IncidentSeverity,
    pub auth_failures: IncidentSeverity,
    pub audit_backlog: IncidentSeverity,
}

impl Default for RuleSeverities {
    fn default() -> Self {
        Self {
            upstream_errors: IncidentSeverity::Major,
            upstream_latency: IncidentSeverity::Minor,
            breaker_open: IncidentSeverity::Major,
            tls_failures: IncidentSeverity::Minor,
            auth_failures: IncidentSeverity::Minor,
            audit_backlog: IncidentSeverity::Major,
        }
    }
}

/// Where incidents are announced: a POST of the incident's JSON, HMAC-signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub url: http::Uri,
    /// The HMAC-SHA256 key of the `idgate-signature` header.
    pub secret: SecretRef,
    /// Roots for the receiver's certificate; the platform's roots when not given.
    pub ca: Option<PathBuf>,
    /// How many times one notification is tried before it is given up (and logged).
    pub attempts: u32,
    /// Each attempt's time limit.
    pub timeout: Duration,
}

/// `[incidents]`, when present.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentsConfig {
    /// One JSON file per incident.
    pub dir: PathBuf,
    /// The sliding window every rate and ratio is computed over.
    pub window: Duration,
    /// How long a rule must stay quiet before its incident closes.
    pub close_after: Duration,
    /// Fewer upstream answers than this in the window fire no ratio or latency rule.
    pub min_requests: u64,
    /// Share of an upstream's requests that failed, over the window (0–1).
    pub error_ratio: f64,
    /// The upstream's 99th-percentile latency over the window.
    pub latency_p99: Duration,
    /// TLS handshake failures in the window.
    pub tls_failures: u64,
    /// Failed authentications in the window.
    pub auth_failures: u64,
    /// The audit queue's depth as a share of its capacity (0–1).
    pub audit_backlog: f64,
    pub severities: RuleSeverities,
    /// Routes whose failure is a failure of a critical service (DORA); an incident that
    /// affects one is one level graver.
    pub critical_routes: Vec<String>,
    /// The region this gateway serves, for the geographical spread; "n/a" when not given.
    pub region: Option<String>,
    /// How many distinct callers an incident names (more are counted, not named).
    pub max_callers: usize,
    pub notify: Option<NotifyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIncidents {
    dir: String,
    window: Option<String>,
    close_after: Option<String>,
    min_requests: Option<u64>,
    error_ratio: Option<f64>,
    latency_p99: Option<String>,
    tls_failures: Option<u64>,
    auth_failures: Option<u64>,
    audit_backlog: Option<f64>,
    #[serde(default)]
    severity: RawSeverities,
    #[serde(default)]
    critical_routes: Vec<String>,
    region: Option<String>,
    max_callers: Option<usize>,
    notify: Option<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeverities {
    upstream_errors: Option<String>,
    upstream_latency: Option<String>,
    breaker_open: Option<String>,
    tls_failures: Option<String>,
    auth_failures: Option<String>,
    audit_backlog: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: String,
    secret: String,
    ca: Option<String>,
    attempts: Option<u32>,
    timeout: Option<String>,
}

fn ratio(cx: &mut Ctx<'_>, key: &str, v: Option<f64>, default: f64) -> f64 {
    match v {
        None => default,
        Some(r) if r > 0.0 && r <= 1.0 => r,
        Some(_) => {
            cx.err(key, "must be more than 0 and at most 1");
            default
        }
    }
}

fn severity(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<String>,
    default: IncidentSeverity,
) -> IncidentSeverity {
    match v.as_deref().map(IncidentSeverity::parse) {
        None => default,
        Some(Some(s)) => s,
        Some(None) => {
            cx.err(key, "must be \"minor\", \"major\" or \"critical\"");
            default
        }
    }
}

fn notify(cx: &mut Ctx<'_>, n: RawNotify, warnings: &mut Vec<String>) -> Option<NotifyConfig> {
    // User info is never sent as credentials (the receiver authenticates the signature), but
    // it would be in every log line that names the URL; a fragment is never sent at all.
    // Neither is echoed: the user info may be a password. Any '@' is refused, not only one
    // in the authority as parsed: a password holding a '/' would end the authority early.
    if n.url.contains('@') || n.url.contains('#') {
        cx.err(
            "incidents.notify.url",
            "must not carry user info or a fragment (the receiver checks the idgate-signature header)",
        );
        return None;
    }
    let url = match n.url.parse::<http::Uri>() {
        Ok(u) if u.host().is_some() && matches!(u.scheme_str(), Some("https" | "http")) => u,
        _ => {
            cx.err(
                "incidents.notify.url",
                "must be an absolute https:// (or http://) URL",
            );
            return None;
        }
    };
    if url.scheme_str() == Some("http") {
        warnings.push(format!(
            "incidents.notify.url is plain http (to {}): incident notifications travel unencrypted",
            url.host().unwrap_or("-")
        ));
    }
    let secret = SecretRef::parse(&n.secret, cx.base)
        .map_err(|e| cx.err("incidents.notify.secret", e.to_string()))
        .ok()?;
    cx.secret_available("incidents.notify.secret", &secret);
    let ca = n.ca.map(|p| cx.existing_file("incidents.notify.ca", &p));
    let attempts = match n.attempts {
        Some(0) => {
            cx.err("incidents.notify.attempts", "must be at least 1");
            1
        }
        Some(a) => a,
        None => 5,
    };
    Some(NotifyConfig {
        url,
        secret,
        ca,
        attempts,
        timeout: cx.duration(
            "incidents.notify.timeout",
            n.timeout,
            Duration::from_secs(5),
        ),
    })
}

pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    r: RawIncidents,
    route_names: &[&str],
    warnings: &mut Vec<String>,
) -> IncidentsConfig {
    let d = RuleSeverities::default();
    let s = r.severity;
    let severities = RuleSeverities {
        upstream_errors: severity(
            cx,
            "incidents.severity.upstream_errors",
            s.upstream_errors,
            d.upstream_errors,
        ),
        upstream_latency: severity(
            cx,
            "incidents.severity.upstream_latency",
            s.upstream_latency,
            d.upstream_latency,
        ),
        breaker_open: severity(
            cx,
            "incidents.severity.breaker_open",
            s.breaker_open,
            d.breaker_open,
        ),
        tls_failures: severity(
            cx,
            "incidents.severity.tls_failures",
            s.tls_failures,
            d.tls_failures,
        ),
        auth_failures: severity(
            cx,
            "incidents.severity.auth_failures",
            s.auth_failures,
            d.auth_failures,
        ),
        audit_backlog: severity(
            cx,
            "incidents.severity.audit_backlog",
            s.audit_backlog,
            d.audit_backlog,
        ),
    };
    for (i, name) in r.critical_routes.iter().enumerate() {
        if !route_names.contains(&name.as_str()) {
            cx.err(
                format!("incidents.critical_routes[{i}]"),
                format!("no route is named \"{name}\""),
            );
        }
    }
    let window = cx.duration("incidents.window", r.window, Duration::from_secs(60));
    if window > Duration::from_secs(3600) {
        cx.err("incidents.window", "must be at most 1h");
    }
    let positive = |cx: &mut Ctx<'_>, key: &str, v: Option<u64>, default: u64| match v {
        Some(0) => {
            cx.err(key, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    IncidentsConfig {
        dir: cx.path(&r.dir),
        window,
        close_after: cx.duration(
            "incidents.close_after",
            r.close_after,
            Duration::from_secs(120),
        ),
        min_requests: positive(cx, "incidents.min_requests", r.min_requests, 20),
        error_ratio: ratio(cx, "incidents.error_ratio", r.error_ratio, 0.5),
        latency_p99: cx.duration(
            "incidents.latency_p99",
            r.latency_p99,
            Duration::from_secs(2),
        ),
        tls_failures: positive(cx, "incidents.tls_failures", r.tls_failures, 50),
        auth_failures: positive(cx, "incidents.auth_failures", r.auth_failures, 100),
        audit_backlog: ratio(cx, "incidents.audit_backlog", r.audit_backlog, 0.8),
        severities,
        critical_routes: r.critical_routes,
        region: r.region.filter(|s| !s.is_empty()),
        max_callers: match r.max_callers {
            Some(n @ 1..=1000) => n,
            Some(_) => {
                cx.err("incidents.max_callers", "must be 1 to 1000");
                20
            }
            None => 20,
        },
        notify: r.notify.and_then(|n| notify(cx, n, warnings)),
    }
}

#[cfg(test)]
#[path = "incidents_tests.rs"]
mod tests;
