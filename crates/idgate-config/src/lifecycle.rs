//! `[lifecycle]`: how the gateway stops. On SIGTERM it reports not ready at once, keeps
//! accepting for `drain_delay` (so that a load balancer polling `/readyz` stops sending
//! before connections are refused), then stops accepting and gives the requests in flight
//! up to `drain_timeout` to finish.

use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;
use crate::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Between `/readyz` turning false and the listener closing; zero closes it at once.
    pub drain_delay: Duration,
    /// How long requests in flight get once the listener has closed.
    pub drain_timeout: Duration,
}

impl Default for LifecycleConfig {
    /// No delay: without a load balancer polling `/readyz` there is nobody to wait for (a
    /// deployment behind one sets it to a probe period or two). Twenty seconds of drain fits
    /// in Kubernetes' default grace period of thirty, with a delay of up to five.
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLifecycle {
    #[serde(default)]
    drain_delay: Option<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
}

pub(crate) fn parse(cx: &mut Ctx<'_>, raw: RawLifecycle) -> LifecycleConfig {
    let default = LifecycleConfig::default();
    // Zero is a choice here (no load balancer in front): not refused like other durations.
    let drain_delay = match raw.drain_delay {
        None => default.drain_delay,
        Some(s) => parse_duration(&s).unwrap_or_else(|e| {
            cx.err("lifecycle.drain_delay", e.to_string());
            default.drain_delay
        }),
    };
    let drain_timeout = cx.duration(
        "lifecycle.drain_timeout",
        raw.drain_timeout,
        default.drain_timeout,
    );
    LifecycleConfig {
        drain_delay,
        drain_timeout,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    fn load(section: &str) -> Result<crate::Config, crate::ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        for f in ["svid.pem", "svid.key", "bundle.pem"] {
            std::fs::write(dir.path().join(f), b"placeholder").unwrap();
        }
        let text = format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n[identity]\nsvid_cert = \"svid.pem\"\nsvid_key = \"svid.key\"\n[[identity.trust_bundles]]\ntrust_domain = \"example.org\"\nbundle = \"bundle.pem\"\n{section}"
        );
        let file = dir.path().join("idgate.toml");
        std::fs::write(&file, text).unwrap();
        crate::load(&file)
    }

    #[test]
    fn defaults_and_settings() {
        let c = load("").unwrap();
        assert_eq!(c.lifecycle.drain_delay, Duration::ZERO);
        assert_eq!(c.lifecycle.drain_timeout, Duration::from_secs(20));
        let c = load("[lifecycle]\ndrain_delay = \"0s\"\ndrain_timeout = \"45s\"").unwrap();
        assert_eq!(c.lifecycle.drain_delay, Duration::ZERO);
        assert_eq!(c.lifecycle.drain_timeout, Duration::from_secs(45));
        let c = load("[lifecycle]\ndrain_delay = \"5s\"").unwrap();
        assert_eq!(c.lifecycle.drain_delay, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let errors =
            load("[lifecycle]\ndrain_delay = \"soon\"\ndrain_timeout = \"0s\"\nlinger = 1")
                .unwrap_err();
        let keys: Vec<_> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.iter().any(|k| k.starts_with("lifecycle")), "{keys:?}");
        let errors =
            load("[lifecycle]\ndrain_delay = \"soon\"\ndrain_timeout = \"0s\"").unwrap_err();
        let keys: Vec<_> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["lifecycle.drain_delay", "lifecycle.drain_timeout"]);
    }
}
