//! `idgate_certificate_expiry_timestamp_seconds{kind,name}`: when the gateway's own
//! certificates stop being valid, read from the TLS material in force at each scrape, so
//! that every rotation the file watch takes into use shows at the next scrape and nothing
//! has to be told of it. Labels are a fixed kind and the gateway's own names (its SPIFFE
//! ID, a configured trust domain), never a caller's.
//!
//! With the SPIFFE Workload API, also its state: `idgate_workload_api_connected` (0 while the
//! agent is unreachable: the SVID in use then serves until it expires), the updates taken
//! and refused, and the times the stream was lost; with JWT-SVIDs verified with the agent's
//! keys, the same two for the JWT bundle stream (`idgate_workload_api_jwt_bundles_connected`,
//! `idgate_workload_api_jwt_bundles_disconnects_total`).

use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use idgate_tls::{TlsMaterial, WorkloadStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Certificate {
    /// `svid`: the certificate the listener presents; `trust_bundle`: the last CA of a
    /// trust domain's bundle to expire.
    kind: &'static str,
    /// The SVID's SPIFFE ID (`-` for a certificate without one), or the trust domain.
    name: String,
}

/// The collector: empty until the gateway hands it its material.
#[derive(Debug, Default)]
pub(crate) struct Certificates {
    material: OnceLock<Arc<TlsMaterial>>,
    workload_api: OnceLock<Arc<WorkloadStatus>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateKind {
    /// `svid`, `x509_bundles` or `jwt_bundles`.
    kind: &'static str,
}

impl Certificates {
    /// Reports the expiry of `material` from now on; the first material given stays.
    pub(crate) fn watch(&self, material: Arc<TlsMaterial>) {
        let _ = self.material.set(material);
    }

    /// Reports the state of the Workload API client from now on.
    pub(crate) fn watch_workload_api(&self, status: Arc<WorkloadStatus>) {
        let _ = self.workload_api.set(status);
    }
}

fn encode_workload_api(
    status: &WorkloadStatus,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let connected = encoder.encode_descriptor(
        "workload_api_connected",
        "Whether the SPIFFE Workload API stream is open (0: the agent is unreachable and the SVID in use serves until it expires).",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(status.connected())).encode(connected)?;
    let mut updates = encoder.encode_descriptor(
        "workload_api_updates",
        "Updates taken from the SPIFFE Workload API: new SVIDs (kind svid), changes of the trusted X.509 bundles (x509_bundles), JWT bundle sets (jwt_bundles).",
        None,
        MetricType::Counter,
    )?;
    for (kind, n) in [
        ("svid", status.svid_updates()),
        ("x509_bundles", status.bundle_updates()),
        ("jwt_bundles", status.jwt_bundle_updates()),
    ] {
        ConstCounter::new(n).encode(updates.encode_family(&UpdateKind { kind })?)?;
    }
    let refused = encoder.encode_descriptor(
        "workload_api_refused_updates",
        "SVIDs or bundles from the SPIFFE Workload API refused as unusable (a refused SVID leaves the one in use; a trust domain whose bundle is refused is no longer trusted).",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(status.refused_updates()).encode(refused)?;
    let lost = encoder.encode_descriptor(
        "workload_api_disconnects",
        "Times the SPIFFE Workload API stream could not be opened or was lost.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(status.disconnects()).encode(lost)?;
    if status.jwt_stream() {
        let connected = encoder.encode_descriptor(
            "workload_api_jwt_bundles_connected",
            "Whether the SPIFFE Workload API JWT bundle stream is open (0: JWT-SVIDs are verified with the JWT bundles taken last, and a key the agent adds or withdraws is not seen).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(status.jwt_connected())).encode(connected)?;
        let lost = encoder.encode_descriptor(
            "workload_api_jwt_bundles_disconnects",
            "Times the SPIFFE Workload API JWT bundle stream could not be opened, failed or was lost.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(status.jwt_disconnects()).encode(lost)?;
    }
    Ok(())
}

impl Collector for Certificates {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(status) = self.workload_api.get() {
            encode_workload_api(status, &mut encoder)?;
        }
        let Some(material) = self.material.get() else {
            return Ok(());
        };
        let expiry = material.expiry();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        };
        let svid = expiry.svid.and_then(|(id, t)| {
            let name = id.map_or_else(|| "-".to_owned(), |id| id.as_str().to_owned());
            Some((Certificate { kind: "svid", name }, unix(t)?))
        });
        let bundles = expiry.bundles.into_iter().filter_map(|(td, t)| {
            let name = td.as_str().to_owned();
            Some((
                Certificate {
                    kind: "trust_bundle",
                    name,
                },
                unix(t)?,
            ))
        });
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "When the gateway's certificates stop being valid (Unix seconds): its SVID (kind svid, name its SPIFFE ID) and the last CA of each trust bundle (kind trust_bundle, name the trust domain).",
            None,
            MetricType::Gauge,
        )?;
        for (labels, seconds) in svid.into_iter().chain(bundles) {
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
