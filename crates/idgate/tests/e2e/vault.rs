//! `vault:` secret references against a fake Vault, only for faults a real server cannot be
//! made to produce: an answer that is not Vault's at all (a proxy's error page with status
//! 200, a truncated JSON body). Everything a real server can do — KV v2 reads, namespaces,
//! renewal, AppRole, revocation, refused tokens — is tested against OpenBao in `openbao`.
//!
//! Also home of [`FakeHttps`], a small HTTPS server for fakes of outside services.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::openbao::config_with;
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
// The fake Vault: one token, one KV v2 secret, and a switch that makes it answer like
// something that is not Vault.

/// What the fake answers to KV reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KvAnswers {
    /// Vault's own KV v2 answer.
    Vault,
    /// A proxy's error page, with status 200.
    HtmlPage,
    /// Vault's answer cut in the middle.
    Truncated,
}

struct VaultState {
    token: String,
    value: String,
    version: u64,
    answers: KvAnswers,
}

fn kv_answer(st: &VaultState) -> http::Response<Full<Bytes>> {
    let good = json!({
        "request_id": "5e2d7a3c-0000-4000-8000-000000000001", "lease_id": "",
        "renewable": false, "lease_duration": 0,
        "data": {
            "data": {"api_key": st.value},
            "metadata": {
                "created_time": "2026-11-02T10:00:00.000000000Z", "custom_metadata": null,
                "deletion_time": "", "destroyed": false, "version": st.version
            }
        },
        "wrap_info": null, "warnings": null, "auth": null, "mount_type": "kv"
    });
    match st.answers {
        KvAnswers::Vault => json_response(200, &good),
        KvAnswers::HtmlPage => http::Response::builder()
            .status(200)
            .header("content-type", "text/html")
            .body(Full::new(Bytes::from_static(
                b"<html><body>502 Bad Gateway (upstream vault unavailable)</body></html>",
            )))
            .unwrap(),
        KvAnswers::Truncated => {
            let text = good.to_string();
            http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(text[..text.len() / 2].to_owned())))
                .unwrap()
        }
    }
}

fn handle(st: &VaultState, parts: &http::request::Parts) -> http::Response<Full<Bytes>> {
    let authorized = parts
        .headers
        .get("x-vault-token")
        .is_some_and(|t| t.as_bytes() == st.token.as_bytes());
    if !authorized {
        return json_response(403, &json!({"errors": ["permission denied"]}));
    }
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/auth/token/lookup-self") => json_response(
            200,
            &json!({"data": {"ttl": 0, "renewable": false, "policies": ["idgate"]}}),
        ),
        ("GET", "/v1/secret/data/idgate/didit") => kv_answer(st),
        _ => json_response(404, &json!({"errors": []})),
    }
}

struct FakeVault {
    server: FakeHttps,
    state: Arc<Mutex<VaultState>>,
}

impl FakeVault {
    async fn start(pki: &Pki, token: &str, value: &str) -> Self {
        let state = Arc::new(Mutex::new(VaultState {
            token: token.to_owned(),
            value: value.to_owned(),
            version: 1,
            answers: KvAnswers::Vault,
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |parts, _body| {
            let resp = handle(&s.lock().unwrap(), &parts);
            Box::pin(async move { resp })
        });
        Self {
            server: FakeHttps::start(pki, handler).await,
            state,
        }
    }

    fn answer(&self, answers: KvAnswers) {
        self.state.lock().unwrap().answers = answers;
    }

    fn put(&self, value: &str) {
        let mut st = self.state.lock().unwrap();
        st.value = value.to_owned();
        st.version += 1;
    }
}

#[tokio::test]
async fn answers_that_are_not_vaults_keep_the_current_value_in_use_and_are_logged() {
    let pki = Pki::default_pki();
    let token = "s.fake-token-4f1a";
    let vault = FakeVault::start(&pki, token, "key-version-one").await;
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let vault_spec = VaultSpec {
        address: vault.server.url(),
        ca: Some(pki.files.bundle.clone()),
        timeout: Some("2s".into()),
        token: Some("env:VAULT_TOKEN".into()),
        extra: toml::Table::new(),
    };
    let config = config_with(
        &pki,
        &upstream,
        "vault:secret/idgate/didit#api_key",
        Some(vault_spec),
    );
    let gw = Gateway::start(&config, &[("VAULT_TOKEN", token)]).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

    for (answers, why) in [
        (KvAnswers::HtmlPage, "not a KV version 2 answer"),
        (KvAnswers::Truncated, "not a KV version 2 answer"),
    ] {
        vault.answer(answers);
        let warned = gw.output().matches(why).count();
        assert_eventually!(
            gw.output().matches(why).count() > warned,
            "no warning about the bad answer:\n{}",
            gw.output()
        );
        let reply = client.get("/v3/session/s-1/decision/").await.unwrap();
        assert_eq!(reply.status, 200, "{}", gw.output());
        assert_eq!(
            upstream.last().headers.get("x-api-key").unwrap(),
            "key-version-one"
        );
    }
    let out = gw.output();
    assert!(
        out.contains("cannot refresh upstream credential; the current version stays in use"),
        "{out}"
    );
    assert!(
        !out.contains("502 Bad Gateway") && !out.contains(token),
        "{out}"
    );

    // Once Vault answers as Vault again, a new version is picked up.
    vault.answer(KvAnswers::Vault);
    vault.put("key-version-two");
    assert_eventually!(
        client
            .get("/v3/session/s-1/decision/")
            .await
            .is_ok_and(|r| r.status == 200)
            && upstream
                .last()
                .headers
                .get("x-api-key")
                .is_some_and(|v| v == "key-version-two"),
        "version 2 never arrived:\n{}",
        gw.output()
    );
}
