#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn algorithm_names_are_exact_and_never_none_or_hmac() {
    for a in Algorithm::ALL {
        assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
    }
    assert_eq!("none".parse::<Algorithm>(), Err(AlgorithmError::None));
    assert_eq!("NONE".parse::<Algorithm>(), Err(AlgorithmError::None));
    for hs in ["HS256", "HS384", "HS512", "hs256"] {
        assert!(matches!(
            hs.parse::<Algorithm>(),
            Err(AlgorithmError::Hmac(_))
        ));
    }
    for other in ["rs256", "ES384", "RS512", "Ed25519", ""] {
        assert!(matches!(
            other.parse::<Algorithm>(),
            Err(AlgorithmError::Unsupported(_))
        ));
    }
}

#[test]
fn keys_verify_only_their_own_type_and_declared_alg() {
    let ed = VerifyingKey::from_jwk(&Jwk::ed25519("k", &[7; 32])).unwrap();
    assert!(ed.supports(Algorithm::EdDSA));
    assert!(!ed.supports(Algorithm::ES256) && !ed.supports(Algorithm::RS256));

    let mut point = vec![4u8];
    point.extend([1u8; 64]);
    let ec = VerifyingKey::from_jwk(&Jwk::p256("k", &point).unwrap()).unwrap();
    assert!(ec.supports(Algorithm::ES256) && !ec.supports(Algorithm::EdDSA));

    let rsa = Jwk::rsa("k", &[0xc1; 256], &[1, 0, 1], Algorithm::PS256);
    let key = VerifyingKey::from_jwk(&rsa).unwrap();
    assert!(key.supports(Algorithm::PS256));
    assert!(!key.supports(Algorithm::RS256), "the JWK says PS256 only");
    let any_rsa = VerifyingKey::from_jwk(&Jwk { alg: None, ..rsa }).unwrap();
    assert!(any_rsa.supports(Algorithm::RS256) && any_rsa.supports(Algorithm::PS256));
}

#[test]
fn unusable_jwks_are_refused() {
    let good = Jwk::ed25519("k", &[7; 32]);
    let cases = [
        Jwk {
            use_: Some("enc".into()),
            ..good.clone()
        },
        Jwk {
            key_ops: Some(vec!["sign".into()]),
            ..good.clone()
        },
        Jwk {
            crv: Some("X25519".into()),
            ..good.clone()
        },
        Jwk {
            x: Some("AAAA".into()),
            ..good.clone()
        },
        Jwk {
            x: Some("!!".into()),
            ..good.clone()
        },
        Jwk {
            kty: "oct".into(),
            ..good.clone()
        },
        Jwk::rsa("k", &[0xc1; 128], &[1, 0, 1], Algorithm::RS256),
        Jwk {
            kty: "EC".into(),
            crv: Some("P-384".into()),
            ..good.clone()
        },
    ];
    for jwk in cases {
        assert!(VerifyingKey::from_jwk(&jwk).is_err(), "{jwk:?}");
    }
    let padded = Jwk::rsa(
        "k",
        &[&[0u8][..], &[0xc1; 256]].concat(),
        &[0, 1, 0, 1],
        Algorithm::RS256,
    );
    assert!(
        VerifyingKey::from_jwk(&padded).is_ok(),
        "leading zeros are tolerated"
    );
}

fn enc(v: &str) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[test]
fn parse_refuses_malformed_compact_tokens() {
    let h = enc(r#"{"alg":"ES256","kid":"k"}"#);
    let p = enc(r#"{"iss":"x"}"#);
    let s = URL_SAFE_NO_PAD.encode([1u8; 64]);
    assert!(parse(&format!("{h}.{p}.{s}")).is_ok());
    let cases = [
        (format!("{h}.{p}"), "malformed"),
        (format!("{h}.{p}.{s}.{s}"), "malformed"),
        (format!("{h}.{p}.{s}="), "malformed"),
        (format!("{h}=.{p}.{s}"), "malformed"),
        (format!("{h}.{p}.{s}+"), "malformed"),
        (format!("{}.{p}.{s}", enc("[1]")), "malformed"),
        (format!("{}.{p}.{s}", enc(r#"{"kid":"k"}"#)), "malformed"),
        (format!("{h}.{}.{s}", enc(r#""str""#)), "malformed"),
        (
            format!("{h}.{}.{s}", enc(r#"{"iss":"a","iss":"b"}"#)),
            "malformed",
        ),
        (format!("{h}.{p}."), "bad signature"),
        (
            format!("{}.{p}.", enc(r#"{"alg":"none"}"#)),
            "algorithm not allowed",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"HS256"}"#)),
            "algorithm not allowed",
        ),
        (
            format!(
                "{}.{p}.{s}",
                enc(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#)
            ),
            "unsupported critical header",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","b64":false}"#)),
            "unsupported critical header",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","typ":"dpop+jwt"}"#)),
            "not an access token",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","kid":7}"#)),
            "malformed",
        ),
        (
            format!("{h}.{}.{s}", "A".repeat(MAX_TOKEN_BYTES)),
            "token too large",
        ),
    ];
    for (token, why) in cases {
        assert_eq!(parse(&token).map(|_| ()), Err(why), "{token:.80}");
    }
    let ok = format!(
        "{}.{p}.{s}",
        enc(r#"{"alg":"ES256","typ":"at+jwt","crit":[]}"#)
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn at_jwt_is_recognised_in_both_spellings_and_any_case() {
    let p = enc(r#"{"iss":"x"}"#);
    let s = URL_SAFE_NO_PAD.encode([1u8; 64]);
    for (typ, at_jwt) in [
        (Some("at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("application/at+jwt"), true),
        (Some("Application/AT+JWT"), true),
        (Some("JWT"), false),
        (Some("application/jwt"), false),
        (None, false),
    ] {
        let header = match typ {
            Some(t) => format!(r#"{{"alg":"ES256","typ":"{t}"}}"#),
            None => r#"{"alg":"ES256"}"#.to_owned(),
        };
        let token = format!("{}.{p}.{s}", enc(&header));
        assert_eq!(parse(&token).unwrap().at_jwt, at_jwt, "{typ:?}");
    }
}
