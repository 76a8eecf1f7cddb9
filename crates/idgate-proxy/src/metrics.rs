//! Prometheus metrics, on an explicit registry served by the admin listener at `/metrics`.
//! Labels are route names, status codes and credential labels from the configuration —
//! never anything a caller sends, never a secret.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A label value shared with the configuration (a route or credential name, a version), so
/// counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialUse {
    credential: RouteLabel,
    version: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabel {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReason {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    auth_failures: Family<ReasonLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    credential_uses: Family<CredentialUse, Counter>,
    credential_failures: Family<CredentialLabel, Counter>,
    credential_rotations: Family<CredentialLabel, Counter>,
    upstream_saturated: Family<UpstreamReason, Counter>,
    send_timeouts: Family<KindLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("idgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let credential_uses = Family::<CredentialUse, Counter>::default();
        registry.register(
            "upstream_credential_uses",
            "Uses of each upstream credential, by label and version",
            credential_uses.clone(),
        );
        let credential_failures = Family::<CredentialLabel, Counter>::default();
        registry.register(
            "upstream_credential_failures",
            "Requests for which an upstream credential could not be produced",
            credential_failures.clone(),
        );
        let credential_rotations = Family::<CredentialLabel, Counter>::default();
        registry.register(
            "upstream_credential_rotations",
            "New versions of upstream credentials taken into use",
            credential_rotations.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed authentication attempts (wrong credentials), by reason",
            auth_failures.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, by the limit that refused them",
            connections_refused.clone(),
        );
        let upstream_saturated = Family::<UpstreamReason, Counter>::default();
        registry.register(
            "upstream_saturated",
            "Requests refused because every connection to the upstream was busy, by upstream and reason (queue_full, queue_timeout)",
            upstream_saturated.clone(),
        );
        let send_timeouts = Family::<KindLabel, Counter>::default();
        registry.register(
            "send_timeouts",
            "Responses the caller stopped reading for send_timeout: connections closed (connection), HTTP/2 streams reset (stream)",
            send_timeouts.clone(),
        );
        registry.register(
            "request_id_random_failures",
            "Times the system random source failed to seed request ids (they fall back to the clock)",
            crate::request_id::random_failures(),
        );
        Self {
            registry,
            upstream_saturated,
            send_timeouts,
            auth_failures,
            connections_refused,
            requests,
            credential_uses,
            credential_failures,
            credential_rotations,
        }
    }

    pub fn request(&self, route: &Arc<str>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: RouteLabel(route.clone()),
                status,
            })
            .inc();
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn upstream_saturated(&self, upstream: &str, reason: &'static str) {
        self.upstream_saturated
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn send_timed_out(&self, kind: &'static str) {
        self.send_timeouts.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn credential_used(&self, label: &Arc<str>, version: &Arc<str>) {
        self.credential_uses
            .get_or_create(&CredentialUse {
                credential: RouteLabel(label.clone()),
                version: RouteLabel(version.clone()),
            })
            .inc();
    }

    pub fn credential_failed(&self, label: &str) {
        self.credential_failures
            .get_or_create(&CredentialLabel {
                credential: label.to_owned(),
            })
            .inc();
    }

    pub fn credential_rotated(&self, label: &str) {
        self.credential_rotations
            .get_or_create(&CredentialLabel {
                credential: label.to_owned(),
            })
            .inc();
    }

    /// Counts the access-log lines dropped because its writer fell behind.
    pub fn count_access_log_drops(&mut self, dropped: Counter) {
        self.registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the log output did not keep up",
            dropped,
        );
    }

    /// Counts the audit trail's queue: its depth, the records it lost, the requests refused
    /// because it was full (by the route's policy) and its failed writes.
    pub fn count_audit(&mut self, audit: &idgate_audit::AuditMetrics) {
        let r = &mut self.registry;
        r.register(
            "audit_queue_depth",
            "Audit records waiting to be written",
            audit.depth.clone(),
        );
        r.register(
            "audit_records_dropped",
            "Audit records lost: refused requests or connections past the queue's unreserved places, records after the trail closed, writes that failed at exit (the trail itself counts them in `dropped` entries)",
            audit.dropped.clone(),
        );
        r.sub_registry_with_label(("policy".into(), "block".into()))
            .register(
                "audit_refused",
                "Requests refused with 503 because the audit queue had no place for their record, by the route's on_audit_full",
                audit.refused_block.clone(),
            );
        r.sub_registry_with_label(("policy".into(), "fail_closed".into()))
            .register(
                "audit_refused",
                "Requests refused with 503 because the audit queue had no place for their record, by the route's on_audit_full",
                audit.refused_fail_closed.clone(),
            );
        r.register(
            "audit_write_errors",
            "Writes or syncs of audit files that failed (a failed write is retried; requests are refused as the queue fills)",
            audit.write_errors.clone(),
        );
    }

    /// The registry, for the metrics a module owns (see `limit_state`).
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Rotations of upstream credentials are counted per credential label.
impl idgate_secrets::credential::Rotations for Metrics {
    fn credential_rotated(&self, label: &str) {
        Metrics::credential_rotated(self, label);
    }
}
