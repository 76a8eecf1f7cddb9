//! Authorization per principal: the connection's SVID, an API key and a token are each a
//! principal, and one of them must be on the route's allow list *and* hold the scopes; a key
//! or token bound to the SVID is the same principal as the SVID. Then the tokens refused
//! outright: bound to a key the gateway cannot check (`cnf.jkt`), or not `at+jwt` where the
//! issuer requires it. And the access log's `caller`, which names the principal.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;
use crate::tokens::{FORM, signing_key};

/// A token subject that is personal data: it must never reach the log.
const PERSON: &str = "alice@example.com";
const SESSIONS: &str = "/v3/sessions/";
const REPORTS: &str = "/v3/reports/";
const BATCH_SECRET: &str = "batch-client-secret-for-principals";

/// An outside OAuth2 authorization server reduced to what the gateway sees of it: a P-256
/// key whose JWKS is served over HTTP on loopback, and tokens signed with it here, with
/// whatever header and claims a test needs. Each "tenant" is an issuer of its own that
/// shares the key.
struct OutsideIssuer {
    key: EcdsaKeyPair,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OutsideIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OutsideIssuer {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_| {
                        let body = Full::new(jwks.clone());
                        async move {
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(body)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { key, port, task }
    }

    fn issuer(&self, tenant: &str) -> String {
        format!("http://127.0.0.1:{}/{tenant}", self.port)
    }

    /// A token of `tenant` for `client_id` with `scope`, its subject a person; `typ` in the
    /// header when given, and `extra` claims merged in.
    fn token(
        &self,
        tenant: &str,
        typ: Option<&str>,
        client_id: &str,
        scope: &str,
        extra: Value,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = json!({"alg": "ES256", "kid": "outside-1"});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let mut claims = json!({
            "iss": self.issuer(tenant), "aud": "idgate", "sub": PERSON,
            "client_id": client_id, "scope": scope,
            "iat": now, "nbf": now, "exp": now + 300,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
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

/// A gateway with every kind of principal:
/// - its own token endpoint, with `onboarding` (the kyc SVID, `tls_client_auth`) and `batch`
///   (a secret alone), both granted `sessions:write`;
/// - two outside issuers on one key: `outside` (with `require_typ = "at+jwt"` when asked)
///   and `legacy`;
/// - API keys `bound` (bound to the kyc SVID) and `loose` (unbound), both `sessions:write`;
/// - `/v3/sessions/`: any of mtls, api_key, jwt; kyc workloads and `client:partner@outside`
///   allowed; POST needs `sessions:write`;
/// - `/v3/reports/`: jwt alone; kyc workloads and `client:partner@legacy` allowed.
///
/// Returns the gateway and the two keys.
async fn gateway(
    pki: &Pki,
    idp: &OutsideIssuer,
    upstream: &TestUpstream,
    require_typ: bool,
) -> (Gateway, String, String) {
    let dir = pki.path();
    let secret_file = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let pepper = secret_file("pepper", "0123456789abcdef0123456789abcdef-pepper");
    let batch_secret = secret_file("batch-secret", BATCH_SECRET);
    let jwks = format!("http://127.0.0.1:{}/jwks", idp.port);
    let issuer = |name: &str| {
        table([
            ("name", name.into()),
            ("issuer", idp.issuer(name).into()),
            ("jwks_uri", jwks.as_str().into()),
            ("audiences", strings(&["idgate"])),
            ("algorithms", strings(&["ES256"])),
        ])
    };
    let mut outside = issuer("outside");
    if require_typ {
        outside.insert("require_typ".into(), "at+jwt".into());
    }
    let clients = vec![
        toml::Value::from(table([
            ("client_id", "onboarding".into()),
            ("spiffe_id", ONBOARDING.into()),
            ("scopes", strings(&["sessions:write"])),
        ])),
        toml::Value::from(table([
            ("client_id", "batch".into()),
            (
                "client_secret",
                format!("file:{}", batch_secret.display()).into(),
            ),
            ("scopes", strings(&["sessions:write"])),
        ])),
    ];
    let spec = base_config(pki)
        .section(
            "api_keys",
            table([
                ("store", path_value(&dir.join("keys.redb"))),
                ("pepper", format!("file:{}", pepper.display()).into()),
            ]),
        )
        .section(
            "token_endpoint",
            table([
                ("issuer", "https://idgate.test".into()),
                ("audience", "idgate".into()),
                (
                    "signing_key",
                    format!("file:{}", signing_key(dir).display()).into(),
                ),
                ("clients", clients.into()),
            ]),
        )
        .section(
            "jwt_issuers",
            vec![
                toml::Value::from(outside),
                toml::Value::from(issuer("legacy")),
            ],
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::new(
                "sessions",
                &["GET", "POST"],
                SESSIONS,
                "provider",
                &["spiffe://example.org/ns/kyc/*", "client:partner@outside"],
            )
            .with(
                "auth",
                vec![toml::Value::from(
                    toml::toml! { any = ["mtls", "api_key", "jwt"] },
                )],
            )
            .with("scopes", toml::toml! { POST = ["sessions:write"] }),
        )
        .route(
            RouteSpec::new(
                "reports",
                &["GET"],
                REPORTS,
                "provider",
                &["spiffe://example.org/ns/kyc/*", "client:partner@legacy"],
            )
            .with("auth", strings(&["jwt"])),
        );
    let config = spec.to_toml();
    let config_path = dir.join("idgate.toml");
    std::fs::write(&config_path, &config).unwrap();
    let create = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(["keys", "create", "--config"])
            .arg(&config_path)
            .args(args)
            .env_remove("IDGATE_LOG");
        let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
        assert_eq!(code, 0, "{out}{err}");
        out.trim().to_owned()
    };
    let bound = create(&[
        "--name",
        "bound",
        "--scopes",
        "sessions:write",
        "--bind-spiffe",
        ONBOARDING,
    ]);
    let loose = create(&["--name", "loose", "--scopes", "sessions:write"]);
    let gw = Gateway::start(&spec, &[]).await;
    (gw, bound, loose)
}

/// A token from the gateway's own endpoint over `client`'s connection (so bound to its
/// certificate): by the SVID, or with `batch`'s secret when `basic` is set.
async fn own_token(client: &Client, basic: bool) -> String {
    let auth = format!("Basic {}", STANDARD.encode(format!("batch:{BATCH_SECRET}")));
    let mut headers = vec![FORM];
    if basic {
        headers.push(("authorization", &auth));
    }
    let reply = client
        .send(
            "POST",
            "/oauth2/token",
            &headers,
            "grant_type=client_credentials&scope=sessions%3Awrite",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

/// (status, problem type slug) of one request.
async fn ask(client: &Client, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let reply = client.send(method, path, headers, "").await.unwrap();
    let slug = if reply.status == 200 {
        String::new()
    } else {
        reply.json()["type"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    (reply.status, slug)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_different_principals_never_add_up() {
    within(async {
        let pki = Pki::default_pki();
        let idp = OutsideIssuer::start().await;
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let (gw, bound_key, loose_key) = gateway(&pki, &idp, &upstream, false).await;
        let kyc = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let web = Client::new(&pki, Some(FRONTEND), gw.port, false);

        let someone_else =
            bearer(&idp.token("outside", Some("at+jwt"), "someone-else", "sessions:write", json!({})));
        let someone_else_legacy =
            bearer(&idp.token("legacy", None, "someone-else", "sessions:write", json!({})));
        let partner =
            bearer(&idp.token("outside", Some("at+jwt"), "partner", "sessions:write", json!({})));
        // Both bound to the kyc certificate: one issued to the kyc workload, one to a client
        // that authenticated with its secret alone over the kyc connection.
        let own_onboarding = bearer(&own_token(&kyc, false).await);
        let own_batch = bearer(&own_token(&kyc, true).await);

        // (what, client, method, path, headers, status, problem)
        type Case<'a> = (&'a str, &'a Client, &'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
        let cases: Vec<Case<'_>> = vec![
            ("the SVID alone may read", &kyc, "GET", SESSIONS, vec![], 200, ""),
            ("the SVID alone holds no scope", &kyc, "POST", SESSIONS, vec![], 403, "insufficient-scope"),
            (
                "the SVID allowed, someone else's token holding the scope",
                &kyc, "POST", SESSIONS, vec![("authorization", &someone_else)], 403, "insufficient-scope",
            ),
            (
                "the SVID allowed, a token bound to its certificate but issued to a secret-only client",
                &kyc, "POST", SESSIONS, vec![("authorization", &own_batch)], 403, "insufficient-scope",
            ),
            (
                "the SVID allowed, an unbound key holding the scope",
                &kyc, "POST", SESSIONS, vec![("x-api-key", &loose_key)], 403, "insufficient-scope",
            ),
            (
                "a jwt-only route: the SVID is allowed, the token is someone else's",
                &kyc, "GET", REPORTS, vec![("authorization", &someone_else_legacy)], 403, "forbidden",
            ),
            (
                "a jwt-only route: a token bound to the kyc certificate for a secret-only client",
                &kyc, "GET", REPORTS, vec![("authorization", &own_batch)], 403, "forbidden",
            ),
            (
                "a token the gateway issued to the SVID, bound to its certificate",
                &kyc, "POST", SESSIONS, vec![("authorization", &own_onboarding)], 200, "",
            ),
            (
                "the same token on the jwt-only route that allows the SVID",
                &kyc, "GET", REPORTS, vec![("authorization", &own_onboarding)], 200, "",
            ),
            (
                "a key bound to the SVID",
                &kyc, "POST", SESSIONS, vec![("x-api-key", &bound_key)], 200, "",
            ),
            (
                "a token whose own client is allowed and holds the scope",
                &web, "POST", SESSIONS, vec![("authorization", &partner)], 200, "",
            ),
            (
                "the same token over the kyc connection",
                &kyc, "POST", SESSIONS, vec![("authorization", &partner)], 200, "",
            ),
        ];
        let mut wrong = Vec::new();
        for (what, client, method, path, headers, status, problem) in cases {
            let got = ask(client, method, path, &headers).await;
            if got != (status, problem.to_owned()) {
                wrong.push(format!("{what}: got {got:?}, want {status} {problem:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}\n{}", gw.output());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_bound_to_a_key_or_not_at_jwt_where_required_are_refused() {
    within(async {
        let pki = Pki::default_pki();
        let idp = OutsideIssuer::start().await;
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let (gw, _, _) = gateway(&pki, &idp, &upstream, true).await;
        let web = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let partner = |tenant: &str, typ: Option<&str>, extra: Value| {
            bearer(&idp.token(tenant, typ, "partner", "sessions:write", extra))
        };

        // A DPoP-bound token (RFC 9449) sent as a bearer token: the gateway cannot check the
        // proof, so it is no bearer token. Likewise any confirmation it does not know.
        for cnf in [
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
            json!({"kid": "device-key-1"}),
            json!("x5t#S256"),
        ] {
            let token = partner("legacy", Some("at+jwt"), json!({ "cnf": cnf }));
            let reply = web
                .send("GET", REPORTS, &[("authorization", &token)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, 401, "cnf {cnf}: {:?}", reply.body);
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
            assert!(
                reply.json()["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("/invalid-token")
            );
        }

        // An ID token (typ JWT) is refused by the issuer that requires at+jwt, in either
        // spelling accepted; the issuer without the option still takes it.
        for (typ, status) in [
            (Some("JWT"), 401),
            (None, 401),
            (Some("at+jwt"), 200),
            (Some("application/AT+JWT"), 200),
        ] {
            let token = partner("outside", typ, json!({}));
            let reply = web
                .send("POST", SESSIONS, &[("authorization", &token)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, status, "typ {typ:?}: {:?}", reply.body);
            if status == 401 {
                let challenge = reply.header("www-authenticate").unwrap_or_default();
                assert!(challenge.contains("at+jwt"), "{challenge}");
            }
        }
        let id_token = partner("legacy", Some("JWT"), json!({}));
        assert_eq!(
            ask(&web, "GET", REPORTS, &[("authorization", &id_token)]).await,
            (200, String::new())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_the_principal_on_every_request() {
    within(async {
        let pki = Pki::default_pki();
        let idp = OutsideIssuer::start().await;
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let (gw, bound_key, _) = gateway(&pki, &idp, &upstream, false).await;
        let kyc = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let web = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let partner = bearer(&idp.token(
            "outside",
            Some("at+jwt"),
            "partner",
            "sessions:write",
            json!({}),
        ));
        let someone_else =
            bearer(&idp.token("outside", Some("at+jwt"), "someone-else", "", json!({})));

        let both = format!("client:someone-else {ONBOARDING}");
        // (client, method, path, headers, status, caller logged)
        type Case<'a> = (
            &'a Client,
            &'a str,
            &'a str,
            Vec<(&'a str, &'a str)>,
            u16,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            // mTLS alone: the SVID.
            (&kyc, "GET", SESSIONS, vec![], 200, ONBOARDING),
            // Refused before authentication: the peer.
            (&web, "GET", REPORTS, vec![], 401, FRONTEND),
            (&web, "GET", "/nowhere", vec![], 404, FRONTEND),
            // Authorized by a token, a key: the client, the key.
            (
                &web,
                "POST",
                SESSIONS,
                vec![("authorization", &partner)],
                200,
                "client:partner",
            ),
            (
                &kyc,
                "POST",
                SESSIONS,
                vec![("x-api-key", &bound_key)],
                200,
                "apikey:bound",
            ),
            // Refused by authorization: every principal that authenticated.
            (
                &kyc,
                "POST",
                SESSIONS,
                vec![("authorization", &someone_else)],
                403,
                &both,
            ),
        ];
        let mut sent = Vec::new();
        for (client, method, path, headers, status, caller) in &cases {
            let reply = client.send(method, path, headers, "").await.unwrap();
            assert_eq!(reply.status, *status, "{method} {path}: {:?}", reply.body);
            sent.push((reply.header("x-request-id").unwrap().to_owned(), *caller));
        }
        assert_eventually!(
            log_lines(&gw, "idgate::access", "request").len() >= sent.len(),
            "access lines; output:\n{}",
            gw.output()
        );
        let lines = log_lines(&gw, "idgate::access", "request");
        for (rid, caller) in &sent {
            let line = lines
                .iter()
                .find(|l| l.get("request_id").and_then(Value::as_str) == Some(rid))
                .unwrap_or_else(|| panic!("no access line for {rid}: {lines:?}"));
            assert_eq!(
                line.get("caller").and_then(Value::as_str),
                Some(*caller),
                "{line:?}"
            );
        }
        assert!(
            !gw.output().contains(PERSON),
            "a token's subject (personal data) reached the log"
        );
    })
    .await;
}
