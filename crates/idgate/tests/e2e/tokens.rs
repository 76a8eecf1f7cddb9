//! The built-in OAuth2 token endpoint: client credentials with the caller's SVID or a client
//! secret, tokens bound to the client certificate (RFC 8705), JWKS and metadata.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::assert_eventually;
use crate::support::*;

pub(crate) const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

pub(crate) fn signing_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("token-signing.pem");
    std::fs::write(&path, idgate_auth::issuer::generate_es256_pem().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// A gateway with a token endpoint (listener `client_auth` as given), one client
/// authenticated by the onboarding SVID and one by a secret, and a route that accepts
/// bound tokens with the `sessions:read` scope.
pub(crate) async fn token_gateway(
    pki: &Pki,
    client_auth: ClientAuth,
    upstream: &TestUpstream,
) -> Gateway {
    token_gateway_signing_with(pki, client_auth, upstream, &signing_key(pki.path())).await
}

/// [`token_gateway`] logging at `trace`, for the tests that search its log for secrets.
async fn token_gateway_tracing(
    pki: &Pki,
    client_auth: ClientAuth,
    upstream: &TestUpstream,
) -> Gateway {
    let config = token_config(pki, client_auth, upstream, &signing_key(pki.path()));
    Gateway::start(&config, &[TRACE_LOG]).await
}

/// [`token_gateway`] with the signing key at `key`.
async fn token_gateway_signing_with(
    pki: &Pki,
    client_auth: ClientAuth,
    upstream: &TestUpstream,
    key: &std::path::Path,
) -> Gateway {
    Gateway::start(&token_config(pki, client_auth, upstream, key), &[]).await
}

/// The configuration of [`token_gateway`], with the signing key at `key`.
fn token_config(
    pki: &Pki,
    client_auth: ClientAuth,
    upstream: &TestUpstream,
    key: &std::path::Path,
) -> GatewayConfig {
    let secret = pki.path().join("batch-secret");
    std::fs::write(&secret, "batch-client-secret-value").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secret = format!("file:{}", secret.display());
    let clients = [
        table([
            ("client_id", "onboarding".into()),
            ("spiffe_id", ONBOARDING.into()),
            ("scopes", strings(&["sessions:read", "sessions:write"])),
        ]),
        table([
            ("client_id", "batch".into()),
            ("client_secret", secret.as_str().into()),
            ("scopes", strings(&["sessions:read"])),
        ]),
        table([
            ("client_id", "paired".into()),
            ("spiffe_id", ONBOARDING.into()),
            ("client_secret", secret.as_str().into()),
            ("scopes", strings(&["sessions:read"])),
        ]),
    ];
    let mut config = base_config(pki)
        .section(
            "token_endpoint",
            table([
                ("issuer", "https://idgate.test".into()),
                ("audience", "idgate".into()),
                ("signing_key", format!("file:{}", key.display()).into()),
                ("token_ttl", "5m".into()),
                ("clients", clients.map(toml::Value::from).to_vec().into()),
            ]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::new(
                "decision",
                &["GET"],
                "/v3/session/{id}/decision/",
                "provider",
                &["client:onboarding", "client:batch"],
            )
            .with("auth", strings(&["jwt"]))
            .with("scopes", strings(&["sessions:read"])),
        );
    config.listener.client_auth = client_auth;
    config
}

/// `POST /oauth2/token`: the client credentials grant, asking for `sessions:read`.
async fn ask_token(client: &Client) -> Reply {
    client
        .send(
            "POST",
            "/oauth2/token",
            &[FORM],
            "grant_type=client_credentials&scope=sessions%3Aread",
        )
        .await
        .unwrap()
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("JWT");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn thumbprint(cert_pem: &std::path::Path) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert_pem).unwrap();
    B64.encode(ring::digest::digest(&ring::digest::SHA256, &der))
}

#[tokio::test]
async fn workload_gets_a_token_bound_to_its_certificate_with_its_svid() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let gw = token_gateway(&pki, ClientAuth::Required, &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let reply = ask_token(&client).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "sessions:read");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["client_id"], "onboarding");
    assert_eq!(c["iss"], "https://idgate.test");
    assert_eq!(c["aud"], "idgate");
    let (cert, _) = pki.workload(ONBOARDING);
    assert_eq!(c["cnf"]["x5t#S256"], thumbprint(&cert));
    assert!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap() <= 300);
}

#[tokio::test]
async fn token_endpoint_refuses_bad_requests_with_oauth_errors() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let mut gw = token_gateway_tracing(&pki, ClientAuth::Optional, &upstream).await;
    let svid = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let other = Client::new(&pki, Some(FRONTEND), gw.port, false);
    let anonymous = Client::new(&pki, None, gw.port, false);
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };

    // (client, extra headers, form body, status, OAuth error)
    type Case<'a> = (&'a Client, Vec<(&'a str, String)>, &'a str, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            &svid,
            vec![],
            "grant_type=password&username=a",
            400,
            "unsupported_grant_type",
        ),
        (
            &svid,
            vec![],
            "scope=sessions%3Aread",
            400,
            "invalid_request",
        ),
        (
            &svid,
            vec![],
            "grant_type=client_credentials&scope=admin",
            400,
            "invalid_scope",
        ),
        (
            &svid,
            vec![],
            "grant_type=client_credentials&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        // A workload whose SVID is not a registered client.
        (
            &other,
            vec![],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        // The right secret but no certificate to bind the token to.
        (
            &anonymous,
            vec![("authorization", basic("batch", "batch-client-secret-value"))],
            "grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            &other,
            vec![("authorization", basic("batch", "wrong"))],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            &other,
            vec![(
                "authorization",
                basic("nobody", "batch-client-secret-value"),
            )],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        // The right secret of a client registered with a SPIFFE ID, from another workload;
        // then from its own.
        (
            &other,
            vec![(
                "authorization",
                basic("paired", "batch-client-secret-value"),
            )],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            &svid,
            vec![(
                "authorization",
                basic("paired", "batch-client-secret-value"),
            )],
            "grant_type=client_credentials",
            200,
            "",
        ),
    ];
    for (client, extra, body, status, error) in cases {
        let mut headers = vec![FORM];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let reply = client
            .send("POST", "/oauth2/token", &headers, body)
            .await
            .unwrap();
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
        let json = reply.json();
        if status == 200 {
            assert!(json["access_token"].is_string());
            continue;
        }
        assert_eq!(json["error"], error, "{body}");
        assert_eq!(json["status"], status);
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("batch-client-secret-value"));
        if status == 401 {
            // Every 401 names the scheme the endpoint takes, whatever way the client tried.
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Basic realm=\"idgate\""),
                "{extra:?}"
            );
        }
    }

    // The secret-authenticated client gets a token bound to whatever certificate it holds.
    let reply = other
        .send(
            "POST",
            "/oauth2/token",
            &[
                FORM,
                (
                    "authorization",
                    &basic("batch", "batch-client-secret-value"),
                ),
            ],
            "grant_type=client_credentials",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (cert, _) = pki.workload(FRONTEND);
    assert_eq!(
        claims(reply.json()["access_token"].as_str().unwrap())["cnf"]["x5t#S256"],
        thumbprint(&cert)
    );
    // Nor in the form it travelled in, inside `Authorization: Basic`.
    let header = basic("batch", "batch-client-secret-value");
    let encoded = header.trim_start_matches("Basic ");
    gw.assert_never_logged(&["batch-client-secret-value", encoded])
        .await;
}

/// A PKCS#8 RSA key of `bits` made by `openssl` at `path`, readable by its owner only.
fn rsa_key(path: &std::path::Path, bits: u32) {
    let bits = format!("rsa_keygen_bits:{bits}");
    let out = path.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        &bits,
        "-out",
        out,
    ]);
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// An RSA key made by `openssl`: the token is signed RS256, OpenSSL verifies it with the
/// key's public half, the published JWK carries that key's modulus and exponent (and nothing
/// private), and the gateway takes the token on its own JWT route.
#[tokio::test]
async fn an_rsa_signing_key_issues_rs256_tokens_that_openssl_verifies_and_the_gateway_takes() {
    let pki = Pki::default_pki();
    let dir = pki.path();
    let key = dir.join("token-rsa.pem");
    rsa_key(&key, 2048);
    let k = key.to_str().unwrap();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let gw = token_gateway_signing_with(&pki, ClientAuth::Required, &upstream, &key).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let reply = ask_token(&client).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");

    // OpenSSL, with the public half of the key, verifies the signature over `header.claims`.
    let (input, sig, public) = (dir.join("input"), dir.join("sig"), dir.join("public.pem"));
    std::fs::write(&input, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(&sig, B64.decode(parts[2]).unwrap()).unwrap();
    let (public_s, sig_s, input_s) = (
        public.to_str().unwrap(),
        sig.to_str().unwrap(),
        input.to_str().unwrap(),
    );
    openssl(&["pkey", "-in", k, "-pubout", "-out", public_s]);
    let (code, out, err) = run(std::process::Command::new("openssl").args([
        "dgst",
        "-sha256",
        "-verify",
        public_s,
        "-signature",
        sig_s,
        input_s,
    ]));
    assert_eq!((code, out.trim()), (0, "Verified OK"), "{err}");

    // The JWKS publishes that key: its modulus, the exponent 65537, never a private member.
    let jwks = client.get("/.well-known/jwks.json").await.unwrap().json();
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["alg"].as_str()),
        (Some("RSA"), Some("RS256"))
    );
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(header["kid"], jwk["kid"]);
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(jwk.get(private).is_none(), "{private} published: {jwk}");
    }
    let (_, modulus, _) =
        run(std::process::Command::new("openssl").args(["rsa", "-in", k, "-noout", "-modulus"]));
    let n = B64.decode(jwk["n"].as_str().unwrap()).unwrap();
    assert_eq!(
        modulus.trim().strip_prefix("Modulus="),
        Some(idgate_codec::hex::encode(&n).to_uppercase().as_str())
    );
    let meta = client
        .get("/.well-known/oauth-authorization-server")
        .await
        .unwrap()
        .json();
    assert_eq!(
        meta["access_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );

    // The gateway's own route takes the token over the certificate it is bound to.
    let auth = format!("Bearer {token}");
    let reply = client
        .send(
            "GET",
            "/v3/session/s-1/decision/",
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// An RSA key under 2048 bits is refused before the gateway starts, at its key, with what
/// would do.
#[tokio::test]
async fn an_rsa_signing_key_under_2048_bits_is_refused_at_its_key() {
    let pki = Pki::default_pki();
    let key = pki.path().join("token-rsa-1024.pem");
    rsa_key(&key, 1024);
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let file = pki.path().join("idgate.toml");
    let config = token_config(&pki, ClientAuth::Required, &upstream, &key);
    std::fs::write(&file, config.to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let expected = format!(
        "{}: token_endpoint.signing_key: the signing key is not a P-256 (ES256), an Ed25519 (EdDSA) or an RSA key of 2048 to 4096 bits (RS256)",
        file.display()
    );
    assert!(err.contains(&expected), "{err}");
}

#[tokio::test]
async fn jwks_and_metadata_are_published_without_a_client_certificate() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let gw = token_gateway(&pki, ClientAuth::Optional, &upstream).await;
    let anonymous = Client::new(&pki, None, gw.port, true);
    let jwks = anonymous.get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(jwks.status, 200);
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(
        keys[0].get("d").is_none(),
        "the private key must never be published"
    );
    let meta = anonymous
        .get("/.well-known/oauth-authorization-server")
        .await
        .unwrap()
        .json();
    assert_eq!(meta["issuer"], "https://idgate.test");
    assert_eq!(meta["token_endpoint"], "https://idgate.test/oauth2/token");
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
}

#[tokio::test]
async fn bound_token_works_over_its_own_certificate_and_is_refused_over_another() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let mut gw = token_gateway_tracing(&pki, ClientAuth::Optional, &upstream).await;
    let owner = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let thief = Client::new(&pki, Some(FRONTEND), gw.port, false);
    let anonymous = Client::new(&pki, None, gw.port, false);

    let reply = ask_token(&owner).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    let ok = owner
        .send(
            "GET",
            "/v3/session/s1/decision/",
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{:?} {}", ok.body, gw.output());
    assert!(
        upstream.last().headers.get("authorization").is_none(),
        "the token must not reach the provider"
    );

    for client in [&thief, &anonymous] {
        let refused = client
            .send(
                "GET",
                "/v3/session/s1/decision/",
                &[("authorization", &bearer)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(refused.status, 401, "{:?}", refused.body);
        let challenge = refused.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{challenge}"
        );
        assert_eq!(
            refused.json()["type"],
            "https://idgate.dev/problems/token-binding-mismatch"
        );
    }

    // No token: a challenge without an error code (RFC 6750 §3.1).
    let none = owner.get("/v3/session/s1/decision/").await.unwrap();
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"idgate\"")
    );

    // A token without the route's scope: 403 insufficient_scope.
    let reply = owner
        .send(
            "POST",
            "/oauth2/token",
            &[FORM],
            "grant_type=client_credentials&scope=sessions%3Awrite",
        )
        .await
        .unwrap();
    let write_only = format!("Bearer {}", reply.json()["access_token"].as_str().unwrap());
    let scoped = owner
        .send(
            "GET",
            "/v3/session/s1/decision/",
            &[("authorization", &write_only)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(scoped.status, 403);
    assert!(
        scoped
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("insufficient_scope")
    );
    // Neither token, whole or by its signature, is in the log.
    let signature = |t: &str| t.rsplit('.').next().unwrap_or_default().to_owned();
    let write_only = write_only.trim_start_matches("Bearer ");
    gw.assert_never_logged(&[
        &token,
        &signature(&token),
        write_only,
        &signature(write_only),
    ])
    .await;
}

/// `previous_signing_keys = ["file:PATH"]` in `[token_endpoint]`.
fn name_previous_key(config: &mut GatewayConfig, path: &std::path::Path) {
    let section = config.sections.get_mut("token_endpoint").unwrap();
    section.as_table_mut().unwrap().insert(
        "previous_signing_keys".to_owned(),
        strings(&[&format!("file:{}", path.display())]),
    );
}

/// A planned rotation of the signing key: the key signed with before it, named in
/// `previous_signing_keys`, keeps its tokens valid and stays in the JWKS; taken out, its
/// tokens are refused. All over SIGHUP reloads, on the same files.
#[tokio::test]
async fn tokens_of_the_key_before_a_rotation_are_accepted_while_it_is_named_previous() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let write_key = |path: &std::path::Path, pem: &str| {
            let staged = path.with_extension("new");
            std::fs::write(&staged, pem).unwrap();
            std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            std::fs::rename(&staged, path).unwrap();
        };
        let generate = || idgate_auth::issuer::generate_es256_pem().unwrap();
        let (first, second) = (generate(), generate());
        let current = pki.path().join("signing.pem");
        let previous = pki.path().join("previous.pem");
        write_key(&current, &first);
        // Before any rotation the previous key is one that never signed anything.
        write_key(&previous, &generate());
        let mut config = token_config(&pki, ClientAuth::Optional, &upstream, &current);
        name_previous_key(&mut config, &previous);
        let gw = Gateway::start(&config, &[]).await;
        let owner = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let decision = |token: String| {
            let owner = &owner;
            async move {
                let bearer = format!("Bearer {token}");
                let reply = owner
                    .send(
                        "GET",
                        "/v3/session/s1/decision/",
                        &[("authorization", &bearer)],
                        "",
                    )
                    .await
                    .unwrap();
                (reply.status, reply.body)
            }
        };
        let token = |reply: Reply| reply.json()["access_token"].as_str().unwrap().to_owned();
        let kids = || async {
            let jwks = owner.get("/.well-known/jwks.json").await.unwrap().json();
            let mut kids: Vec<String> = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    assert!(k.get("d").is_none(), "a private key was published");
                    k["kid"].as_str().unwrap().to_owned()
                })
                .collect();
            kids.sort();
            kids
        };
        let before = token(ask_token(&owner).await);
        assert_eq!(decision(before.clone()).await.0, 200);
        let first_kid = kids().await;

        // The rotation: the new key signs, the old one is named previous.
        write_key(&previous, &first);
        write_key(&current, &second);
        gw.signal("HUP");
        assert_eventually!(
            kids().await.len() == 2 && kids().await != first_kid,
            "the rotation was not taken; output:\n{}",
            gw.output()
        );
        let after = token(ask_token(&owner).await);
        let header = |t: &str| -> serde_json::Value {
            serde_json::from_slice(&B64.decode(t.split('.').next().unwrap()).unwrap()).unwrap()
        };
        assert_ne!(header(&after)["kid"], header(&before)["kid"]);
        assert!(
            kids()
                .await
                .contains(&header(&before)["kid"].as_str().unwrap().to_owned())
        );
        assert_eq!(decision(before.clone()).await.0, 200, "{}", gw.output());
        assert_eq!(decision(after.clone()).await.0, 200);

        // Taken out: the tokens it signed are refused, the new key's are not.
        write_key(&previous, &generate());
        gw.signal("HUP");
        assert_eventually!(
            decision(before.clone()).await.0 == 401,
            "the retired key's token is still accepted; output:\n{}",
            gw.output()
        );
        let (_, body) = decision(before).await;
        assert!(
            String::from_utf8_lossy(&body).contains("unknown signing key"),
            "{body:?}"
        );
        assert_eq!(decision(after).await.0, 200);
    })
    .await;
}

/// A previous key that is the signing key itself is a mistake in the rotation: refused
/// before the gateway starts, at its key.
#[tokio::test]
async fn a_previous_signing_key_that_is_the_signing_key_is_refused_at_its_key() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let key = signing_key(pki.path());
    let mut config = token_config(&pki, ClientAuth::Optional, &upstream, &key);
    name_previous_key(&mut config, &key);
    let file = pki.path().join("idgate.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let expected = format!(
        "{}: token_endpoint.previous_signing_keys[0]: this is the signing key itself, not a previous one",
        file.display()
    );
    assert!(err.contains(&expected), "{err}");
}
