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

/// The exact decimal value of a whole double (Python's `int(f)`).
fn whole_float_text(f: f64) -> String {
    // Below 2^63 the conversion to i64 is exact.
    const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;
    if f.abs() < I64_BOUND {
        return (f as i64).to_string();
    }
    // f = mantissa × 2^exponent with exponent ≥ 11 here; double a base-10^9 number.
    let bits = f.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let mut limbs: Vec<u64> = vec![mantissa % 1_000_000_000, mantissa / 1_000_000_000];
    for _ in 0..exponent.max(0) {
        let mut carry = 0;
        for limb in &mut limbs {
            let v = *limb * 2 + carry;
            *limb = v % 1_000_000_000;
            carry = v / 1_000_000_000;
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
