//! The test PKI: SVIDs a SPIFFE parser and rustls's WebPKI verifiers accept as server and
//! client certificates, CA rotation, and the PEM files.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use idgate_workload_test::{PkiError, TestCa};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

const HOUR: Duration = Duration::from_secs(3600);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in ca.bundle() {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

#[test]
fn svid_is_a_valid_x509_svid_with_the_spiffe_id_as_only_uri_san() {
    let ca = TestCa::new("example.org").unwrap();
    let svid = ca
        .svid("spiffe://example.org/ns/kyc/sa/idgate", HOUR)
        .unwrap();
    assert_eq!(svid.spiffe_id, "spiffe://example.org/ns/kyc/sa/idgate");
    assert_eq!(svid.chain.len(), 1);

    // The spiffe crate's X509-SVID rules: one URI SAN, leaf key usage, no CA flag, key.
    let parsed = spiffe::X509Svid::parse_from_der(&svid.chain_der(), &svid.key_pkcs8).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/ns/kyc/sa/idgate"
    );
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new("example.org").unwrap(),
        ca.cert().as_ref(),
    )
    .unwrap();
    assert_eq!(bundle.authorities().len(), 1);
}

#[test]
fn svid_verifies_as_localhost_server_and_as_client_against_its_bundle() {
    let ca = TestCa::new("example.org").unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", HOUR).unwrap();
    let server = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        server
            .verify_server_cert(
                &svid.chain[0],
                &svid.chain[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
    let client = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    client
        .verify_client_cert(&svid.chain[0], &svid.chain[1..], UnixTime::now())
        .unwrap();
}

#[test]
fn rotated_ca_of_the_same_trust_domain_does_not_verify_the_old_svids() {
    let old = TestCa::new("example.org").unwrap();
    let svid = old.svid("spiffe://example.org/idgate", HOUR).unwrap();
    let rotated = TestCa::new("example.org").unwrap();
    assert_eq!(rotated.trust_domain(), "example.org");
    assert_ne!(rotated.cert(), old.cert());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&rotated), provider())
        .build()
        .unwrap();
    assert!(
        verifier
            .verify_client_cert(&svid.chain[0], &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn svid_outside_the_trust_domain_or_without_a_path_is_refused() {
    let ca = TestCa::new("example.org").unwrap();
    assert!(matches!(
        ca.svid("spiffe://other.org/idgate", HOUR),
        Err(PkiError::ForeignId { .. })
    ));
    assert!(matches!(
        ca.svid("spiffe://example.org", HOUR),
        Err(PkiError::NoPath(_))
    ));
    assert!(matches!(
        ca.svid("https://example.org/idgate", HOUR),
        Err(PkiError::SpiffeId { .. })
    ));
    assert!(matches!(
        TestCa::new("Not A Domain!"),
        Err(PkiError::TrustDomain { .. })
    ));
}

#[test]
fn pem_files_hold_the_chain_the_key_and_the_bundle_with_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org").unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", HOUR).unwrap();
    let (cert_path, key_path) = svid.write_pem(dir.path(), "gateway").unwrap();
    assert_eq!(cert_path, dir.path().join("gateway.crt"));
    assert_eq!(key_path, dir.path().join("gateway.key"));

    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_file_iter(&cert_path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs, svid.chain);
    let key = PrivateKeyDer::from_pem_file(&key_path).unwrap();
    assert_eq!(key.secret_der(), svid.key_pkcs8.as_slice());
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let bundle_path = dir.path().join("bundle.pem");
    ca.write_bundle_pem(&bundle_path).unwrap();
    let bundle: Vec<CertificateDer<'_>> = CertificateDer::pem_file_iter(&bundle_path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bundle, ca.bundle());
    // No temporary file is left next to the written ones.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["bundle.pem", "gateway.crt", "gateway.key"]);
}

#[test]
fn debug_output_never_shows_private_keys() {
    let ca = TestCa::new("example.org").unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", HOUR).unwrap();
    let shown = format!("{svid:?} {ca:?}");
    assert!(shown.contains("spiffe://example.org/idgate"));
    assert!(!shown.contains("PRIVATE KEY"));
    assert!(!shown.contains(&format!("{:?}", svid.key_pkcs8)));
    assert!(!shown.contains(&format!("{:?}", &svid.key_pkcs8[..16])));
}

#[test]
fn intermediate_ca_svids_carry_the_intermediate_and_verify_against_the_root_bundle() {
    let root = TestCa::new("example.org").unwrap();
    let intermediate = root.intermediate().unwrap();
    assert_eq!(intermediate.bundle(), root.bundle());
    let svid = intermediate
        .svid("spiffe://example.org/idgate", HOUR)
        .unwrap();
    assert_eq!(svid.chain.len(), 2);
    assert_eq!(&svid.chain[1], intermediate.cert());

    // The spiffe crate checks the intermediate is a CA that may sign certificates.
    let parsed = spiffe::X509Svid::parse_from_der(&svid.chain_der(), &svid.key_pkcs8).unwrap();
    assert_eq!(parsed.cert_chain().len(), 2);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&root), provider())
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&svid.chain[0], &svid.chain[1..], UnixTime::now())
        .unwrap();
    // Without the intermediate the leaf does not chain to the root.
    assert!(
        verifier
            .verify_client_cert(&svid.chain[0], &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn svid_with_past_validity_is_refused_as_expired() {
    let ca = TestCa::new("example.org").unwrap();
    let now = std::time::SystemTime::now();
    let expired = ca
        .svid_with_validity("spiffe://example.org/idgate", now - 2 * HOUR, now - HOUR)
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    let err = verifier
        .verify_client_cert(&expired.chain[0], &[], UnixTime::now())
        .unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}
