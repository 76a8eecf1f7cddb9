//! The pieces every scheme shares: reading a header strictly, decoding a hex signature,
//! and finding the secret under which a message has that HMAC, in constant time.

use http::HeaderMap;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use super::Rejected;

/// Longer header values are refused before they are looked at. A Persona header with two
/// groups is ~160 bytes; a SHA-512 hex digest 128.
pub(crate) const MAX_HEADER_LEN: usize = 1024;

/// The hash under an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digest {
    Sha1,
    Sha256,
    Sha512,
}

impl Digest {
    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Digest::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Digest::Sha256 => hmac::HMAC_SHA256,
            Digest::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn tag_len(self) -> usize {
        match self {
            Digest::Sha1 => 20,
            Digest::Sha256 => 32,
            Digest::Sha512 => 64,
        }
    }
}

/// The one value of header `name`, trimmed of surrounding whitespace: `None` when absent;
/// refused when repeated (which value would count?), longer than [`MAX_HEADER_LEN`] or
/// not visible ASCII.
pub(crate) fn header<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, Rejected> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() || value.len() > MAX_HEADER_LEN {
        return Err(Rejected::Malformed(name));
    }
    let text = value.to_str().map_err(|_| Rejected::Malformed(name))?;
    Ok(Some(text.trim_matches([' ', '\t'])))
}

/// Like [`header`], but absent is refused too.
pub(crate) fn required<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<&'h str, Rejected> {
    header(headers, name)?.ok_or(Rejected::Missing(name))
}

/// The signature bytes of a hex value: exactly one digest long, lowercase. Every provider
/// here documents a lowercase hex digest, compared as a string by its own example code.
pub(crate) fn decode_hex(
    value: &str,
    digest: Digest,
    name: &'static str,
) -> Result<Vec<u8>, Rejected> {
    if value.len() != 2 * digest.tag_len() {
        return Err(Rejected::Malformed(name));
    }
    idgate_codec::hex::decode_lower(value).ok_or(Rejected::Malformed(name))
}

/// The index of the first secret under which `tag` is the HMAC of the concatenated `parts`.
/// Each comparison takes the same time whatever the bytes; which secret matched is not a
/// secret.
pub(crate) fn matching_secret(
    digest: Digest,
    secrets: &[&[u8]],
    parts: &[&[u8]],
    tag: &[u8],
) -> Option<usize> {
    secrets.iter().position(|secret| {
        let key = hmac::Key::new(digest.algorithm(), secret);
        let mut ctx = hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        bool::from(ctx.sign().as_ref().ct_eq(tag))
    })
}

/// Which secret signed `parts`, if any of the candidate `tags` is its HMAC under one.
/// The HMAC is computed once per secret, whatever the number of candidates.
pub(crate) fn matching_secret_any(
    digest: Digest,
    secrets: &[&[u8]],
    parts: &[&[u8]],
    tags: &[Vec<u8>],
) -> Option<usize> {
    secrets.iter().position(|secret| {
        let key = hmac::Key::new(digest.algorithm(), secret);
        let mut ctx = hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        let computed = ctx.sign();
        // No early exit between candidates: all are compared whichever matches.
        tags.iter().fold(false, |found, tag| {
            found | bool::from(computed.as_ref().ct_eq(tag))
        })
    })
}

/// `sha256:<hex>` of the signed message: a replay key that is the same whichever secret
/// signed it, for events that carry no id of their own.
pub(crate) fn digest_key(parts: &[&[u8]]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    format!(
        "sha256:{}",
        idgate_codec::hex::encode(ctx.finish().as_ref())
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn a_header_is_one_bounded_visible_ascii_value() {
        let mut h = HeaderMap::new();
        assert_eq!(header(&h, "x-signature"), Ok(None));
        assert_eq!(
            required(&h, "x-signature"),
            Err(Rejected::Missing("x-signature"))
        );
        h.insert("x-signature", HeaderValue::from_static(" abc\t"));
        assert_eq!(header(&h, "x-signature"), Ok(Some("abc")));
        h.append("x-signature", HeaderValue::from_static("def"));
        assert_eq!(
            header(&h, "x-signature"),
            Err(Rejected::Malformed("x-signature"))
        );
        h.insert(
            "x-signature",
            HeaderValue::from_bytes("é".as_bytes()).unwrap(),
        );
        assert_eq!(
            header(&h, "x-signature"),
            Err(Rejected::Malformed("x-signature"))
        );
        let long = "a".repeat(MAX_HEADER_LEN + 1);
        h.insert("x-signature", HeaderValue::from_str(&long).unwrap());
        assert_eq!(
            header(&h, "x-signature"),
            Err(Rejected::Malformed("x-signature"))
        );
    }

    #[test]
    fn hex_signatures_are_one_lowercase_digest() {
        let lower = "ab".repeat(32);
        assert_eq!(
            decode_hex(&lower, Digest::Sha256, "h").unwrap(),
            vec![0xab; 32]
        );
        assert!(decode_hex(&"AB".repeat(32), Digest::Sha256, "h").is_err());
        assert!(decode_hex(&lower, Digest::Sha512, "h").is_err());
        assert!(decode_hex(&lower[..40], Digest::Sha1, "h").is_ok());
        assert!(decode_hex(&format!("{}zz", &lower[..62]), Digest::Sha256, "h").is_err());
    }

    #[test]
    fn finds_the_secret_that_signed() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"old");
        let tag = hmac::sign(&key, b"t.body").as_ref().to_vec();
        let secrets: [&[u8]; 2] = [b"new", b"old"];
        assert_eq!(
            matching_secret(Digest::Sha256, &secrets, &[b"t.", b"body"], &tag),
            Some(1)
        );
        assert_eq!(
            matching_secret(Digest::Sha256, &secrets, &[b"t.", b"bodY"], &tag),
            None
        );
        assert_eq!(
            matching_secret_any(Digest::Sha256, &secrets, &[b"t.body"], &[vec![0; 32], tag]),
            Some(1)
        );
        assert_eq!(
            digest_key(&[b"a", b"bc"]),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
