//! Vault authentication: a token renewed past its TTL, and AppRole logging in again before
//! the token's maximum TTL and after a revocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::assert_eventually;
use crate::support::*;

use super::{OpenBao, config_with, finish, key_seen, load, vault_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_token_is_renewed_past_its_ttl_and_a_pinned_version_stays_pinned() {
    let bao = tokio::task::spawn_blocking(OpenBao::start).await.unwrap();
    bao.kv_put(None, "idgate/didit", json!({"api_key": "pinned-one"}));
    bao.kv_put(None, "idgate/didit", json!({"api_key": "newer-two"}));
    let ttl = Duration::from_secs(2);
    let token = bao.token(None, ttl);
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let config = config_with(
        &pki,
        &upstream,
        "vault:secret/idgate/didit?version=1#api_key",
        Some(vault_spec(&bao)),
    );
    let started = Instant::now();
    let mut gw = Gateway::start(&config, &[("VAULT_TOKEN", &token), TRACE_LOG]).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    assert_eq!(
        client.get("/v3/session/a/decision/").await.unwrap().status,
        200
    );
    assert_eq!(
        upstream.last().headers.get("x-api-key").unwrap(),
        "pinned-one"
    );

    // Past twice the TTL, the token still reads: it was renewed, never refused.
    assert_eventually!(
        bao.granted("auth/token/renew-self") >= 2,
        "the token was not renewed:\n{}",
        gw.output()
    );
    tokio::time::sleep((ttl * 2).saturating_sub(started.elapsed())).await;
    let reads = bao.granted("secret/data/idgate/didit");
    assert_eventually!(
        bao.granted("secret/data/idgate/didit") > reads + 2,
        "reads stopped:\n{}",
        gw.output()
    );
    assert_eq!(bao.denied("secret/data/idgate/didit"), 0, "{}", gw.output());
    assert_eq!(
        client.get("/v3/session/a/decision/").await.unwrap().status,
        200
    );
    assert_eq!(
        upstream.last().headers.get("x-api-key").unwrap(),
        "pinned-one"
    );
    gw.assert_never_logged(&[&token, "pinned-one"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_approle_logs_in_again_before_the_token_max_ttl_and_after_a_revocation() {
    let bao = Arc::new(tokio::task::spawn_blocking(OpenBao::start).await.unwrap());
    let max_ttl = Duration::from_secs(3);
    let (role_id, secret_id) = bao.approle(max_ttl);
    bao.kv_put(None, "idgate/didit", json!({"api_key": "approle-key-one"}));
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let files = tempfile::tempdir().unwrap();
    let role_file = files.path().join("role-id");
    write_private(&role_file, role_id.as_bytes());
    let mut vault = vault_spec(&bao);
    vault.token = None;
    vault.extra.insert(
        "approle".into(),
        table([
            ("role_id", format!("file:{}", role_file.display()).into()),
            ("secret_id", "env:VAULT_SECRET_ID".into()),
        ])
        .into(),
    );
    let config = config_with(
        &pki,
        &upstream,
        "vault:secret/idgate/didit#api_key",
        Some(vault),
    );
    let gw = Gateway::start(&config, &[("VAULT_SECRET_ID", &secret_id)]).await;
    assert_eq!(bao.granted("auth/approle/login"), 1, "{}", gw.output());

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&pki, gw.port, 2, &stop);
    // More than two maximum TTLs: the first token is dead, and so is the second.
    tokio::time::sleep(max_ttl * 2 + Duration::from_millis(1500)).await;
    let put = |value: &'static str| {
        let bao = bao.clone();
        tokio::task::spawn_blocking(move || {
            bao.kv_put(None, "idgate/didit", json!({ "api_key": value }))
        })
    };
    // The token in use now still reads: a new version arrives.
    put("approle-key-two").await.unwrap();
    assert_eventually!(
        key_seen(&upstream, "approle-key-two"),
        "no read succeeded after the first token's maximum TTL:\n{}",
        gw.output()
    );
    let logins = bao.granted("auth/approle/login");
    assert!(
        logins >= 3,
        "{logins} logins in {:?} with a {max_ttl:?} maximum TTL",
        max_ttl * 2
    );
    // Logged in again ahead of time: the server never saw an expired token.
    assert_eq!(bao.denied("secret/data/idgate/didit"), 0, "{}", gw.output());

    // Tokens revoked early are refused with 403: the gateway logs in again and reads. The
    // revocation follows a scheduled login closely, so that the token in use has most of its
    // life ahead: the gateway's next read (within 250 ms) presents it before the next
    // scheduled login (two thirds of the maximum TTL later) could replace it.
    let scheduled = bao.granted("auth/approle/login");
    assert_eventually!(
        bao.granted("auth/approle/login") > scheduled,
        "no scheduled login after {scheduled}:\n{}",
        gw.output()
    );
    tokio::task::spawn_blocking({
        let bao = bao.clone();
        move || {
            bao.api(
                "POST",
                "/v1/sys/leases/revoke-prefix/auth/approle/login",
                None,
                Some(json!({"sync": true})),
            )
        }
    })
    .await
    .unwrap();
    put("approle-key-three").await.unwrap();
    assert_eventually!(
        key_seen(&upstream, "approle-key-three"),
        "no read succeeded after the token was revoked:\n{}",
        gw.output()
    );
    assert!(
        bao.denied("secret/data/idgate/didit") >= 1,
        "the revoked token was never presented:\n{}",
        gw.output()
    );
    assert!(bao.granted("auth/approle/login") > logins + 1);
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = finish(running).await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");

    let out = gw.output();
    assert!(out.contains("vault: logged in with AppRole"), "{out}");
    assert!(
        !out.contains(&secret_id) && !out.contains(&role_id),
        "{out}"
    );
    assert!(!out.contains("approle-key-one") && !out.contains("approle-key-two"));
}
