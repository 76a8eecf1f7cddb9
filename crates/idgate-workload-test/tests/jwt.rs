//! The JWT profile over a real unix socket: JWT bundles streamed and updated, JWT-SVIDs
//! minted and validated, and minted tokens checked against the JWKS with ring.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{WAIT, grpc_code, within};
use idgate_workload_test::{JwtAuthority, TestCa, WorkloadApiServer, X509State};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Map, Value, json};
use spiffe::transport::GrpcStatusCode;
use spiffe::{SpiffeId, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn b64_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn started() -> (tempfile::TempDir, WorkloadApiServer, WorkloadApiClient) {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let client = within("connect", WorkloadApiClient::connect_to(server.endpoint()))
        .await
        .unwrap();
    (dir, server, client)
}

#[test]
fn minted_jwt_svid_verifies_against_its_jwks_with_ring() {
    let authority = JwtAuthority::new("example.org").unwrap();
    let token = authority
        .mint(
            "spiffe://example.org/billing",
            &["idgate"],
            Duration::from_secs(60),
        )
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    let header = b64_json(parts[0]);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], authority.kid());
    let claims = b64_json(parts[1]);
    assert_eq!(claims["sub"], "spiffe://example.org/billing");
    assert_eq!(claims["aud"], "idgate");
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(exp - iat, 60);
    assert!(iat.abs_diff(now()) <= 5);

    let jwks: Value = serde_json::from_slice(&authority.jwks()).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["use"], "jwt-svid");
    assert_eq!(key["kid"], authority.kid());
    let mut point = vec![0x04];
    point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
    public.verify(signed.as_bytes(), &signature).unwrap();

    // Another authority's key does not verify it.
    let other: Value =
        serde_json::from_slice(&JwtAuthority::new("example.org").unwrap().jwks()).unwrap();
    let mut other_point = vec![0x04];
    other_point.extend(
        URL_SAFE_NO_PAD
            .decode(other["keys"][0]["x"].as_str().unwrap())
            .unwrap(),
    );
    other_point.extend(
        URL_SAFE_NO_PAD
            .decode(other["keys"][0]["y"].as_str().unwrap())
            .unwrap(),
    );
    assert!(
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &other_point)
            .verify(signed.as_bytes(), &signature)
            .is_err()
    );

    // The spiffe crate accepts the token's shape and the bundle.
    let parsed = spiffe::JwtSvid::parse_insecure(&token).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/billing"
    );
    assert_eq!(parsed.audience(), ["idgate"]);
    let bundle = spiffe::JwtBundle::from_jwt_authorities(
        TrustDomain::new("example.org").unwrap(),
        &authority.jwks(),
    )
    .unwrap();
    assert!(bundle.find_jwt_authority(authority.kid()).is_some());
}

#[test]
fn mint_refuses_a_subject_that_is_not_a_spiffe_id_and_an_empty_audience() {
    let authority = JwtAuthority::new("example.org").unwrap();
    assert!(authority.mint("billing", &["idgate"], DAY).is_err());
    assert!(
        authority
            .mint("spiffe://example.org/billing", &[], DAY)
            .is_err()
    );
    let token = authority
        .mint("spiffe://example.org/billing", &["a", "b"], DAY)
        .unwrap();
    let claims = b64_json(token.split('.').nth(1).unwrap());
    assert_eq!(claims["aud"], json!(["a", "b"]));
}

#[tokio::test]
async fn jwt_bundles_stream_sends_current_bundles_then_each_update() {
    let (_dir, server, client) = started().await;
    let example = JwtAuthority::new("example.org").unwrap();
    let partner = JwtAuthority::new("partner.example").unwrap();
    server.set_jwt_bundles(BTreeMap::from([
        ("example.org".to_owned(), example.jwks()),
        ("spiffe://partner.example".to_owned(), partner.jwks()),
    ]));

    let fetched = within("one-shot", client.fetch_jwt_bundles())
        .await
        .unwrap();
    assert_eq!(fetched.len(), 2);

    let mut stream = within("open", client.stream_jwt_bundles()).await.unwrap();
    let set = within("first", stream.next()).await.unwrap().unwrap();
    let bundle = set.get(&TrustDomain::new("example.org").unwrap()).unwrap();
    assert!(bundle.find_jwt_authority(example.kid()).is_some());
    let bundle = set
        .get(&TrustDomain::new("partner.example").unwrap())
        .unwrap();
    assert!(bundle.find_jwt_authority(partner.kid()).is_some());

    // A key rotation: the old and the new key side by side, the partner dropped.
    server.wait_for_jwt_bundle_streams(1, WAIT).await.unwrap();
    let next = JwtAuthority::new("example.org").unwrap();
    server.set_jwt_bundles(BTreeMap::from([(
        "example.org".to_owned(),
        JwtAuthority::jwks_of(&[&example, &next]),
    )]));
    let set = within("update", stream.next()).await.unwrap().unwrap();
    assert_eq!(set.len(), 1);
    let bundle = set.get(&TrustDomain::new("example.org").unwrap()).unwrap();
    assert!(bundle.find_jwt_authority(example.kid()).is_some());
    assert!(bundle.find_jwt_authority(next.kid()).is_some());

    server.set_no_identity();
    let err = within("refusal", stream.next()).await.unwrap().unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn jwt_bundles_stream_waits_until_bundles_are_set() {
    let (_dir, server, client) = started().await;
    let mut stream = within("open", client.stream_jwt_bundles()).await.unwrap();
    server.wait_for_jwt_bundle_streams(1, WAIT).await.unwrap();
    let authority = JwtAuthority::new("example.org").unwrap();
    server.set_jwt_bundles(BTreeMap::from([(
        "example.org".to_owned(),
        authority.jwks(),
    )]));
    let set = within("first", stream.next()).await.unwrap().unwrap();
    assert_eq!(set.len(), 1);

    within("shutdown", server.shutdown()).await;
    let err = within("end", stream.next()).await.unwrap().unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::Unavailable),
        "{err:?}"
    );
}

#[tokio::test]
async fn fetched_jwt_svid_is_minted_for_the_default_identity_and_validates() {
    let (_dir, server, client) = started().await;
    let ca = TestCa::new("example.org").unwrap();
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));

    // No signing authority yet: the agent cannot mint.
    let err = within("no authority", client.fetch_jwt_svid(["upstream"], None))
        .await
        .unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::Unavailable),
        "{err:?}"
    );

    let authority = JwtAuthority::new("example.org").unwrap();
    server.set_jwt_authority(authority.clone());
    server.set_jwt_svid_ttl(Duration::from_secs(90));
    server.set_jwt_bundles(BTreeMap::from([(
        "example.org".to_owned(),
        authority.jwks(),
    )]));

    let svid = within("fetch", client.fetch_jwt_svid(["upstream"], None))
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/idgate");
    assert_eq!(svid.audience(), ["upstream"]);
    assert_eq!(svid.key_id(), authority.kid());
    let claims = b64_json(svid.token().split('.').nth(1).unwrap());
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 90);

    // A token the test mints with its clone of the authority validates the same way.
    let own = authority
        .mint("spiffe://example.org/billing", &["upstream"], DAY)
        .unwrap();
    let validated = within("validate own", client.validate_jwt_token("upstream", &own))
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/billing"
    );

    let validated = within(
        "validate",
        client.validate_jwt_token("upstream", svid.token()),
    )
    .await
    .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/idgate"
    );

    let err = within(
        "wrong audience",
        client.validate_jwt_token("elsewhere", svid.token()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::InvalidArgument),
        "{err:?}"
    );

    // Asking for an identity the workload does not have is refused.
    let stranger = SpiffeId::new("spiffe://example.org/stranger").unwrap();
    let err = within(
        "foreign id",
        client.fetch_jwt_svid(["upstream"], Some(&stranger)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");

    // An audience is mandatory.
    let err = within(
        "no audience",
        client.fetch_jwt_svid(Vec::<String>::new(), None),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::InvalidArgument),
        "{err:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn validation_refuses_unknown_key_expired_token_and_untrusted_trust_domain() {
    let (_dir, server, client) = started().await;
    let authority = JwtAuthority::new("example.org").unwrap();
    server.set_jwt_bundles(BTreeMap::from([(
        "example.org".to_owned(),
        authority.jwks(),
    )]));

    let good = authority
        .mint("spiffe://example.org/billing", &["idgate"], DAY)
        .unwrap();
    let validated = within("good", client.validate_jwt_token("idgate", &good))
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/billing"
    );

    let impostor = JwtAuthority::new("example.org").unwrap();
    let forged = impostor
        .mint("spiffe://example.org/billing", &["idgate"], DAY)
        .unwrap();

    let mut claims = Map::new();
    claims.insert("sub".into(), json!("spiffe://example.org/billing"));
    claims.insert("aud".into(), json!("idgate"));
    claims.insert("exp".into(), json!(now() - 60));
    let expired = authority.sign(&claims).unwrap();

    let foreign = JwtAuthority::new("other.org")
        .unwrap()
        .mint("spiffe://other.org/billing", &["idgate"], DAY)
        .unwrap();

    // The right key's signature over another token's claims.
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered_claims = URL_SAFE_NO_PAD.encode(
        json!({"sub": "spiffe://example.org/admin", "aud": "idgate", "exp": now() + 600})
            .to_string(),
    );
    parts[1] = &tampered_claims;
    let tampered = parts.join(".");

    for (what, token) in [
        ("unknown key", forged.as_str()),
        ("expired", expired.as_str()),
        ("untrusted trust domain", foreign.as_str()),
        ("tampered claims", tampered.as_str()),
        ("not a JWT", "abc"),
    ] {
        let err = within(what, client.validate_jwt_token("idgate", token))
            .await
            .unwrap_err();
        assert_eq!(
            grpc_code(&err),
            Some(GrpcStatusCode::InvalidArgument),
            "{what}: {err:?}"
        );
    }
    assert_eq!(server.counters().jwt_validations, 6);
    server.shutdown().await;
}
