//! Tokens whose signature verifies: the fuzzer's header and claims, signed here with the
//! key the verifiers trust, so that what is checked after the signature (claims, header
//! members, times, audiences, scopes, the certificate binding) is reached at all. The first
//! byte picks the header: the input's first line (bit 0 set, when there is a line) or a
//! fixed one; the rest is the claims. The same token goes to `JwtVerifier` (a static ES256
//! issuer) and to `JwtSvidVerifier` (an ES256 `jwt-svid` bundle, the same key).
//!
//! Never panics; an access token accepted has strict JSON parts, an access-token header
//! (`alg` ES256, `kid` the key's or none, no `crit` extension, `b64` never false, `typ`
//! absent or an access token's), the issuer's `iss`, an `exp` not past (with leeway) and
//! `nbf` and `iat` not ahead, an `aud` naming `idgate`, and gives its `sub`, its
//! `client_id` (else `azp`), its `exp` and `cnf.x5t#S256` (the only confirmation member)
//! as they are, and scopes that are the distinct space-separated names of `scope` and `scp`.
//! A JWT-SVID accepted has only `alg`, `kid` and `typ` (`JWT` or `JOSE`) in its header, a
//! SPIFFE ID of the bundle's trust domain as `sub`, the times as above and an `aud` naming
//! the verifier's audience.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idgate_auth::jwt::{Algorithm, Jwk, JwtVerifier, StaticIssuer, json};
use idgate_auth::jwt_svid::{JwtBundles, JwtSvidSettings, JwtSvidVerifier};
use idgate_tls::TrustDomain;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value};

const ISSUER: &str = "https://idgate.test";
const AUDIENCE: &str = "idgate";
const SVID_AUDIENCE: &str = "spiffe://example.org/idgate";
const NOW: u64 = 1_800_000_000;
const LEEWAY: f64 = 30.0;
const FIXED_HEADER: &[u8] = br#"{"alg":"ES256","kid":"k1"}"#;

struct Setup {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jwt: JwtVerifier,
    svid: JwtSvidVerifier,
    rt: tokio::runtime::Runtime,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let rng = SystemRandom::new();
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
            .expect("key");
        let jwk = Jwk::p256("k1", key.public_key().as_ref()).expect("jwk");
        let issuer = StaticIssuer::new(
            ISSUER,
            vec![AUDIENCE.into()],
            vec![Algorithm::ES256],
            vec![jwk.clone()],
        );
        let jwt = JwtVerifier::new(Vec::new(), vec![issuer]).expect("verifier");
        let mut svid_jwk = serde_json::to_value(jwk).expect("json");
        svid_jwk["use"] = "jwt-svid".into();
        let bundle = serde_json::json!({ "keys": [svid_jwk] }).to_string();
        let td = TrustDomain::new("example.org").expect("trust domain");
        let bundles = JwtBundles::parse([(td, bundle.as_bytes())]).expect("bundle");
        let svid = JwtSvidVerifier::new(JwtSvidSettings::new(vec![SVID_AUDIENCE.into()]), bundles)
            .expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Setup {
            key,
            rng,
            jwt,
            svid,
            rt,
        }
    })
}

fn object(bytes: &[u8]) -> Map<String, Value> {
    match json::value(bytes) {
        Ok(Value::Object(m)) => m,
        other => panic!("an accepted token's part is not a strict JSON object: {other:?}"),
    }
}

/// A NumericDate claim that was accepted: a finite number, never negative.
fn date(claims: &Map<String, Value>, name: &str) -> Option<f64> {
    let v = claims.get(name)?;
    let t = v.as_f64().unwrap_or_else(|| panic!("{name} is {v}"));
    assert!(t.is_finite() && t >= 0.0, "{name} is {t}");
    Some(t)
}

/// The times every accepted token has; returns `exp`.
fn check_times(claims: &Map<String, Value>) -> f64 {
    let now = NOW as f64;
    let exp = date(claims, "exp").expect("accepted without exp");
    assert!(now < exp + LEEWAY, "expired: exp {exp}");
    for name in ["nbf", "iat"] {
        if let Some(t) = date(claims, name) {
            assert!(t <= now + LEEWAY, "{name} {t} ahead of now");
        }
    }
    exp
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().map(|s| s.as_str().expect("a string")).collect(),
        other => panic!("not a string or an array of strings: {other}"),
    }
}

fn at(exp: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(exp)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) if selector & 1 == 1 => (&rest[..i], &rest[i + 1..]),
        _ => (FIXED_HEADER, rest),
    };
    let s = setup();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = s.key.sign(&s.rng, signing_input.as_bytes()).expect("signs");
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let now = UNIX_EPOCH + Duration::from_secs(NOW);

    if let Ok(id) = s.rt.block_on(s.jwt.verify(&token, now)) {
        let h = object(header);
        let c = object(claims);
        assert_eq!(h.get("alg"), Some(&Value::from("ES256")));
        assert!(
            h.get("kid").is_none_or(|k| k == "k1"),
            "kid {:?}",
            h.get("kid")
        );
        assert!(h.get("crit").is_none_or(|c| c == &Value::Array(Vec::new())));
        assert!(h.get("b64").is_none_or(|b| b == &Value::Bool(true)));
        if let Some(typ) = h.get("typ") {
            let typ = typ.as_str().expect("typ is a string").to_ascii_lowercase();
            assert!(
                ["jwt", "application/jwt", "at+jwt", "application/at+jwt"].contains(&typ.as_str()),
                "typ {typ}"
            );
        }
        assert_eq!(c.get("iss"), Some(&Value::from(ISSUER)));
        let exp = check_times(&c);
        assert_eq!(id.expires_at, at(exp));
        let aud = c.get("aud").expect("accepted without aud");
        assert!(strings(aud).contains(&AUDIENCE), "aud {aud}");
        let sub = c.get("sub").and_then(Value::as_str).expect("sub");
        assert!(!sub.is_empty());
        assert_eq!(id.token.subject, sub);
        assert_eq!(id.token.issuer, ISSUER);
        let client = c
            .get("client_id")
            .or_else(|| c.get("azp"))
            .map(|v| v.as_str().expect("a string"));
        assert_eq!(id.token.client_id.as_deref(), client);
        let mut named: Vec<&str> = Vec::new();
        if let Some(scope) = c.get("scope") {
            named.extend(scope.as_str().expect("scope is a string").split(' '));
        }
        if let Some(scp) = c.get("scp") {
            for s in strings(scp) {
                named.extend(s.split(' '));
            }
        }
        let mut expected: Vec<&str> = Vec::new();
        for n in named.into_iter().filter(|n| !n.is_empty()) {
            if !expected.contains(&n) {
                expected.push(n);
            }
        }
        assert_eq!(id.token.scopes, expected);
        match c.get("cnf") {
            None => assert_eq!(id.cnf_x5t_s256, None),
            Some(Value::Object(cnf)) => {
                assert!(
                    cnf.keys().all(|k| k == "x5t#S256") && !cnf.is_empty(),
                    "cnf {cnf:?}"
                );
                assert_eq!(id.cnf_x5t_s256.as_deref(), cnf["x5t#S256"].as_str());
            }
            Some(other) => panic!("cnf {other}"),
        }
    }

    if let Ok(id) = s.svid.verify(&token, now) {
        let h = object(header);
        let c = object(claims);
        assert!(
            h.keys()
                .all(|k| ["alg", "kid", "typ"].contains(&k.as_str())),
            "header {h:?}"
        );
        assert_eq!(h.get("alg"), Some(&Value::from("ES256")));
        assert!(h.get("kid").is_none_or(|k| k == "k1"));
        assert!(h.get("typ").is_none_or(|t| t == "JWT" || t == "JOSE"));
        assert_eq!(
            c.get("sub").and_then(Value::as_str),
            Some(id.spiffe_id.as_str())
        );
        assert_eq!(id.spiffe_id.trust_domain_name(), "example.org");
        let exp = check_times(&c);
        assert_eq!(id.expires_at, at(exp));
        let aud = c.get("aud").expect("accepted without aud");
        assert!(strings(aud).contains(&SVID_AUDIENCE), "aud {aud}");
    }
});
