//! The exporter's counters, as prometheus-client families labelled by sink name (from the
//! configuration, never from an event), for the gateway to register on its registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// Every sink's counters. Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct SiemMetrics {
    sent: Family<SinkLabel, Counter>,
    dropped: Family<SinkLabel, Counter>,
    resent: Family<SinkLabel, Counter>,
    reconnects: Family<SinkLabel, Counter>,
    buffered_events: Family<SinkLabel, Gauge>,
    buffered_bytes: Family<SinkLabel, Gauge>,
    connected: Family<SinkLabel, Gauge>,
    invalid: Counter,
}

/// One sink's handles on the families.
#[derive(Clone, Debug)]
pub(crate) struct SinkCounters {
    pub(crate) sent: Counter,
    pub(crate) dropped: Counter,
    pub(crate) resent: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) buffered_events: Gauge,
    pub(crate) buffered_bytes: Gauge,
    pub(crate) connected: Gauge,
}

/// One sink's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Events written (a line, or a syslog frame; a frame sent again counts again).
    pub sent: u64,
    /// Events lost: a full buffer, or still buffered when shutdown ended.
    pub dropped: u64,
    /// Frames sent again after a broken connection (at-least-once delivery).
    pub resent: u64,
    /// Connections made after the first one.
    pub reconnects: u64,
    pub buffered_events: u64,
    pub buffered_bytes: u64,
    /// Whether a syslog sink has a connection up (always false for lines).
    pub connected: bool,
}

impl SiemMetrics {
    pub(crate) fn sink(&self, name: &str) -> SinkCounters {
        let l = SinkLabel {
            sink: name.to_owned(),
        };
        SinkCounters {
            sent: self.sent.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            resent: self.resent.get_or_create(&l).clone(),
            reconnects: self.reconnects.get_or_create(&l).clone(),
            buffered_events: self.buffered_events.get_or_create(&l).clone(),
            buffered_bytes: self.buffered_bytes.get_or_create(&l).clone(),
            connected: self.connected.get_or_create(&l).clone(),
        }
    }

    pub(crate) fn count_invalid(&self) {
        self.invalid.inc();
    }

    /// Events refused by `export` (empty, or holding a line break).
    pub fn invalid(&self) -> u64 {
        self.invalid.get()
    }

    /// The counters of sink `name` now.
    pub fn stats(&self, name: &str) -> SinkStats {
        let c = self.sink(name);
        let gauge = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        SinkStats {
            sent: c.sent.get(),
            dropped: c.dropped.get(),
            resent: c.resent.get(),
            reconnects: c.reconnects.get(),
            buffered_events: gauge(&c.buffered_events),
            buffered_bytes: gauge(&c.buffered_bytes),
            connected: c.connected.get() > 0,
        }
    }

    /// Registers the families on `registry` (with its prefix, `idgate_siem_…`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "siem_events_sent",
            "Audit events written by each SIEM sink (a frame sent again counts again)",
            self.sent.clone(),
        );
        registry.register(
            "siem_events_dropped",
            "Audit events a SIEM sink lost: its buffer was full, or still held them at the end of shutdown",
            self.dropped.clone(),
        );
        registry.register(
            "siem_events_resent",
            "Syslog frames sent again after a broken connection",
            self.resent.clone(),
        );
        registry.register(
            "siem_reconnects",
            "Connections a syslog sink made to its collector after the first",
            self.reconnects.clone(),
        );
        registry.register(
            "siem_buffered_events",
            "Audit events waiting in a SIEM sink's buffer",
            self.buffered_events.clone(),
        );
        registry.register(
            "siem_buffered_bytes",
            "Bytes of audit events waiting in a SIEM sink's buffer",
            self.buffered_bytes.clone(),
        );
        registry.register(
            "siem_connected",
            "Whether a syslog sink is connected to its collector (1) or not (0)",
            self.connected.clone(),
        );
        registry.register(
            "siem_events_invalid",
            "Audit events refused by the exporter: empty or holding a line break",
            self.invalid.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_families_carry_the_sink_label() {
        let m = SiemMetrics::default();
        let c = m.sink("soc");
        c.sent.inc_by(3);
        c.buffered_events.set(2);
        let mut registry = Registry::with_prefix("idgate");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("idgate_siem_events_sent_total{sink=\"soc\"} 3"),
            "{text}"
        );
        assert!(text.contains("idgate_siem_buffered_events{sink=\"soc\"} 2"));
        assert_eq!(m.stats("soc").sent, 3);
    }
}
