//! The gateway's readers of header values that callers and upstreams send, for the fuzz
//! targets (`fuzz/fuzz_targets/http_headers.rs`); not part of the crate's interface. Each
//! function is the production reader itself, or the production strip, with no other logic.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, HeaderValue};

use crate::checks::schema;
use crate::header_set::{RESPONSE_STRIP, RequestStrip};

/// Whether the schema guard reads a request's body as JSON (one `Content-Type`, JSON,
/// UTF-8); any other request it refuses with `415`.
pub fn schema_reads_json(headers: &HeaderMap) -> bool {
    schema::declares_json(headers)
}

/// Whether the fallback cache finds `Cache-Control: no-store` (and never keeps the answer).
pub fn fallback_finds_no_store(headers: &HeaderMap) -> bool {
    crate::fallback::no_store(headers)
}

/// Strips a caller's request as it is forwarded (`trusted`: from a trusted proxy, to an
/// upstream with `forwarded_for`), the credentials being `x-api-key`, `Authorization` and
/// `Cookie`.
pub fn strip_request(headers: &mut HeaderMap, trusted: bool) {
    let credentials = [HeaderName::from_static("x-api-key"), AUTHORIZATION, COOKIE];
    RequestStrip::new(&credentials)
        .for_request(trusted)
        .strip(headers);
}

/// Strips an upstream's answer as it is passed on.
pub fn strip_response(headers: &mut HeaderMap) {
    RESPONSE_STRIP.strip(headers);
}

/// Whether a caller's `x-request-id` is kept.
pub fn request_id_kept(value: &HeaderValue) -> bool {
    crate::service::valid_request_id(value)
}

/// The client id and secret the token endpoint reads from `Authorization: Basic`: `None`
/// when it refuses the header, `Some(None)` when there is none.
pub fn token_basic_credentials(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    crate::token_endpoint::basic_credentials(headers).ok()
}
