//! Reading an upstream's JSON answer whole, for the guards that must look inside it
//! (ownership records and lists), and putting a rewritten one back.
//!
//! The rule for what cannot be read: only a 2xx answer is read for ownership (masking
//! reads answers of every status, see `masking.rs`); it must be JSON
//! (`application/json` or `…+json`), uncompressed (the request guard asked for identity
//! encoding) and at most [`MAX_JSON_RESPONSE`] bytes. Anything else is refused with
//! `502 unreadable-response` at once, from its headers where they tell (type, encoding,
//! announced length), so a caller never waits on a body the gateway would not use, and
//! never receives one it could not check.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use serde_json::Value;

use crate::body::ProxyBody;
use crate::problem::Refusal;

/// The largest answer read for ownership: a page of a list or one created object.
pub(crate) const MAX_JSON_RESPONSE: usize = 1024 * 1024;

fn unreadable(reason: impl Into<String>) -> Refusal {
    Refusal::UnreadableResponse {
        reason: reason.into(),
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/…+json`, with
/// any parameters (a `charset` other than UTF-8 is not JSON as RFC 8259 defines it).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    json && utf8(headers)
}

/// Whether the `Content-Type`'s `charset`, if it names one, is UTF-8.
pub(crate) fn utf8(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    v.split(';').skip(1).all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

fn identity(h: &HeaderMap) -> Result<(), Refusal> {
    match h.get(CONTENT_ENCODING) {
        Some(enc) if !enc.as_bytes().eq_ignore_ascii_case(b"identity") => Err(unreadable(
            "the upstream compressed an answer the gateway must read",
        )),
        _ => Ok(()),
    }
}

/// The answer's body, parsed, and its bytes; `timeout` bounds the wait for the body.
pub(crate) async fn read(
    resp: &mut Response<ProxyBody>,
    timeout: Duration,
) -> Result<(Bytes, Value), Refusal> {
    let h = resp.headers();
    identity(h)?;
    if !is_json(h) {
        return Err(unreadable("the upstream's answer is not JSON"));
    }
    read_body(resp, timeout).await
}

/// [`read`] for a caller that judged the media type itself: the encoding, the size and
/// the syntax are still checked.
pub(crate) async fn read_body(
    resp: &mut Response<ProxyBody>,
    timeout: Duration,
) -> Result<(Bytes, Value), Refusal> {
    let bytes = read_bytes(resp, timeout).await?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        unreadable(format!(
            "the upstream's answer is not JSON: {}",
            e.classify_name()
        ))
    })?;
    Ok((bytes, value))
}

/// The answer's body as it came, for a caller that reads the JSON itself: the encoding and
/// the size are checked.
pub(crate) async fn read_bytes(
    resp: &mut Response<ProxyBody>,
    timeout: Duration,
) -> Result<Bytes, Refusal> {
    let h = resp.headers();
    identity(h)?;
    let announced = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_JSON_RESPONSE as u64) {
        return Err(unreadable("the upstream's answer is larger than 1 MiB"));
    }
    let body = std::mem::replace(resp.body_mut(), Either::Right(Full::new(Bytes::new())));
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_JSON_RESPONSE).collect())
        .await
        .map_err(|_| unreadable("the upstream's answer did not arrive in time"))?
        .map_err(|e| unreadable(format!("the upstream's answer could not be read: {e}")))?;
    Ok(collected.to_bytes())
}

/// Puts `bytes` back as the answer's body, with its length.
pub(crate) fn replace_body(resp: &mut Response<ProxyBody>, bytes: Bytes) {
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    *resp.body_mut() = Either::Right(Full::new(bytes));
}

/// serde_json's error categories, named; its messages are never passed on (they may quote).
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "ends too early",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn json_media_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(&ct(yes)), "{yes}");
        }
        for no in [
            "text/json",
            "application/jsonx",
            "text/plain",
            "application/json; charset=latin1",
            "multipart/form-data",
        ] {
            assert!(!is_json(&ct(no)), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
