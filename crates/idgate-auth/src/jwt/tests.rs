//! Tokens signed here with `ring` (and an RSA key made by the `openssl` command line),
//! verified by [`JwtVerifier`]: every algorithm accepted, every forgery refused, and the JWKS
//! fetched from a small HTTP server on loopback that counts what it is asked. The
//! algorithms' own refusals (curve and hash confusion, signature encodings, ES512) are in
//! `algorithms`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

mod algorithms;
mod issuers;
mod remote;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://idp.example";
const AUD: &str = "idgate";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) enum TestKey {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl TestKey {
    pub(crate) fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    pub(crate) fn p256() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    /// A P-384 key (ES384), as SPIRE makes with `jwt_key_type = "ec-p384"`.
    pub(crate) fn p384() -> Self {
        Self::p384_and_der_twin().0
    }

    /// A P-384 key, and the same key signing ASN.1 DER signatures instead of JWS's fixed
    /// `r || s`: a valid signature in the wrong encoding.
    pub(crate) fn p384_and_der_twin() -> (Self, Self) {
        let rng = SystemRandom::new();
        let fixed = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(fixed, &rng).unwrap();
        let key = |alg| Self::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap());
        (key(fixed), key(&signature::ECDSA_P384_SHA384_ASN1_SIGNING))
    }

    /// A 2048-bit RSA key made once per test run by `openssl genpkey` (ring cannot make
    /// RSA keys), as PKCS#8 DER, with its public key as SubjectPublicKeyInfo PEM.
    pub(crate) fn rsa() -> Self {
        Self::Rsa(RsaKeyPair::from_pkcs8(&rsa_material().0).unwrap())
    }

    /// Signs `msg`; `alg` picks an RSA key's padding and hash (an EC key's curve is its own).
    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Self::Ec(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Self::Rsa(k) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }

    pub(crate) fn jwk(&self, kid: &str, alg: Algorithm) -> Jwk {
        match self {
            Self::Ed(k) => Jwk::ed25519(kid, k.public_key().as_ref()),
            // The curve is the key's own: 65 bytes of point for P-256, 97 for P-384.
            Self::Ec(k) if k.public_key().as_ref().len() == 97 => {
                Jwk::p384(kid, k.public_key().as_ref()).unwrap()
            }
            Self::Ec(k) => Jwk::p256(kid, k.public_key().as_ref()).unwrap(),
            Self::Rsa(k) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                Jwk::rsa(kid, &c.n, &c.e, alg)
            }
        }
    }
}

fn rsa_material() -> &'static (Vec<u8>, String) {
    static RSA: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    RSA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (pem, der) = (dir.path().join("rsa.pem"), dir.path().join("rsa.der"));
        let (pem_s, der_s) = (pem.to_str().unwrap(), der.to_str().unwrap());
        let openssl = |args: &[&str]| {
            let st = Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl (scripts/setup-test-deps.sh installs it)");
            assert!(st.success(), "openssl {args:?}");
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem_s,
        ]);
        openssl(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", pem_s, "-outform", "DER", "-out", der_s,
        ]);
        let out = Command::new("openssl")
            .args(["pkey", "-in", pem_s, "-pubout"])
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            std::fs::read(&der).unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    })
}

pub(crate) fn sign_token(key: &TestKey, header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("");
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "client-1", "aud": AUD, "client_id": "client-1",
        "exp": NOW + 300, "iat": NOW - 5, "nbf": NOW - 5, "scope": "sessions:read sessions:write",
        "jti": "abc"
    })
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "at+jwt"})
}

fn static_verifier(keys: Vec<Jwk>, algorithms: Vec<Algorithm>) -> JwtVerifier {
    JwtVerifier::new(
        vec![],
        vec![StaticIssuer::new(ISS, vec![AUD.into()], algorithms, keys)],
    )
    .unwrap()
}

async fn verify(v: &JwtVerifier, token: &str) -> Result<JwtIdentity, &'static str> {
    v.verify(token, at(NOW)).await.map_err(|e| match e {
        AuthFailure::InvalidToken(why) => why,
        other => panic!("unexpected failure kind {other:?}"),
    })
}

/// One key of each type and curve, each with its kid, in one static issuer.
struct Keys {
    ed: TestKey,
    ec: TestKey,
    p384: TestKey,
    rsa: TestKey,
    verifier: JwtVerifier,
}

fn keys() -> Keys {
    let (ed, ec, p384, rsa) = (
        TestKey::ed25519(),
        TestKey::p256(),
        TestKey::p384(),
        TestKey::rsa(),
    );
    let mut rsa_any = rsa.jwk("rsa", Algorithm::RS256);
    rsa_any.alg = None;
    let verifier = static_verifier(
        vec![
            ed.jwk("ed", Algorithm::EdDSA),
            ec.jwk("ec", Algorithm::ES256),
            p384.jwk("p384", Algorithm::ES384),
            rsa_any,
        ],
        Algorithm::ALL.to_vec(),
    );
    Keys {
        ed,
        ec,
        p384,
        rsa,
        verifier,
    }
}

#[tokio::test]
async fn accepts_each_algorithm_and_reads_the_identity() {
    let k = keys();
    let cases = [
        (&k.ed, "EdDSA", "ed"),
        (&k.ec, "ES256", "ec"),
        (&k.p384, "ES384", "p384"),
        (&k.rsa, "RS256", "rsa"),
        (&k.rsa, "RS384", "rsa"),
        (&k.rsa, "RS512", "rsa"),
        (&k.rsa, "PS256", "rsa"),
        (&k.rsa, "PS384", "rsa"),
        (&k.rsa, "PS512", "rsa"),
    ];
    let mut tested: Vec<&str> = cases.iter().map(|(_, alg, _)| *alg).collect();
    let mut all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
    tested.sort();
    all.sort();
    assert_eq!(tested, all, "every algorithm we verify is verified here");
    for (key, alg, kid) in cases {
        let mut c = claims();
        c["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
        let id = verify(&k.verifier, &sign_token(key, &header(alg, kid), &c))
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(id.token.issuer, ISS);
        assert_eq!(id.token.subject, "client-1");
        assert_eq!(id.token.client_id.as_deref(), Some("client-1"));
        assert_eq!(id.token.scopes, ["sessions:read", "sessions:write"]);
        assert_eq!(
            id.cnf_x5t_s256.as_deref(),
            Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2")
        );
        assert_eq!(id.expires_at, at(NOW + 300));
    }
}

#[tokio::test]
async fn scopes_are_split_on_the_space_alone() {
    let k = keys();
    let mut c = claims();
    c["scope"] = json!("reports:read\u{2003}sessions:write  reports:read\tadmin");
    let id = verify(&k.verifier, &sign_token(&k.ec, &header("ES256", "ec"), &c))
        .await
        .unwrap();
    assert_eq!(
        id.token.scopes,
        ["reports:read\u{2003}sessions:write", "reports:read\tadmin"],
        "another blank does not separate scopes (RFC 6749 §3.3)"
    );
}

#[tokio::test]
async fn refuses_tampered_tokens() {
    let k = keys();
    let good = sign_token(&k.ec, &header("ES256", "ec"), &claims());
    let parts: Vec<&str> = good.split('.').collect();

    let mut elevated = claims();
    elevated["scope"] = json!("sessions:read sessions:write admin");
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(elevated.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        verify(&k.verifier, &tampered_payload).await.unwrap_err(),
        "bad signature"
    );

    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_eq!(
        verify(&k.verifier, &tampered_sig).await.unwrap_err(),
        "bad signature"
    );

    // The header is signed too: pointing the token at another key breaks it.
    let moved = format!(
        "{}.{}.{}",
        b64(header("ES256", "ed").to_string().as_bytes()),
        parts[1],
        parts[2]
    );
    assert_eq!(
        verify(&k.verifier, &moved).await.unwrap_err(),
        "algorithm does not match key"
    );

    let truncated = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..60]));
    assert_eq!(
        verify(&k.verifier, &truncated).await.unwrap_err(),
        "bad signature"
    );
    assert_eq!(
        verify(&k.verifier, &good[..good.rfind('.').unwrap()])
            .await
            .unwrap_err(),
        "malformed"
    );
    assert_eq!(
        verify(&k.verifier, "not a token").await.unwrap_err(),
        "malformed"
    );
    assert!(verify(&k.verifier, &good).await.is_ok());
}

#[tokio::test]
async fn refuses_bad_claims_after_a_good_signature() {
    let k = keys();
    let signed = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        sign_token(&k.ed, &header("EdDSA", "ed"), &c)
    };
    let cases: Vec<(String, &str)> = vec![
        (signed(&|c| c["exp"] = json!(NOW - 61)), "expired"),
        (signed(&|c| c["nbf"] = json!(NOW + 61)), "not yet valid"),
        (
            signed(&|c| c["iat"] = json!(NOW + 61)),
            "issued in the future",
        ),
        (
            signed(&|c| c["aud"] = json!("someone-else")),
            "wrong audience",
        ),
        (signed(&|c| c["aud"] = json!(["a", "b"])), "wrong audience"),
        (
            signed(&|c| c["iss"] = json!("https://evil.example")),
            "unknown issuer",
        ),
        (
            signed(&|c| c["iss"] = json!("https://idp.example/")),
            "unknown issuer",
        ),
        (
            signed(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "missing issuer",
        ),
        (
            signed(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing expiry",
        ),
        (
            signed(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "missing subject",
        ),
    ];
    for (token, why) in cases {
        assert_eq!(verify(&k.verifier, &token).await.unwrap_err(), why);
    }
    // Within the default leeway (30 s) of expiry and not-before, and past it.
    assert!(
        verify(&k.verifier, &signed(&|c| c["exp"] = json!(NOW - 20)))
            .await
            .is_ok()
    );
    assert!(
        verify(&k.verifier, &signed(&|c| c["nbf"] = json!(NOW + 20)))
            .await
            .is_ok()
    );
    assert!(
        verify(&k.verifier, &signed(&|c| c["exp"] = json!(NOW - 45)))
            .await
            .is_err()
    );
    assert!(
        verify(&k.verifier, &signed(&|c| c["nbf"] = json!(NOW + 45)))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn refuses_alg_none_and_hmac_with_the_public_key_as_secret() {
    let k = keys();
    let payload = b64(claims().to_string().as_bytes());

    for none in ["none", "None", "NONE"] {
        let h = b64(json!({"alg": none, "kid": "rsa"}).to_string().as_bytes());
        for token in [format!("{h}.{payload}."), format!("{h}.{payload}.c2ln")] {
            assert_eq!(
                verify(&k.verifier, &token).await.unwrap_err(),
                "algorithm not allowed"
            );
        }
    }

    // The classic key confusion: HS256 "signed" with the verifier's own public key, as
    // PEM, as DER, as the JWK's modulus — whatever a careless library would feed to HMAC.
    let (_, pem) = rsa_material();
    let Jwk { n: Some(n), .. } = k.rsa.jwk("rsa", Algorithm::RS256) else {
        panic!("n")
    };
    let TestKey::Rsa(kp) = &k.rsa else {
        panic!("rsa")
    };
    let secrets: Vec<Vec<u8>> = vec![
        pem.clone().into_bytes(),
        kp.public().as_ref().to_vec(),
        n.into_bytes(),
        URL_SAFE_NO_PAD
            .decode(k.rsa.jwk("rsa", Algorithm::RS256).n.unwrap())
            .unwrap(),
    ];
    for alg in ["HS256", "HS384", "HS512"] {
        for secret in &secrets {
            let input = format!(
                "{}.{payload}",
                b64(json!({"alg": alg, "kid": "rsa"}).to_string().as_bytes())
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            let tag = ring::hmac::sign(&key, input.as_bytes());
            let token = format!("{input}.{}", b64(tag.as_ref()));
            assert_eq!(
                verify(&k.verifier, &token).await.unwrap_err(),
                "algorithm not allowed"
            );
        }
    }
}

#[tokio::test]
async fn the_algorithm_must_be_allowed_and_fit_the_key() {
    let (ec, rsa) = (TestKey::p256(), TestKey::rsa());
    // The issuer allows only ES256 and PS256; its RSA key says PS256.
    let v = static_verifier(
        vec![
            ec.jwk("ec", Algorithm::ES256),
            rsa.jwk("rsa", Algorithm::PS256),
        ],
        vec![Algorithm::ES256, Algorithm::PS256],
    );
    assert!(
        verify(&v, &sign_token(&rsa, &header("PS256", "rsa"), &claims()))
            .await
            .is_ok()
    );
    assert!(
        verify(&v, &sign_token(&ec, &header("ES256", "ec"), &claims()))
            .await
            .is_ok()
    );
    // RS256 is a fine algorithm, but not this issuer's.
    assert_eq!(
        verify(&v, &sign_token(&rsa, &header("RS256", "rsa"), &claims()))
            .await
            .unwrap_err(),
        "algorithm not allowed"
    );
    let ed = TestKey::ed25519();
    assert_eq!(
        verify(&v, &sign_token(&ed, &header("EdDSA", "ec"), &claims()))
            .await
            .unwrap_err(),
        "algorithm not allowed"
    );

    // With RS256 allowed, the key's own `alg` (PS256) still refuses it.
    let v = static_verifier(
        vec![rsa.jwk("rsa", Algorithm::PS256)],
        Algorithm::ALL.to_vec(),
    );
    assert_eq!(
        verify(&v, &sign_token(&rsa, &header("RS256", "rsa"), &claims()))
            .await
            .unwrap_err(),
        "algorithm does not match key"
    );
    // An EC signature presented under the RSA key's kid.
    assert_eq!(
        verify(&v, &sign_token(&ec, &header("ES256", "rsa"), &claims()))
            .await
            .unwrap_err(),
        "algorithm does not match key"
    );
}

#[tokio::test]
async fn kid_selects_the_key_and_a_token_without_kid_needs_a_single_candidate() {
    let k = keys();
    let no_kid = |key: &TestKey, alg: &str| sign_token(key, &json!({"alg": alg}), &claims());
    assert!(
        verify(&k.verifier, &no_kid(&k.ed, "EdDSA")).await.is_ok(),
        "the only Ed25519 key"
    );
    assert!(
        verify(&k.verifier, &no_kid(&k.rsa, "RS256")).await.is_ok(),
        "the only RSA key"
    );
    assert_eq!(
        verify(
            &k.verifier,
            &sign_token(&k.ed, &header("EdDSA", "nope"), &claims())
        )
        .await
        .unwrap_err(),
        "unknown signing key"
    );

    let (a, b) = (TestKey::ed25519(), TestKey::ed25519());
    let v = static_verifier(
        vec![a.jwk("a", Algorithm::EdDSA), b.jwk("b", Algorithm::EdDSA)],
        vec![Algorithm::EdDSA],
    );
    assert_eq!(
        verify(&v, &no_kid(&a, "EdDSA")).await.unwrap_err(),
        "unknown signing key"
    );
    assert!(
        verify(&v, &sign_token(&b, &header("EdDSA", "b"), &claims()))
            .await
            .is_ok()
    );
    assert_eq!(
        verify(&v, &sign_token(&b, &header("EdDSA", "a"), &claims()))
            .await
            .unwrap_err(),
        "bad signature"
    );
}

#[tokio::test]
async fn refuses_oversized_and_odd_headers() {
    let k = keys();
    let mut big = claims();
    big["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let token = sign_token(&k.ed, &header("EdDSA", "ed"), &big);
    assert_eq!(
        verify(&k.verifier, &token).await.unwrap_err(),
        "token too large"
    );

    let crit = json!({"alg": "EdDSA", "kid": "ed", "crit": ["http://example/ext"], "http://example/ext": 1});
    assert_eq!(
        verify(&k.verifier, &sign_token(&k.ed, &crit, &claims()))
            .await
            .unwrap_err(),
        "unsupported critical header"
    );
    let dpop = json!({"alg": "EdDSA", "kid": "ed", "typ": "dpop+jwt"});
    assert_eq!(
        verify(&k.verifier, &sign_token(&k.ed, &dpop, &claims()))
            .await
            .unwrap_err(),
        "not an access token"
    );
    // A duplicated claim is refused outright rather than read as one or the other.
    let h = b64(header("EdDSA", "ed").to_string().as_bytes());
    let c = claims().to_string().replacen('{', r#"{"sub":"admin","#, 1);
    let input = format!("{h}.{}", b64(c.as_bytes()));
    let token = format!("{input}.{}", b64(&k.ed.sign("EdDSA", input.as_bytes())));
    assert_eq!(verify(&k.verifier, &token).await.unwrap_err(), "malformed");
}

#[test]
fn is_issuer_of_reads_the_unverified_iss_only() {
    let k = keys();
    let token = sign_token(&k.ec, &header("ES256", "ec"), &claims());
    assert!(k.verifier.is_issuer_of(&token));
    // Any header and signature: only the claim is read.
    let odd = sign_token(
        &TestKey::p256(),
        &json!({"alg": "ES256", "typ": "JOSE"}),
        &claims(),
    );
    assert!(k.verifier.is_issuer_of(&odd));
    let mut other = claims();
    other["iss"] = json!("https://idp.other");
    assert!(
        !k.verifier
            .is_issuer_of(&sign_token(&k.ec, &header("ES256", "ec"), &other))
    );
    other.as_object_mut().unwrap().remove("iss");
    assert!(
        !k.verifier
            .is_issuer_of(&sign_token(&k.ec, &header("ES256", "ec"), &other))
    );
    assert!(!k.verifier.is_issuer_of("not.a.token"));
}
