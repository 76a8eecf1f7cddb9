//! The JWT bundles the SPIFFE Workload API streams, put into the store every snapshot's
//! `jwt_svid` layer verifies with (see [`crate::snapshot::Shared`]).

use std::sync::Arc;

use idgate_auth::jwt_svid::{JwtBundleStore, JwtBundles};
use idgate_tls::workload::{JwtBundleSet, WorkloadStatus};
use tokio::sync::watch;

/// Keeps `store` at the bundle set the agent sent last, until the stream's sender is gone.
/// A set that cannot be used is refused whole (one trust domain's bad bundle must not
/// silently drop it), counted, and logged; the bundles in use stay.
pub(crate) async fn feed_jwt_bundles(
    mut updates: watch::Receiver<Option<Arc<JwtBundleSet>>>,
    store: JwtBundleStore,
    status: Arc<WorkloadStatus>,
) {
    loop {
        let latest = updates.borrow_and_update().clone();
        if let Some(set) = latest {
            apply(&set, &store, &status);
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

fn apply(set: &JwtBundleSet, store: &JwtBundleStore, status: &WorkloadStatus) {
    match JwtBundles::parse(set.iter().map(|(td, json)| (td.clone(), json.as_slice()))) {
        Ok(bundles) => {
            tracing::info!(
                trust_domains = bundles.len(),
                "JWT bundles from the SPIFFE Workload API in use"
            );
            store.set(bundles);
        }
        Err(e) => {
            status.record_refused();
            tracing::warn!(
                error = %e,
                "JWT bundles from the SPIFFE Workload API refused; the ones in use stay"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idgate_tls::TrustDomain;

    #[test]
    fn a_bad_bundle_refuses_the_whole_set_and_the_one_in_use_stays() {
        let store = JwtBundleStore::default();
        let status = WorkloadStatus::default();
        let td = |s: &str| TrustDomain::new(s).unwrap();
        let mut good = JwtBundleSet::new();
        good.insert(td("example.org"), br#"{"keys":[]}"#.to_vec());
        good.insert(td("partner.test"), br#"{"keys":[]}"#.to_vec());
        apply(&good, &store, &status);
        assert_eq!(store.load().len(), 2);

        let mut bad = good.clone();
        bad.insert(td("partner.test"), b"not json".to_vec());
        apply(&bad, &store, &status);
        assert_eq!(store.load().len(), 2, "the previous set stays");
        assert_eq!(status.refused_updates(), 1);

        let mut fewer = JwtBundleSet::new();
        fewer.insert(td("example.org"), br#"{"keys":[]}"#.to_vec());
        apply(&fewer, &store, &status);
        assert_eq!(
            store.load().len(),
            1,
            "a trust domain the agent drops is dropped"
        );
    }
}
