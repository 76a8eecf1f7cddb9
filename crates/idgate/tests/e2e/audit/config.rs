//! `idgate audit verify|show --config`: the trail's directory, keys and schedule from the
//! gateway's configuration, which is validated whole, while of its secrets only the
//! trail's encryption keys are read — through its `[vault]` when they are `vault:`
//! references (a real OpenBao dev server here).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::TrailKeys;
use super::gateway::audit_section;
use crate::openbao::OpenBao;
use crate::support::*;

/// `idgate audit <args> --config <config>` with `env`, and nothing else from the test's
/// environment that the configuration names.
fn audit_cli(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TEST_PROVIDER_KEY")
        .env_remove("VAULT_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

fn write_config(config: &GatewayConfig) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    (dir, path)
}

#[test]
fn audit_show_config_reads_a_vault_encryption_key() {
    let bao = OpenBao::start();
    let keys = TrailKeys::new(true);
    let key_text = std::fs::read_to_string(keys.encryption()).unwrap();
    bao.kv_put(None, "idgate/audit", json!({"key": key_text.trim()}));
    let token = bao.token(None, Duration::ZERO);
    let trail = tempfile::tempdir().unwrap();
    let encryption =
        idgate_audit::EncryptionKey::load(&idgate_secrets::SecretRef::File(keys.encryption()))
            .unwrap();
    super::written_trail_with(&keys, trail.path(), Some(encryption));

    let pki = Pki::default_pki();
    let mut config = OneRoute::kyc_decision("https://127.0.0.1:9")
        .config(&pki)
        .section(
            "audit",
            audit_section(
                &keys,
                trail.path(),
                &[("encryption_key", "vault:secret/idgate/audit#key".into())],
            ),
        );
    config.vault = Some(VaultSpec {
        address: bao.addr.clone(),
        ca: Some(bao.ca.clone()),
        timeout: Some("5s".into()),
        token: Some("env:VAULT_TOKEN".into()),
        extra: toml::Table::new(),
    });
    let (_dir, path) = write_config(&config);
    let env = [
        ("VAULT_TOKEN", token.as_str()),
        ("TEST_PROVIDER_KEY", "provider-key"),
    ];
    let (code, out, err) = audit_cli(&["show"], &path, &env);
    assert_eq!(code, 0, "{out}{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 60, "{out}");
    assert!(records.iter().all(|r| r["entry"] == "record"));
    let (code, out, err) = audit_cli(&["verify"], &path, &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("60 records") && out.contains("sealed"),
        "{out}"
    );
    // The files are sealed: without the key from Vault nothing decodes.
    let written = all_files(trail.path());
    assert!(!written.contains("req-0-0"));
    // A token Vault refuses is named as Vault's answer, and never echoed.
    let refused = "s.refused-token-Zq8x";
    let (code, out, err) = audit_cli(
        &["show"],
        &path,
        &[
            ("VAULT_TOKEN", refused),
            ("TEST_PROVIDER_KEY", "provider-key"),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("audit.encryption_key"), "{err}");
    assert!(!err.contains(refused) && !out.contains(refused), "{err}");
}

fn all_files(dir: &Path) -> String {
    idgate_audit::files::list(dir)
        .unwrap()
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect()
}

/// An auditor has the trail's public keys (and its encryption keys), not the gateway's
/// upstream secrets nor its signing key: `--config` still reads the trail's part of the
/// configuration, and still refuses a configuration that is not valid.
#[test]
fn audit_verify_config_needs_no_secret_outside_the_trails_keys() {
    let keys = TrailKeys::new(false);
    let trail = tempfile::tempdir().unwrap();
    super::written_trail(&keys, trail.path());
    let pki = Pki::default_pki();
    let mut audit = audit_section(&keys, trail.path(), &[]);
    // Kept where only the gateway's user can read it: missing, for whoever verifies.
    audit.insert(
        "signing_key".into(),
        "file:/nonexistent/audit-signing.pem".into(),
    );
    let config = OneRoute::kyc_decision("https://127.0.0.1:9")
        .config(&pki)
        .section("audit", audit);
    let (_dir, path) = write_config(&config);
    // TEST_PROVIDER_KEY, the upstream's `env:` secret, is not set.
    let (code, out, err) = audit_cli(&["verify"], &path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("60 records") && out.contains("sealed"),
        "{out}"
    );
    let (code, out, err) = audit_cli(&["show"], &path, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 60);

    // A mistake in another section is still a mistake.
    let mut broken = config.clone();
    broken.routes[0]
        .extra
        .insert("methodz".into(), toml::Value::from("GET"));
    let (_dir, path) = write_config(&broken);
    let (code, out, err) = audit_cli(&["verify"], &path, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("routes[0].methodz"), "{err}");
    assert!(!err.contains("TEST_PROVIDER_KEY"), "{err}");
}
