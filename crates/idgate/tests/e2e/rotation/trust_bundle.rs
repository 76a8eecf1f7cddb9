//! Rotation of trust bundles: a new CA, an added CA, a file shared by two trust domains, and a
//! bad new bundle refused.

use std::path::PathBuf;

use crate::assert_eventually;
use crate::support::*;

use super::{
    PARTNER, accepted, assert_not_restarted, material_refusals, read, replace_atomically, start,
    with_kyc_route,
};

/// A gateway whose example.org bundle is a file of its own (`trust/bundle.pem`), starting
/// with PKI `a`'s CA; PKI `b` is a second CA of the same trust domain.
struct BundleRotation {
    a: Pki,
    b: Pki,
    bundle: PathBuf,
    _upstream: TestUpstream,
    gw: Gateway,
    /// ONBOARDING's SVID from each CA; both trust `a`'s CA for the gateway's certificate.
    client_a: Client,
    client_b: Client,
}

impl BundleRotation {
    async fn start() -> Self {
        let a = Pki::default_pki();
        let b = Pki::default_pki();
        let bundle = a.path().join("trust").join("bundle.pem");
        std::fs::create_dir(bundle.parent().expect("parent")).expect("mkdir trust");
        std::fs::copy(&a.files.bundle, &bundle).expect("copy bundle");
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = start(
            (&a.files.gateway_cert, &a.files.gateway_key),
            &bundle,
            "1h",
            &upstream,
        )
        .await;
        let client_a = Client::new(&a, Some(ONBOARDING), gw.port, false);
        let (cert_b, key_b) = b.workload(ONBOARDING);
        let client_b = Client {
            config: tls_client_config(
                &a.files.bundle,
                Some((&cert_b, &key_b)),
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port: gw.port,
            h2: false,
        };
        Self {
            a,
            b,
            bundle,
            _upstream: upstream,
            gw,
            client_a,
            client_b,
        }
    }

    fn set_bundle(&self, cas: &[&Pki]) {
        let pem: Vec<u8> = cas.iter().flat_map(|p| read(&p.files.bundle)).collect();
        replace_atomically(&self.bundle, &pem);
    }
}

#[tokio::test]
async fn trust_bundle_switched_to_a_new_ca_refuses_old_svids_and_accepts_new_ones() {
    let mut t = BundleRotation::start().await;
    assert!(accepted(&t.client_a).await);
    assert!(!accepted(&t.client_b).await);

    t.set_bundle(&[&t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "an SVID of the new CA is still refused; log:\n{}",
        t.gw.output()
    );
    assert!(
        !accepted(&t.client_a).await,
        "an SVID of the removed CA is still accepted"
    );
    assert_not_restarted(&mut t.gw);
}

#[tokio::test]
async fn trust_bundle_with_an_added_ca_accepts_svids_of_both_cas() {
    let mut t = BundleRotation::start().await;
    assert!(!accepted(&t.client_b).await);

    t.set_bundle(&[&t.a, &t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "an SVID of the added CA is still refused; log:\n{}",
        t.gw.output()
    );
    assert!(accepted(&t.client_a).await);
    assert_not_restarted(&mut t.gw);
}

#[tokio::test]
async fn trust_bundle_file_shared_by_two_trust_domains_is_reloaded_for_both() {
    // One file holding the CAs of example.org and partner.test, configured for both.
    let example = [Pki::default_pki(), Pki::default_pki()];
    let partner = [
        Pki::new("partner.test", &[PARTNER]),
        Pki::new("partner.test", &[PARTNER]),
    ];
    let shared = example[0].path().join("shared-bundle.pem");
    let write_shared = |i: usize| {
        let pem = [
            read(&example[i].files.bundle),
            read(&partner[i].files.bundle),
        ]
        .concat();
        replace_atomically(&shared, &pem);
    };
    write_shared(0);
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let gateway = &example[0].files;
    let config = with_kyc_route(
        gateway_config(
            (&gateway.gateway_cert, &gateway.gateway_key),
            &[("example.org", &shared), ("partner.test", &shared)],
            "1h",
        ),
        &upstream,
        &[ONBOARDING, PARTNER],
    );
    let gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let client = |pki: &Pki, id: &str| {
        let (cert, key) = pki.workload(id);
        Client {
            config: tls_client_config(
                &gateway.bundle,
                Some((&cert, &key)),
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port,
            h2: false,
        }
    };
    assert!(accepted(&client(&example[0], ONBOARDING)).await);
    assert!(accepted(&client(&partner[0], PARTNER)).await);

    write_shared(1);
    assert_eventually!(
        accepted(&client(&example[1], ONBOARDING)).await,
        "example.org's new CA is not trusted; log:\n{}",
        gw.output()
    );
    assert_eventually!(
        accepted(&client(&partner[1], PARTNER)).await,
        "partner.test's new CA is not trusted, though its bundle file changed; log:\n{}",
        gw.output()
    );
    assert!(!accepted(&client(&partner[0], PARTNER)).await);
}

#[tokio::test]
async fn bad_new_trust_bundle_is_refused_and_the_old_bundle_stays_in_use() {
    let t = BundleRotation::start().await;
    assert!(accepted(&t.client_a).await);
    replace_atomically(&t.bundle, b"this is not PEM at all\n");
    assert_eventually!(
        material_refusals(&t.gw)
            .iter()
            .any(|e| e.contains(&*t.bundle.to_string_lossy())
                && e.contains("no CERTIFICATE block")),
        "the bad bundle was not refused; log:\n{}",
        t.gw.output()
    );
    assert!(accepted(&t.client_a).await);
    assert!(!accepted(&t.client_b).await);

    // The watch goes on after a refusal: a good bundle is taken into use.
    t.set_bundle(&[&t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "a good bundle after a bad one is not used; log:\n{}",
        t.gw.output()
    );
}
