//! Where a request presents an API key: the headers it may be in, and the query string it
//! must never be in.

use std::borrow::Cow;

use http::HeaderMap;

use crate::failure::AuthFailure;

use super::{ID_CHARS, KEY_PREFIX};

/// The API key a request presents in `x-api-key` or `Authorization: ApiKey <key>`, if any.
/// The same key in both is fine; two different keys, an empty one, or one that is not text
/// are refused. Keys in other places (the query string) are [`key_in_query`]'s business.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    fn add<'a>(found: &mut Option<&'a str>, key: &'a str) -> Result<(), AuthFailure> {
        match found {
            Some(f) if *f != key => Err(AuthFailure::InvalidRequest("several different API keys")),
            _ => {
                *found = Some(key);
                Ok(())
            }
        }
    }
    let mut found = None;
    for value in headers.get_all("x-api-key") {
        let key = value
            .to_str()
            .map_err(|_| AuthFailure::InvalidApiKey)?
            .trim_matches([' ', '\t']);
        if key.is_empty() {
            return Err(AuthFailure::InvalidApiKey);
        }
        add(&mut found, key)?;
    }
    for value in headers.get_all(http::header::AUTHORIZATION) {
        // Other schemes (Bearer) are not ours to judge, however they are written.
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim_matches([' ', '\t']);
        let (scheme, rest) = text.split_once([' ', '\t']).unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("ApiKey") {
            continue;
        }
        let key = rest.trim_matches([' ', '\t']);
        if key.is_empty() {
            return Err(AuthFailure::InvalidRequest(
                "the ApiKey authorization carries no key",
            ));
        }
        add(&mut found, key)?;
    }
    Ok(found)
}

/// Query parameter names that carry an API key by convention (compared case-insensitively).
const KEY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "x_api_key",
    "key",
];

/// Whether a query string carries what looks like an API key: a parameter named like one
/// (`api_key`, `apikey`, `api-key`, `x-api-key`, `key`, any case) or anything that looks like
/// an idgate key, percent-encoded or not. Such a request is refused with
/// [`AuthFailure::ApiKeyInQuery`]: URLs end up in logs and browser histories.
pub fn key_in_query(query: Option<&str>) -> bool {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return false;
    };
    if contains_key_like(query) {
        return true;
    }
    query.split(['&', ';']).any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name);
        let name = name.trim();
        KEY_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k))
            || contains_key_like(name)
            || contains_key_like(&percent_decode(value))
    })
}

/// Whether a query string carries anything shaped like an idgate key, whatever the
/// parameter's name, percent-encoded or not. Checked on every route, whatever its
/// authentication: the gateway's own keys are never forwarded to a provider.
pub fn idgate_key_in_query(query: Option<&str>) -> bool {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return false;
    };
    contains_key_like(query)
        || (query.contains(['%', '+']) && contains_key_like(&percent_decode(query)))
}

/// Whether `s` contains `idg_` (any case) followed by something shaped like a key id.
/// Allocates nothing.
fn contains_key_like(s: &str) -> bool {
    let b = s.as_bytes();
    let prefix = KEY_PREFIX.as_bytes();
    (0..b.len().saturating_sub(prefix.len() + ID_CHARS - 1)).any(|i| {
        b[i..i + prefix.len()].eq_ignore_ascii_case(prefix)
            && b[i + prefix.len()..i + prefix.len() + ID_CHARS]
                .iter()
                .all(|c| c.is_ascii_alphabetic() || (b'2'..=b'7').contains(c))
    })
}

/// `%XX` and `+` decoding; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> Cow<'_, str> {
    idgate_codec::percent::decode_form_lossy(s)
}
