//! Numbers as Python writes them back: Didit's `shorten_floats` turns whole doubles into
//! integers, and `json.dumps` writes other doubles with `repr`. Integers never pass
//! through here: the parser keeps their digits.

use std::fmt::Write as _;

/// A finite double as Python writes it after `shorten_floats`: whole numbers as
/// integers, others as `repr`. (The parser refuses numbers beyond a double's range.)
pub(super) fn float_text(f: f64) -> String {
    if f.fract() == 0.0 {
        return whole_float_text(f);
    }
    python_repr(f)
}

/// The exact decimal value of a whole double (Python's `int(f)`): at most 309 digits, made
/// in at most 34 passes over at most 35 limbs.
fn whole_float_text(f: f64) -> String {
    // Below 2^63 the conversion to i64 is exact.
    const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;
    const BASE: u64 = 1_000_000_000;
    // A limb is below 10^9 < 2^30: shifted by 29 bits, plus a carry, it stays below 2^60.
    const STEP: u32 = 29;
    if f.abs() < I64_BOUND {
        return (f as i64).to_string();
    }
    // f = mantissa × 2^exponent with 11 ≤ exponent ≤ 971 here: shift a base-10^9 number.
    let bits = f.to_bits();
    let mut exponent = (((bits >> 52) & 0x7ff) as i32 - 1075).max(0).unsigned_abs();
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let mut limbs: Vec<u64> = Vec::with_capacity(36);
    limbs.extend([mantissa % BASE, mantissa / BASE]);
    while exponent > 0 {
        let shift = exponent.min(STEP);
        exponent -= shift;
        let mut carry = 0;
        for limb in &mut limbs {
            let v = (*limb << shift) + carry;
            *limb = v % BASE;
            carry = v / BASE;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut out = String::new();
    if f < 0.0 {
        out.push('-');
    }
    let mut iter = limbs.iter().rev();
    if let Some(top) = iter.next() {
        let _ = write!(out, "{top}");
    }
    for limb in iter {
        let _ = write!(out, "{limb:09}");
    }
    out
}

/// Python's `repr(float)`: the shortest digits that read back as the same double, in
/// fixed notation when the decimal exponent is in -4..16, otherwise `d.ddde±XX`.
fn python_repr(f: f64) -> String {
    // Rust's `{:e}` prints the same shortest digits: "1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    // The value is 0.DIGITS × 10^point.
    let point = exp + 1;
    let body = if point <= -4 || point > 16 {
        let (first, rest) = digits.split_at(1);
        let exp_sign = if exp < 0 { '-' } else { '+' };
        let dot = if rest.is_empty() { "" } else { "." };
        format!("{first}{dot}{rest}e{exp_sign}{:02}", exp.unsigned_abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point >= n {
        format!("{digits}{}.0", "0".repeat((point - n) as usize))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_doubles_are_exact_integers() {
        assert_eq!(float_text(97.0), "97");
        assert_eq!(float_text(-0.0), "0");
        assert_eq!(float_text(-1e19), "-10000000000000000000");
        assert_eq!(float_text(2f64.powi(70)), "1180591620717411303424");
        // No shift past 2^63, one shorter than a step, the largest power of two.
        assert_eq!(float_text(2f64.powi(63)), "9223372036854775808");
        assert_eq!(
            float_text(-(2f64.powi(92))),
            "-4951760157141521099596496896"
        );
        assert_eq!(
            float_text(2f64.powi(1023)),
            "89884656743115795386465259539451236680898848947115328636715040578866337902750481566354238661203768010560056939935696678829394884407208311246423715319737062188883946712432742638151109800623047059726541476042502884419075341171231440736956555270413618581675255342293149119973622969239858152417678164812112068608"
        );
    }

    #[test]
    fn other_doubles_are_python_repr() {
        // repr() in CPython 3.11.
        for (f, want) in [
            (0.1, "0.1"),
            (41.5, "41.5"),
            (-0.5, "-0.5"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e-07, "1.5e-07"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (1234567890.5, "1234567890.5"),
        ] {
            assert_eq!(float_text(f), want, "{f:e}");
        }
    }
}
