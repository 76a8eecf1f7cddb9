//! The reloads' metrics: which configuration generation serves, and how the last reload
//! went.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The new configuration serves.
    Applied,
    /// It did not validate or could not be built; the running one stays.
    Refused,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `idgate_config_*`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReloadMetrics {
    generation: Gauge,
    last_success: Gauge,
    last_timestamp: Gauge<f64, AtomicU64>,
    reloads: Family<ResultLabel, Counter>,
}

impl ReloadMetrics {
    /// The configuration the process started with is generation 1, a success.
    pub(crate) fn new() -> Self {
        let m = Self::default();
        m.generation.set(1);
        m.last_success.set(1);
        m.last_timestamp.set(now_seconds());
        m
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "config_generation",
            "The configuration serving: 1 at start, one more for each reload applied",
            self.generation.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 if the last reload was applied (or none was tried since start), 0 if it was refused",
            self.last_success.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "When the last reload was tried (or the process started), in seconds since the Unix epoch",
            self.last_timestamp.clone(),
        );
        registry.register(
            "config_reloads",
            "Reloads tried, by result (applied or refused)",
            self.reloads.clone(),
        );
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        if outcome == Outcome::Applied {
            self.generation.inc();
        }
        self.last_success
            .set(i64::from(outcome == Outcome::Applied));
        self.last_timestamp.set(now_seconds());
        self.reloads
            .get_or_create(&ResultLabel {
                result: outcome.label(),
            })
            .inc();
    }
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reload_keeps_the_generation_and_says_so() {
        let m = ReloadMetrics::new();
        let mut registry = Registry::with_prefix("idgate");
        m.register(&mut registry);
        m.record(Outcome::Applied);
        m.record(Outcome::Refused);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for line in [
            "idgate_config_generation 2",
            "idgate_config_last_reload_success 0",
            "idgate_config_reloads_total{result=\"applied\"} 1",
            "idgate_config_reloads_total{result=\"refused\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        m.record(Outcome::Applied);
        assert_eq!(m.generation.get(), 3);
        assert_eq!(m.last_success.get(), 1);
    }
}
