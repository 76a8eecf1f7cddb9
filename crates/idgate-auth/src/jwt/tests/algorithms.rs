//! The algorithms' own refusals: an EC key verifies only its curve's algorithm, an RSA key
//! only its declared padding and hash, ES384 signatures only in JWS's fixed `r || s`, and
//! ES512 is refused by name. (Each algorithm's happy path is in
//! `accepts_each_algorithm_and_reads_the_identity`.)

use super::*;

/// A token whose header says `header["alg"]`, signed as `made_with` says.
fn signed_as(key: &TestKey, made_with: &str, header: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(made_with, input.as_bytes())))
}

/// The JWK without its `alg`, so that only its type and curve say what it verifies.
fn without_alg(jwk: Jwk) -> Jwk {
    Jwk { alg: None, ..jwk }
}

const RSA_ALGORITHMS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];

#[tokio::test]
async fn an_ec_key_verifies_only_its_own_curves_algorithm() {
    let (p256, p384) = (TestKey::p256(), TestKey::p384());
    let v = static_verifier(
        vec![
            without_alg(p256.jwk("p256", Algorithm::ES256)),
            without_alg(p384.jwk("p384", Algorithm::ES384)),
        ],
        Algorithm::ALL.to_vec(),
    );
    // An ES384 token under the P-256 key's kid, an ES256 one under the P-384 key's.
    for (key, alg, kid) in [(&p384, "ES384", "p256"), (&p256, "ES256", "p384")] {
        assert_eq!(
            verify(&v, &sign_token(key, &header(alg, kid), &claims()))
                .await
                .unwrap_err(),
            "algorithm does not match key",
            "{alg} under {kid}"
        );
    }
    // A P-256 signature relabelled ES384 for the P-384 key.
    assert_eq!(
        verify(&v, &sign_token(&p256, &header("ES384", "p384"), &claims()))
            .await
            .unwrap_err(),
        "bad signature"
    );
    // Without a kid, each curve's one key is the only candidate for its algorithm.
    for (key, alg) in [(&p256, "ES256"), (&p384, "ES384")] {
        let token = sign_token(key, &json!({"alg": alg}), &claims());
        assert!(verify(&v, &token).await.is_ok(), "{alg}");
    }
}

#[tokio::test]
async fn a_key_naming_rs256_verifies_no_other_rsa_algorithm() {
    let rsa = TestKey::rsa();
    let v = static_verifier(
        vec![rsa.jwk("rsa", Algorithm::RS256)],
        Algorithm::ALL.to_vec(),
    );
    for alg in RSA_ALGORITHMS {
        // Each token is a good signature of its own algorithm by the very key.
        let result = verify(&v, &sign_token(&rsa, &header(alg, "rsa"), &claims())).await;
        if alg == "RS256" {
            assert!(result.is_ok(), "{alg}");
        } else {
            assert_eq!(result.unwrap_err(), "algorithm does not match key", "{alg}");
        }
    }
}

#[tokio::test]
async fn an_rsa_signature_verifies_only_under_the_padding_and_hash_it_was_made_with() {
    let rsa = TestKey::rsa();
    let v = static_verifier(
        vec![without_alg(rsa.jwk("rsa", Algorithm::RS256))],
        Algorithm::ALL.to_vec(),
    );
    for made_with in RSA_ALGORITHMS {
        for claimed in RSA_ALGORITHMS {
            let token = signed_as(&rsa, made_with, &header(claimed, "rsa"));
            let result = verify(&v, &token).await;
            if made_with == claimed {
                assert!(result.is_ok(), "{made_with}");
            } else {
                assert_eq!(
                    result.unwrap_err(),
                    "bad signature",
                    "made {made_with}, claimed {claimed}"
                );
            }
        }
    }
}

#[tokio::test]
async fn es384_signatures_are_only_the_fixed_96_bytes_of_r_and_s() {
    let (p384, der_twin) = TestKey::p384_and_der_twin();
    let v = static_verifier(
        vec![p384.jwk("p384", Algorithm::ES384)],
        vec![Algorithm::ES384],
    );
    let good = sign_token(&p384, &header("ES384", "p384"), &claims());
    assert!(verify(&v, &good).await.is_ok());

    // The same key's valid signature, DER-encoded (as a careless signer sends it).
    let der = sign_token(&der_twin, &header("ES384", "p384"), &claims());
    let der_sig = URL_SAFE_NO_PAD
        .decode(der.rsplit('.').next().unwrap())
        .unwrap();
    assert_eq!(der_sig[0], 0x30, "an ASN.1 SEQUENCE");
    assert_eq!(verify(&v, &der).await.unwrap_err(), "bad signature");

    let (input, sig) = good.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(sig.len(), 96);
    for (what, bytes) in [
        ("truncated", sig[..95].to_vec()),
        ("r only", sig[..48].to_vec()),
        ("padded", [&sig[..], &[0]].concat()),
        ("zero-prefixed", [&[0], &sig[..]].concat()),
    ] {
        assert_eq!(
            verify(&v, &format!("{input}.{}", b64(&bytes)))
                .await
                .unwrap_err(),
            "bad signature",
            "{what}"
        );
    }
}

#[tokio::test]
async fn es512_tokens_are_refused_as_unsupported() {
    let k = keys();
    // Whatever the signature and whichever key the kid names: P-521 cannot be verified.
    for token in [
        sign_token(&k.p384, &header("ES512", "p384"), &claims()),
        format!(
            "{}.{}.{}",
            b64(header("ES512", "p521").to_string().as_bytes()),
            b64(claims().to_string().as_bytes()),
            b64(&[7; 132])
        ),
    ] {
        assert_eq!(
            verify(&k.verifier, &token).await.unwrap_err(),
            "ES512 (P-521) is not supported"
        );
    }
}
