//! JWT-SVIDs and SPIFFE bundles: the bundle reader on arbitrary JSON, and full JWT-SVID
//! verification against an ES256 bundle. Never panics; nothing but a token signed by the
//! bundle's key passes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use idgate_auth::jwt::Jwk;
use idgate_auth::jwt_svid::{JwtBundle, JwtBundles, JwtSvidSettings, JwtSvidVerifier};
use idgate_tls::TrustDomain;
use libfuzzer_sys::fuzz_target;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn verifier() -> &'static JwtSvidVerifier {
    static V: OnceLock<JwtSvidVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("key");
        let mut jwk = serde_json::to_value(Jwk::p256("k1", key.public_key().as_ref()).expect("jwk")).expect("json");
        jwk["use"] = "jwt-svid".into();
        let bundle = serde_json::json!({"keys": [jwk]}).to_string();
        let td = TrustDomain::new("example.org").expect("trust domain");
        let bundles = JwtBundles::parse([(td, bundle.as_bytes())]).expect("bundle");
        JwtSvidVerifier::new(JwtSvidSettings::new(vec!["spiffe://example.org/idgate".into()]), bundles)
            .expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("trust domain");
    if let Ok(bundle) = JwtBundle::parse(td, data) {
        // Whatever it read, every key has the kid the specification requires.
        assert_eq!(bundle.key_ids().count(), bundle.len());
    }
    let Ok(token) = std::str::from_utf8(data) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // The fuzzer cannot sign with a key it never sees: every input must be refused.
    assert!(verifier().verify(token, now).is_err());
});
