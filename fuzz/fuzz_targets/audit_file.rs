//! An audit trail file as the verifier and `idgate audit show` read it: never panics; a
//! finding names a line that exists (or the one after the last); nothing verifies as a
//! checkpoint without the signing key; every line the reader accepts re-checks to the same
//! entry. Read through small buffers (one byte, and a size the input picks), so that lines
//! are split across reads as a file's are, the lines and the verifier's outcome are the same
//! as from the whole file at once.
#![no_main]

use std::io::{BufRead, BufReader};
use std::sync::OnceLock;

use idgate_audit::reader::{self, Lines};
use idgate_audit::verify::{Finding, Summary, Verifier, VerifyError, VerifyOptions};
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

/// What the verifier made of a file: its summary, or the finding it stopped at.
fn verify(reader: impl BufRead) -> Result<Summary, Finding> {
    let (public, enc) = keys();
    let mut v = Verifier::new(VerifyOptions {
        keys: vec![*public],
        decrypt: vec![enc.clone()],
    });
    match v.file("fuzz.jsonl", reader) {
        Ok(()) => Ok(v.finish()),
        Err(VerifyError::Broken(f)) => Err(*f),
        Err(VerifyError::Io { .. }) => unreachable!("reading a slice cannot fail"),
    }
}

/// Every line of a file: number, offset, bytes, whether it ended, whether it was too long.
fn lines(reader: impl BufRead) -> Vec<(u64, u64, Vec<u8>, bool, bool)> {
    let mut lines = Lines::new(reader);
    let mut out = Vec::new();
    while let Some(l) = lines.next_line().expect("reading a slice cannot fail") {
        out.push((l.number, l.offset, l.bytes, l.complete, l.too_long));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (_, enc) = keys();
    let count = data.split(|&b| b == b'\n').count() as u64;
    let whole = verify(data);
    match &whole {
        // No checkpoint can verify under a key nobody holds.
        Ok(summary) => assert_eq!(summary.checkpoints, 0),
        Err(f) => assert!(f.line >= 1 && f.line <= count + 1, "{f}"),
    }
    let all = lines(data);
    for line in &all {
        if let Ok((entry, plain)) = reader::decode(&line.2, std::slice::from_ref(enc)) {
            let again = idgate_audit::chain::open(&plain).expect("an accepted entry re-checks");
            assert_eq!((again.seq, again.hash), (entry.seq, entry.hash));
        }
    }

    // A line longer than the reader keeps is cut where a buffer ends: only shorter files
    // read the same through any buffer.
    if data.len() > reader::MAX_LINE {
        return;
    }
    let picked = 2 + data.first().map_or(0, |&b| usize::from(b) % 63);
    for size in [1, picked] {
        assert_eq!(
            lines(BufReader::with_capacity(size, data)),
            all,
            "buffer {size}"
        );
        assert_eq!(
            verify(BufReader::with_capacity(size, data)),
            whole,
            "buffer {size}"
        );
    }
});
