//! The verifier alone: Authlib tokens accepted for every algorithm, and tampered, expired,
//! misaddressed and forged tokens refused.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idgate_auth::jwt::{Algorithm, IssuerConfig, JwtVerifier};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::{AUDIENCE, AuthlibIdp, SCOPES, b64, decode_json, refusal, within};

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
        // Its kid is not the issuer's; the keys were fetched a moment ago, so it is not
        // looked for again yet.
        assert_eq!(
            refusal(&v, &sign(&embedded), now).await,
            "signing key not known yet"
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
