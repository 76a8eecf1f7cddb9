#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// An uncompressed point of `coordinate_len`-byte coordinates (not on any curve: the
/// checks here are of shape; signatures are verified end to end in `jwt::tests`).
fn point(coordinate_len: usize) -> Vec<u8> {
    let mut p = vec![4u8];
    p.extend(vec![1u8; 2 * coordinate_len]);
    p
}

fn supported(jwk: &Jwk) -> Vec<Algorithm> {
    let key = VerifyingKey::from_jwk(jwk).unwrap();
    Algorithm::ALL
        .into_iter()
        .filter(|a| key.supports(*a))
        .collect()
}

#[test]
fn keys_verify_only_their_own_type_and_declared_alg() {
    use Algorithm::*;
    let ed = Jwk::ed25519("k", &[7; 32]);
    let p256 = Jwk::p256("k", &point(32)).unwrap();
    let p384 = Jwk::p384("k", &point(48)).unwrap();
    let rsa = Jwk::rsa("k", &[0xc1; 256], &[1, 0, 1], PS256);
    let no_alg = |jwk: &Jwk| Jwk {
        alg: None,
        ..jwk.clone()
    };
    let says = |jwk: &Jwk, alg: &str| Jwk {
        alg: Some(alg.into()),
        ..jwk.clone()
    };
    for (jwk, expected) in [
        (ed.clone(), vec![EdDSA]),
        (no_alg(&ed), vec![EdDSA]),
        (p256.clone(), vec![ES256]),
        // Without an `alg`, the curve alone decides.
        (no_alg(&p256), vec![ES256]),
        (no_alg(&p384), vec![ES384]),
        (p384.clone(), vec![ES384]),
        (rsa.clone(), vec![PS256]),
        (says(&rsa, "RS384"), vec![RS384]),
        (says(&rsa, "PS512"), vec![PS512]),
        (no_alg(&rsa), vec![RS256, RS384, RS512, PS256, PS384, PS512]),
    ] {
        assert_eq!(supported(&jwk), expected, "{jwk:?}");
    }
}

#[test]
fn a_key_whose_alg_its_type_cannot_verify_is_refused_at_load_and_says_why() {
    let ed = Jwk::ed25519("k", &[7; 32]);
    let p256 = Jwk::p256("k", &point(32)).unwrap();
    let p384 = Jwk::p384("k", &point(48)).unwrap();
    let rsa = Jwk::rsa("k", &[0xc1; 256], &[1, 0, 1], Algorithm::PS256);
    let says = |jwk: &Jwk, alg: &str| Jwk {
        alg: Some(alg.into()),
        ..jwk.clone()
    };
    for (jwk, why) in [
        (
            says(&p256, "ES384"),
            "the key's alg is ES384, which a P-256 key cannot verify",
        ),
        (
            says(&p384, "ES256"),
            "the key's alg is ES256, which a P-384 key cannot verify",
        ),
        (
            says(&rsa, "ES384"),
            "the key's alg is ES384, which an RSA key cannot verify",
        ),
        (
            says(&ed, "ES256"),
            "the key's alg is ES256, which an Ed25519 key cannot verify",
        ),
        (
            says(&p256, "EdDSA"),
            "the key's alg is EdDSA, which a P-256 key cannot verify",
        ),
    ] {
        let err = VerifyingKey::from_jwk(&jwk).unwrap_err();
        assert_eq!(err.to_string(), why, "{jwk:?}");
    }
    for (jwk, starts) in [
        (says(&p384, "ES512"), "the key's alg: ES512"),
        (
            says(&rsa, "HS256\nforged: line"),
            "the key's alg: \"HS256\\nforged: line\" is never accepted",
        ),
        (says(&rsa, "none"), "the key's alg: "),
        (
            says(&rsa, "rs256"),
            "the key's alg: unsupported algorithm \"rs256\"",
        ),
    ] {
        let err = VerifyingKey::from_jwk(&jwk).unwrap_err();
        assert!(
            matches!(err, JwkError::UnsupportedAlgorithm(_)) && err.to_string().starts_with(starts),
            "{jwk:?}: {err}"
        );
    }
}

#[test]
fn ec_coordinates_are_the_full_size_of_their_curve() {
    let p256 = Jwk::p256("k", &point(32)).unwrap();
    let p384 = Jwk::p384("k", &point(48)).unwrap();
    assert_eq!(p384.crv.as_deref(), Some("P-384"));
    assert_eq!(p384.alg.as_deref(), Some("ES384"));
    let b64 = |len: usize| Some(URL_SAFE_NO_PAD.encode(vec![1u8; len]));
    for (jwk, expected) in [
        // P-256-sized coordinates under P-384, and the other way round.
        (
            Jwk {
                x: b64(32),
                y: b64(32),
                ..p384.clone()
            },
            JwkError::P384CoordinateLength,
        ),
        (
            Jwk {
                x: b64(48),
                y: b64(48),
                ..p256.clone()
            },
            JwkError::P256CoordinateLength,
        ),
        // A leading zero byte dropped (RFC 7518 §6.2.1.2 says keep it), or one too many.
        (
            Jwk {
                y: b64(47),
                ..p384.clone()
            },
            JwkError::P384CoordinateLength,
        ),
        (
            Jwk {
                x: b64(49),
                ..p384.clone()
            },
            JwkError::P384CoordinateLength,
        ),
        (
            Jwk {
                crv: Some("P-521".into()),
                x: b64(66),
                y: b64(66),
                ..p384.clone()
            },
            JwkError::UnsupportedEcCurve,
        ),
        (
            Jwk {
                crv: Some("secp384r1".into()),
                ..p384.clone()
            },
            JwkError::UnsupportedEcCurve,
        ),
        (
            Jwk {
                crv: None,
                ..p384.clone()
            },
            JwkError::UnsupportedEcCurve,
        ),
        (
            Jwk {
                y: None,
                ..p384.clone()
            },
            JwkError::Missing("y"),
        ),
    ] {
        assert_eq!(VerifyingKey::from_jwk(&jwk), Err(expected), "{jwk:?}");
    }
    assert_eq!(
        Jwk::p384("k", &point(32)).unwrap_err(),
        JwkError::P384PointLength
    );
    assert_eq!(
        Jwk::p256("k", &point(48)).unwrap_err(),
        JwkError::P256PointLength
    );
    assert_eq!(
        Jwk::p384("k", &point(48)[1..]).unwrap_err(),
        JwkError::P384PointLength,
        "compressed or bare coordinates"
    );
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
            crv: Some("P-521".into()),
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
