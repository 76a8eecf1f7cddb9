//! The PROXY protocol header parser: never panics; a header's length is within the bytes
//! given and parsing exactly those bytes gives the same header; every shorter prefix is
//! "not complete yet" (so a reader that consumes it takes nothing past the header); and a
//! verdict never changes once more bytes arrive after a complete header.
#![no_main]

use idgate_proxy::proxy_protocol::{parse, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_LEN + 64)];
    match parse(data) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len() && h.len <= MAX_LEN);
            assert_eq!(parse(&data[..h.len]), Ok(Some(h)));
            for k in 0..h.len {
                assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k}");
            }
        }
        Ok(None) => assert!(data.len() < MAX_LEN),
        Err(e) => {
            // An error is final: more bytes never make it a header.
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\0\0\0\0");
            assert!(parse(&more).is_err(), "{e}");
        }
    }
});
