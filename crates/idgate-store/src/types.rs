//! The names values are stored under, and the store's one clock unit.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::StoreError;

/// The longest key accepted, in bytes: long enough for a combination of a route, a SPIFFE
/// ID and an address, short enough that a key cannot be used to fill the store.
pub const MAX_KEY_LEN: usize = 1024;

macro_rules! store_key {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Refused when empty, longer than [`MAX_KEY_LEN`] bytes, or holding a control
            /// character (which no backend's key syntax should have to escape).
            pub fn new(value: impl Into<String>) -> Result<Self, StoreError> {
                let value = value.into();
                check_key($what, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

store_key!(
    /// Names one counter, such as `rl:route=decision:spiffe=…` or `fail:addr=192.0.2.7`. The
    /// caller composes it; the store gives it no structure.
    CounterKey,
    "counter key"
);
store_key!(
    /// A value seen once within a window: a webhook's event id or signature.
    Nonce,
    "nonce"
);
store_key!(
    /// An object at a provider, such as a verification session id.
    ObjectId,
    "object id"
);
store_key!(
    /// The principal that created an object, as the gateway names callers
    /// (`spiffe://…`, `apikey:NAME`, …).
    Owner,
    "owner"
);
store_key!(
    /// A queue, such as one webhook subscriber's outbox.
    QueueName,
    "queue name"
);

fn check_key(what: &'static str, value: &str) -> Result<(), StoreError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_KEY_LEN {
        "it is longer than 1024 bytes"
    } else if has_control(value) {
        "it holds a control character"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey { what, reason })
}

/// Whether `value` holds a control character (`char::is_control`). Keys are nearly always
/// printable ASCII, which one pass over the bytes (vectorized) tells; only a key with some
/// other byte is read character by character.
fn has_control(value: &str) -> bool {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    value.chars().any(char::is_control)
}

/// Times inside the store: microseconds since the Unix epoch. Fine enough for a rate of a
/// million requests a second per key, and an integer every backend can compare atomically.
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn from_micros(us: u64) -> SystemTime {
    // A damaged row must not panic the reader: far-future times saturate.
    UNIX_EPOCH
        .checked_add(Duration::from_micros(us))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64))
}

pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_refuse_empty_long_and_control_characters() {
        assert!(CounterKey::new("fail:addr=192.0.2.7").is_ok());
        assert!(matches!(
            Nonce::new(""),
            Err(StoreError::InvalidKey { what: "nonce", .. })
        ));
        assert!(ObjectId::new("x".repeat(MAX_KEY_LEN)).is_ok());
        assert!(ObjectId::new("x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(Owner::new("a\nb").is_err());
        assert_eq!(
            format!("{:?}", QueueName::new("q").unwrap()),
            "QueueName(\"q\")"
        );
    }

    #[test]
    fn keys_refuse_every_control_character_and_only_those() {
        // Every character up to U+02FF alone and between printable ones, a few beyond.
        let chars = (0u32..0x300)
            .chain([0x2028, 0x200b, 0xfeff, 0x1f600])
            .filter_map(char::from_u32);
        for c in chars {
            for key in [c.to_string(), format!("ab{c}cd")] {
                assert_eq!(
                    ObjectId::new(key.as_str()).is_err(),
                    c.is_control(),
                    "U+{:04X}",
                    u32::from(c)
                );
            }
        }
    }

    #[test]
    fn micros_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_micros(1_800_000_000_123_456);
        assert_eq!(from_micros(micros(t)), t);
        assert_eq!(micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(from_micros(u64::MAX) > t);
    }
}
