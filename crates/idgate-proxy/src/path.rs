//! Stage 1 of the pipeline: the request path the gateway routes on and forwards, in one
//! canonical form, or a refusal.
//!
//! An upstream decodes percent-escapes before it looks a path up, so `/users/%65xport` is
//! `/users/export` to it. If the gateway matched the escaped spelling, a route for
//! `/users/export` would be passed by, and the request routed by a `/users/{id}` sibling
//! with another allow list. So the gateway rewrites every path into one form
//! (RFC 3986 §6.2.2), routes on it and forwards exactly it:
//!
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and so are
//!   escapes of `:` and `@`, which mean the same escaped or not in a path and appear in
//!   literal segments (`{id}:cancel`, `@me`);
//! - every other escape keeps its byte, with its hex digits in capitals (`%c3%a9` → `%C3%A9`);
//! - characters that RFC 3986 does not allow in a path (`"`, `<`, `>`, `[`, `]`, `^`, `` ` ``,
//!   `{`, `|`, `}`) are escaped.
//!
//! What an upstream could still read in more than one way is refused with
//! [`PathError::Ambiguous`]: `.` and `..` segments (escaped ones included), empty segments,
//! `;`, `\`, escaped `/`, `\`, `;` or `%`, and control characters (`%00`..`%1F`, `%7F`),
//! escaped or raw. Raw bytes outside ASCII, broken escapes and escapes whose bytes are not
//! UTF-8 (overlong forms, lone continuation bytes, surrogates) are refused with
//! [`PathError::Encoding`]. `problem.rs` maps each to its answer.
//!
//! The query string is not rewritten: it takes no part in routing, and decoding it would
//! change what `&`, `=` and `+` mean to the upstream. It is forwarded as received, but must
//! be ASCII; the authentication stage refuses one carrying something shaped like an API key,
//! escaped or not.
//!
//! A path that is already canonical (the usual case: no `%`) is neither copied nor rebuilt.

use std::borrow::Cow;

use http::Uri;
use http::uri::PathAndQuery;
use idgate_codec::percent::{self, is_unreserved, push_escape};

/// Why a request target has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not a path that starts with `/` (`*`, an authority): it names no route.
    NotAbsolute,
    /// A form that could be read one way here and another way upstream.
    Ambiguous,
    /// A byte or escape the encoding rules refuse.
    Encoding(BadEncoding),
    /// The canonical path could not be put back into the request target.
    Rebuild(String),
}

/// Which rule of the encoding a request target breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEncoding {
    /// A raw byte outside ASCII in the path.
    NonAsciiPath,
    /// A raw byte outside ASCII in the query string.
    NonAsciiQuery,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// Escaped bytes that are not UTF-8: an overlong form, a lone continuation byte, a
    /// surrogate, a code point past U+10FFFF.
    NotUtf8,
    /// An escaped character beyond ASCII on a route whose upstream ignores case.
    NonAsciiCaseFolded,
}

/// Whether a canonical path holds an escaped byte beyond ASCII (the UTF-8 of a character
/// past U+007F; canonical escapes have capital hex).
pub fn has_non_ascii_escape(path: &str) -> bool {
    path.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'%' && matches!(w[1], b'8'..=b'9' | b'A'..=b'F'))
}

/// Rewrites the request target's path into its canonical form, in place, and checks the
/// query string. Nothing is allocated when the path is canonical already.
pub fn canonicalize(uri: &mut Uri) -> Result<(), PathError> {
    if let Some(query) = uri.query()
        && !query.is_ascii()
    {
        return Err(PathError::Encoding(BadEncoding::NonAsciiQuery));
    }
    let path = match canonical(uri.path())? {
        // `GET http://gw?q=1`, or an HTTP/2 `:path` of `?q=1`: no path, which `Uri::path`
        // reads as `/`. The request is routed as `/`, so it goes upstream as `/` too, not
        // as the bare `?q=1` the target holds.
        Cow::Borrowed(path)
            if uri
                .path_and_query()
                .is_some_and(|pq| !pq.as_str().starts_with('/')) =>
        {
            path.to_owned()
        }
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    let rebuilt = PathAndQuery::try_from(path_and_query)
        .map_err(http::Error::from)
        .and_then(|pq| {
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).map_err(http::Error::from)
        });
    *uri = rebuilt.map_err(|e| PathError::Rebuild(format!("canonical path rejected: {e}")))?;
    Ok(())
}

/// The canonical form of a request path, borrowed when the path is canonical already.
/// A path that does not start with `/` (`*`, an authority) matches no route.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let canonical = canonical_text(path)?;
    check_segments(&canonical)?;
    Ok(canonical)
}

/// The canonical form of a route's path template: its literal text canonicalised, its
/// parameters (`{id}`, `{*rest}`) kept. A template that differs from its canonical form
/// could never match a request; one that is refused matches none either.
pub fn canonical_template(template: &str) -> Result<Cow<'_, str>, PathError> {
    if !template.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Option<String> = None;
    let mut rest = template;
    let mut done = 0;
    while !rest.is_empty() {
        let (literal, literal_len, param_len) = split_param(rest);
        let literal = canonical_text(&literal)?;
        if out.is_some() || *literal != rest[..literal_len] {
            out.get_or_insert_with(|| template[..done].to_owned())
                .push_str(&literal);
        }
        let end = literal_len + param_len;
        if let Some(o) = &mut out {
            o.push_str(&rest[literal_len..end]);
        }
        done += end;
        rest = &rest[end..];
    }
    let canonical = out.map_or(Cow::Borrowed(template), Cow::Owned);
    check_segments(&canonical)?;
    Ok(canonical)
}

/// Splits a template into its leading literal text (`{{` and `}}` unescaped to braces), the
/// length that text takes in the template, and the length of the parameter after it.
fn split_param(s: &str) -> (Cow<'_, str>, usize, usize) {
    let mut text: Option<String> = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '}' if chars.peek().map(|&(_, next)| next) == Some(c) => {
                chars.next();
                text.get_or_insert_with(|| s[..i].to_owned()).push(c);
            }
            '{' => {
                let param = s[i..].find('}').map_or(s.len() - i, |p| p + 1);
                return (text.map_or(Cow::Borrowed(&s[..i]), Cow::Owned), i, param);
            }
            c => {
                if let Some(t) = &mut text {
                    t.push(c);
                }
            }
        }
    }
    (text.map_or(Cow::Borrowed(s), Cow::Owned), s.len(), 0)
}

/// Rewrites escapes and raw characters; the structure of segments is left to
/// [`check_segments`]. Allocates only from the first byte that changes.
fn canonical_text(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    // The usual path holds only bytes that stay as they are: it is its own canonical text.
    let Some(first) = b.iter().position(|&c| !RAW[usize::from(c)]) else {
        return Ok(Cow::Borrowed(path));
    };
    let mut out: Option<String> = None;
    let mut i = first;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let v = escaped(b, i)?;
                if is_unreserved(v) || v == b':' || v == b'@' {
                    changed(&mut out, path, i).push(char::from(v));
                    i += 3;
                } else if matches!(v, b'/' | b'\\' | b';' | b'%') || is_control(v) {
                    // An upstream that decodes these would split, join or cut segments
                    // differently from the route that matched. A control character is read
                    // in more than one way too: a NUL ends a C string, and a route pattern
                    // ending in Python's `$` still matches before a trailing newline, so
                    // `/users/export%0A` would run the export handler past a `{id}` route.
                    return Err(PathError::Ambiguous);
                } else if v.is_ascii() {
                    keep_escape(&mut out, path, i, v);
                    i += 3;
                } else {
                    let width = utf8_width(v);
                    let mut seq = [v, 0, 0, 0];
                    for (k, slot) in seq.iter_mut().enumerate().take(width).skip(1) {
                        let at = i + 3 * k;
                        if b.get(at) != Some(&b'%') {
                            return Err(PathError::Encoding(BadEncoding::NotUtf8));
                        }
                        *slot = escaped(b, at)?;
                    }
                    if width == 0 || std::str::from_utf8(&seq[..width]).is_err() {
                        return Err(PathError::Encoding(BadEncoding::NotUtf8));
                    }
                    for (k, &byte) in seq[..width].iter().enumerate() {
                        keep_escape(&mut out, path, i + 3 * k, byte);
                    }
                    i += 3 * width;
                }
            }
            // `;` starts path parameters that servlet-style upstreams strip (`/..;/` is
            // `/../` to them); a backslash is a separator to some servers.
            b'\\' | b';' => return Err(PathError::Ambiguous),
            // Control characters (NUL included) are refused written raw as they are escaped,
            // so a canonical form never holds one. Requests cannot carry them raw (`http`
            // refuses them in a request target); route templates could.
            c if is_control(c) => return Err(PathError::Ambiguous),
            0x80.. => return Err(PathError::Encoding(BadEncoding::NonAsciiPath)),
            c if !allowed_raw(c) => {
                push_escape(changed(&mut out, path, i), c);
                i += 1;
            }
            c => {
                if let Some(o) = &mut out {
                    o.push(char::from(c));
                }
                i += 1;
            }
        }
    }
    Ok(out.map_or(Cow::Borrowed(path), Cow::Owned))
}

/// An ASCII control character: `0x00`..=`0x1F` and DEL.
const fn is_control(c: u8) -> bool {
    c < 0x20 || c == 0x7F
}

/// The byte of the escape at `b[at]` (a `%`).
fn escaped(b: &[u8], at: usize) -> Result<u8, PathError> {
    percent::escaped_byte(b, at).ok_or(PathError::Encoding(BadEncoding::MalformedEscape))
}

/// The canonical text so far, copied out of `path` up to `upto` on the first change.
fn changed<'o>(out: &'o mut Option<String>, path: &str, upto: usize) -> &'o mut String {
    out.get_or_insert_with(|| {
        let mut s = String::with_capacity(path.len());
        s.push_str(&path[..upto]);
        s
    })
}

/// Keeps the escape at `path[at..at + 3]` of `byte`, with its hex digits in capitals.
fn keep_escape(out: &mut Option<String>, path: &str, at: usize, byte: u8) {
    let written = &path.as_bytes()[at + 1..at + 3];
    if let Some(o) = out {
        push_escape(o, byte);
    } else if written.iter().any(u8::is_ascii_lowercase) {
        push_escape(changed(out, path, at), byte);
    }
}

/// [`allowed_raw`] for every byte.
static RAW: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = allowed_raw(c as u8);
        c += 1;
    }
    table
};

/// RFC 3986 `pchar` and `/`, unescaped (`%` is handled apart).
const fn allowed_raw(c: u8) -> bool {
    is_unreserved(c)
        || matches!(
            c,
            b'/' | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
        )
}

/// Bytes in a UTF-8 sequence that starts with `lead`; 0 when no sequence starts so
/// (continuation bytes, the always-overlong `C0` and `C1`, `F5`..`FF`).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

/// Segments between slashes: none empty, `.` or `..`. A trailing slash is fine (templates
/// use them).
fn check_segments(path: &str) -> Result<(), PathError> {
    let inner = path.as_bytes().get(1..).unwrap_or_default();
    if inner.is_empty() {
        // `/` alone.
        return Ok(());
    }
    // What is left of `//` is one empty segment.
    let inner = inner.strip_suffix(b"/").unwrap_or(inner);
    if inner
        .split(|&c| c == b'/')
        .any(|s| s.is_empty() || s == b"." || s == b"..")
    {
        return Err(PathError::Ambiguous);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, &'static str> {
        canonical(p)
            .map(Cow::into_owned)
            .map_err(|r| crate::problem::Refusal::from(r).slug())
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_and_other_hex_capitalised() {
        for (input, want) in [
            ("/api/users/%65xport", "/api/users/export"),
            ("/api/users/exp%6Frt", "/api/users/export"),
            ("/api/users/%65%78%70%6f%72%74", "/api/users/export"),
            ("/a/%41%5a%30%39%2D%2e%5F%7e", "/a/AZ09-._~"),
            ("/a/b%2Ejson", "/a/b.json"),
            ("/a/%3a%40", "/a/:@"),
            ("/a%20b", "/a%20b"),
            ("/a%2bb", "/a%2Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%f0%9f%98%80", "/%F0%9F%98%80"),
            ("/a%3fb%23c", "/a%3Fb%23c"),
            ("/a{b}|c", "/a%7Bb%7D%7Cc"),
            ("/a\"<>^`[]", "/a%22%3C%3E%5E%60%5B%5D"),
            ("/", "/"),
            ("/v3/session/", "/v3/session/"),
            ("/a!$&'()*+,=:@", "/a!$&'()*+,=:@"),
        ] {
            assert_eq!(canon(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn a_canonical_path_is_borrowed_not_copied() {
        for p in ["/", "/v3/session/abc-123/decision/", "/a%20b", "/caf%C3%A9"] {
            assert!(matches!(canonical(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert!(matches!(canonical("/%65"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn paths_an_upstream_could_read_another_way_are_ambiguous() {
        for bad in [
            "/v3/session/../admin",
            "/v3/./session/",
            "/v3//session/",
            "/v3/session/%2e%2e/x",
            "/v3/session/%2E%2E/x",
            "/v3/session/.%2e/x",
            "/v3/session/%2e/x",
            "/v3/%2e%2e",
            "/v3/session%2Fx",
            "/v3/session%2fx",
            "/v3/a%5cb",
            "/v3/a\\b",
            "/v3/session/..;/decision/",
            "/v3/session/.;x/",
            "/v3/a;jsessionid=1",
            "/v3/a%3bb",
            "/v3/a%252e%252e/b",
            "/v3/a%00b",
            "//",
            "///",
            "//v3",
            "/v3//",
        ] {
            assert_eq!(canon(bad), Err("ambiguous-path"), "{bad}");
        }
        for good in ["/", "/v3", "/v3/", "/v3/session/"] {
            assert_eq!(canon(good).as_deref(), Ok(good), "{good}");
        }
    }

    #[test]
    fn escaped_control_characters_are_ambiguous() {
        // Python's `$` matches before a trailing newline, and the upstream decodes the path
        // before matching: `/api/users/export%0A` would be the export route to it.
        for bad in [
            "/api/users/export%0A",
            "/api/users/export%0a",
            "/api/users/export%0d",
            "/api/users/export%0D%0A",
            "/api/users/export%09",
            "/api/users/export%7F",
            "/api/users/export%7f",
            "/api/users/%01export",
            "/api/users/exp%1Fort",
            "/api/users/%0A/x",
        ] {
            assert_eq!(canon(bad), Err("ambiguous-path"), "{bad}");
        }
        // Written raw, as a template could hold them, they are refused the same way.
        for c in (0u8..0x20).chain([0x7F]) {
            let raw = format!("/api/users/export{}", char::from(c));
            assert_eq!(canon(&raw), Err("ambiguous-path"), "{raw:?}");
            assert!(
                canonical_template(&format!("/api/{}/{{id}}", char::from(c))).is_err(),
                "{c:#04x}"
            );
        }
        // A space and the printable characters around the controls are not controls.
        for good in ["/a%20b", "/a%21", "/a%7E", "/a~"] {
            assert!(canon(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn non_ascii_broken_escapes_and_escapes_that_are_not_utf8_are_refused() {
        for bad in [
            "/a%zz",
            "/a%2",
            "/a%",
            "/a%g0",
            "/caf\u{e9}",
            "/%C0%AE",
            "/%c0%ae%c0%ae/x",
            "/%C1%81",
            "/%E0%80%AE",
            "/%F0%80%80%AE",
            "/%80",
            "/a%BFb",
            "/%C3",
            "/%C3x",
            "/%C3%41",
            "/%ED%A0%80",
            "/%F4%90%80%80",
            "/%F5%80%80%80",
            "/%FF",
        ] {
            assert_eq!(canon(bad), Err("invalid-target-encoding"), "{bad}");
        }
    }

    #[test]
    fn paths_not_starting_with_a_slash_match_no_route() {
        assert_eq!(canon("*"), Err("no-route"));
        assert_eq!(canon(""), Err("no-route"));
    }

    #[test]
    fn canonicalize_rewrites_the_uri_and_keeps_the_query() {
        let mut uri: Uri = "/api/users/%65xport?page=%2f2&x=%41".parse().unwrap();
        canonicalize(&mut uri).unwrap();
        assert_eq!(
            uri.path_and_query().unwrap().as_str(),
            "/api/users/export?page=%2f2&x=%41"
        );
        let mut uri: Uri = "https://gw.example/caf%c3%a9".parse().unwrap();
        canonicalize(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "https://gw.example/caf%C3%A9");
        let mut uri: Uri = "/a?q=caf\u{e9}".parse().unwrap();
        assert!(matches!(
            canonicalize(&mut uri),
            Err(PathError::Encoding(BadEncoding::NonAsciiQuery))
        ));
    }

    #[test]
    fn a_target_without_a_path_gets_the_root_path_it_is_routed_on() {
        for (target, expected) in [
            ("https://gw.example?q=1", "/?q=1"),
            ("https://gw.example", "/"),
            ("https://gw.example/?q=1", "/?q=1"),
        ] {
            let mut uri: Uri = target.parse().unwrap();
            assert_eq!(uri.path(), "/", "{target}");
            canonicalize(&mut uri).unwrap();
            assert_eq!(uri.path_and_query().unwrap().as_str(), expected, "{target}");
            assert_eq!(uri.authority().unwrap().as_str(), "gw.example", "{target}");
        }
        // The HTTP/2 `:path` of `?q=1`, as hyper's server hands it on.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(http::uri::Authority::from_static("gw.example"));
        parts.path_and_query = Some(PathAndQuery::from_static("?q=1"));
        let mut uri = Uri::from_parts(parts).unwrap();
        canonicalize(&mut uri).unwrap();
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/?q=1");
    }

    #[test]
    fn templates_must_be_written_in_canonical_form() {
        for ok in [
            "/v3/session/{session_id}/decision/",
            "/aml/{*rest}",
            "/files/{name}.pdf",
            "/a%20b/{x}",
        ] {
            match canonical_template(ok) {
                Ok(Cow::Borrowed(_)) => {}
                other => panic!("{ok}: {other:?}"),
            }
        }
        for (t, want) in [
            ("/api/users/%65xport", "/api/users/export"),
            ("/a/%c3%a9/{id}/x%2d", "/a/%C3%A9/{id}/x-"),
            ("/{id}/%7e", "/{id}/~"),
            ("/{{literal}}/{id}", "/%7Bliteral%7D/{id}"),
        ] {
            assert_eq!(canonical_template(t).unwrap(), want, "{t}");
        }
        for bad in [
            "/a/../{id}",
            "/a//{id}",
            "/a%2F{id}",
            "/caf\u{e9}/{id}",
            // A raw NUL is refused as its escape is, so no canonical form holds `%00`.
            "/api/e\0t/{id}",
            "/api/e%00t/{id}",
            "/api/export%0A",
            "/api/export\n/{id}",
            "/api/e%7Ft/{id}",
        ] {
            assert!(canonical_template(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for p in ["/%65%78", "/a%c3%a9b", "/x{y}", "/%3a"] {
            let once = canon(p).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{p}");
        }
    }

    /// The fuzz target's properties over many paths made of the pieces that matter.
    #[test]
    fn generated_paths_canonicalise_to_a_fixed_point_or_are_refused() {
        const PIECES: &[&str] = &[
            "/", "/", "a", "Z", "9", "-", ".", "..", "_", "~", "%", "%2", "%2e", "%2E", "%2f",
            "%41", "%61", "%7e", "%3a", "%40", "%3A", "%20", "%c3", "%C3", "%a9", "%A9", "%c0",
            "%ae", "%80", "%ed", "%a0", "%f0", "%9f", "%98", "%zz", ";", "\\", "{", "}", "|", ":",
            "@", "+", "%2b", "%25", "%00", "\u{e9}", "%0a", "%0D", "%09", "%7f", "%1F", "%20",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..50_000 {
            let mut p = String::from("/");
            for _ in 0..(next() % 10) {
                p.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let Ok(c) = canonical(&p) else { continue };
            accepted += 1;
            assert!(c.is_ascii() && !c.contains(['\\', ';']), "{p} -> {c}");
            let b = c.as_bytes();
            for (i, _) in c.match_indices('%') {
                let hex = &b[i + 1..i + 3];
                assert!(
                    hex.iter()
                        .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                    "{p} -> {c}"
                );
                let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                assert!(
                    !(is_unreserved(v) || b":@/\\;%".contains(&v) || is_control(v)),
                    "{p} -> {c}"
                );
            }
            assert!(check_segments(&c).is_ok());
            assert!(
                matches!(canonical(&c), Ok(Cow::Borrowed(again)) if again == c),
                "{p} -> {c} is not a fixed point"
            );
        }
        assert!(accepted > 5_000, "only {accepted} accepted");
    }
}
