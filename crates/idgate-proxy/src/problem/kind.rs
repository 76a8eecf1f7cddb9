//! [`ProblemKind`]: the table of every answer the gateway gives itself (status, `type`
//! slug, title) and how one is rendered as `application/problem+json`.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::PROBLEM_BASE;
use crate::access_log::Decision;

/// Every kind of answer the gateway gives itself, on the public listener, at the token
/// endpoint and on the admin listener: its status, its `type` and its title, in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    AmbiguousPath,
    InvalidEncoding,
    NoRoute,
    MethodNotAllowed,
    BodyTooLarge,
    Busy,
    BodyNotAllowed,
    BadBody,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamBusy,
    CredentialUnavailable,
    Internal,
    ObjectNotFound,
    ForeignObjects,
    UnreadableResponse,
    UnsupportedMediaType,
    InvalidJson,
    SchemaViolation,
    /// Authentication or authorization failed; the failure knows its status, slug and title.
    Auth {
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
    },
    /// A token request refused, with its RFC 6749 §5.2 error code (`invalid_client`, …).
    OAuth {
        status: StatusCode,
        error: &'static str,
    },
    ForbiddenNetwork,
    TooManyHeaders,
    BodyTimeout,
    HeadersTooLarge,
    /// Over `listener.max_connections`: answered by the listener, outside the pipeline.
    Overloaded,
    RateLimited,
    LockedOut,
    StateUnavailable,
    ResponseBlocked,
    MaskingUnavailable,
    AuditUnavailable,
    WebhookSignature,
    WebhookStale,
    WebhookReplayed,
    WebhookUnavailable,
    /// An abort injected by the route's `faults`, with their status.
    FaultInjected {
        status: StatusCode,
    },
    CircuitOpen,
    UpstreamUnavailable,
    /// The admin listener does not answer to the `Host` the request names: not an IP
    /// address, `localhost` or a name in `admin.allowed_hosts` (DNS rebinding).
    MisdirectedRequest,
}

impl ProblemKind {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::AmbiguousPath => (
                StatusCode::BAD_REQUEST,
                "ambiguous-path",
                "Ambiguous request path",
            ),
            Self::InvalidEncoding => (
                StatusCode::BAD_REQUEST,
                "invalid-target-encoding",
                "Invalid encoding in the request target",
            ),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no-route", "No such route"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", "Gateway busy"),
            Self::BodyNotAllowed => (
                StatusCode::BAD_REQUEST,
                "body-not-allowed",
                "Request body not allowed",
            ),
            Self::BadBody => (
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Unreadable request body",
            ),
            Self::UpstreamUnreachable => (
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "Upstream unreachable",
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
            ),
            Self::UpstreamBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-busy",
                "Upstream busy",
            ),
            Self::CredentialUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "credential-unavailable",
                "Upstream credential unavailable",
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            Self::ObjectNotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::ForeignObjects => (
                StatusCode::FORBIDDEN,
                "foreign-objects",
                "The list holds objects of other callers",
            ),
            Self::UnreadableResponse => (
                StatusCode::BAD_GATEWAY,
                "unreadable-response",
                "Upstream response unreadable",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::InvalidJson => (
                StatusCode::BAD_REQUEST,
                "invalid-json",
                "Request body is not JSON",
            ),
            Self::SchemaViolation => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema-violation",
                "Request body does not match the schema",
            ),
            Self::Auth {
                status,
                slug,
                title,
            } => (status, slug, title),
            Self::OAuth { status, error } => (status, error, "Token request refused"),
            Self::ForbiddenNetwork => (
                StatusCode::FORBIDDEN,
                "forbidden-network",
                "Client network or user agent not allowed",
            ),
            Self::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-many-headers",
                "Too many header fields",
            ),
            Self::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
            ),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Header fields too large",
            ),
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Gateway at its connection limit",
            ),
            Self::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit exceeded",
            ),
            Self::LockedOut => (
                StatusCode::TOO_MANY_REQUESTS,
                "locked-out",
                "Locked out after failed authentications",
            ),
            Self::StateUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "state-unavailable",
                "Shared state unavailable",
            ),
            Self::ResponseBlocked => (
                StatusCode::BAD_GATEWAY,
                "response-blocked",
                "Upstream response withheld",
            ),
            Self::MaskingUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "masking-unavailable",
                "Response masking unavailable",
            ),
            Self::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "Audit trail unavailable",
            ),
            Self::WebhookSignature => (
                StatusCode::UNAUTHORIZED,
                "webhook-signature-invalid",
                "Webhook signature invalid",
            ),
            Self::WebhookStale => (
                StatusCode::UNAUTHORIZED,
                "webhook-stale",
                "Webhook event outside its time window",
            ),
            Self::WebhookReplayed => (
                StatusCode::UNAUTHORIZED,
                "webhook-replayed",
                "Webhook event already received",
            ),
            Self::WebhookUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook-unavailable",
                "Webhook event not stored",
            ),
            Self::FaultInjected { status } => (status, "fault-injected", "Fault injected"),
            Self::CircuitOpen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit-open",
                "Upstream circuit open",
            ),
            Self::UpstreamUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-unavailable",
                "No healthy upstream endpoint",
            ),
            Self::MisdirectedRequest => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Host not allowed",
            ),
        }
    }

    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    /// The stable name of the problem, and the reason in the request's record: the last
    /// segment of its `type`, or a token request's error code.
    pub fn slug(self) -> &'static str {
        self.parts().1
    }

    pub fn title(self) -> &'static str {
        self.parts().2
    }

    /// The problem's `type`, documented in `docs/problems.md`. A token request's error
    /// code becomes `oauth-` and the code with `-` for `_`.
    pub fn type_uri(self) -> String {
        match self {
            Self::OAuth { error, .. } => {
                format!("{PROBLEM_BASE}oauth-{}", error.replace('_', "-"))
            }
            _ => format!("{PROBLEM_BASE}{}", self.slug()),
        }
    }

    /// For the request's record: refused for what the request is or who sent it (4xx), or
    /// allowed but not carried out (5xx).
    pub fn decision(self) -> Decision {
        if self.status().is_server_error() {
            Decision::Failed(self.slug())
        } else {
            Decision::Denied(self.slug())
        }
    }

    /// The problem document, `no-store`. `detail` and `request_id` are left out when there
    /// is none (the admin listener has neither); a token request's error also carries the
    /// RFC 6749 members `error` and `error_description` (the detail) and `Pragma: no-cache`.
    /// Headers that belong to one kind (`Allow`, `Retry-After`, a challenge) are the
    /// caller's to add.
    pub fn response(self, detail: Option<&str>, request_id: Option<&str>) -> Response<Full<Bytes>> {
        self.response_with(detail, request_id, None)
    }

    /// [`ProblemKind::response`] with one extension member (RFC 9457 §3.2).
    pub(super) fn response_with(
        self,
        detail: Option<&str>,
        request_id: Option<&str>,
        extension: Option<(&str, serde_json::Value)>,
    ) -> Response<Full<Bytes>> {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), self.type_uri().into());
        body.insert("title".into(), self.title().into());
        body.insert("status".into(), self.status().as_u16().into());
        if let Some(detail) = detail {
            body.insert("detail".into(), detail.into());
        }
        if let Some(id) = request_id {
            body.insert("request_id".into(), id.into());
        }
        if let Some((name, value)) = extension {
            body.insert(name.into(), value);
        }
        if let Self::OAuth { error, .. } = self {
            body.insert("error".into(), error.into());
            body.insert(
                "error_description".into(),
                detail.unwrap_or_default().into(),
            );
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::OAuth { .. } = self {
            h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        }
        resp
    }
}
