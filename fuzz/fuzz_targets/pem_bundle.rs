//! PEM trust bundles and SVIDs (certificate chain + private key) on arbitrary bytes.
//! Must never panic.
//!
//! Input: the whole input is parsed as a bundle. For `parse_svid` it is split at the first
//! NUL byte: the part before is the certificate chain PEM, the part after the key PEM (with
//! no NUL, both are the whole input, like a combined cert+key file).

#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use idgate_tls::material::{parse_bundle, parse_svid};
use libfuzzer_sys::fuzz_target;
use rustls::crypto::CryptoProvider;

fn provider() -> &'static Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(idgate_tls::crypto_provider)
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("bundle.pem");
    if let Ok(store) = parse_bundle(path, data) {
        assert!(!store.is_empty(), "accepted bundle has no roots");
    }

    let (cert, key) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    if let Ok(ck) = parse_svid(Path::new("svid.crt"), cert, Path::new("svid.key"), key, provider()) {
        assert!(!ck.cert.is_empty());
    }
});
