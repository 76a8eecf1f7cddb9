//! A latency histogram that every request can feed: observing is two relaxed atomic
//! additions, with no lock (prometheus-client's own histogram takes a mutex per
//! observation, which the workers would contend on for a busy route) and no allocation.
//! The buckets are fixed, from 0.5 ms to 30 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// The buckets' upper bounds, in microseconds: from a fast local answer to the longest
/// request timeout worth telling apart.
pub const BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// One observation is counted as at most this long (about 12 days), so that the sum cannot
/// wrap whatever a clock says.
const LONGEST_US: u64 = 1 << 40;

/// Observations per bucket (not cumulative; the last bucket is everything above 30 s) and
/// their sum in microseconds. A clone shares them, so that a route can keep its histogram.
#[derive(Debug, Default, Clone)]
pub struct Latency(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros())
            .unwrap_or(LONGEST_US)
            .min(LONGEST_US);
        // The first bucket whose bound is at least `us`: a bucket counts what is `le` it.
        let i = BOUNDS_US.partition_point(|&bound| bound < us);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BOUNDS_US.len() + 1];
        let mut count = 0;
        for (i, (bucket, slot)) in self.0.buckets.iter().zip(&mut buckets).enumerate() {
            slot.1 = bucket.load(Ordering::Relaxed);
            count += slot.1;
            if let Some(&bound) = BOUNDS_US.get(i) {
                slot.0 = bound as f64 / 1e6;
            }
        }
        // The count is the buckets' total, so that `+Inf` always equals `_count` even while
        // requests are observed during the scrape; the sum may be an observation ahead.
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(latency: Latency) -> String {
        let mut registry = Registry::default();
        registry.register("took", "help", latency);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn each_observation_lands_in_the_first_bucket_that_holds_it() {
        let latency = Latency::default();
        for us in [0, 500, 501, 1_000, 29_999_999, 30_000_000, 30_000_001] {
            latency.observe(Duration::from_micros(us));
        }
        latency.observe(Duration::MAX);
        let text = text(latency);
        let value = |le: &str| -> u64 {
            let prefix = format!("took_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
                .parse()
                .unwrap()
        };
        // Cumulative: 0 and 500 µs are ≤ 0.5 ms; 501 µs and 1 ms ≤ 1 ms; ≤ 30 s holds two
        // more; two are above it.
        assert_eq!(value("0.0005"), 2, "{text}");
        assert_eq!(value("0.001"), 4, "{text}");
        assert_eq!(value("10.0"), 4, "{text}");
        assert_eq!(value("30.0"), 6, "{text}");
        assert_eq!(value("+Inf"), 8, "{text}");
        assert!(text.contains("took_count 8\n"), "{text}");
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("took_sum "))
            .unwrap()
            .parse()
            .unwrap();
        let expected = (2_001 + 29_999_999 + 30_000_000 + 30_000_001 + LONGEST_US) as f64 / 1e6;
        assert!((sum - expected).abs() < 1e-3, "{sum} vs {expected}");
        assert!(text.contains("# TYPE took histogram"), "{text}");
    }
}
