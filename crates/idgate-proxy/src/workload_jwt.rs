//! The JWT bundles the SPIFFE Workload API streams, put into the store every snapshot's
//! `jwt_svid` layer verifies with (see [`crate::snapshot::Shared`]).

use std::sync::Arc;

use idgate_auth::jwt_svid::{JwtBundle, JwtBundleStore, JwtBundles};
use idgate_tls::workload::{JwtBundleSet, WorkloadStatus};
use tokio::sync::watch;

/// Keeps `store` at the bundle set the agent sent last, until the stream's sender is gone.
/// Each trust domain's bundle is taken or refused on its own, as the X.509 bundles are: a
/// bundle that cannot be used is counted and logged, and its trust domain is no longer
/// trusted (each set is the agent's whole word on what to trust, so the keys of the one
/// before, a key the agent has just withdrawn among them, are not kept); every other trust
/// domain takes its new bundle, withdrawals included.
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
    let mut bundles = JwtBundles::new();
    for (td, json) in set {
        match JwtBundle::parse_workload_api(td.clone(), json) {
            Ok(bundle) => {
                bundles.insert(bundle);
            }
            Err(e) => {
                status.record_refused();
                tracing::error!(
                    trust_domain = %td,
                    error = %e,
                    "a JWT bundle from the SPIFFE Workload API cannot be used: JWT-SVIDs of \
                     this trust domain are refused until the agent sends a usable one"
                );
            }
        }
    }
    tracing::info!(
        trust_domains = bundles.len(),
        "JWT bundles from the SPIFFE Workload API in use"
    );
    store.set(bundles);
}

#[cfg(test)]
mod tests {
    use super::*;
    use idgate_tls::TrustDomain;

    const KEY: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn a_bad_bundle_refuses_its_own_trust_domain_and_every_other_takes_its_new_bundle() {
        let store = JwtBundleStore::default();
        let status = WorkloadStatus::default();
        let td = |s: &str| TrustDomain::new(s).unwrap();
        let mut good = JwtBundleSet::new();
        good.insert(td("example.org"), KEY.as_bytes().to_vec());
        good.insert(td("partner.test"), br#"{"keys":[]}"#.to_vec());
        apply(&good, &store, &status);
        assert_eq!(store.load().len(), 2);
        assert_eq!(
            store.load().get("example.org").map(|b| b.len()),
            Some(1),
            "one key"
        );

        // The agent withdraws example.org's key while partner.test's bundle turns bad: the
        // withdrawal is taken, and partner.test is no longer trusted.
        let mut bad = JwtBundleSet::new();
        bad.insert(td("example.org"), br#"{"keys":[]}"#.to_vec());
        bad.insert(td("partner.test"), b"not json".to_vec());
        apply(&bad, &store, &status);
        let now = store.load();
        assert_eq!(now.len(), 1, "partner.test is dropped");
        assert_eq!(
            now.get("example.org").map(|b| b.len()),
            Some(0),
            "withdrawn"
        );
        assert!(now.get("partner.test").is_none());
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
