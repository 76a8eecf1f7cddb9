//! Prometheus metrics, on an explicit registry served by the admin listener at `/metrics`.
//! Labels are route names, status codes and credential labels from the configuration —
//! never anything a caller sends, never a secret.
//!
//! Latency histograms are [`latency::Latency`] (lock-free); the expiry of the gateway's own
//! certificates is read from its TLS material at each scrape (`metrics/certificates.rs`).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::access_log::Decision;
use certificates::Certificates;
use latency::Latency;

mod certificates;
pub mod latency;

/// A label value shared with the configuration (a route or credential name, a version), so
/// counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// A request's route, status and decision: `decision` is `allowed`, `denied` or `failed`,
/// and a refused request adds its `reason`, the problem slug (a fixed word of the gateway's
/// own, never caller data).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RequestLabels {
    route: RouteLabel,
    status: u16,
    decision: &'static str,
    reason: Option<&'static str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        ("route", &*self.route.0).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())?;
        ("decision", self.decision).encode(encoder.encode_label())?;
        match self.reason {
            Some(reason) => ("reason", reason).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOnly {
    upstream: RouteLabel,
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

/// A family's counter for the labels its holder counted last, with the labels' key: the
/// credential version an upstream's requests used (see [`Metrics::credential_used`]), the
/// status and decision of a route's requests. The counter is the family's own: what is
/// counted through it or through the family adds to the same series.
#[derive(Debug)]
pub struct LastUse<K = Arc<str>>(ArcSwapOption<(K, Counter)>);

impl<K> Default for LastUse<K> {
    fn default() -> Self {
        Self(ArcSwapOption::empty())
    }
}

impl<K: PartialEq + Clone> LastUse<K> {
    /// Counts one for `key`: on the kept counter when `key` was counted last, else on the
    /// family's, which `counter` gives and which is kept from then on.
    fn inc(&self, key: &K, counter: impl FnOnce() -> Counter) {
        if let Some(kept) = &*self.0.load()
            && kept.0 == *key
        {
            kept.1.inc();
            return;
        }
        let counter = counter();
        counter.inc();
        self.0.store(Some(Arc::new((key.clone(), counter))));
    }
}

/// A latency histogram of a family, kept by what it measures (a route, an upstream).
#[derive(Debug, Default)]
pub struct KeptLatency(OnceLock<Latency>);

/// A route's handles on its request metrics, taken from the families at its first request
/// and kept with the route (a reload's new routes take them again, from the same families).
#[derive(Debug, Default)]
pub struct Kept {
    latency: KeptLatency,
    /// The requests counter for the status and decision of the route's last request.
    last: LastUse<(u16, Decision)>,
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
    upstream_body_errors: Family<UpstreamReason, Counter>,
    send_timeouts: Family<KindLabel, Counter>,
    request_latency: Family<RouteOnly, Latency>,
    upstream_latency: Family<UpstreamOnly, Latency>,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// Registered with the audit trail's metrics (see [`Metrics::count_audit`]).
    connection_records_summarized: Family<ReasonLabel, Counter>,
    certificates: Arc<Certificates>,
    /// 1 while the running configuration has `[testing] fault_injection = true`.
    pub fault_injection: prometheus_client::metrics::gauge::Gauge,
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
            "Requests answered, by route, status and decision (allowed, denied or failed, with the problem slug as reason)",
            requests.clone(),
        );
        let request_latency = Family::<RouteOnly, Latency>::default();
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            request_latency.clone(),
        );
        let upstream_latency = Family::<UpstreamOnly, Latency>::default();
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to the upstream's response head, by upstream",
            upstream_latency.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the listener that failed, by reason",
            tls_handshake_failures.clone(),
        );
        // Every reason from the start, so that a rate over the first failure is not lost.
        for reason in idgate_tls::HandshakeFailure::ALL {
            drop(tls_handshake_failures.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        let certificates = Arc::new(Certificates::default());
        registry.register_collector(Box::new(certificates.clone()));
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
        let upstream_body_errors = Family::<UpstreamReason, Counter>::default();
        registry.register(
            "upstream_body_errors",
            "Upstream response bodies that broke off after their head was passed on, by upstream and reason (reset, truncated, malformed, read_timeout, body_timeout)",
            upstream_body_errors.clone(),
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
        let fault_injection = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "fault_injection_enabled",
            "1 while the running configuration lets routes inject faults ([testing] fault_injection = true); never in production",
            fault_injection.clone(),
        );
        Self {
            registry,
            fault_injection,
            upstream_saturated,
            upstream_body_errors,
            send_timeouts,
            auth_failures,
            connections_refused,
            requests,
            credential_uses,
            credential_failures,
            credential_rotations,
            request_latency,
            upstream_latency,
            tls_handshake_failures,
            connection_records_summarized: Family::default(),
            certificates,
        }
    }

    /// Counts an answered request and how long it took to its response head. `kept` is the
    /// route's [`Kept`] (none for a request that matched no route): its histogram, and the
    /// counter of the status and decision of its last request, are used without the
    /// families' lock and label hash.
    pub fn request(
        &self,
        route: &Arc<str>,
        kept: Option<&Kept>,
        status: u16,
        decision: Decision,
        took: Duration,
    ) {
        let Some(kept) = kept else {
            self.request_latency_of(route).observe(took);
            self.requests_of(route, status, decision).inc();
            return;
        };
        kept.latency
            .0
            .get_or_init(|| self.request_latency_of(route))
            .observe(took);
        kept.last.inc(&(status, decision), || {
            self.requests_of(route, status, decision)
        });
    }

    fn request_latency_of(&self, route: &Arc<str>) -> Latency {
        self.request_latency.get_or_create_owned(&RouteOnly {
            route: RouteLabel(route.clone()),
        })
    }

    fn requests_of(&self, route: &Arc<str>, status: u16, decision: Decision) -> Counter {
        let (decision, reason) = match decision {
            Decision::Allowed => ("allowed", None),
            Decision::Denied(slug) => ("denied", Some(slug)),
            Decision::Failed(slug) => ("failed", Some(slug)),
            Decision::AllowedBy(reason) => ("allowed", Some(reason)),
            Decision::Undecided(reason) => ("undecided", Some(reason)),
        };
        self.requests.get_or_create_owned(&RequestLabels {
            route: RouteLabel(route.clone()),
            status,
            decision,
            reason,
        })
    }

    /// How long an upstream took to answer a request with its response head. `kept` is the
    /// upstream's own handle on its histogram, taken from the family at its first answer.
    pub fn upstream_answered(&self, upstream: &Arc<str>, kept: &KeptLatency, took: Duration) {
        kept.0
            .get_or_init(|| {
                self.upstream_latency.get_or_create_owned(&UpstreamOnly {
                    upstream: RouteLabel(upstream.clone()),
                })
            })
            .observe(took);
    }

    pub fn tls_handshake_failed(&self, why: idgate_tls::HandshakeFailure) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
    }

    /// Reports the expiry of the gateway's SVID and trust bundles, as `material` holds them
    /// at each scrape.
    pub fn certificates_of(&self, material: Arc<idgate_tls::TlsMaterial>) {
        self.certificates.watch(material);
    }

    /// Reports the state of the SPIFFE Workload API client at each scrape.
    pub fn workload_api(&self, status: Arc<idgate_tls::WorkloadStatus>) {
        self.certificates.watch_workload_api(status);
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

    /// An upstream's response body broke off after its head went to the caller (see
    /// [`crate::body::Reported`]).
    pub fn upstream_body_failed(&self, upstream: &str, reason: &'static str) {
        self.upstream_body_errors
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a refused connection counted in a summary record of the audit trail rather
    /// than recorded on its own.
    pub fn connection_record_summarized(&self, reason: &'static str) {
        self.connection_records_summarized
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn send_timed_out(&self, kind: &'static str) {
        self.send_timeouts.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts a use of the credential `label` at `version`. `last` is the upstream's
    /// [`LastUse`]: a request that uses the version the one before it used counts on the
    /// counter kept there, without the family's lock and label hash.
    pub fn credential_used(&self, last: &LastUse, label: &Arc<str>, version: &Arc<str>) {
        last.inc(version, || {
            self.credential_uses.get_or_create_owned(&CredentialUse {
                credential: RouteLabel(label.clone()),
                version: RouteLabel(version.clone()),
            })
        });
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

    /// Registers the SIEM export's counters (`idgate_siem_*`, by sink name).
    pub fn count_siem(&mut self, siem: &idgate_siem::SiemMetrics) {
        siem.register(&mut self.registry);
    }

    /// Counts the audit trail's queue: its depth, the records it lost, the requests refused
    /// because it was full (one family, by the route's policy), its failed writes, and
    /// whether its writer has stopped for good.
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
        r.register_collector(Box::new(AuditRefused {
            block: audit.refused_block.clone(),
            fail_closed: audit.refused_fail_closed.clone(),
        }));
        r.register(
            "audit_write_errors",
            "Writes or syncs of audit files that failed (a failed write is retried, and requests are refused as the queue fills; a failed sync stops the writer, see idgate_audit_halted)",
            audit.write_errors.clone(),
        );
        r.register(
            "audit_halted",
            "1 once the audit writer has stopped for good (a failed sync, an exhausted chain): every request that needs a record is refused, and /readyz and /healthz fail, until a restart",
            audit.halted.clone(),
        );
        r.register(
            "audit_connection_records_summarized",
            "Refused connections past audit.connection_records_per_second: counted in a summary record of the trail rather than recorded one by one, by reason",
            self.connection_records_summarized.clone(),
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: &'static str,
}

/// `idgate_audit_refused_total{policy}`: the trail keeps a counter per policy, and a family
/// may be described once in an exposition, so both are written under one descriptor.
#[derive(Debug)]
struct AuditRefused {
    block: Counter,
    fail_closed: Counter,
}

impl prometheus_client::collector::Collector for AuditRefused {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let mut family = encoder.encode_descriptor(
            "audit_refused",
            "Requests refused with 503 because the audit queue had no place for their record, by the route's on_audit_full",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (policy, counter) in [("block", &self.block), ("fail_closed", &self.fail_closed)] {
            counter.encode(family.encode_family(&PolicyLabel { policy })?)?;
        }
        Ok(())
    }
}

/// Rotations of upstream credentials are counted per credential label.
impl idgate_secrets::credential::Rotations for Metrics {
    fn credential_rotated(&self, label: &str) {
        Metrics::credential_rotated(self, label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_decision_with_the_reason_only_when_refused() {
        let metrics = Metrics::new();
        let route: Arc<str> = "create-session".into();
        let ms = Duration::from_millis(3);
        // The route's kept handles, a reloaded route's new ones and the families alike add
        // to the same series.
        let (kept, reloaded) = (Kept::default(), Kept::default());
        let timeout = Decision::Failed("upstream-timeout");
        for (kept, status, decision) in [
            (Some(&kept), 201, Decision::Allowed),
            (Some(&kept), 201, Decision::Allowed),
            (Some(&kept), 403, Decision::Denied("forbidden")),
            (Some(&reloaded), 201, Decision::Allowed),
            (None, 403, Decision::Denied("forbidden")),
            (Some(&kept), 504, timeout),
            (Some(&kept), 504, timeout),
            (Some(&kept), 504, Decision::Failed("other")),
        ] {
            metrics.request(&route, kept, status, decision, ms);
        }
        let text = metrics.encode();
        for line in [
            r#"idgate_requests_total{route="create-session",status="201",decision="allowed"} 3"#,
            r#"idgate_requests_total{route="create-session",status="403",decision="denied",reason="forbidden"} 2"#,
            r#"idgate_requests_total{route="create-session",status="504",decision="failed",reason="upstream-timeout"} 2"#,
            r#"idgate_requests_total{route="create-session",status="504",decision="failed",reason="other"} 1"#,
            r#"idgate_request_duration_seconds_count{route="create-session"} 8"#,
            r#"idgate_request_duration_seconds_bucket{le="0.0025",route="create-session"} 0"#,
            r#"idgate_request_duration_seconds_bucket{le="0.005",route="create-session"} 8"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn metrics_exposition_has_one_type_line_per_family() {
        // The gateway's registry with every optional part counted: the audit trail, the
        // SIEM export, incident detection, reloads, its certificates and the Workload API.
        let mut services = crate::service::Services::default();
        let audit = idgate_audit::AuditMetrics::default();
        audit.refused_block.inc();
        audit.refused_fail_closed.inc();
        audit.refused_fail_closed.inc();
        let Some(metrics) = Arc::get_mut(&mut services.metrics) else {
            panic!("the metrics are shared before the gateway starts");
        };
        metrics.count_audit(&audit);
        let siem = idgate_siem::SiemMetrics::default();
        metrics.count_siem(&siem);
        // A family without a series is not described at all: give each one.
        let _ = siem.stats("collector");
        idgate_incidents::IncidentMetrics::default().register(metrics.registry_mut());
        let reloads = crate::reload::ReloadMetrics::new();
        reloads.register(metrics.registry_mut());
        reloads.record(crate::reload::Outcome::Applied);
        metrics.certificates_of(Arc::new(idgate_tls::TlsMaterial::pending(
            idgate_tls::crypto_provider(),
        )));
        metrics.workload_api(Arc::new(idgate_tls::WorkloadStatus::default()));
        let route: Arc<str> = "create-session".into();
        metrics.request(&route, None, 201, Decision::Allowed, Duration::ZERO);
        metrics.auth_failed("invalid-token");
        metrics.connection_refused("per_ip");
        metrics.upstream_saturated("kyc", "queue_full");
        metrics.send_timed_out("stream");
        metrics.credential_used(&LastUse::default(), &route, &route);
        metrics.credential_failed("didit");
        metrics.credential_rotated("didit");
        let limits = &services.limit_metrics;
        limits.rate_limited(&route, &route);
        limits.locked_out("source");
        limits.lockout_refused("source");
        services
            .state_errors
            .failed(limits, "ownership", "redis", &"unreachable");
        let metrics = &services.metrics;
        let text = metrics.encode();
        let mut families = std::collections::BTreeMap::<&str, usize>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or(rest);
                *families.entry(name).or_default() += 1;
            }
        }
        let twice: Vec<_> = families.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "families described twice: {twice:?}\n{text}"
        );
        for family in [
            "idgate_audit_refused",
            "idgate_siem_events_sent",
            "idgate_incidents_open",
            "idgate_config_reloads",
            "idgate_workload_api_connected",
            "idgate_state_errors",
            "idgate_requests",
            "idgate_upstream_credential_uses",
        ] {
            assert_eq!(families.get(family), Some(&1), "{family} in\n{text}");
        }
        for line in [
            r#"idgate_audit_refused_total{policy="block"} 1"#,
            r#"idgate_audit_refused_total{policy="fail_closed"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_handshake_failure_reason_is_there_from_the_start() {
        let metrics = Metrics::new();
        metrics.tls_handshake_failed(idgate_tls::HandshakeFailure::UnknownCa);
        let text = metrics.encode();
        for reason in idgate_tls::HandshakeFailure::ALL {
            let n = u8::from(reason == idgate_tls::HandshakeFailure::UnknownCa);
            let line = format!(
                "idgate_tls_handshake_failures_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // No material given: no certificate series, and no descriptor without samples.
        assert!(!text.contains("certificate_expiry"), "{text}");
    }

    #[test]
    fn credential_uses_count_each_version_through_the_kept_counter_and_the_family_alike() {
        let metrics = Metrics::new();
        let label: Arc<str> = "didit".into();
        let (v1, v2): (Arc<str>, Arc<str>) = ("v1".into(), "v2".into());
        let (route_a, route_b) = (LastUse::default(), LastUse::default());
        metrics.credential_used(&route_a, &label, &v1);
        metrics.credential_used(&route_a, &label, &v1);
        // Another upstream with the same credential and version adds to the same series.
        metrics.credential_used(&route_b, &label, &v1);
        // A rotation: the new version gets its own series, the old one keeps its count.
        metrics.credential_used(&route_a, &label, &v2);
        metrics.credential_used(&route_a, &label, &v2);
        // An equal version text from another allocation is the same version.
        metrics.credential_used(&route_a, &label, &Arc::from("v2"));
        let text = metrics.encode();
        for line in [
            r#"idgate_upstream_credential_uses_total{credential="didit",version="v1"} 3"#,
            r#"idgate_upstream_credential_uses_total{credential="didit",version="v2"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
