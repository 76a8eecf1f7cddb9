//! Durations as written in the configuration: an integer and a unit, `250ms`, `2s`, `5m`, `1h`.

use std::time::Duration;

/// Why a duration was refused; each names the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("\"{0}\" is not a duration: write a number and a unit, like \"2s\" or \"250ms\"")]
    NotANumber(String),
    #[error("\"{0}\" has no known unit: use ms, s, m or h")]
    UnknownUnit(String),
    #[error("\"{0}\" is longer than the longest allowed duration, 30 days")]
    TooLong(String),
}

const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses `"<n><unit>"` with unit `ms`, `s`, `m` or `h`, at most 30 days.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(DurationError::UnknownUnit(s.to_owned())),
    };
    // Timers add durations to the clock; a bound keeps every sum far from overflow.
    if d > MAX {
        return Err(DurationError::TooLong(s.to_owned()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_garbage() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert!(parse_duration("720h").is_ok());
    }
}
