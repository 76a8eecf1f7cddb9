//! What a route does when its upstream fails, and the faults it injects for resilience
//! rehearsals: a route's `fallback` (the last good answer, cached encrypted), `failover`
//! (a secondary upstream) and `faults` (delays and aborts); the `[fallback]` section that
//! holds the cache's key and bounds, and the `[testing]` section without which no route may
//! inject a fault.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::Method;
use idgate_secrets::SecretRef;
use serde::Deserialize;

use crate::context::Ctx;

/// `[fallback]`: the key that encrypts cached answers, and how much the cache may hold.
#[derive(Debug, Clone)]
pub struct FallbackConfig {
    /// An AES-256 key: 32 bytes in base64 or hex (`env:`, `file:`, `vault:`, `pkcs11:`).
    pub key: SecretRef,
    /// The most answers the cache holds; past it, the caller holding the most entries
    /// gives way, its oldest entry first.
    pub max_entries: usize,
    /// The most bytes (encrypted answers) the cache holds; past it, the caller holding the
    /// most bytes gives way, its oldest entry first.
    pub max_total_bytes: u64,
}

/// `[testing]`: switches for rehearsals, never for production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestingConfig {
    /// Whether routes may inject faults (`faults`).
    pub fault_injection: bool,
}

/// A route's answers when its upstream fails, and the faults it injects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteResilience {
    /// Serve the caller's last good answer when the upstream fails (GET and HEAD routes).
    pub cache: Option<FallbackCache>,
    /// The secondary upstream (index into `Config::upstreams`) a failed request may go to.
    pub failover: Option<usize>,
    /// Delays and aborts injected before forwarding (only with `[testing] fault_injection`).
    pub faults: Option<Faults>,
}

impl RouteResilience {
    /// Whether the route asks for none of it.
    pub fn is_empty(&self) -> bool {
        self.cache.is_none() && self.failover.is_none() && self.faults.is_none()
    }
}

/// `fallback = { cache = true, max_age = "10m", max_bytes = 262144 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackCache {
    /// How old a cached answer may be and still be served.
    pub max_age: Duration,
    /// The largest answer body kept (by its `Content-Length`).
    pub max_bytes: u64,
}

/// `faults = { delay = "200ms", delay_percent = 10, abort_status = 503, abort_percent = 5 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    pub delay: Duration,
    /// The share of requests delayed, in parts per million.
    pub delay_ppm: u32,
    /// The status of an injected abort (400 to 599).
    pub abort_status: u16,
    /// The share of requests aborted, in parts per million.
    pub abort_ppm: u32,
}

pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The largest `max_bytes` a route may set: an answer to cache is read whole into memory,
/// like a masked one, and sent to the caller from there.
pub(crate) const MAX_FALLBACK_BYTES: u64 = 1 << 20;
pub(crate) const DEFAULT_MAX_ENTRIES: usize = 10_000;
pub(crate) const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallbackSection {
    key: String,
    #[serde(default)]
    max_entries: Option<u64>,
    #[serde(default)]
    max_total_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTesting {
    #[serde(default)]
    fault_injection: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteFallback {
    cache: bool,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    delay_percent: Option<f64>,
    #[serde(default)]
    abort_status: Option<u16>,
    #[serde(default)]
    abort_percent: Option<f64>,
}

/// `[fallback]`.
pub(crate) fn section(cx: &mut Ctx<'_>, raw: RawFallbackSection) -> Option<FallbackConfig> {
    let key = match SecretRef::parse(&raw.key, cx.base) {
        Ok(r) => {
            cx.secret_available("fallback.key", &r);
            Some(r)
        }
        Err(e) => {
            cx.err("fallback.key", e.to_string());
            None
        }
    };
    let max_entries = match raw.max_entries {
        None => DEFAULT_MAX_ENTRIES,
        Some(0) => {
            cx.err("fallback.max_entries", "must be more than zero");
            DEFAULT_MAX_ENTRIES
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let max_total_bytes = match raw.max_total_bytes {
        None => DEFAULT_MAX_TOTAL_BYTES,
        Some(0) => {
            cx.err("fallback.max_total_bytes", "must be more than zero");
            DEFAULT_MAX_TOTAL_BYTES
        }
        Some(n) => n,
    };
    Some(FallbackConfig {
        key: key?,
        max_entries,
        max_total_bytes,
    })
}

/// `[testing]`.
pub(crate) fn testing(raw: RawTesting) -> TestingConfig {
    TestingConfig {
        fault_injection: raw.fault_injection.unwrap_or(false),
    }
}

/// The loud word fault injection deserves, at start-up and on every reload: it is on, and
/// which routes inject faults.
pub(crate) fn fault_warning(
    testing: TestingConfig,
    routes: &[crate::RouteConfig],
) -> Option<String> {
    if !testing.fault_injection {
        return None;
    }
    let faulty: Vec<&str> = routes
        .iter()
        .filter(|r| r.resilience.faults.is_some())
        .map(|r| r.name.as_str())
        .collect();
    Some(format!(
        "FAULT INJECTION IS ON ([testing] fault_injection = true): {} delay and fail requests on purpose; never run this configuration in production",
        if faulty.is_empty() {
            "no route yet, but any route's `faults` will".to_owned()
        } else {
            format!("routes {}", faulty.join(", "))
        }
    ))
}

/// What a route's resilience settings are checked against.
pub(crate) struct Known<'a> {
    /// Upstream name → index into the valid upstreams.
    pub(crate) upstreams: &'a HashMap<&'a str, usize>,
    /// Each valid upstream's `case_insensitive_paths`, by the same index.
    pub(crate) case_insensitive: &'a [bool],
    /// Upstreams that are defined but invalid (their own errors say why).
    pub(crate) broken_upstreams: &'a HashSet<String>,
    /// Whether there is a `[fallback]` section (or a broken one, reported already).
    pub(crate) fallback: bool,
    /// `[testing] fault_injection = true`.
    pub(crate) fault_injection: bool,
}

/// A route's `fallback`, `failover` and `faults`.
pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    (fallback, failover, faults): (Option<toml::Value>, Option<String>, Option<toml::Value>),
    (methods, upstream): (&[Method], Option<usize>),
    known: &Known<'_>,
) -> RouteResilience {
    let cache = fallback
        .and_then(|v| cx.section::<RawRouteFallback>(&format!("{key}.fallback"), v))
        .and_then(|f| cache(cx, key, f, methods, known));
    let failover = failover.and_then(|name| match known.upstreams.get(name.as_str()) {
        Some(&u) if Some(u) == upstream => {
            cx.err(
                format!("{key}.failover"),
                "names the route's own upstream: a failover goes to another one",
            );
            None
        }
        // The route was chosen on the path read as its upstream reads it; a failover that
        // reads case otherwise would take the path for another one (`/users/EXPORT`, routed
        // by `/users/{id}`, is the export to an upstream that ignores case).
        Some(&u)
            if upstream.is_some_and(|p| {
                known.case_insensitive.get(p) != known.case_insensitive.get(u)
            }) =>
        {
            let reads = |u: usize| match known.case_insensitive.get(u) {
                Some(true) => "without case",
                _ => "with case",
            };
            cx.err(
                format!("{key}.failover"),
                format!(
                    "upstream \"{name}\" reads paths {} (case_insensitive_paths), the route's own upstream {}: \
                     a request routed for one would be read as another path by the other; give both the same case_insensitive_paths",
                    reads(u),
                    upstream.map_or("with case", reads),
                ),
            );
            None
        }
        Some(&u) => Some(u),
        None if known.broken_upstreams.contains(&name) => None,
        None => {
            cx.err(
                format!("{key}.failover"),
                format!("no upstream is named \"{name}\""),
            );
            None
        }
    });
    let faults = faults
        .and_then(|v| cx.section::<RawFaults>(&format!("{key}.faults"), v))
        .and_then(|f| self::faults(cx, &format!("{key}.faults"), f, known));
    RouteResilience {
        cache,
        failover,
        faults,
    }
}

fn cache(
    cx: &mut Ctx<'_>,
    key: &str,
    f: RawRouteFallback,
    methods: &[Method],
    known: &Known<'_>,
) -> Option<FallbackCache> {
    let key = format!("{key}.fallback");
    let max_age = cx.duration(&format!("{key}.max_age"), f.max_age, DEFAULT_MAX_AGE);
    let max_bytes = match f.max_bytes {
        Some(0) => {
            cx.err(format!("{key}.max_bytes"), "must be more than zero");
            DEFAULT_MAX_BYTES
        }
        Some(n) if n > MAX_FALLBACK_BYTES => {
            cx.err(
                format!("{key}.max_bytes"),
                format!(
                    "must be at most {MAX_FALLBACK_BYTES} (1 MiB): an answer to cache is held whole in memory"
                ),
            );
            DEFAULT_MAX_BYTES
        }
        other => other.unwrap_or(DEFAULT_MAX_BYTES),
    };
    if !f.cache {
        return None;
    }
    if let Some(m) = methods
        .iter()
        .find(|m| !matches!(**m, Method::GET | Method::HEAD))
    {
        cx.err(
            format!("{key}.cache"),
            format!("only a route of GET and HEAD alone may serve cached answers, and this one takes {m}"),
        );
        return None;
    }
    if !known.fallback {
        cx.err(
            format!("{key}.cache"),
            "cached answers are encrypted with the [fallback] key: add a [fallback] section with key = \"env:…\"",
        );
        return None;
    }
    Some(FallbackCache { max_age, max_bytes })
}

fn faults(cx: &mut Ctx<'_>, key: &str, f: RawFaults, known: &Known<'_>) -> Option<Faults> {
    if !known.fault_injection {
        cx.err(
            key,
            "faults are injected only in rehearsals: set [testing] fault_injection = true (never in production)",
        );
        return None;
    }
    let mut ppm = |name: &str, v: Option<f64>| match v {
        None => 0,
        Some(p) if (0.0..=100.0).contains(&p) => (p * 10_000.0).round() as u32,
        Some(_) => {
            cx.err(
                format!("{key}.{name}"),
                "must be a percentage from 0 to 100",
            );
            0
        }
    };
    let delay_ppm = ppm("delay_percent", f.delay_percent);
    let abort_ppm = ppm("abort_percent", f.abort_percent);
    let delay = match f.delay {
        None if delay_ppm > 0 => {
            cx.err(
                format!("{key}.delay"),
                "delay_percent needs a delay, like \"200ms\"",
            );
            Duration::ZERO
        }
        None => Duration::ZERO,
        Some(d) => cx.duration(&format!("{key}.delay"), Some(d), Duration::ZERO),
    };
    let abort_status = f.abort_status.unwrap_or(503);
    if !(400..=599).contains(&abort_status) {
        cx.err(
            format!("{key}.abort_status"),
            "must be an error status, from 400 to 599",
        );
    }
    Some(Faults {
        delay,
        delay_ppm,
        abort_status,
        abort_ppm,
    })
}

#[cfg(test)]
#[path = "resilience_tests.rs"]
mod tests;
