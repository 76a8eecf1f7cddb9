//! The `jwt_svid` layer: callers without a client certificate (behind a proxy that ended
//! their TLS) present a SPIFFE JWT-SVID, verified against a bundle file. curl, Python
//! `requests` and the test client over real TLS; the bundle file changed and reloaded by
//! SIGHUP and by the watch; `idgate check`; rate limits per JWT-SVID workload.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;

const AUDIENCE: &str = "spiffe://example.org/idgate";
const PATH: &str = "/v3/session/abc-123/decision/";

/// A JWT-SVID signing key of a trust domain, as SPIRE holds one.
struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self {
            kid: kid.to_owned(),
            pair,
        }
    }

    /// The bundle entry: the public key, `use: jwt-svid`.
    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "jwt-svid",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
        })
    }

    /// An ES256 JWT-SVID for `sub` and `aud`, expiring `ttl` from now (negative: expired).
    fn mint(&self, sub: &str, aud: &str, ttl: i64) -> String {
        self.mint_typed("JWT", sub, aud, ttl)
    }

    /// As [`Self::mint`], with the header's `typ` (`JWT` or `JOSE` for a JWT-SVID).
    fn mint_typed(&self, typ: &str, sub: &str, aud: &str, ttl: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": typ});
        let claims = json!({"sub": sub, "aud": [aud], "exp": now + ttl, "iat": now - 1});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// A SPIFFE bundle holding `keys`, with an X.509 authority beside them as SPIRE publishes.
fn bundle(keys: &[&SigningKey]) -> Vec<u8> {
    let mut entries: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
    entries.push(
        json!({"kty": "EC", "crv": "P-256", "use": "x509-svid", "x5c": ["MIIB"],
        "x": "AA", "y": "AA"}),
    );
    json!({"keys": entries, "spiffe_sequence": 1})
        .to_string()
        .into_bytes()
}

fn replace_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("rotating");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A configuration whose route takes JWT-SVIDs of `ns/kyc/*` workloads, with example.org's
/// bundle in `bundle_file`; the listener does not ask for client certificates to be
/// required, as behind a proxy that ends the callers' TLS.
fn config(pki: &Pki, upstream: &TestUpstream, bundle_file: &Path) -> GatewayConfig {
    let mut config = base_config(pki)
        .section(
            "jwt_svid",
            table([
                ("audiences", strings(&[AUDIENCE])),
                (
                    "bundles",
                    toml::Value::Array(vec![
                        table([
                            ("trust_domain", TD.into()),
                            ("file", path_value(bundle_file)),
                        ])
                        .into(),
                    ]),
                ),
            ]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::new(
                "decision",
                &["GET"],
                "/v3/session/{id}/decision/",
                "provider",
                &["spiffe://example.org/ns/kyc/*"],
            )
            .with("auth", strings(&["jwt_svid"])),
        );
    config.listener.client_auth = ClientAuth::Optional;
    config
}

async fn gateway(pki: &Pki, upstream: &TestUpstream, bundle_file: &Path) -> Gateway {
    Gateway::start(&config(pki, upstream, bundle_file), &[]).await
}

async fn get_with(client: &Client, token: &str) -> Reply {
    client
        .send(
            "GET",
            PATH,
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await
        .unwrap()
}

/// curl (OpenSSL) without a client certificate, the token in `Authorization: Bearer`:
/// (status, response headers, body).
async fn curl(ca: PathBuf, url: String, token: String) -> (String, String, String) {
    tokio::task::spawn_blocking(move || {
        let headers = tempfile::NamedTempFile::new().unwrap();
        let (code, out, err) = run_bounded(
            Command::new("curl")
                .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "-D"])
                .arg(headers.path())
                .arg("--cacert")
                .arg(&ca)
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(&url),
            Duration::from_secs(30),
        );
        assert_eq!(
            code, 0,
            "curl failed ({err}); scripts/setup-test-deps.sh installs it"
        );
        let (body, status) = out.rsplit_once('\n').unwrap();
        (
            status.to_owned(),
            std::fs::read_to_string(headers.path()).unwrap(),
            body.to_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_a_valid_jwt_svid_reaches_the_upstream_and_is_logged_by_its_spiffe_id() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let key = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&key])).unwrap();
        let mut gw = Gateway::start(&config(&pki, &upstream, &bundle_file), &[TRACE_LOG]).await;

        let token = key.mint(ONBOARDING, AUDIENCE, 300);
        let (status, _, body) = curl(pki.files.bundle.clone(), gw.url(PATH), token.clone()).await;
        assert_eq!(status, "200", "{body}\n{}", gw.output());
        let seen = upstream.last();
        assert_eq!(seen.path_and_query, PATH);
        // The token is the gateway's business, never the provider's.
        assert!(seen.headers.get("authorization").is_none());

        let lines = || log_lines(&gw, "idgate::access", "request");
        assert_eventually!(
            !lines().is_empty(),
            "no access line; output:\n{}",
            gw.output()
        );
        assert_eq!(
            lines()[0].get("caller").and_then(Value::as_str),
            Some(format!("jwt-svid:{ONBOARDING}").as_str()),
            "{:?}",
            lines()
        );
        // Nor its signature alone.
        let signature = token.rsplit('.').next().unwrap();
        gw.assert_never_logged(&[&token, signature]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_audience_expired_other_trust_domain_and_unknown_kid_get_401() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let key = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&key])).unwrap();
        let gw = gateway(&pki, &upstream, &bundle_file).await;
        let client = Client::new(&pki, None, gw.port, false);
        let h2 = Client::new(&pki, None, gw.port, true);

        let stranger = SigningKey::new("spire-9");
        let cases = [
            (
                key.mint(ONBOARDING, "spiffe://example.org/other", 300),
                "wrong audience",
            ),
            (key.mint(ONBOARDING, AUDIENCE, -120), "expired"),
            (
                key.mint("spiffe://partner.org/ns/kyc/sa/x", AUDIENCE, 300),
                "untrusted trust domain",
            ),
            (
                stranger.mint(ONBOARDING, AUDIENCE, 300),
                "unknown signing key",
            ),
        ];
        for (token, why) in &cases {
            for c in [&client, &h2] {
                let reply = get_with(c, token).await;
                assert_eq!(reply.status, 401, "{why}: {:?}", reply.body);
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json")
                );
                let challenge = reply.header("www-authenticate").unwrap();
                assert!(
                    challenge.starts_with("Bearer ")
                        && challenge.contains("error=\"invalid_token\"")
                        && challenge.contains(&format!("error_description=\"{why}\"")),
                    "{why}: {challenge}"
                );
                assert!(!String::from_utf8_lossy(&reply.body).contains(token.as_str()));
            }
        }
        // curl sees the same refusal.
        let (status, headers, _) =
            curl(pki.files.bundle.clone(), gw.url(PATH), cases[0].0.clone()).await;
        assert_eq!(status, "401");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{headers}"
        );
        // No token at all: the challenge asks for one.
        let reply = client.get(PATH).await.unwrap();
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer ")
        );
        // An allowed trust domain, a workload the route does not allow.
        let reply = get_with(&client, &key.mint(FRONTEND, AUDIENCE, 300)).await;
        assert_eq!(reply.status, 403);
        assert!(upstream.requests().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_bundle_file_lets_a_new_key_in_and_a_broken_one_keeps_the_old() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let old = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&old])).unwrap();
        let gw = gateway(&pki, &upstream, &bundle_file).await;
        let client = Client::new(&pki, None, gw.port, false);

        let new = SigningKey::new("spire-2");
        let new_token = new.mint(ONBOARDING, AUDIENCE, 300);
        let old_token = old.mint(ONBOARDING, AUDIENCE, 300);
        assert_eq!(get_with(&client, &new_token).await.status, 401);

        // A broken bundle file: the reload is refused and logged; the old key still works.
        replace_atomically(&bundle_file, b"{\"keys\": [");
        gw.signal("HUP");
        assert_eventually!(
            gw.output().contains("jwt_svid.bundles[0].file"),
            "the broken bundle was not reported; output:\n{}",
            gw.output()
        );
        assert_eq!(get_with(&client, &old_token).await.status, 200);

        // The key rotated in (SIGHUP): both keys are trusted while both are published.
        replace_atomically(&bundle_file, &bundle(&[&old, &new]));
        gw.signal("HUP");
        assert_eventually!(
            get_with(&client, &new_token).await.status == 200,
            "the new key was not let in; output:\n{}",
            gw.output()
        );
        assert_eq!(get_with(&client, &old_token).await.status, 200);

        // The old key withdrawn, noticed by the file watch alone.
        replace_atomically(&bundle_file, &bundle(&[&new]));
        assert_eventually!(
            get_with(&client, &old_token).await.status == 401,
            "the withdrawn key still works; output:\n{}",
            gw.output()
        );
        assert_eq!(get_with(&client, &new_token).await.status, 200);
    })
    .await;
}

/// `{ any = ["jwt", "jwt_svid"] }`: a token of a configured issuer is judged as an access
/// token, any other as a JWT-SVID, and each refusal gives the reason of its own kind.
#[tokio::test(flavor = "multi_thread")]
async fn any_of_jwt_and_jwt_svid_judges_each_token_by_its_kind() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let key = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&key])).unwrap();
        let signing = crate::tokens::signing_key(pki.path());
        let client = table([
            ("client_id", "onboarding".into()),
            ("spiffe_id", ONBOARDING.into()),
        ]);
        let mut config = base_config(&pki)
            .section(
                "token_endpoint",
                table([
                    ("issuer", "https://idgate.test".into()),
                    ("audience", "idgate".into()),
                    ("signing_key", format!("file:{}", signing.display()).into()),
                    ("clients", toml::Value::Array(vec![client.into()])),
                ]),
            )
            .section(
                "jwt_svid",
                table([
                    ("audiences", strings(&[AUDIENCE])),
                    (
                        "bundles",
                        toml::Value::Array(vec![
                            table([
                                ("trust_domain", TD.into()),
                                ("file", path_value(&bundle_file)),
                            ])
                            .into(),
                        ]),
                    ),
                ]),
            )
            .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
            .route(
                RouteSpec::new(
                    "decision",
                    &["GET"],
                    "/v3/session/{id}/decision/",
                    "provider",
                    &["spiffe://example.org/ns/kyc/*"],
                )
                .with(
                    "auth",
                    toml::Value::Array(vec![
                        table([("any", strings(&["jwt", "jwt_svid"]))]).into(),
                    ]),
                ),
            );
        config.listener.client_auth = ClientAuth::Optional;
        let gw = Gateway::start(&config, &[]).await;
        let with_svid = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let anonymous = Client::new(&pki, None, gw.port, false);

        // An access token of the gateway's own endpoint, bound to the onboarding certificate.
        let reply = with_svid
            .send(
                "POST",
                "/oauth2/token",
                &[crate::tokens::FORM],
                "grant_type=client_credentials",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let access = reply.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(get_with(&with_svid, &access).await.status, 200);
        // Judged as an access token, not retried as a JWT-SVID: the binding refuses it.
        let reply = get_with(&anonymous, &access).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("certificate binding mismatch"),
            "{:?}",
            reply.headers
        );

        // A JWT-SVID, without a certificate; also typed `JOSE`, which no access token is.
        assert_eq!(
            get_with(&anonymous, &key.mint(ONBOARDING, AUDIENCE, 300))
                .await
                .status,
            200
        );
        assert_eq!(
            get_with(
                &anonymous,
                &key.mint_typed("JOSE", ONBOARDING, AUDIENCE, 300)
            )
            .await
            .status,
            200
        );
        let reply = get_with(&anonymous, &key.mint(ONBOARDING, "idgate", 300)).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("error_description=\"wrong audience\""),
            "{:?}",
            reply.headers
        );
        assert_eq!(upstream.requests().len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idgate_check_reads_the_bundle_files_and_names_a_broken_one() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let bundle_file = pki.path().join("jwt-bundle.json");
    std::fs::write(&bundle_file, bundle(&[&SigningKey::new("spire-1")])).unwrap();
    let file = pki.path().join("idgate.toml");
    std::fs::write(&file, config(&pki, &upstream, &bundle_file).to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // A bundle without a jwt-svid key is valid (the trust domain revoked its keys), and
    // said so.
    std::fs::write(&bundle_file, bundle(&[])).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("the bundle has no jwt-svid key"), "{err}");

    // A jwt-svid key without the kid the specification requires.
    let mut key = SigningKey::new("spire-1").jwk();
    key.as_object_mut().unwrap().remove("kid");
    std::fs::write(&bundle_file, json!({"keys": [key]}).to_string()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("jwt_svid.bundles[0].file") && err.contains("must have a kid"),
        "{err}"
    );
}

/// Behind one proxy (no client certificate at all here), each JWT-SVID's workload has its
/// own rate-limit budget: the limit keyed by `spiffe_id` counts the token's subject.
#[tokio::test(flavor = "multi_thread")]
async fn a_spiffe_id_rate_limit_counts_each_jwt_svid_workload_apart() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let key = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&key])).unwrap();
        let per_workload = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id"])),
            ("rate", "2/h".into()),
        ]);
        let mut config = config(&pki, &upstream, &bundle_file)
            .section("rate_limits", toml::Value::Array(vec![per_workload.into()]));
        config.routes[0] = config.routes[0]
            .clone()
            .with("rate_limits", strings(&["per-workload"]));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, None, gw.port, false);

        let onboarding = key.mint(ONBOARDING, AUDIENCE, 300);
        let other = key.mint("spiffe://example.org/ns/kyc/sa/review", AUDIENCE, 300);
        for _ in 0..2 {
            assert_eq!(get_with(&client, &onboarding).await.status, 200);
        }
        assert_eq!(get_with(&client, &onboarding).await.status, 429);
        // Another workload through the same connection-less path still has its budget.
        assert_eq!(get_with(&client, &other).await.status, 200);
    })
    .await;
}

/// Python `requests` (another TLS stack and HTTP client) with `Authorization: Bearer`:
/// status, `WWW-Authenticate`, then the body.
async fn python_get(ca: PathBuf, url: String, token: String) -> String {
    const SCRIPT: &str = r#"
import sys, requests
url, ca, token = sys.argv[1], sys.argv[2], sys.argv[3]
r = requests.get(url, verify=ca, timeout=20, headers={"Authorization": "Bearer " + token})
print(r.status_code)
print(r.headers.get("www-authenticate", "-"))
print(r.text)
"#;
    tokio::task::spawn_blocking(move || {
        let (code, out, err) = run_bounded(
            Command::new("python3")
                .args(["-c", SCRIPT, &url])
                .arg(&ca)
                .arg(&token),
            Duration::from_secs(30),
        );
        assert_eq!(
            code, 0,
            "python3 with requests failed ({err}); scripts/setup-test-deps.sh installs it"
        );
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_with_a_jwt_svid_gets_200_and_with_a_wrong_audience_401() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let key = SigningKey::new("spire-1");
        let bundle_file = pki.path().join("jwt-bundle.json");
        std::fs::write(&bundle_file, bundle(&[&key])).unwrap();
        let gw = gateway(&pki, &upstream, &bundle_file).await;

        let good = key.mint(ONBOARDING, AUDIENCE, 300);
        let out = python_get(pki.files.bundle.clone(), gw.url(PATH), good).await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("200"), "{out}");
        assert_eq!(upstream.last().path_and_query, PATH);

        let wrong = key.mint(ONBOARDING, "spiffe://example.org/reports", 300);
        let out = python_get(pki.files.bundle.clone(), gw.url(PATH), wrong).await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("401"), "{out}");
        assert!(
            lines.next().is_some_and(
                |c| c.contains("error=\"invalid_token\"") && c.contains("wrong audience")
            ),
            "{out}"
        );
        assert_eq!(upstream.requests().len(), 1);
    })
    .await;
}
