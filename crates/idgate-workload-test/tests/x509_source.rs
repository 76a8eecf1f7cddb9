//! The spiffe crate's `X509Source` (its reconnecting, always-current view) against the
//! server: the first SVID, a rotation, and recovery after agent loss and restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::within;
use idgate_workload_test::{TestCa, WorkloadApiServer, X509State};
use spiffe::X509Source;

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn x509_source_follows_rotations_and_recovers_after_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let server = WorkloadApiServer::start(&socket).await.unwrap();
    let ca = TestCa::new("example.org").unwrap();
    let first = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&ca, first.clone()));

    let source = within(
        "initial sync",
        X509Source::builder()
            .endpoint(server.endpoint())
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();
    assert_eq!(
        source.svid().unwrap().leaf().as_bytes(),
        first.chain[0].as_ref()
    );

    let mut updates = source.updated();
    let rotated = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&ca, rotated.clone()));
    within("rotation", updates.changed()).await.unwrap();
    assert_eq!(
        source.svid().unwrap().leaf().as_bytes(),
        rotated.chain[0].as_ref()
    );

    within("agent loss", server.shutdown()).await;
    let restarted = WorkloadApiServer::start(&socket).await.unwrap();
    let new_ca = TestCa::new("example.org").unwrap();
    let after = new_ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    restarted.set_x509(X509State::issued_by(&new_ca, after.clone()));
    within("recovery", async {
        while source.svid().unwrap().leaf().as_bytes() != after.chain[0].as_ref() {
            updates.changed().await.unwrap();
        }
    })
    .await;
    let bundle = source
        .bundle_set()
        .unwrap()
        .get(&spiffe::TrustDomain::new("example.org").unwrap())
        .unwrap();
    assert_eq!(bundle.authorities()[0].as_bytes(), new_ca.cert().as_ref());

    source.shutdown().await;
    restarted.shutdown().await;
}
