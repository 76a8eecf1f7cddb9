//! An incident rendered for a compliance officer (Markdown) or a program (JSON).

use std::fmt::Write as _;

use crate::incident::{EntryKind, Incident};

/// The incident as pretty JSON.
pub fn json(incident: &Incident) -> String {
    serde_json::to_string_pretty(incident).unwrap_or_default()
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = items
        .into_iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// The Markdown report: what, when, how long, who was affected, what the gateway did, the
/// DORA classification and the audit records to extract. `config` is the configuration
/// file the extraction command names (a usual path when not known).
pub fn markdown(i: &Incident, config: Option<&str>) -> String {
    let config = config.unwrap_or("/etc/idgate/idgate.toml");
    let mut m = String::new();
    let c = &i.classification;
    let _ = writeln!(m, "# Incident {}\n", i.id);
    let _ = writeln!(m, "## What happened\n");
    let _ = writeln!(
        m,
        "- Rule: `{}`{}",
        i.rule.as_str(),
        i.subject
            .as_deref()
            .map(|s| format!(" (upstream `{s}`)"))
            .unwrap_or_default()
    );
    let _ = writeln!(m, "- Severity: **{}**", i.severity);
    let _ = writeln!(
        m,
        "- State: {}",
        serde_json::to_value(i.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    let _ = writeln!(m, "- Last measurement: {}\n", i.summary);
    let _ = writeln!(m, "## When and how long\n");
    let _ = writeln!(m, "- Opened: {}", i.opened_at);
    match i.closed_at {
        Some(t) => {
            let _ = writeln!(m, "- Closed: {t}");
        }
        None => {
            let _ = writeln!(m, "- Closed: still open (last update {})", i.updated_at);
        }
    }
    let _ = writeln!(
        m,
        "- Duration: {}{}",
        duration(c.duration_secs),
        if i.state.is_closed() {
            ""
        } else {
            " (up to the last update)"
        }
    );
    let _ = writeln!(
        m,
        "- Service downtime: {}\n",
        duration(c.service_downtime_secs)
    );
    let _ = writeln!(m, "## Who was affected\n");
    let _ = writeln!(m, "- Routes: {}", list(&i.affected.routes));
    let _ = writeln!(m, "- Upstreams: {}", list(&i.affected.upstreams));
    let _ = writeln!(
        m,
        "- Callers ({}{}): {}",
        c.clients_affected,
        if i.affected.callers_truncated {
            " or more"
        } else {
            ""
        },
        list(&i.affected.callers)
    );
    let _ = writeln!(m, "- Requests failed: **{}**\n", i.requests_failed);
    let _ = writeln!(m, "## What the gateway did\n");
    let _ = writeln!(
        m,
        "- Requests answered with an error by the gateway itself (no upstream answer): {}",
        i.actions.requests_refused
    );
    let _ = writeln!(
        m,
        "- Circuit breaker openings: {}",
        i.actions.breaker_opened
    );
    let _ = writeln!(
        m,
        "- Fallbacks served (the failover upstream or a cached answer): {}\n",
        i.actions.fallbacks_served
    );
    let _ = writeln!(m, "## DORA classification\n");
    let _ = writeln!(m, "| Criterion | Value |\n|---|---|");
    let _ = writeln!(
        m,
        "| Clients affected | {}{} |",
        c.clients_affected,
        if i.affected.callers_truncated {
            "+"
        } else {
            ""
        }
    );
    let _ = writeln!(m, "| Duration | {} |", duration(c.duration_secs));
    let _ = writeln!(
        m,
        "| Service downtime | {} |",
        duration(c.service_downtime_secs)
    );
    let _ = writeln!(m, "| Data losses | {} |", c.data_losses);
    let _ = writeln!(
        m,
        "| Critical services affected | {} |",
        list(&c.critical_services_affected)
    );
    let _ = writeln!(m, "| Geographical spread | {} |\n", c.geographical_spread);
    let _ = writeln!(m, "## Timeline\n");
    for e in &i.timeline {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match (e.kind, e.count) {
            (EntryKind::Omitted, n) => {
                let _ = writeln!(
                    m,
                    "- {} to {} — {n} more entries left out to keep the timeline bounded",
                    e.at,
                    e.last()
                );
            }
            (_, 1) => {
                let _ = writeln!(m, "- {} — {kind}: {}", e.at, e.detail);
            }
            (_, n) => {
                let _ = writeln!(
                    m,
                    "- {} — {kind}, {n} times to {}: {} (the latest)",
                    e.at,
                    e.last(),
                    e.detail
                );
            }
        }
    }
    let _ = writeln!(m, "\n## Audit records\n");
    let a = &i.audit;
    match (a.first_seq, a.last_seq, a.since) {
        (Some(f), Some(l), Some(since)) => {
            let until = a.until.or(i.closed_at).unwrap_or(i.updated_at);
            let _ = writeln!(m, "- Entries `seq` {f} to {l}");
            let _ = writeln!(
                m,
                "- Extract them with:\n\n```sh\nidgate audit show --config {config} --since {since} --until {until}\n```"
            );
        }
        _ => {
            let _ = writeln!(m, "- No audit trail was configured: no entry range");
        }
    }
    m
}
