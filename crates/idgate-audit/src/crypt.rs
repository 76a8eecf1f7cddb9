//! Encryption at rest: each entry's line is sealed with AES-256-GCM into an envelope line
//!
//! ```text
//! {"enc":"A256GCM","kid":"<key id>","salt":"<base64url>","n":<counter>,"ct":"<base64>"}
//! ```
//!
//! Every file gets a fresh random 128-bit salt, from which HKDF-SHA256 derives the file's
//! own AES key out of the configured one; the nonce is the line's counter within the file
//! (0, 1, 2, …). A nonce therefore never repeats under one derived key, whatever happens to
//! the process, and a start never continues an old file's counter: it opens a new file with
//! a new salt. The tag authenticates every line by itself, so an edit is found before the
//! hash chain is even looked at; the chain (inside) still finds lines moved or removed.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use serde::Deserialize;

use crate::keys::{EncryptionKey, KeyError};

/// What each line's associated data is: binds the ciphertext to this format.
const AAD: &[u8] = b"idgate-audit-v1";
const INFO: &[u8] = b"idgate-audit record key v1";
const ENVELOPE_START: &[u8] = b"{\"enc\":";

fn file_key(master: &EncryptionKey, salt: &[u8]) -> Option<LessSafeKey> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(master.bytes());
    let okm = prk.expand(&[INFO], &AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals one file's lines: its salt, derived key and counter.
pub(crate) struct Sealer {
    key: LessSafeKey,
    kid: String,
    salt: String,
    counter: u64,
}

impl Sealer {
    /// A sealer for a new file, with a fresh random salt.
    pub(crate) fn new(master: &EncryptionKey) -> Result<Self, KeyError> {
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| KeyError::Random)?;
        Ok(Self {
            key: file_key(master, &salt).ok_or(KeyError::Random)?,
            kid: master.kid().to_owned(),
            salt: URL_SAFE_NO_PAD.encode(salt),
            counter: 0,
        })
    }

    /// Appends the envelope of `plain` (one line, without its newline) to `out`.
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), KeyError> {
        let n = self.counter;
        self.counter += 1;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(nonce(n), Aad::from(AAD), &mut buf)
            .map_err(|_| KeyError::Random)?;
        out.extend_from_slice(b"{\"enc\":\"A256GCM\",\"kid\":\"");
        out.extend_from_slice(self.kid.as_bytes());
        out.extend_from_slice(b"\",\"salt\":\"");
        out.extend_from_slice(self.salt.as_bytes());
        out.extend_from_slice(b"\",\"n\":");
        crate::json::num(out, n);
        out.extend_from_slice(b",\"ct\":\"");
        out.extend_from_slice(STANDARD.encode(&buf).as_bytes());
        out.extend_from_slice(b"\"}");
        Ok(())
    }
}

/// Whether a line is an envelope (rather than a plain entry).
pub fn is_envelope(line: &[u8]) -> bool {
    line.starts_with(ENVELOPE_START)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    enc: &'a str,
    kid: &'a str,
    salt: &'a str,
    n: u64,
    ct: &'a str,
}

/// Why an envelope does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a well-formed encrypted line")]
    Shape,
    #[error("encrypted with key {0}, which was not given")]
    UnknownKey(String),
    #[error("does not decrypt: the line was altered, or encrypted with another key of the same id")]
    Tag,
}

/// Opens an envelope line (without its newline) with whichever of `keys` it names.
pub fn open(line: &[u8], keys: &[EncryptionKey]) -> Result<Vec<u8>, EnvelopeError> {
    let env: Envelope<'_> = serde_json::from_slice(line).map_err(|_| EnvelopeError::Shape)?;
    if env.enc != "A256GCM" {
        return Err(EnvelopeError::Shape);
    }
    let key = keys
        .iter()
        .find(|k| k.kid() == env.kid)
        .ok_or_else(|| EnvelopeError::UnknownKey(env.kid.to_owned()))?;
    let salt = URL_SAFE_NO_PAD
        .decode(env.salt)
        .map_err(|_| EnvelopeError::Shape)?;
    let mut buf = STANDARD.decode(env.ct).map_err(|_| EnvelopeError::Shape)?;
    if salt.len() != 16 {
        return Err(EnvelopeError::Shape);
    }
    let file_key = file_key(key, &salt).ok_or(EnvelopeError::Shape)?;
    let plain = file_key
        .open_in_place(nonce(env.n), Aad::from(AAD), &mut buf)
        .map_err(|_| EnvelopeError::Tag)?;
    let len = plain.len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_edits_fail_the_tag() {
        let (key, _) = EncryptionKey::generate().unwrap();
        let mut sealer = Sealer::new(&key).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        sealer.seal(b"{\"seq\":1}", &mut a).unwrap();
        sealer.seal(b"{\"seq\":1}", &mut b).unwrap();
        assert!(is_envelope(&a));
        // The same plaintext twice: different counters, different ciphertexts.
        assert_ne!(a, b);
        assert_eq!(
            open(&a, std::slice::from_ref(&key)).unwrap(),
            b"{\"seq\":1}"
        );
        let ct = a.len() - 10;
        let mut bad = a.clone();
        bad[ct] = if bad[ct] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(&bad, std::slice::from_ref(&key)),
            Err(EnvelopeError::Tag)
        );
        // The counter is authenticated too: a line claiming another position fails.
        let moved = String::from_utf8(a.clone())
            .unwrap()
            .replace("\"n\":0", "\"n\":1");
        assert_eq!(
            open(moved.as_bytes(), std::slice::from_ref(&key)),
            Err(EnvelopeError::Tag)
        );
        let (other, _) = EncryptionKey::generate().unwrap();
        assert!(matches!(
            open(&a, &[other]),
            Err(EnvelopeError::UnknownKey(_))
        ));
    }

    #[test]
    fn every_file_has_its_own_salt() {
        let (key, _) = EncryptionKey::generate().unwrap();
        let (mut s1, mut s2) = (Sealer::new(&key).unwrap(), Sealer::new(&key).unwrap());
        assert_ne!(s1.salt, s2.salt);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s1.seal(b"x", &mut a).unwrap();
        s2.seal(b"x", &mut b).unwrap();
        assert_ne!(a, b);
    }
}
