//! The deliverer's metrics, registered in the gateway's registry: attempts by outcome, and
//! the outbox's depth by state, per webhook and subscriber (names from the configuration).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    webhook: String,
    subscriber: String,
    /// `delivered`, `retried` or `dead`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Depth {
    webhook: String,
    subscriber: String,
    /// `ready`, `waiting`, `leased`, `dead` or `delivered` (kept for their retention).
    state: &'static str,
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The subscriber answered 2xx.
    Delivered,
    /// It will be tried again.
    Retried,
    /// A dead letter now: refused for good, or too old to try again.
    Dead,
}

impl Attempt {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Dead => "dead",
        }
    }
}

/// How many messages a subscriber's queues hold, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depths {
    pub ready: u64,
    pub waiting: u64,
    pub leased: u64,
    pub dead: u64,
    pub delivered: u64,
}

/// The webhook metrics. Cheap to clone: clones count into the same families.
#[derive(Debug, Clone, Default)]
pub struct DeliveryMetrics {
    attempts: Family<Outcome, Counter>,
    depth: Family<Depth, Gauge>,
}

impl DeliveryMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by webhook, subscriber and outcome (delivered, retried, dead)",
            metrics.attempts.clone(),
        );
        registry.register(
            "webhook_outbox_messages",
            "Messages in the webhook outbox, by webhook, subscriber and state (ready, waiting, leased, dead, delivered)",
            metrics.depth.clone(),
        );
        metrics
    }

    pub fn attempt(&self, webhook: &str, subscriber: &str, outcome: Attempt) {
        self.attempts
            .get_or_create(&Outcome {
                webhook: webhook.to_owned(),
                subscriber: subscriber.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn depths(&self, webhook: &str, subscriber: &str, d: Depths) {
        for (state, n) in [
            ("ready", d.ready),
            ("waiting", d.waiting),
            ("leased", d.leased),
            ("dead", d.dead),
            ("delivered", d.delivered),
        ] {
            self.depth
                .get_or_create(&Depth {
                    webhook: webhook.to_owned(),
                    subscriber: subscriber.to_owned(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_depths_are_exposed_by_webhook_and_subscriber() {
        let mut registry = Registry::with_prefix("idgate");
        let m = DeliveryMetrics::register(&mut registry);
        m.attempt("didit", "kyc", Attempt::Delivered);
        m.attempt("didit", "kyc", Attempt::Delivered);
        m.attempt("didit", "kyc", Attempt::Dead);
        m.depths(
            "didit",
            "kyc",
            Depths {
                ready: 3,
                dead: 1,
                ..Depths::default()
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"idgate_webhook_deliveries_total{webhook="didit",subscriber="kyc",outcome="delivered"} 2"#,
            r#"idgate_webhook_deliveries_total{webhook="didit",subscriber="kyc",outcome="dead"} 1"#,
            r#"idgate_webhook_outbox_messages{webhook="didit",subscriber="kyc",state="ready"} 3"#,
            r#"idgate_webhook_outbox_messages{webhook="didit",subscriber="kyc",state="delivered"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
