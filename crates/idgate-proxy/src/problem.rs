//! The one mapping from "why the gateway answers itself" to an RFC 9457
//! `application/problem+json` response: [`ProblemKind`] gives each kind its status, `type`
//! and title, and renders it, for the pipeline, the token endpoint and the admin listener
//! alike. No stage invents a status code of its own: each returns a [`Refusal`], and only
//! this module turns it into bytes.
//!
//! Details tell the caller what to fix. They never name files, upstream addresses, internal
//! errors or secret values; those go to the log through [`Refusal::log_reason`].

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use idgate_auth::AuthFailure;

use crate::access_log::Decision;
use crate::path::{BadEncoding, PathError};

mod kind;

pub use kind::ProblemKind;

/// Where problem `type` URIs point; each is described in `docs/problems.md`.
pub const PROBLEM_BASE: &str = "https://idgate.dev/problems/";

/// The detail of [`ProblemKind::MisdirectedRequest`], the admin listener's answer to a
/// `Host` it does not serve. Fixed: the `Host` sent is never repeated to the caller.
pub(crate) const MISDIRECTED_DETAIL: &str = "This listener answers only requests whose Host is an IP address, localhost or a name in admin.allowed_hosts; send the request to one of those.";

/// A request the gateway ends itself.
#[derive(Debug)]
pub enum Refusal {
    /// The path has dot segments, encoded slashes or other forms that could be read one way
    /// here and another way upstream.
    AmbiguousPath,
    /// The request target has a raw byte outside ASCII or a percent-escape that is broken or
    /// not UTF-8.
    InvalidEncoding(BadEncoding),
    NoRoute,
    MethodNotAllowed {
        allow: HeaderValue,
    },
    /// Authentication or authorization failed; the failure knows its status and challenge.
    Auth(AuthFailure),
    /// The body is larger than the upstream accepts for signing.
    BodyTooLarge,
    /// The gateway holds as many buffered bodies as its memory budget allows.
    Busy,
    /// A body on a request whose method defines none, on a route that does not take one.
    BodyNotAllowed {
        method: Method,
    },
    /// The body could not be read from the caller.
    BadBody {
        reason: String,
    },
    UpstreamUnreachable {
        reason: String,
        /// The connection could not be made: the upstream never saw the request.
        connect: bool,
    },
    UpstreamTimeout,
    /// Every connection the upstream may have is busy, and the request could not wait for
    /// one (`max_connections`, `max_pending`, `pending_timeout`).
    UpstreamBusy {
        reason: String,
    },
    /// The upstream credential could not be produced.
    CredentialUnavailable {
        reason: String,
    },
    Internal {
        reason: String,
    },
    /// The client's address or user agent is refused by `[network]` or the route's rules.
    ForbiddenNetwork {
        reason: &'static str,
    },
    /// More header fields than `listener.max_header_count`.
    TooManyHeaders {
        limit: usize,
    },
    /// The caller stopped sending its body for `listener.body_timeout`.
    BodyTimeout,
    /// The header fields add up to more than `listener.max_header_bytes`.
    HeadersTooLarge {
        limit: usize,
    },
    /// A rate limit of the route refused the request (the first that did, by its name).
    RateLimited {
        limit: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
    /// The caller's source, API key or token client is locked out after failed
    /// authentications.
    LockedOut {
        retry_after: std::time::Duration,
    },
    /// The object a path parameter names was not created by the caller (or its group), or
    /// does not exist: one answer for both, so ids cannot be probed.
    ObjectNotFound,
    /// A list response holds objects the caller does not own, on a `list = "refuse"` route.
    ForeignObjects,
    /// The state backend did not answer, on a route whose state checks fail closed.
    StateUnavailable {
        reason: String,
    },
    /// An upstream's response the gateway must read (to record or filter objects) is not
    /// JSON it can read: compressed, of another type, too large, or without the object id.
    UnreadableResponse {
        reason: String,
    },
    /// The route takes a JSON body and the request's `Content-Type` is not JSON.
    UnsupportedMediaType,
    /// The body is not JSON; where parsing failed, never what was there.
    InvalidJson {
        line: usize,
        column: usize,
        what: &'static str,
    },
    /// The body is JSON that does not satisfy the route's schema.
    SchemaViolation {
        errors: Vec<SchemaFailure>,
    },
    /// The caller's masking profile refuses the upstream's answer: a `block` rule names a
    /// value in it, or it is not JSON and the profile does not pass its type (`non_json =
    /// "block"`, or a type `pass_types` does not name).
    ResponseBlocked {
        reason: String,
    },
    /// The answer's pseudonyms could not be made (the key's token is unavailable).
    MaskingUnavailable {
        reason: String,
    },
    /// The audit queue has no place for the request's record (the route's `on_audit_full`
    /// decided): the request is not served unrecorded.
    AuditUnavailable,
    /// The upstream's circuit breaker is open: the request is refused without touching it.
    CircuitOpen {
        upstream: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
    /// Every endpoint of the upstream fails its health checks.
    UpstreamUnavailable {
        upstream: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
    /// The route's `faults` aborted the request before it went upstream (a rehearsal,
    /// with `[testing] fault_injection`), with the status they name.
    FaultInjected {
        status: StatusCode,
    },
    /// A provider webhook refused: its signature does not verify, its signed time is out
    /// of the tolerance, or it was received before. Never kept, never delivered.
    WebhookRefused {
        why: WebhookRefusal,
        reason: String,
    },
    /// A genuine webhook event the gateway could not keep: the provider should retry it.
    WebhookUnavailable {
        reason: String,
    },
}

/// Why a provider webhook was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRefusal {
    /// Missing, malformed, or made with another secret.
    Signature,
    /// The signed timestamp is too far from the gateway's clock.
    Stale,
    /// Received before, within the replay window.
    Replayed,
}

/// One place a body fails its schema: a JSON pointer into the body and what the schema
/// says there (the keyword that failed), never the value found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFailure {
    pub pointer: String,
    pub detail: String,
}

impl From<PathError> for Refusal {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NotAbsolute => Self::NoRoute,
            PathError::Ambiguous => Self::AmbiguousPath,
            PathError::Encoding(bad) => Self::InvalidEncoding(bad),
            PathError::Rebuild(reason) => Self::Internal { reason },
        }
    }
}

impl Refusal {
    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::AmbiguousPath => ProblemKind::AmbiguousPath,
            Self::InvalidEncoding(_) => ProblemKind::InvalidEncoding,
            Self::NoRoute => ProblemKind::NoRoute,
            Self::MethodNotAllowed { .. } => ProblemKind::MethodNotAllowed,
            Self::Auth(f) => ProblemKind::Auth {
                status: f.status(),
                slug: f.slug(),
                title: f.title(),
            },
            Self::BodyTooLarge => ProblemKind::BodyTooLarge,
            Self::Busy => ProblemKind::Busy,
            Self::BodyNotAllowed { .. } => ProblemKind::BodyNotAllowed,
            Self::BadBody { .. } => ProblemKind::BadBody,
            Self::UpstreamUnreachable { .. } => ProblemKind::UpstreamUnreachable,
            Self::UpstreamTimeout => ProblemKind::UpstreamTimeout,
            Self::UpstreamBusy { .. } => ProblemKind::UpstreamBusy,
            Self::CredentialUnavailable { .. } => ProblemKind::CredentialUnavailable,
            Self::Internal { .. } => ProblemKind::Internal,
            Self::ForbiddenNetwork { .. } => ProblemKind::ForbiddenNetwork,
            Self::TooManyHeaders { .. } => ProblemKind::TooManyHeaders,
            Self::BodyTimeout => ProblemKind::BodyTimeout,
            Self::HeadersTooLarge { .. } => ProblemKind::HeadersTooLarge,
            Self::RateLimited { .. } => ProblemKind::RateLimited,
            Self::LockedOut { .. } => ProblemKind::LockedOut,
            Self::ObjectNotFound => ProblemKind::ObjectNotFound,
            Self::ForeignObjects => ProblemKind::ForeignObjects,
            Self::StateUnavailable { .. } => ProblemKind::StateUnavailable,
            Self::UnreadableResponse { .. } => ProblemKind::UnreadableResponse,
            Self::UnsupportedMediaType => ProblemKind::UnsupportedMediaType,
            Self::InvalidJson { .. } => ProblemKind::InvalidJson,
            Self::SchemaViolation { .. } => ProblemKind::SchemaViolation,
            Self::ResponseBlocked { .. } => ProblemKind::ResponseBlocked,
            Self::MaskingUnavailable { .. } => ProblemKind::MaskingUnavailable,
            Self::AuditUnavailable => ProblemKind::AuditUnavailable,
            Self::WebhookRefused { why, .. } => match why {
                WebhookRefusal::Signature => ProblemKind::WebhookSignature,
                WebhookRefusal::Stale => ProblemKind::WebhookStale,
                WebhookRefusal::Replayed => ProblemKind::WebhookReplayed,
            },
            Self::WebhookUnavailable { .. } => ProblemKind::WebhookUnavailable,
            Self::FaultInjected { status } => ProblemKind::FaultInjected { status: *status },
            Self::CircuitOpen { .. } => ProblemKind::CircuitOpen,
            Self::UpstreamUnavailable { .. } => ProblemKind::UpstreamUnavailable,
        }
    }

    /// What the caller is told.
    fn detail(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Auth(f) => return Cow::Owned(f.detail()),
            Self::TooManyHeaders { limit } => {
                return Cow::Owned(format!(
                    "The request has more than {limit} header fields; send fewer."
                ));
            }
            Self::HeadersTooLarge { limit } => {
                return Cow::Owned(format!(
                    "The request's header fields add up to more than {limit} bytes; send less."
                ));
            }
            Self::ForbiddenNetwork { .. } => {
                "Requests from this client address or user agent are not accepted here."
            }
            Self::BodyTimeout => {
                "The request body stopped arriving before it was complete. Retry with the whole body."
            }
            Self::BodyNotAllowed { method } => {
                return Cow::Owned(format!(
                    "This route takes no request body with {method}; send the request without one (Content-Length: 0 is fine)."
                ));
            }
            Self::InvalidJson { line, column, what } => {
                return Cow::Owned(format!(
                    "The request body is not valid JSON: {what} at line {line}, column {column}."
                ));
            }
            Self::SchemaViolation { errors } => {
                return Cow::Owned(format!(
                    "The request body does not match this route's schema in {} place{}; see errors.",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ));
            }
            Self::AmbiguousPath => {
                "The path contains '.' or '..' segments (percent-encoded or not), an empty segment, a backslash, a ';', or a percent-encoded '/', '\\', ';', '%' or NUL; send the normalized path."
            }
            Self::InvalidEncoding(BadEncoding::NonAsciiPath) => {
                "The path contains a byte outside ASCII; percent-encode its UTF-8 bytes."
            }
            Self::InvalidEncoding(BadEncoding::NonAsciiQuery) => {
                "The query string contains a byte outside ASCII; percent-encode its UTF-8 bytes."
            }
            Self::InvalidEncoding(BadEncoding::MalformedEscape) => {
                "The path contains a '%' that is not followed by two hexadecimal digits."
            }
            Self::InvalidEncoding(BadEncoding::NotUtf8) => {
                "The path contains percent-encoded bytes that are not UTF-8 (an overlong form, a lone continuation byte or a surrogate)."
            }
            Self::InvalidEncoding(BadEncoding::NonAsciiCaseFolded) => {
                "This route's upstream reads paths without regard to case, so the path must be ASCII."
            }
            Self::NoRoute => "No route matches this path.",
            Self::MethodNotAllowed { .. } => {
                "This route does not accept this method; see the Allow header."
            }
            Self::BodyTooLarge => "The request body is larger than this route accepts.",
            Self::BadBody { .. } => "The request body could not be read completely.",
            Self::Busy => "The gateway is at its limit of buffered request bodies. Retry shortly.",
            Self::UpstreamUnreachable { .. } => {
                "The upstream service could not be reached. Retry later."
            }
            Self::UpstreamTimeout => "The upstream service did not answer in time. Retry later.",
            Self::UpstreamBusy { .. } => {
                "The gateway has as many requests open to the upstream service as it allows. Retry shortly."
            }
            Self::CredentialUnavailable { .. } => {
                "The gateway cannot authenticate to the upstream service right now. Retry later."
            }
            Self::Internal { .. } => "The gateway failed to handle the request.",
            Self::RateLimited { limit, .. } => {
                return Cow::Owned(format!(
                    "The rate limit \"{limit}\" allows no more requests now; retry after the time in Retry-After."
                ));
            }
            Self::LockedOut { .. } => {
                "Too many failed authentications: no request is authenticated until the time in Retry-After has passed."
            }
            Self::ObjectNotFound => "No such object.",
            Self::ForeignObjects => {
                "The list holds objects this caller did not create; narrow the query to your own."
            }
            Self::StateUnavailable { .. } => {
                "The gateway cannot check this request against its state right now. Retry shortly."
            }
            Self::UnreadableResponse { .. } => {
                "The upstream's answer could not be checked by the gateway, so it is withheld."
            }
            Self::UnsupportedMediaType => {
                "This route takes a JSON body: send it with Content-Type: application/json."
            }
            Self::ResponseBlocked { .. } => {
                "The upstream's answer holds data this caller may not receive, so it is withheld."
            }
            Self::MaskingUnavailable { .. } => {
                "The gateway cannot mask the upstream's answer right now, so it is withheld. Retry later."
            }
            Self::AuditUnavailable => {
                "The gateway cannot record this request in its audit trail right now, so it does not serve it. Retry shortly."
            }
            Self::WebhookRefused {
                why: WebhookRefusal::Signature,
                ..
            } => "The event's signature does not verify with this endpoint's secret.",
            Self::WebhookRefused {
                why: WebhookRefusal::Stale,
                ..
            } => "The event's signed timestamp is too far from the gateway's clock.",
            Self::WebhookRefused {
                why: WebhookRefusal::Replayed,
                ..
            } => "This event was received before.",
            Self::WebhookUnavailable { .. } => "The event could not be stored. Send it again.",
            Self::FaultInjected { .. } => {
                "This failure was injected on purpose by the gateway for a resilience test; the upstream service was not called."
            }
            Self::UpstreamUnavailable { .. } => {
                "Every endpoint of the upstream service fails its health checks; retry after the time in Retry-After."
            }
            Self::CircuitOpen { .. } => {
                "The upstream service is failing, so the gateway does not send it requests for now; retry after the time in Retry-After."
            }
        })
    }

    /// What the log is told, beyond the caller's detail. Never holds a secret value.
    pub fn log_reason(&self) -> Option<&str> {
        match self {
            Self::UpstreamUnreachable { reason, .. }
            | Self::CredentialUnavailable { reason }
            | Self::BadBody { reason }
            | Self::UpstreamBusy { reason }
            | Self::StateUnavailable { reason }
            | Self::UnreadableResponse { reason }
            | Self::ResponseBlocked { reason }
            | Self::MaskingUnavailable { reason }
            | Self::WebhookRefused { reason, .. }
            | Self::WebhookUnavailable { reason }
            | Self::Internal { reason } => Some(reason),
            _ => None,
        }
    }

    pub fn slug(&self) -> &'static str {
        self.kind().slug()
    }

    /// For the request's record (see [`ProblemKind::decision`]).
    pub fn decision(&self) -> Decision {
        self.kind().decision()
    }

    /// Renders the problem; `request_id` is echoed so a caller can quote it to an operator.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let extension = match &self {
            Self::SchemaViolation { errors } => Some((
                "errors",
                errors
                    .iter()
                    .map(|e| serde_json::json!({"pointer": e.pointer, "detail": e.detail}))
                    .collect(),
            )),
            _ => None,
        };
        let mut resp = self
            .kind()
            .response_with(Some(&self.detail()), Some(request_id), extension);
        let h = resp.headers_mut();
        if let Self::MethodNotAllowed { allow } = &self {
            h.insert(ALLOW, allow.clone());
        }
        if let Self::UpstreamBusy { .. } = &self {
            // Connections free up as fast as the upstream answers: a second is plenty.
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::RateLimited { retry_after, .. }
        | Self::LockedOut { retry_after }
        | Self::CircuitOpen { retry_after, .. }
        | Self::UpstreamUnavailable { retry_after, .. } = &self
        {
            h.insert(RETRY_AFTER, retry_after_value(*retry_after));
        }
        if let Self::WebhookRefused { .. } = &self {
            // RFC 9110 puts a challenge on every 401: the provider's signature is the scheme.
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Signature realm=\"idgate-webhooks\""),
            );
        }
        if let Self::StateUnavailable { .. } | Self::WebhookUnavailable { .. } = &self {
            // A backend that times out is usually back within a second or two.
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::AuditUnavailable = &self {
            // The queue drains as fast as the disk takes a batch.
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // RFC 9110 requires a challenge on 401 (RFC 6750 also puts one on a 403 for scope).
        if let Self::Auth(f) = &self
            && let Some(challenge) = f.challenge("idgate")
            && let Ok(v) = HeaderValue::from_str(&challenge)
        {
            h.insert(http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// `Retry-After` in whole seconds, rounded up: a caller that waits that long is admitted.
pub(crate) fn retry_after_value(d: std::time::Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

#[cfg(test)]
mod tests {
    use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
    use http_body_util::BodyExt as _;

    use super::*;

    async fn body(resp: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_problem_without_detail_or_request_id_leaves_them_out() {
        let resp = ProblemKind::NoRoute.response(None, None);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            body(resp).await,
            serde_json::json!({
                "type": "https://idgate.dev/problems/no-route",
                "title": "No such route",
                "status": 404,
            })
        );
    }

    #[tokio::test]
    async fn a_refusal_says_what_to_fix_and_echoes_the_request_id() {
        let resp = Refusal::UpstreamBusy {
            reason: "never shown".to_owned(),
        }
        .into_response("rid-1");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let v = body(resp).await;
        assert_eq!(v["type"], "https://idgate.dev/problems/upstream-busy");
        assert_eq!(v["request_id"], "rid-1");
        assert!(!v.to_string().contains("never shown"));
    }

    #[tokio::test]
    async fn a_token_request_error_speaks_oauth_inside_the_problem() {
        let kind = ProblemKind::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_scope",
        };
        assert_eq!(kind.decision(), Decision::Denied("invalid_scope"));
        let resp = kind.response(Some("not granted"), Some("rid-2"));
        assert_eq!(resp.headers()[PRAGMA], "no-cache");
        assert_eq!(
            body(resp).await,
            serde_json::json!({
                "error": "invalid_scope",
                "error_description": "not granted",
                "type": "https://idgate.dev/problems/oauth-invalid-scope",
                "title": "Token request refused",
                "status": 400,
                "detail": "not granted",
                "request_id": "rid-2",
            })
        );
        let failed = ProblemKind::OAuth {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
        };
        assert_eq!(failed.decision(), Decision::Failed("server_error"));
    }
}
