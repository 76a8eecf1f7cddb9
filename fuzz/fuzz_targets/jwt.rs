//! Bearer tokens: the `Authorization` header reader and full JWS/claims verification against
//! a static ES256 issuer. Never panics; nothing but a token signed by the issuer's key passes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use idgate_auth::jwt::{Algorithm, Jwk, JwtVerifier, StaticIssuer, presented_bearer};
use libfuzzer_sys::fuzz_target;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn verifier() -> &'static (JwtVerifier, tokio::runtime::Runtime) {
    static V: OnceLock<(JwtVerifier, tokio::runtime::Runtime)> = OnceLock::new();
    V.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("key");
        let jwk = Jwk::p256("k1", key.public_key().as_ref()).expect("jwk");
        let issuer = StaticIssuer::new("https://idgate.test", vec!["idgate".into()], vec![Algorithm::ES256], vec![jwk]);
        let v = JwtVerifier::new(Vec::new(), vec![issuer]).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        (v, rt)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let _ = presented_bearer(&headers);
    }
    let Ok(token) = std::str::from_utf8(data) else { return };
    let (v, rt) = verifier();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // The fuzzer cannot sign with a key it never sees: every input must be refused.
    assert!(rt.block_on(v.verify(token, now)).is_err());
});
