//! `vault:` secret references against a fake HashiCorp Vault that follows Vault's public HTTP
//! API for the endpoints the gateway uses (KV v2 read with `?version=`, AppRole login, token
//! lookup and renewal), over HTTPS with a dev-PKI certificate, and that refuses expired or
//! unknown tokens with Vault's own `403 {"errors":["permission denied"]}`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;

// ---------------------------------------------------------------------------------------
// A small HTTPS server for fakes of outside services (Vault here, an OAuth2 token endpoint
// in `oauth2_upstream`).

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = http::Response<Full<Bytes>>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(http::request::Parts, Bytes) -> HandlerFuture + Send + Sync>;

/// A loopback HTTPS server with the PKI's gateway certificate (valid for 127.0.0.1).
pub(crate) struct FakeHttps {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHttps {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHttps {
    pub(crate) async fn start(pki: &Pki, handler: Handler) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.files.gateway_cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.files.gateway_key).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(idgate_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(handler(parts, body).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

pub(crate) fn json_response(status: u16, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The fake Vault.

struct IssuedToken {
    expires: Option<Instant>,
    ttl: Duration,
    renewable: bool,
}

#[derive(Default)]
struct VaultState {
    /// Required `X-Vault-Namespace`, if any.
    namespace: Option<String>,
    /// (mount, path) → versions; version N is at index N-1.
    kv: HashMap<(String, String), Vec<serde_json::Map<String, Value>>>,
    tokens: HashMap<String, IssuedToken>,
    /// (role_id, secret_id, lease of the tokens it issues).
    approle: Option<(String, String, Duration)>,
    logins: Vec<Instant>,
    kv_reads: u32,
    renewals: u32,
    /// Requests refused with 403 (unknown or expired token, wrong namespace).
    denied: u32,
    next_token: u32,
}

struct FakeVault {
    server: FakeHttps,
    state: Arc<Mutex<VaultState>>,
}

fn denied() -> http::Response<Full<Bytes>> {
    json_response(403, &json!({"errors": ["permission denied"]}))
}

fn request_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "5e2d7a3c-0000-4000-8000-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl VaultState {
    /// Whether the request's token is one Vault would accept now.
    fn authorized(&mut self, parts: &http::request::Parts) -> Option<String> {
        let ns = parts
            .headers
            .get("x-vault-namespace")
            .and_then(|v| v.to_str().ok());
        let token = parts
            .headers
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok());
        let ok = ns == self.namespace.as_deref()
            && token.is_some_and(|t| {
                self.tokens
                    .get(t)
                    .is_some_and(|i| i.expires.is_none_or(|e| Instant::now() < e))
            });
        if ok {
            token.map(str::to_owned)
        } else {
            self.denied += 1;
            None
        }
    }

    fn issue(&mut self, ttl: Duration, renewable: bool) -> String {
        self.next_token += 1;
        let token = format!("hvs.CAESIfake{:04}token{}", self.next_token, "x".repeat(16));
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                expires: (!ttl.is_zero()).then(|| Instant::now() + ttl),
                ttl,
                renewable,
            },
        );
        token
    }

    fn handle(
        &mut self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> http::Response<Full<Bytes>> {
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("");
        match (parts.method.as_str(), path.as_str()) {
            ("POST", "/v1/auth/approle/login") => {
                let Some((role_id, secret_id, lease)) = self.approle.clone() else {
                    return json_response(404, &json!({"errors": []}));
                };
                let creds: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if creds["role_id"] != role_id.as_str() || creds["secret_id"] != secret_id.as_str()
                {
                    return json_response(400, &json!({"errors": ["invalid role or secret ID"]}));
                }
                self.logins.push(Instant::now());
                let token = self.issue(lease, true);
                json_response(
                    200,
                    &json!({
                        "request_id": request_id(), "lease_id": "", "renewable": false,
                        "lease_duration": 0, "data": null, "wrap_info": null, "warnings": null,
                        "auth": {
                            "client_token": token, "accessor": "acc-fake",
                            "policies": ["default", "idgate"], "token_policies": ["default", "idgate"],
                            "metadata": {"role_name": "idgate"},
                            "lease_duration": lease.as_secs(), "renewable": true,
                            "entity_id": "ent-fake", "token_type": "service", "orphan": true,
                            "mfa_requirement": null, "num_uses": 0
                        }
                    }),
                )
            }
            ("GET", "/v1/auth/token/lookup-self") => {
                let Some(token) = self.authorized(parts) else {
                    return denied();
                };
                let info = &self.tokens[&token];
                let ttl = info
                    .expires
                    .map_or(0, |e| e.saturating_duration_since(Instant::now()).as_secs());
                json_response(
                    200,
                    &json!({
                        "request_id": request_id(), "lease_id": "", "renewable": false,
                        "lease_duration": 0,
                        "data": {
                            "accessor": "acc-fake", "creation_ttl": info.ttl.as_secs(),
                            "display_name": "token", "entity_id": "", "explicit_max_ttl": 0,
                            "id": token, "meta": null, "num_uses": 0, "orphan": false,
                            "path": "auth/token/create", "policies": ["idgate"],
                            "renewable": info.renewable, "ttl": ttl, "type": "service"
                        },
                        "wrap_info": null, "warnings": null, "auth": null
                    }),
                )
            }
            ("POST", "/v1/auth/token/renew-self") => {
                let Some(token) = self.authorized(parts) else {
                    return denied();
                };
                let info = self.tokens.get_mut(&token).unwrap();
                if !info.renewable {
                    return json_response(400, &json!({"errors": ["lease is not renewable"]}));
                }
                info.expires = Some(Instant::now() + info.ttl);
                self.renewals += 1;
                let ttl = info.ttl.as_secs();
                json_response(
                    200,
                    &json!({
                        "request_id": request_id(), "lease_id": "", "renewable": false,
                        "lease_duration": 0, "data": null, "wrap_info": null, "warnings": null,
                        "auth": {
                            "client_token": token, "accessor": "acc-fake", "policies": ["idgate"],
                            "token_policies": ["idgate"], "lease_duration": ttl,
                            "renewable": true, "token_type": "service", "orphan": false
                        }
                    }),
                )
            }
            ("GET", p) if p.starts_with("/v1/") && p.contains("/data/") => {
                if self.authorized(parts).is_none() {
                    return denied();
                }
                let rest = &p["/v1/".len()..];
                let Some((mount, path)) = rest.split_once("/data/") else {
                    return json_response(404, &json!({"errors": []}));
                };
                let Some(versions) = self.kv.get(&(mount.to_owned(), path.to_owned())) else {
                    return json_response(404, &json!({"errors": []}));
                };
                let wanted = query
                    .strip_prefix("version=")
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(versions.len());
                let Some(data) = versions.get(wanted - 1) else {
                    return json_response(404, &json!({"errors": []}));
                };
                self.kv_reads += 1;
                json_response(
                    200,
                    &json!({
                        "request_id": request_id(), "lease_id": "", "renewable": false,
                        "lease_duration": 0,
                        "data": {
                            "data": data,
                            "metadata": {
                                "created_time": "2026-11-02T10:00:00.000000000Z",
                                "custom_metadata": null, "deletion_time": "",
                                "destroyed": false, "version": wanted
                            }
                        },
                        "wrap_info": null, "warnings": null, "auth": null, "mount_type": "kv"
                    }),
                )
            }
            _ => json_response(404, &json!({"errors": []})),
        }
    }
}

impl FakeVault {
    async fn start(pki: &Pki) -> Self {
        let state = Arc::new(Mutex::new(VaultState::default()));
        let s = state.clone();
        let handler: Handler = Arc::new(move |parts, body| {
            let resp = s.lock().unwrap().handle(&parts, &body);
            Box::pin(async move { resp })
        });
        Self {
            server: FakeHttps::start(pki, handler).await,
            state,
        }
    }

    /// Writes a new version of a KV v2 secret (like `vault kv put`); returns its version.
    fn put(&self, mount: &str, path: &str, fields: Value) -> usize {
        let Value::Object(map) = fields else {
            panic!("fields must be an object")
        };
        let mut st = self.state.lock().unwrap();
        let versions = st
            .kv
            .entry((mount.to_owned(), path.to_owned()))
            .or_default();
        versions.push(map);
        versions.len()
    }

    /// A token valid for `ttl` (zero: never expires), like `vault token create`.
    fn token(&self, ttl: Duration, renewable: bool) -> String {
        self.state.lock().unwrap().issue(ttl, renewable)
    }

    fn enable_approle(&self, role_id: &str, secret_id: &str, lease: Duration) {
        self.state.lock().unwrap().approle = Some((role_id.into(), secret_id.into(), lease));
    }

    /// Revokes every token issued so far (like `vault token revoke`).
    fn revoke_all(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    fn require_namespace(&self, ns: &str) {
        self.state.lock().unwrap().namespace = Some(ns.to_owned());
    }

    fn logins(&self) -> Vec<Instant> {
        self.state.lock().unwrap().logins.clone()
    }

    fn denied(&self) -> u32 {
        self.state.lock().unwrap().denied
    }

    fn kv_reads(&self) -> u32 {
        self.state.lock().unwrap().kv_reads
    }

    fn renewals(&self) -> u32 {
        self.state.lock().unwrap().renewals
    }
}

// ---------------------------------------------------------------------------------------

/// `[vault]` for the fake, with `auth` lines (`token = ...` or a `[vault.approle]` table).
fn vault_section(pki: &Pki, vault: &FakeVault, extra: &str, auth: &str) -> String {
    format!(
        "\n[vault]\naddress = \"{}\"\nca = \"{}\"\ntimeout = \"2s\"\n{extra}\n{auth}\n",
        vault.server.url(),
        pki.files.bundle.display()
    )
}

/// A Didit-like upstream whose `x-api-key` comes from `secret`, one route, and `vault`.
fn config_with(
    pki: &Pki,
    upstream: &TestUpstream,
    port: u16,
    admin: u16,
    secret: &str,
    vault: &str,
) -> String {
    format!(
        r#"{base}
{vault}
[[upstreams]]
name = "didit"
url = "{url}"
ca = "{ca}"
[upstreams.credential]
header = "x-api-key"
secret = "{secret}"
refresh_interval = "250ms"

[[routes]]
name = "sessions"
methods = ["GET"]
path = "/v3/session/{{id}}/decision/"
upstream = "didit"
allow = ["{ONBOARDING}"]
"#,
        base = base_config(pki, port, admin),
        url = upstream.url(true),
        ca = pki.files.bundle.display(),
    )
}

/// A secret file (mode 0600) in `dir`.
fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
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

#[tokio::test]
async fn vault_secret_reaches_the_upstream_and_neither_token_nor_value_is_in_the_output() {
    let pki = Pki::default_pki();
    let vault = FakeVault::start(&pki).await;
    vault.require_namespace("kyc");
    let value = "didit-key-from-vault-93f1c2";
    vault.put(
        "secret",
        "idgate/didit",
        json!({"api_key": value, "other": "x"}),
    );
    let token = vault.token(Duration::ZERO, false);
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let (port, admin) = (free_port(), free_port());
    let config = config_with(
        &pki,
        &upstream,
        port,
        admin,
        "vault:secret/idgate/didit#api_key",
        &vault_section(
            &pki,
            &vault,
            "namespace = \"kyc\"",
            "token = \"env:VAULT_TOKEN\"",
        ),
    );
    let gw = Gateway::start(&config, port, admin, &[("VAULT_TOKEN", &token)]).await;

    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
    let reply = client.get("/v3/session/s-1/decision/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", gw.output());
    assert_eq!(upstream.last().headers.get("x-api-key").unwrap(), value);
    assert!(vault.kv_reads() >= 1);
    assert_eq!(vault.denied(), 0);

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
async fn new_kv_version_reaches_the_upstream_within_seconds_with_no_failed_request() {
    let pki = Pki::default_pki();
    let vault = FakeVault::start(&pki).await;
    vault.put(
        "secret",
        "idgate/didit",
        json!({"api_key": "key-version-one"}),
    );
    let token = vault.token(Duration::ZERO, false);
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let (port, admin) = (free_port(), free_port());
    let config = config_with(
        &pki,
        &upstream,
        port,
        admin,
        "vault:secret/idgate/didit#api_key",
        &vault_section(&pki, &vault, "", "token = \"env:VAULT_TOKEN\""),
    );
    let gw = Gateway::start(&config, port, admin, &[("VAULT_TOKEN", &token)]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&pki, gw.port, 4, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        vault.put(
            "secret",
            "idgate/didit",
            json!({"api_key": "key-version-two"})
        ),
        2
    );
    let bumped = Instant::now();
    assert_eventually!(
        upstream
            .last()
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "key-version-two"),
        "the upstream never saw version 2:\n{}",
        gw.output()
    );
    assert!(
        bumped.elapsed() < Duration::from_secs(5),
        "version 2 took {:?}",
        bumped.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = finish(running).await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the change"
    );
    assert!(sent > 20, "too little load to mean anything: {sent}");
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
async fn approle_token_is_replaced_by_a_new_login_before_its_lease_ends() {
    let pki = Pki::default_pki();
    let vault = FakeVault::start(&pki).await;
    let (role_id, secret_id) = ("role-5c1e0d", "secret-id-7a9f3b2e");
    let lease = Duration::from_secs(3);
    vault.enable_approle(role_id, secret_id, lease);
    vault.put(
        "secret",
        "idgate/didit",
        json!({"api_key": "approle-key-one"}),
    );
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let files = tempfile::tempdir().unwrap();
    let role_file = secret_file(files.path(), "role-id", role_id);
    let (port, admin) = (free_port(), free_port());
    let config = config_with(
        &pki,
        &upstream,
        port,
        admin,
        "vault:secret/idgate/didit#api_key",
        &vault_section(
            &pki,
            &vault,
            "",
            &format!(
                "[vault.approle]\nrole_id = \"file:{}\"\nsecret_id = \"env:VAULT_SECRET_ID\"",
                role_file.display()
            ),
        ),
    );
    let gw = Gateway::start(&config, port, admin, &[("VAULT_SECRET_ID", secret_id)]).await;
    assert!(!vault.logins().is_empty(), "{}", gw.output());

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&pki, gw.port, 2, &stop);
    // More than two leases: every token would have expired twice over without new logins.
    tokio::time::sleep(Duration::from_millis(7000)).await;
    // The token in use now still reads: a new version arrives.
    vault.put(
        "secret",
        "idgate/didit",
        json!({"api_key": "approle-key-two"}),
    );
    assert_eventually!(
        upstream
            .last()
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "approle-key-two"),
        "no read succeeded after the first lease ended:\n{}",
        gw.output()
    );
    let logins = vault.logins();
    assert!(
        logins.len() >= 3,
        "only {} logins in 7 s with a 3 s lease",
        logins.len()
    );
    for pair in logins.windows(2) {
        assert!(
            pair[1] - pair[0] < lease,
            "a token outlived its lease before the next login: {:?}",
            pair[1] - pair[0]
        );
    }
    // Logged in again ahead of time: Vault never saw an expired token.
    assert_eq!(vault.denied(), 0, "{}", gw.output());

    // A token revoked early is refused with 403: the gateway logs in again and reads.
    vault.revoke_all();
    vault.put(
        "secret",
        "idgate/didit",
        json!({"api_key": "approle-key-three"}),
    );
    assert_eventually!(
        upstream
            .last()
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "approle-key-three"),
        "no read succeeded after the token was revoked:\n{}",
        gw.output()
    );
    assert!(vault.denied() >= 1);
    assert!(vault.logins().len() > logins.len());
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = finish(running).await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");

    let out = gw.output();
    assert!(out.contains("vault: logged in with AppRole"), "{out}");
    assert!(
        !out.contains(secret_id) && !out.contains("hvs.CAES"),
        "{out}"
    );
    assert!(!out.contains("approle-key-one") && !out.contains("approle-key-two"));
}

#[tokio::test]
async fn renewable_token_with_a_ttl_is_renewed_and_a_pinned_version_stays_pinned() {
    let pki = Pki::default_pki();
    let vault = FakeVault::start(&pki).await;
    vault.put("secret", "idgate/didit", json!({"api_key": "pinned-one"}));
    vault.put("secret", "idgate/didit", json!({"api_key": "newer-two"}));
    let token = vault.token(Duration::from_secs(2), true);
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let (port, admin) = (free_port(), free_port());
    let config = config_with(
        &pki,
        &upstream,
        port,
        admin,
        "vault:secret/idgate/didit?version=1#api_key",
        &vault_section(&pki, &vault, "", "token = \"env:VAULT_TOKEN\""),
    );
    let gw = Gateway::start(&config, port, admin, &[("VAULT_TOKEN", &token)]).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    assert_eq!(
        client.get("/v3/session/a/decision/").await.unwrap().status,
        200
    );
    assert_eq!(
        upstream.last().headers.get("x-api-key").unwrap(),
        "pinned-one"
    );

    // Past the token's first TTL, reads go on with the renewed token.
    assert_eventually!(
        vault.renewals() >= 2,
        "the token was not renewed:\n{}",
        gw.output()
    );
    let reads = vault.kv_reads();
    assert_eventually!(vault.kv_reads() > reads + 2, "reads stopped");
    assert_eq!(vault.denied(), 0, "{}", gw.output());
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

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config).unwrap();
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
    let config = config_with(
        &pki,
        &upstream,
        free_port(),
        free_port(),
        "vault:secret/idgate/didit#api_key",
        "",
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || check(&config, &[]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("upstreams[0].credential.secret: vault: references need a [vault] section"),
        "{err}"
    );
}

#[tokio::test]
async fn check_reports_a_refused_token_and_a_missing_secret_without_echoing_the_token() {
    let pki = Pki::default_pki();
    let vault = FakeVault::start(&pki).await;
    vault.put("secret", "idgate/didit", json!({"api_key": "k"}));
    let good = vault.token(Duration::ZERO, false);
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let section = vault_section(&pki, &vault, "", "token = \"env:VAULT_TOKEN\"");

    let wrong_token = "hvs.not-a-token-Zq8x";
    let config = config_with(
        &pki,
        &upstream,
        free_port(),
        free_port(),
        "vault:secret/idgate/didit#api_key",
        &section,
    );
    let (code, out, err) =
        tokio::task::spawn_blocking(move || check(&config, &[("VAULT_TOKEN", wrong_token)]))
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

    let config = config_with(
        &pki,
        &upstream,
        free_port(),
        free_port(),
        "vault:secret/idgate/nothing#api_key",
        &section,
    );
    let (code, out, err) = tokio::task::spawn_blocking({
        let good = good.clone();
        move || check(&config, &[("VAULT_TOKEN", &good)])
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("vault:secret/idgate/nothing#api_key: no secret at this path"),
        "{err}"
    );

    let config = config_with(
        &pki,
        &upstream,
        free_port(),
        free_port(),
        "vault:secret/idgate/didit#missing",
        &section,
    );
    let (code, _, err) = tokio::task::spawn_blocking({
        let good = good.clone();
        move || check(&config, &[("VAULT_TOKEN", &good)])
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("no field \"missing\""), "{err}");
    assert!(!err.contains(&good));
}
