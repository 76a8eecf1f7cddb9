//! JWT access tokens from a real OAuth 2.0 server of the ecosystem: an Authlib
//! authorization server (`fixtures/authlib_server.py`, Flask integration, client credentials
//! grant, RFC 9068 tokens signed RS256, PS256, ES256 and EdDSA) on loopback. Tokens are
//! fetched with a real HTTP client and verified by `idgate_auth::jwt::JwtVerifier`, which
//! finds the JWKS through the server's discovery document; then the same tokens, tampered
//! with and forged in the ways attackers do, are refused.
//!
//! Authlib and Flask are installed by `scripts/setup-test-deps.sh`; missing, they fail the
//! test with that hint rather than skip it.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_auth::AuthFailure;
use idgate_auth::jwt::{Algorithm, IssuerConfig, JwtVerifier};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;

/// The authlib server takes a while to start.
const LIMIT: Duration = Duration::from_secs(90);

async fn within<T>(test: impl Future<Output = T>) -> T {
    within_limit(LIMIT, test).await
}
const AUDIENCE: &str = "idgate";
const SCOPES: &str = "sessions:read sessions:write";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/authlib_server.py")
}

/// The Authlib server as a child process; killed on drop (and it exits by itself when its
/// stdin closes, should the test process die first).
struct AuthlibIdp {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl Drop for AuthlibIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthlibIdp {
    fn start() -> Self {
        let (code, out, err) = run_bounded(
            Command::new("python3").args(["-c", "import authlib, flask"]),
            Duration::from_secs(30),
        );
        assert_eq!(
            code, 0,
            "python3 with Authlib and Flask is not usable here ({out}{err}); run scripts/setup-test-deps.sh to install the test dependencies"
        );
        let mut child = Command::new("python3")
            .arg(fixture())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Authlib server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep draining stderr (the request log), so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) if line.starts_with("READY ") => line["READY ".len()..].to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the Authlib server did not start ({other:?}):\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child,
            _stdin: stdin,
            issuer,
        }
    }

    fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A client credentials grant with HTTP Basic client authentication: the access token.
    async fn token(&self, client_id: &str, scope: &str) -> String {
        let basic = STANDARD.encode(format!("{client_id}:{client_id}-secret"));
        let form = format!(
            "grant_type=client_credentials&scope={}",
            scope.replace(' ', "+").replace(':', "%3A")
        );
        let (status, body) = http1(
            self.port(),
            http::Request::post("/oauth/token")
                .header("host", format!("127.0.0.1:{}", self.port()))
                .header("authorization", format!("Basic {basic}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "token endpoint: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["token_type"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("bearer")
        );
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn get(&self, path: &str) -> String {
        let (status, body) = http1(
            self.port(),
            http::Request::get(path)
                .header("host", format!("127.0.0.1:{}", self.port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A verifier for this issuer, its keys found through discovery.
    fn verifier(&self) -> JwtVerifier {
        JwtVerifier::new(
            vec![IssuerConfig::new(
                "authlib",
                &self.issuer,
                vec![AUDIENCE.into()],
            )],
            vec![],
        )
        .expect("verifier")
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
async fn http1(port: u16, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The refusal reason, or a panic if the token was accepted.
async fn refusal(v: &JwtVerifier, token: &str, now: SystemTime) -> &'static str {
    match v.verify(token, now).await {
        Err(AuthFailure::InvalidToken(why)) => why,
        Err(other) => panic!("unexpected failure {other:?}"),
        Ok(id) => panic!("a forged or unfit token was accepted: {id:?}"),
    }
}

#[tokio::test]
async fn authlib_client_credentials_tokens_are_accepted_for_every_algorithm() {
    within(async {
        let idp = AuthlibIdp::start();
        let v = idp.verifier();
        v.prefetch().await;
        for (client, alg, kid) in [
            ("svc-rs256", "RS256", "rsa-1"),
            ("svc-ps256", "PS256", "rsa-pss-1"),
            ("svc-es256", "ES256", "ec-1"),
            ("svc-eddsa", "EdDSA", "ed-1"),
        ] {
            let token = idp.token(client, SCOPES).await;
            let header = decode_json(token.split('.').next().unwrap());
            assert_eq!(
                (header["alg"].as_str(), header["kid"].as_str()),
                (Some(alg), Some(kid))
            );
            assert_eq!(header["typ"], "at+jwt", "Authlib issues RFC 9068 tokens");

            let now = SystemTime::now();
            let id = v
                .verify(&token, now)
                .await
                .unwrap_or_else(|e| panic!("{client} ({alg}): {e}: {token}"));
            assert_eq!(id.token.issuer, idp.issuer);
            assert_eq!(
                id.token.subject, client,
                "client credentials: sub is the client"
            );
            assert_eq!(id.token.client_id.as_deref(), Some(client));
            assert_eq!(id.token.scopes, ["sessions:read", "sessions:write"]);
            assert_eq!(id.cnf_x5t_s256, None);
            let lifetime = id.expires_at.duration_since(now).unwrap();
            assert!(lifetime > Duration::from_secs(500) && lifetime <= Duration::from_secs(601));
        }

        // A narrower grant carries only what was granted.
        let token = idp.token("svc-es256", "sessions:read").await;
        let id = v.verify(&token, SystemTime::now()).await.unwrap();
        assert_eq!(id.token.scopes, ["sessions:read"]);

        // The same keys through a configured jwks_uri instead of discovery, allowing only
        // ES256: the RS256 token is refused for its algorithm alone.
        let mut cfg = IssuerConfig::new("authlib-direct", &idp.issuer, vec![AUDIENCE.into()]);
        cfg.discovery = false;
        cfg.jwks_uri = Some(format!("{}/jwks", idp.issuer).parse().unwrap());
        cfg.algorithms = vec![Algorithm::ES256];
        let direct = JwtVerifier::new(vec![cfg], vec![]).unwrap();
        assert!(direct.verify(&token, SystemTime::now()).await.is_ok());
        let rs = idp.token("svc-rs256", SCOPES).await;
        assert_eq!(
            refusal(&direct, &rs, SystemTime::now()).await,
            "algorithm not allowed"
        );
    })
    .await;
}

#[tokio::test]
async fn tampered_expired_misaddressed_and_forged_authlib_tokens_are_refused() {
    within(async {
        let idp = AuthlibIdp::start();
        let v = idp.verifier();
        let now = SystemTime::now();
        let rs = idp.token("svc-rs256", "sessions:read").await;
        assert!(
            v.verify(&rs, now).await.is_ok(),
            "the untouched token is good"
        );
        let parts: Vec<String> = rs.split('.').map(str::to_owned).collect();
        let (header, claims) = (decode_json(&parts[0]), decode_json(&parts[1]));

        // Tampered payload: more scopes, same signature.
        let mut elevated = claims.clone();
        elevated["scope"] = json!("sessions:read sessions:write admin");
        let t = format!(
            "{}.{}.{}",
            parts[0],
            b64(elevated.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(refusal(&v, &t, now).await, "bad signature");
        let mut other_client = claims.clone();
        other_client["sub"] = json!("svc-es256");
        other_client["client_id"] = json!("svc-es256");
        let t = format!(
            "{}.{}.{}",
            parts[0],
            b64(other_client.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(refusal(&v, &t, now).await, "bad signature");

        // Tampered signature: one bit.
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        let mid = sig.len() / 2;
        sig[mid] ^= 0x01;
        let t = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert_eq!(refusal(&v, &t, now).await, "bad signature");

        // The header re-labelled PS256: rsa-1 is published as an RS256 key only.
        let mut ps = header.clone();
        ps["alg"] = json!("PS256");
        let t = format!(
            "{}.{}.{}",
            b64(ps.to_string().as_bytes()),
            parts[1],
            parts[2]
        );
        assert_eq!(refusal(&v, &t, now).await, "algorithm does not match key");

        // alg=none, with and without a signature part.
        for alg in ["none", "None"] {
            let mut none = header.clone();
            none["alg"] = json!(alg);
            let h = b64(none.to_string().as_bytes());
            for t in [
                format!("{h}.{}.", parts[1]),
                format!("{h}.{}.{}", parts[1], parts[2]),
            ] {
                assert_eq!(refusal(&v, &t, now).await, "algorithm not allowed");
            }
        }

        // Key confusion: HS256 keyed with the issuer's own public key, in every form an
        // attacker can download it — PEM, the JWK, the JWKS, the raw modulus.
        let pem = idp.get("/keys/rsa-1.pem").await;
        let jwks: Value = serde_json::from_str(&idp.get("/jwks").await).unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "rsa-1")
            .unwrap()
            .clone();
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let secrets: Vec<Vec<u8>> = vec![
            pem.clone().into_bytes(),
            pem.trim_end().as_bytes().to_vec(),
            jwk.to_string().into_bytes(),
            jwks.to_string().into_bytes(),
            n,
        ];
        for (alg, hmac) in [
            ("HS256", ring::hmac::HMAC_SHA256),
            ("HS384", ring::hmac::HMAC_SHA384),
            ("HS512", ring::hmac::HMAC_SHA512),
        ] {
            let mut hs = header.clone();
            hs["alg"] = json!(alg);
            let input = format!("{}.{}", b64(hs.to_string().as_bytes()), parts[1]);
            for secret in &secrets {
                let tag = ring::hmac::sign(&ring::hmac::Key::new(hmac, secret), input.as_bytes());
                let t = format!("{input}.{}", b64(tag.as_ref()));
                assert_eq!(refusal(&v, &t, now).await, "algorithm not allowed");
            }
        }

        // An attacker's own EC key: under the issuer's RSA kid, and with the key embedded in
        // the header (`jwk`), which is never trusted.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let attacker = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = attacker.public_key().as_ref();
        let sign = |h: &Value| {
            let input = format!("{}.{}", b64(h.to_string().as_bytes()), parts[1]);
            let sig = attacker.sign(&rng, input.as_bytes()).unwrap();
            format!("{input}.{}", b64(sig.as_ref()))
        };
        let t = sign(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}));
        assert_eq!(refusal(&v, &t, now).await, "algorithm does not match key");
        let t = sign(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "ec-1"}));
        assert_eq!(refusal(&v, &t, now).await, "bad signature");
        let embedded = json!({
            "alg": "ES256", "typ": "at+jwt", "kid": "attacker",
            "jwk": {"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}
        });
        assert_eq!(
            refusal(&v, &sign(&embedded), now).await,
            "unknown signing key"
        );

        // Time: the real token two hours on is expired; an hour before, not yet issued.
        let later = now + Duration::from_secs(2 * 3600);
        assert_eq!(refusal(&v, &rs, later).await, "expired");
        let earlier = now - Duration::from_secs(3600);
        assert_eq!(refusal(&v, &rs, earlier).await, "issued in the future");

        // Audience: Authlib issues svc-elsewhere's tokens for another API.
        let elsewhere = idp.token("svc-elsewhere", "sessions:read").await;
        assert_eq!(
            decode_json(elsewhere.split('.').nth(1).unwrap())["aud"],
            "another-api"
        );
        assert_eq!(refusal(&v, &elsewhere, now).await, "wrong audience");

        // Issuer: a gateway configured for another issuer (same keys) knows none of these.
        let mut cfg = IssuerConfig::new(
            "other",
            format!("{}/tenant-b", idp.issuer),
            vec![AUDIENCE.into()],
        );
        cfg.discovery = false;
        cfg.jwks_uri = Some(format!("{}/jwks", idp.issuer).parse().unwrap());
        let other = JwtVerifier::new(vec![cfg], vec![]).unwrap();
        assert_eq!(refusal(&other, &rs, now).await, "unknown issuer");

        // Size: the real token padded past 16 KiB.
        let mut fat = claims.clone();
        fat["pad"] = json!("x".repeat(16 * 1024));
        let t = format!(
            "{}.{}.{}",
            parts[0],
            b64(fat.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(refusal(&v, &t, now).await, "token too large");

        // Structure: too few or too many parts.
        assert_eq!(
            refusal(&v, &format!("{}.{}", parts[0], parts[1]), now).await,
            "malformed"
        );
        assert_eq!(
            refusal(&v, &format!("{rs}.{}", parts[2]), now).await,
            "malformed"
        );

        // And the original still verifies after all that.
        assert!(v.verify(&rs, now).await.is_ok());
    })
    .await;
}

/// The whole way through a running gateway: `[[jwt_issuers]]` naming the Authlib server
/// (keys by discovery), a route with `auth = ["mtls", "jwt"]` that allows one OAuth2 client
/// with one scope.
#[tokio::test]
async fn gateway_accepts_authlib_tokens_on_a_jwt_route_and_refuses_forgeries() {
    within(async {
        let idp = AuthlibIdp::start();
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let issuer = table([
            ("name", "authlib".into()),
            ("issuer", idp.issuer.as_str().into()),
            ("audiences", strings(&[AUDIENCE])),
            ("algorithms", strings(&["RS256", "ES256"])),
        ]);
        let mut config = jwt_config(&pki, &upstream, issuer, "client:svc-es256");
        config.routes[0]
            .extra
            .insert("scopes".into(), strings(&["sessions:read"]));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let path = "/v3/session/s-1/decision/";
        let get = |token: String| {
            let client = client.clone();
            async move {
                let auth = format!("Bearer {token}");
                client
                    .send("GET", path, &[("authorization", &auth)], "")
                    .await
                    .unwrap()
            }
        };

        let good = idp.token("svc-es256", "sessions:read").await;
        let reply = get(good.clone()).await;
        assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, gw.output());
        let seen = upstream.last();
        assert_eq!(seen.path_and_query, path);
        assert!(
            seen.headers.get("authorization").is_none(),
            "the caller's token must not reach the provider"
        );

        // No token at all: a Bearer challenge without an error code (RFC 6750 §3.1).
        let reply = client.get(path).await.unwrap();
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap_or("")
                .contains("Bearer")
        );

        let parts: Vec<&str> = good.split('.').collect();
        let mut claims = decode_json(parts[1]);
        claims["scope"] = json!("sessions:read sessions:write");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        );
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "at+jwt"})
                .to_string()
                .as_bytes()),
            parts[1]
        );
        let elsewhere = idp.token("svc-elsewhere", "sessions:read").await;
        let ps256 = idp.token("svc-ps256", "sessions:read").await;
        for (what, token) in [
            ("tampered", tampered),
            ("alg=none", none),
            ("wrong audience", elsewhere),
            ("algorithm not allowed here", ps256),
        ] {
            let reply = get(token).await;
            assert_eq!(reply.status, 401, "{what}: {:?}", reply.body);
            let challenge = reply.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{what}: {challenge}"
            );
        }

        // Valid tokens that the route does not allow: another client, a missing scope.
        let other_client = idp.token("svc-rs256", "sessions:read").await;
        assert_eq!(get(other_client).await.status, 403);
        let write_only = idp.token("svc-es256", "sessions:write").await;
        let reply = get(write_only).await;
        assert_eq!(reply.status, 403, "{:?}", reply.body);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap_or("")
                .contains("insufficient_scope")
        );

        assert_eq!(
            upstream.requests().len(),
            1,
            "only the good token reached the provider"
        );
    })
    .await;
}

/// Keys are fetched when the gateway starts, before any token: an issuer that cannot be
/// reached shows in the log at once, not with the first caller.
#[tokio::test]
async fn the_gateway_fetches_issuer_keys_at_start_up_and_logs_a_failure() {
    within(async {
        let jwks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_port = jwks.local_addr().unwrap().port();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let asked2 = asked.clone();
        // Accepts and hangs up: every fetch fails.
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = jwks.accept().await {
                asked2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(tcp);
            }
        });
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let issuer = table([
            ("name", "unreachable".into()),
            ("issuer", format!("http://127.0.0.1:{jwks_port}").into()),
            (
                "jwks_uri",
                format!("http://127.0.0.1:{jwks_port}/jwks.json").into(),
            ),
            ("audiences", strings(&[AUDIENCE])),
        ]);
        let config = jwt_config(&pki, &upstream, issuer, "client:svc");
        let gw = Gateway::start(&config, &[]).await;
        assert_eventually!(
            asked.load(std::sync::atomic::Ordering::SeqCst) > 0
                && gw
                    .output()
                    .contains("cannot fetch the issuer's signing keys"),
            "no fetch at start-up:\n{}",
            gw.output()
        );
        server.abort();
    })
    .await;
}

/// One JWT issuer and `GET /v3/session/{id}/decision/` taking mTLS or a JWT, allowed for
/// `allow`.
fn jwt_config(
    pki: &Pki,
    upstream: &TestUpstream,
    issuer: toml::Table,
    allow: &str,
) -> GatewayConfig {
    base_config(pki)
        .section("jwt_issuers", vec![toml::Value::from(issuer)])
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::new(
                "decision",
                &["GET"],
                "/v3/session/{id}/decision/",
                "provider",
                &[allow],
            )
            .with("auth", strings(&["mtls", "jwt"])),
        )
}
