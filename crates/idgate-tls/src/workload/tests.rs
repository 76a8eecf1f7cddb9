use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::spiffe::{X509Bundle, X509BundleSet, X509Context, X509Svid};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::WorkloadStatus;
use super::apply::Applier;
use crate::devpki::{self, DevPkiFiles, DevPkiRequest};
use crate::material::TlsMaterial;

fn pki(dir: &Path, td: &str) -> DevPkiFiles {
    devpki::generate(
        dir,
        &DevPkiRequest {
            trust_domain: td.parse().unwrap(),
            workloads: Vec::new(),
            validity: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

fn ders(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .flat_map(|c| c.unwrap().to_vec())
        .collect()
}

fn key_der(pem_file: &Path) -> Vec<u8> {
    match PrivateKeyDer::from_pem_file(pem_file).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("not PKCS#8: {other:?}"),
    }
}

fn bundle(td: &str, files: &DevPkiFiles) -> X509Bundle {
    X509Bundle::parse_from_der(td.parse().unwrap(), &ders(&files.bundle)).unwrap()
}

/// What an agent sends: the gateway's SVID of `own` (with the key of `key_of`), its bundle,
/// and the bundles of `federated`.
fn context(
    own: &DevPkiFiles,
    key_of: &DevPkiFiles,
    federated: &[(&str, &DevPkiFiles)],
) -> X509Context {
    let svid =
        X509Svid::parse_from_der(&ders(&own.gateway_cert), &key_der(&key_of.gateway_key)).unwrap();
    let mut set = X509BundleSet::new();
    set.add_bundle(bundle("example.org", own));
    for (td, files) in federated {
        set.add_bundle(bundle(td, files));
    }
    X509Context::new([Arc::new(svid)], set)
}

fn setup() -> (Arc<TlsMaterial>, Arc<WorkloadStatus>, Applier) {
    let material = Arc::new(TlsMaterial::pending(crate::crypto_provider()));
    let status = Arc::new(WorkloadStatus::default());
    let applier = Applier::new(material.clone(), status.clone(), None);
    (material, status, applier)
}

fn leaf(material: &TlsMaterial) -> Vec<u8> {
    material.current_svid().unwrap().cert[0].to_vec()
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

#[test]
fn the_first_context_makes_pending_material_ready_with_its_svid_and_every_bundle() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (own, partner) = (pki(a.path(), "example.org"), pki(b.path(), "partner.org"));
    let (material, status, mut applier) = setup();
    assert!(!material.is_ready());
    assert!(material.current_svid().is_none());

    applier.apply(&context(&own, &own, &[("partner.org", &partner)]));

    assert!(material.is_ready());
    assert_eq!(
        leaf(&material),
        ders(&own.gateway_cert)[..leaf(&material).len()]
    );
    assert_eq!(trusted(&material), ["example.org", "partner.org"]);
    let expiry = material.expiry();
    assert_eq!(
        expiry.svid.unwrap().0.unwrap().as_str(),
        "spiffe://example.org/idgate"
    );
    assert_eq!(expiry.bundles.len(), 2);
    assert_eq!((status.svid_updates(), status.bundle_updates()), (1, 1));
}

#[test]
fn a_rotation_replaces_the_svid_and_keeps_the_verifiers_of_unchanged_bundles() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let own = pki(a.path(), "example.org");
    let (material, status, mut applier) = setup();
    applier.apply(&context(&own, &own, &[]));
    let verifier_before = material.bundles().get("example.org").unwrap().clone();

    // A new SVID from the same CA, as SPIRE rotates: same bundle.
    let renewed = devpki::generate(
        b.path(),
        &DevPkiRequest {
            trust_domain: "example.org".parse().unwrap(),
            workloads: Vec::new(),
            validity: Duration::from_secs(7200),
        },
    )
    .unwrap();
    let rotated =
        X509Svid::parse_from_der(&ders(&renewed.gateway_cert), &key_der(&renewed.gateway_key))
            .unwrap();
    let mut set = X509BundleSet::new();
    set.add_bundle(bundle("example.org", &own));
    applier.apply(&X509Context::new([Arc::new(rotated)], set));

    assert_eq!(
        leaf(&material),
        ders(&renewed.gateway_cert)[..leaf(&material).len()]
    );
    let verifier_after = material.bundles().get("example.org").unwrap().clone();
    assert!(Arc::ptr_eq(&verifier_before, &verifier_after));
    assert_eq!((status.svid_updates(), status.bundle_updates()), (2, 1));

    // The same context again changes nothing.
    let svid_before = material.current_svid().unwrap();
    let again =
        X509Svid::parse_from_der(&ders(&renewed.gateway_cert), &key_der(&renewed.gateway_key))
            .unwrap();
    let mut set = X509BundleSet::new();
    set.add_bundle(bundle("example.org", &own));
    applier.apply(&X509Context::new([Arc::new(again)], set));
    assert!(Arc::ptr_eq(&svid_before, &material.current_svid().unwrap()));
    assert_eq!((status.svid_updates(), status.bundle_updates()), (2, 1));
}

#[test]
fn a_federated_bundle_added_is_trusted_and_once_removed_is_not() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (own, partner) = (pki(a.path(), "example.org"), pki(b.path(), "partner.org"));
    let (material, status, mut applier) = setup();
    applier.apply(&context(&own, &own, &[]));
    assert_eq!(trusted(&material), ["example.org"]);
    applier.apply(&context(&own, &own, &[("partner.org", &partner)]));
    assert_eq!(trusted(&material), ["example.org", "partner.org"]);
    applier.apply(&context(&own, &own, &[]));
    assert_eq!(trusted(&material), ["example.org"]);
    assert_eq!(material.expiry().bundles.len(), 1);
    assert_eq!(status.bundle_updates(), 3);
}

#[test]
fn an_svid_whose_key_does_not_fit_is_refused_and_the_one_in_use_stays() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (own, other) = (pki(a.path(), "example.org"), pki(b.path(), "example.org"));
    let (material, status, mut applier) = setup();
    applier.apply(&context(&own, &own, &[]));
    let in_use = material.current_svid().unwrap();

    // The spiffe crate parses the certificate and the key each on its own and takes the
    // pair: whether they fit is the applier's to check. Should a later version refuse the
    // pair itself, this test must be rewritten, not pass without checking anything.
    let svid = X509Svid::parse_from_der(&ders(&other.gateway_cert), &key_der(&own.gateway_key))
        .expect("the spiffe crate takes a certificate and a key that do not fit");
    let mut set = X509BundleSet::new();
    set.add_bundle(bundle("example.org", &own));
    applier.apply(&X509Context::new([Arc::new(svid)], set));
    assert!(Arc::ptr_eq(&in_use, &material.current_svid().unwrap()));
    assert_eq!(status.refused_updates(), 1);
    assert_eq!(status.svid_updates(), 1);
}

#[test]
fn with_a_hint_the_svid_of_that_entry_is_presented_and_without_it_none_is_taken() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (pki(a.path(), "example.org"), pki(b.path(), "example.org"));
    let hinted = |files: &DevPkiFiles, hint: &str| {
        Arc::new(
            X509Svid::parse_from_der_with_hint(
                &ders(&files.gateway_cert),
                &key_der(&files.gateway_key),
                Some(Arc::from(hint)),
            )
            .unwrap(),
        )
    };
    let bundles = || {
        let mut set = X509BundleSet::new();
        set.add_bundle(bundle("example.org", &one));
        set
    };
    let material = Arc::new(TlsMaterial::pending(crate::crypto_provider()));
    let status = Arc::new(WorkloadStatus::default());
    let mut applier = Applier::new(material.clone(), status.clone(), Some("internal".into()));

    // The default (first) SVID is "external"; the gateway's entry is "internal".
    applier.apply(&X509Context::new(
        [hinted(&one, "external"), hinted(&two, "internal")],
        bundles(),
    ));
    assert_eq!(
        leaf(&material),
        ders(&two.gateway_cert)[..leaf(&material).len()]
    );

    // An update without that entry is refused: the SVID in use stays.
    applier.apply(&X509Context::new([hinted(&one, "external")], bundles()));
    assert_eq!(
        leaf(&material),
        ders(&two.gateway_cert)[..leaf(&material).len()]
    );
    assert_eq!(status.refused_updates(), 1);
}
