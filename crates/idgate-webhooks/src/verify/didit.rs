//! Didit's three signatures. Each is an HMAC-SHA256 under the secret's UTF-8 bytes, in
//! lowercase hex (Python's `hexdigest`, compared as a string in Didit's own example):
//!
//! - `X-Signature` over the raw body. The gateway holds the raw bytes, so this is the
//!   check to rely on;
//! - `X-Signature-V2` over the body re-serialised in a canonical form ([`V2Form`]);
//! - `X-Signature-Simple` over `{timestamp}:{session_id}:{status}:{webhook_type}`.
//!
//! In every case the body's `timestamp` (unix seconds) must be within the tolerance: the
//! signed one, not only the `X-Timestamp` header, which must agree with it when present.

use http::HeaderMap;

use super::json::{self, Json, NonAscii};
use super::mac::{self, Digest};
use super::{
    Clock, Rejected, V2Form, Verified, X_SIGNATURE, X_SIGNATURE_SIMPLE, X_SIGNATURE_V2,
    X_TIMESTAMP, id_text, replay_key, unix_seconds,
};

/// The signature in `name`, decoded: 64 lowercase hex digits.
fn signature_header(headers: &HeaderMap, name: &'static str) -> Result<Vec<u8>, Rejected> {
    let value = mac::required(headers, name)?;
    mac::decode_hex(value, Digest::Sha256, name)
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Json, Rejected> {
    match json::parse(body) {
        Ok(value @ Json::Object(_)) => Ok(value),
        _ => Err(Rejected::Malformed("body")),
    }
}

/// The body's `timestamp`, which `X-Timestamp` (when sent) must repeat.
fn timestamp(headers: &HeaderMap, body: &Json) -> Result<i64, Rejected> {
    let ts = match body.get("timestamp") {
        None | Some(Json::Null) => return Err(Rejected::Missing("timestamp")),
        Some(value) => value.as_i64().ok_or(Rejected::Malformed("timestamp"))?,
    };
    if let Some(header) = mac::header(headers, X_TIMESTAMP)? {
        let header = unix_seconds(header).ok_or(Rejected::Malformed(X_TIMESTAMP))?;
        if header != ts {
            return Err(Rejected::TimestampMismatch);
        }
    }
    Ok(ts)
}

/// What the whole (signed) body says about the event.
fn event(
    body: &Json,
    ts: i64,
    clock: Clock,
    secret_index: usize,
    signed: &[&[u8]],
) -> Result<Verified, Rejected> {
    let timestamp = clock.fresh(ts)?;
    let event_id = id_text(body.get("event_id"));
    Ok(Verified {
        replay_key: replay_key(event_id.as_deref(), signed),
        event_id,
        session_id: id_text(body.get("session_id")),
        event_type: id_text(body.get("webhook_type")),
        timestamp: Some(timestamp),
        secret_index,
        body_signed: true,
        signed_part: None,
    })
}

/// `X-Signature`: the raw body. The signature is checked before the body is parsed.
pub(super) fn signature(
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    clock: Clock,
) -> Result<Verified, Rejected> {
    let tag = signature_header(headers, X_SIGNATURE)?;
    let index = mac::matching_secret(Digest::Sha256, secrets, &[body], &tag)
        .ok_or(Rejected::BadSignature)?;
    let value = object(body)?;
    let ts = timestamp(headers, &value)?;
    event(&value, ts, clock, index, &[body])
}

/// `X-Signature-V2`: the canonical JSON of the parsed body, in `form`.
pub(super) fn signature_v2(
    form: V2Form,
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    clock: Clock,
) -> Result<Verified, Rejected> {
    let tag = signature_header(headers, X_SIGNATURE_V2)?;
    let value = object(body)?;
    let ts = timestamp(headers, &value)?;
    let mut message = String::with_capacity(body.len() + 16);
    if form.timestamp_prefix {
        message.push_str(&ts.to_string());
        message.push(':');
    }
    json::write(&value, form.non_ascii, &mut message);
    let index = mac::matching_secret(Digest::Sha256, secrets, &[message.as_bytes()], &tag)
        .ok_or(Rejected::BadSignature)?;
    event(&value, ts, clock, index, &[message.as_bytes()])
}

/// A string field of the Simple message: present, and without the `:` that separates
/// the fields (so that one signed message cannot be split into other fields).
fn simple_field<'a>(body: &'a Json, name: &'static str) -> Result<&'a str, Rejected> {
    match body.get(name) {
        None | Some(Json::Null) => Err(Rejected::Missing(name)),
        Some(Json::Str(s)) if !s.contains(':') => Ok(s),
        Some(_) => Err(Rejected::Malformed(name)),
    }
}

/// The four fields Simple signs as the JSON object delivered in place of the body: keys
/// sorted, no whitespace, non-ASCII escaped (Didit's own form of a body).
fn simple_part(ts: i64, session_id: &str, status: &str, webhook_type: &str) -> Vec<u8> {
    let text = |s: &str| Json::Str(s.to_owned());
    let object = Json::Object(vec![
        ("session_id".to_owned(), text(session_id)),
        ("status".to_owned(), text(status)),
        ("timestamp".to_owned(), Json::Number(ts.to_string())),
        ("webhook_type".to_owned(), text(webhook_type)),
    ]);
    let mut out = String::with_capacity(96 + session_id.len() + status.len());
    json::write(&object, NonAscii::Escaped, &mut out);
    out.into_bytes()
}

/// `X-Signature-Simple`: `{timestamp}:{session_id}:{status}:{webhook_type}`. Only these
/// four fields are covered: the event id is not reported (it is not signed), the replay
/// key is the digest of the signed message, and what is kept and delivered of the event is
/// those four fields ([`Verified::signed_part`]), never the unsigned rest of the body.
pub(super) fn signature_simple(
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    clock: Clock,
) -> Result<Verified, Rejected> {
    let tag = signature_header(headers, X_SIGNATURE_SIMPLE)?;
    let value = object(body)?;
    let ts = timestamp(headers, &value)?;
    let session_id = simple_field(&value, "session_id")?;
    let status = simple_field(&value, "status")?;
    let webhook_type = simple_field(&value, "webhook_type")?;
    let message = format!("{ts}:{session_id}:{status}:{webhook_type}");
    let index = mac::matching_secret(Digest::Sha256, secrets, &[message.as_bytes()], &tag)
        .ok_or(Rejected::BadSignature)?;
    let timestamp = clock.fresh(ts)?;
    Ok(Verified {
        event_id: None,
        session_id: id_text(value.get("session_id")),
        event_type: id_text(value.get("webhook_type")),
        timestamp: Some(timestamp),
        replay_key: mac::digest_key(&[message.as_bytes()]),
        secret_index: index,
        body_signed: false,
        signed_part: Some(simple_part(ts, session_id, status, webhook_type)),
    })
}
