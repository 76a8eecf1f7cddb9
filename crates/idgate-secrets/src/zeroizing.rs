//! Secrets in the shapes other libraries want them, still in memory that is zeroized when
//! dropped: header values, and strings read from JSON answers.

use std::fmt;

use bytes::Bytes;
use http::header::HeaderValue;
use secrecy::SecretString;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

/// A header value over `raw` itself, with no copy: the bytes are zeroized when the last
/// clone of the value is dropped. Marked sensitive (never indexed by HPACK, hidden from
/// `Debug`). `None` when `raw` is not a valid header value (it is zeroized all the same).
///
/// What an HTTP client does with the value when it sends it (serialising it into its write
/// buffer, HPACK-encoding it) happens in that client's own buffers, which are not zeroized.
pub(crate) fn sensitive_header(raw: Zeroizing<Vec<u8>>) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(raw)).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A JSON value read where a secret string is expected (a KV field, an access token): the
/// string in zeroizing memory, or `Other` for any other JSON value, skipped unread.
///
/// The parser hands a string over in place when it has no escapes; one with escapes is first
/// unescaped in the parser's scratch buffer, which is not zeroized.
pub(crate) enum JsonSecret {
    Text(SecretString),
    Other,
}

impl fmt::Debug for JsonSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(_) => f.write_str("Text(..)"),
            Self::Other => f.write_str("Other"),
        }
    }
}

impl<'de> Deserialize<'de> for JsonSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonSecretVisitor)
    }
}

struct JsonSecretVisitor;

impl<'de> Visitor<'de> for JsonSecretVisitor {
    type Value = JsonSecret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonSecret, E> {
        // `to_owned` allocates exactly the length: the box the secret lives in is this one.
        Ok(JsonSecret::Text(SecretString::from(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<JsonSecret, E> {
        // Its capacity may exceed its length, and shrinking it would leave the old buffer
        // behind unzeroed: copy it out and zeroize it.
        let v = Zeroizing::new(v);
        self.visit_str(&v)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<JsonSecret, E> {
        Ok(JsonSecret::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonSecret, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonSecret::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonSecret, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(JsonSecret::Other)
    }
}

#[cfg(test)]
pub(crate) mod freed {
    //! Looks for a secret in this process's writable memory (its heap, its stacks), where a
    //! copy dropped without being zeroized stays until the allocator reuses the space.
    //!
    //! The allocator writes its own bookkeeping into the first bytes of a freed block, so a
    //! secret is looked for by a part of it at least 32 bytes past its start: tests use
    //! secrets longer than that.

    use std::io::{Read, Seek, SeekFrom};

    /// Files and buffers opened before the code under test runs, so that the search itself
    /// allocates nothing that could take over, and overwrite, a block it looks for.
    pub(crate) struct Scanner {
        maps: std::fs::File,
        mem: std::fs::File,
        text: String,
        ranges: Vec<(u64, u64)>,
        chunk: Vec<u8>,
    }

    impl Scanner {
        pub(crate) fn new() -> Self {
            Self {
                maps: std::fs::File::open("/proc/self/maps").unwrap(),
                mem: std::fs::File::open("/proc/self/mem").unwrap(),
                text: String::with_capacity(1 << 20),
                ranges: Vec::with_capacity(1 << 14),
                chunk: vec![0; 1 << 20],
            }
        }

        /// Whether `needle` is anywhere in the process's private writable mappings.
        pub(crate) fn finds(&mut self, needle: &[u8]) -> bool {
            self.text.clear();
            self.maps.seek(SeekFrom::Start(0)).unwrap();
            self.maps.read_to_string(&mut self.text).unwrap();
            assert!(
                self.text.len() < self.text.capacity(),
                "maps outgrew its buffer"
            );
            self.ranges.clear();
            for line in self.text.lines() {
                let mut parts = line.split_whitespace();
                let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
                    continue;
                };
                // Private writable memory: heap, stacks, anonymous mappings.
                if !perms.starts_with("rw") || !perms.ends_with('p') {
                    continue;
                }
                let Some((start, end)) = range.split_once('-') else {
                    continue;
                };
                let parse = |h: &str| u64::from_str_radix(h, 16).unwrap();
                assert!(self.ranges.len() < self.ranges.capacity());
                self.ranges.push((parse(start), parse(end)));
            }
            // The chunk buffer holds only what was just read: its own span is left out.
            let own_start = self.chunk.as_ptr() as u64;
            let own_end = own_start + self.chunk.len() as u64;
            for i in 0..self.ranges.len() {
                let (start, end) = self.ranges[i];
                let parts = [(start, end.min(own_start)), (start.max(own_end), end)];
                for (from, to) in parts {
                    if from < to && self.search(from, to, needle) {
                        return true;
                    }
                }
            }
            false
        }

        fn search(&mut self, start: u64, end: u64, needle: &[u8]) -> bool {
            let mut at = start;
            while at < end {
                let len = (end - at).min(self.chunk.len() as u64) as usize;
                if self.mem.seek(SeekFrom::Start(at)).is_err()
                    || self.mem.read_exact(&mut self.chunk[..len]).is_err()
                {
                    return false;
                }
                if self.chunk[..len].windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
                if at + len as u64 >= end {
                    return false;
                }
                // Overlap the next chunk, so that a needle across the boundary is seen.
                at += (len - needle.len().min(len)) as u64 + 1;
            }
            false
        }
    }
}

/// The part of a test secret looked for: past the allocator's bookkeeping in a freed block.
#[cfg(test)]
pub(crate) fn tail(s: &'static str) -> &'static [u8] {
    &s.as_bytes()[32..]
}

#[cfg(test)]
mod tests {
    use super::freed::Scanner;
    use super::*;

    #[test]
    fn the_scanner_finds_a_dropped_copy_and_not_a_zeroized_one() {
        const KEPT: &str = "scanner-test-kept-000000000000000000000000-tail-7c1e9a4f5b2d8e63a1";
        const WIPED: &str = "scanner-test-wiped-00000000000000000000000-tail-0d4b7e2c9f1a6358b2";
        let mut scanner = Scanner::new();
        // The zeroized one first: a later block of the same size would reuse the space.
        drop(std::hint::black_box(Zeroizing::new(WIPED.to_owned())));
        drop(std::hint::black_box(KEPT.to_owned()));
        assert!(scanner.finds(tail(KEPT)), "a dropped copy was not found");
        assert!(!scanner.finds(tail(WIPED)), "a zeroized copy was found");
    }
}
