//! Incident detection's counters, for the gateway to register on its registry: the
//! incidents open now, those opened (by rule and severity, fixed words of the gateway's),
//! and what the store and the notifier could not do.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpenedLabels {
    pub(crate) rule: &'static str,
    pub(crate) severity: &'static str,
}

/// Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct IncidentMetrics {
    /// Incidents open or recovering.
    pub(crate) open: Gauge,
    pub(crate) opened: Family<OpenedLabels, Counter>,
    /// Incident changes that could not be written to the store.
    pub(crate) store_errors: Counter,
    /// Files in the incidents directory that did not read as incidents at start.
    pub(crate) store_unreadable: Counter,
    /// Notifications dropped because the queue was full.
    pub(crate) notify_dropped: Counter,
    /// Notifications given up after every attempt.
    pub(crate) notify_failed: Counter,
    /// Notifications still queued or being sent when the gateway stopped.
    pub(crate) notify_unsent: Counter,
}

impl IncidentMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "incidents_open",
            "Incidents open or recovering",
            self.open.clone(),
        );
        r.register(
            "incidents_opened",
            "Incidents opened, by rule and severity",
            self.opened.clone(),
        );
        r.register(
            "incident_store_errors",
            "Incident changes that could not be written to the incidents directory",
            self.store_errors.clone(),
        );
        r.register(
            "incident_files_unreadable",
            "Files in the incidents directory skipped at start: they did not read as incidents",
            self.store_unreadable.clone(),
        );
        r.register(
            "incident_notifications_dropped",
            "Incident notifications dropped: the notification queue was full",
            self.notify_dropped.clone(),
        );
        r.register(
            "incident_notifications_failed",
            "Incident notifications given up after every attempt",
            self.notify_failed.clone(),
        );
        r.register(
            "incident_notifications_unsent",
            "Incident notifications still queued or being sent when the gateway stopped",
            self.notify_unsent.clone(),
        );
    }
}
