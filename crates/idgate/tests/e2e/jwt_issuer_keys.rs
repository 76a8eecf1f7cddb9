//! The keys fetched from an outside token issuer outlive a configuration reload: a SIGHUP
//! while the issuer is down keeps the keys the running configuration held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::json;

use crate::assert_eventually;
use crate::support::*;

const SESSIONS: &str = "/v3/sessions/";
const REPORTS: &str = "/v3/reports/";

/// An outside authorization server: a P-256 key whose JWKS is served on loopback, answering
/// 500 while `down`, every request for it counted.
struct Issuer {
    key: EcdsaKeyPair,
    port: u16,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Issuer {
    async fn start() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwks = Bytes::from(
            json!({"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "outside-1",
                "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
            }]})
            .to_string(),
        );
        let (down, hits) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (is_down, counted) = (down.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (jwks, is_down, counted) = (jwks.clone(), is_down.clone(), counted.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = if is_down.load(Ordering::SeqCst) {
                            (500, Bytes::from_static(b"{}"))
                        } else {
                            (200, jwks.clone())
                        };
                        async move {
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            key,
            port,
            down,
            hits,
            task,
        }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/outside", self.port)
    }

    /// A token for the client `partner`, good for five minutes.
    fn token(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "outside-1"});
        let claims = json!({
            "iss": self.issuer(), "aud": "idgate", "sub": "partner", "client_id": "partner",
            "scope": "sessions:read", "iat": now, "nbf": now, "exp": now + 300,
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// A gateway that takes the issuer's tokens on `/v3/sessions/` (and, with `reports`, on
/// `/v3/reports/` too) for the client `partner`.
fn config(pki: &Pki, idp: &Issuer, upstream: &TestUpstream, reports: bool) -> GatewayConfig {
    let issuer = table([
        ("name", "outside".into()),
        ("issuer", idp.issuer().into()),
        (
            "jwks_uri",
            format!("http://127.0.0.1:{}/jwks", idp.port).into(),
        ),
        ("audiences", strings(&["idgate"])),
        ("algorithms", strings(&["ES256"])),
    ]);
    let route = |name: &str, path: &str| {
        RouteSpec::new(
            name,
            &["GET"],
            path,
            "provider",
            &["client:partner@outside"],
        )
        .with("auth", strings(&["jwt"]))
    };
    let config = base_config(pki)
        .section("jwt_issuers", vec![toml::Value::from(issuer)])
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(route("sessions", SESSIONS));
    if reports {
        config.route(route("reports", REPORTS))
    } else {
        config
    }
}

/// The status of a GET of `path` with `token`, and its `WWW-Authenticate`.
async fn get(client: &Client, path: &str, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let reply = client
        .send("GET", path, &[("authorization", &auth)], "")
        .await
        .unwrap();
    let challenge = reply.header("www-authenticate").unwrap_or("").to_owned();
    (reply.status, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_issuer_keys_already_fetched_while_the_issuer_is_down() {
    within(async {
        let pki = Pki::default_pki();
        let idp = Issuer::start().await;
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let gw = Gateway::start(&config(&pki, &idp, &upstream, false), &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let token = idp.token();
        let (status, challenge) = get(&client, SESSIONS, &token).await;
        assert_eq!(status, 200, "{challenge}\n{}", gw.output());
        assert!(idp.hits.load(Ordering::SeqCst) >= 1);

        // The issuer goes down; the configuration changes (a route more) and is reloaded.
        idp.down.store(true, Ordering::SeqCst);
        let changed = config(&pki, &idp, &upstream, true).to_toml();
        let tmp = gw.config_path.with_extension("new");
        std::fs::write(&tmp, changed).unwrap();
        std::fs::rename(&tmp, &gw.config_path).unwrap();
        gw.signal("HUP");
        assert_eventually!(
            get(&client, REPORTS, &token).await.0 != 404,
            "the new configuration was not taken into use; log:\n{}",
            gw.output()
        );

        // Both routes, the old one and the new one, verify with the keys held before.
        for path in [SESSIONS, REPORTS] {
            let (status, challenge) = get(&client, path, &token).await;
            assert_eq!(status, 200, "{path}: {challenge}\n{}", gw.output());
        }
    })
    .await;
}
