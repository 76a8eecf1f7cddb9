//! The path check of the pipeline's first stage: never panics, and whatever it lets through
//! has no dot segment, empty segment, backslash or encoded slash, backslash or dot.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = http::Uri::try_from(data) else { return };
    if idgate_proxy::pipeline::check_path(&uri).is_ok() {
        let path = uri.path();
        assert!(path.starts_with('/'));
        assert!(!path.contains('\\') && !path.contains(';'));
        let lower = path.to_ascii_lowercase();
        for bad in ["%2f", "%5c", "%2e", "%3b", "%25", "%00"] {
            assert!(!lower.contains(bad));
        }
        let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
        if !inner.is_empty() {
            assert!(inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        }
    }
});
