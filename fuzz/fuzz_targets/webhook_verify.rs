//! Inbound webhook verification (`idgate_webhooks::verify`) on arbitrary requests: the
//! first byte picks the scheme (each Didit V2 form, Sumsub with and without SHA-1), the
//! second the secrets; then header lines (`name: value`) up to an empty line, then the
//! body.
//!
//! Never panics; an accepted event reports a secret that was given, a replay key that is
//! `event:<its id>` or a SHA-256 digest, a signed timestamp within the tolerance (and one
//! only for schemes that sign one), and a body not wholly signed only under
//! `X-Signature-Simple`. A genuine signature, computed here over the same body (for Didit's
//! V2 and Simple, over what they sign of it), is never refused as a bad signature, so the
//! reading of a signed body is reached too. The canonical JSON of a body is a fixed point
//! (and ASCII when escaped), and within a small multiple of the body's size.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use idgate_webhooks::verify::{canonical_json, verify, NonAscii, Rejected, Scheme, V2Form};
use libfuzzer_sys::fuzz_target;
use ring::hmac;

const NOW: u64 = 1_767_225_600;
const TOLERANCE: Duration = Duration::from_secs(300);
const SECRETS: [&[u8]; 2] = [b"whsec_current", b"whsec_previous"];

fn scheme(selector: u8) -> Scheme {
    let v2 = |name: &str| Scheme::DiditSignatureV2(name.parse::<V2Form>().unwrap());
    match selector % 11 {
        0 => Scheme::DiditSignature,
        1 => v2("unescaped"),
        2 => v2("ascii"),
        3 => v2("timestamp:unescaped"),
        4 => v2("timestamp:ascii"),
        5 => Scheme::DiditSignatureSimple,
        6 => Scheme::SumsubDigest { allow_sha1: false },
        7 => Scheme::SumsubDigest { allow_sha1: true },
        8 => Scheme::Veriff,
        9 => Scheme::Onfido,
        _ => Scheme::Persona,
    }
}

fn hex_hmac(secret: &[u8], parts: &[&[u8]]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Header lines up to the first empty line, then the body.
fn request(data: &[u8]) -> (HeaderMap, &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let mut headers = HeaderMap::new();
    for line in data[..split].split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, data.get(split + 2..).unwrap_or(&[]))
}

fn check_accepted(
    scheme: &Scheme,
    secrets: &[&[u8]],
    result: &Result<idgate_webhooks::verify::Verified, Rejected>,
) {
    let Ok(v) = result else { return };
    assert!(v.secret_index < secrets.len());
    match &v.event_id {
        Some(id) => assert_eq!(v.replay_key, format!("event:{id}")),
        None => {
            let hex = v.replay_key.strip_prefix("sha256:").unwrap();
            assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
    assert_eq!(v.timestamp.is_some(), scheme.signs_timestamp());
    if let Some(t) = v.timestamp {
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let gap = now
            .duration_since(t)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap();
        assert!(gap <= TOLERANCE);
    }
    assert_eq!(!v.body_signed, *scheme == Scheme::DiditSignatureSimple);
    for id in [&v.event_id, &v.session_id, &v.event_type]
        .into_iter()
        .flatten()
    {
        assert!(!id.is_empty() && id.len() <= idgate_webhooks::verify::MAX_ID_LEN);
    }
}

/// The body's `timestamp` and named string fields, read from its canonical form by
/// serde_json rather than by the verifier's own reader.
fn didit_fields<const N: usize>(canonical: &str, names: [&str; N]) -> Option<(i64, [String; N])> {
    let value: serde_json::Value = serde_json::from_str(canonical).ok()?;
    let ts = value.get("timestamp")?.as_i64()?;
    let mut fields = names.map(|_| String::new());
    for (field, name) in fields.iter_mut().zip(names) {
        *field = value.get(name)?.as_str()?.to_owned();
    }
    Some((ts, fields))
}

/// The headers a provider would send for `body` under `secret`. Didit's V2 and Simple sign
/// what they read of the body (its canonical form, four of its fields): a body that form
/// cannot be made of, or without those fields, gets none.
fn genuine(scheme: &Scheme, secret: &[u8], body: &[u8]) -> Option<HeaderMap> {
    let (name, value) = match scheme {
        Scheme::DiditSignatureV2(form) => {
            let canonical = canonical_json(body, form.non_ascii)?;
            let mut message = String::new();
            if form.timestamp_prefix {
                let (ts, []) = didit_fields(&canonical, [])?;
                message = format!("{ts}:");
            }
            message.push_str(&canonical);
            ("x-signature-v2", hex_hmac(secret, &[message.as_bytes()]))
        }
        Scheme::DiditSignatureSimple => {
            let canonical = canonical_json(body, NonAscii::Unescaped)?;
            let (ts, [session, status, kind]) =
                didit_fields(&canonical, ["session_id", "status", "webhook_type"])?;
            let message = format!("{ts}:{session}:{status}:{kind}");
            (
                "x-signature-simple",
                hex_hmac(secret, &[message.as_bytes()]),
            )
        }
        Scheme::DiditSignature => ("x-signature", hex_hmac(secret, &[body])),
        Scheme::SumsubDigest { .. } => ("x-payload-digest", hex_hmac(secret, &[body])),
        Scheme::Veriff => ("x-hmac-signature", hex_hmac(secret, &[body])),
        Scheme::Onfido => ("x-sha2-signature", hex_hmac(secret, &[body])),
        Scheme::Persona => {
            let t = NOW.to_string();
            let v1 = hex_hmac(secret, &[t.as_bytes(), b".", body]);
            (
                "persona-signature",
                format!("t=0,v1={} t={t},v1={v1}", "0".repeat(64)),
            )
        }
    };
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(&value).unwrap());
    Some(h)
}

fuzz_target!(|data: &[u8]| {
    let (selector, flags, rest) = match data {
        [s, f, rest @ ..] => (*s, *f, rest),
        _ => return,
    };
    let scheme = scheme(selector);
    let secrets = &SECRETS[..1 + usize::from(flags & 1)];
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let (headers, body) = request(rest);

    let result = verify(&scheme, secrets, &headers, body, now, TOLERANCE);
    check_accepted(&scheme, secrets, &result);

    if let Some(h) = genuine(&scheme, secrets[secrets.len() - 1], body) {
        let result = verify(&scheme, secrets, &h, body, now, TOLERANCE);
        match &result {
            Ok(v) => assert_eq!(v.secret_index, secrets.len() - 1),
            // Didit's body must still be JSON with a fresh timestamp (and, for Simple,
            // fields without a `:`).
            Err(e) => assert!(
                matches!(
                    scheme,
                    Scheme::DiditSignature
                        | Scheme::DiditSignatureV2(_)
                        | Scheme::DiditSignatureSimple
                ) && !matches!(
                    e,
                    Rejected::BadSignature
                        | Rejected::Missing(
                            "x-signature" | "x-signature-v2" | "x-signature-simple"
                        )
                        | Rejected::Malformed(
                            "x-signature" | "x-signature-v2" | "x-signature-simple"
                        )
                ),
                "{scheme:?}: {e}"
            ),
        }
        check_accepted(&scheme, secrets, &result);
    }

    for non_ascii in [NonAscii::Unescaped, NonAscii::Escaped] {
        if let Some(c) = canonical_json(body, non_ascii) {
            assert_eq!(
                canonical_json(c.as_bytes(), non_ascii).as_deref(),
                Some(c.as_str())
            );
            if non_ascii == NonAscii::Escaped {
                assert!(c.is_ascii());
            }
            // Numbers grow by at most the body's size (4 KiB for a small body); escaping a
            // character outside ASCII at most triples it.
            let most = match non_ascii {
                NonAscii::Unescaped => 2 * body.len(),
                NonAscii::Escaped => 4 * body.len(),
            };
            assert!(
                c.len() <= most + 4096,
                "{} bytes from {}",
                c.len(),
                body.len()
            );
        }
    }
});
