//! `[incidents]` as a whole file sees it: the defaults, every key, and each problem at its
//! key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use super::*;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"

[identity]
svid_cert = "gw.crt"
svid_key = "gw.key"

[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "bundle.pem"

[[upstreams]]
name = "idv"
url = "https://idv.example.com"

[[routes]]
name = "sessions"
methods = ["GET"]
path = "/v1/sessions"
upstream = "idv"
allow = ["spiffe://example.org/ns/kyc/*"]
"#;

fn dir_with_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["gw.crt", "gw.key", "bundle.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let key = dir.path().join("notify.key");
    std::fs::write(&key, "x").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dir
}

fn parse_in(dir: &Path, section: &str) -> Result<IncidentsConfig, Vec<String>> {
    match crate::parse(&dir.join("idgate.toml"), &format!("{BASE}\n{section}")) {
        Ok(c) => Ok(c.incidents.expect("an [incidents] section")),
        Err(e) => Err(e
            .0
            .iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()),
    }
}

#[test]
fn defaults_are_filled_in() {
    let dir = dir_with_files();
    let c = parse_in(dir.path(), "[incidents]\ndir = \"incidents\"").unwrap();
    assert_eq!(c.dir, dir.path().join("incidents"));
    assert_eq!(c.window, Duration::from_secs(60));
    assert_eq!(c.close_after, Duration::from_secs(120));
    assert_eq!(c.min_requests, 20);
    assert!((c.error_ratio - 0.5).abs() < f64::EPSILON);
    assert_eq!(c.latency_p99, Duration::from_secs(2));
    assert_eq!(c.severities, RuleSeverities::default());
    assert_eq!(c.region, None);
    assert!(c.notify.is_none());
}

#[test]
fn every_key_is_read() {
    let dir = dir_with_files();
    let c = parse_in(
        dir.path(),
        r#"
[incidents]
dir = "/var/lib/idgate/incidents"
window = "30s"
close_after = "5m"
min_requests = 50
error_ratio = 0.25
latency_p99 = "750ms"
tls_failures = 10
auth_failures = 20
audit_backlog = 0.5
critical_routes = ["sessions"]
region = "eu-central-1"
max_callers = 5

[incidents.severity]
upstream_errors = "critical"
auth_failures = "major"

[incidents.notify]
url = "https://hooks.example.com/idgate"
secret = "file:notify.key"
attempts = 3
timeout = "2s"
"#,
    )
    .unwrap();
    assert_eq!(c.dir, Path::new("/var/lib/idgate/incidents"));
    assert_eq!(c.close_after, Duration::from_secs(300));
    assert_eq!(c.latency_p99, Duration::from_millis(750));
    assert_eq!(c.severities.upstream_errors, IncidentSeverity::Critical);
    assert_eq!(c.severities.auth_failures, IncidentSeverity::Major);
    assert_eq!(c.severities.tls_failures, IncidentSeverity::Minor);
    assert_eq!(c.critical_routes, vec!["sessions".to_owned()]);
    assert_eq!(c.region.as_deref(), Some("eu-central-1"));
    let n = c.notify.unwrap();
    assert_eq!(n.url, "https://hooks.example.com/idgate");
    assert_eq!((n.attempts, n.timeout), (3, Duration::from_secs(2)));
}

#[test]
fn each_problem_is_named_at_its_key() {
    let dir = dir_with_files();
    let problems = parse_in(
        dir.path(),
        r#"
[incidents]
dir = "incidents"
error_ratio = 1.5
critical_routes = ["nowhere"]
max_callers = 0
min_requests = 0

[incidents.severity]
breaker_open = "severe"

[incidents.notify]
url = "ftp://hooks.example.com"
secret = "hunter2"
"#,
    )
    .unwrap_err();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    for key in [
        "incidents.error_ratio",
        "incidents.critical_routes[0]",
        "incidents.max_callers",
        "incidents.min_requests",
        "incidents.severity.breaker_open",
        "incidents.notify.url",
    ] {
        assert!(keys.contains(&key), "{key} in {problems:?}");
    }
    assert!(
        !problems.iter().any(|p| p.contains("hunter2")),
        "{problems:?}"
    );
}

#[test]
fn an_incident_notify_url_with_user_info_is_refused_without_echoing_it() {
    let dir = dir_with_files();
    for url in [
        "https://alerts:hunter2@hooks.example.com/idgate",
        "https://alerts:hun/ter2@hooks.example.com/idgate",
        "https://hooks.example.com/idgate#hunter2",
    ] {
        let section = format!(
            "[incidents]\ndir = \"incidents\"\n[incidents.notify]\nurl = \"{url}\"\nsecret = \"file:notify.key\"\n"
        );
        let problems = parse_in(dir.path(), &section).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("incidents.notify.url: must not carry user info")),
            "{url}: {problems:?}"
        );
        assert!(
            problems
                .iter()
                .all(|p| !p.contains("hunter2") && !p.contains("ter2") && !p.contains("alerts")),
            "{problems:?}"
        );
    }
}
