//! An audit trail file as the verifier and `idgate audit show` read it: never panics; a
//! finding names a line that exists (or the one after the last); nothing verifies as a
//! checkpoint without the signing key; every line the reader accepts re-checks to the same
//! entry.
#![no_main]

use std::sync::OnceLock;

use idgate_audit::reader::{self, Lines};
use idgate_audit::verify::{Verifier, VerifyError, VerifyOptions};
use idgate_audit::{EncryptionKey, PublicKey};
use libfuzzer_sys::fuzz_target;

/// A public key nobody holds the private key of, and a fixed encryption key.
fn keys() -> &'static (PublicKey, EncryptionKey) {
    static KEYS: OnceLock<(PublicKey, EncryptionKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let public = PublicKey::from_bytes([7; 32]);
        // The key the encrypted seeds were written with (seeds/audit_file/README).
        (public, EncryptionKey::from_bytes([0x42; 32]))
    })
}

fuzz_target!(|data: &[u8]| {
    let (public, enc) = keys();
    let mut v = Verifier::new(VerifyOptions {
        keys: vec![*public],
        decrypt: vec![enc.clone()],
    });
    let lines = data.split(|&b| b == b'\n').count() as u64;
    match v.file("fuzz.jsonl", data) {
        Ok(()) => {
            // No checkpoint can verify under a key nobody holds.
            assert_eq!(v.finish().checkpoints, 0);
        }
        Err(VerifyError::Broken(f)) => assert!(f.line >= 1 && f.line <= lines + 1, "{f}"),
        Err(VerifyError::Io { .. }) => unreachable!("reading a slice cannot fail"),
    }
    let mut lines = Lines::new(data);
    while let Ok(Some(line)) = lines.next_line() {
        if let Ok((entry, plain)) = reader::decode(&line.bytes, std::slice::from_ref(enc)) {
            let again = idgate_audit::chain::open(&plain).expect("an accepted entry re-checks");
            assert_eq!((again.seq, again.hash), (entry.seq, entry.hash));
        }
    }
});
