//! Bearer tokens: the `Authorization` header reader and full JWS/claims verification against
//! a static ES256 issuer. Never panics; nothing but a token signed by the issuer's key passes.
//! A header the reader takes a token from names the `Bearer` scheme (any case), the token is
//! a non-empty token68 (RFC 9110 §11.2) taken from the value as it is, and `Bearer <token>`
//! reads back to it; a header of another scheme is left alone. (What happens after the
//! signature is checked needs a token the fuzzer cannot sign: `jwt_claims` signs its input
//! in the target to reach it.)
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use idgate_auth::jwt::{presented_bearer, Algorithm, Jwk, JwtVerifier, StaticIssuer};
use libfuzzer_sys::fuzz_target;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn verifier() -> &'static (JwtVerifier, tokio::runtime::Runtime) {
    static V: OnceLock<(JwtVerifier, tokio::runtime::Runtime)> = OnceLock::new();
    V.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
            .expect("key");
        let jwk = Jwk::p256("k1", key.public_key().as_ref()).expect("jwk");
        let issuer = StaticIssuer::new(
            "https://idgate.test",
            vec!["idgate".into()],
            vec![Algorithm::ES256],
            vec![jwk],
        );
        let v = JwtVerifier::new(Vec::new(), vec![issuer]).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (v, rt)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let bearer = data.len() >= 6
            && data[..6].eq_ignore_ascii_case(b"bearer")
            && matches!(data.get(6), None | Some(b' ' | b'\t'));
        match presented_bearer(&headers) {
            Ok(Some(token)) => {
                assert!(bearer, "a token from another scheme");
                assert!(!token.is_empty());
                assert!(token
                    .trim_end_matches('=')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
                assert!(std::str::from_utf8(data).is_ok_and(|v| v.contains(token)));
                let again = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .expect("token68 is a header value");
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, again);
                assert_eq!(presented_bearer(&headers).ok().flatten(), Some(token));
            }
            Ok(None) => assert!(!bearer, "a bearer header without its token"),
            Err(_) => assert!(bearer, "a header of another scheme refused"),
        }
    }
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (v, rt) = verifier();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // The fuzzer cannot sign with a key it never sees: every input must be refused.
    assert!(rt.block_on(v.verify(token, now)).is_err());
});
