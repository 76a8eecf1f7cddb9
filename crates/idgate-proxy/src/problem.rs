//! The one mapping from "why the gateway answers itself" to an RFC 9457
//! `application/problem+json` response. No stage invents a status code of its own: each
//! returns a [`Refusal`], and only this module turns it into bytes.
//!
//! Details tell the caller what to fix. They never name files, upstream addresses, internal
//! errors or secret values; those go to the log through [`Refusal::log_reason`].

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use idgate_auth::AuthFailure;

use crate::access_log::Decision;
use crate::path::BadEncoding;

/// Where problem `type` URIs point; each is described in `docs/problems.md`.
pub const PROBLEM_BASE: &str = "https://idgate.dev/problems/";

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
}

struct Kind {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
}

impl Refusal {
    fn kind(&self) -> Kind {
        let (status, slug, title) = match self {
            Self::AmbiguousPath => (
                StatusCode::BAD_REQUEST,
                "ambiguous-path",
                "Ambiguous request path",
            ),
            Self::InvalidEncoding(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-target-encoding",
                "Invalid encoding in the request target",
            ),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no-route", "No such route"),
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Auth(f) => (f.status(), f.slug(), f.title()),
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", "Gateway busy"),
            Self::BodyNotAllowed { .. } => (
                StatusCode::BAD_REQUEST,
                "body-not-allowed",
                "Request body not allowed",
            ),
            Self::BadBody { .. } => (
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Unreadable request body",
            ),
            Self::UpstreamUnreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "Upstream unreachable",
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
            ),
            Self::UpstreamBusy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-busy",
                "Upstream busy",
            ),
            Self::CredentialUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "credential-unavailable",
                "Upstream credential unavailable",
            ),
            Self::Internal { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        };
        Kind {
            status,
            slug,
            title,
        }
    }
    /// What the caller is told.
    fn detail(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Auth(f) => return Cow::Owned(f.detail()),
            Self::BodyNotAllowed { method } => {
                return Cow::Owned(format!(
                    "This route takes no request body with {method}; send the request without one (Content-Length: 0 is fine)."
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
        })
    }

    /// What the log is told, beyond the caller's detail. Never holds a secret value.
    pub fn log_reason(&self) -> Option<&str> {
        match self {
            Self::UpstreamUnreachable { reason }
            | Self::CredentialUnavailable { reason }
            | Self::BadBody { reason }
            | Self::UpstreamBusy { reason }
            | Self::Internal { reason } => Some(reason),
            _ => None,
        }
    }

    pub fn slug(&self) -> &'static str {
        self.kind().slug
    }

    /// For the request's record: refused for what the request is or who sent it (4xx), or
    /// allowed but not carried out (5xx).
    pub fn decision(&self) -> Decision {
        let kind = self.kind();
        if kind.status.is_server_error() {
            Decision::Failed(kind.slug)
        } else {
            Decision::Denied(kind.slug)
        }
    }

    /// Renders the problem; `request_id` is echoed so a caller can quote it to an operator.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let kind = self.kind();
        let body = serde_json::json!({
            "type": format!("{PROBLEM_BASE}{}", kind.slug),
            "title": kind.title,
            "status": kind.status.as_u16(),
            "detail": self.detail(),
            "request_id": request_id,
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = kind.status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::MethodNotAllowed { allow } = &self {
            h.insert(ALLOW, allow.clone());
        }
        if let Self::UpstreamBusy { .. } = &self {
            // Connections free up as fast as the upstream answers: a second is plenty.
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
