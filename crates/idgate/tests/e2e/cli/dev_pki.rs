//! `idgate dev-pki`: a bundle, a gateway SVID and workload SVIDs with private keys; workloads
//! outside the trust domain and malformed IDs refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

use super::LIMIT;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn openssl_text(cert: &Path) -> String {
    let (code, out, err) = run_bounded(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert),
        LIMIT,
    );
    assert_eq!(code, 0, "openssl x509 {}: {err}", cert.display());
    out
}

#[test]
fn dev_pki_writes_bundle_gateway_and_workload_svids_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let (code, out, err) = idgate_cli(&[
        "dev-pki",
        "--out",
        out_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--workload",
        ONBOARDING,
        "--workload",
        FRONTEND,
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    let bundle = out_dir.join("bundle.pem");
    for (name, secret) in [
        ("bundle.pem", false),
        ("gateway.crt", false),
        ("gateway.key", true),
        ("ca.key", true),
        ("ns-kyc-sa-onboarding.crt", false),
        ("ns-kyc-sa-onboarding.key", true),
        ("ns-web-sa-frontend.crt", false),
        ("ns-web-sa-frontend.key", true),
    ] {
        let p = out_dir.join(name);
        assert!(p.is_file(), "{name} not written; stdout:\n{out}");
        if secret {
            assert_eq!(mode(&p), 0o600, "{name} mode");
        } else {
            assert_eq!(mode(&p) & 0o077 & !0o044, 0, "{name} mode {:o}", mode(&p));
        }
    }

    assert!(
        openssl_text(&bundle).contains("CA:TRUE"),
        "the bundle is a CA"
    );
    for (id, stem) in [
        (ONBOARDING, "ns-kyc-sa-onboarding"),
        (FRONTEND, "ns-web-sa-frontend"),
    ] {
        let crt = out_dir.join(format!("{stem}.crt"));
        let text = openssl_text(&crt);
        assert!(
            text.contains(&format!("URI:{id}")),
            "{stem}.crt lacks URI SAN {id}:\n{text}"
        );
        assert!(text.contains("CA:FALSE"), "{stem}.crt is a leaf:\n{text}");
        let (code, vout, verr) = run_bounded(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&bundle)
                .arg(&crt),
            LIMIT,
        );
        assert_eq!(
            code, 0,
            "{stem}.crt does not chain to bundle.pem: {vout}{verr}"
        );
    }
    let gw = openssl_text(&out_dir.join("gateway.crt"));
    for san in [
        "URI:spiffe://example.org/idgate",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ] {
        assert!(gw.contains(san), "gateway.crt lacks {san}:\n{gw}");
    }
}

#[test]
fn dev_pki_refuses_a_workload_outside_the_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let (code, out, err) = idgate_cli(&[
        "dev-pki",
        "--out",
        out_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--workload",
        ONBOARDING,
        "--workload",
        "spiffe://other.org/ns/kyc/sa/onboarding",
    ]);
    assert!(
        err.contains("spiffe://other.org/ns/kyc/sa/onboarding"),
        "the refusal names the workload: {err}"
    );
    assert!(!out_dir.join("bundle.pem").exists(), "nothing is written");
    assert_eq!(
        code, 2,
        "a usage problem exits 2; stdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn dev_pki_refuses_a_malformed_spiffe_id_or_trust_domain() {
    for (td, workload) in [
        (TD, "spiffe://example.org//double-slash"),
        (TD, "spiffe://example.org/trailing/"),
        (TD, "https://example.org/ns/kyc"),
        (TD, "spiffe://Example.org/upper"),
        (TD, "spiffe://example.org/ns/../up"),
        ("Example.Org", "spiffe://example.org/ns/kyc"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("pki");
        let (code, out, err) = idgate_cli(&[
            "dev-pki",
            "--out",
            out_dir.to_str().unwrap(),
            "--trust-domain",
            td,
            "--workload",
            workload,
        ]);
        assert_eq!(code, 2, "{td} {workload}: stdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains("error:"), "{err}");
        assert!(!out_dir.exists(), "{td} {workload}: something was written");
    }
}

/// Hours past what a certificate can say (the CA lives ten times as long), or so many that
/// they no longer fit in seconds, are refused as a usage problem: no panic, no certificate
/// quietly valid for another time.
#[test]
fn dev_pki_refuses_an_out_of_range_validity() {
    for hours in [
        "0",
        "87601",
        "10000000",
        "5124095576030431",
        "18446744073709551615",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("pki");
        let (code, out, err) = idgate_cli(&[
            "dev-pki",
            "--out",
            out_dir.to_str().unwrap(),
            "--trust-domain",
            TD,
            "--valid-hours",
            hours,
        ]);
        assert_eq!(
            code, 2,
            "--valid-hours {hours}: stdout:\n{out}\nstderr:\n{err}"
        );
        assert!(
            err.contains("--valid-hours") && err.contains("1..=87600"),
            "{hours}: {err}"
        );
        assert!(
            !out_dir.exists(),
            "--valid-hours {hours}: something was written"
        );
    }
    // The longest validity there is: ten years, the CA a hundred.
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let (code, out, err) = idgate_cli(&[
        "dev-pki",
        "--out",
        out_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--valid-hours",
        "87600",
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(openssl_text(&out_dir.join("gateway.crt")).contains("Not After"));
}
