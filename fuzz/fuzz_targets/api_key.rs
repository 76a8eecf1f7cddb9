//! Caller API keys: the key parser, the header reader, the query-string detector and the
//! verifier. Never panics; no fuzzed input verifies against the table's one real key.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use idgate_auth::api_key::{self, ApiKeyVerifier, KeySpec, Pepper};
use idgate_secrets::SecretBox;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static ApiKeyVerifier {
    static V: OnceLock<ApiKeyVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let pepper = Pepper::new(SecretBox::new(vec![7u8; 32].into_boxed_slice()), "fuzz").expect("pepper");
        let spec = KeySpec::new("fuzz", vec!["s:r".into()], None, None).expect("spec");
        let key = api_key::generate(&pepper, &spec, SystemTime::now()).expect("key");
        ApiKeyVerifier::new(pepper, [key.record])
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = api_key::parse_key_id(&text);
    let _ = api_key::key_in_query(Some(&text));
    let _ = api_key::idgate_key_in_query(Some(&text));
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", value.clone());
        headers.insert(http::header::AUTHORIZATION, value);
        let _ = api_key::presented_key(&headers);
    }
    assert!(verifier().verify(&text, None, SystemTime::now()).is_err());
});
