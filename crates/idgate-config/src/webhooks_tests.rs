#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"
client_auth = "optional"
[identity]
svid_cert = "c"
svid_key = "k"
[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "ca.pem"
[[upstreams]]
name = "p"
url = "https://provider.test"
[[routes]]
name = "sessions"
methods = ["GET"]
path = "/v3/session/{id}/decision/"
upstream = "p"
allow = ["spiffe://example.org/ns/kyc/*"]
[masking.profiles.kyc-minimal]
rules = [{ path = "$..full_name", action = "redact" }]
[state]
backend = "redb"
path = "state.redb"
"#;

const WEBHOOK: &str = r#"
[[webhooks]]
name = "didit"
path = "/webhooks/didit"
scheme = "didit"
secret = "file:key"
outbox_key = "file:key"
[[webhooks.subscribers]]
name = "kyc-backend"
url = "https://kyc.internal:9443/events"
secret = "file:key"
"#;

/// A directory with the files `BASE` names and a 0600 `key` file.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, mode) in [
        ("key", 0o600),
        ("c", 0o644),
        ("k", 0o600),
        ("ca.pem", 0o644),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, "k".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

/// Parses `BASE` with `extra`: the configuration, or the errors as `key: reason`.
fn load(extra: &str) -> Result<crate::Config, Vec<String>> {
    let dir = dir();
    let file = dir.path().join("t.toml");
    crate::parse(&file, &format!("{BASE}{extra}")).map_err(|e| {
        e.0.into_iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    })
}

fn errors(extra: &str) -> Vec<String> {
    load(extra).err().unwrap_or_default()
}

#[test]
fn a_minimal_webhook_takes_the_defaults() {
    let config = load(WEBHOOK).unwrap();
    let w = &config.webhooks[0];
    assert_eq!(
        (w.name.as_str(), w.path.as_str()),
        ("didit", "/webhooks/didit")
    );
    assert_eq!(w.scheme, WebhookScheme::Didit);
    assert_eq!(w.secrets.len(), 1);
    assert_eq!(w.tolerance, DEFAULT_TOLERANCE);
    assert_eq!(w.replay_window, None);
    assert_eq!(w.max_body_bytes, DEFAULT_WEBHOOK_BODY);
    assert!(w.source_cidrs.is_empty());
    assert_eq!(w.retry, RetryPolicy::default());
    assert_eq!(w.retention, Duration::from_secs(7 * 24 * 3600));
    let s = &w.subscribers[0];
    assert_eq!(s.name, "kyc-backend");
    assert_eq!(s.url, "https://kyc.internal:9443/events");
    assert!(s.wants(Some("status.updated")) && s.wants(None));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn every_setting_is_read() {
    let config = load(
        r#"
[[webhooks]]
name = "persona"
path = "/hooks/persona"
scheme = "persona"
secret = "file:key"
previous_secret = "env:OLD_PERSONA_SECRET_FOR_TEST_UNSET"
tolerance = "2m"
replay_window = "30m"
source_cidrs = ["203.0.113.0/24", "2001:db8::1"]
max_body_bytes = 65536
outbox_key = "file:key"
outbox_previous_keys = ["file:key"]
retry = { base = "500ms", max = "1m", max_age = "2h" }
delivery_timeout = "3s"
retention = "0s"
dead_letter_retention = "24h"
[[webhooks.subscribers]]
name = "a"
url = "http://127.0.0.1:9000/events"
secret = "file:key"
masking = "kyc-minimal"
events = ["inquiry.completed"]
ca = "ca.pem"
"#,
    );
    // The previous secret's variable is not set: the reference is checked like any other.
    let errs = config.unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("webhooks[0].previous_secret: "),
        "{errs:?}"
    );

    let sumsub = WEBHOOK.replace(
        "scheme = \"didit\"",
        "scheme = \"sumsub\"\nsource_cidrs = [\"10.0.0.0/8\"]\nretry = { max_age = \"1h\" }\nretention = \"0s\"\nreplay_window = \"20h\"",
    ) + "masking = \"kyc-minimal\"\nevents = [\"applicantReviewed\"]\nca = \"ca.pem\"\n";
    let config = load(&sumsub).unwrap();
    let w = &config.webhooks[0];
    assert_eq!(w.scheme, WebhookScheme::Sumsub);
    assert_eq!(w.source_cidrs, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(w.retry.max_age, Duration::from_secs(3600));
    assert_eq!(w.retry.base, RetryPolicy::default().base);
    assert_eq!(w.retention, Duration::ZERO);
    assert_eq!(w.replay_window, Some(Duration::from_secs(20 * 3600)));
    let s = &w.subscribers[0];
    assert_eq!(s.masking, Some(0));
    assert!(s.wants(Some("applicantReviewed")));
    assert!(!s.wants(Some("applicantPending")) && !s.wants(None));
    assert!(s.ca.as_ref().is_some_and(|p| p.ends_with("ca.pem")));
}

#[test]
fn problems_are_named_by_their_key() {
    let bad = WEBHOOK
        .replace("name = \"didit\"", "name = \"di dit\"")
        .replace(
            "scheme = \"didit\"",
            "scheme = \"didit-v9\"\ntolerance = \"0s\"\nallow_sha1 = true",
        )
        .replace("outbox_key = \"file:key\"", "outbox_key = \"hunter2\"\nmax_body_bytes = 0\nretry = { base = \"10s\", max = \"1s\" }")
        .replace("https://kyc.internal:9443/events", "http://kyc.internal/events")
        + "masking = \"nope\"\nevents = [\"\"]\n";
    let errs = errors(&bad);
    for expected in [
        "webhooks[0].name: a webhook name is",
        "webhooks[0].scheme: \"didit-v9\" is not a webhook scheme: write didit, didit-v2",
        "webhooks[0].tolerance: must be more than zero",
        "webhooks[0].allow_sha1: is for scheme = \"sumsub\" only",
        "webhooks[0].outbox_key: a literal secret is not allowed here",
        "webhooks[0].max_body_bytes: must be between 1 and",
        "webhooks[0].retry.max: must be at least retry.base",
        "webhooks[0].subscribers[0].url: must be https:// (http:// only to a loopback address)",
        "webhooks[0].subscribers[0].masking: no masking profile is named \"nope\"",
        "webhooks[0].subscribers[0].events[0]: an event type is",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{expected} in {errs:#?}"
        );
    }
    assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");

    let no_subscribers = WEBHOOK.split("[[webhooks.subscribers]]").next().unwrap();
    assert_eq!(
        errors(no_subscribers),
        [
            "webhooks[0].subscribers: missing: add [[webhooks.subscribers]] with the services events go to"
        ]
    );
    let unknown = WEBHOOK.replace(
        "scheme = \"didit\"",
        "scheme = \"didit\"\nsignature = \"x\"",
    );
    assert!(
        errors(&unknown)
            .iter()
            .any(|e| e.starts_with("webhooks[0].signature: unknown field `signature`")),
        "{:?}",
        errors(&unknown)
    );
}

#[test]
fn a_webhook_path_is_nobody_elses() {
    let errs = errors(&WEBHOOK.replace("/webhooks/didit", "/v3/session/abc/decision/"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "webhooks[0].path: route \"sessions\" (/v3/session/{id}/decision/) takes /v3/session/abc/decision/ too"
        ),
        "{errs:?}"
    );
    for (path, reason) in [
        ("webhooks/didit", "must be an absolute path"),
        ("/webhooks/{provider}", "is matched exactly"),
        ("/webhooks/didit?x=1", "is matched exactly"),
    ] {
        let errs = errors(&WEBHOOK.replace("/webhooks/didit", path));
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("webhooks[0].path: {reason}"))),
            "{path}: {errs:?}"
        );
    }
    let twice = format!(
        "{WEBHOOK}{}",
        WEBHOOK.replace("name = \"didit\"", "name = \"other\"")
    );
    assert_eq!(
        errors(&twice),
        ["webhooks[1].path: webhook \"didit\" already takes /webhooks/didit"]
    );
    let same_name = format!(
        "{WEBHOOK}{}",
        WEBHOOK.replace("/webhooks/didit", "/webhooks/other")
    );
    assert_eq!(
        errors(&same_name),
        ["webhooks[1].name: another webhook is named \"didit\""]
    );
}

#[test]
fn a_listener_that_requires_client_certificates_is_warned_about() {
    let config = load(WEBHOOK).map(|c| c.warnings).unwrap();
    assert!(config.is_empty());
    let dir = dir();
    let text = format!("{BASE}{WEBHOOK}")
        .replace("client_auth = \"optional\"", "client_auth = \"required\"");
    let config = crate::parse(&dir.path().join("t.toml"), &text).unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("webhooks: listener.client_auth is \"required\"")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn webhooks_are_refused_with_the_in_memory_state_backend() {
    let dir = dir();
    let file = dir.path().join("t.toml");
    let memory_state = "[state]\nbackend = \"redb\"\npath = \"state.redb\"\n";
    for state in ["", "[state]\nbackend = \"memory\"\n"] {
        let text = format!("{BASE}{WEBHOOK}").replace(memory_state, state);
        let errs = crate::parse(&file, &text).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].file, file);
        assert_eq!(errs[0].key, "webhooks[0]");
        assert!(
            errs[0]
                .reason
                .starts_with("[state] is the in-memory backend")
                && errs[0].reason.contains("backend = \"redb\""),
            "{}",
            errs[0].reason
        );
        assert!(
            errs[0].to_string().contains("t.toml") && errs[0].to_string().contains("webhooks[0]"),
            "{}",
            errs[0]
        );
    }
    // A broken [state] says so itself, once.
    let broken = format!("{BASE}{WEBHOOK}").replace(memory_state, "[state]\nbackend = \"redb\"\n");
    let errs: Vec<String> = crate::parse(&file, &broken)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(errs, ["state.path"]);
    // Without webhooks, memory stays the default it is.
    let text = BASE.replace(memory_state, "");
    assert_eq!(
        crate::parse(&file, &text).unwrap().state,
        StateBackend::Memory
    );
    // Redis and redb keep the outbox durably.
    let redis = format!("{BASE}{WEBHOOK}").replace(
        memory_state,
        "[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n",
    );
    assert!(crate::parse(&file, &redis).is_ok());
    assert!(load(WEBHOOK).is_ok());
}

#[test]
fn a_replay_window_shorter_than_twice_the_tolerance_is_refused_where_a_time_is_checked() {
    let with = |scheme: &str, extra: &str| {
        WEBHOOK.replace(
            "scheme = \"didit\"",
            &format!("scheme = \"{scheme}\"\ntolerance = \"300s\"\n{extra}"),
        )
    };
    for scheme in ["didit", "didit-v2", "didit-simple", "persona"] {
        let errs = errors(&with(scheme, "replay_window = \"599s\""));
        assert_eq!(errs.len(), 1, "{scheme}: {errs:?}");
        assert!(
            errs[0].starts_with(
                "webhooks[0].replay_window: is 599s, shorter than twice the tolerance (600s)"
            ),
            "{scheme}: {errs:?}"
        );
        // Between the window and the tolerance, not only below the tolerance.
        assert!(!errors(&with(scheme, "replay_window = \"400s\"")).is_empty());
        let config = load(&with(scheme, "replay_window = \"600s\"")).unwrap();
        assert_eq!(
            config.webhooks[0].replay_window,
            Some(Duration::from_secs(600))
        );
    }
    // A scheme that signs no time and reads none: only its keys' memory counts.
    assert!(load(&with("sumsub", "replay_window = \"60s\"")).is_ok());
    // With an event time, it is checked like a signed one.
    let timed =
        "event_time = { field = \"createdAt\", format = \"unix\" }\nreplay_window = \"60s\"";
    assert!(
        errors(&with("sumsub", timed))
            .iter()
            .any(|e| e.starts_with("webhooks[0].replay_window: is 60s, shorter than twice")),
        "{:?}",
        errors(&with("sumsub", timed))
    );
}

#[test]
fn an_event_time_is_read_for_schemes_that_sign_none() {
    let with = |scheme: &str, event_time: &str| {
        WEBHOOK.replace(
            "scheme = \"didit\"",
            &format!("scheme = \"{scheme}\"\nevent_time = {event_time}"),
        )
    };
    for (scheme, field, format, want) in [
        ("sumsub", "createdAt", "unix", EventTimeFormat::Unix),
        (
            "veriff",
            "verification.decisionTime",
            "rfc3339",
            EventTimeFormat::Rfc3339,
        ),
        (
            "onfido",
            "payload.timestamp",
            "unix_ms",
            EventTimeFormat::UnixMillis,
        ),
        (
            "sumsub",
            "createdAtMs",
            "naive_utc",
            EventTimeFormat::NaiveUtc,
        ),
    ] {
        let config = load(&with(
            scheme,
            &format!("{{ field = \"{field}\", format = \"{format}\" }}"),
        ))
        .unwrap();
        let t = config.webhooks[0].event_time.as_ref().unwrap();
        assert_eq!(t.field.join("."), field);
        assert_eq!(t.format, want);
    }
    assert_eq!(load(WEBHOOK).unwrap().webhooks[0].event_time, None);
    assert_eq!(
        errors(&with(
            "didit",
            "{ field = \"timestamp\", format = \"unix\" }"
        )),
        [
            "webhooks[0].event_time: is for scheme = \"sumsub\", \"veriff\" or \"onfido\" only: \"didit\" signs its own timestamp"
        ]
    );
    let errs = errors(&with("sumsub", "{ field = \"a..b\", format = \"iso\" }"));
    assert!(
        errs.iter().any(|e| e.starts_with("webhooks[0].event_time.field: must be a dotted path"))
            && errs.iter().any(|e| e.starts_with(
                "webhooks[0].event_time.format: \"iso\" is not a time format: write unix, unix_ms, rfc3339, naive_utc"
            )),
        "{errs:?}"
    );
}
