//! The keyed 64-bit hash the in-process tables ([`crate::LocalLimiter`],
//! [`crate::GcraLeases`]) hold their keys by: SipHash with a key of the process's own
//! (`RandomState`), so that no caller can aim its keys at one bucket.
//!
//! A limit's key is a tuple of small parts (the limit's name, a tier, up to five of the
//! caller's parts, the rate), and `Hash` feeds them to the hasher one at a time: a string's
//! bytes and its end marker, each `Option`'s and each enum's discriminant, each number.
//! SipHash takes every such write through its tail buffer, at some 80 instructions each:
//! one rate limit's key cost 1,800 instructions, more than the limit's decision. Here the
//! writes are gathered into a buffer on the stack and SipHash reads them in one go. The
//! bytes it reads are the same, in the same order, so the hash keeps its properties: two
//! keys collide only when their byte streams do (never, for `Hash`'s own types), or by
//! chance.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};

/// The bytes gathered before SipHash reads them; a key longer than this is read in pieces
/// of this size (the same hash).
const GATHER: usize = 256;

/// `state`'s hash of `value`, with `value`'s writes read by SipHash in one go.
pub(crate) fn hash_one(state: &RandomState, value: &impl Hash) -> u64 {
    let mut gathered = Gathered {
        inner: state.build_hasher(),
        buf: [0; GATHER],
        len: 0,
    };
    value.hash(&mut gathered);
    gathered.finish()
}

struct Gathered<H> {
    inner: H,
    buf: [u8; GATHER],
    len: usize,
}

impl<H: Hasher> Gathered<H> {
    fn flush(&mut self) {
        self.inner.write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl<H: Hasher + Clone> Hasher for Gathered<H> {
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() > GATHER - self.len {
            self.flush();
            if bytes.len() > GATHER {
                self.inner.write(bytes);
                return;
            }
        }
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn finish(&self) -> u64 {
        let mut inner = self.inner.clone();
        inner.write(&self.buf[..self.len]);
        inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hasher, RandomState};

    use super::{GATHER, hash_one};

    /// What SipHash makes of the bytes written one by one, as `Hash` writes them.
    fn streamed(state: &RandomState, pieces: &[&[u8]]) -> u64 {
        let mut h = state.build_hasher();
        for p in pieces {
            h.write(p);
        }
        h.finish()
    }

    #[test]
    fn gathered_writes_hash_as_the_same_bytes_written_one_by_one() {
        let state = RandomState::new();
        let long = vec![7u8; GATHER * 2 + 5];
        let cases: [&[&[u8]]; 4] = [
            &[],
            &[b"rl", b":", b"spiffe://example.org/ns/kyc/sa/onboarding"],
            &[&[0xff; GATHER - 1], b"ab", b"c"],
            &[b"x", &long, b"y"],
        ];
        for pieces in cases {
            struct Pieces<'a>(&'a [&'a [u8]]);
            impl std::hash::Hash for Pieces<'_> {
                fn hash<H: Hasher>(&self, h: &mut H) {
                    for p in self.0 {
                        h.write(p);
                    }
                }
            }
            assert_eq!(hash_one(&state, &Pieces(pieces)), streamed(&state, pieces));
        }
    }

    #[test]
    fn keys_that_differ_in_one_part_hash_apart() {
        let state = RandomState::new();
        let a = hash_one(&state, &("per-caller", Some("gold"), ["spiffe://a", "r"]));
        let b = hash_one(&state, &("per-caller", Some("gold"), ["spiffe://b", "r"]));
        let c = hash_one(&state, &("per-caller", None::<&str>, ["spiffe://a", "r"]));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            hash_one(&state, &("per-caller", Some("gold"), ["spiffe://a", "r"]))
        );
    }
}
