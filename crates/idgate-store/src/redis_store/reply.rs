//! Reading script replies, and the numbers scripts are given.
//!
//! Lua in Redis counts in doubles: integers are exact up to 2^53. Microsecond times stay far
//! below that until the year 2255, so times and spans are clamped to it before they are
//! passed, and scripts only compare the numbers they parse; every number a script stores or
//! returns is one it was given as text (or a Redis integer), never one Lua formatted.

use redis::Value;

use crate::StoreError;

/// The largest integer Lua holds exactly.
pub(crate) const MAX_EXACT: u64 = (1 << 53) - 1;

/// How long a key outlives its logical deadline in Redis, so that a replica whose clock
/// trails Redis's a little still finds the state it wrote; liveness is always decided by
/// comparing the deadline with the caller's `now`, so the extra time changes no answer.
pub(crate) const EXPIRY_GRACE_MS: u64 = 5_000;

pub(crate) fn exact(n: u64) -> u64 {
    n.min(MAX_EXACT)
}

/// The PEXPIREAT time (milliseconds) for a logical deadline (microseconds).
pub(crate) fn expire_at_ms(deadline_us: u64) -> u64 {
    deadline_us.div_ceil(1000).saturating_add(EXPIRY_GRACE_MS)
}

pub(crate) fn bad(what: &'static str) -> StoreError {
    StoreError::Unavailable {
        reason: format!("Redis answered something unexpected ({what})"),
    }
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("not a list")),
    }
}

pub(crate) fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad("a negative number")),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("not a number")),
        Value::SimpleString(s) => s.parse().map_err(|_| bad("not a number")),
        _ => Err(bad("not a number")),
    }
}

pub(crate) fn opt_int(v: &Value) -> Result<Option<u64>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        v => int(v).map(Some),
    }
}

pub(crate) fn opt_bytes(v: Value) -> Result<Option<Vec<u8>>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        _ => Err(bad("not a string")),
    }
}

pub(crate) fn opt_string(v: Value) -> Result<Option<String>, StoreError> {
    opt_bytes(v)?
        .map(|b| String::from_utf8(b).map_err(|_| bad("not UTF-8 text")))
        .transpose()
}

pub(crate) fn string(v: Value) -> Result<String, StoreError> {
    opt_string(v)?.ok_or_else(|| bad("a missing string"))
}
