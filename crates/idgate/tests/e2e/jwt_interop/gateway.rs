//! A running gateway: Authlib tokens on a JWT route, forgeries refused, and issuer keys fetched
//! at start-up.

use serde_json::json;

use crate::assert_eventually;
use crate::support::*;

use super::{AUDIENCE, AuthlibIdp, b64, decode_json, within};

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
