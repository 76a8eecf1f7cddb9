//! Workload API updates that take trust away: an emptied or unusable bundle, and the
//! status counters of the JWT bundle stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::spiffe::{X509Bundle, X509BundleSet, X509Context, X509Svid};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use super::apply::Applier;
use super::{WorkloadApi, WorkloadEndpoint, WorkloadStatus};
use crate::material::TlsMaterial;
use crate::test_ca::Ca;

const OWN: &str = "example.org";
const PARTNER: &str = "partner.test";

fn setup() -> (Arc<TlsMaterial>, Arc<WorkloadStatus>, Applier) {
    let material = Arc::new(TlsMaterial::pending(crate::crypto_provider()));
    let status = Arc::new(WorkloadStatus::default());
    let applier = Applier::new(material.clone(), status.clone(), None);
    (material, status, applier)
}

fn trusted(material: &TlsMaterial) -> Vec<String> {
    let mut tds: Vec<String> = material
        .bundles()
        .trust_domains()
        .map(|t| t.as_str().to_owned())
        .collect();
    tds.sort();
    tds
}

fn bundle(td: &str, cas: &[CertificateDer<'_>]) -> X509Bundle {
    let der: Vec<u8> = cas.iter().flat_map(|c| c.to_vec()).collect();
    X509Bundle::parse_from_der(td.parse().unwrap(), &der).unwrap()
}

/// What an agent sends: the gateway's SVID from `own`, `own`'s bundle and the bundles of
/// the federated trust domains as given.
fn context(own: &Ca, federated: &[(&str, X509Bundle)]) -> X509Context {
    let leaf = own.svid("spiffe://example.org/idgate");
    let key = PrivatePkcs8KeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let svid = X509Svid::parse_from_der(&leaf.der, key.secret_pkcs8_der()).unwrap();
    let mut set = X509BundleSet::new();
    set.add_bundle(bundle(OWN, &[own.root()]));
    for (_, b) in federated {
        set.add_bundle(b.clone());
    }
    X509Context::new([Arc::new(svid)], set)
}

/// A CA certificate the spiffe crate parses but rustls refuses as a trust anchor: its
/// outer signature algorithm (ECDSA with SHA-384) differs from the one it was signed with
/// (ECDSA with SHA-256, in the part that is signed).
fn unusable_ca() -> CertificateDer<'static> {
    let ca = Ca::new("odd CA").root().to_vec();
    const ECDSA_SHA256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let outer = ca
        .windows(ECDSA_SHA256.len())
        .rposition(|w| w == ECDSA_SHA256)
        .expect("an ECDSA P-256 CA");
    let mut odd = ca;
    odd[outer + ECDSA_SHA256.len() - 1] = 0x03;
    CertificateDer::from(odd)
}

#[test]
fn an_emptied_federated_bundle_is_no_longer_trusted() {
    let (own, partner) = (Ca::new(OWN), Ca::new(PARTNER));
    let (material, status, mut applier) = setup();
    applier.apply(&context(
        &own,
        &[(PARTNER, bundle(PARTNER, &[partner.root()]))],
    ));
    assert_eq!(trusted(&material), [OWN, PARTNER]);

    // SPIRE sends a federated bundle that holds no CA as empty bytes.
    let emptied = X509Bundle::parse_from_der(PARTNER.parse().unwrap(), &[]).unwrap();
    assert!(emptied.authorities().is_empty());
    applier.apply(&context(&own, &[(PARTNER, emptied)]));

    assert_eq!(trusted(&material), [OWN]);
    assert_eq!(material.expiry().bundles.len(), 1);
    assert_eq!(status.bundle_updates(), 2);
    // The agent's word, not a refusal.
    assert_eq!(status.refused_updates(), 0);
}

#[test]
fn a_bundle_that_drops_a_ca_but_cannot_be_used_keeps_none_of_its_cas() {
    let (own, partner, successor) = (Ca::new(OWN), Ca::new(PARTNER), Ca::new(PARTNER));
    let (material, status, mut applier) = setup();
    applier.apply(&context(
        &own,
        &[(PARTNER, bundle(PARTNER, &[partner.root()]))],
    ));
    assert_eq!(trusted(&material), [OWN, PARTNER]);

    // The partner's CA is withdrawn (compromised, say); its successor comes with a
    // certificate rustls refuses. The withdrawn CA must not stay trusted.
    let odd = unusable_ca();
    assert!(
        rustls::RootCertStore::empty().add(odd.clone()).is_err(),
        "the test needs a CA certificate rustls refuses"
    );
    applier.apply(&context(
        &own,
        &[(PARTNER, bundle(PARTNER, &[successor.root(), odd]))],
    ));

    assert_eq!(trusted(&material), [OWN]);
    assert_eq!(status.refused_updates(), 1);
    assert_eq!(status.bundle_updates(), 2);

    // A usable bundle later lets the trust domain in again.
    applier.apply(&context(
        &own,
        &[(PARTNER, bundle(PARTNER, &[successor.root()]))],
    ));
    assert_eq!(trusted(&material), [OWN, PARTNER]);
}

#[test]
fn an_unusable_bundle_of_the_gateways_own_trust_domain_fails_closed() {
    let own = Ca::new(OWN);
    let (material, status, mut applier) = setup();
    applier.apply(&context(&own, &[]));
    assert_eq!(trusted(&material), [OWN]);

    // A non-conforming agent repeats the own trust domain among the federated bundles,
    // which replaces the SVID's bundle; so does any update that carries an unusable one.
    applier.apply(&context(
        &own,
        &[(OWN, bundle(OWN, &[own.root(), unusable_ca()]))],
    ));

    assert!(trusted(&material).is_empty());
    assert!(material.current_svid().is_some(), "the SVID in use stays");
    assert_eq!(status.refused_updates(), 1);
}

#[test]
fn a_tcp_workload_api_address_that_is_not_loopback_is_refused() {
    for remote in [
        "tcp://10.0.0.7:8081",
        "tcp://0.0.0.0:8081",
        "tcp://[2001:db8::1]:8081",
    ] {
        assert_eq!(
            WorkloadEndpoint::parse(remote),
            Err(super::EndpointError::NotLoopback),
            "{remote}"
        );
    }
    for local in [
        "tcp://127.0.0.1:8081",
        "tcp://127.3.2.1:8081",
        "tcp://[::1]:8081",
        "tcp://[::ffff:127.0.0.1]:8081",
    ] {
        let endpoint = WorkloadEndpoint::parse(local).unwrap();
        assert!(endpoint.is_tcp(), "{local}");
    }
    assert!(
        !WorkloadEndpoint::parse("unix:///run/spire/agent.sock")
            .unwrap()
            .is_tcp()
    );
}

#[tokio::test]
async fn a_failing_jwt_bundle_stream_is_counted() {
    // No agent behind the socket: both streams fail to open, again and again.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = WorkloadEndpoint::parse(&format!(
        "unix://{}",
        dir.path().join("agent.sock").display()
    ))
    .unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let material = Arc::new(TlsMaterial::pending(crate::crypto_provider()));
    let api = WorkloadApi::spawn(endpoint, None, material, true, stop);
    let status = api.status().clone();
    assert!(status.jwt_stream());

    let deadline = Instant::now() + Duration::from_secs(10);
    while status.jwt_disconnects() < 2 {
        assert!(
            Instant::now() < deadline,
            "the JWT bundle stream's failures were not counted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!status.jwt_connected());
    stop_tx.send_replace(true);

    // Without JWT-SVIDs there is no such stream to report on.
    let (stop_tx, stop) = watch::channel(false);
    let material = Arc::new(TlsMaterial::pending(crate::crypto_provider()));
    let endpoint = WorkloadEndpoint::parse("unix:///nonexistent/agent.sock").unwrap();
    let api = WorkloadApi::spawn(endpoint, None, material, false, stop);
    assert!(!api.status().jwt_stream());
    stop_tx.send_replace(true);
}
