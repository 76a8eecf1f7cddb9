//! KV version 2 reads: a secret through a namespace that never reaches the logs, and a new
//! version written under load taken into use with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::assert_eventually;
use crate::support::*;

use super::{OpenBao, config_with, finish, key_seen, load, vault_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_kv_secret_reaches_the_upstream_through_a_namespace_and_is_never_logged() {
    let bao = tokio::task::spawn_blocking(OpenBao::start).await.unwrap();
    bao.api("POST", "/v1/sys/namespaces/kyc", None, Some(json!({})));
    bao.api(
        "POST",
        "/v1/sys/mounts/secret",
        Some("kyc"),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    );
    let value = "didit-key-from-openbao-93f1c2";
    bao.kv_put(
        Some("kyc"),
        "idgate/didit",
        json!({"api_key": value, "other": "x"}),
    );
    let token = bao.token(Some("kyc"), Duration::ZERO);
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let mut vault = vault_spec(&bao);
    vault.extra.insert("namespace".into(), "kyc".into());
    let config = config_with(
        &pki,
        &upstream,
        "vault:secret/idgate/didit#api_key",
        Some(vault),
    );
    let mut gw = Gateway::start(&config, &[("VAULT_TOKEN", &token), TRACE_LOG]).await;

    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
    let reply = client.get("/v3/session/s-1/decision/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", gw.output());
    assert_eq!(upstream.last().headers.get("x-api-key").unwrap(), value);
    assert!(bao.granted("secret/data/idgate/didit") >= 1);
    assert_eq!(bao.denied("secret/data/idgate/didit"), 0);

    let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert!(
        metrics
            .contains(r#"idgate_upstream_credential_uses_total{credential="didit",version="1"} 1"#),
        "{metrics}"
    );
    gw.assert_never_logged(&[value, &token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_openbao_kv_version_written_under_load_is_used_with_no_failed_request() {
    let bao = Arc::new(tokio::task::spawn_blocking(OpenBao::start).await.unwrap());
    bao.kv_put(None, "idgate/didit", json!({"api_key": "key-version-one"}));
    let token = bao.token(None, Duration::ZERO);
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = config_with(
        &pki,
        &upstream,
        "vault:secret/idgate/didit#api_key",
        Some(vault_spec(&bao)),
    );
    let gw = Gateway::start(&config, &[("VAULT_TOKEN", &token)]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&pki, gw.port, 4, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let version = tokio::task::spawn_blocking({
        let bao = bao.clone();
        move || bao.kv_put(None, "idgate/didit", json!({"api_key": "key-version-two"}))
    })
    .await
    .unwrap();
    assert_eq!(version, 2);
    assert_eventually!(
        key_seen(&upstream, "key-version-two"),
        "the upstream never saw version 2:\n{}",
        gw.output()
    );
    // Later requests all carry the new version.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = finish(running).await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the change"
    );
    assert!(sent > 20, "too little load to mean anything: {sent}");
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    for _ in 0..3 {
        assert_eq!(
            client.get("/v3/session/b/decision/").await.unwrap().status,
            200
        );
        assert!(key_seen(&upstream, "key-version-two"));
    }
    // Logged after the new version is put into use: waited for, not assumed written.
    assert_eventually!(
        gw.output().contains("upstream credential rotated"),
        "the rotation was not logged:\n{}",
        gw.output()
    );
    let out = gw.output();
    assert!(!out.contains("key-version-one") && !out.contains("key-version-two"));
    let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"credential="didit",version="2""#),
        "{metrics}"
    );
}
