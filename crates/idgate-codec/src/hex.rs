//! Hexadecimal: lowercase out, either case in (except where a peer's format says lowercase).

const LOWER: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(LOWER[usize::from(b >> 4)]));
        s.push(char::from(LOWER[usize::from(b & 0x0f)]));
    }
    s
}

/// Writes the lowercase hex of `bytes` into `out`, two digits a byte, as far as `out` goes.
pub fn encode_to_slice(bytes: &[u8], out: &mut [u8]) {
    for (&b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = LOWER[usize::from(b >> 4)];
        pair[1] = LOWER[usize::from(b & 0x0f)];
    }
}

/// The value of one hex digit, either case.
pub fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The value of one lowercase hex digit.
fn lower_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'F' => None,
        c => digit(c),
    }
}

fn decode_with(s: &str, digit: fn(u8) -> Option<u8>) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// Decodes hex digits of either case; `None` for an odd length or anything but a digit.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    decode_with(s, digit)
}

/// Decodes lowercase hex only, for formats that define it so (an uppercase digit is refused).
pub fn decode_lower(s: &str) -> Option<Vec<u8>> {
    decode_with(s, lower_digit)
}

/// Decodes exactly `N` bytes of hex, either case.
pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_lowercase_and_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let text = encode(&all);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 4..], "feff");
        assert_eq!(decode(&text).as_deref(), Some(&all[..]));
        assert_eq!(decode_lower(&text).as_deref(), Some(&all[..]));
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn encoding_into_a_slice_writes_two_digits_a_byte() {
        let mut out = [b'.'; 6];
        encode_to_slice(&[0xab, 0x01], &mut out);
        assert_eq!(&out, b"ab01..");
        let mut short = [0u8; 2];
        encode_to_slice(&[0x12, 0x34], &mut short);
        assert_eq!(&short, b"12");
    }

    #[test]
    fn decoding_refuses_odd_lengths_signs_and_other_characters() {
        assert_eq!(decode("AbCd"), Some(vec![0xab, 0xcd]));
        assert_eq!(decode_lower("AbCd"), None);
        for bad in ["a", "0g", "+f", " f", "ff\n", "é0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_array::<2>("beef"), Some([0xbe, 0xef]));
        assert_eq!(decode_array::<2>("bee"), None);
        assert_eq!(decode_array::<2>("beefee"), None);
        assert_eq!(decode_array::<1>("+f"), None);
    }

    #[test]
    fn digits_of_either_case() {
        assert_eq!(digit(b'0'), Some(0));
        assert_eq!(digit(b'F'), Some(15));
        assert_eq!(digit(b'f'), Some(15));
        assert_eq!(digit(b'g'), None);
    }
}
