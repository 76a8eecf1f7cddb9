//! Inbound webhook verification: is this request an event the provider signed, recently
//! enough, and which event is it?
//!
//! One function, [`verify`], for every provider [`Scheme`]: it reads the scheme's headers
//! strictly (one bounded value each), computes the HMAC under each configured secret (the
//! current one and, during a rotation, the previous one), compares in constant time,
//! checks the signed timestamp against a tolerance where the scheme has one, and reads the
//! event's id, session id and type from what the signature covers. It does no I/O and
//! reads no clock: the caller passes `now`. Replays are the caller's to refuse, with
//! [`Verified::replay_key`] in a nonce store for the tolerance window.
//!
//! | scheme | header | HMAC over | timestamp |
//! |---|---|---|---|
//! | [`Scheme::DiditSignature`] | `X-Signature` | the raw body (SHA-256) | body `timestamp` |
//! | [`Scheme::DiditSignatureV2`] | `X-Signature-V2` | the body re-serialised canonically ([`V2Form`]) | body `timestamp` |
//! | [`Scheme::DiditSignatureSimple`] | `X-Signature-Simple` | `{timestamp}:{session_id}:{status}:{webhook_type}` | body `timestamp` |
//! | [`Scheme::SumsubDigest`] | `X-Payload-Digest` (+ `-Alg`) | the raw body (SHA-256, SHA-512, SHA-1 if allowed) | none |
//! | [`Scheme::Veriff`] | `X-HMAC-SIGNATURE` | the raw body (SHA-256) | none |
//! | [`Scheme::Onfido`] | `X-SHA2-Signature` | the raw body (SHA-256) | none |
//! | [`Scheme::Persona`] | `Persona-Signature: t=…,v1=…` (groups) | `{t}.{raw body}` (SHA-256) | `t` |
//!
//! Nothing here holds on to a secret or the body: a [`Rejected`] names a header or field
//! and never carries what it contained.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

mod didit;
pub mod event_time;
mod json;
mod mac;
mod number;
mod persona;
mod raw;

pub use event_time::{EventTime, TimeFormat};
pub use json::NonAscii;

/// How many secrets a check tries: the current one and, during a rotation, the previous.
pub const MAX_SECRETS: usize = 2;
/// Ids longer than this (or holding control characters) are not reported.
pub const MAX_ID_LEN: usize = 256;
/// Timestamp tolerance Didit gives, and the default for every scheme.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Didit's webhook headers.
pub const X_SIGNATURE: &str = "x-signature";
pub const X_SIGNATURE_V2: &str = "x-signature-v2";
pub const X_SIGNATURE_SIMPLE: &str = "x-signature-simple";
pub const X_TIMESTAMP: &str = "x-timestamp";
/// Sumsub's digest and the name of its algorithm.
pub const X_PAYLOAD_DIGEST: &str = "x-payload-digest";
pub const X_PAYLOAD_DIGEST_ALG: &str = "x-payload-digest-alg";
/// Veriff's signature.
pub const X_HMAC_SIGNATURE: &str = "x-hmac-signature";
/// Onfido's signature.
pub const X_SHA2_SIGNATURE: &str = "x-sha2-signature";
/// Persona's signature groups.
pub const PERSONA_SIGNATURE: &str = "persona-signature";

/// A provider's webhook signing scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Didit `X-Signature`: HMAC-SHA256 of the raw body. The gateway holds the raw bytes,
    /// so this is the Didit check to rely on.
    DiditSignature,
    /// Didit `X-Signature-V2`: HMAC-SHA256 of the body re-serialised canonically; the exact
    /// form is disputed, hence [`V2Form`].
    DiditSignatureV2(V2Form),
    /// Didit `X-Signature-Simple`: HMAC-SHA256 of four fields only. The rest of the body is
    /// not covered ([`Verified::body_signed`] is false).
    DiditSignatureSimple,
    /// Sumsub `X-Payload-Digest`, algorithm in `X-Payload-Digest-Alg` (SHA-256 when absent,
    /// SHA-512; SHA-1 only when `allow_sha1`).
    SumsubDigest { allow_sha1: bool },
    /// Veriff `X-HMAC-SIGNATURE`: HMAC-SHA256 of the raw body.
    Veriff,
    /// Onfido `X-SHA2-Signature`: HMAC-SHA256 of the raw body.
    Onfido,
    /// Persona `Persona-Signature: t=…,v1=…`, one group per active secret.
    Persona,
}

impl Scheme {
    /// Every scheme's name as configuration spells it, with its defaults.
    pub const NAMES: [&'static str; 7] = [
        "didit",
        "didit-v2",
        "didit-simple",
        "sumsub",
        "veriff",
        "onfido",
        "persona",
    ];

    /// The scheme's name as configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::DiditSignature => "didit",
            Scheme::DiditSignatureV2(_) => "didit-v2",
            Scheme::DiditSignatureSimple => "didit-simple",
            Scheme::SumsubDigest { .. } => "sumsub",
            Scheme::Veriff => "veriff",
            Scheme::Onfido => "onfido",
            Scheme::Persona => "persona",
        }
    }

    /// Whether the scheme signs a timestamp, which [`verify`] checks against the
    /// tolerance. Without one, a replay is only recognised while its key is remembered.
    pub fn signs_timestamp(&self) -> bool {
        matches!(
            self,
            Scheme::DiditSignature
                | Scheme::DiditSignatureV2(_)
                | Scheme::DiditSignatureSimple
                | Scheme::Persona
        )
    }
}

/// A scheme name that is none of [`Scheme::NAMES`] (or of [`V2Form::NAMES`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name; expected one of {expected}")]
pub struct UnknownName {
    pub expected: &'static str,
}

impl FromStr for Scheme {
    type Err = UnknownName;

    /// A scheme by name, with [`V2Form::default`] and SHA-1 not allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "didit" => Scheme::DiditSignature,
            "didit-v2" => Scheme::DiditSignatureV2(V2Form::default()),
            "didit-simple" => Scheme::DiditSignatureSimple,
            "sumsub" => Scheme::SumsubDigest { allow_sha1: false },
            "veriff" => Scheme::Veriff,
            "onfido" => Scheme::Onfido,
            "persona" => Scheme::Persona,
            _ => {
                return Err(UnknownName {
                    expected: "didit, didit-v2, didit-simple, sumsub, veriff, onfido, persona",
                });
            }
        })
    }
}

/// The message Didit's `X-Signature-V2` signs. Didit's integrations: the canonical JSON (sorted
/// keys, no spaces, whole floats as integers) with non-ASCII unescaped; Didit's own page
/// calls it "ASCII-escaped" and its examples disagree on a `{timestamp}:` prefix. The
/// default is that of Didit's integrations; each form is pinned by test vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V2Form {
    pub non_ascii: NonAscii,
    /// Sign `{timestamp}:{canonical JSON}` rather than the JSON alone.
    pub timestamp_prefix: bool,
}

impl V2Form {
    /// The forms by name, as configuration spells them.
    pub const NAMES: [&'static str; 4] = [
        "unescaped",
        "ascii",
        "timestamp:unescaped",
        "timestamp:ascii",
    ];

    pub fn name(&self) -> &'static str {
        match (self.timestamp_prefix, self.non_ascii) {
            (false, NonAscii::Unescaped) => "unescaped",
            (false, NonAscii::Escaped) => "ascii",
            (true, NonAscii::Unescaped) => "timestamp:unescaped",
            (true, NonAscii::Escaped) => "timestamp:ascii",
        }
    }
}

impl FromStr for V2Form {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (timestamp_prefix, rest) = match s.strip_prefix("timestamp:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let non_ascii = match rest {
            "unescaped" => NonAscii::Unescaped,
            "ascii" => NonAscii::Escaped,
            _ => {
                return Err(UnknownName {
                    expected: "unescaped, ascii, timestamp:unescaped, timestamp:ascii",
                });
            }
        };
        Ok(V2Form {
            non_ascii,
            timestamp_prefix,
        })
    }
}

/// A genuine event: what the signature covers that the gateway needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The provider's id for this event, when the scheme covers one (Didit `event_id`,
    /// Persona `data.id`).
    pub event_id: Option<String>,
    /// The verification it concerns (Didit `session_id`, Sumsub `applicantId`, Veriff
    /// `verification.id`/`sessionId`/`id`, Onfido `payload.object.id`, Persona
    /// `data.attributes.payload.data.id`): the key for ordering.
    pub session_id: Option<String>,
    /// Didit `webhook_type`, Sumsub `type`, Veriff `eventType`/`action` (or `decision`),
    /// Onfido `payload.action`, Persona `data.attributes.name`.
    pub event_type: Option<String>,
    /// The signed timestamp checked against the tolerance; `None` for schemes without one
    /// (the endpoint sets the event's own time there when it reads one, [`event_time`]).
    pub timestamp: Option<SystemTime>,
    /// What identifies a replay: `event:<event_id>`, else `sha256:<hex>` of the signed
    /// message (the same whichever secret signed it).
    pub replay_key: String,
    /// Which secret matched: 0 the current one, 1 the previous one.
    pub secret_index: usize,
    /// Whether the signature covers the whole body. Only [`Scheme::DiditSignatureSimple`]
    /// covers less (four fields): the rest of such a body is not authenticated.
    pub body_signed: bool,
    /// When the signature covers only part of the body: that part, as the JSON object that
    /// is kept and delivered in place of the body (Didit Simple:
    /// `{"session_id":…,"status":…,"timestamp":…,"webhook_type":…}`). `None` when the whole
    /// body is signed.
    pub signed_part: Option<Vec<u8>>,
}

impl Verified {
    /// What of the request's `body` may be kept and delivered: all of it when the signature
    /// covers it, else only the part it covers — what nobody signed is never passed on.
    pub fn deliverable<'a>(&'a self, body: &'a [u8]) -> &'a [u8] {
        match &self.signed_part {
            Some(part) => part,
            None => body,
        }
    }
}

/// Why a request is not a genuine, fresh event. Never holds a secret, the body or a header
/// value: only the name of what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// A header or body field the scheme needs is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A header or body field is not in the scheme's format (or a header is repeated).
    #[error("{0} is malformed")]
    Malformed(&'static str),
    /// No configured secret produces the signature.
    #[error("the signature does not match")]
    BadSignature,
    /// The signed time (a signed timestamp, or the event's own time in the signed body) is
    /// older than the webhook accepts.
    #[error("the signed time is {age_secs} s old, older than the webhook accepts")]
    Stale { age_secs: i64 },
    /// The signed time is further ahead of `now` than the tolerance.
    #[error("the signed time is {ahead_secs} s ahead, past the tolerance")]
    Future { ahead_secs: i64 },
    /// `X-Timestamp` disagrees with the signed body's `timestamp`.
    #[error("x-timestamp disagrees with the body's timestamp")]
    TimestampMismatch,
    /// `X-Payload-Digest-Alg` names no algorithm Sumsub documents.
    #[error("x-payload-digest-alg names an unknown algorithm")]
    UnknownAlgorithm,
    /// `X-Payload-Digest-Alg` is `HMAC_SHA1_HEX` and the endpoint does not allow SHA-1.
    #[error("x-payload-digest-alg is HMAC_SHA1_HEX, which this endpoint does not allow")]
    Sha1NotAllowed,
    /// The caller passed no secret, or more than [`MAX_SECRETS`]: a configuration error.
    #[error("the verifier needs one or two secrets, got {given}")]
    Secrets { given: usize },
}

impl Rejected {
    /// A short, fixed word for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Missing(_) => "missing",
            Rejected::Malformed(_) => "malformed",
            Rejected::BadSignature => "bad_signature",
            Rejected::Stale { .. } => "stale",
            Rejected::Future { .. } => "future",
            Rejected::TimestampMismatch => "timestamp_mismatch",
            Rejected::UnknownAlgorithm => "unknown_algorithm",
            Rejected::Sha1NotAllowed => "sha1_not_allowed",
            Rejected::Secrets { .. } => "secrets",
        }
    }
}

/// Checks that `body` with `headers` is an event the provider signed under one of
/// `secrets` (the current secret and, during a rotation, the previous one: 1 or 2), with a
/// signed timestamp (where the scheme has one) within `tolerance` of `now`.
pub fn verify(
    scheme: &Scheme,
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<Verified, Rejected> {
    if secrets.is_empty() || secrets.len() > MAX_SECRETS {
        return Err(Rejected::Secrets {
            given: secrets.len(),
        });
    }
    let clock = Clock { now, tolerance };
    match *scheme {
        Scheme::DiditSignature => didit::signature(secrets, headers, body, clock),
        Scheme::DiditSignatureV2(form) => didit::signature_v2(form, secrets, headers, body, clock),
        Scheme::DiditSignatureSimple => didit::signature_simple(secrets, headers, body, clock),
        Scheme::SumsubDigest { allow_sha1 } => raw::sumsub(allow_sha1, secrets, headers, body),
        Scheme::Veriff => raw::veriff(secrets, headers, body),
        Scheme::Onfido => raw::onfido(secrets, headers, body),
        Scheme::Persona => persona::verify(secrets, headers, body, clock),
    }
}

/// The canonical JSON of a body, as [`Scheme::DiditSignatureV2`] signs it (without the
/// timestamp prefix). `None` for a body that is not JSON the form can be made of.
pub fn canonical_json(body: &[u8], non_ascii: NonAscii) -> Option<String> {
    let value = json::parse(body).ok()?;
    let mut out = String::with_capacity(body.len());
    json::write(&value, non_ascii, &mut out);
    Some(out)
}

/// The time a check runs at and how far a signed timestamp may be from it.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now: SystemTime,
    tolerance: Duration,
}

impl Clock {
    /// The signed unix time `ts` as a time, if it is within the tolerance of now.
    fn fresh(&self, ts: i64) -> Result<SystemTime, Rejected> {
        within(self.now, ts, self.tolerance, self.tolerance)
    }
}

/// The unix time `ts` as a time, if it is at most `before` older than `now` and at most
/// `after` ahead of it (both bounds inclusive).
fn within(
    now: SystemTime,
    ts: i64,
    before: Duration,
    after: Duration,
) -> Result<SystemTime, Rejected> {
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::from(d.as_secs()),
        Err(e) => -i128::from(e.duration().as_secs()),
    };
    let age = now - i128::from(ts);
    let clamp = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    if age > i128::from(before.as_secs()) {
        return Err(Rejected::Stale {
            age_secs: clamp(age),
        });
    }
    if -age > i128::from(after.as_secs()) {
        return Err(Rejected::Future {
            ahead_secs: clamp(-age),
        });
    }
    let at = if ts >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(ts.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(ts.unsigned_abs()))
    };
    at.ok_or(Rejected::Malformed("timestamp"))
}

/// A unix time in seconds as a header writes it: 1 to 19 ASCII digits.
fn unix_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A string value fit to be reported as an id or a type: 1 to [`MAX_ID_LEN`] bytes, no
/// control characters.
fn id_text(value: Option<&json::Json>) -> Option<String> {
    let s = value?.as_str()?;
    (!s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control))
        .then(|| s.to_owned())
}

/// The replay key of an event: its id when the signature covers one, else the digest of
/// the signed message.
fn replay_key(event_id: Option<&str>, signed: &[&[u8]]) -> String {
    match event_id {
        Some(id) => format!("event:{id}"),
        None => mac::digest_key(signed),
    }
}

#[cfg(test)]
mod tests;
