//! Secret references (`env:`, `file:`, `pkcs11:` RFC 7512 URIs, `vault:`): never panics,
//! never echoes an unparsable value in its error, and a parsed reference displays as a
//! reference (never as a literal).
#![no_main]

use std::path::Path;

use idgate_secrets::SecretRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match SecretRef::parse(text, Path::new("/etc/idgate")) {
        Ok(r) => {
            let shown = r.to_string();
            assert!(["env:", "file:", "pkcs11:", "vault:"].iter().any(|p| shown.starts_with(p)), "{shown}");
        }
        Err(e) => {
            // A literal secret must never be repeated back.
            if text.len() > 8 && !text.contains(':') {
                assert!(!e.to_string().contains(text));
            }
        }
    }
});
