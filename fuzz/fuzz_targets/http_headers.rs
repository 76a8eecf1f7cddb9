//! The gateway's own readers of header values from callers and upstreams
//! (`idgate_proxy::fuzzing`): `Content-Type` as the schema guard reads it,
//! `Cache-Control: no-store` as the fallback cache reads it, the strip of forwarded
//! requests and answers (hop-by-hop, credential and forwarding headers, and those a
//! `Connection` names), a caller's `x-request-id`, and the token endpoint's
//! `Authorization: Basic`. The first byte's bit 0 says whether the request came from a
//! trusted proxy; then header lines (`name:value`).
//!
//! Never panics, and, each against a reference written from the rules over the value's
//! bytes:
//! - a body the schema guard reads as JSON has one `Content-Type`, `application/json` or
//!   `application/…+json`, naming no charset but UTF-8;
//! - the fallback cache finds `no-store` wherever a `Cache-Control` value has it, whatever
//!   other bytes the value holds;
//! - a stripped request keeps no hop-by-hop header, no credential, no forwarding header
//!   (unless from a trusted proxy), no header named with `_` and no header its `Connection`
//!   names (but `Content-*`), and keeps every other header with all its values; an answer
//!   keeps all but the hop-by-hop headers and those its `Connection` names;
//! - a kept request id is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`;
//! - Basic credentials read from `Authorization` read back the same once encoded again.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue,
};
use idgate_proxy::fuzzing;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];
const CREDENTIALS: [&str; 3] = ["x-api-key", "authorization", "cookie"];
const FORWARDING: [&str; 24] = [
    "x-forwarded-for",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-appengine-user-ip",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "front-end-https",
    "x-original-host",
    "x-original-uri",
    "x-forwarded-client-cert",
];

fn headers(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            h.append(name, value);
        }
    }
    h
}

fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// A media type's type and subtype, its parameters left out.
fn essence(media: &[u8]) -> Option<(&[u8], &[u8])> {
    let essence = media
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let slash = essence.iter().position(|b| *b == b'/')?;
    Some((&essence[..slash], &essence[slash + 1..]))
}

fn names_json(media: &[u8]) -> bool {
    let Some((_, sub)) = essence(media) else {
        return false;
    };
    sub.eq_ignore_ascii_case(b"json")
        || sub.eq_ignore_ascii_case(b"x-json")
        || sub.len() >= 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// Whether every `charset` parameter of a media type names UTF-8.
fn utf8(media: &[u8]) -> bool {
    media.split(|b| *b == b';').skip(1).all(|p| {
        let p = p.trim_ascii();
        match p.iter().position(|b| *b == b'=') {
            Some(eq) if p[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") => {
                let mut v = p[eq + 1..].trim_ascii();
                while let [b'"', rest @ ..] = v {
                    v = rest;
                }
                while let [rest @ .., b'"'] = v {
                    v = rest;
                }
                v.eq_ignore_ascii_case(b"utf-8") || v.eq_ignore_ascii_case(b"utf8")
            }
            _ => true,
        }
    })
}

fn check_media_types(h: &HeaderMap) {
    if !fuzzing::schema_reads_json(h) {
        return;
    }
    let values: Vec<&[u8]> = h
        .get_all(CONTENT_TYPE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let [value] = values[..] else {
        panic!("the schema guard read a body of {values:?}")
    };
    let (kind, sub) = essence(value).expect("a media type");
    assert!(
        kind.eq_ignore_ascii_case(b"application") && names_json(value),
        "{value:?}"
    );
    assert!(!sub.eq_ignore_ascii_case(b"x-json"), "{value:?}");
    assert!(utf8(value), "{value:?} names another charset");
}

fn check_no_store(h: &HeaderMap) {
    let no_store = h
        .get_all(CACHE_CONTROL)
        .iter()
        .flat_map(|v| members(v.as_bytes()))
        .any(|d| d.eq_ignore_ascii_case(b"no-store"));
    assert!(
        fuzzing::fallback_finds_no_store(h) || !no_store,
        "{:?}",
        h.get_all(CACHE_CONTROL)
    );
}

/// The headers a message's `Connection` values name, but its options and `Content-*`.
fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(CONNECTION)
        .iter()
        .flat_map(|v| members(v.as_bytes()))
        .filter(|m| {
            !m.eq_ignore_ascii_case(b"keep-alive")
                && !m.eq_ignore_ascii_case(b"close")
                && !m
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"content-"))
        })
        .filter_map(|m| HeaderName::from_bytes(m).ok())
        .collect()
}

/// `underscored`: a request, which goes upstream without any header named with `_` (a
/// CGI-style server reads `X_Forwarded_For` as `X-Forwarded-For`).
fn check_strip(before: &HeaderMap, after: &HeaderMap, removed: &[&str], underscored: bool) {
    let named = connection_named(before);
    for name in before.keys() {
        let gone = removed.contains(&name.as_str())
            || named.contains(name)
            || underscored && name.as_str().contains('_');
        if gone {
            assert!(!after.contains_key(name), "{name} was passed on");
        } else {
            let was: Vec<_> = before.get_all(name).iter().collect();
            let is: Vec<_> = after.get_all(name).iter().collect();
            assert_eq!(was, is, "{name} changed");
        }
    }
    assert!(after.keys().all(|n| before.contains_key(n)));
}

fn check_basic(h: &HeaderMap) {
    let read = fuzzing::token_basic_credentials(h);
    if !h.contains_key(AUTHORIZATION) {
        assert_eq!(read, Some(None));
    }
    let Some(Some((id, secret))) = read else {
        return;
    };
    let value = h[AUTHORIZATION].as_bytes();
    assert!(
        value.starts_with(b"Basic ") || value.starts_with(b"basic "),
        "{value:?}"
    );
    // Every byte escaped: the pair splits at its one `:`, whatever the two hold.
    let escape = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let again = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", escape(&id), escape(&secret)))
    );
    let mut h2 = HeaderMap::new();
    h2.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&again).expect("a header value"),
    );
    assert_eq!(
        fuzzing::token_basic_credentials(&h2),
        Some(Some((id, secret)))
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let trusted = flags & 1 == 1;
    let h = headers(rest);

    check_media_types(&h);
    check_no_store(&h);
    check_basic(&h);

    let mut request = h.clone();
    fuzzing::strip_request(&mut request, trusted);
    let mut removed: Vec<&str> = HOP_BY_HOP.iter().chain(&CREDENTIALS).copied().collect();
    if !trusted {
        removed.extend(FORWARDING);
    }
    check_strip(&h, &request, &removed, true);

    let mut answer = h.clone();
    fuzzing::strip_response(&mut answer);
    check_strip(&h, &answer, &HOP_BY_HOP, false);

    for id in h.get_all("x-request-id") {
        if fuzzing::request_id_kept(id) {
            let b = id.as_bytes();
            assert!((1..=128).contains(&b.len()), "{id:?}");
            assert!(
                b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)),
                "{id:?}"
            );
        }
    }
});
