//! AppRole tokens and refusals: a path the policy refuses costs no new login, and a token
//! replaced by a new login is revoked rather than left to pile up until its TTL ends.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::assert_eventually;
use crate::support::*;

use super::{OpenBao, vault_spec};

/// `[vault]` for the server, logging in with AppRole (`role_id` from a file in `files`,
/// `secret_id` from `VAULT_SECRET_ID`).
fn approle_spec(bao: &OpenBao, files: &std::path::Path, role_id: &str) -> VaultSpec {
    let role_file = files.join("role-id");
    write_private(&role_file, role_id.as_bytes());
    let mut vault = vault_spec(bao);
    vault.token = None;
    vault.extra.insert(
        "approle".into(),
        table([
            ("role_id", format!("file:{}", role_file.display()).into()),
            ("secret_id", "env:VAULT_SECRET_ID".into()),
        ])
        .into(),
    );
    vault
}

/// An upstream `name` whose `x-api-key` is `secret`, refreshed every 250 ms, and a route to
/// it at `/{name}/...`.
fn with_upstream(
    config: GatewayConfig,
    upstream: &TestUpstream,
    pki: &Pki,
    name: &str,
    secret: &str,
) -> GatewayConfig {
    config
        .upstream(
            UpstreamSpec::new(name, &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec::header("x-api-key", secret).refresh_every("250ms")),
        )
        .route(RouteSpec::get(name, &format!("/{name}/{{id}}"), name))
}

/// Waits, up to `limit`, for `cond` to hold.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_403_on_one_path_does_not_log_in_again_every_refresh() {
    let bao = tokio::task::spawn_blocking(OpenBao::start).await.unwrap();
    // Tokens that live an hour: no login is due during the test.
    let (role_id, secret_id) = bao.approle(Duration::from_secs(3600));
    bao.kv_put(None, "idgate/didit", json!({"api_key": "didit-key-one"}));
    bao.kv_put(None, "idgate/other", json!({"api_key": "other-key-one"}));
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let files = tempfile::tempdir().unwrap();
    let mut config = base_config(&pki);
    config = with_upstream(
        config,
        &upstream,
        &pki,
        "didit",
        "vault:secret/idgate/didit#api_key",
    );
    config = with_upstream(
        config,
        &upstream,
        &pki,
        "other",
        "vault:secret/idgate/other#api_key",
    );
    config.vault = Some(approle_spec(&bao, files.path(), &role_id));
    let gw = Gateway::start(&config, &[("VAULT_SECRET_ID", &secret_id)]).await;
    assert_eq!(bao.granted("auth/approle/login"), 1, "{}", gw.output());

    // The policy stops allowing one of the two paths: the token stays valid.
    bao.api(
        "PUT",
        "/v1/sys/policies/acl/idgate",
        None,
        Some(json!({"policy": "path \"secret/data/idgate/didit\" { capabilities = [\"read\"] }"})),
    );
    let denied = bao.denied("secret/data/idgate/other");
    // Three refreshes refused.
    assert!(
        wait_for(Duration::from_secs(20), || bao
            .denied("secret/data/idgate/other")
            >= denied + 3)
        .await,
        "the refused path was not read again:\n{}",
        gw.output()
    );
    assert_eq!(
        bao.granted("auth/approle/login"),
        1,
        "a path the policy refuses caused new logins:\n{}",
        gw.output()
    );
    // The token was asked about, and found valid.
    assert!(bao.granted("auth/token/lookup-self") >= 1);
    // The path still allowed is read as before, with the same token.
    bao.kv_put(None, "idgate/didit", json!({"api_key": "didit-key-two"}));
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen && Instant::now() < deadline {
        let reply = client.get("/didit/s-1").await.unwrap();
        assert_eq!(reply.status, 200, "{}", gw.output());
        seen = upstream.last().headers.get("x-api-key").unwrap() == "didit-key-two";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the allowed path stopped refreshing:\n{}",
        gw.output()
    );
    assert_eq!(bao.granted("auth/approle/login"), 1, "{}", gw.output());
    // Logged after the refused read Vault counted: waited for, not assumed written.
    assert_eventually!(
        gw.output().contains("permission denied by Vault"),
        "the refusal was not logged:\n{}",
        gw.output()
    );
    let out = gw.output();
    assert!(
        !out.contains(&secret_id) && !out.contains("other-key-one"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replaced_by_a_new_approle_login_is_revoked() {
    let bao = tokio::task::spawn_blocking(OpenBao::start).await.unwrap();
    // The next login is due after 8 s; the replaced token is revoked 2.4 s later (six times
    // the 400 ms timeout: no read can still be using it then), before its 12 s run out.
    let (role_id, secret_id) = bao.approle(Duration::from_secs(12));
    bao.kv_put(None, "idgate/didit", json!({"api_key": "didit-key-one"}));
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let files = tempfile::tempdir().unwrap();
    let mut config = with_upstream(
        base_config(&pki),
        &upstream,
        &pki,
        "didit",
        "vault:secret/idgate/didit#api_key",
    );
    let mut vault = approle_spec(&bao, files.path(), &role_id);
    vault.timeout = Some("400ms".into());
    config.vault = Some(vault);
    let mut gw = Gateway::start(&config, &[("VAULT_SECRET_ID", &secret_id), TRACE_LOG]).await;
    assert_eq!(bao.granted("auth/approle/login"), 1, "{}", gw.output());
    // The dev server revokes a token of its own when it starts.
    let revoked = bao.granted("auth/token/revoke-self");

    assert!(
        wait_for(Duration::from_secs(30), || bao
            .granted("auth/token/revoke-self")
            > revoked)
        .await,
        "the replaced token was never revoked:\n{}",
        gw.output()
    );
    assert!(bao.granted("auth/approle/login") >= 2, "{}", gw.output());
    // Reads went on with the new token: none presented the revoked one.
    let reads = bao.granted("secret/data/idgate/didit");
    assert!(
        wait_for(Duration::from_secs(10), || bao
            .granted("secret/data/idgate/didit")
            > reads + 2)
        .await,
        "reads stopped after the revocation:\n{}",
        gw.output()
    );
    assert_eq!(bao.denied("secret/data/idgate/didit"), 0, "{}", gw.output());
    gw.assert_never_logged(&[&secret_id, "didit-key-one"]).await;
}
