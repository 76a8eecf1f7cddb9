//! `[upstreams.breaker]` and `[upstreams.retry]`: how an upstream's failures are contained
//! (a circuit breaker) and when a failed request is sent again (retries under a budget).
//! Both are opt-in: an upstream without them behaves as it always did.

use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;

/// The circuit breaker of one upstream: when it opens, how long it stays open, and how
/// many probes it lets through when half-open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// The share of failures over `window` (0 < ratio ≤ 1) that opens the breaker, once at
    /// least `min_requests` requests were seen in the window.
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long the breaker refuses every request before it lets probes through.
    pub open_duration: Duration,
    /// Requests let through at once when half-open; that many successes close it.
    pub half_open_probes: u32,
}

/// Which failures of an attempt a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be made: the upstream never saw the request.
    Connect,
    /// No answer within `request_timeout`.
    Timeout,
    /// The connection broke before an answer.
    Reset,
}

/// Retries of one upstream's failed requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt (so `attempts + 1` sends at most).
    pub attempts: u32,
    /// Upstream answers that are retried (default: 502, 503, 504).
    pub statuses: Vec<u16>,
    /// Failures without an answer that are retried.
    pub on: Vec<RetryOn>,
    /// The first backoff; each further one doubles, up to `backoff_max`, with full jitter.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub budget: RetryBudgetConfig,
    /// The upstream deduplicates requests by their `Idempotency-Key`: a `POST` or `PATCH`
    /// carrying a non-empty one may be retried after the upstream may have seen it.
    pub idempotency_key: bool,
}

/// A retry budget in the manner of Finagle's: over `window`, retries may be at most
/// `percent` % of the requests, plus `min_per_second` for quiet times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

/// Active health checks of an upstream's endpoints: a `GET` of `path` on each, every
/// `interval`; an endpoint leaves the rotation after `unhealthy_threshold` failed checks
/// in a row and comes back after `healthy_threshold` passed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Put after the upstream's base path, like a forwarded path.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expected_status: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    path: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    healthy_threshold: Option<u32>,
    #[serde(default)]
    unhealthy_threshold: Option<u32>,
    #[serde(default)]
    expected_status: Option<u16>,
}

pub(crate) fn parse_health(cx: &mut Ctx<'_>, upstream: &str, h: RawHealth) -> HealthConfig {
    let key = |k: &str| format!("{upstream}.health.{k}");
    if !h.path.starts_with('/') || h.path.contains(['?', '#', ' ']) {
        cx.err(
            key("path"),
            "must be a path starting with /, without a query",
        );
    }
    let interval = cx.duration(&key("interval"), h.interval, Duration::from_secs(5));
    let timeout = cx.duration(&key("timeout"), h.timeout, Duration::from_secs(2));
    if timeout > interval {
        cx.err(key("timeout"), "must not be longer than interval");
    }
    let expected_status = match h.expected_status {
        None => 200,
        Some(s @ 100..=599) => s,
        Some(s) => {
            cx.err(key("expected_status"), format!("{s} is not an HTTP status"));
            200
        }
    };
    HealthConfig {
        path: h.path,
        interval,
        timeout,
        healthy_threshold: at_least_one(cx, key("healthy_threshold"), h.healthy_threshold, 2),
        unhealthy_threshold: at_least_one(cx, key("unhealthy_threshold"), h.unhealthy_threshold, 2),
        expected_status,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    failure_ratio: Option<f64>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    min_requests: Option<u32>,
    #[serde(default)]
    open_duration: Option<String>,
    #[serde(default)]
    half_open_probes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    #[serde(default)]
    on: Option<Vec<String>>,
    #[serde(default)]
    backoff: Option<String>,
    #[serde(default)]
    backoff_max: Option<String>,
    #[serde(default)]
    budget_percent: Option<f64>,
    #[serde(default)]
    budget_min_per_second: Option<u32>,
    #[serde(default)]
    budget_window: Option<String>,
    #[serde(default)]
    idempotency_key: Option<bool>,
}

fn at_least_one(cx: &mut Ctx<'_>, key: String, v: Option<u32>, default: u32) -> u32 {
    match v {
        Some(0) => {
            cx.err(key, "must be more than zero");
            default
        }
        Some(n) => n,
        None => default,
    }
}

pub(crate) fn parse_breaker(cx: &mut Ctx<'_>, upstream: &str, b: RawBreaker) -> BreakerConfig {
    let key = |k: &str| format!("{upstream}.breaker.{k}");
    let failure_ratio = match b.failure_ratio {
        None => 0.5,
        Some(r) if r > 0.0 && r <= 1.0 => r,
        Some(_) => {
            cx.err(key("failure_ratio"), "must be more than 0 and at most 1");
            0.5
        }
    };
    BreakerConfig {
        consecutive_failures: at_least_one(
            cx,
            key("consecutive_failures"),
            b.consecutive_failures,
            5,
        ),
        failure_ratio,
        window: cx.duration(&key("window"), b.window, Duration::from_secs(10)),
        min_requests: at_least_one(cx, key("min_requests"), b.min_requests, 20),
        open_duration: cx.duration(
            &key("open_duration"),
            b.open_duration,
            Duration::from_secs(5),
        ),
        half_open_probes: at_least_one(cx, key("half_open_probes"), b.half_open_probes, 1),
    }
}

pub(crate) fn parse_retry(cx: &mut Ctx<'_>, upstream: &str, r: RawRetry) -> RetryConfig {
    let key = |k: &str| format!("{upstream}.retry.{k}");
    let statuses = r.statuses.unwrap_or_else(|| vec![502, 503, 504]);
    if let Some(s) = statuses.iter().find(|s| !(500..=599).contains(*s)) {
        cx.err(
            key("statuses"),
            format!("{s} is not a server error: only 5xx answers are retried"),
        );
    }
    let mut on = Vec::new();
    for (i, word) in
        r.on.unwrap_or_else(|| vec!["connect".into(), "reset".into()])
            .iter()
            .enumerate()
    {
        match word.as_str() {
            "connect" => on.push(RetryOn::Connect),
            "timeout" => on.push(RetryOn::Timeout),
            "reset" => on.push(RetryOn::Reset),
            other => cx.err(
                format!("{}[{i}]", key("on")),
                format!("\"{other}\" is not a failure: use \"connect\", \"timeout\" or \"reset\""),
            ),
        }
    }
    let backoff = cx.duration(&key("backoff"), r.backoff, Duration::from_millis(25));
    let backoff_max = cx.duration(
        &key("backoff_max"),
        r.backoff_max,
        Duration::from_millis(250),
    );
    if backoff_max < backoff {
        cx.err(key("backoff_max"), "must not be shorter than backoff");
    }
    let percent = match r.budget_percent {
        None => 20.0,
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(_) => {
            cx.err(key("budget_percent"), "must be between 0 and 100");
            20.0
        }
    };
    let attempts = match r.attempts {
        None => 2,
        Some(n @ 1..=10) => n,
        Some(_) => {
            cx.err(key("attempts"), "must be between 1 and 10");
            2
        }
    };
    RetryConfig {
        attempts,
        statuses,
        on,
        backoff,
        backoff_max,
        budget: RetryBudgetConfig {
            percent,
            min_per_second: r.budget_min_per_second.unwrap_or(10),
            window: cx.duration(
                &key("budget_window"),
                r.budget_window,
                Duration::from_secs(10),
            ),
        },
        idempotency_key: r.idempotency_key.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
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
name = "didit"
url = "https://verification.didit.me"
"#;

    fn dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["gw.crt", "gw.key", "bundle.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        dir
    }

    fn parse_in(dir: &Path, extra: &str) -> Result<crate::Config, Vec<String>> {
        let file = dir.join("idgate.toml");
        crate::parse(&file, &format!("{BASE}\n{extra}")).map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {}: {}", e.file.display(), e.key, e.reason))
                .collect()
        })
    }

    #[test]
    fn left_out_means_no_breaker_and_no_retries() {
        let d = dir();
        let c = parse_in(d.path(), "").unwrap();
        assert!(c.upstreams[0].breaker.is_none());
        assert!(c.upstreams[0].retry.is_none());
    }

    #[test]
    fn defaults_and_set_values() {
        let d = dir();
        let c = parse_in(
            d.path(),
            "[upstreams.breaker]\nconsecutive_failures = 3\nopen_duration = \"2s\"\n\n[upstreams.retry]\nattempts = 3\non = [\"connect\", \"timeout\"]\n",
        )
        .unwrap();
        let b = c.upstreams[0].breaker.clone().unwrap();
        assert_eq!(b.consecutive_failures, 3);
        assert_eq!(b.open_duration, Duration::from_secs(2));
        assert_eq!(b.min_requests, 20);
        assert_eq!(b.half_open_probes, 1);
        let r = c.upstreams[0].retry.clone().unwrap();
        assert_eq!(r.attempts, 3);
        assert_eq!(r.statuses, vec![502, 503, 504]);
        assert_eq!(r.on, vec![RetryOn::Connect, RetryOn::Timeout]);
        assert_eq!(r.budget.percent, 20.0);
    }

    #[test]
    fn endpoints_share_scheme_and_base_path_and_url_stays_the_one_endpoint_form() {
        let d = dir();
        let base = BASE.replace("url = \"https://verification.didit.me\"\n", "");
        let with = |extra: &str| {
            let file = d.path().join("idgate.toml");
            crate::parse(&file, &format!("{base}{extra}")).map_err(|e| {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.reason))
                    .collect::<Vec<_>>()
            })
        };
        let c = with("endpoints = [\"https://a.example/v1\", \"https://b.example:8443/v1/\"]\n[upstreams.health]\npath = \"/healthz\"\n").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.endpoints.len(), 2);
        assert_eq!(u.origin, u.endpoints[0]);
        assert_eq!(u.base_path, "/v1");
        let h = u.health.clone().unwrap();
        assert_eq!(
            (h.interval, h.timeout, h.expected_status),
            (Duration::from_secs(5), Duration::from_secs(2), 200)
        );

        let e =
            with("endpoints = [\"https://a.example/v1\", \"https://b.example/v2\"]\n").unwrap_err();
        assert!(
            e.iter().any(|e| e
                .starts_with("upstreams[0].endpoints[1]: every endpoint must have the same path")),
            "{e:?}"
        );
        let e = with("endpoints = [\"https://a.example\", \"http://127.0.0.1:1\"]\n").unwrap_err();
        assert!(
            e.iter().any(|e| e.starts_with(
                "upstreams[0].endpoints[1]: every endpoint must have the same scheme"
            )),
            "{e:?}"
        );
        let e = with(
            "url = \"https://a.example\"\nrequest_timeout = \"1s\"\nfirst_byte_timeout = \"2s\"\n",
        )
        .unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.starts_with("upstreams[0].first_byte_timeout: must not be longer")),
            "{e:?}"
        );
        let e = with("endpoints = []\n").unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.starts_with("upstreams[0].endpoints: must name")),
            "{e:?}"
        );
        let e = with("").unwrap_err();
        assert!(
            e.iter().any(|e| e.starts_with("upstreams[0].url: missing")),
            "{e:?}"
        );
        let e =
            with("url = \"https://a.example\"\nendpoints = [\"https://b.example\"]\n").unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.starts_with("upstreams[0].endpoints: give either")),
            "{e:?}"
        );
        let e = with("url = \"https://a.example\"\n[upstreams.health]\npath = \"healthz\"\ninterval = \"1s\"\ntimeout = \"2s\"\n").unwrap_err();
        assert!(
            e.iter().any(|e| e.starts_with("upstreams[0].health.path")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("upstreams[0].health.timeout")),
            "{e:?}"
        );
    }

    #[test]
    fn each_problem_is_named_by_file_and_key() {
        let d = dir();
        let errors = parse_in(
            d.path(),
            "[upstreams.breaker]\nfailure_ratio = 1.5\nhalf_open_probes = 0\nwindow = \"soon\"\n\n[upstreams.retry]\nstatuses = [404]\non = [\"always\"]\nbudget_percent = 120.0\nbackoff = \"1s\"\nbackoff_max = \"10ms\"\n",
        )
        .unwrap_err();
        let file = d.path().join("idgate.toml");
        for key in [
            "upstreams[0].breaker.failure_ratio",
            "upstreams[0].breaker.half_open_probes",
            "upstreams[0].breaker.window",
            "upstreams[0].retry.statuses",
            "upstreams[0].retry.on[0]",
            "upstreams[0].retry.budget_percent",
            "upstreams[0].retry.backoff_max",
        ] {
            let prefix = format!("{}: {key}: ", file.display());
            assert!(
                errors.iter().any(|e| e.starts_with(&prefix)),
                "{key} not in {errors:#?}"
            );
        }
    }
}
