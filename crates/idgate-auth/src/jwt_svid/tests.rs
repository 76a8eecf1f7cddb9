//! JWT-SVIDs minted here with `ring` ES256 and ES384 keys and an RSA key (made by
//! `openssl`) for the RS* and PS* algorithms, verified against bundles built the way SPIRE
//! publishes them: every refusal reason of the module documentation, and the happy paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idgate_tls::TrustDomain;
use serde_json::json;

use super::*;
use crate::jwt::tests::{TestKey, sign_token};
use crate::jwt::{Jwk, JwkError};

const NOW: u64 = 1_800_000_000;
const AUD: &str = "spiffe://example.org/idgate";
const SUB: &str = "spiffe://example.org/ns/kyc/sa/onboarding";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// A bundle entry as SPIRE writes one: the public JWK with `use: jwt-svid` and a `kid`.
fn svid_entry(jwk: &Jwk) -> Value {
    let mut v = serde_json::to_value(jwk).unwrap();
    v["use"] = json!("jwt-svid");
    v.as_object_mut().unwrap().remove("alg");
    v
}

fn bundle_json(entries: Vec<Value>) -> Vec<u8> {
    json!({"keys": entries, "spiffe_sequence": 7, "spiffe_refresh_hint": 300})
        .to_string()
        .into_bytes()
}

struct Fixture {
    ec: TestKey,
    p384: TestKey,
    rsa: TestKey,
    verifier: JwtSvidVerifier,
}

/// example.org trusts an ES256 key `ec-1`, an ES384 key `ec384-1` (SPIRE's
/// `jwt_key_type = "ec-p384"`) and an RSA key `rsa-1`, none naming an `alg`, as SPIRE
/// publishes them.
fn fixture() -> Fixture {
    let (ec, p384, rsa) = (TestKey::p256(), TestKey::p384(), TestKey::rsa());
    let json = bundle_json(vec![
        svid_entry(&ec.jwk("ec-1", Algorithm::ES256)),
        svid_entry(&p384.jwk("ec384-1", Algorithm::ES384)),
        svid_entry(&rsa.jwk("rsa-1", Algorithm::RS256)),
    ]);
    let bundles = JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap();
    let verifier = JwtSvidVerifier::new(JwtSvidSettings::new(vec![AUD.into()]), bundles).unwrap();
    Fixture {
        ec,
        p384,
        rsa,
        verifier,
    }
}

fn claims() -> Value {
    json!({"sub": SUB, "aud": [AUD], "exp": NOW + 300, "iat": NOW - 5})
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

impl Fixture {
    fn verify(&self, token: &str) -> Result<JwtSvidIdentity, &'static str> {
        self.verifier.verify(token, at(NOW)).map_err(|e| match e {
            AuthFailure::InvalidToken(why) => why,
            other => panic!("not an invalid-token failure: {other:?}"),
        })
    }

    fn es256(&self, claims: &Value) -> String {
        sign_token(&self.ec, &header("ES256", "ec-1"), claims)
    }
}

#[test]
fn a_valid_es256_svid_yields_its_spiffe_id_and_expiry() {
    let f = fixture();
    let id = f.verify(&f.es256(&claims())).unwrap();
    assert_eq!(id.spiffe_id.as_str(), SUB);
    assert_eq!(id.expires_at, at(NOW + 300));
    // `aud` may be one string; `typ` may be absent or JOSE; `iss` and other claims are
    // ignored.
    let mut c = claims();
    c["aud"] = json!(AUD);
    c["iss"] = json!("https://spire.example.org");
    c["jti"] = json!("x");
    assert!(f.verify(&f.es256(&c)).is_ok());
    for h in [
        json!({"alg": "ES256", "kid": "ec-1"}),
        json!({"alg": "ES256", "kid": "ec-1", "typ": "JOSE"}),
    ] {
        assert!(f.verify(&sign_token(&f.ec, &h, &claims())).is_ok(), "{h}");
    }
    // One audience of several is enough.
    let mut c = claims();
    c["aud"] = json!(["spiffe://example.org/other", AUD]);
    assert!(f.verify(&f.es256(&c)).is_ok());
}

#[test]
fn rs_and_ps_svids_of_every_hash_are_accepted_with_an_rsa_key() {
    let f = fixture();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = sign_token(&f.rsa, &header(alg, "rsa-1"), &claims());
        assert_eq!(f.verify(&token).unwrap().spiffe_id.as_str(), SUB, "{alg}");
    }
}

#[test]
fn an_es384_svid_is_accepted_with_a_p384_key() {
    let f = fixture();
    let token = sign_token(&f.p384, &header("ES384", "ec384-1"), &claims());
    let id = f.verify(&token).unwrap();
    assert_eq!(id.spiffe_id.as_str(), SUB);
    assert_eq!(id.expires_at, at(NOW + 300));
    // Without a kid, the bundle's one P-384 key is the one ES384 candidate.
    let no_kid = sign_token(&f.p384, &json!({"alg": "ES384", "typ": "JWT"}), &claims());
    assert!(f.verify(&no_kid).is_ok());
}

#[test]
fn the_svid_algorithms_are_those_of_the_specification_we_can_verify() {
    // JWT-SVID §2.1: RS, ES and PS with 256, 384 and 512 — but ES512, which ring cannot
    // verify. Never EdDSA, which §2.1 does not name.
    let mut expected: Vec<Algorithm> = Algorithm::ALL
        .into_iter()
        .filter(|a| *a != Algorithm::EdDSA)
        .collect();
    let mut algorithms = ALGORITHMS.to_vec();
    expected.sort_by_key(|a| a.as_str());
    algorithms.sort_by_key(|a| a.as_str());
    assert_eq!(algorithms, expected);
}

#[test]
fn the_header_is_only_alg_kid_and_typ_jwt_or_jose() {
    let f = fixture();
    for (h, why) in [
        (
            json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}),
            "not a JWT-SVID (typ)",
        ),
        (
            json!({"alg": "ES256", "kid": "ec-1", "typ": "jwt"}),
            "not a JWT-SVID (typ)",
        ),
        (
            json!({"alg": "ES256", "kid": "ec-1", "typ": 1}),
            "not a JWT-SVID (typ)",
        ),
        (
            json!({"alg": "ES256", "kid": "ec-1", "jku": "https://evil.example/jwks"}),
            "header member not allowed in a JWT-SVID",
        ),
        (
            json!({"alg": "ES256", "kid": "ec-1", "crit": []}),
            "header member not allowed in a JWT-SVID",
        ),
        (
            json!({"alg": "ES256", "kid": "ec-1", "x5c": []}),
            "header member not allowed in a JWT-SVID",
        ),
        (json!({"alg": "ES256", "kid": 1}), "malformed"),
        (
            json!({"alg": "none", "kid": "ec-1"}),
            "algorithm not allowed",
        ),
        (
            json!({"alg": "HS256", "kid": "ec-1"}),
            "algorithm not allowed",
        ),
        (
            json!({"alg": "EdDSA", "kid": "ec-1"}),
            "algorithm not allowed",
        ),
        (
            json!({"alg": "ES512", "kid": "ec-1"}),
            "ES512 (P-521) is not supported",
        ),
        (json!({"kid": "ec-1"}), "malformed"),
    ] {
        assert_eq!(
            f.verify(&sign_token(&f.ec, &h, &claims())).unwrap_err(),
            why,
            "{h}"
        );
    }
}

#[test]
fn malformed_and_oversized_tokens_are_refused() {
    let f = fixture();
    let good = f.es256(&claims());
    assert_eq!(f.verify("a.b").unwrap_err(), "malformed");
    assert_eq!(f.verify(&format!("{good}.x")).unwrap_err(), "malformed");
    assert_eq!(f.verify(&format!("{good}=")).unwrap_err(), "malformed");
    let huge = format!("{good}{}", "A".repeat(crate::jwt::MAX_TOKEN_BYTES));
    assert_eq!(f.verify(&huge).unwrap_err(), "token too large");
    let dup = format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#)
    );
    assert_eq!(f.verify(&dup).unwrap_err(), "malformed");
}

#[test]
fn the_subject_must_be_a_spiffe_id_of_a_trust_domain_with_a_bundle() {
    let f = fixture();
    for (sub, why) in [
        (json!(null), "missing subject"),
        (json!("onboarding"), "subject is not a SPIFFE ID"),
        (
            json!("spiffe://Example.org/x"),
            "subject is not a SPIFFE ID",
        ),
        (
            json!("spiffe://example.org/a//b"),
            "subject is not a SPIFFE ID",
        ),
        (json!(["spiffe://example.org/x"]), "malformed claims"),
        (json!("spiffe://other.org/ns/kyc"), "untrusted trust domain"),
        // A trust domain whose name merely starts like a trusted one.
        (
            json!("spiffe://example.org.evil/x"),
            "untrusted trust domain",
        ),
    ] {
        let mut c = claims();
        if sub.is_null() {
            c.as_object_mut().unwrap().remove("sub");
        } else {
            c["sub"] = sub.clone();
        }
        assert_eq!(f.verify(&f.es256(&c)).unwrap_err(), why, "{sub}");
    }
}

#[test]
fn the_key_is_the_bundles_key_named_by_kid_and_fit_for_alg() {
    let f = fixture();
    let unknown = sign_token(&f.ec, &header("ES256", "ec-2"), &claims());
    assert_eq!(f.verify(&unknown).unwrap_err(), "unknown signing key");
    // Algorithm confusion: an ES256 header naming the RSA key, an RS256 one naming the EC key.
    let confused = sign_token(&f.ec, &header("ES256", "rsa-1"), &claims());
    assert_eq!(
        f.verify(&confused).unwrap_err(),
        "algorithm does not match key"
    );
    let confused = sign_token(&f.rsa, &header("RS256", "ec-1"), &claims());
    assert_eq!(
        f.verify(&confused).unwrap_err(),
        "algorithm does not match key"
    );
    // Curve confusion, the bundle's keys naming no `alg`: an ES384 token under the P-256
    // key, an ES256 one under the P-384 key.
    let confused = sign_token(&f.p384, &header("ES384", "ec-1"), &claims());
    assert_eq!(
        f.verify(&confused).unwrap_err(),
        "algorithm does not match key"
    );
    let confused = sign_token(&f.ec, &header("ES256", "ec384-1"), &claims());
    assert_eq!(
        f.verify(&confused).unwrap_err(),
        "algorithm does not match key"
    );
    // Without a kid, the one key of the token's algorithm is used.
    let no_kid = sign_token(&f.ec, &json!({"alg": "ES256"}), &claims());
    assert!(f.verify(&no_kid).is_ok());
    // Another key under a trusted kid is a forgery.
    let forged = sign_token(&TestKey::p256(), &header("ES256", "ec-1"), &claims());
    assert_eq!(f.verify(&forged).unwrap_err(), "bad signature");
    // So is a changed payload under the original signature.
    let token = f.es256(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("spiffe://example.org/ns/admin");
    let payload = URL_SAFE_NO_PAD.encode(c.to_string());
    parts[1] = &payload;
    assert_eq!(f.verify(&parts.join(".")).unwrap_err(), "bad signature");
}

#[test]
fn a_bundle_key_naming_rs256_verifies_no_other_rsa_algorithm() {
    // SPIRE's entries name no `alg`, but a hand-written bundle may; then it is binding.
    let rsa = TestKey::rsa();
    let mut entry = serde_json::to_value(rsa.jwk("rsa-rs256", Algorithm::RS256)).unwrap();
    entry["use"] = json!("jwt-svid");
    let json = bundle_json(vec![entry]);
    let bundles = JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap();
    let v = JwtSvidVerifier::new(JwtSvidSettings::new(vec![AUD.into()]), bundles).unwrap();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = sign_token(&rsa, &header(alg, "rsa-rs256"), &claims());
        let expected = if alg == "RS256" {
            Ok(())
        } else {
            Err(AuthFailure::InvalidToken("algorithm does not match key"))
        };
        assert_eq!(v.verify(&token, at(NOW)).map(|_| ()), expected, "{alg}");
    }
}

#[test]
fn es384_svid_signatures_in_der_or_cut_short_are_refused() {
    let (p384, der_twin) = TestKey::p384_and_der_twin();
    let json = bundle_json(vec![svid_entry(&p384.jwk("ec384-1", Algorithm::ES384))]);
    let bundles = JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap();
    let v = JwtSvidVerifier::new(JwtSvidSettings::new(vec![AUD.into()]), bundles).unwrap();
    let verify = |token: &str| v.verify(token, at(NOW)).map(|_| ());
    let good = sign_token(&p384, &header("ES384", "ec384-1"), &claims());
    assert_eq!(verify(&good), Ok(()));
    // The same key's valid signature, DER-encoded; and the fixed one cut short.
    let der = sign_token(&der_twin, &header("ES384", "ec384-1"), &claims());
    let (input, sig) = good.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let truncated = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig[..95]));
    for token in [der, truncated] {
        assert_eq!(
            verify(&token),
            Err(AuthFailure::InvalidToken("bad signature"))
        );
    }
}

#[test]
fn without_kid_two_keys_of_the_algorithm_are_ambiguous() {
    let (a, b) = (TestKey::p256(), TestKey::p256());
    let json = bundle_json(vec![
        svid_entry(&a.jwk("a", Algorithm::ES256)),
        svid_entry(&b.jwk("b", Algorithm::ES256)),
    ]);
    let bundles = JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap();
    let v = JwtSvidVerifier::new(JwtSvidSettings::new(vec![AUD.into()]), bundles).unwrap();
    let token = sign_token(&a, &json!({"alg": "ES256"}), &claims());
    assert_eq!(
        v.verify(&token, at(NOW)),
        Err(AuthFailure::InvalidToken("unknown signing key"))
    );
}

#[test]
fn exp_is_required_and_times_are_checked_with_leeway() {
    let f = fixture();
    let run = |field: &str, value: Value| {
        let mut c = claims();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        f.verify(&f.es256(&c)).map(|_| ())
    };
    assert_eq!(run("exp", json!(null)), Err("missing expiry"));
    assert_eq!(run("exp", json!("soon")), Err("malformed claims"));
    assert_eq!(run("exp", json!(NOW - 30)), Err("expired"));
    assert_eq!(run("exp", json!(NOW - 29)), Ok(()), "inside the leeway");
    assert_eq!(run("nbf", json!(NOW + 31)), Err("not yet valid"));
    assert_eq!(run("nbf", json!(NOW + 30)), Ok(()));
    assert_eq!(run("iat", json!(NOW + 31)), Err("issued in the future"));
    assert_eq!(run("iat", json!(null)), Ok(()));
}

#[test]
fn aud_is_required_and_must_hold_a_configured_audience() {
    let f = fixture();
    for (aud, why) in [
        (json!(null), "missing audience"),
        (json!([]), "wrong audience"),
        (json!("spiffe://example.org/other"), "wrong audience"),
        (json!(["spiffe://example.org/IDGATE"]), "wrong audience"),
        (json!([AUD, 1]), "malformed claims"),
        (json!({"aud": AUD}), "malformed claims"),
    ] {
        let mut c = claims();
        if aud.is_null() {
            c.as_object_mut().unwrap().remove("aud");
        } else {
            c["aud"] = aud.clone();
        }
        assert_eq!(f.verify(&f.es256(&c)).unwrap_err(), why, "{aud}");
    }
}

#[test]
fn max_lifetime_bounds_exp_from_iat_or_from_now() {
    let f = fixture();
    let mut settings = JwtSvidSettings::new(vec![AUD.into()]);
    settings.max_lifetime = Some(Duration::from_secs(600));
    let v = JwtSvidVerifier::with_store(settings, f.verifier.store().clone()).unwrap();
    let check = |c: Value| v.verify(&f.es256(&c), at(NOW)).map(|_| ());
    let mut c = claims();
    c["iat"] = json!(NOW - 10);
    c["exp"] = json!(NOW + 590);
    assert_eq!(check(c.clone()), Ok(()));
    c["exp"] = json!(NOW + 3600);
    assert_eq!(
        check(c.clone()),
        Err(AuthFailure::InvalidToken("lifetime too long"))
    );
    c.as_object_mut().unwrap().remove("iat");
    assert_eq!(
        check(c.clone()),
        Err(AuthFailure::InvalidToken("lifetime too long"))
    );
    c["exp"] = json!(NOW + 600);
    assert_eq!(check(c), Ok(()));
}

#[test]
fn setup_needs_an_audience_and_a_positive_max_lifetime() {
    let none = JwtSvidVerifier::new(JwtSvidSettings::new(vec![]), JwtBundles::new());
    assert_eq!(none.unwrap_err(), JwtSvidSetupError::NoAudience);
    let empty = JwtSvidVerifier::new(JwtSvidSettings::new(vec![String::new()]), JwtBundles::new());
    assert_eq!(empty.unwrap_err(), JwtSvidSetupError::NoAudience);
    let mut s = JwtSvidSettings::new(vec![AUD.into()]);
    s.max_lifetime = Some(Duration::ZERO);
    assert_eq!(
        JwtSvidVerifier::new(s, JwtBundles::new()).unwrap_err(),
        JwtSvidSetupError::ZeroMaxLifetime
    );
}

#[test]
fn replaced_bundles_take_effect_for_the_next_token() {
    let f = fixture();
    let new_key = TestKey::p256();
    let token = sign_token(&new_key, &header("ES256", "ec-2"), &claims());
    assert_eq!(f.verify(&token).unwrap_err(), "unknown signing key");
    let json = bundle_json(vec![svid_entry(&new_key.jwk("ec-2", Algorithm::ES256))]);
    f.verifier
        .set_bundles(JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap());
    assert!(f.verify(&token).is_ok());
    // The key no longer published is no longer trusted.
    assert_eq!(
        f.verify(&f.es256(&claims())).unwrap_err(),
        "unknown signing key"
    );
    // A bundle with no keys revokes the trust domain's SVIDs.
    let empty = bundle_json(vec![]);
    f.verifier
        .set_bundles(JwtBundles::parse([(td("example.org"), empty.as_slice())]).unwrap());
    assert_eq!(f.verify(&token).unwrap_err(), "unknown signing key");
}

#[test]
fn a_bundle_keeps_only_its_jwt_svid_keys() {
    let (ec, other) = (TestKey::p256(), TestKey::p256());
    let mut x509 = serde_json::to_value(other.jwk("x", Algorithm::ES256)).unwrap();
    x509["use"] = json!("x509-svid");
    x509["x5c"] = json!(["MIIB"]);
    let mut no_use = serde_json::to_value(other.jwk("n", Algorithm::ES256)).unwrap();
    no_use.as_object_mut().unwrap().remove("use");
    let ed = svid_entry(&TestKey::ed25519().jwk("ed", Algorithm::EdDSA));
    // An algorithm the gateway does not verify: skipped like an unknown key type.
    let mut hs = svid_entry(&other.jwk("hs", Algorithm::ES256));
    hs["alg"] = json!("HS256");
    let json = bundle_json(vec![
        hs,
        x509,
        no_use,
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h", "use": "jwt-svid"}),
        json!({"kty": "EC", "crv": "P-521", "kid": "p521", "use": "jwt-svid", "x": "AA", "y": "AA"}),
        json!({"kty": "EC", "kid": "sig", "use": "sig"}),
        json!("junk"),
        ed,
        svid_entry(&ec.jwk("ec-1", Algorithm::ES256)),
    ]);
    let b = JwtBundle::parse(td("example.org"), &json).unwrap();
    assert_eq!(b.key_ids().collect::<Vec<_>>(), ["ec-1"]);
    assert_eq!(b.sequence(), Some(7));
    assert_eq!(b.trust_domain().as_str(), "example.org");

    let empty = JwtBundle::parse(td("example.org"), br#"{"keys":[]}"#).unwrap();
    assert!(empty.is_empty() && empty.sequence().is_none());
}

#[test]
fn a_workload_api_bundle_reads_keys_without_use_as_spire_sends_them() {
    let (a, b) = (TestKey::p256(), TestKey::p256());
    // SPIRE's agent marshals JWT authorities as plain JWKs: no `use`.
    let mut plain = serde_json::to_value(a.jwk("spire-1", Algorithm::ES256)).unwrap();
    plain.as_object_mut().unwrap().remove("use");
    plain.as_object_mut().unwrap().remove("alg");
    let mut x509 = serde_json::to_value(b.jwk("x", Algorithm::ES256)).unwrap();
    x509["use"] = json!("x509-svid");
    let json = json!({"keys": [plain, x509, svid_entry(&b.jwk("marked", Algorithm::ES256))]})
        .to_string()
        .into_bytes();
    let bundles = JwtBundles::parse([(td("example.org"), json.as_slice())]).unwrap();
    let from_agent = bundles.get("example.org").unwrap();
    assert_eq!(
        from_agent.key_ids().collect::<Vec<_>>(),
        ["spire-1", "marked"],
        "a key without use is a JWT authority; one for another use is still skipped"
    );
    // A bundle file is read as the bundle specification says: no `use`, not ours.
    let from_file = JwtBundle::parse(td("example.org"), &json).unwrap();
    assert_eq!(from_file.key_ids().collect::<Vec<_>>(), ["marked"]);
}

#[test]
fn unusable_bundles_are_refused_with_a_reason_naming_the_key() {
    let ec = TestKey::p256();
    let mut no_kid = svid_entry(&ec.jwk("k", Algorithm::ES256));
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut empty_kid = svid_entry(&ec.jwk("k", Algorithm::ES256));
    empty_kid["kid"] = json!("");
    let mut short = svid_entry(&ec.jwk("short", Algorithm::ES256));
    short["x"] = json!("AA");
    // A P-384 key with P-256-sized coordinates.
    let mut short384 = svid_entry(&TestKey::p384().jwk("short384", Algorithm::ES384));
    short384["x"] = serde_json::to_value(ec.jwk("k", Algorithm::ES256)).unwrap()["x"].clone();
    let mut bad_type = svid_entry(&ec.jwk("t", Algorithm::ES256));
    bad_type["crv"] = json!(256);
    let dup = svid_entry(&ec.jwk("d", Algorithm::ES256));
    let parse = |v: Value| JwtBundle::parse(td("example.org"), v.to_string().as_bytes());
    assert_eq!(
        parse(json!({"keys": [no_kid]})).unwrap_err(),
        JwtBundleError::MissingKid { index: 0 }
    );
    assert_eq!(
        parse(json!({"keys": [empty_kid]})).unwrap_err(),
        JwtBundleError::MissingKid { index: 0 }
    );
    assert!(matches!(
        parse(json!({"keys": [short]})).unwrap_err(),
        JwtBundleError::Key { index: 0, ref kid, source: JwkError::P256CoordinateLength } if kid == "short"
    ));
    assert!(matches!(
        parse(json!({"keys": [short384]})).unwrap_err(),
        JwtBundleError::Key { index: 0, ref kid, source: JwkError::P384CoordinateLength } if kid == "short384"
    ));
    assert!(matches!(
        parse(json!({"keys": [{"use": "x509-svid"}, bad_type]})).unwrap_err(),
        JwtBundleError::MalformedKey { index: 1, .. }
    ));
    assert_eq!(
        parse(json!({"keys": [dup.clone(), dup]})).unwrap_err(),
        JwtBundleError::DuplicateKid {
            index: 1,
            kid: "d".into()
        }
    );
    assert_eq!(
        parse(json!({"keys": {}})).unwrap_err(),
        JwtBundleError::NoKeysArray
    );
    assert_eq!(parse(json!({})).unwrap_err(), JwtBundleError::NoKeysArray);
    assert_eq!(
        parse(json!({"keys": [], "spiffe_sequence": -1})).unwrap_err(),
        JwtBundleError::BadSequence
    );
    assert_eq!(
        parse(json!({"keys": [], "spiffe_sequence": "1"})).unwrap_err(),
        JwtBundleError::BadSequence
    );
    for bad in [&b"[]"[..], b"{\"keys\":[],\"keys\":[]}", b"not json", b""] {
        assert_eq!(
            JwtBundle::parse(td("example.org"), bad).unwrap_err(),
            JwtBundleError::NotAnObject
        );
    }
    let huge = format!(
        "{{\"keys\":[],\"pad\":\"{}\"}}",
        "a".repeat(MAX_BUNDLE_BYTES)
    );
    assert_eq!(
        JwtBundle::parse(td("example.org"), huge.as_bytes()).unwrap_err(),
        JwtBundleError::TooLarge
    );
    // Errors say which key, never its material.
    let e = parse(json!({"keys": [svid_entry(&ec.jwk("k", Algorithm::ES256)), {"use": "jwt-svid", "kty": "EC", "kid": "z", "crv": "P-256", "x": "!!", "y": "AA"}]}))
        .unwrap_err();
    assert_eq!(e.to_string(), "keys[1] (kid \"z\"): x is not base64url");
}

#[test]
fn one_bad_bundle_refuses_the_whole_set_and_names_its_trust_domain() {
    let ec = TestKey::p256();
    let good = bundle_json(vec![svid_entry(&ec.jwk("a", Algorithm::ES256))]);
    let err = JwtBundles::parse([
        (td("example.org"), good.as_slice()),
        (td("partner.org"), &b"[]"[..]),
    ])
    .unwrap_err();
    assert_eq!(err.trust_domain.as_str(), "partner.org");
    assert_eq!(
        err.to_string(),
        "JWT-SVID bundle of partner.org: the bundle is not a JSON object (or names a member twice)"
    );
    let set = JwtBundles::parse([(td("example.org"), good.as_slice())]).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("example.org").unwrap().len(), 1);
    assert!(set.get("partner.org").is_none());
}

#[test]
fn failures_are_invalid_token_401s_that_never_echo_the_token() {
    let f = fixture();
    let mut c = claims();
    c["aud"] = json!("spiffe://example.org/other");
    let token = f.es256(&c);
    let failure = f.verifier.verify(&token, at(NOW)).unwrap_err();
    assert_eq!(failure.status(), http::StatusCode::UNAUTHORIZED);
    assert!(failure.is_failed_attempt());
    let challenge = failure.challenge("idgate").unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    for text in [challenge, failure.detail(), failure.to_string()] {
        assert!(!text.contains(&token[..20]), "{text}");
        assert!(!text.contains(SUB), "{text}");
    }
}
