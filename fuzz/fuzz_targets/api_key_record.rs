//! An API key record as a backend reads it back (`idgate_store::fuzzing::api_key_record`):
//! what a copied or altered redb file or Redis dump could hold, read under the id `k1`.
//!
//! Never panics. A record read is stored under its own id (never under another), has a
//! hash and, if any, a tag of 32 bytes, and writes out to bytes that read back to the same
//! record; those bytes are a fixed point.
#![no_main]

use idgate_store::fuzzing::{api_key_bytes, api_key_record};
use libfuzzer_sys::fuzz_target;

const ID: &str = "k1";

fuzz_target!(|data: &[u8]| {
    let Ok(key) = api_key_record(ID, data) else {
        return;
    };
    assert_eq!(key.id, ID);
    assert!(api_key_record("k2", data).is_err(), "read under another id");
    let bytes = api_key_bytes(&key);
    let again = api_key_record(ID, &bytes).expect("a record written reads back");
    assert_eq!(again, key);
    assert_eq!(api_key_bytes(&again), bytes);
});
