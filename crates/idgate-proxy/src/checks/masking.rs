//! Response masking (`masking` on a route, profiles in `[masking.profiles]`): the answer a
//! caller gets holds only what its profile lets through. See `docs/masking.md`.
//!
//! - **Which profile.** The first `by_caller` entry naming the principal authorization
//!   accepted, or the route's default; `allow` passes the answer as the upstream gave it.
//! - **Every status.** Error answers are masked like successful ones: a provider's error
//!   body may quote the personal data it refused.
//! - **JSON** (`application/json`, `…/json`, `…+json`) is read whole (at most 1 MiB, see
//!   `json_response`) and masked as the text it is (`Profile::mask_text`): only what the
//!   profile changes is written anew, with the answer's new `Content-Length`. An answer
//!   that cannot be read, parsed (a charset other than UTF-8 included) or is too large is
//!   refused with `502 unreadable-response`, never passed on, and so is one with more
//!   distinct values to pseudonymize than `idgate_mask::MAX_PSEUDONYMS`.
//! - **No body** (a body its framing says is empty) has nothing to mask and passes,
//!   whatever its type. Emptiness is the body's, never the `Content-Length` header's nor
//!   the status's: a header that says 0 over a body that has bytes does not let them
//!   through unmasked. An answer to `HEAD`, a `204` or a `304` has an empty body because
//!   `forward::strip_response` gives it one, whatever the upstream sent after its head.
//!   A JSON body read whole and found empty passes empty too.
//! - **Compressed** answers are refused: the request went without the caller's
//!   `Accept-Encoding`, so an upstream that still compresses is not read past.
//! - **Partial** answers (`206`) are refused: a fragment of JSON cannot be masked, and the
//!   request went without `Range`.
//! - **Not JSON**: passed untouched and streamed when the profile says `non_json = "pass"`
//!   and its `pass_types` name the answer's type (binary media by default); refused
//!   (`502 response-blocked`) otherwise. A caller can ask the upstream for another
//!   representation of the same data (`Accept: text/html`, `?format=csv`) that the rules
//!   cannot read, so a text type passes only when the profile names it. An answer without
//!   a `Content-Type` (or with one that cannot be read) is read whole, like JSON, and
//!   judged by the type its first bytes show; one naming two types is refused.
//! - **Headers** describing the upstream's bytes (`ETag`, `Content-MD5`, `Digest`,
//!   `Content-Digest`, `Repr-Digest`) and `Accept-Ranges` are removed from every answer a
//!   profile applies to; an answer to `HEAD` and a `304` also lose their `Content-Length`
//!   (the unmasked size).

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use idgate_config::{NonJson, ProfileChoice, RouteMasking};
use idgate_mask::{MaskError, MaskedText, MediaType, TextMaskError, media};

use super::json_response;
use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::header_set::MASKED_STRIP;
use crate::masking::{KeyPseudonymizer, LoadedProfile};
use crate::problem::Refusal;

/// The media types masking reads as JSON: `…/json`, `…/x-json` and `…+json`, whatever
/// their parameters (a charset other than UTF-8 is then refused when read, not passed).
pub(crate) fn is_json_type(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((kind, subtype)) = json_response::media_type(v) else {
        return false;
    };
    media::is_json(MediaType { kind, subtype })
}

fn compressed(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// Whether the answer has no body, by the body's own framing (a client that read
/// `Content-Length: 0` as the framing ends the body at once). Neither the status nor the
/// `Content-Length` header says so: an answer to `HEAD`, a `204` or a `304` has no body
/// because `forward::strip_response` gave it an empty one, not because the upstream was
/// trusted to send none.
fn without_body(resp: &Response<ProxyBody>) -> bool {
    let body = resp.body();
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

/// `masking`: masks the answer with the caller's profile.
pub(super) async fn mask(
    ctx: &mut RequestCtx<'_>,
    masking: &RouteMasking,
    resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    let ProfileChoice::Profile(index) = masking.choose(ctx.principal()) else {
        return Ok(());
    };
    let snapshot = ctx.snapshot;
    let profile = snapshot
        .masking
        .get(index)
        .ok_or_else(|| Refusal::Internal {
            reason: format!("masking profile {index} is not loaded"),
        })?;
    MASKED_STRIP.strip(resp.headers_mut());
    if resp.status() == StatusCode::PARTIAL_CONTENT {
        return Err(Refusal::UnreadableResponse {
            reason: "a partial (206) answer on a masked route cannot be masked".to_owned(),
        });
    }
    if ctx.method == Method::HEAD || resp.status() == StatusCode::NOT_MODIFIED {
        // Its length would be the unmasked body's.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if without_body(resp) {
        return Ok(());
    }
    if compressed(resp.headers()) {
        return Err(Refusal::UnreadableResponse {
            reason: "the upstream compressed an answer on a masked route".to_owned(),
        });
    }
    if resp
        .headers()
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        // Readers differ on which counts: masked JSON under a second type could be
        // rendered as that type.
        return Err(Refusal::ResponseBlocked {
            reason: format!(
                "masking profile {}: the answer names more than one Content-Type",
                profile.name
            ),
        });
    }
    if !is_json_type(resp.headers()) {
        return not_json(ctx, profile, resp).await;
    }
    if !json_response::utf8(resp.headers()) {
        return Err(Refusal::UnreadableResponse {
            reason: "the upstream's JSON answer names a charset other than UTF-8".to_owned(),
        });
    }
    let timeout = super::ownership::timeout(ctx);
    let bytes = json_response::read_bytes(resp, timeout).await?;
    if bytes.is_empty() {
        // Nothing to mask; the length is the body's, whatever the upstream announced.
        json_response::replace_body(resp, bytes);
        return Ok(());
    }
    let pseudonymizer = KeyPseudonymizer {
        key: profile.key.as_deref(),
        started: ctx.start,
    };
    match profile.profile.mask_text(&bytes, &pseudonymizer).await {
        Ok((MaskedText::Unchanged, _)) => {
            json_response::replace_body(resp, bytes);
            Ok(())
        }
        Ok((MaskedText::Changed(masked), _)) => {
            json_response::replace_body(resp, masked.into());
            Ok(())
        }
        Err(TextMaskError::NotJson(e)) => Err(Refusal::UnreadableResponse {
            reason: format!("the upstream's answer is not JSON: {e}"),
        }),
        Err(TextMaskError::Mask(e)) => Err(refusal(profile, e)),
    }
}

/// What an answer's `Content-Type` says it is.
#[derive(Debug, PartialEq, Eq)]
enum Declared<'a> {
    Type(MediaType<'a>),
    /// No `Content-Type`, or one that is not `type/subtype`.
    Nothing,
    /// More than one `Content-Type`: readers disagree on which counts.
    Several,
}

fn declared(headers: &HeaderMap) -> Declared<'_> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next(), values.next()) {
        (None, _) => Declared::Nothing,
        (Some(_), Some(_)) => Declared::Several,
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(MediaType::parse)
            .map_or(Declared::Nothing, Declared::Type),
    }
}

/// An answer that is not JSON: passed untouched only under `non_json = "pass"`, and only
/// when `pass_types` names its type. An answer whose type is not told by its headers is
/// read whole (at most 1 MiB, like JSON) and judged by the type its first bytes show, so
/// a text or JSON body without a type never passes.
async fn not_json(
    ctx: &RequestCtx<'_>,
    profile: &LoadedProfile,
    resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    let blocked = |why: String| Refusal::ResponseBlocked {
        reason: format!("masking profile {}: {why}", profile.name),
    };
    let NonJson::Pass(types) = &profile.non_json else {
        return Err(blocked(
            "the answer is not JSON (non_json = \"block\")".to_owned(),
        ));
    };
    match declared(resp.headers()) {
        Declared::Type(t) if types.passes(t) => Ok(()),
        // The type is the upstream's header, never the caller's data.
        Declared::Type(t) => Err(blocked(format!(
            "the answer is {t}, which is not JSON and not a type pass_types names"
        ))),
        Declared::Several => Err(blocked(
            "the answer names more than one Content-Type".to_owned(),
        )),
        Declared::Nothing => {
            let bytes = json_response::read_bytes(resp, super::ownership::timeout(ctx)).await?;
            let passes = media::sniff(&bytes).is_some_and(|t| types.passes(t));
            json_response::replace_body(resp, bytes);
            if passes {
                Ok(())
            } else {
                Err(blocked(
                    "the answer names no media type, and its first bytes are not those of a type pass_types names".to_owned(),
                ))
            }
        }
    }
}

fn refusal(profile: &LoadedProfile, e: MaskError<crate::masking::PseudonymError>) -> Refusal {
    let reason = format!("masking profile {}: {e}", profile.name);
    match e {
        MaskError::Blocked(_) => Refusal::ResponseBlocked { reason },
        MaskError::Pseudonymizer(_) | MaskError::Incomplete { .. } => {
            Refusal::MaskingUnavailable { reason }
        }
        // Like an answer over 1 MiB: the answer, not the key, is the trouble.
        MaskError::TooManyPseudonyms { .. } => Refusal::UnreadableResponse { reason },
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_is_told_by_its_media_type_whatever_its_parameters() {
        for yes in [
            "application/json",
            "application/problem+json",
            "Application/JSON; charset=latin1",
            "text/json",
            "application/x-json",
            "application/vnd.api+json;version=2",
            "APPLICATION/VND.API+Json",
        ] {
            assert!(is_json_type(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonp",
            "application/json5",
            "application/xjson",
            "application/vnd.api+jsonp",
            "image/png",
            "json",
            "",
        ] {
            assert!(!is_json_type(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_json_type(&HeaderMap::new()));
    }

    fn answer(
        status: u16,
        content_length: Option<&'static str>,
        body: &'static [u8],
    ) -> Response<ProxyBody> {
        let mut resp = Response::new(http_body_util::Either::Right(http_body_util::Full::new(
            bytes::Bytes::from_static(body),
        )));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(v) = content_length {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static(v));
        }
        resp
    }

    #[test]
    fn a_body_is_empty_by_its_framing_never_by_its_content_length_header_or_status() {
        let json = br#"{"document_number":"BAA000589"}"#;
        assert!(!without_body(&answer(200, Some("0"), json)));
        assert!(!without_body(&answer(200, None, json)));
        assert!(without_body(&answer(200, Some("0"), b"")));
        assert!(without_body(&answer(201, None, b"")));
        // A status that allows no content does not make the bytes after it none: they
        // are masked like any others should they get here.
        assert!(!without_body(&answer(204, None, json)));
        assert!(!without_body(&answer(304, Some("31"), json)));
    }

    #[test]
    fn the_declared_type_is_one_readable_content_type_or_none() {
        let t = |kind, subtype| Declared::Type(MediaType { kind, subtype });
        assert_eq!(
            declared(&headers(&[("content-type", "text/html; charset=utf-8")])),
            t("text", "html")
        );
        assert_eq!(declared(&HeaderMap::new()), Declared::Nothing);
        for unreadable in ["html", "image/png, text/html", "", "text/ html"] {
            assert_eq!(
                declared(&headers(&[("content-type", unreadable)])),
                Declared::Nothing,
                "{unreadable}"
            );
        }
        assert_eq!(
            declared(&headers(&[
                ("content-type", "image/png"),
                ("content-type", "text/html")
            ])),
            Declared::Several
        );
    }

    #[test]
    fn any_coding_but_identity_is_compressed() {
        assert!(!compressed(&HeaderMap::new()));
        assert!(!compressed(&headers(&[("content-encoding", "identity")])));
        assert!(!compressed(&headers(&[("content-encoding", " Identity ")])));
        assert!(compressed(&headers(&[("content-encoding", "gzip")])));
        assert!(compressed(&headers(&[(
            "content-encoding",
            "identity, br"
        )])));
        assert!(compressed(&headers(&[
            ("content-encoding", "identity"),
            ("content-encoding", "deflate")
        ])));
    }
}
