//! `idgate check` against OpenBao: a vault reference without `[vault]`, a refused token and
//! a missing secret or field.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

use super::{OpenBao, config_with, vault_spec};

fn check(config: &GatewayConfig, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

#[tokio::test]
async fn check_refuses_a_vault_reference_without_a_vault_section() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = config_with(&pki, &upstream, "vault:secret/idgate/didit#api_key", None);
    let (code, out, err) = tokio::task::spawn_blocking(move || check(&config, &[]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("upstreams[0].credential.secret: vault: references need a [vault] section"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_refused_token_and_a_missing_secret_or_field_from_openbao() {
    let bao = Arc::new(tokio::task::spawn_blocking(OpenBao::start).await.unwrap());
    bao.kv_put(None, "idgate/didit", json!({"api_key": "k"}));
    let good = bao.token(None, Duration::ZERO);
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let checked = |secret: &str, token: &str| {
        let config = config_with(&pki, &upstream, secret, Some(vault_spec(&bao)));
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || check(&config, &[("VAULT_TOKEN", &token)]))
    };

    let wrong_token = "s.not-a-token-Zq8x";
    let (code, out, err) = checked("vault:secret/idgate/didit#api_key", wrong_token)
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("credential didit") && err.contains("permission denied"),
        "{err}"
    );
    assert!(
        !err.contains(wrong_token) && !out.contains(wrong_token),
        "{err}"
    );

    let (code, out, err) = checked("vault:secret/idgate/nothing#api_key", &good)
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("vault:secret/idgate/nothing#api_key: no secret at this path"),
        "{err}"
    );

    let (code, _, err) = checked("vault:secret/idgate/didit#missing", &good)
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("no field \"missing\""), "{err}");
    assert!(!err.contains(&good));

    // A soft-deleted newest version: the server answers 404 with the version's metadata.
    tokio::task::spawn_blocking({
        let bao = bao.clone();
        move || bao.api("DELETE", "/v1/secret/data/idgate/didit", None, None)
    })
    .await
    .unwrap();
    let (code, _, err) = checked("vault:secret/idgate/didit#api_key", &good)
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(
        err.contains("version 1 of this secret is deleted or destroyed"),
        "{err}"
    );
}
