//! Rotation of trust bundles: a new CA, an added CA, and a bad new bundle refused. (One file
//! named for two trust domains is refused outright: see `cli::check`.)

use std::path::PathBuf;

use crate::assert_eventually;
use crate::support::*;

use super::{accepted, assert_not_restarted, material_refusals, read, replace_atomically, start};

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
