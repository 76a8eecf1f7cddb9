//! The raw-body schemes without a timestamp: Sumsub, Veriff, Onfido. Each is an HMAC of
//! the body bytes exactly as received, in hex; none signs a time, so freshness rests on
//! the replay key alone.
//!
//! What the event is comes from the (signed) body, best-effort: a body that is not JSON,
//! or lacks a field, still verifies, with that field `None`. Field sources:
//!
//! - Sumsub (docs.sumsub.com, user verification webhooks): `applicantId` (the session),
//!   `type` (`applicantReviewed`, …). No per-event id is documented (`correlationId` is
//!   not promised unique per event), so the replay key is the body's digest.
//! - Veriff (developers.veriff.com, webhooks): decision webhooks carry `verification.id`
//!   and are typed `decision`; event webhooks carry `id` and `action` (`started`,
//!   `submitted`); newer payloads carry `sessionId` and `eventType`.
//! - Onfido (documentation.onfido.com, webhooks): `payload.object.id` (the workflow run
//!   or check) and `payload.action` (`workflow_run.completed`, …).

use http::HeaderMap;

use super::json::{self, Json};
use super::mac::{self, Digest};
use super::{
    Rejected, Verified, X_HMAC_SIGNATURE, X_PAYLOAD_DIGEST, X_PAYLOAD_DIGEST_ALG, X_SHA2_SIGNATURE,
    id_text,
};

/// Checks the HMAC of the raw body in header `name`; the event fields come from `extract`
/// applied to the body when it is JSON.
fn raw_body(
    digest: Digest,
    name: &'static str,
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    extract: fn(&Json) -> (Option<String>, Option<String>),
) -> Result<Verified, Rejected> {
    let value = mac::required(headers, name)?;
    let tag = mac::decode_hex(value, digest, name)?;
    let index =
        mac::matching_secret(digest, secrets, &[body], &tag).ok_or(Rejected::BadSignature)?;
    let (session_id, event_type) = json::parse(body).map_or((None, None), |v| extract(&v));
    Ok(Verified {
        event_id: None,
        session_id,
        event_type,
        timestamp: None,
        replay_key: mac::digest_key(&[body]),
        secret_index: index,
        body_signed: true,
        signed_part: None,
    })
}

/// Sumsub `X-Payload-Digest`: lowercase hex (Node's `digest('hex')`, compared as a
/// string in Sumsub's example), algorithm named by `X-Payload-Digest-Alg`.
pub(super) fn sumsub(
    allow_sha1: bool,
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Rejected> {
    let digest = match mac::header(headers, X_PAYLOAD_DIGEST_ALG)? {
        None | Some("HMAC_SHA256_HEX") => Digest::Sha256,
        Some("HMAC_SHA512_HEX") => Digest::Sha512,
        Some("HMAC_SHA1_HEX") if allow_sha1 => Digest::Sha1,
        Some("HMAC_SHA1_HEX") => return Err(Rejected::Sha1NotAllowed),
        Some(_) => return Err(Rejected::UnknownAlgorithm),
    };
    raw_body(digest, X_PAYLOAD_DIGEST, secrets, headers, body, |v| {
        (id_text(v.get("applicantId")), id_text(v.get("type")))
    })
}

/// Veriff `X-HMAC-SIGNATURE`: lowercase hex, as for its request signatures.
pub(super) fn veriff(
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Rejected> {
    raw_body(
        Digest::Sha256,
        X_HMAC_SIGNATURE,
        secrets,
        headers,
        body,
        |v| {
            let session = id_text(v.path(&["verification", "id"]))
                .or_else(|| id_text(v.get("sessionId")))
                .or_else(|| id_text(v.get("id")));
            let kind = id_text(v.get("eventType"))
                .or_else(|| id_text(v.get("action")))
                .or_else(|| {
                    matches!(v.get("verification"), Some(Json::Object(_)))
                        .then(|| "decision".to_owned())
                });
            (session, kind)
        },
    )
}

/// Onfido `X-SHA2-Signature`: lowercase hex (Onfido's examples compare `hexdigest`
/// strings).
pub(super) fn onfido(
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Rejected> {
    raw_body(
        Digest::Sha256,
        X_SHA2_SIGNATURE,
        secrets,
        headers,
        body,
        |v| {
            (
                id_text(v.path(&["payload", "object", "id"])),
                id_text(v.path(&["payload", "action"])),
            )
        },
    )
}
