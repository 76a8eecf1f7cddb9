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

use bytes::{Bytes, BytesMut};
use http::Response;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, Either, Full};
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
    let Some((kind, subtype)) = media_type(v) else {
        return false;
    };
    let json = kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || plus_json(subtype));
    json && utf8(headers)
}

/// A `Content-Type`'s type and subtype, its parameters left out; compared without case
/// (RFC 9110 §8.3.1).
pub(crate) fn media_type(content_type: &str) -> Option<(&str, &str)> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.split_once('/')
}

/// Whether a subtype has the structured syntax suffix `+json` (RFC 6839), in any case.
fn plus_json(subtype: &str) -> bool {
    subtype
        .len()
        .checked_sub(5)
        .and_then(|at| subtype.as_bytes().get(at..))
        .is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
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
    tokio::time::timeout(timeout, collect(body, MAX_JSON_RESPONSE))
        .await
        .map_err(|_| unreadable("the upstream's answer did not arrive in time"))?
}

/// A body's data, at most `limit` bytes of it: a body of one frame (most answers) as
/// that frame's bytes, several joined in one buffer. Trailers are not kept.
async fn collect<B>(mut body: B, limit: usize) -> Result<Bytes, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| unreadable(format!("the upstream's answer could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(unreadable("the upstream's answer is larger than 1 MiB"));
        }
        if data.is_empty() {
            continue;
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(earlier) => {
                // Room for what the body says is still to come, as far as the limit.
                let coming = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                joined.reserve((earlier.len() + data.len()).saturating_add(coming.min(limit)));
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
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
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::Frame;

    use super::*;

    /// A body of the given frames, in order, then an error when `fails`.
    struct Frames(VecDeque<Frame<Bytes>>, bool);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(match self.0.pop_front() {
                Some(frame) => Some(Ok(frame)),
                None if self.1 => {
                    self.1 = false;
                    Some(Err("connection reset"))
                }
                None => None,
            })
        }
    }

    fn frames(parts: &[&'static [u8]]) -> Frames {
        Frames(
            parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p)))
                .collect(),
            false,
        )
    }

    fn collected(body: Frames, limit: usize) -> Result<Bytes, Refusal> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(collect(body, limit))
    }

    #[test]
    fn a_body_of_one_frame_is_that_frames_bytes_uncopied() {
        static BODY: &[u8] = br#"{"session_id":"s-1"}"#;
        let got = collected(frames(&[b"", BODY, b""]), 1024).unwrap();
        assert_eq!(got.as_ptr(), BODY.as_ptr());
        assert_eq!(got, BODY);
    }

    #[test]
    fn frames_are_joined_in_order_and_trailers_left_out() {
        let mut body = frames(&[b"{\"a\":", b"", b"1,", b"\"b\":2}"]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-digest", HeaderValue::from_static("abc"));
        body.0.push_back(Frame::trailers(trailers));
        assert_eq!(collected(body, 1024).unwrap(), &b"{\"a\":1,\"b\":2}"[..]);
        assert_eq!(collected(frames(&[]), 1024).unwrap(), &b""[..]);
    }

    #[test]
    fn a_body_that_breaks_off_is_refused_as_unreadable() {
        let mut body = frames(&[b"{\"a\":"]);
        body.1 = true;
        let Err(Refusal::UnreadableResponse { reason }) = collected(body, 1024) else {
            panic!("not refused");
        };
        assert!(
            reason.contains("could not be read: connection reset"),
            "{reason}"
        );
    }

    #[test]
    fn a_body_past_the_limit_is_refused_whatever_its_frames() {
        assert!(collected(frames(&[b"12345", b"6"]), 6).is_ok());
        for body in [frames(&[b"12345", b"67"]), frames(&[b"1234567"])] {
            let Err(Refusal::UnreadableResponse { reason }) = collected(body, 6) else {
                panic!("not refused");
            };
            assert!(reason.contains("larger than"), "{reason}");
        }
    }

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
            "APPLICATION/VND.API+JSON",
        ] {
            assert!(is_json(&ct(yes)), "{yes}");
        }
        for no in [
            "text/json",
            "text/problem+json",
            "application/jsonx",
            "application/vnd.api+jsonp",
            "text/plain",
            "application/json; charset=latin1",
            "multipart/form-data",
        ] {
            assert!(!is_json(&ct(no)), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
